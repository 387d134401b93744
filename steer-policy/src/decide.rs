//! `decide`: the region shares of one (service, class), steps 1 to 5.

use crate::model::{
    ClassIn, Decision, OnNoHealthy, Outcome, PolicyIn, RegionDecision, RegionIn, ServiceIn,
};

/// Healthy and total weight of a region's backends with weight > 0.
pub(crate) fn weights(r: &RegionIn) -> (f64, f64) {
    let mut healthy = 0.0;
    let mut total = 0.0;
    for b in r.backends.iter().filter(|b| b.weight > 0) {
        total += b.weight as f64;
        if b.healthy {
            healthy += b.weight as f64;
        }
    }
    (healthy, total)
}

fn fraction(healthy: f64, total: f64) -> f64 {
    if total > 0.0 {
        healthy / total
    } else {
        0.0
    }
}

/// The client's order before residency and drain: region indexes, without
/// duplicates or out-of-range entries.
fn base_order(svc: &ServiceIn, class: &ClassIn) -> Vec<usize> {
    let n = svc.regions.len();
    let raw: Vec<usize> = match &svc.policy {
        // The class's preference first, then the service's other regions in
        // the default order: a class prefers regions, it does not confine
        // flows to them (that is `allowed`).
        PolicyIn::Ordered => class.order.iter().flatten().copied().chain(0..n).collect(),
        PolicyIn::Failover(tiers) => tiers.iter().flatten().copied().collect(),
        PolicyIn::Maglev | PolicyIn::Weighted(_) => (0..n).collect(),
    };
    let mut seen = vec![false; n];
    raw.into_iter()
        .filter(|&i| i < n && !std::mem::replace(&mut seen[i], true))
        .collect()
}

/// Decides where the new flows of one client class go.
///
/// Pure: the same inputs give the same decision. See the crate docs for
/// the model.
pub fn decide(svc: &ServiceIn, class: &ClassIn) -> Decision {
    let op = if svc.overprovisioning.is_finite() && svc.overprovisioning >= 1.0 {
        svc.overprovisioning
    } else {
        1.0
    };
    // Step 5 first: residency cuts the order, then drained regions leave it.
    let order: Vec<usize> = base_order(svc, class)
        .into_iter()
        .filter(|i| class.allowed.as_ref().is_none_or(|a| a.contains(i)))
        .filter(|&i| !svc.regions[i].drained)
        .collect();
    let mut regions: Vec<RegionDecision> = order
        .iter()
        .map(|&i| {
            let r = &svc.regions[i];
            let (hw, tw) = weights(r);
            let hf = fraction(hw, tw);
            RegionDecision {
                region: i,
                health: (op * hf).min(1.0),
                healthy_fraction: hf,
                load: 0.0,
                dial: r.dial.min(100),
                reach: 0.0,
                after_dials: 0.0,
                capacity_keep: clamp01(r.capacity_keep),
                share: 0.0,
                panic: false,
                serving: false,
                spread_all: false,
            }
        })
        .collect();
    let mut d = Decision {
        order,
        regions: Vec::new(),
        nth: 0.0,
        outcome: Outcome::Serve,
        fallback: 0.0,
        allowed: class.allowed.clone(),
    };
    let dropped = if class.allowed.is_some() {
        Outcome::DropResidency
    } else {
        Outcome::DropNoHealthy
    };
    let any_backend = d.order.iter().any(|&i| weights(&svc.regions[i]).1 > 0.0);
    let any_healthy = d.order.iter().any(|&i| weights(&svc.regions[i]).0 > 0.0);
    if !any_backend {
        d.outcome = dropped;
        d.regions = regions;
        return d;
    }
    if !any_healthy {
        match svc.on_no_healthy {
            OnNoHealthy::Drop => d.outcome = dropped,
            OnNoHealthy::FailOpen => {
                d.outcome = Outcome::FailOpen;
                fail_open(svc, &mut regions);
            }
        }
        d.regions = regions;
        return d;
    }
    // Step 1 (and panic, step 4).
    match &svc.policy {
        PolicyIn::Maglev => {
            let total: f64 = d.order.iter().map(|&i| weights(&svc.regions[i]).0).sum();
            for r in regions.iter_mut() {
                r.load = weights(&svc.regions[r.region]).0 / total;
                r.serving = r.load > 0.0;
            }
            d.nth = 1.0;
        }
        PolicyIn::Weighted(w) => d.nth = weighted_loads(svc, w, op, &mut regions),
        PolicyIn::Ordered | PolicyIn::Failover(_) => {
            let levels = levels(svc, &d.order);
            d.nth = priority_loads(svc, op, &levels, &mut regions);
        }
    }
    // Steps 2 and 3: dials, then capacity, cascading down the order.
    if svc.policy == PolicyIn::Maglev {
        for r in regions.iter_mut() {
            r.reach = r.load;
            r.after_dials = r.load;
            r.share = r.load;
        }
    } else {
        let (_, after_dials, _) = cascade(&regions, false);
        let (reach, share, fallback) = cascade(&regions, true);
        for (k, r) in regions.iter_mut().enumerate() {
            r.after_dials = after_dials[k];
            r.reach = reach[k];
            r.share = share[k];
        }
        d.fallback = fallback;
    }
    d.regions = regions;
    d
}

fn clamp01(x: f64) -> f64 {
    if x.is_nan() {
        1.0
    } else {
        x.clamp(0.0, 1.0)
    }
}

/// Fail-open: the first region of the order with a backend (weighted:
/// every region by weight), over all its backends; dials are not applied.
fn fail_open(svc: &ServiceIn, regions: &mut [RegionDecision]) {
    let has_backends = |r: &RegionDecision| weights(&svc.regions[r.region]).1 > 0.0;
    match &svc.policy {
        PolicyIn::Weighted(w) => {
            let wt = |r: &RegionDecision| w.get(r.region).copied().unwrap_or(0) as f64;
            let mut eff: Vec<f64> = regions
                .iter()
                .map(|r| if has_backends(r) { wt(r) } else { 0.0 })
                .collect();
            if eff.iter().all(|&x| x == 0.0) {
                eff = regions
                    .iter()
                    .map(|r| if has_backends(r) { 1.0 } else { 0.0 })
                    .collect();
            }
            let sum: f64 = eff.iter().sum();
            for (r, e) in regions.iter_mut().zip(eff) {
                r.load = e / sum;
            }
        }
        PolicyIn::Maglev => {
            let total: f64 = regions
                .iter()
                .map(|r| weights(&svc.regions[r.region]).1)
                .sum();
            for r in regions.iter_mut() {
                r.load = weights(&svc.regions[r.region]).1 / total;
            }
        }
        _ => {
            if let Some(r) = regions.iter_mut().find(|r| has_backends(r)) {
                r.load = 1.0;
            }
        }
    }
    for r in regions.iter_mut().filter(|r| r.load > 0.0) {
        r.serving = true;
        r.spread_all = true;
        r.reach = r.load;
        r.after_dials = r.load;
        r.share = r.load;
    }
}

/// Priority levels as positions into the order: one per region, or one per
/// failover tier (regions cut by residency or drained leave their tier,
/// empty tiers vanish).
fn levels(svc: &ServiceIn, order: &[usize]) -> Vec<Vec<usize>> {
    match &svc.policy {
        PolicyIn::Failover(tiers) => tiers
            .iter()
            .map(|t| {
                t.iter()
                    .filter_map(|i| order.iter().position(|o| o == i))
                    .collect::<Vec<usize>>()
            })
            .filter(|t| !t.is_empty())
            .collect(),
        _ => (0..order.len()).map(|k| vec![k]).collect(),
    }
}

/// Envoy priority loads over `levels`; returns NTH.
fn priority_loads(
    svc: &ServiceIn,
    op: f64,
    levels: &[Vec<usize>],
    regions: &mut [RegionDecision],
) -> f64 {
    let lw: Vec<(f64, f64)> = levels
        .iter()
        .map(|l| {
            l.iter().fold((0.0, 0.0), |(h, t), &k| {
                let (hw, tw) = weights(&svc.regions[regions[k].region]);
                (h + hw, t + tw)
            })
        })
        .collect();
    let health: Vec<f64> = lw
        .iter()
        .map(|&(h, t)| (op * fraction(h, t)).min(1.0))
        .collect();
    let nth = health.iter().sum::<f64>().min(1.0);
    let mut left = 1.0f64;
    for (li, l) in levels.iter().enumerate() {
        let load = if li == 0 {
            (health[li] / nth).min(1.0)
        } else {
            left.min(health[li] / nth)
        };
        left = (left - load).max(0.0);
        let (hw, tw) = lw[li];
        let hf = fraction(hw, tw);
        let panic = nth < 1.0 && load > 0.0 && hf < svc.panic_threshold;
        for &k in l {
            let (rh, rt) = weights(&svc.regions[regions[k].region]);
            let r = &mut regions[k];
            r.health = health[li];
            r.panic = panic;
            r.spread_all = panic;
            // Inside a tier: by healthy weight, or in panic by total weight.
            r.load = if panic {
                load * rt / tw
            } else {
                load * rh / hw.max(f64::MIN_POSITIVE)
            };
            r.serving = if panic { rt > 0.0 } else { rh > 0.0 };
        }
    }
    nth
}

/// Weighted (Route 53 rules, Envoy locality weighting); returns NTH of
/// the regions in use.
fn weighted_loads(svc: &ServiceIn, w: &[u32], op: f64, regions: &mut [RegionDecision]) -> f64 {
    let weight = |r: &RegionDecision| w.get(r.region).copied().unwrap_or(0) as f64;
    let healthy = |r: &RegionDecision| weights(&svc.regions[r.region]).0 > 0.0;
    let all_zero = regions.iter().all(|r| weight(r) == 0.0);
    // Route 53: weight-0 regions are a standby, used only when no non-zero
    // region has a healthy backend; if every weight is 0, all are equal.
    let standby = !all_zero && !regions.iter().any(|r| weight(r) > 0.0 && healthy(r));
    let w_eff: Vec<f64> = regions
        .iter()
        .map(|r| {
            if all_zero || standby {
                if weight(r) == 0.0 {
                    1.0
                } else {
                    0.0
                }
            } else {
                weight(r)
            }
        })
        .collect();
    let (mut hw_sum, mut tw_sum) = (0.0, 0.0);
    for (r, &we) in regions.iter().zip(&w_eff) {
        if we > 0.0 {
            let (hw, tw) = weights(&svc.regions[r.region]);
            hw_sum += hw;
            tw_sum += tw;
        }
    }
    let nth = (op * fraction(hw_sum, tw_sum)).min(1.0);
    let ew: Vec<f64> = regions
        .iter()
        .zip(&w_eff)
        .map(|(r, &we)| we * r.health)
        .collect();
    let sum: f64 = ew.iter().sum();
    let in_use: Vec<usize> = regions
        .iter()
        .zip(&w_eff)
        .filter(|(_, &we)| we > 0.0)
        .map(|(r, _)| r.region)
        .collect();
    let we_pos = |r: &RegionDecision| in_use.contains(&r.region);
    for (r, e) in regions.iter_mut().zip(ew) {
        r.load = e / sum;
        r.panic = nth < 1.0 && r.load > 0.0 && r.healthy_fraction < svc.panic_threshold;
        r.spread_all = r.panic;
        r.serving = we_pos(r) && healthy(r);
    }
    nth
}

/// Dials (and with `capacity`, the capacity keep) down the order. Returns
/// per position what reaches the region, its final share, and what spilled
/// past the last region.
fn cascade(regions: &[RegionDecision], capacity: bool) -> (Vec<f64>, Vec<f64>, f64) {
    let mut reach = vec![0.0; regions.len()];
    let mut kept = vec![0.0; regions.len()];
    let mut spill = 0.0;
    for (k, r) in regions.iter().enumerate() {
        reach[k] = r.load + spill;
        let keep = if !r.serving {
            0.0
        } else if capacity {
            r.dial as f64 / 100.0 * r.capacity_keep
        } else {
            r.dial as f64 / 100.0
        };
        kept[k] = reach[k] * keep;
        spill = reach[k] - kept[k];
    }
    let share = regions
        .iter()
        .zip(&kept)
        .map(|(r, &k)| k + spill * r.load)
        .collect();
    (reach, share, spill)
}
