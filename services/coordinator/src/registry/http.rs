//! The Confluent Schema Registry REST subset, over [`Registry`].
//!
//! Responses carry `application/vnd.schemaregistry.v1+json`; request bodies are read as JSON
//! whatever their content type. Errors are `{"error_code": N, "message": "..."}` with HTTP
//! status = the first three digits of `N`, as Confluent's registry answers.

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, Query, State as AxumState};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde::Deserialize;
use serde_json::{json, Value};

use super::state::{SchemaReference, SchemaValue, VersionSelector};
use super::{check_schema_type, CompatibilityLevel, Registry, RegistryError};

const CONTENT_TYPE: &str = "application/vnd.schemaregistry.v1+json";

type Params = Query<HashMap<String, String>>;
type Shared = AxumState<Arc<Registry>>;

/// The registry's HTTP routes; mount them at the root of a server (clients take the base URL).
///
/// `GET /schemas/ids/{id}` (`?deleted=true`, `?subject=`), `GET /schemas/ids/{id}/versions`,
/// `GET /subjects`, `GET /subjects/{subject}/versions`,
/// `GET /subjects/{subject}/versions/{version|latest}` and `.../schema`,
/// `POST /subjects/{subject}/versions` (register), `POST /subjects/{subject}` (lookup),
/// `POST /compatibility/subjects/{subject}/versions[/{version|latest}]` (`?verbose=true`),
/// `GET|PUT /config`, `GET|PUT /config/{subject}`, `DELETE /subjects/{subject}` and
/// `DELETE /subjects/{subject}/versions/{version}` (soft deletes).
pub fn router(registry: Arc<Registry>) -> Router {
    Router::new()
        .route("/", get(root))
        .route("/schemas/ids/{id}", get(schema_by_id))
        .route("/schemas/ids/{id}/versions", get(schema_versions))
        .route("/subjects", get(subjects))
        .route("/subjects/{subject}", post(lookup).delete(delete_subject))
        .route("/subjects/{subject}/versions", get(versions).post(register))
        .route(
            "/subjects/{subject}/versions/{version}",
            get(version).delete(delete_version),
        )
        .route(
            "/subjects/{subject}/versions/{version}/schema",
            get(version_schema),
        )
        .route(
            "/compatibility/subjects/{subject}/versions",
            post(compatibility_all),
        )
        .route(
            "/compatibility/subjects/{subject}/versions/{version}",
            post(compatibility_version),
        )
        .route("/config", get(global_config).put(put_global_config))
        .route(
            "/config/{subject}",
            get(subject_config).put(put_subject_config),
        )
        .with_state(registry)
}

impl IntoResponse for RegistryError {
    fn into_response(self) -> Response {
        let status =
            StatusCode::from_u16(self.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        if status.is_server_error() {
            tracing::warn!(error = %self, "registry request failed");
        }
        reply(
            status,
            &json!({"error_code": self.error_code(), "message": self.to_string()}),
        )
    }
}

fn reply(status: StatusCode, body: &Value) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, CONTENT_TYPE)],
        body.to_string(),
    )
        .into_response()
}

fn ok(body: Value) -> Response {
    reply(StatusCode::OK, &body)
}

fn flag(params: &HashMap<String, String>, name: &str) -> bool {
    params
        .get(name)
        .is_some_and(|v| v.eq_ignore_ascii_case("true"))
}

type Result<T> = std::result::Result<T, RegistryError>;

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct SchemaRequest {
    schema: String,
    #[serde(default)]
    schema_type: Option<String>,
    #[serde(default)]
    references: Option<Vec<SchemaReference>>,
}

fn schema_request(body: &Bytes) -> Result<SchemaRequest> {
    let request: SchemaRequest = serde_json::from_slice(body).map_err(|e| {
        RegistryError::BadRequest(format!(
            "request body must be JSON {{\"schema\": \"...\", \"schemaType\": \"AVRO\", \
             \"references\": []}}: {e}"
        ))
    })?;
    check_schema_type(request.schema_type.as_deref())?;
    if request.schema.trim().is_empty() {
        return Err(RegistryError::InvalidSchema("empty schema".into()));
    }
    Ok(request)
}

fn parse_id(id: &str) -> Result<u32> {
    id.parse()
        .map_err(|_| RegistryError::SchemaNotFound(format!("schema {id} not found")))
}

/// A subject version in Confluent's response shape.
fn version_body(value: &SchemaValue) -> Value {
    let mut body = json!({
        "subject": value.subject,
        "version": value.version,
        "id": value.id,
        "schema": value.schema,
    });
    if !value.references.is_empty() {
        body["references"] = json!(value.references);
    }
    body
}

async fn root() -> Response {
    ok(json!({}))
}

async fn schema_by_id(
    AxumState(r): Shared,
    Path(id): Path<String>,
    Query(params): Params,
) -> Result<Response> {
    let id = parse_id(&id)?;
    let state = r.state.read().await;
    let stored = state.schema_by_id(
        id,
        params.get("subject").map(String::as_str),
        flag(&params, "deleted"),
    )?;
    let mut body = json!({"schema": stored.schema});
    if !stored.references.is_empty() {
        body["references"] = json!(stored.references);
    }
    Ok(ok(body))
}

async fn schema_versions(
    AxumState(r): Shared,
    Path(id): Path<String>,
    Query(params): Params,
) -> Result<Response> {
    let id = parse_id(&id)?;
    let deleted = flag(&params, "deleted");
    let state = r.state.read().await;
    // 40403 for an unknown id, as Confluent answers.
    state.schema_by_id(id, None, true)?;
    let versions: Vec<Value> = state
        .subject_versions_of(id, deleted)
        .into_iter()
        .map(|(subject, version)| json!({"subject": subject, "version": version}))
        .collect();
    Ok(ok(Value::Array(versions)))
}

async fn subjects(AxumState(r): Shared, Query(params): Params) -> Response {
    let prefix = params
        .get("subjectPrefix")
        .map(String::as_str)
        .unwrap_or("");
    let subjects: Vec<String> = r
        .state
        .read()
        .await
        .subjects(flag(&params, "deleted"))
        .into_iter()
        .filter(|s| s.starts_with(prefix))
        .collect();
    ok(json!(subjects))
}

async fn versions(
    AxumState(r): Shared,
    Path(subject): Path<String>,
    Query(params): Params,
) -> Result<Response> {
    let versions = r
        .state
        .read()
        .await
        .versions(&subject, flag(&params, "deleted"))?;
    Ok(ok(json!(versions)))
}

async fn version(
    AxumState(r): Shared,
    Path((subject, version)): Path<(String, String)>,
    Query(params): Params,
) -> Result<Response> {
    let selector: VersionSelector = version.parse()?;
    let state = r.state.read().await;
    let value = state.version(&subject, selector, flag(&params, "deleted"))?;
    Ok(ok(version_body(value)))
}

async fn version_schema(
    AxumState(r): Shared,
    Path((subject, version)): Path<(String, String)>,
    Query(params): Params,
) -> Result<Response> {
    let selector: VersionSelector = version.parse()?;
    let state = r.state.read().await;
    let value = state.version(&subject, selector, flag(&params, "deleted"))?;
    Ok((
        StatusCode::OK,
        [(header::CONTENT_TYPE, CONTENT_TYPE)],
        value.schema.clone(),
    )
        .into_response())
}

async fn register(
    AxumState(r): Shared,
    Path(subject): Path<String>,
    body: Bytes,
) -> Result<Response> {
    let request = schema_request(&body)?;
    let references = request.references.unwrap_or_default();
    let id = r.register(&subject, &request.schema, &references).await?;
    Ok(ok(json!({"id": id})))
}

async fn lookup(
    AxumState(r): Shared,
    Path(subject): Path<String>,
    Query(params): Params,
    body: Bytes,
) -> Result<Response> {
    let request = schema_request(&body)?;
    let references = request.references.unwrap_or_default();
    let state = r.state.read().await;
    // An unknown subject is 40401 even when the schema does not parse.
    state.versions(&subject, flag(&params, "deleted"))?;
    let candidate = state.candidate(&request.schema, &references)?;
    let value = state.lookup(&subject, &candidate, flag(&params, "deleted"))?;
    Ok(ok(version_body(value)))
}

async fn delete_subject(
    AxumState(r): Shared,
    Path(subject): Path<String>,
    Query(params): Params,
) -> Result<Response> {
    if flag(&params, "permanent") {
        return Err(RegistryError::BadRequest(
            "permanent deletes are not supported by ferry's built-in registry; soft deletes \
             keep ids stable for data already written"
                .into(),
        ));
    }
    let versions = r.delete_subject(&subject).await?;
    Ok(ok(json!(versions)))
}

async fn delete_version(
    AxumState(r): Shared,
    Path((subject, version)): Path<(String, String)>,
    Query(params): Params,
) -> Result<Response> {
    if flag(&params, "permanent") {
        return Err(RegistryError::BadRequest(
            "permanent deletes are not supported by ferry's built-in registry".into(),
        ));
    }
    let selector: VersionSelector = version.parse()?;
    let version = r.delete_version(&subject, selector).await?;
    Ok(ok(json!(version)))
}

fn compatibility_reply(problems: Vec<String>, verbose: bool) -> Response {
    let mut body = json!({"is_compatible": problems.is_empty()});
    if verbose {
        body["messages"] = json!(problems);
    }
    ok(body)
}

async fn compatibility_all(
    AxumState(r): Shared,
    Path(subject): Path<String>,
    Query(params): Params,
    body: Bytes,
) -> Result<Response> {
    let request = schema_request(&body)?;
    let references = request.references.unwrap_or_default();
    let state = r.state.read().await;
    let candidate = state.candidate(&request.schema, &references)?;
    let problems = state.check_against_subject(&subject, &candidate.parsed, None)?;
    Ok(compatibility_reply(problems, flag(&params, "verbose")))
}

async fn compatibility_version(
    AxumState(r): Shared,
    Path((subject, version)): Path<(String, String)>,
    Query(params): Params,
    body: Bytes,
) -> Result<Response> {
    let selector: VersionSelector = version.parse()?;
    let request = schema_request(&body)?;
    let references = request.references.unwrap_or_default();
    let state = r.state.read().await;
    let number = state.version(&subject, selector, false)?.version;
    let candidate = state.candidate(&request.schema, &references)?;
    let problems = state.check_against_subject(&subject, &candidate.parsed, Some(number))?;
    Ok(compatibility_reply(problems, flag(&params, "verbose")))
}

async fn global_config(AxumState(r): Shared) -> Response {
    let level = r.state.read().await.global_level();
    ok(json!({"compatibilityLevel": level.as_str()}))
}

async fn subject_config(
    AxumState(r): Shared,
    Path(subject): Path<String>,
    Query(params): Params,
) -> Result<Response> {
    let state = r.state.read().await;
    let level = match state.subject_level(&subject) {
        Some(level) => level,
        None if flag(&params, "defaultToGlobal") => state.global_level(),
        None => return Err(RegistryError::SubjectLevelNotConfigured(subject)),
    };
    Ok(ok(json!({"compatibilityLevel": level.as_str()})))
}

fn level_request(body: &Bytes) -> Result<CompatibilityLevel> {
    let request: Value = serde_json::from_slice(body).map_err(|e| {
        RegistryError::BadRequest(format!(
            "request body must be JSON {{\"compatibility\": \"BACKWARD\"}}: {e}"
        ))
    })?;
    let level = request
        .get("compatibility")
        .or_else(|| request.get("compatibilityLevel"))
        .and_then(Value::as_str)
        .ok_or_else(|| {
            RegistryError::BadRequest("request body must have a \"compatibility\" string".into())
        })?;
    level
        .parse()
        .map_err(|_| RegistryError::InvalidCompatibilityLevel(level.to_string()))
}

async fn put_global_config(AxumState(r): Shared, body: Bytes) -> Result<Response> {
    let level = level_request(&body)?;
    r.set_level(None, level).await?;
    Ok(ok(json!({"compatibility": level.as_str()})))
}

async fn put_subject_config(
    AxumState(r): Shared,
    Path(subject): Path<String>,
    body: Bytes,
) -> Result<Response> {
    let level = level_request(&body)?;
    r.set_level(Some(&subject), level).await?;
    Ok(ok(json!({"compatibility": level.as_str()})))
}
