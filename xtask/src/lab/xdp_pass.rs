//! Two-instruction XDP programs (`return VERDICT`), loaded with bpf(2) and
//! attached in driver mode over rtnetlink: `XDP_PASS` for the edge's bridge
//! port, and the `XDP_TX` / `XDP_DROP` references of the throughput bench.
//!
//! Why: steer sends encapsulated packets back out of the veth they came in
//! on (XDP_TX). A veth hands XDP_TX frames to its peer's NAPI ring, but
//! only schedules the peer's NAPI poll when the peer itself has an XDP
//! program (`veth_xdp_flush`); without one the frames wait in the ring
//! forever. This program passes every frame on unchanged.
//!
//! The attachment is held by the device (netlink attach, not a bpf link),
//! so it lasts after this process exits and goes away with the namespace.
use std::{
    ffi::CString,
    io,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
};

use anyhow::{bail, Context as _, Result};

use super::sys;

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_PROG_TYPE_XDP: u32 = 6;
pub const XDP_DROP: i32 = 1;
pub const XDP_PASS: i32 = 2;
pub const XDP_TX: i32 = 3;
/// The name the program shows in `ip link` and `bpftool prog`.
pub const PROG_NAME: &str = "stl_xdp_pass";

/// `union bpf_attr` for BPF_PROG_LOAD, up to `expected_attach_type`, zero
/// padded (the kernel requires unknown trailing bytes to be zero).
#[repr(C, align(8))]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
    _rest: [u8; 56],
}

/// `r0 = verdict; exit`, as raw eBPF instructions (little or big endian:
/// the register nibbles and immediates are built per host order).
fn verdict_program(verdict: i32) -> [u64; 2] {
    let insn = |code: u8, imm: i32| -> u64 {
        let mut b = [0u8; 8];
        b[0] = code;
        // dst/src register byte 0 (r0), offset 0.
        b[4..8].copy_from_slice(&imm.to_ne_bytes());
        u64::from_ne_bytes(b)
    };
    [
        insn(0xb7, verdict), // BPF_ALU64 | BPF_MOV | BPF_K: r0 = verdict
        insn(0x95, 0),       // BPF_JMP | BPF_EXIT
    ]
}

fn load(verdict: i32, prog: &str) -> Result<OwnedFd> {
    let insns = verdict_program(verdict);
    let license = CString::new("GPL")?;
    let mut log = vec![0u8; 4096];
    let mut name = [0u8; 16];
    let n = prog.len().min(15);
    name[..n].copy_from_slice(&prog.as_bytes()[..n]);
    let attr = ProgLoadAttr {
        prog_type: BPF_PROG_TYPE_XDP,
        insn_cnt: insns.len() as u32,
        insns: insns.as_ptr() as u64,
        license: license.as_ptr() as u64,
        log_level: 1,
        log_size: log.len() as u32,
        log_buf: log.as_mut_ptr() as u64,
        kern_version: 0,
        prog_flags: 0,
        prog_name: name,
        prog_ifindex: 0,
        expected_attach_type: 0,
        _rest: [0; 56],
    };
    // SAFETY: bpf(BPF_PROG_LOAD) reads `attr` and the buffers it points at
    // (instructions, license), and writes at most `log_size` bytes of
    // verifier log into `log`; all outlive the call.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_LOAD,
            &raw const attr,
            std::mem::size_of::<ProgLoadAttr>(),
        )
    };
    if fd < 0 {
        let e = io::Error::last_os_error();
        let text = String::from_utf8_lossy(&log);
        bail!(
            "bpf(BPF_PROG_LOAD) of {prog}: {e}; verifier: {}",
            text.trim_end_matches('\0').trim()
        );
    }
    // SAFETY: a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(i32::try_from(fd)?) })
}

fn push_attr(buf: &mut Vec<u8>, ty: u16, payload: &[u8]) {
    let len = 4 + payload.len();
    buf.extend_from_slice(&(len as u16).to_ne_bytes());
    buf.extend_from_slice(&ty.to_ne_bytes());
    buf.extend_from_slice(payload);
    while !buf.len().is_multiple_of(4) {
        buf.push(0);
    }
}

/// RTM_SETLINK `ifname` IFLA_XDP { FD = fd (-1: detach), FLAGS = DRV_MODE };
/// waits for the kernel's acknowledgement. Runs in the calling thread's
/// network namespace.
fn netlink_xdp(ifname: &str, fd: i32) -> Result<()> {
    const RTM_SETLINK: u16 = 19;
    const NLM_F_REQUEST: u16 = 1;
    const NLM_F_ACK: u16 = 4;
    const NLMSG_ERROR: u16 = 2;
    const IFLA_XDP: u16 = 43;
    const NLA_F_NESTED: u16 = 0x8000;
    const IFLA_XDP_FD: u16 = 1;
    const IFLA_XDP_FLAGS: u16 = 3;
    const XDP_FLAGS_DRV_MODE: u32 = 1 << 2;

    let name = CString::new(ifname)?;
    // SAFETY: if_nametoindex reads a NUL-terminated name.
    let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
    if ifindex == 0 {
        return Err(io::Error::last_os_error()).context(format!("no interface {ifname}"));
    }
    let ifindex = i32::try_from(ifindex)?;
    let mut nested = Vec::new();
    push_attr(&mut nested, IFLA_XDP_FD, &fd.to_ne_bytes());
    push_attr(
        &mut nested,
        IFLA_XDP_FLAGS,
        &XDP_FLAGS_DRV_MODE.to_ne_bytes(),
    );
    let mut body = Vec::new();
    // struct ifinfomsg: family, pad, type, index, flags, change.
    body.extend_from_slice(&[libc::AF_UNSPEC as u8, 0]);
    body.extend_from_slice(&0u16.to_ne_bytes());
    body.extend_from_slice(&ifindex.to_ne_bytes());
    body.extend_from_slice(&0u32.to_ne_bytes());
    body.extend_from_slice(&0u32.to_ne_bytes());
    push_attr(&mut body, IFLA_XDP | NLA_F_NESTED, &nested);
    let mut msg = Vec::new();
    msg.extend_from_slice(&((16 + body.len()) as u32).to_ne_bytes());
    msg.extend_from_slice(&RTM_SETLINK.to_ne_bytes());
    msg.extend_from_slice(&(NLM_F_REQUEST | NLM_F_ACK).to_ne_bytes());
    msg.extend_from_slice(&1u32.to_ne_bytes()); // seq
    msg.extend_from_slice(&0u32.to_ne_bytes()); // pid: the kernel
    msg.extend_from_slice(&body);

    // SAFETY: plain socket(2), checked before use.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::NETLINK_ROUTE,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error()).context("netlink socket");
    }
    // SAFETY: a new descriptor nothing else owns.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    let tv = libc::timeval {
        tv_sec: 5,
        tv_usec: 0,
    };
    // SAFETY: SO_RCVTIMEO reads a struct timeval; bounds the wait for the
    // acknowledgement.
    unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&raw const tv).cast(),
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        );
    }
    // SAFETY: sends `msg.len()` bytes from `msg`.
    let sent = unsafe { libc::send(sock.as_raw_fd(), msg.as_ptr().cast(), msg.len(), 0) };
    if sent < 0 {
        return Err(io::Error::last_os_error()).context("netlink send");
    }
    let mut buf = [0u8; 4096];
    // SAFETY: receives at most `buf.len()` bytes into `buf`.
    let n = unsafe { libc::recv(sock.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
    if n < 0 {
        return Err(io::Error::last_os_error()).context("netlink receive (no acknowledgement)");
    }
    let n = n as usize;
    if n < 20 || u16::from_ne_bytes([buf[4], buf[5]]) != NLMSG_ERROR {
        bail!("netlink: unexpected answer ({n} bytes)");
    }
    let err = i32::from_ne_bytes([buf[16], buf[17], buf[18], buf[19]]);
    if err != 0 {
        return Err(io::Error::from_raw_os_error(-err)).context("netlink RTM_SETLINK IFLA_XDP");
    }
    Ok(())
}

/// Attaches `r0 = verdict; exit`, named `prog`, to `ifname` in namespace
/// `ns` (driver mode), replacing any netlink-attached program.
pub fn attach_verdict(ns: &str, ifname: &str, verdict: i32, prog: &str) -> Result<()> {
    sys::in_netns(ns, || {
        let fd = load(verdict, prog)?;
        netlink_xdp(ifname, fd.as_raw_fd())
    })
    .with_context(|| format!("attaching {prog} to {ifname} in {ns}"))
}

/// Attaches the pass program to `ifname` in namespace `ns` (driver mode).
pub fn attach(ns: &str, ifname: &str) -> Result<()> {
    attach_verdict(ns, ifname, XDP_PASS, PROG_NAME)
}

/// Detaches the netlink-attached XDP program of `ifname` in `ns`.
pub fn detach(ns: &str, ifname: &str) -> Result<()> {
    sys::in_netns(ns, || netlink_xdp(ifname, -1))
        .with_context(|| format!("detaching XDP from {ifname} in {ns}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_program_is_mov_r0_2_then_exit() {
        let p = verdict_program(XDP_PASS);
        let a = p[0].to_ne_bytes();
        let b = p[1].to_ne_bytes();
        assert_eq!(a[0], 0xb7);
        assert_eq!(a[1], 0);
        assert_eq!(i32::from_ne_bytes([a[4], a[5], a[6], a[7]]), 2);
        assert_eq!(b, [0x95, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(std::mem::size_of::<ProgLoadAttr>(), 128);
    }
}
