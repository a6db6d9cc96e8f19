//! Small topic helpers for tests: create, delete, read everything.
//!
//! Each call makes its own short-lived client. Blocking librdkafka calls run in
//! `spawn_blocking`.

use std::time::{Duration, Instant};

use anyhow::Context;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};

const TIMEOUT: Duration = Duration::from_secs(10);
const CONSUME_DEADLINE: Duration = Duration::from_secs(30);

/// One record read back: `(partition, offset, key, value)`; `None` is a null key or
/// value (a tombstone has a `None` value).
pub type Record = (i32, i64, Option<Vec<u8>>, Option<Vec<u8>>);

fn admin(bootstrap: &str) -> anyhow::Result<AdminClient<DefaultClientContext>> {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .context("creating a kafka admin client")
}

fn opts() -> AdminOptions {
    AdminOptions::new()
        .operation_timeout(Some(TIMEOUT))
        .request_timeout(Some(TIMEOUT))
}

/// Creates topic `name` with `partitions` partitions (replication factor 1);
/// `compacted` sets `cleanup.policy=compact`. Returns once the broker's metadata shows
/// every partition.
pub async fn create_topic(
    bootstrap: &str,
    name: &str,
    partitions: i32,
    compacted: bool,
) -> anyhow::Result<()> {
    let admin = admin(bootstrap)?;
    let mut topic = NewTopic::new(name, partitions, TopicReplication::Fixed(1));
    if compacted {
        topic = topic.set("cleanup.policy", "compact");
    }
    let results = admin
        .create_topics([&topic], &opts())
        .await
        .context("create_topics")?;
    for r in results {
        if let Err((t, code)) = r {
            anyhow::bail!("creating topic {t}: {code}");
        }
    }
    let (bootstrap, name) = (bootstrap.to_owned(), name.to_owned());
    tokio::task::spawn_blocking(move || wait_for_partitions(&bootstrap, &name, partitions)).await?
}

fn wait_for_partitions(bootstrap: &str, name: &str, partitions: i32) -> anyhow::Result<()> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .context("creating a kafka metadata client")?;
    let start = Instant::now();
    loop {
        let md = consumer.fetch_metadata(Some(name), TIMEOUT)?;
        let ready = md.topics().iter().any(|t| {
            t.name() == name
                && t.error().is_none()
                && i32::try_from(t.partitions().len()).ok() == Some(partitions)
        });
        if ready {
            return Ok(());
        }
        if start.elapsed() > TIMEOUT {
            anyhow::bail!(
                "topic {name} has no metadata for {partitions} partitions after {TIMEOUT:?}"
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Deletes topic `name`.
pub async fn delete_topic(bootstrap: &str, name: &str) -> anyhow::Result<()> {
    let admin = admin(bootstrap)?;
    let results = admin
        .delete_topics(&[name], &opts())
        .await
        .context("delete_topics")?;
    for r in results {
        if let Err((t, code)) = r {
            anyhow::bail!("deleting topic {t}: {code}");
        }
    }
    Ok(())
}

/// Reads every partition of `topic` from the beginning up to the high watermarks
/// taken at the start, with a fresh consumer group and `read_committed` isolation
/// (records of aborted transactions are not returned). Sorted by partition, then
/// offset. Fails after 30 s if the end is not reached (e.g. a transaction is open).
pub async fn consume_all(bootstrap: &str, topic: &str) -> anyhow::Result<Vec<Record>> {
    let (bootstrap, topic) = (bootstrap.to_owned(), topic.to_owned());
    tokio::task::spawn_blocking(move || consume_all_blocking(&bootstrap, &topic)).await?
}

fn consume_all_blocking(bootstrap: &str, topic: &str) -> anyhow::Result<Vec<Record>> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", crate::unique_name("testkit_consume_all"))
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .create()
        .context("creating a kafka consumer")?;
    let md = consumer.fetch_metadata(Some(topic), TIMEOUT)?;
    let parts: Vec<i32> = md
        .topics()
        .iter()
        .filter(|t| t.name() == topic)
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect();
    anyhow::ensure!(!parts.is_empty(), "topic {topic} has no partitions");

    // (partition, high watermark) for the partitions that hold anything.
    let mut ends = Vec::new();
    let mut tpl = TopicPartitionList::new();
    for &p in &parts {
        let (low, high) = consumer.fetch_watermarks(topic, p, TIMEOUT)?;
        if high > low {
            ends.push((p, high));
            tpl.add_partition_offset(topic, p, Offset::Beginning)?;
        }
    }
    let mut out = Vec::new();
    if ends.is_empty() {
        return Ok(out);
    }
    consumer.assign(&tpl)?;
    let start = Instant::now();
    loop {
        if let Some(msg) = consumer.poll(Duration::from_millis(100)) {
            let msg = msg.context("consuming")?;
            out.push((
                msg.partition(),
                msg.offset(),
                msg.key().map(<[u8]>::to_vec),
                msg.payload().map(<[u8]>::to_vec),
            ));
        }
        let pos = consumer.position()?;
        let done = ends.iter().all(|&(p, high)| {
            matches!(pos.find_partition(topic, p).map(|e| e.offset()), Some(Offset::Offset(o)) if o >= high)
                || out.iter().any(|r| r.0 == p && r.1 + 1 >= high)
        });
        if done {
            break;
        }
        if start.elapsed() > CONSUME_DEADLINE {
            anyhow::bail!(
                "reading topic {topic} to its end ({ends:?}) took over {CONSUME_DEADLINE:?}; positions {pos:?}"
            );
        }
    }
    out.sort_by_key(|r| (r.0, r.1));
    Ok(out)
}

/// Sets topic `name`'s configuration to exactly `entries` (Kafka's AlterConfigs
/// replaces the topic's whole configuration: include `cleanup.policy` and every other
/// setting to keep). The change is visible to the broker's log manager at once.
pub async fn set_topic_config(
    bootstrap: &str,
    name: &str,
    entries: &[(&str, &str)],
) -> anyhow::Result<()> {
    use rdkafka::admin::{AlterConfig, ResourceSpecifier};
    let admin = admin(bootstrap)?;
    let mut change = AlterConfig::new(ResourceSpecifier::Topic(name));
    for (key, value) in entries {
        change = change.set(key, value);
    }
    let results = admin
        .alter_configs([&change], &opts())
        .await
        .context("alter_configs")?;
    for r in results {
        if let Err((resource, code)) = r {
            anyhow::bail!("setting the configuration of {resource:?}: {code}");
        }
    }
    Ok(())
}

/// `(low, high)` watermarks of partition 0 of `topic`.
pub async fn watermarks(bootstrap: &str, topic: &str) -> anyhow::Result<(i64, i64)> {
    let (bootstrap, topic) = (bootstrap.to_owned(), topic.to_owned());
    tokio::task::spawn_blocking(move || -> anyhow::Result<(i64, i64)> {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &bootstrap)
            .create()
            .context("creating a kafka client")?;
        Ok(consumer.fetch_watermarks(&topic, 0, TIMEOUT)?)
    })
    .await?
}
