//! `ferry config check` on good and bad configurations, through the real binary.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test helpers

use std::path::Path;
use std::process::{Command, Output};

const GOOD: &str = r#"
[migration]
id = "demo"
[source]
host = "db"
user = "ferry"
password = "s3cret-pw"
database = "app"
[kafka]
bootstrap_servers = "127.0.0.1:9092"
sasl_password = "kafka-s3cret"
"#;

/// Runs `ferry --config <file> config check` with no FERRY_* variables but `env`.
fn check(config_text: &str, env: &[(&str, &str)], args: &[&str]) -> Output {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ferry.toml");
    std::fs::write(&path, config_text).unwrap();
    run(&path, env, args)
}

fn run(path: &Path, env: &[(&str, &str)], args: &[&str]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_ferry"));
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("FERRY_") {
            command.env_remove(name);
        }
    }
    command.envs(env.iter().copied());
    command
        .arg("--config")
        .arg(path)
        .args(args)
        .args(["config", "check"]);
    command.output().unwrap()
}

fn stderr_lines(output: &Output) -> Vec<String> {
    String::from_utf8_lossy(&output.stderr)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(str::to_owned)
        .collect()
}

#[test]
fn unknown_key_is_one_clear_error() {
    let text = GOOD.replace("database = \"app\"", "database = \"app\"\npasword = \"x\"");
    let output = check(&text, &[], &[]);
    assert_eq!(output.status.code(), Some(2));
    let lines = stderr_lines(&output);
    assert_eq!(lines.len(), 1, "{lines:#?}");
    assert!(
        lines[0].starts_with("error: unknown setting \"source.pasword\" in ")
            && lines[0].contains("remove it or check the spelling (known keys: engine, host"),
        "{lines:#?}"
    );
    assert!(output.stdout.is_empty());
}

#[test]
fn unknown_key_from_environment_names_the_variable() {
    let output = check(GOOD, &[("FERRY_SOURCE__HOTS", "db2")], &[]);
    assert_eq!(output.status.code(), Some(2));
    let lines = stderr_lines(&output);
    assert_eq!(lines.len(), 1, "{lines:#?}");
    assert!(
        lines[0].contains("\"source.hots\" from environment variable FERRY_SOURCE__HOTS"),
        "{lines:#?}"
    );
}

#[test]
fn missing_password_is_one_clear_error() {
    let text = GOOD.replace("password = \"s3cret-pw\"\n", "");
    let output = check(&text, &[], &[]);
    assert_eq!(output.status.code(), Some(2));
    let lines = stderr_lines(&output);
    assert_eq!(
        lines,
        vec![
            "error: setting \"source.password\" is missing: set it in ferry.toml or FERRY_SOURCE__PASSWORD"
                .replace("ferry.toml", &path_in(&output, "ferry.toml"))
        ]
    );
}

/// The config file name as the binary printed it (a temporary path).
fn path_in(output: &Output, file: &str) -> String {
    let text = String::from_utf8_lossy(&output.stderr);
    text.split_whitespace()
        .find(|w| w.ends_with(file))
        .unwrap_or(file)
        .to_owned()
}

#[test]
fn invalid_enum_value_lists_the_choices() {
    let text = GOOD.replace(
        "id = \"demo\"",
        "id = \"demo\"\nworkflow = \"fall-sideways\"",
    );
    let output = check(&text, &[], &[]);
    assert_eq!(output.status.code(), Some(2));
    assert_eq!(
        stderr_lines(&output),
        vec![
            "error: setting \"migration.workflow\" = \"fall-sideways\" is invalid: use one of live, fall-forward, fall-back"
        ]
    );
}

#[test]
fn flag_errors_name_the_flag() {
    let output = check(GOOD, &[], &["--set", "migration.partitions=0"]);
    assert_eq!(output.status.code(), Some(2));
    assert_eq!(
        stderr_lines(&output),
        vec![
            "error: setting \"migration.partitions\" (from --set migration.partitions) = 0 is out of range: use a value from 1 to 1024"
        ]
    );
}

#[test]
fn good_config_prints_effective_config_with_secrets_masked() {
    let output = check(
        GOOD,
        &[
            ("FERRY_SOURCE__PORT", "6543"),
            ("FERRY_SOURCE__PASSWORD", "env-s3cret"),
        ],
        &["--set", "importer.workers=8"],
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "{stderr}");
    for secret in ["s3cret-pw", "kafka-s3cret", "env-s3cret"] {
        assert!(
            !stdout.contains(secret) && !stderr.contains(secret),
            "{stdout}{stderr}"
        );
    }
    assert!(stdout.contains("password = \"***\""), "{stdout}");
    assert!(stdout.contains("sasl_password = \"***\""), "{stdout}");
    assert!(stdout.contains("port = 6543"), "{stdout}");
    assert!(stdout.contains("workers = 8"), "{stdout}");
    assert!(stdout.contains("topic_prefix = \"ferry.demo\""), "{stdout}");
}

#[test]
fn missing_file_is_one_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("absent.toml");
    let output = run(&path, &[], &[]);
    assert_eq!(output.status.code(), Some(2));
    let lines = stderr_lines(&output);
    assert_eq!(lines.len(), 1, "{lines:#?}");
    assert!(lines[0].contains("absent.toml\" not found"), "{lines:#?}");
}

#[test]
fn import_schema_without_an_export_says_what_to_run() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nothing-here");
    let output = ferry(
        "[migration]\nid = \"m\"\n[target]\nhost = \"127.0.0.1\"\nport = 1\nuser = \"u\"\npassword = \"p\"\ndatabase = \"d\"\n[kafka]\nbootstrap_servers = \"127.0.0.1:1\"\n",
        &["import", "schema", "--export-dir", missing.to_str().unwrap()],
    );
    assert_eq!(output.status.code(), Some(1));
    let lines = stderr_lines(&output);
    assert!(
        lines
            .iter()
            .any(|l| l.contains("holds no exported schema: run `ferry export schema --export-dir")),
        "{lines:#?}"
    );
}

/// Runs `ferry --config <file> ARGS` (any verb) with no FERRY_* variables.
fn ferry(config_text: &str, args: &[&str]) -> Output {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ferry.toml");
    std::fs::write(&path, config_text).unwrap();
    let mut command = Command::new(env!("CARGO_BIN_EXE_ferry"));
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("FERRY_") {
            command.env_remove(name);
        }
    }
    command.arg("--config").arg(&path).args(args);
    command.output().unwrap()
}

#[test]
fn the_data_verbs_explain_what_they_do_wait_for_and_how_to_stop_and_resume() {
    for verb in [
        &["export", "data", "from", "source", "--help"][..],
        &["import", "data", "to", "target", "--help"][..],
        &["initiate", "cutover", "to", "target", "--help"][..],
    ] {
        let output = ferry(GOOD, verb);
        assert!(output.status.success(), "{verb:?}");
        let help = String::from_utf8_lossy(&output.stdout);
        for words in ["What it waits for", "ferry cutover status"] {
            if verb[0] == "initiate" || words == "What it waits for" {
                assert!(
                    help.contains(words),
                    "{verb:?} help lacks {words:?}:\n{help}"
                );
            }
        }
        if verb[0] != "initiate" {
            assert!(
                help.contains("Stopping and resuming") && help.contains("resumes"),
                "{verb:?}:\n{help}"
            );
        }
    }
    let help = String::from_utf8_lossy(
        &ferry(GOOD, &["export", "data", "from", "source", "--help"]).stdout,
    )
    .into_owned();
    for flag in [
        "--export-type",
        "--table-list",
        "--exclude-table-list",
        "--parallel-jobs",
    ] {
        assert!(help.contains(flag), "export help lacks {flag}:\n{help}");
    }
    let help =
        String::from_utf8_lossy(&ferry(GOOD, &["import", "data", "to", "target", "--help"]).stdout)
            .into_owned();
    for flag in ["--parallel-jobs", "--batch-size"] {
        assert!(help.contains(flag), "import help lacks {flag}:\n{help}");
    }
}

#[test]
fn voyager_flags_override_the_file_like_set_and_name_the_setting_when_wrong() {
    // Each flag lands in its setting: a bad value is reported under the setting's name,
    // before anything connects.
    for (args, setting) in [
        (
            &[
                "export",
                "data",
                "from",
                "source",
                "--export-type",
                "everything",
            ][..],
            "exporter.export_type",
        ),
        (
            &["export", "data", "from", "source", "--parallel-jobs", "0"][..],
            "exporter.snapshot_workers",
        ),
        (
            &["import", "data", "to", "target", "--parallel-jobs", "0"][..],
            "importer.workers",
        ),
        (
            &["import", "data", "to", "target", "--batch-size", "0"][..],
            "importer.batch_rows",
        ),
    ] {
        let output = ferry(GOOD, args);
        assert_eq!(output.status.code(), Some(2), "{args:?}");
        let err = String::from_utf8_lossy(&output.stderr);
        assert!(err.contains(setting), "{args:?}: {err}");
    }
    // The flag wins over the file.
    let text = GOOD.replace(
        "[kafka]",
        "[exporter]\nexport_type = \"snapshot-only\"\n[kafka]",
    );
    let output = ferry(
        &text,
        &["export", "data", "from", "source", "--export-type", "bogus"],
    );
    assert!(String::from_utf8_lossy(&output.stderr).contains("\"bogus\""));
}
