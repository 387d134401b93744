//! `steer-xdp-verdict IFACE pass|tx|drop|none`: attaches steer's fixed-verdict
//! XDP program (`steer_pass`, `steer_tx`, `steer_drop`; see
//! `steer::dataplane::verdict`) to IFACE of the current network namespace in
//! driver mode over rtnetlink, replacing any netlink-attached program, or
//! removes it (`none`). The device keeps the program after this exits.
//! A developer tool: the lab (`cargo xtask lab`, `cargo xtask bench`) runs
//! it in its namespaces.
use std::process::ExitCode;

use clap::Parser;
use steer::dataplane::verdict::{detach_netlink, VerdictProgram, XdpVerdict};

#[derive(Parser)]
#[command(
    about = "Attach steer's XDP_PASS / XDP_TX / XDP_DROP program to an interface (driver mode, netlink), or remove it"
)]
struct Args {
    /// The interface, in the current network namespace.
    iface: String,
    /// pass, tx, drop, or none (detach).
    verdict: String,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let r = if args.verdict == "none" {
        detach_netlink(&args.iface)
    } else {
        let Some(v) = XdpVerdict::from_short(&args.verdict) else {
            eprintln!(
                "steer-xdp-verdict: unknown verdict {:?}; use pass, tx, drop or none",
                args.verdict
            );
            return ExitCode::from(2);
        };
        VerdictProgram::load(v).and_then(|p| p.attach_netlink(&args.iface))
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("steer-xdp-verdict: {e}");
            ExitCode::FAILURE
        }
    }
}
