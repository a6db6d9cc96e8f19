//! The coordinator's HTTP API for the CLI, Prometheus and people.
//!
//! | route | what |
//! | --- | --- |
//! | `GET /api/status` | [`crate::positions::Status`]: the MSR, streams, importer groups, as last measured (at most about a second old: `at_ms`); `?fresh=true` measures now |
//! | `POST /api/cutover` | [`CutoverRequest`] → the MSR, or 409 `{"error": ...}` with the reason |
//! | `GET /api/report` | [`crate::report::Report`] |
//! | `POST /api/end` | [`EndRequest`] → [`crate::end::EndReport`] |
//! | `GET /metrics` | Prometheus text format |
//! | `GET /status` | the status page for people ([`crate::page`]; `/` belongs to the registry) |

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
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
        .route("/status", get(crate::page::page))
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
