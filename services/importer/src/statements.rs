//! Prepared statements of one destination connection, kept for the connection's life.
//!
//! A statement given as text makes tokio-postgres prepare it first: one more round trip
//! to the destination per statement. A batch runs the same few statements every time
//! (positions, counts, the table's `COPY`), and on a loaded machine each round trip
//! costs milliseconds, so each connection prepares them once.

use std::collections::HashMap;

use tokio_postgres::{GenericClient, Statement};

/// Statements by their SQL text. Bounded: past [`Statements::MAX`] distinct texts (many
/// tables, changing column lists) it starts over.
#[derive(Debug, Default)]
pub(crate) struct Statements {
    by_sql: HashMap<String, Statement>,
}

impl Statements {
    /// Distinct statements kept at most.
    pub(crate) const MAX: usize = 256;

    /// The statement for `sql`, prepared on `client`'s connection the first time.
    pub(crate) async fn get(
        &mut self,
        client: &impl GenericClient,
        sql: &str,
    ) -> Result<Statement, tokio_postgres::Error> {
        if let Some(s) = self.by_sql.get(sql) {
            return Ok(s.clone());
        }
        let s = client.prepare(sql).await?;
        if self.by_sql.len() >= Self::MAX {
            self.by_sql.clear();
        }
        self.by_sql.insert(sql.to_owned(), s.clone());
        Ok(s)
    }

    /// Forgets every statement (after a failure that may have been a schema change).
    pub(crate) fn clear(&mut self) {
        self.by_sql.clear();
    }

    /// Statements kept now.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.by_sql.len()
    }
}
