//! Health checks against real servers on 127.0.0.1 (ephemeral ports).
//!
//! Every server is a tokio task owned by a guard that aborts it on drop, and
//! every wait is bounded, so a failing test never hangs or leaks a listener.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use steer::config::{CheckKind, HealthCheck};
use steer::health::{probe, HealthMonitor, ProbeOutcome, Target, TargetStatus};
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

/// A reply: raw bytes, optionally after a delay.
#[derive(Clone)]
struct Reply {
    delay: Duration,
    raw: Vec<u8>,
}

fn reply(status: u16, body: &str) -> Reply {
    Reply {
        delay: Duration::ZERO,
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
        raw: format!(
            "HTTP/1.1 {status} Whatever\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .into_bytes(),
    }
}

type Handler = Arc<dyn Fn(u64, &str) -> Reply + Send + Sync>;

struct Server {
    addr: SocketAddr,
    requests: Arc<AtomicU64>,
    _task: Task,
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

async fn serve_one<S: AsyncRead + AsyncWrite + Unpin>(mut s: S, n: u64, handler: Handler) {
    let head = read_head(&mut s).await;
    let reply = handler(n, &head);
    if !reply.delay.is_zero() {
        tokio::time::sleep(reply.delay).await;
    }
    let _ = s.write_all(&reply.raw).await;
    let _ = s.shutdown().await;
}

/// An HTTP (or, with `tls`, HTTPS) server answering each request with
/// `handler(request index, request head)`.
async fn http_server(tls: Option<TlsAcceptor>, handler: Handler) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let requests = Arc::new(AtomicU64::new(0));
    let count = requests.clone();
    let task = tokio::spawn(async move {
        let mut conns = tokio::task::JoinSet::new();
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let handler = handler.clone();
            let count = count.clone();
            let tls = tls.clone();
            conns.spawn(async move {
                match tls {
                    None => {
                        let n = count.fetch_add(1, Ordering::SeqCst);
                        serve_one(stream, n, handler).await;
                    }
                    Some(acceptor) => {
                        if let Ok(s) = acceptor.accept(stream).await {
                            let n = count.fetch_add(1, Ordering::SeqCst);
                            serve_one(s, n, handler).await;
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
async fn tcp_server() -> (SocketAddr, Arc<Mutex<Vec<Instant>>>, Task) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let accepted = Arc::new(Mutex::new(Vec::new()));
    let log = accepted.clone();
    let task = tokio::spawn(async move {
        loop {
            if let Ok((s, _)) = listener.accept().await {
                log.lock().expect("lock").push(Instant::now());
                drop(s);
            }
        }
    });
    (addr, accepted, Task(task))
}

fn fail_reason(o: &ProbeOutcome) -> &str {
    match o {
        ProbeOutcome::Fail { reason, .. } => reason,
        ProbeOutcome::Pass { .. } => panic!("expected a failure, got {o:?}"),
    }
}

fn assert_pass(o: &ProbeOutcome, degraded: bool) {
    match o {
        ProbeOutcome::Pass { degraded: d, .. } => assert_eq!(*d, degraded, "{o:?}"),
        ProbeOutcome::Fail { reason, .. } => panic!("expected a pass, got failure: {reason}"),
    }
}

/// Polls `f` every 5 ms until it holds; panics after [`WAIT`].
async fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
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
    let (addr, accepted, _server) = tcp_server().await;
    let outcome = probe(&target("b", addr, check(CheckKind::Tcp))).await;
    assert_pass(&outcome, false);
    assert!(outcome.latency() < Duration::from_millis(500));
    wait_until("the accept", || accepted.lock().expect("lock").len() == 1).await;
}

#[tokio::test]
async fn tcp_closed_port_is_refused() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    drop(listener);
    let outcome = probe(&target("b", addr, check(CheckKind::Tcp))).await;
    assert_eq!(fail_reason(&outcome), "connection refused");
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
    let outcome = probe(&target("b", server.addr, check(CheckKind::Http))).await;
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
    let outcome = probe(&target("b", server.addr, check(CheckKind::Http))).await;
    assert_eq!(fail_reason(&outcome), "status 503 (expected 200)");

    let mut c = check(CheckKind::Http);
    c.expected_status = vec![200, 503];
    assert_pass(&probe(&target("b", server.addr, c)).await, false);
}

#[tokio::test]
async fn http_body_must_contain_the_text() {
    let server = fixed_server(reply(200, "status: fine")).await;
    let mut c = check(CheckKind::Http);
    c.body_contains = Some("ok".into());
    let outcome = probe(&target("b", server.addr, c.clone())).await;
    assert_eq!(fail_reason(&outcome), "body does not contain \"ok\"");
    c.body_contains = Some("fine".into());
    assert_pass(&probe(&target("b", server.addr, c)).await, false);
}

#[tokio::test]
async fn http_chunked_and_eof_delimited_bodies() {
    let chunked = fixed_server(Reply {
        delay: Duration::ZERO,
        raw: b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nall\r\n4\r\n ok!\r\n0\r\n\r\n"
            .to_vec(),
    })
    .await;
    let eof = fixed_server(Reply {
        delay: Duration::ZERO,
        raw: b"HTTP/1.0 200 OK\r\n\r\nall ok!".to_vec(),
    })
    .await;
    let mut c = check(CheckKind::Http);
    c.body_contains = Some("all ok".into());
    assert_pass(&probe(&target("b", chunked.addr, c.clone())).await, false);
    assert_pass(&probe(&target("b", eof.addr, c)).await, false);
}

#[tokio::test]
async fn http_slow_response_times_out() {
    let mut slow = reply(200, "ok");
    slow.delay = Duration::from_secs(5);
    let server = fixed_server(slow).await;
    let mut c = check(CheckKind::Http);
    c.timeout = Duration::from_millis(200);
    let outcome = probe(&target("b", server.addr, c)).await;
    assert_eq!(fail_reason(&outcome), "timeout after 200ms");
    assert!(
        outcome.latency() >= Duration::from_millis(200),
        "{outcome:?}"
    );
    assert!(outcome.latency() < Duration::from_secs(4), "{outcome:?}");
}

#[tokio::test]
async fn http_server_closing_without_answer() {
    let server = fixed_server(Reply {
        delay: Duration::ZERO,
        raw: Vec::new(),
    })
    .await;
    let outcome = probe(&target("b", server.addr, check(CheckKind::Http))).await;
    assert_eq!(
        fail_reason(&outcome),
        "connection closed without a response"
    );
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
    assert_pass(&probe(&t(&healthy)).await, false);
    assert_pass(&probe(&t(&degraded)).await, true);
    assert_eq!(
        fail_reason(&probe(&t(&unhealthy)).await),
        "deep health: status \"unhealthy\""
    );
    assert_eq!(
        fail_reason(&probe(&t(&invalid)).await),
        "deep health: invalid JSON (expected value at line 1 column 1)"
    );
    assert_eq!(
        fail_reason(&probe(&t(&missing)).await),
        "deep health: no top-level \"status\" field"
    );
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
    assert_pass(&probe(&target("b", server.addr, c.clone())).await, false);
    // SNI naming a name the certificate has.
    c.sni = Some("localhost".into());
    assert_pass(&probe(&target("b", server.addr, c)).await, false);
    assert_eq!(server.requests.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn https_ca_file_changes_are_picked_up() {
    let (server, ca) = https_server(reply(200, "ok")).await;
    let (_other, other_ca) = https_server(reply(200, "ok")).await;
    let mut c = check(CheckKind::Https);
    c.ca_file = Some(ca.0.clone());
    assert_pass(&probe(&target("b", server.addr, c.clone())).await, false);
    // Replace the bundle with another CA: the server's certificate is no
    // longer trusted.
    tokio::time::sleep(Duration::from_millis(20)).await;
    let other = std::fs::read_to_string(&other_ca.0).expect("read");
    std::fs::write(&ca.0, format!("{other}\n")).expect("rewrite");
    let outcome = probe(&target("b", server.addr, c)).await;
    assert_eq!(
        fail_reason(&outcome),
        "TLS: invalid peer certificate: BadSignature"
    );
}

#[tokio::test]
async fn https_without_ca_file_is_an_unknown_issuer() {
    let (server, _ca) = https_server(reply(200, "ok")).await;
    let outcome = probe(&target("b", server.addr, check(CheckKind::Https))).await;
    assert_eq!(
        fail_reason(&outcome),
        "TLS: invalid peer certificate: UnknownIssuer"
    );
    assert_eq!(server.requests.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn https_insecure_accepts_any_certificate() {
    let (server, _ca) = https_server(json(200, r#"{"status":"degraded"}"#)).await;
    let mut c = check(CheckKind::Https);
    c.insecure = true;
    c.deep_health = true;
    // Even for a name the certificate does not have.
    c.sni = Some("other.example".into());
    assert_pass(&probe(&target("b", server.addr, c)).await, true);
}

#[tokio::test]
async fn https_sni_mismatch_fails() {
    let (server, ca) = https_server(reply(200, "ok")).await;
    let mut c = check(CheckKind::Https);
    c.ca_file = Some(ca.0.clone());
    c.sni = Some("wrong.example".into());
    let outcome = probe(&target("b", server.addr, c)).await;
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
    let outcome = probe(&target("b", addr, c)).await;
    assert_eq!(
        fail_reason(&outcome),
        "TLS: received corrupt message of type InvalidContentType"
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
    let server = http_server(None, handler).await;

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

    wait_until("two healthy probes", || snapshot().probes >= 2).await;
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn initial_state_is_up_until_fall_failures() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let closed = listener.local_addr().expect("addr");
    drop(listener);
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
    let (a_addr, _a_log, _a) = tcp_server().await;
    let (b_addr, b_log, _b) = tcp_server().await;
    let (c_addr, _c_log, _c) = tcp_server().await;
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
    wait_until("probes of a and b", || {
        let s = monitor.snapshot();
        s["a"].probes >= 3 && s["b"].probes >= 3
    })
    .await;
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

    // b is no longer probed.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let b_count = b_log.lock().expect("lock").len();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(b_log.lock().expect("lock").len(), b_count, "b still probed");

    // Changing a's check restarts it from the initial state.
    wait_until("more probes of a", || {
        monitor.snapshot()["a"].probes >= a_before + 3
    })
    .await;
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
    let (addr, accepted, _server) = tcp_server().await;
    let mut c = check(CheckKind::Tcp);
    c.interval = Duration::from_millis(20);
    c.timeout = Duration::from_millis(15);
    let (tx, _rx) = watch::channel(BTreeMap::new());
    let targets = (0..10)
        .map(|i| target(&format!("t{i}"), addr, c.clone()))
        .collect();
    let monitor = HealthMonitor::start(targets, tx);
    wait_until("probes", || accepted.lock().expect("lock").len() >= 30).await;
    monitor.stop();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let n = accepted.lock().expect("lock").len();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(accepted.lock().expect("lock").len(), n);
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
        let (addr, log, task) = tcp_server().await;
        targets.push(target(&format!("t{i}"), addr, c.clone()));
        servers.push((log, task));
    }
    let (tx, _rx) = watch::channel(BTreeMap::new());
    let start = Instant::now();
    let monitor = HealthMonitor::start(targets, tx);
    tokio::time::sleep(Duration::from_millis(1600)).await;
    monitor.stop();

    let iv = interval.as_secs_f64();
    let mut phases = Vec::new();
    for (i, (log, _)) in servers.iter().enumerate() {
        let times: Vec<f64> = log
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
