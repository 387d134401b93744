//! `compose` and `explain_slot`: the table matches the decision, moves few
//! slots on a change, and is a pure function of the inputs.

mod common;

use common::cases::{cases, ordered, weighted};
use common::*;
use steer_common::NO_REAL;
use steer_policy::{
    compose, decide, explain_slot, ClassIn, HopAction, Outcome, PolicyIn, ServiceIn,
};

/// Over every case of the table: the slot shares per region are within 0.5
/// points of `decide`'s final shares, and a served table has no empty slot.
#[test]
fn shares_within_half_a_point_of_decide() {
    let mut worst = 0.0f64;
    for c in cases() {
        let d = decide(&c.svc, &c.class);
        let t = compose(&c.svc, &d, RING);
        assert_eq!(t.len(), RING as usize);
        match d.outcome {
            Outcome::Serve | Outcome::FailOpen => {
                assert!(t.iter().all(|&v| v != NO_REAL), "{}: empty slot", c.name)
            }
            Outcome::DropNoHealthy => {
                assert!(t.iter().all(|&v| v == NO_REAL), "{}", c.name);
                continue;
            }
            Outcome::DropResidency => continue,
        }
        let got = table_shares(&c.svc, &t);
        for (i, g) in got.iter().enumerate() {
            let err = (g - d.share(i)).abs();
            worst = worst.max(err);
            assert!(
                err <= 0.005,
                "{}: region {i} table {g:.5} vs decide {:.5}",
                c.name,
                d.share(i)
            );
        }
    }
    println!("worst share error: {:.4} points", worst * 100.0);
}

/// Unhealthy backends get slots only in a region that spreads over all
/// its backends (panic, fail-open), and there in proportion to weight.
#[test]
fn unhealthy_backends_only_in_panic_or_fail_open() {
    for c in cases() {
        let d = decide(&c.svc, &c.class);
        if !matches!(d.outcome, Outcome::Serve | Outcome::FailOpen) {
            continue;
        }
        let t = compose(&c.svc, &d, 4099);
        for (ri, reg) in c.svc.regions.iter().enumerate() {
            let spread = d.region(ri).is_some_and(|r| r.spread_all);
            let in_region = t
                .iter()
                .filter(|&&v| reg.backends.iter().any(|b| b.index == v));
            let on_down = in_region
                .clone()
                .filter(|&&v| reg.backends.iter().any(|b| b.index == v && !b.healthy))
                .count();
            if !spread {
                assert_eq!(on_down, 0, "{}: region {ri} sends to down backends", c.name);
            } else if d.outcome == Outcome::Serve || d.region(ri).unwrap().share > 0.0 {
                // Spread by weight (all 1 here): the down fraction of the
                // region's slots is about the down fraction of its backends.
                let total = in_region.count();
                let down = reg
                    .backends
                    .iter()
                    .filter(|b| !b.healthy && b.weight > 0)
                    .count() as f64
                    / reg.backends.len() as f64;
                let f = on_down as f64 / total as f64;
                assert!(
                    (f - down).abs() < 0.05,
                    "{}: region {ri}: {f:.3} of its slots on down backends, want {down:.3}",
                    c.name
                );
            }
        }
    }
}

/// Changing one dial d -> d' moves at most |d - d'| × (share reaching the
/// region) + 1 % of the slots, in both directions.
#[test]
fn dial_change_moves_at_most_its_share() {
    let scenarios: Vec<(&str, ServiceIn, usize, u8)> = vec![
        (
            "first region 100->70",
            ordered(&[r("A", 8, 8), r("B", 8, 8), r("C", 8, 8)]),
            0,
            70,
        ),
        (
            "first region 100->0",
            ordered(&[r("A", 8, 8), r("B", 8, 8)]),
            0,
            0,
        ),
        (
            "spill target 100->40",
            ordered(&[r("A", 10, 5), r("B", 10, 10), r("C", 10, 10)]),
            1,
            40,
        ),
        (
            "cascade 100->20",
            ordered(&[r("A", 8, 8).dial(50), r("B", 8, 8), r("C", 8, 8)]),
            1,
            20,
        ),
        (
            "past last 50->10",
            ordered(&[r("A", 10, 5).dial(50), r("B", 10, 10).dial(50)]),
            1,
            10,
        ),
        (
            "with capacity 100->50",
            ordered(&[r("A", 8, 8).keep(0.6), r("B", 8, 8), r("C", 8, 8).keep(0.5)]),
            0,
            50,
        ),
        (
            "downstream dials and capacity 100->60",
            ordered(&[
                r("A", 8, 8),
                r("B", 8, 8).dial(50).keep(0.8),
                r("C", 8, 8).dial(70),
            ]),
            0,
            60,
        ),
        (
            "weighted 100->60",
            weighted(&[1, 1, 2], &[r("A", 8, 8), r("B", 8, 8), r("C", 8, 8)]),
            1,
            60,
        ),
        (
            "failover tier 100->30",
            svc(
                PolicyIn::Failover(vec![vec![0, 1], vec![2]]),
                &[r("A", 8, 8), r("B", 8, 8), r("C", 8, 8)],
            ),
            0,
            30,
        ),
    ];
    for (name, before, region, dial) in scenarios {
        let mut after = before.clone();
        after.regions[region].dial = dial;
        for (x, y) in [(&before, &after), (&after, &before)] {
            let dx = decide(x, &ClassIn::default());
            let dy = decide(y, &ClassIn::default());
            let tx = compose(x, &dx, RING);
            let ty = compose(y, &dy, RING);
            let reach = dx.region(region).unwrap().reach;
            let delta =
                (x.regions[region].dial as f64 - y.regions[region].dial as f64).abs() / 100.0;
            let bound = delta * reach + 0.01;
            let m = moved(&tx, &ty);
            println!(
                "{name}: moved {:.2}% (bound {:.2}%)",
                m * 100.0,
                bound * 100.0
            );
            assert!(m <= bound, "{name}: moved {m:.4} > {bound:.4}");
            // And it moved at least the change of the region's share.
            let change = (dx.share(region) - dy.share(region)).abs();
            assert!(
                change > 0.05 && m >= change - 0.001,
                "{name}: moved {m:.4}, share changed {change:.4}"
            );
        }
    }
}

/// The slots holding `index` in a table.
fn own_share(t: &[u32], index: u32) -> f64 {
    t.iter().filter(|&&v| v == index).count() as f64 / t.len() as f64
}

fn backend_down(s: &ServiceIn, region: usize, backend: usize) -> ServiceIn {
    let mut s = s.clone();
    s.regions[region].backends[backend].healthy = false;
    s
}

/// While the region stays saturated (health 1), one backend going down
/// moves at most its own share + 1 %.
#[test]
fn backend_down_moves_at_most_its_share_when_saturated() {
    let scenarios: Vec<(&str, ServiceIn, ClassIn)> = vec![
        (
            "ordered",
            ordered(&[r("A", 10, 10), r("B", 10, 10)]),
            ClassIn::default(),
        ),
        (
            "ordered, dial",
            ordered(&[r("A", 10, 10).dial(60), r("B", 10, 10)]),
            ClassIn::default(),
        ),
        (
            "weighted",
            weighted(&[1, 1], &[r("A", 10, 10), r("B", 10, 10)]),
            ClassIn::default(),
        ),
        (
            "failover tier",
            svc(
                PolicyIn::Failover(vec![vec![0, 1]]),
                &[r("A", 10, 10), r("B", 10, 10)],
            ),
            ClassIn::default(),
        ),
        (
            "capacity",
            ordered(&[r("A", 10, 10).keep(0.7), r("B", 10, 10)]),
            ClassIn::default(),
        ),
        (
            "maglev",
            svc(PolicyIn::Maglev, &[r("A", 10, 10), r("B", 10, 10)]),
            ClassIn::default(),
        ),
    ];
    for (name, before, class) in scenarios {
        for (region, backend) in [(0, 0usize), (0, 3), (0, 9), (1, 4)] {
            let after = backend_down(&before, region, backend);
            let db = decide(&before, &class);
            let da = decide(&after, &class);
            let tb = compose(&before, &db, RING);
            let ta = compose(&after, &da, RING);
            let own = own_share(&tb, before.regions[region].backends[backend].index);
            let m = moved(&tb, &ta);
            println!(
                "{name}, region {region} backend {backend}: moved {:.2}%, its share {:.2}%",
                m * 100.0,
                own * 100.0
            );
            assert!(m <= own + 0.01, "{name}: moved {m:.4} > own {own:.4} + 1%");
            assert!(m >= own, "{name}: its own slots must move");
            if own == 0.0 {
                // A backend with no slots (B idle behind a saturated A)
                // going down moves nothing.
                assert_eq!(m, 0.0, "{name}");
            }
        }
    }
}

/// In the spill regime (the region below 1/overprovisioning healthy) a
/// backend going down also lowers the region's step-1 load, so slots move
/// between regions as well. Measured, not bounded by the saturated rule:
/// the figures are printed, and the assertion guards the measured level.
#[test]
fn backend_down_in_the_spill_regime_measured() {
    for (total, healthy) in [(10usize, 5usize), (10, 7), (10, 6), (20, 10)] {
        let before = ordered(&[r("A", total, healthy), r("B", 10, 10)]);
        let after = backend_down(&before, 0, healthy - 1);
        let db = decide(&before, &ClassIn::default());
        let da = decide(&after, &ClassIn::default());
        let tb = compose(&before, &db, RING);
        let ta = compose(&after, &da, RING);
        let own = own_share(&tb, before.regions[0].backends[healthy - 1].index);
        let shift = db.share(0) - da.share(0);
        let m = moved(&tb, &ta);
        println!(
            "A {healthy}/{total} -> {}/{total}: moved {:.2}%, its own share {:.2}%, A's load fell {:.2} points",
            healthy - 1,
            m * 100.0,
            own * 100.0,
            shift * 100.0
        );
        // The ideal is `own` (each healthy backend of A keeps the same
        // load, op / total, so only the down backend's slots need to move).
        assert!(m <= own * 1.6 + 0.01, "moved {m:.4}, own {own:.4}");
    }
}

/// Two hosts with equal inputs build byte-identical tables; the hashes are
/// keyed by region name and backend name, not by position: listing the
/// regions in another order (same class order by name) gives the same table.
#[test]
fn identical_inputs_identical_bytes() {
    let s = ordered(&[
        r("eu", 6, 4).dial(70),
        r("us", 8, 8).keep(0.8),
        r("ap", 5, 5),
    ]);
    let class = ClassIn {
        order: Some(vec![0, 1, 2]),
        allowed: None,
    };
    let t1 = compose(&s, &decide(&s, &class), RING);
    let t2 = compose(&s.clone(), &decide(&s.clone(), &class.clone()), RING);
    assert_eq!(t1, t2);
    // The same service with its regions listed as [ap, eu, us].
    let mut p = s.clone();
    p.regions = vec![
        s.regions[2].clone(),
        s.regions[0].clone(),
        s.regions[1].clone(),
    ];
    let pclass = ClassIn {
        order: Some(vec![1, 2, 0]),
        allowed: None,
    };
    let t3 = compose(&p, &decide(&p, &pclass), RING);
    assert_eq!(t1, t3, "the table depends on region positions");
    // And a different region name does change it (the test can fail).
    let mut n = s.clone();
    n.regions[0].name = "eu-2".into();
    assert_ne!(t1, compose(&n, &decide(&n, &class), RING));
}

/// `explain_slot` agrees with `compose` on every slot, and its path is
/// consistent: the first hop is the step-1 region, the last hop keeps the
/// slot in the final region unless it spilled past the last region.
#[test]
fn explain_agrees_with_compose() {
    let size = 1009;
    let s = ordered(&[
        r("A", 10, 5).dial(60).keep(0.7),
        r("B", 4, 0),
        r("C", 6, 6).dial(50),
        r("D", 6, 6).keep(0.5),
    ]);
    let d = decide(&s, &ClassIn::default());
    assert!(
        d.fallback > 0.0,
        "the scenario must spill past the last region"
    );
    let t = compose(&s, &d, size);
    let mut seen = [0usize; 4];
    for slot in 0..size {
        let p = explain_slot(&s, &d, size, slot);
        assert_eq!(p.backend, t[slot as usize], "slot {slot}");
        assert_eq!(p.step1, Some(p.hops[0].region), "slot {slot}: {p:?}");
        let last = p.hops.last().unwrap();
        if p.fallback {
            assert_ne!(last.action, HopAction::Kept, "slot {slot}: {p:?}");
        } else {
            assert_eq!(last.action, HopAction::Kept, "slot {slot}: {p:?}");
            assert_eq!(Some(last.region), p.region, "slot {slot}: {p:?}");
        }
        for h in &p.hops {
            seen[match h.action {
                HopAction::Kept => 0,
                HopAction::DialSpill => 1,
                HopAction::CapacitySpill => 2,
                HopAction::NotServing => 3,
            }] += 1;
        }
        let region = p.region.unwrap();
        assert!(s.regions[region]
            .backends
            .iter()
            .any(|b| b.index == p.backend));
    }
    assert!(
        seen.iter().all(|&n| n > 0),
        "every hop kind appears: {seen:?}"
    );
}

/// `explain_slot` for drop outcomes names the drop value.
#[test]
fn explain_drops() {
    let s = common::cases::drop_mode(ordered(&[r("A", 4, 0)]));
    let d = decide(&s, &ClassIn::default());
    let p = explain_slot(&s, &d, 13, 5);
    assert_eq!(p.outcome, Outcome::DropNoHealthy);
    assert_eq!(p.backend, NO_REAL);
    let d = decide(
        &s,
        &ClassIn {
            order: None,
            allowed: Some(vec![0]),
        },
    );
    let p = explain_slot(&s, &d, 13, 5);
    assert_eq!(p.outcome, Outcome::DropResidency);
    assert_eq!(p.backend, steer_policy::RESIDENCY_DROP);
}

/// Over every case of the table (every policy, panic, fail-open, drops,
/// residency): `explain_slot` gives the table's value and a path that ends
/// in the region holding that backend.
#[test]
fn explain_agrees_with_compose_for_every_case() {
    let size = 1009;
    for c in cases() {
        let d = decide(&c.svc, &c.class);
        let t = compose(&c.svc, &d, size);
        let of = region_of(&c.svc);
        for slot in (0..size).step_by(37) {
            let p = explain_slot(&c.svc, &d, size, slot);
            assert_eq!(p.backend, t[slot as usize], "{}: slot {slot}", c.name);
            assert_eq!(p.outcome, d.outcome, "{}", c.name);
            match d.outcome {
                Outcome::Serve | Outcome::FailOpen => {
                    assert_eq!(
                        p.region,
                        Some(of[p.backend as usize]),
                        "{}: slot {slot}: {p:?}",
                        c.name
                    );
                    assert_eq!(
                        p.step1,
                        Some(p.hops[0].region),
                        "{}: slot {slot}: {p:?}",
                        c.name
                    );
                }
                Outcome::DropNoHealthy | Outcome::DropResidency => {
                    assert_eq!(p.region, None, "{}", c.name);
                    assert!(p.hops.is_empty(), "{}", c.name);
                }
            }
        }
    }
}

/// The spill regime's floor, measured against what is proven
/// (docs/policies.md, "A floor no table can beat"): region A of `n` equal
/// backends ahead of a healthy B, overprovisioning 1.4. For every set of
/// two healthy backends {i, l} and each of them going down, the excess of
/// the move (moved − the down backend's own share) is measured. The proof
/// says the n (n − 1) excesses of these transitions sum to at least
/// overprovisioning − 1 = 0.4 in *any* family of tables with the decided
/// region shares, so the worst is at least 0.4 / (n (n − 1)): 6.67 % for
/// n = 3, 3.33 % for 4, 2 % for 5, 1.33 % for 6 — over the 1 %.
/// The test checks the composer's tables against the sum (so the proof
/// and the measurement agree on an instance) and guards the composer's
/// measured worst case against regressions.
#[test]
fn spill_regime_excess_against_the_proven_floor() {
    // Guards: the composer's measured worst (10.07, 6.84, 5.14, 4.08 %)
    // plus about one point.
    for (n, guard) in [(3usize, 0.11), (4, 0.08), (5, 0.062), (6, 0.051)] {
        let mut sum = 0.0;
        let mut worst: f64 = 0.0;
        for i in 0..n {
            for l in (i + 1)..n {
                // A with exactly i and l healthy.
                let mut pair = ordered(&[r("A", n, n), r("B", 10, 10)]);
                for (x, b) in pair.regions[0].backends.iter_mut().enumerate() {
                    b.healthy = x == i || x == l;
                }
                let dp = decide(&pair, &ClassIn::default());
                // Both states spill: A's load is 1.4 × healthy / n.
                assert!((dp.share(0) - 1.4 * 2.0 / n as f64).abs() < 1e-9);
                let tp = compose(&pair, &dp, RING);
                for down in [i, l] {
                    let single = backend_down(&pair, 0, down);
                    let ds = decide(&single, &ClassIn::default());
                    assert!((ds.share(0) - 1.4 / n as f64).abs() < 1e-9);
                    let ts = compose(&single, &ds, RING);
                    let own = own_share(&tp, pair.regions[0].backends[down].index);
                    let excess = moved(&tp, &ts) - own;
                    assert!(excess >= -1e-9, "the down backend's slots all move");
                    sum += excess;
                    worst = worst.max(excess);
                }
            }
        }
        let floor = 0.4 / (n * (n - 1)) as f64;
        println!(
            "n = {n}: worst excess {:.2} % (proven floor {:.2} %), sum over the {} transitions {:.3} (proven >= 0.400)",
            worst * 100.0,
            floor * 100.0,
            n * (n - 1),
            sum
        );
        // Slot rounding (1 / 65537 per slot) is far below the margin.
        assert!(
            sum >= 0.4 - 1e-3,
            "n = {n}: sum {sum:.4} below the proven 0.4"
        );
        assert!(worst >= floor - 1e-3, "n = {n}");
        assert!(
            worst <= guard,
            "n = {n}: worst excess {worst:.4} over {guard}"
        );
    }
}
