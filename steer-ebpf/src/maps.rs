//! The program's maps. Layouts and meanings: docs/architecture.md.
//! Sizes here are placeholders that userspace overrides at load time from
//! the configuration (conntrack size, ring size, table and real counts).

use aya_ebpf::{
    bindings::{BPF_F_MMAPABLE, BPF_F_NO_PREALLOC},
    macros::map,
    maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, ProgramArray},
};
use steer_common::{
    capacity, ct_epoch_of_tick, ring_values, AddrKey, Branch, ClassRow, Counters, CtValue,
    DropReason, FlowCacheSlot, FlowKey, FlowKey4, Passive, Real, Settings, SourceMac, SynBucket,
    VipInfo, VipKey, VipSlot, CLASS_V4_LANES, FLOW_CACHE_SLOTS, RING_LANES, VIP_FILTER_WORDS,
    VIP_SLOTS as VIP_SLOTS_LEN,
};

#[map]
pub static SETTINGS: Array<Settings> = Array::with_max_entries(1, 0);

#[map]
pub static VIPS: HashMap<VipKey, VipInfo> = HashMap::with_max_entries(capacity::VIPS, 0);

/// A direct-mapped copy of `VIPS`, written by userspace through a shared
/// mapping under a sequence lock (see `steer_common::VipSlot`).
#[map]
pub static VIP_SLOTS: Array<VipSlot> = Array::with_max_entries(VIP_SLOTS_LEN, BPF_F_MMAPABLE);

#[map]
pub static VIP_ADDRS: HashMap<AddrKey, u32> = HashMap::with_max_entries(capacity::VIPS, 0);

#[map]
pub static VIP_FILTER: Array<u64> = Array::with_max_entries(VIP_FILTER_WORDS, 0);

#[map]
pub static REALS: Array<Real> = Array::with_max_entries(capacity::REALS, 0);

#[map]
pub static TABLE_GEN: Array<u32> = Array::with_max_entries(capacity::TABLES, BPF_F_MMAPABLE);

#[map]
pub static RINGS: Array<[u32; RING_LANES as usize]> = Array::with_max_entries(
    ring_values(capacity::TABLES, capacity::DEFAULT_RING_SIZE),
    BPF_F_MMAPABLE,
);

/// One LRU list shared by all CPUs (no `BPF_F_NO_COMMON_LRU`): inserts pop
/// from per-CPU free lists and rotate the shared list once per batch, so
/// they cost less than with per-CPU lists, and the whole table is
/// available to every CPU (per-CPU lists give each CPU 1/N of it and
/// evict early on a busy one). Measured in docs/benchmarks.md (issue 12),
/// also with two CPUs inserting at once.
///
/// Two maps, one per family: an IPv4 lookup hashes and compares a 16-byte
/// key (`FlowKey4`, the first bytes of the flow's `FlowKey`, see
/// `FlowKey::as_v4`), an IPv6 one the 40-byte `FlowKey`. Userspace sizes
/// them from `conntrack_size` and `conntrack_size_v6`.
#[map]
pub static CONNTRACK4: LruHashMap<FlowKey4, CtValue> =
    LruHashMap::with_max_entries(capacity::CONNTRACK, 0);

/// The IPv6 flows' conntrack; see `CONNTRACK4`.
#[map]
pub static CONNTRACK6: LruHashMap<FlowKey, CtValue> =
    LruHashMap::with_max_entries(capacity::CONNTRACK, 0);

/// Per CPU, a direct-mapped copy of recently hit `CONNTRACK4` entries
/// (`steer_common::FlowCacheSlot`), at `steer_common::flow_cache_index`.
/// Not pinned: a restarted program starts with it empty.
#[map]
pub static FLOW_CACHE4: PerCpuArray<FlowCacheSlot> =
    PerCpuArray::with_max_entries(FLOW_CACHE_SLOTS, 0);

/// Pending TCP SYNs (of flow-affinity VIPs), in buckets of `SYN_WAYS`
/// slots picked by `flow_hash & mask`; a slot is a packed
/// `steer_common::SynSlot` (tag, real id, generation), 0 when free. A SYN
/// writes a slot instead of a conntrack entry; the flow's first non-SYN
/// packet finds it there (see `flow::syn_record`, `flow::syn_take`). Sized
/// by userspace from the conntrack size (`steer_common::syn_buckets`),
/// which also sets `SYN_SLOT_MASK`.
///
/// `BPF_F_MMAPABLE` for its alignment, not for a mapping: the values of a
/// mmapable array start on a page boundary, so each 64-byte bucket is one
/// cache line and a SYN pays one miss. Otherwise they start 16 bytes into
/// a line and every bucket straddles two (profile loop, IPv4 SYN:
/// 258–264 → 251–252 ns).
#[map]
pub static RECENT_SYN: Array<SynBucket> = Array::with_max_entries(256, BPF_F_MMAPABLE);

/// The conntrack clock (`steer_common::ct_tick_at`), one `u32` the daemon
/// advances every 537 ms. Its epoch (`steer_common::ct_epoch_of_tick`,
/// every 4.3 s) ages `RECENT_SYN`'s filter (see `steer_common::SynBucket`);
/// a `FLOW_CACHE4` slot lasts one tick.
#[map]
pub static CT_CLOCK: Array<u32> = Array::with_max_entries(1, 0);

/// The current conntrack clock tick (0 before userspace writes one).
#[inline(always)]
pub fn ct_tick() -> u32 {
    CT_CLOCK.get(0).copied().unwrap_or(0)
}

/// The current conntrack epoch.
#[inline(always)]
pub fn ct_epoch() -> u32 {
    ct_epoch_of_tick(ct_tick())
}

/// `RECENT_SYN`'s bucket count minus one (a power of two minus one): a
/// read-only global that userspace sets at load time, so the verifier and
/// the JIT see a constant.
#[unsafe(no_mangle)]
static SYN_SLOT_MASK: u32 = 255;

/// [`SYN_SLOT_MASK`] as loaded.
#[inline(always)]
pub fn syn_slot_mask() -> u32 {
    // SAFETY: a volatile read of an initialised, immutable global, so the
    // compiler keeps the load (userspace rewrites the value at load time).
    unsafe { core::ptr::read_volatile(&SYN_SLOT_MASK) }
}

#[map]
pub static VIP_STATS: PerCpuArray<Counters> = PerCpuArray::with_max_entries(capacity::VIPS, 0);

#[map]
pub static REAL_STATS: PerCpuArray<Counters> = PerCpuArray::with_max_entries(capacity::REALS, 0);

/// Per real id: repeated SYNs and completed handshakes (see
/// `steer_common::Passive`). Sized like `REAL_STATS` by userspace.
#[map]
pub static PASSIVE_STATS: PerCpuArray<Passive> = PerCpuArray::with_max_entries(capacity::REALS, 0);

#[map]
pub static DROP_STATS: PerCpuArray<u64> =
    PerCpuArray::with_max_entries(DropReason::COUNT as u32, 0);

#[map]
pub static PATH_STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(Branch::COUNT as u32, 0);

/// Ingress ifindex below `SOURCE_MAC_SLOTS` (or `SOURCE_MAC_FALLBACK`) ->
/// source MAC of transmitted frames, all-zero for none. Written by
/// userspace at attach and from the config.
#[map]
pub static SOURCE_MACS: Array<SourceMac> = Array::with_max_entries(capacity::SOURCE_MACS, 0);

/// As `SOURCE_MACS`, for ingress ifindexes from `SOURCE_MAC_SLOTS` on.
#[map]
pub static SOURCE_MACS_HIGH: HashMap<u32, SourceMac> =
    HashMap::with_max_entries(capacity::SOURCE_MACS_HIGH, 0);

/// Client class per IPv4 /24: lane `p % 8` of value `p / 8` (see
/// `steer_common::class_v4_index`); 0 = no class. Written by userspace
/// through a shared memory mapping.
#[map]
pub static CLASS_V4: Array<[u8; CLASS_V4_LANES as usize]> =
    Array::with_max_entries(capacity::CLASS_V4, BPF_F_MMAPABLE);

/// Client class per IPv6 prefix (top 64 bits of the client address),
/// longest prefix wins. `LpmTrie` adds BPF_F_NO_PREALLOC.
#[map]
pub static CLASS_V6: LpmTrie<[u8; 8], u32> = LpmTrie::with_max_entries(capacity::CLASS_V6, 0);

/// Client class per exact IPv6 /48 (its six bytes) that holds no longer
/// prefix: one hash lookup, tried before the trie, which holds every other
/// prefix. Allocated as entries are added.
#[map]
pub static CLASS_V6_48: HashMap<[u8; 6], u32> =
    HashMap::with_max_entries(capacity::CLASS_V6_48, BPF_F_NO_PREALLOC);

/// Per VIP id, per class id: the class's table id + 1, or 0 for the VIP's
/// default table.
#[map]
pub static CLASS_TABLES: Array<ClassRow> = Array::with_max_entries(capacity::TABLES, 0);

/// Per CPU: the path-MTU reply rate limiter's state, the theoretical
/// arrival time (ns, `bpf_ktime_get_ns`) of the next reply (GCRA, the
/// token bucket as one number; see `icmp::allow`).
#[map]
pub static PMTU_BUCKET: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// The path-MTU reply programs, filled by userspace at load:
/// `PMTU_SLOT_OUTER_V4` -> `steer_pmtu4`, `PMTU_SLOT_OUTER_V6` ->
/// `steer_pmtu6`. An empty slot: too-big packets are dropped unanswered.
#[map]
pub static PMTU_PROGS: ProgramArray = ProgramArray::with_max_entries(2, 0);
