use super::narrowing::diff_rows;
use super::side::KeyedRow;
use super::*;
use ferry_shared::catalog::TableSchema;

fn row(key: &str, hash: &str) -> KeyedRow {
    (vec![key.to_owned()], hash.to_owned())
}

#[test]
fn diff_walks_both_lists_in_key_order() {
    let keys = vec!["id".to_owned()];
    // Key order 1 < 2 < 3 < 4 < 5; texts would sort differently ("10" < "9").
    let left = vec![row("1", "a"), row("2", "b"), row("4", "d"), row("5", "e")];
    let right = vec![row("2", "b"), row("3", "c"), row("4", "x"), row("6", "f")];
    let out = diff_rows(&keys, left, right);
    let got: Vec<(String, KeyDifference)> =
        out.into_iter().map(|d| (d.key, d.difference)).collect();
    assert_eq!(
        got,
        vec![
            ("(id)=(1)".to_owned(), KeyDifference::MissingOnRight),
            ("(id)=(3)".to_owned(), KeyDifference::MissingOnLeft),
            ("(id)=(4)".to_owned(), KeyDifference::Different),
            ("(id)=(5)".to_owned(), KeyDifference::MissingOnRight),
            ("(id)=(6)".to_owned(), KeyDifference::MissingOnLeft),
        ]
    );
}

#[test]
fn ranges_become_row_comparisons_with_cast_bounds() {
    let table = TableSchema {
        schema: "public".into(),
        name: "t".into(),
        columns: vec![
            Column {
                name: "region".into(),
                type_name: "text".into(),
                type_oid: 25,
                nullable: false,
                kind: ferry_shared::catalog::Kind::Text,
            },
            Column {
                name: "id".into(),
                type_name: "integer".into(),
                type_oid: 23,
                nullable: false,
                kind: ferry_shared::catalog::Kind::Int32,
            },
        ],
        primary_key: vec![0, 1],
        replica_identity: 'd',
    };
    let columns: Vec<&Column> = table.columns.iter().collect();
    let collatable: HashSet<String> = ["region".to_owned()].into();
    let plan = Plan::new(&table, &columns, &["region", "id"], &collatable);
    let range = KeyRange {
        lower: Some(vec!["eu".into(), "7".into()]),
        upper: Some(vec!["us".into(), "1".into()]),
    };
    let (condition, params) = plan.condition(&range);
    assert_eq!(
        condition,
        "(\"region\" COLLATE \"C\", \"id\") >= (($1::text::text) COLLATE \"C\", ($2::text::integer)) \
         AND (\"region\" COLLATE \"C\", \"id\") < (($3::text::text) COLLATE \"C\", ($4::text::integer))"
    );
    assert_eq!(params, vec!["eu", "7", "us", "1"]);
    assert_eq!(plan.condition(&KeyRange::ALL).0, "true");
    assert!(plan.row_hash.contains("md5(ROW(\"region\", \"id\")::text)"));
}
