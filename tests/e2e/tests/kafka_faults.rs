//! What Apache Kafka does to a running migration, end to end and in-process:
//!
//! - the broker stopped (SIGTERM) and started again in the middle of the change stream,
//!   and killed (SIGKILL) in the middle of a cutover: exporter, importers and coordinator
//!   carry on by themselves, and the data is exact (each on a broker of its own, so the
//!   shared broker of the other tests is never touched);
//! - `_state`, `_status` and `_schemas` compacted by the broker's log cleaner, and a
//!   restarted coordinator rebuilding the same migration state and registry from them;
//! - the whole migration through the broker's SASL_SSL listener (SCRAM-SHA-512, the
//!   stack's own CA), configured only through `[kafka]`; a wrong password stops every
//!   service at once with one message naming the setting.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test helpers

mod common;

use std::time::Duration;

use anyhow::{Context, Result};
use common::*;
use ferry_shared::config::Config;
use ferry_shared::topics::{Destination, Stream, Topics};
use ferry_testkit::{kafka, wait_until, PrivateBroker, Stack};
use serde_json::json;

fn bootstrap_toml(bootstrap: &str) -> String {
    format!("bootstrap_servers = \"{bootstrap}\"\n")
}

/// Runs `f` (a blocking broker control) on a blocking thread.
async fn broker_op(f: impl FnOnce() -> Result<()> + Send + 'static) -> Result<()> {
    tokio::task::spawn_blocking(f).await?
}

/// How the broker goes down.
#[derive(Clone, Copy, Debug)]
enum Down {
    /// SIGTERM: a controlled shutdown.
    Stop,
    /// SIGKILL: no shutdown; the log is recovered at the next start.
    Kill,
}

/// Takes the broker down, makes `rounds` of writes on the source, keeps the broker down
/// for `down` more (every service must carry on, retrying), then starts it again.
async fn broker_down_for(
    h: &mut Harness,
    broker: &std::sync::Arc<PrivateBroker>,
    how: Down,
    rounds: i64,
    down: Duration,
) -> Result<()> {
    let b = broker.clone();
    broker_op(move || match how {
        Down::Stop => b.stop(),
        Down::Kill => b.kill(),
    })
    .await
    .with_context(|| format!("taking the broker down ({how:?})"))?;
    writes(&h.source, "broker down", rounds).await?;
    tokio::time::sleep(down).await;
    h.check_services()
        .await
        .context("a service gave up while the broker was down")?;
    let b = broker.clone();
    broker_op(move || b.restart())
        .await
        .context("restarting the broker")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_broker_stopped_mid_stream_and_killed_mid_cutover_loses_and_doubles_nothing(
) -> Result<()> {
    let broker = std::sync::Arc::new(tokio::task::spawn_blocking(PrivateBroker::start).await??);
    let mut h = Harness::with_kafka("kbounce", Some(bootstrap_toml(&broker.bootstrap))).await?;
    h.exporter(Stream::Source);
    h.importer(Destination::Target);
    h.exporter(Stream::Target);
    h.importer(Destination::Source);
    writes(&h.source, "before", 30).await?;
    h.wait_equal(Side::Source, Side::Target, "before the broker stops")
        .await?;

    // The change stream goes on while the broker is down (a clean stop: SIGTERM), and
    // for a while after it is back.
    writes(&h.source, "racing the stop", 10).await?;
    // Long enough for every client to notice: connections refused, requests timing out.
    broker_down_for(&mut h, &broker, Down::Stop, 20, Duration::from_secs(8)).await?;
    writes(&h.source, "broker back", 20).await?;
    h.wait_equal(Side::Source, Side::Target, "after the broker restarted")
        .await?;

    // A cutover to target (with fall-back) requested, then the broker killed at once
    // (SIGKILL). Before the tails replaced a consumer that fetched nothing more after
    // the restart, this stalled the cutover in about one run of four (docs/architecture.md,
    // "A tail that stops fetching").
    writes(&h.source, "last", 10).await?;
    h.wait_snapshot_done().await?;
    let (code, body) = h.cutover("target", "fall-back").await?;
    assert_eq!(code, 200, "{body}");
    broker_down_for(&mut h, &broker, Down::Kill, 0, Duration::from_secs(5)).await?;
    h.wait_completed("target", None).await?;
    for table in TABLES {
        assert_eq!(
            fingerprint(&h.source, table).await?,
            fingerprint(&h.target, table).await?,
            "{table} at COMPLETED after the broker was stopped during the cutover"
        );
    }

    // Fall-back still flows: writes on the target reach the source.
    writes(&h.target, "on target", 20).await?;
    h.wait_equal(
        Side::Target,
        Side::Source,
        "fall-back after the broker restarts",
    )
    .await?;
    let (_, report) = h.api("GET", "/api/report", None).await?;
    eprintln!("report after two broker restarts: {report:#}");
    h.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_migration_runs_through_the_sasl_ssl_listener() -> Result<()> {
    let stack = Stack::get();
    let kafka = stack.sasl_kafka_toml(&stack.kafka_sasl.password);
    let mut h = Harness::with_kafka("sasl", Some(kafka)).await?;
    // Nothing in the config reaches the PLAINTEXT listener.
    assert!(!h
        .config
        .kafka
        .bootstrap_servers
        .contains(&stack.kafka_bootstrap));
    h.exporter(Stream::Source);
    h.importer(Destination::Target);
    writes(&h.source, "sasl", 30).await?;
    h.wait_equal(Side::Source, Side::Target, "through SASL_SSL")
        .await?;
    h.wait_snapshot_done().await?;
    let (code, body) = h.cutover("target", "none").await?;
    assert_eq!(code, 200, "{body}");
    h.wait_completed("target", None).await?;
    for table in TABLES {
        assert_eq!(
            fingerprint(&h.source, table).await?,
            fingerprint(&h.target, table).await?,
            "{table} at COMPLETED"
        );
    }
    h.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_wrong_kafka_password_stops_each_service_with_one_error_naming_the_setting() -> Result<()>
{
    let stack = Stack::get();
    let mut text = stack.config_toml_with_kafka(
        &ferry_testkit::unique_name("saslbad"),
        "ferry",
        "ferry",
        "ferry",
        &format!("127.0.0.1:{}", ferry_testkit::free_port()),
        &stack.sasl_kafka_toml("not-the-password"),
    );
    text.push('\n');
    let config = Config::from_toml_str(&text).map_err(|e| anyhow::anyhow!("{e}"))?;
    let (_trigger, stop) = ferry_shared::shutdown::channel();

    /// The error a service stopped with, within the deadline.
    async fn stopped_with<E: std::fmt::Display>(
        service: &str,
        run: impl std::future::Future<Output = std::result::Result<(), E>>,
    ) -> Result<(&str, Option<String>)> {
        let result = tokio::time::timeout(Duration::from_secs(60), run)
            .await
            .with_context(|| format!("the {service} did not stop"))?;
        Ok((service, result.err().map(|e| e.to_string())))
    }
    let errors = [
        stopped_with(
            "exporter",
            ferry_exporter::run_for(Stream::Source, config.clone(), stop.clone()),
        )
        .await?,
        stopped_with(
            "importer",
            ferry_importer::run_for(Destination::Target, config.clone(), stop.clone()),
        )
        .await?,
        stopped_with(
            "coordinator",
            ferry_coordinator::run(config.clone(), stop.clone()),
        )
        .await?,
    ];
    for (service, error) in errors {
        let error =
            error.with_context(|| format!("the {service} started with a wrong password"))?;
        assert!(
            error.contains("kafka.sasl_password")
                && error.contains("refused the SASL SCRAM-SHA-512 login of user \"ferry\""),
            "{service}: {error}"
        );
        assert!(!error.contains("not-the-password"), "{service}: {error}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_log_cleaner_compacts_state_and_schemas_and_a_restarted_coordinator_rebuilds_from_them(
) -> Result<()> {
    let bootstrap = Stack::get().kafka_bootstrap.clone();
    let mut h = Harness::new("compact").await?;
    let topics = Topics::new(h.config.migration.topic_prefix());
    // A segment rolled every 100 ms and cleaned as soon as anything in it is dirty, so
    // that the cleaner works within the test (Ferry creates them rolling hourly).
    for topic in [topics.state(), topics.status(), topics.schemas()] {
        wait_until(
            "the compacted topic to exist",
            Duration::from_secs(60),
            || {
                let (bootstrap, topic) = (bootstrap.clone(), topic.clone());
                async move { Ok(kafka::watermarks(&bootstrap, &topic).await.ok()) }
            },
        )
        .await?;
        kafka::set_topic_config(
            &bootstrap,
            &topic,
            &[
                ("cleanup.policy", "compact"),
                ("segment.ms", "100"),
                ("min.cleanable.dirty.ratio", "0.01"),
                ("min.compaction.lag.ms", "0"),
            ],
        )
        .await?;
    }
    h.exporter(Stream::Source);
    h.importer(Destination::Target);
    writes(&h.source, "compact", 40).await?;
    h.wait_equal(Side::Source, Side::Target, "before the cutover")
        .await?;

    // One key of _schemas rewritten again and again: a subject's compatibility level.
    let subject = format!("{}-value", topics.table(Stream::Source, "public", "orders"));
    for i in 0..20 {
        let level = if i % 2 == 0 { "NONE" } else { "FULL" };
        let (code, body) = h
            .api(
                "PUT",
                &format!("/config/{subject}"),
                Some(json!({ "compatibility": level })),
            )
            .await?;
        assert_eq!(code, 200, "{body}");
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    h.wait_snapshot_done().await?;
    let (code, body) = h.cutover("target", "none").await?;
    assert_eq!(code, 200, "{body}");
    h.wait_completed("target", None).await?;
    let (_, before) = h.api("GET", "/api/status", None).await?;
    let (_, subjects_before) = h.api("GET", "/subjects", None).await?;

    // The cleaner removed superseded records: fewer records than offsets.
    let mut kept = Vec::new();
    for topic in [topics.state(), topics.schemas()] {
        let (records, offsets) = wait_until(
            &format!("the log cleaner to compact {topic}"),
            Duration::from_secs(120),
            || {
                let (bootstrap, topic) = (bootstrap.clone(), topic.clone());
                async move {
                    let (low, high) = kafka::watermarks(&bootstrap, &topic).await?;
                    let records = kafka::consume_all(&bootstrap, &topic).await?.len() as i64;
                    Ok((records < high - low).then_some((records, high - low)))
                }
            },
        )
        .await?;
        eprintln!("{topic}: {records} records kept of {offsets} written");
        kept.push(records);
    }

    // A coordinator started afresh rebuilds the same migration and the same registry.
    h.kill_coordinator().await;
    h.start_coordinator().await?;
    let (_, after) = h.api("GET", "/api/status", None).await?;
    assert_eq!(after["migration"], before["migration"]);
    assert_eq!(h.cutover_status("target").await?, "COMPLETED");
    let (_, subjects_after) = h.api("GET", "/subjects", None).await?;
    assert_eq!(subjects_after, subjects_before);
    let (_, config) = h.api("GET", &format!("/config/{subject}"), None).await?;
    assert_eq!(config["compatibilityLevel"], "FULL", "{config}");
    let (code, latest) = h
        .api("GET", &format!("/subjects/{subject}/versions/latest"), None)
        .await?;
    assert_eq!(code, 200, "{latest}");
    let id = latest["id"].as_i64().context("an id")?;
    let (code, schema) = h.api("GET", &format!("/schemas/ids/{id}"), None).await?;
    assert_eq!(code, 200, "{schema}");
    assert_eq!(schema["schema"], latest["schema"]);

    // And the migration goes on from there: the target is the primary now.
    assert_eq!(
        fingerprint(&h.source, "orders").await?,
        fingerprint(&h.target, "orders").await?
    );
    h.stop().await
}
