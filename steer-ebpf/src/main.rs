//! steer's XDP program: match VIPs, keep flows on their backend, select new
//! flows with Maglev, encapsulate and transmit. See docs/architecture.md.
#![no_std]
#![no_main]
#![deny(clippy::undocumented_unsafe_blocks)]

#[cfg(feature = "bench")]
mod bench;
mod class;
mod encap;
mod flow;
mod icmp;
mod maps;
mod parse;
mod select;
mod stats;

use aya_ebpf::{
    bindings::{xdp_action, xdp_md},
    programs::XdpContext,
};
use steer_common::{
    ct_epoch_flags, hash::flow_hash, Branch, CtValue, DropReason, FlowKey, Real, Settings, VipInfo,
    VipKey, CT_F_PENDING, FAMILY_V4, PROTO_TCP, SETTINGS_F_READY, VIP_F_CLIENT_AFFINITY,
};

use crate::{
    flow::{Lookup, Promote},
    maps::SETTINGS,
    parse::{Icmp, Ip, L3},
};

/// Multi-buffer aware (`xdp.frags`, BPF_F_XDP_HAS_FRAGS): frames up to the
/// configured MTU (jumbo frames) are handled whole; see `parse::frame_len`.
///
/// The entries are written out (what aya's `#[xdp]` expands to, without its
/// inner function): the macro's entry calls the body as a function of its
/// own, which LLVM does not inline when the body is as large as the packet
/// path, so every packet paid a BPF-to-BPF call and a second stack frame
/// (docs/benchmarks.md, issue 12, third round).
#[unsafe(no_mangle)]
#[unsafe(link_section = "xdp.frags")]
pub fn steer_xdp(ctx: *mut xdp_md) -> u32 {
    steer::<true>(&XdpContext::new(ctx))
}

/// The benchmark floor: does nothing but bounce the frame. Only in the
/// benchmark build (feature `bench`), like the other `steer_bench*` entries.
#[cfg(feature = "bench")]
#[aya_ebpf::macros::xdp]
pub fn steer_floor(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_TX
}

/// Benchmark-only entry: restores the original packet (see `bench.rs`),
/// then runs the real program. Never attached to an interface.
#[cfg(feature = "bench")]
#[unsafe(no_mangle)]
#[unsafe(link_section = "xdp")]
pub fn steer_bench(ctx: *mut xdp_md) -> u32 {
    let ctx = XdpContext::new(ctx);
    if bench::prepare(&ctx).is_none() {
        return xdp_action::XDP_ABORTED;
    }
    steer::<true>(&ctx)
}

/// Benchmark-only: `steer_bench` without the passive health counting
/// (no handshake-pending mark, no `PASSIVE_STATS`), to measure what the
/// counting costs in the same run. Never in the production object.
#[cfg(feature = "bench")]
#[unsafe(no_mangle)]
#[unsafe(link_section = "xdp")]
pub fn steer_bench_nopassive(ctx: *mut xdp_md) -> u32 {
    let ctx = XdpContext::new(ctx);
    if bench::prepare(&ctx).is_none() {
        return xdp_action::XDP_ABORTED;
    }
    steer::<false>(&ctx)
}

/// Benchmark-only: the cost of `steer_bench`'s restore step on its own.
#[cfg(feature = "bench")]
#[aya_ebpf::macros::xdp]
pub fn steer_bench_restore(ctx: XdpContext) -> u32 {
    match bench::restore_only(&ctx) {
        Some(()) => xdp_action::XDP_TX,
        None => xdp_action::XDP_ABORTED,
    }
}

/// The path-MTU reply for a packet too big with an IPv4 outer header,
/// reached only by a tail call from the packet path (see `icmp.rs`).
#[unsafe(no_mangle)]
#[unsafe(link_section = "xdp.frags")]
pub fn steer_pmtu4(ctx: *mut xdp_md) -> u32 {
    icmp::answer::<20>(&XdpContext::new(ctx))
}

/// As `steer_pmtu4`, for an IPv6 outer header.
#[unsafe(no_mangle)]
#[unsafe(link_section = "xdp.frags")]
pub fn steer_pmtu6(ctx: *mut xdp_md) -> u32 {
    icmp::answer::<40>(&XdpContext::new(ctx))
}

#[inline(always)]
fn pass() -> u32 {
    stats::branch(Branch::Pass);
    xdp_action::XDP_PASS
}

/// A packet we could not use: ours to drop if it was meant for a VIP
/// address, the kernel's otherwise.
#[inline(always)]
fn bad(reason: DropReason, family: u8, dst: &[u8; 16]) -> u32 {
    if select::is_vip_addr(family, dst) {
        stats::dropped(reason)
    } else {
        pass()
    }
}

/// The packet path. `PASSIVE` is always true in the production object;
/// only the benchmark's `steer_bench_nopassive` turns the passive health
/// counting off, to measure it.
#[inline(always)]
fn steer<const PASSIVE: bool>(ctx: &XdpContext) -> u32 {
    let mut ip = Ip::new();
    match parse::parse_l3(ctx, &mut ip) {
        L3::Ip => {}
        L3::Pass => return pass(),
        L3::Bad(reason) => return bad(reason, ip.key.family, &ip.key.dst),
    }
    // Foreign traffic has left already: `parse_l3` passes a packet whose
    // destination has no `VIP_FILTER` bit (one inlined array lookup)
    // before it validates anything else.
    let Some(settings) = SETTINGS.get(0) else {
        return pass();
    };
    if parse::is_l4(ip.key.proto) {
        if !parse::ports(ctx, &mut ip) {
            return bad(DropReason::TruncatedL4, ip.key.family, &ip.key.dst);
        }
        // A TCP SYN opens a new connection even if its 5-tuple was used
        // before (port reuse): it is selected afresh from the current table,
        // so drains and weight changes apply to it. Everything else is an
        // established flow: one conntrack lookup, no VIP lookup, no hash.
        let syn = parse::is_tcp_syn(ctx, &ip);
        let stale = if syn {
            false
        } else {
            match flow::lookup::<PASSIVE>(&ip.key, true, maps::ct_tick()) {
                Lookup::Hit { ct, real } => {
                    return transmit(ctx, &ip, settings, &ct, &real, Branch::CtHit, false)
                }
                Lookup::Stale => true,
                Lookup::Miss => false,
            }
        };
        let mut vk = VipKey {
            addr: ip.key.dst,
            port: ip.key.dport,
            proto: ip.key.proto,
            family: ip.key.family,
        };
        let Some(vip) = select::vip(settings, &mut vk) else {
            return pass();
        };
        if vip.flags & VIP_F_CLIENT_AFFINITY != 0 {
            // Every flow of a client shares one key, hence one backend.
            // Such an entry is never handshake-pending.
            let mut key = ip.key;
            key.sport = 0;
            key.dport = vk.port;
            let stale = match flow::lookup::<PASSIVE>(&key, false, 0) {
                Lookup::Hit { ct, real } => {
                    return transmit(ctx, &ip, settings, &ct, &real, Branch::CtHit, false)
                }
                Lookup::Stale => true,
                Lookup::Miss => false,
            };
            select_new::<PASSIVE>(ctx, &ip, settings, &vip, &key, stale, Track::Flow)
        } else {
            // A SYN creates no conntrack entry: it writes its RECENT_SYN
            // slot, and the flow's first non-SYN packet creates the entry
            // (see `flow::syn_record`, `flow::syn_take`).
            let track = if syn {
                Track::Syn
            } else if ip.key.proto == PROTO_TCP {
                Track::Segment
            } else {
                Track::Flow
            };
            select_new::<PASSIVE>(ctx, &ip, settings, &vip, &ip.key, stale, track)
        }
    } else if parse::is_icmp(ip.key.family, ip.key.proto) {
        let mut key = FlowKey::default();
        match parse::parse_icmp(ctx, &ip, &mut key) {
            Icmp::Error => {}
            Icmp::NotOurs => return pass(),
            Icmp::Broken => return bad(DropReason::BadIcmp, ip.key.family, &ip.key.dst),
        }
        // Only errors addressed to the VIP the quote came from are ours.
        if !parse::is_l4(key.proto) || key.dst != ip.key.dst {
            return pass();
        }
        // `key` is the quoted flow turned around into the client's
        // direction; follow it without creating conntrack state.
        if let Lookup::Hit { ct, real } = flow::lookup::<PASSIVE>(&key, false, 0) {
            return transmit(ctx, &ip, settings, &ct, &real, Branch::IcmpError, false);
        }
        let mut vk = VipKey {
            addr: key.dst,
            port: key.dport,
            proto: key.proto,
            family: key.family,
        };
        let Some(vip) = select::vip(settings, &mut vk) else {
            return pass();
        };
        if vip.flags & VIP_F_CLIENT_AFFINITY != 0 {
            key.sport = 0;
            key.dport = vk.port;
            if let Lookup::Hit { ct, real } = flow::lookup::<PASSIVE>(&key, false, 0) {
                return transmit(ctx, &ip, settings, &ct, &real, Branch::IcmpError, false);
            }
        }
        select_new::<PASSIVE>(ctx, &ip, settings, &vip, &key, false, Track::No)
    } else {
        pass()
    }
}

/// Whether and how a selected flow enters conntrack.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Track {
    /// An ICMP error: follows a flow, never creates one.
    No,
    /// A flow-affinity TCP SYN: no entry, unless its 5-tuple has one (port
    /// reuse), which it replaces, handshake-pending; else its
    /// `RECENT_SYN` slot.
    Syn,
    /// A flow-affinity TCP segment conntrack does not hold: its SYN's slot
    /// decides the backend if it is intact; it enters conntrack.
    Segment,
    /// Anything else: enters conntrack.
    Flow,
}

/// Selects a backend for a flow conntrack does not know (or whose backend
/// is gone) and sends the packet there.
#[inline(always)]
fn select_new<const PASSIVE: bool>(
    ctx: &XdpContext,
    ip: &Ip,
    settings: &Settings,
    vip: &VipInfo,
    key: &FlowKey,
    stale: bool,
    track: Track,
) -> u32 {
    if settings.flags & SETTINGS_F_READY == 0 {
        return stats::dropped(DropReason::NotReady);
    }
    let hash = flow_hash(key);
    let epoch = maps::ct_epoch();
    // A SYN's slot is loaded now and used at the end, so that its cache
    // miss overlaps the work in between.
    let syn_slot = if track == Track::Syn {
        flow::syn_slot_load(hash, epoch)
    } else {
        None
    };
    let mut stale = stale;
    let mut promoted = None;
    if track == Track::Segment && !stale {
        match flow::syn_take::<PASSIVE>(key, hash) {
            Promote::To(real_id, real) => promoted = Some((real_id, real)),
            Promote::Stale => stale = true,
            Promote::Unknown => {}
        }
    }
    let (real_id, real, branch) = match promoted {
        // The backend the SYN went to, whatever the table says now: a
        // table change between SYN and ACK does not move the handshake.
        Some((real_id, real)) => (real_id, real, Branch::SynPromoted),
        None => {
            // Only here, for a flow being selected, does the client's class
            // count.
            let table_id = class::table_id(vip, key);
            let (real_id, real) = match select::pick(settings, table_id, hash) {
                Ok(picked) => picked,
                Err(reason) => return stats::dropped(reason),
            };
            let branch = if track == Track::No {
                Branch::IcmpError
            } else if stale {
                Branch::Reselect
            } else {
                Branch::NewFlow
            };
            (real_id, real, branch)
        }
    };
    let mut ct = CtValue {
        real_id,
        real_generation: real.generation,
        // VIP ids are below `capacity::VIPS` (4096).
        vip_id: vip.vip_id as u16,
        flags: ct_epoch_flags(epoch),
        hash,
    };
    match track {
        Track::No => {}
        Track::Syn => {
            // The bucket's filter says whether conntrack may hold this
            // 5-tuple; if not, the SYN skips the lookup (a miss costs
            // most in a full table), and an old entry of the 5-tuple is
            // left to its next packet (`flow::lookup`).
            let maybe = syn_slot.as_ref().is_none_or(|slot| slot.maybe_tracked);
            // This CPU's flow cache may hold the 5-tuple only if its
            // filter bit is set: a cached copy lasts one tick, within the
            // epoch whose bit its conntrack hit found set (`flow::cached4`).
            if maybe && key.family == FAMILY_V4 {
                flow::uncache4(key);
            }
            match if maybe { flow::find(key) } else { None } {
                // Port reuse: the new connection replaces the old entry,
                // handshake-pending until the flow's next packet.
                Some(p) => {
                    if PASSIVE {
                        ct.flags |= CT_F_PENDING;
                    }
                    flow::syn_replace::<PASSIVE>(p, &ct);
                    flow::mark_tracked(hash, epoch);
                }
                None => flow::syn_record::<PASSIVE>(syn_slot, key, real_id, &real),
            }
        }
        Track::Segment => {
            flow::insert(key, &ct);
            flow::mark_tracked(hash, epoch);
        }
        Track::Flow => flow::insert(key, &ct),
    }
    // A promoted flow was counted as new at its SYN; an ICMP error is not
    // a flow.
    let new_flow = branch == Branch::NewFlow || branch == Branch::Reselect;
    transmit(ctx, ip, settings, &ct, &real, branch, new_flow)
}

/// Encapsulates toward `real` and counts the packet.
#[inline(always)]
fn transmit(
    ctx: &XdpContext,
    ip: &Ip,
    settings: &Settings,
    ct: &CtValue,
    real: &Real,
    branch: Branch,
    new_flow: bool,
) -> u32 {
    // The whole frame as received, fragments included.
    let bytes = parse::frame_len(ctx) as u64;
    if let Err(reason) = encap::encap(ctx, ip, real, settings, ct.hash) {
        // Too big for the MTU: answered with an ICMP too-big reply if it
        // may be (path-MTU discovery), dropped and counted otherwise.
        if reason == DropReason::TooBig {
            return icmp::too_big(ctx, real);
        }
        return stats::dropped(reason);
    }
    stats::branch(branch);
    stats::forwarded(ct.vip_id as u32, ct.real_id, bytes, new_flow);
    xdp_action::XDP_TX
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // Unreachable by construction: there are no panicking operations on the
    // packet path (all indexing is constant, all reads are bounds-checked).
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
