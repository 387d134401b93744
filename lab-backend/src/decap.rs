//! A userspace decapsulator for kernels without IPIP / ip6tnl devices.
//!
//! Raw sockets receive every IP-in-IP packet addressed to this host (outer
//! IPv4 protocol 4; outer IPv6 next header 4 or 41). The outer header is
//! stripped and the inner packet written to a TUN device, where the kernel
//! receives it as if it had arrived on that device: the VIP on `lo`
//! answers, and the reply goes out through the normal routes, straight to
//! the client (direct server return).
use std::{
    fs::{File, OpenOptions},
    io::{self, Write as _},
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    sync::{atomic::Ordering, Arc},
    thread,
};

use anyhow::{bail, Context as _, Result};

use crate::server::Shared;

const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const IFF_TUN: libc::c_short = 0x0001;
const IFF_NO_PI: libc::c_short = 0x1000;
const IPPROTO_IPIP: libc::c_int = 4;
const IPPROTO_IPV6: libc::c_int = 41;

#[repr(C)]
struct IfReqFlags {
    name: [u8; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

/// Which packets one raw socket receives.
#[derive(Clone, Copy)]
enum Kind {
    /// IPv4 in IPv4: the socket hands over the outer header too.
    Ipip,
    /// IPv4 in IPv6: the socket hands over the payload only.
    FourInSix,
    /// IPv6 in IPv6: payload only.
    SixInSix,
}

impl Kind {
    fn label(self) -> &'static str {
        match self {
            Kind::Ipip => "ipip",
            Kind::FourInSix => "4in6",
            Kind::SixInSix => "6in6",
        }
    }
}

pub struct Decap {
    tun: Arc<File>,
    tun_name: String,
    socks: Vec<(OwnedFd, Kind)>,
}

fn raw_socket(family: libc::c_int, proto: libc::c_int) -> io::Result<OwnedFd> {
    // SAFETY: plain socket(2); the result is checked before use.
    let fd = unsafe { libc::socket(family, libc::SOCK_RAW | libc::SOCK_CLOEXEC, proto) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a new, valid descriptor that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let size: libc::c_int = 4 * 1024 * 1024;
    // SAFETY: setsockopt reads `size` (an int) for SO_RCVBUF. Failure only
    // leaves the default buffer size, so it is ignored.
    unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            (&raw const size).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
    Ok(fd)
}

/// The inner packet of what a raw socket of `kind` received, or why not.
fn inner(kind: Kind, pkt: &[u8]) -> Result<&[u8], &'static str> {
    let inner = match kind {
        Kind::Ipip => {
            let first = *pkt.first().ok_or("empty packet")?;
            if first >> 4 != 4 {
                return Err("outer header is not IPv4");
            }
            let ihl = usize::from(first & 0x0f) * 4;
            if ihl < 20 || pkt.len() < ihl {
                return Err("bad outer IPv4 header length");
            }
            &pkt[ihl..]
        }
        Kind::FourInSix | Kind::SixInSix => pkt,
    };
    let want = match kind {
        Kind::Ipip | Kind::FourInSix => 4,
        Kind::SixInSix => 6,
    };
    match inner.first() {
        Some(b) if b >> 4 == want => Ok(inner),
        Some(_) => Err("inner packet has the wrong IP version"),
        None => Err("no inner packet"),
    }
}

impl Decap {
    /// Attaches to the TUN device `tun_name` (created with
    /// `ip tuntap add dev NAME mode tun`, or created here if missing) and
    /// opens the raw sockets. Needs CAP_NET_RAW and CAP_NET_ADMIN.
    pub fn open(tun_name: &str) -> Result<Self> {
        if tun_name.is_empty() || tun_name.len() >= libc::IFNAMSIZ {
            bail!("bad TUN device name {tun_name:?}");
        }
        let tun = OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/net/tun")
            .context("opening /dev/net/tun")?;
        let mut req = IfReqFlags {
            name: [0; libc::IFNAMSIZ],
            flags: IFF_TUN | IFF_NO_PI,
            _pad: [0; 22],
        };
        req.name[..tun_name.len()].copy_from_slice(tun_name.as_bytes());
        // SAFETY: TUNSETIFF reads and writes a struct ifreq, which `req`
        // matches in layout and size (40 bytes).
        let rc = unsafe { libc::ioctl(tun.as_raw_fd(), TUNSETIFF as _, &raw mut req) };
        if rc < 0 {
            return Err(io::Error::last_os_error())
                .with_context(|| format!("attaching to TUN device {tun_name} (TUNSETIFF)"));
        }
        let mut socks = Vec::new();
        for (family, proto, kind) in [
            (libc::AF_INET, IPPROTO_IPIP, Kind::Ipip),
            (libc::AF_INET6, IPPROTO_IPIP, Kind::FourInSix),
            (libc::AF_INET6, IPPROTO_IPV6, Kind::SixInSix),
        ] {
            let fd = raw_socket(family, proto)
                .with_context(|| format!("opening the raw socket for {}", kind.label()))?;
            socks.push((fd, kind));
        }
        Ok(Decap {
            tun: Arc::new(tun),
            tun_name: tun_name.to_owned(),
            socks,
        })
    }

    /// Starts one thread per raw socket.
    pub fn spawn(self, shared: Arc<Shared>) -> Result<()> {
        for (fd, kind) in self.socks {
            let tun = self.tun.clone();
            let shared = shared.clone();
            let tun_name = self.tun_name.clone();
            thread::Builder::new()
                .name(format!("decap-{}", kind.label()))
                .spawn(move || run(&fd, kind, &tun, &tun_name, &shared))?;
        }
        Ok(())
    }
}

fn run(fd: &OwnedFd, kind: Kind, tun: &File, tun_name: &str, shared: &Shared) {
    let c = &shared.counters;
    let counter = match kind {
        Kind::Ipip => &c.decap_ipip,
        Kind::FourInSix => &c.decap_4in6,
        Kind::SixInSix => &c.decap_6in6,
    };
    let mut buf = vec![0u8; 65_536];
    let mut reported = false;
    loop {
        // SAFETY: recv writes at most `buf.len()` bytes into `buf`.
        let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        let Ok(n) = usize::try_from(n) else {
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                eprintln!("decap {}: recv: {e}", kind.label());
                thread::sleep(std::time::Duration::from_millis(50));
            }
            continue;
        };
        let result = inner(kind, &buf[..n])
            .map_err(|e| e.to_owned())
            .and_then(|p| {
                let mut t = tun;
                t.write(p)
                    .map(|_| ())
                    .map_err(|e| format!("writing to {tun_name}: {e}"))
            });
        match result {
            Ok(()) => {
                counter.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                c.decap_errors.fetch_add(1, Ordering::Relaxed);
                if !reported {
                    eprintln!("decap {}: {e} (further errors only counted)", kind.label());
                    reported = true;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_the_outer_ipv4_header_with_options() {
        let mut pkt = vec![0x46u8];
        pkt.extend_from_slice(&[0; 23]); // 24-byte outer header
        pkt.extend_from_slice(&[0x45, 1, 2, 3]);
        assert_eq!(inner(Kind::Ipip, &pkt), Ok(&[0x45u8, 1, 2, 3][..]));
        assert!(inner(Kind::Ipip, &[0x45, 0, 0]).is_err());
        assert!(inner(Kind::Ipip, &[0x60; 40]).is_err());
    }

    #[test]
    fn checks_the_inner_version() {
        assert_eq!(inner(Kind::SixInSix, &[0x60, 0]), Ok(&[0x60u8, 0][..]));
        assert!(inner(Kind::SixInSix, &[0x45, 0]).is_err());
        assert_eq!(inner(Kind::FourInSix, &[0x45, 0]), Ok(&[0x45u8, 0][..]));
        assert!(inner(Kind::FourInSix, &[]).is_err());
    }
}
