//! One probe of one target: TCP connect, or an HTTP(S) `GET` judged by
//! status, body text and (optionally) a deep-health JSON document.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_rustls::TlsConnector;

use super::http::{self, describe_io, shorten, Response, BODY_CAP};
use super::{tls, Target};
use crate::config::{format_duration, CheckKind, HealthCheck};

/// The result of one probe.
#[derive(Clone, Debug, PartialEq)]
pub enum ProbeOutcome {
    /// The target is healthy. `degraded`: a deep-health check answered
    /// `"degraded"` (healthy enough to keep, but worth surfacing).
    Pass { latency: Duration, degraded: bool },
    /// The target is not healthy, for `reason` (`"connection refused"`,
    /// `"timeout after 500ms"`, `"status 503 (expected 200)"`, ...).
    Fail { latency: Duration, reason: String },
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
}

/// Probes `target` once. The whole probe — connect, TLS handshake, request
/// and response — is bounded by `check.timeout`; past it the probe fails with
/// `"timeout after <timeout>"`.
pub async fn probe(target: &Target) -> ProbeOutcome {
    let start = Instant::now();
    let timeout = target.check.timeout;
    let result = tokio::time::timeout(timeout, run(target)).await;
    let latency = start.elapsed();
    match result {
        Ok(Ok(degraded)) => ProbeOutcome::Pass { latency, degraded },
        Ok(Err(reason)) => ProbeOutcome::Fail { latency, reason },
        Err(_) => ProbeOutcome::Fail {
            latency,
            reason: format!("timeout after {}", format_duration(timeout)),
        },
    }
}

/// `Ok(degraded)` or `Err(reason)`.
async fn run(target: &Target) -> Result<bool, String> {
    let check = &target.check;
    // TLS settings first: a broken ca_file is reported without touching the
    // network.
    let tls = match check.kind {
        CheckKind::Https => Some((
            tls::client_config(check)?,
            tls::server_name(check, target.address)?,
        )),
        CheckKind::Tcp | CheckKind::Http => None,
    };
    let addr = SocketAddr::new(target.address, target.port);
    let tcp = TcpStream::connect(addr)
        .await
        .map_err(|e| describe_io(&e))?;
    // Close with a reset rather than FIN, so that thousands of probes a
    // second leave no TIME_WAIT sockets behind (on either side).
    let _ = tcp.set_zero_linger();
    match tls {
        None if check.kind == CheckKind::Tcp => Ok(false),
        None => http_check(tcp, target).await,
        Some((config, name)) => {
            let _ = tcp.set_nodelay(true);
            let stream = TlsConnector::from(config)
                .connect(name, tcp)
                .await
                .map_err(|e| tls::describe_handshake_error(&e))?;
            http_check(stream, target).await
        }
    }
}

async fn http_check<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    target: &Target,
) -> Result<bool, String> {
    let request = http::request(&target.check, target.address, target.port);
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|e| format!("write: {}", describe_io(&e)))?;
    stream
        .flush()
        .await
        .map_err(|e| format!("write: {}", describe_io(&e)))?;
    let response = http::read_response(&mut stream, BODY_CAP).await?;
    evaluate(&target.check, &response)
}

/// Judges a response: status, then `body_contains`, then deep health.
pub(crate) fn evaluate(check: &HealthCheck, response: &Response) -> Result<bool, String> {
    if !check.expected_status.contains(&response.status) {
        let expected: Vec<String> = check
            .expected_status
            .iter()
            .map(|s| s.to_string())
            .collect();
        return Err(format!(
            "status {} (expected {})",
            response.status,
            expected.join(", ")
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
            return Err(reason);
        }
    }
    if check.deep_health {
        return deep_health(response);
    }
    Ok(false)
}

/// Deep health: the body is a JSON object whose `"status"` string is
/// `"healthy"` (pass), `"degraded"` (pass, degraded) or anything else (fail).
fn deep_health(response: &Response) -> Result<bool, String> {
    if response.truncated {
        return Err("deep health: body larger than 64 KiB".into());
    }
    let doc: serde_json::Value = serde_json::from_slice(&response.body)
        .map_err(|e| format!("deep health: invalid JSON ({e})"))?;
    match doc.get("status") {
        Some(serde_json::Value::String(s)) => match s.as_str() {
            "healthy" => Ok(false),
            "degraded" => Ok(true),
            other => Err(format!("deep health: status {}", shorten(other))),
        },
        Some(other) => Err(format!(
            "deep health: \"status\" is not a string ({})",
            shorten(&other.to_string())
        )),
        None => Err("deep health: no top-level \"status\" field".into()),
    }
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

    #[test]
    fn status_codes() {
        let mut c = check();
        assert_eq!(evaluate(&c, &resp(200, "")), Ok(false));
        assert_eq!(
            evaluate(&c, &resp(503, "")),
            Err("status 503 (expected 200)".into())
        );
        c.expected_status = vec![200, 204];
        assert_eq!(evaluate(&c, &resp(204, "")), Ok(false));
        assert_eq!(
            evaluate(&c, &resp(301, "")),
            Err("status 301 (expected 200, 204)".into())
        );
    }

    #[test]
    fn body_contains() {
        let mut c = check();
        c.body_contains = Some("ok".into());
        assert_eq!(evaluate(&c, &resp(200, "all ok here")), Ok(false));
        assert_eq!(
            evaluate(&c, &resp(200, "nope")),
            Err("body does not contain \"ok\"".into())
        );
        assert_eq!(
            evaluate(&c, &resp(503, "ok")),
            Err("status 503 (expected 200)".into()),
            "status is judged first"
        );
        let mut r = resp(200, "nope");
        r.truncated = true;
        assert_eq!(
            evaluate(&c, &r),
            Err("body does not contain \"ok\" (in its first 64 KiB)".into())
        );
    }

    #[test]
    fn deep_health_documents() {
        let mut c = check();
        c.deep_health = true;
        let cases: &[(&str, Result<bool, &str>)] = &[
            (r#"{"status":"healthy"}"#, Ok(false)),
            (r#"{"status":"degraded","checks":{"db":"slow"}}"#, Ok(true)),
            (
                r#"{"status":"unhealthy"}"#,
                Err("deep health: status \"unhealthy\""),
            ),
            (
                r#"{"status":"HEALTHY"}"#,
                Err("deep health: status \"HEALTHY\""),
            ),
            (
                r#"{"status":1}"#,
                Err("deep health: \"status\" is not a string (\"1\")"),
            ),
            (
                r#"{"state":"healthy"}"#,
                Err("deep health: no top-level \"status\" field"),
            ),
            (
                r#"["healthy"]"#,
                Err("deep health: no top-level \"status\" field"),
            ),
            (
                "ok",
                Err("deep health: invalid JSON (expected value at line 1 column 1)"),
            ),
            (
                "",
                Err("deep health: invalid JSON (EOF while parsing a value at line 1 column 0)"),
            ),
        ];
        for (body, want) in cases {
            assert_eq!(
                evaluate(&c, &resp(200, body)),
                want.map_err(String::from),
                "{body}"
            );
        }
        let mut r = resp(200, r#"{"status":"healthy"}"#);
        r.truncated = true;
        assert_eq!(
            evaluate(&c, &r),
            Err("deep health: body larger than 64 KiB".into())
        );
    }

    #[test]
    fn outcome_accessors() {
        let p = ProbeOutcome::Pass {
            latency: Duration::from_millis(3),
            degraded: false,
        };
        let f = ProbeOutcome::Fail {
            latency: Duration::from_millis(5),
            reason: "connection refused".into(),
        };
        assert!(p.is_pass() && !f.is_pass());
        assert_eq!(p.latency(), Duration::from_millis(3));
        assert_eq!(f.latency(), Duration::from_millis(5));
        assert_eq!((p.reason(), f.reason()), (None, Some("connection refused")));
    }
}
