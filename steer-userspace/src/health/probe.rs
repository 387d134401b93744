//! One probe of one target: TCP connect, or an HTTP(S) `GET` judged by
//! status, body text and (optionally) a deep-health JSON document.

use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_rustls::TlsConnector;

use super::http::{self, io_failure, shorten, Response, BODY_CAP};
use super::{tls, Target, TlsConfigs};
use crate::config::{format_duration, CheckKind, HealthCheck};

/// Why a probe failed, as one of a small fixed set: the `reason` label of
/// probe failure metrics. The failure's text ([`ProbeOutcome::reason`]) has
/// the details.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FailureKind {
    /// The probe ran past the check's `timeout`.
    Timeout,
    /// The connection was refused (nothing listening).
    Refused,
    /// The connection was reset or aborted by the peer.
    Reset,
    /// No route to the backend, or no local address to reach it from.
    Unreachable,
    /// The backend closed the connection before a complete response.
    Closed,
    /// The TLS handshake failed (certificate, protocol, `ca_file`, `sni`).
    Tls,
    /// The answer is not a valid HTTP/1.x response.
    Protocol,
    /// The response status is not in `expected_status`.
    Status,
    /// The body does not contain `body_contains`.
    Body,
    /// The deep-health document is missing, invalid or not healthy.
    DeepHealth,
    /// Anything else.
    Other,
}

impl FailureKind {
    /// Every kind, in a stable order.
    pub const ALL: [FailureKind; 11] = [
        FailureKind::Timeout,
        FailureKind::Refused,
        FailureKind::Reset,
        FailureKind::Unreachable,
        FailureKind::Closed,
        FailureKind::Tls,
        FailureKind::Protocol,
        FailureKind::Status,
        FailureKind::Body,
        FailureKind::DeepHealth,
        FailureKind::Other,
    ];

    /// The metric label value: `"timeout"`, `"refused"`, `"reset"`,
    /// `"unreachable"`, `"closed"`, `"tls"`, `"protocol"`, `"status"`,
    /// `"body"`, `"deep_health"` or `"other"`.
    pub fn as_str(self) -> &'static str {
        match self {
            FailureKind::Timeout => "timeout",
            FailureKind::Refused => "refused",
            FailureKind::Reset => "reset",
            FailureKind::Unreachable => "unreachable",
            FailureKind::Closed => "closed",
            FailureKind::Tls => "tls",
            FailureKind::Protocol => "protocol",
            FailureKind::Status => "status",
            FailureKind::Body => "body",
            FailureKind::DeepHealth => "deep_health",
            FailureKind::Other => "other",
        }
    }

    /// Position in [`FailureKind::ALL`].
    pub(crate) fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for FailureKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A failed probe step: its kind and the reason text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Failure {
    pub kind: FailureKind,
    pub reason: String,
}

impl Failure {
    pub(crate) fn new(kind: FailureKind, reason: impl Into<String>) -> Failure {
        Failure {
            kind,
            reason: reason.into(),
        }
    }
}

/// The result of one probe.
#[derive(Clone, Debug, PartialEq)]
pub enum ProbeOutcome {
    /// The target is healthy. `degraded`: a deep-health check answered
    /// `"degraded"` (healthy enough to keep, but worth surfacing).
    Pass { latency: Duration, degraded: bool },
    /// The target is not healthy, for `reason` (`"connection refused"`,
    /// `"timeout after 500ms"`, `"status 503 (expected 200)"`, ...), of
    /// kind `kind`.
    Fail {
        latency: Duration,
        kind: FailureKind,
        reason: String,
    },
}

impl ProbeOutcome {
    /// Whether the probe passed.
    pub fn is_pass(&self) -> bool {
        matches!(self, ProbeOutcome::Pass { .. })
    }

    /// How long the probe took (the timeout, for a probe that timed out).
    pub fn latency(&self) -> Duration {
        match self {
            ProbeOutcome::Pass { latency, .. } | ProbeOutcome::Fail { latency, .. } => *latency,
        }
    }

    /// Why the probe failed; `None` for a pass.
    pub fn reason(&self) -> Option<&str> {
        match self {
            ProbeOutcome::Pass { .. } => None,
            ProbeOutcome::Fail { reason, .. } => Some(reason),
        }
    }

    /// The kind of failure; `None` for a pass.
    pub fn failure_kind(&self) -> Option<FailureKind> {
        match self {
            ProbeOutcome::Pass { .. } => None,
            ProbeOutcome::Fail { kind, .. } => Some(*kind),
        }
    }
}

/// Probes `target` once. The whole probe — connect, TLS handshake, request
/// and response — is bounded by `check.timeout`; past it the probe fails with
/// `"timeout after <timeout>"`.
///
/// An https probe takes its TLS client configuration from `tls`, where it
/// must have been registered ([`TlsConfigs::set_wanted`]); it waits (within
/// the timeout) for a pending [`TlsConfigs::refresh`] to load it. A probe
/// itself does no file I/O.
pub async fn probe(target: &Target, tls: &TlsConfigs) -> ProbeOutcome {
    let start = Instant::now();
    let timeout = target.check.timeout;
    let result = tokio::time::timeout(timeout, run(target, tls)).await;
    let latency = start.elapsed();
    match result {
        Ok(Ok(degraded)) => ProbeOutcome::Pass { latency, degraded },
        Ok(Err(Failure { kind, reason })) => ProbeOutcome::Fail {
            latency,
            kind,
            reason,
        },
        Err(_) => ProbeOutcome::Fail {
            latency,
            kind: FailureKind::Timeout,
            reason: format!("timeout after {}", format_duration(timeout)),
        },
    }
}

/// `Ok(degraded)` or the failure.
async fn run(target: &Target, tls_configs: &TlsConfigs) -> Result<bool, Failure> {
    let check = &target.check;
    // TLS settings first: a broken ca_file or sni is reported without
    // touching the network.
    let tls = match check.kind {
        CheckKind::Https => {
            let tls_err = |reason| Failure::new(FailureKind::Tls, reason);
            let config = tls_configs.config(check).await.map_err(tls_err)?;
            let name = tls::server_name(check, target.address).map_err(tls_err)?;
            Some((config, name))
        }
        CheckKind::Tcp | CheckKind::Http => None,
    };
    let request = match check.kind {
        CheckKind::Http | CheckKind::Https => {
            Some(http::request(check, target.address, target.port)?)
        }
        CheckKind::Tcp => None,
    };
    let addr = SocketAddr::new(target.address, target.port);
    let tcp = TcpStream::connect(addr).await.map_err(|e| io_failure(&e))?;
    // Close with a reset rather than FIN, so that thousands of probes a
    // second leave no TIME_WAIT sockets behind (on either side).
    let _ = tcp.set_zero_linger();
    let Some(request) = request else {
        return Ok(false); // tcp: connected
    };
    let response = match tls {
        None => http::exchange(tcp, request, BODY_CAP).await?,
        Some((config, name)) => {
            let _ = tcp.set_nodelay(true);
            let stream = TlsConnector::from(config)
                .connect(name, tcp)
                .await
                .map_err(|e| Failure::new(FailureKind::Tls, tls::describe_handshake_error(&e)))?;
            http::exchange(stream, request, BODY_CAP).await?
        }
    };
    evaluate(check, &response)
}

/// Judges a response: status, then `body_contains`, then deep health.
pub(crate) fn evaluate(check: &HealthCheck, response: &Response) -> Result<bool, Failure> {
    if !check.expected_status.contains(&response.status) {
        let expected: Vec<String> = check
            .expected_status
            .iter()
            .map(|s| s.to_string())
            .collect();
        return Err(Failure::new(
            FailureKind::Status,
            format!(
                "status {} (expected {})",
                response.status,
                expected.join(", ")
            ),
        ));
    }
    if let Some(needle) = &check.body_contains {
        let found = response
            .body
            .windows(needle.len().max(1))
            .any(|w| w == needle.as_bytes());
        if !found {
            let mut reason = format!("body does not contain {needle:?}");
            if response.truncated {
                reason.push_str(" (in its first 64 KiB)");
            }
            return Err(Failure::new(FailureKind::Body, reason));
        }
    }
    if check.deep_health {
        return deep_health(check, response).map_err(|r| Failure::new(FailureKind::DeepHealth, r));
    }
    Ok(false)
}

/// Deep health: the body is a JSON object whose `"status"` string is one of
/// the check's `up_statuses` (pass), one of its `degraded_statuses` (pass,
/// degraded) or anything else (fail, naming the value and the accepted
/// ones). Values compare exactly (case-sensitive).
fn deep_health(check: &HealthCheck, response: &Response) -> Result<bool, String> {
    if response.truncated {
        return Err("deep health: body larger than 64 KiB".into());
    }
    let doc: serde_json::Value = serde_json::from_slice(&response.body)
        .map_err(|e| format!("deep health: invalid JSON ({e})"))?;
    match doc.get("status") {
        Some(serde_json::Value::String(s)) => {
            if check.up_statuses.iter().any(|u| u == s) {
                Ok(false)
            } else if check.degraded_statuses.iter().any(|d| d == s) {
                Ok(true)
            } else {
                Err(format!(
                    "deep health: status {} ({})",
                    shorten(s),
                    accepted_statuses(check)
                ))
            }
        }
        Some(other) => Err(format!(
            "deep health: \"status\" is not a string ({})",
            shorten(&other.to_string())
        )),
        None => Err("deep health: no top-level \"status\" field".into()),
    }
}

/// `up: healthy, ok, pass, up; degraded: degraded, warn`.
fn accepted_statuses(check: &HealthCheck) -> String {
    let degraded = if check.degraded_statuses.is_empty() {
        "none".to_string()
    } else {
        check.degraded_statuses.join(", ")
    };
    format!("up: {}; degraded: {degraded}", check.up_statuses.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check() -> HealthCheck {
        HealthCheck {
            jitter: Duration::ZERO,
            ..HealthCheck::new("web", CheckKind::Http)
        }
    }

    fn resp(status: u16, body: &str) -> Response {
        Response {
            status,
            body: body.as_bytes().to_vec(),
            truncated: false,
        }
    }

    /// `evaluate` with the failure as `"[kind] reason"`.
    fn eval(c: &HealthCheck, r: &Response) -> Result<bool, String> {
        evaluate(c, r).map_err(|f| format!("[{}] {}", f.kind, f.reason))
    }

    #[test]
    fn status_codes() {
        let mut c = check();
        assert_eq!(eval(&c, &resp(200, "")), Ok(false));
        assert_eq!(
            eval(&c, &resp(503, "")),
            Err("[status] status 503 (expected 200)".into())
        );
        c.expected_status = vec![200, 204];
        assert_eq!(eval(&c, &resp(204, "")), Ok(false));
        assert_eq!(
            eval(&c, &resp(301, "")),
            Err("[status] status 301 (expected 200, 204)".into())
        );
    }

    #[test]
    fn body_contains() {
        let mut c = check();
        c.body_contains = Some("ok".into());
        assert_eq!(eval(&c, &resp(200, "all ok here")), Ok(false));
        assert_eq!(
            eval(&c, &resp(200, "nope")),
            Err("[body] body does not contain \"ok\"".into())
        );
        assert_eq!(
            eval(&c, &resp(503, "ok")),
            Err("[status] status 503 (expected 200)".into()),
            "status is judged first"
        );
        let mut r = resp(200, "nope");
        r.truncated = true;
        assert_eq!(
            eval(&c, &r),
            Err("[body] body does not contain \"ok\" (in its first 64 KiB)".into())
        );
    }

    #[test]
    fn deep_health_documents() {
        let mut c = check();
        c.deep_health = true;
        let cases: &[(&str, Result<bool, &str>)] = &[
            (r#"{"status":"healthy"}"#, Ok(false)),
            (r#"{"status":"ok"}"#, Ok(false)),
            (r#"{"status":"pass","version":"1"}"#, Ok(false)),
            (r#"{"status":"up"}"#, Ok(false)),
            (r#"{"status":"degraded","checks":{"db":"slow"}}"#, Ok(true)),
            (r#"{"status":"warn"}"#, Ok(true)),
            (
                r#"{"status":"unhealthy"}"#,
                Err("[deep_health] deep health: status \"unhealthy\" (up: healthy, ok, pass, up; degraded: degraded, warn)"),
            ),
            (
                r#"{"status":"fail"}"#,
                Err("[deep_health] deep health: status \"fail\" (up: healthy, ok, pass, up; degraded: degraded, warn)"),
            ),
            (
                r#"{"status":"HEALTHY"}"#,
                Err("[deep_health] deep health: status \"HEALTHY\" (up: healthy, ok, pass, up; degraded: degraded, warn)"),
            ),
            (
                r#"{"status":1}"#,
                Err("[deep_health] deep health: \"status\" is not a string (\"1\")"),
            ),
            (
                r#"{"state":"healthy"}"#,
                Err("[deep_health] deep health: no top-level \"status\" field"),
            ),
            (
                r#"["healthy"]"#,
                Err("[deep_health] deep health: no top-level \"status\" field"),
            ),
            (
                "ok",
                Err("[deep_health] deep health: invalid JSON (expected value at line 1 column 1)"),
            ),
            (
                "",
                Err("[deep_health] deep health: invalid JSON (EOF while parsing a value at line 1 column 0)"),
            ),
        ];
        for (body, want) in cases {
            assert_eq!(
                eval(&c, &resp(200, body)),
                want.map_err(String::from),
                "{body}"
            );
        }
        let mut r = resp(200, r#"{"status":"healthy"}"#);
        r.truncated = true;
        assert_eq!(
            eval(&c, &r),
            Err("[deep_health] deep health: body larger than 64 KiB".into())
        );
    }

    #[test]
    fn deep_health_uses_the_checks_status_lists() {
        let mut c = check();
        c.deep_health = true;
        c.up_statuses = vec!["UP".into()];
        c.degraded_statuses = vec![];
        assert_eq!(eval(&c, &resp(200, r#"{"status":"UP"}"#)), Ok(false));
        for s in ["healthy", "degraded", "up"] {
            assert_eq!(
                eval(&c, &resp(200, &format!(r#"{{"status":"{s}"}}"#))),
                Err(format!(
                    "[deep_health] deep health: status \"{s}\" (up: UP; degraded: none)"
                ))
            );
        }
        c.degraded_statuses = vec!["slow".into(), "warn".into()];
        assert_eq!(eval(&c, &resp(200, r#"{"status":"slow"}"#)), Ok(true));
    }

    #[test]
    fn outcome_accessors() {
        let p = ProbeOutcome::Pass {
            latency: Duration::from_millis(3),
            degraded: false,
        };
        let f = ProbeOutcome::Fail {
            latency: Duration::from_millis(5),
            kind: FailureKind::Refused,
            reason: "connection refused".into(),
        };
        assert!(p.is_pass() && !f.is_pass());
        assert_eq!(p.latency(), Duration::from_millis(3));
        assert_eq!(f.latency(), Duration::from_millis(5));
        assert_eq!((p.reason(), f.reason()), (None, Some("connection refused")));
        assert_eq!(
            (p.failure_kind(), f.failure_kind()),
            (None, Some(FailureKind::Refused))
        );
    }

    #[test]
    fn failure_kinds_are_distinct_and_indexed() {
        let names: std::collections::BTreeSet<&str> =
            FailureKind::ALL.iter().map(|k| k.as_str()).collect();
        assert_eq!(names.len(), FailureKind::ALL.len());
        for (i, k) in FailureKind::ALL.iter().enumerate() {
            assert_eq!(k.index(), i, "{k}");
            // Prometheus label values: lower-case words.
            assert!(k
                .as_str()
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b == b'_'));
        }
    }
}
