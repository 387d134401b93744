//! Header parsing with explicit bounds checks against `data_end`.
//!
//! Every read goes through [`read`], which checks the whole object lies
//! inside the packet before touching it, so the verifier accepts it and a
//! truncated packet can never be read past its end.

use crate::select::maybe_vip;
use aya_ebpf::{helpers::generated::bpf_xdp_get_buff_len, programs::XdpContext};
use steer_common::{
    DropReason, FlowKey, FAMILY_V4, FAMILY_V6, PROTO_ICMP, PROTO_ICMPV6, PROTO_TCP, PROTO_UDP,
};

pub const ETH_LEN: usize = 14;
const ETH_P_IPV4: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88a8;

const IPV6_HOPOPTS: u8 = 0;
const IPV6_ROUTING: u8 = 43;
const IPV6_FRAGMENT: u8 = 44;
const IPV6_DSTOPTS: u8 = 60;
/// Extension headers we are willing to walk before giving up.
const MAX_IPV6_EXT: usize = 4;
/// Largest offset we ever compute; keeps every offset provably bounded.
const MAX_OFF: usize = 0x3fff;

/// Reads a `T` at `off` bytes from the start of the packet, or `None` when
/// the packet is too short.
#[inline(always)]
pub fn read<T: Copy>(ctx: &XdpContext, off: usize) -> Option<T> {
    let start = ctx.data();
    let end = ctx.data_end();
    if off > MAX_OFF || start + off + core::mem::size_of::<T>() > end {
        return None;
    }
    // SAFETY: the bounds check above proves [start+off, start+off+size)
    // lies inside the packet; `read_unaligned` needs no alignment.
    Some(unsafe { core::ptr::read_unaligned((start + off) as *const T) })
}

/// The length of the whole frame. The program is built for multi-buffer
/// XDP (`xdp.frags`): a frame larger than one buffer (jumbo frames) has
/// fragments after `data_end`. Headers are read from the first buffer
/// only; the fragments hold payload steer never reads.
#[inline(always)]
pub fn frame_len(ctx: &XdpContext) -> usize {
    // SAFETY: plain helper call on our own context; it only reads it.
    unsafe { bpf_xdp_get_buff_len(ctx.ctx) as usize }
}

/// Whether the frame holds at least `end` bytes. The first buffer
/// (`data_end - data`) usually does, and then the helper call of
/// [`frame_len`] is not needed.
#[inline(always)]
fn frame_holds(ctx: &XdpContext, end: usize) -> bool {
    end <= ctx.data_end() - ctx.data() || end <= frame_len(ctx)
}

#[inline(always)]
pub fn be16(b: [u8; 2]) -> u16 {
    u16::from_be_bytes(b)
}

/// A parsed IP packet whose L4 header (if any) starts at `l4_off`.
/// Parsing fills it in place to keep the BPF stack small. `repr(C)`, key
/// first: the program may only touch the stack with aligned accesses (see
/// `steer-ebpf/build.rs`).
#[repr(C)]
pub struct Ip {
    /// Addresses, protocol and family; ports are filled in later.
    pub key: FlowKey,
    pub nvlan: usize,
    pub l4_off: usize,
    /// End of the IP packet as its header states it (offset in the frame).
    pub ip_end: usize,
    /// Length of the IP packet as its header states it.
    pub ip_len: u32,
    /// Traffic class / TOS byte (DSCP + ECN).
    pub tos: u8,
    /// Zeroed with the rest: the zeroing is then whole words, not an
    /// overlapping (misaligned) store for a 5-byte tail.
    _pad: [u8; 3],
}

impl Ip {
    #[inline(always)]
    pub fn new() -> Self {
        Ip {
            nvlan: 0,
            tos: 0,
            l4_off: 0,
            ip_end: 0,
            ip_len: 0,
            key: FlowKey::default(),
            _pad: [0; 3],
        }
    }
}

/// The outcome of parsing up to L3.
pub enum L3 {
    /// Fully parsed.
    Ip,
    /// Not something steer handles (not IP, or too short to read the
    /// destination address): the kernel gets it untouched.
    Pass,
    /// Broken or a fragment: dropped with this reason if `key.dst` carries a
    /// VIP, passed otherwise. `key.dst` and `key.family` are valid.
    Bad(DropReason),
}

/// Parses Ethernet (up to two VLAN tags) and the IP header into `ip`.
#[inline(always)]
pub fn parse_l3(ctx: &XdpContext, ip: &mut Ip) -> L3 {
    let Some(mut ethertype) = read::<[u8; 2]>(ctx, 12).map(be16) else {
        return L3::Pass;
    };
    let mut off = ETH_LEN;
    // Two tags at most (802.1ad outer + 802.1Q inner).
    for _ in 0..2 {
        if ethertype != ETH_P_8021Q && ethertype != ETH_P_8021AD {
            break;
        }
        let Some(tag) = read::<[u8; 4]>(ctx, off) else {
            return L3::Pass;
        };
        ethertype = be16([tag[2], tag[3]]);
        off += 4;
        ip.nvlan += 1;
    }
    match ethertype {
        ETH_P_IPV4 => parse_v4(ctx, off, ip),
        ETH_P_IPV6 => parse_v6(ctx, off, ip),
        _ => L3::Pass,
    }
}

/// Writes an IPv4 address into bytes `AT..AT + 4` of a key's address
/// field: 0 for the address itself, 4 for the destination's copy after the
/// source, where `FlowKey::as_v4` expects it (see `steer_common::FlowKey`).
#[inline(always)]
fn set_v4<const AT: usize>(out: &mut [u8; 16], a: [u8; 4]) {
    out[AT] = a[0];
    out[AT + 1] = a[1];
    out[AT + 2] = a[2];
    out[AT + 3] = a[3];
}

#[inline(always)]
fn parse_v4(ctx: &XdpContext, l3: usize, ip: &mut Ip) -> L3 {
    let Some(h) = read::<[u8; 12]>(ctx, l3) else {
        return L3::Pass;
    };
    let Some(dst) = read::<[u8; 4]>(ctx, l3 + 16) else {
        return L3::Pass;
    };
    ip.key.family = FAMILY_V4;
    set_v4::<0>(&mut ip.key.dst, dst);
    // Foreign traffic leaves here, before any validation: a malformed
    // packet to an address that carries no VIP passes anyway.
    if !maybe_vip(&ip.key.dst) {
        return L3::Pass;
    }
    if h[0] >> 4 != 4 || (h[0] & 0x0f) < 5 {
        return L3::Bad(DropReason::MalformedL3);
    }
    let hdr_len = ((h[0] & 0x0f) as usize) * 4;
    let total = be16([h[2], h[3]]) as usize;
    if total < hdr_len {
        return L3::Bad(DropReason::MalformedL3);
    }
    if !frame_holds(ctx, l3 + total) {
        return L3::Bad(DropReason::TruncatedL3);
    }
    // MF set or a non-zero offset: a fragment.
    if be16([h[6], h[7]]) & 0x3fff != 0 {
        return L3::Bad(DropReason::Fragment);
    }
    let Some(src) = read::<[u8; 4]>(ctx, l3 + 12) else {
        return L3::Pass;
    };
    set_v4::<0>(&mut ip.key.src, src);
    // The destination again right after the source: the key's first 16
    // bytes are then its `CONNTRACK4` key (`FlowKey::as_v4`).
    set_v4::<4>(&mut ip.key.src, dst);
    ip.key.proto = h[9];
    ip.tos = h[1];
    ip.l4_off = l3 + hdr_len;
    ip.ip_end = l3 + total;
    ip.ip_len = total as u32;
    L3::Ip
}

#[inline(always)]
fn parse_v6(ctx: &XdpContext, l3: usize, ip: &mut Ip) -> L3 {
    let Some(h) = read::<[u8; 8]>(ctx, l3) else {
        return L3::Pass;
    };
    let Some(dst) = read::<[u8; 16]>(ctx, l3 + 24) else {
        return L3::Pass;
    };
    ip.key.family = FAMILY_V6;
    ip.key.dst = dst;
    // As for IPv4: foreign traffic leaves before any validation.
    if !maybe_vip(&ip.key.dst) {
        return L3::Pass;
    }
    if h[0] >> 4 != 6 {
        return L3::Bad(DropReason::MalformedL3);
    }
    let payload = be16([h[4], h[5]]) as usize;
    let ip_end = l3 + 40 + payload;
    if !frame_holds(ctx, ip_end) {
        return L3::Bad(DropReason::TruncatedL3);
    }
    let mut next = h[6];
    let mut off = l3 + 40;
    let mut walked = 0;
    while walked < MAX_IPV6_EXT {
        match next {
            IPV6_HOPOPTS | IPV6_ROUTING | IPV6_DSTOPTS => {
                // Hop-by-hop options may only come right after the IPv6
                // header (RFC 8200, section 4.1).
                if next == IPV6_HOPOPTS && walked > 0 {
                    return L3::Bad(DropReason::Ipv6Ext);
                }
                let Some(ext) = read::<[u8; 2]>(ctx, off) else {
                    return L3::Bad(DropReason::Ipv6Ext);
                };
                next = ext[0];
                off += (ext[1] as usize + 1) * 8;
                if off > ip_end {
                    return L3::Bad(DropReason::Ipv6Ext);
                }
            }
            IPV6_FRAGMENT => return L3::Bad(DropReason::Fragment),
            _ => break,
        }
        walked += 1;
    }
    if walked == MAX_IPV6_EXT
        && matches!(
            next,
            IPV6_HOPOPTS | IPV6_ROUTING | IPV6_DSTOPTS | IPV6_FRAGMENT
        )
    {
        return L3::Bad(DropReason::Ipv6Ext);
    }
    let Some(src) = read::<[u8; 16]>(ctx, l3 + 8) else {
        return L3::Pass;
    };
    ip.key.src = src;
    ip.key.proto = next;
    ip.tos = (h[0] << 4) | (h[1] >> 4);
    ip.l4_off = off;
    ip.ip_end = ip_end;
    ip.ip_len = (40 + payload) as u32;
    L3::Ip
}

/// Fills in the ports (wire order) of the TCP or UDP header at `l4_off`,
/// which must end inside the IP packet and agree with it: a TCP data offset
/// of at least 5 words that ends inside the IP packet, a UDP length of at
/// least 8 that ends inside it (0, a jumbogram's, is refused: steer has no
/// jumbogram support). False otherwise (`truncated_l4`).
#[inline(always)]
pub fn ports(ctx: &XdpContext, ip: &mut Ip) -> bool {
    let tcp = ip.key.proto == PROTO_TCP;
    let need = if tcp { 20 } else { 8 };
    if ip.l4_off + need > ip.ip_end {
        return false;
    }
    let Some(h) = read::<[u8; 8]>(ctx, ip.l4_off) else {
        return false;
    };
    // The end of the header must be inside the frame too (ip_end already
    // is, so this only satisfies the verifier).
    if read::<u8>(ctx, ip.l4_off + need - 1).is_none() {
        return false;
    }
    // What the header says its own length (TCP) or the datagram's (UDP) is.
    let claimed = if tcp {
        let Some(data_offset) = read::<u8>(ctx, ip.l4_off + 12) else {
            return false;
        };
        ((data_offset >> 4) as usize) * 4
    } else {
        be16([h[4], h[5]]) as usize
    };
    if claimed < need || ip.l4_off + claimed > ip.ip_end {
        return false;
    }
    ip.key.sport = u16::from_ne_bytes([h[0], h[1]]);
    ip.key.dport = u16::from_ne_bytes([h[2], h[3]]);
    true
}

/// A TCP segment with SYN set and ACK clear: the first packet of a
/// connection. (`ports` has checked the whole TCP header is present.)
#[inline(always)]
pub fn is_tcp_syn(ctx: &XdpContext, ip: &Ip) -> bool {
    ip.key.proto == PROTO_TCP
        && read::<u8>(ctx, ip.l4_off + 13).is_some_and(|flags| flags & 0x12 == 0x02)
}

#[inline(always)]
pub fn is_l4(proto: u8) -> bool {
    proto == PROTO_TCP || proto == PROTO_UDP
}

#[inline(always)]
pub fn is_icmp(family: u8, proto: u8) -> bool {
    (family == FAMILY_V4 && proto == PROTO_ICMP) || (family == FAMILY_V6 && proto == PROTO_ICMPV6)
}

/// The result of looking inside an ICMP message.
pub enum Icmp {
    /// Not an error type steer forwards.
    NotOurs,
    /// An error of the right type whose quote cannot be used.
    Broken,
    /// `key` now holds the quoted flow *reversed* into the client's
    /// direction: src = client, dst = VIP, sport = client port,
    /// dport = VIP port.
    Error,
}

/// Parses ICMPv4 type 3 code 4 (fragmentation needed) and ICMPv6 type 2
/// (packet too big). The quoted packet went from the VIP to the client; its
/// flow, reversed, is written into `key`.
#[inline(always)]
pub fn parse_icmp(ctx: &XdpContext, ip: &Ip, key: &mut FlowKey) -> Icmp {
    let Some(icmp) = read::<[u8; 2]>(ctx, ip.l4_off) else {
        return Icmp::Broken;
    };
    if read::<[u8; 8]>(ctx, ip.l4_off).is_none() {
        return Icmp::Broken;
    }
    let q = ip.l4_off + 8;
    key.family = ip.key.family;
    if ip.key.family == FAMILY_V4 {
        if icmp[0] != 3 || icmp[1] != 4 {
            return Icmp::NotOurs;
        }
        let Some(h) = read::<[u8; 20]>(ctx, q) else {
            return Icmp::Broken;
        };
        if h[0] >> 4 != 4 || (h[0] & 0x0f) < 5 {
            return Icmp::Broken;
        }
        let ql4 = q + ((h[0] & 0x0f) as usize) * 4;
        let Some(p) = read::<[u16; 2]>(ctx, ql4) else {
            return Icmp::Broken;
        };
        if ql4 + 4 > ip.ip_end {
            return Icmp::Broken;
        }
        key.proto = h[9];
        set_v4::<0>(&mut key.dst, [h[12], h[13], h[14], h[15]]);
        set_v4::<0>(&mut key.src, [h[16], h[17], h[18], h[19]]);
        set_v4::<4>(&mut key.src, [h[12], h[13], h[14], h[15]]);
        key.dport = p[0];
        key.sport = p[1];
    } else {
        if icmp[0] != 2 {
            return Icmp::NotOurs;
        }
        // The quote's IPv6 header and its two ports: 44 bytes, each field
        // read whole (a byte-wise copy of the 44 took 288 bytes of stack).
        if q + 44 > ip.ip_end {
            return Icmp::Broken;
        }
        let (Some(h), Some(dst), Some(src), Some(p)) = (
            read::<[u8; 8]>(ctx, q),
            read::<[u8; 16]>(ctx, q + 8),
            read::<[u8; 16]>(ctx, q + 24),
            read::<[u16; 2]>(ctx, q + 40),
        ) else {
            return Icmp::Broken;
        };
        if h[0] >> 4 != 6 {
            return Icmp::Broken;
        }
        key.proto = h[6];
        key.dst = dst;
        key.src = src;
        key.dport = p[0];
        key.sport = p[1];
    }
    Icmp::Error
}
