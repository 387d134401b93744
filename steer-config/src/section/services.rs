//! `[[services]]`: a VIP, port and protocol, and the backends serving it.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;

use steer_common::capacity;
use toml::Table;

use super::{check_health_check_ref, defined, quoted, Defined};
use crate::error::join;
use crate::model::{keyword_list, Affinity, CheckKind, PBackend, PHealthCheck, PService, Protocol};
use crate::values::{int_in, keyword, name, non_empty_string, unicast_address};
use crate::walker::{Node, Walker};

pub(super) fn read(w: &mut Walker, at: &str, t: &Table) -> PService {
    let n = Node::new(w, at, t);
    let service = PService {
        name: n.required(w, "name", "e.g. \"web\"", name),
        vip: n.required(w, "vip", "e.g. \"203.0.113.10\"", |v| {
            unicast_address(v, "a VIP")
        }),
        port: n.default(w, "port", 0u16, |v| int_in(v, 0, 65535)),
        protocol: n.required(
            w,
            "protocol",
            &format!("one of: {}", keyword_list::<Protocol>()),
            keyword,
        ),
        affinity: n.default(w, "affinity", Affinity::default(), keyword),
        backends: n.list(w, "backends", non_empty_string),
        regions: n.list(w, "regions", non_empty_string),
        health_check: n.optional(w, "health_check", non_empty_string),
        at: at.to_string(),
    };
    n.done(w);
    service
}

/// References, duplicate VIPs, address families and tcp checks on
/// all-ports services. Returns the number of reals the services use.
pub(super) fn validate(
    w: &mut Walker,
    services: &[PService],
    backends: &[PBackend],
    checks: &[PHealthCheck],
    names: &Defined<'_>,
) -> u64 {
    let mut vip_keys: HashMap<(IpAddr, u16, Protocol), &PService> = HashMap::new();
    let mut total_reals: u64 = 0;
    for s in services {
        for (key, what, list, defined) in [
            ("backends", "backend", &s.backends, &names.backends),
            ("regions", "region", &s.regions, &names.regions),
        ] {
            if let Some(list) = list {
                check_name_list(w, &join(&s.at, key), (what, key), list, defined);
            }
        }
        check_health_check_ref(w, &s.at, &s.health_check, names);
        if let (Some(b), Some(r)) = (&s.backends, &s.regions) {
            if b.is_empty() && r.is_empty() {
                w.err(
                    s.at.clone(),
                    "no backends: list backend names in backends = [...] or whole regions \
                     in regions = [...]",
                );
            }
        }
        if let (Some(vip), Some(port), Some(proto)) = (s.vip, s.port, s.protocol) {
            if let Some(first) = vip_keys.get(&(vip, port, proto)) {
                w.err(
                    s.at.clone(),
                    format!(
                        "VIP {vip} port {port} {proto} is already defined by {}{}",
                        first.at,
                        quoted(first.name.as_ref())
                    ),
                );
            } else {
                vip_keys.insert((vip, port, proto), s);
            }
        }
        let served = resolve(s, backends);
        total_reals += served.len() as u64;
        check_served(w, s, &served, checks, names);
    }
    if services.len() > capacity::VIPS as usize {
        w.err(
            "services",
            format!(
                "{} services are more than the data plane can hold ({} VIPs); remove some",
                services.len(),
                capacity::VIPS
            ),
        );
    }
    total_reals
}

/// Checks each backend serving `s`: its address family, and its health
/// check on an all-ports service.
fn check_served(
    w: &mut Walker,
    s: &PService,
    served: &[&PBackend],
    checks: &[PHealthCheck],
    names: &Defined<'_>,
) {
    let explicit = listed(&s.backends);
    let mut reported_checks: HashSet<&str> = HashSet::new();
    for b in served {
        let bname = b.name.as_deref().unwrap_or("?");
        if let (Some(IpAddr::V6(_)), Some(IpAddr::V4(_))) = (s.vip, b.address) {
            let via = match (&b.region, explicit.contains(bname)) {
                (Some(region), false) => format!(" of region {region:?}"),
                _ => String::new(),
            };
            w.err(
                s.at.clone(),
                format!(
                    "an IPv6 VIP cannot use IPv4 backend {bname:?}{via} (IPv6 packets \
                     can only be encapsulated to IPv6 backends)"
                ),
            );
        }
        // A tcp check without a port has nothing to probe on an
        // all-ports service.
        if s.port != Some(0) {
            continue;
        }
        let (check, at) = match (&b.health_check, &s.health_check) {
            (Some(Some(c)), _) => (c, join(&b.at, "health_check")),
            (Some(None), Some(Some(c))) => (c, join(&s.at, "health_check")),
            _ => continue,
        };
        let Some((ci, _)) = names.health_checks.get(check.as_str()) else {
            continue;
        };
        let hc = &checks[*ci];
        if hc.kind == Some(CheckKind::Tcp)
            && hc.port == Some(None)
            && reported_checks.insert(check.as_str())
        {
            w.err(
                at,
                format!(
                    "health check {check:?} is a tcp check without a port, and \
                     service{} has port 0 (all ports): set port in {}",
                    quoted(s.name.as_ref()),
                    hc.at
                ),
            );
        }
    }
}

/// The backends serving `s`, in config order.
fn resolve<'a>(s: &PService, backends: &'a [PBackend]) -> Vec<&'a PBackend> {
    let (names, regions) = (listed(&s.backends), listed(&s.regions));
    backends
        .iter()
        .filter(|b| {
            b.name.as_deref().is_some_and(|n| names.contains(n))
                || b.region.as_deref().is_some_and(|r| regions.contains(r))
        })
        .collect()
}

/// The valid names in a `backends` or `regions` list.
fn listed(list: &Option<Vec<Option<String>>>) -> HashSet<&str> {
    list.iter()
        .flatten()
        .flatten()
        .map(String::as_str)
        .collect()
}

/// Records duplicates within a service's `backends` or `regions` list and
/// references to undefined names.
fn check_name_list<T>(
    w: &mut Walker,
    list_path: &str,
    (what, what_plural): (&str, &str),
    list: &[Option<String>],
    defined_names: &HashMap<&str, T>,
) {
    let mut seen: HashMap<&str, usize> = HashMap::new();
    for (i, entry) in list.iter().enumerate() {
        let Some(entry) = entry else { continue };
        let path = format!("{list_path}[{i}]");
        if let Some(first) = seen.get(entry.as_str()) {
            w.err(
                path,
                format!("{what} {entry:?} is listed twice (also [{first}]); remove one"),
            );
            continue;
        }
        seen.insert(entry, i);
        if !defined_names.contains_key(entry.as_str()) {
            w.err(
                path,
                format!(
                    "unknown {what} {entry:?} {}",
                    defined(what_plural, defined_names)
                ),
            );
        }
    }
}
