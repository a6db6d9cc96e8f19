//! ferry-coordinator: owns the migration state and serves the HTTP API.
//!
//! - [`migration`]: the only writer of the migration status record in `_state`; it
//!   rebuilds itself from `_state` on start and drives the cutover steps;
//! - [`positions`]: where every stream and importer group stands (VSNs, offsets,
//!   remaining events, rates, ETA), from Kafka, heartbeats and `ferry_metadata`;
//! - [`report`]: the data-migration report; [`end`]: ending a migration;
//! - [`api`]: the HTTP API and `/metrics`; [`page`]: the status page;
//! - [`access`]: the token every route but `/healthz` asks for; [`tls`]: HTTPS;
//! - [`registry`]: the built-in Confluent-compatible schema registry, served under the
//!   coordinator's address unless `schema_registry.url` names an external registry.

pub mod access;
pub mod api;
pub mod cutover;
pub mod databases;
pub mod end;
pub mod migration;
pub mod page;
pub mod positions;
pub mod registry;
pub mod report;
pub mod tls;

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
    /// The coordinator's token could not be read or generated.
    #[error(transparent)]
    Token(#[from] ferry_shared::coordinator_access::AccessError),
    /// The HTTPS certificate or key cannot be used.
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
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
/// external one is configured. Open to anyone: [`run`] puts [`access::protect`] in front
/// of them (and of the API's routes), and so must anything else that serves them.
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
    // Settings that cannot work stop the coordinator before it touches anything.
    let access = Arc::new(coordinator_access(&config)?);
    let tls = match (&config.coordinator.tls_cert, &config.coordinator.tls_key) {
        (Some(cert), Some(key)) => Some(tls::acceptor(cert, key)?),
        _ => None,
    };
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
    let app = access::protect(app, access);
    tokio::spawn(positions::refresh(m.clone(), shutdown.clone()));
    tokio::spawn(migration::drive(m, shutdown.clone()));
    let listen = config.coordinator.listen.clone();
    let listener = tokio::net::TcpListener::bind(&listen)
        .await
        .map_err(|source| Error::Bind {
            listen: listen.clone(),
            source,
        })?;
    tracing::info!(
        %listen,
        url = %config.coordinator.url(),
        https = tls.is_some(),
        public_read = config.coordinator.public_read,
        "coordinator serving"
    );
    let stopped = async move { shutdown.wait().await };
    let served = match tls {
        Some(acceptor) => {
            let listener =
                tls::TlsListener::new(listener, acceptor).map_err(|source| Error::Bind {
                    listen: listen.clone(),
                    source,
                })?;
            axum::serve(listener, app)
                .with_graceful_shutdown(stopped)
                .await
        }
        None => {
            axum::serve(listener, app)
                .with_graceful_shutdown(stopped)
                .await
        }
    };
    served.map_err(|source| Error::Serve { listen, source })
}

/// The token the API asks for ([`ferry_shared::coordinator_access::server_token`]),
/// logged by where it came from, never by value.
fn coordinator_access(config: &Config) -> Result<access::Access, Error> {
    use ferry_shared::coordinator_access::{server_token, TokenOrigin};
    let (token, origin) = server_token(&config.coordinator)?;
    // The full path: "./ferry-coordinator.token" says little in a service's log.
    let full = |path: &std::path::Path| std::fs::canonicalize(path).unwrap_or(path.to_owned());
    match &origin {
        TokenOrigin::Setting => tracing::info!("API token: from coordinator.token"),
        TokenOrigin::File(path) => {
            tracing::info!(path = %full(path).display(), "API token: read from the token file");
        }
        TokenOrigin::Generated(path) => tracing::info!(
            path = %full(path).display(),
            "API token: generated into the token file (mode 0600); give it to the CLI and the services with coordinator.token_file, or FERRY_COORDINATOR__TOKEN"
        ),
    }
    Ok(access::Access::new(&token, config.coordinator.public_read))
}
