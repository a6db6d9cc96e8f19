//! The one error policy of every Ferry process: what is retried, what stops a unit of
//! work for the operator, and how long to wait between attempts.
//!
//! Three classes ([`ErrorClass`]):
//!
//! - **transient**: the condition may go away by itself (a connection lost, a server
//!   restarting, a serialization failure or deadlock, a broker or registry out of
//!   reach). Retry with [`Backoff`]; nothing is lost, because every stage moves its
//!   position only after the next stage made the data durable.
//! - **definite**: a fact about a table, a setting or the stream (a missing table or
//!   column, a type that can't hold a value, a constraint, a refused login, a record
//!   Ferry can't read). Retrying can't help: the unit stops with a message naming the
//!   object and the fix, and resumes from its stored position once restarted.
//! - **fatal**: a broken invariant or damaged data (corrupted pages, a fenced producer,
//!   a bug). The process stops; the operator reads the message before anything else
//!   runs.
//!
//! PostgreSQL errors are classified by SQLSTATE, Kafka errors by librdkafka's code,
//! schema-registry errors by what the registry said (HTTP status or transport), here and
//! nowhere else.

use std::time::{Duration, Instant};

use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use tokio_postgres::error::SqlState;

use crate::registry::RegistryError;

/// What to do about an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// Retry with backoff.
    Transient,
    /// Stop this unit and tell the operator what to fix.
    Definite,
    /// Stop the process: an invariant broke or data is damaged.
    Fatal,
}

impl ErrorClass {
    /// `transient`, `definite` or `fatal` (as heartbeats and status show it).
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorClass::Transient => "transient",
            ErrorClass::Definite => "definite",
            ErrorClass::Fatal => "fatal",
        }
    }

    /// Whether retrying may succeed.
    pub fn is_transient(self) -> bool {
        self == ErrorClass::Transient
    }
}

/// A PostgreSQL (or YugabyteDB) error, by SQLSTATE. An error without one (I/O, a closed
/// connection, a protocol hiccup) is transient.
pub fn classify_pg(e: &tokio_postgres::Error) -> ErrorClass {
    let Some(code) = e.code() else {
        return ErrorClass::Transient;
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
        ErrorClass::Transient
    } else if *code == SqlState::DATA_CORRUPTED || *code == SqlState::INDEX_CORRUPTED {
        ErrorClass::Fatal
    } else {
        ErrorClass::Definite
    }
}

/// YugabyteDB reports some retryable conflicts as internal errors (XX000) whose text
/// asks for a retry.
fn is_yb_retry(e: &tokio_postgres::Error) -> bool {
    e.as_db_error()
        .map(|d| {
            let m = d.message();
            m.contains("Restart read required") || m.contains("Try again")
        })
        .unwrap_or(false)
}

/// A Kafka client error, by librdkafka's code. A producer fenced or a fatal client error
/// is fatal; what the broker refuses for good (authorization, a failed login, a record
/// too large, an invalid topic or setting, a feature it lacks) is definite; everything
/// else (transport, timeouts, leadership and group moves, a full queue) is transient:
/// librdkafka retries most of it itself and a fresh session fixes the rest.
pub fn classify_kafka(e: &KafkaError) -> ErrorClass {
    let code = match e {
        KafkaError::Global(code) => Some(*code),
        KafkaError::Transaction(t) if t.is_fatal() => return ErrorClass::Fatal,
        KafkaError::Transaction(t) if t.is_retriable() => return ErrorClass::Transient,
        KafkaError::ClientConfig(..) | KafkaError::ClientCreation(_) | KafkaError::Nul(_) => {
            return ErrorClass::Definite
        }
        _ => e.rdkafka_error_code(),
    };
    let Some(code) = code else {
        return ErrorClass::Transient;
    };
    use RDKafkaErrorCode as C;
    match code {
        C::Fatal
        | C::Fenced
        | C::ProducerFenced
        | C::InvalidProducerEpoch
        | C::FencedInstanceId
        | C::TransactionCoordinatorFenced
        | C::OutOfOrderSequenceNumber => ErrorClass::Fatal,
        C::TopicAuthorizationFailed
        | C::GroupAuthorizationFailed
        | C::ClusterAuthorizationFailed
        | C::TransactionalIdAuthorizationFailed
        | C::DelegationTokenAuthorizationFailed
        | C::SaslAuthenticationFailed
        | C::Authentication
        | C::UnsupportedSASLMechanism
        | C::SSL
        | C::MessageSizeTooLarge
        | C::InvalidMessageSize
        | C::InvalidTopic
        | C::InvalidRequiredAcks
        | C::InvalidPartitions
        | C::InvalidReplicationFactor
        | C::InvalidConfig
        | C::PolicyViolation
        | C::UnsupportedVersion
        | C::UnsupportedFeature
        | C::UnsupportedForMessageFormat
        | C::UnsupportedCompressionType
        | C::InvalidRecord
        | C::InvalidArgument => ErrorClass::Definite,
        _ => ErrorClass::Transient,
    }
}

/// A schema-registry error: the registry out of reach or answering 5xx, 408 or 429 is
/// transient; a refusal (4xx: an incompatible schema, a subject or id it does not have,
/// bad credentials) and bytes that are not a Ferry record are definite.
pub fn classify_registry(e: &RegistryError) -> ErrorClass {
    match e {
        RegistryError::Registry {
            retriable: true, ..
        } => ErrorClass::Transient,
        RegistryError::Registry {
            status, message, ..
        } => match status {
            Some(status) => classify_http_status(*status),
            // No HTTP answer at all: the registry (often the coordinator) is not
            // reachable for a while.
            None if message.contains("error sending request")
                || message.contains("onnect")
                || message.contains("timed out") =>
            {
                ErrorClass::Transient
            }
            None => ErrorClass::Definite,
        },
        RegistryError::Schema { .. }
        | RegistryError::Framing(_)
        | RegistryError::Avro(_)
        | RegistryError::Envelope(_) => ErrorClass::Definite,
    }
}

/// An HTTP answer's status (the registry, the coordinator's API): 5xx, 408 and 429 are
/// transient, other 4xx definite.
pub fn classify_http_status(status: u16) -> ErrorClass {
    match status {
        408 | 429 | 500..=599 => ErrorClass::Transient,
        _ => ErrorClass::Definite,
    }
}

/// What the operator should do about a definite database error.
pub fn pg_hint(e: &tokio_postgres::Error) -> &'static str {
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

/// A database error's text with its column, constraint and SQLSTATE, without row
/// values beyond what the server put in its message; for errors without a server
/// answer, the chain of causes.
pub fn describe_pg(e: &tokio_postgres::Error) -> String {
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
        None => crate::process::error_chain(e),
    }
}

/// The one backoff: the delay doubles from the first one up to 30 s. Retried units that
/// may give up count attempts ([`Backoff::next_delay`] after [`Backoff::MAX_ATTEMPTS`],
/// about ten minutes from 100 ms); a loop that restarts a whole run resets after a quiet
/// while ([`Backoff::reset_if_quiet`]).
#[derive(Debug, Clone)]
pub struct Backoff {
    first: Duration,
    next: Duration,
    attempts: u32,
    started: Instant,
}

/// A transient condition outlasted every attempt.
#[derive(Debug, Clone, thiserror::Error)]
#[error("gave up after {attempts} attempts over {elapsed:?}: {last}")]
pub struct GaveUp {
    /// Attempts made.
    pub attempts: u32,
    /// Time spent.
    pub elapsed: Duration,
    /// The last error.
    pub last: String,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff::new()
    }
}

impl Backoff {
    /// Attempts before a transient condition becomes an error (about 10 minutes when
    /// starting at 100 ms).
    pub const MAX_ATTEMPTS: u32 = 28;
    /// The longest delay.
    pub const MAX_DELAY: Duration = Duration::from_secs(30);

    /// Starting at 100 ms (a statement, a batch, a session).
    pub fn new() -> Self {
        Backoff::starting_at(Duration::from_millis(100))
    }

    /// Starting at `first` (a whole run restarting from its checkpoint starts at 1 s).
    pub fn starting_at(first: Duration) -> Self {
        Backoff {
            first,
            next: first,
            attempts: 0,
            started: Instant::now(),
        }
    }

    /// Attempts so far.
    pub fn attempts(&self) -> u32 {
        self.attempts
    }

    /// The delay before the next attempt (no limit on attempts).
    pub fn delay(&mut self) -> Duration {
        self.attempts += 1;
        let delay = self.next;
        self.next = (self.next * 2).min(Self::MAX_DELAY);
        delay
    }

    /// The delay before the next attempt, or [`GaveUp`] once [`Backoff::MAX_ATTEMPTS`]
    /// are used up.
    pub fn next_delay(&mut self, last: &str) -> Result<Duration, GaveUp> {
        if self.attempts + 1 >= Self::MAX_ATTEMPTS {
            self.attempts += 1;
            return Err(GaveUp {
                attempts: self.attempts,
                elapsed: self.started.elapsed(),
                last: last.to_owned(),
            });
        }
        Ok(self.delay())
    }

    /// Starts over when the last attempt ran longer than `quiet` (it worked for a while
    /// before failing again).
    pub fn reset_if_quiet(&mut self, last_attempt_ran: Duration, quiet: Duration) {
        if last_attempt_ran > quiet {
            *self = Backoff::starting_at(self.first);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_its_first_delay_is_bounded_and_gives_up() {
        let mut b = Backoff::new();
        let delays: Vec<Duration> = (0..Backoff::MAX_ATTEMPTS - 1)
            .map(|_| b.next_delay("x").unwrap())
            .collect();
        assert_eq!(delays[0], Duration::from_millis(100));
        assert_eq!(delays[1], Duration::from_millis(200));
        assert!(delays.iter().all(|d| *d <= Backoff::MAX_DELAY));
        let gave_up = b.next_delay("last words").unwrap_err();
        assert_eq!(gave_up.attempts, Backoff::MAX_ATTEMPTS);
        assert_eq!(gave_up.last, "last words");
    }

    #[test]
    fn a_run_backoff_starts_at_its_first_delay_again_after_a_quiet_while() {
        let mut b = Backoff::starting_at(Duration::from_secs(1));
        assert_eq!(b.delay(), Duration::from_secs(1));
        assert_eq!(b.delay(), Duration::from_secs(2));
        b.reset_if_quiet(Duration::from_secs(10), Duration::from_secs(300));
        assert_eq!(b.delay(), Duration::from_secs(4));
        b.reset_if_quiet(Duration::from_secs(301), Duration::from_secs(300));
        assert_eq!(b.delay(), Duration::from_secs(1));
        for _ in 0..20 {
            b.delay();
        }
        assert_eq!(b.delay(), Backoff::MAX_DELAY);
    }

    #[test]
    fn kafka_errors_are_classified_by_code() {
        assert_eq!(
            classify_kafka(&KafkaError::Global(RDKafkaErrorCode::AllBrokersDown)),
            ErrorClass::Transient
        );
        assert_eq!(
            classify_kafka(&KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull)),
            ErrorClass::Transient
        );
        assert_eq!(
            classify_kafka(&KafkaError::MessageProduction(
                RDKafkaErrorCode::MessageSizeTooLarge
            )),
            ErrorClass::Definite
        );
        assert_eq!(
            classify_kafka(&KafkaError::Global(
                RDKafkaErrorCode::TopicAuthorizationFailed
            )),
            ErrorClass::Definite
        );
        assert_eq!(
            classify_kafka(&KafkaError::MessageProduction(
                RDKafkaErrorCode::ProducerFenced
            )),
            ErrorClass::Fatal
        );
        assert_eq!(
            classify_kafka(&KafkaError::ClientCreation("bad".into())),
            ErrorClass::Definite
        );
        // What a consumer meets while a group settles is retried.
        assert_eq!(
            classify_kafka(&KafkaError::MessageConsumption(
                RDKafkaErrorCode::PollExceeded
            )),
            ErrorClass::Transient
        );
        assert_eq!(
            classify_kafka(&KafkaError::Rebalance(
                RDKafkaErrorCode::RebalanceInProgress
            )),
            ErrorClass::Transient
        );
    }

    #[test]
    fn registry_errors_are_classified_by_status_or_transport() {
        let answered = |status: Option<u16>, message: &str| RegistryError::Registry {
            url: "http://r".into(),
            message: message.into(),
            retriable: false,
            status,
        };
        assert_eq!(
            classify_registry(&answered(Some(503), "unavailable")),
            ErrorClass::Transient
        );
        assert_eq!(
            classify_registry(&answered(Some(409), "incompatible schema")),
            ErrorClass::Definite
        );
        assert_eq!(
            classify_registry(&answered(None, "error sending request for url")),
            ErrorClass::Transient
        );
        assert_eq!(
            classify_registry(&answered(None, "invalid url")),
            ErrorClass::Definite
        );
        assert_eq!(
            classify_registry(&RegistryError::Framing("magic byte 3".into())),
            ErrorClass::Definite
        );
        assert_eq!(classify_http_status(429), ErrorClass::Transient);
        assert_eq!(classify_http_status(401), ErrorClass::Definite);
    }

    #[test]
    fn a_pg_error_without_a_server_answer_is_transient() {
        // A connection refused: no SQLSTATE.
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let e = rt
            .block_on(tokio_postgres::connect(
                "host=127.0.0.1 port=1 user=x connect_timeout=1",
                tokio_postgres::NoTls,
            ))
            .err()
            .unwrap();
        assert_eq!(classify_pg(&e), ErrorClass::Transient);
        assert!(!describe_pg(&e).is_empty());
    }
}
