//! ferry-exporter.

pub mod check;
pub mod pgoutput;

use ferry_shared::config::Config;
use ferry_shared::shutdown::Shutdown;

/// What stops the exporter.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Not built yet.
    #[error("the exporter is not implemented yet")]
    NotImplemented,
}

/// Runs the exporter until `shutdown` fires or a definite error stops it.
pub async fn run(_config: Config, _shutdown: Shutdown) -> Result<(), Error> {
    Err(Error::NotImplemented)
}
