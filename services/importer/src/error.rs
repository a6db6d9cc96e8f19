//! What stops the importer. What is retried and what stops is decided by the one error
//! policy of every Ferry process ([`ferry_shared::error_policy`]); this module maps its
//! classes onto the importer's session loop:
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

use ferry_shared::config::{ConfigError, ConnectError};
use ferry_shared::error_policy::{classify_pg, describe_pg, pg_hint, ErrorClass, GaveUp};

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
    /// A broken invariant or damaged data (the one error policy's fatal class).
    #[error("{0}")]
    Fatal(String),
    /// The broker refused this client (SASL login or TLS handshake).
    #[error(transparent)]
    KafkaAccess(#[from] ferry_shared::kafka_access::AccessError),
    /// A transient condition outlasted every retry.
    #[error(transparent)]
    GaveUp(#[from] GaveUp),
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
    /// Stop with this message: an invariant broke or data is damaged.
    #[error("{0}")]
    Fatal(String),
    /// Another importer wrote a partition's position since this one read it (a rebalance
    /// moved the partition): drop in-flight work and reload positions.
    #[error("positions of {0} moved under this importer (partition reassigned)")]
    Conflict(String),
}

impl Failure {
    /// A failure of class `class` (a fatal one stops the importer like a definite one,
    /// and is reported as fatal).
    pub(crate) fn of(class: ErrorClass, text: String) -> Failure {
        match class {
            ErrorClass::Transient => Failure::Transient(text),
            ErrorClass::Definite => Failure::Definite(text),
            ErrorClass::Fatal => Failure::Fatal(text),
        }
    }

    /// A database error while doing `what`, classified; a definite one says what to do.
    pub(crate) fn pg(what: &str, e: &tokio_postgres::Error) -> Failure {
        Failure::of(classify_pg(e), format!("{what}: {}", describe_pg(e)))
    }

    /// A database error writing rows (`text` names the table and events), classified; a
    /// definite one carries the hint and how to resume.
    pub(crate) fn pg_rows(text: String, e: &tokio_postgres::Error) -> Failure {
        match classify_pg(e) {
            ErrorClass::Transient => Failure::Transient(text),
            ErrorClass::Fatal => Failure::Fatal(text),
            ErrorClass::Definite => Failure::Definite(format!(
                "{text}: {}, then restart the importer; it resumes where it stopped",
                pg_hint(e)
            )),
        }
    }
}

impl Error {
    /// The class of the error the importer stopped on, as its heartbeat and error record
    /// report it: fatal for a broken invariant or damaged data, definite otherwise (a
    /// transient condition that outlasted every retry stops it until the operator acts
    /// too).
    pub fn class(&self) -> ErrorClass {
        match self {
            Error::Fatal(_) => ErrorClass::Fatal,
            _ => ErrorClass::Definite,
        }
    }
}
