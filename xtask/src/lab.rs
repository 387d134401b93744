//! `cargo xtask lab up|down|status|exec`: a lab of network namespaces on
//! this machine — clients, an edge host for steer, a router, and six
//! backends in three regions — built with `ip`. See docs/lab.md.
//!
//! Also a library for the demo and end-to-end tests: [`Lab::up`],
//! [`Lab::down`], [`Lab::existing`], commands in a namespace
//! ([`run_in`], [`command_in`]), traffic from the client namespace
//! ([`Lab::http_get_from_client`], [`Lab::http`], [`Lab::udp`],
//! [`Lab::streams`]), backend control ([`Lab::control`],
//! [`Lab::stop_backend`], [`Lab::start_backend`]) and the steer daemon in
//! the edge namespace ([`Lab::steer_command`]).
//!
//! Every name the lab creates starts with `stl-`; everything it starts is
//! recorded under /run/steer-lab. `down` removes all of it, even from a
//! half-built lab, and `up` starts with a `down`.
#![allow(dead_code)] // the library half is for the demo and the e2e tests

pub mod client;
pub mod policy;
pub mod procs;
pub mod sys;
pub mod topo;
pub mod xdp_pass;

use std::{
    ffi::OsStr,
    fs,
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
    process::{Command, Output},
    time::{Duration, Instant},
};

use anyhow::{anyhow, bail, Context as _, Result};

pub use client::{Load, LoadReport, RunningStreams, StreamReport, Streams};
pub use sys::command_in;
use topo::{Backend, Step, BACKENDS};

use crate::util::{describe, is_root, workspace_root};

/// Where steer pins its maps in the lab (`pin_path` in examples/lab.toml).
pub const PIN_DIR: &str = "/sys/fs/bpf/steer-lab";
/// The lab's steer configuration.
pub const CONFIG: &str = "examples/lab.toml";
/// The same with the lab's client classes and geo steering on web and web6.
pub const GEO_CONFIG: &str = "examples/lab-geo.toml";

/// Runs `program args...` inside namespace `ns` (network namespace only;
/// see [`command_in`]) and returns its output, killing it after `timeout`.
pub fn run_in<I, S>(ns: &str, program: &str, args: I, timeout: Duration) -> Result<Output>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let mut cmd = command_in(ns, program)?;
    cmd.args(args);
    sys::output_with_timeout(&mut cmd, timeout).with_context(|| format!("in {ns}"))
}

/// A namespace name from a short one: `client`, `edge`, `router`, `net`,
/// a backend name (`eu1`) or the full `stl-...` name.
pub fn resolve_ns(name: &str) -> Result<String> {
    let full = match name {
        "client" => topo::NS_CLIENT.to_owned(),
        "edge" => topo::NS_EDGE.to_owned(),
        "router" => topo::NS_ROUTER.to_owned(),
        "net" | "switch" => topo::NS_NET.to_owned(),
        n if n.starts_with(topo::PREFIX) => n.to_owned(),
        n => match topo::backend_named(n) {
            Some(b) => b.ns(),
            None => bail!(
                "unknown namespace {n:?}: use client, edge, router, net, a backend \
                 (eu1, eu2, us1, us2, ap1, ap2) or a full stl-* name"
            ),
        },
    };
    Ok(full)
}

#[derive(Clone, Debug, Default)]
pub struct UpOptions {
    /// A prebuilt `steer-lab-backend`; default: build it with cargo.
    pub backend_bin: Option<PathBuf>,
    /// Print every command.
    pub verbose: bool,
}

/// A running lab.
pub struct Lab {
    bin: PathBuf,
}

fn preflight() -> Result<()> {
    if !is_root() {
        bail!("the lab creates network namespaces: run it as root");
    }
    sys::checked(Command::new("ip").arg("-V"), Duration::from_secs(5))
        .context("iproute2's `ip` is needed (`cargo xtask setup` installs it)")?;
    Ok(())
}

/// Builds steer-lab-backend and returns its path.
pub fn build_backend() -> Result<PathBuf> {
    crate::util::run(Command::new("cargo").current_dir(workspace_root()).args([
        "build",
        "--quiet",
        "-p",
        "steer-lab-backend",
    ]))?;
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map_or_else(|| workspace_root().join("target"), PathBuf::from);
    let bin = target.join("debug").join("steer-lab-backend");
    if !bin.is_file() {
        bail!("built steer-lab-backend but found no {}", bin.display());
    }
    Ok(bin)
}

fn run_step(step: &Step, verbose: bool) -> Result<()> {
    match step {
        Step::Ip(args) => {
            if verbose {
                println!("$ ip {}", args.join(" "));
            }
            sys::ip(args).map(|_| ())
        }
        Step::Sysctl { ns, key, value } => {
            if verbose {
                println!("$ [{ns}] sysctl {}={value}", key.replace('/', "."));
            }
            sys::sysctl(ns, key, value)
        }
        Step::Feature {
            ns,
            ifname,
            feature,
            on,
        } => {
            if verbose {
                println!("$ [{ns}] ethtool -K {ifname} {feature:?} {on}");
            }
            sys::set_feature(ns, ifname, *feature, *on)
        }
        Step::XdpPass { ns, ifname } => {
            if verbose {
                println!(
                    "$ [{ns}] attach XDP program {} to {ifname}",
                    xdp_pass::PROG_NAME
                );
            }
            xdp_pass::attach(ns, ifname)
        }
    }
}

impl Lab {
    /// Tears down anything left over, builds the network, starts the
    /// backends and checks that the client reaches each of them directly.
    /// On failure, removes what it built.
    pub fn up(opts: &UpOptions) -> Result<Lab> {
        preflight()?;
        let start = Instant::now();
        let removed = teardown(false)?;
        if !removed.is_empty() {
            println!("lab up: removed leftovers of an earlier lab:");
            for r in &removed {
                println!("  {r}");
            }
        }
        let src = match &opts.backend_bin {
            Some(b) => b.clone(),
            None => build_backend()?,
        };
        let result = (|| {
            // No bpffs set-up here: `steer run` mounts /sys/fs/bpf itself
            // when its pin_path lies there and nothing is mounted.
            let bin = procs::bin_path();
            fs::create_dir_all(bin.parent().unwrap_or(Path::new("/")))?;
            fs::copy(&src, &bin)
                .with_context(|| format!("copying {} to {}", src.display(), bin.display()))?;
            let plan = topo::plan();
            println!(
                "lab up: building {} namespaces ({} steps)",
                topo::namespaces().len(),
                plan.len()
            );
            for step in &plan {
                run_step(step, opts.verbose)?;
            }
            let lab = Lab { bin };
            lab.start_all()?;
            lab.self_check()?;
            Ok(lab)
        })();
        match result {
            Ok(lab) => {
                println!(
                    "lab up: ready in {:.1}s; steer's config: {CONFIG}",
                    start.elapsed().as_secs_f64()
                );
                Ok(lab)
            }
            Err(e) => {
                eprintln!("lab up: failed: {e:#}\nlab up: removing what was built");
                if let Err(d) = teardown(false) {
                    eprintln!("lab up: cleanup also failed: {d:#}");
                }
                Err(e)
            }
        }
    }

    /// The lab that is already up (`cargo xtask lab up` earlier).
    pub fn existing() -> Result<Lab> {
        let have = sys::lab_namespaces();
        let missing: Vec<String> = topo::namespaces()
            .into_iter()
            .filter(|n| !have.contains(n))
            .collect();
        if !missing.is_empty() {
            bail!(
                "the lab is not up (missing {}); run `cargo xtask lab up`",
                missing.join(", ")
            );
        }
        let bin = procs::bin_path();
        if !bin.is_file() {
            bail!("{} is missing; run `cargo xtask lab up`", bin.display());
        }
        Ok(Lab { bin })
    }

    /// Removes every `stl-*` namespace, the processes in them, the pid
    /// files, and steer's pins and state; fine to call when nothing is up.
    pub fn down() -> Result<()> {
        preflight()?;
        let removed = teardown(true)?;
        if removed.is_empty() {
            println!("lab down: nothing to remove");
        }
        Ok(())
    }

    /// The backend binary (also the clients).
    pub fn backend_bin(&self) -> &Path {
        &self.bin
    }

    fn client(&self) -> client::Client<'_> {
        client::Client { bin: &self.bin }
    }

    fn start_all(&self) -> Result<()> {
        let mut started = Vec::new();
        for b in &BACKENDS {
            started.push((b, procs::spawn_backend(b, &self.bin)?));
        }
        procs::wait_ready(&started)?;
        println!(
            "lab up: started {} backends ({})",
            started.len(),
            started
                .iter()
                .map(|(b, p)| format!("{} pid {p}", b.name))
                .collect::<Vec<_>>()
                .join(", ")
        );
        Ok(())
    }

    /// Starts backend `name` again (after [`Lab::stop_backend`]).
    pub fn start_backend(&self, name: &str) -> Result<i32> {
        let b = backend(name)?;
        let pid = procs::spawn_backend(b, &self.bin)?;
        procs::wait_ready(&[(b, pid)])?;
        Ok(pid)
    }

    /// Kills backend `name`'s process: it stops answering anything
    /// (health checks, traffic, decapsulation).
    pub fn stop_backend(&self, name: &str) -> Result<()> {
        let b = backend(name)?;
        procs::stop_backend(b.name)?;
        Ok(())
    }

    /// `fail`, `recover`, `degrade` or `state` on backend `name`'s control
    /// endpoint; returns its state (JSON: health, counters).
    pub fn control(&self, name: &str, action: &str) -> Result<serde_json::Value> {
        self.client().control(backend(name)?, action)
    }

    /// One GET from client address `src` to `to` (a VIP and port); the
    /// name of the backend that answered.
    pub fn http_get_from_client(&self, src: IpAddr, to: SocketAddr, path: &str) -> Result<String> {
        let r = self.http(&Load::new(to).from([src]).path(path))?;
        match r.backends.keys().next() {
            Some(b) if r.ok == 1 => Ok(b.clone()),
            _ => Err(anyhow!(
                "GET http://{to}{path} from {src}: {}",
                r.errors_by_kind
                    .keys()
                    .next()
                    .map_or("no answer", String::as_str)
            )),
        }
    }

    /// Many GETs, one connection (flow) each.
    pub fn http(&self, load: &Load) -> Result<LoadReport> {
        self.client().http(load)
    }

    /// UDP echo requests, one socket (flow) each; `attempts` sends each.
    pub fn udp(&self, load: &Load, attempts: u32) -> Result<LoadReport> {
        self.client().udp(load, attempts)
    }

    /// Long streams, waited for.
    pub fn streams(&self, s: &Streams) -> Result<StreamReport> {
        self.client().streams(s)
    }

    /// Long streams in the background (e.g. across a steer reload).
    pub fn start_streams(&self, s: &Streams) -> Result<RunningStreams> {
        self.client().start_streams(s)
    }

    /// `steer run --config CONFIG` in the edge namespace (not started).
    /// Kill it by pid when done; `lab down` kills it too.
    pub fn steer_command(&self, steer: &Path, config: &Path) -> Result<Command> {
        let mut cmd = command_in(topo::NS_EDGE, steer)?;
        cmd.arg("run").arg("--config").arg(config);
        Ok(cmd)
    }

    /// Every backend answers the client on its own IPv4 and IPv6 address
    /// (no steer involved); and, if no XDP program is attached to the
    /// edge, nothing answers on the VIPs.
    pub fn self_check(&self) -> Result<()> {
        let mut bad = Vec::new();
        let mut line = Vec::new();
        for b in &BACKENDS {
            for to in [b.http_v4(), b.http_v6()] {
                let r = self.http(&Load::new(to).timeout(Duration::from_secs(2)))?;
                let got = r.backends.keys().next().cloned();
                if r.ok != 1 || got.as_deref() != Some(b.name) {
                    bad.push(format!(
                        "{to}: expected backend {}, got {}",
                        b.name,
                        got.unwrap_or_else(|| format!("{:?}", r.errors_by_kind))
                    ));
                }
            }
            line.push(b.name);
        }
        if !bad.is_empty() {
            bail!(
                "backends not reachable from the client:\n  {}",
                bad.join("\n  ")
            );
        }
        println!(
            "lab up: the client reaches every backend directly, IPv4 and IPv6 ({})",
            line.join(" ")
        );
        if xdp_on_edge().is_none() {
            for vip in [topo::web(), topo::web6()] {
                let r = self.http(&Load::new(vip).timeout(Duration::from_millis(500)))?;
                if r.ok != 0 {
                    bail!(
                        "{vip} answered ({:?}) although no XDP program is attached to {}",
                        r.backends,
                        topo::EDGE_IF
                    );
                }
                println!(
                    "lab up: without steer, {vip} gets no answer ({}), as it should",
                    r.errors_by_kind.keys().next().map_or("?", String::as_str)
                );
            }
        }
        Ok(())
    }
}

fn backend(name: &str) -> Result<&'static Backend> {
    topo::backend_named(name)
        .ok_or_else(|| anyhow!("no backend {name:?} (backends: eu1, eu2, us1, us2, ap1, ap2)"))
}

/// The XDP program on the edge interface: `(mode, prog id)`.
pub fn xdp_on_edge() -> Option<(String, u32)> {
    let out = sys::ip_quiet(&["-n", topo::NS_EDGE, "-d", "link", "show", topo::EDGE_IF])?;
    let words: Vec<&str> = out.split_whitespace().collect();
    let mode = words
        .iter()
        .find(|w| w.starts_with("xdp"))
        .map(|w| (*w).to_owned())?;
    let id = words
        .windows(3)
        .find(|w| w[0].starts_with("prog/xdp") && w[1] == "id")
        .and_then(|w| w[2].parse().ok())
        .unwrap_or(0);
    Some((mode, id))
}

/// Removes everything of the lab. Returns what it removed; fails if
/// something could not be removed.
fn teardown(verbose: bool) -> Result<Vec<String>> {
    let mut removed = Vec::new();
    let mut problems = Vec::new();
    let say = |removed: &mut Vec<String>, what: String| {
        if verbose {
            println!("lab down: {what}");
        }
        removed.push(what);
    };

    // Recorded backends first, then anything else living in a lab
    // namespace (steer, clients, shells).
    for (name, pid) in procs::recorded() {
        match procs::stop_backend(&name) {
            Ok(_) => say(&mut removed, format!("stopped backend {name} (pid {pid})")),
            Err(e) => problems.push(format!("{e:#}")),
        }
    }
    let namespaces = sys::lab_namespaces();
    let mut pids = Vec::new();
    for ns in &namespaces {
        for pid in sys::pids_in(ns) {
            let what = sys::cmdline(pid);
            say(
                &mut removed,
                format!("stopping pid {pid} in {ns}: {}", shorten(&what)),
            );
            pids.push(pid);
        }
    }
    let survivors = sys::terminate(&pids, Duration::from_secs(3));
    if !survivors.is_empty() {
        problems.push(format!("processes survived SIGKILL: {survivors:?}"));
    }

    for ns in &namespaces {
        match sys::ip(&["netns", "del", ns]) {
            Ok(_) => say(&mut removed, format!("deleted namespace {ns}")),
            Err(e) => problems.push(format!("{e:#}")),
        }
    }
    // The lab never creates links in the host namespace; remove any that a
    // crashed run or a person left there anyway.
    for link in host_lab_links() {
        match sys::ip(&["link", "del", &link]) {
            Ok(_) => say(&mut removed, format!("deleted host link {link}")),
            Err(e) => problems.push(format!("{e:#}")),
        }
    }
    for dir in [PIN_DIR, procs::RUN_DIR] {
        let p = Path::new(dir);
        if p.exists() {
            match fs::remove_dir_all(p) {
                Ok(()) => say(&mut removed, format!("removed {dir}")),
                Err(e) => problems.push(format!("removing {dir}: {e}")),
            }
        }
    }
    let left = sys::lab_namespaces();
    if !left.is_empty() {
        problems.push(format!("namespaces still there: {}", left.join(", ")));
    }
    if !problems.is_empty() {
        bail!("lab down: incomplete:\n  {}", problems.join("\n  "));
    }
    Ok(removed)
}

fn host_lab_links() -> Vec<String> {
    sys::ip_quiet(&["-o", "link", "show"])
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split(':').nth(1))
        .map(|n| n.trim().split('@').next().unwrap_or("").to_owned())
        .filter(|n| n.starts_with(topo::PREFIX))
        .collect()
}

fn shorten(s: &str) -> String {
    if s.chars().count() > 100 {
        format!("{}...", s.chars().take(100).collect::<String>())
    } else {
        s.to_owned()
    }
}

/// `lab status`: what exists; with `probe`, what answers.
pub fn status(probe: bool) -> Result<()> {
    let expected = topo::namespaces();
    let have = sys::lab_namespaces();
    let present = expected.iter().filter(|n| have.contains(n)).count();
    let state = match present {
        0 if have.is_empty() => "down",
        n if n == expected.len() => "up",
        _ => "partly up",
    };
    println!("lab: {state} ({present} of {} namespaces)", expected.len());
    if have.is_empty() {
        return Ok(());
    }
    let extra: Vec<&String> = have.iter().filter(|n| !expected.contains(n)).collect();
    let missing: Vec<&String> = expected.iter().filter(|n| !have.contains(n)).collect();
    if !missing.is_empty() {
        println!("  missing: {}", join(&missing));
    }
    if !extra.is_empty() {
        println!("  unexpected stl-* namespaces: {}", join(&extra));
    }

    let addrs = |ns: &str, dev: &str| {
        sys::ip_quiet(&["-n", ns, "-br", "addr", "show", "dev", dev])
            .and_then(|o| {
                o.split_whitespace()
                    .skip(2)
                    .map(str::to_owned)
                    .reduce(|a, b| format!("{a} {b}"))
            })
            .unwrap_or_else(|| "(missing)".into())
    };
    let present = |ns: &str| have.iter().any(|n| n == ns);
    if present(topo::NS_EDGE) {
        status_edge(&addrs);
    }
    if present(topo::NS_ROUTER) {
        println!(
            "router ({}): {} {} [next_hop_mac {}]; {} {}",
            topo::NS_ROUTER,
            topo::ROUTER_FRONT_IF,
            addrs(topo::NS_ROUTER, topo::ROUTER_FRONT_IF),
            topo::ROUTER_MAC,
            topo::ROUTER_BACK_IF,
            addrs(topo::NS_ROUTER, topo::ROUTER_BACK_IF),
        );
    }
    if present(topo::NS_CLIENT) {
        println!(
            "client ({}): {} addresses on {} and lo",
            topo::NS_CLIENT,
            topo::client_addrs(false).len() + topo::client_addrs(true).len(),
            topo::CLIENT_IF
        );
    }
    status_backends(&have, probe)
}

fn status_edge(addrs: &dyn Fn(&str, &str) -> String) {
    println!("\nedge ({}):", topo::NS_EDGE);
    println!(
        "  {} {} {}",
        topo::EDGE_IF,
        topo::EDGE_MAC,
        addrs(topo::NS_EDGE, topo::EDGE_IF)
    );
    match xdp_on_edge() {
        Some((mode, id)) => println!("  XDP: {mode}, program id {id}"),
        None => println!("  XDP: none attached (steer is not running)"),
    }
    let pins = fs::read_dir(PIN_DIR).map(|d| d.count()).ok();
    match pins {
        Some(n) => println!("  steer pins: {PIN_DIR} ({n} entries)"),
        None => println!("  steer pins: none ({PIN_DIR} absent)"),
    }
}

fn status_backends(have: &[String], probe: bool) -> Result<()> {
    println!("\nbackends:");
    for b in &BACKENDS {
        let proc_state = match procs::backend_pid(b.name) {
            Some(pid) => format!("running, pid {pid}"),
            None => "NOT RUNNING".to_owned(),
        };
        println!(
            "  {:<4} {:<9} {:<10} {:<15} {:<16} {proc_state}",
            b.name,
            b.region,
            b.ns(),
            b.v4,
            b.v6
        );
    }

    let mut others = Vec::new();
    let recorded: Vec<i32> = procs::recorded().into_iter().map(|(_, p)| p).collect();
    for ns in have {
        for pid in sys::pids_in(ns) {
            if !recorded.contains(&pid) {
                others.push(format!(
                    "  {ns}: pid {pid}: {}",
                    shorten(&sys::cmdline(pid))
                ));
            }
        }
    }
    if !others.is_empty() {
        println!("\nother processes in lab namespaces:");
        for o in others {
            println!("{o}");
        }
    }

    if probe {
        println!();
        probe_all()?;
    }
    Ok(())
}

fn join(v: &[&String]) -> String {
    v.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")
}

/// `lab status --probe`: from the client, each backend directly and each
/// VIP through the edge.
fn probe_all() -> Result<()> {
    let lab = Lab::existing()?;
    println!(
        "probe: from {} (each a short GET / or UDP echo):",
        topo::NS_CLIENT
    );
    for b in &BACKENDS {
        let mut cells = Vec::new();
        for to in [b.http_v4(), b.http_v6()] {
            let r = lab.http(&Load::new(to).timeout(Duration::from_secs(1)))?;
            cells.push(if r.ok == 1 {
                "ok".to_owned()
            } else {
                format!("{:?}", r.errors_by_kind.keys().collect::<Vec<_>>())
            });
        }
        let health = lab
            .control(b.name, "state")
            .ok()
            .and_then(|v| v.get("health").and_then(|h| h.as_str()).map(str::to_owned))
            .unwrap_or_else(|| "?".into());
        println!(
            "  backend {:<4} http {}: {}, {}: {}; health {health}",
            b.name, b.v4, cells[0], b.v6, cells[1]
        );
    }
    let v4 = topo::client_addrs(false);
    let v6 = topo::client_addrs(true);
    let describe_report = |r: &LoadReport| {
        let spread = r
            .backends
            .iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect::<Vec<_>>()
            .join(", ");
        let errs = r
            .errors_by_kind
            .iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect::<Vec<_>>()
            .join(", ");
        format!(
            "{}/{} answered{}{}",
            r.ok,
            r.requests,
            if spread.is_empty() {
                String::new()
            } else {
                format!(" [{spread}]")
            },
            if errs.is_empty() {
                String::new()
            } else {
                format!("; errors: {errs}")
            }
        )
    };
    let t = Duration::from_millis(700);
    for (label, to, from) in [
        ("web (IPIP)", topo::web(), &v4),
        ("web-4in6", topo::web_4in6(), &v4),
        ("web-affinity", topo::web_affinity(), &v4),
        ("web6 (6in6)", topo::web6(), &v6),
    ] {
        let r = lab.http(
            &Load::new(to)
                .from(from.iter().copied())
                .requests(12)
                .concurrency(12)
                .timeout(t),
        )?;
        println!("  VIP {label:<13} {to:<22} {}", describe_report(&r));
    }
    for (label, to, from) in [
        ("echo (udp)", topo::echo(), &v4),
        ("echo6 (udp)", topo::echo6(), &v6),
    ] {
        let r = lab.udp(
            &Load::new(to)
                .from(from.iter().copied())
                .requests(12)
                .concurrency(12)
                .timeout(t),
            1,
        )?;
        println!("  VIP {label:<13} {to:<22} {}", describe_report(&r));
    }
    Ok(())
}

/// `lab exec NS -- CMD...`: runs a command in a lab namespace with the
/// terminal attached; returns its exit code.
pub fn exec(ns: &str, cmd: &[String]) -> Result<i32> {
    let ns = resolve_ns(ns)?;
    let (program, args) = cmd
        .split_first()
        .ok_or_else(|| anyhow!("nothing to run: lab exec NS -- COMMAND [ARGS...]"))?;
    let mut c = command_in(&ns, program)?;
    c.args(args);
    let status = c
        .status()
        .with_context(|| format!("could not start `{}` in {ns}", describe(&c)))?;
    Ok(status.code().unwrap_or(1))
}

/// The CLI's `lab up`.
pub fn up_cli(verbose: bool) -> Result<()> {
    Lab::up(&UpOptions {
        backend_bin: None,
        verbose,
    })?;
    println!(
        "\nnext: start steer in the edge namespace, e.g.\n  \
         cargo build -p steer-userspace && cargo xtask lab exec edge -- \
         target/debug/steer run --config {CONFIG}\n\
         then: cargo xtask lab status --probe   (docs/lab.md has more)"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use serde::Deserialize;

    use super::*;

    #[derive(Deserialize)]
    struct Cfg {
        dataplane: Dataplane,
        regions: Vec<Named>,
        backends: Vec<CfgBackend>,
        services: Vec<Service>,
    }
    #[derive(Deserialize)]
    struct Dataplane {
        interfaces: Vec<String>,
        next_hop_mac: String,
        encap_source_v4: String,
        encap_source_v6: String,
        pin_path: String,
    }
    #[derive(Deserialize)]
    struct Named {
        name: String,
    }
    #[derive(Deserialize)]
    struct CfgBackend {
        name: String,
        address: IpAddr,
        region: String,
    }
    #[derive(Deserialize)]
    struct Service {
        vip: IpAddr,
        port: u16,
        backends: Vec<String>,
    }

    /// examples/lab.toml must describe the lab that `lab up` builds.
    #[test]
    fn lab_config_matches_the_topology() {
        let text = fs::read_to_string(workspace_root().join(CONFIG)).unwrap();
        let cfg: Cfg = toml::from_str(&text).unwrap();
        assert_eq!(cfg.dataplane.interfaces, [topo::EDGE_IF]);
        assert_eq!(cfg.dataplane.next_hop_mac, topo::ROUTER_MAC);
        assert_eq!(cfg.dataplane.encap_source_v4, topo::ENCAP_SOURCE_V4);
        assert_eq!(cfg.dataplane.encap_source_v6, topo::ENCAP_SOURCE_V6);
        assert_eq!(cfg.dataplane.pin_path, PIN_DIR);
        let regions: BTreeSet<&str> = cfg.regions.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(regions, topo::REGIONS.into_iter().collect());
        for b in &cfg.backends {
            let host = topo::backend_named(&b.name)
                .unwrap_or_else(|| panic!("{} is no lab backend", b.name));
            assert_eq!(b.region, host.region, "{}", b.name);
            let want: IpAddr = if b.name == host.name {
                host.v4.into()
            } else {
                host.v6.into()
            };
            assert_eq!(b.address, want, "{}", b.name);
        }
        assert_eq!(cfg.backends.len(), 2 * BACKENDS.len());
        let vips: BTreeSet<(IpAddr, u16)> = [
            topo::web(),
            topo::web_4in6(),
            topo::web_affinity(),
            topo::web6(),
            topo::echo(),
            topo::echo6(),
        ]
        .iter()
        .map(|s| (s.ip(), s.port()))
        .collect();
        let cfg_vips: BTreeSet<(IpAddr, u16)> =
            cfg.services.iter().map(|s| (s.vip, s.port)).collect();
        assert_eq!(cfg_vips, vips);
        for s in &cfg.services {
            assert_eq!(s.backends.len(), BACKENDS.len(), "{}", s.vip);
        }
    }

    /// examples/lab-geo.toml is examples/lab.toml with the lab's client
    /// classes (`policy::GEO_CLASSES`) and geo steering on web and web6:
    /// nothing else differs, so what docs/lab.md says of one holds for
    /// the other.
    #[test]
    fn lab_geo_config_is_the_lab_config_with_classes() {
        let read = |name: &str| -> toml::Table {
            let text = fs::read_to_string(workspace_root().join(name)).unwrap();
            toml::from_str(&text).unwrap()
        };
        let lab = read(CONFIG);
        let mut geo = read(GEO_CONFIG);
        let mut want = lab.clone();
        policy::make_geo(&mut want, &["web", "web6"]).unwrap();
        assert_eq!(geo, want);
        geo.remove("client_classes");
        for s in geo["services"].as_array().unwrap() {
            let s = s.as_table().unwrap();
            let name = s["name"].as_str().unwrap();
            assert_eq!(
                s.contains_key("policy"),
                name == "web" || name == "web6",
                "{name}"
            );
        }
        steer_config::Config::load(&workspace_root().join(GEO_CONFIG)).unwrap();
    }

    #[test]
    fn short_namespace_names() {
        assert_eq!(resolve_ns("edge").unwrap(), "stl-edge");
        assert_eq!(resolve_ns("eu1").unwrap(), "stl-b-eu1");
        assert_eq!(resolve_ns("stl-router").unwrap(), "stl-router");
        assert!(resolve_ns("nope").is_err());
    }
}
