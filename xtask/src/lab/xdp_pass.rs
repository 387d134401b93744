//! steer's fixed-verdict XDP programs (`steer_pass`, `steer_tx`,
//! `steer_drop`, compiled from steer-ebpf's `src/verdicts.rs`), attached in
//! driver mode over rtnetlink: `steer_pass` on the edge's bridge port, and
//! the `XDP_TX` / `XDP_DROP` references of the throughput bench.
//!
//! Why: steer sends encapsulated packets back out of the veth they came in
//! on (XDP_TX). A veth hands XDP_TX frames to its peer's NAPI ring, but
//! only schedules the peer's NAPI poll when the peer itself has an XDP
//! program (`veth_xdp_flush`); without one the frames wait in the ring
//! forever. `steer_pass` passes every frame on unchanged.
//!
//! The loading and the netlink attach are steer's own
//! (`steer::dataplane::verdict`, also used by steer's daemon tests), run
//! through its `steer-xdp-verdict` binary: xtask does not link the steer
//! library, whose build needs the BPF toolchain that `cargo xtask setup`
//! installs. The attachment is held by the device (netlink attach, not a
//! bpf link), so it lasts after the tool exits and goes away with the
//! namespace.
use std::{path::PathBuf, process::Command, sync::OnceLock};

use anyhow::{anyhow, bail, Context as _, Result};

use super::sys;
use crate::util::workspace_root;

pub use steer_common::XdpVerdict;

/// The name the pass program shows in `ip link` and `bpftool prog`.
pub const PROG_NAME: &str = XdpVerdict::Pass.program();

const TOOL: &str = "steer-xdp-verdict";

/// Builds `steer-xdp-verdict` (once per process) and returns its path.
fn tool() -> Result<PathBuf> {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    if let Some(p) = BUILT.get() {
        return Ok(p.clone());
    }
    let out = Command::new("cargo")
        .current_dir(workspace_root())
        .args(["build", "--quiet", "-p", "steer-userspace", "--bin", TOOL])
        .output()
        .context("could not start `cargo build`")?;
    if !out.status.success() {
        bail!(
            "`cargo build -p steer-userspace --bin {TOOL}` failed ({}):\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map_or_else(|| workspace_root().join("target"), PathBuf::from);
    let bin = target.join("debug").join(TOOL);
    if !bin.is_file() {
        bail!("built {TOOL} but found no {}", bin.display());
    }
    Ok(BUILT.get_or_init(|| bin).clone())
}

/// Runs `steer-xdp-verdict ifname arg` in namespace `ns`.
fn run_tool(ns: &str, ifname: &str, arg: &str) -> Result<()> {
    let bin = tool()?;
    let out = sys::command_in(ns, &bin)?
        .args([ifname, arg])
        .output()
        .with_context(|| format!("could not start {}", bin.display()))?;
    if !out.status.success() {
        return Err(anyhow!("{}", String::from_utf8_lossy(&out.stderr).trim())).context(format!(
            "`{TOOL} {ifname} {arg}` in {ns} failed ({})",
            out.status
        ));
    }
    Ok(())
}

/// Attaches the program for `verdict` to `ifname` in namespace `ns`
/// (driver mode), replacing any netlink-attached program.
pub fn attach_verdict(ns: &str, ifname: &str, verdict: XdpVerdict) -> Result<()> {
    run_tool(ns, ifname, verdict.short())
        .with_context(|| format!("attaching {} to {ifname} in {ns}", verdict.program()))
}

/// Attaches the pass program to `ifname` in namespace `ns` (driver mode).
pub fn attach(ns: &str, ifname: &str) -> Result<()> {
    attach_verdict(ns, ifname, XdpVerdict::Pass)
}

/// Detaches the netlink-attached XDP program of `ifname` in `ns`.
pub fn detach(ns: &str, ifname: &str) -> Result<()> {
    run_tool(ns, ifname, "none").with_context(|| format!("detaching XDP from {ifname} in {ns}"))
}
