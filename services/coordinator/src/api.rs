//! The coordinator's HTTP API for the CLI, Prometheus and people.
//!
//! | route | what |
//! | --- | --- |
//! | `GET /api/status` | [`crate::positions::Status`]: the MSR, streams, importer groups, as last measured (at most about a second old: `at_ms`); `?fresh=true` measures now |
//! | `POST /api/cutover` | [`CutoverRequest`] → the MSR, or 409 `{"error": ...}` with the reason |
//! | `GET /api/report` | [`crate::report::Report`] |
//! | `POST /api/end` | [`EndRequest`] → [`crate::end::EndReport`] |
//! | `GET /metrics` | Prometheus text format |
//! | `GET /status` | a status page for people, refreshed every 5 s (`/` belongs to the registry) |

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};

use crate::cutover::CutoverRequest;
use crate::end::EndRequest;
use crate::migration::Migration;
use crate::{end, positions, report};

/// The API routes.
pub fn router(m: Arc<Migration>) -> Router {
    Router::new()
        .route("/api/status", get(status))
        .route("/api/cutover", post(cutover))
        .route("/api/report", get(get_report))
        .route("/api/end", post(end_migration))
        .route("/metrics", get(metrics))
        .route("/status", get(page))
        .with_state(m)
}

/// `?fresh=true`: measure now instead of answering with the last measurement.
#[derive(Debug, Default, serde::Deserialize)]
struct StatusQuery {
    #[serde(default)]
    fresh: bool,
}

async fn status(
    State(m): State<Arc<Migration>>,
    axum::extract::Query(q): axum::extract::Query<StatusQuery>,
) -> Response {
    if q.fresh {
        return Json(positions::measure(&m).await).into_response();
    }
    Json(positions::status(&m).await).into_response()
}

async fn cutover(State(m): State<Arc<Migration>>, Json(req): Json<CutoverRequest>) -> Response {
    match m.request_cutover(&req).await {
        Ok(msr) => Json(msr).into_response(),
        Err(e) => (
            StatusCode::CONFLICT,
            Json(serde_json::json!({ "error": e.0 })),
        )
            .into_response(),
    }
}

async fn get_report(State(m): State<Arc<Migration>>) -> Response {
    Json(report::build(&m).await).into_response()
}

async fn end_migration(State(m): State<Arc<Migration>>, Json(req): Json<EndRequest>) -> Response {
    let mut report = end::end(&m, &req).await;
    if report.failed.is_empty() {
        // Its work ends with the migration: stop once this answer is on its way.
        if let Some(stop) = m.stop.lock().ok().and_then(|mut s| s.take()) {
            report.done.push(format!(
                "the coordinator stops in {} s: its work ends with the migration",
                STOP_AFTER_END.as_secs()
            ));
            tokio::spawn(async move {
                tokio::time::sleep(STOP_AFTER_END).await;
                tracing::info!("the migration ended; the coordinator stops");
                stop.trigger();
            });
        }
    }
    Json(report).into_response()
}

/// How long the coordinator keeps answering after `ferry end migration` (so that the
/// answer and a last `ferry cutover status` get through).
const STOP_AFTER_END: std::time::Duration = std::time::Duration::from_secs(2);

async fn metrics(State(m): State<Arc<Migration>>) -> Response {
    let s = positions::status(&m).await;
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        positions::metrics(&s),
    )
        .into_response()
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

async fn page(State(m): State<Arc<Migration>>) -> Html<String> {
    use std::fmt::Write as _;
    let s = positions::status(&m).await;
    let mut h = String::new();
    let _ = write!(
        h,
        "<!doctype html><meta charset=utf-8><meta http-equiv=refresh content=5><title>Ferry {id}</title>\
         <style>body{{font-family:sans-serif;margin:2em}}td,th{{padding:.2em .8em;text-align:left}}th{{background:#eee}}</style>\
         <h1>Ferry migration {id}</h1><p>workflow: {wf}{ended}</p>",
        id = esc(&s.migration.migration_id),
        wf = s.migration.workflow.as_str(),
        ended = if s.migration.ended_at_ms.is_some() { " — ended" } else { "" },
    );
    h.push_str("<h2>Cutover</h2><table><tr><th>to</th><th>status</th><th>steps done</th><th>waiting for</th></tr>");
    for d in [
        ferry_shared::topics::Destination::Target,
        ferry_shared::topics::Destination::SourceReplica,
        ferry_shared::topics::Destination::Source,
    ] {
        let c = s.migration.cutover(d);
        let steps: Vec<String> = c.steps.iter().map(|st| esc(&st.name)).collect();
        let _ = write!(
            h,
            "<tr><td>{d}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            c.status.as_str(),
            steps.join(", "),
            esc(c.waiting_for.as_deref().unwrap_or(""))
        );
    }
    h.push_str("</table><h2>Streams</h2><table><tr><th>stream</th><th>directive</th><th>exporter</th><th>snapshot</th><th>last VSN</th><th>records</th><th>events/s (3 min)</th></tr>");
    for st in &s.streams {
        let _ = write!(
            h,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{:.0}</td></tr>",
            st.stream,
            st.directive,
            esc(&st.exporter_phase),
            if st.snapshot_done { "done" } else { "not done" },
            st.last_vsn,
            st.records,
            st.rate_3m
        );
    }
    h.push_str("</table><h2>Importers</h2><table><tr><th>destination</th><th>stream</th><th>instances</th><th>applied VSN</th><th>remaining</th><th>events/s (3 min)</th><th>ETA</th></tr>");
    for i in &s.importers {
        let eta = match i.eta_seconds {
            Some(0.0) => "caught up".to_owned(),
            Some(e) => format!("{e:.0} s"),
            None => "unknown".to_owned(),
        };
        let _ = write!(
            h,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{:.0}</td><td>{}</td></tr>",
            i.destination,
            i.stream.map_or("(waiting)".to_owned(), |s| s.to_string()),
            i.instances,
            i.applied_vsn,
            i.remaining,
            i.rate_3m,
            esc(&i.error.clone().unwrap_or(eta))
        );
    }
    h.push_str("</table>");
    Html(h)
}
