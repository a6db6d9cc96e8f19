//! No secret leaves Ferry: a whole migration through the real `ferry` binary (the
//! coordinator, the source exporter and the target importer as child processes; then
//! `cutover status`, a cutover, the report, `end migration` with every backup), where
//! each database role, the Kafka SASL login, the schema registry's basic auth and the
//! coordinator token have distinctive secrets, given through `*_password_file` settings
//! and `FERRY_*` variables. Then every output is searched for them: the processes'
//! stdout and stderr (debug logs), the verbs' answers, the backup files, every record of
//! the migration's topics and of the registry's topic, the command line of every process
//! Ferry started (pg_dump included, through a wrapper on PATH that records it), the
//! files left in the working directory, and what the stack's servers logged meanwhile.
//!
//! It lives beside the `ferry` binary (the e2e harness runs the services as tasks of
//! its own process, which has no command lines or logs of its own to search, and
//! `end migration` exists only in the binary).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test helpers

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::KillOnDrop;
use ferry_testkit::{free_port, unique_name, Stack};

/// How the test runs `ferry`: the config, the working directory, the secrets passed
/// through the environment, and PATH with the recording pg_dump first.
struct Ferry {
    config: PathBuf,
    dir: PathBuf,
    env: Vec<(String, String)>,
    path: String,
}

impl Ferry {
    fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_ferry"));
        for (name, _) in std::env::vars_os() {
            if name.to_string_lossy().starts_with("FERRY_") {
                command.env_remove(name);
            }
        }
        command
            .current_dir(&self.dir)
            .env("PATH", &self.path)
            .env("FERRY_LOG", "debug")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .arg("--config")
            .arg(&self.config)
            .args(args);
        command
    }

    /// A verb run to its end; its output kept for the search.
    fn run(&self, outputs: &mut Vec<(String, Vec<u8>)>, args: &[&str]) -> Output {
        let out = self.command(args).stdin(Stdio::null()).output().unwrap();
        let name = args.join(" ");
        outputs.push((format!("stdout of ferry {name}"), out.stdout.clone()));
        outputs.push((format!("stderr of ferry {name}"), out.stderr.clone()));
        out
    }

    /// A service in the background, its stdout and stderr in files of the working dir.
    fn spawn(&self, name: &str, args: &[&str]) -> KillOnDrop {
        let file = |stream: &str| {
            std::fs::File::create(self.dir.join(format!("{name}.{stream}"))).unwrap()
        };
        KillOnDrop(
            self.command(args)
                .stdin(Stdio::null())
                .stdout(file("stdout"))
                .stderr(file("stderr"))
                .spawn()
                .unwrap(),
        )
    }
}

/// Standard base64, for the registry's `Authorization: Basic` header.
fn base64(bytes: &[u8]) -> String {
    const TABLE: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(TABLE[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Ferry's built-in registry served by the test behind basic auth (`user`,
/// `password`): what an external registry with credentials looks like to Ferry.
/// Returns its URL and the topic it keeps the schemas in.
async fn serve_registry_with_basic_auth(user: &str, password: &str) -> (String, String) {
    use axum::http::{header, StatusCode};
    let stack = Stack::get();
    let mut kafka = rdkafka::ClientConfig::new();
    kafka.set("bootstrap.servers", &stack.kafka_bootstrap);
    let topic = unique_name("schemas");
    let registry = ferry_coordinator::registry::Registry::open(kafka, topic.clone())
        .await
        .unwrap();
    let expected = format!("Basic {}", base64(format!("{user}:{password}").as_bytes()));
    let app =
        ferry_coordinator::registry::router(Arc::new(registry)).layer(axum::middleware::from_fn(
            move |request: axum::extract::Request, next: axum::middleware::Next| {
                let expected = expected.clone();
                async move {
                    let given = request
                        .headers()
                        .get(header::AUTHORIZATION)
                        .and_then(|v| v.to_str().ok());
                    if given == Some(expected.as_str()) {
                        next.run(request).await
                    } else {
                        axum::response::IntoResponse::into_response(StatusCode::UNAUTHORIZED)
                    }
                }
            },
        ));
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", free_port()))
        .await
        .unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (url, topic)
}

/// Creates a login role with `password` on `cluster` without the statement being
/// recorded anywhere (pg_stat_statements tracks utility statements on the stack).
async fn create_role(cluster: &ferry_testkit::Cluster, role: &str, password: &str) {
    let admin = cluster.connect("postgres").await.unwrap();
    admin
        .batch_execute(&format!(
            "SET pg_stat_statements.track_utility = off;
             CREATE ROLE {role} LOGIN SUPERUSER REPLICATION PASSWORD '{password}'"
        ))
        .await
        .unwrap();
}

/// The size of each file now, to read what is appended from here on.
fn offsets(files: &[PathBuf]) -> Vec<(PathBuf, u64)> {
    files
        .iter()
        .map(|f| {
            (
                f.clone(),
                std::fs::metadata(f).map(|m| m.len()).unwrap_or(0),
            )
        })
        .collect()
}

fn appended(files: &[(PathBuf, u64)]) -> Vec<(String, Vec<u8>)> {
    files
        .iter()
        .map(|(f, from)| {
            let bytes = std::fs::read(f).unwrap_or_default();
            let from = usize::try_from(*from).unwrap().min(bytes.len());
            (
                format!("{} (appended during the test)", f.display()),
                bytes[from..].to_vec(),
            )
        })
        .collect()
}

/// Every file under `dir`, with its contents.
fn files_under(dir: &Path, skip: &[PathBuf]) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else if !skip.contains(&path) {
                out.push((path.display().to_string(), std::fs::read(&path).unwrap()));
            }
        }
    }
    out
}

/// The command lines of every descendant of this process, sampled until `stop`.
fn watch_command_lines(stop: Arc<Mutex<bool>>, seen: Arc<Mutex<BTreeMap<u32, Vec<u8>>>>) {
    let me = std::process::id();
    while !*stop.lock().unwrap() {
        for pid in ferry_testkit::procs::descendants(me) {
            if let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) {
                if !cmdline.is_empty() {
                    seen.lock().unwrap().insert(pid, cmdline);
                }
            }
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

async fn wait_for(what: &str, deadline: Duration, mut check: impl FnMut() -> bool) {
    let start = Instant::now();
    while !check() {
        assert!(start.elapsed() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_secret_appears_in_any_output_log_file_topic_or_command_line() {
    let stack = Stack::get();
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path().to_path_buf();

    // Distinctive secrets: random, and nowhere else.
    let tag = unique_name("sec");
    let secret = |what: &str| format!("Pw{what}{}Zq", tag.trim_start_matches("sec_"));
    let (source_pw, target_pw, replica_pw) = (secret("Src"), secret("Tgt"), secret("Rep"));
    let registry_pw = secret("Reg");
    let registry_user = "reg_user";
    let (source_role, target_role, replica_role) =
        (format!("{tag}_s"), format!("{tag}_t"), format!("{tag}_r"));
    create_role(&stack.source, &source_role, &source_pw).await;
    create_role(&stack.target, &target_role, &target_pw).await;
    create_role(&stack.source_replica, &replica_role, &replica_pw).await;

    let source_db = stack.source.create_database("secrets_s").await.unwrap();
    let target_db = stack.target.create_database("secrets_t").await.unwrap();
    let replica_db = stack
        .source_replica
        .create_database("secrets_r")
        .await
        .unwrap();
    let source = stack.source.connect(&source_db).await.unwrap();
    let target = stack.target.connect(&target_db).await.unwrap();
    let ddl = "CREATE TABLE items (id int PRIMARY KEY, name text NOT NULL)";
    source.batch_execute(ddl).await.unwrap();
    target.batch_execute(ddl).await.unwrap();
    source
        .batch_execute(
            "ALTER TABLE items REPLICA IDENTITY FULL;
             INSERT INTO items SELECT g, 'n' || g FROM generate_series(1, 500) g",
        )
        .await
        .unwrap();

    // Secrets in files (a trailing newline, as editors write) and in the environment.
    let source_pw_file = work.join("source.password");
    std::fs::write(&source_pw_file, format!("{source_pw}\n")).unwrap();
    let kafka_pw_file = work.join("kafka.password");
    std::fs::write(&kafka_pw_file, format!("{}\n", stack.kafka_sasl.password)).unwrap();
    let (registry_url, registry_topic) =
        serve_registry_with_basic_auth(registry_user, &registry_pw).await;

    // The coordinator section as the stack writes it (with its token, if it has one).
    let listen = format!("127.0.0.1:{}", free_port());
    let id = unique_name("secrets");
    let stack_toml: toml::Value =
        toml::from_str(&stack.config_toml(&id, "s", "t", "r", &listen)).unwrap();
    let coordinator = stack_toml["coordinator"].clone();
    let token = coordinator
        .get("token")
        .and_then(|t| t.as_str())
        .map(str::to_owned);
    let q = |p: &Path| format!("{:?}", p.display().to_string());
    let text = format!(
        r#"[migration]
id = "{id}"

[source]
host = "localhost"
port = {source_port}
user = "{source_role}"
password_file = {source_pw_file}
database = "{source_db}"
sslmode = "verify-full"
sslrootcert = {ca}

[target]
host = "127.0.0.1"
port = {target_port}
user = "{target_role}"
database = "{target_db}"
sslmode = "verify-ca"
sslrootcert = {ca}

[source_replica]
host = "127.0.0.1"
port = {replica_port}
user = "{replica_role}"
database = "{replica_db}"

[kafka]
bootstrap_servers = "{sasl}"
security_protocol = "sasl_ssl"
sasl_mechanism = "SCRAM-SHA-512"
sasl_username = "{sasl_user}"
sasl_password_file = {kafka_pw_file}
ssl_ca_location = {kafka_ca}

[schema_registry]
url = "{registry_url}"
username = "{registry_user}"

[coordinator]
{coordinator}
"#,
        source_port = stack.source.port,
        target_port = stack.target.port,
        replica_port = stack.source_replica.port,
        source_pw_file = q(&source_pw_file),
        kafka_pw_file = q(&kafka_pw_file),
        ca = q(stack.ca_file()),
        kafka_ca = q(&stack.kafka_sasl.ca_location),
        sasl = stack.kafka_sasl.bootstrap,
        sasl_user = stack.kafka_sasl.user,
        coordinator = toml::to_string(&coordinator).unwrap(),
    );
    let config = work.join("ferry.toml");
    std::fs::write(&config, &text).unwrap();
    for s in [&source_pw, &target_pw, &replica_pw, &registry_pw] {
        assert!(
            !text.contains(s.as_str()),
            "the config file holds no password"
        );
    }

    // pg_dump, as `end migration --backup-schema-files` runs it, records its command line.
    let bin = work.join("bin");
    std::fs::create_dir(&bin).unwrap();
    let real_pg_dump = String::from_utf8(
        Command::new("sh")
            .args(["-c", "command -v pg_dump"])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap()
    .trim()
    .to_owned();
    assert!(!real_pg_dump.is_empty(), "pg_dump is not on PATH");
    let recorded = work.join("pg_dump.cmdlines");
    let wrapper = bin.join("pg_dump");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\ncat /proc/$$/cmdline >> '{}'\nprintf '\\n' >> '{}'\nexec '{real_pg_dump}' \"$@\"\n",
            recorded.display(),
            recorded.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(
        &wrapper,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();

    let ferry = Ferry {
        config: config.clone(),
        dir: work.clone(),
        env: vec![
            ("FERRY_TARGET__PASSWORD".into(), target_pw.clone()),
            ("FERRY_SOURCE_REPLICA__PASSWORD".into(), replica_pw.clone()),
            (
                "FERRY_SCHEMA_REGISTRY__PASSWORD".into(),
                registry_pw.clone(),
            ),
        ],
        path: format!(
            "{}:{}",
            bin.display(),
            std::env::var("PATH").unwrap_or_default()
        ),
    };

    // What the stack's servers write meanwhile.
    let pg_logs: Vec<PathBuf> = std::fs::read_dir(
        PathBuf::from(
            std::fs::read_to_string(stack.dir.join("pgroot"))
                .unwrap()
                .trim(),
        )
        .join("logs"),
    )
    .unwrap()
    .flatten()
    .map(|e| e.path())
    .collect();
    let mut server_logs = pg_logs;
    server_logs.push(stack.dir.join("kafka.log"));
    let server_logs = offsets(&server_logs);

    let stop_watch = Arc::new(Mutex::new(false));
    let cmdlines = Arc::new(Mutex::new(BTreeMap::new()));
    let watcher = {
        let (stop, seen) = (stop_watch.clone(), cmdlines.clone());
        std::thread::spawn(move || watch_command_lines(stop, seen))
    };

    let mut outputs: Vec<(String, Vec<u8>)> = Vec::new();
    let mut coordinator = ferry.spawn("coordinator", &["coordinator"]);
    ferry_testkit::wait_listening(&listen, Duration::from_secs(60))
        .await
        .unwrap();
    let mut exporter = ferry.spawn("exporter", &["export", "data", "from", "source"]);
    let mut importer = ferry.spawn("importer", &["import", "data", "to", "target"]);

    // Changes after the snapshot.
    source
        .batch_execute(
            "INSERT INTO items SELECT g, 'new' || g FROM generate_series(501, 600) g;
             UPDATE items SET name = 'changed' WHERE id % 10 = 0;
             DELETE FROM items WHERE id % 9 = 0;",
        )
        .await
        .unwrap();
    let expected: i64 = source
        .query_one("SELECT count(*) FROM items", &[])
        .await
        .unwrap()
        .get(0);
    let services_alive = |children: &mut [&mut KillOnDrop]| {
        for c in children.iter_mut() {
            if let Some(status) = c.0.try_wait().unwrap() {
                let logs = ["coordinator", "exporter", "importer"].map(|n| {
                    std::fs::read_to_string(work.join(format!("{n}.stderr"))).unwrap_or_default()
                });
                panic!("a service exited ({status}):\n{}", logs.join("\n-----\n"));
            }
        }
    };
    let start = Instant::now();
    loop {
        services_alive(&mut [&mut coordinator, &mut exporter, &mut importer]);
        let on_target: i64 = target
            .query_one("SELECT count(*) FROM items", &[])
            .await
            .unwrap()
            .get(0);
        if on_target == expected {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(180),
            "the target has {on_target} of {expected} rows"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    let out = ferry.run(&mut outputs, &["cutover", "status"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The cutover is refused until the coordinator saw the snapshot done.
    wait_for(
        "the cutover to target to be accepted",
        Duration::from_secs(120),
        || {
            services_alive(&mut [&mut coordinator, &mut exporter, &mut importer]);
            ferry
                .run(&mut outputs, &["initiate", "cutover", "to", "target"])
                .status
                .success()
        },
    )
    .await;
    wait_for(
        "the cutover to target to complete",
        Duration::from_secs(240),
        || {
            services_alive(&mut [&mut coordinator, &mut importer]);
            let out = ferry.run(&mut outputs, &["cutover", "status"]);
            String::from_utf8_lossy(&out.stdout).contains("cutover to target: COMPLETED")
        },
    )
    .await;
    let digest = "SELECT md5(string_agg(t::text, '|' ORDER BY id)) FROM items t";
    let on_source: String = source.query_one(digest, &[]).await.unwrap().get(0);
    let on_target: String = target.query_one(digest, &[]).await.unwrap().get(0);
    assert_eq!(
        on_source, on_target,
        "the target equals the source at COMPLETED"
    );
    let out = ferry.run(
        &mut outputs,
        &["get", "data-migration-report", "--format", "json"],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(report.is_object(), "{report}");

    let backups = work.join("backups");
    let out = ferry.run(
        &mut outputs,
        &[
            "end",
            "migration",
            "--backup-dir",
            backups.to_str().unwrap(),
            "--save-migration-reports",
            "--backup-log-files",
            "--backup-schema-files",
            "--backup-data-files",
        ],
    );
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let dumps = std::fs::read(&recorded).unwrap_or_default();
    assert_eq!(
        dumps
            .split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
            .count(),
        3,
        "pg_dump ran once per configured database"
    );
    // Read with the services still up: their command lines are still there to sample.
    for (name, child) in [
        ("coordinator", &coordinator),
        ("exporter", &exporter),
        ("importer", &importer),
    ] {
        if let Ok(cmdline) = std::fs::read(format!("/proc/{}/cmdline", child.0.id())) {
            outputs.push((format!("/proc/<pid>/cmdline of the {name}"), cmdline));
        }
    }
    *stop_watch.lock().unwrap() = true;
    watcher.join().unwrap();
    drop((coordinator, exporter, importer));

    // Everything to search.
    outputs.push(("pg_dump command lines".into(), dumps));
    let sampled = cmdlines.lock().unwrap().clone();
    assert!(
        sampled.len() >= 3,
        "the command lines of the services were sampled: {sampled:?}"
    );
    for (pid, cmdline) in sampled {
        outputs.push((format!("/proc/{pid}/cmdline"), cmdline));
    }
    let skip = [
        config.clone(),
        source_pw_file.clone(),
        kafka_pw_file.clone(),
    ];
    let files = files_under(&work, &skip);
    assert!(
        files.iter().any(|(n, _)| n.ends_with("schema-target.sql"))
            && files
                .iter()
                .any(|(n, _)| n.ends_with("data-migration-report.json"))
            && files
                .iter()
                .any(|(n, _)| n.ends_with("source-stream.jsonl"))
            && files.iter().any(|(n, _)| n.ends_with("exporter.stderr")),
        "{:?}",
        files.iter().map(|(n, _)| n).collect::<Vec<_>>()
    );
    outputs.extend(files);
    outputs.extend(appended(&server_logs));
    // Every record of every topic Ferry wrote for this migration (the registry's
    // topic included: the test's registry stores what Ferry registered).
    let mut kafka = rdkafka::ClientConfig::new();
    kafka.set("bootstrap.servers", &stack.kafka_bootstrap);
    let topics = ferry_shared::kafka::list_topics(&kafka, &format!("ferry.{id}."))
        .await
        .unwrap();
    assert!(topics.iter().any(|t| t.ends_with("_state")), "{topics:?}");
    assert!(topics.iter().any(|t| t.ends_with("_status")), "{topics:?}");
    // Ferry registered its schemas through the basic-auth registry.
    let schemas = ferry_shared::kafka::read_all(&kafka, &registry_topic)
        .await
        .unwrap();
    assert!(
        !schemas.is_empty(),
        "nothing was registered in the registry"
    );
    for topic in topics.into_iter().chain([registry_topic]) {
        for r in ferry_shared::kafka::read_all(&kafka, &topic).await.unwrap() {
            let mut bytes = r.key.unwrap_or_default();
            bytes.extend(r.value.unwrap_or_default());
            for (name, value) in r.headers {
                bytes.extend(name.into_bytes());
                bytes.extend(value);
            }
            outputs.push((format!("topic {topic} offset {}", r.offset), bytes));
        }
    }

    let mut secrets = vec![
        ("the source role's password", source_pw.clone()),
        ("the target role's password", target_pw.clone()),
        ("the source-replica role's password", replica_pw.clone()),
        ("the Kafka SASL password", stack.kafka_sasl.password.clone()),
        ("the registry's password", registry_pw.clone()),
        (
            "the registry's basic-auth header",
            base64(format!("{registry_user}:{registry_pw}").as_bytes()),
        ),
    ];
    if let Some(token) = token {
        secrets.push(("the coordinator token", token));
    }
    // The search reads what it should: names that are not secret are found in it.
    for (what, needle) in [
        ("the migration id", id.as_str()),
        ("the target role (pg_dump -U)", target_role.as_str()),
    ] {
        assert!(
            outputs.iter().any(|(_, bytes)| contains(bytes, needle)),
            "{what} was found nowhere: the search misses the outputs"
        );
    }
    let mut leaks = Vec::new();
    for (name, bytes) in &outputs {
        for (what, s) in &secrets {
            if contains(bytes, s) {
                leaks.push(format!("{what} appears in {name}"));
            }
        }
    }
    assert!(leaks.is_empty(), "secrets leaked:\n{}", leaks.join("\n"));
    // The search saw the logs it should: debug lines of each service.
    for name in ["coordinator", "exporter", "importer"] {
        let log = std::fs::read_to_string(work.join(format!("{name}.stderr"))).unwrap();
        assert!(log.contains("DEBUG"), "{name} logged no debug lines");
    }

    // Best effort: the roles go with the databases.
    for (cluster, db, role) in [
        (&stack.source, &source_db, &source_role),
        (&stack.target, &target_db, &target_role),
        (&stack.source_replica, &replica_db, &replica_role),
    ] {
        if let Ok(admin) = cluster.connect("postgres").await {
            let _ = admin
                .batch_execute(&format!(
                    "DROP DATABASE IF EXISTS \"{db}\" WITH (FORCE); DROP ROLE IF EXISTS {role}"
                ))
                .await;
        }
    }
}
