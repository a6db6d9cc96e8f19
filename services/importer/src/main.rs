//! Thin binary over [`ferry_importer::run`]: arguments, logging, configuration, runtime.
//!
//! Exit codes: 0 after a clean shutdown, 1 when the service stops on an error,
//! 2 when the configuration is invalid.

use std::process::ExitCode;

use clap::Parser;
use tracing_subscriber::EnvFilter;

/// Consumes a Ferry stream in a consumer group and applies it to one database.
#[derive(Debug, Parser)]
#[command(name = "ferry-importer", version, about)]
struct Cli {
    #[command(flatten)]
    config: ferry_shared::config::Args,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_env("FERRY_LOG").unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();

    let config = match cli.config.load() {
        Ok(config) => config,
        Err(errors) => {
            for error in errors.iter() {
                eprintln!("error: {error}");
            }
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        ferry_importer::run(config, ferry_shared::shutdown::on_signals()).await
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            let mut source = std::error::Error::source(&e);
            while let Some(cause) = source {
                eprintln!("  caused by: {cause}");
                source = cause.source();
            }
            ExitCode::FAILURE
        }
    }
}
