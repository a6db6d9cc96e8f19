//! Thin binary over [`ferry_importer::run`]: arguments, logging, configuration, runtime.
//!
//! Exit codes: see [`ferry_shared::process`].

use std::process::ExitCode;

use clap::Parser;

/// Consumes a Ferry stream in a consumer group and applies it to one database.
#[derive(Debug, Parser)]
#[command(name = "ferry-importer", version, about)]
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
    ferry_shared::process::run_until_stopped(|shutdown| ferry_importer::run(config, shutdown))
}
