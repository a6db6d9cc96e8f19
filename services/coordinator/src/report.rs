//! `ferry get data-migration-report`: per table and per database, what was exported and
//! imported and the final row count (the seeds' report).
//!
//! Exported counts come from the exporters' stored checkpoints (events per table and
//! kind up to the checkpoint; exact across restarts because replayed changes keep their
//! VSNs). Imported counts come from `ferry_metadata.table_counts` in each database,
//! written in the same transaction as the rows. A snapshot chunk redone after an
//! exporter crash is counted once by the exporter but may be applied twice (as
//! idempotent upserts), so imported snapshot rows can exceed exported ones after a
//! crash; the final row counts are what must agree.

use std::collections::BTreeSet;

use ferry_shared::catalog::list_tables;
use ferry_shared::topics::{Destination, Stream};
use serde::{Deserialize, Serialize};

use crate::databases::{self, connect};
use crate::migration::Migration;

/// One row of the report: one table in one database.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReportRow {
    /// `schema.table`.
    pub table: String,
    /// `source`, `target` or `source-replica`.
    pub database: String,
    /// Snapshot rows exported from this database.
    pub exported_snapshot_rows: Option<u64>,
    /// Snapshot rows imported into this database.
    pub imported_snapshot_rows: Option<u64>,
    /// Inserts exported from this database.
    pub exported_inserts: Option<u64>,
    /// Updates exported from this database.
    pub exported_updates: Option<u64>,
    /// Deletes exported from this database.
    pub exported_deletes: Option<u64>,
    /// Inserts imported into this database.
    pub imported_inserts: Option<u64>,
    /// Updates imported into this database.
    pub imported_updates: Option<u64>,
    /// Deletes imported into this database.
    pub imported_deletes: Option<u64>,
    /// `count(*)` now (`None`: the database or table is not reachable).
    pub final_row_count: Option<i64>,
}

/// The whole report.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    /// Rows, by table then database (source, target, source-replica).
    pub rows: Vec<ReportRow>,
    /// Problems met while building it (a database not reachable, ...).
    pub notes: Vec<String>,
    /// The current errors of exporter and importer instances (as in status): a count
    /// short of the source's may be an importer stopped on one of these.
    #[serde(default)]
    pub errors: Vec<crate::positions::InstanceError>,
}

/// Builds the report now.
pub async fn build(m: &Migration) -> Report {
    let view = m.view();
    let mut report = Report {
        errors: m
            .heartbeats
            .borrow()
            .clone()
            .unwrap_or_default()
            .current_errors(ferry_shared::clock::now_ms()),
        ..Report::default()
    };
    let exported = |stream: Stream| view.checkpoints.get(&stream).map(|c| c.counts.clone());
    let source_out = exported(Stream::Source).unwrap_or_default();
    let target_out = exported(Stream::Target);
    for stream in [Stream::Source, Stream::Target] {
        if let Some(fin) = view.finals.get(&stream).filter(|f| f.after_stop_events > 0) {
            report.notes.push(format!(
                "{} change(s) committed on the {stream} database after the cutover's stop marker were not exported (at least; the application kept writing there): they stay on the {stream} database",
                fin.after_stop_events
            ));
        }
    }

    let mut dbs = Vec::new();
    for d in [
        Destination::Source,
        Destination::Target,
        Destination::SourceReplica,
    ] {
        if m.config.database(d).is_none() {
            continue;
        }
        match connect(&m.config, d).await {
            Ok(db) => dbs.push((d, Some(db))),
            Err(e) => {
                report.notes.push(e.describe());
                dbs.push((d, None));
            }
        }
    }

    // The tables: the migration's selection on the source, plus every table with counts.
    let mut tables: BTreeSet<(String, String)> = BTreeSet::new();
    for (d, db) in &dbs {
        if *d != Destination::Source {
            continue;
        }
        if let (Some(db), Some(cfg)) = (db, m.config.source.as_ref()) {
            match list_tables(&db.client, &cfg.schemas).await {
                Ok(names) => tables.extend(
                    names
                        .into_iter()
                        .filter(|t| m.config.migration.selects(&t.schema, &t.name))
                        .map(|t| (t.schema, t.name)),
                ),
                Err(e) => report
                    .notes
                    .push(format!("listing the source's tables: {e}")),
            }
        }
    }
    for name in source_out.keys() {
        if let Some((s, t)) = name.split_once('.') {
            tables.insert((s.to_owned(), t.to_owned()));
        }
    }

    let mut imported = Vec::new();
    for (d, db) in &dbs {
        let counts = match db {
            Some(db) => match databases::table_counts(db, &m.topics.import_group(*d)).await {
                Ok(c) => Some(c),
                Err(e) => {
                    report.notes.push(format!("the {d}: {}", e.describe()));
                    None
                }
            },
            None => None,
        };
        if let Some(c) = &counts {
            for name in c.keys() {
                if let Some((s, t)) = name.split_once('.') {
                    tables.insert((s.to_owned(), t.to_owned()));
                }
            }
        }
        imported.push(counts);
    }

    for (schema, table) in &tables {
        let name = format!("{schema}.{table}");
        for ((d, db), counts) in dbs.iter().zip(&imported) {
            let final_row_count = match db {
                Some(db) => match databases::row_count(db, schema, table).await {
                    Ok(n) => n,
                    Err(e) => {
                        report.notes.push(format!("the {d}: {}", e.describe()));
                        None
                    }
                },
                None => None,
            };
            let out = match d {
                Destination::Source => Some(source_out.get(&name).copied().unwrap_or_default()),
                Destination::Target => target_out
                    .as_ref()
                    .map(|c| c.get(&name).copied().unwrap_or_default()),
                Destination::SourceReplica => None,
            };
            let inn = match (d, counts) {
                // The source is imported into only with fall-back.
                (Destination::Source, Some(c)) if c.is_empty() => None,
                (_, Some(c)) => Some(c.get(&name).copied().unwrap_or_default()),
                (_, None) => None,
            };
            report.rows.push(ReportRow {
                table: name.clone(),
                database: d.as_str().to_owned(),
                exported_snapshot_rows: out
                    .filter(|_| *d == Destination::Source)
                    .map(|c| c.snapshot_rows),
                imported_snapshot_rows: inn
                    .filter(|_| *d != Destination::Source)
                    .map(|c| c.snapshot_rows),
                exported_inserts: out.map(|c| c.inserts),
                exported_updates: out.map(|c| c.updates),
                exported_deletes: out.map(|c| c.deletes),
                imported_inserts: inn.map(|c| c.inserts),
                imported_updates: inn.map(|c| c.updates),
                imported_deletes: inn.map(|c| c.deletes),
                final_row_count,
            });
        }
    }
    report
}

/// The report as a plain-text table.
pub fn render(report: &Report) -> String {
    use std::fmt::Write as _;
    let headers = [
        "TABLE",
        "DATABASE",
        "EXPORTED SNAPSHOT ROWS",
        "IMPORTED SNAPSHOT ROWS",
        "EXPORTED INSERTS",
        "EXPORTED UPDATES",
        "EXPORTED DELETES",
        "IMPORTED INSERTS",
        "IMPORTED UPDATES",
        "IMPORTED DELETES",
        "FINAL ROW COUNT",
    ];
    let cell = |v: Option<String>| v.unwrap_or_else(|| "-".into());
    let rows: Vec<Vec<String>> = report
        .rows
        .iter()
        .map(|r| {
            vec![
                r.table.clone(),
                r.database.clone(),
                cell(r.exported_snapshot_rows.map(|v| v.to_string())),
                cell(r.imported_snapshot_rows.map(|v| v.to_string())),
                cell(r.exported_inserts.map(|v| v.to_string())),
                cell(r.exported_updates.map(|v| v.to_string())),
                cell(r.exported_deletes.map(|v| v.to_string())),
                cell(r.imported_inserts.map(|v| v.to_string())),
                cell(r.imported_updates.map(|v| v.to_string())),
                cell(r.imported_deletes.map(|v| v.to_string())),
                cell(r.final_row_count.map(|v| v.to_string())),
            ]
        })
        .collect();
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.len());
        }
    }
    let mut out = String::new();
    let line = |out: &mut String, cells: &[String]| {
        let parts: Vec<String> = cells
            .iter()
            .zip(&widths)
            .enumerate()
            .map(|(i, (c, w))| {
                if i < 2 {
                    format!("{c:<w$}")
                } else {
                    format!("{c:>w$}")
                }
            })
            .collect();
        let _ = writeln!(out, "{}", parts.join(" | ").trim_end());
    };
    line(
        &mut out,
        &headers.iter().map(|h| (*h).to_owned()).collect::<Vec<_>>(),
    );
    let _ = writeln!(
        out,
        "{}",
        widths
            .iter()
            .map(|w| "-".repeat(*w))
            .collect::<Vec<_>>()
            .join("-+-")
    );
    let mut last_table = None;
    for (r, cells) in report.rows.iter().zip(&rows) {
        if last_table.is_some() && last_table != Some(&r.table) {
            let _ = writeln!(out);
        }
        last_table = Some(&r.table);
        line(&mut out, cells);
    }
    for n in &report.notes {
        let _ = writeln!(out, "note: {n}");
    }
    for e in &report.errors {
        let _ = writeln!(
            out,
            "error: {} {} {} {} ({} error at {}): {}",
            e.role,
            e.unit,
            e.instance,
            if e.state == "failed" {
                "FAILED"
            } else {
                "retrying"
            },
            e.error.kind,
            ferry_shared::state::format_ms(e.error.at_ms),
            e.error.message
        );
    }
    out
}
