//! The coordinator process serves the built-in registry from its Kafka topic: schemas
//! registered through it keep their ids after the coordinator is stopped and started again.

use std::time::Duration;

use anyhow::Result;
use ferry_shared::config::Config;
use ferry_shared::registry::RegistryClient;
use ferry_shared::shutdown;
use ferry_testkit::{free_port, unique_name, Stack};

fn config(migration: &str, listen: &str) -> Result<Config> {
    let stack = Stack::get();
    let text = stack.config_toml(migration, "ferry", "ferry", "ferry", listen);
    Config::from_toml_str(&text).map_err(|e| anyhow::anyhow!("{e}"))
}

type Running = tokio::task::JoinHandle<Result<(), ferry_coordinator::Error>>;

async fn start(config: Config) -> Result<(shutdown::ShutdownTrigger, Running)> {
    let (trigger, shutdown) = shutdown::channel();
    let listen = config.coordinator.listen.clone();
    let task = tokio::spawn(ferry_coordinator::run(config, shutdown));
    ferry_testkit::wait_listening(&listen, Duration::from_secs(90)).await?;
    Ok((trigger, task))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schema_ids_survive_a_coordinator_restart() -> Result<()> {
    let migration = unique_name("restart");
    let listen = format!("127.0.0.1:{}", free_port());
    let schema_a = r#"{"type":"record","name":"A","fields":[{"name":"x","type":"long"}]}"#;
    let schema_b = r#"{"type":"record","name":"B","fields":[{"name":"y","type":"string"}]}"#;

    let first = config(&migration, &listen)?;
    let (trigger, task) = start(first.clone()).await?;
    // The built-in registry at the coordinator's address, with the coordinator's token.
    let client = RegistryClient::from_config(&first)?;
    let id_a = client.register("t-a-value", schema_a).await?;
    let id_b = client.register("t-b-value", schema_b).await?;
    assert_ne!(id_a, id_b);
    trigger.trigger();
    task.await??;

    let second = config(&migration, &listen)?;
    let (trigger, task) = start(second.clone()).await?;
    let client = RegistryClient::from_config(&second)?;
    // Registering the same schemas again returns the ids they had before the restart.
    assert_eq!(client.register("t-a-value", schema_a).await?, id_a);
    assert_eq!(client.register("t-b-value", schema_b).await?, id_b);
    // And a fresh client reads them by id.
    let fresh = RegistryClient::from_config(&second)?;
    assert!(fresh.schema(id_a).await.is_ok());
    trigger.trigger();
    task.await??;
    Ok(())
}
