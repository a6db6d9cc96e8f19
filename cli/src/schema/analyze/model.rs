//! What the first pass learns from the files (each table's column types, which tables
//! are partitioned, composite, range and domain types) and the statement shapes the
//! rules read (`CREATE ...`, `CREATE TABLE`, `ALTER TABLE`).

use std::collections::{HashMap, HashSet};

use super::tokens::{close_paren, find_top, has_seq, qname, skip_seq, split_commas, QName, Tok};

/// Types YugabyteDB's LSM index cannot key (see the module doc for the sources).
pub(super) const UNKEYABLE: &[&str] = &[
    "tsvector",
    "tsquery",
    "jsonb",
    "json",
    "inet",
    "cidr",
    "macaddr",
    "macaddr8",
    "citext",
    "bit",
    "varbit",
    "interval",
    "daterange",
    "tsrange",
    "tstzrange",
    "numrange",
    "int4range",
    "int8range",
    "point",
    "line",
    "lseg",
    "box",
    "path",
    "polygon",
    "circle",
    "pg_lsn",
    "txid_snapshot",
    "xml",
];

/// A column's type as written (`character varying`, `public.citext`, `integer[]`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct ColType {
    pub(super) schema: Option<String>,
    pub(super) name: String,
    pub(super) array: bool,
}

impl ColType {
    pub(super) fn parse(toks: &[Tok]) -> ColType {
        let mut words: Vec<String> = Vec::new();
        let mut schema = None;
        let mut array = false;
        let mut depth = 0usize;
        for t in toks {
            match t {
                Tok::Punct('(') => depth += 1,
                Tok::Punct(')') => depth = depth.saturating_sub(1),
                Tok::Punct('[') if depth == 0 => array = true,
                Tok::Word(w) if depth == 0 && w == "array" => array = true,
                Tok::Word(w) | Tok::Ident(w) if depth == 0 => words.push(w.clone()),
                Tok::Punct('.') if depth == 0 => {
                    schema = Some(words.join(" "));
                    words.clear();
                }
                _ => {}
            }
        }
        ColType {
            schema,
            name: words.join(" "),
            array,
        }
    }

    pub(super) fn key(&self) -> String {
        format!(
            "{}.{}",
            self.schema.as_deref().unwrap_or("public"),
            self.name
        )
    }

    pub(super) fn display(&self) -> String {
        let base = match &self.schema {
            Some(s) => format!("{s}.{}", self.name),
            None => self.name.clone(),
        };
        if self.array {
            format!("{base}[]")
        } else {
            base
        }
    }
}

/// Words that end a column's type in a column definition.
pub(super) const COLUMN_STOP: &[&str] = &[
    "collate",
    "constraint",
    "not",
    "null",
    "default",
    "generated",
    "primary",
    "unique",
    "check",
    "references",
    "compression",
    "storage",
    "deferrable",
    "initially",
];

/// Words that start a table constraint in a CREATE TABLE list.
pub(super) const TABLE_CONSTRAINT: &[&str] = &[
    "constraint",
    "primary",
    "unique",
    "check",
    "exclude",
    "foreign",
    "like",
];

#[derive(Clone, Debug, Default)]
pub(super) struct TableInfo {
    pub(super) columns: Vec<(String, ColType)>,
    pub(super) partitioned: bool,
    pub(super) parent: Option<String>,
}

/// What the first pass learns from every file.
#[derive(Clone, Debug, Default)]
pub(super) struct Model {
    pub(super) tables: HashMap<String, TableInfo>,
    pub(super) composite_types: HashSet<String>,
    pub(super) range_types: HashSet<String>,
    pub(super) domains: HashMap<String, ColType>,
}

/// A column definition of a CREATE TABLE list or ADD COLUMN: (name, type, the rest).
pub(super) fn column_def(el: &[Tok]) -> Option<(String, ColType, &[Tok])> {
    let name = el.first()?.name()?.to_owned();
    let mut depth = 0usize;
    let mut end = el.len();
    for (k, t) in el.iter().enumerate().skip(1) {
        match t {
            Tok::Punct('(') => depth += 1,
            Tok::Punct(')') => depth = depth.saturating_sub(1),
            Tok::Word(w) if depth == 0 && COLUMN_STOP.contains(&w.as_str()) => {
                end = k;
                break;
            }
            _ => {}
        }
    }
    Some((name, ColType::parse(&el[1..end]), &el[end..]))
}

pub(super) fn is_table_constraint(el: &[Tok]) -> bool {
    matches!(el.first(), Some(Tok::Word(w)) if TABLE_CONSTRAINT.contains(&w.as_str()))
}

/// What follows CREATE: its modifiers and kind, and the index after the kind.
pub(super) struct Create {
    pub(super) modifiers: Vec<String>,
    pub(super) kind: String,
    pub(super) next: usize,
}

pub(super) const CREATE_MODIFIERS: &[&str] = &[
    "or",
    "replace",
    "global",
    "local",
    "temporary",
    "temp",
    "unlogged",
    "foreign",
    "unique",
    "constraint",
    "materialized",
    "recursive",
    "trusted",
    "procedural",
    "default",
    "event",
];

pub(super) fn create(toks: &[Tok]) -> Option<Create> {
    if !toks.first()?.is("create") {
        return None;
    }
    let mut i = 1;
    let mut modifiers = Vec::new();
    while let Some(Tok::Word(w)) = toks.get(i) {
        if CREATE_MODIFIERS.contains(&w.as_str()) {
            // `CREATE FOREIGN DATA WRAPPER`, `CREATE EVENT TRIGGER`: a kind of its own.
            modifiers.push(w.clone());
            i += 1;
        } else {
            break;
        }
    }
    let kind = match toks.get(i)? {
        Tok::Word(w) => w.clone(),
        _ => return None,
    };
    Some(Create {
        modifiers,
        kind,
        next: i + 1,
    })
}

/// A parsed `CREATE TABLE`.
pub(super) struct CreateTable {
    pub(super) name: QName,
    /// The column list's tokens (between the parentheses), when there is one.
    pub(super) list: Option<(usize, usize)>,
    pub(super) partition_of: Option<QName>,
    /// Where the clauses after the list start.
    pub(super) after: usize,
}

pub(super) fn create_table(toks: &[Tok], c: &Create) -> Option<CreateTable> {
    if c.kind != "table" {
        return None;
    }
    let i = skip_seq(toks, c.next, &["if", "not", "exists"]);
    let (name, mut i) = qname(toks, i)?;
    let mut partition_of = None;
    if has_seq(toks, i, &["partition", "of"]) {
        let (parent, j) = qname(toks, i + 2)?;
        partition_of = Some(parent);
        i = j;
    } else if toks.get(i).is_some_and(|t| t.is("of")) {
        // A typed table: its columns come from the type.
        let (_, j) = qname(toks, i + 1)?;
        i = j;
    }
    let mut list = None;
    let mut after = i;
    if toks.get(i).is_some_and(|t| t.is_punct('(')) {
        let close = close_paren(toks, i);
        list = Some((i + 1, close));
        after = close + 1;
    }
    Some(CreateTable {
        name,
        list,
        partition_of,
        after,
    })
}

/// `ALTER TABLE [IF EXISTS] [ONLY] name`: the table and where the actions start.
pub(super) fn alter_table(toks: &[Tok]) -> Option<(QName, usize)> {
    if !(toks.first()?.is("alter") && toks.get(1)?.is("table")) {
        return None;
    }
    let mut i = skip_seq(toks, 2, &["if", "exists"]);
    i = skip_seq(toks, i, &["only"]);
    let (name, j) = qname(toks, i)?;
    // `ALTER TABLE name *`
    let j = if toks.get(j).is_some_and(|t| t.is_punct('*')) {
        j + 1
    } else {
        j
    };
    Some((name, j))
}

impl Model {
    pub(super) fn learn(&mut self, toks: &[Tok]) {
        if let Some(c) = create(toks) {
            if let Some(t) = create_table(toks, &c) {
                let mut info = TableInfo::default();
                if let Some((a, b)) = t.list {
                    for el in split_commas(&toks[a..b]) {
                        if is_table_constraint(el) {
                            continue;
                        }
                        if let Some((name, ty, _)) = column_def(el) {
                            info.columns.push((name, ty));
                        }
                    }
                }
                info.partitioned = find_top(toks, t.after, "partition")
                    .is_some_and(|k| toks.get(k + 1).is_some_and(|t| t.is("by")));
                info.parent = t.partition_of.map(|p| p.key());
                let entry = self.tables.entry(t.name.key()).or_default();
                entry.columns.extend(info.columns);
                entry.partitioned |= info.partitioned;
                if info.parent.is_some() {
                    entry.parent = info.parent;
                }
            } else if c.kind == "type" {
                if let Some((name, j)) = qname(toks, c.next) {
                    if toks.get(j).is_some_and(|t| t.is("as")) {
                        match toks.get(j + 1) {
                            Some(t) if t.is_punct('(') => {
                                self.composite_types.insert(name.key());
                            }
                            Some(t) if t.is("range") => {
                                self.range_types.insert(name.key());
                            }
                            _ => {}
                        }
                    }
                }
            } else if c.kind == "domain" {
                if let Some((name, j)) = qname(toks, c.next) {
                    let j = skip_seq(toks, j, &["as"]);
                    let rest = &toks[j.min(toks.len())..];
                    let end = rest
                        .iter()
                        .position(|t| {
                            matches!(t, Tok::Word(w) if ["collate", "default", "constraint", "not", "null", "check"].contains(&w.as_str()))
                        })
                        .unwrap_or(rest.len());
                    self.domains
                        .insert(name.key(), ColType::parse(&rest[..end]));
                }
            }
        } else if let Some((table, i)) = alter_table(toks) {
            for action in split_commas(&toks[i..]) {
                if action.first().is_some_and(|t| t.is("add")) {
                    let j = skip_seq(action, 1, &["column"]);
                    let j = skip_seq(action, j, &["if", "not", "exists"]);
                    let rest = &action[j.min(action.len())..];
                    if is_table_constraint(rest) {
                        continue;
                    }
                    if let Some((name, ty, _)) = column_def(rest) {
                        self.tables
                            .entry(table.key())
                            .or_default()
                            .columns
                            .push((name, ty));
                    }
                } else if has_seq(action, 0, &["attach", "partition"]) {
                    if let Some((child, _)) = qname(action, 2) {
                        self.tables.entry(child.key()).or_default().parent = Some(table.key());
                    }
                }
            }
        }
    }

    /// The type of `column` of `table`, looking through partition parents.
    pub(super) fn column_type(&self, table: &str, column: &str) -> Option<&ColType> {
        let mut key = table.to_owned();
        for _ in 0..16 {
            let info = self.tables.get(&key)?;
            if let Some((_, ty)) = info.columns.iter().find(|(n, _)| n == column) {
                return Some(ty);
            }
            key = info.parent.clone()?;
        }
        None
    }

    pub(super) fn is_partitioned(&self, table: &str) -> bool {
        self.tables.get(table).is_some_and(|t| t.partitioned)
    }

    /// Why an LSM index cannot key a column of type `ty`, or `None` when it can.
    pub(super) fn unkeyable(&self, ty: &ColType) -> Option<String> {
        self.unkeyable_depth(ty, 0)
    }

    pub(super) fn unkeyable_depth(&self, ty: &ColType, depth: usize) -> Option<String> {
        if ty.array {
            return Some(format!("{} (an array)", ty.display()));
        }
        let key = ty.key();
        if depth < 8 {
            if let Some(base) = self.domains.get(&key) {
                return self
                    .unkeyable_depth(base, depth + 1)
                    .map(|why| format!("{} (a domain over {why})", ty.display()));
            }
        }
        if self.composite_types.contains(&key) {
            return Some(format!("{} (a composite type)", ty.display()));
        }
        if self.range_types.contains(&key) {
            return Some(format!("{} (a range type)", ty.display()));
        }
        let builtin = matches!(ty.schema.as_deref(), None | Some("pg_catalog"));
        let name = ty.name.as_str();
        let base = if name.starts_with("interval") {
            "interval"
        } else if name == "bit varying" {
            "varbit"
        } else {
            name
        };
        if (builtin || base == "citext")
            && (UNKEYABLE.contains(&base) || base.ends_with("multirange"))
        {
            return Some(ty.display());
        }
        None
    }
}
