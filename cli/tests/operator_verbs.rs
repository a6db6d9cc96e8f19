//! The operator's verbs that talk to the coordinator, through the real `ferry` binary:
//! `cutover status`, `initiate cutover` (refused out of order, with the reason and exit
//! status 1), `get data-migration-report` (table and JSON), `verify`, and a clear error
//! when the coordinator cannot be reached.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test helpers

mod common;

use std::process::Stdio;
use std::time::Duration;

use common::{ferry, run, KillOnDrop};
use ferry_testkit::{free_port, unique_name, Stack};

#[tokio::test(flavor = "multi_thread")]
async fn verbs_answer_through_the_coordinator() {
    let stack = Stack::get();
    let source_db = stack.source.create_database("verbs_s").await.unwrap();
    let target_db = stack.target.create_database("verbs_t").await.unwrap();
    let replica_db = stack
        .source_replica
        .create_database("verbs_r")
        .await
        .unwrap();
    let source = stack.source.connect(&source_db).await.unwrap();
    let target = stack.target.connect(&target_db).await.unwrap();
    let ddl = "CREATE TABLE items (id int PRIMARY KEY, name text)";
    source.batch_execute(ddl).await.unwrap();
    target.batch_execute(ddl).await.unwrap();
    source
        .batch_execute("INSERT INTO items SELECT g, 'n' || g FROM generate_series(1, 50) g")
        .await
        .unwrap();
    let listen = format!("127.0.0.1:{}", free_port());
    let text = stack.config_toml(
        &unique_name("verbs"),
        &source_db,
        &target_db,
        &replica_db,
        &listen,
    );
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("ferry.toml");
    std::fs::write(&config, text).unwrap();

    // No coordinator yet: a clear error naming the address and what to do.
    let out = run(&config, &["cutover", "status"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("cannot reach the coordinator at http://{listen}"))
            && stderr.contains("ferry coordinator"),
        "{stderr}"
    );

    let coordinator_log = dir.path().join("coordinator.log");
    let mut coordinator = KillOnDrop(
        ferry(&config, &["coordinator"])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&coordinator_log).unwrap())
            .spawn()
            .unwrap(),
    );
    ferry_testkit::wait_listening(&listen, Duration::from_secs(60))
        .await
        .unwrap();

    let out = run(&config, &["cutover", "status"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for line in [
        "cutover to target: NOT_INITIATED",
        "cutover to source-replica: NOT_INITIATED",
        "cutover to source: NOT_INITIATED",
    ] {
        assert!(stdout.contains(line), "{stdout}");
    }

    // Out of order: refused with the reason, exit status 1.
    let out = run(&config, &["initiate", "cutover", "to", "source"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("cutover to source needs the cutover to target to be COMPLETED first"),
        "{stderr}"
    );
    // Before the snapshot is exported, cutover to target is refused too.
    let out = run(&config, &["initiate", "cutover", "to", "target"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("has not finished the snapshot"), "{stderr}");
    // A flag that applies only to cutover to target: a usage error.
    let out = run(
        &config,
        &[
            "initiate",
            "cutover",
            "to",
            "source",
            "--prepare-for-fall-back",
        ],
    );
    assert_eq!(out.status.code(), Some(2));

    // The report: final row counts from the databases, in JSON and as a table.
    let out = run(
        &config,
        &["get", "data-migration-report", "--format", "json"],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let rows = report["rows"].as_array().unwrap();
    let count = |db: &str| {
        rows.iter()
            .find(|r| r["table"] == "public.items" && r["database"] == db)
            .map(|r| r["final_row_count"].clone())
    };
    assert_eq!(count("source"), Some(serde_json::json!(50)), "{report}");
    assert_eq!(count("target"), Some(serde_json::json!(0)), "{report}");
    let out = run(&config, &["get", "data-migration-report"]);
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        table.contains("FINAL ROW COUNT") && table.contains("public.items"),
        "{table}"
    );

    // verify: different now (exit 1), equal after copying.
    let out = run(&config, &["verify"]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    target
        .batch_execute("INSERT INTO items SELECT g, 'n' || g FROM generate_series(1, 50) g")
        .await
        .unwrap();
    let out = run(&config, &["verify", "--from", "source", "--to", "target"]);
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let out = run(&config, &["verify", "--from", "target", "--to", "target"]);
    assert_eq!(out.status.code(), Some(2));

    // A stream to end: the exporter snapshots the 50 rows and streams; `end migration`
    // backs up what was asked, stops it, and removes the slot, metadata and topics.
    source
        .batch_execute("ALTER TABLE items REPLICA IDENTITY FULL")
        .await
        .unwrap();
    let exporter_log = dir.path().join("exporter.log");
    let mut exporter = ferry(&config, &["export", "data", "from", "source"])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&exporter_log).unwrap())
        .spawn()
        .unwrap();
    ferry_testkit::wait_until(
        "the snapshot in the report",
        Duration::from_secs(90),
        || {
            let config = config.clone();
            async move {
                let out = run(
                    &config,
                    &["get", "data-migration-report", "--format", "json"],
                );
                let report: serde_json::Value = serde_json::from_slice(&out.stdout)?;
                Ok(report["rows"]
                    .as_array()
                    .and_then(|rows| {
                        rows.iter().find(|r| {
                            r["database"] == "source" && r["exported_snapshot_rows"] == 50
                        })
                    })
                    .map(|_| ()))
            }
        },
    )
    .await
    .unwrap();
    let backup = dir.path().join("backup");
    let out = run(
        &config,
        &[
            "end",
            "migration",
            "--backup-dir",
            backup.to_str().unwrap(),
            "--save-migration-reports",
            "--backup-log-files",
            "--backup-data-files",
            "--delete-topics",
        ],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("migration ended"), "{stdout}");
    assert!(
        stdout.contains("the coordinator stops in"),
        "end migration says the coordinator stops: {stdout}"
    );
    let events = std::fs::read_to_string(backup.join("source-stream.jsonl")).unwrap();
    assert_eq!(events.lines().count(), 50, "{events}");
    for name in [
        "data-migration-report.json",
        "data-migration-report.txt",
        "status.json",
    ] {
        assert!(backup.join(name).exists(), "{name}");
    }
    // The exporter saw the migration end and stopped by itself; so did the coordinator.
    let status = tokio::task::spawn_blocking(move || exporter.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "{status}");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let coordinator_status = loop {
        if let Some(s) = coordinator.0.try_wait().unwrap() {
            break s;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the coordinator still runs 30 s after end migration"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(coordinator_status.success(), "{coordinator_status}");
    // Neither logged an ERROR, also not about the topics end migration deleted.
    for log in [&coordinator_log, &exporter_log] {
        let text = std::fs::read_to_string(log).unwrap();
        let errors: Vec<&str> = text.lines().filter(|l| l.contains("ERROR")).collect();
        assert!(errors.is_empty(), "{}: {errors:#?}", log.display());
    }
    let slots: i64 = source
        .query_one(
            "SELECT count(*) FROM pg_replication_slots WHERE database = current_database()",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(slots, 0);
    let metadata: bool = target
        .query_one("SELECT to_regnamespace('ferry_metadata') IS NULL", &[])
        .await
        .unwrap()
        .get(0);
    assert!(metadata, "ferry_metadata is dropped on the target");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_importer_started_before_its_topics_exist_waits_without_an_error() {
    let stack = Stack::get();
    let target_db = stack.target.create_database("early_t").await.unwrap();
    let listen = format!("127.0.0.1:{}", free_port());
    let text = stack.config_toml(&unique_name("early"), "ferry", &target_db, "ferry", &listen);
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("ferry.toml");
    std::fs::write(&config, text).unwrap();
    let log = dir.path().join("importer.log");
    let _importer = KillOnDrop(
        ferry(&config, &["import", "data", "to", "target"])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
    );
    let waiting = "waiting for the stream's topics";
    ferry_testkit::wait_until(
        "the importer to say it waits",
        Duration::from_secs(60),
        || {
            let log = log.clone();
            async move {
                let text = std::fs::read_to_string(&log).unwrap_or_default();
                Ok(text.contains(waiting).then_some(()))
            }
        },
    )
    .await
    .unwrap();
    // A few more seconds of waiting: still no error, and the wait said once.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let text = std::fs::read_to_string(&log).unwrap();
    let errors: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("ERROR") || l.contains("WARN"))
        .collect();
    assert!(errors.is_empty(), "{errors:#?}");
    assert_eq!(text.matches(waiting).count(), 1, "{text}");
    assert!(
        text.lines()
            .any(|l| l.contains("INFO") && l.contains(waiting)),
        "{text}"
    );
}
