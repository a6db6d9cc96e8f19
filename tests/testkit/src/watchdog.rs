//! A deadline for every integration test: a test that runs longer than
//! `FERRY_TEST_DEADLINE_S` (default 600 s) ends its test binary with a message naming
//! it, so that one hung test costs the suite minutes, not the whole CI budget, and the
//! other test binaries still run (`cargo test --no-fail-fast` goes on to the next).
//! Before it exits it kills the processes the binary started (they would outlive it).
//!
//! A test is watched from its first [`Stack::get`](crate::Stack::get) until its thread
//! ends (libtest runs each test on a thread named after it; a thread-local guard
//! forgets the test when that thread exits).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, Once, OnceLock};
use std::time::{Duration, Instant};

const DEFAULT_DEADLINE: Duration = Duration::from_secs(600);
const POLL: Duration = Duration::from_secs(1);

/// Running tests by thread id: (test name, when first watched).
type Running = Mutex<HashMap<std::thread::ThreadId, (String, Instant)>>;

fn running() -> &'static Running {
    static RUNNING: OnceLock<Running> = OnceLock::new();
    RUNNING.get_or_init(|| Mutex::new(HashMap::new()))
}

/// Forgets the current thread's test when the thread ends.
struct Guard;

impl Drop for Guard {
    fn drop(&mut self) {
        if let Ok(mut map) = running().lock() {
            map.remove(&std::thread::current().id());
        }
    }
}

thread_local! {
    static GUARD: std::cell::OnceCell<Guard> = const { std::cell::OnceCell::new() };
}

/// The deadline: `FERRY_TEST_DEADLINE_S` seconds, else 600 s. A value that is not a
/// whole number of seconds ends the test binary with a message naming the variable.
#[allow(clippy::panic)]
pub fn deadline() -> Duration {
    match std::env::var("FERRY_TEST_DEADLINE_S") {
        Err(_) => DEFAULT_DEADLINE,
        Ok(v) => match v.trim().parse::<u64>() {
            Ok(s) if s > 0 => Duration::from_secs(s),
            _ => panic!(
                "FERRY_TEST_DEADLINE_S={v:?} is not a number of seconds above 0; unset it for the default of {} s",
                DEFAULT_DEADLINE.as_secs()
            ),
        },
    }
}

/// Set by [`no_deadline`]: nothing is watched.
static DISABLED: AtomicBool = AtomicBool::new(false);

/// Turns the deadline off for this process: for a program that uses the test stack but
/// is not a test (the benchmark, whose runs last longer than any test).
pub fn no_deadline() {
    DISABLED.store(true, Ordering::SeqCst);
}

/// Watches the test running on the current thread (once per thread), starting the
/// watchdog thread on first use.
pub(crate) fn watch_current_test() {
    if DISABLED.load(Ordering::SeqCst) {
        return;
    }
    let me = std::thread::current();
    // libtest names each test's thread after the test; the runtime's own threads
    // (called from a spawned task) and the main thread (`--test-threads=1`) are not
    // a test's.
    let Some(name) = me.name().filter(|n| is_test_thread(n)) else {
        return;
    };
    static START: Once = Once::new();
    let limit = deadline();
    START.call_once(|| {
        let spawned = std::thread::Builder::new()
            .name("ferry-test-watchdog".into())
            .spawn(move || watchdog(limit));
        if let Err(e) = spawned {
            use std::io::Write;
            let _ = writeln!(
                std::io::stderr(),
                "testkit: could not start the test watchdog: {e}"
            );
        }
    });
    GUARD.with(|g| {
        g.get_or_init(|| {
            if let Ok(mut map) = running().lock() {
                map.entry(me.id())
                    .or_insert((name.to_owned(), Instant::now()));
            }
            Guard
        });
    });
}

fn is_test_thread(name: &str) -> bool {
    name != "main" && !name.starts_with("tokio-")
}

/// The tests of `running` past `limit` at `now`, by name.
fn overdue(
    running: &HashMap<std::thread::ThreadId, (String, Instant)>,
    limit: Duration,
    now: Instant,
) -> Vec<String> {
    let mut names: Vec<String> = running
        .values()
        .filter(|(_, since)| now.duration_since(*since) > limit)
        .map(|(name, _)| name.clone())
        .collect();
    names.sort();
    names
}

fn watchdog(limit: Duration) {
    loop {
        std::thread::sleep(POLL);
        let late = match running().lock() {
            Ok(map) => overdue(&map, limit, Instant::now()),
            Err(_) => continue,
        };
        if !late.is_empty() {
            // Straight to the stderr handle: `eprintln!` from a thread a test started is
            // captured with the test's output, which is lost when the process exits.
            use std::io::Write;
            let _ = writeln!(
                std::io::stderr(),
                "testkit: FAILED: {} ran longer than {} s (FERRY_TEST_DEADLINE_S); ending this test binary so that the rest of the suite runs. The servers' logs are under FERRY_STACK_DIR.",
                late.join(", "),
                limit.as_secs()
            );
            kill_descendants();
            std::process::exit(102);
        }
    }
}

/// SIGKILLs every process this one started, and theirs (the `ferry` processes a CLI
/// test runs): an exit skips the tests' own clean-up, and they would run on.
fn kill_descendants() {
    for pid in crate::procs::descendants(std::process::id()) {
        let _ = std::process::Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .stderr(std::process::Stdio::null())
            .status();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_tests_past_the_limit_are_overdue() {
        let now = Instant::now();
        let mut map = HashMap::new();
        let a = std::thread::spawn(|| std::thread::current().id())
            .join()
            .unwrap();
        let b = std::thread::current().id();
        map.insert(a, ("slow".to_owned(), now - Duration::from_secs(30)));
        map.insert(b, ("quick".to_owned(), now - Duration::from_secs(5)));
        assert_eq!(
            overdue(&map, Duration::from_secs(10), now),
            vec!["slow".to_owned()]
        );
        assert!(overdue(&map, Duration::from_secs(60), now).is_empty());
    }

    #[test]
    fn a_finished_tests_thread_is_forgotten() {
        assert!(!is_test_thread("tokio-runtime-worker") && !is_test_thread("main"));
        let id = std::thread::Builder::new()
            .name("a_test".into())
            .spawn(|| {
                watch_current_test();
                assert!(running()
                    .lock()
                    .unwrap()
                    .contains_key(&std::thread::current().id()));
                std::thread::current().id()
            })
            .unwrap()
            .join()
            .unwrap();
        assert!(!running().lock().unwrap().contains_key(&id));
    }
}
