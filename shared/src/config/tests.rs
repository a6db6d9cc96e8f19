use super::*;

const MINIMAL: &str = r#"
[migration]
id = "demo"
[kafka]
bootstrap_servers = "127.0.0.1:9092"
"#;

const FULL: &str = r#"
[migration]
id = "demo"
include_tables = ["public.orders", "sales.*"]
exclude_tables = ["*_tmp"]
[source]
host = "db1"
user = "ferry"
password = "hunter2-source"
database = "app"
[target]
engine = "yugabytedb"
host = "db2"
port = 5433
user = "ferry"
password = "hunter2-target"
database = "app"
sslmode = "verify-full"
sslrootcert = "/etc/ca.pem"
[kafka]
bootstrap_servers = "k1:9092,k2:9092"
security_protocol = "sasl_ssl"
sasl_mechanism = "SCRAM-SHA-512"
sasl_username = "ferry"
sasl_password = "hunter2-kafka"
[kafka.properties]
"linger.ms" = "5"
[schema_registry]
url = "http://registry:8081/"
username = "reg"
password = "hunter2-registry"
"#;

fn env(vars: &[(&str, &str)]) -> Vec<(String, String)> {
    vars.iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

fn sets(flags: &[&str]) -> Vec<String> {
    flags.iter().map(|s| (*s).to_owned()).collect()
}

fn load(text: &str, vars: &[(&str, &str)], flags: &[&str]) -> Result<Config, ConfigErrors> {
    load_from("ferry.toml", text, env(vars), &sets(flags))
}

/// The error lines of a load that must fail.
fn errors_of(text: &str, vars: &[(&str, &str)], flags: &[&str]) -> Vec<String> {
    match load(text, vars, flags) {
        Ok(config) => panic!("expected errors, got {config:?}"),
        Err(e) => e.iter().map(ToString::to_string).collect(),
    }
}

fn one_error(text: &str, vars: &[(&str, &str)], flags: &[&str]) -> String {
    let errors = errors_of(text, vars, flags);
    assert_eq!(errors.len(), 1, "{errors:#?}");
    errors[0].clone()
}

fn with_source(extra: &str) -> String {
    format!(
        "{MINIMAL}[source]\nhost = \"db\"\nuser = \"u\"\npassword = \"pw\"\ndatabase = \"app\"\n{extra}"
    )
}

#[test]
fn defaults() {
    let config = load(MINIMAL, &[], &[]).unwrap();
    let m = &config.migration;
    assert_eq!(m.workflow, Workflow::Live);
    assert_eq!(m.topic_prefix(), "ferry.demo");
    assert_eq!(m.partitions, 4);
    assert_eq!(m.replication_factor, 1);
    assert!(m.include_tables.is_empty() && m.exclude_tables.is_empty());
    assert!(config.source.is_none() && config.target.is_none());
    assert_eq!(config.kafka.security_protocol, SecurityProtocol::Plaintext);
    assert_eq!(config.coordinator.listen, "127.0.0.1:8472");
    assert_eq!(config.coordinator.url(), "http://127.0.0.1:8472");
    assert_eq!(config.registry_url(), "http://127.0.0.1:8472");
    assert_eq!(config.exporter.export_type, ExportType::SnapshotAndChanges);
    assert_eq!(config.exporter.snapshot_workers, 4);
    assert_eq!(config.exporter.chunk_rows, 100_000);
    assert_eq!(config.exporter.snapshot_max_lead, 500_000);
    assert_eq!(config.importer.batch_rows, 10_000);
    assert_eq!(config.importer.batch_max_ms, 100);
    assert_eq!(config.importer.fetch_wait_ms, 20);
    assert_eq!(config.importer.workers, 4);

    let config = load(&with_source(""), &[], &[]).unwrap();
    let source = config.require_source().unwrap();
    assert_eq!(source.engine, Engine::Postgresql);
    assert_eq!(source.port(), 5432);
    assert_eq!(source.schemas, vec!["public".to_owned()]);
    assert_eq!(source.sslmode, SslMode::Prefer);
    assert_eq!(source.display(), "u@db:5432/app");

    let config = load(&with_source("engine = \"oracle\""), &[], &[]).unwrap();
    assert_eq!(config.require_source().unwrap().port(), 1521);
}

#[test]
fn full_file_and_helpers() {
    let config = load(FULL, &[], &[]).unwrap();
    assert_eq!(config.registry_url(), "http://registry:8081");
    let target = config.require_target().unwrap();
    assert_eq!(target.engine, Engine::Yugabytedb);
    let pg = target.pg_config();
    assert_eq!(pg.get_application_name(), Some("ferry"));
    assert_eq!(pg.get_dbname(), Some("app"));
    assert_eq!(pg.get_ports(), &[5433]);
    assert_eq!(pg.get_password(), Some(&b"hunter2-target"[..]));

    let kafka = config.kafka.client_config();
    assert_eq!(kafka.get("bootstrap.servers"), Some("k1:9092,k2:9092"));
    assert_eq!(kafka.get("security.protocol"), Some("sasl_ssl"));
    assert_eq!(kafka.get("sasl.mechanism"), Some("SCRAM-SHA-512"));
    assert_eq!(kafka.get("sasl.username"), Some("ferry"));
    assert_eq!(kafka.get("sasl.password"), Some("hunter2-kafka"));
    assert_eq!(kafka.get("linger.ms"), Some("5"));

    let e = config.require_source_replica().unwrap_err();
    assert_eq!(
        e.to_string(),
        "setting \"source_replica\" is missing: add a [source_replica] section to ferry.toml"
    );
}

#[test]
fn table_filter() {
    let config = load(FULL, &[], &[]).unwrap();
    let m = &config.migration;
    assert!(m.selects("public", "orders"));
    assert!(!m.selects("public", "customers"));
    assert!(m.selects("sales", "invoices"));
    assert!(!m.selects("sales", "invoices_tmp"));
    assert!(!m.selects("other", "orders"));

    let all = load(MINIMAL, &[], &[]).unwrap();
    assert!(all.migration.selects("anything", "at_all"));

    let unqualified = load(
        MINIMAL,
        &[],
        &[
            "migration.include_tables=[\"ord*\"]",
            "migration.exclude_tables=[\"audit.*\"]",
        ],
    )
    .unwrap();
    assert!(unqualified.migration.selects("public", "orders"));
    assert!(unqualified.migration.selects("sales", "ord"));
    assert!(!unqualified.migration.selects("audit", "orders"));
    assert!(!unqualified.migration.selects("public", "customers"));
    assert!(glob_matches("a*b*c", "axxbyyc"));
    assert!(!glob_matches("a*b*c", "axxbyy"));
    assert!(glob_matches("*", ""));
}

#[test]
fn env_overrides_file_and_flags_override_env() {
    let text = with_source("port = 1111");
    let config = load(&text, &[("FERRY_SOURCE__PORT", "2222")], &[]).unwrap();
    assert_eq!(config.require_source().unwrap().port(), 2222);
    let config = load(
        &text,
        &[("FERRY_SOURCE__PORT", "2222")],
        &["source.port=3333"],
    )
    .unwrap();
    assert_eq!(config.require_source().unwrap().port(), 3333);

    // Sections, arrays, booleans-as-text, numbers-as-text, property keys with dots.
    let config = load(
        MINIMAL,
        &[
            ("FERRY_SOURCE_REPLICA__HOST", "replica"),
            ("FERRY_SOURCE_REPLICA__USER", "u"),
            ("FERRY_SOURCE_REPLICA__PASSWORD", "1e5"),
            ("FERRY_SOURCE_REPLICA__DATABASE", "123"),
            ("FERRY_SOURCE_REPLICA__SCHEMAS", "[\"a\", \"b\"]"),
            ("FERRY_MIGRATION__NAME", "true"),
            ("FERRY_CONFIG", "/ignored"),
            ("FERRY_LOG", "debug"),
            ("PATH", "/usr/bin"),
        ],
        &[
            "kafka.properties.linger.ms=5",
            "migration.workflow=fall-back",
        ],
    )
    .unwrap();
    let replica = config.require_source_replica().unwrap();
    assert_eq!(replica.host, "replica");
    assert_eq!(replica.password.expose(), "1e5");
    assert_eq!(replica.database, "123");
    assert_eq!(replica.schemas, vec!["a".to_owned(), "b".to_owned()]);
    assert_eq!(config.migration.name.as_deref(), Some("true"));
    assert_eq!(config.migration.workflow, Workflow::FallBack);
    assert_eq!(
        config.kafka.properties.get("linger.ms").map(String::as_str),
        Some("5")
    );

    // A whole config from variables only (as docker-compose does).
    let config = load(
        "",
        &[
            ("FERRY_MIGRATION__ID", "env-only"),
            ("FERRY_KAFKA__BOOTSTRAP_SERVERS", "kafka:9092"),
        ],
        &[],
    )
    .unwrap();
    assert_eq!(config.migration.id, "env-only");
}

#[test]
fn passwords_keep_their_exact_text() {
    for raw in ["0x10", "007", "\"quoted\"", "[x", "true", "1_000"] {
        let config = load(&with_source(""), &[("FERRY_SOURCE__PASSWORD", raw)], &[]).unwrap();
        assert_eq!(config.require_source().unwrap().password.expose(), raw);
    }
    let config = load(&with_source(""), &[], &["source.password=a=b"]).unwrap();
    assert_eq!(config.require_source().unwrap().password.expose(), "a=b");
    // A number in the file is accepted as text too.
    let text = with_source("").replace("password = \"pw\"", "password = 1234");
    let config = load(&text, &[], &[]).unwrap();
    assert_eq!(config.require_source().unwrap().password.expose(), "1234");
}

#[test]
fn unknown_key_in_file() {
    let text = with_source("pasword = \"x\"");
    let e = one_error(&text, &[], &[]);
    assert!(
        e.starts_with("unknown setting \"source.pasword\" in ferry.toml: remove it or check the spelling (known keys: engine, host, port, user, password,"),
        "{e}"
    );
    let e = one_error(&format!("{MINIMAL}[sources]\nhost = \"x\"\n"), &[], &[]);
    assert!(
        e.starts_with("unknown setting \"sources\" in ferry.toml"),
        "{e}"
    );
    let e = one_error(&format!("{MINIMAL}[exporter]\nworkers = 2\n"), &[], &[]);
    assert!(
        e.starts_with("unknown setting \"exporter.workers\" in ferry.toml"),
        "{e}"
    );
}

#[test]
fn unknown_key_from_env_and_flag() {
    let e = one_error(MINIMAL, &[("FERRY_KAFKA__BOOTSTRAP_SERVER", "x:1")], &[]);
    assert!(
        e.starts_with("unknown setting \"kafka.bootstrap_server\" from environment variable FERRY_KAFKA__BOOTSTRAP_SERVER: remove it or check the spelling (known keys: bootstrap_servers,"),
        "{e}"
    );
    let e = one_error(MINIMAL, &[("FERRY_SORCE__HOST", "x")], &[]);
    assert!(
        e.contains("\"sorce\" from environment variable FERRY_SORCE__HOST"),
        "{e}"
    );
    let e = one_error(MINIMAL, &[("FERRY_VERBOSE", "1")], &[]);
    assert!(
        e.starts_with("environment variable FERRY_VERBOSE names no setting"),
        "{e}"
    );

    // The local stack's variables are not settings (scripts/test exports them).
    assert!(load(MINIMAL, &[("FERRY_STACK_DIR", "/tmp/x")], &[]).is_ok());

    let e = one_error(MINIMAL, &[], &["importer.bach_rows=5"]);
    assert!(
        e.starts_with(
            "unknown setting \"importer.bach_rows\" from --set importer.bach_rows: remove it"
        ),
        "{e}"
    );
    let e = one_error(MINIMAL, &[], &["importer.batch_rows"]);
    assert_eq!(e, "flag --set needs KEY=VALUE, e.g. --set source.port=5433");
}

#[test]
fn missing_settings() {
    let text = with_source("").replace("password = \"pw\"\n", "");
    let e = one_error(&text, &[], &[]);
    assert_eq!(
        e,
        "setting \"source.password\" is missing: set it in ferry.toml or FERRY_SOURCE__PASSWORD"
    );
    let errors = errors_of("", &[], &[]);
    assert_eq!(
        errors,
        vec![
            "setting \"migration\" is missing: add a [migration] section to ferry.toml or set FERRY_MIGRATION__* variables",
            "setting \"kafka\" is missing: add a [kafka] section to ferry.toml or set FERRY_KAFKA__* variables",
        ]
    );
    // A section given only partly by variables: every missing key is named.
    let errors = errors_of(MINIMAL, &[("FERRY_TARGET__HOST", "t")], &[]);
    assert_eq!(errors.len(), 3, "{errors:#?}");
    assert!(errors
        .iter()
        .any(|e| e.contains("\"target.password\" is missing")));
}

#[test]
fn every_problem_is_reported_at_once() {
    let text = r#"
[migration]
id = "Bad Id"
partitions = 0
workflow = "sideways"
[source]
host = "db"
user = "u"
database = "app"
port = 70000
colour = "blue"
[kafka]
bootstrap_servers = "nohostport"
[importer]
workers = 65
"#;
    let errors = errors_of(text, &[], &[]);
    let expect = [
        "setting \"migration.workflow\" = \"sideways\" is invalid: use one of live, fall-forward, fall-back",
        "unknown setting \"source.colour\" in ferry.toml",
        "setting \"source.port\" = 70000 is out of range: use a value from 1 to 65535",
        "setting \"source.password\" is missing",
        "setting \"migration.id\" = \"Bad Id\" is invalid: use 1 to 48 characters",
        "setting \"migration.partitions\" = 0 is out of range: use a value from 1 to 1024",
        "setting \"kafka.bootstrap_servers\" = \"nohostport\" is invalid",
        "setting \"importer.workers\" = 65 is out of range: use a value from 1 to 64",
    ];
    for prefix in expect {
        assert!(
            errors.iter().any(|e| e.starts_with(prefix)),
            "no error starting with {prefix:?} in {errors:#?}"
        );
    }
    assert_eq!(errors.len(), expect.len(), "{errors:#?}");
}

#[test]
fn validation_rules() {
    let cases: &[(&str, &str)] = &[
        ("migration.id=-x", "setting \"migration.id\" (from --set migration.id) = \"-x\" is invalid"),
        ("migration.id=abcdefghijabcdefghijabcdefghijabcdefghijabcdefghi", "\"migration.id\""),
        ("migration.topic_prefix=a b", "\"migration.topic_prefix\""),
        ("migration.partitions=1025", "= 1025 is out of range: use a value from 1 to 1024"),
        ("migration.partitions=-1", "= -1 is out of range: use a value from 1 to 1024"),
        ("migration.replication_factor=33", "use a value from 1 to 32"),
        ("migration.replication_factor=0", "use a value from 1 to 32"),
        ("migration.include_tables=[\"a.b.c\"]", "write \"schema.table\" or \"table\""),
        ("migration.exclude_tables=[\".x\"]", "\"migration.exclude_tables\""),
        ("migration.include_tables=\"orders\"", "is invalid: expected a list"),
        ("migration.workflow=live2", "use one of live, fall-forward, fall-back"),
        ("source.engine=yugabytedb", "\"source.engine\" (from --set source.engine) = \"yugabytedb\" is not supported for the source: use postgresql or oracle"),
        ("source.engine=mysql", "use one of postgresql, oracle, yugabytedb"),
        ("source.port=0", "= 0 is out of range: use a value from 1 to 65535"),
        ("source.port=abc", "= \"abc\" is invalid: expected a whole number"),
        ("source.host=", "\"source.host\" (from --set source.host) is missing"),
        ("source.schemas=[]", "\"source.schemas\" (from --set source.schemas) = [] is empty"),
        ("source.sslmode=verify-ca", "\"source.sslrootcert\" is missing: sslmode verify-ca needs a CA certificate file"),
        ("source.sslmode=allow", "use one of disable, prefer, require, verify-ca, verify-full"),
        ("kafka.bootstrap_servers=a:1,b", "use a comma-separated list of host:port"),
        ("kafka.security_protocol=sasl_plaintext", "\"kafka.sasl_mechanism\" is missing: security_protocol sasl_plaintext needs it"),
        ("kafka.sasl_mechanism=GSSAPI", "use one of PLAIN, SCRAM-SHA-256, SCRAM-SHA-512"),
        ("kafka.security_protocol=tls", "use one of plaintext, ssl, sasl_plaintext, sasl_ssl"),
        ("schema_registry.url=registry:8081", "use an http:// or https:// URL"),
        ("schema_registry.password=x", "\"schema_registry.username\" is missing: a password is set"),
        ("coordinator.listen=localhost", "use an IP address and port"),
        ("coordinator.url=coordinator:8472", "use an http:// or https:// URL"),
        ("exporter.export_type=all", "use one of snapshot-and-changes, snapshot-only, changes-only"),
        ("exporter.snapshot_workers=0", "use a value from 1 to 64"),
        ("exporter.snapshot_workers=65", "use a value from 1 to 64"),
        ("exporter.chunk_rows=999", "= 999 is out of range: use a value of at least 1000"),
        ("importer.batch_rows=0", "use a value from 1 to 1000000"),
        ("importer.batch_rows=1000001", "use a value from 1 to 1000000"),
        ("importer.batch_max_ms=0", "use a value from 1 to 60000"),
        ("importer.batch_max_ms=60001", "use a value from 1 to 60000"),
        ("importer.workers=0", "use a value from 1 to 64"),
        ("importer.fetch_wait_ms=5001", "use a value from 0 to 5000"),
    ];
    let text = with_source("");
    for (flag, expected) in cases {
        let errors = errors_of(&text, &[], &[flag]);
        assert!(
            errors.iter().any(|e| e.contains(expected)),
            "--set {flag}: expected {expected:?} in {errors:#?}"
        );
        assert_eq!(
            errors.len(),
            if flag.starts_with("kafka.security_protocol=sasl") {
                3
            } else {
                1
            },
            "--set {flag}: {errors:#?}"
        );
    }
    // Target and replica engines.
    let target = "[target]\nengine = \"oracle\"\nhost = \"t\"\nuser = \"u\"\npassword = \"p\"\ndatabase = \"d\"\n";
    let e = one_error(&format!("{MINIMAL}{target}"), &[], &[]);
    assert!(
        e.contains("is not supported for the target: use postgresql or yugabytedb"),
        "{e}"
    );
    let replica = target
        .replace("[target]", "[source_replica]")
        .replace("oracle", "yugabytedb");
    let e = one_error(&format!("{MINIMAL}{replica}"), &[], &[]);
    assert!(
        e.contains("is not supported for the source-replica: use postgresql or oracle"),
        "{e}"
    );
    // Good values pass.
    for flag in [
        "migration.id=a",
        "migration.id=0-a_b",
        "migration.topic_prefix=Ferry.X_y-1",
        "migration.partitions=1024",
        "source.sslmode=verify-full",
        "exporter.chunk_rows=1000",
    ] {
        let mut flags = vec![flag];
        if flag.contains("verify") {
            flags.push("source.sslrootcert=/ca.pem");
        }
        load(&text, &[], &flags).unwrap_or_else(|e| panic!("{flag}: {e}"));
    }
}

#[test]
fn env_errors_name_the_variable() {
    let e = one_error(MINIMAL, &[("FERRY_MIGRATION__PARTITIONS", "0")], &[]);
    assert_eq!(
        e,
        "setting \"migration.partitions\" (from environment variable FERRY_MIGRATION__PARTITIONS) = 0 is out of range: use a value from 1 to 1024"
    );
}

#[test]
fn syntax_errors_and_missing_files() {
    let e = one_error("[migration]\nid = \"demo\"\npassword = hunter2\n", &[], &[]);
    assert!(
        e.starts_with("config file \"ferry.toml\" is not valid TOML at line 3"),
        "{e}"
    );
    assert!(!e.contains("hunter2"), "{e}");

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nope.toml");
    let e = load_file(Some(&path), env(&[]), &[]).unwrap_err();
    assert_eq!(e.0.len(), 1);
    assert!(e.to_string().contains("nope.toml\" not found"), "{e}");
    // Explicit path: variables do not excuse a missing file.
    let e = load_file(Some(&path), env(&[("FERRY_MIGRATION__ID", "x")]), &[]).unwrap_err();
    assert_eq!(e.0.len(), 1);

    let path = dir.path().join("ferry.toml");
    std::fs::write(&path, MINIMAL).unwrap();
    let config = load_file(Some(&path), env(&[]), &[]).unwrap();
    assert_eq!(config.migration.id, "demo");
}

#[test]
fn secrets_are_never_printed() {
    let config = load(FULL, &[], &[]).unwrap();
    let debug = format!("{config:?}");
    let pretty = format!("{config:#?}");
    let toml = config.to_masked_toml();
    for text in [&debug, &pretty, &toml] {
        assert!(!text.contains("hunter2"), "{text}");
        assert!(text.contains("***"), "{text}");
    }
    let secret = Secret::new("hunter2");
    assert_eq!(format!("{secret}"), "***");
    assert_eq!(format!("{secret:?}"), "\"***\"");
    assert_eq!(secret.expose(), "hunter2");

    // Errors: a password given as a list or table is refused without quoting it.
    let text = with_source("").replace("password = \"pw\"", "password = [\"hunter2\"]");
    let e = one_error(&text, &[], &[]);
    assert!(
        e.starts_with("setting \"source.password\" is invalid: expected a password as text"),
        "{e}"
    );
    assert!(!e.contains("hunter2"), "{e}");
    let errors = errors_of(
        &with_source(""),
        &[
            ("FERRY_SOURCE__PASSWORD", "hunter2"),
            ("FERRY_SOURCE__PORT", "x"),
        ],
        &[
            "kafka.sasl_password=hunter2",
            "kafka.security_protocol=bogus",
        ],
    );
    assert!(errors.iter().all(|e| !e.contains("hunter2")), "{errors:#?}");
}

#[test]
fn masked_toml_round_trips_except_secrets() {
    let config = load(FULL, &[], &[]).unwrap();
    let shown = config.to_masked_toml();
    let reloaded = load(&shown, &[], &[]).unwrap();
    assert_eq!(reloaded.migration, config.migration);
    assert_eq!(reloaded.require_source().unwrap().password.expose(), "***");
}

/// A file holding `text`, in a folder removed when the guard drops.
fn secret_file(text: &str) -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("secret");
    std::fs::write(&path, text).unwrap();
    (dir, path.to_string_lossy().into_owned())
}

#[test]
fn every_password_can_come_from_a_file_without_its_trailing_newline() {
    let (_d1, source) = secret_file("s3cret-source\n");
    let (_d2, target) = secret_file("s3cret target  \r\n");
    let (_d3, kafka) = secret_file("s3cret-kafka");
    let (_d4, registry) = secret_file("s3cret-registry\n");
    let (_d5, replica) = secret_file("s3cret-replica\n");
    let text = FULL
        .replace(
            "password = \"hunter2-source\"",
            &format!("password_file = {source:?}"),
        )
        .replace(
            "password = \"hunter2-registry\"",
            &format!("password_file = {registry:?}"),
        )
        .replace("password = \"hunter2-target\"\n", "");
    let text =
        format!("{text}\n[source_replica]\nhost = \"db3\"\nuser = \"u\"\ndatabase = \"app\"\n");
    let text = text.replace("sasl_password = \"hunter2-kafka\"\n", "");
    let config = load(
        &text,
        &[
            ("FERRY_TARGET__PASSWORD_FILE", &target),
            ("FERRY_KAFKA__SASL_PASSWORD_FILE", &kafka),
        ],
        &[&format!("source_replica.password_file={replica}")],
    )
    .unwrap();
    let db = |d: Option<&DatabaseConfig>| d.unwrap().password.expose().to_owned();
    assert_eq!(db(config.source.as_ref()), "s3cret-source");
    // Only the line end is dropped: spaces are part of a password.
    assert_eq!(db(config.target.as_ref()), "s3cret target  ");
    assert_eq!(db(config.source_replica.as_ref()), "s3cret-replica");
    let kafka_password = config.kafka.sasl_password.as_ref().unwrap().expose();
    assert_eq!(kafka_password, "s3cret-kafka");
    let registry_password = config.schema_registry.password.as_ref().unwrap().expose();
    assert_eq!(registry_password, "s3cret-registry");
    assert_eq!(
        config.kafka.client_config().get("sasl.password"),
        Some("s3cret-kafka")
    );

    // Shown as the file's path, never the contents; the shown text loads again.
    let shown = config.to_masked_toml();
    assert!(!shown.contains("s3cret"), "{shown}");
    assert!(
        shown.contains(&format!("password_file = {source:?}")),
        "{shown}"
    );
    assert!(shown.contains("sasl_password_file"), "{shown}");
    let reloaded = load(&shown, &[], &[]).unwrap();
    assert_eq!(db(reloaded.source.as_ref()), "s3cret-source");
}

#[test]
fn a_password_set_both_ways_or_in_an_unreadable_file_is_an_error_naming_setting_and_path() {
    let (_d, path) = secret_file("from-file\n");
    let e = one_error(
        &with_source(&format!("password_file = {path:?}\n")),
        &[],
        &[],
    );
    assert_eq!(
        e,
        format!(
            "setting \"source.password_file\" = {path:?} is set together with \"source.password\" (in ferry.toml): keep one of them"
        )
    );
    assert!(!e.contains("from-file"));
    let e = one_error(
        &with_source(""),
        &[("FERRY_SOURCE__PASSWORD_FILE", &path)],
        &[],
    );
    assert!(
        e.starts_with("setting \"source.password_file\" (from environment variable FERRY_SOURCE__PASSWORD_FILE)")
            && e.contains("is set together with \"source.password\" (in ferry.toml)"),
        "{e}"
    );

    let without_password = with_source("").replace("password = \"pw\"\n", "");
    let missing = "/nonexistent/ferry/pw";
    let e = one_error(
        &without_password,
        &[],
        &[&format!("source.password_file={missing}")],
    );
    assert_eq!(
        e,
        format!(
            "setting \"source.password_file\" (from --set source.password_file) = {missing:?} cannot be read (No such file or directory (os error 2)): give the path of a readable file holding the secret, or set \"source.password\" (FERRY_SOURCE__PASSWORD) instead"
        )
    );
    let (_d, empty) = secret_file("\n");
    let e = one_error(
        &format!("{MINIMAL}[schema_registry]\nurl = \"http://r:8081\"\nusername = \"u\"\npassword_file = {empty:?}\n"),
        &[],
        &[],
    );
    assert!(
        e.starts_with("setting \"schema_registry.password_file\"")
            && e.contains("names an empty file"),
        "{e}"
    );
    // Neither: the password is missing, as before.
    let e = one_error(&without_password, &[], &[]);
    assert!(
        e.starts_with("setting \"source.password\" is missing"),
        "{e}"
    );
}

#[test]
fn coordinator_token_and_https_settings() {
    // Defaults: no token (the coordinator generates one), reads closed, plain HTTP.
    let config = load(MINIMAL, &[], &[]).unwrap();
    let c = &config.coordinator;
    assert!(c.token.is_none() && c.token_file.is_none() && !c.public_read);
    assert_eq!(c.url(), "http://127.0.0.1:8472");

    let token = "tok-never-printed-7f3a";
    let config = load(
        MINIMAL,
        &[("FERRY_COORDINATOR__TOKEN", token)],
        &[
            "coordinator.public_read=true",
            "coordinator.tls_cert=/c.pem",
            "coordinator.tls_key=/k.pem",
        ],
    )
    .unwrap();
    assert_eq!(config.coordinator.token.as_ref().unwrap().expose(), token);
    assert!(config.coordinator.public_read);
    assert_eq!(config.coordinator.url(), "https://127.0.0.1:8472");
    for shown in [
        format!("{config:?}"),
        format!("{:#?}", config.coordinator),
        config.to_masked_toml(),
    ] {
        assert!(!shown.contains(token), "{shown}");
    }
    assert!(config.to_masked_toml().contains("token = \"***\""));

    let cases: &[(&[&str], &str)] = &[
        (&["coordinator.tls_cert=/c.pem"], "\"coordinator.tls_key\" is missing: coordinator.tls_cert is set"),
        (&["coordinator.tls_key=/k.pem"], "\"coordinator.tls_cert\" is missing: coordinator.tls_key is set"),
        (&["coordinator.token=x", "coordinator.token_file=/t"], "\"coordinator.token\" (from --set coordinator.token) is set together with coordinator.token_file: keep one of them"),
        (&["coordinator.token= "], "\"coordinator.token\" (from --set coordinator.token) is empty"),
        (&["coordinator.ca_file="], "\"coordinator.ca_file\" (from --set coordinator.ca_file) = \"\" is invalid: give a file path"),
    ];
    for (flags, expected) in cases {
        let errors = errors_of(MINIMAL, &[], flags);
        assert!(
            errors.iter().any(|e| e.contains(expected)),
            "{flags:?}: expected {expected:?} in {errors:#?}"
        );
        assert_eq!(errors.len(), 1, "{flags:?}: {errors:#?}");
    }
}
