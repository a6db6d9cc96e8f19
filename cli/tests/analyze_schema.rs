//! `ferry analyze-schema` against a real source: a table with a column type that cannot
//! round-trip gives one clear error naming schema.table.column and the type, and a
//! non-zero exit; a ready source gives the per-table report and exit 0.

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
        .arg("analyze-schema")
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
