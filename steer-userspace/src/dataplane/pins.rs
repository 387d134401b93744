//! The pin directory's life cycle: creating it (0700), the single-instance
//! lock on it, removing only what steer pinned there, undoing a failed
//! start, and reading an interface's XDP attach mode from the kernel.

use std::collections::BTreeSet;
use std::fs::File;
use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use aya::programs::links::{FdLink, LinkType, PinnedLink};

use super::{DataplaneError, Persist, Result, ALL_MAPS};

/// The prefix of the pinned XDP link of an interface: `link-<iface>`.
pub(super) const LINK_PREFIX: &str = "link-";

/// Makes sure `dir` exists on bpffs, creating it (and mounting bpffs at
/// /sys/fs/bpf if that is its parent and nothing is mounted there). A
/// directory created here gets mode 0700 whatever the umask. Returns whether
/// it was created.
pub(super) fn prepare_pin_dir(dir: &Path) -> Result<bool> {
    let parent = dir.parent().unwrap_or(Path::new("/"));
    let exists = dir.exists();
    if !exists && parent == Path::new(super::BPFFS) {
        super::ensure_bpffs()?;
    }
    if !exists && !super::is_bpffs(parent) {
        return Err(DataplaneError::NotBpffs {
            path: parent.to_path_buf(),
        });
    }
    let created = match std::fs::create_dir(dir) {
        Ok(()) => true,
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => false,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir_all(dir).map_err(|source| DataplaneError::Io {
                what: "creating pin directory",
                path: dir.to_path_buf(),
                source,
            })?;
            true
        }
        Err(source) => {
            return Err(DataplaneError::Io {
                what: "creating pin directory",
                path: dir.to_path_buf(),
                source,
            })
        }
    };
    if created {
        // The umask may have taken or left bits: the pins are root's only.
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(
            |source| DataplaneError::Io {
                what: "setting mode 0700 on pin directory",
                path: dir.to_path_buf(),
                source,
            },
        )?;
    }
    if !super::is_bpffs(dir) {
        return Err(DataplaneError::NotBpffs {
            path: dir.to_path_buf(),
        });
    }
    Ok(created)
}

/// The single-instance lock of a pin directory: an exclusive `flock` on
/// the directory itself, held as long as this value lives (and released by
/// the kernel if the process dies, even by SIGKILL).
#[derive(Debug)]
pub struct InstanceLock {
    _dir: File,
    created_dir: bool,
    pin_dir: PathBuf,
}

impl InstanceLock {
    /// Takes the lock of `persist.pin_dir`, creating the directory (0700)
    /// if needed. Nothing is written anywhere else: the control socket's
    /// directory is checked (ownership, modes) only after this.
    /// Fails with [`DataplaneError::Locked`], touching nothing, if another
    /// process holds it.
    pub fn acquire(persist: &Persist) -> Result<InstanceLock> {
        let dir = &persist.pin_dir;
        let mut created_dir = false;
        // Bounded: the directory can be removed (by a stopping instance)
        // between our open and our lock; then lock the new one.
        for _ in 0..5 {
            created_dir |= prepare_pin_dir(dir)?;
            let f = File::open(dir).map_err(|source| DataplaneError::Io {
                what: "opening pin directory",
                path: dir.clone(),
                source,
            })?;
            match f.try_lock() {
                Ok(()) => {}
                Err(std::fs::TryLockError::WouldBlock) => {
                    return Err(DataplaneError::Locked {
                        pin_dir: dir.clone(),
                        holder: holder(&f),
                    })
                }
                Err(std::fs::TryLockError::Error(source)) => {
                    return Err(DataplaneError::Io {
                        what: "locking pin directory",
                        path: dir.clone(),
                        source,
                    })
                }
            }
            let same = match (f.metadata(), std::fs::metadata(dir)) {
                (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
                _ => false,
            };
            if !same {
                continue;
            }
            return Ok(InstanceLock {
                _dir: f,
                created_dir,
                pin_dir: dir.clone(),
            });
        }
        Err(DataplaneError::Io {
            what: "locking pin directory",
            path: dir.clone(),
            source: std::io::Error::other("it was removed and re-created 5 times while locking"),
        })
    }

    /// Whether taking the lock created the pin directory.
    pub fn created_dir(&self) -> bool {
        self.created_dir
    }

    /// The pin directory this lock holds.
    pub fn pin_dir(&self) -> &Path {
        &self.pin_dir
    }
}

/// The pid of the process holding the lock on `dir`, from the kernel's
/// lock table (`/proc/locks`): it works whichever state directory the
/// holder uses, and needs no file of ours that could be stale or forged.
fn holder(dir: &File) -> Option<u32> {
    dir.metadata().ok().and_then(|m| {
        let dev = m.dev();
        let key = format!(
            "{:02x}:{:02x}:{}",
            libc::major(dev),
            libc::minor(dev),
            m.ino()
        );
        let locks = std::fs::read_to_string("/proc/locks").ok()?;
        lock_holder(&locks, &key)
    })
}

/// The pid holding a FLOCK on the file `key` (`MAJ:MIN:INODE`, as
/// /proc/locks writes it) in a /proc/locks listing.
fn lock_holder(locks: &str, key: &str) -> Option<u32> {
    locks.lines().find_map(|line| {
        // "1: FLOCK  ADVISORY  WRITE 1234 00:2a:5678 0 EOF"
        let f: Vec<&str> = line.split_whitespace().collect();
        (f.get(1) == Some(&"FLOCK") && f.get(5) == Some(&key))
            .then(|| f.get(4)?.parse().ok())
            .flatten()
    })
}

/// The names of the entries of the pin directory (empty if it is missing).
pub fn pin_entries(dir: &Path) -> BTreeSet<String> {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// Whether `name` is a pin steer makes: one of its maps, or a link.
fn is_steer_name(name: &str) -> bool {
    is_steer_map(name) || name.starts_with(LINK_PREFIX)
}

/// Whether `name` is one of steer's map pins, this steer's or the
/// conntrack pin of an older one (left only if it could not be moved).
fn is_steer_map(name: &str) -> bool {
    ALL_MAPS.contains(&name) || name == steer_common::names::LEGACY_CONNTRACK
}

/// Removes the map pinned at `path` if it is not a `map_type` map with
/// values of `value_size` bytes and map flags `flags` (a pin of an older
/// layout the program cannot use); a missing pin is fine. Logged when it
/// removes one.
pub(super) fn drop_if_layout_differs(
    path: &Path,
    map_type: aya::maps::MapType,
    value_size: u32,
    flags: u32,
) -> Result<()> {
    if !path.exists() {
        return Ok(());
    }
    let io = |e: std::io::Error| DataplaneError::Io {
        what: "checking the layout of the pinned map",
        path: path.to_path_buf(),
        source: e,
    };
    let info = aya::maps::MapData::from_pin(path)
        .and_then(|m| m.info())
        .map_err(|e| io(std::io::Error::other(e.to_string())))?;
    let found_type = info.map_type().ok();
    let found = info.value_size();
    let found_flags = info.map_flags();
    if found != value_size || found_type != Some(map_type) || found_flags != flags {
        tracing::warn!(
            path = %path.display(),
            found,
            found_type = ?found_type,
            found_flags,
            want = value_size,
            want_type = ?map_type,
            want_flags = flags,
            "a pinned map of another layout (an older steer) is replaced"
        );
        std::fs::remove_file(path).map_err(io)?;
    }
    Ok(())
}

/// What removing steer's pins did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Removal {
    /// Interfaces whose pinned XDP link was removed (XDP detached).
    pub detached: Vec<String>,
    /// Map pins removed.
    pub removed: Vec<String>,
    /// Entries left in the pin directory, each with the reason.
    pub left: Vec<(String, String)>,
    /// Whether the pin directory itself was removed.
    pub dir_removed: bool,
}

/// Unpins `link-<iface>` at `path` if it is an XDP link; dropping the last
/// reference detaches it. Err(reason) if it is not one.
fn unpin_xdp_link(path: &Path) -> std::result::Result<(), String> {
    match pinned_kind(path) {
        Ok(kind) if kind == "bpf-link" => {}
        Ok(kind) => return Err(format!("not a BPF link (a {kind})")),
        Err(e) => return Err(format!("not a BPF link ({e})")),
    }
    let link = PinnedLink::from_pin(path).map_err(|e| format!("not a BPF link ({e})"))?;
    let fd = FdLink::from(link);
    match fd.info().map(|i| i.link_type()) {
        Ok(Ok(LinkType::Xdp)) => {}
        Ok(Ok(t)) => return Err(format!("a {t:?} link, not an XDP link")),
        Ok(Err(e)) | Err(e) => return Err(format!("a BPF link of unknown type ({e})")),
    }
    std::fs::remove_file(path).map_err(|e| format!("cannot unpin: {e}"))?;
    // `fd` was the last reference besides the pin: dropping it detaches.
    drop(fd);
    Ok(())
}

/// What kind of BPF object is pinned at `path`: `bpf-link`, `bpf-map`,
/// `bpf-prog` (the name of the anonymous inode behind an fd of it).
fn pinned_kind(path: &Path) -> std::io::Result<String> {
    use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd};
    use std::os::unix::ffi::OsStrExt as _;
    const BPF_OBJ_GET: libc::c_long = 7;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).map_err(std::io::Error::other)?;
    // union bpf_attr for BPF_OBJ_GET: pathname (u64 pointer), bpf_fd,
    // file_flags (u32 each); the rest zero.
    let mut attr = [0u8; 16];
    attr[..8].copy_from_slice(&(c.as_ptr() as u64).to_ne_bytes());
    // SAFETY: BPF_OBJ_GET reads `attr.len()` bytes of a valid buffer whose
    // pathname points to a NUL-terminated string that outlives the call.
    let fd = unsafe { libc::syscall(libc::SYS_bpf, BPF_OBJ_GET, attr.as_ptr(), attr.len()) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: BPF_OBJ_GET returned a new descriptor that we own.
    let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    let target = std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd()))?;
    let name = target.to_string_lossy();
    Ok(name
        .strip_prefix("anon_inode:")
        .unwrap_or(&name)
        .to_string())
}

/// Removes what steer pins under `persist.pin_dir`: its maps (by name) and
/// its `link-<iface>` XDP links (which detaches them), then the directory
/// if it is empty, and the state file. Anything else (a map
/// another tool pinned there, a `link-*` pin that is not an XDP link) is
/// left and reported.
pub(super) fn remove_steer_pins(persist: &Persist) -> Result<Removal> {
    let dir = &persist.pin_dir;
    let mut out = Removal::default();
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => Some(e),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(source) => {
            return Err(DataplaneError::Io {
                what: "reading pin directory",
                path: dir.clone(),
                source,
            })
        }
    };
    for entry in entries.into_iter().flatten().flatten() {
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some(iface) = name.strip_prefix(LINK_PREFIX) {
            match unpin_xdp_link(&path) {
                Ok(()) => out.detached.push(iface.to_string()),
                Err(why) => out.left.push((name, why)),
            }
        } else if is_steer_map(&name) {
            std::fs::remove_file(&path).map_err(|source| DataplaneError::Io {
                what: "removing pin",
                path: path.clone(),
                source,
            })?;
            out.removed.push(name);
        } else {
            out.left.push((name, "not pinned by steer".to_string()));
        }
    }
    out.detached.sort();
    out.removed.sort();
    out.left.sort();
    match std::fs::remove_dir(dir) {
        Ok(()) => out.dir_removed = true,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) if out.left.is_empty() => {
            out.left
                .push((String::new(), format!("removing the directory: {e}")));
        }
        Err(_) => {}
    }
    for (what, path) in [("removing state file", persist.state_file.clone())] {
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => return Err(DataplaneError::Io { what, path, source }),
        }
    }
    Ok(out)
}

/// Detaches (unpins) the pinned XDP links of interfaces not in `keep`.
/// Returns the interfaces detached.
pub(super) fn detach_links_except(persist: &Persist, keep: &[String]) -> Vec<String> {
    let mut detached = Vec::new();
    for name in pin_entries(&persist.pin_dir) {
        let Some(iface) = name.strip_prefix(LINK_PREFIX) else {
            continue;
        };
        if keep.iter().any(|k| k == iface) {
            continue;
        }
        match unpin_xdp_link(&persist.pin_dir.join(&name)) {
            Ok(()) => detached.push(iface.to_string()),
            Err(why) => tracing::warn!(pin = name, reason = why, "left a pin alone"),
        }
    }
    detached
}

/// Undoes what a failed start created: the steer pins under the pin
/// directory that were not in `before` (links detach when unpinned), and
/// the directory itself if `created_dir` and it is then empty. Pins that
/// were there before (a previous run's state) are left as found. Returns
/// what was removed.
pub(super) fn remove_created(
    persist: &Persist,
    before: &BTreeSet<String>,
    created_dir: bool,
) -> Vec<String> {
    let mut removed = Vec::new();
    let dir = &persist.pin_dir;
    for name in pin_entries(dir) {
        if before.contains(&name) || !is_steer_name(&name) {
            continue;
        }
        let path = dir.join(&name);
        let done = if name.starts_with(LINK_PREFIX) {
            unpin_xdp_link(&path).map_err(|e| e.to_string())
        } else {
            std::fs::remove_file(&path).map_err(|e| e.to_string())
        };
        match done {
            Ok(()) => removed.push(name),
            Err(e) => tracing::warn!(pin = %path.display(), error = e, "could not remove a pin"),
        }
    }
    if created_dir && std::fs::remove_dir(dir).is_ok() {
        removed.push(format!("{} (directory)", dir.display()));
    }
    removed
}

/// An interface's XDP attach mode as the kernel reports it (netlink
/// `IFLA_XDP_ATTACHED`, what `ip -d link` shows).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KernelXdpMode {
    None,
    Driver,
    Skb,
    Offload,
    /// Programs in more than one mode.
    Multi,
}

impl KernelXdpMode {
    pub fn name(self) -> &'static str {
        match self {
            KernelXdpMode::None => "none",
            KernelXdpMode::Driver => "driver",
            KernelXdpMode::Skb => "skb",
            KernelXdpMode::Offload => "offload",
            KernelXdpMode::Multi => "multi",
        }
    }
}

// rtnetlink constants (linux/rtnetlink.h, linux/if_link.h).
const RTM_NEWLINK: u16 = 16;
const RTM_GETLINK: u16 = 18;
const NLMSG_ERROR: u16 = 2;
const NLM_F_REQUEST: u16 = 1;
const IFLA_XDP: u16 = 43;
const IFLA_XDP_ATTACHED: u16 = 2;
const NLA_TYPE_MASK: u16 = 0x3fff;
const NLMSG_HDRLEN: usize = 16;
const IFINFOMSG_LEN: usize = 16;

/// Reads the XDP attach mode of `iface` from the kernel (in this
/// process's network namespace).
pub fn kernel_xdp_mode(iface: &str) -> std::io::Result<KernelXdpMode> {
    let name = std::ffi::CString::new(iface).map_err(std::io::Error::other)?;
    // SAFETY: `name` is a valid NUL-terminated string.
    let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
    if ifindex == 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: plain socket(2) call; the result is checked.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::NETLINK_ROUTE,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh descriptor we own.
    let fd = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    let raw = std::os::fd::AsRawFd::as_raw_fd(&fd);
    let mut req = Vec::with_capacity(NLMSG_HDRLEN + IFINFOMSG_LEN);
    req.extend_from_slice(&((NLMSG_HDRLEN + IFINFOMSG_LEN) as u32).to_ne_bytes());
    req.extend_from_slice(&RTM_GETLINK.to_ne_bytes());
    req.extend_from_slice(&NLM_F_REQUEST.to_ne_bytes());
    req.extend_from_slice(&1u32.to_ne_bytes()); // seq
    req.extend_from_slice(&0u32.to_ne_bytes()); // pid: the kernel
    req.push(libc::AF_UNSPEC as u8); // ifi_family
    req.push(0); // pad
    req.extend_from_slice(&0u16.to_ne_bytes()); // ifi_type
    req.extend_from_slice(&(ifindex as i32).to_ne_bytes());
    req.extend_from_slice(&0u32.to_ne_bytes()); // ifi_flags
    req.extend_from_slice(&0u32.to_ne_bytes()); // ifi_change
                                                // SAFETY: `req` is a valid buffer of `req.len()` bytes; the kernel is
                                                // the default destination of a netlink socket.
    if unsafe { libc::send(raw, req.as_ptr().cast(), req.len(), 0) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let mut buf = vec![0u8; 65536];
    // SAFETY: `buf` is writable for `buf.len()` bytes.
    let n = unsafe { libc::recv(raw, buf.as_mut_ptr().cast(), buf.len(), 0) };
    if n < 0 {
        return Err(std::io::Error::last_os_error());
    }
    parse_getlink_reply(&buf[..n as usize])
}

fn u16_at(b: &[u8], off: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(b.get(off..off + 2)?.try_into().ok()?))
}

fn u32_at(b: &[u8], off: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(off..off + 4)?.try_into().ok()?))
}

/// Attributes of a netlink attribute stream: (type, payload).
fn attrs(mut b: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    std::iter::from_fn(move || {
        let len = u16_at(b, 0)? as usize;
        let ty = u16_at(b, 2)? & NLA_TYPE_MASK;
        if len < 4 || len > b.len() {
            return None;
        }
        let payload = &b[4..len];
        b = &b[len.next_multiple_of(4).min(b.len())..];
        Some((ty, payload))
    })
}

fn parse_getlink_reply(b: &[u8]) -> std::io::Result<KernelXdpMode> {
    let bad = |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_string());
    let len = u32_at(b, 0).ok_or_else(|| bad("short netlink reply"))? as usize;
    let ty = u16_at(b, 4).ok_or_else(|| bad("short netlink reply"))?;
    let msg = b.get(..len).ok_or_else(|| bad("truncated netlink reply"))?;
    if ty == NLMSG_ERROR {
        let code = u32_at(msg, NLMSG_HDRLEN).ok_or_else(|| bad("short netlink error"))? as i32;
        return Err(std::io::Error::from_raw_os_error(-code));
    }
    if ty != RTM_NEWLINK {
        return Err(bad("unexpected netlink reply type"));
    }
    let body = msg
        .get(NLMSG_HDRLEN + IFINFOMSG_LEN..)
        .ok_or_else(|| bad("short RTM_NEWLINK"))?;
    for (t, payload) in attrs(body) {
        if t != IFLA_XDP {
            continue;
        }
        for (t, v) in attrs(payload) {
            if t == IFLA_XDP_ATTACHED {
                return Ok(match v.first().copied().unwrap_or(0) {
                    0 => KernelXdpMode::None,
                    1 => KernelXdpMode::Driver,
                    2 => KernelXdpMode::Skb,
                    3 => KernelXdpMode::Offload,
                    _ => KernelXdpMode::Multi,
                });
            }
        }
    }
    Ok(KernelXdpMode::None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_reports_no_xdp_program() {
        // `lo` exists in every network namespace and no test attaches XDP
        // to it.
        assert_eq!(kernel_xdp_mode("lo").expect("netlink"), KernelXdpMode::None);
    }

    #[test]
    fn the_lock_holder_is_read_from_proc_locks() {
        let locks = "1: POSIX  ADVISORY  WRITE 99 00:2a:77 0 EOF\n\
                     2: FLOCK  ADVISORY  WRITE 4242 00:2a:77 0 EOF\n\
                     3: FLOCK  ADVISORY  WRITE 17 00:2b:77 0 EOF\n";
        assert_eq!(lock_holder(locks, "00:2a:77"), Some(4242));
        assert_eq!(lock_holder(locks, "00:2b:77"), Some(17));
        assert_eq!(lock_holder(locks, "00:2a:78"), None);
    }

    #[test]
    fn a_missing_interface_is_an_error() {
        assert!(kernel_xdp_mode("nosuch-steer0").is_err());
    }

    #[test]
    fn attrs_parse_nested_xdp_attached() {
        // One IFLA_XDP nest holding IFLA_XDP_ATTACHED = 2 (skb).
        let mut nest = Vec::new();
        nest.extend_from_slice(&5u16.to_ne_bytes());
        nest.extend_from_slice(&IFLA_XDP_ATTACHED.to_ne_bytes());
        nest.extend_from_slice(&[2, 0, 0, 0]);
        let mut body = Vec::new();
        body.extend_from_slice(&((4 + nest.len()) as u16).to_ne_bytes());
        body.extend_from_slice(&(IFLA_XDP | 0x8000).to_ne_bytes());
        body.extend_from_slice(&nest);
        let mut msg = vec![0u8; NLMSG_HDRLEN + IFINFOMSG_LEN];
        msg.extend_from_slice(&body);
        let n = msg.len() as u32;
        msg[..4].copy_from_slice(&n.to_ne_bytes());
        msg[4..6].copy_from_slice(&RTM_NEWLINK.to_ne_bytes());
        assert_eq!(
            parse_getlink_reply(&msg).expect("parse"),
            KernelXdpMode::Skb
        );
    }
}
