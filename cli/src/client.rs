//! The verbs that talk to the coordinator over its HTTP API: cutover, status, report,
//! end migration.

use std::fmt::Write as _;
use std::time::Duration;

use ferry_coordinator::cutover::{CutoverRequest, PrepareFor};
use ferry_coordinator::end::{EndReport, EndRequest};
use ferry_coordinator::positions::Status;
use ferry_coordinator::report::{self, Report};
use ferry_shared::config::{Config, Secret};
use ferry_shared::coordinator_access;
use ferry_shared::error_policy::{classify_http_status, Backoff};
use ferry_shared::state::{format_ms, Cutover, MigrationStatus};
use ferry_shared::topics::Destination;
use serde::de::DeserializeOwned;
use serde::Serialize;

/// How many times a GET is asked again after a transient answer.
const GET_ATTEMPTS: u32 = 3;

/// A failed call, said for the operator.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ApiError(pub String);

/// The coordinator's API.
pub struct Api {
    base: String,
    http: reqwest::Client,
    /// Sent with every request (`Authorization: Bearer`); `None`: none configured, the
    /// coordinator's 401 answer says how to pass it.
    token: Option<Secret>,
}

impl Api {
    /// From `coordinator.url` (or `http://<coordinator.listen>`), with the coordinator's
    /// token and CA file ([`ferry_shared::coordinator_access`]).
    pub fn new(config: &Config) -> Result<Api, ApiError> {
        let access = |e: coordinator_access::AccessError| ApiError(e.to_string());
        let token = coordinator_access::client_token(&config.coordinator).map_err(access)?;
        let http = coordinator_access::http_client_builder(&config.coordinator)
            .map_err(access)?
            .timeout(Duration::from_secs(120))
            .build()
            .map_err(|e| ApiError(format!("creating an HTTP client: {e}")))?;
        Ok(Api {
            base: config.coordinator.url(),
            http,
            token,
        })
    }

    fn authorized(&self, request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.token {
            Some(token) => request.bearer_auth(token.expose().trim()),
            None => request,
        }
    }

    fn unreachable(&self, e: &reqwest::Error) -> ApiError {
        // reqwest's own text stops at "error sending request"; the reason (refused,
        // certificate not trusted) is further down the chain.
        let mut reason = e.to_string();
        let mut source = std::error::Error::source(e);
        while let Some(cause) = source {
            let text = cause.to_string();
            if !reason.contains(&text) {
                let _ = write!(reason, ": {text}");
            }
            source = cause.source();
        }
        let https = if self.base.starts_with("https://") {
            "; over HTTPS, coordinator.ca_file must name the CA that signed the coordinator's certificate (coordinator.tls_cert)"
        } else {
            ""
        };
        ApiError(format!(
            "cannot reach the coordinator at {} ({reason}): start it with \"ferry coordinator\" (or ferry-coordinator), or set coordinator.url to where it runs{https}",
            self.base
        ))
    }

    async fn read<T: DeserializeOwned>(&self, resp: reqwest::Response) -> Result<T, ApiError> {
        let status = resp.status();
        let body = resp
            .bytes()
            .await
            .map_err(|e| ApiError(format!("reading the coordinator's answer: {e}")))?;
        if !status.is_success() {
            let message = serde_json::from_slice::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_owned))
                .unwrap_or_else(|| String::from_utf8_lossy(&body).into_owned());
            return Err(ApiError(message));
        }
        serde_json::from_slice(&body).map_err(|e| {
            ApiError(format!(
                "the coordinator at {} answered something this ferry cannot read ({e}); are the CLI and the coordinator the same version?",
                self.base
            ))
        })
    }

    /// GET `path`. A transient answer (5xx, 408, 429: the coordinator busy or
    /// restarting) is asked again a few times under the one error policy; a GET changes
    /// nothing, so asking again is safe.
    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ApiError> {
        let mut backoff = Backoff::new();
        loop {
            let resp = self
                .authorized(self.http.get(format!("{}{path}", self.base)))
                .send()
                .await
                .map_err(|e| self.unreachable(&e))?;
            let transient = classify_http_status(resp.status().as_u16()).is_transient();
            if !resp.status().is_success() && transient && backoff.attempts() < GET_ATTEMPTS {
                tokio::time::sleep(backoff.delay()).await;
                continue;
            }
            return self.read(resp).await;
        }
    }

    /// POST `body` as JSON to `path`.
    pub async fn post<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T, ApiError> {
        let json = serde_json::to_vec(body).map_err(|e| ApiError(e.to_string()))?;
        let resp = self
            .authorized(self.http.post(format!("{}{path}", self.base)))
            .header("content-type", "application/json")
            .body(json)
            .send()
            .await
            .map_err(|e| self.unreachable(&e))?;
        self.read(resp).await
    }
}

/// `ferry initiate cutover to <to>`.
pub async fn initiate_cutover(
    config: &Config,
    to: Destination,
    prepare_for: PrepareFor,
) -> Result<String, ApiError> {
    let api = Api::new(config)?;
    let msr: MigrationStatus = api
        .post("/api/cutover", &CutoverRequest { to, prepare_for })
        .await?;
    let c = msr.cutover(to);
    let mut out = format!(
        "cutover to {to} {} (workflow: {})\n",
        c.status.as_str(),
        msr.workflow.as_str()
    );
    let _ = writeln!(
        out,
        "follow it with \"ferry cutover status\"; point the application at the {to} once it shows COMPLETED"
    );
    Ok(out)
}

fn cutover_lines(out: &mut String, to: Destination, c: &Cutover) {
    let _ = writeln!(out, "cutover to {}: {}", to.as_str(), c.status.as_str());
    if let Some(at) = c.requested_at_ms {
        let mut prev = at;
        for s in &c.steps {
            let took = (s.done_at_ms - prev).max(0) as f64 / 1000.0;
            let _ = writeln!(
                out,
                "  {}  {:<36} (+{took:.1} s)  {}",
                format_ms(s.done_at_ms),
                s.name,
                s.description
            );
            prev = s.done_at_ms;
        }
        if let Some(done) = c.completed_at_ms {
            let _ = writeln!(
                out,
                "  {}  completed in {:.1} s",
                format_ms(done),
                (done - at).max(0) as f64 / 1000.0
            );
        }
    }
    if let Some(w) = &c.waiting_for {
        let _ = writeln!(out, "  waiting for: {w}");
    }
}

/// `ferry cutover status`: per direction, the status and the time of each step, then
/// where the streams and importers stand.
pub async fn cutover_status(config: &Config) -> Result<String, ApiError> {
    let api = Api::new(config)?;
    let s: Status = api.get("/api/status").await?;
    Ok(render_status(&s))
}

/// The text of `ferry cutover status`.
pub fn render_status(s: &Status) -> String {
    let mut out = String::new();
    let m = &s.migration;
    let _ = writeln!(
        out,
        "migration {} (workflow: {}){}",
        m.migration_id,
        m.workflow.as_str(),
        m.ended_at_ms
            .map(|t| format!(", ended at {}", format_ms(t)))
            .unwrap_or_default()
    );
    for to in [
        Destination::Target,
        Destination::SourceReplica,
        Destination::Source,
    ] {
        cutover_lines(&mut out, to, m.cutover(to));
    }
    let _ = writeln!(
        out,
        "\nstreams (measured {:.1} s ago):",
        (ferry_shared::state::now_ms() - s.at_ms).max(0) as f64 / 1000.0
    );
    for st in &s.streams {
        let _ = writeln!(
            out,
            "  {:<7} directive {:<8} exporter {:<12} snapshot {:<8} last VSN {:<10} records {:<10} {:.0} events/s",
            st.stream.as_str(),
            st.directive,
            st.exporter_phase,
            if st.snapshot_done { "done" } else { "not done" },
            st.last_vsn,
            st.records,
            st.rate_3m
        );
        if let Some(e) = &st.exporter_error {
            error_line(&mut out, 10, e);
        }
    }
    let _ = writeln!(out, "importers:");
    for i in &s.importers {
        let eta = match (i.eta_seconds, &i.error) {
            (_, Some(e)) => format!("({e})"),
            (Some(0.0), _) => "caught up".to_owned(),
            (Some(e), _) => format!("ETA {e:.0} s"),
            (None, _) => "ETA unknown".to_owned(),
        };
        let _ = writeln!(
            out,
            "  {:<14} applies {:<9} instances {:<2} applied VSN {:<10} remaining {:<10} {:.0} events/s  {eta}",
            i.destination.as_str(),
            i.stream.map_or("(waits)".to_owned(), |s| s.to_string()),
            i.instances,
            i.applied_vsn,
            i.remaining,
            i.rate_3m
        );
        for inst in &i.instance_states {
            let _ = writeln!(
                out,
                "    {:<24} {:<9} last seen {}  partitions {}",
                inst.instance,
                inst.state,
                format_ms(inst.last_seen_ms),
                inst.partitions_held
            );
            if let Some(e) = &inst.error {
                error_line(&mut out, 6, e);
            }
        }
    }
    if !s.errors.is_empty() {
        let _ = writeln!(
            out,
            "errors (shown until an instance of the same stream's exporter or destination's importers runs successfully again):"
        );
        for e in &s.errors {
            let _ = writeln!(
                out,
                "  {} {} {} {}",
                e.role,
                e.unit,
                e.instance,
                if e.state == "failed" {
                    "FAILED (stopped; fix the cause and start it again: it resumes where it stopped)"
                } else {
                    "retrying"
                }
            );
            error_line(&mut out, 4, &e.error);
        }
    }
    out
}

/// `<indent>definite error at <time>: <message>`.
fn error_line(out: &mut String, indent: usize, e: &ferry_shared::heartbeat::ServiceError) {
    let _ = writeln!(
        out,
        "{:indent$}{} error at {}: {}",
        "",
        e.kind,
        format_ms(e.at_ms),
        e.message
    );
}

/// `ferry get data-migration-report`.
pub async fn data_migration_report(config: &Config, json: bool) -> Result<String, ApiError> {
    let api = Api::new(config)?;
    let r: Report = api.get("/api/report").await?;
    Ok(if json {
        serde_json::to_string_pretty(&r).unwrap_or_default() + "\n"
    } else {
        report::render(&r)
    })
}

/// What `ferry end migration` backs up, and whether it deletes the topics.
#[derive(Debug, Clone, Default)]
pub struct EndOptions {
    /// Where backups go.
    pub backup_dir: Option<std::path::PathBuf>,
    /// Save the data-migration report (text and JSON) and the status.
    pub save_migration_reports: bool,
    /// Save the migration's state and heartbeat records (`_state`, `_status`).
    pub backup_log_files: bool,
    /// `pg_dump --schema-only` of every configured database.
    pub backup_schema_files: bool,
    /// Every event of both streams, as JSON lines in VSN order (what `ferry replay`
    /// writes), one file per stream.
    pub backup_data_files: bool,
    /// Delete the migration's topics.
    pub delete_topics: bool,
}

/// `ferry end migration`.
pub async fn end_migration(config: &Config, opts: &EndOptions) -> Result<String, ApiError> {
    let api = Api::new(config)?;
    let mut out = String::new();
    let wants_backup =
        opts.save_migration_reports || opts.backup_log_files || opts.backup_schema_files;
    let dir = match (&opts.backup_dir, wants_backup) {
        (Some(d), _) => Some(d.clone()),
        (None, true) => {
            return Err(ApiError(
                "--save-migration-reports, --backup-log-files, --backup-schema-files and --backup-data-files need --backup-dir DIR".into(),
            ))
        }
        (None, false) => None,
    };
    if let Some(dir) = &dir {
        std::fs::create_dir_all(dir).map_err(|e| {
            ApiError(format!(
                "cannot create backup directory {}: {e}",
                dir.display()
            ))
        })?;
        let write = |name: &str, bytes: &[u8]| -> Result<std::path::PathBuf, ApiError> {
            let path = dir.join(name);
            std::fs::write(&path, bytes)
                .map_err(|e| ApiError(format!("cannot write {}: {e}", path.display())))?;
            Ok(path)
        };
        if opts.save_migration_reports {
            let r: Report = api.get("/api/report").await?;
            let s: Status = api.get("/api/status").await?;
            for (name, bytes) in [
                ("data-migration-report.txt", report::render(&r).into_bytes()),
                (
                    "data-migration-report.json",
                    serde_json::to_vec_pretty(&r).unwrap_or_default(),
                ),
                ("cutover-status.txt", render_status(&s).into_bytes()),
                (
                    "status.json",
                    serde_json::to_vec_pretty(&s).unwrap_or_default(),
                ),
            ] {
                let p = write(name, &bytes)?;
                let _ = writeln!(out, "saved {}", p.display());
            }
        }
        if opts.backup_log_files {
            let topics = ferry_shared::topics::Topics::new(config.migration.topic_prefix());
            let kafka = config.kafka.client_config();
            for topic in [topics.state(), topics.status()] {
                let records = ferry_shared::kafka::read_all(&kafka, &topic)
                    .await
                    .map_err(|e| ApiError(format!("reading {topic}: {e}")))?;
                let mut text = String::new();
                for r in records {
                    let line = serde_json::json!({
                        "offset": r.offset,
                        "key": r.key.map(|k| String::from_utf8_lossy(&k).into_owned()),
                        "value": r.value.map(|v| serde_json::from_slice::<serde_json::Value>(&v)
                            .unwrap_or_else(|_| serde_json::Value::String(String::from_utf8_lossy(&v).into_owned()))),
                    });
                    let _ = writeln!(text, "{line}");
                }
                let p = write(&format!("{topic}.jsonl"), text.as_bytes())?;
                let _ = writeln!(out, "saved {}", p.display());
            }
        }
        if opts.backup_data_files {
            use ferry_shared::topics::Stream;
            for stream in [Stream::Source, Stream::Target] {
                let prefix = format!(
                    "{}.{stream}.",
                    ferry_shared::topics::Topics::new(config.migration.topic_prefix()).prefix()
                );
                let topics =
                    ferry_shared::kafka::list_topics(&config.kafka.client_config(), &prefix)
                        .await
                        .map_err(|e| {
                            ApiError(format!("listing the {stream} stream's topics: {e}"))
                        })?;
                if topics.is_empty() {
                    continue;
                }
                let path = dir.join(format!("{stream}-stream.jsonl"));
                let replay = ferry_cli::replay::ReplayOptions {
                    stream,
                    tables: Vec::new(),
                    start: Default::default(),
                    end: Default::default(),
                };
                let summary = ferry_cli::replay::replay_to_file(
                    config,
                    &replay,
                    Some(&path),
                    ferry_shared::shutdown::Shutdown::never(),
                )
                .await
                .map_err(|e| ApiError(format!("backing up the {stream} stream: {e}")))?;
                let _ = writeln!(
                    out,
                    "saved {} ({} events of the {stream} stream)",
                    path.display(),
                    summary.events
                );
            }
        }
        if opts.backup_schema_files {
            for d in [
                Destination::Source,
                Destination::Target,
                Destination::SourceReplica,
            ] {
                let Some(db) = config.database(d) else {
                    continue;
                };
                let path = dir.join(format!("schema-{}.sql", d.as_str()));
                let status = tokio::process::Command::new("pg_dump")
                    .arg("--schema-only")
                    .arg("--no-owner")
                    .arg("--exclude-schema=ferry_metadata")
                    .arg("-f")
                    .arg(&path)
                    .arg("-h")
                    .arg(&db.host)
                    .arg("-p")
                    .arg(db.port().to_string())
                    .arg("-U")
                    .arg(&db.user)
                    .arg(&db.database)
                    // The password and TLS settings through the environment, never
                    // the command line (which `ps` shows to every user).
                    .env("PGPASSWORD", db.password.expose())
                    .env("PGSSLMODE", db.sslmode.as_str())
                    .envs(db.sslrootcert.as_deref().map(|ca| ("PGSSLROOTCERT", ca)))
                    .status()
                    .await
                    .map_err(|e| {
                        ApiError(format!(
                            "cannot run pg_dump for --backup-schema-files ({e}): install the PostgreSQL client tools or leave the flag out"
                        ))
                    })?;
                if !status.success() {
                    return Err(ApiError(format!(
                        "pg_dump of the {d} database failed ({status}); nothing was ended"
                    )));
                }
                let _ = writeln!(out, "saved {}", path.display());
            }
        }
    }
    let r: EndReport = api
        .post(
            "/api/end",
            &EndRequest {
                delete_topics: opts.delete_topics,
            },
        )
        .await?;
    for d in &r.done {
        let _ = writeln!(out, "done: {d}");
    }
    for f in &r.failed {
        let _ = writeln!(out, "NOT done: {f}");
    }
    if !r.failed.is_empty() {
        return Err(ApiError(format!(
            "{out}the migration was ended, but some clean-up failed (see NOT done above); fix it and run \"ferry end migration\" again"
        )));
    }
    let _ = writeln!(out, "migration ended");
    Ok(out)
}
