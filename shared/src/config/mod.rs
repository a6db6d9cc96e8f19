//! The configuration of every Ferry process: one typed tree.
//!
//! Sources, lowest precedence first:
//!
//! 1. `ferry.toml` (path from `-c/--config` or `FERRY_CONFIG`, default `./ferry.toml`);
//! 2. environment variables `FERRY_<SECTION>__<KEY>`: the parts between double
//!    underscores are lowercased and name the path in the tree, so
//!    `FERRY_SOURCE_REPLICA__HOST` sets `source_replica.host`;
//! 3. `--set section.key=value` flags (repeatable).
//!
//! Values from the environment and flags are read as TOML (`5`, `true`,
//! `["public","sales"]`) when they parse as such and otherwise taken as text.
//! librdkafka properties keep their dots, so set them in the file (`[kafka.properties]`)
//! or with `--set kafka.properties.linger.ms=5`; an environment variable
//! `FERRY_KAFKA__PROPERTIES__LINGER_MS` would set the property `linger_ms`, which is
//! not a librdkafka name. `FERRY_CONFIG` and `FERRY_LOG` are not settings; any other
//! `FERRY_` variable that names no setting is an error.
//!
//! Overrides edit one [`toml::Value`] tree before it is deserialized, so an unknown key
//! from any of the three sources is rejected by the same `deny_unknown_fields` path.
//! Every problem is reported at once ([`ConfigErrors`]), each naming the setting, where
//! it came from, and what to do. Passwords are [`Secret`]s: never printed, not even in
//! deserialization errors.

mod database;
mod error;
mod kafka;
mod load;
mod secret;
mod validate;

#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

pub use database::ConnectError;
pub use error::{ConfigError, ConfigErrors};
pub use load::{load_file, load_from, Args};
pub use secret::Secret;

/// The whole configuration of one Ferry process.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// What is migrated and how its topics are laid out.
    pub migration: MigrationConfig,
    /// The database the application uses today.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<DatabaseConfig>,
    /// The database to move to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<DatabaseConfig>,
    /// The optional third database kept in sync for fall-forward.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_replica: Option<DatabaseConfig>,
    /// The Kafka cluster that carries the streams.
    pub kafka: KafkaConfig,
    /// An external schema registry; absent means the coordinator's built-in one.
    #[serde(default)]
    pub schema_registry: SchemaRegistryConfig,
    /// Where the coordinator listens and how others reach it.
    #[serde(default)]
    pub coordinator: CoordinatorConfig,
    /// Exporter tuning.
    #[serde(default)]
    pub exporter: ExporterConfig,
    /// Importer tuning.
    #[serde(default)]
    pub importer: ImporterConfig,
}

/// `[migration]`: identity, workflow, topic layout and the table filter.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MigrationConfig {
    /// Short id, `^[a-z0-9][a-z0-9_-]{0,47}$`; names topics, groups, slots.
    #[serde(deserialize_with = "secret::scalar_text")]
    pub id: String,
    /// Free text for people.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "secret::opt_scalar_text"
    )]
    pub name: Option<String>,
    /// live, fall-forward or fall-back.
    #[serde(default)]
    pub workflow: Workflow,
    /// Topic name prefix; `None` means `ferry.<id>` (see [`MigrationConfig::topic_prefix`]).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "secret::opt_scalar_text"
    )]
    pub topic_prefix: Option<String>,
    /// Partitions per table topic, 1..=1024.
    #[serde(default = "default_partitions")]
    pub partitions: u32,
    /// Replication factor of Ferry's topics, 1..=32.
    #[serde(default = "default_replication_factor")]
    pub replication_factor: u16,
    /// Tables to migrate (`schema.table` or `table`, `*` wildcards); empty means all
    /// tables in the database's `schemas`.
    #[serde(default)]
    pub include_tables: Vec<String>,
    /// Tables to leave out, same patterns; applied after `include_tables`.
    #[serde(default)]
    pub exclude_tables: Vec<String>,
}

/// The migration workflows of DESIGN.md §1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Workflow {
    /// source → target, cutover to target.
    #[default]
    Live,
    /// Also keeps a source-replica in sync.
    FallForward,
    /// Keeps the source in sync after cutover.
    FallBack,
}

/// `[source]`, `[target]`, `[source_replica]`: one database.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseConfig {
    /// Database engine; which ones are allowed depends on the role.
    #[serde(default)]
    pub engine: Engine,
    /// Host name or address.
    #[serde(deserialize_with = "secret::scalar_text")]
    pub host: String,
    /// Port; `None` means the engine's default (see [`DatabaseConfig::port`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// User name.
    #[serde(deserialize_with = "secret::scalar_text")]
    pub user: String,
    /// Password. Or `password_file`; from the environment: `FERRY_<SECTION>__PASSWORD`.
    pub password: Secret,
    /// A file holding the password (a trailing newline is dropped), read once when
    /// the configuration is loaded; instead of `password`, not with it.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "secret::opt_scalar_text"
    )]
    pub password_file: Option<String>,
    /// Database (PostgreSQL) or service name (Oracle).
    #[serde(deserialize_with = "secret::scalar_text")]
    pub database: String,
    /// Schemas whose tables take part; non-empty.
    #[serde(default = "default_schemas")]
    pub schemas: Vec<String>,
    /// TLS mode, as libpq's `sslmode`.
    #[serde(default)]
    pub sslmode: SslMode,
    /// CA certificate file; required for verify-ca and verify-full.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "secret::opt_scalar_text"
    )]
    pub sslrootcert: Option<String>,
}

/// Database engines Ferry reads or writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Engine {
    /// PostgreSQL.
    #[default]
    Postgresql,
    /// Oracle (LogMiner source, or source-replica).
    Oracle,
    /// YugabyteDB YSQL (PostgreSQL protocol).
    Yugabytedb,
}

/// libpq's sslmode values that Ferry supports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SslMode {
    /// Never TLS.
    Disable,
    /// TLS when the server offers it, without certificate checks.
    #[default]
    Prefer,
    /// TLS always; the certificate is checked only when `sslrootcert` is set.
    Require,
    /// TLS with the certificate checked against `sslrootcert`.
    VerifyCa,
    /// As verify-ca, and the host name must match the certificate.
    VerifyFull,
}

/// `[kafka]`: how to reach the cluster.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaConfig {
    /// Comma-separated `host:port` list.
    #[serde(deserialize_with = "secret::scalar_text")]
    pub bootstrap_servers: String,
    /// Transport and authentication.
    #[serde(default)]
    pub security_protocol: SecurityProtocol,
    /// SASL mechanism; required for `sasl_*` protocols.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sasl_mechanism: Option<SaslMechanism>,
    /// SASL user; required for `sasl_*` protocols.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "secret::opt_scalar_text"
    )]
    pub sasl_username: Option<String>,
    /// SASL password; required for `sasl_*` protocols (or `sasl_password_file`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sasl_password: Option<Secret>,
    /// A file holding the SASL password, read when the configuration is loaded;
    /// instead of `sasl_password`, not with it.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "secret::opt_scalar_text"
    )]
    pub sasl_password_file: Option<String>,
    /// CA certificate file for `ssl`/`sasl_ssl`.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "secret::opt_scalar_text"
    )]
    pub ssl_ca_location: Option<String>,
    /// Extra librdkafka properties, passed through as given (they win over the above).
    #[serde(
        default,
        skip_serializing_if = "BTreeMap::is_empty",
        deserialize_with = "secret::text_map"
    )]
    pub properties: BTreeMap<String, String>,
}

/// Kafka `security.protocol`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SecurityProtocol {
    /// No TLS, no SASL.
    #[default]
    Plaintext,
    /// TLS.
    Ssl,
    /// SASL without TLS.
    SaslPlaintext,
    /// SASL over TLS.
    SaslSsl,
}

/// Kafka `sasl.mechanism`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SaslMechanism {
    /// PLAIN.
    #[serde(rename = "PLAIN")]
    Plain,
    /// SCRAM-SHA-256.
    #[serde(rename = "SCRAM-SHA-256")]
    ScramSha256,
    /// SCRAM-SHA-512.
    #[serde(rename = "SCRAM-SHA-512")]
    ScramSha512,
}

/// `[schema_registry]`: an external Confluent-compatible registry.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SchemaRegistryConfig {
    /// Base URL; `None` means the coordinator's built-in registry.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "secret::opt_scalar_text"
    )]
    pub url: Option<String>,
    /// Basic-auth user.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "secret::opt_scalar_text"
    )]
    pub username: Option<String>,
    /// Basic-auth password (or `password_file`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<Secret>,
    /// A file holding the basic-auth password, read when the configuration is loaded;
    /// instead of `password`, not with it.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "secret::opt_scalar_text"
    )]
    pub password_file: Option<String>,
    /// PEM CA certificate(s) trusted for an `https://` registry, besides the system's.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "secret::opt_scalar_text"
    )]
    pub ca_file: Option<String>,
}

/// `[coordinator]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CoordinatorConfig {
    /// Socket address the coordinator binds.
    #[serde(default = "default_listen", deserialize_with = "secret::scalar_text")]
    pub listen: String,
    /// How others reach it; `None` means `http://<listen>`, or `https://<listen>` with
    /// `tls_cert` (see [`CoordinatorConfig::url`]).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "secret::opt_scalar_text"
    )]
    pub url: Option<String>,
    /// The token every request that changes something (and, unless `public_read`, every
    /// request) must carry. Set this or `token_file`, not both; with neither, the
    /// coordinator generates one (see [`crate::coordinator_access`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<Secret>,
    /// A file holding the token (surrounding whitespace ignored). The coordinator writes
    /// a new random token there (mode 0600) when the file does not exist yet.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "secret::opt_scalar_text"
    )]
    pub token_file: Option<String>,
    /// Opens the read-only routes (status, report, `/metrics`, the status page, registry
    /// GETs) to requests without the token. `/healthz` is always open.
    #[serde(default)]
    pub public_read: bool,
    /// PEM certificate (chain) the coordinator serves HTTPS with; needs `tls_key`.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "secret::opt_scalar_text"
    )]
    pub tls_cert: Option<String>,
    /// PEM private key of `tls_cert`.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "secret::opt_scalar_text"
    )]
    pub tls_key: Option<String>,
    /// PEM CA certificate(s) the clients (CLI, exporter, importer) trust for the
    /// coordinator's HTTPS, besides the system's; for a self-signed or private CA.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "secret::opt_scalar_text"
    )]
    pub ca_file: Option<String>,
}

/// `[exporter]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExporterConfig {
    /// What the exporter reads.
    #[serde(default)]
    pub export_type: ExportType,
    /// Parallel snapshot readers, 1..=64.
    #[serde(default = "default_workers")]
    pub snapshot_workers: u32,
    /// Rows per snapshot chunk, at least 1000.
    #[serde(default = "default_chunk_rows")]
    pub chunk_rows: u64,
    /// How many records a snapshot may run ahead of the slowest importer of the stream
    /// (its group's committed offsets against the topics' ends): a reader waits before
    /// its next chunk while an importer is further behind. Importers that have not
    /// committed yet do not hold the snapshot back. 0 never waits.
    #[serde(default = "default_snapshot_max_lead")]
    pub snapshot_max_lead: u64,
    /// Where the exporter serves `GET /healthz` for a cluster's probes (e.g.
    /// `"0.0.0.0:8480"`); not served when unset.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "secret::opt_scalar_text"
    )]
    pub health_listen: Option<String>,
}

/// What an exporter reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ExportType {
    /// A consistent snapshot, then every later change.
    #[default]
    SnapshotAndChanges,
    /// Only the snapshot.
    SnapshotOnly,
    /// Only changes, from the moment the slot is created.
    ChangesOnly,
}

/// `[importer]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImporterConfig {
    /// A batch is cut at this many rows, 1..=1000000.
    #[serde(default = "default_batch_rows")]
    pub batch_rows: u32,
    /// ... or after this many milliseconds, 1..=60000.
    #[serde(default = "default_batch_max_ms")]
    pub batch_max_ms: u32,
    /// Apply tasks per importer process, 1..=64: the partitions assigned to the process
    /// are split among them, each with its own destination connection.
    #[serde(default = "default_workers")]
    pub workers: u32,
    /// Fetch batching, 0..=5000 ms: at the end of the log the broker holds a fetch
    /// until 256 KiB are there or this long passed (Kafka's `fetch.wait.max.ms` with
    /// `fetch.min.bytes`), so a trickle of changes comes in batches. 0: each fetch is
    /// answered as soon as one record is there.
    #[serde(default = "default_fetch_wait_ms")]
    pub fetch_wait_ms: u32,
    /// Where the importer serves `GET /healthz` for a cluster's probes (e.g.
    /// `"0.0.0.0:8481"`); not served when unset.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "secret::opt_scalar_text"
    )]
    pub health_listen: Option<String>,
}

fn default_partitions() -> u32 {
    4
}
fn default_replication_factor() -> u16 {
    1
}
fn default_schemas() -> Vec<String> {
    vec!["public".to_owned()]
}
fn default_listen() -> String {
    "127.0.0.1:8472".to_owned()
}
fn default_workers() -> u32 {
    4
}
fn default_chunk_rows() -> u64 {
    100_000
}
fn default_snapshot_max_lead() -> u64 {
    500_000
}
fn default_batch_rows() -> u32 {
    10_000
}
fn default_fetch_wait_ms() -> u32 {
    20
}
fn default_batch_max_ms() -> u32 {
    100
}

impl Default for CoordinatorConfig {
    fn default() -> Self {
        CoordinatorConfig {
            listen: default_listen(),
            url: None,
            token: None,
            token_file: None,
            public_read: false,
            tls_cert: None,
            tls_key: None,
            ca_file: None,
        }
    }
}

impl Default for ExporterConfig {
    fn default() -> Self {
        ExporterConfig {
            export_type: ExportType::default(),
            snapshot_workers: default_workers(),
            chunk_rows: default_chunk_rows(),
            snapshot_max_lead: default_snapshot_max_lead(),
            health_listen: None,
        }
    }
}

impl Default for ImporterConfig {
    fn default() -> Self {
        ImporterConfig {
            batch_rows: default_batch_rows(),
            batch_max_ms: default_batch_max_ms(),
            fetch_wait_ms: default_fetch_wait_ms(),
            workers: default_workers(),
            health_listen: None,
        }
    }
}

impl Config {
    /// Parses and validates a complete `ferry.toml` text, without environment or flags
    /// (for tests and tools).
    pub fn from_toml_str(text: &str) -> Result<Config, ConfigErrors> {
        load_from(
            "ferry.toml",
            text,
            std::iter::empty::<(String, String)>(),
            &[],
        )
    }

    /// The `[source]` section, or an error telling the operator to add it.
    pub fn require_source(&self) -> Result<&DatabaseConfig, ConfigError> {
        require(self.source.as_ref(), "source")
    }

    /// The `[target]` section, or an error telling the operator to add it.
    pub fn require_target(&self) -> Result<&DatabaseConfig, ConfigError> {
        require(self.target.as_ref(), "target")
    }

    /// The `[source_replica]` section, or an error telling the operator to add it.
    pub fn require_source_replica(&self) -> Result<&DatabaseConfig, ConfigError> {
        require(self.source_replica.as_ref(), "source_replica")
    }

    /// The database of `destination` (`[target]`, `[source_replica]` or `[source]`), if
    /// configured.
    pub fn database(&self, destination: crate::topics::Destination) -> Option<&DatabaseConfig> {
        use crate::topics::Destination;
        match destination {
            Destination::Target => self.target.as_ref(),
            Destination::SourceReplica => self.source_replica.as_ref(),
            Destination::Source => self.source.as_ref(),
        }
    }

    /// The database of `destination`, or an error naming the section to add.
    pub fn require_database(
        &self,
        destination: crate::topics::Destination,
    ) -> Result<&DatabaseConfig, ConfigError> {
        require(
            self.database(destination),
            &destination.as_str().replace('-', "_"),
        )
    }

    /// Base URL of the schema registry every service uses: `schema_registry.url`, or the
    /// coordinator's built-in registry. No trailing slash.
    pub fn registry_url(&self) -> String {
        match &self.schema_registry.url {
            Some(url) => url.trim_end_matches('/').to_owned(),
            None => self.coordinator.url(),
        }
    }

    /// The effective configuration as TOML, secrets shown as `***`. A secret read from
    /// a file is shown as its `*_file` setting alone, so the text loads again.
    pub fn to_masked_toml(&self) -> String {
        let mut tree = match toml::Value::try_from(self) {
            Ok(tree) => tree,
            Err(e) => return format!("# cannot render: {e}\n"),
        };
        if let Some(sections) = tree.as_table_mut() {
            for (_, section) in sections.iter_mut() {
                let Some(section) = section.as_table_mut() else {
                    continue;
                };
                for (secret, file) in load::SECRET_FILES {
                    if section.contains_key(*file) {
                        section.remove(*secret);
                    }
                }
            }
        }
        toml::to_string_pretty(&tree).unwrap_or_else(|e| format!("# cannot render: {e}\n"))
    }
}

fn require<'a>(
    section: Option<&'a DatabaseConfig>,
    name: &str,
) -> Result<&'a DatabaseConfig, ConfigError> {
    section.ok_or_else(|| {
        ConfigError::new(
            name,
            format!("setting \"{name}\" is missing: add a [{name}] section to ferry.toml"),
        )
    })
}

impl MigrationConfig {
    /// Prefix of every topic of this migration: `topic_prefix` or `ferry.<id>`.
    pub fn topic_prefix(&self) -> String {
        match &self.topic_prefix {
            Some(prefix) => prefix.clone(),
            None => format!("ferry.{}", self.id),
        }
    }

    /// True when the table takes part in the migration: it matches `include_tables`
    /// (or that list is empty) and matches no `exclude_tables` pattern.
    ///
    /// A pattern is `schema.table` or `table` (any schema); `*` matches any run of
    /// characters. Names compare exactly (PostgreSQL folds unquoted names to lowercase,
    /// so write them as the catalog shows them).
    pub fn selects(&self, schema: &str, table: &str) -> bool {
        let matches = |pattern: &String| table_pattern_matches(pattern, schema, table);
        (self.include_tables.is_empty() || self.include_tables.iter().any(matches))
            && !self.exclude_tables.iter().any(matches)
    }
}

fn table_pattern_matches(pattern: &str, schema: &str, table: &str) -> bool {
    match pattern.split_once('.') {
        Some((schema_pattern, table_pattern)) => {
            glob_matches(schema_pattern, schema) && glob_matches(table_pattern, table)
        }
        None => glob_matches(pattern, table),
    }
}

/// `*` matches any run of characters (also none); everything else matches itself.
fn glob_matches(pattern: &str, text: &str) -> bool {
    let pattern: Vec<char> = pattern.chars().collect();
    let text: Vec<char> = text.chars().collect();
    let (mut p, mut t) = (0, 0);
    // Position of the last '*' seen and the text position it was tried at.
    let mut backtrack: Option<(usize, usize)> = None;
    while t < text.len() {
        if p < pattern.len() && pattern[p] == '*' {
            backtrack = Some((p, t));
            p += 1;
        } else if p < pattern.len() && pattern[p] == text[t] {
            p += 1;
            t += 1;
        } else if let Some((star, at)) = backtrack {
            p = star + 1;
            t = at + 1;
            backtrack = Some((star, at + 1));
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(|c| *c == '*')
}

impl CoordinatorConfig {
    /// How others reach the coordinator: `url`, or `http://<listen>` (`https://` when
    /// `tls_cert` is set). No trailing slash.
    pub fn url(&self) -> String {
        match &self.url {
            Some(url) => url.trim_end_matches('/').to_owned(),
            None if self.tls_cert.is_some() => format!("https://{}", self.listen),
            None => format!("http://{}", self.listen),
        }
    }
}

impl Engine {
    /// The name used in ferry.toml.
    pub fn as_str(self) -> &'static str {
        match self {
            Engine::Postgresql => "postgresql",
            Engine::Oracle => "oracle",
            Engine::Yugabytedb => "yugabytedb",
        }
    }

    /// The port the engine listens on by default.
    pub fn default_port(self) -> u16 {
        match self {
            Engine::Postgresql => 5432,
            Engine::Oracle => 1521,
            Engine::Yugabytedb => 5433,
        }
    }

    /// True for engines that speak the PostgreSQL protocol.
    pub fn is_postgres_protocol(self) -> bool {
        matches!(self, Engine::Postgresql | Engine::Yugabytedb)
    }
}

impl fmt::Display for Engine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Workflow {
    /// The name used in ferry.toml.
    pub fn as_str(self) -> &'static str {
        match self {
            Workflow::Live => "live",
            Workflow::FallForward => "fall-forward",
            Workflow::FallBack => "fall-back",
        }
    }
}

impl fmt::Display for Workflow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl SecurityProtocol {
    /// The librdkafka `security.protocol` value.
    pub fn as_str(self) -> &'static str {
        match self {
            SecurityProtocol::Plaintext => "plaintext",
            SecurityProtocol::Ssl => "ssl",
            SecurityProtocol::SaslPlaintext => "sasl_plaintext",
            SecurityProtocol::SaslSsl => "sasl_ssl",
        }
    }

    /// True for the protocols that authenticate with SASL.
    pub fn uses_sasl(self) -> bool {
        matches!(
            self,
            SecurityProtocol::SaslPlaintext | SecurityProtocol::SaslSsl
        )
    }
}

impl SaslMechanism {
    /// The librdkafka `sasl.mechanism` value.
    pub fn as_str(self) -> &'static str {
        match self {
            SaslMechanism::Plain => "PLAIN",
            SaslMechanism::ScramSha256 => "SCRAM-SHA-256",
            SaslMechanism::ScramSha512 => "SCRAM-SHA-512",
        }
    }
}

impl SslMode {
    /// The libpq name.
    pub fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }
}
