//! `scripts/stack` itself: idempotent `up`, `status`, and a `down` that leaves no
//! process behind (checked on a second stack with its own state dir and ports, so the
//! shared stack other tests use is never stopped).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test helpers

use std::path::Path;
use std::process::{Command, Output};

use ferry_testkit::Stack;

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .parent()
        .unwrap()
}

fn stack(args: &[&str], dir: Option<&Path>) -> Output {
    let mut cmd = Command::new("bash");
    cmd.arg(repo().join("scripts/stack")).args(args);
    if let Some(d) = dir {
        cmd.env("FERRY_STACK_DIR", d);
    }
    cmd.output().unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// True if `pid` is a live (not zombie) process.
fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // "pid (comm) S ..." — state is the first field after the last ')'.
        Ok(stat) => stat
            .rsplit_once(')')
            .map(|(_, rest)| rest.trim_start())
            .is_some_and(|r| !r.starts_with('Z')),
        Err(_) => false,
    }
}

#[test]
fn up_twice_then_status_reports_running() {
    let s = Stack::get();
    let dir = s.dir.clone();
    for _ in 0..2 {
        let o = stack(&["up"], Some(&dir));
        assert!(o.status.success(), "{}", text(&o));
        let out = text(&o);
        assert!(
            out.contains(&s.kafka_bootstrap),
            "up prints the settings: {out}"
        );
    }
    let o = stack(&["up", "--quiet"], Some(&dir));
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).is_empty(), "--quiet prints nothing: {}", text(&o));

    let o = stack(&["status"], Some(&dir));
    let out = text(&o);
    assert!(o.status.success(), "{out}");
    for (name, port) in [
        ("source", s.source.port),
        ("target", s.target.port),
        ("source-replica", s.source_replica.port),
    ] {
        let line = out
            .lines()
            .find(|l| l.split_whitespace().next() == Some(name))
            .unwrap();
        assert!(
            line.contains("running") && line.contains(&format!(":{port}")),
            "{line}"
        );
    }
    // The broker's line names the Apache Kafka version that really runs (from its log).
    let line = out.lines().find(|l| l.starts_with("kafka")).unwrap();
    assert!(
        line.contains("running")
            && line.contains(&format!(" {} ", s.kafka_bootstrap))
            && line.contains(&format!("Apache Kafka {}", s.kafka_version))
            && line.contains(&s.kafka_sasl.bootstrap),
        "{line}"
    );

    let toml_text = std::fs::read_to_string(dir.join("ferry.toml")).unwrap();
    let v: toml::Value = toml::from_str(&toml_text).unwrap();
    assert_eq!(
        v["source"]["port"].as_integer(),
        Some(i64::from(s.source.port))
    );
    assert_eq!(
        v["kafka"]["bootstrap_servers"].as_str(),
        Some(s.kafka_bootstrap.as_str())
    );
}

#[test]
fn down_stops_every_process_of_its_own_stack() {
    // Make sure the shared stack runs, so that we can check it survives.
    let shared = Stack::get();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("stack");

    let o = stack(&["up", "--quiet"], Some(&dir));
    assert!(o.status.success(), "{}", text(&o));
    let mut pids = Vec::new();
    for name in ["source", "target", "source-replica", "kafka"] {
        let p: u32 = std::fs::read_to_string(dir.join("pids").join(format!("{name}.pid")))
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        assert!(alive(p), "{name} pid {p} runs after up");
        pids.push(p);
    }
    let env = std::fs::read_to_string(dir.join("stack.env")).unwrap();
    assert!(
        !env.contains(&shared.kafka_bootstrap),
        "second stack has its own ports"
    );

    let o = stack(&["down"], Some(&dir));
    assert!(o.status.success(), "{}", text(&o));
    for p in &pids {
        assert!(!alive(*p), "pid {p} still alive after down");
    }
    let ps = Command::new("ps")
        .args(["-eo", "pid=,stat="])
        .output()
        .unwrap();
    let ps = String::from_utf8_lossy(&ps.stdout);
    for line in ps.lines() {
        let mut f = line.split_whitespace();
        let (pid, stat) = (f.next().unwrap_or(""), f.next().unwrap_or(""));
        if let Ok(pid) = pid.parse::<u32>() {
            assert!(
                !pids.contains(&pid) || stat.starts_with('Z'),
                "ps still lists pid {pid}"
            );
        }
    }
    let o = stack(&["status"], Some(&dir));
    assert!(!o.status.success());
    assert_eq!(text(&o).matches("stopped").count(), 4, "{}", text(&o));

    // down is idempotent, and the shared stack was not touched.
    let o = stack(&["down"], Some(&dir));
    assert!(o.status.success(), "{}", text(&o));
    let o = stack(&["status"], Some(&shared.dir));
    assert!(o.status.success(), "{}", text(&o));

    // The clusters may live outside the temp dir (when user postgres cannot reach it).
    if let Ok(root) = std::fs::read_to_string(dir.join("pgroot")) {
        let root = root.trim();
        if !root.starts_with(tmp.path().to_str().unwrap()) {
            std::fs::remove_dir_all(root).unwrap();
        }
    }
}
