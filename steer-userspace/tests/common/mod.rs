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

/// A pin directory (on bpffs) and a state file unique to this process and
/// `tag`, removed with every pin on drop (and before use).
pub struct Pins(pub steer::dataplane::Persist);

impl Pins {
    pub fn new(tag: &str) -> Pins {
        let tag = format!("steer-{tag}-{}", std::process::id());
        let p = steer::dataplane::Persist {
            pin_dir: std::path::Path::new("/sys/fs/bpf").join(&tag),
            state_file: std::env::temp_dir().join(&tag).join("state.json"),
        };
        let _ = steer::dataplane::Dataplane::remove_pins(&p);
        Pins(p)
    }
}

impl Drop for Pins {
    fn drop(&mut self) {
        let _ = steer::dataplane::Dataplane::remove_pins(&self.0);
        let _ = std::fs::remove_dir_all(&self.0.pin_dir);
        if let Some(d) = self.0.state_file.parent() {
            let _ = std::fs::remove_dir_all(d);
        }
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

/// What [`veth_config`] varies.
pub struct VethConfig<'a> {
    pub interfaces: &'a [&'a str],
    pub mode: &'a str,
    pub pin_dir: &'a std::path::Path,
    pub socket: &'a std::path::Path,
    pub metrics: &'a str,
    /// Weight of b1; b2 (when present) has the default.
    pub b1_weight: u32,
    /// b2 as well as b1.
    pub two_backends: bool,
    /// More lines for `[control]` (e.g. `group = "..."`).
    pub control_extra: &'a str,
}

/// The config of the tests that run `steer run` on a veth in a namespace
/// of their own: service "web" (203.0.113.10:80/tcp) over region "lab",
/// backend b1 (192.0.2.11) and optionally b2 (192.0.2.12), small maps.
pub fn veth_config(c: &VethConfig<'_>) -> String {
    let interfaces = c
        .interfaces
        .iter()
        .map(|s| format!("\"{s}\""))
        .collect::<Vec<_>>()
        .join(", ");
    let b2 = if c.two_backends {
        "\n[[backends]]\nname = \"b2\"\naddress = \"192.0.2.12\"\nregion = \"lab\"\n"
    } else {
        ""
    };
    format!(
        r#"
[dataplane]
interfaces = [{interfaces}]
mode = "{mode}"
next_hop_mac = "02:00:00:00:00:fe"
encap_source_v4 = "198.18.0.1/32"
maglev_table_size = 251
conntrack_size = 4096
max_tables = 8
max_reals = 64
pin_path = "{pin_dir}"

[[regions]]
name = "lab"

[[services]]
name = "web"
vip = "203.0.113.10"
port = 80
protocol = "tcp"
regions = ["lab"]

[[backends]]
name = "b1"
address = "192.0.2.11"
region = "lab"
weight = {b1_weight}
{b2}
[control]
socket = "{socket}"
{control_extra}
[metrics]
listen = "{metrics}"
"#,
        mode = c.mode,
        pin_dir = c.pin_dir.display(),
        b1_weight = c.b1_weight,
        socket = c.socket.display(),
        control_extra = c.control_extra,
        metrics = c.metrics,
    )
}
