//! The replay demo (the first `cargo xtask demo`): replays a synthetic
//! capture through the real XDP program with `steer replay`, then again
//! with one backend down, and shows where the flows went. No lab, no
//! network: BPF_PROG_TEST_RUN only.
use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{anyhow, bail, Context as _, Result};
use etherparse::{PacketBuilder, VlanId};
use serde::Deserialize;

use crate::{
    pcap::{self, Record},
    util::{describe, workspace_root},
};

const CONFIG: &str = "examples/replay.toml";

// ---------------------------------------------------------------- config --

/// The parts of steer's configuration the demo needs (steer itself parses
/// and validates the whole file).
#[derive(Deserialize)]
struct Config {
    #[serde(default)]
    backends: Vec<Backend>,
    #[serde(default)]
    services: Vec<Service>,
}

#[derive(Deserialize)]
struct Backend {
    name: String,
    address: IpAddr,
    region: String,
}

#[derive(Deserialize)]
struct Service {
    name: String,
    vip: IpAddr,
    port: u16,
    protocol: String,
    #[serde(default)]
    affinity: Option<String>,
    #[serde(default)]
    backends: Vec<String>,
    #[serde(default)]
    regions: Vec<String>,
}

impl Service {
    fn proto(&self) -> u8 {
        if self.protocol.eq_ignore_ascii_case("udp") {
            17
        } else {
            6
        }
    }

    fn client_affinity(&self) -> bool {
        self.affinity.as_deref() == Some("client")
    }

    fn label(&self) -> String {
        let addr = match self.vip {
            IpAddr::V4(a) => a.to_string(),
            IpAddr::V6(a) => format!("[{a}]"),
        };
        format!(
            "{} {}:{}/{}",
            self.name,
            addr,
            self.port,
            self.protocol.to_lowercase()
        )
    }

    /// The names of the backends this service uses: listed ones plus every
    /// backend of a listed region.
    fn backend_names(&self, cfg: &Config) -> Vec<String> {
        let mut names: Vec<String> = self.backends.clone();
        for b in &cfg.backends {
            if self.regions.contains(&b.region) && !names.contains(&b.name) {
                names.push(b.name.clone());
            }
        }
        names
    }
}

impl Config {
    fn load(path: &Path) -> Result<Self> {
        let text =
            fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))
    }

    fn backend_by_addr(&self, addr: IpAddr) -> Option<&Backend> {
        self.backends.iter().find(|b| b.address == addr)
    }

    fn backend(&self, name: &str) -> Option<&Backend> {
        self.backends.iter().find(|b| b.name == name)
    }

    /// The service a packet to `(dst, dport, proto)` belongs to: exact port
    /// first, then a port-0 (any port) service on the address.
    fn service_for(&self, dst: IpAddr, dport: u16, proto: u8) -> Option<usize> {
        let m = |port: u16| {
            self.services
                .iter()
                .position(|s| s.vip == dst && s.port == port && s.proto() == proto)
        };
        m(dport).or_else(|| m(0))
    }

    fn is_vip_addr(&self, addr: IpAddr) -> bool {
        self.services.iter().any(|s| s.vip == addr)
    }
}

// --------------------------------------------------------------- traffic --

const ROUTER_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
const STEER_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0xaa];
/// The first frame's timestamp (the others follow 50 µs apart).
const START: Duration = Duration::from_secs(1_700_000_000);
const TTL: u8 = 61;

#[derive(Default)]
struct Traffic {
    frames: Vec<Vec<u8>>,
    flows: usize,
    service_packets: usize,
    /// Not for any service: steer must pass these unchanged.
    pass: Vec<&'static str>,
    /// Malformed, truncated or fragmented, addressed to a VIP: dropped.
    drop: Vec<&'static str>,
}

/// One TCP or UDP flow, as the client sends it.
struct Flow {
    src: IpAddr,
    dst: IpAddr,
    proto: u8,
    sport: u16,
    dport: u16,
    /// An 802.1Q tag on the client's frames.
    vlan: Option<u16>,
}

/// One packet of `flow` as a frame. TCP: step 0 is the SYN, 1 data, 2 FIN.
fn frame(flow: &Flow, tcp_step: usize, payload: &[u8]) -> Result<Vec<u8>> {
    let Flow {
        src,
        dst,
        proto,
        sport,
        dport,
        vlan,
    } = *flow;
    let eth = PacketBuilder::ethernet2(ROUTER_MAC, STEER_MAC);
    let ip = match (vlan, src, dst) {
        (Some(v), IpAddr::V4(s), IpAddr::V4(d)) => {
            eth.single_vlan(VlanId::try_new(v)?)
                .ipv4(s.octets(), d.octets(), TTL)
        }
        (None, IpAddr::V4(s), IpAddr::V4(d)) => eth.ipv4(s.octets(), d.octets(), TTL),
        (Some(v), IpAddr::V6(s), IpAddr::V6(d)) => {
            eth.single_vlan(VlanId::try_new(v)?)
                .ipv6(s.octets(), d.octets(), TTL)
        }
        (None, IpAddr::V6(s), IpAddr::V6(d)) => eth.ipv6(s.octets(), d.octets(), TTL),
        _ => bail!("mixed address families {src} -> {dst}"),
    };
    let mut out = Vec::new();
    if proto == 17 {
        ip.udp(sport, dport).write(&mut out, payload)?;
    } else {
        let seq = 1_000 + u32::from(sport);
        let tcp = ip.tcp(sport, dport, seq, 64_240);
        let tcp = match tcp_step {
            0 => tcp.syn(),
            1 => tcp.ack(1).psh(),
            _ => tcp.ack(1).fin(),
        };
        tcp.write(&mut out, payload)?;
    }
    Ok(out)
}

fn client_addr(vip: IpAddr, service: usize, client: usize) -> Result<IpAddr> {
    let s = u8::try_from(service)?;
    let c = u8::try_from(client + 1)?;
    Ok(match vip {
        // 198.19.0.0/16: the benchmarking range, away from the encap sources.
        IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::new(198, 19, s, c)),
        IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::new(
            0x2001,
            0xdb8,
            0xc,
            u16::from(s),
            0,
            0,
            0,
            u16::from(c),
        )),
    })
}

/// IPv4 header checksum over `h` (whose checksum field may hold anything).
fn ipv4_checksum(h: &mut [u8]) {
    h[10] = 0;
    h[11] = 0;
    let mut sum: u32 = h
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    let ck = !u16::try_from(sum).unwrap_or(0xffff);
    h[10..12].copy_from_slice(&ck.to_be_bytes());
}

fn build_traffic(cfg: &Config) -> Result<Traffic> {
    let mut t = Traffic::default();

    // Well-formed flows to every service. Packets of different flows are
    // interleaved, as on a real link.
    let mut flows = Vec::new();
    for (si, s) in cfg.services.iter().enumerate() {
        let clients = if s.client_affinity() { 6 } else { 16 };
        for c in 0..clients {
            for f in 0..3 {
                flows.push(Flow {
                    src: client_addr(s.vip, si, c)?,
                    dst: s.vip,
                    proto: s.proto(),
                    sport: 40_000 + u16::try_from(c * 16 + f)?,
                    dport: if s.port == 0 { 8080 } else { s.port },
                    // One client per service sits behind a VLAN: steer keeps the tag.
                    vlan: (c == 1).then_some(100),
                });
            }
        }
    }
    t.flows = flows.len();
    for step in 0..3 {
        for f in &flows {
            if f.proto == 17 && step == 2 {
                continue; // UDP flows: a query and a retry
            }
            let payload: &[u8] = match (f.proto, step) {
                (17, _) => b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x07example\x03org\x00\x00\x01\x00\x01",
                (_, 1) => b"GET / HTTP/1.1\r\nHost: steer.example\r\n\r\n",
                _ => b"",
            };
            t.frames.push(frame(f, step, payload)?);
            t.service_packets += 1;
        }
    }

    // Traffic steer must leave alone, and broken traffic to VIPs.
    let v4 = cfg.services.iter().find(|s| s.vip.is_ipv4());
    let v6 = cfg.services.iter().find(|s| s.vip.is_ipv6());
    let client4 = IpAddr::V4(Ipv4Addr::new(198, 19, 200, 1));
    let client6 = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0xc, 0xc8, 0, 0, 0, 1));
    let simple = |src, dst, proto, dport| Flow {
        src,
        dst,
        proto,
        sport: 50_000,
        dport,
        vlan: None,
    };
    let tcp = |src, dst, dport| frame(&simple(src, dst, 6, dport), 1, b"hello");

    let other4 = IpAddr::V4(Ipv4Addr::new(203, 0, 113, 99));
    if !cfg.is_vip_addr(other4) {
        t.frames.push(tcp(client4, other4, 80)?);
        t.pass.push("TCP to an address that is no VIP");
    }
    let nonvip_host = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 200));
    if let Some(s) = v4 {
        if cfg.service_for(s.vip, 22, 6).is_none() {
            t.frames.push(tcp(client4, s.vip, 22)?);
            t.pass
                .push("TCP to a VIP address on a port no service uses");
        }
        let mut ping = Vec::new();
        if let (IpAddr::V4(src), IpAddr::V4(dst)) = (client4, s.vip) {
            PacketBuilder::ethernet2(ROUTER_MAC, STEER_MAC)
                .ipv4(src.octets(), dst.octets(), TTL)
                .icmpv4_echo_request(7, 1)
                .write(&mut ping, b"ping")?;
            t.frames.push(ping);
            t.pass.push("ICMP echo request to a VIP address");

            // ARP who-has for the VIP.
            let mut arp = Vec::new();
            arp.extend_from_slice(&[0xff; 6]);
            arp.extend_from_slice(&ROUTER_MAC);
            arp.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0, 6, 4, 0, 1]);
            arp.extend_from_slice(&ROUTER_MAC);
            arp.extend_from_slice(&src.octets());
            arp.extend_from_slice(&[0; 6]);
            arp.extend_from_slice(&dst.octets());
            t.frames.push(arp);
            t.pass.push("ARP request for a VIP address");
        }

        // Malformed packets to the VIP.
        let good = tcp(client4, s.vip, s.port)?;
        let ip = 14; // IPv4 header offset in `good`
        let mut cut = good.clone();
        cut.truncate(ip + 20 + 10);
        t.frames.push(cut);
        t.drop
            .push("IPv4 TCP to a VIP, cut off inside the TCP header");

        let mut bad_ihl = good.clone();
        bad_ihl[ip] = 0x44;
        ipv4_checksum(&mut bad_ihl[ip..ip + 20]);
        t.frames.push(bad_ihl);
        t.drop.push("IPv4 to a VIP with header length 16 (IHL 4)");

        let mut first_frag = good.clone();
        first_frag[ip + 6] = 0x20; // MF
        ipv4_checksum(&mut first_frag[ip..ip + 20]);
        t.frames.push(first_frag);
        t.drop.push("first IPv4 fragment (MF) to a VIP");

        let mut later_frag = good;
        later_frag[ip + 6] = 0x00;
        later_frag[ip + 7] = 0xb9; // offset 185 * 8 bytes
        ipv4_checksum(&mut later_frag[ip..ip + 20]);
        t.frames.push(later_frag);
        t.drop.push("non-first IPv4 fragment to a VIP");

        let mut cut_other = tcp(client4, nonvip_host, 80)?;
        cut_other.truncate(ip + 20 + 10);
        t.frames.push(cut_other);
        t.pass
            .push("IPv4 TCP cut off inside the TCP header, to an address that is no VIP");
    }
    if let Some(s) = v6 {
        let other6 = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0x53, 0, 0, 0, 0, 0x99));
        if !cfg.is_vip_addr(other6) {
            t.frames
                .push(frame(&simple(client6, other6, 17, 53), 0, b"q")?);
            t.pass.push("IPv6 UDP to an address that is no VIP");
        }
        let good = frame(
            &simple(client6, s.vip, s.proto(), s.port),
            1,
            b"0123456789abcdef",
        )?;
        let ip = 14;
        let mut cut = good.clone();
        cut.truncate(ip + 40 + 4);
        t.frames.push(cut);
        t.drop
            .push("IPv6 to a VIP, cut off inside the transport header");

        // Insert a fragment header (first fragment, more to come).
        let mut frag = good[..ip + 40].to_vec();
        let next = frag[ip + 6];
        frag[ip + 6] = 44;
        let plen = u16::from_be_bytes([frag[ip + 4], frag[ip + 5]]) + 8;
        frag[ip + 4..ip + 6].copy_from_slice(&plen.to_be_bytes());
        frag.extend_from_slice(&[next, 0, 0x00, 0x01, 0xde, 0xad, 0xbe, 0xef]);
        frag.extend_from_slice(&good[ip + 40..]);
        t.frames.push(frag);
        t.drop.push("IPv6 fragment (fragment header) to a VIP");
    }
    Ok(t)
}

// -------------------------------------------------------------- analysis --

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
struct FlowKey {
    src: IpAddr,
    dst: IpAddr,
    sport: u16,
    dport: u16,
    proto: u8,
}

struct Ip<'a> {
    src: IpAddr,
    dst: IpAddr,
    proto: u8,
    payload: &'a [u8],
}

/// The IP packet in an Ethernet frame, skipping up to two VLAN tags.
fn eth_payload(frame: &[u8]) -> Option<&[u8]> {
    let mut at = 12;
    let mut tags = 0;
    loop {
        let ty = u16::from_be_bytes([*frame.get(at)?, *frame.get(at + 1)?]);
        match ty {
            0x8100 | 0x88a8 if tags < 2 => {
                at += 4;
                tags += 1;
            }
            0x0800 | 0x86dd => return frame.get(at + 2..),
            _ => return None,
        }
    }
}

fn parse_ip(b: &[u8]) -> Option<Ip<'_>> {
    match b.first()? >> 4 {
        4 => {
            let ihl = usize::from(b.first()? & 0x0f) * 4;
            let total = usize::from(u16::from_be_bytes([*b.get(2)?, *b.get(3)?]));
            let src: [u8; 4] = b.get(12..16)?.try_into().ok()?;
            let dst: [u8; 4] = b.get(16..20)?.try_into().ok()?;
            Some(Ip {
                src: IpAddr::from(src),
                dst: IpAddr::from(dst),
                proto: *b.get(9)?,
                payload: b.get(ihl..total.min(b.len()))?,
            })
        }
        6 => {
            let src: [u8; 16] = b.get(8..24)?.try_into().ok()?;
            let dst: [u8; 16] = b.get(24..40)?.try_into().ok()?;
            Some(Ip {
                src: IpAddr::from(src),
                dst: IpAddr::from(dst),
                proto: *b.get(6)?,
                payload: b.get(40..)?,
            })
        }
        _ => None,
    }
}

fn flow_key(ip: &Ip<'_>) -> Option<FlowKey> {
    let p = ip.payload;
    Some(FlowKey {
        src: ip.src,
        dst: ip.dst,
        sport: u16::from_be_bytes([*p.first()?, *p.get(1)?]),
        dport: u16::from_be_bytes([*p.get(2)?, *p.get(3)?]),
        proto: ip.proto,
    })
}

/// What one `steer replay` output capture shows.
#[derive(Default)]
struct Outcome {
    frames: usize,
    encapsulated: usize,
    /// flow → backend name; a flow whose packets went to two backends is
    /// listed in `split`.
    flows: BTreeMap<FlowKey, String>,
    split: BTreeSet<FlowKey>,
    /// One example per service: (service index, text).
    examples: BTreeMap<usize, String>,
}

fn fmt_flow(k: &FlowKey) -> String {
    let ep = |a: IpAddr, p: u16| match a {
        IpAddr::V4(a) => format!("{a}:{p}"),
        IpAddr::V6(a) => format!("[{a}]:{p}"),
    };
    let proto = if k.proto == 17 { "udp" } else { "tcp" };
    format!("{} -> {} {proto}", ep(k.src, k.sport), ep(k.dst, k.dport))
}

fn analyse(cfg: &Config, path: &Path) -> Result<Outcome> {
    let mut o = Outcome::default();
    for rec in pcap::read(path)? {
        o.frames += 1;
        let Some(outer) = eth_payload(&rec.data).and_then(parse_ip) else {
            continue;
        };
        if outer.proto != 4 && outer.proto != 41 {
            continue;
        }
        let Some(backend) = cfg.backend_by_addr(outer.dst) else {
            continue;
        };
        let Some(inner) = parse_ip(outer.payload) else {
            continue;
        };
        o.encapsulated += 1;
        let Some(key) = flow_key(&inner) else {
            continue;
        };
        match o.flows.get(&key) {
            Some(b) if *b != backend.name => {
                o.split.insert(key);
            }
            Some(_) => {}
            None => {
                o.flows.insert(key, backend.name.clone());
            }
        }
        if let Some(si) = cfg.service_for(key.dst, key.dport, key.proto) {
            o.examples.entry(si).or_insert_with(|| {
                let kind = match (inner.src.is_ipv4(), outer.src.is_ipv4()) {
                    (true, true) => "IPIP",
                    (false, false) => "IP6IP6",
                    (true, false) => "4in6",
                    (false, true) => "6in4",
                };
                format!(
                    "{}  =>  outer {} -> {} ({kind}, {})",
                    fmt_flow(&key),
                    outer.src,
                    outer.dst,
                    backend.name
                )
            });
        }
    }
    Ok(o)
}

/// Prints how each service's flows are spread over its backends.
fn print_spread(cfg: &Config, o: &Outcome, file: &str) {
    println!(
        "  {file}: {} frames, {} of them encapsulated to a backend",
        o.frames, o.encapsulated
    );
    for (si, s) in cfg.services.iter().enumerate() {
        let mut per_backend: BTreeMap<&str, usize> = BTreeMap::new();
        for (k, b) in &o.flows {
            if cfg.service_for(k.dst, k.dport, k.proto) == Some(si) {
                *per_backend.entry(b.as_str()).or_default() += 1;
            }
        }
        let spread = s
            .backend_names(cfg)
            .iter()
            .map(|b| format!("{b} {}", per_backend.get(b.as_str()).copied().unwrap_or(0)))
            .collect::<Vec<_>>()
            .join(", ");
        println!("  {:<34} flows per backend: {spread}", s.label());
        if let Some(ex) = o.examples.get(&si) {
            println!("  {:<34} e.g. {ex}", "");
        }
        if s.client_affinity() {
            let mut per_client: BTreeMap<IpAddr, BTreeSet<&str>> = BTreeMap::new();
            for (k, b) in &o.flows {
                if cfg.service_for(k.dst, k.dport, k.proto) == Some(si) {
                    per_client.entry(k.src).or_default().insert(b.as_str());
                }
            }
            let together = per_client.values().filter(|b| b.len() == 1).count();
            println!(
                "  {:<34} client affinity: {together} of {} clients have all their flows on one backend",
                "",
                per_client.len()
            );
        }
    }
    if !o.split.is_empty() {
        println!(
            "  WARNING: {} flow(s) had packets sent to more than one backend",
            o.split.len()
        );
    }
}

/// Prints how flows moved between the healthy run and the run with `down`
/// marked down. Returns the number of problems seen (flows still sent to
/// the down backend).
fn print_moves(cfg: &Config, before: &Outcome, after: &Outcome, down: &str) -> usize {
    let mut problems = 0;
    for (si, s) in cfg.services.iter().enumerate() {
        let mut from_down: BTreeMap<&str, usize> = BTreeMap::new();
        let (mut stayed, mut moved_other, mut vanished, mut still_down) = (0, 0, 0, 0);
        for (k, b1) in &before.flows {
            if cfg.service_for(k.dst, k.dport, k.proto) != Some(si) {
                continue;
            }
            let Some(b2) = after.flows.get(k) else {
                vanished += 1;
                continue;
            };
            if b2 == down {
                still_down += 1;
            } else if b1 == down {
                *from_down.entry(b2.as_str()).or_default() += 1;
            } else if b1 == b2 {
                stayed += 1;
            } else {
                moved_other += 1;
            }
        }
        let moved: usize = from_down.values().sum();
        let mut line = format!("  {:<34} ", s.label());
        if moved == 0 && still_down == 0 {
            line.push_str(&format!("no flow was on {down}; "));
        } else {
            let to = from_down
                .iter()
                .map(|(b, n)| format!("{n} to {b}"))
                .collect::<Vec<_>>()
                .join(", ");
            line.push_str(&format!("{moved} flow(s) left {down}: {to}; "));
        }
        line.push_str(&format!(
            "{stayed} other flow(s) stayed where they were, {moved_other} moved"
        ));
        if vanished > 0 {
            line.push_str(&format!(", {vanished} not forwarded in the second run"));
        }
        println!("{line}");
        if still_down > 0 {
            println!("  PROBLEM: {still_down} flow(s) were still sent to {down} while it was down");
            problems += still_down;
        }
    }
    problems
}

// ------------------------------------------------------------------ main --

fn run_replay(steer: &Path, root: &Path, out: &Path, down: Option<&str>) -> Result<()> {
    let mut cmd = Command::new(steer);
    cmd.current_dir(root).args([
        "replay",
        "--config",
        CONFIG,
        "--in",
        "target/demo/in.pcap",
        "--out",
    ]);
    cmd.arg(out.strip_prefix(root).unwrap_or(out));
    if let Some(d) = down {
        cmd.args(["--down", d]);
    }
    let shown = describe(&cmd);
    println!("$ {shown}");
    let output = cmd
        .output()
        .with_context(|| format!("could not start {}", steer.display()))?;
    for line in String::from_utf8_lossy(&output.stdout).lines() {
        println!("  | {line}");
    }
    for line in String::from_utf8_lossy(&output.stderr).lines() {
        println!("  ! {line}");
    }
    if !output.status.success() {
        bail!("`{shown}` failed ({})", output.status);
    }
    Ok(())
}

/// Builds the release `steer` binary. Its output (which includes the nested
/// nightly build of the XDP program) is shown only if the build fails.
pub(super) fn build_steer(root: &Path) -> Result<()> {
    let mut cmd = Command::new("cargo");
    cmd.current_dir(root)
        .args(["build", "--release", "-p", "steer-userspace"]);
    let shown = describe(&cmd);
    println!("\nbuilding steer: {shown}");
    println!("  (release; this also builds the XDP program with nightly; slow the first time)");
    let start = Instant::now();
    let out = cmd
        .output()
        .with_context(|| format!("could not start `{shown}`"))?;
    if !out.status.success() {
        eprint!("{}", String::from_utf8_lossy(&out.stdout));
        eprint!("{}", String::from_utf8_lossy(&out.stderr));
        bail!("`{shown}` failed ({})", out.status);
    }
    println!("  built in {:.1}s", start.elapsed().as_secs_f64());
    Ok(())
}

/// The backend to take down: the one serving the most services (the first
/// such in the file).
fn pick_down(cfg: &Config) -> Result<String> {
    cfg.backends
        .iter()
        .map(|b| {
            let n = cfg
                .services
                .iter()
                .filter(|s| s.backend_names(cfg).contains(&b.name))
                .count();
            (n, &b.name)
        })
        .rev() // max_by_key keeps the last maximum; reversed, that is the first
        .max_by_key(|(n, _)| *n)
        .map(|(_, name)| name.clone())
        .ok_or_else(|| anyhow!("{CONFIG} has no backends"))
}

pub fn run() -> Result<()> {
    let root = workspace_root();
    let cfg = Config::load(&root.join(CONFIG))?;
    let dir: PathBuf = root.join("target").join("demo");
    let down = pick_down(&cfg)?;

    println!("steer demo: replaying a capture through the real XDP program");
    println!("==============================================================");
    println!(
        "steer hashes each flow, picks a backend for it with Maglev hashing, encapsulates\n\
         the packet to that backend (IPIP, IP6IP6 or 4in6) and remembers the choice in\n\
         conntrack. `steer replay` loads the same XDP program the daemon attaches to a\n\
         NIC and runs every packet of a pcap through it (BPF_PROG_TEST_RUN), writing what\n\
         the program transmits. The demo runs it twice: all backends healthy, then with\n\
         {down} down, and shows where the flows went.\n"
    );
    println!("config {CONFIG}:");
    for s in &cfg.services {
        let backends = s
            .backend_names(&cfg)
            .iter()
            .map(|n| match cfg.backend(n) {
                Some(b) => format!("{n} ({}, {})", b.address, b.region),
                None => n.clone(),
            })
            .collect::<Vec<_>>()
            .join(", ");
        println!(
            "  {:<34} affinity {:<6} -> {backends}",
            s.label(),
            s.affinity.as_deref().unwrap_or("flow")
        );
    }

    build_steer(&root)?;
    let steer = root.join("target").join("release").join("steer");

    let traffic = build_traffic(&cfg)?;
    let records: Vec<Record> = traffic
        .frames
        .iter()
        .zip(0u64..)
        .map(|(f, i)| Record {
            timestamp: START + Duration::from_micros(i * 50),
            data: f.clone(),
        })
        .collect();
    let in_pcap = dir.join("in.pcap");
    pcap::write(&in_pcap, &records)?;
    println!(
        "\nwrote target/demo/in.pcap: {} packets\n  \
         {} packets in {} flows to the {} services ({} clients behind VLAN 100)\n  \
         {} packets steer must pass untouched:",
        records.len(),
        traffic.service_packets,
        traffic.flows,
        cfg.services.len(),
        cfg.services.len(),
        traffic.pass.len()
    );
    for p in &traffic.pass {
        println!("    - {p}");
    }
    println!(
        "  {} malformed packets or fragments to a VIP, which steer must drop:",
        traffic.drop.len()
    );
    for d in &traffic.drop {
        println!("    - {d}");
    }

    println!("\n1) all backends healthy");
    println!("-----------------------");
    let out1 = dir.join("out.pcap");
    run_replay(&steer, &root, &out1, None)?;
    let before = analyse(&cfg, &out1)?;
    print_spread(&cfg, &before, "out.pcap");
    println!(
        "  (every backend owns an equal share of its service's Maglev table; a few dozen\n   \
         flows split unevenly by chance)"
    );

    println!("\n2) {down} down");
    println!("{}", "-".repeat(down.len() + 8));
    let out2 = dir.join("out-down.pcap");
    run_replay(&steer, &root, &out2, Some(&down))?;
    let after = analyse(&cfg, &out2)?;
    print_spread(&cfg, &after, "out-down.pcap");

    println!("\nhow flows moved when {down} went down:");
    let problems = print_moves(&cfg, &before, &after, &down);

    println!(
        "\ncaptures: target/demo/in.pcap, target/demo/out.pcap, target/demo/out-down.pcap \
         (open them with wireshark or tcpdump -r)"
    );
    if before.encapsulated == 0 {
        bail!("steer forwarded nothing to a backend; see its output above");
    }
    if problems > 0 || !before.split.is_empty() || !after.split.is_empty() {
        bail!("the demo saw flows steered wrongly; see the PROBLEM and WARNING lines above");
    }
    Ok(())
}
