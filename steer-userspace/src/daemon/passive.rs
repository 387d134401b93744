//! Passive health in the daemon: outlier ejection from the data plane's
//! repeated-SYN counters, and slow start of backends that come up. The
//! rules are `steer_policy::{outlier, slowstart}`; this module feeds them
//! the config, the health view and the counters at every owner tick, and
//! turns their state into the policy's runtime inputs
//! ([`crate::policy::Runtime::ejected`] and `ramps`).

use std::collections::{BTreeMap, BTreeSet};

use steer_policy::outlier::{Observation, OutlierConfig, OutlierEvent, Outliers};
use steer_policy::slowstart::{SlowStart, SlowStartConfig};
use tracing::{info, warn};

use crate::config::{Config, OutlierTuning, Service, SlowStartTuning};
use crate::health::{self, TargetStatus};

/// Slow start's steps per ramp: the tables change at most this often.
pub const SLOW_START_STEPS: u32 = 10;

/// The outlier rules of a service's config.
pub fn outlier_config(t: &OutlierTuning) -> OutlierConfig {
    let ms = |d: std::time::Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
    OutlierConfig {
        window_ms: ms(t.interval),
        max_repeated_syn_ratio: f64::from(t.repeated_syn_percent) / 100.0,
        min_new_flows: u64::from(t.min_new_flows),
        base_ejection_ms: ms(t.base_ejection_time),
        max_ejection_ms: ms(t.max_ejection_time),
        max_ejection_percent: t.max_ejection_percent,
    }
}

/// The slow start rules of a service's config; `None` when it is off.
pub fn slow_start_config(t: &SlowStartTuning) -> Option<SlowStartConfig> {
    (!t.window.is_zero()).then(|| SlowStartConfig {
        window_ms: u64::try_from(t.window.as_millis()).unwrap_or(u64::MAX),
        min_weight_percent: t.min_weight_percent,
        steps: SLOW_START_STEPS,
    })
}

/// Per service: its outlier state and its slow start ramps.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Passive {
    /// Services with outlier detection on.
    pub outliers: BTreeMap<String, Outliers>,
    /// Services with slow start on (ramps under way, possibly none).
    pub slow_start: BTreeMap<String, SlowStart>,
    /// Per service, the backends reported as capped outliers at the last
    /// evaluation (logged when the set changes, not at every tick).
    capped: BTreeMap<String, BTreeSet<String>>,
    /// The ramps at the last tick, to tell when a step changes.
    last_ramps: BTreeMap<String, BTreeMap<String, (u32, u32)>>,
}

/// Reads a backend's cumulative `(new flows, repeated SYNs)` in a service.
pub type CounterFn<'a> = dyn Fn(&str, &str) -> Option<(u64, u64)> + 'a;

impl Passive {
    /// Forgets the services (and their state) that `cfg` no longer has
    /// or that turned the feature off.
    pub fn retain(&mut self, cfg: &Config) {
        self.outliers.retain(|s, _| {
            cfg.service(s)
                .is_some_and(|svc: &Service| svc.outlier.is_some())
        });
        self.slow_start.retain(|s, _| {
            cfg.service(s)
                .is_some_and(|svc| slow_start_config(&svc.slow_start).is_some())
        });
        self.capped.retain(|s, _| self.outliers.contains_key(s));
    }

    /// One evaluation: every service with outlier detection reads its
    /// backends' counters through `counters`; ejections end, begin or are
    /// capped; ended ejections start a slow start; finished ramps are
    /// forgotten. Returns whether the ejected set or a ramp step changed
    /// (the tables must be recomposed).
    pub fn tick(
        &mut self,
        cfg: &Config,
        health: &BTreeMap<String, TargetStatus>,
        counters: &CounterFn<'_>,
        now: u64,
    ) -> bool {
        self.retain(cfg);
        let mut changed = false;
        for svc in &cfg.services {
            let Some(tuning) = &svc.outlier else {
                continue;
            };
            let ocfg = outlier_config(tuning);
            let backends = cfg.service_backends(svc);
            let counts: Vec<(String, u64, u64, bool)> = backends
                .iter()
                .filter_map(|b| {
                    let (n, r) = counters(&svc.name, &b.name)?;
                    Some((b.name.clone(), n, r, !health::backend_up(health, &b.name)))
                })
                .collect();
            let obs: Vec<Observation<'_>> = counts
                .iter()
                .map(|(b, n, r, down)| Observation {
                    backend: b,
                    new_flows: *n,
                    repeated_syns: *r,
                    down: *down,
                })
                .collect();
            let o = self.outliers.entry(svc.name.clone()).or_default();
            let events = o.evaluate(&ocfg, now, &obs);
            let mut capped = BTreeSet::new();
            for ev in events {
                match &ev {
                    OutlierEvent::Ejected { backend, .. } => {
                        changed = true;
                        warn!(service = %svc.name, backend = %backend, "backend ejected: {ev}");
                        if let Some(ss) = self.slow_start.get_mut(&svc.name) {
                            ss.end(backend);
                        }
                    }
                    OutlierEvent::Returned { backend, .. } => {
                        changed = true;
                        info!(service = %svc.name, backend = %backend, "backend returned from ejection: {ev}");
                        self.came_up(cfg, &svc.name, backend, now);
                    }
                    OutlierEvent::Capped { backend, .. } => {
                        if !self
                            .capped
                            .get(&svc.name)
                            .is_some_and(|c| c.contains(backend))
                        {
                            warn!(service = %svc.name, backend = %backend, "outlier not ejected: {ev}");
                        }
                        capped.insert(backend.clone());
                    }
                }
            }
            self.capped.insert(svc.name.clone(), capped);
        }
        for svc in &cfg.services {
            if let (Some(c), Some(ss)) = (
                slow_start_config(&svc.slow_start),
                self.slow_start.get_mut(&svc.name),
            ) {
                for b in ss.expire(&c, now) {
                    info!(service = %svc.name, backend = %b, "slow start over: full weight");
                }
            }
        }
        let ramps = self.ramps(cfg, now);
        let stepped = ramps != self.last_ramps;
        self.last_ramps = ramps;
        changed || stepped
    }

    /// `backend` of `service` came up (health, ejection end, undrain):
    /// its slow start begins if the service has one.
    pub fn came_up(&mut self, cfg: &Config, service: &str, backend: &str, now: u64) {
        let Some(svc) = cfg.service(service) else {
            return;
        };
        if slow_start_config(&svc.slow_start).is_none() {
            return;
        }
        let ss = self.slow_start.entry(service.to_string()).or_default();
        ss.begin(backend, now);
        info!(service, backend, window = %steer_config::format_duration(svc.slow_start.window), "slow start begins");
    }

    /// `backend` came up in every service that has it.
    pub fn backend_came_up(&mut self, cfg: &Config, backend: &str, now: u64) {
        for svc in &cfg.services {
            if cfg.service_backends(svc).iter().any(|b| b.name == backend) {
                self.came_up(cfg, &svc.name, backend, now);
            }
        }
    }

    /// `backend` went down: its ramps end (its next come-up ramps anew).
    pub fn backend_went_down(&mut self, backend: &str) {
        for ss in self.slow_start.values_mut() {
            ss.end(backend);
        }
    }

    /// Per service, its ejected backends.
    pub fn ejected(&self) -> BTreeMap<String, BTreeSet<String>> {
        self.outliers
            .iter()
            .map(|(s, o)| {
                (
                    s.clone(),
                    o.ejected().into_iter().map(str::to_string).collect(),
                )
            })
            .filter(|(_, e): &(String, BTreeSet<String>)| !e.is_empty())
            .collect()
    }

    /// Per service, its ramping backends at `now`: `(step, steps)`.
    pub fn ramps(&self, cfg: &Config, now: u64) -> BTreeMap<String, BTreeMap<String, (u32, u32)>> {
        self.slow_start
            .iter()
            .filter_map(|(s, ss)| {
                let c = slow_start_config(&cfg.service(s)?.slow_start)?;
                let m: BTreeMap<String, (u32, u32)> = ss
                    .ramping
                    .keys()
                    .map(|b| (b.clone(), (ss.step(&c, b, now), c.steps)))
                    .filter(|(_, (k, n))| k < n)
                    .collect();
                (!m.is_empty()).then(|| (s.clone(), m))
            })
            .collect()
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
name = "eu"

[[backends]]
name = "a"
address = "192.0.2.1"
region = "eu"
[[backends]]
name = "b"
address = "192.0.2.2"
region = "eu"
[[backends]]
name = "c"
address = "192.0.2.3"
region = "eu"

[[services]]
name = "web"
vip = "203.0.113.10"
port = 80
protocol = "tcp"
regions = ["eu"]
outlier_detection = true
outlier_interval = "5s"
outlier_repeated_syn_percent = 30
outlier_min_new_flows = 10
outlier_base_ejection_time = "8s"
max_ejection_percent = 50
slow_start_window = "10s"
"#;

    /// Cumulative counters per backend, set by the test.
    fn counters<'a>(
        m: &'a BTreeMap<&'static str, (u64, u64)>,
    ) -> impl Fn(&str, &str) -> Option<(u64, u64)> + 'a {
        move |_s: &str, b: &str| m.get(b).copied()
    }

    #[test]
    fn a_black_holing_backend_is_ejected_returns_and_ramps() {
        let cfg = Config::parse(CFG).expect("valid");
        let health = BTreeMap::new();
        let mut p = Passive::default();
        let t0 = 1_000_000u64;
        let mut m = BTreeMap::from([("a", (0, 0)), ("b", (0, 0)), ("c", (0, 0))]);
        assert!(!p.tick(&cfg, &health, &counters(&m), t0));
        // Over 2 s: a gets 40 new flows of which 20 repeated SYNs (50 %,
        // above 30 %, over at least 10 flows); b and c 40 each, none
        // repeated.
        m.insert("a", (40, 20));
        m.insert("b", (40, 0));
        m.insert("c", (40, 0));
        assert!(p.tick(&cfg, &health, &counters(&m), t0 + 2_000));
        assert_eq!(
            p.ejected(),
            BTreeMap::from([("web".to_string(), BTreeSet::from(["a".to_string()]))])
        );
        // The ejection lasts the base time (8 s): still out at +9.9 s.
        assert!(!p.tick(&cfg, &health, &counters(&m), t0 + 9_900));
        assert!(p.ejected().contains_key("web"));
        // Back at +10 s, and ramping from 10 % (step 1 of 10).
        assert!(p.tick(&cfg, &health, &counters(&m), t0 + 10_000));
        assert!(p.ejected().is_empty());
        assert_eq!(
            p.ramps(&cfg, t0 + 10_000)["web"]["a"],
            (1, SLOW_START_STEPS)
        );
        // Half-way through the 10 s window: step 5.
        assert!(p.tick(&cfg, &health, &counters(&m), t0 + 15_000));
        assert_eq!(p.ramps(&cfg, t0 + 15_000)["web"]["a"], (5, 10));
        // After the window: no ramp.
        assert!(p.tick(&cfg, &health, &counters(&m), t0 + 20_000));
        assert!(p.ramps(&cfg, t0 + 20_000).is_empty());
        assert!(!p.tick(&cfg, &health, &counters(&m), t0 + 20_500));
    }

    #[test]
    fn the_cap_keeps_all_but_one_of_three_in_service() {
        // max_ejection_percent = 50 of 3 backends: 1 may be out.
        let cfg = Config::parse(CFG).expect("valid");
        let health = BTreeMap::new();
        let mut p = Passive::default();
        let t0 = 5_000_000u64;
        let mut m = BTreeMap::from([("a", (0, 0)), ("b", (0, 0)), ("c", (0, 0))]);
        p.tick(&cfg, &health, &counters(&m), t0);
        m.insert("a", (40, 30));
        m.insert("b", (40, 20));
        m.insert("c", (40, 0));
        assert!(p.tick(&cfg, &health, &counters(&m), t0 + 1_000));
        // The worst ratio (a, 75 %) goes; b (50 %) stays: capped.
        assert_eq!(p.ejected()["web"], BTreeSet::from(["a".to_string()]));
        assert_eq!(p.capped["web"], BTreeSet::from(["b".to_string()]));
    }

    #[test]
    fn a_service_without_the_features_has_no_state() {
        let cfg = Config::parse(
            &CFG.replace("outlier_detection = true\n", "")
                .replace("outlier_interval = \"5s\"\n", "")
                .replace("outlier_repeated_syn_percent = 30\n", "")
                .replace("outlier_min_new_flows = 10\n", "")
                .replace("outlier_base_ejection_time = \"8s\"\n", "")
                .replace("slow_start_window = \"10s\"\n", ""),
        )
        .expect("valid");
        let mut p = Passive::default();
        let m = BTreeMap::from([("a", (100, 100))]);
        assert!(!p.tick(&cfg, &BTreeMap::new(), &counters(&m), 1));
        p.backend_came_up(&cfg, "a", 1);
        assert!(p.outliers.is_empty() && p.slow_start.is_empty());
        assert!(p.ramps(&cfg, 2).is_empty());
    }
}
