//! What the CLI's integration tests share: running the real `ferry` binary with only
//! the configuration they give it, and child processes that end with the test.

#![allow(dead_code)] // each test file uses a part of it
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test helpers

use std::path::Path;
use std::process::{Child, Command, Output};

/// `ferry --config <config> ARGS`, with no FERRY_* variable of the test's environment.
pub fn ferry(config: &Path, args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_ferry"));
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("FERRY_") {
            command.env_remove(name);
        }
    }
    command.arg("--config").arg(config).args(args);
    command
}

/// [`ferry`], run to its end.
pub fn run(config: &Path, args: &[&str]) -> Output {
    ferry(config, args).output().unwrap()
}

/// A child process killed when dropped.
pub struct KillOnDrop(pub Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
