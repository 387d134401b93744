//! The lab demo: steer steering real HTTP traffic between namespaces.
//!
//! 1. Builds the release `steer`, brings the lab up (`Lab::up`, which also
//!    builds the lab backend), copies examples/lab.toml to
//!    target/demo/steer.toml and starts `steer run` on it in the edge
//!    namespace (log: target/demo/steer.log).
//! 2. Starts two `steer-lab-backend client-live` processes in the client
//!    namespace: GETs to the IPv4 VIP from 20 IPv4 addresses and to the
//!    IPv6 VIP from 20 IPv6 addresses (three prefixes each), every request
//!    a new connection, reported one JSON line each.
//! 3. Shows where the requests go, by region and backend, refreshed twice
//!    a second (a full-screen table on a terminal, one line a second
//!    otherwise), next to steer's own view (`steer status --json`).
//! 4. Fails both backends of eu-west (their health endpoint answers 503)
//!    and measures the failover: the time from the fail command to the
//!    start of the last request that still reached eu-west. Restores them
//!    and measures how long until eu-west gets requests again. Drains a
//!    backend that has long streams open and checks that it gets no new
//!    requests while its streams complete. Reloads the config with new
//!    weights while long streams run and checks that they all complete
//!    intact and the shares move.
//! 5. Switches `web` and `web6` to geo steering over the lab's client
//!    classes ([`lab::policy`]) by a reload and checks that each class's
//!    new connections land in its first region; then turns eu-west's
//!    traffic dial from 100 to 30 while long streams from the European
//!    class run, and checks that about 70 % of that class's new
//!    connections spill to us-east while the streams stay and complete.
//! 6. Tears everything down (also on error, panic or Ctrl-C) and fails if
//!    any check failed.
use std::{
    collections::BTreeMap,
    fmt::Write as _,
    fs::{self, File},
    io::{BufRead as _, BufReader, IsTerminal as _, Write as _},
    net::{IpAddr, SocketAddr},
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    sync::{Arc, Mutex},
    thread,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{anyhow, bail, Context as _, Result};
use serde::Deserialize;
use steer_api::{BackendStatus, Health, StatusReport};
use steer_config::parse_duration;

use crate::{
    lab::{
        self,
        policy::{self, GEO_CLASSES},
        procs, sys, topo, Lab, StreamReport, Streams, UpOptions,
    },
    signals,
    util::{describe, is_root, workspace_root},
};

/// Requests per second to each VIP.
const RATE_WEB: u32 = 120;
const RATE_WEB6: u32 = 80;
/// The region the demo fails, and the host whose weight the reload raises.
const FAIL_REGION: &str = "eu-west";
const HEAVY_REGION: &str = "us-east";
const HEAVY_WEIGHT: u32 = 300;
/// How long after a drain a new request may still reach the backend (the
/// drain reaches the maps when `steer drain` returns; this is slack for
/// requests that were already being opened).
const DRAIN_SLACK: Duration = Duration::from_millis(500);
/// The region whose traffic dial the demo turns down, and to what.
const DIAL_REGION: &str = "eu-west";
const DIAL: i64 = 30;
/// The demo's (not a test's) tolerance for a share over a few hundred
/// requests: about three standard deviations.
const DEMO_TOLERANCE_PP: f64 = 8.0;
/// The redraw interval.
const TICK: Duration = Duration::from_millis(500);

// --------------------------------------------------------------- signals --

/// Ctrl-C and SIGTERM are caught ([`signals`]) and every wait checks
/// for them, so the demo unwinds through its teardown instead of dying
/// with the lab up. steer and the clients run in their own process
/// groups, so Ctrl-C reaches only this process.
fn interrupted() -> Result<()> {
    if signals::caught().is_some() {
        bail!("interrupted");
    }
    Ok(())
}

/// Sleeps `d`, waking early (with an error) on Ctrl-C.
fn sleep(d: Duration) -> Result<()> {
    let end = Instant::now() + d;
    loop {
        interrupted()?;
        let now = Instant::now();
        if now >= end {
            return Ok(());
        }
        thread::sleep((end - now).min(Duration::from_millis(50)));
    }
}

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

fn secs(us: u64) -> f64 {
    us as f64 / 1e6
}

/// Own process group (Ctrl-C goes to the demo only, which then stops the
/// child in order) and SIGTERM when the demo dies without cleaning up.
fn detach(cmd: &mut Command) {
    cmd.process_group(0);
    // SAFETY: prctl(2) is async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
            Ok(())
        });
    }
}

// ----------------------------------------------------------------- guard --

/// Everything the demo started; [`Guard::teardown`] (or dropping it) stops
/// all of it and removes the lab.
#[derive(Default)]
struct Guard {
    lab: bool,
    steer: Option<Child>,
    clients: Vec<Child>,
    done: bool,
}

impl Guard {
    fn stop_clients(&mut self) {
        for c in &mut self.clients {
            let _ = c.kill();
            let _ = c.wait();
        }
        self.clients.clear();
    }

    /// SIGTERM to steer (it detaches XDP and removes its pins), SIGKILL if
    /// it is still there after 10 s. Its exit status.
    fn stop_steer(&mut self) -> Option<ExitStatus> {
        sys::terminate_child(self.steer.take()?, Duration::from_secs(10))
    }

    fn teardown(&mut self) -> Result<Option<ExitStatus>> {
        self.done = true;
        self.stop_clients();
        let steer = self.stop_steer();
        if self.lab {
            self.lab = false;
            Lab::down()?;
        }
        Ok(steer)
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        if !self.done {
            if let Err(e) = self.teardown() {
                eprintln!("demo: teardown: {e:#}");
            }
        }
    }
}

// ------------------------------------------------------------------ feed --

/// One request of a `client-live` process.
struct Req {
    /// 0: the IPv4 VIP, 1: the IPv6 VIP.
    vip: usize,
    /// When the client opened the connection (µs since the epoch).
    start_us: u64,
    /// When its line arrived here.
    arrived: Instant,
    src: Option<IpAddr>,
    backend: Option<String>,
    error: Option<String>,
}

#[derive(Deserialize)]
struct Line {
    start_us: u64,
    src: Option<IpAddr>,
    backend: Option<String>,
    error: Option<String>,
}

#[derive(Default)]
struct Feed {
    reqs: Vec<Req>,
    bad_lines: u64,
}

type SharedFeed = Arc<Mutex<Feed>>;

/// Counts over a set of requests.
#[derive(Default)]
struct Stats {
    total: u64,
    errors: u64,
    hosts: BTreeMap<String, u64>,
    prefixes: BTreeMap<&'static str, u64>,
    error_kinds: BTreeMap<String, u64>,
}

impl Stats {
    fn add(&mut self, r: &Req, prefixes: &[(IpAddr, &'static str)]) {
        self.total += 1;
        match (&r.backend, &r.error) {
            (Some(b), None) => *self.hosts.entry(b.clone()).or_default() += 1,
            (_, e) => {
                self.errors += 1;
                let kind = e.clone().unwrap_or_else(|| "no backend".into());
                *self.error_kinds.entry(kind).or_default() += 1;
            }
        }
        if let Some(p) = r
            .src
            .and_then(|s| prefixes.iter().find(|(a, _)| *a == s))
            .map(|(_, p)| *p)
        {
            *self.prefixes.entry(p).or_default() += 1;
        }
    }

    fn ok(&self) -> u64 {
        self.total - self.errors
    }

    fn host(&self, h: &str) -> u64 {
        self.hosts.get(h).copied().unwrap_or(0)
    }

    fn region(&self, region: &str) -> u64 {
        topo::BACKENDS
            .iter()
            .filter(|b| b.region == region)
            .map(|b| self.host(b.name))
            .sum()
    }

    fn share(&self, n: u64) -> f64 {
        if self.ok() == 0 {
            0.0
        } else {
            100.0 * n as f64 / self.ok() as f64
        }
    }

    fn errors_text(&self) -> String {
        if self.errors == 0 {
            return "0 errors".into();
        }
        let kinds: Vec<String> = self
            .error_kinds
            .iter()
            .map(|(k, n)| format!("{n} {k}"))
            .collect();
        format!("{} errors ({})", self.errors, kinds.join(", "))
    }
}

// ---------------------------------------------------------- steer status --

/// What the demo reads from steer's status report (`steer status --json`).
trait StatusView {
    fn backend(&self, service: &str, name: &str) -> Option<&BackendStatus>;
    fn host_health_is(&self, h: &str, health: Health) -> bool;
    fn cell(&self, service: &str, name: &str) -> String;
    fn flag(&self, h: &str) -> &'static str;
}

impl StatusView for StatusReport {
    fn backend(&self, service: &str, name: &str) -> Option<&BackendStatus> {
        self.services
            .iter()
            .find(|s| s.name == service)?
            .backends
            .iter()
            .find(|b| b.name == name)
    }

    /// Both entries of host `h` (IPv4 in `web`, IPv6 in `web6`) have this
    /// health.
    fn host_health_is(&self, h: &str, health: Health) -> bool {
        let v6 = format!("{h}-v6");
        [("web", h), ("web6", v6.as_str())]
            .iter()
            .all(|(s, b)| self.backend(s, b).is_some_and(|b| b.health == health))
    }

    fn cell(&self, service: &str, name: &str) -> String {
        match self.backend(service, name) {
            Some(b) => {
                let state = if b.drained {
                    "drained"
                } else if b.health == Health::Down {
                    "DOWN"
                } else {
                    b.health.as_str()
                };
                format!("{state:<8}{:>4}", b.effective_weight)
            }
            None => format!("{:<12}", "?"),
        }
    }

    /// Short state of host `h` for one-line output: "" when up.
    fn flag(&self, h: &str) -> &'static str {
        match self.backend("web", h) {
            Some(b) if b.drained => "/drained",
            Some(b) if b.health == Health::Down => "/DOWN",
            Some(b) if b.health == Health::Degraded => "/degraded",
            _ => "",
        }
    }
}

// ------------------------------------------------------- health timing --

#[derive(Deserialize)]
struct HealthCfg {
    health_checks: Vec<HealthCheck>,
}

#[derive(Deserialize)]
struct HealthCheck {
    interval: String,
    rise: u32,
    fall: u32,
}

/// The lab's health check: interval, rise, fall.
struct Timing {
    interval: Duration,
    rise: u32,
    fall: u32,
}

impl Timing {
    fn load(config: &Path) -> Result<Timing> {
        let text = fs::read_to_string(config)?;
        let cfg: HealthCfg = toml::from_str(&text)?;
        let hc = cfg
            .health_checks
            .first()
            .ok_or_else(|| anyhow!("{} has no health check", config.display()))?;
        Ok(Timing {
            interval: parse_duration(&hc.interval)
                .map_err(|e| anyhow!("{}: health_checks[0].interval: {e}", config.display()))?,
            rise: hc.rise,
            fall: hc.fall,
        })
    }

    /// The longest acceptable failover: fall × interval + 1 s.
    fn failover_limit(&self) -> Duration {
        self.interval * self.fall + Duration::from_secs(1)
    }

    /// The longest acceptable return: rise × interval + 1 s.
    fn return_limit(&self) -> Duration {
        self.interval * self.rise + Duration::from_secs(1)
    }
}

// ------------------------------------------------------------------ view --

/// The terminal's (rows, columns); 24 × 80 if unknown.
fn term_size() -> (usize, usize) {
    // SAFETY: an all-zero winsize is valid.
    let mut ws: libc::winsize = unsafe { std::mem::zeroed() };
    // SAFETY: TIOCGWINSZ writes a struct winsize into `ws`.
    let ok = unsafe { libc::ioctl(libc::STDOUT_FILENO, libc::TIOCGWINSZ, &raw mut ws) } == 0;
    if ok && ws.ws_row > 0 && ws.ws_col > 0 {
        (usize::from(ws.ws_row), usize::from(ws.ws_col))
    } else {
        (24, 80)
    }
}

struct View {
    tty: bool,
    start: Instant,
    phase: String,
    events: Vec<String>,
    ticks: u64,
}

impl View {
    fn t(&self) -> f64 {
        self.start.elapsed().as_secs_f64()
    }

    fn event(&mut self, msg: impl AsRef<str>) {
        let t = self.t();
        for (i, l) in msg.as_ref().lines().enumerate() {
            let line = if i == 0 {
                format!("[{t:5.1}s] {l}")
            } else {
                format!("         {l}")
            };
            if !self.tty {
                println!("{line}");
            }
            self.events.push(line);
        }
    }

    fn heading(&mut self, title: &str) {
        self.phase = title.to_owned();
        if self.tty {
            self.events.push(format!("── {title}"));
        } else {
            println!("\n== {title}");
        }
    }
}

// ------------------------------------------------------------ the checks --

struct Check {
    ok: bool,
    what: String,
}

// ------------------------------------------------------------------ demo --

struct Demo {
    guard: Guard,
    lab: Lab,
    root: PathBuf,
    dir: PathBuf,
    steer_bin: PathBuf,
    /// The config steer runs on (a copy of examples/lab.toml).
    config: PathBuf,
    timing: Timing,
    feed: SharedFeed,
    prefixes: Vec<(IpAddr, &'static str)>,
    view: View,
    status: Option<StatusReport>,
    /// Where the current phase started (µs since the epoch).
    phase_us: u64,
    checks: Vec<Check>,
    /// Numbers for the summary.
    summary: Vec<(String, String)>,
}

pub fn run() -> Result<()> {
    if !is_root() {
        bail!("the demo builds a lab of network namespaces and attaches XDP: run it as root");
    }
    signals::catch(&[signals::SIGINT, signals::SIGTERM])?;
    let root = workspace_root();
    let dir = root.join("target").join("demo");
    fs::create_dir_all(&dir)?;
    let started = Instant::now();

    println!("steer demo: real traffic through steer in the lab");
    println!("==================================================");
    println!(
        "The lab (docs/lab.md) is a set of network namespaces on this machine: clients,\n\
         an edge host where steer's XDP program runs, a router and six backends in three\n\
         regions. Clients open HTTP connections to a VIP; steer picks a backend for each\n\
         new flow (Maglev), encapsulates the packets to it, and the backend answers the\n\
         client directly. The demo shows where the requests go, then fails a region,\n\
         restores it, drains a backend and reloads new weights, then switches the VIPs\n\
         to geo steering by client prefix and turns a region's traffic dial down, and\n\
         measures each.\n"
    );

    super::replay::build_steer(&root)?;
    let steer_bin = root.join("target").join("release").join("steer");
    interrupted()?;

    let config = dir.join("steer.toml");
    let original = fs::read_to_string(root.join(lab::CONFIG))?;
    fs::write(
        &config,
        format!(
            "# A copy of {} written by `cargo xtask demo`; the demo's reload\n\
             # phase changes weights here.\n{original}",
            lab::CONFIG
        ),
    )?;
    let timing = Timing::load(&config)?;

    let mut guard = Guard::default();
    println!();
    let lab = Lab::up(&UpOptions::default())?;
    guard.lab = true;

    let prefixes = topo::client_prefixes_v4()
        .into_iter()
        .chain(topo::client_prefixes_v6())
        .flat_map(|p| p.addrs.into_iter().map(move |a| (a, p.prefix)))
        .collect();
    let mut demo = Demo {
        guard,
        lab,
        root,
        dir,
        steer_bin,
        config,
        timing,
        feed: SharedFeed::default(),
        prefixes,
        view: View {
            tty: std::io::stdout().is_terminal(),
            start: Instant::now(),
            phase: String::new(),
            events: Vec::new(),
            ticks: 0,
        },
        status: None,
        phase_us: now_us(),
        checks: Vec::new(),
        summary: Vec::new(),
    };
    let result = demo.phases();
    demo.finish(result, started)
}

impl Demo {
    fn check(&mut self, ok: bool, what: impl Into<String>) {
        let what = what.into();
        self.view
            .event(format!("{} {what}", if ok { "✔" } else { "✘ FAILED:" }));
        self.checks.push(Check { ok, what });
    }

    fn note(&mut self, key: &str, value: impl Into<String>) {
        self.summary.push((key.to_owned(), value.into()));
    }

    fn phase(&mut self, title: &str) {
        self.phase_us = now_us();
        self.view.heading(title);
    }

    fn phases(&mut self) -> Result<()> {
        self.start_steer()?;
        self.start_clients()?;
        self.baseline()?;
        self.failover()?;
        self.drain()?;
        self.reload()?;
        self.geo()?;
        self.dial()?;
        self.phase("done: stopping the clients");
        self.guard.stop_clients();
        Ok(())
    }

    // ------------------------------------------------------- processes --

    /// `steer ARGS... --config CONFIG` on the host (the control socket is
    /// a file; no namespace needed); its stdout.
    fn steer(&self, args: &[&str]) -> Result<String> {
        let mut cmd = Command::new(&self.steer_bin);
        cmd.args(args).arg("--config").arg(&self.config);
        let out = sys::output_with_timeout(&mut cmd, Duration::from_secs(10))?;
        if !out.status.success() {
            bail!(
                "`{}` failed ({}): {}{}",
                describe(&cmd),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim(),
                String::from_utf8_lossy(&out.stdout).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    }

    fn refresh_status(&mut self) {
        if let Ok(text) = self.steer(&["status", "--json"]) {
            if let Ok(s) = serde_json::from_str::<StatusReport>(&text) {
                self.status = Some(s);
            }
        }
    }

    fn steer_log(&self) -> PathBuf {
        self.dir.join("steer.log")
    }

    fn steer_alive(&mut self) -> Result<()> {
        let Some(child) = self.guard.steer.as_mut() else {
            bail!("steer is not running");
        };
        if let Some(st) = child.try_wait()? {
            let log = self.steer_log();
            bail!(
                "steer exited ({st}); the end of {}:\n{}",
                log.display(),
                procs::log_tail(&log, 15)
            );
        }
        Ok(())
    }

    fn start_steer(&mut self) -> Result<()> {
        self.phase("starting steer in the edge namespace");
        let log_path = self.steer_log();
        let log = File::create(&log_path)?;
        let mut cmd = self.lab.steer_command(&self.steer_bin, &self.config)?;
        // steer's log goes to a file: no colour codes in it.
        cmd.current_dir(&self.root)
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        detach(&mut cmd);
        self.view.event(format!(
            "[{}] {}  (log: {})",
            topo::NS_EDGE,
            describe(&cmd),
            self.rel(&log_path)
        ));
        let start = Instant::now();
        self.guard.steer = Some(cmd.spawn().context("starting steer")?);
        loop {
            interrupted()?;
            self.steer_alive()?;
            if fs::read_to_string(&log_path)
                .unwrap_or_default()
                .contains("steer is forwarding")
            {
                break;
            }
            if start.elapsed() > Duration::from_secs(30) {
                bail!(
                    "steer did not say `steer is forwarding` within 30 s; {}:\n{}",
                    log_path.display(),
                    procs::log_tail(&log_path, 15)
                );
            }
            sleep(Duration::from_millis(100))?;
        }
        let attached = lab::xdp_on_edge()
            .map(|(mode, id)| format!("XDP program {id} attached to {} ({mode})", topo::EDGE_IF))
            .unwrap_or_else(|| format!("no XDP program on {}?", topo::EDGE_IF));
        self.view.event(format!(
            "steer is forwarding after {:.1}s: {attached}",
            start.elapsed().as_secs_f64()
        ));
        // Every backend entry must be up before traffic starts.
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            self.refresh_status();
            let up = self.status.as_ref().is_some_and(|s| {
                topo::BACKENDS
                    .iter()
                    .all(|b| s.host_health_is(b.name, Health::Up))
            });
            if up {
                break;
            }
            if Instant::now() > deadline {
                bail!("steer's backends were not all up 15 s after start");
            }
            sleep(Duration::from_millis(200))?;
        }
        self.view
            .event("steer status: all 12 backend entries (6 hosts × IPv4/IPv6) up");
        Ok(())
    }

    fn rel(&self, p: &Path) -> String {
        p.strip_prefix(&self.root)
            .unwrap_or(p)
            .display()
            .to_string()
    }

    fn start_client(
        &mut self,
        vip: usize,
        to: SocketAddr,
        from: &[IpAddr],
        rate: u32,
    ) -> Result<()> {
        let log = File::create(self.dir.join(format!("client-{vip}.log")))?;
        let mut cmd = lab::command_in(topo::NS_CLIENT, self.lab.backend_bin())?;
        cmd.arg("client-live").arg("--to").arg(to.to_string());
        for f in from {
            cmd.arg("--from").arg(f.to_string());
        }
        cmd.args([
            "--rate",
            &rate.to_string(),
            "--concurrency",
            "8",
            "--timeout-ms",
            "2000",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(log);
        detach(&mut cmd);
        let mut child = cmd
            .spawn()
            .with_context(|| format!("starting `{}`", describe(&cmd)))?;
        let out = child
            .stdout
            .take()
            .ok_or_else(|| anyhow!("no stdout from the client"))?;
        self.guard.clients.push(child);
        let feed = self.feed.clone();
        thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                let parsed = serde_json::from_str::<Line>(&line);
                let Ok(mut f) = feed.lock() else { break };
                match parsed {
                    Ok(l) => f.reqs.push(Req {
                        vip,
                        start_us: l.start_us,
                        arrived: Instant::now(),
                        src: l.src,
                        backend: l.backend,
                        error: l.error,
                    }),
                    Err(_) => f.bad_lines += 1,
                }
            }
        });
        Ok(())
    }

    fn start_clients(&mut self) -> Result<()> {
        let v4 = topo::client_addrs(false);
        let v6 = topo::client_addrs(true);
        self.start_client(0, topo::web(), &v4, RATE_WEB)?;
        self.start_client(1, topo::web6(), &v6, RATE_WEB6)?;
        let prefixes = |v6: bool| {
            let p = if v6 {
                topo::client_prefixes_v6()
            } else {
                topo::client_prefixes_v4()
            };
            p.iter().map(|p| p.prefix).collect::<Vec<_>>().join(", ")
        };
        self.view.event(format!(
            "clients ({}): {RATE_WEB} req/s to web {} from {} addresses in {}\n\
             {RATE_WEB6} req/s to web6 {} from {} addresses in {}\n\
             (`steer-lab-backend client-live`; every request a new TCP connection)",
            topo::NS_CLIENT,
            topo::web(),
            v4.len(),
            prefixes(false),
            topo::web6(),
            v6.len(),
            prefixes(true)
        ));
        Ok(())
    }

    // ---------------------------------------------------------- display --

    fn stats(&self, keep: impl Fn(&Req) -> bool) -> Stats {
        let mut s = Stats::default();
        if let Ok(f) = self.feed.lock() {
            for r in f.reqs.iter().filter(|r| keep(r)) {
                s.add(r, &self.prefixes);
            }
        }
        s
    }

    fn stats_since(&self, from_us: u64) -> Stats {
        self.stats(|r| r.start_us >= from_us)
    }

    fn window(&self) -> Stats {
        let since = Instant::now().checked_sub(Duration::from_secs(1));
        self.stats(|r| since.is_none_or(|s| r.arrived >= s))
    }

    /// Start times of requests answered by one of `hosts`, started in
    /// `[from_us, to_us)`.
    fn starts(&self, hosts: &[&str], from_us: u64, to_us: u64) -> Vec<u64> {
        let Ok(f) = self.feed.lock() else {
            return Vec::new();
        };
        let mut v: Vec<u64> = f
            .reqs
            .iter()
            .filter(|r| r.start_us >= from_us && r.start_us < to_us)
            .filter(|r| r.backend.as_deref().is_some_and(|b| hosts.contains(&b)))
            .map(|r| r.start_us)
            .collect();
        v.sort_unstable();
        v
    }

    fn frame(&self) -> String {
        let w = self.window();
        let ph = self.stats_since(self.phase_us);
        let st = self.status.clone().unwrap_or_default();
        let mut o = String::new();
        let _ = writeln!(
            o,
            "steer lab demo · t={:.1}s · steer generation {}, {} reload(s)",
            self.view.t(),
            st.generation,
            st.reloads
        );
        let _ = writeln!(o, "▶ {}\n", self.view.phase);
        let _ = writeln!(
            o,
            "clients: web {} + web6 {}, new connection per request",
            topo::web(),
            topo::web6()
        );
        let _ = writeln!(
            o,
            "last 1 s: {} req/s, {} · this phase: {} requests, {}\n",
            w.total,
            w.errors_text(),
            ph.total,
            ph.errors_text()
        );
        let _ = writeln!(
            o,
            "{:<9} {:<4} {:<12} {:<12} {:>6} {:>7} {:>8}",
            "region", "host", "steer: web", "web6", "req/s", "share", "(phase)"
        );
        for region in topo::REGIONS {
            let n = w.region(region);
            let _ = writeln!(
                o,
                "{region:<9} {:<4} {:<12} {:<12} {n:>6} {:>6.1}% {:>7.1}%",
                "",
                "",
                "",
                w.share(n),
                ph.share(ph.region(region))
            );
            for b in topo::BACKENDS.iter().filter(|b| b.region == region) {
                let n = w.host(b.name);
                let _ = writeln!(
                    o,
                    "{:<9} {:<4} {} {} {n:>6} {:>6.1}% {:>7.1}%",
                    "",
                    b.name,
                    st.cell("web", b.name),
                    st.cell("web6", &b.v6_entry()),
                    w.share(n),
                    ph.share(ph.host(b.name))
                );
            }
        }
        let mut line = String::from("\nreq/s by client prefix:");
        for (i, (p, n)) in w.prefixes.iter().enumerate() {
            if i == 3 {
                line.push_str("\n                       ");
            }
            let _ = write!(line, " {p} {n}");
        }
        let _ = writeln!(o, "{line}");
        let _ = writeln!(o, "\nevents:");
        // As many of the latest events as fit the terminal, each cut to
        // its width, so that the frame never scrolls.
        let (rows, cols) = term_size();
        let used = o.lines().count() + 1;
        let room = rows.saturating_sub(used).max(3);
        let from = self.view.events.len().saturating_sub(room);
        for e in &self.view.events[from..] {
            let line: String = e.chars().take(cols.saturating_sub(1).max(20)).collect();
            let _ = writeln!(o, "{line}");
        }
        o
    }

    /// One line a second for logs (no terminal).
    fn line(&self) -> String {
        let w = self.window();
        let st = self.status.clone().unwrap_or_default();
        let mut parts = vec![format!("{} req/s, {}", w.total, w.errors_text())];
        for region in topo::REGIONS {
            let hosts: Vec<String> = topo::BACKENDS
                .iter()
                .filter(|b| b.region == region)
                .map(|b| format!("{} {}{}", b.name, w.host(b.name), st.flag(b.name)))
                .collect();
            parts.push(format!(
                "{region} {:.0}% ({})",
                w.share(w.region(region)),
                hosts.join(", ")
            ));
        }
        format!("[{:5.1}s]   {}", self.view.t(), parts.join(" | "))
    }

    fn draw(&mut self) {
        self.view.ticks += 1;
        if self.view.tty {
            let frame = self.frame();
            let mut out = std::io::stdout().lock();
            let _ = write!(out, "\x1b[H\x1b[2J{frame}");
            let _ = out.flush();
        } else if self.view.ticks.is_multiple_of(2) {
            println!("{}", self.line());
        }
    }

    /// Redraws every [`TICK`] until `done` says so or `max` has passed;
    /// whether `done` said so.
    fn watch(
        &mut self,
        max: Duration,
        mut done: impl FnMut(&mut Self) -> Result<bool>,
    ) -> Result<bool> {
        let end = Instant::now() + max;
        loop {
            interrupted()?;
            self.steer_alive()?;
            self.refresh_status();
            self.draw();
            if done(self)? {
                return Ok(true);
            }
            let now = Instant::now();
            if now >= end {
                return Ok(false);
            }
            sleep(TICK.min(end - now))?;
        }
    }

    fn pause(&mut self, d: Duration) -> Result<()> {
        self.watch(d, |_| Ok(false)).map(|_| ())
    }

    fn shares(s: &Stats) -> String {
        topo::REGIONS
            .iter()
            .map(|r| format!("{r} {:.0}%", s.share(s.region(r))))
            .collect::<Vec<_>>()
            .join(", ")
    }

    // ----------------------------------------------------------- phases --

    fn baseline(&mut self) -> Result<()> {
        self.phase("1/7 traffic through steer: every region, every backend");
        let p0 = self.phase_us;
        self.pause(Duration::from_secs(6))?;
        let s = self.stats_since(p0);
        self.view.event(format!(
            "{} requests in the phase: {}",
            s.total,
            Self::shares(&s)
        ));
        let idle: Vec<&str> = topo::BACKENDS
            .iter()
            .map(|b| b.name)
            .filter(|h| s.host(h) == 0)
            .collect();
        self.check(
            s.total > 0 && idle.is_empty(),
            if idle.is_empty() {
                format!(
                    "all 6 backends in 3 regions answered ({} requests)",
                    s.total
                )
            } else {
                format!("backends that got no request: {}", idle.join(", "))
            },
        );
        self.check(
            s.total > 0 && s.errors == 0,
            format!("steady traffic: {}", s.errors_text()),
        );
        Ok(())
    }

    fn region_hosts(region: &str) -> Vec<&'static str> {
        topo::BACKENDS
            .iter()
            .filter(|b| b.region == region)
            .map(|b| b.name)
            .collect()
    }

    fn failover(&mut self) -> Result<()> {
        let hosts = Self::region_hosts(FAIL_REGION);
        let limit = self.timing.failover_limit();
        self.phase(&format!("2/7 region {FAIL_REGION} fails its health checks"));
        self.pause(Duration::from_secs(1))?;
        self.view.event(format!(
            "POST /control/fail to {} ({FAIL_REGION}): /health answers 503 from now on;\n\
             the service itself keeps answering. steer checks every {:?}, fall {}",
            hosts.join(", "),
            self.timing.interval,
            self.timing.fall
        ));
        let t_fail = now_us();
        for h in &hosts {
            self.lab.control(h, "fail")?;
        }
        let mut marked: Option<f64> = None;
        let settled = self.watch(Duration::from_secs(15), |d| {
            let down = d
                .status
                .as_ref()
                .is_some_and(|s| hosts.iter().all(|h| s.host_health_is(h, Health::Down)));
            if down && marked.is_none() {
                let t = secs(now_us() - t_fail);
                marked = Some(t);
                d.view.event(format!(
                    "steer status: {} down (seen {t:.1}s after the fail command)",
                    hosts.join(", ")
                ));
            }
            let last = d.starts(&hosts, t_fail, u64::MAX).last().copied();
            let quiet = now_us().saturating_sub(last.unwrap_or(t_fail));
            Ok(down && quiet >= 2_000_000)
        })?;
        let hits = self.starts(&hosts, t_fail, u64::MAX);
        let failover = hits.last().map_or(0, |t| t - t_fail);
        self.view.event(format!(
            "failover: the last request to {FAIL_REGION} started {:.2}s after the fail command\n\
             ({} requests reached it meanwhile, all answered); none since",
            secs(failover),
            hits.len()
        ));
        self.check(
            settled && Duration::from_micros(failover) <= limit,
            format!(
                "failover of {FAIL_REGION} in {:.2}s (limit fall {} × interval {:?} + 1 s = {:?})",
                secs(failover),
                self.timing.fall,
                self.timing.interval,
                limit
            ),
        );
        self.note(
            "failover",
            format!(
                "{:.2} s (limit {:.1} s); steer showed the region down after {}",
                secs(failover),
                limit.as_secs_f64(),
                marked.map_or("-".into(), |t| format!("~{t:.1} s"))
            ),
        );
        self.pause(Duration::from_secs(3))?;

        // Restore.
        self.phase(&format!("3/7 region {FAIL_REGION} recovers"));
        let t_rec = now_us();
        let late: Vec<u64> = self
            .starts(&hosts, t_fail, t_rec)
            .into_iter()
            .filter(|t| *t > t_fail + failover)
            .collect();
        self.check(
            late.is_empty(),
            format!(
                "no request reached failed {FAIL_REGION} after the failover ({} did)",
                late.len()
            ),
        );
        self.view.event(format!(
            "POST /control/recover to {}; rise {}",
            hosts.join(", "),
            self.timing.rise
        ));
        for h in &hosts {
            self.lab.control(h, "recover")?;
        }
        let limit = self.timing.return_limit();
        let mut marked: Option<f64> = None;
        let back = self.watch(Duration::from_secs(15), |d| {
            let up = d
                .status
                .as_ref()
                .is_some_and(|s| hosts.iter().all(|h| s.host_health_is(h, Health::Up)));
            if up && marked.is_none() {
                let t = secs(now_us() - t_rec);
                marked = Some(t);
                d.view.event(format!(
                    "steer status: {} up again (seen {t:.1}s after the recover command)",
                    hosts.join(", ")
                ));
            }
            let first = d.starts(&hosts, t_rec, u64::MAX).first().copied();
            Ok(up && first.is_some_and(|f| now_us() - f > 1_500_000))
        })?;
        let first = self.starts(&hosts, t_rec, u64::MAX).first().copied();
        let ret = first.map_or(u64::MAX, |f| f - t_rec);
        if let Some(f) = first {
            self.view.event(format!(
                "return: the first request to {FAIL_REGION} started {:.2}s after the recover command",
                secs(f - t_rec)
            ));
        }
        self.check(
            back && first.is_some() && Duration::from_micros(ret) <= limit,
            match first {
                Some(_) => format!(
                    "{FAIL_REGION} back in {:.2}s (limit rise {} × interval {:?} + 1 s = {:?})",
                    secs(ret),
                    self.timing.rise,
                    self.timing.interval,
                    limit
                ),
                None => format!("{FAIL_REGION} got no traffic 15 s after recovering"),
            },
        );
        self.note(
            "return",
            match first {
                Some(_) => format!(
                    "{:.2} s (limit {:.1} s); steer showed the region up after {}",
                    secs(ret),
                    limit.as_secs_f64(),
                    marked.map_or("-".into(), |t| format!("~{t:.1} s"))
                ),
                None => "never".into(),
            },
        );
        self.pause(Duration::from_secs(2))?;
        let s = self.stats_since(self.phase_us);
        self.check(
            s.errors == 0,
            format!("failover and return: {}", s.errors_text()),
        );
        Ok(())
    }

    fn streams(&self) -> Streams {
        let mut s = Streams::new(topo::web());
        s.from = topo::client_addrs(false);
        s.streams = 12;
        s.bytes = 96_000;
        s.chunk = 1000;
        s.interval = Duration::from_millis(80);
        s
    }

    /// Checks a stream report: all complete, checksums and bytes right.
    fn check_streams(&mut self, r: &StreamReport, when: &str) {
        let intact = r
            .results
            .iter()
            .filter(|x| x.ok && x.checksum_ok && x.pattern_ok && x.error.is_none())
            .count();
        let errors: Vec<String> = r
            .results
            .iter()
            .filter_map(|x| {
                x.error
                    .as_ref()
                    .map(|e| format!("{}: {e}", x.backend.as_deref().unwrap_or("?")))
            })
            .collect();
        let spread: Vec<String> = r.backends.iter().map(|(b, n)| format!("{b} {n}")).collect();
        self.check(
            r.failed == 0 && intact as u64 == r.streams,
            format!(
                "{intact}/{} streams {when} complete, checksums and bytes OK, 0 resets [{}]{}",
                r.streams,
                spread.join(", "),
                if errors.is_empty() {
                    String::new()
                } else {
                    format!("; errors: {}", errors.join("; "))
                }
            ),
        );
    }

    fn drain(&mut self) -> Result<()> {
        self.phase("4/7 drain a backend that has long streams open");
        let s = self.streams();
        let started = Instant::now();
        let running = self.lab.start_streams(&s)?;
        self.view.event(format!(
            "{} long streams to web ({} kB each, {} B every {:?}: ~{:.0}s)",
            s.streams,
            s.bytes / 1000,
            s.chunk,
            s.interval,
            s.duration().as_secs_f64()
        ));
        self.pause(Duration::from_millis(1500))?;
        let mut target = ("", 0u64);
        for b in &topo::BACKENDS {
            let st = self.lab.control(b.name, "state")?;
            let n = st["streams_active"].as_u64().unwrap_or(0);
            if n > target.1 {
                target = (b.name, n);
            }
        }
        let host = if target.1 == 0 { "us1" } else { target.0 };
        let v6 = format!("{host}-v6");
        self.view.event(format!(
            "{host} has {} of the streams open: steer drain {host}; steer drain {v6}",
            target.1
        ));
        let t_drain = now_us();
        for b in [host, v6.as_str()] {
            let msg = self.steer(&["drain", b])?;
            self.view.event(format!("steer drain {b}: {msg}"));
        }
        let t_done = now_us();
        let rest = (s.duration() + Duration::from_secs(2)).saturating_sub(started.elapsed());
        self.pause(rest)?;
        let report = running.wait()?;
        let hits = self.starts(&[host], t_drain, u64::MAX);
        let after = hits.last().map(|t| t - t_drain);
        let late = hits
            .iter()
            .filter(|t| **t > t_done + DRAIN_SLACK.as_micros() as u64)
            .count();
        self.check(
            late == 0,
            format!(
                "no new request reached drained {host} ({}; {late} later than {:?} after `steer drain` returned)",
                match after {
                    Some(a) => format!("the last started {:.0} ms after the drain command", a as f64 / 1e3),
                    None => "none after the drain command".into(),
                },
                DRAIN_SLACK
            ),
        );
        let on_host = report
            .results
            .iter()
            .filter(|r| r.backend.as_deref() == Some(host))
            .count();
        let on_host_ok = report
            .results
            .iter()
            .filter(|r| r.backend.as_deref() == Some(host) && r.ok && r.checksum_ok)
            .count();
        self.check_streams(&report, "across the drain");
        self.check(
            on_host == on_host_ok,
            format!("{on_host_ok}/{on_host} streams on drained {host} continued to the end"),
        );
        self.note(
            "drain",
            format!(
                "{host}: {on_host_ok}/{on_host} of its streams completed; new requests after the drain: {}",
                hits.len()
            ),
        );
        for b in [host, v6.as_str()] {
            let msg = self.steer(&["drain", b, "--undo"])?;
            self.view.event(format!("steer drain {b} --undo: {msg}"));
        }
        let s = self.stats_since(self.phase_us);
        self.check(s.errors == 0, format!("drain: {}", s.errors_text()));
        Ok(())
    }

    fn reload(&mut self) -> Result<()> {
        let hosts = Self::region_hosts(HEAVY_REGION);
        self.phase(&format!(
            "5/7 reload: {HEAVY_REGION} weight {HEAVY_WEIGHT} while long streams run"
        ));
        let s = self.streams();
        let started = Instant::now();
        let p0 = self.phase_us;
        let running = self.lab.start_streams(&s)?;
        self.view.event(format!(
            "{} long streams to web (~{:.0}s)",
            s.streams,
            s.duration().as_secs_f64()
        ));
        self.pause(Duration::from_secs(2))?;

        let text = fs::read_to_string(&self.config)?;
        let needle = format!("region = \"{HEAVY_REGION}\"\n");
        let n = text.matches(&needle).count();
        if n != 2 * hosts.len() {
            bail!(
                "expected {} backends in {HEAVY_REGION} in {}, found {n}",
                2 * hosts.len(),
                self.config.display()
            );
        }
        let changed = text.replace(&needle, &format!("{needle}weight = {HEAVY_WEIGHT}\n"));
        fs::write(&self.config, changed)?;
        self.view.event(format!(
            "{}: weight = {HEAVY_WEIGHT} for {} and their -v6 entries (others 100)",
            self.rel(&self.config),
            hosts.join(", ")
        ));
        let before = self.stats_since(p0);
        let t_reload = now_us();
        let msg = self.steer(&["reload"])?;
        self.view.event(format!("steer reload: {msg}"));
        let rest = (s.duration() + Duration::from_secs(2)).saturating_sub(started.elapsed());
        self.pause(rest)?;
        let report = running.wait()?;
        self.check_streams(&report, "across the reload");
        let after = self.stats_since(t_reload + 300_000);
        let b = before.share(before.region(HEAVY_REGION));
        let a = after.share(after.region(HEAVY_REGION));
        let total_w = f64::from(HEAVY_WEIGHT) * hosts.len() as f64
            + 100.0 * (topo::BACKENDS.len() - hosts.len()) as f64;
        let expect = 100.0 * f64::from(HEAVY_WEIGHT) * hosts.len() as f64 / total_w;
        self.check(
            (a - expect).abs() <= 15.0,
            format!(
                "{HEAVY_REGION}'s share went from {b:.0}% to {a:.0}% after the reload (weights say {expect:.0}%)"
            ),
        );
        let reloads = self.status.as_ref().map_or(0, |s| s.reloads);
        self.check(reloads == 1, format!("steer counted {reloads} reload(s)"));
        let ph = self.stats_since(p0);
        self.check(
            ph.errors == 0,
            format!("requests across the reload: {}", ph.errors_text()),
        );
        self.note(
            "reload",
            format!(
                "{}/{} streams intact; {HEAVY_REGION} {b:.0}% → {a:.0}% (expected {expect:.0}%)",
                report.ok, report.streams
            ),
        );
        Ok(())
    }

    // -------------------------------------------------- region policies --

    /// Requests started at or after `from_us`, per client class (the lab's
    /// classes, [`policy::GEO_CLASSES`]) and region.
    fn class_regions(&self, from_us: u64) -> BTreeMap<&'static str, BTreeMap<&'static str, u64>> {
        let mut m: BTreeMap<&'static str, BTreeMap<&'static str, u64>> = BTreeMap::new();
        if let Ok(f) = self.feed.lock() {
            for r in f.reqs.iter().filter(|r| r.start_us >= from_us) {
                let (Some(src), Some(b)) = (r.src, r.backend.as_deref()) else {
                    continue;
                };
                let (Some(c), Some(region)) = (policy::class_of(src), policy::region_of(b)) else {
                    continue;
                };
                *m.entry(c.name).or_default().entry(region).or_default() += 1;
            }
        }
        m
    }

    /// Rewrites the demo's config with `edit` and reloads steer.
    fn edit_and_reload(
        &mut self,
        what: &str,
        edit: impl FnOnce(&mut toml::Table) -> Result<()>,
    ) -> Result<u64> {
        let text = fs::read_to_string(&self.config)?;
        let mut t: toml::Table =
            toml::from_str(&text).with_context(|| format!("parsing {}", self.config.display()))?;
        edit(&mut t)?;
        fs::write(
            &self.config,
            format!(
                "# A copy of {} written by `cargo xtask demo` and changed by its\n\
                 # phases (weights, geo steering, a traffic dial).\n{}",
                lab::CONFIG,
                toml::to_string(&t)?
            ),
        )?;
        self.view
            .event(format!("{}: {what}", self.rel(&self.config)));
        let t_reload = now_us();
        let msg = self.steer(&["reload"])?;
        self.view.event(format!("steer reload: {}", msg.trim()));
        Ok(t_reload)
    }

    /// One line per class: where its requests went.
    fn class_lines(&mut self, m: &BTreeMap<&'static str, BTreeMap<&'static str, u64>>) {
        for c in &GEO_CLASSES {
            let per = m.get(c.name).cloned().unwrap_or_default();
            let total: u64 = per.values().sum();
            let cells: Vec<String> = topo::REGIONS
                .iter()
                .map(|r| {
                    let n = per.get(r).copied().unwrap_or(0);
                    format!("{r} {:.0}%", 100.0 * n as f64 / total.max(1) as f64)
                })
                .collect();
            self.view.event(format!(
                "  class {:<8} ({} + {}): {total} requests: {}",
                c.name,
                c.v4,
                c.v6,
                cells.join(", ")
            ));
        }
    }

    fn share_of(
        m: &BTreeMap<&'static str, BTreeMap<&'static str, u64>>,
        class: &str,
        region: &str,
    ) -> (f64, u64) {
        let per = m.get(class).cloned().unwrap_or_default();
        let total: u64 = per.values().sum();
        let n = per.get(region).copied().unwrap_or(0);
        (100.0 * n as f64 / total.max(1) as f64, total)
    }

    fn geo(&mut self) -> Result<()> {
        self.phase("6/7 geo steering: each client prefix to its own region");
        for c in &GEO_CLASSES {
            self.view.event(format!(
                "class {:<8} {} + {} -> [{}]",
                c.name,
                c.v4,
                c.v6,
                c.regions.join(", ")
            ));
        }
        let t_reload = self.edit_and_reload(
            "[[client_classes]] europe, americas, apac; web and web6: policy = \"geo\"",
            |t| policy::make_geo(t, &["web", "web6"]),
        )?;
        self.pause(Duration::from_secs(6))?;
        let m = self.class_regions(t_reload + 300_000);
        self.class_lines(&m);
        let mut cells = Vec::new();
        for c in &GEO_CLASSES {
            let (share, n) = Self::share_of(&m, c.name, c.regions[0]);
            self.check(
                n > 0 && share >= 100.0 - DEMO_TOLERANCE_PP,
                format!(
                    "geo: class {} -> {} for {share:.1}% of its {n} new connections (expected 100%)",
                    c.name, c.regions[0]
                ),
            );
            cells.push(format!("{} → {} {share:.0}%", c.name, c.regions[0]));
        }
        self.note(
            "geo",
            format!("{} (of each class's new connections)", cells.join(", ")),
        );
        Ok(())
    }

    fn dial(&mut self) -> Result<()> {
        self.phase(&format!(
            "7/7 traffic dial: {DIAL_REGION} 100 -> {DIAL} while long streams run"
        ));
        let eu = GEO_CLASSES
            .iter()
            .find(|c| c.regions[0] == DIAL_REGION)
            .copied()
            .ok_or_else(|| anyhow!("no class prefers {DIAL_REGION}"))?;
        let next = eu.regions[1];
        let mut s = self.streams();
        s.from = policy::class_addrs(&eu, false);
        s.streams = 8;
        let started = Instant::now();
        let running = self.lab.start_streams(&s)?;
        self.view.event(format!(
            "{} long streams from class {} (to {DIAL_REGION}, ~{:.0}s)",
            s.streams,
            eu.name,
            s.duration().as_secs_f64()
        ));
        self.pause(Duration::from_secs(2))?;
        let t_reload = self
            .edit_and_reload(&format!("[[regions]] {DIAL_REGION}: dial = {DIAL}"), |t| {
                policy::set_region(t, DIAL_REGION, "dial", toml::Value::Integer(DIAL))
            })?;
        self.view.event(format!(
            "class {} keeps {DIAL}% in {DIAL_REGION}; the other {}% spill to the next region of its order, {next}",
            eu.name,
            100 - DIAL
        ));
        let rest = (s.duration() + Duration::from_secs(2)).saturating_sub(started.elapsed());
        self.pause(rest.max(Duration::from_secs(6)))?;
        let report = running.wait()?;
        let moved = report
            .results
            .iter()
            .filter(|r| r.backend.as_deref().and_then(policy::region_of) != Some(DIAL_REGION))
            .count();
        self.check_streams(&report, "across the dial change");
        self.check(
            moved == 0,
            format!(
                "established streams stayed in {DIAL_REGION}: {} of {}",
                report.results.len() - moved,
                report.results.len()
            ),
        );
        let m = self.class_regions(t_reload + 300_000);
        self.class_lines(&m);
        let (kept, n) = Self::share_of(&m, eu.name, DIAL_REGION);
        let (spilled, _) = Self::share_of(&m, eu.name, next);
        let want = DIAL as f64;
        self.check(
            n > 0
                && (kept - want).abs() <= DEMO_TOLERANCE_PP
                && (spilled - (100.0 - want)).abs() <= DEMO_TOLERANCE_PP,
            format!(
                "dial {DIAL}: class {} {DIAL_REGION} {kept:.1}% / {next} {spilled:.1}% of {n} new connections \
                 (expected {want:.0} / {:.0})",
                eu.name,
                100.0 - want
            ),
        );
        for c in GEO_CLASSES.iter().filter(|c| c.name != eu.name) {
            let (share, n) = Self::share_of(&m, c.name, c.regions[0]);
            self.check(
                n > 0 && share >= 100.0 - DEMO_TOLERANCE_PP,
                format!(
                    "dial {DIAL}: class {} unaffected, {share:.1}% in {} ({n} new connections)",
                    c.name, c.regions[0]
                ),
            );
        }
        self.note(
            "dial",
            format!(
                "{DIAL_REGION} dial {DIAL}: class {} {kept:.0}% {DIAL_REGION} / {spilled:.0}% {next} \
                 (expected {want:.0} / {:.0}); {}/{} streams stayed and completed",
                eu.name,
                100.0 - want,
                report.ok,
                report.streams
            ),
        );
        Ok(())
    }

    // ------------------------------------------------------------ finish --

    fn finish(mut self, result: Result<()>, started: Instant) -> Result<()> {
        if self.view.tty {
            self.draw();
        }
        if let Err(e) = &result {
            println!("\ndemo: stopped early: {e:#}");
        }
        self.guard.stop_clients();
        let all = self.stats(|_| true);
        let final_status = self.status.clone();
        println!("\ntearing down: steer (SIGTERM), the lab");
        let steer_exit = self.guard.teardown();
        match &steer_exit {
            Ok(Some(st)) => {
                let ok = st.success();
                self.checks.push(Check {
                    ok,
                    what: format!("steer ran throughout and stopped cleanly ({st})"),
                });
            }
            Ok(None) => {}
            Err(e) => self.checks.push(Check {
                ok: false,
                what: format!("teardown: {e:#}"),
            }),
        }

        println!("\nsummary");
        println!("-------");
        println!(
            "requests      {} in {:.0} s: {}; bad client lines: {}",
            all.total,
            self.view.t(),
            all.errors_text(),
            self.feed.lock().map_or(0, |f| f.bad_lines)
        );
        let by_vip = |vip: usize| self.stats(|r| r.vip == vip).total;
        println!(
            "              web {}: {}, web6 {}: {}",
            topo::web(),
            by_vip(0),
            topo::web6(),
            by_vip(1)
        );
        println!("overall       {}", Self::shares(&all));
        for (k, v) in &self.summary {
            println!("{k:<13} {v}");
        }
        if let Some(st) = &final_status {
            for svc in st.services.iter().filter(|s| s.name == "web") {
                let per: Vec<String> = svc
                    .backends
                    .iter()
                    .map(|b| format!("{} {}/{}", b.name, b.new_flows, b.packets))
                    .collect();
                println!(
                    "steer (web)   {} packets, {} new flows; per backend new flows/packets: {}",
                    svc.packets,
                    svc.new_flows,
                    per.join(", ")
                );
            }
        }
        println!(
            "files         {} (steer's log), {} (its config)",
            self.rel(&self.steer_log()),
            self.rel(&self.config)
        );
        println!("\nchecks:");
        for c in &self.checks {
            println!("  {} {}", if c.ok { "ok  " } else { "FAIL" }, c.what);
        }
        let failed = self.checks.iter().filter(|c| !c.ok).count();
        println!(
            "\ndemo took {:.0} s in all",
            started.elapsed().as_secs_f64()
        );
        result?;
        if failed > 0 {
            bail!("{failed} of {} checks failed", self.checks.len());
        }
        println!("all {} checks passed", self.checks.len());
        Ok(())
    }
}
