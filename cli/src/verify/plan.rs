//! [`Plan`]: the SQL pieces for one table on one side, and [`KeyRange`].

use std::collections::HashSet;

use ferry_shared::catalog::{quote_ident, Column, TableSchema};

/// The SQL pieces for one table on one side.
pub(super) struct Plan {
    /// `"schema"."table"`.
    pub(super) qualified: String,
    /// The per-row hash: a signed 64-bit integer from the row text's md5.
    pub(super) row_hash: String,
    /// The row text's md5 (for listing rows of a small range).
    pub(super) row_md5: String,
    /// Key column names, in key order.
    pub(super) key_names: Vec<String>,
    /// Key column expressions for ordering and comparing (with `COLLATE "C"` where the
    /// column is collatable).
    pub(super) key_exprs: Vec<String>,
    /// Per key column, its type and collation clause: a bound's text parameter becomes
    /// `($n::text::<type>)<collation>`, comparable with `key_exprs`.
    pub(super) key_casts: Vec<(String, &'static str)>,
}

impl Plan {
    pub(super) fn new(
        table: &TableSchema,
        columns: &[&Column],
        key_names: &[&str],
        collatable: &HashSet<String>,
    ) -> Plan {
        let row_text = format!(
            "ROW({})::text",
            columns
                .iter()
                .map(|c| quote_ident(&c.name))
                .collect::<Vec<_>>()
                .join(", ")
        );
        let mut key_exprs = Vec::new();
        let mut key_casts = Vec::new();
        for name in key_names {
            let type_name = table
                .columns
                .iter()
                .find(|c| c.name == *name)
                .map_or("text", |c| c.type_name.as_str());
            let collate = if collatable.contains(*name) {
                " COLLATE \"C\""
            } else {
                ""
            };
            key_exprs.push(format!("{}{collate}", quote_ident(name)));
            key_casts.push((type_name.to_owned(), collate));
        }
        Plan {
            qualified: table.qualified(),
            row_hash: format!("('x' || substr(md5({row_text}), 1, 16))::bit(64)::bigint"),
            row_md5: format!("md5({row_text})"),
            key_names: key_names.iter().map(|k| (*k).to_owned()).collect(),
            key_exprs,
            key_casts,
        }
    }

    /// `WHERE` condition of `range` with parameters from `$1`, and the parameters.
    pub(super) fn condition<'r>(&self, range: &'r KeyRange) -> (String, Vec<&'r String>) {
        let mut parts = Vec::new();
        let mut params: Vec<&String> = Vec::new();
        for (bound, op) in [(&range.lower, ">="), (&range.upper, "<")] {
            if let Some(values) = bound {
                let casts: Vec<String> = self
                    .key_casts
                    .iter()
                    .zip(values)
                    .map(|((type_name, collate), value)| {
                        params.push(value);
                        format!("(${}::text::{type_name}){collate}", params.len())
                    })
                    .collect();
                parts.push(format!(
                    "({}) {op} ({})",
                    self.key_exprs.join(", "),
                    casts.join(", ")
                ));
            }
        }
        if parts.is_empty() {
            ("true".to_owned(), params)
        } else {
            (parts.join(" AND "), params)
        }
    }

    pub(super) fn key_order(&self) -> String {
        self.key_exprs.join(", ")
    }

    pub(super) fn key_texts(&self) -> String {
        self.key_names
            .iter()
            .enumerate()
            // Aliased: an output column named like the key column would make `ORDER BY
            // "id"` sort by the text.
            .map(|(i, k)| format!("{}::text AS ferry_k{i}", quote_ident(k)))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// A key range: `lower <= key < upper`, each bound absent for an open end. Bounds are
/// key values as text, in key column order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct KeyRange {
    pub(super) lower: Option<Vec<String>>,
    pub(super) upper: Option<Vec<String>>,
}

impl KeyRange {
    pub(super) const ALL: KeyRange = KeyRange {
        lower: None,
        upper: None,
    };
}
