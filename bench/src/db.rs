//! The databases of one phase, the checksums that decide whether a run was correct,
//! and the two PostgreSQL references (a binary COPY pipe and `pg_recvlogical`).

use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use ferry_testkit::{unique_name, Cluster};
use futures::{SinkExt, StreamExt, TryStreamExt};
use tokio_postgres::Client;

/// The benchmark's table shape: narrow rows (bigint PK, int, bigint, varchar(16),
/// timestamptz). The target may add columns after these.
pub const COLUMNS: &str = "id, a, b, s, ts";

/// `CREATE TABLE t` on the source (REPLICA IDENTITY FULL, as the exporter requires).
pub const SOURCE_DDL: &str = "CREATE TABLE t (id bigint PRIMARY KEY, a integer, b bigint, \
     s character varying(16), ts timestamptz); ALTER TABLE t REPLICA IDENTITY FULL;";

/// `CREATE TABLE t` on a destination.
pub const TARGET_DDL: &str = "CREATE TABLE t (id bigint PRIMARY KEY, a integer, b bigint, \
     s character varying(16), ts timestamptz);";

/// `CREATE TABLE t` on a destination that stamps each row's arrival: an `applied`
/// column set by an `ENABLE ALWAYS` trigger (it fires for the importer's
/// `session_replication_role = replica` too), for commit-to-applied latencies.
pub const STAMPED_TARGET_DDL: &str = "CREATE TABLE t (id bigint PRIMARY KEY, a integer, b bigint, \
     s character varying(16), ts timestamptz);
     ALTER TABLE t ADD COLUMN applied timestamptz;
     CREATE FUNCTION stamp() RETURNS trigger LANGUAGE plpgsql AS
       $$ BEGIN NEW.applied := clock_timestamp(); RETURN NEW; END $$;
     CREATE TRIGGER stamp BEFORE INSERT ON t FOR EACH ROW EXECUTE FUNCTION stamp();
     ALTER TABLE t ENABLE ALWAYS TRIGGER stamp;";

/// The SQL expression of row `g`'s columns `a, b, s, ts` (deterministic).
pub fn row_values(g: &str) -> String {
    format!(
        "({g} % 100000)::int, {g} * 7, substr(md5({g}::text), 1, 16), \
         timestamptz '2024-01-01 00:00:00+00' + {g} * interval '1 millisecond'"
    )
}

/// A database created for one phase, dropped by [`Database::drop`].
pub struct Database {
    pub cluster: Cluster,
    pub name: String,
}

impl Database {
    /// Creates a database with a fresh name on `cluster`.
    pub async fn create(cluster: &Cluster, prefix: &str) -> Result<Database> {
        let name = cluster.create_database(prefix).await?;
        Ok(Database {
            cluster: cluster.clone(),
            name,
        })
    }

    /// A new connection (its task is spawned on the current runtime).
    pub async fn connect(&self) -> Result<Client> {
        self.cluster.connect(&self.name).await
    }

    /// libpq connection string.
    pub fn conn_string(&self) -> String {
        self.cluster.conn_string(&self.name)
    }

    /// Drops the database, ending sessions still connected to it. Inactive slots of
    /// the database must be dropped first (a slot keeps its database).
    pub async fn drop(&self) -> Result<()> {
        let admin = self.cluster.connect("postgres").await?;
        // Slots of this database: wait until nobody holds them, then drop them.
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let rows = admin
                .query(
                    "SELECT slot_name::text, active, active_pid FROM pg_replication_slots \
                     WHERE database = $1",
                    &[&self.name],
                )
                .await?;
            if rows.is_empty() {
                break;
            }
            for r in &rows {
                let (slot, active): (String, bool) = (r.get(0), r.get(1));
                if !active {
                    let _ = admin
                        .execute("SELECT pg_drop_replication_slot($1)", &[&slot])
                        .await;
                } else if Instant::now() > deadline {
                    let pid: Option<i32> = r.get(2);
                    admin
                        .execute("SELECT pg_terminate_backend($1)", &[&pid])
                        .await?;
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        admin
            .batch_execute(&format!(
                "DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)",
                self.name
            ))
            .await
            .with_context(|| format!("dropping database {}", self.name))?;
        Ok(())
    }
}

/// Drops the databases (and with them their replication slots) an earlier run left on
/// `clusters` when it was killed before its cleanup: an inactive slot keeps every WAL
/// segment from its position on, and filled the disk of a machine with 40 GB of WAL.
/// The bench's stack is its own, so every `bench_*` database there is one of those.
/// Returns the names dropped.
pub async fn drop_leftovers(clusters: &[&Cluster]) -> Result<Vec<String>> {
    let mut dropped = Vec::new();
    for cluster in clusters {
        let admin = cluster.connect("postgres").await?;
        let names: Vec<String> = admin
            .query(
                "SELECT datname::text FROM pg_database WHERE datname LIKE 'bench\\_%' ORDER BY 1",
                &[],
            )
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect();
        for name in names {
            let db = Database {
                cluster: (*cluster).clone(),
                name,
            };
            db.drop().await?;
            dropped.push(db.name);
        }
    }
    Ok(dropped)
}

/// Row count and an order-independent checksum of table `t`'s benchmark columns,
/// computed in the database.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Checksum {
    pub rows: i64,
    pub sum: String,
}

/// [`Checksum`] of `t` in `db`.
pub async fn checksum(db: &Database) -> Result<Checksum> {
    let client = db.connect().await?;
    // The text form of timestamptz depends on the session's time zone.
    client.batch_execute("SET TimeZone = 'UTC'").await?;
    let row = client
        .query_one(
            &format!(
                "SELECT count(*), coalesce(sum(hashtextextended(({COLUMNS})::text, 0)), 0)::text \
                 FROM t"
            ),
            &[],
        )
        .await
        .with_context(|| format!("checksum of t in {}", db.name))?;
    Ok(Checksum {
        rows: row.get(0),
        sum: row.get(1),
    })
}

/// Fills `t` with rows `from..=to` over `connections` parallel sessions, then
/// VACUUM (FREEZE, ANALYZE) and CHECKPOINT, so that Ferry and the reference read the
/// same settled table (no hint bits left to set by whoever reads first).
pub async fn fill(db: &Database, from: i64, to: i64, connections: i64) -> Result<()> {
    let span = (to - from + 1).max(0);
    let per = span / connections + 1;
    let mut tasks = Vec::new();
    for c in 0..connections {
        let lo = from + c * per;
        let hi = (lo + per - 1).min(to);
        if lo > hi {
            continue;
        }
        let client = db.connect().await?;
        let sql = format!(
            "INSERT INTO t SELECT g, {} FROM generate_series({lo}::bigint, {hi}) g",
            row_values("g")
        );
        tasks.push(tokio::spawn(
            async move { client.batch_execute(&sql).await },
        ));
    }
    for t in tasks {
        t.await??;
    }
    let client = db.connect().await?;
    // One statement per call: VACUUM refuses an implicit transaction block.
    client.batch_execute("VACUUM (FREEZE, ANALYZE) t").await?;
    client.batch_execute("CHECKPOINT").await?;
    Ok(())
}

/// The reference for the snapshot: `COPY t TO STDOUT (FORMAT binary)` on `from`
/// streamed into `COPY t FROM STDIN (FORMAT binary)` on `to`. Returns rows and seconds.
pub async fn copy_pipe(from: &Database, to: &Database) -> Result<(u64, f64)> {
    let src = from.connect().await?;
    let dst = to.connect().await?;
    let started = Instant::now();
    let out = src
        .copy_out("COPY t TO STDOUT (FORMAT binary)")
        .await
        .context("COPY TO on the source")?;
    let sink = dst
        .copy_in::<_, Bytes>("COPY t FROM STDIN (FORMAT binary)")
        .await
        .context("COPY FROM on the target")?;
    futures::pin_mut!(out);
    futures::pin_mut!(sink);
    let mut chunks = out.map_err(anyhow::Error::from);
    while let Some(chunk) = chunks.next().await {
        sink.feed(chunk?).await.context("COPY FROM on the target")?;
    }
    let rows = sink
        .as_mut()
        .finish()
        .await
        .context("finishing COPY FROM")?;
    Ok((rows, started.elapsed().as_secs_f64()))
}

/// A publication and pgoutput slot of the reference reader, made before the load.
pub struct RefSlot {
    pub slot: String,
    pub publication: String,
}

impl RefSlot {
    /// Creates publication and slot for `t` in `db`.
    pub async fn create(db: &Database) -> Result<RefSlot> {
        RefSlot::create_named(db, "bench_ref").await
    }

    /// [`RefSlot::create`] with a fresh name that starts with `prefix` (the Debezium
    /// peer's own slot and publication).
    pub async fn create_named(db: &Database, prefix: &str) -> Result<RefSlot> {
        let slot = unique_name(prefix);
        let client = db.connect().await?;
        client
            .batch_execute(&format!("CREATE PUBLICATION {slot} FOR TABLE t"))
            .await?;
        client
            .execute(
                "SELECT pg_create_logical_replication_slot($1, 'pgoutput')",
                &[&slot],
            )
            .await?;
        Ok(RefSlot {
            publication: slot.clone(),
            slot,
        })
    }

    /// Runs `pg_recvlogical` from the slot up to `end_lsn` (output discarded) and
    /// returns its wall time in seconds.
    pub async fn read_to(&self, db: &Database, end_lsn: &str) -> Result<f64> {
        let started = Instant::now();
        let out = tokio::process::Command::new("pg_recvlogical")
            .args(["-d", &db.conn_string(), "--slot", &self.slot, "--start"])
            .args(["-o", "proto_version=1"])
            .args(["-o", &format!("publication_names={}", self.publication)])
            .args(["--endpos", end_lsn, "--no-loop", "-f", "/dev/null"])
            .stdin(Stdio::null())
            .output()
            .await
            .context("running pg_recvlogical (PostgreSQL client tools)")?;
        let secs = started.elapsed().as_secs_f64();
        if !out.status.success() {
            bail!(
                "pg_recvlogical failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(secs)
    }

    /// Drops slot and publication.
    pub async fn drop(&self, db: &Database) -> Result<()> {
        let client = db.connect().await?;
        client
            .execute("SELECT pg_drop_replication_slot($1)", &[&self.slot])
            .await?;
        client
            .batch_execute(&format!("DROP PUBLICATION IF EXISTS {}", self.publication))
            .await?;
        Ok(())
    }
}

/// The source's current WAL write position, as text.
pub async fn current_lsn(db: &Database) -> Result<String> {
    let client = db.connect().await?;
    let row = client
        .query_one("SELECT pg_current_wal_lsn()::text", &[])
        .await?;
    Ok(row.get(0))
}
