//! A schema registry per test: Ferry's built-in registry (the coordinator's), served
//! on a free port and stored in a `_schemas` topic of the test's own on the local
//! broker.

use std::net::SocketAddr;
use std::sync::Arc;

use ferry_coordinator::registry::{self, Registry};

use crate::{free_port, unique_name, Stack};

/// Serves a fresh registry (schemas in the topic `topic`, or a new one when `None`) on
/// a free port for the rest of the test process; returns its URL, `http://host:port`.
pub async fn serve_registry(topic: Option<&str>) -> anyhow::Result<String> {
    let stack = Stack::get();
    let mut kafka = rdkafka::ClientConfig::new();
    kafka.set("bootstrap.servers", &stack.kafka_bootstrap);
    let topic = topic.map_or_else(|| unique_name("schemas"), str::to_owned);
    let registry = Arc::new(Registry::open(kafka, topic).await?);
    let addr: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tokio::spawn(async move {
        let _ = axum::serve(listener, registry::router(registry)).await;
    });
    Ok(format!("http://{addr}"))
}
