//! `steer replay`: run a capture through the real XDP program, optionally
//! switching to a second configuration and runtime at a given packet
//! (what-if), with conntrack kept across the switch.

mod inputs;
mod moves;

pub use inputs::InputArgs;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context as _, Result};
use steer::dataplane::verdict::{VerdictProgram, XdpVerdict};
use steer::dataplane::{Dataplane, DataplaneError, Limits, Verdict};
use steer::pcap;
use steer::policy::{ApplyConfig as _, Runtime};
use steer_common::{Branch, Counters, DropReason, Passive};

use super::{load_config, outln};

#[derive(clap::Args)]
#[command(group(clap::ArgGroup::new("then").multiple(true)))]
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
    #[command(flatten)]
    inputs: InputArgs,
    /// What-if: before packet number N (1-based), switch to `--then-config`
    /// and/or `--then-state`, keeping conntrack, and report which flows
    /// moved.
    #[arg(long, value_name = "N", requires = "then")]
    at: Option<usize>,
    /// What-if: the configuration to switch to at `--at` (default: the
    /// same). Its `[dataplane]` sizes must match `--config`'s.
    #[arg(long, value_name = "FILE", requires = "at", group = "then")]
    then_config: Option<PathBuf>,
    /// What-if: the runtime inputs to switch to at `--at` (default: the
    /// same as before the switch); see `--state`.
    #[arg(long, value_name = "FILE", requires = "at", group = "then")]
    then_state: Option<PathBuf>,
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
        inputs,
        at,
        then_config,
        then_state,
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
    let runtime = inputs.runtime(&cfg, &config)?;
    // The what-if switch: the second config and runtime, checked before
    // anything runs.
    let then = match at {
        None => None,
        Some(0) => bail!("--at 0: packet numbers start at 1"),
        Some(n) => {
            let (then_cfg, then_path) = match &then_config {
                None => (cfg.clone(), config.clone()),
                Some(p) => {
                    let mut c = load_config(p)?;
                    if source_mac.is_some() || c.dataplane.source_mac.is_none() {
                        c.dataplane.source_mac = cfg.dataplane.source_mac;
                    }
                    (c, p.clone())
                }
            };
            let (a, b) = (
                Limits::from(&cfg.dataplane),
                Limits::from(&then_cfg.dataplane),
            );
            if a != b {
                bail!(
                    "--then-config {} changes the data plane's sizes (conntrack_size, \
                     conntrack_size_v6, maglev_table_size, max_tables or max_reals: {b:?} instead of {a:?}); \
                     replay keeps one loaded program across the switch, so these must \
                     match {}",
                    then_path.display(),
                    config.display()
                );
            }
            let then_inputs = InputArgs {
                state: then_state.clone(),
                ..Default::default()
            };
            let then_runtime = if then_state.is_some() {
                then_inputs.runtime(&then_cfg, &then_path)?
            } else {
                runtime.clone()
            };
            Some((n, then_cfg, then_runtime))
        }
    };
    let file = std::fs::File::open(&input)
        .with_context(|| format!("cannot open input capture {}", input.display()))?;
    let records = pcap::read_all(std::io::BufReader::new(file))
        .with_context(|| format!("{} is not a usable capture", input.display()))?;
    if let Some((n, ..)) = &then {
        if *n > records.len() {
            bail!(
                "--at {n}: {} has only {} packets",
                input.display(),
                records.len()
            );
        }
    }
    let mut dp = Dataplane::load(&cfg.dataplane).context("loading the XDP program")?;
    dp.apply_runtime(&cfg, &runtime)
        .context("programming the maps")?;

    let mut tx = Vec::new();
    let mut verdicts = BTreeMap::<Verdict, u64>::new();
    let mut too_short = 0u64;
    let mut too_large = TooLarge::default();
    let mut largest_run = 0usize;
    let mut moves = moves::Moves::default();
    // (counters at the switch, the config and runtime switched to)
    let mut switched: Option<(Snapshot, steer::config::Config, Runtime)> = None;
    let mut then = then;
    for (i, r) in records.iter().enumerate() {
        let number = i + 1;
        if let Some((_, then_cfg, then_runtime)) = then.take_if(|(n, ..)| *n == number) {
            let snap = snapshot(&cfg, &dp)?;
            outln!("phase 1: packets 1 to {}", number - 1)?;
            print_counters(&cfg, &dp, &runtime, None)?;
            dp.apply_runtime(&then_cfg, &then_runtime)
                .context("programming the maps for the what-if switch")?;
            moves.switch();
            switched = Some((snap, then_cfg, then_runtime));
        }
        let len = r.data.len();
        match dp.run(&r.data) {
            Ok(out) => {
                largest_run = largest_run.max(len);
                *verdicts.entry(out.verdict).or_default() += 1;
                if out.verdict == Verdict::Tx {
                    moves.forwarded(&r.data, &out.data);
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
    match &switched {
        None => print_counters(&cfg, &dp, &runtime, None)?,
        Some((snap, then_cfg, then_runtime)) => {
            outln!(
                "phase 2: packets {} to {} (after the switch)",
                at.unwrap_or_default(),
                records.len()
            )?;
            print_counters(then_cfg, &dp, then_runtime, Some(snap))?;
            let s = moves.summary();
            outln!(
                "what-if at packet {}: {} flows forwarded before and after the switch, {} of \
                 them moved to another backend; {} new flows after it",
                at.unwrap_or_default(),
                s.continuing,
                s.moved.len(),
                s.new_after
            )?;
            let name = |a: &std::net::IpAddr| {
                then_cfg
                    .backends
                    .iter()
                    .chain(&cfg.backends)
                    .find(|b| b.address == *a)
                    .map_or_else(|| a.to_string(), |b| b.name.clone())
            };
            for (flow, before, after) in s.moved.iter().take(5) {
                outln!("  moved {flow}: {} -> {}", name(before), name(after))?;
            }
            if s.moved.len() > 5 {
                outln!("  ... and {} more", s.moved.len() - 5)?;
            }
        }
    }
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

/// Per-service and per-backend counters at one moment, by name (the
/// passive counters: backends only; zero for a service).
type Snapshot = BTreeMap<(String, Option<String>), (Counters, Passive)>;

fn snapshot(cfg: &steer::config::Config, dp: &Dataplane) -> Result<Snapshot> {
    let mut snap = Snapshot::new();
    for svc in &cfg.services {
        snap.insert(
            (svc.name.clone(), None),
            (dp.service_counters(&svc.name)?, Passive::default()),
        );
        for b in cfg.service_backends(svc) {
            snap.insert(
                (svc.name.clone(), Some(b.name.clone())),
                (
                    dp.backend_counters(&svc.name, &b.name)?,
                    dp.backend_passive(&svc.name, &b.name)?,
                ),
            );
        }
    }
    Ok(snap)
}

/// Prints the drop and path counters (all packets so far) and the service,
/// region and backend counters, less `since` when given (the counters of a
/// what-if phase).
fn print_counters(
    cfg: &steer::config::Config,
    dp: &Dataplane,
    runtime: &Runtime,
    since: Option<&Snapshot>,
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
        Branch::SynPromoted,
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
    let pmtu = paths[Branch::PmtuReply as usize];
    if pmtu > 0 {
        outln!("  {} {pmtu}", Branch::PmtuReply.name())?;
    }
    let less = |(c, p): (Counters, Passive), key: (String, Option<String>)| match since
        .and_then(|s| s.get(&key))
    {
        None => (c, p),
        Some((b, bp)) => (
            Counters {
                packets: c.packets.saturating_sub(b.packets),
                bytes: c.bytes.saturating_sub(b.bytes),
                new_flows: c.new_flows.saturating_sub(b.new_flows),
            },
            Passive {
                repeated_syns: p.repeated_syns.saturating_sub(bp.repeated_syns),
                handshakes: p.handshakes.saturating_sub(bp.handshakes),
            },
        ),
    };
    for svc in &cfg.services {
        let (c, _) = less(
            (dp.service_counters(&svc.name)?, Passive::default()),
            (svc.name.clone(), None),
        );
        outln!(
            "  service {:<12} packets {:>6} bytes {:>8} new flows {:>5}",
            svc.name,
            c.packets,
            c.bytes,
            c.new_flows
        )?;
        let mut regions: BTreeMap<&str, u64> = BTreeMap::new();
        let mut lines = Vec::new();
        for b in cfg.service_backends(svc) {
            let (c, p) = less(
                (
                    dp.backend_counters(&svc.name, &b.name)?,
                    dp.backend_passive(&svc.name, &b.name)?,
                ),
                (svc.name.clone(), Some(b.name.clone())),
            );
            *regions.entry(b.region.as_str()).or_default() += c.new_flows;
            let mark = if runtime.backends.down.contains(&b.name) {
                " (down)"
            } else if runtime.backends.drained.contains(&b.name) {
                " (drained)"
            } else {
                ""
            };
            lines.push(format!(
                "    backend {:<14} packets {:>6} new flows {:>5} repeated syns {:>5} handshakes {:>5}{mark}",
                b.name, c.packets, c.new_flows, p.repeated_syns, p.handshakes
            ));
        }
        // New flows per region, with their share of the service's.
        let total: u64 = regions.values().sum();
        for (r, n) in &regions {
            let pct = if total == 0 {
                0.0
            } else {
                100.0 * *n as f64 / total as f64
            };
            let mark = if runtime.drained_regions.contains(*r) {
                " (drained)"
            } else {
                ""
            };
            outln!("    region {r:<15} new flows {n:>5} ({pct:.1}%){mark}")?;
        }
        for l in lines {
            outln!("{l}")?;
        }
    }
    Ok(())
}
