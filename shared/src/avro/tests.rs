use super::*;
use crate::catalog::{Column, Kind, TableSchema};
use crate::value::Datum;

fn table() -> TableSchema {
    let col = |name: &str, kind: Kind, nullable: bool| Column {
        name: name.into(),
        type_name: format!("{kind:?}"),
        type_oid: 0,
        nullable,
        kind,
    };
    TableSchema {
        schema: "public".into(),
        name: "odd table".into(),
        columns: vec![
            col("id", Kind::Int64, false),
            col("1st col", Kind::Text, true),
            col(
                "1st-col",
                Kind::Decimal {
                    precision: 10,
                    scale: 2,
                },
                true,
            ),
            col("ts", Kind::TimestampTz, true),
            col("tags", Kind::Array(Box::new(Kind::Date)), true),
        ],
        primary_key: vec![0],
        replica_identity: 'f',
    }
}

#[test]
fn generated_schemas_parse_with_apache_avro_and_ours() {
    let t = table();
    for schema in [key_schema(&t), value_schema(&t)] {
        let text = schema.to_string();
        apache_avro::Schema::parse_str(&text).unwrap();
        parse_schema(&text).unwrap();
    }
    let v = value_schema(&t);
    let fields = &v["fields"][1]["type"][1]["fields"];
    assert_eq!(fields[1]["name"], "_1st_col");
    assert_eq!(fields[2]["name"], "_1st_col_2");
    assert_eq!(fields[2]["pg.name"], "1st-col");
}

#[test]
fn encoding_matches_apache_avro() {
    let t = table();
    let text = value_schema(&t).to_string();
    let ours = parse_schema(&text).unwrap();
    let row = Datum::Record(vec![
        Datum::Long(-5),
        Datum::String("ünï".into()),
        Datum::String("NaN".into()),
        Datum::TimestampTz(1_700_000_000_123_456),
        Datum::Array(vec![
            Datum::Date(-3),
            Datum::Null,
            Datum::String("infinity".into()),
        ]),
    ]);
    let envelope = Datum::Record(vec![
        Datum::Long(42),
        Datum::Null,
        row.clone(),
        Datum::String("c".into()),
        Datum::Long(1),
        Datum::Record(vec![
            Datum::String("db".into()),
            Datum::String("public".into()),
            Datum::String("odd table".into()),
            Datum::Bool(false),
            Datum::String("0/16".into()),
            Datum::Long(7),
            Datum::Long(1),
        ]),
    ]);
    let mut bytes = Vec::new();
    encode(&ours, &envelope, &mut bytes).unwrap_or_else(|e| panic!("{e}"));
    let ok = envelope.clone();
    // A value of the wrong shape is refused, naming the field.
    let mut wrong = envelope.clone();
    if let Datum::Record(f) = &mut wrong {
        f[3] = Datum::Long(1);
    }
    let err = encode(&ours, &wrong, &mut Vec::new()).unwrap_err();
    assert!(err.to_string().contains("field op"), "{err}");
    let back = decode(&ours, &mut Reader::new(&bytes)).unwrap();
    assert_eq!(back, ok);
    // Skipping reads exactly what decoding reads, and garbage fails cleanly.
    let mut twice = bytes.clone();
    twice.extend_from_slice(&bytes);
    let mut r = Reader::new(&twice);
    skip(&ours, &mut r).unwrap();
    assert_eq!(r.remaining(), bytes.len());
    assert_eq!(decode(&ours, &mut r).unwrap(), ok);
    assert_eq!(r.remaining(), 0);
    for cut in [1, bytes.len() / 2, bytes.len() - 1] {
        assert!(skip(&ours, &mut Reader::new(&bytes[..cut])).is_err());
    }
    // apache-avro reads our bytes with the same schema.
    let schema = apache_avro::Schema::parse_str(&text).unwrap();
    let reader = apache_avro::reader::datum::GenericDatumReader::builder(&schema)
        .build()
        .unwrap();
    let value = reader.read_value(&mut &bytes[..]).unwrap();
    let apache_avro::types::Value::Record(fields) = value else {
        panic!("not a record")
    };
    assert_eq!(fields[0].1, apache_avro::types::Value::Long(42));
}

#[test]
fn decoding_garbage_fails_cleanly() {
    let t = table();
    let ty = parse_schema(&value_schema(&t).to_string()).unwrap();
    for bytes in [&[][..], &[0xff; 12][..], &[2, 0x80][..], &[3][..]] {
        assert!(decode(&ty, &mut Reader::new(bytes)).is_err());
    }
}
