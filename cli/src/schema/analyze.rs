//! `ferry analyze-schema`: what the target engine cannot take, or should take
//! differently, in the exported schema files (as exported or as edited since), and
//! whether the source is ready for the export (the exporter's own preflight).
//!
//! **Reading:** every statement of `<export-dir>/schema/*.sql` is read with
//! [`super::sql::entries`] and split into tokens (quotes, quoted identifiers, dollar
//! quotes and comments respected), so a column named `gist` or a comment saying
//! `INHERITS` is not a finding. Function bodies (`AS $$ ... $$` or `AS '...'`) are
//! tokenized again to find calls the target does not serve. A first pass collects each
//! table's column types (CREATE TABLE, ADD COLUMN, partitions through `PARTITION OF` and
//! `ATTACH PARTITION`), which tables are partitioned, and the composite, range and
//! domain types of `types.sql`; a second pass applies the rules to every statement.
//! Rules read statements only, never pg_dump's heads (a head names the object), so a
//! problem is reported once; identical findings are dropped as well.
//!
//! **Rules** (target YugabyteDB; documented in YugabyteDB's and Voyager's docs, not
//! checked against a server, none can run here):
//!
//! | category | finding | severity |
//! | --- | --- | --- |
//! | index access method | `USING gist / brin / spgist` | unsupported |
//! | index access method | `USING hash` (created as LSM, hash-sharded) | note |
//! | gin index | GIN on several columns; GIN key with `DESC` or `HASH` | unsupported |
//! | index key type | index, primary key or unique constraint on a column YugabyteDB's LSM index cannot key | unsupported |
//! | exclusion constraint | `EXCLUDE` | unsupported |
//! | deferrable constraint | `DEFERRABLE` on a primary key or unique constraint | unsupported |
//! | tablespace | `CREATE TABLESPACE`, `TABLESPACE x`, `SET default_tablespace = x` | unsupported |
//! | table inheritance | `INHERITS (...)`, `ALTER TABLE ... INHERIT` | unsupported |
//! | trigger | constraint trigger; `REFERENCING` (transition tables) | unsupported |
//! | trigger | `BEFORE ... FOR EACH ROW` on a partitioned table | degraded |
//! | generated column | `GENERATED ALWAYS AS (...) STORED` | degraded |
//! | unlogged table | `CREATE UNLOGGED TABLE`, `SET UNLOGGED` | note |
//! | foreign table | `CREATE FOREIGN TABLE` | degraded |
//! | alter table | `CLUSTER ON`, `ALTER COLUMN ... SET (...)`, `DISABLE RULE` | unsupported |
//! | system column | `ctid`, `xmin`, `xmax`, `cmin`, `cmax` in views, functions, rules, policies, triggers | unsupported |
//! | advisory lock | `pg_advisory_*` / `pg_try_advisory_*` calls | unsupported |
//! | listen/notify | `LISTEN`, `NOTIFY`, `UNLISTEN`, `pg_notify(...)` | unsupported |
//! | large object | `lo_*` calls, `loread` / `lowrite` | unsupported |
//! | primary key | `ALTER TABLE ... ADD PRIMARY KEY` after the CREATE TABLE | note |
//! | storage parameter | `WITH (...)` on an index or a primary key / unique constraint | unsupported |
//! | unique nulls not distinct | `NULLS NOT DISTINCT` | degraded |
//! | view | `WITH CHECK OPTION` | unsupported |
//! | conversion | `CREATE CONVERSION` | unsupported |
//!
//! Severities: **unsupported**, the statement fails (or the feature does not work) on
//! the current stable YugabyteDB; **degraded**, it works on the current stable release
//! (2025.1, PostgreSQL 15 based) but not on 2024.2, the oldest release Ferry supports,
//! or works only partly; **note**, it is taken, differently from PostgreSQL. For a
//! PostgreSQL target only version-independent notes are given (tablespaces must exist
//! there, foreign tables need their server).
//!
//! The types an LSM index cannot key: YugabyteDB documents tsvector, tsquery, jsonb,
//! arrays, inet, citext and user-defined (composite) types; json, cidr, macaddr,
//! macaddr8, bit, varbit, interval, the range and multirange types, the geometric types
//! (point, line, lseg, box, path, polygon, circle), pg_lsn, txid_snapshot and xml follow
//! Voyager's analyzer list (the geometric ones and xml have no btree operator class on
//! PostgreSQL either).
//!
//! **Source readiness:** when a `[source]` is configured, `ferry_exporter::analyze`
//! runs the exporter's preflight; each problem becomes an issue of category
//! `source readiness` (severity unsupported) with its fix.
//!
//! **JSON** (`--output-format json`), stable:
//!
//! ```text
//! {
//!   "target_engine": "yugabytedb" | "postgresql",
//!   "export_dir": "<DIR as given>",
//!   "schema_files": ["tables.sql", ...],      // files analysed ([] when DIR/schema is absent)
//!   "source": null | {"ready": bool, "tables": ["schema.table", ...]},
//!   "summary": {
//!     "issues": <number of issues>,
//!     "by_severity": {"degraded": n, "note": n, "unsupported": n},   // always all three
//!     "by_category": {"<category>": n, ...},                          // categories present
//!     "passed": bool                           // no unsupported issue and the source is ready
//!   },
//!   "issues": [{
//!     "category": "index access method",
//!     "severity": "unsupported" | "degraded" | "note",
//!     "object": "index public.orders_geo_idx",  // pg_dump's head, or read from the statement
//!     "file": "indexes.sql" | null,             // null for source readiness
//!     "line": 12 | null,                        // line where the statement starts
//!     "reason": "...",
//!     "fix": "...",
//!     "docs_url": "https://docs.yugabyte.com/..." | null
//!   }, ...],
//!   "objects": {"TABLE": n, "INDEX": n, ...}    // entries in the files by pg_dump's type
//! }
//! ```
//!
//! Exit status of the verb: 0 when `passed`, 1 otherwise, 2 for usage errors.
//!
//! Layout: this file runs the analysis and renders the report; `tokens` splits a
//! statement into tokens, `model` holds the first pass and the statement shapes,
//! `rules` the rules and the pass over the files.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use ferry_shared::config::{Config, Engine};
use serde::Serialize;

mod model;
mod rules;
#[cfg(test)]
mod tests;
mod tokens;

use rules::SOURCE_READINESS;
pub use rules::{analyze_schema_files, analyze_texts};

/// How bad a finding is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// Fails, or does not work, on the current stable release of the target.
    Unsupported,
    /// Works on the current stable release, not on every release Ferry supports, or
    /// only partly.
    Degraded,
    /// Taken, differently from PostgreSQL: worth knowing.
    Note,
}

impl Severity {
    /// The name used in every output.
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Unsupported => "unsupported",
            Severity::Degraded => "degraded",
            Severity::Note => "note",
        }
    }

    const ALL: [Severity; 3] = [Severity::Unsupported, Severity::Degraded, Severity::Note];
}

/// One finding, with what to do about it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Issue {
    /// The rule's category (`index access method`, `source readiness`, ...).
    pub category: String,
    /// How bad it is.
    pub severity: Severity,
    /// The object, schema-qualified (`index public.orders_geo_idx`).
    pub object: String,
    /// The schema file, `None` for source readiness.
    pub file: Option<String>,
    /// The line where the statement starts.
    pub line: Option<usize>,
    /// What is wrong.
    pub reason: String,
    /// What to do.
    pub fix: String,
    /// Where the target's documentation says so.
    pub docs_url: Option<String>,
}

/// The report's formats.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Grouped by category, with counts by category, severity and object kind.
    Text,
    /// {"target_engine", "export_dir", "schema_files", "source", "summary", "issues",
    /// "objects"}: stable, for scripts.
    Json,
    /// One self-contained page (no external assets).
    Html,
}

/// What the source check found.
#[derive(Clone, Debug, Serialize)]
pub struct SourceStatus {
    /// True when the exporter's preflight passed.
    pub ready: bool,
    /// The selected tables (when ready).
    pub tables: Vec<String>,
}

/// Counts of the report.
#[derive(Clone, Debug, Serialize)]
pub struct Summary {
    /// Number of issues.
    pub issues: usize,
    /// Issues per severity (all three present).
    pub by_severity: BTreeMap<&'static str, usize>,
    /// Issues per category present.
    pub by_category: BTreeMap<String, usize>,
    /// No unsupported issue and the source (when configured) is ready.
    pub passed: bool,
}

/// The whole report of `ferry analyze-schema`.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// The engine the files were judged for.
    pub target_engine: String,
    /// The export directory, as given.
    pub export_dir: String,
    /// The schema files analysed, in apply order.
    pub schema_files: Vec<String>,
    /// The source check, when a source is configured.
    pub source: Option<SourceStatus>,
    /// Counts.
    pub summary: Summary,
    /// Every finding, source readiness first, then by file (apply order) and line.
    pub issues: Vec<Issue>,
    /// Entries in the files by pg_dump's type (`TABLE`, `INDEX`, ...).
    pub objects: BTreeMap<String, usize>,
    /// The per-table listing of a ready source (text output only).
    #[serde(skip)]
    pub source_listing: String,
}

/// What the schema files hold.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FilesAnalysis {
    /// Findings, by file (in the order given) and line.
    pub issues: Vec<Issue>,
    /// Entries by pg_dump's type.
    pub objects: BTreeMap<String, usize>,
}

/// The engine `analyze-schema` judges for: the target's when one is configured, else
/// YugabyteDB.
pub fn target_engine(config: &Config) -> Engine {
    config
        .target
        .as_ref()
        .map_or(Engine::Yugabytedb, |t| t.engine)
}

/// Runs the whole analysis: the source check when a source is configured, the files
/// when `analyze_files` (the caller checked that `<export_dir>/schema` exists).
pub async fn run(
    config: &Config,
    export_dir: &Path,
    analyze_files: bool,
) -> Result<Report, String> {
    let engine = target_engine(config);
    let mut issues = Vec::new();
    let mut source = None;
    let mut listing = String::new();
    if config.source.is_some() {
        match ferry_exporter::analyze(config).await {
            Ok(tables) => {
                listing = source_listing(&tables);
                source = Some(SourceStatus {
                    ready: true,
                    tables: tables.iter().map(|t| t.to_string()).collect(),
                });
            }
            Err(ferry_exporter::Error::Check(e)) if !e.problems().is_empty() => {
                issues.extend(source_issues(e.problems()));
                source = Some(SourceStatus {
                    ready: false,
                    tables: Vec::new(),
                });
            }
            Err(e) => {
                issues.push(Issue {
                    category: SOURCE_READINESS.into(),
                    severity: Severity::Unsupported,
                    object: "source database".into(),
                    file: None,
                    line: None,
                    reason: format!(
                        "the source could not be checked: {}",
                        ferry_shared::process::error_chain(&e)
                    ),
                    fix: "make the source reachable with the configured settings (or remove [source] to analyze only the files), then run ferry analyze-schema again".into(),
                    docs_url: None,
                });
                source = Some(SourceStatus {
                    ready: false,
                    tables: Vec::new(),
                });
            }
        }
    }
    let mut schema_files = Vec::new();
    let mut objects = BTreeMap::new();
    if analyze_files {
        let files = super::read_files(export_dir)?;
        schema_files = files.iter().map(|(f, _)| f.name.to_owned()).collect();
        let found = analyze_schema_files(&files, engine);
        issues.extend(found.issues);
        objects = found.objects;
    }
    Ok(Report::new(
        engine,
        export_dir.display().to_string(),
        schema_files,
        source,
        issues,
        objects,
        listing,
    ))
}

/// The source preflight's problems as issues.
pub fn source_issues(problems: &[ferry_exporter::check::Problem]) -> Vec<Issue> {
    problems
        .iter()
        .map(|p| Issue {
            category: SOURCE_READINESS.into(),
            severity: Severity::Unsupported,
            object: "source database".into(),
            file: None,
            line: None,
            reason: p.message.clone(),
            fix: p.fix.clone(),
            docs_url: None,
        })
        .collect()
}

/// What a ready source prints: per table, its key and how each column travels.
fn source_listing(tables: &[ferry_shared::catalog::TableSchema]) -> String {
    let mut out = format!(
        "the source is ready: {} table(s) selected, every column type can travel\n",
        tables.len()
    );
    for table in tables {
        let key: Vec<&str> = table.key_columns().map(|c| c.name.as_str()).collect();
        let _ = writeln!(out, "\n{table} (primary key: {})", key.join(", "));
        for column in &table.columns {
            let _ = writeln!(
                out,
                "  {:<32} {:<32} {}",
                column.name,
                column.type_name,
                ferry_shared::avro::describe_kind(&column.kind)
            );
        }
    }
    out
}

impl Report {
    /// A report from its parts; the summary is computed here.
    pub fn new(
        engine: Engine,
        export_dir: String,
        schema_files: Vec<String>,
        source: Option<SourceStatus>,
        issues: Vec<Issue>,
        objects: BTreeMap<String, usize>,
        source_listing: String,
    ) -> Report {
        let mut by_severity: BTreeMap<&'static str, usize> =
            Severity::ALL.iter().map(|s| (s.as_str(), 0)).collect();
        let mut by_category = BTreeMap::new();
        for issue in &issues {
            *by_severity.entry(issue.severity.as_str()).or_default() += 1;
            *by_category.entry(issue.category.clone()).or_default() += 1;
        }
        let passed = !issues.iter().any(|i| i.severity == Severity::Unsupported)
            && source.as_ref().is_none_or(|s| s.ready);
        Report {
            target_engine: engine.as_str().to_owned(),
            export_dir,
            schema_files,
            source,
            summary: Summary {
                issues: issues.len(),
                by_severity,
                by_category,
                passed,
            },
            issues,
            objects,
            source_listing,
        }
    }

    /// True when nothing stops the migration: exit status 0.
    pub fn passed(&self) -> bool {
        self.summary.passed
    }

    /// The one line said on standard error when the report did not pass.
    pub fn failure_message(&self) -> String {
        let unsupported = self
            .summary
            .by_severity
            .get("unsupported")
            .copied()
            .unwrap_or(0);
        format!(
            "analyze-schema found {unsupported} unsupported issue(s){}: fix each as the report says, then run ferry analyze-schema again",
            if self.source.as_ref().is_some_and(|s| !s.ready) {
                " (the source is not ready)"
            } else {
                ""
            }
        )
    }

    /// The report in `format`.
    pub fn render(&self, format: Format) -> String {
        match format {
            Format::Text => self.render_text(),
            Format::Json => {
                let mut s = serde_json::to_string_pretty(self).unwrap_or_default();
                s.push('\n');
                s
            }
            Format::Html => self.render_html(),
        }
    }

    /// Issues grouped by category, in order of first appearance.
    fn groups(&self) -> Vec<(&str, Vec<&Issue>)> {
        let mut groups: Vec<(&str, Vec<&Issue>)> = Vec::new();
        for issue in &self.issues {
            match groups.iter_mut().find(|(c, _)| *c == issue.category) {
                Some((_, list)) => list.push(issue),
                None => groups.push((issue.category.as_str(), vec![issue])),
            }
        }
        groups
    }

    /// The text report.
    pub fn render_text(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "ferry analyze-schema: target engine {}, export directory {}",
            self.target_engine, self.export_dir
        );
        if self.schema_files.is_empty() {
            let _ = writeln!(
                out,
                "no exported schema in {}/schema: only the source was checked (run ferry export schema to analyze the DDL too)",
                self.export_dir
            );
        } else {
            let _ = writeln!(out, "schema files: {}", self.schema_files.join(", "));
        }
        match &self.source {
            None => {
                let _ = writeln!(out, "source: not configured, not checked");
            }
            Some(s) if s.ready => {
                let _ = writeln!(out, "\n{}", self.source_listing.trim_end());
            }
            Some(_) => {}
        }
        for (category, issues) in self.groups() {
            let _ = writeln!(
                out,
                "\n{category} ({} issue{})",
                issues.len(),
                if issues.len() == 1 { "" } else { "s" }
            );
            for issue in issues {
                let place = match (&issue.file, issue.line) {
                    (Some(f), Some(l)) => format!(" ({f}:{l})"),
                    (Some(f), None) => format!(" ({f})"),
                    _ => String::new(),
                };
                let _ = writeln!(
                    out,
                    "  [{}] {}{place}",
                    issue.severity.as_str(),
                    issue.object
                );
                let _ = writeln!(out, "    {}", issue.reason);
                let _ = writeln!(out, "    fix: {}", issue.fix);
                if let Some(url) = &issue.docs_url {
                    let _ = writeln!(out, "    docs: {url}");
                }
            }
        }
        let s = &self.summary;
        let sev = |name: &str| s.by_severity.get(name).copied().unwrap_or(0);
        let _ = writeln!(
            out,
            "\nsummary: {} issue(s): {} unsupported, {} degraded, {} note",
            s.issues,
            sev("unsupported"),
            sev("degraded"),
            sev("note")
        );
        if !s.by_category.is_empty() {
            let cats: Vec<String> = s
                .by_category
                .iter()
                .map(|(c, n)| format!("{c} {n}"))
                .collect();
            let _ = writeln!(out, "  by category: {}", cats.join(", "));
        }
        if !self.objects.is_empty() {
            let objs: Vec<String> = self
                .objects
                .iter()
                .map(|(k, n)| format!("{} {n}", k.to_lowercase()))
                .collect();
            let _ = writeln!(out, "  objects in the files: {}", objs.join(", "));
        }
        let _ = writeln!(
            out,
            "{}",
            if s.passed {
                "result: passed (no unsupported issue; the source, when configured, is ready)"
            } else {
                "result: not passed (see the unsupported issues above)"
            }
        );
        out
    }

    /// One self-contained HTML page (no external assets; every text escaped).
    pub fn render_html(&self) -> String {
        let mut out = String::new();
        out.push_str("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n");
        let _ = writeln!(
            out,
            "<title>ferry analyze-schema: {}</title>",
            escape(&self.export_dir)
        );
        out.push_str(
            "<style>\nbody{font-family:system-ui,sans-serif;margin:2em;color:#222}\n\
             table{border-collapse:collapse;margin:1em 0}\n\
             th,td{border:1px solid #ccc;padding:4px 8px;text-align:left;vertical-align:top}\n\
             th{background:#f3f3f3}\n.unsupported{color:#b00020;font-weight:bold}\n\
             .degraded{color:#a15c00;font-weight:bold}\n.note{color:#555}\n\
             code{font-family:ui-monospace,monospace}\n</style>\n</head>\n<body>\n",
        );
        let _ = writeln!(out, "<h1>ferry analyze-schema</h1>");
        let _ = writeln!(
            out,
            "<p>Target engine <b>{}</b>, export directory <code>{}</code>; schema files: {}.</p>",
            escape(&self.target_engine),
            escape(&self.export_dir),
            if self.schema_files.is_empty() {
                "none".to_owned()
            } else {
                escape(&self.schema_files.join(", "))
            }
        );
        let source = match &self.source {
            None => "not configured".to_owned(),
            Some(s) if s.ready => format!("ready ({} table(s))", s.tables.len()),
            Some(_) => "not ready".to_owned(),
        };
        let _ = writeln!(out, "<p>Source: {}.</p>", escape(&source));
        let s = &self.summary;
        let _ = writeln!(
            out,
            "<p id=\"result\">Result: <b>{}</b></p>",
            if s.passed { "passed" } else { "not passed" }
        );
        out.push_str("<h2>Summary</h2>\n<table><tr><th>severity</th><th>issues</th></tr>\n");
        for sev in Severity::ALL {
            let _ = writeln!(
                out,
                "<tr><td class=\"{0}\">{0}</td><td>{1}</td></tr>",
                sev.as_str(),
                s.by_severity.get(sev.as_str()).copied().unwrap_or(0)
            );
        }
        out.push_str("</table>\n<table><tr><th>category</th><th>issues</th></tr>\n");
        for (c, n) in &s.by_category {
            let _ = writeln!(out, "<tr><td>{}</td><td>{n}</td></tr>", escape(c));
        }
        out.push_str("</table>\n");
        for (category, issues) in self.groups() {
            let _ = writeln!(out, "<h2>{}</h2>", escape(category));
            out.push_str(
                "<table><tr><th>severity</th><th>object</th><th>where</th><th>reason</th><th>fix</th><th>docs</th></tr>\n",
            );
            for i in issues {
                let place = match (&i.file, i.line) {
                    (Some(f), Some(l)) => format!("{f}:{l}"),
                    (Some(f), None) => f.clone(),
                    _ => String::new(),
                };
                let docs = i
                    .docs_url
                    .as_ref()
                    .map(|u| format!("<a href=\"{0}\">{0}</a>", escape(u)))
                    .unwrap_or_default();
                let _ = writeln!(
                    out,
                    "<tr><td class=\"{}\">{}</td><td><code>{}</code></td><td>{}</td><td>{}</td><td>{}</td><td>{docs}</td></tr>",
                    i.severity.as_str(),
                    i.severity.as_str(),
                    escape(&i.object),
                    escape(&place),
                    escape(&i.reason),
                    escape(&i.fix)
                );
            }
            out.push_str("</table>\n");
        }
        if !self.objects.is_empty() {
            out.push_str(
                "<h2>Objects in the files</h2>\n<table><tr><th>kind</th><th>count</th></tr>\n",
            );
            for (k, n) in &self.objects {
                let _ = writeln!(out, "<tr><td>{}</td><td>{n}</td></tr>", escape(k));
            }
            out.push_str("</table>\n");
        }
        if let Some(src) = &self.source {
            if src.ready && !src.tables.is_empty() {
                out.push_str("<h2>Source tables</h2>\n<ul>\n");
                for t in &src.tables {
                    let _ = writeln!(out, "<li><code>{}</code></li>", escape(t));
                }
                out.push_str("</ul>\n");
            }
        }
        out.push_str("</body>\n</html>\n");
        out
    }
}

/// HTML text escaping (also safe inside double-quoted attributes).
fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}
