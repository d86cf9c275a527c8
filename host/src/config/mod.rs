//! Configuration: JSON5 text → `RawConfig` (closed serde types) → validated `Config`.
//!
//! Loading never stops at the first problem: every syntax, type, unknown-key and cross-reference
//! error is collected with its key path, so an operator fixes a config in one pass.

pub mod channels;
mod dropin;
pub mod nesting;
mod raw;
mod secret;
mod validate;

use std::fmt;
use std::path::{Path, PathBuf};

use serde::Serialize;

pub use dropin::{Loaded, RawTenantFile, load, load_with};
pub use raw::*;
pub use secret::{SecretRef, SecretString};
pub use validate::*;

/// The config shipped in the repository; `serve` falls back to it when no file exists at the
/// default path, so a fresh checkout runs with no setup.
pub const EMBEDDED_DEFAULT: &str = include_str!("../../../config/bulkhead.json5");

/// Where the config comes from when no `--config` is given.
pub fn default_path() -> PathBuf {
    std::env::var_os("BULKHEAD_CONFIG").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("config/bulkhead.json5"))
}

/// One problem in a config, with the key path it concerns.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ConfigError {
    /// The drop-in tenant file (`tenants.d/acme.json5`) the error is in; `None`: the main file.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    /// Key path such as `agents.list[0].tools.allow[1]`; empty for the whole file.
    pub path: String,
    /// One-based, where the parser knows it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub line: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub column: Option<usize>,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let path = if self.path.is_empty() { "(root)" } else { &self.path };
        if let Some(file) = &self.file {
            write!(f, "{file}: ")?;
        }
        match (self.line, self.column) {
            (Some(l), Some(c)) => write!(f, "{path} (line {l}, column {c}): {}", self.message),
            _ => write!(f, "{path}: {}", self.message),
        }
    }
}

/// The result of loading: a config, or every error found.
#[derive(Debug)]
pub struct LoadError {
    pub source: String,
    pub errors: Vec<ConfigError>,
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{}: {} error(s)", self.source, self.errors.len())?;
        for e in &self.errors {
            writeln!(f, "  {e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for LoadError {}

/// Reads and validates a config file with its drop-in tenant files (see [`load`]). Relative
/// paths resolve against the main file's folder.
pub fn load_file(path: &Path) -> Result<Config, LoadError> {
    load(path).map(|l| l.config)
}

impl ConfigError {
    /// An error at a key path of the main file.
    pub fn at(path: impl Into<String>, message: impl Into<String>) -> Self {
        Self { file: None, path: path.into(), line: None, column: None, message: message.into() }
    }
}

/// Parses and validates config text; `base` is the folder relative paths resolve against.
pub fn load_str(text: &str, base: &Path) -> Result<Config, Vec<ConfigError>> {
    validate_parsed(parse_raw(text), base)
}

/// Validates what `parse_raw` gave (with its errors, if any), so one pass reports everything.
fn validate_parsed(
    parsed: Result<RawConfig, (Option<Box<RawConfig>>, Vec<ConfigError>)>,
    base: &Path,
) -> Result<Config, Vec<ConfigError>> {
    match parsed {
        Ok(raw) => validate(raw, base),
        Err((None, errors)) => Err(errors),
        Err((Some(repaired), mut errors)) => {
            // Cross-checks still run on what did decode, so one pass reports everything. Errors
            // at or under a path that already failed to decode would only repeat it.
            if let Err(more) = validate(*repaired, base) {
                let covered = |p: &str| {
                    errors.iter().any(|e| {
                        p == e.path || p.starts_with(&format!("{}.", e.path)) || p.starts_with(&format!("{}[", e.path))
                    })
                };
                let more: Vec<_> = more.into_iter().filter(|e| !covered(&e.path)).collect();
                errors.extend(more);
            }
            Err(errors)
        }
    }
}

/// Warnings for people (logs, `config check`, `doctor`): warnings that say the same thing of
/// more than `WARNINGS_SHOWN` places (`"<where>: <what>"`, as a literal token in each of 10,000
/// tenants) become one line naming the first few places and the count, in the order of the first
/// of each. The full list stays in `Config::warnings` (and `config check --json`).
pub fn summarize_warnings(warnings: &[String]) -> Vec<String> {
    let what = |w: &str| w.split_once(": ").map(|(_, m)| m.to_string());
    let mut by_what: std::collections::HashMap<String, Vec<&str>> = std::collections::HashMap::new();
    for w in warnings {
        if let Some(m) = what(w) {
            by_what.entry(m).or_default().push(w);
        }
    }
    let mut out = Vec::new();
    for w in warnings {
        let Some(m) = what(w) else {
            out.push(w.clone());
            continue;
        };
        match by_what.get(&m) {
            Some(same) if same.len() > WARNINGS_SHOWN => {
                if same[0] == w.as_str() {
                    let wheres: Vec<&str> = same[..WARNINGS_SHOWN]
                        .iter()
                        .map(|s| s.split_once(": ").map_or(*s, |(at, _)| at))
                        .collect();
                    out.push(format!("{} and {} more: {m}", wheres.join(", "), same.len() - WARNINGS_SHOWN));
                }
            }
            _ => out.push(w.clone()),
        }
    }
    out
}

/// How many places one summarized warning names (see `summarize_warnings`).
const WARNINGS_SHOWN: usize = 3;

/// Most errors reported for one file; past this the rest are noise.
const MAX_ERRORS: usize = 100;

/// JSON5 → `RawConfig`, collecting every type and unknown-key error rather than the first.
///
/// serde stops at the first error, so each error's node is removed (unknown keys) or nulled (bad
/// values: every raw field is optional) and decoding is retried until it succeeds. On error, the
/// repaired config (if decoding got that far) comes back with the errors.
pub fn parse_raw(text: &str) -> Result<RawConfig, (Option<Box<RawConfig>>, Vec<ConfigError>)> {
    parse_as::<RawConfig>(text)
}

/// `parse_raw` for any closed raw type (the main file, a drop-in tenant file).
pub(crate) fn parse_as<T: serde::de::DeserializeOwned>(text: &str) -> Result<T, (Option<Box<T>>, Vec<ConfigError>)> {
    // The parser recurses per level: bound the depth before it runs.
    nesting::check(text).map_err(|deep| {
        let error = ConfigError {
            file: None,
            path: String::new(),
            line: Some(deep.line),
            column: Some(deep.column),
            message: format!("invalid JSON5: nested more than {} levels deep", nesting::MAX_NESTING),
        };
        (None, vec![error])
    })?;
    let value: serde_json::Value = json5::from_str(text).map_err(|e| {
        let pos = e.position();
        let message = match pos {
            Some(_) => e.to_string().rsplit_once(" at ").map(|(m, _)| m.to_string()).unwrap_or(e.to_string()),
            None => e.to_string(),
        };
        (
            None,
            vec![ConfigError {
                file: None,
                path: String::new(),
                line: pos.map(|p| p.line + 1),
                column: pos.map(|p| p.column + 1),
                message: format!("invalid JSON5: {message}"),
            }],
        )
    })?;
    if !value.is_object() {
        return Err((
            None,
            vec![ConfigError {
                file: None,
                path: String::new(),
                line: None,
                column: None,
                message: "the config must be a JSON5 object".into(),
            }],
        ));
    }
    decode(value)
}

/// A JSON value → a closed raw type, collecting every type and unknown-key error (see
/// `parse_raw`). Adapters decode their platform keys with it too.
pub(crate) fn decode<T: serde::de::DeserializeOwned>(
    mut value: serde_json::Value,
) -> Result<T, (Option<Box<T>>, Vec<ConfigError>)> {
    // A valid config (the usual case) decodes once, borrowed, without tracking paths; only one
    // with errors pays for the path-tracking retries below.
    if let Ok(raw) = T::deserialize(&value) {
        return Ok(raw);
    }
    let mut errors = Vec::new();
    loop {
        match serde_path_to_error::deserialize::<_, T>(&value) {
            Ok(raw) if errors.is_empty() => return Ok(raw),
            Ok(repaired) => return Err((Some(Box::new(repaired)), errors)),
            Err(err) => {
                let segments = path_segments(err.path());
                let message = err.into_inner().to_string();
                let unknown = message.starts_with("unknown field");
                let mut path = segments.clone();
                if unknown && let Some(key) = message.split('`').nth(1) {
                    // serde_path_to_error reports the containing object; name the key itself.
                    if path.last() != Some(&Segment::Key(key.to_string())) {
                        path.push(Segment::Key(key.to_string()));
                    }
                }
                let shown = render_path(&path);
                let repeated = errors.last().is_some_and(|e: &ConfigError| e.path == shown);
                if !repeated {
                    errors.push(ConfigError::at(shown, tidy(&message)));
                }
                let removed =
                    if unknown || repeated { remove_at(&mut value, &path) } else { null_at(&mut value, &path) };
                if !removed || errors.len() >= MAX_ERRORS {
                    return Err((None, errors));
                }
            }
        }
    }
}

/// serde's messages name Rust types; keep them readable for operators.
fn tidy(message: &str) -> String {
    message.replace("struct Raw", "object ").replace("Raw", "")
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Segment {
    Key(String),
    Index(usize),
}

fn path_segments(path: &serde_path_to_error::Path) -> Vec<Segment> {
    path.iter()
        .filter_map(|s| match s {
            serde_path_to_error::Segment::Map { key } | serde_path_to_error::Segment::Enum { variant: key } => {
                Some(Segment::Key(key.clone()))
            }
            serde_path_to_error::Segment::Seq { index } => Some(Segment::Index(*index)),
            serde_path_to_error::Segment::Unknown => None,
        })
        .collect()
}

pub(crate) fn render_path(path: &[Segment]) -> String {
    let mut out = String::new();
    for seg in path {
        match seg {
            Segment::Key(k) => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(k);
            }
            Segment::Index(i) => out.push_str(&format!("[{i}]")),
        }
    }
    out
}

fn parent_and_last<'a>(
    value: &'a mut serde_json::Value,
    path: &[Segment],
) -> Option<(&'a mut serde_json::Value, Segment)> {
    let (last, parents) = path.split_last()?;
    let mut node = value;
    for seg in parents {
        node = match seg {
            Segment::Key(k) => node.get_mut(k.as_str())?,
            Segment::Index(i) => node.get_mut(*i)?,
        };
    }
    Some((node, last.clone()))
}

fn remove_at(value: &mut serde_json::Value, path: &[Segment]) -> bool {
    match parent_and_last(value, path) {
        Some((serde_json::Value::Object(map), Segment::Key(k))) => map.remove(&k).is_some(),
        Some((serde_json::Value::Array(items), Segment::Index(i))) if i < items.len() => {
            items.remove(i);
            true
        }
        _ => false,
    }
}

fn null_at(value: &mut serde_json::Value, path: &[Segment]) -> bool {
    match parent_and_last(value, path) {
        Some((serde_json::Value::Object(map), Segment::Key(k))) => match map.get_mut(&k) {
            Some(v) if !v.is_null() => {
                *v = serde_json::Value::Null;
                true
            }
            _ => map.remove(&k).is_some(),
        },
        Some((serde_json::Value::Array(items), Segment::Index(i))) if i < items.len() => {
            items.remove(i);
            true
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests;
