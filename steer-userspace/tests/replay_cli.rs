//! `steer replay` end to end: a capture in, the transmitted frames out, a
//! verdict summary, and clear errors for bad input files.

mod common;
use common::{require_root, Scratch};

use std::path::Path;
use std::process::Command;

const STEER: &str = env!("CARGO_BIN_EXE_steer");

/// The shared fixture, its service served by region eu (eu-1 and eu-2).
const CFG: &str = concat!(
    include_str!("fixtures/eu.toml"),
    r#"regions = ["eu"]
"#
);

fn tcp(dst: [u8; 4], sport: u16) -> Vec<u8> {
    let b = etherparse::PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
        .ipv4([198, 51, 100, 7], dst, 64)
        .tcp(sport, 80, 1, 1024)
        .syn();
    let mut v = Vec::new();
    b.write(&mut v, &[]).expect("build");
    v
}

/// A TCP SYN to `dst` in a frame of 54 + `pad` bytes: the IP packet is
/// the 40-byte SYN, the rest trailing bytes past it (as on a padded
/// frame). The kernel runs frames beyond one page as multi-buffer XDP;
/// the trailing bytes are cut before the frame is sent.
fn tcp_sized(dst: [u8; 4], sport: u16, pad: usize) -> Vec<u8> {
    let mut v = tcp(dst, sport);
    v.resize(v.len() + pad, 0x5a);
    v
}

/// A classic little-endian microsecond pcap, written by hand from the
/// format description (independent of steer's pcap module).
fn write_pcap(path: &Path, frames: &[Vec<u8>]) {
    std::fs::write(path, pcap_bytes(frames)).expect("write pcap");
}

fn pcap_bytes(frames: &[Vec<u8>]) -> Vec<u8> {
    let snaplen = frames.iter().map(Vec::len).max().unwrap_or(0).max(65_535) as u32;
    let mut b = Vec::new();
    b.extend_from_slice(&0xa1b2_c3d4u32.to_le_bytes());
    b.extend_from_slice(&2u16.to_le_bytes());
    b.extend_from_slice(&4u16.to_le_bytes());
    b.extend_from_slice(&[0; 8]);
    b.extend_from_slice(&snaplen.to_le_bytes());
    b.extend_from_slice(&1u32.to_le_bytes());
    for (i, f) in frames.iter().enumerate() {
        b.extend_from_slice(&(1_700_000_000u32 + i as u32).to_le_bytes());
        b.extend_from_slice(&0u32.to_le_bytes());
        b.extend_from_slice(&(f.len() as u32).to_le_bytes());
        b.extend_from_slice(&(f.len() as u32).to_le_bytes());
        b.extend_from_slice(f);
    }
    b
}

/// The same frames as a little-endian pcapng (section header, one
/// Ethernet interface with microsecond timestamps, an enhanced packet
/// block each), written by hand from the pcapng specification.
fn write_pcapng(path: &Path, frames: &[Vec<u8>]) {
    fn block(out: &mut Vec<u8>, kind: u32, body: &[u8]) {
        let pad = (4 - body.len() % 4) % 4;
        let total = (12 + body.len() + pad) as u32;
        out.extend_from_slice(&kind.to_le_bytes());
        out.extend_from_slice(&total.to_le_bytes());
        out.extend_from_slice(body);
        out.extend_from_slice(&vec![0; pad]);
        out.extend_from_slice(&total.to_le_bytes());
    }
    let mut b = Vec::new();
    let mut shb = 0x1a2b_3c4du32.to_le_bytes().to_vec();
    shb.extend_from_slice(&[1, 0, 0, 0]);
    shb.extend_from_slice(&(-1i64).to_le_bytes());
    block(&mut b, 0x0a0d_0d0a, &shb);
    block(&mut b, 1, &[1, 0, 0, 0, 0, 0, 0, 0]);
    for (i, f) in frames.iter().enumerate() {
        let ts = (1_700_000_000 + i as u64) * 1_000_000;
        let mut epb = 0u32.to_le_bytes().to_vec();
        epb.extend_from_slice(&((ts >> 32) as u32).to_le_bytes());
        epb.extend_from_slice(&(ts as u32).to_le_bytes());
        epb.extend_from_slice(&(f.len() as u32).to_le_bytes());
        epb.extend_from_slice(&(f.len() as u32).to_le_bytes());
        epb.extend_from_slice(f);
        block(&mut b, 6, &epb);
    }
    std::fs::write(path, b).expect("write pcapng");
}

/// A classic little-endian pcap parsed by hand: its snap length and frames.
fn read_pcap_with_snaplen(path: &Path) -> (u32, Vec<Vec<u8>>) {
    let b = std::fs::read(path).expect("read pcap");
    assert_eq!(&b[..4], &0xa1b2_c3d4u32.to_le_bytes(), "pcap magic");
    assert_eq!(
        u32::from_le_bytes(b[20..24].try_into().expect("4")),
        1,
        "Ethernet"
    );
    let snaplen = u32::from_le_bytes(b[16..20].try_into().expect("4"));
    let mut out = Vec::new();
    let mut off = 24;
    while off < b.len() {
        let len = u32::from_le_bytes(b[off + 8..off + 12].try_into().expect("4")) as usize;
        let orig = u32::from_le_bytes(b[off + 12..off + 16].try_into().expect("4")) as usize;
        assert_eq!(len, orig, "a record cut short");
        out.push(b[off + 16..off + 16 + len].to_vec());
        off += 16 + len;
    }
    (snaplen, out)
}

fn read_pcap(path: &Path) -> Vec<Vec<u8>> {
    read_pcap_with_snaplen(path).1
}

fn replay(dir: &Scratch, input: &Path, extra: &[&str]) -> std::process::Output {
    replay_with(dir, CFG, input, extra)
}

/// `steer replay` with the config `text`.
fn replay_with(dir: &Scratch, text: &str, input: &Path, extra: &[&str]) -> std::process::Output {
    let cfg = dir.path("steer.toml");
    std::fs::write(&cfg, text).expect("config");
    Command::new(STEER)
        .arg("replay")
        .arg("--config")
        .arg(&cfg)
        .arg("--in")
        .arg(input)
        .arg("--out")
        .arg(dir.path("out.pcap"))
        .args(extra)
        .output()
        .expect("run steer replay")
}

/// [`replay`], asserting it succeeded; its standard output.
fn replay_ok(dir: &Scratch, input: &Path, extra: &[&str]) -> String {
    let out = replay(dir, input, extra);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

#[test]
#[ignore = "needs root: BPF or network namespaces (cargo xtask test runs it)"]
fn replays_a_capture_and_writes_what_was_transmitted() {
    if !require_root() {
        return;
    }
    let dir = Scratch::new("replay-ok");
    let mut frames: Vec<Vec<u8>> = (0..20)
        .map(|i| tcp([203, 0, 113, 10], 40_000 + i))
        .collect();
    frames.push(tcp([198, 51, 100, 200], 1234)); // not a VIP: passes
    let mut cut = tcp([203, 0, 113, 10], 999);
    cut.truncate(14 + 20 + 10); // TCP header cut: dropped
    cut[16..18].copy_from_slice(&30u16.to_be_bytes());
    frames.push(cut);
    let input = dir.path("in.pcap");
    write_pcap(&input, &frames);

    let stdout = replay_ok(&dir, &input, &[]);
    assert!(stdout.contains("replayed 22 packets"), "{stdout}");
    assert!(stdout.contains("TX       20"), "{stdout}");
    assert!(stdout.contains("PASS     1"), "{stdout}");
    assert!(stdout.contains("DROP     1"), "{stdout}");
    assert!(stdout.contains("drop truncated_l4"), "{stdout}");
    // Shown only when non-zero; a roomy conntrack map takes every flow.
    assert!(!stdout.contains("ct_insert_failed"), "{stdout}");

    let sent = read_pcap(&dir.path("out.pcap"));
    assert_eq!(sent.len(), 20);
    for (tx, orig) in sent.iter().zip(&frames) {
        let (outer, inner) = etherparse::Ipv4Header::from_slice(&tx[14..]).expect("outer");
        assert!([[192, 0, 2, 11], [192, 0, 2, 12]].contains(&outer.destination));
        assert_eq!(inner, &orig[14..]);
    }

    // With eu-1 down, nothing goes to it.
    let out = replay(&dir, &input, &["--down", "eu-1"]);
    assert!(out.status.success());
    for tx in read_pcap(&dir.path("out.pcap")) {
        let (outer, _) = etherparse::Ipv4Header::from_slice(&tx[14..]).expect("outer");
        assert_eq!(outer.destination, [192, 0, 2, 12]);
    }
}

#[test]
#[ignore = "needs root: BPF or network namespaces (cargo xtask test runs it)"]
fn bad_inputs_give_clear_errors() {
    if !require_root() {
        return;
    }
    let dir = Scratch::new("replay-bad");
    let missing = dir.path("missing.pcap");
    let out = replay(&dir, &missing, &[]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot open input capture"), "{err}");
    assert!(err.contains("missing.pcap"), "{err}");

    let text = dir.path("text.pcap");
    std::fs::write(&text, b"this is not a capture at all").expect("write");
    let out = replay(&dir, &text, &[]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not a pcap or pcapng file"), "{err}");

    let ng = dir.path("ng.pcapng");
    let mut b = vec![0x0a, 0x0d, 0x0d, 0x0a];
    b.extend_from_slice(&[0; 28]);
    std::fs::write(&ng, b).expect("write");
    let out = replay(&dir, &ng, &[]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("pcapng"), "{err}");

    let input = dir.path("in.pcap");
    write_pcap(&input, &[tcp([203, 0, 113, 10], 1)]);
    let out = replay(&dir, &input, &["--down", "nope"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no such backend"), "{err}");
}

/// stderr, asserting it is one line (one error, said once).
fn one_line_error(out: &std::process::Output) -> String {
    assert!(!out.status.success(), "expected a failure");
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(err.trim_end().lines().count(), 1, "not one line: {err}");
    err
}

#[test]
#[ignore = "needs root: BPF or network namespaces (cargo xtask test runs it)"]
fn a_truncated_header_is_called_truncated() {
    if !require_root() {
        return;
    }
    let dir = Scratch::new("replay-cut-header");
    let input = dir.path("cut.pcap");
    let good = pcap_bytes(&[tcp([203, 0, 113, 10], 1)]);
    std::fs::write(&input, &good[..10]).expect("write");
    let err = one_line_error(&replay(&dir, &input, &[]));
    assert!(err.contains("cut.pcap is not a usable capture"), "{err}");
    assert!(err.contains("truncated"), "{err}");
    assert!(err.contains("10 bytes"), "{err}");
    assert!(!err.contains("magic"), "{err}");

    // Cut inside the second record: named, numbered from 1.
    let good = pcap_bytes(&[tcp([203, 0, 113, 10], 1), tcp([203, 0, 113, 10], 2)]);
    std::fs::write(&input, &good[..good.len() - 5]).expect("write");
    let err = one_line_error(&replay(&dir, &input, &[]));
    assert!(
        err.contains("packet record 2 is truncated: the file ends inside it"),
        "{err}"
    );
}

#[test]
#[ignore = "needs root: BPF or network namespaces (cargo xtask test runs it)"]
fn pcapng_captures_replay_like_pcap() {
    if !require_root() {
        return;
    }
    let dir = Scratch::new("replay-ng");
    let frames: Vec<Vec<u8>> = (0..8).map(|i| tcp([203, 0, 113, 10], 41_000 + i)).collect();
    let input = dir.path("in.pcapng");
    write_pcapng(&input, &frames);
    let stdout = replay_ok(&dir, &input, &[]);
    assert!(stdout.contains("replayed 8 packets"), "{stdout}");
    assert!(stdout.contains("TX       8"), "{stdout}");
    let sent = read_pcap(&dir.path("out.pcap"));
    assert_eq!(sent.len(), 8);
    for (tx, orig) in sent.iter().zip(&frames) {
        assert_eq!(&tx[14 + 20..], &orig[14..], "IPIP around the original");
    }
}

/// Records too large for BPF_PROG_TEST_RUN (the kernel answers ENOMEM
/// above one page plus MAX_SKB_FRAGS pages, about 73 KB with 4 KiB
/// pages) are skipped, counted and named with the limit; the rest of the
/// capture is replayed.
#[test]
#[ignore = "needs root: BPF or network namespaces (cargo xtask test runs it)"]
fn records_too_large_for_the_kernel_are_skipped_and_named() {
    if !require_root() {
        return;
    }
    let dir = Scratch::new("replay-large");
    let vip = [203, 0, 113, 10];
    let frames = vec![
        tcp(vip, 1),
        tcp_sized(vip, 2, 80_000),
        tcp(vip, 3),
        tcp_sized(vip, 4, 262_144 - 54),
        tcp(vip, 5),
    ];
    let input = dir.path("in.pcap");
    write_pcap(&input, &frames);
    let stdout = replay_ok(&dir, &input, &[]);
    assert!(stdout.contains("replayed 5 packets"), "{stdout}");
    assert!(stdout.contains("TX       3"), "{stdout}");
    let line = stdout
        .lines()
        .find(|l| l.contains("BPF_PROG_TEST_RUN"))
        .unwrap_or_else(|| panic!("no line for the skipped records:\n{stdout}"));
    assert!(
        line.trim_start().starts_with("SKIPPED  2 larger than the "),
        "{line}"
    );
    assert!(line.contains("packet record 2 (80054 bytes)"), "{line}");
    assert!(line.contains("packet record 4 (262144 bytes)"), "{line}");
    let limit: usize = line
        .split("larger than the ")
        .nth(1)
        .and_then(|s| s.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no limit in {line}"));
    // A page (less headroom) at least, and below the frame it refused.
    assert!((3_000..80_054).contains(&limit), "{line}");
    assert_eq!(read_pcap(&dir.path("out.pcap")).len(), 3);
}

/// Every transmitted frame is written whole, under a snap length that
/// covers it. A 70 KB frame whose IP packet is 54 bytes (the rest, mostly
/// in fragments beyond the first buffer, trails the packet) is sent with
/// the trailer cut: the program is multi-buffer aware, so no byte of a
/// frame is left unseen (no frame steer sends exceeds the MTU, 9,216 at
/// most, plus the Ethernet header).
#[test]
#[ignore = "needs root: BPF or network namespaces (cargo xtask test runs it)"]
fn the_output_snap_length_fits_every_record() {
    if !require_root() {
        return;
    }
    let dir = Scratch::new("replay-snaplen");
    let vip = [203, 0, 113, 10];
    let frames = vec![tcp(vip, 1), tcp_sized(vip, 2, 70_000)];
    let input = dir.path("in.pcap");
    write_pcap(&input, &frames);
    let stdout = replay_ok(&dir, &input, &[]);
    let (snaplen, sent) = read_pcap_with_snaplen(&dir.path("out.pcap"));
    let largest = sent.iter().map(Vec::len).max().unwrap_or(0);
    assert_eq!(sent.len(), 2, "{stdout}");
    assert_eq!(
        sent[1].len(),
        14 + 20 + (frames[1].len() - 70_000 - 14),
        "the 70,000-byte trailer is cut:\n{stdout}"
    );
    assert!(
        snaplen as usize >= largest,
        "snap length {snaplen} < {largest}"
    );
}

/// The source MAC of transmitted frames: `--source-mac`, else
/// `dataplane.source_mac`; with neither, replay refuses to run rather than
/// drop every frame for a VIP (BPF_PROG_TEST_RUN has no interface MAC).
#[test]
#[ignore = "needs root: BPF or network namespaces (cargo xtask test runs it)"]
fn the_source_mac_comes_from_the_flag_or_the_config() {
    if !require_root() {
        return;
    }
    let dir = Scratch::new("replay-source-mac");
    // The destination MAC is broadcast: it must never become the source.
    let mut frame = tcp([203, 0, 113, 10], 1);
    frame[..6].copy_from_slice(&[0xff; 6]);
    let input = dir.path("in.pcap");
    write_pcap(&input, &[frame]);

    // The fixture's dataplane.source_mac.
    replay_ok(&dir, &input, &[]);
    let sent = read_pcap(&dir.path("out.pcap"));
    assert_eq!(&sent[0][6..12], &[2, 0, 0, 0, 0, 0x5e]);

    // --source-mac overrides it.
    replay_ok(&dir, &input, &["--source-mac", "02:00:00:00:00:77"]);
    let sent = read_pcap(&dir.path("out.pcap"));
    assert_eq!(&sent[0][6..12], &[2, 0, 0, 0, 0, 0x77]);

    // Without dataplane.source_mac, the flag alone.
    let bare: String = CFG
        .lines()
        .filter(|l| !l.starts_with("source_mac"))
        .map(|l| format!("{l}\n"))
        .collect();
    assert_ne!(bare.len(), CFG.len(), "the fixture sets source_mac");
    let out = replay_with(&dir, &bare, &input, &["--source-mac", "02:00:00:00:00:78"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let sent = read_pcap(&dir.path("out.pcap"));
    assert_eq!(&sent[0][6..12], &[2, 0, 0, 0, 0, 0x78]);

    // Neither: a clear error that says what to do.
    let out = replay_with(&dir, &bare, &input, &[]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no source MAC") && err.contains("--source-mac"),
        "{err}"
    );

    // Not a unicast MAC: refused by the argument parser.
    let out = replay(&dir, &input, &["--source-mac", "ff:ff:ff:ff:ff:ff"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--source-mac") && err.contains("unicast"),
        "{err}"
    );
}

/// A TCP packet of an established flow from `client`: an ACK, no SYN.
fn tcp_ack(client: [u8; 4], sport: u16) -> Vec<u8> {
    let b = etherparse::PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
        .ipv4(client, [203, 0, 113, 10], 64)
        .tcp(sport, 80, 2, 1024)
        .ack(1);
    let mut v = Vec::new();
    b.write(&mut v, b"data").expect("build");
    v
}

/// A SYN from `client`.
fn tcp_syn_from(client: [u8; 4], sport: u16) -> Vec<u8> {
    let b = etherparse::PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
        .ipv4(client, [203, 0, 113, 10], 64)
        .tcp(sport, 80, 1, 1024)
        .syn();
    let mut v = Vec::new();
    b.write(&mut v, &[]).expect("build");
    v
}

/// The numbers after `label` on the summary line of backend `name`.
fn backend_figure(stdout: &str, name: &str, label: &str) -> u64 {
    let line = stdout
        .lines()
        .find(|l| l.trim_start().starts_with(&format!("backend {name} ")))
        .unwrap_or_else(|| panic!("no line for backend {name}:\n{stdout}"));
    let rest = &line[line
        .find(label)
        .unwrap_or_else(|| panic!("no {label:?} in {line:?}"))
        + label.len()..];
    rest.split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no number after {label:?} in {line:?}"))
}

#[test]
#[ignore = "needs root: BPF or network namespaces (cargo xtask test runs it)"]
fn the_summary_shows_repeated_syns_and_handshakes_per_backend() {
    if !require_root() {
        return;
    }
    let dir = Scratch::new("replay-passive");
    let a = [198, 51, 100, 7];
    let b = [198, 51, 100, 8];
    let c = [198, 51, 100, 9];
    // Flow A: SYN, SYN again (a repeat), ACK (a handshake). Flow B: SYN,
    // ACK (a handshake). Flow C: a SYN only.
    let frames = vec![
        tcp_syn_from(a, 41_000),
        tcp_syn_from(a, 41_000),
        tcp_ack(a, 41_000),
        tcp_syn_from(b, 41_001),
        tcp_ack(b, 41_001),
        tcp_syn_from(c, 41_002),
    ];
    let input = dir.path("in.pcap");
    write_pcap(&input, &frames);
    let stdout = replay_ok(&dir, &input, &[]);
    let sent = backends_sent(&dir);
    assert_eq!(sent.len(), 6, "{stdout}");
    let name = |addr: [u8; 4]| match addr {
        [192, 0, 2, 11] => "eu-1",
        [192, 0, 2, 12] => "eu-2",
        other => panic!("sent to {other:?}, not a backend"),
    };
    // The repeat counts against where A's first SYN went; each handshake
    // where its flow's ACK went.
    let mut want = std::collections::BTreeMap::from([("eu-1", (0, 0)), ("eu-2", (0, 0))]);
    want.get_mut(name(sent[0])).unwrap().0 += 1;
    want.get_mut(name(sent[2])).unwrap().1 += 1;
    want.get_mut(name(sent[4])).unwrap().1 += 1;
    // Four SYNs are new flows (A's repeat is selected afresh too); A's and
    // B's ACKs find their SYN's slot (syn_promoted); nothing was in
    // conntrack.
    assert!(
        stdout.contains("paths: new_flow 4, syn_promoted 2, ct_hit 0,"),
        "{stdout}"
    );
    for (backend, (repeats, handshakes)) in want {
        assert_eq!(
            backend_figure(&stdout, backend, "repeated syns"),
            repeats,
            "{backend}: {stdout}"
        );
        assert_eq!(
            backend_figure(&stdout, backend, "handshakes"),
            handshakes,
            "{backend}: {stdout}"
        );
    }
}

/// Two regions: eu (eu-1, eu-2) and us (us-1).
const TWO_REGIONS: &str = concat!(
    include_str!("fixtures/eu.toml"),
    r#"regions = ["eu", "us"]

[[regions]]
name = "us"

[[backends]]
name = "us-1"
address = "192.0.2.21"
region = "us"
"#
);

/// Outer IPv4 destinations of the transmitted frames, in order.
fn backends_sent(dir: &Scratch) -> Vec<[u8; 4]> {
    read_pcap(&dir.path("out.pcap"))
        .iter()
        .map(|tx| {
            etherparse::Ipv4Header::from_slice(&tx[14..])
                .expect("outer")
                .0
                .destination
        })
        .collect()
}

#[test]
#[ignore = "needs root: BPF or network namespaces (cargo xtask test runs it)"]
fn a_drained_region_gets_no_new_flows() {
    if !require_root() {
        return;
    }
    let dir = Scratch::new("replay-drain-region");
    let frames: Vec<Vec<u8>> = (0..300)
        .map(|i| tcp_syn_from([198, 51, 100, (i % 250) as u8], 20_000 + i))
        .collect();
    let input = dir.path("in.pcap");
    write_pcap(&input, &frames);
    // Without the drain us-1 takes about a third of 300 flows.
    let stdout =
        String::from_utf8_lossy(&replay_with(&dir, TWO_REGIONS, &input, &[]).stdout).into_owned();
    let to_us = backends_sent(&dir)
        .iter()
        .filter(|b| **b == [192, 0, 2, 21])
        .count();
    assert!((60..140).contains(&to_us), "{to_us} of 300\n{stdout}");
    let out = replay_with(&dir, TWO_REGIONS, &input, &["--drain-region", "us"]);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{stdout}");
    let sent = backends_sent(&dir);
    assert_eq!(sent.len(), 300);
    assert!(sent.iter().all(|b| *b != [192, 0, 2, 21]), "{stdout}");
    assert!(
        stdout.contains("region us              new flows     0 (0.0%) (drained)"),
        "{stdout}"
    );
    assert!(
        stdout.contains("region eu              new flows   300 (100.0%)"),
        "{stdout}"
    );
}

#[test]
#[ignore = "needs root: BPF or network namespaces (cargo xtask test runs it)"]
fn what_if_keeps_established_flows_and_moves_new_ones() {
    if !require_root() {
        return;
    }
    let dir = Scratch::new("replay-what-if");
    // 200 flows open before the switch; after it, each sends data, and
    // 200 new flows open.
    let client = |i: u16| [198, 51, 100, (i % 250) as u8];
    let mut frames: Vec<Vec<u8>> = (0..200)
        .map(|i| tcp_syn_from(client(i), 30_000 + i))
        .collect();
    frames.extend((0..200).map(|i| tcp_ack(client(i), 30_000 + i)));
    frames.extend((200..400).map(|i| tcp_syn_from(client(i), 30_000 + i)));
    let input = dir.path("in.pcap");
    write_pcap(&input, &frames);
    let state = dir.path("then.toml");
    std::fs::write(&state, "drained_regions = [\"eu\"]\n").expect("state");
    let at = "201";
    let out = replay_with(
        &dir,
        TWO_REGIONS,
        &input,
        &["--at", at, "--then-state", state.to_str().expect("utf-8")],
    );
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let sent = backends_sent(&dir);
    assert_eq!(sent.len(), 600);
    // Each established flow's data went where its SYN went.
    for i in 0..200 {
        assert_eq!(sent[i], sent[200 + i], "flow {i} moved");
    }
    let eu_before = sent[..200]
        .iter()
        .filter(|b| **b != [192, 0, 2, 21])
        .count();
    assert!(
        eu_before > 100,
        "eu had {eu_before} of 200 before the switch"
    );
    // Every new flow after the switch avoids the drained region.
    assert!(sent[400..].iter().all(|b| *b == [192, 0, 2, 21]));
    assert!(stdout.contains("phase 1: packets 1 to 200"), "{stdout}");
    assert!(stdout.contains("phase 2: packets 201 to 600"), "{stdout}");
    assert!(
        stdout.contains(
            "what-if at packet 201: 200 flows forwarded before and after the switch, 0 of them \
             moved to another backend; 200 new flows after it"
        ),
        "{stdout}"
    );
    assert!(
        stdout.contains("region us              new flows   200 (100.0%)"),
        "{stdout}"
    );

    // A switch to a config with other data-plane sizes is refused up front.
    let other = dir.path("other.toml");
    std::fs::write(
        &other,
        TWO_REGIONS.replace("conntrack_size = 4096", "conntrack_size = 8192"),
    )
    .expect("config");
    let out = replay_with(
        &dir,
        TWO_REGIONS,
        &input,
        &["--at", "5", "--then-config", other.to_str().expect("utf-8")],
    );
    let err = one_line_error(&out);
    assert!(err.contains("changes the data plane's sizes"), "{err}");
    // --at past the end, and --at without a switch.
    let out = replay_with(
        &dir,
        TWO_REGIONS,
        &input,
        &[
            "--at",
            "601",
            "--then-state",
            state.to_str().expect("utf-8"),
        ],
    );
    assert!(one_line_error(&out).contains("has only 600 packets"));
    let out = replay_with(&dir, TWO_REGIONS, &input, &["--at", "5"]);
    assert!(!out.status.success());
}
