//! `ferry`, the operator's command line.
//!
//! Exit codes: 0 on success, 1 when a command fails while running, 2 for usage and
//! configuration errors and for verbs that are not available yet.

mod verbs;

use std::process::ExitCode;

use clap::Parser;
use ferry_shared::config::{Config, ConfigErrors};
use ferry_shared::shutdown;
use ferry_shared::topics::Destination;

use verbs::{
    Cli, ConfigVerb, CutoverTo, Database, Export, ExportDatabase, ExportFrom, Import, ImportTo,
    Initiate, Verb,
};

/// What a verb does when it runs.
enum Action {
    /// Runs the exporter of the source stream in this process.
    ExportFromSource,
    /// Runs the importer that applies the source stream to the target or the
    /// source-replica.
    Import(ferry_shared::topics::Destination),
    /// Runs the coordinator in this process.
    Coordinator,
    /// Prints the effective configuration.
    ConfigCheck,
    /// Checks the source's tables and settings without changing anything.
    AnalyzeSchema,
    /// Not built yet.
    NotAvailable,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
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
        Action::ExportFromSource => {
            if let Err(e) = config.require_source() {
                return config_errors(&e.into());
            }
            run_service(config, |config, shutdown| async move {
                ferry_exporter::run(config, shutdown).await.map_err(boxed)
            })
        }
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
                        },
                },
        } => Action::ExportFromSource,
        Verb::Import {
            what: Import::Data {
                to: ImportTo::To { database },
            },
        } => match database {
            Database::Target => Action::Import(Destination::Target),
            Database::SourceReplica => Action::Import(Destination::SourceReplica),
            // Fall-back reads the target stream, which starts at cutover (not built yet).
            Database::Source => Action::NotAvailable,
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
            Action::NotAvailable
        }
        Verb::Coordinator => Action::Coordinator,
        Verb::AnalyzeSchema => Action::AnalyzeSchema,
        Verb::Config {
            what: ConfigVerb::Check,
        } => Action::ConfigCheck,
        _ => Action::NotAvailable,
    })
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

/// Runs a service library until it returns or a signal stops it
/// ([`ferry_shared::process::run_until_stopped`]).
fn run_service<F, Fut>(config: Config, run: F) -> ExitCode
where
    F: FnOnce(Config, shutdown::Shutdown) -> Fut,
    Fut: std::future::Future<Output = Result<(), BoxError>>,
{
    ferry_shared::process::run_until_stopped(|shutdown| run(config, shutdown))
}
