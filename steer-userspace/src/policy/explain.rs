//! `steer explain`: the decision path of one flow, computed from the same
//! plan the data plane was programmed with (and, live, the conntrack
//! entry or the pending handshake that may override it).

use std::fmt::{self, Write as _};
use std::net::{IpAddr, SocketAddr};

use steer_common::hash::flow_hash;
use steer_common::{FlowKey, Real, SynSlot, NO_REAL, REAL_F_DOWN, REAL_F_PRESENT};
use steer_policy::{explain_slot, HopAction, Outcome, RESIDENCY_DROP};

use crate::config::{Affinity, Config, Policy, Protocol, Service};
use crate::dataplane::plan::addr_bytes;
use crate::dataplane::{CounterReader, Ledger, PendingSyn};

use super::regions::{class_of, ServicePlan, TablePlan};
use super::Planned;

/// A flow to explain, as the client sends it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlowQuery {
    pub protocol: Protocol,
    pub client: SocketAddr,
    pub vip: SocketAddr,
}

/// What the data plane's conntrack says about the flow (live only).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Conntrack {
    /// Offline: no conntrack.
    Unknown,
    None,
    /// An entry pins the flow to this backend (name), usable or not.
    Entry {
        backend: String,
        usable: bool,
    },
    /// No entry, but the flow's SYN waits in `RECENT_SYN` (a flow-affinity
    /// TCP flow whose handshake has not completed): the SYN went to
    /// `backend` (a name, or `real N` when the id is no longer it), and the
    /// flow's next packet does what `next` says.
    HandshakePending {
        backend: String,
        next: Pending,
    },
}

/// What a pending handshake's next packet does, by the program's rules
/// (`flow::syn_take`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pending {
    /// It goes to the SYN's backend, whatever the table says now.
    Follows,
    /// The SYN's backend is down: it is re-selected by the table.
    Down,
    /// The SYN's real id is gone or now another backend's (its generation
    /// changed): it is re-selected by the table.
    Replaced,
}

/// The fate of a pending SYN's next packet, exactly as `flow::syn_take`
/// decides it: it follows the slot when the slot's real is present, not
/// down, and of the slot's generation (its low 12 bits); else it is
/// re-selected. `real` is the `REALS` entry of the slot's real id (`None`:
/// beyond the map).
pub fn pending_fate(slot: SynSlot, real: Option<Real>) -> Pending {
    match real {
        Some(r) if r.flags & REAL_F_PRESENT != 0 && slot.same_generation(r.generation) => {
            if r.flags & REAL_F_DOWN == 0 {
                Pending::Follows
            } else {
                Pending::Down
            }
        }
        _ => Pending::Replaced,
    }
}

/// The decision path of one flow.
#[derive(Clone, Debug, PartialEq)]
pub struct Explanation {
    pub flow: FlowQuery,
    /// The service the VIP matched, if any.
    pub service: Option<String>,
    pub lines: Vec<String>,
    /// The backend a new flow goes to (`None`: dropped or not a VIP).
    pub backend: Option<String>,
    /// The drop reason for a new flow, if dropped.
    pub drop: Option<&'static str>,
}

impl fmt::Display for Explanation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for l in &self.lines {
            writeln!(f, "{l}")?;
        }
        Ok(())
    }
}

/// A query from its words: `protocol` `tcp` or `udp`, `client` and `vip`
/// socket addresses of the same family.
pub fn parse_query(protocol: &str, client: &str, vip: &str) -> Result<FlowQuery, String> {
    let protocol = match protocol {
        "tcp" => Protocol::Tcp,
        "udp" => Protocol::Udp,
        other => return Err(format!("protocol {other:?}: expected tcp or udp")),
    };
    let sock = |what: &str, s: &str| -> Result<SocketAddr, String> {
        s.parse().map_err(|_| {
            format!("{what} {s:?} is not IP:PORT (e.g. 198.51.100.7:40000 or [2001:db8::7]:40000)")
        })
    };
    let (client, vip) = (sock("client", client)?, sock("VIP", vip)?);
    if client.is_ipv4() != vip.is_ipv4() {
        return Err(format!(
            "client {client} and VIP {vip} are of different address families"
        ));
    }
    Ok(FlowQuery {
        protocol,
        client,
        vip,
    })
}

/// What the data plane holds for the flow, read live from `reader`
/// (`CONNTRACK`, then `RECENT_SYN` and `REALS`), the backends named by
/// `ledger`: what the running daemon's `steer explain` reports. A map that
/// cannot be read counts as holding nothing.
pub fn conntrack_live(
    cfg: &Config,
    planned: &Planned,
    ledger: &Ledger,
    reader: &CounterReader,
    q: &FlowQuery,
) -> Conntrack {
    conntrack_of(
        cfg,
        planned,
        q,
        reader.ct_epoch().ok(),
        |key| reader.conntrack(key).ok().flatten(),
        |key| reader.pending_syn(key).ok().flatten(),
        |service, real_id| {
            ledger.services.get(service).and_then(|s| {
                s.reals
                    .iter()
                    .find(|(_, id)| **id == real_id)
                    .map(|(n, _)| n.clone())
            })
        },
    )
}

/// The conntrack entry of the flow, read with `lookup`; without one, and
/// for a flow-affinity TCP service only (the others never use
/// `RECENT_SYN`), its pending SYN, read with `pending`; `name_of(service,
/// real id)` names the backend a real id belongs to. With the program's
/// conntrack `epoch`, an entry of another epoch yields to a pending SYN of
/// its 5-tuple too: that SYN skipped the entry (a reused client port, the
/// entry's filter bit aged out) and the flow's next packet follows it.
pub fn conntrack_of(
    cfg: &Config,
    planned: &Planned,
    q: &FlowQuery,
    epoch: Option<u32>,
    lookup: impl Fn(&FlowKey) -> Option<steer_common::CtValue>,
    pending: impl Fn(&FlowKey) -> Option<PendingSyn>,
    name_of: impl Fn(&str, u32) -> Option<String>,
) -> Conntrack {
    let Some(svc) = service_for(cfg, q) else {
        return Conntrack::None;
    };
    let key = flow_key(q, svc);
    let flow_tcp = svc.protocol == Protocol::Tcp && svc.affinity == Affinity::Flow;
    let handshake = |p: PendingSyn| {
        let next = pending_fate(p.slot, p.real);
        let backend = match next {
            Pending::Follows | Pending::Down => name_of(&svc.name, p.slot.real_id),
            // The id's current holder is not where the SYN went.
            Pending::Replaced => None,
        }
        .unwrap_or_else(|| format!("real {}", p.slot.real_id));
        Conntrack::HandshakePending { backend, next }
    };
    let Some(ct) = lookup(&key) else {
        if !flow_tcp {
            return Conntrack::None;
        }
        return pending(&key).map_or(Conntrack::None, handshake);
    };
    if flow_tcp && epoch.is_some_and(|e| !steer_common::ct_epoch_is(ct.flags, e)) {
        if let Some(p) = pending(&key) {
            return handshake(p);
        }
    }
    match name_of(&svc.name, ct.real_id) {
        None => Conntrack::Entry {
            backend: format!("real {} (no longer a backend of {})", ct.real_id, svc.name),
            usable: false,
        },
        Some(b) => {
            let up = planned
                .service(&svc.name)
                .and_then(|(d, _)| d.backends.iter().find(|x| x.name == b))
                .is_some_and(|x| x.up);
            Conntrack::Entry {
                backend: b,
                usable: up,
            }
        }
    }
}

/// The service of `cfg` whose VIP matches (exact port first, then port 0).
pub fn service_for<'a>(cfg: &'a Config, q: &FlowQuery) -> Option<&'a Service> {
    let m = |port: u16| {
        cfg.services
            .iter()
            .find(|s| s.vip == q.vip.ip() && s.port == port && s.protocol == q.protocol)
    };
    m(q.vip.port()).or_else(|| m(0))
}

/// The flow key and hash the data plane computes for a new flow of `q`
/// to `svc` (client affinity hashes the client address only).
pub fn flow_key(q: &FlowQuery, svc: &Service) -> FlowKey {
    let (src, family) = addr_bytes(&q.client.ip());
    let (dst, _) = addr_bytes(&q.vip.ip());
    let client_affinity = svc.affinity == Affinity::Client;
    FlowKey {
        src,
        dst,
        sport: if client_affinity {
            0
        } else {
            steer_common::port_to_wire(q.client.port())
        },
        dport: steer_common::port_to_wire(if client_affinity {
            svc.port
        } else {
            q.vip.port()
        }),
        proto: q.protocol.number(),
        family,
        _pad: [0; 2],
    }
}

fn pct(x: f64) -> String {
    format!("{:.1}%", x * 100.0)
}

/// Explains `q` against the plan `planned` (what was, or would be,
/// programmed from `cfg`).
pub fn explain(cfg: &Config, planned: &Planned, q: FlowQuery, ct: Conntrack) -> Explanation {
    let mut lines = Vec::new();
    let proto = q.protocol.as_str();
    lines.push(format!("flow        {proto} {} -> {}", q.client, q.vip));
    let Some(svc) = service_for(cfg, &q) else {
        lines.push(format!(
            "service     none: no service has VIP {} port {} {proto} (nor port 0); the packet passes to the host",
            q.vip.ip(),
            q.vip.port()
        ));
        return Explanation {
            flow: q,
            service: None,
            lines,
            backend: None,
            drop: None,
        };
    };
    let policy = match &svc.policy {
        Policy::Maglev => "maglev",
        Policy::Weighted { .. } => "weighted",
        Policy::Failover { .. } => "failover",
        Policy::Geo { .. } => "geo",
        Policy::Latency => "latency",
    };
    lines.push(format!(
        "service     {} ({}:{} {proto}, policy {policy})",
        svc.name, svc.vip, svc.port
    ));
    let (services, plans) = (&planned.services, &planned.plans);
    let Some(idx) = services.iter().position(|d| d.name == svc.name) else {
        lines.push("service     not programmed".to_string());
        return Explanation {
            flow: q,
            service: Some(svc.name.clone()),
            lines,
            backend: None,
            drop: None,
        };
    };
    let desired = &services[idx];
    let plan: &ServicePlan = &plans[idx];
    // The class, as the data plane looks it up.
    let class = class_of(cfg, q.client.ip());
    let table: Option<&TablePlan> = class
        .as_ref()
        .and_then(|(id, _, _)| plan.tables.iter().find(|t| t.class == *id))
        .or_else(|| plan.tables.iter().find(|t| t.class == 0));
    match &class {
        None => lines.push("class       none: no class prefix contains the client".to_string()),
        Some((id, c, prefix)) => {
            let own = plan.tables.iter().any(|t| t.class == *id);
            lines.push(format!(
                "class       {} (id {id}, prefix {prefix}){}",
                c.name,
                if own {
                    ", with its own table for this service"
                } else {
                    "; this service has no table of its own for it: the default table"
                }
            ));
        }
    }
    let key = flow_key(&q, svc);
    let hash = flow_hash(&key);
    let ring = cfg.dataplane.maglev_table_size;
    let slot = hash % ring;
    lines.push(format!(
        "hash        {hash:#010x} -> slot {slot} of {ring}{}",
        if svc.affinity == Affinity::Client {
            " (client affinity: the client address only)"
        } else {
            ""
        }
    ));
    let mut backend = None;
    let mut drop = None;
    match table.and_then(|t| t.engine.as_ref()) {
        None => {
            lines.push(
                "order       maglev policy: one Maglev table over every up backend of the service, by weight"
                    .to_string(),
            );
            // The plain table is built by the data plane from the backends.
            let entries: Vec<steer_common::maglev::Entry<'_>> = desired
                .backends
                .iter()
                .enumerate()
                .map(|(i, b)| steer_common::maglev::Entry {
                    id: i as u32,
                    key: b.name.as_bytes(),
                    weight: if b.up { b.weight } else { 0 },
                })
                .collect();
            let t = steer_common::maglev::build(&entries, ring);
            match t.get(slot as usize).copied() {
                Some(i) if i != NO_REAL => {
                    backend = Some(desired.backends[i as usize].name.clone())
                }
                _ => drop = Some("no_backend"),
            }
        }
        Some(e) => {
            let d = &e.decision;
            let name = |i: usize| e.input.regions[i].name.as_str();
            let why = match (&svc.policy, table.map(|t| t.class)) {
                (Policy::Geo { .. }, Some(c)) if c != 0 => {
                    "the class's preference, then the service's other regions"
                }
                (Policy::Geo { .. }, _) => {
                    "the service's default order (the client's class is not listed)"
                }
                (Policy::Latency, _) => {
                    "ranked by measured round-trip time (see rtt below); until measured, as configured"
                }
                (Policy::Failover { .. }, _) => "the failover tiers",
                (Policy::Weighted { .. }, _) => {
                    "by weight; spill follows the service's region order"
                }
                (Policy::Maglev, _) => "the service's regions",
            };
            let order: Vec<&str> = d.order.iter().map(|&i| name(i)).collect();
            lines.push(format!("order       {} ({why})", order.join(", ")));
            if matches!(svc.policy, Policy::Latency) {
                let rtts: Vec<String> = e
                    .input
                    .regions
                    .iter()
                    .map(|r| match planned.rtt.get(&r.name) {
                        Some(d) => format!("{} {:.1} ms", r.name, d.as_secs_f64() * 1000.0),
                        None => format!("{} not measured", r.name),
                    })
                    .collect();
                lines.push(format!(
                    "rtt         {} (a new ranking must be {}% and {} better for {})",
                    rtts.join(", "),
                    svc.latency.margin_percent,
                    steer_config::format_duration(svc.latency.margin_min),
                    steer_config::format_duration(svc.latency.dwell)
                ));
            }
            if let Some(a) = &d.allowed {
                let allowed: Vec<&str> = a.iter().map(|&i| name(i)).collect();
                lines.push(format!(
                    "residency   only {} may take this class's new flows",
                    allowed.join(", ")
                ));
            }
            let drained: Vec<&str> = e
                .input
                .regions
                .iter()
                .filter(|r| r.drained)
                .map(|r| r.name.as_str())
                .collect();
            if !drained.is_empty() {
                lines.push(format!(
                    "drained     {} (out of the order)",
                    drained.join(", ")
                ));
            }
            lines.push(format!(
                "{:<14}{:>8}{:>9}{:>8}{:>6}{:>8}{:>7}{:>8}  {}",
                "region", "healthy", "health", "load", "dial", "reach", "keep", "share", "panic"
            ));
            for r in &d.regions {
                let mut l = String::new();
                let _ = write!(
                    l,
                    "{:<14}{:>8}{:>9}{:>8}{:>6}{:>8}{:>7.3}{:>8}  {}",
                    name(r.region),
                    pct(r.healthy_fraction),
                    format!("{:.3}", r.health),
                    pct(r.load),
                    r.dial,
                    pct(r.reach),
                    r.capacity_keep,
                    pct(r.share),
                    if r.panic {
                        "PANIC: all its backends"
                    } else if r.spread_all {
                        "fail-open: all its backends"
                    } else {
                        "no"
                    }
                );
                lines.push(l);
            }
            let outcome = match d.outcome {
                Outcome::Serve => "serve",
                Outcome::FailOpen => "fail-open: no healthy backend in the order",
                Outcome::DropNoHealthy => "drop (on_no_healthy = \"drop\"): no healthy backend",
                Outcome::DropResidency => "drop (residency): no allowed region may serve",
            };
            lines.push(format!(
                "outcome     {outcome} (normalized total health {:.3})",
                d.nth
            ));
            let path = explain_slot(&e.input, d, ring, slot);
            let mut steps = Vec::new();
            if let Some(r) = path.step1 {
                steps.push(format!("step 1 -> {}", name(r)));
            }
            for h in &path.hops {
                steps.push(format!(
                    "{}: {}",
                    name(h.region),
                    match h.action {
                        HopAction::Kept => "kept",
                        HopAction::DialSpill => "dial spilled it",
                        HopAction::CapacitySpill => "capacity spilled it",
                        HopAction::NotServing => "cannot serve, passed on",
                    }
                ));
            }
            if path.fallback {
                steps.push("past the last region: back by step-1 load".to_string());
            }
            if !steps.is_empty() {
                lines.push(format!("path        {}", steps.join("; ")));
            }
            let v = e.slots.get(slot as usize).copied().unwrap_or(NO_REAL);
            match v {
                RESIDENCY_DROP => drop = Some("residency"),
                NO_REAL => drop = Some("no_backend"),
                i => backend = desired.backends.get(i as usize).map(|b| b.name.clone()),
            }
            // The region of the backend the table holds (a staged shift
            // may have moved the slot from the policy's region).
            let region_of = |i: u32| {
                e.input
                    .regions
                    .iter()
                    .position(|r| r.backends.iter().any(|b| b.index == i))
            };
            let held = region_of(v);
            if let Some(sh) = &e.shift {
                let what = match (&sh.moved, held.map(name), path.region.map(name)) {
                    (Err(why), _, _) => format!("not applied: {why}"),
                    (Ok(_), Some(h), Some(p)) if h == sh.to && p == sh.from => {
                        format!(
                            "this flow's slot is moved: {} instead of {}",
                            sh.to, sh.from
                        )
                    }
                    (Ok(_), _, Some(p)) if p == sh.from => {
                        format!("this flow's slot stays on {}", sh.from)
                    }
                    (Ok(_), _, _) => format!("the policy does not send this flow to {}", sh.from),
                };
                lines.push(format!(
                    "shift       {} -> {} at {}% of {}'s new flows: {what}",
                    sh.from, sh.to, sh.percent, sh.from
                ));
            }
            if let (Some(r), Some(_)) = (held.or(path.region), &backend) {
                lines.push(format!("region      {}", name(r)));
            }
        }
    }
    match (&backend, drop) {
        (Some(b), _) => {
            let addr: Option<IpAddr> = desired
                .backends
                .iter()
                .find(|x| x.name == *b)
                .map(|x| x.address);
            let down = desired.backends.iter().any(|x| x.name == *b && !x.up);
            lines.push(format!(
                "new flow    -> backend {b} ({}){}",
                addr.map_or_else(String::new, |a| a.to_string()),
                if down {
                    ", which is down (panic or fail-open)"
                } else {
                    ""
                }
            ));
        }
        (None, Some(reason)) => lines.push(format!("new flow    dropped, counted as {reason}")),
        (None, None) => {}
    }
    match ct {
        Conntrack::Unknown => {}
        Conntrack::None => lines.push(
            "conntrack   no entry: a new connection is selected as above (one whose handshake \
             is in progress keeps its SYN's backend)"
                .to_string(),
        ),
        Conntrack::Entry { backend: b, usable: true } => lines.push(format!(
            "conntrack   an entry pins this flow to {b}: it stays there (overrides the choice above)"
        )),
        Conntrack::Entry { backend: b, usable: false } => lines.push(format!(
            "conntrack   an entry names {b}, which is down or gone: the flow is re-selected as above"
        )),
        Conntrack::HandshakePending { backend, next } => lines.push(pending_line(&backend, next)),
    }
    Explanation {
        flow: q,
        service: Some(svc.name.clone()),
        lines,
        backend,
        drop,
    }
}

/// The `conntrack` line of a pending handshake.
fn pending_line(backend: &str, next: Pending) -> String {
    let b = backend;
    match next {
        Pending::Follows => format!(
            "conntrack   handshake pending: the SYN went to {b}; the flow's next packet follows \
             it (overrides the choice above)"
        ),
        Pending::Down => format!(
            "conntrack   handshake pending: the SYN went to {b}, which is down: the flow's next \
             packet is re-selected as above"
        ),
        Pending::Replaced => format!(
            "conntrack   handshake pending: the SYN went to {b}, which is gone or replaced \
             (generation changed): the flow's next packet is re-selected as above"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_parse_or_say_what_is_wrong() {
        let q = parse_query("tcp", "198.51.100.7:40000", "203.0.113.10:443").expect("valid");
        assert_eq!(q.protocol, Protocol::Tcp);
        assert_eq!(q.client.port(), 40000);
        assert!(parse_query("udp", "[2001:db8::7]:53", "[2001:db8::10]:53").is_ok());
        let e = parse_query("sctp", "198.51.100.7:1", "203.0.113.10:1").unwrap_err();
        assert!(e.contains("expected tcp or udp"), "{e}");
        let e = parse_query("tcp", "198.51.100.7", "203.0.113.10:1").unwrap_err();
        assert!(e.contains("is not IP:PORT"), "{e}");
        let e = parse_query("tcp", "198.51.100.7:1", "[2001:db8::10]:1").unwrap_err();
        assert!(e.contains("different address families"), "{e}");
    }

    const CFG: &str = r#"
[dataplane]
next_hop_mac = "02:00:00:00:00:fe"
encap_source_v4 = "198.18.0.0/24"

[[regions]]
name = "eu"

[[backends]]
name = "eu-1"
address = "192.0.2.11"
region = "eu"

[[backends]]
name = "eu-2"
address = "192.0.2.12"
region = "eu"

[[services]]
name = "web"
vip = "203.0.113.10"
port = 80
protocol = "tcp"
regions = ["eu"]

[[services]]
name = "sticky"
vip = "203.0.113.10"
port = 443
protocol = "tcp"
affinity = "client"
regions = ["eu"]

[[services]]
name = "dns"
vip = "203.0.113.10"
port = 53
protocol = "udp"
regions = ["eu"]
"#;

    fn real(flags: u8, generation: u32) -> Real {
        Real {
            addr: [0; 16],
            family: steer_common::FAMILY_V4,
            flags,
            _pad: [0; 2],
            generation,
        }
    }

    fn slot(real_id: u32, generation: u32) -> SynSlot {
        SynSlot::unpack(
            SynSlot {
                tag: 0x8000_0001,
                real_id,
                generation,
            }
            .pack(),
        )
    }

    #[test]
    fn a_pending_syn_follows_its_real_only_when_syn_take_would() {
        let up = REAL_F_PRESENT;
        let down = REAL_F_PRESENT | REAL_F_DOWN;
        // Present, up, same generation: the next packet follows the SYN.
        assert_eq!(
            pending_fate(slot(3, 7), Some(real(up, 7))),
            Pending::Follows
        );
        // The slot keeps 12 bits of the generation: a difference above
        // them is not seen (as in the program).
        assert_eq!(
            pending_fate(slot(3, 7), Some(real(up, 7 + 4096))),
            Pending::Follows
        );
        assert_eq!(pending_fate(slot(3, 7), Some(real(down, 7))), Pending::Down);
        // The id was reused (generation bumped), removed, or is beyond
        // REALS: re-selected.
        assert_eq!(
            pending_fate(slot(3, 7), Some(real(up, 8))),
            Pending::Replaced
        );
        assert_eq!(
            pending_fate(slot(3, 7), Some(real(down, 8))),
            Pending::Replaced
        );
        assert_eq!(
            pending_fate(slot(3, 7), Some(real(0, 7))),
            Pending::Replaced
        );
        assert_eq!(pending_fate(slot(3, 7), None), Pending::Replaced);
    }

    fn live(
        cfg: &Config,
        q: &FlowQuery,
        ct: Option<steer_common::CtValue>,
        syn: Option<PendingSyn>,
    ) -> Conntrack {
        let planned = crate::policy::plan(cfg, &crate::policy::Runtime::default());
        conntrack_of(
            cfg,
            &planned,
            q,
            Some(7),
            |_| ct,
            |_| syn,
            |service, id| (service == "web" && id == 3).then(|| "eu-2".to_string()),
        )
    }

    #[test]
    fn a_pending_handshake_is_reported_for_flow_affinity_tcp_only() {
        let cfg = Config::parse(CFG).expect("valid config");
        let q = |proto: &str, port: u16| {
            parse_query(proto, "198.51.100.7:40000", &format!("203.0.113.10:{port}"))
                .expect("query")
        };
        let pending = |flags, generation| PendingSyn {
            slot: slot(3, 5),
            real: Some(real(flags, generation)),
        };
        let web = q("tcp", 80);
        assert_eq!(
            live(&cfg, &web, None, Some(pending(REAL_F_PRESENT, 5))),
            Conntrack::HandshakePending {
                backend: "eu-2".into(),
                next: Pending::Follows
            }
        );
        assert_eq!(
            live(
                &cfg,
                &web,
                None,
                Some(pending(REAL_F_PRESENT | REAL_F_DOWN, 5))
            ),
            Conntrack::HandshakePending {
                backend: "eu-2".into(),
                next: Pending::Down
            }
        );
        // A reused id is not named after its new holder.
        assert_eq!(
            live(&cfg, &web, None, Some(pending(REAL_F_PRESENT, 6))),
            Conntrack::HandshakePending {
                backend: "real 3".into(),
                next: Pending::Replaced
            }
        );
        assert_eq!(live(&cfg, &web, None, None), Conntrack::None);
        // A conntrack entry of the current epoch (7 in `live`) wins: the
        // program does not look at RECENT_SYN then.
        let entry = steer_common::CtValue {
            real_id: 3,
            real_generation: 5,
            flags: steer_common::ct_epoch_flags(7),
            ..Default::default()
        };
        assert!(matches!(
            live(&cfg, &web, Some(entry), Some(pending(REAL_F_PRESENT, 5))),
            Conntrack::Entry { ref backend, .. } if backend == "eu-2"
        ));
        // An entry of an older epoch yields to a SYN of its 5-tuple: that
        // SYN skipped it (port reuse), and the next packet follows the SYN.
        let old_entry = steer_common::CtValue {
            flags: steer_common::ct_epoch_flags(5),
            ..entry
        };
        assert_eq!(
            live(
                &cfg,
                &web,
                Some(old_entry),
                Some(pending(REAL_F_PRESENT, 5))
            ),
            Conntrack::HandshakePending {
                backend: "eu-2".into(),
                next: Pending::Follows
            }
        );
        // Without such a SYN the old entry stands.
        assert!(matches!(
            live(&cfg, &web, Some(old_entry), None),
            Conntrack::Entry { ref backend, .. } if backend == "eu-2"
        ));
        // Client affinity and UDP never use RECENT_SYN: a slot with the
        // flow's tag (a collision) is not theirs.
        for other in [q("tcp", 443), q("udp", 53)] {
            assert_eq!(
                live(&cfg, &other, None, Some(pending(REAL_F_PRESENT, 5))),
                Conntrack::None,
                "{other:?}"
            );
        }
    }

    #[test]
    fn pending_handshake_lines() {
        let cfg = Config::parse(CFG).expect("valid config");
        let planned = crate::policy::plan(&cfg, &crate::policy::Runtime::default());
        let q = parse_query("tcp", "198.51.100.7:40000", "203.0.113.10:80").expect("query");
        let line = |next| {
            let e = explain(
                &cfg,
                &planned,
                q,
                Conntrack::HandshakePending {
                    backend: "eu-2".into(),
                    next,
                },
            );
            e.lines.last().cloned().expect("a line")
        };
        assert_eq!(
            line(Pending::Follows),
            "conntrack   handshake pending: the SYN went to eu-2; the flow's next packet \
             follows it (overrides the choice above)"
        );
        assert_eq!(
            line(Pending::Down),
            "conntrack   handshake pending: the SYN went to eu-2, which is down: the flow's \
             next packet is re-selected as above"
        );
        assert_eq!(
            line(Pending::Replaced),
            "conntrack   handshake pending: the SYN went to eu-2, which is gone or replaced \
             (generation changed): the flow's next packet is re-selected as above"
        );
    }
}
