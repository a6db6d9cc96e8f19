//! Ferry's shared library: the event model, the Avro codec and schema registry client,
//! Kafka and PostgreSQL plumbing, configuration and the state records.
//!
//! Everything that crosses a process boundary (topic names, record layouts, positions)
//! is defined here once, so that the exporter, importer, coordinator and CLI agree.

pub mod config;
pub mod shutdown;
pub mod catalog;
pub mod position;
pub mod topics;
pub mod value;
pub mod avro;
pub mod envelope;
pub mod registry;
