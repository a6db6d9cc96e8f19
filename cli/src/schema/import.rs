//! `ferry import schema`: applies the (edited) files of `<export-dir>/schema` to the
//! target or a source-replica in dependency order ([`super::FILES`]).
//!
//! - **Two phases.** The first run creates what the snapshot import needs (types,
//!   functions, tables, partitions, sequences, primary keys, unique and check
//!   constraints, unique indexes, foreign keys, views, materialized views empty).
//!   `--post-snapshot-import` adds what would slow the snapshot import or fire during
//!   it: non-unique indexes, triggers, policies and rules, comments, and fills the
//!   materialized views (`REFRESH MATERIALIZED VIEW`); with `--include-grants`, the
//!   ownership and privileges of grants.sql.
//! - **Resumable.** Every applied statement is recorded in
//!   `ferry_metadata.schema_statements` of the destination (file, md5 of its text, which
//!   occurrence): on PostgreSQL in the statement's own transaction, so a run killed at
//!   any moment leaves each statement either applied and recorded or neither; a rerun
//!   does only the rest. On a database whose DDL commits on its own (YugabyteDB), the
//!   statement that was running when a run died may be applied but not recorded: the
//!   rerun takes an "already exists" from that one statement as applied.
//! - **`--ignore-exist`**: any statement refused because its object exists counts as
//!   applied (for objects made by hand). Schemas and extensions always do.
//! - **Failures** are reported each with its file, line and object, and the run goes
//!   on with the statements that don't depend on them; it exits 1, and a rerun after a
//!   fix does only what is left.

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use ferry_shared::config::Config;
use ferry_shared::error_policy::describe_pg;
use ferry_shared::metadata::SCHEMA_STATEMENTS_SETUP_SQL;
use ferry_shared::topics::Destination;
use tokio_postgres::error::SqlState;
use tokio_postgres::Client;

use super::sql::{self, Head};
use super::{read_files, Phase};

/// How to import.
#[derive(Clone, Debug)]
pub struct ImportOptions {
    /// The export directory (`<dir>/schema/*.sql`).
    pub export_dir: PathBuf,
    /// The database to create the schema in: target or source-replica.
    pub destination: Destination,
    /// Also apply what waits for the snapshot import.
    pub post_snapshot: bool,
    /// A statement whose object exists counts as applied.
    pub ignore_exist: bool,
    /// Apply grants.sql (with `post_snapshot`).
    pub include_grants: bool,
}

/// One planned statement.
#[derive(Clone, Debug)]
struct Planned {
    file: &'static str,
    line: usize,
    object: String,
    kind: String,
    text: String,
    md5_key: (String, usize),
    phase: Phase,
}

/// What happened to the statements.
#[derive(Debug, Default, serde::Serialize)]
pub struct ImportSummary {
    /// The destination, as `user@host:port/database`.
    pub database: String,
    /// Applied now.
    pub applied: usize,
    /// Applied by an earlier run (recorded).
    pub already_applied: usize,
    /// Refused because the object exists, counted as applied.
    pub existed: Vec<String>,
    /// Left for `--post-snapshot-import` (or `--include-grants`).
    pub deferred: usize,
    /// Failed: file:line, object, error.
    pub failed: Vec<Failed>,
    /// Per file: statements applied now.
    pub per_file: Vec<(String, usize)>,
}

/// A statement the database refused.
#[derive(Debug, serde::Serialize)]
pub struct Failed {
    /// `schema/tables.sql:42`.
    pub at: String,
    /// The object, as pg_dump's head names it.
    pub object: String,
    /// The database's error, with its hint.
    pub error: String,
    /// The statement's first line.
    pub statement: String,
}

impl ImportSummary {
    /// The operator's view.
    pub fn render(&self, opts: &ImportOptions) -> String {
        let mut out = format!(
            "import schema into the {} ({}): {} statement(s) applied now, {} applied before",
            opts.destination, self.database, self.applied, self.already_applied
        );
        if !self.existed.is_empty() {
            let _ = write!(
                out,
                ", {} existed already (counted as applied)",
                self.existed.len()
            );
        }
        out.push('\n');
        for (file, n) in &self.per_file {
            let _ = writeln!(out, "  {file:<18} {n:>4} applied");
        }
        for e in &self.existed {
            let _ = writeln!(out, "  existed: {e}");
        }
        for f in &self.failed {
            let _ = writeln!(
                out,
                "FAILED {} ({}): {}\n    {}",
                f.at, f.object, f.error, f.statement
            );
        }
        if !self.failed.is_empty() {
            let _ = writeln!(
                out,
                "{} statement(s) failed: fix them in the files (or on the {}), then run the same command again; it does only what is left",
                self.failed.len(),
                opts.destination
            );
        } else if self.deferred > 0 && !opts.post_snapshot {
            let _ = writeln!(
                out,
                "{} statement(s) wait for `ferry import schema --post-snapshot-import` (indexes, triggers, comments; grants.sql with --include-grants): run it once the snapshot is imported (`ferry cutover status` shows it)",
                self.deferred
            );
        } else if self.deferred > 0 {
            let _ = writeln!(
                out,
                "the schema is complete but for grants.sql ({} ownership and privilege statement(s)): add --include-grants when the {} has the source's roles",
                self.deferred, opts.destination
            );
        } else {
            out.push_str("the schema is complete\n");
        }
        out
    }
}

/// Why nothing could be imported.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    /// Configuration or files.
    #[error("{0}")]
    Setup(String),
    /// The destination failed outside a statement of the files.
    #[error("{what} on the {destination}: {error}")]
    Database {
        /// What Ferry was doing.
        what: String,
        /// Which database.
        destination: Destination,
        /// The error, with its hint.
        error: String,
    },
}

/// Applies the schema files; the summary lists every failure (the caller exits 1 then).
pub async fn import_schema(
    config: &Config,
    opts: &ImportOptions,
) -> Result<ImportSummary, ImportError> {
    let files = read_files(&opts.export_dir).map_err(ImportError::Setup)?;
    if files.is_empty() {
        return Err(ImportError::Setup(format!(
            "{} holds no schema file: run `ferry export schema --export-dir {}` first",
            super::schema_dir(&opts.export_dir).display(),
            opts.export_dir.display()
        )));
    }
    let db = config
        .require_database(opts.destination)
        .map_err(|e| ImportError::Setup(e.to_string()))?
        .clone();
    let (client, connection) = db
        .connect()
        .await
        .map_err(|e| ImportError::Setup(ferry_shared::process::error_chain(&e)))?;
    let _connection = AbortOnDrop(connection);
    let db_err = |what: &str, e: &tokio_postgres::Error| ImportError::Database {
        what: what.to_owned(),
        destination: opts.destination,
        error: describe_pg(e),
    };
    client
        .batch_execute(SCHEMA_STATEMENTS_SETUP_SQL)
        .await
        .map_err(|e| db_err("creating ferry_metadata.schema_statements", &e))?;

    let (preamble, plan) = plan(&files);
    let done: HashSet<(String, String, i32)> = client
        .query(
            "SELECT file, statement_md5, nth FROM ferry_metadata.schema_statements",
            &[],
        )
        .await
        .map_err(|e| db_err("reading what was applied before", &e))?
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();

    // pg_dump's session settings; a setting the server lacks is skipped (YugabyteDB has
    // not every PostgreSQL setting), anything else is an error.
    for statement in &preamble {
        if let Err(e) = client.batch_execute(statement).await {
            if e.code() == Some(&SqlState::UNDEFINED_OBJECT) {
                eprintln!(
                    "note: the {} has no setting for `{statement}`: skipped",
                    opts.destination
                );
            } else {
                return Err(db_err(&format!("running `{statement}`"), &e));
            }
        }
    }

    let mut summary = ImportSummary {
        database: db.display(),
        ..ImportSummary::default()
    };
    let mut per_file: Vec<(String, usize)> = Vec::new();
    let mut first_pending = true;
    for p in &plan {
        let wanted = match p.phase {
            Phase::Main => true,
            Phase::PostSnapshot => opts.post_snapshot,
            Phase::Grants => opts.post_snapshot && opts.include_grants,
        };
        if !wanted {
            summary.deferred += 1;
            continue;
        }
        let md5 = md5_hex(&client, &p.text)
            .await
            .map_err(|e| db_err("hashing a statement", &e))?;
        let nth = p.md5_key.1 as i32;
        if done.contains(&(p.file.to_owned(), md5.clone(), nth)) {
            summary.already_applied += 1;
            continue;
        }
        let outcome = apply(&client, p, &md5, nth).await;
        let was_first = std::mem::replace(&mut first_pending, false);
        match outcome {
            Ok(()) => {
                summary.applied += 1;
                match per_file.last_mut() {
                    Some((f, n)) if f == p.file => *n += 1,
                    _ => per_file.push((p.file.to_owned(), 1)),
                }
            }
            Err(e)
                if is_duplicate(&e)
                    && (opts.ignore_exist
                        || was_first
                        || matches!(p.kind.as_str(), "SCHEMA" | "EXTENSION")) =>
            {
                record(&client, p, &md5, nth, "existed")
                    .await
                    .map_err(|e| db_err("recording a statement", &e))?;
                summary
                    .existed
                    .push(format!("{} ({}:{})", p.object, p.file, p.line));
            }
            Err(e) => summary.failed.push(Failed {
                at: format!("schema/{}:{}", p.file, p.line),
                object: p.object.clone(),
                error: describe_pg(&e),
                statement: p.text.lines().next().unwrap_or_default().to_owned(),
            }),
        }
    }
    summary.per_file = per_file;
    Ok(summary)
}

/// Runs one statement and records it, in one transaction.
async fn apply(
    client: &Client,
    p: &Planned,
    md5: &str,
    nth: i32,
) -> Result<(), tokio_postgres::Error> {
    client.batch_execute("BEGIN").await?;
    let result = async {
        client.batch_execute(&p.text).await?;
        record(client, p, md5, nth, "applied").await
    }
    .await;
    match result {
        Ok(()) => client.batch_execute("COMMIT").await,
        Err(e) => {
            client.batch_execute("ROLLBACK").await.ok();
            if e.code() == Some(&SqlState::ACTIVE_SQL_TRANSACTION) {
                // A statement that can't run in a transaction block (CREATE INDEX
                // CONCURRENTLY, ...): on its own, then recorded.
                client.batch_execute(&p.text).await?;
                return record(client, p, md5, nth, "applied").await;
            }
            Err(e)
        }
    }
}

async fn record(
    client: &Client,
    p: &Planned,
    md5: &str,
    nth: i32,
    outcome: &str,
) -> Result<(), tokio_postgres::Error> {
    let phase = match p.phase {
        Phase::Main => "main",
        Phase::PostSnapshot => "post-snapshot",
        Phase::Grants => "grants",
    };
    client
        .execute(
            "INSERT INTO ferry_metadata.schema_statements (file, statement_md5, nth, phase, object, outcome) \
             VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING",
            &[&p.file, &md5, &nth, &phase, &p.object, &outcome],
        )
        .await
        .map(|_| ())
}

/// The md5 of a statement, computed by the database (the same on every run).
async fn md5_hex(client: &Client, text: &str) -> Result<String, tokio_postgres::Error> {
    Ok(client.query_one("SELECT md5($1)", &[&text]).await?.get(0))
}

/// The statement's object exists already (a primary key added to a table that has
/// one counts: the table was made with it).
fn is_duplicate(e: &tokio_postgres::Error) -> bool {
    match e.code() {
        Some(c)
            if *c == SqlState::DUPLICATE_TABLE
                || *c == SqlState::DUPLICATE_OBJECT
                || *c == SqlState::DUPLICATE_SCHEMA
                || *c == SqlState::DUPLICATE_FUNCTION
                || *c == SqlState::DUPLICATE_COLUMN =>
        {
            true
        }
        Some(c) if *c == SqlState::INVALID_TABLE_DEFINITION => e
            .as_db_error()
            .is_some_and(|d| d.message().starts_with("multiple primary keys")),
        _ => false,
    }
}

/// The session settings (statements before the first head, the same in every file),
/// and every statement with its phase, in apply order.
fn plan(files: &[(super::SchemaFile, String)]) -> (Vec<String>, Vec<Planned>) {
    let mut preamble: Vec<String> = Vec::new();
    let mut out = Vec::new();
    let mut unique_indexes: HashSet<(String, String)> = HashSet::new();
    let mut refreshes: Vec<Planned> = Vec::new();
    for (file, text) in files {
        let mut seen: HashMap<String, usize> = HashMap::new();
        for entry in sql::entries(text) {
            let Some(head) = entry.head else {
                for s in entry.statements {
                    if !preamble.contains(&s.text) {
                        preamble.push(s.text);
                    }
                }
                continue;
            };
            for s in entry.statements {
                let phase = statement_phase(file, &head, &s.text, &mut unique_indexes);
                let n = seen.entry(s.text.clone()).or_insert(0);
                *n += 1;
                let planned = Planned {
                    file: file.name,
                    line: s.line,
                    object: head.object(),
                    kind: head.kind.clone(),
                    md5_key: (s.text.clone(), *n),
                    text: s.text.clone(),
                    phase,
                };
                if head.kind == "MATERIALIZED VIEW" {
                    if let Some(name) = created_name(&s.text, "MATERIALIZED VIEW") {
                        let text = format!("REFRESH MATERIALIZED VIEW {name}");
                        refreshes.push(Planned {
                            text: text.clone(),
                            md5_key: (text, 1),
                            phase: Phase::PostSnapshot,
                            ..planned.clone()
                        });
                    }
                }
                out.push(planned);
            }
        }
    }
    // Materialized views are filled after the data and their indexes are there, before
    // triggers and what follows.
    let order = |name: &str| super::FILES.iter().position(|f| f.name == name);
    let indexes = order("indexes.sql");
    let at = out
        .iter()
        .position(|p| order(p.file) > indexes)
        .unwrap_or(out.len());
    out.splice(at..at, refreshes);
    (preamble, out)
}

fn statement_phase(
    file: &super::SchemaFile,
    head: &Head,
    text: &str,
    unique_indexes: &mut HashSet<(String, String)>,
) -> Phase {
    let upper = text.trim_start().to_ascii_uppercase();
    if file.name == "constraints.sql" {
        // A primary key or unique constraint is an index of the same name: partitions'
        // indexes are attached to it with the tables, or it stays invalid (and no
        // ON CONFLICT can use it).
        if upper.contains(" PRIMARY KEY") || upper.contains(" UNIQUE") {
            if let Some(name) = created_name(text, "ADD CONSTRAINT") {
                unique_indexes.insert(index_key(&head.schema, &name));
            }
        }
        return file.phase;
    }
    if file.name != "indexes.sql" {
        return file.phase;
    }
    if upper.starts_with("CREATE UNIQUE INDEX") {
        if let Some(name) = created_name(text, "INDEX") {
            unique_indexes.insert(index_key(&head.schema, &name));
        }
        return Phase::Main;
    }
    if head.kind == "INDEX ATTACH" {
        // `ALTER INDEX parent ATTACH PARTITION child`: with its parent.
        if let Some(parent) = created_name(text, "INDEX") {
            if unique_indexes.contains(&index_key(&head.schema, &parent)) {
                return Phase::Main;
            }
        }
    }
    Phase::PostSnapshot
}

/// (schema, index) of a name as written (`"S"."i"`, `s.i` or `i` in `schema`), unquoted.
fn index_key(schema: &str, written: &str) -> (String, String) {
    let parts = split_qualified(written);
    match parts.as_slice() {
        [s, n] => (s.clone(), n.clone()),
        [n] => (schema.to_owned(), n.clone()),
        _ => (schema.to_owned(), written.to_owned()),
    }
}

/// `"A"."b c".d` → `[A, b c, d]`.
fn split_qualified(written: &str) -> Vec<String> {
    let mut parts = vec![String::new()];
    let mut quoted = false;
    let mut chars = written.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '"' if quoted && chars.peek() == Some(&'"') => {
                chars.next();
                if let Some(last) = parts.last_mut() {
                    last.push('"');
                }
            }
            '"' => quoted = !quoted,
            '.' if !quoted => parts.push(String::new()),
            c => {
                if let Some(last) = parts.last_mut() {
                    last.push(if quoted { c } else { c.to_ascii_lowercase() });
                }
            }
        }
    }
    parts
}

/// The (qualified, as written) name after `<keyword>` in a statement such as
/// `CREATE MATERIALIZED VIEW public."My View" AS ...` or `ALTER INDEX a.b ATTACH ...`.
fn created_name(text: &str, keyword: &str) -> Option<String> {
    let upper = text.to_ascii_uppercase();
    let at = upper.find(&format!("{keyword} "))? + keyword.len() + 1;
    let rest = text[at..].trim_start();
    let rest = rest
        .strip_prefix("IF NOT EXISTS ")
        .or_else(|| rest.strip_prefix("if not exists "))
        .unwrap_or(rest);
    let mut name = String::new();
    let mut chars = rest.chars().peekable();
    loop {
        match chars.peek() {
            Some('"') => {
                name.push('"');
                chars.next();
                while let Some(c) = chars.next() {
                    name.push(c);
                    if c == '"' {
                        if chars.peek() == Some(&'"') {
                            name.push('"');
                            chars.next();
                        } else {
                            break;
                        }
                    }
                }
            }
            Some(c) if c.is_alphanumeric() || *c == '_' || *c == '$' => {
                while let Some(c) = chars.peek() {
                    if c.is_alphanumeric() || *c == '_' || *c == '$' {
                        name.push(*c);
                        chars.next();
                    } else {
                        break;
                    }
                }
            }
            _ => return None,
        }
        if chars.peek() == Some(&'.') {
            name.push('.');
            chars.next();
        } else {
            return Some(name);
        }
    }
}

/// Aborts a connection task when dropped.
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The default export directory relative to where `ferry` runs.
pub fn default_dir() -> &'static Path {
    Path::new(super::DEFAULT_EXPORT_DIR)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::FILES;

    fn file(name: &str) -> super::super::SchemaFile {
        *FILES
            .iter()
            .find(|f| f.name == name)
            .unwrap_or_else(|| unreachable!())
    }

    #[test]
    fn names_are_read_as_written() {
        assert_eq!(
            created_name(
                "CREATE MATERIALIZED VIEW public.\"My \"\"View\"\" \" AS SELECT 1",
                "MATERIALIZED VIEW"
            ),
            Some("public.\"My \"\"View\"\" \"".to_owned())
        );
        assert_eq!(
            created_name(
                "ALTER INDEX public.orders_pkey ATTACH PARTITION public.o1_pkey",
                "INDEX"
            ),
            Some("public.orders_pkey".to_owned())
        );
    }

    #[test]
    fn partitions_attach_to_a_primary_key_with_the_tables() {
        let constraints = "--\n-- Name: Events Events_pkey; Type: CONSTRAINT; Schema: Billing; Owner: -\n--\n\n\
                           ALTER TABLE ONLY \"Billing\".\"Events\" ADD CONSTRAINT \"Events_pkey\" PRIMARY KEY (id, at);\n";
        let indexes = "--\n-- Name: E1_pkey; Type: INDEX ATTACH; Schema: Billing; Owner: -\n--\n\n\
                       ALTER INDEX \"Billing\".\"Events_pkey\" ATTACH PARTITION \"Billing\".\"E1_pkey\";\n";
        let (_, plan) = plan(&[
            (file("constraints.sql"), constraints.into()),
            (file("indexes.sql"), indexes.into()),
        ]);
        assert_eq!(plan.len(), 2);
        assert!(plan.iter().all(|p| p.phase == Phase::Main), "{plan:?}");
        assert_eq!(
            split_qualified("\"A\"\"x\".b.\"C d\""),
            ["A\"x", "b", "C d"]
        );
    }

    #[test]
    fn unique_indexes_stay_with_the_tables_and_the_rest_waits() {
        let indexes = "SET x = 1;\n\n--\n-- Name: u; Type: INDEX; Schema: public; Owner: -\n--\n\n\
                       CREATE UNIQUE INDEX u ON public.t USING btree (a);\n\n\
                       --\n-- Name: n; Type: INDEX; Schema: public; Owner: -\n--\n\n\
                       CREATE INDEX n ON public.t USING btree (b);\n\n\
                       --\n-- Name: c_u; Type: INDEX ATTACH; Schema: public; Owner: -\n--\n\n\
                       ALTER INDEX public.u ATTACH PARTITION public.c_u;\n\n\
                       --\n-- Name: c_n; Type: INDEX ATTACH; Schema: public; Owner: -\n--\n\n\
                       ALTER INDEX public.n ATTACH PARTITION public.c_n;\n";
        let views = "--\n-- Name: mv; Type: MATERIALIZED VIEW; Schema: public; Owner: -\n--\n\n\
                     CREATE MATERIALIZED VIEW public.mv AS SELECT 1 WITH NO DATA;\n";
        let triggers = "--\n-- Name: t trg; Type: TRIGGER; Schema: public; Owner: -\n--\n\n\
                        CREATE TRIGGER trg AFTER INSERT ON public.t FOR EACH ROW EXECUTE FUNCTION public.f();\n";
        let (preamble, plan) = plan(&[
            (file("views.sql"), views.into()),
            (file("indexes.sql"), indexes.into()),
            (file("triggers.sql"), triggers.into()),
        ]);
        assert_eq!(preamble, ["SET x = 1"]);
        let phases: Vec<(&str, Phase)> = plan
            .iter()
            .map(|p| {
                (
                    p.text.split_whitespace().take(3).last().unwrap_or(""),
                    p.phase,
                )
            })
            .collect();
        assert_eq!(
            phases,
            [
                ("VIEW", Phase::Main),
                ("INDEX", Phase::Main),
                ("n", Phase::PostSnapshot),
                ("public.u", Phase::Main),
                ("public.n", Phase::PostSnapshot),
                ("VIEW", Phase::PostSnapshot),
                ("trg", Phase::PostSnapshot),
            ]
        );
        assert_eq!(plan[5].text, "REFRESH MATERIALIZED VIEW public.mv");
    }
}
