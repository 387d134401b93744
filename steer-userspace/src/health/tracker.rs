//! The rise/fall state machine of one health-checked target.

use super::probe::ProbeOutcome;

/// Up/down state of one target, driven by probe outcomes.
///
/// A target starts *unknown*, which counts as **up**: a freshly configured
/// backend takes traffic until it has failed `fall` consecutive probes, so
/// that starting (or reloading) steer never empties a service while the first
/// probes are still in flight. From then on:
///
/// - **up**: `fall` consecutive failures → down;
/// - **down**: `rise` consecutive passes → up.
///
/// A pass resets the failure run and a failure resets the pass run, so only
/// *consecutive* outcomes count. An up target whose last probe passed but
/// reported "degraded" (deep health) is [`degraded`](Tracker::degraded).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tracker {
    rise: u32,
    fall: u32,
    up: bool,
    /// Current run of consecutive passes.
    passes: u32,
    /// Current run of consecutive failures.
    failures: u32,
    /// The last probe passed and said "degraded".
    last_degraded: bool,
    last_failure: Option<String>,
    probes: u64,
    total_failures: u64,
}

/// A change of a target's `up` state, returned by [`Tracker::record`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transition {
    /// The new state.
    pub up: bool,
    /// Why: for a target going down, the reason the last probe failed
    /// (`"timeout after 500ms"`, `"connection refused"`, ...); for a target
    /// coming up, how many consecutive probes passed.
    pub reason: String,
}

impl Tracker {
    /// A tracker for an unknown target (counted as up). `rise` and `fall` are
    /// clamped to at least 1.
    pub fn new(rise: u32, fall: u32) -> Tracker {
        Tracker {
            rise: rise.max(1),
            fall: fall.max(1),
            up: true,
            passes: 0,
            failures: 0,
            last_degraded: false,
            last_failure: None,
            probes: 0,
            total_failures: 0,
        }
    }

    /// Feeds one probe outcome; returns the transition it caused, if any.
    pub fn record(&mut self, outcome: &ProbeOutcome) -> Option<Transition> {
        self.probes += 1;
        match outcome {
            ProbeOutcome::Pass { degraded, .. } => {
                self.failures = 0;
                self.passes = self.passes.saturating_add(1);
                self.last_degraded = *degraded;
                if !self.up && self.passes >= self.rise {
                    self.up = true;
                    let plural = if self.passes == 1 { "" } else { "s" };
                    let mut reason = format!("{} consecutive probe{plural} passed", self.passes);
                    if *degraded {
                        reason.push_str(" (degraded)");
                    }
                    return Some(Transition { up: true, reason });
                }
                None
            }
            ProbeOutcome::Fail { reason, .. } => {
                self.passes = 0;
                self.failures = self.failures.saturating_add(1);
                self.total_failures += 1;
                self.last_degraded = false;
                self.last_failure = Some(reason.clone());
                if self.up && self.failures >= self.fall {
                    self.up = false;
                    return Some(Transition {
                        up: false,
                        reason: reason.clone(),
                    });
                }
                None
            }
        }
    }

    /// Whether the target should receive traffic (an unknown target is up).
    pub fn is_up(&self) -> bool {
        self.up
    }

    /// Up, and the last probe passed with a "degraded" deep-health status.
    pub fn degraded(&self) -> bool {
        self.up && self.last_degraded
    }

    /// The reason of the most recent failed probe, kept after recovery.
    pub fn last_failure(&self) -> Option<&str> {
        self.last_failure.as_deref()
    }

    /// Probes recorded so far (0: the state is still unknown).
    pub fn probes(&self) -> u64 {
        self.probes
    }

    /// Failed probes recorded so far.
    pub fn failures(&self) -> u64 {
        self.total_failures
    }

    /// Length of the current run of consecutive failures.
    pub fn consecutive_failures(&self) -> u32 {
        self.failures
    }

    /// Length of the current run of consecutive passes.
    pub fn consecutive_passes(&self) -> u32 {
        self.passes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn pass() -> ProbeOutcome {
        ProbeOutcome::Pass {
            latency: Duration::from_millis(1),
            degraded: false,
        }
    }

    fn degraded() -> ProbeOutcome {
        ProbeOutcome::Pass {
            latency: Duration::from_millis(1),
            degraded: true,
        }
    }

    fn fail(reason: &str) -> ProbeOutcome {
        ProbeOutcome::Fail {
            latency: Duration::from_millis(1),
            kind: crate::health::FailureKind::Other,
            reason: reason.to_string(),
        }
    }

    #[test]
    fn starts_up_and_unknown() {
        let t = Tracker::new(2, 3);
        assert!(t.is_up());
        assert!(!t.degraded());
        assert_eq!(t.last_failure(), None);
        assert_eq!(t.probes(), 0);
    }

    #[test]
    fn fall_three_needs_exactly_three_consecutive_failures() {
        let mut t = Tracker::new(2, 3);
        assert_eq!(t.record(&fail("a")), None);
        assert_eq!(t.record(&fail("b")), None);
        assert!(t.is_up(), "2 failures keep it up");
        assert_eq!(
            t.record(&fail("connection refused")),
            Some(Transition {
                up: false,
                reason: "connection refused".into()
            })
        );
        assert!(!t.is_up());
        // Further failures are no new transition.
        assert_eq!(t.record(&fail("d")), None);
        assert_eq!(t.failures(), 4);
        assert_eq!(t.last_failure(), Some("d"));
    }

    #[test]
    fn a_pass_resets_the_failure_run() {
        let mut t = Tracker::new(2, 3);
        for _ in 0..5 {
            assert_eq!(t.record(&fail("x")), None);
            assert_eq!(t.record(&fail("x")), None);
            assert_eq!(t.record(&pass()), None);
        }
        assert!(t.is_up());
        assert_eq!(t.probes(), 15);
        assert_eq!(t.failures(), 10);
    }

    #[test]
    fn rise_two_needs_exactly_two_consecutive_passes() {
        let mut t = Tracker::new(2, 1);
        assert!(t.record(&fail("x")).is_some());
        assert_eq!(t.record(&pass()), None);
        assert!(!t.is_up(), "1 pass keeps it down");
        assert_eq!(t.record(&fail("y")), None, "already down");
        assert_eq!(t.record(&pass()), None);
        assert!(!t.is_up(), "the failure reset the pass run");
        assert_eq!(
            t.record(&pass()),
            Some(Transition {
                up: true,
                reason: "2 consecutive probes passed".into()
            })
        );
        assert!(t.is_up());
        assert_eq!(t.last_failure(), Some("y"), "kept after recovery");
    }

    #[test]
    fn rise_and_fall_of_one() {
        let mut t = Tracker::new(1, 1);
        assert!(matches!(
            t.record(&fail("x")),
            Some(Transition { up: false, .. })
        ));
        assert_eq!(
            t.record(&pass()),
            Some(Transition {
                up: true,
                reason: "1 consecutive probe passed".into()
            })
        );
    }

    #[test]
    fn zero_rise_or_fall_is_treated_as_one() {
        let mut t = Tracker::new(0, 0);
        assert!(t.record(&fail("x")).is_some());
        assert!(t.record(&pass()).is_some());
    }

    #[test]
    fn degraded_only_while_up_and_last_probe_degraded() {
        let mut t = Tracker::new(2, 2);
        assert_eq!(t.record(&degraded()), None);
        assert!(t.is_up() && t.degraded());
        assert_eq!(t.record(&pass()), None);
        assert!(!t.degraded());
        t.record(&degraded());
        assert!(t.degraded());
        t.record(&fail("x"));
        assert!(t.is_up() && !t.degraded(), "last probe failed");
        t.record(&fail("x"));
        assert!(!t.is_up() && !t.degraded());
        assert_eq!(t.record(&degraded()), None);
        assert!(!t.degraded(), "down targets are never degraded");
        assert_eq!(
            t.record(&degraded()),
            Some(Transition {
                up: true,
                reason: "2 consecutive probes passed (degraded)".into()
            })
        );
        assert!(t.degraded());
    }
}
