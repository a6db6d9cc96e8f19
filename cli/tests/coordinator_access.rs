//! The operator's side of the coordinator's access control, through the real `ferry`
//! binary: the CLI sends the token from the config, the environment or the token file;
//! without it (or with a wrong one) it is refused with what to do and nothing changes;
//! `ferry coordinator` generates a private token file and logs its path, never the
//! token; over HTTPS the CLI verifies the certificate with `coordinator.ca_file`; and
//! the token never shows in `ferry config check` or in the configuration's Debug.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test helpers

use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use ferry_testkit::{free_port, unique_name, Stack, TestCa};

/// `ferry --config <config> <args>` in `dir`, with no FERRY_* variables but `env`.
fn ferry(dir: &Path, config: &Path, env: &[(&str, &str)], args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_ferry"));
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("FERRY_") {
            command.env_remove(name);
        }
    }
    command
        .current_dir(dir)
        .envs(env.iter().copied())
        .arg("--config")
        .arg(config)
        .args(args);
    command
}

fn run(dir: &Path, config: &Path, env: &[(&str, &str)], args: &[&str]) -> Output {
    ferry(dir, config, env, args).output().unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A child process killed when dropped.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `ferry coordinator` in `dir`, its log in `log`.
async fn coordinator(dir: &Path, config: &Path, listen: &str, log: &Path) -> KillOnDrop {
    let child = KillOnDrop(
        ferry(dir, config, &[], &["coordinator"])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(log).unwrap())
            .spawn()
            .unwrap(),
    );
    if let Err(e) = ferry_testkit::wait_listening(listen, Duration::from_secs(90)).await {
        panic!(
            "the coordinator did not start: {e:#}\n{}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
    }
    child
}

/// The testkit's configuration without its `token = ...` line, `extra` appended to the
/// `[coordinator]` section.
fn config_without_token(migration: &str, listen: &str, extra: &str) -> String {
    let text = Stack::get().config_toml(migration, "ferry", "ferry", "ferry", listen);
    let kept: Vec<&str> = text
        .lines()
        .filter(|l| !l.starts_with("token = "))
        .collect();
    format!("{}\n{extra}", kept.join("\n"))
}

#[tokio::test(flavor = "multi_thread")]
async fn the_cli_reads_a_generated_token_file_and_is_refused_without_it() {
    let dir = tempfile::tempdir().unwrap();
    let listen = format!("127.0.0.1:{}", free_port());
    let migration = unique_name("cliacc");
    // No token configured: `ferry coordinator` generates ./ferry-coordinator.token in
    // its working directory, and the CLI run in the same directory finds it.
    let config = dir.path().join("ferry.toml");
    std::fs::write(&config, config_without_token(&migration, &listen, "")).unwrap();
    let log = dir.path().join("coordinator.log");
    let server = coordinator(dir.path(), &config, &listen, &log).await;
    let file = dir.path().join("ferry-coordinator.token");
    let token = std::fs::read_to_string(&file).unwrap().trim().to_owned();
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "token file mode {mode:o}");
    }
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(
        logged.contains("ferry-coordinator.token") && logged.contains("generated"),
        "the log names the token file: {logged}"
    );
    assert!(
        !logged.contains(&token),
        "the log shows the token: {logged}"
    );

    let out = run(dir.path(), &config, &[], &["cutover", "status"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains(&format!("migration {migration}")));

    // Elsewhere (no token file there) the CLI is refused, with what to do.
    let elsewhere = tempfile::tempdir().unwrap();
    for (env, what) in [
        (vec![], "no token"),
        (vec![("FERRY_COORDINATOR__TOKEN", "wrong")], "a wrong token"),
    ] {
        let out = run(elsewhere.path(), &config, &env, &["cutover", "status"]);
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{what}: {stderr}");
        assert!(
            stderr.contains("missing or wrong coordinator token")
                && stderr.contains("FERRY_COORDINATOR__TOKEN"),
            "{what}: {stderr}"
        );
        let out = run(
            elsewhere.path(),
            &config,
            &env,
            &["initiate", "cutover", "to", "target"],
        );
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{what}: {stderr}");
        assert!(
            stderr.contains("missing or wrong coordinator token"),
            "{what}: {stderr}"
        );
        let out = run(
            elsewhere.path(),
            &config,
            &env,
            &["end", "migration", "--delete-topics"],
        );
        assert_eq!(out.status.code(), Some(1), "{what}: {}", text(&out.stderr));
    }
    // ... and with the token from the environment it gets through.
    let out = run(
        elsewhere.path(),
        &config,
        &[("FERRY_COORDINATOR__TOKEN", &token)],
        &["cutover", "status"],
    );
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{}", text(&out.stderr));
    // Nothing was changed by the refused requests.
    assert!(
        stdout.contains("cutover to target: NOT_INITIATED") && !stdout.contains("ended at"),
        "{stdout}"
    );

    // Restarted, the coordinator reuses the file's token.
    drop(server);
    let log = dir.path().join("coordinator-2.log");
    let _server = coordinator(dir.path(), &config, &listen, &log).await;
    assert_eq!(std::fs::read_to_string(&file).unwrap().trim(), token);
    let out = run(
        elsewhere.path(),
        &config,
        &[("FERRY_COORDINATOR__TOKEN", &token)],
        &["cutover", "status"],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
}

#[tokio::test(flavor = "multi_thread")]
async fn the_cli_verifies_the_coordinators_certificate_with_ca_file() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::create(dir.path()).unwrap();
    let listen = format!("127.0.0.1:{}", free_port());
    let migration = unique_name("clitls");
    let token = ferry_testkit::coordinator_token();
    let tls = format!(
        "token = {token:?}\ntls_cert = {:?}\ntls_key = {:?}\n",
        ca.cert_file.display().to_string(),
        ca.key_file.display().to_string(),
    );
    let server_config = dir.path().join("server.toml");
    std::fs::write(
        &server_config,
        config_without_token(&migration, &listen, &tls),
    )
    .unwrap();
    let log = dir.path().join("coordinator.log");
    let _server = coordinator(dir.path(), &server_config, &listen, &log).await;

    // The CLI with the CA file: verified, and the token goes with it.
    let with_ca = format!("{tls}ca_file = {:?}\n", ca.ca_file.display().to_string());
    let client_config = dir.path().join("client.toml");
    std::fs::write(
        &client_config,
        config_without_token(&migration, &listen, &with_ca),
    )
    .unwrap();
    let out = run(dir.path(), &client_config, &[], &["cutover", "status"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains(&format!("migration {migration}")));
    let out = run(
        dir.path(),
        &client_config,
        &[],
        &["get", "data-migration-report"],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));

    // Without the CA file the certificate is not trusted: the error says which setting.
    let out = run(dir.path(), &server_config, &[], &["cutover", "status"]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("https://{listen}")) && stderr.contains("coordinator.ca_file"),
        "{stderr}"
    );
}

#[test]
fn the_token_never_shows_in_config_check_or_debug() {
    let dir = tempfile::tempdir().unwrap();
    let token = "tok-5ecret-never-printed";
    let base = r#"
[migration]
id = "demo"
[kafka]
bootstrap_servers = "127.0.0.1:9092"
[coordinator]
"#;
    let config = dir.path().join("ferry.toml");
    std::fs::write(&config, format!("{base}token = \"{token}\"\n")).unwrap();
    let out = run(dir.path(), &config, &[], &["config", "check"]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(stdout.contains("token = \"***\""), "{stdout}");
    assert!(!stdout.contains(token) && !text(&out.stderr).contains(token));

    // From the environment, and in an error (token and token_file both set).
    let empty = dir.path().join("empty.toml");
    std::fs::write(&empty, base).unwrap();
    let env = [("FERRY_COORDINATOR__TOKEN", token)];
    let out = run(dir.path(), &empty, &env, &["config", "check"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(!text(&out.stdout).contains(token));
    let both = dir.path().join("both.toml");
    std::fs::write(&both, format!("{base}token_file = \"t\"\n")).unwrap();
    let out = run(dir.path(), &both, &env, &["config", "check"]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("coordinator.token") && stderr.contains("keep one"),
        "{stderr}"
    );
    assert!(!stderr.contains(token) && !text(&out.stdout).contains(token));

    let parsed =
        ferry_shared::config::Config::from_toml_str(&format!("{base}token = \"{token}\"\n"))
            .unwrap();
    assert_eq!(parsed.coordinator.token.as_ref().unwrap().expose(), token);
    assert!(!format!("{parsed:?}").contains(token));
    assert!(!format!("{parsed:#?}").contains(token));
    assert!(!parsed.to_masked_toml().contains(token));
}
