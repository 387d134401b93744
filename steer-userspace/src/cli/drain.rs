//! `steer drain`: stop sending new flows to a backend.

use std::process::ExitCode;

use anyhow::Result;
use steer::api::Request;

use super::Target;

#[derive(clap::Args)]
pub struct Args {
    /// The backend's name, as in the config's [[backends]].
    backend: String,
    /// Send new flows to it again.
    #[arg(long)]
    undo: bool,
    #[command(flatten)]
    target: Target,
}

pub fn run(args: Args) -> Result<ExitCode> {
    let req = Request::Drain {
        backend: args.backend,
        undo: args.undo,
    };
    super::control(&args.target, req, false)
}
