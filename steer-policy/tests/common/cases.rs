//! The table of cases shared by the `decide` and `compose` tests. Every
//! expected share is worked out by hand from the formulas (the arithmetic
//! is in the comments), with the Envoy defaults: overprovisioning 1.4,
//! panic threshold 50 %.

use super::*;
use steer_policy::{ClassIn, OnNoHealthy, Outcome, PolicyIn, ServiceIn};
use Outcome::*;

pub struct Case {
    pub name: &'static str,
    pub svc: ServiceIn,
    pub class: ClassIn,
    pub outcome: Outcome,
    /// Final share per region index of the service.
    pub shares: Vec<f64>,
    /// Regions in panic (region indexes).
    pub panic: Vec<usize>,
}

pub fn case(
    name: &'static str,
    svc: ServiceIn,
    class: ClassIn,
    outcome: Outcome,
    shares: &[f64],
) -> Case {
    Case {
        name,
        svc,
        class,
        outcome,
        shares: shares.to_vec(),
        panic: Vec::new(),
    }
}

pub fn with_panic(mut c: Case, p: &[usize]) -> Case {
    c.panic = p.to_vec();
    c
}

pub fn drop_mode(mut s: ServiceIn) -> ServiceIn {
    s.on_no_healthy = OnNoHealthy::Drop;
    s
}

pub fn threshold(mut s: ServiceIn, t: f64) -> ServiceIn {
    s.panic_threshold = t;
    s
}

pub fn weighted(w: &[u32], regions: &[R]) -> ServiceIn {
    svc(PolicyIn::Weighted(w.to_vec()), regions)
}

pub fn ordered(regions: &[R]) -> ServiceIn {
    svc(PolicyIn::Ordered, regions)
}

/// Every case: the worked values, each policy, dials, capacity, panic, all
/// down, drain and residency under each mechanism.
pub fn cases() -> Vec<Case> {
    let d = default_class;
    vec![
        // The worked values, [A, B], B fully healthy, 100 backends
        // each. health(A) = min(1, 1.4 × healthy fraction).
        // 100 %: health 1, NTH 1 → 100/0.
        case(
            "worked 100%",
            ordered(&[r("A", 100, 100), r("B", 100, 100)]),
            d(),
            Serve,
            &[1.0, 0.0],
        ),
        // 72 %: 1.4 × 0.72 = 1.008 → 1 → 100/0.
        case(
            "worked 72%",
            ordered(&[r("A", 100, 72), r("B", 100, 100)]),
            d(),
            Serve,
            &[1.0, 0.0],
        ),
        // 71 %: 1.4 × 0.71 = 0.994; NTH = min(1, 1.994) = 1; B gets 0.006.
        case(
            "worked 71%",
            ordered(&[r("A", 100, 71), r("B", 100, 100)]),
            d(),
            Serve,
            &[0.994, 0.006],
        ),
        // 50 %: 0.7 / 0.3.
        case(
            "worked 50%",
            ordered(&[r("A", 100, 50), r("B", 100, 100)]),
            d(),
            Serve,
            &[0.7, 0.3],
        ),
        // Both 25 %: health 0.35 each, NTH 0.7 → 0.5 each; both below the
        // panic threshold with NTH < 1 → both in panic.
        with_panic(
            case(
                "worked both 25%",
                ordered(&[r("A", 100, 25), r("B", 100, 25)]),
                d(),
                Serve,
                &[0.5, 0.5],
            ),
            &[0, 1],
        ),
        // Envoy's three-level example 25/25/20 %: health 0.35, 0.35, 0.28,
        // NTH 0.98 → 0.357, 0.357, 0.286.
        with_panic(
            case(
                "envoy 25/25/20",
                ordered(&[r("A", 100, 25), r("B", 100, 25), r("C", 100, 20)]),
                d(),
                Serve,
                &[0.35 / 0.98, 0.35 / 0.98, 0.28 / 0.98],
            ),
            &[0, 1, 2],
        ),
        // Envoy's panic example: P0 5 %, P1 65 %: health 0.07, 0.91, NTH
        // 0.98 → 0.0714 / 0.9286; only P0 (5 % < 50 %) panics.
        with_panic(
            case(
                "envoy panic 5/65",
                ordered(&[r("A", 100, 5), r("B", 100, 65)]),
                d(),
                Serve,
                &[0.07 / 0.98, 0.91 / 0.98],
            ),
            &[0],
        ),
        // Panic threshold 0 disables panic: same shares, nobody panics.
        case(
            "panic disabled",
            threshold(ordered(&[r("A", 100, 25), r("B", 100, 25)]), 0.0),
            d(),
            Serve,
            &[0.5, 0.5],
        ),
        // A region with no healthy backend gets nothing.
        case(
            "first region down",
            ordered(&[r("A", 10, 0), r("B", 10, 10)]),
            d(),
            Serve,
            &[0.0, 1.0],
        ),
        // Geo: the class's order [C, A, B]; C healthy takes everything.
        case(
            "geo class order",
            ordered(&[r("A", 10, 10), r("B", 10, 10), r("C", 10, 10)]),
            class(Some(&[2, 0, 1]), None),
            Serve,
            &[0.0, 0.0, 1.0],
        ),
        // Geo: C 50 % healthy → 0.7; the next in the class order (A) 0.3.
        case(
            "geo class order spill",
            ordered(&[r("A", 10, 10), r("B", 10, 10), r("C", 10, 5)]),
            class(Some(&[2, 0, 1]), None),
            Serve,
            &[0.3, 0.0, 0.7],
        ),
        // A class order naming only B: the other regions follow in the
        // default order [A, C], so with B down, A takes everything.
        case(
            "geo partial class order",
            ordered(&[r("A", 10, 10), r("B", 10, 0), r("C", 10, 10)]),
            class(Some(&[1]), None),
            Serve,
            &[1.0, 0.0, 0.0],
        ),
        // Weighted, Envoy's locality example X weight 1, Y weight 2:
        // X 100 %: 1/3, 2/3.
        case(
            "weighted X100",
            weighted(&[1, 2], &[r("X", 100, 100), r("Y", 100, 100)]),
            d(),
            Serve,
            &[1.0 / 3.0, 2.0 / 3.0],
        ),
        // X 70 %: 0.98 / (0.98 + 2) = 0.3289.
        case(
            "weighted X70",
            weighted(&[1, 2], &[r("X", 100, 70), r("Y", 100, 100)]),
            d(),
            Serve,
            &[0.98 / 2.98, 2.0 / 2.98],
        ),
        // X 50 %: 0.7 / 2.7 = 0.2593.
        case(
            "weighted X50",
            weighted(&[1, 2], &[r("X", 100, 50), r("Y", 100, 100)]),
            d(),
            Serve,
            &[0.7 / 2.7, 2.0 / 2.7],
        ),
        // X 25 %: 0.35 / 2.35 = 0.1489. Over the regions in use 125 of 200
        // backends are healthy: NTH = min(1, 1.4 × 0.625) = 0.875 < 1, and
        // X (25 % < 50 %) panics.
        with_panic(
            case(
                "weighted X25",
                weighted(&[1, 2], &[r("X", 100, 25), r("Y", 100, 100)]),
                d(),
                Serve,
                &[0.35 / 2.35, 2.0 / 2.35],
            ),
            &[0],
        ),
        // Route 53: all weights 0 → equal shares.
        case(
            "weighted all zero",
            weighted(&[0, 0, 0], &[r("A", 4, 4), r("B", 4, 4), r("C", 4, 4)]),
            d(),
            Serve,
            &[1.0 / 3.0, 1.0 / 3.0, 1.0 / 3.0],
        ),
        // Route 53: a weight-0 region is a standby, unused while a non-zero
        // region has a healthy backend...
        // (A alone is in use, 1 of 4 healthy: NTH = 1.4 × 0.25 = 0.35 < 1
        // and 25 % < 50 % → A panics rather than spilling to B.)
        with_panic(
            case(
                "weighted standby unused",
                weighted(&[1, 0], &[r("A", 4, 1), r("B", 4, 4)]),
                d(),
                Serve,
                &[1.0, 0.0],
            ),
            &[0],
        ),
        // ...and used when none has.
        case(
            "weighted standby used",
            weighted(&[2, 1, 0], &[r("A", 4, 0), r("B", 4, 0), r("C", 4, 4)]),
            d(),
            Serve,
            &[0.0, 0.0, 1.0],
        ),
        // A region with no healthy backend gets nothing; the others share
        // by weight: B 1/3, C 2/3.
        case(
            "weighted region down",
            weighted(&[1, 1, 2], &[r("A", 4, 0), r("B", 4, 4), r("C", 4, 4)]),
            d(),
            Serve,
            &[0.0, 1.0 / 3.0, 2.0 / 3.0],
        ),
        // Failover tiers [[A], [B, C]]: A 50 % → 0.7; tier 2 takes 0.3,
        // split by healthy weight: B 10, C 5 → 0.2, 0.1.
        case(
            "failover tier split",
            svc(
                PolicyIn::Failover(vec![vec![0], vec![1, 2]]),
                &[r("A", 10, 5), r("B", 10, 10), r("C", 10, 5)],
            ),
            d(),
            Serve,
            &[0.7, 0.2, 0.1],
        ),
        // Tier health is over all its regions: [[A, B], [C]], A healthy, B
        // down → tier 1 is 10/20 = 50 % healthy → 0.7 (all to A); C 0.3.
        case(
            "failover tier health",
            svc(
                PolicyIn::Failover(vec![vec![0, 1], vec![2]]),
                &[r("A", 10, 10), r("B", 10, 0), r("C", 10, 10)],
            ),
            d(),
            Serve,
            &[0.7, 0.0, 0.3],
        ),
        // Tier order, not region order: [[C], [A, B]], C healthy → C.
        case(
            "failover tier order",
            svc(
                PolicyIn::Failover(vec![vec![2], vec![0, 1]]),
                &[r("A", 10, 10), r("B", 10, 10), r("C", 10, 10)],
            ),
            d(),
            Serve,
            &[0.0, 0.0, 1.0],
        ),
        // Dials: A keeps 50 %, the rest spills to B.
        case(
            "dial 50",
            ordered(&[r("A", 4, 4).dial(50), r("B", 4, 4), r("C", 4, 4)]),
            d(),
            Serve,
            &[0.5, 0.5, 0.0],
        ),
        case(
            "dial 100",
            ordered(&[r("A", 4, 4).dial(100), r("B", 4, 4)]),
            d(),
            Serve,
            &[1.0, 0.0],
        ),
        case(
            "dial 0",
            ordered(&[r("A", 4, 4).dial(0), r("B", 4, 4), r("C", 4, 4)]),
            d(),
            Serve,
            &[0.0, 1.0, 0.0],
        ),
        // Cascade: A = 0, B = 0 → C gets everything.
        case(
            "dial cascade",
            ordered(&[r("A", 4, 4).dial(0), r("B", 4, 4).dial(0), r("C", 4, 4)]),
            d(),
            Serve,
            &[0.0, 0.0, 1.0],
        ),
        // Past the last region: every dial 0 → back by step-1 load (A 1).
        case(
            "dial all zero",
            ordered(&[r("A", 4, 4).dial(0), r("B", 4, 4).dial(0)]),
            d(),
            Serve,
            &[1.0, 0.0],
        ),
        // A 50 % healthy (0.7 / 0.3), dials 50 / 50: A keeps 0.35; B gets
        // 0.3 + 0.35 = 0.65 and keeps 0.325; 0.325 goes back by step-1
        // load: A 0.35 + 0.2275 = 0.5775, B 0.325 + 0.0975 = 0.4225.
        case(
            "dial past last",
            ordered(&[r("A", 10, 5).dial(50), r("B", 10, 10).dial(50)]),
            d(),
            Serve,
            &[0.5775, 0.4225],
        ),
        // Spill passes a region with no healthy backend: A keeps 0.5, B is
        // down, C takes 0.5.
        case(
            "dial over a down region",
            ordered(&[r("A", 4, 4).dial(50), r("B", 4, 0), r("C", 4, 4)]),
            d(),
            Serve,
            &[0.5, 0.0, 0.5],
        ),
        // Capacity: A keeps 0.6, B 0.4.
        case(
            "capacity",
            ordered(&[r("A", 4, 4).keep(0.6), r("B", 4, 4)]),
            d(),
            Serve,
            &[0.6, 0.4],
        ),
        // Capacity after the dial: 0.5 × 0.6 = 0.3; B 0.7.
        case(
            "capacity after dial",
            ordered(&[r("A", 4, 4).dial(50).keep(0.6), r("B", 4, 4)]),
            d(),
            Serve,
            &[0.3, 0.7],
        ),
        // Capacity spill past last: A keeps 0.5, B 0.25 of 0.5, 0.25 back
        // to A (step-1 load 1) → 0.75 / 0.25.
        case(
            "capacity past last",
            ordered(&[r("A", 4, 4).keep(0.5), r("B", 4, 4).keep(0.5)]),
            d(),
            Serve,
            &[0.75, 0.25],
        ),
        // All regions down, fail-open: first region of the order.
        case(
            "all down fail-open",
            ordered(&[r("A", 4, 0), r("B", 4, 0)]),
            d(),
            FailOpen,
            &[1.0, 0.0],
        ),
        case(
            "all down fail-open class order",
            ordered(&[r("A", 4, 0), r("B", 4, 0)]),
            class(Some(&[1, 0]), None),
            FailOpen,
            &[0.0, 1.0],
        ),
        // Weighted fail-open: every region by weight (1 : 3).
        case(
            "all down fail-open weighted",
            weighted(&[1, 3], &[r("A", 4, 0), r("B", 4, 0)]),
            d(),
            FailOpen,
            &[0.25, 0.75],
        ),
        // Failover fail-open: the first tier's first region (tier order).
        case(
            "all down fail-open failover",
            svc(
                PolicyIn::Failover(vec![vec![1], vec![0]]),
                &[r("A", 4, 0), r("B", 4, 0)],
            ),
            d(),
            FailOpen,
            &[0.0, 1.0],
        ),
        // Dials do not apply in fail-open.
        case(
            "fail-open ignores dials",
            ordered(&[r("A", 4, 0).dial(0), r("B", 4, 0)]),
            d(),
            FailOpen,
            &[1.0, 0.0],
        ),
        case(
            "all down drop",
            drop_mode(ordered(&[r("A", 4, 0), r("B", 4, 0)])),
            d(),
            DropNoHealthy,
            &[0.0, 0.0],
        ),
        // Region drain: A leaves the order.
        case(
            "drain",
            ordered(&[r("A", 4, 4).drained(), r("B", 4, 4)]),
            d(),
            Serve,
            &[0.0, 1.0],
        ),
        case(
            "drain all",
            ordered(&[r("A", 4, 4).drained(), r("B", 4, 4).drained()]),
            d(),
            DropNoHealthy,
            &[0.0, 0.0],
        ),
        // Maglev policy: by healthy weight over every region, dials ignored.
        case(
            "maglev",
            svc(PolicyIn::Maglev, &[r("A", 10, 10).dial(0), r("B", 10, 5)]),
            d(),
            Serve,
            &[10.0 / 15.0, 5.0 / 15.0],
        ),
        // Residency: allowed [B, C] of [A, B, C]; A healthy but cut.
        case(
            "residency cut",
            ordered(&[r("A", 4, 4), r("B", 4, 4), r("C", 4, 4)]),
            class(None, Some(&[1, 2])),
            Serve,
            &[0.0, 1.0, 0.0],
        ),
        // Spill: B 30 % healthy would spill to A; the cut order is [B]:
        // health 0.42 = NTH, load 1; 30 % < 50 % → panic inside B.
        with_panic(
            case(
                "residency spill",
                ordered(&[r("A", 10, 10), r("B", 10, 3)]),
                class(Some(&[1, 0]), Some(&[1])),
                Serve,
                &[0.0, 1.0],
            ),
            &[1],
        ),
        // Spill inside the allowed set: class order [B, A, C], allowed
        // [B, C]: the cut order is [B, C]; B 50 % healthy → 0.7, and the
        // 0.3 spills to C, not to A (next in the class order).
        case(
            "residency spill within allowed",
            ordered(&[r("A", 10, 10), r("B", 10, 5), r("C", 10, 10)]),
            class(Some(&[1, 0, 2]), Some(&[1, 2])),
            Serve,
            &[0.0, 0.7, 0.3],
        ),
        // Dials: B dial 0 → past the last (only) region → back to B.
        case(
            "residency dial",
            ordered(&[r("A", 4, 4), r("B", 4, 4).dial(0)]),
            class(Some(&[1, 0]), Some(&[1])),
            Serve,
            &[0.0, 1.0],
        ),
        // Capacity: B keeps 0.1; the rest goes back to B.
        case(
            "residency capacity",
            ordered(&[r("A", 4, 4), r("B", 4, 4).keep(0.1)]),
            class(Some(&[1, 0]), Some(&[1])),
            Serve,
            &[0.0, 1.0],
        ),
        // Residency with a dial inside the allowed set: [B, C], B dial 30.
        case(
            "residency dial inside",
            ordered(&[r("A", 4, 4), r("B", 4, 4).dial(30), r("C", 4, 4)]),
            class(Some(&[0, 1, 2]), Some(&[1, 2])),
            Serve,
            &[0.0, 0.3, 0.7],
        ),
        // Fail-open stays in the allowed regions.
        case(
            "residency fail-open",
            ordered(&[r("A", 4, 4), r("B", 4, 0)]),
            class(Some(&[0, 1]), Some(&[1])),
            FailOpen,
            &[0.0, 1.0],
        ),
        // Fail closed: all allowed down with drop, drained, or none.
        case(
            "residency down drop",
            drop_mode(ordered(&[r("A", 4, 4), r("B", 4, 0)])),
            class(None, Some(&[1])),
            DropResidency,
            &[0.0, 0.0],
        ),
        case(
            "residency drained",
            ordered(&[r("A", 4, 4), r("B", 4, 4).drained()]),
            class(None, Some(&[1])),
            DropResidency,
            &[0.0, 0.0],
        ),
        case(
            "residency no backends",
            ordered(&[r("A", 4, 4), r("B", 0, 0)]),
            class(None, Some(&[1])),
            DropResidency,
            &[0.0, 0.0],
        ),
        case(
            "residency drain to allowed",
            ordered(&[r("A", 4, 4), r("B", 4, 4).drained(), r("C", 4, 4)]),
            class(Some(&[1, 0, 2]), Some(&[1, 2])),
            Serve,
            &[0.0, 0.0, 1.0],
        ),
        case(
            "residency weighted",
            weighted(&[5, 1, 1], &[r("A", 4, 4), r("B", 4, 4), r("C", 4, 4)]),
            class(None, Some(&[1, 2])),
            Serve,
            &[0.0, 0.5, 0.5],
        ),
        case(
            "residency failover",
            svc(
                PolicyIn::Failover(vec![vec![0], vec![1], vec![2]]),
                &[r("A", 4, 4), r("B", 4, 2), r("C", 4, 4)],
            ),
            class(None, Some(&[1, 2])),
            Serve,
            &[0.0, 0.7, 0.3],
        ),
        case(
            "residency maglev",
            svc(PolicyIn::Maglev, &[r("A", 4, 4), r("B", 4, 4)]),
            class(None, Some(&[1])),
            Serve,
            &[0.0, 1.0],
        ),
        case(
            "residency maglev down",
            drop_mode(svc(PolicyIn::Maglev, &[r("A", 4, 4), r("B", 4, 0)])),
            class(None, Some(&[1])),
            DropResidency,
            &[0.0, 0.0],
        ),
    ]
}
