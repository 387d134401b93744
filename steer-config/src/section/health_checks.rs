//! `[[health_checks]]`: how backends are probed.

use std::path::PathBuf;
use std::time::Duration;

use toml::Table;

use crate::defaults::{
    DEFAULT_DEEP_HEALTH, DEFAULT_DEGRADED_STATUSES, DEFAULT_EXPECTED_STATUS, DEFAULT_FALL,
    DEFAULT_HC_PATH, DEFAULT_INSECURE, DEFAULT_INTERVAL, DEFAULT_JITTER, DEFAULT_RISE,
    DEFAULT_TIMEOUT, DEFAULT_UP_STATUSES,
};
use crate::duration::format_duration;
use crate::error::join;
use crate::files::check_ca_file;
use crate::model::{keyword_list, CheckKind, PHealthCheck};
use crate::values::{
    boolean, duration, hostname, http_path, int_in, keyword, name, non_empty_string, u32_in,
};
use crate::walker::{Node, Walker};

/// Keys that only http and https checks may have.
const HTTP_ONLY_KEYS: &[&str] = &[
    "path",
    "expected_status",
    "body_contains",
    "deep_health",
    "up_statuses",
    "degraded_statuses",
];
/// Keys that only mean something with `deep_health = true`.
const DEEP_HEALTH_KEYS: &[&str] = &["up_statuses", "degraded_statuses"];
/// Keys that only https checks may have.
const HTTPS_ONLY_KEYS: &[&str] = &["sni", "ca_file", "insecure"];

pub(super) fn read(w: &mut Walker, at: &str, t: &Table) -> PHealthCheck {
    let n = Node::new(w, at, t);
    let mut check = PHealthCheck {
        name: n.required(w, "name", "e.g. \"http-health\"", name),
        kind: n.required(
            w,
            "kind",
            &format!("one of: {}", keyword_list::<CheckKind>()),
            keyword,
        ),
        port: n.optional(w, "port", |v| int_in(v, 1, 65535)),
        path: n.default(w, "path", DEFAULT_HC_PATH.to_string(), http_path),
        interval: n.default(w, "interval", DEFAULT_INTERVAL, duration),
        timeout: n.default(w, "timeout", DEFAULT_TIMEOUT, duration),
        rise: n.default(w, "rise", DEFAULT_RISE, u32_in(1, u32::MAX)),
        fall: n.default(w, "fall", DEFAULT_FALL, u32_in(1, u32::MAX)),
        jitter: n.default(w, "jitter", DEFAULT_JITTER, duration),
        expected_status: expected_status(w, &n),
        body_contains: n.optional(w, "body_contains", non_empty_string),
        deep_health: n.default(w, "deep_health", DEFAULT_DEEP_HEALTH, boolean),
        up_statuses: statuses(w, &n, "up_statuses", DEFAULT_UP_STATUSES),
        degraded_statuses: statuses(w, &n, "degraded_statuses", DEFAULT_DEGRADED_STATUSES),
        sni: n.optional(w, "sni", hostname),
        ca_file: n.optional(w, "ca_file", |v| non_empty_string(v).map(PathBuf::from)),
        insecure: n.default(w, "insecure", DEFAULT_INSECURE, boolean),
        at: at.to_string(),
    };
    relations(w, &n, at, &mut check);
    n.done(w);
    check
}

/// `expected_status`: a non-empty list of 100..=599, default `[200]`.
fn expected_status(w: &mut Walker, n: &Node<'_>) -> Option<Vec<Option<u16>>> {
    let present = n.has("expected_status");
    match n.list(w, "expected_status", |v| int_in::<u16>(v, 100, 599)) {
        Some(_) if !present => Some(vec![Some(DEFAULT_EXPECTED_STATUS)]),
        Some(list) if list.is_empty() => {
            w.err(
                join(n.path, "expected_status"),
                "must not be empty (e.g. [200] or [200, 204])",
            );
            None
        }
        list => list,
    }
}

/// `up_statuses` / `degraded_statuses`: deep-health `"status"` values, each
/// a non-empty string listed once; `up_statuses` must not be empty
/// (`degraded_statuses = []` means no value is degraded).
fn statuses(
    w: &mut Walker,
    n: &Node<'_>,
    key: &'static str,
    default: &[&str],
) -> Option<Vec<Option<String>>> {
    let list = n.list(w, key, non_empty_string)?;
    if !n.has(key) {
        return Some(default.iter().map(|s| Some(s.to_string())).collect());
    }
    let path = join(n.path, key);
    if list.is_empty() && key == "up_statuses" {
        w.err(
            path,
            "must not be empty: a deep-health check needs at least one status that means up              (e.g. [\"healthy\", \"ok\", \"pass\"])",
        );
        return None;
    }
    for (i, s) in list.iter().enumerate() {
        if let Some(s) = s {
            if list[..i].iter().flatten().any(|earlier| earlier == s) {
                w.err(format!("{path}[{i}]"), format!("{s:?} is listed twice"));
            }
        }
    }
    Some(list)
}

/// Checks between fields, and the `ca_file` itself when files are checked.
fn relations(w: &mut Walker, n: &Node<'_>, at: &str, h: &mut PHealthCheck) {
    for (field, value) in [("interval", &mut h.interval), ("timeout", &mut h.timeout)] {
        if *value == Some(Duration::ZERO) {
            w.err(join(at, field), "must be longer than 0s");
            *value = None;
        }
    }
    if let Some(i) = h.interval {
        for (field, value) in [("timeout", h.timeout), ("jitter", h.jitter)] {
            if let Some(d) = value {
                if d >= i {
                    w.err(
                        join(at, field),
                        format!(
                            "{} must be shorter than interval {}",
                            format_duration(d),
                            format_duration(i)
                        ),
                    );
                }
            }
        }
    }
    if let Some(kind) = h.kind {
        if kind == CheckKind::Tcp {
            for key in HTTP_ONLY_KEYS.iter().filter(|k| n.has(k)) {
                w.err(
                    join(at, key),
                    "only valid for kind \"http\" or \"https\" (this check is \"tcp\"; remove it)",
                );
            }
        }
        if kind != CheckKind::Https {
            for key in HTTPS_ONLY_KEYS.iter().filter(|k| n.has(k)) {
                w.err(
                    join(at, key),
                    format!(
                        "only valid for kind \"https\" (this check is {:?}; remove it)",
                        kind.as_str()
                    ),
                );
            }
        }
    }
    // Status lists only matter when the body is parsed (a tcp check already
    // got an error for them above).
    if h.kind != Some(CheckKind::Tcp) && h.deep_health == Some(false) {
        for key in DEEP_HEALTH_KEYS.iter().filter(|k| n.has(k)) {
            w.err(
                join(at, key),
                "only used with deep_health = true (this check does not parse the body); \
                 set deep_health = true or remove it",
            );
        }
    }
    if let (Some(up), Some(degraded)) = (&h.up_statuses, &h.degraded_statuses) {
        for (i, d) in degraded.iter().enumerate() {
            if let Some(d) = d {
                if up.iter().flatten().any(|u| u == d) {
                    w.err(
                        format!("{}[{i}]", join(at, "degraded_statuses")),
                        format!(
                            "{d:?} is also in up_statuses{}: a status is either up or \
                             degraded; remove it from one list",
                            if n.has("up_statuses") {
                                ""
                            } else {
                                " (by default)"
                            }
                        ),
                    );
                }
            }
        }
    }
    let https = h.kind.is_none_or(|k| k == CheckKind::Https);
    if https && h.insecure == Some(true) && matches!(h.ca_file, Some(Some(_))) {
        w.err(
            join(at, "insecure"),
            "insecure = true cannot be combined with ca_file (insecure skips certificate \
             verification, so ca_file would be ignored); remove one of them",
        );
    }
    if let (true, Some(Some(ca_file))) = (w.check_files && https, &h.ca_file) {
        if let Err(m) = check_ca_file(ca_file) {
            w.err(join(at, "ca_file"), m);
            h.ca_file = None;
        }
    }
}
