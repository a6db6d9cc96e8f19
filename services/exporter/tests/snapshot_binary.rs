//! The snapshot reads a table in binary COPY only when that gives the very values the
//! text COPY gives: both readings of the same rows, edge values included, on a real
//! PostgreSQL.

use ferry_exporter::snapshot_rows::{copy_rows, reads_binary};
use ferry_shared::catalog::{load_table, TableName, TypeCatalog};
use ferry_shared::value::session_settings_sql;
use ferry_testkit::Stack;

/// Each column's values; row i takes the i-th value of every column (NULL past the end).
const COLUMNS: &[(&str, &str, &[&str])] = &[
    (
        "id",
        "bigint PRIMARY KEY",
        &["1", "2", "3", "4", "5", "6", "7"],
    ),
    ("b", "boolean", &["true", "false"]),
    ("i2", "smallint", &["-32768", "32767", "0"]),
    ("i4", "integer", &["-2147483648", "2147483647"]),
    (
        "i8",
        "bigint",
        &["-9223372036854775808", "9223372036854775807"],
    ),
    (
        "f4",
        "real",
        &[
            "'NaN'",
            "'Infinity'",
            "'-Infinity'",
            "'-0'",
            "1.17549435e-38",
            "3.4028235e+38",
            "0.1",
        ],
    ),
    (
        "f8",
        "double precision",
        &[
            "'NaN'",
            "'-0'",
            "1e-308",
            "0.1",
            "'-Infinity'",
            "1.7976931348623157e308",
        ],
    ),
    (
        "t",
        "text",
        &[
            "''",
            "E'tab\\there'",
            "E'new\\nline'",
            "E'back\\\\slash'",
            "'žluťoučký 🐴'",
        ],
    ),
    ("vc", "varchar(8)", &["'ab'", "''"]),
    ("ch", "char(5)", &["'ab'", "'abcde'"]),
    ("nm", "name", &["'a name'"]),
    ("by", "bytea", &["'\\x'", "'\\x00ff5c0a'"]),
    (
        "d",
        "date",
        &[
            "'infinity'",
            "'-infinity'",
            "'4713-01-01 BC'",
            "'5874897-12-31'",
            "'2000-01-01'",
            "'0044-03-15 BC'",
            "'1969-12-31'",
        ],
    ),
    (
        "tm",
        "time",
        &["'00:00'", "'24:00:00'", "'13:14:15.000001'"],
    ),
    (
        "ts",
        "timestamp",
        &[
            "'infinity'",
            "'-infinity'",
            "'4713-01-01 00:00:00 BC'",
            "'294276-12-31 23:59:59.999999'",
            "'294276-12-31 23:59:59.5'",
            "'1970-01-01 00:00:00'",
            "'2024-02-29 12:34:56.789'",
        ],
    ),
    (
        "tz",
        "timestamptz",
        &[
            "'294276-12-31 23:59:59.999999+00'",
            "'-infinity'",
            "'4713-01-01 00:00:00+00 BC'",
            "'294276-12-31 12:00:00+00'",
            "'1999-12-31 23:59:59.999999-08'",
            "'infinity'",
        ],
    ),
    (
        "u",
        "uuid",
        &[
            "'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'",
            "'00000000-0000-0000-0000-000000000000'",
        ],
    ),
    (
        "n2",
        "numeric(10,2)",
        &[
            "0",
            "-0.01",
            "12345678.90",
            "'NaN'",
            "-99999999.99",
            "1.5",
            "10000",
        ],
    ),
    (
        "js",
        "json",
        &[
            r#"'{"b": 1,  "a": [1, 2.50, "x\u00e9"], "a": null}'"#,
            "'null'",
            r#"'"ž 🐴"'"#,
        ],
    ),
    (
        "jb",
        "jsonb",
        &[
            r#"'{"b": 1,  "a": [1, 2.50, "x\u00e9", {"c": true}]}'"#,
            "'[]'",
            r#"'"ž 🐴\n"'"#,
            "'1e400'",
        ],
    ),
    (
        "n0",
        "numeric(38,0)",
        &["99999999999999999999999999999999999999", "-1", "0"],
    ),
    (
        "nbig",
        "numeric(1000,500)",
        &[
            "1e-500",
            "-123456789012345678901234567890.000000000000000000000000000001",
            "1e499",
        ],
    ),
];

#[tokio::test]
async fn binary_and_text_copy_read_the_same_values() -> anyhow::Result<()> {
    let stack = Stack::get();
    let db = stack.source.create_database("snapbin").await?;
    let client = stack.source.connect(&db).await?;
    let defs: Vec<String> = COLUMNS.iter().map(|(n, t, _)| format!("{n} {t}")).collect();
    client
        .batch_execute(&format!(
            "CREATE TABLE every_binary ({}); CREATE TABLE with_numeric (id int PRIMARY KEY, n numeric);
             INSERT INTO with_numeric VALUES (1, 12.5);",
            defs.join(", ")
        ))
        .await?;
    let rows = COLUMNS.iter().map(|(_, _, v)| v.len()).max().unwrap_or(0);
    for r in 0..rows {
        let values: Vec<&str> = COLUMNS
            .iter()
            .map(|(_, _, v)| v.get(r).copied().unwrap_or("NULL"))
            .collect();
        client
            .batch_execute(&format!(
                "INSERT INTO every_binary VALUES ({})",
                values.join(", ")
            ))
            .await?;
    }
    // The snapshot readers' session settings (the text reading depends on them).
    client.batch_execute(&session_settings_sql()).await?;
    let types = TypeCatalog::load(&client).await?;
    let table = |name: &str| TableName {
        schema: "public".into(),
        name: name.into(),
    };
    let every = load_table(&client, &types, &table("every_binary")).await?;
    assert!(
        reads_binary(&every),
        "every column of every_binary has a binary reading"
    );
    let binary = copy_rows(&client, &every, true).await?;
    let text = copy_rows(&client, &every, false).await?;
    assert_eq!(binary.len(), rows);
    // Debug forms: NaN equals NaN there, and -0.0 differs from 0.0.
    for (b, t) in binary.iter().zip(&text) {
        assert_eq!(format!("{b:?}"), format!("{t:?}"));
    }
    println!("{binary:#?}");

    let numeric = load_table(&client, &types, &table("with_numeric")).await?;
    assert!(
        !reads_binary(&numeric),
        "an unconstrained numeric column keeps the table on text COPY"
    );
    assert_eq!(copy_rows(&client, &numeric, true).await?.len(), 1);
    Ok(())
}
