//! Slow start with a fake clock.

mod common;

use common::cases::ordered;
use common::*;
use steer_policy::slowstart::{SlowStart, SlowStartConfig};
use steer_policy::{compose, decide};

const T0: u64 = 1_796_000_000_000;

fn cfg() -> SlowStartConfig {
    SlowStartConfig {
        window_ms: 10_000,
        min_weight_percent: 10,
        steps: 10,
    }
}

#[test]
fn the_ramp_is_linear_in_steps_from_the_minimum() {
    let mut s = SlowStart::default();
    s.begin("b1", T0);
    let c = cfg();
    for (t, step) in [
        (0, 1),
        (999, 1),
        (1_000, 1),
        (1_999, 1),
        (2_000, 2),
        (5_500, 5),
        (9_999, 9),
        (10_000, 10),
        (60_000, 10),
    ] {
        assert_eq!(s.step(&c, "b1", T0 + t), step, "at {t} ms");
    }
    assert_eq!(s.factor(&c, "b1", T0 + 2_500), 0.2);
    // Not ramping: full weight.
    assert_eq!(s.step(&c, "b2", T0), 10);
    assert_eq!(s.factor(&c, "b2", T0), 1.0);
    // A clock going backwards counts as no time.
    assert_eq!(s.step(&c, "b1", T0 - 5_000), 1);
}

#[test]
fn the_minimum_is_rounded_up_to_a_step_and_never_zero() {
    let with = |min_weight_percent, steps| SlowStartConfig {
        window_ms: 10_000,
        min_weight_percent,
        steps,
    };
    assert_eq!(with(25, 10).min_step(), 3);
    assert_eq!(with(0, 10).min_step(), 1);
    assert_eq!(with(100, 10).min_step(), 10);
    assert_eq!(with(10, 4).min_step(), 1);
    assert_eq!(with(50, 4).min_step(), 2);
    let mut s = SlowStart::default();
    s.begin("b", T0);
    let c = with(25, 10);
    assert_eq!(s.step(&c, "b", T0), 3);
    assert_eq!(s.step(&c, "b", T0 + 3_999), 3);
    assert_eq!(s.step(&c, "b", T0 + 4_000), 4);
    // 100 %: no ramp at all.
    assert_eq!(s.step(&with(100, 10), "b", T0), 10);
}

#[test]
fn a_window_of_zero_disables_slow_start() {
    let mut s = SlowStart::default();
    s.begin("b", T0);
    let c = SlowStartConfig {
        window_ms: 0,
        ..cfg()
    };
    assert_eq!(s.step(&c, "b", T0), c.steps);
    assert_eq!(s.next_change(&c, T0), None);
}

/// Sampled every 50 ms over the window, the step changes only at the
/// times `next_change` announces, at most `steps` times in all.
#[test]
fn next_change_announces_every_change_and_there_are_few() {
    let c = cfg();
    let mut s = SlowStart::default();
    s.begin("b1", T0);
    s.begin("b2", T0 + 1_234);
    let mut changes = 0;
    let mut prev = (s.step(&c, "b1", T0), s.step(&c, "b2", T0));
    let mut due = s.next_change(&c, T0);
    let mut t = T0;
    while t <= T0 + 12_000 {
        let now = (s.step(&c, "b1", t), s.step(&c, "b2", t));
        if now != prev {
            changes += 1;
            let d = due.expect("a change was announced");
            assert!(d <= t && t < d + 50, "changed at {t}, announced {d}");
            due = s.next_change(&c, t);
            prev = now;
        } else if let Some(d) = due {
            assert!(d > t, "announced {d} but nothing changed at {t}");
        }
        t += 50;
    }
    // b1: 1 -> 2 ... -> 10 is 9 changes; b2 the same, at other times.
    assert_eq!(changes, 18);
    assert_eq!(s.next_change(&c, T0 + 12_000), None);
    assert_eq!(s.next_change(&c, T0), Some(T0 + 2_000));
}

#[test]
fn expire_forgets_finished_ramps_and_begin_restarts_one() {
    let c = cfg();
    let mut s = SlowStart::default();
    s.begin("b1", T0);
    s.begin("b2", T0 + 5_000);
    assert!(s.expire(&c, T0 + 9_999).is_empty());
    assert_eq!(s.expire(&c, T0 + 10_000), vec!["b1".to_string()]);
    assert!(!s.ramping.contains_key("b1"));
    assert!(s.ramping.contains_key("b2"));
    // b2 goes down mid-ramp and comes back: its ramp starts over.
    s.end("b2");
    assert_eq!(s.step(&c, "b2", T0 + 12_000), 10);
    s.begin("b2", T0 + 12_000);
    assert_eq!(s.step(&c, "b2", T0 + 12_000), 1);
}

#[test]
fn a_ramp_survives_a_restart() {
    let c = cfg();
    let mut s = SlowStart::default();
    s.begin("b1", T0);
    let saved = serde_json::to_string(&s).unwrap();
    let r: SlowStart = serde_json::from_str(&saved).unwrap();
    // Restarted 6 s later: the ramp went on meanwhile.
    assert_eq!(r.step(&c, "b1", T0 + 6_000), 6);
}

/// The share of the slots a ramping backend gets, from its region's
/// Maglev ring, follows its step.
#[test]
fn a_ramping_backend_gets_its_step_of_the_slots() {
    let c = cfg();
    let svc = ordered(&[r("a", 10, 10)]);
    let d = decide(&svc, &default_class());
    let name = svc.regions[0].backends[0].name.clone();
    let mut s = SlowStart::default();
    s.begin(&name, T0);
    for (t, k) in [(0u64, 1.0), (3_000, 3.0), (7_000, 7.0), (10_000, 10.0)] {
        let ramped = s.ramped(&c, &svc, T0 + t);
        let table = compose(&ramped, &d, RING);
        let got = table.iter().filter(|&&v| v == 0).count() as f64 / table.len() as f64;
        // 9 backends at 10 steps, this one at k.
        let want = k / (90.0 + k);
        assert!((got - want).abs() < 0.005, "at {t} ms: {got} vs {want}");
    }
}

/// Scaling every weight by the same factor leaves Maglev tables as they
/// are: with no backend ramping, `ramped` changes nothing in the tables.
#[test]
fn without_a_ramp_the_tables_are_unchanged() {
    let c = cfg();
    let mut svc = ordered(&[r("a", 7, 6), r("b", 5, 5)]);
    svc.regions[0].backends[2].weight = 3;
    svc.regions[1].backends[1].weight = 0;
    let d = decide(&svc, &default_class());
    let s = SlowStart::default();
    let ramped = s.ramped(&c, &svc, T0);
    assert_eq!(
        ramped.regions[1].backends[1].weight, 0,
        "drained stays drained"
    );
    assert_eq!(ramped.regions[0].backends[2].weight, 30);
    assert_eq!(compose(&ramped, &d, 4099), compose(&svc, &d, 4099));
}
