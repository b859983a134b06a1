//! Configuration: one TOML file, checked as a whole.
//!
//! `load(path)` and `from_str(text, name)` share one path: parse (every syntax error), deserialize
//! into [`raw`] (every unknown key and wrong type, found by removing each bad entry and trying
//! again), then [`validate`] into the runtime [`model`] (every semantic error). The result is either
//! a [`Config`] or a [`ConfigErrors`] listing every problem as `FILE:LINE:COL: message` with a hint.

mod faults;
pub mod model;
pub mod raw;
mod resilience;
mod tls;
mod validate;

pub use resilience::grpc_name;
pub use tls::files as tls_files;

use std::fmt;
use std::ops::Range;
use std::path::Path;

use toml::de::{DeTable, DeValue};
use toml::Spanned;

pub use model::Config;

/// The most structural errors reported from one file before giving up (each costs a re-parse).
const MAX_STRUCTURAL_ERRORS: usize = 64;

/// One problem in a config file, located by byte span.
#[derive(Debug, Clone)]
pub struct ConfigError {
    /// Byte range in the file the problem points at.
    pub span: Range<usize>,
    /// What is wrong.
    pub message: String,
    /// How to fix it, when keel can tell.
    pub hint: Option<String>,
    /// A required key is missing from the table at `span`; not reported when that table lost an
    /// entry to an earlier error, which is then the real cause.
    pub missing_key: bool,
    /// Not an error: reported (by `keel check` and at load) but the config is still valid.
    pub warning: bool,
}

impl ConfigError {
    /// A problem without a hint.
    pub fn new(span: Range<usize>, message: impl Into<String>) -> Self {
        ConfigError {
            span,
            message: message.into(),
            hint: None,
            missing_key: false,
            warning: false,
        }
    }

    /// Something worth saying that does not make the config invalid (an expired certificate,
    /// `insecure_skip_verify`).
    pub fn warning(span: Range<usize>, message: impl Into<String>) -> Self {
        ConfigError {
            warning: true,
            ..ConfigError::new(span, message)
        }
    }

    /// A required key is missing from the table at `span`.
    pub fn missing(span: Range<usize>, message: impl Into<String>) -> Self {
        ConfigError {
            missing_key: true,
            ..ConfigError::new(span, message)
        }
    }

    /// Adds a hint saying how to fix the problem.
    pub fn with_hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }
}

/// A problem with its line and column resolved, ready to print.
#[derive(Debug, Clone)]
pub struct LocatedError {
    /// 1-based line.
    pub line: usize,
    /// 1-based column, in characters.
    pub column: usize,
    /// What is wrong.
    pub message: String,
    /// How to fix it.
    pub hint: Option<String>,
}

/// Every problem found in one config file.
#[derive(Debug, Clone)]
pub struct ConfigErrors {
    /// The file name as given by the user.
    pub file: String,
    /// The problems in file order.
    pub errors: Vec<LocatedError>,
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.errors.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{}:{}:{}: {}", self.file, e.line, e.column, e.message)?;
            if let Some(hint) = &e.hint {
                write!(f, "\n  hint: {hint}")?;
            }
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

impl ConfigErrors {
    fn new(file: &str, source: &str, mut errors: Vec<ConfigError>) -> Self {
        errors.sort_by_key(|e| e.span.start);
        let errors = errors
            .into_iter()
            .map(|e| {
                let (line, column) = line_column(source, e.span.start);
                LocatedError {
                    line,
                    column,
                    message: e.message,
                    hint: e.hint,
                }
            })
            .collect();
        ConfigErrors {
            file: file.to_owned(),
            errors,
        }
    }

    /// An error that is not about a place in the file (it could not be read at all).
    fn unreadable(file: &str, message: String) -> Self {
        ConfigErrors {
            file: file.to_owned(),
            errors: vec![LocatedError {
                line: 1,
                column: 1,
                message,
                hint: Some("check the path and the file's permissions".into()),
            }],
        }
    }
}

/// Reads and checks a config file.
pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
    let name = path.display().to_string();
    match std::fs::read_to_string(path) {
        Ok(text) => from_str(&text, &name),
        Err(e) => Err(ConfigErrors::unreadable(
            &name,
            format!("cannot read config: {e}"),
        )),
    }
}

/// Checks config text; `file` names it in errors.
pub fn from_str(text: &str, file: &str) -> Result<Config, ConfigErrors> {
    let mut errors = Vec::new();
    let mut trimmed_tables = Vec::new();
    let raw: Option<raw::RawConfig> = deserialize_all(text, &mut errors, &mut trimmed_tables);
    let config = raw.and_then(|raw| validate::validate(raw, &mut errors));
    errors.retain(|e| !(e.missing_key && trimmed_tables.contains(&e.span)));
    let (warnings, errors): (Vec<_>, Vec<_>) = errors.into_iter().partition(|e| e.warning);
    match config {
        Some(mut config) if errors.is_empty() => {
            let located = ConfigErrors::new(file, text, warnings);
            config.warnings = located
                .errors
                .iter()
                .map(|w| {
                    let hint = w
                        .hint
                        .as_deref()
                        .map(|h| format!(" ({h})"))
                        .unwrap_or_default();
                    format!("{file}:{}:{}: {}{hint}", w.line, w.column, w.message)
                })
                .collect();
            Ok(config)
        }
        _ => Err(ConfigErrors::new(file, text, errors)),
    }
}

/// Checks a document of `[[faults]]` (the body of `POST /faults`) against the running config.
pub fn faults_from_str(
    text: &str,
    source: &str,
    config: &Config,
) -> Result<Vec<model::FaultConfig>, ConfigErrors> {
    let mut errors = Vec::new();
    let mut trimmed_tables = Vec::new();
    let raw: Option<raw::RawFaults> = deserialize_all(text, &mut errors, &mut trimmed_tables);
    let routes: Vec<std::sync::Arc<str>> = config
        .listeners
        .iter()
        .flat_map(|l| l.routes.iter().map(|r| r.name.clone()))
        .collect();
    let faults = raw.map(|raw| {
        faults::validate(
            raw.faults,
            &routes,
            &config.upstreams,
            std::time::SystemTime::now(),
            &mut errors,
        )
    });
    errors.retain(|e| !(e.missing_key && trimmed_tables.contains(&e.span)));
    match faults {
        Some(faults) if errors.is_empty() => {
            if faults.is_empty() {
                return Err(ConfigErrors::new(
                    source,
                    text,
                    vec![ConfigError::new(0..0, "no [[faults]] entry")
                        .with_hint("send a TOML document with at least one [[faults]] table")],
                ));
            }
            Ok(faults)
        }
        _ => Err(ConfigErrors::new(source, text, errors)),
    }
}

/// Deserializes the raw schema, collecting every unknown key and wrong type.
///
/// serde stops at the first error, so each failing entry is removed from the parsed tree and the
/// tree deserialized again, until it passes. Spans stay those of the original text.
fn deserialize_all<T: serde::de::DeserializeOwned>(
    text: &str,
    errors: &mut Vec<ConfigError>,
    trimmed_tables: &mut Vec<Range<usize>>,
) -> Option<T> {
    let (mut root, syntax) = DeTable::parse_recoverable(text);
    if !syntax.is_empty() {
        for e in syntax {
            let span = e.span().unwrap_or(0..0);
            errors.push(
                ConfigError::new(span, format!("invalid TOML: {}", first_line(e.message())))
                    .with_hint("see https://toml.io for the syntax"),
            );
        }
        return None;
    }
    for _ in 0..MAX_STRUCTURAL_ERRORS {
        let attempt = T::deserialize(toml::de::Deserializer::from(root.clone()));
        let err = match attempt {
            Ok(raw) => return Some(raw),
            Err(err) => err,
        };
        let span = err.span().unwrap_or(0..0);
        let root_span = root.span();
        let removed = remove_at(root.get_mut(), root_span, &span, trimmed_tables);
        errors.push(describe(&err, &span, removed.as_deref()));
        removed?;
    }
    None
}

/// Turns a serde error into a message and a hint.
fn describe(err: &toml::de::Error, span: &Range<usize>, key: Option<&str>) -> ConfigError {
    let message = first_line(err.message());
    if let Some(rest) = message.strip_prefix("unknown field `") {
        let unknown = rest.split('`').next().unwrap_or(rest);
        let allowed = backticked_after(message, "expected ");
        let mut hint = if allowed.is_empty() {
            "this table takes no keys".to_owned()
        } else {
            format!("allowed keys here: {}", allowed.join(", "))
        };
        if let Some(close) = did_you_mean(unknown, &allowed) {
            hint = format!("did you mean `{close}`? {hint}");
        }
        return ConfigError::new(span.clone(), format!("unknown key `{unknown}`")).with_hint(hint);
    }
    let what = key.map(|k| format!(" for `{k}`")).unwrap_or_default();
    ConfigError::new(span.clone(), format!("wrong type{what}: {message}")).with_hint(
        "durations and addresses are strings (\"250ms\", \"127.0.0.1:8080\"); limits are integers",
    )
}

/// Removes the table entry or array element whose key or value sits exactly at `span`.
/// Returns the key (or `[index]`) removed, or `None` when nothing matched.
/// The span of the table that lost the entry is pushed to `trimmed`.
fn remove_at(
    table: &mut DeTable<'_>,
    table_span: Range<usize>,
    span: &Range<usize>,
    trimmed: &mut Vec<Range<usize>>,
) -> Option<String> {
    let mut hit = None;
    for (key, value) in table.iter() {
        if key.span() == *span || value.span() == *span {
            hit = Some(key.get_ref().to_string());
            break;
        }
    }
    if let Some(name) = hit {
        table.remove(name.as_str());
        trimmed.push(table_span);
        return Some(name);
    }
    // Spans of tables and arrays of tables do not always enclose their entries: search them all.
    for (_, value) in table.iter_mut() {
        if let Some(found) = remove_in_value(value, span, trimmed) {
            return Some(found);
        }
    }
    None
}

fn remove_in_value(
    value: &mut Spanned<DeValue<'_>>,
    span: &Range<usize>,
    trimmed: &mut Vec<Range<usize>>,
) -> Option<String> {
    let value_span = value.span();
    match value.get_mut() {
        DeValue::Table(inner) => remove_at(inner, value_span, span, trimmed),
        DeValue::Array(items) => {
            if let Some(i) = items.iter().position(|v| v.span() == *span) {
                let old = std::mem::replace(items, std::iter::empty().collect());
                *items = old
                    .into_iter()
                    .enumerate()
                    .filter(|(j, _)| *j != i)
                    .map(|(_, v)| v)
                    .collect();
                return Some(format!("[{i}]"));
            }
            items
                .iter_mut()
                .find_map(|v| remove_in_value(v, span, trimmed))
        }
        _ => None,
    }
}

fn first_line(message: &str) -> &str {
    message.lines().next().unwrap_or(message).trim()
}

/// The backticked names after `marker` in serde's "expected one of `a`, `b`" messages.
fn backticked_after<'a>(message: &'a str, marker: &str) -> Vec<&'a str> {
    let Some(at) = message.find(marker) else {
        return Vec::new();
    };
    message[at..].split('`').skip(1).step_by(2).collect()
}

/// The allowed name closest to `word`, when it is close enough to be a likely typo.
pub(crate) fn did_you_mean<'a>(word: &str, allowed: &[&'a str]) -> Option<&'a str> {
    allowed
        .iter()
        .map(|a| (edit_distance(word, a), *a))
        .filter(|(d, a)| *d <= 2.max(a.len() / 3))
        .min_by_key(|(d, _)| *d)
        .map(|(_, a)| a)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            cur.push((prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}

/// 1-based line and character column of a byte offset.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before[line_start..].chars().count() + 1;
    (line, column)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_column_counts_from_one() {
        assert_eq!(line_column("a\nbc", 0), (1, 1));
        assert_eq!(line_column("a\nbc", 3), (2, 2));
    }

    #[test]
    fn suggests_close_names_only() {
        assert_eq!(
            did_you_mean("max_conections", &["max_connections", "listen"]),
            Some("max_connections")
        );
        assert_eq!(did_you_mean("zzz", &["max_connections", "listen"]), None);
    }

    #[test]
    fn reports_every_structural_error() {
        let text = "[admin]\nlisen = \"x\"\n[[listeners]]\nname = 5\nbogus = 1\nlisten = \"127.0.0.1:0\"\n\
                    [[listeners.routes]]\nupstream = \"a\"\n[upstreams.a]\nendpoints = [\"127.0.0.1:1\"]\n";
        let err = from_str(text, "t.toml").unwrap_err();
        assert_eq!(err.errors.len(), 3, "{err}");
        assert_eq!((err.errors[0].line, err.errors[0].column), (2, 1));
        assert!(err.errors[0]
            .hint
            .as_deref()
            .unwrap()
            .contains("did you mean `listen`"));
        assert_eq!((err.errors[1].line, err.errors[1].column), (4, 8));
        assert_eq!(err.errors[2].line, 5);
        assert!(err.errors[2]
            .hint
            .as_deref()
            .unwrap()
            .contains("allowed keys here: name,"));
    }

    #[test]
    fn runtime_worker_threads_is_at_least_one_and_defaults_to_at_most_two() {
        let base = "[[listeners]]\nname = \"l\"\nlisten = \"127.0.0.1:0\"\n[[listeners.routes]]\n\
                    upstream = \"a\"\n[upstreams.a]\nendpoints = [\"127.0.0.1:1\"]\n";
        let config = from_str(base, "t.toml").unwrap();
        assert_eq!(config.runtime.worker_threads, None);
        assert!((1..=2).contains(&config.runtime.worker_threads().get()));
        let three = from_str(&format!("[runtime]\nworker_threads = 3\n{base}"), "t.toml").unwrap();
        assert_eq!(three.runtime.worker_threads().get(), 3);
        let err =
            from_str(&format!("[runtime]\nworker_threads = 0\n{base}"), "t.toml").unwrap_err();
        assert_eq!((err.errors[0].line, err.errors[0].column), (2, 18), "{err}");
    }

    #[test]
    fn syntax_errors_are_located() {
        let err = from_str("[admin\nlisten = 1", "t.toml").unwrap_err();
        assert_eq!(err.errors[0].line, 1);
        assert!(err.to_string().starts_with("t.toml:1:"));
    }
}
