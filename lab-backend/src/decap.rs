//! A userspace decapsulator for kernels without IPIP / ip6tnl devices.
//!
//! Raw sockets receive every IP-in-IP packet addressed to this host (outer
//! IPv4 protocol 4; outer IPv6 next header 4 or 41). The outer header is
//! stripped and the inner packet written to a TUN device, where the kernel
//! receives it as if it had arrived on that device: the VIP on `lo`
//! answers, and the reply goes out through the normal routes, straight to
//! the client (direct server return).
//!
//! In black-hole mode (`POST /control/blackhole?on=1`) the decapsulator
//! silently drops every inner TCP packet that opens a connection (SYN set,
//! ACK clear) and passes everything else: established connections keep
//! working, new ones get no answer, and the health endpoints (reached on
//! the host's own address, not through the tunnel) still answer.
use std::{
    fs::{File, OpenOptions},
    io::{self, Write as _},
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    sync::{atomic::Ordering, Arc},
    thread,
};

use anyhow::{bail, Context as _, Result};
use etherparse::{SlicedPacket, TransportSlice};

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

/// Whether `inner` (an IPv4 or IPv6 packet, starting at its IP header)
/// is a TCP SYN without ACK: the first packet of a new connection. A
/// packet that does not parse as a whole (truncated, a fragment whose TCP
/// header cannot be seen, not IP) is not one.
pub(crate) fn opens_connection(inner: &[u8]) -> bool {
    match SlicedPacket::from_ip(inner) {
        Ok(p) => matches!(p.transport, Some(TransportSlice::Tcp(t)) if t.syn() && !t.ack()),
        Err(_) => false,
    }
}

/// Whether the decapsulator drops `inner` because black-hole mode is on
/// and it opens a connection; counts the drop.
pub(crate) fn blackholed(shared: &Shared, inner: &[u8]) -> bool {
    if !shared.blackhole_on() || !opens_connection(inner) {
        return false;
    }
    shared
        .counters
        .blackhole_dropped_syns
        .fetch_add(1, Ordering::Relaxed);
    true
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
                if blackholed(shared, p) {
                    return Ok(false);
                }
                let mut t = tun;
                t.write(p)
                    .map(|_| true)
                    .map_err(|e| format!("writing to {tun_name}: {e}"))
            });
        match result {
            Ok(true) => {
                counter.fetch_add(1, Ordering::Relaxed);
            }
            Ok(false) => {}
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

    // TCP flag bits (RFC 9293).
    const FIN: u8 = 0x01;
    const SYN: u8 = 0x02;
    const RST: u8 = 0x04;
    const PSH: u8 = 0x08;
    const ACK: u8 = 0x10;

    /// A TCP header (20 bytes, no options) with `flags`, then `payload`.
    fn tcp(flags: u8, payload: &[u8]) -> Vec<u8> {
        let mut t = vec![
            0x9c, 0x40, // source port 40000
            0, 80, // destination port 80
            0, 0, 0, 1, // sequence number
            0, 0, 0, 0, // acknowledgment number
            0x50, flags, // data offset 5 words, flags
            0xff, 0xff, // window
            0, 0, // checksum (not checked here)
            0, 0, // urgent pointer
        ];
        t.extend_from_slice(payload);
        t
    }

    /// A UDP header (8 bytes) and `payload`.
    fn udp(payload: &[u8]) -> Vec<u8> {
        let len = u16::try_from(8 + payload.len()).unwrap().to_be_bytes();
        let mut u = vec![0x9c, 0x40, 0, 53, len[0], len[1], 0, 0];
        u.extend_from_slice(payload);
        u
    }

    /// An IPv4 packet: a header of `ihl` words (options zero-filled),
    /// protocol `proto`, flags/fragment offset `frag`, then `l4`.
    fn ipv4(ihl: u8, proto: u8, frag: u16, l4: &[u8]) -> Vec<u8> {
        let hlen = usize::from(ihl) * 4;
        let total = u16::try_from(hlen + l4.len()).unwrap().to_be_bytes();
        let frag = frag.to_be_bytes();
        let mut p = vec![
            0x40 | ihl,
            0,
            total[0],
            total[1],
            0x12,
            0x34,
            frag[0],
            frag[1],
            64,
            proto,
            0,
            0,
            198,
            51,
            100,
            10,
            203,
            0,
            113,
            10,
        ];
        p.resize(hlen, 0); // options: end-of-list bytes
        p.extend_from_slice(l4);
        p
    }

    /// An IPv6 packet from 2001:db8:c::10 to 2001:db8:100::10; with
    /// `hop_by_hop`, an 8-byte hop-by-hop options header (PadN) comes
    /// before the `proto` header.
    fn ipv6(proto: u8, hop_by_hop: bool, l4: &[u8]) -> Vec<u8> {
        let mut ext = Vec::new();
        let mut next = proto;
        if hop_by_hop {
            ext = vec![proto, 0, 1, 4, 0, 0, 0, 0];
            next = 0;
        }
        let plen = u16::try_from(ext.len() + l4.len()).unwrap().to_be_bytes();
        let mut p = vec![0x60, 0, 0, 0, plen[0], plen[1], next, 64];
        p.extend_from_slice(&[
            0x20, 0x01, 0x0d, 0xb8, 0, 0x0c, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10,
        ]);
        p.extend_from_slice(&[
            0x20, 0x01, 0x0d, 0xb8, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10,
        ]);
        p.extend_from_slice(&ext);
        p.extend_from_slice(l4);
        p
    }

    const TCP: u8 = 6;
    const UDP: u8 = 17;
    const ICMP: u8 = 1;

    #[test]
    fn a_syn_without_ack_opens_a_connection_in_ipv4_and_ipv6() {
        assert!(opens_connection(&ipv4(5, TCP, 0, &tcp(SYN, &[]))));
        // With IP options, and with the don't-fragment bit a SYN carries.
        assert!(opens_connection(&ipv4(6, TCP, 0x4000, &tcp(SYN, &[]))));
        // TCP Fast Open: data on the SYN.
        assert!(opens_connection(&ipv4(5, TCP, 0, &tcp(SYN, b"GET /"))));
        assert!(opens_connection(&ipv6(TCP, false, &tcp(SYN, &[]))));
        assert!(opens_connection(&ipv6(TCP, true, &tcp(SYN, &[]))));
        // Trailing bytes after the IP packet (padding) do not hide it.
        let mut padded = ipv4(5, TCP, 0, &tcp(SYN, &[]));
        padded.extend_from_slice(&[0; 6]);
        assert!(opens_connection(&padded));
    }

    #[test]
    fn everything_else_passes() {
        for flags in [SYN | ACK, ACK, ACK | PSH, FIN | ACK, RST, RST | ACK, 0, FIN] {
            assert!(
                !opens_connection(&ipv4(5, TCP, 0, &tcp(flags, b"data"))),
                "IPv4 TCP flags {flags:#04x}"
            );
            assert!(
                !opens_connection(&ipv6(TCP, true, &tcp(flags, b"data"))),
                "IPv6 TCP flags {flags:#04x}"
            );
        }
        assert!(!opens_connection(&ipv4(5, UDP, 0, &udp(b"ping"))));
        assert!(!opens_connection(&ipv6(UDP, false, &udp(b"ping"))));
        // ICMP echo request.
        assert!(!opens_connection(&ipv4(
            5,
            ICMP,
            0,
            &[8, 0, 0, 0, 0, 1, 0, 1]
        )));
        // A UDP datagram whose payload looks like a TCP SYN header.
        assert!(!opens_connection(&ipv4(5, UDP, 0, &udp(&tcp(SYN, &[])))));
        // Fragments: the first (more-fragments set) and a later one. A SYN
        // is never fragmented; a fragment's TCP header is not looked at.
        assert!(!opens_connection(&ipv4(5, TCP, 0x2000, &tcp(SYN, &[]))));
        assert!(!opens_connection(&ipv4(5, TCP, 0x0003, &tcp(SYN, &[]))));
    }

    #[test]
    fn truncated_and_garbage_packets_pass_without_a_panic() {
        for full in [
            ipv4(5, TCP, 0, &tcp(SYN, &[])),
            ipv4(6, TCP, 0, &tcp(SYN, &[])),
            ipv6(TCP, false, &tcp(SYN, &[])),
            ipv6(TCP, true, &tcp(SYN, &[])),
        ] {
            assert!(opens_connection(&full));
            for len in 0..full.len() {
                assert!(
                    !opens_connection(&full[..len]),
                    "a SYN cut to {len} of {} bytes",
                    full.len()
                );
            }
        }
        // A SYN whose IPv4 header claims more bytes than there are.
        let mut long = ipv4(5, TCP, 0, &tcp(SYN, &[]));
        long[3] = 200;
        assert!(!opens_connection(&long));
        // A TCP data offset beyond the packet.
        let mut off = ipv4(5, TCP, 0, &tcp(SYN, &[]));
        off[20 + 12] = 0xf0;
        assert!(!opens_connection(&off));
        // Pseudo-random bytes behind IPv4 and IPv6 version nibbles.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for i in 0..20_000u32 {
            let len = usize::try_from(next() % 96).unwrap();
            let mut p: Vec<u8> = (0..len).map(|_| next().to_le_bytes()[0]).collect();
            if let Some(b) = p.first_mut() {
                *b = if i % 2 == 0 { 0x45 } else { 0x60 };
            }
            let _ = opens_connection(&p);
        }
    }

    #[test]
    fn black_hole_mode_drops_and_counts_only_new_connections() {
        let shared = Shared::new("eu1", "eu-west");
        let syn = ipv4(5, TCP, 0, &tcp(SYN, &[]));
        let syn6 = ipv6(TCP, false, &tcp(SYN, &[]));
        let ack = ipv4(5, TCP, 0, &tcp(ACK | PSH, b"GET / HTTP/1.1"));
        let dgram = ipv6(UDP, false, &udp(b"ping"));
        let dropped = || {
            shared
                .counters
                .blackhole_dropped_syns
                .load(Ordering::Relaxed)
        };

        // Off (the default): nothing is dropped.
        assert!(!blackholed(&shared, &syn));
        assert!(!blackholed(&shared, &syn6));
        assert_eq!(dropped(), 0);

        shared.set_blackhole(true);
        assert!(blackholed(&shared, &syn));
        assert!(blackholed(&shared, &syn6));
        assert!(!blackholed(&shared, &ack));
        assert!(!blackholed(&shared, &dgram));
        assert!(!blackholed(&shared, &syn[..30]));
        assert_eq!(dropped(), 2);
        let state = shared.state_json();
        assert_eq!(state["blackhole"], true);
        assert_eq!(state["blackhole_dropped_syns"], 2);

        shared.set_blackhole(false);
        assert!(!blackholed(&shared, &syn));
        let state = shared.state_json();
        assert_eq!(state["blackhole"], false);
        assert_eq!(state["blackhole_dropped_syns"], 2);
    }

    #[test]
    fn checks_the_inner_version() {
        assert_eq!(inner(Kind::SixInSix, &[0x60, 0]), Ok(&[0x60u8, 0][..]));
        assert!(inner(Kind::SixInSix, &[0x45, 0]).is_err());
        assert_eq!(inner(Kind::FourInSix, &[0x45, 0]), Ok(&[0x45u8, 0][..]));
        assert!(inner(Kind::FourInSix, &[]).is_err());
    }
}
