//! The `ferry_metadata` schema in the destination: where the importer's positions live.
//!
//! Invariant (DESIGN.md §4, §4a): a partition's position (next offset, last applied VSN)
//! is written only in the destination transaction that writes the rows it describes, and
//! is read back from here on every partition assignment. Kafka's committed offsets are a
//! copy for monitoring, never the truth.
//!
//! Positions move only by compare-and-set: a batch updates a partition's row only if its
//! `next_offset` still holds the value this importer read. When a rebalance moved the
//! partition to another importer that already wrote past it, the update finds nothing,
//! the batch rolls back, and this importer reloads its positions ([`Failure::Conflict`]).
//! So two importers can never both apply the same events, whatever the timing of the
//! rebalance.

use ferry_shared::position::Vsn;
use tokio_postgres::{Client, GenericClient};

use super::prepared::Statements;
use crate::error::{classify_pg, describe_pg, Class, Failure};
use crate::sink::{Counts, Stored};

/// Creates the schema and tables if they don't exist. Safe to run from several
/// importers at once (serialized by an advisory lock).
pub(crate) const SETUP_SQL: &str = "
SET client_min_messages = warning;
BEGIN;
SELECT pg_advisory_xact_lock(7283451290042);
CREATE SCHEMA IF NOT EXISTS ferry_metadata;
CREATE TABLE IF NOT EXISTS ferry_metadata.positions (
    consumer_group text NOT NULL,
    topic text NOT NULL,
    partition integer NOT NULL,
    next_offset bigint NOT NULL,
    last_vsn bigint NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer_group, topic, partition)
);
CREATE TABLE IF NOT EXISTS ferry_metadata.table_counts (
    consumer_group text NOT NULL,
    schema_name text NOT NULL,
    table_name text NOT NULL,
    snapshot_rows bigint NOT NULL DEFAULT 0,
    inserts bigint NOT NULL DEFAULT 0,
    updates bigint NOT NULL DEFAULT 0,
    deletes bigint NOT NULL DEFAULT 0,
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer_group, schema_name, table_name)
);
COMMIT;
";

/// A database error, classified, with what was being done.
pub(crate) fn db_failure(what: &str, e: &tokio_postgres::Error) -> Failure {
    let text = format!("{what}: {}", describe_pg(e));
    match classify_pg(e) {
        Class::Transient => Failure::Transient(text),
        Class::Definite => Failure::Definite(text),
    }
}

/// Reads the positions of `parts`, creating rows at offset 0 for partitions never seen.
pub(crate) async fn load_positions(
    client: &Client,
    group: &str,
    parts: &[(String, i32)],
) -> Result<Vec<Stored>, Failure> {
    let topics: Vec<&str> = parts.iter().map(|(t, _)| t.as_str()).collect();
    let partitions: Vec<i32> = parts.iter().map(|(_, p)| *p).collect();
    client
        .execute(
            "INSERT INTO ferry_metadata.positions (consumer_group, topic, partition, next_offset, last_vsn) \
             SELECT $1, t, p, 0, 0 FROM unnest($2::text[], $3::int[]) AS u(t, p) \
             ON CONFLICT DO NOTHING",
            &[&group, &topics, &partitions],
        )
        .await
        .map_err(|e| db_failure("creating position rows in ferry_metadata", &e))?;
    let rows = client
        .query(
            "SELECT p.topic, p.partition, p.next_offset, p.last_vsn \
             FROM ferry_metadata.positions p \
             JOIN unnest($2::text[], $3::int[]) AS u(t, n) ON p.topic = u.t AND p.partition = u.n \
             WHERE p.consumer_group = $1",
            &[&group, &topics, &partitions],
        )
        .await
        .map_err(|e| db_failure("reading positions from ferry_metadata", &e))?;
    Ok(rows
        .into_iter()
        .map(|r| Stored {
            topic: r.get(0),
            partition: r.get(1),
            next_offset: r.get(2),
            last_vsn: Vsn::from_i64(r.get(3)).unwrap_or(Vsn::ZERO),
        })
        .collect())
}

/// Moves one partition's position from `expected_next` to `new`, inside the batch's
/// transaction. `Conflict` when the stored position is no longer `expected_next`.
pub(crate) async fn advance(
    tx: &impl GenericClient,
    statements: &mut Statements,
    group: &str,
    expected_next: i64,
    new: &Stored,
) -> Result<(), Failure> {
    let fail = |e: tokio_postgres::Error| db_failure("writing positions to ferry_metadata", &e);
    let statement = statements.get(tx, ADVANCE).await.map_err(fail)?;
    let n = tx
        .execute(
            &statement,
            &[
                &group,
                &new.topic,
                &new.partition,
                &new.next_offset,
                &new.last_vsn.as_i64(),
                &expected_next,
            ],
        )
        .await
        .map_err(fail)?;
    if n == 1 {
        Ok(())
    } else {
        Err(Failure::Conflict(format!(
            "{}[{}]",
            new.topic, new.partition
        )))
    }
}

const ADVANCE: &str =
    "UPDATE ferry_metadata.positions SET next_offset = $4, last_vsn = $5, updated_at = now() \
     WHERE consumer_group = $1 AND topic = $2 AND partition = $3 AND next_offset = $6";

/// Adds a batch's counts for one table, inside the batch's transaction.
pub(crate) async fn add_counts(
    tx: &impl GenericClient,
    statements: &mut Statements,
    group: &str,
    schema: &str,
    table: &str,
    c: &Counts,
) -> Result<(), Failure> {
    let fail = |e: tokio_postgres::Error| db_failure("writing counts to ferry_metadata", &e);
    let statement = statements.get(tx, ADD_COUNTS).await.map_err(fail)?;
    tx.execute(
        &statement,
        &[
            &group,
            &schema,
            &table,
            &c.snapshot_rows,
            &c.inserts,
            &c.updates,
            &c.deletes,
        ],
    )
    .await
    .map_err(fail)?;
    Ok(())
}

const ADD_COUNTS: &str = "INSERT INTO ferry_metadata.table_counts AS t \
       (consumer_group, schema_name, table_name, snapshot_rows, inserts, updates, deletes) \
     VALUES ($1, $2, $3, $4, $5, $6, $7) \
     ON CONFLICT (consumer_group, schema_name, table_name) DO UPDATE SET \
       snapshot_rows = t.snapshot_rows + EXCLUDED.snapshot_rows, \
       inserts = t.inserts + EXCLUDED.inserts, \
       updates = t.updates + EXCLUDED.updates, \
       deletes = t.deletes + EXCLUDED.deletes, \
       updated_at = now()";

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;
    use ferry_testkit::Stack;

    #[tokio::test]
    async fn positions_move_only_from_the_value_read() {
        let stack = Stack::get();
        let db = stack.target.create_database("imp_meta").await.unwrap();
        let client = stack.target.connect(&db).await.unwrap();
        client.batch_execute(SETUP_SQL).await.unwrap();
        client.batch_execute(SETUP_SQL).await.unwrap(); // idempotent
        let parts = vec![("t".to_owned(), 0), ("t".to_owned(), 1)];
        let mut read = load_positions(&client, "g", &parts).await.unwrap();
        read.sort_by_key(|s| s.partition);
        assert_eq!(read.len(), 2);
        assert!(read
            .iter()
            .all(|s| s.next_offset == 0 && s.last_vsn == Vsn::ZERO));

        // Importer A read 0 and moves it to 10.
        let a = Stored {
            topic: "t".into(),
            partition: 0,
            next_offset: 10,
            last_vsn: Vsn(7),
        };
        advance(&client, &mut Statements::default(), "g", 0, &a)
            .await
            .unwrap();
        // Importer B also read 0 (before A's commit) and must not write.
        let b = Stored {
            next_offset: 5,
            last_vsn: Vsn(3),
            ..a.clone()
        };
        assert!(matches!(
            advance(&client, &mut Statements::default(), "g", 0, &b).await,
            Err(Failure::Conflict(_))
        ));
        // Another group is independent; a reload sees A's position.
        assert_eq!(
            load_positions(&client, "other", &parts[..1]).await.unwrap()[0].next_offset,
            0
        );
        assert_eq!(
            load_positions(&client, "g", &parts[..1]).await.unwrap(),
            vec![a]
        );
    }
}
