//! The destination an importer applies batches to: the [`Sink`] contract, and the types
//! that cross it (positions, counts).
//!
//! [`postgres::PgSink`] is the one the importer and replay write with; tests also run the
//! batching and worker logic against an in-memory sink (`memory`), which keeps the same
//! contract.

pub(crate) mod postgres;

#[cfg(test)]
pub(crate) mod memory;

use std::collections::BTreeMap;
use std::future::Future;

use ferry_shared::catalog::TableName;

use crate::error::Failure;
use crate::event::Event;

/// A partition's stored position.
pub(crate) use ferry_shared::metadata::StoredPosition as Stored;

/// A partition's position moving in a batch: (the stored `next_offset` it was read at,
/// the new position). The move is a compare-and-set on the first.
pub(crate) type Move<'a> = (i64, &'a Stored);

/// Per-table event counts of one batch (or totals): the one count type.
pub use ferry_shared::envelope::OpCounts as Counts;

/// How a batch's snapshot rows went in (zero where the sink has no such distinction).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Applied {
    /// Snapshot rows written with binary `COPY`.
    pub binary_copy_rows: usize,
    /// Snapshot rows written with text `COPY` (a column type or value without an exact
    /// binary form).
    pub text_copy_rows: usize,
    /// Of those, rows copied straight into the table (none of them existed).
    pub direct_copy_rows: usize,
}

/// What a committed batch wrote: events per table (by op) and how snapshot rows went in.
pub(crate) type Written = (BTreeMap<TableName, Counts>, Applied);

/// The destination an importer applies batches to, for one consumer group (positions
/// and counts are kept per group; a replay is a group of its own).
///
/// # Ordering
///
/// [`Sink::commit`] applies the events of each table in VSN order (it sorts them; VSN
/// is the stream's total order, so this also orders events of different partitions in
/// one batch). One batch is ONE transaction: its rows, the new positions of the
/// partitions it read (next offset, last applied VSN) and its per-table counts are
/// written together or not at all. A position is therefore never ahead of, nor behind,
/// the rows it describes.
///
/// # Delivery
///
/// Exactly once, by compare-and-set of positions: each [`Move`] names the `next_offset`
/// the caller read. If a partition's stored position is no longer that value (another
/// importer took the partition in a rebalance and wrote past it), the whole batch is
/// rolled back and the call fails with [`Failure::Conflict`]; the caller drops its
/// in-flight work and reloads positions. Callers skip records below a partition's stored
/// offset and events whose VSN is not above its last applied VSN.
///
/// # Idempotency
///
/// Applying any prefix of a stream again converges to the same rows: snapshot rows,
/// inserts and updates are upserts of the full new image, deletes tolerate a missing
/// row. (Counts, by contrast, add up per commit; the positions' compare-and-set is what
/// keeps a batch from committing twice.)
///
/// # Concurrency
///
/// One caller per partition: a partition belongs to one worker from its assignment to
/// its revocation. Each worker holds its own sink (its own connection and session), so
/// `commit` takes `&mut self`. Concurrent commits of different sinks touching the same
/// table's counts must not deadlock (the PostgreSQL sink adds counts last, in table-name
/// order).
///
/// # Reading positions back
///
/// [`Sink::load_positions`] reads the stored positions of the partitions just assigned
/// (creating them at offset 0, VSN 0 when never seen); consumers are positioned there,
/// never at Kafka's committed offsets. It takes `&self`, so one sink may serve the
/// consumer's rebalance callback from another thread.
pub(crate) trait Sink: Send + 'static {
    /// The stored positions of `parts` (topic, partition) for this sink's group;
    /// partitions never seen are created at offset 0 and VSN 0.
    fn load_positions(
        &self,
        parts: &[(String, i32)],
    ) -> impl Future<Output = Result<Vec<Stored>, Failure>> + Send;

    /// Writes one batch in one transaction: every table's `events` (sorted by VSN here),
    /// the partitions' `moves` (each a compare-and-set from the `next_offset` it was read
    /// at; `Conflict` and nothing written when one moved under it) and the per-table
    /// counts. Returns the counts per table and how the snapshot rows went in.
    fn commit(
        &mut self,
        events: &mut BTreeMap<TableName, Vec<Event>>,
        moves: &mut [Move<'_>],
    ) -> impl Future<Output = Result<Written, Failure>> + Send;
}

/// The contract, checked against the in-memory sink and a real PostgreSQL destination
/// alike: each property is one generic function run on both.
#[cfg(test)]
pub(crate) mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use std::sync::Arc;

    use ferry_shared::avro::{AvroType, FieldType, RecordType};
    use ferry_shared::envelope::Op;
    use ferry_shared::position::Vsn;
    use ferry_shared::value::Datum;

    use super::memory::MemorySink;
    use super::postgres::PgSink;
    use super::*;

    /// `public.t`, the table of these tests: `(id bigint PRIMARY KEY, v text)`.
    pub(crate) fn table_t() -> TableName {
        TableName {
            schema: "public".into(),
            name: "t".into(),
        }
    }

    fn record(cols: &[&str]) -> Arc<RecordType> {
        Arc::new(RecordType {
            name: "r".into(),
            fields: cols
                .iter()
                .map(|c| FieldType {
                    name: (*c).to_owned(),
                    column: (*c).to_owned(),
                    pg_type: None,
                    ty: AvroType::Null,
                })
                .collect(),
        })
    }

    /// Builds events of `public.t` sharing one row layout (as a decoded stream does).
    pub(crate) struct Events {
        row: Arc<RecordType>,
        key: Arc<RecordType>,
        table: Arc<TableName>,
    }

    impl Events {
        pub(crate) fn new() -> Events {
            Events {
                row: record(&["id", "v"]),
                key: record(&["id"]),
                table: Arc::new(table_t()),
            }
        }

        /// A snapshot row, insert or update of row `(id, v)`.
        pub(crate) fn upsert(&self, op: Op, vsn: u64, id: i64, v: &str) -> Event {
            Event {
                vsn: Vsn(vsn),
                op,
                table: self.table.clone(),
                row_type: self.row.clone(),
                before: None,
                after: Some(vec![Datum::Long(id), Datum::String(v.into())]),
                key_type: self.key.clone(),
                key: Vec::new(),
            }
        }

        /// A delete of row `id`.
        pub(crate) fn delete(&self, vsn: u64, id: i64) -> Event {
            Event {
                vsn: Vsn(vsn),
                op: Op::Delete,
                table: self.table.clone(),
                row_type: self.row.clone(),
                before: None,
                after: None,
                key_type: self.key.clone(),
                key: vec![Datum::Long(id)],
            }
        }
    }

    fn batch(events: Vec<Event>) -> BTreeMap<TableName, Vec<Event>> {
        BTreeMap::from([(table_t(), events)])
    }

    fn stored(partition: i32, next_offset: i64, vsn: u64) -> Stored {
        Stored {
            topic: "topic".into(),
            partition,
            next_offset,
            last_vsn: Vsn(vsn),
        }
    }

    type Rows = Vec<(String, Option<String>)>;

    /// Positions read back: new partitions start at offset 0, VSN 0; a commit's moves
    /// are what the next reader (another session) sees.
    async fn positions_read_back<S: Sink>(mut a: S, b: S) {
        let parts = vec![("topic".to_owned(), 0), ("topic".to_owned(), 1)];
        let mut read = a.load_positions(&parts).await.unwrap();
        read.sort_by_key(|s| s.partition);
        assert_eq!(read, vec![stored(0, 0, 0), stored(1, 0, 0)]);
        let ev = Events::new();
        let new = stored(0, 3, 2);
        a.commit(
            &mut batch(vec![
                ev.upsert(Op::Read, 1, 1, "a"),
                ev.upsert(Op::Read, 2, 2, "b"),
            ]),
            &mut [(0, &new)],
        )
        .await
        .unwrap();
        let mut read = b.load_positions(&parts).await.unwrap();
        read.sort_by_key(|s| s.partition);
        assert_eq!(read, vec![new, stored(1, 0, 0)]);
    }

    /// A batch whose positions moved under it (another importer took the partition and
    /// wrote past it) is rejected with `Conflict` and writes nothing.
    async fn a_stale_batch_is_rejected<S: Sink>(mut a: S, mut b: S, rows: impl AsyncFn() -> Rows) {
        let parts = vec![("topic".to_owned(), 0)];
        assert_eq!(a.load_positions(&parts).await.unwrap()[0].next_offset, 0);
        assert_eq!(b.load_positions(&parts).await.unwrap()[0].next_offset, 0);
        let ev = Events::new();
        let (counts, _) = a
            .commit(
                &mut batch(vec![ev.upsert(Op::Create, 1, 1, "a")]),
                &mut [(0, &stored(0, 1, 1))],
            )
            .await
            .unwrap();
        assert_eq!(counts[&table_t()].inserts, 1);
        // `b` read offset 0 before `a` committed.
        let stale = b
            .commit(
                &mut batch(vec![
                    ev.upsert(Op::Create, 1, 1, "b"),
                    ev.upsert(Op::Create, 2, 2, "b"),
                ]),
                &mut [(0, &stored(0, 2, 2))],
            )
            .await;
        assert!(matches!(stale, Err(Failure::Conflict(_))), "{stale:?}");
        assert_eq!(rows().await, vec![("1".to_owned(), Some("a".to_owned()))]);
        assert_eq!(
            b.load_positions(&parts).await.unwrap(),
            vec![stored(0, 1, 1)]
        );
        // After reloading, `b` writes from where `a` left it.
        b.commit(
            &mut batch(vec![ev.upsert(Op::Create, 2, 2, "b")]),
            &mut [(1, &stored(0, 2, 2))],
        )
        .await
        .unwrap();
        assert_eq!(
            rows().await,
            vec![
                ("1".to_owned(), Some("a".to_owned())),
                ("2".to_owned(), Some("b".to_owned()))
            ]
        );
    }

    /// Applying a batch again, or any prefix of it, converges to the same rows
    /// (upserts, tolerant deletes); events of a table are applied in VSN order whatever
    /// order they come in.
    async fn replaying_converges<S: Sink>(mut a: S, rows: impl AsyncFn() -> Rows) {
        let ev = Events::new();
        let events = || {
            vec![
                ev.upsert(Op::Read, 1, 1, "one"),
                ev.upsert(Op::Read, 2, 2, "two"),
                ev.upsert(Op::Read, 3, 3, "three"),
                ev.upsert(Op::Update, 5, 2, "two'"),
                // Out of order in the batch: applied after the update above.
                ev.upsert(Op::Update, 6, 2, "two''"),
                ev.delete(4, 3),
                ev.upsert(Op::Create, 7, 4, "four"),
                ev.delete(8, 5),
            ]
        };
        a.load_positions(&[("topic".to_owned(), 0)]).await.unwrap();
        let mut shuffled = events();
        shuffled.swap(3, 4);
        a.commit(&mut batch(shuffled), &mut [(0, &stored(0, 8, 8))])
            .await
            .unwrap();
        let want = vec![
            ("1".to_owned(), Some("one".to_owned())),
            ("2".to_owned(), Some("two''".to_owned())),
            ("4".to_owned(), Some("four".to_owned())),
        ];
        assert_eq!(rows().await, want);
        // The whole batch again, then a prefix, then the rest: the same rows.
        a.commit(&mut batch(events()), &mut [(8, &stored(0, 8, 8))])
            .await
            .unwrap();
        assert_eq!(rows().await, want);
        let all = events();
        a.commit(&mut batch(all[..4].to_vec()), &mut [(8, &stored(0, 8, 8))])
            .await
            .unwrap();
        a.commit(&mut batch(all[4..].to_vec()), &mut [(8, &stored(0, 8, 8))])
            .await
            .unwrap();
        assert_eq!(rows().await, want);
    }

    fn memory() -> (MemorySink, MemorySink) {
        let a = MemorySink::new("g");
        a.create_table(&table_t(), &["id"]);
        let b = a.session("g");
        (a, b)
    }

    fn memory_rows(sink: &MemorySink) -> Rows {
        sink.rows(&table_t())
            .into_iter()
            .map(|(k, row)| {
                (
                    k[0].clone().unwrap_or_default(),
                    row.get("v").cloned().flatten(),
                )
            })
            .collect()
    }

    /// A fresh database with `ferry_metadata` and `t`: two sinks of group `g` on it, and
    /// a client to read it.
    async fn postgres(prefix: &str) -> (PgSink, PgSink, tokio_postgres::Client) {
        let stack = ferry_testkit::Stack::get();
        let db = stack.target.create_database(prefix).await.unwrap();
        let client = stack.target.connect(&db).await.unwrap();
        client.batch_execute(postgres::SETUP_SQL).await.unwrap();
        client
            .batch_execute("CREATE TABLE t (id bigint PRIMARY KEY, v text)")
            .await
            .unwrap();
        let mut sinks = Vec::new();
        for _ in 0..2 {
            let c = stack.target.connect(&db).await.unwrap();
            c.batch_execute(&ferry_shared::value::session_settings_sql())
                .await
                .unwrap();
            sinks.push(PgSink::new(c, None, "g", "target"));
        }
        let b = sinks.pop().unwrap();
        let a = sinks.pop().unwrap();
        (a, b, client)
    }

    async fn postgres_rows(client: &tokio_postgres::Client) -> Rows {
        client
            .query("SELECT id::text, v FROM t ORDER BY id", &[])
            .await
            .unwrap()
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect()
    }

    #[tokio::test]
    async fn memory_positions_read_back() {
        let (a, b) = memory();
        positions_read_back(a, b).await;
    }

    #[tokio::test]
    async fn postgres_positions_read_back() {
        let (a, b, _) = postgres("imp_sink_positions").await;
        positions_read_back(a, b).await;
    }

    #[tokio::test]
    async fn memory_a_stale_batch_is_rejected() {
        let (a, b) = memory();
        let reader = a.clone();
        a_stale_batch_is_rejected(a, b, async || memory_rows(&reader)).await;
    }

    #[tokio::test]
    async fn postgres_a_stale_batch_is_rejected() {
        let (a, b, client) = postgres("imp_sink_cas").await;
        a_stale_batch_is_rejected(a, b, async || postgres_rows(&client).await).await;
    }

    #[tokio::test]
    async fn memory_replaying_converges() {
        let (a, _) = memory();
        let reader = a.clone();
        replaying_converges(a, async || memory_rows(&reader)).await;
    }

    #[tokio::test]
    async fn postgres_replaying_converges() {
        let (a, _, client) = postgres("imp_sink_replay").await;
        replaying_converges(a, async || postgres_rows(&client).await).await;
    }

    #[tokio::test]
    async fn memory_counts_add_up_per_group_and_groups_are_independent() {
        let (mut a, _) = memory();
        let mut replay = a.session("replay");
        let ev = Events::new();
        for sink in [&mut a, &mut replay] {
            sink.load_positions(&[("topic".to_owned(), 0)])
                .await
                .unwrap();
        }
        a.commit(
            &mut batch(vec![ev.upsert(Op::Read, 1, 1, "a"), ev.delete(2, 1)]),
            &mut [(0, &stored(0, 2, 2))],
        )
        .await
        .unwrap();
        // Another group starts at its own position 0, and counts on its own.
        replay
            .commit(
                &mut batch(vec![ev.upsert(Op::Read, 1, 1, "a")]),
                &mut [(0, &stored(0, 1, 1))],
            )
            .await
            .unwrap();
        let want = Counts {
            snapshot_rows: 1,
            deletes: 1,
            ..Counts::default()
        };
        assert_eq!(a.counts(&table_t()), want);
        assert_eq!(replay.counts(&table_t()).total(), 1);
        assert_eq!(a.snapshot().commits, 2);
    }

    #[tokio::test]
    async fn memory_a_missing_table_is_definite_and_writes_nothing() {
        let a = MemorySink::new("g");
        let mut a2 = a.session("g");
        a2.load_positions(&[("topic".to_owned(), 0)]).await.unwrap();
        let ev = Events::new();
        let r = a2
            .commit(
                &mut batch(vec![ev.upsert(Op::Read, 1, 1, "a")]),
                &mut [(0, &stored(0, 1, 1))],
            )
            .await;
        assert!(matches!(r, Err(Failure::Definite(_))), "{r:?}");
        let read = a.load_positions(&[("topic".to_owned(), 0)]).await.unwrap();
        assert_eq!(read, vec![stored(0, 0, 0)]);
    }
}
