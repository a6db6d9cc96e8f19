//! The rules for tables: CREATE TABLE (columns, keys, constraints, partitioning,
//! inheritance) and ALTER TABLE.

use super::*;

impl Judge<'_> {
    pub(super) fn create_table(&mut self, st: &Stmt<'_>, c: &Create) {
        let toks = &st.toks;
        let Some(t) = create_table(toks, c) else {
            return;
        };
        let object = st.object();
        let foreign = c.modifiers.iter().any(|m| m == "foreign");
        if foreign {
            self.push(
                st,
                object.clone(),
                FOREIGN_TABLE,
                if self.yb() { Severity::Degraded } else { Severity::Note },
                "a foreign table: its rows stay in the remote server (nothing is migrated), and the target needs the wrapper extension, the server and a user mapping".into(),
                "create the extension (postgres_fdw), the SERVER and the USER MAPPING on the target before importing, or remove the foreign table",
                if self.yb() {
                    known_issue("foreign-table-in-the-source-database-requires-server-and-user-mapping")
                } else {
                    None
                },
            );
        }
        self.tablespace(st, object.clone());
        if !self.yb() {
            return;
        }
        if c.modifiers.iter().any(|m| m == "unlogged") {
            self.push(
                st,
                object.clone(),
                UNLOGGED,
                Severity::Note,
                "YugabyteDB ignores UNLOGGED: the table is written and replicated like any other (releases before 2024.2 refuse it)".into(),
                "nothing to do; drop UNLOGGED from the statement to say what the target does",
                known_issue("unlogged-table-is-not-supported"),
            );
        }
        if let Some(k) = find_top(toks, t.after, "inherits") {
            let parents = toks
                .get(k + 1)
                .filter(|t| t.is_punct('('))
                .map(|_| {
                    let close = close_paren(toks, k + 1);
                    split_commas(&toks[k + 2..close])
                        .iter()
                        .filter_map(|p| qname(p, 0).map(|(q, _)| q.key()))
                        .collect::<Vec<_>>()
                        .join(", ")
                })
                .unwrap_or_default();
            self.push(
                st,
                object.clone(),
                INHERITANCE,
                Severity::Unsupported,
                format!("inherits from {parents}: YugabyteDB does not take table inheritance"),
                "give the table all its columns and drop INHERITS (queries on the parent no longer see its rows), or turn the hierarchy into a partitioned table",
                known_issue("table-inheritance-is-not-supported"),
            );
        }
        let Some((a, b)) = t.list else {
            return;
        };
        let mut generated = Vec::new();
        let mut deferrable = Vec::new();
        let mut exclusion = false;
        let mut key_columns: Vec<(String, Vec<String>)> = Vec::new();
        for el in split_commas(&toks[a..b]) {
            if is_table_constraint(el) {
                let start = skip_constraint_name(el);
                match el.get(start) {
                    Some(t) if t.is("exclude") => exclusion = true,
                    Some(t) if t.is("primary") || t.is("unique") => {
                        let label = if t.is("primary") {
                            "primary key"
                        } else {
                            "unique constraint"
                        };
                        if let Some(open) = el.iter().skip(start).position(|t| t.is_punct('(')) {
                            let open = start + open;
                            let cols = plain_columns(&el[open + 1..close_paren(el, open)]);
                            key_columns.push((label.into(), cols));
                        }
                        if deferrable_after(el, start) {
                            deferrable.push(constraint_label(el));
                        }
                    }
                    _ => {}
                }
            } else if let Some((name, _, rest)) = column_def(el) {
                if has_stored_generated(rest) {
                    generated.push(name.clone());
                }
                for (k, t) in rest.iter().enumerate() {
                    if t.is("primary") || t.is("unique") {
                        let label = if t.is("primary") {
                            "primary key"
                        } else {
                            "unique constraint"
                        };
                        key_columns.push((label.into(), vec![name.clone()]));
                        if deferrable_after(rest, k) {
                            deferrable.push(format!("{label} on {name}"));
                        }
                    }
                }
            }
        }
        if !generated.is_empty() {
            self.generated(st, object.clone(), &generated);
        }
        if exclusion {
            self.exclusion(st, object.clone());
        }
        if !deferrable.is_empty() {
            self.deferrable(st, object.clone(), &deferrable.join(", "));
        }
        let table = t.name.key();
        for (label, cols) in key_columns {
            self.key_types(st, object.clone(), &table, &cols, &label);
        }
    }

    pub(super) fn generated(&mut self, st: &Stmt<'_>, object: String, columns: &[String]) {
        self.push(
            st,
            object,
            GENERATED,
            Severity::Degraded,
            format!(
                "stored generated column {}: taken from YugabyteDB 2025.1 (PostgreSQL 15 based); 2024.2 refuses GENERATED ALWAYS AS ... STORED",
                columns.join(", ")
            ),
            "on 2025.1 or later nothing to do; on 2024.2 make it a plain column with a default and fill it with a BEFORE INSERT OR UPDATE trigger",
            known_issue("generated-always-as-stored-type-column-is-not-supported"),
        );
    }

    pub(super) fn exclusion(&mut self, st: &Stmt<'_>, object: String) {
        self.push(
            st,
            object,
            EXCLUSION,
            Severity::Unsupported,
            "YugabyteDB does not take exclusion constraints (EXCLUDE)".into(),
            "remove the constraint and enforce it with a BEFORE INSERT OR UPDATE trigger that looks for conflicting rows through an index on the compared columns",
            known_issue("exclusion-constraints-is-not-supported"),
        );
    }

    pub(super) fn deferrable(&mut self, st: &Stmt<'_>, object: String, what: &str) {
        self.push(
            st,
            object,
            DEFERRABLE,
            Severity::Unsupported,
            format!("{what} is DEFERRABLE: YugabyteDB defers only foreign keys"),
            "drop DEFERRABLE (and INITIALLY DEFERRED) and make the application's transactions satisfy the constraint at each statement",
            known_issue("deferrable-constraint-on-constraints-other-than-foreign-keys-is-not-supported"),
        );
    }

    /// Index key columns whose type the LSM index cannot key.
    pub(super) fn key_types(
        &mut self,
        st: &Stmt<'_>,
        object: String,
        table: &str,
        columns: &[String],
        what: &str,
    ) {
        if !self.yb() {
            return;
        }
        let bad: Vec<String> = columns
            .iter()
            .filter_map(|c| {
                let ty = self.model.column_type(table, c)?;
                self.model.unkeyable(ty).map(|why| format!("{c} {why}"))
            })
            .collect();
        if bad.is_empty() {
            return;
        }
        self.push(
            st,
            object,
            KEY_TYPE,
            Severity::Unsupported,
            format!(
                "{what} on {}: YugabyteDB's LSM index cannot key this type",
                bad.join(", ")
            ),
            "key on an expression of a supported type (e.g. (col::text) or a hash of it) and change the queries to match, use a GIN index where the type has one, or leave the column out of the key",
            known_issue("indexes-on-some-complex-data-types-are-not-supported"),
        );
    }

    pub(super) fn alter_table(&mut self, st: &Stmt<'_>) {
        let toks = &st.toks;
        let Some((table, i)) = alter_table(toks) else {
            return;
        };
        let object = st.object();
        let actions = split_commas(&toks[i..]);
        for action in actions {
            let first = action.first();
            if first.is_some_and(|t| t.is("add")) {
                let j = skip_seq(action, 1, &["column"]);
                let j = skip_seq(action, j, &["if", "not", "exists"]);
                let rest = &action[j.min(action.len())..];
                if is_table_constraint(rest) {
                    self.add_constraint(st, object.clone(), &table, rest);
                } else if let Some((name, _, rest)) = column_def(rest) {
                    if self.yb() && has_stored_generated(rest) {
                        self.generated(st, object.clone(), &[name]);
                    }
                }
                continue;
            }
            if !self.yb() {
                if has_seq(action, 0, &["set", "tablespace"]) {
                    self.tablespace(st, object.clone());
                }
                continue;
            }
            if has_seq(action, 0, &["cluster", "on"]) {
                self.push(
                    st,
                    object.clone(),
                    ALTER_TABLE,
                    Severity::Unsupported,
                    "ALTER TABLE ... CLUSTER ON is refused by YugabyteDB (rows are stored in primary key order)".into(),
                    "remove the statement",
                    known_issue("unsupported-alter-table-ddl-variants-in-source-schema"),
                );
            } else if first.is_some_and(|t| t.is("alter")) && {
                let k = skip_seq(action, 1, &["column"]);
                has_seq(action, k + 1, &["set"])
                    && action.get(k + 2).is_some_and(|t| t.is_punct('('))
            } {
                self.push(
                    st,
                    object.clone(),
                    ALTER_TABLE,
                    Severity::Unsupported,
                    "ALTER COLUMN ... SET (attribute options such as n_distinct) is refused by YugabyteDB".into(),
                    "remove the statement",
                    known_issue("unsupported-alter-table-ddl-variants-in-source-schema"),
                );
            } else if has_seq(action, 0, &["disable", "rule"]) {
                self.push(
                    st,
                    object.clone(),
                    ALTER_TABLE,
                    Severity::Unsupported,
                    "ALTER TABLE ... DISABLE RULE is refused by YugabyteDB".into(),
                    "remove the statement and the rule it disables",
                    known_issue("unsupported-alter-table-ddl-variants-in-source-schema"),
                );
            } else if first.is_some_and(|t| t.is("inherit")) {
                self.push(
                    st,
                    object.clone(),
                    INHERITANCE,
                    Severity::Unsupported,
                    "ALTER TABLE ... INHERIT: YugabyteDB does not take table inheritance".into(),
                    "give the table all its columns and drop the INHERIT, or turn the hierarchy into a partitioned table",
                    known_issue("table-inheritance-is-not-supported"),
                );
            } else if has_seq(action, 0, &["set", "tablespace"]) {
                self.tablespace(st, object.clone());
            } else if has_seq(action, 0, &["set", "unlogged"]) {
                self.push(
                    st,
                    object.clone(),
                    UNLOGGED,
                    Severity::Note,
                    "YugabyteDB ignores UNLOGGED: the table is written and replicated like any other".into(),
                    "nothing to do; remove the statement to say what the target does",
                    known_issue("unlogged-table-is-not-supported"),
                );
            }
        }
    }

    pub(super) fn add_constraint(
        &mut self,
        st: &Stmt<'_>,
        object: String,
        table: &QName,
        el: &[Tok],
    ) {
        let start = skip_constraint_name(el);
        let Some(kind) = el.get(start) else {
            return;
        };
        if !(kind.is("primary") || kind.is("unique") || kind.is("exclude")) {
            return;
        }
        // A constraint's index goes to the default tablespace in force, or USING INDEX
        // TABLESPACE.
        self.tablespace(st, object.clone());
        if !self.yb() {
            return;
        }
        if kind.is("exclude") {
            self.exclusion(st, object);
            return;
        }
        let primary = kind.is("primary");
        let label = if primary {
            "primary key"
        } else {
            "unique constraint"
        };
        if primary {
            self.push(
                st,
                object.clone(),
                PRIMARY_KEY,
                Severity::Note,
                format!("primary key added to {} after its CREATE TABLE: YugabyteDB stores rows in primary key order, so ADD PRIMARY KEY rewrites the table", table.key()),
                "fine while the table is empty (ferry import schema runs it before any row is loaded); on a table with rows, put the PRIMARY KEY into the CREATE TABLE instead",
                Some(ALTER_TABLE_DOC.into()),
            );
        }
        // `UNIQUE USING INDEX i`, `PRIMARY KEY USING INDEX i`: the key is an existing
        // index's (reported where it is created).
        let using_index = el.iter().skip(start).take(3).any(|t| t.is("using"));
        if !using_index {
            if let Some(open) = el.iter().skip(start).position(|t| t.is_punct('(')) {
                let open = start + open;
                let cols = plain_columns(&el[open + 1..close_paren(el, open).min(el.len())]);
                self.key_types(st, object.clone(), &table.key(), &cols, label);
            }
        }
        if deferrable_after(el, start) {
            self.deferrable(st, object.clone(), label);
        }
        if find_top(el, start, "with")
            .is_some_and(|k| el.get(k + 1).is_some_and(|t| t.is_punct('(')))
        {
            self.storage_parameters(st, object.clone());
        }
        if let Some(k) = find_top(el, start, "nulls") {
            if has_seq(el, k + 1, &["not", "distinct"]) {
                self.nulls_not_distinct(st, object);
            }
        }
    }
}
