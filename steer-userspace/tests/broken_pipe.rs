//! A closed standard output or error (`steer status | head -c0`,
//! `steer run 2>&1 | logger` after logger died) and SIGPIPE: the CLI
//! commands exit quietly, the daemon carries on.

mod common;
use common::{require_root, Scratch};

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const STEER: &str = env!("CARGO_BIN_EXE_steer");

/// The write end of a pipe whose read end is already closed: every write
/// to it fails with EPIPE (SIGPIPE being ignored, as Rust programs do).
fn closed_pipe() -> std::io::PipeWriter {
    let (reader, writer) = std::io::pipe().expect("pipe");
    drop(reader);
    writer
}

/// Runs `cmd` to completion within `limit`.
fn run_bounded(cmd: &mut Command, limit: Duration) -> Output {
    let mut child = cmd.stdin(Stdio::null()).spawn().expect("spawn");
    let deadline = Instant::now() + limit;
    while child.try_wait().expect("try_wait").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{cmd:?} did not finish within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().expect("output")
}

/// Exit status 0 and nothing on stderr (no panic, no error).
fn assert_quiet_success(out: &Output) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert_eq!(stderr, "");
}

/// A valid config: one service, one backend. `dataplane` and `rest` add
/// keys to [dataplane] and tables after it.
fn config_text(dataplane: &str, rest: &str) -> String {
    format!(
        r#"dataplane = {{ next_hop_mac = "02:00:00:00:00:fe", encap_source_v4 = "198.18.0.1/32"{dataplane} }}
regions = [{{ name = "eu" }}]
backends = [{{ name = "eu-1", address = "192.0.2.11", region = "eu" }}]
services = [{{ name = "web", vip = "203.0.113.10", port = 80, protocol = "tcp", regions = ["eu"] }}]
{rest}
"#
    )
}

fn check(config: &Path, stdout: impl Into<Stdio>, stderr: impl Into<Stdio>) -> Output {
    run_bounded(
        Command::new(STEER)
            .args(["check", "--config"])
            .arg(config)
            .stdout(stdout)
            .stderr(stderr),
        Duration::from_secs(20),
    )
}

#[test]
fn check_with_stdout_closed_exits_quietly() {
    let dir = Scratch::new("pipe-check");
    let config = dir.path("steer.toml");
    std::fs::write(&config, config_text("", "")).expect("config");

    // With stdout readable: the OK line (so there is something to write).
    let out = check(&config, Stdio::piped(), Stdio::piped());
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains(": OK ("));

    // `steer check ... | true`: exit 0, nothing on stderr (no panic).
    assert_quiet_success(&check(&config, closed_pipe(), Stdio::piped()));

    // An invalid config still fails, whatever happened to stdout, and says
    // why on stderr; with stderr closed too it still fails, without a panic.
    std::fs::write(&config, "[dataplane]\nnope = 1\n").expect("config");
    let out = check(&config, closed_pipe(), Stdio::piped());
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("error"));
    let out = check(&config, closed_pipe(), closed_pipe());
    assert_eq!(out.status.code(), Some(1));
}

/// `steer run` in a network namespace of its own (on its loopback, in skb
/// mode), killed and its pins removed if the test fails half way.
struct Daemon {
    child: Child,
    pin_dir: PathBuf,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.pin_dir);
    }
}

#[test]
#[ignore = "needs root: BPF or network namespaces (cargo xtask test runs it)"]
fn the_daemon_survives_closed_pipes_and_sigpipe() {
    if !require_root() {
        return;
    }
    let dir = Scratch::new("pipe-daemon");
    let socket = dir.path("control.sock");
    let pin_dir = PathBuf::from(format!("/sys/fs/bpf/steer-pipe-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&pin_dir);
    let config = dir.path("steer.toml");
    std::fs::write(
        &config,
        config_text(
            &format!(
                r#", interfaces = ["lo"], mode = "skb", pin_path = "{}""#,
                pin_dir.display()
            ),
            &format!(r#"control = {{ socket = "{}" }}"#, socket.display()),
        ),
    )
    .expect("config");

    // The namespace (and with it the XDP attachment) ends with the daemon.
    // Its log goes to a pipe nobody reads: every line is an EPIPE.
    let child = Command::new("unshare")
        .args([
            "--net",
            "sh",
            "-c",
            "ip link set lo up && exec \"$0\" \"$@\"",
        ])
        .arg(STEER)
        .args(["run", "--config"])
        .arg(&config)
        .env("RUST_LOG", "debug")
        .stdin(Stdio::null())
        .stdout(closed_pipe())
        .stderr(closed_pipe())
        .spawn()
        .expect("spawn unshare steer run");
    let mut daemon = Daemon { child, pin_dir };
    let status = |stdout: Stdio| {
        run_bounded(
            Command::new(STEER)
                .args(["status", "--socket"])
                .arg(&socket)
                .stdout(stdout)
                .stderr(Stdio::piped()),
            Duration::from_secs(20),
        )
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(st) = daemon.child.try_wait().expect("try_wait") {
            panic!("steer run died with its log going to a closed pipe: {st}");
        }
        if status(Stdio::null()).status.success() {
            break;
        }
        assert!(Instant::now() < deadline, "steer run never answered");
        std::thread::sleep(Duration::from_millis(100));
    }

    // An explicit SIGPIPE does not kill it either.
    let pid = i32::try_from(daemon.child.id()).expect("pid");
    // SAFETY: kill(2) on our own child, which has not been reaped.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGPIPE) }, 0);
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        daemon.child.try_wait().expect("try_wait").is_none(),
        "SIGPIPE killed steer run"
    );

    // `steer status | head -c0`: the table has nowhere to go; exit 0,
    // no panic. The daemon still answers afterwards.
    assert_quiet_success(&status(closed_pipe().into()));
    let out = status(Stdio::piped());
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("web"));

    // A clean stop: it exits 0 and removes its pins.
    let out = run_bounded(
        Command::new(STEER)
            .args(["stop", "--socket"])
            .arg(&socket)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped()),
        Duration::from_secs(30),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let deadline = Instant::now() + Duration::from_secs(15);
    let st = loop {
        if let Some(st) = daemon.child.try_wait().expect("try_wait") {
            break st;
        }
        assert!(
            Instant::now() < deadline,
            "steer run did not exit after stop"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(st.success(), "steer run exited with {st}");
    assert!(!daemon.pin_dir.exists(), "pins left behind");
}
