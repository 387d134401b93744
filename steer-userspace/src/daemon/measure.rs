//! The measurements region policies use, taken on the owner's timer:
//! round-trip times per region (from the health probes) with the latency
//! ranking's hysteresis, and new-flow rates per region (from the data
//! plane's counters) with the capacity controller.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use steer_policy::capacity::Controller;
use steer_policy::latency::{Ranking, Tuning};
use tracing::info;

use crate::config::{Config, Policy};
use crate::health::TargetStatus;

/// How often the owner measures (and may re-program).
pub const TICK: Duration = Duration::from_millis(500);

/// What the measurements currently say, as the policy reads it.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Measured {
    /// Per region: the median smoothed probe time of its healthy
    /// backends that have one.
    pub rtt: BTreeMap<String, Duration>,
    /// Per region: new flows per second that landed there (all services).
    pub rate: BTreeMap<String, f64>,
    /// Per latency service: its regions in the order in force.
    pub ranked: BTreeMap<String, Vec<String>>,
    /// Per region with a capacity limit: the keep fraction in force.
    pub keep: BTreeMap<String, f64>,
}

/// The state behind [`Measured`] that lives across ticks.
#[derive(Default)]
pub struct Measurer {
    rankings: BTreeMap<String, (Vec<String>, Ranking)>,
    controllers: BTreeMap<String, Controller>,
    last: Option<(Instant, BTreeMap<String, u64>)>,
    pub measured: Measured,
}

/// A backend's smoothed probe time: the largest over its targets (a
/// backend is as slow as its slowest check).
fn backend_rtt(health: &BTreeMap<String, TargetStatus>, name: &str) -> Option<Duration> {
    crate::health::backend_targets(health, name)
        .filter(|s| s.up)
        .filter_map(|s| s.rtt)
        .max()
}

fn median(mut v: Vec<Duration>) -> Option<Duration> {
    if v.is_empty() {
        return None;
    }
    v.sort_unstable();
    Some(v[v.len() / 2])
}

/// Whether any service or region of `cfg` needs measurements.
pub fn needed(cfg: &Config) -> bool {
    cfg.services
        .iter()
        .any(|s| matches!(s.policy, Policy::Latency))
        || cfg
            .regions
            .iter()
            .any(|r| r.max_new_flows_per_second.is_some())
}

impl Measurer {
    /// Takes one measurement. `new_flows` gives, per region, the new flows
    /// counted so far. Returns whether what the policy reads changed.
    pub fn tick(
        &mut self,
        cfg: &Config,
        health: &BTreeMap<String, TargetStatus>,
        new_flows: BTreeMap<String, u64>,
        now: Instant,
    ) -> bool {
        let before = self.measured.clone();
        // Round-trip times per region.
        self.measured.rtt = cfg
            .regions
            .iter()
            .filter_map(|r| {
                let v: Vec<Duration> = cfg
                    .backends
                    .iter()
                    .filter(|b| b.region == r.name)
                    .filter_map(|b| backend_rtt(health, &b.name))
                    .collect();
                median(v).map(|m| (r.name.clone(), m))
            })
            .collect();
        // Latency rankings, with hysteresis and dwell.
        let mut ranked = BTreeMap::new();
        for s in cfg
            .services
            .iter()
            .filter(|s| matches!(s.policy, Policy::Latency))
        {
            let names: Vec<String> = cfg
                .service_regions(s)
                .into_iter()
                .map(str::to_string)
                .collect();
            let tuning = Tuning {
                margin_percent: s.latency.margin_percent,
                margin_min: s.latency.margin_min,
                dwell: s.latency.dwell,
            };
            let entry = self.rankings.entry(s.name.clone()).or_insert_with(|| {
                (
                    names.clone(),
                    Ranking::new((0..names.len()).collect(), tuning),
                )
            });
            if entry.0 != names {
                // The service's regions changed (reload): start over.
                *entry = (
                    names.clone(),
                    Ranking::new((0..names.len()).collect(), tuning),
                );
            }
            let rtts: Vec<(usize, Option<Duration>)> = names
                .iter()
                .enumerate()
                .map(|(i, n)| (i, self.measured.rtt.get(n).copied()))
                .collect();
            if entry.1.update(&rtts, now) {
                let order: Vec<&str> = entry.1.order().iter().map(|&i| names[i].as_str()).collect();
                info!(service = %s.name, order = %order.join(","), "latency ranking changed");
            }
            ranked.insert(
                s.name.clone(),
                entry.1.order().iter().map(|&i| names[i].clone()).collect(),
            );
        }
        self.rankings.retain(|k, _| ranked.contains_key(k));
        self.measured.ranked = ranked;
        // New-flow rates and the capacity controllers.
        let dt = self
            .last
            .as_ref()
            .map(|(t, _)| now.saturating_duration_since(*t));
        let mut rate = BTreeMap::new();
        if let (Some(dt), Some((_, last))) = (dt, &self.last) {
            if !dt.is_zero() {
                for (r, n) in &new_flows {
                    let d = n.saturating_sub(last.get(r).copied().unwrap_or(*n));
                    rate.insert(r.clone(), d as f64 / dt.as_secs_f64());
                }
            }
        }
        let mut keep = BTreeMap::new();
        for r in &cfg.regions {
            let limit = r
                .max_new_flows_per_second
                .map(|m| f64::from(m) * r.capacity_scaler.get());
            let Some(limit) = limit else {
                continue;
            };
            let c = self
                .controllers
                .entry(r.name.clone())
                .or_insert_with(|| Controller::new(Some(limit)));
            c.set_limit(Some(limit));
            if let (Some(dt), Some(landed)) = (dt, rate.get(&r.name)) {
                let old = c.keep();
                let k = c.update(*landed, dt);
                if (k - old).abs() > f64::EPSILON {
                    info!(region = %r.name, keep = k, landed = *landed, limit, "capacity keep changed");
                }
            }
            keep.insert(r.name.clone(), c.keep());
        }
        self.controllers.retain(|k, _| keep.contains_key(k));
        self.measured.keep = keep;
        self.measured.rate = rate;
        self.last = Some((now, new_flows));
        self.measured.ranked != before.ranked || self.measured.keep != before.keep
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CFG: &str = r#"
[dataplane]
next_hop_mac = "02:00:00:00:00:fe"
encap_source_v4 = "198.18.0.0/24"

[[regions]]
name = "near"
[[regions]]
name = "far"
max_new_flows_per_second = 100

[[backends]]
name = "n-1"
address = "192.0.2.11"
region = "near"
[[backends]]
name = "f-1"
address = "192.0.2.21"
region = "far"

[[services]]
name = "web"
vip = "203.0.113.10"
port = 80
protocol = "tcp"
regions = ["far", "near"]
policy = "latency"
latency_dwell = "2s"
"#;

    fn st(rtt_ms: u64) -> TargetStatus {
        TargetStatus {
            rtt: Some(Duration::from_millis(rtt_ms)),
            ..TargetStatus::initial()
        }
    }

    #[test]
    fn a_faster_region_moves_ahead_after_the_dwell_and_capacity_keeps_track() {
        let cfg = Config::parse(CFG).expect("valid");
        let mut m = Measurer::default();
        let t0 = Instant::now();
        let health: BTreeMap<String, TargetStatus> =
            [("n-1".to_string(), st(10)), ("f-1".to_string(), st(80))].into();
        let flows = |far: u64| BTreeMap::from([("far".to_string(), far), ("near".to_string(), 0)]);
        // First tick: the configured order; no rate yet.
        m.tick(&cfg, &health, flows(0), t0);
        assert_eq!(m.measured.ranked["web"], ["far", "near"]);
        assert_eq!(m.measured.rtt["near"], Duration::from_millis(10));
        assert_eq!(m.measured.keep["far"], 1.0);
        // Within the dwell: unchanged.
        m.tick(&cfg, &health, flows(0), t0 + Duration::from_secs(1));
        assert_eq!(m.measured.ranked["web"], ["far", "near"]);
        // After it: near (10 ms) beats far (80 ms) by more than 20% and 5 ms.
        let changed = m.tick(&cfg, &health, flows(0), t0 + Duration::from_millis(2500));
        assert!(changed);
        assert_eq!(m.measured.ranked["web"], ["near", "far"]);
        // 400 flows landed in far over 1 s against a limit of 100/s: the
        // keep falls toward 100/400 = 0.25.
        m.tick(&cfg, &health, flows(400), t0 + Duration::from_millis(3500));
        assert!((m.measured.rate["far"] - 400.0).abs() < 1e-6);
        let k = m.measured.keep["far"];
        assert!((0.25..0.5).contains(&k), "{k}");
    }

    #[test]
    fn a_backend_rtt_comes_from_its_own_targets_only() {
        let health: BTreeMap<String, TargetStatus> = [
            ("a".to_string(), st(10)),
            ("a/http".to_string(), st(30)),
            ("ab".to_string(), st(99)),
        ]
        .into();
        assert_eq!(backend_rtt(&health, "a"), Some(Duration::from_millis(30)));
        assert_eq!(median(vec![]), None);
    }
}
