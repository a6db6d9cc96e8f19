//! An importer stopped by a definite error, as the operator sees it through the real
//! binaries (`ferry coordinator`, `ferry export data from source`, `ferry import data to
//! target`): after the importer process exited, `ferry cutover status`, `/api/status`,
//! `ferry get data-migration-report` and `/metrics` (`ferry_instance_error`) show the
//! error with its table, column and fix, and no longer once a new importer, started
//! after the fix, ran successfully.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test helpers

mod common;

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use common::{ferry, run, KillOnDrop};
use ferry_testkit::{free_port, unique_name, wait_until, Stack};
use serde_json::Value;

/// The coordinator's answer to GET `path`, with the configuration's token.
async fn get(listen: &str, token: &str, path: &str) -> String {
    reqwest::Client::new()
        .get(format!("http://{listen}{path}"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

fn status_text(config: &Path) -> String {
    let out = run(config, &["cutover", "status"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn an_importer_stopped_by_a_definite_error_shows_it_in_status_report_and_metrics_until_it_runs_again(
) {
    let stack = Stack::get();
    let source_db = stack.source.create_database("sterr_s").await.unwrap();
    let target_db = stack.target.create_database("sterr_t").await.unwrap();
    let source = stack.source.connect(&source_db).await.unwrap();
    let target = stack.target.connect(&target_db).await.unwrap();
    source
        .batch_execute(
            "CREATE TABLE items (id int PRIMARY KEY, name text, extra text);
             ALTER TABLE items REPLICA IDENTITY FULL;
             INSERT INTO items SELECT g, 'n' || g, 'x' || g FROM generate_series(1, 50) g",
        )
        .await
        .unwrap();
    // The target lacks a column the stream carries: a definite error for the importer.
    target
        .batch_execute("CREATE TABLE items (id int PRIMARY KEY, name text)")
        .await
        .unwrap();
    let listen = format!("127.0.0.1:{}", free_port());
    let text = stack.config_toml(
        &unique_name("sterr"),
        &source_db,
        &target_db,
        "ferry",
        &listen,
    );
    let token = text.parse::<toml::Table>().unwrap()["coordinator"]["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("ferry.toml");
    std::fs::write(&config, text).unwrap();
    let log = |name: &str| std::fs::File::create(dir.path().join(name)).unwrap();

    let _coordinator = KillOnDrop(
        ferry(&config, &["coordinator"])
            .stdout(Stdio::null())
            .stderr(log("coordinator.log"))
            .spawn()
            .unwrap(),
    );
    ferry_testkit::wait_listening(&listen, Duration::from_secs(60))
        .await
        .unwrap();
    let _exporter = KillOnDrop(
        ferry(&config, &["export", "data", "from", "source"])
            .stdout(Stdio::null())
            .stderr(log("exporter.log"))
            .spawn()
            .unwrap(),
    );
    let mut importer = ferry(&config, &["import", "data", "to", "target"])
        .stdout(Stdio::null())
        .stderr(log("importer.log"))
        .spawn()
        .unwrap();
    let pid = importer.id();
    let exited = tokio::time::timeout(
        Duration::from_secs(120),
        tokio::task::spawn_blocking(move || importer.wait()),
    )
    .await
    .expect("the importer stops on the missing column")
    .unwrap()
    .unwrap();
    assert_eq!(exited.code(), Some(1), "{exited}");
    let instance_suffix = format!(":{pid}");

    // The process is gone; status says what stopped it, where and what to do.
    let status = wait_until(
        "cutover status to show the importer's error",
        Duration::from_secs(30),
        || {
            let config = config.clone();
            async move {
                let text = status_text(&config);
                Ok(text.contains("FAILED").then_some(text))
            }
        },
    )
    .await
    .unwrap();
    for needle in [
        "errors (shown until an instance",
        "importer target",
        &instance_suffix,
        "FAILED (stopped; fix the cause and start it again",
        "definite error at ",
        "table \"public.items\" on the target has no column \"extra\"",
        "add the column",
    ] {
        assert!(status.contains(needle), "{needle:?} in:\n{status}");
    }
    let line = status
        .lines()
        .find(|l| l.trim_start().starts_with("target ") && l.contains("applies"))
        .unwrap();
    assert!(line.contains("instances 0"), "{status}");
    assert!(
        status
            .lines()
            .any(|l| l.contains(&instance_suffix) && l.contains("failed")),
        "{status}"
    );

    // The same in the JSON status: the error list, and the group's last error beside
    // its instance count.
    let s: Value = serde_json::from_str(&get(&listen, &token, "/api/status").await).unwrap();
    let e = &s["errors"][0];
    assert_eq!(
        (&e["role"], &e["unit"], &e["state"], &e["error"]["kind"]),
        (
            &Value::from("importer"),
            &Value::from("target"),
            &Value::from("failed"),
            &Value::from("definite")
        ),
        "{s:#}"
    );
    assert!(
        e["instance"].as_str().unwrap().ends_with(&instance_suffix),
        "{e}"
    );
    let message = e["error"]["message"].as_str().unwrap();
    assert!(message.contains("no column \"extra\""), "{message}");
    let group = s["importers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["destination"] == "target")
        .unwrap();
    assert_eq!(group["instances"], 0, "{group}");
    assert_eq!(group["last_error"]["error"]["message"], message, "{group}");

    // /metrics: the error's time by role, unit, instance and kind.
    let metrics = get(&listen, &token, "/metrics").await;
    let at = e["error"]["at_ms"].as_i64().unwrap() as f64 / 1000.0;
    let expected = format!(
        "ferry_instance_error{{role=\"importer\",unit=\"target\",instance=\"{}\",kind=\"definite\"}} {at}",
        e["instance"].as_str().unwrap()
    );
    assert!(metrics.contains(&expected), "{expected} in:\n{metrics}");
    assert!(
        metrics.contains("ferry_importer_instances{destination=\"target\",state=\"failed\"} 1"),
        "{metrics}"
    );

    // The report names it too (its counts are short because of it).
    let out = run(&config, &["get", "data-migration-report"]);
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(
        report.contains("error: importer target") && report.contains("no column \"extra\""),
        "{report}"
    );

    // Fixed, and a new importer process started: once it applied, the error is gone
    // everywhere.
    target
        .batch_execute("ALTER TABLE items ADD COLUMN extra text")
        .await
        .unwrap();
    let _importer = KillOnDrop(
        ferry(&config, &["import", "data", "to", "target"])
            .stdout(Stdio::null())
            .stderr(log("importer-2.log"))
            .spawn()
            .unwrap(),
    );
    let count = wait_until(
        "the restarted importer to apply every row",
        Duration::from_secs(90),
        || {
            let target = &target;
            async move {
                let n: i64 = target
                    .query_one("SELECT count(*) FROM items WHERE extra IS NOT NULL", &[])
                    .await?
                    .get(0);
                Ok((n == 50).then_some(n))
            }
        },
    )
    .await
    .unwrap();
    assert_eq!(count, 50);
    wait_until(
        "the error to leave status and metrics",
        Duration::from_secs(30),
        || {
            let (config, listen, token) = (config.clone(), listen.clone(), token.clone());
            async move {
                let text = status_text(&config);
                let metrics = get(&listen, &token, "/metrics").await;
                Ok((!text.contains("errors (")
                    && !text.contains("FAILED")
                    && !metrics.contains("ferry_instance_error{"))
                .then_some(()))
            }
        },
    )
    .await
    .unwrap();
}
