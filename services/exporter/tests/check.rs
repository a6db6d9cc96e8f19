//! Source preflight against a real PostgreSQL: every problem is reported at once, each
//! with its fix.

use ferry_exporter::check::{preflight, CheckInput};
use ferry_shared::config::{Config, Engine};
use ferry_testkit::{unique_name, Stack};

#[tokio::test]
async fn reports_every_problem_at_once_with_its_fix() -> anyhow::Result<()> {
    let stack = Stack::get();
    let db = stack.source.create_database("check").await?;
    let admin = stack.source.connect(&db).await?;
    let role = unique_name("norepl");
    admin
        .batch_execute(&format!(
            "CREATE TABLE good (id int PRIMARY KEY, v text);
             ALTER TABLE good REPLICA IDENTITY FULL;
             CREATE TABLE nokey (v text);
             ALTER TABLE nokey REPLICA IDENTITY FULL;
             CREATE TABLE plain (id int PRIMARY KEY);
             CREATE TABLE odd (id int PRIMARY KEY, r regclass);
             ALTER TABLE odd REPLICA IDENTITY FULL;
             CREATE TABLE worse (t regtype);
             ALTER TABLE worse REPLICA IDENTITY FULL;
             CREATE TABLE keyed_odd (k regtype PRIMARY KEY);
             ALTER TABLE keyed_odd REPLICA IDENTITY FULL;
             CREATE TABLE skipped (v text);
             CREATE TABLE parted (id int PRIMARY KEY) PARTITION BY RANGE (id);
             ALTER TABLE parted REPLICA IDENTITY FULL;
             CREATE TABLE parted_1 PARTITION OF parted FOR VALUES FROM (0) TO (100);
             CREATE ROLE {role} LOGIN PASSWORD 'pw';
             GRANT USAGE ON SCHEMA public TO {role};"
        ))
        .await?;
    let toml = stack.config_toml("chk", &db, "t", "r", "127.0.0.1:1");
    let mut config = Config::from_toml_str(&toml).map_err(|e| anyhow::anyhow!("{e:?}"))?;
    config.migration.exclude_tables = vec!["skipped".into()];
    let schemas = vec!["public".to_owned()];
    let input = CheckInput {
        migration: &config.migration,
        schemas: &schemas,
        slot_name: "ferry_chk_source",
        needs_replication: true,
        engine: Engine::Postgresql,
    };

    // As a role without REPLICATION.
    let client = session_as(&role, &db).await?;
    let err = preflight(&client, &input).await.expect_err("must fail");
    let text = err.to_string();
    println!("{text}");
    let expect = [
        format!("role {role} may not use replication; run ALTER ROLE \"{role}\" REPLICATION"),
        "table public.nokey has no primary key; add one or list the table in migration.exclude_tables".to_owned(),
        "table public.plain has replica identity DEFAULT, Ferry needs FULL to send unchanged TOAST values and old rows; run ALTER TABLE \"public\".\"plain\" REPLICA IDENTITY FULL (ferry prepare source does it for every table that needs it)".to_owned(),
        "column public.odd.r has type regclass, which Ferry cannot move; regclass values are object identifiers".to_owned(),
        "partition public.parted_1 of table public.parted does not have replica identity FULL; run ALTER TABLE \"public\".\"parted_1\" REPLICA IDENTITY FULL (ferry prepare source does it for every table that needs it)".to_owned(),
        // A table with an unsupported column still gets its other problems reported.
        "column public.worse.t has type regtype, which Ferry cannot move".to_owned(),
        "table public.worse has no primary key".to_owned(),
        // A key column of an unsupported type is that problem, not "no primary key".
        "column public.keyed_odd.k has type regtype, which Ferry cannot move".to_owned(),
    ];
    for e in &expect {
        assert!(text.contains(e.as_str()), "missing {e:?} in\n{text}");
    }
    assert!(!text.contains("skipped"), "{text}");
    assert!(!text.contains("good"), "{text}");
    assert!(
        !text.contains("table public.keyed_odd has no primary key"),
        "{text}"
    );
    assert_eq!(err.problems().len(), 8, "{text}");

    // As the superuser, after fixing the tables: only what is left.
    admin
        .batch_execute("ALTER TABLE plain REPLICA IDENTITY FULL; DROP TABLE odd, worse, keyed_odd; ALTER TABLE nokey ADD PRIMARY KEY (v); ALTER TABLE parted_1 REPLICA IDENTITY FULL;")
        .await?;
    let tables = preflight(&admin, &input).await?;
    let names: Vec<String> = tables.iter().map(|t| t.to_string()).collect();
    assert_eq!(
        names,
        [
            "public.good",
            "public.nokey",
            "public.parted",
            "public.plain"
        ]
    );

    // Nothing selected.
    let mut migration = config.migration.clone();
    migration.include_tables = vec!["nothing_here".into()];
    let input = CheckInput {
        migration: &migration,
        ..input
    };
    let err = preflight(&admin, &input).await.expect_err("must fail");
    assert!(
        err.to_string().contains("no table is selected in schemas public; check source.schemas and migration.include_tables / exclude_tables"),
        "{err}"
    );
    Ok(())
}

/// With `engine = "yugabytedb"` (PostgreSQL standing in), YugabyteDB's own preflight
/// runs: the role's replication right is its finding, with the fix, and nothing that
/// only means something on PostgreSQL (wal_level, wal senders by name) is asked for.
#[tokio::test]
async fn a_yugabytedb_database_gets_its_own_preflight() -> anyhow::Result<()> {
    let stack = Stack::get();
    let db = stack.source.create_database("check_yb").await?;
    let admin = stack.source.connect(&db).await?;
    let role = unique_name("ybnorepl");
    admin
        .batch_execute(&format!(
            "CREATE TABLE nokey (v text);
             ALTER TABLE nokey REPLICA IDENTITY FULL;
             CREATE ROLE {role} LOGIN PASSWORD 'pw';
             GRANT USAGE ON SCHEMA public TO {role};"
        ))
        .await?;
    let toml = stack.config_toml("chkyb", &db, "t", "r", "127.0.0.1:1");
    let config = Config::from_toml_str(&toml).map_err(|e| anyhow::anyhow!("{e:?}"))?;
    let schemas = vec!["public".to_owned()];
    let input = CheckInput {
        migration: &config.migration,
        schemas: &schemas,
        slot_name: "ferry_chkyb_target",
        needs_replication: true,
        engine: Engine::Yugabytedb,
    };
    let client = session_as(&role, &db).await?;
    let err = preflight(&client, &input).await.expect_err("must fail");
    let text = err.to_string();
    println!("{text}");
    for e in [
        format!(
            "role {role} on the database may not use replication; run ALTER ROLE \"{role}\" WITH REPLICATION"
        ),
        "table public.nokey has no primary key".to_owned(),
    ] {
        assert!(text.contains(e.as_str()), "missing {e:?} in\n{text}");
    }
    assert_eq!(err.problems().len(), 2, "{text}");
    assert!(!text.contains("wal_level"), "{text}");
    Ok(())
}

/// A session on the source's `db` as `role` (password `pw`).
async fn session_as(role: &str, db: &str) -> anyhow::Result<tokio_postgres::Client> {
    let stack = Stack::get();
    let conn = format!(
        "host={} port={} user={role} password=pw dbname={db}",
        stack.source.host, stack.source.port
    );
    let (client, connection) = tokio_postgres::connect(&conn, tokio_postgres::NoTls).await?;
    tokio::spawn(connection);
    Ok(client)
}
