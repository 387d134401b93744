//! Flow keys and the connection table.

use steer_common::{
    hash::flow_tag, Branch, CtValue, FlowKey, Real, SynBucket, SynSlot, CT_F_PENDING, REAL_F_DOWN,
    REAL_F_PRESENT, SYN_WAYS,
};

use crate::{
    maps::{syn_slot_mask, CONNTRACK, REALS, RECENT_SYN},
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

/// The conntrack entry of `key`, for a TCP SYN to overwrite (see
/// [`syn_replace`]). A plain lookup: no side effects.
#[inline(always)]
pub fn find(key: &FlowKey) -> Option<*mut CtValue> {
    CONNTRACK.get_ptr_mut(key)
}

/// A TCP SYN whose 5-tuple conntrack holds (client port reuse, or the
/// retransmitted SYN of such a connection): the new selection `v` replaces
/// the entry in place, handshake-pending with `PASSIVE`. If the old entry
/// was still pending on a backend that still holds its generation, the
/// client's earlier SYN went unanswered: one repeated SYN for that real.
#[inline(always)]
pub fn syn_replace<const PASSIVE: bool>(p: *mut CtValue, v: &CtValue) {
    // SAFETY: `p` comes from a successful lookup of our own map (`find`)
    // in this run of the program and stays allocated while it runs (RCU);
    // it points at a whole, aligned `CtValue`. The old fields are read,
    // then the value is overwritten in place. A reader on another CPU at
    // that moment may copy a mix of both; a real id with another real's
    // generation fails the generation check and is re-selected.
    unsafe {
        if PASSIVE
            && (*p).flags & CT_F_PENDING != 0
            && still_holds((*p).real_id, (*p).real_generation)
        {
            stats::repeated_syn((*p).real_id);
        }
        *p = *v;
    }
}

/// The `RECENT_SYN` bucket of a flow with hash `hash`, as a pointer to its
/// first slot.
#[inline(always)]
fn syn_bucket(hash: u32) -> Option<*mut u64> {
    let p: *mut SynBucket = RECENT_SYN.get_ptr_mut(hash & syn_slot_mask())?;
    Some(p.cast::<u64>())
}

/// Slot `way` (below `SYN_WAYS`) of the bucket at `p`, one aligned 8-byte
/// load.
#[inline(always)]
fn load_way(p: *mut u64, way: usize) -> u64 {
    // SAFETY: `p` comes from a successful lookup of our own array map
    // (`syn_bucket`) and points at a whole, 8-byte aligned `SynBucket` that
    // stays allocated while this program runs; `way & (SYN_WAYS - 1)` stays
    // inside it. An aligned 8-byte load is atomic, so a slot another CPU
    // writes at the same time is read whole, old or new.
    unsafe { core::ptr::read_volatile(p.add(way & (SYN_WAYS - 1))) }
}

/// Stores `v` into slot `way` of the bucket at `p`.
#[inline(always)]
fn store_way(p: *mut u64, way: usize, v: u64) {
    // SAFETY: as in `load_way`; one aligned 8-byte store, atomic on every
    // architecture BPF runs on.
    unsafe { core::ptr::write_volatile(p.add(way & (SYN_WAYS - 1)), v) }
}

/// A SYN's `RECENT_SYN` bucket and what it held when loaded.
pub struct SlotRef {
    p: *mut u64,
    old: SynBucket,
}

/// Loads the `RECENT_SYN` bucket of a SYN with flow hash `hash`. Called as
/// soon as the hash is known, well before the values are used
/// ([`syn_record`]): the load (usually a cache miss in an 8 MiB array)
/// then overlaps the table read and the conntrack lookup in between.
#[inline(always)]
pub fn syn_slot_load(hash: u32) -> Option<SlotRef> {
    let p = syn_bucket(hash)?;
    let mut old = [0u64; SYN_WAYS];
    for (way, v) in old.iter_mut().enumerate() {
        *v = load_way(p, way);
    }
    Some(SlotRef { p, old })
}

/// A TCP SYN of a flow-affinity VIP whose 5-tuple conntrack does not hold:
/// no conntrack entry, one 8-byte store into a slot of its `RECENT_SYN`
/// bucket (`slot`, from [`syn_slot_load`]): the flow's tag and the real it
/// was sent to. The slot is the one that already holds the flow's tag,
/// else a free one, else one picked by the tag. With `PASSIVE`, a slot that
/// already held this flow's tag, naming a real that still holds its
/// generation, means the client's earlier SYN went unanswered: one repeated
/// SYN for that real.
#[inline(always)]
pub fn syn_record<const PASSIVE: bool>(
    slot: Option<SlotRef>,
    key: &FlowKey,
    real_id: u32,
    real: &Real,
) {
    let Some(slot) = slot else {
        return;
    };
    let tag = flow_tag(key);
    let mut mine = SYN_WAYS;
    let mut free = SYN_WAYS;
    for (way, v) in slot.old.iter().enumerate() {
        if (*v >> 32) as u32 == tag {
            mine = way;
        } else if *v == 0 && free == SYN_WAYS {
            free = way;
        }
    }
    let way = if mine < SYN_WAYS {
        if PASSIVE {
            let old = SynSlot::unpack(slot.old[mine & (SYN_WAYS - 1)]);
            if let Some(r) = present_real(old.real_id) {
                if old.same_generation(r.generation) {
                    stats::repeated_syn(old.real_id);
                }
            }
        }
        mine
    } else if free < SYN_WAYS {
        free
    } else {
        // A full bucket (a flood, or many handshakes at once): evict a
        // slot chosen by the tag's bits, so spoofed SYNs spread evenly.
        (tag >> 1) as usize
    };
    let new = SynSlot {
        tag,
        real_id,
        generation: real.generation,
    };
    store_way(slot.p, way, new.pack());
}

/// What a TCP segment conntrack does not hold finds in its SYN's bucket.
pub enum Promote {
    /// Its SYN's slot, intact: the real the SYN went to, still usable.
    To(u32, Real),
    /// Its SYN's slot, but that real went down or was replaced.
    Stale,
    /// No slot with its tag (another SYN took it, or none was written):
    /// select by hash.
    Unknown,
}

/// The first non-SYN packet of a TCP connection (a conntrack miss): if its
/// bucket still holds its SYN, that slot is freed and, with `PASSIVE`, the
/// real the SYN went to counts one completed handshake.
#[inline(always)]
pub fn syn_take<const PASSIVE: bool>(key: &FlowKey, hash: u32) -> Promote {
    let Some(p) = syn_bucket(hash) else {
        return Promote::Unknown;
    };
    let tag = flow_tag(key);
    let mut found = None;
    for way in 0..SYN_WAYS {
        let v = load_way(p, way);
        if (v >> 32) as u32 == tag {
            found = Some((way, v));
            break;
        }
    }
    let Some((way, raw)) = found else {
        return Promote::Unknown;
    };
    // A SYN of another flow racing on another CPU may lose its slot: its
    // ACK is then selected by hash (the same backend while the table is
    // unchanged).
    store_way(p, way, 0);
    let slot = SynSlot::unpack(raw);
    match usable_real(slot.real_id, None) {
        Some(real) if slot.same_generation(real.generation) => {
            if PASSIVE {
                stats::handshake(slot.real_id);
            }
            Promote::To(slot.real_id, real)
        }
        _ => Promote::Stale,
    }
}

/// Whether real `real_id` is still the backend of generation `generation`
/// (present, up or down): a repeated SYN is not counted against a backend
/// that reused the id of the one that took the first SYN.
#[inline(always)]
fn still_holds(real_id: u32, generation: u32) -> bool {
    present_real(real_id).is_some_and(|r| r.generation == generation)
}

/// Records the flow's backend in conntrack (replacing any entry).
#[inline(always)]
pub fn insert(key: &FlowKey, v: &CtValue) {
    // A full table evicts the least recently used entry. An error here only
    // means the next packet of the flow is selected again by hash, which
    // picks the same backend while the table is unchanged; it is counted.
    if CONNTRACK.insert(key, v, 0).is_err() {
        stats::branch(Branch::CtInsertFailed);
    }
}
