//! Who may talk to the coordinator, seen from both ends (DESIGN.md §10).
//!
//! The coordinator's HTTP API changes the migration (cutover, end, schema
//! registration), so every request that changes something carries a bearer token, and
//! so does every read-only request unless `coordinator.public_read` opens them. The
//! token comes from, in this order:
//!
//! 1. `coordinator.token` (file, `FERRY_COORDINATOR__TOKEN` or `--set`);
//! 2. the file `coordinator.token_file` names;
//! 3. the file [`DEFAULT_TOKEN_FILE`] (`./ferry-coordinator.token`, relative to the
//!    working directory).
//!
//! The coordinator ([`server_token`]) generates a random token into the file of 2 or 3
//! when it does not exist yet (mode 0600, only its owner may read it) and reuses it on
//! later starts; it logs the file's path, never the token. Clients ([`client_token`])
//! read the same places; a client that finds no token sends none and the coordinator's
//! 401 answer says how to pass one.
//!
//! [`http_client_builder`] is the HTTP client every Ferry client of the coordinator
//! uses (the CLI, and exporter and importer through the built-in registry): it trusts
//! `coordinator.ca_file` besides the system's certificates.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use crate::config::{CoordinatorConfig, Secret};

/// Where the token lives when neither `coordinator.token` nor `coordinator.token_file`
/// is set: relative to the working directory of the coordinator (which writes it) and
/// of the CLI (which reads it).
pub const DEFAULT_TOKEN_FILE: &str = "./ferry-coordinator.token";

/// Random bytes in a generated token (shown as 64 hex digits).
const TOKEN_BYTES: usize = 32;

/// The token or the CA certificate could not be read or written: a fact about a
/// setting or a file, with its fix.
#[derive(Debug, thiserror::Error)]
pub enum AccessError {
    /// The token file could not be read.
    #[error(
        "cannot read the coordinator token from {path} (setting \"{setting}\"): {source}; {hint}"
    )]
    ReadToken {
        /// The file.
        path: PathBuf,
        /// The setting that named it.
        setting: &'static str,
        /// What to do.
        hint: &'static str,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The token file holds nothing but whitespace.
    #[error("the coordinator token file {path} is empty: delete it to let the coordinator generate a new token, or write the token into it")]
    EmptyTokenFile {
        /// The file.
        path: PathBuf,
    },
    /// A new token could not be generated or written.
    #[error("cannot write a new coordinator token to {path}: {reason}; make its directory writable, or set coordinator.token_file to another path (or coordinator.token)")]
    WriteToken {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// `coordinator.ca_file` could not be read or holds no certificate.
    #[error("cannot use coordinator.ca_file {path}: {reason}; give a PEM file with the CA certificate that signed the coordinator's certificate")]
    CaFile {
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
    /// The HTTP client could not be created.
    #[error("creating an HTTP client for the coordinator: {0}")]
    Client(String),
}

/// Where the coordinator's token came from (for its log line: never the token).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenOrigin {
    /// `coordinator.token`.
    Setting,
    /// Read from this file.
    File(PathBuf),
    /// Generated now and written to this file.
    Generated(PathBuf),
}

/// The file the token is read from (and generated into): `coordinator.token_file`, or
/// [`DEFAULT_TOKEN_FILE`].
pub fn token_path(config: &CoordinatorConfig) -> PathBuf {
    PathBuf::from(config.token_file.as_deref().unwrap_or(DEFAULT_TOKEN_FILE))
}

/// The token a client sends: `coordinator.token`, else the file `coordinator.token_file`
/// (which must exist), else [`DEFAULT_TOKEN_FILE`] when it exists. `None`: no token
/// known; the coordinator will answer 401 with what to do.
pub fn client_token(config: &CoordinatorConfig) -> Result<Option<Secret>, AccessError> {
    if let Some(token) = &config.token {
        return Ok(Some(token.clone()));
    }
    match &config.token_file {
        Some(path) => read_token(
            Path::new(path),
            "coordinator.token_file",
            "start the coordinator once (it writes a new token there), or copy the coordinator's token file there",
        )
        .map(Some),
        None => match read_token(
            Path::new(DEFAULT_TOKEN_FILE),
            "coordinator.token_file",
            "make it readable",
        ) {
            Ok(token) => Ok(Some(token)),
            Err(AccessError::ReadToken { source, .. })
                if source.kind() == std::io::ErrorKind::NotFound =>
            {
                Ok(None)
            }
            Err(e) => Err(e),
        },
    }
}

/// The token the coordinator requires: `coordinator.token`, else the token file's
/// (see [`token_path`]); when that file does not exist, a new random token written to
/// it with mode 0600.
pub fn server_token(config: &CoordinatorConfig) -> Result<(Secret, TokenOrigin), AccessError> {
    if let Some(token) = &config.token {
        return Ok((token.clone(), TokenOrigin::Setting));
    }
    let path = token_path(config);
    match read_token(
        &path,
        "coordinator.token_file",
        "make it readable by the coordinator's user",
    ) {
        Ok(token) => {
            warn_if_readable_by_others(&path);
            Ok((token, TokenOrigin::File(path)))
        }
        Err(AccessError::ReadToken { source, .. })
            if source.kind() == std::io::ErrorKind::NotFound =>
        {
            match generate(&path) {
                Ok(token) => Ok((token, TokenOrigin::Generated(path))),
                // Another coordinator process made it first: use that one.
                Err(Generate::Exists) => {
                    read_token(&path, "coordinator.token_file", "make it readable")
                        .map(|token| (token, TokenOrigin::File(path)))
                }
                Err(Generate::Failed(reason)) => Err(AccessError::WriteToken { path, reason }),
            }
        }
        Err(e) => Err(e),
    }
}

/// An HTTP client builder for talking to the coordinator: trusts `coordinator.ca_file`
/// (PEM, one or more certificates) besides the system's certificates. The caller adds
/// the token ([`client_token`]) to its requests.
pub fn http_client_builder(
    config: &CoordinatorConfig,
) -> Result<reqwest::ClientBuilder, AccessError> {
    let mut builder = reqwest::Client::builder();
    if let Some(path) = &config.ca_file {
        let ca_error = |reason: String| AccessError::CaFile {
            path: path.clone(),
            reason,
        };
        let pem = std::fs::read(path).map_err(|e| ca_error(e.to_string()))?;
        let certs = reqwest::Certificate::from_pem_bundle(&pem)
            .map_err(|e| ca_error(format!("not a PEM certificate file ({e})")))?;
        if certs.is_empty() {
            return Err(ca_error("it holds no PEM certificate".to_owned()));
        }
        for cert in certs {
            builder = builder.add_root_certificate(cert);
        }
    }
    Ok(builder)
}

fn read_token(
    path: &Path,
    setting: &'static str,
    hint: &'static str,
) -> Result<Secret, AccessError> {
    let text = std::fs::read_to_string(path).map_err(|source| AccessError::ReadToken {
        path: path.to_owned(),
        setting,
        hint,
        source,
    })?;
    let token = text.trim();
    if token.is_empty() {
        return Err(AccessError::EmptyTokenFile {
            path: path.to_owned(),
        });
    }
    Ok(Secret::new(token))
}

enum Generate {
    Exists,
    Failed(String),
}

/// Writes a new random token to `path`, which must not exist: created with mode 0600
/// (its directory, when missing, with 0700), so only the coordinator's user reads it.
fn generate(path: &Path) -> Result<Secret, Generate> {
    let mut bytes = [0u8; TOKEN_BYTES];
    openssl::rand::rand_bytes(&mut bytes).map_err(|e| Generate::Failed(e.to_string()))?;
    let token: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        if !dir.exists() {
            let mut builder = std::fs::DirBuilder::new();
            builder.recursive(true);
            #[cfg(unix)]
            std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
            builder
                .create(dir)
                .map_err(|e| Generate::Failed(format!("creating {}: {e}", dir.display())))?;
        }
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = match options.open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => return Err(Generate::Exists),
        Err(e) => return Err(Generate::Failed(e.to_string())),
    };
    writeln!(file, "{token}")
        .and_then(|()| file.sync_all())
        .map_err(|e| Generate::Failed(e.to_string()))?;
    Ok(Secret::new(token))
}

/// A token file others can read is as good as no token: say so (the path and mode,
/// never the token).
fn warn_if_readable_by_others(path: &Path) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        if let Ok(meta) = std::fs::metadata(path) {
            let mode = meta.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                tracing::warn!(
                    path = %path.display(),
                    mode = format!("{mode:o}"),
                    "the coordinator token file is readable by other users: chmod 600 it"
                );
            }
        }
    }
    #[cfg(not(unix))]
    let _ = path;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(token_file: &Path) -> CoordinatorConfig {
        CoordinatorConfig {
            token_file: Some(token_file.display().to_string()),
            ..CoordinatorConfig::default()
        }
    }

    #[test]
    fn the_coordinator_generates_a_private_token_once_and_reuses_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secrets").join("coordinator.token");
        let c = config(&path);
        let (token, origin) = server_token(&c).unwrap();
        assert_eq!(origin, TokenOrigin::Generated(path.clone()));
        assert_eq!(token.expose().len(), 2 * TOKEN_BYTES);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "token file mode {mode:o}");
        }
        let (again, origin) = server_token(&c).unwrap();
        assert_eq!(origin, TokenOrigin::File(path.clone()));
        assert_eq!(again, token);
        assert_eq!(client_token(&c).unwrap(), Some(token));
    }

    #[test]
    fn the_setting_wins_and_a_missing_or_empty_file_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let c = CoordinatorConfig {
            token: Some(Secret::new("s3cret")),
            ..CoordinatorConfig::default()
        };
        assert_eq!(server_token(&c).unwrap().1, TokenOrigin::Setting);
        assert_eq!(client_token(&c).unwrap(), Some(Secret::new("s3cret")));

        let missing = dir.path().join("nope.token");
        let e = client_token(&config(&missing)).unwrap_err().to_string();
        assert!(
            e.contains("nope.token") && e.contains("coordinator.token_file"),
            "{e}"
        );

        let empty = dir.path().join("empty.token");
        std::fs::write(&empty, "\n").unwrap();
        let e = server_token(&config(&empty)).unwrap_err().to_string();
        assert!(e.contains("empty.token") && e.contains("is empty"), "{e}");
    }

    #[test]
    fn a_ca_file_without_a_certificate_is_refused_with_the_setting() {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, "not a certificate\n").unwrap();
        let c = CoordinatorConfig {
            ca_file: Some(ca.display().to_string()),
            ..CoordinatorConfig::default()
        };
        let e = http_client_builder(&c).unwrap_err().to_string();
        assert!(
            e.contains("coordinator.ca_file") && e.contains("ca.pem"),
            "{e}"
        );
    }
}
