//! The schema workflow with Ferry alone (issue #17): a rich schema exported from the
//! source (`ferry export schema`), imported to the target and the source-replica
//! (`ferry import schema`), snapshot and changes migrated, then
//! `--post-snapshot-import`; `pg_dump --schema-only` of each side then equals the
//! source's, and the data is exact. And a target whose partitions differ from the
//! source's (other names, other bounds, not partitioned at all): rows go through the
//! root, both ways.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test helpers

mod common;

use std::path::Path;

use anyhow::{bail, Context, Result};
use common::*;
use ferry_cli::schema::{export, import};
use ferry_shared::config::DatabaseConfig;
use ferry_shared::topics::{Destination, Stream};
use tokio_postgres::Client;

const RICH: &str = r#"
    CREATE SCHEMA app;
    CREATE SCHEMA "Billing";
    CREATE TYPE app.status AS ENUM ('new', 'paid', 'shipped');
    CREATE DOMAIN app.positive_amount AS numeric(12,2) CHECK (VALUE > 0);
    CREATE TYPE app.address AS (street text, city text, zip text);
    CREATE SEQUENCE app.invoice_no START 1000;
    CREATE FUNCTION app.touch() RETURNS trigger LANGUAGE plpgsql AS $$
      BEGIN NEW.name := coalesce(NEW.name, 'n/a; none'); RETURN NEW; END $$;
    CREATE TABLE app.customers (
      id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
      email text NOT NULL UNIQUE CHECK (email LIKE '%@%'),
      name text,
      home app.address,
      created_at timestamptz NOT NULL DEFAULT now());
    CREATE TABLE app."Order" (
      id serial PRIMARY KEY,
      customer bigint NOT NULL REFERENCES app.customers (id),
      status app.status NOT NULL DEFAULT 'new',
      amount app.positive_amount NOT NULL,
      "select" text,
      invoice bigint DEFAULT nextval('app.invoice_no'));
    CREATE FUNCTION app.order_count(bigint) RETURNS bigint LANGUAGE sql STABLE
      AS $$ SELECT count(*) FROM app."Order" WHERE customer = $1 $$;
    CREATE INDEX order_customer ON app."Order" (customer);
    CREATE INDEX "Order status" ON app."Order" (status) WHERE status <> 'shipped';
    CREATE TABLE "Billing"."Events" (
      id bigint NOT NULL, at date NOT NULL, kind text NOT NULL, payload jsonb,
      PRIMARY KEY (id, at, kind)) PARTITION BY RANGE (at);
    CREATE TABLE "Billing"."Events_2025" PARTITION OF "Billing"."Events"
      FOR VALUES FROM ('2025-01-01') TO ('2026-01-01') PARTITION BY LIST (kind);
    CREATE TABLE "Billing"."Events_2025_a" PARTITION OF "Billing"."Events_2025" FOR VALUES IN ('a');
    CREATE TABLE "Billing"."Events_2025_other" PARTITION OF "Billing"."Events_2025" DEFAULT;
    CREATE TABLE "Billing"."Events_2026" PARTITION OF "Billing"."Events"
      FOR VALUES FROM ('2026-01-01') TO ('2027-01-01');
    CREATE INDEX events_kind ON "Billing"."Events" (kind);
    CREATE VIEW app.open_orders AS
      SELECT o.id, c.email FROM app."Order" o JOIN app.customers c ON c.id = o.customer
      WHERE o.status <> 'shipped';
    CREATE MATERIALIZED VIEW app.order_totals AS
      SELECT customer, sum(amount) AS total FROM app."Order" GROUP BY customer;
    CREATE UNIQUE INDEX order_totals_customer ON app.order_totals (customer);
    CREATE TRIGGER customers_touch BEFORE INSERT OR UPDATE ON app.customers
      FOR EACH ROW EXECUTE FUNCTION app.touch();
    COMMENT ON TABLE app."Order" IS 'orders; "quoted" and $$dollars$$';
    COMMENT ON COLUMN app.customers.email IS 'login';
"#;

const RICH_SEED: &str = r#"
    INSERT INTO app.customers (email, name, home)
      SELECT 'c' || g || '@x', CASE WHEN g % 3 = 0 THEN NULL ELSE 'n' || g END,
             ROW('street ' || g, 'city', lpad(g::text, 5, '0'))::app.address
      FROM generate_series(1, 200) g;
    INSERT INTO app."Order" (customer, status, amount, "select")
      SELECT g % 200 + 1, (ARRAY['new','paid','shipped'])[g % 3 + 1]::app.status, g * 1.5, 's' || g
      FROM generate_series(1, 1000) g;
    INSERT INTO "Billing"."Events" (id, at, kind, payload)
      SELECT g, date '2025-01-01' + (g % 700), (ARRAY['a','b','c'])[g % 3 + 1], jsonb_build_object('g', g)
      FROM generate_series(1, 1500) g;
"#;

const RICH_SCHEMA: Schema = Schema {
    // Nothing is made by hand on the destinations: `import schema` makes it there.
    ddl: "",
    source_only: RICH,
    seed: RICH_SEED,
    tables: &["app.customers", r#"app."Order""#, r#""Billing"."Events""#],
    schemas: &["app", "Billing"],
};

/// Writes on the source (or whichever primary), touching every table and moving an
/// event from one partition to another.
async fn rich_writes(c: &Client, tag: &str, rounds: i64, base: i64) -> Result<()> {
    for i in 0..rounds {
        c.batch_execute(&format!(
            r#"BEGIN;
               INSERT INTO app.customers (email, name) VALUES ('{tag}{i}@x', NULL);
               INSERT INTO app."Order" (customer, amount, "select")
                 VALUES ((SELECT max(id) FROM app.customers), {i} + 0.5, '{tag}');
               UPDATE app."Order" SET status = 'shipped', amount = amount + 1
                 WHERE id = (SELECT min(id) FROM app."Order" WHERE status <> 'shipped');
               DELETE FROM app."Order" WHERE id = (SELECT max(id) FROM app."Order" WHERE "select" LIKE 's%');
               INSERT INTO "Billing"."Events" VALUES ({base} + {i}, date '2026-03-01', 'a', '{{"t": "{tag}"}}');
               UPDATE "Billing"."Events" SET at = date '2026-06-01', kind = 'b'
                 WHERE (id, at, kind) = (SELECT id, at, kind FROM "Billing"."Events"
                                         WHERE at < date '2026-01-01' ORDER BY id LIMIT 1);
               DELETE FROM "Billing"."Events" WHERE id = (SELECT max(id) FROM "Billing"."Events" WHERE id < 100000);
               COMMIT;"#
        ))
        .await
        .with_context(|| format!("rich writes {tag} round {i}"))?;
    }
    Ok(())
}

/// `pg_dump --schema-only` of the migrated schemas, without comments, settings and
/// blank lines (what differs between two databases with equal schemas).
fn schema_dump(db: &DatabaseConfig, schemas: &[&str]) -> Result<String> {
    let mut cmd = std::process::Command::new("pg_dump");
    cmd.args(["--schema-only", "--no-owner", "--no-privileges"])
        .args(["-h", &db.host, "-p", &db.port().to_string(), "-U", &db.user])
        .env("PGPASSWORD", db.password.expose());
    for s in schemas {
        cmd.arg("-n").arg(format!("\"{s}\""));
    }
    let out = cmd.arg(&db.database).output().context("running pg_dump")?;
    if !out.status.success() {
        bail!("pg_dump: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8(out.stdout)?
        .lines()
        .filter(|l| {
            !l.is_empty()
                && !l.starts_with("--")
                // psql meta-commands (`\restrict <random key>`)
                && !l.starts_with('\\')
                && !l.starts_with("SET ")
                && !l.starts_with("SELECT pg_catalog.set_config")
        })
        .collect::<Vec<_>>()
        .join("\n"))
}

fn import_options(dir: &Path, destination: Destination, post: bool) -> import::ImportOptions {
    import::ImportOptions {
        export_dir: dir.to_path_buf(),
        destination,
        post_snapshot: post,
        ignore_exist: false,
        include_grants: false,
    }
}

async fn import_ok(
    h: &Harness,
    dir: &Path,
    destination: Destination,
    post: bool,
) -> Result<import::ImportSummary> {
    let summary = import::import_schema(&h.config, &import_options(dir, destination, post))
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    if !summary.failed.is_empty() {
        bail!(
            "import schema to the {destination} failed:\n{}",
            summary.render(&import_options(dir, destination, post))
        );
    }
    Ok(summary)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rich_schema_exported_imported_and_migrated_compares_equal() -> Result<()> {
    let mut h = Harness::with("schemaverbs", None, &RICH_SCHEMA).await?;
    ferry_exporter::prepare_source(&h.config, false).await?;
    let dir = tempfile_dir("schemaverbs");

    let exported = export::export_schema(&h.config, &dir, false)
        .await
        .map_err(|e| anyhow::anyhow!(e))?;
    println!("{}", exported.render());
    let files: Vec<&str> = exported.files.iter().map(|f| f.name.as_str()).collect();
    for expected in [
        "schemas.sql",
        "types.sql",
        "functions.sql",
        "tables.sql",
        "partitions.sql",
        "sequences.sql",
        "constraints.sql",
        "foreign_keys.sql",
        "views.sql",
        "indexes.sql",
        "triggers.sql",
        "comments.sql",
        "grants.sql",
    ] {
        assert!(
            files.contains(&expected),
            "{expected} missing from {files:?}"
        );
    }
    let partitions = std::fs::read_to_string(dir.join("schema/partitions.sql"))?;
    assert!(
        partitions.contains(r#"CREATE TABLE "Billing"."Events_2025_a""#),
        "{partitions}"
    );
    assert!(!std::fs::read_to_string(dir.join("schema/tables.sql"))?.contains("OWNER TO"));
    // A second export does not overwrite the (possibly edited) files.
    let again = export::export_schema(&h.config, &dir, false).await;
    assert!(again.is_err_and(|e| e.contains("--start-clean")));

    for d in [Destination::Target, Destination::SourceReplica] {
        let s = import_ok(&h, &dir, d, false).await?;
        assert!(s.applied > 20 && s.deferred > 0, "{d}: {s:?}");
    }
    // The snapshot import's destinations have no non-unique index and no trigger yet.
    let indexes: i64 = h
        .target
        .query_one(
            "SELECT count(*) FROM pg_indexes WHERE indexname IN ('order_customer', 'Order status', 'events_kind')",
            &[],
        )
        .await?
        .get(0);
    assert_eq!(indexes, 0);

    h.exporter(Stream::Source);
    h.importer(Destination::Target);
    h.importer(Destination::SourceReplica);
    h.wait_snapshot_done().await?;
    rich_writes(&h.source, "live", 30, 100_000).await?;
    h.wait_equal(Side::Source, Side::Target, "after the snapshot and changes")
        .await?;
    h.wait_equal(
        Side::Source,
        Side::Replica,
        "after the snapshot and changes",
    )
    .await?;

    for d in [Destination::Target, Destination::SourceReplica] {
        let s = import_ok(&h, &dir, d, true).await?;
        assert_eq!(
            s.deferred,
            grants_statements(&dir)?,
            "{d}: only grants.sql waits"
        );
        // Run again: nothing left to do.
        let s = import_ok(&h, &dir, d, true).await?;
        assert_eq!(s.applied, 0, "{d}: {s:?}");
    }
    // The materialized view was filled after the data arrived.
    let totals: i64 = h
        .target
        .query_one("SELECT count(*) FROM app.order_totals", &[])
        .await?
        .get(0);
    assert!(totals > 0);

    rich_writes(&h.source, "after", 10, 200_000).await?;
    h.wait_equal(
        Side::Source,
        Side::Target,
        "with the indexes and triggers in place",
    )
    .await?;
    h.wait_equal(
        Side::Source,
        Side::Replica,
        "with the indexes and triggers in place",
    )
    .await?;

    let schemas = RICH_SCHEMA.schemas;
    let source = schema_dump(h.config.source.as_ref().unwrap(), schemas)?;
    for (d, db) in [
        ("target", h.config.target.as_ref().unwrap()),
        ("source-replica", h.config.source_replica.as_ref().unwrap()),
    ] {
        let other = schema_dump(db, schemas)?;
        if other != source {
            let diff: Vec<String> = diff_lines(&source, &other);
            bail!(
                "pg_dump --schema-only of the source and the {d} differ:\n{}",
                diff.join("\n")
            );
        }
    }
    h.stop().await
}

fn grants_statements(dir: &Path) -> Result<usize> {
    let text = std::fs::read_to_string(dir.join("schema/grants.sql"))?;
    Ok(ferry_cli::schema::sql::entries(&text)
        .iter()
        .filter(|e| e.head.is_some())
        .map(|e| e.statements.len())
        .sum())
}

fn diff_lines(a: &str, b: &str) -> Vec<String> {
    let (a, b): (Vec<&str>, Vec<&str>) = (a.lines().collect(), b.lines().collect());
    let mut out: Vec<String> = a
        .iter()
        .filter(|l| !b.contains(l))
        .map(|l| format!("- {l}"))
        .collect();
    out.extend(
        b.iter()
            .filter(|l| !a.contains(l))
            .map(|l| format!("+ {l}")),
    );
    out
}

fn tempfile_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(ferry_testkit::unique_name(name));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// `import schema` killed halfway (as a process, SIGKILL) and run again: it completes,
/// with every object once and nothing reported failed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn import_schema_killed_halfway_completes_on_the_next_run() -> Result<()> {
    // Many small objects, so that the kill lands in the middle.
    let mut ddl = String::from("CREATE SCHEMA many;\n");
    for i in 0..300 {
        ddl.push_str(&format!(
            "CREATE TABLE many.t{i} (id int PRIMARY KEY, v text UNIQUE, n int CHECK (n > 0));\n\
             CREATE INDEX t{i}_n ON many.t{i} (n);\n"
        ));
    }
    let ddl: &'static str = Box::leak(ddl.into_boxed_str());
    let schema = Schema {
        ddl: "",
        source_only: ddl,
        seed: "",
        tables: &[],
        schemas: &["many"],
    };
    let h = Harness::with("schemakill", None, &schema).await?;
    let dir = tempfile_dir("schemakill");
    let exported = export::export_schema(&h.config, &dir, false)
        .await
        .map_err(|e| anyhow::anyhow!(e))?;
    let total: usize = exported
        .files
        .iter()
        .filter(|f| f.name != "grants.sql")
        .map(|f| f.statements)
        .sum();
    assert_eq!(total, 1 + 300 * 4, "{}", exported.render());
    // The import runs as a task; aborting it drops its connection mid-statement, as a
    // killed process does (the server rolls the open transaction back).
    let opts = import_options(&dir, Destination::Target, true);
    let config = h.config.clone();
    let task = tokio::spawn({
        let opts = opts.clone();
        async move { import::import_schema(&config, &opts).await }
    });
    // Kill it once some, not all, statements are recorded.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let exists: bool = h
            .target
            .query_one(
                "SELECT to_regclass('ferry_metadata.schema_statements') IS NOT NULL",
                &[],
            )
            .await?
            .get(0);
        let n: i64 = if exists {
            h.target
                .query_one("SELECT count(*) FROM ferry_metadata.schema_statements", &[])
                .await?
                .get(0)
        } else {
            0
        };
        if n >= 100 {
            assert!(
                (n as usize) < total,
                "the import finished before it could be killed"
            );
            break;
        }
        assert!(
            !task.is_finished(),
            "the import ended before it could be killed"
        );
        assert!(
            std::time::Instant::now() < deadline,
            "the import made no progress"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    task.abort();
    let _ = task.await;

    let summary = import::import_schema(&h.config, &opts)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let text = summary.render(&opts);
    println!("{text}");
    assert!(summary.failed.is_empty(), "{text}");
    assert!(summary.already_applied >= 100, "{text}");
    assert_eq!(
        summary.applied + summary.already_applied + summary.existed.len(),
        total,
        "{text}"
    );
    let (tables, indexes, constraints): (i64, i64, i64) = {
        let r = h
            .target
            .query_one(
                "SELECT (SELECT count(*) FROM pg_tables WHERE schemaname = 'many'), \
                        (SELECT count(*) FROM pg_indexes WHERE schemaname = 'many'), \
                        (SELECT count(*) FROM pg_constraint c JOIN pg_namespace n ON n.oid = c.connamespace WHERE n.nspname = 'many')",
                &[],
            )
            .await?;
        (r.get(0), r.get(1), r.get(2))
    };
    assert_eq!(tables, 300);
    // Per table: primary key, unique and plain index; primary key, unique, check.
    assert_eq!(indexes, 900);
    assert_eq!(constraints, 900);
    h.stop().await
}

const MONTHLY: &str = r#"
    CREATE TABLE public.readings (
      sensor int NOT NULL, at date NOT NULL, value numeric NOT NULL, note text,
      PRIMARY KEY (sensor, at)) PARTITION BY RANGE (at);
    CREATE TABLE public.readings_2026_01 PARTITION OF public.readings FOR VALUES FROM ('2026-01-01') TO ('2026-02-01');
    CREATE TABLE public.readings_2026_02 PARTITION OF public.readings FOR VALUES FROM ('2026-02-01') TO ('2026-03-01');
    CREATE TABLE public.readings_2026_03 PARTITION OF public.readings FOR VALUES FROM ('2026-03-01') TO ('2026-04-01');
    CREATE TABLE public.readings_rest PARTITION OF public.readings DEFAULT;
    ALTER TABLE public.readings REPLICA IDENTITY FULL;
    ALTER TABLE public.readings_2026_01 REPLICA IDENTITY FULL;
    ALTER TABLE public.readings_2026_02 REPLICA IDENTITY FULL;
    ALTER TABLE public.readings_2026_03 REPLICA IDENTITY FULL;
    ALTER TABLE public.readings_rest REPLICA IDENTITY FULL;
"#;

const MONTHLY_SEED: &str = "
    INSERT INTO public.readings
      SELECT g % 50, date '2026-01-01' + (g / 50), g * 0.5, 'seed'
      FROM generate_series(0, 4999) g;
";

/// The target partitions the table by quarter and by sensor, under other names; the
/// source-replica does not partition it at all.
const QUARTERLY_TARGET: &str = r#"
    CREATE TABLE public.readings (
      sensor int NOT NULL, at date NOT NULL, value numeric NOT NULL, note text,
      PRIMARY KEY (sensor, at)) PARTITION BY RANGE (at);
    CREATE TABLE public."Q1" PARTITION OF public.readings FOR VALUES FROM ('2026-01-01') TO ('2026-04-01')
      PARTITION BY HASH (sensor);
    CREATE TABLE public."Q1 even" PARTITION OF public."Q1" FOR VALUES WITH (MODULUS 2, REMAINDER 0);
    CREATE TABLE public."Q1 odd" PARTITION OF public."Q1" FOR VALUES WITH (MODULUS 2, REMAINDER 1);
    CREATE TABLE public.later PARTITION OF public.readings FOR VALUES FROM ('2026-04-01') TO (MAXVALUE);
    CREATE TABLE public.earlier PARTITION OF public.readings FOR VALUES FROM (MINVALUE) TO ('2026-01-01');
"#;

const PLAIN_REPLICA: &str = "
    CREATE TABLE public.readings (
      sensor int NOT NULL, at date NOT NULL, value numeric NOT NULL, note text,
      PRIMARY KEY (sensor, at));
";

const READINGS: Schema = Schema {
    ddl: "",
    source_only: MONTHLY,
    seed: MONTHLY_SEED,
    tables: &["public.readings"],
    schemas: &["public"],
};

/// Inserts, updates (some moving a row to another partition on the writer's side) and
/// deletes.
async fn reading_writes(c: &Client, tag: &str, rounds: i64, base: i64) -> Result<()> {
    for i in 0..rounds {
        c.batch_execute(&format!(
            "BEGIN;
             INSERT INTO public.readings VALUES ({base} + {i}, date '2026-03-15' + ({i} % 40), {i}, '{tag}');
             UPDATE public.readings SET at = at + 31, note = '{tag} moved'
               WHERE (sensor, at) = (SELECT sensor, at FROM public.readings
                                     WHERE note = 'seed' AND at < date '2026-02-15'
                                     ORDER BY at, sensor LIMIT 1)
                 AND NOT EXISTS (SELECT 1 FROM public.readings r2
                                 WHERE r2.sensor = readings.sensor AND r2.at = readings.at + 31);
             UPDATE public.readings SET value = value + 1 WHERE sensor = {s} AND note = 'seed'
               AND at = (SELECT min(at) FROM public.readings WHERE sensor = {s} AND note = 'seed');
             DELETE FROM public.readings WHERE (sensor, at) = (SELECT sensor, at FROM public.readings
                                                             WHERE note = 'seed' ORDER BY at DESC, sensor LIMIT 1);
             COMMIT;",
            s = i % 50
        ))
        .await
        .with_context(|| format!("reading writes {tag} round {i}"))?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_target_partitioned_otherwise_gets_every_row_through_its_root_both_ways() -> Result<()> {
    let mut h = Harness::with("partroot", None, &READINGS).await?;
    h.target.batch_execute(QUARTERLY_TARGET).await?;
    h.replica.batch_execute(PLAIN_REPLICA).await?;
    h.exporter(Stream::Source);
    h.importer(Destination::Target);
    h.importer(Destination::SourceReplica);
    h.exporter(Stream::Target);
    h.importer(Destination::Source);
    h.wait_snapshot_done().await?;
    reading_writes(&h.source, "src", 40, 1000).await?;
    h.wait_equal(
        Side::Source,
        Side::Target,
        "snapshot and changes on the target",
    )
    .await?;
    h.wait_equal(
        Side::Source,
        Side::Replica,
        "on the unpartitioned source-replica",
    )
    .await?;
    // The rows are in the target's own partitions.
    let (q1, later): (i64, i64) = {
        let r = h
            .target
            .query_one(
                r#"SELECT (SELECT count(*) FROM public."Q1 even") + (SELECT count(*) FROM public."Q1 odd"),
                          (SELECT count(*) FROM public.later)"#,
                &[],
            )
            .await?;
        (r.get(0), r.get(1))
    };
    assert!(q1 > 0 && later > 0, "Q1 {q1}, later {later}");

    let (code, body) = h.cutover("target", "fall-back").await?;
    assert_eq!(code, 200, "{body}");
    h.wait_completed("target", None).await?;
    reading_writes(&h.target, "tgt", 30, 2000).await?;
    h.wait_equal(Side::Target, Side::Source, "the source follows the target")
        .await?;
    h.stop().await
}

/// A statement the target refuses is reported with its file, line and object; the
/// others are applied; after the file is fixed, a rerun applies only what is left. An
/// object made by hand is a failure unless `--ignore-exist`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_name_file_line_and_object_and_a_rerun_does_the_rest() -> Result<()> {
    const SMALL: &str = r#"
        CREATE SCHEMA small;
        CREATE TABLE small.a (id int PRIMARY KEY, v text);
        CREATE TABLE small."B" (id int PRIMARY KEY, a int REFERENCES small.a (id));
        CREATE TABLE small.c (id int PRIMARY KEY, note text);
    "#;
    let schema = Schema {
        ddl: "",
        source_only: SMALL,
        seed: "",
        tables: &[],
        schemas: &["small"],
    };
    let h = Harness::with("schemafail", None, &schema).await?;
    let dir = tempfile_dir("schemafail");
    export::export_schema(&h.config, &dir, false)
        .await
        .map_err(|e| anyhow::anyhow!(e))?;
    // The operator's edit breaks table a (a type the target lacks).
    let tables = dir.join("schema/tables.sql");
    let original = std::fs::read_to_string(&tables)?;
    std::fs::write(&tables, original.replace("v text", "v no_such_type"))?;
    // Table c was made by hand on the target.
    h.target
        .batch_execute("CREATE SCHEMA small; CREATE TABLE small.c (id int PRIMARY KEY, note text)")
        .await?;

    let opts = import_options(&dir, Destination::Target, false);
    let first = import::import_schema(&h.config, &opts)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let text = first.render(&opts);
    println!("{text}");
    let line = original
        .lines()
        .position(|l| l.starts_with("CREATE TABLE small.a "))
        .unwrap()
        + 1;
    assert!(
        text.contains(&format!(
            "FAILED schema/tables.sql:{line} (table small.a): type \"no_such_type\" does not exist"
        )),
        "{text}"
    );
    assert!(
        text.contains("(table small.c): relation \"c\" already exists"),
        "{text}"
    );
    assert!(text.contains("fix them in the files"), "{text}");
    // Table B and its primary key were applied; its foreign key needs a.
    let b: bool = h
        .target
        .query_one("SELECT to_regclass('small.\"B\"') IS NOT NULL", &[])
        .await?
        .get(0);
    assert!(b);

    std::fs::write(&tables, &original)?;
    let opts = import::ImportOptions {
        ignore_exist: true,
        ..opts
    };
    let second = import::import_schema(&h.config, &opts)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let text = second.render(&opts);
    println!("{text}");
    assert!(second.failed.is_empty(), "{text}");
    assert!(second.already_applied >= 2, "{text}");
    assert!(text.contains("existed: table small.c"), "{text}");
    let fk: i64 = h
        .target
        .query_one(
            "SELECT count(*) FROM pg_constraint WHERE contype = 'f' AND conrelid = 'small.\"B\"'::regclass",
            &[],
        )
        .await?
        .get(0);
    assert_eq!(fk, 1);
    h.stop().await
}
