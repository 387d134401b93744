//! Slow start: a backend that comes up ramps its weight for new flows over
//! a window instead of taking its full share at once.
//!
//! # Semantics
//!
//! Modelled on Envoy's `slow_start_config` (`slow_start_window`,
//! `min_weight_percent` default 10 %, `aggression` 1.0 = linear), whose
//! weight is `weight × max(min_weight_percent, time_factor ^ (1 /
//! aggression))` with `time_factor = t / window`:
//!
//! - A ramp begins when a backend **comes up**: its health check turns it
//!   healthy, its outlier ejection ends, or it is undrained (weight 0 to
//!   more). The caller calls [`SlowStart::begin`] at that moment; a backend
//!   that goes down again mid-ramp should be [`SlowStart::end`]ed, so its
//!   next come-up ramps from the start.
//! - The ramp is linear (Envoy's aggression 1.0) and **quantised** into
//!   [`SlowStartConfig::steps`] steps (default 10): after `t` of a window
//!   `w`, the backend's factor is `max(min, floor(t × steps / w)) / steps`,
//!   where `min` is `min_weight_percent` in steps (rounded up, at least one
//!   step). So the selection tables change at most `steps` times per ramp,
//!   not at every tick; [`SlowStart::next_change`] says when the next
//!   change is due. Quantising down means the ramp lags Envoy's by at most
//!   one step.
//! - Once `t >= w` the backend has its full weight and the ramp is over
//!   ([`SlowStart::expire`] forgets it).
//!
//! # Where it applies
//!
//! Only to the backend choice inside a region: [`SlowStart::ramped`] gives
//! the [`ServiceIn`] to pass to [`crate::compose`], while [`crate::decide`]
//! keeps the original one. A ramping backend counts fully in its region's
//! health (as in Envoy, where slow start changes load-balancing weights,
//! not priority health), so a recovering region does not spill more
//! traffic because its backends are ramping.
//!
//! `ramped` multiplies every weight of the service by `steps` and a
//! ramping backend's by its current step instead: Maglev weights are
//! relative, so the tables of a service with no ramping backend are
//! unchanged, and a ramping backend gets `step / steps` of its weight.
//! Like every weight change, a step moves some new-flow slots; established
//! flows stay on their backends (conntrack).
//!
//! The state is serde-serializable (times are wall-clock Unix
//! milliseconds), so a ramp survives a daemon restart.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::model::ServiceIn;
use crate::shift::UnixMillis;

/// Slow start tuning of one service.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlowStartConfig {
    /// The ramp's length; 0 disables slow start.
    pub window_ms: u64,
    /// The weight a backend starts with, in percent of its weight (Envoy's
    /// `min_weight_percent`, default 10).
    pub min_weight_percent: u8,
    /// How many steps the ramp has (default 10); tables change at most
    /// this many times per ramp.
    pub steps: u32,
}

impl Default for SlowStartConfig {
    fn default() -> Self {
        SlowStartConfig {
            window_ms: 30_000,
            min_weight_percent: 10,
            steps: 10,
        }
    }
}

impl SlowStartConfig {
    /// The first step: `min_weight_percent` in steps, rounded up, at least
    /// one (a ramping backend is never weight 0, which would drain it).
    pub fn min_step(&self) -> u32 {
        let steps = self.steps.max(1);
        (u32::from(self.min_weight_percent.min(100)) * steps)
            .div_ceil(100)
            .clamp(1, steps)
    }
}

/// The backends of one service that are ramping up, by name, with the
/// time their ramp began.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlowStart {
    pub ramping: BTreeMap<String, UnixMillis>,
}

impl SlowStart {
    /// `backend` came up at `now`: its ramp (re)starts.
    pub fn begin(&mut self, backend: &str, now: UnixMillis) {
        self.ramping.insert(backend.to_string(), now);
    }

    /// `backend` went down (or was removed): no ramp until it comes up.
    pub fn end(&mut self, backend: &str) {
        self.ramping.remove(backend);
    }

    /// The backend's step at `now`, `min_step..=steps`; `steps` (full
    /// weight) when it is not ramping or slow start is disabled.
    pub fn step(&self, cfg: &SlowStartConfig, backend: &str, now: UnixMillis) -> u32 {
        let steps = cfg.steps.max(1);
        match self.ramping.get(backend) {
            Some(&began) if cfg.window_ms > 0 => {
                let raw = u128::from(now.saturating_sub(began)) * u128::from(steps)
                    / u128::from(cfg.window_ms);
                (raw.min(u128::from(steps)) as u32).max(cfg.min_step())
            }
            _ => steps,
        }
    }

    /// The backend's weight factor at `now`, in (0, 1].
    pub fn factor(&self, cfg: &SlowStartConfig, backend: &str, now: UnixMillis) -> f64 {
        f64::from(self.step(cfg, backend, now)) / f64::from(cfg.steps.max(1))
    }

    /// Forgets the ramps that are over at `now`; returns their backends.
    pub fn expire(&mut self, cfg: &SlowStartConfig, now: UnixMillis) -> Vec<String> {
        let steps = cfg.steps.max(1);
        let done: Vec<String> = self
            .ramping
            .keys()
            .filter(|b| self.step(cfg, b, now) >= steps)
            .cloned()
            .collect();
        for b in &done {
            self.ramping.remove(b);
        }
        done
    }

    /// The earliest time after `now` at which some backend's step changes
    /// (when the tables must be recomposed), if any backend is ramping.
    pub fn next_change(&self, cfg: &SlowStartConfig, now: UnixMillis) -> Option<UnixMillis> {
        if cfg.window_ms == 0 {
            return None;
        }
        let steps = u128::from(cfg.steps.max(1));
        let w = u128::from(cfg.window_ms);
        self.ramping
            .iter()
            .filter_map(|(b, &began)| {
                let next = u128::from(self.step(cfg, b, now)) + 1;
                // The first time `floor(t × steps / w)` reaches `next`.
                (next <= steps).then(|| {
                    let t = (next * w).div_ceil(steps);
                    began.saturating_add(u64::try_from(t).unwrap_or(u64::MAX))
                })
            })
            .min()
    }

    /// `svc` with ramped weights, for [`crate::compose`] (not for
    /// [`crate::decide`]): every weight times `steps`, a ramping backend's
    /// times its step. Weight 0 (drained) stays 0.
    pub fn ramped(&self, cfg: &SlowStartConfig, svc: &ServiceIn, now: UnixMillis) -> ServiceIn {
        let mut out = svc.clone();
        for b in out.regions.iter_mut().flat_map(|r| r.backends.iter_mut()) {
            let k = self.step(cfg, &b.name, now);
            b.weight = b.weight.saturating_mul(k);
        }
        out
    }
}
