//! The registry topic: creation, replay and durable writes.
//!
//! The topic has one partition and `cleanup.policy=compact`. Keys are JSON
//! `{"keytype":"SCHEMA","subject":S,"version":V}` or `{"keytype":"CONFIG","subject":S|null}`;
//! values are [`SchemaValue`] or `{"compatibilityLevel":L}`, close to Confluent's `_schemas`
//! layout. A key's latest value is the truth, so compaction never changes the replayed state.
//! No tombstones are written: deletes are soft (`"deleted":true`).
//!
//! A write returns only after the broker acknowledged it (`acks=all`, idempotent producer), so
//! an HTTP response never reports a schema id that a restart could lose.

use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::util::Timeout;
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};

use super::compat::CompatibilityLevel;
use super::state::{Record, SchemaValue, State};
use super::RegistryError;

/// How long opening may wait for the topic to appear and for replay to reach the end.
const REPLAY_DEADLINE: Duration = Duration::from_secs(60);
/// How long a write may wait for the broker's acknowledgement.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "keytype", rename_all = "UPPERCASE")]
enum Key {
    Schema { subject: String, version: u32 },
    Config { subject: Option<String> },
}

#[derive(Debug, Serialize, Deserialize)]
struct ConfigValue {
    #[serde(rename = "compatibilityLevel")]
    compatibility_level: String,
}

/// Encodes a record as the topic's (key, value).
pub(super) fn encode(record: &Record) -> Result<(Vec<u8>, Vec<u8>), RegistryError> {
    let encoded = match record {
        Record::Schema(value) => (
            serde_json::to_vec(&Key::Schema {
                subject: value.subject.clone(),
                version: value.version,
            }),
            serde_json::to_vec(value),
        ),
        Record::Config { subject, level } => (
            serde_json::to_vec(&Key::Config {
                subject: subject.clone(),
            }),
            serde_json::to_vec(&ConfigValue {
                compatibility_level: level.as_str().to_string(),
            }),
        ),
    };
    match encoded {
        (Ok(key), Ok(value)) => Ok((key, value)),
        (Err(e), _) | (_, Err(e)) => Err(RegistryError::Storage(format!(
            "cannot encode registry record: {e}"
        ))),
    }
}

/// Decodes a record of the topic. `Ok(None)` for records this registry does not write
/// (other key types, tombstones); an error for a malformed record of a known type, because
/// skipping it could hand out its schema id again.
pub(super) fn decode(key: &[u8], value: Option<&[u8]>) -> Result<Option<Record>, RegistryError> {
    let raw: serde_json::Value = serde_json::from_slice(key)
        .map_err(|e| RegistryError::Storage(format!("registry record key is not JSON: {e}")))?;
    let keytype = raw.get("keytype").and_then(|k| k.as_str()).unwrap_or("");
    if keytype != "SCHEMA" && keytype != "CONFIG" {
        return Ok(None);
    }
    let Some(value) = value else {
        return Ok(None);
    };
    let key: Key = serde_json::from_value(raw)
        .map_err(|e| RegistryError::Storage(format!("malformed registry record key: {e}")))?;
    match key {
        Key::Schema { subject, version } => {
            let value: SchemaValue = serde_json::from_slice(value).map_err(|e| {
                RegistryError::Storage(format!(
                    "malformed registry record for subject '{subject}' version {version}: {e}"
                ))
            })?;
            Ok(Some(Record::Schema(value)))
        }
        Key::Config { subject } => {
            let value: ConfigValue = serde_json::from_slice(value).map_err(|e| {
                RegistryError::Storage(format!("malformed registry config record: {e}"))
            })?;
            let level: CompatibilityLevel = value
                .compatibility_level
                .parse()
                .map_err(RegistryError::Storage)?;
            Ok(Some(Record::Config { subject, level }))
        }
    }
}

fn kafka(context: &str, e: KafkaError) -> RegistryError {
    RegistryError::Kafka {
        context: context.to_string(),
        source: e,
    }
}

/// Creates the topic unless it exists.
pub(super) async fn create_topic(config: &ClientConfig, topic: &str) -> Result<(), RegistryError> {
    let admin: AdminClient<DefaultClientContext> = config
        .create()
        .map_err(|e| kafka("cannot create the registry's admin client", e))?;
    let new = ferry_shared::kafka::COMPACTED_TOPIC_CONFIG.iter().fold(
        NewTopic::new(topic, 1, TopicReplication::Fixed(-1)),
        |topic, (key, value)| topic.set(key, value),
    );
    let options =
        AdminOptions::new().operation_timeout(Some(Timeout::After(Duration::from_secs(30))));
    let results = admin
        .create_topics([&new], &options)
        .await
        .map_err(|e| kafka("cannot create the registry topic", e))?;
    for result in results {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((name, code)) => {
                return Err(RegistryError::Storage(format!(
                    "cannot create registry topic \"{name}\": {code}"
                )))
            }
        }
    }
    Ok(())
}

/// Reads the topic from the beginning to its high watermark and returns the state it holds.
pub(super) async fn replay(config: &ClientConfig, topic: &str) -> Result<State, RegistryError> {
    let mut config = config.clone();
    config
        .set("group.id", format!("ferry-registry-replay-{topic}"))
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false");
    let topic = topic.to_string();
    tokio::task::spawn_blocking(move || replay_blocking(&config, &topic))
        .await
        .map_err(|e| RegistryError::Storage(format!("registry replay task failed: {e}")))?
}

fn replay_blocking(config: &ClientConfig, topic: &str) -> Result<State, RegistryError> {
    let consumer: BaseConsumer = config
        .create()
        .map_err(|e| kafka("cannot create the registry's consumer", e))?;
    let deadline = Instant::now() + REPLAY_DEADLINE;
    // A topic created a moment ago may not be in every broker's metadata yet.
    let (low, high) = loop {
        match consumer.fetch_watermarks(topic, 0, Duration::from_secs(5)) {
            Ok(w) => break w,
            Err(e) if Instant::now() < deadline => {
                tracing::debug!(topic, error = %e, "registry topic not ready, retrying");
                std::thread::sleep(Duration::from_millis(200));
            }
            Err(e) => return Err(kafka("cannot read the registry topic's offsets", e)),
        }
    };
    let mut state = State::default();
    let mut records = 0u64;
    if high > low {
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(topic, 0, Offset::Beginning)
            .map_err(|e| kafka("cannot assign the registry topic", e))?;
        consumer
            .assign(&tpl)
            .map_err(|e| kafka("cannot assign the registry topic", e))?;
        loop {
            if Instant::now() > deadline {
                return Err(RegistryError::Storage(format!(
                    "replaying registry topic \"{topic}\" did not reach offset {high} within {}s",
                    REPLAY_DEADLINE.as_secs()
                )));
            }
            let Some(message) = consumer.poll(Duration::from_millis(500)) else {
                continue;
            };
            let message = message.map_err(|e| kafka("cannot read the registry topic", e))?;
            if let Some(record) = decode(message.key().unwrap_or_default(), message.payload())? {
                state.apply(record);
                records += 1;
            }
            if message.offset() + 1 >= high {
                break;
            }
        }
    }
    state.reindex();
    tracing::info!(
        topic,
        records,
        high_watermark = high,
        "registry state replayed"
    );
    Ok(state)
}

/// Creates the producer every write goes through.
pub(super) fn producer(config: &ClientConfig) -> Result<FutureProducer, RegistryError> {
    let mut config = config.clone();
    config
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .set("message.timeout.ms", WRITE_TIMEOUT.as_millis().to_string());
    config
        .create()
        .map_err(|e| kafka("cannot create the registry's producer", e))
}

/// Writes a record and waits for the broker's acknowledgement.
pub(super) async fn write(
    producer: &FutureProducer,
    topic: &str,
    record: &Record,
) -> Result<(), RegistryError> {
    let (key, value) = encode(record)?;
    let message = FutureRecord::to(topic)
        .partition(0)
        .key(&key)
        .payload(&value);
    producer
        .send(message, Timeout::After(WRITE_TIMEOUT))
        .await
        .map(|_| ())
        .map_err(|(e, _)| kafka("cannot write to the registry topic", e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_through_the_topic_format() {
        let schema = Record::Schema(SchemaValue {
            subject: "s".into(),
            version: 2,
            id: 7,
            schema: r#""string""#.into(),
            references: vec![],
            deleted: true,
        });
        let (key, value) = encode(&schema).unwrap();
        assert_eq!(
            serde_json::from_slice::<serde_json::Value>(&key).unwrap(),
            serde_json::json!({"keytype":"SCHEMA","subject":"s","version":2})
        );
        assert_eq!(decode(&key, Some(&value)).unwrap(), Some(schema));

        let config = Record::Config {
            subject: None,
            level: CompatibilityLevel::FullTransitive,
        };
        let (key, value) = encode(&config).unwrap();
        assert_eq!(
            serde_json::from_slice::<serde_json::Value>(&key).unwrap(),
            serde_json::json!({"keytype":"CONFIG","subject":null})
        );
        assert_eq!(decode(&key, Some(&value)).unwrap(), Some(config));
    }

    #[test]
    fn foreign_records_are_skipped_and_malformed_ones_refused() {
        assert_eq!(decode(br#"{"keytype":"NOOP"}"#, Some(b"{}")).unwrap(), None);
        assert_eq!(
            decode(br#"{"keytype":"SCHEMA","subject":"s","version":1}"#, None).unwrap(),
            None
        );
        assert!(decode(
            br#"{"keytype":"SCHEMA","subject":"s","version":1}"#,
            Some(b"{")
        )
        .is_err());
        assert!(decode(b"not json", Some(b"{}")).is_err());
    }
}
