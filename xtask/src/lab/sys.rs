//! Running things for the lab: `ip` with a timeout, commands inside a
//! network namespace, sysctls and offload features of a namespace, and
//! processes (find, signal, wait).
use std::{
    ffi::OsStr,
    fs::{self, File},
    io::{self, Read},
    os::{
        fd::{AsRawFd, FromRawFd, OwnedFd},
        unix::process::CommandExt as _,
    },
    path::Path,
    process::{Child, Command, Output, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{anyhow, bail, Context as _, Result};

use super::topo::{Feature, PREFIX};
use crate::util::describe;

/// How long any one `ip` command may take.
pub const IP_TIMEOUT: Duration = Duration::from_secs(10);

/// Runs `cmd` to completion with its output captured, killing it after
/// `timeout`.
pub fn output_with_timeout(cmd: &mut Command, timeout: Duration) -> Result<Output> {
    let shown = describe(cmd);
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("could not start `{shown}`"))?;
    let out = child.stdout.take();
    let err = child.stderr.take();
    let read = |p: Option<Box<dyn Read + Send>>| {
        thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut p) = p {
                let _ = p.read_to_end(&mut buf);
            }
            buf
        })
    };
    let out = read(out.map(|p| Box::new(p) as Box<dyn Read + Send>));
    let err = read(err.map(|p| Box::new(p) as Box<dyn Read + Send>));
    let status = match wait_timeout(&mut child, timeout)? {
        Some(s) => s,
        None => {
            let _ = child.kill();
            let _ = child.wait();
            bail!("`{shown}` did not finish within {timeout:?}; killed it");
        }
    };
    Ok(Output {
        status,
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
    })
}

/// Waits for `child` at most `timeout`; `None` if it is still running.
pub fn wait_timeout(
    child: &mut Child,
    timeout: Duration,
) -> Result<Option<std::process::ExitStatus>> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(s) = child.try_wait()? {
            return Ok(Some(s));
        }
        if Instant::now() >= deadline {
            return Ok(None);
        }
        thread::sleep(Duration::from_millis(10));
    }
}

/// SIGTERM to `child`, SIGKILL if it is still there after `grace`; its exit
/// status, if one could be had.
pub fn terminate_child(mut child: Child, grace: Duration) -> Option<std::process::ExitStatus> {
    if let Ok(Some(st)) = child.try_wait() {
        return Some(st);
    }
    if let Ok(pid) = i32::try_from(child.id()) {
        // SAFETY: kill(2) on our own child's pid, which has not been reaped
        // (try_wait above saw it running).
        unsafe {
            libc::kill(pid, libc::SIGTERM);
        }
    }
    match wait_timeout(&mut child, grace) {
        Ok(Some(st)) => Some(st),
        _ => {
            let _ = child.kill();
            child.wait().ok()
        }
    }
}

/// Runs `cmd`, failing with the command line and its stderr unless it
/// exits 0. Returns stdout.
pub fn checked(cmd: &mut Command, timeout: Duration) -> Result<String> {
    let out = output_with_timeout(cmd, timeout)?;
    if !out.status.success() {
        bail!(
            "`{}` failed ({}): {}",
            describe(cmd),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `ip ARGS...`, checked.
pub fn ip<S: AsRef<OsStr>>(args: &[S]) -> Result<String> {
    checked(Command::new("ip").args(args), IP_TIMEOUT)
}

/// `ip ARGS...`; `None` if it failed (for cleanup and status, where a
/// missing thing is not an error).
pub fn ip_quiet<S: AsRef<OsStr>>(args: &[S]) -> Option<String> {
    let out = output_with_timeout(Command::new("ip").args(args), IP_TIMEOUT).ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

fn open_netns(ns: &str) -> Result<File> {
    if ns.is_empty() || ns.contains('/') {
        bail!("bad namespace name {ns:?}");
    }
    File::open(Path::new("/run/netns").join(ns))
        .with_context(|| format!("network namespace {ns} does not exist (is the lab up?)"))
}

fn setns(f: &File) -> io::Result<()> {
    // SAFETY: setns on a descriptor we own; affects only the calling
    // thread (or the child about to exec).
    if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// A command that runs `program` inside network namespace `ns`.
///
/// Unlike `ip netns exec`, only the network namespace changes: the mount
/// namespace stays, so `/sys/fs/bpf` (steer's pinned maps) and `/run` are
/// the host's. (`ip netns exec` remounts `/sys`, which hides bpffs.)
pub fn command_in(ns: &str, program: impl AsRef<OsStr>) -> Result<Command> {
    let f = open_netns(ns)?;
    let mut cmd = Command::new(program);
    // SAFETY: the closure only calls setns(2), which is async-signal-safe.
    unsafe {
        cmd.pre_exec(move || setns(&f));
    }
    Ok(cmd)
}

/// Runs `f` on a thread that has joined network namespace `ns`.
pub fn in_netns<T: Send>(ns: &str, f: impl FnOnce() -> Result<T> + Send) -> Result<T> {
    let file = open_netns(ns)?;
    thread::scope(|s| {
        s.spawn(move || {
            setns(&file).with_context(|| format!("joining network namespace {ns}"))?;
            f()
        })
        .join()
        .map_err(|_| anyhow!("thread in namespace {ns} panicked"))?
    })
}

/// Writes a sysctl (`key` as a path under /proc/sys) in namespace `ns`.
pub fn sysctl(ns: &str, key: &str, value: &str) -> Result<()> {
    in_netns(ns, || {
        let path = Path::new("/proc/sys").join(key);
        fs::write(&path, value)
            .with_context(|| format!("writing {value} to {}", path.display()))?;
        let now = fs::read_to_string(&path)?;
        if now.trim() != value {
            bail!("{} is {} after writing {value}", path.display(), now.trim());
        }
        Ok(())
    })
    .with_context(|| format!("sysctl in {ns}: {key} = {value}"))
}

// The legacy ethtool ioctls (what `ethtool -K` falls back to).
const SIOCETHTOOL: libc::c_ulong = 0x8946;
const ETHTOOL_GTXCSUM: u32 = 0x16;
const ETHTOOL_STXCSUM: u32 = 0x17;

#[repr(C)]
struct EthtoolValue {
    cmd: u32,
    data: u32,
}

#[repr(C)]
struct IfReqData {
    name: [u8; libc::IFNAMSIZ],
    data: *mut libc::c_void,
    _pad: [u8; 16],
}

fn ethtool(sock: &OwnedFd, ifname: &str, cmd: u32, data: u32) -> io::Result<u32> {
    let mut value = EthtoolValue { cmd, data };
    let mut req = IfReqData {
        name: [0; libc::IFNAMSIZ],
        data: (&raw mut value).cast(),
        _pad: [0; 16],
    };
    if ifname.len() >= libc::IFNAMSIZ {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "name too long"));
    }
    req.name[..ifname.len()].copy_from_slice(ifname.as_bytes());
    // SAFETY: SIOCETHTOOL with a struct ifreq whose data points at a live
    // struct ethtool_value, as the legacy get/set commands expect.
    let rc = unsafe { libc::ioctl(sock.as_raw_fd(), SIOCETHTOOL as _, &raw mut req) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(value.data)
}

/// Switches `feature` of `ifname` in `ns` and checks that it took.
pub fn set_feature(ns: &str, ifname: &str, feature: Feature, on: bool) -> Result<()> {
    let (get, set, what) = match feature {
        Feature::TxChecksum => (ETHTOOL_GTXCSUM, ETHTOOL_STXCSUM, "tx-checksumming"),
    };
    in_netns(ns, || {
        // SAFETY: plain socket(2); checked before use.
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
        if fd < 0 {
            return Err(io::Error::last_os_error().into());
        }
        // SAFETY: a new descriptor nothing else owns.
        let sock = unsafe { OwnedFd::from_raw_fd(fd) };
        ethtool(&sock, ifname, set, u32::from(on))?;
        let now = ethtool(&sock, ifname, get, 0)? != 0;
        if now != on {
            bail!("still {} after the change", if now { "on" } else { "off" });
        }
        Ok(())
    })
    .with_context(|| {
        format!(
            "ethtool -K {ifname} {what} {} (in {ns})",
            if on { "on" } else { "off" }
        )
    })
}

/// The lab's namespaces that exist now (`ip netns list`, `stl-*`).
pub fn lab_namespaces() -> Vec<String> {
    let mut v: Vec<String> = ip_quiet(&["netns", "list"])
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with(PREFIX))
        .map(str::to_owned)
        .collect();
    // A half-created namespace can be a file without a mount; `ip netns
    // list` may not show it.
    if let Ok(dir) = fs::read_dir("/run/netns") {
        for e in dir.flatten() {
            let n = e.file_name().to_string_lossy().into_owned();
            if n.starts_with(PREFIX) && !v.contains(&n) {
                v.push(n);
            }
        }
    }
    v.sort();
    v
}

/// Processes whose network namespace is `ns` (`ip netns pids`).
pub fn pids_in(ns: &str) -> Vec<i32> {
    ip_quiet(&["netns", "pids", ns])
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .filter(|p| *p > 1 && *p != std::process::id() as i32)
        .collect()
}

/// Whether `pid` runs (exists and is not a zombie).
pub fn alive(pid: i32) -> bool {
    let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // The state follows the parenthesised command name.
    let state = stat
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().next());
    !matches!(state, Some("Z" | "X") | None)
}

/// `/proc/PID/cmdline` with spaces between the arguments.
pub fn cmdline(pid: i32) -> String {
    fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| {
            String::from_utf8_lossy(&b)
                .split('\0')
                .filter(|s| !s.is_empty())
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_default()
}

fn signal(pid: i32, sig: libc::c_int) {
    // SAFETY: kill(2) has no memory effects; errors (gone already) ignored.
    unsafe {
        libc::kill(pid, sig);
    }
}

/// SIGTERM to every pid, then SIGKILL to those still running after
/// `grace`. Returns the pids that survived even that.
pub fn terminate(pids: &[i32], grace: Duration) -> Vec<i32> {
    for p in pids {
        signal(*p, libc::SIGTERM);
    }
    let wait_all = |limit: Duration| {
        let deadline = Instant::now() + limit;
        loop {
            let left: Vec<i32> = pids.iter().copied().filter(|p| alive(*p)).collect();
            if left.is_empty() || Instant::now() >= deadline {
                return left;
            }
            thread::sleep(Duration::from_millis(20));
        }
    };
    let left = wait_all(grace);
    for p in &left {
        signal(*p, libc::SIGKILL);
    }
    let left = wait_all(Duration::from_secs(2));
    for p in pids {
        // SAFETY: waitpid with WNOHANG and no status pointer: reaps `p` if
        // it is our own exited child, else returns an error we ignore.
        unsafe {
            libc::waitpid(*p, std::ptr::null_mut(), libc::WNOHANG);
        }
    }
    left
}
