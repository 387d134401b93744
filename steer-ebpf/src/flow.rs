//! Flow keys and the connection table.

use aya_ebpf::bindings::BPF_NOEXIST;
use steer_common::{Branch, CtValue, FlowKey, Real, CT_F_PENDING, REAL_F_DOWN, REAL_F_PRESENT};

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

/// Looks a flow up. With `PASSIVE` and `completes` (a packet of the client
/// that is not a TCP SYN), a hit on a handshake-pending entry clears the
/// mark and counts one handshake for the entry's real: the client has seen
/// the backend's SYN-ACK. ICMP errors pass `completes = false`.
#[inline(always)]
pub fn lookup<const PASSIVE: bool>(key: &FlowKey, completes: bool) -> Lookup {
    let Some(p) = CONNTRACK.get_ptr_mut(key) else {
        return Lookup::Miss;
    };
    // SAFETY: `p` comes from a successful lookup and points at a 16-byte
    // value that stays allocated while this program runs (RCU); the value
    // is copied out at once. An entry being evicted or overwritten
    // concurrently can at worst give us a stale copy, which the generation
    // check below rejects or which is simply one more hit.
    let ct = unsafe { *p };
    match usable_real(ct.real_id, Some(ct.real_generation)) {
        Some(real) => {
            if PASSIVE && completes && ct.flags & CT_F_PENDING != 0 {
                // SAFETY: as above; a plain store into the value's own
                // flags field. Two CPUs racing here may both count (a
                // flow's packets normally stay on one CPU).
                unsafe { (*p).flags = ct.flags & !CT_F_PENDING };
                stats::handshake(ct.real_id);
            }
            Lookup::Hit { ct, real }
        }
        None => Lookup::Stale,
    }
}

/// Records the flow's backend in conntrack. An entry marked
/// `CT_F_PENDING` (with `PASSIVE`: a TCP SYN of a flow-affinity VIP) is
/// handshake-pending; if the 5-tuple already had an entry that was still
/// pending, the client's earlier SYN went unanswered, and that entry's real
/// gets one repeated SYN. The new selection replaces the entry either way
/// (port reuse opens a new connection).
#[inline(always)]
pub fn remember<const PASSIVE: bool>(key: &FlowKey, v: &CtValue) {
    if !PASSIVE || v.flags & CT_F_PENDING == 0 {
        insert(key, v);
        return;
    }
    // A new flow: one insert, as without the mark.
    if CONNTRACK.insert(key, v, BPF_NOEXIST as u64).is_ok() {
        return;
    }
    // The 5-tuple is known (a retransmitted SYN or port reuse), or the
    // insert failed for want of memory.
    let Some(p) = CONNTRACK.get_ptr_mut(key) else {
        // Gone in between (evicted), or never there: a plain insert.
        insert(key, v);
        return;
    };
    // SAFETY: `p` comes from a successful lookup of our own map and stays
    // allocated while this program runs (RCU); it points at a whole,
    // aligned `CtValue`. The old fields are read, then the value is
    // overwritten in place. A reader on another CPU at that moment may copy
    // a mix of both; a real id with another real's generation fails the
    // generation check and is re-selected.
    unsafe {
        if (*p).flags & CT_F_PENDING != 0 && still_holds((*p).real_id, (*p).real_generation) {
            stats::repeated_syn((*p).real_id);
        }
        *p = *v;
    }
}

/// Whether real `real_id` is still the backend of generation `generation`
/// (present, up or down): a repeated SYN is not counted against a backend
/// that reused the id of the one that took the first SYN.
#[inline(always)]
fn still_holds(real_id: u32, generation: u32) -> bool {
    present_real(real_id).is_some_and(|r| r.generation == generation)
}

#[inline(always)]
fn insert(key: &FlowKey, v: &CtValue) {
    // A full table evicts the least recently used entry. An error here only
    // means the next packet of the flow is selected again by hash, which
    // picks the same backend while the table is unchanged; it is counted.
    if CONNTRACK.insert(key, v, 0).is_err() {
        stats::branch(Branch::CtInsertFailed);
    }
}
