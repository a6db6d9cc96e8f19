//! The rules: each statement judged for the target engine (the module doc of
//! [`super`] lists them), and the two passes over the files.

use std::collections::{BTreeMap, BTreeSet, HashSet};

use ferry_shared::config::Engine;

use super::model::{
    alter_table, column_def, create, create_table, is_table_constraint, Create, Model,
};
use super::tokens::{
    close_paren, find_top, has_seq, lex, qname, skip_seq, split_commas, top_level, QName, Tok,
};
use super::{FilesAnalysis, Issue, Severity};
use crate::schema::sql::{self, Head};
use crate::schema::SchemaFile;

mod syntax;
mod tables;

pub(in crate::schema::analyze) use syntax::*;

pub(super) const SOURCE_READINESS: &str = "source readiness";
pub(super) const INDEX_METHOD: &str = "index access method";
pub(super) const GIN: &str = "gin index";
pub(super) const KEY_TYPE: &str = "index key type";
pub(super) const EXCLUSION: &str = "exclusion constraint";
pub(super) const DEFERRABLE: &str = "deferrable constraint";
pub(super) const TABLESPACE: &str = "tablespace";
pub(super) const INHERITANCE: &str = "table inheritance";
pub(super) const TRIGGER: &str = "trigger";
pub(super) const GENERATED: &str = "generated column";
pub(super) const UNLOGGED: &str = "unlogged table";
pub(super) const FOREIGN_TABLE: &str = "foreign table";
pub(super) const ALTER_TABLE: &str = "alter table";
pub(super) const SYSTEM_COLUMN: &str = "system column";
pub(super) const ADVISORY_LOCK: &str = "advisory lock";
pub(super) const LISTEN_NOTIFY: &str = "listen/notify";
pub(super) const LARGE_OBJECT: &str = "large object";
pub(super) const PRIMARY_KEY: &str = "primary key";
pub(super) const STORAGE_PARAMETER: &str = "storage parameter";
pub(super) const NULLS_NOT_DISTINCT: &str = "unique nulls not distinct";
pub(super) const VIEW: &str = "view";
pub(super) const CONVERSION: &str = "conversion";

/// Voyager's list of PostgreSQL issues on YugabyteDB, with the anchor of a section.
pub(super) fn known_issue(anchor: &str) -> Option<String> {
    Some(format!(
        "https://docs.yugabyte.com/stable/yugabyte-voyager/known-issues/postgresql/#{anchor}"
    ))
}

pub(super) const COMPATIBILITY: &str =
    "https://docs.yugabyte.com/stable/explore/ysql-language-features/postgresql-compatibility/";
pub(super) const TABLESPACES_DOC: &str =
    "https://docs.yugabyte.com/stable/explore/going-beyond-sql/tablespaces/";
pub(super) const CREATE_INDEX_DOC: &str =
    "https://docs.yugabyte.com/stable/api/ysql/the-sql-language/statements/ddl_create_index/";
pub(super) const ALTER_TABLE_DOC: &str =
    "https://docs.yugabyte.com/stable/api/ysql/the-sql-language/statements/ddl_alter_table/";

pub(super) const SYSTEM_COLUMNS: &[&str] = &["ctid", "xmin", "xmax", "cmin", "cmax"];

/// One statement being judged.
pub(super) struct Stmt<'a> {
    pub(super) toks: Vec<Tok>,
    pub(super) line: usize,
    pub(super) file: &'a str,
    /// pg_dump's head when this statement is the first of its entry.
    pub(super) head: Option<&'a Head>,
    /// The tablespace that head names (`; Tablespace: x`).
    pub(super) head_tablespace: Option<String>,
}

impl Stmt<'_> {
    /// The object: pg_dump's head when it names this statement, else read from it.
    pub(super) fn object(&self) -> String {
        if let Some(h) = self.head {
            return h.object();
        }
        statement_object(&self.toks).unwrap_or_else(|| "statement".to_owned())
    }
}

/// The object a statement creates or changes, as pg_dump's heads name it.
pub(super) fn statement_object(toks: &[Tok]) -> Option<String> {
    if let Some(c) = create(toks) {
        let i = skip_seq(toks, c.next, &["if", "not", "exists"]);
        let i = skip_seq(toks, i, &["concurrently"]);
        let i = skip_seq(toks, i, &["if", "not", "exists"]);
        return match c.kind.as_str() {
            "table" => {
                let (n, _) = qname(toks, i)?;
                let kind = if c.modifiers.iter().any(|m| m == "foreign") {
                    "foreign table"
                } else {
                    "table"
                };
                Some(format!("{kind} {}", n.key()))
            }
            "index" => {
                let on = find_top(toks, i, "on")?;
                let (table, _) = qname(toks, skip_seq(toks, on + 1, &["only"]))?;
                let name = if on > i {
                    toks[i].name().unwrap_or("?").to_owned()
                } else {
                    "(unnamed)".to_owned()
                };
                Some(format!("index {}.{name}", table.schema_or_public()))
            }
            "trigger" | "rule" | "policy" => {
                let name = toks.get(i)?.name()?.to_owned();
                let on = find_top(toks, i + 1, "on")?;
                // `CREATE RULE r AS ON INSERT TO t`: the table follows TO.
                let at = if c.kind == "rule" {
                    find_top(toks, on + 1, "to")?
                } else {
                    on
                };
                let (table, _) = qname(toks, at + 1)?;
                Some(format!(
                    "{} {}.{} {name}",
                    c.kind,
                    table.schema_or_public(),
                    table.name
                ))
            }
            "view" | "function" | "procedure" | "conversion" | "type" | "domain" | "sequence" => {
                let (n, _) = qname(toks, i)?;
                let kind = if c.kind == "view" && c.modifiers.iter().any(|m| m == "materialized") {
                    "materialized view".to_owned()
                } else {
                    c.kind.clone()
                };
                Some(format!("{kind} {}", n.key()))
            }
            "tablespace" => Some(format!("tablespace {}", toks.get(i)?.name()?)),
            other => Some(other.to_owned()),
        };
    }
    if let Some((table, i)) = alter_table(toks) {
        if toks.get(i).is_some_and(|t| t.is("add"))
            && toks.get(i + 1).is_some_and(|t| t.is("constraint"))
        {
            if let Some(name) = toks.get(i + 2).and_then(Tok::name) {
                let fk = find_top(toks, i, "foreign").is_some();
                return Some(format!(
                    "{}constraint {}.{} {name}",
                    if fk { "fk " } else { "" },
                    table.schema_or_public(),
                    table.name
                ));
            }
        }
        return Some(format!("table {}", table.key()));
    }
    None
}

/// The pg_dump type of an entry without a head, read from its statement (`None` for
/// statements that create nothing: settings, selects).
pub(super) fn statement_kind(toks: &[Tok]) -> Option<String> {
    let c = create(toks)?;
    let mut kind = c.kind.to_uppercase();
    if c.modifiers.iter().any(|m| m == "materialized") {
        kind = format!("MATERIALIZED {kind}");
    }
    if c.modifiers.iter().any(|m| m == "foreign") && c.kind == "table" {
        kind = "FOREIGN TABLE".into();
    }
    Some(kind)
}

/// Where the rules write, and the state a file carries between statements.
pub(super) struct Judge<'m> {
    pub(super) model: &'m Model,
    pub(super) engine: Engine,
    pub(super) issues: Vec<Issue>,
    /// `SET default_tablespace = x` statements: (x, file, line).
    pub(super) pending_sets: Vec<(String, String, usize)>,
    /// Tablespaces some object was reported in.
    pub(super) tablespaces_seen: HashSet<String>,
}

impl Judge<'_> {
    #[allow(clippy::too_many_arguments)]
    pub(super) fn push(
        &mut self,
        st: &Stmt<'_>,
        object: String,
        category: &str,
        severity: Severity,
        reason: String,
        fix: &str,
        docs: Option<String>,
    ) {
        let issue = Issue {
            category: category.to_owned(),
            severity,
            object,
            file: Some(st.file.to_owned()),
            line: Some(st.line),
            reason,
            fix: fix.to_owned(),
            docs_url: docs,
        };
        if !self.issues.contains(&issue) {
            self.issues.push(issue);
        }
    }

    pub(super) fn yb(&self) -> bool {
        self.engine == Engine::Yugabytedb
    }

    pub(super) fn statement(&mut self, st: &Stmt<'_>) {
        let toks = &st.toks;
        if toks.first().is_some_and(|t| t.is("set")) {
            self.set(st);
            return;
        }
        if let Some(c) = create(toks) {
            match c.kind.as_str() {
                "table" => self.create_table(st, &c),
                "index" => self.create_index(st, &c),
                "trigger" if c.modifiers.iter().any(|m| m == "event") => self.code(st),
                "trigger" => self.create_trigger(st, &c),
                "tablespace" if self.yb() => {
                    self.push(
                        st,
                        st.object(),
                        TABLESPACE,
                        Severity::Unsupported,
                        "a YugabyteDB tablespace is a replica placement policy, not a directory: CREATE TABLESPACE ... LOCATION is not accepted".into(),
                        "remove the statement; to pin data to regions or zones, create a YugabyteDB tablespace WITH (replica_placement = '...') of the same name",
                        Some(TABLESPACES_DOC.into()),
                    );
                }
                "view" => {
                    if self.yb() && check_option(toks) {
                        self.push(
                            st,
                            st.object(),
                            VIEW,
                            Severity::Unsupported,
                            "YugabyteDB does not take views WITH CHECK OPTION".into(),
                            "drop WITH CHECK OPTION and enforce the condition with an INSTEAD OF INSERT OR UPDATE trigger on the view",
                            known_issue("view-with-check-option-is-not-supported"),
                        );
                    }
                    self.code(st);
                }
                "function" | "procedure" | "rule" | "policy" | "aggregate" => self.code(st),
                "conversion" if self.yb() => {
                    self.push(
                        st,
                        st.object(),
                        CONVERSION,
                        Severity::Unsupported,
                        "YugabyteDB does not take CREATE CONVERSION".into(),
                        "remove the conversion from the schema files and make the application convert encodings itself",
                        known_issue("create-or-alter-conversion-is-not-supported"),
                    );
                }
                _ => {}
            }
        } else if alter_table(toks).is_some() {
            self.alter_table(st);
        }
    }

    /// `SET default_tablespace = x`: pg_dump's way to place the next objects. Its
    /// entries' heads say `Tablespace: x` as well, and the export puts the SET with the
    /// entry before (possibly in another file), so the objects are reported from their
    /// heads; a SET is reported only when no object names its tablespace (hand-written
    /// files).
    pub(super) fn set(&mut self, st: &Stmt<'_>) {
        let toks = &st.toks;
        let i = skip_seq(toks, 1, &["session"]);
        let i = skip_seq(toks, i, &["local"]);
        if !toks.get(i).is_some_and(|t| t.is("default_tablespace")) {
            return;
        }
        let value = match toks.get(i + 2) {
            Some(Tok::Str(s)) | Some(Tok::Word(s)) | Some(Tok::Ident(s)) => s.clone(),
            _ => String::new(),
        };
        if !value.is_empty() && value != "default" {
            self.pending_sets.push((value, st.file.to_owned(), st.line));
        }
    }

    /// A TABLESPACE clause, or the tablespace pg_dump's head names, on a table, index,
    /// materialized view or constraint.
    pub(super) fn tablespace(&mut self, st: &Stmt<'_>, object: String) {
        let toks = &st.toks;
        let explicit = top_level(toks)
            .into_iter()
            .find(|&k| toks[k].is("tablespace") && k > 0)
            .and_then(|k| toks.get(k + 1).and_then(Tok::name).map(str::to_owned))
            .or_else(|| {
                // `USING INDEX TABLESPACE x` inside a CREATE TABLE list.
                toks.windows(4).find_map(|w| {
                    (w[0].is("using") && w[1].is("index") && w[2].is("tablespace"))
                        .then(|| w[3].name().map(str::to_owned))
                        .flatten()
                })
            });
        let (name, how) = match (explicit, &st.head_tablespace) {
            (Some(n), _) => (n, "a TABLESPACE clause"),
            (None, Some(n)) => (n.clone(), "pg_dump (SET default_tablespace)"),
            (None, None) => return,
        };
        self.tablespaces_seen.insert(name.clone());
        if self.yb() {
            self.push(
                st,
                object,
                TABLESPACE,
                Severity::Unsupported,
                format!("placed in tablespace {name} by {how}: a YugabyteDB tablespace is a replica placement policy, and {name} exists on the target only if created there as one"),
                "remove the TABLESPACE clause (and pg_dump's SET default_tablespace statements), or create a YugabyteDB tablespace of that name WITH (replica_placement = '...') before importing",
                Some(TABLESPACES_DOC.into()),
            );
        } else {
            self.push(
                st,
                object,
                TABLESPACE,
                Severity::Note,
                format!("placed in tablespace {name} by {how}"),
                "create the tablespace on the target before importing, or remove the clause",
                None,
            );
        }
    }

    /// The SETs of tablespaces no object was reported in.
    pub(super) fn finish(&mut self) {
        for (name, file, line) in std::mem::take(&mut self.pending_sets) {
            if self.tablespaces_seen.contains(&name) {
                continue;
            }
            let (severity, reason, fix) = if self.yb() {
                (
                    Severity::Unsupported,
                    format!("SET default_tablespace = {name}: the objects that follow go to tablespace {name}, which exists on YugabyteDB only if created there as a replica placement policy"),
                    "remove the SET, or create a YugabyteDB tablespace of that name WITH (replica_placement = '...') before importing",
                )
            } else {
                (
                    Severity::Note,
                    format!("SET default_tablespace = {name}"),
                    "create the tablespace on the target before importing, or remove the SET",
                )
            };
            let issue = Issue {
                category: TABLESPACE.into(),
                severity,
                object: format!("setting default_tablespace = {name}"),
                file: Some(file),
                line: Some(line),
                reason,
                fix: fix.into(),
                docs_url: self.yb().then(|| TABLESPACES_DOC.to_owned()),
            };
            if !self.issues.contains(&issue) {
                self.issues.push(issue);
            }
        }
    }

    pub(super) fn create_index(&mut self, st: &Stmt<'_>, c: &Create) {
        let toks = &st.toks;
        let object = st.object();
        let Some(on) = find_top(toks, c.next, "on") else {
            return;
        };
        let Some((table, mut i)) = qname(toks, skip_seq(toks, on + 1, &["only"])) else {
            return;
        };
        let mut method = "btree".to_owned();
        if toks.get(i).is_some_and(|t| t.is("using")) {
            if let Some(m) = toks.get(i + 1).and_then(Tok::name) {
                method = m.to_lowercase();
            }
            i += 2;
        }
        if !toks.get(i).is_some_and(|t| t.is_punct('(')) {
            return;
        }
        let close = close_paren(toks, i);
        let elems = split_commas(&toks[i + 1..close.min(toks.len())]);
        let after = close + 1;
        self.tablespace(st, object.clone());
        if !self.yb() {
            return;
        }
        match method.as_str() {
            "gist" | "brin" | "spgist" => self.push(
                st,
                object.clone(),
                INDEX_METHOD,
                Severity::Unsupported,
                format!("index access method {method} does not exist in YugabyteDB"),
                "remove the index, or replace it by an LSM (btree) or GIN index on what the queries filter by",
                known_issue("gist-brin-and-spgist-index-types-are-not-supported"),
            ),
            "hash" => self.push(
                st,
                object.clone(),
                INDEX_METHOD,
                Severity::Note,
                "YugabyteDB has no hash access method: it creates an LSM index whose first column is hash-sharded (equality lookups, no range scans)".into(),
                "nothing to do; write USING lsm (col HASH) to say so explicitly",
                Some(CREATE_INDEX_DOC.into()),
            ),
            "gin" => {
                if elems.len() > 1 {
                    self.push(
                        st,
                        object.clone(),
                        GIN,
                        Severity::Unsupported,
                        format!("GIN index on {} columns: YugabyteDB's GIN (ybgin) takes one column", elems.len()),
                        "create one GIN index per column",
                        known_issue("gin-indexes-on-multiple-columns-are-not-supported"),
                    );
                }
                let ordered: Vec<String> = elems
                    .iter()
                    .filter_map(|e| {
                        e.iter()
                            .skip(1)
                            .find(|t| t.is("desc") || t.is("hash"))
                            .and_then(Tok::name)
                            .map(str::to_uppercase)
                    })
                    .collect();
                if !ordered.is_empty() {
                    self.push(
                        st,
                        object.clone(),
                        GIN,
                        Severity::Unsupported,
                        format!("GIN index key with {}: YugabyteDB's GIN takes only ASC order", ordered.join(", ")),
                        "drop DESC / HASH from the GIN index's key",
                        Some(COMPATIBILITY.into()),
                    );
                }
            }
            _ => {}
        }
        if matches!(method.as_str(), "btree" | "hash" | "lsm") {
            let cols: Vec<String> = elems.iter().filter_map(|e| plain_column(e)).collect();
            let unique = c.modifiers.iter().any(|m| m == "unique");
            self.key_types(
                st,
                object.clone(),
                &table.key(),
                &cols,
                if unique { "unique index" } else { "index" },
            );
        }
        if find_top(toks, after, "with")
            .is_some_and(|k| toks.get(k + 1).is_some_and(|t| t.is_punct('(')))
        {
            self.storage_parameters(st, object.clone());
        }
        if let Some(k) = find_top(toks, after, "nulls") {
            if has_seq(toks, k + 1, &["not", "distinct"]) {
                self.nulls_not_distinct(st, object);
            }
        }
    }

    pub(super) fn storage_parameters(&mut self, st: &Stmt<'_>, object: String) {
        self.push(
            st,
            object,
            STORAGE_PARAMETER,
            Severity::Unsupported,
            "storage parameters WITH (...) on an index or constraint (fillfactor, fastupdate, ...) are refused by YugabyteDB".into(),
            "remove the WITH (...) clause",
            known_issue("storage-parameters-on-indexes-or-constraints-in-the-source-postgresql"),
        );
    }

    pub(super) fn nulls_not_distinct(&mut self, st: &Stmt<'_>, object: String) {
        self.push(
            st,
            object,
            NULLS_NOT_DISTINCT,
            Severity::Degraded,
            "UNIQUE NULLS NOT DISTINCT is taken from YugabyteDB 2025.1 (PostgreSQL 15 based), not by 2024.2".into(),
            "on 2025.1 or later nothing to do; on 2024.2 make the columns NOT NULL or enforce it with a unique index on COALESCE(...) of them",
            known_issue("postgresql-12-and-later-features"),
        );
    }

    pub(super) fn create_trigger(&mut self, st: &Stmt<'_>, c: &Create) {
        let toks = &st.toks;
        let object = st.object();
        if self.yb() {
            if c.modifiers.iter().any(|m| m == "constraint") {
                self.push(
                    st,
                    object.clone(),
                    TRIGGER,
                    Severity::Unsupported,
                    "YugabyteDB does not take constraint triggers (CREATE CONSTRAINT TRIGGER)".into(),
                    "make it an ordinary AFTER trigger (it then fires at each statement, not at commit) or move the check into the application",
                    known_issue("constraint-trigger-is-not-supported"),
                );
            }
            if find_top(toks, c.next, "referencing").is_some() {
                self.push(
                    st,
                    object.clone(),
                    TRIGGER,
                    Severity::Unsupported,
                    "REFERENCING (transition tables) is not taken by YugabyteDB".into(),
                    "rewrite it as a FOR EACH ROW trigger that uses OLD and NEW, or remove it",
                    known_issue("referencing-clause-for-triggers"),
                );
            }
            let before = find_top(toks, c.next, "before").is_some();
            let row = top_level(toks)
                .windows(3)
                .any(|w| toks[w[0]].is("for") && toks[w[1]].is("each") && toks[w[2]].is("row"))
                || top_level(toks)
                    .windows(2)
                    .any(|w| toks[w[0]].is("for") && toks[w[1]].is("row"));
            if before && row {
                if let Some(on) = find_top(toks, c.next, "on") {
                    if let Some((table, _)) = qname(toks, on + 1) {
                        if self.model.is_partitioned(&table.key()) {
                            self.push(
                                st,
                                object.clone(),
                                TRIGGER,
                                Severity::Degraded,
                                format!("BEFORE ... FOR EACH ROW trigger on partitioned table {}: taken from YugabyteDB 2025.1, refused by 2024.2", table.key()),
                                "on 2025.1 or later nothing to do; on 2024.2 create the trigger on each partition instead",
                                known_issue("before-row-triggers-on-partitioned-tables"),
                            );
                        }
                    }
                }
            }
        }
        self.code(st);
    }

    /// Calls and columns in code (function bodies, views, rules, policies, triggers).
    pub(super) fn code(&mut self, st: &Stmt<'_>) {
        if !self.yb() {
            return;
        }
        let mut found = CodeFindings::default();
        scan_code(&st.toks, &mut found, 0);
        let object = st.object();
        if !found.system_columns.is_empty() {
            self.push(
                st,
                object.clone(),
                SYSTEM_COLUMN,
                Severity::Unsupported,
                format!(
                    "uses system column {}: YugabyteDB has no {}",
                    join(&found.system_columns),
                    if found.system_columns.len() == 1 { "such column" } else { "such columns" }
                ),
                "use the primary key to identify rows, and a version or timestamp column maintained by the application or a trigger instead of xmin",
                known_issue("system-columns-is-not-yet-supported"),
            );
        }
        if !found.advisory.is_empty() {
            self.push(
                st,
                object.clone(),
                ADVISORY_LOCK,
                Severity::Unsupported,
                format!("calls {}: advisory locks fail on YugabyteDB 2024.2 and are a preview feature, off by default, from 2025.1", join(&found.advisory)),
                "coordinate with a lock table (SELECT ... FOR UPDATE on a row per lock) or in the application; on 2025.1 or later the preview flag ysql_yb_enable_advisory_locks turns them on",
                known_issue("advisory-locks-is-not-yet-implemented"),
            );
        }
        if !found.notify.is_empty() {
            self.push(
                st,
                object.clone(),
                LISTEN_NOTIFY,
                Severity::Unsupported,
                format!("uses {}: LISTEN/NOTIFY do nothing on YugabyteDB (a warning, no event)", join(&found.notify)),
                "deliver the events another way: a table polled by the listeners, or a message broker",
                known_issue("events-listen--notify"),
            );
        }
        if !found.large_objects.is_empty() {
            self.push(
                st,
                object,
                LARGE_OBJECT,
                Severity::Unsupported,
                format!("uses large object function {}: YugabyteDB has no large objects", join(&found.large_objects)),
                "store the contents in a bytea column (or outside the database) and drop the lo_* calls",
                known_issue("large-objects-and-its-functions-are-currently-not-supported"),
            );
        }
    }
}

/// Analyzes the schema files (as [`crate::schema::read_files`] returns them) for `engine`.
pub fn analyze_schema_files(files: &[(SchemaFile, String)], engine: Engine) -> FilesAnalysis {
    analyze_texts(
        &files
            .iter()
            .map(|(f, text)| (f.name, text.as_str()))
            .collect::<Vec<_>>(),
        engine,
    )
}

/// Analyzes `(file name, text)` pairs, in apply order.
pub fn analyze_texts(files: &[(&str, &str)], engine: Engine) -> FilesAnalysis {
    let parsed: Vec<(&str, Vec<sql::Entry>)> = files
        .iter()
        .map(|(name, text)| (*name, sql::entries(text)))
        .collect();
    let lexed: Vec<Vec<Vec<Vec<Tok>>>> = parsed
        .iter()
        .map(|(_, entries)| {
            entries
                .iter()
                .map(|e| e.statements.iter().map(|s| lex(&s.text)).collect())
                .collect()
        })
        .collect();
    let mut model = Model::default();
    for file in &lexed {
        for entry in file {
            for toks in entry {
                model.learn(toks);
            }
        }
    }
    let mut objects: BTreeMap<String, usize> = BTreeMap::new();
    let mut judge = Judge {
        model: &model,
        engine,
        issues: Vec::new(),
        pending_sets: Vec::new(),
        tablespaces_seen: HashSet::new(),
    };
    for (((name, entries), file_toks), (_, text)) in parsed.iter().zip(&lexed).zip(files) {
        // pg_dump's heads with the tablespace they name (`; Tablespace: x`).
        let heads: Vec<(usize, Option<String>)> = text
            .lines()
            .enumerate()
            .filter(|(_, l)| Head::parse(l).is_some())
            .map(|(n, l)| {
                let tablespace = l
                    .split("; ")
                    .find_map(|p| p.trim().strip_prefix("Tablespace: "))
                    .filter(|t| !t.is_empty())
                    .map(str::to_owned);
                (n + 1, tablespace)
            })
            .collect();
        for (entry, entry_toks) in entries.iter().zip(file_toks) {
            // The head names the entry's object; a CREATE after the entry's first
            // statement was added by hand (pg_dump writes one object per entry).
            // grants.sql repeats the heads of objects counted in their own file.
            for (n, toks) in entry_toks
                .iter()
                .enumerate()
                .filter(|_| *name != "grants.sql")
            {
                let kind = match (&entry.head, n) {
                    (Some(h), 0) => Some(h.kind.clone()),
                    _ => statement_kind(toks),
                };
                if let Some(kind) = kind {
                    *objects.entry(kind).or_default() += 1;
                }
            }
            for (n, (statement, toks)) in entry.statements.iter().zip(entry_toks).enumerate() {
                let head = if n == 0 { entry.head.as_ref() } else { None };
                let head_tablespace = head.and_then(|_| {
                    heads
                        .iter()
                        .rev()
                        .find(|(line, _)| *line < statement.line)
                        .and_then(|(_, t)| t.clone())
                });
                let st = Stmt {
                    toks: toks.clone(),
                    line: statement.line,
                    file: name,
                    head,
                    head_tablespace,
                };
                judge.statement(&st);
            }
        }
    }
    judge.finish();
    FilesAnalysis {
        issues: judge.issues,
        objects,
    }
}
