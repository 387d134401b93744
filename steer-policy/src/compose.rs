//! `compose`: a decision turned into a selection table, slot by slot.
//!
//! Every slot of the table is one sample of the new-flow hash space. A slot
//! goes through the same steps as a flow:
//! 1. step 1 gives it a region: the slots, sorted by a per-slot hash, are cut
//!    into consecutive runs whose lengths are the regions' step-1 loads
//!    (largest remainder), so the shares are exact to a slot;
//! 2. each region of the order, in turn, keeps `dial%` of the slots that
//!    reach it (the ones with the lowest per-slot, per-region hash), then
//!    `capacity_keep` of those (another hash); the rest spill to the next
//!    region; what spills past the last region is cut by the step-1 loads
//!    again;
//! 3. inside the final region, a Maglev ring over the region's backends picks
//!    the backend.
//!
//! The hashes are seeded by the slot index and the region's name (never by
//! an id or a position), so two hosts with equal inputs build byte-identical
//! tables, and a rank-based keep means a dial change only moves the slots
//! between the old and the new rank.

use steer_common::hash::murmur3_32;
use steer_common::maglev::{build, Entry};
use steer_common::NO_REAL;

use crate::model::{BackendIn, Decision, Outcome, PolicyIn, RegionIn, ServiceIn, RESIDENCY_DROP};

const SEED_STEP1: u32 = 0x7374_6570; // "step"
const SEED_DIAL: u32 = 0x6469_616c; // "dial"
const SEED_CAPACITY: u32 = 0x6361_7061; // "capa"
const SEED_FALLBACK: u32 = 0x6261_636b; // "back"

fn seed(name: &str, purpose: u32) -> u32 {
    murmur3_32(name.as_bytes(), purpose)
}

fn slot_hash(slot: u32, seed: u32) -> u32 {
    murmur3_32(&slot.to_le_bytes(), seed)
}

/// What happened to a slot at one region of the order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HopAction {
    /// The region kept the slot.
    Kept,
    /// The region's dial spilled it to the next region.
    DialSpill,
    /// The region's capacity keep spilled it to the next region.
    CapacitySpill,
    /// The region has no backend that may serve: passed on.
    NotServing,
}

/// One region a slot reached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Hop {
    /// Index into [`ServiceIn::regions`].
    pub region: usize,
    pub action: HopAction,
}

/// The path of one slot through the steps, for `steer explain`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SlotPath {
    pub slot: u32,
    pub outcome: Outcome,
    /// The region step 1 (health spill, weights) gave the slot.
    pub step1: Option<usize>,
    /// Each region the slot reached, in order, and what it did.
    pub hops: Vec<Hop>,
    /// The slot spilled past the last region and went back by step-1 load.
    pub fallback: bool,
    /// The final region.
    pub region: Option<usize>,
    /// The table value: a `BackendIn::index`, `NO_REAL` or
    /// [`RESIDENCY_DROP`].
    pub backend: u32,
}

/// Builds the selection table of one (service, class): `ring_size` slots
/// (a prime, as for `steer_common::maglev::build`), each a
/// `BackendIn::index`, `steer_common::NO_REAL` (dropped: no healthy backend)
/// or [`RESIDENCY_DROP`].
///
/// # Panics
/// If `ring_size` is not a prime.
pub fn compose(svc: &ServiceIn, d: &Decision, ring_size: u32) -> Vec<u32> {
    run(svc, d, ring_size, None).0
}

/// The path of `slot` (a flow's `hash % ring_size`) through the steps of
/// [`compose`] for the same inputs.
///
/// # Panics
/// If `ring_size` is not a prime or `slot >= ring_size`.
pub fn explain_slot(svc: &ServiceIn, d: &Decision, ring_size: u32, slot: u32) -> SlotPath {
    assert!(
        slot < ring_size,
        "slot {slot} is outside a table of {ring_size}"
    );
    run(svc, d, ring_size, Some(slot))
        .1
        .expect("a watched slot always has a path")
}

/// Maglev rings over a set of backends (one region, or every region of a
/// failover tier): over all of them with weight > 0, and over the healthy
/// ones. A slot uses the full ring's backend while it is healthy (or the
/// set spreads over all), else the healthy ring's, so a backend going down
/// moves only its own slots.
struct Rings<'a> {
    /// (order position, backend) per ring entry id.
    members: Vec<(usize, &'a BackendIn)>,
    full: Vec<u32>,
    healthy: Vec<u32>,
    spread_all: bool,
}

impl<'a> Rings<'a> {
    fn new(regions: &[(usize, &'a RegionIn)], spread_all: bool, size: u32) -> Self {
        let members: Vec<(usize, &'a BackendIn)> = regions
            .iter()
            .flat_map(|&(k, r)| r.backends.iter().map(move |b| (k, b)))
            .collect();
        let entries = |healthy_only: bool| -> Vec<Entry<'a>> {
            members
                .iter()
                .enumerate()
                .filter(|(_, (_, b))| !healthy_only || b.healthy)
                .map(|(i, (_, b))| Entry {
                    id: i as u32,
                    key: b.name.as_bytes(),
                    weight: b.weight,
                })
                .collect()
        };
        Rings {
            full: build(&entries(false), size),
            // Only consulted for a slot whose full-ring backend is down.
            healthy: if spread_all || members.iter().all(|(_, b)| b.healthy || b.weight == 0) {
                Vec::new()
            } else {
                build(&entries(true), size)
            },
            members,
            spread_all,
        }
    }

    /// Whether the full ring's backend at `slot` may take the slot.
    fn full_ok(&self, slot: usize) -> bool {
        let f = self.full[slot];
        f != NO_REAL && (self.spread_all || self.members[f as usize].1.healthy)
    }

    /// The (order position, backend index) of `slot`.
    fn pick(&self, slot: usize) -> Option<(usize, u32)> {
        let e = if self.full_ok(slot) {
            self.full[slot]
        } else if self.spread_all {
            NO_REAL
        } else {
            self.healthy.get(slot).copied().unwrap_or(NO_REAL)
        };
        (e != NO_REAL).then(|| {
            let (k, b) = self.members[e as usize];
            (k, b.index)
        })
    }

    fn backend(&self, slot: usize) -> u32 {
        self.pick(slot).map_or(NO_REAL, |(_, i)| i)
    }
}

/// Splits `n` items by `weights` (largest remainder; ties to the earlier
/// entry). The counts add up to `n` when any weight is positive.
fn apportion(weights: &[f64], n: usize) -> Vec<usize> {
    let sum: f64 = weights.iter().filter(|w| **w > 0.0).sum();
    if sum <= 0.0 || n == 0 {
        return vec![0; weights.len()];
    }
    let exact: Vec<f64> = weights
        .iter()
        .map(|&w| if w > 0.0 { w / sum * n as f64 } else { 0.0 })
        .collect();
    let mut counts: Vec<usize> = exact.iter().map(|&x| x.floor() as usize).collect();
    let mut left = n.saturating_sub(counts.iter().sum());
    let mut by_rest: Vec<usize> = (0..weights.len()).filter(|&k| exact[k] > 0.0).collect();
    by_rest.sort_by(|&a, &b| {
        let (ra, rb) = (exact[a] - exact[a].floor(), exact[b] - exact[b].floor());
        rb.total_cmp(&ra).then(a.cmp(&b))
    });
    for &k in by_rest.iter().cycle() {
        if left == 0 {
            break;
        }
        counts[k] += 1;
        left -= 1;
    }
    counts
}

/// Sorts slots by a per-slot hash (ties by slot).
fn sort_by_hash(slots: &mut [u32], seed: u32) {
    let mut keyed: Vec<u64> = slots
        .iter()
        .map(|&s| ((slot_hash(s, seed) as u64) << 32) | s as u64)
        .collect();
    keyed.sort_unstable();
    for (slot, key) in slots.iter_mut().zip(keyed) {
        *slot = key as u32;
    }
}

/// Keeps in `slots` the `fraction` of them with the lowest per-slot hash
/// and returns the others. Only the sets matter, so a keep-all or
/// keep-none needs no sort.
fn keep_lowest(slots: &mut Vec<u32>, fraction: f64, seed: u32) -> Vec<u32> {
    let k = ((fraction * slots.len() as f64).round() as usize).min(slots.len());
    if k == slots.len() {
        return Vec::new();
    }
    if k == 0 {
        return std::mem::take(slots);
    }
    sort_by_hash(slots, seed);
    slots.split_off(k)
}

fn run(
    svc: &ServiceIn,
    d: &Decision,
    size: u32,
    watch: Option<u32>,
) -> (Vec<u32>, Option<SlotPath>) {
    let n = size as usize;
    let mut path = watch.map(|slot| SlotPath {
        slot,
        outcome: d.outcome,
        step1: None,
        hops: Vec::new(),
        fallback: false,
        region: None,
        backend: NO_REAL,
    });
    let fill = match d.outcome {
        Outcome::DropNoHealthy => Some(NO_REAL),
        Outcome::DropResidency => Some(RESIDENCY_DROP),
        Outcome::Serve | Outcome::FailOpen => None,
    };
    if let Some(v) = fill {
        if let Some(p) = path.as_mut() {
            p.backend = v;
        }
        return (vec![v; n], path);
    }
    if svc.policy == PolicyIn::Maglev {
        return maglev(svc, d, size, path);
    }
    let m = d.regions.len();
    // Region rings are built when needed: a region that ends up with no
    // slot needs none.
    let ring_of = |k: usize| -> Option<Rings<'_>> {
        let r = &d.regions[k];
        r.serving
            .then(|| Rings::new(&[(k, &svc.regions[r.region])], r.spread_all, size))
    };
    let mut rings: Vec<Option<Rings<'_>>> = (0..m).map(|_| None).collect();
    // Step-1 levels: one per region, except a failover tier of several
    // regions, where one ring over all the tier's backends picks the region
    // (the tier's load splits by healthy weight, or in panic by weight,
    // exactly what such a ring does), so a backend going down moves only
    // its own slots.
    let levels = step1_levels(svc, d);
    let level_rings: Vec<Option<Rings<'_>>> = levels
        .iter()
        .map(|l| {
            (l.len() > 1).then(|| {
                let members: Vec<(usize, &RegionIn)> = l
                    .iter()
                    .filter(|&&k| d.regions[k].serving)
                    .map(|&k| (k, &svc.regions[d.regions[k].region]))
                    .collect();
                Rings::new(&members, d.regions[l[0]].spread_all, size)
            })
        })
        .collect();
    let level_loads: Vec<f64> = levels
        .iter()
        .map(|l| l.iter().map(|&k| d.regions[k].load).sum())
        .collect();
    let loads: Vec<f64> = d.regions.iter().map(|r| r.load).collect();

    // Step 1. When the first loaded level is one region (geo, latency, a
    // one-region failover tier), the slots whose backend in its full ring
    // is healthy come first, so when it spills (its health below
    // 1/overprovisioning) it keeps the slots of its healthy backends. While
    // it is saturated it takes every slot and the order does not matter,
    // so the switch costs nothing. Not for weighted regions: there a region
    // splits slots with others at any health, and the bias would move a
    // down backend's slots across regions.
    let first = levels
        .iter()
        .position(|l| l.iter().any(|&k| d.regions[k].load > 0.0))
        .filter(|&l| {
            levels[l].len() == 1
                && matches!(svc.policy, PolicyIn::Ordered | PolicyIn::Failover(_))
                && !d.regions[levels[l][0]].spread_all
        })
        .map(|l| levels[l][0]);
    if let Some(k) = first {
        rings[k] = ring_of(k);
    }
    let (mut order, mut rest): (Vec<u32>, Vec<u32>) = (0..size).partition(|&s| {
        first
            .and_then(|k| rings[k].as_ref())
            .is_none_or(|r| r.full_ok(s as usize))
    });
    sort_by_hash(&mut order, SEED_STEP1);
    sort_by_hash(&mut rest, SEED_STEP1);
    order.append(&mut rest);
    let mut step1 = vec![0usize; n];
    let mut at = 0;
    for (l, c) in apportion(&level_loads, n).into_iter().enumerate() {
        for &s in &order[at..at + c] {
            step1[s as usize] = match &level_rings[l] {
                None => levels[l][0],
                Some(ring) => ring.pick(s as usize).map_or(levels[l][0], |(k, _)| k),
            };
        }
        at += c;
    }
    if let Some(p) = path.as_mut() {
        p.step1 = Some(d.regions[step1[p.slot as usize]].region);
    }
    let mut by_region: Vec<Vec<u32>> = vec![Vec::new(); m];
    for (s, &k) in step1.iter().enumerate() {
        by_region[k].push(s as u32);
    }

    // Steps 2 and 3: dial, then capacity keep, down the order.
    let mut fin = vec![usize::MAX; n];
    let mut incoming: Vec<u32> = Vec::new();
    let fail_open = d.outcome == Outcome::FailOpen;
    for (k, r) in d.regions.iter().enumerate() {
        let mut reach = std::mem::take(&mut by_region[k]);
        reach.append(&mut incoming);
        let name = &svc.regions[r.region].name;
        let (kept, dial_spill, cap_spill) = if fail_open {
            (reach, Vec::new(), Vec::new())
        } else if !r.serving {
            (Vec::new(), reach, Vec::new())
        } else {
            let dial_spill = keep_lowest(&mut reach, r.dial as f64 / 100.0, seed(name, SEED_DIAL));
            let cap_spill = keep_lowest(&mut reach, r.capacity_keep, seed(name, SEED_CAPACITY));
            (reach, dial_spill, cap_spill)
        };
        if let Some(p) = path.as_mut() {
            let action = if kept.contains(&p.slot) {
                Some(HopAction::Kept)
            } else if dial_spill.contains(&p.slot) {
                Some(if r.serving {
                    HopAction::DialSpill
                } else {
                    HopAction::NotServing
                })
            } else if cap_spill.contains(&p.slot) {
                Some(HopAction::CapacitySpill)
            } else {
                None
            };
            if let Some(action) = action {
                p.hops.push(Hop {
                    region: r.region,
                    action,
                });
            }
        }
        for &s in &kept {
            fin[s as usize] = k;
        }
        incoming = dial_spill;
        incoming.extend(cap_spill);
    }
    // Past the last region: back to the order's regions by step-1 load.
    if !incoming.is_empty() {
        sort_by_hash(&mut incoming, SEED_FALLBACK);
        let mut at = 0;
        for (k, c) in apportion(&loads, incoming.len()).into_iter().enumerate() {
            for &s in &incoming[at..at + c] {
                fin[s as usize] = k;
            }
            at += c;
        }
        if let Some(p) = path.as_mut() {
            p.fallback = incoming.contains(&p.slot);
        }
    }
    let level_of: Vec<usize> = {
        let mut v = vec![0; m];
        for (l, ks) in levels.iter().enumerate() {
            for &k in ks {
                v[k] = l;
            }
        }
        v
    };
    for k in 0..m {
        let needed = fin
            .iter()
            .enumerate()
            .any(|(s, &f)| f == k && !(f == step1[s] && level_rings[level_of[k]].is_some()));
        if needed && rings[k].is_none() {
            rings[k] = ring_of(k);
        }
    }
    let table: Vec<u32> = (0..n)
        .map(|s| match fin[s] {
            usize::MAX => NO_REAL,
            // Kept where step 1 put it, inside a multi-region tier: the
            // tier ring's backend.
            k if k == step1[s] && level_rings[level_of[k]].is_some() => level_rings[level_of[k]]
                .as_ref()
                .map_or(NO_REAL, |r| r.backend(s)),
            k => rings[k].as_ref().map_or(NO_REAL, |r| r.backend(s)),
        })
        .collect();
    if let Some(p) = path.as_mut() {
        let s = p.slot as usize;
        p.region = (fin[s] != usize::MAX).then(|| d.regions[fin[s]].region);
        p.backend = table[s];
    }
    (table, path)
}

/// The step-1 priority levels as order positions: a failover tier's
/// regions (those left in the order) together, every other region alone.
fn step1_levels(svc: &ServiceIn, d: &Decision) -> Vec<Vec<usize>> {
    match &svc.policy {
        PolicyIn::Failover(tiers) => tiers
            .iter()
            .map(|t| {
                t.iter()
                    .filter_map(|i| d.order.iter().position(|o| o == i))
                    .collect::<Vec<usize>>()
            })
            .filter(|t| !t.is_empty())
            .collect(),
        _ => (0..d.order.len()).map(|k| vec![k]).collect(),
    }
}

/// The maglev policy: one ring over the serving backends of every region
/// of the order (healthy ones; in fail-open all with weight > 0).
fn maglev(
    svc: &ServiceIn,
    d: &Decision,
    size: u32,
    mut path: Option<SlotPath>,
) -> (Vec<u32>, Option<SlotPath>) {
    let all = d.outcome == Outcome::FailOpen;
    let mut ids: Vec<(usize, u32)> = Vec::new();
    let mut entries: Vec<Entry<'_>> = Vec::new();
    for &ri in &d.order {
        for b in svc.regions[ri].backends.iter().filter(|b| all || b.healthy) {
            entries.push(Entry {
                id: ids.len() as u32,
                key: b.name.as_bytes(),
                weight: b.weight,
            });
            ids.push((ri, b.index));
        }
    }
    let ring = build(&entries, size);
    let table: Vec<u32> = ring
        .iter()
        .map(|&e| {
            if e == NO_REAL {
                NO_REAL
            } else {
                ids[e as usize].1
            }
        })
        .collect();
    if let Some(p) = path.as_mut() {
        let e = ring[p.slot as usize];
        if e != NO_REAL {
            let region = ids[e as usize].0;
            p.step1 = Some(region);
            p.region = Some(region);
            p.hops.push(Hop {
                region,
                action: HopAction::Kept,
            });
        }
        p.backend = table[p.slot as usize];
    }
    (table, path)
}
