//! Helpers shared by the privileged integration tests.
#![allow(dead_code)]

/// True when the test may load BPF programs (root; bpffs mounted for pins).
/// Not root: skips locally, but fails loudly under CI=true, where these
/// tests must run.
pub fn require_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        if let Err(e) = steer::dataplane::ensure_bpffs() {
            panic!("pinning needs a BPF filesystem at /sys/fs/bpf: {e}");
        }
        return true;
    }
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("this test loads BPF programs and needs root; CI must run as root");
    }
    eprintln!("SKIP: not root, cannot load BPF programs");
    false
}

/// A scratch directory under the system's temporary directory, unique to
/// this process and `tag`, removed on drop.
pub struct Scratch(std::path::PathBuf);

impl Scratch {
    pub fn new(tag: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!("steer-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("scratch dir");
        Scratch(dir)
    }

    pub fn path(&self, name: &str) -> std::path::PathBuf {
        self.0.join(name)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs `cmd` to completion, killing it after `timeout`; Err if it cannot
/// be run or does not finish.
pub fn try_run_bounded(
    cmd: &mut std::process::Command,
    timeout: std::time::Duration,
) -> Result<std::process::Output, String> {
    use std::io::Read as _;
    use std::process::Stdio;
    let shown = format!("{cmd:?}");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("spawning {shown}: {e}"))?;
    let mut out = child.stdout.take().expect("piped stdout");
    let mut err = child.stderr.take().expect("piped stderr");
    let out_t = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = out.read_to_end(&mut v);
        v
    });
    let err_t = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = err.read_to_end(&mut v);
        v
    });
    let Some(status) = wait_bounded(&mut child, timeout) else {
        let _ = child.kill();
        let _ = child.wait();
        return Err(format!("{shown} did not finish within {timeout:?}"));
    };
    Ok(std::process::Output {
        status,
        stdout: out_t.join().unwrap_or_default(),
        stderr: err_t.join().unwrap_or_default(),
    })
}

/// Waits for `child` to exit, at most `timeout` (None if it is still
/// running, or cannot be waited for).
pub fn wait_bounded(
    child: &mut std::process::Child,
    timeout: std::time::Duration,
) -> Option<std::process::ExitStatus> {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(s)) => return Some(s),
            Ok(None) => {}
            Err(e) => {
                eprintln!("waiting for pid {}: {e}", child.id());
                return None;
            }
        }
        if std::time::Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// [`try_run_bounded`], panicking if the command cannot be run or does not
/// finish.
pub fn run_bounded(
    cmd: &mut std::process::Command,
    timeout: std::time::Duration,
) -> std::process::Output {
    try_run_bounded(cmd, timeout).unwrap_or_else(|e| panic!("{e}"))
}

/// Runs `ip ARGS` (bounded), panicking with its stderr if it fails.
pub fn ip(args: &[&str]) -> String {
    let out = run_bounded(
        std::process::Command::new("ip").args(args),
        std::time::Duration::from_secs(10),
    );
    assert!(
        out.status.success(),
        "ip {} failed: {}",
        args.join(" "),
        text(&out.stderr)
    );
    text(&out.stdout)
}
