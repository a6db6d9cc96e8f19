//! deploy/kubernetes agrees with Kubernetes and with the code, offline:
//!
//! - every manifest validates against the Kubernetes schemas (`kubernetes-validate
//!   --strict`, installed by scripts/install-deps), and a broken copy does not;
//! - every Ferry container runs a binary the Dockerfile builds, with arguments that
//!   binary accepts, and gets only FERRY_* settings the configuration accepts (its
//!   ConfigMap, its Secret references, its own variables), as the compose test does;
//! - the shape the design asks for: one coordinator, one exporter per stream (never two
//!   at once), importers that scale, probes on the health endpoints each process serves.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test helpers

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use ferry_shared::config::{self, Config};
use serde::Deserialize;
use serde_yaml::Value;

/// The Kubernetes version the manifests are validated against.
const KUBERNETES_VERSION: &str = "1.33.0";

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn manifest_files() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(root().join("deploy/kubernetes"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    assert!(files.len() >= 5, "manifests missing: {files:?}");
    files
}

/// Every document of every manifest file, with the file it came from.
fn documents() -> Vec<(String, Value)> {
    let mut out = Vec::new();
    for file in manifest_files() {
        let text = std::fs::read_to_string(&file).unwrap();
        for doc in serde_yaml::Deserializer::from_str(&text) {
            let value = Value::deserialize(doc).unwrap();
            if !value.is_null() {
                out.push((
                    file.file_name().unwrap().to_string_lossy().into_owned(),
                    value,
                ));
            }
        }
    }
    out
}

fn kind_docs<'a>(docs: &'a [(String, Value)], kind: &str) -> Vec<&'a Value> {
    docs.iter()
        .filter(|(_, d)| d["kind"].as_str() == Some(kind))
        .map(|(_, d)| d)
        .collect()
}

fn name(doc: &Value) -> String {
    doc["metadata"]["name"].as_str().unwrap().to_owned()
}

fn string_map(v: &Value) -> BTreeMap<String, String> {
    v.as_mapping()
        .map(|m| {
            m.iter()
                .map(|(k, v)| {
                    let v = match v {
                        Value::String(s) => s.clone(),
                        other => panic!("{k:?}: value {other:?} must be a string"),
                    };
                    (k.as_str().unwrap().to_owned(), v)
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The `kubernetes-validate` command: from the environment, the venv scripts/install-deps
/// makes, or PATH.
fn validator() -> PathBuf {
    if let Ok(path) = std::env::var("FERRY_KUBERNETES_VALIDATE") {
        return PathBuf::from(path);
    }
    let venv = root().join(".ferry-tools/venv/bin/kubernetes-validate");
    if venv.exists() {
        return venv;
    }
    PathBuf::from("kubernetes-validate")
}

fn validate(files: &[PathBuf]) -> std::process::Output {
    let validator = validator();
    Command::new(&validator)
        .args(["--strict", "--kubernetes-version", KUBERNETES_VERSION])
        .args(files)
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run {} ({e}): run scripts/install-deps, which installs kubernetes-validate into .ferry-tools/venv",
                validator.display()
            )
        })
}

#[test]
fn manifests_validate_against_the_kubernetes_schemas() {
    let files = manifest_files();
    let out = validate(&files);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "kubernetes-validate failed:\n{text}");
    // Every resource was checked, none skipped for an unknown kind or version.
    let resources = documents().len();
    assert_eq!(
        text.matches(" passed for resource ").count(),
        resources,
        "{text}"
    );

    // The check can fail: a container port without containerPort is refused.
    let broken = tempfile::tempdir().unwrap();
    let copy = broken.path().join("broken.yaml");
    let text = std::fs::read_to_string(root().join("deploy/kubernetes/20-coordinator.yaml"))
        .unwrap()
        .replacen("containerPort", "containerPorts", 1);
    std::fs::write(&copy, text).unwrap();
    let out = validate(&[copy]);
    assert!(
        !out.status.success(),
        "a broken manifest passed: {}",
        String::from_utf8_lossy(&out.stdout)
    );
}

struct Container {
    deployment: String,
    replicas: u64,
    strategy: String,
    command: Vec<String>,
    env: Vec<(String, String)>,
    ports: BTreeMap<String, u16>,
    probes: Vec<(String, Value)>,
    /// Files the container sees: mount path + key → the key exists in its source.
    files: Vec<String>,
}

fn containers(docs: &[(String, Value)]) -> Vec<Container> {
    let config_maps: BTreeMap<String, BTreeMap<String, String>> = kind_docs(docs, "ConfigMap")
        .into_iter()
        .map(|d| (name(d), string_map(&d["data"])))
        .collect();
    let secrets: BTreeMap<String, BTreeMap<String, String>> = kind_docs(docs, "Secret")
        .into_iter()
        .map(|d| (name(d), string_map(&d["stringData"])))
        .collect();
    let mut out = Vec::new();
    for d in kind_docs(docs, "Deployment") {
        let deployment = name(d);
        let spec = &d["spec"];
        for c in spec["template"]["spec"]["containers"]
            .as_sequence()
            .unwrap()
        {
            let mut env = Vec::new();
            for from in c["envFrom"].as_sequence().into_iter().flatten() {
                let map = from["configMapRef"]["name"].as_str().unwrap_or_else(|| {
                    panic!("{deployment}: envFrom other than a ConfigMap: {from:?}")
                });
                let data = config_maps
                    .get(map)
                    .unwrap_or_else(|| panic!("{deployment}: no ConfigMap {map}"));
                env.extend(data.iter().map(|(k, v)| (k.clone(), v.clone())));
            }
            for var in c["env"].as_sequence().into_iter().flatten() {
                let key = var["name"].as_str().unwrap().to_owned();
                let value = if let Some(v) = var["value"].as_str() {
                    v.to_owned()
                } else if let Some(r) = var["valueFrom"]["secretKeyRef"].as_mapping() {
                    let secret = r[&Value::from("name")].as_str().unwrap();
                    let item = r[&Value::from("key")].as_str().unwrap();
                    secrets
                        .get(secret)
                        .and_then(|s| s.get(item))
                        .unwrap_or_else(|| {
                            panic!("{deployment}: {key} refers to {secret}/{item}, which no Secret here has")
                        })
                        .clone()
                } else {
                    panic!("{deployment}: {key} has neither a value nor a secretKeyRef")
                };
                env.push((key, value));
            }
            let ports = c["ports"]
                .as_sequence()
                .into_iter()
                .flatten()
                .map(|p| {
                    (
                        p["name"].as_str().unwrap_or_default().to_owned(),
                        p["containerPort"].as_u64().unwrap() as u16,
                    )
                })
                .collect();
            // Files from ConfigMap and Secret volumes: <mountPath>/<key>.
            let volumes = &spec["template"]["spec"]["volumes"];
            let mut files = Vec::new();
            for m in c["volumeMounts"].as_sequence().into_iter().flatten() {
                let volume = volumes
                    .as_sequence()
                    .into_iter()
                    .flatten()
                    .find(|v| v["name"] == m["name"])
                    .unwrap_or_else(|| panic!("{deployment}: mount of an undeclared volume {m:?}"));
                let keys: Vec<String> = if let Some(cm) = volume["configMap"]["name"].as_str() {
                    config_maps
                        .get(cm)
                        .unwrap_or_else(|| panic!("{deployment}: no ConfigMap {cm}"))
                        .keys()
                        .cloned()
                        .collect()
                } else if let Some(secret) = volume["secret"]["secretName"].as_str() {
                    secrets
                        .get(secret)
                        .unwrap_or_else(|| panic!("{deployment}: no Secret {secret}"))
                        .keys()
                        .cloned()
                        .collect()
                } else {
                    Vec::new()
                };
                let dir = m["mountPath"].as_str().unwrap().trim_end_matches('/');
                files.extend(keys.iter().map(|k| format!("{dir}/{k}")));
            }
            let probes = ["startupProbe", "livenessProbe", "readinessProbe"]
                .iter()
                .filter(|p| !c[**p].is_null())
                .map(|p| ((*p).to_owned(), c[*p].clone()))
                .collect();
            out.push(Container {
                deployment: deployment.clone(),
                replicas: spec["replicas"].as_u64().unwrap_or(1),
                strategy: spec["strategy"]["type"]
                    .as_str()
                    .unwrap_or("RollingUpdate")
                    .to_owned(),
                command: c["command"]
                    .as_sequence()
                    .unwrap()
                    .iter()
                    .map(|w| w.as_str().unwrap().to_owned())
                    .collect(),
                env,
                ports,
                probes,
                files,
            });
        }
    }
    out
}

fn ferry_config(c: &Container) -> Config {
    config::load_from("(no file)", "", c.env.clone(), &[])
        .unwrap_or_else(|e| panic!("{}: its FERRY_* variables are rejected:\n{e}", c.deployment))
}

/// A Ferry binary built next to this test (cargo builds the workspace's binaries for
/// its tests).
fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().unwrap().parent().unwrap();
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is not built: run `cargo build --bins` (the whole test suite builds it)",
        path.display()
    );
    path
}

#[test]
fn ferry_containers_run_built_binaries_with_accepted_arguments_and_settings() {
    let docs = documents();
    let dockerfile = std::fs::read_to_string(root().join("Dockerfile")).unwrap();
    let all = containers(&docs);
    assert!(!all.is_empty());
    for c in &all {
        let bin = &c.command[0];
        assert!(
            dockerfile.contains(&format!("--bin {bin}")),
            "{}: runs {bin}, which the Dockerfile does not build",
            c.deployment
        );
        // The binary accepts the arguments (clap checks them before printing help).
        let out = Command::new(binary(bin))
            .args(&c.command[1..])
            .arg("--help")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}: {} refuses its arguments: {}",
            c.deployment,
            c.command.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
        let config = ferry_config(c);
        assert_eq!(config.migration.id, "prod1", "{}", c.deployment);
        for (key, _) in &c.env {
            assert!(
                key.starts_with("FERRY_"),
                "{}: {key} is not a Ferry setting",
                c.deployment
            );
        }
        // Every file a setting names is in a volume the container mounts.
        for (key, value) in &c.env {
            if key.ends_with("SSLROOTCERT") || key.ends_with("_FILE") {
                assert!(
                    c.files.contains(value),
                    "{}: {key} = {value}, which no mounted ConfigMap or Secret provides ({:?})",
                    c.deployment,
                    c.files
                );
            }
        }
        // Passwords and the token come from the Secret, never from the ConfigMap.
        for key in [
            "FERRY_SOURCE__PASSWORD",
            "FERRY_TARGET__PASSWORD",
            "FERRY_SOURCE_REPLICA__PASSWORD",
            "FERRY_COORDINATOR__TOKEN",
        ] {
            assert!(
                c.env.iter().filter(|(k, _)| k == key).count() == 1,
                "{}: {key} must be set once, from the Secret",
                c.deployment
            );
        }
        for cm in kind_docs(&docs, "ConfigMap") {
            for key in string_map(&cm["data"]).keys() {
                assert!(
                    !key.contains("PASSWORD") && !key.contains("TOKEN"),
                    "ConfigMap {} holds a secret: {key}",
                    name(cm)
                );
            }
        }
    }
}

#[test]
fn one_coordinator_one_exporter_per_stream_importers_that_scale() {
    let all = containers(&documents());
    let runs =
        |bin: &str| -> Vec<&Container> { all.iter().filter(|c| c.command[0] == bin).collect() };
    let coordinators = runs("ferry-coordinator");
    assert_eq!(coordinators.len(), 1);
    assert_eq!(coordinators[0].replicas, 1);
    assert_eq!(coordinators[0].strategy, "Recreate");

    let exporters = runs("ferry-exporter");
    let mut streams: Vec<String> = exporters
        .iter()
        .map(|c| {
            assert_eq!(c.replicas, 1, "{}: one exporter per stream", c.deployment);
            assert_eq!(
                c.strategy, "Recreate",
                "{}: a rolling update would run two exporters of one stream",
                c.deployment
            );
            c.command
                .windows(2)
                .find(|w| w[0] == "--stream")
                .map_or("source".to_owned(), |w| w[1].clone())
        })
        .collect();
    streams.sort();
    assert_eq!(streams, ["source", "target"]);

    let importers = runs("ferry-importer");
    let target = importers
        .iter()
        .find(|c| {
            c.command
                .windows(2)
                .any(|w| w == ["--destination", "target"])
        })
        .expect("an importer Deployment of the target");
    assert!(
        target.replicas >= 2,
        "target importers: {}",
        target.replicas
    );
    for destination in ["source-replica", "source"] {
        assert!(
            importers.iter().any(|c| c
                .command
                .windows(2)
                .any(|w| w == ["--destination", destination])),
            "no importer of the {destination}"
        );
    }

    // The coordinator's Service reaches the port it listens on, and the services are
    // told that address.
    let docs = documents();
    let service = kind_docs(&docs, "Service")
        .into_iter()
        .find(|s| name(s) == "ferry-coordinator")
        .expect("a Service for the coordinator");
    let listen: std::net::SocketAddr = ferry_config(coordinators[0])
        .coordinator
        .listen
        .parse()
        .unwrap();
    let port = &service["spec"]["ports"][0];
    assert_eq!(
        coordinators[0]
            .ports
            .get(port["targetPort"].as_str().unwrap()),
        Some(&listen.port())
    );
    let url = ferry_config(target).coordinator.url();
    assert!(
        url.contains(&format!(
            "{}.ferry.svc.cluster.local:{}",
            name(service),
            port["port"].as_u64().unwrap()
        )),
        "{url}"
    );
}

#[test]
fn probes_ask_the_health_endpoint_each_process_serves() {
    for c in containers(&documents()) {
        let config = ferry_config(&c);
        let listen = match c.command[0].as_str() {
            "ferry-coordinator" => Some(config.coordinator.listen.clone()),
            "ferry-exporter" => config.exporter.health_listen.clone(),
            "ferry-importer" => config.importer.health_listen.clone(),
            other => panic!("{}: unexpected binary {other}", c.deployment),
        };
        let listen: std::net::SocketAddr = listen
            .unwrap_or_else(|| panic!("{}: no health endpoint is configured", c.deployment))
            .parse()
            .unwrap();
        assert!(
            listen.ip().is_unspecified(),
            "{}: {listen} is not reachable by the kubelet",
            c.deployment
        );
        assert_eq!(
            c.probes.len(),
            3,
            "{}: startup, liveness, readiness",
            c.deployment
        );
        for (kind, probe) in &c.probes {
            let get = &probe["httpGet"];
            assert_eq!(
                get["path"].as_str(),
                Some("/healthz"),
                "{} {kind}",
                c.deployment
            );
            let port = match &get["port"] {
                Value::String(name) => *c
                    .ports
                    .get(name)
                    .unwrap_or_else(|| panic!("{} {kind}: no port named {name}", c.deployment)),
                Value::Number(n) => n.as_u64().unwrap() as u16,
                other => panic!("{} {kind}: port {other:?}", c.deployment),
            };
            assert_eq!(port, listen.port(), "{} {kind}", c.deployment);
        }
    }
}

/// The probes' endpoint is real: an importer binary started with `health_listen`
/// answers `/healthz` while it runs (here, while it waits for a broker that is not
/// there: the probe is about the process, not its peers).
#[test]
fn a_process_started_as_the_manifests_start_it_answers_its_probe() {
    let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = probe.local_addr().unwrap();
    drop(probe);
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_addr = dead.local_addr().unwrap();
    drop(dead);
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(binary("ferry-importer"))
        .args(["--destination", "target"])
        .current_dir(dir.path())
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("FERRY_MIGRATION__ID", "probe")
        .env("FERRY_TARGET__HOST", "127.0.0.1")
        .env("FERRY_TARGET__PORT", dead_addr.port().to_string())
        .env("FERRY_TARGET__USER", "nobody")
        .env("FERRY_TARGET__PASSWORD", "nothing")
        .env("FERRY_TARGET__DATABASE", "nothing")
        .env("FERRY_KAFKA__BOOTSTRAP_SERVERS", dead_addr.to_string())
        .env("FERRY_IMPORTER__HEALTH_LISTEN", addr.to_string())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let answer = loop {
        if let Ok(mut s) = std::net::TcpStream::connect(addr) {
            use std::io::{Read, Write};
            s.write_all(b"GET /healthz HTTP/1.1\r\nhost: probe\r\n\r\n")
                .unwrap();
            let mut out = String::new();
            s.read_to_string(&mut out).unwrap();
            break out;
        }
        if let Ok(Some(status)) = child.try_wait() {
            let mut err = String::new();
            use std::io::Read;
            child.stderr.take().unwrap().read_to_string(&mut err).ok();
            panic!("the importer exited ({status}) before serving /healthz: {err}");
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no /healthz on {addr} within 20 s"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    child.kill().ok();
    child.wait().ok();
    assert!(answer.starts_with("HTTP/1.1 200 OK"), "{answer}");
}
