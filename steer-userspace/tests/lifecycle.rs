//! The daemon's life cycle around its pins: one instance per pin
//! directory, a state file per instance, `stop` removing only what steer
//! pinned, a failed start undoing what it did, a restart reconciling the
//! interfaces and their modes, and the pin directory's mode. Privileged:
//! runs the real `steer run` (via `nsenter --net`, which keeps bpffs
//! visible) on veths in a network namespace of its own.
//!
//! Each test gets a namespace `stlc-<pid>-<n>` with two veth pairs
//! (sd0/sd1, sd2/sd3), its own temp dir and pin directories under
//! /sys/fs/bpf; a guard kills the daemons, removes the pins and deletes
//! the namespace, also when a test fails.

mod common;
use common::{ip, require_root, text, try_run_bounded, veth_config, wait_bounded, VethConfig};

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

const STEER: &str = env!("CARGO_BIN_EXE_steer");
const READY_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a start that must fail may take.
const FAIL_TIMEOUT: Duration = Duration::from_secs(20);
/// The map pins steer makes (docs/architecture.md, "Maps"): SETTINGS, VIPS,
/// VIP_ADDRS, VIP_FILTER, REALS, RINGS, TABLE_GEN, CONNTRACK4, CONNTRACK6,
/// VIP_STATS, REAL_STATS, PASSIVE_STATS, DROP_STATS, PATH_STATS,
/// SOURCE_MACS, SOURCE_MACS_HIGH, CLASS_V4, CLASS_V6, CLASS_V6_48,
/// CLASS_TABLES and RECENT_SYN.
const MAPS: usize = 21;

static NEXT: AtomicU32 = AtomicU32::new(0);

/// One instance's paths.
#[derive(Clone)]
struct Instance {
    config: PathBuf,
    socket: PathBuf,
    pin_dir: PathBuf,
    metrics: String,
}

struct Lab {
    ns: String,
    dir: PathBuf,
    tag: String,
    n: u32,
    daemons: Vec<Child>,
    logs: Vec<PathBuf>,
    pin_dirs: Vec<PathBuf>,
    created_ns: bool,
}

impl Lab {
    fn new() -> Lab {
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        let tag = format!("{}-{n}", std::process::id());
        let dir = std::env::temp_dir().join(format!("steer-lc-{tag}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        let mut lab = Lab {
            ns: format!("stlc-{tag}"),
            dir,
            tag,
            n,
            daemons: Vec::new(),
            logs: Vec::new(),
            pin_dirs: Vec::new(),
            created_ns: false,
        };
        let _ = try_run_bounded(
            Command::new("ip").args(["netns", "del", &lab.ns]),
            Duration::from_secs(10),
        );
        ip(&["netns", "add", &lab.ns]);
        lab.created_ns = true;
        let ns = lab.ns.clone();
        for (a, b) in [("sd0", "sd1"), ("sd2", "sd3")] {
            ip(&[
                "-n", &ns, "link", "add", a, "type", "veth", "peer", "name", b,
            ]);
            ip(&["-n", &ns, "link", "set", a, "up"]);
            ip(&["-n", &ns, "link", "set", b, "up"]);
        }
        ip(&["-n", &ns, "link", "set", "lo", "up"]);
        lab
    }

    /// An instance named `name` with its socket in `socket_dir` (relative
    /// to the lab's dir) and pins in `/sys/fs/bpf/steer-lc-<tag>-<pins>`.
    fn instance(&mut self, name: &str, socket_dir: &str, pins: &str, port: u32) -> Instance {
        let pin_dir = PathBuf::from(format!("/sys/fs/bpf/steer-lc-{}-{pins}", self.tag));
        let _ = std::fs::remove_dir_all(&pin_dir);
        if !self.pin_dirs.contains(&pin_dir) {
            self.pin_dirs.push(pin_dir.clone());
        }
        let i = Instance {
            config: self.dir.join(format!("{name}.toml")),
            socket: self.dir.join(socket_dir).join(format!("{name}.sock")),
            pin_dir,
            metrics: format!("127.0.0.1:{}", 20_000 + (self.n % 1000) * 10 + port),
        };
        self.write_config(&i, &["sd0"], "driver");
        i
    }

    fn write_config(&self, i: &Instance, ifaces: &[&str], mode: &str) {
        let t = veth_config(&VethConfig {
            interfaces: ifaces,
            mode,
            pin_dir: &i.pin_dir,
            socket: &i.socket,
            metrics: &i.metrics,
            b1_weight: 100,
            two_backends: false,
            control_extra: "",
        });
        std::fs::write(&i.config, t).expect("write config");
    }

    /// `steer run --config CONFIG ARGS` in the namespace, as a command.
    fn run_cmd(&self, i: &Instance, args: &[&str]) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net=/var/run/netns/{}", self.ns))
            .arg(STEER)
            .arg("run")
            .arg("--config")
            .arg(&i.config)
            .args(args)
            .env("NO_COLOR", "1");
        c
    }

    /// Starts a daemon and waits until it answers; returns its index.
    fn start(&mut self, i: &Instance, args: &[&str]) -> usize {
        let log = self.dir.join(format!("daemon-{}.log", self.logs.len()));
        let f = std::fs::File::create(&log).expect("log file");
        let child = self
            .run_cmd(i, args)
            .stdin(Stdio::null())
            .stdout(f.try_clone().expect("log fd"))
            .stderr(f)
            .spawn()
            .expect("spawn steer run");
        self.daemons.push(child);
        self.logs.push(log);
        let k = self.daemons.len() - 1;
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(st) = self.daemons[k].try_wait().expect("try_wait") {
                panic!("steer run exited early ({st}):\n{}", self.log(k));
            }
            let out = self.steer(&["status", "--socket", &i.socket.display().to_string()]);
            if out.status.success() {
                return k;
            }
            assert!(
                Instant::now() < deadline,
                "steer run did not answer within {READY_TIMEOUT:?}:\n{}",
                self.log(k)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Runs a `steer run` that must fail, bounded; returns its output.
    fn run_failing(&self, i: &Instance, args: &[&str]) -> Output {
        let out = try_run_bounded(&mut self.run_cmd(i, args), FAIL_TIMEOUT)
            .unwrap_or_else(|e| panic!("the start did not fail: {e}"));
        assert!(
            !out.status.success(),
            "steer run succeeded:\n{}{}",
            text(&out.stdout),
            text(&out.stderr)
        );
        out
    }

    fn log(&self, k: usize) -> String {
        std::fs::read_to_string(&self.logs[k]).unwrap_or_default()
    }

    fn steer(&self, args: &[&str]) -> Output {
        try_run_bounded(
            Command::new(STEER).args(args).env("NO_COLOR", "1"),
            Duration::from_secs(40),
        )
        .unwrap_or_else(|e| panic!("{e}"))
    }

    fn kill(&mut self, k: usize) {
        let c = &mut self.daemons[k];
        let _ = c.kill();
        wait_bounded(c, Duration::from_secs(10)).expect("the daemon did not die");
    }

    /// Stops daemon `k` with `steer stop ARGS` and waits for it to exit 0.
    fn stop(&mut self, k: usize, i: &Instance, args: &[&str]) {
        let mut a = vec!["stop", "--socket"];
        let s = i.socket.display().to_string();
        a.push(&s);
        a.extend_from_slice(args);
        let out = self.steer(&a);
        assert!(out.status.success(), "steer stop: {}", text(&out.stderr));
        let st = wait_bounded(&mut self.daemons[k], Duration::from_secs(20))
            .unwrap_or_else(|| panic!("steer run did not exit:\n{}", self.log(k)));
        assert!(st.success(), "steer run exited {st}:\n{}", self.log(k));
    }

    /// `ip -d link show dev IFACE` in the namespace.
    fn link(&self, iface: &str) -> String {
        ip(&["-n", &self.ns, "-d", "link", "show", "dev", iface])
    }

    fn xdp(&self, iface: &str) -> bool {
        self.link(iface).contains("prog/xdp")
    }

    /// The pin directory's entries, sorted.
    fn pins(i: &Instance) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(&i.pin_dir)
            .map(|rd| {
                rd.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }

    fn state_file(i: &Instance) -> PathBuf {
        i.socket
            .parent()
            .expect("socket dir")
            .join(steer::dataplane::persist::state_file_name(&i.pin_dir))
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for c in &mut self.daemons {
            let _ = c.kill();
            if wait_bounded(c, Duration::from_secs(10)).is_none() {
                eprintln!("cleanup: steer run (pid {}) did not die", c.id());
            }
        }
        for d in &self.pin_dirs {
            let p = steer::dataplane::Persist {
                pin_dir: d.clone(),
                state_file: self.dir.join("cleanup-state.json"),
            };
            if let Err(e) = steer::dataplane::Dataplane::remove_pins(&p) {
                eprintln!("cleanup: remove_pins {}: {e}", d.display());
            }
            // Whatever is left (foreign pins the test made).
            if let Ok(rd) = std::fs::read_dir(d) {
                for e in rd.flatten() {
                    let _ = std::fs::remove_file(e.path());
                }
            }
            let _ = std::fs::remove_dir(d);
        }
        if self.created_ns {
            if let Err(e) = try_run_bounded(
                Command::new("ip").args(["netns", "del", &self.ns]),
                Duration::from_secs(10),
            ) {
                eprintln!("cleanup: {e}");
            }
        }
        if std::thread::panicking() {
            for p in &self.logs {
                eprintln!(
                    "--- {}:\n{}",
                    p.display(),
                    std::fs::read_to_string(p).unwrap_or_default()
                );
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Creates a BPF array map and pins it at `path`, as another tool would.
fn pin_foreign_map(path: &Path) {
    use std::os::unix::ffi::OsStrExt as _;
    const BPF_MAP_CREATE: libc::c_long = 0;
    const BPF_OBJ_PIN: libc::c_long = 6;
    const BPF_MAP_TYPE_ARRAY: u32 = 2;
    // union bpf_attr, map-create part: type, key size, value size, entries.
    let mut attr = [0u8; 128];
    for (k, v) in [BPF_MAP_TYPE_ARRAY, 4, 4, 1].iter().enumerate() {
        attr[k * 4..k * 4 + 4].copy_from_slice(&v.to_ne_bytes());
    }
    // SAFETY: BPF_MAP_CREATE reads `attr.len()` bytes of a valid buffer.
    let fd = unsafe { libc::syscall(libc::SYS_bpf, BPF_MAP_CREATE, attr.as_ptr(), attr.len()) };
    assert!(
        fd >= 0,
        "BPF_MAP_CREATE: {}",
        std::io::Error::last_os_error()
    );
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).expect("path");
    // BPF_OBJ_PIN: pathname (u64 pointer), bpf_fd (u32).
    let mut attr = [0u8; 128];
    attr[..8].copy_from_slice(&(c.as_ptr() as u64).to_ne_bytes());
    attr[8..12].copy_from_slice(&(fd as u32).to_ne_bytes());
    // SAFETY: as above; the pathname pointer outlives the call.
    let rc = unsafe { libc::syscall(libc::SYS_bpf, BPF_OBJ_PIN, attr.as_ptr(), attr.len()) };
    let err = std::io::Error::last_os_error();
    // SAFETY: closing the descriptor BPF_MAP_CREATE returned; the pin
    // keeps the map.
    unsafe { libc::close(fd as i32) };
    assert_eq!(rc, 0, "BPF_OBJ_PIN {}: {err}", path.display());
}

#[test]
#[ignore = "needs root: BPF and network namespaces"]
fn a_second_run_on_the_same_pins_touches_nothing() {
    if !require_root() {
        return;
    }
    let mut lab = Lab::new();
    let a = lab.instance("a", "a", "pins", 1);
    let ka = lab.start(&a, &[]);
    let pid = lab.daemons[ka].id();
    let pins_before = Lab::pins(&a);
    assert_eq!(pins_before.len(), MAPS + 1, "{pins_before:?}");
    // The same pins; its own socket and metrics port, so nothing but the
    // pins is shared.
    let mut b = a.clone();
    b.config = lab.dir.join("b.toml");
    b.socket = lab.dir.join("b").join("b.sock");
    b.metrics = format!("127.0.0.1:{}", 20_000 + (lab.n % 1000) * 10 + 2);
    lab.write_config(&b, &["sd0"], "skb");
    let out = lab.run_failing(&b, &[]);
    let err = text(&out.stderr);
    assert!(
        err.contains("another steer is running") && err.contains(&format!("pid {pid}")),
        "the refusal does not name the running instance:\n{err}"
    );
    assert!(!b.socket.exists(), "the second instance bound its socket");
    // The first one is untouched: it answers, its pins and its driver-mode
    // attachment are as they were.
    assert!(lab
        .steer(&["status", "--socket", &a.socket.display().to_string()])
        .status
        .success());
    assert_eq!(Lab::pins(&a), pins_before);
    let link = lab.link("sd0");
    assert!(
        link.contains("xdp") && !link.contains("xdpgeneric"),
        "{link}"
    );
    // ... and still survives SIGKILL: its pins keep XDP attached.
    lab.kill(ka);
    assert!(lab.xdp("sd0"), "XDP went away with the killed daemon");
    assert_eq!(Lab::pins(&a), pins_before);
    // The lock went with the killed process: a new start adopts.
    let k = lab.start(&a, &[]);
    assert!(
        lab.log(k).contains("adopted the data plane"),
        "{}",
        lab.log(k)
    );
}

#[test]
#[ignore = "needs root: BPF and network namespaces"]
fn instances_sharing_a_socket_directory_keep_their_own_state() {
    if !require_root() {
        return;
    }
    let mut lab = Lab::new();
    let a = lab.instance("a", "run", "a", 1);
    let b = lab.instance("b", "run", "b", 2);
    lab.write_config(&b, &["sd2"], "driver");
    let ka = lab.start(&a, &[]);
    let kb = lab.start(&b, &[]);
    // Stopping b (detach) must leave a's state: a restart of a (after a
    // crash) adopts its flows' state.
    lab.stop(kb, &b, &[]);
    lab.kill(ka);
    let k = lab.start(&a, &[]);
    let log = lab.log(k);
    assert!(log.contains("adopted the data plane"), "{log}");
    // Because each has its own file.
    let (sa, sb) = (Lab::state_file(&a), Lab::state_file(&b));
    assert_ne!(sa, sb);
    assert!(sa.exists(), "a's state file is missing");
    assert!(!sb.exists(), "b's state file stayed after its stop");
}

#[test]
#[ignore = "needs root: BPF and network namespaces"]
fn the_old_shared_state_file_is_migrated_once() {
    if !require_root() {
        return;
    }
    let mut lab = Lab::new();
    let a = lab.instance("a", "run", "a", 1);
    let ka = lab.start(&a, &[]);
    lab.kill(ka);
    // As an older steer left it.
    let keyed = Lab::state_file(&a);
    let legacy = keyed.with_file_name("dataplane-state.json");
    std::fs::rename(&keyed, &legacy).expect("rename state file");
    let k = lab.start(&a, &[]);
    let log = lab.log(k);
    assert!(log.contains("adopted the data plane"), "{log}");
    assert!(log.contains("migrated the state file"), "{log}");
    assert!(keyed.exists(), "no per-instance state file after migration");
    assert!(!legacy.exists(), "the old state file was used but kept");

    // An old file that does not match the pinned maps (another instance's,
    // with other sizes) is neither used nor removed.
    lab.kill(k);
    let mut other = steer::dataplane::persist::load(&keyed)
        .expect("read state")
        .expect("state file");
    other.max_reals *= 2;
    steer::dataplane::persist::save(&legacy, &other).expect("write old file");
    std::fs::remove_file(&keyed).expect("remove keyed file");
    let k = lab.start(&a, &[]);
    let log = lab.log(k);
    assert!(!log.contains("adopted the data plane"), "{log}");
    assert!(log.contains("left an old state file alone"), "{log}");
    assert!(legacy.exists(), "a foreign old state file was removed");
}

#[test]
#[ignore = "needs root: BPF and network namespaces"]
fn stop_removes_only_what_steer_pinned() {
    if !require_root() {
        return;
    }
    let mut lab = Lab::new();
    let a = lab.instance("a", "a", "pins", 1);
    let ka = lab.start(&a, &[]);
    pin_foreign_map(&a.pin_dir.join("other_tool_map"));
    // Named like a link of steer's, but a map.
    pin_foreign_map(&a.pin_dir.join("link-fake0"));
    let foreign = vec!["link-fake0".to_string(), "other_tool_map".to_string()];
    lab.stop(ka, &a, &[]);
    assert!(!lab.xdp("sd0"), "sd0 still has XDP after stop");
    assert_eq!(
        Lab::pins(&a),
        foreign,
        "stop must remove steer's pins and only those"
    );
    let log = lab.log(ka);
    assert!(
        log.contains("left in the pin directory") && log.contains("other_tool_map"),
        "{log}"
    );
    // The same without a daemon: `stop --detach` after a kill.
    let k = lab.start(&a, &[]);
    lab.kill(k);
    let out = lab.steer(&[
        "stop",
        "--detach",
        "--config",
        &a.config.display().to_string(),
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let said = text(&out.stdout);
    assert!(said.contains("detached from sd0"), "{said}");
    assert!(
        said.contains("other_tool_map: not pinned by steer")
            && said.contains("link-fake0: not a BPF link"),
        "stop does not say what it left:\n{said}"
    );
    assert!(!lab.xdp("sd0"));
    assert_eq!(Lab::pins(&a), foreign);
}

#[test]
#[ignore = "needs root: BPF and network namespaces"]
fn a_failed_fresh_start_leaves_nothing_in_the_kernel() {
    if !require_root() {
        return;
    }
    let mut lab = Lab::new();
    let mut a = lab.instance("a", "a", "pins", 1);
    // An interface that does not exist, after one that does.
    let out = lab.run_failing(&a, &["--iface", "sd0", "--iface", "nosuch0"]);
    let err = text(&out.stderr);
    assert!(err.contains("nosuch0"), "{err}");
    assert!(!lab.xdp("sd0"), "sd0 stayed attached after a failed start");
    assert!(
        !a.pin_dir.exists(),
        "pins stayed after a failed start: {:?}",
        Lab::pins(&a)
    );
    // A control socket path that cannot be bound: under a regular file;
    // and a regular file itself, in a usable directory (so only the bind
    // fails, after the lock).
    std::fs::write(lab.dir.join("file"), "").expect("file");
    std::fs::create_dir_all(lab.dir.join("s")).expect("dir");
    std::fs::write(lab.dir.join("s").join("a.sock"), "").expect("file");
    for socket in [
        lab.dir.join("file").join("a.sock"),
        lab.dir.join("s").join("a.sock"),
    ] {
        a.socket = socket;
        lab.write_config(&a, &["sd0"], "driver");
        let out = lab.run_failing(&a, &[]);
        let err = text(&out.stderr);
        let dir = a.socket.parent().expect("socket dir").display().to_string();
        assert!(
            err.contains(&dir) && err.contains("control socket"),
            "the error does not name the socket's directory:\n{err}"
        );
        assert!(!lab.xdp("sd0"), "sd0 stayed attached after a failed start");
        assert!(!a.pin_dir.exists(), "pins stayed: {:?}", Lab::pins(&a));
    }
}

#[test]
#[ignore = "needs root: BPF and network namespaces"]
fn a_failed_start_keeps_an_adopted_state_as_found() {
    if !require_root() {
        return;
    }
    let mut lab = Lab::new();
    let a = lab.instance("a", "a", "pins", 1);
    let ka = lab.start(&a, &[]);
    lab.kill(ka);
    let pins = Lab::pins(&a);
    assert_eq!(pins.len(), MAPS + 1, "{pins:?}");
    // Adopts, attaches sd2 anew, fails on nosuch0.
    let out = lab.run_failing(
        &a,
        &["--iface", "sd0", "--iface", "sd2", "--iface", "nosuch0"],
    );
    let err = text(&out.stderr);
    assert!(lab.xdp("sd0"), "the adopted attachment of sd0 went away");
    assert!(!lab.xdp("sd2"), "sd2, attached by the failed start, stayed");
    assert_eq!(Lab::pins(&a), pins, "the adopted pins changed");
    assert!(
        Lab::state_file(&a).exists(),
        "the adopted state file went away"
    );
    assert!(err.contains("kept as found"), "{err}");
    let k = lab.start(&a, &[]);
    assert!(lab.log(k).contains("adopted the data plane"));
}

#[test]
#[ignore = "needs root: BPF and network namespaces"]
fn a_restart_reconciles_interfaces_and_modes() {
    if !require_root() {
        return;
    }
    let mut lab = Lab::new();
    let a = lab.instance("a", "a", "pins", 1);
    let k = lab.start(&a, &[]);
    lab.stop(k, &a, &["--keep-forwarding"]);
    assert!(lab.xdp("sd0"));
    // Another interface: sd0 is let go.
    let k = lab.start(&a, &["--iface", "sd2"]);
    let log = lab.log(k);
    assert!(!lab.xdp("sd0"), "sd0 kept the old attachment:\n{log}");
    assert!(lab.xdp("sd2"));
    assert!(!Lab::pins(&a).contains(&"link-sd0".to_string()));
    assert!(log.contains("detached XDP from an interface"), "{log}");
    lab.kill(k);
    // Another mode: driver → skb.
    let before = lab.link("sd2");
    assert!(!before.contains("xdpgeneric"), "{before}");
    let k = lab.start(&a, &["--iface", "sd2", "--mode", "skb"]);
    let now = lab.link("sd2");
    assert!(now.contains("xdpgeneric"), "still not in skb mode:\n{now}");
    assert!(
        lab.log(k).contains("another mode"),
        "the mode change is not logged:\n{}",
        lab.log(k)
    );
    // `auto` accepts the mode it finds.
    lab.kill(k);
    let k = lab.start(&a, &["--iface", "sd2", "--mode", "auto"]);
    assert!(lab.link("sd2").contains("xdpgeneric"));
    assert!(lab.log(k).contains("took over the pinned XDP link"));
}

#[test]
#[ignore = "needs root: BPF and network namespaces"]
fn the_pin_directory_is_0700_whatever_the_umask() {
    if !require_root() {
        return;
    }
    let mut lab = Lab::new();
    let a = lab.instance("a", "a", "pins", 1);
    let mut c = Command::new("sh");
    c.arg("-c")
        .arg(format!(
            "umask 000; exec nsenter --net=/var/run/netns/{} {STEER} run --config {}",
            lab.ns,
            a.config.display()
        ))
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    lab.daemons.push(c.spawn().expect("spawn"));
    lab.logs.push(lab.dir.join("none.log"));
    let deadline = Instant::now() + READY_TIMEOUT;
    while !Lab::pins(&a).contains(&"link-sd0".to_string()) {
        assert!(Instant::now() < deadline, "the daemon did not attach");
        std::thread::sleep(Duration::from_millis(100));
    }
    let mode = std::fs::metadata(&a.pin_dir)
        .expect("pin dir")
        .permissions()
        .mode()
        & 0o7777;
    assert_eq!(mode, 0o700, "pin directory mode {mode:o}");
}

#[test]
#[ignore = "needs root: BPF and network namespaces"]
fn a_taken_metrics_address_fails_the_start_before_the_kernel_is_touched() {
    if !require_root() {
        return;
    }
    let mut lab = Lab::new();
    let a = lab.instance("a", "a", "pins-a", 1);
    lab.start(&a, &[]);
    // Another instance (own pins, socket and interface) whose metrics
    // address is the one `a` already serves.
    let mut b = lab.instance("b", "b", "pins-b", 2);
    b.metrics = a.metrics.clone();
    lab.write_config(&b, &["sd2"], "driver");
    let out = lab.run_failing(&b, &[]);
    let err = text(&out.stderr);
    assert!(
        err.contains("metrics.listen") && err.contains(&a.metrics),
        "the error does not name metrics.listen and the address:\n{err}"
    );
    assert!(!lab.xdp("sd2"), "sd2 was attached by a start that failed");
    assert!(
        !b.pin_dir.exists(),
        "pins were left by a start that failed: {:?}",
        Lab::pins(&b)
    );
    assert!(lab.xdp("sd0"), "the running instance lost its attachment");
}
