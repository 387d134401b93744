//! Adopting a previous run's pinned maps: the pinned sizes checked, the
//! state file validated and taken over, the maps reconciled with it (or
//! reset when it cannot be used), and the state file written after every
//! change.

use super::*;

impl Dataplane {
    pub(super) fn check_pinned_sizes(&self) -> Result<()> {
        let l = self.ledger.limits;
        for (name, want) in [
            (names::CONNTRACK4, l.conntrack_size),
            (names::CONNTRACK6, l.conntrack_size_v6),
            (names::RINGS, ring_values(l.max_tables, l.ring_size)),
            (names::REALS, l.max_reals),
            (names::TABLE_GEN, l.max_tables),
            (names::CLASS_TABLES, l.max_tables),
            (names::CLASS_V4, steer_common::CLASS_V4_VALUES),
            (
                names::RECENT_SYN,
                steer_common::syn_buckets(l.conntrack_size),
            ),
        ] {
            let map = self
                .ebpf
                .map(name)
                .ok_or(DataplaneError::MissingMap { name })?;
            let data = match map {
                Map::Array(d) | Map::LruHashMap(d) => d,
                _ => return Err(DataplaneError::MissingMap { name }),
            };
            let found = data.info().map_err(map_err(name))?.max_entries();
            if found != want {
                return Err(DataplaneError::PinnedSizeMismatch { name, found, want });
            }
        }
        Ok(())
    }

    /// Takes over the bookkeeping of a previous run, after checking that
    /// every id in it is in range and owned once, and that the pinned
    /// generation words are valid. On error (the problems found) nothing
    /// may be used: the caller resets the maps instead.
    pub(super) fn adopt(
        &mut self,
        s: &persist::SavedState,
    ) -> std::result::Result<(), Vec<String>> {
        let l = self.ledger.limits;
        persist::validate(s, l.ring_size, l.max_tables, l.max_reals, l.conntrack_size)?;
        let bad_gens: Vec<String> = s
            .services
            .iter()
            .flat_map(|svc| {
                std::iter::once(svc.vip_id)
                    .chain(svc.tables.iter().map(|t| t.table_id))
                    .map(move |id| (svc, id))
            })
            .filter_map(|(svc, id)| {
                let g = self.gens.word(id as usize * 8).load(Ordering::Acquire);
                (g > 1).then(|| {
                    format!(
                        "service {:?}: pinned generation {g} of table {id} is neither 0 nor 1",
                        svc.name
                    )
                })
            })
            .collect();
        if !bad_gens.is_empty() {
            return Err(bad_gens);
        }
        let mut used_vips = BTreeSet::new();
        for svc in &s.services {
            let key = VipKey {
                addr: svc.addr,
                port: svc.port,
                proto: svc.proto,
                family: svc.family,
            };
            // Each table as the kernel holds it; a packet may still hold
            // the other ring: wait before reusing it.
            let read = |table_id: u32| {
                let generation = self
                    .gens
                    .word(table_id as usize * 8)
                    .load(Ordering::Acquire);
                let table = (0..l.ring_size)
                    .map(|i| {
                        let flat = ring_index(table_id, generation, l.ring_size, i);
                        self.rings.word(flat as usize * 4).load(Ordering::Relaxed)
                    })
                    .collect();
                plan::TableSlot {
                    table_id,
                    table: std::sync::Arc::new(table),
                    inputs: None,
                    generation,
                    last_flip: Some(Instant::now()),
                }
            };
            let mut tables = BTreeMap::from([(0u8, read(svc.vip_id))]);
            for t in &svc.tables {
                tables.insert(t.class, read(t.table_id));
                used_vips.insert(t.table_id);
            }
            used_vips.insert(svc.vip_id);
            self.ledger.services.insert(
                svc.name.clone(),
                ServiceSlot {
                    vip_id: svc.vip_id,
                    key,
                    info: VipInfo {
                        vip_id: svc.vip_id,
                        table_id: svc.vip_id,
                        flags: svc.flags,
                        _pad: 0,
                    },
                    reals: svc
                        .reals
                        .iter()
                        .map(|(n, r)| {
                            (
                                n.clone(),
                                RealSlot {
                                    id: r.id,
                                    address: r.address,
                                },
                            )
                        })
                        .collect(),
                    tables,
                    // Unknown: the next plan writes it.
                    row: std::sync::Arc::new([u32::MAX; steer_common::CLASS_SLOTS]),
                },
            );
        }
        self.ledger.free_vips = (0..l.max_tables)
            .rev()
            .filter(|v| !used_vips.contains(v))
            .collect();
        for (id, g) in &s.real_generation {
            if let Some(slot) = self.ledger.real_generation.get_mut(*id as usize) {
                *slot = *g;
            }
        }
        self.ledger.free_reals = s.free_reals.iter().copied().collect();
        self.ledger.next_real = s.next_real;
        self.drained = s.drained.iter().cloned().collect();
        self.drained_regions = s.drained_regions.iter().cloned().collect();
        self.region_drain_deadlines = s.region_drain_deadlines.clone();
        self.shifts = s.shifts.clone();
        Ok(())
    }

    /// Why a previous run's state was not adopted, when there was one that
    /// could not be used (corrupt, foreign or inconsistent): the daemon
    /// logs it as a warning. The maps were reset.
    pub fn discarded_state(&self) -> Option<&str> {
        self.discarded.as_deref()
    }

    /// The flows `open` moved from the conntrack an older steer pinned
    /// (`CONNTRACK`, one map for both families), if there was one.
    pub fn migrated_conntrack(&self) -> Option<Migrated> {
        self.migrated
    }

    /// The state file is written after the maps, so a crash in between can
    /// leave maps ahead of it. Make the maps agree with the adopted
    /// bookkeeping: any real the file does not own is written absent and
    /// moved to a generation newer than anything a conntrack entry can
    /// hold, VIPs the file does not know are removed, and the filter bitmap
    /// is read back as it is.
    pub(super) fn reconcile_adopted(&mut self) -> Result<()> {
        let owned: std::collections::HashMap<u32, IpAddr> = self
            .ledger
            .services
            .values()
            .flat_map(|s| s.reals.values().map(|r| (r.id, r.address)))
            .collect();
        let mut stray = Vec::new();
        {
            let reals: Array<_, Real> = typed(&mut self.ebpf, names::REALS)?;
            for id in 0..self.ledger.limits.max_reals {
                let r = reals.get(&id, 0).map_err(map_err(names::REALS))?;
                let g = &mut self.ledger.real_generation[id as usize];
                match owned.get(&id) {
                    Some(addr) if addr_bytes(addr).0 == r.addr && r.generation == *g => {
                        self.written.insert(id, r);
                    }
                    _ if r.flags == 0 && r.generation <= *g && !owned.contains_key(&id) => {
                        self.written.insert(id, r);
                    }
                    _ => {
                        *g = (*g).max(r.generation).wrapping_add(1);
                        stray.push(id);
                    }
                }
            }
        }
        for id in stray {
            if let Some((addr, up)) = self
                .ledger
                .services
                .values()
                .flat_map(|s| s.reals.values())
                .find(|r| r.id == id)
                .map(|r| (r.address, true))
            {
                // Owned, but the map disagrees: rewrite it (new generation,
                // so old conntrack entries re-select).
                self.write_real(id, Some((&addr, up)))?;
            } else {
                self.write_real(id, None)?;
                if id < self.ledger.next_real && !self.ledger.free_reals.contains(&id) {
                    self.ledger.free_reals.push_back(id);
                }
            }
        }
        let known: std::collections::HashSet<VipKey> =
            self.ledger.services.values().map(|s| s.key).collect();
        let vips: HashMap<_, VipKey, VipInfo> = typed(&mut self.ebpf, names::VIPS)?;
        let keys: Vec<VipKey> = vips.keys().filter_map(|k| k.ok()).collect();
        let unknown: Vec<VipKey> = keys.into_iter().filter(|k| !known.contains(k)).collect();
        // Out of `VIP_SLOTS` before out of `VIPS` (see `vip_slot_clear`).
        for k in &unknown {
            self.vip_slot_clear(k);
        }
        let mut vips: HashMap<_, VipKey, VipInfo> = typed(&mut self.ebpf, names::VIPS)?;
        for k in &unknown {
            let _ = vips.remove(k);
        }
        let bits: Array<_, u64> = typed(&mut self.ebpf, names::VIP_FILTER)?;
        for i in 0..VIP_FILTER_WORDS {
            let w = bits.get(&i, 0).map_err(map_err(names::VIP_FILTER))?;
            self.ledger.filter[i as usize] = w;
            self.filter_written[i as usize] = w;
        }
        // The class maps as they are: the next plan diffs against them.
        self.read_classes()
    }

    /// Pinned maps without usable bookkeeping: forget every service, and
    /// move every real to a new generation so no old conntrack entry can
    /// follow a real id that gets reused for another backend.
    pub(super) fn reset_pinned(&mut self) -> Result<()> {
        {
            let reals: Array<_, Real> = typed(&mut self.ebpf, names::REALS)?;
            for id in 0..self.ledger.limits.max_reals {
                let r = reals.get(&id, 0).map_err(map_err(names::REALS))?;
                self.ledger.real_generation[id as usize] = r.generation.wrapping_add(1);
            }
        }
        for id in 0..self.ledger.limits.max_reals {
            self.write_real(id, None)?;
        }
        let vips: HashMap<_, VipKey, VipInfo> = typed(&mut self.ebpf, names::VIPS)?;
        let keys: Vec<VipKey> = vips.keys().filter_map(|k| k.ok()).collect();
        for k in &keys {
            self.vip_slot_clear(k);
        }
        let mut vips: HashMap<_, VipKey, VipInfo> = typed(&mut self.ebpf, names::VIPS)?;
        for k in &keys {
            let _ = vips.remove(k);
        }
        let mut addrs: HashMap<_, AddrKey, u32> = typed(&mut self.ebpf, names::VIP_ADDRS)?;
        let keys: Vec<AddrKey> = addrs.keys().filter_map(|k| k.ok()).collect();
        for k in keys {
            let _ = addrs.remove(&k);
        }
        // Every word is written: the map's bits are unknown.
        self.filter_written = vec![u64::MAX; VIP_FILTER_WORDS as usize];
        self.ledger.filter = vec![0; VIP_FILTER_WORDS as usize];
        let zeros = self.ledger.filter.clone();
        self.write_filter(&zeros)?;
        // No VIP uses the class maps now; the next plan diffs against
        // what they hold.
        self.read_classes()
    }

    pub(super) fn save_state(&mut self) -> Result<()> {
        let Some(p) = self.persist.clone() else {
            return Ok(());
        };
        let l = self.ledger.limits;
        let state = persist::SavedState {
            version: persist::STATE_VERSION,
            ring_size: l.ring_size,
            max_tables: l.max_tables,
            max_reals: l.max_reals,
            conntrack_size: l.conntrack_size,
            services: self
                .ledger
                .services
                .iter()
                .map(|(name, s)| persist::SavedService {
                    name: name.clone(),
                    vip_id: s.vip_id,
                    addr: s.key.addr,
                    port: s.key.port,
                    proto: s.key.proto,
                    family: s.key.family,
                    flags: s.info.flags,
                    generation: s.default_table().generation,
                    tables: s
                        .tables
                        .iter()
                        .filter(|(c, _)| **c != 0)
                        .map(|(c, t)| persist::SavedTable {
                            class: *c,
                            table_id: t.table_id,
                        })
                        .collect(),
                    reals: s
                        .reals
                        .iter()
                        .map(|(n, r)| {
                            (
                                n.clone(),
                                persist::SavedReal {
                                    id: r.id,
                                    address: r.address,
                                },
                            )
                        })
                        .collect(),
                })
                .collect(),
            real_generation: self
                .ledger
                .real_generation
                .iter()
                .enumerate()
                .filter(|(_, g)| **g != 0)
                .map(|(i, g)| (i as u32, *g))
                .collect(),
            free_reals: self.ledger.free_reals.iter().copied().collect(),
            next_real: self.ledger.next_real,
            drained: self.drained.iter().cloned().collect(),
            drained_regions: self.drained_regions.iter().cloned().collect(),
            region_drain_deadlines: self.region_drain_deadlines.clone(),
            shifts: self.shifts.clone(),
        };
        if self.saved.as_ref() == Some(&state) {
            return Ok(());
        }
        persist::save(&p.state_file, &state).map_err(|source| DataplaneError::Io {
            what: "writing state file",
            path: p.state_file.clone(),
            source,
        })?;
        self.saved = Some(state);
        Ok(())
    }
}
