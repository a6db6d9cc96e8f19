//! Rendering of a [`VerifyReport`] for people.

use std::fmt::Write as _;

use super::{KeyDifference, TableResult, TableStatus, VerifyReport};

impl VerifyReport {
    /// True when every table is equal on both sides.
    pub fn is_equal(&self) -> bool {
        self.tables.iter().all(|t| t.equal)
    }

    /// A plain-text report for people: one line per table, then the differing keys and
    /// notes of each table that differs, then a verdict line.
    pub fn render_table(&self) -> String {
        let headers = [
            "table".to_owned(),
            format!("{} rows", self.left),
            format!("{} rows", self.right),
            "result".to_owned(),
        ];
        let count = |rows: Option<u64>| rows.map_or_else(|| "-".to_owned(), |n| n.to_string());
        let lines: Vec<[String; 4]> = self
            .tables
            .iter()
            .map(|t| {
                [
                    t.table.clone(),
                    count(t.left_rows),
                    count(t.right_rows),
                    self.outcome(t),
                ]
            })
            .collect();
        let mut widths = headers.clone().map(|h| h.chars().count());
        for line in &lines {
            for (width, cell) in widths.iter_mut().zip(line) {
                *width = (*width).max(cell.chars().count());
            }
        }
        let mut out = String::new();
        for line in std::iter::once(&headers).chain(&lines) {
            let _ = writeln!(
                out,
                "{:<w0$}  {:>w1$}  {:>w2$}  {}",
                line[0],
                line[1],
                line[2],
                line[3],
                w0 = widths[0],
                w1 = widths[1],
                w2 = widths[2],
            );
        }
        for t in self.tables.iter().filter(|t| !t.equal) {
            if t.differing_keys.is_empty() && t.notes.is_empty() {
                continue;
            }
            let _ = writeln!(out, "\n{}:", t.table);
            for key in &t.differing_keys {
                let how = match key.difference {
                    KeyDifference::Different => "differs".to_owned(),
                    KeyDifference::MissingOnLeft => format!("missing on {}", self.left),
                    KeyDifference::MissingOnRight => format!("missing on {}", self.right),
                };
                let _ = writeln!(out, "  {}: {how}", key.key);
            }
            if t.keys_truncated {
                let _ = writeln!(
                    out,
                    "  ... more keys differ; only the first {} are listed",
                    t.differing_keys.len()
                );
            }
            for note in &t.notes {
                let _ = writeln!(out, "  note: {note}");
            }
        }
        let differing = self.tables.iter().filter(|t| !t.equal).count();
        let _ = if differing == 0 {
            writeln!(
                out,
                "\n{} and {} are equal: {} table(s) compared",
                self.left,
                self.right,
                self.tables.len()
            )
        } else {
            writeln!(
                out,
                "\n{} and {} differ in {differing} of {} table(s)",
                self.left,
                self.right,
                self.tables.len()
            )
        };
        out
    }

    fn outcome(&self, t: &TableResult) -> String {
        match t.status {
            TableStatus::Equal => "equal".to_owned(),
            TableStatus::MissingOnLeft => format!("missing on {}", self.left),
            TableStatus::MissingOnRight => format!("missing on {}", self.right),
            TableStatus::MissingOnBoth => format!("missing on {} and {}", self.left, self.right),
            TableStatus::Different => {
                let mut parts = Vec::new();
                if t.left_rows != t.right_rows {
                    parts.push("row counts differ".to_owned());
                } else if t.left_checksum != t.right_checksum {
                    parts.push("checksums differ".to_owned());
                }
                if !t.differing_keys.is_empty() {
                    let more = if t.keys_truncated { "+" } else { "" };
                    parts.push(format!("{}{more} key(s) differ", t.differing_keys.len()));
                }
                if t.left_rows == t.right_rows && t.left_checksum == t.right_checksum {
                    parts.push("columns differ".to_owned());
                }
                format!("different: {}", parts.join(", "))
            }
        }
    }
}
