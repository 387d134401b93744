//! Tests of the config model and its validation, by topic. The helpers
//! here build configs from a shared base and assert on the errors.

mod addresses;
mod classes;
mod control_metrics;
mod dataplane;
mod durations;
mod files;
mod health_checks;
mod lookups;
mod messages;
mod mmdb;
mod passive;
mod policies;
mod references;
mod shape;
mod whole;

pub(crate) use std::net::{Ipv4Addr, SocketAddr};
pub(crate) use std::path::{Path, PathBuf};
pub(crate) use std::time::Duration;

pub(crate) use crate::*;

/// `[dataplane]` body used by most tests.
pub(crate) const DP: &str = r#"next_hop_mac = "02:00:00:00:00:01"
encap_source_v4 = "198.18.0.0/24"
encap_source_v6 = "2001:db8:ffff::/96"
"#;

/// Two regions, three backends (two IPv4 in eu-west, one IPv6 in
/// us-east), one health check.
pub(crate) const BASE: &str = r#"
[[regions]]
name = "eu-west"

[[regions]]
name = "us-east"

[[backends]]
name = "eu-1"
address = "192.0.2.1"
region = "eu-west"

[[backends]]
name = "eu-2"
address = "192.0.2.2"
region = "eu-west"

[[backends]]
name = "us-1"
address = "2001:db8:1::1"
region = "us-east"

[[health_checks]]
name = "hc"
kind = "http"
"#;

pub(crate) const WEB: &str = r#"
[[services]]
name = "web"
vip = "203.0.113.10"
port = 80
protocol = "tcp"
regions = ["eu-west"]
"#;

/// `[dataplane]` with `DP` plus `extra`, then `BASE`, then `rest`.
pub(crate) fn doc(extra: &str, rest: &str) -> String {
    format!("[dataplane]\n{DP}{extra}\n{BASE}\n{rest}")
}

pub(crate) fn ok(text: &str) -> Config {
    match Config::parse(text) {
        Ok(c) => c,
        Err(e) => panic!("unexpected errors:\n{e}"),
    }
}

pub(crate) fn errors(text: &str) -> Vec<ConfigError> {
    match Config::parse(text) {
        Ok(_) => panic!("expected errors, config was accepted:\n{text}"),
        Err(e) => e.0,
    }
}

pub(crate) fn has_error(errs: &[ConfigError], path: &str, needle: &str) -> bool {
    errs.iter()
        .any(|e| e.path == path && e.message.contains(needle))
}

#[track_caller]
pub(crate) fn assert_error(text: &str, path: &str, needle: &str) {
    let errs = errors(text);
    assert!(
        has_error(&errs, path, needle),
        "no error at {path} containing {needle:?}; got:\n{}",
        ConfigErrors(errs.clone())
    );
}

/// `doc` with a `WEB` service and one more health check `c` with `check`.
pub(crate) fn with_check(check: &str) -> String {
    doc(
        "",
        &format!("{WEB}\n[[health_checks]]\nname = \"c\"\n{check}\n"),
    )
}
