//! The single-row phase: paced one-row transactions while Ferry runs, their
//! commit-to-apply latency, and the offered rate sized from pg_recvlogical's.

use super::*;

/// The single-row CDC phase's figures.
#[derive(Debug, Serialize)]
pub struct SingleResult {
    pub seconds: f64,
    pub offered_rate: f64,
    pub connections: i64,
    pub events: i64,
    /// Events per second the source committed (the load's achieved rate).
    pub source_events_per_second: f64,
    /// Events per second applied on the target, first source commit to last apply.
    pub ferry_events_per_second: f64,
    pub latency_p50_ms: f64,
    pub latency_p99_ms: f64,
    pub latency_max_ms: f64,
    /// p99 latency of the first and the last fifth of the run (by source commit time).
    pub first_fifth_p99_ms: f64,
    pub last_fifth_p99_ms: f64,
    /// Least-squares slope of latency over the run, ms per second.
    pub latency_slope_ms_per_s: f64,
    pub lag_grows: bool,
    /// Where the latency goes, p50 and p99 (ms): source commit → the exporter produced
    /// the event (its Kafka timestamp), then produced → applied on the target.
    pub split: LatencySplit,
    /// Time from the end of the load until the target had every event.
    pub drain_seconds: f64,
    pub recvlogical_seconds: f64,
    pub recvlogical_events_per_second: f64,
    pub usage: Usage,
    pub checksum: Checksum,
}

/// Single-row transactions: inserts paced at `rate` per second over `connections`
/// sessions for `seconds`, each row stamped with `clock_timestamp()` at insert; the
/// target stamps `applied` with `clock_timestamp()` in an `ENABLE ALWAYS` trigger.
/// pg_recvlogical's rate on single-row transactions here: `connections` sessions commit
/// single-row inserts as fast as they can for `seconds` in a database of its own, then
/// pg_recvlogical decodes them from a slot made before; events over its wall time.
async fn recvlogical_single_rate(
    ctx: &Ctx,
    p: &mut Phase,
    seconds: u64,
    connections: i64,
) -> Result<f64> {
    let cal = p.db(&ctx.stack.source, "bench_one_cal").await?;
    p.dbs[cal]
        .connect()
        .await?
        .batch_execute(db::SOURCE_DDL)
        .await?;
    let slot = RefSlot::create(&p.dbs[cal]).await?;
    crate::load::single_rows(&p.dbs[cal], 1, seconds, connections, None).await?;
    let end_lsn = db::current_lsn(&p.dbs[cal]).await?;
    let events: i64 = p.dbs[cal]
        .connect()
        .await?
        .query_one("SELECT count(*) FROM t", &[])
        .await?
        .get(0);
    let secs = slot.read_to(&p.dbs[cal], &end_lsn).await?;
    slot.drop(&p.dbs[cal]).await?;
    Ok(events as f64 / secs.max(1e-3))
}

/// The single-row phase; `rate` 0: half of pg_recvlogical's single-row rate here
/// ([`recvlogical_single_rate`]), so the offered load fits the machine.
pub async fn single(ctx: &Ctx, seconds: u64, rate: u64, connections: i64) -> Result<SingleResult> {
    const PREFILL: i64 = 1000;
    with_phase(async |p: &mut Phase| {
        let rate = if rate > 0 {
            rate
        } else {
            ctx.say("single: pg_recvlogical's rate on single-row transactions (5 s of load)");
            let reference = recvlogical_single_rate(ctx, p, 5, connections).await?;
            let half = (reference / 2.0).round().max(100.0) as u64;
            ctx.say(&format!(
                "single: pg_recvlogical decodes {reference:.0} single-row transactions/s; offering half: {half}/s"
            ));
            half
        };
        let (src, dsts) = p
            .filled(
                ctx,
                "single",
                ("bench_one_src", PREFILL),
                &["bench_one_dst"],
                db::STAMPED_TARGET_DDL,
            )
            .await?;
        let dst = dsts[0];
        let target = p.dbs[dst].connect().await?;

        ctx.say("single: Ferry's snapshot of the prefill");
        p.start_ferry(ctx, src, dst).await?;
        let since = Instant::now();
        let ferry = p.ferry()?;
        ferry.start_exporter();
        ferry.start_importer_after_topic("t").await?;
        wait_applied(ctx, ferry, &target, since, "the prefill snapshot", |c| c.0 >= PREFILL, |_| true)
            .await?;
        let reference = RefSlot::create(&p.dbs[src]).await?;

        ctx.say(&format!(
            "single: {rate} single-row transactions per second for {seconds} s"
        ));
        let mark = CpuMark::start()?;
        crate::load::single_rows(&p.dbs[src], PREFILL + 1, seconds, connections, Some(rate)).await?;
        let load_end = Instant::now();
        let end_lsn = db::current_lsn(&p.dbs[src]).await?;
        let source = p.dbs[src].connect().await?;
        let events: i64 = source
            .query_one("SELECT count(*) FROM t WHERE id > $1", &[&PREFILL])
            .await?
            .get(0);
        let ferry = p.ferry()?;
        let topic = ferry
            .topics
            .table(ferry_shared::topics::Stream::Source, "public", "t");
        let kafka = ferry.config.kafka.client_config();
        let (drain, _) = wait_applied(
            ctx,
            ferry,
            &target,
            load_end,
            "the single-row changes on the target",
            |c| c.1 >= events,
            |_| true,
        )
        .await?;
        let usage = mark.finish()?;
        ferry.stop().await?;

        let row = target
            .query_one(
                "WITH x AS (
                   SELECT ts, applied, extract(epoch FROM applied - ts)::float8 * 1000 AS ms,
                          ntile(5) OVER (ORDER BY ts) AS fifth
                   FROM t WHERE id > $1)
                 SELECT count(*),
                   percentile_cont(0.5) WITHIN GROUP (ORDER BY ms),
                   percentile_cont(0.99) WITHIN GROUP (ORDER BY ms),
                   max(ms),
                   extract(epoch FROM max(ts) - min(ts))::float8,
                   extract(epoch FROM max(applied) - min(ts))::float8,
                   regr_slope(ms, extract(epoch FROM ts)::float8),
                   percentile_cont(0.99) WITHIN GROUP (ORDER BY ms) FILTER (WHERE fifth = 1),
                   percentile_cont(0.99) WITHIN GROUP (ORDER BY ms) FILTER (WHERE fifth = 5),
                   count(*) FILTER (WHERE applied IS NULL)
                 FROM x",
                &[&PREFILL],
            )
            .await?;
        let applied_rows: i64 = row.get(0);
        let unstamped: i64 = row.get(9);
        if applied_rows != events || unstamped > 0 {
            bail!("the target has {applied_rows} of {events} single-row events ({unstamped} without an apply time: is the ENABLE ALWAYS trigger firing?)");
        }
        let get = |i: usize| -> f64 { row.get::<_, Option<f64>>(i).unwrap_or(0.0) };
        let (source_span, apply_span) = (get(4).max(1e-3), get(5).max(1e-3));
        let slope = get(6);

        ctx.say("single: reference pg_recvlogical");
        let ref_secs = reference.read_to(&p.dbs[src], &end_lsn).await?;
        reference.drop(&p.dbs[src]).await?;
        let checksum = verify(&p.dbs[src], &p.dbs[dst]).await?;
        let (first_p99, last_p99) = (get(7), get(8));
        let split = latency_split(&kafka, &topic, &target, PREFILL).await?;
        Ok(SingleResult {
            seconds: seconds as f64,
            offered_rate: rate as f64,
            connections,
            events,
            source_events_per_second: events as f64 / source_span,
            ferry_events_per_second: events as f64 / apply_span,
            latency_p50_ms: get(1),
            latency_p99_ms: get(2),
            latency_max_ms: get(3),
            first_fifth_p99_ms: first_p99,
            last_fifth_p99_ms: last_p99,
            latency_slope_ms_per_s: slope,
            // Growing: the latency rises by more than 100 ms over the run and ends
            // well above where it started.
            lag_grows: slope * source_span > 100.0 && last_p99 > 2.0 * first_p99,
            split,
            drain_seconds: drain,
            recvlogical_seconds: ref_secs,
            recvlogical_events_per_second: events as f64 / ref_secs,
            usage,
            checksum,
        })
    })
    .await
}

/// p50 and p99 of the two halves of the single-row latency, in ms.
#[derive(Debug, Serialize, Default)]
pub struct LatencySplit {
    /// Source commit (`ts`) → the record's Kafka timestamp (set by the exporter's
    /// producer when it produced the event): PostgreSQL's WAL flush and decoding, the
    /// exporter's reading, stamping and producing.
    pub to_kafka_p50_ms: f64,
    pub to_kafka_p99_ms: f64,
    /// The record's Kafka timestamp → `applied` on the target: the producer's batching,
    /// the broker, the importer's fetch, batching and commit.
    pub from_kafka_p50_ms: f64,
    pub from_kafka_p99_ms: f64,
    /// Where the tail comes from: pauses of the two streams of stamps.
    pub stalls: Stalls,
}

/// Pauses of at least [`STALL_MS`] in the single phase's streams of stamps while the
/// load ran without a pause (it commits at a steady rate): a pause in the Kafka
/// timestamps is one upstream of the producer (WAL, the walsender, the exporter); a
/// pause in the apply times during which records produced after its start sat in Kafka
/// is one downstream (the broker, the importer, the target).
#[derive(Debug, Serialize, Default)]
pub struct Stalls {
    /// Pauses with nothing produced, and the longest (ms).
    pub produced: i64,
    pub produced_longest_ms: f64,
    /// Pauses with nothing applied, and the longest (ms).
    pub applied: i64,
    pub applied_longest_ms: f64,
    /// Of `applied`, those during which records produced after the pause began waited.
    pub applied_with_records_waiting: i64,
}

/// The shortest pause [`Stalls`] counts, ms: at the phase's rates (thousands of
/// events a second) a pause this long is never a gap between two events.
pub const STALL_MS: f64 = 100.0;

/// Reads every record of `topic` (the key of `t` is one Avro `long`) with its Kafka
/// timestamp, loads `(id, timestamp)` into a temporary table on the target and splits
/// each row's latency there (Kafka timestamps are milliseconds).
async fn latency_split(
    kafka: &rdkafka::ClientConfig,
    topic: &str,
    target: &tokio_postgres::Client,
    after_id: i64,
) -> Result<LatencySplit> {
    let marks = ferry_shared::kafka::watermarks(kafka, topic).await?;
    let parts: Vec<(String, i32, i64, i64)> = marks
        .iter()
        .enumerate()
        .map(|(p, (low, high))| (topic.to_owned(), p as i32, *low, *high))
        .collect();
    let kafka = kafka.clone();
    let stamps = tokio::task::spawn_blocking(move || -> Result<Vec<(i64, i64)>> {
        use rdkafka::Message;
        let mut stamps = Vec::new();
        let mut bad = 0u64;
        crate::replay::plain_read(&kafka, &parts, |m| {
            let id = m
                .key()
                .and_then(|k| ferry_shared::codec::split_header(k).ok())
                .and_then(|(_, body)| ferry_shared::avro::Reader::new(body).long().ok());
            match (id, m.timestamp().to_millis()) {
                (Some(id), Some(ms)) => stamps.push((id, ms)),
                _ => bad += 1,
            }
        })?;
        if bad > 0 {
            bail!("{bad} records of the table topic without a readable key or timestamp");
        }
        Ok(stamps)
    })
    .await??;
    target
        .batch_execute("CREATE TEMP TABLE kafka_ts (id bigint, ms bigint)")
        .await?;
    let sink = target
        .copy_in("COPY kafka_ts (id, ms) FROM STDIN (FORMAT text)")
        .await?;
    let mut text = String::with_capacity(stamps.len() * 24);
    for (id, ms) in &stamps {
        use std::fmt::Write;
        let _ = writeln!(text, "{id}\t{ms}");
    }
    use futures::SinkExt;
    futures::pin_mut!(sink);
    sink.send(bytes::Bytes::from(text)).await?;
    sink.finish().await?;
    // The last record of an id counts (a retried produce would repeat one).
    let row = target
        .query_one(
            "WITH k AS (SELECT id, max(ms) AS ms FROM kafka_ts GROUP BY id),
                  x AS (SELECT extract(epoch FROM t.ts)::float8 * 1000 AS commit_ms,
                               extract(epoch FROM t.applied)::float8 * 1000 AS applied_ms,
                               k.ms::float8 AS kafka_ms
                        FROM t JOIN k USING (id) WHERE t.id > $1)
             SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY kafka_ms - commit_ms),
                    percentile_cont(0.99) WITHIN GROUP (ORDER BY kafka_ms - commit_ms),
                    percentile_cont(0.5) WITHIN GROUP (ORDER BY applied_ms - kafka_ms),
                    percentile_cont(0.99) WITHIN GROUP (ORDER BY applied_ms - kafka_ms)
             FROM x",
            &[&after_id],
        )
        .await?;
    let get = |i: usize| -> f64 { row.get::<_, Option<f64>>(i).unwrap_or(0.0) };
    let stalls = stalls(target, after_id).await?;
    target.batch_execute("DROP TABLE kafka_ts").await?;
    Ok(LatencySplit {
        to_kafka_p50_ms: get(0),
        to_kafka_p99_ms: get(1),
        from_kafka_p50_ms: get(2),
        from_kafka_p99_ms: get(3),
        stalls,
    })
}

/// [`Stalls`] of the rows of `t` above `after_id` and their Kafka timestamps in
/// `kafka_ts`, computed on the target.
async fn stalls(target: &tokio_postgres::Client, after_id: i64) -> Result<Stalls> {
    // An index on the Kafka timestamps, so that each apply pause looks up the records
    // produced inside it instead of scanning them all.
    target
        .batch_execute("CREATE INDEX kafka_ts_ms ON kafka_ts (ms)")
        .await?;
    // Kafka timestamps are whole milliseconds: `ms > floor(x)` is `ms > x` and
    // `ms < ceil(y)` is `ms < y`, with bigint bounds the index serves.
    let row = target
        .query_one(
            "WITH k AS (SELECT max(ms)::float8 AS at FROM kafka_ts WHERE id > $1 GROUP BY id),
                  a AS (SELECT extract(epoch FROM applied)::float8 * 1000 AS at FROM t WHERE id > $1),
                  kg AS (SELECT lag(at) OVER (ORDER BY at) AS from_at, at AS to_at FROM k),
                  ag AS (SELECT lag(at) OVER (ORDER BY at) AS from_at, at AS to_at FROM a),
                  kp AS (SELECT to_at - from_at AS ms FROM kg WHERE to_at - from_at >= $2),
                  ap AS (SELECT from_at, to_at, to_at - from_at AS ms FROM ag WHERE to_at - from_at >= $2)
             SELECT (SELECT count(*) FROM kp), (SELECT max(ms) FROM kp),
                    (SELECT count(*) FROM ap), (SELECT max(ms) FROM ap),
                    (SELECT count(*) FROM ap
                      WHERE EXISTS (SELECT 1 FROM kafka_ts
                                    WHERE ms > floor(ap.from_at)::bigint
                                      AND ms < ceil(ap.to_at - $2 / 2)::bigint
                                      AND id > $1)),
                    -- Each apply pause's start (UTC) and length, to read beside the logs.
                    (SELECT string_agg(to_char(to_timestamp(from_at / 1000) AT TIME ZONE 'UTC',
                                               'HH24:MI:SS.MS')
                                       || ' (' || round(ms::numeric) || ' ms)', ', '
                                       ORDER BY from_at)
                     FROM ap)",
            &[&after_id, &STALL_MS],
        )
        .await?;
    if let Some(list) = row.get::<_, Option<String>>(5) {
        eprintln!("bench: single: apply pauses ≥ {STALL_MS} ms, UTC: {list}");
    }
    Ok(Stalls {
        produced: row.get(0),
        produced_longest_ms: row.get::<_, Option<f64>>(1).unwrap_or(0.0),
        applied: row.get(2),
        applied_longest_ms: row.get::<_, Option<f64>>(3).unwrap_or(0.0),
        applied_with_records_waiting: row.get(4),
    })
}
