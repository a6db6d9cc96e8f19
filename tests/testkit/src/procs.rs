//! The processes a test started, from `/proc` (Linux): to kill them when a test binary
//! must end at once, or to look at their command lines.

use std::collections::HashMap;

/// `(id, text of <dir>/<id>/stat)` for every numeric entry of `dir` (`/proc` for
/// processes, `/proc/self/task` for this process's threads) still there when read.
pub fn stat_texts(dir: &str) -> Vec<(u64, String)> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| {
            let id = entry.file_name().to_str()?.parse::<u64>().ok()?;
            let stat = std::fs::read_to_string(entry.path().join("stat")).ok()?;
            Some((id, stat))
        })
        .collect()
}

/// Every process's parent, from `/proc/<pid>/stat`.
pub fn parents() -> HashMap<u32, u32> {
    let mut out = HashMap::new();
    for (pid, stat) in stat_texts("/proc") {
        // "pid (comm) state ppid ...": the name may hold spaces and parentheses.
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse::<u32>().ok());
        if let (Ok(pid), Some(ppid)) = (u32::try_from(pid), ppid) {
            out.insert(pid, ppid);
        }
    }
    out
}

/// The processes `pid` started, and theirs, at this moment.
pub fn descendants(pid: u32) -> Vec<u32> {
    let parents = parents();
    let mut found = Vec::new();
    let mut frontier = vec![pid];
    while let Some(p) = frontier.pop() {
        for (&child, &parent) in &parents {
            if parent == p && !found.contains(&child) {
                found.push(child);
                frontier.push(child);
            }
        }
    }
    found
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn a_child_and_its_child_are_descendants() {
        let me = std::process::id();
        assert!(parents().contains_key(&me));
        let mut child = std::process::Command::new("sh")
            .args(["-c", "sleep 30 & wait"])
            .spawn()
            .unwrap();
        // The shell starts its `sleep` at once; wait for it for up to 5 s.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        let found = loop {
            let d = descendants(me);
            if d.len() >= 2 || std::time::Instant::now() > deadline {
                break d;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        };
        assert!(found.contains(&child.id()), "{found:?}");
        assert!(found.len() >= 2, "{found:?}");
        for pid in found {
            let _ = std::process::Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
        }
        child.wait().unwrap();
    }
}
