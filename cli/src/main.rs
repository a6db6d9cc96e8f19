//! `ferry`, the operator's command line.

fn main() -> std::process::ExitCode {
    std::process::ExitCode::FAILURE
}
