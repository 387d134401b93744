//! Outlier ejection with a fake clock and fake data-plane counters.

mod common;

use common::cases::ordered;
use common::*;
use steer_policy::outlier::{CounterWindow, Observation, OutlierConfig, OutlierEvent, Outliers};

const T0: u64 = 1_796_000_000_000;
const S: u64 = 1_000;

/// A fake data plane: cumulative counters per backend.
struct Plane {
    names: Vec<String>,
    new_flows: Vec<u64>,
    repeated: Vec<u64>,
    down: Vec<bool>,
}

impl Plane {
    fn new(n: usize) -> Self {
        Plane {
            names: (0..n).map(|i| format!("b{i}")).collect(),
            new_flows: vec![0; n],
            repeated: vec![0; n],
            down: vec![false; n],
        }
    }

    /// One second of traffic: `flows` new flows per backend, of which
    /// `bad[i]` repeated their SYN.
    fn second(&mut self, flows: u64, bad: &[(usize, u64)]) {
        for i in 0..self.names.len() {
            self.new_flows[i] += flows;
        }
        for &(i, r) in bad {
            self.repeated[i] += r;
        }
    }

    fn obs(&self) -> Vec<Observation<'_>> {
        (0..self.names.len())
            .map(|i| Observation {
                backend: &self.names[i],
                new_flows: self.new_flows[i],
                repeated_syns: self.repeated[i],
                down: self.down[i],
            })
            .collect()
    }
}

fn ejected_names(ev: &[OutlierEvent]) -> Vec<String> {
    ev.iter()
        .filter_map(|e| match e {
            OutlierEvent::Ejected { backend, .. } => Some(backend.clone()),
            _ => None,
        })
        .collect()
}

/// Default config: 10 s window, ratio 0.3 over >= 20 flows, 30 s base,
/// 300 s cap, 10 %.
fn cfg() -> OutlierConfig {
    OutlierConfig::default()
}

#[test]
fn a_backend_whose_syns_repeat_is_ejected_once_there_is_enough_evidence() {
    let mut p = Plane::new(10);
    let mut o = Outliers::default();
    let c = cfg();
    o.evaluate(&c, T0, &p.obs());
    // 5 new flows a second, b3 has 4 of them repeat (80 %). After 3 s the
    // window holds 15 flows (< 20): not yet; after 4 s, 20: ejected.
    for s in 1..=3 {
        p.second(5, &[(3, 4)]);
        assert!(o.evaluate(&c, T0 + s * S, &p.obs()).is_empty(), "{s} s");
    }
    p.second(5, &[(3, 4)]);
    let ev = o.evaluate(&c, T0 + 4 * S, &p.obs());
    assert_eq!(
        ev,
        vec![OutlierEvent::Ejected {
            backend: "b3".into(),
            new_flows: 20,
            repeated_syns: 16,
            ejections: 1,
            until: T0 + 4 * S + 30 * S,
        }]
    );
    assert!(o.is_ejected("b3"));
    assert_eq!(o.ejected(), vec!["b3"]);
    assert_eq!(o.next_return(), Some(T0 + 34 * S));
    assert_eq!(
        ev[0].to_string(),
        "backend b3 ejected from new flows: 16 repeated SYNs in 20 new flows (80.0%); \
         ejection 1, until 1796000034000 (Unix ms)"
    );
}

#[test]
fn at_the_threshold_or_with_old_failures_nothing_is_ejected() {
    let c = cfg();
    // Exactly 30 %: not above the threshold.
    let mut p = Plane::new(10);
    let mut o = Outliers::default();
    o.evaluate(&c, T0, &p.obs());
    for s in 1..=20 {
        p.second(10, &[(1, 3)]);
        assert!(o.evaluate(&c, T0 + s * S, &p.obs()).is_empty());
    }
    // Failures that left the window do not count: b2 failed 100 % for
    // 3 s (15 flows: too few to judge), then had no traffic for 10 s, then
    // 4 s at exactly 30 %. Counted from the start it would be 27 of 55
    // (49 %), but the window holds only the last 4 s: 12 of 40.
    let mut p = Plane::new(10);
    let mut o = Outliers::default();
    o.evaluate(&c, T0, &p.obs());
    let mut t = T0;
    for _ in 0..3 {
        p.second(5, &[(2, 5)]);
        t += S;
        assert!(o.evaluate(&c, t, &p.obs()).is_empty());
    }
    for _ in 0..10 {
        p.second(0, &[]);
        t += S;
        assert!(o.evaluate(&c, t, &p.obs()).is_empty());
    }
    for _ in 0..4 {
        p.second(10, &[(2, 3)]);
        t += S;
        assert!(o.evaluate(&c, t, &p.obs()).is_empty());
    }
    assert_eq!(o.backends["b2"].window.counts(), (40, 12));
}

#[test]
fn ejection_time_grows_with_each_ejection_up_to_the_cap() {
    let c = cfg();
    let mut p = Plane::new(10);
    let mut o = Outliers::default();
    let mut t = T0;
    o.evaluate(&c, t, &p.obs());
    let mut times = Vec::new();
    for _ in 0..12 {
        // Fail until ejected (the backend gets flows: the counters move).
        let ejected_at = loop {
            p.second(10, &[(0, 10)]);
            t += S;
            let ev = o.evaluate(&c, t, &p.obs());
            if !ev.is_empty() {
                assert_eq!(ejected_names(&ev), vec!["b0".to_string()]);
                break t;
            }
        };
        let until = o.next_return().unwrap();
        times.push((until - ejected_at) / S);
        // Not back a millisecond early.
        assert!(o.evaluate(&c, until - 1, &p.obs()).is_empty());
        assert!(o.is_ejected("b0"));
        t = until;
        let ev = o.evaluate(&c, t, &p.obs());
        assert_eq!(
            ev,
            vec![OutlierEvent::Returned {
                backend: "b0".into(),
                at: t
            }]
        );
        assert!(!o.is_ejected("b0"));
    }
    assert_eq!(
        times,
        vec![30, 60, 90, 120, 150, 180, 210, 240, 270, 300, 300, 300]
    );
}

#[test]
fn the_multiplier_decays_while_the_backend_stays_in_service() {
    let c = cfg();
    let mut p = Plane::new(10);
    let mut o = Outliers::default();
    let mut t = T0;
    o.evaluate(&c, t, &p.obs());
    let eject = |o: &mut Outliers, p: &mut Plane, t: &mut u64| -> u32 {
        loop {
            p.second(10, &[(0, 10)]);
            *t += S;
            for e in o.evaluate(&c, *t, &p.obs()) {
                if let OutlierEvent::Ejected { ejections, .. } = e {
                    return ejections;
                }
            }
        }
    };
    assert_eq!(eject(&mut o, &mut p, &mut t), 1);
    t = o.next_return().unwrap();
    o.evaluate(&c, t, &p.obs());
    assert_eq!(eject(&mut o, &mut p, &mut t), 2);
    t = o.next_return().unwrap();
    o.evaluate(&c, t, &p.obs());
    assert_eq!(eject(&mut o, &mut p, &mut t), 3);
    t = o.next_return().unwrap();
    o.evaluate(&c, t, &p.obs());
    // 65 s clean in service: two base periods, 3 - 2 + 1 = 2.
    for _ in 0..65 {
        p.second(10, &[]);
        t += S;
        assert!(o.evaluate(&c, t, &p.obs()).is_empty());
    }
    assert_eq!(eject(&mut o, &mut p, &mut t), 2);
    assert_eq!(o.next_return(), Some(t + 60 * S));
}

#[test]
fn at_most_max_ejection_percent_are_out_worst_first() {
    let c = cfg();
    // 20 backends at 10 %: 2 at once. Three fail, b7 worst, then b5, b9.
    let mut p = Plane::new(20);
    let mut o = Outliers::default();
    o.evaluate(&c, T0, &p.obs());
    p.second(30, &[(5, 20), (7, 25), (9, 15)]);
    let ev = o.evaluate(&c, T0 + S, &p.obs());
    assert_eq!(ejected_names(&ev), vec!["b7".to_string(), "b5".to_string()]);
    assert_eq!(
        ev[2],
        OutlierEvent::Capped {
            backend: "b9".into(),
            new_flows: 30,
            repeated_syns: 15,
            out: 2,
            cap: 2
        }
    );
    assert_eq!(
        ev[2].to_string(),
        "backend b9 is an outlier (15 repeated SYNs in 30 new flows, 50.0%) but stays in \
         service: 2 backends are out and max_ejection_percent allows 2"
    );
    assert!(!o.is_ejected("b9"));
    // b9 keeps failing; when b7 and b5 return, it goes.
    let mut t = T0 + S;
    while t < T0 + 31 * S {
        p.second(30, &[(9, 15)]);
        t += S;
        let ev = o.evaluate(&c, t, &p.obs());
        if t < T0 + 31 * S {
            assert!(ejected_names(&ev).is_empty(), "at {t}");
            assert_eq!(o.ejected().len(), 2);
        } else {
            assert_eq!(ev.len(), 3, "{ev:?}");
            assert_eq!(ejected_names(&ev), vec!["b9".to_string()]);
        }
    }
    assert_eq!(o.ejected(), vec!["b9"]);
}

#[test]
fn one_backend_may_always_go_and_health_check_downs_share_the_cap() {
    let c = cfg();
    // 5 backends at 10 %: 0.5, but one may always be ejected.
    assert_eq!(c.cap(5), 1);
    assert_eq!(c.cap(20), 2);
    assert_eq!(c.cap(0), 0);
    let mut p = Plane::new(5);
    let mut o = Outliers::default();
    o.evaluate(&c, T0, &p.obs());
    p.second(30, &[(1, 30), (2, 30)]);
    let ev = o.evaluate(&c, T0 + S, &p.obs());
    assert_eq!(ejected_names(&ev), vec!["b1".to_string()]);

    // 20 backends, 2 down by health checks: the cap is used up.
    let mut p = Plane::new(20);
    p.down[0] = true;
    p.down[1] = true;
    let mut o = Outliers::default();
    o.evaluate(&c, T0, &p.obs());
    p.second(30, &[(4, 30)]);
    let ev = o.evaluate(&c, T0 + S, &p.obs());
    assert!(ejected_names(&ev).is_empty());
    assert!(matches!(
        &ev[..],
        [OutlierEvent::Capped { out: 2, cap: 2, .. }]
    ));
    // A down backend is never a candidate itself.
    let mut p = Plane::new(20);
    p.down[4] = true;
    let mut o = Outliers::default();
    o.evaluate(&c, T0, &p.obs());
    p.second(30, &[(4, 30)]);
    assert!(o.evaluate(&c, T0 + S, &p.obs()).is_empty());
}

#[test]
fn max_ejection_percent_zero_disables_ejection() {
    let c = OutlierConfig {
        max_ejection_percent: 0,
        ..cfg()
    };
    let mut p = Plane::new(10);
    let mut o = Outliers::default();
    o.evaluate(&c, T0, &p.obs());
    p.second(30, &[(1, 30)]);
    let ev = o.evaluate(&c, T0 + S, &p.obs());
    assert!(ejected_names(&ev).is_empty());
    assert!(o.ejected().is_empty());
}

#[test]
fn a_returned_backend_is_judged_on_new_flows_only() {
    let c = cfg();
    let mut p = Plane::new(10);
    let mut o = Outliers::default();
    o.evaluate(&c, T0, &p.obs());
    p.second(30, &[(6, 30)]);
    assert_eq!(ejected_names(&o.evaluate(&c, T0 + S, &p.obs())), vec!["b6"]);
    // While ejected, clients still retry SYNs of flows already pinned to
    // it: its repeated-SYN counter keeps rising without new flows.
    let mut t = T0 + S;
    while t < T0 + 31 * S {
        p.repeated[6] += 5;
        t += S;
        o.evaluate(&c, t, &p.obs());
    }
    assert!(!o.is_ejected("b6"));
    // Back, and clean: not ejected again.
    for _ in 0..15 {
        p.second(10, &[]);
        t += S;
        assert!(o.evaluate(&c, t, &p.obs()).is_empty());
    }
}

#[test]
fn counter_resets_and_removed_backends() {
    let c = cfg();
    let mut p = Plane::new(10);
    let mut o = Outliers::default();
    p.second(1000, &[]);
    o.evaluate(&c, T0, &p.obs());
    // The data plane's counters restart from 0 (maps recreated): no
    // underflow, no ejection from a bogus difference.
    let mut q = Plane::new(10);
    q.second(10, &[(2, 1)]);
    assert!(o.evaluate(&c, T0 + S, &q.obs()).is_empty());
    assert_eq!(o.backends["b2"].window.counts(), (0, 0));
    q.second(10, &[(2, 9)]);
    q.second(10, &[(2, 9)]);
    let ev = o.evaluate(&c, T0 + 2 * S, &q.obs());
    assert_eq!(ejected_names(&ev), vec!["b2"]);
    // A backend no longer in the service is forgotten.
    let fewer = &q.obs()[..2];
    o.evaluate(&c, T0 + 3 * S, fewer);
    assert_eq!(o.backends.len(), 2);
    assert!(o.ejected().is_empty());
}

#[test]
fn ejection_survives_a_restart_and_apply_marks_it_unhealthy() {
    let c = cfg();
    let mut svc = ordered(&[r("a", 3, 3)]);
    let names: Vec<String> = svc.regions[0]
        .backends
        .iter()
        .map(|b| b.name.clone())
        .collect();
    let obs = |n: u64, bad: u64| -> Vec<Observation<'_>> {
        names
            .iter()
            .enumerate()
            .map(|(i, b)| Observation {
                backend: b,
                new_flows: n,
                repeated_syns: if i == 1 { bad } else { 0 },
                down: false,
            })
            .collect()
    };
    let mut o = Outliers::default();
    o.evaluate(&c, T0, &obs(0, 0));
    assert_eq!(
        ejected_names(&o.evaluate(&c, T0 + S, &obs(40, 40))).len(),
        1
    );
    let saved = serde_json::to_string(&o).unwrap();
    let mut r: Outliers = serde_json::from_str(&saved).unwrap();
    assert!(r.is_ejected(&names[1]));
    r.apply(&mut svc);
    let healthy: Vec<bool> = svc.regions[0].backends.iter().map(|b| b.healthy).collect();
    assert_eq!(healthy, vec![true, false, true]);
    // After the restart, it returns when its time is up.
    assert!(r.evaluate(&c, T0 + 30 * S, &obs(40, 40)).is_empty());
    assert_eq!(
        r.evaluate(&c, T0 + 31 * S, &obs(40, 40)),
        vec![OutlierEvent::Returned {
            backend: names[1].clone(),
            at: T0 + 31 * S
        }]
    );
}

#[test]
fn the_counter_window_slides_and_restarts() {
    let mut w = CounterWindow::default();
    assert_eq!(w.counts(), (0, 0));
    w.push(T0, 100, 10, 10 * S);
    w.push(T0 + 5 * S, 150, 12, 10 * S);
    assert_eq!(w.counts(), (50, 2));
    // The sample at T0 is exactly 10 s old: still the window's start.
    w.push(T0 + 10 * S, 170, 20, 10 * S);
    assert_eq!(w.counts(), (70, 10));
    // One millisecond later it is gone: the start is T0 + 5 s.
    w.push(T0 + 10 * S + 1, 170, 20, 10 * S);
    assert_eq!(w.counts(), (20, 8));
    w.restart();
    assert_eq!(w.counts(), (0, 0));
    w.push(T0 + 11 * S, 171, 21, 10 * S);
    assert_eq!(w.counts(), (1, 1));
    // A reset counter restarts the window rather than underflowing.
    w.push(T0 + 12 * S, 3, 0, 10 * S);
    assert_eq!(w.counts(), (0, 0));
    // So does a clock going backwards.
    w.push(T0 + 13 * S, 10, 5, 10 * S);
    assert_eq!(w.counts(), (7, 5));
    w.push(T0, 11, 5, 10 * S);
    assert_eq!(w.counts(), (0, 0));
}
