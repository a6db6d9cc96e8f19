//! Avro schema compatibility: can a reader schema read data written with a writer schema.
//!
//! The rules are Avro's schema resolution rules (specification, "Schema Resolution"), checked
//! the way Confluent's registry checks them (Avro Java's `SchemaCompatibility`):
//!
//! - records match by unqualified name (or a reader alias); every reader field must exist in the
//!   writer (by name or reader alias) with a readable type, or have a default; writer fields the
//!   reader lacks are skipped;
//! - promotions: int → long, float, double; long → float, double; float → double;
//!   string ↔ bytes;
//! - a writer union is readable only if *every* branch is readable (a partial match is
//!   incompatible, because a record written with the other branch would fail to decode); a
//!   non-union writer is readable by a reader union if some branch reads it;
//! - enums: every writer symbol must be a reader symbol, unless the reader has a default;
//! - fixed: same name and size; arrays and maps: items and values recursively;
//! - logical types resolve as their underlying type, except two decimals, whose precision and
//!   scale must match (otherwise the same bytes decode to a different number, which a database
//!   migration must never do silently — Confluent does not check this).
//!
//! apache-avro 0.22 has `SchemaCompatibility::can_read`, but it is not used: it reports a
//! union whose branches only partly match as compatible (`Compatibility::Partial`), and it does
//! not resolve named type references, so a type defined in a field that the reader dropped
//! makes it fail with a spurious type mismatch.

use std::collections::{HashMap, HashSet};

use apache_avro::schema::{DecimalSchema, InnerDecimalSchema, Name, UuidSchema};
use apache_avro::Schema;

/// A parsed schema with the named types it can refer to (its own and those of its references).
#[derive(Debug, Clone)]
pub struct ParsedSchema {
    /// The root schema.
    pub root: Schema,
    /// Schemas of the references, in the order they were given to the parser.
    pub references: Vec<Schema>,
}

impl ParsedSchema {
    /// Parses `schema`, resolving names against the `references` schema strings.
    pub fn parse(schema: &str, references: &[String]) -> Result<Self, apache_avro::Error> {
        if references.is_empty() {
            Ok(Self {
                root: Schema::parse_str(schema)?,
                references: Vec::new(),
            })
        } else {
            let (root, references) = Schema::parse_str_with_list(schema, references)?;
            Ok(Self { root, references })
        }
    }

    fn names(&self) -> HashMap<String, &Schema> {
        let mut names = HashMap::new();
        for schema in self.references.iter().chain(std::iter::once(&self.root)) {
            collect_names(schema, &mut names);
        }
        names
    }
}

fn collect_names<'a>(schema: &'a Schema, names: &mut HashMap<String, &'a Schema>) {
    if let Some(name) = named_type_name(schema) {
        if names.insert(name.fullname(None), schema).is_some() {
            // Already visited (a reference list can hold a type the root defines again).
            return;
        }
    }
    match schema {
        Schema::Array(a) => collect_names(&a.items, names),
        Schema::Map(m) => collect_names(&m.types, names),
        Schema::Union(u) => u.variants().iter().for_each(|v| collect_names(v, names)),
        Schema::Record(r) => r
            .fields
            .iter()
            .for_each(|f| collect_names(&f.schema, names)),
        _ => {}
    }
}

/// The name of a schema that defines a named type (not of a reference to one).
fn named_type_name(schema: &Schema) -> Option<&Name> {
    match schema {
        Schema::Record(r) => Some(&r.name),
        Schema::Enum(e) => Some(&e.name),
        Schema::Fixed(f)
        | Schema::Duration(f)
        | Schema::Uuid(UuidSchema::Fixed(f))
        | Schema::Decimal(DecimalSchema {
            inner: InnerDecimalSchema::Fixed(f),
            ..
        }) => Some(&f.name),
        _ => None,
    }
}

/// Returns every reason why `reader` cannot read data written with `writer`; empty if it can.
pub fn incompatibilities(writer: &ParsedSchema, reader: &ParsedSchema) -> Vec<String> {
    let mut checker = Checker {
        writer_names: writer.names(),
        reader_names: reader.names(),
        in_progress: HashSet::new(),
        problems: Vec::new(),
    };
    checker.check(&writer.root, &reader.root, "");
    checker.problems
}

/// Whether `reader` can read every datum written with `writer`.
pub fn can_read(writer: &ParsedSchema, reader: &ParsedSchema) -> bool {
    incompatibilities(writer, reader).is_empty()
}

struct Checker<'a> {
    writer_names: HashMap<String, &'a Schema>,
    reader_names: HashMap<String, &'a Schema>,
    /// Pairs of record full names being compared; a recursive type meeting itself again is
    /// compatible if the rest of the comparison is (co-induction).
    in_progress: HashSet<(String, String)>,
    problems: Vec<String>,
}

/// The encoding a schema resolves as; logical types map to their underlying type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Null,
    Boolean,
    Int,
    Long,
    Float,
    Double,
    Bytes,
    String,
    Array,
    Map,
    Union,
    Record,
    Enum,
    Fixed,
}

fn kind(schema: &Schema) -> Kind {
    match schema {
        Schema::Null => Kind::Null,
        Schema::Boolean => Kind::Boolean,
        Schema::Int | Schema::Date | Schema::TimeMillis => Kind::Int,
        Schema::Long
        | Schema::TimeMicros
        | Schema::TimestampMillis
        | Schema::TimestampMicros
        | Schema::TimestampNanos
        | Schema::LocalTimestampMillis
        | Schema::LocalTimestampMicros
        | Schema::LocalTimestampNanos => Kind::Long,
        Schema::Float => Kind::Float,
        Schema::Double => Kind::Double,
        Schema::Bytes
        | Schema::BigDecimal
        | Schema::Uuid(UuidSchema::Bytes)
        | Schema::Decimal(DecimalSchema {
            inner: InnerDecimalSchema::Bytes,
            ..
        }) => Kind::Bytes,
        Schema::String | Schema::Uuid(UuidSchema::String) => Kind::String,
        Schema::Array(_) => Kind::Array,
        Schema::Map(_) => Kind::Map,
        Schema::Union(_) => Kind::Union,
        Schema::Record(_) => Kind::Record,
        Schema::Enum(_) => Kind::Enum,
        Schema::Fixed(_)
        | Schema::Duration(_)
        | Schema::Uuid(UuidSchema::Fixed(_))
        | Schema::Decimal(DecimalSchema {
            inner: InnerDecimalSchema::Fixed(_),
            ..
        }) => Kind::Fixed,
        // Resolved before `kind` is asked; an unresolved reference matches nothing.
        Schema::Ref { .. } => Kind::Null,
    }
}

fn kind_name(schema: &Schema) -> String {
    match named_type_name(schema) {
        Some(name) => format!("{} {}", kind_label(kind(schema)), name.fullname(None)),
        None => kind_label(kind(schema)).to_string(),
    }
}

fn kind_label(kind: Kind) -> &'static str {
    match kind {
        Kind::Null => "null",
        Kind::Boolean => "boolean",
        Kind::Int => "int",
        Kind::Long => "long",
        Kind::Float => "float",
        Kind::Double => "double",
        Kind::Bytes => "bytes",
        Kind::String => "string",
        Kind::Array => "array",
        Kind::Map => "map",
        Kind::Union => "union",
        Kind::Record => "record",
        Kind::Enum => "enum",
        Kind::Fixed => "fixed",
    }
}

/// Whether a writer value of kind `w` is readable as kind `r` (same kind or a promotion).
fn promotes(w: Kind, r: Kind) -> bool {
    w == r
        || matches!(
            (w, r),
            (Kind::Int, Kind::Long | Kind::Float | Kind::Double)
                | (Kind::Long, Kind::Float | Kind::Double)
                | (Kind::Float, Kind::Double)
                | (Kind::String, Kind::Bytes)
                | (Kind::Bytes, Kind::String)
        )
}

fn display_path(path: &str) -> &str {
    if path.is_empty() {
        "/"
    } else {
        path
    }
}

impl<'a> Checker<'a> {
    fn resolve(&self, schema: &'a Schema, writer: bool) -> Option<&'a Schema> {
        match schema {
            Schema::Ref { name } => {
                let names = if writer {
                    &self.writer_names
                } else {
                    &self.reader_names
                };
                names.get(&name.fullname(None)).copied()
            }
            other => Some(other),
        }
    }

    /// Checks without recording problems; used to probe union branches.
    fn probe(&mut self, writer: &'a Schema, reader: &'a Schema, path: &str) -> bool {
        let before = self.problems.len();
        self.check(writer, reader, path);
        let ok = self.problems.len() == before;
        self.problems.truncate(before);
        ok
    }

    fn check(&mut self, writer: &'a Schema, reader: &'a Schema, path: &str) {
        let Some(writer) = self.resolve(writer, true) else {
            self.problems.push(format!(
                "writer type at path '{}' refers to an undefined named type",
                display_path(path)
            ));
            return;
        };
        let Some(reader) = self.resolve(reader, false) else {
            self.problems.push(format!(
                "reader type at path '{}' refers to an undefined named type",
                display_path(path)
            ));
            return;
        };

        if let Schema::Union(w) = writer {
            for (i, branch) in w.variants().iter().enumerate() {
                let branch_path = format!("{path}/{i}");
                if let Schema::Union(_) = reader {
                    self.check(branch, reader, &branch_path);
                } else if !self.probe(branch, reader, &branch_path) {
                    self.problems.push(format!(
                        "reader type {} at path '{}' cannot read writer union branch {} ({})",
                        kind_name(reader),
                        display_path(path),
                        i,
                        self.resolve(branch, true)
                            .map(kind_name)
                            .unwrap_or_else(|| "undefined type".to_string())
                    ));
                }
            }
            return;
        }
        if let Schema::Union(r) = reader {
            let readable = r
                .variants()
                .iter()
                .enumerate()
                .any(|(i, branch)| self.probe(writer, branch, &format!("{path}/{i}")));
            if !readable {
                self.problems.push(format!(
                    "reader union at path '{}' has no branch that can read writer type {}",
                    display_path(path),
                    kind_name(writer)
                ));
            }
            return;
        }

        let (wk, rk) = (kind(writer), kind(reader));
        if !promotes(wk, rk) {
            self.problems.push(format!(
                "reader type {} at path '{}' cannot read writer type {}",
                kind_name(reader),
                display_path(path),
                kind_name(writer)
            ));
            return;
        }

        match (writer, reader) {
            (Schema::Decimal(w), Schema::Decimal(r))
                if w.precision != r.precision || w.scale != r.scale =>
            {
                self.problems.push(format!(
                    "reader decimal({}, {}) at path '{}' differs from writer decimal({}, {}); \
                     precision and scale must match",
                    r.precision,
                    r.scale,
                    display_path(path),
                    w.precision,
                    w.scale
                ));
            }
            (Schema::Array(w), Schema::Array(r)) => {
                self.check(&w.items, &r.items, &format!("{path}/items"));
            }
            (Schema::Map(w), Schema::Map(r)) => {
                self.check(&w.types, &r.types, &format!("{path}/values"));
            }
            (Schema::Record(w), Schema::Record(r)) => {
                if !self.names_match(&w.name, &r.name, r.aliases.as_deref(), path) {
                    return;
                }
                let key = (w.name.fullname(None), r.name.fullname(None));
                if !self.in_progress.insert(key.clone()) {
                    return;
                }
                for (i, field) in r.fields.iter().enumerate() {
                    let field_path = format!("{path}/fields/{i}");
                    let found = std::iter::once(&field.name)
                        .chain(field.aliases.iter())
                        .find_map(|n| w.fields.iter().find(|wf| &wf.name == n));
                    match found {
                        Some(wf) => {
                            self.check(&wf.schema, &field.schema, &format!("{field_path}/type"))
                        }
                        None if field.default.is_some() => {}
                        None => self.problems.push(format!(
                            "reader field '{}' at path '{}' has no default value and is missing \
                             in the writer schema",
                            field.name, field_path
                        )),
                    }
                }
                self.in_progress.remove(&key);
            }
            (Schema::Enum(w), Schema::Enum(r)) => {
                if !self.names_match(&w.name, &r.name, r.aliases.as_deref(), path) {
                    return;
                }
                if r.default.is_none() {
                    let missing: Vec<&str> = w
                        .symbols
                        .iter()
                        .filter(|s| !r.symbols.contains(s))
                        .map(String::as_str)
                        .collect();
                    if !missing.is_empty() {
                        self.problems.push(format!(
                            "reader enum {} at path '{}' lacks writer symbols [{}] and has no \
                             default",
                            r.name.fullname(None),
                            display_path(path),
                            missing.join(", ")
                        ));
                    }
                }
            }
            _ if wk == Kind::Fixed => {
                if let (Some(w), Some(r)) = (fixed_of(writer), fixed_of(reader)) {
                    if !self.names_match(&w.name, &r.name, r.aliases.as_deref(), path) {
                        return;
                    }
                    if w.size != r.size {
                        self.problems.push(format!(
                            "reader fixed {} at path '{}' has size {}, writer has size {}",
                            r.name.fullname(None),
                            display_path(path),
                            r.size,
                            w.size
                        ));
                    }
                }
            }
            _ => {}
        }
    }

    /// Avro Java compares unqualified names, or the writer's full name with the reader's aliases.
    fn names_match(
        &mut self,
        writer: &Name,
        reader: &Name,
        reader_aliases: Option<&[apache_avro::schema::Alias]>,
        path: &str,
    ) -> bool {
        let aliased = reader_aliases.unwrap_or_default().iter().any(|a| {
            a.fully_qualified_name(reader.namespace()).fullname(None) == writer.fullname(None)
        });
        if writer.name() == reader.name() || aliased {
            true
        } else {
            self.problems.push(format!(
                "reader type name '{}' at path '{}' does not match writer type name '{}'",
                reader.fullname(None),
                display_path(path),
                writer.fullname(None)
            ));
            false
        }
    }
}

fn fixed_of(schema: &Schema) -> Option<&apache_avro::schema::FixedSchema> {
    match schema {
        Schema::Fixed(f)
        | Schema::Duration(f)
        | Schema::Uuid(UuidSchema::Fixed(f))
        | Schema::Decimal(DecimalSchema {
            inner: InnerDecimalSchema::Fixed(f),
            ..
        }) => Some(f),
        _ => None,
    }
}

/// A subject's (or the registry's) compatibility level.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CompatibilityLevel {
    /// No check.
    None,
    /// The new schema can read data written with the latest version.
    #[default]
    Backward,
    /// The new schema can read data written with every version.
    BackwardTransitive,
    /// The latest version can read data written with the new schema.
    Forward,
    /// Every version can read data written with the new schema.
    ForwardTransitive,
    /// Backward and forward against the latest version.
    Full,
    /// Backward and forward against every version.
    FullTransitive,
}

impl CompatibilityLevel {
    /// Confluent's name of the level.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::None => "NONE",
            Self::Backward => "BACKWARD",
            Self::BackwardTransitive => "BACKWARD_TRANSITIVE",
            Self::Forward => "FORWARD",
            Self::ForwardTransitive => "FORWARD_TRANSITIVE",
            Self::Full => "FULL",
            Self::FullTransitive => "FULL_TRANSITIVE",
        }
    }

    /// Whether the check runs against every live version instead of the latest.
    pub fn is_transitive(self) -> bool {
        matches!(
            self,
            Self::BackwardTransitive | Self::ForwardTransitive | Self::FullTransitive
        )
    }

    fn backward(self) -> bool {
        matches!(
            self,
            Self::Backward | Self::BackwardTransitive | Self::Full | Self::FullTransitive
        )
    }

    fn forward(self) -> bool {
        matches!(
            self,
            Self::Forward | Self::ForwardTransitive | Self::Full | Self::FullTransitive
        )
    }
}

impl std::fmt::Display for CompatibilityLevel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for CompatibilityLevel {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s.to_ascii_uppercase().as_str() {
            "NONE" => Self::None,
            "BACKWARD" => Self::Backward,
            "BACKWARD_TRANSITIVE" => Self::BackwardTransitive,
            "FORWARD" => Self::Forward,
            "FORWARD_TRANSITIVE" => Self::ForwardTransitive,
            "FULL" => Self::Full,
            "FULL_TRANSITIVE" => Self::FullTransitive,
            other => return Err(format!("invalid compatibility level '{other}'")),
        })
    }
}

/// Checks `new` against `existing` (the versions to check against, oldest first, already
/// narrowed to the latest for non-transitive levels) and returns the reasons it is not
/// compatible under `level`; empty if it is.
pub fn check(
    level: CompatibilityLevel,
    new: &ParsedSchema,
    existing: &[(u32, &ParsedSchema)],
) -> Vec<String> {
    let mut messages = Vec::new();
    for (version, old) in existing {
        if level.backward() {
            for problem in incompatibilities(old, new) {
                messages.push(format!(
                    "new schema cannot read data written with version {version} ({level}): \
                     {problem}"
                ));
            }
        }
        if level.forward() {
            for problem in incompatibilities(new, old) {
                messages.push(format!(
                    "version {version} cannot read data written with the new schema ({level}): \
                     {problem}"
                ));
            }
        }
    }
    messages
}

#[cfg(test)]
mod tests;
