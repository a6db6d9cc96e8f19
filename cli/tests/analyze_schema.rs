//! `ferry analyze-schema` against a real source: a table with a column type that cannot
//! round-trip gives one clear error naming schema.table.column and the type, and a
//! non-zero exit; a ready source gives the per-table report and exit 0. `ferry prepare
//! source` shows, then makes, exactly the replica identity changes the check asks for.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test helpers

use std::process::{Command, Output};

use ferry_testkit::{free_port, unique_name, Stack};

async fn source_with(sql: &str) -> String {
    let stack = Stack::get();
    let db = stack.source.create_database("analyze").await.unwrap();
    let client = stack.source.connect(&db).await.unwrap();
    client.batch_execute(sql).await.unwrap();
    db
}

fn analyze(db: &str) -> Output {
    ferry(db, &["analyze-schema"])
}

/// Runs `ferry ARGS` with a configuration whose databases are all `db` on the source
/// cluster.
fn ferry(db: &str, args: &[&str]) -> Output {
    let stack = Stack::get();
    let listen = format!("127.0.0.1:{}", free_port());
    let text = stack.config_toml(&unique_name("analyze"), db, db, db, &listen);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ferry.toml");
    std::fs::write(&path, text).unwrap();
    let mut command = Command::new(env!("CARGO_BIN_EXE_ferry"));
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("FERRY_") {
            command.env_remove(name);
        }
    }
    command
        .arg("--config")
        .arg(&path)
        .args(args)
        .output()
        .unwrap()
}

#[tokio::test]
async fn an_unsupported_column_type_is_one_clear_error_and_a_failure() {
    let db = source_with(
        "CREATE TABLE good (id int PRIMARY KEY, note text);
         ALTER TABLE good REPLICA IDENTITY FULL;
         CREATE TABLE refs (id int PRIMARY KEY, owner regclass);
         ALTER TABLE refs REPLICA IDENTITY FULL;",
    )
    .await;
    let output = analyze(&db);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "stderr: {stderr}");
    let problems: Vec<&str> = stderr
        .lines()
        .filter(|l| l.trim_start().starts_with("- "))
        .collect();
    assert_eq!(problems.len(), 1, "exactly one problem: {stderr}");
    assert!(
        problems[0].contains("column public.refs.owner has type regclass"),
        "{stderr}"
    );
    assert!(
        problems[0].contains("store the object's name as text instead"),
        "{stderr}"
    );
}

#[tokio::test]
async fn a_ready_source_gets_its_report() {
    let db = source_with(
        "CREATE TABLE orders (id bigint PRIMARY KEY, total numeric(12,2), at timestamptz, tags text[]);
         ALTER TABLE orders REPLICA IDENTITY FULL;",
    )
    .await;
    let output = analyze(&db);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(
        output.status.code(),
        Some(0),
        "stderr: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("1 table(s) selected"), "{stdout}");
    assert!(
        stdout.contains("public.orders (primary key: id)"),
        "{stdout}"
    );
    assert!(
        stdout.contains("decimal (special values as text)"),
        "{stdout}"
    );
    assert!(stdout.contains("array of string"), "{stdout}");
}

#[tokio::test]
async fn prepare_source_shows_then_applies_exactly_the_replica_identity_changes() {
    let db = source_with(
        r#"CREATE TABLE plain (id int PRIMARY KEY, note text);
           CREATE SCHEMA "Shop";
           CREATE TABLE "Shop"."Order Lines" ("Id" int PRIMARY KEY);
           ALTER TABLE "Shop"."Order Lines" REPLICA IDENTITY FULL;
           CREATE TABLE events (id int, at date, PRIMARY KEY (id, at)) PARTITION BY RANGE (at);
           CREATE TABLE events_2026 PARTITION OF events FOR VALUES FROM ('2026-01-01') TO ('2027-01-01');"#,
    )
    .await;
    // Not ready before: the check names every table without FULL.
    let before = analyze(&db);
    assert_eq!(before.status.code(), Some(1));

    let dry = ferry(&db, &["prepare", "source", "--dry-run"]);
    let out = String::from_utf8_lossy(&dry.stdout).into_owned();
    assert!(
        dry.status.success(),
        "{out}{}",
        String::from_utf8_lossy(&dry.stderr)
    );
    let statements: Vec<&str> = out
        .lines()
        .filter(|l| l.trim_start().starts_with("ALTER"))
        .collect();
    assert_eq!(
        statements,
        vec![
            r#"  ALTER TABLE "public"."events" REPLICA IDENTITY FULL;"#,
            r#"  ALTER TABLE "public"."events_2026" REPLICA IDENTITY FULL;"#,
            r#"  ALTER TABLE "public"."plain" REPLICA IDENTITY FULL;"#,
        ],
        "{out}"
    );
    assert!(out.contains("nothing was changed"), "{out}");
    // Still not ready: --dry-run changed nothing.
    assert_eq!(analyze(&db).status.code(), Some(1));

    let run = ferry(&db, &["prepare", "source"]);
    let out = String::from_utf8_lossy(&run.stdout).into_owned();
    assert!(
        run.status.success(),
        "{out}{}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert!(out.contains("done: 3 tables changed"), "{out}");
    let after = analyze(&db);
    assert!(
        after.status.success(),
        "{}",
        String::from_utf8_lossy(&after.stderr)
    );
    let again = ferry(&db, &["prepare", "source"]);
    assert!(String::from_utf8_lossy(&again.stdout).contains("needs no change"));
}
