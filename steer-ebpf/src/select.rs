//! VIP matching and Maglev selection.

use steer_common::{
    ring_index, vip_filter_bit, vip_slot_of, AddrKey, DropReason, Real, Settings, VipInfo, VipKey,
    NO_REAL, RESIDENCY_DROP, RING_LANES, SETTINGS_F_PORT0_VIPS,
};

use crate::{
    flow::present_real,
    maps::{RINGS, TABLE_GEN, VIPS, VIP_ADDRS, VIP_FILTER, VIP_SLOTS},
};

/// Finds the VIP for `(addr, port, proto)`, then `(addr, 0, proto)` when
/// port-0 VIPs exist. Returns the matched key's port with the VIP.
#[inline(always)]
pub fn vip(settings: &Settings, key: &mut VipKey) -> Option<VipInfo> {
    if let Some(v) = find_vip(key) {
        return Some(v);
    }
    if settings.flags & SETTINGS_F_PORT0_VIPS == 0 {
        return None;
    }
    key.port = 0;
    find_vip(key)
}

/// The VIP of exactly `key`: from its `VIP_SLOTS` slot if that holds it
/// (an inlined array lookup), else from `VIPS` (a hash lookup).
#[inline(always)]
fn find_vip(key: &VipKey) -> Option<VipInfo> {
    if let Some(v) = slot_vip(key) {
        return Some(v);
    }
    // SAFETY: the value is copied out before the map can change under us.
    unsafe { VIPS.get(*key) }.copied()
}

/// `VIP_SLOTS[vip_slot_index(key)]`'s value if the slot holds `key` and
/// was not being written while it was read (see `steer_common::VipSlot`).
#[inline(always)]
fn slot_vip(key: &VipKey) -> Option<VipInfo> {
    let k = key.words();
    let p = VIP_SLOTS.get_ptr(vip_slot_of(&k))?.cast::<u32>();
    // SAFETY: `p` comes from a successful lookup of our own array map and
    // points at a whole, 4-byte aligned `VipSlot` (10 words: seq, the key's
    // five, the value's four) that stays allocated while this program
    // runs. Each word is one aligned 4-byte load, in program order
    // (volatile); a slot userspace writes meanwhile changes `seq`.
    unsafe {
        let at = |i: usize| core::ptr::read_volatile(p.add(i));
        let seq = at(0);
        let same_key = (0..5).all(|i| at(1 + i) == k[i]);
        if seq & 1 != 0 || !same_key {
            return None;
        }
        let v = VipInfo {
            vip_id: at(6),
            table_id: at(7),
            flags: at(8),
            _pad: 0,
        };
        if at(0) != seq {
            return None;
        }
        Some(v)
    }
}

/// False when no VIP can live on `addr` (its `VIP_FILTER` bit is clear):
/// one inlined array lookup, so most foreign traffic passes cheaply.
#[inline(always)]
pub fn maybe_vip(addr: &[u8; 16]) -> bool {
    let bit = vip_filter_bit(addr);
    match VIP_FILTER.get(bit >> 6) {
        Some(w) => *w & (1u64 << (bit & 63)) != 0,
        None => true,
    }
}

/// Whether any VIP lives on this address (for malformed packets and
/// fragments, whose ports we cannot trust).
#[inline(always)]
pub fn is_vip_addr(family: u8, addr: &[u8; 16]) -> bool {
    let k = AddrKey {
        addr: *addr,
        family: family.into(),
    };
    VIP_ADDRS.get_ptr(k).is_some()
}

/// Picks a backend from the active ring of table `table_id` for a flow
/// with `hash`. The table is trusted: a slot may name a backend that is
/// down (panic, fail-open), and it gets the flow. `NO_REAL` drops the flow
/// as `no_backend`, `RESIDENCY_DROP` as `residency`.
#[inline(always)]
pub fn pick(settings: &Settings, table_id: u32, hash: u32) -> Result<(u32, Real), DropReason> {
    let size = settings.ring_size;
    if size == 0 {
        return Err(DropReason::NoBackend);
    }
    // One aligned word: the generation userspace flipped last.
    let Some(generation) = TABLE_GEN.get(table_id) else {
        return Err(DropReason::NoBackend);
    };
    let slot = hash % size;
    let flat = ring_index(table_id, *generation, size, slot);
    let Some(lanes) = RINGS.get(flat / RING_LANES) else {
        return Err(DropReason::NoBackend);
    };
    let real_id = lanes[(flat % RING_LANES) as usize];
    if real_id == RESIDENCY_DROP {
        return Err(DropReason::Residency);
    }
    if real_id == NO_REAL {
        return Err(DropReason::NoBackend);
    }
    match present_real(real_id) {
        Some(real) => Ok((real_id, real)),
        None => Err(DropReason::NoBackend),
    }
}
