//! Writes to a real destination: binary and text `COPY` store the same values
//! (here), and the staging path takes snapshot rows that are there already
//! ([`staging`]).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;

use ferry_shared::avro::RecordType;
use ferry_shared::catalog::{self, quote_ident, TableName};
use ferry_shared::envelope::Op;
use ferry_shared::position::Vsn;
use ferry_shared::value::Datum;
use tokio_postgres::Client;

use super::batch::apply_alone;
use super::catalog::Tables;
use crate::event::Event;
use crate::sink::Applied;

/// (column, source type, destination type, a value per row as SQL, row 3 is NULL).
const TYPED: &[(&str, &str, &str, [&str; 4])] = &[
    (
        "b",
        "boolean",
        "boolean",
        ["true", "false", "true", "false"],
    ),
    ("i2", "smallint", "smallint", ["1", "-32768", "32767", "0"]),
    (
        "i4",
        "integer",
        "integer",
        ["2", "-2147483648", "2147483647", "0"],
    ),
    (
        "i8",
        "bigint",
        "bigint",
        ["3", "-9223372036854775808", "9223372036854775807", "0"],
    ),
    (
        "f4",
        "real",
        "real",
        ["1.5", "'NaN'", "'-Infinity'", "'-0'"],
    ),
    (
        "f4b",
        "real",
        "real",
        ["3.4028235e38", "1e-45", "'Infinity'", "1.1"],
    ),
    (
        "f8",
        "double precision",
        "double precision",
        ["0.1", "'NaN'", "5e-324", "'-0'"],
    ),
    (
        "f8b",
        "double precision",
        "double precision",
        ["1.7976931348623157e308", "'-Infinity'", "-2.5", "1e-300"],
    ),
    (
        "n",
        "numeric(30,6)",
        "numeric(30,2)",
        [
            "123.456789",
            "-999999999999999999999999.999999",
            "0.005",
            "-0.004999",
        ],
    ),
    (
        "n4",
        "numeric(12,4)",
        "numeric(12,4)",
        ["1.2345", "-0.0001", "0", "10000"],
    ),
    (
        "nu",
        "numeric",
        "numeric",
        ["123.4500", "-0.000000001", "0.000", "1e-20"],
    ),
    (
        "nb",
        "numeric(1000,0)",
        "numeric(1000,0)",
        [
            "repeat('9', 1000)::numeric",
            "('-' || repeat('9', 999))::numeric",
            "1",
            "0",
        ],
    ),
    (
        "t",
        "text",
        "text",
        [
            "'hello'",
            "E'tab\\there\\nnew\\\\back\\r'",
            "''",
            "'😀é\\N'",
        ],
    ),
    (
        "vc",
        "text",
        "character varying(16)",
        ["'vc'", "'abcdefghijklmnop   '", "''", "'é'"],
    ),
    (
        "ch",
        "text",
        "character(5)",
        ["'ab'", "''", "'abcde  '", "'é'"],
    ),
    (
        "js",
        "json",
        "json",
        [r#"'{"a": [1, 2.50]}'"#, "'null'", "'[]'", r#"'"x\"y"'"#],
    ),
    (
        "jb",
        "jsonb",
        "jsonb",
        [
            r#"'{"b": 1, "a": "é"}'"#,
            "'[]'",
            "'1.50'",
            r#"'{"k": {"n": null}}'"#,
        ],
    ),
    ("it", "integer", "text", ["42", "-1", "0", "2147483647"]),
    (
        "tzt",
        "timestamptz",
        "text",
        [
            "'2024-05-06 07:08:09.123456+05:30'",
            "'4713-01-01 00:00:00+00 BC'",
            "'2000-01-01 00:00:00+00'",
            "'1969-12-31 23:59:59.999999+00'",
        ],
    ),
    (
        "by",
        "bytea",
        "bytea",
        [r"'\x00ff'", r"'\x'", r"'\x5c0a09'", r"'\xdeadbeef'"],
    ),
    (
        "d",
        "date",
        "date",
        [
            "'2024-02-29'",
            "'4713-01-01 BC'",
            "'5874897-12-31'",
            "'2000-01-01'",
        ],
    ),
    (
        "tm",
        "time",
        "time",
        [
            "'12:34:56.789012'",
            "'00:00:00'",
            "'24:00:00'",
            "'23:59:59.999999'",
        ],
    ),
    (
        "tm3",
        "time",
        "time(3)",
        [
            "'12:34:56.789512'",
            "'00:00:00.0005'",
            "'23:59:59.9999'",
            "'01:02:03'",
        ],
    ),
    (
        "ts",
        "timestamp",
        "timestamp",
        [
            "'2024-05-06 07:08:09.123456'",
            "'4713-01-01 00:00:00 BC'",
            "'294000-01-01 00:00:00'",
            "'1970-01-01 00:00:00'",
        ],
    ),
    (
        "ts0",
        "timestamp",
        "timestamp(0)",
        [
            "'2024-05-06 07:08:09.5'",
            "'1999-12-31 23:59:59.499999'",
            "'0001-01-01 00:00:00'",
            "'2000-01-01 00:00:00'",
        ],
    ),
    (
        "tz",
        "timestamptz",
        "timestamptz",
        [
            "'2024-05-06 07:08:09.123456+05:30'",
            "'4713-01-01 00:00:00+00 BC'",
            "'2000-01-01 00:00:00+00'",
            "'1969-12-31 23:59:59.999999+00'",
        ],
    ),
    (
        "tz2",
        "timestamptz",
        "timestamptz(2)",
        [
            "'2024-05-06 07:08:09.125+00'",
            "'2024-05-06 07:08:09.999999+00'",
            "'2000-01-01 00:00:00+00'",
            "'1900-01-01 00:00:00+00'",
        ],
    ),
    (
        "u",
        "uuid",
        "uuid",
        [
            "'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'",
            "'00000000-0000-0000-0000-000000000000'",
            "'FFFFFFFF-FFFF-FFFF-FFFF-FFFFFFFFFFFF'",
            "'{a0eebc999c0b4ef8bb6d6bb9bd380a11}'",
        ],
    ),
    (
        "ai",
        "integer[]",
        "integer[]",
        ["'{1,NULL,3}'", "'{}'", "'{-2147483648}'", "'{NULL}'"],
    ),
    (
        "ai2",
        "smallint[]",
        "smallint[]",
        ["'{-32768,32767}'", "'{}'", "'{0}'", "'{NULL,1}'"],
    ),
    (
        "ai8",
        "bigint[]",
        "bigint[]",
        ["'{-9223372036854775808}'", "'{}'", "'{1,2,3}'", "'{NULL}'"],
    ),
    (
        "at",
        "text[]",
        "text[]",
        [
            r#"'{"a,b","NULL",NULL,"","\"q\"","\\"}'"#,
            "'{}'",
            "'{é}'",
            "'{\" x \"}'",
        ],
    ),
    (
        "an",
        "numeric(10,2)[]",
        "numeric(10,2)[]",
        ["'{1.50,NULL,-0.01}'", "'{}'", "'{0}'", "'{99999999.99}'"],
    ),
    (
        "ann",
        "numeric[]",
        "numeric[]",
        ["'{1.500,NULL,-0.01}'", "'{}'", "'{0.0}'", "'{1e10}'"],
    ),
    (
        "atz",
        "timestamptz[]",
        "timestamptz[]",
        [
            r#"'{"2024-01-01 00:00:00+00",NULL}'"#,
            "'{}'",
            r#"'{"4713-01-01 00:00:00+00 BC"}'"#,
            r#"'{"2000-01-01 00:00:00.000001+00"}'"#,
        ],
    ),
    (
        "ats",
        "timestamp[]",
        "timestamp[]",
        [
            r#"'{"2024-01-01 00:00:00"}'"#,
            "'{}'",
            r#"'{"1999-12-31 23:59:59.999999"}'"#,
            "'{NULL}'",
        ],
    ),
    (
        "ab",
        "boolean[]",
        "boolean[]",
        ["'{t,f,NULL}'", "'{}'", "'{t}'", "'{f}'"],
    ),
    (
        "af",
        "double precision[]",
        "double precision[]",
        [
            "'{NaN,Infinity,-0,1e-300}'",
            "'{}'",
            "'{-Infinity}'",
            "'{0.1}'",
        ],
    ),
    (
        "af4",
        "real[]",
        "real[]",
        ["'{NaN,1.1,-0}'", "'{}'", "'{3.4028235e38}'", "'{NULL}'"],
    ),
    (
        "aby",
        "bytea[]",
        "bytea[]",
        [
            r#"'{"\\x00",NULL}'"#,
            "'{}'",
            r#"'{"\\x"}'"#,
            r#"'{"\\xff"}'"#,
        ],
    ),
    (
        "au",
        "uuid[]",
        "uuid[]",
        [
            "'{a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11}'",
            "'{}'",
            "'{NULL}'",
            "'{00000000-0000-0000-0000-000000000001}'",
        ],
    ),
    (
        "ad",
        "date[]",
        "date[]",
        [
            "'{2024-01-01,\"0001-01-01 BC\"}'",
            "'{}'",
            "'{5874897-12-31}'",
            "'{NULL}'",
        ],
    ),
    (
        "atm",
        "time[]",
        "time[]",
        [
            "'{24:00:00,00:00:00.000001}'",
            "'{}'",
            "'{NULL}'",
            "'{12:00:00}'",
        ],
    ),
    (
        "avc",
        "text[]",
        "character varying(4)[]",
        ["'{abcd,x}'", "'{}'", "'{\"ab  \"}'", "'{NULL}'"],
    ),
    (
        "ach",
        "character(2)[]",
        "character(2)[]",
        ["'{a,bc}'", "'{}'", "'{NULL}'", "'{\"  \"}'"],
    ),
    (
        "ajb",
        "jsonb[]",
        "jsonb[]",
        [r#"'{"{\"k\": 1}"}'"#, "'{}'", "'{NULL}'", r#"'{"[1, 2]"}'"#],
    ),
];

/// Reads `src` (with the session settings) into snapshot events of `table`, as the
/// exporter would: each column's text parsed for its source kind.
async fn snapshot_events(client: &Client, table: &str) -> Vec<Event> {
    use ferry_shared::avro::{AvroType, FieldType};
    use ferry_shared::catalog::TypeCatalog;
    let types = TypeCatalog::load(client).await.unwrap();
    let src = catalog::load_table(
        client,
        &types,
        &TableName {
            schema: "public".into(),
            name: "src".into(),
        },
    )
    .await
    .unwrap();
    let record = |cols: Vec<String>| {
        Arc::new(RecordType {
            name: "r".into(),
            fields: cols
                .into_iter()
                .map(|c| FieldType {
                    name: c.clone(),
                    column: c,
                    pg_type: None,
                    ty: AvroType::Null,
                })
                .collect(),
        })
    };
    let row_type = record(src.columns.iter().map(|c| c.name.clone()).collect());
    let key_type = record(vec!["id".into()]);
    let list: Vec<String> = src
        .columns
        .iter()
        .map(|c| format!("{}::text", quote_ident(&c.name)))
        .collect();
    let rows = client
        .query(
            &format!("SELECT {} FROM src ORDER BY id", list.join(", ")),
            &[],
        )
        .await
        .unwrap();
    rows.iter()
        .enumerate()
        .map(|(n, row)| {
            let after: Vec<Datum> = src
                .columns
                .iter()
                .enumerate()
                .map(|(i, c)| match row.get::<_, Option<String>>(i) {
                    None => Datum::Null,
                    Some(text) => ferry_shared::value::parse_text(&c.kind, &text).unwrap(),
                })
                .collect();
            Event {
                vsn: Vsn(n as u64 + 1),
                op: Op::Read,
                table: Arc::new(TableName {
                    schema: "public".into(),
                    name: table.into(),
                }),
                row_type: row_type.clone(),
                before: None,
                key: vec![after[0].clone()],
                after: Some(after),
                key_type: key_type.clone(),
            }
        })
        .collect()
}

/// Applies `events` to `table` in one transaction, binary COPY allowed or not.
async fn apply_snapshot(
    client: &mut Client,
    table: &str,
    events: &[Event],
    binary: bool,
) -> Applied {
    let mut tables = Tables::new("target");
    let name = TableName {
        schema: "public".into(),
        name: table.into(),
    };
    let dest = tables.get(client, &name, Vsn(1)).await.unwrap();
    apply_alone(client, &dest, &mut tables.statements, events, binary)
        .await
        .unwrap()
}

/// Rows of `a` and `b` whose columns differ in value or in text form.
async fn differing(client: &Client, a: &str, b: &str, columns: &[(&str, bool)]) -> Vec<i64> {
    let conds: Vec<String> = columns
        .iter()
        .map(|(c, comparable)| {
            let c = quote_ident(c);
            let text = format!("x.{c}::text IS DISTINCT FROM y.{c}::text");
            if *comparable {
                format!("{text} OR x.{c} IS DISTINCT FROM y.{c}")
            } else {
                text
            }
        })
        .collect();
    client
        .query(
            &format!(
                "SELECT coalesce(x.id, y.id) FROM {a} x FULL JOIN {b} y ON x.id = y.id \
                 WHERE x.id IS NULL OR y.id IS NULL OR {} ORDER BY 1",
                conds.join(" OR ")
            ),
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

/// A fresh target database with Ferry's session settings (shared by the sink's tests).
pub(crate) async fn database(prefix: &str) -> Client {
    let stack = ferry_testkit::Stack::get();
    let db = stack.target.create_database(prefix).await.unwrap();
    let client = stack.target.connect(&db).await.unwrap();
    client
        .batch_execute(&ferry_shared::value::session_settings_sql())
        .await
        .unwrap();
    client
}

#[tokio::test]
async fn binary_copy_of_every_supported_type_stores_what_text_copy_stores() {
    let mut client = database("imp_binary").await;
    let src: Vec<String> = TYPED
        .iter()
        .map(|(c, t, _, _)| format!("{c} {t}"))
        .collect();
    let dst: Vec<String> = TYPED
        .iter()
        .map(|(c, _, t, _)| format!("{c} {t}"))
        .collect();
    let mut ddl = format!(
        "CREATE TABLE src (id bigint PRIMARY KEY, {});\
         CREATE TABLE bin (id bigint PRIMARY KEY, {d});\
         CREATE TABLE txt (id bigint PRIMARY KEY, {d});",
        src.join(", "),
        d = dst.join(", ")
    );
    for row in 0..5 {
        let values: Vec<String> = TYPED
            .iter()
            .map(|(_, t, _, v)| match row {
                3 => "NULL".to_owned(),
                4 => format!("({})::{t}", v[3]),
                r => format!("({})::{t}", v[r]),
            })
            .collect();
        ddl.push_str(&format!(
            "INSERT INTO src VALUES ({row}, {});",
            values.join(", ")
        ));
    }
    client.batch_execute(&ddl).await.unwrap();

    let events = snapshot_events(&client, "bin").await;
    assert_eq!(events.len(), 5);
    let applied = apply_snapshot(&mut client, "bin", &events, true).await;
    assert_eq!(
        applied,
        Applied {
            binary_copy_rows: 5,
            text_copy_rows: 0,
            direct_copy_rows: 5,
        },
        "every row of ordinary types goes in with binary COPY, straight into the new table"
    );
    let events = snapshot_events(&client, "txt").await;
    let applied = apply_snapshot(&mut client, "txt", &events, false).await;
    assert_eq!(applied.text_copy_rows, 5);

    let columns: Vec<(&str, bool)> = TYPED
        .iter()
        .map(|(c, _, t, _)| (*c, *t != "json"))
        .collect();
    assert_eq!(
        differing(&client, "bin", "txt", &columns).await,
        Vec::<i64>::new()
    );
    // Where the types are the same, also equal to the source.
    let same: Vec<(&str, bool)> = TYPED
        .iter()
        .filter(|(_, s, d, _)| s == d)
        .map(|(c, _, t, _)| (*c, *t != "json"))
        .collect();
    assert_eq!(
        differing(&client, "bin", "src", &same).await,
        Vec::<i64>::new()
    );
    // Applying the same snapshot again (a redone snapshot) upserts through the
    // staging table and changes nothing.
    let events = snapshot_events(&client, "bin").await;
    let applied = apply_snapshot(&mut client, "bin", &events, true).await;
    assert_eq!((applied.binary_copy_rows, applied.direct_copy_rows), (5, 0));
    assert_eq!(
        differing(&client, "bin", "txt", &columns).await,
        Vec::<i64>::new()
    );
}

#[tokio::test]
async fn values_without_an_exact_binary_form_send_their_run_through_text_copy() {
    let mut client = database("imp_binary_fallback").await;
    client
        .batch_execute(
            "CREATE TYPE mood AS ENUM ('sad', 'ok');\
             CREATE DOMAIN posint AS integer CHECK (VALUE > 0);\
             CREATE TABLE src (id bigint PRIMARY KEY, i integer, m mood, mo money, r int4range, \
                iv interval, p posint, n numeric(10,2), ts timestamp, d date, a2 integer[]);\
             CREATE TABLE dst (LIKE src INCLUDING ALL);\
             CREATE TABLE plain (id bigint PRIMARY KEY, i integer, n numeric(10,2), ts timestamp, d date, a2 integer[]);\
             INSERT INTO src VALUES \
               (1, 1, 'ok', 12.5, '[1,5)', '1 day 02:00:00', 7, 'NaN', 'infinity', '-infinity', '{{1,2},{3,4}}'),\
               (2, 2, 'sad', -0.01, 'empty', '-1 mons', 1, 1.25, '2024-01-01 00:00:00', '2024-01-01', '[0:1]={5,6}'),\
               (3, 3, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL);",
        )
        .await
        .unwrap();
    let events = snapshot_events(&client, "dst").await;
    let applied = apply_snapshot(&mut client, "dst", &events, true).await;
    assert_eq!(
        applied,
        Applied {
            binary_copy_rows: 0,
            text_copy_rows: 3,
            direct_copy_rows: 3
        }
    );
    let columns = [
        ("i", true),
        ("m", true),
        ("mo", true),
        ("r", true),
        ("iv", true),
        ("p", true),
        ("n", true),
        ("ts", true),
        ("d", true),
        ("a2", true),
    ];
    assert_eq!(
        differing(&client, "dst", "src", &columns).await,
        Vec::<i64>::new()
    );

    // Ordinary types, but values in the string branch (NaN, infinity, odd arrays).
    let mut events = snapshot_events(&client, "plain").await;
    let keep = [0usize, 1, 7, 8, 9, 10];
    for e in &mut events {
        let after = e.after.take().unwrap();
        e.after = Some(keep.iter().map(|&i| after[i].clone()).collect());
        e.row_type = Arc::new(RecordType {
            name: "r".into(),
            fields: keep.iter().map(|&i| e.row_type.fields[i].clone()).collect(),
        });
    }
    let applied = apply_snapshot(&mut client, "plain", &events, true).await;
    assert_eq!(applied.text_copy_rows, 3);
    let plain = [
        ("i", true),
        ("n", true),
        ("ts", true),
        ("d", true),
        ("a2", true),
    ];
    assert_eq!(
        differing(&client, "plain", "src", &plain).await,
        Vec::<i64>::new()
    );
}

/// A fresh database with `src (id bigint PRIMARY KEY, v text)` holding `rows`, and an
/// empty copy of it under each name of `copies`.
async fn two_column_tables(prefix: &str, rows: &str, copies: &[&str]) -> Client {
    let client = database(prefix).await;
    let mut sql =
        format!("CREATE TABLE src (id bigint PRIMARY KEY, v text); INSERT INTO src VALUES {rows};");
    for copy in copies {
        sql.push_str(&format!("CREATE TABLE {copy} (LIKE src INCLUDING ALL);"));
    }
    client.batch_execute(&sql).await.unwrap();
    client
}

/// The rows of a two-column table, in key order.
async fn two_column_rows(client: &Client, table: &str) -> Vec<(i64, String)> {
    client
        .query(&format!("SELECT id, v FROM {table} ORDER BY id"), &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

mod staging;
