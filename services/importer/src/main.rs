//! Thin binary over [`ferry_importer::run`].

fn main() -> std::process::ExitCode {
    std::process::ExitCode::FAILURE
}
