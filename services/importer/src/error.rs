//! What stops the importer, and the one function that tells a retry from a stop.
//!
//! Transient: connection loss, serialization failures, deadlocks, resource shortage,
//! server restarts, Kafka transport errors and an unreachable schema registry. These
//! retry with bounded exponential backoff; nothing is lost because a batch and its
//! positions commit together or not at all.
//!
//! Definite: a fact about a destination table or the stream (missing table or column,
//! type mismatch, a value the column's type can't read, a constraint the row can't
//! satisfy, an event Ferry can't read). The importer stops with a message naming the
//! table, the column when known, and the event VSN; after the operator fixes it, a
//! restart resumes from the positions stored in the destination.

use std::time::Duration;

use ferry_shared::config::{ConfigError, ConnectError};
use tokio_postgres::error::SqlState;

/// What stops the importer.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The configuration lacks what the importer needs.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The destination can't be reached at start.
    #[error(transparent)]
    Connect(#[from] ConnectError),
    /// The destination role may not switch off triggers and foreign keys.
    #[error(
        "the role {role:?} on the {destination} may not set session_replication_role, which keeps \
         triggers and foreign keys from firing for replicated rows: run \
         GRANT SET ON PARAMETER session_replication_role TO {role} (PostgreSQL 15+), or connect \
         as a superuser (on YugabyteDB, a role with yb_superuser)"
    )]
    ReplicationRole {
        /// The destination's configured user.
        role: String,
        /// target, source-replica or source.
        destination: String,
        /// The database's refusal.
        #[source]
        source: tokio_postgres::Error,
    },
    /// A fact about a table or the stream that the operator must fix.
    #[error("{0}")]
    Definite(String),
    /// The broker refused this client (SASL login or TLS handshake).
    #[error(transparent)]
    KafkaAccess(#[from] ferry_shared::kafka_access::AccessError),
    /// A transient condition outlasted every retry.
    #[error("gave up after {attempts} attempts over {elapsed:?}: {last}")]
    GaveUp {
        /// Attempts made.
        attempts: u32,
        /// Time spent.
        elapsed: Duration,
        /// The last error.
        last: String,
    },
}

/// An error inside one session or batch, classified.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Failure {
    /// Retry with backoff.
    #[error("{0}")]
    Transient(String),
    /// Stop with this message.
    #[error("{0}")]
    Definite(String),
    /// Another importer wrote a partition's position since this one read it (a rebalance
    /// moved the partition): drop in-flight work and reload positions.
    #[error("positions of {0} moved under this importer (partition reassigned)")]
    Conflict(String),
}

/// Whether a database error may go away by itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Class {
    /// Retry.
    Transient,
    /// Stop and tell the operator.
    Definite,
}

/// The one classification of database errors, by SQLSTATE.
pub(crate) fn classify_pg(e: &tokio_postgres::Error) -> Class {
    let Some(code) = e.code() else {
        // No SQLSTATE: I/O, a closed connection, a protocol hiccup.
        return Class::Transient;
    };
    let c = code.code();
    if c.starts_with("08") // connection exception
        || c.starts_with("53") // insufficient resources
        || c.starts_with("57P") // admin/crash shutdown, cannot connect now
        || *code == SqlState::T_R_SERIALIZATION_FAILURE
        || *code == SqlState::T_R_DEADLOCK_DETECTED
        || *code == SqlState::LOCK_NOT_AVAILABLE
        || *code == SqlState::QUERY_CANCELED
        || *code == SqlState::IDLE_IN_TRANSACTION_SESSION_TIMEOUT
        || c == "40000" // transaction rollback (YugabyteDB restarts)
        || c == "XX000" && is_yb_retry(e)
    {
        Class::Transient
    } else {
        Class::Definite
    }
}

fn is_yb_retry(e: &tokio_postgres::Error) -> bool {
    e.as_db_error()
        .map(|d| {
            let m = d.message();
            m.contains("Restart read required") || m.contains("Try again")
        })
        .unwrap_or(false)
}

/// What the operator should do about a definite database error.
pub(crate) fn hint(e: &tokio_postgres::Error) -> &'static str {
    let Some(code) = e.code() else {
        return "fix the cause";
    };
    if *code == SqlState::UNDEFINED_TABLE {
        "create the table on the destination"
    } else if *code == SqlState::UNDEFINED_COLUMN {
        "add the column on the destination"
    } else if *code == SqlState::DATATYPE_MISMATCH
        || *code == SqlState::INVALID_TEXT_REPRESENTATION
        || *code == SqlState::CANNOT_COERCE
        || code.code().starts_with("22")
    {
        "make the destination column's type able to hold the source's values"
    } else if code.code().starts_with("23") {
        "relax or fix the constraint on the destination (or the data that violates it)"
    } else if *code == SqlState::INSUFFICIENT_PRIVILEGE {
        "grant the importer's role the needed privileges"
    } else {
        "fix the cause"
    }
}

/// Database error text with its detail, column and constraint, without row values
/// beyond what the server put in its message.
pub(crate) fn describe_pg(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => {
            let mut out = db.message().to_owned();
            if let Some(column) = db.column() {
                out.push_str(&format!(" (column \"{column}\")"));
            }
            if let Some(constraint) = db.constraint() {
                out.push_str(&format!(" (constraint \"{constraint}\")"));
            }
            out.push_str(&format!(" [SQLSTATE {}]", db.code().code()));
            out
        }
        None => {
            let mut out = e.to_string();
            let mut source = std::error::Error::source(e);
            while let Some(cause) = source {
                out.push_str(": ");
                out.push_str(&cause.to_string());
                source = cause.source();
            }
            out
        }
    }
}

/// Exponential backoff, 100 ms doubling up to 30 s.
#[derive(Debug)]
pub(crate) struct Backoff {
    next: Duration,
    pub(crate) attempts: u32,
    started: std::time::Instant,
}

/// Attempts before a transient condition becomes an error (about 10 minutes).
pub(crate) const MAX_ATTEMPTS: u32 = 28;

impl Backoff {
    pub(crate) fn new() -> Self {
        Backoff {
            next: Duration::from_millis(100),
            attempts: 0,
            started: std::time::Instant::now(),
        }
    }

    /// The delay before the next attempt, or `Err` when attempts are used up.
    pub(crate) fn next_delay(&mut self, last: &str) -> Result<Duration, Error> {
        self.attempts += 1;
        if self.attempts >= MAX_ATTEMPTS {
            return Err(Error::GaveUp {
                attempts: self.attempts,
                elapsed: self.started.elapsed(),
                last: last.to_owned(),
            });
        }
        let delay = self.next;
        self.next = (self.next * 2).min(Duration::from_secs(30));
        Ok(delay)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_bounded() {
        let mut b = Backoff::new();
        let delays: Vec<Duration> = (0..MAX_ATTEMPTS - 1)
            .map(|_| b.next_delay("x").unwrap())
            .collect();
        assert_eq!(delays[0], Duration::from_millis(100));
        assert_eq!(delays[1], Duration::from_millis(200));
        assert!(delays.iter().all(|d| *d <= Duration::from_secs(30)));
        assert!(matches!(b.next_delay("x"), Err(Error::GaveUp { .. })));
    }
}
