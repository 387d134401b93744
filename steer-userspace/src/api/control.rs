//! The control socket's server ([`serve_control`]). The client is
//! [`steer_api::request`].
//!
//! The socket is a Unix stream socket, mode 0600, in a directory created with
//! mode 0755 if missing. Each line a client writes is one JSON [`Request`];
//! the server answers each with one JSON [`Response`] line. Requests on
//! different connections are handled concurrently; requests on one
//! connection are handled in order.
//!
//! Resources are bounded: lines are framed by `tokio-util`'s [`LinesCodec`]
//! with a maximum of [`MAX_REQUEST_BYTES`] (a longer request, or one that is
//! not UTF-8, is answered with an error and the connection is closed); at
//! most [`MAX_CONNECTIONS`] connections are served at once (a further one is
//! answered with a "too many connections" error line and closed at once,
//! without waiting); a connection that sends no complete request for 60 s
//! is closed, and so is one that does not read its answer within 60 s.

use std::fmt;
use std::future::Future;
use std::io::{self, Write as _};
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt as _;
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;
use tokio_util::codec::{FramedRead, LinesCodec, LinesCodecError};
use tracing::{debug, info, warn};

use super::protocol::{Request, Response, MAX_REQUEST_BYTES};

/// Most control connections served at once. A connection beyond it gets one
/// error line ("too many connections: ...") and is closed: the CLI's
/// requests are short, so a full house means a stuck or misbehaving client,
/// and a prompt error tells the operator more than a wait would.
pub const MAX_CONNECTIONS: usize = 64;
/// `sizeof(sun_path) - 1`.
const MAX_SOCKET_PATH_LEN: usize = 107;
/// A connection that sends no complete request for this long is closed.
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// How long to wait for a live daemon to accept a probe connection.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);
/// After shutdown, how long requests in progress may take to finish.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// What [`ControlHandler::handle`] returns.
pub type HandlerFuture<'a> = Pin<Box<dyn Future<Output = Response> + Send + 'a>>;

/// The daemon's side of the control protocol.
///
/// `handle` is called once per request, concurrently for requests on
/// different connections. A handler that makes the daemon stop (on
/// [`Request::Stop`]) should trigger the shutdown signal given to
/// [`serve_control`] and still return its response: the server writes it
/// before closing the connection.
pub trait ControlHandler: Send + Sync + 'static {
    fn handle(&self, req: Request) -> HandlerFuture<'_>;
}

// ---------------------------------------------------------------------------
// Server
// ---------------------------------------------------------------------------

/// Serves the control protocol on the Unix socket `path` until `shutdown`
/// becomes `true` (or its sender is dropped), then removes the socket file
/// and returns after the requests in progress have finished (at most 5 s).
///
/// Before binding, it creates the parent directory if missing (mode 0755).
/// An existing socket file is replaced only if it is stale (connecting to it
/// is refused); if a live daemon accepts the connection, this fails with
/// "another steer is running on PATH". Anything else at `path` is left alone
/// and is an error. The bound socket is made mode 0600, and connections from
/// a user other than root or the socket's owner are refused as well.
///
/// At most [`MAX_CONNECTIONS`] connections are served at once; see the
/// module documentation for the other limits.
///
/// Errors are returned only for setting up the socket; a failure on one
/// connection is logged and affects only that connection.
pub async fn serve_control(
    path: &Path,
    handler: Arc<dyn ControlHandler>,
    mut shutdown: watch::Receiver<bool>,
) -> io::Result<()> {
    let (listener, guard) = bind_control(path).await?;
    info!(socket = %path.display(), "control socket listening");
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            () = wait_shutdown(&mut shutdown) => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => match Arc::clone(&slots).try_acquire_owned() {
                    Ok(slot) => {
                        let serve = serve_connection(
                            stream,
                            Arc::clone(&handler),
                            shutdown.clone(),
                            guard.owner_uid,
                        );
                        conns.spawn(async move {
                            serve.await;
                            drop(slot);
                        });
                    }
                    Err(_) => turn_away(stream),
                },
                Err(e) => {
                    // EMFILE and the like: keep serving, but do not spin.
                    warn!(socket = %path.display(), error = %e, "control socket accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            Some(done) = conns.join_next(), if !conns.is_empty() => log_join(done),
        }
    }
    drop(listener);
    drop(guard);
    debug!(socket = %path.display(), "control socket removed");
    let finish = async {
        while let Some(done) = conns.join_next().await {
            log_join(done);
        }
    };
    if tokio::time::timeout(SHUTDOWN_GRACE, finish).await.is_err() {
        warn!(
            pending = conns.len(),
            "control requests still running at shutdown were abandoned"
        );
        conns.abort_all();
    }
    Ok(())
}

/// Answers a connection beyond [`MAX_CONNECTIONS`] with an error line and
/// closes it, without a task and without waiting: the line is written with
/// one non-blocking write, which a new connection's empty socket buffer
/// takes whole (if it does not, the client just sees the connection close).
fn turn_away(stream: UnixStream) {
    warn!(
        limit = MAX_CONNECTIONS,
        "control connection refused: too many connections"
    );
    let resp = Response::error(format!(
        "too many connections: steer serves at most {MAX_CONNECTIONS} control connections at once; \
         close idle ones (each closes itself after {}s without a request) or try again",
        IDLE_TIMEOUT.as_secs()
    ));
    let Ok(stream) = stream.into_std() else {
        return;
    };
    if let Err(e) = (&stream).write_all(&encode_response(&resp)) {
        debug!(error = %e, "cannot tell a refused control connection why");
    }
}

fn log_join(done: Result<(), tokio::task::JoinError>) {
    if let Err(e) = done {
        if e.is_panic() {
            warn!("a control request handler panicked; its connection was closed");
        }
    }
}

/// Resolves once `shutdown` is `true` or its sender is gone.
pub(super) async fn wait_shutdown(shutdown: &mut watch::Receiver<bool>) {
    // An error means the sender was dropped: nobody can stop us any more, so
    // stop now rather than leak the server.
    let _ = shutdown.wait_for(|stop| *stop).await;
}

/// Removes the socket file when dropped, if it is still the one we bound.
struct SocketGuard {
    path: PathBuf,
    dev: u64,
    ino: u64,
    owner_uid: u32,
}

impl Drop for SocketGuard {
    fn drop(&mut self) {
        match std::fs::symlink_metadata(&self.path) {
            Ok(meta) if meta.dev() == self.dev && meta.ino() == self.ino => {
                if let Err(e) = std::fs::remove_file(&self.path) {
                    warn!(socket = %self.path.display(), error = %e, "cannot remove control socket");
                }
            }
            // Gone, or replaced by someone else: not ours to remove.
            _ => {}
        }
    }
}

fn with_context(e: io::Error, what: impl fmt::Display) -> io::Error {
    io::Error::new(e.kind(), format!("{what}: {e}"))
}

async fn bind_control(path: &Path) -> io::Result<(UnixListener, SocketGuard)> {
    let shown = path.display();
    let len = path.as_os_str().len();
    if len == 0 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "the control socket path is empty",
        ));
    }
    if len > MAX_SOCKET_PATH_LEN {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "control socket path {shown} is too long ({len} bytes; a Unix socket path has at most {MAX_SOCKET_PATH_LEN})"
            ),
        ));
    }
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        if !parent.exists() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o755)
                .create(parent)
                .map_err(|e| with_context(e, format_args!("creating {}", parent.display())))?;
            // The umask may have taken bits away; 0755 is what was asked for.
            std::fs::set_permissions(parent, std::fs::Permissions::from_mode(0o755))
                .map_err(|e| with_context(e, format_args!("chmod {}", parent.display())))?;
        }
    }
    match std::fs::symlink_metadata(path) {
        Ok(meta) => {
            if !meta.file_type().is_socket() {
                return Err(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    format!("{shown} exists and is not a socket; refusing to replace it"),
                ));
            }
            match tokio::time::timeout(PROBE_TIMEOUT, UnixStream::connect(path)).await {
                Ok(Ok(_live)) => {
                    return Err(io::Error::new(
                        io::ErrorKind::AddrInUse,
                        format!("another steer is running on {shown}"),
                    ));
                }
                Ok(Err(e)) if e.kind() == io::ErrorKind::ConnectionRefused => {
                    info!(socket = %shown, "removing stale control socket");
                    match std::fs::remove_file(path) {
                        Ok(()) => {}
                        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                        Err(e) => {
                            return Err(with_context(
                                e,
                                format_args!("removing stale control socket {shown}"),
                            ))
                        }
                    }
                }
                Ok(Err(e)) => {
                    return Err(with_context(
                        e,
                        format_args!("cannot tell whether another steer is running on {shown}"),
                    ));
                }
                Err(_) => {
                    return Err(io::Error::new(
                        io::ErrorKind::AddrInUse,
                        format!(
                            "another steer is running on {shown} (its socket exists but did not accept a connection within {}s)",
                            PROBE_TIMEOUT.as_secs()
                        ),
                    ));
                }
            }
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(with_context(e, format_args!("inspecting {shown}"))),
    }
    let listener = UnixListener::bind(path)
        .map_err(|e| with_context(e, format_args!("binding control socket {shown}")))?;
    let meta = std::fs::symlink_metadata(path)
        .map_err(|e| with_context(e, format_args!("inspecting {shown}")))?;
    let guard = SocketGuard {
        path: path.to_path_buf(),
        dev: meta.dev(),
        ino: meta.ino(),
        owner_uid: meta.uid(),
    };
    // Between bind and chmod the socket has the umask's mode; the peer
    // credential check in `serve_connection` covers that window.
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| with_context(e, format_args!("chmod 0600 {shown}")))?;
    Ok((listener, guard))
}

/// One JSON line listing every request, for "malformed request" errors.
const EXPECTED: [&str; 5] = [
    "expected one JSON object per line, one of:",
    r#"{"cmd":"status"}"#,
    r#"{"cmd":"drain","backend":"NAME","undo":false}"#,
    r#"{"cmd":"reload"}"#,
    r#"{"cmd":"stop","detach":false}"#,
];

fn malformed(what: impl fmt::Display) -> Response {
    Response::error_with_details(format!("malformed request: {what}"), EXPECTED)
}

/// The request on `text`, or the error response to send back (boxed: a
/// `Response` is as large as a status report).
fn parse_request(text: &str) -> Result<Request, Box<Response>> {
    if text.trim().is_empty() {
        return Err(Box::new(malformed("empty line")));
    }
    if !text.trim_start().starts_with('{') {
        return Err(Box::new(malformed("not a JSON object")));
    }
    serde_json::from_str(text).map_err(|e| Box::new(malformed(e)))
}

async fn serve_connection(
    stream: UnixStream,
    handler: Arc<dyn ControlHandler>,
    mut shutdown: watch::Receiver<bool>,
    owner_uid: u32,
) {
    let cred = stream.peer_cred();
    let (rd, mut wr) = stream.into_split();
    match cred {
        Ok(cred) if cred.uid() == 0 || cred.uid() == owner_uid => {}
        Ok(cred) => {
            warn!(
                uid = cred.uid(),
                "control connection from another user refused"
            );
            let resp = Response::error("permission denied: run as root");
            let _ = write_response(&mut wr, &resp).await;
            return;
        }
        // Should not happen on Linux; the socket's mode still protects it.
        Err(e) => debug!(error = %e, "cannot read control peer credentials"),
    }
    let mut lines = FramedRead::new(rd, LinesCodec::new_with_max_length(MAX_REQUEST_BYTES));
    loop {
        let next = tokio::select! {
            () = wait_shutdown(&mut shutdown) => return,
            next = tokio::time::timeout(IDLE_TIMEOUT, lines.next()) => next,
        };
        let resp = match next {
            Err(_) => {
                debug!("idle control connection closed");
                return;
            }
            Ok(None) => return,
            // After an error the codec yields nothing more: answer, then
            // close.
            Ok(Some(Err(LinesCodecError::MaxLineLengthExceeded))) => {
                let resp = malformed(format_args!(
                    "request too large (more than {MAX_REQUEST_BYTES} bytes without a newline)"
                ));
                let _ = write_response(&mut wr, &resp).await;
                return;
            }
            // The codec's only own I/O error: a line that is not UTF-8.
            Ok(Some(Err(LinesCodecError::Io(e)))) if e.kind() == io::ErrorKind::InvalidData => {
                let _ = write_response(&mut wr, &malformed("not UTF-8")).await;
                return;
            }
            Ok(Some(Err(LinesCodecError::Io(e)))) => {
                debug!(error = %e, "control connection read failed");
                return;
            }
            Ok(Some(Ok(line))) => match parse_request(&line) {
                Ok(req) => {
                    debug!(?req, "control request");
                    handler.handle(req).await
                }
                Err(resp) => *resp,
            },
        };
        if let Err(e) = write_response(&mut wr, &resp).await {
            debug!(error = %e, "control connection write failed");
            return;
        }
    }
}

/// `resp` as one JSON line.
fn encode_response(resp: &Response) -> Vec<u8> {
    let mut bytes = serde_json::to_vec(resp).unwrap_or_else(|e| {
        // Cannot happen with these types (no maps with non-string keys,
        // no floats); answer something rather than nothing.
        let fallback = Response::error(format!("cannot encode the response: {e}"));
        serde_json::to_vec(&fallback).unwrap_or_default()
    });
    bytes.push(b'\n');
    bytes
}

async fn write_response<W: AsyncWrite + Unpin>(wr: &mut W, resp: &Response) -> io::Result<()> {
    let bytes = encode_response(resp);
    let write = async {
        wr.write_all(&bytes).await?;
        wr.flush().await
    };
    tokio::time::timeout(IDLE_TIMEOUT, write)
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "client does not read"))?
}

// ---------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::protocol::{Affinity, BackendStatus, Health, ServiceStatus, StatusReport};
    use std::sync::atomic::{AtomicU32, Ordering};
    use steer_api::ClientError;
    use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncRead, AsyncReadExt, BufReader};
    use tokio::task::JoinHandle;

    /// [`steer_api::request_with_timeout`] (blocking) off the async threads.
    async fn request_with_timeout(
        path: &Path,
        req: &Request,
        limit: Duration,
    ) -> Result<Response, ClientError> {
        let (path, req) = (path.to_path_buf(), req.clone());
        tokio::task::spawn_blocking(move || steer_api::request_with_timeout(&path, &req, limit))
            .await
            .expect("client panicked")
    }

    /// [`steer_api::request`] (blocking) off the async threads.
    async fn request(path: &Path, req: &Request) -> Result<Response, ClientError> {
        request_with_timeout(path, req, steer_api::timeout_for(req)).await
    }

    /// Runs a test body with a deadline.
    async fn bounded<F: Future>(body: F) -> F::Output {
        tokio::time::timeout(Duration::from_secs(30), body)
            .await
            .expect("test timed out")
    }

    /// A unique directory under the system temp dir, removed on drop. It is
    /// not created: `serve_control` creates the socket's parent.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(tag: &str) -> TempDir {
            static N: AtomicU32 = AtomicU32::new(0);
            let n = N.fetch_add(1, Ordering::Relaxed);
            let dir =
                std::env::temp_dir().join(format!("steer-api-{tag}-{}-{n}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            TempDir(dir)
        }

        fn socket(&self) -> PathBuf {
            self.0.join("run").join("control.sock")
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn sample_report() -> StatusReport {
        StatusReport {
            generation: 4,
            config_path: "/etc/steer/steer.toml".into(),
            reloads: 1,
            reload_failures: 0,
            last_reload_error: None,
            services: vec![ServiceStatus {
                name: "web".into(),
                vip: "203.0.113.10:80/tcp".into(),
                affinity: Affinity::Flow,
                packets: 5,
                bytes: 500,
                new_flows: 1,
                backends: vec![BackendStatus {
                    name: "web-1".into(),
                    address: "10.0.0.1".into(),
                    region: "eu".into(),
                    weight: 100,
                    effective_weight: 100,
                    health: Health::Up,
                    ..BackendStatus::default()
                }],
            }],
            ..StatusReport::default()
        }
    }

    /// Answers status and drain; reload waits for a permit of `reload_gate`
    /// (and fails if the gate is closed); stop triggers shutdown.
    struct Fake {
        stop: Arc<watch::Sender<bool>>,
        reload_gate: Semaphore,
    }

    impl ControlHandler for Fake {
        fn handle(&self, req: Request) -> HandlerFuture<'_> {
            Box::pin(async move {
                match req {
                    Request::Status => Response::Status(sample_report()),
                    Request::Drain { backend, undo } if backend == "web-1" => {
                        Response::ok(if undo {
                            "web-1 undrained"
                        } else {
                            "web-1 drained"
                        })
                    }
                    Request::Drain { backend, .. } => {
                        Response::error(format!("no backend named {backend:?}"))
                    }
                    Request::Reload => match self.reload_gate.acquire().await {
                        Ok(_permit) => Response::ok("reloaded"),
                        Err(_) => Response::error_with_details(
                            "config has 2 errors",
                            ["a: bad", "b: bad"],
                        ),
                    },
                    Request::Stop { detach } => {
                        let _ = self.stop.send(true);
                        Response::ok(if detach { "detaching" } else { "stopping" })
                    }
                }
            })
        }
    }

    struct Server {
        path: PathBuf,
        stop: Arc<watch::Sender<bool>>,
        fake: Arc<Fake>,
        task: JoinHandle<io::Result<()>>,
    }

    impl Server {
        /// Starts a server on `path` and waits until it answers.
        async fn start(path: &Path) -> Server {
            let (tx, rx) = watch::channel(false);
            let stop = Arc::new(tx);
            let fake = Arc::new(Fake {
                stop: Arc::clone(&stop),
                reload_gate: Semaphore::new(0),
            });
            let handler: Arc<dyn ControlHandler> = fake.clone();
            let owned = path.to_path_buf();
            let task = tokio::spawn(async move { serve_control(&owned, handler, rx).await });
            for _ in 0..200 {
                if let Ok(Response::Status(_)) = request(path, &Request::Status).await {
                    return Server {
                        path: path.to_path_buf(),
                        stop,
                        fake,
                        task,
                    };
                }
                if task.is_finished() {
                    panic!("server exited: {:?}", task.await);
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            panic!("control server did not come up");
        }

        /// Signals shutdown and waits for the server to return.
        async fn stop(self) {
            let _ = self.stop.send(true);
            self.fake.reload_gate.close();
            let result = tokio::time::timeout(Duration::from_secs(10), self.task)
                .await
                .expect("server did not stop")
                .expect("server panicked");
            result.expect("server failed");
            assert!(!self.path.exists(), "socket file left behind");
        }
    }

    /// Sends raw bytes on a fresh connection and reads one response line.
    async fn raw(
        path: &Path,
        bytes: &[u8],
    ) -> (
        Response,
        BufReader<tokio::net::unix::OwnedReadHalf>,
        tokio::net::unix::OwnedWriteHalf,
    ) {
        let stream = UnixStream::connect(path).await.unwrap();
        let (rd, mut wr) = stream.into_split();
        wr.write_all(bytes).await.unwrap();
        let mut reader = BufReader::new(rd);
        let resp = read_response(&mut reader).await;
        (resp, reader, wr)
    }

    async fn read_response<R: AsyncBufRead + Unpin>(reader: &mut R) -> Response {
        let mut line = String::new();
        reader.read_line(&mut line).await.unwrap();
        assert!(line.ends_with('\n'), "no full response line: {line:?}");
        serde_json::from_str(&line).unwrap()
    }

    /// Asserts that the server closed the connection: nothing more to read.
    /// (A server that closed without reading everything makes the end come
    /// as a reset.)
    async fn assert_closed<R: AsyncRead + Unpin>(reader: &mut R) {
        let mut rest = Vec::new();
        match reader.read_to_end(&mut rest).await {
            Ok(_) => assert!(rest.is_empty(), "more after the last answer: {rest:?}"),
            Err(e) => assert_eq!(e.kind(), io::ErrorKind::ConnectionReset),
        }
    }

    fn error_message(resp: &Response) -> (&str, &[String]) {
        match resp {
            Response::Error { message, details } => (message, details),
            other => panic!("expected an error, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn answers_requests() {
        bounded(async {
            let dir = TempDir::new("answers");
            let server = Server::start(&dir.socket()).await;
            let path = dir.socket();

            assert_eq!(
                request(&path, &Request::Status).await.unwrap(),
                Response::Status(sample_report())
            );
            let drain = |backend: &str, undo| Request::Drain {
                backend: backend.into(),
                undo,
            };
            assert_eq!(
                request(&path, &drain("web-1", false)).await.unwrap(),
                Response::ok("web-1 drained")
            );
            assert_eq!(
                request(&path, &drain("web-1", true)).await.unwrap(),
                Response::ok("web-1 undrained")
            );
            assert_eq!(
                request(&path, &drain("nope", false)).await.unwrap(),
                Response::error("no backend named \"nope\"")
            );
            server.stop().await;
        })
        .await;
    }

    #[tokio::test]
    async fn malformed_requests_get_errors() {
        bounded(async {
            let dir = TempDir::new("malformed");
            let server = Server::start(&dir.socket()).await;
            let path = dir.socket();

            // Not JSON; then a good request on the same connection.
            let (resp, mut reader, mut wr) = raw(&path, b"status please\n").await;
            let (message, details) = error_message(&resp);
            assert!(message.starts_with("malformed request: "), "{message}");
            assert_eq!(details, EXPECTED);
            wr.write_all(b"{\"cmd\":\"status\"}\r\n").await.unwrap();
            assert_eq!(
                read_response(&mut reader).await,
                Response::Status(sample_report())
            );
            // An unknown command names the known ones.
            wr.write_all(b"{\"cmd\":\"restart\"}\n").await.unwrap();
            let resp = read_response(&mut reader).await;
            let (message, _) = error_message(&resp);
            assert!(message.contains("unknown variant `restart`"), "{message}");
            assert!(
                message.contains("`status`, `drain`, `reload`, `stop`"),
                "{message}"
            );
            // A missing field is named.
            wr.write_all(b"{\"cmd\":\"stop\"}\n").await.unwrap();
            let resp = read_response(&mut reader).await;
            assert!(error_message(&resp).0.contains("missing field `detach`"));
            // Empty line, invalid UTF-8.
            wr.write_all(b"\n").await.unwrap();
            let resp = read_response(&mut reader).await;
            assert_eq!(error_message(&resp).0, "malformed request: empty line");
            // serde would read an array as a request; the server does not.
            wr.write_all(b"[\"status\"]\n").await.unwrap();
            let resp = read_response(&mut reader).await;
            assert_eq!(
                error_message(&resp).0,
                "malformed request: not a JSON object"
            );
            // Not UTF-8: an error, then the connection is closed.
            wr.write_all(b"\xff\xfe\n").await.unwrap();
            let resp = read_response(&mut reader).await;
            assert_eq!(error_message(&resp).0, "malformed request: not UTF-8");
            assert_closed(&mut reader).await;
            drop((reader, wr));

            // A request without a final newline is still answered.
            let stream = UnixStream::connect(&path).await.unwrap();
            let (rd, mut wr) = stream.into_split();
            wr.write_all(b"{\"cmd\":\"status\"}").await.unwrap();
            wr.shutdown().await.unwrap();
            assert_eq!(
                read_response(&mut BufReader::new(rd)).await,
                Response::Status(sample_report())
            );

            // Oversized: error, then the connection is closed.
            let big = vec![b'a'; MAX_REQUEST_BYTES + 10];
            let (resp, mut reader, _wr) = raw(&path, &big).await;
            let (message, _) = error_message(&resp);
            assert_eq!(
                message,
                "malformed request: request too large (more than 65536 bytes without a newline)"
            );
            assert_closed(&mut reader).await;

            // Exactly at the limit is fine.
            let mut limit = vec![b' '; MAX_REQUEST_BYTES - 16];
            limit.extend_from_slice(b"{\"cmd\":\"status\"}\n");
            assert_eq!(limit.len(), MAX_REQUEST_BYTES + 1);
            let (resp, _, _) = raw(&path, &limit).await;
            assert_eq!(resp, Response::Status(sample_report()));

            server.stop().await;
        })
        .await;
    }

    #[tokio::test]
    async fn socket_and_directory_modes() {
        bounded(async {
            let dir = TempDir::new("modes");
            let path = dir.socket();
            let server = Server::start(&path).await;
            let meta = std::fs::symlink_metadata(&path).unwrap();
            assert!(meta.file_type().is_socket());
            assert_eq!(meta.permissions().mode() & 0o7777, 0o600);
            let parent = std::fs::metadata(path.parent().unwrap()).unwrap();
            assert_eq!(parent.permissions().mode() & 0o7777, 0o755);
            server.stop().await;
        })
        .await;
    }

    #[tokio::test]
    async fn stale_socket_is_replaced() {
        bounded(async {
            let dir = TempDir::new("stale");
            let path = dir.socket();
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
            assert!(path.exists());
            // Nobody listens: the client says so.
            let err = request(&path, &Request::Status).await.unwrap_err();
            assert_eq!(
                err.to_string(),
                format!(
                    "steer is not running (stale control socket at {}: nothing is listening on it)",
                    path.display()
                )
            );
            let server = Server::start(&path).await;
            server.stop().await;
        })
        .await;
    }

    #[tokio::test]
    async fn live_socket_is_not_taken_over() {
        bounded(async {
            let dir = TempDir::new("live");
            let path = dir.socket();
            let server = Server::start(&path).await;
            let (_tx, rx) = watch::channel(false);
            let second: Arc<dyn ControlHandler> = server.fake.clone();
            let err = serve_control(&path, second, rx).await.unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::AddrInUse);
            assert_eq!(
                err.to_string(),
                format!("another steer is running on {}", path.display())
            );
            // The first one still serves.
            assert_eq!(
                request(&path, &Request::Status).await.unwrap(),
                Response::Status(sample_report())
            );
            server.stop().await;
        })
        .await;
    }

    #[tokio::test]
    async fn other_files_are_not_replaced() {
        bounded(async {
            let dir = TempDir::new("file");
            let path = dir.socket();
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, "precious").unwrap();
            let (_tx, rx) = watch::channel(false);
            let (stop, _) = watch::channel(false);
            let fake: Arc<dyn ControlHandler> = Arc::new(Fake {
                stop: Arc::new(stop),
                reload_gate: Semaphore::new(0),
            });
            let err = serve_control(&path, fake, rx).await.unwrap_err();
            assert_eq!(
                err.to_string(),
                format!(
                    "{} exists and is not a socket; refusing to replace it",
                    path.display()
                )
            );
            assert_eq!(std::fs::read_to_string(&path).unwrap(), "precious");
        })
        .await;
    }

    #[tokio::test]
    async fn too_long_path_is_refused() {
        bounded(async {
            let path = PathBuf::from(format!("/tmp/{}", "x".repeat(120)));
            let (_tx, rx) = watch::channel(false);
            let (stop, _) = watch::channel(false);
            let fake: Arc<dyn ControlHandler> = Arc::new(Fake {
                stop: Arc::new(stop),
                reload_gate: Semaphore::new(0),
            });
            let err = serve_control(&path, fake, rx).await.unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
            assert!(err.to_string().contains("is too long (125 bytes"), "{err}");
        })
        .await;
    }

    #[tokio::test]
    async fn stop_request_shuts_down_and_removes_socket() {
        bounded(async {
            let dir = TempDir::new("stop");
            let path = dir.socket();
            let server = Server::start(&path).await;
            assert_eq!(
                request(&path, &Request::Stop { detach: false })
                    .await
                    .unwrap(),
                Response::ok("stopping")
            );
            let result = tokio::time::timeout(Duration::from_secs(10), server.task)
                .await
                .expect("server did not stop")
                .expect("server panicked");
            result.unwrap();
            assert!(!path.exists());
            let err = request(&path, &Request::Status).await.unwrap_err();
            assert_eq!(
                err.to_string(),
                format!(
                    "steer is not running (no control socket at {})",
                    path.display()
                )
            );
        })
        .await;
    }

    #[tokio::test]
    async fn requests_are_concurrent_and_time_out() {
        bounded(async {
            let dir = TempDir::new("slow");
            let path = dir.socket();
            let server = Server::start(&path).await;

            // A reload that waits; status is answered meanwhile.
            let slow = tokio::spawn({
                let path = path.clone();
                async move { request(&path, &Request::Reload).await }
            });
            tokio::time::sleep(Duration::from_millis(50)).await;
            assert_eq!(
                request(&path, &Request::Status).await.unwrap(),
                Response::Status(sample_report())
            );
            // The client gives up after its timeout.
            let err = request_with_timeout(&path, &Request::Reload, Duration::from_millis(200))
                .await
                .unwrap_err();
            assert!(matches!(err, ClientError::Timeout { .. }));
            assert_eq!(
                err.to_string(),
                format!("steer did not answer on {} within 200ms", path.display())
            );
            // Let both waiting reloads through (the abandoned one included, in
            // case it reached the gate first).
            server.fake.reload_gate.add_permits(2);
            assert_eq!(slow.await.unwrap().unwrap(), Response::ok("reloaded"));
            // A failing reload carries its details.
            server.fake.reload_gate.close();
            assert_eq!(
                request(&path, &Request::Reload).await.unwrap(),
                Response::error_with_details("config has 2 errors", ["a: bad", "b: bad"])
            );
            server.stop().await;
        })
        .await;
    }

    #[tokio::test]
    async fn shutdown_closes_idle_connections() {
        bounded(async {
            let dir = TempDir::new("idle");
            let path = dir.socket();
            let server = Server::start(&path).await;
            // A connection that was served once and is now idle (so surely
            // accepted: one still in the backlog would be reset instead).
            let (resp, mut reader, _wr) = raw(&path, b"{\"cmd\":\"status\"}\n").await;
            assert_eq!(resp, Response::Status(sample_report()));
            server.stop().await;
            let mut rest = Vec::new();
            reader.read_to_end(&mut rest).await.unwrap();
            assert!(rest.is_empty());
        })
        .await;
    }

    #[tokio::test]
    async fn connections_beyond_the_limit_are_turned_away() {
        bounded(async {
            let dir = TempDir::new("limit");
            let path = dir.socket();
            let server = Server::start(&path).await;
            // MAX_CONNECTIONS idle connections, each answered once (so
            // surely accepted and holding its place).
            let mut held = Vec::new();
            for _ in 0..MAX_CONNECTIONS {
                let (resp, reader, wr) = raw(&path, b"{\"cmd\":\"status\"}\n").await;
                assert_eq!(resp, Response::Status(sample_report()));
                held.push((reader, wr));
            }
            assert_eq!(held.len(), 64);

            // One more: an error line, then the connection is closed.
            let (resp, mut reader, _wr) = raw(&path, b"{\"cmd\":\"status\"}\n").await;
            let (message, _) = error_message(&resp);
            assert_eq!(
                message,
                "too many connections: steer serves at most 64 control connections at once; \
                 close idle ones (each closes itself after 60s without a request) or try again"
            );
            assert_closed(&mut reader).await;
            // The client reports it as the daemon's answer.
            let resp = request(&path, &Request::Status).await.unwrap();
            assert!(
                error_message(&resp).0.starts_with("too many connections: "),
                "{resp:?}"
            );
            // The held connections still work.
            let (reader, wr) = &mut held[0];
            wr.write_all(b"{\"cmd\":\"status\"}\n").await.unwrap();
            assert_eq!(
                read_response(reader).await,
                Response::Status(sample_report())
            );

            // Closing one frees its place (once the server has seen the
            // close: retry for a while).
            held.pop();
            let mut answered = None;
            for _ in 0..100 {
                match request(&path, &Request::Status).await.unwrap() {
                    Response::Status(report) => {
                        answered = Some(report);
                        break;
                    }
                    _ => tokio::time::sleep(Duration::from_millis(20)).await,
                }
            }
            assert_eq!(answered, Some(sample_report()));
            drop(held);
            server.stop().await;
        })
        .await;
    }
}
