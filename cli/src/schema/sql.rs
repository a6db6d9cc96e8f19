//! Reading SQL as pg_dump writes it: statements split at top-level semicolons (quotes,
//! quoted identifiers, dollar quotes and comments respected), grouped into the entries
//! pg_dump heads with `-- Name: ...; Type: ...; Schema: ...; Owner: ...`.

/// One statement and the line it starts on (1-based).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Statement {
    /// The statement, without its final semicolon, trimmed.
    pub text: String,
    /// Line of the file where it starts.
    pub line: usize,
}

/// Splits `sql` into statements. Comments are dropped from the statements' text only
/// when they stand between statements; inside a statement they are kept as written.
pub fn split(sql: &str) -> Vec<Statement> {
    let bytes = sql.as_bytes();
    let mut out = Vec::new();
    let mut start = 0usize;
    let mut i = 0usize;
    let mut line = 1usize;
    let mut start_line = 1usize;
    let mut seen_code = false;
    while i < bytes.len() {
        let c = bytes[i];
        match c {
            b'\n' => {
                line += 1;
                i += 1;
            }
            b'-' if bytes.get(i + 1) == Some(&b'-') => {
                // A line comment: to the end of the line.
                while i < bytes.len() && bytes[i] != b'\n' {
                    i += 1;
                }
                if !seen_code {
                    start = i;
                }
            }
            b'\\' if !seen_code => {
                // A psql meta-command line (pg_dump 15.14+ writes `\restrict <key>`
                // first and `\unrestrict <key>` last): not SQL, skipped.
                while i < bytes.len() && bytes[i] != b'\n' {
                    i += 1;
                }
                start = i;
            }
            b'/' if bytes.get(i + 1) == Some(&b'*') => {
                // Block comments nest in PostgreSQL.
                let mut depth = 0usize;
                while i < bytes.len() {
                    if bytes[i] == b'/' && bytes.get(i + 1) == Some(&b'*') {
                        depth += 1;
                        i += 2;
                    } else if bytes[i] == b'*' && bytes.get(i + 1) == Some(&b'/') {
                        depth -= 1;
                        i += 2;
                        if depth == 0 {
                            break;
                        }
                    } else {
                        if bytes[i] == b'\n' {
                            line += 1;
                        }
                        i += 1;
                    }
                }
                if !seen_code {
                    start = i;
                }
            }
            b'\'' | b'"' => {
                if !seen_code {
                    seen_code = true;
                    start = i;
                    start_line = line;
                }
                let quote = c;
                i += 1;
                while i < bytes.len() {
                    if bytes[i] == quote {
                        if bytes.get(i + 1) == Some(&quote) {
                            i += 2;
                            continue;
                        }
                        i += 1;
                        break;
                    }
                    if bytes[i] == b'\n' {
                        line += 1;
                    }
                    i += 1;
                }
            }
            b'$' => {
                if !seen_code {
                    seen_code = true;
                    start = i;
                    start_line = line;
                }
                // $tag$ ... $tag$ (tag: letters, digits, underscores; not starting
                // with a digit). A `$1` parameter is not a quote.
                let tag_end = bytes[i + 1..]
                    .iter()
                    .position(|b| !(b.is_ascii_alphanumeric() || *b == b'_'))
                    .map(|p| i + 1 + p);
                match tag_end {
                    Some(end)
                        if bytes[end] == b'$'
                            && !bytes.get(i + 1).is_some_and(u8::is_ascii_digit) =>
                    {
                        let tag = &bytes[i..=end];
                        let body = end + 1;
                        let close = bytes[body..]
                            .windows(tag.len())
                            .position(|w| w == tag)
                            .map_or(bytes.len(), |p| body + p + tag.len());
                        line += bytes[i..close].iter().filter(|b| **b == b'\n').count();
                        i = close;
                    }
                    _ => i += 1,
                }
            }
            b';' => {
                if seen_code {
                    let text = sql[start..i].trim();
                    if !text.is_empty() {
                        out.push(Statement {
                            text: text.to_owned(),
                            line: start_line,
                        });
                    }
                }
                seen_code = false;
                i += 1;
                start = i;
            }
            c if c.is_ascii_whitespace() => i += 1,
            _ => {
                if !seen_code {
                    seen_code = true;
                    start = i;
                    start_line = line;
                }
                i += 1;
            }
        }
    }
    if seen_code {
        let text = sql[start..].trim();
        if !text.is_empty() {
            out.push(Statement {
                text: text.to_owned(),
                line: start_line,
            });
        }
    }
    out
}

/// pg_dump's head of an entry: `-- Name: x; Type: TABLE; Schema: s; Owner: o`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Head {
    /// The object's name as pg_dump writes it (`orders`, `orders orders_pkey`,
    /// `COLUMN orders.id`, `f(integer)`).
    pub name: String,
    /// pg_dump's object type (`TABLE`, `INDEX`, `FK CONSTRAINT`, ...).
    pub kind: String,
    /// Its schema (`-` or empty when none).
    pub schema: String,
}

impl Head {
    /// Parses a `-- Name: ...` comment line.
    pub fn parse(line: &str) -> Option<Head> {
        let rest = line.trim().strip_prefix("--")?.trim();
        let rest = rest
            .strip_prefix("Name: ")
            .or_else(|| rest.strip_prefix("Data for Name: "))?;
        let mut head = Head::default();
        // The name may itself hold "; " only in odd cases; the fields after it are
        // fixed, so split from the right.
        let mut parts: Vec<&str> = rest.split("; ").collect();
        while let Some(last) = parts.last() {
            if let Some(v) = last.strip_prefix("Owner: ") {
                let _ = v;
                parts.pop();
            } else if let Some(v) = last.strip_prefix("Schema: ") {
                head.schema = v.to_owned();
                parts.pop();
            } else if let Some(v) = last.strip_prefix("Type: ") {
                head.kind = v.to_owned();
                parts.pop();
                break;
            } else {
                parts.pop();
            }
        }
        head.name = parts.join("; ");
        Some(head)
    }

    /// `schema.name`, or `name` when there is no schema; for messages.
    pub fn object(&self) -> String {
        if self.schema.is_empty() || self.schema == "-" {
            format!("{} {}", self.kind.to_lowercase(), self.name)
        } else {
            format!("{} {}.{}", self.kind.to_lowercase(), self.schema, self.name)
        }
    }
}

/// One pg_dump entry: its head (none for statements before the first head, such as the
/// session settings) and its statements.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// The head, when the entry has one.
    pub head: Option<Head>,
    /// Its statements, in order.
    pub statements: Vec<Statement>,
}

/// Groups a file's statements under the heads that precede them.
pub fn entries(sql: &str) -> Vec<Entry> {
    // Where each head starts (line number) and what it says.
    let heads: Vec<(usize, Head)> = sql
        .lines()
        .enumerate()
        .filter_map(|(n, l)| Head::parse(l).map(|h| (n + 1, h)))
        .collect();
    let mut out: Vec<Entry> = Vec::new();
    let mut next_head = 0usize;
    for statement in split(sql) {
        let mut head = None;
        while next_head < heads.len() && heads[next_head].0 < statement.line {
            head = Some(heads[next_head].1.clone());
            next_head += 1;
        }
        match head {
            Some(h) => out.push(Entry {
                head: Some(h),
                statements: vec![statement],
            }),
            None => match out.last_mut() {
                Some(last) => last.statements.push(statement),
                None => out.push(Entry {
                    head: None,
                    statements: vec![statement],
                }),
            },
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statements_split_at_top_level_semicolons_only() {
        let sql = "\\restrict abc\nSET a = 1;\n-- a comment; with a semicolon\nCREATE TABLE \"x;y\" (v text DEFAULT 'a;''b');\n\
                   CREATE FUNCTION f() RETURNS int LANGUAGE plpgsql AS $body$ BEGIN RETURN 1; END $body$;\n\
                   /* block; /* nested; */ */ SELECT $1::int, $$;$$;\nSELECT 1;\n\\unrestrict abc\n";
        let texts: Vec<String> = split(sql).into_iter().map(|s| s.text).collect();
        assert_eq!(
            texts,
            [
                "SET a = 1",
                "CREATE TABLE \"x;y\" (v text DEFAULT 'a;''b')",
                "CREATE FUNCTION f() RETURNS int LANGUAGE plpgsql AS $body$ BEGIN RETURN 1; END $body$",
                "SELECT $1::int, $$;$$",
                "SELECT 1",
            ]
        );
        let lines: Vec<usize> = split(sql).into_iter().map(|s| s.line).collect();
        assert_eq!(lines, [2, 4, 5, 6, 7]);
    }

    #[test]
    fn heads_group_statements() {
        let sql = "SET x = 1;\n\n--\n-- Name: orders; Type: TABLE; Schema: public; Owner: ferry\n--\n\n\
                   CREATE TABLE public.orders (id int);\n\nALTER TABLE public.orders OWNER TO ferry;\n\n\
                   --\n-- Name: orders orders_pkey; Type: CONSTRAINT; Schema: public; Owner: ferry\n--\n\n\
                   ALTER TABLE ONLY public.orders ADD CONSTRAINT orders_pkey PRIMARY KEY (id);\n";
        let e = entries(sql);
        assert_eq!(e.len(), 3);
        assert!(e[0].head.is_none());
        let h = e[1].head.as_ref().unwrap_or_else(|| unreachable!());
        assert_eq!(
            (h.name.as_str(), h.kind.as_str(), h.schema.as_str()),
            ("orders", "TABLE", "public")
        );
        assert_eq!(e[1].statements.len(), 2);
        let h = e[2].head.as_ref().unwrap_or_else(|| unreachable!());
        assert_eq!(h.kind, "CONSTRAINT");
        assert_eq!(h.object(), "constraint public.orders orders_pkey");
    }
}
