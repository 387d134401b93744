//! Shared helpers for the replay and end-to-end tests.
//!
//! Everything here is independent of the program under test: input frames and
//! the frames we expect back are built with `etherparse` from a [`Packet`]
//! description, following `docs/architecture.md`. The only steer code used is
//! `steer_common::hash::flow_hash` (checked against MurmurHash3 reference
//! vectors in steer-common), needed to predict the IPv6 flow label and the
//! outer source inside an encapsulation source range.

use etherparse::{
    EtherType, Ethernet2Header, IcmpEchoHeader, Icmpv4Header, Icmpv4Type, Icmpv6Header, Icmpv6Type,
    IpFragOffset, IpNumber, Ipv4Dscp, Ipv4Ecn, Ipv4Header, Ipv6FlowLabel, Ipv6FragmentHeader,
    Ipv6Header, Ipv6RawExtHeader, SingleVlanHeader, TcpHeader, UdpHeader, VlanId, VlanPcp,
};
use std::fmt::Write as _;
use std::net::{Ipv4Addr, Ipv6Addr};
use steer_common::{FlowKey, FAMILY_V4, FAMILY_V6};

/// True when the tests can load BPF programs. Without root: a skip message
/// outside CI, a panic in CI (`CI=true`), where skipping would hide failures.
pub fn require_root() -> bool {
    if effective_uid() == Some(0) {
        return true;
    }
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("the packet-replay tests load an XDP program and require root; CI must run as root");
    }
    eprintln!("SKIP: the packet-replay tests load an XDP program and need root");
    false
}

fn effective_uid() -> Option<u32> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("Uid:"))?;
    // Uid: real effective saved filesystem
    line.split_whitespace().nth(2)?.parse().ok()
}

/// Source MAC of the frames we feed in (the upstream router).
pub const ROUTER_MAC: [u8; 6] = [0x02, 0x00, 0x00, 0x00, 0x00, 0xaa];
/// Destination MAC of the frames we feed in (the steer host's NIC).
pub const LOCAL_MAC: [u8; 6] = [0x02, 0x00, 0x00, 0x00, 0x00, 0x01];
/// `dataplane.source_mac` of the replay fixtures: the source of every
/// transmitted frame (BPF_PROG_TEST_RUN has no interface MAC to use).
/// Deliberately not `LOCAL_MAC`, so a test tells the two apart.
pub const SOURCE_MAC: [u8; 6] = [0x02, 0x00, 0x00, 0x00, 0x00, 0x5e];

pub const TPID_8021Q: u16 = 0x8100;
pub const TPID_8021AD: u16 = 0x88a8;
pub const ETH_IPV4: u16 = 0x0800;
pub const ETH_IPV6: u16 = 0x86dd;
pub const ETH_ARP: u16 = 0x0806;

/// IPv6 extension header numbers.
pub const EXT_HOP_BY_HOP: u8 = 0;
pub const EXT_ROUTING: u8 = 43;
pub const EXT_FRAGMENT: u8 = 44;
pub const EXT_DEST_OPTS: u8 = 60;

/// One VLAN tag: the TPID that announces it and its TCI fields.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Vlan {
    pub tpid: u16,
    pub pcp: u8,
    pub dei: bool,
    pub vid: u16,
}

impl Vlan {
    pub fn dot1q(vid: u16) -> Vlan {
        Vlan {
            tpid: TPID_8021Q,
            pcp: 3,
            dei: false,
            vid,
        }
    }
    pub fn dot1ad(vid: u16) -> Vlan {
        Vlan {
            tpid: TPID_8021AD,
            pcp: 5,
            dei: true,
            vid,
        }
    }
}

/// An IPv6 extension header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ext {
    /// Hop-by-hop (0), routing (43), destination options (60) or any other
    /// header in the generic format; `body` excludes the next-header and
    /// length bytes, so its length is 6 + 8n.
    Raw { kind: u8, body: Vec<u8> },
    /// Fragment header (44); `offset` in 8-byte units.
    Fragment { offset: u16, more: bool, ident: u32 },
}

impl Ext {
    pub fn hop_by_hop() -> Ext {
        // Router alert option (type 5, len 2, value 0) + PadN(0) to 6 bytes.
        Ext::Raw {
            kind: EXT_HOP_BY_HOP,
            body: vec![0x05, 0x02, 0x00, 0x00, 0x01, 0x00],
        }
    }
    pub fn dest_opts() -> Ext {
        // PadN with 12 bytes of padding: two 8-byte units.
        let mut body = vec![0x01, 12];
        body.extend_from_slice(&[0u8; 12]);
        Ext::Raw {
            kind: EXT_DEST_OPTS,
            body,
        }
    }
    /// A segment routing header with no segments left (the packet is at
    /// its final destination), one segment.
    pub fn routing() -> Ext {
        let mut body = vec![4, 0, 0, 0, 0, 0];
        body.extend_from_slice(&[
            0x20, 0x01, 0x0d, 0xb8, 0, 0x0a, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10,
        ]);
        Ext::Raw {
            kind: EXT_ROUTING,
            body,
        }
    }
    pub fn kind(&self) -> u8 {
        match self {
            Ext::Raw { kind, .. } => *kind,
            Ext::Fragment { .. } => EXT_FRAGMENT,
        }
    }
    fn to_bytes(&self, next: u8) -> Vec<u8> {
        match self {
            Ext::Raw { body, .. } => Ipv6RawExtHeader::new_raw(IpNumber(next), body)
                .expect("extension body must be 6 + 8n bytes")
                .to_bytes()
                .to_vec(),
            Ext::Fragment {
                offset,
                more,
                ident,
            } => Ipv6FragmentHeader::new(
                IpNumber(next),
                IpFragOffset::try_new(*offset).expect("fragment offset"),
                *more,
                *ident,
            )
            .to_bytes()
            .to_vec(),
        }
    }
}

/// The network layer of a [`Packet`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Net {
    V4 {
        src: [u8; 4],
        dst: [u8; 4],
        /// The whole TOS byte (DSCP << 2 | ECN).
        tos: u8,
        ttl: u8,
        options: Vec<u8>,
        ident: u16,
        df: bool,
        mf: bool,
        /// In 8-byte units.
        frag_offset: u16,
    },
    V6 {
        src: [u8; 16],
        dst: [u8; 16],
        tc: u8,
        flow_label: u32,
        hop_limit: u8,
        exts: Vec<Ext>,
    },
}

/// The layer after IP.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Transport {
    Tcp {
        sport: u16,
        dport: u16,
        seq: u32,
    },
    Udp {
        sport: u16,
        dport: u16,
    },
    Icmp4(Icmpv4Type),
    Icmp6(Icmpv6Type),
    /// Any other protocol: just the payload.
    Raw(u8),
}

impl Transport {
    pub fn proto(&self) -> u8 {
        match self {
            Transport::Tcp { .. } => 6,
            Transport::Udp { .. } => 17,
            Transport::Icmp4(_) => 1,
            Transport::Icmp6(_) => 58,
            Transport::Raw(p) => *p,
        }
    }
}

/// A frame description: Ethernet, VLAN tags, IP, transport, payload, and
/// bytes after the IP packet (e.g. Ethernet padding).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Packet {
    pub src_mac: [u8; 6],
    pub dst_mac: [u8; 6],
    pub vlans: Vec<Vlan>,
    pub net: Net,
    pub transport: Transport,
    pub payload: Vec<u8>,
    pub trailer: Vec<u8>,
    /// TCP only: a SYN (SYN set, ACK and PSH clear, acknowledgment 0)
    /// instead of the default segment of an established connection
    /// (ACK + PSH).
    pub tcp_syn: bool,
}

fn v4_net(src: Ipv4Addr, dst: Ipv4Addr) -> Net {
    Net::V4 {
        src: src.octets(),
        dst: dst.octets(),
        tos: 0,
        ttl: 61,
        options: Vec::new(),
        ident: 0x1234,
        df: true,
        mf: false,
        frag_offset: 0,
    }
}

fn v6_net(src: Ipv6Addr, dst: Ipv6Addr) -> Net {
    Net::V6 {
        src: src.octets(),
        dst: dst.octets(),
        tc: 0,
        flow_label: 0x1_2345,
        hop_limit: 61,
        exts: Vec::new(),
    }
}

/// A recognisable payload of `len` bytes.
pub fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i as u8).wrapping_mul(7) ^ 0x5a).collect()
}

fn packet(net: Net, transport: Transport) -> Packet {
    Packet {
        src_mac: ROUTER_MAC,
        dst_mac: LOCAL_MAC,
        vlans: Vec::new(),
        net,
        transport,
        payload: pattern(32),
        trailer: Vec::new(),
        tcp_syn: false,
    }
}

pub fn tcp4(src: Ipv4Addr, sport: u16, dst: Ipv4Addr, dport: u16) -> Packet {
    packet(
        v4_net(src, dst),
        Transport::Tcp {
            sport,
            dport,
            seq: 0x0102_0304,
        },
    )
}

pub fn udp4(src: Ipv4Addr, sport: u16, dst: Ipv4Addr, dport: u16) -> Packet {
    packet(v4_net(src, dst), Transport::Udp { sport, dport })
}

pub fn tcp6(src: Ipv6Addr, sport: u16, dst: Ipv6Addr, dport: u16) -> Packet {
    packet(
        v6_net(src, dst),
        Transport::Tcp {
            sport,
            dport,
            seq: 0x0a0b_0c0d,
        },
    )
}

pub fn udp6(src: Ipv6Addr, sport: u16, dst: Ipv6Addr, dport: u16) -> Packet {
    packet(v6_net(src, dst), Transport::Udp { sport, dport })
}

/// An ICMPv4 message; `payload` follows the 8-byte ICMP header.
pub fn icmp4(src: Ipv4Addr, dst: Ipv4Addr, ty: Icmpv4Type, payload: Vec<u8>) -> Packet {
    packet(v4_net(src, dst), Transport::Icmp4(ty)).payload(payload)
}

/// An ICMPv6 message; `payload` follows the 8-byte ICMPv6 header.
pub fn icmp6(src: Ipv6Addr, dst: Ipv6Addr, ty: Icmpv6Type, payload: Vec<u8>) -> Packet {
    packet(v6_net(src, dst), Transport::Icmp6(ty)).payload(payload)
}

pub fn echo4(src: Ipv4Addr, dst: Ipv4Addr) -> Packet {
    icmp4(
        src,
        dst,
        Icmpv4Type::EchoRequest(IcmpEchoHeader { id: 0x77, seq: 1 }),
        pattern(56),
    )
}

pub fn echo6(src: Ipv6Addr, dst: Ipv6Addr) -> Packet {
    icmp6(
        src,
        dst,
        Icmpv6Type::EchoRequest(IcmpEchoHeader { id: 0x77, seq: 1 }),
        pattern(56),
    )
}

/// ICMPv4 destination unreachable, fragmentation needed (type 3 code 4).
pub fn frag_needed4(src: Ipv4Addr, dst: Ipv4Addr, mtu: u16, quoted: Vec<u8>) -> Packet {
    icmp4(
        src,
        dst,
        Icmpv4Type::DestinationUnreachable(
            etherparse::icmpv4::DestUnreachableHeader::FragmentationNeeded { next_hop_mtu: mtu },
        ),
        quoted,
    )
}

/// ICMPv6 packet too big (type 2).
pub fn packet_too_big6(src: Ipv6Addr, dst: Ipv6Addr, mtu: u32, quoted: Vec<u8>) -> Packet {
    icmp6(src, dst, Icmpv6Type::PacketTooBig { mtu }, quoted)
}

/// An ARP request (who-has `target` tell `sender`), broadcast.
pub fn arp_request(sender: Ipv4Addr, target: Ipv4Addr) -> Vec<u8> {
    let eth = Ethernet2Header {
        source: ROUTER_MAC,
        destination: [0xff; 6],
        ether_type: EtherType(ETH_ARP),
    };
    let mut f = eth.to_bytes().to_vec();
    f.extend_from_slice(&[0x00, 0x01, 0x08, 0x00, 6, 4, 0x00, 0x01]);
    f.extend_from_slice(&ROUTER_MAC);
    f.extend_from_slice(&sender.octets());
    f.extend_from_slice(&[0; 6]);
    f.extend_from_slice(&target.octets());
    f.resize(60, 0);
    f
}

impl Packet {
    /// Sets the destination MAC (default `LOCAL_MAC`).
    pub fn dst_mac(mut self, mac: [u8; 6]) -> Self {
        self.dst_mac = mac;
        self
    }

    pub fn vlan(mut self, v: Vlan) -> Self {
        self.vlans.push(v);
        self
    }
    pub fn payload(mut self, p: Vec<u8>) -> Self {
        self.payload = p;
        self
    }
    pub fn payload_len(self, n: usize) -> Self {
        self.payload(pattern(n))
    }
    /// A TCP SYN (see [`Packet::tcp_syn`]).
    pub fn syn(mut self) -> Self {
        self.tcp_syn = true;
        self
    }
    pub fn trailer(mut self, t: Vec<u8>) -> Self {
        self.trailer = t;
        self
    }
    /// TOS (IPv4) or traffic class (IPv6).
    pub fn tos(mut self, v: u8) -> Self {
        match &mut self.net {
            Net::V4 { tos, .. } => *tos = v,
            Net::V6 { tc, .. } => *tc = v,
        }
        self
    }
    pub fn v4_options(mut self, o: Vec<u8>) -> Self {
        match &mut self.net {
            Net::V4 { options, .. } => *options = o,
            Net::V6 { .. } => panic!("IPv4 options on an IPv6 packet"),
        }
        self
    }
    /// IPv4 fragmentation fields (`offset` in 8-byte units).
    pub fn v4_fragment(mut self, more: bool, offset: u16) -> Self {
        match &mut self.net {
            Net::V4 {
                df,
                mf,
                frag_offset,
                ..
            } => {
                *df = false;
                *mf = more;
                *frag_offset = offset;
            }
            Net::V6 { .. } => panic!("IPv4 fragment on an IPv6 packet"),
        }
        self
    }
    pub fn ext(mut self, e: Ext) -> Self {
        match &mut self.net {
            Net::V6 { exts, .. } => exts.push(e),
            Net::V4 { .. } => panic!("IPv6 extension on an IPv4 packet"),
        }
        self
    }

    pub fn is_v6(&self) -> bool {
        matches!(self.net, Net::V6 { .. })
    }

    /// Length of the Ethernet header and VLAN tags.
    pub fn l2_len(&self) -> usize {
        14 + 4 * self.vlans.len()
    }

    /// TOS or traffic class.
    pub fn tos_value(&self) -> u8 {
        match &self.net {
            Net::V4 { tos, .. } => *tos,
            Net::V6 { tc, .. } => *tc,
        }
    }

    fn l4_bytes(&self) -> Vec<u8> {
        let (src, dst): (Vec<u8>, Vec<u8>) = match &self.net {
            Net::V4 { src, dst, .. } => (src.to_vec(), dst.to_vec()),
            Net::V6 { src, dst, .. } => (src.to_vec(), dst.to_vec()),
        };
        let v6 = self.is_v6();
        let p = &self.payload;
        let mut out = Vec::new();
        match &self.transport {
            Transport::Tcp { sport, dport, seq } => {
                let mut t = TcpHeader::new(*sport, *dport, *seq, 64240);
                if self.tcp_syn {
                    t.syn = true;
                } else {
                    t.ack = true;
                    t.psh = true;
                    t.acknowledgment_number = 0x1111_2222;
                }
                t.checksum = if v6 {
                    t.calc_checksum_ipv6_raw(to16(&src), to16(&dst), p)
                } else {
                    t.calc_checksum_ipv4_raw(to4(&src), to4(&dst), p)
                }
                .expect("tcp checksum");
                out.extend_from_slice(&t.to_bytes());
            }
            Transport::Udp { sport, dport } => {
                let mut u = UdpHeader {
                    source_port: *sport,
                    destination_port: *dport,
                    length: (8 + p.len()) as u16,
                    checksum: 0,
                };
                u.checksum = if v6 {
                    u.calc_checksum_ipv6_raw(to16(&src), to16(&dst), p)
                } else {
                    u.calc_checksum_ipv4_raw(to4(&src), to4(&dst), p)
                }
                .expect("udp checksum");
                out.extend_from_slice(&u.to_bytes());
            }
            Transport::Icmp4(ty) => {
                out.extend_from_slice(&Icmpv4Header::with_checksum(ty.clone(), p).to_bytes());
            }
            Transport::Icmp6(ty) => {
                let h = Icmpv6Header::with_checksum(*ty, to16(&src), to16(&dst), p)
                    .expect("icmpv6 checksum");
                out.extend_from_slice(&h.to_bytes());
            }
            Transport::Raw(_) => {}
        }
        out.extend_from_slice(p);
        out
    }

    /// The IP packet: IP header (with options or extension headers),
    /// transport header and payload, without the trailer.
    pub fn ip_packet(&self) -> Vec<u8> {
        let l4 = self.l4_bytes();
        let proto = self.transport.proto();
        match &self.net {
            Net::V4 {
                src,
                dst,
                tos,
                ttl,
                options,
                ident,
                df,
                mf,
                frag_offset,
            } => {
                let mut h = Ipv4Header::new(l4.len() as u16, *ttl, IpNumber(proto), *src, *dst)
                    .expect("ipv4 header");
                h.dscp = Ipv4Dscp::try_new(tos >> 2).expect("dscp");
                h.ecn = Ipv4Ecn::try_new(tos & 3).expect("ecn");
                h.identification = *ident;
                h.dont_fragment = *df;
                h.more_fragments = *mf;
                h.fragment_offset = IpFragOffset::try_new(*frag_offset).expect("frag offset");
                h.options = etherparse::Ipv4Options::try_from(options.as_slice())
                    .expect("ipv4 options: at most 40 bytes, 4n");
                h.set_payload_len(l4.len()).expect("ipv4 payload len");
                h.header_checksum = h.calc_header_checksum();
                let mut out = h.to_bytes().to_vec();
                out.extend_from_slice(&l4);
                out
            }
            Net::V6 {
                src,
                dst,
                tc,
                flow_label,
                hop_limit,
                exts,
            } => {
                let mut ext_bytes = Vec::new();
                for (i, e) in exts.iter().enumerate() {
                    let next = exts.get(i + 1).map(Ext::kind).unwrap_or(proto);
                    ext_bytes.extend_from_slice(&e.to_bytes(next));
                }
                let first = exts.first().map(Ext::kind).unwrap_or(proto);
                let h = Ipv6Header {
                    traffic_class: *tc,
                    flow_label: Ipv6FlowLabel::try_new(*flow_label).expect("flow label"),
                    payload_length: (ext_bytes.len() + l4.len()) as u16,
                    next_header: IpNumber(first),
                    hop_limit: *hop_limit,
                    source: *src,
                    destination: *dst,
                };
                let mut out = h.to_bytes().to_vec();
                out.extend_from_slice(&ext_bytes);
                out.extend_from_slice(&l4);
                out
            }
        }
    }

    /// Length of the IP packet (what the IP header's length fields claim).
    pub fn ip_len(&self) -> usize {
        self.ip_packet().len()
    }

    /// Length of the IP header including IPv4 options or IPv6 extension
    /// headers.
    pub fn ip_header_len(&self) -> usize {
        match &self.net {
            Net::V4 { options, .. } => 20 + options.len(),
            Net::V6 { exts, .. } => {
                40 + exts
                    .iter()
                    .map(|e| match e {
                        Ext::Raw { body, .. } => body.len() + 2,
                        Ext::Fragment { .. } => 8,
                    })
                    .sum::<usize>()
            }
        }
    }

    /// Ethernet header and VLAN tags, with `last_type` as the final
    /// ethertype.
    fn l2_bytes(&self, dst: [u8; 6], src: [u8; 6], last_type: u16) -> Vec<u8> {
        let first = self.vlans.first().map(|v| v.tpid).unwrap_or(last_type);
        let mut out = Ethernet2Header {
            source: src,
            destination: dst,
            ether_type: EtherType(first),
        }
        .to_bytes()
        .to_vec();
        for (i, v) in self.vlans.iter().enumerate() {
            let next = self.vlans.get(i + 1).map(|n| n.tpid).unwrap_or(last_type);
            let tag = SingleVlanHeader {
                pcp: VlanPcp::try_new(v.pcp).expect("pcp"),
                drop_eligible_indicator: v.dei,
                vlan_id: VlanId::try_new(v.vid).expect("vid"),
                ether_type: EtherType(next),
            };
            out.extend_from_slice(&tag.to_bytes());
        }
        out
    }

    fn ethertype(&self) -> u16 {
        if self.is_v6() {
            ETH_IPV6
        } else {
            ETH_IPV4
        }
    }

    /// The complete frame.
    pub fn build(&self) -> Vec<u8> {
        let mut f = self.l2_bytes(self.dst_mac, self.src_mac, self.ethertype());
        f.extend_from_slice(&self.ip_packet());
        f.extend_from_slice(&self.trailer);
        f
    }

    /// The flow key the program should derive: the 5-tuple (ports zero for
    /// protocols without ports).
    pub fn flow_key(&self) -> FlowKey {
        let (sport, dport) = match &self.transport {
            Transport::Tcp { sport, dport, .. } | Transport::Udp { sport, dport } => {
                (*sport, *dport)
            }
            _ => (0, 0),
        };
        let mut k = FlowKey {
            sport: steer_common::port_to_wire(sport),
            dport: steer_common::port_to_wire(dport),
            proto: self.transport.proto(),
            ..Default::default()
        };
        match &self.net {
            Net::V4 { src, dst, .. } => {
                k.src[..4].copy_from_slice(src);
                k.dst[..4].copy_from_slice(dst);
                k.family = FAMILY_V4;
            }
            Net::V6 { src, dst, .. } => {
                k.src = *src;
                k.dst = *dst;
                k.family = FAMILY_V6;
            }
        }
        k
    }

    /// The client-affinity key: `(src, vip, 0, vip_port, proto)`.
    pub fn affinity_key(&self, vip_port: u16) -> FlowKey {
        let mut k = self.flow_key();
        k.sport = 0;
        k.dport = steer_common::port_to_wire(vip_port);
        k
    }
}

fn to4(b: &[u8]) -> [u8; 4] {
    b.try_into().expect("4 bytes")
}

fn to16(b: &[u8]) -> [u8; 16] {
    b.try_into().expect("16 bytes")
}

/// RFC 1071 internet checksum of `data` (for patching hand-edited headers).
pub fn internet_checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    for c in data.chunks(2) {
        let w = if c.len() == 2 {
            u16::from_be_bytes([c[0], c[1]])
        } else {
            u16::from_be_bytes([c[0], 0])
        };
        sum += u32::from(w);
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Rewrites the IPv4 header checksum of the header at `ip_off`, using the
/// header length its IHL claims, limited to the frame.
pub fn fix_ipv4_checksum(frame: &mut [u8], ip_off: usize) {
    let ihl = usize::from(frame[ip_off] & 0x0f) * 4;
    let end = (ip_off + ihl).min(frame.len());
    frame[ip_off + 10] = 0;
    frame[ip_off + 11] = 0;
    let c = internet_checksum(&frame[ip_off..end]);
    frame[ip_off + 10..ip_off + 12].copy_from_slice(&c.to_be_bytes());
}

/// Sets an IPv4 total length and fixes the header checksum.
pub fn set_ipv4_total_len(frame: &mut [u8], ip_off: usize, len: u16) {
    frame[ip_off + 2..ip_off + 4].copy_from_slice(&len.to_be_bytes());
    fix_ipv4_checksum(frame, ip_off);
}

/// Sets an IPv6 payload length.
pub fn set_ipv6_payload_len(frame: &mut [u8], ip_off: usize, len: u16) {
    frame[ip_off + 4..ip_off + 6].copy_from_slice(&len.to_be_bytes());
}

/// Cuts `frame` so that `keep` bytes of the IP packet remain, and makes the
/// IP length field agree with what is left (so the only defect is the cut).
pub fn cut_ip(p: &Packet, keep: usize) -> Vec<u8> {
    let l2 = p.l2_len();
    let mut f = p.build();
    f.truncate(l2 + keep);
    if p.is_v6() {
        if keep >= 6 {
            set_ipv6_payload_len(&mut f, l2, keep.saturating_sub(40) as u16);
        }
    } else if keep >= 12 {
        set_ipv4_total_len(&mut f, l2, keep as u16);
    }
    f
}

/// The frame we expect back, with named sections for diagnostics.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Expected {
    pub bytes: Vec<u8>,
    /// (start offset, name), ascending.
    pub sections: Vec<(usize, String)>,
}

impl Expected {
    /// An unchanged frame.
    pub fn unchanged(frame: &[u8]) -> Expected {
        Expected {
            bytes: frame.to_vec(),
            sections: vec![(0, "frame (expected unchanged)".into())],
        }
    }

    fn section_of(&self, off: usize) -> &str {
        self.sections
            .iter()
            .rev()
            .find(|(s, _)| *s <= off)
            .map(|(_, n)| n.as_str())
            .unwrap_or("?")
    }
}

/// Encapsulation parameters from the config.
#[derive(Clone, Copy, Debug)]
pub struct EncapParams {
    pub next_hop_mac: [u8; 6],
    /// The source MAC of transmitted frames (never the input's
    /// destination MAC, which may be broadcast or multicast).
    pub source_mac: [u8; 6],
    pub ttl: u8,
}

fn l2_sections(p: &Packet) -> Vec<(usize, String)> {
    let mut s = vec![(0, "ethernet dst".to_string()), (6, "ethernet src".into())];
    s.push((12, "ethertype/tpid".into()));
    for i in 0..p.vlans.len() {
        s.push((14 + 4 * i, format!("vlan tag {i} TCI + next type")));
    }
    s
}

/// IPv4-in-IPv4: what `input` should become when sent to `backend` with
/// outer source `outer_src`.
pub fn expect_ipip(
    input: &Packet,
    enc: EncapParams,
    outer_src: Ipv4Addr,
    backend: Ipv4Addr,
) -> Expected {
    assert!(
        !input.is_v6(),
        "IPv6 inside IPv4 is not a valid encapsulation"
    );
    let frame = input.build();
    let l2 = input.l2_len();
    // The IP packet only: bytes after it (Ethernet padding, a trailer) are
    // not sent on (docs/architecture.md, step 8).
    let inner = &frame[l2..l2 + input.ip_len()];
    let inner_len = input.ip_len();
    let mut bytes = input.l2_bytes(enc.next_hop_mac, enc.source_mac, ETH_IPV4);
    let mut h = Ipv4Header::new(
        inner_len as u16,
        enc.ttl,
        IpNumber(steer_common::PROTO_IPIP),
        outer_src.octets(),
        backend.octets(),
    )
    .expect("outer header");
    let tos = input.tos_value();
    h.dscp = Ipv4Dscp::try_new(tos >> 2).expect("dscp");
    h.ecn = Ipv4Ecn::try_new(tos & 3).expect("ecn");
    h.identification = 0;
    h.dont_fragment = true;
    h.header_checksum = h.calc_header_checksum();
    let mut sections = l2_sections(input);
    sections.push((l2, "outer IPv4 ver/ihl/tos/len".into()));
    sections.push((l2 + 4, "outer IPv4 id/flags/frag".into()));
    sections.push((l2 + 8, "outer IPv4 ttl/proto/checksum".into()));
    sections.push((l2 + 12, "outer IPv4 source".into()));
    sections.push((l2 + 16, "outer IPv4 destination".into()));
    sections.push((l2 + 20, "inner packet".into()));
    bytes.extend_from_slice(&h.to_bytes());
    bytes.extend_from_slice(inner);
    Expected { bytes, sections }
}

/// IPv6 outer header (6in6 or 4in6).
pub fn expect_ip6_encap(
    input: &Packet,
    enc: EncapParams,
    outer_src: Ipv6Addr,
    backend: Ipv6Addr,
    flow_label: u32,
) -> Expected {
    let frame = input.build();
    let l2 = input.l2_len();
    // The IP packet only: bytes after it (Ethernet padding, a trailer) are
    // not sent on (docs/architecture.md, step 8).
    let inner = &frame[l2..l2 + input.ip_len()];
    let inner_len = input.ip_len();
    let mut bytes = input.l2_bytes(enc.next_hop_mac, enc.source_mac, ETH_IPV6);
    let next = if input.is_v6() {
        steer_common::PROTO_IPV6
    } else {
        steer_common::PROTO_IPIP
    };
    let h = Ipv6Header {
        traffic_class: input.tos_value(),
        flow_label: Ipv6FlowLabel::try_new(flow_label & 0xf_ffff).expect("flow label"),
        payload_length: inner_len as u16,
        next_header: IpNumber(next),
        hop_limit: enc.ttl,
        source: outer_src.octets(),
        destination: backend.octets(),
    };
    let mut sections = l2_sections(input);
    sections.push((l2, "outer IPv6 ver/tc/flow label".into()));
    sections.push((l2 + 4, "outer IPv6 payload len/next/hop limit".into()));
    sections.push((l2 + 8, "outer IPv6 source".into()));
    sections.push((l2 + 24, "outer IPv6 destination".into()));
    sections.push((l2 + 40, "inner packet".into()));
    bytes.extend_from_slice(&h.to_bytes());
    bytes.extend_from_slice(inner);
    Expected { bytes, sections }
}

/// Host mask of an IPv4 prefix length.
pub fn host_mask_v4(prefix: u8) -> u32 {
    if prefix >= 32 {
        0
    } else {
        u32::MAX >> prefix
    }
}

/// Outer IPv4 source: `base | (hash & host_mask)`.
pub fn outer_src_v4(base: Ipv4Addr, prefix: u8, hash: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(base) | (hash & host_mask_v4(prefix)))
}

/// Host mask applied to the last 32 bits of an IPv6 source range.
pub fn host_mask_v6(prefix: u8) -> u32 {
    match prefix {
        128.. => 0,
        0..=96 => u32::MAX,
        p => u32::MAX >> (p - 96),
    }
}

/// Outer IPv6 source: the last four bytes get `hash & host_mask` OR-ed in.
pub fn outer_src_v6(base: Ipv6Addr, prefix: u8, hash: u32) -> Ipv6Addr {
    let mut o = base.octets();
    let last = u32::from_be_bytes([o[12], o[13], o[14], o[15]]) | (hash & host_mask_v6(prefix));
    o[12..].copy_from_slice(&last.to_be_bytes());
    Ipv6Addr::from(o)
}

/// The outer header of an encapsulated frame, parsed by hand.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outer {
    V4 {
        src: Ipv4Addr,
        dst: Ipv4Addr,
    },
    V6 {
        src: Ipv6Addr,
        dst: Ipv6Addr,
        flow_label: u32,
    },
}

impl Outer {
    pub fn dst(&self) -> std::net::IpAddr {
        match self {
            Outer::V4 { dst, .. } => (*dst).into(),
            Outer::V6 { dst, .. } => (*dst).into(),
        }
    }
    pub fn src(&self) -> std::net::IpAddr {
        match self {
            Outer::V4 { src, .. } => (*src).into(),
            Outer::V6 { src, .. } => (*src).into(),
        }
    }
}

/// Skips Ethernet and VLAN tags and reads the outer IP addresses.
pub fn parse_outer(frame: &[u8]) -> Option<Outer> {
    let mut off = 12;
    let mut ty = u16::from_be_bytes([*frame.get(off)?, *frame.get(off + 1)?]);
    off += 2;
    while ty == TPID_8021Q || ty == TPID_8021AD {
        ty = u16::from_be_bytes([*frame.get(off + 2)?, *frame.get(off + 3)?]);
        off += 4;
    }
    match ty {
        ETH_IPV4 => {
            let h = frame.get(off..off + 20)?;
            Some(Outer::V4 {
                src: Ipv4Addr::new(h[12], h[13], h[14], h[15]),
                dst: Ipv4Addr::new(h[16], h[17], h[18], h[19]),
            })
        }
        ETH_IPV6 => {
            let h = frame.get(off..off + 40)?;
            Some(Outer::V6 {
                src: Ipv6Addr::from(to16(&h[8..24])),
                dst: Ipv6Addr::from(to16(&h[24..40])),
                flow_label: u32::from_be_bytes([0, h[1] & 0x0f, h[2], h[3]]),
            })
        }
        _ => None,
    }
}

/// Hex dump of `b`, 16 bytes a line, with a `^^` under each byte that
/// differs from `other`.
fn hexdump(b: &[u8], other: &[u8]) -> String {
    let mut s = String::new();
    for (line, chunk) in b.chunks(16).enumerate() {
        let base = line * 16;
        let _ = write!(s, "  {base:04x}: ");
        let mut marks = String::new();
        let mut any = false;
        for (i, x) in chunk.iter().enumerate() {
            let _ = write!(s, "{x:02x} ");
            if other.get(base + i) != Some(x) {
                marks.push_str("^^ ");
                any = true;
            } else {
                marks.push_str("   ");
            }
        }
        s.push('\n');
        if any {
            let _ = writeln!(s, "        {}", marks.trim_end());
        }
    }
    s
}

/// Describes how `got` differs from `want`, or `None` if they are equal.
pub fn frame_diff(got: &[u8], want: &Expected) -> Option<String> {
    if got == want.bytes.as_slice() {
        return None;
    }
    let w = &want.bytes;
    let first = got
        .iter()
        .zip(w.iter())
        .position(|(a, b)| a != b)
        .unwrap_or(got.len().min(w.len()));
    let mut s = String::new();
    let _ = writeln!(
        s,
        "frames differ: got {} bytes, expected {}; first difference at offset {first} (0x{first:x}) in [{}]: got {}, expected {}",
        got.len(),
        w.len(),
        want.section_of(first),
        got.get(first).map(|b| format!("{b:02x}")).unwrap_or("<end>".into()),
        w.get(first).map(|b| format!("{b:02x}")).unwrap_or("<end>".into()),
    );
    let diffs: Vec<usize> = (0..got.len().max(w.len()))
        .filter(|&i| got.get(i) != w.get(i))
        .collect();
    let _ = writeln!(s, "{} differing byte(s)", diffs.len());
    let _ = writeln!(s, "got:\n{}", hexdump(got, w));
    let _ = writeln!(s, "expected:\n{}", hexdump(w, got));
    Some(s)
}

/// Panics with a hex diff unless `got` is exactly `want`.
#[track_caller]
pub fn assert_frame_eq(what: &str, got: &[u8], want: &Expected) {
    if let Some(d) = frame_diff(got, want) {
        panic!("{what}: {d}");
    }
}

/// The path-MTU reply the program should send for the too-big `input`
/// (docs/architecture.md, "Path-MTU replies"), built from the RFCs with
/// etherparse, its checksums etherparse's: back to the input's source MAC
/// from `enc.source_mac`, VLAN tags kept; from the input's destination to
/// its source, TTL / hop limit `enc.ttl`. IPv4: ICMP type 3 code 4 with
/// next-hop MTU `mtu`, IPv4 DF clear, identification the input's, TOS 0,
/// quoting as much of the input as keeps the reply within 576 bytes
/// (RFC 1812 4.3.2.3). IPv6: ICMPv6 packet too big with `mtu`, traffic
/// class and flow label 0, quoting as much as fits in 1280 bytes
/// (RFC 4443 2.4 c).
pub fn expect_pmtu_reply(input: &Packet, enc: EncapParams, mtu: u32) -> Expected {
    let ip = input.ip_packet();
    let mut sections = l2_sections(input);
    let l2 = input.l2_len();
    let mut bytes;
    match &input.net {
        Net::V4 {
            src, dst, ident, ..
        } => {
            let quote = &ip[..ip.len().min(576 - 20 - 8)];
            bytes = input.l2_bytes(input.src_mac, enc.source_mac, ETH_IPV4);
            let icmp = Icmpv4Header::with_checksum(
                Icmpv4Type::DestinationUnreachable(
                    etherparse::icmpv4::DestUnreachableHeader::FragmentationNeeded {
                        next_hop_mtu: u16::try_from(mtu).expect("an IPv4 MTU fits 16 bits"),
                    },
                ),
                quote,
            );
            let mut h = Ipv4Header::new((8 + quote.len()) as u16, enc.ttl, IpNumber(1), *dst, *src)
                .expect("reply header");
            h.identification = *ident;
            h.dont_fragment = false;
            h.header_checksum = h.calc_header_checksum();
            sections.push((l2, "reply IPv4 ver/ihl/tos/len".into()));
            sections.push((l2 + 4, "reply IPv4 id/flags/frag".into()));
            sections.push((l2 + 8, "reply IPv4 ttl/proto/checksum".into()));
            sections.push((l2 + 12, "reply IPv4 source".into()));
            sections.push((l2 + 16, "reply IPv4 destination".into()));
            sections.push((l2 + 20, "ICMP type/code/checksum".into()));
            sections.push((l2 + 24, "ICMP unused/next-hop MTU".into()));
            sections.push((l2 + 28, "quote".into()));
            bytes.extend_from_slice(&h.to_bytes());
            bytes.extend_from_slice(&icmp.to_bytes());
            bytes.extend_from_slice(quote);
        }
        Net::V6 { src, dst, .. } => {
            let quote = &ip[..ip.len().min(1280 - 40 - 8)];
            bytes = input.l2_bytes(input.src_mac, enc.source_mac, ETH_IPV6);
            let icmp =
                Icmpv6Header::with_checksum(Icmpv6Type::PacketTooBig { mtu }, *dst, *src, quote)
                    .expect("icmpv6 checksum");
            let h = Ipv6Header {
                traffic_class: 0,
                flow_label: Ipv6FlowLabel::ZERO,
                payload_length: (8 + quote.len()) as u16,
                next_header: IpNumber(58),
                hop_limit: enc.ttl,
                source: *dst,
                destination: *src,
            };
            sections.push((l2, "reply IPv6 ver/tc/flow label".into()));
            sections.push((l2 + 4, "reply IPv6 payload len/next/hop limit".into()));
            sections.push((l2 + 8, "reply IPv6 source".into()));
            sections.push((l2 + 24, "reply IPv6 destination".into()));
            sections.push((l2 + 40, "ICMPv6 type/code/checksum".into()));
            sections.push((l2 + 44, "ICMPv6 MTU".into()));
            sections.push((l2 + 48, "quote".into()));
            bytes.extend_from_slice(&h.to_bytes());
            bytes.extend_from_slice(&icmp.to_bytes());
            bytes.extend_from_slice(quote);
        }
    }
    Expected { bytes, sections }
}

#[cfg(test)]
mod tests {
    use super::*;
    use etherparse::{NetSlice, SlicedPacket, TransportSlice};

    const C4: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 7);
    const V4: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);
    const C6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0xc, 0, 0, 0, 0, 7);
    const V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0xa, 0, 0, 0, 0, 0x10);
    const ENC: EncapParams = EncapParams {
        next_hop_mac: [2, 0, 0, 0, 0, 0xfe],
        source_mac: [2, 0, 0, 0, 0, 0x5e],
        ttl: 64,
    };

    #[test]
    fn tcp4_frame_parses_back() {
        let p = tcp4(C4, 40000, V4, 80).tos(0xb9).payload_len(10);
        let f = p.build();
        assert_eq!(f.len(), 14 + 20 + 20 + 10);
        let s = SlicedPacket::from_ethernet(&f).unwrap();
        let Some(NetSlice::Ipv4(ip)) = s.net else {
            panic!("not ipv4")
        };
        assert_eq!(ip.header().source_addr(), C4);
        assert_eq!(ip.header().destination_addr(), V4);
        assert_eq!(ip.header().dcp().value(), 0xb9 >> 2);
        assert_eq!(ip.header().ecn().value(), 1);
        assert_eq!(internet_checksum(&f[14..34]), 0);
        let Some(TransportSlice::Tcp(t)) = s.transport else {
            panic!("not tcp")
        };
        assert_eq!((t.source_port(), t.destination_port()), (40000, 80));
        assert_eq!(
            t.calc_checksum_ipv4(C4.octets(), V4.octets()).unwrap(),
            t.checksum()
        );
        let k = p.flow_key();
        assert_eq!(&k.src[..4], &C4.octets());
        assert_eq!(k.sport.to_ne_bytes(), 40000u16.to_be_bytes());
        assert_eq!(k.dport.to_ne_bytes(), 80u16.to_be_bytes());
        assert_eq!((k.proto, k.family), (6, 4));
    }

    #[test]
    fn a_syn_has_syn_set_and_ack_clear() {
        let f = tcp4(C4, 40000, V4, 80).syn().build();
        let s = SlicedPacket::from_ethernet(&f).unwrap();
        let Some(TransportSlice::Tcp(t)) = s.transport else {
            panic!("not tcp")
        };
        assert!(t.syn() && !t.ack() && !t.psh());
        assert_eq!(
            t.calc_checksum_ipv4(C4.octets(), V4.octets()).unwrap(),
            t.checksum()
        );
        // The flags byte as the program reads it: SYN (0x02) without ACK (0x10).
        assert_eq!(f[14 + 20 + 13] & 0x12, 0x02);
        let f = tcp4(C4, 40000, V4, 80).build();
        assert_eq!(f[14 + 20 + 13] & 0x12, 0x10);
    }

    #[test]
    fn vlan_and_options_layout() {
        let p = udp4(C4, 5353, V4, 53)
            .vlan(Vlan::dot1ad(10))
            .vlan(Vlan::dot1q(20))
            .v4_options(vec![0x94, 0x04, 0, 0]);
        let f = p.build();
        assert_eq!(p.l2_len(), 22);
        assert_eq!(&f[12..14], &[0x88, 0xa8]);
        // PCP 5, DEI, VID 10
        assert_eq!(&f[14..16], &[0xb0, 0x0a]);
        assert_eq!(&f[16..18], &[0x81, 0x00]);
        assert_eq!(&f[18..20], &[0x60, 0x14]);
        assert_eq!(&f[20..22], &[0x08, 0x00]);
        assert_eq!(f[22], 0x46);
        assert_eq!(internet_checksum(&f[22..46]), 0);
        assert_eq!(p.ip_header_len(), 24);
        let s = SlicedPacket::from_ethernet(&f).unwrap();
        let Some(TransportSlice::Udp(u)) = s.transport else {
            panic!("not udp")
        };
        assert_eq!(u.destination_port(), 53);
    }

    #[test]
    fn ipv6_ext_chain_parses_back() {
        let p = tcp6(C6, 40000, V6, 443)
            .ext(Ext::hop_by_hop())
            .ext(Ext::dest_opts());
        let f = p.build();
        assert_eq!(p.ip_header_len(), 40 + 8 + 16);
        assert_eq!(f[14 + 6], EXT_HOP_BY_HOP);
        assert_eq!(f[14 + 40], EXT_DEST_OPTS);
        assert_eq!(f[14 + 48], 6);
        let s = SlicedPacket::from_ethernet(&f).unwrap();
        let Some(TransportSlice::Tcp(t)) = s.transport else {
            panic!("not tcp")
        };
        assert_eq!(t.destination_port(), 443);
        let Some(NetSlice::Ipv6(ip)) = s.net else {
            panic!("not ipv6")
        };
        assert_eq!(
            t.calc_checksum_ipv6(ip.header().source(), ip.header().destination())
                .unwrap(),
            t.checksum()
        );
        let r = tcp6(C6, 1, V6, 2).ext(Ext::routing());
        assert!(SlicedPacket::from_ethernet(&r.build()).is_ok());
        let fr = udp6(C6, 1, V6, 2).ext(Ext::Fragment {
            offset: 0,
            more: true,
            ident: 9,
        });
        let fb = fr.build();
        assert_eq!(fb[14 + 6], EXT_FRAGMENT);
        assert_eq!(fb[14 + 40], 17);
    }

    #[test]
    fn ipip_expectation() {
        let p = tcp4(C4, 40000, V4, 80).tos(0xb9).vlan(Vlan::dot1q(100));
        let src = Ipv4Addr::new(198, 18, 0, 1);
        let be = Ipv4Addr::new(192, 0, 2, 11);
        let e = expect_ipip(&p, ENC, src, be);
        let inp = p.build();
        let b = &e.bytes;
        assert_eq!(b.len(), inp.len() + 20);
        assert_eq!(&b[0..6], &ENC.next_hop_mac);
        assert_eq!(&b[6..12], &[2, 0, 0, 0, 0, 0x5e]);
        assert_eq!(&b[12..16], &inp[12..16]);
        assert_eq!(&b[16..18], &[0x08, 0x00]);
        let o = &b[18..38];
        assert_eq!(o[0], 0x45);
        assert_eq!(o[1], 0xb9);
        assert_eq!(
            usize::from(u16::from_be_bytes([o[2], o[3]])),
            p.ip_len() + 20
        );
        assert_eq!(&o[4..8], &[0, 0, 0x40, 0]);
        assert_eq!((o[8], o[9]), (64, 4));
        assert_eq!(internet_checksum(o), 0);
        assert_eq!(&o[12..16], &src.octets());
        assert_eq!(&o[16..20], &be.octets());
        assert_eq!(&b[38..], &inp[18..]);
        assert_eq!(parse_outer(b), Some(Outer::V4 { src, dst: be }));
        assert!(frame_diff(b, &e).is_none());
    }

    #[test]
    fn ip6_expectations() {
        let be = Ipv6Addr::new(0x2001, 0xdb8, 0xb, 0, 0, 0, 0, 0x11);
        let src = Ipv6Addr::new(0x2001, 0xdb8, 0xffff, 0, 0, 0, 0, 1);
        for p in [
            tcp6(C6, 40000, V6, 443).tos(0x2a),
            tcp4(C4, 40000, V4, 443).tos(0x2a),
        ] {
            let e = expect_ip6_encap(&p, ENC, src, be, 0xabcdef12);
            let inp = p.build();
            let b = &e.bytes;
            assert_eq!(b.len(), inp.len() + 40);
            assert_eq!(&b[12..14], &[0x86, 0xdd]);
            let o = &b[14..54];
            // version 6, tc 0x2a, flow label 0xdef12
            assert_eq!(&o[0..4], &[0x62, 0xad, 0xef, 0x12]);
            assert_eq!(usize::from(u16::from_be_bytes([o[4], o[5]])), p.ip_len());
            assert_eq!(o[6], if p.is_v6() { 41 } else { 4 });
            assert_eq!(o[7], 64);
            assert_eq!(&o[8..24], &src.octets());
            assert_eq!(&o[24..40], &be.octets());
            assert_eq!(&b[54..], &inp[14..]);
            assert_eq!(
                parse_outer(b),
                Some(Outer::V6 {
                    src,
                    dst: be,
                    flow_label: 0xdef12
                })
            );
        }
    }

    #[test]
    fn source_ranges() {
        let base = Ipv4Addr::new(198, 18, 0, 0);
        assert_eq!(outer_src_v4(base, 32, 0xffff_ffff), base);
        assert_eq!(
            outer_src_v4(base, 24, 0x1234_56ab),
            Ipv4Addr::new(198, 18, 0, 0xab)
        );
        let b6: Ipv6Addr = "2001:db8:ffff::".parse().unwrap();
        assert_eq!(outer_src_v6(b6, 128, 0xffff_ffff), b6);
        assert_eq!(
            outer_src_v6(b6, 112, 0x1234_56ab),
            "2001:db8:ffff::56ab".parse::<Ipv6Addr>().unwrap()
        );
        assert_eq!(
            outer_src_v6(b6, 64, 0x1234_56ab),
            "2001:db8:ffff::1234:56ab".parse::<Ipv6Addr>().unwrap()
        );
    }

    #[test]
    fn cut_ip_fixes_lengths() {
        let p = tcp4(C4, 1, V4, 80);
        let f = cut_ip(&p, 30);
        assert_eq!(f.len(), 14 + 30);
        assert_eq!(u16::from_be_bytes([f[16], f[17]]), 30);
        assert_eq!(internet_checksum(&f[14..34]), 0);
        let p6 = tcp6(C6, 1, V6, 80);
        let f6 = cut_ip(&p6, 50);
        assert_eq!(u16::from_be_bytes([f6[18], f6[19]]), 10);
    }

    #[test]
    fn icmp_and_arp_frames() {
        let quoted = tcp4(V4, 80, C4, 40000).payload_len(1460).ip_packet()[..28].to_vec();
        let p = frag_needed4(Ipv4Addr::new(198, 51, 100, 254), V4, 1400, quoted.clone());
        let f = p.build();
        assert_eq!(&f[34..36], &[3, 4]);
        assert_eq!(&f[38..42], &[0, 0, 0x05, 0x78]);
        assert_eq!(&f[42..], &quoted[..]);
        assert_eq!(internet_checksum(&f[34..]), 0);
        let q6 = tcp6(V6, 443, C6, 40000).ip_packet();
        let p6 = packet_too_big6("2001:db8:ff::1".parse().unwrap(), V6, 1280, q6);
        let f6 = p6.build();
        assert_eq!(&f6[54..56], &[2, 0]);
        assert!(SlicedPacket::from_ethernet(&f6).is_ok());
        let a = arp_request(C4, V4);
        assert_eq!(a.len(), 60);
        assert_eq!(&a[12..14], &[0x08, 0x06]);
        assert_eq!(echo4(C4, V4).build()[34], 8);
        assert_eq!(echo6(C6, V6).build()[54], 128);
    }

    #[test]
    fn diff_names_the_section() {
        let p = tcp4(C4, 40000, V4, 80);
        let e = expect_ipip(
            &p,
            ENC,
            Ipv4Addr::new(198, 18, 0, 1),
            Ipv4Addr::new(192, 0, 2, 11),
        );
        let mut got = e.bytes.clone();
        got[14 + 19] ^= 1;
        let d = frame_diff(&got, &e).unwrap();
        assert!(d.contains("offset 33"), "{d}");
        assert!(d.contains("outer IPv4 destination"), "{d}");
        assert!(d.contains("^^"), "{d}");
    }

    #[test]
    fn uid_is_readable() {
        assert!(effective_uid().is_some());
    }
}
