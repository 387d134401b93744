//! `steer explain`: why a flow goes where it goes, from the running daemon
//! (its published plan and live conntrack) or offline from a config file
//! and runtime inputs.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Result};
use steer::api::Request;
use steer::policy::explain::{self, Conntrack};

use super::replay::InputArgs;
use super::{load_config, outln, Target};

#[derive(clap::Args)]
pub struct Args {
    /// tcp or udp.
    protocol: String,
    /// The client's address and port, e.g. 198.51.100.7:40000 or
    /// [2001:db8::7]:40000.
    client: String,
    /// The VIP and port the client connects to.
    vip: String,
    /// Explain offline against this config file (and the runtime inputs
    /// below) instead of asking the running daemon.
    #[arg(long, short, value_name = "FILE")]
    config: Option<PathBuf>,
    #[command(flatten)]
    inputs: InputArgs,
    /// The daemon's control socket [default: /run/steer/control.sock].
    #[arg(long, value_name = "PATH", conflicts_with = "config")]
    socket: Option<PathBuf>,
}

pub fn run(args: Args) -> Result<ExitCode> {
    let Some(path) = &args.config else {
        if args.inputs != InputArgs::default() {
            bail!(
                "--down, --drain, --drain-region, --rtt, --rate, --shift and --state describe an \
                 offline explanation: give the config with --config FILE (without it, \
                 steer explain asks the running daemon, which has its own inputs)"
            );
        }
        let target = Target {
            config: None,
            socket: args.socket,
        };
        let req = Request::Explain {
            protocol: args.protocol,
            client: args.client,
            vip: args.vip,
        };
        return super::control(&target, req, false);
    };
    let q = explain::parse_query(&args.protocol, &args.client, &args.vip)
        .map_err(anyhow::Error::msg)?;
    let cfg = load_config(path)?;
    let rt = args.inputs.runtime(&cfg, path)?;
    let planned = steer::policy::plan(&cfg, &rt);
    let e = explain::explain(&cfg, &planned, q, Conntrack::Unknown);
    outln!("{e}")?;
    outln!("(offline: from {}; no conntrack)", path.display())?;
    Ok(ExitCode::SUCCESS)
}
