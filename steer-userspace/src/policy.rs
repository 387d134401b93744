//! Policy: a pure function from configuration and backend state to the
//! backend set each service should have in the data plane. It touches no
//! BPF object; `dataplane` applies what it returns.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use crate::config::{Affinity, AttachMode, Config, DataplaneConfig, Protocol};
use crate::dataplane::{
    self, Dataplane, DataplaneError, DesiredBackend, DesiredService, Globals, Limits,
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
}

/// Computes every service's desired backend set.
pub fn desired(cfg: &Config, state: &BackendState) -> Vec<DesiredService> {
    desired_runtime(
        cfg,
        &Runtime {
            backends: state.clone(),
            ..Default::default()
        },
    )
}

/// Computes every service's desired backend set and tables for `rt`.
pub fn desired_runtime(cfg: &Config, rt: &Runtime) -> Vec<DesiredService> {
    let state = &rt.backends;
    // Index the backends once: the same selection as
    // `Config::service_backends` (explicit names plus whole regions, in
    // config order, without duplicates) without scanning every backend for
    // every service.
    let mut by_name: HashMap<&str, usize> = HashMap::with_capacity(cfg.backends.len());
    let mut by_region: HashMap<&str, Vec<usize>> = HashMap::new();
    for (i, b) in cfg.backends.iter().enumerate() {
        by_name.insert(b.name.as_str(), i);
        by_region.entry(b.region.as_str()).or_default().push(i);
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
    cfg.services
        .iter()
        .map(|svc| DesiredService {
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
        })
        .collect()
}

/// The data-plane-wide settings of `cfg`.
pub fn globals(cfg: &DataplaneConfig) -> Globals {
    Globals {
        mtu: cfg.mtu,
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
    fn apply_runtime(&mut self, cfg: &Config, rt: &Runtime) -> Result<(), DataplaneError>;
}

impl ApplyConfig for Dataplane {
    fn apply_state(&mut self, cfg: &Config, state: BackendState) -> Result<(), DataplaneError> {
        self.program(
            desired(cfg, &state),
            globals(&cfg.dataplane),
            &state.drained,
        )
    }

    fn apply(&mut self, cfg: &Config, down: &BTreeSet<String>) -> Result<(), DataplaneError> {
        let state = BackendState {
            down: down.clone(),
            drained: self.drained().clone(),
        };
        self.apply_state(cfg, state)
    }

    fn apply_runtime(&mut self, cfg: &Config, rt: &Runtime) -> Result<(), DataplaneError> {
        self.program(
            desired_runtime(cfg, rt),
            globals(&cfg.dataplane),
            &rt.backends.drained,
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
}
