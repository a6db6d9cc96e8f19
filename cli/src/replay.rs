//! `ferry replay`: reads a stream again from a VSN, offsets or a time (DESIGN.md §7),
//! either to JSON lines for audit or into a database for recovery.
//!
//! - To a file (or stdout): one event per line ([`ferry_shared::json`]), merged into VSN
//!   order across partitions and tables, each event once even when the exporter wrote it
//!   twice after a crash ([`ferry_shared::replay`]).
//! - Into a database: through the importer's apply path, exactly once and restartable,
//!   with positions under the replay's own group `<prefix>.replay.<name>`
//!   ([`ferry_importer::replay`]).
//!
//! Both stop at the end point, by default the partitions' ends when the replay starts.

use std::collections::VecDeque;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ferry_importer::replay::{ReplayApplied, ReplayApply};
use ferry_shared::avro::{AvroType, RecordType};
use ferry_shared::catalog::TableName;
use ferry_shared::codec::EventDecoder;
use ferry_shared::config::{Config, ConfigError, DatabaseConfig};
use ferry_shared::envelope::DecodedEvent;
use ferry_shared::json::JsonEvent;
use ferry_shared::position::Vsn;
use ferry_shared::registry::RegistryClient;
use ferry_shared::replay::{
    parse_time_ms, plan, EndAt, MergedReader, OffsetStart, PartitionRange, ReadError,
    RetainedRecord, Selection, StartAt,
};
use ferry_shared::shutdown::Shutdown;
use ferry_shared::topics::{Destination, Stream, Topics};
use ferry_shared::value::Datum;

use crate::writer::ThreadWriter;

pub use ferry_shared::replay::parse_table;

/// What to replay.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplayOptions {
    /// `source` or `target`.
    pub stream: Stream,
    /// Tables (`schema.table`); empty means every table of the stream.
    pub tables: Vec<TableName>,
    /// Where to start.
    pub start: StartAt,
    /// Where to stop.
    pub end: EndAt,
}

/// The database a replay writes to.
#[derive(Clone, Debug, PartialEq)]
pub enum ReplayTarget {
    /// A configured database: `target`, `source-replica` or `source`.
    Configured(Destination),
    /// Any other database (for example a restored backup).
    Database(DatabaseConfig),
}

/// What a replay to JSON lines wrote.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FileSummary {
    /// Events written.
    pub events: u64,
    /// VSN of the first event written.
    pub first_vsn: Option<Vsn>,
    /// VSN of the last event written.
    pub last_vsn: Option<Vsn>,
    /// False when stopped by shutdown before the end point.
    pub completed: bool,
}

/// Why a replay failed.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    /// The configuration lacks what the replay needs.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Reading the topics failed.
    #[error(transparent)]
    Read(#[from] ReadError),
    /// A record could not be decoded.
    #[error("record {at}: {message}")]
    Decode {
        /// `topic[partition]@offset`.
        at: String,
        /// Why.
        message: String,
    },
    /// Writing the output failed.
    #[error("writing {path}: {source}")]
    Io {
        /// The file (or `stdout`).
        path: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Applying to the database failed.
    #[error(transparent)]
    Apply(#[from] ferry_importer::Error),
}

/// The start given by the flags `--from-vsn`, `--from-time` (RFC 3339 or ms) and
/// `--from-offset` (repeatable; `topic:partition:offset` or `partition:offset`); at most
/// one kind may be given, none means the beginning.
pub fn start_at(
    from_vsn: Option<u64>,
    from_time: Option<&str>,
    from_offsets: &[String],
) -> Result<StartAt, String> {
    let given = usize::from(from_vsn.is_some())
        + usize::from(from_time.is_some())
        + usize::from(!from_offsets.is_empty());
    if given > 1 {
        return Err("give one of --from-vsn, --from-time, --from-offset".into());
    }
    if let Some(v) = from_vsn {
        return Ok(StartAt::Vsn(Vsn(v)));
    }
    if let Some(t) = from_time {
        return parse_time_ms(t).map(StartAt::TimeMs);
    }
    if !from_offsets.is_empty() {
        return from_offsets
            .iter()
            .map(|s| s.parse::<OffsetStart>())
            .collect::<Result<Vec<_>, _>>()
            .map(StartAt::Offsets);
    }
    Ok(StartAt::Beginning)
}

/// The end given by the flags `--to-vsn` (inclusive) and `--to-time` (exclusive; RFC
/// 3339 or ms); none means the partitions' ends when the replay starts.
pub fn end_at(to_vsn: Option<u64>, to_time: Option<&str>) -> Result<EndAt, String> {
    match (to_vsn, to_time) {
        (Some(_), Some(_)) => Err("give one of --to-vsn, --to-time".into()),
        (Some(v), None) => Ok(EndAt::Vsn(Vsn(v))),
        (None, Some(t)) => parse_time_ms(t).map(EndAt::TimeMs),
        (None, None) => Ok(EndAt::Now),
    }
}

/// A registry client as the configuration says.
pub fn registry(config: &Config) -> Result<RegistryClient, ReplayError> {
    RegistryClient::from_config(config).map_err(|e| ReplayError::Decode {
        at: "(registry)".into(),
        message: e.to_string(),
    })
}

/// Decodes one record to its JSON form (`None` for a record without a value).
pub async fn to_json(
    decoder: &EventDecoder,
    r: &RetainedRecord,
) -> Result<Option<JsonEvent>, ReplayError> {
    Ok(decoded(decoder, r)
        .await?
        .map(|d| JsonEvent::from_decoded(&d.event, &d.key_layout, &d.key)))
}

/// A record's event and key, decoded.
struct Decoded {
    event: DecodedEvent,
    key_layout: Arc<RecordType>,
    key: Vec<Datum>,
}

/// Where a record is, for errors: `topic[partition]@offset`.
fn at(r: &RetainedRecord) -> String {
    format!("{}[{}]@{}", r.topic, r.partition, r.offset)
}

/// A record's key; a record without one is an error.
fn key(r: &RetainedRecord) -> Result<&[u8], ReplayError> {
    r.key.as_deref().ok_or_else(|| ReplayError::Decode {
        at: at(r),
        message: "no key".into(),
    })
}

/// Decodes one record's value and key (`None` for a record without a value).
async fn decoded(
    decoder: &EventDecoder,
    r: &RetainedRecord,
) -> Result<Option<Decoded>, ReplayError> {
    let Some(value) = &r.value else {
        return Ok(None);
    };
    let event = decoder
        .decode_event(value)
        .await
        .map_err(|e| ReplayError::Decode {
            at: at(r),
            message: e.to_string(),
        })?;
    let key = key(r)?;
    let (key_type, datum) = decoder
        .decode_datum(key)
        .await
        .map_err(|e| ReplayError::Decode {
            at: at(r),
            message: e.to_string(),
        })?;
    match (key_type.as_ref(), datum) {
        (AvroType::Record(layout), Datum::Record(key)) => Ok(Some(Decoded {
            event,
            key_layout: layout.clone(),
            key,
        })),
        _ => Err(ReplayError::Decode {
            at: at(r),
            message: "the key is not a record".into(),
        }),
    }
}

/// The partition ranges a replay reads.
pub async fn ranges(
    config: &Config,
    opts: &ReplayOptions,
) -> Result<Vec<PartitionRange>, ReplayError> {
    let kafka = config.kafka.client_config();
    let topics = Topics::new(config.migration.topic_prefix());
    let selection = Selection {
        stream: opts.stream,
        tables: opts.tables.clone(),
    };
    let names = selection.topics(&kafka, &topics).await?;
    Ok(plan(&kafka, &names, &opts.start, &opts.end).await?)
}

/// Writes the selected events as JSON lines to `out`, in VSN order.
pub async fn replay_to_writer<W: Write>(
    config: &Config,
    opts: &ReplayOptions,
    out: &mut W,
    out_name: &str,
    mut shutdown: Shutdown,
) -> Result<FileSummary, ReplayError> {
    let decoder = EventDecoder::new(registry(config)?);
    let ranges = ranges(config, opts).await?;
    let mut reader = MergedReader::start(&config.kafka.client_config(), ranges)?;
    let io = |source| ReplayError::Io {
        path: out_name.to_owned(),
        source,
    };
    let mut summary = FileSummary::default();
    let started = Instant::now();
    let mut last_report = Instant::now();
    // Batches decode and turn into JSON on the runtime's threads, several at once, and
    // are written in the order read: the file is the same as from one task, and decoding
    // (most of a replay's CPU) is no longer on one core.
    let mut encoding: VecDeque<tokio::task::JoinHandle<Result<Encoded, ReplayError>>> =
        VecDeque::new();
    let mut write = |encoded: Encoded, summary: &mut FileSummary| -> Result<(), ReplayError> {
        out.write_all(&encoded.lines).map_err(io)?;
        summary.events += encoded.events;
        if summary.first_vsn.is_none() {
            summary.first_vsn = encoded.first_vsn;
        }
        if encoded.last_vsn.is_some() {
            summary.last_vsn = encoded.last_vsn;
        }
        Ok(())
    };
    let result = 'read: loop {
        // The oldest batch is written once it is done, or when enough wait behind it.
        while encoding.front().is_some_and(|t| t.is_finished()) || encoding.len() >= IN_FLIGHT {
            if let Some(task) = encoding.pop_front() {
                match joined(task.await) {
                    Ok(encoded) => {
                        if let Err(e) = write(encoded, &mut summary) {
                            break 'read Err(e);
                        }
                    }
                    Err(e) => break 'read Err(e),
                }
            }
        }
        let next = tokio::select! {
            biased;
            _ = shutdown.wait() => break Ok(()),
            next = reader.next_batch() => next,
        };
        let records = match next {
            None => {
                summary.completed = true;
                break Ok(());
            }
            Some(Err(e)) => break Err(e.into()),
            Some(Ok(records)) => records,
        };
        let decoder = decoder.clone();
        encoding.push_back(tokio::spawn(
            async move { encode(&decoder, &records).await },
        ));
        if last_report.elapsed() >= Duration::from_secs(5) {
            last_report = Instant::now();
            log_progress(&reader, summary.events, started);
        }
    };
    reader.close().await;
    // What was read is written (in order), whatever ended the reading; the first error
    // ends it.
    let mut result = result;
    for task in encoding {
        if result.is_err() {
            task.abort();
            continue;
        }
        match joined(task.await) {
            Ok(encoded) => {
                if let Err(e) = write(encoded, &mut summary) {
                    result = Err(e);
                }
            }
            Err(e) => result = Err(e),
        }
    }
    if !matches!(result, Ok(())) {
        summary.completed = false;
    }
    out.flush().map_err(io)?;
    result.map(|()| summary)
}

/// Batches being decoded at once, at most.
const IN_FLIGHT: usize = 8;

/// A batch of records as JSON lines.
struct Encoded {
    lines: Vec<u8>,
    events: u64,
    first_vsn: Option<Vsn>,
    last_vsn: Option<Vsn>,
}

/// Decodes `records` and writes each as one JSON line.
async fn encode(
    decoder: &EventDecoder,
    records: &[RetainedRecord],
) -> Result<Encoded, ReplayError> {
    let mut e = Encoded {
        lines: Vec::with_capacity(records.len() * 256),
        events: 0,
        first_vsn: None,
        last_vsn: None,
    };
    for r in records {
        let Some(value) = &r.value else {
            continue;
        };
        let key = key(r)?;
        // Straight from the record's bytes into the batch's buffer (no value tree, line
        // string or JSON tree per event).
        decoder
            .write_json_line(key, value, &mut e.lines)
            .await
            .map_err(|err| ReplayError::Decode {
                at: at(r),
                message: err.to_string(),
            })?;
        e.lines.push(b'\n');
        e.events += 1;
        e.first_vsn.get_or_insert(r.vsn);
        e.last_vsn = Some(r.vsn);
    }
    Ok(e)
}

/// The result of an encoding task (a panic is an internal error, named).
fn joined(
    r: Result<Result<Encoded, ReplayError>, tokio::task::JoinError>,
) -> Result<Encoded, ReplayError> {
    r.map_err(|e| ReplayError::Decode {
        at: "a batch of records".into(),
        message: format!("the decoding task failed: {e}"),
    })?
}

fn log_progress(reader: &MergedReader, events: u64, started: Instant) {
    let (read, total) = reader.progress();
    let rate = read as f64 / started.elapsed().as_secs_f64().max(0.001);
    let left = total.saturating_sub(read);
    let eta = if rate > 0.0 {
        format!("{:.0}s", left as f64 / rate)
    } else {
        "unknown".into()
    };
    tracing::info!(events, read, remaining = left, rate = format!("{rate:.0}/s"), eta = %eta, "replay progress");
}

/// Writes the selected events as JSON lines to `path` (created or truncated), or to
/// stdout when `path` is `None`.
pub async fn replay_to_file(
    config: &Config,
    opts: &ReplayOptions,
    path: Option<&Path>,
    shutdown: Shutdown,
) -> Result<FileSummary, ReplayError> {
    match path {
        Some(p) => {
            let name = p.display().to_string();
            let file = std::fs::File::create(p).map_err(|source| ReplayError::Io {
                path: name.clone(),
                source,
            })?;
            to_thread_writer(config, opts, file, &name, shutdown).await
        }
        // Written by the writing thread, a batch of lines per write.
        None => to_thread_writer(config, opts, std::io::stdout(), "stdout", shutdown).await,
    }
}

/// [`replay_to_writer`] into `inner`, written on a thread of its own so that a slow file
/// or pipe never holds a runtime worker ([`ThreadWriter`]).
async fn to_thread_writer<W: Write + Send + 'static>(
    config: &Config,
    opts: &ReplayOptions,
    inner: W,
    name: &str,
    shutdown: Shutdown,
) -> Result<FileSummary, ReplayError> {
    let io = |source| ReplayError::Io {
        path: name.to_owned(),
        source,
    };
    // No buffer in front: replay_to_writer writes whole batches of lines, each handed to
    // the thread as it is. It flushes at its end, which waits for the thread to have
    // written everything; an error of the thread comes back from that flush.
    let mut out = ThreadWriter::spawn(inner).map_err(io)?;
    replay_to_writer(config, opts, &mut out, name, shutdown).await
}

/// Applies the selected events to `to` through the importer's apply path, exactly once,
/// with positions stored in that database under `<prefix>.replay.<name>`; running again
/// with the same name resumes ([`ferry_importer::replay`]).
pub async fn replay_to_database(
    config: &Config,
    opts: &ReplayOptions,
    to: ReplayTarget,
    name: &str,
    shutdown: Shutdown,
) -> Result<ReplayApplied, ReplayError> {
    let (db, label) = match to {
        ReplayTarget::Configured(d) => {
            let db = match d {
                Destination::Target => config.require_target()?,
                Destination::SourceReplica => config.require_source_replica()?,
                Destination::Source => config.require_source()?,
            };
            (db.clone(), d.as_str().to_owned())
        }
        ReplayTarget::Database(db) => {
            let label = format!("database {}", db.display());
            (db, label)
        }
    };
    let apply = ReplayApply {
        db,
        label,
        name: name.to_owned(),
        selection: Selection {
            stream: opts.stream,
            tables: opts.tables.clone(),
        },
        start: opts.start.clone(),
        end: opts.end.clone(),
    };
    Ok(ferry_importer::replay::apply(config, apply, shutdown).await?)
}

/// The default file name of a replay to file: `replay-<stream>-<unix ms>.jsonl`.
pub fn default_file_name(stream: Stream) -> PathBuf {
    let ms = ferry_shared::clock::now_ms();
    PathBuf::from(format!("replay-{stream}-{ms}.jsonl"))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn flags_make_start_and_end_points() {
        assert_eq!(start_at(None, None, &[]).unwrap(), StartAt::Beginning);
        assert_eq!(start_at(Some(5), None, &[]).unwrap(), StartAt::Vsn(Vsn(5)));
        assert_eq!(
            start_at(None, Some("1970-01-01T00:00:01Z"), &[]).unwrap(),
            StartAt::TimeMs(1000)
        );
        assert!(matches!(
            start_at(None, None, &["t:0:3".into(), "t:1:4".into()]).unwrap(),
            StartAt::Offsets(v) if v.len() == 2
        ));
        assert!(start_at(Some(1), Some("1"), &[]).is_err());
        assert_eq!(end_at(None, None).unwrap(), EndAt::Now);
        assert_eq!(end_at(Some(9), None).unwrap(), EndAt::Vsn(Vsn(9)));
        assert!(end_at(Some(9), Some("1")).is_err());
    }
}
