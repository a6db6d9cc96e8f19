//! Loading: file, then `FERRY_*` variables, then `--set` flags, into one `toml::Value`
//! tree; then deserialization with every error collected; then validation.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde_path_to_error::Segment;
use toml::{Table, Value};

use super::error::{ConfigError, ConfigErrors};
use super::validate::{self, Problem};
use super::Config;

/// The config file read when neither `--config` nor `FERRY_CONFIG` names one.
pub const DEFAULT_CONFIG_PATH: &str = "./ferry.toml";

/// Command-line arguments shared by every Ferry binary:
/// `#[command(flatten)] config: ferry_shared::config::Args`.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct Args {
    /// Configuration file [default: ./ferry.toml]
    #[arg(
        short = 'c',
        long = "config",
        value_name = "PATH",
        env = "FERRY_CONFIG",
        global = true
    )]
    pub config: Option<PathBuf>,

    /// Override one setting, e.g. --set source.port=5433 (repeatable; wins over the
    /// file and FERRY_* variables)
    #[arg(long = "set", value_name = "KEY=VALUE", global = true)]
    pub set: Vec<String>,
}

impl Args {
    /// Loads and validates the configuration from the file, the process environment
    /// and the `--set` flags.
    pub fn load(&self) -> Result<Config, ConfigErrors> {
        load_file(self.config.as_deref(), process_env(), &self.set)
    }

    /// The config file these arguments name.
    pub fn config_path(&self) -> PathBuf {
        self.config
            .clone()
            .unwrap_or_else(|| PathBuf::from(DEFAULT_CONFIG_PATH))
    }
}

/// The `FERRY_*` variables of this process. A variable whose name or value is not
/// UTF-8 is passed on as an error marker so that it is reported, not ignored.
fn process_env() -> Vec<(String, String)> {
    std::env::vars_os()
        .filter_map(|(name, value)| {
            let name = name.to_str()?.to_owned();
            if !name.starts_with(ENV_PREFIX) {
                return None;
            }
            Some((
                name,
                value.into_string().unwrap_or_else(|_| NOT_UTF8.to_owned()),
            ))
        })
        .collect()
}

const ENV_PREFIX: &str = "FERRY_";
const NOT_UTF8: &str = "\u{0}not-utf-8";
/// `FERRY_` variables that are not settings.
const NOT_SETTINGS: &[&str] = &["FERRY_CONFIG", "FERRY_LOG"];
/// `FERRY_STACK_*` describe the local stack (`scripts/stack`, exported by `scripts/test`
/// and `.ci/run`), not Ferry's configuration.
const STACK_PREFIX: &str = "FERRY_STACK_";

/// True for a `FERRY_*` variable that names a setting.
fn is_setting_var(name: &str) -> bool {
    name.starts_with(ENV_PREFIX) && !NOT_SETTINGS.contains(&name) && !name.starts_with(STACK_PREFIX)
}

/// Loads the file at `path` (default `./ferry.toml`), then applies `env` and `sets`.
///
/// A file named explicitly must exist. The default file may be absent when the
/// environment or flags carry the settings (containers configured only by variables).
pub fn load_file<I>(path: Option<&Path>, env: I, sets: &[String]) -> Result<Config, ConfigErrors>
where
    I: IntoIterator<Item = (String, String)>,
{
    let explicit = path.is_some();
    let path = path.unwrap_or(Path::new(DEFAULT_CONFIG_PATH));
    let name = path.display().to_string();
    match std::fs::read_to_string(path) {
        Ok(text) => load_from(&name, &text, env, sets),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let env: Vec<(String, String)> = env.into_iter().collect();
            let has_settings = env.iter().any(|(k, _)| is_setting_var(k));
            if explicit || (!has_settings && sets.is_empty()) {
                return Err(ConfigError::new(
                    name.clone(),
                    format!(
                        "config file \"{name}\" not found: create it, pass --config PATH or set FERRY_CONFIG"
                    ),
                )
                .into());
            }
            load_from(&name, "", env, sets)
        }
        Err(e) => Err(ConfigError::new(
            name.clone(),
            format!("cannot read config file \"{name}\": {e}"),
        )
        .into()),
    }
}

/// Builds the configuration from a file's text (`file_name` is only used in messages),
/// environment variables (all of them may be passed: only `FERRY_*` ones are read) and
/// `--set KEY=VALUE` texts, in increasing precedence. Returns every problem at once.
pub fn load_from<I>(
    file_name: &str,
    file_text: &str,
    env: I,
    sets: &[String],
) -> Result<Config, ConfigErrors>
where
    I: IntoIterator<Item = (String, String)>,
{
    let mut tree: Table = match file_text.parse() {
        Ok(tree) => tree,
        Err(e) => return Err(toml_syntax_error(file_name, file_text, &e).into()),
    };
    let mut loader = Loader {
        file: file_name.to_owned(),
        origins: BTreeMap::new(),
        errors: Vec::new(),
        reported: BTreeSet::new(),
    };

    let mut env: Vec<(String, String)> =
        env.into_iter().filter(|(k, _)| is_setting_var(k)).collect();
    env.sort();
    for (var, raw) in env {
        loader.apply_env(&mut tree, &var, &raw);
    }
    for set in sets {
        loader.apply_set(&mut tree, set);
    }
    loader.read_secret_files(&mut tree);

    let config = loader.deserialize(tree);
    if let Some(mut config) = config {
        for problem in validate::validate(&config, file_name) {
            loader.report_problem(problem);
        }
        if loader.errors.is_empty() {
            resolve_defaults(&mut config);
            return Ok(config);
        }
    }
    Err(ConfigErrors(loader.errors))
}

/// Fills the defaults that depend on other settings, so that the effective
/// configuration shows them.
fn resolve_defaults(config: &mut Config) {
    for db in [
        config.source.as_mut(),
        config.target.as_mut(),
        config.source_replica.as_mut(),
    ]
    .into_iter()
    .flatten()
    {
        db.port.get_or_insert(db.engine.default_port());
    }
    if config.migration.topic_prefix.is_none() {
        config.migration.topic_prefix = Some(config.migration.topic_prefix());
    }
    if config.coordinator.url.is_none() {
        config.coordinator.url = Some(config.coordinator.url());
    }
}

/// Secrets that may be given as a file instead: `(secret key, file key)` pairs of one
/// section.
pub(super) const SECRET_FILES: &[(&str, &str)] = &[
    ("password", "password_file"),
    ("sasl_password", "sasl_password_file"),
];

/// The sections holding a secret of [`SECRET_FILES`]: `(section, secret, file)`.
const SECRET_SETTINGS: &[(&str, &str, &str)] = &[
    ("source", "password", "password_file"),
    ("target", "password", "password_file"),
    ("source_replica", "password", "password_file"),
    ("kafka", "sasl_password", "sasl_password_file"),
    ("schema_registry", "password", "password_file"),
];

/// The secret in the file at `path`, without its trailing line end. Err: why it cannot
/// be used (never quotes the contents).
fn read_secret_file(path: &str) -> Result<String, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("cannot be read ({e})"))?;
    let text =
        String::from_utf8(bytes).map_err(|_| "names a file that is not UTF-8 text".to_owned())?;
    let secret = text.trim_end_matches(['\n', '\r']);
    if secret.is_empty() {
        return Err("names an empty file".to_owned());
    }
    Ok(secret.to_owned())
}

/// Where a setting's value came from.
#[derive(Debug, Clone)]
enum Origin {
    Env(String),
    Flag(String),
}

struct Loader {
    file: String,
    /// Settings set by a variable or flag (dotted path → origin); others are the file's.
    origins: BTreeMap<String, Origin>,
    errors: Vec<ConfigError>,
    /// Paths already reported: nothing under them is reported again.
    reported: BTreeSet<String>,
}

impl Loader {
    fn apply_env(&mut self, tree: &mut Table, var: &str, raw: &str) {
        let rest = &var[ENV_PREFIX.len()..];
        let parts: Vec<String> = rest.split("__").map(str::to_lowercase).collect();
        if parts.len() < 2 || parts.iter().any(String::is_empty) {
            self.errors.push(ConfigError::new(
                var,
                format!(
                    "environment variable {var} names no setting: use FERRY_<SECTION>__<KEY>, e.g. FERRY_SOURCE__HOST (FERRY_CONFIG and FERRY_LOG are the only other FERRY_ variables)"
                ),
            ));
            return;
        }
        if raw == NOT_UTF8 {
            self.errors.push(ConfigError::new(
                var,
                format!("environment variable {var} is not valid UTF-8: set it to text"),
            ));
            return;
        }
        self.apply(tree, parts, raw, Origin::Env(var.to_owned()));
    }

    fn apply_set(&mut self, tree: &mut Table, set: &str) {
        let Some((key, raw)) = set.split_once('=') else {
            self.errors.push(ConfigError::new(
                "--set",
                "flag --set needs KEY=VALUE, e.g. --set source.port=5433",
            ));
            return;
        };
        let key = key.trim();
        let parts = split_key(key);
        if parts.is_empty() || parts.iter().any(String::is_empty) {
            self.errors.push(ConfigError::new(
                format!("--set {key}"),
                format!(
                    "flag --set {key} names no setting: use SECTION.KEY=VALUE, e.g. --set source.port=5433"
                ),
            ));
            return;
        }
        self.apply(tree, parts, raw, Origin::Flag(key.to_owned()));
    }

    fn apply(&mut self, tree: &mut Table, parts: Vec<String>, raw: &str, origin: Origin) {
        let path = parts.join(".");
        let value = parse_value(raw, is_secret_path(&path));
        match set_path(tree, &parts, value) {
            Ok(()) => {
                self.origins.insert(path, origin);
            }
            Err(blocking) => {
                let source = origin_phrase(&origin);
                self.errors.push(ConfigError::new(
                    path.clone(),
                    format!(
                        "setting \"{blocking}\" is not a section, so {source} cannot set \"{path}\": remove one of them"
                    ),
                ));
            }
        }
    }

    /// Reads every secret given as a file (`source.password_file`, ...): the file's
    /// contents become the secret's own setting before deserialization, so every user
    /// of the secret reads it the same way. A secret set both ways, or a file that
    /// cannot be read, is reported naming the setting and the path.
    fn read_secret_files(&mut self, tree: &mut Table) {
        for (section, secret, file) in SECRET_SETTINGS {
            let Some(Value::Table(table)) = tree.get_mut(*section) else {
                continue;
            };
            let path = match table.get(*file) {
                Some(Value::String(path)) => path.clone(),
                Some(Value::Integer(_) | Value::Float(_) | Value::Boolean(_)) => {
                    table.get(*file).map(Value::to_string).unwrap_or_default()
                }
                // Not a path at all: deserialization reports it.
                _ => continue,
            };
            let file_path = format!("{section}.{file}");
            let secret_path = format!("{section}.{secret}");
            if table.contains_key(*secret) {
                let place = self.place(&secret_path);
                self.report_problem(Problem::new(
                    &file_path,
                    Some(format!("{path:?}")),
                    format!("is set together with \"{secret_path}\" ({place}): keep one of them"),
                ));
                continue;
            }
            match read_secret_file(&path) {
                Ok(value) => {
                    table.insert((*secret).to_owned(), Value::String(value));
                }
                Err(why) => {
                    self.report_problem(Problem::new(
                        &file_path,
                        Some(format!("{path:?}")),
                        format!(
                            "{why}: give the path of a readable file holding the secret, or set \"{secret_path}\" ({}) instead",
                            env_var_for(&secret_path)
                        ),
                    ));
                    // The secret is missing because of its file: reported once, above.
                    self.reported.insert(secret_path);
                    table.insert((*secret).to_owned(), Value::String(String::new()));
                }
            }
        }
    }

    /// Deserializes, turning each serde error into a [`ConfigError`] and repairing the
    /// tree (removing the bad key or value, or filling a placeholder) so that the next
    /// attempt finds the next problem. Returns the config when one could be built.
    fn deserialize(&mut self, mut tree: Table) -> Option<Config> {
        let mut seen = BTreeSet::new();
        for _ in 0..256 {
            let error =
                match serde_path_to_error::deserialize::<_, Config>(Value::Table(tree.clone())) {
                    Ok(config) => return Some(config),
                    Err(error) => error,
                };
            let mut path: Vec<String> = Vec::new();
            for segment in error.path().iter() {
                match segment {
                    Segment::Map { key } => path.push(key.clone()),
                    // An element of a list: report and repair the whole list.
                    Segment::Seq { .. } => break,
                    Segment::Enum { .. } | Segment::Unknown => {}
                }
            }
            let message = error.into_inner().message().to_owned();
            if !seen.insert((path.clone(), message.clone())) {
                // No progress: stop here rather than loop.
                return None;
            }
            if !self.classify(&mut tree, path, &message) {
                return None;
            }
        }
        None
    }

    /// Reports one serde error and repairs the tree. False when no repair is possible.
    fn classify(&mut self, tree: &mut Table, mut path: Vec<String>, message: &str) -> bool {
        if let Some(rest) = message.strip_prefix("unknown field `") {
            let (field, expected) = rest.split_once('`').unwrap_or((rest, ""));
            if path.last().map(String::as_str) != Some(field) {
                path.push(field.to_owned());
            }
            let dotted = path.join(".");
            let known = known_keys(expected);
            let place = self.place(&dotted);
            self.push(
                &dotted,
                format!(
                    "unknown setting \"{dotted}\" {place}: remove it or check the spelling{known}"
                ),
            );
            remove_path(tree, &path);
            return true;
        }
        if let Some(rest) = message.strip_prefix("missing field `") {
            let field = rest.split('`').next().unwrap_or(rest);
            path.push(field.to_owned());
            let dotted = path.join(".");
            let is_section = path.len() == 1;
            if !self.covered(&dotted) {
                let text = if is_section {
                    format!(
                        "setting \"{dotted}\" is missing: add a [{dotted}] section to {} or set FERRY_{}__* variables",
                        self.file,
                        dotted.to_uppercase()
                    )
                } else {
                    format!(
                        "setting \"{dotted}\" is missing: set it in {} or {}",
                        self.file,
                        env_var_for(&dotted)
                    )
                };
                self.push(&dotted, text);
            }
            self.reported.insert(dotted);
            let placeholder = if is_section {
                Value::Table(Table::new())
            } else {
                Value::String(String::new())
            };
            return set_path(tree, &path, placeholder).is_ok();
        }

        let dotted = if path.is_empty() {
            ".".to_owned()
        } else {
            path.join(".")
        };
        let shown = if is_secret_path(&dotted) {
            None
        } else {
            get_path(tree, &path).map(render_value)
        };
        let problem = if let Some(rest) = message.strip_prefix("unknown variant `") {
            let expected = rest.split_once('`').map(|(_, e)| e).unwrap_or("");
            Problem::new(
                &dotted,
                shown,
                format!("is invalid: use one of {}", list_names(expected)),
            )
        } else if let (Some((min, max)), Some(Value::Integer(_))) =
            (validate::range_of(&dotted), get_path(tree, &path))
        {
            Problem::new(&dotted, shown, validate::range_text(min, max))
        } else {
            let expected = message
                .rsplit_once(", expected ")
                .map(|(_, e)| describe_expected(e))
                .unwrap_or_else(|| message.to_owned());
            Problem::new(&dotted, shown, format!("is invalid: expected {expected}"))
        };
        self.report_problem(problem);
        self.reported.insert(dotted);
        if path.is_empty() {
            return false;
        }
        remove_path(tree, &path);
        true
    }

    fn report_problem(&mut self, problem: Problem) {
        if self.covered(&problem.path) {
            return;
        }
        let note = self.note(&problem.path);
        let value = problem
            .value
            .as_ref()
            .map(|v| format!(" = {v}"))
            .unwrap_or_default();
        let text = format!("setting \"{}\"{note}{value} {}", problem.path, problem.text);
        self.push(&problem.path, text);
    }

    fn push(&mut self, path: &str, text: String) {
        self.errors.push(ConfigError::new(path, text));
    }

    /// True when `path` or a section above it was already reported.
    fn covered(&self, path: &str) -> bool {
        self.reported
            .iter()
            .any(|r| path == r || path.starts_with(&format!("{r}.")))
    }

    /// The variable or flag that set `path` or a section above it, or else one that
    /// created `path` as a section by setting a key below it.
    fn origin(&self, path: &str) -> Option<&Origin> {
        self.origins
            .iter()
            .filter(|(p, _)| path == p.as_str() || path.starts_with(&format!("{p}.")))
            .max_by_key(|(p, _)| p.len())
            .or_else(|| {
                self.origins
                    .iter()
                    .find(|(p, _)| p.starts_with(&format!("{path}.")))
            })
            .map(|(_, o)| o)
    }

    /// `" (from FERRY_X)"`, `" (from --set x)"`, or nothing for the file.
    fn note(&self, path: &str) -> String {
        match self.origin(path) {
            Some(origin) => format!(" ({})", origin_phrase(origin)),
            None => String::new(),
        }
    }

    /// `in ferry.toml`, `from environment variable X`, `from --set x`.
    fn place(&self, path: &str) -> String {
        match self.origin(path) {
            Some(origin) => origin_phrase(origin),
            None => format!("in {}", self.file),
        }
    }
}

fn origin_phrase(origin: &Origin) -> String {
    match origin {
        Origin::Env(var) => format!("from environment variable {var}"),
        Origin::Flag(key) => format!("from --set {key}"),
    }
}

/// The variable that sets `path`: `source.password` → `FERRY_SOURCE__PASSWORD`.
pub(super) fn env_var_for(path: &str) -> String {
    format!("FERRY_{}", path.replace('.', "__").to_uppercase())
}

/// Passwords: never shown, never parsed as TOML (kept exactly as given).
pub(super) fn is_secret_path(path: &str) -> bool {
    path.rsplit('.')
        .next()
        .is_some_and(|last| last.ends_with("password"))
}

/// `kafka.properties.linger.ms` → `["kafka", "properties", "linger.ms"]`: librdkafka
/// property names keep their dots.
fn split_key(key: &str) -> Vec<String> {
    if let Some(property) = key.strip_prefix("kafka.properties.") {
        return vec!["kafka".into(), "properties".into(), property.into()];
    }
    if key.is_empty() {
        return Vec::new();
    }
    key.split('.').map(str::to_owned).collect()
}

/// A value from a variable or flag: TOML when it parses (arrays always; numbers and
/// booleans only when they read back exactly as written, so `1e5` or `0x10` stay
/// text), otherwise the text itself. Secrets are always the text itself.
fn parse_value(raw: &str, secret: bool) -> Value {
    if secret {
        return Value::String(raw.to_owned());
    }
    let trimmed = raw.trim();
    if let Ok(mut table) = format!("v = {trimmed}").parse::<Table>() {
        if table.len() == 1 {
            if let Some(value) = table.remove("v") {
                match &value {
                    Value::Array(_) | Value::String(_) => return value,
                    Value::Integer(_) | Value::Float(_) | Value::Boolean(_)
                        if value.to_string() == trimmed =>
                    {
                        return value
                    }
                    _ => {}
                }
            }
        }
    }
    Value::String(raw.to_owned())
}

/// Sets `parts` in the tree, creating sections on the way. Err names the path of a
/// non-table value in the way.
fn set_path(tree: &mut Table, parts: &[String], value: Value) -> Result<(), String> {
    let Some((last, sections)) = parts.split_last() else {
        return Ok(());
    };
    let mut table = tree;
    for (i, part) in sections.iter().enumerate() {
        let entry = table
            .entry(part.clone())
            .or_insert_with(|| Value::Table(Table::new()));
        table = match entry {
            Value::Table(t) => t,
            _ => return Err(parts[..=i].join(".")),
        };
    }
    table.insert(last.clone(), value);
    Ok(())
}

fn get_path<'a>(tree: &'a Table, parts: &[String]) -> Option<&'a Value> {
    let (last, sections) = parts.split_last()?;
    let mut table = tree;
    for part in sections {
        table = table.get(part)?.as_table()?;
    }
    table.get(last)
}

fn remove_path(tree: &mut Table, parts: &[String]) {
    let Some((last, sections)) = parts.split_last() else {
        return;
    };
    let mut table = tree;
    for part in sections {
        match table.get_mut(part) {
            Some(Value::Table(t)) => table = t,
            _ => return,
        }
    }
    table.remove(last);
}

/// A value for a message: text quoted, others as TOML; long values shortened.
fn render_value(value: &Value) -> String {
    let text = match value {
        Value::String(s) => format!("{s:?}"),
        Value::Table(_) => "a section".to_owned(),
        other => other.to_string(),
    };
    if text.chars().count() > 80 {
        let short: String = text.chars().take(77).collect();
        format!("{short}...")
    } else {
        text
    }
}

/// serde's "`a`, `b`" → " (known keys: a, b)".
fn known_keys(expected: &str) -> String {
    let names = list_names(expected);
    if names.is_empty() {
        String::new()
    } else {
        format!(" (known keys: {names})")
    }
}

/// Pulls the backticked names out of serde's "expected one of `a`, `b`".
fn list_names(text: &str) -> String {
    text.split('`')
        .skip(1)
        .step_by(2)
        .collect::<Vec<_>>()
        .join(", ")
}

/// serde's expectation ("u16", "a sequence", "struct DatabaseConfig") in words.
fn describe_expected(expected: &str) -> String {
    match expected {
        "u8" | "u16" | "u32" | "u64" | "i8" | "i16" | "i32" | "i64" => "a whole number".to_owned(),
        "a string" | "text" => "text".to_owned(),
        "a sequence" => "a list such as [\"a\", \"b\"]".to_owned(),
        "a boolean" => "true or false".to_owned(),
        e if e.starts_with("struct ") || e == "a map" => "a section".to_owned(),
        e if e.starts_with("one of ") || e.starts_with('`') => {
            format!("one of {}", list_names(e))
        }
        e => e.to_owned(),
    }
}

/// A TOML syntax error with line and column, without quoting the line (it may hold a
/// password).
fn toml_syntax_error(file_name: &str, text: &str, error: &toml::de::Error) -> ConfigError {
    let position = error
        .span()
        .map(|span| {
            let before = text.get(..span.start).unwrap_or(text);
            let line = before.matches('\n').count() + 1;
            let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
            format!(" at line {line}, column {column}")
        })
        .unwrap_or_default();
    let message = error.message().trim_end_matches('\n').trim_end_matches('.');
    ConfigError::new(
        file_name,
        format!("config file \"{file_name}\" is not valid TOML{position}: {message}"),
    )
}
