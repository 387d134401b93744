//! The staged-shift state machine with a fake clock, and the table step
//! that moves a shift's share of new flows.

mod common;

use common::cases::{ordered, weighted};
use common::*;
use steer_policy::shift::{
    apply_shift, canary_stages, check_plan, linear_stages, Event, NotShifted, Plan, PlanContext,
    PlanError, ResidencyClass, RollbackReason, Shift, Signals, State, Triggers, Verdict,
};
use steer_policy::{compose, decide, ClassIn, PolicyIn};

const MIN: u64 = 60_000;
const HOLD: u64 = 5 * MIN;
/// A Unix time in milliseconds (2026-12-02).
const T0: u64 = 1_796_000_000_000;

fn plan() -> Plan {
    Plan {
        service: "web".into(),
        from: "eu-west".into(),
        to: "us-east".into(),
        stages: vec![10, 25, 50, 100],
        hold_ms: HOLD,
        rollback: Triggers {
            min_healthy_fraction: Some(0.8),
            max_failure_ratio: Some(0.05),
            failure_min_flows: 100,
            over_capacity: true,
            analysis: true,
            ..Triggers::default()
        },
    }
}

fn ctx() -> PlanContext {
    PlanContext {
        regions: vec!["eu-west".into(), "us-east".into(), "eu-central".into()],
        residency: Vec::new(),
    }
}

fn started() -> Shift {
    Shift::start(plan(), T0, &ctx()).expect("a valid plan starts")
}

/// Signals of a healthy target.
fn fine() -> Signals {
    Signals {
        healthy_fraction: Some(1.0),
        new_flows: 1000,
        repeated_syns: 2,
        new_flow_rate: Some(500.0),
        capacity: Some(1000.0),
        analysis: Verdict::Pass,
    }
}

#[test]
fn advances_after_each_hold_and_completes() {
    let mut s = started();
    assert_eq!(s.percent(), 10);
    assert_eq!(s.next_stage_at(), Some(T0 + HOLD));
    assert!(s.tick(T0 + HOLD - 1, &fine()).is_empty());
    assert_eq!(s.time_to_next_stage(T0 + HOLD - 1000), Some(1000));
    assert_eq!(
        s.tick(T0 + HOLD, &fine()),
        vec![Event::Advanced {
            stage: 1,
            percent: 25,
            at: T0 + HOLD
        }]
    );
    assert_eq!(s.percent(), 25);
    assert!(s.tick(T0 + 2 * HOLD - 1, &fine()).is_empty());
    assert_eq!(s.tick(T0 + 2 * HOLD, &fine()).len(), 1);
    assert_eq!(s.percent(), 50);
    assert_eq!(s.tick(T0 + 3 * HOLD, &fine()).len(), 1);
    assert_eq!(s.percent(), 100);
    assert!(s.is_active());
    // The last stage holds too, then the shift is complete and stays at
    // the last stage's percentage.
    assert!(s.tick(T0 + 4 * HOLD - 1, &fine()).is_empty());
    assert_eq!(
        s.tick(T0 + 4 * HOLD, &fine()),
        vec![Event::Completed {
            percent: 100,
            at: T0 + 4 * HOLD
        }]
    );
    assert_eq!(s.state, State::Completed { at: T0 + 4 * HOLD });
    assert_eq!(s.percent(), 100);
    assert!(!s.is_active());
    assert_eq!(s.time_to_next_stage(T0 + 5 * HOLD), None);
    // Finished: triggers no longer apply.
    let mut bad = fine();
    bad.healthy_fraction = Some(0.0);
    assert!(s.tick(T0 + 5 * HOLD, &bad).is_empty());
    assert_eq!(s.percent(), 100);
}

#[test]
fn a_late_tick_enters_one_stage_and_holds_it_in_full() {
    let mut s = started();
    // Ticks stopped for three holds: one stage, starting now.
    let late = T0 + 3 * HOLD + 7;
    assert_eq!(
        s.tick(late, &fine()),
        vec![Event::Advanced {
            stage: 1,
            percent: 25,
            at: late
        }]
    );
    assert!(s.tick(late + HOLD - 1, &fine()).is_empty());
    assert_eq!(s.percent(), 25);
    assert_eq!(s.tick(late + HOLD, &fine()).len(), 1);
    assert_eq!(s.percent(), 50);
}

#[test]
fn a_clock_going_backwards_counts_as_no_time() {
    let mut s = started();
    assert!(s.tick(T0 - 10 * HOLD, &fine()).is_empty());
    assert_eq!(s.percent(), 10);
    assert_eq!(s.tick(T0 + HOLD, &fine()).len(), 1);
}

#[test]
fn pause_freezes_the_hold_and_resume_continues_it() {
    let mut s = started();
    assert_eq!(
        s.pause(T0 + 2 * MIN),
        Ok(Event::Paused {
            stage: 0,
            remaining_hold_ms: 3 * MIN,
            at: T0 + 2 * MIN
        })
    );
    // Paused: the stage's percentage stays, the hold does not run out.
    assert_eq!(s.percent(), 10);
    assert!(s.tick(T0 + 10 * HOLD, &fine()).is_empty());
    assert_eq!(s.percent(), 10);
    assert_eq!(s.time_to_next_stage(T0 + 10 * HOLD), Some(3 * MIN));
    let resumed = T0 + 60 * MIN;
    assert_eq!(
        s.resume(resumed),
        Ok(Event::Resumed {
            stage: 0,
            at: resumed
        })
    );
    // 3 minutes of hold were left.
    assert!(s.tick(resumed + 3 * MIN - 1, &fine()).is_empty());
    assert_eq!(s.tick(resumed + 3 * MIN, &fine()).len(), 1);
    assert_eq!(s.percent(), 25);
}

#[test]
fn operations_in_the_wrong_state_are_refused_with_the_state() {
    let mut s = started();
    let e = s.resume(T0).unwrap_err();
    assert_eq!(
        e.to_string(),
        "shift of service web is running at stage 1 of 4 (10%); only a paused shift can be resumed"
    );
    s.pause(T0).unwrap();
    let e = s.pause(T0).unwrap_err();
    assert!(e.to_string().contains("is paused at stage 1 of 4 (10%)"));
    assert!(e.to_string().contains("only a running shift can be paused"));
    s.abort(T0 + 1).unwrap();
    let e = s.abort(T0 + 2).unwrap_err();
    assert!(e.to_string().contains("is aborted at stage 1 of 4 (10%)"));
    assert!(s.pause(T0 + 2).is_err());
    assert!(s.resume(T0 + 2).is_err());
}

#[test]
fn abort_goes_back_to_zero_from_running_and_from_paused() {
    let mut s = started();
    s.tick(T0 + HOLD, &fine());
    assert_eq!(
        s.abort(T0 + HOLD + 5),
        Ok(Event::Aborted {
            stage: 1,
            percent: 25,
            at: T0 + HOLD + 5
        })
    );
    assert_eq!(s.percent(), 0);
    assert!(!s.is_active());
    assert!(s.tick(T0 + 10 * HOLD, &fine()).is_empty());
    assert_eq!(s.percent(), 0);

    let mut p = started();
    p.pause(T0 + 1).unwrap();
    assert!(p.abort(T0 + 2).is_ok());
    assert_eq!(
        p.state,
        State::Aborted {
            stage: 0,
            at: T0 + 2
        }
    );
    assert_eq!(p.percent(), 0);
}

/// Every trigger rolls back at the first tick that sees it, one
/// millisecond into the second stage's hold, not at the hold's end.
#[test]
fn every_trigger_rolls_back_at_once() {
    let cases: Vec<(&str, Signals, RollbackReason)> = vec![
        (
            "healthy fraction",
            Signals {
                healthy_fraction: Some(0.7),
                ..fine()
            },
            RollbackReason::Unhealthy {
                healthy_fraction: 0.7,
                threshold: 0.8,
            },
        ),
        (
            "repeated SYNs",
            Signals {
                new_flows: 200,
                repeated_syns: 11,
                ..fine()
            },
            RollbackReason::PassiveFailures {
                repeated_syns: 11,
                new_flows: 200,
                threshold: 0.05,
            },
        ),
        (
            "capacity",
            Signals {
                new_flow_rate: Some(1000.5),
                ..fine()
            },
            RollbackReason::OverCapacity {
                rate: 1000.5,
                capacity: 1000.0,
            },
        ),
        (
            "analysis",
            Signals {
                analysis: Verdict::Fail("p99 820 ms > 500 ms".into()),
                ..fine()
            },
            RollbackReason::Analysis {
                detail: "p99 820 ms > 500 ms".into(),
            },
        ),
    ];
    for (name, signals, reason) in cases {
        let mut s = started();
        s.tick(T0 + HOLD, &fine());
        assert_eq!(s.percent(), 25, "{name}");
        let at = T0 + HOLD + 1;
        assert_eq!(
            s.tick(at, &signals),
            vec![Event::RolledBack {
                stage: 1,
                percent: 25,
                reason: reason.clone(),
                at
            }],
            "{name}"
        );
        assert_eq!(
            s.state,
            State::RolledBack {
                stage: 1,
                reason,
                at
            },
            "{name}"
        );
        assert_eq!(s.percent(), 0, "{name}");
        assert!(!s.is_active(), "{name}");
        // Terminal: no more events, no way back.
        assert!(s.tick(at + 10 * HOLD, &fine()).is_empty(), "{name}");
        assert!(s.resume(at + 1).is_err(), "{name}");
        assert_eq!(s.percent(), 0, "{name}");
    }
}

#[test]
fn a_trigger_rolls_back_a_paused_shift() {
    let mut s = started();
    s.pause(T0 + 1).unwrap();
    let ev = s.tick(
        T0 + 2,
        &Signals {
            healthy_fraction: Some(0.5),
            ..fine()
        },
    );
    assert!(matches!(
        ev[..],
        [Event::RolledBack {
            stage: 0,
            percent: 10,
            ..
        }]
    ));
    assert_eq!(s.percent(), 0);
}

#[test]
fn triggers_at_their_limits_or_without_evidence_do_not_fire() {
    let quiet = [
        // Exactly at the thresholds: not beyond them.
        Signals {
            healthy_fraction: Some(0.8),
            new_flows: 200,
            repeated_syns: 10,
            new_flow_rate: Some(1000.0),
            ..fine()
        },
        // Too few new flows to judge a 50 % failure ratio.
        Signals {
            new_flows: 99,
            repeated_syns: 50,
            ..fine()
        },
        // Unknown health, rate or capacity; unlimited capacity.
        Signals {
            healthy_fraction: None,
            new_flow_rate: None,
            ..fine()
        },
        Signals {
            new_flow_rate: Some(1e9),
            capacity: None,
            ..fine()
        },
        // No verdict yet (or inconclusive).
        Signals {
            analysis: Verdict::Unknown,
            ..fine()
        },
        // No flows at all.
        Signals {
            new_flows: 0,
            repeated_syns: 0,
            ..fine()
        },
    ];
    for (i, sig) in quiet.iter().enumerate() {
        let mut s = started();
        assert!(s.tick(T0 + 1, sig).is_empty(), "case {i}");
        assert_eq!(s.percent(), 10, "case {i}");
    }
}

#[test]
fn disabled_triggers_do_not_fire() {
    let mut p = plan();
    p.rollback = Triggers::default();
    let mut s = Shift::start(p, T0, &ctx()).unwrap();
    let awful = Signals {
        healthy_fraction: Some(0.0),
        new_flows: 1000,
        repeated_syns: 1000,
        new_flow_rate: Some(1e6),
        capacity: Some(1.0),
        analysis: Verdict::Fail("everything".into()),
    };
    assert!(s.tick(T0 + 1, &awful).is_empty());
    assert_eq!(s.tick(T0 + HOLD, &awful).len(), 1);
    assert_eq!(s.percent(), 25);
}

#[test]
fn restart_in_the_middle_of_a_stage() {
    let mut s = started();
    s.tick(T0 + HOLD, &fine());
    // Two minutes into stage 2, the daemon persists its state and stops.
    s.tick(T0 + HOLD + 2 * MIN, &fine());
    let saved = serde_json::to_string(&s).unwrap();
    drop(s);
    // It comes back one minute later: the clock kept running.
    let mut r: Shift = serde_json::from_str(&saved).unwrap();
    assert_eq!(r.percent(), 25);
    assert_eq!(r.time_to_next_stage(T0 + HOLD + 3 * MIN), Some(2 * MIN));
    assert!(r.tick(T0 + HOLD + 3 * MIN, &fine()).is_empty());
    assert!(r.tick(T0 + 2 * HOLD - 1, &fine()).is_empty());
    assert_eq!(
        r.tick(T0 + 2 * HOLD, &fine()),
        vec![Event::Advanced {
            stage: 2,
            percent: 50,
            at: T0 + 2 * HOLD
        }]
    );
    // Triggers still work after a restart.
    let mut r2: Shift = serde_json::from_str(&saved).unwrap();
    let ev = r2.tick(
        T0 + HOLD + 3 * MIN,
        &Signals {
            healthy_fraction: Some(0.1),
            ..fine()
        },
    );
    assert!(matches!(ev[..], [Event::RolledBack { stage: 1, .. }]));
}

#[test]
fn restart_while_paused_and_after_a_rollback() {
    let mut s = started();
    s.pause(T0 + MIN).unwrap();
    let mut r: Shift = serde_json::from_str(&serde_json::to_string(&s).unwrap()).unwrap();
    assert_eq!(r, s);
    // Still paused with 4 minutes left, however long the restart took.
    assert_eq!(r.time_to_next_stage(T0 + 100 * MIN), Some(4 * MIN));
    r.resume(T0 + 100 * MIN).unwrap();
    assert_eq!(r.tick(T0 + 104 * MIN, &fine()).len(), 1);

    let mut b = started();
    b.tick(
        T0 + 1,
        &Signals {
            analysis: Verdict::Fail("bad".into()),
            ..fine()
        },
    );
    let r: Shift = serde_json::from_str(&serde_json::to_string(&b).unwrap()).unwrap();
    assert_eq!(r.percent(), 0);
    assert_eq!(
        r.describe(),
        "rolled back at stage 1 of 4 (10%) because the external analysis reported failure: bad"
    );
}

#[test]
fn rollback_reasons_read_well() {
    let r = RollbackReason::PassiveFailures {
        repeated_syns: 30,
        new_flows: 200,
        threshold: 0.05,
    };
    assert_eq!(
        r.to_string(),
        "the target region's repeated-SYN ratio 15.0% (30 of 200 new flows) is above 5.0%"
    );
    let r = RollbackReason::Unhealthy {
        healthy_fraction: 0.5,
        threshold: 0.8,
    };
    assert_eq!(
        r.to_string(),
        "the target region's healthy fraction 50.0% is below 80.0%"
    );
    let r = RollbackReason::OverCapacity {
        rate: 1200.0,
        capacity: 1000.0,
    };
    assert_eq!(
        r.to_string(),
        "the target region's new-flow rate 1200/s is above its capacity 1000/s"
    );
}

#[test]
fn invalid_plans_are_refused_with_what_to_do() {
    let bad = |f: &dyn Fn(&mut Plan)| {
        let mut p = plan();
        f(&mut p);
        let e = Shift::start(p.clone(), T0, &ctx()).unwrap_err();
        assert_eq!(check_plan(&p, &ctx()), Err(e.clone()));
        e
    };
    let e = bad(&|p| p.stages.clear());
    assert!(matches!(e, PlanError::NoStages { .. }));
    assert!(e.to_string().contains("--stages 10,25,50,100"));
    let e = bad(&|p| p.stages = vec![0, 50]);
    assert!(matches!(e, PlanError::StageOutOfRange { value: 0, .. }));
    let e = bad(&|p| p.stages = vec![50, 101]);
    assert!(matches!(e, PlanError::StageOutOfRange { value: 101, .. }));
    assert!(e.to_string().contains("stage 101% is outside 1..=100"));
    let e = bad(&|p| p.stages = vec![10, 25, 25, 100]);
    assert!(matches!(e, PlanError::NotIncreasing { .. }));
    let e = bad(&|p| p.stages = vec![50, 25]);
    assert_eq!(
        e.to_string(),
        "shift of service web: stages [50, 25] are not strictly increasing; list each \
         percentage once, in increasing order, for example 10,25,50,100"
    );
    let e = bad(&|p| p.hold_ms = 0);
    assert!(matches!(e, PlanError::ZeroHold { .. }));
    assert!(e.to_string().contains("--hold 5m"));
    let e = bad(&|p| p.to = "eu-west".into());
    assert!(matches!(e, PlanError::SameRegion { .. }));
    let e = bad(&|p| p.to = "mars".into());
    assert_eq!(
        e.to_string(),
        "shift of service web: region mars does not serve it; its regions are: eu-west, \
         us-east, eu-central"
    );
    let e = bad(&|p| p.rollback.min_healthy_fraction = Some(80.0));
    assert!(matches!(
        e,
        PlanError::BadThreshold {
            name: "min_healthy_fraction",
            ..
        }
    ));
    let e = bad(&|p| p.rollback.max_failure_ratio = Some(-0.1));
    assert!(matches!(
        e,
        PlanError::BadThreshold {
            name: "max_failure_ratio",
            ..
        }
    ));
    let e = bad(&|p| p.rollback.analysis_url = Some("https://x.example/a".into()));
    assert_eq!(
        e.to_string(),
        "shift of service web: analysis URL \"https://x.example/a\" is not usable: only \
         http:// URLs are supported; give an http:// URL with an address or host name, for \
         example http://127.0.0.1:8080/analysis"
    );
    let e = bad(&|p| p.rollback.analysis_url = Some("http:///path".into()));
    assert!(e.to_string().contains("it has no host"), "{e}");
    let mut p = plan();
    p.rollback.analysis_url = Some("http://127.0.0.1:8080/analysis?run=1".into());
    assert!(check_plan(&p, &ctx()).is_ok());
    // The signal window defaults to 5 s.
    assert_eq!(p.rollback.signal_window_ms(), 5_000);
    p.rollback.window_ms = 2_000;
    assert_eq!(p.rollback.signal_window_ms(), 2_000);
    // A single stage (a canary straight to its percentage) is fine.
    let mut p = plan();
    p.stages = vec![100];
    assert!(check_plan(&p, &ctx()).is_ok());
}

#[test]
fn a_plan_that_breaks_residency_is_refused() {
    let mut c = ctx();
    c.residency = vec![
        // Allowed regions without the source: the shift cannot touch it.
        ResidencyClass {
            name: "apac".into(),
            allowed: vec!["us-east".into()],
        },
        ResidencyClass {
            name: "gdpr".into(),
            allowed: vec!["eu-west".into(), "eu-central".into()],
        },
    ];
    let e = Shift::start(plan(), T0, &c).unwrap_err();
    assert_eq!(
        e.to_string(),
        "shift of service web: client class gdpr may only use regions [eu-west, eu-central]; \
         moving its flows from eu-west to us-east would break its data residency; shift to one \
         of its allowed regions, or remove eu-west from its allowed regions first"
    );
    // Inside the allowed regions: fine.
    let mut p = plan();
    p.to = "eu-central".into();
    assert!(Shift::start(p, T0, &c).is_ok());
}

// ---- apply_shift: the table step ----

/// Three weighted regions: A (index 0) 10 backends, B (1) 10, C (2) 10.
fn three() -> steer_policy::ServiceIn {
    weighted(
        &[2, 1, 1],
        &[r("a", 10, 10), r("b", 10, 10), r("c", 10, 10)],
    )
}

const SMALL: u32 = 4099;

fn shifted(
    s: &steer_policy::ServiceIn,
    class: &ClassIn,
    percent: f64,
    size: u32,
) -> (Vec<u32>, Vec<u32>, Result<usize, NotShifted>) {
    let d = decide(s, class);
    let before = compose(s, &d, size);
    let mut after = before.clone();
    let res = apply_shift(s, &d, &mut after, 0, 1, percent);
    (before, after, res)
}

#[test]
fn each_stage_moves_exactly_its_share_of_the_source() {
    let s = three();
    let of = region_of(&s);
    for p in [10.0, 25.0, 50.0, 100.0] {
        let (before, after, res) = shifted(&s, &default_class(), p, RING);
        let (sb, sa) = (table_shares(&s, &before), table_shares(&s, &after));
        // Weighted 2:1:1 -> A 50 %, B 25 %, C 25 %.
        assert!((sb[0] - 0.5).abs() < 0.005, "{sb:?}");
        let f = p / 100.0;
        assert!((sa[0] - 0.5 * (1.0 - f)).abs() < 0.005, "{p}: {sa:?}");
        assert!((sa[1] - (0.25 + 0.5 * f)).abs() < 0.005, "{p}: {sa:?}");
        assert_eq!(sa[2], sb[2], "{p}: C is untouched");
        // Exactly round(p × A's slots) moved, all from A to B.
        let a_slots = before.iter().filter(|&&v| of[v as usize] == 0).count();
        let changed: Vec<usize> = (0..before.len())
            .filter(|&i| before[i] != after[i])
            .collect();
        assert_eq!(res, Ok((f * a_slots as f64).round() as usize));
        assert_eq!(changed.len(), res.unwrap());
        for &i in &changed {
            assert_eq!(of[before[i] as usize], 0);
            assert_eq!(of[after[i] as usize], 1);
        }
    }
}

#[test]
fn stages_grow_the_moved_set_and_keep_its_backends() {
    let s = three();
    let mut prev: Option<Vec<u32>> = None;
    let (before, _, _) = shifted(&s, &default_class(), 0.0, SMALL);
    for p in [10.0, 25.0, 50.0, 100.0] {
        let (_, after, _) = shifted(&s, &default_class(), p, SMALL);
        if let Some(prev) = &prev {
            // Going from one stage to the next only moves more slots of A:
            // a slot moved earlier stays on the same backend of B, and a
            // slot still on A keeps its backend.
            for i in 0..before.len() {
                if prev[i] != before[i] {
                    assert_eq!(after[i], prev[i], "slot {i} at {p}%");
                }
                if after[i] == before[i] {
                    assert_eq!(prev[i], before[i], "slot {i} at {p}%");
                }
            }
        }
        prev = Some(after);
    }
}

#[test]
fn moved_slots_go_where_the_targets_own_ring_puts_them() {
    // B as the only region: compose puts every slot on B's own ring. A
    // slot moved from A gets that same backend.
    let s = three();
    let alone = ordered(&[r("b", 10, 10)]);
    let b_table = compose(&alone, &decide(&alone, &default_class()), SMALL);
    let (before, after, _) = shifted(&s, &default_class(), 100.0, SMALL);
    let mut checked = 0;
    for i in 0..before.len() {
        if before[i] != after[i] {
            // Backend indexes: B's start at 10 in `three`, at 0 in `alone`.
            assert_eq!(after[i], b_table[i] + 10, "slot {i}");
            checked += 1;
        }
    }
    assert!(checked > 1000);
}

#[test]
fn moved_slots_avoid_the_targets_unhealthy_backends() {
    let s = weighted(&[2, 1], &[r("a", 10, 10), r("b", 10, 6)]);
    let of = region_of(&s);
    let (before, after, res) = shifted(&s, &default_class(), 50.0, SMALL);
    assert!(res.unwrap() > 500);
    let healthy = |v: u32| {
        s.regions
            .iter()
            .flat_map(|r| &r.backends)
            .any(|b| b.index == v && b.healthy)
    };
    for i in 0..before.len() {
        if before[i] != after[i] {
            assert_eq!(of[after[i] as usize], 1);
            assert!(
                healthy(after[i]),
                "slot {i} moved to down backend {}",
                after[i]
            );
        }
    }
}

#[test]
fn a_shift_never_leaves_a_residency_class_allowed_regions() {
    let s = three();
    // A class confined to A and C: B is outside, nothing moves.
    let gdpr = class(None, Some(&[0, 2]));
    let (before, after, res) = shifted(&s, &gdpr, 50.0, SMALL);
    assert_eq!(res, Err(NotShifted::Residency));
    assert_eq!(before, after);
    let of = region_of(&s);
    assert!(after.iter().all(|&v| of[v as usize] != 1));
    // A class confined to A and B: the shift applies, and stays inside.
    let ab = class(None, Some(&[0, 1]));
    let (before, after, res) = shifted(&s, &ab, 50.0, SMALL);
    assert!(res.unwrap() > 0);
    assert_ne!(before, after);
    assert!(after.iter().all(|&v| of[v as usize] != 2));
}

#[test]
fn a_drained_or_dead_target_takes_nothing() {
    let mut s = three();
    s.regions[1].drained = true;
    let (before, after, res) = shifted(&s, &default_class(), 50.0, SMALL);
    assert_eq!(res, Err(NotShifted::TargetDrained));
    assert_eq!(before, after);

    let s = weighted(&[2, 1, 1], &[r("a", 10, 10), r("b", 10, 0), r("c", 10, 10)]);
    let (before, after, res) = shifted(&s, &default_class(), 50.0, SMALL);
    assert_eq!(res, Err(NotShifted::TargetUnhealthy));
    assert_eq!(before, after);

    let s = three();
    let d = decide(&s, &default_class());
    let mut t = compose(&s, &d, SMALL);
    assert_eq!(
        apply_shift(&s, &d, &mut t, 1, 1, 50.0),
        Err(NotShifted::SameRegion)
    );
    assert_eq!(
        apply_shift(&s, &d, &mut t, 0, 7, 50.0),
        Err(NotShifted::NoSuchRegion)
    );
}

/// 20,000 flows by their hash (as the data plane picks a slot): at each
/// stage the shares are within 1.5 points of the plan, and flows that stay
/// on A keep their backends.
#[test]
fn replayed_flows_follow_each_stage() {
    let s = ordered(&[r("a", 10, 10), r("b", 10, 10)]);
    assert_eq!(s.policy, PolicyIn::Ordered);
    let of = region_of(&s);
    let flows: Vec<u32> = (0u32..20_000)
        .map(|i| steer_common::hash::murmur3_32(&i.to_le_bytes(), 0x5eed) % RING)
        .collect();
    let (before, _, _) = shifted(&s, &default_class(), 0.0, RING);
    for p in [10.0, 25.0, 50.0, 100.0] {
        let (_, after, _) = shifted(&s, &default_class(), p, RING);
        let on_b = flows
            .iter()
            .filter(|&&f| of[after[f as usize] as usize] == 1)
            .count() as f64
            / flows.len() as f64;
        assert!((on_b - p / 100.0).abs() <= 0.015, "{p}%: {on_b}");
        for &f in &flows {
            let f = f as usize;
            if of[after[f] as usize] == 0 {
                assert_eq!(after[f], before[f]);
            }
        }
    }
}

#[test]
fn codedeploy_canary_and_linear_stages() {
    assert_eq!(canary_stages(10), vec![10, 100]);
    assert_eq!(canary_stages(100), vec![100]);
    assert_eq!(canary_stages(0), vec![1, 100]);
    assert_eq!(
        linear_stages(10),
        vec![10, 20, 30, 40, 50, 60, 70, 80, 90, 100]
    );
    assert_eq!(linear_stages(30), vec![30, 60, 90, 100]);
    assert_eq!(linear_stages(50), vec![50, 100]);
    assert_eq!(linear_stages(100), vec![100]);
    assert_eq!(linear_stages(200), vec![100]);
    assert_eq!(linear_stages(0).len(), 100);
    for stages in [canary_stages(25), linear_stages(7), linear_stages(1)] {
        let mut p = plan();
        p.stages = stages;
        assert!(check_plan(&p, &ctx()).is_ok(), "{:?}", p.stages);
    }
}

/// Outlier ejection, slow start, compose and the shift step together, as
/// the daemon would chain them: an ejected backend of B takes no shifted
/// slot, a ramping one takes its step's share, and once the ejection ends
/// the returned backend starts its ramp.
#[test]
fn the_pieces_fit_together() {
    use steer_policy::outlier::{Observation, OutlierConfig, OutlierEvent, Outliers};
    use steer_policy::slowstart::{SlowStart, SlowStartConfig};
    let svc = ordered(&[r("a", 10, 10), r("b", 10, 10)]);
    let of = region_of(&svc);
    let names: Vec<String> = svc
        .regions
        .iter()
        .flat_map(|r| r.backends.iter().map(|b| b.name.clone()))
        .collect();
    let ocfg = OutlierConfig::default();
    let scfg = SlowStartConfig {
        window_ms: 10_000,
        min_weight_percent: 10,
        steps: 10,
    };
    let mut outliers = Outliers::default();
    let mut slow = SlowStart::default();
    // b's backend 3 (index 13) black-holes its new flows.
    let obs = |flows: u64, bad: u64| -> Vec<Observation<'_>> {
        names
            .iter()
            .map(|n| Observation {
                backend: n,
                new_flows: flows,
                repeated_syns: if n == "b-backend-3" { bad } else { 0 },
                down: false,
            })
            .collect()
    };
    outliers.evaluate(&ocfg, T0, &obs(0, 0));
    let ev = outliers.evaluate(&ocfg, T0 + 1_000, &obs(50, 40));
    assert!(matches!(&ev[..], [OutlierEvent::Ejected { backend, .. }] if backend == "b-backend-3"));
    // b's backend 5 (index 15) just came up: ramping, step 3 of 10.
    slow.begin("b-backend-5", T0 - 2_000);
    let now = T0 + 1_000;
    assert_eq!(slow.step(&scfg, "b-backend-5", now), 3);

    let mut view = svc.clone();
    outliers.apply(&mut view);
    let d = decide(&view, &default_class());
    let ramped = slow.ramped(&scfg, &view, now);
    let before = compose(&ramped, &d, RING);
    let mut after = before.clone();
    let moved = apply_shift(&ramped, &d, &mut after, 0, 1, 25.0).unwrap();
    // A takes everything before the shift; 25 % of it moves.
    assert_eq!(table_shares(&svc, &before)[0], 1.0);
    assert_eq!(moved, (RING as f64 * 0.25).round() as usize);
    let on = |i: u32| after.iter().filter(|&&v| v == i).count() as f64 / moved as f64;
    assert_eq!(on(13), 0.0, "the ejected backend takes no shifted flow");
    // 8 backends at 10 steps, the ramping one at 3: 3 / 83 of B's slots.
    assert!((on(15) - 3.0 / 83.0).abs() < 0.01, "{}", on(15));
    assert!(after.iter().all(|&v| of[v as usize] <= 1));

    // The ejection ends; the returned backend starts its slow start.
    let back = outliers.next_return().unwrap();
    for e in outliers.evaluate(&ocfg, back, &obs(50, 40)) {
        if let OutlierEvent::Returned { backend, at } = e {
            slow.begin(&backend, at);
        }
    }
    assert!(!outliers.is_ejected("b-backend-3"));
    assert_eq!(slow.step(&scfg, "b-backend-3", back), 1);
}
