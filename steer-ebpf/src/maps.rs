//! The program's maps. Layouts and meanings: docs/architecture.md.
//! Sizes here are placeholders that userspace overrides at load time from
//! the configuration (conntrack size, ring size, table and real counts).

use aya_ebpf::{
    bindings::{BPF_F_MMAPABLE, BPF_F_NO_COMMON_LRU},
    macros::map,
    maps::{Array, HashMap, LruHashMap, PerCpuArray},
};
use steer_common::{
    capacity, ring_values, AddrKey, Branch, Counters, CtValue, DropReason, FlowKey, Real, Settings,
    SourceMac, VipInfo, VipKey, RING_LANES, VIP_FILTER_WORDS,
};

#[map]
pub static SETTINGS: Array<Settings> = Array::with_max_entries(1, 0);

#[map]
pub static VIPS: HashMap<VipKey, VipInfo> = HashMap::with_max_entries(capacity::VIPS, 0);

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

#[map]
pub static CONNTRACK: LruHashMap<FlowKey, CtValue> =
    LruHashMap::with_max_entries(capacity::CONNTRACK, BPF_F_NO_COMMON_LRU);

#[map]
pub static VIP_STATS: PerCpuArray<Counters> = PerCpuArray::with_max_entries(capacity::VIPS, 0);

#[map]
pub static REAL_STATS: PerCpuArray<Counters> = PerCpuArray::with_max_entries(capacity::REALS, 0);

#[map]
pub static DROP_STATS: PerCpuArray<u64> =
    PerCpuArray::with_max_entries(DropReason::COUNT as u32, 0);

#[map]
pub static PATH_STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(Branch::COUNT as u32, 0);

/// Ingress ifindex (or `SOURCE_MAC_FALLBACK`) -> source MAC of transmitted
/// frames. Written by userspace at attach and from the config.
#[map]
pub static SOURCE_MACS: HashMap<u32, SourceMac> =
    HashMap::with_max_entries(capacity::SOURCE_MACS, 0);
