//! steer's multi-region policy engine: a pure function from a service's
//! regions, their health and the daemon's measurements to the selection
//! table of one (service, client class).
//!
//! No BPF, no I/O, no clock: the daemon (and `steer replay`, and
//! `steer explain`) converts its config and runtime state into
//! [`ServiceIn`] and [`ClassIn`], calls [`decide`] for the shares and
//! [`compose`] for the table, and writes the table into the data plane.
//! Equal inputs give byte-identical tables on every host.
//!
//! # The model
//!
//! A service has regions, each with backends (weight 0 = drained). A client
//! class gives an ordered preference of regions ([`PolicyIn::Ordered`]: geo
//! and latency) and may restrict the regions ([`ClassIn::allowed`]: data
//! residency). [`decide`] applies, in this order:
//!
//! 0. **Residency and drain.** The order is cut down to the allowed regions,
//!    and drained regions leave it. Everything below works on that order; if
//!    nothing in it may serve, a residency class's flows are dropped as
//!    [`Outcome::DropResidency`] (fail closed).
//! 1. **Health spill** (Envoy priority levels). `health(R) = min(1,
//!    overprovisioning × healthy weight / total weight)`, `NTH = min(1,
//!    Σ health)`, `load(R1) = min(1, health/NTH)`, each later level
//!    `min(remaining, health/NTH)`. A failover tier is one level whose health
//!    is over all its regions' backends; inside it the load splits by healthy
//!    weight. **Weighted** (Route 53, Envoy locality weighting): share =
//!    `w × health / Σ`; all weights 0 = equal; weight-0 regions only when no
//!    non-zero region has a healthy backend.
//! 2. **Traffic dials** (Global Accelerator). A region keeps `dial%` of what
//!    reaches it; the rest spills to the next region of the order, cascading;
//!    what spills past the last region goes back to the order's regions by
//!    their step-1 load, ignoring dials.
//! 3. **Capacity** (Google Cloud RATE with capacity scaler): after the dial,
//!    the region keeps [`RegionIn::capacity_keep`] (from
//!    [`capacity::Controller`]) of what it kept; the rest spills the same way.
//! 4. **Panic** (Envoy). When `NTH < 1`, a region (failover: tier) whose
//!    healthy fraction is below `panic_threshold` keeps its step-1 share but
//!    spreads it over all its backends with weight > 0, healthy or not.
//!    With no healthy backend anywhere in the order: [`OnNoHealthy::FailOpen`]
//!    (first region of the order, all its backends; weighted: every region by
//!    weight; dials and capacity not applied) or [`OnNoHealthy::Drop`].
//!
//! A region with no healthy backend (and not chosen by fail-open) keeps
//! nothing: what reaches it passes on.
//!
//! [`compose`] turns the [`Decision`] into slots: see [`compose`]'s module
//! for how, and [`explain_slot`] for one slot's path. [`latency`] ranks
//! regions by measured round-trip time with a margin and a dwell, and
//! [`capacity`] turns measured new-flow rates into keep fractions.
//!
//! [`PolicyIn::Maglev`] is today's behaviour: one Maglev over the healthy
//! backends of every (allowed, undrained) region; dials, capacity and panic
//! do not apply, `on_no_healthy` does.
#![forbid(unsafe_code)]

pub mod capacity;
mod compose;
mod decide;
pub mod latency;
mod model;

pub use compose::{compose, explain_slot, Hop, HopAction, SlotPath};
pub use decide::decide;
pub use model::{
    BackendIn, ClassIn, Decision, OnNoHealthy, Outcome, PolicyIn, RegionDecision, RegionIn,
    ServiceIn, RESIDENCY_DROP,
};
