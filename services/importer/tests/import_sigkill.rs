//! The `ferry-importer` binary killed with SIGKILL at random moments, alone and as
//! replicas of one group, against real PostgreSQL and the local broker: the destination
//! ends equal to the stream, with exact counts.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use anyhow::Result;
use common::*;
use ferry_testkit::{wait_until, Stack};
use rand::Rng;

/// Runs `ferry-importer` processes on a fixture's configuration, logging to one file.
struct Binary {
    _dir: tempfile::TempDir,
    config_path: std::path::PathBuf,
    log_path: std::path::PathBuf,
}

impl Binary {
    fn new(f: &Fixture) -> Result<Binary> {
        let dir = tempfile::tempdir()?;
        let config_path = dir.path().join("ferry.toml");
        let mut toml = f.config_toml.clone();
        if let Ok(d) = std::env::var("IMPORTER_TEST_KAFKA_DEBUG") {
            toml.push_str(&format!("\"debug\" = \"{d}\"\n"));
        }
        std::fs::write(&config_path, toml)?;
        let log_path = match std::env::var("IMPORTER_TEST_LOG") {
            Ok(p) => std::path::PathBuf::from(p),
            Err(_) => dir.path().join("importer.log"),
        };
        Ok(Binary {
            _dir: dir,
            config_path,
            log_path,
        })
    }

    /// Starts one replica, a dynamic member of the group (no static membership): a
    /// killed replica's partitions move only when the broker evicts it after the
    /// importer's session timeout. `instance` goes into its environment
    /// (`IMPORTER_TEST_INSTANCE`) to tell the processes apart.
    fn spawn(&self, instance: &str) -> Result<Child> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)?;
        Ok(Child(
            std::process::Command::new(env!("CARGO_BIN_EXE_ferry-importer"))
                .arg("--config")
                .arg(&self.config_path)
                .env("IMPORTER_TEST_INSTANCE", instance)
                .env(
                    "FERRY_LOG",
                    std::env::var("IMPORTER_TEST_FERRY_LOG").unwrap_or_else(|_| "info".into()),
                )
                .stdout(std::process::Stdio::null())
                .stderr(log)
                .spawn()?,
        ))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_binary_killed_with_sigkill_at_random_moments_ends_equal() -> Result<()> {
    sigkill_at_random_moments(Fixture::new("imp_sigkill", DDL, DDL, 3, 100).await?).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn four_workers_the_binary_killed_with_sigkill_at_random_moments_ends_equal() -> Result<()> {
    let f = Fixture::new("imp_sigkill4", DDL, DDL, 6, 100).await?;
    sigkill_at_random_moments(f.with_workers(4)).await
}

async fn sigkill_at_random_moments(mut f: Fixture) -> Result<()> {
    let bin = Binary::new(&f)?;
    f.snapshot(400).await?;
    let mut rng = rand::rng();
    let rounds: usize = std::env::var("IMPORTER_TEST_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(10);
    for _ in 0..rounds {
        let mut child = bin.spawn("importer-0")?;
        f.changes(200, 600).await?;
        f.duplicates(20).await?;
        let ms = rng.random_range(0..2500);
        tokio::time::sleep(Duration::from_millis(ms)).await;
        child.sigkill()?;
    }
    let _child = bin.spawn("importer-0")?;
    f.wait_caught_up().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_binary_replicas_one_sigkilled_one_added_then_restarted() -> Result<()> {
    let mut f = Fixture::new("imp_bin_replicas", DDL, DDL, 6, 100).await?;
    let bin = Binary::new(&f)?;
    f.snapshot(600).await?;
    let mut r0 = bin.spawn("r0")?;
    let _r1 = bin.spawn("r1")?;
    let _r2 = bin.spawn("r2")?;
    f.changes(1000, 900).await?;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    r0.sigkill()?;
    f.changes(1000, 900).await?;
    let _r3 = bin.spawn("r3")?;
    f.duplicates(100).await?;
    f.changes(500, 900).await?;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let _r0 = bin.spawn("r0")?;
    f.changes(500, 900).await?;
    f.wait_caught_up().await
}

/// Two replicas share the group; one is killed with SIGKILL and not restarted. The
/// broker evicts it after the importer's session timeout, its partitions move to the
/// survivor, and everything written after the kill is applied exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_replica_killed_with_sigkill_is_evicted_and_the_survivor_takes_its_partitions(
) -> Result<()> {
    let mut f = Fixture::new("imp_evict", DDL, DDL, 4, 100).await?;
    let bin = Binary::new(&f)?;
    f.snapshot(400).await?;
    let mut r0 = bin.spawn("r0")?;
    let _r1 = bin.spawn("r1")?;
    f.wait_caught_up().await?;
    // Both members hold partitions before the kill.
    let group = f.group();
    let bootstrap = Stack::get().kafka_bootstrap.clone();
    wait_until("both replicas to hold partitions", WAIT, || {
        let (bootstrap, group) = (bootstrap.clone(), group.clone());
        async move {
            let members = group_members(&bootstrap, &group).await?;
            Ok((members.len() == 2 && members.iter().all(|m| *m > 0)).then_some(()))
        }
    })
    .await?;

    r0.sigkill()?;
    let killed = std::time::Instant::now();
    f.changes(800, 900).await?;
    f.duplicates(50).await?;
    f.wait_caught_up().await?;
    let moved = killed.elapsed();
    let members = group_members(&bootstrap, &group).await?;
    assert_eq!(members, vec![4], "the survivor holds every partition");
    // Well under librdkafka's default session timeout (45 s): the importer's own 10 s.
    assert!(
        moved < Duration::from_secs(30),
        "the killed replica's partitions took {moved:?} to be applied by the survivor"
    );
    eprintln!("partitions of the killed replica applied by the survivor {moved:?} after the kill");
    Ok(())
}

/// The partition count each member of consumer group `group` holds, as the broker
/// has it (empty while the group rebalances).
async fn group_members(bootstrap: &str, group: &str) -> Result<Vec<usize>> {
    let (bootstrap, group) = (bootstrap.to_owned(), group.to_owned());
    tokio::task::spawn_blocking(move || -> Result<Vec<usize>> {
        use rdkafka::consumer::Consumer;
        let consumer: rdkafka::consumer::BaseConsumer = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", &bootstrap)
            .create()?;
        let list = consumer.fetch_group_list(Some(&group), Duration::from_secs(10))?;
        let mut out = Vec::new();
        for g in list.groups() {
            if g.name() != group || g.state() != "Stable" {
                continue;
            }
            for m in g.members() {
                out.push(assigned_partitions(m.assignment().unwrap_or_default()));
            }
        }
        out.sort_unstable();
        Ok(out)
    })
    .await?
}

/// The number of partitions in a consumer protocol `Assignment` (version, then an array
/// of (topic, array of partition)).
fn assigned_partitions(bytes: &[u8]) -> usize {
    let i32_at = |at: usize| -> Option<i32> {
        bytes
            .get(at..at + 4)
            .map(|b| i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    };
    let mut at = 2; // version (int16)
    let Some(topics) = i32_at(at) else { return 0 };
    at += 4;
    let mut n = 0usize;
    for _ in 0..topics.max(0) {
        let Some(len) = bytes
            .get(at..at + 2)
            .map(|b| i16::from_be_bytes([b[0], b[1]]))
        else {
            return n;
        };
        at += 2 + usize::try_from(len.max(0)).unwrap_or(0);
        let Some(parts) = i32_at(at) else { return n };
        at += 4 + 4 * usize::try_from(parts.max(0)).unwrap_or(0);
        n += usize::try_from(parts.max(0)).unwrap_or(0);
    }
    n
}

/// Kills the process when dropped, so that a failing test leaves nothing running.
struct Child(std::process::Child);

impl Child {
    fn sigkill(&mut self) -> Result<()> {
        self.0.kill()?; // SIGKILL
        self.0.wait()?;
        Ok(())
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
