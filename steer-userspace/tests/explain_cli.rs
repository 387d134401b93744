//! `steer explain` offline (`--config` and the runtime-input flags) end to
//! end: for each flow, the backend it names (or the drop it announces) is
//! where `steer replay`, running the real XDP program with the same config
//! and flags, sends that flow. And its errors for bad input.

mod common;
use common::{require_root, Scratch};

use std::net::IpAddr;
use std::process::Command;
use std::time::Duration;

const STEER: &str = env!("CARGO_BIN_EXE_steer");

/// Three regions of two IPv6 backends each; the geo classes eu (with
/// residency in eu-west) and apac; a geo service on an IPv4 and an IPv6
/// VIP, and a latency service.
const CFG: &str = r#"
[dataplane]
next_hop_mac = "02:00:00:00:00:fe"
source_mac = "02:00:00:00:00:5e"
encap_source_v6 = "2001:db8:ffff::/112"
maglev_table_size = 251
conntrack_size = 4096
max_tables = 16
max_reals = 32

[[regions]]
name = "us-east"
[[regions]]
name = "eu-west"
[[regions]]
name = "ap-south"
dial = 75
max_new_flows_per_second = 4000
capacity_scaler = 0.5

[[backends]]
name = "us-1"
address = "2001:db8:10:1::1"
region = "us-east"
[[backends]]
name = "us-2"
address = "2001:db8:10:1::2"
region = "us-east"
[[backends]]
name = "eu-1"
address = "2001:db8:10:2::1"
region = "eu-west"
[[backends]]
name = "eu-2"
address = "2001:db8:10:2::2"
region = "eu-west"
[[backends]]
name = "ap-1"
address = "2001:db8:10:3::1"
region = "ap-south"
[[backends]]
name = "ap-2"
address = "2001:db8:10:3::2"
region = "ap-south"

[[client_classes]]
name = "eu"
prefixes = ["198.51.100.0/24", "2001:db8:e1::/48"]
regions = ["eu-west", "us-east", "ap-south"]
allowed_regions = ["eu-west", "us-east"]

[[client_classes]]
name = "apac"
prefixes = ["192.0.2.0/24", "2001:db8::/32"]
regions = ["ap-south", "us-east", "eu-west"]

[[services]]
name = "web"
vip = "203.0.113.10"
port = 80
protocol = "tcp"
regions = ["us-east", "eu-west", "ap-south"]
policy = "geo"
classes = ["eu", "apac"]

[[services]]
name = "web6"
vip = "2001:db8:ff::10"
port = 80
protocol = "tcp"
regions = ["us-east", "eu-west", "ap-south"]
policy = "geo"
classes = ["eu", "apac"]

[[services]]
name = "fast"
vip = "203.0.113.11"
port = 80
protocol = "tcp"
regions = ["us-east", "eu-west", "ap-south"]
policy = "latency"
"#;

fn backend_name(a: IpAddr) -> &'static str {
    match a.to_string().as_str() {
        "2001:db8:10:1::1" => "us-1",
        "2001:db8:10:1::2" => "us-2",
        "2001:db8:10:2::1" => "eu-1",
        "2001:db8:10:2::2" => "eu-2",
        "2001:db8:10:3::1" => "ap-1",
        "2001:db8:10:3::2" => "ap-2",
        other => panic!("{other}: not a backend"),
    }
}

fn syn(src: IpAddr, sport: u16, vip: IpAddr) -> Vec<u8> {
    let eth = etherparse::PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2]);
    let b = match (src, vip) {
        (IpAddr::V4(s), IpAddr::V4(d)) => eth.ipv4(s.octets(), d.octets(), 64),
        (IpAddr::V6(s), IpAddr::V6(d)) => eth.ipv6(s.octets(), d.octets(), 64),
        _ => panic!("mixed families"),
    };
    let mut v = Vec::new();
    b.tcp(sport, 80, 1, 1024)
        .syn()
        .write(&mut v, &[])
        .expect("build");
    v
}

/// A classic little-endian microsecond pcap (as in tests/replay_cli.rs).
fn write_pcap(path: &std::path::Path, frames: &[Vec<u8>]) {
    let mut b = Vec::new();
    b.extend_from_slice(&0xa1b2_c3d4u32.to_le_bytes());
    b.extend_from_slice(&2u16.to_le_bytes());
    b.extend_from_slice(&4u16.to_le_bytes());
    b.extend_from_slice(&[0; 8]);
    b.extend_from_slice(&65_535u32.to_le_bytes());
    b.extend_from_slice(&1u32.to_le_bytes());
    for (i, f) in frames.iter().enumerate() {
        b.extend_from_slice(&(1_700_000_000u32 + i as u32).to_le_bytes());
        b.extend_from_slice(&0u32.to_le_bytes());
        b.extend_from_slice(&(f.len() as u32).to_le_bytes());
        b.extend_from_slice(&(f.len() as u32).to_le_bytes());
        b.extend_from_slice(f);
    }
    std::fs::write(path, b).expect("write pcap");
}

fn read_pcap(path: &std::path::Path) -> Vec<Vec<u8>> {
    let b = std::fs::read(path).expect("read pcap");
    let mut out = Vec::new();
    let mut off = 24;
    while off < b.len() {
        let len = u32::from_le_bytes(b[off + 8..off + 12].try_into().expect("4")) as usize;
        out.push(b[off + 16..off + 16 + len].to_vec());
        off += 16 + len;
    }
    out
}

fn steer(args: &[&str]) -> std::process::Output {
    common::run_bounded(Command::new(STEER).args(args), Duration::from_secs(60))
}

/// What `steer explain` says about a new flow: `Ok(backend)` or
/// `Err(drop reason)`.
fn explain(cfg: &str, client: &str, vip: &str, flags: &[&str]) -> Result<String, String> {
    let mut args = vec!["explain", "tcp", client, vip, "--config", cfg];
    args.extend_from_slice(flags);
    let out = steer(&args);
    let stdout = common::text(&out.stdout);
    assert!(
        out.status.success(),
        "steer {}\n{stdout}{}",
        args.join(" "),
        common::text(&out.stderr)
    );
    assert!(stdout.contains("(offline: from "), "{stdout}");
    let line = stdout
        .lines()
        .find(|l| l.starts_with("new flow"))
        .unwrap_or_else(|| panic!("no `new flow` line:\n{stdout}"));
    if let Some(rest) = line.split("-> backend ").nth(1) {
        Ok(rest.split_whitespace().next().expect("a name").to_string())
    } else if let Some(reason) = line.split("counted as ").nth(1) {
        Err(reason.trim().to_string())
    } else {
        panic!("{line}")
    }
}

/// A socket address as `steer explain` takes it.
fn sock(a: IpAddr, port: u16) -> String {
    std::net::SocketAddr::from((a, port)).to_string()
}

/// For `n` clients of `base` (+1 ...) to `vip`: `steer explain` with
/// `flags` agrees with `steer replay` with the same flags. Returns how many
/// flows each backend (or drop reason) got.
fn agree(
    dir: &Scratch,
    what: &str,
    base: &str,
    n: u32,
    vip: &str,
    flags: &[&str],
) -> std::collections::BTreeMap<String, u32> {
    let cfg = dir.path("steer.toml");
    std::fs::write(&cfg, CFG).expect("config");
    let cfg = cfg.to_str().expect("utf-8");
    let vip: IpAddr = vip.parse().expect("vip");
    let base: IpAddr = base.parse().expect("base");
    let flows: Vec<(IpAddr, u16)> = (1..=n)
        .map(|i| {
            let a = match base {
                IpAddr::V4(b) => IpAddr::from(std::net::Ipv4Addr::from(u32::from(b) + i)),
                IpAddr::V6(b) => {
                    IpAddr::from(std::net::Ipv6Addr::from(u128::from(b) + u128::from(i)))
                }
            };
            (a, 40_000 + i as u16)
        })
        .collect();
    let said: Vec<Result<String, String>> = flows
        .iter()
        .map(|(a, p)| explain(cfg, &sock(*a, *p), &sock(vip, 80), flags))
        .collect();
    // Replay one capture per flow would be slow: replay them all, and
    // match the transmitted frames to flows by their inner source.
    let frames: Vec<Vec<u8>> = flows.iter().map(|(a, p)| syn(*a, *p, vip)).collect();
    let input = dir.path("in.pcap");
    write_pcap(&input, &frames);
    let out_path = dir.path("out.pcap");
    let mut args = vec![
        "replay",
        "--config",
        cfg,
        "--in",
        input.to_str().expect("utf-8"),
        "--out",
        out_path.to_str().expect("utf-8"),
    ];
    args.extend_from_slice(flags);
    let out = steer(&args);
    let stdout = common::text(&out.stdout);
    assert!(
        out.status.success(),
        "{what}: {stdout}{}",
        common::text(&out.stderr)
    );
    let mut sent = std::collections::BTreeMap::new();
    for f in read_pcap(&out_path) {
        let (outer, inner) = etherparse::Ipv6Header::from_slice(&f[14..]).expect("outer IPv6");
        let flow = match etherparse::IpSlice::from_slice(inner).expect("inner IP") {
            etherparse::IpSlice::Ipv4(ip) => IpAddr::from(ip.header().source_addr()),
            etherparse::IpSlice::Ipv6(ip) => IpAddr::from(ip.header().source_addr()),
        };
        sent.insert(flow, backend_name(IpAddr::from(outer.destination)));
    }
    let mut tally = std::collections::BTreeMap::new();
    let mut dropped = std::collections::BTreeMap::<String, u32>::new();
    for ((a, p), s) in flows.iter().zip(&said) {
        match s {
            Ok(b) => {
                assert_eq!(
                    sent.get(a).copied(),
                    Some(b.as_str()),
                    "{what}: explain sends {a}:{p} to {b}, the program to {:?}",
                    sent.get(a)
                );
                *tally.entry(b.clone()).or_insert(0) += 1;
            }
            Err(reason) => {
                assert_eq!(
                    sent.get(a),
                    None,
                    "{what}: explain drops {a}:{p}, the program forwards it"
                );
                *dropped.entry(reason.clone()).or_insert(0) += 1;
                *tally.entry(format!("drop {reason}")).or_insert(0) += 1;
            }
        }
    }
    // The replay's drop counters agree with the drops explain announced.
    for (reason, k) in &dropped {
        let line = format!("drop {reason:<16} {k}");
        assert!(stdout.contains(&line), "{what}: no `{line}` in\n{stdout}");
    }
    eprintln!("{what}: {tally:?}");
    tally
}

#[test]
#[ignore = "needs root: BPF or network namespaces (cargo xtask test runs it)"]
fn offline_explain_agrees_with_replay_for_each_input_flag() {
    if !require_root() {
        return;
    }
    let dir = Scratch::new("explain-cli-agree");
    let vip4 = "203.0.113.10";
    let vip6 = "2001:db8:ff::10";
    // Healthy: eu clients on eu-west, apac clients on ap-south (dial 75:
    // some on us-east).
    let t = agree(&dir, "healthy eu", "198.51.100.0", 24, vip4, &[]);
    assert!(t.keys().all(|b| b.starts_with("eu-")), "{t:?}");
    let t = agree(&dir, "healthy eu v6", "2001:db8:e1::", 24, vip6, &[]);
    assert!(t.keys().all(|b| b.starts_with("eu-")), "{t:?}");
    let t = agree(&dir, "healthy apac", "192.0.2.0", 24, vip4, &[]);
    assert!(t.keys().any(|b| b.starts_with("ap-")), "{t:?}");
    // --down: eu-west 1 of 2 healthy, health 0.7: some spill to us-east.
    let t = agree(
        &dir,
        "--down eu-1",
        "198.51.100.0",
        24,
        vip4,
        &["--down", "eu-1"],
    );
    assert!(!t.contains_key("eu-1"), "{t:?}");
    assert!(t.keys().any(|b| b.starts_with("us-")), "{t:?}");
    // --drain-region: the eu class (allowed eu-west and us-east) goes to
    // us-east.
    let t = agree(
        &dir,
        "--drain-region eu-west",
        "198.51.100.0",
        24,
        vip4,
        &["--drain-region", "eu-west"],
    );
    assert!(t.keys().all(|b| b.starts_with("us-")), "{t:?}");
    // Both allowed regions drained: fail closed, dropped as residency.
    let t = agree(
        &dir,
        "--drain-region eu-west, us-east",
        "198.51.100.0",
        12,
        vip4,
        &["--drain-region", "eu-west", "--drain-region", "us-east"],
    );
    assert_eq!(t.keys().collect::<Vec<_>>(), ["drop residency"], "{t:?}");
    // --rtt: the latency service ranks ap-south first (its dial 75 sends
    // a quarter on to the next, eu-west at 20 ms).
    let t = agree(
        &dir,
        "--rtt",
        "100.100.0.0",
        24,
        "203.0.113.11",
        &[
            "--rtt",
            "ap-south=5",
            "--rtt",
            "eu-west=20",
            "--rtt",
            "us-east=80",
        ],
    );
    assert!(t.keys().any(|b| b.starts_with("ap-")), "{t:?}");
    assert!(!t.keys().any(|b| b.starts_with("us-")), "{t:?}");
    // --rate: ap-south over its 2,000/s: keep 1/3 of its 75 %.
    let t = agree(
        &dir,
        "--rate",
        "192.0.2.0",
        24,
        vip4,
        &["--rate", "ap-south=6000"],
    );
    assert!(t.keys().any(|b| b.starts_with("us-")), "{t:?}");
}

/// Mistakes in the offline inputs are reported with what was wrong and
/// what would be right; no root needed.
#[test]
fn offline_explain_reports_bad_inputs() {
    let dir = Scratch::new("explain-cli-errors");
    let cfg = dir.path("steer.toml");
    std::fs::write(&cfg, CFG).expect("config");
    let cfg = cfg.to_str().expect("utf-8");
    let fail = |args: &[&str]| {
        let out = steer(args);
        assert!(!out.status.success(), "steer {}", args.join(" "));
        common::text(&out.stderr)
    };
    let client = "198.51.100.7:40000";
    let vip = "203.0.113.10:80";
    let e = fail(&[
        "explain", "tcp", client, vip, "--config", cfg, "--down", "eu-9",
    ]);
    assert!(e.contains("\"eu-9\""), "{e}");
    assert!(e.contains("us-1, us-2, eu-1, eu-2, ap-1, ap-2"), "{e}");
    let e = fail(&[
        "explain",
        "tcp",
        client,
        vip,
        "--config",
        cfg,
        "--drain-region",
        "mars",
    ]);
    assert!(e.contains("us-east, eu-west, ap-south"), "{e}");
    let e = fail(&[
        "explain", "tcp", client, vip, "--config", cfg, "--rtt", "eu-west",
    ]);
    assert!(e.contains("NAME=NUMBER"), "{e}");
    // Runtime inputs without a config: live mode has its own inputs.
    let e = fail(&["explain", "tcp", client, vip, "--down", "eu-1"]);
    assert!(e.contains("--config FILE"), "{e}");
    // Mixed families.
    let e = fail(&[
        "explain",
        "tcp",
        "[2001:db8::7]:40000",
        vip,
        "--config",
        cfg,
    ]);
    assert!(e.contains("different address families"), "{e}");
    // Not a VIP: explained, not an error.
    let out = steer(&["explain", "tcp", client, "203.0.113.99:80", "--config", cfg]);
    assert!(out.status.success());
    assert!(
        common::text(&out.stdout).contains("no service has VIP 203.0.113.99 port 80"),
        "{}",
        common::text(&out.stdout)
    );
}

/// The decision path names the class by its longest prefix (a /48 inside
/// another class's /32), the order and the residency constraint.
#[test]
fn offline_explain_shows_the_class_order_and_residency() {
    let dir = Scratch::new("explain-cli-path");
    let cfg = dir.path("steer.toml");
    std::fs::write(&cfg, CFG).expect("config");
    let out = steer(&[
        "explain",
        "tcp",
        "[2001:db8:e1::5]:40000",
        "[2001:db8:ff::10]:80",
        "--config",
        cfg.to_str().expect("utf-8"),
    ]);
    let stdout = common::text(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        common::text(&out.stderr)
    );
    for want in [
        "service     web6 (2001:db8:ff::10:80 tcp, policy geo)",
        "class       eu (id 1, prefix 2001:db8:e1::/48), with its own table for this service",
        "order       eu-west, us-east (",
        "residency   only eu-west, us-east may take this class's new flows",
        "new flow    -> backend eu-",
    ] {
        assert!(stdout.contains(want), "no `{want}` in\n{stdout}");
    }
}
