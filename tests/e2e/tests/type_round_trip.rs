//! Every supported PostgreSQL type, with edge values, makes the whole trip and arrives
//! equal: written in the source cluster, read in its text form, converted and encoded
//! with schemas registered in the built-in registry, decoded (by Ferry and by
//! schema_registry_converter), written to the target cluster through the types' input
//! functions, and compared there with the same values inserted directly, by
//! `IS NOT DISTINCT FROM` (where the type has equality) and by text form (always).

use anyhow::{bail, Context, Result};
use ferry_shared::catalog::{self, CatalogError, Kind, TableName, TypeCatalog};
use ferry_shared::codec::{EventDecoder, TableEncoder};
use ferry_shared::envelope::{ChangeEvent, Op, SourceInfo};
use ferry_shared::position::Vsn;
use ferry_shared::registry::RegistryClient;
use ferry_shared::value::{format_text, parse_text, session_settings_sql, Datum};
use ferry_testkit::{unique_name, Stack};
use tokio_postgres::SimpleQueryMessage;

/// Types, extensions and domains the table uses; run on both clusters.
const SETUP: &str = "
    CREATE EXTENSION IF NOT EXISTS hstore;
    CREATE EXTENSION IF NOT EXISTS citext;
    CREATE EXTENSION IF NOT EXISTS ltree;
    CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy ☺');
    CREATE DOMAIN posint AS integer CHECK (VALUE > 0);
    CREATE DOMAIN short_text AS varchar(20);
    CREATE TYPE pair AS (x integer, y text);
";

/// (column, type, SQL expressions of its values; row i+1 takes value i, NULL past the end).
/// Row 1 of every column is NULL: the first value listed goes to row 2.
const COLUMNS: &[(&str, &str, &[&str])] = &[
    ("c_int2", "smallint", &["-32768", "32767", "0"]),
    ("c_int4", "integer", &["-2147483648", "2147483647", "0"]),
    (
        "c_int8",
        "bigint",
        &["-9223372036854775808", "9223372036854775807", "0"],
    ),
    (
        "c_numeric",
        "numeric",
        &[
            "'NaN'",
            "'Infinity'",
            "'-Infinity'",
            "repeat('9', 1000)::numeric",
            "('-0.' || repeat('0', 500) || '1')::numeric",
            "'1.500'",
            "0",
        ],
    ),
    (
        "c_numeric_ps",
        "numeric(12,4)",
        &[
            "'-99999999.9999'",
            "'99999999.9999'",
            "'NaN'",
            "0",
            "'0.0001'",
        ],
    ),
    (
        "c_numeric_big",
        "numeric(1000,0)",
        &["repeat('9', 1000)::numeric", "-1"],
    ),
    ("c_numeric_neg_scale", "numeric(5,-2)", &["1234500", "-100"]),
    (
        "c_real",
        "real",
        &[
            "'NaN'",
            "'Infinity'",
            "'-Infinity'",
            "'3.4028235e38'",
            "'1.4e-45'",
            "'-0'",
            "'0.1'",
        ],
    ),
    (
        "c_double",
        "double precision",
        &[
            "'NaN'",
            "'Infinity'",
            "'-Infinity'",
            "'1.7976931348623157e308'",
            "'5e-324'",
            "'-0'",
            "'0.1'",
        ],
    ),
    ("c_bool", "boolean", &["true", "false"]),
    (
        "c_text",
        "text",
        &[
            "''",
            "'héllo 🚀 日本語'",
            "E'tab\\there\\nnewline\\\\backslash''quote\"dq'",
            "repeat('x', 100000)",
        ],
    ),
    ("c_varchar", "varchar(10)", &["'abc'", "''", "'ünïcödé'"]),
    ("c_char", "char(5)", &["'ab'", "''", "'abcde'"]),
    (
        "c_bytea",
        "bytea",
        &[
            "'\\x'",
            "'\\x00'",
            "'\\x00ff00ff'",
            "decode(repeat('00', 1000), 'hex')",
        ],
    ),
    (
        "c_date",
        "date",
        &[
            "'infinity'",
            "'-infinity'",
            "'4713-01-01 BC'",
            "'5874897-12-31'",
            "'2000-02-29'",
            "'0001-01-01'",
        ],
    ),
    (
        "c_time",
        "time",
        &["'00:00:00'", "'24:00:00'", "'23:59:59.999999'"],
    ),
    ("c_time3", "time(3)", &["'12:34:56.789'"]),
    (
        "c_timetz",
        "timetz",
        &["'00:00:00+1559'", "'24:00:00-1559'", "'12:34:56.789+05:30'"],
    ),
    (
        "c_timestamp",
        "timestamp",
        &[
            "'infinity'",
            "'-infinity'",
            "'4713-01-01 00:00:00 BC'",
            "'294276-12-31 23:59:59.999999'",
            "'2000-01-01 00:00:00.000001'",
            "'1970-01-01 00:00:00'",
        ],
    ),
    (
        "c_timestamptz",
        "timestamptz",
        &[
            "'infinity'",
            "'-infinity'",
            "'4713-01-01 00:00:00+00 BC'",
            "'294276-12-31 23:59:59.999999+00'",
            "'2024-02-29 12:00:00.5-08'",
            "'1969-12-31 23:59:59.999999+00'",
        ],
    ),
    (
        "c_interval",
        "interval",
        &[
            "'178000000 years'",
            "'-178000000 years'",
            "'1 mon -2 days 03:04:05.678901'",
            "'0'",
        ],
    ),
    (
        "c_uuid",
        "uuid",
        &[
            "'00000000-0000-0000-0000-000000000000'",
            "'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'",
        ],
    ),
    (
        "c_json",
        "json",
        &[
            "'{\"b\": 1,  \"a\": [1, 2, {\"x\": null}]}'",
            "'\"str\"'",
            "'null'",
        ],
    ),
    (
        "c_jsonb",
        "jsonb",
        &[
            "'{\"b\": 1, \"a\": [1, 2.50, {\"x\": null}]}'",
            "'[]'",
            "'\"ü\"'",
        ],
    ),
    (
        "c_inet",
        "inet",
        &["'192.168.0.1/24'", "'::1'", "'2001:db8::ff00:42:8329/64'"],
    ),
    ("c_cidr", "cidr", &["'10.0.0.0/8'", "'2001:db8::/32'"]),
    ("c_macaddr", "macaddr", &["'08:00:2b:01:02:03'"]),
    (
        "c_money",
        "money",
        &["'-92233720368547758.08'", "'92233720368547758.07'", "0"],
    ),
    ("c_bit", "bit(8)", &["B'10101010'", "B'00000000'"]),
    ("c_varbit", "varbit", &["B''", "B'1'", "B'1010101010101'"]),
    ("c_enum", "mood", &["'sad'", "'happy ☺'"]),
    ("c_domain_int", "posint", &["1", "2147483647"]),
    ("c_domain_text", "short_text", &["'x'", "''"]),
    (
        "c_int_array",
        "integer[]",
        &[
            "'{1,NULL,3}'",
            "'{}'",
            "'{{1,2},{3,4}}'",
            "'[0:1]={5,6}'",
            "'{NULL}'",
        ],
    ),
    (
        "c_text_array",
        "text[]",
        &["ARRAY['a,b', 'NULL', NULL, '', 'x\"y', 'back\\slash', ' sp ']"],
    ),
    (
        "c_numeric_array",
        "numeric(6,2)[]",
        &["'{1.50,NaN,NULL,-0.01}'"],
    ),
    (
        "c_tstz_array",
        "timestamptz[]",
        &["'{infinity,\"2020-01-01 00:00:00+00\",NULL}'"],
    ),
    ("c_date_array", "date[]", &["'{2020-01-01,-infinity,NULL}'"]),
    ("c_bool_array", "boolean[]", &["'{t,f,NULL}'"]),
    (
        "c_bytea_array",
        "bytea[]",
        &["ARRAY['\\x00'::bytea, NULL, '\\x'::bytea]"],
    ),
    (
        "c_uuid_array",
        "uuid[]",
        &["ARRAY['a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'::uuid, NULL]"],
    ),
    ("c_enum_array", "mood[]", &["'{sad,\"happy ☺\",NULL}'"]),
    (
        "c_jsonb_array",
        "jsonb[]",
        &["ARRAY['{\"a\": 1}'::jsonb, 'null'::jsonb, NULL]"],
    ),
    (
        "c_float_array",
        "double precision[]",
        &["'{NaN,-Infinity,1.5,-0}'"],
    ),
    (
        "c_interval_array",
        "interval[]",
        &["ARRAY['1 day'::interval, NULL]"],
    ),
    ("c_varchar_array", "varchar(3)[]", &["'{abc,\"\",NULL}'"]),
    // Text-form types: ranges, geometric, composite, extensions, and more.
    (
        "c_int4range",
        "int4range",
        &["'[1,10)'", "'empty'", "'(,5]'"],
    ),
    (
        "c_tstzrange",
        "tstzrange",
        &["'[2020-01-01 00:00:00+00,infinity)'"],
    ),
    ("c_numrange", "numrange", &["'[1.5,2.25]'"]),
    (
        "c_int4multirange",
        "int4multirange",
        &["'{[1,3), [5,7)}'", "'{}'"],
    ),
    ("c_point", "point", &["'(1.5,-2)'", "'(NaN,Infinity)'"]),
    ("c_box", "box", &["'(1,1),(0,0)'"]),
    ("c_polygon", "polygon", &["'((0,0),(1,0),(1,1))'"]),
    ("c_circle", "circle", &["'<(0,0),2.5>'"]),
    ("c_path", "path", &["'[(0,0),(1,1),(2,0)]'"]),
    ("c_line", "line", &["'{1,-1,0}'"]),
    ("c_composite", "pair", &["'(1,\"a b\")'", "'(,)'"]),
    ("c_hstore", "hstore", &["'\"a\"=>\"1\", \"b\"=>NULL'", "''"]),
    ("c_citext", "citext", &["'MiXeD'"]),
    ("c_ltree", "ltree", &["'a.b.c'", "''"]),
    ("c_tsvector", "tsvector", &["'a fat:1A cat:2'"]),
    ("c_tsquery", "tsquery", &["'fat & (rat | cat)'"]),
    ("c_pg_lsn", "pg_lsn", &["'16/B374D848'"]),
    ("c_int_2d", "integer[][]", &["'{{1,2},{3,4}}'", "'{}'"]),
    ("c_xml", "xml", &["'<a x=\"1\">t</a>'"]),
    ("c_box_array", "box[]", &["'{(1,1),(0,0);(2,2),(1,1)}'"]),
    ("c_oid", "oid", &["4294967295"]),
    ("c_char1", "\"char\"", &["'x'"]),
];

fn rows() -> usize {
    1 + COLUMNS.iter().map(|(_, _, v)| v.len()).max().unwrap_or(0)
}

fn create_table_sql(name: &str) -> String {
    let cols: Vec<String> = COLUMNS.iter().map(|(c, t, _)| format!("{c} {t}")).collect();
    format!(
        "CREATE TABLE {name} (id integer PRIMARY KEY, {})",
        cols.join(", ")
    )
}

fn insert_sql(name: &str) -> Vec<String> {
    (0..rows())
        .map(|row| {
            let values: Vec<String> = COLUMNS
                .iter()
                .map(
                    |(_, t, v)| match row.checked_sub(1).and_then(|i| v.get(i)) {
                        Some(expr) => format!("({expr})::{t}"),
                        None => "NULL".to_owned(),
                    },
                )
                .collect();
            format!("INSERT INTO {name} VALUES ({row}, {})", values.join(", "))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_type_round_trips_exactly() -> Result<()> {
    let stack = Stack::get();
    let source_db = stack.source.create_database("types_src").await?;
    let target_db = stack.target.create_database("types_dst").await?;
    let source = stack.source.connect(&source_db).await?;
    let target = stack.target.connect(&target_db).await?;

    // 1. Written in the source cluster.
    source.batch_execute(SETUP).await?;
    source.batch_execute(&create_table_sql("t")).await?;
    for sql in insert_sql("t") {
        source
            .batch_execute(&sql)
            .await
            .with_context(|| sql.clone())?;
    }

    // 2. Classified from the catalog.
    let types = TypeCatalog::load(&source).await?;
    let table = catalog::load_table(
        &source,
        &types,
        &TableName {
            schema: "public".into(),
            name: "t".into(),
        },
    )
    .await?;
    let kind_of = |name: &str| {
        table
            .columns
            .iter()
            .find(|c| c.name == name)
            .map(|c| c.kind.clone())
            .unwrap()
    };
    assert_eq!(
        kind_of("c_numeric_ps"),
        Kind::Decimal {
            precision: 12,
            scale: 4
        }
    );
    assert_eq!(kind_of("c_numeric"), Kind::Text);
    assert_eq!(kind_of("c_numeric_neg_scale"), Kind::Text);
    assert_eq!(kind_of("c_domain_int"), Kind::Int32);
    assert_eq!(kind_of("c_int_array"), Kind::Array(Box::new(Kind::Int32)));
    assert_eq!(kind_of("c_box_array"), Kind::Text);
    assert_eq!(kind_of("c_hstore"), Kind::Text);
    assert_eq!(table.primary_key, vec![0]);

    // 3. Read in text form with Ferry's session settings (as COPY and pgoutput give it).
    source.batch_execute(&session_settings_sql()).await?;
    let names: Vec<String> = table
        .columns
        .iter()
        .map(|c| catalog::quote_ident(&c.name))
        .collect();
    let messages = source
        .simple_query(&format!("SELECT {} FROM t ORDER BY id", names.join(", ")))
        .await?;

    // 4. Encoded with schemas registered in the built-in registry.
    let registry_url = ferry_testkit::serve_registry(None).await?;
    let writer = RegistryClient::new(&registry_url, None)?;
    let topic = format!("{}.source.public.t", unique_name("ferry"));
    let codec = TableEncoder::new(&writer, table.clone(), topic, 0, 1, source_db.clone()).await?;
    let mut framed = Vec::new();
    for message in &messages {
        let SimpleQueryMessage::Row(row) = message else {
            continue;
        };
        let i = framed.len();
        let mut values = Vec::with_capacity(table.columns.len());
        for (c, column) in table.columns.iter().enumerate() {
            values.push(match row.get(c) {
                None => Datum::Null,
                Some(text) => parse_text(&column.kind, text)
                    .with_context(|| format!("column {}", column.name))?,
            });
        }
        let event = ChangeEvent {
            key: vec![values[0].clone()],
            before: None,
            after: Some(values),
            op: Op::Read,
            ts_ms: 1,
            vsn: Vsn(i as u64 + 1),
            source: SourceInfo {
                db: source_db.clone(),
                schema: "public".into(),
                table: "t".into(),
                snapshot: true,
                lsn_or_scn: "0/0".into(),
                txid: None,
                commit_ts_ms: 0,
            },
        };
        framed.push(codec.encode_event(&event)?);
    }
    assert_eq!(framed.len(), rows());

    // 5. Decoded by a fresh client (schemas fetched by id), and by the converter.
    let decoder = EventDecoder::new(RegistryClient::new(&registry_url, None)?);
    let converter = schema_registry_converter::async_impl::avro::AvroDecoder::new(
        schema_registry_converter::async_impl::schema_registry::SrSettings::new(
            registry_url.clone(),
        ),
    );
    let mut decoded = Vec::new();
    for (i, (key, value)) in framed.iter().enumerate() {
        assert_eq!(decoder.decode_key(key).await?, vec![Datum::Int(i as i32)]);
        let event = decoder.decode_event(value).await?;
        assert_eq!(event.vsn, Vsn(i as u64 + 1));
        assert_eq!(event.op, Op::Read);
        // The importer's path (source skipped, not built) reads the same change
        // (compared as text: a NaN value is not equal to itself).
        let change = decoder.decode_change(value).await?;
        let mine = (
            &change.row_type,
            &change.before,
            &change.after,
            change.op,
            change.vsn,
        );
        let full = (
            &event.row_type,
            &event.before,
            &event.after,
            event.op,
            event.vsn,
        );
        assert_eq!(format!("{mine:?}"), format!("{full:?}"));
        assert_eq!(
            (change.schema, change.table),
            (event.source.schema.as_str(), event.source.table.as_str())
        );
        let theirs = converter
            .decode(Some(value))
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let apache_avro::types::Value::Record(fields) = theirs.value else {
            bail!("the converter did not decode a record");
        };
        assert_eq!(
            fields[0],
            (
                "vsn".to_owned(),
                apache_avro::types::Value::Long(i as i64 + 1)
            )
        );
        decoded.push(event);
    }

    // 6. Written to the target through the types' input functions.
    target.batch_execute(SETUP).await?;
    target.batch_execute(&create_table_sql("expected")).await?;
    target.batch_execute(&create_table_sql("actual")).await?;
    for sql in insert_sql("expected") {
        target.batch_execute(&sql).await?;
    }
    let target_types = TypeCatalog::load(&target).await?;
    let dest = catalog::load_table(
        &target,
        &target_types,
        &TableName {
            schema: "public".into(),
            name: "actual".into(),
        },
    )
    .await?;
    target.batch_execute(&session_settings_sql()).await?;
    for event in &decoded {
        let row = event.after.as_ref().context("snapshot row without after")?;
        let mut cols = Vec::new();
        let mut exprs = Vec::new();
        let mut params: Vec<Option<String>> = Vec::new();
        for (field, value) in event.row_type.fields.iter().zip(row) {
            let column = dest
                .columns
                .iter()
                .find(|c| c.name == field.column)
                .with_context(|| format!("no column {} on the target", field.column))?;
            cols.push(catalog::quote_ident(&column.name));
            params.push(format_text(value));
            exprs.push(format!("${}::text::{}", params.len(), column.type_name));
        }
        let sql = format!(
            "INSERT INTO actual ({}) VALUES ({})",
            cols.join(", "),
            exprs.join(", ")
        );
        let refs: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = params
            .iter()
            .map(|p| p as &(dyn tokio_postgres::types::ToSql + Sync))
            .collect();
        target
            .execute(&sql, &refs)
            .await
            .with_context(|| format!("inserting row {:?}", row.first()))?;
    }

    // 7. Compared there.
    let mut differences = Vec::new();
    let missing: i64 = target
        .query_one(
            "SELECT count(*) FROM expected e FULL JOIN actual a USING (id) \
             WHERE e.id IS NULL OR a.id IS NULL",
            &[],
        )
        .await?
        .get(0);
    if missing != 0 {
        differences.push(format!("{missing} rows only on one side"));
    }
    for (c, t, _) in COLUMNS {
        let by_text = format!(
            "SELECT id, e.{c}::text, a.{c}::text FROM expected e JOIN actual a USING (id) \
             WHERE e.{c}::text IS DISTINCT FROM a.{c}::text ORDER BY id"
        );
        for row in target.query(&by_text, &[]).await? {
            let id: i32 = row.get(0);
            let e: Option<String> = row.get(1);
            let a: Option<String> = row.get(2);
            let clip = |s: Option<String>| s.map(|s| s.chars().take(80).collect::<String>());
            differences.push(format!(
                "{c} ({t}) row {id}: expected {:?}, got {:?}",
                clip(e),
                clip(a)
            ));
        }
        let by_value = format!(
            "SELECT count(*) FROM expected e JOIN actual a USING (id) \
             WHERE e.{c} IS DISTINCT FROM a.{c}"
        );
        match target.query_one(&by_value, &[]).await {
            Ok(row) => {
                let n: i64 = row.get(0);
                if n != 0 {
                    differences.push(format!("{c} ({t}): {n} rows differ by value"));
                }
            }
            // Types without an equality operator (json, point, xml, ...) compare by text only.
            Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::UNDEFINED_FUNCTION) => {}
            Err(e) => return Err(e.into()),
        }
    }
    assert!(
        differences.is_empty(),
        "differences:\n{}",
        differences.join("\n")
    );
    Ok(())
}

#[tokio::test]
async fn a_type_that_cannot_round_trip_is_refused_with_its_column_named() -> Result<()> {
    let stack = Stack::get();
    let db = stack.source.create_database("types_bad").await?;
    let client = stack.source.connect(&db).await?;
    client
        .batch_execute(
            "CREATE SCHEMA app;
             CREATE TABLE app.refs (id int PRIMARY KEY, owner regclass, kind regtype, ok text);",
        )
        .await?;
    let types = TypeCatalog::load(&client).await?;
    let err = catalog::load_table(
        &client,
        &types,
        &TableName {
            schema: "app".into(),
            name: "refs".into(),
        },
    )
    .await
    .unwrap_err();
    let CatalogError::Unsupported(columns) = &err else {
        bail!("expected unsupported columns, got {err}");
    };
    assert_eq!(columns.len(), 2, "both bad columns are reported at once");
    let message = err.to_string();
    assert!(
        message.contains("column app.refs.owner has type regclass"),
        "{message}"
    );
    assert!(
        message.contains("column app.refs.kind has type regtype"),
        "{message}"
    );
    assert!(
        message.contains("store the object's name as text instead"),
        "{message}"
    );
    Ok(())
}
