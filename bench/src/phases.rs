//! The three measured phases. Each makes its own databases, migration id and topics,
//! measures Ferry first (CPU and peak RSS only around Ferry's part), then the
//! PostgreSQL reference on the same data, checks that source and target hold the same
//! rows, and removes everything it made, also when it fails.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use ferry_shared::config::{load_from, Config};
use ferry_shared::topics::Destination;
use ferry_testkit::{free_port, unique_name, Stack};
use serde::Serialize;
use tokio_postgres::Client;

use crate::db::{self, Checksum, Database, RefSlot};
use crate::debezium::{self, Peer, PeerRun};
use crate::services::{Ferry, Handles};
use crate::usage::{CpuMark, Usage};

mod cdc;
mod single;

pub use cdc::{cdc, CdcResult};
pub use single::{single, SingleResult, STALL_MS};

/// Set by Ctrl-C: waits stop and the phase cleans up.
pub static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// What every phase needs.
pub struct Ctx {
    pub stack: &'static Stack,
    pub handles: Handles,
    /// `--set section.key=value` overrides for Ferry's configuration.
    pub sets: Vec<String>,
    /// Longest wait for Ferry to finish a phase.
    pub timeout: Duration,
    /// Progress lines on stderr.
    pub verbose: bool,
    /// The Debezium peer, unless `--no-peer`.
    pub peer: Option<Peer>,
}

impl Ctx {
    pub(crate) fn say(&self, text: &str) {
        if self.verbose {
            eprintln!("bench: {text}");
        }
    }
}

/// One phase's resources, removed by [`Phase::cleanup`].
pub(crate) struct Phase {
    pub(crate) dbs: Vec<Database>,
    ferry: Option<Ferry>,
}

impl Phase {
    fn new() -> Phase {
        Phase {
            dbs: Vec::new(),
            ferry: None,
        }
    }

    pub(crate) async fn db(
        &mut self,
        cluster: &ferry_testkit::Cluster,
        prefix: &str,
    ) -> Result<usize> {
        self.dbs.push(Database::create(cluster, prefix).await?);
        Ok(self.dbs.len() - 1)
    }

    /// A source database holding rows `1..=rows` of `t`, and one empty `t` made by
    /// `target_ddl` per prefix of `targets` on the target cluster: the indexes of the
    /// source and the targets.
    pub(crate) async fn filled(
        &mut self,
        ctx: &Ctx,
        phase: &str,
        (source, rows): (&str, i64),
        targets: &[&str],
        target_ddl: &str,
    ) -> Result<(usize, Vec<usize>)> {
        let src = self.db(&ctx.stack.source, source).await?;
        let mut dsts = Vec::with_capacity(targets.len());
        for prefix in targets {
            dsts.push(self.db(&ctx.stack.target, prefix).await?);
        }
        self.dbs[src]
            .connect()
            .await?
            .batch_execute(db::SOURCE_DDL)
            .await?;
        for &d in &dsts {
            self.dbs[d]
                .connect()
                .await?
                .batch_execute(target_ddl)
                .await?;
        }
        ctx.say(&format!("{phase}: filling the source with {rows} rows"));
        db::fill(&self.dbs[src], 1, rows, 2).await?;
        Ok((src, dsts))
    }

    /// A Ferry configuration of a fresh migration from `source` to `target`, with the
    /// `--set` overrides.
    pub(crate) fn config(&self, ctx: &Ctx, source: usize, target: usize) -> Result<Config> {
        let id = unique_name("bench");
        let listen = format!("127.0.0.1:{}", free_port());
        let text = ctx.stack.config_toml(
            &id,
            &self.dbs[source].name,
            &self.dbs[target].name,
            &self.dbs[target].name,
            &listen,
        );
        load_from("bench", &text, Vec::<(String, String)>::new(), &ctx.sets).map_err(|e| {
            let all: Vec<String> = e.iter().map(ToString::to_string).collect();
            anyhow::anyhow!("ferry configuration: {}", all.join("; "))
        })
    }

    /// Starts the coordinator of a fresh migration from `source` to `target`.
    pub(crate) async fn start_ferry(
        &mut self,
        ctx: &Ctx,
        source: usize,
        target: usize,
    ) -> Result<()> {
        let config = self.config(ctx, source, target)?;
        self.ferry = Some(Ferry::start_coordinator(config, ctx.handles.clone()).await?);
        Ok(())
    }

    /// Stops Ferry and deletes the migration's topics (a second migration may follow in
    /// the same phase). Errors are printed, not returned.
    async fn drop_ferry(&mut self) {
        if let Some(mut ferry) = self.ferry.take() {
            if let Err(e) = ferry.stop().await {
                eprintln!("bench: cleanup: {e:#}");
            }
            let kafka = ferry.config.kafka.client_config();
            let prefix = format!("{}.", ferry.topics.prefix());
            match ferry_shared::kafka::list_topics(&kafka, &prefix).await {
                Ok(names) => {
                    if let Err(e) = ferry_shared::kafka::delete_topics(&kafka, &names).await {
                        eprintln!("bench: cleanup: deleting topics {prefix}*: {e}");
                    }
                }
                Err(e) => eprintln!("bench: cleanup: listing topics {prefix}*: {e}"),
            }
        }
    }

    pub(crate) fn ferry(&mut self) -> Result<&mut Ferry> {
        self.ferry.as_mut().context("ferry is not running")
    }

    /// Stops Ferry, deletes the migration's topics, drops the databases (and with them
    /// every slot made in them). Errors are printed, not returned: cleanup must finish.
    async fn cleanup(&mut self) {
        self.drop_ferry().await;
        for db in self.dbs.drain(..) {
            if let Err(e) = db.drop().await {
                eprintln!("bench: cleanup: {e:#}");
            }
        }
    }
}

/// Runs `body` on a fresh [`Phase`] and always cleans up after it.
pub(crate) async fn with_phase<T>(body: impl AsyncFnOnce(&mut Phase) -> Result<T>) -> Result<T> {
    let mut phase = Phase::new();
    let result = body(&mut phase).await;
    phase.cleanup().await;
    result
}

/// `(snapshot rows, change events)` the target's importer has committed.
async fn applied(target: &Client, group: &str) -> (i64, i64) {
    let counts = ferry_shared::metadata::table_counts(target, group)
        .await
        .unwrap_or_default();
    let (mut snapshot, mut changes) = (0u64, 0u64);
    for c in counts.values() {
        snapshot += c.snapshot_rows;
        changes += c.inserts + c.updates + c.deletes;
    }
    let bigint = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
    (bigint(snapshot), bigint(changes))
}

/// Polls the target's counts every 100 ms until `done` says so; fails when a service
/// returns, on Ctrl-C, or after `ctx.timeout`. Returns the time from `since` to the poll
/// that saw it done, and to the first poll that saw any progress.
pub(crate) async fn wait_applied(
    ctx: &Ctx,
    ferry: &mut Ferry,
    target: &Client,
    since: Instant,
    what: &str,
    done: impl Fn((i64, i64)) -> bool,
    started: impl Fn((i64, i64)) -> bool,
) -> Result<(f64, f64)> {
    let group = ferry.topics.import_group(Destination::Target);
    let mut first: Option<f64> = None;
    let mut last_say = Instant::now();
    loop {
        let counts = applied(target, &group).await;
        let t = since.elapsed().as_secs_f64();
        if first.is_none() && started(counts) {
            first = Some(t);
        }
        if done(counts) {
            return Ok((t, first.unwrap_or(t)));
        }
        if let Some(e) = ferry.failure().await {
            return Err(e.context(format!("while waiting for {what}")));
        }
        if INTERRUPTED.load(Ordering::Relaxed) {
            bail!("interrupted while waiting for {what}");
        }
        if since.elapsed() > ctx.timeout {
            bail!(
                "timed out after {:?} waiting for {what} (applied so far: {} snapshot rows, {} changes)",
                ctx.timeout,
                counts.0,
                counts.1
            );
        }
        if last_say.elapsed() > Duration::from_secs(10) {
            ctx.say(&format!(
                "{what}: {} snapshot rows, {} changes applied after {t:.0} s",
                counts.0, counts.1
            ));
            last_say = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Source and target checksums; an error (the run fails) when they differ.
pub(crate) async fn verify(source: &Database, target: &Database) -> Result<Checksum> {
    let (s, t) = tokio::try_join!(db::checksum(source), db::checksum(target))?;
    if s != t {
        bail!(
            "source and target differ: source has {} rows (checksum {}), target {} rows (checksum {})",
            s.rows,
            s.sum,
            t.rows,
            t.sum
        );
    }
    Ok(s)
}

/// The snapshot phase's figures.
#[derive(Debug, Serialize)]
pub struct SnapshotResult {
    pub rows: i64,
    pub ferry_seconds: f64,
    pub ferry_rows_per_second: f64,
    /// Time from the exporter's start to the first applied row.
    pub first_row_seconds: f64,
    pub copy_seconds: f64,
    pub copy_rows_per_second: f64,
    /// With `--staged`: the importer's part (the exporter's is in `staged`).
    pub usage: Usage,
    pub checksum: Checksum,
    pub staged: Option<Staged>,
    /// Ferry's exporter alone into Kafka beside the Debezium peer's snapshot.
    pub peer: Option<SnapshotPeer>,
    /// Why the peer's part failed (the run fails; Ferry's figures stay).
    pub peer_error: Option<String>,
}

/// The snapshot's source half, Ferry against Debezium, both into Kafka.
#[derive(Debug, Serialize)]
pub struct SnapshotPeer {
    /// Ferry's exporter alone (no importer): from its start until the table topic held
    /// every row (the `--staged` measurement), and its first record.
    pub ferry_export: Exported,
    pub ferry_export_rows_per_second: f64,
    /// From its first record to its last, as the peer's rate is measured.
    pub ferry_export_running_rows_per_second: f64,
    pub ferry_export_usage: Usage,
    pub debezium: PeerRun,
}

/// Snapshot: `rows` rows source → Kafka → target, against a binary COPY pipe.
pub async fn snapshot(ctx: &Ctx, rows: i64, staged_mode: bool) -> Result<SnapshotResult> {
    with_phase(async |p: &mut Phase| {
        let (src, dsts) = p
            .filled(
                ctx,
                "snapshot",
                ("bench_snap_src", rows),
                &["bench_snap_dst", "bench_snap_ref"],
                db::TARGET_DDL,
            )
            .await?;
        let (dst, reference) = (dsts[0], dsts[1]);
        let target = p.dbs[dst].connect().await?;

        ctx.say("snapshot: running Ferry");
        let mut staged = None;
        let mark = CpuMark::start()?;
        p.start_ferry(ctx, src, dst).await?;
        let since = Instant::now();
        let ferry = p.ferry()?;
        ferry.start_exporter();
        if staged_mode {
            // The exporter alone until every row is in Kafka, then the importer alone.
            let exported = wait_exported(ctx, ferry, "t", 0, rows, since).await?;
            let export_usage = mark.finish()?;
            let mark = CpuMark::start()?;
            let since = Instant::now();
            ferry.start_importer_after_topic("t").await?;
            let (import_secs, _) = wait_applied(
                ctx,
                ferry,
                &target,
                since,
                "the snapshot on the target",
                |c| c.0 >= rows,
                |c| c.0 > 0,
            )
            .await?;
            staged = Some(Staged {
                exported,
                export_seconds: exported.seconds,
                export_rows_per_second: exported.rate_from_launch(rows),
                export_usage,
                import_seconds: import_secs,
                import_rows_per_second: rows as f64 / import_secs,
                import_usage: mark.finish()?,
            });
        }
        let (secs, first) = if staged_mode {
            (since.elapsed().as_secs_f64(), 0.0)
        } else {
            ferry.start_importer_after_topic("t").await?;
            wait_applied(
                ctx,
                ferry,
                &target,
                since,
                "the snapshot on the target",
                |c| c.0 >= rows,
                |c| c.0 > 0,
            )
            .await?
        };
        let usage = match &staged {
            Some(s) => s.import_usage.clone(),
            None => mark.finish()?,
        };
        ferry.stop().await?;

        ctx.say("snapshot: reference COPY pipe");
        let (copied, copy_secs) = db::copy_pipe(&p.dbs[src], &p.dbs[reference]).await?;
        if copied != rows as u64 {
            bail!("the reference COPY moved {copied} rows, expected {rows}");
        }
        ctx.say("snapshot: checksums");
        let (checksum, reference_sum) = tokio::try_join!(
            verify(&p.dbs[src], &p.dbs[dst]),
            db::checksum(&p.dbs[reference])
        )?;
        if checksum.rows != rows || reference_sum != checksum {
            bail!(
                "the source holds {} rows, expected {rows}, or the reference copy differs",
                checksum.rows
            );
        }
        // A failure of the peer fails the run but keeps Ferry's figures.
        let (peer, peer_error) = match &ctx.peer {
            Some(peer) => {
                match snapshot_peer(ctx, peer, p, src, dst, rows, staged.as_ref()).await {
                    Ok(r) => (Some(r), None),
                    Err(e) => (None, Some(format!("{e:#}"))),
                }
            }
            None => (None, None),
        };
        Ok(SnapshotResult {
            rows,
            ferry_seconds: secs,
            ferry_rows_per_second: rows as f64 / secs,
            first_row_seconds: first,
            copy_seconds: copy_secs,
            copy_rows_per_second: rows as f64 / copy_secs,
            usage,
            checksum,
            staged,
            peer,
            peer_error,
        })
    })
    .await
}

/// The snapshot's source half: Ferry's exporter alone into Kafka (a fresh migration of
/// the same source, unless `--staged` measured it already), then the Debezium peer's
/// snapshot of the same rows into the same broker.
async fn snapshot_peer(
    ctx: &Ctx,
    peer: &Peer,
    p: &mut Phase,
    src: usize,
    dst: usize,
    rows: i64,
    staged: Option<&Staged>,
) -> Result<SnapshotPeer> {
    let (ferry_secs, ferry_usage) = match staged {
        Some(s) => (s.exported, s.export_usage.clone()),
        None => {
            p.drop_ferry().await;
            ctx.say("snapshot: Ferry's exporter alone into Kafka (beside Debezium)");
            let mark = CpuMark::start()?;
            p.start_ferry(ctx, src, dst).await?;
            let since = Instant::now();
            let ferry = p.ferry()?;
            ferry.start_exporter();
            let exported = wait_exported(ctx, ferry, "t", 0, rows, since).await?;
            let usage = mark.finish()?;
            p.drop_ferry().await;
            (exported, usage)
        }
    };
    ctx.say(&format!(
        "snapshot: Debezium {} (Kafka Connect standalone) into Kafka",
        debezium::DEBEZIUM_VERSION
    ));
    let config = p.config(ctx, src, dst)?;
    let slot = RefSlot::create_named(&p.dbs[src], "bench_dbz").await?;
    let run = debezium::run(
        ctx,
        peer,
        &config,
        &p.dbs[src],
        &slot,
        debezium::Mode::Snapshot,
        rows,
    )
    .await?;
    Ok(SnapshotPeer {
        ferry_export: ferry_secs,
        ferry_export_rows_per_second: ferry_secs.rate_from_launch(rows),
        ferry_export_running_rows_per_second: ferry_secs.rate_once_running(rows),
        ferry_export_usage: ferry_usage,
        debezium: run,
    })
}

/// Polls `topic`'s end offsets every 100 ms on the bench's runtime until they add up
/// to `target`; when the first record past `base` and the last were there (since
/// `since`), or `None` after `timeout`.
fn watch_topic(
    config: Config,
    topic: String,
    base: i64,
    target: i64,
    since: Instant,
    timeout: Duration,
) -> tokio::task::JoinHandle<Option<Exported>> {
    tokio::spawn(async move {
        let mut watch = ExportWatch::new(base, target);
        loop {
            let high = topic_records(&config, &topic).await.unwrap_or(0);
            if let Some(exported) = watch.saw(high, since) {
                return Some(exported);
            }
            if since.elapsed() > timeout || INTERRUPTED.load(Ordering::Relaxed) {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
}

/// The sum of `topic`'s end offsets.
async fn topic_records(config: &Config, topic: &str) -> Result<i64> {
    Ok(
        ferry_shared::kafka::watermarks(&config.kafka.client_config(), topic)
            .await?
            .iter()
            .map(|(_, h)| h)
            .sum(),
    )
}

/// `--staged`: the snapshot's two halves measured one after the other.
#[derive(Debug, Serialize)]
pub struct Staged {
    pub exported: Exported,
    pub export_seconds: f64,
    pub export_rows_per_second: f64,
    pub export_usage: Usage,
    pub import_seconds: f64,
    pub import_rows_per_second: f64,
    pub import_usage: Usage,
}

/// When an exporter's records reached Kafka, in seconds since its start.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Exported {
    /// The first record was seen (polled, so up to one poll late).
    pub first_seconds: f64,
    /// Every record was there.
    pub seconds: f64,
}

impl Exported {
    /// `n / seconds`: start-up included.
    pub fn rate_from_launch(&self, n: i64) -> f64 {
        n as f64 / self.seconds
    }

    /// `n` over the time from the first record to the last: the rate once running, as
    /// the Debezium peer's is measured.
    pub fn rate_once_running(&self, n: i64) -> f64 {
        once_running(n, self.seconds, self.first_seconds)
    }
}

/// `n` records over the time from the first one (`first` seconds) to the last
/// (`seconds`), at least 0.1 s: a rate without the start-up.
pub(crate) fn once_running(n: i64, seconds: f64, first: f64) -> f64 {
    n as f64 / (seconds - first).max(0.1)
}

/// What polls of a topic's end offsets saw: when the first record past `base` came,
/// and, once they reach `target`, when the last did.
struct ExportWatch {
    base: i64,
    target: i64,
    first: Option<f64>,
}

impl ExportWatch {
    fn new(base: i64, target: i64) -> Self {
        ExportWatch {
            base,
            target,
            first: None,
        }
    }

    /// After a poll that found `high` records: `Some` once every record is there.
    fn saw(&mut self, high: i64, since: Instant) -> Option<Exported> {
        let t = since.elapsed().as_secs_f64();
        if high > self.base && self.first.is_none() {
            self.first = Some(t);
        }
        (high >= self.target).then(|| Exported {
            first_seconds: self.first.unwrap_or(t),
            seconds: t,
        })
    }
}

/// Polls the table topic's high watermarks every 100 ms until they hold `rows` records
/// more than `base`.
pub(crate) async fn wait_exported(
    ctx: &Ctx,
    ferry: &mut Ferry,
    table: &str,
    base: i64,
    rows: i64,
    since: Instant,
) -> Result<Exported> {
    let topic = ferry
        .topics
        .table(ferry_shared::topics::Stream::Source, "public", table);
    let mut watch = ExportWatch::new(base, base + rows);
    loop {
        let high = topic_records(&ferry.config, &topic).await.unwrap_or(0);
        if let Some(exported) = watch.saw(high, since) {
            return Ok(exported);
        }
        if let Some(e) = ferry.failure().await {
            return Err(e.context("while waiting for the export"));
        }
        if INTERRUPTED.load(Ordering::Relaxed) {
            bail!("interrupted while waiting for the export");
        }
        if since.elapsed() > ctx.timeout {
            bail!("timed out waiting for the export ({high} of {rows} records in Kafka)");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
