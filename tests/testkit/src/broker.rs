//! A broker of a test's own: Apache Kafka started by the same `scripts/stack` as the
//! shared stack's (`broker-up`), in a state dir of the test's, so the test can stop,
//! kill and restart it while every other test keeps using the shared broker.
//!
//! It reuses the stack's cached jars; its ports are picked once and kept across
//! restarts (a restarted broker answers at the same address, as a real one does).

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::Context;

/// A running (or stopped) private broker. Stopped and its state dir removed on drop.
#[derive(Debug)]
pub struct PrivateBroker {
    dir: PathBuf,
    /// `127.0.0.1:port` of its PLAINTEXT listener; the same across restarts.
    pub bootstrap: String,
}

impl PrivateBroker {
    /// Starts a broker with an empty log in a fresh state dir under the shared stack's
    /// dir (so that a `scripts/stack down` of the shared stack can find leftovers).
    pub fn start() -> anyhow::Result<PrivateBroker> {
        let stack = crate::Stack::get();
        let dir = stack
            .dir
            .join("private-brokers")
            .join(crate::unique_name("broker"));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        run(&dir, "broker-up")?;
        let bootstrap = format!("127.0.0.1:{}", port(&dir, "PORT_KAFKA")?);
        Ok(PrivateBroker { dir, bootstrap })
    }

    /// Stops the broker cleanly (SIGTERM: a controlled shutdown) and waits until it exited.
    pub fn stop(&self) -> anyhow::Result<()> {
        run(&self.dir, "broker-down")
    }

    /// Kills the broker with SIGKILL (no shutdown: the log is recovered at the next start).
    pub fn kill(&self) -> anyhow::Result<()> {
        run(&self.dir, "broker-kill")
    }

    /// Starts the stopped broker again on the same ports with the log it had; returns
    /// once it answers.
    pub fn restart(&self) -> anyhow::Result<()> {
        run(&self.dir, "broker-up")
    }

    /// The broker's own log (`kafka.log` in its state dir).
    pub fn log_path(&self) -> PathBuf {
        self.dir.join("kafka.log")
    }
}

impl Drop for PrivateBroker {
    fn drop(&mut self) {
        if let Err(e) = run(&self.dir, "broker-down") {
            eprintln!(
                "testkit: stopping the private broker in {}: {e:#}",
                self.dir.display()
            );
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn run(dir: &Path, command: &str) -> anyhow::Result<()> {
    let script = crate::stack::repo_root()?.join("scripts").join("stack");
    let out = Command::new("bash")
        .arg(&script)
        .args([command, "--quiet"])
        .env("FERRY_STACK_DIR", dir)
        .stdin(std::process::Stdio::null())
        .output()
        .with_context(|| format!("running {} {command}", script.display()))?;
    if !out.status.success() {
        anyhow::bail!(
            "`scripts/stack {command}` for {} failed ({}):\n{}{}",
            dir.display(),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

fn port(dir: &Path, key: &str) -> anyhow::Result<u16> {
    let file = dir.join("ports.env");
    let text =
        std::fs::read_to_string(&file).with_context(|| format!("reading {}", file.display()))?;
    text.lines()
        .filter_map(|l| l.split_once('='))
        .find(|(k, _)| k.trim() == key)
        .and_then(|(_, v)| v.trim().parse().ok())
        .with_context(|| format!("{key} is missing from {}", file.display()))
}
