//! The preflight of a YugabyteDB database (`engine = "yugabytedb"`): its version, the
//! server flags Ferry relies on, the role's rights and tables without a primary key,
//! every problem at once, each with its fix (../shared/FACTS.md, "YugabyteDB as a
//! target").
//!
//! It runs in two steps so that the rules can be tested without a YugabyteDB server
//! (none runs on our machines): [`Facts::read`] asks the database (only catalog reads
//! YugabyteDB has: `version()`, `pg_settings`, `pg_roles`, `pg_index`), and
//! [`Facts::judge`] turns the answers into [`Finding`]s. A PostgreSQL server standing in
//! for YugabyteDB (the surface profile of the tests) gets a note, not a problem, for
//! what only YugabyteDB has, and the checks that mean the same on both still apply.

use std::collections::BTreeMap;
use std::fmt;

use tokio_postgres::Client;

use crate::catalog::{quote_ident, TableName};

/// The oldest YugabyteDB release Ferry is built against: the first stable series
/// whose logical replication serves pgoutput through replication slots (and whose
/// surface ../shared/FACTS.md describes).
pub const MIN_VERSION: YbVersion = YbVersion([2024, 2, 0, 0]);

/// What Ferry does with the database; the checks follow from it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Use {
    /// An importer writes the stream into it.
    Write,
    /// An exporter reads its changes after a cutover (fall-back, fall-forward).
    ReadChanges,
}

/// A YugabyteDB release number (`2024.2.1.0` or the older `2.20.8.0`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct YbVersion(pub [u32; 4]);

impl fmt::Display for YbVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d] = self.0;
        write!(f, "{a}.{b}.{c}.{d}")
    }
}

impl YbVersion {
    /// The release in `version()`'s answer (`PostgreSQL 11.2-YB-2024.2.1.0-b0 on ...`),
    /// or `None` when the server is not YugabyteDB.
    pub fn from_version_string(version: &str) -> Option<YbVersion> {
        let rest = &version[version.find("-YB-")? + 4..];
        let number: String = rest
            .chars()
            .take_while(|c| c.is_ascii_digit() || *c == '.')
            .collect();
        let mut parts = [0u32; 4];
        let mut seen = 0;
        for (slot, part) in parts.iter_mut().zip(number.split('.')) {
            *slot = part.parse().ok()?;
            seen += 1;
        }
        (seen >= 2).then_some(YbVersion(parts))
    }
}

/// One finding: a problem stops Ferry until it is fixed; a note is logged.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finding {
    /// What is wrong or worth knowing.
    pub message: String,
    /// What to do (empty for a note that needs nothing).
    pub fix: String,
    /// Whether Ferry can go on with it.
    pub is_problem: bool,
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.fix.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}; {}", self.message, self.fix)
        }
    }
}

/// The server flags (as the `yb_` settings they set) that reading changes needs on,
/// each with the yb-tserver flag that turns it on.
const CHANGE_SETTINGS: &[(&str, &str)] = &[
    (
        "yb_enable_replication_commands",
        "--ysql_yb_enable_replication_commands=true",
    ),
    (
        "yb_enable_replication_slot_consumption",
        "--ysql_yb_enable_replication_slot_consumption=true",
    ),
    (
        "yb_enable_replica_identity",
        "--ysql_yb_enable_replica_identity=true",
    ),
];

/// The settings an importer session sets on YugabyteDB for a fast, exact apply.
const WRITE_SETTINGS: &[&str] = &[
    "yb_default_copy_from_rows_per_transaction",
    "yb_insert_on_conflict_read_batch_size",
];

/// What the database said.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Facts {
    /// `version()`.
    pub version: String,
    /// The `yb_` settings Ferry looks at that the server has, with their values.
    pub settings: BTreeMap<String, String>,
    /// The role Ferry connects as.
    pub role: String,
    /// `rolsuper`.
    pub superuser: bool,
    /// `rolreplication`.
    pub replication: bool,
    /// Member of `yb_superuser` (YugabyteDB's administrative role), when it exists.
    pub yb_superuser: bool,
    /// May set `session_replication_role` (`GRANT SET ON PARAMETER`, PostgreSQL 15
    /// based releases); `None` when the server has no parameter privileges.
    pub may_set_replication_role: Option<bool>,
    /// Selected tables without a primary key.
    pub without_key: Vec<TableName>,
}

impl Facts {
    /// Reads the facts from the database; `tables` are the tables Ferry will move
    /// (checked for a primary key; one that doesn't exist is left to other checks).
    pub async fn read(
        client: &Client,
        tables: &[TableName],
    ) -> Result<Facts, tokio_postgres::Error> {
        let version: String = client.query_one("SELECT version()", &[]).await?.get(0);
        let mut names: Vec<&str> = CHANGE_SETTINGS.iter().map(|(n, _)| *n).collect();
        names.extend(WRITE_SETTINGS);
        names.push("yb_default_replica_identity");
        let settings = client
            .query(
                "SELECT name::text, setting::text FROM pg_settings WHERE name = ANY($1)",
                &[&names],
            )
            .await?
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
        let role = client
            .query_one(
                "SELECT r.rolname::text, r.rolsuper, r.rolreplication, \
                        EXISTS (SELECT 1 FROM pg_roles y WHERE y.rolname = 'yb_superuser' \
                                AND pg_has_role(r.oid, y.oid, 'MEMBER')), \
                        EXISTS (SELECT 1 FROM pg_proc WHERE proname = 'has_parameter_privilege') \
                 FROM pg_roles r WHERE r.rolname = current_user",
                &[],
            )
            .await?;
        let has_parameter_privileges: bool = role.get(4);
        let may_set_replication_role = if has_parameter_privileges {
            Some(
                client
                    .query_one(
                        "SELECT has_parameter_privilege('session_replication_role', 'SET')",
                        &[],
                    )
                    .await?
                    .get(0),
            )
        } else {
            None
        };
        let qualified: Vec<String> = tables
            .iter()
            .map(|t| format!("{}.{}", quote_ident(&t.schema), quote_ident(&t.name)))
            .collect();
        let without_key = client
            .query(
                "SELECT n.nspname::text, c.relname::text \
                 FROM unnest($1::text[]) AS t(name) \
                 JOIN pg_class c ON c.oid = to_regclass(t.name) \
                 JOIN pg_namespace n ON n.oid = c.relnamespace \
                 WHERE NOT EXISTS (SELECT 1 FROM pg_index i \
                                   WHERE i.indrelid = c.oid AND i.indisprimary) \
                 ORDER BY 1, 2",
                &[&qualified],
            )
            .await?
            .iter()
            .map(|r| TableName {
                schema: r.get(0),
                name: r.get(1),
            })
            .collect();
        Ok(Facts {
            version,
            settings,
            role: role.get(0),
            superuser: role.get(1),
            replication: role.get(2),
            yb_superuser: role.get(3),
            may_set_replication_role,
            without_key,
        })
    }

    /// Every finding for `uses` on the database called `what` (e.g. "the target").
    pub fn judge(&self, what: &str, uses: &[Use]) -> Vec<Finding> {
        let mut out = Vec::new();
        let problem = |message: String, fix: String| Finding {
            message,
            fix,
            is_problem: true,
        };
        let note = |message: String, fix: String| Finding {
            message,
            fix,
            is_problem: false,
        };
        let version = YbVersion::from_version_string(&self.version);
        match version {
            None => out.push(note(
                format!(
                    "{what} is configured as yugabytedb but reports \"{}\": the checks of YugabyteDB's version and yb_ server flags were skipped",
                    self.version.split(" on ").next().unwrap_or(&self.version)
                ),
                String::new(),
            )),
            Some(v) if v < MIN_VERSION => out.push(problem(
                format!("{what} runs YugabyteDB {v}; Ferry needs {MIN_VERSION} or later (logical replication with pgoutput, replica identity, the batched apply settings)"),
                format!("upgrade {what} to YugabyteDB {MIN_VERSION} or a later stable release"),
            )),
            Some(_) => {}
        }
        let role = quote_ident(&self.role);
        if uses.contains(&Use::ReadChanges) {
            if version.is_some() {
                for (name, flag) in CHANGE_SETTINGS {
                    match self.settings.get(*name).map(String::as_str) {
                        Some("on") => {}
                        Some(value) => out.push(problem(
                            format!("{name} is {value} on {what}; Ferry reads {what}'s changes after cutover through a replication slot"),
                            format!("start every yb-tserver with {flag} (a preview flag on some releases: add it to --allowed_preview_flags_csv too)"),
                        )),
                        // Releases before the slot-consumption setting gated it
                        // otherwise; its absence alone says nothing.
                        None if *name == "yb_enable_replication_slot_consumption" => {}
                        None => out.push(problem(
                            format!("{what} has no setting {name}: this release cannot stream changes through replication slots"),
                            format!("upgrade {what} to YugabyteDB {MIN_VERSION} or later"),
                        )),
                    }
                }
                if let Some(identity) = self.settings.get("yb_default_replica_identity") {
                    if !identity.eq_ignore_ascii_case("full") {
                        out.push(note(
                            format!("yb_default_replica_identity is {identity} on {what}: Ferry sets REPLICA IDENTITY FULL on each migrated table before it creates the slot (a table made later gets {identity})"),
                            "start the yb-tservers with --ysql_yb_default_replica_identity=FULL to make it the default".into(),
                        ));
                    }
                }
            }
            if !self.superuser && !self.replication {
                out.push(problem(
                    format!("role {} on {what} may not use replication", self.role),
                    format!("run ALTER ROLE {role} WITH REPLICATION"),
                ));
            }
        }
        if uses.contains(&Use::Write) {
            let may_set =
                self.superuser || self.yb_superuser || self.may_set_replication_role == Some(true);
            if !may_set {
                let grant = if self.may_set_replication_role.is_some() {
                    format!("run GRANT SET ON PARAMETER session_replication_role TO {role}, or ")
                } else {
                    String::new()
                };
                out.push(problem(
                    format!("role {} on {what} may not set session_replication_role, which keeps triggers and foreign keys from firing for replicated rows", self.role),
                    format!("{grant}run GRANT yb_superuser TO {role} (on PostgreSQL: connect as a superuser)"),
                ));
            }
            if version.is_some() {
                let missing: Vec<&str> = WRITE_SETTINGS
                    .iter()
                    .copied()
                    .filter(|n| !self.settings.contains_key(*n))
                    .collect();
                if !missing.is_empty() {
                    out.push(note(
                        format!("{what} lacks {}: rows are applied without them (COPY commits every 20,000 rows on its own; ON CONFLICT reads row by row), which is slower", missing.join(", ")),
                        format!("upgrade {what} to a recent stable release"),
                    ));
                }
            }
        }
        for table in &self.without_key {
            out.push(problem(
                format!("table {table} on {what} has no primary key: YugabyteDB streams changes only of tables with one, and Ferry applies by key"),
                format!(
                    "add one (ALTER TABLE {}.{} ADD PRIMARY KEY (...)) or list the table in migration.exclude_tables",
                    quote_ident(&table.schema),
                    quote_ident(&table.name)
                ),
            ));
        }
        out
    }
}

/// Reads and judges in one go: the problems, one per line, as an error message that
/// names `what`; the notes are logged.
pub async fn preflight(
    client: &Client,
    what: &str,
    uses: &[Use],
    tables: &[TableName],
) -> Result<Vec<Finding>, tokio_postgres::Error> {
    let findings = Facts::read(client, tables).await?.judge(what, uses);
    for f in findings.iter().filter(|f| !f.is_problem) {
        tracing::warn!(database = what, "{f}");
    }
    Ok(findings.into_iter().filter(|f| f.is_problem).collect())
}

/// The problems as one message, every one on its own line.
pub fn not_ready(what: &str, problems: &[Finding]) -> String {
    format!(
        "{what} (engine yugabytedb) is not ready (fix every problem below, then start again):\n{}",
        problems
            .iter()
            .map(|p| format!("  - {p}"))
            .collect::<Vec<_>>()
            .join("\n")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn yb(version: &str) -> Facts {
        Facts {
            version: format!("PostgreSQL 11.2-YB-{version}-b0 on x86_64-pc-linux-gnu"),
            settings: [
                ("yb_enable_replication_commands", "on"),
                ("yb_enable_replication_slot_consumption", "on"),
                ("yb_enable_replica_identity", "on"),
                ("yb_default_replica_identity", "FULL"),
                ("yb_default_copy_from_rows_per_transaction", "20000"),
                ("yb_insert_on_conflict_read_batch_size", "0"),
            ]
            .into_iter()
            .map(|(a, b)| (a.to_owned(), b.to_owned()))
            .collect(),
            role: "Ferry".into(),
            superuser: false,
            replication: true,
            yb_superuser: true,
            may_set_replication_role: None,
            without_key: vec![],
        }
    }

    const BOTH: &[Use] = &[Use::Write, Use::ReadChanges];

    #[test]
    fn versions_are_read_from_version() {
        assert_eq!(
            YbVersion::from_version_string("PostgreSQL 11.2-YB-2024.2.1.0-b185 on x86_64"),
            Some(YbVersion([2024, 2, 1, 0]))
        );
        assert_eq!(
            YbVersion::from_version_string("PostgreSQL 15.2-YB-2025.1.0.0-b0 on aarch64"),
            Some(YbVersion([2025, 1, 0, 0]))
        );
        assert_eq!(
            YbVersion::from_version_string("PostgreSQL 11.2-YB-2.20.8.0-b0"),
            Some(YbVersion([2, 20, 8, 0]))
        );
        assert_eq!(
            YbVersion::from_version_string("PostgreSQL 16.4 (Debian 16.4-1)"),
            None
        );
        assert!(YbVersion([2, 20, 8, 0]) < MIN_VERSION);
        assert!(YbVersion([2025, 1, 0, 0]) > MIN_VERSION);
    }

    #[test]
    fn a_ready_yugabytedb_has_nothing_to_say() {
        assert_eq!(yb("2024.2.1.0").judge("the target", BOTH), vec![]);
        let mut older = yb("2024.2.0.0");
        older
            .settings
            .remove("yb_enable_replication_slot_consumption");
        assert_eq!(older.judge("the target", BOTH), vec![]);
    }

    #[test]
    fn every_problem_is_reported_at_once_with_its_fix() {
        let mut facts = yb("2.20.8.0");
        facts.settings.remove("yb_enable_replica_identity");
        facts.settings.insert(
            "yb_enable_replication_slot_consumption".into(),
            "off".into(),
        );
        facts
            .settings
            .insert("yb_enable_replication_commands".into(), "off".into());
        facts
            .settings
            .insert("yb_default_replica_identity".into(), "CHANGE".into());
        facts
            .settings
            .remove("yb_insert_on_conflict_read_batch_size");
        facts.replication = false;
        facts.yb_superuser = false;
        facts.without_key = vec![TableName {
            schema: "app".into(),
            name: "Audit Log".into(),
        }];
        let findings = facts.judge("the target", BOTH);
        let problems: Vec<String> = findings
            .iter()
            .filter(|f| f.is_problem)
            .map(ToString::to_string)
            .collect();
        let expect = [
            "runs YugabyteDB 2.20.8.0; Ferry needs 2024.2.0.0",
            "yb_enable_replication_commands is off on the target; Ferry reads",
            "--ysql_yb_enable_replication_commands=true",
            "has no setting yb_enable_replica_identity",
            "yb_enable_replication_slot_consumption is off on the target",
            "role Ferry on the target may not use replication; run ALTER ROLE \"Ferry\" WITH REPLICATION",
            "may not set session_replication_role",
            "GRANT yb_superuser TO \"Ferry\"",
            "table app.Audit Log on the target has no primary key",
            "ALTER TABLE \"app\".\"Audit Log\" ADD PRIMARY KEY",
        ];
        for e in expect {
            assert!(
                problems.iter().any(|p| p.contains(e)),
                "{e:?} missing from {problems:#?}"
            );
        }
        assert_eq!(problems.len(), 7, "{problems:#?}");
        let notes: Vec<String> = findings
            .iter()
            .filter(|f| !f.is_problem)
            .map(ToString::to_string)
            .collect();
        assert_eq!(notes.len(), 2, "{notes:#?}");
        assert!(notes[0].contains("yb_default_replica_identity is CHANGE"));
        assert!(notes[1].contains("lacks yb_insert_on_conflict_read_batch_size"));
    }

    #[test]
    fn each_use_checks_only_what_it_needs() {
        let mut facts = yb("2025.1.0.0");
        facts.replication = false;
        facts.yb_superuser = false;
        facts.may_set_replication_role = Some(true);
        assert_eq!(facts.judge("the target", &[Use::Write]), vec![]);
        let read = facts.judge("the target", &[Use::ReadChanges]);
        assert_eq!(read.len(), 1);
        assert!(read[0].message.contains("may not use replication"));
        facts.may_set_replication_role = Some(false);
        let write = facts.judge("the target", &[Use::Write]);
        assert_eq!(write.len(), 1);
        assert!(write[0]
            .fix
            .starts_with("run GRANT SET ON PARAMETER session_replication_role TO \"Ferry\""));
    }

    #[test]
    fn postgresql_standing_in_gets_a_note_and_the_common_checks() {
        let facts = Facts {
            version: "PostgreSQL 16.4 (Debian 16.4-1.pgdg) on x86_64-pc-linux-gnu".into(),
            role: "ferry".into(),
            replication: false,
            may_set_replication_role: Some(false),
            ..Facts::default()
        };
        let findings = facts.judge("the target", BOTH);
        assert!(!findings[0].is_problem);
        assert!(findings[0]
            .message
            .contains("reports \"PostgreSQL 16.4 (Debian 16.4-1.pgdg)\""));
        let problems: Vec<&Finding> = findings.iter().filter(|f| f.is_problem).collect();
        assert_eq!(problems.len(), 2, "{findings:#?}");
        assert!(problems.iter().all(|p| !p.message.contains("yb_enable")));
    }
}
