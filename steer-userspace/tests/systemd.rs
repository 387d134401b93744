//! What the systemd unit (`dist/steer.service`) relies on, without
//! systemd: the unit's own command lines run against a daemon on a veth in
//! a network namespace of the test's, with `NOTIFY_SOCKET` pointing at a
//! datagram socket the test reads (as systemd would for `Type=notify`).
//! Privileged: needs root.
//!
//! A guard kills the daemon, detaches and unpins (`steer stop --detach`),
//! deletes the namespace and removes the temp files, also when a test
//! fails.

mod common;
use common::{ip, require_root, run_bounded, text, veth_config, VethConfig};

use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use steer::api::StatusReport;

const STEER: &str = env!("CARGO_BIN_EXE_steer");
const UNIT: &str = include_str!("../../dist/steer.service");

static NEXT_LAB: AtomicU32 = AtomicU32::new(0);

/// How long start-up may take, and a reload.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// Runs `cmd`, killing it after 40 s.
fn run(cmd: &mut Command) -> Output {
    run_bounded(cmd, Duration::from_secs(40))
}

/// The value of `key=` in the unit's [Service] section, with the
/// installed paths replaced by the test's binary and config.
fn unit_command(key: &str, config: &Path) -> Vec<String> {
    let line = UNIT
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{key}=")))
        .unwrap_or_else(|| panic!("dist/steer.service has no {key}="));
    line.split_whitespace()
        .map(|w| match w {
            "/usr/bin/steer" => STEER.to_string(),
            "/etc/steer/steer.toml" => config.display().to_string(),
            w => w.to_string(),
        })
        .collect()
}

struct Lab {
    ns: String,
    dir: PathBuf,
    config: PathBuf,
    socket: PathBuf,
    pin_dir: PathBuf,
    notify: UnixDatagram,
    notify_path: PathBuf,
    daemon: Option<Child>,
    log: PathBuf,
}

impl Lab {
    fn new() -> Lab {
        let id = format!(
            "{}-{}",
            std::process::id(),
            NEXT_LAB.fetch_add(1, Ordering::SeqCst)
        );
        let dir = std::env::temp_dir().join(format!("steer-sd-{id}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        let notify_path = dir.join("notify.sock");
        let notify = UnixDatagram::bind(&notify_path).expect("bind the notify socket");
        let lab = Lab {
            ns: format!("stsd-{id}"),
            config: dir.join("steer.toml"),
            socket: dir.join("control.sock"),
            pin_dir: PathBuf::from(format!("/sys/fs/bpf/steer-sd-{id}")),
            log: dir.join("daemon.log"),
            dir,
            notify,
            notify_path,
            daemon: None,
        };
        let _ = run(Command::new("ip").args(["netns", "del", &lab.ns]));
        let _ = std::fs::remove_dir_all(&lab.pin_dir);
        ip(&["netns", "add", &lab.ns]);
        ip(&[
            "-n", &lab.ns, "link", "add", "sd0", "type", "veth", "peer", "name", "sd1",
        ]);
        for dev in ["lo", "sd0", "sd1"] {
            ip(&["-n", &lab.ns, "link", "set", dev, "up"]);
        }
        lab.write_config(100);
        lab
    }

    fn write_config(&self, b1_weight: u32) {
        let text = veth_config(&VethConfig {
            interfaces: &["sd0"],
            mode: "driver",
            pin_dir: &self.pin_dir,
            socket: &self.socket,
            metrics: "127.0.0.1:9477",
            b1_weight,
            two_backends: true,
            control_extra: "",
        });
        let tmp = self.dir.join("steer.toml.tmp");
        std::fs::write(&tmp, text).expect("write config");
        std::fs::rename(&tmp, &self.config).expect("rename config");
    }

    /// Starts the unit's ExecStart in the namespace, with `NOTIFY_SOCKET`
    /// set, logging JSON.
    fn start(&mut self) {
        let cmd = unit_command("ExecStart", &self.config);
        self.start_cmd(&cmd);
    }

    /// Starts `cmd` (`steer run ...`) in the namespace, with
    /// `NOTIFY_SOCKET` set, logging JSON.
    fn start_cmd(&mut self, cmd: &[String]) {
        let f = std::fs::File::create(&self.log).expect("log file");
        let child = Command::new("nsenter")
            .arg(format!("--net=/var/run/netns/{}", self.ns))
            .arg(&cmd[0])
            .arg("--log-format")
            .arg("json")
            .args(&cmd[1..])
            .env("NOTIFY_SOCKET", &self.notify_path)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(f.try_clone().expect("log fd"))
            .stderr(f)
            .spawn()
            .expect("spawn nsenter steer run");
        self.daemon = Some(child);
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The next notification, within `timeout`.
    fn notification(&mut self, timeout: Duration) -> String {
        self.notify
            .set_read_timeout(Some(timeout))
            .expect("read timeout");
        let mut buf = [0u8; 4096];
        match self.notify.recv(&mut buf) {
            Ok(n) => text(&buf[..n]),
            Err(e) => {
                let exited = self
                    .daemon
                    .as_mut()
                    .and_then(|c| c.try_wait().ok().flatten());
                panic!(
                    "no notification within {timeout:?} ({e}); daemon exited: {exited:?}\n{}",
                    self.log()
                )
            }
        }
    }

    fn steer(&self, args: &[&str]) -> Output {
        run(Command::new(STEER).args(args).env("NO_COLOR", "1"))
    }

    fn status(&self) -> StatusReport {
        let out = self.steer(&[
            "status",
            "--json",
            "--socket",
            self.socket.to_str().unwrap(),
        ]);
        assert!(
            out.status.success(),
            "steer status: {}\n{}",
            text(&out.stderr),
            self.log()
        );
        serde_json::from_slice(&out.stdout).expect("status JSON")
    }

    fn xdp_attached(&self) -> bool {
        ip(&["-n", &self.ns, "link", "show", "dev", "sd0"]).contains("prog/xdp")
    }

    /// Waits (bounded) for the daemon to exit and returns its status.
    fn wait_exit(&mut self) -> std::process::ExitStatus {
        let mut child = self.daemon.take().expect("daemon");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(st) = child.try_wait().expect("try_wait") {
                return st;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("steer run did not exit within 20 s:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if let Some(mut child) = self.daemon.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let out = run(Command::new(STEER)
            .args(["stop", "--detach", "--config"])
            .arg(&self.config));
        if !out.status.success() {
            eprintln!("cleanup: steer stop --detach: {}", text(&out.stderr));
        }
        if let Ok(rd) = std::fs::read_dir(&self.pin_dir) {
            for e in rd.flatten() {
                let _ = std::fs::remove_file(e.path());
            }
        }
        let _ = std::fs::remove_dir(&self.pin_dir);
        let out = run(Command::new("ip").args(["netns", "del", &self.ns]));
        if !out.status.success() {
            eprintln!("cleanup: ip netns del {}: {}", self.ns, text(&out.stderr));
        }
        if std::thread::panicking() {
            eprintln!("--- daemon log:\n{}", self.log());
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// READY=1 once forwarding (the control socket answers at once, XDP is on
/// sd0); RELOADING=1 then READY=1 around the unit's ExecReload, which
/// prints what changed; STOPPING=1 on SIGTERM, after which XDP keeps
/// forwarding and the next start adopts the pinned state.
#[test]
#[ignore = "needs root: BPF or network namespaces (cargo xtask test runs it)"]
fn unit_commands_notify_reload_and_restart_keeps_forwarding() {
    if !require_root() {
        return;
    }
    let mut lab = Lab::new();
    let check = unit_command("ExecStartPre", &lab.config);
    let out = run(Command::new(&check[0]).args(&check[1..]));
    assert!(out.status.success(), "ExecStartPre: {}", text(&out.stderr));

    lab.start();
    let ready = lab.notification(READY_TIMEOUT);
    assert!(ready.lines().any(|l| l == "READY=1"), "{ready:?}");
    assert!(ready.contains("STATUS=forwarding"), "{ready:?}");
    // Ready means ready: no retry needed.
    assert!(lab.xdp_attached(), "READY=1 before XDP was attached");
    let st = lab.status();
    assert_eq!(st.version, env!("CARGO_PKG_VERSION"));
    assert_eq!(st.interfaces.len(), 1, "{:?}", st.interfaces);
    assert_eq!(st.interfaces[0].name, "sd0");
    assert_eq!(st.interfaces[0].mode, "driver");
    assert!(!st.interfaces[0].adopted);
    assert!(st.drops.contains_key("fragment"), "{:?}", st.drops);
    // JSON logs: every line is an object; one says forwarding.
    let log = lab.log();
    let lines: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    assert!(
        lines
            .iter()
            .any(|v| v["message"] == "steer is forwarding" && v["level"] == "INFO"),
        "{log}"
    );

    // ExecReload, after a weight change.
    lab.write_config(50);
    let reload = unit_command("ExecReload", &lab.config);
    let out = run(Command::new(&reload[0]).args(&reload[1..]));
    assert!(
        out.status.success(),
        "ExecReload: {}\n{}",
        text(&out.stderr),
        lab.log()
    );
    let said = text(&out.stdout);
    assert!(said.contains("(generation 2): 1 change(s)"), "{said}");
    assert!(
        said.contains("backend b1 changed: weight 100 -> 50"),
        "{said}"
    );
    let reloading = lab.notification(READY_TIMEOUT);
    assert!(
        reloading.lines().any(|l| l == "RELOADING=1"),
        "{reloading:?}"
    );
    assert!(reloading.contains("MONOTONIC_USEC="), "{reloading:?}");
    let ready = lab.notification(READY_TIMEOUT);
    assert!(ready.lines().any(|l| l == "READY=1"), "{ready:?}");
    assert!(ready.contains("generation 2"), "{ready:?}");
    assert!(lab.log().contains("backend b1 changed: weight 100 -> 50"));

    // systemctl stop/restart: SIGTERM.
    let pid = lab.daemon.as_ref().expect("daemon").id().to_string();
    let out = run(Command::new("kill").args(["-TERM", &pid]));
    assert!(out.status.success(), "kill: {}", text(&out.stderr));
    let stopping = lab.notification(READY_TIMEOUT);
    assert!(stopping.lines().any(|l| l == "STOPPING=1"), "{stopping:?}");
    let st = lab.wait_exit();
    assert!(st.success(), "steer run exited with {st}:\n{}", lab.log());
    assert!(lab.xdp_attached(), "SIGTERM detached XDP");
    assert!(lab.pin_dir.exists(), "SIGTERM removed the pins");

    // The next start adopts.
    lab.start();
    let ready = lab.notification(READY_TIMEOUT);
    assert!(ready.lines().any(|l| l == "READY=1"), "{ready:?}");
    let log = lab.log();
    assert!(
        log.contains("adopted the data plane of a previous run"),
        "{log}"
    );
    let st = lab.status();
    assert!(st.interfaces[0].adopted, "{:?}", st.interfaces);
    assert_eq!(st.generation, 1);
}

/// Without --on-sigterm, SIGTERM still detaches and removes the pins (as
/// before the unit existed), and says so to systemd.
#[test]
#[ignore = "needs root: BPF or network namespaces (cargo xtask test runs it)"]
fn sigterm_detaches_by_default() {
    if !require_root() {
        return;
    }
    let mut lab = Lab::new();
    let cmd: Vec<String> = [STEER, "run", "--config", lab.config.to_str().unwrap()]
        .map(String::from)
        .to_vec();
    lab.start_cmd(&cmd);
    let ready = lab.notification(READY_TIMEOUT);
    assert!(ready.lines().any(|l| l == "READY=1"), "{ready:?}");
    assert!(lab.xdp_attached());
    let pid = lab.daemon.as_ref().expect("daemon").id().to_string();
    let out = run(Command::new("kill").args(["-TERM", &pid]));
    assert!(out.status.success(), "kill: {}", text(&out.stderr));
    let stopping = lab.notification(READY_TIMEOUT);
    assert!(stopping.lines().any(|l| l == "STOPPING=1"), "{stopping:?}");
    assert!(stopping.contains("detaching"), "{stopping:?}");
    let st = lab.wait_exit();
    assert!(st.success(), "steer run exited with {st}:\n{}", lab.log());
    assert!(!lab.xdp_attached(), "SIGTERM left XDP attached");
    assert!(!lab.pin_dir.exists(), "SIGTERM left the pins");
}
