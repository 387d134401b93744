//! The external analysis of staged shifts: while a shift with an analysis
//! URL runs, the URL is polled every [`POLL`] and its verdict is handed to
//! the owner ([`Event::Analysis`]), whose shift tick rolls back on a
//! failure. Like Argo Rollouts' web metric and Flagger's webhooks: the
//! endpoint judges whatever it measures; steer only acts on the verdict.
//!
//! The endpoint answers `GET` with a 2xx status and a JSON object
//! `{"result": "pass" | "fail" | "inconclusive", "reason": "..."}`
//! (`reason` optional). `fail` rolls back at once. An answer that is not
//! that (no connection, a timeout, another status, another body) is an
//! error; [`ERROR_LIMIT`] errors in a row count as a failure (Argo's
//! `consecutiveErrorLimit`), fewer are inconclusive.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::Empty;
use hyper::body::Bytes;
use hyper::header::{self, HeaderValue};
use hyper::Request;
use steer_policy::shift::{parse_analysis_url as parse_url, Verdict};
use tokio::sync::{mpsc, watch};

use super::owner::{Event, Published};

/// How often each endpoint is polled.
pub const POLL: Duration = Duration::from_secs(1);
/// How long one poll may take (connect, request, answer).
pub const TIMEOUT: Duration = Duration::from_secs(2);
/// Errors in a row that count as a failure.
pub const ERROR_LIMIT: u32 = 3;
/// The largest answer read.
const BODY_CAP: usize = 16 * 1024;

/// The verdict in an endpoint's answer, or why the answer is not one.
pub fn judge(status: u16, body: &[u8]) -> Result<Verdict, String> {
    if !(200..300).contains(&status) {
        return Err(format!("status {status}"));
    }
    let v: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| format!("the body is not JSON ({e})"))?;
    let reason = v
        .get("reason")
        .and_then(serde_json::Value::as_str)
        .map(str::to_string);
    match v.get("result").and_then(serde_json::Value::as_str) {
        Some("pass") => Ok(Verdict::Pass),
        Some("fail") => Ok(Verdict::Fail(
            reason.unwrap_or_else(|| "no reason given".to_string()),
        )),
        Some("inconclusive") => Ok(Verdict::Unknown),
        Some(other) => Err(format!(
            "\"result\" is {other:?}, not \"pass\", \"fail\" or \"inconclusive\""
        )),
        None => Err("the JSON has no \"result\" string".to_string()),
    }
}

/// One poll of `url`.
pub async fn poll(url: &str) -> Result<Verdict, String> {
    let u = parse_url(url)?;
    let once = async {
        let addr = tokio::net::lookup_host((u.host.as_str(), u.port))
            .await
            .map_err(|e| format!("resolving {}: {e}", u.host))?
            .next()
            .ok_or_else(|| format!("{} has no address", u.host))?;
        let stream = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connecting to {addr}: {e}"))?;
        let host = if u.host.contains(':') {
            format!("[{}]:{}", u.host, u.port)
        } else {
            format!("{}:{}", u.host, u.port)
        };
        let host = HeaderValue::from_str(&host).map_err(|_| format!("invalid host {host:?}"))?;
        let req = Request::get(u.target.as_str())
            .header(header::HOST, host)
            .header(header::USER_AGENT, "steer-shift-analysis")
            .header(header::ACCEPT, "application/json")
            .header(header::CONNECTION, "close")
            .body(Empty::<Bytes>::new())
            .map_err(|e| format!("invalid path {:?}: {e}", u.target))?;
        let r = crate::health::http::exchange(stream, req, BODY_CAP)
            .await
            .map_err(|f| f.reason)?;
        if r.truncated {
            return Err(format!("the answer is longer than {BODY_CAP} bytes"));
        }
        judge(r.status, &r.body)
    };
    tokio::time::timeout(TIMEOUT, once)
        .await
        .map_err(|_| format!("no answer within {}s", TIMEOUT.as_secs()))?
}

/// Errors in a row per endpoint, turned into verdicts.
#[derive(Default)]
pub struct Streak {
    errors: BTreeMap<(String, String), u32>,
}

impl Streak {
    /// The verdict for one poll's outcome of `url` for `service`.
    pub fn verdict(&mut self, service: &str, url: &str, r: Result<Verdict, String>) -> Verdict {
        let key = (service.to_string(), url.to_string());
        match r {
            Ok(v) => {
                self.errors.remove(&key);
                v
            }
            Err(e) => {
                let n = self.errors.entry(key).or_default();
                *n += 1;
                if *n >= ERROR_LIMIT {
                    Verdict::Fail(format!(
                        "the analysis endpoint {url} failed {n} polls in a row (last: {e})"
                    ))
                } else {
                    Verdict::Unknown
                }
            }
        }
    }

    /// Forgets endpoints no longer polled.
    pub fn retain(&mut self, polled: &[(String, String)]) {
        self.errors.retain(|k, _| polled.contains(k));
    }
}

/// Polls the analysis endpoints of the running shifts until the owner's
/// queue closes.
pub async fn run(mut published: watch::Receiver<Arc<Published>>, events: mpsc::Sender<Event>) {
    let mut every = tokio::time::interval(POLL);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut streak = Streak::default();
    loop {
        every.tick().await;
        let targets: Vec<(String, String)> = published
            .borrow_and_update()
            .shifts
            .iter()
            .filter(|(_, s)| s.is_active())
            .filter_map(|(svc, s)| {
                s.plan
                    .rollback
                    .analysis_url
                    .clone()
                    .map(|u| (svc.clone(), u))
            })
            .collect();
        streak.retain(&targets);
        for (service, url) in targets {
            let r = poll(&url).await;
            if let Err(e) = &r {
                tracing::debug!(service = %service, url = %url, error = %e, "analysis poll failed");
            }
            let verdict = streak.verdict(&service, &url, r);
            let ev = Event::Analysis {
                service,
                url,
                verdict,
            };
            if events.send(ev).await.is_err() {
                return;
            }
        }
        if events.is_closed() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use steer_policy::shift::AnalysisUrl as Url;

    #[test]
    fn urls_are_split_into_host_port_and_target() {
        assert_eq!(
            parse_url("http://127.0.0.1:8080/a/b?run=3").unwrap(),
            Url {
                host: "127.0.0.1".into(),
                port: 8080,
                target: "/a/b?run=3".into()
            }
        );
        assert_eq!(
            parse_url("http://[::1]/").unwrap(),
            Url {
                host: "::1".into(),
                port: 80,
                target: "/".into()
            }
        );
        assert_eq!(parse_url("http://x.example?q").unwrap().target, "/?q");
        assert!(parse_url("https://x/")
            .unwrap_err()
            .contains("only http://"));
        assert!(parse_url("http://:80/").unwrap_err().contains("no host"));
        assert!(parse_url("http://h:0/").unwrap_err().contains("port \"0\""));
        assert!(parse_url("http://[::1/").unwrap_err().contains("unclosed"));
    }

    #[test]
    fn answers_are_judged() {
        assert_eq!(judge(200, br#"{"result":"pass"}"#), Ok(Verdict::Pass));
        assert_eq!(
            judge(200, br#"{"result":"fail","reason":"p99 1.2s > 500ms"}"#),
            Ok(Verdict::Fail("p99 1.2s > 500ms".into()))
        );
        assert_eq!(
            judge(204, br#"{"result":"inconclusive"}"#),
            Ok(Verdict::Unknown)
        );
        assert_eq!(
            judge(503, br#"{"result":"pass"}"#).unwrap_err(),
            "status 503"
        );
        assert!(judge(200, b"ok").unwrap_err().contains("not JSON"));
        assert!(judge(200, br#"{"status":"pass"}"#)
            .unwrap_err()
            .contains("no \"result\""));
        assert!(judge(200, br#"{"result":"maybe"}"#)
            .unwrap_err()
            .contains("\"maybe\""));
    }

    #[test]
    fn three_errors_in_a_row_fail_and_an_answer_resets_the_count() {
        let mut s = Streak::default();
        let err = || Err("connection refused".to_string());
        assert_eq!(s.verdict("web", "u", err()), Verdict::Unknown);
        assert_eq!(s.verdict("web", "u", err()), Verdict::Unknown);
        assert_eq!(s.verdict("web", "u", Ok(Verdict::Pass)), Verdict::Pass);
        assert_eq!(s.verdict("web", "u", err()), Verdict::Unknown);
        assert_eq!(s.verdict("web", "u", err()), Verdict::Unknown);
        match s.verdict("web", "u", err()) {
            Verdict::Fail(why) => assert!(
                why.contains("failed 3 polls in a row (last: connection refused)"),
                "{why}"
            ),
            v => panic!("{v:?}"),
        }
    }

    /// A real endpoint on loopback: pass, then fail with its reason.
    #[tokio::test]
    async fn a_loopback_endpoint_is_polled() {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let server = tokio::spawn(async move {
            for body in [
                r#"{"result":"pass"}"#,
                r#"{"result":"fail","reason":"error rate 7%"}"#,
            ] {
                let (mut c, _) = l.accept().await.unwrap();
                let mut buf = vec![0u8; 4096];
                let n = c.read(&mut buf).await.unwrap();
                let head = String::from_utf8_lossy(&buf[..n]).to_string();
                assert!(head.starts_with("GET /check?x=1 HTTP/1.1\r\n"), "{head}");
                let resp = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                );
                c.write_all(resp.as_bytes()).await.unwrap();
            }
        });
        let url = format!("http://{addr}/check?x=1");
        assert_eq!(poll(&url).await, Ok(Verdict::Pass));
        assert_eq!(poll(&url).await, Ok(Verdict::Fail("error rate 7%".into())));
        server.await.unwrap();
        // Nothing listens any more: an error, not a verdict.
        assert!(poll(&url).await.is_err());
    }
}
