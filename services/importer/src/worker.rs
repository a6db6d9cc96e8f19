//! Parallel apply inside one importer process (`importer.workers`): a [`Pool`] of worker
//! tasks, each with its own [`Sink`] (its own destination connection), each applying the
//! partitions given to it. Workers gather records into batches, cut on size
//! (`importer.batch_rows`) or time (`importer.batch_max_ms`), whichever first, or as
//! soon as the consumer has caught up with what the broker sent and nothing more waits
//! for the worker: under a backlog batches stay large, at the end of the log a change
//! does not wait for the timer.
//!
//! Why this keeps exactly once (DESIGN.md §4, §4a):
//!
//! - Partitions are independent: a key's events stay in its partition, and a table with
//!   unique constraints besides its primary key has a single partition. So a partition
//!   belongs to exactly one worker from its assignment to its revocation, and no worker
//!   needs another's order.
//! - A worker writes a batch, its own partitions' positions (compare-and-set, see
//!   [`Sink`]) and the batch's counts in one transaction, exactly as a single
//!   applier did; an event whose VSN is not above its partition's last applied VSN is
//!   skipped by the worker owning that partition.
//! - Counts are added last in each transaction, table by table in name order: workers
//!   updating the same `ferry_metadata.table_counts` rows lock them in one order (no
//!   deadlock) and hold them only until their commit.
//! - Before partitions are given up (revocation, shutdown, a new stream) every worker
//!   flushes and acknowledges. When a rebalance assigns partitions while workers still
//!   own some (the revocation notice was lost), the workers drop their unwritten events
//!   instead: the new assignment starts from the positions stored in the destination.
//! - A worker's failure reaches the session, which ends and restarts from the stored
//!   positions, as after a failed batch with one applier.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ferry_shared::catalog::TableName;
use ferry_shared::codec::EventDecoder;
use ferry_shared::position::Vsn;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::consumer::Record;
use crate::error::Failure;
use crate::event::Event;
use crate::sink::{Applied, Counts, Sink, Stored};

/// What every worker of a session shares.
#[derive(Clone)]
pub(crate) struct Setup {
    /// Decodes records (schemas cached once for all workers).
    pub decoder: EventDecoder,
    /// A batch is cut at this many records...
    pub batch_rows: usize,
    /// ... or this long after its first record.
    pub batch_max: Duration,
}

/// What a worker committed.
#[derive(Debug)]
pub(crate) struct Committed {
    /// The partitions' new positions.
    pub positions: Vec<Stored>,
    /// Events applied per table.
    pub counts: BTreeMap<TableName, Counts>,
    /// How the snapshot rows went in.
    pub applied: Applied,
}

enum Job {
    Assign(Vec<Stored>),
    /// Records; `caught_up`: nothing more was fetched when they were polled.
    Records {
        records: Vec<Record>,
        caught_up: bool,
    },
    /// Write what is pending (and, with `release`, forget the partitions).
    Flush {
        release: bool,
        done: oneshot::Sender<Result<(), Failure>>,
    },
    /// Forget pending events and partitions without writing.
    Discard {
        done: oneshot::Sender<()>,
    },
}

enum Report {
    Committed(Committed),
    Failed(Failure),
}

/// The workers of one session and which partition each owns.
pub(crate) struct Pool {
    jobs: Vec<mpsc::Sender<Job>>,
    tasks: Vec<JoinHandle<()>>,
    reports: mpsc::UnboundedReceiver<Report>,
    /// Commits read while looking for a failure, handed out by [`Pool::committed`].
    stash: VecDeque<Committed>,
    /// topic -> partition -> worker.
    owner: HashMap<String, HashMap<i32, usize>>,
}

/// The worker owning a record's partition, looked up again only when the record's
/// partition or topic `Arc` differs from the last record's (the consumer thread gives
/// the records of a run one `Arc`; a replay's records, merged in VSN order, rarely
/// come in runs).
struct Owners<'a> {
    owner: &'a HashMap<String, HashMap<i32, usize>>,
    last: Option<(Arc<str>, i32, Option<usize>)>,
    /// Lookups in `owner` so far.
    #[cfg(test)]
    lookups: usize,
}

impl<'a> Owners<'a> {
    fn new(owner: &'a HashMap<String, HashMap<i32, usize>>) -> Self {
        Owners {
            owner,
            last: None,
            #[cfg(test)]
            lookups: 0,
        }
    }

    fn of(&mut self, r: &Record) -> Option<usize> {
        if let Some((topic, partition, found)) = &self.last {
            if *partition == r.partition && Arc::ptr_eq(topic, &r.topic) {
                return *found;
            }
        }
        #[cfg(test)]
        {
            self.lookups += 1;
        }
        let found = self
            .owner
            .get(&*r.topic)
            .and_then(|m| m.get(&r.partition))
            .copied();
        self.last = Some((r.topic.clone(), r.partition, found));
        found
    }
}

/// A pool dropped without [`Pool::stop`] (the task that held it was aborted, as a
/// killed process would be) takes its workers with it: none writes on alone.
impl Drop for Pool {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

impl Pool {
    /// Starts one worker per sink (each its own connection).
    pub(crate) fn start<S: Sink>(setup: &Setup, sinks: Vec<S>) -> Pool {
        let (report_tx, reports) = mpsc::unbounded_channel();
        // A job carries up to MAX_RECORDS_PER_ITEM records (split among the workers).
        // Room for more than a batch, so that a worker writing its batch does not
        // hold up the records of the others.
        let capacity = (setup.batch_rows / 64).clamp(16, 256);
        let mut jobs = Vec::with_capacity(sinks.len());
        let mut tasks = Vec::with_capacity(sinks.len());
        for (index, sink) in sinks.into_iter().enumerate() {
            let (tx, rx) = mpsc::channel(capacity);
            let worker = Worker {
                setup: setup.clone(),
                sink,
                parts: HashMap::default(),
                batch: Batch::default(),
                reports: report_tx.clone(),
            };
            jobs.push(tx);
            tasks.push(tokio::spawn(async move {
                let span = tracing::info_span!("apply worker", worker = index);
                let _ = tracing::Instrument::instrument(worker.run(rx), span).await;
            }));
        }
        Pool {
            jobs,
            tasks,
            reports,
            stash: VecDeque::new(),
            owner: HashMap::new(),
        }
    }

    /// Hands newly assigned partitions (at their stored positions) to the workers,
    /// spread evenly.
    pub(crate) async fn assign(&mut self, positions: Vec<Stored>) -> Result<(), Failure> {
        if self.owner.values().any(|m| !m.is_empty()) {
            // An assignment without the revocation before it: what is pending was read
            // from positions the new assignment re-reads; drop it.
            tracing::info!("partitions assigned while others were still held; dropping unwritten events and starting from the stored positions");
            let mut acks = Vec::with_capacity(self.jobs.len());
            for i in 0..self.jobs.len() {
                let (done, ack) = oneshot::channel();
                self.send(i, Job::Discard { done }).await?;
                acks.push(ack);
            }
            for ack in acks {
                if ack.await.is_err() {
                    return Err(self.failure());
                }
            }
            self.owner.clear();
        }
        let mut positions = positions;
        positions.sort_by(|a, b| (&a.topic, a.partition).cmp(&(&b.topic, b.partition)));
        let n = self.jobs.len().max(1);
        let mut shares: Vec<Vec<Stored>> = vec![Vec::new(); n];
        for (i, p) in positions.into_iter().enumerate() {
            self.owner
                .entry(p.topic.clone())
                .or_default()
                .insert(p.partition, i % n);
            shares[i % n].push(p);
        }
        for (i, share) in shares.into_iter().enumerate() {
            if !share.is_empty() {
                self.send(i, Job::Assign(share)).await?;
            }
        }
        Ok(())
    }

    /// Passes records to the workers owning their partitions (a record is dropped when
    /// none does: its partition is not, or no longer, assigned here). Waits while a
    /// worker is busy.
    pub(crate) async fn records(
        &mut self,
        records: Vec<Record>,
        caught_up: bool,
    ) -> Result<(), Failure> {
        let n = self.jobs.len();
        let job = |records| Job::Records { records, caught_up };
        if n == 1 {
            return self.send(0, job(records)).await;
        }
        // Records come in runs of one partition: an item whose records all have one
        // owner goes to it whole. The owner is looked up once per run (the records of a
        // run share their topic's `Arc`).
        let mut owners = Owners::new(&self.owner);
        if let Some(first) = records.first().map(|r| owners.of(r)) {
            if records.iter().all(|r| owners.of(r) == first) {
                return match first {
                    Some(i) => self.send(i, job(records)).await,
                    None => Ok(()),
                };
            }
        }
        let mut shares: Vec<Vec<Record>> = (0..n).map(|_| Vec::new()).collect();
        for r in records {
            if let Some(share) = owners.of(&r).and_then(|i| shares.get_mut(i)) {
                share.push(r);
            }
        }
        for (i, share) in shares.into_iter().enumerate() {
            if !share.is_empty() {
                self.send(i, job(share)).await?;
            }
        }
        Ok(())
    }

    /// Every worker writes what it holds; with `release`, they also forget their
    /// partitions (revocation). Returns once all have committed (or the first failure).
    pub(crate) async fn flush(&mut self, release: bool) -> Result<(), Failure> {
        let mut acks = Vec::with_capacity(self.jobs.len());
        let mut first: Option<Failure> = None;
        for i in 0..self.jobs.len() {
            let (done, ack) = oneshot::channel();
            match self.send(i, Job::Flush { release, done }).await {
                Ok(()) => acks.push(ack),
                Err(f) => {
                    first.get_or_insert(f);
                }
            }
        }
        for ack in acks {
            match ack.await {
                Ok(Ok(())) => {}
                Ok(Err(f)) => {
                    first.get_or_insert(f);
                }
                Err(_) => {
                    let f = self.failure();
                    first.get_or_insert(f);
                }
            }
        }
        if release {
            self.owner.clear();
        }
        match first {
            None => Ok(()),
            Some(f) => Err(f),
        }
    }

    /// The next commit of any worker, or the failure of one (cancel-safe, for
    /// `select!`). Pending forever when no worker runs.
    pub(crate) async fn committed(&mut self) -> Result<Committed, Failure> {
        if let Some(c) = self.stash.pop_front() {
            return Ok(c);
        }
        match self.reports.recv().await {
            Some(Report::Committed(c)) => Ok(c),
            Some(Report::Failed(f)) => Err(f),
            None => std::future::pending().await,
        }
    }

    /// Commits reported so far, without waiting.
    pub(crate) fn drain(&mut self) -> Result<Vec<Committed>, Failure> {
        let mut out: Vec<Committed> = self.stash.drain(..).collect();
        loop {
            match self.reports.try_recv() {
                Ok(Report::Committed(c)) => out.push(c),
                Ok(Report::Failed(f)) => return Err(f),
                Err(_) => return Ok(out),
            }
        }
    }

    /// Stops the workers without writing what they hold or what is queued for them,
    /// and waits until they are gone (a transaction one of them had open is rolled back
    /// when its connection closes). A caller that wants their work written flushes
    /// first.
    pub(crate) async fn stop(mut self) {
        self.jobs.clear();
        for task in std::mem::take(&mut self.tasks) {
            task.abort();
            let _ = task.await;
        }
    }

    async fn send(&mut self, i: usize, job: Job) -> Result<(), Failure> {
        let sent = match self.jobs.get(i) {
            Some(tx) => tx.send(job).await.is_ok(),
            None => false,
        };
        if sent {
            Ok(())
        } else {
            Err(self.failure())
        }
    }

    /// The failure a stopped worker reported (it reports before it stops taking jobs).
    fn failure(&mut self) -> Failure {
        loop {
            match self.reports.try_recv() {
                Ok(Report::Committed(c)) => self.stash.push_back(c),
                Ok(Report::Failed(f)) => return f,
                Err(_) => return Failure::Transient("an apply worker stopped".into()),
            }
        }
    }
}

/// Events reserved at most for a table's first event in a batch.
const MAX_RESERVED_EVENTS: usize = 16_384;

/// A word-at-a-time multiplicative hash (as rustc's FxHash): a few nanoseconds for a
/// topic's name where SipHash took tens.
#[derive(Clone, Copy, Default)]
struct WordHash(u64);

impl WordHash {
    fn add(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
}

impl Hasher for WordHash {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        let mut words = bytes.chunks_exact(8);
        for w in &mut words {
            let mut b = [0u8; 8];
            b.copy_from_slice(w);
            self.add(u64::from_le_bytes(b));
        }
        let rest = words.remainder();
        if !rest.is_empty() {
            let mut b = [0u8; 8];
            b[..rest.len()].copy_from_slice(rest);
            self.add(u64::from_le_bytes(b) ^ ((rest.len() as u64) << 59));
        }
    }

    fn write_u8(&mut self, i: u8) {
        self.add(u64::from(i));
    }

    fn write_i32(&mut self, i: i32) {
        self.add(u64::from(i as u32));
    }
}

/// A partition's position as its worker tracks it.
#[derive(Debug)]
struct Part {
    /// `next_offset` stored in the destination (committed).
    stored_next: i64,
    /// The next offset to accept (past everything taken into the pending batch).
    expected: i64,
    /// Last VSN taken (applied or pending).
    last_vsn: Vsn,
    /// Whether the pending batch took records of this partition (its position then
    /// moves from `stored_next` to `expected`, `last_vsn` in the batch's transaction).
    in_batch: bool,
    /// The table of the partition's last event (shared by the events that follow).
    table: Option<Arc<TableName>>,
}

/// Events not yet written; their positions are in the [`Part`]s marked `in_batch`.
#[derive(Default)]
struct Batch {
    events: BTreeMap<TableName, Vec<Event>>,
    /// The partitions marked `in_batch`.
    parts: Vec<(Arc<str>, i32)>,
    records: usize,
    started: Option<Instant>,
}

struct Worker<S> {
    setup: Setup,
    /// The worker's own destination session.
    sink: S,
    /// Looked up for every record: hashed with [`WordHash`], not SipHash. The keys are
    /// this worker's assigned partitions, named after the migration's tables: keys
    /// chosen to collide would need DDL on the source and could only slow this map.
    parts: HashMap<(Arc<str>, i32), Part, BuildHasherDefault<WordHash>>,
    batch: Batch,
    reports: mpsc::UnboundedSender<Report>,
}

impl<S: Sink> Worker<S> {
    async fn run(mut self, mut jobs: mpsc::Receiver<Job>) {
        let result = self.serve(&mut jobs).await;
        if let Err(f) = result {
            // Reported before `jobs` is dropped: whoever finds this worker gone finds
            // its failure.
            let _ = self.reports.send(Report::Failed(f));
        }
        drop(jobs);
        // `self` goes out of scope here: dropping the sink closes its connection.
    }

    async fn serve(&mut self, jobs: &mut mpsc::Receiver<Job>) -> Result<(), Failure> {
        loop {
            let deadline = self
                .batch
                .started
                .map(|s| tokio::time::Instant::from_std(s + self.setup.batch_max));
            let job = tokio::select! {
                biased;
                _ = async {
                    match deadline {
                        Some(d) => tokio::time::sleep_until(d).await,
                        None => std::future::pending().await,
                    }
                } => {
                    self.flush().await?;
                    continue;
                }
                job = jobs.recv() => job,
            };
            match job {
                None => return Ok(()),
                Some(Job::Assign(positions)) => {
                    for p in positions {
                        tracing::debug!(topic = %p.topic, partition = p.partition, next_offset = p.next_offset, vsn = %p.last_vsn, "assigned");
                        self.parts.insert(
                            (Arc::from(p.topic), p.partition),
                            Part {
                                stored_next: p.next_offset,
                                expected: p.next_offset,
                                last_vsn: p.last_vsn,
                                in_batch: false,
                                table: None,
                            },
                        );
                    }
                }
                Some(Job::Records { records, caught_up }) => {
                    for r in records {
                        self.take(r).await?;
                        if self.batch.records >= self.setup.batch_rows {
                            self.flush().await?;
                        }
                    }
                    if caught_up && jobs.is_empty() {
                        self.flush().await?;
                    }
                }
                Some(Job::Flush { release, done }) => {
                    let result = self.flush().await;
                    if release {
                        self.parts.clear();
                    }
                    let failed = result.is_err();
                    let _ = done.send(result);
                    if failed {
                        return Ok(()); // reported through the acknowledgement
                    }
                }
                Some(Job::Discard { done }) => {
                    self.batch = Batch::default();
                    self.parts.clear();
                    let _ = done.send(());
                }
            }
        }
    }

    /// Takes one record into the batch, or skips it when it was applied already.
    async fn take(&mut self, r: Record) -> Result<(), Failure> {
        let key = (r.topic, r.partition);
        let Some(part) = self.parts.get_mut(&key) else {
            return Ok(()); // not (or no longer) assigned here
        };
        if r.offset < part.expected {
            return Ok(()); // at or below the stored position: applied already
        }
        part.expected = r.offset + 1;
        let at = || format!("{}[{}]@{}", key.0, key.1, r.offset);
        if let Some(payload) = &r.payload {
            let event = Event::decode(
                &self.setup.decoder,
                r.key.as_deref(),
                payload,
                &mut part.table,
                &at,
            )
            .await?;
            if event.vsn > part.last_vsn {
                part.last_vsn = event.vsn;
                // Look up before cloning the name: most events go to a table already there.
                match self.batch.events.get_mut(event.table.as_ref()) {
                    Some(events) => events.push(event),
                    None => {
                        // Room for the rest of the batch: no copies as it grows.
                        let room = self
                            .setup
                            .batch_rows
                            .saturating_sub(self.batch.records)
                            .clamp(1, MAX_RESERVED_EVENTS);
                        let mut events = Vec::with_capacity(room);
                        let table = (*event.table).clone();
                        events.push(event);
                        self.batch.events.insert(table, events);
                    }
                }
            } else {
                tracing::debug!(record = %at(), vsn = %event.vsn, "skipping an event at or below the last applied vsn");
            }
        }
        if !part.in_batch {
            part.in_batch = true;
            self.batch.parts.push(key);
        }
        self.batch.records += 1;
        self.batch.started.get_or_insert_with(Instant::now);
        Ok(())
    }

    /// Writes the batch, its positions and counts in one transaction, then reports the
    /// commit.
    async fn flush(&mut self) -> Result<(), Failure> {
        if self.batch.parts.is_empty() {
            self.batch = Batch::default();
            return Ok(());
        }
        let mut b = std::mem::take(&mut self.batch);
        let mut moved = Vec::with_capacity(b.parts.len());
        for key in &b.parts {
            if let Some(p) = self.parts.get(key) {
                moved.push((
                    key,
                    p.stored_next,
                    Stored {
                        topic: key.0.to_string(),
                        partition: key.1,
                        next_offset: p.expected,
                        last_vsn: p.last_vsn,
                    },
                ));
            }
        }
        let mut moves: Vec<(i64, &Stored)> = moved.iter().map(|(_, e, n)| (*e, n)).collect();
        let writing = Instant::now();
        let (counts, applied) = self.sink.commit(&mut b.events, &mut moves).await?;
        let mut positions = Vec::with_capacity(moved.len());
        for (key, _, new) in moved {
            if let Some(p) = self.parts.get_mut(key) {
                p.stored_next = new.next_offset;
                p.in_batch = false;
            }
            positions.push(new);
        }
        tracing::debug!(
            records = b.records,
            gathered_ms = b
                .started
                .map(|s| writing.duration_since(s).as_millis())
                .unwrap_or(0),
            write_ms = writing.elapsed().as_millis(),
            binary_copy_rows = applied.binary_copy_rows,
            text_copy_rows = applied.text_copy_rows,
            "batch committed"
        );
        let _ = self.reports.send(Report::Committed(Committed {
            positions,
            counts,
            applied,
        }));
        Ok(())
    }
}

#[cfg(test)]
mod tests;
