//! The coordinator's status page as a person sees it: a real migration, the page opened
//! in headless Chromium (`/usr/bin/chromium`, installed by `scripts/install-deps`), read
//! after its script fetched `/api/status` and drew the tables.
//!
//! Chromium runs with `--dump-dom` and a virtual time budget: it loads the page, runs
//! the script (virtual time waits for the fetches to answer) and prints the DOM as it
//! stands then. No chromedriver or DevTools client is needed (no version of either to
//! keep in step with Chromium, no WebSocket client in the tests), and the figures read
//! are exactly what the script put on the page.
//!
//! - the tables' names, and figures that equal the API's (events exported and applied
//!   per table, per stream and per destination);
//! - an importer stopped by a definite error (a column missing on the target): the
//!   error on the page, with its object and fix, until the importer, restarted after the
//!   fix, runs successfully;
//! - after a cutover: COMPLETED and every step with its time;
//! - the target dropping the services' sessions: the importer `retrying` with its
//!   transient error in status and on the page while it lasts, gone once it applied;
//! - an exporter stopped by its preflight: `failed` with the error (status and page)
//!   until, restarted after the fix, it runs.
//!
//! With `FERRY_STATUS_PAGE_SCREENSHOT=<path.png>` the test also writes a screenshot of
//! the page during the failure (how docs/status-page.png is made).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test helpers

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use common::*;
use ferry_shared::topics::{Destination, Stream};
use ferry_testkit::wait_until;
use serde_json::Value;

const CHROMIUM: &str = "/usr/bin/chromium";

/// Chromium's flags for a test: headless, nothing from the network but the page, a
/// profile of its own.
fn chromium(profile: &Path) -> Command {
    let mut c = Command::new(CHROMIUM);
    c.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
    ])
    .arg(format!("--user-data-dir={}", profile.display()));
    c
}

/// The page's DOM after its script ran (a fresh profile each time).
async fn page_dom(url: &str) -> Result<String> {
    let url = url.to_owned();
    tokio::task::spawn_blocking(move || {
        let profile = tempfile_dir()?;
        let out = chromium(&profile)
            .args(["--virtual-time-budget=6000", "--dump-dom"])
            .arg(&url)
            .output()
            .context("running /usr/bin/chromium (scripts/install-deps installs it)")?;
        let _ = std::fs::remove_dir_all(&profile);
        if !out.status.success() || out.stdout.is_empty() {
            bail!(
                "chromium exited with {} and no page: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    })
    .await?
}

/// A PNG of the page after its script ran.
async fn screenshot(url: &str, png: &Path) -> Result<()> {
    let (url, png) = (url.to_owned(), png.to_owned());
    tokio::task::spawn_blocking(move || {
        let profile = tempfile_dir()?;
        let out = chromium(&profile)
            .args([
                "--virtual-time-budget=6000",
                "--hide-scrollbars",
                "--window-size=1280,1400",
            ])
            .arg(format!("--screenshot={}", png.display()))
            .arg(&url)
            .output()?;
        let _ = std::fs::remove_dir_all(&profile);
        if !out.status.success() || !png.exists() {
            bail!(
                "chromium --screenshot failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    })
    .await?
}

/// The page's address as an operator opens it on a coordinator that asks for its token:
/// the document with the token as the password of HTTP basic auth (the coordinator's
/// 401 asks for it so; a browser asks the person), and `?token=` once for the page's
/// script, which keeps it for the tab and sends it as a bearer token.
fn page_url(h: &Harness) -> Result<String> {
    let token = ferry_shared::coordinator_access::client_token(&h.config.coordinator)?
        .context("the test configuration carries a coordinator token")?;
    let token = token.expose();
    Ok(format!(
        "http://ferry:{token}@{}/status?token={token}",
        h.listen
    ))
}

fn tempfile_dir() -> Result<std::path::PathBuf> {
    let dir = std::env::temp_dir().join(ferry_testkit::unique_name("chromium_profile"));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// The text of an HTML fragment as shown: tags dropped, entities decoded, white space
/// collapsed.
fn text(html: &str) -> String {
    let mut out = String::new();
    let mut in_tag = false;
    for c in html.chars() {
        match c {
            '<' => {
                in_tag = true;
                out.push(' ');
            }
            '>' => in_tag = false,
            c if !in_tag => out.push(c),
            _ => {}
        }
    }
    let out = out
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&nbsp;", " ")
        .replace("&amp;", "&");
    out.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The element with `id` (its opening tag, and its inner HTML up to the next element of
/// the page's layout), and whether it is hidden.
fn section<'a>(dom: &'a str, id: &str) -> Result<(bool, &'a str)> {
    let at = dom
        .find(&format!("id=\"{id}\""))
        .with_context(|| format!("no element #{id} in the page: {dom}"))?;
    let open_start = dom[..at].rfind('<').unwrap_or(at);
    let open_end = at + dom[at..].find('>').unwrap_or(0);
    let hidden = dom[open_start..open_end].contains(" hidden");
    let rest = &dom[open_end + 1..];
    // The errors section holds a heading of its own; the others end at the next one.
    let ends: &[&str] = if id == "errors" {
        &["</section>"]
    } else {
        &["<h2 id=", "</main>", "<script"]
    };
    let end = ends
        .iter()
        .filter_map(|m| rest.find(m))
        .min()
        .unwrap_or(rest.len());
    Ok((hidden, &rest[..end]))
}

/// The rows of the tables in `html`, as text.
fn rows(html: &str) -> Vec<String> {
    html.split("<tr>").skip(1).map(text).collect()
}

/// How the page writes an integer (en-US grouping).
fn grouped(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn clock(ms: i64) -> String {
    let s = ms.div_euclid(1000).rem_euclid(86_400);
    format!("{:02}:{:02}:{:02}", s / 3600, (s / 60) % 60, s % 60)
}

fn counts_total(c: &Value) -> u64 {
    ["snapshot_rows", "inserts", "updates", "deletes"]
        .iter()
        .map(|k| c[k].as_u64().unwrap_or(0))
        .sum()
}

/// Waits until the target importer has applied everything and the API's per-table
/// figures say so; returns that status.
async fn caught_up(h: &Harness) -> Result<Value> {
    wait_until(
        "the target importer to have nothing left, per table too",
        Duration::from_secs(90),
        || async {
            let (_, s) = h.api("GET", "/api/status?fresh=true", None).await?;
            let target = s["importers"]
                .as_array()
                .and_then(|a| a.iter().find(|i| i["destination"] == "target"))
                .cloned()
                .unwrap_or_default();
            let tables = s["tables"].as_array().cloned().unwrap_or_default();
            let all_applied = tables.len() == 2
                && tables.iter().all(|t| {
                    let exported: u64 = t["streams"]
                        .as_array()
                        .map(|a| a.iter().map(|st| counts_total(&st["exported"])).sum())
                        .unwrap_or(0);
                    let applied: u64 = t["destinations"]
                        .as_array()
                        .map(|a| {
                            a.iter()
                                .filter(|d| d["destination"] == "target")
                                .map(|d| counts_total(&d["applied"]))
                                .sum()
                        })
                        .unwrap_or(0);
                    exported > 0 && applied == exported
                });
            Ok((target["remaining"] == 0 && all_applied).then_some(s))
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_status_page_shows_tables_figures_errors_and_cutover_steps_in_chromium() -> Result<()> {
    let mut h = Harness::new("statuspage").await?;
    let url = page_url(&h)?;
    h.exporter(Stream::Source);
    h.importer(Destination::Target);
    writes(&h.source, "page", 10).await?;
    h.wait_equal(Side::Source, Side::Target, "before the page")
        .await?;
    h.wait_snapshot_done().await?;
    let api = caught_up(&h).await?;

    // The page, drawn by its script from the API: the migration, every table with the
    // API's figures, no error.
    let dom = page_dom(&url).await?;
    let id = api["migration"]["migration_id"]
        .as_str()
        .unwrap_or_default();
    assert!(dom.contains(&format!("Ferry migration {id}")), "{dom}");
    let (errors_hidden, _) = section(&dom, "errors")?;
    assert!(errors_hidden, "no error yet: {dom}");
    let table_rows = rows(section(&dom, "tables")?.1);
    for t in api["tables"].as_array().unwrap() {
        let name = t["table"].as_str().unwrap();
        assert!(name == "public.orders" || name == "public.customers", "{t}");
        let src = t["streams"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["stream"] == "source")
            .unwrap();
        let row = table_rows
            .iter()
            .find(|r| r.starts_with(name) && r.contains("exported from source"))
            .with_context(|| format!("no exported row for {name}: {table_rows:#?}"))?;
        let snapshot = src["exported"]["snapshot_rows"].as_u64().unwrap();
        let changes = counts_total(&src["exported"]) - snapshot;
        assert!(snapshot > 0, "{t}");
        assert!(
            row.contains(&format!(" {} {} ", grouped(snapshot), grouped(changes))),
            "{row} vs {t}"
        );
        let dst = t["destinations"]
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["destination"] == "target")
            .unwrap();
        let row = table_rows
            .iter()
            .find(|r| r.starts_with(name) && r.contains("applied to target"))
            .with_context(|| format!("no applied row for {name}: {table_rows:#?}"))?;
        let applied = counts_total(&dst["applied"]);
        assert!(
            row.ends_with(&format!(" {} 0", grouped(applied))),
            "{row} vs {t}"
        );
        assert!(
            row.contains(&format!(
                "{} of {} rows (100%)",
                grouped(dst["applied"]["snapshot_rows"].as_u64().unwrap()),
                grouped(snapshot)
            )),
            "{row}"
        );
    }
    let streams = rows(section(&dom, "streams")?.1);
    let source = api["streams"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["stream"] == "source")
        .unwrap();
    let line = streams
        .iter()
        .find(|r| r.starts_with("source "))
        .with_context(|| format!("{streams:#?}"))?;
    // Events in the stream's topics (the last VSN comes from a heartbeat, which may
    // have moved since the API was asked).
    assert!(
        line.contains(&format!(
            " {} ",
            grouped(source["records"].as_u64().unwrap())
        )),
        "{line} vs {source}"
    );
    let importers = rows(section(&dom, "importers")?.1);
    let target = importers
        .iter()
        .find(|r| r.starts_with("target "))
        .with_context(|| format!("{importers:#?}"))?;
    assert!(
        target.contains("caught up") && target.contains("running"),
        "{target}"
    );

    // A column the stream carries goes missing on the target: the importer stops on a
    // definite error, and the page says so, with the table, the column and the fix.
    h.target
        .batch_execute("ALTER TABLE customers DROP COLUMN tags")
        .await?;
    writes(&h.source, "breaks", 3).await?;
    wait_until(
        "the target importer to stop on the missing column",
        Duration::from_secs(90),
        || {
            let finished = h
                .tasks
                .iter()
                .any(|(n, t)| n == "importer target" && t.is_finished());
            async move { Ok(finished.then_some(())) }
        },
    )
    .await?;
    h.kill("importer target").await;
    let dom = wait_until(
        "the page to show the error",
        Duration::from_secs(60),
        || {
            let url = url.clone();
            async move {
                let dom = page_dom(&url).await?;
                let (hidden, errors) = section(&dom, "errors")?;
                Ok((!hidden && text(errors).contains("FAILED")).then_some(dom))
            }
        },
    )
    .await?;
    let errors = text(section(&dom, "errors")?.1);
    for needle in [
        "importer target",
        "definite error at",
        "table \"public.customers\" on the target",
        "column \"tags\"",
        "add the column",
    ] {
        assert!(errors.contains(needle), "{needle:?} in {errors}");
    }
    let importers = rows(section(&dom, "importers")?.1);
    let target = importers.iter().find(|r| r.starts_with("target ")).unwrap();
    assert!(target.contains("failed"), "{target}");
    if let Ok(png) = std::env::var("FERRY_STATUS_PAGE_SCREENSHOT") {
        screenshot(&url, Path::new(&png)).await?;
    }

    // Fixed and started again (the same instance name: the same process, as a restarted
    // container keeps its host name and pid 1): once it applied, the error is gone.
    // (The tags dropped with the column stay lost on the target: no equality check.)
    h.target
        .batch_execute("ALTER TABLE customers ADD COLUMN tags text[]")
        .await?;
    h.importer(Destination::Target);
    wait_until(
        "the error to leave the page",
        Duration::from_secs(60),
        || {
            let url = url.clone();
            async move {
                let dom = page_dom(&url).await?;
                Ok(section(&dom, "errors")?.0.then_some(()))
            }
        },
    )
    .await?;

    // After a cutover: COMPLETED, every step with the time the API gives it.
    h.cutover_completed("target", "none").await?;
    let (_, api) = h.api("GET", "/api/status", None).await?;
    let dom = page_dom(&url).await?;
    let cutover = rows(section(&dom, "cutover")?.1);
    let to_target = cutover
        .iter()
        .find(|r| r.starts_with("to target"))
        .with_context(|| format!("{cutover:#?}"))?;
    assert!(to_target.contains("COMPLETED"), "{to_target}");
    let steps = api["migration"]["cutover_to_target"]["steps"]
        .as_array()
        .unwrap();
    assert!(steps.len() >= 4, "{steps:?}");
    for step in steps {
        let name = step["name"].as_str().unwrap();
        let at = clock(step["done_at_ms"].as_i64().unwrap());
        assert!(
            to_target.contains(&format!("{at} {name}")),
            "{at} {name} in {to_target}"
        );
    }
    h.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_transient_error_shows_as_retrying_while_it_lasts_and_goes_once_the_importer_applies(
) -> Result<()> {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    let mut h = Harness::new("statusretry").await?;
    let url = page_url(&h)?;
    h.exporter(Stream::Source);
    h.importer(Destination::Target);
    h.wait_equal(Side::Source, Side::Target, "before the outage")
        .await?;
    // The target drops the services' sessions (not the test's), again and again: the
    // importer's sessions end without a server error (transient), and it retries.
    let stop = Arc::new(AtomicBool::new(false));
    let (killer, connection) = h.config.target.as_ref().unwrap().connect().await?;
    let stopping = stop.clone();
    let task = tokio::spawn(async move {
        while !stopping.load(Ordering::Relaxed) {
            killer
                .batch_execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
                     WHERE datname = current_database() AND application_name = 'ferry'
                       AND pid <> pg_backend_pid()",
                )
                .await?;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        drop(connection);
        anyhow::Ok(())
    });
    writes(&h.source, "outage", 5).await?;
    let retrying = wait_until(
        "status to show the importer retrying with its error",
        Duration::from_secs(90),
        || async {
            let (_, s) = h.api("GET", "/api/status", None).await?;
            Ok(s["errors"].as_array().and_then(|a| {
                a.iter()
                    .find(|e| {
                        e["role"] == "importer" && e["unit"] == "target" && e["state"] == "retrying"
                    })
                    .cloned()
            }))
        },
    )
    .await?;
    assert_eq!(retrying["error"]["kind"], "transient", "{retrying}");
    let dom = wait_until("the page to show it", Duration::from_secs(60), || {
        let url = url.clone();
        async move {
            let dom = page_dom(&url).await?;
            let (hidden, errors) = section(&dom, "errors")?;
            Ok((!hidden && text(errors).contains("Retrying after errors")).then_some(dom))
        }
    })
    .await?;
    let errors = text(section(&dom, "errors")?.1);
    assert!(
        errors.contains("retrying importer target") && errors.contains("transient error at"),
        "{errors}"
    );
    // The outage ends: the importer applies what it missed and the error is gone.
    stop.store(true, Ordering::Relaxed);
    task.await??;
    h.wait_equal(Side::Source, Side::Target, "after the outage")
        .await?;
    wait_until(
        "the error to leave status",
        Duration::from_secs(60),
        || async {
            let (_, s) = h.api("GET", "/api/status", None).await?;
            Ok(s["errors"]
                .as_array()
                .is_some_and(|a| a.is_empty())
                .then_some(()))
        },
    )
    .await?;
    h.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_exporter_stopped_by_its_preflight_shows_failed_until_it_runs_again() -> Result<()> {
    let mut h = Harness::new("statusexp").await?;
    let url = page_url(&h)?;
    // The preflight refuses a table whose updates would not carry the old row.
    h.source
        .batch_execute("ALTER TABLE orders REPLICA IDENTITY DEFAULT")
        .await?;
    h.exporter(Stream::Source);
    wait_until(
        "the exporter to stop on its preflight",
        Duration::from_secs(90),
        || {
            let finished = h
                .tasks
                .iter()
                .any(|(n, t)| n == "exporter source" && t.is_finished());
            async move { Ok(finished.then_some(())) }
        },
    )
    .await?;
    h.kill("exporter source").await;
    let s = wait_until(
        "status to show the exporter failed",
        Duration::from_secs(30),
        || async {
            let (_, s) = h.api("GET", "/api/status", None).await?;
            let failed = s["streams"][0]["exporter_phase"] == "failed";
            Ok(failed.then_some(s))
        },
    )
    .await?;
    let e = &s["errors"][0];
    assert_eq!(
        (&e["role"], &e["unit"], &e["state"], &e["error"]["kind"]),
        (
            &Value::from("exporter"),
            &Value::from("source"),
            &Value::from("failed"),
            &Value::from("definite")
        ),
        "{s:#}"
    );
    let message = e["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("orders") && message.contains("REPLICA IDENTITY"),
        "{message}"
    );
    assert_eq!(s["streams"][0]["exporter_error"]["message"], message);
    let dom = page_dom(&url).await?;
    let (hidden, errors) = section(&dom, "errors")?;
    assert!(!hidden, "{dom}");
    assert!(text(errors).contains("FAILED exporter source"), "{errors}");
    // Fixed and started again: once it runs, the error is gone.
    h.source
        .batch_execute("ALTER TABLE orders REPLICA IDENTITY FULL")
        .await?;
    h.exporter(Stream::Source);
    wait_until(
        "the error to leave status",
        Duration::from_secs(60),
        || async {
            let (_, s) = h.api("GET", "/api/status", None).await?;
            let gone = s["errors"].as_array().is_some_and(|a| a.is_empty())
                && s["streams"][0]["exporter_phase"] != "failed";
            Ok(gone.then_some(()))
        },
    )
    .await?;
    h.stop().await
}
