//! The contract between the exporter and a database it exports from ([`Source`]).
//!
//! The orchestration (`crate::export`) knows VSNs, checkpoints, Kafka and the cutover;
//! a [`Source`] knows its engine: how to list and check the tables, how to read a
//! consistent snapshot in chunks, and how to stream changes from a durable position
//! (for PostgreSQL a replication slot, `crate::postgres`). The stamper, the producer and
//! the checkpoint writer see positions only as the opaque [`Lsn`] stored in the
//! checkpoint (`ferry_shared::checkpoint::ExporterCheckpoint::lsn`).

use std::collections::HashMap;
use std::sync::Arc;

use ferry_shared::catalog::TableSchema;
use ferry_shared::checkpoint::{Chunk, ExporterCheckpoint};
use ferry_shared::position::Lsn;
use ferry_shared::shutdown::Shutdown;
use ferry_shared::state::SequenceValue;
use tokio::sync::{mpsc, watch};

use crate::lead::Lead;
use crate::sequencer::Item;
use crate::Error;
use ferry_shared::codec::TableEncoder;

/// A database Ferry exports from: a consistent snapshot of the selected tables, then
/// every change committed after it.
///
/// The contract:
///
/// - **Snapshot.** [`Source::snapshot`] (or [`Opened::Created`]) opens one consistent
///   view of the data, as of a position; [`Source::read_snapshot`] reads the planned
///   chunks ([`Source::plan`]) of every table inside that one view, in parallel and in
///   no particular order, and sends each chunk's events followed by an
///   [`Item::ChunkDone`]. The view stays readable until the handle is dropped (an
///   exported slot snapshot: until the change stream is started).
/// - **Changes.** A [`Changes`] stream delivers whole transactions in commit order:
///   every event of a transaction, then an [`Item::Commit`] with the position where a
///   restarted stream resumes. Nothing is delivered outside a transaction except a
///   commit that only moves the position (a keepalive past WAL of other tables).
/// - **Positions move only when the caller says the data before them is durable.** The
///   stream confirms to the server exactly the positions published on `durable`: the
///   position of a checkpoint stored in `_state` after Kafka acknowledged every event
///   before it. The source keeps everything after the last confirmed position.
/// - **Restart.** A stream resumed from a position ([`Source::resume_changes`]) replays
///   every transaction committed after it, again, in the same order; the caller
///   restamps them with the checkpoint's VSNs, so each change keeps its VSN. An
///   existing position is never dropped or recreated by the exporter.
/// - **Delivery.** At least once: a restarted stream replays what followed the last
///   confirmed position, and a snapshot chunk not recorded done is read again.
///   Exactly once is made downstream (the checkpoint's VSNs, idempotent apply).
/// - **Idempotency.** [`Source::open_changes`] finds an existing publication and slot
///   and changes nothing; [`Source::write_stop`] may be called again (each call writes
///   a new marker with a new token; the stream ends at the one published on `stop`).
/// - **Stop.** [`Source::write_stop`] puts a marker into the change stream after every
///   transaction committed before the call, and returns its token; the stream ends
///   with the marker whose token is published on `stop`. Markers are matched by token:
///   positions are compared only within one slot.
/// - **Concurrency.** All methods take `&self` and may run concurrently with each
///   other and with a running [`Changes`] stream (the stop marker is written while the
///   stream runs). A [`Changes`] stream is owned by one caller. `read_snapshot` runs its
///   own parallel readers.
pub(crate) trait Source: Sync {
    /// An open consistent view; dropping it releases the view.
    type Snapshot: SnapshotView + Send + Sync;
    /// A change stream, opened at a position, not yet started.
    type Changes: Changes + Send;

    /// Checks the database (every problem at once) and returns the selected tables.
    async fn tables(&self) -> Result<Vec<SourceTable>, Error>;

    /// Splits a table into chunks of about `chunk_rows` rows.
    async fn plan(&self, table: &TableSchema, chunk_rows: u64) -> Result<Vec<Chunk>, Error>;

    /// Opens a new consistent view of the current data (not tied to a change position:
    /// its rows may be older or newer than what a stream resumed from a checkpoint
    /// starts with; the stream covers the difference).
    async fn snapshot(&self) -> Result<Self::Snapshot, Error>;

    /// Reads every work item inside `snapshot`.
    async fn read_snapshot(
        &self,
        snapshot: &Self::Snapshot,
        work: Vec<Work>,
        readers: Readers,
    ) -> Result<(), Error>;

    /// Finds or creates what the change stream reads from (the publication of
    /// `tables` and the durable position). A position is created only when none exists;
    /// with `export_snapshot`, together with a view of exactly the data before it.
    /// `checkpoint` is what a previous run stored: a position it names that no longer
    /// exists is an error, never recreated.
    async fn open_changes(
        &self,
        checkpoint: Option<&ExporterCheckpoint>,
        tables: &[Arc<TableEncoder>],
        export_snapshot: bool,
    ) -> Result<Opened<Self::Snapshot, Self::Changes>, Error>;

    /// Opens the change stream of an existing position, to resume after `from`.
    async fn resume_changes(&self, from: Lsn) -> Result<Self::Changes, Error>;

    /// Writes a stop marker into the change stream (see the contract); returns its
    /// token.
    async fn write_stop(&self) -> Result<String, Error>;

    /// Every sequence of the exported schemas with its exact state.
    async fn sequences(&self) -> Result<Vec<SequenceValue>, Error>;
}

/// An open consistent view.
pub(crate) trait SnapshotView {
    /// How the view is named (for logs).
    fn name(&self) -> &str;
    /// The position the view is consistent with.
    fn position(&self) -> Lsn;
}

/// A change stream (see [`Source`] for the ordering and position contract).
pub(crate) trait Changes {
    /// Asks the server to start streaming; a view exported with the position ends now.
    async fn start(&mut self) -> Result<(), Error>;

    /// Waits until the server confirmed the start.
    async fn started(&mut self) -> Result<(), Error>;

    /// Streams changes of `tables` to `items` until shutdown, an error, or the stop
    /// marker whose token is published on `stop` (then returns [`Stopped`]: every
    /// change committed before the marker was sent, followed by a commit at its `at`,
    /// the end of the marker's transaction; changes committed after the marker are
    /// counted, not sent, until the stream has caught up, a few seconds at most). Confirms to
    /// the server only positions published on `durable`. Events of an unfinished
    /// transaction are dropped: the stream resumes at its start.
    async fn run(
        self,
        tables: &HashMap<(String, String), Arc<TableEncoder>>,
        items: mpsc::Sender<Vec<Item>>,
        durable: watch::Receiver<Lsn>,
        stop: watch::Receiver<Option<String>>,
        shutdown: Shutdown,
    ) -> Result<Option<Stopped>, Error>;
}

/// Where a stream stopped for a cutover.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Stopped {
    /// The end of the stop marker's transaction.
    pub at: Lsn,
    /// Changes committed after the marker, seen before the stream stopped reading (not
    /// exported).
    pub after_marker: u64,
}

/// What [`Source::open_changes`] found.
pub(crate) enum Opened<V, C> {
    /// The position was created now, at `at`: the stream starts there (no gap, no
    /// overlap with `snapshot`, the view of exactly the data before `at`, when one was
    /// asked for). Start `changes` only after the snapshot was read.
    Created {
        /// The new position.
        at: Lsn,
        /// The exported view.
        snapshot: Option<V>,
        /// The stream, not yet started.
        changes: C,
    },
    /// The position existed already; the server confirmed it up to `confirmed`.
    Existing {
        /// The confirmed position.
        confirmed: Lsn,
    },
}

/// A selected table, checked.
pub(crate) struct SourceTable {
    /// The table.
    pub schema: TableSchema,
    /// Whether events on different keys must keep their order (one partition): the
    /// table has a unique or exclusion constraint besides the primary key.
    pub totally_ordered: bool,
}

/// One unit of snapshot work.
#[derive(Clone, Debug)]
pub(crate) struct Work {
    /// The table.
    pub table: Arc<TableEncoder>,
    /// Chunk index in the table's plan.
    pub index: usize,
    /// The chunk.
    pub chunk: Chunk,
}

/// Where and how [`Source::read_snapshot`] reads.
pub(crate) struct Readers {
    /// Parallel readers.
    pub workers: usize,
    /// The stamper's intake.
    pub items: mpsc::Sender<Vec<Item>>,
    /// Stops the readers.
    pub shutdown: Shutdown,
    /// With `exporter.snapshot_max_lead`: readers wait before each chunk while an
    /// importer is too far behind ([`Lead`]).
    pub lead: Option<watch::Receiver<Lead>>,
}
