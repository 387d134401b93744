//! The loopback-only HTTP/1 listener that serves `/metrics` (hyper).
//!
//! Binding ([`bind_metrics`]) is separate from serving ([`serve_metrics`]) so
//! that `steer run` can fail at start when `metrics.listen` cannot be bound.
//!
//! - `GET /metrics` (a query string is ignored): 200, [`CONTENT_TYPE`], the
//!   text of the source's latest snapshot.
//! - `HEAD /metrics`: the same head, no body.
//! - any other method on `/metrics`: 405 with `Allow: GET, HEAD`.
//! - any other path: 404.
//!
//! One request per connection. At most [`MAX_METRICS_CONNECTIONS`]
//! connections are served at once (more wait, unaccepted, in the listen
//! backlog); a connection gets 5 s to send its request head and 10 s for
//! everything.

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{HeaderValue, ALLOW, CONTENT_TYPE as CONTENT_TYPE_HEADER};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;
use tracing::{debug, info, warn};

use super::{render_metrics, MetricsSource, CONTENT_TYPE};
use crate::api::control::wait_shutdown;

/// Connections served at once; further ones wait in the listen backlog.
pub const MAX_METRICS_CONNECTIONS: usize = 64;
/// A connection must send its request head within this.
const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// Everything about one connection must be done within this.
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(10);

/// A bound metrics listener, ready for [`serve_metrics`].
#[derive(Debug)]
pub struct MetricsListener {
    listener: TcpListener,
    local: SocketAddr,
}

impl MetricsListener {
    /// The address bound (with the port chosen by the kernel for port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }
}

/// Binds the metrics listener on `addr`, which must be a loopback address:
/// the metrics are served without authentication.
///
/// The errors name `addr` and `metrics.listen`: a non-loopback address is
/// [`io::ErrorKind::InvalidInput`]; a failed bind keeps its kind
/// (`AddrInUse`, `PermissionDenied`, …).
pub async fn bind_metrics(addr: SocketAddr) -> io::Result<MetricsListener> {
    if !addr.ip().is_loopback() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "metrics listen address {addr} is not a loopback address \
                 (metrics are served without authentication)"
            ),
        ));
    }
    let listener = TcpListener::bind(addr).await.map_err(|e| {
        io::Error::new(
            e.kind(),
            format!(
                "cannot listen for metrics on {addr} (metrics.listen): {e}; \
                 choose a free loopback port or stop what listens there"
            ),
        )
    })?;
    let local = listener.local_addr()?;
    Ok(MetricsListener { listener, local })
}

/// Serves `/metrics` on `listener` until `shutdown` becomes `true` (or its
/// sender is dropped); then drops the listener and aborts open connections.
/// Each `GET` encodes `source`'s latest snapshot (on a blocking thread).
pub async fn serve_metrics(
    listener: MetricsListener,
    source: Arc<dyn MetricsSource>,
    shutdown: watch::Receiver<bool>,
) -> io::Result<()> {
    serve(
        listener,
        source,
        shutdown,
        Limits {
            connections: MAX_METRICS_CONNECTIONS,
            header: HEADER_TIMEOUT,
            connection: CONNECTION_TIMEOUT,
        },
    )
    .await
}

#[derive(Debug, Clone, Copy)]
struct Limits {
    connections: usize,
    header: Duration,
    connection: Duration,
}

async fn serve(
    listener: MetricsListener,
    source: Arc<dyn MetricsSource>,
    mut shutdown: watch::Receiver<bool>,
    limits: Limits,
) -> io::Result<()> {
    let MetricsListener { listener, local } = listener;
    info!(listen = %local, "metrics listening");
    let permits = Arc::new(Semaphore::new(limits.connections));
    let mut conns = JoinSet::new();
    loop {
        // A permit first, then accept: connections beyond the limit stay in
        // the listen backlog. (Dropping this future, when another branch
        // wins, returns the permit; accept is cancel-safe.)
        let next = async {
            let permit = Arc::clone(&permits)
                .acquire_owned()
                .await
                .expect("the semaphore is never closed");
            (permit, listener.accept().await)
        };
        tokio::select! {
            () = wait_shutdown(&mut shutdown) => break,
            (permit, accepted) = next => match accepted {
                Ok((stream, peer)) => {
                    let source = Arc::clone(&source);
                    conns.spawn(async move {
                        let service = service_fn(move |req| handle(req, Arc::clone(&source)));
                        let conn = http1::Builder::new()
                            .timer(TokioTimer::new())
                            .header_read_timeout(limits.header)
                            .keep_alive(false)
                            .serve_connection(TokioIo::new(stream), service);
                        match tokio::time::timeout(limits.connection, conn).await {
                            Ok(Ok(())) => {}
                            Ok(Err(e)) => debug!(%peer, error = %e, "metrics connection failed"),
                            Err(_) => debug!(%peer, "metrics connection timed out"),
                        }
                        drop(permit);
                    });
                }
                Err(e) => {
                    // EMFILE and the like: keep serving, but do not spin.
                    warn!(error = %e, "metrics accept failed");
                    drop(permit);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
    conns.abort_all();
    Ok(())
}

async fn handle(
    req: Request<Incoming>,
    source: Arc<dyn MetricsSource>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    if req.uri().path() != "/metrics" {
        return Ok(plain(
            StatusCode::NOT_FOUND,
            "not found: steer serves /metrics only\n",
        ));
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut response = plain(
            StatusCode::METHOD_NOT_ALLOWED,
            "method not allowed: use GET or HEAD\n",
        );
        response
            .headers_mut()
            .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
        return Ok(response);
    }
    // Encoding a large snapshot is CPU work: keep it off the runtime's
    // threads. (hyper sends no body for HEAD, but the same Content-Length.)
    let rendered = tokio::task::spawn_blocking(move || render_metrics(source.snapshot())).await;
    Ok(match rendered {
        Ok(text) => {
            let mut response = Response::new(Full::new(Bytes::from(text)));
            response
                .headers_mut()
                .insert(CONTENT_TYPE_HEADER, HeaderValue::from_static(CONTENT_TYPE));
            response
        }
        Err(e) => {
            warn!(error = %e, "rendering metrics failed");
            plain(
                StatusCode::INTERNAL_SERVER_ERROR,
                "rendering metrics failed; see steer's log\n",
            )
        }
    })
}

fn plain(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        CONTENT_TYPE_HEADER,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::super::tests::{parse, snapshot, value};
    use super::super::MetricsSnapshot;
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;
    use tokio::task::JoinHandle;

    async fn bounded<F: std::future::Future>(body: F) -> F::Output {
        tokio::time::timeout(Duration::from_secs(30), body)
            .await
            .expect("test timed out")
    }

    const LIMITS: Limits = Limits {
        connections: MAX_METRICS_CONNECTIONS,
        header: HEADER_TIMEOUT,
        connection: CONNECTION_TIMEOUT,
    };

    struct Server {
        addr: SocketAddr,
        stop: watch::Sender<bool>,
        task: JoinHandle<io::Result<()>>,
    }

    impl Server {
        async fn start(source: Arc<dyn MetricsSource>, limits: Limits) -> Server {
            let listener = bind_metrics("127.0.0.1:0".parse().unwrap()).await.unwrap();
            let addr = listener.local_addr();
            assert_ne!(addr.port(), 0);
            let (stop, rx) = watch::channel(false);
            let task = tokio::spawn(serve(listener, source, rx, limits));
            Server { addr, stop, task }
        }

        async fn stop(self) {
            self.stop.send(true).unwrap();
            tokio::time::timeout(Duration::from_secs(5), self.task)
                .await
                .expect("metrics server did not stop")
                .unwrap()
                .unwrap();
            assert!(TcpStream::connect(self.addr).await.is_err());
        }
    }

    fn fixed() -> Arc<dyn MetricsSource> {
        let snap = Arc::new(snapshot());
        Arc::new(move || Arc::clone(&snap))
    }

    struct Answer {
        status: String,
        headers: Vec<(String, String)>,
        body: String,
    }

    impl Answer {
        fn header(&self, name: &str) -> Option<&str> {
            let mut found = self
                .headers
                .iter()
                .filter(|(k, _)| k.eq_ignore_ascii_case(name));
            let first = found.next().map(|(_, v)| v.as_str());
            assert!(found.next().is_none(), "{name} twice");
            first
        }
    }

    /// Sends `request` raw and reads the answer to the end of the stream.
    async fn send(stream: &mut TcpStream, request: &str) -> Answer {
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await.unwrap();
        let text = String::from_utf8(raw).unwrap();
        let (head, body) = text
            .split_once("\r\n\r\n")
            .unwrap_or_else(|| panic!("no end of head in {text:?}"));
        let mut lines = head.split("\r\n");
        let status = lines.next().unwrap().to_string();
        let headers = lines
            .map(|l| {
                let (k, v) = l.split_once(':').expect("header line");
                (k.trim().to_string(), v.trim().to_string())
            })
            .collect();
        Answer {
            status,
            headers,
            body: body.to_string(),
        }
    }

    async fn fetch(addr: SocketAddr, request: &str) -> Answer {
        send(&mut TcpStream::connect(addr).await.unwrap(), request).await
    }

    #[tokio::test]
    async fn get_and_head() {
        bounded(async {
            let server = Server::start(fixed(), LIMITS).await;

            let get = fetch(
                server.addr,
                "GET /metrics HTTP/1.1\r\nHost: localhost\r\nAccept: */*\r\n\r\n",
            )
            .await;
            assert_eq!(get.status, "HTTP/1.1 200 OK");
            assert_eq!(
                get.header("content-type"),
                Some("text/plain; version=0.0.4; charset=utf-8")
            );
            assert_eq!(
                get.header("content-length"),
                Some(get.body.len().to_string().as_str())
            );
            assert_eq!(get.header("connection"), Some("close"));
            let exp = parse(&get.body);
            assert_eq!(
                value(&exp, "steer_drops_total", &[("reason", "fragment")]),
                3.0
            );
            assert_eq!(value(&exp, "steer_table_generation", &[]), 12.0);
            assert_eq!(value(&exp, "steer_config_last_reload_successful", &[]), 0.0);

            // HEAD: the same head, no body.
            let head = fetch(server.addr, "HEAD /metrics HTTP/1.1\r\nHost: x\r\n\r\n").await;
            assert_eq!(head.status, "HTTP/1.1 200 OK");
            assert_eq!(head.header("content-type"), get.header("content-type"));
            assert_eq!(head.header("content-length"), get.header("content-length"));
            assert_eq!(head.body, "");

            // A query string is ignored; HTTP/1.0 works.
            let old = fetch(server.addr, "GET /metrics?x=1 HTTP/1.0\r\n\r\n").await;
            assert_eq!(old.status, "HTTP/1.0 200 OK");
            assert_eq!(old.body, get.body);

            server.stop().await;
        })
        .await;
    }

    #[tokio::test]
    async fn not_found_not_allowed_bad_request() {
        bounded(async {
            let server = Server::start(fixed(), LIMITS).await;
            for request in [
                "GET / HTTP/1.1\r\nHost: x\r\n\r\n",
                "GET /metrics/ HTTP/1.1\r\nHost: x\r\n\r\n",
                "GET /favicon.ico HTTP/1.1\r\nHost: x\r\n\r\n",
                "POST /other HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n",
            ] {
                let a = fetch(server.addr, request).await;
                assert_eq!(a.status, "HTTP/1.1 404 Not Found", "{request:?}");
                assert_eq!(a.header("content-type"), Some("text/plain; charset=utf-8"));
                assert_eq!(a.body, "not found: steer serves /metrics only\n");
            }
            for request in [
                "POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n",
                "PUT /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nhi",
                "DELETE /metrics HTTP/1.1\r\nHost: x\r\n\r\n",
                "OPTIONS /metrics HTTP/1.1\r\nHost: x\r\n\r\n",
            ] {
                let a = fetch(server.addr, request).await;
                assert_eq!(a.status, "HTTP/1.1 405 Method Not Allowed", "{request:?}");
                assert_eq!(a.header("allow"), Some("GET, HEAD"), "{request:?}");
                assert_eq!(a.body, "method not allowed: use GET or HEAD\n");
            }
            for bad in ["hello\r\n\r\n", "GET /metrics HTTP/9.9\r\n\r\n"] {
                let a = fetch(server.addr, bad).await;
                assert!(a.status.starts_with("HTTP/1.1 4"), "{bad:?}: {}", a.status);
            }
            server.stop().await;
        })
        .await;
    }

    /// Each scrape reads the source again.
    #[tokio::test]
    async fn every_scrape_reads_the_source() {
        bounded(async {
            let calls = Arc::new(AtomicU64::new(0));
            let source: Arc<dyn MetricsSource> = Arc::new({
                let calls = Arc::clone(&calls);
                move || {
                    let n = calls.fetch_add(1, Ordering::SeqCst) + 1;
                    let mut snap = MetricsSnapshot::default();
                    snap.report.generation = n;
                    Arc::new(snap)
                }
            });
            let server = Server::start(source, LIMITS).await;
            for n in 1..=3 {
                let a = fetch(server.addr, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").await;
                let exp = parse(&a.body);
                assert_eq!(value(&exp, "steer_table_generation", &[]), n as f64);
            }
            // 404s and 405s do not read it.
            fetch(server.addr, "GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
            fetch(
                server.addr,
                "POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n",
            )
            .await;
            assert_eq!(calls.load(Ordering::SeqCst), 3);
            server.stop().await;
        })
        .await;
    }

    #[tokio::test]
    async fn a_failing_source_is_a_500_and_the_server_goes_on() {
        bounded(async {
            let fail = Arc::new(std::sync::atomic::AtomicBool::new(true));
            let source: Arc<dyn MetricsSource> = Arc::new({
                let fail = Arc::clone(&fail);
                move || {
                    assert!(!fail.load(Ordering::SeqCst), "source failed (on purpose)");
                    Arc::new(MetricsSnapshot::default())
                }
            });
            let server = Server::start(source, LIMITS).await;
            let a = fetch(server.addr, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").await;
            assert_eq!(a.status, "HTTP/1.1 500 Internal Server Error");
            assert_eq!(a.body, "rendering metrics failed; see steer's log\n");
            fail.store(false, Ordering::SeqCst);
            let a = fetch(server.addr, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").await;
            assert_eq!(a.status, "HTTP/1.1 200 OK");
            server.stop().await;
        })
        .await;
    }

    /// Beyond the cap, a connection waits unserved until one closes.
    #[tokio::test]
    async fn connection_cap() {
        bounded(async {
            let limits = Limits {
                connections: 2,
                header: Duration::from_secs(60),
                connection: Duration::from_secs(60),
            };
            let server = Server::start(fixed(), limits).await;
            let idle_a = TcpStream::connect(server.addr).await.unwrap();
            let _idle_b = TcpStream::connect(server.addr).await.unwrap();

            let mut third = TcpStream::connect(server.addr).await.unwrap();
            third
                .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
                .await
                .unwrap();
            let mut byte = [0u8; 1];
            let waited =
                tokio::time::timeout(Duration::from_millis(500), third.read(&mut byte)).await;
            assert!(waited.is_err(), "served beyond the cap: {waited:?}");

            drop(idle_a);
            let a = send(&mut third, "").await;
            assert_eq!(a.status, "HTTP/1.1 200 OK");
            server.stop().await;
        })
        .await;
    }

    /// A client that sends no (or half a) request head is dropped.
    #[tokio::test]
    async fn slow_clients_time_out() {
        bounded(async {
            let limits = Limits {
                connections: 4,
                header: Duration::from_millis(200),
                connection: Duration::from_secs(60),
            };
            let server = Server::start(fixed(), limits).await;
            for partial in ["", "GET /metrics HTTP/1.1\r\nHost: x\r\n"] {
                let mut s = TcpStream::connect(server.addr).await.unwrap();
                s.write_all(partial.as_bytes()).await.unwrap();
                let mut rest = Vec::new();
                let closed =
                    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut rest)).await;
                assert!(closed.is_ok(), "{partial:?}: still open after 5 s");
                let rest = String::from_utf8_lossy(&rest);
                assert!(!rest.contains("200 OK"), "{partial:?}: {rest}");
            }
            // The limit on a whole connection applies when the head came in
            // time but the answer takes too long (a slow source).
            let limits = Limits {
                connections: 4,
                header: Duration::from_secs(60),
                connection: Duration::from_millis(200),
            };
            let slow: Arc<dyn MetricsSource> = Arc::new(|| {
                std::thread::sleep(Duration::from_millis(1500));
                Arc::new(MetricsSnapshot::default())
            });
            let server2 = Server::start(slow, limits).await;
            let mut s = TcpStream::connect(server2.addr).await.unwrap();
            s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
                .await
                .unwrap();
            let mut rest = Vec::new();
            let closed =
                tokio::time::timeout(Duration::from_millis(1000), s.read_to_end(&mut rest)).await;
            assert!(closed.is_ok(), "still open after 1 s");
            assert_eq!(String::from_utf8_lossy(&rest), "");
            server.stop().await;
            server2.stop().await;
        })
        .await;
    }

    #[tokio::test]
    async fn bind_errors_say_what_and_where() {
        bounded(async {
            for addr in ["0.0.0.0:0", "192.0.2.1:9477", "[::]:9477"] {
                let err = bind_metrics(addr.parse().unwrap()).await.unwrap_err();
                assert_eq!(err.kind(), io::ErrorKind::InvalidInput, "{addr}");
                assert_eq!(
                    err.to_string(),
                    format!(
                        "metrics listen address {addr} is not a loopback address \
                         (metrics are served without authentication)"
                    )
                );
            }
            let taken = bind_metrics("127.0.0.1:0".parse().unwrap()).await.unwrap();
            let addr = taken.local_addr();
            let err = bind_metrics(addr).await.unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::AddrInUse);
            let msg = err.to_string();
            assert!(
                msg.starts_with(&format!(
                    "cannot listen for metrics on {addr} (metrics.listen): "
                )) && msg.ends_with("choose a free loopback port or stop what listens there"),
                "{msg}"
            );
        })
        .await;
    }

    #[tokio::test]
    async fn stops_when_the_sender_is_dropped() {
        bounded(async {
            let listener = bind_metrics("127.0.0.1:0".parse().unwrap()).await.unwrap();
            let (tx, rx) = watch::channel(false);
            let server = tokio::spawn(serve_metrics(listener, fixed(), rx));
            tokio::time::sleep(Duration::from_millis(50)).await;
            assert!(!server.is_finished());
            drop(tx);
            tokio::time::timeout(Duration::from_secs(5), server)
                .await
                .expect("metrics server did not stop")
                .unwrap()
                .unwrap();
        })
        .await;
    }
}
