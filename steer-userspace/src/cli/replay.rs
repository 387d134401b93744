//! `steer replay`: run a capture through the real XDP program.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context as _, Result};
use steer::dataplane::verdict::{VerdictProgram, XdpVerdict};
use steer::dataplane::{Dataplane, DataplaneError, Verdict};
use steer::pcap;
use steer::policy::ApplyConfig as _;
use steer_common::{Branch, DropReason};

use super::{load_config, outln};

#[derive(clap::Args)]
pub struct Args {
    /// The configuration file; its services and backends program the maps.
    #[arg(long, short, value_name = "FILE")]
    config: PathBuf,
    /// The capture to replay: pcap or pcapng, Ethernet frames.
    #[arg(long = "in", value_name = "IN.pcap")]
    input: PathBuf,
    /// Where to write the frames the program transmitted (XDP_TX), as pcap.
    #[arg(long = "out", value_name = "OUT.pcap")]
    output: PathBuf,
    /// Mark a backend down before replaying, as a failed health check
    /// would (repeatable).
    #[arg(long, value_name = "BACKEND")]
    down: Vec<String>,
    /// The source MAC of transmitted frames (overrides dataplane.source_mac).
    /// BPF_PROG_TEST_RUN runs on loopback, which has no MAC to send from:
    /// one of the two is required.
    #[arg(long, value_name = "MAC", value_parser = steer_config::parse_source_mac)]
    source_mac: Option<[u8; 6]>,
}

/// Records the kernel would not run because they are too large
/// (BPF_PROG_TEST_RUN fits a frame into one page and at most
/// MAX_SKB_FRAGS more; a larger one fails with ENOMEM). No NIC hands XDP
/// such a frame: they are GRO/TSO aggregates in captures taken on a host
/// with offloads on. They are skipped and counted, not fatal.
#[derive(Default)]
struct TooLarge {
    /// The largest frame the kernel runs, found once, on the first refusal.
    limit: Option<usize>,
    /// (record number, length) of each skipped record.
    records: Vec<(usize, usize)>,
}

/// The largest frame BPF_PROG_TEST_RUN accepts, between `ok` (known to
/// run) and `bad` (refused). Probes with the `steer_tx` verdict program,
/// which returns XDP_TX and has no maps, so the replay's counters are not
/// touched. If that program cannot be loaded, `ok` is the answer.
fn test_run_limit(mut ok: usize, mut bad: usize) -> usize {
    let Ok(prog) = VerdictProgram::load(XdpVerdict::Tx) else {
        return ok;
    };
    let buf = vec![0u8; bad];
    while bad - ok > 1 {
        let mid = ok + (bad - ok) / 2;
        if prog.test_run(&buf[..mid]).is_ok() {
            ok = mid;
        } else {
            bad = mid;
        }
    }
    ok
}

/// The OS error under a data plane error, if any (the errno of the
/// bpf(2) call).
fn os_error(e: &DataplaneError) -> Option<&std::io::Error> {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(s) = source {
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            return Some(io);
        }
        source = s.source();
    }
    None
}

pub fn run(args: Args) -> Result<ExitCode> {
    let Args {
        config,
        input,
        output,
        down,
        source_mac,
    } = args;
    let mut cfg = load_config(&config)?;
    if source_mac.is_some() {
        cfg.dataplane.source_mac = source_mac;
    }
    if cfg.dataplane.source_mac.is_none() {
        bail!(
            "no source MAC for the transmitted frames: {} sets no dataplane.source_mac and \
             --source-mac was not given (BPF_PROG_TEST_RUN runs on loopback, which has no MAC \
             to send from); pass --source-mac 02:00:00:00:00:01 or set dataplane.source_mac",
            config.display()
        );
    }
    for b in &down {
        if cfg.backend(b).is_none() {
            let known: Vec<&str> = cfg.backends.iter().map(|b| b.name.as_str()).collect();
            bail!(
                "--down {b:?}: no such backend in {} (backends: {})",
                config.display(),
                known.join(", ")
            );
        }
    }
    let file = std::fs::File::open(&input)
        .with_context(|| format!("cannot open input capture {}", input.display()))?;
    let records = pcap::read_all(std::io::BufReader::new(file))
        .with_context(|| format!("{} is not a usable capture", input.display()))?;
    let mut dp = Dataplane::load(&cfg.dataplane).context("loading the XDP program")?;
    let down: BTreeSet<String> = down.into_iter().collect();
    dp.apply(&cfg, &down).context("programming the maps")?;

    let mut tx = Vec::new();
    let mut verdicts = BTreeMap::<Verdict, u64>::new();
    let mut too_short = 0u64;
    let mut too_large = TooLarge::default();
    let mut largest_run = 0usize;
    for (i, r) in records.iter().enumerate() {
        let number = i + 1;
        let len = r.data.len();
        match dp.run(&r.data) {
            Ok(out) => {
                largest_run = largest_run.max(len);
                *verdicts.entry(out.verdict).or_default() += 1;
                if out.verdict == Verdict::Tx {
                    tx.push(pcap::Record {
                        data: out.data,
                        ..r.clone()
                    });
                }
            }
            Err(DataplaneError::FrameTooShort(_)) => too_short += 1,
            Err(e) => {
                let enomem =
                    os_error(&e).and_then(std::io::Error::raw_os_error) == Some(libc::ENOMEM);
                // ENOMEM for a frame larger than every one that ran: find
                // the kernel's limit (once) and skip what exceeds it.
                if enomem && len > largest_run {
                    let limit = *too_large
                        .limit
                        .get_or_insert_with(|| test_run_limit(largest_run.max(14), len));
                    if len > limit {
                        too_large.records.push((number, len));
                        continue;
                    }
                }
                let why = os_error(&e).map_or_else(
                    || e.to_string(),
                    |io| format!("the kernel's BPF_PROG_TEST_RUN answered: {io}"),
                );
                bail!(
                    "packet record {number} of {} ({len} bytes) could not be run through the \
                     program: {why}",
                    input.display()
                );
            }
        }
    }
    let out = std::fs::File::create(&output)
        .with_context(|| format!("cannot create output capture {}", output.display()))?;
    pcap::write_all(std::io::BufWriter::new(out), &tx)
        .with_context(|| format!("writing {}", output.display()))?;

    outln!(
        "replayed {} packets from {}",
        records.len(),
        input.display()
    )?;
    for (v, n) in &verdicts {
        outln!("  {:<8} {n}", format!("{v:?}").to_uppercase())?;
    }
    if too_short > 0 {
        outln!("  SKIPPED  {too_short} (shorter than an Ethernet header; XDP never sees these)")?;
    }
    if let (Some(limit), false) = (too_large.limit, too_large.records.is_empty()) {
        outln!("{}", too_large_line(limit, &too_large.records))?;
    }
    print_counters(&cfg, &dp, &down)?;
    outln!(
        "wrote {} transmitted packets to {}",
        tx.len(),
        output.display()
    )?;
    Ok(ExitCode::SUCCESS)
}

/// One line for the records skipped as too large: how many, which (the
/// first five), and the kernel's limit.
fn too_large_line(limit: usize, records: &[(usize, usize)]) -> String {
    let mut named: Vec<String> = records
        .iter()
        .take(5)
        .map(|(n, len)| format!("packet record {n} ({len} bytes)"))
        .collect();
    if records.len() > 5 {
        named.push(format!("{} more", records.len() - 5));
    }
    format!(
        "  SKIPPED  {} larger than the {limit} bytes BPF_PROG_TEST_RUN runs on this kernel: {} \
         (no NIC hands XDP such frames; they are GRO/TSO aggregates: capture with \
         `ethtool -K IFACE gro off gso off tso off`)",
        records.len(),
        named.join(", ")
    )
}

fn print_counters(
    cfg: &steer::config::Config,
    dp: &Dataplane,
    down: &BTreeSet<String>,
) -> Result<()> {
    let drops = dp.drop_counts()?;
    for r in DropReason::ALL {
        let n = drops[r as usize];
        if n > 0 {
            outln!("  drop {:<16} {n}", r.name())?;
        }
    }
    let paths = dp.path_counts()?;
    let flows: Vec<String> = [
        Branch::NewFlow,
        Branch::CtHit,
        Branch::Reselect,
        Branch::IcmpError,
    ]
    .iter()
    .map(|&p| format!("{} {}", p.name(), paths[p as usize]))
    .collect();
    outln!("  paths: {}", flows.join(", "))?;
    let ct_insert_failed = paths[Branch::CtInsertFailed as usize];
    if ct_insert_failed > 0 {
        outln!("  {} {ct_insert_failed}", Branch::CtInsertFailed.name())?;
    }
    for svc in &cfg.services {
        let c = dp.service_counters(&svc.name)?;
        outln!(
            "  service {:<12} packets {:>6} bytes {:>8} new flows {:>5}",
            svc.name,
            c.packets,
            c.bytes,
            c.new_flows
        )?;
        for b in cfg.service_backends(svc) {
            let c = dp.backend_counters(&svc.name, &b.name)?;
            let mark = if down.contains(&b.name) {
                " (down)"
            } else {
                ""
            };
            outln!(
                "    backend {:<14} packets {:>6} new flows {:>5}{mark}",
                b.name,
                c.packets,
                c.new_flows
            )?;
        }
    }
    Ok(())
}
