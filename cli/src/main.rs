//! `ferry`, the operator's command line.
//!
//! Exit codes: 0 on success, 1 when a command fails while running, 2 for usage and
//! configuration errors.

mod client;
mod verbs;

use std::process::ExitCode;

use clap::Parser;
use ferry_coordinator::cutover::PrepareFor;
use ferry_shared::config::{Config, ConfigErrors};
use ferry_shared::shutdown;
use ferry_shared::topics::{Destination, Stream};

use verbs::{
    Archive, Cli, ConfigVerb, Cutover, CutoverTo, Database, End, Export, ExportDatabase,
    ExportFrom, Get, Import, ImportTo, Initiate, Prepare, ReportFormat, Verb,
};

/// mimalloc: the snapshot and change paths allocate per row; it cut the allocator's
/// share of the exporter's CPU (docs/benchmarks.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// What a verb does when it runs.
enum Action {
    /// Runs the exporter of a stream in this process.
    Export(Stream),
    /// Runs the importer of a destination in this process.
    Import(Destination),
    /// Asks the coordinator for a cutover.
    InitiateCutover(Destination, PrepareFor),
    /// Prints the cutover status.
    CutoverStatus,
    /// Prints the data-migration report (JSON when true).
    Report(bool),
    /// Ends the migration.
    EndMigration(client::EndOptions),
    /// Replays a stream.
    Replay(verbs::ReplayArgs),
    /// Archives applied events.
    Archive {
        opts: ferry_cli::archive::ArchiveOptions,
        json: bool,
    },
    /// Compares two databases.
    Verify {
        from: Destination,
        to: Destination,
        tables: Vec<String>,
        max_keys: usize,
        json: bool,
    },
    /// Runs the coordinator in this process.
    Coordinator,
    /// Prints the effective configuration.
    ConfigCheck,
    /// Analyzes the exported schema files for the target engine and checks the source,
    /// changing nothing.
    AnalyzeSchema {
        /// `<export-dir>`, and whether it was given (then it must hold a schema).
        export_dir: std::path::PathBuf,
        explicit_dir: bool,
        format: ferry_cli::schema::analyze::Format,
        output_file: Option<std::path::PathBuf>,
    },
    /// Shows, then makes, the changes the exporter needs on the source.
    PrepareSource { dry_run: bool },
    /// Writes the source's schema into files.
    ExportSchema {
        export_dir: std::path::PathBuf,
        start_clean: bool,
    },
    /// Applies the schema files to a database.
    ImportSchema(ferry_cli::schema::import::ImportOptions),
}

fn main() -> ExitCode {
    let mut cli = Cli::parse();
    // Voyager-style flags are shortcuts for settings: they go after the --set flags
    // given, so they win like a --set at the end of the line.
    let overrides = cli.verb.overrides();
    cli.config.set.extend(overrides);
    ferry_shared::process::init_logging();

    let action = match action(&cli.verb) {
        Ok(action) => action,
        Err(message) => {
            eprintln!("error: {message}");
            return ExitCode::from(2);
        }
    };

    let config = match cli.config.load() {
        Ok(config) => config,
        Err(errors) => return config_errors(&errors),
    };
    match action {
        Action::ConfigCheck => {
            println!(
                "# effective configuration from {}, the FERRY_* environment and --set flags (secrets masked)",
                cli.config.config_path().display()
            );
            print!("{}", config.to_masked_toml());
            ExitCode::SUCCESS
        }
        Action::Export(stream) => {
            let section = match stream {
                Stream::Source => config.require_source(),
                Stream::Target => config.require_target(),
            };
            if let Err(e) = section {
                return config_errors(&e.into());
            }
            run_service(config, move |config, shutdown| async move {
                let _health = ferry_shared::health::serve_if_set(
                    "exporter.health_listen",
                    config.exporter.health_listen.as_deref(),
                    shutdown.clone(),
                )
                .await
                .map_err(boxed)?;
                ferry_exporter::run_for(stream, config, shutdown)
                    .await
                    .map_err(boxed)
            })
        }
        Action::InitiateCutover(to, prepare_for) => {
            print_answer(config, move |config| async move {
                client::initiate_cutover(&config, to, prepare_for).await
            })
        }
        Action::CutoverStatus => print_answer(config, |config| async move {
            client::cutover_status(&config).await
        }),
        Action::Report(json) => print_answer(config, move |config| async move {
            client::data_migration_report(&config, json).await
        }),
        Action::Verify {
            from,
            to,
            tables,
            max_keys,
            json,
        } => {
            let (Some(left), Some(right)) =
                (config.database(from).cloned(), config.database(to).cloned())
            else {
                let missing = if config.database(from).is_none() {
                    from
                } else {
                    to
                };
                eprintln!(
                    "error: the {missing} database is not configured: add a [{}] section to ferry.toml",
                    missing.as_str().replace('-', "_")
                );
                return ExitCode::from(2);
            };
            ferry_shared::process::run_until_stopped(|_shutdown| async move {
                use ferry_cli::verify;
                let names =
                    verify::tables_to_verify(&left, from.as_str(), &config.migration, &tables)
                        .await?;
                let opts = verify::VerifyOptions {
                    max_keys,
                    ..verify::VerifyOptions::default()
                };
                let report =
                    verify::verify(&left, from.as_str(), &right, to.as_str(), &names, &opts)
                        .await?;
                if json {
                    println!(
                        "{}",
                        serde_json::to_string_pretty(&report).unwrap_or_default()
                    );
                } else {
                    print!("{}", report.render_table());
                }
                if report.is_equal() {
                    Ok::<(), BoxError>(())
                } else {
                    Err(
                        client::ApiError(format!("the {from} and the {to} differ (see above)"))
                            .into(),
                    )
                }
            })
        }
        Action::Replay(args) => ferry_shared::process::run_until_stopped(|shutdown| async move {
            replay(&config, &args, shutdown).await
        }),
        Action::Archive { opts, json } => {
            ferry_shared::process::run_until_stopped(|_shutdown| async move {
                let report = ferry_cli::archive::archive_changes(&config, &opts).await?;
                if json {
                    println!(
                        "{}",
                        serde_json::to_string_pretty(&report).unwrap_or_default()
                    );
                } else {
                    print!("{}", report.render());
                }
                Ok::<(), BoxError>(())
            })
        }
        Action::EndMigration(opts) => print_answer(config, move |config| async move {
            client::end_migration(&config, &opts).await
        }),
        Action::Import(destination) => {
            let section = match destination {
                Destination::Target => config.require_target(),
                Destination::SourceReplica => config.require_source_replica(),
                Destination::Source => config.require_source(),
            };
            if let Err(e) = section {
                return config_errors(&e.into());
            }
            run_service(config, move |config, shutdown| async move {
                let _health = ferry_shared::health::serve_if_set(
                    "importer.health_listen",
                    config.importer.health_listen.as_deref(),
                    shutdown.clone(),
                )
                .await
                .map_err(boxed)?;
                ferry_importer::run_for(destination, config, shutdown)
                    .await
                    .map_err(boxed)
            })
        }
        Action::Coordinator => run_service(config, |config, shutdown| async move {
            ferry_coordinator::run(config, shutdown)
                .await
                .map_err(boxed)
        }),
        Action::AnalyzeSchema {
            export_dir,
            explicit_dir,
            format,
            output_file,
        } => {
            let has_schema = ferry_cli::schema::schema_dir(&export_dir).is_dir();
            if !has_schema && (explicit_dir || config.source.is_none()) {
                eprintln!(
                    "error: {} holds no exported schema{}: run `ferry export schema --export-dir {}` first{}",
                    ferry_cli::schema::schema_dir(&export_dir).display(),
                    if config.source.is_none() { " and no [source] is configured" } else { "" },
                    export_dir.display(),
                    if explicit_dir { "" } else { ", or pass --export-dir DIR" }
                );
                return ExitCode::from(2);
            }
            run_service(config, move |config, _shutdown| async move {
                let report = ferry_cli::schema::analyze::run(&config, &export_dir, has_schema)
                    .await
                    .map_err(client::ApiError)?;
                let rendered = report.render(format);
                match &output_file {
                    Some(path) => {
                        std::fs::write(path, &rendered).map_err(|e| {
                            client::ApiError(format!("cannot write {}: {e}", path.display()))
                        })?;
                        eprintln!(
                            "analyze-schema: {} issue(s); report written to {}",
                            report.summary.issues,
                            path.display()
                        );
                    }
                    None => print!("{rendered}"),
                }
                if report.passed() {
                    Ok(())
                } else {
                    Err(client::ApiError(report.failure_message()).into())
                }
            })
        }
        Action::ExportSchema {
            export_dir,
            start_clean,
        } => {
            if let Err(e) = config.require_source() {
                return config_errors(&e.into());
            }
            run_service(config, move |config, _shutdown| async move {
                let summary =
                    ferry_cli::schema::export::export_schema(&config, &export_dir, start_clean)
                        .await
                        .map_err(client::ApiError)?;
                print!("{}", summary.render());
                Ok(())
            })
        }
        Action::ImportSchema(opts) => {
            if let Err(e) = config.require_database(opts.destination) {
                return config_errors(&e.into());
            }
            run_service(config, move |config, _shutdown| async move {
                let summary = ferry_cli::schema::import::import_schema(&config, &opts)
                    .await
                    .map_err(boxed)?;
                print!("{}", summary.render(&opts));
                if summary.failed.is_empty() {
                    Ok(())
                } else {
                    Err(client::ApiError(format!(
                        "{} schema statement(s) failed (listed above)",
                        summary.failed.len()
                    ))
                    .into())
                }
            })
        }
        Action::PrepareSource { dry_run } => {
            if let Err(e) = config.require_source() {
                return config_errors(&e.into());
            }
            run_service(config, move |config, _shutdown| async move {
                // Shown before anything changes: the statements are read first, then run.
                let planned = ferry_exporter::prepare_source(&config, true)
                    .await
                    .map_err(boxed)?;
                if planned.is_empty() {
                    println!("the source needs no change: every selected table has REPLICA IDENTITY FULL and the stop-marker table exists");
                    return Ok(());
                }
                println!(
                    "{} on the source ({} change{}):",
                    if dry_run { "would run" } else { "running" },
                    planned.len(),
                    if planned.len() == 1 { "" } else { "s" }
                );
                for (_, statement) in &planned {
                    println!("  {statement};");
                }
                if dry_run {
                    println!("nothing was changed (--dry-run)");
                    return Ok(());
                }
                let done = ferry_exporter::prepare_source(&config, false)
                    .await
                    .map_err(boxed)?;
                println!(
                    "done: {} change{} made",
                    done.len(),
                    if done.len() == 1 { "" } else { "s" }
                );
                Ok(())
            })
        }
    }
}

/// Maps a verb to what it does; Err for a combination of flags that makes no sense.
fn action(verb: &Verb) -> Result<Action, String> {
    Ok(match verb {
        Verb::Export {
            what:
                Export::Data {
                    from:
                        ExportFrom::From {
                            database: ExportDatabase::Source,
                            ..
                        },
                },
        } => Action::Export(Stream::Source),
        Verb::Export {
            what:
                Export::Data {
                    from:
                        ExportFrom::From {
                            database: ExportDatabase::Target,
                            ..
                        },
                },
        } => Action::Export(Stream::Target),
        Verb::Import {
            what: Import::Data {
                to: ImportTo::To { database, .. },
            },
        } => match database {
            Database::Target => Action::Import(Destination::Target),
            Database::SourceReplica => Action::Import(Destination::SourceReplica),
            Database::Source => Action::Import(Destination::Source),
        },
        Verb::Initiate {
            what:
                Initiate::Cutover {
                    to:
                        CutoverTo::To {
                            database,
                            prepare_for_fall_back,
                            prepare_for_fall_forward,
                        },
                },
        } => {
            if *database != Database::Target
                && (*prepare_for_fall_back || *prepare_for_fall_forward)
            {
                let flag = if *prepare_for_fall_back {
                    "--prepare-for-fall-back"
                } else {
                    "--prepare-for-fall-forward"
                };
                return Err(format!(
                    "{flag} applies only to \"ferry initiate cutover to target\": remove it"
                ));
            }
            let prepare = if *prepare_for_fall_back {
                PrepareFor::FallBack
            } else if *prepare_for_fall_forward {
                PrepareFor::FallForward
            } else {
                PrepareFor::None
            };
            Action::InitiateCutover(database.destination(), prepare)
        }
        Verb::Cutover {
            what: Cutover::Status,
        } => Action::CutoverStatus,
        Verb::Replay(args) => {
            if args.to_file.is_none() && !args.to_stdout && args.to.is_none() {
                return Err(
                    "say where the events go: --to-file PATH, --to-stdout, or --to target|source|source-replica"
                        .into(),
                );
            }
            Action::Replay(args.clone())
        }
        Verb::Archive {
            what:
                Archive::Changes {
                    move_to,
                    delete,
                    stream,
                    dry_run,
                    format,
                },
        } => {
            use ferry_cli::archive::{ArchiveMode, ArchiveOptions};
            let mode = match (move_to, delete) {
                (Some(dir), false) => ArchiveMode::MoveTo(dir.clone()),
                (None, true) => ArchiveMode::Delete,
                _ => return Err("give exactly one of --move-to DIR and --delete".into()),
            };
            Action::Archive {
                opts: ArchiveOptions {
                    mode,
                    streams: stream.map(export_stream).into_iter().collect(),
                    dry_run: *dry_run,
                },
                json: *format == ReportFormat::Json,
            }
        }
        Verb::Verify {
            from,
            to,
            tables,
            max_keys,
            format,
        } => {
            if from == to {
                return Err(format!(
                    "--from and --to are both {}: compare two different databases",
                    from.name()
                ));
            }
            Action::Verify {
                from: from.destination(),
                to: to.destination(),
                tables: tables.clone(),
                max_keys: *max_keys,
                json: *format == ReportFormat::Json,
            }
        }
        Verb::Get {
            what: Get::DataMigrationReport { format },
        } => Action::Report(*format == ReportFormat::Json),
        Verb::End {
            what:
                End::Migration {
                    backup_dir,
                    save_migration_reports,
                    backup_log_files,
                    backup_schema_files,
                    backup_data_files,
                    delete_topics,
                },
        } => Action::EndMigration(client::EndOptions {
            backup_dir: backup_dir.clone(),
            save_migration_reports: *save_migration_reports,
            backup_log_files: *backup_log_files,
            backup_schema_files: *backup_schema_files,
            backup_data_files: *backup_data_files,
            delete_topics: *delete_topics,
        }),
        Verb::Coordinator => Action::Coordinator,
        Verb::AnalyzeSchema {
            export_dir,
            output_format,
            output_file,
        } => Action::AnalyzeSchema {
            export_dir: export_dir
                .clone()
                .unwrap_or_else(|| ferry_cli::schema::DEFAULT_EXPORT_DIR.into()),
            explicit_dir: export_dir.is_some(),
            format: *output_format,
            output_file: output_file.clone(),
        },
        Verb::Prepare {
            what: Prepare::Source { dry_run },
        } => Action::PrepareSource { dry_run: *dry_run },
        Verb::Export {
            what:
                Export::Schema {
                    export_dir,
                    start_clean,
                },
        } => Action::ExportSchema {
            export_dir: export_dir.clone(),
            start_clean: *start_clean,
        },
        Verb::Import {
            what:
                Import::Schema {
                    export_dir,
                    to,
                    post_snapshot_import,
                    ignore_exist,
                    include_grants,
                },
        } => {
            if *include_grants && !*post_snapshot_import {
                return Err("--include-grants applies grants.sql with --post-snapshot-import (ownership and privileges of every object, indexes and triggers included): add --post-snapshot-import".into());
            }
            Action::ImportSchema(ferry_cli::schema::import::ImportOptions {
                export_dir: export_dir.clone(),
                destination: match to {
                    verbs::SchemaDestination::Target => Destination::Target,
                    verbs::SchemaDestination::SourceReplica => Destination::SourceReplica,
                },
                post_snapshot: *post_snapshot_import,
                ignore_exist: *ignore_exist,
                include_grants: *include_grants,
            })
        }
        Verb::Config {
            what: ConfigVerb::Check,
        } => Action::ConfigCheck,
    })
}

fn export_stream(d: ExportDatabase) -> Stream {
    match d {
        ExportDatabase::Source => Stream::Source,
        ExportDatabase::Target => Stream::Target,
    }
}

/// `ferry replay`: to a file, to standard output, or into a database.
async fn replay(
    config: &Config,
    args: &verbs::ReplayArgs,
    shutdown: shutdown::Shutdown,
) -> Result<(), BoxError> {
    use ferry_cli::replay::{self as r, ReplayOptions, ReplayTarget};
    let tables = args
        .tables
        .iter()
        .map(|t| r::parse_table(t))
        .collect::<Result<Vec<_>, String>>()
        .map_err(client::ApiError)?;
    let opts = ReplayOptions {
        stream: export_stream(args.stream),
        tables,
        start: r::start_at(args.from_vsn, args.from_time.as_deref(), &args.from_offset)
            .map_err(client::ApiError)?,
        end: r::end_at(args.to_vsn, args.to_time.as_deref()).map_err(client::ApiError)?,
    };
    if let Some(to) = args.to {
        let destination = to.destination();
        let target = match &args.database {
            Some(name) => {
                let Some(db) = config.database(destination) else {
                    return Err(client::ApiError(format!(
                        "the {destination} database is not configured: add a [{}] section to ferry.toml",
                        destination.as_str().replace('-', "_")
                    ))
                    .into());
                };
                let mut db = db.clone();
                db.database = name.clone();
                ReplayTarget::Database(db)
            }
            None => ReplayTarget::Configured(destination),
        };
        let applied = r::replay_to_database(config, &opts, target, &args.name, shutdown).await?;
        eprintln!(
            "replay: applied {} event(s) (positions under {}){}",
            applied.events(),
            applied.group,
            if applied.completed {
                ""
            } else {
                "; stopped before the end point: run the same command again to continue"
            }
        );
        return Ok(());
    }
    let path = if args.to_stdout {
        None
    } else {
        args.to_file.clone()
    };
    let summary = r::replay_to_file(config, &opts, path.as_deref(), shutdown).await?;
    eprintln!(
        "replay: wrote {} event(s){}{}",
        summary.events,
        match (summary.first_vsn, summary.last_vsn) {
            (Some(a), Some(b)) => format!(", VSN {a} to {b}"),
            _ => String::new(),
        },
        path.map(|p| format!(" to {}", p.display()))
            .unwrap_or_default()
    );
    Ok(())
}

fn config_errors(errors: &ConfigErrors) -> ExitCode {
    ferry_shared::process::config_errors(errors)
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

fn boxed<E: std::error::Error + Send + Sync + 'static>(e: E) -> BoxError {
    Box::new(e)
}

/// Runs a verb that asks the coordinator something and prints the answer.
fn print_answer<F, Fut>(config: Config, run: F) -> ExitCode
where
    F: FnOnce(Config) -> Fut,
    Fut: std::future::Future<Output = Result<String, client::ApiError>>,
{
    ferry_shared::process::run_until_stopped(|_shutdown| async move {
        let text = run(config).await?;
        print!("{text}");
        Ok::<(), client::ApiError>(())
    })
}

/// Runs a service library until it returns or a signal stops it
/// ([`ferry_shared::process::run_until_stopped`]).
fn run_service<F, Fut>(config: Config, run: F) -> ExitCode
where
    F: FnOnce(Config, shutdown::Shutdown) -> Fut,
    Fut: std::future::Future<Output = Result<(), BoxError>>,
{
    ferry_shared::process::run_until_stopped(|shutdown| run(config, shutdown))
}
