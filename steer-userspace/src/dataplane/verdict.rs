//! Programs that return a fixed verdict and touch nothing: `steer_pass`
//! (XDP_PASS), `steer_tx` (XDP_TX) and `steer_drop` (XDP_DROP), compiled
//! from steer-ebpf's `src/verdicts.rs` into their own object (no maps).
//!
//! `steer_pass` goes on the far end of a veth that steer sends XDP_TX frames
//! into: a veth hands XDP_TX frames to its peer's NAPI ring but only
//! schedules the peer's poll when the peer has an XDP program of its own
//! (`veth_xdp_flush`), so without one the frames wait forever. The daemon
//! tests' peers and the lab's bridge port use it; `steer_tx` and
//! `steer_drop` are the lab throughput bench's references.
//!
//! Two ways to attach, both in driver mode and in the calling thread's
//! network namespace: [`VerdictProgram::attach`] with a bpf link that lasts
//! as long as the `VerdictProgram` (tests), and [`attach_netlink`] over
//! rtnetlink, held by the device after this process exits until it is
//! replaced, [`detach_netlink`]ed or the device goes away (the lab, through
//! the `steer-xdp-verdict` binary).

use std::ffi::CString;
use std::io;
use std::os::fd::{AsFd as _, AsRawFd as _, FromRawFd as _, OwnedFd};

use aya::programs::xdp::XdpMode;
use aya::programs::{ProgramError, Xdp};
use aya::{Ebpf, EbpfLoader};

/// The verdict programs' object, built by build.rs.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/steer-verdicts"));

pub use steer_common::XdpVerdict;

#[derive(Debug, thiserror::Error)]
pub enum VerdictError {
    #[error("loading the XDP verdict object failed: {0}. Is this root on Linux ≥ 5.18 (multi-buffer XDP) with BPF enabled?")]
    Load(#[source] aya::EbpfError),
    #[error("XDP program {name}: {source}")]
    Program {
        name: &'static str,
        #[source]
        source: ProgramError,
    },
    #[error("XDP program {0} is missing from the compiled verdict object")]
    Missing(&'static str),
    #[error("no interface {0:?} in this network namespace")]
    NoInterface(String),
    #[error("{what} for {iface}: {source}")]
    Netlink {
        what: &'static str,
        iface: String,
        #[source]
        source: io::Error,
    },
}

type Result<T, E = VerdictError> = std::result::Result<T, E>;

/// A loaded verdict program. Attachments made with [`attach`](Self::attach)
/// are detached when it is dropped.
pub struct VerdictProgram {
    ebpf: Ebpf,
    verdict: XdpVerdict,
}

impl VerdictProgram {
    /// Loads the program for `verdict` into the kernel (not attached).
    pub fn load(verdict: XdpVerdict) -> Result<Self> {
        let name = verdict.program();
        let mut ebpf = EbpfLoader::new().load(OBJECT).map_err(VerdictError::Load)?;
        let prog: &mut Xdp = ebpf
            .program_mut(name)
            .ok_or(VerdictError::Missing(name))?
            .try_into()
            .map_err(|source| VerdictError::Program { name, source })?;
        prog.load()
            .map_err(|source| VerdictError::Program { name, source })?;
        Ok(VerdictProgram { ebpf, verdict })
    }

    pub fn verdict(&self) -> XdpVerdict {
        self.verdict
    }

    fn prog(&self) -> &Xdp {
        let name = self.verdict.program();
        self.ebpf
            .program(name)
            .and_then(|p| <&Xdp>::try_from(p).ok())
            .expect("loaded in `load`")
    }

    /// Attaches to interface `ifindex` of the calling thread's network
    /// namespace in driver mode, with a bpf link that lives as long as
    /// `self`.
    pub fn attach(&mut self, ifindex: u32) -> Result<()> {
        let name = self.verdict.program();
        let prog: &mut Xdp = self
            .ebpf
            .program_mut(name)
            .ok_or(VerdictError::Missing(name))?
            .try_into()
            .map_err(|source| VerdictError::Program { name, source })?;
        prog.attach_to_if_index(ifindex, XdpMode::Driver)
            .map_err(|source| VerdictError::Program { name, source })?;
        Ok(())
    }

    /// Runs one frame through the program (BPF_PROG_TEST_RUN) and returns
    /// the action it returned.
    pub fn test_run(&self, frame: &[u8]) -> Result<u32> {
        use aya::programs::{TestRun as _, TestRunOptions};
        let name = self.verdict.program();
        let r = self
            .prog()
            .test_run(TestRunOptions {
                data_in: Some(frame),
                ..Default::default()
            })
            .map_err(|source| VerdictError::Program { name, source })?;
        Ok(r.return_value)
    }

    /// Attaches to `ifname` of the calling thread's network namespace in
    /// driver mode over rtnetlink, replacing any netlink-attached program.
    /// The device holds the program after `self` is dropped and this
    /// process exits, until it is replaced, [`detach_netlink`]ed, or the
    /// device (or its namespace) goes away.
    pub fn attach_netlink(&self, ifname: &str) -> Result<()> {
        let name = self.verdict.program();
        let fd = self
            .prog()
            .fd()
            .map_err(|source| VerdictError::Program { name, source })?;
        netlink_xdp(ifname, fd.as_fd().as_raw_fd())
    }
}

/// Removes the netlink-attached XDP program of `ifname` (driver mode) in
/// the calling thread's network namespace.
pub fn detach_netlink(ifname: &str) -> Result<()> {
    netlink_xdp(ifname, -1)
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
/// waits for the kernel's acknowledgement.
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

    let err = |what: &'static str, source: io::Error| VerdictError::Netlink {
        what,
        iface: ifname.to_string(),
        source,
    };
    let name = CString::new(ifname).map_err(|_| VerdictError::NoInterface(ifname.into()))?;
    // SAFETY: if_nametoindex reads a NUL-terminated name.
    let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
    if ifindex == 0 {
        return Err(VerdictError::NoInterface(ifname.into()));
    }
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
    body.extend_from_slice(&(ifindex as i32).to_ne_bytes());
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
    let raw = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::NETLINK_ROUTE,
        )
    };
    if raw < 0 {
        return Err(err("opening a netlink socket", io::Error::last_os_error()));
    }
    // SAFETY: a new descriptor nothing else owns.
    let sock = unsafe { OwnedFd::from_raw_fd(raw) };
    let tv = libc::timeval {
        tv_sec: 5,
        tv_usec: 0,
    };
    // SAFETY: SO_RCVTIMEO reads a struct timeval of the given size; bounds
    // the wait for the acknowledgement.
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
        return Err(err("sending RTM_SETLINK", io::Error::last_os_error()));
    }
    let mut buf = [0u8; 4096];
    // SAFETY: receives at most `buf.len()` bytes into `buf`.
    let n = unsafe { libc::recv(sock.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
    if n < 0 {
        return Err(err(
            "waiting for the kernel's answer to RTM_SETLINK",
            io::Error::last_os_error(),
        ));
    }
    let n = n as usize;
    if n < 20 || u16::from_ne_bytes([buf[4], buf[5]]) != NLMSG_ERROR {
        return Err(err(
            "reading the answer to RTM_SETLINK",
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("not an acknowledgement ({n} bytes)"),
            ),
        ));
    }
    let code = i32::from_ne_bytes([buf[16], buf[17], buf[18], buf[19]]);
    if code != 0 {
        return Err(err(
            "RTM_SETLINK IFLA_XDP (driver mode)",
            io::Error::from_raw_os_error(-code),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_line_names_parse() {
        assert_eq!(XdpVerdict::from_short("pass"), Some(XdpVerdict::Pass));
        assert_eq!(XdpVerdict::from_short("tx"), Some(XdpVerdict::Tx));
        assert_eq!(XdpVerdict::from_short("drop"), Some(XdpVerdict::Drop));
        assert_eq!(XdpVerdict::from_short("PASS"), None);
        assert_eq!(XdpVerdict::from_short("none"), None);
    }
}
