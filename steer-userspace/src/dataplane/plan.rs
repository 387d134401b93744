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
//! 4. After a grace period for rings that flipped recently, every changed
//!    table is written to its shadow ring and flipped in.
//! 5. Each service's VIP entry; reals that are down, and reals no table
//!    points at any more, are written after the flip.
//! 6. `VIP_ADDRS` and the exact filter bitmap.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use steer_common::{
    maglev, vip_filter_bit, AddrKey, Real, Settings, VipInfo, VipKey, REAL_F_DOWN, REAL_F_PRESENT,
    SETTINGS_F_PORT0_VIPS, SETTINGS_F_READY, VIP_FILTER_WORDS, VIP_F_CLIENT_AFFINITY,
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
}

/// Data-plane-wide settings (the `SETTINGS` map, but for the ring size,
/// which is a load-time limit).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Globals {
    pub mtu: u32,
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
}

/// One backend's id in one service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RealSlot {
    pub id: u32,
    pub address: IpAddr,
}

/// What the ledger holds for one service.
#[derive(Clone, Debug)]
pub struct ServiceSlot {
    /// Doubles as the table id.
    pub vip_id: u32,
    pub key: VipKey,
    pub info: VipInfo,
    pub reals: BTreeMap<String, RealSlot>,
    /// The active ring's content.
    pub table: Arc<Vec<u32>>,
    /// What `table` was built from: (real id, backend name, weight); `None`
    /// forces a rebuild.
    pub inputs: Option<Vec<(u32, String, u32)>>,
    /// The active ring (0 or 1).
    pub generation: u32,
    pub last_flip: Option<Instant>,
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
    /// Write `table` to ring `generation` of table `vip_id`, then flip the
    /// table's generation word to it.
    Table {
        vip_id: u32,
        generation: u32,
        table: Arc<Vec<u32>>,
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
    inputs: Vec<(u32, String, u32)>,
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
        }
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
            let vip_id = self.free_vips.pop().ok_or(PlanError::Capacity {
                what: "services",
                max: self.limits.max_tables,
                knob: "max_tables",
            })?;
            new_vip = Some(vip_id);
            self.services.insert(
                d.name.clone(),
                ServiceSlot {
                    vip_id,
                    key: vip_key(d),
                    info: VipInfo::default(),
                    reals: BTreeMap::new(),
                    table: Arc::new(Vec::new()),
                    inputs: None,
                    generation: 0,
                    last_flip: None,
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
        let inputs = d
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
        Ok(Prepared {
            reals,
            retired,
            inputs,
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
        self.free_vips.push(slot.vip_id);
    }

    /// Plans the writes that program `desired`, at time `now` (for the
    /// grace period of recently flipped rings). Returns the ledger after
    /// the writes; `self` is unchanged, so on error nothing is allocated.
    pub fn plan(
        &self,
        desired: &[DesiredService],
        globals: &Globals,
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
        }
        let mut next = self.clone();
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
        // point at them.
        for (d, p) in desired.iter().zip(&prepared) {
            for b in d.backends.iter().filter(|b| b.up) {
                writes.push(next.real(p.reals[&b.name].id, Some((&b.address, true))));
            }
        }
        // 4. Tables whose inputs changed, built in parallel.
        let todo: Vec<usize> = desired
            .iter()
            .zip(&prepared)
            .enumerate()
            .filter(|(_, (d, p))| next.services[&d.name].inputs.as_ref() != Some(&p.inputs))
            .map(|(i, _)| i)
            .collect();
        let mut tables: BTreeMap<usize, Vec<u32>> =
            build_tables(&prepared, &todo, self.limits.ring_size)
                .into_iter()
                .filter(|(i, t)| *next.services[&desired[*i].name].table != *t)
                .collect();
        // A ring that was active within the grace period may still be read
        // by a packet: wait once for all of them, not once per table.
        let wait = tables
            .keys()
            .filter_map(|i| next.services[&desired[*i].name].last_flip)
            .map(|t| GRACE.saturating_sub(now.saturating_duration_since(t)))
            .max()
            .unwrap_or_default();
        if !wait.is_zero() {
            writes.push(Write::Wait(wait));
        }
        let flipped_at = now + wait;
        let mut late = Vec::new();
        for (i, (d, p)) in desired.iter().zip(prepared).enumerate() {
            let slot = next.services.get_mut(&d.name).expect("prepared above");
            slot.inputs = Some(p.inputs);
            if let Some(table) = tables.remove(&i) {
                let generation = slot.generation.wrapping_add(1) & 1;
                let table = Arc::new(table);
                writes.push(Write::Table {
                    vip_id: slot.vip_id,
                    generation,
                    table: table.clone(),
                });
                slot.generation = generation;
                slot.table = table;
                slot.last_flip = Some(flipped_at);
            }
            // 5. The VIP entry, then what the new table no longer uses.
            let info = VipInfo {
                vip_id: slot.vip_id,
                table_id: slot.vip_id,
                flags: if d.client_affinity {
                    VIP_F_CLIENT_AFFINITY
                } else {
                    0
                },
                _pad: 0,
            };
            slot.info = info;
            late.push(Write::Vip {
                key: vip_key(d),
                info,
            });
            for b in d.backends.iter().filter(|b| !b.up) {
                late.push(next.real(p.reals[&b.name].id, Some((&b.address, false))));
            }
            for id in p.retired {
                late.push(next.real(id, None));
                next.free_reals.push_back(id);
            }
            next.services
                .get_mut(&d.name)
                .expect("prepared above")
                .reals = p.reals;
        }
        writes.append(&mut late);
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
                    family,
                    _pad: [0; 3],
                })
                .collect(),
        ));
        Ok((next, writes))
    }
}

/// Builds the Maglev tables of the `todo` services on several threads.
fn build_tables(prepared: &[Prepared], todo: &[usize], size: u32) -> Vec<(usize, Vec<u32>)> {
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
                        .map(|&i| {
                            let entries: Vec<maglev::Entry<'_>> = prepared[i]
                                .inputs
                                .iter()
                                .map(|(id, name, w)| maglev::Entry {
                                    id: *id,
                                    key: name.as_bytes(),
                                    weight: *w,
                                })
                                .collect();
                            (i, maglev::build(&entries, size))
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
