//! ferry-coordinator: owns the migration state and serves the HTTP API.
//!
//! - [`migration`]: the only writer of the migration status record in `_state`; it
//!   rebuilds itself from `_state` on start and drives the cutover steps;
//! - [`positions`]: where every stream and importer group stands (VSNs, offsets,
//!   remaining events, rates, ETA), from Kafka, heartbeats and `ferry_metadata`;
//! - [`report`]: the data-migration report; [`end`]: ending a migration;
//! - [`api`]: the HTTP API, `/metrics` and a status page;
//! - [`registry`]: the built-in Confluent-compatible schema registry, served under the
//!   coordinator's address unless `schema_registry.url` names an external registry.

pub mod api;
pub mod cutover;
pub mod databases;
pub mod end;
pub mod migration;
pub mod positions;
pub mod registry;
pub mod report;

use std::sync::Arc;

use axum::routing::get;
use axum::Router;
use ferry_shared::config::Config;
use ferry_shared::shutdown::Shutdown;
use ferry_shared::topics::Topics;

/// What stops the coordinator.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The built-in registry could not load its topic.
    #[error("starting the built-in schema registry")]
    Registry(#[source] registry::RegistryError),
    /// The listen address could not be bound.
    #[error("cannot listen on {listen} (setting \"coordinator.listen\"): choose a free address")]
    Bind {
        /// The configured address.
        listen: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The migration state could not be read or written.
    #[error("opening the migration state")]
    State(#[source] migration::StateError),
    /// The broker refused this client (SASL login or TLS handshake).
    #[error(transparent)]
    KafkaAccess(#[from] ferry_shared::kafka_access::AccessError),
    /// The HTTP server failed.
    #[error("serving HTTP on {listen}")]
    Serve {
        /// The configured address.
        listen: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// The coordinator's HTTP routes for `config`, including the built-in registry when no
/// external one is configured.
pub async fn router(config: &Config) -> Result<Router, Error> {
    let mut app = Router::new().route("/healthz", get(|| async { "ok\n" }));
    if config.schema_registry.url.is_none() {
        let topics = Topics::new(config.migration.topic_prefix());
        let registry = registry::Registry::open(config.kafka.client_config(), topics.schemas())
            .await
            .map_err(Error::Registry)?;
        tracing::info!(topic = %topics.schemas(), "built-in schema registry loaded");
        app = app.merge(registry::router(Arc::new(registry)));
    }
    Ok(app)
}

/// Runs the coordinator until `shutdown` fires or a definite error stops it.
pub async fn run(config: Config, shutdown_from_caller: Shutdown) -> Result<(), Error> {
    ferry_shared::kafka_access::check(&config.kafka).await?;
    // Stops on `shutdown`, or by itself a moment after `ferry end migration`.
    let (stop_trigger, mut own) = ferry_shared::shutdown::channel();
    let (all_trigger, mut shutdown) = ferry_shared::shutdown::channel();
    let mut outer = shutdown_from_caller;
    tokio::spawn(async move {
        tokio::select! {
            _ = outer.wait() => {}
            _ = own.wait() => {}
        }
        all_trigger.trigger();
    });
    let mut app = router(&config).await?;
    let m = migration::Migration::open(config.clone(), shutdown.clone())
        .await
        .map_err(Error::State)?;
    if let Ok(mut stop) = m.stop.lock() {
        *stop = Some(stop_trigger);
    }
    app = app.merge(api::router(m.clone()));
    tokio::spawn(positions::refresh(m.clone(), shutdown.clone()));
    tokio::spawn(migration::drive(m, shutdown.clone()));
    let listen = config.coordinator.listen.clone();
    let listener = tokio::net::TcpListener::bind(&listen)
        .await
        .map_err(|source| Error::Bind {
            listen: listen.clone(),
            source,
        })?;
    tracing::info!(%listen, url = %config.coordinator.url(), "coordinator serving");
    axum::serve(listener, app)
        .with_graceful_shutdown(async move { shutdown.wait().await })
        .await
        .map_err(|source| Error::Serve { listen, source })
}
