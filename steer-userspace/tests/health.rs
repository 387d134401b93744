//! Health checks against real servers on 127.0.0.1 (ephemeral ports).
//!
//! Every server is a tokio task owned by a guard that aborts it on drop, and
//! every wait is bounded, so a failing test never hangs or leaks a listener.
//! Tests wait for events (a server seeing its n-th connection, a status
//! published on the watch channel), not for fixed sleeps.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use steer::config::{CheckKind, HealthCheck};
use steer::health::{
    probe, FailureKind, HealthMonitor, ProbeOutcome, Target, TargetStatus, TlsConfigs,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;

/// Generous bound for anything the tests wait for.
const WAIT: Duration = Duration::from_secs(15);

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

fn check(kind: CheckKind) -> HealthCheck {
    HealthCheck {
        path: "/health".into(),
        jitter: Duration::ZERO,
        ..HealthCheck::new(&format!("{kind}-check"), kind)
    }
}

fn target(key: &str, addr: SocketAddr, check: HealthCheck) -> Target {
    Target {
        key: key.to_string(),
        address: addr.ip(),
        port: addr.port(),
        check,
    }
}

/// A spawned server task, aborted (closing its listener) on drop.
struct Task(JoinHandle<()>);

impl Drop for Task {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A reply: raw bytes, optionally after a delay. `close`: how the server
/// ends the connection after it.
#[derive(Clone)]
struct Reply {
    delay: Duration,
    raw: Vec<u8>,
    close: Close,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Close {
    /// `shutdown` (a TLS server sends `close_notify` first), then close.
    Clean,
    /// Just drop the connection: for TLS, no `close_notify`.
    Abrupt,
    /// Close with a reset (`SO_LINGER` 0), without answering.
    Reset,
}

fn raw_reply(raw: &[u8]) -> Reply {
    Reply {
        delay: Duration::ZERO,
        raw: raw.to_vec(),
        close: Close::Clean,
    }
}

fn reply(status: u16, body: &str) -> Reply {
    Reply {
        delay: Duration::ZERO,
        close: Close::Clean,
        raw: format!(
            "HTTP/1.1 {status} Whatever\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .into_bytes(),
    }
}

fn json(status: u16, body: &str) -> Reply {
    Reply {
        delay: Duration::ZERO,
        close: Close::Clean,
        raw: format!(
            "HTTP/1.1 {status} Whatever\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .into_bytes(),
    }
}

type Handler = Arc<dyn Fn(u64, &str) -> Reply + Send + Sync>;

/// Waits until `rx` counts at least `n`; panics after [`WAIT`].
async fn wait_count(rx: &mut watch::Receiver<u64>, n: u64, what: &str) {
    match tokio::time::timeout(WAIT, rx.wait_for(|c| *c >= n)).await {
        Ok(Ok(_)) => return,
        Ok(Err(_)) => panic!("server gone waiting for {n} {what}"),
        Err(_) => {}
    }
    panic!("timed out waiting for {n} {what} (saw {})", *rx.borrow());
}

struct Server {
    addr: SocketAddr,
    /// Requests received (for TLS: connections past the handshake).
    requests: watch::Receiver<u64>,
    _task: Task,
}

impl Server {
    fn requests(&self) -> u64 {
        *self.requests.borrow()
    }

    async fn wait_requests(&mut self, n: u64) {
        wait_count(&mut self.requests, n, "requests").await;
    }
}

/// Reads a request head (up to the blank line, 16 KiB at most).
async fn read_head<S: AsyncRead + Unpin>(s: &mut S) -> String {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.len() < 16 * 1024 {
        match s.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    String::from_utf8_lossy(&buf).into_owned()
}

async fn serve_one<S: AsyncRead + AsyncWrite + Unpin>(
    mut s: S,
    n: u64,
    handler: Handler,
    tcp: impl FnOnce(S) -> Option<tokio::net::TcpStream>,
) {
    let head = read_head(&mut s).await;
    let reply = handler(n, &head);
    if !reply.delay.is_zero() {
        tokio::time::sleep(reply.delay).await;
    }
    let _ = s.write_all(&reply.raw).await;
    match reply.close {
        Close::Clean => {
            let _ = s.shutdown().await;
        }
        Close::Abrupt => {
            let _ = s.flush().await;
        }
        Close::Reset => {
            if let Some(tcp) = tcp(s) {
                let _ = tcp.set_zero_linger();
            }
        }
    }
}

/// An HTTP (or, with `tls`, HTTPS) server answering each request with
/// `handler(request index, request head)`.
async fn http_server(tls: Option<TlsAcceptor>, handler: Handler) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (count, requests) = watch::channel(0u64);
    let count = Arc::new(count);
    let task = tokio::spawn(async move {
        let mut conns = tokio::task::JoinSet::new();
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let handler = handler.clone();
            let count = count.clone();
            let tls = tls.clone();
            let next = move || {
                let mut n = 0;
                count.send_modify(|c| {
                    n = *c;
                    *c += 1;
                });
                n
            };
            conns.spawn(async move {
                match tls {
                    None => serve_one(stream, next(), handler, Some).await,
                    Some(acceptor) => {
                        if let Ok(s) = acceptor.accept(stream).await {
                            serve_one(s, next(), handler, |s| Some(s.into_inner().0)).await;
                        }
                    }
                }
            });
            while conns.try_join_next().is_some() {}
        }
    });
    Server {
        addr,
        requests,
        _task: Task(task),
    }
}

async fn fixed_server(r: Reply) -> Server {
    http_server(None, Arc::new(move |_, _| r.clone())).await
}

/// A TCP listener accepting and dropping connections, recording when.
struct TcpServer {
    addr: SocketAddr,
    accepted: Arc<Mutex<Vec<Instant>>>,
    count: watch::Receiver<u64>,
    _task: Task,
}

impl TcpServer {
    fn accepts(&self) -> u64 {
        *self.count.borrow()
    }

    async fn wait_accepts(&mut self, n: u64) {
        wait_count(&mut self.count, n, "connections").await;
    }
}

async fn tcp_server() -> TcpServer {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let accepted = Arc::new(Mutex::new(Vec::new()));
    let (tx, count) = watch::channel(0u64);
    let log = accepted.clone();
    let task = tokio::spawn(async move {
        loop {
            if let Ok((s, _)) = listener.accept().await {
                log.lock().expect("lock").push(Instant::now());
                tx.send_modify(|c| *c += 1);
                drop(s);
            }
        }
    });
    TcpServer {
        addr,
        accepted,
        count,
        _task: Task(task),
    }
}

/// A port nothing listens on.
async fn closed_port() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    drop(listener);
    addr
}

/// Probes `t` once, with its TLS configuration loaded off the runtime
/// first (as the monitor does).
async fn probe1(t: &Target) -> ProbeOutcome {
    let tls = TlsConfigs::load([&t.check]).await;
    probe(t, &tls).await
}

fn fail_reason(o: &ProbeOutcome) -> &str {
    match o {
        ProbeOutcome::Fail { reason, .. } => reason,
        ProbeOutcome::Pass { .. } => panic!("expected a failure, got {o:?}"),
    }
}

fn fail_kind(o: &ProbeOutcome) -> FailureKind {
    match o {
        ProbeOutcome::Fail { kind, .. } => *kind,
        ProbeOutcome::Pass { .. } => panic!("expected a failure, got {o:?}"),
    }
}

fn assert_pass(o: &ProbeOutcome, degraded: bool) {
    match o {
        ProbeOutcome::Pass { degraded: d, .. } => assert_eq!(*d, degraded, "{o:?}"),
        ProbeOutcome::Fail { reason, .. } => panic!("expected a pass, got failure: {reason}"),
    }
}

/// Waits until the published map satisfies `f`; panics after [`WAIT`].
async fn wait_published(
    rx: &mut watch::Receiver<BTreeMap<String, TargetStatus>>,
    what: &str,
    f: impl FnMut(&BTreeMap<String, TargetStatus>) -> bool,
) -> BTreeMap<String, TargetStatus> {
    match tokio::time::timeout(WAIT, rx.wait_for(f)).await {
        Ok(Ok(m)) => m.clone(),
        Ok(Err(_)) => panic!("status channel closed waiting for {what}"),
        Err(_) => panic!("timed out waiting for {what}"),
    }
}

// ---------------------------------------------------------------------------
// TCP
// ---------------------------------------------------------------------------

#[tokio::test]
async fn tcp_connect_passes() {
    let mut server = tcp_server().await;
    let outcome = probe1(&target("b", server.addr, check(CheckKind::Tcp))).await;
    assert_pass(&outcome, false);
    assert!(outcome.latency() < Duration::from_millis(500));
    server.wait_accepts(1).await;
    assert_eq!(server.accepted.lock().expect("lock").len(), 1);
}

#[tokio::test]
async fn tcp_closed_port_is_refused() {
    let outcome = probe1(&target("b", closed_port().await, check(CheckKind::Tcp))).await;
    assert_eq!(fail_reason(&outcome), "connection refused");
    assert_eq!(fail_kind(&outcome), FailureKind::Refused);
}

// ---------------------------------------------------------------------------
// HTTP
// ---------------------------------------------------------------------------

#[tokio::test]
async fn http_200_passes_and_sends_a_proper_request() {
    let heads = Arc::new(Mutex::new(Vec::new()));
    let seen = heads.clone();
    let server = http_server(
        None,
        Arc::new(move |_, head: &str| {
            seen.lock().expect("lock").push(head.to_string());
            reply(200, "ok")
        }),
    )
    .await;
    let outcome = probe1(&target("b", server.addr, check(CheckKind::Http))).await;
    assert_pass(&outcome, false);
    let heads = heads.lock().expect("lock").clone();
    assert_eq!(heads.len(), 1);
    let want = format!(
        "GET /health HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nUser-Agent: steer-health-check\r\n\
         Accept: */*\r\nConnection: close\r\n\r\n",
        server.addr.port()
    );
    assert_eq!(heads[0], want);
}

#[tokio::test]
async fn http_503_fails_with_the_status() {
    let server = fixed_server(reply(503, "maintenance")).await;
    let outcome = probe1(&target("b", server.addr, check(CheckKind::Http))).await;
    assert_eq!(fail_reason(&outcome), "status 503 (expected 200)");
    assert_eq!(fail_kind(&outcome), FailureKind::Status);

    let mut c = check(CheckKind::Http);
    c.expected_status = vec![200, 503];
    assert_pass(&probe1(&target("b", server.addr, c)).await, false);
}

#[tokio::test]
async fn http_body_must_contain_the_text() {
    let server = fixed_server(reply(200, "status: fine")).await;
    let mut c = check(CheckKind::Http);
    c.body_contains = Some("ok".into());
    let outcome = probe1(&target("b", server.addr, c.clone())).await;
    assert_eq!(fail_reason(&outcome), "body does not contain \"ok\"");
    assert_eq!(fail_kind(&outcome), FailureKind::Body);
    c.body_contains = Some("fine".into());
    assert_pass(&probe1(&target("b", server.addr, c)).await, false);
}

#[tokio::test]
async fn http_chunked_and_eof_delimited_bodies() {
    let chunked = fixed_server(raw_reply(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nall\r\n4\r\n ok!\r\n0\r\n\r\n",
    ))
    .await;
    let eof = fixed_server(raw_reply(b"HTTP/1.0 200 OK\r\n\r\nall ok!")).await;
    let mut c = check(CheckKind::Http);
    c.body_contains = Some("all ok".into());
    assert_pass(&probe1(&target("b", chunked.addr, c.clone())).await, false);
    assert_pass(&probe1(&target("b", eof.addr, c)).await, false);
}

#[tokio::test]
async fn http_slow_response_times_out() {
    let mut slow = reply(200, "ok");
    slow.delay = Duration::from_secs(5);
    let server = fixed_server(slow).await;
    let mut c = check(CheckKind::Http);
    c.timeout = Duration::from_millis(200);
    let outcome = probe1(&target("b", server.addr, c)).await;
    assert_eq!(fail_reason(&outcome), "timeout after 200ms");
    assert_eq!(fail_kind(&outcome), FailureKind::Timeout);
    assert!(
        outcome.latency() >= Duration::from_millis(200),
        "{outcome:?}"
    );
    assert!(outcome.latency() < Duration::from_secs(4), "{outcome:?}");
}

#[tokio::test]
async fn http_server_closing_without_answer() {
    let server = fixed_server(raw_reply(b"")).await;
    let outcome = probe1(&target("b", server.addr, check(CheckKind::Http))).await;
    assert_eq!(
        fail_reason(&outcome),
        "connection closed without a response"
    );
    assert_eq!(fail_kind(&outcome), FailureKind::Closed);
}

#[tokio::test]
async fn http_server_resetting_the_connection() {
    let mut reset = raw_reply(b"");
    reset.close = Close::Reset;
    let server = fixed_server(reset).await;
    let outcome = probe1(&target("b", server.addr, check(CheckKind::Http))).await;
    assert_eq!(fail_reason(&outcome), "connection reset");
    assert_eq!(fail_kind(&outcome), FailureKind::Reset);
}

#[tokio::test]
async fn http_server_answering_something_else() {
    let server = fixed_server(raw_reply(b"SSH-2.0-OpenSSH_9.2\r\n")).await;
    let outcome = probe1(&target("b", server.addr, check(CheckKind::Http))).await;
    assert_eq!(
        fail_reason(&outcome),
        "invalid response: invalid HTTP version parsed"
    );
    assert_eq!(fail_kind(&outcome), FailureKind::Protocol);
    // A body cut short of its Content-Length.
    let server = fixed_server(raw_reply(
        b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly this",
    ))
    .await;
    let outcome = probe1(&target("b", server.addr, check(CheckKind::Http))).await;
    assert_eq!(
        fail_reason(&outcome),
        "connection closed in the middle of the body"
    );
    assert_eq!(fail_kind(&outcome), FailureKind::Closed);
}

/// Bodies past 64 KiB: the first 64 KiB are judged, the rest is not read.
#[tokio::test]
async fn http_large_bodies_are_cut_at_64_kib() {
    let big = |tail: &str| {
        let mut body = "x".repeat(64 * 1024 - 2);
        body.push_str(tail);
        body.push_str(&"y".repeat(100 * 1024));
        reply(200, &body)
    };
    let inside = fixed_server(big("ok")).await;
    let outside = fixed_server(big("_x")).await;
    let mut c = check(CheckKind::Http);
    c.body_contains = Some("ok".into());
    assert_pass(&probe1(&target("b", inside.addr, c.clone())).await, false);
    let outcome = probe1(&target("b", outside.addr, c)).await;
    assert_eq!(
        fail_reason(&outcome),
        "body does not contain \"ok\" (in its first 64 KiB)"
    );
    let mut deep = check(CheckKind::Http);
    deep.deep_health = true;
    let outcome = probe1(&target("b", inside.addr, deep)).await;
    assert_eq!(
        fail_reason(&outcome),
        "deep health: body larger than 64 KiB"
    );
    assert_eq!(fail_kind(&outcome), FailureKind::DeepHealth);
}

#[tokio::test]
async fn deep_health_states() {
    let healthy = fixed_server(json(200, r#"{"status":"healthy","checks":{}}"#)).await;
    let degraded = fixed_server(json(200, r#"{"status":"degraded"}"#)).await;
    let unhealthy = fixed_server(json(200, r#"{"status":"unhealthy"}"#)).await;
    let invalid = fixed_server(json(200, "<html>ok</html>")).await;
    let missing = fixed_server(json(200, r#"{"ok":true}"#)).await;
    let mut c = check(CheckKind::Http);
    c.deep_health = true;
    let t = |s: &Server| target("b", s.addr, c.clone());
    assert_pass(&probe1(&t(&healthy)).await, false);
    assert_pass(&probe1(&t(&degraded)).await, true);
    let outcome = probe1(&t(&unhealthy)).await;
    assert_eq!(
        fail_reason(&outcome),
        "deep health: status \"unhealthy\" (up: healthy, ok, pass, up; degraded: degraded, warn)"
    );
    assert_eq!(fail_kind(&outcome), FailureKind::DeepHealth);
    assert_eq!(
        fail_reason(&probe1(&t(&invalid)).await),
        "deep health: invalid JSON (expected value at line 1 column 1)"
    );
    assert_eq!(
        fail_reason(&probe1(&t(&missing)).await),
        "deep health: no top-level \"status\" field"
    );
}

/// The default status lists: `ok`, `up` and the health-check draft's
/// `pass` are up, its `warn` is degraded, its `fail` is down with a reason
/// that names the value and what would have been accepted.
#[tokio::test]
async fn deep_health_default_statuses() {
    let mut c = check(CheckKind::Http);
    c.deep_health = true;
    for (status, degraded) in [
        ("ok", false),
        ("pass", false),
        ("up", false),
        ("warn", true),
    ] {
        let s = fixed_server(json(200, &format!(r#"{{"status":"{status}"}}"#))).await;
        let outcome = probe1(&target("b", s.addr, c.clone())).await;
        match outcome {
            ProbeOutcome::Pass { degraded: d, .. } => assert_eq!(d, degraded, "{status}"),
            ProbeOutcome::Fail { reason, .. } => panic!("{status:?} failed: {reason}"),
        }
    }
    let fail = fixed_server(json(
        200,
        r#"{"status":"fail","output":"db down","version":"1"}"#,
    ))
    .await;
    let outcome = probe1(&target("b", fail.addr, c)).await;
    assert_eq!(
        fail_reason(&outcome),
        "deep health: status \"fail\" (up: healthy, ok, pass, up; degraded: degraded, warn)"
    );
    assert_eq!(fail_kind(&outcome), FailureKind::DeepHealth);
}

/// `up_statuses` and `degraded_statuses` read from a config file replace the
/// defaults: a Spring-Boot-style `"UP"` passes, `"WARNING"` is degraded,
/// and `"healthy"` (no longer listed) fails naming the lists.
#[tokio::test]
async fn deep_health_statuses_from_the_config() {
    let text = r#"
[dataplane]
next_hop_mac = "02:00:00:00:00:01"
encap_source_v4 = "198.18.0.0/24"

[[regions]]
name = "eu"

[[backends]]
name = "eu-1"
address = "192.0.2.1"
region = "eu"

[[services]]
name = "web"
vip = "203.0.113.10"
port = 80
protocol = "tcp"
regions = ["eu"]
health_check = "actuator"

[[health_checks]]
name = "actuator"
kind = "http"
path = "/actuator/health"
jitter = "0s"
deep_health = true
up_statuses = ["UP"]
degraded_statuses = ["WARNING"]
"#;
    let cfg = match steer::config::Config::parse(text) {
        Ok(c) => c,
        Err(e) => panic!("config does not parse: {e}"),
    };
    let c = cfg.health_checks[0].clone();
    let up = fixed_server(json(200, r#"{"status":"UP"}"#)).await;
    let warning = fixed_server(json(200, r#"{"status":"WARNING"}"#)).await;
    let healthy = fixed_server(json(200, r#"{"status":"healthy"}"#)).await;
    assert_pass(&probe1(&target("b", up.addr, c.clone())).await, false);
    assert_pass(&probe1(&target("b", warning.addr, c.clone())).await, true);
    let outcome = probe1(&target("b", healthy.addr, c)).await;
    assert_eq!(
        fail_reason(&outcome),
        "deep health: status \"healthy\" (up: UP; degraded: WARNING)"
    );
    assert_eq!(fail_kind(&outcome), FailureKind::DeepHealth);
}

// ---------------------------------------------------------------------------
// HTTPS
// ---------------------------------------------------------------------------

/// A PEM file under the temp dir, removed on drop.
struct TempFile(PathBuf);

impl TempFile {
    fn new(tag: &str, contents: &str) -> TempFile {
        static N: AtomicU64 = AtomicU64::new(0);
        let path = std::env::temp_dir().join(format!(
            "steer-health-test-{}-{tag}-{}.pem",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        std::fs::write(&path, contents).expect("write temp file");
        TempFile(path)
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// An HTTPS server with a fresh self-signed certificate for `localhost` and
/// `127.0.0.1`, and that certificate as a PEM file.
async fn https_server(r: Reply) -> (Server, TempFile) {
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()])
        .expect("certificate");
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(rustls::pki_types::PrivatePkcs8KeyDer::from(
        ck.signing_key.serialize_der(),
    ));
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(vec![ck.cert.der().clone()], key)
        .expect("server config");
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let server = http_server(Some(acceptor), Arc::new(move |_, _| r.clone())).await;
    (server, TempFile::new("ca", &ck.cert.pem()))
}

#[tokio::test]
async fn https_with_ca_file_passes() {
    let (server, ca) = https_server(reply(200, "ok")).await;
    let mut c = check(CheckKind::Https);
    c.ca_file = Some(ca.0.clone());
    c.body_contains = Some("ok".into());
    assert_pass(&probe1(&target("b", server.addr, c.clone())).await, false);
    // SNI naming a name the certificate has.
    c.sni = Some("localhost".into());
    assert_pass(&probe1(&target("b", server.addr, c)).await, false);
    assert_eq!(server.requests(), 2);
}

/// A TLS server that closes without `close_notify` after a body delimited
/// by the end of the connection: the body is complete all the same.
#[tokio::test]
async fn https_eof_delimited_body_without_close_notify() {
    let mut r = raw_reply(b"HTTP/1.0 200 OK\r\n\r\nall ok!");
    r.close = Close::Abrupt;
    let (server, ca) = https_server(r).await;
    let mut c = check(CheckKind::Https);
    c.ca_file = Some(ca.0.clone());
    c.body_contains = Some("all ok".into());
    assert_pass(&probe1(&target("b", server.addr, c)).await, false);
}

#[tokio::test]
async fn https_ca_file_changes_are_picked_up() {
    let (server, ca) = https_server(reply(200, "ok")).await;
    let (_other, other_ca) = https_server(reply(200, "ok")).await;
    let mut c = check(CheckKind::Https);
    c.ca_file = Some(ca.0.clone());
    let t = target("b", server.addr, c.clone());
    let tls = TlsConfigs::load([&c]).await;
    assert_pass(&probe(&t, &tls).await, false);
    // Replace the bundle with another CA: the server's certificate is no
    // longer trusted once the configurations are refreshed.
    replace_ca(&ca, &other_ca);
    assert_pass(&probe(&t, &tls).await, false); // not refreshed yet
    let refresher = tls.clone();
    tokio::task::spawn_blocking(move || refresher.refresh())
        .await
        .expect("refresh");
    let outcome = probe(&t, &tls).await;
    assert_eq!(
        fail_reason(&outcome),
        "TLS: invalid peer certificate: BadSignature"
    );
    assert_eq!(fail_kind(&outcome), FailureKind::Tls);
}

/// Overwrites `ca` with the certificate of `other`, one byte longer than
/// before at least, so the change shows in the size whatever the
/// file system's timestamp granularity.
fn replace_ca(ca: &TempFile, other: &TempFile) {
    let before = std::fs::metadata(&ca.0).map_or(0, |m| m.len() as usize);
    let mut pem = std::fs::read_to_string(&other.0).expect("read");
    while pem.len() <= before {
        pem.push('\n');
    }
    std::fs::write(&ca.0, pem).expect("rewrite");
}

#[tokio::test]
async fn https_without_ca_file_is_an_unknown_issuer() {
    let (server, _ca) = https_server(reply(200, "ok")).await;
    let outcome = probe1(&target("b", server.addr, check(CheckKind::Https))).await;
    assert_eq!(
        fail_reason(&outcome),
        "TLS: invalid peer certificate: UnknownIssuer"
    );
    assert_eq!(fail_kind(&outcome), FailureKind::Tls);
    assert_eq!(server.requests(), 0);
}

#[tokio::test]
async fn https_insecure_accepts_any_certificate() {
    let (server, _ca) = https_server(json(200, r#"{"status":"degraded"}"#)).await;
    let mut c = check(CheckKind::Https);
    c.insecure = true;
    c.deep_health = true;
    // Even for a name the certificate does not have.
    c.sni = Some("other.example".into());
    assert_pass(&probe1(&target("b", server.addr, c)).await, true);
}

#[tokio::test]
async fn https_sni_mismatch_fails() {
    let (server, ca) = https_server(reply(200, "ok")).await;
    let mut c = check(CheckKind::Https);
    c.ca_file = Some(ca.0.clone());
    c.sni = Some("wrong.example".into());
    let outcome = probe1(&target("b", server.addr, c)).await;
    let reason = fail_reason(&outcome);
    assert!(
        reason.starts_with(
            "TLS: invalid peer certificate: certificate not valid for name \"wrong.example\""
        ),
        "{reason}"
    );
}

#[tokio::test]
async fn https_against_plain_http_fails_in_the_handshake() {
    // A plain HTTP server that answers the ClientHello with a 400.
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let _server = Task(tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let mut buf = [0u8; 512];
            let _ = s.read(&mut buf).await;
            let _ = s
                .write_all(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
                .await;
            let _ = s.shutdown().await;
        }
    }));
    let mut c = check(CheckKind::Https);
    c.insecure = true;
    let outcome = probe1(&target("b", addr, c)).await;
    assert_eq!(
        fail_reason(&outcome),
        "TLS: received corrupt message of type InvalidContentType"
    );
}

/// Sockets in TIME_WAIT (state 06 of /proc/net/tcp) with `port` at either
/// end.
fn time_wait_on(port: u16) -> usize {
    let table = std::fs::read_to_string("/proc/net/tcp").expect("read /proc/net/tcp");
    let port_of = |addr: &str| {
        addr.rsplit(':')
            .next()
            .and_then(|p| u16::from_str_radix(p, 16).ok())
    };
    table
        .lines()
        .skip(1)
        .filter(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            f.len() > 3
                && f[3] == "06"
                && (port_of(f[1]) == Some(port) || port_of(f[2]) == Some(port))
        })
        .count()
}

/// Probes close with a reset: even against servers that close first
/// (the side that would keep TIME_WAIT), none is left on either side.
#[tokio::test]
async fn probes_leave_no_time_wait() {
    let mut http = fixed_server(reply(200, "ok")).await;
    let (mut https, ca) = https_server(reply(200, "ok")).await;
    let h = target("b", http.addr, check(CheckKind::Http));
    let mut c = check(CheckKind::Https);
    c.ca_file = Some(ca.0.clone());
    let s = target("b", https.addr, c.clone());
    let tls = TlsConfigs::load([&c]).await;
    // Sockets of earlier users of these port numbers may linger.
    let before = (
        time_wait_on(http.addr.port()),
        time_wait_on(https.addr.port()),
    );
    for _ in 0..20 {
        assert_pass(&probe(&h, &tls).await, false);
    }
    for _ in 0..5 {
        assert_pass(&probe(&s, &tls).await, false);
    }
    http.wait_requests(20).await;
    https.wait_requests(5).await;
    let after = (
        time_wait_on(http.addr.port()),
        time_wait_on(https.addr.port()),
    );
    assert!(
        after.0 <= before.0,
        "http: {} TIME_WAIT, {} before",
        after.0,
        before.0
    );
    assert!(
        after.1 <= before.1,
        "https: {} TIME_WAIT, {} before",
        after.1,
        before.1
    );
}

// ---------------------------------------------------------------------------
// Monitor
// ---------------------------------------------------------------------------

/// The rise/fall counts, exactly, against a server the test switches between
/// healthy and failing. The server records, at each request, the monitor's
/// status *before* that probe (the previous probe of the target has been
/// recorded by then: probes of a target never overlap), so the assertions do
/// not depend on timing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rise_and_fall_exact_counts() {
    let healthy = Arc::new(AtomicBool::new(true));
    let monitor: Arc<Mutex<Option<HealthMonitor>>> = Arc::new(Mutex::new(None));
    type Log = Vec<(bool, TargetStatus)>;
    let log: Arc<Mutex<Log>> = Arc::new(Mutex::new(Vec::new()));
    let handler: Handler = {
        let (healthy, monitor, log) = (healthy.clone(), monitor.clone(), log.clone());
        Arc::new(move |_, _| {
            let before = monitor
                .lock()
                .expect("lock")
                .as_ref()
                .and_then(|m| m.snapshot().get("flip").cloned());
            let Some(before) = before else {
                return reply(503, "stopped"); // after the end of the test
            };
            let ok = healthy.load(Ordering::SeqCst);
            log.lock().expect("lock").push((ok, before));
            if ok {
                reply(200, "ok")
            } else {
                reply(503, "down")
            }
        })
    };
    let mut server = http_server(None, handler).await;

    let mut c = check(CheckKind::Http);
    c.rise = 2;
    c.fall = 3;
    c.interval = Duration::from_millis(200);
    c.timeout = Duration::from_millis(150);
    let (tx, mut rx) = watch::channel(BTreeMap::new());
    {
        // Start empty and add the target under the lock, so the server
        // always finds the monitor.
        let mut m = monitor.lock().expect("lock");
        let mon = m.insert(HealthMonitor::start(Vec::new(), tx));
        mon.set_targets(vec![target("flip", server.addr, c)]);
    }
    let snapshot = || {
        monitor
            .lock()
            .expect("lock")
            .as_ref()
            .map(|m| m.snapshot()["flip"].clone())
            .expect("monitor")
    };

    // The 3rd request comes after the 2nd probe was recorded.
    server.wait_requests(3).await;
    assert!(snapshot().probes >= 2);
    assert!(snapshot().up);
    healthy.store(false, Ordering::SeqCst);
    let down = wait_published(&mut rx, "down", |m| m.get("flip").is_some_and(|s| !s.up)).await;
    assert_eq!(
        down["flip"].last_failure.as_deref(),
        Some("status 503 (expected 200)")
    );
    healthy.store(true, Ordering::SeqCst);
    wait_published(&mut rx, "up again", |m| {
        m.get("flip")
            .is_some_and(|s| s.up && s.probes > down["flip"].probes)
    })
    .await;

    let final_status = snapshot();
    if let Some(m) = monitor.lock().expect("lock").take() {
        m.stop();
    }
    drop(server);

    // Requests beyond `final_status.probes` were still in flight.
    let mut log = log.lock().expect("lock").clone();
    log.truncate(final_status.probes as usize);
    assert_eq!(log.len() as u64, final_status.probes);

    // Replay the served answers through a reference model.
    let (mut up, mut fails, mut passes, mut total_fail) = (true, 0, 0, 0);
    for (i, (ok, before)) in log.iter().enumerate() {
        assert_eq!(before.probes, i as u64, "probe {i}: no probe was lost");
        assert_eq!(before.failures, total_fail, "probe {i}: failures");
        assert_eq!(before.up, up, "probe {i}: up");
        if *ok {
            (fails, passes) = (0, passes + 1);
            up |= passes >= 2;
        } else {
            (fails, passes, total_fail) = (fails + 1, 0, total_fail + 1);
            up &= fails < 3;
        }
    }
    assert_eq!((final_status.up, final_status.failures), (up, total_fail));
    assert!(final_status.up);

    // And spelled out: after the first failing answer...
    let status_after = |i: usize| {
        log.get(i + 1)
            .map_or(final_status.clone(), |(_, s)| s.clone())
    };
    let f0 = log
        .iter()
        .position(|(ok, _)| !ok)
        .expect("a failing answer");
    assert!(f0 >= 2);
    assert!(!log[f0 + 1].0 && !log[f0 + 2].0, "three failing answers");
    assert!(status_after(f0).up, "1 failure keeps it up");
    assert!(status_after(f0 + 1).up, "2 failures keep it up");
    assert!(!status_after(f0 + 2).up, "the 3rd failure takes it down");
    let r0 = f0 + log[f0..].iter().position(|(ok, _)| *ok).expect("recovery");
    assert!(log[r0 + 1].0, "two passing answers");
    assert!(!status_after(r0).up, "1 pass keeps it down");
    assert!(status_after(r0 + 1).up, "the 2nd pass brings it up");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn degraded_is_surfaced_and_published() {
    let server = fixed_server(json(200, r#"{"status":"degraded"}"#)).await;
    let mut c = check(CheckKind::Http);
    c.deep_health = true;
    c.interval = Duration::from_millis(100);
    c.timeout = Duration::from_millis(80);
    let (tx, mut rx) = watch::channel(BTreeMap::new());
    let monitor = HealthMonitor::start(vec![target("d", server.addr, c)], tx);
    let m = wait_published(&mut rx, "degraded", |m| {
        m.get("d").is_some_and(|s| s.degraded)
    })
    .await;
    assert!(m["d"].up);
    assert_eq!(m["d"].failures, 0);
    let h = monitor.latency_histogram();
    assert!(h.count >= 1);
    assert_eq!(h.buckets.len(), 13);
    assert_eq!(h.buckets.last().map(|b| b.1), Some(h.count));
    monitor.stop();
}

/// A backend with two checks has target keys `m/deep` and `m/tcp`, none
/// named `m`: `backend_degraded` finds its degraded target all the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn degraded_backend_with_two_checks() {
    let deep_server = fixed_server(json(200, r#"{"status":"degraded"}"#)).await;
    let tcp = tcp_server().await;
    let mut deep = check(CheckKind::Http);
    deep.deep_health = true;
    deep.interval = Duration::from_millis(100);
    deep.timeout = Duration::from_millis(80);
    let mut plain = check(CheckKind::Tcp);
    plain.interval = Duration::from_millis(100);
    plain.timeout = Duration::from_millis(80);
    let (tx, mut rx) = watch::channel(BTreeMap::new());
    let monitor = HealthMonitor::start(
        vec![
            target("m/deep", deep_server.addr, deep),
            target("m/tcp", tcp.addr, plain),
        ],
        tx,
    );
    let m = wait_published(&mut rx, "m/deep degraded", |m| {
        m.get("m/deep").is_some_and(|s| s.degraded)
    })
    .await;
    assert!(!m.contains_key("m"), "no target is keyed by the bare name");
    assert!(!m["m/tcp"].degraded);
    assert!(steer::health::backend_up(&m, "m"));
    assert!(steer::health::backend_degraded(&m, "m"));
    monitor.stop();
}

/// Failed probes are counted per backend and kind, against real servers
/// failing in different ways; counts never go down on a reload.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probe_failures_by_backend_and_reason() {
    let refused = closed_port().await;
    let status = fixed_server(reply(503, "no")).await;
    let unhealthy = fixed_server(json(200, r#"{"status":"unhealthy"}"#)).await;
    let closing = fixed_server(raw_reply(b"")).await;
    let fine = tcp_server().await;
    let with = |kind: CheckKind, deep: bool| {
        let mut c = check(kind);
        c.deep_health = deep;
        c.fall = 1;
        c.interval = Duration::from_millis(200);
        c.timeout = Duration::from_millis(150);
        c
    };
    let targets = vec![
        target("refused", refused, with(CheckKind::Tcp, false)),
        target("multi/http", status.addr, with(CheckKind::Http, false)),
        target("multi/deep", unhealthy.addr, with(CheckKind::Http, true)),
        target("closed", closing.addr, with(CheckKind::Http, false)),
        target("ok", fine.addr, with(CheckKind::Tcp, false)),
    ];
    let (tx, mut rx) = watch::channel(BTreeMap::new());
    let mut monitor = HealthMonitor::start(targets.clone(), tx);
    let failing = ["refused", "multi/http", "multi/deep", "closed"];
    wait_published(&mut rx, "the failing targets down", |m| {
        failing.iter().all(|k| m.get(*k).is_some_and(|s| !s.up))
    })
    .await;

    let before = monitor.probe_failures();
    let snapshot = monitor.snapshot();
    let after = monitor.probe_failures();
    assert_eq!(
        before.keys().collect::<Vec<_>>(),
        ["closed", "multi", "ok", "refused"]
    );
    let all: Vec<&str> = FailureKind::ALL.iter().map(|k| k.as_str()).collect();
    for (backend, counts) in &before {
        assert_eq!(counts.keys().copied().collect::<Vec<_>>().len(), all.len());
        assert!(all.iter().all(|k| counts.contains_key(k)), "{backend}");
    }
    let expected: [(&str, &[&str]); 4] = [
        ("refused", &["refused"]),
        ("multi", &["status", "deep_health"]),
        ("closed", &["closed"]),
        ("ok", &[]),
    ];
    for (backend, kinds) in expected {
        for (kind, n) in &before[backend] {
            if kinds.contains(kind) {
                assert!(*n >= 1, "{backend} {kind}: {n}");
            } else {
                assert_eq!(*n, 0, "{backend} {kind}");
            }
        }
        // The same failures as the statuses count, between two reads.
        let total = |m: &BTreeMap<String, BTreeMap<&str, u64>>| m[backend].values().sum::<u64>();
        let status_total: u64 = snapshot
            .iter()
            .filter(|(k, _)| steer::health::backend_of_key(k) == backend)
            .map(|(_, s)| s.failures)
            .sum();
        assert!(
            total(&before) <= status_total && status_total <= total(&after),
            "{backend}: {} <= {status_total} <= {}",
            total(&before),
            total(&after)
        );
    }

    // A reload that restarts multi/http (changed check) and removes
    // refused: multi keeps its counts, refused is gone.
    let mut reload = targets.clone();
    reload.retain(|t| t.key != "refused");
    for t in &mut reload {
        if t.key == "multi/http" {
            t.check.fall = 2;
        }
    }
    monitor.set_targets(reload);
    assert_eq!(monitor.snapshot()["multi/http"].failures, 0, "restarted");
    let reloaded = monitor.probe_failures();
    assert_eq!(
        reloaded.keys().collect::<Vec<_>>(),
        ["closed", "multi", "ok"]
    );
    for (kind, n) in &after["multi"] {
        assert!(reloaded["multi"][kind] >= *n, "multi {kind} went down");
    }
    monitor.stop();
}

/// The monitor builds TLS configurations off the probes: once loaded, the
/// CA file can even be removed and probes go on passing (they read no
/// file). A new CA file is picked up at the next `set_targets`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn monitor_https_probes_use_cached_tls_configs() {
    let (mut server, ca) = https_server(reply(200, "ok")).await;
    let (_other, other_ca) = https_server(reply(200, "ok")).await;
    let mut c = check(CheckKind::Https);
    c.ca_file = Some(ca.0.clone());
    c.rise = 1;
    c.fall = 1;
    c.interval = Duration::from_millis(100);
    c.timeout = Duration::from_millis(80);
    let targets = vec![target("s", server.addr, c)];
    let (tx, mut rx) = watch::channel(BTreeMap::new());
    let mut monitor = HealthMonitor::start(targets.clone(), tx);
    // The 2nd request comes after the 1st probe was recorded.
    server.wait_requests(2).await;
    assert_eq!(monitor.snapshot()["s"].failures, 0);

    std::fs::remove_file(&ca.0).expect("remove the CA file");
    let n = server.requests();
    server.wait_requests(n + 4).await;
    let s = monitor.snapshot()["s"].clone();
    assert!(s.up, "{s:?}");
    assert_eq!(s.failures, 0, "a probe read the removed CA file: {s:?}");
    assert!(s.probes >= 4, "{s:?}");

    // Another CA: the server's certificate is no longer trusted.
    replace_ca(&ca, &other_ca);
    monitor.set_targets(targets);
    let down = wait_published(&mut rx, "down", |m| m.get("s").is_some_and(|s| !s.up)).await;
    assert_eq!(
        down["s"].last_failure.as_deref(),
        Some("TLS: invalid peer certificate: BadSignature")
    );
    assert!(monitor.probe_failures()["s"]["tls"] >= 1);
    monitor.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn initial_state_is_up_until_fall_failures() {
    let closed = closed_port().await;
    let mut c = check(CheckKind::Tcp);
    c.fall = 3;
    c.interval = Duration::from_millis(250);
    c.timeout = Duration::from_millis(200);
    let (tx, mut rx) = watch::channel(BTreeMap::new());
    let monitor = HealthMonitor::start(vec![target("gone", closed, c)], tx);
    // Published at start: unknown, counted as up.
    let first = wait_published(&mut rx, "initial map", |m| m.contains_key("gone")).await;
    assert!(first["gone"].up);
    let down = wait_published(&mut rx, "down", |m| !m["gone"].up).await;
    assert_eq!(down["gone"].failures, 3, "down after exactly 3 failures");
    assert_eq!(down["gone"].probes, 3);
    assert_eq!(
        down["gone"].last_failure.as_deref(),
        Some("connection refused")
    );
    monitor.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_keeps_unchanged_targets_and_stops_removed_ones() {
    let mut a = tcp_server().await;
    let mut b = tcp_server().await;
    let c = tcp_server().await;
    let (a_addr, b_addr, c_addr) = (a.addr, b.addr, c.addr);
    let mut chk = check(CheckKind::Tcp);
    chk.interval = Duration::from_millis(50);
    chk.timeout = Duration::from_millis(40);
    let (tx, mut rx) = watch::channel(BTreeMap::new());
    let mut monitor = HealthMonitor::start(
        vec![
            target("a", a_addr, chk.clone()),
            target("b", b_addr, chk.clone()),
            target("b", c_addr, chk.clone()), // duplicate key: ignored
        ],
        tx,
    );
    // The 4th connection of a target comes after its 3rd probe was
    // recorded.
    a.wait_accepts(4).await;
    b.wait_accepts(4).await;
    let s = monitor.snapshot();
    assert!(s["a"].probes >= 3 && s["b"].probes >= 3, "{s:?}");
    assert_eq!(monitor.snapshot().len(), 2);

    let a_before = monitor.snapshot()["a"].probes;
    monitor.set_targets(vec![
        target("a", a_addr, chk.clone()),
        target("c", c_addr, chk.clone()),
    ]);
    let s = monitor.snapshot();
    assert_eq!(s.keys().collect::<Vec<_>>(), ["a", "c"]);
    assert!(s["a"].probes >= a_before, "a kept its state");
    assert!(s["c"].probes <= 1, "c is new");
    let published = wait_published(&mut rx, "new key set", |m| {
        m.contains_key("c") && !m.contains_key("b")
    })
    .await;
    assert_eq!(published.len(), 2);

    // b is no longer probed, while a (same interval) goes on: after two
    // more probes of a (a connection of b in flight at the reload has
    // landed by then), six more of a and none of b.
    let a_now = a.accepts();
    a.wait_accepts(a_now + 2).await;
    let b_count = b.accepts();
    a.wait_accepts(a_now + 8).await;
    assert_eq!(b.accepts(), b_count, "b still probed");
    assert_eq!(
        b.accepted.lock().expect("lock").len() as u64,
        b_count,
        "b still probed"
    );

    // Changing a's check restarts it from the initial state.
    a.wait_accepts(a_before + 4).await;
    assert!(monitor.snapshot()["a"].probes >= a_before + 3);
    let mut chk2 = chk.clone();
    chk2.fall = 5;
    monitor.set_targets(vec![
        target("a", a_addr, chk2),
        target("c", c_addr, chk.clone()),
    ]);
    assert!(monitor.snapshot()["a"].probes <= 1, "a restarted");
    monitor.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_cancels_all_probes() {
    let mut server = tcp_server().await;
    // A second monitor, left running, is the clock: its probes show time
    // passing on the same runtime while the stopped one stays silent.
    let mut clock = tcp_server().await;
    let mut c = check(CheckKind::Tcp);
    c.interval = Duration::from_millis(20);
    c.timeout = Duration::from_millis(15);
    let (tx, _rx) = watch::channel(BTreeMap::new());
    let targets = (0..10)
        .map(|i| target(&format!("t{i}"), server.addr, c.clone()))
        .collect();
    let monitor = HealthMonitor::start(targets, tx);
    let (clock_tx, _clock_rx) = watch::channel(BTreeMap::new());
    let witness = HealthMonitor::start(vec![target("clock", clock.addr, c.clone())], clock_tx);
    server.wait_accepts(30).await;
    monitor.stop();
    // Connections in flight at the stop land within a few intervals.
    let t0 = clock.accepts();
    clock.wait_accepts(t0 + 3).await;
    let n = server.accepted.lock().expect("lock").len();
    // Ten more intervals: ~100 probes if the monitor were still running.
    clock.wait_accepts(t0 + 13).await;
    assert_eq!(server.accepted.lock().expect("lock").len(), n);
    witness.stop();
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// With jitter, targets get different phases; each target's probes stay on
/// its own fixed grid (no drift), whatever the probe durations.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jitter_spreads_phases_without_drift() {
    const TARGETS: usize = 16;
    let interval = Duration::from_millis(50);
    let mut c = check(CheckKind::Tcp);
    c.interval = interval;
    c.timeout = Duration::from_millis(40);
    c.jitter = Duration::from_millis(45);
    let mut servers = Vec::new();
    let mut targets = Vec::new();
    for i in 0..TARGETS {
        let server = tcp_server().await;
        targets.push(target(&format!("t{i}"), server.addr, c.clone()));
        servers.push(server);
    }
    let (tx, _rx) = watch::channel(BTreeMap::new());
    let start = Instant::now();
    let monitor = HealthMonitor::start(targets, tx);
    // About 1.5 s of probes: 30 per target.
    for server in &mut servers {
        server.wait_accepts(30).await;
    }
    monitor.stop();

    let iv = interval.as_secs_f64();
    let mut phases = Vec::new();
    for (i, server) in servers.iter().enumerate() {
        let times: Vec<f64> = server
            .accepted
            .lock()
            .expect("lock")
            .iter()
            .map(|t| t.duration_since(start).as_secs_f64())
            .collect();
        assert!(times.len() >= 20, "target {i}: only {} probes", times.len());
        // Offset of each probe from the grid anchored at the first one,
        // after snapping to the nearest tick.
        let t0 = times[0];
        let offsets: Vec<f64> = times
            .iter()
            .map(|t| {
                let k = ((t - t0) / iv).round();
                t - t0 - k * iv
            })
            .collect();
        let third = offsets.len() / 3;
        let early = median(offsets[..third].to_vec());
        let late = median(offsets[offsets.len() - third..].to_vec());
        assert!(
            (late - early).abs() < 0.010,
            "target {i} drifted: {:.1} ms",
            (late - early) * 1e3
        );
        // Ticks are interval-spaced: ~ one probe per interval.
        let span = times[times.len() - 1] - t0;
        let ticks = (span / iv).round() as usize + 1;
        assert!(
            times.len() + 2 >= ticks && times.len() <= ticks,
            "target {i}: {} probes over {ticks} ticks",
            times.len()
        );
        // The grid's phase relative to the monitor start.
        let anchored: Vec<f64> = times
            .iter()
            .map(|t| {
                let k = ((t - t0) / iv).round();
                t - k * iv
            })
            .collect();
        phases.push(median(anchored) % iv);
    }
    let lo = phases.iter().copied().fold(f64::MAX, f64::min);
    let hi = phases.iter().copied().fold(f64::MIN, f64::max);
    assert!(
        hi - lo > 0.015,
        "phases not spread: {:?} ms",
        phases.iter().map(|p| (p * 1e3).round()).collect::<Vec<_>>()
    );
}
