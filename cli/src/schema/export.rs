//! `ferry export schema`: `pg_dump --schema-only` of the source's selected schemas and
//! tables, split into `<export-dir>/schema/<kind>.sql` ([`super::FILES`]) with a
//! `manifest.json` beside them.
//!
//! - Selection: `source.schemas` (`pg_dump -n`), minus the tables the migration filter
//!   leaves out (`-T`, with their partitions at every level: PostgreSQL 15's pg_dump
//!   does not exclude a partitioned table's children by itself). Ferry's own
//!   `ferry_metadata` schema is never exported, nor publications and subscriptions.
//! - Extensions: `pg_dump -n` dumps none, so the extensions installed in the database
//!   (but plpgsql) are written as `CREATE EXTENSION IF NOT EXISTS`.
//! - Ownership (`ALTER .. OWNER TO`) and privileges go to `grants.sql`, applied only on
//!   request: the destination may not have the source's roles.
//! - pg_dump's preamble (`search_path` emptied, `check_function_bodies = false`, ...)
//!   heads every file, so each applies on its own.
//! - An existing `<export-dir>/schema` may hold the operator's edits: it is replaced
//!   only with `--start-clean`.
//!
//! The password and TLS settings reach pg_dump through its environment (`PGPASSWORD`,
//! `PGSSLMODE`, `PGSSLROOTCERT`), never its command line, which `ps` shows.

use std::collections::{BTreeMap, HashSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use ferry_shared::catalog::{self, quote_ident};
use ferry_shared::config::{Config, DatabaseConfig};

use super::sql::{self, Entry, Head};
use super::{file_for, schema_dir, FILES};

/// What `export schema` did.
#[derive(Debug, serde::Serialize)]
pub struct ExportSummary {
    /// Where the files are.
    pub dir: PathBuf,
    /// The source, as `user@host:port/database`.
    pub source: String,
    /// pg_dump's version line.
    pub pg_dump: String,
    /// Exported schemas.
    pub schemas: Vec<String>,
    /// Selected tables (`schema.table`), partitions not listed.
    pub tables: Vec<String>,
    /// Tables left out by the migration filter.
    pub excluded_tables: Vec<String>,
    /// Per file: entries written.
    pub files: Vec<FileSummary>,
    /// When, as an RFC 3339 time.
    pub exported_at: String,
}

/// One written file.
#[derive(Debug, serde::Serialize)]
pub struct FileSummary {
    /// File name.
    pub name: String,
    /// What it holds.
    pub holds: String,
    /// When `import schema` applies it.
    pub phase: super::Phase,
    /// Entries (objects) in it.
    pub entries: usize,
    /// Statements in it.
    pub statements: usize,
}

impl ExportSummary {
    /// The operator's view.
    pub fn render(&self) -> String {
        let mut out = format!(
            "exported the schema of {} ({} table(s) in schema(s) {}) to {}\n",
            self.source,
            self.tables.len(),
            self.schemas.join(", "),
            self.dir.display()
        );
        if !self.excluded_tables.is_empty() {
            let _ = writeln!(
                out,
                "left out by migration.include_tables / exclude_tables: {}",
                self.excluded_tables.join(", ")
            );
        }
        for f in &self.files {
            let _ = writeln!(
                out,
                "  {:<18} {:>4} object(s)  {}",
                f.name, f.entries, f.holds
            );
        }
        out.push_str(
            "next: review (and edit) the files, `ferry analyze-schema` to see what the target cannot take, then `ferry import schema`\n",
        );
        out
    }
}

/// Exports the source's schema into `export_dir/schema`.
pub async fn export_schema(
    config: &Config,
    export_dir: &Path,
    start_clean: bool,
) -> Result<ExportSummary, String> {
    let source = config.require_source().map_err(|e| e.to_string())?.clone();
    let dir = schema_dir(export_dir);
    if dir.exists() {
        let has_files = std::fs::read_dir(&dir)
            .map_err(|e| format!("cannot read {}: {e}", dir.display()))?
            .next()
            .is_some();
        if has_files && !start_clean {
            return Err(format!(
                "{} already holds an exported schema (perhaps with your edits): pass --start-clean to export again and replace it",
                dir.display()
            ));
        }
    }

    let (client, connection) = source
        .connect()
        .await
        .map_err(|e| ferry_shared::process::error_chain(&e))?;
    let _connection = AbortOnDrop(connection);
    let all = catalog::list_tables(&client, &source.schemas)
        .await
        .map_err(|e| format!("listing the source's tables: {e}"))?;
    let (selected, excluded): (Vec<_>, Vec<_>) = all
        .into_iter()
        .partition(|t| config.migration.selects(&t.schema, &t.name));
    // Partitions (every level) of the tables left out, and every partition's name (a
    // TABLE entry of a partition goes to partitions.sql).
    let partitions = client
        .query(
            "WITH RECURSIVE tree(relid, root) AS ( \
               SELECT i.inhrelid, i.inhparent FROM pg_inherits i \
               JOIN pg_class p ON p.oid = i.inhparent WHERE NOT p.relispartition \
               UNION ALL SELECT i.inhrelid, t.root FROM pg_inherits i JOIN tree t ON i.inhparent = t.relid) \
             SELECT n.nspname::text, c.relname::text, rn.nspname::text, r.relname::text \
             FROM tree t JOIN pg_class c ON c.oid = t.relid JOIN pg_namespace n ON n.oid = c.relnamespace \
             JOIN pg_class r ON r.oid = t.root JOIN pg_namespace rn ON rn.oid = r.relnamespace \
             WHERE c.relispartition",
            &[],
        )
        .await
        .map_err(|e| format!("listing the source's partitions: {e}"))?;
    let excluded_set: HashSet<(String, String)> = excluded
        .iter()
        .map(|t| (t.schema.clone(), t.name.clone()))
        .collect();
    let mut exclude_patterns: Vec<String> = excluded
        .iter()
        .map(|t| dump_pattern(&t.schema, &t.name))
        .collect();
    let mut partition_names: HashSet<(String, String)> = HashSet::new();
    for row in &partitions {
        let (schema, name, root_schema, root): (String, String, String, String) =
            (row.get(0), row.get(1), row.get(2), row.get(3));
        if excluded_set.contains(&(root_schema, root)) {
            exclude_patterns.push(dump_pattern(&schema, &name));
        }
        partition_names.insert((schema, name));
    }
    let extensions = client
        .query(
            "SELECT e.extname::text, n.nspname::text FROM pg_extension e \
             JOIN pg_namespace n ON n.oid = e.extnamespace \
             WHERE e.extname <> 'plpgsql' ORDER BY e.oid",
            &[],
        )
        .await
        .map_err(|e| format!("listing the source's extensions: {e}"))?;

    let (dump, version) = run_pg_dump(&source, &exclude_patterns).await?;
    let mut entries = sql::entries(&dump);
    let mut preamble: Vec<String> = match entries.first() {
        Some(first) if first.head.is_none() => entries
            .remove(0)
            .statements
            .into_iter()
            .map(|s| s.text)
            .collect(),
        _ => Vec::new(),
    };

    // Entries by file, in pg_dump's order; ownership statements to grants.sql.
    let mut by_file: BTreeMap<&'static str, Vec<Entry>> = BTreeMap::new();
    for e in extensions {
        let (name, schema): (String, String) = (e.get(0), e.get(1));
        by_file.entry("extensions.sql").or_default().push(Entry {
            head: Some(Head {
                name: name.clone(),
                kind: "EXTENSION".into(),
                schema: "-".into(),
            }),
            statements: vec![sql::Statement {
                text: format!(
                    "CREATE EXTENSION IF NOT EXISTS {} WITH SCHEMA {}",
                    quote_ident(&name),
                    quote_ident(&schema)
                ),
                line: 0,
            }],
        });
    }
    for mut entry in entries {
        // pg_dump sets some session defaults between entries (default_tablespace,
        // default_table_access_method): session settings of every file, not objects.
        entry.statements.retain(|s| {
            if is_session_setting(&s.text) {
                if !preamble.contains(&s.text) {
                    preamble.push(s.text.clone());
                }
                false
            } else {
                true
            }
        });
        let Some(head) = entry.head.clone() else {
            continue;
        };
        let partition = head.kind == "TABLE"
            && partition_names.contains(&(head.schema.clone(), head.name.clone()));
        let first = entry.statements.first().map_or("", |s| s.text.as_str());
        let file = file_for(&head.kind, partition, first);
        let (owners, rest): (Vec<_>, Vec<_>) = entry
            .statements
            .into_iter()
            .partition(|s| is_ownership(&s.text));
        if !rest.is_empty() {
            by_file.entry(file).or_default().push(Entry {
                head: Some(head.clone()),
                statements: rest,
            });
        }
        if !owners.is_empty() {
            by_file.entry("grants.sql").or_default().push(Entry {
                head: Some(head),
                statements: owners,
            });
        }
    }

    if dir.exists() {
        std::fs::remove_dir_all(&dir)
            .map_err(|e| format!("cannot clear {}: {e}", dir.display()))?;
    }
    std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let exported_at = ferry_shared::clock::format_ms(ferry_shared::clock::now_ms());
    let mut files = Vec::new();
    for file in FILES {
        let Some(entries) = by_file.get(file.name) else {
            continue;
        };
        let text = render_file(
            file.name,
            file.holds,
            &source.display(),
            &exported_at,
            &preamble,
            entries,
        );
        let path = dir.join(file.name);
        std::fs::write(&path, text).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        files.push(FileSummary {
            name: file.name.to_owned(),
            holds: file.holds.to_owned(),
            phase: file.phase,
            entries: entries.len(),
            statements: entries.iter().map(|e| e.statements.len()).sum(),
        });
    }
    let summary = ExportSummary {
        dir: dir.clone(),
        source: source.display(),
        pg_dump: version,
        schemas: source.schemas.clone(),
        tables: selected.iter().map(|t| t.to_string()).collect(),
        excluded_tables: excluded.iter().map(|t| t.to_string()).collect(),
        files,
        exported_at,
    };
    let manifest = serde_json::to_string_pretty(&summary).map_err(|e| e.to_string())?;
    std::fs::write(dir.join("manifest.json"), manifest + "\n")
        .map_err(|e| format!("cannot write {}: {e}", dir.join("manifest.json").display()))?;
    Ok(summary)
}

/// A pg_dump table pattern matching exactly `schema.name` (quoted: case and dots kept).
fn dump_pattern(schema: &str, name: &str) -> String {
    format!("{}.{}", quote_ident(schema), quote_ident(name))
}

/// `SET ..` and `SELECT pg_catalog.set_config(..)`: settings of the session.
fn is_session_setting(statement: &str) -> bool {
    let upper = statement.trim_start().to_ascii_uppercase();
    upper.starts_with("SET ") || upper.starts_with("SELECT PG_CATALOG.SET_CONFIG(")
}

/// `ALTER <object> .. OWNER TO ..` (pg_dump's ownership statements).
fn is_ownership(statement: &str) -> bool {
    let upper = statement.to_ascii_uppercase();
    upper.starts_with("ALTER ") && upper.contains(" OWNER TO ") && !upper.contains('\n')
}

fn render_file(
    name: &str,
    holds: &str,
    source: &str,
    exported_at: &str,
    preamble: &[String],
    entries: &[Entry],
) -> String {
    let mut out = format!(
        "-- {name}: {holds}.\n-- Exported by `ferry export schema` from {source} at {exported_at}\n\
         -- (pg_dump --schema-only, split by object kind). Edit freely: `ferry analyze-schema`\n\
         -- and `ferry import schema` read this file as it is. Keep the `-- Name:` heads: they\n\
         -- name the object of each statement in reports.\n\n"
    );
    for statement in preamble {
        out.push_str(statement);
        out.push_str(";\n");
    }
    for entry in entries {
        if let Some(head) = &entry.head {
            let _ = write!(
                out,
                "\n--\n-- Name: {}; Type: {}; Schema: {}; Owner: -\n--\n\n",
                head.name,
                head.kind,
                if head.schema.is_empty() {
                    "-"
                } else {
                    &head.schema
                }
            );
        }
        for statement in &entry.statements {
            out.push_str(&statement.text);
            out.push_str(";\n\n");
        }
    }
    out
}

/// Runs pg_dump; returns its output and version line.
async fn run_pg_dump(db: &DatabaseConfig, exclude: &[String]) -> Result<(String, String), String> {
    let missing = |e: std::io::Error| {
        format!("cannot run pg_dump ({e}): install the PostgreSQL client tools (version at least the source server's), e.g. apt-get install postgresql-client-15")
    };
    let version = tokio::process::Command::new("pg_dump")
        .arg("--version")
        .output()
        .await
        .map_err(missing)?;
    let version = String::from_utf8_lossy(&version.stdout).trim().to_owned();
    let mut cmd = tokio::process::Command::new("pg_dump");
    cmd.arg("--schema-only")
        .arg("--no-publications")
        .arg("--no-subscriptions")
        .arg("--exclude-schema=ferry_metadata")
        .arg("-h")
        .arg(&db.host)
        .arg("-p")
        .arg(db.port().to_string())
        .arg("-U")
        .arg(&db.user);
    for schema in &db.schemas {
        cmd.arg("-n").arg(quote_ident(schema));
    }
    for pattern in exclude {
        cmd.arg("-T").arg(pattern);
    }
    cmd.arg(&db.database)
        .env("PGPASSWORD", db.password.expose())
        .env("PGSSLMODE", db.sslmode.as_str())
        .envs(db.sslrootcert.as_deref().map(|ca| ("PGSSLROOTCERT", ca)))
        .kill_on_drop(true);
    let out = cmd.output().await.map_err(missing)?;
    if !out.status.success() {
        return Err(format!(
            "pg_dump of {} failed ({}): {}",
            db.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    let text = String::from_utf8(out.stdout).map_err(|e| {
        format!(
            "pg_dump of {} wrote text that is not UTF-8: {e}",
            db.display()
        )
    })?;
    Ok((text, version))
}

/// Aborts a connection task when dropped.
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ownership_statements_are_recognised() {
        assert!(is_ownership("ALTER TABLE public.orders OWNER TO ferry"));
        assert!(is_ownership("ALTER FUNCTION public.f() OWNER TO \"Admin\""));
        assert!(!is_ownership(
            "ALTER TABLE ONLY public.orders ADD CONSTRAINT orders_pkey PRIMARY KEY (id)"
        ));
    }

    #[test]
    fn files_are_rendered_with_heads_and_the_preamble() {
        let entries = vec![Entry {
            head: Some(Head {
                name: "orders".into(),
                kind: "TABLE".into(),
                schema: "public".into(),
            }),
            statements: vec![sql::Statement {
                text: "CREATE TABLE public.orders (id integer)".into(),
                line: 1,
            }],
        }];
        let text = render_file(
            "tables.sql",
            "tables",
            "ferry@h:1/db",
            "2026-12-06T00:00:00Z",
            &["SET check_function_bodies = false".into()],
            &entries,
        );
        let back = sql::entries(&text);
        assert_eq!(back.len(), 2, "{text}");
        assert_eq!(
            back[0].statements[0].text,
            "SET check_function_bodies = false"
        );
        assert_eq!(back[1].head, entries[0].head);
        assert_eq!(back[1].statements[0].text, entries[0].statements[0].text);
    }
}
