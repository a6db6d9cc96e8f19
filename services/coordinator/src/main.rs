//! Thin binary over [`ferry_coordinator::run`]: arguments, logging, configuration, runtime.
//!
//! Exit codes: see [`ferry_shared::process`].

use std::process::ExitCode;

use clap::Parser;

/// mimalloc: the snapshot and change paths allocate per row; it cut the allocator's
/// share of the exporter's CPU (docs/benchmarks.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Owns the migration state, tracks positions, orchestrates cutover and serves the HTTP API.
#[derive(Debug, Parser)]
#[command(name = "ferry-coordinator", version, about)]
struct Cli {
    #[command(flatten)]
    config: ferry_shared::config::Args,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    ferry_shared::process::init_logging();
    let config = match cli.config.load() {
        Ok(config) => config,
        Err(errors) => return ferry_shared::process::config_errors(&errors),
    };
    ferry_shared::process::run_until_stopped(|shutdown| ferry_coordinator::run(config, shutdown))
}
