//! Tokens of a statement: words (lowercased, as PostgreSQL folds them), quoted
//! identifiers, string and dollar-quoted literals (kept whole, so nothing inside a
//! literal or a comment is taken for SQL), and the helpers the rules read them with.

#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Tok {
    /// An unquoted word, lowercased (identifiers fold to lower case).
    Word(String),
    /// A quoted identifier, exact.
    Ident(String),
    /// A string literal's content.
    Str(String),
    /// A dollar-quoted string's content.
    Body(String),
    /// A number.
    Num,
    /// Any other character.
    Punct(char),
}

impl Tok {
    pub(super) fn is(&self, word: &str) -> bool {
        matches!(self, Tok::Word(w) if w == word)
    }

    pub(super) fn is_punct(&self, c: char) -> bool {
        matches!(self, Tok::Punct(p) if *p == c)
    }

    /// The name an identifier token stands for.
    pub(super) fn name(&self) -> Option<&str> {
        match self {
            Tok::Word(w) | Tok::Ident(w) => Some(w),
            _ => None,
        }
    }
}

pub(super) fn lex(text: &str) -> Vec<Tok> {
    let chars: Vec<char> = text.chars().collect();
    let n = chars.len();
    let mut out = Vec::new();
    let mut i = 0usize;
    while i < n {
        let c = chars[i];
        if c.is_whitespace() {
            i += 1;
        } else if c == '-' && chars.get(i + 1) == Some(&'-') {
            while i < n && chars[i] != '\n' {
                i += 1;
            }
        } else if c == '/' && chars.get(i + 1) == Some(&'*') {
            let mut depth = 0usize;
            while i < n {
                if chars[i] == '/' && chars.get(i + 1) == Some(&'*') {
                    depth += 1;
                    i += 2;
                } else if chars[i] == '*' && chars.get(i + 1) == Some(&'/') {
                    depth = depth.saturating_sub(1);
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    i += 1;
                }
            }
        } else if c == '\'' {
            let (s, next) = quoted(&chars, i, '\'', false);
            out.push(Tok::Str(s));
            i = next;
        } else if c == '"' {
            let (s, next) = quoted(&chars, i, '"', false);
            out.push(Tok::Ident(s));
            i = next;
        } else if c == '$' {
            let mut j = i + 1;
            while j < n && (chars[j].is_alphanumeric() || chars[j] == '_') {
                j += 1;
            }
            let starts_digit = chars.get(i + 1).is_some_and(|c| c.is_ascii_digit());
            if j < n && chars[j] == '$' && !starts_digit {
                let tag = &chars[i..=j];
                let body = j + 1;
                let close = (body..n.saturating_sub(tag.len() - 1))
                    .find(|&k| chars[k..k + tag.len()] == *tag)
                    .unwrap_or(n);
                out.push(Tok::Body(chars[body..close.min(n)].iter().collect()));
                i = (close + tag.len()).min(n);
            } else {
                out.push(Tok::Punct('$'));
                i += 1;
            }
        } else if c.is_alphabetic() || c == '_' {
            let start = i;
            while i < n && (chars[i].is_alphanumeric() || chars[i] == '_' || chars[i] == '$') {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect::<String>().to_lowercase();
            if (word == "e" || word == "b" || word == "x" || word == "n")
                && chars.get(i) == Some(&'\'')
            {
                let (s, next) = quoted(&chars, i, '\'', word == "e");
                out.push(Tok::Str(s));
                i = next;
            } else {
                out.push(Tok::Word(word));
            }
        } else if c.is_ascii_digit() {
            while i < n && (chars[i].is_ascii_alphanumeric() || chars[i] == '.' || chars[i] == '_')
            {
                i += 1;
            }
            out.push(Tok::Num);
        } else {
            out.push(Tok::Punct(c));
            i += 1;
        }
    }
    out
}

/// A quoted run starting at `start` (the quote): its content and the index after it.
pub(super) fn quoted(
    chars: &[char],
    start: usize,
    quote: char,
    backslash: bool,
) -> (String, usize) {
    let mut s = String::new();
    let mut i = start + 1;
    while i < chars.len() {
        let c = chars[i];
        if backslash && c == '\\' {
            if let Some(next) = chars.get(i + 1) {
                s.push(*next);
            }
            i += 2;
            continue;
        }
        if c == quote {
            if chars.get(i + 1) == Some(&quote) {
                s.push(quote);
                i += 2;
                continue;
            }
            return (s, i + 1);
        }
        s.push(c);
        i += 1;
    }
    (s, chars.len())
}

/// A possibly schema-qualified name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct QName {
    pub(super) schema: Option<String>,
    pub(super) name: String,
}

impl QName {
    /// `schema.name`, `public` when unqualified (how the model keys objects).
    pub(super) fn key(&self) -> String {
        format!(
            "{}.{}",
            self.schema.as_deref().unwrap_or("public"),
            self.name
        )
    }

    pub(super) fn schema_or_public(&self) -> &str {
        self.schema.as_deref().unwrap_or("public")
    }
}

/// The qualified name at `i` (`a`, `a.b`, `a.b.c` keeps the last two parts).
pub(super) fn qname(toks: &[Tok], i: usize) -> Option<(QName, usize)> {
    let mut parts = vec![toks.get(i)?.name()?.to_owned()];
    let mut j = i + 1;
    while toks.get(j).is_some_and(|t| t.is_punct('.')) {
        match toks.get(j + 1).and_then(Tok::name) {
            Some(p) => {
                parts.push(p.to_owned());
                j += 2;
            }
            None => break,
        }
    }
    let name = parts.pop()?;
    Some((
        QName {
            schema: parts.pop(),
            name,
        },
        j,
    ))
}

/// Skips the words of `seq` at `i` when all are there.
pub(super) fn skip_seq(toks: &[Tok], i: usize, seq: &[&str]) -> usize {
    if seq
        .iter()
        .enumerate()
        .all(|(k, w)| toks.get(i + k).is_some_and(|t| t.is(w)))
    {
        i + seq.len()
    } else {
        i
    }
}

pub(super) fn has_seq(toks: &[Tok], i: usize, seq: &[&str]) -> bool {
    skip_seq(toks, i, seq) != i
}

/// The index of the `)` closing the `(` at `open` (or the end).
pub(super) fn close_paren(toks: &[Tok], open: usize) -> usize {
    let mut depth = 0usize;
    for (k, t) in toks.iter().enumerate().skip(open) {
        if t.is_punct('(') {
            depth += 1;
        } else if t.is_punct(')') {
            depth = depth.saturating_sub(1);
            if depth == 0 {
                return k;
            }
        }
    }
    toks.len()
}

/// Splits at the commas outside parentheses.
pub(super) fn split_commas(toks: &[Tok]) -> Vec<&[Tok]> {
    let mut out = Vec::new();
    let mut depth = 0usize;
    let mut start = 0usize;
    for (k, t) in toks.iter().enumerate() {
        match t {
            Tok::Punct('(') | Tok::Punct('[') => depth += 1,
            Tok::Punct(')') | Tok::Punct(']') => depth = depth.saturating_sub(1),
            Tok::Punct(',') if depth == 0 => {
                out.push(&toks[start..k]);
                start = k + 1;
            }
            _ => {}
        }
    }
    if start < toks.len() {
        out.push(&toks[start..]);
    }
    out
}

/// Indexes of the tokens outside any parentheses.
pub(super) fn top_level(toks: &[Tok]) -> Vec<usize> {
    let mut out = Vec::new();
    let mut depth = 0usize;
    for (k, t) in toks.iter().enumerate() {
        if t.is_punct('(') {
            depth += 1;
        } else if t.is_punct(')') {
            depth = depth.saturating_sub(1);
        } else if depth == 0 {
            out.push(k);
        }
    }
    out
}

/// The first top-level occurrence of `word` at or after `from`.
pub(super) fn find_top(toks: &[Tok], from: usize, word: &str) -> Option<usize> {
    top_level(toks)
        .into_iter()
        .find(|&k| k >= from && toks[k].is(word))
}
