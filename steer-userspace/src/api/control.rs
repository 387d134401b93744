//! The control socket's server ([`ControlSocket`], or [`serve_control`] for
//! both steps at once). The client is [`steer_api::request`].
//!
//! The socket is a Unix stream socket in a directory that must be root's
//! (or the daemon's user's) and writable by no one else; see
//! [`ControlSocket::bind`]. It is mode 0600, or 0660 and in the read-only
//! group when one is configured (`[control] group`): root (and the daemon's
//! own user) may send every request; members of that group may send
//! `status` only, and get "permission denied: only root may ..." for the
//! others; anyone else is refused. Each line a client writes is one JSON
//! [`Request`]; the server answers each with one JSON [`Response`] line.
//! Requests on different connections are handled concurrently; requests on
//! one connection are handled in order.
//!
//! Resources are bounded: lines are framed by `tokio-util`'s [`LinesCodec`]
//! with a maximum of [`MAX_REQUEST_BYTES`] (a longer request, or one that is
//! not UTF-8, is answered with an error and the connection is closed); at
//! most [`MAX_CONNECTIONS`] connections are served at once (a further one is
//! answered with a "too many connections" error line and closed at once,
//! without waiting); a connection that sends no complete request for 60 s
//! is closed, and so is one that does not read its answer within 60 s. A
//! request whose client has closed the connection by the time it is read
//! (a client that gave up waiting) is dropped, not carried out.

use std::ffi::CString;
use std::fmt;
use std::future::Future;
use std::io::{self, Write as _};
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt as _;
use steer_api::client::describe_uid;
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::net::unix::UCred;
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

/// Mode of a socket directory steer creates without a read-only group.
pub const DIR_MODE: u32 = 0o700;
/// Mode of a socket directory steer creates for a read-only group (which
/// becomes the directory's group, so that its members reach the socket).
pub const GROUP_DIR_MODE: u32 = 0o750;
/// Mode of the missing directories above the socket directory that steer
/// creates.
pub const PARENT_DIR_MODE: u32 = 0o755;
/// Mode of the socket without a read-only group.
pub const SOCKET_MODE: u32 = 0o600;
/// Mode of the socket with a read-only group (its group).
pub const GROUP_SOCKET_MODE: u32 = 0o660;

/// A group whose members may send `status` requests, and no others
/// (`[control] group`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReadOnlyGroup {
    pub name: String,
    pub gid: u32,
}

/// What [`ControlHandler::handle`] returns.
pub type HandlerFuture<'a> = Pin<Box<dyn Future<Output = Response> + Send + 'a>>;

/// The daemon's side of the control protocol.
///
/// `handle` is called once per request, concurrently for requests on
/// different connections. A handler that makes the daemon stop (on
/// [`Request::Stop`]) should trigger the shutdown signal given to
/// [`ControlSocket::serve`] and still return its response: the server writes
/// it before closing the connection. Requests a client is not allowed to
/// make never reach the handler.
pub trait ControlHandler: Send + Sync + 'static {
    fn handle(&self, req: Request) -> HandlerFuture<'_>;
}

// ---------------------------------------------------------------------------
// Server
// ---------------------------------------------------------------------------

/// A bound control socket, not yet served. Dropping it removes the socket
/// file (if it is still the one bound).
pub struct ControlSocket {
    listener: UnixListener,
    guard: SocketGuard,
    access: Arc<Access>,
}

impl ControlSocket {
    /// Binds the control socket at `path`.
    ///
    /// The socket's directory must be owned by root (or by the daemon's
    /// effective user) and writable by no one else, and so must every
    /// directory above it, except that a directory above it may be
    /// world-writable with the sticky bit (`/tmp`); otherwise this fails
    /// and says which directory is wrong and how to fix it. A missing
    /// directory is created, mode 0700 (0750 with `group` as its group),
    /// missing ones above it mode 0755, whatever the umask.
    ///
    /// An existing socket file is replaced only if it is stale (connecting
    /// to it is refused); if a live daemon accepts the connection, this
    /// fails with "another steer is running on PATH". Anything else at
    /// `path` is left alone and is an error.
    ///
    /// The bound socket is mode 0600; with `group`, it is 0660 and in that
    /// group, whose members may then send `status` (and nothing else).
    pub async fn bind(path: &Path, group: Option<ReadOnlyGroup>) -> io::Result<ControlSocket> {
        let euid = nix::unistd::geteuid().as_raw();
        let (listener, guard) = bind_control(path, group.as_ref(), euid).await?;
        Ok(ControlSocket {
            listener,
            guard,
            access: Arc::new(Access { euid, group }),
        })
    }

    /// The socket's path.
    pub fn path(&self) -> &Path {
        &self.guard.path
    }

    /// Serves the control protocol until `shutdown` becomes `true` (or its
    /// sender is dropped), then removes the socket file and returns after
    /// the requests in progress have finished (at most 5 s).
    ///
    /// Each connection's peer credentials (`SO_PEERCRED`) decide what it may
    /// do: root and the daemon's own user anything; members of the
    /// read-only group `status` only; anyone else nothing (one error line,
    /// then the connection is closed).
    ///
    /// At most [`MAX_CONNECTIONS`] connections are served at once; see the
    /// module documentation for the other limits. A failure on one
    /// connection is logged and affects only that connection.
    pub async fn serve(
        self,
        handler: Arc<dyn ControlHandler>,
        mut shutdown: watch::Receiver<bool>,
    ) -> io::Result<()> {
        let ControlSocket {
            listener,
            guard,
            access,
        } = self;
        let path = guard.path.clone();
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
                                Arc::clone(&access),
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
}

/// [`ControlSocket::bind`] without a read-only group, then
/// [`ControlSocket::serve`].
pub async fn serve_control(
    path: &Path,
    handler: Arc<dyn ControlHandler>,
    shutdown: watch::Receiver<bool>,
) -> io::Result<()> {
    ControlSocket::bind(path, None)
        .await?
        .serve(handler, shutdown)
        .await
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

// ---------------------------------------------------------------------------
// The socket's directory
// ---------------------------------------------------------------------------

/// Who may own the socket's directory, in words.
fn owners(euid: u32) -> String {
    if euid == 0 {
        "root".to_string()
    } else {
        format!("root or steer's own user (uid {euid})")
    }
}

fn refused(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::PermissionDenied, message)
}

/// Who the write bits of `mode` let in, if anyone but the owner.
fn writers(mode: u32) -> Option<&'static str> {
    match (mode & 0o020 != 0, mode & 0o002 != 0) {
        (_, true) => Some("everyone"),
        (true, false) => Some("its group"),
        (false, false) => None,
    }
}

/// Creates the socket's directory if missing, then checks it (see
/// [`ControlSocket::bind`]).
fn prepare_socket_dir(dir: &Path, group: Option<&ReadOnlyGroup>, euid: u32) -> io::Result<()> {
    match std::fs::symlink_metadata(dir) {
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => create_socket_dir(dir, group)?,
        Err(e) => {
            return Err(with_context(
                e,
                format_args!("inspecting {}", dir.display()),
            ))
        }
    }
    check_socket_dir(dir, euid)?;
    if let Some(g) = group {
        warn_if_unreachable(dir, g);
    }
    Ok(())
}

/// Creates `dir` (mode [`DIR_MODE`], or [`GROUP_DIR_MODE`] in `group`) and
/// any missing directory above it (mode [`PARENT_DIR_MODE`]).
fn create_socket_dir(dir: &Path, group: Option<&ReadOnlyGroup>) -> io::Result<()> {
    let mut missing = Vec::new();
    let mut above = dir.parent();
    while let Some(a) = above.filter(|a| !a.as_os_str().is_empty()) {
        if std::fs::symlink_metadata(a).is_ok() {
            break;
        }
        missing.push(a);
        above = a.parent();
    }
    for a in missing.into_iter().rev() {
        make_dir(a, PARENT_DIR_MODE, None)?;
    }
    match group {
        Some(g) => make_dir(dir, GROUP_DIR_MODE, Some(g.gid)),
        None => make_dir(dir, DIR_MODE, None),
    }
}

/// Creates `dir` with exactly `mode`, whatever the umask, in group `gid`:
/// mode 0700 first, so that it is never more open than asked. One that
/// appeared meanwhile is left to [`check_socket_dir`].
fn make_dir(dir: &Path, mode: u32, gid: Option<u32>) -> io::Result<()> {
    let shown = dir.display();
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return Ok(()),
        Err(e) => return Err(with_context(e, format_args!("creating {shown}"))),
    }
    if let Some(gid) = gid {
        std::os::unix::fs::chown(dir, None, Some(gid))
            .map_err(|e| with_context(e, format_args!("chgrp {gid} {shown}")))?;
    }
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode))
        .map_err(|e| with_context(e, format_args!("chmod {mode:04o} {shown}")))
}

/// The socket's directory must be owned by root or `euid` and writable by
/// no one else; each directory above it (on its resolved path and on the
/// path as written) must be owned by root or `euid`, and may be writable by
/// others only with the sticky bit. (Whoever can
/// write a directory can replace what is in it: the socket, the state file
/// kept next to it, or the directory itself.)
fn check_socket_dir(dir: &Path, euid: u32) -> io::Result<()> {
    let real = std::fs::canonicalize(dir)
        .map_err(|e| with_context(e, format_args!("resolving {}", dir.display())))?;
    let shown = if real == dir {
        dir.display().to_string()
    } else {
        format!("{} (which is {})", dir.display(), real.display())
    };
    let fix = "or set control.socket to a path in a directory only root can write";
    let owner_ok = |uid: u32| uid == 0 || uid == euid;
    let meta = std::fs::metadata(&real)
        .map_err(|e| with_context(e, format_args!("inspecting {shown}")))?;
    if !meta.is_dir() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("the control socket's directory {shown} is not a directory"),
        ));
    }
    if !owner_ok(meta.uid()) {
        return Err(refused(format!(
            "refusing the control socket directory {shown}: it is owned by {}, not {}; \
             that user could replace the control socket or the state file kept there. \
             Make it root's (`chown root: {}; chmod 0750 {}`), {fix}",
            describe_uid(meta.uid()),
            owners(euid),
            real.display(),
            real.display(),
        )));
    }
    let mode = meta.mode() & 0o7777;
    if let Some(who) = writers(mode) {
        return Err(refused(format!(
            "refusing the control socket directory {shown}: it is writable by {who} \
             (mode {mode:04o}); other users could replace the control socket or the state \
             file kept there. Remove those write bits (`chmod go-w {}`), {fix}",
            real.display(),
        )));
    }
    // The directories above it, as resolved and as written: a link on the
    // way (`/home/bob/link` -> `/run/steer`) is only as safe as the
    // directory that holds it.
    let written = std::path::absolute(dir)
        .map_err(|e| with_context(e, format_args!("resolving {}", dir.display())))?;
    let mut aboves: Vec<&Path> = real.ancestors().skip(1).collect();
    for above in written.ancestors().skip(1) {
        if !aboves.contains(&above) {
            aboves.push(above);
        }
    }
    for above in aboves {
        let meta = std::fs::metadata(above)
            .map_err(|e| with_context(e, format_args!("inspecting {}", above.display())))?;
        if !owner_ok(meta.uid()) {
            return Err(refused(format!(
                "refusing the control socket directory {shown}: it is inside {}, which is \
                 owned by {}, not {}; that user could put another directory in its place. \
                 Make {} root's, {fix}",
                above.display(),
                describe_uid(meta.uid()),
                owners(euid),
                above.display(),
            )));
        }
        let mode = meta.mode() & 0o7777;
        if let (Some(who), false) = (writers(mode), mode & 0o1000 != 0) {
            return Err(refused(format!(
                "refusing the control socket directory {shown}: it is inside {}, which is \
                 writable by {who} without the sticky bit (mode {mode:04o}); other users \
                 could put another directory in its place. Remove those write bits or set \
                 the sticky bit (`chmod +t {}`), {fix}",
                above.display(),
                above.display(),
            )));
        }
    }
    Ok(())
}

/// Logs a warning if members of `group` cannot reach a socket in `dir`
/// (a directory that existed before `[control] group` was set, say).
fn warn_if_unreachable(dir: &Path, group: &ReadOnlyGroup) {
    let Ok(meta) = std::fs::metadata(dir) else {
        return;
    };
    let mode = meta.mode();
    let reachable = mode & 0o001 != 0 || (meta.gid() == group.gid && mode & 0o010 != 0);
    if !reachable {
        warn!(
            dir = %dir.display(),
            mode = format_args!("{:04o}", mode & 0o7777),
            gid = meta.gid(),
            "members of group {} cannot reach the control socket through its directory; \
             run `chgrp {} {}` and `chmod 0750 {}`",
            group.name,
            group.name,
            dir.display(),
            dir.display(),
        );
    }
}

async fn bind_control(
    path: &Path,
    group: Option<&ReadOnlyGroup>,
    euid: u32,
) -> io::Result<(UnixListener, SocketGuard)> {
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
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    prepare_socket_dir(dir, group, euid)?;
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
    };
    // Between bind and chmod the socket has the umask's mode; the directory
    // (root's, writable by no one else) and the peer credential check in
    // `serve_connection` cover that window.
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(SOCKET_MODE))
        .map_err(|e| with_context(e, format_args!("chmod {SOCKET_MODE:04o} {shown}")))?;
    if let Some(g) = group {
        std::os::unix::fs::chown(path, None, Some(g.gid))
            .map_err(|e| with_context(e, format_args!("chgrp {} {shown}", g.name)))?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(GROUP_SOCKET_MODE))
            .map_err(|e| with_context(e, format_args!("chmod {GROUP_SOCKET_MODE:04o} {shown}")))?;
    }
    Ok((listener, guard))
}

// ---------------------------------------------------------------------------
// Who may do what
// ---------------------------------------------------------------------------

/// What a connection may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Level {
    /// Every request: root, or the daemon's own user.
    Full,
    /// `status` only: a member of the read-only group.
    ReadOnly,
}

struct Access {
    /// The daemon's effective uid.
    euid: u32,
    group: Option<ReadOnlyGroup>,
}

impl Access {
    /// What the peer `cred` may do; `None`: nothing.
    async fn level(&self, cred: UCred) -> Option<Level> {
        if cred.uid() == 0 || cred.uid() == self.euid {
            return Some(Level::Full);
        }
        let group = self.group.as_ref()?;
        if cred.gid() == group.gid {
            return Some(Level::ReadOnly);
        }
        // A supplementary group: from the group database (NSS may block).
        let (uid, gid) = (cred.uid(), group.gid);
        let member = tokio::task::spawn_blocking(move || user_in_group(uid, gid))
            .await
            .unwrap_or(false);
        member.then_some(Level::ReadOnly)
    }

    /// The answer to a connection that may do nothing.
    fn refusal(&self) -> Response {
        match &self.group {
            Some(g) => Response::error(format!(
                "permission denied: only root may use steer's control socket; members of \
                 group {} may run status",
                g.name
            )),
            None => Response::error("permission denied: run as root"),
        }
    }

    /// The answer to a read-only client's request that changes something.
    fn denied(&self, req: &Request) -> Response {
        let group = self.group.as_ref().map_or("", |g| g.name.as_str());
        Response::error(format!(
            "permission denied: only root may {}; members of group {group} may run status",
            req.cmd()
        ))
    }
}

/// Whether the user `uid` is in group `gid`, as its primary group or a
/// supplementary one, per the system's user and group databases.
fn user_in_group(uid: u32, gid: u32) -> bool {
    use nix::unistd::{getgrouplist, Gid, Uid, User};
    let Ok(Some(user)) = User::from_uid(Uid::from_raw(uid)) else {
        return false;
    };
    if user.gid.as_raw() == gid {
        return true;
    }
    let Ok(name) = CString::new(user.name) else {
        return false;
    };
    getgrouplist(&name, user.gid).is_ok_and(|groups| groups.contains(&Gid::from_raw(gid)))
}

/// One JSON line listing every request, for "malformed request" errors.
const EXPECTED: [&str; 7] = [
    "expected one JSON object per line, one of:",
    r#"{"cmd":"status"}"#,
    r#"{"cmd":"drain","backend":"NAME","undo":false}"#,
    r#"{"cmd":"drain_region","region":"NAME","undo":false}"#,
    r#"{"cmd":"explain","protocol":"tcp","client":"IP:PORT","vip":"IP:PORT"}"#,
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
    access: Arc<Access>,
) {
    let cred = stream.peer_cred();
    let (rd, mut wr) = stream.into_split();
    let level = match cred {
        Ok(cred) => match access.level(cred).await {
            Some(level) => level,
            None => {
                warn!(
                    uid = cred.uid(),
                    gid = cred.gid(),
                    "control connection from another user refused"
                );
                let _ = write_response(&mut wr, &access.refusal()).await;
                return;
            }
        },
        // Should not happen on Linux; without knowing who it is, refuse.
        Err(e) => {
            warn!(error = %e, "control connection refused: cannot read its peer credentials");
            let _ = write_response(&mut wr, &access.refusal()).await;
            return;
        }
    };
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
                // A client that gave up waiting (a daemon that was stopped
                // with SIGSTOP and continued, say) was told that nothing
                // happened: keep it that way.
                Ok(req) if hung_up(lines.get_ref().as_ref()) => {
                    warn!(
                        cmd = req.cmd(),
                        "control request dropped: its client hung up before it was handled"
                    );
                    return;
                }
                Ok(req) if level == Level::ReadOnly && !req.is_read_only() => {
                    warn!(cmd = req.cmd(), "control request refused: read-only client");
                    access.denied(&req)
                }
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

/// Whether the client closed its connection completely (not just its
/// writing side, which a client may do after its request): `POLLHUP`.
fn hung_up(stream: &UnixStream) -> bool {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    use std::os::fd::AsFd as _;
    let mut fds = [PollFd::new(stream.as_fd(), PollFlags::empty())];
    matches!(poll(&mut fds, PollTimeout::ZERO), Ok(n) if n > 0)
        && fds[0]
            .revents()
            .is_some_and(|r| r.contains(PollFlags::POLLHUP))
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
#[path = "control_tests.rs"]
mod tests;
