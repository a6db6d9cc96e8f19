//! The registry's in-memory state and the records that change it.
//!
//! Every change is a [`Record`] written to the registry topic first and applied here after the
//! broker acknowledged it, so replaying the topic from the beginning rebuilds exactly this
//! state. Records are idempotent (a key's latest value wins), which is what log compaction
//! keeps. Planning a change (`plan_*`) reads the state and returns the record to write, or the
//! error to report; it never mutates.
//!
//! Invariants: a global id names one schema (compared by [`identity`]) forever, also across
//! subjects and after soft deletes; a subject's versions grow by one from the highest version it
//! ever had, deleted ones included.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};

use super::compat::{self, CompatibilityLevel, ParsedSchema};
use super::RegistryError;

/// A named reference from one schema to a type registered under another subject.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SchemaReference {
    /// The type's full name as the referring schema uses it.
    pub name: String,
    /// The subject the referenced schema is registered under.
    pub subject: String,
    /// The referenced version.
    pub version: u32,
}

/// A subject version as stored in the topic (Confluent `_schemas` layout).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SchemaValue {
    /// The subject.
    pub subject: String,
    /// The version within the subject, from 1.
    pub version: u32,
    /// The global schema id.
    pub id: u32,
    /// The schema string exactly as registered.
    pub schema: String,
    /// Schemas this one refers to.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub references: Vec<SchemaReference>,
    /// Soft-deleted versions are kept for lookups by id with `deleted=true`.
    #[serde(default)]
    pub deleted: bool,
}

/// A change to the registry, as written to the topic.
#[derive(Debug, Clone, PartialEq)]
pub enum Record {
    /// A subject version was registered or (soft-)deleted.
    Schema(SchemaValue),
    /// A compatibility level was set, for a subject or globally (`None`).
    Config {
        /// The subject, or `None` for the global level.
        subject: Option<String>,
        /// The level.
        level: CompatibilityLevel,
    },
}

/// One registered schema, shared by every subject version with its id.
#[derive(Debug, Clone)]
pub struct StoredSchema {
    /// The string as first registered with this id.
    pub schema: String,
    /// Its references.
    pub references: Vec<SchemaReference>,
}

/// The registry's state; see the module documentation.
#[derive(Debug, Default)]
pub struct State {
    subjects: BTreeMap<String, BTreeMap<u32, SchemaValue>>,
    schemas: BTreeMap<u32, StoredSchema>,
    ids_by_identity: HashMap<String, u32>,
    global_level: Option<CompatibilityLevel>,
    subject_levels: BTreeMap<String, CompatibilityLevel>,
}

/// What registering a schema under a subject needs.
#[derive(Debug)]
pub enum RegisterPlan {
    /// The subject already has it: this id, nothing to write.
    Existing(u32),
    /// Write this record.
    Write(SchemaValue),
}

/// A schema parsed together with its references, and its identity.
#[derive(Debug)]
pub struct Candidate {
    /// The parsed schema.
    pub parsed: ParsedSchema,
    /// See [`identity`].
    pub identity: String,
}

/// The identity two registrations share exactly when they are the same schema.
///
/// This is the parsed schema written back as JSON (fully qualified names, no whitespace or
/// key-order differences) plus its references. It is *not* the Parsing Canonical Form: that
/// drops `logicalType`, `precision`, `scale` and defaults, so `decimal(10,2)` and
/// `decimal(12,4)` would share an id and a consumer would decode numbers with the wrong scale.
pub fn identity(parsed: &ParsedSchema, references: &[SchemaReference]) -> String {
    let schema = serde_json::to_string(&parsed.root).unwrap_or_default();
    if references.is_empty() {
        schema
    } else {
        let refs = serde_json::to_string(references).unwrap_or_default();
        format!("{schema}|{refs}")
    }
}

impl State {
    /// Applies a record read from, or acknowledged by, the topic.
    pub fn apply(&mut self, record: Record) {
        match record {
            Record::Schema(value) => {
                self.schemas
                    .entry(value.id)
                    .or_insert_with(|| StoredSchema {
                        schema: value.schema.clone(),
                        references: value.references.clone(),
                    });
                // The identity index is rebuilt lazily from parsed schemas; see `index`.
                self.subjects
                    .entry(value.subject.clone())
                    .or_default()
                    .insert(value.version, value);
            }
            Record::Config { subject, level } => match subject {
                Some(subject) => {
                    self.subject_levels.insert(subject, level);
                }
                None => self.global_level = Some(level),
            },
        }
    }

    /// Records that `identity` names schema `id` (done by the caller, who parsed the schema).
    pub fn index(&mut self, identity: String, id: u32) {
        self.ids_by_identity.entry(identity).or_insert(id);
    }

    /// Rebuilds the identity index after replaying the topic; schemas that no longer parse are
    /// skipped (they cannot be matched, but stay readable by id).
    pub fn reindex(&mut self) {
        let mut index = Vec::new();
        for (id, stored) in &self.schemas {
            if let Ok(candidate) = self.candidate(&stored.schema, &stored.references) {
                index.push((candidate.identity, *id));
            }
        }
        for (identity, id) in index {
            self.index(identity, id);
        }
    }

    /// Parses `schema` with its references resolved from this state.
    pub fn candidate(
        &self,
        schema: &str,
        references: &[SchemaReference],
    ) -> Result<Candidate, RegistryError> {
        let mut strings = Vec::new();
        self.collect_references(references, &mut strings, 0)?;
        let parsed = ParsedSchema::parse(schema, &strings)
            .map_err(|e| RegistryError::InvalidSchema(format!("invalid Avro schema: {e}")))?;
        let identity = identity(&parsed, references);
        Ok(Candidate { parsed, identity })
    }

    fn collect_references(
        &self,
        references: &[SchemaReference],
        out: &mut Vec<String>,
        depth: usize,
    ) -> Result<(), RegistryError> {
        if depth > 32 {
            return Err(RegistryError::InvalidSchema(
                "schema references are nested more than 32 deep".into(),
            ));
        }
        for reference in references {
            let value = self
                .subjects
                .get(&reference.subject)
                .and_then(|versions| versions.get(&reference.version))
                .ok_or_else(|| {
                    RegistryError::InvalidSchema(format!(
                        "reference '{}' names subject '{}' version {}, which is not registered",
                        reference.name, reference.subject, reference.version
                    ))
                })?;
            self.collect_references(&value.references, out, depth + 1)?;
            if !out.contains(&value.schema) {
                out.push(value.schema.clone());
            }
        }
        Ok(())
    }

    /// Plans registering `candidate` (registered as `schema` with `references`) under `subject`.
    pub fn plan_register(
        &self,
        subject: &str,
        schema: &str,
        references: &[SchemaReference],
        candidate: &Candidate,
    ) -> Result<RegisterPlan, RegistryError> {
        let versions = self.subjects.get(subject);
        let live = || versions.into_iter().flatten().filter(|(_, v)| !v.deleted);
        let existing_id = self.ids_by_identity.get(&candidate.identity).copied();
        if let Some(id) = existing_id {
            if live().any(|(_, v)| v.id == id) {
                return Ok(RegisterPlan::Existing(id));
            }
        }
        let problems = self.check_against_subject(subject, &candidate.parsed, None)?;
        if !problems.is_empty() {
            return Err(RegistryError::Incompatible {
                subject: subject.to_string(),
                messages: problems,
            });
        }
        let id = existing_id.unwrap_or_else(|| self.next_id());
        let version = versions
            .and_then(|v| v.keys().next_back())
            .map_or(1, |v| v + 1);
        Ok(RegisterPlan::Write(SchemaValue {
            subject: subject.to_string(),
            version,
            id,
            schema: schema.to_string(),
            references: references.to_vec(),
            deleted: false,
        }))
    }

    /// Checks `new` against a subject under its level: against `version` if given, else against
    /// the latest live version (or all live versions for transitive levels). A subject without
    /// versions accepts anything.
    pub fn check_against_subject(
        &self,
        subject: &str,
        new: &ParsedSchema,
        version: Option<u32>,
    ) -> Result<Vec<String>, RegistryError> {
        let level = self.level(subject);
        let live: Vec<&SchemaValue> = match version {
            Some(v) => vec![self.version(subject, VersionSelector::Number(v), false)?],
            None => self
                .subjects
                .get(subject)
                .into_iter()
                .flatten()
                .map(|(_, v)| v)
                .filter(|v| !v.deleted)
                .collect(),
        };
        let against: &[&SchemaValue] = if level.is_transitive() || version.is_some() {
            &live
        } else {
            live.split_last()
                .map_or(&[], |(last, _)| std::slice::from_ref(last))
        };
        let mut parsed = Vec::new();
        for value in against {
            let old = self
                .candidate(&value.schema, &value.references)
                .map_err(|e| {
                    RegistryError::Storage(format!(
                        "stored schema {} of subject '{}' version {} does not parse: {e}",
                        value.id, value.subject, value.version
                    ))
                })?;
            parsed.push((value.version, old.parsed));
        }
        let existing: Vec<(u32, &ParsedSchema)> = parsed.iter().map(|(v, p)| (*v, p)).collect();
        Ok(compat::check(level, new, &existing))
    }

    fn next_id(&self) -> u32 {
        self.schemas.keys().next_back().map_or(1, |id| id + 1)
    }

    /// The level that applies to `subject`.
    pub fn level(&self, subject: &str) -> CompatibilityLevel {
        self.subject_levels
            .get(subject)
            .copied()
            .unwrap_or_else(|| self.global_level())
    }

    /// The global level.
    pub fn global_level(&self) -> CompatibilityLevel {
        self.global_level.unwrap_or_default()
    }

    /// The subject's own level, if set.
    pub fn subject_level(&self, subject: &str) -> Option<CompatibilityLevel> {
        self.subject_levels.get(subject).copied()
    }

    /// Subjects with a live version (or any version with `deleted`).
    pub fn subjects(&self, deleted: bool) -> Vec<String> {
        self.subjects
            .iter()
            .filter(|(_, versions)| deleted || versions.values().any(|v| !v.deleted))
            .map(|(s, _)| s.clone())
            .collect()
    }

    /// A subject's versions; `SubjectNotFound` if it has none (live ones unless `deleted`).
    pub fn versions(&self, subject: &str, deleted: bool) -> Result<Vec<u32>, RegistryError> {
        let versions: Vec<u32> = self
            .subjects
            .get(subject)
            .into_iter()
            .flatten()
            .filter(|(_, v)| deleted || !v.deleted)
            .map(|(n, _)| *n)
            .collect();
        if versions.is_empty() {
            Err(RegistryError::SubjectNotFound(subject.to_string()))
        } else {
            Ok(versions)
        }
    }

    /// One version of a subject.
    pub fn version(
        &self,
        subject: &str,
        selector: VersionSelector,
        deleted: bool,
    ) -> Result<&SchemaValue, RegistryError> {
        let versions = self
            .subjects
            .get(subject)
            .filter(|vs| deleted || vs.values().any(|v| !v.deleted))
            .ok_or_else(|| RegistryError::SubjectNotFound(subject.to_string()))?;
        let found = match selector {
            VersionSelector::Latest => versions.values().rev().find(|v| deleted || !v.deleted),
            VersionSelector::Number(n) => versions.get(&n).filter(|v| deleted || !v.deleted),
        };
        found.ok_or_else(|| RegistryError::VersionNotFound {
            subject: subject.to_string(),
            version: selector.to_string(),
        })
    }

    /// A schema by global id; unless `deleted`, only if a live version uses it. With `subject`,
    /// only if that subject uses it.
    pub fn schema_by_id(
        &self,
        id: u32,
        subject: Option<&str>,
        deleted: bool,
    ) -> Result<&StoredSchema, RegistryError> {
        let used = self
            .subject_versions_of(id, deleted)
            .iter()
            .any(|(s, _)| subject.is_none_or(|wanted| wanted == s));
        match self.schemas.get(&id) {
            Some(stored) if used => Ok(stored),
            _ => Err(RegistryError::SchemaNotFound(format!(
                "schema {id} not found"
            ))),
        }
    }

    /// The subject versions that use schema `id`.
    pub fn subject_versions_of(&self, id: u32, deleted: bool) -> Vec<(String, u32)> {
        self.subjects
            .iter()
            .flat_map(|(subject, versions)| {
                versions
                    .values()
                    .filter(move |v| v.id == id && (deleted || !v.deleted))
                    .map(move |v| (subject.clone(), v.version))
            })
            .collect()
    }

    /// The subject version holding `candidate`, for lookups.
    pub fn lookup(
        &self,
        subject: &str,
        candidate: &Candidate,
        deleted: bool,
    ) -> Result<&SchemaValue, RegistryError> {
        let versions = self
            .subjects
            .get(subject)
            .filter(|vs| deleted || vs.values().any(|v| !v.deleted))
            .ok_or_else(|| RegistryError::SubjectNotFound(subject.to_string()))?;
        let id = self.ids_by_identity.get(&candidate.identity).copied();
        id.and_then(|id| {
            versions
                .values()
                .rev()
                .find(|v| v.id == id && (deleted || !v.deleted))
        })
        .ok_or_else(|| {
            RegistryError::SchemaNotFound(format!("schema not found under subject '{subject}'"))
        })
    }

    /// Plans soft-deleting every live version of a subject; returns the records to write.
    pub fn plan_delete_subject(&self, subject: &str) -> Result<Vec<SchemaValue>, RegistryError> {
        let versions = self
            .subjects
            .get(subject)
            .ok_or_else(|| RegistryError::SubjectNotFound(subject.to_string()))?;
        let live: Vec<SchemaValue> = versions
            .values()
            .filter(|v| !v.deleted)
            .map(|v| SchemaValue {
                deleted: true,
                ..v.clone()
            })
            .collect();
        if live.is_empty() {
            return Err(RegistryError::SubjectSoftDeleted(subject.to_string()));
        }
        Ok(live)
    }

    /// Plans soft-deleting one version.
    pub fn plan_delete_version(
        &self,
        subject: &str,
        selector: VersionSelector,
    ) -> Result<SchemaValue, RegistryError> {
        let value = self.version(subject, selector, true)?;
        if value.deleted {
            return Err(RegistryError::VersionSoftDeleted {
                subject: subject.to_string(),
                version: value.version,
            });
        }
        if selector == VersionSelector::Latest {
            // `latest` means the latest live version.
            let value = self.version(subject, selector, false)?;
            return Ok(SchemaValue {
                deleted: true,
                ..value.clone()
            });
        }
        Ok(SchemaValue {
            deleted: true,
            ..value.clone()
        })
    }
}

/// A version in a URL: a number or `latest` (also `-1`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VersionSelector {
    /// The newest live version.
    Latest,
    /// A version number.
    Number(u32),
}

impl std::str::FromStr for VersionSelector {
    type Err = RegistryError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.eq_ignore_ascii_case("latest") || s == "-1" {
            return Ok(Self::Latest);
        }
        match s.parse::<u32>() {
            Ok(n) if n >= 1 => Ok(Self::Number(n)),
            _ => Err(RegistryError::InvalidVersion(s.to_string())),
        }
    }
}

impl std::fmt::Display for VersionSelector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Latest => f.write_str("latest"),
            Self::Number(n) => write!(f, "{n}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const V1: &str = r#"{"type":"record","name":"User","fields":[{"name":"id","type":"long"}]}"#;
    const V2: &str = r#"{"type":"record","name":"User","fields":[{"name":"id","type":"long"},{"name":"email","type":"string","default":""}]}"#;
    const BAD: &str = r#"{"type":"record","name":"User","fields":[{"name":"id","type":"string"}]}"#;

    /// Registers like the registry does: plan, then apply the planned record.
    fn register(state: &mut State, subject: &str, schema: &str) -> Result<u32, RegistryError> {
        let candidate = state.candidate(schema, &[])?;
        match state.plan_register(subject, schema, &[], &candidate)? {
            RegisterPlan::Existing(id) => Ok(id),
            RegisterPlan::Write(value) => {
                let id = value.id;
                state.apply(Record::Schema(value));
                state.index(candidate.identity, id);
                Ok(id)
            }
        }
    }

    #[test]
    fn ids_and_versions_grow_and_dedupe() {
        let mut s = State::default();
        assert_eq!(register(&mut s, "a", V1).unwrap(), 1);
        // Same schema, other whitespace: same id, no new version.
        let v1_spaced = V1.replace(',', " , ");
        assert_eq!(register(&mut s, "a", &v1_spaced).unwrap(), 1);
        assert_eq!(s.versions("a", false).unwrap(), vec![1]);
        assert_eq!(register(&mut s, "a", V2).unwrap(), 2);
        assert_eq!(s.versions("a", false).unwrap(), vec![1, 2]);
        // The same schema under another subject keeps its global id.
        assert_eq!(register(&mut s, "b", V1).unwrap(), 1);
        assert_eq!(
            s.version("b", VersionSelector::Latest, false)
                .unwrap()
                .version,
            1
        );
        assert_eq!(s.subjects(false), vec!["a".to_string(), "b".to_string()]);
        // The string is kept as first registered.
        assert_eq!(s.schema_by_id(1, None, false).unwrap().schema, V1);
    }

    #[test]
    fn incompatible_schema_is_refused_and_level_none_accepts_it() {
        let mut s = State::default();
        register(&mut s, "a", V1).unwrap();
        let err = register(&mut s, "a", BAD).unwrap_err();
        assert!(matches!(err, RegistryError::Incompatible { .. }), "{err}");
        assert_eq!(err.error_code(), 409);
        s.apply(Record::Config {
            subject: Some("a".into()),
            level: CompatibilityLevel::None,
        });
        assert_eq!(register(&mut s, "a", BAD).unwrap(), 2);
        assert_eq!(s.level("b"), CompatibilityLevel::Backward);
    }

    #[test]
    fn soft_delete_hides_versions_but_keeps_ids() {
        let mut s = State::default();
        register(&mut s, "a", V1).unwrap();
        register(&mut s, "a", V2).unwrap();
        let deleted = s
            .plan_delete_version("a", VersionSelector::Number(2))
            .unwrap();
        s.apply(Record::Schema(deleted));
        assert_eq!(s.versions("a", false).unwrap(), vec![1]);
        assert_eq!(s.versions("a", true).unwrap(), vec![1, 2]);
        assert_eq!(
            s.version("a", VersionSelector::Latest, false)
                .unwrap()
                .version,
            1
        );
        assert!(s.schema_by_id(2, None, false).is_err());
        assert_eq!(s.schema_by_id(2, None, true).unwrap().schema, V2);
        let again = s
            .plan_delete_version("a", VersionSelector::Number(2))
            .unwrap_err();
        assert_eq!(again.error_code(), 40406);

        for value in s.plan_delete_subject("a").unwrap() {
            s.apply(Record::Schema(value));
        }
        assert_eq!(s.versions("a", false).unwrap_err().error_code(), 40401);
        assert!(s.subjects(false).is_empty());
        assert_eq!(s.subjects(true), vec!["a".to_string()]);
        assert_eq!(s.plan_delete_subject("a").unwrap_err().error_code(), 40404);

        // Re-registering after a soft delete: next version number, the old id.
        assert_eq!(register(&mut s, "a", V2).unwrap(), 2);
        assert_eq!(s.versions("a", false).unwrap(), vec![3]);
    }

    #[test]
    fn lookup_finds_subject_version() {
        let mut s = State::default();
        register(&mut s, "a", V1).unwrap();
        register(&mut s, "a", V2).unwrap();
        let c = s.candidate(V1, &[]).unwrap();
        let found = s.lookup("a", &c, false).unwrap();
        assert_eq!((found.id, found.version), (1, 1));
        let unknown = s.candidate(BAD, &[]).unwrap();
        assert_eq!(
            s.lookup("a", &unknown, false).unwrap_err().error_code(),
            40403
        );
        assert_eq!(s.lookup("zz", &c, false).unwrap_err().error_code(), 40401);
    }

    #[test]
    fn replay_rebuilds_the_same_state() {
        let mut s = State::default();
        let mut log = Vec::new();
        for (subject, schema) in [("a", V1), ("a", V2), ("b", V2)] {
            let c = s.candidate(schema, &[]).unwrap();
            if let RegisterPlan::Write(v) = s.plan_register(subject, schema, &[], &c).unwrap() {
                log.push(Record::Schema(v.clone()));
                s.apply(Record::Schema(v.clone()));
                s.index(c.identity, v.id);
            }
        }
        let mut replayed = State::default();
        for r in log {
            replayed.apply(r);
        }
        replayed.reindex();
        assert_eq!(replayed.versions("a", false).unwrap(), vec![1, 2]);
        assert_eq!(
            replayed
                .version("b", VersionSelector::Latest, false)
                .unwrap()
                .id,
            2
        );
        assert_eq!(register(&mut replayed, "c", V2).unwrap(), 2);
        assert_eq!(
            register(&mut replayed, "c", BAD).unwrap_err().error_code(),
            409
        );
    }

    #[test]
    fn version_selectors_parse() {
        assert_eq!(
            "latest".parse::<VersionSelector>().unwrap(),
            VersionSelector::Latest
        );
        assert_eq!(
            "-1".parse::<VersionSelector>().unwrap(),
            VersionSelector::Latest
        );
        assert_eq!(
            "3".parse::<VersionSelector>().unwrap(),
            VersionSelector::Number(3)
        );
        assert_eq!(
            "0".parse::<VersionSelector>().unwrap_err().error_code(),
            42202
        );
        assert_eq!(
            "x".parse::<VersionSelector>().unwrap_err().error_code(),
            42202
        );
    }

    #[test]
    fn references_resolve_from_registered_versions() {
        let mut s = State::default();
        let address = r#"{"type":"record","name":"Address","namespace":"ns","fields":[{"name":"city","type":"string"}]}"#;
        register(&mut s, "address", address).unwrap();
        let person = r#"{"type":"record","name":"Person","namespace":"ns","fields":[{"name":"home","type":"ns.Address"}]}"#;
        let refs = vec![SchemaReference {
            name: "ns.Address".into(),
            subject: "address".into(),
            version: 1,
        }];
        let c = s.candidate(person, &refs).unwrap();
        let RegisterPlan::Write(v) = s.plan_register("person", person, &refs, &c).unwrap() else {
            panic!("expected a write");
        };
        assert_eq!(v.id, 2);
        let missing = vec![SchemaReference {
            version: 9,
            ..refs[0].clone()
        }];
        assert_eq!(
            s.candidate(person, &missing).unwrap_err().error_code(),
            42201
        );
    }
}
