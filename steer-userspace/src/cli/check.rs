//! `steer check`: validate a configuration file.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Result;
use steer::config::Config;

use super::{errln, outln, DEFAULT_CONFIG};

#[derive(clap::Args)]
pub struct Args {
    /// The configuration file to check.
    #[arg(long, short, value_name = "FILE", default_value = DEFAULT_CONFIG)]
    config: PathBuf,
}

impl Args {
    /// The configuration file.
    #[cfg_attr(not(test), allow(dead_code))]
    pub fn config_path(&self) -> &Path {
        &self.config
    }
}

pub fn run(args: Args) -> Result<ExitCode> {
    let path = &args.config;
    match Config::load(path) {
        Ok(cfg) => {
            let classes = if cfg.client_classes.is_empty() {
                String::new()
            } else {
                let prefixes: usize = cfg.client_classes.iter().map(|c| c.prefixes.len()).sum();
                format!(
                    ", {} client classes with {prefixes} prefixes",
                    cfg.client_classes.len()
                )
            };
            outln!(
                "{}: OK ({} regions, {} backends, {} services, {} health checks{classes})",
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
