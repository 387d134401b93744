//! Fuzzing the data path: mutated frames through the real XDP program
//! (BPF_PROG_TEST_RUN on a data plane programmed from
//! `fixtures/fuzz.toml`), every verdict checked against an oracle that does
//! not use steer's parser.
//!
//! The frames come from a seeded mutator (`fastrand`) over a corpus of
//! valid frames built with etherparse (`steer_tests`): IPv4 and IPv6, TCP
//! and UDP, VLAN tags, IPv4 options, IPv6 extension headers, ICMP errors
//! and echoes, fragments, trailers, ARP; to VIPs, to the wrong port and to
//! foreign addresses. Mutations: bit flips, interesting byte values,
//! truncation, extension, IP and L4 length-field edits, IHL and next-header
//! edits, header splices between corpus frames, byte insertion and
//! deletion, retargeting at a VIP, ethertype edits.
//!
//! For every frame:
//! - `XDP_ABORTED` (or any verdict other than pass, drop, tx) fails;
//! - `XDP_PASS` must leave the frame byte-identical;
//! - `XDP_TX` is allowed only for a well-formed IPv4/IPv6 TCP/UDP packet
//!   (or ICMP fragmentation-needed / packet-too-big error quoting a flow of
//!   the VIP) addressed to a configured VIP, port and protocol, that fits
//!   the MTU once encapsulated; the output must be an encapsulation
//!   (etherparse: outer IPv4 checksum, lengths, protocol 4/41, DF) to a
//!   backend of that service, from the configured source range, to the
//!   next hop, with the input's VLAN tags and the input's IP packet
//!   byte-identical after the outer header and nothing after it;
//! - a well-formed packet to a configured service must be transmitted (or
//!   dropped when too big); well-formed foreign traffic and anything whose
//!   destination is not a VIP address must be passed.
//!
//! Knobs (environment): `STEER_FUZZ_FRAMES` (default 1,000,000),
//! `STEER_FUZZ_SEED` (default fixed, so runs are reproducible). `cargo
//! xtask fuzz` runs this test with a chosen count and seed.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Instant;

use etherparse::{
    err::{packet::SliceError, Layer},
    icmpv4::DestUnreachableHeader,
    Icmpv4Type, Ipv4HeaderSlice, Ipv6HeaderSlice, LenSource, NetSlice, SlicedPacket,
    TransportSlice,
};
use steer::config::Config;
use steer::dataplane::{Dataplane, Verdict};
use steer::policy::ApplyConfig as _;
use steer_tests::*;

const FUZZ: &str = include_str!("fixtures/fuzz.toml");

const DEFAULT_FRAMES: u64 = 1_000_000;
const DEFAULT_SEED: u64 = 0x5743_4552_0001;
/// Largest frame the mutator produces (BPF_PROG_TEST_RUN takes up to
/// about a page).
const MAX_FRAME: usize = 2048;
/// Distinct failures kept (by kind) before the run gives up early.
const MAX_FAILURE_KINDS: usize = 16;

/// Every transmitted frame must have a unicast, non-zero source MAC (the
/// interface's, or `dataplane.source_mac` as here: BPF_PROG_TEST_RUN has no
/// attached interface), whatever destination MAC the input had.
const CHECK_UNICAST_SOURCE_MAC: bool = true;

const ETH_IPV4: u16 = 0x0800;
const ETH_IPV6: u16 = 0x86dd;

fn env_u64(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(v) => {
            let v = v.trim();
            let parsed = match v.strip_prefix("0x") {
                Some(hex) => u64::from_str_radix(hex, 16),
                None => v.parse(),
            };
            parsed.unwrap_or_else(|_| {
                panic!("{name}={v:?} is not a number; give a decimal or 0x-prefixed count")
            })
        }
        Err(_) => default,
    }
}

// ---------------------------------------------------------------------------
// The model: what the config says, read from the config model alone.

struct Service {
    name: String,
    vip: IpAddr,
    port: u16,
    proto: u8,
    backends: BTreeSet<IpAddr>,
    /// Outer header length: 20 when the backends are IPv4, 40 when IPv6.
    outer_len: usize,
}

struct Model {
    services: Vec<Service>,
    vip_addrs: BTreeSet<IpAddr>,
    next_hop: [u8; 6],
    mtu: usize,
    ttl: u8,
    src4: (Ipv4Addr, u8),
    src6: (Ipv6Addr, u8),
}

impl Model {
    fn new(cfg: &Config) -> Model {
        let mut services = Vec::new();
        for s in &cfg.services {
            let backends: BTreeSet<IpAddr> = cfg
                .backends
                .iter()
                .filter(|b| {
                    b.weight > 0 && (s.backends.contains(&b.name) || s.regions.contains(&b.region))
                })
                .map(|b| b.address)
                .collect();
            assert!(!backends.is_empty(), "service {} has no backend", s.name);
            let v6 = backends.iter().filter(|a| a.is_ipv6()).count();
            assert!(
                v6 == 0 || v6 == backends.len(),
                "fuzz.toml: service {} mixes backend families; the oracle needs one",
                s.name
            );
            services.push(Service {
                name: s.name.clone(),
                vip: s.vip,
                port: s.port,
                proto: s.protocol.number(),
                outer_len: if v6 == 0 { 20 } else { 40 },
                backends,
            });
        }
        let d = &cfg.dataplane;
        let src4 = d.encap_source_v4.expect("fuzz.toml sets encap_source_v4");
        let src6 = d.encap_source_v6.expect("fuzz.toml sets encap_source_v6");
        Model {
            vip_addrs: services.iter().map(|s| s.vip).collect(),
            services,
            next_hop: d.next_hop_mac,
            mtu: d.mtu as usize,
            ttl: d.ttl,
            src4: (src4.addr, src4.len),
            src6: (src6.addr, src6.len),
        }
    }

    /// The service of `(dst, port, proto)`: the exact port first, then a
    /// port-0 service on the same address and protocol.
    fn service(&self, dst: IpAddr, port: u16, proto: u8) -> Option<usize> {
        let find = |p: u16| {
            self.services
                .iter()
                .position(|s| s.vip == dst && s.proto == proto && s.port == p)
        };
        find(port).or_else(|| find(0))
    }
}

// ---------------------------------------------------------------------------
// The oracle.

/// What the program may do with a frame.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Expect {
    /// Pass it unchanged (foreign, not IP, no service, not steer's ICMP).
    Pass(&'static str),
    /// Malformed, a fragment, or a form steer does not parse, to a VIP
    /// address: drop it or pass it unchanged, never transmit it.
    NotTx(&'static str),
    /// Well-formed, to `service`: transmit it (or drop it when the
    /// encapsulated packet would exceed the MTU).
    Forward {
        service: usize,
        l2: usize,
        ip_len: usize,
        icmp: bool,
    },
}

impl Expect {
    fn kind(&self) -> &'static str {
        match self {
            Expect::Pass(w) | Expect::NotTx(w) => w,
            Expect::Forward { icmp: false, .. } => "forward",
            Expect::Forward { icmp: true, .. } => "forward ICMP error",
        }
    }
}

fn be16(b: &[u8], off: usize) -> u16 {
    u16::from_be_bytes([b[off], b[off + 1]])
}

fn addr4(b: &[u8]) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(b[0], b[1], b[2], b[3]))
}

fn addr6(b: &[u8]) -> IpAddr {
    let a: [u8; 16] = b[..16].try_into().expect("16 bytes");
    IpAddr::V6(Ipv6Addr::from(a))
}

/// Ethernet with at most two 802.1Q/802.1ad tags: (ethertype, header
/// length), or `None` when the frame ends inside a tag.
fn l2(frame: &[u8]) -> Option<(u16, usize)> {
    let mut ty = be16(frame, 12);
    let mut off = 14;
    for _ in 0..2 {
        if ty != TPID_8021Q && ty != TPID_8021AD {
            break;
        }
        if frame.len() < off + 4 {
            return None;
        }
        ty = be16(frame, off + 2);
        off += 4;
    }
    Some((ty, off))
}

const TCP: u8 = 6;
const UDP: u8 = 17;

fn classify(m: &Model, frame: &[u8]) -> Expect {
    let Some((ty, l2)) = l2(frame) else {
        return Expect::Pass("frame ends inside a VLAN tag");
    };
    let ip = &frame[l2..];
    let v6 = match ty {
        ETH_IPV4 => false,
        ETH_IPV6 => true,
        _ => return Expect::Pass("not IP (or a third VLAN tag)"),
    };
    let dst = match (v6, ip.len()) {
        (false, 20..) => addr4(&ip[16..20]),
        (true, 40..) => addr6(&ip[24..40]),
        _ => return Expect::Pass("destination address not in the frame"),
    };
    if !m.vip_addrs.contains(&dst) {
        return Expect::Pass("foreign destination");
    }
    if ip[0] >> 4 != if v6 { 6 } else { 4 } {
        return Expect::NotTx("IP version does not match the ethertype");
    }
    let p = match SlicedPacket::from_ip(ip) {
        Ok(p) => p,
        Err(e) => return Expect::NotTx(rejected(&e)),
    };
    let (payload, ip_len) = match &p.net {
        Some(NetSlice::Ipv4(s)) if s.payload().fragmented => {
            return Expect::NotTx("IP fragment");
        }
        Some(NetSlice::Ipv4(s)) => {
            // steer reads the protocol byte; an AH header (which etherparse
            // walks) is a protocol steer does not handle.
            if s.header().protocol().0 != s.payload().ip_number.0 {
                return Expect::Pass("IPv4 with an authentication header");
            }
            (s.payload(), usize::from(s.header().total_len()))
        }
        Some(NetSlice::Ipv6(s)) => {
            if s.payload().len_source == LenSource::Slice {
                return Expect::NotTx("IPv6 payload length 0 (no jumbogram support)");
            }
            // steer walks hop-by-hop, routing and destination options, at
            // most four; it drops fragments and stops at anything else.
            let mut next = s.header().next_header().0;
            let mut off = 40;
            let mut walked = 0;
            loop {
                match next {
                    0 | 43 | 60 => {
                        if walked == 4 {
                            return Expect::NotTx("more than four IPv6 extension headers");
                        }
                        next = ip[off];
                        off += (usize::from(ip[off + 1]) + 1) * 8;
                        walked += 1;
                    }
                    44 => return Expect::NotTx("IPv6 fragment"),
                    _ => break,
                }
            }
            if next != s.payload().ip_number.0 {
                return Expect::Pass("IPv6 extension header steer does not walk");
            }
            (s.payload(), 40 + usize::from(s.header().payload_length()))
        }
        _ => return Expect::NotTx("no IP layer"),
    };
    if payload.fragmented {
        return Expect::NotTx("IP fragment");
    }
    let proto = payload.ip_number.0;
    let l4 = payload.payload;
    match (proto, v6, &p.transport) {
        (TCP, _, Some(TransportSlice::Tcp(t))) => {
            forward_or_pass(m.service(dst, t.destination_port(), TCP), l2, ip_len, false)
        }
        (UDP, _, Some(TransportSlice::Udp(u))) => {
            // etherparse accepts a zero UDP length (jumbograms); steer has no
            // jumbogram support, so zero is malformed here.
            if u.length() == 0 {
                return Expect::NotTx("UDP length 0");
            }
            forward_or_pass(m.service(dst, u.destination_port(), UDP), l2, ip_len, false)
        }
        (TCP | UDP, _, _) => Expect::NotTx("TCP/UDP header etherparse did not parse"),
        (1, false, _) => {
            // ICMPv4 fragmentation needed (type 3 code 4), quoting an IPv4
            // packet from the VIP: header, then at least the two ports.
            if l4.len() < 8 || l4[0] != 3 || l4[1] != 4 {
                return Expect::Pass("ICMPv4 that is not fragmentation-needed");
            }
            let q = &l4[8..];
            if q.len() < 20 || q[0] >> 4 != 4 || q[0] & 0x0f < 5 {
                return Expect::NotTx("ICMPv4 error with a broken quote");
            }
            let qhl = usize::from(q[0] & 0x0f) * 4;
            if q.len() < qhl + 4 {
                return Expect::NotTx("ICMPv4 error quote without ports");
            }
            icmp_error(m, dst, addr4(&q[12..16]), q[9], be16(q, qhl), l2, ip_len)
        }
        (58, true, _) => {
            if l4.len() < 8 || l4[0] != 2 {
                return Expect::Pass("ICMPv6 that is not packet-too-big");
            }
            let q = &l4[8..];
            if q.len() < 44 || q[0] >> 4 != 6 {
                return Expect::NotTx("ICMPv6 error with a broken quote");
            }
            icmp_error(m, dst, addr6(&q[8..24]), q[6], be16(q, 40), l2, ip_len)
        }
        _ => Expect::Pass("a protocol steer does not handle"),
    }
}

/// Why etherparse rejected a packet, by kind.
fn rejected(e: &SliceError) -> &'static str {
    match e {
        SliceError::Len(l) => match l.layer {
            Layer::TcpHeader => "etherparse: TCP data offset past the IP packet",
            Layer::UdpPayload => "etherparse: UDP length past the IP packet",
            Layer::UdpHeader => "etherparse: UDP length below 8",
            Layer::Ipv4Packet | Layer::Ipv4Header => "etherparse: IPv4 length",
            Layer::Ipv6Packet | Layer::Ipv6Header => "etherparse: IPv6 length",
            _ => "etherparse: another length",
        },
        SliceError::Tcp(_) => "etherparse: TCP data offset below 5",
        SliceError::Ipv6Exts(_) => "etherparse: IPv6 extension header",
        SliceError::Ipv4Exts(_) => "etherparse: IPv4 authentication header",
        _ => "etherparse: IP header",
    }
}

fn forward_or_pass(s: Option<usize>, l2: usize, ip_len: usize, icmp: bool) -> Expect {
    match s {
        Some(service) => Expect::Forward {
            service,
            l2,
            ip_len,
            icmp,
        },
        None => Expect::Pass("no service for this port and protocol"),
    }
}

/// An ICMP error is steer's when its quote is a TCP/UDP packet *from* the
/// VIP it is addressed to, from a service's port.
fn icmp_error(
    m: &Model,
    dst: IpAddr,
    quoted_src: IpAddr,
    quoted_proto: u8,
    quoted_sport: u16,
    l2: usize,
    ip_len: usize,
) -> Expect {
    if quoted_src != dst || !(quoted_proto == TCP || quoted_proto == UDP) {
        return Expect::Pass("ICMP error quoting a packet not from this VIP");
    }
    forward_or_pass(
        m.service(quoted_src, quoted_sport, quoted_proto),
        l2,
        ip_len,
        true,
    )
}

fn in_range4(a: Ipv4Addr, (base, len): (Ipv4Addr, u8)) -> bool {
    let mask = if len == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(len))
    };
    u32::from(a) & mask == u32::from(base) & mask
}

fn in_range6(a: Ipv6Addr, (base, len): (Ipv6Addr, u8)) -> bool {
    let mask = if len == 0 {
        0
    } else {
        u128::MAX << (128 - u32::from(len))
    };
    u128::from(a) & mask == u128::from(base) & mask
}

/// Checks a transmitted frame; `Err` says what is wrong.
fn check_tx(
    m: &Model,
    input: &[u8],
    out: &[u8],
    service: &Service,
    l2: usize,
    ip_len: usize,
) -> Result<(), String> {
    if out.len() < l2 + 20 {
        return Err(format!("output too short: {} bytes", out.len()));
    }
    if out[..6] != m.next_hop {
        return Err(format!(
            "destination MAC not the next hop: {:02x?}",
            &out[..6]
        ));
    }
    if CHECK_UNICAST_SOURCE_MAC && (out[6] & 1 != 0 || out[6..12] == [0; 6]) {
        return Err(format!("source MAC not unicast: {:02x?}", &out[6..12]));
    }
    // VLAN tags (TPID + TCI) carried over as they were.
    if out[12..l2 - 2] != input[12..l2 - 2] {
        return Err("VLAN tags: differ from the input's".into());
    }
    let inner = &input[l2..l2 + ip_len];
    let inner_v6 = inner[0] >> 4 == 6;
    let want_proto = if inner_v6 { 41 } else { 4 };
    let (outer_len, backend) = match be16(out, l2 - 2) {
        ETH_IPV4 => {
            let h = Ipv4HeaderSlice::from_slice(&out[l2..])
                .map_err(|e| format!("outer IPv4 header: does not parse ({e})"))?;
            let hdr = h.to_header();
            if h.ihl() != 5 {
                return Err(format!("outer IPv4 IHL: {}", h.ihl()));
            }
            if hdr.calc_header_checksum() != h.header_checksum() {
                return Err(format!(
                    "outer IPv4 checksum: {:#06x}, correct is {:#06x}",
                    h.header_checksum(),
                    hdr.calc_header_checksum()
                ));
            }
            if usize::from(h.total_len()) != out.len() - l2 {
                return Err(format!(
                    "outer IPv4 total length: {} but {} bytes follow the Ethernet header",
                    h.total_len(),
                    out.len() - l2
                ));
            }
            if h.protocol().0 != want_proto {
                return Err(format!(
                    "outer protocol: {} for an inner IPv{}",
                    h.protocol().0,
                    if inner_v6 { 6 } else { 4 }
                ));
            }
            if !h.dont_fragment() || h.more_fragments() || h.fragments_offset().value() != 0 {
                return Err("outer IPv4 fragmentation: not DF, or fragmented".into());
            }
            if h.ttl() != m.ttl {
                return Err(format!("outer TTL: {} (config {})", h.ttl(), m.ttl));
            }
            if !in_range4(h.source_addr(), m.src4) {
                return Err(format!(
                    "outer source: {} outside {:?}",
                    h.source_addr(),
                    m.src4
                ));
            }
            (20, IpAddr::V4(h.destination_addr()))
        }
        ETH_IPV6 => {
            let h = Ipv6HeaderSlice::from_slice(&out[l2..])
                .map_err(|e| format!("outer IPv6 header: does not parse ({e})"))?;
            if usize::from(h.payload_length()) != out.len() - l2 - 40 {
                return Err(format!(
                    "outer IPv6 payload length: {} but {} bytes follow the outer header",
                    h.payload_length(),
                    out.len() - l2 - 40
                ));
            }
            if h.next_header().0 != want_proto {
                return Err(format!("outer next header: {}", h.next_header().0));
            }
            if h.hop_limit() != m.ttl {
                return Err(format!(
                    "outer hop limit: {} (config {})",
                    h.hop_limit(),
                    m.ttl
                ));
            }
            if !in_range6(h.source_addr(), m.src6) {
                return Err(format!(
                    "outer source: {} outside {:?}",
                    h.source_addr(),
                    m.src6
                ));
            }
            (40, IpAddr::V6(h.destination_addr()))
        }
        t => return Err(format!("output ethertype: {t:#06x}")),
    };
    if inner_v6 && outer_len == 20 {
        return Err("IPv6 inside IPv4: not a valid encapsulation".into());
    }
    if !service.backends.contains(&backend) {
        return Err(format!(
            "backend: sent to {backend}, not a backend of service {} ({:?})",
            service.name, service.backends
        ));
    }
    if out.len() - l2 > m.mtu {
        return Err(format!(
            "MTU: outer packet of {} bytes above the MTU {}",
            out.len() - l2,
            m.mtu
        ));
    }
    if &out[l2 + outer_len..] != inner {
        return Err("inner packet: differs from the input's IP packet".into());
    }
    Ok(())
}

/// A path-MTU reply to `input` (docs/architecture.md): same family, an
/// ICMP too-big from the input's destination to its source, within 576
/// (IPv4) or 1280 (IPv6) bytes, its ICMP checksum valid. The replay tests
/// check these replies byte for byte; this only checks their shape.
fn check_pmtu_reply(input: &[u8], out: &[u8], l2: usize) -> Result<(), String> {
    if out.len() < l2 + 48 || out[l2 - 2..l2] != input[l2 - 2..l2] {
        return Err("not the input's family".into());
    }
    let v4 = input[l2 - 2..l2] == [0x08, 0x00];
    let (hdr, max, proto, ty, src, dst) = if v4 {
        (20, 576, 1, [3, 4], l2 + 12..l2 + 16, l2 + 16..l2 + 20)
    } else {
        (40, 1280, 58, [2, 0], l2 + 8..l2 + 24, l2 + 24..l2 + 40)
    };
    if out.len() - l2 > max {
        return Err(format!("{} bytes", out.len() - l2));
    }
    let got_proto = if v4 { out[l2 + 9] } else { out[l2 + 6] };
    if got_proto != proto || out[l2 + hdr..l2 + hdr + 2] != ty {
        return Err("not an ICMP too-big".into());
    }
    if out[src.clone()] != input[dst.clone()] || out[dst] != input[src] {
        return Err("addresses not swapped".into());
    }
    let icmp = &out[l2 + hdr..];
    let ok = if v4 {
        internet_checksum(icmp) == 0
    } else {
        let mut pseudo = out[l2 + 8..l2 + 40].to_vec();
        pseudo.extend_from_slice(&(icmp.len() as u32).to_be_bytes());
        pseudo.extend_from_slice(&[0, 0, 0, 58]);
        pseudo.extend_from_slice(icmp);
        internet_checksum(&pseudo) == 0
    };
    if !ok {
        return Err("ICMP checksum".into());
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// The corpus and the mutator.

struct Seed {
    frame: Vec<u8>,
    l3: usize,
    l4: usize,
    v6: bool,
}

fn seed(p: &Packet) -> Seed {
    Seed {
        frame: p.build(),
        l3: p.l2_len(),
        l4: p.l2_len() + p.ip_header_len(),
        v6: p.is_v6(),
    }
}

/// Sets TCP SYN (no ACK) on a TCP seed.
fn syn(mut s: Seed) -> Seed {
    s.frame[s.l4 + 13] = 0x02;
    s
}

fn corpus(m: &Model) -> Vec<Seed> {
    let c4 = Ipv4Addr::new(198, 51, 100, 7);
    let c6: Ipv6Addr = "2001:db8:c::7".parse().expect("address");
    let other4 = Ipv4Addr::new(203, 0, 113, 99);
    let other6: Ipv6Addr = "2001:db8:a::99".parse().expect("address");
    let mut out = Vec::new();
    let mut targets: Vec<(IpAddr, u16, u8)> = m
        .services
        .iter()
        .map(|s| (s.vip, if s.port == 0 { 9999 } else { s.port }, s.proto))
        .collect();
    // Wrong port, wrong protocol, foreign address.
    targets.push((m.services[0].vip, 8080, TCP));
    targets.push((m.services[0].vip, 80, UDP));
    targets.push((IpAddr::V4(other4), 80, TCP));
    targets.push((IpAddr::V6(other6), 443, TCP));
    for (i, (vip, port, proto)) in targets.into_iter().enumerate() {
        let sport = 40000 + i as u16;
        let base = match (vip, proto) {
            (IpAddr::V4(v), TCP) => tcp4(c4, sport, v, port),
            (IpAddr::V4(v), _) => udp4(c4, sport, v, port),
            (IpAddr::V6(v), TCP) => tcp6(c6, sport, v, port),
            (IpAddr::V6(v), _) => udp6(c6, sport, v, port),
        };
        let v6 = base.is_v6();
        let mut variants = vec![
            base.clone(),
            base.clone().payload_len(0),
            base.clone().payload_len(1300),
            // Too big for the MTU once encapsulated.
            base.clone().payload_len(1400),
            base.clone().vlan(Vlan::dot1q(100)),
            base.clone().vlan(Vlan::dot1ad(10)).vlan(Vlan::dot1q(20)),
            base.clone().trailer(vec![0xee; 12]),
            base.clone().tos(0xb9),
        ];
        if v6 {
            variants.push(base.clone().ext(Ext::hop_by_hop()));
            variants.push(base.clone().ext(Ext::hop_by_hop()).ext(Ext::dest_opts()));
            variants.push(base.clone().ext(Ext::routing()));
            variants.push(base.clone().ext(Ext::Fragment {
                offset: 0,
                more: true,
                ident: 7,
            }));
        } else {
            variants.push(base.clone().v4_options(vec![0x94, 0x04, 0, 0]));
            variants.push(base.clone().v4_options(vec![0x01; 40]));
            variants.push(base.clone().v4_fragment(true, 0));
            variants.push(base.clone().v4_fragment(false, 100));
        }
        for p in &variants {
            let s = seed(p);
            if proto == TCP {
                out.push(syn(seed(p)));
            }
            out.push(s);
        }
        // ICMP errors quoting a packet from the VIP back to the client.
        match (vip, proto) {
            (IpAddr::V4(v), _) => {
                let quoted = if proto == TCP {
                    tcp4(v, port, c4, sport)
                } else {
                    udp4(v, port, c4, sport)
                }
                .payload_len(1400)
                .ip_packet();
                let router = Ipv4Addr::new(198, 51, 100, 254);
                out.push(seed(&frag_needed4(router, v, 1300, quoted[..28].to_vec())));
                out.push(seed(&frag_needed4(router, v, 1300, quoted[..60].to_vec())));
                out.push(seed(&echo4(c4, v)));
                out.push(seed(&icmp4(
                    router,
                    v,
                    Icmpv4Type::DestinationUnreachable(DestUnreachableHeader::Port),
                    quoted[..28].to_vec(),
                )));
            }
            (IpAddr::V6(v), _) => {
                let quoted = if proto == TCP {
                    tcp6(v, port, c6, sport)
                } else {
                    udp6(v, port, c6, sport)
                }
                .payload_len(1400)
                .ip_packet();
                let router: Ipv6Addr = "2001:db8:ff::1".parse().expect("address");
                out.push(seed(&packet_too_big6(
                    router,
                    v,
                    1280,
                    quoted[..48].to_vec(),
                )));
                out.push(seed(&packet_too_big6(
                    router,
                    v,
                    1280,
                    quoted[..200].to_vec(),
                )));
                out.push(seed(&echo6(c6, v)));
            }
        }
    }
    let arp = arp_request(c4, Ipv4Addr::new(203, 0, 113, 10));
    out.push(Seed {
        frame: arp,
        l3: 14,
        l4: 34,
        v6: false,
    });
    out
}

/// Byte values that tend to sit on parser boundaries.
const INTERESTING: [u8; 16] = [
    0, 1, 2, 4, 5, 6, 0x0f, 0x11, 0x2c, 0x3a, 0x3c, 0x40, 0x45, 0x7f, 0x80, 0xff,
];

fn put16(f: &mut [u8], off: usize, v: u16) {
    if off + 2 <= f.len() {
        f[off..off + 2].copy_from_slice(&v.to_be_bytes());
    }
}

fn interesting_len(rng: &mut fastrand::Rng, current: u16, room: usize) -> u16 {
    let room = room.min(usize::from(u16::MAX)) as u16;
    match rng.u8(0..8) {
        0 => 0,
        1 => rng.u16(0..40),
        2 => current.wrapping_add(rng.u16(1..9)),
        3 => current.wrapping_sub(rng.u16(1..9)),
        4 => room,
        5 => room.wrapping_add(1),
        6 => u16::MAX,
        _ => rng.u16(..),
    }
}

fn fix_v4_checksum(f: &mut [u8], l3: usize, v6: bool) {
    if !v6 && f.len() >= l3 + 20 && f[l3] >> 4 == 4 {
        fix_ipv4_checksum(f, l3);
    }
}

fn mutate(rng: &mut fastrand::Rng, m: &Model, corpus: &[Seed], s: &Seed) -> Vec<u8> {
    let mut f = s.frame.clone();
    let rounds = match rng.u8(0..10) {
        0 => 0,
        1..=5 => 1,
        6..=7 => 2,
        _ => rng.usize(3..8),
    };
    for _ in 0..rounds {
        if f.len() < 14 {
            f.resize(14, 0);
        }
        let hdr_end = f.len().min(s.l4 + 24);
        match rng.u8(0..13) {
            0 => {
                let i = rng.usize(..f.len());
                f[i] ^= 1 << rng.u8(0..8);
            }
            1 => {
                let i = rng.usize(..hdr_end);
                f[i] ^= 1 << rng.u8(0..8);
            }
            2 => {
                let i = rng.usize(..hdr_end);
                f[i] = if rng.bool() {
                    INTERESTING[rng.usize(..INTERESTING.len())]
                } else {
                    rng.u8(..)
                };
            }
            3 => {
                let n = rng.usize(14..=f.len());
                f.truncate(n);
            }
            4 => {
                let n = rng.usize(1..64);
                let zero = rng.bool();
                f.extend((0..n).map(|_| if zero { 0 } else { rng.u8(..) }));
            }
            5 => {
                // IP length fields.
                let room = f.len().saturating_sub(s.l3);
                if s.v6 {
                    if f.len() >= s.l3 + 6 {
                        let cur = be16(&f, s.l3 + 4);
                        let v = interesting_len(rng, cur, room.saturating_sub(40));
                        put16(&mut f, s.l3 + 4, v);
                    }
                } else if f.len() >= s.l3 + 4 {
                    let cur = be16(&f, s.l3 + 2);
                    let v = interesting_len(rng, cur, room);
                    put16(&mut f, s.l3 + 2, v);
                }
            }
            6 => {
                // L4 length fields: TCP data offset, UDP length.
                if f.len() >= s.l4 + 14 && rng.bool() {
                    f[s.l4 + 12] = (rng.u8(0..16) << 4) | (f[s.l4 + 12] & 0x0f);
                } else if f.len() >= s.l4 + 6 {
                    let cur = be16(&f, s.l4 + 4);
                    let v = interesting_len(rng, cur, f.len() - s.l4);
                    put16(&mut f, s.l4 + 4, v);
                }
            }
            7 => {
                // IHL or the IPv6 next header.
                if s.v6 {
                    if f.len() > s.l3 + 6 {
                        f[s.l3 + 6] =
                            [0, 6, 17, 43, 44, 51, 58, 59, 60, rng.u8(..)][rng.usize(..10)];
                    }
                } else if f.len() > s.l3 {
                    f[s.l3] = 0x40 | rng.u8(0..16);
                }
            }
            8 => {
                // Header splices with another corpus frame.
                let o = &corpus[rng.usize(..corpus.len())];
                f = match rng.u8(0..3) {
                    // Our headers, their transport and payload.
                    0 if f.len() >= s.l4 => {
                        let mut g = f[..s.l4].to_vec();
                        g.extend_from_slice(&o.frame[o.l4.min(o.frame.len())..]);
                        g
                    }
                    // Their Ethernet and tags, our IP packet.
                    1 if f.len() >= s.l3 => {
                        let mut g = o.frame[..o.l3].to_vec();
                        g.extend_from_slice(&f[s.l3..]);
                        g
                    }
                    // Anywhere.
                    _ => {
                        let a = rng.usize(..=f.len());
                        let b = rng.usize(..=o.frame.len());
                        let mut g = f[..a].to_vec();
                        g.extend_from_slice(&o.frame[b..]);
                        g
                    }
                };
            }
            9 => {
                // Insert or delete bytes inside the headers.
                let at = rng.usize(..=hdr_end.min(f.len()));
                if rng.bool() {
                    let n = [1, 2, 4, 8][rng.usize(..4)];
                    for _ in 0..n {
                        f.insert(at, rng.u8(..));
                    }
                } else {
                    let n = rng.usize(1..9).min(f.len() - at);
                    f.drain(at..at + n);
                }
            }
            10 => {
                // Retarget at a VIP address and service port.
                let fam: Vec<&Service> = m
                    .services
                    .iter()
                    .filter(|x| x.vip.is_ipv6() == s.v6)
                    .collect();
                let t = fam[rng.usize(..fam.len())];
                match t.vip {
                    IpAddr::V4(a) if f.len() >= s.l3 + 20 => {
                        f[s.l3 + 16..s.l3 + 20].copy_from_slice(&a.octets())
                    }
                    IpAddr::V6(a) if f.len() >= s.l3 + 40 => {
                        f[s.l3 + 24..s.l3 + 40].copy_from_slice(&a.octets())
                    }
                    _ => {}
                }
                put16(&mut f, s.l4 + 2, t.port);
                fix_v4_checksum(&mut f, s.l3, s.v6);
            }
            11 => {
                let ty =
                    [0x8100, 0x88a8, 0x9100, 0x0800, 0x86dd, 0x0806, rng.u16(..)][rng.usize(..7)];
                let at = if s.l3 > 14 && rng.bool() {
                    s.l3 - 2
                } else {
                    12
                };
                put16(&mut f, at, ty);
            }
            _ => {
                // Destination MAC: unicast, multicast or broadcast.
                let mac: [u8; 6] = match rng.u8(0..3) {
                    0 => [0xff; 6],
                    1 => [0x01, 0x00, 0x5e, 0, 0, 1],
                    _ => [0x33, 0x33, 0, 0, 0, 1],
                };
                f[..6].copy_from_slice(&mac);
            }
        }
        if rng.u8(0..4) != 0 {
            fix_v4_checksum(&mut f, s.l3, s.v6);
        }
    }
    if f.len() < 14 {
        f.resize(14, 0);
    }
    f.truncate(MAX_FRAME);
    f
}

// ---------------------------------------------------------------------------
// The run.

fn hex(b: &[u8]) -> String {
    let mut s = String::new();
    for (i, x) in b.iter().enumerate() {
        if i > 0 && i % 32 == 0 {
            s.push('\n');
        }
        let _ = write!(s, "{x:02x}");
    }
    s
}

#[derive(Default)]
struct Stats {
    verdicts: BTreeMap<String, u64>,
    classes: BTreeMap<&'static str, u64>,
    tx: u64,
    too_big: u64,
    non_unicast_src: u64,
}

struct Failure {
    count: u64,
    first: String,
}

#[test]
#[ignore = "needs root: BPF or network namespaces (cargo xtask test runs it)"]
fn mutated_frames_through_the_xdp_program() {
    if !require_root() {
        return;
    }
    let frames = env_u64("STEER_FUZZ_FRAMES", DEFAULT_FRAMES);
    let seed_value = env_u64("STEER_FUZZ_SEED", DEFAULT_SEED);
    let cfg = match Config::parse(FUZZ) {
        Ok(c) => c,
        Err(e) => panic!("fuzz.toml does not parse: {e:?}"),
    };
    let model = Model::new(&cfg);
    let mut dp = match Dataplane::load(&cfg.dataplane) {
        Ok(dp) => dp,
        Err(e) => panic!("loading the XDP program failed: {e:#}"),
    };
    if let Err(e) = dp.apply(&cfg, &BTreeSet::new()) {
        panic!("programming the maps failed: {e:#}");
    }
    let corpus = corpus(&model);
    // Every corpus frame is valid; the oracle must agree with the builders.
    for s in &corpus {
        assert!(s.frame.len() >= 14 && s.frame.len() <= MAX_FRAME);
    }
    let mut rng = fastrand::Rng::with_seed(seed_value);
    let mut stats = Stats::default();
    let mut failures: BTreeMap<String, Failure> = BTreeMap::new();
    let started = Instant::now();
    let mut ran = 0u64;
    while ran < frames {
        let s = &corpus[rng.usize(..corpus.len())];
        let input = mutate(&mut rng, &model, &corpus, s);
        let expect = classify(&model, &input);
        *stats.classes.entry(expect.kind()).or_default() += 1;
        let out = match dp.run(&input) {
            Ok(o) => o,
            Err(e) => panic!(
                "frame {ran} (seed {seed_value:#x}): BPF_PROG_TEST_RUN failed: {e:#}\ninput:\n{}",
                hex(&input)
            ),
        };
        ran += 1;
        *stats
            .verdicts
            .entry(format!("{:?}", out.verdict))
            .or_default() += 1;
        let problem: Option<(String, String)> = match (out.verdict, &expect) {
            (Verdict::Pass, _) if out.data != input => {
                Some(("XDP_PASS changed the frame".into(), hex(&out.data)))
            }
            (Verdict::Pass, Expect::Forward { .. }) => Some((
                format!("well-formed frame to a service passed ({})", expect.kind()),
                String::new(),
            )),
            (Verdict::Pass, _) => None,
            (Verdict::Drop, Expect::Pass(why)) => Some((
                format!("dropped a frame it must pass: {why}"),
                String::new(),
            )),
            (
                Verdict::Drop,
                Expect::Forward {
                    service, ip_len, ..
                },
            ) => {
                if ip_len + model.services[*service].outer_len > model.mtu {
                    stats.too_big += 1;
                    None
                } else {
                    Some((
                        format!(
                            "dropped a well-formed frame to a service ({})",
                            expect.kind()
                        ),
                        String::new(),
                    ))
                }
            }
            (Verdict::Drop, Expect::NotTx(_)) => None,
            (
                Verdict::Tx,
                Expect::Forward {
                    service,
                    l2,
                    ip_len,
                    ..
                },
            ) => {
                stats.tx += 1;
                if out.data.len() >= 12 && out.data[6] & 1 != 0 {
                    stats.non_unicast_src += 1;
                }
                let svc = &model.services[*service];
                if ip_len + svc.outer_len > model.mtu {
                    // Too big: only a path-MTU reply to the client may go out.
                    stats.too_big += 1;
                    check_pmtu_reply(&input, &out.data, *l2)
                        .err()
                        .map(|e| (format!("bad path-MTU reply: {e}"), hex(&out.data)))
                } else {
                    // The kind is the part before the first colon; the
                    // details go with the first frame of that kind.
                    check_tx(&model, &input, &out.data, svc, *l2, *ip_len)
                        .err()
                        .map(|e| {
                            let kind = e.split(':').next().unwrap_or(&e);
                            (
                                format!("bad encapsulation: {kind}"),
                                format!("{e}\n{}", hex(&out.data)),
                            )
                        })
                }
            }
            (Verdict::Tx, Expect::Pass(why) | Expect::NotTx(why)) => Some((
                format!("transmitted a frame it must not: {why}"),
                hex(&out.data),
            )),
            (v, _) => Some((format!("verdict {v:?}"), hex(&out.data))),
        };
        if let Some((kind, output)) = problem {
            let f = failures.entry(kind.clone()).or_insert_with(|| Failure {
                count: 0,
                first: format!(
                    "frame {} (seed {seed_value:#x}), oracle: {expect:?}\ninput ({} bytes):\n{}\noutput:\n{}",
                    ran - 1,
                    input.len(),
                    hex(&input),
                    output
                ),
            });
            f.count += 1;
            if failures.len() >= MAX_FAILURE_KINDS {
                break;
            }
        }
    }
    let elapsed = started.elapsed();
    eprintln!(
        "fuzz: {ran} frames in {:.1}s ({:.0} frames/s), seed {seed_value:#x}",
        elapsed.as_secs_f64(),
        ran as f64 / elapsed.as_secs_f64()
    );
    eprintln!("fuzz: verdicts {:?}", stats.verdicts);
    eprintln!(
        "fuzz: transmitted {} (checked), too big (answered or dropped) {}, transmitted with a non-unicast source MAC {}{}",
        stats.tx,
        stats.too_big,
        stats.non_unicast_src,
        if CHECK_UNICAST_SOURCE_MAC { "" } else { " (not checked)" }
    );
    eprintln!("fuzz: oracle classes {:#?}", stats.classes);
    if !failures.is_empty() {
        let mut msg = format!("{} kind(s) of failure:\n", failures.len());
        for (kind, f) in &failures {
            let _ = writeln!(
                msg,
                "\n=== {kind}: {} frame(s); first: {}",
                f.count, f.first
            );
        }
        panic!("{msg}");
    }
    // The run must have exercised the paths it checks.
    assert!(
        stats.tx > frames / 20,
        "too few frames transmitted: {}",
        stats.tx
    );
    assert!(stats.too_big > 0, "no frame was dropped as too big");
}

// ---------------------------------------------------------------------------
// The oracle's own tests (no BPF): it must tell good from bad.

#[cfg(test)]
mod oracle {
    use super::*;

    fn model() -> Model {
        match Config::parse(FUZZ) {
            Ok(c) => Model::new(&c),
            Err(e) => panic!("fuzz.toml does not parse: {e:?}"),
        }
    }

    const CLIENT: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 7);
    const WEB: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);

    /// A correct IPIP encapsulation of `p` to 192.0.2.11 (a backend of web).
    fn good_output(p: &Packet) -> Vec<u8> {
        let enc = EncapParams {
            next_hop_mac: [2, 0, 0, 0, 0, 0xfe],
            source_mac: [2, 0, 0, 0, 0, 0xaa],
            ttl: 32,
        };
        expect_ipip(
            p,
            enc,
            Ipv4Addr::new(198, 18, 0, 9),
            Ipv4Addr::new(192, 0, 2, 11),
        )
        .bytes
    }

    #[test]
    fn classifies() {
        let m = model();
        let p = tcp4(CLIENT, 40000, WEB, 80);
        let f = p.build();
        assert!(
            matches!(classify(&m, &f), Expect::Forward { l2: 14, ip_len, icmp: false, .. } if ip_len == p.ip_len())
        );
        let mut doff0 = f.clone();
        doff0[14 + 20 + 12] = 0;
        assert_eq!(
            classify(&m, &doff0),
            Expect::NotTx("etherparse: TCP data offset below 5")
        );
        let foreign = tcp4(CLIENT, 40000, Ipv4Addr::new(203, 0, 113, 99), 80).build();
        assert_eq!(classify(&m, &foreign), Expect::Pass("foreign destination"));
        let port = tcp4(CLIENT, 40000, WEB, 81).build();
        assert_eq!(
            classify(&m, &port),
            Expect::Pass("no service for this port and protocol")
        );
        let frag = tcp4(CLIENT, 40000, WEB, 80).v4_fragment(true, 0).build();
        assert_eq!(classify(&m, &frag), Expect::NotTx("IP fragment"));
        let mut udp0 = udp4(CLIENT, 5353, WEB, 53).build();
        udp0[14 + 20 + 4..14 + 20 + 6].copy_from_slice(&[0, 0]);
        assert_eq!(classify(&m, &udp0), Expect::NotTx("UDP length 0"));
    }

    #[test]
    fn check_tx_finds_broken_encapsulations() {
        let m = model();
        let p = tcp4(CLIENT, 40000, WEB, 80);
        let input = p.build();
        let web = &m.services[m.service(IpAddr::V4(WEB), 80, TCP).expect("web")];
        let good = good_output(&p);
        assert_eq!(check_tx(&m, &input, &good, web, 14, p.ip_len()), Ok(()));
        let bad = |edit: &dyn Fn(&mut Vec<u8>)| {
            let mut o = good.clone();
            edit(&mut o);
            check_tx(&m, &input, &o, web, 14, p.ip_len()).expect_err("must be refused")
        };
        assert!(bad(&|o| o[24] ^= 1).contains("checksum"));
        assert!(bad(&|o| {
            o[33] = 99;
            fix_ipv4_checksum(o, 14);
        })
        .contains("backend: sent to"));
        assert!(bad(&|o| {
            let n = o.len() - 1;
            o[n] ^= 0xff;
        })
        .contains("inner packet: differs"));
        assert!(bad(&|o| o.push(0)).contains("total length"));
        assert!(bad(&|o| o[0] = 0).contains("next hop"));
        assert!(bad(&|o| {
            o[23] = 41;
            fix_ipv4_checksum(o, 14);
        })
        .contains("outer protocol"));
        assert!(bad(&|o| {
            o[26] = 10;
            fix_ipv4_checksum(o, 14);
        })
        .contains("outer source"));
    }
}
