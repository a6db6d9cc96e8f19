//! `BatchQueue` against the stack's Apache Kafka: every record of the forwarded
//! partitions once, in offset order, many per call; the wait; and what librdkafka does
//! with a forward across an unassignment, which the importer relies on.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ferry_produce_batch::BatchQueue;
use ferry_testkit::kafka::{create_topic, delete_topic};
use ferry_testkit::{unique_name, Stack};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};

type Queue = BatchQueue<rdkafka::consumer::DefaultConsumerContext>;

/// `(partition, offset, key, payload)` of each record taken.
type Taken = Vec<(i32, i64, Vec<u8>, Vec<u8>)>;

/// `(offset, key, payload)` of a partition's records.
type OfPartition = Vec<(i64, Vec<u8>, Vec<u8>)>;

fn payload(partition: i32, i: usize) -> Vec<u8> {
    format!("p{partition}-{i:05}").into_bytes()
}

/// Produces `per_partition` records to each of `partitions` partitions of `topic`.
fn produce(topic: &str, partitions: i32, per_partition: usize) -> anyhow::Result<()> {
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", &Stack::get().kafka_bootstrap)
        .set("linger.ms", "5")
        .create()?;
    for i in 0..per_partition {
        for p in 0..partitions {
            let value = payload(p, i);
            let key = format!("k{i}");
            loop {
                match producer.send(BaseRecord::to(topic).partition(p).key(&key).payload(&value)) {
                    Ok(()) => break,
                    Err((_, _)) => {
                        producer.poll(Duration::from_millis(10));
                    }
                }
            }
        }
    }
    producer.flush(Duration::from_secs(30))?;
    Ok(())
}

fn consumer() -> anyhow::Result<Arc<BaseConsumer>> {
    Ok(Arc::new(
        ClientConfig::new()
            .set("bootstrap.servers", &Stack::get().kafka_bootstrap)
            .set("group.id", unique_name("consume_group"))
            .set("enable.auto.commit", "false")
            .set("enable.partition.eof", "false")
            .create()?,
    ))
}

fn assign(c: &BaseConsumer, topic: &str, parts: &[(i32, i64)]) -> anyhow::Result<()> {
    let mut tpl = TopicPartitionList::new();
    for (p, offset) in parts {
        tpl.add_partition_offset(topic, *p, Offset::Offset(*offset))?;
    }
    c.assign(&tpl)?;
    Ok(())
}

/// A new consumer and its batch queue, each of `parts` (partition, offset) forwarded to
/// the queue, then assigned (the order the importer keeps).
fn forwarded_and_assigned(
    topic: &str,
    parts: &[(i32, i64)],
) -> anyhow::Result<(Arc<BaseConsumer>, Queue)> {
    let c = consumer()?;
    let queue = BatchQueue::new(c.clone())?;
    for (p, _) in parts {
        queue.forward(topic, *p)?;
    }
    assign(&c, topic, parts)?;
    Ok((c, queue))
}

/// Takes records from `queue` (and polls `c`, which must give none) until `want` came
/// or 30 s passed; returns them and the largest number one call gave.
fn take(
    c: &BaseConsumer,
    queue: &Queue,
    want: usize,
    max: usize,
) -> anyhow::Result<(Taken, usize)> {
    let mut taken = Taken::new();
    let mut largest = 0;
    let deadline = Instant::now() + Duration::from_secs(30);
    while taken.len() < want && Instant::now() < deadline {
        if let Some(m) = c.poll(Duration::ZERO) {
            anyhow::bail!("a record came through poll: {:?}", m.map(|m| m.offset()));
        }
        let n = queue.consume(Duration::from_millis(200), max, |r| {
            assert!(r.error.is_none(), "{:?}", r.error);
            taken.push((
                r.partition,
                r.offset,
                r.key.unwrap_or_default().to_vec(),
                r.payload.unwrap_or_default().to_vec(),
            ));
        });
        assert!(n <= max, "{n} records from one call of at most {max}");
        largest = largest.max(n);
    }
    Ok((taken, largest))
}

#[tokio::test(flavor = "multi_thread")]
async fn every_record_of_the_forwarded_partitions_comes_once_in_offset_order_many_per_call(
) -> anyhow::Result<()> {
    let bootstrap = &Stack::get().kafka_bootstrap;
    let topic = unique_name("consume_order");
    create_topic(bootstrap, &topic, 3, false).await?;
    produce(&topic, 3, 2000)?;

    let (c, queue) = forwarded_and_assigned(&topic, &[(0, 0), (1, 0), (2, 0)])?;
    let (taken, largest) = take(&c, &queue, 6000, 512)?;
    assert_eq!(taken.len(), 6000);
    assert!(largest > 1, "never more than one record per call");

    let mut parts: BTreeMap<i32, OfPartition> = BTreeMap::new();
    for (p, offset, key, value) in taken {
        parts.entry(p).or_default().push((offset, key, value));
    }
    for p in 0..3 {
        let got = parts.get(&p).map(Vec::as_slice).unwrap_or_default();
        assert_eq!(got.len(), 2000, "partition {p}");
        for (i, (offset, key, value)) in got.iter().enumerate() {
            assert_eq!(*offset, i as i64, "partition {p}");
            assert_eq!(key, format!("k{i}").as_bytes());
            assert_eq!(value, &payload(p, i));
        }
    }
    // Nothing more, and nothing through the consumer's own queue.
    assert_eq!(queue.consume(Duration::from_millis(300), 512, |_| {}), 0);
    assert!(c.poll(Duration::ZERO).is_none());
    drop(queue);
    drop(c);
    delete_topic(bootstrap, &topic).await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_wait_ends_with_the_records_there_and_an_empty_queue_waits_its_time() -> anyhow::Result<()>
{
    let bootstrap = &Stack::get().kafka_bootstrap;
    let topic = unique_name("consume_wait");
    create_topic(bootstrap, &topic, 1, false).await?;
    produce(&topic, 1, 50)?;

    let (c, queue) = forwarded_and_assigned(&topic, &[(0, 0)])?;
    // Room for far more than there is: librdkafka's own call would wait out the 30 s.
    let started = Instant::now();
    let mut got = 0;
    while got < 50 && started.elapsed() < Duration::from_secs(30) {
        got += queue.consume(Duration::from_secs(30), 10_000, |_| {});
    }
    assert_eq!(got, 50);
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "took {:?}",
        started.elapsed()
    );
    // Nothing there: the whole wait, and none.
    let started = Instant::now();
    assert_eq!(queue.consume(Duration::from_millis(400), 10, |_| {}), 0);
    assert!(started.elapsed() >= Duration::from_millis(350));
    drop(queue);
    drop(c);
    delete_topic(bootstrap, &topic).await
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unassignment_drops_what_waited_and_each_assignment_needs_the_forward_again(
) -> anyhow::Result<()> {
    let bootstrap = &Stack::get().kafka_bootstrap;
    let topic = unique_name("consume_revoke");
    create_topic(bootstrap, &topic, 1, false).await?;
    produce(&topic, 1, 300)?;

    let (c, queue) = forwarded_and_assigned(&topic, &[(0, 0)])?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while queue.len() < 300 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    // (With librdkafka's version barrier of the fetch's start, an op of its own.)
    assert!(queue.len() >= 300, "the fetch never came");
    // Unassigned with its records still waiting: they are not given any more.
    c.unassign()?;
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut stale = 0;
    while Instant::now() < deadline && stale == 0 {
        stale += queue.consume(Duration::from_millis(100), 1000, |_| {});
        if queue.is_empty() {
            break;
        }
    }
    assert_eq!(stale, 0, "records of an unassigned partition were given");

    // Assigned again without a forward: librdkafka keeps the application's claim on the
    // partition's queue, so its records reach neither `poll` nor the batch queue. The
    // forward has to be set at every assignment.
    assign(&c, &topic, &[(0, 100)])?;
    let quiet = Instant::now() + Duration::from_secs(3);
    while Instant::now() < quiet {
        if let Some(m) = c.poll(Duration::from_millis(100)) {
            anyhow::bail!("a record came through poll: {:?}", m.map(|m| m.offset()));
        }
    }
    assert!(queue.is_empty());
    // Forwarded then: what the fetch held comes, once each, in order.
    queue.forward(&topic, 0)?;
    let (taken, _) = take(&c, &queue, 200, 1000)?;
    let offsets: Vec<i64> = taken.iter().map(|t| t.1).collect();
    assert_eq!(offsets, (100..300).collect::<Vec<i64>>());

    // Forwarded before the next assignment and again after it, as the importer does:
    // the unassignment's stop clears the forward when librdkafka's thread gets to it,
    // which may be after the forward set just before the assignment. From where
    // assigned, once each.
    c.unassign()?;
    queue.forward(&topic, 0)?;
    assign(&c, &topic, &[(0, 250)])?;
    std::thread::sleep(Duration::from_millis(500));
    queue.forward(&topic, 0)?;
    let (taken, _) = take(&c, &queue, 50, 1000)?;
    let offsets: Vec<i64> = taken.iter().map(|t| t.1).collect();
    assert_eq!(offsets, (250..300).collect::<Vec<i64>>());
    assert_eq!(queue.consume(Duration::from_millis(300), 1000, |_| {}), 0);
    drop(queue);
    drop(c);
    delete_topic(bootstrap, &topic).await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_records_time_and_headers_are_read_when_asked_for() -> anyhow::Result<()> {
    use rdkafka::message::{Header, OwnedHeaders};
    let bootstrap = &Stack::get().kafka_bootstrap;
    let topic = unique_name("consume_headers");
    create_topic(bootstrap, &topic, 1, false).await?;
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()?;
    let headers = OwnedHeaders::new()
        .insert(Header {
            key: "ferry.vsn",
            value: Some(&[1u8, 2]),
        })
        .insert(Header {
            key: "empty",
            value: None::<&[u8]>,
        })
        .insert(Header {
            key: "ferry.vsn",
            value: Some(&[3u8, 4, 5]),
        });
    producer
        .send(
            BaseRecord::<(), _>::to(&topic)
                .partition(0)
                .payload("with")
                .timestamp(1_700_000_000_123)
                .headers(headers),
        )
        .map_err(|(e, _)| e)?;
    producer
        .send(
            BaseRecord::<(), _>::to(&topic)
                .partition(0)
                .payload("without"),
        )
        .map_err(|(e, _)| e)?;
    producer.flush(Duration::from_secs(30))?;

    let (c, queue) = forwarded_and_assigned(&topic, &[(0, 0)])?;
    type Read = (
        Option<i64>,
        Option<Vec<u8>>,
        Option<Vec<u8>>,
        Option<Vec<u8>>,
    );
    let mut read: Vec<Read> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while read.len() < 2 && Instant::now() < deadline {
        queue.consume(Duration::from_millis(200), 10, |r| {
            read.push((
                r.timestamp_ms(),
                r.header(c"ferry.vsn").map(<[u8]>::to_vec),
                r.header(c"empty").map(<[u8]>::to_vec),
                r.header(c"missing").map(<[u8]>::to_vec),
            ));
        });
    }
    assert_eq!(read.len(), 2);
    // The time given; the last of two headers of one name; a header with no value is
    // there, empty; a missing one is not.
    assert_eq!(
        read[0],
        (
            Some(1_700_000_000_123),
            Some(vec![3, 4, 5]),
            Some(vec![]),
            None
        )
    );
    // No time given: the producer's (a recent one); no headers at all.
    let now_ms = i64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_millis(),
    )?;
    let at = read[1].0.unwrap_or(0);
    assert!((now_ms - 60_000..=now_ms).contains(&at), "{at} vs {now_ms}");
    assert_eq!((&read[1].1, &read[1].2, &read[1].3), (&None, &None, &None));
    drop(queue);
    drop(c);
    delete_topic(bootstrap, &topic).await
}
