//! `BatchProducer` against the stack's Apache Kafka: order per partition, delivery
//! reports, a full local queue, records over `message.max.bytes`, unknown partitions.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ferry_produce_batch::{BatchProducer, Record};
use ferry_testkit::kafka::{consume_all, create_topic, delete_topic};
use ferry_testkit::{unique_name, Stack};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::{ClientConfig, ClientContext, Message};

/// Every delivery report: `(opaque, Ok(partition, offset) or the error)`.
type Reports = Arc<Mutex<Vec<(usize, Result<(i32, i64), String>)>>>;

struct Reported(Reports);

impl ClientContext for Reported {}

impl ProducerContext for Reported {
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, opaque: usize) {
        let outcome = match result {
            Ok(m) => Ok((m.partition(), m.offset())),
            Err((e, _)) => Err(e.to_string()),
        };
        if let Ok(mut r) = self.0.lock() {
            r.push((opaque, outcome));
        }
    }
}

fn producer(
    topic: &str,
    settings: &[(&str, &str)],
) -> anyhow::Result<(BatchProducer<Reported>, Reports)> {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", &Stack::get().kafka_bootstrap)
        .set("enable.idempotence", "true")
        .set("acks", "all");
    for (k, v) in settings {
        config.set(*k, *v);
    }
    let reports = Reports::default();
    let producer: ThreadedProducer<Reported> =
        config.create_with_context(Reported(reports.clone()))?;
    // The topic's metadata first, so that a partition's existence is known when the
    // batch is sent (as for the exporter, which reads it before producing).
    producer
        .client()
        .fetch_metadata(Some(topic), Duration::from_secs(10))?;
    let batch = BatchProducer::new(producer, &config, &[topic.to_owned()])?;
    Ok((batch, reports))
}

/// Sends every record, waiting while the local queue is full; returns how many calls
/// enqueued fewer than they were given.
fn send_all(
    p: &mut BatchProducer<Reported>,
    records: &[Record<'_>],
) -> Result<usize, (usize, KafkaError)> {
    let mut done = 0;
    let mut short = 0;
    let deadline = Instant::now() + Duration::from_secs(60);
    while done < records.len() {
        let n = p
            .send_batch(0, &records[done..])
            .map_err(|(i, e)| (done + i, e))?;
        done += n;
        if done < records.len() {
            short += 1;
            assert!(Instant::now() < deadline, "the queue never drained");
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    Ok(short)
}

fn flush(p: &BatchProducer<Reported>) -> anyhow::Result<()> {
    p.producer().flush(Duration::from_secs(30))?;
    Ok(())
}

/// The payloads of each partition in offset order.
async fn read_back(topic: &str) -> anyhow::Result<BTreeMap<i32, Vec<Vec<u8>>>> {
    let mut parts: BTreeMap<i32, Vec<Vec<u8>>> = BTreeMap::new();
    for (partition, _, _, value) in consume_all(&Stack::get().kafka_bootstrap, topic).await? {
        parts
            .entry(partition)
            .or_default()
            .push(value.unwrap_or_default());
    }
    Ok(parts)
}

fn payload(i: usize) -> Vec<u8> {
    format!("record-{i:05}").into_bytes()
}

#[tokio::test(flavor = "multi_thread")]
async fn records_of_several_partitions_arrive_in_order_each_reported_once_with_its_opaque(
) -> anyhow::Result<()> {
    let bootstrap = &Stack::get().kafka_bootstrap;
    let topic = unique_name("batch_order");
    create_topic(bootstrap, &topic, 3, false).await?;
    let (mut p, reports) = producer(&topic, &[("linger.ms", "5")])?;
    let payloads: Vec<Vec<u8>> = (0..3000).map(payload).collect();
    let keys: Vec<Vec<u8>> = (0..3000).map(|i| format!("k{i}").into_bytes()).collect();
    // Partitions interleaved (0,1,2,0,1,2…) and in runs (0 × 7, 2 × 7, …).
    let partition = |i: usize| {
        if i < 1500 {
            (i % 3) as i32
        } else {
            ((i / 7) % 3) as i32
        }
    };
    let records: Vec<Record<'_>> = (0..3000)
        .map(|i| Record {
            partition: partition(i),
            key: &keys[i],
            payload: &payloads[i],
            opaque: 10_000 + i,
        })
        .collect();
    // Five calls of 600: the records of a call are enqueued whole.
    for chunk in records.chunks(600) {
        assert_eq!(p.send_batch(0, chunk).map_err(|(_, e)| e)?, chunk.len());
    }
    flush(&p)?;

    let parts = read_back(&topic).await?;
    for part in 0..3 {
        let expected: Vec<Vec<u8>> = (0..3000)
            .filter(|&i| partition(i) == part)
            .map(payload)
            .collect();
        assert_eq!(parts.get(&part), Some(&expected), "partition {part}");
    }
    let mut reports = reports
        .lock()
        .map_err(|_| anyhow::anyhow!("poisoned"))?
        .clone();
    reports.sort_by_key(|(opaque, _)| *opaque);
    assert_eq!(reports.len(), 3000);
    for (i, (opaque, outcome)) in reports.iter().enumerate() {
        assert_eq!(*opaque, 10_000 + i);
        let (part, _) = outcome.clone().map_err(anyhow::Error::msg)?;
        assert_eq!(part, partition(i), "record {i}'s report");
    }
    delete_topic(bootstrap, &topic).await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_full_queue_enqueues_a_prefix_and_the_rest_follows_in_order_exactly_once(
) -> anyhow::Result<()> {
    let bootstrap = &Stack::get().kafka_bootstrap;
    let topic = unique_name("batch_full");
    create_topic(bootstrap, &topic, 2, false).await?;
    // A queue of 40 records: a batch of 1000 fills it many times.
    let (mut p, reports) = producer(
        &topic,
        &[("queue.buffering.max.messages", "40"), ("linger.ms", "20")],
    )?;
    let payloads: Vec<Vec<u8>> = (0..1000).map(payload).collect();
    let records: Vec<Record<'_>> = (0..1000)
        .map(|i| Record {
            partition: (i % 2) as i32,
            key: b"k",
            payload: &payloads[i],
            opaque: i,
        })
        .collect();
    let first = p.send_batch(0, &records).map_err(|(_, e)| e)?;
    assert!(
        (1..=40).contains(&first),
        "{first} records enqueued into a queue of 40"
    );
    let short = send_all(&mut p, &records[first..]).map_err(|(_, e)| e)?;
    assert!(short > 0, "the queue never filled");
    flush(&p)?;

    let parts = read_back(&topic).await?;
    for part in 0..2 {
        let expected: Vec<Vec<u8>> = (0..1000)
            .filter(|i| (i % 2) as i32 == part)
            .map(payload)
            .collect();
        assert_eq!(parts.get(&part), Some(&expected), "partition {part}");
    }
    let reports = reports
        .lock()
        .map_err(|_| anyhow::anyhow!("poisoned"))?
        .clone();
    assert_eq!(reports.len(), 1000);
    assert!(reports.iter().all(|(_, outcome)| outcome.is_ok()));
    delete_topic(bootstrap, &topic).await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_record_over_message_max_bytes_is_refused_and_nothing_after_it_is_enqueued(
) -> anyhow::Result<()> {
    let bootstrap = &Stack::get().kafka_bootstrap;
    let topic = unique_name("batch_size");
    create_topic(bootstrap, &topic, 1, false).await?;
    let (mut p, _reports) = producer(&topic, &[("message.max.bytes", "2000")])?;
    let small = payload(1);
    // Under the limit but within the framing margin: sent alone, and accepted.
    let near = vec![b'n'; 1900];
    let big = vec![b'b'; 5000];
    let after = payload(2);
    let records = [
        Record {
            partition: 0,
            key: b"a",
            payload: &small,
            opaque: 0,
        },
        Record {
            partition: 0,
            key: b"n",
            payload: &near,
            opaque: 1,
        },
        Record {
            partition: 0,
            key: b"b",
            payload: &big,
            opaque: 2,
        },
        Record {
            partition: 0,
            key: b"c",
            payload: &after,
            opaque: 3,
        },
    ];
    match p.send_batch(0, &records) {
        Err((2, KafkaError::MessageProduction(RDKafkaErrorCode::MessageSizeTooLarge))) => {}
        other => anyhow::bail!("expected record 2 refused for its size, got {other:?}"),
    }
    flush(&p)?;
    let parts = read_back(&topic).await?;
    assert_eq!(parts.get(&0), Some(&vec![small.clone(), near.clone()]));
    delete_topic(bootstrap, &topic).await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_missing_or_negative_partition_and_an_unknown_topic_index_are_refused_and_named(
) -> anyhow::Result<()> {
    let bootstrap = &Stack::get().kafka_bootstrap;
    let topic = unique_name("batch_unknown");
    create_topic(bootstrap, &topic, 2, false).await?;
    let (mut p, _reports) = producer(&topic, &[])?;
    let v = payload(0);
    let record = |partition, opaque| Record {
        partition,
        key: b"k",
        payload: &v,
        opaque,
    };
    let records = [record(0, 0), record(1, 1), record(5, 2), record(5, 3)];
    match p.send_batch(0, &records) {
        Err((2, KafkaError::MessageProduction(RDKafkaErrorCode::UnknownPartition))) => {}
        other => anyhow::bail!("expected record 2 refused for its partition, got {other:?}"),
    }
    // A negative partition never reaches librdkafka (-1 would be its partitioner).
    match p.send_batch(0, &[record(0, 4), record(-1, 5), record(0, 6)]) {
        Err((1, KafkaError::MessageProduction(RDKafkaErrorCode::UnknownPartition))) => {}
        other => anyhow::bail!("expected record 1 refused for its partition, got {other:?}"),
    }
    // An index past the topics given to `new` (librdkafka's own unknown-topic refusal is
    // not reached here: a producer may not know a new topic yet, and then queues).
    match p.send_batch(1, &records[..1]) {
        Err((0, KafkaError::MessageProduction(RDKafkaErrorCode::UnknownTopic))) => {}
        other => anyhow::bail!("expected topic 1 unknown, got {other:?}"),
    }
    // librdkafka does not free the record it refused for its partition (its count in
    // the local queue stays), so a flush waits for it until the timeout; the records
    // of the other partitions are delivered meanwhile.
    let _ = p.producer().flush(Duration::from_secs(3));
    drop(p);
    let parts = read_back(&topic).await?;
    // Records 0 (first call) and 4 (the third), in partition 0.
    assert_eq!(parts.get(&0).map(Vec::len), Some(2));
    assert_eq!(parts.get(&1).map(Vec::len), Some(1));
    delete_topic(bootstrap, &topic).await
}
