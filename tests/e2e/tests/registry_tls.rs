//! An external schema registry over HTTPS with basic auth, as Ferry's services reach it
//! (`RegistryClient::from_config`): `schema_registry.ca_file` trusted, the password from
//! `schema_registry.password_file`. The registry is the coordinator's built-in one served
//! over HTTPS (a certificate from a CA made in the test; basic auth with the
//! coordinator's token as the password), configured as if it were an external one.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test helpers

use std::time::Duration;

use anyhow::{Context, Result};
use ferry_shared::config::Config;
use ferry_shared::registry::RegistryClient;
use ferry_shared::shutdown;
use ferry_testkit::{free_port, unique_name, Stack, TestCa};

const SCHEMA: &str = r#"{"type":"record","name":"r","fields":[{"name":"a","type":"long"}]}"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_https_registry_with_basic_auth_is_reached_through_ca_file_and_password_file(
) -> Result<()> {
    let stack = Stack::get();
    let dir = std::env::temp_dir().join(unique_name("registry_tls"));
    std::fs::create_dir_all(&dir)?;
    let ca = TestCa::create(&dir)?;
    let listen = format!("127.0.0.1:{}", free_port());
    let mut coordinator: Config = Config::from_toml_str(&stack.config_toml(
        &unique_name("regtls"),
        "unused_s",
        "unused_t",
        "unused_r",
        &listen,
    ))
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    coordinator.coordinator.tls_cert = Some(ca.cert_file.display().to_string());
    coordinator.coordinator.tls_key = Some(ca.key_file.display().to_string());
    let token = coordinator
        .coordinator
        .token
        .clone()
        .context("the stack's configuration has a coordinator token")?;
    let (trigger, stop) = shutdown::channel();
    let task = tokio::spawn(ferry_coordinator::run(coordinator.clone(), stop));
    ferry_testkit::wait_listening(&listen, Duration::from_secs(60)).await?;

    // A service's configuration naming it as an external registry.
    let password_file = dir.join("registry.password");
    std::fs::write(&password_file, format!("{}\n", token.expose()))?;
    let config_with = |ca_file: Option<&str>| -> Result<Config> {
        let ca_line = ca_file.map_or(String::new(), |f| format!("ca_file = {f:?}\n"));
        let text = format!(
            "[migration]\nid = \"m\"\n[kafka]\nbootstrap_servers = \"127.0.0.1:9092\"\n[schema_registry]\nurl = \"https://localhost:{}\"\nusername = \"ferry\"\npassword_file = {:?}\n{ca_line}",
            listen.rsplit(':').next().unwrap_or_default(),
            password_file.display().to_string(),
        );
        Config::from_toml_str(&text).map_err(|e| anyhow::anyhow!("{e}"))
    };

    let ca_file = ca.ca_file.display().to_string();
    let client = RegistryClient::from_config(&config_with(Some(&ca_file))?)?;
    let id = client.register(&unique_name("s"), SCHEMA).await?;
    client.schema(id).await?;

    // Without the CA the registry's certificate is not trusted.
    let untrusting = RegistryClient::from_config(&config_with(None)?)?;
    let e = untrusting
        .register(&unique_name("s"), SCHEMA)
        .await
        .err()
        .context("a registry whose CA is not trusted accepted a schema")?;
    // (The converter keeps only "error sending request" of reqwest's TLS error.)
    let text = ferry_shared::process::error_chain(&e);
    assert!(text.contains("error sending request"), "{text}");

    // A CA file that cannot be used is an error naming the setting and the path.
    let missing = dir.join("missing-ca.pem").display().to_string();
    let e = RegistryClient::from_config(&config_with(Some(&missing))?)
        .err()
        .context("a missing CA file was accepted")?;
    let text = e.to_string();
    assert!(
        text.contains("schema_registry.ca_file") && text.contains(&missing),
        "{text}"
    );

    // A wrong password is refused (401), the password in no message.
    std::fs::write(&password_file, "not-the-token\n")?;
    let refused = RegistryClient::from_config(&config_with(Some(&ca_file))?)?;
    let e = refused
        .register(&unique_name("s"), SCHEMA)
        .await
        .err()
        .context("a wrong password was accepted")?;
    let text = ferry_shared::process::error_chain(&e);
    assert!(
        text.contains("401") && !text.contains("not-the-token"),
        "{text}"
    );

    trigger.trigger();
    task.await??;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
