//! `ferry end migration`: every service stops its work, then the coordinator removes
//! what the migration left in the databases (replication slots, publications,
//! `ferry_metadata`) and, when asked, its Kafka topics.
//!
//! Idempotent: ending an ended migration again finishes whatever a crash left.

use std::time::Duration;

use ferry_shared::kafka;
use ferry_shared::topics::{slot_name, Destination, Stream};
use serde::{Deserialize, Serialize};

use crate::databases::{self, connect};
use crate::migration::Migration;

/// What to remove besides the database objects.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct EndRequest {
    /// Delete every topic of the migration (`<prefix>.*`), including `_state`: the
    /// record of the migration is gone afterwards.
    #[serde(default)]
    pub delete_topics: bool,
}

/// What was done, line by line.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct EndReport {
    /// Done.
    pub done: Vec<String>,
    /// Not done, with the reason and what to do.
    pub failed: Vec<String>,
}

/// Ends the migration.
pub async fn end(m: &Migration, req: &EndRequest) -> EndReport {
    let mut report = EndReport::default();
    match m.end().await {
        Ok(_) => report
            .done
            .push("migration marked ended: exporters and importers stop their work".into()),
        Err(e) => {
            report.failed.push(e.0);
            return report;
        }
    }
    // Give the services a moment to see it and close their sessions.
    tokio::time::sleep(Duration::from_secs(3)).await;
    for (destination, stream) in [
        (Destination::Source, Some(Stream::Source)),
        (Destination::Target, Some(Stream::Target)),
        (Destination::SourceReplica, None),
    ] {
        if m.config.database(destination).is_none() {
            continue;
        }
        let db = match connect(&m.config, destination).await {
            Ok(db) => db,
            Err(e) => {
                report.failed.push(e.describe());
                continue;
            }
        };
        if let Some(stream) = stream {
            let slot = slot_name(&m.config.migration.id, stream);
            let engine = m
                .config
                .database(destination)
                .map(|d| d.engine)
                .unwrap_or_default();
            match databases::drop_slot(&db, engine, &slot, true).await {
                Ok(databases::SlotDrop::Dropped) => report.done.push(format!(
                    "replication slot and publication {slot} dropped on the {destination} (if they existed)"
                )),
                Ok(databases::SlotDrop::InUse) => report.failed.push(format!(
                    "replication slot {slot} on the {destination} is still in use: stop \"ferry export data from {stream}\" and run \"ferry end migration\" again"
                )),
                Ok(databases::SlotDrop::Refused(reason)) => report.failed.push(format!(
                    "the {destination} refused to drop replication slot {slot} ({reason}); YugabyteDB allows it about 5 minutes after the slot's consumer stopped: run \"ferry end migration\" again then"
                )),
                Err(e) => report.failed.push(e.describe()),
            }
        }
        match db
            .client
            .batch_execute(ferry_shared::metadata::DROP_SQL)
            .await
        {
            Ok(()) => report.done.push(format!(
                "schema ferry_metadata dropped on the {destination}"
            )),
            Err(e) => report.failed.push(format!(
                "dropping schema ferry_metadata on the {destination}: {e}"
            )),
        }
    }
    if req.delete_topics {
        let prefix = format!("{}.", m.topics.prefix());
        match kafka::list_topics(m.kafka(), &prefix).await {
            Ok(names) => match kafka::delete_topics(m.kafka(), &names).await {
                Ok(()) => report
                    .done
                    .push(format!("{} topic(s) {prefix}* deleted", names.len())),
                Err(e) => report.failed.push(format!("deleting topics: {e}")),
            },
            Err(e) => report.failed.push(format!("listing topics: {e}")),
        }
    }
    report
}
