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
    /// Also check a staged shift plan against the config, as `steer shift
    /// start` will (repeatable): the service and both regions exist, the
    /// regions serve the service, and no client class with
    /// `allowed_regions` would be moved out of its allowed regions.
    #[arg(long, value_name = "SERVICE:FROM:TO")]
    shift: Vec<String>,
}

/// Checks `--shift SERVICE:FROM:TO` against `cfg`: the plan's errors, in
/// `steer shift start`'s words.
fn check_shift(cfg: &Config, arg: &str) -> Result<(), String> {
    let parts: Vec<&str> = arg.split(':').map(str::trim).collect();
    let [service, from, to] = parts[..] else {
        return Err(format!(
            "--shift {arg:?}: expected SERVICE:FROM:TO, e.g. web:eu-west:us-east"
        ));
    };
    let Some(ctx) = steer::daemon::plan_context(cfg, service) else {
        let names: Vec<&str> = cfg.services.iter().map(|s| s.name.as_str()).collect();
        return Err(format!(
            "--shift {arg}: no service {service:?} (services: {})",
            names.join(", ")
        ));
    };
    let plan = steer_policy::shift::Plan {
        service: service.to_string(),
        from: from.to_string(),
        to: to.to_string(),
        stages: vec![100],
        hold_ms: 1,
        rollback: Default::default(),
    };
    steer_policy::shift::check_plan(&plan, &ctx).map_err(|e| format!("--shift {arg}: {e}"))
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
            let bad: Vec<String> = args
                .shift
                .iter()
                .filter_map(|a| check_shift(&cfg, a).err())
                .collect();
            if !bad.is_empty() {
                errln(format_args!(
                    "{}: the config is valid, but {} shift plan(s) are not:",
                    path.display(),
                    bad.len()
                ));
                for b in &bad {
                    errln(format_args!("  {b}"));
                }
                return Ok(ExitCode::FAILURE);
            }
            let shifts = if args.shift.is_empty() {
                String::new()
            } else {
                format!("; shift plans OK: {}", args.shift.join(", "))
            };
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
                "{}: OK ({} regions, {} backends, {} services, {} health checks{classes}){shifts}",
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
