//! The broker does what Ferry needs from Kafka, checked with rdkafka (bundled
//! librdkafka) against the real local broker: produce/consume, consumer groups that
//! share partitions, idempotent and transactional producers with read_committed,
//! watermarks, offsets_for_times, compacted topics.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test helpers

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ferry_testkit::{kafka, unique_name, wait_until, Stack};
use rdkafka::admin::{AdminClient, AdminOptions, ResourceSpecifier};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::{Message, Offset, TopicPartitionList};

const T: Duration = Duration::from_secs(10);

fn bootstrap() -> &'static str {
    &Stack::get().kafka_bootstrap
}

fn producer(extra: &[(&str, &str)]) -> FutureProducer {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", bootstrap())
        .set("linger.ms", "5");
    for (k, v) in extra {
        c.set(*k, *v);
    }
    c.create().unwrap()
}

fn consumer(group: &str, extra: &[(&str, &str)]) -> BaseConsumer {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", bootstrap())
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("session.timeout.ms", "6000")
        .set("heartbeat.interval.ms", "500");
    for (k, v) in extra {
        c.set(*k, *v);
    }
    c.create().unwrap()
}

async fn send(
    p: &FutureProducer,
    topic: &str,
    partition: Option<i32>,
    key: &str,
    value: &str,
) -> (i32, i64) {
    let mut rec = FutureRecord::to(topic).key(key).payload(value);
    if let Some(p) = partition {
        rec = rec.partition(p);
    }
    let d = p.send(rec, T).await.map_err(|(e, _)| e).unwrap();
    (d.partition, d.offset)
}

fn values(records: &[kafka::Record]) -> Vec<String> {
    records
        .iter()
        .map(|r| String::from_utf8(r.3.clone().unwrap_or_default()).unwrap())
        .collect()
}

#[tokio::test]
async fn produce_then_consume_all() {
    let topic = unique_name("tk_basic");
    kafka::create_topic(bootstrap(), &topic, 3, false)
        .await
        .unwrap();
    let p = producer(&[]);
    let mut sent = BTreeMap::new();
    for i in 0..30 {
        let (part, off) = send(&p, &topic, None, &format!("k{i}"), &format!("v{i}")).await;
        sent.insert((part, off), i);
    }
    let got = kafka::consume_all(bootstrap(), &topic).await.unwrap();
    assert_eq!(got.len(), 30);
    for (part, off, key, value) in &got {
        let i = sent[&(*part, *off)];
        assert_eq!(key.as_deref(), Some(format!("k{i}").as_bytes()));
        assert_eq!(value.as_deref(), Some(format!("v{i}").as_bytes()));
    }
    // Same key, same partition: per-key order is kept.
    let parts: BTreeSet<i32> = got.iter().map(|r| r.0).collect();
    assert!(parts.len() > 1, "30 keys spread over partitions: {parts:?}");
    kafka::delete_topic(bootstrap(), &topic).await.unwrap();
}

#[tokio::test]
async fn consumer_group_members_share_partitions_and_commit() {
    let topic = unique_name("tk_group");
    let group = unique_name("tk_group");
    kafka::create_topic(bootstrap(), &topic, 4, false)
        .await
        .unwrap();
    let p = producer(&[]);
    for i in 0..40 {
        send(&p, &topic, Some(i % 4), &format!("k{i}"), &format!("v{i}")).await;
    }
    let (topic2, group2) = (topic.clone(), group.clone());
    let (assigned, seen) = tokio::task::spawn_blocking(move || {
        let a = consumer(&group2, &[]);
        let b = consumer(&group2, &[]);
        a.subscribe(&[&topic2]).unwrap();
        b.subscribe(&[&topic2]).unwrap();
        let mut seen = BTreeSet::new();
        let deadline = std::time::Instant::now() + Duration::from_secs(40);
        loop {
            for c in [&a, &b] {
                if let Some(m) = c.poll(Duration::from_millis(50)) {
                    let m = m.unwrap();
                    seen.insert((m.partition(), m.offset()));
                    c.commit_message(&m, rdkafka::consumer::CommitMode::Sync)
                        .unwrap();
                }
            }
            let (pa, pb) = (a.assignment().unwrap(), b.assignment().unwrap());
            let sets: Vec<BTreeSet<i32>> = [pa, pb]
                .iter()
                .map(|l| l.elements().iter().map(|e| e.partition()).collect())
                .collect();
            let shared =
                !sets[0].is_empty() && !sets[1].is_empty() && sets[0].is_disjoint(&sets[1]);
            if shared && sets[0].len() + sets[1].len() == 4 && seen.len() == 40 {
                return (sets, seen);
            }
            assert!(
                std::time::Instant::now() < deadline,
                "group did not settle: {sets:?}, {} seen",
                seen.len()
            );
        }
    })
    .await
    .unwrap();
    assert_eq!(assigned[0].len() + assigned[1].len(), 4, "{assigned:?}");
    assert_eq!(seen.len(), 40);

    // Committed offsets are visible to a new member of the group.
    let (topic3, group3) = (topic.clone(), group.clone());
    let committed = tokio::task::spawn_blocking(move || {
        let c = consumer(&group3, &[]);
        let mut tpl = TopicPartitionList::new();
        for part in 0..4 {
            tpl.add_partition(&topic3, part);
        }
        c.committed_offsets(tpl, T).unwrap()
    })
    .await
    .unwrap();
    for e in committed.elements() {
        assert_eq!(
            e.offset(),
            Offset::Offset(10),
            "partition {}",
            e.partition()
        );
    }
}

#[tokio::test]
async fn idempotent_producer_writes_each_record_once() {
    let topic = unique_name("tk_idem");
    kafka::create_topic(bootstrap(), &topic, 2, false)
        .await
        .unwrap();
    let p = producer(&[("enable.idempotence", "true"), ("acks", "all")]);
    let mut futures = Vec::new();
    for i in 0..200 {
        let (t, k, v) = (topic.clone(), format!("k{i}"), format!("v{i}"));
        let p = p.clone();
        futures.push(tokio::spawn(async move {
            p.send(FutureRecord::to(&t).key(&k).payload(&v), T)
                .await
                .map_err(|(e, _)| e)
                .unwrap()
        }));
    }
    for f in futures {
        f.await.unwrap();
    }
    let got = kafka::consume_all(bootstrap(), &topic).await.unwrap();
    assert_eq!(got.len(), 200);
    let distinct: BTreeSet<Vec<u8>> = got.iter().filter_map(|r| r.3.clone()).collect();
    assert_eq!(distinct.len(), 200, "no duplicates");
}

#[tokio::test]
async fn transactions_hide_aborted_records_from_read_committed() {
    let topic = unique_name("tk_txn");
    kafka::create_topic(bootstrap(), &topic, 2, false)
        .await
        .unwrap();
    let txn_id = unique_name("tk_txn");
    let p = producer(&[
        ("transactional.id", &txn_id),
        ("transaction.timeout.ms", "10000"),
    ]);
    let p2 = p.clone();
    tokio::task::spawn_blocking(move || p2.init_transactions(T))
        .await
        .unwrap()
        .unwrap();

    for (round, commit) in [(0, true), (1, false), (2, true)] {
        let p2 = p.clone();
        tokio::task::spawn_blocking(move || p2.begin_transaction())
            .await
            .unwrap()
            .unwrap();
        for i in 0..5 {
            send(
                &p,
                &topic,
                Some(i % 2),
                &format!("k{i}"),
                &format!("r{round}-{i}"),
            )
            .await;
        }
        let p2 = p.clone();
        tokio::task::spawn_blocking(move || {
            if commit {
                p2.commit_transaction(T)
            } else {
                p2.abort_transaction(T)
            }
        })
        .await
        .unwrap()
        .unwrap();
    }

    // read_committed (consume_all): committed rounds only.
    let got = kafka::consume_all(bootstrap(), &topic).await.unwrap();
    let mut vals = values(&got);
    vals.sort();
    let mut want: Vec<String> = (0..5)
        .flat_map(|i| [format!("r0-{i}"), format!("r2-{i}")])
        .collect();
    want.sort();
    assert_eq!(vals, want);

    // read_uncommitted sees the aborted round too: the records exist, the isolation
    // level hides them.
    let topic2 = topic.clone();
    let uncommitted = tokio::task::spawn_blocking(move || {
        let c = consumer(
            &unique_name("tk_txn_ru"),
            &[("isolation.level", "read_uncommitted")],
        );
        c.subscribe(&[&topic2]).unwrap();
        let mut n = 0;
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while n < 15 && std::time::Instant::now() < deadline {
            if let Some(m) = c.poll(Duration::from_millis(100)) {
                m.unwrap();
                n += 1;
            }
        }
        n
    })
    .await
    .unwrap();
    assert_eq!(uncommitted, 15);
}

#[tokio::test]
async fn watermarks_and_offsets_for_times() {
    let topic = unique_name("tk_time");
    kafka::create_topic(bootstrap(), &topic, 1, false)
        .await
        .unwrap();
    let p = producer(&[]);
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    for (i, ts) in [now_ms - 30_000, now_ms - 20_000, now_ms - 10_000]
        .iter()
        .enumerate()
    {
        let rec = FutureRecord::to(&topic)
            .key("k")
            .payload("v")
            .partition(0)
            .timestamp(*ts);
        let d = p.send(rec, T).await.map_err(|(e, _)| e).unwrap();
        assert_eq!(d.offset, i as i64);
    }
    let topic2 = topic.clone();
    let (marks, found, future) = tokio::task::spawn_blocking(move || {
        let c = consumer(&unique_name("tk_time"), &[]);
        let marks = c.fetch_watermarks(&topic2, 0, T).unwrap();
        let mut q = TopicPartitionList::new();
        q.add_partition_offset(&topic2, 0, Offset::Offset(now_ms - 15_000))
            .unwrap();
        let found = c.offsets_for_times(q, T).unwrap();
        let mut q = TopicPartitionList::new();
        q.add_partition_offset(&topic2, 0, Offset::Offset(now_ms + 60_000))
            .unwrap();
        let future = c.offsets_for_times(q, T).unwrap();
        (marks, found, future)
    })
    .await
    .unwrap();
    assert_eq!(marks, (0, 3));
    // The first record at or after the time is the third one.
    assert_eq!(
        found.find_partition(&topic, 0).unwrap().offset(),
        Offset::Offset(2)
    );
    // After the last record: the end (-1 / End).
    let after = future.find_partition(&topic, 0).unwrap().offset();
    assert!(
        matches!(after, Offset::End | Offset::Offset(-1) | Offset::Offset(3)),
        "{after:?}"
    );
}

#[tokio::test]
async fn compacted_topic_is_created_and_keeps_tombstones() {
    let topic = unique_name("tk_compact");
    kafka::create_topic(bootstrap(), &topic, 1, true)
        .await
        .unwrap();
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap())
        .create()
        .unwrap();
    let policy = wait_until("cleanup.policy of the compacted topic", T, || {
        let admin = &admin;
        let topic = topic.clone();
        async move {
            let res = admin
                .describe_configs([&ResourceSpecifier::Topic(&topic)], &AdminOptions::new())
                .await?;
            let Some(Ok(r)) = res.into_iter().next() else {
                return Ok(None);
            };
            Ok(r.get("cleanup.policy").and_then(|e| e.value.clone()))
        }
    })
    .await
    .unwrap();
    assert_eq!(policy, "compact");

    let p = producer(&[]);
    send(&p, &topic, Some(0), "a", "1").await;
    p.send(
        FutureRecord::<str, str>::to(&topic).key("a").partition(0),
        T,
    )
    .await
    .map_err(|(e, _)| e)
    .unwrap();
    let got = kafka::consume_all(bootstrap(), &topic).await.unwrap();
    assert_eq!(got.len(), 2);
    assert_eq!(got[1].2.as_deref(), Some(&b"a"[..]));
    assert_eq!(got[1].3, None, "tombstone value is null");
}
