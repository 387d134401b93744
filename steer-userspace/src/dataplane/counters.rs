//! Read-only access to the data plane's counters from any thread.
//!
//! The daemon's owner thread holds the [`Dataplane`](super::Dataplane);
//! status and metrics must never wait for it. A [`CounterReader`] holds its
//! own file descriptors of the counter maps (duplicated from the loaded
//! program), so reading counters needs no lock and no message to the owner.
//! Which service and backend an id belongs to comes from the owner's
//! published [`Ledger`](super::Ledger).

use std::os::fd::AsFd;

use aya::maps::{Array, HashMap, Map, MapData, PerCpuArray};
use aya::Ebpf;
use steer_common::hash::{flow_hash, flow_tag};
use steer_common::{
    names, Branch, Counters, CtValue, DropReason, FlowKey, FlowKey4, Passive, Real, SynBucket,
    SynSlot, FAMILY_V4,
};

use super::{map_err, DataplaneError, Result};

/// The counter maps, opened a second time.
pub struct CounterReader {
    vip_stats: PerCpuArray<MapData, Counters>,
    real_stats: PerCpuArray<MapData, Counters>,
    /// `PASSIVE_STATS`; `None` when the loaded program has no such map.
    passive_stats: Option<PerCpuArray<MapData, Passive>>,
    drop_stats: PerCpuArray<MapData, u64>,
    path_stats: PerCpuArray<MapData, u64>,
    /// `CONNTRACK4` and `CONNTRACK6`, read by `steer explain`.
    conntrack4: HashMap<MapData, FlowKey4, CtValue>,
    conntrack6: HashMap<MapData, FlowKey, CtValue>,
    /// `RECENT_SYN` and `REALS`, read by `steer explain` (a pending
    /// handshake).
    recent_syn: Array<MapData, SynBucket>,
    reals: Array<MapData, Real>,
    /// `CT_CLOCK`: its epoch says whether an entry's next packet checks for
    /// a newer SYN.
    ct_clock: Array<MapData, u32>,
}

/// A flow's SYN waiting in `RECENT_SYN` for the flow's next packet, and the
/// `REALS` entry of the real it names as the kernel holds it now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PendingSyn {
    pub slot: SynSlot,
    /// `None`: the real id is beyond `REALS` (a slot of a larger data
    /// plane); the program finds no real there either.
    pub real: Option<Real>,
}

fn reopen(ebpf: &Ebpf, name: &'static str) -> Result<Map> {
    let map = ebpf.map(name).ok_or(DataplaneError::MissingMap { name })?;
    let data = match map {
        Map::PerCpuArray(d) | Map::LruHashMap(d) | Map::Array(d) => d,
        _ => return Err(DataplaneError::MissingMap { name }),
    };
    let fd = data
        .fd()
        .as_fd()
        .try_clone_to_owned()
        .map_err(|source| DataplaneError::Io {
            what: "duplicating the descriptor of map",
            path: name.into(),
            source,
        })?;
    let data = MapData::from_fd(fd).map_err(map_err(name))?;
    Ok(match map {
        Map::LruHashMap(_) => Map::LruHashMap(data),
        Map::Array(_) => Map::Array(data),
        _ => Map::PerCpuArray(data),
    })
}

fn per_cpu<V: aya::Pod>(ebpf: &Ebpf, name: &'static str) -> Result<PerCpuArray<MapData, V>> {
    PerCpuArray::try_from(reopen(ebpf, name)?).map_err(map_err(name))
}

/// Per-CPU passive counters summed (wrapping, like the program's adds).
pub(crate) fn sum_passive(per_cpu: &[Passive]) -> Passive {
    per_cpu.iter().fold(Passive::default(), |a, c| Passive {
        repeated_syns: a.repeated_syns.wrapping_add(c.repeated_syns),
        handshakes: a.handshakes.wrapping_add(c.handshakes),
    })
}

fn sum(per_cpu: &[Counters]) -> Counters {
    per_cpu.iter().fold(Counters::default(), |a, c| Counters {
        packets: a.packets.wrapping_add(c.packets),
        bytes: a.bytes.wrapping_add(c.bytes),
        new_flows: a.new_flows.wrapping_add(c.new_flows),
    })
}

impl CounterReader {
    pub(super) fn new(ebpf: &Ebpf) -> Result<Self> {
        Ok(CounterReader {
            vip_stats: per_cpu(ebpf, names::VIP_STATS)?,
            real_stats: per_cpu(ebpf, names::REAL_STATS)?,
            passive_stats: match per_cpu(ebpf, names::PASSIVE_STATS) {
                Ok(m) => Some(m),
                Err(DataplaneError::MissingMap { .. }) => None,
                Err(e) => return Err(e),
            },
            drop_stats: per_cpu(ebpf, names::DROP_STATS)?,
            path_stats: per_cpu(ebpf, names::PATH_STATS)?,
            conntrack4: HashMap::try_from(reopen(ebpf, names::CONNTRACK4)?)
                .map_err(map_err(names::CONNTRACK4))?,
            conntrack6: HashMap::try_from(reopen(ebpf, names::CONNTRACK6)?)
                .map_err(map_err(names::CONNTRACK6))?,
            recent_syn: Array::try_from(reopen(ebpf, names::RECENT_SYN)?)
                .map_err(map_err(names::RECENT_SYN))?,
            reals: Array::try_from(reopen(ebpf, names::REALS)?).map_err(map_err(names::REALS))?,
            ct_clock: Array::try_from(reopen(ebpf, names::CT_CLOCK)?)
                .map_err(map_err(names::CT_CLOCK))?,
        })
    }

    /// The conntrack epoch the program reads now (of the tick in
    /// `CT_CLOCK`).
    pub fn ct_epoch(&self) -> Result<u32> {
        let tick = self.ct_clock.get(&0, 0).map_err(map_err(names::CT_CLOCK))?;
        Ok(steer_common::ct_epoch_of_tick(tick))
    }

    /// The conntrack entry of `key`, if any. Reading it does not refresh
    /// its place in the LRU.
    /// IPv4 flows are in `CONNTRACK4`, under [`FlowKey::key4`].
    pub fn conntrack(&self, key: &FlowKey) -> Result<Option<CtValue>> {
        let (found, name) = if key.family == FAMILY_V4 {
            (self.conntrack4.get(&key.key4(), 0), names::CONNTRACK4)
        } else {
            (self.conntrack6.get(key, 0), names::CONNTRACK6)
        };
        match found {
            Ok(v) => Ok(Some(v)),
            Err(aya::maps::MapError::KeyNotFound) => Ok(None),
            Err(e) => Err(map_err(name)(e)),
        }
    }

    /// The `RECENT_SYN` slot of the flow `key` (a flow-affinity TCP flow's
    /// 5-tuple), if its bucket holds one with the flow's tag: looked up as
    /// the program's `flow::syn_take` does (bucket `flow_hash(key) &
    /// (buckets - 1)`, the first slot whose tag is `flow_tag(key)`), with
    /// the `REALS` entry of the real it names. Reads only: the slot stays.
    pub fn pending_syn(&self, key: &FlowKey) -> Result<Option<PendingSyn>> {
        // `buckets` is a power of two (`steer_common::syn_buckets`).
        let buckets = self.recent_syn.len();
        let bucket = flow_hash(key) & buckets.saturating_sub(1);
        let values = self
            .recent_syn
            .get(&bucket, 0)
            .map_err(map_err(names::RECENT_SYN))?;
        let tag = flow_tag(key);
        let Some(slot) = values
            .slots
            .iter()
            .map(|v| SynSlot::unpack(*v))
            .find(|s| s.tag == tag)
        else {
            return Ok(None);
        };
        let real = match self.reals.get(&slot.real_id, 0) {
            Ok(r) => Some(r),
            Err(aya::maps::MapError::OutOfBounds { .. }) => None,
            Err(e) => return Err(map_err(names::REALS)(e)),
        };
        Ok(Some(PendingSyn { slot, real }))
    }

    /// Counters of the service whose VIP has id `vip_id`, summed over CPUs.
    pub fn service(&self, vip_id: u32) -> Result<Counters> {
        let v = self
            .vip_stats
            .get(&vip_id, 0)
            .map_err(map_err(names::VIP_STATS))?;
        Ok(sum(&v))
    }

    /// Counters of the real (service backend) with id `real_id`.
    pub fn real(&self, real_id: u32) -> Result<Counters> {
        let v = self
            .real_stats
            .get(&real_id, 0)
            .map_err(map_err(names::REAL_STATS))?;
        Ok(sum(&v))
    }

    /// Passive health counters (repeated SYNs, handshakes) of the real with
    /// id `real_id`, summed over CPUs. Zeros when the map is absent (a
    /// program without it) or has no such entry (a smaller map): nothing
    /// could have counted there.
    pub fn passive(&self, real_id: u32) -> Result<Passive> {
        let Some(map) = &self.passive_stats else {
            return Ok(Passive::default());
        };
        match map.get(&real_id, 0) {
            Ok(v) => Ok(sum_passive(&v)),
            Err(aya::maps::MapError::OutOfBounds { .. }) => Ok(Passive::default()),
            Err(e) => Err(map_err(names::PASSIVE_STATS)(e)),
        }
    }

    /// Entries `0..n`, each summed over CPUs. A map pinned by an older
    /// steer may have fewer entries (a reason or branch added since): the
    /// program cannot count those, so they read 0 instead of failing the
    /// whole status report.
    fn sum_u64(map: &PerCpuArray<MapData, u64>, name: &'static str, n: u32) -> Result<Vec<u64>> {
        (0..n)
            .map(|i| match map.get(&i, 0) {
                Ok(v) => Ok(v.iter().copied().fold(0u64, u64::wrapping_add)),
                Err(aya::maps::MapError::OutOfBounds { .. }) => Ok(0),
                Err(e) => Err(map_err(name)(e)),
            })
            .collect()
    }

    /// Drops by reason, indexed by `DropReason as usize`, summed over CPUs.
    pub fn drops(&self) -> Result<[u64; DropReason::COUNT]> {
        let v = Self::sum_u64(
            &self.drop_stats,
            names::DROP_STATS,
            DropReason::COUNT as u32,
        )?;
        let mut out = [0; DropReason::COUNT];
        out.copy_from_slice(&v);
        Ok(out)
    }

    /// Packets by branch, indexed by `Branch as usize`, summed over CPUs.
    pub fn paths(&self) -> Result<[u64; Branch::COUNT]> {
        let v = Self::sum_u64(&self.path_stats, names::PATH_STATS, Branch::COUNT as u32)?;
        let mut out = [0; Branch::COUNT];
        out.copy_from_slice(&v);
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passive_counters_are_summed_over_cpus() {
        let per_cpu = [
            Passive {
                repeated_syns: 2,
                handshakes: 5,
            },
            Passive {
                repeated_syns: 0,
                handshakes: 7,
            },
            Passive {
                repeated_syns: 1,
                handshakes: 0,
            },
        ];
        assert_eq!(
            sum_passive(&per_cpu),
            Passive {
                repeated_syns: 3,
                handshakes: 12
            }
        );
        assert_eq!(sum_passive(&[]), Passive::default());
        // The program's counters wrap; so does their sum.
        let wrap = [
            Passive {
                repeated_syns: u64::MAX,
                handshakes: 1,
            },
            Passive {
                repeated_syns: 2,
                handshakes: 1,
            },
        ];
        assert_eq!(sum_passive(&wrap).repeated_syns, 1);
    }
}
