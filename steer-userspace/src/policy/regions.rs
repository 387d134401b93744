//! Region policies: the config's regions, client classes and service
//! policies, with the runtime inputs, turned into each service's selection
//! tables through the pure engine (`steer-policy`). Every table's decision
//! is kept, for `steer status`, the metrics and `steer explain`.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use steer_policy::shift::{apply_shift, NotShifted};
use steer_policy::{
    compose, decide, latency, BackendIn, ClassIn, Decision, OnNoHealthy as EngineNoHealthy,
    PolicyIn, RegionIn, ServiceIn,
};
use tracing::{debug, warn};

use crate::config::{ClientClass, Config, OnNoHealthy, Policy, Service};
use crate::dataplane::{DesiredBackend, DesiredClasses};

use super::Runtime;

/// The engine's view of one (service, class) table.
#[derive(Clone, Debug)]
pub struct Engine {
    pub input: ServiceIn,
    pub class: ClassIn,
    pub decision: Decision,
    /// The composed table: indexes into the service's backends, `NO_REAL`
    /// or `RESIDENCY_DROP` (after the staged shift, if one applies).
    pub slots: Arc<Vec<u32>>,
    /// The staged shift applied to the table, if the service has one.
    pub shift: Option<ShiftApplied>,
    /// The input the table was composed from when backends are in slow
    /// start (their weights ramped); `None` when it is `input`.
    pub ramped: Option<ServiceIn>,
}

/// A staged shift as applied to one table.
#[derive(Clone, Debug, PartialEq)]
pub struct ShiftApplied {
    /// The region flows leave.
    pub from: String,
    /// The region flows go to.
    pub to: String,
    /// The percentage of `from`'s slots moved.
    pub percent: f64,
    /// How many slots moved, or why none did.
    pub moved: Result<usize, NotShifted>,
}

/// One selection table of a service and how it was decided.
#[derive(Clone, Debug)]
pub struct TablePlan {
    /// 0: the default table; 1..=255: the client class with that id.
    pub class: u8,
    /// The class's name (`None` for the default table).
    pub class_name: Option<String>,
    /// `None`: a plain Maglev table over the service's up backends (the
    /// `maglev` policy with a healthy backend).
    pub engine: Option<Arc<Engine>>,
}

/// A service's tables.
#[derive(Clone, Debug, Default)]
pub struct ServicePlan {
    /// Empty for a `maglev` service with no class table: one Maglev table.
    pub tables: Vec<TablePlan>,
    /// Backends whose health-check failure the service ignores because
    /// more than `max_ejection_percent` of its backends are down.
    pub ejection_capped: Vec<String>,
}

/// The class id of `cfg.client_classes[i]`.
pub fn class_id(i: usize) -> u8 {
    u8::try_from(i + 1).unwrap_or(u8::MAX)
}

/// Every class prefix of `cfg`, for the data plane.
pub fn desired_classes(cfg: &Config) -> DesiredClasses {
    let mut out = DesiredClasses::default();
    for (i, c) in cfg.client_classes.iter().enumerate() {
        let id = class_id(i);
        for p in &c.prefixes {
            match p.addr {
                IpAddr::V4(a) => out.v4.push((a.octets(), p.len, id)),
                IpAddr::V6(a) => out.v6.push((a.octets(), p.len, id)),
            }
        }
    }
    out
}

/// The class of a client address: the longest matching prefix of any
/// class (per family), as the data plane finds it. Linear: for `explain`.
pub fn class_of(cfg: &Config, client: IpAddr) -> Option<(u8, &ClientClass, String)> {
    let mut best: Option<(u8, usize, String)> = None;
    for (i, c) in cfg.client_classes.iter().enumerate() {
        for p in &c.prefixes {
            if p.contains_addr(client) && best.as_ref().is_none_or(|b| p.len > b.0) {
                best = Some((p.len, i, p.to_string()));
            }
        }
    }
    best.map(|(_, i, prefix)| (class_id(i), &cfg.client_classes[i], prefix))
}

/// The backends of `svc` whose health-check failure counts: all the down
/// ones, unless more than `max_ejection_percent` of the service's backends
/// are down, in which case only the first that many (in `down_order`,
/// the order they went down; others by name) are, and the rest are
/// returned as capped.
fn ejection_cap(
    svc: &Service,
    names: &[&str],
    down: &BTreeSet<String>,
    down_order: &[String],
) -> BTreeSet<String> {
    let pct = u32::from(svc.max_ejection_percent.min(100));
    if pct >= 100 {
        return BTreeSet::new();
    }
    let allowed = names.len() * pct as usize / 100;
    let mut downs: Vec<&str> = names
        .iter()
        .copied()
        .filter(|n| down.contains(*n))
        .collect();
    if downs.len() <= allowed {
        return BTreeSet::new();
    }
    let rank = |n: &str| down_order.iter().position(|d| d == n).unwrap_or(usize::MAX);
    downs.sort_by(|a, b| rank(a).cmp(&rank(b)).then(a.cmp(b)));
    downs[allowed..].iter().map(|s| s.to_string()).collect()
}

/// The regions of `svc`, in its default order, each with its backends as
/// indexes into `backends`.
fn engine_input(
    cfg: &Config,
    svc: &Service,
    backends: &[DesiredBackend],
    region_of: &HashMap<&str, &str>,
    rt: &Runtime,
) -> ServiceIn {
    let none = BTreeSet::new();
    let ejected = rt.ejected.get(&svc.name).unwrap_or(&none);
    let region_names = cfg.service_regions(svc);
    let regions: Vec<RegionIn> = region_names
        .iter()
        .map(|&name| {
            let r = cfg.region(name);
            RegionIn {
                name: name.to_string(),
                dial: r.map_or(100, |r| r.dial),
                capacity_keep: rt.capacity_keep.get(name).copied().unwrap_or(1.0),
                drained: rt.drained_regions.contains(name),
                backends: backends
                    .iter()
                    .enumerate()
                    .filter(|(_, b)| region_of.get(b.name.as_str()) == Some(&name))
                    .map(|(i, b)| BackendIn {
                        index: i as u32,
                        name: b.name.clone(),
                        weight: b.weight,
                        healthy: b.up && !ejected.contains(&b.name),
                    })
                    .collect(),
            }
        })
        .collect();
    let index = |n: &str| region_names.iter().position(|r| *r == n);
    let policy = match &svc.policy {
        Policy::Maglev => PolicyIn::Maglev,
        Policy::Weighted { weights } => PolicyIn::Weighted(
            region_names
                .iter()
                .map(|r| {
                    weights
                        .iter()
                        .find(|(n, _)| n == r)
                        .map_or(0, |(_, w)| u32::from(*w))
                })
                .collect(),
        ),
        Policy::Failover { tiers } => PolicyIn::Failover(
            tiers
                .iter()
                .map(|t| t.iter().filter_map(|n| index(n)).collect())
                .collect(),
        ),
        Policy::Geo { .. } | Policy::Latency => PolicyIn::Ordered,
    };
    ServiceIn {
        regions,
        policy,
        overprovisioning: svc.overprovisioning_factor.get(),
        panic_threshold: f64::from(svc.panic_threshold) / 100.0,
        on_no_healthy: match svc.on_no_healthy {
            OnNoHealthy::FailOpen => EngineNoHealthy::FailOpen,
            OnNoHealthy::Drop => EngineNoHealthy::Drop,
        },
    }
}

/// `names` (region names) as indexes of `svc`'s regions, then the service's
/// other regions in its default order.
fn order_of(input: &ServiceIn, names: &[String]) -> Vec<usize> {
    let mut order: Vec<usize> = names
        .iter()
        .filter_map(|n| input.regions.iter().position(|r| r.name == *n))
        .collect();
    for i in 0..input.regions.len() {
        if !order.contains(&i) {
            order.push(i);
        }
    }
    order
}

fn allowed_of(input: &ServiceIn, class: &ClientClass) -> Option<Vec<usize>> {
    class.allowed_regions.as_ref().map(|names| {
        names
            .iter()
            .filter_map(|n| input.regions.iter().position(|r| r.name == *n))
            .collect()
    })
}

/// A service's staged shift, as the adapter applies it: (from, to,
/// percent).
type ShiftIn<'a> = Option<&'a (String, String, f64)>;

/// Decides and composes one table, then applies the service's staged
/// shift (if any), or reuses `prev`'s if it was built from the same
/// inputs (the engine is pure: same inputs, same table).
#[allow(clippy::too_many_arguments)]
fn engine(
    service: &str,
    input: &ServiceIn,
    ramped: Option<&ServiceIn>,
    class: ClassIn,
    ring_size: u32,
    shift: ShiftIn<'_>,
    prev: Option<&Arc<Engine>>,
) -> Arc<Engine> {
    let same_shift = |a: &Option<ShiftApplied>| match (a, shift) {
        (None, None) => true,
        (Some(a), Some((from, to, percent))) => {
            a.from == *from && a.to == *to && a.percent == *percent
        }
        _ => false,
    };
    if let Some(p) = prev {
        if p.input == *input
            && p.ramped.as_ref() == ramped
            && p.class == class
            && p.slots.len() == ring_size as usize
            && same_shift(&p.shift)
        {
            return p.clone();
        }
    }
    let decision = decide(input, &class);
    // Slow start changes the choice inside a region, not its health.
    let mut slots = compose(ramped.unwrap_or(input), &decision, ring_size);
    let shift = shift.map(|(from, to, percent)| {
        let index = |n: &str| input.regions.iter().position(|r| r.name == n);
        let moved = match (index(from), index(to)) {
            (Some(a), Some(b)) => apply_shift(input, &decision, &mut slots, a, b, *percent),
            _ => Err(NotShifted::NoSuchRegion),
        };
        match moved {
            Ok(_) => {}
            // Expected for every class that may not use the target.
            Err(NotShifted::Residency) => debug!(
                service,
                from = %from,
                to = %to,
                "staged shift not applied to a residency class's table"
            ),
            Err(why) => warn!(
                service,
                from = %from,
                to = %to,
                percent,
                reason = %why,
                "staged shift not applied to this table: its new flows follow the policy"
            ),
        }
        ShiftApplied {
            from: from.clone(),
            to: to.clone(),
            percent: *percent,
            moved,
        }
    });
    Arc::new(Engine {
        input: input.clone(),
        class,
        decision,
        slots: Arc::new(slots),
        shift,
        ramped: ramped.cloned(),
    })
}

/// `input` with the weights of the backends in slow start ramped: every
/// weight times `steps`, a ramping backend's times its step instead (see
/// `steer_policy::slowstart`). `None` when no backend of it ramps.
fn ramp_input(
    input: &ServiceIn,
    ramps: Option<&BTreeMap<String, (u32, u32)>>,
) -> Option<ServiceIn> {
    let ramps = ramps.filter(|r| !r.is_empty())?;
    let mut out = input.clone();
    let mut any = false;
    for b in out.regions.iter_mut().flat_map(|r| r.backends.iter_mut()) {
        any |= ramps.contains_key(&b.name);
        b.weight = b.weight.saturating_mul(ramp_factor(ramps, &b.name));
    }
    any.then_some(out)
}

/// The factor slow start multiplies `backend`'s weight by: the common step
/// count for a backend that does not ramp, its own step (brought to the
/// common count) for one that does, never 0.
fn ramp_factor(ramps: &BTreeMap<String, (u32, u32)>, backend: &str) -> u32 {
    let steps = ramps.values().map(|&(_, n)| n.max(1)).max().unwrap_or(1);
    match ramps.get(backend) {
        Some(&(step, n)) => {
            (u64::from(step) * u64::from(steps) / u64::from(n.max(1))).max(1) as u32
        }
        None => steps,
    }
}

/// The tables of `svc`, whose backends (health and drains applied) are
/// `backends`: one per class that has its own (the classes a geo service
/// lists, and every residency class), plus the default table. Capped
/// ejections are applied to `backends` (marked up again). `region_of`
/// maps every backend name of the config to its region.
pub fn service_plan(
    cfg: &Config,
    svc: &Service,
    backends: &mut [DesiredBackend],
    region_of: &HashMap<&str, &str>,
    rt: &Runtime,
    ring_size: u32,
    prev: Option<&ServicePlan>,
) -> ServicePlan {
    let prev_engine = |class: u8| {
        prev.and_then(|p| p.tables.iter().find(|t| t.class == class))
            .and_then(|t| t.engine.as_ref())
    };
    let names: Vec<&str> = backends.iter().map(|b| b.name.as_str()).collect();
    let capped = ejection_cap(svc, &names, &rt.backends.down, &rt.down_order);
    for b in backends.iter_mut() {
        if capped.contains(&b.name) {
            b.up = true;
        }
    }
    let residency: Vec<usize> = cfg
        .client_classes
        .iter()
        .enumerate()
        .filter(|(_, c)| c.allowed_regions.is_some())
        .map(|(i, _)| i)
        .collect();
    let listed: Vec<usize> = match &svc.policy {
        Policy::Geo { classes } => classes
            .iter()
            .filter_map(|n| cfg.client_classes.iter().position(|c| c.name == *n))
            .collect(),
        _ => Vec::new(),
    };
    let none = BTreeSet::new();
    let ejected = rt.ejected.get(&svc.name).unwrap_or(&none);
    let ramps = rt.ramps.get(&svc.name).filter(|r| !r.is_empty());
    let any_healthy = backends
        .iter()
        .any(|b| b.up && b.weight > 0 && !ejected.contains(&b.name));
    // A staged shift in force (a finished one at 0 % changes nothing).
    let shift: ShiftIn<'_> = rt.shifts.get(&svc.name).filter(|s| s.2 > 0.0);
    // A shift moves slots of composed tables: a shifted service gets them.
    let plain = matches!(svc.policy, Policy::Maglev) && any_healthy && shift.is_none();
    if plain && residency.is_empty() && listed.is_empty() {
        // One plain Maglev table, which the data plane builds: nothing
        // for the engine to decide. An ejected backend gets no new flows
        // (weight 0, like a drain: it stays up, so its flows stay); slow
        // start scales the weights (all times `steps`, a ramping backend's
        // times its step).
        for b in backends.iter_mut() {
            if ejected.contains(&b.name) {
                b.weight = 0;
            } else if let Some(r) = ramps {
                b.weight = b.weight.saturating_mul(ramp_factor(r, &b.name));
            }
        }
        return ServicePlan {
            tables: Vec::new(),
            ejection_capped: capped.into_iter().collect(),
        };
    }
    let input = engine_input(cfg, svc, backends, region_of, rt);
    let ramped = ramp_input(&input, ramps);
    // The default order: latency services follow their ranking.
    let default_order: Option<Vec<usize>> = match &svc.policy {
        Policy::Latency => rt.ranked.get(&svc.name).map(|r| order_of(&input, r)),
        _ => None,
    };
    let mut tables = Vec::new();
    let default = if plain {
        None
    } else {
        Some(engine(
            &svc.name,
            &input,
            ramped.as_ref(),
            ClassIn {
                order: default_order.clone(),
                allowed: None,
            },
            ring_size,
            shift,
            prev_engine(0),
        ))
    };
    tables.push(TablePlan {
        class: 0,
        class_name: None,
        engine: default,
    });
    let mut own: Vec<usize> = listed.iter().chain(&residency).copied().collect();
    own.sort_unstable();
    own.dedup();
    for i in own {
        let class = &cfg.client_classes[i];
        let order = if listed.contains(&i) {
            Some(order_of(&input, &class.regions))
        } else {
            default_order.clone()
        };
        tables.push(TablePlan {
            class: class_id(i),
            class_name: Some(class.name.clone()),
            engine: Some(engine(
                &svc.name,
                &input,
                ramped.as_ref(),
                ClassIn {
                    order,
                    allowed: allowed_of(&input, class),
                },
                ring_size,
                shift,
                prev_engine(class_id(i)),
            )),
        });
    }
    ServicePlan {
        tables,
        ejection_capped: capped.into_iter().collect(),
    }
}

/// Where the latency ranking of a service would put its regions on `rtt`
/// alone (no hysteresis: `steer replay` and `steer explain` offline): the
/// measured regions by round-trip time, the others in their place.
pub fn rank_now(cfg: &Config, svc: &Service, rtt: &BTreeMap<String, Duration>) -> Vec<String> {
    let names = cfg.service_regions(svc);
    let r = latency::Ranking::new((0..names.len()).collect(), latency::Tuning::default());
    let rtts: Vec<(usize, Option<Duration>)> = names
        .iter()
        .enumerate()
        .map(|(i, n)| (i, rtt.get(*n).copied()))
        .collect();
    r.proposal(&rtts)
        .into_iter()
        .map(|i| names[i].to_string())
        .collect()
}

/// The keep fraction of a region whose arrival rate is `rate` (no
/// smoothing: offline).
pub fn keep_now(cfg: &Config, region: &str, rate: f64) -> f64 {
    match cfg.region(region).and_then(|r| {
        r.max_new_flows_per_second
            .map(|m| f64::from(m) * r.capacity_scaler.get())
    }) {
        None => 1.0,
        Some(limit) if rate <= limit => 1.0,
        Some(limit) => (limit / rate).clamp(0.0, 1.0),
    }
}

/// Fills `rt.ranked` and `rt.capacity_keep` from its measurements at once,
/// as a daemon would after the dwell and once its controller settled.
pub fn settle_offline(cfg: &Config, rt: &mut Runtime) {
    rt.ranked = cfg
        .services
        .iter()
        .filter(|s| matches!(s.policy, Policy::Latency))
        .map(|s| (s.name.clone(), rank_now(cfg, s, &rt.rtt)))
        .collect();
    rt.capacity_keep = rt
        .rate
        .iter()
        .map(|(r, rate)| (r.clone(), keep_now(cfg, r, *rate)))
        .collect();
}

/// FNV-1a, 64 bits: a content hash that is the same on every host and
/// every build (unlike `std`'s hasher).
#[derive(Clone, Copy)]
pub struct Fnv(u64);

impl Default for Fnv {
    fn default() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
}

impl Fnv {
    pub fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 ^= u64::from(*b);
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    pub fn finish(self) -> u64 {
        self.0
    }
}

/// A hash of what decides a service's new flows: its backends (name,
/// address, weight, up) and every table (class, slots). Equal on two hosts
/// with the same inputs.
pub fn content_hash(backends: &[DesiredBackend], plan: &ServicePlan) -> u64 {
    let mut h = Fnv::default();
    for b in backends {
        h.write(b.name.as_bytes());
        h.write(&[0]);
        h.write(b.address.to_string().as_bytes());
        h.write(&b.weight.to_le_bytes());
        h.write(&[u8::from(b.up)]);
    }
    for t in &plan.tables {
        h.write(&[t.class]);
        match &t.engine {
            None => h.write(b"maglev"),
            Some(e) => {
                for s in e.slots.iter() {
                    h.write(&s.to_le_bytes());
                }
            }
        }
    }
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{plan, BackendState};

    const CFG: &str = r#"
[dataplane]
next_hop_mac = "02:00:00:00:00:fe"
encap_source_v4 = "198.18.0.0/24"
encap_source_v6 = "2001:db8:ffff::/112"
maglev_table_size = 251

[[regions]]
name = "eu"
[[regions]]
name = "us"
max_new_flows_per_second = 1000
capacity_scaler = 0.5

[[backends]]
name = "eu-1"
address = "192.0.2.11"
region = "eu"
[[backends]]
name = "eu-2"
address = "192.0.2.12"
region = "eu"
[[backends]]
name = "us-1"
address = "192.0.2.21"
region = "us"
[[backends]]
name = "us-2"
address = "192.0.2.22"
region = "us"

[[client_classes]]
name = "wide"
prefixes = ["198.0.0.0/8", "2001:db8::/32"]
regions = ["us"]
[[client_classes]]
name = "narrow"
prefixes = ["198.51.100.0/24", "2001:db8:1::/48"]
regions = ["eu"]
allowed_regions = ["eu"]

[[services]]
name = "geo"
vip = "203.0.113.10"
port = 80
protocol = "tcp"
regions = ["us", "eu"]
policy = "geo"
classes = ["wide"]
max_ejection_percent = 25

[[services]]
name = "plain"
vip = "203.0.113.11"
port = 80
protocol = "tcp"
regions = ["eu", "us"]

[[services]]
name = "fast"
vip = "203.0.113.12"
port = 80
protocol = "tcp"
regions = ["eu", "us"]
policy = "latency"
"#;

    fn cfg() -> Config {
        Config::parse(CFG).expect("valid")
    }

    #[test]
    fn the_longest_prefix_wins_per_family() {
        let cfg = cfg();
        let name =
            |a: &str| class_of(&cfg, a.parse().unwrap()).map(|(id, c, p)| (id, c.name.clone(), p));
        assert_eq!(
            name("198.51.100.7"),
            Some((2, "narrow".into(), "198.51.100.0/24".into()))
        );
        assert_eq!(
            name("198.18.0.7"),
            Some((1, "wide".into(), "198.0.0.0/8".into()))
        );
        assert_eq!(
            name("2001:db8:1::9"),
            Some((2, "narrow".into(), "2001:db8:1::/48".into()))
        );
        assert_eq!(
            name("2001:db8:2::9"),
            Some((1, "wide".into(), "2001:db8::/32".into()))
        );
        assert_eq!(name("192.0.2.1"), None);
        let d = desired_classes(&cfg);
        assert_eq!(
            d.v4,
            vec![([198, 0, 0, 0], 8, 1), ([198, 51, 100, 0], 24, 2)]
        );
        assert_eq!(d.v6.len(), 2);
    }

    #[test]
    fn classes_get_tables_where_they_matter() {
        let cfg = cfg();
        let p = plan(&cfg, &Runtime::default());
        let classes = |svc: &str| -> Vec<u8> {
            p.service(svc)
                .unwrap()
                .1
                .tables
                .iter()
                .map(|t| t.class)
                .collect()
        };
        // geo: default + the listed class + the residency class.
        assert_eq!(classes("geo"), [0, 1, 2]);
        // A maglev service with every backend up keeps the plain Maglev
        // default table, plus the residency class's.
        assert_eq!(classes("plain"), [0, 2]);
        assert!(p.service("plain").unwrap().1.tables[0].engine.is_none());
        // The residency class only reaches eu: every slot of its table is
        // an eu backend (indexes 0 and 1 in plain's backend list).
        let (d, plan_) = p.service("plain").unwrap();
        let t = plan_.tables[1].engine.as_ref().unwrap();
        assert!(t
            .slots
            .iter()
            .all(|&i| d.backends[i as usize].name.starts_with("eu-")));
        // The listed class prefers us, then the service's other regions.
        let (_, g) = p.service("geo").unwrap();
        let wide = g.tables[1].engine.as_ref().unwrap();
        assert_eq!(wide.decision.order, [0, 1], "us (index 0) first, then eu");
    }

    #[test]
    fn max_ejection_percent_keeps_the_later_failures_in_service() {
        let cfg = cfg();
        let svc = cfg.service("geo").unwrap();
        let names = ["us-1", "us-2", "eu-1", "eu-2"];
        let down: BTreeSet<String> = ["us-1", "us-2", "eu-1"].map(String::from).into();
        // 25% of 4 backends: one may be down; us-2 went down first.
        let order = ["us-2".to_string(), "eu-1".to_string(), "us-1".to_string()];
        let capped = ejection_cap(svc, &names, &down, &order);
        assert_eq!(capped, ["eu-1", "us-1"].map(String::from).into());
        // Without an order, by name: eu-1 stays down.
        let capped = ejection_cap(svc, &names, &down, &[]);
        assert_eq!(capped, ["us-1", "us-2"].map(String::from).into());
        // Under the cap nothing is capped, and 100% never caps.
        let one: BTreeSet<String> = ["us-1".to_string()].into();
        assert!(ejection_cap(svc, &names, &one, &[]).is_empty());
        let plain = cfg.service("plain").unwrap();
        assert!(ejection_cap(plain, &names, &down, &[]).is_empty());
        // Through the plan: capped backends are programmed up.
        let rt = Runtime {
            backends: BackendState {
                down,
                drained: BTreeSet::new(),
            },
            down_order: order.to_vec(),
            ..Default::default()
        };
        let p = plan(&cfg, &rt);
        let (d, sp) = p.service("geo").unwrap();
        assert_eq!(sp.ejection_capped, ["eu-1", "us-1"]);
        let up: Vec<(&str, bool)> = d.backends.iter().map(|b| (b.name.as_str(), b.up)).collect();
        assert!(
            up.contains(&("us-2", false)) && up.contains(&("us-1", true)),
            "{up:?}"
        );
    }

    #[test]
    fn offline_measurements_rank_and_keep_at_once() {
        let cfg = cfg();
        let mut rt = Runtime::default();
        rt.rtt.insert("us".into(), Duration::from_millis(10));
        rt.rtt.insert("eu".into(), Duration::from_millis(80));
        rt.rate.insert("us".into(), 2000.0);
        rt.rate.insert("eu".into(), 9000.0);
        settle_offline(&cfg, &mut rt);
        assert_eq!(rt.ranked["fast"], ["us", "eu"]);
        assert!(!rt.ranked.contains_key("geo"));
        // us: limit 1000 × 0.5 = 500 of 2000/s reaching it -> keep 0.25;
        // eu has no limit.
        assert_eq!(rt.capacity_keep["us"], 0.25);
        assert_eq!(rt.capacity_keep["eu"], 1.0);
        assert_eq!(keep_now(&cfg, "us", 400.0), 1.0);
    }

    /// A staged shift moves its share of the source region's slots in
    /// every table of the service, except a residency class's whose
    /// allowed regions exclude the target; at 0 % nothing changes.
    #[test]
    fn a_shift_moves_its_share_of_the_source_regions_slots() {
        let cfg = cfg();
        let share = |p: &crate::policy::Planned, class: u8, region: &str| -> f64 {
            let (d, sp) = p.service("plain").unwrap();
            let t = sp.tables.iter().find(|t| t.class == class).unwrap();
            let slots = &t.engine.as_ref().expect("an engine table").slots;
            let n = slots
                .iter()
                .filter(|&&i| d.backends[i as usize].name.starts_with(region))
                .count();
            n as f64 / slots.len() as f64
        };
        let base = plan(&cfg, &Runtime::default());
        assert!(base.service("plain").unwrap().1.tables[0].engine.is_none());
        let mut rt = Runtime::default();
        rt.shifts
            .insert("plain".into(), ("eu".into(), "us".into(), 25.0));
        let p = plan(&cfg, &rt);
        // Four equal backends, two per region: eu has about half of the
        // 251 slots; a quarter of them move to us.
        let eu = share(&p, 0, "eu-");
        let us = share(&p, 0, "us-");
        assert!((eu - 0.5 * 0.75).abs() < 0.015, "eu {eu}");
        assert!((us - (0.5 + 0.5 * 0.25)).abs() < 0.015, "us {us}");
        let e = p.service("plain").unwrap().1.tables[0]
            .engine
            .clone()
            .unwrap();
        let sh = e.shift.as_ref().expect("shift applied");
        assert!(matches!(sh.moved, Ok(n) if n > 25), "{sh:?}");
        // The residency class may only use eu: nothing moves.
        assert_eq!(share(&p, 2, "eu-"), 1.0);
        let narrow = p.service("plain").unwrap().1.tables[1]
            .engine
            .clone()
            .unwrap();
        assert_eq!(
            narrow.shift.as_ref().map(|s| s.moved),
            Some(Err(NotShifted::Residency))
        );
        // Other services are not shifted; 0 % is no shift at all.
        assert!(p.service("geo").unwrap().1.tables[0]
            .engine
            .as_ref()
            .unwrap()
            .shift
            .is_none());
        rt.shifts
            .insert("plain".into(), ("eu".into(), "us".into(), 0.0));
        assert_eq!(plan(&cfg, &rt).hashes(), base.hashes());
    }

    /// A `maglev` service is composed by the engine while a shift applies:
    /// with its backends in the order of its regions, that table is the
    /// plain Maglev table the data plane builds, so starting a shift moves
    /// only the shifted slots.
    #[test]
    fn a_shifted_maglev_service_keeps_the_plain_maglev_table_elsewhere() {
        let cfg = cfg();
        let mut rt = Runtime::default();
        // 0.1 % of eu's ~125 slots rounds to none: the composed table.
        rt.shifts
            .insert("plain".into(), ("eu".into(), "us".into(), 0.1));
        let p = plan(&cfg, &rt);
        let (d, sp) = p.service("plain").unwrap();
        let e = sp.tables[0].engine.as_ref().expect("composed");
        assert_eq!(e.shift.as_ref().map(|s| s.moved), Some(Ok(0)));
        let entries: Vec<steer_common::maglev::Entry<'_>> = d
            .backends
            .iter()
            .enumerate()
            .map(|(i, b)| steer_common::maglev::Entry {
                id: i as u32,
                key: b.name.as_bytes(),
                weight: if b.up { b.weight } else { 0 },
            })
            .collect();
        let plain = steer_common::maglev::build(&entries, 251);
        assert_eq!(*e.slots, plain);
    }

    #[test]
    fn a_plan_reuses_the_tables_whose_inputs_did_not_change() {
        use crate::policy::plan_from;
        let cfg = cfg();
        let first = plan(&cfg, &Runtime::default());
        let again = plan_from(&cfg, &Runtime::default(), Some(&first));
        let engines = |p: &crate::policy::Planned, svc: &str| -> Vec<Arc<Engine>> {
            p.service(svc)
                .unwrap()
                .1
                .tables
                .iter()
                .filter_map(|t| t.engine.clone())
                .collect()
        };
        for (a, b) in engines(&first, "geo")
            .iter()
            .zip(engines(&again, "geo").iter())
        {
            assert!(Arc::ptr_eq(a, b), "an unchanged table is reused");
        }
        // us's capacity keep changes: geo's tables (which include us) are
        // composed again, and equal a fresh plan's.
        let mut rt = Runtime::default();
        rt.capacity_keep.insert("us".into(), 0.5);
        let changed = plan_from(&cfg, &rt, Some(&first));
        let fresh = plan(&cfg, &rt);
        for ((a, b), c) in engines(&first, "geo")
            .iter()
            .zip(engines(&changed, "geo").iter())
            .zip(engines(&fresh, "geo").iter())
        {
            assert!(!Arc::ptr_eq(a, b));
            assert_eq!(b.slots, c.slots);
        }
        assert_eq!(changed.hashes(), fresh.hashes());
    }

    #[test]
    fn equal_inputs_give_equal_hashes_and_a_change_changes_them() {
        let cfg = cfg();
        let a = plan(&cfg, &Runtime::default()).hashes();
        let b = plan(&cfg, &Runtime::default()).hashes();
        assert_eq!(a, b);
        let mut rt = Runtime::default();
        rt.backends.down.insert("eu-1".into());
        let c = plan(&cfg, &rt).hashes();
        for svc in ["geo", "plain", "fast"] {
            assert_ne!(a[svc], c[svc], "{svc}");
        }
        // FNV-1a 64 of "a", from its specification.
        let mut h = Fnv::default();
        h.write(b"a");
        assert_eq!(h.finish(), 0xaf63_dc4c_8601_ec8c);
    }

    /// The longest prefix wins whatever the order of the classes: a /48
    /// of the first class inside a /32 of a later one, and the reverse.
    #[test]
    fn class_of_takes_the_longest_prefix() {
        let cfg = Config::parse(
            r#"
[dataplane]
next_hop_mac = "02:00:00:00:00:fe"
encap_source_v6 = "2001:db8:ffff::/112"

[[regions]]
name = "r"

[[client_classes]]
name = "inner6"
prefixes = ["2001:db8:e1::/48", "198.51.0.0/16"]
regions = ["r"]

[[client_classes]]
name = "outer"
prefixes = ["2001:db8::/32", "198.0.0.0/8", "198.51.100.0/24"]
regions = ["r"]
"#,
        )
        .expect("valid");
        let class = |a: &str| {
            let (id, c, prefix) = class_of(&cfg, a.parse().expect("address")).expect("a class");
            (id, c.name.clone(), prefix)
        };
        assert_eq!(
            class("2001:db8:e1::7"),
            (1, "inner6".into(), "2001:db8:e1::/48".into())
        );
        assert_eq!(
            class("2001:db8:e2::7"),
            (2, "outer".into(), "2001:db8::/32".into())
        );
        assert_eq!(
            class("198.51.7.1"),
            (1, "inner6".into(), "198.51.0.0/16".into())
        );
        assert_eq!(
            class("198.51.100.1"),
            (2, "outer".into(), "198.51.100.0/24".into())
        );
        assert!(class_of(&cfg, "10.0.0.1".parse().expect("address")).is_none());
    }
}
