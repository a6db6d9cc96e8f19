//! The three clusters answer over TCP with a password, run with wal_level=logical,
//! and accept what Ferry's exporter needs: replication-mode connections and logical
//! slots with pgoutput.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test helpers

use std::process::Command;
use std::time::Duration;

use ferry_testkit::{Cluster, Stack};

fn clusters() -> [&'static Cluster; 3] {
    let s = Stack::get();
    [&s.source, &s.target, &s.source_replica]
}

fn psql() -> String {
    let debian = "/usr/lib/postgresql/15/bin/psql";
    if std::path::Path::new(debian).exists() {
        debian.to_owned()
    } else {
        "psql".to_owned()
    }
}

#[tokio::test]
async fn clusters_are_distinct_and_logical() {
    let ports: std::collections::HashSet<u16> = clusters().iter().map(|c| c.port).collect();
    assert_eq!(ports.len(), 3, "each cluster has its own port");
    for c in clusters() {
        let client = c.connect("ferry").await.unwrap();
        let row = client.query_one("SHOW wal_level", &[]).await.unwrap();
        assert_eq!(row.get::<_, String>(0), "logical", "cluster {}", c.name);
        for (setting, want) in [
            ("max_replication_slots", "256"),
            ("max_wal_senders", "128"),
            ("max_connections", "300"),
        ] {
            let row = client
                .query_one(&format!("SHOW {setting}"), &[])
                .await
                .unwrap();
            assert_eq!(
                row.get::<_, String>(0),
                want,
                "{setting} on cluster {}",
                c.name
            );
        }
        let row = client
            .query_one(
                "SELECT rolsuper, rolreplication FROM pg_roles WHERE rolname = current_user",
                &[],
            )
            .await
            .unwrap();
        assert!(
            row.get::<_, bool>(0) && row.get::<_, bool>(1),
            "ferry is superuser with replication"
        );
        let v: i32 = client
            .query_one("SELECT current_setting('server_version_num')::int", &[])
            .await
            .unwrap()
            .get(0);
        assert!((150_000..160_000).contains(&v), "PostgreSQL 15, got {v}");
    }
}

#[tokio::test]
async fn wrong_password_is_refused() {
    let mut c = Stack::get().source.clone();
    c.password = "not-the-password".to_owned();
    let err = c.connect("ferry").await.unwrap_err();
    assert!(format!("{err:#}").contains("password"), "{err:#}");
}

#[tokio::test]
async fn create_database_gives_fresh_usable_databases() {
    for c in clusters() {
        let a = c.create_database("tk").await.unwrap();
        let b = c.create_database("tk").await.unwrap();
        assert_ne!(a, b);
        assert!(a.starts_with("tk_"));
        let client = c.connect(&a).await.unwrap();
        client
            .batch_execute(
                "CREATE TABLE t (id int PRIMARY KEY, v text); INSERT INTO t VALUES (1, 'x')",
            )
            .await
            .unwrap();
        let n: i64 = client
            .query_one("SELECT count(*) FROM t", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(n, 1);
    }
}

#[tokio::test]
async fn logical_slot_with_pgoutput_decodes_changes() {
    for c in clusters() {
        let db = c.create_database("slot").await.unwrap();
        let client = c.connect(&db).await.unwrap();
        let slot = ferry_testkit::unique_name("slot");
        // Separate statements: a slot cannot be created in a transaction with writes.
        for sql in [
            "CREATE TABLE t (id int PRIMARY KEY, v text)".to_owned(),
            "CREATE PUBLICATION p FOR TABLE t".to_owned(),
            format!("SELECT pg_create_logical_replication_slot('{slot}', 'pgoutput')"),
            "INSERT INTO t VALUES (1, 'a'), (2, 'b')".to_owned(),
        ] {
            client.batch_execute(&sql).await.unwrap();
        }
        // pgoutput emits binary messages: Begin, Relation, Insert, Insert, Commit.
        // Decoding reads only flushed WAL, and synchronous_commit=off flushes within
        // wal_writer_delay: wait for it.
        let sql = format!(
            "SELECT count(*) FROM pg_logical_slot_peek_binary_changes('{slot}', NULL, NULL,
               'proto_version', '1', 'publication_names', 'p')"
        );
        let n = ferry_testkit::wait_until(
            "pgoutput to decode the insert",
            Duration::from_secs(10),
            || {
                let (client, sql) = (&client, &sql);
                async move {
                    let n: i64 = client.query_one(sql.as_str(), &[]).await?.get(0);
                    Ok((n >= 5).then_some(n))
                }
            },
        )
        .await
        .unwrap();
        assert_eq!(n, 5, "cluster {}", c.name);
        client
            .batch_execute(&format!("SELECT pg_drop_replication_slot('{slot}')"))
            .await
            .unwrap();
    }
}

#[test]
fn replication_connection_over_tcp_with_password() {
    for c in clusters() {
        let conn = format!(
            "{} replication=database sslmode=disable",
            c.conn_string("ferry")
        );
        let slot = ferry_testkit::unique_name("repl");
        let out = Command::new(psql())
            .env_remove("PGPASSWORD")
            .args(["-X", "-tA", "-v", "ON_ERROR_STOP=1", &conn])
            .args(["-c", "IDENTIFY_SYSTEM"])
            .args([
                "-c",
                &format!("CREATE_REPLICATION_SLOT {slot} TEMPORARY LOGICAL pgoutput"),
            ])
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "cluster {}: {stdout}{}",
            c.name,
            String::from_utf8_lossy(&out.stderr)
        );
        // IDENTIFY_SYSTEM: systemid|timeline|xlogpos|dbname
        let first = stdout.lines().next().unwrap_or_default();
        let cols: Vec<&str> = first.split('|').collect();
        assert_eq!(cols.len(), 4, "IDENTIFY_SYSTEM row: {first}");
        assert_eq!(cols[3], "ferry");
        assert!(stdout.contains(&slot), "slot created: {stdout}");
    }
}
