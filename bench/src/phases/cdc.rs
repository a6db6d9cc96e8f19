//! The batched CDC phase: a backlog of 100-row transactions drained by Ferry, by
//! `pg_recvlogical` and, with the peer, by Debezium; then a second backlog of the same
//! shape for Ferry's exporter alone.

use super::*;

/// The batched CDC phase's figures.
#[derive(Debug, Serialize)]
pub struct CdcResult {
    pub transactions: i64,
    pub events: i64,
    pub inserts: i64,
    pub updates: i64,
    pub deletes: i64,
    /// Time to generate the load on the source (not measured against anything).
    pub load_seconds: f64,
    pub ferry_seconds: f64,
    pub ferry_events_per_second: f64,
    /// From the exporter's restart to the first applied change.
    pub first_event_seconds: f64,
    pub recvlogical_seconds: f64,
    pub recvlogical_events_per_second: f64,
    pub usage: Usage,
    pub checksum: Checksum,
    /// When Ferry's exporter, restarted on the backlog, had its first and its last
    /// change in Kafka (measured during the run above, the importer running alongside).
    pub ferry_export: Option<Exported>,
    /// The same for the exporter alone (importer stopped) on a second backlog of the
    /// same shape, with the peer: what the ratio to Debezium uses.
    pub ferry_export_alone: Option<Exported>,
    /// The bench process's CPU while the exporter drained the second backlog alone.
    pub ferry_export_alone_usage: Option<Usage>,
    /// Records the exporter added to the table topic for the load.
    pub ferry_export_records: i64,
    /// The Debezium peer draining the same backlog from its own slot.
    pub peer: Option<PeerRun>,
    /// Why the peer's part failed (the run fails; Ferry's figures stay).
    pub peer_error: Option<String>,
}

/// `transactions` transactions of 100 row changes over two sessions: 50 rows inserted
/// above `insert_base`, 40 of rows `1..=updatable` updated (cycling), 10 deleted above
/// `delete_base` (rows that exist).
async fn cdc_load(
    db: &Database,
    transactions: i64,
    updatable: i64,
    insert_base: i64,
    delete_base: i64,
) -> Result<()> {
    let connections = 2;
    let mut tasks = Vec::new();
    for c in 0..connections {
        let client = db.connect().await?;
        let sql = format!(
            "DO $$ DECLARE n bigint; u bigint; d bigint; BEGIN
               FOR k IN {c}..{last} BY {connections} LOOP
                 n := {insert_base} + k * 50;
                 INSERT INTO t SELECT g, {values} FROM generate_series(n + 1, n + 50) g;
                 u := (k * 40) % {updatable};
                 UPDATE t SET a = a + 1, b = b + k, ts = ts + interval '1 second'
                   WHERE id BETWEEN u + 1 AND u + 40;
                 d := {delete_base} + k * 10;
                 DELETE FROM t WHERE id BETWEEN d + 1 AND d + 10;
                 COMMIT;
               END LOOP;
             END $$",
            last = transactions - 1,
            values = db::row_values("g"),
        );
        tasks.push(tokio::spawn(
            async move { client.batch_execute(&sql).await },
        ));
    }
    for t in tasks {
        t.await?.context("the CDC load")?;
    }
    Ok(())
}

/// Batched CDC: transactions of 100 row changes (50 inserts, 40 updates, 10 deletes)
/// written while the exporter is stopped, then the backlog drained by Ferry (exporter
/// restarted) and by `pg_recvlogical` from its own slot made before the load.
pub async fn cdc(ctx: &Ctx, cdc_rows: i64) -> Result<CdcResult> {
    let transactions = ((cdc_rows + 99) / 100).max(1);
    // Rows 1..=updatable are updated (cycling), the next `transactions * 10` deleted,
    // new rows are inserted above.
    let updatable = (transactions * 40).min(100_000);
    let deletable = transactions * 10;
    let inserts_from = updatable + deletable;
    with_phase(async |p: &mut Phase| {
        let src = p.db(&ctx.stack.source, "bench_cdc_src").await?;
        let dst = p.db(&ctx.stack.target, "bench_cdc_dst").await?;
        p.dbs[src]
            .connect()
            .await?
            .batch_execute(db::SOURCE_DDL)
            .await?;
        p.dbs[dst]
            .connect()
            .await?
            .batch_execute(db::TARGET_DDL)
            .await?;
        ctx.say(&format!("cdc: prefilling {inserts_from} rows"));
        db::fill(&p.dbs[src], 1, inserts_from, 2).await?;
        let target = p.dbs[dst].connect().await?;

        // Ferry takes its snapshot of the prefill and streams; then the exporter stops
        // so that the load piles up as a backlog for both readers.
        ctx.say("cdc: Ferry's snapshot of the prefill");
        p.start_ferry(ctx, src, dst).await?;
        let since = Instant::now();
        let ferry = p.ferry()?;
        ferry.start_exporter();
        ferry.start_importer_after_topic("t").await?;
        wait_applied(
            ctx,
            ferry,
            &target,
            since,
            "the prefill snapshot",
            |c| c.0 >= inserts_from,
            |_| true,
        )
        .await?;
        ferry.stop_exporter().await?;
        let reference = RefSlot::create(&p.dbs[src]).await?;
        // The peer's own slot and publication, made with the reference's before the
        // load (a slot left by a failed phase goes with the database).
        let peer_slot = match ctx.peer {
            Some(_) => Some(RefSlot::create_named(&p.dbs[src], "bench_dbz").await?),
            None => None,
        };

        ctx.say(&format!(
            "cdc: writing {transactions} transactions of 100 row changes"
        ));
        let load_started = Instant::now();
        cdc_load(&p.dbs[src], transactions, updatable, inserts_from, updatable).await?;
        let load_seconds = load_started.elapsed().as_secs_f64();
        let end_lsn = db::current_lsn(&p.dbs[src]).await?;
        let events = transactions * 100;

        ctx.say("cdc: Ferry drains the backlog");
        let ferry = p.ferry()?;
        let config = ferry.config.clone();
        let table_topic = ferry
            .topics
            .table(ferry_shared::topics::Stream::Source, "public", "t");
        let before_load = topic_records(&config, &table_topic).await?;
        let mark = CpuMark::start()?;
        let since = Instant::now();
        let exported = watch_topic(
            config.clone(),
            table_topic.clone(),
            before_load,
            before_load + events,
            since,
            ctx.timeout,
        );
        ferry.start_exporter();
        let (secs, first) = wait_applied(
            ctx,
            ferry,
            &target,
            since,
            "the changes on the target",
            |c| c.1 >= events,
            |c| c.1 > 0,
        )
        .await?;
        let usage = mark.finish()?;
        // Every change was applied, so every change was in Kafka before: the watcher
        // is done or about to be.
        let export_secs = tokio::time::timeout(Duration::from_secs(5), exported)
            .await
            .ok()
            .and_then(Result::ok)
            .flatten();
        ferry.stop().await?;
        let export_records = topic_records(&config, &table_topic).await? - before_load;

        ctx.say("cdc: reference pg_recvlogical");
        let ref_secs = reference.read_to(&p.dbs[src], &end_lsn).await?;
        reference.drop(&p.dbs[src]).await?;
        let (peer, peer_error) = match (&ctx.peer, &peer_slot) {
            (Some(peer), Some(slot)) => {
                ctx.say(&format!(
                    "cdc: Debezium {} (Kafka Connect standalone) drains the same backlog",
                    debezium::DEBEZIUM_VERSION
                ));
                match debezium::run(
                    ctx,
                    peer,
                    &config,
                    &p.dbs[src],
                    slot,
                    debezium::Mode::Changes,
                    events,
                )
                .await
                {
                    Ok(r) => (Some(r), None),
                    Err(e) => (None, Some(format!("{e:#}"))),
                }
            }
            _ => (None, None),
        };
        let expected_rows = updatable + transactions * 50;
        let checksum = verify_rows(&p.dbs[src], &p.dbs[dst], expected_rows, "the load").await?;
        if export_records != events {
            bail!("Ferry's exporter added {export_records} records to {table_topic} for {events} changes");
        }
        // Beside the peer, Ferry's exporter is also measured alone, as Debezium runs: a
        // second backlog of the same shape (inserts above the first's, deletes of the
        // first's inserts) drained by the exporter with the importer stopped; then the
        // importer applies it and source and target are compared again.
        let (export_alone, export_alone_usage, checksum) = if ctx.peer.is_some() {
            ctx.say("cdc: a second backlog of the same shape for Ferry's exporter alone");
            cdc_load(
                &p.dbs[src],
                transactions,
                updatable,
                inserts_from + transactions * 50,
                inserts_from,
            )
            .await?;
            ctx.say("cdc: Ferry's exporter alone drains it (beside Debezium)");
            let before = topic_records(&config, &table_topic).await?;
            p.ferry = Some(Ferry::start_coordinator(config.clone(), ctx.handles.clone()).await?);
            let ferry = p.ferry()?;
            let mark = CpuMark::start()?;
            let since = Instant::now();
            ferry.start_exporter();
            let exported = wait_exported(ctx, ferry, "t", before, events, since).await?;
            let usage = mark.finish()?;
            let since = Instant::now();
            ferry.start_importer_after_topic("t").await?;
            wait_applied(
                ctx,
                ferry,
                &target,
                since,
                "the second backlog on the target",
                |c| c.1 >= 2 * events,
                |c| c.1 > events,
            )
            .await?;
            ferry.stop().await?;
            let expected_rows = expected_rows + transactions * 40;
            let checksum =
                verify_rows(&p.dbs[src], &p.dbs[dst], expected_rows, "the second load").await?;
            (Some(exported), Some(usage), checksum)
        } else {
            (None, None, checksum)
        };
        Ok(CdcResult {
            transactions,
            events,
            inserts: transactions * 50,
            updates: transactions * 40,
            deletes: transactions * 10,
            load_seconds,
            ferry_seconds: secs,
            ferry_events_per_second: events as f64 / secs,
            first_event_seconds: first,
            recvlogical_seconds: ref_secs,
            recvlogical_events_per_second: events as f64 / ref_secs,
            usage,
            checksum,
            ferry_export: export_secs,
            ferry_export_alone: export_alone,
            ferry_export_alone_usage: export_alone_usage,
            ferry_export_records: export_records,
            peer,
            peer_error,
        })
    })
    .await
}

/// [`verify`], and the source must hold `expected` rows after `what`.
async fn verify_rows(
    source: &Database,
    target: &Database,
    expected: i64,
    what: &str,
) -> Result<Checksum> {
    let checksum = verify(source, target).await?;
    if checksum.rows != expected {
        bail!(
            "the source holds {} rows after {what}, expected {expected}",
            checksum.rows
        );
    }
    Ok(checksum)
}
