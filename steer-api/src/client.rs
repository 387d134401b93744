//! A blocking client for the control socket: one request, one response.
//!
//! [`request`] connects to the daemon's Unix socket, writes one request line,
//! reads one response line and closes the connection, all within
//! [`timeout_for`] the request. It needs no async runtime.
//!
//! Before it sends anything it checks whom it is talking to: the socket
//! file must be owned by root or by the caller's effective uid, and so must
//! the process listening on it (`SO_PEERCRED`). Anything else is refused
//! with [`ClientError::Untrusted`]: a socket of another user may be a
//! stand-in that answers "stopping" while the real daemon keeps running.

use std::error::Error;
use std::fmt;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::fs::MetadataExt as _;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use crate::protocol::{Request, Response};

/// Longest response line the client reads (the newline not included).
pub const MAX_RESPONSE_BYTES: usize = 16 * 1024 * 1024;
/// Client timeout for every request but [`Request::Reload`].
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Client timeout for [`Request::Reload`].
pub const RELOAD_TIMEOUT: Duration = Duration::from_secs(30);

/// Why [`request`] got no response.
#[derive(Debug)]
pub enum ClientError {
    /// Nothing at the socket path.
    NotRunning { path: PathBuf },
    /// A socket file nobody listens on (a daemon that was killed).
    Stale { path: PathBuf },
    /// The socket is not ours to use.
    PermissionDenied { path: PathBuf },
    /// The socket file, or the process listening on it, belongs to a user
    /// other than root and the caller: nothing was sent.
    Untrusted {
        path: PathBuf,
        who: Untrusted,
        uid: u32,
    },
    /// No complete answer within the timeout.
    Timeout { path: PathBuf, after: Duration },
    /// Any other failure to connect, write or read.
    Io { path: PathBuf, source: io::Error },
    /// The answer was not a response line.
    Protocol { path: PathBuf, detail: String },
}

impl fmt::Display for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientError::NotRunning { path } => write!(
                f,
                "steer is not running (no control socket at {})",
                path.display()
            ),
            ClientError::Stale { path } => write!(
                f,
                "steer is not running (stale control socket at {}: nothing is listening on it)",
                path.display()
            ),
            ClientError::PermissionDenied { path } => write!(
                f,
                "permission denied on {}: run as root (members of the daemon's \
                 [control] group may run `steer status`)",
                path.display()
            ),
            ClientError::Untrusted { path, who, uid } => {
                let shown = path.display();
                let owner = match who {
                    Untrusted::SocketFile => "the socket file is owned by",
                    Untrusted::Listener => "the process listening on it runs as",
                };
                write!(
                    f,
                    "refusing to use the control socket {shown}: {owner} {}, not root{}; \
                     it may be another user's stand-in for steer, so nothing was sent. \
                     Check `ls -ln {shown}` and the owner of its directory (steer only \
                     uses a socket directory that is root's and writable by no one else)",
                    describe_uid(*uid),
                    match nix::unistd::geteuid().as_raw() {
                        0 => String::new(),
                        me => format!(" or you (uid {me})"),
                    }
                )
            }
            ClientError::Timeout { path, after } => write!(
                f,
                "steer did not answer on {} within {after:?}",
                path.display()
            ),
            ClientError::Io { path, source } => {
                write!(f, "control socket {}: {source}", path.display())
            }
            ClientError::Protocol { path, detail } => {
                write!(f, "bad answer from steer on {}: {detail}", path.display())
            }
        }
    }
}

/// What [`ClientError::Untrusted`] found to belong to another user.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Untrusted {
    /// The socket file (its owner, from `stat`).
    SocketFile,
    /// The process that listens on the socket (`SO_PEERCRED`).
    Listener,
}

/// `uid 65534 (nobody)`, or `uid 4242` for a uid without a name.
pub fn describe_uid(uid: u32) -> String {
    match nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid)) {
        Ok(Some(user)) => format!("uid {uid} ({})", user.name),
        _ => format!("uid {uid}"),
    }
}

/// Whether the client talks to a socket owned by (or served by) `uid`:
/// root's, or the caller's own (a daemon the caller started itself).
pub fn trusted_uid(uid: u32) -> bool {
    uid == 0 || uid == nix::unistd::geteuid().as_raw()
}

impl Error for ClientError {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        match self {
            ClientError::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// The client timeout for `req`: [`RELOAD_TIMEOUT`] (30 s) for a reload,
/// [`REQUEST_TIMEOUT`] (10 s) for anything else.
pub fn timeout_for(req: &Request) -> Duration {
    match req {
        Request::Reload => RELOAD_TIMEOUT,
        _ => REQUEST_TIMEOUT,
    }
}

/// Sends `req` to the daemon listening on the Unix socket `path` and returns
/// its response, within [`timeout_for`]`(req)`. Blocks the calling thread.
///
/// The socket file and the process listening on it must belong to root or
/// to the caller ([`trusted_uid`]); otherwise nothing is sent and the error
/// is [`ClientError::Untrusted`].
pub fn request(path: &Path, req: &Request) -> Result<Response, ClientError> {
    request_with_timeout(path, req, timeout_for(req))
}

/// [`request`] with an explicit timeout for the whole exchange (connecting,
/// writing the request and reading the response).
pub fn request_with_timeout(
    path: &Path,
    req: &Request,
    limit: Duration,
) -> Result<Response, ClientError> {
    let deadline = Instant::now() + limit;
    let timeout = || ClientError::Timeout {
        path: path.to_path_buf(),
        after: limit,
    };
    let io_error = |source: io::Error| match source.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => timeout(),
        _ => ClientError::Io {
            path: path.to_path_buf(),
            source,
        },
    };
    let protocol = |detail: String| ClientError::Protocol {
        path: path.to_path_buf(),
        detail,
    };

    check_socket_file(path)?;
    let stream = connect(path, limit)?;
    check_listener(path, &stream)?;
    let mut line = serde_json::to_vec(req).map_err(|e| protocol(format!("cannot encode: {e}")))?;
    line.push(b'\n');
    let written = remaining(deadline)
        .and_then(|left| stream.set_write_timeout(Some(left)))
        .and_then(|()| (&stream).write_all(&line));
    if let Err(e) = written {
        // A daemon that turns the connection away (too many connections)
        // writes its error line and closes without reading: that line is
        // the answer. Anything else is the write's failure.
        let refused = matches!(
            e.kind(),
            io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset
        );
        if !refused {
            return Err(io_error(e));
        }
        return match read_response(&stream, deadline) {
            Ok(Some(Ok(resp))) => Ok(resp),
            _ => Err(io_error(e)),
        };
    }
    match read_response(&stream, deadline).map_err(io_error)? {
        Some(Ok(resp)) => Ok(resp),
        Some(Err(detail)) => Err(protocol(detail)),
        None => Err(protocol("connection closed without an answer".into())),
    }
}

/// The time left until `deadline`, or a `TimedOut` error if there is none
/// (a zero timeout would mean "no timeout" to the socket).
fn remaining(deadline: Instant) -> io::Result<Duration> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return Err(io::ErrorKind::TimedOut.into());
    }
    Ok(left)
}

/// The socket file at `path` must be owned by a [`trusted_uid`]. (`stat`
/// follows a symbolic link, as `connect` does.)
fn check_socket_file(path: &Path) -> Result<(), ClientError> {
    let meta = std::fs::metadata(path).map_err(|e| connect_error(path, e))?;
    if trusted_uid(meta.uid()) {
        return Ok(());
    }
    Err(ClientError::Untrusted {
        path: path.to_path_buf(),
        who: Untrusted::SocketFile,
        uid: meta.uid(),
    })
}

/// The process listening on the connected socket must run as a
/// [`trusted_uid`]: the file may have been swapped after the `stat`, or
/// chowned by its owner to look like root's.
fn check_listener(path: &Path, stream: &UnixStream) -> Result<(), ClientError> {
    let cred = nix::sys::socket::getsockopt(stream, nix::sys::socket::sockopt::PeerCredentials)
        .map_err(|e| ClientError::Io {
            path: path.to_path_buf(),
            source: io::Error::other(format!(
                "cannot tell who listens on the socket (SO_PEERCRED): {e}"
            )),
        })?;
    if trusted_uid(cred.uid()) {
        return Ok(());
    }
    Err(ClientError::Untrusted {
        path: path.to_path_buf(),
        who: Untrusted::Listener,
        uid: cred.uid(),
    })
}

/// Connects within `limit`. Connecting to a Unix socket blocks while the
/// listener's backlog is full (a daemon that stopped accepting), and std has
/// no connect timeout, so the connect runs on a helper thread; one that
/// connects after the timeout drops its connection and ends.
fn connect(path: &Path, limit: Duration) -> Result<UnixStream, ClientError> {
    let (tx, rx) = mpsc::channel();
    let target = path.to_path_buf();
    thread::Builder::new()
        .name("steer-connect".into())
        .spawn(move || {
            let _ = tx.send(UnixStream::connect(&target));
        })
        .map_err(|source| ClientError::Io {
            path: path.to_path_buf(),
            source,
        })?;
    match rx.recv_timeout(limit) {
        Ok(Ok(stream)) => Ok(stream),
        Ok(Err(e)) => Err(connect_error(path, e)),
        Err(mpsc::RecvTimeoutError::Timeout) => Err(ClientError::Timeout {
            path: path.to_path_buf(),
            after: limit,
        }),
        Err(mpsc::RecvTimeoutError::Disconnected) => Err(ClientError::Io {
            path: path.to_path_buf(),
            source: io::Error::other("the connecting thread ended without an answer"),
        }),
    }
}

/// The error for a failed connect, by what it means for the user.
fn connect_error(path: &Path, e: io::Error) -> ClientError {
    let path = path.to_path_buf();
    match e.kind() {
        io::ErrorKind::NotFound => ClientError::NotRunning { path },
        io::ErrorKind::ConnectionRefused => ClientError::Stale { path },
        io::ErrorKind::PermissionDenied => ClientError::PermissionDenied { path },
        _ => ClientError::Io { path, source: e },
    }
}

/// Reads with the time left until a deadline as the socket's read timeout.
struct DeadlineReader<'a> {
    stream: &'a UnixStream,
    deadline: Instant,
}

impl Read for DeadlineReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.stream
            .set_read_timeout(Some(remaining(self.deadline)?))?;
        (&*self.stream).read(buf)
    }
}

/// Reads one response line: `None` at end of stream before any byte,
/// `Some(Err(detail))` for a line that is not a response or is too long.
fn read_response(
    stream: &UnixStream,
    deadline: Instant,
) -> io::Result<Option<Result<Response, String>>> {
    let max = u64::try_from(MAX_RESPONSE_BYTES)
        .unwrap_or(u64::MAX)
        .saturating_add(1);
    let mut reader = BufReader::new(DeadlineReader { stream, deadline }).take(max);
    let mut buf = Vec::new();
    if reader.read_until(b'\n', &mut buf)? == 0 {
        return Ok(None);
    }
    if buf.last() == Some(&b'\n') {
        buf.pop();
        if buf.last() == Some(&b'\r') {
            buf.pop();
        }
    } else if buf.len() > MAX_RESPONSE_BYTES {
        return Ok(Some(Err(format!(
            "answer longer than {MAX_RESPONSE_BYTES} bytes"
        ))));
    }
    Ok(Some(serde_json::from_slice(&buf).map_err(|e| {
        format!("{e}: {}", String::from_utf8_lossy(&buf))
    })))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;
    use std::sync::atomic::{AtomicU32, Ordering};

    /// A unique directory under the system temp dir, removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(tag: &str) -> TempDir {
            static N: AtomicU32 = AtomicU32::new(0);
            let n = N.fetch_add(1, Ordering::Relaxed);
            let dir = std::env::temp_dir()
                .join(format!("steer-api-client-{tag}-{}-{n}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            TempDir(dir)
        }

        fn socket(&self) -> PathBuf {
            self.0.join("control.sock")
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// A one-connection server: reads one line and writes `answer` (raw
    /// bytes). Returns the line it read.
    fn serve_once(listener: UnixListener, answer: &'static [u8]) -> thread::JoinHandle<String> {
        thread::spawn(move || {
            let (stream, _) = listener.accept().unwrap();
            let mut line = String::new();
            BufReader::new(&stream).read_line(&mut line).unwrap();
            (&stream).write_all(answer).unwrap();
            line
        })
    }

    #[test]
    fn one_exchange() {
        let dir = TempDir::new("exchange");
        let listener = UnixListener::bind(dir.socket()).unwrap();
        let server = serve_once(
            listener,
            b"{\"result\":\"ok\",\"message\":\"web-2 drained\"}\n",
        );
        let req = Request::Drain {
            backend: "web-2".into(),
            undo: false,
        };
        assert_eq!(
            request(&dir.socket(), &req).unwrap(),
            Response::ok("web-2 drained")
        );
        assert_eq!(
            server.join().unwrap(),
            "{\"cmd\":\"drain\",\"backend\":\"web-2\",\"undo\":false}\n"
        );
    }

    #[test]
    fn bad_answers() {
        let dir = TempDir::new("bad");
        let path = dir.socket();
        let listener = UnixListener::bind(&path).unwrap();

        let server = serve_once(listener.try_clone().unwrap(), b"hello\n");
        let err = request(&path, &Request::Status).unwrap_err();
        server.join().unwrap();
        assert!(matches!(err, ClientError::Protocol { .. }), "{err:?}");
        assert!(
            err.to_string().starts_with(&format!(
                "bad answer from steer on {}: expected value",
                path.display()
            )),
            "{err}"
        );
        assert!(err.to_string().ends_with(": hello"), "{err}");

        let server = serve_once(listener.try_clone().unwrap(), b"");
        let err = request(&path, &Request::Status).unwrap_err();
        server.join().unwrap();
        assert_eq!(
            err.to_string(),
            format!(
                "bad answer from steer on {}: connection closed without an answer",
                path.display()
            )
        );
    }

    #[test]
    fn silent_daemon_times_out() {
        let dir = TempDir::new("silent");
        let path = dir.socket();
        let listener = UnixListener::bind(&path).unwrap();
        // Accepts, reads, never answers; ends when the client hangs up.
        let server = thread::spawn(move || {
            let (stream, _) = listener.accept().unwrap();
            let mut sink = Vec::new();
            let _ = (&stream).read_to_end(&mut sink);
        });
        let started = Instant::now();
        let err =
            request_with_timeout(&path, &Request::Reload, Duration::from_millis(200)).unwrap_err();
        let took = started.elapsed();
        assert!(matches!(err, ClientError::Timeout { .. }), "{err:?}");
        assert_eq!(
            err.to_string(),
            format!("steer did not answer on {} within 200ms", path.display())
        );
        assert!(took >= Duration::from_millis(200), "{took:?}");
        assert!(took < Duration::from_secs(5), "{took:?}");
        server.join().unwrap();
    }

    #[test]
    fn turned_away_connection_still_reads_the_error() {
        // A server that answers before reading and closes at once (what the
        // daemon does beyond its connection limit). Whether the client's
        // write comes before or after the close, the error line is the
        // answer.
        // The race goes either way from run to run: try it a few times.
        let dir = TempDir::new("busy");
        let path = dir.socket();
        let listener = UnixListener::bind(&path).unwrap();
        for _ in 0..20 {
            let listener = listener.try_clone().unwrap();
            let server = thread::spawn(move || {
                let (stream, _) = listener.accept().unwrap();
                (&stream)
                    .write_all(b"{\"result\":\"error\",\"message\":\"too many connections\"}\n")
                    .unwrap();
            });
            assert_eq!(
                request(&path, &Request::Status).unwrap(),
                Response::error("too many connections")
            );
            server.join().unwrap();
        }
    }

    /// True when running as root. Not root: skips locally, but fails
    /// loudly under CI=true, where the privileged tests must run.
    fn require_root() -> bool {
        if nix::unistd::geteuid().is_root() {
            return true;
        }
        assert_ne!(
            std::env::var("CI").as_deref(),
            Ok("true"),
            "this test needs root; CI must run as root"
        );
        eprintln!("SKIP: not root");
        false
    }

    /// The uid and gid of `nobody` on Debian; no such user need exist.
    const NOBODY: u32 = 65534;

    /// Binds and listens on `path` from a thread that runs as `NOBODY`, as
    /// another local user's stand-in server would. The raw setresuid
    /// syscall changes only the calling thread's credentials (libc's
    /// setuid changes every thread's), and they end with the thread; the
    /// socket file is `NOBODY`'s and `SO_PEERCRED` reports `NOBODY`.
    fn listen_as_nobody(path: &Path) -> UnixListener {
        let path = path.to_path_buf();
        thread::spawn(move || {
            let id = libc::c_long::from(NOBODY);
            // SAFETY: raw setresgid/setresuid with integer arguments; they
            // change only this thread's credentials.
            let rc = unsafe { libc::syscall(libc::SYS_setresgid, id, id, id) };
            assert_eq!(rc, 0, "setresgid: {}", io::Error::last_os_error());
            // SAFETY: as above.
            let rc = unsafe { libc::syscall(libc::SYS_setresuid, id, id, id) };
            assert_eq!(rc, 0, "setresuid: {}", io::Error::last_os_error());
            UnixListener::bind(&path).unwrap()
        })
        .join()
        .expect("listener thread")
    }

    #[test]
    #[ignore = "needs root: listens as another user"]
    fn sockets_of_another_user_are_refused_before_sending() {
        if !require_root() {
            return;
        }
        let dir = TempDir::new("untrusted");
        // The attack's premise: the socket's directory is another user's.
        std::os::unix::fs::chown(&dir.0, Some(NOBODY), Some(NOBODY)).unwrap();
        let path = dir.socket();
        let listener = listen_as_nobody(&path);
        listener.set_nonblocking(true).unwrap();
        let stop = Request::Stop { detach: true };

        // The file is nobody's: refused before connecting.
        let err = request(&path, &stop).unwrap_err();
        assert!(
            matches!(
                err,
                ClientError::Untrusted {
                    who: Untrusted::SocketFile,
                    uid: NOBODY,
                    ..
                }
            ),
            "{err:?}"
        );
        let shown = path.display();
        assert_eq!(
            err.to_string(),
            format!(
                "refusing to use the control socket {shown}: the socket file is owned by \
                 {}, not root; it may be another user's stand-in for steer, so nothing was \
                 sent. Check `ls -ln {shown}` and the owner of its directory (steer only uses \
                 a socket directory that is root's and writable by no one else)",
                describe_uid(NOBODY)
            )
        );
        assert_eq!(
            listener.accept().unwrap_err().kind(),
            io::ErrorKind::WouldBlock,
            "the client connected"
        );

        // Made to look like root's: the listener's credentials give it away.
        std::os::unix::fs::chown(&path, Some(0), Some(0)).unwrap();
        let err = request(&path, &stop).unwrap_err();
        assert!(
            matches!(
                err,
                ClientError::Untrusted {
                    who: Untrusted::Listener,
                    uid: NOBODY,
                    ..
                }
            ),
            "{err:?}"
        );
        assert!(
            err.to_string().contains(&format!(
                "the process listening on it runs as {}, not root;",
                describe_uid(NOBODY)
            )),
            "{err}"
        );
        // The client connected but wrote nothing before hanging up.
        let (conn, _) = listener.accept().unwrap();
        conn.set_nonblocking(false).unwrap();
        let mut got = Vec::new();
        (&conn).read_to_end(&mut got).unwrap();
        assert!(got.is_empty(), "the client sent {got:?}");
    }

    #[test]
    fn connect_errors_say_what_to_do() {
        let dir = TempDir::new("connect");
        let path = dir.socket();
        let err = request(&path, &Request::Status).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "steer is not running (no control socket at {})",
                path.display()
            )
        );
        drop(UnixListener::bind(&path).unwrap());
        let err = request(&path, &Request::Status).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "steer is not running (stale control socket at {}: nothing is listening on it)",
                path.display()
            )
        );
        let msg = |kind: io::ErrorKind| {
            connect_error(Path::new("/run/steer/control.sock"), kind.into()).to_string()
        };
        assert_eq!(
            msg(io::ErrorKind::PermissionDenied),
            "permission denied on /run/steer/control.sock: run as root (members of the \
             daemon's [control] group may run `steer status`)"
        );
        assert_eq!(timeout_for(&Request::Reload), Duration::from_secs(30));
        assert_eq!(timeout_for(&Request::Status), Duration::from_secs(10));
        assert_eq!(
            timeout_for(&Request::Stop { detach: true }),
            Duration::from_secs(10)
        );
    }
}
