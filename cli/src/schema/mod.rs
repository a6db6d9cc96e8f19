//! The schema verbs (DESIGN.md §8): `ferry export schema` writes the source's DDL into
//! files by object kind, `ferry analyze-schema` reads them (as exported or as edited)
//! and says what the target engine cannot take, `ferry import schema` applies them in
//! dependency order, leaving what slows or breaks the snapshot import for
//! `--post-snapshot-import`.
//!
//! **Decision:** the DDL comes from `pg_dump --schema-only`, the field's own tool: it
//! knows every object kind of every PostgreSQL version, quotes names exactly, and emits
//! its entries in dependency order, each headed by `-- Name: ..; Type: ..; Schema: ..`.
//! Ferry splits that stream by the entry's type into [`FILES`], keeping pg_dump's order
//! inside each file; the files' own order (extensions, schemas, types, functions,
//! sequences, tables, partitions, constraints, ...) is the order of dependency between
//! kinds. Function bodies are not checked at creation (`check_function_bodies = off`, as
//! pg_dump's own preamble says), so functions can come before the tables they use.

pub mod analyze;
pub mod export;
pub mod import;
pub mod sql;

use std::path::{Path, PathBuf};

/// Where the schema verbs read and write when `--export-dir` is not given.
pub const DEFAULT_EXPORT_DIR: &str = "ferry-export";

/// When a file's statements are applied by `ferry import schema`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Phase {
    /// Before the snapshot import.
    Main,
    /// With `--post-snapshot-import` (non-unique indexes, triggers and what depends on
    /// them); individual statements of a main file may be deferred too.
    PostSnapshot,
    /// Only with `--include-grants` (ownership and privileges name roles the
    /// destination may not have).
    Grants,
}

/// One file of an exported schema.
#[derive(Clone, Copy, Debug)]
pub struct SchemaFile {
    /// File name inside `<export-dir>/schema/`.
    pub name: &'static str,
    /// What it holds, for the manifest and messages.
    pub holds: &'static str,
    /// When it is applied.
    pub phase: Phase,
}

/// The files, in the order they are applied.
pub const FILES: &[SchemaFile] = &[
    SchemaFile {
        name: "extensions.sql",
        holds: "extensions",
        phase: Phase::Main,
    },
    SchemaFile {
        name: "schemas.sql",
        holds: "schemas",
        phase: Phase::Main,
    },
    SchemaFile {
        name: "types.sql",
        holds: "types, domains, collations and text search configurations",
        phase: Phase::Main,
    },
    SchemaFile {
        name: "functions.sql",
        holds: "functions, procedures, aggregates, operators and casts",
        phase: Phase::Main,
    },
    SchemaFile {
        name: "sequences.sql",
        holds: "sequences (before the tables whose defaults use them)",
        phase: Phase::Main,
    },
    SchemaFile {
        name: "tables.sql",
        holds: "tables (partitioned tables' roots included), their identity columns, sequence ownership and sequence defaults",
        phase: Phase::Main,
    },
    SchemaFile {
        name: "partitions.sql",
        holds: "partitions, at every level, and their attachment",
        phase: Phase::Main,
    },
    SchemaFile {
        name: "constraints.sql",
        holds: "primary keys, unique, check and exclusion constraints",
        phase: Phase::Main,
    },
    SchemaFile {
        name: "foreign_keys.sql",
        holds: "foreign keys",
        phase: Phase::Main,
    },
    SchemaFile {
        name: "views.sql",
        holds: "views and materialized views (created empty; filled by --post-snapshot-import)",
        phase: Phase::Main,
    },
    SchemaFile {
        name: "indexes.sql",
        holds: "indexes (unique ones are created with the tables, the others by --post-snapshot-import)",
        phase: Phase::PostSnapshot,
    },
    SchemaFile {
        name: "triggers.sql",
        holds: "triggers and event triggers",
        phase: Phase::PostSnapshot,
    },
    SchemaFile {
        name: "policies.sql",
        holds: "row security policies and rules",
        phase: Phase::PostSnapshot,
    },
    SchemaFile {
        name: "comments.sql",
        holds: "comments",
        phase: Phase::PostSnapshot,
    },
    SchemaFile {
        name: "other.sql",
        holds: "objects of any other kind",
        phase: Phase::PostSnapshot,
    },
    SchemaFile {
        name: "grants.sql",
        holds: "ownership and privileges (applied only with --include-grants)",
        phase: Phase::Grants,
    },
];

/// The file an entry of pg_dump's type `kind` goes to (`partition`: a TABLE entry that
/// is a partition of another table; `first`: the entry's first statement).
pub fn file_for(kind: &str, partition: bool, first: &str) -> &'static str {
    match kind {
        "EXTENSION" => "extensions.sql",
        "SCHEMA" => "schemas.sql",
        "TYPE"
        | "DOMAIN"
        | "SHELL TYPE"
        | "COLLATION"
        | "TEXT SEARCH CONFIGURATION"
        | "TEXT SEARCH DICTIONARY"
        | "TEXT SEARCH PARSER"
        | "TEXT SEARCH TEMPLATE" => "types.sql",
        "FUNCTION" | "PROCEDURE" | "AGGREGATE" | "OPERATOR" | "OPERATOR CLASS"
        | "OPERATOR FAMILY" | "CAST" => "functions.sql",
        "TABLE" if partition => "partitions.sql",
        "TABLE" => "tables.sql",
        "TABLE ATTACH" => "partitions.sql",
        // A sequence itself comes before the tables (a column default may use it);
        // an identity column (`ALTER TABLE .. ADD GENERATED`), a sequence's owner and
        // a `nextval` default need their table.
        "SEQUENCE"
            if first
                .trim_start()
                .to_ascii_uppercase()
                .starts_with("CREATE SEQUENCE") =>
        {
            "sequences.sql"
        }
        "SEQUENCE" | "SEQUENCE OWNED BY" | "DEFAULT" => "tables.sql",
        "CONSTRAINT" | "CHECK CONSTRAINT" => "constraints.sql",
        "FK CONSTRAINT" => "foreign_keys.sql",
        "VIEW" | "MATERIALIZED VIEW" => "views.sql",
        "INDEX" | "INDEX ATTACH" => "indexes.sql",
        "TRIGGER" | "EVENT TRIGGER" => "triggers.sql",
        "POLICY" | "ROW SECURITY" | "RULE" => "policies.sql",
        "COMMENT" => "comments.sql",
        "ACL" | "DEFAULT ACL" => "grants.sql",
        _ => "other.sql",
    }
}

/// `<export-dir>/schema`.
pub fn schema_dir(export_dir: &Path) -> PathBuf {
    export_dir.join("schema")
}

/// The files present in `<export-dir>/schema`, in apply order, with their text; an
/// error names the directory and what to run when there is none.
pub fn read_files(export_dir: &Path) -> Result<Vec<(SchemaFile, String)>, String> {
    let dir = schema_dir(export_dir);
    if !dir.is_dir() {
        return Err(format!(
            "{} holds no exported schema: run `ferry export schema --export-dir {}` first",
            dir.display(),
            export_dir.display()
        ));
    }
    let mut out = Vec::new();
    for file in FILES {
        let path = dir.join(file.name);
        match std::fs::read_to_string(&path) {
            Ok(text) => out.push((*file, text)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
        }
    }
    // A file of another name is not applied: say so rather than ignore it silently.
    if let Ok(listing) = std::fs::read_dir(&dir) {
        for entry in listing.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.ends_with(".sql") && !FILES.iter().any(|f| f.name == name) {
                return Err(format!(
                    "{} is not one of the schema files ({}): move its statements into one of them",
                    dir.join(&name).display(),
                    FILES.iter().map(|f| f.name).collect::<Vec<_>>().join(", ")
                ));
            }
        }
    }
    Ok(out)
}
