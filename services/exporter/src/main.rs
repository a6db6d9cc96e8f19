//! Thin binary over [`ferry_exporter::run_for`]: arguments, logging, configuration, runtime.
//!
//! Exit codes: see [`ferry_shared::process`].

use std::process::ExitCode;

use clap::Parser;

/// mimalloc: the snapshot and change paths allocate per row; it cut the allocator's
/// share of the exporter's CPU (docs/benchmarks.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Reads one database (snapshot, then changes) and produces a Ferry stream to Kafka.
#[derive(Debug, Parser)]
#[command(name = "ferry-exporter", version, about)]
struct Cli {
    /// The stream to export: `source` (from the source database) or `target` (from the
    /// target, after a cutover; waits on standby until the coordinator starts it).
    #[arg(long, value_enum, default_value = "source")]
    stream: StreamArg,
    #[command(flatten)]
    config: ferry_shared::config::Args,
}

#[derive(Copy, Clone, Debug, clap::ValueEnum)]
enum StreamArg {
    Source,
    Target,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    ferry_shared::process::init_logging();
    let config = match cli.config.load() {
        Ok(config) => config,
        Err(errors) => return ferry_shared::process::config_errors(&errors),
    };
    let stream = match cli.stream {
        StreamArg::Source => ferry_shared::topics::Stream::Source,
        StreamArg::Target => ferry_shared::topics::Stream::Target,
    };
    ferry_shared::process::run_until_stopped(|shutdown| async move {
        let _health = ferry_shared::health::serve_if_set(
            "exporter.health_listen",
            config.exporter.health_listen.as_deref(),
            shutdown.clone(),
        )
        .await?;
        ferry_exporter::run_for(stream, config, shutdown)
            .await
            .map_err(Box::<dyn std::error::Error + Send + Sync>::from)
    })
}
