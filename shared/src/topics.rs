//! Every Kafka name Ferry uses, in one place (DESIGN.md §2).
//!
//! Topic prefix `ferry.<migration>` (configurable). Per table:
//! `<prefix>.<stream>.<schema>.<table>`; migration state `<prefix>._state`; heartbeats
//! `<prefix>._status`; the built-in registry's schemas `<prefix>._schemas`.
//! Subjects follow Confluent's TopicNameStrategy: `<topic>-key` and `<topic>-value`.

use std::fmt;

use serde::{Deserialize, Serialize};

/// The two streams of a migration.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Stream {
    /// Exported from the source database.
    Source,
    /// Exported from the target database after cutover.
    Target,
}

impl Stream {
    /// The name used in topic names and state records.
    pub fn as_str(self) -> &'static str {
        match self {
            Stream::Source => "source",
            Stream::Target => "target",
        }
    }
}

impl fmt::Display for Stream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The databases an importer can write to; each has its own consumer group.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Destination {
    /// The database being migrated to.
    Target,
    /// The optional third database kept in sync for fall-forward.
    SourceReplica,
    /// The original database, written after cutover for fall-back.
    Source,
}

impl Destination {
    /// The name used in group names, CLI verbs and reports.
    pub fn as_str(self) -> &'static str {
        match self {
            Destination::Target => "target",
            Destination::SourceReplica => "source-replica",
            Destination::Source => "source",
        }
    }
}

impl fmt::Display for Destination {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Names derived from a migration's topic prefix.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Topics {
    prefix: String,
}

impl Topics {
    /// `prefix` is the configured topic prefix (`ferry.<migration id>` by default).
    pub fn new(prefix: impl Into<String>) -> Self {
        Topics {
            prefix: prefix.into(),
        }
    }

    /// The prefix itself.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The topic of one table in one stream.
    pub fn table(&self, stream: Stream, schema: &str, table: &str) -> String {
        format!(
            "{}.{}.{}.{}",
            self.prefix,
            stream,
            topic_part(schema),
            topic_part(table)
        )
    }

    /// The compacted topic holding the migration status record and exporter checkpoints.
    pub fn state(&self) -> String {
        format!("{}._state", self.prefix)
    }

    /// The compacted topic of heartbeats.
    pub fn status(&self) -> String {
        format!("{}._status", self.prefix)
    }

    /// The compacted topic where the built-in schema registry keeps schemas.
    pub fn schemas(&self) -> String {
        format!("{}._schemas", self.prefix)
    }

    /// The consumer group of the importer writing to `destination`.
    pub fn import_group(&self, destination: Destination) -> String {
        format!("{}.import.{}", self.prefix, destination)
    }
}

/// The replication slot and publication of one stream of one migration:
/// `ferry_<migration id>_<stream>`, the id lowercased with every character outside
/// `[a-z0-9]` replaced by `_` (slot names allow only those).
pub fn slot_name(migration_id: &str, stream: Stream) -> String {
    let id: String = migration_id
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .collect();
    format!("ferry_{id}_{}", stream.as_str())
}

/// Registry subject of a topic's keys (TopicNameStrategy).
pub fn key_subject(topic: &str) -> String {
    format!("{topic}-key")
}

/// Registry subject of a topic's values (TopicNameStrategy).
pub fn value_subject(topic: &str) -> String {
    format!("{topic}-value")
}

/// A schema or table name made safe for a topic name: Kafka allows `[A-Za-z0-9._-]`.
/// `.` (the separator) and other characters become `_` followed by their code point as six
/// hex digits, and a literal `_` is doubled, so that distinct names stay distinct
/// (`a b` -> `a_000020b`).
pub fn topic_part(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for c in name.chars() {
        match c {
            'A'..='Z' | 'a'..='z' | '0'..='9' | '-' => out.push(c),
            '_' => out.push_str("__"),
            other => {
                out.push_str(&format!("_{:06x}", other as u32));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_design() {
        let t = Topics::new("ferry.demo");
        assert_eq!(
            t.table(Stream::Source, "public", "orders"),
            "ferry.demo.source.public.orders"
        );
        assert_eq!(t.state(), "ferry.demo._state");
        assert_eq!(t.status(), "ferry.demo._status");
        assert_eq!(t.schemas(), "ferry.demo._schemas");
        assert_eq!(
            t.import_group(Destination::SourceReplica),
            "ferry.demo.import.source-replica"
        );
        assert_eq!(key_subject("a.b"), "a.b-key");
        assert_eq!(value_subject("a.b"), "a.b-value");
    }

    #[test]
    fn topic_parts_are_legal_and_distinct() {
        assert_eq!(topic_part("order_items"), "order__items");
        assert_eq!(topic_part("a b"), "a_000020b");
        assert_eq!(topic_part("a.b"), "a_00002eb");
        assert_ne!(topic_part("a_b"), topic_part("a b"));
        assert_ne!(topic_part("a\u{20b}"), topic_part("a b"));
        assert_ne!(topic_part("a_000020b"), topic_part("a b"));
        let odd = topic_part("Ünïcode\"x");
        assert!(odd
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c)));
    }
}
