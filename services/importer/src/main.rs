//! Thin binary over [`ferry_importer::run_for`]: arguments, logging, configuration, runtime.
//!
//! Exit codes: see [`ferry_shared::process`].

use std::process::ExitCode;

use clap::Parser;

/// mimalloc: the snapshot and change paths allocate per row; it cut the allocator's
/// share of the exporter's CPU (docs/benchmarks.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Consumes a Ferry stream in a consumer group and applies it to one database.
#[derive(Debug, Parser)]
#[command(name = "ferry-importer", version, about)]
struct Cli {
    /// The database to apply to: `target`, `source-replica` (fall-forward) or `source`
    /// (fall-back; waits until the coordinator moves it to the target stream).
    #[arg(long, value_enum, default_value = "target")]
    destination: DestinationArg,
    #[command(flatten)]
    config: ferry_shared::config::Args,
}

#[derive(Copy, Clone, Debug, clap::ValueEnum)]
enum DestinationArg {
    Target,
    SourceReplica,
    Source,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    ferry_shared::process::init_logging();
    let config = match cli.config.load() {
        Ok(config) => config,
        Err(errors) => return ferry_shared::process::config_errors(&errors),
    };
    use ferry_shared::topics::Destination;
    let destination = match cli.destination {
        DestinationArg::Target => Destination::Target,
        DestinationArg::SourceReplica => Destination::SourceReplica,
        DestinationArg::Source => Destination::Source,
    };
    ferry_shared::process::run_until_stopped(|shutdown| async move {
        let _health = ferry_shared::health::serve_if_set(
            "importer.health_listen",
            config.importer.health_listen.as_deref(),
            shutdown.clone(),
        )
        .await?;
        ferry_importer::run_for(destination, config, shutdown)
            .await
            .map_err(Box::<dyn std::error::Error + Send + Sync>::from)
    })
}
