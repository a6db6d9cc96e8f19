//! The staging path: snapshot rows a table holds already go through a staging table
//! made outside the batch's transaction (no DDL in it), and the session settings of a
//! YugabyteDB destination.

use super::*;
use crate::sink::postgres::batch;

#[tokio::test]
async fn a_snapshot_batch_with_a_key_twice_keeps_the_row_read_last() {
    // An exporter that restarted mid-snapshot reads some rows again: one batch can
    // then carry a key twice. The straight COPY fails on it, and the batch goes
    // through the staging table with the last read of each key.
    let mut client = two_column_tables(
        "imp_snapshot_twice",
        "(1, 'old'), (2, 'b'), (3, 'new')",
        &["dst"],
    )
    .await;
    let mut events = snapshot_events(&client, "dst").await;
    // The third read is key 1 again, with the newer value.
    events[2].key = vec![Datum::Long(1)];
    if let Some(after) = events[2].after.as_mut() {
        after[0] = Datum::Long(1);
    }
    let applied = apply_snapshot(&mut client, "dst", &events, true).await;
    assert_eq!((applied.binary_copy_rows, applied.direct_copy_rows), (2, 0));
    assert_eq!(
        two_column_rows(&client, "dst").await,
        vec![(1, "new".to_owned()), (2, "b".to_owned())]
    );
}

#[tokio::test]
async fn an_apply_session_on_yugabytedb_sets_what_the_server_has() {
    let stack = ferry_testkit::Stack::get();
    let db = stack
        .target
        .create_database("imp_yb_session")
        .await
        .unwrap();
    let toml = stack.config_toml("ybsession", &db, &db, &db, "127.0.0.1:1");
    let mut config = ferry_shared::config::Config::from_toml_str(&toml).unwrap();
    let mut target = config.target.take().unwrap();
    target.engine = ferry_shared::config::Engine::Yugabytedb;
    let (client, conn) = crate::sink::postgres::open_session(&target).await.unwrap();
    let show = |name: &'static str| {
        let client = &client;
        async move {
            client
                .query_one(&format!("SHOW {name}"), &[])
                .await
                .unwrap()
                .get::<_, String>(0)
        }
    };
    assert_eq!(
        show("default_transaction_isolation").await,
        "repeatable read"
    );
    assert_eq!(show("session_replication_role").await, "replica");
    // PostgreSQL has no `yb_` settings: they are left out, not an error.
    let yb: i64 = client
        .query_one(
            "SELECT count(*) FROM pg_settings WHERE name LIKE 'yb\\_%'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(yb, 0);
    conn.abort();
}

/// An event trigger that refuses DDL inside a transaction block (the transaction began
/// before the statement's message): what YugabyteDB wants of the apply transaction.
const NO_DDL_IN_TRANSACTIONS: &str = "
CREATE FUNCTION no_ddl_in_transactions() RETURNS event_trigger LANGUAGE plpgsql AS $$
BEGIN
  IF transaction_timestamp() < statement_timestamp() THEN
    RAISE EXCEPTION 'DDL (%) inside a transaction block', tg_tag;
  END IF;
END $$;
CREATE EVENT TRIGGER no_ddl_in_transactions ON ddl_command_start
  EXECUTE FUNCTION no_ddl_in_transactions();
";

#[tokio::test]
async fn snapshot_rows_present_already_go_through_a_staging_table_made_outside_the_transaction() {
    let mut client =
        two_column_tables("imp_stage_no_ddl", "(1, 'a'), (2, 'b'), (3, 'c')", &["dst"]).await;
    client.batch_execute(NO_DDL_IN_TRANSACTIONS).await.unwrap();
    // The guard works: DDL in a transaction block is refused.
    client.batch_execute("BEGIN").await.unwrap();
    let refused = client
        .batch_execute("CREATE TEMP TABLE t1 (i int)")
        .await
        .unwrap_err();
    assert!(
        format!("{:?}", refused).contains("inside a transaction block"),
        "{refused:?}"
    );
    client.batch_execute("ROLLBACK").await.unwrap();
    let events = snapshot_events(&client, "dst").await;
    let mut tables = Tables::new("target");
    let name = TableName {
        schema: "public".into(),
        name: "dst".into(),
    };
    let dest = tables.get(&client, &name, Vsn(1)).await.unwrap();
    // A first snapshot: straight in. The same rows again (a redone snapshot): through
    // the staging table, twice in one session (the table is reused, emptied).
    for round in 0..3 {
        let applied = apply_alone(&mut client, &dest, &mut tables.statements, &events, true)
            .await
            .unwrap();
        let direct = if round == 0 { 3 } else { 0 };
        assert_eq!(applied.direct_copy_rows, direct, "round {round}");
    }
    assert_eq!(
        two_column_rows(&client, "dst").await,
        vec![(1, "a".into()), (2, "b".into()), (3, "c".into())]
    );
}

#[tokio::test]
async fn a_batch_whose_tables_all_hold_its_snapshot_rows_already_stages_each_and_commits() {
    // Every table of the batch meets rows it has already (a snapshot redone, or a
    // replay into a restored backup): each needs its staging table, made outside the
    // transaction, one retry at a time; the batch then commits once, whole.
    let copies = ["dst1", "dst2", "dst3"];
    let mut client =
        two_column_tables("imp_stage_many", "(1, 'a'), (2, 'b'), (3, 'c')", &copies).await;
    for copy in copies {
        client
            .batch_execute(&format!("INSERT INTO {copy} SELECT * FROM src"))
            .await
            .unwrap();
    }
    client
        .batch_execute(ferry_shared::metadata::SETUP_SQL)
        .await
        .unwrap();
    client.batch_execute(NO_DDL_IN_TRANSACTIONS).await.unwrap();
    let mut events = std::collections::BTreeMap::new();
    for table in copies {
        let name = TableName {
            schema: "public".into(),
            name: table.into(),
        };
        events.insert(name, snapshot_events(&client, table).await);
    }
    let mut tables = Tables::new("target");
    let (counts, applied) =
        batch::commit_batch(&mut client, &mut tables, "g", &mut events, &mut [])
            .await
            .unwrap();
    assert_eq!(counts.len(), 3);
    assert!(counts.values().all(|c| c.snapshot_rows == 3), "{counts:?}");
    assert_eq!(applied.direct_copy_rows, 0);
    // Counted once: the rolled-back attempts left nothing.
    let counted: i64 = client
        .query_one(
            "SELECT sum(snapshot_rows)::bigint FROM ferry_metadata.table_counts WHERE consumer_group = 'g'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(counted, 9);
}
