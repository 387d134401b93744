//! steer's developer tasks. Run as `cargo xtask <command>` (an alias in
//! `.cargo/config.toml`).
mod demo;
mod e2e;
mod fuzz;
mod lab;
mod pcap;
mod setup;
mod signals;
mod testing;
mod throughput;
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
    /// Run the benchmarks (data plane, health checks, reprogramming);
    /// arguments go to each `cargo bench`.
    Bench {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// The main demo: the lab with real clients and backends, steer
    /// steering them through a region failure, recovery, a drain and a
    /// reload (needs root).
    Demo {
        /// Instead: replay a synthetic capture through the XDP program
        /// (no lab), then again with one backend down.
        #[arg(long)]
        replay: bool,
    },
    /// Fuzz the data path: mutated frames through the real XDP program,
    /// every verdict and output checked (needs root). `cargo xtask test`
    /// runs a fixed-seed run of 1,000,000 frames.
    Fuzz {
        /// How many frames to run.
        #[arg(long, default_value_t = 10_000_000)]
        frames: u64,
        /// Mutator seed (decimal or 0x hex); default: from the clock,
        /// printed so a failing run can be repeated.
        #[arg(long, value_parser = fuzz::parse_seed)]
        seed: Option<u64>,
    },
    /// End-to-end tests with real traffic through the lab (needs root);
    /// part of `cargo xtask test`. A filter runs only matching tests.
    E2e { filter: Option<String> },
    /// A lab of network namespaces: clients, an edge host for steer, a
    /// router and six backends in three regions (needs root; docs/lab.md).
    Lab {
        #[command(subcommand)]
        action: LabAction,
    },
}

#[derive(Subcommand)]
enum LabAction {
    /// Build the lab (tearing down any earlier one first) and start the
    /// backends. Does not start steer.
    Up {
        /// Print every command.
        #[arg(long, short)]
        verbose: bool,
    },
    /// Remove every stl-* namespace, every process in them, the pid files,
    /// and steer's pins and state under the lab's paths.
    Down,
    /// Show what exists; with --probe, also what answers.
    Status {
        /// Send a few requests from the client to every backend and VIP.
        #[arg(long)]
        probe: bool,
    },
    /// Run a command in a lab namespace (client, edge, router, net, eu1...),
    /// joining only its network namespace (bpffs stays visible, unlike
    /// `ip netns exec`).
    Exec {
        namespace: String,
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, required = true)]
        command: Vec<String>,
    },
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
            let mut failed = Vec::new();
            if let Err(e) = throughput::run() {
                eprintln!("lab throughput: {e:#}");
                failed.push("lab throughput");
            }
            for bench in ["dataplane", "health", "reprogram"] {
                println!("=== cargo bench -p steer-userspace --bench {bench}");
                let r = util::run(
                    Command::new("cargo")
                        .current_dir(util::workspace_root())
                        .args(["bench", "-p", "steer-userspace", "--bench", bench])
                        .args(&args),
                );
                if let Err(e) = r {
                    eprintln!("bench {bench}: {e:#}");
                    failed.push(bench);
                }
            }
            if failed.is_empty() {
                Ok(())
            } else {
                anyhow::bail!(
                    "benchmarks that missed a target or failed: {}",
                    failed.join(", ")
                )
            }
        }
        Cmd::Fuzz { frames, seed } => {
            setup::setup(false)?;
            fuzz::fuzz(frames, seed)
        }
        Cmd::E2e { filter } => {
            setup::setup(false)?;
            e2e::run(filter.as_deref())
        }
        Cmd::Demo { replay } => {
            setup::setup(false)?;
            if replay {
                demo::replay()
            } else {
                demo::demo()
            }
        }
        Cmd::Lab { action } => match action {
            LabAction::Up { verbose } => lab::up_cli(verbose),
            LabAction::Down => lab::Lab::down(),
            LabAction::Status { probe } => lab::status(probe),
            LabAction::Exec { namespace, command } => {
                std::process::exit(lab::exec(&namespace, &command)?)
            }
        },
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

    #[test]
    fn fuzz_takes_frames_and_a_seed() {
        match Cli::try_parse_from(["xtask", "fuzz", "--frames", "5", "--seed", "0x1f"]) {
            Ok(Cli {
                command: Cmd::Fuzz { frames, seed },
            }) => assert_eq!((frames, seed), (5, Some(31))),
            _ => panic!("did not parse as fuzz"),
        }
        match Cli::try_parse_from(["xtask", "fuzz"]) {
            Ok(Cli {
                command: Cmd::Fuzz { frames, seed },
            }) => assert_eq!((frames, seed), (10_000_000, None)),
            _ => panic!("did not parse as fuzz"),
        }
        assert!(Cli::try_parse_from(["xtask", "fuzz", "--seed", "x1"]).is_err());
    }
}
