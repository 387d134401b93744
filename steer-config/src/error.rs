//! Errors: what was wrong and where (`services[2].vip`).

use std::borrow::Cow;
use std::fmt;

/// One problem in a config: where (`services[2].vip`) and what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub path: String,
    pub message: String,
}

impl ConfigError {
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError {
            path: path.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

impl std::error::Error for ConfigError {}

/// Every problem found in a config, grouped by section (in the order
/// `dataplane`, `regions`, `backends`, `services`, `health_checks`,
/// `client_classes`, `geoip`, `control`, `metrics`) and by entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    /// One error per line, no trailing newline.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// The sections, in the order errors are reported in.
pub(crate) const ROOT_KEYS: &[&str] = &[
    "dataplane",
    "regions",
    "backends",
    "services",
    "health_checks",
    "client_classes",
    "geoip",
    "control",
    "metrics",
];

/// A key as it appears in a path: bare keys (`mtu`, `max-x_1`) as they are,
/// any other key quoted with its control characters escaped, so that a key
/// holding a newline, an escape sequence or NUL cannot garble the output and
/// an empty key shows as `""`.
pub(crate) fn key_segment(key: &str) -> Cow<'_, str> {
    let bare = !key.is_empty()
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if bare {
        Cow::Borrowed(key)
    } else {
        Cow::Owned(format!("{key:?}"))
    }
}

/// `path.key` (or `key` at the root), the key escaped by [`key_segment`].
pub(crate) fn join(path: &str, key: &str) -> String {
    let key = key_segment(key);
    if path.is_empty() {
        key.into_owned()
    } else {
        format!("{path}.{key}")
    }
}

/// Sort key of an error path: `(section rank, entry index)`.
pub(crate) fn error_position(path: &str) -> (usize, Option<usize>) {
    let end = path.find(['.', '[']).unwrap_or(path.len());
    let (section, rest) = path.split_at(end);
    let rank = ROOT_KEYS
        .iter()
        .position(|k| *k == section)
        .unwrap_or(ROOT_KEYS.len());
    let index = rest
        .strip_prefix('[')
        .and_then(|r| r.split(']').next())
        .and_then(|i| i.parse().ok());
    (rank, index)
}

/// A TOML syntax error as one line, with its line and column.
pub(crate) fn syntax_error(text: &str, e: &toml::de::Error) -> ConfigError {
    let message = e
        .message()
        .trim()
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("; ");
    let location = e.span().map(|span| {
        let before = text.get(..span.start).unwrap_or(text);
        let line = before.matches('\n').count() + 1;
        let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
        format!("line {line}, column {column}: ")
    });
    ConfigError::new(
        "(syntax)",
        format!(
            "{}{message} (the file is not valid TOML)",
            location.unwrap_or_default()
        ),
    )
}
