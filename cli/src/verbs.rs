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
    /// Compare row counts and checksums, source vs target
    Verify,
    /// Read a stream again from a VSN, offset or time (audit, recovery)
    Replay,
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

#[derive(Debug, Subcommand)]
pub enum Archive {
    /// Move retained change events to files and trim the topics
    Changes,
}

#[derive(Debug, Subcommand)]
pub enum End {
    /// Back up, then drop slots, publications, metadata and topics
    Migration,
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
            Verb::Verify => "verify".to_owned(),
            Verb::Replay => "replay".to_owned(),
            Verb::Archive {
                what: Archive::Changes,
            } => "archive changes".to_owned(),
            Verb::End {
                what: End::Migration,
            } => "end migration".to_owned(),
            Verb::Coordinator => "coordinator".to_owned(),
            Verb::Config {
                what: ConfigVerb::Check,
            } => "config check".to_owned(),
        };
        format!("ferry {words}")
    }
}
