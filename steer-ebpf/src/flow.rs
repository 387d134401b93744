//! Flow keys and the connection table.

use steer_common::{
    bucket_age, ct_epoch_flags, ct_epoch_is, ct_epoch_of_tick, flow_cache_index, hash::flow_tag,
    syn_filter_bit, Branch, BucketAge, CtValue, FlowCacheSlot, FlowKey, FlowKey4, Real, SynBucket,
    SynSlot, CT_F_PENDING, FAMILY_V4, PROTO_TCP, REAL_F_DOWN, REAL_F_PRESENT, SYN_WAYS,
};

use crate::{
    maps::{syn_slot_mask, CONNTRACK4, CONNTRACK6, FLOW_CACHE4, REALS, RECENT_SYN},
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
///
/// With `completes`, a TCP entry written in another conntrack epoch than
/// the epoch of conntrack clock tick `tick` is refreshed first (see
/// [`refresh`]): a SYN of the same 5-tuple
/// that skipped its conntrack lookup (port reuse after the entry's filter
/// bit aged out) is followed, and the entry's filter bit is set again.
///
/// Also with `completes`, an IPv4 flow is looked for in this CPU's flow
/// cache first ([`cached4`]), and a conntrack hit is cached ([`cache4`]).
#[inline(always)]
pub fn lookup<const PASSIVE: bool>(key: &FlowKey, completes: bool, tick: u32) -> Lookup {
    let epoch = ct_epoch_of_tick(tick);
    let cache = completes && key.family == FAMILY_V4;
    if cache {
        if let Some((ct, real)) = cached4(key, tick) {
            return Lookup::Hit { ct, real };
        }
    }
    let Some(p) = ct_ptr(key) else {
        return Lookup::Miss;
    };
    // SAFETY: `p` comes from a successful lookup and points at a 16-byte
    // value that stays allocated while this program runs (RCU); the value
    // is copied out at once. An entry being evicted or overwritten
    // concurrently can at worst give us a stale copy, which the generation
    // check below rejects or which is simply one more hit.
    let mut ct = unsafe { *p };
    if completes && key.proto == PROTO_TCP && !ct_epoch_is(ct.flags, epoch) {
        match refresh::<PASSIVE>(p, key, &mut ct, epoch) {
            Promote::Unknown => {}
            Promote::To(_, real) => return Lookup::Hit { ct, real },
            Promote::Stale => return Lookup::Stale,
        }
    }
    match usable_real(ct.real_id, Some(ct.real_generation)) {
        Some(real) => {
            if PASSIVE && completes && ct.flags & CT_F_PENDING != 0 {
                // SAFETY: as above; a plain store into the value's own
                // flags field. Two CPUs racing here may both count (a
                // flow's packets normally stay on one CPU).
                unsafe { (*p).flags = ct.flags & !CT_F_PENDING };
                stats::handshake(ct.real_id);
            }
            if cache {
                cache4(key, &ct, tick);
            }
            Lookup::Hit { ct, real }
        }
        None => Lookup::Stale,
    }
}

/// This CPU's `FLOW_CACHE4` slot for IPv4 key `w` ([`FlowKey4::words`]).
#[inline(always)]
fn cache_slot(w: [u64; 2]) -> Option<*mut FlowCacheSlot> {
    FLOW_CACHE4.get_ptr_mut(flow_cache_index(w))
}

/// An established IPv4 flow from this CPU's flow cache: its entry as
/// `CONNTRACK4` held it when it was cached at tick `tick`, and its real if
/// that is still usable. A slot of the flow whose real is not usable any
/// more is cleared, so the conntrack lookup decides (and the flow does not
/// return to its old real if that one comes back).
#[inline(always)]
pub fn cached4(key: &FlowKey, tick: u32) -> Option<(CtValue, Real)> {
    let w = key.as_v4().words();
    let s = cache_slot(w)?;
    // SAFETY: `s` comes from a successful lookup of our own per-CPU array
    // and points at this CPU's whole, aligned slot, which only this CPU
    // writes (XDP runs with preemption off) and which stays allocated
    // while the program runs.
    let slot = unsafe { &mut *s };
    if slot.key.words() != w || slot.tick != tick {
        return None;
    }
    let ct = slot.ct();
    match usable_real(ct.real_id, Some(ct.real_generation)) {
        Some(real) => Some((ct, real)),
        None => {
            slot.key = FlowKey4::default();
            None
        }
    }
}

/// Caches a `CONNTRACK4` hit of IPv4 key `key` for tick `tick` (see
/// [`cached4`]).
#[inline(always)]
pub fn cache4(key: &FlowKey, ct: &CtValue, tick: u32) {
    let k = key.as_v4();
    let Some(s) = cache_slot(k.words()) else {
        return;
    };
    stats::branch(Branch::FlowCacheFill);
    // SAFETY: as in `cached4`: this CPU's own, whole, aligned slot.
    unsafe { *s = FlowCacheSlot::new(*k, ct, tick) };
}

/// Drops IPv4 key `key` from this CPU's flow cache: a TCP SYN of its
/// 5-tuple starts a new connection, whose backend conntrack or the SYN's
/// slot decides.
#[inline(always)]
pub fn uncache4(key: &FlowKey) {
    let w = key.as_v4().words();
    let Some(s) = cache_slot(w) else {
        return;
    };
    // SAFETY: as in `cached4`: this CPU's own, whole, aligned slot.
    unsafe {
        if (*s).key.words() == w {
            (*s).key = FlowKey4::default();
        }
    }
}

/// A client packet (not a SYN) of a TCP entry written in an older epoch:
/// once per flow and epoch, it sets the flow's filter bit and looks in its
/// `RECENT_SYN` bucket. A slot there with the flow's tag is a SYN
/// conntrack did not stop (the entry's filter bit had aged out, so the SYN
/// skipped its lookup): this packet is that new connection's, and it
/// follows the SYN as a first ACK does ([`syn_take`]): with
/// `Promote::To`, the entry (`p`, copied in `ct`) now names the SYN's
/// real. Otherwise the entry stands, now of `epoch`.
#[inline(always)]
fn refresh<const PASSIVE: bool>(
    p: *mut CtValue,
    key: &FlowKey,
    ct: &mut CtValue,
    epoch: u32,
) -> Promote {
    mark_tracked(ct.hash, epoch);
    let found = syn_take::<PASSIVE>(key, ct.hash);
    match found {
        Promote::To(real_id, real) => {
            ct.real_id = real_id;
            ct.real_generation = real.generation;
            ct.flags = ct_epoch_flags(epoch);
            // SAFETY: `p` comes from the successful lookup in `lookup` (RCU
            // keeps it allocated while this program runs); the whole value
            // is overwritten in place. A reader on another CPU may copy a
            // mix of old and new fields; a real id with another real's
            // generation fails its generation check and is re-selected.
            unsafe { *p = *ct };
        }
        Promote::Unknown => {
            ct.flags = (ct.flags & CT_F_PENDING) | ct_epoch_flags(epoch);
            // SAFETY: as above; one store into the value's own flags field.
            unsafe { (*p).flags = ct.flags };
        }
        Promote::Stale => {}
    }
    found
}

/// The conntrack entry of `key`, for a TCP SYN to overwrite (see
/// [`syn_replace`]). A plain lookup: no side effects.
#[inline(always)]
pub fn find(key: &FlowKey) -> Option<*mut CtValue> {
    ct_ptr(key)
}

/// The conntrack entry of `key`: IPv4 flows in `CONNTRACK4` (a 16-byte
/// key, read in place: the program's IPv4 keys start with it), IPv6 flows
/// in `CONNTRACK6`.
#[inline(always)]
fn ct_ptr(key: &FlowKey) -> Option<*mut CtValue> {
    if key.family == FAMILY_V4 {
        CONNTRACK4.get_ptr_mut(key.as_v4())
    } else {
        CONNTRACK6.get_ptr_mut(key)
    }
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

/// The `RECENT_SYN` bucket of a flow with hash `hash`.
#[inline(always)]
fn syn_bucket(hash: u32) -> Option<*mut SynBucket> {
    RECENT_SYN.get_ptr_mut(hash & syn_slot_mask())
}

/// Sets the filter bit of a flow with hash `hash` in its bucket `b` for
/// `epoch`, moving the bucket to `epoch` first if it is behind (its `cur`
/// becomes `prev` after one epoch, both are cleared after more). A CPU
/// still reading the previous epoch sets its bit in `cur`: more bits only
/// cost SYNs a lookup.
#[inline(always)]
fn mark(b: *mut SynBucket, hash: u32, epoch: u32) {
    let bit = syn_filter_bit(hash);
    // SAFETY: `b` comes from a successful lookup of our own array map
    // (`syn_bucket`) and points at a whole, 8-byte aligned `SynBucket` that
    // stays allocated while this program runs. Plain loads and stores of
    // whole aligned words: two CPUs writing the same bucket at the same
    // moment may lose one bit (docs/architecture.md, "The SYN path").
    unsafe {
        match bucket_age(epoch, (*b).epoch as u32) {
            BucketAge::Current => (*b).cur |= bit,
            BucketAge::Previous => {
                (*b).prev = (*b).cur;
                (*b).cur = bit;
                (*b).epoch = u64::from(epoch);
            }
            BucketAge::Older => {
                (*b).prev = 0;
                (*b).cur = bit;
                (*b).epoch = u64::from(epoch);
            }
        }
    }
}

/// Sets the filter bit of a TCP flow with hash `hash` that now has a
/// conntrack entry of epoch `epoch` (see `steer_common::SynBucket`).
#[inline(always)]
pub fn mark_tracked(hash: u32, epoch: u32) {
    if let Some(b) = syn_bucket(hash) {
        mark(b, hash, epoch);
    }
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

/// A SYN's `RECENT_SYN` bucket, loaded early (see [`syn_slot_load`]).
pub struct SlotRef {
    b: *mut SynBucket,
    /// Whether conntrack may hold the SYN's 5-tuple (see
    /// [`syn_slot_load`]).
    pub maybe_tracked: bool,
}

/// Loads the `RECENT_SYN` bucket of a SYN with flow hash `hash` in epoch
/// `epoch`. Called as soon as the hash is known, well before the slots are
/// used ([`syn_record`]): the load (usually a cache miss in a 16 MiB
/// array) then overlaps the table read in between, and the slots are read
/// from the cache then.
///
/// It also reads the bucket's filter: `maybe_tracked` is whether
/// conntrack may hold the 5-tuple, its filter bit set in a bucket of this
/// epoch or the one before. When false, an entry of the 5-tuple, if any,
/// was last written two epochs ago or earlier, and the flow's next packet
/// refreshes it (see [`lookup`]): the SYN may skip conntrack.
#[inline(always)]
pub fn syn_slot_load(hash: u32, epoch: u32) -> Option<SlotRef> {
    let b = syn_bucket(hash)?;
    // SAFETY: as in `load_way`: whole aligned words of a value of our own
    // array map; a concurrent writer gives the old word or the new.
    let (e, filter) = unsafe {
        (
            core::ptr::read_volatile(&raw const (*b).epoch) as u32,
            core::ptr::read_volatile(&raw const (*b).cur)
                | core::ptr::read_volatile(&raw const (*b).prev),
        )
    };
    // Older than the previous epoch: too old to count; ahead (a CPU still
    // on the previous epoch): counts.
    let recent = bucket_age(epoch, e) != BucketAge::Older;
    Some(SlotRef {
        b,
        maybe_tracked: recent && filter & syn_filter_bit(hash) != 0,
    })
}

/// A TCP SYN of a flow-affinity VIP whose 5-tuple conntrack does not hold:
/// no conntrack entry, one 8-byte store into a slot of its `RECENT_SYN`
/// bucket (`slot`, from [`syn_slot_load`]): the flow's tag and the real it
/// was sent to. The slot is the one that already holds the flow's tag (a
/// retransmitted SYN), else the bucket's oldest: the ways are written in
/// turn (`SynBucket::next`), so a pending SYN's slot survives the next
/// three SYNs of its bucket, whatever their tags. With `PASSIVE`, a slot that
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
    let p = slot.b.cast::<u64>();
    let tag = flow_tag(key);
    let mut mine = SYN_WAYS;
    let mut mine_v = 0;
    for way in 0..SYN_WAYS {
        let v = load_way(p, way);
        if (v >> 32) as u32 == tag {
            mine = way;
            mine_v = v;
        }
    }
    let way = if mine < SYN_WAYS {
        if PASSIVE {
            let old = SynSlot::unpack(mine_v);
            if let Some(r) = present_real(old.real_id) {
                if old.same_generation(r.generation) {
                    stats::repeated_syn(old.real_id);
                }
            }
        }
        mine
    } else {
        // Oldest first: under a flood every slot is taken, and a slot
        // chosen at random would lose a genuine handshake to the next
        // spoofed SYN one time in four.
        // SAFETY: `slot.b` comes from a successful lookup of our own array
        // map (`syn_bucket`) and points at a whole, 8-byte aligned
        // `SynBucket` that stays allocated while this program runs. Plain
        // loads and stores of one aligned word: two CPUs taking the same
        // bucket's next way at once write the same way, and one of the two
        // SYNs loses its slot (docs/architecture.md, "The SYN path").
        unsafe {
            let next =
                core::ptr::read_volatile(&raw const (*slot.b).next) as usize & (SYN_WAYS - 1);
            core::ptr::write_volatile(
                &raw mut (*slot.b).next,
                ((next + 1) & (SYN_WAYS - 1)) as u64,
            );
            next
        }
    };
    let new = SynSlot {
        tag,
        real_id,
        generation: real.generation,
    };
    store_way(p, way, new.pack());
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
    let Some(b) = syn_bucket(hash) else {
        return Promote::Unknown;
    };
    let p = b.cast::<u64>();
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
    let r = if key.family == FAMILY_V4 {
        CONNTRACK4.insert(key.as_v4(), v, 0)
    } else {
        CONNTRACK6.insert(key, v, 0)
    };
    if r.is_err() {
        stats::branch(Branch::CtInsertFailed);
    }
}
