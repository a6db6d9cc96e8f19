//! What stops the exporter ([`Error`]), and which failures a retry may cure
//! ([`Error::class`], under the one error policy of every Ferry process).

use ferry_shared::catalog::CatalogError;
use ferry_shared::config::{ConfigError, ConnectError};
use ferry_shared::error_policy::{classify_kafka, classify_pg, classify_registry, ErrorClass};
use ferry_shared::kafka;
use ferry_shared::registry::RegistryError;
use ferry_shared::value::ValueError;
use pgwire_replication::PgWireError;

use crate::sequencer::SequencerError;

/// What stops the exporter.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The configuration lacks something.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The source could not be reached.
    #[error(transparent)]
    Connect(ConnectError),
    /// The source is not ready.
    #[error(transparent)]
    Check(#[from] crate::postgres::check::CheckError),
    /// A catalog read failed.
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    /// A statement failed.
    #[error("{what}")]
    Sql {
        /// What was being done.
        what: String,
        /// The database error.
        #[source]
        source: tokio_postgres::Error,
    },
    /// Kafka.
    #[error(transparent)]
    Kafka(#[from] kafka::Error),
    /// Schema registry.
    #[error("registering the schemas of table {table}")]
    Registry {
        /// `schema.table`.
        table: String,
        /// The error.
        #[source]
        source: RegistryError,
    },
    /// The stamper or checkpoint writer.
    #[error(transparent)]
    Sequencer(#[from] SequencerError),
    /// The replication session.
    #[error("{what}")]
    Replication {
        /// What was being done.
        what: String,
        /// The error.
        #[source]
        source: PgWireError,
    },
    /// The slot disappeared.
    #[error("replication slot \"{slot}\" does not exist (was it dropped?); changes since the last checkpoint cannot be recovered: end the migration (ferry end migration) and start it again, which takes a new snapshot")]
    SlotDropped {
        /// Slot name.
        slot: String,
    },
    /// The publication disappeared.
    #[error("publication \"{publication}\" does not exist (was it dropped?); the slot cannot decode changes without it: end the migration (ferry end migration) and start it again, which takes a new snapshot")]
    PublicationDropped {
        /// Publication name.
        publication: String,
    },
    /// TRUNCATE on a selected table.
    #[error("table {table} was truncated on the source; Ferry does not replicate TRUNCATE and stopped this stream: truncate the table on every destination, then end the migration and start it again, or exclude the table")]
    Truncate {
        /// `schema.table` (several, comma-separated).
        table: String,
    },
    /// DDL on a selected table.
    #[error("table {table} changed on the source (DDL): {detail}; Ferry does not replicate schema changes and stopped this stream: apply the same change on every destination, then end the migration and start it again")]
    SchemaChanged {
        /// `schema.table`.
        table: String,
        /// What differs.
        detail: String,
    },
    /// An unchanged TOAST value without the old row.
    #[error("table {table} column {column}: an update did not carry this unchanged large value and the old row is not available; run {fix} and start the migration of this table again")]
    UnchangedToast {
        /// `schema.table`.
        table: String,
        /// Column.
        column: String,
        /// The statement that fixes it.
        fix: String,
    },
    /// A malformed pgoutput message.
    #[error("decoding the change stream")]
    Decode(#[source] crate::postgres::pgoutput::DecodeError),
    /// A value that does not parse.
    #[error("table {table} column {column}")]
    Value {
        /// `schema.table`.
        table: String,
        /// Column.
        column: String,
        /// The error.
        #[source]
        source: ValueError,
    },
    /// Avro encoding failed.
    #[error("encoding an event of table {table}")]
    Encode {
        /// `schema.table`.
        table: String,
        /// The error.
        #[source]
        source: ferry_shared::avro::AvroError,
    },
    /// The selected tables are not the ones the migration started with.
    #[error("publication \"{publication}\" does not include table {tables}: the table selection changed after the migration started; restore migration.include_tables / exclude_tables, or migrate the new tables in a new migration")]
    TablesChanged {
        /// Publication name.
        publication: String,
        /// `schema.table`, comma-separated.
        tables: String,
    },
    /// The replication connection's TLS failed: no TLS on the server, a certificate
    /// not signed by the CA, a host name the certificate does not name, an unreadable
    /// CA file. Definite: the settings or the server's certificate must change.
    #[error("cannot open the replication connection to {database} with TLS (sslmode {sslmode}, sslrootcert \"{sslrootcert}\"): check sslrootcert (the CA that signed the server's certificate), host (verify-full: a name the certificate lists) and the server's ssl settings")]
    ReplicationTls {
        /// `user@host:port/db`.
        database: String,
        /// The configured sslmode.
        sslmode: &'static str,
        /// The configured CA file (empty when none).
        sslrootcert: String,
        /// The replication client's error.
        #[source]
        source: PgWireError,
    },
    /// The broker refused this client (SASL login or TLS handshake).
    #[error(transparent)]
    KafkaAccess(#[from] ferry_shared::kafka_access::AccessError),
    /// A bug or an unexpected state.
    #[error("internal error: {0}")]
    Internal(String),
}

impl Error {
    /// Its class under the one error policy ([`ferry_shared::error_policy`]): a server,
    /// the broker or the registry unreachable for a while is transient (the run
    /// restarts from the stored checkpoint); a fact about the source, a table or the
    /// configuration is definite (the message says what to do).
    pub fn class(&self) -> ErrorClass {
        match self {
            Error::Connect(e) => e.class(),
            Error::Kafka(e) => e.class(),
            Error::Sequencer(SequencerError::Produce(e)) => classify_kafka(e),
            Error::Sequencer(_) => ErrorClass::Transient,
            // The replication protocol's own errors: a connection lost (I/O) or its
            // task ended is transient; a server refusal is a fact.
            Error::Replication { source, .. } => {
                if matches!(source, PgWireError::Io(_) | PgWireError::Task(_)) {
                    ErrorClass::Transient
                } else {
                    ErrorClass::Definite
                }
            }
            // A refused certificate, a TLS alert, an unusable CA file or a server
            // without TLS is a fact about the settings; the connection lost in the
            // middle of the handshake is not. The crate gives only text.
            Error::ReplicationTls { source, .. } => {
                let text = source.to_string();
                let refusal = [
                    "certificate",
                    "alert",
                    "TLS config error",
                    "does not support TLS",
                    "SNI",
                ];
                if refusal.iter().any(|r| text.contains(r)) {
                    ErrorClass::Definite
                } else {
                    ErrorClass::Transient
                }
            }
            Error::Sql { source, .. } => classify_pg(source),
            Error::Registry { source, .. } => classify_registry(source),
            _ => ErrorClass::Definite,
        }
    }

    /// True when retrying later may succeed ([`Error::class`]).
    pub fn is_transient(&self) -> bool {
        self.class().is_transient()
    }

    pub(crate) fn sql(what: impl Into<String>, source: tokio_postgres::Error) -> Self {
        Error::Sql {
            what: what.into(),
            source,
        }
    }
}
