//! The cutover phase (issue #19; the last of the default run): how long a cutover to the
//! target takes with changes flowing just before it.
//!
//! Single-row inserts at `--cutover-rate` (default 10,000/s) for `--cutover-seconds`;
//! the moment the load's last transaction has committed, `POST /api/cutover
//! {"to":"target"}` (what `ferry cutover to target` sends), then `GET /api/status`
//! every 20 ms until `migration.cutover_to_target.status` is `COMPLETED`. Two figures,
//! target ≤ 3 s each: the request to COMPLETED, and the last source commit to that
//! row applied on the target (the target's `applied` column, stamped by an `ENABLE
//! ALWAYS` trigger as in the single phase). Then source and target must be equal.

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde::Serialize;

use crate::db;
use crate::phases::{wait_applied, with_phase, Ctx, Phase, INTERRUPTED};

/// The cutover phase's figures.
#[derive(Debug, Serialize)]
pub struct CutoverResult {
    pub offered_rate: f64,
    pub seconds: f64,
    pub events: i64,
    /// Events per second the source committed during the load.
    pub source_events_per_second: f64,
    /// From `POST /api/cutover` to the first status that said COMPLETED.
    pub request_to_completed_ms: f64,
    /// From the last source commit to that row applied on the target.
    pub last_commit_to_applied_ms: f64,
    /// The cutover's steps as the coordinator recorded them: name, ms after the first.
    pub steps: Vec<(String, i64)>,
    pub checksum: db::Checksum,
}

const PREFILL: i64 = 1000;

/// A plain HTTP/1.1 request with the coordinator's token (as the CLI sends it): the
/// status code and the body.
async fn http(
    addr: &str,
    token: &str,
    method: &str,
    path: &str,
    body: &str,
) -> Result<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    stream
        .write_all(
            format!(
                "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\n\
                 Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            )
            .as_bytes(),
        )
        .await?;
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).await?;
    let text = String::from_utf8_lossy(&answer).into_owned();
    let Some((head, body)) = text.split_once("\r\n\r\n") else {
        bail!("{method} {path}: no answer");
    };
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    Ok((code, body.to_owned()))
}

/// Cutover with `rate` single-row transactions per second flowing for `seconds` first.
pub async fn cutover(ctx: &Ctx, seconds: u64, rate: u64) -> Result<CutoverResult> {
    with_phase(async |p: &mut Phase| {
        let (src, dsts) = p
            .filled(
                ctx,
                "cutover",
                ("bench_cut_src", PREFILL),
                &["bench_cut_dst"],
                db::STAMPED_TARGET_DDL,
            )
            .await?;
        let dst = dsts[0];
        let target = p.dbs[dst].connect().await?;

        ctx.say("cutover: Ferry's snapshot of the prefill");
        p.start_ferry(ctx, src, dst).await?;
        let listen = p.ferry()?.config.coordinator.listen.clone();
        let token = ferry_shared::coordinator_access::client_token(&p.ferry()?.config.coordinator)?
            .map(|t| t.expose().to_owned())
            .unwrap_or_default();
        let since = Instant::now();
        let ferry = p.ferry()?;
        ferry.start_exporter();
        ferry.start_importer_after_topic("t").await?;
        wait_applied(ctx, ferry, &target, since, "the prefill snapshot", |c| c.0 >= PREFILL, |_| true)
            .await?;
        // A cutover is refused until the coordinator has seen the snapshot done.
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let (_, body) = http(&listen, &token, "GET", "/api/status", "").await?;
            let status: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
            let done = status["streams"].as_array().is_some_and(|streams| {
                streams
                    .iter()
                    .any(|st| st["stream"] == "source" && st["snapshot_done"] == true)
            });
            if done {
                break;
            }
            if Instant::now() > deadline || INTERRUPTED.load(std::sync::atomic::Ordering::Relaxed) {
                bail!("the coordinator did not see the source snapshot done within 120 s");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }

        ctx.say(&format!(
            "cutover: {rate} single-row transactions per second for {seconds} s, then a cutover to target"
        ));
        crate::load::single_rows(&p.dbs[src], PREFILL + 1, seconds, 2, Some(rate))
            .await
            .context("the load before the cutover")?;
        // The load's last commit is done: the operator initiates the cutover now.
        let requested = Instant::now();
        let (code, body) = http(
            &listen,
            &token,
            "POST",
            "/api/cutover",
            r#"{"to":"target","prepare_for":"none"}"#,
        )
        .await?;
        if code != 200 {
            bail!("POST /api/cutover answered {code}: {body}");
        }
        let (completed_ms, steps) = loop {
            let (_, body) = http(&listen, &token, "GET", "/api/status", "").await?;
            let status: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
            let c = &status["migration"]["cutover_to_target"];
            if c["status"] == "COMPLETED" {
                let ms = requested.elapsed().as_secs_f64() * 1000.0;
                let list = c["steps"].as_array().cloned().unwrap_or_default();
                let first = list.first().and_then(|s| s["done_at_ms"].as_i64()).unwrap_or(0);
                let steps = list
                    .iter()
                    .map(|s| {
                        (
                            s["name"].as_str().unwrap_or("?").to_owned(),
                            s["done_at_ms"].as_i64().unwrap_or(first) - first,
                        )
                    })
                    .collect::<Vec<_>>();
                break (ms, steps);
            }
            if requested.elapsed() > Duration::from_secs(300)
                || INTERRUPTED.load(std::sync::atomic::Ordering::Relaxed)
            {
                bail!(
                    "the cutover to target was not COMPLETED within 300 s (status {})",
                    status["migration"]["cutover_to_target"]["status"]
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        p.ferry()?.stop().await?;

        let source = p.dbs[src].connect().await?;
        let row = source
            .query_one(
                "SELECT count(*), extract(epoch FROM max(ts) - min(ts))::float8 FROM t WHERE id > $1",
                &[&PREFILL],
            )
            .await?;
        let events: i64 = row.get(0);
        let span: f64 = row.get::<_, Option<f64>>(1).unwrap_or(0.0).max(1e-3);
        let last: Option<f64> = target
            .query_one(
                "SELECT (extract(epoch FROM applied - ts) * 1000)::float8 FROM t
                 WHERE id > $1 ORDER BY ts DESC LIMIT 1",
                &[&PREFILL],
            )
            .await?
            .get(0);
        let checksum = {
            let (s, t) = tokio::try_join!(db::checksum(&p.dbs[src]), db::checksum(&p.dbs[dst]))?;
            if s != t {
                bail!(
                    "source and target differ after the cutover: source {} rows, target {}",
                    s.rows,
                    t.rows
                );
            }
            s
        };
        Ok(CutoverResult {
            offered_rate: rate as f64,
            seconds: seconds as f64,
            events,
            source_events_per_second: events as f64 / span,
            request_to_completed_ms: completed_ms,
            last_commit_to_applied_ms: last.context("the target has no row of the load")?,
            steps,
            checksum,
        })
    })
    .await
}
