//! Ferry's shared library: the event model, the Avro codec and schema registry client,
//! Kafka and PostgreSQL plumbing, configuration and the state records.
//!
//! Everything that crosses a process boundary (topic names, record layouts, positions)
//! is defined here once, so that the exporter, importer, coordinator and CLI agree.

pub mod avro;
pub mod catalog;
pub mod checkpoint;
pub mod clock;
pub mod codec;
pub mod config;
pub mod coordinator_access;
pub mod envelope;
pub mod error_policy;
pub mod fetch_stall;
pub mod health;
pub mod heartbeat;
pub mod json;
pub mod kafka;
pub mod kafka_access;
pub mod metadata;
pub mod position;
pub mod process;
pub mod rate;
pub mod registry;
pub mod repeats;
pub mod replay;
pub mod shutdown;
pub mod state;
pub mod topics;
pub mod value;
pub mod yugabytedb;
