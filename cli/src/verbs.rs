//! The command tree: voyager-style verbs (DESIGN.md §8).
//!
//! The doc comments here are clap's help text, written for a terminal: `<export-dir>`
//! and `[topic:]` are placeholders there, not HTML or links, so rustdoc's reading of
//! them is switched off for this module.
#![allow(rustdoc::invalid_html_tags, rustdoc::broken_intra_doc_links)]

use clap::{Parser, Subcommand, ValueEnum};

/// Ferry: live database migration over Kafka, with cutover and a way back.
#[derive(Debug, Parser)]
#[command(name = "ferry", version, about, propagate_version = true)]
pub struct Cli {
    #[command(flatten)]
    pub config: ferry_shared::config::Args,

    #[command(subcommand)]
    pub verb: Verb,
}

#[derive(Debug, Subcommand)]
pub enum Verb {
    /// Export the schema or data of a database
    Export {
        #[command(subcommand)]
        what: Export,
    },
    /// Report what the target engine cannot take in the exported schema, each with its
    /// fix, and check that the source is ready
    #[command(long_about = ANALYZE_SCHEMA_HELP)]
    AnalyzeSchema {
        /// The export directory whose schema/ files are analyzed [default: ferry-export;
        /// when it holds no schema, only the source is checked]
        #[arg(long, value_name = "DIR")]
        export_dir: Option<std::path::PathBuf>,
        /// text (grouped by category), json (a stable structure) or html (one page)
        #[arg(long, value_enum, value_name = "FORMAT", default_value = "text")]
        output_format: ferry_cli::schema::analyze::Format,
        /// Write the report to this file instead of standard output
        #[arg(long, value_name = "PATH")]
        output_file: Option<std::path::PathBuf>,
    },
    /// Make the changes the exporter needs on a database (after showing them)
    Prepare {
        #[command(subcommand)]
        what: Prepare,
    },
    /// Import the schema or data into a database
    Import {
        #[command(subcommand)]
        what: Import,
    },
    /// Start a cutover
    Initiate {
        #[command(subcommand)]
        what: Initiate,
    },
    /// Follow a cutover
    Cutover {
        #[command(subcommand)]
        what: Cutover,
    },
    /// Show reports
    Get {
        #[command(subcommand)]
        what: Get,
    },
    /// Compare two databases table by table: row counts, checksums, differing keys
    Verify {
        /// The database the comparison starts from
        #[arg(long, value_enum, default_value_t = Database::Source)]
        from: Database,
        /// The database compared with it
        #[arg(long, value_enum, default_value_t = Database::Target)]
        to: Database,
        /// Only these tables (patterns as in migration.include_tables, comma-separated)
        #[arg(long, value_delimiter = ',')]
        tables: Vec<String>,
        /// List at most this many differing keys per table
        #[arg(long, default_value_t = 100)]
        max_keys: usize,
        #[arg(long, value_enum, default_value_t = ReportFormat::Table)]
        format: ReportFormat,
    },
    /// Read a stream again from a VSN, offset or time: to a JSON-lines file (audit) or
    /// into a database (recovery)
    Replay(ReplayArgs),
    /// Move retained events to files and trim topics
    Archive {
        #[command(subcommand)]
        what: Archive,
    },
    /// Finish a migration: backups, drop slots, publications, metadata and topics
    End {
        #[command(subcommand)]
        what: End,
    },
    /// Run the coordinator in this process
    Coordinator,
    /// Inspect the configuration
    Config {
        #[command(subcommand)]
        what: ConfigVerb,
    },
}

const ANALYZE_SCHEMA_HELP: &str = "\
Reports what the target engine (target.engine; YugabyteDB when no target is configured)
cannot take, or takes differently, in the schema files that `ferry export schema` wrote
to DIR/schema (as exported or as edited since): index access methods, GIN specifics,
index keys on types YugabyteDB cannot index, exclusion and deferrable constraints,
tablespaces, inheritance, trigger kinds, stored generated columns, unlogged and foreign
tables, system columns, advisory locks, LISTEN/NOTIFY and large objects in code, and
more. Each issue names its object, file and line, says why, and gives the fix (with a
link to the documentation when there is one); its severity is unsupported, degraded or
note. When a source is configured, the exporter's source check runs too (replica
identity, primary keys, column types, settings); its problems are issues of category
\"source readiness\".

Exit status: 0 when no issue is unsupported and the source (when configured) is ready;
1 otherwise, or when the analysis could not run; 2 for usage errors (--export-dir
without a schema, nothing to analyze).";

#[derive(Debug, Subcommand)]
pub enum Prepare {
    /// Set REPLICA IDENTITY FULL on every selected source table (and partition) that
    /// lacks it: prints each ALTER TABLE, then runs it; --dry-run only prints
    Source {
        /// Print the statements without running them
        #[arg(long)]
        dry_run: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum Export {
    /// Export the source schema as SQL files by object kind (pg_dump --schema-only,
    /// split): <export-dir>/schema/{extensions,schemas,types,functions,tables,
    /// partitions,sequences,constraints,foreign_keys,views,indexes,triggers,policies,
    /// comments,other,grants}.sql and manifest.json
    Schema {
        /// Where to write (schema/ inside it)
        #[arg(long, value_name = "DIR", default_value = ferry_cli::schema::DEFAULT_EXPORT_DIR)]
        export_dir: std::path::PathBuf,
        /// Replace an existing export (which may hold your edits)
        #[arg(long)]
        start_clean: bool,
    },
    /// Export data as a stream (runs an exporter in this process)
    Data {
        #[command(subcommand)]
        from: ExportFrom,
    },
}

#[derive(Debug, Subcommand)]
pub enum ExportFrom {
    /// Run the exporter of a database in this process: snapshot, then every change, to
    /// Kafka
    #[command(long_about = EXPORT_DATA_HELP)]
    From {
        /// source: before cutover; target: after a cutover to target prepared for
        /// fall-back or fall-forward (until then it waits on standby)
        #[arg(value_enum)]
        database: ExportDatabase,
        #[command(flatten)]
        voyager: ExportFlags,
    },
}

const EXPORT_DATA_HELP: &str = "\
Runs the exporter of one database in this process.

From source: checks the source first (primary keys, replica identity, column types,
wal_level; every problem at once, each with its fix), creates the publication and the
replication slot, copies a consistent snapshot of every selected table, then streams
every committed change to Kafka, one topic per table, each event stamped with a VSN.
From target: waits on standby until a cutover to target prepared for fall-back or
fall-forward completes, then streams the target's changes (no snapshot).

What it waits for: the databases and the broker (it retries while they are
unreachable, saying so); with exporter.snapshot_max_lead, importers that fall too far
behind the snapshot.

Stopping and resuming: Ctrl-C or SIGTERM finishes in-flight work and saves the
checkpoint; run the same command again and it resumes from there, with no change lost
or doubled (a kill -9 is safe too). A cutover stops it by itself once it has exported
everything committed before the cutover; `ferry end migration` stops it for good.

The flags below are shortcuts for settings, as YugabyteDB Voyager users type them; each
overrides the configuration file like --set does.";

/// Voyager's flags of `export data`, each a shortcut for a setting.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ExportFlags {
    /// What to export: snapshot-and-changes, snapshot-only or changes-only
    /// (exporter.export_type)
    #[arg(long, value_name = "TYPE")]
    pub export_type: Option<String>,
    /// Only these tables, comma-separated patterns (migration.include_tables)
    #[arg(long, value_name = "TABLES")]
    pub table_list: Option<String>,
    /// Leave these tables out, comma-separated patterns (migration.exclude_tables)
    #[arg(long, value_name = "TABLES")]
    pub exclude_table_list: Option<String>,
    /// Tables (or chunks of one table) read in parallel during the snapshot
    /// (exporter.snapshot_workers)
    #[arg(long, value_name = "N")]
    pub parallel_jobs: Option<u32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ExportDatabase {
    Source,
    Target,
}

#[derive(Debug, Subcommand)]
pub enum Import {
    /// Import the exported (and edited) schema into the target or a source-replica, in
    /// dependency order; non-unique indexes, triggers, policies and comments wait for
    /// --post-snapshot-import. Resumable: a rerun does only what is left
    Schema {
        /// Where the export is (schema/ inside it)
        #[arg(long, value_name = "DIR", default_value = ferry_cli::schema::DEFAULT_EXPORT_DIR)]
        export_dir: std::path::PathBuf,
        /// The database to create the schema in
        #[arg(long, value_enum, default_value_t = SchemaDestination::Target)]
        to: SchemaDestination,
        /// Also create what waits for the snapshot import (non-unique indexes,
        /// triggers, policies, comments) and fill the materialized views
        #[arg(long)]
        post_snapshot_import: bool,
        /// A statement whose object exists already counts as applied
        #[arg(long)]
        ignore_exist: bool,
        /// With --post-snapshot-import, also apply grants.sql (ownership and privileges;
        /// the roles must exist on the destination)
        #[arg(long)]
        include_grants: bool,
    },
    /// Apply a stream to a database (runs an importer in this process)
    Data {
        #[command(subcommand)]
        to: ImportTo,
    },
}

/// The databases `import schema` creates a schema in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SchemaDestination {
    Target,
    SourceReplica,
}

#[derive(Debug, Subcommand)]
pub enum ImportTo {
    /// Run an importer of a database in this process: applies a stream exactly once
    #[command(long_about = IMPORT_DATA_HELP)]
    To {
        /// target: the source stream, from the start; source-replica: the source
        /// stream, then the target stream after a fall-forward cutover; source: the
        /// target stream after a fall-back cutover (until then it waits on standby)
        #[arg(value_enum)]
        database: Database,
        #[command(flatten)]
        voyager: ImportFlags,
    },
}

const IMPORT_DATA_HELP: &str = "\
Runs one importer of a database in this process: it consumes a stream in its consumer
group and applies every event exactly once, writing its positions in the destination in
the same transaction as the rows. Run it on several machines (or several times) to
scale out: the replicas share the stream's partitions.

What it waits for: the stream's topics (before the exporter made them), the cutover
that gives it a stream (the source importer, before a fall-back cutover), the
databases and the broker (it retries while they are unreachable).

Stopping and resuming: Ctrl-C or SIGTERM finishes the batch in flight and exits; run
the same command again and it resumes from the positions stored in the destination
(a kill -9 is safe too). It follows the cutovers by itself and stops when the migration
ends.

The flags below are shortcuts for settings, as YugabyteDB Voyager users type them; each
overrides the configuration file like --set does.";

/// Voyager's flags of `import data`, each a shortcut for a setting.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ImportFlags {
    /// Apply tasks in this process, each with its own connection (importer.workers)
    #[arg(long, value_name = "N")]
    pub parallel_jobs: Option<u32>,
    /// Rows per destination transaction (importer.batch_rows)
    #[arg(long, value_name = "ROWS")]
    pub batch_size: Option<u32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Database {
    Target,
    SourceReplica,
    Source,
}

#[derive(Debug, Subcommand)]
pub enum Initiate {
    /// Switch the application to another database
    Cutover {
        #[command(subcommand)]
        to: CutoverTo,
    },
}

#[derive(Debug, Subcommand)]
pub enum CutoverTo {
    /// Ask the coordinator to switch the application to another database
    #[command(long_about = CUTOVER_HELP)]
    To {
        #[arg(value_enum)]
        database: Database,
        /// Keep the source in sync after cutover (only with "to target")
        #[arg(long, conflicts_with = "prepare_for_fall_forward")]
        prepare_for_fall_back: bool,
        /// Keep the source-replica in sync after cutover (only with "to target")
        #[arg(long)]
        prepare_for_fall_forward: bool,
    },
}

const CUTOVER_HELP: &str = "\
Records a cutover request with the coordinator and returns; `ferry cutover status`
follows it step by step.

To target: stop the application's writes to the source first. The source exporter
exports everything committed up to now and stops; the importers of the source stream
drain to its last event; the target's sequences are set; with --prepare-for-fall-back
or --prepare-for-fall-forward (or migration.workflow in the configuration) the target
exporter starts and the source (or source-replica) importer follows the target. Then the
status is COMPLETED: move the application to the target.
To source-replica / to source: the same drain on the target stream, after a cutover to
target prepared for it.

What it waits for: the exporter and the importers of the stream must be running
(`ferry cutover status` names the one it waits for). Repeating the request is harmless;
a cutover cannot be undone, only followed by the next one.";

#[derive(Debug, Subcommand)]
pub enum Cutover {
    /// Show the progress of the current cutover
    Status,
}

#[derive(Debug, Subcommand)]
pub enum Get {
    /// Rows exported, imported and remaining per table and stream
    DataMigrationReport {
        #[arg(long, value_enum, default_value_t = ReportFormat::Table)]
        format: ReportFormat,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ReportFormat {
    Table,
    Json,
}

#[derive(Debug, Clone, clap::Args)]
pub struct ReplayArgs {
    /// The stream to read
    #[arg(long, value_enum, default_value_t = ExportDatabase::Source)]
    pub stream: ExportDatabase,
    /// Only this table (schema.table); repeat for several; default every table
    #[arg(long = "table", value_name = "SCHEMA.TABLE")]
    pub tables: Vec<String>,
    /// Start at the first event with this VSN or above
    #[arg(long, conflicts_with_all = ["from_time", "from_offset"])]
    pub from_vsn: Option<u64>,
    /// Start at the first event written at or after this time (RFC 3339 or ms since the epoch)
    #[arg(long, conflicts_with = "from_offset")]
    pub from_time: Option<String>,
    /// Start at [topic:]partition:offset; repeat for several partitions
    #[arg(long)]
    pub from_offset: Vec<String>,
    /// Stop after the event with this VSN (inclusive)
    #[arg(long, conflicts_with = "to_time")]
    pub to_vsn: Option<u64>,
    /// Stop before the first event written at or after this time
    #[arg(long)]
    pub to_time: Option<String>,
    /// Write JSON lines to this file
    #[arg(long, value_name = "PATH", conflicts_with_all = ["to_stdout", "to"])]
    pub to_file: Option<std::path::PathBuf>,
    /// Write JSON lines to standard output
    #[arg(long, conflicts_with = "to")]
    pub to_stdout: bool,
    /// Apply the events to this configured database (recovery), exactly once
    #[arg(long, value_enum)]
    pub to: Option<Database>,
    /// With --to: use this database name instead of the configured one (e.g. a restored backup)
    #[arg(long, requires = "to")]
    pub database: Option<String>,
    /// With --to: the name of this replay's positions (group <prefix>.replay.<name>)
    #[arg(long, requires = "to", default_value = "replay")]
    pub name: String,
}

#[derive(Debug, Subcommand)]
pub enum Archive {
    /// Move retained change events that every importer applied to files and trim the topics
    Changes {
        /// Write the events to JSON-lines files in this directory, then delete them from the topics
        #[arg(
            long,
            value_name = "DIR",
            required_unless_present = "delete",
            conflicts_with = "delete"
        )]
        move_to: Option<std::path::PathBuf>,
        /// Delete them from the topics without writing files
        #[arg(long)]
        delete: bool,
        /// Only this stream (default both)
        #[arg(long, value_enum)]
        stream: Option<ExportDatabase>,
        /// Only report what would be moved
        #[arg(long)]
        dry_run: bool,
        #[arg(long, value_enum, default_value_t = ReportFormat::Table)]
        format: ReportFormat,
    },
}

#[derive(Debug, Subcommand)]
pub enum End {
    /// Back up, then drop slots, publications, metadata and topics
    Migration {
        /// Directory for the backups asked for below
        #[arg(long, value_name = "DIR")]
        backup_dir: Option<std::path::PathBuf>,
        /// Save the data-migration report and the cutover status
        #[arg(long)]
        save_migration_reports: bool,
        /// Save the migration's state and heartbeat records (_state, _status) as JSON lines
        #[arg(long)]
        backup_log_files: bool,
        /// Save the schema of every configured database (pg_dump --schema-only)
        #[arg(long)]
        backup_schema_files: bool,
        /// Save every event of both streams as JSON lines in VSN order (as ferry replay writes)
        #[arg(long)]
        backup_data_files: bool,
        /// Delete the migration's Kafka topics (the change history is lost)
        #[arg(long)]
        delete_topics: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum ConfigVerb {
    /// Load and validate the configuration, then print it with secrets masked
    Check,
}

impl Database {
    pub fn name(self) -> &'static str {
        match self {
            Database::Target => "target",
            Database::SourceReplica => "source-replica",
            Database::Source => "source",
        }
    }

    pub fn destination(self) -> ferry_shared::topics::Destination {
        use ferry_shared::topics::Destination;
        match self {
            Database::Target => Destination::Target,
            Database::SourceReplica => Destination::SourceReplica,
            Database::Source => Destination::Source,
        }
    }
}

impl Verb {
    /// The `--set key=value` overrides that the verb's Voyager-style flags stand for.
    pub fn overrides(&self) -> Vec<String> {
        let mut out = Vec::new();
        match self {
            Verb::Export {
                what:
                    Export::Data {
                        from: ExportFrom::From { voyager, .. },
                    },
            } => {
                if let Some(t) = &voyager.export_type {
                    out.push(format!("exporter.export_type={t}"));
                }
                if let Some(t) = &voyager.table_list {
                    out.push(format!("migration.include_tables={}", toml_list(t)));
                }
                if let Some(t) = &voyager.exclude_table_list {
                    out.push(format!("migration.exclude_tables={}", toml_list(t)));
                }
                if let Some(n) = voyager.parallel_jobs {
                    out.push(format!("exporter.snapshot_workers={n}"));
                }
            }
            Verb::Import {
                what:
                    Import::Data {
                        to: ImportTo::To { voyager, .. },
                    },
            } => {
                if let Some(n) = voyager.parallel_jobs {
                    out.push(format!("importer.workers={n}"));
                }
                if let Some(n) = voyager.batch_size {
                    out.push(format!("importer.batch_rows={n}"));
                }
            }
            _ => {}
        }
        out
    }
}

/// `a, b` as a TOML array of strings: `["a", "b"]`.
fn toml_list(csv: &str) -> String {
    let items: Vec<String> = csv
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\"")))
        .collect();
    format!("[{}]", items.join(", "))
}
