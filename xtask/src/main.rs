//! steer's developer tasks. Run as `cargo xtask <command>` (an alias in
//! `.cargo/config.toml`).
mod demo;
mod pcap;
mod setup;
mod testing;
mod util;

use std::{path::PathBuf, process::Command};

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "xtask",
    bin_name = "cargo xtask",
    about = "steer's developer tasks"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install what the build and the tests need (idempotent): the nightly
    /// toolchain with rust-src, bpf-linker, iproute2.
    Setup {
        /// Only build bpf-linker into this directory (`cargo install --root`),
        /// even if one is installed; for testing the install path.
        #[arg(long, value_name = "DIR")]
        install_bpf_linker_into: Option<PathBuf>,
    },
    /// Run every check CI runs: fmt, clippy, clippy on the eBPF crate, and
    /// all tests including the privileged ones (needs root). Arguments go to
    /// `cargo test`, e.g. `cargo xtask test -- conntrack -- --nocapture`.
    Test {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Run the data-plane benchmark; arguments go to `cargo bench`.
    Bench {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Replay a synthetic capture through the real XDP program and show
    /// where the flows went, then again with one backend down.
    Demo,
    /// A lab of network namespaces with clients and backends (not yet).
    Lab {
        #[command(subcommand)]
        action: LabAction,
    },
}

#[derive(Subcommand)]
enum LabAction {
    Up,
    Down,
}

fn main() {
    // Print the error chain, not a Debug dump (which includes a backtrace
    // whenever RUST_BACKTRACE is set, as it often is in CI).
    if let Err(e) = run(Cli::parse()) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Cmd::Setup {
            install_bpf_linker_into: Some(root),
        } => setup::install_bpf_linker(Some(&root)),
        Cmd::Setup {
            install_bpf_linker_into: None,
        } => setup::setup(true),
        Cmd::Test { args } => {
            setup::setup(false)?;
            testing::test(&args)
        }
        Cmd::Bench { args } => {
            setup::setup(false)?;
            util::run(
                Command::new("cargo")
                    .current_dir(util::workspace_root())
                    .args(["bench", "-p", "steer-userspace", "--bench", "dataplane"])
                    .args(&args),
            )
        }
        Cmd::Demo => {
            setup::setup(false)?;
            demo::demo()
        }
        Cmd::Lab { action } => {
            let what = match action {
                LabAction::Up => "lab up",
                LabAction::Down => "lab down",
            };
            eprintln!("{what}: not implemented yet: see issue 'A real lab'");
            std::process::exit(2);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn test_args(argv: &[&str]) -> Vec<String> {
        match Cli::try_parse_from(argv).map(|c| c.command) {
            Ok(Cmd::Test { args }) => args,
            _ => panic!("{argv:?} did not parse as `test`"),
        }
    }

    #[test]
    fn test_passes_arguments_to_cargo_test() {
        assert!(test_args(&["xtask", "test"]).is_empty());
        assert_eq!(
            test_args(&["xtask", "test", "--", "conntrack"]),
            ["conntrack"]
        );
        assert_eq!(
            test_args(&["xtask", "test", "--", "conntrack", "--", "--nocapture"]),
            ["conntrack", "--", "--nocapture"]
        );
        assert_eq!(
            test_args(&["xtask", "test", "-p", "steer-tests"]),
            ["-p", "steer-tests"]
        );
    }
}
