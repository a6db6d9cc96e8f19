//! `ferry archive changes`: moves events that every importer has applied out of the
//! table topics, into JSON-lines files (`--move-to DIR`) or nowhere (`--delete`).
//!
//! Safety rule: a record is removed only when it lies below the position (`next_offset`)
//! stored in `ferry_metadata.positions` by EVERY importer that applies its stream, read
//! from each of those destination databases (the truth; Kafka's committed offsets are
//! only a copy). Which importers apply a stream follows from the configuration:
//!
//! | stream | importers that must have applied it |
//! | --- | --- |
//! | source | target; source-replica when configured |
//! | target | source-replica when configured; source when the workflow is fall-back |
//!
//! A configured destination without a position for a partition (its importer never
//! ran, or never got that partition) blocks that partition entirely. A destination that
//! can't be read stops the archive before anything is removed. Positions only move
//! forward, so the bound read at the start stays safe while the archive runs.
//!
//! The last record of every partition is always kept: a restarted exporter reads the
//! partitions' last records to stamp re-read rows above every VSN already in the topics
//! (DESIGN.md §4a), so a partition must never be emptied.
//!
//! Files: one per topic and run, `<topic>.<first vsn>-<last vsn>.jsonl`, each line an
//! event as `ferry replay` writes it plus its Kafka `topic`, `partition` and `offset`,
//! in VSN order. A file is written to a temporary name, synced and renamed before any
//! record is deleted. [`read_archive`] reads it back.

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};

use ferry_shared::codec::EventDecoder;
use ferry_shared::config::{Config, DatabaseConfig, Workflow};
use ferry_shared::json::JsonEvent;
use ferry_shared::position::Vsn;
use ferry_shared::replay::{MergedReader, PartitionRange, ReadError};
use ferry_shared::topics::{Destination, Stream, Topics};
use rdkafka::admin::{AdminClient, AdminOptions};
use rdkafka::client::DefaultClientContext;
use rdkafka::{Offset, TopicPartitionList};
use serde::Serialize;

use crate::replay::{registry, to_json, ReplayError};

/// What to do with applied events.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ArchiveMode {
    /// Write them to JSON-lines files in this directory, then delete them.
    MoveTo(PathBuf),
    /// Delete them without writing files.
    Delete,
}

/// How to archive.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ArchiveOptions {
    /// Move or delete.
    pub mode: ArchiveMode,
    /// Streams to archive; empty means both.
    pub streams: Vec<Stream>,
    /// Only report what would be moved.
    pub dry_run: bool,
}

/// One partition's archived range.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PartitionArchive {
    /// Partition.
    pub partition: i32,
    /// First offset removed.
    pub from: i64,
    /// Offset removed up to (exclusive): the new start of the partition.
    pub to: i64,
}

/// What was archived from one topic.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct TopicArchive {
    /// Topic.
    pub topic: String,
    /// Ranges removed (partitions with nothing to remove are left out).
    pub partitions: Vec<PartitionArchive>,
    /// Records removed (offset span).
    pub records: u64,
    /// Events written to the file (`--move-to`; duplicates written by an exporter
    /// retry are written once).
    pub events: u64,
    /// The file written (`--move-to`).
    pub file: Option<PathBuf>,
    /// VSNs of the first and last event written.
    pub vsns: Option<(Vsn, Vsn)>,
}

/// What an archive run did.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ArchiveReport {
    /// Topics with something archived.
    pub topics: Vec<TopicArchive>,
    /// Why streams or partitions were left alone.
    pub notes: Vec<String>,
    /// Nothing was removed (dry run).
    pub dry_run: bool,
}

impl ArchiveReport {
    /// A table for people.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let verb = if self.dry_run { "would move" } else { "moved" };
        if self.topics.is_empty() {
            out.push_str("nothing to archive\n");
        }
        for t in &self.topics {
            let ranges: Vec<String> = t
                .partitions
                .iter()
                .map(|p| format!("[{}] {}..{}", p.partition, p.from, p.to))
                .collect();
            out.push_str(&format!(
                "{}: {verb} {} records ({} events) offsets {}",
                t.topic,
                t.records,
                t.events,
                ranges.join(", ")
            ));
            if let Some(f) = &t.file {
                out.push_str(&format!(" -> {}", f.display()));
            }
            out.push('\n');
        }
        for n in &self.notes {
            out.push_str(&format!("note: {n}\n"));
        }
        out
    }
}

/// Why archiving failed.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    /// A destination's positions could not be read: nothing was removed.
    #[error(
        "reading the importer positions in the {destination}: {message}; nothing was archived"
    )]
    Positions {
        /// target, source-replica or source.
        destination: String,
        /// Why.
        message: String,
    },
    /// Reading or decoding the events failed.
    #[error(transparent)]
    Replay(#[from] ReplayError),
    /// Reading the topics failed.
    #[error(transparent)]
    Read(#[from] ReadError),
    /// Writing or reading a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A line of an archive file is not an event.
    #[error("{path} line {line}: {message}")]
    Format {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// Why.
        message: String,
    },
    /// Deleting records failed (the files written stay; a new run moves the rest).
    #[error("deleting records from {what}: {message}")]
    Delete {
        /// Topic and partition.
        what: String,
        /// The broker's answer.
        message: String,
    },
}

/// The destinations whose importers must have applied `stream` (module doc).
pub fn importers_of(config: &Config, stream: Stream) -> Vec<(Destination, DatabaseConfig)> {
    let mut out = Vec::new();
    match stream {
        Stream::Source => {
            if let Some(db) = &config.target {
                out.push((Destination::Target, db.clone()));
            }
            if let Some(db) = &config.source_replica {
                out.push((Destination::SourceReplica, db.clone()));
            }
        }
        Stream::Target => {
            if let Some(db) = &config.source_replica {
                out.push((Destination::SourceReplica, db.clone()));
            }
            if config.migration.workflow == Workflow::FallBack {
                if let Some(db) = &config.source {
                    out.push((Destination::Source, db.clone()));
                }
            }
        }
    }
    out
}

/// Every position of `group` in `db` (`topic`, `partition`) -> `next_offset`; empty when
/// the importer never ran there.
async fn positions(
    db: &DatabaseConfig,
    group: &str,
) -> Result<HashMap<(String, i32), i64>, String> {
    let (client, conn) = db
        .connect()
        .await
        .map_err(|e| ferry_shared::process::error_chain(&e))?;
    let positions = ferry_shared::metadata::positions(&client, group).await;
    conn.abort();
    Ok(positions
        .map_err(|e| ferry_shared::process::error_chain(&e))?
        .into_iter()
        .map(|p| ((p.topic, p.partition), p.next_offset))
        .collect())
}

/// The ranges of `stream`'s topics that every importer applied (module doc), with the
/// reasons partitions are held back.
pub async fn applied_ranges(
    config: &Config,
    stream: Stream,
) -> Result<(Vec<PartitionRange>, Vec<String>), ArchiveError> {
    let kafka = config.kafka.client_config();
    let topics = Topics::new(config.migration.topic_prefix());
    let mut notes = Vec::new();
    let importers = importers_of(config, stream);
    if importers.is_empty() {
        notes.push(format!(
            "no configured importer applies the {stream} stream; it is not archived"
        ));
        return Ok((Vec::new(), notes));
    }
    let mut applied = Vec::new();
    for (dest, db) in &importers {
        let p = positions(db, &topics.import_group(*dest))
            .await
            .map_err(|message| ArchiveError::Positions {
                destination: dest.as_str().to_owned(),
                message,
            })?;
        applied.push((*dest, p));
    }
    let names = ferry_shared::replay::Selection {
        stream,
        tables: Vec::new(),
    }
    .topics(&kafka, &topics)
    .await?;
    let planned = ferry_shared::replay::plan(
        &kafka,
        &names,
        &ferry_shared::replay::StartAt::Beginning,
        &ferry_shared::replay::EndAt::Now,
    )
    .await?;
    let mut out = Vec::new();
    for mut r in planned {
        let key = (r.topic.clone(), r.partition);
        let mut bound = r.to.saturating_sub(1); // keep the last record (module doc)
        for (dest, p) in &applied {
            match p.get(&key) {
                Some(next) => bound = bound.min(*next),
                None => {
                    if r.to > r.from {
                        notes.push(format!(
                            "{}[{}]: the {dest} importer has no position for it; kept",
                            r.topic, r.partition
                        ));
                    }
                    bound = i64::MIN;
                }
            }
        }
        if bound > r.from {
            r.to = bound;
            out.push(r);
        }
    }
    Ok((out, notes))
}

/// Archives what every importer applied, as `opts` says, and reports it per topic.
pub async fn archive_changes(
    config: &Config,
    opts: &ArchiveOptions,
) -> Result<ArchiveReport, ArchiveError> {
    let streams = if opts.streams.is_empty() {
        vec![Stream::Source, Stream::Target]
    } else {
        opts.streams.clone()
    };
    let mut report = ArchiveReport {
        dry_run: opts.dry_run,
        ..ArchiveReport::default()
    };
    let mut by_topic: BTreeMap<String, Vec<PartitionRange>> = BTreeMap::new();
    for stream in streams {
        let (ranges, notes) = applied_ranges(config, stream).await?;
        report.notes.extend(notes);
        for r in ranges {
            by_topic.entry(r.topic.clone()).or_default().push(r);
        }
    }
    if let ArchiveMode::MoveTo(dir) = &opts.mode {
        if !opts.dry_run {
            std::fs::create_dir_all(dir).map_err(|source| ArchiveError::Io {
                path: dir.clone(),
                source,
            })?;
        }
    }
    let decoder = EventDecoder::new(registry(config)?);
    let kafka = config.kafka.client_config();
    for (topic, ranges) in by_topic {
        let mut t = TopicArchive {
            topic: topic.clone(),
            partitions: ranges
                .iter()
                .map(|r| PartitionArchive {
                    partition: r.partition,
                    from: r.from,
                    to: r.to,
                })
                .collect(),
            records: ranges.iter().map(PartitionRange::len).sum(),
            events: 0,
            file: None,
            vsns: None,
        };
        if opts.dry_run {
            report.topics.push(t);
            continue;
        }
        if let ArchiveMode::MoveTo(dir) = &opts.mode {
            write_file(&kafka, &decoder, dir, &topic, ranges.clone(), &mut t).await?;
        }
        delete_records(&kafka, &ranges).await?;
        tracing::info!(topic = %t.topic, records = t.records, events = t.events, "archived");
        report.topics.push(t);
    }
    Ok(report)
}

async fn write_file(
    kafka: &rdkafka::ClientConfig,
    decoder: &EventDecoder,
    dir: &Path,
    topic: &str,
    ranges: Vec<PartitionRange>,
    t: &mut TopicArchive,
) -> Result<(), ArchiveError> {
    let partial = dir.join(format!(".{topic}.partial"));
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| ArchiveError::Io { path, source }
    };
    let file = std::fs::File::create(&partial).map_err(io(&partial))?;
    let mut out = std::io::BufWriter::with_capacity(1 << 20, file);
    let mut reader = MergedReader::start(kafka, ranges)?;
    let mut first = None;
    let mut last = None;
    let result: Result<(), ArchiveError> = async {
        while let Some(batch) = reader.next_batch().await {
            for r in batch? {
                let Some(mut e) = to_json(decoder, &r).await? else {
                    continue;
                };
                e.topic = Some(r.topic.to_string());
                e.partition = Some(r.partition);
                e.offset = Some(r.offset);
                let mut line = e.to_line();
                line.push('\n');
                out.write_all(line.as_bytes()).map_err(io(&partial))?;
                t.events += 1;
                first.get_or_insert(r.vsn);
                last = Some(r.vsn);
            }
        }
        Ok(())
    }
    .await;
    reader.close().await;
    result?;
    let file = out.into_inner().map_err(|e| ArchiveError::Io {
        path: partial.clone(),
        source: e.into_error(),
    })?;
    file.sync_all().map_err(io(&partial))?;
    let (a, b) = (first.unwrap_or_default(), last.unwrap_or_default());
    let path = dir.join(format!("{topic}.{a}-{b}.jsonl"));
    std::fs::rename(&partial, &path).map_err(io(&path))?;
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all(); // make the rename durable before records go
    }
    t.file = Some(path);
    t.vsns = first.zip(last);
    Ok(())
}

async fn delete_records(
    kafka: &rdkafka::ClientConfig,
    ranges: &[PartitionRange],
) -> Result<(), ArchiveError> {
    let fail = |what: String, message: String| ArchiveError::Delete { what, message };
    let admin: AdminClient<DefaultClientContext> = kafka
        .create()
        .map_err(|e| fail("(admin client)".into(), e.to_string()))?;
    let mut tpl = TopicPartitionList::new();
    for r in ranges {
        tpl.add_partition_offset(&r.topic, r.partition, Offset::Offset(r.to))
            .map_err(|e| fail(format!("{}[{}]", r.topic, r.partition), e.to_string()))?;
    }
    let opts = AdminOptions::new()
        .operation_timeout(Some(ferry_shared::kafka::TIMEOUT))
        .request_timeout(Some(ferry_shared::kafka::TIMEOUT));
    let result = admin
        .delete_records(&tpl, &opts)
        .await
        .map_err(|e| fail("the topics".into(), e.to_string()))?;
    for e in result.elements() {
        if let Err(err) = e.error() {
            return Err(fail(
                format!("{}[{}]", e.topic(), e.partition()),
                err.to_string(),
            ));
        }
    }
    Ok(())
}

/// Reads an archive file back into its events, in file order (VSN order).
pub fn read_archive(path: &Path) -> Result<Vec<JsonEvent>, ArchiveError> {
    let file = std::fs::File::open(path).map_err(|source| ArchiveError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let mut out = Vec::new();
    for (i, line) in std::io::BufReader::new(file).lines().enumerate() {
        let line = line.map_err(|source| ArchiveError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        if line.trim().is_empty() {
            continue;
        }
        let event = serde_json::from_str(&line).map_err(|e| ArchiveError::Format {
            path: path.to_path_buf(),
            line: i + 1,
            message: e.to_string(),
        })?;
        out.push(event);
    }
    Ok(out)
}

/// Every archive file in `dir` (`*.jsonl`), sorted by name.
pub fn archive_files(dir: &Path) -> Result<Vec<PathBuf>, ArchiveError> {
    let entries = std::fs::read_dir(dir).map_err(|source| ArchiveError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    let mut out: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "jsonl"))
        .collect();
    out.sort();
    Ok(out)
}
