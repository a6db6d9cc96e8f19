//! Writing the `ferry_metadata` schema in the destination ([`ferry_shared::metadata`]
//! has its tables and statements): where the importer's positions live.
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

use ferry_shared::metadata;
#[cfg(test)]
use ferry_shared::position::Vsn;
use tokio_postgres::{Client, GenericClient};

use super::prepared::Statements;
use crate::error::Failure;
use crate::sink::{Counts, Stored};

pub(crate) use ferry_shared::metadata::SETUP_SQL;

/// A database error, classified, with what was being done.
pub(crate) fn db_failure(what: &str, e: &tokio_postgres::Error) -> Failure {
    Failure::pg(what, e)
}

/// Reads the positions of `parts`, creating rows at offset 0 for partitions never seen.
pub(crate) async fn load_positions(
    client: &Client,
    group: &str,
    parts: &[(String, i32)],
) -> Result<Vec<Stored>, Failure> {
    metadata::load_positions(client, group, parts)
        .await
        .map_err(|e| Failure::of(e.class(), e.to_string()))
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
    let statement = statements
        .get(tx, metadata::ADVANCE_SQL)
        .await
        .map_err(fail)?;
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
    let statement = statements
        .get(tx, metadata::ADD_COUNTS_SQL)
        .await
        .map_err(fail)?;
    let [snapshot_rows, inserts, updates, deletes] = c.as_i64s();
    tx.execute(
        &statement,
        &[
            &group,
            &schema,
            &table,
            &snapshot_rows,
            &inserts,
            &updates,
            &deletes,
        ],
    )
    .await
    .map_err(fail)?;
    Ok(())
}

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
