//! Latency ranking: regions ordered by measured round-trip time, with
//! hysteresis (a margin) and a dwell time, so the order does not flap.
//!
//! Pure: the caller passes the time. Region ids are whatever the caller
//! uses (region indexes of a service).

use std::time::{Duration, Instant};

/// Tuning of a [`Ranking`] (config: `latency_margin`, `latency_margin_min`,
/// `latency_dwell`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tuning {
    /// A challenger must be faster by this percentage...
    pub margin_percent: u8,
    /// ...and by at least this much.
    pub margin_min: Duration,
    /// ...continuously for this long.
    pub dwell: Duration,
}

impl Default for Tuning {
    fn default() -> Self {
        Tuning {
            margin_percent: 20,
            margin_min: Duration::from_millis(5),
            dwell: Duration::from_secs(30),
        }
    }
}

/// The ranking state machine of one service.
#[derive(Clone, Debug)]
pub struct Ranking {
    tuning: Tuning,
    order: Vec<usize>,
    beaten_since: Option<Instant>,
}

impl Ranking {
    /// Starts with the configured order (used until data exists).
    pub fn new(configured: Vec<usize>, tuning: Tuning) -> Self {
        Ranking {
            tuning,
            order: configured,
            beaten_since: None,
        }
    }

    /// A new configured order (config reload): in force at once, any
    /// pending change dropped.
    pub fn reset(&mut self, configured: Vec<usize>) {
        self.order = configured;
        self.beaten_since = None;
    }

    /// The order in force.
    pub fn order(&self) -> &[usize] {
        &self.order
    }

    /// When the current order started to be beaten (a change is pending).
    pub fn pending_since(&self) -> Option<Instant> {
        self.beaten_since
    }

    /// Whether `a` beats `b` by the margin (both must be measured).
    fn beats(&self, a: Option<Duration>, b: Option<Duration>) -> bool {
        let (Some(a), Some(b)) = (a, b) else {
            return false;
        };
        let gain = b.saturating_sub(a);
        gain >= self.tuning.margin_min
            && gain.as_secs_f64() * 100.0 >= b.as_secs_f64() * self.tuning.margin_percent as f64
    }

    /// The order the measurements alone would give: the measured regions
    /// sorted by RTT (ties keep their current order) in the positions the
    /// measured regions hold now; unmeasured regions keep their place.
    pub fn proposal(&self, rtts: &[(usize, Option<Duration>)]) -> Vec<usize> {
        let rtt = |r: usize| rtts.iter().find(|(i, _)| *i == r).and_then(|(_, d)| *d);
        let mut measured: Vec<usize> = self
            .order
            .iter()
            .copied()
            .filter(|&r| rtt(r).is_some())
            .collect();
        measured.sort_by_key(|&r| rtt(r)); // stable: ties keep their order
        let mut it = measured.into_iter();
        self.order
            .iter()
            .map(|&r| {
                if rtt(r).is_some() {
                    it.next().unwrap_or(r)
                } else {
                    r
                }
            })
            .collect()
    }

    /// Feeds the latest RTTs (`None` = no data for that region). Returns
    /// whether the order changed. A new order applies only when, at the
    /// first position where it differs, its region beats the current one
    /// by the margin, continuously for the dwell time.
    pub fn update(&mut self, rtts: &[(usize, Option<Duration>)], now: Instant) -> bool {
        let rtt = |r: usize| rtts.iter().find(|(i, _)| *i == r).and_then(|(_, d)| *d);
        let proposal = self.proposal(rtts);
        let better = proposal
            .iter()
            .zip(&self.order)
            .find(|(p, c)| p != c)
            .is_some_and(|(&p, &c)| self.beats(rtt(p), rtt(c)));
        if !better {
            self.beaten_since = None;
            return false;
        }
        let since = *self.beaten_since.get_or_insert(now);
        if now.duration_since(since) >= self.tuning.dwell {
            self.order = proposal;
            self.beaten_since = None;
            return true;
        }
        false
    }
}

/// Exponentially weighted moving average of probe connect times.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Ewma {
    alpha: f64,
    value: Option<f64>,
}

impl Ewma {
    /// `alpha` in (0, 1]: the weight of a new sample (clamped).
    pub fn new(alpha: f64) -> Self {
        Ewma {
            alpha: if alpha.is_nan() {
                1.0
            } else {
                alpha.clamp(1e-6, 1.0)
            },
            value: None,
        }
    }

    /// Adds a sample and returns the new average (the first sample is
    /// taken as is).
    pub fn observe(&mut self, sample: Duration) -> Duration {
        let x = sample.as_secs_f64();
        let v = match self.value {
            None => x,
            Some(v) => v + self.alpha * (x - v),
        };
        self.value = Some(v);
        Duration::from_secs_f64(v)
    }

    /// The average, if any sample was seen.
    pub fn value(&self) -> Option<Duration> {
        self.value.map(Duration::from_secs_f64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(x: u64) -> Option<Duration> {
        Some(Duration::from_millis(x))
    }

    #[test]
    fn configured_order_until_data_exists() {
        let t0 = Instant::now();
        let mut r = Ranking::new(vec![0, 1, 2], Tuning::default());
        for s in 0..100 {
            let now = t0 + Duration::from_secs(s);
            assert!(!r.update(&[(0, None), (1, None), (2, None)], now));
        }
        assert_eq!(r.order(), &[0, 1, 2]);
        // Only one region measured: nothing to compare it with.
        for s in 100..200 {
            assert!(!r.update(
                &[(0, None), (1, ms(1)), (2, None)],
                t0 + Duration::from_secs(s)
            ));
        }
        assert_eq!(r.order(), &[0, 1, 2]);
    }

    #[test]
    fn applies_after_the_dwell_only() {
        let t0 = Instant::now();
        let mut r = Ranking::new(vec![0, 1], Tuning::default());
        // 1 is 50 ms vs 100 ms: better by 50% and 50 ms.
        let rtts = [(0, ms(100)), (1, ms(50))];
        assert!(!r.update(&rtts, t0));
        assert!(!r.update(&rtts, t0 + Duration::from_secs(29)));
        assert_eq!(r.order(), &[0, 1]);
        assert!(r.update(&rtts, t0 + Duration::from_secs(30)));
        assert_eq!(r.order(), &[1, 0]);
        // Stays: 0 is now the challenger and slower.
        assert!(!r.update(&rtts, t0 + Duration::from_secs(100)));
    }

    #[test]
    fn a_lapse_restarts_the_dwell() {
        let t0 = Instant::now();
        let mut r = Ranking::new(vec![0, 1], Tuning::default());
        let better = [(0, ms(100)), (1, ms(50))];
        let equal = [(0, ms(100)), (1, ms(95))];
        assert!(!r.update(&better, t0));
        assert!(!r.update(&equal, t0 + Duration::from_secs(20)));
        assert!(!r.update(&better, t0 + Duration::from_secs(25)));
        assert!(!r.update(&better, t0 + Duration::from_secs(54)));
        assert_eq!(r.order(), &[0, 1]);
        assert!(r.update(&better, t0 + Duration::from_secs(55)));
        assert_eq!(r.order(), &[1, 0]);
    }

    #[test]
    fn margin_percent_and_minimum_both_required() {
        let t0 = Instant::now();
        let late = t0 + Duration::from_secs(3600);
        // 19% better: not enough.
        let mut r = Ranking::new(vec![0, 1], Tuning::default());
        r.update(&[(0, ms(100)), (1, ms(81))], t0);
        assert!(!r.update(&[(0, ms(100)), (1, ms(81))], late));
        // 20% better: enough (20 ms >= 5 ms).
        let mut r = Ranking::new(vec![0, 1], Tuning::default());
        r.update(&[(0, ms(100)), (1, ms(80))], t0);
        assert!(r.update(&[(0, ms(100)), (1, ms(80))], late));
        // 50% better but only 4 ms: below the 5 ms minimum.
        let mut r = Ranking::new(vec![0, 1], Tuning::default());
        r.update(&[(0, ms(8)), (1, ms(4))], t0);
        assert!(!r.update(&[(0, ms(8)), (1, ms(4))], late));
        // 5 ms and 50%: enough.
        let mut r = Ranking::new(vec![0, 1], Tuning::default());
        r.update(&[(0, ms(10)), (1, ms(5))], t0);
        assert!(r.update(&[(0, ms(10)), (1, ms(5))], late));
    }

    #[test]
    fn unmeasured_regions_keep_their_place() {
        let t0 = Instant::now();
        let mut r = Ranking::new(vec![0, 1, 2], Tuning::default());
        let rtts = [(0, ms(100)), (1, None), (2, ms(10))];
        r.update(&rtts, t0);
        assert!(r.update(&rtts, t0 + Duration::from_secs(30)));
        assert_eq!(r.order(), &[2, 1, 0]);
    }

    #[test]
    fn reset_drops_a_pending_change() {
        let t0 = Instant::now();
        let mut r = Ranking::new(vec![0, 1], Tuning::default());
        let rtts = [(0, ms(100)), (1, ms(50))];
        r.update(&rtts, t0);
        assert_eq!(r.pending_since(), Some(t0));
        r.reset(vec![0, 1]);
        assert_eq!(r.pending_since(), None);
        assert!(!r.update(&rtts, t0 + Duration::from_secs(31)));
        assert!(r.update(&rtts, t0 + Duration::from_secs(61)));
    }

    #[test]
    fn ewma() {
        let mut e = Ewma::new(0.5);
        assert_eq!(e.value(), None);
        assert_eq!(
            e.observe(Duration::from_millis(100)),
            Duration::from_millis(100)
        );
        assert_eq!(
            e.observe(Duration::from_millis(50)),
            Duration::from_millis(75)
        );
        let v = e.observe(Duration::from_millis(75));
        assert!((v.as_secs_f64() - 0.075).abs() < 1e-9);
    }
}
