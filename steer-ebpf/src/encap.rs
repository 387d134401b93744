//! Encapsulation toward the selected backend: IPIP, IPv6-in-IPv6 and
//! IPv4-in-IPv6, with the Ethernet header (and VLAN tags) rebuilt in front.

use aya_ebpf::{
    helpers::generated::{bpf_xdp_adjust_head, bpf_xdp_adjust_tail},
    programs::XdpContext,
};
use steer_common::{
    csum::ipv4_header_checksum, is_unicast_mac, DropReason, Real, Settings, FAMILY_V4, FAMILY_V6,
    OUTER_V4_LEN, OUTER_V6_LEN, PROTO_IPIP, PROTO_IPV6, SOURCE_MAC_FALLBACK, SOURCE_MAC_SLOTS,
};

use crate::{
    maps::{SOURCE_MACS, SOURCE_MACS_HIGH},
    parse::{frame_len, read, Ip, ETH_LEN},
};

/// The source MAC for a frame sent back out of the interface it arrived
/// on: that interface's own MAC (written by userspace at attach), else the
/// configured fallback. Never a multicast, broadcast or zero MAC: `None`
/// then, and the packet is dropped.
#[inline(always)]
pub fn source_mac(ctx: &XdpContext) -> Option<[u8; 6]> {
    let ifindex = ctx.ingress_ifindex() as u32;
    // One inlined array lookup for the usual (low) ifindex; a higher one
    // is out of the array's bounds and is looked up in the hash map.
    let own = SOURCE_MACS.get(ifindex).map(|m| m.mac);
    if let Some(mac) = own.filter(is_unicast_mac) {
        return Some(mac);
    }
    if ifindex >= SOURCE_MAC_SLOTS {
        // SAFETY: the value is copied out at once.
        let high = unsafe { SOURCE_MACS_HIGH.get(ifindex) }.map(|m| m.mac);
        if let Some(mac) = high.filter(is_unicast_mac) {
            return Some(mac);
        }
    }
    SOURCE_MACS
        .get(SOURCE_MAC_FALLBACK)
        .map(|m| m.mac)
        .filter(is_unicast_mac)
}

const ETH_P_IPV4: [u8; 2] = [0x08, 0x00];
const ETH_P_IPV6: [u8; 2] = [0x86, 0xdd];

/// Encapsulates the packet in place. On error returns the drop reason.
#[inline(always)]
pub fn encap(
    ctx: &XdpContext,
    ip: &Ip,
    real: &Real,
    settings: &Settings,
    hash: u32,
) -> Result<(), DropReason> {
    let inner_v4 = ip.key.family == FAMILY_V4;
    if !inner_v4 && real.family != FAMILY_V6 {
        return Err(DropReason::FamilyMismatch);
    }
    let outer_v4 = real.family == FAMILY_V4;
    let outer_len = if outer_v4 { OUTER_V4_LEN } else { OUTER_V6_LEN };
    if ip.ip_len as u64 + outer_len as u64 > settings.mtu as u64 {
        return Err(DropReason::TooBig);
    }
    // The source is the interface's own MAC, never the frame's old
    // destination (which may be broadcast or multicast). VLAN tags are
    // carried over: read them before the head moves.
    let Some(our_mac) = source_mac(ctx) else {
        return Err(DropReason::NoSourceMac);
    };
    let Some(tags) = read::<[u8; 8]>(ctx, 12) else {
        return Err(DropReason::TruncatedL3);
    };
    let next = if inner_v4 { PROTO_IPIP } else { PROTO_IPV6 };

    // Bytes after the IP packet (Ethernet padding, a trailer) are not sent
    // on: the MTU check above counts the IP packet only, so with them the
    // frame could exceed the MTU.
    let l2 = match ip.nvlan {
        0 => ETH_LEN,
        1 => ETH_LEN + 4,
        _ => ETH_LEN + 8,
    };
    let keep = l2 + ip.ip_len as usize;
    // The whole frame, fragments of a multi-buffer frame included.
    let frame = frame_len(ctx);
    if frame > keep {
        // SAFETY: plain helper call on our own context; the kernel checks
        // the new length (here at least an Ethernet and an IP header) and
        // trims a multi-buffer frame's fragments first.
        if unsafe { bpf_xdp_adjust_tail(ctx.ctx, -((frame - keep) as i32)) } != 0 {
            // Unreachable: parsing checked that the IP packet fits in the
            // frame, so the shrink leaves at least l2 + 20 bytes.
            return Err(DropReason::TruncatedL3);
        }
    }

    // SAFETY: plain helper call on our own context; the kernel checks the
    // headroom and returns an error instead of moving past it.
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, -(outer_len as i32)) } != 0 {
        return Err(DropReason::NoHeadroom);
    }
    // Every packet pointer is invalid after adjust_head; the writers below
    // re-read data/data_end and check bounds again.
    let h = Head {
        our_mac,
        tags,
        next,
        tos: ip.tos,
        ip_len: ip.ip_len,
        hash,
    };
    match (ip.nvlan, outer_v4) {
        (0, true) => write_v4::<{ ETH_LEN }>(ctx, &h, real, settings),
        (1, true) => write_v4::<{ ETH_LEN + 4 }>(ctx, &h, real, settings),
        (_, true) => write_v4::<{ ETH_LEN + 8 }>(ctx, &h, real, settings),
        (0, false) => write_v6::<{ ETH_LEN }>(ctx, &h, real, settings),
        (1, false) => write_v6::<{ ETH_LEN + 4 }>(ctx, &h, real, settings),
        (_, false) => write_v6::<{ ETH_LEN + 8 }>(ctx, &h, real, settings),
    }
}

/// What the new headers need from the old packet.
struct Head {
    our_mac: [u8; 6],
    tags: [u8; 8],
    next: u8,
    tos: u8,
    ip_len: u32,
    hash: u32,
}

/// Returns a pointer to the first `len` bytes of the packet, or `None`.
#[inline(always)]
pub fn head(ctx: &XdpContext, len: usize) -> Option<*mut u8> {
    let start = ctx.data();
    if start + len > ctx.data_end() {
        return None;
    }
    Some(start as *mut u8)
}

/// Writes `v` at `p + off`.
///
/// # Safety
/// `p + off .. p + off + N` must lie inside the packet.
#[inline(always)]
pub unsafe fn put<const N: usize>(p: *mut u8, off: usize, v: [u8; N]) {
    // SAFETY: guaranteed by the caller.
    unsafe { core::ptr::write_unaligned(p.add(off) as *mut [u8; N], v) };
}

/// Writes the Ethernet header (with `(L3 - 14) / 4` VLAN tags).
///
/// # Safety
/// The packet must hold at least `L3` bytes at `p`.
#[inline(always)]
unsafe fn write_eth<const L3: usize>(p: *mut u8, h: &Head, mac: [u8; 6], ethertype: [u8; 2]) {
    // SAFETY: all offsets are below L3, guaranteed by the caller.
    unsafe {
        put(p, 0, mac);
        put(p, 6, h.our_mac);
        if L3 >= ETH_LEN + 4 {
            put(p, 12, [h.tags[0], h.tags[1], h.tags[2], h.tags[3]]);
        }
        if L3 >= ETH_LEN + 8 {
            put(p, 16, [h.tags[4], h.tags[5], h.tags[6], h.tags[7]]);
        }
        put(p, L3 - 2, ethertype);
    }
}

#[inline(always)]
fn write_v4<const L3: usize>(
    ctx: &XdpContext,
    h: &Head,
    real: &Real,
    s: &Settings,
) -> Result<(), DropReason> {
    let Some(p) = head(ctx, L3 + OUTER_V4_LEN) else {
        return Err(DropReason::NoHeadroom);
    };
    let src = (u32::from_be_bytes(s.src4_base) | (h.hash & s.src4_mask)).to_be_bytes();
    let dst = [real.addr[0], real.addr[1], real.addr[2], real.addr[3]];
    let total = (h.ip_len + OUTER_V4_LEN as u32) as u16;
    // Version/IHL, TOS, length, ID 0, DF (steer never sends above the MTU),
    // TTL, protocol, then the addresses.
    let w = [
        0x4500 | h.tos as u16,
        total,
        0,
        0x4000,
        ((s.ttl as u16) << 8) | h.next as u16,
        0,
        u16::from_be_bytes([src[0], src[1]]),
        u16::from_be_bytes([src[2], src[3]]),
        u16::from_be_bytes([dst[0], dst[1]]),
        u16::from_be_bytes([dst[2], dst[3]]),
    ];
    let csum = ipv4_header_checksum(&w);
    // SAFETY: `head` proved L3 + 20 bytes are inside the packet.
    unsafe {
        write_eth::<L3>(p, h, s.next_hop_mac, ETH_P_IPV4);
        put(p, L3, w[0].to_be_bytes());
        put(p, L3 + 2, total.to_be_bytes());
        put(p, L3 + 4, [0, 0, 0x40, 0]);
        put(p, L3 + 8, [s.ttl, h.next]);
        put(p, L3 + 10, csum.to_be_bytes());
        put(p, L3 + 12, src);
        put(p, L3 + 16, dst);
    }
    Ok(())
}

#[inline(always)]
fn write_v6<const L3: usize>(
    ctx: &XdpContext,
    h: &Head,
    real: &Real,
    s: &Settings,
) -> Result<(), DropReason> {
    let Some(p) = head(ctx, L3 + OUTER_V6_LEN) else {
        return Err(DropReason::NoHeadroom);
    };
    let label = h.hash & 0x000f_ffff;
    let low = u32::from_be_bytes([
        s.src6_base[12],
        s.src6_base[13],
        s.src6_base[14],
        s.src6_base[15],
    ]) | (h.hash & s.src6_mask);
    // SAFETY: `head` proved L3 + 40 bytes are inside the packet.
    unsafe {
        write_eth::<L3>(p, h, s.next_hop_mac, ETH_P_IPV6);
        put(
            p,
            L3,
            [
                0x60 | (h.tos >> 4),
                (h.tos << 4) | ((label >> 16) as u8 & 0x0f),
                (label >> 8) as u8,
                label as u8,
            ],
        );
        put(p, L3 + 4, (h.ip_len as u16).to_be_bytes());
        put(p, L3 + 6, [h.next, s.ttl]);
        put(p, L3 + 8, s.src6_base);
        put(p, L3 + 20, low.to_be_bytes());
        put(p, L3 + 24, real.addr);
    }
    Ok(())
}
