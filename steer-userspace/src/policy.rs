//! Policy: a pure function from configuration and backend state to the
//! backend set each service should have in the data plane. It touches no
//! BPF object; `dataplane` applies what it returns.

use std::collections::BTreeSet;
use std::net::IpAddr;

use crate::config::{Affinity, Config, Protocol};

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

/// Backend state that is not in the configuration.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BackendState {
    /// Backends that are down (failed health checks, or forced down).
    pub down: BTreeSet<String>,
    /// Backends drained by an operator: weight 0 whatever the config says.
    pub drained: BTreeSet<String>,
}

/// Computes every service's desired backend set.
pub fn desired(cfg: &Config, state: &BackendState) -> Vec<DesiredService> {
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
            backends: cfg
                .service_backends(svc)
                .into_iter()
                .map(|b| DesiredBackend {
                    name: b.name.clone(),
                    address: b.address,
                    weight: if state.drained.contains(&b.name) {
                        0
                    } else {
                        b.weight
                    },
                    up: !state.down.contains(&b.name),
                })
                .collect(),
        })
        .collect()
}
