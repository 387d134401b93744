//! `cargo xtask demo`: steer in the lab (docs/lab.md) with real clients and
//! backends. It builds steer, brings the lab up, starts `steer run` in the
//! edge namespace, drives HTTP from the clients, shows live where the
//! traffic goes, then fails a region, restores it, drains a backend,
//! reloads new weights under long-lived streams, steers by client prefix
//! (geo) and turns a region's traffic dial down, measuring each, and tears
//! everything down ([`live`]).
//!
//! The earlier demo, which replays a synthetic capture through the XDP
//! program without any network ([`replay`]), runs with
//! `cargo xtask demo --replay`.
mod live;
mod replay;

use anyhow::Result;

/// The lab demo.
pub fn demo() -> Result<()> {
    live::run()
}

/// The replay demo (`cargo xtask demo --replay`).
pub fn replay() -> Result<()> {
    replay::run()
}
