//! Thin binary over [`ferry_coordinator::run`].

fn main() -> std::process::ExitCode {
    std::process::ExitCode::FAILURE
}
