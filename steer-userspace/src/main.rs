//! The `steer` command.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context as _, Result};
use clap::{Parser, Subcommand};
use steer::config::Config;
use steer::dataplane::{Dataplane, Verdict};
use steer::pcap;
use steer_common::{drop, path};

#[derive(Parser)]
#[command(name = "steer", version, about = "XDP traffic steerer")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Validate a configuration file and report every error.
    Check {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Run every packet of a capture through the real XDP program
    /// (BPF_PROG_TEST_RUN; needs root, no NIC) and write what it transmitted.
    Replay {
        #[arg(long, short)]
        config: PathBuf,
        /// Input capture (classic pcap, Ethernet).
        #[arg(long = "in", value_name = "IN.pcap")]
        input: PathBuf,
        /// Where to write the transmitted (XDP_TX) frames.
        #[arg(long = "out", value_name = "OUT.pcap")]
        output: PathBuf,
        /// Mark a backend down before replaying (repeatable).
        #[arg(long, value_name = "BACKEND")]
        down: Vec<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.cmd {
        Cmd::Check { config } => check(&config),
        Cmd::Replay {
            config,
            input,
            output,
            down,
        } => replay(&config, &input, &output, &down),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("steer: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn load_config(path: &std::path::Path) -> Result<Config> {
    Config::load(path).map_err(|errs| {
        anyhow::anyhow!("{} has {} error(s):\n{errs}", path.display(), errs.0.len())
    })
}

fn check(path: &std::path::Path) -> Result<ExitCode> {
    match Config::load(path) {
        Ok(cfg) => {
            println!(
                "{}: OK ({} regions, {} backends, {} services, {} health checks)",
                path.display(),
                cfg.regions.len(),
                cfg.backends.len(),
                cfg.services.len(),
                cfg.health_checks.len()
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(errs) => {
            eprintln!("{}: {} error(s)", path.display(), errs.0.len());
            eprintln!("{errs}");
            Ok(ExitCode::FAILURE)
        }
    }
}

fn replay(
    config: &std::path::Path,
    input: &std::path::Path,
    output: &std::path::Path,
    down: &[String],
) -> Result<ExitCode> {
    let cfg = load_config(config)?;
    for b in down {
        if cfg.backend(b).is_none() {
            let known: Vec<&str> = cfg.backends.iter().map(|b| b.name.as_str()).collect();
            bail!(
                "--down {b:?}: no such backend in {} (backends: {})",
                config.display(),
                known.join(", ")
            );
        }
    }
    let file = std::fs::File::open(input)
        .with_context(|| format!("cannot open input capture {}", input.display()))?;
    let records = pcap::read_all(std::io::BufReader::new(file))
        .with_context(|| format!("{} is not a usable capture", input.display()))?;
    let mut dp = Dataplane::load(&cfg.dataplane).context("loading the XDP program")?;
    let down: BTreeSet<String> = down.iter().cloned().collect();
    dp.apply(&cfg, &down).context("programming the maps")?;

    let mut tx = Vec::new();
    let mut verdicts = std::collections::BTreeMap::<Verdict, u64>::new();
    let mut too_short = 0u64;
    for r in &records {
        match dp.run(&r.data) {
            Ok(out) => {
                *verdicts.entry(out.verdict).or_default() += 1;
                if out.verdict == Verdict::Tx {
                    tx.push(pcap::Record {
                        data: out.data,
                        ..r.clone()
                    });
                }
            }
            Err(steer::dataplane::DataplaneError::FrameTooShort(_)) => too_short += 1,
            Err(e) => return Err(e).context("running a packet"),
        }
    }
    let out = std::fs::File::create(output)
        .with_context(|| format!("cannot create output capture {}", output.display()))?;
    pcap::write_all(std::io::BufWriter::new(out), &tx)
        .with_context(|| format!("writing {}", output.display()))?;

    println!(
        "replayed {} packets from {}",
        records.len(),
        input.display()
    );
    for (v, n) in &verdicts {
        println!("  {:<8} {n}", format!("{v:?}").to_uppercase());
    }
    if too_short > 0 {
        println!("  SKIPPED  {too_short} (shorter than an Ethernet header; XDP never sees these)");
    }
    let drops = dp.drop_counts()?;
    for (i, n) in drops.iter().enumerate() {
        if *n > 0 {
            println!("  drop {:<16} {n}", drop::NAMES[i]);
        }
    }
    let paths = dp.path_counts()?;
    let flows: Vec<String> = [
        path::NEW_FLOW,
        path::CT_HIT,
        path::RESELECT,
        path::ICMP_ERROR,
    ]
    .iter()
    .map(|&p| format!("{} {}", path::NAMES[p as usize], paths[p as usize]))
    .collect();
    println!("  paths: {}", flows.join(", "));
    for svc in &cfg.services {
        let c = dp.service_counters(&svc.name)?;
        println!(
            "  service {:<12} packets {:>6} bytes {:>8} new flows {:>5}",
            svc.name, c.packets, c.bytes, c.new_flows
        );
        for b in cfg.service_backends(svc) {
            let c = dp.backend_counters(&svc.name, &b.name)?;
            let mark = if down.contains(&b.name) {
                " (down)"
            } else {
                ""
            };
            println!(
                "    backend {:<14} packets {:>6} new flows {:>5}{mark}",
                b.name, c.packets, c.new_flows
            );
        }
    }
    println!(
        "wrote {} transmitted packets to {}",
        tx.len(),
        output.display()
    );
    Ok(ExitCode::SUCCESS)
}
