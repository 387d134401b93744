//! `steer replay` end to end: a capture in, the transmitted frames out, a
//! verdict summary, and clear errors for bad input files.

mod common;
use common::require_root;

use std::path::{Path, PathBuf};
use std::process::Command;

const STEER: &str = env!("CARGO_BIN_EXE_steer");

/// The shared fixture, its service served by region eu (eu-1 and eu-2).
const CFG: &str = concat!(
    include_str!("fixtures/eu.toml"),
    r#"regions = ["eu"]
"#
);

/// A unique scratch directory, removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(tag: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!("steer-replay-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("scratch dir");
        Scratch(dir)
    }
    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn tcp(dst: [u8; 4], sport: u16) -> Vec<u8> {
    let b = etherparse::PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
        .ipv4([198, 51, 100, 7], dst, 64)
        .tcp(sport, 80, 1, 1024)
        .syn();
    let mut v = Vec::new();
    b.write(&mut v, &[]).expect("build");
    v
}

/// A classic little-endian microsecond pcap, written by hand from the
/// format description (independent of steer's pcap module).
fn write_pcap(path: &Path, frames: &[Vec<u8>]) {
    let mut b = Vec::new();
    b.extend_from_slice(&0xa1b2_c3d4u32.to_le_bytes());
    b.extend_from_slice(&2u16.to_le_bytes());
    b.extend_from_slice(&4u16.to_le_bytes());
    b.extend_from_slice(&[0; 8]);
    b.extend_from_slice(&65535u32.to_le_bytes());
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

/// Frames of a classic little-endian pcap, parsed by hand.
fn read_pcap(path: &Path) -> Vec<Vec<u8>> {
    let b = std::fs::read(path).expect("read pcap");
    assert_eq!(&b[..4], &0xa1b2_c3d4u32.to_le_bytes(), "pcap magic");
    assert_eq!(
        u32::from_le_bytes(b[20..24].try_into().expect("4")),
        1,
        "Ethernet"
    );
    let mut out = Vec::new();
    let mut off = 24;
    while off < b.len() {
        let len = u32::from_le_bytes(b[off + 8..off + 12].try_into().expect("4")) as usize;
        out.push(b[off + 16..off + 16 + len].to_vec());
        off += 16 + len;
    }
    out
}

fn replay(dir: &Scratch, input: &Path, extra: &[&str]) -> std::process::Output {
    let cfg = dir.path("steer.toml");
    std::fs::write(&cfg, CFG).expect("config");
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

#[test]
fn replays_a_capture_and_writes_what_was_transmitted() {
    if !require_root() {
        return;
    }
    let dir = Scratch::new("ok");
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

    let out = replay(&dir, &input, &[]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
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
fn bad_inputs_give_clear_errors() {
    if !require_root() {
        return;
    }
    let dir = Scratch::new("bad");
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
    assert!(err.contains("not a pcap file"), "{err}");

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
