//! The writer: executes a plan's map writes (see `plan.rs` for their
//! order), skipping what the maps already hold.

use super::*;

impl Dataplane {
    /// After a failed write: nothing this process believes it wrote can be
    /// trusted, so the next `program` rewrites every real, VIP, filter word
    /// and table (to the shadow ring of the generation the kernel holds).
    pub(super) fn forget_written(&mut self) {
        self.written.clear();
        self.vips_written.clear();
        self.filter_written = vec![u64::MAX; VIP_FILTER_WORDS as usize];
        for slot in self.ledger.services.values_mut() {
            for t in slot.tables.values_mut() {
                t.inputs = None;
                t.table = std::sync::Arc::new(Vec::new());
                t.generation = self
                    .gens
                    .word(t.table_id as usize * 8)
                    .load(Ordering::Acquire)
                    & 1;
            }
            // Never equal to a planned row: rewritten.
            slot.row = std::sync::Arc::new([u32::MAX; steer_common::CLASS_SLOTS]);
        }
        // The class maps are read back: the next plan diffs against them.
        if let Err(e) = self.read_classes() {
            tracing::warn!(error = %e, "cannot read the client-class maps back");
            self.ledger.classes = plan::ClassState::default();
        }
    }

    /// Sets the ledger's class state to what `CLASS_V4` and `CLASS_V6`
    /// hold (the classes they came from unknown, so the next plan diffs).
    pub(super) fn read_classes(&mut self) -> Result<()> {
        let bytes = self
            .class_v4
            .len
            .min(steer_common::CLASS_V4_VALUES as usize * 8);
        let words = self.class_v4.words(0, bytes / 4);
        let v4: Vec<u8> = if words.iter().all(|w| w.load(Ordering::Relaxed) == 0) {
            Vec::new()
        } else {
            words
                .iter()
                .flat_map(|w| w.load(Ordering::Relaxed).to_ne_bytes())
                .collect()
        };
        let trie: LpmTrie<_, [u8; 8], u32> = typed(&mut self.ebpf, names::CLASS_V6)?;
        let mut v6 = BTreeMap::new();
        for key in trie.keys() {
            let key = key.map_err(map_err(names::CLASS_V6))?;
            let class = trie.get(&key, 0).map_err(map_err(names::CLASS_V6))?;
            v6.insert(
                steer_common::ClassV6Key {
                    prefixlen: key.prefix_len(),
                    addr: key.data(),
                },
                (class & 0xff) as u8,
            );
        }
        let exact: HashMap<_, [u8; 6], u32> = typed(&mut self.ebpf, names::CLASS_V6_48)?;
        let mut v6_48 = BTreeMap::new();
        for entry in exact.iter() {
            let (k, class) = entry.map_err(map_err(names::CLASS_V6_48))?;
            v6_48.insert(k, (class & 0xff) as u8);
        }
        self.ledger.classes = plan::ClassState {
            desired: None,
            v4: std::sync::Arc::new(v4),
            v6: std::sync::Arc::new(v6),
            v6_48: std::sync::Arc::new(v6_48),
        };
        Ok(())
    }

    /// Writes conntrack clock tick `tick` to `CT_CLOCK`.
    pub(super) fn write_ct_tick(&mut self, tick: u32) -> Result<()> {
        let mut map: Array<_, u32> = typed(&mut self.ebpf, names::CT_CLOCK)?;
        map.set(0, tick, 0).map_err(map_err(names::CT_CLOCK))?;
        self.ct_tick = tick;
        Ok(())
    }

    /// Moves the program's conntrack clock to tick `tick` (see
    /// `steer_common::ct_tick_at`), if it changed. The daemon calls it on
    /// its timer with [`ct_tick_now`].
    pub fn set_ct_tick(&mut self, tick: u32) -> Result<()> {
        if tick == self.ct_tick {
            return Ok(());
        }
        self.write_ct_tick(tick)
    }

    /// Moves the program to the first tick of conntrack epoch `epoch` (see
    /// `steer_common::SynBucket`). Tests set epochs directly.
    pub fn set_ct_epoch(&mut self, epoch: u32) -> Result<()> {
        self.set_ct_tick(steer_common::ct_first_tick(epoch))
    }

    /// Executes a plan's writes in order.
    pub(super) fn execute(&mut self, writes: &[Write]) -> Result<()> {
        let mut i = 0;
        while i < writes.len() {
            // A run of table writes (the plan puts them together): written
            // on several threads, each ring then flipped by its thread.
            let run = writes[i..]
                .iter()
                .take_while(|w| matches!(w, Write::Table { .. }))
                .count();
            if run > 0 {
                self.write_tables(&writes[i..i + run]);
                i += run;
                continue;
            }
            let w = &writes[i];
            i += 1;
            match w {
                Write::Settings(v) => {
                    let mut map: Array<_, Settings> = typed(&mut self.ebpf, names::SETTINGS)?;
                    map.set(0, v, 0).map_err(map_err(names::SETTINGS))?;
                }
                Write::FallbackSourceMac(mac) => {
                    self.write_source_mac(SOURCE_MAC_FALLBACK, *mac)?
                }
                Write::ZeroStats { vip, real } => {
                    if let Some(id) = vip {
                        self.zero_stats(names::VIP_STATS, *id)?;
                    }
                    if let Some(id) = real {
                        self.zero_stats(names::REAL_STATS, *id)?;
                        self.zero_stats_of::<Passive>(names::PASSIVE_STATS, *id)?;
                    }
                }
                Write::RemoveVip(key) => {
                    // Out of its slot first: the program never finds a VIP
                    // there that `VIPS` no longer holds.
                    self.vip_slot_clear(key);
                    let mut vips: HashMap<_, VipKey, VipInfo> = typed(&mut self.ebpf, names::VIPS)?;
                    absent_ok(vips.remove(key)).map_err(map_err(names::VIPS))?;
                    self.vips_written.remove(key);
                    self.vip_slot_refill(vip_slot_index(key));
                }
                Write::Real { id, real } => self.write_real_value(*id, *real)?,
                Write::Filter(bits) => self.write_filter(bits)?,
                Write::Wait(d) => std::thread::sleep(*d),
                Write::Table { .. } => unreachable!("handled as a run above"),
                Write::ClassV4(words) => {
                    for (i, bytes) in words {
                        self.class_v4
                            .word(*i as usize * 4)
                            .store(u32::from_ne_bytes(*bytes), Ordering::Relaxed);
                    }
                }
                Write::ClassV6 {
                    insert,
                    insert_48,
                    remove_48,
                    remove,
                } => {
                    {
                        let mut trie: LpmTrie<_, [u8; 8], u32> =
                            typed(&mut self.ebpf, names::CLASS_V6)?;
                        for (k, class) in insert {
                            trie.insert(&LpmKey::new(k.prefixlen, k.addr), u32::from(*class), 0)
                                .map_err(map_err(names::CLASS_V6))?;
                        }
                    }
                    {
                        let mut exact: HashMap<_, [u8; 6], u32> =
                            typed(&mut self.ebpf, names::CLASS_V6_48)?;
                        for (k, class) in insert_48 {
                            exact
                                .insert(k, u32::from(*class), 0)
                                .map_err(map_err(names::CLASS_V6_48))?;
                        }
                        for k in remove_48 {
                            absent_ok(exact.remove(k)).map_err(map_err(names::CLASS_V6_48))?;
                        }
                    }
                    let mut trie: LpmTrie<_, [u8; 8], u32> =
                        typed(&mut self.ebpf, names::CLASS_V6)?;
                    for k in remove {
                        absent_ok(trie.remove(&LpmKey::new(k.prefixlen, k.addr)))
                            .map_err(map_err(names::CLASS_V6))?;
                    }
                }
                Write::ClassRow { vip_id, row } => {
                    let mut rows: Array<_, steer_common::ClassRow> =
                        typed(&mut self.ebpf, names::CLASS_TABLES)?;
                    rows.set(*vip_id, **row, 0)
                        .map_err(map_err(names::CLASS_TABLES))?;
                }
                Write::Vip { key, info } => {
                    if self.vips_written.get(key) != Some(info) {
                        let mut vips: HashMap<_, VipKey, VipInfo> =
                            typed(&mut self.ebpf, names::VIPS)?;
                        vips.insert(key, info, 0).map_err(map_err(names::VIPS))?;
                        self.vips_written.insert(*key, *info);
                        self.vip_slot_set(key, info);
                    }
                }
                Write::VipAddrs(wanted) => {
                    let mut map: HashMap<_, AddrKey, u32> =
                        typed(&mut self.ebpf, names::VIP_ADDRS)?;
                    let present: Vec<AddrKey> = map.keys().filter_map(|k| k.ok()).collect();
                    for k in &present {
                        if !wanted.contains(k) {
                            let _ = map.remove(k);
                        }
                    }
                    for k in wanted {
                        if !present.contains(k) {
                            map.insert(k, 1, 0).map_err(map_err(names::VIP_ADDRS))?;
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// Puts VIP `key` (already in `VIPS`) into its `VIP_SLOTS` slot, unless
    /// the slot holds another VIP (which keeps it; `key` is then found in
    /// `VIPS`).
    pub(super) fn vip_slot_set(&mut self, key: &VipKey, info: &VipInfo) {
        let idx = vip_slot_index(key);
        match self.vip_slot_keys[idx as usize] {
            Some(k) if k != *key => {}
            _ => self.write_vip_slot(idx, Some((*key, *info))),
        }
    }

    /// Empties VIP `key`'s `VIP_SLOTS` slot if it holds `key`; before
    /// `key` leaves `VIPS`.
    pub(super) fn vip_slot_clear(&mut self, key: &VipKey) {
        let idx = vip_slot_index(key);
        if self.vip_slot_keys[idx as usize] == Some(*key) {
            self.write_vip_slot(idx, None);
        }
    }

    /// Gives an empty slot `idx` to another VIP of that index, if this
    /// process wrote one into `VIPS`.
    fn vip_slot_refill(&mut self, idx: u32) {
        if self.vip_slot_keys[idx as usize].is_some() {
            return;
        }
        let other = self
            .vips_written
            .iter()
            .find(|(k, _)| vip_slot_index(k) == idx)
            .map(|(k, v)| (*k, *v));
        if let Some(v) = other {
            self.write_vip_slot(idx, Some(v));
        }
    }

    /// Writes slot `idx` of `VIP_SLOTS` through the shared mapping as a
    /// sequence lock (see `steer_common::VipSlot`): `seq` odd, the key and
    /// value words, `seq` even. A program reading meanwhile sees `seq`
    /// change (or odd) and looks the VIP up in `VIPS` instead.
    fn write_vip_slot(&mut self, idx: u32, v: Option<(VipKey, VipInfo)>) {
        let base = idx as usize * std::mem::size_of::<steer_common::VipSlot>();
        let seq = self.vip_slots.word(base);
        // Even at rest: only this process writes it.
        let s = seq.load(Ordering::Relaxed) & !1;
        seq.store(s.wrapping_add(1), Ordering::Relaxed);
        std::sync::atomic::fence(Ordering::Release);
        let words = v
            .map(|(key, info)| steer_common::VipSlot { seq: 0, key, info }.words())
            .unwrap_or_default();
        for (i, w) in words.iter().enumerate().skip(1) {
            self.vip_slots
                .word(base + 4 * i)
                .store(*w, Ordering::Relaxed);
        }
        std::sync::atomic::fence(Ordering::Release);
        seq.store(s.wrapping_add(2), Ordering::Release);
        self.vip_slot_keys[idx as usize] = v.map(|(k, _)| k);
    }

    /// Sets (or, `None`, clears) the source MAC of `key`: an ingress
    /// ifindex or `SOURCE_MAC_FALLBACK`; in `SOURCE_MACS` below
    /// `SOURCE_MAC_SLOTS` (all-zero for none), in `SOURCE_MACS_HIGH` above.
    pub(super) fn write_source_mac(&mut self, key: u32, mac: Option<[u8; 6]>) -> Result<()> {
        let v = SourceMac {
            mac: mac.unwrap_or_default(),
            _pad: [0; 2],
        };
        if key < SOURCE_MAC_SLOTS {
            let mut map: Array<_, SourceMac> = typed(&mut self.ebpf, names::SOURCE_MACS)?;
            return map.set(key, v, 0).map_err(map_err(names::SOURCE_MACS));
        }
        let mut map: HashMap<_, u32, SourceMac> = typed(&mut self.ebpf, names::SOURCE_MACS_HIGH)?;
        match mac {
            Some(_) => map
                .insert(key, v, 0)
                .map_err(map_err(names::SOURCE_MACS_HIGH)),
            None => absent_ok(map.remove(&key)).map_err(map_err(names::SOURCE_MACS_HIGH)),
        }
    }

    /// Gives the program `iface`'s own MAC as the source of the frames it
    /// sends back out of `iface` (`SOURCE_MACS[ifindex]`). An interface
    /// whose MAC is not unicast (none, all-zero, multicast) gets no entry:
    /// its frames use `dataplane.source_mac`, or are dropped
    /// (`no_source_mac`) if that is not set.
    pub(super) fn write_interface_mac(&mut self, iface: &str) -> Result<()> {
        let (ifindex, mac) = interface_mac(iface)?;
        match mac.filter(is_unicast_mac) {
            Some(mac) => self.write_source_mac(ifindex, Some(mac)),
            None => {
                tracing::warn!(
                    iface,
                    mac = ?mac,
                    "the interface has no unicast MAC: frames sent out of it use \
                     dataplane.source_mac, and are dropped (no_source_mac) if that is not set"
                );
                self.write_source_mac(ifindex, None)
            }
        }
    }

    /// Zeroes `map[id]` (a per-CPU `Counters` array) on every CPU.
    pub(super) fn zero_stats(&mut self, name: &'static str, id: u32) -> Result<()> {
        self.zero_stats_of::<Counters>(name, id)
    }

    /// Zeroes `map[id]` (a per-CPU array of `V`) on every CPU.
    pub(super) fn zero_stats_of<V: aya::Pod + Default>(
        &mut self,
        name: &'static str,
        id: u32,
    ) -> Result<()> {
        let cpus = aya::util::nr_cpus().map_err(|(path, source)| DataplaneError::Io {
            what: "reading the possible CPUs from",
            path: PathBuf::from(path),
            source,
        })?;
        let zeros = PerCpuValues::try_from(vec![V::default(); cpus]).map_err(|source| {
            DataplaneError::Io {
                what: "building zero counters for map",
                path: PathBuf::from(name),
                source,
            }
        })?;
        let mut map: PerCpuArray<_, V> = typed(&mut self.ebpf, name)?;
        map.set(id, zeros, 0).map_err(map_err(name))
    }

    /// Writes each table to its shadow ring and flips its generation word
    /// to it, spread over the available cores (each ring is written by one
    /// thread, then flipped by it: Release orders the ring before the flip).
    pub(super) fn write_tables(&self, tables: &[Write]) {
        let size = self.ledger.limits.ring_size;
        let threads = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
            .clamp(1, 8);
        let chunk = tables.len().div_ceil(threads).max(1);
        let (rings, gens) = (&self.rings, &self.gens);
        std::thread::scope(|scope| {
            for part in tables.chunks(chunk) {
                scope.spawn(move || {
                    for w in part {
                        let Write::Table {
                            table_id,
                            generation,
                            table,
                        } = w
                        else {
                            continue;
                        };
                        let first = ring_index(*table_id, *generation, size, 0) as usize;
                        let ring = rings.words(first * 4, table.len());
                        for (slot, real) in ring.iter().zip(table.iter()) {
                            slot.store(*real, Ordering::Relaxed);
                        }
                        gens.word(*table_id as usize * 8)
                            .store(*generation, Ordering::Release);
                    }
                });
            }
        });
    }

    /// Writes real `id` (absent, or present up or down) under its current
    /// generation.
    pub(super) fn write_real(&mut self, id: u32, value: Option<(&IpAddr, bool)>) -> Result<()> {
        let real = plan::real_value(self.ledger.real_generation[id as usize], value);
        self.write_real_value(id, real)
    }

    pub(super) fn write_real_value(&mut self, id: u32, real: Real) -> Result<()> {
        if self.written.get(&id) == Some(&real) {
            return Ok(());
        }
        let mut reals: Array<_, Real> = typed(&mut self.ebpf, names::REALS)?;
        reals.set(id, real, 0).map_err(map_err(names::REALS))?;
        self.written.insert(id, real);
        Ok(())
    }

    /// Writes the words of the `VIP_FILTER` bitmap that differ from what
    /// was last written.
    pub(super) fn write_filter(&mut self, filter: &[u64]) -> Result<()> {
        let mut bits: Array<_, u64> = typed(&mut self.ebpf, names::VIP_FILTER)?;
        for (i, (new, old)) in filter.iter().zip(&self.filter_written).enumerate() {
            if new != old {
                bits.set(i as u32, new, 0)
                    .map_err(map_err(names::VIP_FILTER))?;
            }
        }
        self.filter_written = filter.to_vec();
        Ok(())
    }
}
