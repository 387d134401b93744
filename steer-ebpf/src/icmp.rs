//! Path-MTU discovery: a packet that would exceed `dataplane.mtu` once
//! encapsulated is answered as a router would answer it, with an ICMPv4
//! fragmentation-needed (type 3 code 4) or an ICMPv6 packet-too-big (type
//! 2) sent back to the client with `XDP_TX`, from the VIP address. See
//! docs/architecture.md ("Path-MTU replies").
//!
//! The packet path hands the packet over with a tail call (its stack is
//! nearly full); `steer_pmtu4` / `steer_pmtu6` parse it again and reply.
//! The reply is built in place: the frame is cut to the quote, the head
//! grows by the new IP and ICMP headers, and the Ethernet header (VLAN
//! tags kept) is rewritten in front.

use aya_ebpf::{
    bindings::xdp_action,
    helpers::generated::{
        bpf_csum_diff, bpf_ktime_get_ns, bpf_xdp_adjust_head, bpf_xdp_adjust_tail,
    },
    programs::XdpContext,
};
use steer_common::{
    csum::ipv4_header_checksum, is_unicast_mac, Branch, DropReason, Real, Settings, FAMILY_V4,
    PROTO_ICMP, PROTO_ICMPV6,
};

use crate::{
    encap::{head, put, source_mac},
    maps::{PMTU_BUCKET, SETTINGS},
    parse::{self, frame_len, is_icmp, parse_l3, read, Ip, ETH_LEN},
    stats,
};

/// IPv4 header + ICMP header of the reply.
const V4_HDRS: usize = 20 + 8;
/// IPv6 header + ICMPv6 header of the reply.
const V6_HDRS: usize = 40 + 8;
/// RFC 792 asks for the IP header and 64 bits of its payload; RFC 1812
/// (4.3.2.3) allows more, as long as the reply stays within 576 bytes.
const V4_QUOTE_MAX: usize = 576 - V4_HDRS;
/// RFC 4443 (2.4 c): as much of the packet as fits in 1280 bytes.
const V6_QUOTE_MAX: usize = 1280 - V6_HDRS;
/// Bytes per `bpf_csum_diff` call (it takes at most 512, a multiple of 4).
const CHUNK: usize = 64;
/// Enough chunks for the largest checksummed region (ICMPv6 header and
/// quote, 1240 bytes).
const MAX_CHUNKS: usize = (8 + V6_QUOTE_MAX) / CHUNK;
/// Largest offset the checksum loop computes (keeps it provably bounded).
const MAX_OFF: usize = 0x3fff;

/// Hands a packet `encap` found too big to the reply program for `real`'s
/// outer family (`steer_pmtu4` / `steer_pmtu6`) with a tail call: the
/// reply has a stack of its own, the packet path's is nearly full. Returns
/// only if the tail call fails (no program in `PMTU_PROGS`): the packet is
/// then dropped as `too_big`, as before path-MTU replies existed.
///
/// Not in the benchmark object (feature `bench`): its entries are not
/// multi-buffer programs, and the kernel lets one program array serve only
/// programs that agree on that; the benchmark never sends a too-big packet.
#[inline(always)]
pub fn too_big(ctx: &XdpContext, real: &Real) -> u32 {
    #[cfg(not(feature = "bench"))]
    {
        let slot = if real.family == steer_common::FAMILY_V6 {
            steer_common::PMTU_SLOT_OUTER_V6
        } else {
            steer_common::PMTU_SLOT_OUTER_V4
        };
        // SAFETY: the tail call replaces this program with the reply
        // program on the same context; nothing of ours runs after it
        // succeeds.
        unsafe { crate::maps::PMTU_PROGS.tail_call(ctx, slot) };
    }
    #[cfg(feature = "bench")]
    let _ = (ctx, real);
    stats::dropped(DropReason::TooBig)
}

/// The reply programs' body: parses the packet again (a tail call keeps
/// only the packet), answers it or drops it, and counts. `OUTER` is the
/// encapsulation header the packet was too big with (20 or 40 bytes).
#[inline(always)]
pub fn answer<const OUTER: usize>(ctx: &XdpContext) -> u32 {
    let mut ip = Ip::new();
    if !matches!(parse_l3(ctx, &mut ip), parse::L3::Ip) {
        return stats::dropped(DropReason::TooBig);
    }
    let Some(settings) = SETTINGS.get(0) else {
        return stats::dropped(DropReason::TooBig);
    };
    match reply(ctx, &ip, settings, OUTER) {
        Ok(()) => {
            stats::branch(Branch::PmtuReply);
            xdp_action::XDP_TX
        }
        Err(reason) => stats::dropped(reason),
    }
}

/// Whether `src` may be answered: a unicast address, not unspecified,
/// loopback, multicast or (IPv4) broadcast / reserved.
#[inline(always)]
fn answerable_source(family: u8, src: &[u8; 16]) -> bool {
    if family == FAMILY_V4 {
        // 0/8 ("this network"), 127/8, 224/4 (multicast) and 240/4
        // (reserved, with 255.255.255.255).
        let a = src[0];
        return a != 0 && a != 127 && a < 224;
    }
    if src[0] == 0xff {
        return false;
    }
    let mut high = 0u8;
    let mut i = 0;
    while i < 15 {
        high |= src[i];
        i += 1;
    }
    // :: and ::1.
    high != 0 || src[15] > 1
}

/// The per-CPU rate limit: GCRA, a token bucket of
/// `settings.pmtu_reply_burst` refilled at `settings.pmtu_reply_rate` a
/// second (`dataplane.pmtu_reply_*`), kept as one number, the time the
/// bucket would be full again. False: no reply now; always false with a
/// rate of 0. Both are at most `u16::MAX`, so `(burst - 1) * cost` is below
/// 2^16 * 10^9 < 2^46: no overflow. A burst of 0 (refused by the config)
/// counts as 1.
#[inline(always)]
fn allow(settings: &Settings) -> bool {
    let rate = u64::from(settings.pmtu_reply_rate);
    if rate == 0 {
        return false;
    }
    let burst = u64::from(settings.pmtu_reply_burst).max(1);
    let Some(slot) = PMTU_BUCKET.get_ptr_mut(0) else {
        return false;
    };
    let cost = 1_000_000_000 / rate;
    // SAFETY: plain helper call; it reads the clock.
    let now = unsafe { bpf_ktime_get_ns() };
    // SAFETY: per-CPU slot from a successful lookup, which only this CPU
    // writes while this program runs (as in `stats::bump`).
    let tat = unsafe { *slot }.max(now);
    if tat - now > (burst - 1) * cost {
        return false;
    }
    // SAFETY: as above.
    unsafe { *slot = tat + cost };
    true
}

/// What the reply's headers need, read before the packet moves.
struct Reply {
    client_mac: [u8; 6],
    our_mac: [u8; 6],
    tags: [u8; 8],
    /// Quoted bytes of the invoking IP packet.
    quote: usize,
    /// The MTU to announce: the configured MTU minus the outer header.
    mtu: u32,
    /// IPv4: the invoking packet's identification, reused.
    ident: [u8; 2],
}

#[inline(always)]
fn reply(ctx: &XdpContext, ip: &Ip, settings: &Settings, outer: usize) -> Result<(), DropReason> {
    let v4 = ip.key.family == FAMILY_V4;
    // Never an ICMP error about an ICMP message (RFC 1122 3.2.2, RFC 4443
    // 2.4 e): the only ICMP steer forwards are errors.
    if is_icmp(ip.key.family, ip.key.proto) {
        return Err(DropReason::TooBig);
    }
    if !answerable_source(ip.key.family, &ip.key.src) {
        return Err(DropReason::TooBig);
    }
    let l2 = match ip.nvlan {
        0 => ETH_LEN,
        1 => ETH_LEN + 4,
        _ => ETH_LEN + 8,
    };
    let Some(client_mac) = read::<[u8; 6]>(ctx, 6) else {
        return Err(DropReason::TooBig);
    };
    if !is_unicast_mac(&client_mac) {
        return Err(DropReason::TooBig);
    }
    let Some(fixed) = read::<[u8; 8]>(ctx, l2) else {
        return Err(DropReason::TooBig);
    };
    // IPv4 with DF clear: a router would fragment; steer cannot, and never
    // forwards fragments, so neither would the client's own fragments get
    // through. Dropped, counted apart (docs/operations.md).
    if v4 && fixed[6] & 0x40 == 0 {
        return Err(DropReason::TooBigDfClear);
    }
    let max = if v4 { V4_QUOTE_MAX } else { V6_QUOTE_MAX };
    let quote = if (ip.ip_len as usize) < max {
        ip.ip_len as usize
    } else {
        max
    };
    // The quote must be in the first buffer, where the checksum reads it.
    if quote < 8 || read::<[u8; 2]>(ctx, l2 + quote - 2).is_none() {
        return Err(DropReason::TooBig);
    }
    let Some(our_mac) = source_mac(ctx) else {
        return Err(DropReason::TooBig);
    };
    let Some(tags) = read::<[u8; 8]>(ctx, 12) else {
        return Err(DropReason::TooBig);
    };
    if !allow(settings) {
        return Err(DropReason::TooBigRateLimited);
    }
    let r = Reply {
        client_mac,
        our_mac,
        tags,
        quote,
        mtu: settings.mtu - outer as u32,
        ident: [fixed[4], fixed[5]],
    };

    // Cut the frame to the Ethernet header and the quote (fragments of a
    // multi-buffer frame go first), then make room for the new headers.
    let keep = l2 + quote;
    let frame = frame_len(ctx);
    if frame > keep {
        // SAFETY: plain helper call on our own context; the kernel checks
        // the new length (at least l2 + 536 bytes here).
        if unsafe { bpf_xdp_adjust_tail(ctx.ctx, -((frame - keep) as i32)) } != 0 {
            return Err(DropReason::TooBig);
        }
    }
    let grow = if v4 { V4_HDRS } else { V6_HDRS };
    // SAFETY: plain helper call on our own context; the kernel checks the
    // headroom and returns an error instead of moving past it.
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, -(grow as i32)) } != 0 {
        return Err(DropReason::NoHeadroom);
    }
    // Every packet pointer is invalid now; the writers check bounds again.
    match (ip.nvlan, v4) {
        (0, true) => write_v4::<{ ETH_LEN }>(ctx, ip, settings, &r),
        (1, true) => write_v4::<{ ETH_LEN + 4 }>(ctx, ip, settings, &r),
        (_, true) => write_v4::<{ ETH_LEN + 8 }>(ctx, ip, settings, &r),
        (0, false) => write_v6::<{ ETH_LEN }>(ctx, ip, settings, &r),
        (1, false) => write_v6::<{ ETH_LEN + 4 }>(ctx, ip, settings, &r),
        (_, false) => write_v6::<{ ETH_LEN + 8 }>(ctx, ip, settings, &r),
    }
}

/// Writes the Ethernet header: back to the client, from this interface,
/// the VLAN tags as they were.
///
/// # Safety
/// The packet must hold at least `L3` bytes at `p`.
#[inline(always)]
unsafe fn write_eth<const L3: usize>(p: *mut u8, r: &Reply, ethertype: [u8; 2]) {
    // SAFETY: all offsets are below L3, guaranteed by the caller.
    unsafe {
        put(p, 0, r.client_mac);
        put(p, 6, r.our_mac);
        if L3 >= ETH_LEN + 4 {
            put(p, 12, [r.tags[0], r.tags[1], r.tags[2], r.tags[3]]);
        }
        if L3 >= ETH_LEN + 8 {
            put(p, 16, [r.tags[4], r.tags[5], r.tags[6], r.tags[7]]);
        }
        put(p, L3 - 2, ethertype);
    }
}

#[inline(always)]
fn write_v4<const L3: usize>(
    ctx: &XdpContext,
    ip: &Ip,
    s: &Settings,
    r: &Reply,
) -> Result<(), DropReason> {
    let Some(p) = head(ctx, L3 + V4_HDRS) else {
        return Err(DropReason::TooBig);
    };
    let k = &ip.key;
    let total = (V4_HDRS + r.quote) as u16;
    // From the VIP (the invoking packet's destination) to the client. DF
    // clear, identification reused from the invoking packet.
    let w = [
        0x4500,
        total,
        u16::from_be_bytes(r.ident),
        0,
        ((s.ttl as u16) << 8) | PROTO_ICMP as u16,
        0,
        u16::from_be_bytes([k.dst[0], k.dst[1]]),
        u16::from_be_bytes([k.dst[2], k.dst[3]]),
        u16::from_be_bytes([k.src[0], k.src[1]]),
        u16::from_be_bytes([k.src[2], k.src[3]]),
    ];
    let csum = ipv4_header_checksum(&w);
    let mtu = (r.mtu as u16).to_be_bytes();
    // SAFETY: `head` proved L3 + 28 bytes are inside the packet.
    unsafe {
        write_eth::<L3>(p, r, [0x08, 0x00]);
        put(p, L3, [0x45, 0x00]);
        put(p, L3 + 2, total.to_be_bytes());
        put(p, L3 + 4, [r.ident[0], r.ident[1], 0, 0]);
        put(p, L3 + 8, [s.ttl, PROTO_ICMP]);
        put(p, L3 + 10, csum.to_be_bytes());
        put(p, L3 + 12, [k.dst[0], k.dst[1], k.dst[2], k.dst[3]]);
        put(p, L3 + 16, [k.src[0], k.src[1], k.src[2], k.src[3]]);
        // Type 3 code 4, checksum 0 for now, unused, next-hop MTU.
        put(p, L3 + 20, [3, 4, 0, 0, 0, 0, mtu[0], mtu[1]]);
    }
    let sum = sum_region(ctx, L3 + 20, 8 + r.quote);
    if sum == NO_SUM {
        return Err(DropReason::TooBig);
    }
    store_csum(ctx, L3 + 22, sum)
}

#[inline(always)]
fn write_v6<const L3: usize>(
    ctx: &XdpContext,
    ip: &Ip,
    s: &Settings,
    r: &Reply,
) -> Result<(), DropReason> {
    let Some(p) = head(ctx, L3 + V6_HDRS) else {
        return Err(DropReason::TooBig);
    };
    let k = &ip.key;
    let len = (8 + r.quote) as u16;
    let mtu = r.mtu.to_be_bytes();
    // SAFETY: `head` proved L3 + 48 bytes are inside the packet.
    unsafe {
        write_eth::<L3>(p, r, [0x86, 0xdd]);
        // Traffic class 0, flow label 0.
        put(p, L3, [0x60, 0, 0, 0]);
        put(p, L3 + 4, len.to_be_bytes());
        put(p, L3 + 6, [PROTO_ICMPV6, s.ttl]);
        put(p, L3 + 8, k.dst);
        put(p, L3 + 24, k.src);
        // Type 2 code 0, checksum 0 for now, MTU.
        put(p, L3 + 40, [2, 0, 0, 0, mtu[0], mtu[1], mtu[2], mtu[3]]);
    }
    // The pseudo-header (RFC 8200 8.1): addresses, upper-layer length,
    // next header; summed as the packet's bytes are (native-order words).
    let mut pseudo: u64 = 0;
    let mut i = 0;
    while i < 16 {
        pseudo += u16::from_ne_bytes([k.src[i], k.src[i + 1]]) as u64;
        pseudo += u16::from_ne_bytes([k.dst[i], k.dst[i + 1]]) as u64;
        i += 2;
    }
    pseudo += u16::from_ne_bytes(len.to_be_bytes()) as u64;
    pseudo += u16::from_ne_bytes([0, PROTO_ICMPV6]) as u64;
    let sum = sum_region(ctx, L3 + 40, len as usize);
    if sum == NO_SUM {
        return Err(DropReason::TooBig);
    }
    store_csum(ctx, L3 + 42, sum + pseudo)
}

/// Returned by `sum_region` when the bytes are not all in the packet (no
/// real sum of at most 1240 bytes comes near it).
const NO_SUM: u64 = u64::MAX;

/// The one's-complement sum (RFC 1071, not folded) of `len` packet bytes
/// from `start`, as native-order 16-bit words: `bpf_csum_diff` over whole
/// `CHUNK`s, then the rest word by word. One BPF function for every
/// caller; [`NO_SUM`] if the bytes are not all in the packet.
#[inline(never)]
fn sum_region(ctx: &XdpContext, start: usize, len: usize) -> u64 {
    sum_region_inner(ctx, start, len).unwrap_or(NO_SUM)
}

#[inline(always)]
fn sum_region_inner(ctx: &XdpContext, start: usize, len: usize) -> Option<u64> {
    let mut sum: u64 = 0;
    let full = len / CHUNK;
    let mut i = 0;
    while i < MAX_CHUNKS && i < full {
        let off = start + i * CHUNK;
        let data = ctx.data();
        if off > MAX_OFF || data + off + CHUNK > ctx.data_end() {
            return None;
        }
        // SAFETY: the check above proves the CHUNK bytes at `data + off`
        // are inside the packet; the helper only reads them (`from` is
        // empty).
        let r = unsafe {
            bpf_csum_diff(
                core::ptr::null_mut(),
                0,
                (data + off) as *mut u32,
                CHUNK as u32,
                0,
            )
        };
        if r < 0 {
            return None;
        }
        sum += r as u64 & 0xffff_ffff;
        i += 1;
    }
    if full > MAX_CHUNKS {
        return None;
    }
    let end = start + len;
    let mut off = start + full * CHUNK;
    let mut j = 0;
    while j < CHUNK / 2 && off + 2 <= end {
        sum += u16::from_ne_bytes(read::<[u8; 2]>(ctx, off)?) as u64;
        off += 2;
        j += 1;
    }
    if off < end {
        // The odd last byte, read with the one before it (`len` is at
        // least 8): a one-byte read at a variable offset is one the
        // verifier cannot prove in bounds once LLVM turns `off + 1 > end`
        // into `off >= end`.
        let last = read::<[u8; 2]>(ctx, off - 1)?;
        sum += u16::from_ne_bytes([last[1], 0]) as u64;
    }
    Some(sum)
}

/// Folds `sum` and stores its complement at `at`.
#[inline(always)]
fn store_csum(ctx: &XdpContext, at: usize, sum: u64) -> Result<(), DropReason> {
    let mut s = sum;
    let mut k = 0;
    while k < 4 {
        s = (s & 0xffff) + (s >> 16);
        k += 1;
    }
    let csum = !(s as u16);
    let Some(p) = head(ctx, at + 2) else {
        return Err(DropReason::TooBig);
    };
    // SAFETY: `head` proved `at + 2` bytes are inside the packet.
    unsafe { put(p, at, csum.to_ne_bytes()) };
    Ok(())
}
