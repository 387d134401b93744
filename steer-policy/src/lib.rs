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
//! nothing: what reaches it passes on. For weighted, NTH is taken over the
//! regions in use as one priority level (`min(1, overprovisioning ×
//! healthy weight / total weight)`), so a weighted region panics when the
//! regions together lack healthy capacity and its own healthy fraction is
//! below the threshold. A class order lists preferred regions; the
//! service's other regions follow it in the default order (only `allowed`
//! confines flows).
//!
//! # The table
//!
//! [`compose`] turns a [`Decision`] into a selection table of `ring_size`
//! slots (a prime), each a [`BackendIn::index`], `steer_common::NO_REAL`
//! (`no_backend`) or [`RESIDENCY_DROP`]. Every slot is a sample of the
//! new-flow hash space and goes through the same steps as a flow:
//!
//! 1. step 1: the slots, sorted by a per-slot hash, are cut into runs whose
//!    lengths are the priority levels' loads (largest remainder, so exact to
//!    a slot). Inside a failover tier of several regions, one Maglev ring
//!    over all the tier's backends picks the region (that is the split by
//!    healthy weight, or in panic by weight). When the first loaded level is
//!    one region, the slots whose backend in that region's ring is healthy
//!    come first, so a region that spills keeps its healthy backends' slots;
//! 2. each region of the order keeps the `dial%` of the slots reaching it
//!    with the lowest hash (seeded by the region's name), then
//!    `capacity_keep` of those (another hash); the rest spills on; what
//!    spills past the last region is cut by the step-1 loads again;
//! 3. the final region's Maglev rings (`steer_common::maglev::build`, keyed
//!    by backend name) pick the backend: the ring over all its backends
//!    while that backend is healthy, else the ring over the healthy ones (in
//!    panic and fail-open, all backends with weight > 0).
//!
//! Hashes are seeded by slot index and region name, never by ids or list
//! positions: hosts with equal inputs build byte-identical tables, however
//! they list the regions. Properties (tests/compose.rs): shares within 0.5
//! points of [`decide`]'s; a dial change `d -> d'` moves at most
//! `|d - d'| × reach + 1 %` of the slots; one backend going down moves
//! exactly its own slots while its region stays saturated. In the spill
//! regime (the region below 1/overprovisioning healthy) the region's load
//! falls as well, and a backend going down moves about 1.4 to 1.6 times its
//! own share (for example 19.3 % for a 13.9 % share, 5 -> 4 of 10 healthy).
//! No construction can do much better in small regions: some single
//! backend going down must move at least (overprovisioning − 1) / (n (n − 1))
//! beyond its own share in a region of n equal backends (6.67 % for n = 3
//! at 1.4); the proof is in docs/policies.md, section 10.
//! A 65,537-slot table over three regions of 20 backends takes about 12 ms
//! in release.
//!
//! [`explain_slot`] gives one slot's path through those steps (for `steer
//! explain`); [`latency`] ranks regions by measured round-trip time with a
//! margin and a dwell, and [`capacity`] turns measured new-flow rates into
//! keep fractions.
//!
//! [`PolicyIn::Maglev`] is today's behaviour: one Maglev over the healthy
//! backends of every (allowed, undrained) region; dials, capacity and panic
//! do not apply, `on_no_healthy` does (fail-open: all backends of every
//! region by weight).
//!
//! Also here, pure and tested with a fake clock, but not yet used by the
//! daemon (the staged-shift issue wires them in): [`shift`] (staged
//! traffic shifts with rollback triggers), [`outlier`] (ejection on the
//! repeated-SYN ratio, capped by `max_ejection_percent`) and [`slowstart`]
//! (a backend's weight ramped after it comes up).
#![forbid(unsafe_code)]

pub mod capacity;
mod compose;
mod decide;
pub mod latency;
mod model;
pub mod outlier;
pub mod shift;
pub mod slowstart;

pub use compose::{compose, explain_slot, Hop, HopAction, SlotPath};
pub use decide::decide;
pub use model::{
    BackendIn, ClassIn, Decision, OnNoHealthy, Outcome, PolicyIn, RegionDecision, RegionIn,
    ServiceIn, RESIDENCY_DROP,
};
