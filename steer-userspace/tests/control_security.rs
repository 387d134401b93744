//! Who may use the control socket, and what a local user who is not root
//! can do to it: the real `steer` binary, as root and as `nobody`.
//! Privileged: needs root (fails loudly under CI=true).
//!
//! Each test that needs a daemon builds a [`Lab`]: a network namespace of
//! its own with a veth pair, a config in a scratch directory, and
//! `steer run` attached (generic XDP) to one end, started with
//! `nsenter --net=...` (see tests/daemon.rs for why not `ip netns exec`).
//! A guard kills the daemon, removes its pins, deletes the namespace and
//! the scratch directory, also when a test fails.
//!
//! The other user is uid and gid 65534 (`nobody` and `nogroup` on Debian);
//! no user is created. Client processes run as that user through
//! `CommandExt::uid`/`gid`; a stand-in server runs on a thread that has
//! switched only its own credentials (a raw `setresuid`, see
//! [`listen_as_nobody`]).

mod common;
use common::{
    ip, require_root, run_bounded, text, try_run_bounded, veth_config, wait_bounded, VethConfig,
};

use std::io::Read as _;
use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::os::unix::net::UnixListener;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use steer::api::StatusReport;

const STEER: &str = env!("CARGO_BIN_EXE_steer");
/// `nobody`'s uid and `nogroup`'s gid on Debian.
const NOBODY: u32 = 65534;
/// How long the daemon may take to answer `steer status` after starting.
const READY_TIMEOUT: Duration = Duration::from_secs(20);
/// Every CLI run is bounded by this.
const CLI_TIMEOUT: Duration = Duration::from_secs(40);

static NEXT_LAB: AtomicU32 = AtomicU32::new(0);

// ---------------------------------------------------------------------------
// Commands
// ---------------------------------------------------------------------------

/// `steer ARGS` as root.
fn steer(args: &[&str]) -> Output {
    run_bounded(
        Command::new(STEER).args(args).env("NO_COLOR", "1"),
        CLI_TIMEOUT,
    )
}

/// `steer ARGS` as uid `NOBODY` with group `gid` (and no other group).
fn steer_as_nobody(gid: u32, args: &[&str]) -> Output {
    run_bounded(
        Command::new(STEER)
            .args(args)
            .env("NO_COLOR", "1")
            .current_dir("/")
            .gid(gid)
            .uid(NOBODY),
        CLI_TIMEOUT,
    )
}

fn mode(path: &Path) -> u32 {
    std::fs::symlink_metadata(path)
        .unwrap_or_else(|e| panic!("stat {}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o7777
}

/// (mode, uid, gid) of `path` (not following a link).
fn owner_and_mode(path: &Path) -> (u32, u32, u32) {
    let m =
        std::fs::symlink_metadata(path).unwrap_or_else(|e| panic!("stat {}: {e}", path.display()));
    (m.permissions().mode() & 0o7777, m.uid(), m.gid())
}

fn chown(path: &Path, uid: u32, gid: u32) {
    std::os::unix::fs::chown(path, Some(uid), Some(gid))
        .unwrap_or_else(|e| panic!("chown {}: {e}", path.display()));
}

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("chmod {}: {e}", path.display()));
}

/// `kill -SIG pid`.
fn signal(pid: u32, sig: libc::c_int) {
    let pid = libc::pid_t::try_from(pid).expect("pid");
    // SAFETY: kill(2) with a pid of our own child and a valid signal.
    let rc = unsafe { libc::kill(pid, sig) };
    assert_eq!(rc, 0, "kill: {}", std::io::Error::last_os_error());
}

// ---------------------------------------------------------------------------
// The lab
// ---------------------------------------------------------------------------

/// A namespace with a veth pair, a scratch directory with a config, and the
/// daemon. Dropping it tears everything down.
struct Lab {
    ns: String,
    dir: PathBuf,
    config: PathBuf,
    socket: PathBuf,
    pin_dir: PathBuf,
    daemon: Option<Child>,
    log: PathBuf,
    created_ns: bool,
}

impl Lab {
    /// The namespace, the veth pair and a config whose control socket is
    /// `run/control.sock` in the scratch directory (`run` is not created),
    /// with `[control] group = group` if given. The daemon is not started.
    fn new(group: Option<&str>) -> Lab {
        let n = NEXT_LAB.fetch_add(1, Ordering::SeqCst);
        let id = format!("{}-{n}", std::process::id());
        let dir = std::env::temp_dir().join(format!("steer-cs-{id}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("scratch dir");
        chmod(&dir, 0o755);
        let mut lab = Lab {
            ns: format!("stcs-{id}"),
            config: dir.join("steer.toml"),
            socket: dir.join("run").join("control.sock"),
            pin_dir: PathBuf::from(format!("/sys/fs/bpf/steer-cs-{id}")),
            log: dir.join("daemon.log"),
            dir,
            daemon: None,
            created_ns: false,
        };
        let _ = std::fs::remove_dir_all(&lab.pin_dir);
        let _ = try_run_bounded(
            Command::new("ip").args(["netns", "del", &lab.ns]),
            Duration::from_secs(10),
        );
        ip(&["netns", "add", &lab.ns]);
        lab.created_ns = true;
        ip(&[
            "-n", &lab.ns, "link", "add", "sd0", "type", "veth", "peer", "name", "sd1",
        ]);
        for dev in ["lo", "sd0", "sd1"] {
            ip(&["-n", &lab.ns, "link", "set", dev, "up"]);
        }
        std::fs::write(&lab.config, lab.config_text(group, 100)).expect("write config");
        lab
    }

    fn config_text(&self, group: Option<&str>, weight: u32) -> String {
        let group = group
            .map(|g| format!("group = \"{g}\"\n"))
            .unwrap_or_default();
        veth_config(&VethConfig {
            interfaces: &["sd0"],
            mode: "skb",
            pin_dir: &self.pin_dir,
            socket: &self.socket,
            metrics: "127.0.0.1:9477",
            b1_weight: weight,
            two_backends: true,
            control_extra: &group,
        })
    }

    fn socket_str(&self) -> String {
        self.socket.display().to_string()
    }

    fn config_str(&self) -> String {
        self.config.display().to_string()
    }

    /// The socket's directory.
    fn run_dir(&self) -> PathBuf {
        self.socket.parent().expect("socket dir").to_path_buf()
    }

    /// Where the daemon keeps its state file, by the daemon's own rule.
    fn state_file(&self) -> PathBuf {
        let text = std::fs::read_to_string(&self.config).expect("read config");
        let cfg = steer::config::Config::parse(&text).expect("valid config");
        steer::daemon::persist_for(&cfg).state_file
    }

    /// Starts `steer run` in the namespace, under `umask` if given.
    fn spawn_daemon(&mut self, umask: Option<&str>) {
        assert!(self.daemon.is_none(), "a daemon is already running");
        let f = std::fs::File::create(&self.log).expect("log file");
        let net = format!("--net=/var/run/netns/{}", self.ns);
        // The umask is set in the process that becomes the daemon (sh execs
        // nsenter, which execs steer).
        let mut cmd = Command::new("sh");
        cmd.arg("-c")
            .arg(format!("umask {} && exec \"$@\"", umask.unwrap_or("022")))
            .arg("sh")
            .arg("nsenter")
            .arg(net)
            .arg(STEER)
            .arg("run")
            .arg("--config")
            .arg(&self.config)
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(f.try_clone().expect("log fd"))
            .stderr(f);
        self.daemon = Some(cmd.spawn().expect("spawn steer run"));
    }

    /// Starts the daemon and waits until it answers `steer status`.
    fn start_daemon(&mut self, umask: Option<&str>) {
        self.spawn_daemon(umask);
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(st) = self
                .daemon
                .as_mut()
                .and_then(|d| d.try_wait().ok().flatten())
            {
                self.daemon = None;
                panic!("steer run exited early ({st}):\n{}", self.log());
            }
            let out = steer(&["status", "--socket", &self.socket_str()]);
            if out.status.success() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "steer run did not answer within {READY_TIMEOUT:?}:\n{}\nlast status error: {}",
                self.log(),
                text(&out.stderr)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Starts the daemon and expects it to exit with an error soon.
    fn daemon_refuses_to_start(&mut self) -> String {
        self.spawn_daemon(None);
        let mut child = self.daemon.take().expect("daemon");
        let Some(status) = wait_bounded(&mut child, READY_TIMEOUT) else {
            self.daemon = Some(child);
            panic!("steer run did not refuse to start:\n{}", self.log());
        };
        assert!(!status.success(), "steer run exited 0:\n{}", self.log());
        self.log()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn daemon_pid(&self) -> u32 {
        self.daemon.as_ref().expect("daemon").id()
    }

    fn status(&self) -> StatusReport {
        let out = steer(&["status", "--json", "--socket", &self.socket_str()]);
        assert!(
            out.status.success(),
            "steer status failed: {}\ndaemon log:\n{}",
            text(&out.stderr),
            self.log()
        );
        serde_json::from_slice(&out.stdout).expect("status JSON")
    }

    fn xdp_attached(&self) -> bool {
        ip(&["-n", &self.ns, "link", "show", "dev", "sd0"]).contains("xdp")
    }

    fn pins(&self) -> Vec<String> {
        match std::fs::read_dir(&self.pin_dir) {
            Ok(entries) => entries
                .filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect(),
            Err(_) => Vec::new(),
        }
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if let Some(mut child) = self.daemon.take() {
            let _ = child.kill();
            let _ = wait_bounded(&mut child, Duration::from_secs(10));
        }
        // Unpin what the daemon left (links first: that detaches XDP).
        let persist = steer::dataplane::Persist {
            pin_dir: self.pin_dir.clone(),
            state_file: self.dir.join("unused-state.json"),
        };
        if let Err(e) = steer::dataplane::Dataplane::remove_pins(&persist) {
            eprintln!("removing pins under {}: {e}", self.pin_dir.display());
        }
        let _ = std::fs::remove_dir_all(&self.pin_dir);
        if self.created_ns {
            let _ = try_run_bounded(
                Command::new("ip").args(["netns", "del", &self.ns]),
                Duration::from_secs(10),
            );
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

// ---------------------------------------------------------------------------
// A stand-in server of another user
// ---------------------------------------------------------------------------

/// Binds and listens on `path` from a thread that runs as uid and gid
/// `NOBODY`, as another local user's stand-in for steer would. The raw
/// setresuid syscall changes only the calling thread's credentials (libc's
/// setuid changes every thread's), and they end with the thread: the socket
/// file is `NOBODY`'s and its listener's credentials (`SO_PEERCRED`) are.
fn listen_as_nobody(path: &Path) -> UnixListener {
    let path = path.to_path_buf();
    std::thread::spawn(move || {
        let id = libc::c_long::from(NOBODY);
        // SAFETY: raw setresgid/setresuid with integer arguments; they
        // change only this thread's credentials.
        let rc = unsafe { libc::syscall(libc::SYS_setresgid, id, id, id) };
        assert_eq!(rc, 0, "setresgid: {}", std::io::Error::last_os_error());
        // SAFETY: as above.
        let rc = unsafe { libc::syscall(libc::SYS_setresuid, id, id, id) };
        assert_eq!(rc, 0, "setresuid: {}", std::io::Error::last_os_error());
        UnixListener::bind(&path).expect("bind as nobody")
    })
    .join()
    .expect("listener thread")
}

/// Answers every connection with "stopping", as a stand-in would, and
/// records what each client sent, until `stop` is set.
fn serve_stand_in(
    listener: UnixListener,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<Vec<Vec<u8>>> {
    use std::io::Write as _;
    listener.set_nonblocking(true).expect("nonblocking");
    std::thread::spawn(move || {
        let mut received = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        while !stop.load(Ordering::SeqCst) && Instant::now() < deadline {
            match listener.accept() {
                Ok((conn, _)) => {
                    conn.set_nonblocking(false).expect("blocking");
                    let _ = conn.set_read_timeout(Some(Duration::from_secs(2)));
                    let _ = (&conn).write_all(b"{\"result\":\"ok\",\"message\":\"stopping\"}\n");
                    let mut got = Vec::new();
                    let _ = (&conn).read_to_end(&mut got);
                    received.push(got);
                }
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
        received
    })
}

// ---------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------

/// A socket directory another user owns, or others may write, lets them
/// replace the socket and the state file: the daemon refuses it before it
/// touches the kernel.
#[test]
#[ignore = "needs root: runs steer run and chowns a directory to nobody"]
fn unsafe_socket_directories_are_refused() {
    if !require_root() {
        return;
    }
    let mut lab = Lab::new(None);
    let run = lab.run_dir();
    std::fs::create_dir(&run).expect("mkdir run");
    chown(&run, NOBODY, NOBODY);
    chmod(&run, 0o755);
    let log = lab.daemon_refuses_to_start();
    let owner = steer_api::client::describe_uid(NOBODY);
    assert!(
        log.contains(&format!(
            "refusing the control socket directory {}: it is owned by {owner}, not root; \
             that user could replace the control socket or the state file kept there",
            run.display()
        )),
        "{log}"
    );
    assert!(lab.pins().is_empty(), "pinned: {:?}", lab.pins());
    assert!(!lab.xdp_attached(), "XDP was attached");
    assert_eq!(
        std::fs::read_dir(&run).expect("read run").count(),
        0,
        "the daemon wrote into the directory"
    );

    // Root's, but its group may write.
    chown(&run, 0, 0);
    chmod(&run, 0o770);
    let log = lab.daemon_refuses_to_start();
    assert!(
        log.contains(&format!(
            "refusing the control socket directory {}: it is writable by its group (mode 0770)",
            run.display()
        )),
        "{log}"
    );
    assert!(lab.pins().is_empty(), "pinned: {:?}", lab.pins());

    // Fixed as the message says: it starts.
    chmod(&run, 0o750);
    lab.start_daemon(None);
    assert_eq!(lab.status().services.len(), 1);
}

/// A link planted at the state file's temporary name is removed, never
/// written through.
#[test]
#[ignore = "needs root: runs steer run"]
fn the_state_file_is_never_written_through_a_link() {
    if !require_root() {
        return;
    }
    let mut lab = Lab::new(None);
    std::fs::create_dir(lab.run_dir()).expect("mkdir run");
    chmod(&lab.run_dir(), 0o750);
    let victim = lab.dir.join("victim");
    std::fs::write(&victim, "precious").expect("victim");
    let state = lab.state_file();
    let tmp = state.with_extension("tmp");
    std::os::unix::fs::symlink(&victim, &tmp).expect("symlink");

    lab.start_daemon(None);
    assert_eq!(
        std::fs::read_to_string(&victim).expect("read victim"),
        "precious"
    );
    assert!(std::fs::symlink_metadata(&tmp).is_err(), "temp name left");
    let meta = std::fs::symlink_metadata(&state).expect("state file");
    assert!(meta.is_file(), "{meta:?}");
    assert_eq!(mode(&state), 0o600);
}

/// Under umask 000 every file and directory the daemon makes still has
/// the mode it asks for.
#[test]
#[ignore = "needs root: runs steer run"]
fn modes_do_not_depend_on_the_umask() {
    if !require_root() {
        return;
    }
    let mut lab = Lab::new(None);
    lab.start_daemon(Some("000"));
    assert_eq!(owner_and_mode(&lab.run_dir()), (0o700, 0, 0));
    assert_eq!(owner_and_mode(&lab.socket), (0o600, 0, 0));
    assert_eq!(mode(&lab.state_file()), 0o600);
}

/// With `[control] group`, its members may run `status` and nothing else;
/// a user outside it cannot connect at all.
#[test]
#[ignore = "needs root: runs steer run and steer as nobody"]
fn group_members_may_only_read() {
    if !require_root() {
        return;
    }
    let group = nix::unistd::Group::from_gid(nix::unistd::Gid::from_raw(NOBODY))
        .ok()
        .flatten()
        .map(|g| g.name)
        .expect("a group with gid 65534 (nogroup)");
    let mut lab = Lab::new(Some(&group));
    lab.start_daemon(Some("000"));
    assert_eq!(owner_and_mode(&lab.run_dir()), (0o750, 0, NOBODY));
    assert_eq!(owner_and_mode(&lab.socket), (0o660, 0, NOBODY));
    assert_eq!(mode(&lab.state_file()), 0o600);

    let socket = lab.socket_str();
    let out = steer_as_nobody(NOBODY, &["status", "--socket", &socket]);
    assert!(
        out.status.success(),
        "status as a member: {}\ndaemon log:\n{}",
        text(&out.stderr),
        lab.log()
    );
    assert!(text(&out.stdout).contains("b1"), "{}", text(&out.stdout));

    let before = lab.status();
    for (args, cmd) in [
        (vec!["reload"], "reload"),
        (vec!["drain", "b1"], "drain"),
        (vec!["stop"], "stop"),
        (vec!["stop", "--keep-forwarding"], "stop"),
    ] {
        let mut all = args.clone();
        all.extend(["--socket", &socket]);
        let out = steer_as_nobody(NOBODY, &all);
        assert!(!out.status.success(), "{args:?} as a member succeeded");
        assert_eq!(
            text(&out.stderr),
            format!(
                "steer: error: permission denied: only root may {cmd}; members of group \
                 {group} may run status\n"
            ),
            "{args:?}"
        );
    }
    // Nothing changed: no reload, no drain, still running.
    let after = lab.status();
    assert_eq!(after.reloads, before.reloads);
    assert!(after.services[0].backends.iter().all(|b| !b.drained));

    // Not in the group: the socket's mode keeps it out.
    let out = steer_as_nobody(NOBODY - 1, &["status", "--socket", &socket]);
    assert!(!out.status.success(), "status outside the group succeeded");
    assert!(
        text(&out.stderr).contains(&format!("permission denied on {socket}: run as root")),
        "{}",
        text(&out.stderr)
    );
}

/// A daemon that does not answer (stopped with SIGSTOP) may still be
/// running: `stop --detach` says so and removes nothing.
#[test]
#[ignore = "needs root: runs steer run"]
fn stop_detach_leaves_a_daemon_that_does_not_answer_alone() {
    if !require_root() {
        return;
    }
    let mut lab = Lab::new(None);
    lab.start_daemon(None);
    let pins = lab.pins();
    assert!(!pins.is_empty(), "nothing pinned");
    signal(lab.daemon_pid(), libc::SIGSTOP);
    let started = Instant::now();
    let out = steer(&["stop", "--detach", "--config", &lab.config_str()]);
    let took = started.elapsed();
    signal(lab.daemon_pid(), libc::SIGCONT);
    let err = text(&out.stderr);
    assert!(!out.status.success(), "stop --detach succeeded: {err}");
    assert!(
        err.starts_with(&format!(
            "steer: error: steer did not answer on {} within 10s: a daemon may still be \
             running there",
            lab.socket_str()
        )),
        "{err}"
    );
    assert!(err.contains("so nothing was removed"), "{err}");
    assert!(took >= Duration::from_secs(10), "{took:?}");
    assert_eq!(lab.pins(), pins, "pins were removed");
    assert!(lab.xdp_attached(), "XDP was detached");
    // The daemon carries on once continued.
    assert_eq!(lab.status().services.len(), 1);

    // A killed daemon leaves a socket nobody listens on: that is cleaned up.
    let mut child = lab.daemon.take().expect("daemon");
    child.kill().expect("kill");
    wait_bounded(&mut child, Duration::from_secs(10)).expect("the daemon did not die");
    let out = steer(&["stop", "--detach", "--config", &lab.config_str()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).starts_with("no daemon running; detached from sd0 and removed "),
        "{}",
        text(&out.stdout)
    );
    assert!(lab.pins().is_empty());
    assert!(!lab.xdp_attached());
}

/// `steer reload --config FILE` reloads the daemon's own file: with another
/// FILE it refuses and names both.
#[test]
#[ignore = "needs root: runs steer run"]
fn reload_with_another_config_is_refused() {
    if !require_root() {
        return;
    }
    let mut lab = Lab::new(None);
    lab.start_daemon(None);
    let other = lab.dir.join("other.toml");
    std::fs::write(&other, lab.config_text(None, 7)).expect("other config");
    let out = steer(&["reload", "--config", &other.display().to_string()]);
    assert!(!out.status.success(), "reload of another file succeeded");
    assert!(
        text(&out.stderr).starts_with(&format!(
            "steer: error: refusing to reload: the daemon on {} was started with {}, not {}",
            lab.socket_str(),
            lab.config_str(),
            other.display()
        )),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(lab.status().reloads, 0);

    // The same file by another name (a link, a relative path): reloaded,
    // and the answer names the file the daemon read.
    let link = lab.dir.join("link.toml");
    std::os::unix::fs::symlink(&lab.config, &link).expect("symlink");
    let out = steer(&["reload", "--config", &link.display().to_string()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).starts_with(&format!("reloaded {} (generation ", lab.config_str())),
        "{}",
        text(&out.stdout)
    );
    let out = run_bounded(
        Command::new(STEER)
            .args(["reload", "--config", "steer.toml"])
            .current_dir(&lab.dir),
        CLI_TIMEOUT,
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(lab.status().reloads, 2);
}

/// Another user who owns the socket's directory can put their own server
/// there: `steer stop` refuses to talk to it, sends nothing, and reports
/// failure, where it used to print the stand-in's "stopping".
#[test]
#[ignore = "needs root: listens as nobody"]
fn the_cli_refuses_a_socket_of_another_user() {
    if !require_root() {
        return;
    }
    let scratch = common::Scratch::new("cs-standin");
    let run = scratch.path("run");
    std::fs::create_dir(&run).expect("mkdir");
    chown(&run, NOBODY, NOBODY);
    let socket = run.join("control.sock");
    let listener = listen_as_nobody(&socket);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let server = serve_stand_in(listener, stop.clone());
    let shown = socket.display().to_string();
    let owner = steer_api::client::describe_uid(NOBODY);

    let out = steer(&["stop", "--socket", &shown]);
    assert!(
        !out.status.success(),
        "stop succeeded: {}",
        text(&out.stdout)
    );
    assert!(
        text(&out.stderr).starts_with(&format!(
            "steer: error: refusing to use the control socket {shown}: the socket file is \
             owned by {owner}, not root; it may be another user's stand-in for steer, so \
             nothing was sent."
        )),
        "{}",
        text(&out.stderr)
    );
    assert!(!text(&out.stdout).contains("stopping"));

    // Chowned to look like root's: the listener's credentials still tell.
    chown(&socket, 0, 0);
    let out = steer(&["status", "--socket", &shown]);
    assert!(!out.status.success(), "status succeeded");
    assert!(
        text(&out.stderr).contains(&format!(
            "the process listening on it runs as {owner}, not root;"
        )),
        "{}",
        text(&out.stderr)
    );
    stop.store(true, Ordering::SeqCst);
    let received = server.join().expect("stand-in");
    assert!(
        received.iter().all(|r| r.is_empty()),
        "the stand-in received {received:?}"
    );
}
