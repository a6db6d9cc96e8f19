//! Validation rules that serde's types cannot express: ranges, formats, and settings
//! that depend on each other. Every rule reports; none stops the others.

use std::net::SocketAddr;

use super::load::env_var_for;
use super::{Config, CoordinatorConfig, DatabaseConfig, Engine, SslMode};

/// One failed rule, formatted by the loader as
/// `setting "<path>"[ (from ...)][ = <value>] <text>`.
#[derive(Debug)]
pub(super) struct Problem {
    pub path: String,
    pub value: Option<String>,
    pub text: String,
}

impl Problem {
    pub fn new(path: &str, value: Option<String>, text: impl Into<String>) -> Self {
        Problem {
            path: path.to_owned(),
            value,
            text: text.into(),
        }
    }
}

/// Integer ranges, shared by the rules below and by the loader for values that do
/// not even fit the field's type (`-1`, `70000` for a port).
pub(super) fn range_of(path: &str) -> Option<(i64, i64)> {
    let range = match path {
        "migration.partitions" => (1, 1024),
        "migration.replication_factor" => (1, 32),
        "source.port" | "target.port" | "source_replica.port" => (1, 65535),
        "exporter.snapshot_workers" => (1, 64),
        "exporter.chunk_rows" => (1000, i64::MAX),
        "exporter.snapshot_max_lead" => (0, i64::MAX),
        "importer.batch_rows" => (1, 1_000_000),
        "importer.batch_max_ms" => (1, 60_000),
        "importer.fetch_wait_ms" => (0, 5_000),
        "importer.workers" => (1, 64),
        _ => return None,
    };
    Some(range)
}

pub(super) fn range_text(min: i64, max: i64) -> String {
    if max == i64::MAX {
        format!("is out of range: use a value of at least {min}")
    } else {
        format!("is out of range: use a value from {min} to {max}")
    }
}

fn quote(text: &str) -> Option<String> {
    Some(format!("{text:?}"))
}

struct Rules<'a> {
    file: &'a str,
    problems: Vec<Problem>,
}

impl Rules<'_> {
    fn range(&mut self, path: &str, value: i64) {
        if let Some((min, max)) = range_of(path) {
            if value < min || value > max {
                self.problems.push(Problem::new(
                    path,
                    Some(value.to_string()),
                    range_text(min, max),
                ));
            }
        }
    }

    fn invalid(&mut self, path: &str, value: &str, what_to_do: &str) {
        self.problems.push(Problem::new(
            path,
            quote(value),
            format!("is invalid: {what_to_do}"),
        ));
    }

    fn non_empty(&mut self, path: &str, value: &str) {
        if value.trim().is_empty() {
            self.missing(path, "");
        }
    }

    fn missing(&mut self, path: &str, why: &str) {
        self.problems.push(Problem::new(
            path,
            None,
            format!(
                "is missing: {why}set it in {} or {}",
                self.file,
                env_var_for(path)
            ),
        ));
    }
}

/// Checks every rule and returns the problems found.
pub(super) fn validate(config: &Config, file: &str) -> Vec<Problem> {
    let mut rules = Rules {
        file,
        problems: Vec::new(),
    };
    let r = &mut rules;

    let migration = &config.migration;
    if !valid_id(&migration.id) {
        r.invalid(
            "migration.id",
            &migration.id,
            "use 1 to 48 characters from a-z, 0-9, '_' and '-', starting with a letter or digit",
        );
    }
    // A prefix derived from the id is checked through the id.
    let prefix = migration.topic_prefix.as_deref().unwrap_or("ferry");
    if prefix.is_empty()
        || prefix.len() > 200
        || !prefix
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
    {
        r.invalid(
            "migration.topic_prefix",
            prefix,
            "use 1 to 200 characters from A-Z, a-z, 0-9, '.', '_' and '-'",
        );
    }
    r.range("migration.partitions", i64::from(migration.partitions));
    r.range(
        "migration.replication_factor",
        i64::from(migration.replication_factor),
    );
    for (key, patterns) in [
        ("migration.include_tables", &migration.include_tables),
        ("migration.exclude_tables", &migration.exclude_tables),
    ] {
        for pattern in patterns {
            if !valid_table_pattern(pattern) {
                r.invalid(
                    key,
                    pattern,
                    "write \"schema.table\" or \"table\"; '*' matches any characters",
                );
            }
        }
    }

    let roles: [(&str, Option<&DatabaseConfig>, &[Engine]); 3] = [
        (
            "source",
            config.source.as_ref(),
            &[Engine::Postgresql, Engine::Oracle],
        ),
        (
            "target",
            config.target.as_ref(),
            &[Engine::Postgresql, Engine::Yugabytedb],
        ),
        (
            "source_replica",
            config.source_replica.as_ref(),
            &[Engine::Postgresql, Engine::Oracle],
        ),
    ];
    for (section, db, engines) in roles {
        if let Some(db) = db {
            database(r, section, db, engines);
        }
    }

    let kafka = &config.kafka;
    if !valid_servers(&kafka.bootstrap_servers) {
        if kafka.bootstrap_servers.trim().is_empty() {
            r.missing("kafka.bootstrap_servers", "");
        } else {
            r.invalid(
                "kafka.bootstrap_servers",
                &kafka.bootstrap_servers,
                "use a comma-separated list of host:port, e.g. \"kafka:9092\"",
            );
        }
    }
    if kafka.security_protocol.uses_sasl() {
        let why = format!(
            "security_protocol {} needs it; ",
            kafka.security_protocol.as_str()
        );
        if kafka.sasl_mechanism.is_none() {
            r.missing("kafka.sasl_mechanism", &why);
        }
        if kafka.sasl_username.as_deref().is_none_or(str::is_empty) {
            r.missing("kafka.sasl_username", &why);
        }
        if kafka.sasl_password.is_none() {
            r.missing("kafka.sasl_password", &why);
        }
    }

    let registry = &config.schema_registry;
    if let Some(url) = &registry.url {
        if !valid_http_url(url) {
            r.invalid(
                "schema_registry.url",
                url,
                "use an http:// or https:// URL, e.g. \"http://registry:8081\"",
            );
        }
    }
    if registry.password.is_some() && registry.username.is_none() {
        r.missing("schema_registry.username", "a password is set; ");
    }

    for (setting, listen) in [
        ("exporter.health_listen", &config.exporter.health_listen),
        ("importer.health_listen", &config.importer.health_listen),
    ] {
        if let Some(listen) = listen {
            if listen.parse::<SocketAddr>().is_err() {
                r.invalid(
                    setting,
                    listen,
                    "use an IP address and port, e.g. \"0.0.0.0:8480\"",
                );
            }
        }
    }

    let coordinator = &config.coordinator;
    if coordinator.listen.parse::<SocketAddr>().is_err() {
        r.invalid(
            "coordinator.listen",
            &coordinator.listen,
            "use an IP address and port, e.g. \"0.0.0.0:8472\"",
        );
    }
    if let Some(url) = &coordinator.url {
        if !valid_http_url(url) {
            r.invalid(
                "coordinator.url",
                url,
                "use an http:// or https:// URL, e.g. \"http://coordinator:8472\"",
            );
        }
    }
    coordinator_access(r, coordinator);

    r.range(
        "exporter.snapshot_workers",
        i64::from(config.exporter.snapshot_workers),
    );
    r.range(
        "exporter.chunk_rows",
        i64::try_from(config.exporter.chunk_rows).unwrap_or(i64::MAX),
    );
    r.range("importer.batch_rows", i64::from(config.importer.batch_rows));
    r.range(
        "importer.batch_max_ms",
        i64::from(config.importer.batch_max_ms),
    );
    r.range("importer.workers", i64::from(config.importer.workers));
    r.range(
        "importer.fetch_wait_ms",
        i64::from(config.importer.fetch_wait_ms),
    );

    rules.problems
}

/// The coordinator's token and HTTPS settings (the token's value is never quoted).
fn coordinator_access(r: &mut Rules<'_>, c: &CoordinatorConfig) {
    if let Some(token) = &c.token {
        if token.expose().trim().is_empty() {
            r.problems.push(Problem::new(
                "coordinator.token",
                None,
                "is empty: set a long random text, or leave it out and let the coordinator generate one",
            ));
        }
        if c.token_file.is_some() {
            r.problems.push(Problem::new(
                "coordinator.token",
                None,
                "is set together with coordinator.token_file: keep one of them",
            ));
        }
    }
    for (path, value) in [
        ("coordinator.token_file", &c.token_file),
        ("coordinator.tls_cert", &c.tls_cert),
        ("coordinator.tls_key", &c.tls_key),
        ("coordinator.ca_file", &c.ca_file),
    ] {
        if let Some(value) = value {
            if value.trim().is_empty() {
                r.invalid(path, value, "give a file path, or leave the setting out");
            }
        }
    }
    match (&c.tls_cert, &c.tls_key) {
        (Some(_), None) => r.missing(
            "coordinator.tls_key",
            "coordinator.tls_cert is set and HTTPS needs the certificate's private key; ",
        ),
        (None, Some(_)) => r.missing(
            "coordinator.tls_cert",
            "coordinator.tls_key is set and HTTPS needs the certificate too; ",
        ),
        _ => {}
    }
}

fn database(r: &mut Rules<'_>, section: &str, db: &DatabaseConfig, engines: &[Engine]) {
    let path = |key: &str| format!("{section}.{key}");
    if !engines.contains(&db.engine) {
        let names: Vec<&str> = engines.iter().map(|e| e.as_str()).collect();
        r.problems.push(Problem::new(
            &path("engine"),
            quote(db.engine.as_str()),
            format!(
                "is not supported for the {}: use {}",
                section.replace('_', "-"),
                names.join(" or ")
            ),
        ));
    }
    r.non_empty(&path("host"), &db.host);
    r.non_empty(&path("user"), &db.user);
    r.non_empty(&path("database"), &db.database);
    if let Some(port) = db.port {
        r.range(&path("port"), i64::from(port));
    }
    if db.schemas.is_empty() {
        r.problems.push(Problem::new(
            &path("schemas"),
            Some("[]".to_owned()),
            "is empty: list at least one schema, e.g. [\"public\"]",
        ));
    }
    for schema in &db.schemas {
        if schema.trim().is_empty() {
            r.invalid(&path("schemas"), schema, "schema names cannot be empty");
        }
    }
    if matches!(db.sslmode, SslMode::VerifyCa | SslMode::VerifyFull)
        && db.sslrootcert.as_deref().is_none_or(str::is_empty)
    {
        let why = format!(
            "sslmode {} needs a CA certificate file; ",
            db.sslmode.as_str()
        );
        r.missing(&path("sslrootcert"), &why);
    }
}

/// `^[a-z0-9][a-z0-9_-]{0,47}$`
pub(super) fn valid_id(id: &str) -> bool {
    let mut chars = id.chars();
    let Some(first) = chars.next() else {
        return false;
    };
    id.len() <= 48
        && (first.is_ascii_lowercase() || first.is_ascii_digit())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-')
}

fn valid_table_pattern(pattern: &str) -> bool {
    let parts: Vec<&str> = pattern.split('.').collect();
    parts.len() <= 2 && parts.iter().all(|p| !p.trim().is_empty())
}

fn valid_servers(servers: &str) -> bool {
    !servers.trim().is_empty()
        && servers.split(',').all(|server| {
            server.trim().rsplit_once(':').is_some_and(|(host, port)| {
                !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0)
            })
        })
}

fn valid_http_url(url: &str) -> bool {
    ["http://", "https://"].iter().any(|scheme| {
        url.strip_prefix(scheme)
            .is_some_and(|rest| !rest.is_empty())
    })
}
