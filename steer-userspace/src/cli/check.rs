//! `steer check`: validate a configuration file.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use steer::config::Config;

use super::{errln, outln};

#[derive(clap::Args)]
pub struct Args {
    /// The configuration file to check.
    #[arg(long, short, value_name = "FILE")]
    config: PathBuf,
}

pub fn run(args: Args) -> Result<ExitCode> {
    let path = &args.config;
    match Config::load(path) {
        Ok(cfg) => {
            outln!(
                "{}: OK ({} regions, {} backends, {} services, {} health checks)",
                path.display(),
                cfg.regions.len(),
                cfg.backends.len(),
                cfg.services.len(),
                cfg.health_checks.len()
            )?;
            Ok(ExitCode::SUCCESS)
        }
        Err(errs) => {
            errln(format_args!(
                "{}: {} error(s)",
                path.display(),
                errs.0.len()
            ));
            errln(format_args!("{errs}"));
            Ok(ExitCode::FAILURE)
        }
    }
}
