//! `steer run`: the daemon.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Result;

use super::DEFAULT_CONFIG;

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum Mode {
    /// Native XDP in the NIC driver (fastest; the driver must support it).
    Driver,
    /// Generic XDP in the kernel's network stack (any interface, slower).
    Skb,
    /// Driver mode where the driver supports it, else skb.
    Auto,
}

/// What SIGTERM and SIGINT do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum OnSigterm {
    /// Detach XDP and remove the pinned state (traffic stops being
    /// steered), like `steer stop`.
    Detach,
    /// Exit, leaving XDP attached and forwarding on the last programmed
    /// state for the next `steer run` to adopt, like
    /// `steer stop --keep-forwarding` (what the systemd unit uses, so that
    /// `systemctl restart` keeps established flows).
    KeepForwarding,
}

#[derive(clap::Args)]
pub struct Args {
    /// The configuration file (docs/config.md).
    #[arg(long, short, value_name = "FILE", default_value = DEFAULT_CONFIG)]
    config: PathBuf,
    /// Interface to attach to (repeatable); overrides dataplane.interfaces.
    #[arg(long = "iface", value_name = "IFACE")]
    iface: Vec<String>,
    /// XDP attach mode; overrides dataplane.mode.
    #[arg(long, value_enum)]
    mode: Option<Mode>,
    /// What SIGTERM and SIGINT do (`steer stop` says it itself).
    #[arg(long, value_enum, default_value_t = OnSigterm::Detach)]
    on_sigterm: OnSigterm,
}

impl Args {
    /// The configuration file.
    #[cfg_attr(not(test), allow(dead_code))]
    pub fn config_path(&self) -> &Path {
        &self.config
    }
}

/// Runs until SIGTERM or `steer stop`. SIGPIPE stays ignored (Rust's
/// default), so a reader of the daemon's output going away cannot kill
/// it; its log writer drops lines it cannot write (see `main`).
pub fn run(args: Args) -> Result<ExitCode> {
    // Absolute, so that the status report's `config_path` names the file
    // from any directory (`steer reload --config` compares with it).
    let config_path = std::path::absolute(&args.config).unwrap_or(args.config);
    steer::daemon::run(steer::daemon::RunOptions {
        config_path,
        interfaces: args.iface,
        mode: args.mode.map(|m| match m {
            Mode::Driver => steer::config::AttachMode::Driver,
            Mode::Skb => steer::config::AttachMode::Skb,
            Mode::Auto => steer::config::AttachMode::Auto,
        }),
        detach_on_sigterm: args.on_sigterm == OnSigterm::Detach,
    })?;
    Ok(ExitCode::SUCCESS)
}
