//! Small readings of a statement's tokens the rules share: constraint names and
//! clauses, generated and plain columns, and what function bodies call.

use super::*;

pub(in crate::schema::analyze) fn join(set: &BTreeSet<String>) -> String {
    set.iter().cloned().collect::<Vec<_>>().join(", ")
}

/// After `CONSTRAINT name`, where the constraint's kind starts.
pub(in crate::schema::analyze) fn skip_constraint_name(el: &[Tok]) -> usize {
    if el.first().is_some_and(|t| t.is("constraint")) {
        2
    } else {
        0
    }
}

/// `CONSTRAINT name` of a table constraint, for messages.
pub(in crate::schema::analyze) fn constraint_label(el: &[Tok]) -> String {
    match (el.first(), el.get(1).and_then(Tok::name)) {
        (Some(t), Some(name)) if t.is("constraint") => format!("constraint {name}"),
        _ => "a constraint".to_owned(),
    }
}

/// True when a DEFERRABLE (not NOT DEFERRABLE) follows the constraint starting at
/// `start`, before another constraint (a REFERENCES may be deferrable).
pub(in crate::schema::analyze) fn deferrable_after(el: &[Tok], start: usize) -> bool {
    for k in top_level(el).into_iter().filter(|&k| k > start) {
        let t = &el[k];
        if t.is("references")
            || t.is("primary")
            || t.is("unique")
            || t.is("check")
            || t.is("constraint")
            || t.is("foreign")
        {
            return false;
        }
        if t.is("deferrable") {
            return !(k > 0 && el[k - 1].is("not"));
        }
    }
    false
}

/// `GENERATED ALWAYS AS (...) STORED` in a column definition's rest.
pub(in crate::schema::analyze) fn has_stored_generated(rest: &[Tok]) -> bool {
    top_level(rest).into_iter().any(|k| {
        rest[k].is("generated") && has_seq(rest, k + 1, &["always", "as"]) && {
            let open = k + 3;
            rest.get(open).is_some_and(|t| t.is_punct('('))
                && rest
                    .get(close_paren(rest, open) + 1)
                    .is_some_and(|t| t.is("stored"))
        }
    })
}

/// `WITH [CASCADED | LOCAL] CHECK OPTION` at the end of a view.
pub(in crate::schema::analyze) fn check_option(toks: &[Tok]) -> bool {
    let n = toks.len();
    n >= 3 && toks[n - 1].is("option") && toks[n - 2].is("check")
}

/// An index element that is a plain column (with its ordering, collation or opclass).
pub(in crate::schema::analyze) fn plain_column(el: &[Tok]) -> Option<String> {
    let name = el.first()?.name()?;
    // `f(x)` is an expression; `col DESC`, `col text_pattern_ops` are columns.
    if el
        .get(1)
        .is_some_and(|t| t.is_punct('(') || t.is_punct('.'))
    {
        return None;
    }
    Some(name.to_owned())
}

pub(in crate::schema::analyze) fn plain_columns(toks: &[Tok]) -> Vec<String> {
    split_commas(toks)
        .into_iter()
        .filter_map(plain_column)
        .collect()
}

#[derive(Default)]
pub(in crate::schema::analyze) struct CodeFindings {
    pub(in crate::schema::analyze) system_columns: BTreeSet<String>,
    pub(in crate::schema::analyze) advisory: BTreeSet<String>,
    pub(in crate::schema::analyze) notify: BTreeSet<String>,
    pub(in crate::schema::analyze) large_objects: BTreeSet<String>,
}

/// Words before which a plpgsql statement (LISTEN, NOTIFY) may start.
pub(in crate::schema::analyze) const STATEMENT_STARTS: &[&str] = &[
    "begin",
    "then",
    "else",
    "loop",
    "do",
    "also",
    "instead",
    "exception",
];

pub(in crate::schema::analyze) fn scan_code(toks: &[Tok], found: &mut CodeFindings, depth: usize) {
    for (k, t) in toks.iter().enumerate() {
        let call = toks.get(k + 1).is_some_and(|n| n.is_punct('('));
        match t {
            Tok::Word(w) => {
                if SYSTEM_COLUMNS.contains(&w.as_str()) && !call {
                    found.system_columns.insert(w.clone());
                } else if call
                    && (w.starts_with("pg_advisory_") || w.starts_with("pg_try_advisory_"))
                {
                    found.advisory.insert(w.clone());
                } else if call && (w.starts_with("lo_") || w == "loread" || w == "lowrite") {
                    found.large_objects.insert(w.clone());
                } else if call && w == "pg_notify" {
                    found.notify.insert(w.clone());
                } else if (w == "listen" || w == "notify" || w == "unlisten")
                    && toks.get(k + 1).and_then(Tok::name).is_some()
                    && (k == 0
                        || toks[k - 1].is_punct(';')
                        || matches!(&toks[k - 1], Tok::Word(p) if STATEMENT_STARTS.contains(&p.as_str())))
                {
                    found.notify.insert(w.to_uppercase());
                }
            }
            // A function body: its code is a string of its own.
            Tok::Body(body) if depth < 4 => scan_code(&lex(body), found, depth + 1),
            Tok::Str(body) if depth < 4 && k > 0 && toks[k - 1].is("as") => {
                scan_code(&lex(body), found, depth + 1)
            }
            _ => {}
        }
    }
}
