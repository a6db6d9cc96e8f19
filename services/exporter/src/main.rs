//! Thin binary over [`ferry_exporter::run`].

fn main() -> std::process::ExitCode {
    std::process::ExitCode::FAILURE
}
