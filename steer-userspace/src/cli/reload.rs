//! `steer reload`: make the daemon re-read its config.

use std::process::ExitCode;

use anyhow::Result;
use steer::api::Request;

use super::Target;

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    target: Target,
}

pub fn run(args: Args) -> Result<ExitCode> {
    super::control(&args.target, Request::Reload, false)
}
