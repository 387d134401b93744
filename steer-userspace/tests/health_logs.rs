//! Health transitions are logged with their reasons. In a test binary of
//! its own: tracing caches per-callsite interest process-wide, so a
//! thread-local capturing subscriber misses events while other tests in
//! the same process log through the same callsites.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use steer::config::{CheckKind, HealthCheck};
use steer::health::{HealthMonitor, Target, TargetStatus};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::watch;

const WAIT: Duration = Duration::from_secs(15);

/// An HTTP server on 127.0.0.1 answering 200 "ok" while `healthy`, else
/// 503 "no". Stops when the returned handle is aborted (on drop).
struct Server {
    addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn http_server(healthy: Arc<AtomicBool>) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let task = tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            let healthy = healthy.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 1024];
                let _ = s.read(&mut buf).await;
                let (status, body) = if healthy.load(Ordering::SeqCst) {
                    (200, "ok")
                } else {
                    (503, "no")
                };
                let resp = format!(
                    "HTTP/1.1 {status} X\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = s.write_all(resp.as_bytes()).await;
            });
        }
    });
    Server { addr, task }
}

fn check() -> HealthCheck {
    HealthCheck {
        path: "/health".into(),
        interval: Duration::from_millis(300),
        timeout: Duration::from_millis(250),
        rise: 1,
        fall: 1,
        jitter: Duration::ZERO,
        ..HealthCheck::new("web-http", CheckKind::Http)
    }
}

async fn wait_published(
    rx: &mut watch::Receiver<BTreeMap<String, TargetStatus>>,
    what: &str,
    f: impl FnMut(&BTreeMap<String, TargetStatus>) -> bool,
) {
    match tokio::time::timeout(WAIT, rx.wait_for(f)).await {
        Ok(Ok(_)) => {}
        Ok(Err(_)) => panic!("status channel closed waiting for {what}"),
        Err(_) => panic!("timed out waiting for {what}"),
    }
}

#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("lock").extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Capture {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().expect("lock")).into_owned()
    }
}

/// Transitions are logged (warn for down, info for up) with the reason. A
/// current-thread runtime keeps every task on this thread, where the
/// capturing subscriber is the default.
#[tokio::test(flavor = "current_thread")]
async fn transitions_are_logged_with_reasons() {
    let capture = Capture::default();
    let writer = capture.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .with_max_level(tracing::Level::INFO)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    // Other tests in this binary hit the same callsites with no subscriber
    // and tracing caches "never interested" globally: recompute it now.
    tracing::callsite::rebuild_interest_cache();

    let healthy = Arc::new(AtomicBool::new(false));
    let server = http_server(healthy.clone()).await;
    let c = check();
    let (tx, mut rx) = watch::channel(BTreeMap::new());
    let monitor = HealthMonitor::start(
        vec![Target {
            key: "eu-1".into(),
            address: server.addr.ip(),
            port: server.addr.port(),
            check: c,
        }],
        tx,
    );
    wait_published(&mut rx, "down", |m| m.get("eu-1").is_some_and(|s| !s.up)).await;
    healthy.store(true, Ordering::SeqCst);
    wait_published(&mut rx, "up", |m| m.get("eu-1").is_some_and(|s| s.up)).await;
    monitor.stop();

    let text = capture.text();
    let port = server.addr.port();
    let down = format!(
        "backend eu-1 (127.0.0.1 port {port}, http check \"web-http\") is DOWN: \
         status 503 (expected 200) (1 consecutive failure)"
    );
    let up = format!(
        "backend eu-1 (127.0.0.1 port {port}, http check \"web-http\") is UP: \
         1 consecutive probe passed"
    );
    let lines: Vec<&str> = text.lines().collect();
    let down_line = lines.iter().position(|l| l.contains(&down));
    let up_line = lines.iter().position(|l| l.contains(&up));
    assert!(
        down_line.is_some_and(|i| lines[i].contains("WARN")),
        "{text}"
    );
    assert!(up_line.is_some_and(|i| lines[i].contains("INFO")), "{text}");
    assert!(down_line < up_line, "{text}");
    assert!(lines[down_line.unwrap_or(0)].contains("reason=status 503 (expected 200)"));
}
