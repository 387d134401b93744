//! `steer status` and the metrics, built from the owner's published
//! snapshot and the counter maps. Nothing here waits for the owner.

use std::collections::BTreeSet;
use std::time::{SystemTime, UNIX_EPOCH};

use steer_common::Counters;

use crate::api::{
    BackendStatus, Health, InterfaceStatus, RegionMeasure, RegionShare, ServiceStatus, ShiftReport,
    StatusReport, TableStatus,
};
use crate::dataplane::CounterReader;
use crate::health;
use steer_policy::shift::{Shift, State as ShiftState};

use super::owner::Published;

/// A status report with the data-plane-wide counters.
pub struct Status {
    pub report: StatusReport,
    /// Drops by reason name.
    pub drops: Vec<(&'static str, u64)>,
    /// New flows whose conntrack insert failed.
    pub ct_insert_failures: u64,
}

/// Builds the status report. Counters are read through `counters` (none:
/// all zero, e.g. in tests without a data plane).
pub fn report(p: &Published, counters: Option<&CounterReader>) -> Status {
    report_at(p, counters, SystemTime::now())
}

/// Seconds since the Unix epoch (0 for a time before it).
fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// [`report`] as of `now`.
pub fn report_at(p: &Published, counters: Option<&CounterReader>, now: SystemTime) -> Status {
    let cfg = &p.cfg;
    let checked: BTreeSet<String> = health::targets_from_config(cfg)
        .into_iter()
        .map(|t| health::backend_of_key(&t.key).to_string())
        .collect();
    let read = |f: &dyn Fn(&CounterReader) -> Option<Counters>| -> Counters {
        counters.and_then(f).unwrap_or_default()
    };
    let hashes = p.planned.hashes();
    let ramps = p.passive.ramps(cfg, super::owner::unix_ms(now));
    let services = cfg
        .services
        .iter()
        .map(|svc| {
            let ids = p.ledger.services.get(&svc.name);
            let total = read(&|c| ids.and_then(|i| c.service(i.vip_id).ok()));
            let proto = svc.protocol.as_str();
            let vip = match svc.vip {
                std::net::IpAddr::V6(a) => format!("[{a}]:{}/{proto}", svc.port),
                a => format!("{a}:{}/{proto}", svc.port),
            };
            ServiceStatus {
                name: svc.name.clone(),
                vip,
                affinity: crate::api::protocol::affinity(svc.affinity),
                packets: total.packets,
                bytes: total.bytes,
                new_flows: total.new_flows,
                backends: cfg
                    .service_backends(svc)
                    .iter()
                    .map(|b| {
                        let real_id = ids.and_then(|i| i.reals.get(&b.name)).copied();
                        let c = read(&|c| real_id.and_then(|id| c.real(id).ok()));
                        let passive = counters
                            .zip(real_id)
                            .and_then(|(c, id)| c.passive(id).ok())
                            .unwrap_or_default();
                        // A region drain past its timeout programs the
                        // region's backends down; that is not their health.
                        let is_down =
                            p.down.contains(&b.name) && !p.drain_moved.contains(&b.region);
                        let degraded = health::backend_degraded(&p.health, &b.name);
                        let health = if !checked.contains(&b.name) {
                            Health::Unchecked
                        } else if is_down {
                            Health::Down
                        } else if degraded {
                            Health::Degraded
                        } else {
                            Health::Up
                        };
                        let is_drained =
                            p.drained.contains(&b.name) || p.drained_regions.contains(&b.region);
                        let tr = p.transitions.get(&b.name).copied().unwrap_or_default();
                        let outlier = p
                            .passive
                            .outliers
                            .get(&svc.name)
                            .and_then(|o| o.backends.get(&b.name));
                        let ejected_until = outlier.and_then(|o| o.ejected_until);
                        let ramp = ramps.get(&svc.name).and_then(|r| r.get(&b.name)).copied();
                        BackendStatus {
                            name: b.name.clone(),
                            address: b.address.to_string(),
                            region: b.region.clone(),
                            weight: b.weight,
                            effective_weight: match ramp {
                                _ if is_down || is_drained || ejected_until.is_some() => 0,
                                Some((k, n)) => b.weight * k / n.max(1),
                                None => b.weight,
                            },
                            health,
                            drained: is_drained,
                            last_failure: health::backend_targets(&p.health, &b.name)
                                .find_map(|s| s.last_failure.clone()),
                            last_up_at: tr.last_up.map(unix),
                            last_down_at: tr.last_down.map(unix),
                            packets: c.packets,
                            bytes: c.bytes,
                            new_flows: c.new_flows,
                            repeated_syns: passive.repeated_syns,
                            handshakes: passive.handshakes,
                            ejected: ejected_until.is_some(),
                            ejected_until,
                            ejections: outlier.map_or(0, |o| o.ejections),
                            slow_start_percent: ramp
                                .map(|(k, n)| f64::from(k) * 100.0 / f64::from(n.max(1))),
                        }
                    })
                    .collect(),
                policy: svc.policy.kind().as_str().to_string(),
                content_hash: hashes
                    .get(&svc.name)
                    .map(|h| format!("{h:016x}"))
                    .unwrap_or_default(),
                tables: p
                    .planned
                    .service(&svc.name)
                    .map(|(_, plan)| plan.tables.iter().filter_map(table_status).collect())
                    .unwrap_or_default(),
                ejection_capped: p
                    .planned
                    .service(&svc.name)
                    .map(|(_, plan)| plan.ejection_capped.clone())
                    .unwrap_or_default(),
                shift: p
                    .shifts
                    .get(&svc.name)
                    .map(|s| shift_report(s, super::owner::unix_ms(now))),
            }
        })
        .collect();
    let regions = cfg
        .regions
        .iter()
        .map(|r| RegionMeasure {
            name: r.name.clone(),
            rtt_ms: p
                .measured
                .rtt
                .get(&r.name)
                .map(|d| d.as_secs_f64() * 1000.0),
            new_flows_per_second: p.measured.rate.get(&r.name).copied(),
            capacity: r
                .max_new_flows_per_second
                .map(|m| f64::from(m) * r.capacity_scaler.get()),
            keep: p.measured.keep.get(&r.name).copied().unwrap_or(1.0),
        })
        .collect();
    let drops: Vec<(&str, u64)> = counters
        .and_then(|c| c.drops().ok())
        .map(|d| {
            steer_common::DropReason::ALL
                .iter()
                .map(|r| (r.name(), d[*r as usize]))
                .collect()
        })
        .unwrap_or_default();
    let paths = counters.and_then(|c| c.paths().ok());
    let ct_insert_failures = paths
        .map(|p| p[steer_common::Branch::CtInsertFailed as usize])
        .unwrap_or_default();
    let pmtu_replies = paths
        .map(|p| p[steer_common::Branch::PmtuReply as usize])
        .unwrap_or_default();
    Status {
        report: StatusReport {
            generation: p.generation,
            config_path: p.config_path.display().to_string(),
            reloads: p.reloads,
            reload_failures: p.reload_failures,
            last_reload_error: p.last_reload_error.clone(),
            services,
            version: env!("CARGO_PKG_VERSION").to_string(),
            time: unix(now),
            uptime_seconds: now.duration_since(p.started).map_or(0, |d| d.as_secs()),
            interfaces: p
                .interfaces
                .iter()
                .map(|i| InterfaceStatus {
                    name: i.name.clone(),
                    mode: i.mode.clone(),
                    adopted: i.adopted,
                })
                .collect(),
            drops: drops.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
            ct_insert_failures,
            pmtu_replies,
            drained_regions: p.drained_regions.iter().cloned().collect(),
            regions,
        },
        drops,
        ct_insert_failures,
    }
}

/// A shift as `steer status` shows it, as of `now_ms` (Unix ms).
pub fn shift_report(s: &Shift, now_ms: u64) -> ShiftReport {
    let (stage, state, reason) = match &s.state {
        ShiftState::Running { stage, .. } => (*stage, "running", None),
        ShiftState::Paused { stage, .. } => (*stage, "paused", None),
        ShiftState::Completed { .. } => (s.plan.stages.len().saturating_sub(1), "completed", None),
        ShiftState::RolledBack { stage, reason, .. } => {
            (*stage, "rolled_back", Some(reason.to_string()))
        }
        ShiftState::Aborted { stage, .. } => (*stage, "aborted", None),
    };
    ShiftReport {
        from: s.plan.from.clone(),
        to: s.plan.to.clone(),
        stages: s.plan.stages.clone(),
        stage: stage + 1,
        percent: s.percent(),
        state: state.to_string(),
        hold_ms: s.plan.hold_ms,
        next_stage_in_ms: s.time_to_next_stage(now_ms),
        reason,
        started_at: s.started / 1000,
        description: s.describe(),
        rollback_if: rollback_conditions(&s.plan.rollback),
    }
}

/// A shift's rollback conditions in `--rollback-if`'s words.
fn rollback_conditions(t: &steer_policy::shift::Triggers) -> Vec<String> {
    let mut out = Vec::new();
    if let Some(f) = t.min_healthy_fraction {
        out.push(format!("healthy<{f}"));
    }
    if let Some(r) = t.max_failure_ratio {
        out.push(format!(
            "repeated-syn>{}% (over >= {} new flows in {})",
            r * 100.0,
            t.failure_min_flows,
            steer_config::format_duration(std::time::Duration::from_millis(t.signal_window_ms()))
        ));
    }
    if t.over_capacity {
        out.push("over-capacity".to_string());
    }
    if let Some(u) = &t.analysis_url {
        out.push(format!("analysis={u}"));
    }
    out
}

/// How a table was decided, for status (`None` for a plain Maglev table).
fn table_status(t: &crate::policy::TablePlan) -> Option<TableStatus> {
    let e = t.engine.as_ref()?;
    let d = &e.decision;
    let name = |i: usize| e.input.regions[i].name.clone();
    Some(TableStatus {
        class: t.class_name.clone(),
        order: d.order.iter().map(|&i| name(i)).collect(),
        outcome: d.outcome.as_str().to_string(),
        allowed_regions: d
            .allowed
            .as_ref()
            .map(|a| a.iter().map(|&i| name(i)).collect()),
        regions: d
            .regions
            .iter()
            .map(|r| RegionShare {
                name: name(r.region),
                healthy: r.healthy_fraction,
                load: r.load,
                dial: r.dial,
                keep: r.capacity_keep,
                share: r.share,
                panic: r.panic,
            })
            .collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use std::collections::BTreeMap;
    use std::path::PathBuf;
    use std::sync::Arc;
    use std::time::Duration;

    use super::super::owner::{Interface, State, Transitions};

    const CFG: &str = include_str!("testdata/two_backends.toml");

    /// A snapshot of the daemon's state with the config of `CFG`.
    fn published(started: SystemTime, ledger: crate::dataplane::Ledger) -> Published {
        Published {
            state: State {
                config_path: PathBuf::from("/etc/steer/steer.toml"),
                cfg: Arc::new(Config::parse(CFG).unwrap()),
                health: BTreeMap::new(),
                drained: BTreeSet::new(),
                drained_regions: BTreeSet::new(),
                region_drain_deadlines: Default::default(),
                passive: Default::default(),
                analysis: Default::default(),
                shifts: Default::default(),
                drain_moved: BTreeSet::new(),
                planned: Arc::default(),
                measured: Default::default(),
                down: BTreeSet::new(),
                generation: 1,
                reloads: 0,
                reload_failures: 0,
                last_reload_error: None,
                last_reload: None,
                last_load: started,
                programmed: 1,
                started,
                transitions: BTreeMap::new(),
                interfaces: vec![Interface {
                    name: "eth0".into(),
                    mode: "skb".into(),
                    adopted: true,
                }],
            },
            ledger,
        }
    }

    #[test]
    fn daemon_fields_and_transition_times() {
        let started = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let now = started + Duration::from_secs(3725);
        let down_at = started + Duration::from_secs(3600);
        let mut p = published(started, Default::default());
        p.state.transitions = BTreeMap::from([(
            "b2".to_string(),
            Transitions {
                last_up: None,
                last_down: Some(down_at),
            },
        )]);
        let r = report_at(&p, None, now).report;
        assert_eq!(r.version, env!("CARGO_PKG_VERSION"));
        assert_eq!(r.time, 1_700_003_725);
        assert_eq!(r.uptime_seconds, 3725);
        assert_eq!(
            r.interfaces,
            [InterfaceStatus {
                name: "eth0".into(),
                mode: "skb".into(),
                adopted: true,
            }]
        );
        let b = &r.services[0].backends;
        assert_eq!((b[0].name.as_str(), b[0].last_down_at), ("b1", None));
        assert_eq!(
            (b[1].name.as_str(), b[1].last_up_at, b[1].last_down_at),
            ("b2", None, Some(1_700_003_600))
        );
    }

    /// A client-side TCP segment to the VIP of `CFG` (203.0.113.10:80).
    fn segment(syn: bool) -> Vec<u8> {
        let b = etherparse::PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
            .ipv4([198, 51, 100, 7], [203, 0, 113, 10], 64)
            .tcp(40000, 80, 1, 1024);
        let b = if syn { b.syn() } else { b.ack(1) };
        let mut v = Vec::new();
        b.write(&mut v, &[]).unwrap();
        v
    }

    #[test]
    #[ignore = "needs root: loads the XDP program"]
    fn backends_show_their_passive_counters() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            assert_ne!(std::env::var("CI").as_deref(), Ok("true"), "needs root");
            eprintln!("SKIP: not root, cannot load BPF programs");
            return;
        }
        use crate::dataplane::{Dataplane, Verdict};
        use crate::policy::ApplyConfig as _;
        // A source MAC, or BPF_PROG_TEST_RUN (on loopback) drops every
        // frame as `no_source_mac`.
        let text = CFG.replace(
            "[dataplane]\n",
            "[dataplane]\nsource_mac = \"02:00:00:00:00:5e\"\n",
        );
        assert_ne!(text, CFG);
        let cfg = Config::parse(&text).unwrap();
        let mut dp = Dataplane::load(&cfg.dataplane).unwrap();
        dp.apply(&cfg, &BTreeSet::new()).unwrap();
        // A SYN, the same SYN again (the first went unanswered), the ACK:
        // one repeated SYN and one handshake, both on the flow's backend
        // (the table does not change in between, so both SYNs pick it).
        for syn in [true, true, false] {
            assert_eq!(dp.run(&segment(syn)).unwrap().verdict, Verdict::Tx);
        }
        let reader = dp.counter_reader().unwrap();
        let p = published(SystemTime::now(), dp.ledger());
        let r = report(&p, Some(&reader)).report;
        let backends = &r.services[0].backends;
        assert_eq!(backends.len(), 2);
        let (took, other): (Vec<_>, Vec<_>) = backends.iter().partition(|b| b.packets > 0);
        assert_eq!(took.len(), 1, "one backend has the flow: {backends:?}");
        let (took, other) = (took[0], other[0]);
        assert_eq!(took.packets, 3);
        assert_eq!((took.repeated_syns, took.handshakes), (1, 1), "{took:?}");
        assert_eq!((other.repeated_syns, other.handshakes), (0, 0), "{other:?}");
        // And the metrics carry the same numbers.
        let snap = crate::api::MetricsSnapshot {
            report: r.clone(),
            ..Default::default()
        };
        let text = crate::api::render_metrics(Arc::new(snap));
        let line = format!(
            "steer_backend_repeated_syns_total{{service=\"web\",backend=\"{}\",region=\"eu\"}} 1",
            took.name
        );
        assert!(text.lines().any(|l| l == line), "{line} missing:\n{text}");
    }
}
