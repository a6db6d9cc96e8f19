//! The command tree: voyager-style verbs (DESIGN.md §8).

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
    /// Analyze the source schema for problems before migrating
    AnalyzeSchema,
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

#[derive(Debug, Subcommand)]
pub enum Export {
    /// Export the source schema as SQL
    Schema,
    /// Export data as a stream (runs an exporter in this process)
    Data {
        #[command(subcommand)]
        from: ExportFrom,
    },
}

#[derive(Debug, Subcommand)]
pub enum ExportFrom {
    /// The database to export from
    From {
        #[arg(value_enum)]
        database: ExportDatabase,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ExportDatabase {
    Source,
    Target,
}

#[derive(Debug, Subcommand)]
pub enum Import {
    /// Import the exported schema into the target
    Schema {
        /// Create indexes and constraints deferred until the snapshot is loaded
        #[arg(long)]
        post_snapshot_import: bool,
    },
    /// Apply a stream to a database (runs an importer in this process)
    Data {
        #[command(subcommand)]
        to: ImportTo,
    },
}

#[derive(Debug, Subcommand)]
pub enum ImportTo {
    /// The database to import into
    To {
        #[arg(value_enum)]
        database: Database,
    },
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
    /// The database to cut over to
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
    /// The words of the command as typed, for messages: `ferry import data to source`.
    pub fn phrase(&self) -> String {
        let words = match self {
            Verb::Export {
                what: Export::Schema,
            } => "export schema".to_owned(),
            Verb::Export {
                what:
                    Export::Data {
                        from: ExportFrom::From { database },
                    },
            } => format!(
                "export data from {}",
                match database {
                    ExportDatabase::Source => "source",
                    ExportDatabase::Target => "target",
                }
            ),
            Verb::AnalyzeSchema => "analyze-schema".to_owned(),
            Verb::Import {
                what: Import::Schema { .. },
            } => "import schema".to_owned(),
            Verb::Import {
                what:
                    Import::Data {
                        to: ImportTo::To { database },
                    },
            } => format!("import data to {}", database.name()),
            Verb::Initiate {
                what:
                    Initiate::Cutover {
                        to: CutoverTo::To { database, .. },
                    },
            } => format!("initiate cutover to {}", database.name()),
            Verb::Cutover {
                what: Cutover::Status,
            } => "cutover status".to_owned(),
            Verb::Get {
                what: Get::DataMigrationReport { .. },
            } => "get data-migration-report".to_owned(),
            Verb::Verify { .. } => "verify".to_owned(),
            Verb::Replay(_) => "replay".to_owned(),
            Verb::Archive {
                what: Archive::Changes { .. },
            } => "archive changes".to_owned(),
            Verb::End {
                what: End::Migration { .. },
            } => "end migration".to_owned(),
            Verb::Coordinator => "coordinator".to_owned(),
            Verb::Config {
                what: ConfigVerb::Check,
            } => "config check".to_owned(),
        };
        format!("ferry {words}")
    }
}
