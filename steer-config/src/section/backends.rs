//! `[[backends]]`: the servers packets are encapsulated to.

use std::collections::HashMap;
use std::net::IpAddr;

use toml::Table;

use super::{check_health_check_ref, defined, quoted, Defined};
use crate::defaults::{DEFAULT_WEIGHT, MAX_WEIGHT};
use crate::error::join;
use crate::model::{Encapsulation, PBackend, PService};
use crate::values::{keyword, name, non_empty_string, u32_in, unicast_address};
use crate::walker::{Node, Walker};

pub(super) fn read(w: &mut Walker, at: &str, t: &Table) -> PBackend {
    let n = Node::new(w, at, t);
    let backend = PBackend {
        name: n.required(w, "name", "e.g. \"eu-1\"", name),
        address: n.required(w, "address", "e.g. \"192.0.2.10\"", |v| {
            unicast_address(v, "a backend address")
        }),
        region: n.required(
            w,
            "region",
            "the name of a [[regions]] entry, e.g. \"eu-west\"",
            non_empty_string,
        ),
        weight: n.default(w, "weight", DEFAULT_WEIGHT, u32_in(0, MAX_WEIGHT)),
        encapsulation: n.default(w, "encapsulation", Encapsulation::default(), keyword),
        health_check: n.optional(w, "health_check", non_empty_string),
        at: at.to_string(),
    };
    n.done(w);
    backend
}

/// References to regions and health checks; addresses used twice or that
/// are VIPs.
pub(super) fn validate(
    w: &mut Walker,
    backends: &[PBackend],
    services: &[PService],
    names: &Defined<'_>,
) {
    let mut vips: HashMap<IpAddr, &PService> = HashMap::new();
    for s in services {
        if let Some(vip) = s.vip {
            vips.entry(vip).or_insert(s);
        }
    }
    let mut addresses: HashMap<IpAddr, &PBackend> = HashMap::new();
    for b in backends {
        if let Some(region) = &b.region {
            if !names.regions.contains_key(region.as_str()) {
                w.err(
                    join(&b.at, "region"),
                    format!(
                        "unknown region {region:?} {}",
                        defined("regions", &names.regions)
                    ),
                );
            }
        }
        check_health_check_ref(w, &b.at, &b.health_check, names);
        let Some(addr) = b.address else { continue };
        if let Some(first) = addresses.get(&addr) {
            w.err(
                join(&b.at, "address"),
                format!(
                    "{addr} is already used by {}{}",
                    first.at,
                    quoted(first.name.as_ref())
                ),
            );
        } else {
            addresses.insert(addr, b);
        }
        if let Some(s) = vips.get(&addr) {
            w.err(
                join(&b.at, "address"),
                format!(
                    "{addr} is the VIP of {}{} (a backend cannot be a VIP: its packets would loop)",
                    s.at,
                    quoted(s.name.as_ref())
                ),
            );
        }
    }
}
