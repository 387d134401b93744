//! Lab throughput (`cargo xtask bench`, first): packets per second through
//! steer on the lab's edge veth, next to a trivial `XDP_TX` program
//! attached the same way. A measurement, not a pass/fail target: it fails
//! only when it cannot measure.
//!
//! One sender thread per CPU writes prebuilt 64-byte Ethernet frames (IPv4
//! UDP to the echo VIP 203.0.113.10:7, 256 flows per thread) with
//! sendmmsg(2) on an AF_PACKET socket (qdisc bypassed), either on the
//! client's `stl-c0` (through the front bridge, as clients send) or on
//! `stl-pe`, the bridge-side end of the edge's veth (straight into
//! `stl-e0`: less work per frame before the edge, so the edge gets more).
//! Counted over a fixed window after a warm-up:
//!
//! - *sent*: frames the senders' sendmmsg calls accepted;
//! - *edge in*: `stl-e0` rx, every frame the XDP program saw;
//! - *steer*: steer's own packet counter of the echo service;
//! - *edge out*: `stl-pe` rx, the frames the program transmitted (XDP_TX);
//! - *backends*: IPIP packets the six backends decapsulated (their
//!   `/control/state` counters);
//! - *CPUs*: busy CPUs of the whole machine (/proc/stat), and that CPU
//!   time per frame into the edge.
//!
//! Runs, in rounds (each round starts steer afresh), medians reported:
//!
//! 1. steer, with an `XDP_DROP` program on `stl-pe` instead of the lab's
//!    `XDP_PASS`: frames are counted at the peer and go no further, so the
//!    router and the backends burn no CPU (from the client, and from
//!    `stl-pe`).
//! 2. steer stopped; `steer_tx` (a program that only returns XDP_TX) on
//!    `stl-e0` (attached over rtnetlink in driver mode, as steer attaches),
//!    the same drop on the peer (both senders). Runs 1 and 2 are the
//!    like-for-like pairs; their ratios are the headline.
//! 3. `steer_drop` (only XDP_DROP) on `stl-e0`: what the senders and the path to
//!    the edge deliver at all (the ceiling of the other runs).
//!
//! Then once, last (it leaves the router and the backends busy for a few
//! seconds): steer, full path from the client, the lab's `XDP_PASS` back
//! on the peer: encapsulated frames go on through the router to the
//! backends, which decapsulate them in userspace and echo.
//!
//! steer runs on examples/lab.toml without its health checks (written to
//! target/bench/lab-throughput.toml): with the peer dropping everything,
//! health probes from the edge would fail and steer would take every
//! backend out in the middle of the window.
use std::{
    ffi::CString,
    fs::{self, File},
    io, mem,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::atomic::{AtomicBool, AtomicU64, Ordering},
    thread,
    time::{Duration, Instant},
};

use anyhow::{anyhow, bail, Context as _, Result};
use serde::Deserialize;

use crate::{
    lab::{
        self, sys, topo,
        xdp_pass::{attach_verdict, detach as detach_xdp, XdpVerdict},
        Lab, UpOptions,
    },
    util::{describe, is_root, workspace_root},
};

/// The measurement window of each run, after [`WARMUP`].
const WINDOW: Duration = Duration::from_secs(2);
const WARMUP: Duration = Duration::from_millis(500);
/// Rounds of the like-for-like runs (steer, XDP_TX, XDP_DROP, from both
/// senders); the table shows medians. Runs of the same program on this
/// kind of machine differ by 10-25 % from one to the next.
const ROUNDS: usize = 5;
/// Flows per sender thread (source address × source port).
const FLOWS_PER_THREAD: usize = 256;
/// Frames per sendmmsg(2) call.
const BATCH: usize = 64;
const FRAME_LEN: usize = 64;

// ------------------------------------------------------------- raw XDP --

// --------------------------------------------------------------- senders --

fn parse_mac(s: &str) -> Result<[u8; 6]> {
    let v: Vec<u8> = s
        .split(':')
        .map(|p| u8::from_str_radix(p, 16))
        .collect::<Result<_, _>>()
        .with_context(|| format!("MAC {s}"))?;
    v.try_into().map_err(|_| anyhow!("MAC {s}"))
}

/// One IPv4 UDP frame from `src:sport` to the echo VIP; no UDP checksum
/// (optional in IPv4).
fn frame(dst_mac: [u8; 6], src_mac: [u8; 6], src: [u8; 4], sport: u16) -> [u8; FRAME_LEN] {
    let mut f = [0u8; FRAME_LEN];
    f[0..6].copy_from_slice(&dst_mac);
    f[6..12].copy_from_slice(&src_mac);
    f[12..14].copy_from_slice(&[0x08, 0x00]);
    let ip_len = (FRAME_LEN - 14) as u16;
    let ip = &mut f[14..34];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&ip_len.to_be_bytes());
    ip[6] = 0x40; // DF
    ip[8] = 64;
    ip[9] = 17;
    ip[12..16].copy_from_slice(&src);
    ip[16..20].copy_from_slice(&topo::VIP_WEB.octets());
    let mut sum: u32 = ip
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], c[1]])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    ip[10..12].copy_from_slice(&(!(sum as u16)).to_be_bytes());
    let udp_len = ip_len - 20;
    let udp = &mut f[34..42];
    udp[0..2].copy_from_slice(&sport.to_be_bytes());
    udp[2..4].copy_from_slice(&topo::UDP_PORT.to_be_bytes());
    udp[4..6].copy_from_slice(&udp_len.to_be_bytes());
    let payload = b"steer lab throughput..";
    f[42..42 + payload.len()].copy_from_slice(payload);
    f
}

/// Where the senders write their frames.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Sender {
    /// The client's `stl-c0`: through the front bridge, as clients send.
    Client,
    /// The edge link's bridge-side end `stl-pe`: straight into `stl-e0`,
    /// skipping the client's veth and the bridge (cheaper per packet, so
    /// the edge gets more).
    Peer,
}

impl Sender {
    fn ns_if(self) -> (&'static str, &'static str) {
        match self {
            Sender::Client => (topo::NS_CLIENT, topo::CLIENT_IF),
            Sender::Peer => (topo::NS_NET, topo::EDGE_PORT),
        }
    }
}

/// An AF_PACKET socket bound to `ifname`, created in namespace `ns` (a
/// socket stays in the namespace it was made in).
fn packet_socket(ns: &str, ifname: &'static str) -> Result<OwnedFd> {
    sys::in_netns(ns, || {
        // SAFETY: plain socket(2); protocol 0: send only, receive nothing.
        let raw = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
        if raw < 0 {
            return Err(io::Error::last_os_error()).context("AF_PACKET socket");
        }
        // SAFETY: a new descriptor nothing else owns.
        let sock = unsafe { OwnedFd::from_raw_fd(raw) };
        let name = CString::new(ifname)?;
        // SAFETY: if_nametoindex reads a NUL-terminated name.
        let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
        if index == 0 {
            return Err(io::Error::last_os_error()).context(ifname);
        }
        // SAFETY: an all-zero sockaddr_ll is valid; fields set below.
        let mut sll: libc::sockaddr_ll = unsafe { mem::zeroed() };
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_ifindex = index as i32;
        // SAFETY: bind with a sockaddr_ll of the right size.
        let rc = unsafe {
            libc::bind(
                sock.as_raw_fd(),
                (&raw const sll).cast(),
                mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error()).context("bind AF_PACKET");
        }
        let one: libc::c_int = 1;
        let sndbuf: libc::c_int = 4 << 20;
        // SAFETY: setsockopt with int values; failures only cost speed.
        unsafe {
            libc::setsockopt(
                sock.as_raw_fd(),
                libc::SOL_PACKET,
                libc::PACKET_QDISC_BYPASS,
                (&raw const one).cast(),
                mem::size_of::<libc::c_int>() as libc::socklen_t,
            );
            libc::setsockopt(
                sock.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_SNDBUFFORCE,
                (&raw const sndbuf).cast(),
                mem::size_of::<libc::c_int>() as libc::socklen_t,
            );
        }
        Ok(sock)
    })
}

/// Sends frames on `sock` until `stop`; adds what the kernel accepted to
/// `sent`.
/// Pins the calling thread to `cpu` (best effort).
fn pin_to(cpu: usize) {
    // SAFETY: an all-zero cpu_set_t is the empty set; CPU_SET and
    // sched_setaffinity(0, ...) only touch it and the calling thread.
    unsafe {
        let mut set: libc::cpu_set_t = mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, mem::size_of::<libc::cpu_set_t>(), &raw const set);
    }
}

fn send_loop(
    cpu: usize,
    sock: &OwnedFd,
    frames: &[[u8; FRAME_LEN]],
    stop: &AtomicBool,
    sent: &AtomicU64,
) {
    pin_to(cpu);
    let mut iovs: Vec<libc::iovec> = frames
        .iter()
        .map(|f| libc::iovec {
            iov_base: f.as_ptr() as *mut libc::c_void,
            iov_len: f.len(),
        })
        .collect();
    // SAFETY: all-zero mmsghdrs are valid; the iovec pointers are set per
    // batch below.
    let mut msgs: Vec<libc::mmsghdr> = (0..BATCH).map(|_| unsafe { mem::zeroed() }).collect();
    let mut next = 0usize;
    let mut local = 0u64;
    while !stop.load(Ordering::Relaxed) {
        for m in msgs.iter_mut() {
            m.msg_hdr.msg_iov = &raw mut iovs[next];
            m.msg_hdr.msg_iovlen = 1;
            next = (next + 1) % iovs.len();
        }
        // SAFETY: `msgs` holds BATCH headers, each pointing at one iovec
        // of `iovs`, which point at frames that outlive the call.
        let n = unsafe {
            libc::sendmmsg(
                sock.as_raw_fd(),
                msgs.as_mut_ptr(),
                BATCH as libc::c_uint,
                0,
            )
        };
        if n > 0 {
            local += n as u64;
            if local >= 4096 {
                sent.fetch_add(local, Ordering::Relaxed);
                local = 0;
            }
        }
    }
    sent.fetch_add(local, Ordering::Relaxed);
}

// -------------------------------------------------------------- counters --

#[derive(Deserialize)]
struct LinkStats {
    stats64: Stats64,
}

#[derive(Deserialize)]
struct Stats64 {
    rx: Dir,
    tx: Dir,
}

#[derive(Deserialize)]
struct Dir {
    packets: u64,
}

/// (rx, tx) packets of `ifname` in `ns`.
fn link_packets(ns: &str, ifname: &str) -> Result<(u64, u64)> {
    let out = sys::ip(&["-n", ns, "-j", "-s", "link", "show", "dev", ifname])?;
    let v: Vec<LinkStats> =
        serde_json::from_str(&out).with_context(|| format!("ip -j -s link: {out}"))?;
    let s = v
        .first()
        .ok_or_else(|| anyhow!("no statistics for {ifname} in {ns}"))?;
    Ok((s.stats64.rx.packets, s.stats64.tx.packets))
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct Status {
    services: Vec<ServiceStatus>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct ServiceStatus {
    name: String,
    packets: u64,
}

/// One reading of every counter, each with the time it was read.
#[derive(Clone, Copy, Default)]
struct Reading {
    sent: (u64, Option<Instant>),
    edge_in: (u64, Option<Instant>),
    edge_out: (u64, Option<Instant>),
    steer: (u64, Option<Instant>),
    backends: (u64, Option<Instant>),
    /// Busy and total CPU ticks of the whole machine (/proc/stat).
    cpu: (u64, u64),
}

/// (busy, total) ticks summed over every CPU, from /proc/stat's `cpu` line.
fn cpu_ticks() -> Result<(u64, u64)> {
    let text = fs::read_to_string("/proc/stat")?;
    let line = text
        .lines()
        .find(|l| l.starts_with("cpu "))
        .ok_or_else(|| anyhow!("no cpu line in /proc/stat"))?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal (guest time is
    // already in user).
    let get = |i: usize| v.get(i).copied().unwrap_or(0);
    let idle = get(3) + get(4);
    let busy = get(0) + get(1) + get(2) + get(5) + get(6) + get(7);
    Ok((busy, busy + idle))
}

fn rate(a: (u64, Option<Instant>), b: (u64, Option<Instant>)) -> Option<f64> {
    let (ta, tb) = (a.1?, b.1?);
    let dt = tb.duration_since(ta).as_secs_f64();
    (dt > 0.0).then(|| b.0.saturating_sub(a.0) as f64 / dt)
}

/// Rates of one run, packets per second.
#[derive(Default)]
struct Rates {
    sent: Option<f64>,
    edge_in: Option<f64>,
    edge_out: Option<f64>,
    steer: Option<f64>,
    backends: Option<f64>,
    /// CPUs busy on average over the window (all of the machine's).
    cpus_busy: Option<f64>,
}

impl Rates {
    /// CPU time per packet that entered the edge, in ns.
    fn ns_per_packet(&self) -> Option<f64> {
        let pps = self.edge_in.filter(|p| *p > 0.0)?;
        Some(self.cpus_busy? / pps * 1e9)
    }
}

struct Run {
    from: Sender,
    label: &'static str,
    rates: Rates,
}

// ------------------------------------------------------------------ bench --

struct Bench {
    root: PathBuf,
    lab: Lab,
    steer_bin: PathBuf,
    config: PathBuf,
    steer: Option<Child>,
    client_socks: Vec<OwnedFd>,
    peer_socks: Vec<OwnedFd>,
    frames: Vec<Vec<[u8; FRAME_LEN]>>,
    lab_up: bool,
}

impl Drop for Bench {
    fn drop(&mut self) {
        self.stop_steer();
        if self.lab_up {
            self.lab_up = false;
            if let Err(e) = Lab::down() {
                eprintln!("lab throughput: teardown: {e:#}");
            }
        }
    }
}

impl Bench {
    fn stop_steer(&mut self) -> Option<std::process::ExitStatus> {
        sys::terminate_child(self.steer.take()?, Duration::from_secs(10))
    }

    fn steer_cmd(&self, args: &[&str]) -> Result<String> {
        let mut cmd = Command::new(&self.steer_bin);
        cmd.args(args).arg("--config").arg(&self.config);
        let out = sys::output_with_timeout(&mut cmd, Duration::from_secs(10))?;
        if !out.status.success() {
            bail!(
                "`{}` failed ({}): {}",
                describe(&cmd),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    fn start_steer(&mut self) -> Result<()> {
        let log_path = self.root.join("target").join("bench").join("steer.log");
        let forwarding = |p: &Path| {
            fs::read_to_string(p)
                .unwrap_or_default()
                .matches("steer is forwarding")
                .count()
        };
        let before = forwarding(&log_path);
        let log = File::options().create(true).append(true).open(&log_path)?;
        let mut cmd = self.lab.steer_command(&self.steer_bin, &self.config)?;
        cmd.current_dir(&self.root)
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        println!("$ [{}] {}", topo::NS_EDGE, describe(&cmd));
        self.steer = Some(cmd.spawn().context("starting steer")?);
        let start = Instant::now();
        loop {
            if let Some(st) = self
                .steer
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                bail!(
                    "steer exited ({st}):\n{}",
                    lab::procs::log_tail(&log_path, 15)
                );
            }
            if forwarding(&log_path) > before {
                return Ok(());
            }
            if start.elapsed() > Duration::from_secs(30) {
                bail!(
                    "steer did not start within 30 s:\n{}",
                    lab::procs::log_tail(&log_path, 15)
                );
            }
            thread::sleep(Duration::from_millis(100));
        }
    }

    fn steer_packets(&self) -> Result<u64> {
        let s: Status = serde_json::from_str(&self.steer_cmd(&["status", "--json"])?)?;
        Ok(s.services
            .iter()
            .filter(|s| s.name == "echo")
            .map(|s| s.packets)
            .sum())
    }

    fn backend_packets(&self) -> Result<u64> {
        let mut n = 0;
        for b in &topo::BACKENDS {
            let st = self.lab.control(b.name, "state")?;
            n += st["decap"]["ipip"].as_u64().unwrap_or(0);
        }
        Ok(n)
    }

    fn read(&self, sent: &AtomicU64, steer: bool, backends: bool) -> Result<Reading> {
        let mut r = Reading {
            sent: (sent.load(Ordering::Relaxed), Some(Instant::now())),
            cpu: cpu_ticks()?,
            ..Reading::default()
        };
        let (rx, _) = link_packets(topo::NS_EDGE, topo::EDGE_IF)?;
        r.edge_in = (rx, Some(Instant::now()));
        let (rx, _) = link_packets(topo::NS_NET, topo::EDGE_PORT)?;
        r.edge_out = (rx, Some(Instant::now()));
        if steer {
            let p = self.steer_packets()?;
            r.steer = (p, Some(Instant::now()));
        }
        if backends {
            let p = self.backend_packets()?;
            r.backends = (p, Some(Instant::now()));
        }
        Ok(r)
    }

    /// Sends for [`WARMUP`] + [`WINDOW`] on every sender thread and
    /// measures over the window.
    fn measure(
        &self,
        from: Sender,
        label: &'static str,
        steer: bool,
        backends: bool,
    ) -> Result<Run> {
        print!("  {label}, from {} ... ", from.ns_if().1);
        let _ = io::Write::flush(&mut io::stdout());
        let stop = AtomicBool::new(false);
        let sent = AtomicU64::new(0);
        let socks = match from {
            Sender::Client => &self.client_socks,
            Sender::Peer => &self.peer_socks,
        };
        let result = thread::scope(|s| {
            for (cpu, (sock, frames)) in socks.iter().zip(&self.frames).enumerate() {
                let (stop, sent) = (&stop, &sent);
                s.spawn(move || send_loop(cpu, sock, frames, stop, sent));
            }
            let r = (|| {
                thread::sleep(WARMUP);
                let a = self.read(&sent, steer, backends)?;
                thread::sleep(WINDOW);
                let b = self.read(&sent, steer, backends)?;
                Ok::<_, anyhow::Error>((a, b))
            })();
            stop.store(true, Ordering::Relaxed);
            r
        });
        let (a, b) = result?;
        let rates = Rates {
            sent: rate(a.sent, b.sent),
            edge_in: rate(a.edge_in, b.edge_in),
            edge_out: rate(a.edge_out, b.edge_out),
            steer: rate(a.steer, b.steer),
            backends: rate(a.backends, b.backends),
            cpus_busy: {
                let busy = b.cpu.0.saturating_sub(a.cpu.0) as f64;
                let total = b.cpu.1.saturating_sub(a.cpu.1) as f64;
                let n = thread::available_parallelism().map_or(1, |n| n.get()) as f64;
                (total > 0.0).then(|| busy / total * n)
            },
        };
        println!(
            "sent {}, edge out {}",
            mpps(rates.sent),
            mpps(rates.edge_out)
        );
        // Let queues drain before the next run.
        thread::sleep(Duration::from_millis(500));
        Ok(Run { from, label, rates })
    }
}

fn mpps(v: Option<f64>) -> String {
    match v {
        Some(v) if v >= 1e6 => format!("{:.2} Mpps", v / 1e6),
        Some(v) => format!("{:.0} kpps", v / 1e3),
        None => "-".into(),
    }
}

fn build_steer(root: &Path) -> Result<PathBuf> {
    let mut cmd = Command::new("cargo");
    cmd.current_dir(root)
        .args(["build", "--release", "--quiet", "-p", "steer-userspace"]);
    crate::util::run(&mut cmd)?;
    let bin = root.join("target").join("release").join("steer");
    if !bin.is_file() {
        bail!("built steer but found no {}", bin.display());
    }
    Ok(bin)
}

/// examples/lab.toml without health checks.
fn unchecked_config(root: &Path, out: &Path) -> Result<()> {
    let text = fs::read_to_string(root.join(lab::CONFIG))?;
    let mut v: toml::Value = toml::from_str(&text)?;
    let t = v
        .as_table_mut()
        .ok_or_else(|| anyhow!("{} is not a table", lab::CONFIG))?;
    t.remove("health_checks");
    for key in ["services", "backends"] {
        if let Some(list) = t.get_mut(key).and_then(toml::Value::as_array_mut) {
            for e in list {
                if let Some(e) = e.as_table_mut() {
                    e.remove("health_check");
                }
            }
        }
    }
    fs::write(
        out,
        format!(
            "# {} without health checks, written by the lab throughput benchmark\n\
             # (cargo xtask bench); see xtask/src/throughput.rs.\n{}",
            lab::CONFIG,
            toml::to_string(&v)?
        ),
    )?;
    Ok(())
}

pub fn run() -> Result<()> {
    println!("=== lab throughput: steer on the lab's edge veth next to a trivial XDP_TX program");
    if !is_root() {
        bail!("needs root (network namespaces, XDP)");
    }
    let root = workspace_root();
    let dir = root.join("target").join("bench");
    fs::create_dir_all(&dir)?;
    let started = Instant::now();
    let steer_bin = build_steer(&root)?;
    let config = dir.join("lab-throughput.toml");
    unchecked_config(&root, &config)?;

    let lab = Lab::up(&UpOptions::default())?;
    let threads = thread::available_parallelism()
        .map_or(2, |n| n.get())
        .max(1);
    let mut bench = Bench {
        root,
        lab,
        steer_bin,
        config,
        steer: None,
        client_socks: Vec::new(),
        peer_socks: Vec::new(),
        frames: Vec::new(),
        lab_up: true,
    };

    let edge = parse_mac(topo::EDGE_MAC)?;
    let client = parse_mac(topo::CLIENT_MAC)?;
    let sources: Vec<[u8; 4]> = topo::client_addrs(false)
        .into_iter()
        .filter_map(|a| match a {
            std::net::IpAddr::V4(a) => Some(a.octets()),
            std::net::IpAddr::V6(_) => None,
        })
        .collect();
    for t in 0..threads {
        let (ns, ifname) = Sender::Client.ns_if();
        bench.client_socks.push(packet_socket(ns, ifname)?);
        let (ns, ifname) = Sender::Peer.ns_if();
        bench.peer_socks.push(packet_socket(ns, ifname)?);
        bench.frames.push(
            (0..FLOWS_PER_THREAD)
                .map(|i| {
                    let src = sources[i % sources.len()];
                    let sport = 10_000 + (t * FLOWS_PER_THREAD + i) as u16;
                    frame(edge, client, src, sport)
                })
                .collect(),
        );
    }
    // The edge's MAC stays on its bridge port even if the edge is silent
    // (no flooding of the senders' frames to the other ports).
    crate::util::run(Command::new("bridge").args([
        "-n",
        topo::NS_NET,
        "fdb",
        "replace",
        topo::EDGE_MAC,
        "dev",
        topo::EDGE_PORT,
        "master",
        "static",
    ]))?;

    println!(
        "senders: {threads} threads, each an AF_PACKET socket (qdisc bypassed) and sendmmsg × {BATCH}:\n  \
         {FRAME_LEN}-byte IPv4 UDP frames to {}, {} flows; window {WINDOW:?} after {WARMUP:?};\n  \
         from {} in {} (through the front bridge) or from {} in {} (straight into {})",
        topo::echo(),
        threads * FLOWS_PER_THREAD,
        topo::CLIENT_IF,
        topo::NS_CLIENT,
        topo::EDGE_PORT,
        topo::NS_NET,
        topo::EDGE_IF,
    );
    let _ = fs::remove_file(dir.join("steer.log"));
    let mut runs = Vec::new();
    attach_verdict(topo::NS_NET, topo::EDGE_PORT, XdpVerdict::Drop)?;
    // The first seconds after `lab up` run slower whatever the program;
    // a round of XDP_TX that is not counted gets past them.
    println!("warm-up (not counted):");
    attach_verdict(topo::NS_EDGE, topo::EDGE_IF, XdpVerdict::Tx)?;
    bench.measure(Sender::Client, TX, false, false)?;
    bench.measure(Sender::Peer, TX, false, false)?;
    detach_xdp(topo::NS_EDGE, topo::EDGE_IF)?;
    for round in 0..ROUNDS {
        println!("round {} of {ROUNDS}:", round + 1);
        bench.start_steer()?;
        runs.push(bench.measure(Sender::Client, STEER, true, false)?);
        runs.push(bench.measure(Sender::Peer, STEER, true, false)?);
        let st = bench.stop_steer();
        if !st.is_some_and(|s| s.success()) {
            bail!("steer did not stop cleanly ({st:?})");
        }
        if let Some((mode, id)) = lab::xdp_on_edge() {
            bail!("an XDP program ({mode}, id {id}) is still on the edge after steer stopped");
        }
        attach_verdict(topo::NS_EDGE, topo::EDGE_IF, XdpVerdict::Tx)?;
        runs.push(bench.measure(Sender::Client, TX, false, false)?);
        runs.push(bench.measure(Sender::Peer, TX, false, false)?);
        attach_verdict(topo::NS_EDGE, topo::EDGE_IF, XdpVerdict::Drop)?;
        runs.push(bench.measure(Sender::Client, DROP, false, false)?);
        runs.push(bench.measure(Sender::Peer, DROP, false, false)?);
        detach_xdp(topo::NS_EDGE, topo::EDGE_IF)?;
    }
    // Last, because the router and the backends are still busy for a few
    // seconds afterwards, which slows whatever runs next.
    println!(
        "full path (the lab's XDP_PASS back on {}):",
        topo::EDGE_PORT
    );
    attach_verdict(topo::NS_NET, topo::EDGE_PORT, XdpVerdict::Pass)?;
    bench.start_steer()?;
    runs.push(bench.measure(Sender::Client, STEER_FULL, true, true)?);

    print_table(&runs, threads);
    drop(bench);
    println!(
        "lab throughput: done in {:.0} s",
        started.elapsed().as_secs_f64()
    );
    let measured = |label: &str| {
        runs.iter()
            .filter(|r| r.label == label)
            .all(|r| r.rates.edge_out.unwrap_or(0.0) > 0.0)
    };
    if !measured(STEER) || !measured(TX) {
        bail!("a run counted no packets leaving the edge: no measurement");
    }
    Ok(())
}

const STEER_FULL: &str = "steer, full path";
const STEER: &str = "steer, dropped at the peer";
const TX: &str = "XDP_TX, dropped at the peer";
const DROP: &str = "XDP_DROP (the senders' ceiling)";

fn median(mut v: Vec<f64>) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        f64::midpoint(v[n / 2 - 1], v[n / 2])
    })
}

/// The median of each rate over the runs of one kind, and the range of
/// edge out.
struct Summary {
    n: usize,
    sent: Option<f64>,
    edge_in: Option<f64>,
    steer: Option<f64>,
    edge_out: Option<f64>,
    out_min: Option<f64>,
    out_max: Option<f64>,
    backends: Option<f64>,
    cpus: Option<f64>,
    ns: Option<f64>,
}

fn summarize(runs: &[&Run]) -> Summary {
    let col = |f: &dyn Fn(&Rates) -> Option<f64>| {
        median(runs.iter().filter_map(|r| f(&r.rates)).collect())
    };
    let outs: Vec<f64> = runs.iter().filter_map(|r| r.rates.edge_out).collect();
    Summary {
        n: runs.len(),
        sent: col(&|r| r.sent),
        edge_in: col(&|r| r.edge_in),
        steer: col(&|r| r.steer),
        edge_out: col(&|r| r.edge_out),
        out_min: outs.iter().copied().reduce(f64::min),
        out_max: outs.iter().copied().reduce(f64::max),
        backends: col(&|r| r.backends),
        cpus: col(&|r| r.cpus_busy),
        ns: col(&Rates::ns_per_packet),
    }
}

fn print_table(runs: &[Run], threads: usize) {
    let cpus = thread::available_parallelism().map_or(0, |n| n.get());
    let kpps = |v: Option<f64>| v.map_or("-".into(), |v| format!("{:.0}", v / 1e3));
    println!();
    println!("medians over the runs of each kind; thousands of packets per second:");
    println!(
        "{:<33} {:>5} {:>7} {:>7} {:>7} {:>7} {:>11} {:>8} {:>5} {:>6}",
        "", "runs", "sent", "edge in", "steer", "out", "(min-max)", "backends", "CPUs", "ns/pkt"
    );
    let get = |from: Sender, label: &str| {
        let v: Vec<&Run> = runs
            .iter()
            .filter(|r| r.from == from && r.label == label)
            .collect();
        (!v.is_empty()).then(|| summarize(&v))
    };
    for from in [Sender::Client, Sender::Peer] {
        println!(
            "{}",
            match from {
                Sender::Client => "from the client (stl-c0 -> bridge -> stl-e0)",
                Sender::Peer => "straight into the edge (stl-pe -> stl-e0)",
            }
        );
        for label in [STEER_FULL, STEER, TX, DROP] {
            let Some(s) = get(from, label) else { continue };
            println!(
                "  {label:<31} {:>5} {:>7} {:>7} {:>7} {:>7} {:>11} {:>8} {:>5} {:>6}",
                s.n,
                kpps(s.sent),
                kpps(s.edge_in),
                kpps(s.steer),
                kpps(s.edge_out),
                match (s.out_min, s.out_max) {
                    (Some(a), Some(b)) if s.n > 1 => format!("{:.0}-{:.0}", a / 1e3, b / 1e3),
                    _ => String::new(),
                },
                kpps(s.backends),
                s.cpus.map_or("-".into(), |c| format!("{c:.2}")),
                s.ns.map_or("-".into(), |n| format!("{n:.0}"))
            );
        }
    }
    println!();
    for from in [Sender::Client, Sender::Peer] {
        let (Some(s), Some(t)) = (get(from, STEER), get(from, TX)) else {
            continue;
        };
        let (Some(so), Some(to)) = (s.edge_out, t.edge_out) else {
            continue;
        };
        // Per-round ratios: run i of steer against run i of XDP_TX.
        let pick = |label: &str| -> Vec<f64> {
            runs.iter()
                .filter(|r| r.from == from && r.label == label)
                .filter_map(|r| r.rates.edge_out)
                .collect()
        };
        let ratios: Vec<f64> = pick(STEER)
            .iter()
            .zip(pick(TX))
            .map(|(a, b)| a / b)
            .collect();
        let range = match (
            ratios.iter().copied().reduce(f64::min),
            ratios.iter().copied().reduce(f64::max),
        ) {
            (Some(a), Some(b)) if ratios.len() > 1 => format!(" (rounds: {a:.2}-{b:.2})"),
            _ => String::new(),
        };
        let ns = match (s.ns, t.ns) {
            (Some(a), Some(b)) => format!("; CPU/packet {a:.0} vs {b:.0} ns"),
            _ => String::new(),
        };
        println!(
            "steer / XDP_TX from {}: {:.0} / {:.0} kpps = {:.2}{range}{ns}",
            from.ns_if().1,
            so / 1e3,
            to / 1e3,
            so / to
        );
    }
    if let (Some(b), Some(t)) = (
        get(Sender::Client, STEER_FULL).and_then(|s| s.backends),
        get(Sender::Client, TX).and_then(|s| s.edge_out),
    ) {
        println!(
            "full path: {:.0} kpps reached the backends ({:.2} × XDP_TX's out from the client)",
            b / 1e3,
            b / t
        );
    }
    println!(
        "(sent: frames the senders' sendmmsg accepted; edge in: stl-e0 rx, every frame the\n \
         program saw; steer: its echo service's packet counter; out: stl-pe rx, what the\n \
         program sent back out (XDP_TX); backends: IPIP packets the six backends\n \
         decapsulated; CPUs: busy CPUs of the whole machine (/proc/stat) over the window;\n \
         ns/pkt: that CPU time per frame into the edge; {threads} sender threads, {cpus} CPUs;\n \
         window {WINDOW:?} after {WARMUP:?} of warm-up)"
    );
}
