//! `MergedReader` against the stack's Apache Kafka, with records written here (not by an
//! exporter), so that the partitions can be as skewed as a test needs:
//!
//! - two partitions, one far behind the other in VSN: every event once, in VSN order,
//!   through the pauses of the partition that ran ahead; duplicates (an exporter
//!   restarted) skipped; the VSN of a record written before the VSN-first envelope
//!   read from its header;
//! - a partition whose last records are a transaction's marker ends by its position,
//!   while another topic's partition is still written to past its range;
//! - records deleted before they were read: an error that names the partition;
//! - a partition that gives nothing for longer than the reader's stuck check (10 s) is
//!   waited for, not taken for deleted, and its records are read once they come.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, Instant};

use ferry_shared::position::Vsn;
use ferry_shared::replay::{MergedReader, PartitionRange, ReadError, VSN_HEADER};
use ferry_testkit::kafka::{create_topic, delete_topic};
use ferry_testkit::{unique_name, Stack};
use rdkafka::admin::{AdminClient, AdminOptions};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

/// A value as exporters write it: Confluent framing (magic 0, schema id 1), then the
/// VSN as the first field (an Avro long), then a byte of the rest of the envelope.
fn value(vsn: u64) -> Vec<u8> {
    let mut v = vec![0u8, 0, 0, 0, 1];
    let mut z = (vsn as i64 as u64) << 1; // zigzag of a non-negative long
    loop {
        let byte = (z & 0x7f) as u8;
        z >>= 7;
        if z == 0 {
            v.push(byte);
            break;
        }
        v.push(byte | 0x80);
    }
    v.push(0);
    v
}

fn producer() -> BaseProducer {
    ClientConfig::new()
        .set("bootstrap.servers", &Stack::get().kafka_bootstrap)
        .set("linger.ms", "20")
        .set("queue.buffering.max.messages", "1000000")
        .create()
        .unwrap()
}

fn send(p: &BaseProducer, topic: &str, partition: i32, vsn: u64, header: Option<u64>) {
    let payload = match header {
        // Written before the VSN-first envelope: a value whose front is not the VSN
        // (here a wrong one), the VSN in the header.
        Some(_) => value(999_999_999),
        None => value(vsn),
    };
    let key = vsn.to_string();
    let mut record = BaseRecord::to(topic)
        .partition(partition)
        .key(&key)
        .payload(&payload);
    if let Some(v) = header {
        record = record.headers(OwnedHeaders::new().insert(Header {
            key: VSN_HEADER,
            value: Some(&v.to_be_bytes()),
        }));
    }
    let mut record = record;
    loop {
        match p.send(record) {
            Ok(()) => return,
            Err((_, back)) => {
                record = back;
                p.poll(Duration::from_millis(10));
            }
        }
    }
}

fn range(topic: &str, partition: i32, to: i64) -> PartitionRange {
    PartitionRange {
        topic: topic.to_owned(),
        partition,
        from: 0,
        to,
        min_vsn: Vsn(0),
        max_vsn: None,
        taken_through: Vsn(0),
    }
}

/// Every record the reader gives, until it ends or `within` passed (an error then).
async fn read_all_within(
    reader: &mut MergedReader,
    within: Duration,
) -> anyhow::Result<Vec<ferry_shared::replay::RetainedRecord>> {
    let mut all = Vec::new();
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, reader.next_batch()).await {
            Ok(Some(batch)) => all.extend(batch?),
            Ok(None) => return Ok(all),
            Err(_) => anyhow::bail!(
                "the reader did not end in {within:?} ({} records)",
                all.len()
            ),
        }
    }
}

/// Every record the reader gives, until it ends or 120 s passed.
async fn read_all(
    reader: &mut MergedReader,
) -> Result<Vec<ferry_shared::replay::RetainedRecord>, ReadError> {
    let mut all = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    while Instant::now() < deadline {
        match tokio::time::timeout(Duration::from_secs(30), reader.next_batch()).await {
            Ok(Some(batch)) => all.extend(batch?),
            Ok(None) => return Ok(all),
            Err(_) => panic!("no batch for 30 s after {} records", all.len()),
        }
    }
    panic!("the reader did not end in 120 s ({} records)", all.len());
}

#[tokio::test(flavor = "multi_thread")]
async fn skewed_partitions_come_once_in_vsn_order_through_pauses() -> anyhow::Result<()> {
    let bootstrap = &Stack::get().kafka_bootstrap;
    let topic = unique_name("merged_skew");
    create_topic(bootstrap, &topic, 2, false).await?;
    // Partition 1 holds VSNs 1..=120,000 (the first ten written before the VSN-first
    // envelope, and 49,990..=50,000 written twice, as by an exporter restarted from a
    // checkpoint); partition 0 holds 120,001..=180,000. The merge takes none of
    // partition 0 until partition 1 is done, so partition 0's queue fills (50,000 per
    // partition with two) and it is paused, then resumed.
    let p = producer();
    for vsn in 1..=120_000u64 {
        send(&p, &topic, 1, vsn, (vsn <= 10).then_some(vsn));
        if vsn == 50_000 {
            for again in 49_990..=50_000 {
                send(&p, &topic, 1, again, None);
            }
        }
    }
    for vsn in 120_001..=180_000u64 {
        send(&p, &topic, 0, vsn, None);
    }
    p.flush(Duration::from_secs(60))?;
    let ends = [
        watermarks_of(bootstrap, &topic, 0).await?,
        watermarks_of(bootstrap, &topic, 1).await?,
    ];
    assert_eq!(ends, [60_000, 120_011]);

    let kafka = broker_config(bootstrap);
    let mut reader = MergedReader::start(
        &kafka,
        vec![range(&topic, 0, ends[0]), range(&topic, 1, ends[1])],
    )?;
    let all = read_all(&mut reader).await?;
    let vsns: Vec<u64> = all.iter().map(|r| r.vsn.0).collect();
    assert_eq!(vsns.len(), 180_000);
    assert!(
        vsns.iter().copied().eq(1..=180_000u64),
        "not every VSN once in order; first out of place at {:?}",
        vsns.iter()
            .zip(1u64..)
            .find(|(v, want)| **v != *want)
            .map(|(v, want)| (want, *v))
    );
    for r in &all {
        let want = if r.vsn.0 > 120_000 { 0 } else { 1 };
        assert_eq!(r.partition, want, "VSN {}", r.vsn);
        assert_eq!(r.key.as_deref(), Some(r.vsn.0.to_string().as_bytes()));
        assert!(r.timestamp_ms.is_some_and(|t| t > 0), "VSN {}", r.vsn);
    }
    // Every offset was read (the duplicates skipped), and partition 0 paused.
    assert_eq!(reader.progress(), (180_011, 180_011));
    assert!(reader.pauses() >= 1, "partition 0 was never paused");
    reader.close().await;
    delete_topic(bootstrap, &topic).await
}

#[tokio::test(flavor = "multi_thread")]
async fn records_deleted_before_they_were_read_are_an_error_naming_the_partition(
) -> anyhow::Result<()> {
    let bootstrap = &Stack::get().kafka_bootstrap;
    let topic = unique_name("merged_deleted");
    create_topic(bootstrap, &topic, 1, false).await?;
    let p = producer();
    for vsn in 1..=100u64 {
        send(&p, &topic, 0, vsn, None);
    }
    p.flush(Duration::from_secs(60))?;
    // As retention or `ferry archive changes` would: the first 50 are gone.
    delete_before(bootstrap, &topic, 50).await?;

    let kafka = broker_config(bootstrap);
    let mut reader = MergedReader::start(&kafka, vec![range(&topic, 0, 100)])?;
    let err = read_all(&mut reader)
        .await
        .expect_err("read records that were deleted");
    let text = err.to_string();
    assert!(
        matches!(err, ReadError::Stream(_))
            && text.contains(&format!("deleted from {topic}[0]"))
            && text.contains("replay from a later start"),
        "{text}"
    );
    reader.close().await;
    delete_topic(bootstrap, &topic).await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_partition_ending_in_a_transaction_marker_ends_while_another_is_still_written(
) -> anyhow::Result<()> {
    let bootstrap = Stack::get().kafka_bootstrap.clone();
    let (marked, busy) = (unique_name("merged_marker"), unique_name("merged_busy"));
    create_topic(&bootstrap, &marked, 1, false).await?;
    create_topic(&bootstrap, &busy, 1, false).await?;
    // VSNs 1..=10 in one committed transaction: offsets 0..=9, the marker at 10.
    let tx: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .set("transactional.id", unique_name("merged_tx"))
        .create()?;
    tx.init_transactions(Duration::from_secs(30))?;
    tx.begin_transaction()?;
    for vsn in 1..=10u64 {
        send(&tx, &marked, 0, vsn, None);
    }
    tx.commit_transaction(Duration::from_secs(30))?;
    // VSNs 11..=20 in the other topic, which goes on being written to (past the
    // replay's range) every few milliseconds while it is read.
    let p = producer();
    for vsn in 11..=20u64 {
        send(&p, &busy, 0, vsn, None);
    }
    p.flush(Duration::from_secs(30))?;
    // The commit returns before the broker has written the marker: its end is 11 once
    // it has.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut marked_end = watermarks_of(&bootstrap, &marked, 0).await?;
    while marked_end < 11 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
        marked_end = watermarks_of(&bootstrap, &marked, 0).await?;
    }
    let ends = [marked_end, watermarks_of(&bootstrap, &busy, 0).await?];
    assert_eq!(ends, [11, 10]);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (stop, busy) = (stop.clone(), busy.clone());
        std::thread::spawn(move || {
            let mut vsn = 1_000u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                send(&p, &busy, 0, vsn, None);
                p.poll(Duration::from_millis(2));
                vsn += 1;
            }
            p.flush(Duration::from_secs(30))
        })
    };

    let kafka = broker_config(&bootstrap);
    let mut reader = MergedReader::start(
        &kafka,
        vec![range(&marked, 0, ends[0]), range(&busy, 0, ends[1])],
    )?;
    let read = read_all(&mut reader).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    writer.join().expect("the writer thread")?;
    let vsns: Vec<u64> = read?.iter().map(|r| r.vsn.0).collect();
    assert_eq!(vsns, (1..=20).collect::<Vec<u64>>());
    reader.close().await;
    delete_topic(&bootstrap, &marked).await?;
    delete_topic(&bootstrap, &busy).await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_partition_silent_past_the_stuck_check_is_waited_for_and_read() -> anyhow::Result<()> {
    let bootstrap = Stack::get().kafka_bootstrap.clone();
    let topic = unique_name("merged_silent");
    create_topic(&bootstrap, &topic, 1, false).await?;
    let p = producer();
    for vsn in 1..=5u64 {
        send(&p, &topic, 0, vsn, None);
    }
    p.flush(Duration::from_secs(30))?;
    // The range reads to offset 10, five records past what the partition holds; the
    // rest comes after the reader has waited past its stuck check (10 s), with the
    // five before them deleted meanwhile (the reader has them: not an error).
    let kafka = broker_config(&bootstrap);
    let mut reader = MergedReader::start(&kafka, vec![range(&topic, 0, 10)])?;
    let reading = tokio::spawn(async move {
        let read = read_all_within(&mut reader, Duration::from_secs(60)).await;
        reader.close().await;
        read
    });
    tokio::time::sleep(Duration::from_secs(3)).await;
    delete_before(&bootstrap, &topic, 5).await?;
    tokio::time::sleep(Duration::from_secs(11)).await;
    for vsn in 6..=10u64 {
        send(&p, &topic, 0, vsn, None);
    }
    p.flush(Duration::from_secs(30))?;
    let vsns: Vec<u64> = reading.await??.iter().map(|r| r.vsn.0).collect();
    assert_eq!(vsns, (1..=10).collect::<Vec<u64>>());
    delete_topic(&bootstrap, &topic).await
}

/// Deletes partition 0's records before `offset`, as retention or `ferry archive
/// changes` would.
async fn delete_before(bootstrap: &str, topic: &str, offset: i64) -> anyhow::Result<()> {
    let admin: AdminClient<_> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()?;
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, 0, Offset::Offset(offset))?;
    admin
        .delete_records(
            &tpl,
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(30))),
        )
        .await?;
    Ok(())
}

/// A client configuration that reaches the stack's broker.
fn broker_config(bootstrap: &str) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", bootstrap);
    c
}

async fn watermarks_of(bootstrap: &str, topic: &str, partition: i32) -> anyhow::Result<i64> {
    let consumer: rdkafka::consumer::BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()?;
    let topic = topic.to_owned();
    let (_, high) = tokio::task::spawn_blocking(move || {
        rdkafka::consumer::Consumer::fetch_watermarks(
            &consumer,
            &topic,
            partition,
            Duration::from_secs(30),
        )
    })
    .await??;
    Ok(high)
}
