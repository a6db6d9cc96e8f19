//! What the exporter refuses to paper over: TRUNCATE, DDL, a dropped slot, a dropped
//! publication. Each stops the stream with an error naming the table or object and
//! what to do.

mod common;

use std::time::Duration;

use anyhow::Result;
use common::*;
use ferry_shared::shutdown;
use ferry_shared::topics::Stream;

async fn start(
    m: &Migration,
) -> Result<(
    shutdown::ShutdownTrigger,
    tokio::task::JoinHandle<Result<(), ferry_exporter::Error>>,
)> {
    let c = m.source().await?;
    c.batch_execute(
        "CREATE TABLE t (id int PRIMARY KEY, v text);
         ALTER TABLE t REPLICA IDENTITY FULL;
         INSERT INTO t VALUES (1, 'a');",
    )
    .await?;
    let (trigger, shutdown) = shutdown::channel();
    let exporter = tokio::spawn(ferry_exporter::run(m.config.clone(), shutdown));
    m.sync(&c, "INSERT INTO t VALUES (2, 'b')", Duration::from_secs(60))
        .await?;
    Ok((trigger, exporter))
}

async fn stopped_with(
    exporter: tokio::task::JoinHandle<Result<(), ferry_exporter::Error>>,
) -> Result<String> {
    let result = tokio::time::timeout(Duration::from_secs(60), exporter).await??;
    match result {
        Ok(()) => anyhow::bail!("the exporter stopped without an error"),
        Err(e) => Ok(e.to_string()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncate_stops_the_stream_naming_the_table() -> Result<()> {
    let m = Migration::new("trunc", 1, "").await?;
    let (_trigger, exporter) = start(&m).await?;
    m.source().await?.batch_execute("TRUNCATE t").await?;
    let message = stopped_with(exporter).await?;
    assert!(
        message.starts_with(
            "table public.t was truncated on the source; Ferry does not replicate TRUNCATE"
        ),
        "{message}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ddl_stops_the_stream_naming_the_table() -> Result<()> {
    let m = Migration::new("ddl", 1, "").await?;
    let (_trigger, exporter) = start(&m).await?;
    m.source()
        .await?
        .batch_execute("ALTER TABLE t ADD COLUMN extra int; INSERT INTO t VALUES (3, 'c', 7);")
        .await?;
    let message = stopped_with(exporter).await?;
    assert!(
        message.starts_with("table public.t changed on the source (DDL)"),
        "{message}"
    );
    assert!(message.contains("extra"), "{message}");
    // Nothing after the change was produced.
    let events = read_topic(&m, &m.topics().table(Stream::Source, "public", "t")).await?;
    assert_eq!(events.len(), 2);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_slot_is_not_silently_recreated() -> Result<()> {
    let m = Migration::new("slot", 1, "").await?;
    let (trigger, exporter) = start(&m).await?;
    trigger.trigger();
    exporter.await??;
    let slot = ferry_exporter::slot_name(&m.config.migration.id, Stream::Source);
    let c = m.source().await?;
    ferry_testkit::wait_until(
        "the slot to be dropped",
        Duration::from_secs(30),
        || async {
            c.execute("SELECT pg_drop_replication_slot($1)", &[&slot])
                .await?;
            Ok(Some(()))
        },
    )
    .await?;
    let (_trigger, shutdown) = shutdown::channel();
    let message = stopped_with(tokio::spawn(ferry_exporter::run(
        m.config.clone(),
        shutdown,
    )))
    .await?;
    assert!(
        message.starts_with(&format!(
            "replication slot \"{slot}\" does not exist (was it dropped?)"
        )),
        "{message}"
    );
    assert!(message.contains("ferry end migration"), "{message}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_publication_stops_the_stream() -> Result<()> {
    let m = Migration::new("pub", 1, "").await?;
    let (_trigger, exporter) = start(&m).await?;
    let publication = ferry_exporter::slot_name(&m.config.migration.id, Stream::Source);
    m.source()
        .await?
        .batch_execute(&format!(
            "DROP PUBLICATION \"{publication}\"; INSERT INTO t VALUES (9, 'z');"
        ))
        .await?;
    let message = stopped_with(exporter).await?;
    assert!(
        message.starts_with(&format!(
            "publication \"{publication}\" does not exist (was it dropped?)"
        )),
        "{message}"
    );
    // And again at start.
    let (_trigger, shutdown) = shutdown::channel();
    let message = stopped_with(tokio::spawn(ferry_exporter::run(
        m.config.clone(),
        shutdown,
    )))
    .await?;
    assert!(
        message.starts_with(&format!("publication \"{publication}\" does not exist")),
        "{message}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_selected_after_the_start_is_refused() -> Result<()> {
    let m = Migration::new("added", 1, "").await?;
    let (trigger, exporter) = start(&m).await?;
    trigger.trigger();
    exporter.await??;
    m.source()
        .await?
        .batch_execute(
            "CREATE TABLE t2 (id int PRIMARY KEY); ALTER TABLE t2 REPLICA IDENTITY FULL;",
        )
        .await?;
    let (_trigger, shutdown) = shutdown::channel();
    let message = stopped_with(tokio::spawn(ferry_exporter::run(
        m.config.clone(),
        shutdown,
    )))
    .await?;
    assert!(
        message.contains("does not include table public.t2: the table selection changed"),
        "{message}"
    );
    Ok(())
}
