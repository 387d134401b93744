//! The configuration model and its validation (`steer check`).
//!
//! A config is TOML with the sections `[dataplane]`, `[[regions]]`,
//! `[[backends]]`, `[[services]]`, `[[health_checks]]`,
//! `[[client_classes]]`, `[geoip]`, `[control]` and `[metrics]` (field
//! reference: `docs/config.md`).
//!
//! [`Config::parse`] reads the text into a `toml::Table` and converts it by
//! hand with a path-tracking walker, so that it can report *every* problem at
//! once — unknown keys, wrong types, bad values and broken cross-references —
//! each with the path of the offending value (`services[2].vip`,
//! `dataplane.mtu`, ...). [`Config::parse`] reads no file (its one look-up
//! outside the text is `control.group` in the system's group database);
//! [`Config::load`] also reads the files the config refers to (`ca_file`,
//! `prefix_files`, `[geoip] database`).
//!
//! Layout: `model.rs` declares the types (and, through `partial.rs`, the
//! partial twins the readers fill in); `defaults.rs` holds every default and
//! limit; `duration.rs` and `prefix.rs` parse those value kinds;
//! `walker.rs` and `values.rs` read TOML values with paths; `section/` reads
//! and checks each section (`section/classes.rs`: client classes, their
//! prefix files and `[geoip]`); `geoip.rs` turns country and continent codes
//! into prefixes through a MaxMind database; `files.rs` reads files with
//! size and type limits.

mod defaults;
mod duration;
mod error;
mod files;
mod geoip;
mod model;
mod partial;
mod prefix;
mod section;
mod values;
mod walker;

#[cfg(test)]
mod tests;

use std::collections::HashSet;
use std::path::Path;

use toml::Table;

pub use defaults::{
    CLIENT_PREFIX_V4_MAX, CLIENT_PREFIX_V6_MAX, MAX_CLIENT_CLASSES, MAX_FILE_BYTES,
    MAX_REALS_LIMIT, MAX_TABLES_LIMIT, RINGS_MAX_BYTES,
};
pub use duration::{format_duration, parse_duration};
pub use error::{ConfigError, ConfigErrors};
pub use model::{
    Affinity, AttachMode, Backend, CheckKind, ClientClass, ClientPrefix, Config, ControlConfig,
    ControlGroup, DataplaneConfig, Encapsulation, GeoIpConfig, HealthCheck, Ipv4Prefix, Ipv6Prefix,
    LatencyTuning, MetricsConfig, Milli, OnNoHealthy, OutlierTuning, Policy, PolicyKind, Protocol,
    Region, Service, SlowStartTuning,
};
pub use section::dataplane::source_mac as parse_source_mac;

use error::{error_position, syntax_error};
use walker::Walker;

impl Config {
    /// Parses and validates a config, collecting every error. Files the
    /// config names (`ca_file`) are not read; [`Config::load`] does. A
    /// `control.group` is looked up in the system's group database. A
    /// client class with `prefix_files`, `countries` or `continents` is an
    /// error here (those files are read relative to the config file): use
    /// [`Config::load`] or [`Config::parse_in`].
    pub fn parse(text: &str) -> Result<Config, ConfigErrors> {
        Config::parse_with(text, None)
    }

    /// As [`Config::load`] for a config whose text is already read: the
    /// files it names (`ca_file`, `prefix_files`, `[geoip] database`) are
    /// read, relative paths against `dir` (the config file's directory).
    pub fn parse_in(text: &str, dir: &Path) -> Result<Config, ConfigErrors> {
        Config::parse_with(text, Some(dir))
    }

    /// Reads, parses and validates a config file, and checks the files it
    /// names (each `ca_file` must hold PEM certificates). The file must be a
    /// regular file of at most [`MAX_FILE_BYTES`]; a read error is reported
    /// as one [`ConfigError`] whose path is the file path.
    pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
        match files::read_config(path) {
            Ok(text) => {
                let dir = path.parent().unwrap_or(Path::new("."));
                let dir = if dir.as_os_str().is_empty() {
                    Path::new(".")
                } else {
                    dir
                };
                Config::parse_with(&text, Some(dir))
            }
            Err(message) => Err(ConfigErrors(vec![ConfigError::new(
                path.display().to_string(),
                message,
            )])),
        }
    }

    fn parse_with(text: &str, dir: Option<&Path>) -> Result<Config, ConfigErrors> {
        let root: Table = match text.parse::<Table>() {
            Ok(t) => t,
            Err(e) => return Err(ConfigErrors(vec![syntax_error(text, &e)])),
        };
        let mut w = Walker::new(dir.is_some());
        w.base = dir.map(Path::to_path_buf);
        let partial = section::read(&mut w, &root);
        section::validate(&mut w, &partial);
        if !w.errors.is_empty() {
            // Group by section (in ROOT_KEYS order) and entry; stable, so
            // each entry's errors keep the order they were found in.
            w.errors.sort_by_key(|e| error_position(&e.path));
            return Err(ConfigErrors(w.errors));
        }
        partial.finish().ok_or_else(|| {
            ConfigErrors(vec![ConfigError::new(
                "(config)",
                "internal error: a value was rejected without a message; please report this",
            )])
        })
    }

    /// The backends serving `service`: its explicit backends plus every
    /// backend of its regions, each once, in config (`[[backends]]`) order.
    pub fn service_backends(&self, service: &Service) -> Vec<&Backend> {
        let names: HashSet<&str> = service.backends.iter().map(String::as_str).collect();
        let regions: HashSet<&str> = service.regions.iter().map(String::as_str).collect();
        self.backends
            .iter()
            .filter(|b| names.contains(b.name.as_str()) || regions.contains(b.region.as_str()))
            .collect()
    }

    /// The health check probing `backend` for `service`: the backend's own
    /// check if it names one, else the service's, else none.
    pub fn health_check_for(&self, service: &Service, backend: &Backend) -> Option<&HealthCheck> {
        let name = backend
            .health_check
            .as_deref()
            .or(service.health_check.as_deref())?;
        self.health_check(name)
    }

    /// The regions serving `service`, in its default order: its `regions`,
    /// then the regions of its explicit `backends` in `[[backends]]` order,
    /// each once.
    pub fn service_regions<'a>(&'a self, service: &'a Service) -> Vec<&'a str> {
        let mut out: Vec<&str> = Vec::new();
        for r in &service.regions {
            if !out.contains(&r.as_str()) {
                out.push(r);
            }
        }
        let names: HashSet<&str> = service.backends.iter().map(String::as_str).collect();
        for b in &self.backends {
            if names.contains(b.name.as_str()) && !out.contains(&b.region.as_str()) {
                out.push(&b.region);
            }
        }
        out
    }

    /// The client class named `name`. Its data-plane class id is its index
    /// in [`Config::client_classes`] plus 1.
    pub fn class(&self, name: &str) -> Option<&ClientClass> {
        self.client_classes.iter().find(|c| c.name == name)
    }

    /// The region named `name`.
    pub fn region(&self, name: &str) -> Option<&Region> {
        self.regions.iter().find(|r| r.name == name)
    }

    /// The service named `name`.
    pub fn service(&self, name: &str) -> Option<&Service> {
        self.services.iter().find(|s| s.name == name)
    }

    /// The backend named `name`.
    pub fn backend(&self, name: &str) -> Option<&Backend> {
        self.backends.iter().find(|b| b.name == name)
    }

    /// The health check named `name`.
    pub fn health_check(&self, name: &str) -> Option<&HealthCheck> {
        self.health_checks.iter().find(|h| h.name == name)
    }
}

impl HealthCheck {
    /// The port this check probes for `service`: its own `port`, else the
    /// service port (unless 0), else 80 for http and 443 for https. `None`
    /// only for a tcp check without a port on an all-ports service, which
    /// validation rejects.
    pub fn effective_port(&self, service: &Service) -> Option<u16> {
        self.port
            .or((service.port != 0).then_some(service.port))
            .or(match self.kind {
                CheckKind::Tcp => None,
                CheckKind::Http => Some(80),
                CheckKind::Https => Some(443),
            })
    }
}
