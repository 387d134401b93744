//! The `steer` command.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context as _, Result};
use clap::{Parser, Subcommand};
use steer::api::{self, Request, Response};
use steer::config::Config;
use steer::dataplane::{Dataplane, Verdict};
use steer::pcap;
use steer_common::{Branch, DropReason};

#[derive(Parser)]
#[command(name = "steer", version, about = "XDP traffic steerer")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

/// Where to find the running daemon's control socket.
#[derive(clap::Args, Clone)]
struct Target {
    /// The daemon's config (its control.socket is used).
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// The control socket, if not the one in the config.
    #[arg(long)]
    socket: Option<PathBuf>,
}

impl Target {
    fn socket(&self) -> Result<PathBuf> {
        if let Some(s) = &self.socket {
            return Ok(s.clone());
        }
        if let Some(c) = &self.config {
            return socket_from_config(c);
        }
        Ok(PathBuf::from(DEFAULT_SOCKET))
    }
}

const DEFAULT_SOCKET: &str = "/run/steer/control.sock";

/// The control socket named by a config file. Only `[control] socket` is
/// read: the file may be invalid (that is what `steer reload` is for; the
/// daemon validates it and reports every error).
fn socket_from_config(path: &std::path::Path) -> Result<PathBuf> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let socket = toml::from_str::<toml::Table>(&text)
        .ok()
        .and_then(|t| t.get("control")?.get("socket")?.as_str().map(PathBuf::from));
    Ok(socket.unwrap_or_else(|| PathBuf::from(DEFAULT_SOCKET)))
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum Mode {
    Driver,
    Skb,
    Auto,
}

#[derive(Subcommand)]
enum Cmd {
    /// Attach to the configured interfaces and steer traffic until SIGTERM
    /// or `steer stop`.
    Run {
        #[arg(long, short)]
        config: PathBuf,
        /// Interface to attach to (repeatable); overrides dataplane.interfaces.
        #[arg(long = "iface", value_name = "IFACE")]
        iface: Vec<String>,
        /// XDP attach mode; overrides dataplane.mode.
        #[arg(long, value_enum)]
        mode: Option<Mode>,
    },
    /// Stop the daemon: by default it detaches XDP and removes its pinned
    /// state. With --detach, also cleans up after a daemon that was killed.
    Stop {
        #[command(flatten)]
        target: Target,
        /// Detach and remove pins even if no daemon is running.
        #[arg(long, conflicts_with = "keep_forwarding")]
        detach: bool,
        /// Exit but leave XDP attached, forwarding on the last programmed
        /// state (for upgrades: the next `steer run` adopts it).
        #[arg(long)]
        keep_forwarding: bool,
    },
    /// Make the daemon re-read its config (same as SIGHUP).
    Reload {
        #[command(flatten)]
        target: Target,
    },
    /// Services, backends, health and counters.
    Status {
        #[command(flatten)]
        target: Target,
        /// JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Stop sending new flows to a backend (established flows continue).
    Drain {
        backend: String,
        /// Send new flows to it again.
        #[arg(long)]
        undo: bool,
        #[command(flatten)]
        target: Target,
    },
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
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let result = match cli.cmd {
        Cmd::Run {
            config,
            iface,
            mode,
        } => steer::daemon::run(steer::daemon::RunOptions {
            config_path: config,
            interfaces: iface,
            mode: mode.map(|m| match m {
                Mode::Driver => steer::config::AttachMode::Driver,
                Mode::Skb => steer::config::AttachMode::Skb,
                Mode::Auto => steer::config::AttachMode::Auto,
            }),
        })
        .map(|()| ExitCode::SUCCESS),
        Cmd::Stop {
            target,
            detach,
            keep_forwarding,
        } => stop(&target, detach, keep_forwarding),
        Cmd::Reload { target } => control(&target, Request::Reload, false),
        Cmd::Status { target, json } => control(&target, Request::Status, json),
        Cmd::Drain {
            backend,
            undo,
            target,
        } => control(&target, Request::Drain { backend, undo }, false),
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

fn block_on<F: std::future::Future>(f: F) -> Result<F::Output> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?
        .block_on(f))
}

/// Sends one request to the daemon and prints the answer.
fn control(target: &Target, req: Request, json: bool) -> Result<ExitCode> {
    let socket = target.socket()?;
    let resp = block_on(api::request(&socket, &req))??;
    Ok(print_response(resp, json))
}

fn print_response(resp: Response, json: bool) -> ExitCode {
    match resp {
        Response::Status(report) => {
            if json {
                match serde_json::to_string_pretty(&report) {
                    Ok(s) => println!("{s}"),
                    Err(e) => {
                        eprintln!("steer: error: {e}");
                        return ExitCode::FAILURE;
                    }
                }
            } else {
                print!("{}", api::render_status_table(&report));
            }
            ExitCode::SUCCESS
        }
        Response::Ok { message } => {
            println!("{message}");
            ExitCode::SUCCESS
        }
        Response::Error { message, details } => {
            eprintln!("steer: error: {message}");
            for d in details {
                eprintln!("  {d}");
            }
            ExitCode::FAILURE
        }
    }
}

fn stop(target: &Target, detach: bool, keep_forwarding: bool) -> Result<ExitCode> {
    let socket = target.socket()?;
    let req = Request::Stop {
        detach: !keep_forwarding,
    };
    match block_on(api::request(&socket, &req))? {
        Ok(resp) => {
            let code = print_response(resp, false);
            // Wait (bounded) for the daemon to finish and remove its socket.
            for _ in 0..100 {
                if !socket.exists() {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
            Ok(code)
        }
        Err(e) if detach => {
            // No daemon: clean up what a killed one left behind.
            let Some(config) = &target.config else {
                bail!("{e}; to clean up pinned state without a daemon, pass --config FILE");
            };
            let cfg = load_config(config)?;
            let persist = steer::daemon::persist_for(&cfg);
            let ifaces = Dataplane::remove_pins(&persist)?;
            if ifaces.is_empty() {
                println!(
                    "no daemon running and nothing pinned under {}",
                    persist.pin_dir.display()
                );
            } else {
                println!(
                    "no daemon running; detached from {} and removed {}",
                    ifaces.join(", "),
                    persist.pin_dir.display()
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => Err(e.into()),
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
    for r in DropReason::ALL {
        let n = drops[r as usize];
        if n > 0 {
            println!("  drop {:<16} {n}", r.name());
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
    println!("  paths: {}", flows.join(", "));
    let ct_insert_failed = paths[Branch::CtInsertFailed as usize];
    if ct_insert_failed > 0 {
        println!("  {} {ct_insert_failed}", Branch::CtInsertFailed.name());
    }
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
