//! The capacity waterfall's controller (Google Cloud RATE balancing mode
//! with a capacity scaler): per region, the fraction of the flows reaching
//! the region that it keeps, so that the new flows landing there stay at
//! `max_new_flows_per_second × capacity_scaler`; the rest spills to the next
//! region of the order ([`crate::RegionIn::capacity_keep`]).
//!
//! The plant is simple: flows reach the region at a rate `λ` (set by the
//! clients and the steps above), and `keep × λ` land. The controller sees
//! only what landed (the data-plane counters) and the keep that was in
//! force, so it estimates `λ = landed / keep`, smooths the estimate with an
//! exponential filter and sets `keep = min(1, limit / λ)`. The filter has
//! two speeds: a sample that differs from the estimate by more than three
//! times its own counting noise (1/√(flows counted)) is a real change, and
//! the estimate follows it quickly (time constant [`Controller::TAU`], for
//! [`Controller::FAST_FOR`] after the change); otherwise it is noise, and
//! the estimate moves slowly ([`Controller::TAU_STEADY`]). So a step is followed within a few
//! samples, and a steady rate of a few hundred flows per second does not
//! make the keep wander. There is no integrator: the keep is a
//! feed-forward of the estimate, so a step in `λ` gives a first-order
//! response without overshoot or oscillation.
//!
//! Keeps are quantised to 1/1000 and a change smaller than
//! [`Controller::DEADBAND`] (relative) is not applied, so tables are not
//! rewritten for measurement noise.

use std::time::Duration;

/// The keep-fraction controller of one region.
#[derive(Clone, Debug, PartialEq)]
pub struct Controller {
    limit: Option<f64>,
    offered: Option<f64>,
    keep: f64,
    /// Seconds since the samples last showed a real change.
    since_change: f64,
}

impl Controller {
    /// Smoothing time constant of the arrival-rate estimate.
    pub const TAU: Duration = Duration::from_millis(400);
    /// Smoothing time constant while the samples only differ by noise.
    pub const TAU_STEADY: Duration = Duration::from_millis(3000);
    /// A sample this many times its counting noise away from the estimate
    /// is a change, not noise.
    pub const CHANGE_SIGMAS: f64 = 3.0;
    /// How long after a change the estimate keeps the fast time constant.
    pub const FAST_FOR: Duration = Duration::from_millis(2000);
    /// Relative keep change below which the keep is left as is.
    pub const DEADBAND: f64 = 0.02;

    /// `limit`: new flows per second the region may take on this host
    /// (`max_new_flows_per_second × capacity_scaler`); `None` = no limit.
    pub fn new(limit: Option<f64>) -> Self {
        let mut c = Controller {
            limit: None,
            offered: None,
            keep: 1.0,
            since_change: 0.0,
        };
        c.set_limit(limit);
        c
    }

    /// Changes the limit (config reload); the keep follows at the next
    /// [`update`](Self::update), or at once for no limit or a zero limit.
    pub fn set_limit(&mut self, limit: Option<f64>) {
        self.limit = limit.map(|l| if l.is_nan() { 0.0 } else { l.max(0.0) });
        match self.limit {
            None => self.keep = 1.0,
            Some(0.0) => self.keep = 0.0,
            Some(_) => {}
        }
    }

    /// The keep fraction in force.
    pub fn keep(&self) -> f64 {
        self.keep
    }

    /// The estimated rate of new flows reaching the region.
    pub fn offered(&self) -> Option<f64> {
        self.offered
    }

    /// Feeds the rate of new flows that the capacity step kept in the
    /// region over the last `dt` (while [`keep`](Self::keep) was in force)
    /// and returns the keep for the next interval.
    ///
    /// Flows that reach the region only because they spilled past the last
    /// region of the order (`Decision::fallback`) are not subject to the
    /// keep: leave them out, or use [`update_offered`](Self::update_offered).
    pub fn update(&mut self, landed: f64, dt: Duration) -> f64 {
        // keep > 0 here unless the limit is 0: a positive limit never sets
        // it to 0.
        let sample = landed.max(0.0) / self.keep.max(1e-3);
        self.update_offered(sample, dt)
    }

    /// Like [`update`](Self::update), for a caller that knows the rate of
    /// new flows reaching the region's capacity step (for example the
    /// class's new-flow rate × `reach` × dial).
    pub fn update_offered(&mut self, offered: f64, dt: Duration) -> f64 {
        let Some(limit) = self.limit else {
            return self.keep;
        };
        if limit == 0.0 {
            self.keep = 0.0;
            return 0.0;
        }
        let sample = offered.max(0.0);
        let secs = dt.as_secs_f64();
        let est = match self.offered {
            None => sample,
            Some(o) => {
                // The flows this sample counted (those that landed), and
                // the relative noise of counting that many.
                let counted = (sample * self.keep * secs).max(1.0);
                let noise = 1.0 / counted.sqrt();
                if (sample - o).abs() > Self::CHANGE_SIGMAS * noise * o.max(1e-9) {
                    self.since_change = 0.0;
                } else {
                    self.since_change += secs;
                }
                // Fast for a while after a change, until the estimate has
                // caught up; slow once only noise remains.
                let tau = if self.since_change < Self::FAST_FOR.as_secs_f64() {
                    Self::TAU
                } else {
                    Self::TAU_STEADY
                };
                let alpha = 1.0 - (-secs / tau.as_secs_f64()).exp();
                o + alpha * (sample - o)
            }
        };
        self.offered = Some(est);
        let want = if est <= limit {
            1.0
        } else {
            ((limit / est) * 1000.0).round().max(1.0) / 1000.0
        };
        let rel = (want - self.keep).abs() / self.keep.max(1e-3);
        if rel >= Self::DEADBAND || (want == 1.0 && self.keep != 1.0) {
            self.keep = want;
        }
        self.keep
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deterministic Poisson-ish noise: a normal approximation from a
    /// xorshift generator.
    struct Noise(u64);
    impl Noise {
        fn uniform(&mut self) -> f64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            (self.0 >> 11) as f64 / (1u64 << 53) as f64
        }
        /// `n` trials of probability `p`, normally approximated.
        fn binomial(&mut self, n: f64, p: f64) -> f64 {
            let (u1, u2) = (self.uniform().max(1e-12), self.uniform());
            let z = (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos();
            (n * p + z * (n * p * (1.0 - p)).sqrt())
                .clamp(0.0, n)
                .round()
        }
        fn poisson(&mut self, mean: f64) -> f64 {
            let (u1, u2) = (self.uniform().max(1e-12), self.uniform());
            let z = (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos();
            (mean + z * mean.sqrt()).max(0.0).round()
        }
    }

    struct Step {
        t: f64,
        offered: f64,
        keep: f64,
        landed_expected: f64,
        landed_measured: f64,
    }

    /// Simulates 250 ms intervals: flows arrive at `offered(t)`, the
    /// region keeps `keep` of them (binomial ≈ Poisson counts), the
    /// controller sees the landed count.
    fn simulate(limit: f64, offered: impl Fn(f64) -> f64, secs: f64) -> Vec<Step> {
        simulate_every(limit, offered, secs, 0.25)
    }

    fn simulate_every(limit: f64, offered: impl Fn(f64) -> f64, secs: f64, dt: f64) -> Vec<Step> {
        let mut c = Controller::new(Some(limit));
        let mut noise = Noise(0x9e37_79b9_7f4a_7c15);
        let mut out = Vec::new();
        let mut t = 0.0;
        while t < secs {
            let lam = offered(t);
            let keep = c.keep();
            let expected = keep * lam;
            let landed = noise.poisson(expected * dt) / dt;
            out.push(Step {
                t,
                offered: lam,
                keep,
                landed_expected: expected,
                landed_measured: landed,
            });
            c.update(landed, Duration::from_secs_f64(dt));
            t += dt;
        }
        out
    }

    fn print(steps: &[Step]) {
        println!("   t(s)  offered   keep   landed(expected)  landed(measured)");
        for s in steps {
            println!(
                "{:7.2} {:8.0} {:6.3} {:12.0} {:16.0}",
                s.t, s.offered, s.keep, s.landed_expected, s.landed_measured
            );
        }
    }

    /// Checks that from `from + 3 s` to `to` the landed rate holds within
    /// ±10 % of `target`, and that it approaches from one side without
    /// oscillating around the target.
    fn check_window(steps: &[Step], from: f64, to: f64, target: f64) {
        for s in steps.iter().filter(|s| s.t >= from + 3.0 && s.t < to) {
            let err = (s.landed_expected - target).abs() / target;
            assert!(
                err <= 0.10,
                "t={} landed {} vs {target}",
                s.t,
                s.landed_expected
            );
        }
        // Oscillation: the expected landed rate must not cross the target
        // band (±3 %) from one side to the other and back.
        let mut sides = Vec::new();
        for s in steps.iter().filter(|s| s.t >= from && s.t < to) {
            let x = (s.landed_expected - target) / target;
            let side = if x > 0.03 {
                1
            } else if x < -0.03 {
                -1
            } else {
                0
            };
            if side != 0 && sides.last() != Some(&side) {
                sides.push(side);
            }
        }
        assert!(
            sides.len() <= 2,
            "crossed the target back and forth: {sides:?}"
        );
    }

    /// The daemon's case at a low rate: 500 ms samples of a region limited
    /// to 100 new flows/s, so each sample counts only ~50 flows. Clients
    /// arrive at a steady rate; which of them land is the flow hash's draw
    /// (binomial: ~8 % noise per sample). From 3 s after the step the rate
    /// the keep lets land (keep × offered, averaged over 2 s as an
    /// operator's graph would) is within ±10 % of the limit, for 20 noise
    /// seeds: the controller does not chase the counting noise. (The
    /// counted flows themselves add the draw's own noise on top: ±4 % at
    /// one standard deviation over 2 s at this rate.)
    #[test]
    fn at_a_low_rate_the_2s_average_holds_within_10_percent() {
        let limit = 100.0;
        let offered = |t: f64| if t < 5.0 { 50.0 } else { 150.0 };
        let dt = 0.5;
        for seed in 1..=20u64 {
            let mut c = Controller::new(Some(limit));
            let mut noise = Noise(0x9e37_79b9_7f4a_7c15 ^ seed.wrapping_mul(0x1234_5678_9abc));
            let mut landed = Vec::new();
            let mut t = 0.0;
            while t < 25.0 {
                let (arrived, keep) = (offered(t) * dt, c.keep());
                let n = noise.binomial(arrived, keep);
                landed.push((t, arrived * keep));
                c.update(n / dt, Duration::from_secs_f64(dt));

                t += dt;
            }
            // 2 s windows starting 3 s after the step.
            let mut from = 8.0;
            while from + 2.0 <= 25.0 {
                let sum: f64 = landed
                    .iter()
                    .filter(|(t, _)| *t >= from && *t < from + 2.0)
                    .map(|(_, n)| n)
                    .sum();
                let rate = sum / 2.0;
                assert!(
                    (rate - limit).abs() <= 0.10 * limit,
                    "seed {seed}: {rate}/s over {from}..{} s",
                    from + 2.0
                );
                from += 1.0;
            }
        }
    }

    #[test]
    fn step_response_converges_within_3s_and_holds() {
        let limit = 5000.0;
        // 0-5 s: 2000/s (below the limit); 5-15 s: 8000/s; 15-25 s: 6000/s;
        // 25-35 s: 3000/s (below again).
        let offered = |t: f64| match t {
            t if t < 5.0 => 2000.0,
            t if t < 15.0 => 8000.0,
            t if t < 25.0 => 6000.0,
            _ => 3000.0,
        };
        let steps = simulate(limit, offered, 35.0);
        print(&steps);
        for s in steps.iter().filter(|s| s.t < 5.0) {
            assert_eq!(s.keep, 1.0, "no spill below the limit");
        }
        check_window(&steps, 5.0, 15.0, limit);
        check_window(&steps, 15.0, 25.0, limit);
        for s in steps.iter().filter(|s| s.t >= 28.0) {
            assert_eq!(s.keep, 1.0, "back to keeping everything below the limit");
        }
        // Tables are not rewritten for noise: in the steady part of a
        // window the keep changes rarely.
        let changes = steps
            .windows(2)
            .filter(|w| w[0].t >= 9.0 && w[1].t < 15.0 && w[0].keep != w[1].keep)
            .count();
        assert!(changes <= 6, "{changes} keep changes in 6 s of steady load");
    }

    #[test]
    fn no_limit_and_zero_limit() {
        let mut c = Controller::new(None);
        assert_eq!(c.update(1e6, Duration::from_millis(250)), 1.0);
        let mut c = Controller::new(Some(0.0));
        assert_eq!(c.keep(), 0.0);
        assert_eq!(c.update(0.0, Duration::from_millis(250)), 0.0);
        c.set_limit(None);
        assert_eq!(c.keep(), 1.0);
    }

    #[test]
    fn offered_rate_entry_point() {
        let mut c = Controller::new(Some(5000.0));
        // A steady 10,000/s offered: keep 0.5 at once (first sample).
        assert_eq!(c.update_offered(10_000.0, Duration::from_millis(250)), 0.5);
        // The same seen through what landed (5,000/s at keep 0.5).
        assert_eq!(c.update(5000.0, Duration::from_millis(250)), 0.5);
    }

    #[test]
    fn keep_is_quantised() {
        let mut c = Controller::new(Some(1000.0));
        let k = c.update(3000.0, Duration::from_millis(250));
        assert_eq!(k, 0.333);
    }
}
