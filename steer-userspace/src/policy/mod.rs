//! Policy: a pure function from configuration and runtime inputs (health,
//! drains, measurements) to the backends and selection tables each service
//! should have in the data plane. It touches no BPF object; `dataplane`
//! applies what it returns. Region policies go through the engine
//! (`steer-policy`, see `regions.rs`); `explain.rs` tells one flow's path.

pub mod explain;
pub mod regions;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

pub use regions::{ServicePlan, TablePlan};

use crate::config::{Affinity, AttachMode, Config, DataplaneConfig, Protocol};
use crate::dataplane::{
    self, Dataplane, DataplaneError, DesiredBackend, DesiredClasses, DesiredService, DesiredTable,
    Globals, Limits, TableSlots,
};

/// Backend state that is not in the configuration.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BackendState {
    /// Backends that are down (failed health checks, or forced down).
    pub down: BTreeSet<String>,
    /// Backends drained by an operator: weight 0 whatever the config says.
    pub drained: BTreeSet<String>,
}

/// Everything besides the configuration that decides where new flows go:
/// backend health and drains, region drains, and the measurements the
/// latency and capacity policies use. The daemon's owner keeps one; `steer
/// replay` and `steer explain` build one from flags or a state file.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Runtime {
    pub backends: BackendState,
    /// Regions drained by an operator: no new flows.
    pub drained_regions: BTreeSet<String>,
    /// Measured round-trip time from this host to each region.
    pub rtt: BTreeMap<String, Duration>,
    /// Measured new flows per second arriving at each region.
    pub rate: BTreeMap<String, f64>,
    /// Backends in the order they went down (earliest first), for
    /// `max_ejection_percent`; backends not listed rank after, by name.
    pub down_order: Vec<String>,
    /// Per `latency` service, its regions ranked by round-trip time (with
    /// hysteresis in the daemon; see [`regions::settle_offline`]). A
    /// service not listed uses its configured order.
    pub ranked: BTreeMap<String, Vec<String>>,
    /// Per region, the fraction of the new flows reaching it that it keeps
    /// (the capacity waterfall); regions not listed keep everything.
    pub capacity_keep: BTreeMap<String, f64>,
    /// Per service, its staged shift (`steer shift`): (from region, to
    /// region, percent). `percent` % of the new flows each of its tables
    /// sends to `from` go to `to` instead (see
    /// [`steer_policy::shift::apply_shift`]).
    pub shifts: BTreeMap<String, (String, String, f64)>,
    /// Per service, its backends ejected by outlier detection: no new
    /// flows (unhealthy for the region engine, weight 0 in a plain Maglev
    /// table) while their established flows stay.
    pub ejected: BTreeMap<String, BTreeSet<String>>,
    /// Per service, its backends in slow start: `(step, steps)`, the
    /// fraction of their weight they get for new flows.
    pub ramps: BTreeMap<String, BTreeMap<String, (u32, u32)>>,
}

/// What the policy wants programmed, and how each table was decided.
#[derive(Clone, Debug, Default)]
pub struct Planned {
    pub services: Vec<DesiredService>,
    /// One per entry of `services`, in the same order.
    pub plans: Vec<ServicePlan>,
    pub classes: Arc<DesiredClasses>,
    /// The measured round-trip times the plan was made with (for
    /// `steer explain` of latency services).
    pub rtt: BTreeMap<String, Duration>,
}

impl Planned {
    /// The plan of service `name`.
    pub fn service(&self, name: &str) -> Option<(&DesiredService, &ServicePlan)> {
        let i = self.services.iter().position(|d| d.name == name)?;
        Some((&self.services[i], &self.plans[i]))
    }

    /// Each service's content hash (see [`regions::content_hash`]).
    pub fn hashes(&self) -> BTreeMap<String, u64> {
        self.services
            .iter()
            .zip(&self.plans)
            .map(|(d, p)| (d.name.clone(), regions::content_hash(&d.backends, p)))
            .collect()
    }
}

/// Computes every service's desired backends and tables.
pub fn desired(cfg: &Config, state: &BackendState) -> Vec<DesiredService> {
    plan(
        cfg,
        &Runtime {
            backends: state.clone(),
            ..Default::default()
        },
    )
    .services
}

/// Computes every service's desired backends and tables for `rt`, with
/// the decisions behind them.
pub fn plan(cfg: &Config, rt: &Runtime) -> Planned {
    plan_from(cfg, rt, None)
}

/// [`plan`], reusing the tables of `prev` (the last plan) whose inputs did
/// not change: the result is the same, without composing them again.
pub fn plan_from(cfg: &Config, rt: &Runtime, prev: Option<&Planned>) -> Planned {
    let state = &rt.backends;
    // Index the backends once: the same selection as
    // `Config::service_backends` (explicit names plus whole regions, in
    // config order, without duplicates) without scanning every backend for
    // every service.
    let mut by_name: HashMap<&str, usize> = HashMap::with_capacity(cfg.backends.len());
    let mut by_region: HashMap<&str, Vec<usize>> = HashMap::new();
    let mut region_of: HashMap<&str, &str> = HashMap::with_capacity(cfg.backends.len());
    for (i, b) in cfg.backends.iter().enumerate() {
        by_name.insert(b.name.as_str(), i);
        by_region.entry(b.region.as_str()).or_default().push(i);
        region_of.insert(b.name.as_str(), b.region.as_str());
    }
    let backends_of = |svc: &crate::config::Service| -> Vec<&crate::config::Backend> {
        let mut idx: Vec<usize> = svc
            .backends
            .iter()
            .filter_map(|n| by_name.get(n.as_str()).copied())
            .chain(
                svc.regions
                    .iter()
                    .flat_map(|r| by_region.get(r.as_str()).into_iter().flatten().copied()),
            )
            .collect();
        idx.sort_unstable();
        idx.dedup();
        idx.into_iter().map(|i| &cfg.backends[i]).collect()
    };
    let ring_size = cfg.dataplane.maglev_table_size;
    let (services, plans) = cfg
        .services
        .iter()
        .map(|svc| {
            let d = DesiredService {
                name: svc.name.clone(),
                vip: svc.vip,
                port: svc.port,
                protocol: match svc.protocol {
                    Protocol::Tcp => steer_common::PROTO_TCP,
                    Protocol::Udp => steer_common::PROTO_UDP,
                },
                client_affinity: svc.affinity == Affinity::Client,
                backends: backends_of(svc)
                    .into_iter()
                    .map(|b| DesiredBackend {
                        name: b.name.clone(),
                        address: b.address,
                        weight: if state.drained.contains(&b.name)
                            || rt.drained_regions.contains(&b.region)
                        {
                            0
                        } else {
                            b.weight
                        },
                        up: !state.down.contains(&b.name),
                    })
                    .collect(),
                tables: vec![],
            };
            (svc, d)
        })
        .map(|(svc, mut d)| {
            let before = prev.and_then(|p| p.service(&d.name)).map(|(_, sp)| sp);
            let p =
                regions::service_plan(cfg, svc, &mut d.backends, &region_of, rt, ring_size, before);
            d.tables = p
                .tables
                .iter()
                .map(|t| DesiredTable {
                    class: t.class,
                    slots: match &t.engine {
                        None => TableSlots::Maglev,
                        Some(e) => TableSlots::Slots(e.slots.clone()),
                    },
                })
                .collect();
            (d, p)
        })
        .unzip();
    Planned {
        services,
        plans,
        classes: Arc::new(regions::desired_classes(cfg)),
        rtt: rt.rtt.clone(),
    }
}

/// The data-plane-wide settings of `cfg`.
pub fn globals(cfg: &DataplaneConfig) -> Globals {
    Globals {
        mtu: cfg.mtu,
        pmtu_reply_rate: cfg.pmtu_reply_rate,
        pmtu_reply_burst: cfg.pmtu_reply_burst,
        next_hop_mac: cfg.next_hop_mac,
        ttl: cfg.ttl,
        encap_source_v4: cfg.encap_source_v4.map(|p| (p.addr.octets(), p.len)),
        encap_source_v6: cfg.encap_source_v6.map(|p| (p.addr.octets(), p.len)),
        source_mac: cfg.source_mac,
    }
}

impl From<&DataplaneConfig> for Limits {
    fn from(cfg: &DataplaneConfig) -> Limits {
        Limits {
            ring_size: cfg.maglev_table_size,
            max_tables: cfg.max_tables,
            max_reals: cfg.max_reals,
            conntrack_size: cfg.conntrack_size,
            conntrack_size_v6: cfg.conntrack_size_v6,
        }
    }
}

impl From<AttachMode> for dataplane::AttachMode {
    fn from(m: AttachMode) -> dataplane::AttachMode {
        match m {
            AttachMode::Driver => dataplane::AttachMode::Driver,
            AttachMode::Skb => dataplane::AttachMode::Skb,
            AttachMode::Auto => dataplane::AttachMode::Auto,
        }
    }
}

/// Programming a data plane straight from a config and backend state: the
/// daemon's owner, `steer replay`, the tests and the benchmarks do this.
pub trait ApplyConfig {
    /// Programs every map from `cfg` and `state`.
    fn apply_state(&mut self, cfg: &Config, state: BackendState) -> Result<(), DataplaneError>;
    /// Programs every map from `cfg` with `down` marked down; the drains
    /// last programmed stay.
    fn apply(&mut self, cfg: &Config, down: &BTreeSet<String>) -> Result<(), DataplaneError>;
    /// The backend state last programmed (or the drains adopted from a
    /// previous run).
    fn backend_state(&self) -> BackendState;
    /// Programs every map from `cfg` and the runtime inputs `rt`.
    fn apply_runtime(&mut self, cfg: &Config, rt: &Runtime) -> Result<(), DataplaneError> {
        let p = plan(cfg, rt);
        self.apply_plan(cfg, &p, &rt.backends.drained)
    }
    /// Programs `planned` (from [`plan`]); `drained` is persisted.
    fn apply_plan(
        &mut self,
        cfg: &Config,
        planned: &Planned,
        drained: &BTreeSet<String>,
    ) -> Result<(), DataplaneError>;
}

impl ApplyConfig for Dataplane {
    fn apply_state(&mut self, cfg: &Config, state: BackendState) -> Result<(), DataplaneError> {
        self.apply_runtime(
            cfg,
            &Runtime {
                backends: state,
                ..Default::default()
            },
        )
    }

    fn apply(&mut self, cfg: &Config, down: &BTreeSet<String>) -> Result<(), DataplaneError> {
        let state = BackendState {
            down: down.clone(),
            drained: self.drained().clone(),
        };
        self.apply_state(cfg, state)
    }

    fn apply_plan(
        &mut self,
        cfg: &Config,
        planned: &Planned,
        drained: &BTreeSet<String>,
    ) -> Result<(), DataplaneError> {
        self.program_with_classes(
            planned.services.clone(),
            globals(&cfg.dataplane),
            &planned.classes,
            drained,
        )
    }

    fn backend_state(&self) -> BackendState {
        BackendState {
            down: self.down().clone(),
            drained: self.drained().clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CFG: &str = r#"
[dataplane]
next_hop_mac = "02:00:00:00:00:fe"
encap_source_v4 = "198.18.0.0/24"
encap_source_v6 = "2001:db8:ffff::/112"

[[regions]]
name = "eu"
[[regions]]
name = "us"

[[backends]]
name = "us-1"
address = "192.0.2.21"
region = "us"
[[backends]]
name = "eu-1"
address = "192.0.2.11"
region = "eu"
weight = 50
[[backends]]
name = "eu-2"
address = "192.0.2.12"
region = "eu"

[[services]]
name = "both"
vip = "203.0.113.10"
port = 80
protocol = "tcp"
backends = ["eu-1"]
regions = ["us", "eu"]

[[services]]
name = "one"
vip = "203.0.113.11"
protocol = "udp"
affinity = "client"
backends = ["eu-2"]
"#;

    #[test]
    fn selects_like_service_backends_and_applies_state() {
        let cfg = Config::parse(CFG).expect("valid");
        let state = BackendState {
            down: ["eu-2".to_string()].into(),
            drained: ["us-1".to_string()].into(),
        };
        let d = desired(&cfg, &state);
        for (svc, want) in cfg.services.iter().zip(&d) {
            let names: Vec<&str> = want.backends.iter().map(|b| b.name.as_str()).collect();
            let expect: Vec<&str> = cfg
                .service_backends(svc)
                .iter()
                .map(|b| b.name.as_str())
                .collect();
            assert_eq!(names, expect);
        }
        // Config order, each backend once.
        let both = &d[0];
        assert_eq!(
            both.backends
                .iter()
                .map(|b| b.name.as_str())
                .collect::<Vec<_>>(),
            ["us-1", "eu-1", "eu-2"]
        );
        assert_eq!(both.backends[0].weight, 0, "drained");
        assert_eq!(both.backends[1].weight, 50);
        assert!(!both.backends[2].up, "down");
        assert_eq!(both.protocol, 6);
        assert!(!both.client_affinity);
        assert_eq!(d[1].protocol, 17);
        assert!(d[1].client_affinity);
        assert_eq!(d[1].port, 0);
    }

    /// Slots of each backend index in a composed table.
    fn slot_counts(slots: &[u32]) -> BTreeMap<u32, usize> {
        let mut m = BTreeMap::new();
        for &s in slots {
            *m.entry(s).or_default() += 1;
        }
        m
    }

    #[test]
    fn an_ejected_backend_gets_no_new_flows_but_stays_up() {
        let cfg = Config::parse(CFG).expect("valid");
        let rt = Runtime {
            ejected: [("both".to_string(), ["eu-2".to_string()].into())].into(),
            ..Default::default()
        };
        let p = plan(&cfg, &rt);
        let (both, sp) = p.service("both").expect("both");
        // A plain Maglev service: weight 0 like a drain, still up (its
        // established flows stay).
        assert!(sp.tables.is_empty());
        let eu2 = both
            .backends
            .iter()
            .find(|b| b.name == "eu-2")
            .expect("eu-2");
        assert_eq!(eu2.weight, 0);
        assert!(eu2.up);
        // Only in the service that ejected it.
        let (one, _) = p.service("one").expect("one");
        assert_eq!(one.backends[0].weight, 100);
        // A failover service composes a table: eu-2 is unhealthy for the
        // engine and owns no slot; eu's health is 1.4 × 50 / 150 = 46.7 %
        // (eu-1 healthy, weight 50 of 150), so eu keeps that share on eu-1
        // and spills the rest to us (like a health-check failure).
        let cfg = Config::parse(&CFG.replace(
            "regions = [\"us\", \"eu\"]",
            "regions = [\"us\", \"eu\"]\npolicy = \"failover\"\ntiers = [[\"eu\"], [\"us\"]]",
        ))
        .expect("valid");
        let p = plan(&cfg, &rt);
        let (both, sp) = p.service("both").expect("both");
        let e = sp.tables[0].engine.as_ref().expect("engine");
        let idx = |n: &str| both.backends.iter().position(|b| b.name == n).unwrap() as u32;
        let counts = slot_counts(&e.slots);
        assert_eq!(counts.get(&idx("eu-2")), None);
        let n = e.slots.len() as f64;
        let eu1 = counts[&idx("eu-1")] as f64 / n;
        assert!((eu1 - 1.4 * 50.0 / 150.0).abs() < 0.005, "{eu1}");
        let us1 = counts[&idx("us-1")] as f64 / n;
        assert!((us1 - (1.0 - 1.4 * 50.0 / 150.0)).abs() < 0.005, "{us1}");
        assert!(both.backends[idx("eu-2") as usize].up);
    }

    #[test]
    fn a_ramping_backend_gets_its_step_of_its_weight() {
        let cfg = Config::parse(CFG).expect("valid");
        // eu-2 (weight 100) at step 2 of 10: weight 20 against 100s.
        let rt = Runtime {
            ramps: [("both".to_string(), [("eu-2".to_string(), (2, 10))].into())].into(),
            ..Default::default()
        };
        let p = plan(&cfg, &rt);
        let (both, _) = p.service("both").expect("both");
        let w: Vec<(&str, u32)> = both
            .backends
            .iter()
            .map(|b| (b.name.as_str(), b.weight))
            .collect();
        // All weights times 10, eu-2's times 2.
        assert_eq!(w, [("us-1", 1000), ("eu-1", 500), ("eu-2", 200)]);
        // Composed (weighted policy over both regions, 1:1): in eu, eu-1
        // (50) and eu-2 (100 × 0.2 = 20) share eu's half 50:20; the
        // region's health is unchanged (eu keeps its half).
        let cfg = Config::parse(&CFG.replace(
            "regions = [\"us\", \"eu\"]",
            "regions = [\"us\", \"eu\"]\npolicy = \"weighted\"\nregion_weights = { us = 1, eu = 1 }",
        ))
        .expect("valid");
        let p = plan(&cfg, &rt);
        let (both, sp) = p.service("both").expect("both");
        let e = sp.tables[0].engine.as_ref().expect("engine");
        let idx = |n: &str| both.backends.iter().position(|b| b.name == n).unwrap() as u32;
        let counts = slot_counts(&e.slots);
        let n = e.slots.len() as f64;
        let share = |b: &str| counts.get(&idx(b)).copied().unwrap_or(0) as f64 / n;
        assert!((share("us-1") - 0.5).abs() < 0.01, "{}", share("us-1"));
        assert!(
            (share("eu-1") - 0.5 * 50.0 / 70.0).abs() < 0.01,
            "{}",
            share("eu-1")
        );
        assert!(
            (share("eu-2") - 0.5 * 20.0 / 70.0).abs() < 0.01,
            "{}",
            share("eu-2")
        );
        // Without the ramp eu-2 has twice eu-1's share.
        let p = plan(&cfg, &Runtime::default());
        let (_, sp) = p.service("both").expect("both");
        let e = sp.tables[0].engine.as_ref().expect("engine");
        let counts = slot_counts(&e.slots);
        let share = |b: &str| counts.get(&idx(b)).copied().unwrap_or(0) as f64 / n;
        assert!(
            (share("eu-2") - 0.5 * 100.0 / 150.0).abs() < 0.01,
            "{}",
            share("eu-2")
        );
    }
}
