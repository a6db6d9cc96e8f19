//! The PostgreSQL (and YugabyteDB) destination: [`PgSink`], applying a batch of events
//! to destination tables inside the batch's transaction, with the partitions' positions
//! and the per-table counts in `ferry_metadata` ([`positions`]).
//!
//! Idempotency (DESIGN.md §4): snapshot rows, inserts and updates are upserts carrying
//! the full new image (`INSERT .. ON CONFLICT (pk) DO UPDATE SET` every column); deletes
//! tolerate a missing row. Replaying any prefix of a stream therefore converges.
//!
//! Values go in as text (`format_text`) and are cast to the destination column's type
//! (`::<format_type>`), which runs the type's input function: exact for every type Ferry
//! moves (see the type round-trip test).
//!
//! Statements are multi-row: snapshot rows go through a `COPY` into a temporary staging
//! table and one `INSERT .. SELECT`; changes use one `unnest` statement per run
//! ([`statements`]). The `COPY` is binary when every value of the run has an exact
//! binary form for its destination column ([`copy`]: built-in types, values of the
//! matching shape), and text otherwise, so both store the same values.
//!
//! Order: events of a table are applied in VSN order; how a batch is cut into runs that
//! keep it is in [`rows`].
//!
//! The modules, by job: [`catalog`] (the destination tables, cached per connection),
//! [`rows`] (events to row operations, runs), [`statements`] (the SQL of a run),
//! [`copy`] (snapshot rows by `COPY`), [`batch`] (the batch's transaction),
//! [`positions`] (`ferry_metadata`), [`prepared`] (the connection's prepared statements).

mod batch;
mod catalog;
mod copy;
pub(crate) mod positions;
mod prepared;
mod rows;
mod statements;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;

use ferry_shared::catalog::TableName;
use tokio::task::JoinHandle;
use tokio_postgres::Client;

use crate::error::Failure;
use crate::event::Event;
use crate::sink::{Move, Sink, Stored, Written};

pub(crate) use positions::{db_failure, SETUP_SQL};

/// The task driving a destination connection.
pub(crate) type ConnectionTask = JoinHandle<Result<(), tokio_postgres::Error>>;

/// Why an apply session could not be opened.
#[derive(Debug)]
pub(crate) enum SessionError {
    /// The database could not be reached (or refused the login).
    Connect(ferry_shared::config::ConnectError),
    /// The role may not set `session_replication_role`.
    ReplicationRole(tokio_postgres::Error),
    /// Another failure setting the session up.
    Setup(tokio_postgres::Error),
}

/// What an apply session on YugabyteDB sets, besides what every session sets: a
/// batch's `COPY` in its one transaction (not committed every 20,000 rows by itself),
/// `INSERT .. ON CONFLICT` reading conflicts in batches instead of row by row, and
/// REPEATABLE READ stated rather than assumed (READ COMMITTED is snapshot isolation
/// there unless a server flag says otherwise).
pub(crate) const YUGABYTEDB_SESSION: &[(&str, &str)] = &[
    ("yb_default_copy_from_rows_per_transaction", "0"),
    ("yb_insert_on_conflict_read_batch_size", "1024"),
    ("default_transaction_isolation", "repeatable read"),
];

/// Sets [`YUGABYTEDB_SESSION`]: each setting the server has (older YugabyteDB versions
/// lack some; a PostgreSQL server standing in for one lacks the `yb_` ones, and is told
/// so at debug level).
async fn yugabytedb_settings(client: &Client) -> Result<(), tokio_postgres::Error> {
    let names: Vec<&str> = YUGABYTEDB_SESSION.iter().map(|(n, _)| *n).collect();
    let present: Vec<String> = client
        .query(
            "SELECT name FROM pg_settings WHERE name = ANY($1)",
            &[&names],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    for (name, value) in YUGABYTEDB_SESSION {
        if present.iter().any(|p| p == name) {
            client
                .execute("SELECT set_config($1, $2, false)", &[name, value])
                .await?;
        } else {
            tracing::debug!(
                setting = name,
                "the destination has no such setting; not set"
            );
        }
    }
    Ok(())
}

/// Opens an apply session: Ferry's session settings (exact text forms), then
/// `session_replication_role = replica` so that triggers and foreign keys don't fire
/// for replicated rows. Every session that writes rows (the importer's workers, replay
/// into a database) is opened here.
pub(crate) async fn open_session(
    db: &ferry_shared::config::DatabaseConfig,
) -> Result<(Client, ConnectionTask), SessionError> {
    let (client, conn) = db.connect().await.map_err(SessionError::Connect)?;
    let setup = async {
        client
            .batch_execute(&ferry_shared::value::session_settings_sql())
            .await?;
        client
            .batch_execute("SET session_replication_role = replica")
            .await?;
        if db.engine == ferry_shared::config::Engine::Yugabytedb {
            yugabytedb_settings(&client).await?;
        }
        Ok::<(), tokio_postgres::Error>(())
    };
    match setup.await {
        Ok(()) => Ok((client, conn)),
        Err(e) => {
            conn.abort();
            if e.code() == Some(&tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE) {
                Err(SessionError::ReplicationRole(e))
            } else {
                Err(SessionError::Setup(e))
            }
        }
    }
}

/// One destination connection (session) writing for one consumer group.
///
/// Owns the destination's name in messages (`target`, `source-replica`, a replay's
/// label), the catalog and prepared statements read on this connection, and, when given,
/// the task driving the connection (aborted when the sink is dropped).
pub(crate) struct PgSink {
    client: Client,
    connection: Option<ConnectionTask>,
    group: String,
    tables: catalog::Tables,
}

impl PgSink {
    /// A sink writing through `client` for `group`, naming the destination
    /// `destination` in messages. `connection`, if any, is aborted on drop.
    pub(crate) fn new(
        client: Client,
        connection: Option<ConnectionTask>,
        group: &str,
        destination: &str,
    ) -> PgSink {
        PgSink {
            client,
            connection,
            group: group.to_owned(),
            tables: catalog::Tables::new(destination),
        }
    }

    /// True when the connection is gone (a new sink is needed).
    pub(crate) fn is_closed(&self) -> bool {
        self.client.is_closed()
    }
}

impl Drop for PgSink {
    fn drop(&mut self) {
        if let Some(c) = &self.connection {
            c.abort();
        }
    }
}

impl Sink for PgSink {
    async fn load_positions(&self, parts: &[(String, i32)]) -> Result<Vec<Stored>, Failure> {
        positions::load_positions(&self.client, &self.group, parts).await
    }

    async fn commit(
        &mut self,
        events: &mut BTreeMap<TableName, Vec<Event>>,
        moves: &mut [Move<'_>],
    ) -> Result<Written, Failure> {
        batch::commit_batch(
            &mut self.client,
            &mut self.tables,
            &self.group,
            events,
            moves,
        )
        .await
    }
}
