//! The Debezium peer (issue #19): Debezium's PostgreSQL connector on Kafka Connect
//! standalone (`org.apache.kafka.connect.cli.ConnectStandalone`, one JVM), writing to the
//! stack's broker, measured in the same run as Ferry on the same source data.
//!
//! `scripts/bench` fetches the jars from Maven Central (`scripts/debezium/pom.xml`) into
//! a cache folder and names it in `FERRY_BENCH_DEBEZIUM_LIBS` (the JVM in
//! `FERRY_BENCH_JAVA`). Each run of the peer has its own slot and publication (made by
//! the phase, before the change load, like the `pg_recvlogical` reference's), its own
//! topic prefix and its own work folder (worker and connector properties, the offsets
//! file, the JVM's log); the topics, slot and publication are removed after it, also
//! when it fails. The figures: the time from the JVM's launch until the table topic's
//! end offsets hold every record, the JVM's CPU (`utime + stime` of `/proc/<pid>/stat`,
//! every thread, start-up and JIT included) and its peak RSS (`VmHWM`). The count is
//! checked: the topic must hold exactly one record per row or change, no more.
//!
//! Every setting written here is listed in docs/benchmarks.md: change both together.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use ferry_shared::config::Config;
use ferry_shared::kafka::TopicSpec;
use ferry_testkit::unique_name;
use serde::Serialize;

use crate::db::{Database, RefSlot};
use crate::phases::{Ctx, INTERRUPTED};
use crate::usage::{self, CpuMark, Usage};

/// The Debezium release the pom pins (scripts/debezium/pom.xml, scripts/bench).
pub const DEBEZIUM_VERSION: &str = "3.6.1.Final";

/// Where the peer's jars and JVM are (set by `scripts/bench`).
#[derive(Clone, Debug)]
pub struct Peer {
    pub java: PathBuf,
    pub libs: PathBuf,
}

impl Peer {
    /// From `FERRY_BENCH_DEBEZIUM_LIBS` and `FERRY_BENCH_JAVA` (default `java`).
    pub fn from_env() -> Result<Peer> {
        let libs = std::env::var_os("FERRY_BENCH_DEBEZIUM_LIBS").context(
            "FERRY_BENCH_DEBEZIUM_LIBS is not set: run the bench through scripts/bench, which fetches Debezium, or pass --no-peer",
        )?;
        let libs = PathBuf::from(libs);
        if !libs
            .join(format!(
                "debezium-connector-postgres-{DEBEZIUM_VERSION}.jar"
            ))
            .is_file()
        {
            bail!(
                "{} holds no debezium-connector-postgres-{DEBEZIUM_VERSION}.jar: run scripts/bench (it fetches it), or pass --no-peer",
                libs.display()
            );
        }
        let java = std::env::var_os("FERRY_BENCH_JAVA")
            .map_or_else(|| PathBuf::from("java"), PathBuf::from);
        Ok(Peer { java, libs })
    }
}

/// What the connector does on start.
#[derive(Clone, Copy, Debug)]
pub enum Mode {
    /// `snapshot.mode=initial`: every row of `t`, then streaming (idle).
    Snapshot,
    /// `snapshot.mode=no_data`: only the changes after the slot's position.
    Changes,
}

/// One measured run of the peer.
#[derive(Clone, Debug, Serialize)]
pub struct PeerRun {
    /// Records expected in the table topic (rows or changes).
    pub expected: i64,
    /// Records the table topic holds once the peer has stopped.
    pub records: i64,
    /// From the JVM's launch until the topic held `expected` records.
    pub seconds: f64,
    /// `expected / seconds`: start-up (JVM, worker, connector, snapshot set-up) included.
    pub records_per_second: f64,
    /// From the JVM's launch until the first record was in the topic.
    pub first_record_seconds: f64,
    /// Records per second from the first record to the last: the rate once running,
    /// what the ratio compares (start-up left out, in Debezium's favour).
    pub running_records_per_second: f64,
    /// CPU seconds of the JVM (Kafka Connect + Debezium) until then, start-up and JIT
    /// compilation included.
    pub jvm_cpu_seconds: f64,
    /// The JVM's CPU seconds from the first record to the last (once running).
    pub jvm_running_cpu_seconds: f64,
    pub jvm_peak_rss_bytes: u64,
    /// The machine during the run (the bench process, the broker, PostgreSQL).
    pub usage: Usage,
}

/// The connector's and worker's settings of one run.
struct Settings<'a> {
    name: &'a str,
    prefix: &'a str,
    db: &'a Database,
    slot: &'a RefSlot,
    mode: Mode,
    kafka_bootstrap: &'a str,
    rest_port: u16,
    offsets: &'a Path,
    /// Rows of the table (the snapshot's chunks are sized from it).
    rows: i64,
}

/// Snapshot threads: one per core of this machine.
const SNAPSHOT_THREADS: i64 = 2;
/// Most rows in one snapshot chunk. Debezium 3.6 holds a whole chunk in memory: a
/// 10M-row table in two chunks of 5M rows ran out of a 2 GiB heap (2M rows in two
/// chunks peaked at 2.2 GiB RSS).
const CHUNK_ROWS: i64 = 100_000;

/// `snapshot.max.threads.multiplier` for chunks of at most [`CHUNK_ROWS`] rows.
fn chunk_multiplier(rows: i64) -> i64 {
    ((rows + SNAPSHOT_THREADS * CHUNK_ROWS - 1) / (SNAPSHOT_THREADS * CHUNK_ROWS)).max(1)
}

/// Kafka Connect worker properties (standalone).
fn worker_properties(s: &Settings<'_>) -> String {
    format!(
        "# written by ferry-bench (docs/benchmarks.md, the Debezium peer)
bootstrap.servers={bootstrap}
listeners=http://127.0.0.1:{port}
offset.storage.file.filename={offsets}
offset.flush.interval.ms=10000
key.converter=org.apache.kafka.connect.json.JsonConverter
value.converter=org.apache.kafka.connect.json.JsonConverter
key.converter.schemas.enable=false
value.converter.schemas.enable=false
# The worker's producer: large batches, a short linger, LZ4 as Ferry's producer,
# idempotent with acks=all as Ferry's.
producer.batch.size=1048576
producer.linger.ms=20
producer.compression.type=lz4
producer.buffer.memory=134217728
producer.acks=all
producer.enable.idempotence=true
producer.max.in.flight.requests.per.connection=5
# Connector classes from the classpath's ServiceLoader manifests (no scan: quicker start).
plugin.discovery=service_load
# The bench makes the topic beforehand (the stack's broker creates none on produce).
topic.creation.enable=false
",
        bootstrap = s.kafka_bootstrap,
        port = s.rest_port,
        offsets = s.offsets.display(),
    )
}

/// Debezium's connector properties.
fn connector_properties(s: &Settings<'_>) -> String {
    let c = &s.db.cluster;
    let mode = match s.mode {
        Mode::Snapshot => "initial",
        Mode::Changes => "no_data",
    };
    format!(
        "# written by ferry-bench (docs/benchmarks.md, the Debezium peer)
name={name}
connector.class=io.debezium.connector.postgresql.PostgresConnector
tasks.max=1
database.hostname={host}
database.port={port}
database.user={user}
database.password={password}
database.dbname={dbname}
topic.prefix={prefix}
table.include.list=public.t
plugin.name=pgoutput
slot.name={slot}
publication.name={publication}
publication.autocreate.mode=disabled
slot.drop.on.stop=false
snapshot.mode={mode}
snapshot.max.threads={threads}
snapshot.max.threads.multiplier={multiplier}
snapshot.fetch.size=20480
max.batch.size=20480
max.queue.size=81920
max.queue.size.in.bytes=0
poll.interval.ms=50
tombstones.on.delete=false
",
        name = s.name,
        host = c.host,
        port = c.port,
        user = c.user,
        password = c.password,
        dbname = s.db.name,
        prefix = s.prefix,
        slot = s.slot.slot,
        publication = s.slot.publication,
        threads = SNAPSHOT_THREADS,
        multiplier = chunk_multiplier(s.rows),
    )
}

const LOG4J: &str = "# written by ferry-bench: WARN and above to standard output (connect.log)
appender.out.type=Console
appender.out.name=STDOUT
appender.out.layout.type=PatternLayout
appender.out.layout.pattern=[%d] %p %m (%c)%n
rootLogger.level=WARN
rootLogger.appenderRef.out.ref=STDOUT
logger.debezium.name=io.debezium
logger.debezium.level=INFO
";

/// The sum of the topic's end offsets (its record count: the peer's producer is
/// idempotent, not transactional, so no control records).
async fn records_in(config: &Config, topic: &str) -> i64 {
    ferry_shared::kafka::watermarks(&config.kafka.client_config(), topic)
        .await
        .map(|w| w.iter().map(|(_, h)| h).sum())
        .unwrap_or(0)
}

/// The first errors of the JVM's log, on one line, for an error message.
fn log_errors(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let errors: Vec<&str> = text
        .lines()
        .filter(|l| l.contains(" ERROR ") || l.contains("Exception: "))
        .take(3)
        .collect();
    if errors.is_empty() {
        "no error in its log".into()
    } else {
        errors.join(" / ")
    }
}

/// Where a running peer's JVM pid is kept, beside its work folders: a bench killed with
/// SIGKILL runs no cleanup, and its JVM would go on reading the source.
fn pid_file(stack_dir: &Path) -> PathBuf {
    stack_dir.join("debezium.pid")
}

/// Ends the JVM an earlier, killed run left running: the pid in [`pid_file`], if that
/// process is still a Kafka Connect worker started from this stack's folder.
async fn kill_leftover_jvm(stack_dir: &Path) {
    let file = pid_file(stack_dir);
    let Ok(pid) = std::fs::read_to_string(&file) else {
        return;
    };
    let pid = pid.trim().to_owned();
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let cmdline = String::from_utf8_lossy(&cmdline);
    let ours = cmdline.contains("ConnectStandalone")
        && cmdline.contains(&*stack_dir.join("debezium").to_string_lossy());
    if ours {
        eprintln!("bench: killing the Debezium peer's JVM (pid {pid}) an interrupted run left");
        let _ = tokio::process::Command::new("kill")
            .args(["-KILL", &pid])
            .status()
            .await;
    }
    let _ = std::fs::remove_file(&file);
}

/// Removes what earlier runs of the peer left: their work folders (logs), and the
/// topics of a run that was killed before its cleanup (the bench's stack is its own, so
/// every `bench_dbz_*` topic there is one of those). Errors are printed.
pub async fn clear_leftovers(ctx: &Ctx) {
    kill_leftover_jvm(&ctx.stack.dir).await;
    let _ = std::fs::remove_dir_all(ctx.stack.dir.join("debezium"));
    let text = ctx.stack.config_toml(
        "bench_dbz_cleanup",
        "postgres",
        "postgres",
        "postgres",
        "127.0.0.1:9",
    );
    let Ok(config) = ferry_shared::config::load_from(
        "bench",
        &text,
        Vec::<(String, String)>::new(),
        &Vec::<String>::new(),
    ) else {
        return;
    };
    let client = config.kafka.client_config();
    match ferry_shared::kafka::list_topics(&client, "bench_dbz_").await {
        Ok(names) if !names.is_empty() => {
            eprintln!(
                "bench: deleting {} Debezium peer topic(s) an interrupted run left",
                names.len()
            );
            if let Err(e) = ferry_shared::kafka::delete_topics(&client, &names).await {
                eprintln!("bench: deleting bench_dbz_* topics: {e}");
            }
        }
        Ok(_) => {}
        Err(e) => eprintln!("bench: listing bench_dbz_* topics: {e}"),
    }
}

/// Runs the peer on table `t` of `db` from `slot` until its topic holds `expected`
/// records, then stops it and removes its topics, slot and publication. `kafka` is a
/// Ferry configuration of the stack's broker (its client settings and partitions).
pub async fn run(
    ctx: &Ctx,
    peer: &Peer,
    kafka: &Config,
    db: &Database,
    slot: &RefSlot,
    mode: Mode,
    expected: i64,
) -> Result<PeerRun> {
    let prefix = unique_name("bench_dbz");
    let topic = format!("{prefix}.public.t");
    let dir = ctx.stack.dir.join("debezium").join(&prefix);
    let result = run_in(
        ctx, peer, kafka, db, slot, mode, expected, &prefix, &topic, &dir,
    )
    .await;
    // Cleanup always runs; its errors are printed, not returned.
    let client = kafka.kafka.client_config();
    match ferry_shared::kafka::list_topics(&client, &format!("{prefix}.")).await {
        Ok(names) => {
            if let Err(e) = ferry_shared::kafka::delete_topics(&client, &names).await {
                eprintln!("bench: cleanup: deleting topics {prefix}.*: {e}");
            }
        }
        Err(e) => eprintln!("bench: cleanup: listing topics {prefix}.*: {e}"),
    }
    if let Err(e) = slot.drop(db).await {
        eprintln!(
            "bench: cleanup: the Debezium peer's slot {}: {e:#}",
            slot.slot
        );
    }
    // The work folder stays (its log and settings) until the next run of the bench.
    result
}

#[allow(clippy::too_many_arguments)]
async fn run_in(
    ctx: &Ctx,
    peer: &Peer,
    kafka: &Config,
    db: &Database,
    slot: &RefSlot,
    mode: Mode,
    expected: i64,
    prefix: &str,
    topic: &str,
    dir: &Path,
) -> Result<PeerRun> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    // The topic is made beforehand with Ferry's partition count (a user creates it, or
    // lets the broker do it; the stack's broker does not create topics on produce).
    let partitions = i32::try_from(kafka.migration.partitions).unwrap_or(4);
    ferry_shared::kafka::ensure_topics(
        &kafka.kafka.client_config(),
        &[TopicSpec {
            name: topic.to_owned(),
            partitions,
            replication: 1,
            compacted: false,
        }],
    )
    .await
    .with_context(|| format!("creating the Debezium peer's topic {topic}"))?;
    let offsets = dir.join("offsets");
    let settings = Settings {
        name: prefix,
        prefix,
        db,
        slot,
        mode,
        kafka_bootstrap: &ctx.stack.kafka_bootstrap,
        rest_port: ferry_testkit::free_port(),
        offsets: &offsets,
        rows: expected,
    };
    let worker = dir.join("worker.properties");
    let connector = dir.join("connector.properties");
    let log4j = dir.join("log4j2.properties");
    let log = dir.join("connect.log");
    std::fs::write(&worker, worker_properties(&settings))?;
    std::fs::write(&connector, connector_properties(&settings))?;
    std::fs::write(&log4j, LOG4J)?;
    let out = std::fs::File::create(&log)?;
    let err = out.try_clone()?;

    let mark = CpuMark::start()?;
    let started = Instant::now();
    // The JVM options of Kafka's connect-standalone script (heap 256 MiB – 2 GiB, G1
    // with Kafka's pause target); an out-of-memory error ends the JVM (the run fails
    // at once instead of waiting on a JVM that only collects garbage).
    let mut child = tokio::process::Command::new(&peer.java)
        .args([
            "-Xms256m",
            "-Xmx2g",
            "-XX:+UseG1GC",
            "-XX:MaxGCPauseMillis=20",
        ])
        .args([
            "-XX:InitiatingHeapOccupancyPercent=35",
            "-XX:+ExplicitGCInvokesConcurrent",
        ])
        .args(["-XX:+ExitOnOutOfMemoryError", "-Djava.awt.headless=true"])
        .arg(format!("-Dlog4j2.configurationFile={}", log4j.display()))
        .arg("-cp")
        .arg(format!("{}/*", peer.libs.display()))
        .arg("org.apache.kafka.connect.cli.ConnectStandalone")
        .arg(&worker)
        .arg(&connector)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {} (Java 17+)", peer.java.display()))?;
    let pid = child.id().context("the Debezium peer's JVM has no pid")?;
    let pid_file = pid_file(&ctx.stack.dir);
    std::fs::write(&pid_file, pid.to_string())?;

    let measured = async {
        let mut first: Option<(f64, f64)> = None;
        let mut last_say = Instant::now();
        loop {
            let n = records_in(kafka, topic).await;
            let t = started.elapsed().as_secs_f64();
            if first.is_none() && n > 0 {
                first = Some((t, usage::pid_cpu(pid)?));
            }
            if n >= expected {
                let cpu = usage::pid_cpu(pid)?;
                let rss = usage::pid_peak_rss(pid)?;
                let (first_t, first_cpu) = first.unwrap_or((t, cpu));
                return Ok((t, first_t, cpu, cpu - first_cpu, rss));
            }
            if let Some(status) = child.try_wait()? {
                bail!(
                    "the Debezium peer's JVM exited ({status}) with {n} of {expected} records in {topic}: {}; see {}",
                    log_errors(&log),
                    log.display()
                );
            }
            if INTERRUPTED.load(Ordering::Relaxed) {
                bail!("interrupted while waiting for the Debezium peer");
            }
            if started.elapsed() > ctx.timeout {
                bail!(
                    "timed out after {:?} waiting for the Debezium peer ({n} of {expected} records in {topic}); its log: {}",
                    ctx.timeout,
                    log.display()
                );
            }
            if last_say.elapsed() > Duration::from_secs(10) {
                ctx.say(&format!("debezium: {n} of {expected} records in Kafka after {t:.0} s"));
                last_say = Instant::now();
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    .await;
    let usage = mark.finish();
    // Give a late duplicate time to show, then stop the worker (SIGTERM: Connect
    // stops its task and commits offsets; SIGKILL after 30 s).
    if measured.is_ok() {
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    let _ = tokio::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .await;
    if tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .is_err()
    {
        eprintln!("bench: the Debezium peer did not stop within 30 s of SIGTERM; killing it");
        let _ = child.kill().await;
    }
    let _ = std::fs::remove_file(&pid_file);
    let (seconds, first, cpu, running_cpu, rss) = measured?;
    let records = records_in(kafka, topic).await;
    if records != expected {
        bail!(
            "the Debezium peer wrote {records} records to {topic}, expected exactly {expected} (one per {})",
            match mode {
                Mode::Snapshot => "row",
                Mode::Changes => "change",
            }
        );
    }
    Ok(PeerRun {
        expected,
        records,
        seconds,
        records_per_second: expected as f64 / seconds,
        first_record_seconds: first,
        running_records_per_second: crate::phases::once_running(expected, seconds, first),
        jvm_cpu_seconds: cpu,
        jvm_running_cpu_seconds: running_cpu,
        jvm_peak_rss_bytes: rss,
        usage: usage?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_jvm_an_interrupted_run_left_is_killed_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let work = dir.path().join("debezium").join("run1");
        // Stand-ins whose command lines look like the peer's JVM, or do not; returned
        // once they run sh (until its exec, a child's command line is the test's).
        let start = |args: &[&str]| {
            let child = std::process::Command::new("sh")
                .args(["-c", "sleep 60; true"])
                .args(args)
                .spawn()
                .unwrap();
            let cmdline = format!("/proc/{}/cmdline", child.id());
            let started = Instant::now();
            while !String::from_utf8_lossy(&std::fs::read(&cmdline).unwrap_or_default())
                .contains("sleep 60")
            {
                assert!(
                    started.elapsed() < Duration::from_secs(10),
                    "sh did not start"
                );
                std::thread::sleep(Duration::from_millis(5));
            }
            child
        };
        let mut ours = start(&["ConnectStandalone", &work.to_string_lossy()]);
        std::fs::write(pid_file(dir.path()), ours.id().to_string()).unwrap();
        kill_leftover_jvm(dir.path()).await;
        let status = ours.wait().unwrap();
        assert!(!status.success(), "{status}");
        assert!(!pid_file(dir.path()).exists());

        // A pid reused by another process is left alone.
        let mut other = start(&["ConnectStandalone", "/elsewhere/debezium"]);
        std::fs::write(pid_file(dir.path()), other.id().to_string()).unwrap();
        kill_leftover_jvm(dir.path()).await;
        assert!(other.try_wait().unwrap().is_none());
        other.kill().unwrap();
        let _ = other.wait();
        // No file: nothing to do.
        kill_leftover_jvm(dir.path()).await;
    }

    #[test]
    fn chunks_hold_at_most_chunk_rows() {
        assert_eq!(chunk_multiplier(0), 1);
        assert_eq!(chunk_multiplier(200_000), 1);
        assert_eq!(chunk_multiplier(200_001), 2);
        assert_eq!(chunk_multiplier(10_000_000), 50);
        for rows in [1, 199_999, 1_000_000, 3_333_333, 10_000_000] {
            let chunks = SNAPSHOT_THREADS * chunk_multiplier(rows);
            assert!(
                rows / chunks <= CHUNK_ROWS,
                "{rows} rows in {chunks} chunks"
            );
        }
    }

    #[test]
    fn the_log_gives_its_first_errors_on_one_line() {
        let dir = std::env::temp_dir().join(unique_name("bench_dbz_log"));
        let _ = std::fs::create_dir_all(&dir);
        let log = dir.join("connect.log");
        let text = "[t] INFO fine (x)\n[t] ERROR Failed to start connector c (y)\n\
                    org.apache.kafka.common.config.ConfigException: Missing required configuration\n\
                    \tat a.b.C.d(C.java:1)\n";
        assert!(std::fs::write(&log, text).is_ok());
        let line = log_errors(&log);
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(
            line,
            "[t] ERROR Failed to start connector c (y) / org.apache.kafka.common.config.ConfigException: Missing required configuration"
        );
        assert_eq!(
            log_errors(Path::new("/nonexistent/connect.log")),
            "no error in its log"
        );
    }
}
