//! Source preflight: everything that would stop the export later is checked before any
//! slot, topic or schema is created, and every problem is reported at once, each with
//! what to do about it.

use std::fmt;

use ferry_shared::catalog::{self, CatalogError, TableName, TableSchema, TypeCatalog};
use ferry_shared::config::{Engine, MigrationConfig};
use ferry_shared::yugabytedb;
use tokio_postgres::Client;

/// One thing wrong with the source, and the fix.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// What is wrong.
    pub message: String,
    /// What to do.
    pub fix: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}; {}", self.message, self.fix)
    }
}

/// Every problem found, one per line.
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    /// The source is not ready; all problems at once.
    #[error("the database is not ready for export (fix every problem below, then start the exporter again):\n{}", .0.iter().map(|p| format!("  - {p}")).collect::<Vec<_>>().join("\n"))]
    NotReady(Vec<Problem>),
    /// A catalog query failed.
    #[error("checking the source")]
    Query(#[source] tokio_postgres::Error),
    /// The catalog could not be read.
    #[error("checking the source")]
    Catalog(#[source] CatalogError),
}

impl CheckError {
    /// The problems, when the source is not ready.
    pub fn problems(&self) -> &[Problem] {
        match self {
            CheckError::NotReady(p) => p,
            _ => &[],
        }
    }
}

/// What the preflight needs to know besides the connection.
#[derive(Clone, Debug)]
pub struct CheckInput<'a> {
    /// Include/exclude filter.
    pub migration: &'a MigrationConfig,
    /// Schemas to look in.
    pub schemas: &'a [String],
    /// The slot Ferry will use: when it exists already it needs no free slot.
    pub slot_name: &'a str,
    /// Whether a replication slot and a wal sender are needed (not for snapshot-only).
    pub needs_replication: bool,
    /// The database's engine: on `yugabytedb` its own preflight replaces the checks
    /// that only mean something on PostgreSQL (`wal_level`).
    pub engine: Engine,
}

/// Checks the source and returns the selected tables, or every problem at once.
pub async fn preflight(
    client: &Client,
    input: &CheckInput<'_>,
) -> Result<Vec<TableSchema>, CheckError> {
    let mut problems = Vec::new();

    // Logical decoding is needed even for snapshot-only: the consistent snapshot comes
    // from the slot. (Snapshot-only could use a plain snapshot; we keep one path.)
    let yugabytedb = input.engine == Engine::Yugabytedb;
    if yugabytedb {
        // Version, the yb_ server flags replication slots need, and the role's
        // replication right (YugabyteDB streams without wal_level).
        for p in yugabytedb::preflight(client, "the database", &[yugabytedb::Use::ReadChanges], &[])
            .await
            .map_err(CheckError::Query)?
        {
            problems.push(Problem {
                message: p.message,
                fix: p.fix,
            });
        }
    }
    let wal_level: String = if yugabytedb {
        "logical".into()
    } else {
        one(client, "SHOW wal_level").await?.get(0)
    };
    if wal_level != "logical" {
        problems.push(Problem {
            message: format!("wal_level is {wal_level}, logical decoding needs logical"),
            fix: "set wal_level = logical in postgresql.conf and restart the server".into(),
        });
    }

    let role = one(
        client,
        "SELECT current_user::text, rolsuper, rolreplication FROM pg_roles WHERE rolname = current_user",
    )
    .await?;
    let (user, superuser, replication): (String, bool, bool) =
        (role.get(0), role.get(1), role.get(2));
    if !superuser && !replication && !yugabytedb {
        problems.push(Problem {
            message: format!("role {user} may not use replication"),
            fix: format!("run ALTER ROLE {} REPLICATION", catalog::quote_ident(&user)),
        });
    }

    if input.needs_replication {
        let row = client
            .query_one(
                "SELECT current_setting('max_replication_slots')::int, \
                        (SELECT count(*)::int FROM pg_replication_slots), \
                        EXISTS (SELECT 1 FROM pg_replication_slots WHERE slot_name = $1::text)",
                &[&input.slot_name],
            )
            .await
            .map_err(CheckError::Query)?;
        let (max, used, ours): (i32, i32, bool) = (row.get(0), row.get(1), row.get(2));
        if !ours && used >= max {
            problems.push(Problem {
                message: format!("all {max} replication slots are in use"),
                fix: "raise max_replication_slots in postgresql.conf and restart the server, or drop an unused slot with pg_drop_replication_slot".into(),
            });
        }
        let row = one(
            client,
            "SELECT current_setting('max_wal_senders')::int, \
                    (SELECT count(*)::int FROM pg_stat_activity WHERE backend_type = 'walsender')",
        )
        .await?;
        let (max, used): (i32, i32) = (row.get(0), row.get(1));
        if used >= max {
            problems.push(Problem {
                message: format!("all {max} wal senders are in use"),
                fix: "raise max_wal_senders in postgresql.conf and restart the server".into(),
            });
        }
    }

    let types = TypeCatalog::load(client)
        .await
        .map_err(CheckError::Catalog)?;
    let names: Vec<TableName> = catalog::list_tables(client, input.schemas)
        .await
        .map_err(CheckError::Catalog)?
        .into_iter()
        .filter(|t| input.migration.selects(&t.schema, &t.name))
        .collect();
    if names.is_empty() {
        problems.push(Problem {
            message: format!(
                "no table is selected in schemas {}",
                input.schemas.join(", ")
            ),
            fix: "check source.schemas and migration.include_tables / exclude_tables".into(),
        });
    }
    let mut tables = Vec::with_capacity(names.len());
    for name in &names {
        match catalog::inspect_table(client, &types, name).await {
            Ok((table, unsupported)) => {
                let ready = unsupported.is_empty();
                let key_unsupported = unsupported.iter().any(|c| c.in_primary_key);
                for c in unsupported {
                    problems.push(Problem {
                        message: format!(
                            "column {}.{}.{} has type {}, which Ferry cannot move",
                            c.schema, c.table, c.column, c.type_name
                        ),
                        fix: c.reason,
                    });
                }
                if table.primary_key.is_empty() && !key_unsupported {
                    problems.push(Problem {
                        message: format!("table {name} has no primary key"),
                        fix: "add one or list the table in migration.exclude_tables".into(),
                    });
                }
                if table.replica_identity != 'f' {
                    problems.push(Problem {
                        message: format!(
                            "table {name} has replica identity {}, Ferry needs FULL to send unchanged TOAST values and old rows",
                            identity_name(table.replica_identity)
                        ),
                        fix: format!(
                            "run ALTER TABLE {} REPLICA IDENTITY FULL (ferry prepare source does it for every table that needs it)",
                            table.qualified()
                        ),
                    });
                }
                // Partitions of a partitioned table carry their own replica identity (found through
                // pg_inherits: YugabyteDB 2024.2 has no pg_partition_tree).
                let leaves = client
                    .query(
                        "WITH RECURSIVE tree(relid) AS ( \
                           SELECT i.inhrelid FROM pg_inherits i WHERE i.inhparent = $1::text::regclass \
                           UNION ALL SELECT i.inhrelid FROM pg_inherits i JOIN tree t ON i.inhparent = t.relid) \
                         SELECT n.nspname::text, c.relname::text FROM tree t \
                         JOIN pg_class c ON c.oid = t.relid JOIN pg_namespace n ON n.oid = c.relnamespace \
                         WHERE c.relispartition AND c.relkind <> 'p' AND c.relreplident <> 'f' ORDER BY 1, 2",
                        &[&table.qualified()],
                    )
                    .await
                    .map_err(CheckError::Query)?;
                for leaf in leaves {
                    let (schema, name): (String, String) = (leaf.get(0), leaf.get(1));
                    problems.push(Problem {
                        message: format!(
                            "partition {schema}.{name} of table {} does not have replica identity FULL",
                            table
                        ),
                        fix: format!(
                            "run ALTER TABLE {}.{} REPLICA IDENTITY FULL (ferry prepare source does it for every table that needs it)",
                            catalog::quote_ident(&schema),
                            catalog::quote_ident(&name)
                        ),
                    });
                }
                if ready {
                    tables.push(table);
                }
            }
            Err(CatalogError::NoSuchTable(_)) => {} // dropped meanwhile
            Err(e) => return Err(CheckError::Catalog(e)),
        }
    }
    if problems.is_empty() {
        Ok(tables)
    } else {
        Err(CheckError::NotReady(problems))
    }
}

async fn one(client: &Client, sql: &str) -> Result<tokio_postgres::Row, CheckError> {
    client.query_one(sql, &[]).await.map_err(CheckError::Query)
}

fn identity_name(c: char) -> &'static str {
    match c {
        'd' => "DEFAULT",
        'n' => "NOTHING",
        'i' => "USING INDEX",
        'f' => "FULL",
        _ => "unknown",
    }
}

/// The `ALTER TABLE .. REPLICA IDENTITY FULL` statements that every selected table in
/// `schemas`, and each of its partitions, lacks (the table itself first, then its
/// partitions), as `(schema.table, statement)`.
pub async fn replica_identity_statements(
    client: &Client,
    migration: &MigrationConfig,
    schemas: &[String],
) -> Result<Vec<(String, String)>, crate::Error> {
    let names: Vec<TableName> = catalog::list_tables(client, schemas)
        .await?
        .into_iter()
        .filter(|t| migration.selects(&t.schema, &t.name))
        .collect();
    let mut out = Vec::new();
    for name in names {
        let qualified = format!(
            "{}.{}",
            catalog::quote_ident(&name.schema),
            catalog::quote_ident(&name.name)
        );
        // The table itself and its partitions, at every level (through pg_inherits, not
        // pg_partition_tree, which YugabyteDB 2024.2 lacks).
        let rows = client
            .query(
                "WITH RECURSIVE tree(relid) AS ( \
                   SELECT $1::text::regclass::oid \
                   UNION ALL SELECT i.inhrelid FROM pg_inherits i JOIN tree t ON i.inhparent = t.relid) \
                 SELECT n.nspname::text, c.relname::text FROM pg_class c \
                 JOIN pg_namespace n ON n.oid = c.relnamespace \
                 WHERE c.oid IN (SELECT relid FROM tree) \
                   AND (c.oid = $1::text::regclass OR c.relispartition) \
                   AND c.relkind IN ('r', 'p') AND c.relreplident <> 'f' \
                 ORDER BY c.relispartition, 1, 2",
                &[&qualified],
            )
            .await
            .map_err(|e| crate::Error::sql(format!("reading the replica identity of {name}"), e))?;
        for row in rows {
            let (schema, table): (String, String) = (row.get(0), row.get(1));
            out.push((
                format!("{schema}.{table}"),
                format!(
                    "ALTER TABLE {}.{} REPLICA IDENTITY FULL",
                    catalog::quote_ident(&schema),
                    catalog::quote_ident(&table)
                ),
            ));
        }
    }
    Ok(out)
}

/// Sets REPLICA IDENTITY FULL on every selected table in `schemas`, and on each of its
/// partitions, that lacks it; returns them (`schema.table`). Only for a database that
/// only Ferry writes (the target before its stream starts).
pub async fn set_replica_identity_full(
    client: &Client,
    migration: &MigrationConfig,
    schemas: &[String],
) -> Result<Vec<String>, crate::Error> {
    let mut changed = Vec::new();
    for (table, statement) in replica_identity_statements(client, migration, schemas).await? {
        client.batch_execute(&statement).await.map_err(|e| {
            crate::Error::sql(format!("setting REPLICA IDENTITY FULL on {table}"), e)
        })?;
        tracing::info!(
            table = %table,
            "set REPLICA IDENTITY FULL on the target table (its change stream needs whole old rows)"
        );
        changed.push(table);
    }
    Ok(changed)
}
