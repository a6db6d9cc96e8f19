//! Who may use the coordinator's HTTP API, against a real coordinator on the local
//! broker: requests without the token, or with a wrong one, are answered 401 and change
//! nothing; the token passes as a bearer token or as the password of basic auth;
//! `public_read` opens reads but not writes; a token is generated into a private file
//! and reused; HTTPS with a certificate made in the test, verified through `ca_file`.

use std::path::Path;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use ferry_shared::config::Config;
use ferry_shared::registry::RegistryClient;
use ferry_shared::shutdown;
use ferry_testkit::{free_port, unique_name, Stack, TestCa};
use serde_json::{json, Value};

type Running = tokio::task::JoinHandle<Result<(), ferry_coordinator::Error>>;

/// The testkit's configuration (with its random `coordinator.token`), `extra` appended
/// to the `[coordinator]` section (it comes last).
fn config_text(migration: &str, listen: &str, extra: &str) -> String {
    let text = Stack::get().config_toml(migration, "ferry", "ferry", "ferry", listen);
    format!("{text}{extra}")
}

fn parse(text: &str) -> Result<Config> {
    Config::from_toml_str(text).map_err(|e| anyhow::anyhow!("{e}"))
}

async fn start(config: &Config) -> Result<(shutdown::ShutdownTrigger, Running)> {
    let (trigger, stop) = shutdown::channel();
    let task = tokio::spawn(ferry_coordinator::run(config.clone(), stop));
    ferry_testkit::wait_listening(&config.coordinator.listen, Duration::from_secs(90)).await?;
    Ok((trigger, task))
}

async fn stop(trigger: shutdown::ShutdownTrigger, task: Running) -> Result<()> {
    trigger.trigger();
    task.await??;
    Ok(())
}

#[derive(Clone, Copy)]
enum Auth<'a> {
    None,
    Bearer(&'a str),
    Basic(&'a str, &'a str),
}

struct Answer {
    status: u16,
    challenges: Vec<String>,
    body: Value,
}

/// One request; the body is read as JSON when it is JSON, else as a JSON string.
async fn call(
    http: &reqwest::Client,
    method: &str,
    url: &str,
    auth: Auth<'_>,
    body: Option<Value>,
) -> Result<Answer> {
    let mut request = http.request(reqwest::Method::from_bytes(method.as_bytes())?, url);
    request = match auth {
        Auth::None => request,
        Auth::Bearer(token) => request.bearer_auth(token),
        Auth::Basic(user, password) => request.basic_auth(user, Some(password)),
    };
    if let Some(body) = body {
        request = request
            .header("content-type", "application/json")
            .body(body.to_string());
    }
    let response = request
        .send()
        .await
        .with_context(|| format!("{method} {url}"))?;
    let status = response.status().as_u16();
    let challenges = response
        .headers()
        .get_all("www-authenticate")
        .iter()
        .filter_map(|v| v.to_str().ok().map(str::to_owned))
        .collect();
    let text = response.text().await?;
    let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
    Ok(Answer {
        status,
        challenges,
        body,
    })
}

/// A refusal as the API promises it: 401, both challenges, a body that says what to do.
fn assert_refused(answer: &Answer, what: &str) {
    assert_eq!(answer.status, 401, "{what}: {}", answer.body);
    assert!(
        answer.challenges.iter().any(|c| c.starts_with("Bearer "))
            && answer.challenges.iter().any(|c| c.starts_with("Basic ")),
        "{what}: WWW-Authenticate {:?}",
        answer.challenges
    );
    let message = answer.body["error"].as_str().unwrap_or_default();
    assert!(
        message.contains("coordinator token") && message.contains("FERRY_COORDINATOR__TOKEN"),
        "{what}: {}",
        answer.body
    );
    assert_eq!(answer.body["error_code"], 40101, "{what}: {}", answer.body);
}

const SCHEMA: &str = r#"{"type":"record","name":"A","fields":[{"name":"x","type":"long"}]}"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_right_token_nothing_is_read_or_changed() -> Result<()> {
    let migration = unique_name("access");
    let listen = format!("127.0.0.1:{}", free_port());
    let config = parse(&config_text(&migration, &listen, ""))?;
    let token = config
        .coordinator
        .token
        .clone()
        .context("the testkit's config has a token")?;
    let token = token.expose();
    let base = format!("http://{listen}");
    let http = reqwest::Client::new();
    let (trigger, task) = start(&config).await?;

    let health = call(&http, "GET", &format!("{base}/healthz"), Auth::None, None).await?;
    assert_eq!(health.status, 200, "probes need no token");

    let before = call(
        &http,
        "GET",
        &format!("{base}/api/status"),
        Auth::Bearer(token),
        None,
    )
    .await?;
    assert_eq!(before.status, 200, "{}", before.body);
    let topics_before = ferry_shared::kafka::list_topics(
        &config.kafka.client_config(),
        &config.migration.topic_prefix(),
    )
    .await?;
    ensure!(!topics_before.is_empty(), "the migration has its topics");

    // Reads need the token.
    for path in [
        "/api/status",
        "/api/report",
        "/metrics",
        "/status",
        "/subjects",
    ] {
        let url = format!("{base}{path}");
        assert_refused(&call(&http, "GET", &url, Auth::None, None).await?, path);
        assert_refused(
            &call(&http, "GET", &url, Auth::Bearer("wrong"), None).await?,
            path,
        );
    }
    // Writes without it, or with a wrong one, in every form.
    let wrong_forms = [
        Auth::None,
        Auth::Bearer("wrong"),
        Auth::Bearer(&token[..token.len() - 1]),
        Auth::Basic("ferry", "wrong"),
        Auth::Basic(token, ""),
    ];
    for auth in wrong_forms {
        let cutover = json!({"to": "target", "prepare_for": "fall-back"});
        let a = call(
            &http,
            "POST",
            &format!("{base}/api/cutover"),
            auth,
            Some(cutover),
        )
        .await?;
        assert_refused(&a, "POST /api/cutover");
        let end = json!({"delete_topics": true});
        let a = call(&http, "POST", &format!("{base}/api/end"), auth, Some(end)).await?;
        assert_refused(&a, "POST /api/end");
        let schema = json!({ "schema": SCHEMA });
        let url = format!("{base}/subjects/t-value/versions");
        assert_refused(
            &call(&http, "POST", &url, auth, Some(schema)).await?,
            "register",
        );
        let url = format!("{base}/config");
        let level = json!({"compatibility": "NONE"});
        assert_refused(
            &call(&http, "PUT", &url, auth, Some(level)).await?,
            "PUT /config",
        );
        let url = format!("{base}/subjects/t-value");
        assert_refused(
            &call(&http, "DELETE", &url, auth, None).await?,
            "DELETE subject",
        );
    }

    // Nothing changed: the same migration status, the topics still there, no subject,
    // the compatibility level untouched.
    let after = call(
        &http,
        "GET",
        &format!("{base}/api/status"),
        Auth::Bearer(token),
        None,
    )
    .await?;
    assert_eq!(after.body["migration"], before.body["migration"]);
    assert!(after.body["migration"]["ended_at_ms"].is_null());
    let topics_after = ferry_shared::kafka::list_topics(
        &config.kafka.client_config(),
        &config.migration.topic_prefix(),
    )
    .await?;
    assert_eq!(topics_after, topics_before);
    let subjects = call(
        &http,
        "GET",
        &format!("{base}/subjects"),
        Auth::Bearer(token),
        None,
    )
    .await?;
    assert_eq!(subjects.body, json!([]));
    let level = call(
        &http,
        "GET",
        &format!("{base}/config"),
        Auth::Bearer(token),
        None,
    )
    .await?;
    assert_eq!(level.body["compatibilityLevel"], "BACKWARD");

    // With the token: registry writes as bearer and as basic auth (what Confluent
    // clients send), and Ferry's own registry client.
    let url = format!("{base}/subjects/t-value/versions");
    let a = call(
        &http,
        "POST",
        &url,
        Auth::Basic("anyone", token),
        Some(json!({ "schema": SCHEMA })),
    )
    .await?;
    assert_eq!(a.status, 200, "{}", a.body);
    let id = a.body["id"].as_u64().context("an id")?;
    let b = call(
        &http,
        "POST",
        &url,
        Auth::Bearer(token),
        Some(json!({ "schema": SCHEMA })),
    )
    .await?;
    assert_eq!(b.body["id"].as_u64(), Some(id), "{}", b.body);
    let client = RegistryClient::from_config(&config)?;
    assert_eq!(u64::from(client.register("t-value", SCHEMA).await?), id);
    client.schema(u32::try_from(id)?).await?;
    let basic_read = call(
        &http,
        "GET",
        &format!("{base}/subjects"),
        Auth::Basic("x", token),
        None,
    )
    .await?;
    assert_eq!(basic_read.body, json!(["t-value"]));
    // A registry client without the token is refused, with what to do.
    let anonymous = RegistryClient::new(&base, None)?;
    let e = anonymous
        .register("u-value", SCHEMA)
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("401") && e.contains("coordinator.token"), "{e}");

    // The API's writes go through: the cutover reaches the state machine (refused
    // there: no snapshot yet), the end ends the migration.
    let cutover = json!({"to": "target", "prepare_for": "none"});
    let a = call(
        &http,
        "POST",
        &format!("{base}/api/cutover"),
        Auth::Bearer(token),
        Some(cutover),
    )
    .await?;
    assert_eq!(a.status, 409, "{}", a.body);
    let a = call(
        &http,
        "POST",
        &format!("{base}/api/end"),
        Auth::Bearer(token),
        Some(json!({})),
    )
    .await?;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.body["failed"], json!([]), "{}", a.body);
    let ended = call(
        &http,
        "GET",
        &format!("{base}/api/status"),
        Auth::Bearer(token),
        None,
    )
    .await?;
    assert!(
        ended.body["migration"]["ended_at_ms"].is_i64(),
        "{}",
        ended.body
    );
    // The coordinator stops by itself after an end.
    tokio::time::timeout(Duration::from_secs(30), task).await???;
    drop(trigger);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn public_read_opens_reads_but_not_writes() -> Result<()> {
    let listen = format!("127.0.0.1:{}", free_port());
    let config = parse(&config_text(
        &unique_name("public"),
        &listen,
        "public_read = true\n",
    ))?;
    let base = format!("http://{listen}");
    let http = reqwest::Client::new();
    let (trigger, task) = start(&config).await?;

    for path in [
        "/api/status",
        "/api/report",
        "/metrics",
        "/status",
        "/subjects",
        "/config",
    ] {
        let a = call(&http, "GET", &format!("{base}{path}"), Auth::None, None).await?;
        assert_eq!(a.status, 200, "GET {path}: {}", a.body);
    }
    let cutover = json!({"to": "target", "prepare_for": "none"});
    let a = call(
        &http,
        "POST",
        &format!("{base}/api/cutover"),
        Auth::None,
        Some(cutover),
    )
    .await?;
    assert_refused(&a, "POST /api/cutover");
    let a = call(
        &http,
        "POST",
        &format!("{base}/api/end"),
        Auth::None,
        Some(json!({})),
    )
    .await?;
    assert_refused(&a, "POST /api/end");
    let url = format!("{base}/subjects/t-value/versions");
    let a = call(
        &http,
        "POST",
        &url,
        Auth::None,
        Some(json!({ "schema": SCHEMA })),
    )
    .await?;
    assert_refused(&a, "register");
    let status = call(
        &http,
        "GET",
        &format!("{base}/api/status"),
        Auth::None,
        None,
    )
    .await?;
    assert!(status.body["migration"]["ended_at_ms"].is_null());
    stop(trigger, task).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_generated_token_is_private_and_reused() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("secrets").join("coordinator.token");
    let listen = format!("127.0.0.1:{}", free_port());
    // The testkit's token line removed: the coordinator has to make one.
    let text = config_text(&unique_name("gen"), &listen, "")
        .lines()
        .filter(|l| !l.starts_with("token = "))
        .collect::<Vec<_>>()
        .join("\n");
    let text = format!("{text}\ntoken_file = {:?}\n", file.display().to_string());
    let config = parse(&text)?;
    assert!(config.coordinator.token.is_none());
    let base = format!("http://{listen}");
    let http = reqwest::Client::new();

    let (trigger, task) = start(&config).await?;
    let token = read_private(&file)?;
    assert_eq!(token.len(), 64, "32 random bytes as hex");
    let a = call(
        &http,
        "GET",
        &format!("{base}/api/status"),
        Auth::Bearer(&token),
        None,
    )
    .await?;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_refused(
        &call(
            &http,
            "GET",
            &format!("{base}/api/status"),
            Auth::None,
            None,
        )
        .await?,
        "no token",
    );
    // Clients configured with the same token_file send it.
    RegistryClient::from_config(&config)?
        .register("g-value", SCHEMA)
        .await?;
    stop(trigger, task).await?;

    let (trigger, task) = start(&config).await?;
    assert_eq!(
        read_private(&file)?,
        token,
        "the second start reuses the token"
    );
    let a = call(
        &http,
        "GET",
        &format!("{base}/api/status"),
        Auth::Bearer(&token),
        None,
    )
    .await?;
    assert_eq!(a.status, 200, "{}", a.body);
    stop(trigger, task).await
}

/// The token in `file`, after checking only its owner can read it.
fn read_private(file: &Path) -> Result<String> {
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(file)?.permissions().mode() & 0o777;
    ensure!(mode == 0o600, "token file mode {mode:o}");
    Ok(std::fs::read_to_string(file)?.trim().to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_with_a_certificate_clients_verify_through_ca_file() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let ca = TestCa::create(dir.path())?;
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let extra = format!(
        "tls_cert = {:?}\ntls_key = {:?}\nca_file = {:?}\n",
        ca.cert_file.display().to_string(),
        ca.key_file.display().to_string(),
        ca.ca_file.display().to_string(),
    );
    let config = parse(&config_text(&unique_name("tls"), &listen, &extra))?;
    assert_eq!(config.coordinator.url(), format!("https://{listen}"));
    let token = config.coordinator.token.clone().context("a token")?;
    let (trigger, task) = start(&config).await?;

    // Ferry's registry client (what exporter and importer use) trusts the CA file.
    let client = RegistryClient::from_config(&config)?;
    let id = client.register("s-value", SCHEMA).await?;
    client.schema(id).await?;
    // So does any client given the CA; by the name in the certificate too.
    let pem = std::fs::read(&ca.ca_file)?;
    let trusting = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&pem)?)
        .build()?;
    for host in ["127.0.0.1", "localhost"] {
        let url = format!("https://{host}:{port}/api/status");
        let a = call(&trusting, "GET", &url, Auth::Bearer(token.expose()), None).await?;
        assert_eq!(a.status, 200, "{url}: {}", a.body);
    }
    assert_refused(
        &call(
            &trusting,
            "GET",
            &format!("https://127.0.0.1:{port}/api/status"),
            Auth::None,
            None,
        )
        .await?,
        "https without a token",
    );
    // A client that does not trust the CA does not get through, nor does plain HTTP.
    let e = reqwest::Client::new()
        .get(format!("https://127.0.0.1:{port}/healthz"))
        .send()
        .await;
    assert!(
        e.is_err(),
        "a client without the CA must refuse the certificate"
    );
    let plain = reqwest::Client::new()
        .get(format!("http://127.0.0.1:{port}/healthz"))
        .send()
        .await;
    assert!(
        !plain.is_ok_and(|r| r.status().is_success()),
        "plain HTTP must not be served on the HTTPS port"
    );
    // The server keeps serving after failed handshakes.
    let a = call(
        &trusting,
        "GET",
        &format!("https://127.0.0.1:{port}/healthz"),
        Auth::None,
        None,
    )
    .await?;
    assert_eq!(a.status, 200);
    stop(trigger, task).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_that_cannot_be_used_stops_the_start_with_the_setting() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let ca = TestCa::create(dir.path())?;
    let other = tempfile::tempdir()?;
    let other = TestCa::create(other.path())?;
    let listen = format!("127.0.0.1:{}", free_port());
    for (cert, key, setting) in [
        (
            dir.path().join("missing.pem"),
            ca.key_file.clone(),
            "coordinator.tls_cert",
        ),
        (
            ca.cert_file.clone(),
            dir.path().join("missing.key"),
            "coordinator.tls_key",
        ),
        // A key that is not the certificate's.
        (
            ca.cert_file.clone(),
            other.key_file.clone(),
            "coordinator.tls_key",
        ),
    ] {
        let extra = format!(
            "tls_cert = {:?}\ntls_key = {:?}\n",
            cert.display().to_string(),
            key.display().to_string()
        );
        let config = parse(&config_text(&unique_name("badtls"), &listen, &extra))?;
        let (_trigger, stop) = shutdown::channel();
        let e = tokio::time::timeout(
            Duration::from_secs(30),
            ferry_coordinator::run(config, stop),
        )
        .await?
        .unwrap_err()
        .to_string();
        assert!(e.contains(setting), "{e}");
    }
    Ok(())
}
