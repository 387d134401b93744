//! Backend health checks.
//!
//! # Probes
//!
//! [`probe`] runs one check against one [`Target`], bounded as a whole by the
//! check's `timeout` (failure reason `"timeout after 500ms"`):
//!
//! - **tcp**: a TCP connect; it passes once the handshake completes.
//! - **http** / **https**: a `GET path` over HTTP/1.1 with `Host` (the `sni`
//!   if set, else the address, plus the port when not 80/443) and
//!   `Connection: close`, sent with hyper's client connection API on the
//!   probe's own connection (TCP, or TLS over it; no pooling: one
//!   connection per probe). Interim 1xx responses are skipped; the body is
//!   framed by `Transfer-Encoding: chunked`, `Content-Length` or the end of
//!   the connection, and at most 64 KiB of it is read and kept (a response
//!   head may be up to 64 KiB too). The probe passes when the
//!   status is in `expected_status`, the body contains `body_contains` (if
//!   set) and, with `deep_health = true`, the body is a JSON object whose
//!   top-level `"status"` string is one of the check's `up_statuses`
//!   (default `healthy`, `ok`, `pass`, `up`) or `degraded_statuses` (default
//!   `degraded`, `warn`; a pass that marks the target *degraded*). Any other
//!   value, a missing field or invalid JSON fail.
//!
//! Probe sockets are closed with a reset (`SO_LINGER` 0) instead of a FIN,
//! so thousands of probes a second leave no `TIME_WAIT` sockets on the
//! prober or the backends.
//!
//! Failure reasons are short and specific: `"connection refused"`,
//! `"timeout after 500ms"`, `"status 503 (expected 200)"`,
//! `"body does not contain \"ok\""`, `"deep health: status \"fail\" (up:
//! healthy, ok, pass, up; degraded: degraded, warn)"`,
//! `"deep health: invalid JSON (...)"`, `"TLS: invalid peer certificate:
//! UnknownIssuer"`, `"connection closed without a response"`,
//! `"connection reset"`, `"invalid response: invalid HTTP version
//! parsed"`, ... Each failure also has a [`FailureKind`] (`timeout`,
//! `refused`, `reset`, `unreachable`, `closed`, `tls`, `protocol`, `status`,
//! `body`, `deep_health`, `other`), counted per backend by
//! [`HealthMonitor::probe_failures`].
//!
//! # TLS
//!
//! rustls with the *ring* provider (TLS 1.2 and 1.3, ALPN `http/1.1`). The
//! certificate is verified against the check's `ca_file` (a PEM bundle) if
//! set; with `insecure = true` any certificate is accepted (handshake
//! signatures are still checked); with neither, against the system's trust
//! store (loaded once, via `rustls-native-certs`). The name verified is the
//! check's `sni` (also sent as SNI) if set, else the backend's IP address
//! (no SNI is sent; the certificate must list the address as an IP SAN).
//!
//! Probes do no file I/O: [`TlsConfigs`] builds the client configurations
//! on tokio's blocking pool when the monitor's targets are set, and checks
//! the CA files for changes (size, modification time, inode) at every
//! [`HealthMonitor::set_targets`] and every [`TLS_REFRESH_INTERVAL`]. A CA
//! file that becomes unreadable or invalid keeps the certificates loaded
//! before, with a warning; one that never loaded fails its probes with the
//! reason (`"TLS: cannot read ca_file ..."`).
//!
//! # State
//!
//! A [`Tracker`] turns outcomes into up/down: a target starts *unknown*,
//! which counts as **up** — a backend takes traffic from the moment it is
//! configured until `fall` consecutive probes fail, so a (re)start never
//! empties a service while the first probes are in flight. Up → down after
//! `fall` consecutive failures; down → up after `rise` consecutive passes.
//! An up target whose latest probe said "degraded" is *degraded*: it keeps
//! its traffic, and the flag is surfaced in [`TargetStatus`].
//!
//! Every up/down transition is logged with `tracing` (target
//! `steer::health`): `info` for up, `warn` for down with the reason, with the
//! key (backend name), address, port, check name and kind as fields.
//! Entering and leaving *degraded* are logged too (`warn` / `info`);
//! individual failed probes that change nothing are logged at `debug`.
//!
//! # Scheduling
//!
//! [`HealthMonitor`] runs one task per target on the current tokio runtime.
//! A target's probes never overlap and follow a fixed grid,
//! `start + phase + k × interval`, with `phase` random in `[0, jitter)` per
//! target, so a slow probe never makes the schedule drift and targets added
//! at the same time do not probe in lock step.
//!
//! # From a config
//!
//! [`targets_from_config`] makes one target per backend and distinct check;
//! [`backend_up`] and [`backend_degraded`] combine a backend's targets
//! (keys `name`, or `name/...` for a backend with several checks).

pub(crate) mod http;
mod monitor;
mod probe;
mod tls;
mod tracker;

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Duration;

use crate::config::{Config, HealthCheck};

pub use monitor::{
    HealthMonitor, HealthStats, Histogram, LAG_BUCKETS, LATENCY_BUCKETS, TLS_REFRESH_INTERVAL,
};
pub use probe::{probe, FailureKind, ProbeOutcome};
pub use tls::TlsConfigs;
pub use tracker::{Tracker, Transition};

/// One thing to probe: a backend address and port, with a check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    /// Unique among the targets of a monitor: the backend name, or
    /// `backend/check` when a backend has several distinct checks (see
    /// [`targets_from_config`]).
    pub key: String,
    pub address: IpAddr,
    pub port: u16,
    pub check: HealthCheck,
}

/// What the monitor knows about one target.
#[derive(Clone, Debug, PartialEq)]
pub struct TargetStatus {
    /// Should receive traffic (also true while no probe has finished yet).
    pub up: bool,
    /// Up, and the latest probe answered deep health `"degraded"`.
    pub degraded: bool,
    /// Reason of the most recent failed probe (kept after recovery).
    pub last_failure: Option<String>,
    /// Duration of the most recent probe.
    pub last_latency: Option<Duration>,
    /// Smoothed duration of passing probes (an exponentially weighted
    /// moving average, weight [`RTT_EWMA_WEIGHT`] for each new probe): a
    /// tcp check's connect time, an http(s) check's connect, request and
    /// response. The latency policy ranks regions by it. `None` until a
    /// probe passes.
    pub rtt: Option<Duration>,
    /// Probes completed.
    pub probes: u64,
    /// Probes failed.
    pub failures: u64,
}

/// The weight of each new passing probe in [`TargetStatus::rtt`].
pub const RTT_EWMA_WEIGHT: f64 = 0.3;

/// `rtt` after a passing probe that took `sample`.
pub fn rtt_update(rtt: Option<Duration>, sample: Duration) -> Duration {
    match rtt {
        None => sample,
        Some(old) => Duration::from_secs_f64(
            old.as_secs_f64() + RTT_EWMA_WEIGHT * (sample.as_secs_f64() - old.as_secs_f64()),
        ),
    }
}

impl TargetStatus {
    /// The status of a target no probe has finished for: up.
    pub fn initial() -> TargetStatus {
        TargetStatus {
            up: true,
            degraded: false,
            last_failure: None,
            last_latency: None,
            rtt: None,
            probes: 0,
            failures: 0,
        }
    }
}

/// The health check targets of `cfg`: for every service and each of its
/// backends with a check (`Config::health_check_for`), the backend's address
/// and the check's effective port for that service.
///
/// A backend probed the same way (same check, same port) by several services
/// is probed once, under the key `backend`. A backend that needs several
/// distinct probes gets one target per probe, keyed `backend/check` (or
/// `backend/check/port` when one check is used on several ports); it is up
/// only while all of them are (see [`backend_up`]). Targets come in
/// `[[backends]]` order, then in the order services first use each probe.
pub fn targets_from_config(cfg: &Config) -> Vec<Target> {
    // backend name -> distinct (check, port), in first-use order.
    let mut probes: BTreeMap<&str, Vec<(&HealthCheck, u16)>> = BTreeMap::new();
    for service in &cfg.services {
        for backend in cfg.service_backends(service) {
            let Some(check) = cfg.health_check_for(service, backend) else {
                continue;
            };
            // `None` only for a tcp check without port on a port-0
            // service, which validation rejects.
            let Some(port) = check.effective_port(service) else {
                continue;
            };
            let list = probes.entry(backend.name.as_str()).or_default();
            if !list.iter().any(|(c, p)| c.name == check.name && *p == port) {
                list.push((check, port));
            }
        }
    }
    let mut targets = Vec::new();
    for backend in &cfg.backends {
        let Some(list) = probes.get(backend.name.as_str()) else {
            continue;
        };
        for (check, port) in list {
            let key = if list.len() == 1 {
                backend.name.clone()
            } else if list.iter().filter(|(c, _)| c.name == check.name).count() == 1 {
                format!("{}/{}", backend.name, check.name)
            } else {
                format!("{}/{}/{port}", backend.name, check.name)
            };
            targets.push(Target {
                key,
                address: backend.address,
                port: *port,
                check: (*check).clone(),
            });
        }
    }
    targets
}

/// The backend a target key belongs to: the key up to its first `/`
/// (backend names cannot contain one).
pub fn backend_of_key(key: &str) -> &str {
    key.split_once('/').map_or(key, |(backend, _)| backend)
}

/// The statuses of `backend`'s targets: key `backend` or `backend/...`.
pub fn backend_targets<'a>(
    status: &'a BTreeMap<String, TargetStatus>,
    backend: &str,
) -> impl Iterator<Item = &'a TargetStatus> {
    let prefix = format!("{backend}/");
    status.get(backend).into_iter().chain(
        status
            .range(prefix.clone()..)
            .take_while(move |(k, _)| k.starts_with(&prefix))
            .map(|(_, s)| s),
    )
}

/// Whether `backend` is up: all of its targets (key `backend` or
/// `backend/...`) are up. A backend without any target is not health
/// checked and always up.
pub fn backend_up(status: &BTreeMap<String, TargetStatus>, backend: &str) -> bool {
    backend_targets(status, backend).all(|s| s.up)
}

/// Whether `backend` is degraded: it is up ([`backend_up`]) and at least
/// one of its targets is degraded (its latest deep-health probe answered
/// `"degraded"`). A backend without any target is never degraded.
pub fn backend_degraded(status: &BTreeMap<String, TargetStatus>, backend: &str) -> bool {
    backend_up(status, backend) && backend_targets(status, backend).any(|s| s.degraded)
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = r#"
[dataplane]
next_hop_mac = "02:00:00:00:00:01"
encap_source_v4 = "198.18.0.0/24"

[[regions]]
name = "r"

[[backends]]
name = "a"
address = "192.0.2.1"
region = "r"

[[backends]]
name = "b"
address = "192.0.2.2"
region = "r"

[[backends]]
name = "c"
address = "192.0.2.3"
region = "r"
health_check = "tcp9"

[[backends]]
name = "d"
address = "192.0.2.4"
region = "r"

[[health_checks]]
name = "http"
kind = "http"

[[health_checks]]
name = "deep"
kind = "http"
path = "/health"
deep_health = true

[[health_checks]]
name = "tcp9"
kind = "tcp"
port = 9
"#;

    fn config(services: &str) -> Config {
        match Config::parse(&format!("{BASE}{services}")) {
            Ok(c) => c,
            Err(e) => panic!("{e:?}"),
        }
    }

    fn keys(targets: &[Target]) -> Vec<(String, u16, String)> {
        targets
            .iter()
            .map(|t| (t.key.clone(), t.port, t.check.name.clone()))
            .collect()
    }

    #[test]
    fn one_target_per_backend_and_distinct_probe() {
        let cfg = config(
            r#"
[[services]]
name = "web"
vip = "203.0.113.1"
port = 80
protocol = "tcp"
backends = ["a", "b", "c"]
health_check = "http"

[[services]]
name = "web2"
vip = "203.0.113.2"
port = 80
protocol = "tcp"
backends = ["a", "b", "c"]
health_check = "http"

[[services]]
name = "api"
vip = "203.0.113.3"
port = 80
protocol = "tcp"
backends = ["b"]
health_check = "deep"

[[services]]
name = "alt"
vip = "203.0.113.4"
port = 8080
protocol = "tcp"
backends = ["b", "d"]
health_check = "http"

[[services]]
name = "nocheck"
vip = "203.0.113.5"
port = 53
protocol = "udp"
backends = ["a", "d"]
"#,
        );
        let targets = targets_from_config(&cfg);
        let s = |k: &str, p: u16, c: &str| (k.to_string(), p, c.to_string());
        assert_eq!(
            keys(&targets),
            vec![
                s("a", 80, "http"),
                s("b/http/80", 80, "http"),
                s("b/deep", 80, "deep"),
                s("b/http/8080", 8080, "http"),
                s("c", 9, "tcp9"),
                s("d", 8080, "http"),
            ]
        );
        assert_eq!(targets[0].address, "192.0.2.1".parse::<IpAddr>().unwrap());
        assert_eq!(targets[4].address, "192.0.2.3".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn no_checks_no_targets() {
        let cfg = config(
            r#"
[[services]]
name = "web"
vip = "203.0.113.1"
port = 80
protocol = "tcp"
backends = ["a"]
"#,
        );
        assert!(targets_from_config(&cfg).is_empty());
    }

    fn st(up: bool) -> TargetStatus {
        TargetStatus {
            up,
            ..TargetStatus::initial()
        }
    }

    #[test]
    fn backend_up_needs_all_its_targets() {
        let mut m = BTreeMap::new();
        m.insert("a".to_string(), st(true));
        m.insert("a-2".to_string(), st(false));
        m.insert("a.b".to_string(), st(false));
        m.insert("b/http".to_string(), st(true));
        m.insert("b/deep".to_string(), st(false));
        m.insert("c/x".to_string(), st(true));
        m.insert("c/y/80".to_string(), st(true));
        m.insert("d".to_string(), st(false));
        assert!(backend_up(&m, "a"), "a-2 and a.b are other backends");
        assert!(!backend_up(&m, "b"));
        assert!(backend_up(&m, "c"));
        assert!(!backend_up(&m, "d"));
        assert!(backend_up(&m, "unchecked"));
        assert!(backend_up(&BTreeMap::new(), "a"));
    }

    #[test]
    fn rtt_is_an_ewma_of_passing_probes() {
        let ms = Duration::from_millis;
        let r = rtt_update(None, ms(100));
        assert_eq!(r, ms(100), "the first sample is the estimate");
        // 100 + 0.3 * (200 - 100) = 130
        let r = rtt_update(Some(r), ms(200));
        assert!((r.as_secs_f64() - 0.130).abs() < 1e-9, "{r:?}");
        // Converges to a steady sample: 30 more probes of 10 ms.
        let r = (0..30).fold(r, |r, _| rtt_update(Some(r), ms(10)));
        assert!(r < ms(11) && r >= ms(10), "{r:?}");
    }

    fn st_deg(up: bool, degraded: bool) -> TargetStatus {
        TargetStatus {
            up,
            degraded,
            ..TargetStatus::initial()
        }
    }

    #[test]
    fn backend_degraded_over_all_its_targets() {
        let mut m = BTreeMap::new();
        // One target, under the backend's own name.
        m.insert("a".to_string(), st_deg(true, true));
        m.insert("a-2".to_string(), st_deg(true, false));
        // Several checks: `name/check` keys.
        m.insert("b/deep".to_string(), st_deg(true, true));
        m.insert("b/http/80".to_string(), st_deg(true, false));
        // Degraded on one check, down on another: down, so not degraded.
        m.insert("c/deep".to_string(), st_deg(true, true));
        m.insert("c/tcp".to_string(), st_deg(false, false));
        m.insert("d/x".to_string(), st_deg(true, false));
        m.insert("d/y".to_string(), st_deg(true, false));
        // Another backend whose name extends "e" degraded: not e's.
        m.insert("e/x".to_string(), st_deg(true, false));
        m.insert("e.1/x".to_string(), st_deg(true, true));
        m.insert("e-1".to_string(), st_deg(true, true));
        assert!(backend_degraded(&m, "a"));
        assert!(!backend_degraded(&m, "a-2"));
        assert!(backend_degraded(&m, "b"), "degraded on one of two checks");
        assert!(!backend_degraded(&m, "c"), "down wins over degraded");
        assert!(!backend_up(&m, "c"));
        assert!(!backend_degraded(&m, "d"));
        assert!(!backend_degraded(&m, "e"));
        assert!(backend_degraded(&m, "e.1"));
        assert!(!backend_degraded(&m, "unchecked"));
    }

    #[test]
    fn backend_of_a_target_key() {
        assert_eq!(backend_of_key("eu-1"), "eu-1");
        assert_eq!(backend_of_key("eu-1/deep"), "eu-1");
        assert_eq!(backend_of_key("eu-1/http/8080"), "eu-1");
    }
}
