//! The processes `lab up` starts (one `steer-lab-backend serve` per
//! backend namespace): pid files, logs, start, stop.
use std::{
    fs,
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::Stdio,
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};

use super::{
    sys,
    topo::{serve_args, Backend},
};

/// Everything the lab keeps on the host: the backend binary, pid files,
/// logs; steer's control socket and state in `steer/` (examples/lab.toml).
pub const RUN_DIR: &str = "/run/steer-lab";
/// How long a backend may take to bind its sockets.
pub const READY_TIMEOUT: Duration = Duration::from_secs(10);
const BINARY_NAME: &str = "steer-lab-backend";

pub fn run_dir() -> PathBuf {
    PathBuf::from(RUN_DIR)
}

pub fn bin_path() -> PathBuf {
    run_dir().join("bin").join(BINARY_NAME)
}

pub fn pid_file(name: &str) -> PathBuf {
    run_dir().join("pids").join(format!("{name}.pid"))
}

pub fn log_file(name: &str) -> PathBuf {
    run_dir().join("logs").join(format!("{name}.log"))
}

/// The last `n` lines of a log, for error messages.
pub fn log_tail(path: &Path, n: usize) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Whether `pid` is a backend process called `name` (guards against a
/// stale pid file naming some other process).
fn is_backend(pid: i32, name: &str) -> bool {
    let cmd = sys::cmdline(pid);
    sys::alive(pid) && cmd.contains(BINARY_NAME) && cmd.contains(&format!(" --name {name} "))
}

/// The pid of backend `name` if it runs.
pub fn backend_pid(name: &str) -> Option<i32> {
    let pid: i32 = fs::read_to_string(pid_file(name))
        .ok()?
        .trim()
        .parse()
        .ok()?;
    is_backend(pid, name).then_some(pid)
}

/// Starts backend `b` in its namespace, detached (own session, output to
/// its log), and records its pid. Does not wait for it to be ready.
pub fn spawn_backend(b: &Backend, bin: &Path) -> Result<i32> {
    if let Some(pid) = backend_pid(b.name) {
        bail!("backend {} already runs (pid {pid})", b.name);
    }
    for dir in ["pids", "logs"] {
        fs::create_dir_all(run_dir().join(dir))?;
    }
    let log = fs::File::create(log_file(b.name))
        .with_context(|| format!("creating {}", log_file(b.name).display()))?;
    let mut cmd = sys::command_in(&b.ns(), bin)?;
    cmd.args(serve_args(b))
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    // SAFETY: setsid(2) is async-signal-safe. Its own session keeps the
    // backend alive when the terminal that ran `lab up` goes away.
    unsafe {
        cmd.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    let child = cmd
        .spawn()
        .with_context(|| format!("starting backend {} in {}", b.name, b.ns()))?;
    let pid = i32::try_from(child.id())?;
    fs::write(pid_file(b.name), format!("{pid}\n"))?;
    Ok(pid)
}

/// Waits until every backend in `started` has printed its ready line.
pub fn wait_ready(started: &[(&Backend, i32)]) -> Result<()> {
    let deadline = Instant::now() + READY_TIMEOUT;
    let mut waiting: Vec<&(&Backend, i32)> = started.iter().collect();
    while !waiting.is_empty() {
        let mut still = Vec::new();
        for entry in waiting {
            let (b, pid) = entry;
            let log = log_file(b.name);
            let text = fs::read_to_string(&log).unwrap_or_default();
            if text.contains(" ready: ") {
                continue;
            }
            if !sys::alive(*pid) {
                bail!(
                    "backend {} (pid {pid}) exited during start; {}:\n{}",
                    b.name,
                    log.display(),
                    log_tail(&log, 20)
                );
            }
            still.push(entry);
        }
        waiting = still;
        if waiting.is_empty() {
            break;
        }
        if Instant::now() >= deadline {
            let names: Vec<&str> = waiting.iter().map(|(b, _)| b.name).collect();
            bail!(
                "backend(s) {} not ready after {READY_TIMEOUT:?}; see {}",
                names.join(", "),
                run_dir().join("logs").display()
            );
        }
        thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// Stops backend `name` if it runs; removes its pid file. Returns the pid
/// it stopped.
pub fn stop_backend(name: &str) -> Result<Option<i32>> {
    let pid = backend_pid(name);
    if let Some(p) = pid {
        let left = sys::terminate(&[p], Duration::from_secs(2));
        if !left.is_empty() {
            bail!("backend {name} (pid {p}) survived SIGKILL");
        }
    }
    let _ = fs::remove_file(pid_file(name));
    Ok(pid)
}

/// Every pid file's (name, pid) whose process still runs.
pub fn recorded() -> Vec<(String, i32)> {
    let Ok(dir) = fs::read_dir(run_dir().join("pids")) else {
        return Vec::new();
    };
    let mut v = Vec::new();
    for e in dir.flatten() {
        let file = e.file_name().to_string_lossy().into_owned();
        let Some(name) = file.strip_suffix(".pid") else {
            continue;
        };
        if let Some(pid) = backend_pid(name) {
            v.push((name.to_owned(), pid));
        }
    }
    v.sort();
    v
}
