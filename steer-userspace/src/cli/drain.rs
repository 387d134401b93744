//! `steer drain`: stop sending new flows to a backend or a whole region.

use std::process::ExitCode;

use anyhow::Result;
use steer::api::Request;

use super::Target;

#[derive(clap::Args)]
#[command(group(clap::ArgGroup::new("what").required(true)))]
pub struct Args {
    /// The backend's name, as in the config's [[backends]].
    #[arg(group = "what")]
    backend: Option<String>,
    /// Drain every backend of this region instead (a [[regions]] name).
    #[arg(long, value_name = "REGION", group = "what")]
    region: Option<String>,
    /// Send new flows to it again.
    #[arg(long)]
    undo: bool,
    /// With --region: once this long has passed (e.g. 5m), move the
    /// region's established flows too (they are re-selected elsewhere).
    #[arg(long, value_name = "DURATION", requires = "region", conflicts_with = "undo",
          value_parser = steer_config::parse_duration)]
    timeout: Option<std::time::Duration>,
    #[command(flatten)]
    target: Target,
}

pub fn run(args: Args) -> Result<ExitCode> {
    let req = match (args.backend, args.region) {
        (_, Some(region)) => Request::DrainRegion {
            region,
            undo: args.undo,
            timeout_seconds: args.timeout.map(|d| d.as_secs().max(1)),
        },
        (Some(backend), None) => Request::Drain {
            backend,
            undo: args.undo,
        },
        (None, None) => anyhow::bail!("name a backend, or a region with --region REGION"),
    };
    super::control(&args.target, req, false)
}
