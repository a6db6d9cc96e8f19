//! Connecting to a PostgreSQL-protocol database (PostgreSQL, YugabyteDB YSQL).

use openssl::ssl::{SslConnector, SslMethod, SslVerifyMode};
use postgres_openssl::MakeTlsConnector;
use tokio::task::JoinHandle;
use tokio_postgres::{Client, NoTls};

use super::{DatabaseConfig, SslMode};

/// Why a connection could not be opened. `Display` names the database (never the
/// password); the driver's error is the `source`.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The engine does not speak the PostgreSQL protocol.
    #[error("cannot connect to {database}: engine {engine} is not reached through the PostgreSQL protocol")]
    Engine {
        /// `user@host:port/db`.
        database: String,
        /// The configured engine.
        engine: &'static str,
    },
    /// TLS could not be set up (bad CA file, OpenSSL problem).
    #[error("cannot set up TLS (sslmode {sslmode}) for {database}")]
    Tls {
        /// `user@host:port/db`.
        database: String,
        /// The configured sslmode.
        sslmode: &'static str,
        /// OpenSSL's error.
        #[source]
        source: openssl::error::ErrorStack,
    },
    /// The TLS handshake failed: the server offers no TLS, its certificate is not
    /// signed by the CA of `sslrootcert`, or (verify-full) does not name the host.
    #[error("cannot connect to {database} with TLS (sslmode {sslmode}, sslrootcert \"{sslrootcert}\"): check sslrootcert (the CA that signed the server's certificate), host (verify-full: a name the certificate lists) and the server's ssl settings")]
    TlsHandshake {
        /// `user@host:port/db`.
        database: String,
        /// The configured sslmode.
        sslmode: &'static str,
        /// The configured CA file (empty when none).
        sslrootcert: String,
        /// The driver's error (OpenSSL's reason is its cause).
        #[source]
        source: tokio_postgres::Error,
    },
    /// The server refused or could not be reached.
    #[error("cannot connect to {database}")]
    Connect {
        /// `user@host:port/db`.
        database: String,
        /// The driver's error.
        #[source]
        source: tokio_postgres::Error,
    },
}

impl ConnectError {
    /// Its class under the one error policy: a refused login or a TLS set-up problem is
    /// definite, a server out of reach transient.
    pub fn class(&self) -> crate::error_policy::ErrorClass {
        match self {
            ConnectError::Engine { .. } | ConnectError::Tls { .. } => {
                crate::error_policy::ErrorClass::Definite
            }
            // A refused certificate or a server without TLS is a fact about the
            // settings; the connection lost in the middle of the handshake is not.
            ConnectError::TlsHandshake { source, .. } => {
                let mut cause = std::error::Error::source(source);
                while let Some(e) = cause {
                    let lost = e
                        .downcast_ref::<openssl::ssl::Error>()
                        .is_some_and(|e| e.io_error().is_some())
                        || e.is::<std::io::Error>();
                    if lost {
                        return crate::error_policy::ErrorClass::Transient;
                    }
                    cause = e.source();
                }
                crate::error_policy::ErrorClass::Definite
            }
            ConnectError::Connect { source, .. } => crate::error_policy::classify_pg(source),
        }
    }
}

impl DatabaseConfig {
    /// The port: `port`, or the engine's default.
    pub fn port(&self) -> u16 {
        self.port.unwrap_or_else(|| self.engine.default_port())
    }

    /// `user@host:port/database`, for logs and messages (no password).
    pub fn display(&self) -> String {
        format!(
            "{}@{}:{}/{}",
            self.user,
            self.host,
            self.port(),
            self.database
        )
    }

    /// A tokio-postgres configuration (application_name `ferry`). Its TLS mode is
    /// `disable`, `prefer` or `require`; certificate checks for verify-ca/verify-full
    /// are done by the connector that [`DatabaseConfig::connect`] builds.
    pub fn pg_config(&self) -> tokio_postgres::Config {
        let mut config = tokio_postgres::Config::new();
        config
            .host(&self.host)
            .port(self.port())
            .user(&self.user)
            .password(self.password.expose())
            .dbname(&self.database)
            .application_name("ferry")
            .ssl_mode(match self.sslmode {
                SslMode::Disable => tokio_postgres::config::SslMode::Disable,
                SslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
                SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => {
                    tokio_postgres::config::SslMode::Require
                }
            });
        config
    }

    /// Opens one session with the configured sslmode, as libpq does: `disable` never
    /// uses TLS; `prefer` uses TLS when the server offers it, else plaintext, without
    /// certificate checks; `require` insists on TLS and checks the certificate only
    /// when `sslrootcert` is set; `verify-ca` checks the chain against `sslrootcert`;
    /// `verify-full` also checks the host name.
    ///
    /// The returned task drives the connection and ends with its result when the
    /// client is dropped or the connection fails; its owner should join it.
    pub async fn connect(
        &self,
    ) -> Result<(Client, JoinHandle<Result<(), tokio_postgres::Error>>), ConnectError> {
        if !self.engine.is_postgres_protocol() {
            return Err(ConnectError::Engine {
                database: self.display(),
                engine: self.engine.as_str(),
            });
        }
        let config = self.pg_config();
        let connect_error = |source| ConnectError::Connect {
            database: self.display(),
            source,
        };
        if self.sslmode == SslMode::Disable {
            let (client, connection) = config.connect(NoTls).await.map_err(connect_error)?;
            return Ok((client, tokio::spawn(connection)));
        }
        let tls = match self.tls_connector() {
            Ok(tls) => tls,
            // prefer: a TLS setup problem on our side falls back to plaintext.
            Err(e) if self.sslmode == SslMode::Prefer => {
                tracing::warn!(database = %self.display(), error = %e, "cannot set up TLS; connecting without it (sslmode prefer)");
                let (client, connection) = config.connect(NoTls).await.map_err(connect_error)?;
                return Ok((client, tokio::spawn(connection)));
            }
            Err(source) => {
                return Err(ConnectError::Tls {
                    database: self.display(),
                    sslmode: self.sslmode.as_str(),
                    source,
                })
            }
        };
        let (client, connection) = config.connect(tls).await.map_err(|source| {
            // tokio-postgres has no accessor for its error kinds: its TLS kind is
            // known by its text.
            if source.to_string() == "error performing TLS handshake" {
                ConnectError::TlsHandshake {
                    database: self.display(),
                    sslmode: self.sslmode.as_str(),
                    sslrootcert: self.sslrootcert.clone().unwrap_or_default(),
                    source,
                }
            } else {
                connect_error(source)
            }
        })?;
        Ok((client, tokio::spawn(connection)))
    }

    fn tls_connector(&self) -> Result<MakeTlsConnector, openssl::error::ErrorStack> {
        let mut builder = SslConnector::builder(SslMethod::tls())?;
        let root = self.sslrootcert.as_deref().filter(|p| !p.is_empty());
        let verify = match self.sslmode {
            SslMode::Disable | SslMode::Prefer => false,
            SslMode::Require => root.is_some(),
            SslMode::VerifyCa | SslMode::VerifyFull => true,
        };
        if verify {
            if let Some(root) = root {
                builder.set_ca_file(root)?;
            }
            builder.set_verify(SslVerifyMode::PEER);
        } else {
            builder.set_verify(SslVerifyMode::NONE);
        }
        let mut connector = MakeTlsConnector::new(builder.build());
        let check_host = self.sslmode == SslMode::VerifyFull;
        connector.set_callback(move |connect, _domain| {
            connect.set_verify_hostname(check_host);
            if !verify {
                connect.set_verify(SslVerifyMode::NONE);
            }
            Ok(())
        });
        Ok(connector)
    }
}
