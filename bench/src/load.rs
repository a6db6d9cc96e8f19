//! The single-row load the single, cutover and calibration phases put on the source:
//! `connections` server-side sessions, each committing one-row inserts into `t` for
//! `seconds` (ids from `base`, interleaved by session), paced to `rate` transactions per
//! second in all, or as fast as they can when `rate` is `None`. Each row's `ts` is
//! `clock_timestamp()` at insert (≈ its commit), for the commit-to-apply latency.

use anyhow::{Context, Result};

use crate::db::Database;

/// Runs the load to its end.
pub async fn single_rows(
    db: &Database,
    base: i64,
    seconds: u64,
    connections: i64,
    rate: Option<u64>,
) -> Result<()> {
    // Every 20 commits a paced session sleeps off what it is ahead of its share.
    let pacing = match rate {
        Some(rate) => format!(
            "IF i % 20 = 0 THEN
               ahead := i / {per_connection}::float8 - extract(epoch FROM clock_timestamp() - t0);
               IF ahead > 0 THEN PERFORM pg_sleep(ahead); END IF;
             END IF;",
            per_connection = rate as f64 / connections as f64
        ),
        None => String::new(),
    };
    let mut tasks = Vec::new();
    for c in 0..connections {
        let client = db.connect().await?;
        // PostgreSQL's default, as on a production source. The stack sets it off for
        // bulk speed; then a commit reaches the WAL (and every logical decoder) only
        // when the WAL writer flushes, up to `wal_writer_delay` (200 ms) later.
        client.batch_execute("SET synchronous_commit = on").await?;
        let sql = format!(
            "DO $$ DECLARE i bigint := 0; id bigint; t0 timestamptz := clock_timestamp(); ahead float8;
             BEGIN
               WHILE clock_timestamp() < t0 + interval '{seconds} seconds' LOOP
                 id := {base} + i * {connections} + {c};
                 INSERT INTO t VALUES (id, (id % 100000)::int, id * 7,
                                       substr(md5(id::text), 1, 16), clock_timestamp());
                 COMMIT;
                 i := i + 1;
                 {pacing}
               END LOOP;
             END $$"
        );
        tasks.push(tokio::spawn(
            async move { client.batch_execute(&sql).await },
        ));
    }
    for t in tasks {
        t.await?.context("the single-row load")?;
    }
    Ok(())
}
