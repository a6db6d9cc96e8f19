use super::*;

fn p(s: &str) -> ParsedSchema {
    ParsedSchema::parse(s, &[]).unwrap()
}

fn reads(writer: &str, reader: &str) -> bool {
    can_read(&p(writer), &p(reader))
}

fn record(fields: &str) -> String {
    format!(r#"{{"type":"record","name":"R","namespace":"ns","fields":[{fields}]}}"#)
}

#[test]
fn identical_schemas_read_each_other() {
    let s = record(r#"{"name":"a","type":"int"},{"name":"b","type":"string"}"#);
    assert!(reads(&s, &s));
}

#[test]
fn added_field_needs_default_to_read_old_data() {
    let old = record(r#"{"name":"a","type":"int"}"#);
    let with_default =
        record(r#"{"name":"a","type":"int"},{"name":"b","type":"string","default":"x"}"#);
    let without_default = record(r#"{"name":"a","type":"int"},{"name":"b","type":"string"}"#);
    assert!(reads(&old, &with_default));
    assert!(!reads(&old, &without_default));
    // The other direction: old readers skip the new field either way.
    assert!(reads(&with_default, &old));
    assert!(reads(&without_default, &old));
    let problems = incompatibilities(&p(&old), &p(&without_default));
    assert_eq!(problems.len(), 1);
    assert!(problems[0].contains("'b'"), "{problems:?}");
    assert!(problems[0].contains("no default"), "{problems:?}");
}

#[test]
fn removed_field_readable_by_new_only_if_old_had_default() {
    let old = record(r#"{"name":"a","type":"int"},{"name":"b","type":"string"}"#);
    let old_default =
        record(r#"{"name":"a","type":"int"},{"name":"b","type":"string","default":""}"#);
    let new = record(r#"{"name":"a","type":"int"}"#);
    // New reader ignores the removed field.
    assert!(reads(&old, &new));
    // Old reader needs a default for the field the new writer no longer writes.
    assert!(!reads(&new, &old));
    assert!(reads(&new, &old_default));
}

#[test]
fn field_alias_matches_renamed_field() {
    let old = record(r#"{"name":"a","type":"int"}"#);
    let renamed = record(r#"{"name":"z","type":"int","aliases":["a"]}"#);
    assert!(reads(&old, &renamed));
    assert!(!reads(&renamed, &old));
}

#[test]
fn numeric_promotions_only_widen() {
    let order = ["int", "long", "float", "double"];
    for (i, w) in order.iter().enumerate() {
        for (j, r) in order.iter().enumerate() {
            let writer = format!(r#""{w}""#);
            let reader = format!(r#""{r}""#);
            assert_eq!(reads(&writer, &reader), j >= i, "{w} -> {r}");
        }
    }
}

#[test]
fn string_and_bytes_are_interchangeable() {
    assert!(reads(r#""string""#, r#""bytes""#));
    assert!(reads(r#""bytes""#, r#""string""#));
    assert!(!reads(r#""string""#, r#""int""#));
    assert!(!reads(r#""int""#, r#""string""#));
    assert!(!reads(r#""boolean""#, r#""null""#));
}

#[test]
fn field_type_change_is_incompatible_both_ways() {
    let a = record(r#"{"name":"a","type":"string"}"#);
    let b = record(r#"{"name":"a","type":"int"}"#);
    assert!(!reads(&a, &b));
    assert!(!reads(&b, &a));
    let problems = incompatibilities(&p(&a), &p(&b));
    assert!(problems[0].contains("/fields/0/type"), "{problems:?}");
}

#[test]
fn unions_need_every_writer_branch_readable() {
    let opt_string = r#"["null","string"]"#;
    // Widening to a union reads the old plain type.
    assert!(reads(r#""string""#, opt_string));
    // Narrowing a union is incompatible: a null written before cannot be read.
    assert!(!reads(opt_string, r#""string""#));
    // Adding a branch is backward compatible, removing it is not.
    let wider = r#"["null","string","long"]"#;
    assert!(reads(opt_string, wider));
    assert!(!reads(wider, opt_string));
    // Promotion through a union branch.
    assert!(reads(r#"["null","int"]"#, r#"["null","long"]"#));
    assert!(!reads(r#"["null","long"]"#, r#"["null","int"]"#));
    // Branch order does not matter.
    assert!(reads(r#"["string","null"]"#, r#"["null","string"]"#));
}

#[test]
fn enums_need_writer_symbols_or_reader_default() {
    let ab = r#"{"type":"enum","name":"E","symbols":["A","B"]}"#;
    let abc = r#"{"type":"enum","name":"E","symbols":["A","B","C"]}"#;
    let ab_default = r#"{"type":"enum","name":"E","symbols":["A","B"],"default":"A"}"#;
    let other_name = r#"{"type":"enum","name":"F","symbols":["A","B","C"]}"#;
    assert!(reads(ab, abc));
    assert!(!reads(abc, ab));
    assert!(reads(abc, ab_default));
    assert!(!reads(ab, other_name));
}

#[test]
fn arrays_and_maps_check_their_items() {
    let ai = r#"{"type":"array","items":"int"}"#;
    let al = r#"{"type":"array","items":"long"}"#;
    let mi = r#"{"type":"map","values":"int"}"#;
    let ml = r#"{"type":"map","values":"long"}"#;
    assert!(reads(ai, al));
    assert!(!reads(al, ai));
    assert!(reads(mi, ml));
    assert!(!reads(ml, mi));
    assert!(!reads(ai, mi));
}

#[test]
fn fixed_needs_same_name_and_size() {
    let f4 = r#"{"type":"fixed","name":"F","size":4}"#;
    let f8 = r#"{"type":"fixed","name":"F","size":8}"#;
    let g4 = r#"{"type":"fixed","name":"G","size":4}"#;
    let g4_alias = r#"{"type":"fixed","name":"G","size":4,"aliases":["F"]}"#;
    assert!(reads(f4, f4));
    assert!(!reads(f4, f8));
    assert!(!reads(f8, f4));
    assert!(!reads(f4, g4));
    assert!(reads(f4, g4_alias));
}

#[test]
fn record_names_compare_unqualified_or_by_alias() {
    let a = r#"{"type":"record","name":"x.R","fields":[]}"#;
    let b = r#"{"type":"record","name":"y.R","fields":[]}"#;
    let c = r#"{"type":"record","name":"S","fields":[]}"#;
    let c_alias = r#"{"type":"record","name":"S","aliases":["x.R"],"fields":[]}"#;
    assert!(reads(a, b));
    assert!(!reads(a, c));
    assert!(reads(a, c_alias));
}

#[test]
fn named_references_resolve_even_when_definition_moves() {
    // The writer defines P in field `a` and refers to it from `b`; the reader dropped `a`,
    // so its `b` carries the definition.
    let writer = record(
        r#"{"name":"a","type":{"type":"record","name":"P","fields":[{"name":"x","type":"int"}]}},
               {"name":"b","type":"P"}"#,
    );
    let reader = record(
        r#"{"name":"b","type":{"type":"record","name":"P","fields":[{"name":"x","type":"long"}]}}"#,
    );
    let narrower = record(
        r#"{"name":"b","type":{"type":"record","name":"P","fields":[{"name":"x","type":"string"}]}}"#,
    );
    assert!(reads(&writer, &reader));
    assert!(!reads(&writer, &narrower));
}

#[test]
fn recursive_types_terminate() {
    let list = r#"{"type":"record","name":"Node","fields":[
            {"name":"v","type":"int"},{"name":"next","type":["null","Node"]}]}"#;
    let list_long = r#"{"type":"record","name":"Node","fields":[
            {"name":"v","type":"long"},{"name":"next","type":["null","Node"]}]}"#;
    assert!(reads(list, list));
    assert!(reads(list, list_long));
    assert!(!reads(list_long, list));
}

#[test]
fn logical_types_resolve_as_underlying_type_but_decimals_must_match() {
    let date = r#"{"type":"int","logicalType":"date"}"#;
    let ts = r#"{"type":"long","logicalType":"timestamp-millis"}"#;
    assert!(reads(date, r#""int""#));
    assert!(reads(r#""int""#, date));
    assert!(reads(date, ts));
    assert!(!reads(ts, date));
    let d10_2 = r#"{"type":"bytes","logicalType":"decimal","precision":10,"scale":2}"#;
    let d12_4 = r#"{"type":"bytes","logicalType":"decimal","precision":12,"scale":4}"#;
    assert!(reads(d10_2, d10_2));
    assert!(!reads(d10_2, d12_4));
    assert!(!reads(d12_4, d10_2));
    assert!(reads(d10_2, r#""bytes""#));
    let uuid = r#"{"type":"string","logicalType":"uuid"}"#;
    assert!(reads(uuid, r#""string""#));
    assert!(reads(r#""string""#, uuid));
}

#[test]
fn references_supply_named_types() {
    let address = r#"{"type":"record","name":"Address","namespace":"ns","fields":[{"name":"city","type":"string"}]}"#;
    let person = r#"{"type":"record","name":"Person","namespace":"ns","fields":[{"name":"home","type":"ns.Address"}]}"#;
    let parsed = ParsedSchema::parse(person, &[address.to_string()]).unwrap();
    assert!(can_read(&parsed, &parsed));
}

#[test]
fn levels_check_the_right_direction() {
    let v1 = p(&record(r#"{"name":"a","type":"int"}"#));
    // Added field without default: old data unreadable by new (not backward), new data
    // readable by old (forward).
    let v2 = p(&record(
        r#"{"name":"a","type":"int"},{"name":"b","type":"int"}"#,
    ));
    let existing = [(1, &v1)];
    use CompatibilityLevel::*;
    assert!(!check(Backward, &v2, &existing).is_empty());
    assert!(!check(BackwardTransitive, &v2, &existing).is_empty());
    assert!(check(Forward, &v2, &existing).is_empty());
    assert!(check(ForwardTransitive, &v2, &existing).is_empty());
    assert!(!check(Full, &v2, &existing).is_empty());
    assert!(check(None, &v2, &existing).is_empty());
    // Removed field without default: backward yes, forward no.
    let v3 = p(&record(r#"{"name":"b","type":"int","default":0}"#));
    let existing = [(2, &v2)];
    assert!(check(Backward, &v3, &existing).is_empty());
    assert!(!check(Forward, &v3, &existing).is_empty());
    assert!(!check(FullTransitive, &v3, &existing).is_empty());
    let message = &check(Forward, &v3, &existing)[0];
    assert!(message.contains("version 2"), "{message}");
}

/// Why apache-avro's checker is not used (see the module documentation): both cases below
/// would let a schema through that cannot read data already written.
#[test]
fn apache_avro_checker_accepts_what_must_be_refused() {
    use apache_avro::schema_compatibility::{Compatibility, SchemaCompatibility};
    let opt_string = Schema::parse_str(r#"["null","string"]"#).unwrap();
    let string = Schema::parse_str(r#""string""#).unwrap();
    assert_eq!(
        SchemaCompatibility::can_read(&opt_string, &string),
        Ok(Compatibility::Partial)
    );
    assert!(!reads(r#"["null","string"]"#, r#""string""#));

    let writer = record(
        r#"{"name":"a","type":{"type":"record","name":"P","fields":[{"name":"x","type":"int"}]}},
           {"name":"b","type":"P"}"#,
    );
    let reader = record(
        r#"{"name":"b","type":{"type":"record","name":"P","fields":[{"name":"x","type":"int"}]}}"#,
    );
    assert!(SchemaCompatibility::can_read(&p(&writer).root, &p(&reader).root).is_err());
    assert!(reads(&writer, &reader));
}

#[test]
fn level_names_round_trip() {
    use CompatibilityLevel::*;
    for level in [
        None,
        Backward,
        BackwardTransitive,
        Forward,
        ForwardTransitive,
        Full,
        FullTransitive,
    ] {
        assert_eq!(level.as_str().parse::<CompatibilityLevel>().unwrap(), level);
    }
    assert!("SIDEWAYS".parse::<CompatibilityLevel>().is_err());
    assert_eq!(CompatibilityLevel::default(), Backward);
}
