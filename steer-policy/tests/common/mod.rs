//! Builders shared by the engine's tests.
#![allow(dead_code)]

pub mod cases;

use steer_policy::{BackendIn, ClassIn, OnNoHealthy, PolicyIn, RegionIn, ServiceIn};

/// One region: `total` backends of weight 1, the first `healthy` of them
/// healthy.
#[derive(Clone, Debug)]
pub struct R {
    pub name: &'static str,
    pub total: usize,
    pub healthy: usize,
    pub dial: u8,
    pub keep: f64,
    pub drained: bool,
}

pub fn r(name: &'static str, total: usize, healthy: usize) -> R {
    R {
        name,
        total,
        healthy,
        dial: 100,
        keep: 1.0,
        drained: false,
    }
}

impl R {
    pub fn dial(mut self, d: u8) -> Self {
        self.dial = d;
        self
    }
    pub fn keep(mut self, k: f64) -> Self {
        self.keep = k;
        self
    }
    pub fn drained(mut self) -> Self {
        self.drained = true;
        self
    }
}

/// A service over `regions` (backend indexes numbered across regions in
/// order), Envoy defaults (1.4, 50 %), fail-open.
pub fn svc(policy: PolicyIn, regions: &[R]) -> ServiceIn {
    let mut index = 0u32;
    let regions = regions
        .iter()
        .map(|s| RegionIn {
            name: s.name.to_string(),
            dial: s.dial,
            capacity_keep: s.keep,
            drained: s.drained,
            backends: (0..s.total)
                .map(|i| {
                    index += 1;
                    BackendIn {
                        index: index - 1,
                        name: format!("{}-backend-{i}", s.name),
                        weight: 1,
                        healthy: i < s.healthy,
                    }
                })
                .collect(),
        })
        .collect();
    ServiceIn {
        regions,
        policy,
        overprovisioning: 1.4,
        panic_threshold: 0.5,
        on_no_healthy: OnNoHealthy::FailOpen,
    }
}

pub fn default_class() -> ClassIn {
    ClassIn::default()
}

pub fn class(order: Option<&[usize]>, allowed: Option<&[usize]>) -> ClassIn {
    ClassIn {
        order: order.map(<[usize]>::to_vec),
        allowed: allowed.map(<[usize]>::to_vec),
    }
}

/// Region index of each backend index.
pub fn region_of(s: &ServiceIn) -> Vec<usize> {
    let mut out = Vec::new();
    for (ri, r) in s.regions.iter().enumerate() {
        for b in &r.backends {
            let i = b.index as usize;
            if out.len() <= i {
                out.resize(i + 1, usize::MAX);
            }
            out[i] = ri;
        }
    }
    out
}

/// Share of the table's slots per region.
pub fn table_shares(s: &ServiceIn, table: &[u32]) -> Vec<f64> {
    let of = region_of(s);
    let mut c = vec![0usize; s.regions.len()];
    for &v in table {
        if (v as usize) < of.len() {
            c[of[v as usize]] += 1;
        }
    }
    c.iter().map(|&x| x as f64 / table.len() as f64).collect()
}

/// Fraction of slots that differ between two tables.
pub fn moved(a: &[u32], b: &[u32]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).filter(|(x, y)| x != y).count() as f64 / a.len() as f64
}

pub const RING: u32 = 65537;
