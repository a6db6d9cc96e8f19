//! The batching and worker logic against the in-memory sink: records are encoded and
//! decoded for real (through a schema registry of the test's own).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use ferry_shared::catalog::{Column, Kind, TableSchema};
use ferry_shared::codec::TableEncoder;
use ferry_shared::envelope::Op;
use ferry_shared::registry::RegistryClient;
use ferry_shared::value::Datum;

use super::*;
use crate::sink::memory::{MemorySink, Row};
use crate::sink::tests::table_t;

async fn registry() -> RegistryClient {
    let url = ferry_testkit::serve_registry(None).await.unwrap();
    RegistryClient::new(&url, None).unwrap()
}

/// Encodes the records of `public.t (id bigint PRIMARY KEY, v text)` in a topic of
/// two partitions (partition = id % 2), as an exporter would.
struct Stream {
    codec: TableEncoder,
    decoder: EventDecoder,
    topic: Arc<str>,
    next_vsn: u64,
    offsets: HashMap<i32, i64>,
    /// The rows as the stream leaves them.
    expected: BTreeMap<i64, String>,
}

impl Stream {
    async fn new() -> Stream {
        let registry = registry().await;
        let column = |name: &str, kind: Kind, type_name: &str| Column {
            name: name.into(),
            type_name: type_name.into(),
            type_oid: 0,
            nullable: name != "id",
            kind,
        };
        let table = TableSchema {
            schema: "public".into(),
            name: "t".into(),
            columns: vec![
                column("id", Kind::Int64, "bigint"),
                column("v", Kind::Text, "text"),
            ],
            primary_key: vec![0],
            replica_identity: 'f',
        };
        let topic = "ferry.test.source.public.t";
        let codec = TableEncoder::new(&registry, table, topic.to_owned(), 0, 2, "src".into())
            .await
            .unwrap();
        Stream {
            codec,
            decoder: EventDecoder::new(registry),
            topic: Arc::from(topic),
            next_vsn: 1,
            offsets: HashMap::new(),
            expected: BTreeMap::new(),
        }
    }

    fn setup(&self, batch_rows: usize, batch_max: Duration) -> Setup {
        Setup {
            decoder: self.decoder.clone(),
            batch_rows,
            batch_max,
        }
    }

    /// The next record: `op` on row `id` (the new value `v`; none for deletes).
    fn record(&mut self, op: Op, id: i64, v: Option<&str>) -> Record {
        let row = |v: &str| vec![Datum::Long(id), Datum::String(v.to_owned())];
        let before = self.expected.get(&id).map(|v| row(v));
        let event = ferry_testkit::events::on_t(op, id, self.next_vsn, before, v.map(row));
        self.next_vsn += 1;
        match v {
            Some(v) => self.expected.insert(id, v.to_owned()),
            None => self.expected.remove(&id),
        };
        let (key, payload) = self.codec.encode_event(&event).unwrap();
        let partition = (id % 2) as i32;
        let offset = self.offsets.entry(partition).or_insert(0);
        *offset += 1;
        Record {
            topic: self.topic.clone(),
            partition,
            offset: *offset - 1,
            key: Some(key),
            payload: Some(payload),
        }
    }

    fn parts(&self) -> Vec<(String, i32)> {
        vec![(self.topic.to_string(), 0), (self.topic.to_string(), 1)]
    }
}

/// The rows of `t` in `sink` as (id, v).
fn rows(sink: &MemorySink) -> BTreeMap<i64, String> {
    sink.rows(&table_t())
        .values()
        .map(|row: &Row| {
            let get = |c: &str| row.get(c).cloned().flatten().unwrap_or_default();
            (get("id").parse().unwrap(), get("v"))
        })
        .collect()
}

fn database() -> MemorySink {
    let db = MemorySink::new("g");
    db.create_table(&table_t(), &["id"]);
    db
}

/// Some snapshot rows and changes, in stream order.
fn changes(stream: &mut Stream) -> Vec<Record> {
    let mut records: Vec<Record> = (1..=6)
        .map(|id| stream.record(Op::Read, id, Some("snap")))
        .collect();
    records.push(stream.record(Op::Update, 2, Some("two")));
    records.push(stream.record(Op::Update, 3, Some("three")));
    records.push(stream.record(Op::Delete, 4, None));
    records.push(stream.record(Op::Create, 7, Some("seven")));
    records.push(stream.record(Op::Update, 2, Some("two'")));
    records
}

#[tokio::test]
async fn workers_apply_every_partition_once_and_skip_what_was_applied() {
    let mut stream = Stream::new().await;
    let db = database();
    let sinks = vec![db.session("g"), db.session("g")];
    let mut pool = Pool::start(&stream.setup(4, Duration::from_secs(60)), sinks);
    pool.assign(db.load_positions(&stream.parts()).await.unwrap())
        .await
        .unwrap();
    let records = changes(&mut stream);
    let n = records.len() as i64;
    // Delivered twice (a consumer that re-fetched): the second copy is skipped.
    let again: Vec<Record> = records
        .iter()
        .map(|r| Record {
            topic: r.topic.clone(),
            partition: r.partition,
            offset: r.offset,
            key: r.key.clone(),
            payload: r.payload.clone(),
        })
        .collect();
    pool.records(records, false).await.unwrap();
    pool.records(again, false).await.unwrap();
    pool.flush(false).await.unwrap();
    let commits = pool.drain().unwrap();
    let total: u64 = commits
        .iter()
        .flat_map(|c| c.counts.values())
        .map(Counts::total)
        .sum();
    assert_eq!(total, n as u64, "every event counted once");
    assert_eq!(rows(&db), stream.expected);
    assert_eq!(
        db.counts(&table_t()),
        Counts {
            snapshot_rows: 6,
            inserts: 1,
            updates: 3,
            deletes: 1
        }
    );
    let mut stored = db.load_positions(&stream.parts()).await.unwrap();
    stored.sort_by_key(|s| s.partition);
    let next: Vec<i64> = stored.iter().map(|s| s.next_offset).collect();
    assert_eq!(next, vec![stream.offsets[&0], stream.offsets[&1]]);
    assert_eq!(
        stored.iter().map(|s| s.last_vsn).max(),
        Some(Vsn(stream.next_vsn - 1))
    );

    // Revoked, then assigned again at the stored positions: the whole stream again
    // (a new consumer reading from the start) changes nothing.
    pool.flush(true).await.unwrap();
    pool.assign(db.load_positions(&stream.parts()).await.unwrap())
        .await
        .unwrap();
    let mut replayed = Stream::new().await;
    pool.records(changes(&mut replayed), false).await.unwrap();
    pool.flush(false).await.unwrap();
    assert_eq!(db.counts(&table_t()).total(), n as u64);
    assert_eq!(rows(&db), stream.expected);
    pool.stop().await;
}

#[tokio::test]
async fn a_batch_is_cut_at_batch_rows_or_after_batch_max() {
    let mut stream = Stream::new().await;
    let db = database();
    let mut pool = Pool::start(
        &stream.setup(2, Duration::from_millis(50)),
        vec![db.session("g")],
    );
    pool.assign(db.load_positions(&stream.parts()).await.unwrap())
        .await
        .unwrap();
    // Five records of partition 0: two full batches, then one left over.
    let records: Vec<Record> = (1..=5)
        .map(|i| stream.record(Op::Create, i * 2, Some("x")))
        .collect();
    pool.records(records, false).await.unwrap();
    let within = Duration::from_secs(10);
    let mut sizes = Vec::new();
    for _ in 0..3 {
        let c = tokio::time::timeout(within, pool.committed())
            .await
            .expect("a commit within the deadline")
            .unwrap();
        sizes.push(c.counts[&table_t()].total());
    }
    assert_eq!(sizes, vec![2, 2, 1], "the last one cut by batch_max");
    assert_eq!(db.snapshot().commits, 3);
    pool.stop().await;
}

#[tokio::test]
async fn records_polled_when_the_consumer_caught_up_are_written_without_waiting_for_batch_max() {
    let mut stream = Stream::new().await;
    let db = database();
    // A batch_max far beyond the test's deadline: only the caught-up cut can write.
    let mut pool = Pool::start(
        &stream.setup(100, Duration::from_secs(600)),
        vec![db.session("g")],
    );
    pool.assign(db.load_positions(&stream.parts()).await.unwrap())
        .await
        .unwrap();
    let within = Duration::from_secs(10);
    // More was fetched: the records wait in the batch.
    pool.records(vec![stream.record(Op::Create, 2, Some("x"))], false)
        .await
        .unwrap();
    assert!(
        tokio::time::timeout(Duration::from_millis(300), pool.committed())
            .await
            .is_err(),
        "no commit while the consumer has more"
    );
    // Caught up: what the worker holds (both records) is written at once.
    pool.records(vec![stream.record(Op::Create, 4, Some("y"))], true)
        .await
        .unwrap();
    let c = tokio::time::timeout(within, pool.committed())
        .await
        .expect("a commit as soon as the consumer caught up")
        .unwrap();
    assert_eq!(c.counts[&table_t()].total(), 2);
    assert_eq!(rows(&db).len(), 2);
    pool.stop().await;
}

#[tokio::test]
async fn a_worker_whose_partition_moved_under_it_fails_with_a_conflict() {
    let mut stream = Stream::new().await;
    let db = database();
    let mut pool = Pool::start(
        &stream.setup(100, Duration::from_secs(60)),
        vec![db.session("g")],
    );
    pool.assign(db.load_positions(&stream.parts()).await.unwrap())
        .await
        .unwrap();
    // Another importer took partition 0 and wrote past offset 0.
    let mut other = db.session("g");
    let moved = Stored {
        topic: stream.topic.to_string(),
        partition: 0,
        next_offset: 1,
        last_vsn: Vsn(1),
    };
    other
        .commit(&mut BTreeMap::new(), &mut [(0, &moved)])
        .await
        .unwrap();
    pool.records(vec![stream.record(Op::Create, 2, Some("stale"))], false)
        .await
        .unwrap();
    let flushed = pool.flush(false).await;
    assert!(matches!(flushed, Err(Failure::Conflict(_))), "{flushed:?}");
    assert!(rows(&db).is_empty(), "the stale batch wrote nothing");
    assert_eq!(
        db.load_positions(&stream.parts()[..1]).await.unwrap(),
        vec![moved]
    );
    pool.stop().await;
}

/// Records for rows `ids` of partition 0 (even ids), each a batch of its own at
/// `batch_rows` 1, sent to a pool whose commits `db` holds.
async fn held_pool(stream: &mut Stream, db: &MemorySink) -> Pool {
    let mut pool = Pool::start(
        &stream.setup(1, Duration::from_secs(60)),
        vec![db.session("g")],
    );
    pool.assign(db.load_positions(&stream.parts()).await.unwrap())
        .await
        .unwrap();
    let records: Vec<Record> = [2, 4, 6, 8]
        .into_iter()
        .map(|id| stream.record(Op::Create, id, Some("x")))
        .collect();
    pool.records(records, false).await.unwrap();
    // The worker is in its first transaction, waiting at the gate.
    tokio::time::sleep(Duration::from_millis(50)).await;
    pool
}

#[tokio::test]
async fn a_stopped_pool_writes_nothing_it_held_or_had_queued() {
    let mut stream = Stream::new().await;
    let db = database();
    let gate = db.hold_commits();
    let pool = held_pool(&mut stream, &db).await;
    let stopping = tokio::spawn(pool.stop());
    tokio::time::sleep(Duration::from_millis(50)).await;
    drop(gate);
    tokio::time::timeout(Duration::from_secs(10), stopping)
        .await
        .expect("stopped within the deadline")
        .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(db.snapshot().commits, 0);
    assert!(rows(&db).is_empty());
}

#[tokio::test]
async fn a_dropped_pool_takes_its_workers_with_it() {
    // As when the task holding it is aborted: nothing goes on writing alone.
    let mut stream = Stream::new().await;
    let db = database();
    let gate = db.hold_commits();
    let pool = held_pool(&mut stream, &db).await;
    drop(pool);
    tokio::time::sleep(Duration::from_millis(50)).await;
    drop(gate);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(db.snapshot().commits, 0);
    let stored = db.load_positions(&stream.parts()).await.unwrap();
    assert!(stored.iter().all(|s| s.next_offset == 0), "{stored:?}");
}

#[test]
fn the_owner_of_a_run_is_looked_up_once_and_again_for_another_partition_or_topic() {
    let mut owner: HashMap<String, HashMap<i32, usize>> = HashMap::new();
    owner.insert("s.a".into(), HashMap::from([(0, 0), (1, 1)]));
    owner.insert("s.b".into(), HashMap::from([(0, 2)]));
    let a: Arc<str> = Arc::from("s.a");
    let record = |topic: &Arc<str>, partition| Record {
        topic: topic.clone(),
        partition,
        offset: 0,
        key: None,
        payload: None,
    };
    let mut owners = Owners::new(&owner);
    // A run of one partition: one lookup.
    for _ in 0..5 {
        assert_eq!(owners.of(&record(&a, 0)), Some(0));
    }
    assert_eq!(owners.lookups, 1);
    assert_eq!(owners.of(&record(&a, 1)), Some(1));
    assert_eq!(owners.lookups, 2);
    // Another topic on the same partition number, and the same name in another Arc.
    assert_eq!(owners.of(&record(&Arc::from("s.b"), 1)), None);
    assert_eq!(owners.of(&record(&Arc::from("s.b"), 0)), Some(2));
    assert_eq!(owners.of(&record(&Arc::from("s.a"), 0)), Some(0));
    assert_eq!(owners.lookups, 5);
    // A partition not assigned here, remembered as such for its run.
    assert_eq!(owners.of(&record(&a, 7)), None);
    assert_eq!(owners.of(&record(&a, 7)), None);
    assert_eq!(owners.lookups, 6);
    assert_eq!(owners.of(&record(&a, 1)), Some(1));
}

#[test]
fn the_partition_map_hashes_apart_every_partition_and_finds_each_again() {
    let hash = |topic: &str, partition: i32| {
        let mut h = WordHash::default();
        std::hash::Hash::hash(&(Arc::<str>::from(topic), partition), &mut h);
        h.finish()
    };
    assert_eq!(
        hash("ferry.m.source.public.t", 3),
        hash("ferry.m.source.public.t", 3)
    );
    let mut seen = std::collections::HashSet::new();
    for topic in [
        "ferry.m.source.public.t",
        "ferry.m.source.public.t2",
        "a",
        "",
        "abcdefgh",
    ] {
        for partition in 0..500 {
            assert!(
                seen.insert(hash(topic, partition)),
                "{topic}[{partition}] collides"
            );
        }
    }
    // The bits the map uses: the low bits pick the bucket, the top 7 the tag compared
    // first. 1,024 partitions of one topic spread over both.
    let topic = "ferry.m.source.public.t";
    let low: std::collections::HashSet<u64> = (0..1024).map(|p| hash(topic, p) & 1023).collect();
    let top: std::collections::HashSet<u64> = (0..1024).map(|p| hash(topic, p) >> 57).collect();
    assert!(
        low.len() > 600,
        "1,024 partitions fall in {} of 1,024 buckets",
        low.len()
    );
    assert!(
        top.len() > 100,
        "1,024 partitions have {} of 128 tags",
        top.len()
    );
    let mut parts: HashMap<(Arc<str>, i32), i32, BuildHasherDefault<WordHash>> = HashMap::default();
    for partition in 0..1000 {
        parts.insert((Arc::from("ferry.m.source.public.t"), partition), partition);
    }
    for partition in 0..1000 {
        assert_eq!(
            parts.get(&(Arc::from("ferry.m.source.public.t"), partition)),
            Some(&partition)
        );
    }
}
