//! The built-in Confluent-compatible schema registry.
//!
//! The coordinator serves the subset of the Confluent Schema Registry REST API that Avro
//! clients use (see [`router`]), so a single machine needs no other registry. Its state lives in
//! a compacted one-partition Kafka topic (`storage`) and in memory ([`state`]).
//!
//! Invariants:
//! - single writer: only one coordinator writes the topic; writes are serialized by a mutex
//!   held from planning to applying, so ids and versions are assigned without gaps or races;
//! - durable before visible: a change is produced (`acks=all`, idempotent) and acknowledged
//!   before it is applied in memory and before the HTTP response, so a restart, which replays
//!   the topic, never loses an id a client has seen;
//! - if a write fails, whether it landed is unknown; the next write first replays the topic.

pub mod compat;
mod http;
pub mod state;
mod storage;

use std::sync::atomic::{AtomicBool, Ordering};

use rdkafka::producer::FutureProducer;
use rdkafka::ClientConfig;
use tokio::sync::{Mutex, RwLock};

pub use compat::CompatibilityLevel;
pub use http::router;
use state::{Record, RegisterPlan, SchemaReference, SchemaValue, State, VersionSelector};

/// What went wrong in the registry; [`RegistryError::error_code`] is Confluent's code for it.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// 40401.
    #[error("subject '{0}' not found")]
    SubjectNotFound(String),
    /// 40402.
    #[error("version {version} not found for subject '{subject}'")]
    VersionNotFound {
        /// The subject.
        subject: String,
        /// The version asked for.
        version: String,
    },
    /// 40403.
    #[error("{0}")]
    SchemaNotFound(String),
    /// 40404.
    #[error("subject '{0}' was soft deleted")]
    SubjectSoftDeleted(String),
    /// 40406.
    #[error("subject '{subject}' version {version} was soft deleted")]
    VersionSoftDeleted {
        /// The subject.
        subject: String,
        /// The version.
        version: u32,
    },
    /// 40408.
    #[error(
        "subject '{0}' does not have subject-level compatibility configured; \
         add defaultToGlobal=true to get the global level"
    )]
    SubjectLevelNotConfigured(String),
    /// 409.
    #[error(
        "schema being registered is incompatible with an earlier schema for subject '{subject}', \
         details: [{}]",
        messages.join("; ")
    )]
    Incompatible {
        /// The subject.
        subject: String,
        /// Why, one entry per rule broken.
        messages: Vec<String>,
    },
    /// 42201.
    #[error("{0}")]
    InvalidSchema(String),
    /// 42202.
    #[error(
        "the specified version '{0}' is not a valid version id; use a positive integer or 'latest'"
    )]
    InvalidVersion(String),
    /// 42203.
    #[error("invalid compatibility level '{0}'; use NONE, BACKWARD, BACKWARD_TRANSITIVE, FORWARD, FORWARD_TRANSITIVE, FULL or FULL_TRANSITIVE")]
    InvalidCompatibilityLevel(String),
    /// 400: the request body is not what the endpoint takes.
    #[error("{0}")]
    BadRequest(String),
    /// 50001.
    #[error("registry storage error: {0}")]
    Storage(String),
    /// 50001: the topic could not be read or written.
    #[error("{context}")]
    Kafka {
        /// What was being done.
        context: String,
        /// The client's error.
        #[source]
        source: rdkafka::error::KafkaError,
    },
}

impl RegistryError {
    /// Confluent's `error_code`; the HTTP status is its first three digits.
    pub fn error_code(&self) -> u32 {
        match self {
            Self::SubjectNotFound(_) => 40401,
            Self::VersionNotFound { .. } => 40402,
            Self::SchemaNotFound(_) => 40403,
            Self::SubjectSoftDeleted(_) => 40404,
            Self::VersionSoftDeleted { .. } => 40406,
            Self::SubjectLevelNotConfigured(_) => 40408,
            Self::Incompatible { .. } => 409,
            Self::InvalidSchema(_) => 42201,
            Self::InvalidVersion(_) => 42202,
            Self::InvalidCompatibilityLevel(_) => 42203,
            Self::BadRequest(_) => 400,
            Self::Storage(_) | Self::Kafka { .. } => 50001,
        }
    }

    /// The HTTP status code for [`Self::error_code`].
    pub fn http_status(&self) -> u16 {
        let code = self.error_code();
        let status = if code >= 10_000 { code / 100 } else { code };
        u16::try_from(status).unwrap_or(500)
    }
}

/// A schema registry backed by a compacted Kafka topic. See the module documentation.
pub struct Registry {
    topic: String,
    kafka: ClientConfig,
    producer: FutureProducer,
    state: RwLock<State>,
    /// Held from planning a change until it is applied: the single-writer rule in-process.
    write: Mutex<()>,
    /// A write failed and may or may not have landed: replay before the next write.
    in_doubt: AtomicBool,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("topic", &self.topic)
            .finish_non_exhaustive()
    }
}

impl Registry {
    /// Opens the registry stored in `topic`: creates the topic if missing (one partition,
    /// compacted), replays it to the high watermark, and prepares the producer for writes.
    pub async fn open(kafka: ClientConfig, topic: String) -> Result<Registry, RegistryError> {
        storage::create_topic(&kafka, &topic).await?;
        let state = storage::replay(&kafka, &topic).await?;
        let producer = storage::producer(&kafka)?;
        Ok(Registry {
            topic,
            kafka,
            producer,
            state: RwLock::new(state),
            write: Mutex::new(()),
            in_doubt: AtomicBool::new(false),
        })
    }

    /// The topic the registry is stored in.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// Registers an Avro schema under `subject` and returns its global id; an identical schema
    /// already live in the subject returns the existing id without a new version.
    pub async fn register(
        &self,
        subject: &str,
        schema: &str,
        references: &[SchemaReference],
    ) -> Result<u32, RegistryError> {
        let _writer = self.write.lock().await;
        self.settle().await?;
        let (plan, identity) = {
            let state = self.state.read().await;
            let candidate = state.candidate(schema, references)?;
            let plan = state.plan_register(subject, schema, references, &candidate)?;
            (plan, candidate.identity)
        };
        match plan {
            RegisterPlan::Existing(id) => Ok(id),
            RegisterPlan::Write(value) => {
                let id = value.id;
                let version = value.version;
                self.commit(vec![Record::Schema(value)]).await?;
                self.state.write().await.index(identity, id);
                tracing::info!(subject, id, version, "schema registered");
                Ok(id)
            }
        }
    }

    /// Sets the compatibility level of `subject`, or the global level with `None`.
    pub async fn set_level(
        &self,
        subject: Option<&str>,
        level: CompatibilityLevel,
    ) -> Result<(), RegistryError> {
        let _writer = self.write.lock().await;
        self.settle().await?;
        self.commit(vec![Record::Config {
            subject: subject.map(str::to_string),
            level,
        }])
        .await
    }

    /// Soft-deletes every live version of `subject` and returns their numbers.
    pub async fn delete_subject(&self, subject: &str) -> Result<Vec<u32>, RegistryError> {
        let _writer = self.write.lock().await;
        self.settle().await?;
        let values = self.state.read().await.plan_delete_subject(subject)?;
        let versions = values.iter().map(|v| v.version).collect();
        self.commit(values.into_iter().map(Record::Schema).collect())
            .await?;
        Ok(versions)
    }

    /// Soft-deletes one version of `subject` and returns its number.
    pub async fn delete_version(
        &self,
        subject: &str,
        version: VersionSelector,
    ) -> Result<u32, RegistryError> {
        let _writer = self.write.lock().await;
        self.settle().await?;
        let value = self
            .state
            .read()
            .await
            .plan_delete_version(subject, version)?;
        let number = value.version;
        self.commit(vec![Record::Schema(value)]).await?;
        Ok(number)
    }

    /// The schema string registered with `id` (as first registered).
    pub async fn schema_by_id(&self, id: u32) -> Result<String, RegistryError> {
        let state = self.state.read().await;
        Ok(state.schema_by_id(id, None, true)?.schema.clone())
    }

    /// A subject's version (`None`: latest live version).
    pub async fn subject_version(
        &self,
        subject: &str,
        version: Option<u32>,
    ) -> Result<SchemaValue, RegistryError> {
        let selector = version.map_or(VersionSelector::Latest, VersionSelector::Number);
        let state = self.state.read().await;
        Ok(state.version(subject, selector, false)?.clone())
    }

    /// Replays the topic if an earlier write's outcome is unknown. Call with the writer lock.
    async fn settle(&self) -> Result<(), RegistryError> {
        if self.in_doubt.load(Ordering::Acquire) {
            let state = storage::replay(&self.kafka, &self.topic).await?;
            *self.state.write().await = state;
            self.in_doubt.store(false, Ordering::Release);
        }
        Ok(())
    }

    /// Writes records, waits for each acknowledgement, then applies them. Call with the
    /// writer lock.
    async fn commit(&self, records: Vec<Record>) -> Result<(), RegistryError> {
        for record in &records {
            if let Err(e) = storage::write(&self.producer, &self.topic, record).await {
                self.in_doubt.store(true, Ordering::Release);
                tracing::warn!(topic = %self.topic, error = %e, "registry write failed");
                return Err(e);
            }
        }
        let mut state = self.state.write().await;
        for record in records {
            state.apply(record);
        }
        Ok(())
    }
}

/// Whether `schema_type` (absent means AVRO) is one this registry serves.
fn check_schema_type(schema_type: Option<&str>) -> Result<(), RegistryError> {
    match schema_type {
        None => Ok(()),
        Some(t) if t.eq_ignore_ascii_case("AVRO") => Ok(()),
        Some(t) => Err(RegistryError::InvalidSchema(format!(
            "schema type {t} is not supported by ferry's built-in registry, which serves AVRO \
             only; set schema_registry.url to a registry that supports {t}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_status_is_the_first_three_digits() {
        assert_eq!(
            RegistryError::SubjectNotFound("s".into()).http_status(),
            404
        );
        assert_eq!(RegistryError::InvalidVersion("x".into()).http_status(), 422);
        assert_eq!(
            RegistryError::Incompatible {
                subject: "s".into(),
                messages: vec![]
            }
            .http_status(),
            409
        );
        assert_eq!(RegistryError::Storage("x".into()).http_status(), 500);
        assert_eq!(RegistryError::BadRequest("x".into()).http_status(), 400);
    }

    #[test]
    fn only_avro_is_served() {
        assert!(check_schema_type(None).is_ok());
        assert!(check_schema_type(Some("AVRO")).is_ok());
        let err = check_schema_type(Some("PROTOBUF")).unwrap_err();
        assert_eq!(err.error_code(), 42201);
        assert!(err.to_string().contains("PROTOBUF"));
    }
}
