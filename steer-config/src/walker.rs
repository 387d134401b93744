//! The walker: reads a `toml::Table` by hand, recording every error with the
//! path of the offending value, and never stopping at the first one.

use std::cell::RefCell;
use std::collections::HashSet;
use std::path::{Path, PathBuf};

use toml::{Table, Value};

use crate::error::{join, ConfigError};

/// Collects errors. An error already recorded (same path and message) is not
/// recorded again, so a follow-on problem found twice is reported once.
#[derive(Default)]
pub(crate) struct Walker {
    pub(crate) errors: Vec<ConfigError>,
    seen: HashSet<(String, String)>,
    /// Also check the files the config refers to (`ca_file`).
    pub(crate) check_files: bool,
    /// The config file's directory: relative `prefix_files` and `[geoip]
    /// database` resolve against it. `None` when the config is text only
    /// ([`crate::Config::parse`]): such files are then not read.
    pub(crate) base: Option<PathBuf>,
}

impl Walker {
    pub(crate) fn new(check_files: bool) -> Self {
        Walker {
            check_files,
            ..Walker::default()
        }
    }

    /// `path` resolved against the config's directory, or `None` when the
    /// config has none (text only).
    pub(crate) fn resolve(&self, path: &Path) -> Option<PathBuf> {
        self.base.as_ref().map(|b| b.join(path))
    }

    pub(crate) fn err(&mut self, path: impl Into<String>, message: impl Into<String>) {
        let e = ConfigError::new(path, message);
        if self.seen.insert((e.path.clone(), e.message.clone())) {
            self.errors.push(e);
        }
    }

    /// Records `errors` at position `at`, before the errors found since.
    fn insert(&mut self, at: usize, errors: Vec<ConfigError>) {
        let fresh: Vec<ConfigError> = errors
            .into_iter()
            .filter(|e| self.seen.insert((e.path.clone(), e.message.clone())))
            .collect();
        self.errors.splice(at..at, fresh);
    }
}

/// One TOML table at a path. Every key a reader asks for is an allowed key:
/// [`Node::done`] reports the others as unknown, listing the allowed ones in
/// the order they were read.
pub(crate) struct Node<'a> {
    pub(crate) path: &'a str,
    table: &'a Table,
    allowed: RefCell<Vec<&'static str>>,
    /// Where this node's errors start, so unknown keys are listed first.
    start: usize,
}

impl<'a> Node<'a> {
    pub(crate) fn new(w: &Walker, path: &'a str, table: &'a Table) -> Self {
        Node {
            path,
            table,
            allowed: RefCell::new(Vec::new()),
            start: w.errors.len(),
        }
    }

    /// The value of an allowed key, if present.
    fn value(&self, key: &'static str) -> Option<&'a Value> {
        let mut allowed = self.allowed.borrow_mut();
        if !allowed.contains(&key) {
            allowed.push(key);
        }
        self.table.get(key)
    }

    /// Reports the keys no reader asked for. Call after reading every field.
    pub(crate) fn done(self, w: &mut Walker) {
        let allowed = self.allowed.into_inner();
        let unknown = self
            .table
            .keys()
            .filter(|k| !allowed.contains(&k.as_str()))
            .map(|k| {
                ConfigError::new(
                    join(self.path, k),
                    format!("unknown key (expected one of: {})", allowed.join(", ")),
                )
            })
            .collect();
        w.insert(self.start, unknown);
    }

    /// The raw value of `key` if present, without allowing it (its own
    /// reader checks it).
    pub(crate) fn table_value(&self, key: &str) -> Option<&'a Value> {
        self.table.get(key)
    }

    /// Whether `key` is present (it need not be allowed).
    pub(crate) fn has(&self, key: &str) -> bool {
        self.table.contains_key(key)
    }

    /// `Ok(None)` if absent, `Err(())` if present but invalid (recorded).
    fn get<T>(
        &self,
        w: &mut Walker,
        key: &'static str,
        conv: impl FnOnce(&Value) -> Result<T, String>,
    ) -> Result<Option<T>, ()> {
        match self.value(key) {
            None => Ok(None),
            Some(v) => match conv(v) {
                Ok(t) => Ok(Some(t)),
                Err(m) => {
                    w.err(join(self.path, key), m);
                    Err(())
                }
            },
        }
    }

    /// An optional field: `Some(None)` if absent, `None` if invalid.
    pub(crate) fn optional<T>(
        &self,
        w: &mut Walker,
        key: &'static str,
        conv: impl FnOnce(&Value) -> Result<T, String>,
    ) -> Option<Option<T>> {
        self.get(w, key, conv).ok()
    }

    /// A field with a default: `None` if invalid.
    pub(crate) fn default<T>(
        &self,
        w: &mut Walker,
        key: &'static str,
        default: T,
        conv: impl FnOnce(&Value) -> Result<T, String>,
    ) -> Option<T> {
        match self.get(w, key, conv) {
            Ok(Some(t)) => Some(t),
            Ok(None) => Some(default),
            Err(()) => None,
        }
    }

    /// A required field: `None` if missing (recorded, with `hint`) or invalid.
    pub(crate) fn required<T>(
        &self,
        w: &mut Walker,
        key: &'static str,
        hint: &str,
        conv: impl FnOnce(&Value) -> Result<T, String>,
    ) -> Option<T> {
        match self.get(w, key, conv) {
            Ok(Some(t)) => Some(t),
            Ok(None) => {
                w.err(join(self.path, key), format!("missing (required), {hint}"));
                None
            }
            Err(()) => None,
        }
    }

    /// An array whose elements are converted one by one, each error at
    /// `path.key[i]`. `Some(vec![])` if absent; `None` if not an array.
    /// Invalid elements are `None`.
    pub(crate) fn list<T>(
        &self,
        w: &mut Walker,
        key: &'static str,
        conv: impl Fn(&Value) -> Result<T, String>,
    ) -> Option<Vec<Option<T>>> {
        let path = join(self.path, key);
        match self.value(key) {
            None => Some(Vec::new()),
            Some(Value::Array(items)) => Some(
                items
                    .iter()
                    .enumerate()
                    .map(|(i, v)| match conv(v) {
                        Ok(t) => Some(t),
                        Err(m) => {
                            w.err(format!("{path}[{i}]"), m);
                            None
                        }
                    })
                    .collect(),
            ),
            Some(v) => {
                w.err(path, format!("expected an array, found {}", describe(v)));
                None
            }
        }
    }

    /// `[key]` below this (root) node: `Ok(None)` if absent, `Err(())` if
    /// not a table (recorded).
    pub(crate) fn table(&self, w: &mut Walker, key: &'static str) -> Result<Option<&'a Table>, ()> {
        match self.value(key) {
            None => Ok(None),
            Some(Value::Table(t)) => Ok(Some(t)),
            Some(v) => {
                w.err(
                    key,
                    format!("expected a table ([{key}]), found {}", describe(v)),
                );
                Err(())
            }
        }
    }

    /// `[[key]]` below this (root) node: the tables with their paths;
    /// elements that are not tables are recorded and skipped.
    pub(crate) fn tables(&self, w: &mut Walker, key: &'static str) -> Vec<(String, &'a Table)> {
        match self.value(key) {
            None => Vec::new(),
            Some(Value::Array(items)) => items
                .iter()
                .enumerate()
                .filter_map(|(i, v)| {
                    let path = format!("{key}[{i}]");
                    match v {
                        Value::Table(t) => Some((path, t)),
                        _ => {
                            w.err(path, format!("expected a table, found {}", describe(v)));
                            None
                        }
                    }
                })
                .collect(),
            Some(v) => {
                w.err(
                    key,
                    format!(
                        "expected an array of tables (write each entry as [[{key}]]), found {}",
                        describe(v)
                    ),
                );
                Vec::new()
            }
        }
    }
}

/// What a value is, for "expected X, found Y".
pub(crate) fn describe(v: &Value) -> String {
    match v {
        Value::String(s) => format!("string {s:?}"),
        Value::Integer(i) => format!("integer {i}"),
        Value::Float(f) => format!("float {f}"),
        Value::Boolean(b) => format!("boolean {b}"),
        Value::Datetime(d) => format!("datetime {d}"),
        Value::Array(_) => "an array".to_string(),
        Value::Table(_) => "a table".to_string(),
    }
}
