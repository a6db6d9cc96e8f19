//! `state::tail_compacted` against the broker: the first view waits for what the topic
//! held, later records arrive while the tail sits paused at the end of the topic, and
//! a topic created after the tail started is read from its first record.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test helpers

use std::collections::HashMap;
use std::time::Duration;

use anyhow::Result;
use ferry_shared::shutdown;
use ferry_shared::state::tail_compacted;
use ferry_testkit::{kafka, unique_name, wait_until, Stack};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;
use tokio::sync::watch;

type View = HashMap<String, String>;

fn view(records: &HashMap<Vec<u8>, Vec<u8>>) -> View {
    records
        .iter()
        .map(|(k, v)| {
            (
                String::from_utf8_lossy(k).into_owned(),
                String::from_utf8_lossy(v).into_owned(),
            )
        })
        .collect()
}

fn client(bootstrap: &str) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", bootstrap);
    c
}

async fn put(producer: &FutureProducer, topic: &str, key: &str, value: &str) -> Result<()> {
    producer
        .send(
            FutureRecord::to(topic).key(key).payload(value),
            Duration::from_secs(30),
        )
        .await
        .map_err(|(e, _)| anyhow::anyhow!("producing to {topic}: {e}"))?;
    Ok(())
}

async fn wait_for(rx: &mut watch::Receiver<Option<View>>, key: &str, value: &str) -> Result<()> {
    let what = format!("the tail to show {key}={value}");
    wait_until(&what, Duration::from_secs(20), || {
        let got = rx
            .borrow()
            .as_ref()
            .and_then(|v| v.get(key).cloned())
            .unwrap_or_default();
        async move { Ok((got == value).then_some(())) }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tail_reads_existing_and_later_records() -> Result<()> {
    let stack = Stack::get();
    let topic = unique_name("tail");
    kafka::create_topic(&stack.kafka_bootstrap, &topic, 1, true).await?;
    // Idempotent, as every writer of `_state` is.
    let producer: FutureProducer =
        ferry_shared::kafka::idempotent_producer_config(&client(&stack.kafka_bootstrap))
            .set("linger.ms", "0")
            .create()?;
    for i in 0..50 {
        put(&producer, &topic, &format!("k{}", i % 5), &format!("v{i}")).await?;
    }
    let (trigger, stop) = shutdown::channel();
    let mut rx = tail_compacted(&client(&stack.kafka_bootstrap), &topic, stop, view);
    // The first view holds everything written before the call.
    let first = wait_until("the first view", Duration::from_secs(20), || {
        let v = rx.borrow().clone();
        async move { Ok(v) }
    })
    .await?;
    for k in 0..5 {
        assert_eq!(first[&format!("k{k}")], format!("v{}", 45 + k));
    }
    // Later records, one at a time, each seen while the tail is otherwise idle; from
    // two producers, as `_state` has (the coordinator and an exporter).
    let second: FutureProducer =
        ferry_shared::kafka::idempotent_producer_config(&client(&stack.kafka_bootstrap))
            .set("linger.ms", "0")
            .create()?;
    for i in 0..6 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let p = if i % 2 == 0 { &producer } else { &second };
        put(p, &topic, "later", &format!("l{i}")).await?;
        wait_for(&mut rx, "later", &format!("l{i}")).await?;
    }
    // A burst.
    for i in 0..500 {
        put(&producer, &topic, &format!("b{}", i % 7), &format!("{i}")).await?;
    }
    wait_for(&mut rx, "b6", "496").await?;
    trigger.trigger();
    kafka::delete_topic(&stack.kafka_bootstrap, &topic).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tail_of_an_empty_then_a_missing_topic_sees_the_first_record() -> Result<()> {
    let stack = Stack::get();
    let producer: FutureProducer = client(&stack.kafka_bootstrap).create()?;
    // Empty at the start.
    let empty = unique_name("tail_empty");
    kafka::create_topic(&stack.kafka_bootstrap, &empty, 1, true).await?;
    let (trigger, stop) = shutdown::channel();
    let mut rx = tail_compacted(&client(&stack.kafka_bootstrap), &empty, stop.clone(), view);
    let first = wait_until("the first view", Duration::from_secs(20), || {
        let v = rx.borrow().clone();
        async move { Ok(v) }
    })
    .await?;
    assert!(first.is_empty(), "{first:?}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    put(&producer, &empty, "a", "1").await?;
    wait_for(&mut rx, "a", "1").await?;
    // Missing at the start, created later.
    let missing = unique_name("tail_missing");
    let mut rx2 = tail_compacted(&client(&stack.kafka_bootstrap), &missing, stop, view);
    wait_until(
        "the first view of a missing topic",
        Duration::from_secs(20),
        || {
            let v = rx2.borrow().clone();
            async move { Ok(v) }
        },
    )
    .await?;
    kafka::create_topic(&stack.kafka_bootstrap, &missing, 1, true).await?;
    put(&producer, &missing, "b", "2").await?;
    wait_for(&mut rx2, "b", "2").await?;
    trigger.trigger();
    kafka::delete_topic(&stack.kafka_bootstrap, &empty).await?;
    kafka::delete_topic(&stack.kafka_bootstrap, &missing).await?;
    Ok(())
}
