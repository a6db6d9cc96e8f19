//! ferry-coordinator.

pub mod registry;

use ferry_shared::config::Config;
use ferry_shared::shutdown::Shutdown;

/// What stops the coordinator.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Not built yet.
    #[error("the coordinator is not implemented yet")]
    NotImplemented,
}

/// Runs the coordinator until `shutdown` fires or a definite error stops it.
pub async fn run(_config: Config, _shutdown: Shutdown) -> Result<(), Error> {
    Err(Error::NotImplemented)
}
