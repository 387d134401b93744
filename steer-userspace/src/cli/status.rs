//! `steer status`: services, backends, health and counters.

use std::process::ExitCode;

use anyhow::Result;
use steer::api::Request;

use super::Target;

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    target: Target,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

pub fn run(args: Args) -> Result<ExitCode> {
    super::control(&args.target, Request::Status, args.json)
}
