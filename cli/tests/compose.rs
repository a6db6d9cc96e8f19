//! docker-compose.yml and Dockerfile agree with the code: every FERRY_* variable is a
//! valid setting, every host:port it names is a service listening there, every Ferry
//! service runs a binary that the Dockerfile builds and the workspace declares.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test helpers

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use ferry_shared::config::{self, Config};
use serde_yaml::Value;

const REQUIRED_SERVICES: &[&str] = &[
    "kafka",
    "schema-registry",
    "source",
    "source-replica",
    "target",
    "coordinator",
    "exporter",
    "importer",
];

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn compose() -> Value {
    let text = std::fs::read_to_string(root().join("docker-compose.yml")).unwrap();
    serde_yaml::from_str(&text).unwrap()
}

fn services(compose: &Value) -> BTreeMap<String, Value> {
    compose["services"]
        .as_mapping()
        .expect("services mapping")
        .iter()
        .map(|(k, v)| (k.as_str().unwrap().to_owned(), v.clone()))
        .collect()
}

/// A service's environment, as a map whether written as a mapping or a list.
fn environment(service: &Value) -> BTreeMap<String, String> {
    let scalar = |v: &Value| match v {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        Value::Null => String::new(),
        other => panic!("environment value {other:?} is not a scalar"),
    };
    match &service["environment"] {
        Value::Mapping(map) => map
            .iter()
            .map(|(k, v)| (k.as_str().unwrap().to_owned(), scalar(v)))
            .collect(),
        Value::Sequence(list) => list
            .iter()
            .map(|item| {
                let item = item.as_str().unwrap();
                let (k, v) = item.split_once('=').unwrap_or((item, ""));
                (k.to_owned(), v.to_owned())
            })
            .collect(),
        Value::Null => BTreeMap::new(),
        other => panic!("environment {other:?} is neither a mapping nor a list"),
    }
}

/// The command's words, whether written as a list or a string.
fn command(service: &Value) -> Vec<String> {
    match &service["command"] {
        Value::Sequence(words) => words
            .iter()
            .map(|w| w.as_str().unwrap().to_owned())
            .collect(),
        Value::String(line) => line.split_whitespace().map(str::to_owned).collect(),
        _ => Vec::new(),
    }
}

/// Services that run a Ferry binary.
fn ferry_services(services: &BTreeMap<String, Value>) -> BTreeMap<String, Value> {
    services
        .iter()
        .filter(|(_, s)| {
            command(s)
                .first()
                .is_some_and(|binary| binary.starts_with("ferry"))
        })
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// The configuration a Ferry service gets: an empty file plus its FERRY_* variables.
fn ferry_config(name: &str, service: &Value) -> Config {
    let env: Vec<(String, String)> = environment(service).into_iter().collect();
    config::load_from("(no file)", "", env, &[])
        .unwrap_or_else(|e| panic!("service {name}: its FERRY_* variables are rejected:\n{e}"))
}

/// Container ports declared by `expose` and the container side of `ports`.
fn declared_ports(service: &Value) -> BTreeSet<u16> {
    let mut ports = BTreeSet::new();
    for key in ["expose", "ports"] {
        if let Some(list) = service[key].as_sequence() {
            for entry in list {
                let text = match entry {
                    Value::String(s) => s.clone(),
                    Value::Number(n) => n.to_string(),
                    other => panic!("port entry {other:?}"),
                };
                let container = text.rsplit(':').next().unwrap();
                let container = container.split('/').next().unwrap();
                ports.insert(container.parse().unwrap());
            }
        }
    }
    ports
}

/// True when the service's own configuration makes it listen on `port`.
fn listens_on(name: &str, service: &Value, port: u16) -> bool {
    let image = service["image"].as_str().unwrap_or("");
    let env = environment(service);
    let command = command(service).join(" ");
    if image.starts_with("postgres:") {
        // The postgres image listens on 5432 unless the command moves it.
        return port == 5432 && !command.contains("port=");
    }
    if image.starts_with("yugabytedb/yugabyte:") {
        // yugabyted serves YSQL on 5433 unless --ysql_port says otherwise.
        return port == 5433 && !command.contains("ysql_port");
    }
    if image.starts_with("apache/kafka:") {
        let listeners = env.get("KAFKA_LISTENERS").cloned().unwrap_or_default();
        let advertised = env
            .get("KAFKA_ADVERTISED_LISTENERS")
            .cloned()
            .unwrap_or_default();
        return listeners.contains(&format!(":{port}"))
            && advertised.contains(&format!("//{name}:{port}"));
    }
    if image.starts_with("confluentinc/cp-schema-registry:") {
        let listeners = env
            .get("SCHEMA_REGISTRY_LISTENERS")
            .cloned()
            .unwrap_or_default();
        return listeners.contains(&format!(":{port}"));
    }
    if command.starts_with("ferry-coordinator") {
        let config = ferry_config(name, service);
        return config
            .coordinator
            .listen
            .parse::<std::net::SocketAddr>()
            .is_ok_and(|addr| addr.port() == port);
    }
    false
}

/// `http://host:port/...` → (host, port).
fn url_host_port(url: &str) -> (String, u16) {
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
        .unwrap();
    let authority = rest.split('/').next().unwrap();
    let (host, port) = authority
        .rsplit_once(':')
        .unwrap_or_else(|| panic!("{url} names no port"));
    (host.to_owned(), port.parse().unwrap())
}

#[test]
fn required_services_exist() {
    let services = services(&compose());
    for name in REQUIRED_SERVICES {
        assert!(services.contains_key(*name), "service {name} is missing");
    }
    for name in ["source", "source-replica"] {
        let command = command(&services[name]).join(" ");
        assert!(
            command.contains("wal_level=logical"),
            "{name} must run with wal_level=logical: {command}"
        );
    }
}

#[test]
fn importer_runs_several_replicas() {
    let services = services(&compose());
    let replicas = services["importer"]["deploy"]["replicas"]
        .as_u64()
        .expect("importer deploy.replicas");
    assert!(replicas >= 2, "importer has {replicas} replicas");
    assert!(
        services["importer"]["container_name"].is_null(),
        "a fixed container_name prevents replicas"
    );
}

#[test]
fn ferry_services_are_configured_by_valid_ferry_variables() {
    let services = services(&compose());
    let ferry = ferry_services(&services);
    for name in ["coordinator", "exporter", "importer"] {
        assert!(
            ferry.contains_key(name),
            "{name} does not run a ferry binary"
        );
    }
    for (name, service) in &ferry {
        let env = environment(service);
        assert!(
            env.keys().any(|k| k.starts_with("FERRY_")),
            "{name} has no FERRY_* variables"
        );
        let config = ferry_config(name, service);
        assert_eq!(config.migration.id, "demo");
    }
    // The exporter reads the source; the importer writes the target.
    ferry_config("exporter", &services["exporter"])
        .require_source()
        .unwrap();
    let target = ferry_config("importer", &services["importer"]);
    assert_eq!(
        target.require_target().unwrap().engine,
        config::Engine::Yugabytedb
    );
}

#[test]
fn hosts_and_ports_in_ferry_variables_name_listening_services() {
    let services = services(&compose());
    for (name, service) in ferry_services(&services) {
        let config = ferry_config(&name, &service);
        let mut endpoints: Vec<(String, String, u16)> = Vec::new();
        for (setting, db) in [
            ("source", &config.source),
            ("target", &config.target),
            ("source_replica", &config.source_replica),
        ] {
            if let Some(db) = db {
                endpoints.push((setting.to_owned(), db.host.clone(), db.port()));
            }
        }
        for server in config.kafka.bootstrap_servers.split(',') {
            let (host, port) = server.trim().rsplit_once(':').unwrap();
            endpoints.push((
                "kafka.bootstrap_servers".to_owned(),
                host.to_owned(),
                port.parse().unwrap(),
            ));
        }
        let (host, port) = url_host_port(&config.registry_url());
        endpoints.push(("schema_registry.url".to_owned(), host, port));
        let (host, port) = url_host_port(&config.coordinator.url());
        endpoints.push(("coordinator.url".to_owned(), host, port));

        for (setting, host, port) in endpoints {
            let Some(peer) = services.get(&host) else {
                panic!("{name}: {setting} names host {host:?}, which is no service");
            };
            assert!(
                declared_ports(peer).contains(&port),
                "{name}: {setting} uses {host}:{port}, but service {host} does not expose {port}"
            );
            assert!(
                listens_on(&host, peer, port),
                "{name}: {setting} uses {host}:{port}, but service {host} does not listen on {port}"
            );
        }
    }
}

#[test]
fn ferry_services_run_binaries_the_dockerfile_builds() {
    let services = services(&compose());
    let dockerfile = std::fs::read_to_string(root().join("Dockerfile")).unwrap();
    let built: BTreeSet<String> = dockerfile
        .split_whitespace()
        .collect::<Vec<_>>()
        .windows(2)
        .filter(|w| w[0] == "--bin")
        .map(|w| w[1].to_owned())
        .collect();
    assert!(dockerfile.contains("cargo build --release --locked"));

    let workspace: toml::Table = std::fs::read_to_string(root().join("Cargo.toml"))
        .unwrap()
        .parse()
        .unwrap();
    let mut declared = BTreeSet::new();
    for member in workspace["workspace"]["members"].as_array().unwrap() {
        let manifest = root().join(member.as_str().unwrap()).join("Cargo.toml");
        let manifest: toml::Table = std::fs::read_to_string(manifest).unwrap().parse().unwrap();
        for bin in manifest
            .get("bin")
            .and_then(|b| b.as_array())
            .into_iter()
            .flatten()
        {
            declared.insert(bin["name"].as_str().unwrap().to_owned());
        }
    }

    for binary in &built {
        assert!(
            declared.contains(binary),
            "Dockerfile builds {binary}, which no [[bin]] declares"
        );
        assert!(
            dockerfile.contains(&format!("target/release/{binary}")),
            "Dockerfile builds {binary} but does not copy it into the image"
        );
    }
    for (name, service) in ferry_services(&services) {
        let binary = command(&service).remove(0);
        assert!(
            built.contains(&binary),
            "{name} runs {binary}, which the Dockerfile does not build ({built:?})"
        );
        assert!(
            declared.contains(&binary),
            "{name} runs {binary}, which no [[bin]] declares"
        );
        assert!(
            service["image"].as_str() == Some("ferry:dev") || !service["build"].is_null(),
            "{name} must use the image built from the Dockerfile"
        );
    }
    assert!(
        built.contains("ferry"),
        "the image must also hold the ferry CLI"
    );
}

#[test]
fn the_coordinator_is_published_on_localhost_only_and_every_service_has_its_token() {
    let services = services(&compose());
    for (name, service) in &services {
        for entry in service["ports"].as_sequence().into_iter().flatten() {
            let text = entry.as_str().unwrap_or_default();
            if text.ends_with(":8472") || text.ends_with(":8472/tcp") {
                assert!(
                    text.starts_with("127.0.0.1:"),
                    "{name} publishes the coordinator's API on every interface: {text}"
                );
            }
        }
    }
    let coordinator_volume = |service: &Value, read_only: bool| {
        service["volumes"]
            .as_sequence()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .any(|v| {
                v.starts_with("coordinator-token:/run/ferry") && v.ends_with(":ro") == read_only
            })
    };
    for (name, service) in ferry_services(&services) {
        let config = ferry_config(&name, &service);
        let c = &config.coordinator;
        let file = c
            .token_file
            .as_deref()
            .unwrap_or_else(|| panic!("{name}: no coordinator.token_file"));
        assert!(file.starts_with("/run/ferry/"), "{name}: {file}");
        assert!(c.token.is_none(), "{name}: a token in the compose file");
        // The coordinator writes the token; the others only read it.
        assert!(
            coordinator_volume(&service, name != "coordinator"),
            "{name} must mount the coordinator-token volume at /run/ferry{}",
            if name == "coordinator" {
                ""
            } else {
                " read-only"
            }
        );
    }
    let dockerfile = std::fs::read_to_string(root().join("Dockerfile")).unwrap();
    assert!(
        dockerfile.contains("install -d -o ferry -g ferry -m 0700 /run/ferry"),
        "the image must give the services' user /run/ferry, or a fresh volume is root's"
    );
}
