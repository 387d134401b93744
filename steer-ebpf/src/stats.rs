//! Per-CPU counters. The only per-packet bookkeeping: no logging.

use steer_common::{Branch, DropReason};

use crate::maps::{DROP_STATS, PASSIVE_STATS, PATH_STATS, REAL_STATS, VIP_STATS};

#[inline(always)]
fn bump(map: &aya_ebpf::maps::PerCpuArray<u64>, idx: u32) {
    if let Some(p) = map.get_ptr_mut(idx) {
        // SAFETY: the pointer comes from a successful lookup of a per-CPU
        // slot, which only this CPU writes while this program runs.
        unsafe { *p += 1 };
    }
}

#[inline(always)]
pub fn branch(which: Branch) {
    bump(&PATH_STATS, which.index());
}

#[inline(always)]
pub fn dropped(reason: DropReason) -> u32 {
    bump(&DROP_STATS, reason.index());
    bump(&PATH_STATS, Branch::Drop.index());
    aya_ebpf::bindings::xdp_action::XDP_DROP
}

#[inline(always)]
pub fn forwarded(vip_id: u32, real_id: u32, bytes: u64, new_flow: bool) {
    let add = if new_flow { 1 } else { 0 };
    if let Some(c) = VIP_STATS.get_ptr_mut(vip_id) {
        // SAFETY: per-CPU slot from a successful lookup; see `bump`.
        unsafe {
            (*c).packets += 1;
            (*c).bytes += bytes;
            (*c).new_flows += add;
        }
    }
    if let Some(c) = REAL_STATS.get_ptr_mut(real_id) {
        // SAFETY: per-CPU slot from a successful lookup; see `bump`.
        unsafe {
            (*c).packets += 1;
            (*c).bytes += bytes;
            (*c).new_flows += add;
        }
    }
}

/// One repeated SYN against real `real_id` (see `steer_common::Passive`).
#[inline(always)]
pub fn repeated_syn(real_id: u32) {
    if let Some(c) = PASSIVE_STATS.get_ptr_mut(real_id) {
        // SAFETY: per-CPU slot from a successful lookup; see `bump`.
        unsafe { (*c).repeated_syns += 1 };
    }
}

/// One completed handshake of real `real_id` (see `steer_common::Passive`).
#[inline(always)]
pub fn handshake(real_id: u32) {
    if let Some(c) = PASSIVE_STATS.get_ptr_mut(real_id) {
        // SAFETY: per-CPU slot from a successful lookup; see `bump`.
        unsafe { (*c).handshakes += 1 };
    }
}
