//! `decide`, table-driven over `common::cases` (expected values worked
//! out by hand there).

mod common;

use common::cases::{cases, ordered};
use common::*;
use steer_policy::{compose, decide, Outcome, RESIDENCY_DROP};
use Outcome::*;

#[test]
fn decide_table() {
    let mut failures = Vec::new();
    for c in cases() {
        let d = decide(&c.svc, &c.class);
        if d.outcome != c.outcome {
            failures.push(format!(
                "{}: outcome {:?}, want {:?}",
                c.name, d.outcome, c.outcome
            ));
            continue;
        }
        for (i, &want) in c.shares.iter().enumerate() {
            let got = d.share(i);
            if (got - want).abs() > 1e-9 {
                failures.push(format!(
                    "{}: region {i} share {got:.6}, want {want:.6}",
                    c.name
                ));
            }
        }
        let total: f64 = d.regions.iter().map(|r| r.share).sum();
        if matches!(c.outcome, Serve | FailOpen) && (total - 1.0).abs() > 1e-9 {
            failures.push(format!("{}: shares add up to {total}", c.name));
        }
        let panic: Vec<usize> = d
            .regions
            .iter()
            .filter(|r| r.panic)
            .map(|r| r.region)
            .collect();
        if panic != c.panic {
            failures.push(format!("{}: panic {panic:?}, want {:?}", c.name, c.panic));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// The decision records each step: health, step-1 load, dial, what
/// reached the region, the share after dials and after capacity.
#[test]
fn decision_records_each_step() {
    // A 50 % healthy: health 0.7, step-1 0.7 / 0.3. Dial A 50 → keeps 0.35
    // (after dials), capacity 0.6 → keeps 0.21; B reaches 0.3 + 0.49.
    let s = ordered(&[r("A", 10, 5).dial(50).keep(0.6), r("B", 10, 10)]);
    let d = decide(&s, &default_class());
    let a = d.region(0).unwrap();
    assert!((a.health - 0.7).abs() < 1e-12);
    assert!((a.healthy_fraction - 0.5).abs() < 1e-12);
    assert!((a.load - 0.7).abs() < 1e-12);
    assert_eq!(a.dial, 50);
    assert!((a.reach - 0.7).abs() < 1e-12);
    assert!((a.after_dials - 0.35).abs() < 1e-12);
    assert!((a.capacity_keep - 0.6).abs() < 1e-12);
    assert!((a.share - 0.21).abs() < 1e-12);
    let b = d.region(1).unwrap();
    assert!((b.load - 0.3).abs() < 1e-12);
    assert!((b.reach - 0.79).abs() < 1e-12);
    assert!((b.after_dials - 0.65).abs() < 1e-12);
    assert!((b.share - 0.79).abs() < 1e-12);
    assert_eq!(d.nth, 1.0);
    assert_eq!(d.order, vec![0, 1]);
}

/// Residency: over every case with an allowed set, no slot of the composed
/// table lands outside the allowed regions (0 violations).
#[test]
fn residency_zero_violations() {
    let mut checked = 0;
    for c in cases() {
        let Some(allowed) = c.class.allowed.clone() else {
            continue;
        };
        let d = decide(&c.svc, &c.class);
        let t = compose(&c.svc, &d, 4099);
        let of = region_of(&c.svc);
        let violations = t
            .iter()
            .filter(|&&v| v != RESIDENCY_DROP && !allowed.contains(&of[v as usize]))
            .count();
        assert_eq!(violations, 0, "{}", c.name);
        if c.outcome == DropResidency {
            assert!(t.iter().all(|&v| v == RESIDENCY_DROP), "{}", c.name);
        } else {
            assert!(t.iter().all(|&v| v != RESIDENCY_DROP), "{}", c.name);
        }
        checked += 1;
    }
    assert!(checked >= 12, "only {checked} residency cases");
}
