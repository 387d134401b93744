//! Tests of the control socket's server.
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
        let dir = std::env::temp_dir().join(format!("steer-api-{tag}-{}-{n}", std::process::id()));
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
            ..ServiceStatus::default()
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
                Request::Drain { backend, undo } if backend == "web-1" => Response::ok(if undo {
                    "web-1 undrained"
                } else {
                    "web-1 drained"
                }),
                Request::Drain { backend, .. } => {
                    Response::error(format!("no backend named {backend:?}"))
                }
                Request::DrainRegion { region, .. } => {
                    Response::error(format!("no region named {region:?}"))
                }
                Request::Explain { client, .. } => Response::ok(format!("explained {client}")),
                Request::ShiftStatus { .. } => Response::ok("no shift"),
                Request::ShiftStart { service, .. }
                | Request::ShiftPause { service }
                | Request::ShiftResume { service }
                | Request::ShiftAbort { service } => {
                    Response::error(format!("no service named {service:?}"))
                }
                Request::Reload => match self.reload_gate.acquire().await {
                    Ok(_permit) => Response::ok("reloaded"),
                    Err(_) => {
                        Response::error_with_details("config has 2 errors", ["a: bad", "b: bad"])
                    }
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
        Server::start_with(path, None).await
    }

    /// [`Server::start`] with a read-only group.
    async fn start_with(path: &Path, group: Option<ReadOnlyGroup>) -> Server {
        let (tx, rx) = watch::channel(false);
        let stop = Arc::new(tx);
        let fake = Arc::new(Fake {
            stop: Arc::clone(&stop),
            reload_gate: Semaphore::new(0),
        });
        let handler: Arc<dyn ControlHandler> = fake.clone();
        let owned = path.to_path_buf();
        let task = tokio::spawn(async move {
            ControlSocket::bind(&owned, group)
                .await?
                .serve(handler, rx)
                .await
        });
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
            message.contains("`status`, `drain`, `drain_region`, `explain`, `reload`, `stop`"),
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
        // Both directories were missing: the socket's is private, the
        // one above it only holds directories.
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode(path.parent().unwrap()), 0o700);
        assert_eq!(mode(&dir.0), 0o755);
        server.stop().await;
    })
    .await;
}

/// Binding in `dir` fails with PermissionDenied; returns the message.
async fn refused_dir(dir: &Path) -> String {
    let path = dir.join("control.sock");
    let err = ControlSocket::bind(&path, None)
        .await
        .map(|_| ())
        .expect_err("an unsafe directory was accepted");
    assert_eq!(err.kind(), io::ErrorKind::PermissionDenied, "{err}");
    assert!(!path.exists(), "a socket was bound");
    err.to_string()
}

#[tokio::test]
async fn directories_others_can_write_are_refused() {
    bounded(async {
        let dir = TempDir::new("writable");
        let run = dir.0.join("run");
        std::fs::create_dir_all(&run).unwrap();
        let chmod = |p: &Path, mode: u32| {
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap()
        };
        let fix = "or set control.socket to a path in a directory only root can write";
        for (mode, who) in [
            (0o770, "its group"),
            (0o757, "everyone"),
            (0o1777, "everyone"),
        ] {
            chmod(&run, mode);
            assert_eq!(
                refused_dir(&run).await,
                format!(
                    "refusing the control socket directory {}: it is writable by {who} \
                     (mode {mode:04o}); other users could replace the control socket or \
                     the state file kept there. Remove those write bits (`chmod go-w {}`), \
                     {fix}",
                    run.display(),
                    run.display()
                )
            );
        }
        // A directory above it: writable by others only with the
        // sticky bit (like /tmp).
        chmod(&run, 0o750);
        chmod(&dir.0, 0o777);
        assert_eq!(
            refused_dir(&run).await,
            format!(
                "refusing the control socket directory {}: it is inside {}, which is \
                 writable by everyone without the sticky bit (mode 0777); other users \
                 could put another directory in its place. Remove those write bits or set \
                 the sticky bit (`chmod +t {}`), {fix}",
                run.display(),
                dir.0.display(),
                dir.0.display()
            )
        );
        // Reached through a link that others may replace.
        chmod(&dir.0, 0o755);
        let open = dir.0.join("open");
        std::fs::create_dir(&open).unwrap();
        chmod(&open, 0o777);
        std::os::unix::fs::symlink(&run, open.join("link")).unwrap();
        assert_eq!(
            refused_dir(&open.join("link")).await,
            format!(
                "refusing the control socket directory {} (which is {}): it is inside {}, \
                 which is writable by everyone without the sticky bit (mode 0777); other \
                 users could put another directory in its place. Remove those write bits \
                 or set the sticky bit (`chmod +t {}`), {fix}",
                open.join("link").display(),
                run.display(),
                open.display(),
                open.display()
            )
        );
        chmod(&dir.0, 0o1777);
        let server = Server::start(&run.join("control.sock")).await;
        server.stop().await;
        // An existing directory keeps its mode.
        let mode = std::fs::metadata(&run).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode, 0o750);
        chmod(&dir.0, 0o755);
    })
    .await;
}

/// The uid and gid of `nobody` on Debian; no such user need exist.
const NOBODY: u32 = 65534;

/// Connects to `path` from a thread that runs as uid and gid `NOBODY`
/// (a raw setresuid changes only the calling thread's credentials, and
/// they end with it). The connection keeps them as its peer's.
fn connect_as_nobody(path: &Path) -> io::Result<std::os::unix::net::UnixStream> {
    let path = path.to_path_buf();
    std::thread::spawn(move || {
        let id = libc::c_long::from(NOBODY);
        // SAFETY: raw setgroups/setresgid/setresuid with valid
        // arguments; they change only this thread's credentials.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_setgroups,
                0 as libc::c_long,
                std::ptr::null::<libc::gid_t>(),
            )
        };
        assert_eq!(rc, 0, "setgroups: {}", io::Error::last_os_error());
        // SAFETY: as above.
        let rc = unsafe { libc::syscall(libc::SYS_setresgid, id, id, id) };
        assert_eq!(rc, 0, "setresgid: {}", io::Error::last_os_error());
        // SAFETY: as above.
        let rc = unsafe { libc::syscall(libc::SYS_setresuid, id, id, id) };
        assert_eq!(rc, 0, "setresuid: {}", io::Error::last_os_error());
        std::os::unix::net::UnixStream::connect(&path)
    })
    .join()
    .expect("client thread")
}

/// Writes `line` on `conn` and reads one response line (blocking).
fn exchange(conn: &std::os::unix::net::UnixStream, line: &str) -> Response {
    use std::io::BufRead as _;
    (&*conn).write_all(line.as_bytes()).unwrap();
    let mut answer = String::new();
    std::io::BufReader::new(conn)
        .read_line(&mut answer)
        .unwrap();
    serde_json::from_str(&answer).unwrap_or_else(|e| panic!("{e}: {answer:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs root: connects as another user"]
async fn a_read_only_group_may_run_status_only() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        assert_ne!(std::env::var("CI").as_deref(), Ok("true"), "needs root");
        eprintln!("SKIP: not root");
        return;
    }
    bounded(async {
        let dir = TempDir::new("group");
        let path = dir.socket();
        let group = ReadOnlyGroup {
            name: "the-readers".into(),
            gid: NOBODY,
        };
        let server = Server::start_with(&path, Some(group)).await;
        let meta = std::fs::symlink_metadata(&path).unwrap();
        assert_eq!(
            (meta.permissions().mode() & 0o7777, meta.uid(), meta.gid()),
            (0o660, 0, NOBODY)
        );
        let run = std::fs::metadata(path.parent().unwrap()).unwrap();
        assert_eq!(
            (run.permissions().mode() & 0o7777, run.uid(), run.gid()),
            (0o750, 0, NOBODY)
        );
        let p = path.clone();
        let answers = tokio::task::spawn_blocking(move || {
            let conn = connect_as_nobody(&p).expect("a member connects");
            [
                r#"{"cmd":"status"}"#,
                r#"{"cmd":"reload"}"#,
                r#"{"cmd":"drain","backend":"web-1","undo":false}"#,
                r#"{"cmd":"stop","detach":true}"#,
                r#"{"cmd":"shift_status"}"#,
                r#"{"cmd":"shift_abort","service":"web"}"#,
                r#"{"cmd":"status"}"#,
            ]
            .map(|req| exchange(&conn, &format!("{req}\n")))
        })
        .await
        .unwrap();
        let denied = |cmd: &str| {
            Response::error(format!(
                "permission denied: only root may {cmd}; members of group the-readers may \
                 run status"
            ))
        };
        assert_eq!(
            answers,
            [
                Response::Status(sample_report()),
                denied("reload"),
                denied("drain"),
                denied("stop"),
                Response::ok("no shift"),
                denied("shift_abort"),
                Response::Status(sample_report()),
            ]
        );
        // None of them reached the daemon: it still runs.
        assert_eq!(
            request(&path, &Request::Status).await.unwrap(),
            Response::Status(sample_report())
        );
        server.stop().await;

        // Without the group, nobody may not even connect (mode 0600).
        let server = Server::start(&path).await;
        let p = path.clone();
        let err = tokio::task::spawn_blocking(move || connect_as_nobody(&p))
            .await
            .unwrap()
            .expect_err("nobody connected to a 0600 socket");
        assert_eq!(err.kind(), io::ErrorKind::PermissionDenied);
        server.stop().await;
    })
    .await;
}

#[tokio::test]
async fn requests_of_clients_that_hung_up_are_dropped() {
    bounded(async {
        let dir = TempDir::new("hungup");
        let path = dir.socket();
        let server = Server::start(&path).await;
        // On this (current-thread) runtime the server cannot run until
        // the test awaits: the client connects (the kernel completes
        // it), writes a stop and closes before the server reads it, as
        // a client that gave up waiting on a stopped daemon does.
        {
            let conn = std::os::unix::net::UnixStream::connect(&path).unwrap();
            (&conn)
                .write_all(b"{\"cmd\":\"stop\",\"detach\":true}\n")
                .unwrap();
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        // The stop was not carried out: the server still answers.
        assert!(!*server.stop.borrow(), "the stop was carried out");
        assert_eq!(
            request(&path, &Request::Status).await.unwrap(),
            Response::Status(sample_report())
        );
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
