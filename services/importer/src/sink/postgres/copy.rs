//! Snapshot rows by `COPY`: the payload (binary when every value of the run has an exact
//! binary form for its destination column, [`binary`]; text otherwise, so both store the
//! same values), and the `COPY` straight into a table none of the rows is in yet.

mod binary;

use std::sync::atomic::Ordering;

use bytes::Bytes;
use ferry_shared::value::{write_text, Datum};
use futures::SinkExt;
use tokio_postgres::error::SqlState;
use tokio_postgres::{ToStatement, Transaction};

use super::catalog::DestTable;
use super::prepared::Statements;
use crate::sink::Applied;

/// Snapshot rows as a `COPY` payload.
pub(super) struct CopyPayload {
    /// `" (FORMAT binary)"` or `""` (text).
    pub(super) format: &'static str,
    pub(super) data: Bytes,
}

impl CopyPayload {
    /// Adds `rows` to the binary or the text count.
    pub(super) fn count(&self, applied: &mut Applied, rows: usize) {
        if self.format.is_empty() {
            applied.text_copy_rows += rows;
        } else {
            applied.binary_copy_rows += rows;
        }
    }
}

/// Encodes `rows` (values in `cols` order) for `COPY`: binary when `binary_copy` and
/// every column and value has an exact binary form, else text.
pub(super) fn copy_payload<'a>(
    table: &DestTable,
    cols: &[String],
    rows: impl Iterator<Item = &'a [Datum]> + Clone,
    n: usize,
    binary_copy: bool,
) -> CopyPayload {
    let encodings: Option<Vec<binary::Encoding>> = if binary_copy {
        cols.iter()
            .map(|c| table.oids.get(c).and_then(|&oid| binary::Encoding::of(oid)))
            .collect()
    } else {
        None
    };
    if let Some(data) = encodings.and_then(|e| binary::encode_rows(&e, rows.clone(), n)) {
        return CopyPayload {
            format: " (FORMAT binary)",
            data,
        };
    }
    tracing::debug!(table = %table.name, rows = n, "snapshot rows go in with text COPY: a column's type or a value has no exact binary form");
    let mut buf = String::with_capacity(n * 64);
    let mut text = String::new();
    for values in rows {
        for (i, v) in values.iter().enumerate() {
            if i > 0 {
                buf.push('\t');
            }
            text.clear();
            if write_text(v, &mut text) {
                copy_escape(&text, &mut buf);
            } else {
                buf.push_str("\\N");
            }
        }
        buf.push('\n');
    }
    CopyPayload {
        format: "",
        data: Bytes::from(buf),
    }
}

/// Copies snapshot rows straight into the table while none of them exists (a first
/// snapshot): the same result as the upsert, without staging. True when the rows went
/// in. A unique violation (a row exists already, or a key comes twice) rolls the `COPY`
/// back and returns false: the rows then go through the staging table, and so does this
/// table for the rest of the session.
pub(super) async fn copy_direct(
    tx: &Transaction<'_>,
    statements: &mut Statements,
    table: &DestTable,
    list: &str,
    payload: &CopyPayload,
) -> Result<bool, tokio_postgres::Error> {
    if table.staged.load(Ordering::Relaxed) {
        return Ok(false);
    }
    let sql = format!(
        "COPY {} ({list}) FROM STDIN{}",
        table.qualified, payload.format
    );
    let statement = statements.get(tx, &sql).await?;
    // The savepoint goes out with the COPY (one round trip) and stays until the commit.
    let (saved, copied) = futures::join!(
        tx.batch_execute("SAVEPOINT ferry_copy"),
        copy_in(tx, &statement, payload.data.clone())
    );
    saved?;
    match copied {
        Ok(()) => Ok(true),
        Err(e) if e.code() == Some(&SqlState::UNIQUE_VIOLATION) => {
            tracing::debug!(table = %table.name, "snapshot rows exist already; upserting them through a staging table");
            table.staged.store(true, Ordering::Relaxed);
            tx.batch_execute("ROLLBACK TO SAVEPOINT ferry_copy").await?;
            Ok(false)
        }
        Err(e) => Err(e),
    }
}

/// Runs `statement` (a `COPY .. FROM STDIN`) with `payload` as its data.
pub(super) async fn copy_in<S: ToStatement + ?Sized>(
    tx: &Transaction<'_>,
    statement: &S,
    payload: Bytes,
) -> Result<(), tokio_postgres::Error> {
    let sink = tx.copy_in::<_, Bytes>(statement).await?;
    futures::pin_mut!(sink);
    sink.send(payload).await?;
    sink.finish().await?;
    Ok(())
}

/// Escapes a value for COPY's text format.
fn copy_escape(text: &str, out: &mut String) {
    for c in text.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\t' => out.push_str("\\t"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            other => out.push(other),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;

    #[test]
    fn copy_text_is_escaped() {
        let mut out = String::new();
        copy_escape("a\\b\tc\nd\re", &mut out);
        assert_eq!(out, "a\\\\b\\tc\\nd\\re");
    }
}
