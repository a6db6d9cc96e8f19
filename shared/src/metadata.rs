//! The `ferry_metadata` schema in a destination database: where importers keep their
//! positions and counts, and the one place that knows its tables.
//!
//! Invariant (DESIGN.md §4, §4a): a partition's position (next offset, last applied
//! VSN) and a table's counts are written only in the destination transaction that
//! writes the rows they describe, so what is read here is exactly what was applied.
//! Positions move only by compare-and-set ([`ADVANCE_SQL`] matches the `next_offset`
//! the importer read), so two importers can never both apply the same events. Kafka's
//! committed offsets are a copy for monitoring, never the truth.
//!
//! Writers: the importer (set-up, positions, counts). Readers: the importer on every
//! partition assignment, the coordinator (cutover drain checks, status, the report),
//! `ferry archive changes` (what every importer applied). `ferry end migration` drops
//! the schema ([`DROP_SQL`]).

use std::collections::BTreeMap;

use tokio_postgres::GenericClient;

use crate::envelope::OpCounts;
use crate::error_policy::{classify_pg, describe_pg, ErrorClass};
use crate::position::Vsn;

/// The schema's name.
pub const SCHEMA: &str = "ferry_metadata";

/// Creates the schema and tables if they don't exist. Safe to run from several
/// importers at once (serialized by an advisory lock). Not inside a batch: it is DDL.
pub const SETUP_SQL: &str = "
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

/// What `ferry import schema` applied to this database: one row per statement of an
/// exported schema file (`nth`: which occurrence of that text in the file), written in
/// the statement's own transaction on PostgreSQL, so a rerun does only the rest.
pub const SCHEMA_STATEMENTS_SETUP_SQL: &str = "
SET client_min_messages = warning;
CREATE SCHEMA IF NOT EXISTS ferry_metadata;
CREATE TABLE IF NOT EXISTS ferry_metadata.schema_statements (
    file text NOT NULL,
    statement_md5 text NOT NULL,
    nth integer NOT NULL,
    phase text NOT NULL,
    object text NOT NULL,
    outcome text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (file, statement_md5, nth)
);
";

/// The table whose rows mark where a cutover stops a stream: each stop writes one row
/// with a unique token on the database the stream is read from, and the stream ends
/// when that row arrives (every transaction committed before it has arrived then). The
/// table is part of the stream's publication and has REPLICA IDENTITY FULL, both set
/// before the slot exists (YugabyteDB freezes replica identity at slot creation).
pub const STOP_MARKERS: (&str, &str) = ("ferry_metadata", "stop_markers");

/// Creates [`STOP_MARKERS`] if it does not exist (run by an exporter before it creates
/// its publication).
pub const STOP_MARKERS_SETUP_SQL: &str = "
SET client_min_messages = warning;
CREATE SCHEMA IF NOT EXISTS ferry_metadata;
CREATE TABLE IF NOT EXISTS ferry_metadata.stop_markers (
    token text PRIMARY KEY,
    stream text NOT NULL,
    written_at timestamptz NOT NULL DEFAULT now()
);
";

/// Whether [`STOP_MARKERS`] has REPLICA IDENTITY FULL (`f`).
pub const STOP_MARKERS_IDENTITY_SQL: &str = "SELECT c.relreplident = 'f' FROM pg_class c \
     JOIN pg_namespace n ON n.oid = c.relnamespace \
     WHERE n.nspname = 'ferry_metadata' AND c.relname = 'stop_markers'";

/// Removes the schema and everything in it (`ferry end migration`).
pub const DROP_SQL: &str =
    "SET client_min_messages = warning; DROP SCHEMA IF EXISTS ferry_metadata CASCADE";

/// Creates position rows at offset 0 for partitions never seen:
/// `$1` group, `$2` topics, `$3` partitions (parallel arrays).
pub const CREATE_POSITIONS_SQL: &str =
    "INSERT INTO ferry_metadata.positions (consumer_group, topic, partition, next_offset, last_vsn) \
     SELECT $1, t, p, 0, 0 FROM unnest($2::text[], $3::int[]) AS u(t, p) \
     ON CONFLICT DO NOTHING";

/// The positions of some partitions: `$1` group, `$2` topics, `$3` partitions.
pub const READ_POSITIONS_OF_SQL: &str = "SELECT p.topic, p.partition, p.next_offset, p.last_vsn \
     FROM ferry_metadata.positions p \
     JOIN unnest($2::text[], $3::int[]) AS u(t, n) ON p.topic = u.t AND p.partition = u.n \
     WHERE p.consumer_group = $1";

/// Moves one partition's position by compare-and-set: `$1` group, `$2` topic,
/// `$3` partition, `$4` new next offset, `$5` new last VSN, `$6` the next offset the
/// writer read. Updates one row, or none when another importer moved it.
pub const ADVANCE_SQL: &str =
    "UPDATE ferry_metadata.positions SET next_offset = $4, last_vsn = $5, updated_at = now() \
     WHERE consumer_group = $1 AND topic = $2 AND partition = $3 AND next_offset = $6";

/// Adds a batch's counts for one table: `$1` group, `$2` schema, `$3` table, then
/// snapshot rows, inserts, updates, deletes.
pub const ADD_COUNTS_SQL: &str = "INSERT INTO ferry_metadata.table_counts AS t \
       (consumer_group, schema_name, table_name, snapshot_rows, inserts, updates, deletes) \
     VALUES ($1, $2, $3, $4, $5, $6, $7) \
     ON CONFLICT (consumer_group, schema_name, table_name) DO UPDATE SET \
       snapshot_rows = t.snapshot_rows + EXCLUDED.snapshot_rows, \
       inserts = t.inserts + EXCLUDED.inserts, \
       updates = t.updates + EXCLUDED.updates, \
       deletes = t.deletes + EXCLUDED.deletes, \
       updated_at = now()";

/// A partition's stored position.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredPosition {
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: i32,
    /// Offset of the next event to apply.
    pub next_offset: i64,
    /// VSN of the last applied event (`Vsn::ZERO`: none).
    pub last_vsn: Vsn,
}

impl StoredPosition {
    fn from_row(r: &tokio_postgres::Row) -> Self {
        StoredPosition {
            topic: r.get(0),
            partition: r.get(1),
            next_offset: r.get(2),
            last_vsn: Vsn::from_i64(r.get(3)).unwrap_or(Vsn::ZERO),
        }
    }
}

/// Reading or writing `ferry_metadata` failed.
#[derive(Debug, thiserror::Error)]
#[error("{what} ferry_metadata: {}", describe_pg(.source))]
pub struct MetadataError {
    /// What was being done (`reading positions from`, ...).
    pub what: &'static str,
    /// The database's error.
    #[source]
    pub source: tokio_postgres::Error,
}

impl MetadataError {
    /// Its class under the one error policy.
    pub fn class(&self) -> ErrorClass {
        classify_pg(&self.source)
    }
}

fn failed(what: &'static str) -> impl FnOnce(tokio_postgres::Error) -> MetadataError {
    move |source| MetadataError { what, source }
}

/// `rows` of a read, or none when the table is not there (no importer ran in this
/// database yet): one round trip, no separate existence check.
fn rows_or_none(
    rows: Result<Vec<tokio_postgres::Row>, tokio_postgres::Error>,
    what: &'static str,
) -> Result<Vec<tokio_postgres::Row>, MetadataError> {
    match rows {
        Ok(rows) => Ok(rows),
        Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::UNDEFINED_TABLE) => {
            Ok(Vec::new())
        }
        Err(source) => Err(MetadataError { what, source }),
    }
}

/// Every stored position of `group` (none when no importer ran here).
pub async fn positions(
    client: &impl GenericClient,
    group: &str,
) -> Result<Vec<StoredPosition>, MetadataError> {
    let rows = rows_or_none(
        client
            .query(
                "SELECT topic, partition, next_offset, last_vsn FROM ferry_metadata.positions \
                 WHERE consumer_group = $1",
                &[&group],
            )
            .await,
        "reading positions from",
    )?;
    Ok(rows.iter().map(StoredPosition::from_row).collect())
}

/// The positions of `parts` in `group`, creating rows at offset 0 for partitions never
/// seen (an importer taking partitions).
pub async fn load_positions(
    client: &impl GenericClient,
    group: &str,
    parts: &[(String, i32)],
) -> Result<Vec<StoredPosition>, MetadataError> {
    let topics: Vec<&str> = parts.iter().map(|(t, _)| t.as_str()).collect();
    let partitions: Vec<i32> = parts.iter().map(|(_, p)| *p).collect();
    client
        .execute(CREATE_POSITIONS_SQL, &[&group, &topics, &partitions])
        .await
        .map_err(failed("creating position rows in"))?;
    let rows = client
        .query(READ_POSITIONS_OF_SQL, &[&group, &topics, &partitions])
        .await
        .map_err(failed("reading positions from"))?;
    Ok(rows.iter().map(StoredPosition::from_row).collect())
}

/// Events applied by `group` over every table (0 when no importer ran here).
pub async fn total_applied(client: &impl GenericClient, group: &str) -> Result<u64, MetadataError> {
    let rows = rows_or_none(
        client
            .query(
                "SELECT coalesce(sum(snapshot_rows + inserts + updates + deletes), 0)::bigint \
                 FROM ferry_metadata.table_counts WHERE consumer_group = $1",
                &[&group],
            )
            .await,
        "reading table counts from",
    )?;
    let total: i64 = rows.first().map_or(0, |r| r.get(0));
    Ok(u64::try_from(total).unwrap_or(0))
}

/// Events applied by `group` per table (`(schema, table)`), none when no importer ran
/// here.
pub async fn table_counts(
    client: &impl GenericClient,
    group: &str,
) -> Result<BTreeMap<(String, String), OpCounts>, MetadataError> {
    let rows = rows_or_none(
        client
            .query(
                "SELECT schema_name, table_name, snapshot_rows, inserts, updates, deletes \
                 FROM ferry_metadata.table_counts WHERE consumer_group = $1",
                &[&group],
            )
            .await,
        "reading table counts from",
    )?;
    let count = |r: &tokio_postgres::Row, i: usize| u64::try_from(r.get::<_, i64>(i)).unwrap_or(0);
    Ok(rows
        .iter()
        .map(|r| {
            (
                (r.get(0), r.get(1)),
                OpCounts {
                    snapshot_rows: count(r, 2),
                    inserts: count(r, 3),
                    updates: count(r, 4),
                    deletes: count(r, 5),
                },
            )
        })
        .collect())
}
