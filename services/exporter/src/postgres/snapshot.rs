//! The consistent snapshot: every selected table read inside one exported snapshot, by
//! parallel readers that each `SET TRANSACTION SNAPSHOT`, in chunks of heap blocks
//! (`ctid` ranges), with COPY in binary form when every column has an exact binary
//! reading ([`super::copy_binary`]), in text form otherwise.
//!
//! Chunks are ctid ranges planned from the table's size; the last chunk is open-ended.
//! A chunk redone after a crash is read from a newer snapshot: rows that moved between
//! blocks in between were changed after the first snapshot, so the change stream from
//! the slot (which starts at the first snapshot) carries them.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use ferry_shared::catalog::{quote_ident, TableSchema};
use ferry_shared::checkpoint::Chunk;
use ferry_shared::clock::now_ms;
use ferry_shared::config::DatabaseConfig;
use ferry_shared::shutdown::Shutdown;
use ferry_shared::value::{parse_text, session_settings_sql, Datum};
use futures::StreamExt;
use tokio::sync::{mpsc, watch};
use tokio_postgres::Client;

use super::copy_binary;
use crate::lead::{wait_for_importers, Lead};
use crate::sequencer::Item;
use crate::source::Work;
use crate::Error;
use ferry_shared::codec::SourceTemplate;

/// Events per batch sent to the stamper.
const BATCH: usize = 2000;

/// Splits a table into chunks of about `chunk_rows` rows, from its size on disk and
/// its row estimate.
pub(crate) async fn plan(
    client: &Client,
    table: &TableSchema,
    chunk_rows: u64,
) -> Result<Vec<Chunk>, Error> {
    let row = client
        .query_one(
            "SELECT (pg_relation_size(c.oid) / current_setting('block_size')::bigint)::bigint, \
                    c.relpages::bigint, c.reltuples::float8 \
             FROM pg_class c WHERE c.oid = $1::text::regclass",
            &[&table.qualified()],
        )
        .await
        .map_err(|e| Error::sql(format!("sizing table {table}"), e))?;
    let blocks: i64 = row.get(0);
    let relpages: i64 = row.get(1);
    let reltuples: f64 = row.get(2);
    let rows_per_block = if relpages > 0 && reltuples > 0.0 {
        reltuples / relpages as f64
    } else {
        // Never analyzed: guess from the column count (narrow rows fit ~100 a block).
        (8192.0 / (32.0 + 12.0 * table.columns.len() as f64)).max(1.0)
    };
    let per_chunk = ((chunk_rows as f64 / rows_per_block).floor() as i64).max(1);
    let mut chunks = Vec::new();
    let mut start = 0i64;
    while start + per_chunk < blocks {
        chunks.push(Chunk {
            start_block: start as u32,
            end_block: Some((start + per_chunk) as u32),
        });
        start += per_chunk;
    }
    chunks.push(Chunk {
        start_block: start as u32,
        end_block: None,
    });
    Ok(chunks)
}

/// Reads every work item inside snapshot `snapshot_name`, with `workers` parallel
/// readers, and sends `r` events and a [`Item::ChunkDone`] after each chunk. With
/// `lead`, a reader waits before each chunk while an importer is too far behind.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn read(
    source: &DatabaseConfig,
    snapshot_name: &str,
    snapshot_lsn: &str,
    work: Vec<Work>,
    workers: usize,
    items: mpsc::Sender<Vec<Item>>,
    shutdown: Shutdown,
    lead: Option<watch::Receiver<Lead>>,
) -> Result<(), Error> {
    let queue = Arc::new(Mutex::new(VecDeque::from(work)));
    let started = ferry_shared::clock::now_ms();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..workers.max(1) {
        let queue = queue.clone();
        let items = items.clone();
        let source = source.clone();
        let snapshot_name = snapshot_name.to_owned();
        let snapshot_lsn = snapshot_lsn.to_owned();
        let shutdown = shutdown.clone();
        let lead = lead.clone();
        tasks.spawn(async move {
            reader(
                &source,
                &snapshot_name,
                &snapshot_lsn,
                started,
                queue,
                items,
                shutdown,
                lead,
            )
            .await
        });
    }
    let mut result = Ok(());
    while let Some(r) = tasks.join_next().await {
        let r = r
            .map_err(|e| Error::Internal(format!("snapshot reader: {e}")))
            .and_then(|r| r);
        if let Err(e) = r {
            if result.is_ok() {
                result = Err(e);
                tasks.abort_all();
            }
        }
    }
    result
}

#[allow(clippy::too_many_arguments)]
async fn reader(
    source: &DatabaseConfig,
    snapshot_name: &str,
    snapshot_lsn: &str,
    started_ms: i64,
    queue: Arc<Mutex<VecDeque<Work>>>,
    items: mpsc::Sender<Vec<Item>>,
    mut shutdown: Shutdown,
    mut lead: Option<watch::Receiver<Lead>>,
) -> Result<(), Error> {
    let (client, connection) = source.connect().await.map_err(Error::Connect)?;
    client
        .batch_execute(&format!(
            "{} BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; SET TRANSACTION SNAPSHOT '{}';",
            session_settings_sql(),
            snapshot_name.replace('\'', "''")
        ))
        .await
        .map_err(|e| {
            Error::sql(
                "importing the exported snapshot (is the snapshot still open?)",
                e,
            )
        })?;
    loop {
        if let Some(lead) = &mut lead {
            wait_for_importers(lead, &mut shutdown).await;
            if shutdown.is_triggered() {
                break;
            }
        }
        let next = queue.lock().ok().and_then(|mut q| q.pop_front());
        let Some(work) = next else { break };
        let template = SourceTemplate {
            lsn: snapshot_lsn,
            txid: None,
            commit_ts_ms: started_ms,
        };
        tokio::select! {
            biased;
            _ = shutdown.wait() => break,
            r = read_chunk(&client, &work, template, &items) => r?,
        }
        if items
            .send(vec![Item::ChunkDone {
                table: work.table.name.clone(),
                chunk: work.index,
            }])
            .await
            .is_err()
        {
            break;
        }
    }
    drop(client);
    let _ = connection.await;
    Ok(())
}

async fn read_chunk(
    client: &Client,
    work: &Work,
    template: SourceTemplate<'_>,
    items: &mpsc::Sender<Vec<Item>>,
) -> Result<(), Error> {
    let enc = &work.table;
    let table = &enc.table;
    let mut filter = format!("ctid >= '({},0)'::tid", work.chunk.start_block);
    if let Some(end) = work.chunk.end_block {
        filter.push_str(&format!(" AND ctid < '({end},0)'::tid"));
    }
    let mut rows = CopyRows::open(client, table, &filter, true).await?;
    let mut batch = Vec::with_capacity(BATCH);
    let tail = enc.source_tail(true, template).map_err(|e| Error::Encode {
        table: enc.name.clone(),
        source: e,
    })?;
    // The envelope's ts_ms: read once per batch of rows.
    let mut ts_ms = now_ms();
    while let Some(row) = rows.next().await? {
        let p = enc
            .encode_snapshot_row(row, &tail, ts_ms)
            .map_err(|e| Error::Encode {
                table: enc.name.clone(),
                source: e,
            })?;
        batch.push(Item::Event(p));
        if batch.len() >= BATCH {
            items
                .send(std::mem::replace(&mut batch, Vec::with_capacity(BATCH)))
                .await
                .map_err(|_| Error::Internal("the stamper stopped".into()))?;
            ts_ms = now_ms();
        }
    }
    if !batch.is_empty() {
        items
            .send(batch)
            .await
            .map_err(|_| Error::Internal("the stamper stopped".into()))?;
    }
    Ok(())
}

/// Every row of `table` as a snapshot chunk reads it: in binary when `binary` and the
/// table has an exact binary reading, else in text. For the tests that hold the two
/// readings to the same values.
pub async fn copy_rows(
    client: &Client,
    table: &TableSchema,
    binary: bool,
) -> Result<Vec<Vec<Datum>>, Error> {
    let mut rows = CopyRows::open(client, table, "true", binary).await?;
    let mut all = Vec::new();
    while let Some(row) = rows.next().await? {
        all.push(row.to_vec());
    }
    Ok(all)
}

/// Whether a snapshot chunk reads `table` with binary COPY.
pub fn reads_binary(table: &TableSchema) -> bool {
    copy_binary::forms(table).is_some()
}

/// The rows of one `COPY (SELECT ...) TO STDOUT`, parsed as they arrive.
struct CopyRows<'t> {
    table: &'t TableSchema,
    stream: std::pin::Pin<Box<tokio_postgres::CopyOutStream>>,
    /// The binary reader; `None`: text COPY.
    binary: Option<copy_binary::Rows>,
    /// Bytes received and not parsed yet, from `start`.
    pending: Vec<u8>,
    start: usize,
    row: Vec<Datum>,
}

impl<'t> CopyRows<'t> {
    /// Starts the COPY of `table`'s rows that match `filter`, in binary when `binary`
    /// and every column has an exact binary reading ([`copy_binary`]), else in text.
    async fn open(
        client: &Client,
        table: &'t TableSchema,
        filter: &str,
        binary: bool,
    ) -> Result<CopyRows<'t>, Error> {
        let binary = if binary {
            copy_binary::forms(table).map(copy_binary::Rows::new)
        } else {
            None
        };
        let columns: Vec<String> = table.columns.iter().map(|c| quote_ident(&c.name)).collect();
        let sql = format!(
            "COPY (SELECT {} FROM {} WHERE {filter}) TO STDOUT{}",
            columns.join(", "),
            table.qualified(),
            if binary.is_some() {
                " (FORMAT binary)"
            } else {
                ""
            }
        );
        let stream = client
            .copy_out(sql.as_str())
            .await
            .map_err(|e| Error::sql(format!("reading table {table}"), e))?;
        Ok(CopyRows {
            table,
            stream: Box::pin(stream),
            binary,
            pending: Vec::new(),
            start: 0,
            row: Vec::with_capacity(table.columns.len()),
        })
    }

    /// The next row; `None` at the end of the COPY.
    async fn next(&mut self) -> Result<Option<&[Datum]>, Error> {
        let table = self.table;
        loop {
            let rest = &self.pending[self.start..];
            let used = match &mut self.binary {
                Some(rows) => match rows
                    .next(table, rest, &mut self.row)
                    .map_err(Error::Internal)?
                {
                    copy_binary::Next::Row(used) => Some(used),
                    copy_binary::Next::End(used) => {
                        self.start += used;
                        None
                    }
                    copy_binary::Next::More => None,
                },
                None => match rest.iter().position(|&b| b == b'\n') {
                    Some(nl) => {
                        parse_copy_line(table, &rest[..nl], &mut self.row)?;
                        Some(nl + 1)
                    }
                    None => None,
                },
            };
            if let Some(used) = used {
                self.start += used;
                return Ok(Some(&self.row));
            }
            self.pending.drain(..self.start);
            self.start = 0;
            match self.stream.next().await {
                Some(data) => {
                    let data: Bytes =
                        data.map_err(|e| Error::sql(format!("reading table {table}"), e))?;
                    self.pending.extend_from_slice(&data);
                }
                None => {
                    let ended = self.binary.as_ref().is_none_or(|rows| rows.ended());
                    if !ended || !self.pending.is_empty() {
                        return Err(Error::Internal(format!(
                            "table {table}: COPY ended in the middle of a row ({} bytes left)",
                            self.pending.len()
                        )));
                    }
                    return Ok(None);
                }
            }
        }
    }
}

fn parse_copy_line(table: &TableSchema, line: &[u8], row: &mut Vec<Datum>) -> Result<(), Error> {
    row.clear();
    let not_utf8 = |column: &str| {
        Error::Internal(format!(
            "table {table} column {column}: COPY text is not UTF-8"
        ))
    };
    for (i, field) in line.split(|&b| b == b'\t').enumerate() {
        let Some(column) = table.columns.get(i) else {
            return Err(Error::Internal(format!(
                "table {table}: COPY sent more columns than expected"
            )));
        };
        if field == b"\\N" {
            row.push(Datum::Null);
            continue;
        }
        let value = if field.contains(&b'\\') {
            let text = String::from_utf8(unescape(field)).map_err(|_| not_utf8(&column.name))?;
            parse_text(&column.kind, &text)
        } else {
            let text = std::str::from_utf8(field).map_err(|_| not_utf8(&column.name))?;
            parse_text(&column.kind, text)
        };
        row.push(value.map_err(|e| Error::Value {
            table: table.to_string(),
            column: column.name.clone(),
            source: e,
        })?);
    }
    if row.len() != table.columns.len() {
        return Err(Error::Internal(format!(
            "table {table}: COPY sent {} columns, expected {}",
            row.len(),
            table.columns.len()
        )));
    }
    Ok(())
}

/// Undoes COPY text escaping.
fn unescape(field: &[u8]) -> Vec<u8> {
    if !field.contains(&b'\\') {
        return field.to_vec();
    }
    let mut out = Vec::with_capacity(field.len());
    let mut i = 0;
    while i < field.len() {
        let b = field[i];
        if b != b'\\' || i + 1 >= field.len() {
            out.push(b);
            i += 1;
            continue;
        }
        let c = field[i + 1];
        i += 2;
        match c {
            b'b' => out.push(8),
            b'f' => out.push(12),
            b'n' => out.push(b'\n'),
            b'r' => out.push(b'\r'),
            b't' => out.push(b'\t'),
            b'v' => out.push(11),
            b'0'..=b'7' => {
                let mut v = u32::from(c - b'0');
                let mut n = 1;
                while n < 3 && i < field.len() && (b'0'..=b'7').contains(&field[i]) {
                    v = v * 8 + u32::from(field[i] - b'0');
                    i += 1;
                    n += 1;
                }
                out.push(v as u8);
            }
            b'x' if i < field.len() && field[i].is_ascii_hexdigit() => {
                let mut v = 0u32;
                let mut n = 0;
                while n < 2 && i < field.len() && field[i].is_ascii_hexdigit() {
                    v = v * 16 + (field[i] as char).to_digit(16).unwrap_or(0);
                    i += 1;
                    n += 1;
                }
                out.push(v as u8);
            }
            other => out.push(other),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unescapes_copy_text() {
        assert_eq!(unescape(b"plain"), b"plain");
        assert_eq!(unescape(b"a\\tb\\nc\\\\d"), b"a\tb\nc\\d");
        assert_eq!(unescape(b"\\101\\x41\\r\\b\\f\\v"), b"AA\r\x08\x0c\x0b");
        assert_eq!(unescape(b"end\\"), b"end\\");
    }
}
