//! Whether the broker lets this process in: one check every service makes before it
//! starts, so that a wrong SASL password or a TLS setting that cannot work stops it at
//! once with one message naming the setting, instead of librdkafka retrying the login
//! forever while the service waits on timeouts.
//!
//! Only the broker's own refusals are definite: an authentication failure (SASL) and a
//! failed TLS handshake (certificate not trusted, wrong protocol). A broker that does
//! not answer is left to the service's retry policy, since it may be starting or
//! restarting.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use rdkafka::client::ClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};

use crate::config::{KafkaConfig, SecurityProtocol};

/// How long the check waits for the broker's metadata before it leaves an unreachable
/// broker to the service's retries.
const CHECK_FOR: Duration = Duration::from_secs(15);

/// The broker refused this client: a fact about the configuration, with its fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AccessError {
    /// SASL authentication failed.
    #[error("the broker at {bootstrap} refused the SASL {mechanism} login of user \"{user}\" ({reason}); check kafka.sasl_username and kafka.sasl_password")]
    Authentication {
        /// `kafka.bootstrap_servers`.
        bootstrap: String,
        /// `kafka.sasl_mechanism`.
        mechanism: String,
        /// `kafka.sasl_username`.
        user: String,
        /// librdkafka's reason.
        reason: String,
    },
    /// The TLS handshake failed.
    #[error("the TLS handshake with the broker at {bootstrap} failed ({reason}); check kafka.ssl_ca_location (the CA that signed the broker's certificate) and kafka.security_protocol")]
    Tls {
        /// `kafka.bootstrap_servers`.
        bootstrap: String,
        /// librdkafka's reason.
        reason: String,
    },
}

/// Records the first refusal librdkafka reports.
#[derive(Default)]
struct Watch {
    refusal: Mutex<Option<(RDKafkaErrorCode, String)>>,
}

impl ClientContext for Watch {
    // librdkafka's own lines about the refusal would repeat, as ERRORs, what the check
    // reports once with its fix.
    fn log(&self, _level: rdkafka::config::RDKafkaLogLevel, fac: &str, message: &str) {
        tracing::debug!(target: "librdkafka", "{fac} {message}");
    }

    fn error(&self, error: KafkaError, reason: &str) {
        let code = match error {
            KafkaError::Global(code) => code,
            _ => return,
        };
        if matches!(
            code,
            RDKafkaErrorCode::Authentication | RDKafkaErrorCode::SSL
        ) {
            if let Ok(mut r) = self.refusal.lock() {
                r.get_or_insert((code, reason.to_owned()));
            }
        }
    }
}

impl ConsumerContext for Watch {}

/// Connects to the broker as `config` says and returns the broker's refusal, if it
/// refuses. `Ok` when it answers or does not answer within 15 s (then the caller's
/// retries take over). Blocking: call from a blocking thread, or use [`check`].
pub fn check_blocking(config: &KafkaConfig) -> Result<(), AccessError> {
    let mut client_config = config.client_config();
    // What librdkafka will use: `kafka.properties` may override the typed setting.
    let protocol = client_config
        .get("security.protocol")
        .unwrap_or(SecurityProtocol::Plaintext.as_str())
        .to_ascii_lowercase();
    if protocol == "plaintext" {
        return Ok(());
    }
    client_config.set("group.id", "ferry-access-check");
    let Ok(client) = client_config.create_with_context::<_, BaseConsumer<Watch>>(Watch::default())
    else {
        // A configuration librdkafka refuses is reported by the service's own client.
        return Ok(());
    };
    let deadline = Instant::now() + CHECK_FOR;
    loop {
        if client
            .fetch_metadata(None, Duration::from_millis(1000))
            .is_ok()
        {
            return Ok(());
        }
        // Error callbacks are served by polling.
        let _ = client.poll(Duration::from_millis(100));
        let refusal = client.context().refusal.lock().ok().and_then(|r| r.clone());
        if let Some((code, reason)) = refusal {
            return Err(describe(config, code, reason));
        }
        if Instant::now() >= deadline {
            tracing::warn!(
                bootstrap = %config.bootstrap_servers,
                "the broker did not answer within {CHECK_FOR:?}; carrying on, retrying as usual"
            );
            return Ok(());
        }
    }
}

/// [`check_blocking`] on a blocking thread.
pub async fn check(config: &KafkaConfig) -> Result<(), AccessError> {
    let config = config.clone();
    tokio::task::spawn_blocking(move || check_blocking(&config))
        .await
        .unwrap_or(Ok(()))
}

fn describe(config: &KafkaConfig, code: RDKafkaErrorCode, reason: String) -> AccessError {
    let bootstrap = config.bootstrap_servers.clone();
    if code == RDKafkaErrorCode::Authentication {
        AccessError::Authentication {
            bootstrap,
            mechanism: config
                .sasl_mechanism
                .map(|m| m.as_str().to_owned())
                .unwrap_or_else(|| "(unset)".to_owned()),
            user: config.sasl_username.clone().unwrap_or_default(),
            reason,
        }
    } else {
        AccessError::Tls { bootstrap, reason }
    }
}
