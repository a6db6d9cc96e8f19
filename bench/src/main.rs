//! ferry-bench: Ferry's throughput, latency, CPU and memory on one machine with the
//! local stack (`scripts/stack`), each figure against a PostgreSQL reference measured
//! in the same run. Run it as `scripts/bench [FLAGS]`; docs/benchmarks.md explains the
//! figures and what bounds them.
//!
//! Ferry's coordinator, exporter and importer run in this process (each on its own
//! runtime), so the process's CPU time and peak RSS during Ferry's part of a phase are
//! Ferry's; the references run outside those windows. Every phase ends by comparing
//! row count and checksum of source and target: a difference fails the run (exit 1).

mod cutover;
mod db;
mod debezium;
mod load;
mod phases;
mod replay;
mod report;
mod services;
mod status;
mod usage;

use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::time::Duration;

use clap::{Parser, ValueEnum};

use crate::phases::Ctx;
use crate::report::Report;
use crate::services::Runtimes;

/// mimalloc: the snapshot and change paths allocate per row; it cut the allocator's
/// share of the exporter's CPU (docs/benchmarks.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Which phase to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Only {
    Snapshot,
    Cdc,
    Single,
    Status,
    Cutover,
    Replay,
}

/// Measures Ferry against PostgreSQL references on the local stack.
#[derive(Parser, Debug)]
#[command(name = "ferry-bench", version)]
struct Args {
    /// Rows of the snapshot phase.
    #[arg(long, default_value_t = 10_000_000)]
    rows: i64,
    /// Row changes of the batched CDC phase (100 per transaction: 50 inserts, 40
    /// updates, 10 deletes).
    #[arg(long, default_value_t = 1_000_000)]
    cdc_rows: i64,
    /// Seconds of single-row load.
    #[arg(long, default_value_t = 30)]
    single_seconds: u64,
    /// Offered rate of single-row transactions per second; 0 (the default): half of
    /// pg_recvlogical's rate on single-row transactions, measured first on this machine.
    #[arg(long, default_value_t = 0)]
    single_rate: u64,
    /// Sessions writing the single-row load.
    #[arg(long, default_value_t = 2)]
    single_connections: i64,
    /// Tables of the status phase (the latency of `ferry cutover status`).
    #[arg(long, default_value_t = 100)]
    status_tables: usize,
    /// Seconds of single-row load before the cutover phase's cutover.
    #[arg(long, default_value_t = 10)]
    cutover_seconds: u64,
    /// Single-row transactions per second before the cutover phase's cutover.
    #[arg(long, default_value_t = 10_000)]
    cutover_rate: u64,
    /// Snapshot rows the replay phase puts into Kafka and reads back (`ferry replay` to
    /// a file and into a database, a plain consumer, the importer).
    #[arg(long, default_value_t = 1_000_000)]
    replay_rows: i64,
    /// Run only this phase (repeatable); default: every phase (snapshot, cdc, single,
    /// status, cutover, replay).
    #[arg(long, value_enum)]
    only: Vec<Only>,
    /// Snapshot diagnosis: run the exporter alone until every row is in Kafka, then the
    /// importer alone, and report each half's rate and CPU (no end-to-end ratio).
    #[arg(long)]
    staged: bool,
    /// Skip the Debezium peer (Debezium's PostgreSQL connector on Kafka Connect,
    /// measured beside Ferry's source half in the snapshot and cdc phases).
    #[arg(long)]
    no_peer: bool,
    /// Print JSON instead of the table.
    #[arg(long)]
    json: bool,
    /// Exit 3 when a figure misses its target (correctness failures always exit 1).
    #[arg(long)]
    strict: bool,
    /// Ferry configuration overrides, `section.key=value` (as `ferry --set`), e.g.
    /// `importer.workers=2`.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    sets: Vec<String>,
    /// Worker threads of each service's runtime (a service in its own process gets one
    /// per core).
    #[arg(long, default_value_t = 2)]
    service_threads: usize,
    /// Longest wait, in seconds, for Ferry to finish a phase.
    #[arg(long, default_value_t = 3600)]
    timeout: u64,
    /// No progress lines on stderr.
    #[arg(long, short)]
    quiet: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    // The test stack's per-test deadline is for tests; a full run lasts longer.
    ferry_testkit::no_test_deadline();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("FERRY_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let services = match Runtimes::new(args.service_threads) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e:#}");
            return ExitCode::from(1);
        }
    };
    let bench = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("bench")
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(1);
        }
    };
    let report = bench.block_on(run(&args, &services));
    bench.shutdown_timeout(Duration::from_secs(5));
    services.shutdown();

    if args.json {
        match serde_json::to_string_pretty(&report) {
            Ok(text) => println!("{text}"),
            Err(e) => eprintln!("error: {e}"),
        }
    } else {
        print!("{}", report.table());
        println!(
            "\nmachine: {} cores, {:.1} GiB RAM; load average before {}, after {}",
            report.machine.cores,
            report.machine.memory_gib,
            report.machine.load_before,
            report.machine.load_after
        );
        let split = report.cpu_split();
        if !split.is_empty() {
            println!("\nCPU of this process during Ferry's part of each phase:\n{split}");
        }
    }
    if !report.errors.is_empty() {
        ExitCode::from(1)
    } else if args.strict && !report.all_pass() {
        ExitCode::from(3)
    } else {
        ExitCode::SUCCESS
    }
}

/// Ctrl-C or SIGTERM (`timeout`, `kill`): both clean up first. False if neither can be
/// waited for.
async fn interrupted() -> bool {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return tokio::signal::ctrl_c().await.is_ok(),
    };
    tokio::select! {
        c = tokio::signal::ctrl_c() => c.is_ok(),
        t = term.recv() => t.is_some(),
    }
}

async fn run(args: &Args, services: &Runtimes) -> Report {
    let mut report = Report {
        machine: report::Machine::now(),
        ..Report::default()
    };
    tokio::spawn(async {
        if interrupted().await {
            eprintln!("bench: interrupted; cleaning up (Ctrl-C again to quit at once)");
            phases::INTERRUPTED.store(true, Ordering::Relaxed);
            if interrupted().await {
                std::process::exit(130);
            }
        }
    });
    let stack = match tokio::task::spawn_blocking(ferry_testkit::Stack::get).await {
        Ok(s) => s,
        Err(e) => {
            report.errors.push(format!("starting the local stack: {e}"));
            report.build_lines();
            return report;
        }
    };
    match db::drop_leftovers(&[&stack.source, &stack.target, &stack.source_replica]).await {
        Ok(names) if !names.is_empty() => eprintln!(
            "bench: dropped {} database(s) an interrupted run left, with their slots: {}",
            names.len(),
            names.join(", ")
        ),
        Ok(_) => {}
        Err(e) => {
            report
                .errors
                .push(format!("dropping what an interrupted run left: {e:#}"));
            report.build_lines();
            return report;
        }
    }
    let wants = |p: Only| args.only.is_empty() || args.only.contains(&p);
    let peer = if args.no_peer || !(wants(Only::Snapshot) || wants(Only::Cdc)) {
        None
    } else {
        match debezium::Peer::from_env() {
            Ok(p) => Some(p),
            Err(e) => {
                report.errors.push(format!("the Debezium peer: {e:#}"));
                report.build_lines();
                return report;
            }
        }
    };
    let ctx = Ctx {
        peer,
        stack,
        handles: services.handles(),
        sets: args.sets.clone(),
        timeout: Duration::from_secs(args.timeout),
        verbose: !args.quiet,
    };
    if ctx.peer.is_some() {
        debezium::clear_leftovers(&ctx).await;
    }
    if wants(Only::Snapshot) {
        match phases::snapshot(&ctx, args.rows, args.staged).await {
            Ok(r) => {
                if let Some(e) = &r.peer_error {
                    report.errors.push(format!("snapshot, Debezium peer: {e}"));
                }
                report.snapshot = Some(r);
            }
            Err(e) => report.errors.push(format!("snapshot: {e:#}")),
        }
    }
    if wants(Only::Cdc) && !phases::INTERRUPTED.load(Ordering::Relaxed) {
        match phases::cdc(&ctx, args.cdc_rows).await {
            Ok(r) => {
                if let Some(e) = &r.peer_error {
                    report.errors.push(format!("cdc, Debezium peer: {e}"));
                }
                report.cdc = Some(r);
            }
            Err(e) => report.errors.push(format!("cdc: {e:#}")),
        }
    }
    if wants(Only::Single) && !phases::INTERRUPTED.load(Ordering::Relaxed) {
        match phases::single(
            &ctx,
            args.single_seconds,
            args.single_rate,
            args.single_connections.max(1),
        )
        .await
        {
            Ok(r) => report.single = Some(r),
            Err(e) => report.errors.push(format!("single: {e:#}")),
        }
    }
    if wants(Only::Status) && !phases::INTERRUPTED.load(Ordering::Relaxed) {
        match status::status(&ctx, args.status_tables).await {
            Ok(r) => report.status = Some(r),
            Err(e) => report.errors.push(format!("status: {e:#}")),
        }
    }
    if wants(Only::Cutover) && !phases::INTERRUPTED.load(Ordering::Relaxed) {
        match cutover::cutover(&ctx, args.cutover_seconds, args.cutover_rate).await {
            Ok(r) => report.cutover = Some(r),
            Err(e) => report.errors.push(format!("cutover: {e:#}")),
        }
    }
    if wants(Only::Replay) && !phases::INTERRUPTED.load(Ordering::Relaxed) {
        match replay::replay(&ctx, args.replay_rows).await {
            Ok(r) => report.replay = Some(r),
            Err(e) => report.errors.push(format!("replay: {e:#}")),
        }
    }
    report.machine.load_after = report::load_average();
    report.build_lines();
    report
}
