//! `ferry`, the operator's command line.
//!
//! Exit codes: 0 on success, 1 when a command fails while running, 2 for usage and
//! configuration errors and for verbs that are not available yet.

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
    /// Checks the source's tables and settings without changing anything.
    AnalyzeSchema,
    /// Shows, then makes, the changes the exporter needs on the source.
    PrepareSource { dry_run: bool },
    /// Not built yet.
    NotAvailable,
}

fn main() -> ExitCode {
    let mut cli = Cli::parse();
    // Voyager-style flags are shortcuts for settings: they go after the --set flags
    // given, so they win like a --set at the end of the line.
    let overrides = cli.verb.overrides();
    cli.config.set.extend(overrides);
    ferry_shared::process::init_logging();

    let phrase = cli.verb.phrase();
    let action = match action(&cli.verb) {
        Ok(action) => action,
        Err(message) => {
            eprintln!("error: {message}");
            return ExitCode::from(2);
        }
    };
    if let Action::NotAvailable = action {
        eprintln!("error: \"{phrase}\" is not available yet");
        return ExitCode::from(2);
    }

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
        Action::AnalyzeSchema => {
            if let Err(e) = config.require_source() {
                return config_errors(&e.into());
            }
            run_service(config, |config, _shutdown| async move {
                let tables = ferry_exporter::analyze(&config).await.map_err(boxed)?;
                print!("{}", analysis_report(&tables));
                Ok(())
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
                    println!("the source needs no change: every selected table has REPLICA IDENTITY FULL");
                    return Ok(());
                }
                println!(
                    "{} on the source ({} table{}):",
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
                    "done: {} table{} changed",
                    done.len(),
                    if done.len() == 1 { "" } else { "s" }
                );
                Ok(())
            })
        }
        Action::NotAvailable => ExitCode::from(2),
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
        Verb::AnalyzeSchema => Action::AnalyzeSchema,
        Verb::Prepare {
            what: Prepare::Source { dry_run },
        } => Action::PrepareSource { dry_run: *dry_run },
        Verb::Config {
            what: ConfigVerb::Check,
        } => Action::ConfigCheck,
        _ => Action::NotAvailable,
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

/// What `analyze-schema` prints for a source that is ready: per table, its key and how
/// each column travels.
fn analysis_report(tables: &[ferry_shared::catalog::TableSchema]) -> String {
    use std::fmt::Write as _;
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
