//! The status phase: the latency of `GET /api/status` (what `ferry cutover status`
//! sends) with many tables, against a measurement made during the request.

use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use serde::Serialize;

use crate::phases::{wait_applied, with_phase, Ctx, Phase};

/// The status phase's figures.
#[derive(Debug, Serialize)]
pub struct StatusResult {
    pub tables: usize,
    pub requests: usize,
    /// `GET /api/status` as the CLI's `ferry cutover status` sends it.
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    /// The first request, when nobody had asked for a while (it measures).
    pub first_ms: f64,
    /// `GET /api/status?fresh=true`: one measurement of every topic and destination,
    /// what every request cost before status was served from the coordinator's state.
    pub fresh_p50_ms: f64,
}

/// Status latency with `tables` tables: the migration runs (snapshot applied, changes
/// flowing), then `GET /api/status` is timed against a fresh measurement.
pub async fn status(ctx: &Ctx, tables: usize) -> Result<StatusResult> {
    with_phase(async |p: &mut Phase| {
        let src = p.db(&ctx.stack.source, "bench_status_src").await?;
        let dst = p.db(&ctx.stack.target, "bench_status_dst").await?;
        let mut ddl = String::new();
        for i in 0..tables {
            ddl.push_str(&format!(
                "CREATE TABLE t{i:03} (id int PRIMARY KEY, v int); \
                 INSERT INTO t{i:03} SELECT g, g FROM generate_series(1, 10) g;"
            ));
        }
        let source = p.dbs[src].connect().await?;
        source.batch_execute(&ddl).await?;
        for i in 0..tables {
            source
                .batch_execute(&format!("ALTER TABLE t{i:03} REPLICA IDENTITY FULL"))
                .await?;
        }
        let target_ddl: String = (0..tables)
            .map(|i| format!("CREATE TABLE t{i:03} (id int PRIMARY KEY, v int);"))
            .collect();
        let target = p.dbs[dst].connect().await?;
        target.batch_execute(&target_ddl).await?;
        ctx.say(&format!("status: running Ferry on {tables} tables"));
        p.start_ferry(ctx, src, dst).await?;
        let listen = p.ferry()?.config.coordinator.listen.clone();
        let token = ferry_shared::coordinator_access::client_token(&p.ferry()?.config.coordinator)?
            .map(|t| t.expose().to_owned())
            .unwrap_or_default();
        let ferry = p.ferry()?;
        ferry.start_exporter();
        ferry.start_importer_after_topic("t000").await?;
        let rows = (tables * 10) as i64;
        wait_applied(
            ctx,
            ferry,
            &target,
            Instant::now(),
            "the status phase's snapshot",
            |c| c.0 >= rows,
            |c| c.0 > 0,
        )
        .await?;
        // Changes keep flowing while status is asked for.
        let load = tokio::spawn(async move {
            for round in 0..200 {
                let i = round % 100;
                if source
                    .batch_execute(&format!("UPDATE t{i:03} SET v = v + 1 WHERE id = 1"))
                    .await
                    .is_err()
                {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        });
        let get = async |path: &str| -> Result<f64> {
            let started = Instant::now();
            let body = http_get(&listen, &token, path).await?;
            let ms = started.elapsed().as_secs_f64() * 1000.0;
            if !body.contains("\"importers\"") {
                bail!("GET {path} gave no status: {body}");
            }
            Ok(ms)
        };
        let requests = 50;
        let first_ms = get("/api/status").await?;
        let mut cached = Vec::with_capacity(requests);
        for _ in 0..requests {
            cached.push(get("/api/status").await?);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let mut fresh = Vec::new();
        for _ in 0..5 {
            fresh.push(get("/api/status?fresh=true").await?);
        }
        load.abort();
        p.ferry()?.stop().await?;
        let pct = |v: &mut Vec<f64>, q: f64| -> f64 {
            v.sort_by(f64::total_cmp);
            v[((v.len() - 1) as f64 * q).round() as usize]
        };
        Ok(StatusResult {
            tables,
            requests,
            p50_ms: pct(&mut cached, 0.5),
            p99_ms: pct(&mut cached, 0.99),
            max_ms: pct(&mut cached, 1.0),
            first_ms,
            fresh_p50_ms: pct(&mut fresh, 0.5),
        })
    })
    .await
}

/// A plain HTTP/1.1 GET of `path` on `addr` with the coordinator's token (as the CLI
/// sends it); the body.
async fn http_get(addr: &str, token: &str, path: &str) -> Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    stream
        .write_all(
            format!(
                "GET {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n"
            )
            .as_bytes(),
        )
        .await?;
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).await?;
    let text = String::from_utf8_lossy(&answer).into_owned();
    match text.split_once("\r\n\r\n") {
        Some((head, body)) if head.starts_with("HTTP/1.1 200") => Ok(body.to_owned()),
        _ => bail!("GET {path}: {}", text.lines().next().unwrap_or("no answer")),
    }
}
