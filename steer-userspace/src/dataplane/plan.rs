//! The data plane's plan: a pure function from the desired services and the
//! id ledger to the list of map writes that programs them, in a safe order.
//! No BPF object here: the writer (`super::Dataplane`) executes the writes.
//!
//! Order of the writes (each step is safe for packets in flight):
//! 0. `SETTINGS` and the fallback source MAC.
//! 1. VIPs of removed services go, then their reals are cleared.
//! 2. The VIP filter gains the bits of every wanted VIP (old bits kept).
//! 3. Every id the plan allocates (a new service's VIP id, a new backend's
//!    real id) has its counters zeroed, so a service or backend never
//!    inherits the counters of one that held the id before. Then reals
//!    that are up are present before any table points at them.
//!    A real that is down is written (present, down) this early only if
//!    this plan allocated its id: a table may point at a backend that is
//!    down (panic, fail-open), and must never point at an absent one.
//! 4. After a grace period for rings that flipped recently, every changed
//!    table (a service's default table and its class tables) is written to
//!    its shadow ring and flipped in.
//! 5. The client-class maps (`CLASS_V4` words that changed, `CLASS_V6`
//!    prefixes removed and added), then per service its `CLASS_TABLES` row
//!    and its VIP entry; reals that are down, and reals no table points at
//!    any more, are written after the flip. Class tables a service no
//!    longer has are freed only after the plan (reused by a later one).
//! 6. `VIP_ADDRS` and the exact filter bitmap.
//!
//! Table ids and VIP ids come from one pool of `max_tables` ids: a
//! service's default table has its VIP id, and each class with its own
//! table takes one more id.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use steer_common::{
    class_v4_index, maglev, vip_filter_bit, AddrKey, ClassRow, ClassV6Key, Real, Settings, VipInfo,
    VipKey, CLASS_SLOTS, CLASS_V4_MAX_LEN, CLASS_V6_MAX_LEN, NO_REAL, REAL_F_DOWN, REAL_F_PRESENT,
    RESIDENCY_DROP, SETTINGS_F_PORT0_VIPS, SETTINGS_F_READY, VIP_FILTER_WORDS, VIP_F_CLASSES,
    VIP_F_CLIENT_AFFINITY,
};

use super::Limits;

/// How long a ring that was just retired may still be read by a packet that
/// loaded the old generation. The program runs inside an RCU read-side
/// section of a few microseconds; this is a wide margin.
pub const GRACE: Duration = Duration::from_millis(10);

/// What the data plane should hold for one backend of one service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DesiredBackend {
    pub name: String,
    pub address: IpAddr,
    /// Effective weight for new flows; 0 = drained (existing flows stay).
    pub weight: u32,
    /// False when the backend is down: its flows are re-selected.
    pub up: bool,
}

/// What the data plane should hold for one service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DesiredService {
    pub name: String,
    pub vip: IpAddr,
    /// 0 = every port.
    pub port: u16,
    /// IP protocol number (6 or 17).
    pub protocol: u8,
    pub client_affinity: bool,
    pub backends: Vec<DesiredBackend>,
    /// The service's selection tables. Empty: one Maglev table over the up
    /// backends by weight (as before classes existed). An entry for class
    /// 0 replaces that default table; an entry for class 1..=255 gives
    /// clients of that class (see [`DesiredClasses`]) their own table.
    pub tables: Vec<DesiredTable>,
}

/// One selection table of a service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DesiredTable {
    /// 0 = the service's default table (clients without a class, or of a
    /// class without its own table); 1..=255 = that client class.
    pub class: u8,
    pub slots: TableSlots,
}

/// The content of a selection table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TableSlots {
    /// Maglev over the service's up backends by weight (the table a
    /// service without classes has).
    Maglev,
    /// Exactly `ring_size` slots, each an index into
    /// [`DesiredService::backends`] (the backend gets the flows of the
    /// slot, even if it is down: panic, fail-open), or
    /// [`steer_common::NO_REAL`] (dropped as `no_backend`) or
    /// [`steer_common::RESIDENCY_DROP`] (dropped as `residency`).
    Slots(Arc<Vec<u32>>),
}

/// The client classes, global to the data plane: prefix -> class id
/// (1..=255). The longest matching prefix wins, per family. IPv4 prefixes
/// are at most /24 and IPv6 at most /64 (the maps' granularity); host bits
/// are ignored. The same prefix twice is an error.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DesiredClasses {
    /// (address, prefix length, class id).
    pub v4: Vec<([u8; 4], u8, u8)>,
    /// (address, prefix length, class id).
    pub v6: Vec<([u8; 16], u8, u8)>,
}

/// Data-plane-wide settings (the `SETTINGS` map, but for the ring size,
/// which is a load-time limit).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Globals {
    pub mtu: u32,
    /// Path-MTU replies per second per CPU (`dataplane.pmtu_reply_rate`);
    /// 0: none.
    pub pmtu_reply_rate: u16,
    /// Path-MTU replies a CPU may send back to back
    /// (`dataplane.pmtu_reply_burst`).
    pub pmtu_reply_burst: u16,
    pub next_hop_mac: [u8; 6],
    pub ttl: u8,
    /// Outer IPv4 source range (address, prefix length).
    pub encap_source_v4: Option<([u8; 4], u8)>,
    /// Outer IPv6 source range (address, prefix length).
    pub encap_source_v6: Option<([u8; 16], u8)>,
    /// Source MAC of transmitted frames when the ingress interface's own
    /// MAC is not known (`dataplane.source_mac`, `steer replay
    /// --source-mac`); `None`: such frames are dropped (`no_source_mac`).
    pub source_mac: Option<[u8; 6]>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PlanError {
    #[error("too many {what}: the data plane holds at most {max} (raise dataplane.{knob})")]
    Capacity {
        what: &'static str,
        max: u32,
        knob: &'static str,
    },
    #[error("service {service}: IPv6 VIP cannot be sent to IPv4 backend {backend}")]
    FamilyMismatch { service: String, backend: String },
    /// A service's tables are inconsistent (a bug in the caller: the
    /// policy builds them).
    #[error("service {service}: table of class {class}: {problem}")]
    Table {
        service: String,
        class: u8,
        problem: String,
    },
    /// The client classes are inconsistent (a bug in the caller: config
    /// validation rejects such classes).
    #[error("client classes: {0}")]
    Classes(String),
}

/// One backend's id in one service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RealSlot {
    pub id: u32,
    pub address: IpAddr,
}

/// What a table was built from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TableInputs {
    /// Maglev over (real id, backend name, weight).
    Maglev(Vec<(u32, String, u32)>),
    /// The slots themselves: real ids, `NO_REAL` or `RESIDENCY_DROP`.
    Slots(Arc<Vec<u32>>),
}

/// What the ledger holds for one selection table.
#[derive(Clone, Debug)]
pub struct TableSlot {
    pub table_id: u32,
    /// The active ring's content.
    pub table: Arc<Vec<u32>>,
    /// What `table` was built from; `None` forces a rebuild.
    pub inputs: Option<TableInputs>,
    /// The active ring (0 or 1).
    pub generation: u32,
    pub last_flip: Option<Instant>,
}

impl TableSlot {
    fn new(table_id: u32) -> TableSlot {
        TableSlot {
            table_id,
            table: Arc::new(Vec::new()),
            inputs: None,
            generation: 0,
            last_flip: None,
        }
    }
}

/// What the ledger holds for one service.
#[derive(Clone, Debug)]
pub struct ServiceSlot {
    /// Also the id of the default table (`tables[&0]`).
    pub vip_id: u32,
    pub key: VipKey,
    pub info: VipInfo,
    pub reals: BTreeMap<String, RealSlot>,
    /// By class: 0 is the default table (always there), 1..=255 the
    /// classes with their own table.
    pub tables: BTreeMap<u8, TableSlot>,
    /// The `CLASS_TABLES` row as last written (all zero: none).
    pub row: Arc<ClassRow>,
}

impl ServiceSlot {
    /// The default table.
    pub fn default_table(&self) -> &TableSlot {
        &self.tables[&0]
    }
}

/// What the client-class maps hold.
#[derive(Clone, Debug, Default)]
pub struct ClassState {
    /// What they were programmed from; `None`: unknown (adopted from a
    /// previous run), so the next plan compares the content.
    pub desired: Option<Arc<DesiredClasses>>,
    /// `CLASS_V4` as bytes, one class id per /24; empty = all zero.
    pub v4: Arc<Vec<u8>>,
    /// `CLASS_V6` (the trie: every IPv6 prefix but the exact /48s).
    pub v6: Arc<BTreeMap<ClassV6Key, u8>>,
    /// `CLASS_V6_48`: /48 prefixes with no longer prefix inside them, by
    /// their six bytes.
    pub v6_48: Arc<BTreeMap<[u8; 6], u8>>,
}

/// Which ids the services and backends hold, and the state of the rings.
#[derive(Clone, Debug)]
pub struct IdLedger {
    pub limits: Limits,
    pub services: BTreeMap<String, ServiceSlot>,
    /// Free VIP ids, the next one last.
    pub free_vips: Vec<u32>,
    /// Per real id: bumped whenever the id is reused.
    pub real_generation: Vec<u32>,
    /// Freed real ids, reused oldest first so stale flows see a generation
    /// change long after the fact rather than at once.
    pub free_reals: VecDeque<u32>,
    pub next_real: u32,
    /// The `VIP_FILTER` bitmap.
    pub filter: Vec<u64>,
    /// The client-class maps.
    pub classes: ClassState,
}

/// One write to the maps.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Write {
    Settings(Settings),
    /// Set (or, `None`, remove) the fallback source MAC: key
    /// `SOURCE_MAC_FALLBACK` of `SOURCE_MACS`.
    FallbackSourceMac(Option<[u8; 6]>),
    /// Zero `VIP_STATS[vip]` and/or `REAL_STATS[real]` on every CPU: the id
    /// was just allocated and may have counted for a service or backend
    /// that held it before. Emitted before anything references the id.
    ZeroStats {
        vip: Option<u32>,
        real: Option<u32>,
    },
    /// Remove a VIP from `VIPS`.
    RemoveVip(VipKey),
    Real {
        id: u32,
        real: Real,
    },
    /// The whole `VIP_FILTER` bitmap (the writer writes changed words).
    Filter(Vec<u64>),
    /// Wait before the next writes (grace period of retired rings).
    Wait(Duration),
    /// Write `table` to ring `generation` of table `table_id`, then flip
    /// the table's generation word to it.
    Table {
        table_id: u32,
        generation: u32,
        table: Arc<Vec<u32>>,
    },
    /// `CLASS_V4` 32-bit words that change: (word index, i.e. byte offset
    /// / 4 of the mapped map, and the four class bytes in memory order).
    ClassV4(Vec<(u32, [u8; 4])>),
    /// `CLASS_V6` and `CLASS_V6_48` changes, executed in this order:
    /// trie inserts (or overwrites), /48 inserts, /48 removals, trie
    /// removals, so that a prefix moving between the two maps is in one of
    /// them throughout.
    ClassV6 {
        insert: Vec<(ClassV6Key, u8)>,
        insert_48: Vec<([u8; 6], u8)>,
        remove_48: Vec<[u8; 6]>,
        remove: Vec<ClassV6Key>,
    },
    /// `CLASS_TABLES[vip_id]`.
    ClassRow {
        vip_id: u32,
        row: Arc<ClassRow>,
    },
    Vip {
        key: VipKey,
        info: VipInfo,
    },
    /// The exact set of VIP addresses (`VIP_ADDRS`).
    VipAddrs(Vec<AddrKey>),
}

/// The map key of a service's VIP.
pub fn vip_key(d: &DesiredService) -> VipKey {
    let (addr, family) = addr_bytes(&d.vip);
    VipKey {
        addr,
        port: steer_common::port_to_wire(d.port),
        proto: d.protocol,
        family,
    }
}

/// An address as the maps store it: 16 bytes (IPv4 in the first four) and
/// its family.
pub fn addr_bytes(a: &IpAddr) -> ([u8; 16], u8) {
    let mut out = [0u8; 16];
    match a {
        IpAddr::V4(v4) => {
            out[..4].copy_from_slice(&v4.octets());
            (out, steer_common::FAMILY_V4)
        }
        IpAddr::V6(v6) => (v6.octets(), steer_common::FAMILY_V6),
    }
}

fn prefix_mask(host_bits: u32) -> u32 {
    if host_bits >= 32 {
        u32::MAX
    } else {
        (1u32 << host_bits) - 1
    }
}

/// The `SETTINGS` value for `globals` and these services.
pub fn settings(limits: &Limits, g: &Globals, desired: &[DesiredService]) -> Settings {
    let mut s = Settings {
        ring_size: limits.ring_size,
        mtu: g.mtu,
        pmtu_reply_rate: g.pmtu_reply_rate,
        pmtu_reply_burst: g.pmtu_reply_burst,
        next_hop_mac: g.next_hop_mac,
        ttl: g.ttl,
        flags: SETTINGS_F_READY,
        ..Default::default()
    };
    if let Some((addr, len)) = g.encap_source_v4 {
        s.src4_base = addr;
        s.src4_mask = prefix_mask(32 - u32::from(len.min(32)));
    }
    if let Some((addr, len)) = g.encap_source_v6 {
        s.src6_base = addr;
        s.src6_mask = prefix_mask(128 - u32::from(len.min(128)));
    }
    if desired.iter().any(|d| d.port == 0) {
        s.flags |= SETTINGS_F_PORT0_VIPS;
    }
    s
}

/// A real as the `REALS` map holds it.
pub(super) fn real_value(generation: u32, value: Option<(&IpAddr, bool)>) -> Real {
    match value {
        None => Real {
            generation,
            ..Default::default()
        },
        Some((addr, up)) => {
            let (addr, family) = addr_bytes(addr);
            Real {
                addr,
                family,
                flags: REAL_F_PRESENT | if up { 0 } else { REAL_F_DOWN },
                _pad: [0; 2],
                generation,
            }
        }
    }
}

/// A service's reals, allocated but not yet written.
struct Prepared {
    reals: BTreeMap<String, RealSlot>,
    retired: Vec<u32>,
    /// Per class (0 = default): what its table is built from.
    inputs: BTreeMap<u8, TableInputs>,
    /// Ids of class tables the service no longer has (freed after the
    /// plan).
    retired_tables: Vec<u32>,
    /// The VIP id, if this plan allocated it.
    new_vip: Option<u32>,
    /// Real ids this plan allocated (fresh, freed by another service, or a
    /// spare of this one given to another backend).
    new_reals: Vec<u32>,
}

impl IdLedger {
    /// An empty ledger: every id free.
    pub fn new(limits: Limits) -> IdLedger {
        IdLedger {
            limits,
            services: BTreeMap::new(),
            free_vips: (0..limits.max_tables).rev().collect(),
            real_generation: vec![0; limits.max_reals as usize],
            free_reals: VecDeque::new(),
            next_real: 0,
            filter: vec![0; VIP_FILTER_WORDS as usize],
            classes: ClassState::default(),
        }
    }

    fn alloc_table(&mut self) -> Result<u32, PlanError> {
        self.free_vips.pop().ok_or(PlanError::Capacity {
            what: "services and class tables",
            max: self.limits.max_tables,
            knob: "max_tables",
        })
    }

    fn bump_generation(&mut self, id: u32) {
        let g = &mut self.real_generation[id as usize];
        *g = g.wrapping_add(1);
    }

    fn alloc_real(&mut self) -> Result<u32, PlanError> {
        if let Some(id) = self.free_reals.pop_front() {
            self.bump_generation(id);
            return Ok(id);
        }
        if self.next_real >= self.limits.max_reals {
            return Err(PlanError::Capacity {
                what: "service backends",
                max: self.limits.max_reals,
                knob: "max_reals",
            });
        }
        self.next_real += 1;
        Ok(self.next_real - 1)
    }

    fn real(&self, id: u32, value: Option<(&IpAddr, bool)>) -> Write {
        Write::Real {
            id,
            real: real_value(self.real_generation[id as usize], value),
        }
    }

    /// Allocates the service's slot and real ids; nothing is written yet.
    fn prepare_service(&mut self, d: &DesiredService) -> Result<Prepared, PlanError> {
        let mut new_vip = None;
        let mut new_reals = Vec::new();
        if !self.services.contains_key(&d.name) {
            let vip_id = self.alloc_table()?;
            new_vip = Some(vip_id);
            self.services.insert(
                d.name.clone(),
                ServiceSlot {
                    vip_id,
                    key: vip_key(d),
                    info: VipInfo::default(),
                    reals: BTreeMap::new(),
                    tables: BTreeMap::from([(0, TableSlot::new(vip_id))]),
                    row: Arc::new([0; CLASS_SLOTS]),
                },
            );
        }
        // Reals: keep ids of backends whose address is unchanged. (Taken
        // out of the slot: the plan works on a copy of the ledger, and the
        // slot gets the new reals when the plan finishes.)
        let old_reals = std::mem::take(
            &mut self
                .services
                .get_mut(&d.name)
                .expect("inserted above")
                .reals,
        );
        let wanted: HashMap<&str, &IpAddr> = d
            .backends
            .iter()
            .map(|b| (b.name.as_str(), &b.address))
            .collect();
        let mut reals = BTreeMap::new();
        // Ids this service gives up (backend removed or readdressed): they
        // may be reused for its new backends when the pool is exhausted.
        let mut spare: Vec<u32> = old_reals
            .iter()
            .filter(|(n, r)| wanted.get(n.as_str()) != Some(&&r.address))
            .map(|(_, r)| r.id)
            .collect();
        for b in &d.backends {
            let id = match old_reals.get(&b.name) {
                Some(r) if r.address == b.address => r.id,
                _ => {
                    let id = match self.alloc_real() {
                        Ok(id) => id,
                        Err(e) => {
                            // Reuse a spare id under a new generation: flows
                            // pinned to its old backend re-select.
                            let id = spare.pop().ok_or(e)?;
                            self.bump_generation(id);
                            id
                        }
                    };
                    new_reals.push(id);
                    id
                }
            };
            reals.insert(
                b.name.clone(),
                RealSlot {
                    id,
                    address: b.address,
                },
            );
        }
        // Ids of the old reals that no new real kept or reused.
        let kept: HashSet<u32> = reals.values().map(|n: &RealSlot| n.id).collect();
        let retired = old_reals
            .values()
            .filter(|r| !kept.contains(&r.id))
            .map(|r| r.id)
            .collect();
        // Down and zero-weight backends get no slots.
        let maglev: Vec<(u32, String, u32)> = d
            .backends
            .iter()
            .map(|b| {
                (
                    reals[&b.name].id,
                    b.name.clone(),
                    if b.up { b.weight } else { 0 },
                )
            })
            .collect();
        let mut inputs = BTreeMap::from([(0, TableInputs::Maglev(maglev.clone()))]);
        for t in &d.tables {
            let value = match &t.slots {
                TableSlots::Maglev => TableInputs::Maglev(maglev.clone()),
                TableSlots::Slots(slots) => TableInputs::Slots(Arc::new(
                    slots
                        .iter()
                        .map(|&v| match v {
                            NO_REAL | RESIDENCY_DROP => v,
                            // In range: checked by `check_tables`.
                            i => reals[&d.backends[i as usize].name].id,
                        })
                        .collect(),
                )),
            };
            inputs.insert(t.class, value);
        }
        // Class tables: ids for new classes, retire the ones gone.
        let slot = self.services.get_mut(&d.name).expect("inserted above");
        let gone: Vec<u8> = slot
            .tables
            .keys()
            .filter(|c| !inputs.contains_key(c))
            .copied()
            .collect();
        let retired_tables = gone
            .iter()
            .filter_map(|c| slot.tables.remove(c))
            .map(|t| t.table_id)
            .collect();
        for class in inputs.keys() {
            if !self.services[&d.name].tables.contains_key(class) {
                let id = self.alloc_table()?;
                self.services
                    .get_mut(&d.name)
                    .expect("inserted above")
                    .tables
                    .insert(*class, TableSlot::new(id));
            }
        }
        Ok(Prepared {
            reals,
            retired,
            inputs,
            retired_tables,
            new_vip,
            new_reals,
        })
    }

    /// Removes a service from the ledger: its VIP goes, its reals are
    /// cleared and their ids freed.
    fn remove_service(&mut self, name: &str, writes: &mut Vec<Write>) {
        let Some(slot) = self.services.remove(name) else {
            return;
        };
        writes.push(Write::RemoveVip(slot.key));
        for real in slot.reals.values() {
            writes.push(self.real(real.id, None));
            self.free_reals.push_back(real.id);
        }
        // Class tables go to the back of the pool (reused last); the VIP
        // id (its default table) is reused first, as before.
        for t in slot.tables.values().filter(|t| t.table_id != slot.vip_id) {
            self.free_vips.insert(0, t.table_id);
        }
        self.free_vips.push(slot.vip_id);
    }

    /// Plans the writes that program `desired`, at time `now` (for the
    /// grace period of recently flipped rings), with the client classes
    /// last planned. Returns the ledger after the writes; `self` is
    /// unchanged, so on error nothing is allocated.
    pub fn plan(
        &self,
        desired: &[DesiredService],
        globals: &Globals,
        now: Instant,
    ) -> Result<(IdLedger, Vec<Write>), PlanError> {
        let classes = self.classes.desired.clone().unwrap_or_default();
        self.plan_with_classes(desired, globals, &classes, now)
    }

    /// [`IdLedger::plan`] with these client classes.
    pub fn plan_with_classes(
        &self,
        desired: &[DesiredService],
        globals: &Globals,
        classes: &Arc<DesiredClasses>,
        now: Instant,
    ) -> Result<(IdLedger, Vec<Write>), PlanError> {
        for d in desired {
            if d.vip.is_ipv6() {
                if let Some(b) = d.backends.iter().find(|b| b.address.is_ipv4()) {
                    return Err(PlanError::FamilyMismatch {
                        service: d.name.clone(),
                        backend: b.name.clone(),
                    });
                }
            }
            check_tables(d, self.limits.ring_size)?;
        }
        let mut next = self.clone();
        let class_writes = next.plan_classes(classes)?;
        let mut writes = vec![
            Write::Settings(settings(&self.limits, globals, desired)),
            Write::FallbackSourceMac(globals.source_mac),
        ];
        // 1. Services that disappeared (or whose VIP changed) are removed.
        let wanted: BTreeMap<&str, &DesiredService> =
            desired.iter().map(|d| (d.name.as_str(), d)).collect();
        let stale: Vec<String> = next
            .services
            .iter()
            .filter(|(name, slot)| match wanted.get(name.as_str()) {
                None => true,
                Some(d) => vip_key(d) != slot.key,
            })
            .map(|(n, _)| n.clone())
            .collect();
        for name in stale {
            next.remove_service(&name, &mut writes);
        }
        // 2. Filter bits of every wanted VIP, old bits kept.
        let mut filter = next.filter.clone();
        for d in desired {
            let bit = vip_filter_bit(&vip_key(d).addr);
            filter[(bit >> 6) as usize] |= 1 << (bit & 63);
        }
        if filter != next.filter {
            writes.push(Write::Filter(filter.clone()));
            next.filter = filter;
        }
        // Allocation, with nothing written yet.
        let prepared = desired
            .iter()
            .map(|d| next.prepare_service(d))
            .collect::<Result<Vec<_>, _>>()?;
        // 3. Counters of newly allocated ids start at zero (a removed
        // service's or backend's counts must not carry over to the next
        // holder of its id); nothing references these ids yet.
        for p in &prepared {
            if let Some(vip) = p.new_vip {
                writes.push(Write::ZeroStats {
                    vip: Some(vip),
                    real: None,
                });
            }
            for &real in &p.new_reals {
                writes.push(Write::ZeroStats {
                    vip: None,
                    real: Some(real),
                });
            }
        }
        // Backends that are up are present and up before any table can
        // point at them; so are newly allocated backends that are down and
        // that a table names (a table may send flows to a down backend,
        // never to an absent one).
        let mut early_down: Vec<HashSet<u32>> = Vec::with_capacity(prepared.len());
        for (d, p) in desired.iter().zip(&prepared) {
            let named: HashSet<u32> = p
                .inputs
                .values()
                .filter_map(|i| match i {
                    TableInputs::Slots(s) => Some(s.iter().copied()),
                    TableInputs::Maglev(_) => None,
                })
                .flatten()
                .filter(|id| p.new_reals.contains(id))
                .collect();
            for b in &d.backends {
                let id = p.reals[&b.name].id;
                if b.up || named.contains(&id) {
                    writes.push(next.real(id, Some((&b.address, b.up))));
                }
            }
            early_down.push(named);
        }
        // 4. Tables whose inputs changed, built in parallel.
        let todo: Vec<(usize, u8)> = desired
            .iter()
            .zip(&prepared)
            .enumerate()
            .flat_map(|(i, (d, p))| {
                let slot = &next.services[&d.name];
                p.inputs
                    .iter()
                    .filter(|(c, inputs)| slot.tables[c].inputs.as_ref() != Some(inputs))
                    .map(move |(c, _)| (i, *c))
            })
            .collect();
        let mut tables: BTreeMap<(usize, u8), Arc<Vec<u32>>> =
            build_tables(&prepared, &todo, self.limits.ring_size)
                .into_iter()
                .filter(|((i, c), t)| next.services[&desired[*i].name].tables[c].table != *t)
                .collect();
        // A ring that was active within the grace period may still be read
        // by a packet: wait once for all of them, not once per table.
        let wait = tables
            .keys()
            .filter_map(|(i, c)| next.services[&desired[*i].name].tables[c].last_flip)
            .map(|t| GRACE.saturating_sub(now.saturating_duration_since(t)))
            .max()
            .unwrap_or_default();
        if !wait.is_zero() {
            writes.push(Write::Wait(wait));
        }
        let flipped_at = now + wait;
        for ((i, class), table) in std::mem::take(&mut tables) {
            let slot = next
                .services
                .get_mut(&desired[i].name)
                .expect("prepared above")
                .tables
                .get_mut(&class)
                .expect("allocated by prepare_service");
            let generation = slot.generation.wrapping_add(1) & 1;
            writes.push(Write::Table {
                table_id: slot.table_id,
                generation,
                table: table.clone(),
            });
            slot.generation = generation;
            slot.table = table;
            slot.last_flip = Some(flipped_at);
        }
        // 5. The class maps, then per service its class row and VIP entry,
        // then what the new tables no longer use.
        writes.extend(class_writes);
        let mut late = Vec::new();
        let mut freed_tables = Vec::new();
        for ((d, p), early) in desired.iter().zip(prepared).zip(early_down) {
            let slot = next.services.get_mut(&d.name).expect("prepared above");
            for (class, inputs) in p.inputs {
                if let Some(t) = slot.tables.get_mut(&class) {
                    t.inputs = Some(inputs);
                }
            }
            let mut row: ClassRow = [0; CLASS_SLOTS];
            for (class, t) in slot.tables.iter().filter(|(c, _)| **c != 0) {
                row[usize::from(*class)] = t.table_id + 1;
            }
            if *slot.row != row {
                slot.row = Arc::new(row);
                writes.push(Write::ClassRow {
                    vip_id: slot.vip_id,
                    row: slot.row.clone(),
                });
            }
            let mut flags = 0;
            if d.client_affinity {
                flags |= VIP_F_CLIENT_AFFINITY;
            }
            if slot.tables.len() > 1 {
                flags |= VIP_F_CLASSES;
            }
            let info = VipInfo {
                vip_id: slot.vip_id,
                table_id: slot.vip_id,
                flags,
                _pad: 0,
            };
            slot.info = info;
            writes.push(Write::Vip {
                key: vip_key(d),
                info,
            });
            for b in d.backends.iter().filter(|b| !b.up) {
                let id = p.reals[&b.name].id;
                if !early.contains(&id) {
                    late.push(next.real(id, Some((&b.address, false))));
                }
            }
            for id in p.retired {
                late.push(next.real(id, None));
                next.free_reals.push_back(id);
            }
            freed_tables.extend(p.retired_tables);
            next.services
                .get_mut(&d.name)
                .expect("prepared above")
                .reals = p.reals;
        }
        writes.append(&mut late);
        // Freed class tables are reused last: no row points at them any
        // more, and a later plan's rewrite of their rings is far off.
        for id in freed_tables {
            next.free_vips.insert(0, id);
        }
        // 6. The exact VIP addresses and filter.
        let addrs: BTreeSet<([u8; 16], u8)> = next
            .services
            .values()
            .map(|s| (s.key.addr, s.key.family))
            .collect();
        let mut exact = vec![0u64; VIP_FILTER_WORDS as usize];
        for (addr, _) in &addrs {
            let bit = vip_filter_bit(addr);
            exact[(bit >> 6) as usize] |= 1 << (bit & 63);
        }
        if exact != next.filter {
            writes.push(Write::Filter(exact.clone()));
            next.filter = exact;
        }
        writes.push(Write::VipAddrs(
            addrs
                .into_iter()
                .map(|(addr, family)| AddrKey {
                    addr,
                    family: family.into(),
                })
                .collect(),
        ));
        Ok((next, writes))
    }

    /// The writes that bring the class maps from what they hold to
    /// `classes` (none if they were programmed from equal classes), and
    /// the new class state in `self`.
    fn plan_classes(&mut self, classes: &Arc<DesiredClasses>) -> Result<Vec<Write>, PlanError> {
        if self.classes.desired.as_deref() == Some(&**classes) {
            return Ok(Vec::new());
        }
        let v4 = paint_v4(&classes.v4)?;
        let (v6_48, v6) = split_v6(trie_v6(&classes.v6)?);
        let mut writes = Vec::new();
        let words = diff_v4(&self.classes.v4, &v4);
        if !words.is_empty() {
            writes.push(Write::ClassV4(words));
        }
        let (remove, insert) = diff_map(&self.classes.v6, &v6);
        let (remove_48, insert_48) = diff_map(&self.classes.v6_48, &v6_48);
        if !remove.is_empty()
            || !insert.is_empty()
            || !remove_48.is_empty()
            || !insert_48.is_empty()
        {
            writes.push(Write::ClassV6 {
                insert,
                insert_48,
                remove_48,
                remove,
            });
        }
        self.classes = ClassState {
            desired: Some(classes.clone()),
            v4: Arc::new(v4),
            v6: Arc::new(v6),
            v6_48: Arc::new(v6_48),
        };
        Ok(writes)
    }
}

/// Checks a service's tables: one per class at most, slots of ring size,
/// every slot a backend index or a marker.
fn check_tables(d: &DesiredService, ring_size: u32) -> Result<(), PlanError> {
    let err = |class: u8, problem: String| PlanError::Table {
        service: d.name.clone(),
        class,
        problem,
    };
    let mut seen = BTreeSet::new();
    for t in &d.tables {
        if !seen.insert(t.class) {
            return Err(err(t.class, "given twice".into()));
        }
        if let TableSlots::Slots(slots) = &t.slots {
            if slots.len() != ring_size as usize {
                return Err(err(
                    t.class,
                    format!("{} slots, the ring size is {ring_size}", slots.len()),
                ));
            }
            if let Some(bad) = slots
                .iter()
                .find(|&&v| v != NO_REAL && v != RESIDENCY_DROP && v as usize >= d.backends.len())
            {
                return Err(err(
                    t.class,
                    format!(
                        "slot value {bad} is neither a backend index (the service has {}) nor a marker",
                        d.backends.len()
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// The `CLASS_V4` bytes for these prefixes (one class id per /24), the
/// longest prefix winning: prefixes are painted shortest first. Empty when
/// there is no prefix (all zero).
pub fn paint_v4(prefixes: &[([u8; 4], u8, u8)]) -> Result<Vec<u8>, PlanError> {
    if prefixes.is_empty() {
        return Ok(Vec::new());
    }
    let mut sorted: Vec<(u8, u32, u8)> = Vec::with_capacity(prefixes.len());
    for &(addr, len, class) in prefixes {
        if len > CLASS_V4_MAX_LEN || class == 0 {
            return Err(PlanError::Classes(format!(
                "{}/{len} -> class {class}: IPv4 class prefixes are /0../{CLASS_V4_MAX_LEN} and class ids 1..=255",
                std::net::Ipv4Addr::from(addr)
            )));
        }
        let keep = u32::from(CLASS_V4_MAX_LEN - len);
        sorted.push((len, class_v4_index(addr) >> keep << keep, class));
    }
    sorted.sort_unstable();
    if let Some(w) = sorted
        .windows(2)
        .find(|w| w[0].0 == w[1].0 && w[0].1 == w[1].1)
    {
        let first = w[0].1 << 8;
        return Err(PlanError::Classes(format!(
            "{}/{} is given twice",
            std::net::Ipv4Addr::from(first),
            w[0].0
        )));
    }
    let mut bytes = vec![0u8; 1 << 24];
    for (len, start, class) in sorted {
        let n = 1usize << (CLASS_V4_MAX_LEN - len);
        bytes[start as usize..start as usize + n].fill(class);
    }
    Ok(bytes)
}

/// The `CLASS_V4` words (4 bytes each) that differ between two paintings
/// (empty = all zero).
pub fn diff_v4(old: &[u8], new: &[u8]) -> Vec<(u32, [u8; 4])> {
    const ZERO: [u8; 4] = [0; 4];
    let n = old.len().max(new.len()) / 4;
    let word = |v: &[u8], i: usize| -> [u8; 4] {
        v.get(4 * i..4 * i + 4)
            .map(|w| [w[0], w[1], w[2], w[3]])
            .unwrap_or(ZERO)
    };
    (0..n)
        .filter_map(|i| {
            let (a, b) = (word(old, i), word(new, i));
            (a != b).then_some((i as u32, b))
        })
        .collect()
}

/// The keys of `old` not in `new`, and the entries of `new` that `old`
/// lacks or holds with another value.
fn diff_map<K: Ord + Copy, V: PartialEq + Copy>(
    old: &BTreeMap<K, V>,
    new: &BTreeMap<K, V>,
) -> (Vec<K>, Vec<(K, V)>) {
    let remove = old
        .keys()
        .filter(|k| !new.contains_key(k))
        .copied()
        .collect();
    let insert = new
        .iter()
        .filter(|(k, v)| old.get(k) != Some(v))
        .map(|(k, v)| (*k, *v))
        .collect();
    (remove, insert)
}

/// The exact /48s of `CLASS_V6_48` and the trie entries of `CLASS_V6`.
pub type SplitV6 = (BTreeMap<[u8; 6], u8>, BTreeMap<ClassV6Key, u8>);

/// Splits the IPv6 prefixes between `CLASS_V6_48`, a hash keyed by /48
/// (one lookup), and `CLASS_V6`, the trie.
///
/// The longest prefixes of length ≤ 48 are expanded into the /48s they
/// cover, painted shortest first so that the longest prefix wins, as long
/// as the expansion stays within [`v6_48_budget`] entries: every prefix of
/// length ≥ L, for the smallest L that fits. A /48 in the hash holds the
/// longest match of every address inside it, so a lookup that finds it is
/// done. Everything else goes into the trie: the shorter prefixes, those
/// longer than /48, and the /48s that hold such a longer prefix (with every
/// expanded prefix that covers one of them, so the trie alone answers for
/// them).
pub fn split_v6(all: BTreeMap<ClassV6Key, u8>) -> SplitV6 {
    let top48 = |a: [u8; 8]| [a[0], a[1], a[2], a[3], a[4], a[5]];
    let as_u64 = |a: [u8; 6]| u64::from_be_bytes([0, 0, a[0], a[1], a[2], a[3], a[4], a[5]]);
    let holds_longer: BTreeSet<u64> = all
        .keys()
        .filter(|k| k.prefixlen > 48)
        .map(|k| as_u64(top48(k.addr)))
        .collect();
    // Expansion cost per length, longest first, within the budget.
    let budget = v6_48_budget(all.len());
    let mut per_len = [0u64; 49];
    for k in all.keys().filter(|k| k.prefixlen <= 48) {
        per_len[k.prefixlen as usize] += 1 << (48 - k.prefixlen);
    }
    let mut min_len = 49;
    let mut total = 0u64;
    for len in (0..=48).rev() {
        total += per_len[len];
        if total > budget {
            break;
        }
        min_len = len as u32;
    }
    let mut exact: BTreeMap<[u8; 6], u8> = BTreeMap::new();
    let mut trie = BTreeMap::new();
    let mut expand: Vec<(u32, u64, u8)> = Vec::new();
    for (k, class) in all {
        if k.prefixlen >= min_len && k.prefixlen <= 48 {
            let first = as_u64(top48(k.addr));
            let n = 1u64 << (48 - k.prefixlen);
            // A /48 holding a longer prefix is left to the trie, and so is
            // this prefix if it covers one.
            if holds_longer.range(first..first + n).next().is_some() {
                trie.insert(k, class);
            }
            expand.push((k.prefixlen, first, class));
        } else {
            trie.insert(k, class);
        }
    }
    expand.sort_unstable();
    for (len, first, class) in expand {
        for p in first..first + (1u64 << (48 - len)) {
            if !holds_longer.contains(&p) {
                let b = p.to_be_bytes();
                exact.insert([b[2], b[3], b[4], b[5], b[6], b[7]], class);
            }
        }
    }
    (exact, trie)
}

/// How many `CLASS_V6_48` entries `split_v6` may create for `prefixes`
/// prefixes: twice their number (at least 65,536, one /32's worth), and
/// never more than the map holds.
pub fn v6_48_budget(prefixes: usize) -> u64 {
    (2 * prefixes as u64)
        .max(1 << 16)
        .min(u64::from(steer_common::capacity::CLASS_V6_48))
}

/// The IPv6 prefixes as `CLASS_V6` keys (the top 64 bits), before the
/// exact /48s are split off (see [`split_v6`]).
pub fn trie_v6(prefixes: &[([u8; 16], u8, u8)]) -> Result<BTreeMap<ClassV6Key, u8>, PlanError> {
    let mut out = BTreeMap::new();
    for &(addr, len, class) in prefixes {
        if len > CLASS_V6_MAX_LEN || class == 0 {
            return Err(PlanError::Classes(format!(
                "{}/{len} -> class {class}: IPv6 class prefixes are /0../{CLASS_V6_MAX_LEN} and class ids 1..=255",
                std::net::Ipv6Addr::from(addr)
            )));
        }
        let top = u64::from_be_bytes([
            addr[0], addr[1], addr[2], addr[3], addr[4], addr[5], addr[6], addr[7],
        ]);
        let masked = if len == 0 {
            0
        } else {
            top & (u64::MAX << (64 - u32::from(len)))
        };
        let key = ClassV6Key {
            prefixlen: u32::from(len),
            addr: masked.to_be_bytes(),
        };
        if out.insert(key, class).is_some() {
            return Err(PlanError::Classes(format!(
                "{}/{len} is given twice",
                std::net::Ipv6Addr::from(addr)
            )));
        }
    }
    Ok(out)
}

/// A table of the plan: (service index, class) and its content.
type BuiltTable = ((usize, u8), Arc<Vec<u32>>);

/// Builds the `todo` tables (service index, class) on several threads.
fn build_tables(prepared: &[Prepared], todo: &[(usize, u8)], size: u32) -> Vec<BuiltTable> {
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .clamp(1, 8);
    std::thread::scope(|scope| {
        let chunk = todo.len().div_ceil(threads).max(1);
        let handles: Vec<_> = todo
            .chunks(chunk)
            .map(|ids| {
                scope.spawn(move || {
                    ids.iter()
                        .map(|&(i, class)| {
                            let table = match &prepared[i].inputs[&class] {
                                TableInputs::Slots(slots) => slots.clone(),
                                TableInputs::Maglev(inputs) => {
                                    let entries: Vec<maglev::Entry<'_>> = inputs
                                        .iter()
                                        .map(|(id, name, w)| maglev::Entry {
                                            id: *id,
                                            key: name.as_bytes(),
                                            weight: *w,
                                        })
                                        .collect();
                                    Arc::new(maglev::build(&entries, size))
                                }
                            };
                            ((i, class), table)
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("maglev builder thread panicked"))
            .collect()
    })
}

#[cfg(test)]
#[path = "plan_tests.rs"]
mod tests;

#[cfg(test)]
#[path = "plan_class_tests.rs"]
mod class_tests;
