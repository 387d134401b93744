//! Flow keys and the connection table.

use steer_common::{Branch, CtValue, FlowKey, Real, REAL_F_DOWN, REAL_F_PRESENT};

use crate::{
    maps::{CONNTRACK, REALS},
    stats,
};

/// What the connection table says about a flow.
pub enum Lookup {
    /// Known flow whose backend is still valid.
    Hit {
        ct: CtValue,
        real: Real,
    },
    /// Known flow whose backend went down or was removed.
    Stale,
    Miss,
}

/// Returns the real if `real_id` names a present, up backend of generation
/// `generation` (any generation when `generation` is `None`).
#[inline(always)]
pub fn usable_real(real_id: u32, generation: Option<u32>) -> Option<Real> {
    let real = *REALS.get(real_id)?;
    if real.flags & (REAL_F_PRESENT | REAL_F_DOWN) != REAL_F_PRESENT {
        return None;
    }
    match generation {
        Some(g) if g != real.generation => None,
        _ => Some(real),
    }
}

/// Returns the real if `real_id` names a present backend, up or down: a
/// table slot is trusted (panic and fail-open send new flows to backends
/// that are down).
#[inline(always)]
pub fn present_real(real_id: u32) -> Option<Real> {
    let real = *REALS.get(real_id)?;
    if real.flags & REAL_F_PRESENT == 0 {
        return None;
    }
    Some(real)
}

#[inline(always)]
pub fn lookup(key: &FlowKey) -> Lookup {
    // SAFETY: the value is copied out immediately; an LRU entry being
    // evicted concurrently can at worst give us a stale copy, which the
    // generation check below rejects or which is simply one more hit.
    let Some(ct) = (unsafe { CONNTRACK.get(key) }).copied() else {
        return Lookup::Miss;
    };
    match usable_real(ct.real_id, Some(ct.real_generation)) {
        Some(real) => Lookup::Hit { ct, real },
        None => Lookup::Stale,
    }
}

#[inline(always)]
pub fn remember(key: &FlowKey, real_id: u32, real: &Real, vip_id: u32, hash: u32) {
    let v = CtValue {
        real_id,
        real_generation: real.generation,
        vip_id,
        hash,
    };
    // A full table evicts the least recently used entry. An error here only
    // means the next packet of the flow is selected again by hash, which
    // picks the same backend while the table is unchanged; it is counted.
    if CONNTRACK.insert(key, v, 0).is_err() {
        stats::branch(Branch::CtInsertFailed);
    }
}
