//! [`HealthMonitor`]: one tokio task per target, probing on a fixed grid.

use std::collections::hash_map::RandomState;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::runtime::Handle;
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::probe::{probe, FailureKind, ProbeOutcome};
use super::tracker::{Tracker, Transition};
use super::{backend_of_key, Target, TargetStatus, TlsConfigs};

/// How often the CA files of https checks are checked for changes (besides
/// every [`HealthMonitor::set_targets`]).
pub const TLS_REFRESH_INTERVAL: Duration = Duration::from_secs(10);

/// Upper bounds (seconds) of the probe latency histogram buckets; a final
/// `+Inf` bucket follows.
pub const LATENCY_BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

/// Upper bounds (seconds) of the schedule lag histogram buckets; a final
/// `+Inf` bucket follows.
pub const LAG_BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

/// A cumulative histogram in the Prometheus layout: `buckets[i] = (le, n)`
/// where `n` counts observations `<= le` (so counts never decrease along the
/// list), ending with `(f64::INFINITY, count)`. `sum` is in seconds.
#[derive(Clone, Debug, PartialEq)]
pub struct Histogram {
    pub buckets: Vec<(f64, u64)>,
    pub sum: f64,
    pub count: u64,
}

impl Histogram {
    /// The smallest bucket bound below which at least `q` (0..=1) of the
    /// observations fall; `None` when empty.
    pub fn quantile_upper_bound(&self, q: f64) -> Option<f64> {
        if self.count == 0 {
            return None;
        }
        let rank = (q.clamp(0.0, 1.0) * self.count as f64).ceil() as u64;
        self.buckets
            .iter()
            .find(|(_, n)| *n >= rank.max(1))
            .map(|(le, _)| *le)
    }
}

/// Lock-free histogram: per-bucket counters, sum in nanoseconds.
struct AtomicHistogram {
    bounds: &'static [f64],
    counts: Vec<AtomicU64>,
    sum_nanos: AtomicU64,
}

impl AtomicHistogram {
    fn new(bounds: &'static [f64]) -> AtomicHistogram {
        AtomicHistogram {
            bounds,
            counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_nanos: AtomicU64::new(0),
        }
    }

    fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        let i = self
            .bounds
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(self.bounds.len());
        self.counts[i].fetch_add(1, Ordering::Relaxed);
        let nanos = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        self.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
    }

    fn snapshot(&self) -> Histogram {
        let mut total = 0;
        let mut buckets = Vec::with_capacity(self.counts.len());
        for (i, c) in self.counts.iter().enumerate() {
            total += c.load(Ordering::Relaxed);
            let le = self.bounds.get(i).copied().unwrap_or(f64::INFINITY);
            buckets.push((le, total));
        }
        Histogram {
            buckets,
            sum: self.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9,
            count: total,
        }
    }
}

/// Status of one target as kept by the monitor.
struct Slot {
    /// Identifies the task that owns the slot; a stale task (replaced or
    /// removed by `set_targets`) finds a different generation and stops.
    generation: u64,
    status: TargetStatus,
    /// Lateness of the start of the target's latest probe.
    last_lag: Duration,
}

/// Failed probes of one backend (all its targets), by kind.
struct FailureCounts([AtomicU64; FailureKind::ALL.len()]);

impl FailureCounts {
    fn new() -> FailureCounts {
        FailureCounts(std::array::from_fn(|_| AtomicU64::new(0)))
    }

    fn add(&self, kind: FailureKind) {
        self.0[kind.index()].fetch_add(1, Ordering::Relaxed);
    }

    fn snapshot(&self) -> BTreeMap<&'static str, u64> {
        FailureKind::ALL
            .iter()
            .map(|k| (k.as_str(), self.0[k.index()].load(Ordering::Relaxed)))
            .collect()
    }
}

struct Shared {
    slots: Mutex<BTreeMap<String, Slot>>,
    /// By backend name. Kept across `set_targets` while the backend has a
    /// target, so the counts never go down.
    failures: Mutex<BTreeMap<String, Arc<FailureCounts>>>,
    tls: TlsConfigs,
    /// Wakes the publisher when some target's `up`/`degraded` (or the set of
    /// targets) changed.
    changed: Notify,
    latency: AtomicHistogram,
    lag: AtomicHistogram,
    missed: AtomicU64,
}

impl Shared {
    fn slots(&self) -> MutexGuard<'_, BTreeMap<String, Slot>> {
        self.slots.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn failures(&self) -> MutexGuard<'_, BTreeMap<String, Arc<FailureCounts>>> {
        self.failures.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn snapshot(&self) -> BTreeMap<String, TargetStatus> {
        self.slots()
            .iter()
            .map(|(k, s)| (k.clone(), s.status.clone()))
            .collect()
    }
}

struct Running {
    target: Target,
    handle: JoinHandle<()>,
}

/// Probes a set of targets concurrently and tracks their up/down state.
///
/// Each target has its own tokio task, so a target's probes never overlap.
/// Its probes run on a fixed grid: `start + phase + k × interval`, where
/// `start` is when the target was added and `phase` is spread uniformly over
/// the interval plus a random `[0, jitter)` (drawn once per target), so
/// targets neither synchronise nor bunch up at the start of each second, and a
/// slow probe never shifts later ones. Because `timeout < interval` (checked
/// by config validation) a probe ends before its next tick; only if the
/// runtime itself is so starved that a whole tick has already passed when
/// the previous probe ends is that tick skipped (counted by
/// [`missed_ticks`](HealthMonitor::missed_ticks)), keeping the grid.
///
/// The TLS client configurations of https checks are built off the async
/// workers, on tokio's blocking pool, when targets are set, and their CA
/// files are checked for changes at every [`set_targets`] and every
/// [`TLS_REFRESH_INTERVAL`]; a probe does no file I/O (see [`TlsConfigs`]).
///
/// Dropping the monitor (or [`stop`](HealthMonitor::stop)) cancels every
/// probe task.
///
/// [`set_targets`]: HealthMonitor::set_targets
pub struct HealthMonitor {
    shared: Arc<Shared>,
    running: HashMap<String, Running>,
    publisher: JoinHandle<()>,
    tls_refresher: JoinHandle<()>,
    tls_wake: Arc<Notify>,
    runtime: Handle,
    seed: RandomState,
    next_generation: u64,
}

/// Read-only probe statistics of a [`HealthMonitor`], for metrics.
#[derive(Clone)]
pub struct HealthStats {
    shared: Arc<Shared>,
}

impl HealthStats {
    /// See [`HealthMonitor::latency_histogram`].
    pub fn latency_histogram(&self) -> Histogram {
        self.shared.latency.snapshot()
    }

    /// Failed probes by backend and failure kind (every kind listed); the
    /// counts never go down while a backend keeps a target.
    pub fn probe_failures(&self) -> BTreeMap<String, BTreeMap<&'static str, u64>> {
        // Counts are added under the slots lock, with the target's status:
        // read under it too, for a cut consistent with the statuses.
        let _slots = self.shared.slots();
        self.shared
            .failures()
            .iter()
            .map(|(backend, counts)| (backend.clone(), counts.snapshot()))
            .collect()
    }
}

impl HealthMonitor {
    /// Starts probing `targets` (a later target with an already seen key is
    /// ignored). `on_change` receives the full status map at start, whenever
    /// the set of targets changes, and whenever any target's `up` or
    /// `degraded` changes; updates are coalesced, so a burst of changes may
    /// arrive as one map.
    ///
    /// # Panics
    ///
    /// When called outside a tokio runtime.
    pub fn start(
        targets: Vec<Target>,
        on_change: watch::Sender<BTreeMap<String, TargetStatus>>,
    ) -> HealthMonitor {
        let runtime = Handle::current();
        let shared = Arc::new(Shared {
            slots: Mutex::new(BTreeMap::new()),
            failures: Mutex::new(BTreeMap::new()),
            tls: TlsConfigs::new(),
            changed: Notify::new(),
            latency: AtomicHistogram::new(&LATENCY_BUCKETS),
            lag: AtomicHistogram::new(&LAG_BUCKETS),
            missed: AtomicU64::new(0),
        });
        let publisher = runtime.spawn(publish(shared.clone(), on_change));
        let tls_wake = Arc::new(Notify::new());
        let tls_refresher = runtime.spawn(
            shared
                .tls
                .clone()
                .refresh_periodically(tls_wake.clone(), TLS_REFRESH_INTERVAL),
        );
        let mut monitor = HealthMonitor {
            shared,
            running: HashMap::new(),
            publisher,
            tls_refresher,
            tls_wake,
            runtime,
            seed: RandomState::new(),
            next_generation: 0,
        };
        monitor.set_targets(targets);
        monitor.shared.changed.notify_one();
        monitor
    }

    /// The current status of every target.
    pub fn snapshot(&self) -> BTreeMap<String, TargetStatus> {
        self.shared.snapshot()
    }

    /// Replaces the set of targets (a reload). A target whose key, address,
    /// port and check are all unchanged keeps its task, schedule and state; a
    /// target that changed starts over (unknown, so up); removed targets are
    /// cancelled and new ones started.
    ///
    /// Also (re)loads the TLS configurations of the https checks on the
    /// blocking pool: new ones, and those whose CA file changed. Probes
    /// that need a configuration not loaded yet wait for it (within their
    /// timeout). No file I/O happens on the calling thread.
    pub fn set_targets(&mut self, targets: Vec<Target>) {
        let mut wanted: HashMap<String, Target> = HashMap::with_capacity(targets.len());
        let mut order = Vec::with_capacity(targets.len());
        for t in targets {
            if wanted.contains_key(&t.key) {
                tracing::warn!(target: "steer::health", key = %t.key, "duplicate health check target ignored");
                continue;
            }
            order.push(t.key.clone());
            wanted.insert(t.key.clone(), t);
        }
        self.shared
            .tls
            .set_wanted(wanted.values().map(|t| &t.check));
        self.tls_wake.notify_one();
        let mut changed = false;
        // Removed or changed targets.
        let stale: Vec<String> = self
            .running
            .iter()
            .filter(|(k, r)| wanted.get(*k) != Some(&r.target))
            .map(|(k, _)| k.clone())
            .collect();
        for key in stale {
            if let Some(r) = self.running.remove(&key) {
                r.handle.abort();
            }
            self.shared.slots().remove(&key);
            changed = true;
        }
        // New (or changed) targets.
        let now = Instant::now();
        for key in order {
            if self.running.contains_key(&key) {
                continue;
            }
            let Some(target) = wanted.remove(&key) else {
                continue;
            };
            self.next_generation += 1;
            let generation = self.next_generation;
            self.shared.slots().insert(
                key.clone(),
                Slot {
                    generation,
                    status: TargetStatus::initial(),
                    last_lag: Duration::ZERO,
                },
            );
            let first = now + phase(&self.seed, &key, target.check.interval, target.check.jitter);
            let failures = self
                .shared
                .failures()
                .entry(backend_of_key(&key).to_string())
                .or_insert_with(|| Arc::new(FailureCounts::new()))
                .clone();
            let handle = self.runtime.spawn(run_target(
                self.shared.clone(),
                target.clone(),
                generation,
                first,
                failures,
            ));
            self.running.insert(key, Running { target, handle });
            changed = true;
        }
        let backends: HashSet<&str> = self.running.keys().map(|k| backend_of_key(k)).collect();
        self.shared
            .failures()
            .retain(|backend, _| backends.contains(backend.as_str()));
        if changed {
            self.shared.changed.notify_one();
        }
    }

    /// Cancels every probe task.
    pub fn stop(self) {
        drop(self);
    }

    /// Failed probes so far, by backend name (the backend of target `name`
    /// or `name/...`) and [`FailureKind::as_str`], for a
    /// `steer_probe_failures_total{backend,reason}` counter. Every backend
    /// with a target is listed, with every kind (zeros included). A backend's
    /// counts survive [`set_targets`](HealthMonitor::set_targets) as long as
    /// it keeps a target, so they never decrease; they are dropped with its
    /// last target.
    pub fn probe_failures(&self) -> BTreeMap<String, BTreeMap<&'static str, u64>> {
        self.stats().probe_failures()
    }

    /// Latency of every probe completed so far, over all targets (failed
    /// probes included; a timed-out probe counts its timeout). Buckets:
    /// [`LATENCY_BUCKETS`] and `+Inf`.
    pub fn latency_histogram(&self) -> Histogram {
        self.shared.latency.snapshot()
    }

    /// A reader of the probe statistics that needs no access to the
    /// monitor (for metrics, while the monitor itself belongs to the
    /// daemon's owner thread).
    pub fn stats(&self) -> HealthStats {
        HealthStats {
            shared: self.shared.clone(),
        }
    }

    /// How late every probe so far started relative to its scheduled time.
    /// Buckets: [`LAG_BUCKETS`] and `+Inf`.
    pub fn schedule_lag_histogram(&self) -> Histogram {
        self.shared.lag.snapshot()
    }

    /// The largest lateness among the latest probe start of every target,
    /// that is, the worst lag seen within the last interval.
    pub fn schedule_lag(&self) -> Duration {
        self.shared
            .slots()
            .values()
            .map(|s| s.last_lag)
            .max()
            .unwrap_or(Duration::ZERO)
    }

    /// Scheduled probes skipped because the previous probe of the same
    /// target (plus scheduling delay) ran past a whole tick. Stays 0 unless
    /// the runtime is starved.
    pub fn missed_ticks(&self) -> u64 {
        self.shared.missed.load(Ordering::Relaxed)
    }
}

impl Drop for HealthMonitor {
    fn drop(&mut self) {
        for r in self.running.values() {
            r.handle.abort();
        }
        self.publisher.abort();
        self.tls_refresher.abort();
    }
}

/// A target's offset from the start of its grid: uniform over the
/// interval (so 5,000 targets at 1 s make 5 probes per millisecond, not a
/// burst), plus a random `[0, jitter)`.
fn phase(seed: &RandomState, key: &str, interval: Duration, jitter: Duration) -> Duration {
    let h = seed.hash_one(key);
    let interval = u64::try_from(interval.as_nanos())
        .unwrap_or(u64::MAX)
        .max(1);
    let jitter = u64::try_from(jitter.as_nanos()).unwrap_or(u64::MAX);
    let spread = h % interval;
    let extra = if jitter == 0 {
        0
    } else {
        h.rotate_left(32) % jitter
    };
    Duration::from_nanos(spread + extra)
}

/// Sends the status map whenever woken; wake-ups coalesce.
async fn publish(shared: Arc<Shared>, tx: watch::Sender<BTreeMap<String, TargetStatus>>) {
    loop {
        shared.changed.notified().await;
        tx.send_replace(shared.snapshot());
    }
}

async fn run_target(
    shared: Arc<Shared>,
    target: Target,
    generation: u64,
    first: Instant,
    failures: Arc<FailureCounts>,
) {
    let check = &target.check;
    let interval = check.interval.max(Duration::from_millis(1));
    let mut tracker = Tracker::new(check.rise, check.fall);
    let mut scheduled = first;
    loop {
        tokio::time::sleep_until(scheduled).await;
        let lag = Instant::now().saturating_duration_since(scheduled);
        shared.lag.observe(lag);
        let outcome = probe(&target, &shared.tls).await;
        shared.latency.observe(outcome.latency());
        let before = (tracker.is_up(), tracker.degraded());
        let transition = tracker.record(&outcome);
        let after = (tracker.is_up(), tracker.degraded());
        {
            let mut slots = shared.slots();
            let Some(slot) = slots
                .get_mut(&target.key)
                .filter(|s| s.generation == generation)
            else {
                return; // replaced or removed by set_targets
            };
            let status = &mut slot.status;
            status.up = tracker.is_up();
            status.degraded = tracker.degraded();
            status.last_latency = Some(outcome.latency());
            if outcome.is_pass() {
                status.rtt = Some(super::rtt_update(status.rtt, outcome.latency()));
            }
            status.probes = tracker.probes();
            status.failures = tracker.failures();
            if let ProbeOutcome::Fail { reason, kind, .. } = &outcome {
                status.last_failure = Some(reason.clone());
                failures.add(*kind);
            }
            slot.last_lag = lag;
        }
        if before != after {
            shared.changed.notify_one();
        }
        log_outcome(&target, &tracker, &outcome, transition.as_ref(), before);

        // Next tick on the grid; if the runtime was so starved that it has
        // passed already, run it now; if more ticks passed, skip them.
        scheduled += interval;
        let now = Instant::now();
        if now > scheduled {
            let behind = (now - scheduled).as_nanos() / interval.as_nanos();
            if behind > 0 {
                let skip = u32::try_from(behind).unwrap_or(u32::MAX);
                scheduled += interval * skip;
                shared.missed.fetch_add(u64::from(skip), Ordering::Relaxed);
            }
        }
    }
}

fn log_outcome(
    target: &Target,
    tracker: &Tracker,
    outcome: &ProbeOutcome,
    transition: Option<&Transition>,
    (was_up, was_degraded): (bool, bool),
) {
    let key = target.key.as_str();
    let check = target.check.name.as_str();
    let kind = target.check.kind.as_str();
    let address = target.address;
    let port = target.port;
    match transition {
        Some(t) if t.up => tracing::info!(
            target: "steer::health",
            backend = key, %address, port, check, kind, reason = %t.reason,
            degraded = tracker.degraded(),
            "backend {key} ({address} port {port}, {kind} check {check:?}) is UP: {}",
            t.reason,
        ),
        Some(t) => {
            let n = tracker.consecutive_failures();
            let plural = if n == 1 { "" } else { "s" };
            tracing::warn!(
                target: "steer::health",
                backend = key, %address, port, check, kind, reason = %t.reason,
                "backend {key} ({address} port {port}, {kind} check {check:?}) is DOWN: {} \
                 ({n} consecutive failure{plural})",
                t.reason,
            );
        }
        None if was_up && tracker.degraded() != was_degraded => {
            if tracker.degraded() {
                tracing::warn!(
                    target: "steer::health",
                    backend = key, %address, port, check, kind,
                    "backend {key} ({address} port {port}, {kind} check {check:?}) is DEGRADED: \
                     deep health: status \"degraded\"",
                );
            } else {
                tracing::info!(
                    target: "steer::health",
                    backend = key, %address, port, check, kind,
                    "backend {key} ({address} port {port}, {kind} check {check:?}) is no longer degraded",
                );
            }
        }
        None => {
            if let Some(reason) = outcome.reason() {
                tracing::debug!(
                    target: "steer::health",
                    backend = key, %address, port, check, kind, reason,
                    up = tracker.is_up(),
                    "probe of {key} failed: {reason}",
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phases_spread_over_the_interval_plus_jitter() {
        let seed = RandomState::new();
        let interval = Duration::from_secs(1);
        let jitter = Duration::from_millis(100);
        let phases: Vec<Duration> = (0..1000)
            .map(|i| phase(&seed, &format!("b{i}"), interval, jitter))
            .collect();
        assert!(phases.iter().all(|p| *p < interval + jitter));
        // Every tenth of the interval is hit (a uniform draw misses one with
        // probability ~ 10 x 0.9^1000), so probes do not bunch up.
        for decile in 0..10u32 {
            let lo = interval * decile / 10;
            let hi = interval * (decile + 1) / 10;
            assert!(phases.iter().any(|p| *p >= lo && *p < hi), "{decile}");
        }
        let no_jitter = phase(&seed, "b1", interval, Duration::ZERO);
        assert!(no_jitter < interval);
        assert_eq!(
            phase(&seed, "b1", interval, jitter),
            phases[1],
            "stable per key"
        );
    }

    #[test]
    fn histogram_is_cumulative() {
        let h = AtomicHistogram::new(&LATENCY_BUCKETS);
        for ms in [0, 1, 2, 7, 30, 30, 6000] {
            h.observe(Duration::from_millis(ms));
        }
        let s = h.snapshot();
        assert_eq!(s.count, 7);
        assert!((s.sum - 6.070).abs() < 1e-9, "{}", s.sum);
        assert_eq!(
            s.buckets,
            vec![
                (0.001, 2),
                (0.0025, 3),
                (0.005, 3),
                (0.01, 4),
                (0.025, 4),
                (0.05, 6),
                (0.1, 6),
                (0.25, 6),
                (0.5, 6),
                (1.0, 6),
                (2.5, 6),
                (5.0, 6),
                (f64::INFINITY, 7),
            ]
        );
        assert_eq!(s.quantile_upper_bound(0.5), Some(0.01));
        assert_eq!(s.quantile_upper_bound(0.99), Some(f64::INFINITY));
        assert_eq!(s.quantile_upper_bound(0.0), Some(0.001));
        let empty = AtomicHistogram::new(&LAG_BUCKETS).snapshot();
        assert_eq!(empty.quantile_upper_bound(0.99), None);
        assert_eq!(empty.buckets.len(), LAG_BUCKETS.len() + 1);
    }
}
