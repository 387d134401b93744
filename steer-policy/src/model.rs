//! The engine's inputs and its decision record.

/// A table slot value that means "drop: data residency" (the class's
/// allowed regions have nothing that may serve). The data plane counts it
/// under the `residency` drop reason, not `no_backend`.
pub const RESIDENCY_DROP: u32 = u32::MAX - 1;

/// One backend of a region.
#[derive(Clone, Debug, PartialEq)]
pub struct BackendIn {
    /// Index in the service's backend list: what table slots hold.
    pub index: u32,
    /// Stable identity: keys the backend's Maglev permutation.
    pub name: String,
    /// Maglev weight; 0 = drained (no new flows, not even in panic).
    pub weight: u32,
    pub healthy: bool,
}

/// One region of a service, with its runtime state.
#[derive(Clone, Debug, PartialEq)]
pub struct RegionIn {
    /// Region name: seeds the region's per-slot hashes, so it must be the
    /// same on every host.
    pub name: String,
    /// Traffic dial 0..=100 (values above 100 count as 100).
    pub dial: u8,
    /// Keep fraction from the capacity controller, 0..=1; 1 = no limit.
    pub capacity_keep: f64,
    /// Region drain: the region leaves every order for new flows.
    pub drained: bool,
    pub backends: Vec<BackendIn>,
}

/// How a service orders and weighs its regions.
#[derive(Clone, Debug, PartialEq)]
pub enum PolicyIn {
    /// Today's behaviour: one Maglev over the healthy backends of every
    /// region by weight; no spill, dials, capacity or panic.
    Maglev,
    /// Route 53 weighted: one weight per region, same order as
    /// [`ServiceIn::regions`].
    Weighted(Vec<u32>),
    /// Failover tiers of region indexes; each tier is one Envoy priority
    /// level.
    Failover(Vec<Vec<usize>>),
    /// Geo and latency: the order comes from [`ClassIn::order`] (or the
    /// default order); each region is one priority level.
    Ordered,
}

/// What to do when no region of the client's order has a healthy backend.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum OnNoHealthy {
    /// Send the flows to the first region of the order (weighted: every
    /// region by weight), over all its backends with weight > 0.
    #[default]
    FailOpen,
    /// Drop them (`no_backend`).
    Drop,
}

/// One service: its regions in the default order and its tuning.
#[derive(Clone, Debug, PartialEq)]
pub struct ServiceIn {
    pub regions: Vec<RegionIn>,
    pub policy: PolicyIn,
    /// Envoy's overprovisioning factor, >= 1 (default 1.4).
    pub overprovisioning: f64,
    /// Envoy's panic threshold as a fraction 0..=1 (default 0.5); 0
    /// disables panic.
    pub panic_threshold: f64,
    pub on_no_healthy: OnNoHealthy,
}

/// One client class as seen by one service.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClassIn {
    /// Region indexes in preference order (geo, latency); `None` = the
    /// service's default order. Regions of the service missing from it
    /// follow it in the default order (a class prefers regions; only
    /// `allowed` confines flows). Only [`PolicyIn::Ordered`] uses it.
    pub order: Option<Vec<usize>>,
    /// Data residency: the only regions new flows of this class may reach.
    pub allowed: Option<Vec<usize>>,
}

/// How the flows of a (service, class) are handled as a whole.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Healthy backends exist: the steps apply.
    Serve,
    /// No healthy backend in the order: fail-open over all backends.
    FailOpen,
    /// No healthy backend (or none at all) and no residency constraint:
    /// dropped as `no_backend`.
    DropNoHealthy,
    /// A residency class whose allowed regions have nothing that may
    /// serve: dropped as `residency` (fail closed).
    DropResidency,
}

impl Outcome {
    /// Every outcome, in declaration order.
    pub const ALL: [Outcome; 4] = [
        Outcome::Serve,
        Outcome::FailOpen,
        Outcome::DropNoHealthy,
        Outcome::DropResidency,
    ];

    /// The word `steer status` and the metrics use.
    pub const fn as_str(self) -> &'static str {
        match self {
            Outcome::Serve => "serve",
            Outcome::FailOpen => "fail-open",
            Outcome::DropNoHealthy => "drop",
            Outcome::DropResidency => "residency",
        }
    }
}

/// The decision for one region of the order. Shares are fractions of the
/// (service, class)'s new flows.
#[derive(Clone, Debug, PartialEq)]
pub struct RegionDecision {
    /// Index into [`ServiceIn::regions`].
    pub region: usize,
    /// health(R) = min(1, overprovisioning × healthy weight / total
    /// weight); for a failover tier, the tier's health.
    pub health: f64,
    /// Healthy weight / total weight (backends with weight > 0).
    pub healthy_fraction: f64,
    /// Step 1: the share health spill (or the weights) gives the region.
    pub load: f64,
    /// The region's dial (not applied in fail-open or the maglev policy).
    pub dial: u8,
    /// What reaches the region before its dial acts: its step-1 load plus
    /// what spilled into it (dials and capacity).
    pub reach: f64,
    /// The final share if capacity were unlimited (dials only).
    pub after_dials: f64,
    /// The capacity keep fraction applied after the dial.
    pub capacity_keep: f64,
    /// The final share: kept after dial and capacity, plus its part of
    /// what spilled past the last region.
    pub share: f64,
    /// Envoy panic: the region spreads its share over all its backends
    /// with weight > 0, healthy or not.
    pub panic: bool,
    /// The region may take flows (it has a healthy backend, or fail-open
    /// chose it). Regions that may not serve pass what reaches them on.
    pub serving: bool,
    /// The region's flows go to all its backends with weight > 0 (panic or
    /// fail-open) instead of only the healthy ones.
    pub spread_all: bool,
}

/// The engine's decision for one (service, class).
#[derive(Clone, Debug, PartialEq)]
pub struct Decision {
    /// The client's order after the residency cut and without drained
    /// regions: indexes into [`ServiceIn::regions`].
    pub order: Vec<usize>,
    /// One per entry of `order`, in the same order.
    pub regions: Vec<RegionDecision>,
    /// Envoy's normalized total health: min(1, Σ health).
    pub nth: f64,
    pub outcome: Outcome,
    /// The share that spilled past the last region and went back to the
    /// order's regions by their step-1 load.
    pub fallback: f64,
    /// The class's allowed regions, if it has a residency constraint.
    pub allowed: Option<Vec<usize>>,
}

impl Decision {
    /// The decision for region index `region`, if it is in the order.
    pub fn region(&self, region: usize) -> Option<&RegionDecision> {
        self.regions.iter().find(|r| r.region == region)
    }

    /// The final share of region index `region` (0 if not in the order).
    pub fn share(&self, region: usize) -> f64 {
        self.region(region).map_or(0.0, |r| r.share)
    }
}
