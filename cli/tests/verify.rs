//! `ferry_cli::verify` against two real databases (the source and target clusters of the
//! local stack): equal data is equal whatever the physical row order; every kind of
//! difference (changed value, NULL, missing and extra rows, swapped values, missing
//! table, extra column, no primary key) is found, and differing keys are listed exactly
//! and no more than asked.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test helpers

use ferry_cli::verify::{
    tables_to_verify, verify, KeyDifference, TableResult, TableStatus, VerifyError, VerifyOptions,
    VerifyReport,
};
use ferry_shared::catalog::TableName;
use ferry_shared::config::Config;
use ferry_testkit::{free_port, unique_name, Stack};

/// Three tables: `items` (20,000 rows, many types, NULLs), `regions` (3,000 rows, a
/// composite text key with mixed case and non-ASCII values), `log` (no primary key).
/// `order` is the physical insertion order (`ASC` or `DESC`).
fn seed(order: &str) -> String {
    format!(
        "CREATE TABLE items (
            id bigint PRIMARY KEY,
            qty integer,
            price numeric(12,4),
            note text,
            payload bytea,
            at timestamptz,
            doc jsonb,
            ratio double precision,
            done boolean,
            total numeric GENERATED ALWAYS AS (price * 2) STORED
         );
         INSERT INTO items (id, qty, price, note, payload, at, doc, ratio, done)
         SELECT g,
                CASE WHEN g % 7 = 0 THEN NULL ELSE g % 1000 END,
                round(g * 1.2345, 4),
                CASE WHEN g % 11 = 0 THEN NULL WHEN g % 13 = 0 THEN '' ELSE 'note ' || g END,
                CASE WHEN g % 17 = 0 THEN NULL ELSE decode(md5(g::text), 'hex') END,
                timestamptz '2024-01-01 00:00:00+00' + g * interval '1 minute 0.123456 second',
                jsonb_build_object('g', g, 'tags', jsonb_build_array('a', g % 3, NULL)),
                (g / 3.0)::float8,
                g % 2 = 0
         FROM generate_series(1, 20000) g ORDER BY g {order};
         CREATE TABLE regions (region text, id integer, name text, PRIMARY KEY (region, id));
         INSERT INTO regions
         SELECT (ARRAY['eu', 'us', 'Äsia', 'ap', 'EU'])[1 + g % 5], g, 'r' || g
         FROM generate_series(1, 3000) g ORDER BY g {order};
         CREATE TABLE log (line text, at timestamptz);
         INSERT INTO log
         SELECT 'line ' || g, timestamptz '2024-01-01 00:00:00+00' + g * interval '1 hour'
         FROM generate_series(1, 500) g ORDER BY g {order};"
    )
}

/// A source database (left) and a target database (right) on their own clusters.
struct Pair {
    config: Config,
}

impl Pair {
    async fn new(left_sql: &str, right_sql: &str) -> Pair {
        let stack = Stack::get();
        let left_db = stack.source.create_database("verify").await.unwrap();
        let right_db = stack.target.create_database("verify").await.unwrap();
        stack
            .source
            .connect(&left_db)
            .await
            .unwrap()
            .batch_execute(left_sql)
            .await
            .unwrap();
        stack
            .target
            .connect(&right_db)
            .await
            .unwrap()
            .batch_execute(right_sql)
            .await
            .unwrap();
        let listen = format!("127.0.0.1:{}", free_port());
        let text = stack.config_toml(
            &unique_name("verify"),
            &left_db,
            &right_db,
            &left_db,
            &listen,
        );
        Pair {
            config: Config::from_toml_str(&text).unwrap(),
        }
    }

    /// Same seed on both sides, the right one inserted in reverse order, then `change`
    /// applied on the right.
    async fn seeded(change: &str) -> Pair {
        Pair::new(&seed("ASC"), &format!("{}\n{change}", seed("DESC"))).await
    }

    async fn tables(&self) -> Vec<TableName> {
        tables_to_verify(
            self.config.source.as_ref().unwrap(),
            "source",
            &self.config.migration,
            &[],
        )
        .await
        .unwrap()
    }

    async fn verify_with(&self, opts: &VerifyOptions) -> VerifyReport {
        let tables = self.tables().await;
        verify(
            self.config.source.as_ref().unwrap(),
            "source",
            self.config.target.as_ref().unwrap(),
            "target",
            &tables,
            opts,
        )
        .await
        .unwrap()
    }

    async fn verify(&self) -> VerifyReport {
        self.verify_with(&VerifyOptions::default()).await
    }
}

fn table_result<'a>(report: &'a VerifyReport, name: &str) -> &'a TableResult {
    report
        .tables
        .iter()
        .find(|t| t.table == name)
        .unwrap_or_else(|| panic!("no result for {name}: {report:#?}"))
}

fn keys(result: &TableResult) -> Vec<(&str, KeyDifference)> {
    result
        .differing_keys
        .iter()
        .map(|k| (k.key.as_str(), k.difference))
        .collect()
}

fn assert_equal(result: &TableResult, rows: u64) {
    assert_eq!(result.status, TableStatus::Equal, "{result:#?}");
    assert!(result.equal);
    assert_eq!(result.left_rows, Some(rows), "{result:#?}");
    assert_eq!(result.right_rows, Some(rows), "{result:#?}");
    assert!(result.left_checksum.is_some());
    assert_eq!(result.left_checksum, result.right_checksum);
    assert!(result.differing_keys.is_empty());
    assert!(!result.keys_truncated);
}

#[tokio::test]
async fn equal_databases_are_equal_whatever_the_row_order() {
    let pair = Pair::seeded("").await;
    let report = pair.verify().await;
    assert_eq!(
        report
            .tables
            .iter()
            .map(|t| t.table.as_str())
            .collect::<Vec<_>>(),
        ["public.items", "public.log", "public.regions"]
    );
    assert_equal(table_result(&report, "public.items"), 20_000);
    assert_equal(table_result(&report, "public.regions"), 3_000);
    assert_equal(table_result(&report, "public.log"), 500);
    assert!(report.is_equal(), "{report:#?}");
    // The checksum is not a constant: another table's differs.
    assert_ne!(
        table_result(&report, "public.items").left_checksum,
        table_result(&report, "public.regions").left_checksum
    );
    let text = report.render_table();
    assert!(
        text.contains("source and target are equal: 3 table(s) compared"),
        "{text}"
    );
    assert!(text.contains("public.items"), "{text}");
    let json = serde_json::to_value(&report).unwrap();
    assert_eq!(json["tables"][0]["status"], "equal", "{json}");
    assert_eq!(json["tables"][0]["left_rows"], 20_000, "{json}");
}

#[tokio::test]
async fn a_changed_row_is_listed_by_its_key() {
    // 12345 and (Äsia, 2002) exist on both sides; a value becomes NULL, another changes.
    let pair = Pair::seeded(
        "UPDATE items SET note = NULL WHERE id = 12345;
         UPDATE regions SET name = 'changed' WHERE region = 'Äsia' AND id = 2002;",
    )
    .await;
    let report = pair.verify().await;
    assert!(!report.is_equal());
    let items = table_result(&report, "public.items");
    assert_eq!(items.status, TableStatus::Different);
    assert_eq!(items.left_rows, Some(20_000));
    assert_eq!(items.right_rows, Some(20_000));
    assert_ne!(items.left_checksum, items.right_checksum);
    assert_eq!(
        keys(items),
        [("(id)=(12345)", KeyDifference::Different)],
        "{items:#?}"
    );
    assert!(!items.keys_truncated);
    let regions = table_result(&report, "public.regions");
    assert_eq!(
        keys(regions),
        [("(region, id)=(Äsia, 2002)", KeyDifference::Different)],
        "{regions:#?}"
    );
    assert_equal(table_result(&report, "public.log"), 500);
    let text = report.render_table();
    assert!(text.contains("(id)=(12345): differs"), "{text}");
    assert!(
        text.contains("source and target differ in 2 of 3 table(s)"),
        "{text}"
    );
}

#[tokio::test]
async fn a_deleted_and_an_inserted_row_are_listed_as_missing_on_their_side() {
    // Row counts stay equal: only the checksum tells.
    let pair = Pair::seeded(
        "DELETE FROM items WHERE id = 500;
         INSERT INTO items (id, note) VALUES (30000, 'extra');
         DELETE FROM regions WHERE region = 'eu' AND id = 5;",
    )
    .await;
    // The default ranges, and ranges narrowed down to a handful of rows.
    for leaf_rows in [1000, 7] {
        let report = pair
            .verify_with(&VerifyOptions {
                leaf_rows,
                ..VerifyOptions::default()
            })
            .await;
        let items = table_result(&report, "public.items");
        assert_eq!(items.status, TableStatus::Different);
        assert_eq!(items.left_rows, items.right_rows);
        assert_eq!(
            keys(items),
            [
                ("(id)=(500)", KeyDifference::MissingOnRight),
                ("(id)=(30000)", KeyDifference::MissingOnLeft),
            ],
            "leaf_rows {leaf_rows}: {items:#?}"
        );
        let regions = table_result(&report, "public.regions");
        assert_eq!(regions.left_rows, Some(3_000));
        assert_eq!(regions.right_rows, Some(2_999));
        assert_eq!(
            keys(regions),
            [("(region, id)=(eu, 5)", KeyDifference::MissingOnRight)],
            "leaf_rows {leaf_rows}: {regions:#?}"
        );
        let text = report.render_table();
        assert!(text.contains("(id)=(500): missing on target"), "{text}");
        assert!(text.contains("(id)=(30000): missing on source"), "{text}");
    }
}

#[tokio::test]
async fn two_rows_that_swap_a_value_are_both_listed() {
    // Same count, same multiset of notes: only row-wise hashing sees it.
    let pair = Pair::seeded(
        "UPDATE items SET note = CASE id WHEN 101 THEN 'note 202' ELSE 'note 101' END
         WHERE id IN (101, 202);",
    )
    .await;
    let report = pair.verify().await;
    let items = table_result(&report, "public.items");
    assert_eq!(items.status, TableStatus::Different);
    assert_eq!(
        keys(items),
        [
            ("(id)=(101)", KeyDifference::Different),
            ("(id)=(202)", KeyDifference::Different),
        ],
        "{items:#?}"
    );
}

#[tokio::test]
async fn a_table_missing_on_the_right_is_a_difference_not_an_error() {
    let pair = Pair::new(
        "CREATE TABLE kept (id int PRIMARY KEY, v text);
         INSERT INTO kept SELECT g, 'v' || g FROM generate_series(1, 100) g;
         CREATE TABLE only_here (id int PRIMARY KEY);
         INSERT INTO only_here SELECT generate_series(1, 42);",
        "CREATE TABLE kept (id int PRIMARY KEY, v text);
         INSERT INTO kept SELECT g, 'v' || g FROM generate_series(1, 100) g;",
    )
    .await;
    let report = pair.verify().await;
    assert!(!report.is_equal());
    let missing = table_result(&report, "public.only_here");
    assert_eq!(missing.status, TableStatus::MissingOnRight, "{missing:#?}");
    assert!(!missing.equal);
    assert_eq!(missing.left_rows, Some(42));
    assert_eq!(missing.right_rows, None);
    assert_equal(table_result(&report, "public.kept"), 100);
    let text = report.render_table();
    assert!(text.contains("missing on target"), "{text}");
    let json = serde_json::to_value(&report).unwrap();
    assert_eq!(json["tables"][1]["status"], "missing_on_right", "{json}");
}

#[tokio::test]
async fn many_differing_keys_are_listed_up_to_the_bound() {
    let pair = Pair::seeded("UPDATE items SET qty = -1 WHERE id % 10 = 0;").await;
    let report = pair.verify().await;
    let items = table_result(&report, "public.items");
    assert_eq!(items.status, TableStatus::Different);
    assert!(items.keys_truncated, "{items:#?}");
    assert_eq!(items.differing_keys.len(), 100);
    // The first 100 in key order: 10, 20, ..., 1000.
    let expected: Vec<String> = (1..=100).map(|i| format!("(id)=({})", i * 10)).collect();
    let got: Vec<&str> = items
        .differing_keys
        .iter()
        .map(|k| k.key.as_str())
        .collect();
    assert_eq!(got, expected);
    assert!(items
        .differing_keys
        .iter()
        .all(|k| k.difference == KeyDifference::Different));

    let report = pair
        .verify_with(&VerifyOptions {
            max_keys: 3,
            ..VerifyOptions::default()
        })
        .await;
    let items = table_result(&report, "public.items");
    assert_eq!(keys(items).len(), 3);
    assert!(items.keys_truncated);
    let text = report.render_table();
    assert!(
        text.contains("more keys differ; only the first 3 are listed"),
        "{text}"
    );
}

#[tokio::test]
async fn a_table_without_primary_key_is_compared_by_count_and_checksum() {
    let pair = Pair::seeded("UPDATE log SET line = 'x' WHERE line = 'line 250';").await;
    let report = pair.verify().await;
    let log = table_result(&report, "public.log");
    assert_eq!(log.status, TableStatus::Different);
    assert_eq!(log.left_rows, Some(500));
    assert_eq!(log.right_rows, Some(500));
    assert_ne!(log.left_checksum, log.right_checksum);
    assert!(log.differing_keys.is_empty());
    assert!(
        log.notes.iter().any(|n| n.contains("no primary key")),
        "{log:#?}"
    );

    // A duplicated row is not cancelled out by its twin.
    let pair = Pair::new(
        "CREATE TABLE bag (v int); INSERT INTO bag VALUES (1), (1), (2), (2);",
        "CREATE TABLE bag (v int); INSERT INTO bag VALUES (1), (1), (3), (3);",
    )
    .await;
    let report = pair.verify().await;
    assert_eq!(
        table_result(&report, "public.bag").status,
        TableStatus::Different
    );
}

#[tokio::test]
async fn a_column_on_one_side_only_is_a_difference() {
    let pair = Pair::new(
        "CREATE TABLE t (id int PRIMARY KEY, v text);
         INSERT INTO t SELECT g, 'v' || g FROM generate_series(1, 10) g;",
        "CREATE TABLE t (id int PRIMARY KEY, v text, extra int);
         INSERT INTO t SELECT g, 'v' || g FROM generate_series(1, 10) g;",
    )
    .await;
    let report = pair.verify().await;
    let t = table_result(&report, "public.t");
    assert_eq!(t.status, TableStatus::Different, "{t:#?}");
    // The shared columns are equal.
    assert_eq!(t.left_checksum, t.right_checksum);
    assert!(
        t.notes
            .iter()
            .any(|n| n == "column extra is only on target"),
        "{t:#?}"
    );
}

#[tokio::test]
async fn the_tables_are_those_the_migration_selects() {
    let mut pair = Pair::seeded("").await;
    pair.config.migration.exclude_tables = vec!["log".into()];
    let names = |tables: Vec<TableName>| -> Vec<String> {
        tables.into_iter().map(|t| t.to_string()).collect()
    };
    assert_eq!(
        names(pair.tables().await),
        ["public.items", "public.regions"]
    );
    let source = pair.config.source.as_ref().unwrap();
    let only = tables_to_verify(
        source,
        "source",
        &pair.config.migration,
        &["public.reg*".into()],
    )
    .await
    .unwrap();
    assert_eq!(names(only), ["public.regions"]);
    let err = tables_to_verify(source, "source", &pair.config.migration, &["log".into()])
        .await
        .unwrap_err();
    assert!(matches!(err, VerifyError::NoMatch { .. }), "{err:?}");
    assert!(
        err.to_string()
            .starts_with("no table selected by the migration matches \"log\""),
        "{err}"
    );
}

#[tokio::test]
async fn key_ranges_do_not_depend_on_the_collations() {
    // The left sorts the text key by ICU rules (eu < EU < us < Äsia near a), the right by
    // bytes (EU < ap < eu < us < Äsia); ranges must still hold the same keys on both.
    let table = |collation: &str, order: &str| {
        format!(
            "CREATE TABLE regions (region text {collation}, id integer, name text,
                                   PRIMARY KEY (region, id));
             INSERT INTO regions
             SELECT (ARRAY['eu', 'us', 'Äsia', 'ap', 'EU', 'äb', 'Ab'])[1 + g % 7], g, 'r' || g
             FROM generate_series(1, 3000) g ORDER BY g {order};"
        )
    };
    let pair = Pair::new(
        &table("COLLATE \"en-x-icu\"", "ASC"),
        &format!(
            "{}\nUPDATE regions SET name = 'changed' WHERE region = 'EU' AND id = 1999;",
            table("", "DESC")
        ),
    )
    .await;
    for leaf_rows in [1000, 5] {
        let report = pair
            .verify_with(&VerifyOptions {
                leaf_rows,
                ..VerifyOptions::default()
            })
            .await;
        let regions = table_result(&report, "public.regions");
        assert_eq!(
            keys(regions),
            [("(region, id)=(EU, 1999)", KeyDifference::Different)],
            "leaf_rows {leaf_rows}: {regions:#?}"
        );
    }
}
