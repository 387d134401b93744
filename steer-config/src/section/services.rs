//! `[[services]]`: a VIP, port and protocol, and the backends serving it.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;

use steer_common::capacity;
use toml::{Table, Value};

use super::{check_health_check_ref, defined, quoted, Defined};
use crate::defaults::{
    DEFAULT_LATENCY_DWELL, DEFAULT_LATENCY_MARGIN, DEFAULT_LATENCY_MARGIN_MIN,
    DEFAULT_MAX_EJECTION_PERCENT, DEFAULT_OUTLIER_BASE_EJECTION, DEFAULT_OUTLIER_INTERVAL,
    DEFAULT_OUTLIER_MAX_EJECTION, DEFAULT_OUTLIER_MAX_EJECTION_PERCENT,
    DEFAULT_OUTLIER_MIN_NEW_FLOWS, DEFAULT_OUTLIER_REPEATED_SYN_PERCENT, DEFAULT_OVERPROVISIONING,
    DEFAULT_PANIC_THRESHOLD, DEFAULT_SLOW_START_MIN_WEIGHT_PERCENT, LATENCY_DWELL_MAX,
    LATENCY_MARGIN_MIN_MAX, OUTLIER_EJECTION_MAX, OUTLIER_INTERVAL_MAX, OUTLIER_INTERVAL_MIN,
    OUTLIER_MIN_NEW_FLOWS_MAX, OVERPROVISIONING_MAX, OVERPROVISIONING_MIN, SLOW_START_WINDOW_MAX,
};
use crate::duration::format_duration;
use crate::error::join;
use crate::model::{
    keyword_list, Affinity, CheckKind, LatencyTuning, Milli, OnNoHealthy, OutlierTuning, PBackend,
    PClientClass, PHealthCheck, PService, Policy, PolicyKind, Protocol, SlowStartTuning,
};
use crate::values::{
    boolean, duration, int_in, keyword, milli, name, non_empty_string, unicast_address,
};
use crate::walker::{describe, Node, Walker};

/// Keys that belong to one policy only.
const POLICY_KEYS: &[(&str, PolicyKind)] = &[
    ("region_weights", PolicyKind::Weighted),
    ("tiers", PolicyKind::Failover),
    ("classes", PolicyKind::Geo),
    ("latency_margin", PolicyKind::Latency),
    ("latency_margin_min", PolicyKind::Latency),
    ("latency_dwell", PolicyKind::Latency),
];

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
        policy: read_policy(w, &n),
        overprovisioning_factor: n.default(
            w,
            "overprovisioning_factor",
            DEFAULT_OVERPROVISIONING,
            overprovisioning,
        ),
        panic_threshold: n.default(w, "panic_threshold", DEFAULT_PANIC_THRESHOLD, |v| {
            int_in(v, 0, 100)
        }),
        on_no_healthy: n.default(w, "on_no_healthy", OnNoHealthy::default(), keyword),
        max_ejection_percent: n.default(
            w,
            "max_ejection_percent",
            DEFAULT_MAX_EJECTION_PERCENT,
            |v| int_in(v, 0, 100),
        ),
        latency: read_latency(w, &n),
        outlier: read_outlier(w, &n),
        slow_start: read_slow_start(w, &n),
        at: at.to_string(),
    };
    n.done(w);
    service
}

/// `policy` and its policy-specific keys (`region_weights`, `tiers`,
/// `classes`): `None` if any is invalid or one is missing.
fn read_policy(w: &mut Walker, n: &Node<'_>) -> Option<Policy> {
    let kind = n.default(w, "policy", PolicyKind::default(), keyword);
    let classes = n.list(w, "classes", non_empty_string);
    let weights = region_weights(w, n);
    let tiers = tiers(w, n);
    let kind = kind?;
    let mut ok = true;
    for (key, owner) in POLICY_KEYS {
        if n.has(key) && *owner != kind {
            w.err(
                join(n.path, key),
                format!(
                    "{key} is only for policy = \"{owner}\" (this service's policy is \
                     \"{kind}\"): remove it, or set policy = \"{owner}\""
                ),
            );
            ok = false;
        }
    }
    let missing = |w: &mut Walker, key: &str, example: &str| {
        w.err(
            join(n.path, key),
            format!("missing (required with policy = \"{kind}\"), e.g. {key} = {example}"),
        );
    };
    let policy = match kind {
        PolicyKind::Maglev => Policy::Maglev,
        PolicyKind::Latency => Policy::Latency,
        PolicyKind::Weighted => match weights? {
            Some(weights) => Policy::Weighted { weights },
            None => {
                missing(w, "region_weights", "{ \"us-east\" = 2, \"eu-west\" = 1 }");
                return None;
            }
        },
        PolicyKind::Failover => match tiers? {
            Some(tiers) => Policy::Failover { tiers },
            None => {
                missing(w, "tiers", "[[\"us-east\"], [\"eu-west\"]]");
                return None;
            }
        },
        PolicyKind::Geo => {
            let classes: Vec<String> = classes?.into_iter().collect::<Option<_>>()?;
            if classes.is_empty() {
                if n.has("classes") {
                    w.err(
                        join(n.path, "classes"),
                        "is empty: policy = \"geo\" needs at least one client class \
                         (the name of a [[client_classes]] entry)",
                    );
                } else {
                    missing(
                        w,
                        "classes",
                        "[\"eu\"] (names of [[client_classes]] entries)",
                    );
                }
                return None;
            }
            Policy::Geo { classes }
        }
    };
    ok.then_some(policy)
}

/// `region_weights = { "us-east" = 2 }`: `Some(None)` if absent.
fn region_weights(w: &mut Walker, n: &Node<'_>) -> Option<Option<Vec<(String, u8)>>> {
    let path = join(n.path, "region_weights");
    let table = match n.optional(w, "region_weights", |v| match v {
        Value::Table(t) => Ok(t.clone()),
        _ => Err(format!(
            "expected a table of region weights such as {{ \"us-east\" = 2, \"eu-west\" = 1 }}, \
             found {}",
            describe(v)
        )),
    })? {
        None => return Some(None),
        Some(t) => t,
    };
    if table.is_empty() {
        w.err(
            path,
            "is empty: give every region of the service a weight 0..=255 (0 = used only when \
             every other region is unhealthy)",
        );
        return None;
    }
    let mut weights = Vec::with_capacity(table.len());
    let mut ok = true;
    for (region, v) in &table {
        match int_in::<u8>(v, 0, 255) {
            Ok(weight) => weights.push((region.clone(), weight)),
            Err(m) => {
                w.err(join(&path, region), m);
                ok = false;
            }
        }
    }
    ok.then_some(Some(weights))
}

/// `tiers = [["us-east"], ["eu-west", "ap-south"]]`: `Some(None)` if absent.
fn tiers(w: &mut Walker, n: &Node<'_>) -> Option<Option<Vec<Vec<String>>>> {
    let path = join(n.path, "tiers");
    let present = n.has("tiers");
    let tiers = n.list(w, "tiers", |v| match v {
        Value::Array(items) => Ok(items.clone()),
        _ => Err(format!(
            "expected a tier: an array of region names such as [\"eu-west\"], found {}",
            describe(v)
        )),
    })?;
    if !present {
        return Some(None);
    }
    if tiers.is_empty() {
        w.err(
            path,
            "is empty: list the tiers of regions, first tier first",
        );
        return None;
    }
    let mut out = Vec::with_capacity(tiers.len());
    let mut ok = true;
    for (i, tier) in tiers.into_iter().enumerate() {
        let Some(tier) = tier else {
            ok = false;
            continue;
        };
        if tier.is_empty() {
            w.err(format!("{path}[{i}]"), "is an empty tier: remove it");
            ok = false;
            continue;
        }
        let mut names = Vec::with_capacity(tier.len());
        for (j, v) in tier.iter().enumerate() {
            match non_empty_string(v) {
                Ok(s) => names.push(s),
                Err(m) => {
                    w.err(format!("{path}[{i}][{j}]"), m);
                    ok = false;
                }
            }
        }
        out.push(names);
    }
    ok.then_some(Some(out))
}

fn overprovisioning(v: &Value) -> Result<Milli, String> {
    let m = milli(v)?;
    if (OVERPROVISIONING_MIN..=OVERPROVISIONING_MAX).contains(&m) {
        Ok(m)
    } else {
        Err(format!(
            "{m} is out of range (must be between {OVERPROVISIONING_MIN} and \
             {OVERPROVISIONING_MAX}; Envoy's default is 1.4)"
        ))
    }
}

/// `latency_margin`, `latency_margin_min`, `latency_dwell`.
fn read_latency(w: &mut Walker, n: &Node<'_>) -> Option<LatencyTuning> {
    let margin_percent = n.default(w, "latency_margin", DEFAULT_LATENCY_MARGIN, |v| {
        int_in(v, 0, 100)
    });
    let margin_min = n.default(w, "latency_margin_min", DEFAULT_LATENCY_MARGIN_MIN, |v| {
        at_most(duration(v)?, LATENCY_MARGIN_MIN_MAX)
    });
    let dwell = n.default(w, "latency_dwell", DEFAULT_LATENCY_DWELL, |v| {
        at_most(duration(v)?, LATENCY_DWELL_MAX)
    });
    Some(LatencyTuning {
        margin_percent: margin_percent?,
        margin_min: margin_min?,
        dwell: dwell?,
    })
}

/// The `outlier_*` keys other than `outlier_detection`.
const OUTLIER_KEYS: &[&str] = &[
    "outlier_interval",
    "outlier_repeated_syn_percent",
    "outlier_min_new_flows",
    "outlier_base_ejection_time",
    "outlier_max_ejection_time",
];

/// `outlier_detection` and the `outlier_*` keys: `Some(None)` when off.
fn read_outlier(w: &mut Walker, n: &Node<'_>) -> Option<Option<OutlierTuning>> {
    let on = n.default(w, "outlier_detection", false, boolean)?;
    let interval = n.default(w, "outlier_interval", DEFAULT_OUTLIER_INTERVAL, |v| {
        let d = at_most(duration(v)?, OUTLIER_INTERVAL_MAX)?;
        if d < OUTLIER_INTERVAL_MIN {
            return Err(format!(
                "{} is too short (at least {}: the window must hold some new flows)",
                format_duration(d),
                format_duration(OUTLIER_INTERVAL_MIN)
            ));
        }
        Ok(d)
    });
    let percent = n.default(
        w,
        "outlier_repeated_syn_percent",
        DEFAULT_OUTLIER_REPEATED_SYN_PERCENT,
        |v| int_in(v, 1, 100),
    );
    let min_flows = n.default(
        w,
        "outlier_min_new_flows",
        DEFAULT_OUTLIER_MIN_NEW_FLOWS,
        |v| int_in(v, 1, i64::from(OUTLIER_MIN_NEW_FLOWS_MAX)),
    );
    let base = n.default(
        w,
        "outlier_base_ejection_time",
        DEFAULT_OUTLIER_BASE_EJECTION,
        |v| positive(at_most(duration(v)?, OUTLIER_EJECTION_MAX)?),
    );
    let max = n.default(
        w,
        "outlier_max_ejection_time",
        DEFAULT_OUTLIER_MAX_EJECTION,
        |v| positive(at_most(duration(v)?, OUTLIER_EJECTION_MAX)?),
    );
    let cap = if n.has("max_ejection_percent") {
        // Read (and checked) with the service's other keys.
        n.table_value("max_ejection_percent")
            .and_then(|v| int_in::<u8>(v, 0, 100).ok())
    } else {
        Some(DEFAULT_OUTLIER_MAX_EJECTION_PERCENT)
    };
    let (interval, percent, min_flows, base, max) = (interval?, percent?, min_flows?, base?, max?);
    if !on {
        let set: Vec<&str> = OUTLIER_KEYS.iter().copied().filter(|k| n.has(k)).collect();
        if !set.is_empty() {
            w.err(
                n.path,
                format!(
                    "{} set but outlier detection is off: add outlier_detection = true, or \
                     remove them",
                    set.join(", ")
                ),
            );
            return None;
        }
        return Some(None);
    }
    if max < base {
        w.err(
            join(n.path, "outlier_max_ejection_time"),
            format!(
                "{} is shorter than outlier_base_ejection_time ({}): the cap must be at \
                 least the first ejection's length",
                format_duration(max),
                format_duration(base)
            ),
        );
        return None;
    }
    Some(Some(OutlierTuning {
        interval,
        repeated_syn_percent: percent,
        min_new_flows: min_flows,
        base_ejection_time: base,
        max_ejection_time: max,
        max_ejection_percent: cap?,
    }))
}

/// `slow_start_window`, `slow_start_min_weight_percent`.
fn read_slow_start(w: &mut Walker, n: &Node<'_>) -> Option<SlowStartTuning> {
    let window = n.default(w, "slow_start_window", std::time::Duration::ZERO, |v| {
        at_most(duration(v)?, SLOW_START_WINDOW_MAX)
    });
    let min = n.default(
        w,
        "slow_start_min_weight_percent",
        DEFAULT_SLOW_START_MIN_WEIGHT_PERCENT,
        |v| int_in(v, 1, 100),
    );
    let (window, min) = (window?, min?);
    if window.is_zero() && n.has("slow_start_min_weight_percent") {
        w.err(
            join(n.path, "slow_start_min_weight_percent"),
            "set but slow start is off: set slow_start_window (e.g. \"30s\") too, or remove it",
        );
        return None;
    }
    Some(SlowStartTuning {
        window,
        min_weight_percent: min,
    })
}

fn positive(d: std::time::Duration) -> Result<std::time::Duration, String> {
    if d.is_zero() {
        Err("must be longer than 0s".to_string())
    } else {
        Ok(d)
    }
}

fn at_most(
    d: std::time::Duration,
    max: std::time::Duration,
) -> Result<std::time::Duration, String> {
    if d > max {
        Err(format!(
            "{} is too long (at most {})",
            format_duration(d),
            format_duration(max)
        ))
    } else {
        Ok(d)
    }
}

/// References, duplicate VIPs, address families and tcp checks on
/// all-ports services. Returns the number of reals the services use.
pub(super) fn validate(
    w: &mut Walker,
    services: &[PService],
    backends: &[PBackend],
    checks: &[PHealthCheck],
    classes: &[PClientClass],
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
        check_policy(w, s, backends, classes, names);
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

/// The regions serving `s`: its `regions`, then the regions of its
/// explicit backends in `[[backends]]` order, each once (the same order as
/// [`crate::Config::service_regions`]).
fn service_regions<'a>(s: &'a PService, backends: &'a [PBackend]) -> Vec<&'a str> {
    let mut out: Vec<&str> = Vec::new();
    for r in s.regions.iter().flatten().flatten() {
        if !out.contains(&r.as_str()) {
            out.push(r);
        }
    }
    let names = listed(&s.backends);
    for b in backends {
        if let (Some(n), Some(r)) = (&b.name, &b.region) {
            if names.contains(n.as_str()) && !out.contains(&r.as_str()) {
                out.push(r);
            }
        }
    }
    out
}

/// The policy's references: weights and tiers name exactly the service's
/// regions; geo classes exist and prefer only the service's regions.
fn check_policy(
    w: &mut Walker,
    s: &PService,
    backends: &[PBackend],
    classes: &[PClientClass],
    names: &Defined<'_>,
) {
    let Some(policy) = &s.policy else { return };
    let served = service_regions(s, backends);
    let shown = served
        .iter()
        .map(|r| format!("{r:?}"))
        .collect::<Vec<_>>()
        .join(", ");
    // A region named by a policy key that does not serve this service.
    let stranger = |w: &mut Walker, path: String, region: &str| {
        if names.regions.contains_key(region) {
            w.err(
                path,
                format!(
                    "region {region:?} does not serve this service (its regions: [{shown}], \
                     from regions and the regions of its backends); add it to regions or \
                     remove it here"
                ),
            );
        } else {
            w.err(
                path,
                format!(
                    "unknown region {region:?} {}",
                    defined("regions", &names.regions)
                ),
            );
        }
    };
    let uncovered = |w: &mut Walker, path: String, seen: &HashSet<&str>, what: &str| {
        let missing: Vec<String> = served
            .iter()
            .filter(|r| !seen.contains(**r))
            .map(|r| format!("{r:?}"))
            .collect();
        if !missing.is_empty() {
            w.err(
                path,
                format!(
                    "region{} {} of this service {} not {what}: every region of the \
                     service must be",
                    if missing.len() > 1 { "s" } else { "" },
                    missing.join(", "),
                    if missing.len() > 1 { "are" } else { "is" },
                ),
            );
        }
    };
    match policy {
        Policy::Maglev | Policy::Latency => {}
        Policy::Weighted { weights } => {
            let path = join(&s.at, "region_weights");
            let mut seen = HashSet::new();
            for (region, _) in weights {
                if served.contains(&region.as_str()) {
                    seen.insert(region.as_str());
                } else {
                    stranger(w, join(&path, region), region);
                }
            }
            uncovered(w, path, &seen, "given a weight (0 = standby)");
        }
        Policy::Failover { tiers } => {
            let path = join(&s.at, "tiers");
            let mut seen: HashMap<&str, (usize, usize)> = HashMap::new();
            for (i, tier) in tiers.iter().enumerate() {
                for (j, region) in tier.iter().enumerate() {
                    let at = format!("{path}[{i}][{j}]");
                    if let Some((fi, fj)) = seen.get(region.as_str()) {
                        w.err(
                            at,
                            format!(
                                "region {region:?} is listed twice (also tiers[{fi}][{fj}]); \
                                 each region is in exactly one tier"
                            ),
                        );
                    } else if served.contains(&region.as_str()) {
                        seen.insert(region, (i, j));
                    } else {
                        stranger(w, at, region);
                    }
                }
            }
            let seen: HashSet<&str> = seen.keys().copied().collect();
            uncovered(w, path, &seen, "in a tier");
        }
        Policy::Geo {
            classes: listed_classes,
        } => {
            let path = join(&s.at, "classes");
            let mut seen: HashMap<&str, usize> = HashMap::new();
            for (i, class) in listed_classes.iter().enumerate() {
                let at = format!("{path}[{i}]");
                if let Some(first) = seen.get(class.as_str()) {
                    w.err(
                        at,
                        format!("class {class:?} is listed twice (also [{first}]); remove one"),
                    );
                    continue;
                }
                seen.insert(class, i);
                let Some((ci, _)) = names.classes.get(class.as_str()) else {
                    w.err(
                        at,
                        format!(
                            "unknown client class {class:?} {}",
                            defined("client classes", &names.classes)
                        ),
                    );
                    continue;
                };
                let c = &classes[*ci];
                let Some(regions) = &c.regions else { continue };
                if regions.is_empty() {
                    w.err(
                        at.clone(),
                        format!(
                            "class {class:?} ({}) has no regions, so it cannot order this \
                             geo service's regions: give it regions = [...] or remove it here",
                            c.at
                        ),
                    );
                }
                for (k, region) in regions.iter().enumerate() {
                    let Some(region) = region else { continue };
                    if names.regions.contains_key(region.as_str())
                        && !served.contains(&region.as_str())
                    {
                        w.err(
                            at.clone(),
                            format!(
                                "class {class:?} prefers region {region:?} ({}.regions[{k}]), \
                                 which does not serve this service (its regions: [{shown}]); \
                                 add the region to the service or use another class",
                                c.at
                            ),
                        );
                    }
                }
            }
        }
    }
}

/// Records duplicates within a service's `backends` or `regions` list and
/// references to undefined names.
pub(super) fn check_name_list<T>(
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
