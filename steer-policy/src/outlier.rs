//! Outlier ejection: a service's backends whose new connections fail, as
//! the data plane sees it, leave new flows for a while.
//!
//! # The signal
//!
//! With direct server return steer sees only the client → VIP direction.
//! A **repeated SYN** (the same 5-tuple's SYN again within a few seconds)
//! means the client's first SYN went unanswered: the backend it was sent to
//! black-holes connections, even if its health endpoint answers. The data
//! plane counts, per backend, new flows and repeated SYNs; the caller
//! passes those **cumulative** counters to [`Outliers::evaluate`] at every
//! tick, and this module keeps, per backend, the samples of the last
//! [`OutlierConfig::window_ms`] and works on their difference (a counter
//! that goes backwards, after a reset, restarts the window).
//!
//! # The rules (Envoy outlier detection, adapted)
//!
//! - **Eject**: a backend whose repeated-SYN ratio over the window is above
//!   [`OutlierConfig::max_repeated_syn_ratio`], over at least
//!   [`OutlierConfig::min_new_flows`] new flows, is ejected from new flows
//!   (like Envoy's `failure_percentage_threshold` with its
//!   `failure_percentage_request_volume`, but per backend and on a TCP
//!   handshake signal). The worst ratio goes first.
//! - **Ejection time** is `base_ejection_ms × n`, capped at
//!   `max_ejection_ms` (Envoy: `base_ejection_time` 30 s × the number of
//!   times ejected, `max_ejection_time` 300 s), where `n` counts the
//!   backend's ejections. `n` drops by one for every `base_ejection_ms` the
//!   backend then spends in service without being ejected (steer's rule:
//!   a backend that failed once long ago starts again from the base time).
//! - **Cap**: at most `max_ejection_percent` of the service's backends are
//!   out at once, counting the ones health checks take out (the cap is
//!   shared with the region policy's `max_ejection_percent`), but, as in
//!   Envoy, one backend may always be ejected when none is out. 0 disables
//!   outlier ejection. A candidate over the cap stays in service and is
//!   reported as [`OutlierEvent::Capped`] at each evaluation.
//! - **Return**: when its ejection time is over, the backend is back at the
//!   next evaluation ([`OutlierEvent::Returned`]); the caller starts its
//!   slow start ([`crate::slowstart`]). Its window starts afresh, so only
//!   flows after its return can eject it again.
//!
//! An ejected backend is, for the policy engine, an unhealthy one
//! ([`Outliers::apply`]): like Envoy's outlier-ejected hosts it counts in
//! its region's health (spill, panic). Its established flows stay.
//!
//! Times are wall-clock Unix milliseconds passed in; the ejection state is
//! serde-serializable (the windows are not: after a restart they refill).

use std::collections::{BTreeMap, VecDeque};

use serde::{Deserialize, Serialize};

use crate::model::ServiceIn;
use crate::shift::UnixMillis;

/// Outlier ejection tuning of one service.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct OutlierConfig {
    /// How far back the counts go (default 10 s, Envoy's `interval`).
    pub window_ms: u64,
    /// Eject above this repeated-SYN ratio, 0..=1 (default 0.3).
    pub max_repeated_syn_ratio: f64,
    /// ...over at least this many new flows in the window (default 20).
    pub min_new_flows: u64,
    /// Default 30 s.
    pub base_ejection_ms: u64,
    /// Default 300 s.
    pub max_ejection_ms: u64,
    /// Default 10.
    pub max_ejection_percent: u8,
}

impl Default for OutlierConfig {
    fn default() -> Self {
        OutlierConfig {
            window_ms: 10_000,
            max_repeated_syn_ratio: 0.3,
            min_new_flows: 20,
            base_ejection_ms: 30_000,
            max_ejection_ms: 300_000,
            max_ejection_percent: 10,
        }
    }
}

impl OutlierConfig {
    /// How many backends of `n` may be out at once (see the module docs).
    pub fn cap(&self, n: usize) -> usize {
        match self.max_ejection_percent.min(100) {
            0 => 0,
            pct => (n * usize::from(pct) / 100).max(1).min(n),
        }
    }

    /// The ejection time of the `n`-th ejection.
    pub fn ejection_ms(&self, n: u32) -> u64 {
        self.base_ejection_ms
            .saturating_mul(u64::from(n.max(1)))
            .min(self.max_ejection_ms.max(self.base_ejection_ms))
    }
}

/// One backend at one evaluation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Observation<'a> {
    pub backend: &'a str,
    /// The data plane's cumulative count of the backend's new flows.
    pub new_flows: u64,
    /// The data plane's cumulative count of its repeated SYNs.
    pub repeated_syns: u64,
    /// Health checks take it out (it counts towards the cap and is not a
    /// candidate).
    pub down: bool,
}

/// What an evaluation did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum OutlierEvent {
    Ejected {
        backend: String,
        new_flows: u64,
        repeated_syns: u64,
        /// The `n` of this ejection.
        ejections: u32,
        until: UnixMillis,
    },
    Returned {
        backend: String,
        at: UnixMillis,
    },
    /// A candidate kept in service because `out` backends of the
    /// service's are out and the cap is `cap`.
    Capped {
        backend: String,
        new_flows: u64,
        repeated_syns: u64,
        out: usize,
        cap: usize,
    },
}

impl std::fmt::Display for OutlierEvent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let pct = |r: u64, n: u64| r as f64 * 100.0 / n.max(1) as f64;
        match self {
            OutlierEvent::Ejected {
                backend,
                new_flows,
                repeated_syns,
                ejections,
                until,
            } => write!(
                f,
                "backend {backend} ejected from new flows: {repeated_syns} repeated SYNs in \
                 {new_flows} new flows ({:.1}%); ejection {ejections}, until {until} (Unix ms)",
                pct(*repeated_syns, *new_flows)
            ),
            OutlierEvent::Returned { backend, .. } => {
                write!(f, "backend {backend} is back from outlier ejection")
            }
            OutlierEvent::Capped {
                backend,
                new_flows,
                repeated_syns,
                out,
                cap,
            } => write!(
                f,
                "backend {backend} is an outlier ({repeated_syns} repeated SYNs in {new_flows} \
                 new flows, {:.1}%) but stays in service: {out} backends are out and \
                 max_ejection_percent allows {cap}",
                pct(*repeated_syns, *new_flows)
            ),
        }
    }
}

/// New flows and repeated SYNs over a sliding window, from the data
/// plane's cumulative counters sampled at each tick. Also usable alone,
/// for example for a region's passive failure signal in a
/// [`crate::shift::Signals`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CounterWindow {
    /// (time, new flows, repeated SYNs): cumulative samples, oldest first.
    samples: VecDeque<(UnixMillis, u64, u64)>,
}

impl CounterWindow {
    /// Adds the counters at `now` and drops the samples older than
    /// `window_ms`. A counter that goes backwards (a reset) or a clock
    /// that goes backwards restarts the window.
    pub fn push(&mut self, now: UnixMillis, new_flows: u64, repeated_syns: u64, window_ms: u64) {
        if self
            .samples
            .back()
            .is_some_and(|&(t, n, r)| now < t || new_flows < n || repeated_syns < r)
        {
            self.samples.clear();
        }
        self.samples.push_back((now, new_flows, repeated_syns));
        let from = now.saturating_sub(window_ms);
        while self.samples.front().is_some_and(|&(t, _, _)| t < from) {
            self.samples.pop_front();
        }
    }

    /// New flows and repeated SYNs between the oldest sample in the
    /// window and the newest.
    pub fn counts(&self) -> (u64, u64) {
        match (self.samples.front(), self.samples.back()) {
            (Some(a), Some(b)) => (b.1.saturating_sub(a.1), b.2.saturating_sub(a.2)),
            _ => (0, 0),
        }
    }

    /// Starts the window afresh from the newest sample: only what the
    /// counters add from now on counts.
    pub fn restart(&mut self) {
        let last = self.samples.back().copied();
        self.samples.clear();
        self.samples.extend(last);
    }
}

/// One backend's ejection state.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackendOutlier {
    /// The ejection count `n` (before its decay).
    pub ejections: u32,
    /// While ejected: when it returns.
    pub ejected_until: Option<UnixMillis>,
    /// When it last returned (for the decay of `ejections`).
    pub returned_at: Option<UnixMillis>,
    /// Its counts; not persisted (after a restart the window refills).
    #[serde(skip)]
    pub window: CounterWindow,
}

/// The outlier state of one service's backends, by name.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Outliers {
    pub backends: BTreeMap<String, BackendOutlier>,
}

impl Outliers {
    /// Takes this tick's counters, returns the backends whose ejection is
    /// over, then ejects new outliers within the cap. `obs` lists every
    /// backend of the service (backends missing from it are forgotten).
    pub fn evaluate(
        &mut self,
        cfg: &OutlierConfig,
        now: UnixMillis,
        obs: &[Observation<'_>],
    ) -> Vec<OutlierEvent> {
        self.backends
            .retain(|name, _| obs.iter().any(|o| o.backend == name));
        let mut events = Vec::new();
        for o in obs {
            let b = self.backends.entry(o.backend.to_string()).or_default();
            b.window
                .push(now, o.new_flows, o.repeated_syns, cfg.window_ms);
            if b.ejected_until.is_some_and(|u| u <= now) {
                b.ejected_until = None;
                b.returned_at = Some(now);
                b.window.restart();
                events.push(OutlierEvent::Returned {
                    backend: o.backend.to_string(),
                    at: now,
                });
            }
        }
        let cap = cfg.cap(obs.len());
        let mut out = obs
            .iter()
            .filter(|o| o.down || self.is_ejected(o.backend))
            .count();
        let mut candidates: Vec<(&str, u64, u64)> = obs
            .iter()
            .filter(|o| !o.down && !self.is_ejected(o.backend))
            .filter_map(|o| {
                let (n, r) = self.backends[o.backend].window.counts();
                (n > 0
                    && n >= cfg.min_new_flows
                    && r as f64 / n as f64 > cfg.max_repeated_syn_ratio)
                    .then_some((o.backend, n, r))
            })
            .collect();
        // Worst ratio first (r1/n1 > r2/n2 without division), then by name.
        candidates.sort_by(|a, b| {
            (u128::from(b.2) * u128::from(a.1))
                .cmp(&(u128::from(a.2) * u128::from(b.1)))
                .then(a.0.cmp(b.0))
        });
        for (name, new_flows, repeated_syns) in candidates {
            if out >= cap {
                events.push(OutlierEvent::Capped {
                    backend: name.to_string(),
                    new_flows,
                    repeated_syns,
                    out,
                    cap,
                });
                continue;
            }
            let b = self
                .backends
                .get_mut(name)
                .expect("every observed backend has state");
            let decay = match (b.returned_at, cfg.base_ejection_ms) {
                (Some(at), base) if base > 0 => now.saturating_sub(at) / base,
                _ => 0,
            };
            let n = b
                .ejections
                .saturating_sub(u32::try_from(decay).unwrap_or(u32::MAX))
                .saturating_add(1);
            b.ejections = n;
            let until = now.saturating_add(cfg.ejection_ms(n));
            b.ejected_until = Some(until);
            b.window.restart();
            out += 1;
            events.push(OutlierEvent::Ejected {
                backend: name.to_string(),
                new_flows,
                repeated_syns,
                ejections: n,
                until,
            });
        }
        events
    }

    /// Whether `backend` is ejected (as of the last evaluation).
    pub fn is_ejected(&self, backend: &str) -> bool {
        self.backends
            .get(backend)
            .is_some_and(|b| b.ejected_until.is_some())
    }

    /// The ejected backends, by name.
    pub fn ejected(&self) -> Vec<&str> {
        self.backends
            .iter()
            .filter(|(_, b)| b.ejected_until.is_some())
            .map(|(n, _)| n.as_str())
            .collect()
    }

    /// The earliest end of an ejection: when to evaluate again at the
    /// latest.
    pub fn next_return(&self) -> Option<UnixMillis> {
        self.backends.values().filter_map(|b| b.ejected_until).min()
    }

    /// Marks the ejected backends of `svc` unhealthy (for new flows).
    pub fn apply(&self, svc: &mut ServiceIn) {
        for b in svc.regions.iter_mut().flat_map(|r| r.backends.iter_mut()) {
            if self.is_ejected(&b.name) {
                b.healthy = false;
            }
        }
    }
}
