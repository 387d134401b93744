//! steer's XDP program: match VIPs, keep flows on their backend, select new
//! flows with Maglev, encapsulate and transmit. See docs/architecture.md.
#![no_std]
#![no_main]

mod bench;
mod encap;
mod flow;
mod maps;
mod parse;
mod select;
mod stats;

use aya_ebpf::{bindings::xdp_action, macros::xdp, programs::XdpContext};
use steer_common::{
    drop, hash::flow_hash, path, FlowKey, Settings, VipInfo, VipKey, SETTINGS_F_READY,
    VIP_F_CLIENT_AFFINITY,
};

use crate::{
    flow::Lookup,
    maps::SETTINGS,
    parse::{Icmp, Ip, L3},
};

#[xdp]
pub fn steer_xdp(ctx: XdpContext) -> u32 {
    steer(&ctx)
}

/// The benchmark floor: does nothing but bounce the frame.
#[xdp]
pub fn steer_floor(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_TX
}

/// Benchmark-only entry: restores the original packet (see `bench.rs`),
/// then runs the real program. Never attached to an interface.
#[xdp]
pub fn steer_bench(ctx: XdpContext) -> u32 {
    if bench::prepare(&ctx).is_none() {
        return xdp_action::XDP_ABORTED;
    }
    steer(&ctx)
}

/// Benchmark-only: the cost of `steer_bench`'s restore step on its own.
#[xdp]
pub fn steer_bench_restore(ctx: XdpContext) -> u32 {
    match bench::restore_only(&ctx) {
        Some(()) => xdp_action::XDP_TX,
        None => xdp_action::XDP_ABORTED,
    }
}

#[inline(always)]
fn pass() -> u32 {
    stats::branch(path::PASS);
    xdp_action::XDP_PASS
}

/// A packet we could not use: ours to drop if it was meant for a VIP
/// address, the kernel's otherwise.
#[inline(always)]
fn bad(reason: u32, family: u8, dst: &[u8; 16]) -> u32 {
    if select::is_vip_addr(family, dst) {
        stats::dropped(reason)
    } else {
        pass()
    }
}

#[inline(always)]
fn steer(ctx: &XdpContext) -> u32 {
    let mut ip = Ip::new();
    match parse::parse_l3(ctx, &mut ip) {
        L3::Ip => {}
        L3::Pass => return pass(),
        L3::Bad(reason) => return bad(reason, ip.key.family, &ip.key.dst),
    }
    let Some(settings) = SETTINGS.get(0) else {
        return pass();
    };
    if parse::is_l4(ip.key.proto) {
        if !parse::ports(ctx, &mut ip) {
            return bad(drop::TRUNCATED_L4, ip.key.family, &ip.key.dst);
        }
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
            let mut key = ip.key;
            key.sport = 0;
            key.dport = vk.port;
            forward(ctx, &ip, settings, &vip, &key, true)
        } else {
            forward(ctx, &ip, settings, &vip, &ip.key, true)
        }
    } else if parse::is_icmp(ip.key.family, ip.key.proto) {
        let mut key = FlowKey::default();
        match parse::parse_icmp(ctx, &ip, &mut key) {
            Icmp::Error => {}
            Icmp::NotOurs => return pass(),
            Icmp::Broken => return bad(drop::BAD_ICMP, ip.key.family, &ip.key.dst),
        }
        // Only errors addressed to the VIP the quote came from are ours.
        if !parse::is_l4(key.proto) || key.dst != ip.key.dst {
            return pass();
        }
        // The quoted packet came from the VIP: `key` is that flow turned
        // around into the client's direction.
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
        }
        forward(ctx, &ip, settings, &vip, &key, false)
    } else {
        pass()
    }
}

/// Chooses the backend for `key` and sends the packet there. `track` is
/// false for ICMP errors, which follow a flow but never create one.
#[inline(always)]
fn forward(
    ctx: &XdpContext,
    ip: &Ip,
    settings: &Settings,
    vip: &VipInfo,
    key: &FlowKey,
    track: bool,
) -> u32 {
    if settings.flags & SETTINGS_F_READY == 0 {
        return stats::dropped(drop::NOT_READY);
    }
    let bytes = (ctx.data_end() - ctx.data()) as u64;
    let hash = flow_hash(key);
    let (real_id, real, branch) = match flow::lookup(key) {
        Lookup::Hit { real_id, real } => (real_id, real, path::CT_HIT),
        found => {
            let Some((real_id, real)) = select::pick(settings, vip, hash) else {
                return stats::dropped(drop::NO_BACKEND);
            };
            let branch = if matches!(found, Lookup::Stale) {
                path::RESELECT
            } else {
                path::NEW_FLOW
            };
            if track {
                flow::remember(key, real_id, &real);
            }
            (real_id, real, branch)
        }
    };
    if let Err(reason) = encap::encap(ctx, ip, &real, settings, hash) {
        return stats::dropped(reason);
    }
    let new_flow = track && branch != path::CT_HIT;
    stats::branch(if track { branch } else { path::ICMP_ERROR });
    stats::forwarded(vip.vip_id, real_id, bytes, new_flow);
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
