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

    /// Statements kept now.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.by_sql.len()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;
    use crate::sink::postgres::tests::database;

    #[tokio::test]
    async fn a_connection_prepares_each_statement_once_and_starts_over_past_the_bound() {
        let client = database("imp_statements").await;
        // Statements prepared on this connection, as the server sees them.
        let prepared = || async {
            let rows = client
                .simple_query("SELECT count(*) FROM pg_prepared_statements")
                .await
                .unwrap();
            rows.iter()
                .find_map(|m| match m {
                    tokio_postgres::SimpleQueryMessage::Row(r) => {
                        r.get(0).map(|v| v.parse::<usize>().unwrap())
                    }
                    _ => None,
                })
                .unwrap()
        };
        let mut statements = Statements::default();
        let a = statements.get(&client, "SELECT $1::int + 1").await.unwrap();
        let b = statements.get(&client, "SELECT $1::int + 1").await.unwrap();
        assert_eq!(statements.len(), 1);
        assert_eq!(
            prepared().await,
            1,
            "the second use is the prepared statement"
        );
        let row = client.query_one(&b, &[&41i32]).await.unwrap();
        assert_eq!(row.get::<_, i32>(0), 42);
        drop((a, b, row)); // a row holds its statement too
        for i in 1..Statements::MAX {
            statements
                .get(&client, &format!("SELECT {i}"))
                .await
                .unwrap();
        }
        assert_eq!(statements.len(), Statements::MAX);
        assert_eq!(prepared().await, Statements::MAX);
        statements.get(&client, "SELECT 'one more'").await.unwrap();
        assert_eq!(statements.len(), 1, "past the bound it starts over");
        assert_eq!(prepared().await, 1, "and closes what it forgot");
        let again = statements.get(&client, "SELECT $1::int + 1").await.unwrap();
        let row = client.query_one(&again, &[&1i32]).await.unwrap();
        assert_eq!(row.get::<_, i32>(0), 2);
    }
}
