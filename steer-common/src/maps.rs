//! Map keys, values and constants shared with the XDP program.
//!
//! See `docs/architecture.md` for how the maps fit together.

/// Address family tags used in keys and values.
pub const FAMILY_V4: u8 = 4;
pub const FAMILY_V6: u8 = 6;

pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;
pub const PROTO_ICMP: u8 = 1;
pub const PROTO_ICMPV6: u8 = 58;
pub const PROTO_IPIP: u8 = 4;
pub const PROTO_IPV6: u8 = 41;

/// Marks a ring slot that has no backend (empty table): the flow is
/// dropped as `no_backend`.
pub const NO_REAL: u32 = u32::MAX;

/// Marks a ring slot whose flows may not be served anywhere their client
/// class allows (data residency, fail closed): the flow is dropped as
/// `residency`, never sent elsewhere.
pub const RESIDENCY_DROP: u32 = u32::MAX - 1;

/// Map names, as the XDP program declares them.
pub mod names {
    pub const SETTINGS: &str = "SETTINGS";
    pub const VIPS: &str = "VIPS";
    pub const VIP_ADDRS: &str = "VIP_ADDRS";
    pub const VIP_FILTER: &str = "VIP_FILTER";
    pub const REALS: &str = "REALS";
    pub const RINGS: &str = "RINGS";
    pub const TABLE_GEN: &str = "TABLE_GEN";
    /// Conntrack of IPv4 flows (16-byte `FlowKey4` keys).
    pub const CONNTRACK4: &str = "CONNTRACK4";
    /// Conntrack of IPv6 flows (40-byte `FlowKey` keys).
    pub const CONNTRACK6: &str = "CONNTRACK6";
    /// The one conntrack map of a steer before the per-family maps, with
    /// the addresses first in its 40-byte key. Only its pin is known: its
    /// entries are moved into `CONNTRACK4` and `CONNTRACK6` at start.
    pub const LEGACY_CONNTRACK: &str = "CONNTRACK";
    pub const VIP_STATS: &str = "VIP_STATS";
    pub const REAL_STATS: &str = "REAL_STATS";
    pub const PASSIVE_STATS: &str = "PASSIVE_STATS";
    pub const DROP_STATS: &str = "DROP_STATS";
    pub const PATH_STATS: &str = "PATH_STATS";
    pub const SOURCE_MACS: &str = "SOURCE_MACS";
    pub const SOURCE_MACS_HIGH: &str = "SOURCE_MACS_HIGH";
    pub const CLASS_V4: &str = "CLASS_V4";
    pub const CLASS_V6: &str = "CLASS_V6";
    pub const CLASS_V6_48: &str = "CLASS_V6_48";
    pub const CLASS_TABLES: &str = "CLASS_TABLES";
    /// The direct-mapped copy of `VIPS` (see `VipSlot`). Not pinned:
    /// every load makes it and fills it from the plan.
    pub const VIP_SLOTS: &str = "VIP_SLOTS";
    pub const RECENT_SYN: &str = "RECENT_SYN";
    /// The conntrack epoch (one `u32`), advanced by the daemon. Not
    /// pinned: every load writes it.
    pub const CT_CLOCK: &str = "CT_CLOCK";
    /// The program's load-time constant: `RECENT_SYN` buckets - 1.
    pub const SYN_SLOT_MASK: &str = "SYN_SLOT_MASK";
    /// The data-plane entry point.
    pub const PROG_STEER: &str = "steer_xdp";
    /// A program that only returns `XDP_TX`: the benchmark floor.
    pub const PROG_FLOOR: &str = "steer_floor";
    /// Benchmark-only entry: restores the original packet, then `steer_xdp`.
    pub const PROG_BENCH: &str = "steer_bench";
    /// Benchmark-only: `steer_bench` without the passive health counting,
    /// to measure what that costs.
    pub const PROG_BENCH_NOPASSIVE: &str = "steer_bench_nopassive";
    /// Benchmark-only: the restore step alone (see `bench` in the program).
    pub const PROG_BENCH_RESTORE: &str = "steer_bench_restore";
    pub const BENCH: &str = "BENCH";
    /// The path-MTU reply programs (tail-called from `steer_xdp`).
    pub const PROG_PMTU4: &str = "steer_pmtu4";
    pub const PROG_PMTU6: &str = "steer_pmtu6";
    /// Their program array, and the reply rate limiter's per-CPU state.
    /// Neither is pinned: every load makes and fills its own.
    pub const PMTU_PROGS: &str = "PMTU_PROGS";
    pub const PMTU_BUCKET: &str = "PMTU_BUCKET";
}

/// Compile-time map capacities. Sizes that depend on configuration
/// (conntrack, rings, reals, tables) are overridden by userspace at load time.
pub mod capacity {
    pub const VIPS: u32 = 4096;
    pub const REALS: u32 = 65536;
    pub const TABLES: u32 = 128;
    pub const CONNTRACK: u32 = 1 << 20;
    pub const DEFAULT_RING_SIZE: u32 = 65537;
    /// `SOURCE_MACS` slots, indexed by ingress ifindex: the fallback
    /// (index 0) and every interface whose ifindex is below this (8 bytes
    /// each, 512 KiB).
    pub const SOURCE_MACS: u32 = crate::SOURCE_MAC_SLOTS;
    /// `SOURCE_MACS_HIGH` entries: attached interfaces whose ifindex is
    /// [`crate::SOURCE_MAC_SLOTS`] or more.
    pub const SOURCE_MACS_HIGH: u32 = 256;
    /// `CLASS_V4` values: one lane per IPv4 /24 (see [`crate::CLASS_V4_LANES`]).
    pub const CLASS_V4: u32 = crate::CLASS_V4_VALUES;
    /// `CLASS_V6` prefixes (the map allocates entries as they are added).
    pub const CLASS_V6: u32 = 1 << 20;
    /// `CLASS_V6_48` /48 prefixes (allocated as they are added).
    pub const CLASS_V6_48: u32 = 1 << 21;
}

/// Key of `VIPS`: one virtual service. `port` 0 matches every port.
#[repr(C, align(4))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct VipKey {
    /// IPv4 addresses use the first four bytes; the rest are zero.
    pub addr: [u8; 16],
    /// Wire order (see [`crate::port_to_wire`]).
    pub port: u16,
    pub proto: u8,
    pub family: u8,
}

/// `VipInfo::flags`: hash on the client address only (client affinity).
pub const VIP_F_CLIENT_AFFINITY: u32 = 1;
/// `VipInfo::flags`: a new flow's table depends on its client's class
/// (`CLASS_V4`/`CLASS_V6`, then `CLASS_TABLES[vip_id]`).
pub const VIP_F_CLASSES: u32 = 2;

/// Client classes are numbered 1..=255; 0 means "no class" (the VIP's
/// default table).
pub const CLASS_NONE: u8 = 0;
/// Entries of a `CLASS_TABLES` row: one per class id (entry 0 unused).
pub const CLASS_SLOTS: usize = 256;

/// `CLASS_V4` stores one class id (a byte) per IPv4 /24, eight to a map
/// value (an array map rounds each value up to 8 bytes). The class of
/// `a.b.c.d` is lane `p % 8` of value `p / 8`, `p = a << 16 | b << 8 | c`,
/// which is also byte `p` of the memory-mapped map.
pub const CLASS_V4_LANES: u32 = 8;
/// `CLASS_V4` values: 2^24 /24 prefixes, eight per value (16 MiB).
pub const CLASS_V4_VALUES: u32 = (1 << 24) / CLASS_V4_LANES;

/// The `CLASS_V4` index (the /24 prefix number) of an IPv4 address.
#[inline(always)]
pub const fn class_v4_index(addr: [u8; 4]) -> u32 {
    (addr[0] as u32) << 16 | (addr[1] as u32) << 8 | addr[2] as u32
}

/// The longest IPv4 class prefix (`CLASS_V4` has one entry per /24).
pub const CLASS_V4_MAX_LEN: u8 = 24;
/// The longest IPv6 class prefix the data plane supports (the trie's keys
/// hold the top 64 bits; Route 53 stops at /48).
pub const CLASS_V6_MAX_LEN: u8 = 64;

/// Key of `CLASS_V6`, an LPM trie: `prefixlen` bits (0..=64) of `addr`, the
/// top 64 bits of the client's IPv6 address in wire order.
#[repr(C, align(4))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ClassV6Key {
    pub prefixlen: u32,
    pub addr: [u8; 8],
}

/// Value of `CLASS_TABLES[vip_id]`: per class id, `table_id + 1` of the
/// class's own table, or 0 for the VIP's default table
/// (`VipInfo::table_id`). Entry 0 (no class) is always 0.
pub type ClassRow = [u32; CLASS_SLOTS];

/// Value of `VIPS`.
#[repr(C, align(4))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VipInfo {
    /// Index into `VIP_STATS`.
    pub vip_id: u32,
    /// Index of the selection table (see `TABLE_GEN` and `RINGS`).
    pub table_id: u32,
    pub flags: u32,
    pub _pad: u32,
}

/// `VIP_SLOTS` entries: a direct-mapped copy of `VIPS` (twice the most
/// VIPs there can be, so few share a slot), 40 bytes each.
pub const VIP_SLOTS: u32 = 8192;

/// A `VIP_SLOTS` entry: one VIP of `VIPS` at index [`vip_slot_index`] of
/// its key, found with one inlined array lookup instead of a hash lookup
/// (~12 ns less for every new flow, see docs/benchmarks.md). `VIPS` stays
/// the authority: a VIP whose slot holds another VIP (two keys of one
/// index) is found there, and so is every VIP while its slot is written.
///
/// Userspace writes a slot through a shared mapping as a sequence lock:
/// `seq` odd, then the key and the value, then `seq` even again. The
/// program reads `seq`, the fields and `seq` again, and uses the slot only
/// when both reads gave the same even number (x86 keeps loads in order and
/// stores in order). An empty slot has `family` 0, which no key has.
#[repr(C, align(4))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VipSlot {
    pub seq: u32,
    pub key: VipKey,
    pub info: VipInfo,
}

impl VipKey {
    /// The key as the five 32-bit words of its layout in memory (the
    /// address's four, then port, proto and family): how a `VipSlot`
    /// holds it.
    #[inline(always)]
    pub fn words(&self) -> [u32; 5] {
        // SAFETY: `VipKey` is 20 bytes of plain integers with no padding
        // (16 + 2 + 1 + 1), so every byte is initialised and `[u32; 5]`
        // has the same size; in the program, one load per word instead of
        // four byte loads, shifts and spills.
        unsafe { core::mem::transmute::<VipKey, [u32; 5]>(*self) }
    }
}

impl VipSlot {
    /// The slot as the ten 32-bit words of its layout: `seq`, the key's
    /// five ([`VipKey::words`]), the value's four.
    pub fn words(&self) -> [u32; 10] {
        let k = self.key.words();
        let i = &self.info;
        [
            self.seq, k[0], k[1], k[2], k[3], k[4], i.vip_id, i.table_id, i.flags, i._pad,
        ]
    }
}

/// The `VIP_SLOTS` index of a VIP key.
#[inline(always)]
pub fn vip_slot_index(key: &VipKey) -> u32 {
    vip_slot_of(&key.words())
}

/// The `VIP_SLOTS` index of a VIP key given as its [`VipKey::words`]: the
/// words folded together, then a multiplicative hash (one
/// multiplication), the top bits. The program, which compares the slot's
/// key word by word, computes the words once for both.
#[inline(always)]
pub fn vip_slot_of(k: &[u32; 5]) -> u32 {
    let x = k[0] ^ k[1].rotate_left(8) ^ k[2].rotate_left(16) ^ k[3].rotate_left(24) ^ k[4];
    x.wrapping_mul(0x9e37_79b1) >> (32 - VIP_SLOTS.trailing_zeros())
}

/// Key of `VIP_ADDRS`: any address that carries at least one VIP. Used only
/// to decide whether a malformed packet or a fragment was meant for us.
#[repr(C, align(4))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct AddrKey {
    pub addr: [u8; 16],
    /// The family, as a whole word: the same bytes as a `u8` family and
    /// three zero bytes (little-endian, as BPF and the host are). A word,
    /// so that the program writes the key with aligned stores only (see
    /// `steer-ebpf/build.rs`).
    pub family: u32,
}

/// `VIP_FILTER` is a 65,536-bit bitmap (1,024 `u64` words) with a bit set
/// for every VIP address: a clear bit lets traffic for other addresses pass
/// after one inlined array lookup, before any hash-map lookup.
pub const VIP_FILTER_WORDS: u32 = 1024;

/// The `VIP_FILTER` bit (0..65536) of an address.
#[inline(always)]
pub fn vip_filter_bit(addr: &[u8; 16]) -> u32 {
    let w = |i: usize| u32::from_ne_bytes([addr[i], addr[i + 1], addr[i + 2], addr[i + 3]]);
    let x = w(0) ^ w(4) ^ w(8) ^ w(12);
    (x ^ (x >> 16)) & 0xffff
}

/// `Real::flags`: the slot holds a backend.
pub const REAL_F_PRESENT: u8 = 1;
/// `Real::flags`: the backend is down; its flows are re-selected.
pub const REAL_F_DOWN: u8 = 2;

/// Value of `REALS`: one backend of one service, indexed by real id.
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Real {
    pub addr: [u8; 16],
    pub family: u8,
    pub flags: u8,
    pub _pad: [u8; 2],
    /// Bumped whenever the slot is reused, so stale conntrack entries that
    /// point at the slot are re-selected instead of following the new owner.
    pub generation: u32,
}

/// Key of `CONNTRACK6`, and the input of the flow hash.
///
/// The ports, protocol and family come first, so that the first 16 bytes
/// of an IPv4 key are its `CONNTRACK4` key ([`FlowKey4`]): the program
/// looks an IPv4 flow up with [`FlowKey::as_v4`], in place. For that, the
/// program's IPv4 keys carry the destination twice: in `dst[0..4]` and in
/// `src[4..8]`. Nothing else reads `src[4..8]` of an IPv4 key (the flow
/// hash and tag use `src[0..4]` and `dst[0..4]`); userspace builds
/// `CONNTRACK4` keys from the fields ([`FlowKey::key4`]).
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FlowKey {
    /// Wire order.
    pub sport: u16,
    /// Wire order.
    pub dport: u16,
    pub proto: u8,
    pub family: u8,
    pub _pad: [u8; 2],
    /// IPv4: the source in bytes 0..4 (and, as the program builds it, the
    /// destination in 4..8), the rest zero.
    pub src: [u8; 16],
    /// IPv4: the destination in bytes 0..4, the rest zero.
    pub dst: [u8; 16],
}

/// Key of `CONNTRACK4`: an IPv4 flow. The kernel hashes and compares 16
/// bytes per lookup instead of the 40 of a [`FlowKey`] (3 to 5 ns less per
/// established packet, docs/benchmarks.md).
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FlowKey4 {
    /// Wire order.
    pub sport: u16,
    /// Wire order.
    pub dport: u16,
    pub proto: u8,
    pub family: u8,
    pub _pad: [u8; 2],
    pub src: [u8; 4],
    pub dst: [u8; 4],
}

impl FlowKey {
    /// The key's first 16 bytes, read in place as the IPv4 conntrack key:
    /// right only for an IPv4 key built as the program builds it, with the
    /// destination repeated in `src[4..8]` (see [`FlowKey`]).
    #[inline(always)]
    pub fn as_v4(&self) -> &FlowKey4 {
        // SAFETY: both types are repr(C, align(8)); `FlowKey4`'s fields are
        // `FlowKey`'s first 8 bytes of fields followed by 8 bytes of plain
        // integers, which fall inside `FlowKey::src`. The cast reads the
        // first 16 of `self`'s 40 bytes, aligned, and every bit pattern is
        // a valid `FlowKey4`.
        unsafe { &*(self as *const FlowKey as *const FlowKey4) }
    }

    /// The IPv4 conntrack key of this (IPv4) key, built from its fields.
    pub fn key4(&self) -> FlowKey4 {
        FlowKey4 {
            sport: self.sport,
            dport: self.dport,
            proto: self.proto,
            family: self.family,
            _pad: self._pad,
            src: [self.src[0], self.src[1], self.src[2], self.src[3]],
            dst: [self.dst[0], self.dst[1], self.dst[2], self.dst[3]],
        }
    }
}

impl FlowKey4 {
    /// The key as two 64-bit words (native order), as the flow cache
    /// compares and indexes it.
    #[inline(always)]
    pub fn words(&self) -> [u64; 2] {
        // SAFETY: `FlowKey4` is 16 bytes of plain integers with no padding
        // (`_pad` is a field), so every byte is initialised and `[u64; 2]`
        // has the same size.
        unsafe { core::mem::transmute::<FlowKey4, [u64; 2]>(*self) }
    }
}

/// One slot of `FLOW_CACHE4`: a per-CPU, direct-mapped copy of a recently
/// hit `CONNTRACK4` entry, so that an established IPv4 packet usually
/// skips the kernel's hash lookup. A slot is valid only in the conntrack
/// clock tick (537 ms, within one epoch) it was written in; see
/// docs/architecture.md, "The flow cache".
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowCacheSlot {
    pub key: FlowKey4,
    /// The real id (below 2^20: `max_reals` is at most 2^20) in bits
    /// 19..0, the VIP id (below `capacity::VIPS`, 4,096) in bits 31..20.
    pub ids: u32,
    pub real_generation: u32,
    /// `CtValue::hash`.
    pub hash: u32,
    /// The conntrack clock tick (`CT_CLOCK`, 537 ms) the slot was written
    /// in.
    pub tick: u32,
}

impl FlowCacheSlot {
    /// The slot of `key` for conntrack entry `ct`, written at conntrack
    /// clock tick `tick`.
    #[inline(always)]
    pub fn new(key: FlowKey4, ct: &CtValue, tick: u32) -> Self {
        FlowCacheSlot {
            key,
            ids: (ct.real_id & 0xf_ffff) | u32::from(ct.vip_id) << 20,
            real_generation: ct.real_generation,
            hash: ct.hash,
            tick,
        }
    }

    /// The conntrack entry the slot copies, without its flags (a cached
    /// entry is never handshake-pending, and the slot has its own tick).
    #[inline(always)]
    pub fn ct(&self) -> CtValue {
        CtValue {
            real_id: self.ids & 0xf_ffff,
            real_generation: self.real_generation,
            vip_id: (self.ids >> 20) as u16,
            flags: 0,
            hash: self.hash,
        }
    }
}

/// `FLOW_CACHE4`'s slots per CPU (a power of two): 32 bytes each.
pub const FLOW_CACHE_SLOTS: u32 = 2048;

const FLOW_CACHE_K1: u64 = 0x9e37_79b9_7f4a_7c15;
const FLOW_CACHE_K2: u64 = 0xc2b2_ae3d_27d4_eb4f;

/// The `FLOW_CACHE4` slot of an IPv4 key given as [`FlowKey4::words`]:
/// the address word multiplied and XORed into the ports word, the halves
/// folded, multiplied again, the top bits. (One multiplication of each
/// word, XORed, left clients that differ in their address's last two bytes
/// on a third of the slots.) A collision only costs a conntrack lookup.
#[inline(always)]
pub fn flow_cache_index(w: [u64; 2]) -> u32 {
    let h = w[0] ^ w[1].wrapping_mul(FLOW_CACHE_K2);
    let h = (h ^ (h >> 32)).wrapping_mul(FLOW_CACHE_K1);
    (h >> (64 - FLOW_CACHE_SLOTS.trailing_zeros())) as u32
}

/// `CtValue::flags`: the entry was created by a TCP SYN of a flow-affinity
/// VIP and no other packet of the flow has been seen since (the handshake
/// is pending). Another SYN of the same 5-tuple while it is set is a
/// repeated SYN; the first non-SYN packet clears it and counts a handshake
/// (`PASSIVE_STATS`).
pub const CT_F_PENDING: u16 = 1;

/// `CtValue::flags` bits 15..1: the low 15 bits of the conntrack epoch
/// (the epoch of `CT_CLOCK`, [`ct_epoch_of_tick`]) in which the program last wrote the entry's
/// `RECENT_SYN` filter bit (see [`SynBucket`]). An entry of an older epoch
/// is refreshed by the flow's next packet: its bit is set again and its
/// bucket is checked for a newer SYN of the same 5-tuple (port reuse).
pub const CT_EPOCH_SHIFT: u16 = 1;

/// The epoch bits of a `CtValue::flags` for conntrack epoch `epoch`.
#[inline(always)]
pub const fn ct_epoch_flags(epoch: u32) -> u16 {
    ((epoch & 0x7fff) as u16) << CT_EPOCH_SHIFT
}

/// Whether `flags` (a `CtValue::flags`) carries epoch `epoch`.
#[inline(always)]
pub const fn ct_epoch_is(flags: u16, epoch: u32) -> bool {
    flags >> CT_EPOCH_SHIFT == (epoch & 0x7fff) as u16
}

/// `RECENT_SYN` slots for a conntrack table of `conntrack_size` entries:
/// the next power of two, at least 65,536 (so that even a small table keeps
/// a thousand concurrent handshakes without losing one) and at most 2^22.
/// Four slots make a 64-byte bucket (with its filter, see [`SynBucket`]),
/// so the default 1,048,576-entry conntrack has 16 MiB of buckets (1 MiB
/// at least, 64 MiB at most).
pub const fn syn_slots(conntrack_size: u32) -> u32 {
    if conntrack_size <= 1 << 16 {
        1 << 16
    } else if conntrack_size >= 1 << 22 {
        1 << 22
    } else {
        conntrack_size.next_power_of_two()
    }
}

/// Slots per `RECENT_SYN` bucket: a SYN takes the oldest slot of the
/// bucket its flow hash picks (4-way set associative, written in turn), so
/// a handshake is lost only when four more SYNs of its bucket arrive before
/// its ACK.
pub const SYN_WAYS: usize = 4;

/// `RECENT_SYN` buckets (its `max_entries`): [`syn_slots`] / [`SYN_WAYS`].
pub const fn syn_buckets(conntrack_size: u32) -> u32 {
    syn_slots(conntrack_size) / SYN_WAYS as u32
}

/// A `RECENT_SYN` value, 64 bytes (one cache line): [`SYN_WAYS`] packed
/// [`SynSlot`]s, and a filter of the 5-tuples of this bucket that
/// conntrack may hold.
///
/// The filter lets a TCP SYN skip its conntrack lookup, its most expensive
/// step in a full table: a 5-tuple conntrack holds has its bit (bit
/// [`syn_filter_bit`] of its flow hash) set in `cur` for the epoch it was
/// last written in. A SYN whose bit is clear in `cur | prev` while the
/// bucket's `epoch` is the current epoch or the one before has no entry
/// written in those two epochs; an older entry of the same 5-tuple is
/// caught by the flow's next packet instead (its entry's epoch is old, so
/// that packet checks this bucket for the SYN's slot and, finding it,
/// follows the SYN). Bits are never cleared, only aged out: moving to a
/// new epoch makes `cur` the new `prev`.
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SynBucket {
    pub slots: [u64; SYN_WAYS],
    /// The conntrack epoch `cur` belongs to (low 32 bits; high bits 0).
    pub epoch: u64,
    /// Filter bits written in `epoch`.
    pub cur: u64,
    /// Filter bits written in the epoch before `epoch` (or earlier).
    pub prev: u64,
    /// The way (below [`SYN_WAYS`]) the next SYN without a slot of its own
    /// writes: the ways are written in turn, oldest first. 0 in a bucket
    /// an older steer pinned (it kept padding here).
    pub next: u64,
}

/// The filter bit of a flow with flow hash `hash` in its [`SynBucket`]:
/// the hash's top six bits, which the bucket index (at most 20 low bits)
/// never uses.
#[inline(always)]
pub const fn syn_filter_bit(hash: u32) -> u64 {
    1u64 << (hash >> 26)
}

/// How a [`SynBucket`]'s epoch stands to the epoch a CPU reads now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BucketAge {
    /// The bucket is of this epoch, or ahead of it (another CPU has moved
    /// it on while this one still reads the previous epoch): its `cur`
    /// is this epoch's.
    Current,
    /// The bucket is of the previous epoch: its `cur` is one epoch old.
    Previous,
    /// Older: its filter bits are too old to count.
    Older,
}

/// The age of a bucket of epoch `bucket` in epoch `now`, on the 32-bit
/// epoch circle (a bucket up to 2^31 epochs ahead counts as ahead).
#[inline(always)]
pub const fn bucket_age(now: u32, bucket: u32) -> BucketAge {
    let age = now.wrapping_sub(bucket);
    if age == 0 || age > u32::MAX / 2 {
        BucketAge::Current
    } else if age == 1 {
        BucketAge::Previous
    } else {
        BucketAge::Older
    }
}

/// Conntrack clock ticks per epoch, as a shift: 8 ticks of 2^29 ns
/// (537 ms) make an epoch.
pub const CT_TICKS_PER_EPOCH_SHIFT: u32 = 3;

/// The conntrack clock (`CT_CLOCK`) at `boottime_ns` nanoseconds after
/// boot: one tick every 2^29 ns (537 ms); a flow-cache slot lasts one
/// tick. Its epoch ([`ct_epoch_of_tick`]) is the time since boot in units
/// of 2^32 ns (4.3 s) for 73 years of uptime. Monotonic across daemon
/// restarts, so pinned buckets and entries stay comparable.
pub const fn ct_tick_at(boottime_ns: u64) -> u32 {
    (boottime_ns >> (32 - CT_TICKS_PER_EPOCH_SHIFT)) as u32
}

/// The conntrack epoch of conntrack clock tick `tick`.
#[inline(always)]
pub const fn ct_epoch_of_tick(tick: u32) -> u32 {
    tick >> CT_TICKS_PER_EPOCH_SHIFT
}

/// The first tick of conntrack epoch `epoch`.
pub const fn ct_first_tick(epoch: u32) -> u32 {
    epoch << CT_TICKS_PER_EPOCH_SHIFT
}

/// One `RECENT_SYN` slot, a TCP SYN of a flow-affinity VIP whose bucket is
/// `flow_hash & (buckets - 1)`, packed in one `u64` so
/// that the program reads and writes it with single aligned 8-byte
/// accesses: bits 63..32 the flow's tag (`hash::flow_tag`, never 0), bits
/// 31..12 the real id the SYN was sent to, bits 11..0 the low 12 bits of
/// that real's generation. 0 is an empty slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SynSlot {
    pub tag: u32,
    pub real_id: u32,
    pub generation: u32,
}

/// Real ids a `SynSlot` holds: below 2^20 (`max_reals` is at most 2^20).
pub const SYN_SLOT_REAL_BITS: u32 = 20;
const SYN_SLOT_GEN_MASK: u32 = (1 << (32 - SYN_SLOT_REAL_BITS)) - 1;

impl SynSlot {
    #[inline(always)]
    pub const fn pack(self) -> u64 {
        ((self.tag as u64) << 32)
            | ((self.real_id as u64) << (32 - SYN_SLOT_REAL_BITS))
            | (self.generation & SYN_SLOT_GEN_MASK) as u64
    }

    #[inline(always)]
    pub const fn unpack(v: u64) -> Self {
        let low = v as u32;
        SynSlot {
            tag: (v >> 32) as u32,
            real_id: low >> (32 - SYN_SLOT_REAL_BITS),
            generation: low & SYN_SLOT_GEN_MASK,
        }
    }

    /// Whether a real of generation `generation` is the one the slot names
    /// (the slot keeps the low 12 bits).
    #[inline(always)]
    pub const fn same_generation(self, generation: u32) -> bool {
        self.generation == generation & SYN_SLOT_GEN_MASK
    }
}

/// Value of `CONNTRACK4` and `CONNTRACK6`.
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CtValue {
    pub real_id: u32,
    pub real_generation: u32,
    /// The service the flow belongs to (for counters), so a hit needs no
    /// VIP lookup. VIP ids are below `capacity::VIPS` (4096), so 16 bits
    /// hold them.
    pub vip_id: u16,
    /// `CT_F_*` bits. An entry pinned by a steer whose `vip_id` was a
    /// `u32` reads 0 here (the high half of a small little-endian id): no
    /// handshake pending.
    pub flags: u16,
    /// The flow hash (outer source, flow label), so a hit needs no hashing.
    pub hash: u32,
}

/// Value of `SETTINGS[0]`: data-plane wide parameters.
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Settings {
    /// Outer IPv4 source: `src4_base | (flow_hash & src4_mask)`.
    pub src4_base: [u8; 4],
    /// Host-order mask applied to the flow hash.
    pub src4_mask: u32,
    /// Outer IPv6 source: the last four bytes get `hash & src6_mask` OR-ed in.
    pub src6_base: [u8; 16],
    pub src6_mask: u32,
    /// Entries per selection ring (a prime).
    pub ring_size: u32,
    /// Largest IP packet (outer header included) we may send.
    pub mtu: u32,
    pub next_hop_mac: [u8; 6],
    /// Outer TTL / hop limit.
    pub ttl: u8,
    /// `SETTINGS_F_*` bits.
    pub flags: u8,
    /// Path-MTU replies each CPU may send per second
    /// (`dataplane.pmtu_reply_rate`); 0: never reply (every too-big packet
    /// is dropped as `too_big_rate_limited`).
    pub pmtu_reply_rate: u16,
    /// Replies each CPU may send back to back (`dataplane.pmtu_reply_burst`,
    /// at least 1 when the rate is not 0).
    pub pmtu_reply_burst: u16,
}

/// Value of `SOURCE_MACS` and `SOURCE_MACS_HIGH`: the source MAC of frames
/// transmitted out of an interface, all-zero for none. Index or key: the
/// ingress ifindex (`XDP_TX` sends a frame back out of the interface it
/// arrived on), in the array `SOURCE_MACS` below [`SOURCE_MAC_SLOTS`] (one
/// inlined array lookup per transmitted packet, where a hash lookup cost
/// 12 ns), in the hash map `SOURCE_MACS_HIGH` from there on; index
/// [`SOURCE_MAC_FALLBACK`] (0, never an ifindex) of `SOURCE_MACS`: the
/// configured `dataplane.source_mac`, used for an interface with no entry
/// of its own (BPF_PROG_TEST_RUN runs on loopback).
#[repr(C, align(2))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SourceMac {
    pub mac: [u8; 6],
    pub _pad: [u8; 2],
}

/// The `SOURCE_MACS` index of the configured fallback source MAC.
pub const SOURCE_MAC_FALLBACK: u32 = 0;

/// `SOURCE_MACS` slots: ifindexes below this have their source MAC in the
/// array; higher ones (the kernel hands ifindexes out cyclically, so a
/// host that has created many interfaces has them) in `SOURCE_MACS_HIGH`.
pub const SOURCE_MAC_SLOTS: u32 = 1 << 16;

/// Whether `mac` may be a frame's source: not all-zero, not multicast or
/// broadcast (the I/G bit, the low bit of the first byte, is clear).
#[inline(always)]
pub const fn is_unicast_mac(mac: &[u8; 6]) -> bool {
    mac[0] & 1 == 0 && (mac[0] | mac[1] | mac[2] | mac[3] | mac[4] | mac[5]) != 0
}

/// `Settings::flags`: userspace has written the settings.
pub const SETTINGS_F_READY: u8 = 1;
/// `Settings::flags`: at least one VIP uses port 0 (all ports), so a miss on
/// the exact port must be retried with port 0.
pub const SETTINGS_F_PORT0_VIPS: u8 = 2;

/// Per-CPU counters of `VIP_STATS` and `REAL_STATS`.
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    pub packets: u64,
    pub bytes: u64,
    pub new_flows: u64,
}

/// Per-CPU passive health counters of `PASSIVE_STATS`, per real id. With
/// direct server return steer sees only the client's side of a flow, so
/// these are what it can tell about a backend's health without probing.
/// A map of its own (not more fields of [`Counters`]) so that the maps an
/// older steer pinned stay loadable.
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Passive {
    /// TCP SYNs (SYN without ACK) of a flow-affinity VIP whose 5-tuple
    /// still had a handshake-pending conntrack entry: the client's earlier
    /// SYN went unanswered. Counted against the backend of that entry.
    pub repeated_syns: u64,
    /// Handshake-pending flows whose first non-SYN packet arrived: the
    /// client got the backend's SYN-ACK.
    pub handshakes: u64,
}

/// Defines a `#[repr(u32)]` counter index: the enum, `COUNT`, `ALL` (in
/// index order) and `name()`, so each variant's value and metric name are
/// written once. The discriminants must be 0, 1, 2, ... in order; a
/// compile-time check enforces it.
macro_rules! counter_index {
    (
        $(#[$meta:meta])*
        pub enum $ty:ident {
            $( $(#[$vmeta:meta])* $var:ident = $val:literal => $name:literal, )+
        }
    ) => {
        $(#[$meta])*
        #[repr(u32)]
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum $ty {
            $( $(#[$vmeta])* $var = $val, )+
        }

        impl $ty {
            /// Every value, in index order (`ALL[i] as usize == i`).
            pub const ALL: [$ty; [$($val),+].len()] = [$($ty::$var),+];
            /// The number of values: the size of the map it indexes.
            pub const COUNT: usize = Self::ALL.len();

            /// The name used in metrics and summaries.
            pub const fn name(self) -> &'static str {
                match self {
                    $( $ty::$var => $name, )+
                }
            }

            /// The map index.
            #[inline(always)]
            pub const fn index(self) -> u32 {
                self as u32
            }
        }

        const _: () = {
            let mut i = 0;
            while i < $ty::COUNT {
                assert!($ty::ALL[i] as usize == i, "discriminants must be 0, 1, 2, ...");
                i += 1;
            }
        };
    };
}

counter_index! {
    /// Why a packet was dropped: indexes of `DROP_STATS`.
    pub enum DropReason {
        /// A header that contradicts itself: bad IP version, IPv4 IHL below 5,
        /// or an IPv4 total length shorter than the header it covers.
        MalformedL3 = 0 => "malformed_l3",
        /// The frame ends before the IP packet does: inside the IP header or
        /// its options, or before the IPv4 total length / IPv6 payload length.
        TruncatedL3 = 1 => "truncated_l3",
        /// The TCP/UDP header does not fit the IP packet: the packet ends
        /// inside it, a TCP data offset below 5 or past the packet's end, or
        /// a UDP length below 8 (0 included) or past the packet's end.
        TruncatedL4 = 2 => "truncated_l4",
        /// An IP fragment for a VIP address (fragments are never forwarded).
        Fragment = 3 => "fragment",
        /// The service's table has no backend.
        NoBackend = 4 => "no_backend",
        /// The encapsulated packet would exceed the configured MTU and no
        /// path-MTU reply can be sent: the packet is itself an ICMP error,
        /// its source is not a unicast address (multicast, broadcast,
        /// unspecified, loopback) or its source MAC is not unicast, or its
        /// first bytes are not in the frame's first buffer. (Answered
        /// packets count as the `pmtu_reply` branch instead.)
        TooBig = 5 => "too_big",
        /// `bpf_xdp_adjust_head` failed (no headroom).
        NoHeadroom = 6 => "no_headroom",
        /// An IPv6 packet would need an IPv4 backend.
        FamilyMismatch = 7 => "family_mismatch",
        /// An ICMP error for a VIP address whose quoted header is unusable.
        BadIcmp = 8 => "bad_icmp",
        /// More than four IPv6 extension headers, one that runs past the
        /// end of the packet, or a hop-by-hop header that is not the first.
        Ipv6Ext = 9 => "ipv6_ext",
        /// Settings not written yet.
        NotReady = 10 => "not_ready",
        /// No unicast source MAC is known for the interface the packet
        /// arrived on (no `SOURCE_MACS` entry for it and no
        /// `dataplane.source_mac`): the frame is dropped rather than sent
        /// with a multicast, broadcast or zero source.
        NoSourceMac = 11 => "no_source_mac",
        /// The table slot of the flow's client class is `RESIDENCY_DROP`:
        /// no region the class may use has a backend that may serve
        /// (data residency fails closed).
        Residency = 12 => "residency",
        /// Too big for the MTU after encapsulation, an IPv4 packet with DF
        /// clear: a router would fragment it, but steer never forwards
        /// fragments, and a fragmentation-needed reply would make the client
        /// fragment (or is ignored), so it is dropped without a reply.
        TooBigDfClear = 13 => "too_big_df_clear",
        /// Too big, and this CPU's path-MTU reply budget
        /// ([`Settings::pmtu_reply_rate`] a second, bursts of
        /// [`Settings::pmtu_reply_burst`]) is spent, or the rate is 0:
        /// dropped without a reply.
        TooBigRateLimited = 14 => "too_big_rate_limited",
    }
}

counter_index! {
    /// Which branch a packet took: indexes of `PATH_STATS`, plus one event
    /// counter (`CtInsertFailed`). The benchmark checks these against its
    /// iteration counts.
    pub enum Branch {
        Pass = 0 => "pass",
        CtHit = 1 => "ct_hit",
        NewFlow = 2 => "new_flow",
        /// Conntrack pointed at a backend that is down (or gone): re-selected.
        Reselect = 3 => "reselect",
        IcmpError = 4 => "icmp_error",
        Drop = 5 => "drop",
        /// Not a branch: a new or re-selected flow whose conntrack insert
        /// failed. The packet is still forwarded; the flow's next packet is
        /// selected again (same backend while the table is unchanged). Should
        /// stay zero; the benchmark checks that it does.
        CtInsertFailed = 6 => "ct_insert_failed",
        /// The first non-SYN packet of a TCP connection that conntrack does
        /// not hold and whose SYN's `RECENT_SYN` slot was intact: it goes to
        /// the backend its SYN went to and enters conntrack.
        SynPromoted = 7 => "syn_promoted",
        /// Too big for the MTU after encapsulation, answered with an ICMP
        /// fragmentation-needed (IPv4) or packet-too-big (IPv6) reply sent
        /// back to the client with `XDP_TX`.
        PmtuReply = 8 => "pmtu_reply",
        /// Not a branch: an established IPv4 packet (counted in `ct_hit`)
        /// that this CPU's flow cache (`FLOW_CACHE4`) did not hold: it was
        /// looked up in conntrack, then cached. The other IPv4 `ct_hit`
        /// packets came from the cache.
        FlowCacheFill = 9 => "flow_cache_fill",
    }
}

/// Benchmark-only state (`BENCH[0]`), used by `steer_bench` so that every
/// iteration of a `repeat`ed BPF_PROG_TEST_RUN sees the original packet.
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BenchState {
    /// `BENCH_VARY_*`: how to turn each iteration into a new flow.
    pub vary: u32,
    /// Non-zero once `saved` holds the original Ethernet header.
    pub saved_valid: u32,
    pub saved: [u8; 16],
}

/// Keep the same flow every iteration.
pub const BENCH_VARY_NONE: u32 = 0;
/// Add one to the IPv4 source address (frame bytes 26..30) each iteration.
pub const BENCH_VARY_V4_SRC: u32 = 1;

/// Ring slots are stored 16 to a map value: an array map rounds each value
/// up to 8 bytes, so single `u32` values would waste half the memory. Flat
/// slot `i` lives in value `i / RING_LANES`, lane `i % RING_LANES`, which is
/// also byte offset `4 * i` of the memory-mapped map.
pub const RING_LANES: u32 = 16;

/// Number of `RINGS` values needed for `tables` double-buffered tables.
pub const fn ring_values(tables: u32, ring_size: u32) -> u32 {
    (tables * 2 * ring_size).div_ceil(RING_LANES)
}

/// Flat slot index (see [`RING_LANES`]) of slot `slot` of generation `generation` of table
/// `table_id`.
#[inline(always)]
pub const fn ring_index(table_id: u32, generation: u32, ring_size: u32, slot: u32) -> u32 {
    (table_id * 2 + (generation & 1)) * ring_size + slot
}

/// Default of `dataplane.pmtu_reply_rate`: path-MTU replies each CPU may
/// send per second (a token bucket; see `steer-ebpf/src/icmp.rs`).
pub const PMTU_REPLY_RATE: u16 = 100;
/// Default of `dataplane.pmtu_reply_burst`: the bucket's depth, replies a
/// CPU may send back to back.
pub const PMTU_REPLY_BURST: u16 = 100;
/// Largest `dataplane.pmtu_reply_rate` and `dataplane.pmtu_reply_burst`.
pub const PMTU_REPLY_MAX: u16 = 10_000;
/// `PMTU_PROGS` slot of the reply program for an IPv4 outer header.
pub const PMTU_SLOT_OUTER_V4: u32 = 0;
/// `PMTU_PROGS` slot of the reply program for an IPv6 outer header.
pub const PMTU_SLOT_OUTER_V6: u32 = 1;

/// Encapsulation overhead by outer family.
pub const OUTER_V4_LEN: usize = 20;
pub const OUTER_V6_LEN: usize = 40;

#[cfg(feature = "user")]
mod pod {
    use super::*;
    // All of these are repr(C), contain only integers and byte arrays, and
    // have explicit padding fields, so every bit pattern is valid and there
    // are no implicit padding bytes (`layouts_have_no_implicit_padding`
    // checks the sizes).
    macro_rules! pod {
        ($($t:ty),+) => {
            $(
                // SAFETY: see above: repr(C), integer and byte-array fields
                // only, padding explicit.
                unsafe impl aya::Pod for $t {}
            )+
        };
    }
    pod!(
        VipKey, VipInfo, AddrKey, Real, FlowKey, FlowKey4, CtValue, Settings, Counters, Passive,
        BenchState, SourceMac, ClassV6Key, SynBucket
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::size_of;

    fn key4(src: [u8; 4], sport: u16) -> FlowKey4 {
        FlowKey4 {
            sport: crate::port_to_wire(sport),
            dport: crate::port_to_wire(443),
            proto: crate::PROTO_TCP,
            family: crate::FAMILY_V4,
            _pad: [0; 2],
            src,
            dst: [203, 0, 113, 10],
        }
    }

    #[test]
    fn flow_cache_words_are_the_keys_bytes() {
        let k = key4([192, 0, 2, 7], 40_000);
        let w = k.words();
        let mut bytes = [0u8; 16];
        bytes[..8].copy_from_slice(&w[0].to_ne_bytes());
        bytes[8..].copy_from_slice(&w[1].to_ne_bytes());
        let want = [
            0x9c, 0x40, 0x01, 0xbb, 6, 4, 0, 0, 192, 0, 2, 7, 203, 0, 113, 10,
        ];
        assert_eq!(bytes, want);
        assert_eq!(size_of::<FlowCacheSlot>(), 32);
    }

    #[test]
    fn a_flow_cache_slot_keeps_the_ids_at_their_limits() {
        let k = key4([192, 0, 2, 7], 40_000);
        for (real_id, vip_id) in [(0, 0), ((1 << 20) - 1, 4095), (12_345, 678)] {
            let ct = CtValue {
                real_id,
                real_generation: 0xdead_beef,
                vip_id,
                flags: CT_F_PENDING | ct_epoch_flags(9),
                hash: 0x1234_5678,
            };
            let slot = FlowCacheSlot::new(k, &ct, 0x8000_0009);
            assert_eq!(slot.tick, 0x8000_0009);
            assert_eq!(slot.key, k);
            assert_eq!(slot.ct(), CtValue { flags: 0, ..ct });
        }
    }

    /// Flows that differ only in the client port, or only in the client
    /// address, spread over the cache's slots at least as well as random
    /// slots would: 2,048 keys in 2,048 random slots fill 1 − 1/e of them
    /// (1,295, standard deviation ~14). Multiplicative hashing spreads
    /// sequences more evenly than that.
    #[test]
    fn flow_cache_slots_spread_ports_and_clients() {
        let n = FLOW_CACHE_SLOTS as usize;
        let spread = |keys: &mut dyn Iterator<Item = FlowKey4>| {
            let mut used = [false; FLOW_CACHE_SLOTS as usize];
            for k in keys {
                let i = flow_cache_index(k.words()) as usize;
                assert!(i < n, "index {i} out of {n} slots");
                used[i] = true;
            }
            used.iter().filter(|u| **u).count()
        };
        let ports = spread(&mut (0..n).map(|i| key4([192, 0, 2, 7], 1024 + i as u16)));
        let clients = spread(&mut (0..n).map(|i| key4([10, 0, (i >> 8) as u8, i as u8], 40_000)));
        let both = spread(&mut (0..n).map(|i| key4([10, 0, 7, i as u8], 40_000 + (i >> 8) as u16)));
        for (what, used) in [("ports", ports), ("clients", clients), ("both", both)] {
            assert!(used >= 1_200, "{n} keys by {what} used {used} of {n} slots");
        }
    }

    #[test]
    fn an_ipv4_key_as_the_program_builds_it_starts_with_its_conntrack4_key() {
        // As `parse_v4` fills it: the destination also in src[4..8].
        let mut k = FlowKey {
            sport: crate::port_to_wire(40_000),
            dport: crate::port_to_wire(443),
            proto: crate::PROTO_TCP,
            family: crate::FAMILY_V4,
            ..Default::default()
        };
        k.src[..4].copy_from_slice(&[192, 0, 2, 7]);
        k.src[4..8].copy_from_slice(&[203, 0, 113, 10]);
        k.dst[..4].copy_from_slice(&[203, 0, 113, 10]);
        assert_eq!(*k.as_v4(), k.key4());
        // The 16 bytes the kernel hashes, written out by hand.
        let want: [u8; 16] = [
            0x9c, 0x40, 0x01, 0xbb, 6, 4, 0, 0, 192, 0, 2, 7, 203, 0, 113, 10,
        ];
        // SAFETY: `FlowKey4` is 16 bytes of plain integers, no padding
        // (asserted in `sizes`).
        let got: [u8; 16] = unsafe { core::mem::transmute(k.key4()) };
        assert_eq!(got, want);
        // Userspace's keys (no copy in src[4..8]) give the same key4.
        let mut plain = k;
        plain.src[4..8].fill(0);
        assert_eq!(plain.key4(), k.key4());
    }

    #[test]
    fn bucket_ages_on_the_epoch_circle() {
        use BucketAge::*;
        for (now, bucket, want) in [
            (10, 10, Current),
            (10, 11, Current),
            (10, 10 + (1 << 30), Current),
            (10, 9, Previous),
            (10, 8, Older),
            (10, 0, Older),
            // Across the wrap of the 32-bit epoch.
            (0, u32::MAX, Previous),
            (1, u32::MAX, Older),
            (u32::MAX, 0, Current),
            (u32::MAX, u32::MAX - 1, Previous),
        ] {
            assert_eq!(bucket_age(now, bucket), want, "now {now}, bucket {bucket}");
        }
    }

    #[test]
    fn a_syn_slot_round_trips_and_sizes_follow_conntrack() {
        let s = SynSlot {
            tag: 0x8000_0001,
            real_id: (1 << SYN_SLOT_REAL_BITS) - 1,
            generation: 0x1234_5fff,
        };
        let v = s.pack();
        assert_eq!(v >> 32, 0x8000_0001);
        let u = SynSlot::unpack(v);
        assert_eq!(u.tag, 0x8000_0001);
        assert_eq!(u.real_id, 0xf_ffff);
        assert_eq!(u.generation, 0xfff);
        assert!(u.same_generation(0x1234_5fff));
        assert!(u.same_generation(0xfff));
        assert!(!u.same_generation(0x1234_5ffe));
        let z = SynSlot::unpack(0);
        assert_eq!((z.tag, z.real_id, z.generation), (0, 0, 0));
        assert_eq!(syn_slots(1), 65_536);
        assert_eq!(syn_slots(65_536), 65_536);
        assert_eq!(syn_slots(65_537), 131_072);
        assert_eq!(syn_slots(1_048_576), 1_048_576);
        assert_eq!(syn_slots(1_000_000), 1_048_576);
        assert_eq!(syn_slots(u32::MAX), 1 << 22);
        assert_eq!(syn_buckets(4096), 16_384);
        assert_eq!(core::mem::size_of::<SynBucket>(), 64);
        // The filter bit comes from the hash bits the bucket index never
        // uses (at most 2^20 buckets).
        assert!(syn_buckets(u32::MAX) <= 1 << 20);
        assert_eq!(syn_filter_bit(0x03ff_ffff), 1);
        assert_eq!(syn_filter_bit(0xfc00_0000), 1 << 63);
        assert_eq!(syn_filter_bit(0x0400_0000), 2);
        // Eight ticks of 2^29 ns to an epoch of 2^32 ns, nested in it.
        for (ns, epoch) in [
            (0, 0),
            ((1 << 29) - 1, 0),
            (1 << 29, 0),
            ((1 << 32) - 1, 0),
            (5 << 32, 5),
            ((5 << 32) + (7 << 29), 5),
            ((6 << 32) - 1, 5),
        ] {
            assert_eq!(ct_epoch_of_tick(ct_tick_at(ns)), epoch, "at {ns} ns");
        }
        assert_eq!(ct_tick_at(5 << 32), 40);
        assert_eq!(ct_tick_at((5 << 32) + (3 << 29)), 43);
        assert_eq!(ct_first_tick(5), 40);
        // 15 epoch bits above the pending bit, compared modulo 2^15.
        let f = ct_epoch_flags(0x8003) | CT_F_PENDING;
        assert_eq!(f, (3 << 1) | 1);
        assert!(ct_epoch_is(f, 3));
        assert!(ct_epoch_is(f, 0x8003));
        assert!(!ct_epoch_is(f, 4));
    }

    #[test]
    fn vip_slot_index_spreads_addresses_and_ports() {
        extern crate std;
        use std::collections::HashSet;
        // 4,096 VIPs (the most there can be) into 8,192 slots: a random
        // function fills 8192 * (1 - e^-0.5) = 3,223 slots on average.
        let v4 = |a: u32, port: u16| VipKey {
            addr: {
                let mut b = [0u8; 16];
                b[..4].copy_from_slice(&a.to_be_bytes());
                b
            },
            port: crate::port_to_wire(port),
            proto: crate::PROTO_TCP,
            family: crate::FAMILY_V4,
        };
        let v6 = |low: u16| {
            let mut k = v4(0, 443);
            k.addr = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
            k.addr[14..].copy_from_slice(&low.to_be_bytes());
            k.family = crate::FAMILY_V6;
            k
        };
        let sets: [std::vec::Vec<VipKey>; 3] = [
            (0..4096).map(|i| v4(0xcb00_7100 + i, 443)).collect(),
            (0..4096).map(|p| v4(0xcb00_710a, 1 + p as u16)).collect(),
            (0..4096).map(|i| v6(i as u16)).collect(),
        ];
        for keys in &sets {
            let slots: HashSet<u32> = keys.iter().map(vip_slot_index).collect();
            assert!(slots.iter().all(|s| *s < VIP_SLOTS));
            assert!(slots.len() >= 3000, "{} slots", slots.len());
        }
        // TCP and UDP of one address and port differ.
        let mut udp = v4(0xcb00_710a, 53);
        let tcp = udp;
        udp.proto = crate::PROTO_UDP;
        assert_ne!(vip_slot_index(&udp), vip_slot_index(&tcp));
    }

    #[test]
    fn layouts_have_no_implicit_padding() {
        assert_eq!(size_of::<VipKey>(), 16 + 2 + 1 + 1);
        assert_eq!(size_of::<VipInfo>(), 16);
        assert_eq!(size_of::<VipSlot>(), 4 + 20 + 16);
        assert_eq!(core::mem::offset_of!(VipSlot, key), 4);
        assert_eq!(core::mem::offset_of!(VipSlot, info), 24);
        // `words` is the memory layout, checked against the bytes.
        let slot = VipSlot {
            seq: 2,
            key: VipKey {
                addr: core::array::from_fn(|i| i as u8 + 1),
                port: 0x1234,
                proto: 6,
                family: 4,
            },
            info: VipInfo {
                vip_id: 7,
                table_id: 9,
                flags: 1,
                _pad: 0,
            },
        };
        // SAFETY: `VipSlot` is 40 bytes of plain integers with no padding
        // (asserted above).
        let raw: [u8; 40] = unsafe { core::mem::transmute(slot) };
        let words = slot.words();
        for (i, w) in words.iter().enumerate() {
            let b = [raw[4 * i], raw[4 * i + 1], raw[4 * i + 2], raw[4 * i + 3]];
            assert_eq!(*w, u32::from_ne_bytes(b), "word {i}");
        }
        assert_eq!(size_of::<AddrKey>(), 20);
        assert_eq!(size_of::<Real>(), 16 + 4 + 4);
        assert_eq!(size_of::<FlowKey>(), 16 + 16 + 2 + 2 + 1 + 1 + 2);
        assert_eq!(size_of::<FlowKey4>(), 2 + 2 + 1 + 1 + 2 + 4 + 4);
        assert_eq!(size_of::<CtValue>(), 16);
        assert_eq!(
            size_of::<Settings>(),
            4 + 4 + 16 + 4 + 4 + 4 + 6 + 1 + 1 + 2 + 2
        );
        // The size of the value of a pinned SETTINGS map: the rate and
        // burst took the old padding, so maps an older steer pinned stay
        // adoptable.
        assert_eq!(size_of::<Settings>(), 48);
        assert_eq!(size_of::<Settings>() % 8, 0);
        assert_eq!(size_of::<Counters>(), 24);
        assert_eq!(size_of::<Passive>(), 16);
        assert_eq!(size_of::<SourceMac>(), 8);
        assert_eq!(size_of::<ClassV6Key>(), 4 + 8);
        assert_eq!(size_of::<ClassRow>(), 1024);
    }

    #[test]
    #[cfg(target_endian = "little")]
    fn an_old_conntrack_value_reads_as_no_handshake_pending() {
        // The layout before the flags: real_id, real_generation, vip_id
        // (u32), hash, little-endian as on every host steer runs on.
        let (real_id, generation, vip_id, hash): (u32, u32, u32, u32) =
            (7, 3, capacity::VIPS - 1, 0xdead_beef);
        let mut old = [0u8; 16];
        old[0..4].copy_from_slice(&real_id.to_le_bytes());
        old[4..8].copy_from_slice(&generation.to_le_bytes());
        old[8..12].copy_from_slice(&vip_id.to_le_bytes());
        old[12..16].copy_from_slice(&hash.to_le_bytes());
        // SAFETY: CtValue is 16 bytes of plain integers (checked above);
        // every bit pattern is a valid value.
        let v: CtValue = unsafe { core::mem::transmute(old) };
        assert_eq!(v.real_id, 7);
        assert_eq!(v.real_generation, 3);
        assert_eq!(u32::from(v.vip_id), capacity::VIPS - 1);
        assert_eq!(v.flags & CT_F_PENDING, 0);
        assert_eq!(v.hash, 0xdead_beef);
        assert!(capacity::VIPS <= u32::from(u16::MAX) + 1);
    }

    #[test]
    fn class_v4_index_is_the_24_bit_prefix_number() {
        assert_eq!(class_v4_index([0, 0, 0, 255]), 0);
        assert_eq!(class_v4_index([192, 0, 2, 7]), 0xc0_00_02);
        assert_eq!(class_v4_index([255, 255, 255, 0]), (1 << 24) - 1);
        assert_eq!(CLASS_V4_VALUES * CLASS_V4_LANES, 1 << 24);
        assert_ne!(RESIDENCY_DROP, NO_REAL);
    }

    #[test]
    fn only_unicast_macs_may_be_a_source() {
        assert!(is_unicast_mac(&[0x02, 0, 0, 0, 0, 0x5e]));
        assert!(is_unicast_mac(&[0, 0, 0, 0, 0, 1]));
        assert!(!is_unicast_mac(&[0xff; 6]));
        assert!(!is_unicast_mac(&[0; 6]));
        assert!(!is_unicast_mac(&[0x01, 0x00, 0x5e, 0, 0, 1]));
        assert!(!is_unicast_mac(&[0x33, 0x33, 0, 0, 0, 1]));
    }

    #[test]
    fn counter_names_are_the_published_metric_labels() {
        // These names are part of the metrics interface (docs/operations.md)
        // and of `steer replay`'s summary: renaming one is a breaking change.
        let drops = DropReason::ALL.map(DropReason::name);
        assert_eq!(
            drops,
            [
                "malformed_l3",
                "truncated_l3",
                "truncated_l4",
                "fragment",
                "no_backend",
                "too_big",
                "no_headroom",
                "family_mismatch",
                "bad_icmp",
                "ipv6_ext",
                "not_ready",
                "no_source_mac",
                "residency",
                "too_big_df_clear",
                "too_big_rate_limited"
            ]
        );
        assert_eq!(DropReason::NotReady.index(), 10);
        assert_eq!(DropReason::NoSourceMac.index(), 11);
        assert_eq!(DropReason::Residency.index(), 12);
        assert_eq!(DropReason::TooBigDfClear.index(), 13);
        assert_eq!(DropReason::TooBigRateLimited.index(), 14);
        assert_eq!(DropReason::COUNT, 15);
        let branches = Branch::ALL.map(Branch::name);
        assert_eq!(
            branches,
            [
                "pass",
                "ct_hit",
                "new_flow",
                "reselect",
                "icmp_error",
                "drop",
                "ct_insert_failed",
                "syn_promoted",
                "pmtu_reply",
                "flow_cache_fill"
            ]
        );
        assert_eq!(Branch::CtInsertFailed.index(), 6);
        assert_eq!(Branch::SynPromoted.index(), 7);
        assert_eq!(Branch::PmtuReply.index(), 8);
        assert_eq!(Branch::FlowCacheFill.index(), 9);
        assert_eq!(Branch::COUNT, 10);
    }

    #[test]
    fn ring_index_separates_generations_and_tables() {
        let m = 7;
        assert_eq!(ring_index(0, 0, m, 0), 0);
        assert_eq!(ring_index(0, 1, m, 0), 7);
        assert_eq!(ring_index(1, 0, m, 6), 20);
        assert_eq!(ring_index(1, 3, m, 0), ring_index(1, 1, m, 0));
    }
}
