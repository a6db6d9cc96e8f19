//! What every Ferry binary does around its service: logging, configuration errors, a
//! runtime, signals, and the exit code.
//!
//! Exit codes: 0 after a clean shutdown, 1 when the service stops on an error (printed
//! with its chain of causes), 2 when the configuration or the command line is invalid.

use std::future::Future;
use std::process::ExitCode;

use tracing_subscriber::EnvFilter;

use crate::config::ConfigErrors;
use crate::shutdown::{self, Shutdown};

/// Logs to stderr, filtered by `FERRY_LOG` (default `info`).
pub fn init_logging() {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_env("FERRY_LOG").unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
}

/// Prints every configuration error and returns exit code 2.
pub fn config_errors(errors: &ConfigErrors) -> ExitCode {
    for error in errors.iter() {
        eprintln!("error: {error}");
    }
    ExitCode::from(2)
}

/// Runs `service` on a multi-thread runtime until it returns or SIGINT/SIGTERM stops it;
/// prints its error chain on failure.
pub fn run_until_stopped<F, Fut, E>(service: F) -> ExitCode
where
    F: FnOnce(Shutdown) -> Fut,
    Fut: Future<Output = Result<(), E>>,
    E: Into<Box<dyn std::error::Error + Send + Sync + 'static>>,
{
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
    let result = runtime.block_on(async { service(shutdown::on_signals()).await });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let e: Box<dyn std::error::Error + Send + Sync> = e.into();
            eprintln!("error: {e}");
            let mut source = e.source();
            while let Some(cause) = source {
                eprintln!("  caused by: {cause}");
                source = cause.source();
            }
            ExitCode::FAILURE
        }
    }
}

/// An error and its causes on one line, `outer: cause: root cause` (for log fields and
/// status). A cause whose text the line already ends with (drivers that print their
/// cause in their own message) is not repeated.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let cause = s.to_string();
        if !text.ends_with(&cause) {
            text.push_str(": ");
            text.push_str(&cause);
        }
        source = s.source();
    }
    text
}
