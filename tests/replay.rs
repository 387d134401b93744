//! Byte-exact packet-replay tests through the real XDP program
//! (BPF_PROG_TEST_RUN; no traffic is sent).
//!
//! Every expected frame is built independently with etherparse from the
//! rules in docs/architecture.md (see `steer_tests`); the only steer code
//! used to predict output is `steer_common::hash::flow_hash`.
//!
//! Each test loads its own `Dataplane`, so tests are independent and may run
//! in parallel.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use steer::config::Config;
use steer::dataplane::{Dataplane, RunOutput, Verdict};
use steer::policy::explain::{conntrack_live, explain, parse_query, Conntrack, Pending};
use steer::policy::{ApplyConfig as _, BackendState, Runtime};
use steer_common::hash::flow_hash;
use steer_common::{Branch, Counters, DropReason, Passive};
use steer_tests::*;

const BASIC: &str = include_str!("fixtures/basic.toml");
const RANGE: &str = include_str!("fixtures/range.toml");

const NEXT_HOP: [u8; 6] = [0x02, 0x00, 0x00, 0x00, 0x00, 0xfe];
/// basic.toml: default TTL.
const ENC: EncapParams = EncapParams {
    next_hop_mac: NEXT_HOP,
    source_mac: SOURCE_MAC,
    ttl: 64,
};
/// range.toml: `ttl = 32`.
const ENC_RANGE: EncapParams = EncapParams {
    next_hop_mac: NEXT_HOP,
    source_mac: SOURCE_MAC,
    ttl: 32,
};

const SRC4: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
const SRC6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0xffff, 0, 0, 0, 0, 1);
const RANGE4: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 0);
const RANGE4_PREFIX: u8 = 24;
const RANGE6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0xffff, 0, 0, 0, 0, 0);
const RANGE6_PREFIX: u8 = 112;

const EU1: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 11);
const EU2: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 12);
const EU3: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 13);
const V6_1: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0xb, 0, 0, 0, 0, 0x11);
const US1: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 21);
const US2: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 22);

/// Backend names by address, as in basic.toml.
fn backend_name(a: IpAddr) -> &'static str {
    match a.to_string().as_str() {
        "192.0.2.11" => "eu-1",
        "192.0.2.12" => "eu-2",
        "192.0.2.13" => "eu-3",
        "192.0.2.14" => "eu-4",
        "2001:db8:b::11" => "v6-1",
        "2001:db8:b::12" => "v6-2",
        "2001:db8:b::13" => "v6-3",
        "198.51.100.21" => "us-1",
        "198.51.100.22" => "us-2",
        "192.0.2.15" => "eu-5",
        other => panic!("{other} is not a backend of basic.toml"),
    }
}

const POOL_BACKENDS: [&str; 3] = ["eu-1", "eu-2", "eu-3"];
const POOL6_BACKENDS: [&str; 3] = ["v6-1", "v6-2", "v6-3"];

const VIP_WEB: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);
const VIP6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0xa, 0, 0, 0, 0, 0x10);
const VIP_MIXED: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 20);
const VIP_ANY: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 30);
const VIP_POOL: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 40);
const VIP6_POOL: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0xa, 0, 0, 0, 0, 0x40);
const VIP_STICKY: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 50);
const VIP6_STICKY: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0xa, 0, 0, 0, 0, 0x50);
const VIP_SOLO: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 60);
const VIP_REGIONAL: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 70);

/// Addresses that carry no VIP.
const OTHER4: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 99);
const OTHER6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0xa, 0, 0, 0, 0, 0x99);

const CLIENT: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 7);
const CLIENT6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0xc, 0, 0, 0, 0, 7);
const ROUTER4: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 254);
const ROUTER6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0xff, 0, 0, 0, 0, 1);

fn client_n(i: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(198, 51, 100, 0)) + 1 + (i % 200))
}

fn client6_n(i: u16) -> Ipv6Addr {
    Ipv6Addr::new(0x2001, 0xdb8, 0xc, 0, 0, 0, 0, 0x100 + i)
}

type Drops = [u64; DropReason::COUNT];
type Paths = [u64; Branch::COUNT];

fn parse(text: &str) -> Config {
    match Config::parse(text) {
        Ok(c) => c,
        Err(e) => panic!("test config does not parse: {e:?}"),
    }
}

/// One loaded program with its maps, and what it was programmed with.
struct Rig {
    dp: Dataplane,
    cfg: Config,
    down: BTreeSet<String>,
}

impl Rig {
    fn new(text: &str) -> Rig {
        Rig::with_down(text, &[])
    }

    fn with_down(text: &str, down: &[&str]) -> Rig {
        let cfg = parse(text);
        let mut dp = match Dataplane::load(&cfg.dataplane) {
            Ok(dp) => dp,
            Err(e) => panic!("loading the XDP program failed: {e:#}"),
        };
        let down: BTreeSet<String> = down.iter().map(|s| s.to_string()).collect();
        if let Err(e) = dp.apply(&cfg, &down) {
            panic!("programming the maps failed: {e:#}");
        }
        Rig { dp, cfg, down }
    }

    fn reapply(&mut self, text: &str) {
        self.cfg = parse(text);
        if let Err(e) = self.dp.apply(&self.cfg, &self.down) {
            panic!("re-programming the maps failed: {e:#}");
        }
    }

    fn run(&mut self, frame: &[u8]) -> RunOutput {
        match self.dp.run(frame) {
            Ok(o) => o,
            Err(e) => panic!(
                "BPF_PROG_TEST_RUN of a {}-byte frame failed: {e:#}",
                frame.len()
            ),
        }
    }

    fn drops(&self) -> Drops {
        self.dp.drop_counts().expect("reading DROP_STATS")
    }

    fn paths(&self) -> Paths {
        self.dp.path_counts().expect("reading PATH_STATS")
    }

    fn service(&self, name: &str) -> Counters {
        self.dp
            .service_counters(name)
            .unwrap_or_else(|e| panic!("service counters of {name}: {e:#}"))
    }

    fn backend(&self, service: &str, backend: &str) -> Counters {
        self.dp
            .backend_counters(service, backend)
            .unwrap_or_else(|e| panic!("counters of {backend} in {service}: {e:#}"))
    }

    fn passive(&self, service: &str, backend: &str) -> Passive {
        self.dp
            .backend_passive(service, backend)
            .unwrap_or_else(|e| panic!("passive counters of {backend} in {service}: {e:#}"))
    }

    /// The backend the kernel's active table of `service` names for a new
    /// flow `p` (docs/architecture.md: `ring[flow_hash % ring_size]`), read
    /// from the rings, not from the program's output.
    fn table_says(&self, service: &str, p: &Packet) -> &'static str {
        let table = self
            .dp
            .table(service)
            .unwrap_or_else(|e| panic!("table of {service}: {e:#}"));
        let slot = flow_hash(&p.flow_key()) as usize % table.len();
        let name = table[slot]
            .as_deref()
            .unwrap_or_else(|| panic!("slot {slot} of {service} is empty"));
        POOL_BACKENDS
            .iter()
            .chain(&["eu-4", "eu-5", "us-1", "us-2"])
            .find(|b| **b == name)
            .copied()
            .unwrap_or_else(|| panic!("{name} is not a backend of basic.toml"))
    }

    /// Runs `p`, expects it encapsulated to the backend named `backend`.
    #[track_caller]
    fn expect_to(&mut self, what: &str, p: &Packet, backend: &str) {
        let (o, got) = self.outer(what, p);
        let be = v4(o.dst());
        assert_eq!(
            backend_name(be.into()),
            backend,
            "{what}: sent to {be}, the table says {backend}"
        );
        assert_frame_eq(what, &got, &ipip(p, be));
    }

    /// Runs `frame`, expects `XDP_TX`, returns the output frame.
    #[track_caller]
    fn tx_frame(&mut self, what: &str, frame: &[u8]) -> Vec<u8> {
        let before = self.drops();
        let out = self.run(frame);
        if !matches!(out.verdict, Verdict::Tx) {
            panic!(
                "{what}: expected Tx, got {:?}; drop counters moved: {}",
                out.verdict,
                drop_delta_text(&before, &self.drops())
            );
        }
        out.data
    }

    /// Runs `p`, expects `XDP_TX` with exactly `want`.
    #[track_caller]
    fn expect_tx(&mut self, what: &str, p: &Packet, want: &Expected) -> Vec<u8> {
        let got = self.tx_frame(what, &p.build());
        assert_frame_eq(what, &got, want);
        got
    }

    /// Runs `p` (expected `XDP_TX`) and returns the outer header.
    #[track_caller]
    fn outer(&mut self, what: &str, p: &Packet) -> (Outer, Vec<u8>) {
        let got = self.tx_frame(what, &p.build());
        let o = parse_outer(&got)
            .unwrap_or_else(|| panic!("{what}: output is not an IP frame: {got:02x?}"));
        (o, got)
    }

    /// Expects `XDP_PASS` with the frame unchanged and no drop counted.
    #[track_caller]
    fn expect_pass(&mut self, what: &str, frame: &[u8]) {
        let before = self.drops();
        let out = self.run(frame);
        let after = self.drops();
        assert!(
            matches!(out.verdict, Verdict::Pass),
            "{what}: expected Pass, got {:?}; drop counters moved: {}",
            out.verdict,
            drop_delta_text(&before, &after)
        );
        assert_frame_eq(what, &out.data, &Expected::unchanged(frame));
        assert_eq!(
            before,
            after,
            "{what}: passed, but drop counters moved: {}",
            drop_delta_text(&before, &after)
        );
    }

    /// Expects `XDP_DROP` with exactly one of `reasons` counted once (and no
    /// other reason); returns the reason that was counted.
    #[track_caller]
    fn expect_drop_any(&mut self, what: &str, frame: &[u8], reasons: &[DropReason]) -> DropReason {
        let before = self.drops();
        let out = self.run(frame);
        let after = self.drops();
        let delta: Vec<(usize, u64)> = (0..before.len())
            .filter(|&i| after[i] != before[i])
            .map(|i| (i, after[i] - before[i]))
            .collect();
        let names: Vec<&str> = reasons.iter().map(|r| r.name()).collect();
        assert!(
            matches!(out.verdict, Verdict::Drop),
            "{what}: expected Drop ({names:?}), got {:?}; drop counters moved: {}",
            out.verdict,
            drop_delta_text(&before, &after)
        );
        match delta.as_slice() {
            [(i, 1)] if reasons.iter().any(|r| *r as usize == *i) => DropReason::ALL[*i],
            _ => panic!(
                "{what}: dropped, but expected one of {names:?} to count 1 and nothing else; moved: {}",
                drop_delta_text(&before, &after)
            ),
        }
    }

    #[track_caller]
    fn expect_drop(&mut self, what: &str, frame: &[u8], reason: DropReason) {
        self.expect_drop_any(what, frame, &[reason]);
    }

    /// Runs the too-big `p`, expects `XDP_TX` of exactly the path-MTU reply
    /// announcing `mtu` (`expect_pmtu_reply`), counted as `pmtu_reply`, no
    /// drop counted.
    #[track_caller]
    fn expect_pmtu(&mut self, what: &str, p: &Packet, enc: EncapParams, mtu: u32) -> Vec<u8> {
        let paths = self.paths();
        let drops = self.drops();
        let got = self.tx_frame(what, &p.build());
        assert_frame_eq(what, &got, &expect_pmtu_reply(p, enc, mtu));
        let after = self.paths();
        assert_eq!(
            after[Branch::PmtuReply as usize] - paths[Branch::PmtuReply as usize],
            1,
            "{what}: pmtu_reply did not count the reply"
        );
        assert_eq!(self.drops(), drops, "{what}: a drop counter moved");
        got
    }
}

fn drop_delta_text(before: &Drops, after: &Drops) -> String {
    let moved: Vec<String> = (0..before.len())
        .filter(|&i| after[i] != before[i])
        .map(|i| {
            format!(
                "{} +{}",
                DropReason::ALL[i].name(),
                after[i].wrapping_sub(before[i])
            )
        })
        .collect();
    if moved.is_empty() {
        "none".into()
    } else {
        moved.join(", ")
    }
}

fn fl(p: &Packet) -> u32 {
    flow_hash(&p.flow_key()) & 0xf_ffff
}

fn v4(a: IpAddr) -> Ipv4Addr {
    match a {
        IpAddr::V4(a) => a,
        IpAddr::V6(a) => panic!("expected an IPv4 address, got {a}"),
    }
}

fn v6(a: IpAddr) -> Ipv6Addr {
    match a {
        IpAddr::V6(a) => a,
        IpAddr::V4(a) => panic!("expected an IPv6 address, got {a}"),
    }
}

/// Expected IPIP frame to `backend` for a /32 source.
fn ipip(p: &Packet, backend: Ipv4Addr) -> Expected {
    expect_ipip(p, ENC, SRC4, backend)
}

/// Expected 6in6 / 4in6 frame to `backend` for a /128 source.
fn ip6(p: &Packet, backend: Ipv6Addr) -> Expected {
    expect_ip6_encap(p, ENC, SRC6, backend, fl(p))
}

// ---------------------------------------------------------------------------
// Encapsulation, byte for byte.

#[test]
#[ignore = "needs root: BPF or network namespaces (cargo xtask test runs it)"]
fn ipv4_tcp_is_ipip_encapsulated() {
    if !steer_tests::require_root() {
        return;
    }
    let mut rig = Rig::new(BASIC);
    // DSCP EF + ECT(1): the outer TOS must copy it.
    let p = tcp4(CLIENT, 40000, VIP_WEB, 80).tos(0xb9).payload_len(100);
    rig.expect_tx("IPv4 TCP, new flow", &p, &ipip(&p, EU1));
    // The same flow again (conntrack hit) and a different payload size.
    rig.expect_tx("IPv4 TCP, same flow", &p, &ipip(&p, EU1));
    let p2 = tcp4(CLIENT, 40000, VIP_WEB, 80).payload_len(0);
    rig.expect_tx("IPv4 TCP, empty payload", &p2, &ipip(&p2, EU1));
    let p3 = tcp4(CLIENT, 40001, VIP_WEB, 80).tos(0x03);
    rig.expect_tx("IPv4 TCP, ECN CE only", &p3, &ipip(&p3, EU1));
}

#[test]
#[ignore = "needs root: BPF or network namespaces (cargo xtask test runs it)"]
fn ipv4_udp_is_ipip_encapsulated() {
    if !steer_tests::require_root() {
        return;
    }
    let mut rig = Rig::new(BASIC);
    let p = udp4(CLIENT, 5353, VIP_WEB, 53).tos(0x28).payload_len(48);
    rig.expect_tx("IPv4 UDP", &p, &ipip(&p, EU1));
    let p2 = udp4(CLIENT, 5353, VIP_WEB, 53).payload_len(0);
    rig.expect_tx("IPv4 UDP, empty payload", &p2, &ipip(&p2, EU1));
}

#[test]
#[ignore = "needs root: BPF or network namespaces (cargo xtask test runs it)"]
fn ipv6_vip_is_6in6_encapsulated() {
    if !steer_tests::require_root() {
        return;
    }
    let mut rig = Rig::new(BASIC);
    let p = tcp6(CLIENT6, 40000, VIP6, 443).tos(0x2a).payload_len(200);
    rig.expect_tx("IPv6 TCP", &p, &ip6(&p, V6_1));
    rig.expect_tx("IPv6 TCP, same flow", &p, &ip6(&p, V6_1));
    let u = udp6(CLIENT6, 5353, VIP6, 53).tos(0xb8);
    rig.expect_tx("IPv6 UDP", &u, &ip6(&u, V6_1));
    // Flow labels differ per flow (the low 20 bits of each flow's hash).
    for port in 41000..41016 {
        let q = tcp6(CLIENT6, port, VIP6, 443);
        rig.expect_tx(&format!("IPv6 TCP port {port}"), &q, &ip6(&q, V6_1));
    }
}

#[test]
#[ignore = "needs root: BPF or network namespaces (cargo xtask test runs it)"]
fn ipv4_vip_with_ipv6_backend_is_4in6() {
    if !steer_tests::require_root() {
        return;
    }
    let mut rig = Rig::new(BASIC);
    let p = tcp4(CLIENT, 40000, VIP_MIXED, 443)
        .tos(0xb9)
        .payload_len(64);
    rig.expect_tx("4in6", &p, &ip6(&p, V6_1));
    for port in 41000..41008 {
        let q = tcp4(CLIENT, port, VIP_MIXED, 443);
        rig.expect_tx(&format!("4in6 port {port}"), &q, &ip6(&q, V6_1));
    }
}

#[test]
#[ignore = "needs root: BPF or network namespaces (cargo xtask test runs it)"]
fn single_vlan_tag_is_kept() {
    if !steer_tests::require_root() {
        return;
    }
    let mut rig = Rig::new(BASIC);
    let p = tcp4(CLIENT, 40000, VIP_WEB, 80).vlan(Vlan::dot1q(100));
    rig.expect_tx("802.1Q, IPIP", &p, &ipip(&p, EU1));
    let p6 = udp6(CLIENT6, 5353, VIP6, 53).vlan(Vlan::dot1q(4094));
    rig.expect_tx("802.1Q, 6in6", &p6, &ip6(&p6, V6_1));
    let m = tcp4(CLIENT, 40000, VIP_MIXED, 443).vlan(Vlan::dot1q(7));
    rig.expect_tx("802.1Q, 4in6", &m, &ip6(&m, V6_1));
}

#[test]
#[ignore = "needs root: BPF or network namespaces (cargo xtask test runs it)"]
fn double_vlan_tag_is_kept() {
    if !steer_tests::require_root() {
        return;
    }
    let mut rig = Rig::new(BASIC);
    let qinq = |p: Packet| p.vlan(Vlan::dot1ad(10)).vlan(Vlan::dot1q(20));
    let p = qinq(tcp4(CLIENT, 40000, VIP_WEB, 80).tos(0x10));
    rig.expect_tx("802.1ad + 802.1Q, IPIP", &p, &ipip(&p, EU1));
    let p6 = qinq(tcp6(CLIENT6, 40000, VIP6, 443));
    rig.expect_tx("802.1ad + 802.1Q, 6in6", &p6, &ip6(&p6, V6_1));
    let m = qinq(tcp4(CLIENT, 40000, VIP_MIXED, 443));
    rig.expect_tx("802.1ad + 802.1Q, 4in6", &m, &ip6(&m, V6_1));
    // Two 802.1Q tags (old-style QinQ) too.
    let q2 = tcp4(CLIENT, 40001, VIP_WEB, 80)
        .vlan(Vlan::dot1q(30))
        .vlan(Vlan::dot1q(31));
    rig.expect_tx("802.1Q + 802.1Q, IPIP", &q2, &ipip(&q2, EU1));
}

#[test]
#[ignore = "needs root: BPF or network namespaces (cargo xtask test runs it)"]
fn ipv4_options_are_skipped_and_kept() {
    if !steer_tests::require_root() {
        return;
    }
    let mut rig = Rig::new(BASIC);
    // IHL 6: router alert.
    let p = tcp4(CLIENT, 40000, VIP_WEB, 80).v4_options(vec![0x94, 0x04, 0x00, 0x00]);
    rig.expect_tx("IHL 6", &p, &ipip(&p, EU1));
    // IHL 8: timestamp option + NOPs.
    let mut ts = vec![0x44, 12, 5, 0];
    ts.extend_from_slice(&[0; 8]);
    let u = udp4(CLIENT, 5353, VIP_WEB, 53).v4_options(ts);
    rig.expect_tx("IHL 8", &u, &ipip(&u, EU1));
    // IHL 15: 39 NOPs and an end-of-options.
    let mut nops = vec![0x01; 39];
    nops.push(0x00);
    let m = tcp4(CLIENT, 40001, VIP_WEB, 80).v4_options(nops.clone());
    rig.expect_tx("IHL 15", &m, &ipip(&m, EU1));
    let m6 = tcp4(CLIENT, 40002, VIP_MIXED, 443).v4_options(nops);
    rig.expect_tx("IHL 15, 4in6", &m6, &ip6(&m6, V6_1));
}

#[test]
#[ignore = "needs root: BPF or network namespaces (cargo xtask test runs it)"]
fn ipv6_extension_headers_are_skipped_and_kept() {
    if !steer_tests::require_root() {
        return;
    }
    let mut rig = Rig::new(BASIC);
    let p = tcp6(CLIENT6, 40000, VIP6, 443)
        .ext(Ext::hop_by_hop())
        .ext(Ext::dest_opts());
    rig.expect_tx("hop-by-hop + destination options", &p, &ip6(&p, V6_1));
    let u = udp6(CLIENT6, 5353, VIP6, 53).ext(Ext::dest_opts());
    rig.expect_tx("destination options, UDP", &u, &ip6(&u, V6_1));
    // Four headers, the documented maximum.
    let four = tcp6(CLIENT6, 40001, VIP6, 443)
        .ext(Ext::hop_by_hop())
        .ext(Ext::dest_opts())
        .ext(Ext::routing())
        .ext(Ext::dest_opts());
    rig.expect_tx("four extension headers", &four, &ip6(&four, V6_1));
}

#[test]
#[ignore = "needs root: BPF or network namespaces (cargo xtask test runs it)"]
fn ipv6_more_than_four_extension_headers_dropped() {
    if !steer_tests::require_root() {
        return;
    }
    let mut rig = Rig::new(BASIC);
    let five = |dst| {
        tcp6(CLIENT6, 40001, dst, 443)
            .ext(Ext::hop_by_hop())
            .ext(Ext::dest_opts())
            .ext(Ext::routing())
            .ext(Ext::dest_opts())
            .ext(Ext::dest_opts())
    };
    rig.expect_drop(
        "five extension headers to a VIP",
        &five(VIP6).build(),
        DropReason::Ipv6Ext,
    );
    rig.expect_pass("five extension headers, not a VIP", &five(OTHER6).build());
}

#[test]
#[ignore = "needs root: BPF or network namespaces (cargo xtask test runs it)"]
fn ethernet_trailer_is_trimmed_before_encapsulation() {
    if !steer_tests::require_root() {
        return;
    }
    let mut rig = Rig::new(BASIC);
    // A short UDP packet padded to the 60-byte Ethernet minimum: the outer
    // length counts the IP packet only, and the padding is not sent on.
    let p = udp4(CLIENT, 5353, VIP_WEB, 53)
        .payload_len(2)
        .trailer(vec![0; 16]);
    assert_eq!(p.build().len(), 60);
    let got = rig.expect_tx("padded frame", &p, &ipip(&p, EU1));
    assert_eq!(
        got.len(),
        14 + 20 + 30,
        "Ethernet + outer IPv4 + inner IPv4/UDP"
    );

    // The MTU bounds the whole frame, not only the IP length: a 1,480-byte
    // IPv4 packet with a 20-byte trailer leaves as 14 + 1,500 bytes (with
    // the trailer it would be a 1,520-byte IP payload on a 1,500 MTU link).
    // Also behind VLAN tags, and in IPv6 (6in6, 4in6).
    let full = tcp4(CLIENT, 40000, VIP_WEB, 80)
        .payload_len(1480 - 40)
        .trailer(pattern(20));
    assert_eq!((full.ip_len(), full.build().len()), (1480, 1514));
    let got = rig.expect_tx("1480-byte IPv4 + 20-byte trailer", &full, &ipip(&full, EU1));
    assert_eq!(got.len(), 14 + 1500);
    let tagged = tcp4(CLIENT, 40001, VIP_WEB, 80)
        .payload_len(1480 - 40)
        .vlan(Vlan::dot1q(7))
        .trailer(pattern(3));
    let got = rig.expect_tx("tagged, 3-byte trailer", &tagged, &ipip(&tagged, EU1));
    assert_eq!(got.len(), 18 + 1500);
    let full6 = tcp6(CLIENT6, 40000, VIP6, 443)
        .payload_len(1460 - 60)
        .trailer(pattern(40));
    let got = rig.expect_tx("6in6 + 40-byte trailer", &full6, &ip6(&full6, V6_1));
    assert_eq!(got.len(), 14 + 1500);
    let full46 = tcp4(CLIENT, 40000, VIP_MIXED, 443)
        .payload_len(1460 - 40)
        .trailer(pattern(1));
    let got = rig.expect_tx("4in6 + 1-byte trailer", &full46, &ip6(&full46, V6_1));
    assert_eq!(got.len(), 14 + 1500);
}

// ---------------------------------------------------------------------------
// What is not for us passes untouched.

#[test]
#[ignore = "needs root: BPF or network namespaces (cargo xtask test runs it)"]
fn non_vip_traffic_passes_unchanged() {
    if !steer_tests::require_root() {
        return;
    }
    let mut rig = Rig::new(BASIC);
    let paths0 = rig.paths();
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("other address", tcp4(CLIENT, 40000, OTHER4, 80).build()),
        ("other port", tcp4(CLIENT, 40000, VIP_WEB, 8080).build()),
        (
            "other protocol (UDP to a TCP VIP port)",
            udp4(CLIENT, 40000, VIP_WEB, 80).build(),
        ),
        (
            "other protocol (GRE to a VIP address)",
            other_proto(tcp4(CLIENT, 0, VIP_WEB, 0), 47),
        ),
        (
            "TCP to a UDP any-port VIP",
            tcp4(CLIENT, 40000, VIP_ANY, 53).build(),
        ),
        ("ARP request for a VIP", arp_request(CLIENT, VIP_WEB)),
        ("ICMP echo to a VIP", echo4(CLIENT, VIP_WEB).build()),
        ("ICMPv6 echo to a VIP", echo6(CLIENT6, VIP6).build()),
        (
            "IPv6 other address",
            tcp6(CLIENT6, 40000, OTHER6, 443).build(),
        ),
        ("IPv6 other port", tcp6(CLIENT6, 40000, VIP6, 80).build()),
        (
            "IPv6 other protocol",
            udp6(CLIENT6, 40000, VIP6, 443).build(),
        ),
        (
            "ICMP frag-needed to a non-VIP",
            frag_needed4(ROUTER4, OTHER4, 1400, quoted_v4(OTHER4, 80, CLIENT, 40000)).build(),
        ),
        (
            "VLAN, other address",
            tcp4(CLIENT, 40000, OTHER4, 80).vlan(Vlan::dot1q(5)).build(),
        ),
        ("unknown ethertype", {
            let mut f = tcp4(CLIENT, 40000, VIP_WEB, 80).build();
            f[12..14].copy_from_slice(&[0x88, 0xb5]);
            f
        }),
    ];
    for (what, frame) in &cases {
        rig.expect_pass(what, frame);
    }
    let paths1 = rig.paths();
    assert_eq!(
        paths1[Branch::Pass as usize] - paths0[Branch::Pass as usize],
        cases.len() as u64,
        "path counter `pass`"
    );
    for i in [Branch::NewFlow, Branch::CtHit, Branch::Drop] {
        assert_eq!(paths1[i as usize], paths0[i as usize], "path {}", i.name());
    }
    for s in ["web", "dns", "web6", "dns6", "anyport"] {
        assert_eq!(rig.service(s), Counters::default(), "counters of {s}");
    }
}

/// Two TCP ports of `vip` whose VIP keys share a `VIP_SLOTS` slot (the
/// program's direct-mapped copy of `VIPS`), found by search.
fn ports_sharing_a_vip_slot(vip: Ipv4Addr) -> (u16, u16) {
    use steer_common::{port_to_wire, vip_slot_index, VipKey, FAMILY_V4, PROTO_TCP};
    let key = |port: u16| {
        let mut addr = [0u8; 16];
        addr[..4].copy_from_slice(&vip.octets());
        VipKey {
            addr,
            port: port_to_wire(port),
            proto: PROTO_TCP,
            family: FAMILY_V4,
        }
    };
    let first = 1000;
    let want = vip_slot_index(&key(first));
    let second = (first + 1..u16::MAX)
        .find(|p| vip_slot_index(&key(*p)) == want)
        .expect("8,192 slots: some port of 64,000 shares one");
    (first, second)
}

#[test]
#[ignore = "needs root: BPF or network namespaces (cargo xtask test runs it)"]
fn vips_sharing_a_slot_are_both_served_and_a_removed_one_is_not() {
    if !steer_tests::require_root() {
        return;
    }
    // Two services whose keys land in one `VIP_SLOTS` slot: one holds the
    // slot, the other is found in `VIPS`. Whichever is removed, its packets
    // pass from then on (the slot is emptied before the VIP leaves `VIPS`;
    // a stale slot would forward them) and the other's keep their backend.
    const VIP: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 80);
    let (pa, pb) = ports_sharing_a_vip_slot(VIP);
    let service = |name: &str, port: u16, backend: &str| {
        format!(
            "\n[[services]]\nname = \"{name}\"\nvip = \"{VIP}\"\nport = {port}\n\
             protocol = \"tcp\"\nbackends = [\"{backend}\"]\n"
        )
    };
    let a = service("slot-a", pa, "eu-1");
    let b = service("slot-b", pb, "eu-2");
    let both = format!("{BASIC}{a}{b}");
    let to_a = tcp4(CLIENT, 41000, VIP, pa).syn();
    let to_b = tcp4(CLIENT, 41000, VIP, pb).syn();
    for (gone, kept, only_kept) in [
        ("slot-a", &to_b, format!("{BASIC}{b}")),
        ("slot-b", &to_a, format!("{BASIC}{a}")),
    ] {
        let mut rig = Rig::new(&both);
        rig.expect_to("slot-a, sharing a slot", &to_a, "eu-1");
        rig.expect_to("slot-b, sharing a slot", &to_b, "eu-2");
        rig.reapply(&only_kept);
        let gone_pkt = if gone == "slot-a" { &to_a } else { &to_b };
        rig.expect_pass(&format!("{gone} removed"), &gone_pkt.build());
        let kept_backend = if gone == "slot-a" { "eu-2" } else { "eu-1" };
        rig.expect_to(&format!("the other after {gone} left"), kept, kept_backend);
        // Back again: both served.
        rig.reapply(&both);
        rig.expect_to("slot-a, back", &to_a, "eu-1");
        rig.expect_to("slot-b, back", &to_b, "eu-2");
    }
}

/// `p` with its transport replaced by 24 bytes of protocol `proto`.
fn other_proto(p: Packet, proto: u8) -> Vec<u8> {
    let mut p = p;
    p.transport = Transport::Raw(proto);
    p.payload = pattern(24);
    p.build()
}

#[test]
#[ignore = "needs root: BPF or network namespaces (cargo xtask test runs it)"]
fn port_zero_vip_matches_any_port() {
    if !steer_tests::require_root() {
        return;
    }
    let mut rig = Rig::new(BASIC);
    for dport in [1u16, 52, 54, 123, 8080, 65535] {
        let p = udp4(CLIENT, 40000, VIP_ANY, dport);
        rig.expect_tx(&format!("any-port VIP, port {dport}"), &p, &ipip(&p, EU2));
    }
    // Port 53 has its own service: the exact match wins.
    let p = udp4(CLIENT, 40000, VIP_ANY, 53);
    rig.expect_tx("exact port before port 0", &p, &ipip(&p, EU3));
    assert_eq!(rig.service("anyport").packets, 6);
    assert_eq!(rig.service("dns30").packets, 1);
}

#[test]
#[ignore = "needs root: BPF or network namespaces (cargo xtask test runs it)"]
fn service_by_region_uses_region_backends() {
    if !steer_tests::require_root() {
        return;
    }
    let mut rig = Rig::new(BASIC);
    for port in 40000..40032 {
        let p = udp4(CLIENT, port, VIP_REGIONAL, 80);
        let (o, got) = rig.outer("regional service", &p);
        let dst = v4(o.dst());
        assert!(
            dst == US1 || dst == US2,
            "region us has us-1 and us-2, got {dst}"
        );
        assert_frame_eq("regional service", &got, &ipip(&p, dst));
    }
}

// ---------------------------------------------------------------------------
// Truncated and malformed packets.

#[test]
#[ignore = "needs root: BPF or network namespaces (cargo xtask test runs it)"]
fn truncated_ethernet_passes() {
    if !steer_tests::require_root() {
        return;
    }
    let mut rig = Rig::new(BASIC);
    let full = tcp4(CLIENT, 40000, VIP_WEB, 80).build();
    for len in [1usize, 6, 12, 13] {
        let frame = &full[..len];
        // The kernel's BPF_PROG_TEST_RUN may refuse frames shorter than an
        // Ethernet header (-EINVAL) before the program sees them.
        match rig.dp.run(frame) {
            Ok(out) => {
                assert!(
                    matches!(out.verdict, Verdict::Pass),
                    "{len}-byte frame: expected Pass, got {:?}",
                    out.verdict
                );
                assert_frame_eq(
                    &format!("{len}-byte frame"),
                    &out.data,
                    &Expected::unchanged(frame),
                );
            }
            Err(e) => eprintln!("note: the kernel refused a {len}-byte frame: {e:#}"),
        }
    }
    // A complete Ethernet header and nothing else.
    rig.expect_pass("Ethernet header only (IPv4)", &full[..14]);
    let full6 = tcp6(CLIENT6, 40000, VIP6, 443).build();
    rig.expect_pass("Ethernet header only (IPv6)", &full6[..14]);
}

#[test]
#[ignore = "needs root: BPF or network namespaces (cargo xtask test runs it)"]
fn truncated_vlan_tag_passes() {
    if !steer_tests::require_root() {
        return;
    }
    let mut rig = Rig::new(BASIC);
    let one = tcp4(CLIENT, 40000, VIP_WEB, 80)
        .vlan(Vlan::dot1q(100))
        .build();
    for len in [15usize, 16, 17] {
        rig.expect_pass(&format!("802.1Q tag cut at {len} bytes"), &one[..len]);
    }
    rig.expect_pass("802.1Q tag, no IP", &one[..18]);
    let two = tcp4(CLIENT, 40000, VIP_WEB, 80)
        .vlan(Vlan::dot1ad(10))
        .vlan(Vlan::dot1q(20))
        .build();
    for len in [16usize, 19, 21] {
        rig.expect_pass(&format!("double tag cut at {len} bytes"), &two[..len]);
    }
}

#[test]
#[ignore = "needs root: BPF or network namespaces (cargo xtask test runs it)"]
fn truncated_ipv4_header_before_destination_passes() {
    if !steer_tests::require_root() {
        return;
    }
    let mut rig = Rig::new(BASIC);
    let p = tcp4(CLIENT, 40000, VIP_WEB, 80);
    let f = p.build();
    // The destination address is bytes 16..20 of the IP header.
    for keep in [1usize, 10, 16, 19] {
        rig.expect_pass(&format!("IPv4 header cut at {keep} bytes"), &f[..14 + keep]);
    }
}

#[test]
#[ignore = "needs root: BPF or network namespaces (cargo xtask test runs it)"]
fn truncated_ipv4_header_after_destination_dropped_for_vip() {
    if !steer_tests::require_root() {
        return;
    }
    let mut rig = Rig::new(BASIC);
    for dst in [VIP_WEB, OTHER4] {
        let p = tcp4(CLIENT, 40000, dst, 80)
            .v4_options(vec![0x01, 0x01, 0x01, 0x00, 0x01, 0x01, 0x01, 0x00]);
        for keep in [20usize, 22, 27] {
            // IHL 7: the frame ends inside the options; the total length
            // field agrees with what is left.
            let f = cut_ip(&p, keep);
            let what = format!("IPv4 (IHL 7) cut at {keep} bytes, to {dst}");
            if dst == VIP_WEB {
                // The total length (what is left) is below IHL*4: the header
                // contradicts itself.
                rig.expect_drop(&what, &f, DropReason::MalformedL3);
            } else {
                rig.expect_pass(&what, &f);
            }
        }
    }
}

#[test]
#[ignore = "needs root: BPF or network namespaces (cargo xtask test runs it)"]
fn ipv4_ihl_beyond_frame_dropped_for_vip() {
    if !steer_tests::require_root() {
        return;
    }
    let mut rig = Rig::new(BASIC);
    for dst in [VIP_WEB, OTHER4] {
        for ihl in [7u8, 15] {
            // A 20-byte header + 4 bytes of TCP (24 bytes in the frame),
            // claiming IHL `ihl` (28 or 60 bytes): the header ends beyond
            // the frame. Total length either as much as the frame holds, or
            // what the packet would have been.
            for total in [24u16, u16::from(ihl) * 4 + 20] {
                let mut f = cut_ip(&tcp4(CLIENT, 40000, dst, 80), 24);
                f[14] = 0x40 | ihl;
                set_ipv4_total_len(&mut f, 14, total);
                let what =
                    format!("IHL {ihl} in a 24-byte IP packet, total length {total}, to {dst}");
                if dst == VIP_WEB {
                    // A total length below IHL*4 contradicts the header
                    // (malformed); a consistent header that the frame does
                    // not hold is truncated (see steer_common::drop).
                    let want = if usize::from(total) < usize::from(ihl) * 4 {
                        DropReason::MalformedL3
                    } else {
                        DropReason::TruncatedL3
                    };
                    rig.expect_drop(&what, &f, want);
                } else {
                    rig.expect_pass(&what, &f);
                }
            }
        }
    }
}

#[test]
#[ignore = "needs root: BPF or network namespaces (cargo xtask test runs it)"]
fn ipv4_total_length_beyond_frame_dropped_for_vip() {
    if !steer_tests::require_root() {
        return;
    }
    let mut rig = Rig::new(BASIC);
    for dst in [VIP_WEB, OTHER4] {
        let p = tcp4(CLIENT, 40000, dst, 80);
        let mut f = p.build();
        set_ipv4_total_len(&mut f, 14, (p.ip_len() + 1) as u16);
        let what = format!("IPv4 total length 1 beyond the frame, to {dst}");
        if dst == VIP_WEB {
            rig.expect_drop(&what, &f, DropReason::TruncatedL3);
        } else {
            rig.expect_pass(&what, &f);
        }
        let mut g = p.build();
        set_ipv4_total_len(&mut g, 14, 1500);
        let what = format!("IPv4 total length 1500 in a short frame, to {dst}");
        if dst == VIP_WEB {
            rig.expect_drop(&what, &g, DropReason::TruncatedL3);
        } else {
            rig.expect_pass(&what, &g);
        }
    }
}

#[test]
#[ignore = "needs root: BPF or network namespaces (cargo xtask test runs it)"]
fn ipv4_bad_version_ihl_or_length_dropped_for_vip() {
    if !steer_tests::require_root() {
        return;
    }
    let mut rig = Rig::new(BASIC);
    for dst in [VIP_WEB, OTHER4] {
        let p = tcp4(CLIENT, 40000, dst, 80);
        let mut bad = Vec::new();
        let mut f = p.build();
        f[14] = 0x44; // IHL 4
        fix_ipv4_checksum(&mut f, 14);
        bad.push(("IHL 4", f));
        let mut f = p.build();
        f[14] = 0x55; // version 5 in an IPv4 ethertype
        fix_ipv4_checksum(&mut f, 14);
        bad.push(("version 5", f));
        let mut f = p.build();
        set_ipv4_total_len(&mut f, 14, 19); // shorter than the header
        bad.push(("total length 19", f));
        for (what, f) in bad {
            let what = format!("{what}, to {dst}");
            if dst == VIP_WEB {
                rig.expect_drop(&what, &f, DropReason::MalformedL3);
            } else {
                rig.expect_pass(&what, &f);
            }
        }
    }
}

#[test]
#[ignore = "needs root: BPF or network namespaces (cargo xtask test runs it)"]
fn truncated_transport_header_dropped_for_vip() {
    if !steer_tests::require_root() {
        return;
    }
    let mut rig = Rig::new(BASIC);
    let cases: Vec<(Packet, Vec<usize>)> = vec![
        (tcp4(CLIENT, 40000, VIP_WEB, 80), vec![20, 22, 30, 39]),
        (udp4(CLIENT, 5353, VIP_WEB, 53), vec![20, 22, 27]),
        (tcp6(CLIENT6, 40000, VIP6, 443), vec![40, 43, 50, 59]),
        (udp6(CLIENT6, 5353, VIP6, 53), vec![40, 47]),
        (
            tcp6(CLIENT6, 40000, VIP6, 443).ext(Ext::dest_opts()),
            vec![56, 66],
        ),
    ];
    for (p, keeps) in cases {
        for keep in keeps {
            let what = format!("{:?} cut to {keep} IP bytes", p.transport);
            rig.expect_drop(&what, &cut_ip(&p, keep), DropReason::TruncatedL4);
            // The same packet to an address without VIPs passes.
            let mut q = p.clone();
            match &mut q.net {
                Net::V4 { dst, .. } => *dst = OTHER4.octets(),
                Net::V6 { dst, .. } => *dst = OTHER6.octets(),
            }
            rig.expect_pass(&format!("{what}, not a VIP"), &cut_ip(&q, keep));
        }
    }
}

/// Frames written as hex (whitespace ignored), for byte-exact replays.
fn unhex(s: &str) -> Vec<u8> {
    let digits: Vec<u8> = s.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
    digits
        .chunks(2)
        .map(|d| {
            let d = std::str::from_utf8(d).expect("ASCII hex");
            u8::from_str_radix(d, 16).unwrap_or_else(|_| panic!("{d:?} is not a hex byte"))
        })
        .collect()
}

/// Frames the data-path fuzzer (tests/fuzz.rs, seed 0x574345520001) found
/// transmitted although their TCP/UDP header contradicts the IP packet, or
/// their IPv6 extension chain is invalid. Replayed byte for byte: each must
/// be dropped with its reason, and the same header to a foreign address
/// passed untouched.
#[test]
#[ignore = "needs root: BPF or network namespaces (cargo xtask test runs it)"]
fn fuzzer_found_malformed_headers_are_dropped() {
    if !steer_tests::require_root() {
        return;
    }
    let mut rig = Rig::new(BASIC);
    let cases: [(&str, &str, DropReason); 6] = [
        (
            "TCP data offset 0, to web (203.0.113.10:80)",
            "0200000000010200000000aa080045000048123440003d06c536c6336407cb00
             710a9c40005001020304111122220002faf062a500005a5d544f4679706b6265
             1c170e0138332a2d24dfd6c9c0fbf2f5ece79e918883eeeeeeeeeeeeeeeeeeee
             eeee",
            DropReason::TruncatedL4,
        ),
        (
            "TCP data offset 6 in a 20-byte segment, to mixed (203.0.113.20:443)",
            "0200000000010200000000aa080045000028123440003d06c54cc6336407cb00
             71149c4401bb01020304111122226002faf079530000",
            DropReason::TruncatedL4,
        ),
        (
            "UDP length 0 over IPv6, to dns6 ([2001:db8:a::10]:53)",
            "0200000000010200000000aa86dd600123450034113d20010db8000c00000000
             00000000000720010db8000a000000000000000000109c42003500000c0d1111
             22225002faf059cd00005a5d546f4679706b62651c170e0138332a2d24dfd6c9
             c0fbf2f5ece79e918883eeeeeeeeeeeeeeeeeeeeeeeef3e07ecc72021e9e28aa
             beefbce60e9574d9a4dd3de85ff854d59201847ae0612b938c88d909681ac2d5
             d15c213c16f85483c698cebe50ba3aad1ef6",
            DropReason::TruncatedL4,
        ),
        (
            "UDP length 2, to anyport (203.0.113.30:9999)",
            "0200000000010200000000ae08004500001c123440003d11c543c6336407cb00
             711e9c45270f0002d62f",
            DropReason::TruncatedL4,
        ),
        (
            "UDP length 44 in a 40-byte IP payload, to dns (203.0.113.10:53)",
            "0200000000010200000000aa08004500003c123440003d11c537c6336407cb00
             710a00280035002c5a5d546e4f7679706b62651c170e0138332a2d24acdd33ca
             dfd6c9c0fbf2f5ece79e918883",
            DropReason::TruncatedL4,
        ),
        (
            "IPv6 hop-by-hop header after a hop-by-hop header, to web6 ([2001:db8:a::10]:443)",
            "0200000000010200000000aa86dd60012345003c003d20010db8000c00000000
             000000bf38ba20010db8000a0000000000000000001000000000000000990600
             0035000001009c4e01bb0a0b0c0d111122225002faf0593800005a5d544f4679
             706b62651c170e0138332a2d24dfd6c9c0fbf2f5ece79e918883000000000000
             0000000000000000000000000000000000000000000000000000000000000000
             000000000000000000000000000000",
            DropReason::Ipv6Ext,
        ),
    ];
    for (what, text, reason) in cases {
        let f = unhex(text);
        rig.expect_drop(what, &f, reason);
        // The same frame to an address that carries no VIP passes.
        let mut q = f.clone();
        if u16::from_be_bytes([q[12], q[13]]) == ETH_IPV4 {
            q[30..34].copy_from_slice(&OTHER4.octets());
            fix_ipv4_checksum(&mut q, 14);
        } else {
            q[38..54].copy_from_slice(&OTHER6.octets());
        }
        rig.expect_pass(&format!("{what}, not a VIP"), &q);
    }
}

/// The limits of the L4 checks: a TCP data offset that ends exactly at the
/// end of the IP packet, and a UDP length equal to or shorter than the IP
/// payload (bytes after the datagram are allowed), are transmitted as they
/// are.
#[test]
#[ignore = "needs root: BPF or network namespaces (cargo xtask test runs it)"]
fn l4_lengths_at_their_limits_are_transmitted() {
    if !steer_tests::require_root() {
        return;
    }
    let mut rig = Rig::new(BASIC);
    // 20 + 40 bytes of TCP: data offset 15 covers the whole segment.
    let p = tcp4(CLIENT, 40100, VIP_WEB, 80).payload_len(40);
    let mut f = p.build();
    f[34 + 12] = 0xf0;
    let got = rig.tx_frame("TCP data offset 15 ending at the packet's end", &f);
    assert_eq!(&got[34..], &f[14..], "inner packet changed");
    assert_eq!(parse_outer(&got).map(|o| o.dst()), Some(IpAddr::V4(EU1)));
    // UDP length 8 (header only) in a datagram with 32 bytes after it.
    let u = udp6(CLIENT6, 5353, VIP6, 53);
    let mut f = u.build();
    f[54 + 4..54 + 6].copy_from_slice(&8u16.to_be_bytes());
    let got = rig.tx_frame("UDP length 8, shorter than the IP payload", &f);
    assert_eq!(&got[54..], &f[14..], "inner packet changed");
    assert_eq!(parse_outer(&got).map(|o| o.dst()), Some(IpAddr::V6(V6_1)));
}

#[test]
#[ignore = "needs root: BPF or network namespaces (cargo xtask test runs it)"]
fn truncated_ipv6_header_passes() {
    if !steer_tests::require_root() {
        return;
    }
    let mut rig = Rig::new(BASIC);
    // The destination is the last field of the fixed header: a cut header
    // never shows it, so the packet is passed.
    let f = tcp6(CLIENT6, 40000, VIP6, 443).build();
    for keep in [1usize, 8, 24, 30, 39] {
        rig.expect_pass(&format!("IPv6 header cut at {keep} bytes"), &f[..14 + keep]);
    }
}

#[test]
#[ignore = "needs root: BPF or network namespaces (cargo xtask test runs it)"]
fn truncated_ipv6_extension_header_dropped_for_vip() {
    if !steer_tests::require_root() {
        return;
    }
    let mut rig = Rig::new(BASIC);
    for dst in [VIP6, OTHER6] {
        let p = tcp6(CLIENT6, 40000, dst, 443)
            .ext(Ext::hop_by_hop())
            .ext(Ext::dest_opts());
        // Inside the hop-by-hop header, inside the destination options.
        for keep in [41usize, 44, 47, 50, 63] {
            let f = cut_ip(&p, keep);
            let what = format!("IPv6 extension header cut at {keep} bytes, to {dst}");
            if dst == VIP6 {
                rig.expect_drop(&what, &f, DropReason::Ipv6Ext);
            } else {
                rig.expect_pass(&what, &f);
            }
        }
    }
}

#[test]
#[ignore = "needs root: BPF or network namespaces (cargo xtask test runs it)"]
fn ipv6_payload_length_beyond_frame_dropped_for_vip() {
    if !steer_tests::require_root() {
        return;
    }
    let mut rig = Rig::new(BASIC);
    for dst in [VIP6, OTHER6] {
        let p = tcp6(CLIENT6, 40000, dst, 443);
        let mut f = p.build();
        set_ipv6_payload_len(&mut f, 14, (p.ip_len() - 40 + 1) as u16);
        let what = format!("IPv6 payload length 1 beyond the frame, to {dst}");
        if dst == VIP6 {
            rig.expect_drop(&what, &f, DropReason::TruncatedL3);
        } else {
            rig.expect_pass(&what, &f);
        }
    }
}

// ---------------------------------------------------------------------------
// Fragments.

#[test]
#[ignore = "needs root: BPF or network namespaces (cargo xtask test runs it)"]
fn ipv4_fragments_to_vip_dropped() {
    if !steer_tests::require_root() {
        return;
    }
    let mut rig = Rig::new(BASIC);
    let first = tcp4(CLIENT, 40000, VIP_WEB, 80)
        .payload_len(1000)
        .v4_fragment(true, 0);
    rig.expect_drop("first fragment (MF)", &first.build(), DropReason::Fragment);
    let udp_first = udp4(CLIENT, 5353, VIP_WEB, 53)
        .payload_len(600)
        .v4_fragment(true, 0);
    rig.expect_drop(
        "first UDP fragment (MF)",
        &udp_first.build(),
        DropReason::Fragment,
    );
    // A later fragment: offset 1480 bytes, no MF; its payload is not a TCP
    // header, but a header-shaped one must not fool the program either.
    let later = tcp4(CLIENT, 40000, VIP_WEB, 80)
        .payload_len(400)
        .v4_fragment(false, 185);
    rig.expect_drop(
        "last fragment (offset 185)",
        &later.build(),
        DropReason::Fragment,
    );
    let middle = tcp4(CLIENT, 40000, VIP_WEB, 80)
        .payload_len(400)
        .v4_fragment(true, 185);
    rig.expect_drop("middle fragment", &middle.build(), DropReason::Fragment);
    // To a VIP address on a port without a service: still a VIP address.
    let other_port = tcp4(CLIENT, 40000, VIP_WEB, 8080).v4_fragment(true, 0);
    rig.expect_drop(
        "fragment, VIP address, other port",
        &other_port.build(),
        DropReason::Fragment,
    );
    // Not a VIP address: passed.
    let not_vip = tcp4(CLIENT, 40000, OTHER4, 80).v4_fragment(true, 0);
    rig.expect_pass("fragment to a non-VIP", &not_vip.build());
    let p = rig.paths();
    assert_eq!(
        p[Branch::NewFlow as usize] + p[Branch::CtHit as usize],
        0,
        "no fragment may reach selection"
    );
    assert_eq!(rig.service("web").packets, 0);
    assert_eq!(rig.backend("web", "eu-1").packets, 0);
}

#[test]
#[ignore = "needs root: BPF or network namespaces (cargo xtask test runs it)"]
fn ipv6_fragments_to_vip_dropped() {
    if !steer_tests::require_root() {
        return;
    }
    let mut rig = Rig::new(BASIC);
    let frag = |dst, offset, more| {
        tcp6(CLIENT6, 40000, dst, 443).ext(Ext::Fragment {
            offset,
            more,
            ident: 0xdead_beef,
        })
    };
    rig.expect_drop(
        "IPv6 first fragment",
        &frag(VIP6, 0, true).build(),
        DropReason::Fragment,
    );
    rig.expect_drop(
        "IPv6 later fragment",
        &frag(VIP6, 181, false).build(),
        DropReason::Fragment,
    );
    let after_hbh = tcp6(CLIENT6, 40000, VIP6, 443)
        .ext(Ext::hop_by_hop())
        .ext(Ext::Fragment {
            offset: 0,
            more: true,
            ident: 1,
        });
    rig.expect_drop(
        "IPv6 fragment after hop-by-hop",
        &after_hbh.build(),
        DropReason::Fragment,
    );
    rig.expect_pass("IPv6 fragment to a non-VIP", &frag(OTHER6, 0, true).build());
    let p = rig.paths();
    assert_eq!(
        p[Branch::NewFlow as usize] + p[Branch::CtHit as usize],
        0,
        "no fragment may reach selection"
    );
}

// ---------------------------------------------------------------------------
// ICMP errors follow the flow they quote.

/// The first 28 bytes (IP header + 8) of a packet `src:sport -> dst:dport`
/// of 1500 bytes, as a router quotes it.
fn quoted_v4(src: Ipv4Addr, sport: u16, dst: Ipv4Addr, dport: u16) -> Vec<u8> {
    tcp4(src, sport, dst, dport).payload_len(1460).ip_packet()[..28].to_vec()
}

/// An IPv6 packet's first 40 + 20 + 16 bytes.
fn quoted_v6(src: Ipv6Addr, sport: u16, dst: Ipv6Addr, dport: u16) -> Vec<u8> {
    tcp6(src, sport, dst, dport).payload_len(1440).ip_packet()[..76].to_vec()
}

#[test]
#[ignore = "needs root: BPF or network namespaces (cargo xtask test runs it)"]
fn icmp_frag_needed_goes_to_the_flows_backend() {
    if !steer_tests::require_root() {
        return;
    }
    let mut rig = Rig::new(BASIC);
    let mut seen = BTreeSet::new();
    let icmp0 = rig.paths()[Branch::IcmpError as usize];
    let n = 64u16;
    for i in 0..n {
        let port = 30000 + i * 7;
        let flow = tcp4(CLIENT, port, VIP_POOL, 80).payload_len(100);
        let (o, got) = rig.outer("pool flow", &flow);
        let be = v4(o.dst());
        assert_frame_eq("pool flow", &got, &ipip(&flow, be));
        seen.insert(be);
        let icmp = frag_needed4(
            ROUTER4,
            VIP_POOL,
            1400,
            quoted_v4(VIP_POOL, 80, CLIENT, port),
        )
        .tos(0xc0);
        rig.expect_tx(
            &format!("frag-needed for client port {port} (flow went to {be})"),
            &icmp,
            &ipip(&icmp, be),
        );
    }
    assert!(
        seen.len() > 1,
        "all flows went to {seen:?}: the test proves nothing"
    );
    assert_eq!(
        rig.paths()[Branch::IcmpError as usize] - icmp0,
        u64::from(n),
        "path counter icmp_error"
    );
    // An error for a flow the program has not seen is hashed like the flow,
    // so it goes where the flow will go.
    for i in 0..16u16 {
        let port = 50000 + i;
        let icmp = frag_needed4(
            ROUTER4,
            VIP_POOL,
            1400,
            quoted_v4(VIP_POOL, 80, CLIENT, port),
        );
        let (o, got) = rig.outer("frag-needed before the flow", &icmp);
        let be = v4(o.dst());
        assert_frame_eq("frag-needed before the flow", &got, &ipip(&icmp, be));
        let flow = tcp4(CLIENT, port, VIP_POOL, 80);
        rig.expect_tx(
            &format!("flow after its frag-needed, port {port} (ICMP went to {be})"),
            &flow,
            &ipip(&flow, be),
        );
    }
}

#[test]
#[ignore = "needs root: BPF or network namespaces (cargo xtask test runs it)"]
fn icmp_frag_needed_for_a_client_affinity_vip() {
    if !steer_tests::require_root() {
        return;
    }
    let mut rig = Rig::new(BASIC);
    let mut seen = BTreeSet::new();
    for c in 0..24u32 {
        let client = client_n(c);
        let flow = tcp4(client, 40000, VIP_STICKY, 443);
        let (o, _) = rig.outer("sticky flow", &flow);
        let be = v4(o.dst());
        seen.insert(be);
        // An error quoting another port of the same client: same backend.
        let icmp = frag_needed4(
            ROUTER4,
            VIP_STICKY,
            1400,
            quoted_v4(VIP_STICKY, 443, client, 40999),
        );
        rig.expect_tx(
            &format!("frag-needed for client {client} (its flows go to {be})"),
            &icmp,
            &ipip(&icmp, be),
        );
    }
    assert!(seen.len() > 1, "all clients went to {seen:?}");
}

#[test]
#[ignore = "needs root: BPF or network namespaces (cargo xtask test runs it)"]
fn icmpv6_packet_too_big_goes_to_the_flows_backend() {
    if !steer_tests::require_root() {
        return;
    }
    let mut rig = Rig::new(BASIC);
    let mut seen = BTreeSet::new();
    for i in 0..64u16 {
        let port = 30000 + i * 7;
        let flow = tcp6(CLIENT6, port, VIP6_POOL, 80);
        let (o, got) = rig.outer("pool6 flow", &flow);
        let be = v6(o.dst());
        assert!(POOL6_BACKENDS.contains(&backend_name(be.into())));
        assert_frame_eq("pool6 flow", &got, &ip6(&flow, be));
        seen.insert(be);
        let ptb = packet_too_big6(
            ROUTER6,
            VIP6_POOL,
            1280,
            quoted_v6(VIP6_POOL, 80, CLIENT6, port),
        );
        // The quoted header reversed is the flow's key: same hash, so the
        // same flow label as the flow's own packets.
        let want = expect_ip6_encap(&ptb, ENC, SRC6, be, fl(&flow));
        rig.expect_tx(
            &format!("packet-too-big for client port {port} (flow went to {be})"),
            &ptb,
            &want,
        );
    }
    assert!(
        seen.len() > 1,
        "all flows went to {seen:?}: the test proves nothing"
    );
}

#[test]
#[ignore = "needs root: BPF or network namespaces (cargo xtask test runs it)"]
fn icmp_error_with_unusable_quote_dropped() {
    if !steer_tests::require_root() {
        return;
    }
    let mut rig = Rig::new(BASIC);
    // Only 12 bytes of the quoted IP header.
    let mut q = quoted_v4(VIP_POOL, 80, CLIENT, 40000);
    q.truncate(12);
    let icmp = frag_needed4(ROUTER4, VIP_POOL, 1400, q);
    rig.expect_drop(
        "frag-needed quoting 12 bytes",
        &icmp.build(),
        DropReason::BadIcmp,
    );
    let mut q6 = quoted_v6(VIP6_POOL, 80, CLIENT6, 40000);
    q6.truncate(30);
    let ptb = packet_too_big6(ROUTER6, VIP6_POOL, 1280, q6);
    rig.expect_drop(
        "packet-too-big quoting 30 bytes",
        &ptb.build(),
        DropReason::BadIcmp,
    );
}

// ---------------------------------------------------------------------------
// Backend changes: drain, down, empty table.

/// Finds a pool flow (client port) and its backend.
fn pool_flow(rig: &mut Rig, port: u16) -> (Packet, Ipv4Addr) {
    let flow = tcp4(CLIENT, port, VIP_POOL, 80);
    let (o, got) = rig.outer("pool flow", &flow);
    let be = v4(o.dst());
    assert_frame_eq("pool flow", &got, &ipip(&flow, be));
    (flow, be)
}

#[test]
#[ignore = "needs root: BPF or network namespaces (cargo xtask test runs it)"]
fn drained_backend_keeps_established_flows() {
    if !steer_tests::require_root() {
        return;
    }
    let mut rig = Rig::new(BASIC);
    let (flow, a) = pool_flow(&mut rig, 40000);
    let a_name = backend_name(a.into());
    let marker = format!("weight = 100 # weight:{a_name}");
    let drained = BASIC.replace(&marker, &format!("weight = 0 # weight:{a_name}"));
    assert_ne!(drained, BASIC, "fixture marker {marker:?} not found");
    rig.reapply(&drained);

    let hits0 = rig.paths()[Branch::CtHit as usize];
    let a0 = rig.backend("pool", a_name);
    for _ in 0..3 {
        rig.expect_tx(
            &format!("established flow after draining its backend {a_name}"),
            &flow,
            &ipip(&flow, a),
        );
    }
    assert_eq!(
        rig.paths()[Branch::CtHit as usize] - hits0,
        3,
        "conntrack hits"
    );
    let a1 = rig.backend("pool", a_name);
    assert_eq!(a1.packets - a0.packets, 3, "{a_name} packets after drain");
    assert_eq!(a1.new_flows, a0.new_flows, "{a_name} new flows after drain");

    let mut seen = BTreeMap::new();
    for i in 0..200u32 {
        let p = tcp4(client_n(i), 50000 + i as u16, VIP_POOL, 80);
        let (o, got) = rig.outer("new flow after drain", &p);
        let be = v4(o.dst());
        assert_ne!(be, a, "new flow {i} went to the drained backend {a_name}");
        assert_frame_eq("new flow after drain", &got, &ipip(&p, be));
        *seen.entry(be).or_insert(0) += 1;
    }
    assert_eq!(
        seen.len(),
        2,
        "new flows should spread over the two others: {seen:?}"
    );
}

#[test]
#[ignore = "needs root: BPF or network namespaces (cargo xtask test runs it)"]
fn backend_marked_down_forces_reselection() {
    if !steer_tests::require_root() {
        return;
    }
    let mut rig = Rig::new(BASIC);
    let (flow, a) = pool_flow(&mut rig, 40000);
    let a_name = backend_name(a.into());
    rig.expect_tx("established flow", &flow, &ipip(&flow, a));

    let before: BTreeMap<&str, Counters> = POOL_BACKENDS
        .iter()
        .map(|b| (*b, rig.backend("pool", b)))
        .collect();
    let svc0 = rig.service("pool");
    let reselect0 = rig.paths()[Branch::Reselect as usize];
    rig.dp
        .set_backend_down(a_name, true)
        .expect("set_backend_down");

    let (o, got) = rig.outer("flow after its backend went down", &flow);
    let b = v4(o.dst());
    assert_ne!(b, a, "the flow still goes to {a_name}, which is down");
    assert_frame_eq("flow after its backend went down", &got, &ipip(&flow, b));
    let b_name = backend_name(b.into());
    assert_eq!(
        rig.paths()[Branch::Reselect as usize] - reselect0,
        1,
        "path counter reselect"
    );
    let a1 = rig.backend("pool", a_name);
    let b1 = rig.backend("pool", b_name);
    assert_eq!(
        a1.packets, before[a_name].packets,
        "{a_name} (down) got packets"
    );
    assert_eq!(b1.packets, before[b_name].packets + 1, "{b_name} packets");
    assert_eq!(
        rig.service("pool").packets,
        svc0.packets + 1,
        "pool packets"
    );

    // The flow stays on its new backend; new flows avoid the down one.
    rig.expect_tx("re-selected flow again", &flow, &ipip(&flow, b));
    for i in 0..100u32 {
        let p = tcp4(client_n(i), 50000 + i as u16, VIP_POOL, 80);
        let (o, _) = rig.outer("new flow while down", &p);
        assert_ne!(
            v4(o.dst()),
            a,
            "new flow {i} went to {a_name}, which is down"
        );
    }

    // Back up: conntrack now points at the new backend, which stays valid.
    rig.dp
        .set_backend_down(a_name, false)
        .expect("set_backend_down");
    rig.expect_tx(
        "flow after the old backend came back",
        &flow,
        &ipip(&flow, b),
    );
}

#[test]
#[ignore = "needs root: BPF or network namespaces (cargo xtask test runs it)"]
fn backend_down_through_apply_forces_reselection() {
    if !steer_tests::require_root() {
        return;
    }
    let mut rig = Rig::new(BASIC);
    let (flow, a) = pool_flow(&mut rig, 40123);
    let a_name = backend_name(a.into());
    rig.down.insert(a_name.to_string());
    let cfg = parse(BASIC);
    rig.dp
        .apply(&cfg, &rig.down)
        .expect("apply with a backend down");
    let (o, got) = rig.outer("flow after apply marked its backend down", &flow);
    let b = v4(o.dst());
    assert_ne!(b, a);
    assert_frame_eq(
        "flow after apply marked its backend down",
        &got,
        &ipip(&flow, b),
    );
}

/// basic.toml with the pool service's backend list replaced.
fn with_pool_backends(list: &[&str]) -> String {
    let old = r#"backends = ["eu-1", "eu-2", "eu-3"] # pool-backends"#;
    let quoted: Vec<String> = list.iter().map(|b| format!("{b:?}")).collect();
    let new = format!("backends = [{}] # pool-backends", quoted.join(", "));
    let text = BASIC.replace(old, &new);
    assert_ne!(text, BASIC, "fixture marker {old:?} not found");
    text
}

#[test]
#[ignore = "needs root: BPF or network namespaces (cargo xtask test runs it)"]
fn removed_backend_reselects_established_flows() {
    if !steer_tests::require_root() {
        return;
    }
    let mut rig = Rig::new(BASIC);
    let (flow, a) = pool_flow(&mut rig, 40000);
    let a_name = backend_name(a.into());
    let rest: Vec<&str> = POOL_BACKENDS
        .iter()
        .copied()
        .filter(|b| *b != a_name)
        .collect();
    rig.reapply(&with_pool_backends(&rest));
    let reselect0 = rig.paths()[Branch::Reselect as usize];
    let (o, got) = rig.outer("flow after its backend left the service", &flow);
    let b = v4(o.dst());
    assert_ne!(
        b, a,
        "the flow still goes to {a_name}, which left the service"
    );
    assert!(rest.contains(&backend_name(b.into())));
    assert_frame_eq(
        "flow after its backend left the service",
        &got,
        &ipip(&flow, b),
    );
    assert_eq!(
        rig.paths()[Branch::Reselect as usize] - reselect0,
        1,
        "path counter reselect"
    );
}

#[test]
#[ignore = "needs root: BPF or network namespaces (cargo xtask test runs it)"]
fn replaced_backend_does_not_inherit_flows() {
    if !steer_tests::require_root() {
        return;
    }
    let mut rig = Rig::new(BASIC);
    // Several flows on several backends, then one backend is swapped for
    // eu-5 in one change: eu-5 may take over the old backend's slot (real
    // id), and the old flows must be re-selected, not follow the slot.
    let mut flows = Vec::new();
    for i in 0..24u16 {
        flows.push(pool_flow(&mut rig, 42000 + i));
    }
    let a = flows[0].1;
    let a_name = backend_name(a.into());
    let on_a = flows.iter().filter(|(_, be)| *be == a).count() as u64;
    let swapped: Vec<&str> = POOL_BACKENDS
        .iter()
        .map(|b| if *b == a_name { "eu-5" } else { *b })
        .collect();
    rig.reapply(&with_pool_backends(&swapped));
    let p0 = rig.paths();
    for (flow, be) in &flows {
        let (o, got) = rig.outer("flow after the swap", flow);
        let now = v4(o.dst());
        assert_frame_eq("flow after the swap", &got, &ipip(flow, now));
        if *be == a {
            assert_ne!(now, a, "a flow still goes to {a_name}, which was replaced");
        } else {
            assert_eq!(now, *be, "a flow on an unchanged backend moved");
        }
    }
    let p1 = rig.paths();
    assert_eq!(
        p1[Branch::Reselect as usize] - p0[Branch::Reselect as usize],
        on_a,
        "every flow of {a_name} is re-selected (and only those)"
    );
    assert_eq!(
        p1[Branch::CtHit as usize] - p0[Branch::CtHit as usize],
        flows.len() as u64 - on_a,
        "conntrack hits"
    );
}

#[test]
#[ignore = "needs root: BPF or network namespaces (cargo xtask test runs it)"]
fn empty_table_drops_no_backend() {
    if !steer_tests::require_root() {
        return;
    }
    let mut rig = Rig::with_down(BASIC, &["eu-4"]);
    let p = tcp4(CLIENT, 40000, VIP_SOLO, 80);
    rig.expect_drop(
        "service whose only backend is down",
        &p.build(),
        DropReason::NoBackend,
    );
    // Up again (through the policy, as the daemon does): the flow is served.
    rig.dp
        .apply(&rig.cfg, &BTreeSet::new())
        .expect("programming eu-4 up");
    rig.expect_tx(
        "service whose only backend came back",
        &p,
        &ipip(&p, Ipv4Addr::new(192, 0, 2, 14)),
    );
}

#[test]
#[ignore = "needs root: BPF or network namespaces (cargo xtask test runs it)"]
fn with_no_healthy_backend_fail_open_still_forwards() {
    if !steer_tests::require_root() {
        return;
    }
    // The default on_no_healthy: one wrong health check must not blackhole
    // the VIP (Route 53, Global Accelerator and Envoy fail open too).
    let open = BASIC.replace("on_no_healthy = \"drop\"\n", "");
    assert_ne!(open, BASIC, "the fixture's solo service sets drop");
    let mut rig = Rig::with_down(&open, &["eu-4"]);
    for port in 40000..40020 {
        let p = tcp4(CLIENT, port, VIP_SOLO, 80);
        rig.expect_tx(
            "new flow to a service whose only backend is down (fail-open)",
            &p,
            &ipip(&p, Ipv4Addr::new(192, 0, 2, 14)),
        );
    }
}

// ---------------------------------------------------------------------------
// Passive health counters (PASSIVE_STATS).

/// basic.toml with `backend` drained (weight 0).
fn drained(backend: &str) -> String {
    let marker = format!("weight = 100 # weight:{backend}");
    let text = BASIC.replace(&marker, &format!("weight = 0 # weight:{backend}"));
    assert_ne!(text, BASIC, "fixture marker {marker:?} not found");
    text
}

#[test]
#[ignore = "needs root: BPF or network namespaces (cargo xtask test runs it)"]
fn repeated_syns_and_handshakes_are_counted_per_backend() {
    if !steer_tests::require_root() {
        return;
    }
    let mut rig = Rig::new(BASIC);
    // What each pool backend should count, built up from the rules as the
    // packets go: a SYN whose 5-tuple still has a handshake-pending entry
    // is one repeated SYN for the backend of that entry; the first non-SYN
    // packet of a pending flow is one handshake for the flow's backend.
    let mut want: BTreeMap<&str, Passive> = POOL_BACKENDS
        .iter()
        .map(|b| (*b, Passive::default()))
        .collect();
    let check = |rig: &Rig, want: &BTreeMap<&str, Passive>, after: &str| {
        for (b, w) in want {
            assert_eq!(rig.passive("pool", b), *w, "{b} after {after}");
        }
    };

    // Flow A: SYN, the same SYN again (unanswered), then again after its
    // backend is drained, then the handshake completes.
    let a_syn = tcp4(CLIENT, 41000, VIP_POOL, 80).syn();
    let a_ack = tcp4(CLIENT, 41000, VIP_POOL, 80);
    let a = rig.table_says("pool", &a_syn);
    rig.expect_to("A: SYN", &a_syn, a);
    check(&rig, &want, "A's first SYN (a new flow, nothing to count)");
    rig.expect_to("A: SYN again", &a_syn, a);
    // A's entry was pending on `a`: one repeated SYN for `a`.
    want.get_mut(a).unwrap().repeated_syns += 1;
    check(&rig, &want, "A's second SYN");
    rig.reapply(&drained(a));
    let b = rig.table_says("pool", &a_syn);
    assert_ne!(a, b, "a drained backend still gets new flows");
    // Selected afresh from the current table: `b`. The entry it replaces
    // was pending on `a` (the second SYN re-marked it): `a` again.
    rig.expect_to("A: third SYN, its backend drained", &a_syn, b);
    want.get_mut(a).unwrap().repeated_syns += 1;
    check(&rig, &want, "A's third SYN");
    // The client's ACK: it follows conntrack to `b`, one handshake there.
    rig.expect_to("A: ACK", &a_ack, b);
    want.get_mut(b).unwrap().handshakes += 1;
    check(&rig, &want, "A's ACK");
    // Later segments are not handshakes.
    rig.expect_to("A: next segment", &a_ack, b);
    rig.expect_to("A: next segment", &a_ack, b);
    check(&rig, &want, "A's later segments");

    // Flow B: SYN, then ACK: one handshake.
    let b_syn = tcp4(CLIENT, 41001, VIP_POOL, 80).syn();
    let bb = rig.table_says("pool", &b_syn);
    rig.expect_to("B: SYN", &b_syn, bb);
    rig.expect_to("B: ACK", &tcp4(CLIENT, 41001, VIP_POOL, 80), bb);
    want.get_mut(bb).unwrap().handshakes += 1;
    check(&rig, &want, "B's handshake");

    // Flow C: a SYN only: pending, nothing counted (yet).
    let c_syn = tcp4(CLIENT, 41002, VIP_POOL, 80).syn();
    let c = rig.table_says("pool", &c_syn);
    rig.expect_to("C: SYN", &c_syn, c);
    check(&rig, &want, "C's only SYN");

    // Flow D, port reuse: SYN, ACK (a handshake), later a SYN of the same
    // 5-tuple: the entry is complete, so this is a new connection, not a
    // repeat; its ACK is a second handshake.
    let d_syn = tcp4(CLIENT, 41003, VIP_POOL, 80).syn();
    let d_ack = tcp4(CLIENT, 41003, VIP_POOL, 80);
    let d = rig.table_says("pool", &d_syn);
    rig.expect_to("D: SYN", &d_syn, d);
    rig.expect_to("D: ACK", &d_ack, d);
    want.get_mut(d).unwrap().handshakes += 1;
    check(&rig, &want, "D's handshake");
    rig.expect_to("D: SYN reusing the port", &d_syn, d);
    check(&rig, &want, "D's port reuse (no repeat)");
    rig.expect_to("D: ACK of the new connection", &d_ack, d);
    want.get_mut(d).unwrap().handshakes += 1;
    check(&rig, &want, "D's second handshake");

    // Client affinity (one entry per client, sport 0) and UDP: never
    // pending, never counted. Every backend is back first: the drained
    // `a` may be one of theirs (eu-3 is dns30's only backend).
    rig.reapply(BASIC);
    for i in 0..2 {
        let p = tcp4(CLIENT, 42000, VIP_STICKY, 443).syn();
        rig.tx_frame(&format!("sticky SYN {i}"), &p.build());
    }
    rig.tx_frame("sticky ACK", &tcp4(CLIENT, 42000, VIP_STICKY, 443).build());
    for i in 0..2 {
        let p = udp4(CLIENT, 42000, VIP_ANY, 53);
        rig.tx_frame(&format!("UDP {i}"), &p.build());
    }
    for b in POOL_BACKENDS {
        assert_eq!(rig.passive("sticky", b), Passive::default(), "sticky {b}");
    }
    assert_eq!(rig.passive("dns30", "eu-3"), Passive::default(), "dns30");
    check(&rig, &want, "the client-affinity and UDP packets");
    // Hand-derived totals, whatever the backends: A gave two repeated SYNs,
    // A, B and D (twice) four handshakes.
    let total = want
        .values()
        .fold((0, 0), |(r, h), p| (r + p.repeated_syns, h + p.handshakes));
    assert_eq!(total, (2, 4));
}

/// `RECENT_SYN` for basic.toml's `conntrack_size = 65536`
/// (docs/architecture.md: slots the next power of two of the conntrack
/// size, 65,536 to 2^22, in buckets of 4): a SYN's bucket is
/// `flow_hash & (65536 / 4 - 1)`.
const BASIC_SYN_BUCKET_MASK: u32 = 65536 / 4 - 1;
/// Other SYNs sent into a bucket to push a pending SYN out: the 4 ways of
/// a bucket are written in turn (docs/architecture.md, "The SYN path"), so
/// the fourth SYN after it takes its slot.
const SYNS_TO_EVICT: usize = 4;

/// The `RECENT_SYN` bucket of flow `p` in basic.toml.
fn syn_bucket_of(p: &Packet) -> u32 {
    flow_hash(&p.flow_key()) & BASIC_SYN_BUCKET_MASK
}

/// `n` SYNs to `VIP_POOL` from `client_n` clients whose flow hash puts them
/// in `RECENT_SYN` bucket `bucket` of basic.toml, none of them `avoid`.
fn syns_into_bucket(bucket: u32, n: usize, avoid: &[Packet]) -> Vec<Packet> {
    let keys: Vec<_> = avoid.iter().map(Packet::flow_key).collect();
    let v: Vec<Packet> = (0..200u32)
        .flat_map(|c| (1024..=65535u16).step_by(7).map(move |p| (c, p)))
        .map(|(c, p)| tcp4(client_n(c), p, VIP_POOL, 80).syn())
        .filter(|z| syn_bucket_of(z) == bucket)
        .filter(|z| !keys.contains(&z.flow_key()))
        .take(n)
        .collect();
    assert_eq!(v.len(), n, "flows sharing bucket {bucket}");
    v
}

#[test]
#[ignore = "needs root: BPF or network namespaces (cargo xtask test runs it)"]
fn the_first_ack_follows_its_syn_across_a_table_change() {
    if !steer_tests::require_root() {
        return;
    }
    let mut rig = Rig::new(BASIC);

    // X: SYN to `a`; then `a` is drained, so the table names another
    // backend for X; X's ACK still reaches `a` (its SYN's slot), counts a
    // handshake there, and X stays on `a`.
    let x_syn = tcp4(CLIENT, 43000, VIP_POOL, 80).syn();
    let x_ack = tcp4(CLIENT, 43000, VIP_POOL, 80);
    let a = rig.table_says("pool", &x_syn);
    rig.expect_to("X: SYN", &x_syn, a);
    rig.reapply(&drained(a));
    assert_ne!(
        rig.table_says("pool", &x_ack),
        a,
        "the drain changed X's slot"
    );
    let before = rig.paths();
    rig.expect_to("X: ACK after the table changed", &x_ack, a);
    let after = rig.paths();
    assert_eq!(
        grew(&before, &after, Branch::SynPromoted),
        1,
        "X's ACK took its SYN's slot"
    );
    assert_eq!(grew(&before, &after, Branch::NewFlow), 0);
    assert_eq!(
        rig.passive("pool", a).handshakes,
        1,
        "one handshake for {a}"
    );
    rig.expect_to("X: next segment", &x_ack, a);
    rig.expect_to("X: next segment", &x_ack, a);
    assert_eq!(
        rig.passive("pool", a).handshakes,
        1,
        "later segments are not handshakes"
    );
    assert_eq!(
        grew(&after, &rig.paths(), Branch::CtHit),
        2,
        "X is in conntrack"
    );

    // The documented fallback: Y's SYN slot is taken by other SYNs of its
    // bucket, then the table changes; Y's ACK is selected from the current
    // table, and no handshake is counted.
    rig.reapply(BASIC);
    let y_syn = tcp4(CLIENT, 44000, VIP_POOL, 80).syn();
    let y_ack = tcp4(CLIENT, 44000, VIP_POOL, 80);
    let bucket = syn_bucket_of(&y_syn);
    let others = syns_into_bucket(bucket, SYNS_TO_EVICT, std::slice::from_ref(&y_syn));
    let ay = rig.table_says("pool", &y_syn);
    rig.expect_to("Y: SYN", &y_syn, ay);
    for z in &others {
        let az = rig.table_says("pool", z);
        rig.expect_to("a SYN into Y's bucket", z, az);
    }
    rig.reapply(&drained(ay));
    let by = rig.table_says("pool", &y_ack);
    assert_ne!(by, ay, "the drain changed Y's slot");
    let handshakes: u64 = POOL_BACKENDS
        .iter()
        .map(|b| rig.passive("pool", b).handshakes)
        .sum();
    let before = rig.paths();
    rig.expect_to("Y: ACK, its slot lost", &y_ack, by);
    let after = rig.paths();
    assert_eq!(
        grew(&before, &after, Branch::NewFlow),
        1,
        "Y's ACK was selected by hash"
    );
    assert_eq!(grew(&before, &after, Branch::SynPromoted), 0);
    let now: u64 = POOL_BACKENDS
        .iter()
        .map(|b| rig.passive("pool", b).handshakes)
        .sum();
    assert_eq!(now, handshakes, "no handshake is counted without the slot");
    rig.expect_to("Y: next segment", &y_ack, by);
}

/// A SYN flood fills every `RECENT_SYN` bucket, so a genuine SYN's slot is
/// one of four that spoofed SYNs keep overwriting. The ways are written in
/// turn: a pending SYN's slot survives the next three SYNs of its bucket,
/// and its ACK follows it across a table change. (When a full bucket
/// evicted a way picked by the tag, each of those three SYNs took the
/// genuine slot one time in four: all eight handshakes below survived
/// with probability (3/4)^24, about 0.1 %.)
#[test]
#[ignore = "needs root: BPF or network namespaces (cargo xtask test runs it)"]
fn a_pending_syn_survives_three_more_syns_of_its_full_bucket() {
    if !steer_tests::require_root() {
        return;
    }
    let mut rig = Rig::new(BASIC);
    // Eight genuine connections the table sends to eu-1, each in its own
    // bucket.
    let mut genuine: Vec<Packet> = Vec::new();
    for port in 45000..46000u16 {
        let z = tcp4(CLIENT, port, VIP_POOL, 80).syn();
        if rig.table_says("pool", &z) == "eu-1"
            && genuine
                .iter()
                .all(|x| syn_bucket_of(x) != syn_bucket_of(&z))
        {
            genuine.push(z);
            if genuine.len() == 8 {
                break;
            }
        }
    }
    assert_eq!(genuine.len(), 8, "eight flows to eu-1 in distinct buckets");
    for (k, g) in genuine.iter().enumerate() {
        let bucket = syn_bucket_of(g);
        // Four SYNs fill the bucket (as a flood does), the genuine SYN
        // takes a slot, then three more spoofed SYNs arrive before its ACK.
        let flood = syns_into_bucket(bucket, 7, &genuine);
        for z in &flood[..4] {
            let to = rig.table_says("pool", z);
            rig.expect_to(&format!("{k}: a SYN filling the bucket"), z, to);
        }
        rig.expect_to(&format!("{k}: the genuine SYN"), g, "eu-1");
        for z in &flood[4..] {
            let to = rig.table_says("pool", z);
            rig.expect_to(&format!("{k}: a SYN after the genuine one"), z, to);
        }
    }
    // The table changes under the pending handshakes.
    rig.reapply(&drained("eu-1"));
    let before = rig.paths();
    for (k, g) in genuine.iter().enumerate() {
        let mut ack = g.clone();
        ack.tcp_syn = false;
        assert_ne!(
            rig.table_says("pool", &ack),
            "eu-1",
            "{k}: the drain moved it"
        );
        rig.expect_to(&format!("{k}: the genuine ACK"), &ack, "eu-1");
    }
    let after = rig.paths();
    assert_eq!(
        grew(&before, &after, Branch::SynPromoted),
        8,
        "every ACK found its SYN's slot"
    );
    assert_eq!(grew(&before, &after, Branch::NewFlow), 0);
}

/// How much branch `b`'s counter grew between two readings.
fn grew(before: &Paths, after: &Paths, b: Branch) -> u64 {
    after[b as usize] - before[b as usize]
}

/// The flow cache (docs/architecture.md, "The flow cache"): an established
/// IPv4 flow's first conntrack hit caches it on this CPU, its next packets
/// skip the conntrack lookup, and a cached copy lasts one tick of the
/// conntrack clock (537 ms, an eighth of an epoch).
#[test]
#[ignore = "needs root: BPF or network namespaces (cargo xtask test runs it)"]
fn established_packets_come_from_the_flow_cache_within_a_tick() {
    if !steer_tests::require_root() {
        return;
    }
    // The cache is per CPU: every packet of this test on one CPU.
    pin_to_one_cpu();
    let mut rig = Rig::new(BASIC);
    let (flow, a) = pool_flow(&mut rig, 41000);
    let a = backend_name(a.into());
    // `n` established packets of `p` (each sent to `to`): how many were
    // conntrack hits, and how many of those filled the cache.
    let hits_and_fills = |rig: &mut Rig, what: &str, p: &Packet, to: Option<&str>, n: u64| {
        let before = rig.paths();
        for _ in 0..n {
            match to {
                Some(to) => rig.expect_to(what, p, to),
                None => drop(rig.outer(what, p)),
            }
        }
        let after = rig.paths();
        (
            grew(&before, &after, Branch::CtHit),
            grew(&before, &after, Branch::FlowCacheFill),
        )
    };
    assert_eq!(
        hits_and_fills(&mut rig, "established", &flow, Some(a), 5),
        (5, 1),
        "5 conntrack hits: the first looked conntrack up and cached the flow, 4 came from the cache"
    );
    // A new epoch: the cached copy is not used any more; the next packet
    // looks conntrack up again (refreshing the entry's LRU and its SYN
    // filter bit) and caches the flow for the new epoch.
    // (The program's clock moves only when it is set: no daemon runs here.)
    let next = steer::dataplane::ct_epoch_now() + 1;
    rig.dp.set_ct_epoch(next).expect("advance the epoch");
    assert_eq!(
        hits_and_fills(&mut rig, "established, next epoch", &flow, Some(a), 3),
        (3, 1)
    );
    // The next tick of the same epoch: looked up and cached again.
    let tick = steer_common::ct_first_tick(next) + 1;
    assert_eq!(steer_common::ct_epoch_of_tick(tick), next);
    rig.dp.set_ct_tick(tick).expect("advance the clock");
    assert_eq!(
        hits_and_fills(&mut rig, "established, next tick", &flow, Some(a), 3),
        (3, 1)
    );
    // IPv6 flows are not cached: every hit is a conntrack lookup.
    let f6 = tcp6(CLIENT6, 41000, VIP6, 443);
    rig.outer("IPv6 flow", &f6);
    assert_eq!(
        hits_and_fills(&mut rig, "IPv6 established", &f6, None, 3),
        (3, 0)
    );
}

/// A cached flow whose backend goes down is re-selected; when the backend
/// comes back, the flow stays where conntrack now sends it, not where the
/// cache had it.
#[test]
#[ignore = "needs root: BPF or network namespaces (cargo xtask test runs it)"]
fn a_cached_flow_stays_on_its_new_backend_when_the_old_one_comes_back() {
    if !steer_tests::require_root() {
        return;
    }
    pin_to_one_cpu();
    let mut rig = Rig::new(BASIC);
    let cfg = parse(BASIC);
    let (flow, a) = pool_flow(&mut rig, 41100);
    let a_name = backend_name(a.into());
    rig.expect_to("established, cached", &flow, a_name);
    rig.down.insert(a_name.to_string());
    rig.dp.apply(&cfg, &rig.down).expect("apply with a down");
    let before = rig.paths();
    let (o, _) = rig.outer("after a went down", &flow);
    let b = v4(o.dst());
    assert_ne!(b, a, "re-selected away from the down backend");
    assert_eq!(grew(&before, &rig.paths(), Branch::Reselect), 1);
    rig.down.clear();
    rig.dp
        .apply(&cfg, &rig.down)
        .expect("apply with a up again");
    let b_name = backend_name(b.into());
    for i in 0..3 {
        rig.expect_to(&format!("after a came back, packet {i}"), &flow, b_name);
    }
}

/// A TCP SYN that reuses a cached flow's 5-tuple starts a new connection:
/// conntrack's entry is replaced and this CPU's cached copy dropped, so the
/// new connection's ACK goes where its SYN went, in the same epoch.
#[test]
#[ignore = "needs root: BPF or network namespaces (cargo xtask test runs it)"]
fn a_syn_reusing_a_cached_flows_port_is_not_sent_by_the_cache() {
    if !steer_tests::require_root() {
        return;
    }
    pin_to_one_cpu();
    let mut rig = Rig::new(BASIC);
    let syn = tcp4(CLIENT, 41200, VIP_POOL, 80).syn();
    let ack = tcp4(CLIENT, 41200, VIP_POOL, 80);
    let a = rig.table_says("pool", &syn);
    rig.expect_to("first connection: SYN", &syn, a);
    rig.expect_to("first connection: ACK", &ack, a);
    let before = rig.paths();
    rig.expect_to("first connection: data", &ack, a);
    rig.expect_to("first connection: data", &ack, a);
    let after = rig.paths();
    assert_eq!(grew(&before, &after, Branch::CtHit), 2);
    assert_eq!(
        grew(&before, &after, Branch::FlowCacheFill),
        1,
        "the flow is cached"
    );
    // Drained, `a` keeps its flows, but the table sends new ones elsewhere.
    rig.reapply(&drained(a));
    let b = rig.table_says("pool", &syn);
    assert_ne!(b, a, "the drain changed the flow's slot");
    rig.expect_to("first connection after the drain", &ack, a);
    // The client reuses the port: a new connection, selected afresh.
    rig.expect_to("second connection: SYN", &syn, b);
    rig.expect_to("second connection: ACK", &ack, b);
    rig.expect_to("second connection: data", &ack, b);
}

// ---------------------------------------------------------------------------
// Client affinity.

#[test]
#[ignore = "needs root: BPF or network namespaces (cargo xtask test runs it)"]
fn client_affinity_keeps_a_client_on_one_backend() {
    if !steer_tests::require_root() {
        return;
    }
    let mut rig = Rig::new(BASIC);
    let mut first = None;
    for i in 0..50u16 {
        let p = tcp4(CLIENT, 20000 + i * 13, VIP_STICKY, 443);
        let (o, got) = rig.outer("sticky flow", &p);
        let be = v4(o.dst());
        assert_frame_eq("sticky flow", &got, &ipip(&p, be));
        match first {
            None => first = Some(be),
            Some(f) => assert_eq!(
                be,
                f,
                "client port {} left the client's backend",
                20000 + i * 13
            ),
        }
    }
    let s = rig.service("sticky");
    assert_eq!(s.packets, 50);
    assert_eq!(
        s.new_flows, 1,
        "every flow of one client shares one conntrack entry"
    );
    let mut seen = BTreeSet::new();
    for i in 0..64u32 {
        let p = tcp4(client_n(i), 40000, VIP_STICKY, 443);
        let (o, _) = rig.outer("sticky, other client", &p);
        seen.insert(v4(o.dst()));
        // A second port of the same client lands on the same backend.
        let q = tcp4(client_n(i), 40001, VIP_STICKY, 443);
        let (o2, _) = rig.outer("sticky, other client, second port", &q);
        assert_eq!(
            o2.dst(),
            o.dst(),
            "client {} split over backends",
            client_n(i)
        );
    }
    assert!(seen.len() > 1, "64 clients all went to {seen:?}");
}

#[test]
#[ignore = "needs root: BPF or network namespaces (cargo xtask test runs it)"]
fn client_affinity_ipv6_uses_the_client_key() {
    if !steer_tests::require_root() {
        return;
    }
    let mut rig = Rig::new(BASIC);
    let mut seen = BTreeSet::new();
    for c in 0..32u16 {
        let mut backend = None;
        for port in [40000u16, 40001, 51234] {
            let p = tcp6(client6_n(c), port, VIP6_STICKY, 443);
            let (o, got) = rig.outer("sticky6", &p);
            let be = v6(o.dst());
            // Flow label from the client-affinity key.
            let label = flow_hash(&p.affinity_key(443)) & 0xf_ffff;
            assert_frame_eq(
                &format!("sticky6 client {c} port {port}"),
                &got,
                &expect_ip6_encap(&p, ENC, SRC6, be, label),
            );
            match backend {
                None => backend = Some(be),
                Some(b) => assert_eq!(be, b, "client {c} split over backends"),
            }
        }
        seen.insert(backend);
    }
    assert!(seen.len() > 1, "32 clients all went to {seen:?}");
}

// ---------------------------------------------------------------------------
// MTU.

#[test]
#[ignore = "needs root: BPF or network namespaces (cargo xtask test runs it)"]
fn packets_too_big_after_encapsulation_are_answered() {
    if !steer_tests::require_root() {
        return;
    }
    let mut rig = Rig::new(BASIC);
    // Default MTU 1500: inner IPv4 up to 1480 with an IPv4 outer header,
    // up to 1460 with an IPv6 one. TCP header 20 + IP header 20 (or 40).
    let fits = tcp4(CLIENT, 40000, VIP_WEB, 80).payload_len(1480 - 40);
    assert_eq!(fits.ip_len(), 1480);
    rig.expect_tx("IPIP, exactly the MTU", &fits, &ipip(&fits, EU1));
    let big = tcp4(CLIENT, 40000, VIP_WEB, 80).payload_len(1481 - 40);
    rig.expect_pmtu("IPIP, 1 byte over the MTU", &big, ENC, 1480);

    let fits6 = tcp6(CLIENT6, 40000, VIP6, 443).payload_len(1460 - 60);
    assert_eq!(fits6.ip_len(), 1460);
    rig.expect_tx("6in6, exactly the MTU", &fits6, &ip6(&fits6, V6_1));
    let big6 = tcp6(CLIENT6, 40000, VIP6, 443).payload_len(1461 - 60);
    rig.expect_pmtu("6in6, 1 byte over the MTU", &big6, ENC, 1460);

    let fits46 = tcp4(CLIENT, 40000, VIP_MIXED, 443).payload_len(1460 - 40);
    rig.expect_tx("4in6, exactly the MTU", &fits46, &ip6(&fits46, V6_1));
    let big46 = tcp4(CLIENT, 40000, VIP_MIXED, 443).payload_len(1461 - 40);
    rig.expect_pmtu("4in6, 1 byte over the MTU", &big46, ENC, 1460);

    // VLAN tags are not part of the IP MTU.
    let tagged = tcp4(CLIENT, 40001, VIP_WEB, 80)
        .payload_len(1480 - 40)
        .vlan(Vlan::dot1ad(1))
        .vlan(Vlan::dot1q(2));
    rig.expect_tx(
        "IPIP, exactly the MTU, two tags",
        &tagged,
        &ipip(&tagged, EU1),
    );

    // A full 1500-byte client packet.
    let full = udp4(CLIENT, 5353, VIP_WEB, 53).payload_len(1500 - 28);
    rig.expect_pmtu("a 1500-byte UDP packet", &full, ENC, 1480);
    // Nothing was forwarded but the four packets that fit.
    assert_eq!(rig.service("web").packets, 2);
    assert_eq!(rig.paths()[Branch::PmtuReply as usize], 4);
}

#[test]
#[ignore = "needs root: BPF or network namespaces (cargo xtask test runs it)"]
fn configured_mtu_and_ttl_are_used() {
    if !steer_tests::require_root() {
        return;
    }
    let mut rig = Rig::new(RANGE);
    // mtu = 1400, ttl = 32.
    let fits = tcp4(CLIENT, 40000, VIP_WEB, 80).payload_len(1380 - 40);
    let src = outer_src_v4(RANGE4, RANGE4_PREFIX, flow_hash(&fits.flow_key()));
    rig.expect_tx(
        "IPIP, exactly the configured MTU",
        &fits,
        &expect_ipip(&fits, ENC_RANGE, src, EU1),
    );
    let big = tcp4(CLIENT, 40000, VIP_WEB, 80).payload_len(1381 - 40);
    rig.expect_pmtu(
        "IPIP, 1 byte over the configured MTU",
        &big,
        ENC_RANGE,
        1380,
    );
    let big6 = tcp6(CLIENT6, 40000, VIP6, 443).payload_len(1361 - 60);
    rig.expect_pmtu(
        "6in6, 1 byte over the configured MTU",
        &big6,
        ENC_RANGE,
        1360,
    );
}

// ---------------------------------------------------------------------------
// Outer source ranges.

#[test]
#[ignore = "needs root: BPF or network namespaces (cargo xtask test runs it)"]
fn outer_source_varies_per_flow_within_the_range() {
    if !steer_tests::require_root() {
        return;
    }
    let mut rig = Rig::new(RANGE);
    let mut srcs4 = BTreeSet::new();
    let mut srcs6 = BTreeSet::new();
    for i in 0..64u16 {
        let port = 10000 + i * 31;
        let p = tcp4(CLIENT, port, VIP_WEB, 80);
        let h = flow_hash(&p.flow_key());
        let src = outer_src_v4(RANGE4, RANGE4_PREFIX, h);
        let got = rig.expect_tx(
            &format!("IPIP from a /24, port {port}"),
            &p,
            &expect_ipip(&p, ENC_RANGE, src, EU1),
        );
        let o = parse_outer(&got).expect("outer");
        let s = v4(o.src());
        assert_eq!(
            &s.octets()[..3],
            &[198, 18, 0],
            "outside 198.18.0.0/24: {s}"
        );
        srcs4.insert(s);

        let q = tcp6(CLIENT6, port, VIP6, 443);
        let h6 = flow_hash(&q.flow_key());
        let src6 = outer_src_v6(RANGE6, RANGE6_PREFIX, h6);
        let got6 = rig.expect_tx(
            &format!("6in6 from a /112, port {port}"),
            &q,
            &expect_ip6_encap(&q, ENC_RANGE, src6, V6_1, h6),
        );
        let s6 = v6(parse_outer(&got6).expect("outer").src());
        assert_eq!(
            &s6.octets()[..14],
            &RANGE6.octets()[..14],
            "outside 2001:db8:ffff::/112: {s6}"
        );
        srcs6.insert(s6);

        let m = tcp4(CLIENT, port, VIP_MIXED, 443);
        let hm = flow_hash(&m.flow_key());
        rig.expect_tx(
            &format!("4in6 from a /112, port {port}"),
            &m,
            &expect_ip6_encap(
                &m,
                ENC_RANGE,
                outer_src_v6(RANGE6, RANGE6_PREFIX, hm),
                V6_1,
                hm,
            ),
        );
    }
    assert!(
        srcs4.len() > 32,
        "only {} IPv4 sources for 64 flows",
        srcs4.len()
    );
    assert!(
        srcs6.len() > 32,
        "only {} IPv6 sources for 64 flows",
        srcs6.len()
    );
}

#[test]
#[ignore = "needs root: BPF or network namespaces (cargo xtask test runs it)"]
fn outer_source_of_client_affinity_follows_the_client() {
    if !steer_tests::require_root() {
        return;
    }
    let mut rig = Rig::new(RANGE);
    for c in 0..16u32 {
        for port in [40000u16, 40001, 61000] {
            let p = tcp4(client_n(c), port, VIP_STICKY, 443);
            let h = flow_hash(&p.affinity_key(443));
            let src = outer_src_v4(RANGE4, RANGE4_PREFIX, h);
            rig.expect_tx(
                &format!("sticky from a /24, client {c} port {port}"),
                &p,
                &expect_ipip(&p, ENC_RANGE, src, EU1),
            );
            let q = tcp6(client6_n(c as u16), port, VIP6_STICKY, 443);
            let h6 = flow_hash(&q.affinity_key(443));
            rig.expect_tx(
                &format!("sticky6 from a /112, client {c} port {port}"),
                &q,
                &expect_ip6_encap(
                    &q,
                    ENC_RANGE,
                    outer_src_v6(RANGE6, RANGE6_PREFIX, h6),
                    V6_1,
                    h6,
                ),
            );
        }
    }
}

// ---------------------------------------------------------------------------
// Counters.

#[test]
#[ignore = "needs root: BPF or network namespaces (cargo xtask test runs it)"]
fn counters_match_the_traffic() {
    if !steer_tests::require_root() {
        return;
    }
    let mut rig = Rig::new(BASIC);
    let paths0 = rig.paths();
    let mut frames = 0u64;
    let mut frame_bytes = 0u64;
    let mut ip_bytes = 0u64;
    let mut out_bytes = 0u64;
    for flow in 0..5u16 {
        for pkt in 0..3usize {
            let p = tcp4(CLIENT, 40000 + flow, VIP_WEB, 80)
                .payload_len(10 + 100 * pkt + usize::from(flow));
            let got = rig.expect_tx("counted packet", &p, &ipip(&p, EU1));
            frames += 1;
            frame_bytes += p.build().len() as u64;
            ip_bytes += p.ip_len() as u64;
            out_bytes += got.len() as u64;
        }
    }
    // Traffic for other services and passed traffic must not count here.
    let u = udp4(CLIENT, 5353, VIP_WEB, 53);
    rig.expect_tx("dns", &u, &ipip(&u, EU1));
    rig.expect_pass("other port", &tcp4(CLIENT, 1, VIP_WEB, 81).build());

    let s = rig.service("web");
    let b = rig.backend("web", "eu-1");
    assert_eq!(s.packets, frames, "web packets");
    assert_eq!(s.new_flows, 5, "web new flows");
    assert_eq!(
        s.bytes, frame_bytes,
        "web bytes: expected the received frame bytes ({frame_bytes}); \
         for reference, inner IP bytes = {ip_bytes}, transmitted bytes = {out_bytes}"
    );
    assert_eq!(b, s, "the only backend of web counts what web counts");
    let d = rig.service("dns");
    assert_eq!((d.packets, d.new_flows), (1, 1), "dns");
    assert_eq!(rig.backend("dns", "eu-1").packets, 1);

    let paths1 = rig.paths();
    let dp = |i: Branch| paths1[i as usize] - paths0[i as usize];
    assert_eq!(dp(Branch::NewFlow), 6, "path new_flow");
    assert_eq!(dp(Branch::CtHit), 10, "path ct_hit");
    assert_eq!(dp(Branch::Pass), 1, "path pass");
    assert_eq!(dp(Branch::Drop), 0, "path drop");
}

#[test]
#[ignore = "needs root: BPF or network namespaces (cargo xtask test runs it)"]
fn counters_split_over_backends() {
    if !steer_tests::require_root() {
        return;
    }
    let mut rig = Rig::new(BASIC);
    let mut want: BTreeMap<&str, Counters> = BTreeMap::new();
    let mut total = Counters::default();
    for i in 0..60u32 {
        let p = tcp4(client_n(i), 40000 + i as u16, VIP_POOL, 80).payload_len(i as usize);
        let len = p.build().len() as u64;
        for pkt in 0..2 {
            let (o, got) = rig.outer("pool flow", &p);
            let be = v4(o.dst());
            assert_frame_eq("pool flow", &got, &ipip(&p, be));
            let c = want.entry(backend_name(be.into())).or_default();
            c.packets += 1;
            c.bytes += len;
            total.packets += 1;
            total.bytes += len;
            if pkt == 0 {
                c.new_flows += 1;
                total.new_flows += 1;
            }
        }
    }
    assert!(want.len() > 1, "60 flows all went to {want:?}");
    for b in POOL_BACKENDS {
        let got = rig.backend("pool", b);
        let w = want.get(b).copied().unwrap_or_default();
        assert_eq!(got, w, "counters of {b} in pool");
    }
    assert_eq!(rig.service("pool"), total, "counters of pool");
}

// ---------------------------------------------------------------------------
// Source MAC (hardening item 17): transmitted frames carry the interface's
// own MAC (here, with no interface, `dataplane.source_mac`), never the
// frame's old destination, which may be broadcast or multicast.

/// basic.toml without `source_mac`.
fn without_source_mac(text: &str) -> String {
    let out: String = text
        .lines()
        .filter(|l| !l.starts_with("source_mac"))
        .map(|l| format!("{l}\n"))
        .collect();
    assert_ne!(out.len(), text.len(), "the fixture sets source_mac");
    out
}

#[test]
#[ignore = "needs root: BPF or network namespaces (cargo xtask test runs it)"]
fn a_broadcast_or_multicast_destination_is_never_sent_as_the_source() {
    if !steer_tests::require_root() {
        return;
    }
    let mut rig = Rig::new(BASIC);
    // The issue's reproducer: a SYN to a VIP sent to ff:ff:ff:ff:ff:ff.
    let syn = tcp4(CLIENT, 40000, VIP_WEB, 80).dst_mac([0xff; 6]);
    let got = rig.expect_tx("SYN to the broadcast MAC", &syn, &ipip(&syn, EU1));
    assert_eq!(&got[6..12], &SOURCE_MAC);
    // IPv4 and IPv6 multicast MACs, an all-zero one, and (IPv6 outer) a
    // broadcast one.
    let mc4 = udp4(CLIENT, 5353, VIP_WEB, 53).dst_mac([0x01, 0x00, 0x5e, 0, 0, 0x0a]);
    rig.expect_tx("UDP to an IPv4 multicast MAC", &mc4, &ipip(&mc4, EU1));
    let zero = tcp4(CLIENT, 40001, VIP_WEB, 80).dst_mac([0; 6]);
    rig.expect_tx("TCP to the zero MAC", &zero, &ipip(&zero, EU1));
    let mc6 = tcp6(CLIENT6, 40000, VIP6, 443).dst_mac([0x33, 0x33, 0, 0, 0, 0x10]);
    rig.expect_tx("6in6 to an IPv6 multicast MAC", &mc6, &ip6(&mc6, V6_1));
    let bc46 = tcp4(CLIENT, 40000, VIP_MIXED, 443).dst_mac([0xff; 6]);
    rig.expect_tx("4in6 to the broadcast MAC", &bc46, &ip6(&bc46, V6_1));
}

#[test]
#[ignore = "needs root: BPF or network namespaces (cargo xtask test runs it)"]
fn without_a_known_source_mac_frames_are_dropped_not_sent() {
    if !steer_tests::require_root() {
        return;
    }
    let mut rig = Rig::new(&without_source_mac(BASIC));
    let syn = tcp4(CLIENT, 40000, VIP_WEB, 80).dst_mac([0xff; 6]);
    rig.expect_drop("no source MAC", &syn.build(), DropReason::NoSourceMac);
    let p6 = tcp6(CLIENT6, 40000, VIP6, 443);
    rig.expect_drop("no source MAC (6in6)", &p6.build(), DropReason::NoSourceMac);
    assert_eq!(
        rig.service("web").packets,
        0,
        "a dropped frame is not forwarded"
    );
    // Traffic that is not for a VIP still passes.
    rig.expect_pass("not a VIP", &tcp4(CLIENT, 40000, OTHER4, 80).build());
    // Setting it (a reload) makes the same packets go out.
    rig.reapply(BASIC);
    rig.expect_tx("source MAC set", &syn, &ipip(&syn, EU1));
}

// ---------------------------------------------------------------------------
// Jumbo frames (hardening item 18): the program is multi-buffer aware, so a
// frame larger than one page (BPF_PROG_TEST_RUN, like a driver, puts what
// does not fit into fragments) is handled up to the configured MTU.

/// basic.toml with `mtu = 9216`, the largest steer accepts.
fn jumbo_config() -> String {
    BASIC.replacen("[dataplane]\n", "[dataplane]\nmtu = 9216\n", 1)
}

#[test]
#[ignore = "needs root: BPF or network namespaces (cargo xtask test runs it)"]
fn jumbo_frames_up_to_the_mtu_are_encapsulated_whole() {
    if !steer_tests::require_root() {
        return;
    }
    let mut rig = Rig::new(&jumbo_config());
    let mut bytes = 0u64;
    // Just above one page's worth of packet data, then up to the MTU: an
    // IPv4 packet of 9196 bytes + 20 outer = 9216.
    for (i, ip_len) in [3600usize, 4096, 8000, 9196].into_iter().enumerate() {
        let p = tcp4(CLIENT, 41000 + i as u16, VIP_WEB, 80).payload_len(ip_len - 40);
        assert_eq!(p.ip_len(), ip_len);
        let got = rig.expect_tx(&format!("{ip_len}-byte IPv4 packet"), &p, &ipip(&p, EU1));
        assert_eq!(got.len(), 14 + 20 + ip_len);
        bytes += p.build().len() as u64;
    }
    // Byte counters count the whole frame, not only its first buffer.
    let web = rig.service("web");
    assert_eq!((web.packets, web.bytes), (4, bytes));
    assert_eq!(rig.backend("web", "eu-1").bytes, bytes);
    // 6in6 behind a VLAN tag, and a trailer in the last fragment that is cut.
    let p6 = tcp6(CLIENT6, 40000, VIP6, 443)
        .vlan(Vlan::dot1q(7))
        .payload_len(9176 - 60);
    assert_eq!(p6.ip_len(), 9176);
    rig.expect_tx("9176-byte IPv6 packet", &p6, &ip6(&p6, V6_1));
    let trailer = tcp4(CLIENT, 42000, VIP_WEB, 80)
        .payload_len(6000)
        .trailer(pattern(20));
    let got = rig.expect_tx("jumbo + 20-byte trailer", &trailer, &ipip(&trailer, EU1));
    assert_eq!(got.len(), 14 + 20 + 6040);
}

#[test]
#[ignore = "needs root: BPF or network namespaces (cargo xtask test runs it)"]
fn jumbo_frames_above_the_mtu_are_too_big() {
    if !steer_tests::require_root() {
        return;
    }
    let mut rig = Rig::new(&jumbo_config());
    // 9197 + 20 = 9217 > 9216.
    // The reply quotes the first 548 bytes of the first buffer; the
    // frame's fragments are cut.
    let p = tcp4(CLIENT, 40000, VIP_WEB, 80).payload_len(9197 - 40);
    let got = rig.expect_pmtu("9217 bytes with the outer header", &p, ENC, 9196);
    assert_eq!(got.len(), 14 + 576);
    let p6 = tcp6(CLIENT6, 40000, VIP6, 443)
        .vlan(Vlan::dot1q(7))
        .payload_len(9177 - 60);
    let got = rig.expect_pmtu("9217 bytes of 6in6", &p6, ENC, 9176);
    assert_eq!(got.len(), 18 + 1280);
    // The default MTU (1500) with a 4000-byte frame: too big, not
    // truncated.
    let mut small = Rig::new(BASIC);
    let p = tcp4(CLIENT, 40000, VIP_WEB, 80).payload_len(4000);
    small.expect_pmtu("4040 bytes at MTU 1500", &p, ENC, 1480);
}

// ---------------------------------------------------------------------------
// Counters of a removed service do not carry over (hardening item 8).

const SWAP_A: &str = r#"
[dataplane]
next_hop_mac = "02:00:00:00:00:fe"
source_mac = "02:00:00:00:00:5e"
encap_source_v4 = "198.18.0.1/32"
maglev_table_size = 251
conntrack_size = 4096
max_tables = 4
max_reals = 8

[[regions]]
name = "eu"

[[backends]]
name = "eu-1"
address = "192.0.2.11"
region = "eu"

[[backends]]
name = "eu-2"
address = "192.0.2.12"
region = "eu"

[[services]]
name = "old"
vip = "203.0.113.10"
port = 80
protocol = "tcp"
backends = ["eu-1"]
"#;

#[test]
#[ignore = "needs root: BPF or network namespaces (cargo xtask test runs it)"]
fn a_new_service_reusing_a_removed_ones_ids_starts_from_zero() {
    if !steer_tests::require_root() {
        return;
    }
    let mut rig = Rig::new(SWAP_A);
    for i in 0..5 {
        let p = tcp4(client_n(i), 40000, VIP_WEB, 80);
        rig.expect_tx("traffic of the old service", &p, &ipip(&p, EU1));
    }
    assert_eq!(rig.service("old").packets, 5);
    assert_eq!(rig.backend("old", "eu-1").packets, 5);
    // Passive counters too: a repeated SYN and a handshake.
    let syn = tcp4(CLIENT, 41000, VIP_WEB, 80).syn();
    rig.expect_tx("SYN", &syn, &ipip(&syn, EU1));
    rig.expect_tx("SYN again", &syn, &ipip(&syn, EU1));
    let ack = tcp4(CLIENT, 41000, VIP_WEB, 80);
    rig.expect_tx("ACK", &ack, &ipip(&ack, EU1));
    assert_eq!(
        rig.passive("old", "eu-1"),
        Passive {
            repeated_syns: 1,
            handshakes: 1
        }
    );
    let before = rig.dp.ledger().services["old"].clone();

    // "old" goes, "new" (another VIP and backend) comes in the same reload.
    let swapped = SWAP_A
        .replace("name = \"old\"", "name = \"new\"")
        .replace("vip = \"203.0.113.10\"", "vip = \"203.0.113.60\"")
        .replace("backends = [\"eu-1\"]", "backends = [\"eu-2\"]");
    rig.reapply(&swapped);
    let after = rig.dp.ledger().services["new"].clone();
    assert_eq!(
        after.vip_id, before.vip_id,
        "the test needs the VIP id reused"
    );
    assert_eq!(
        after.reals["eu-2"], before.reals["eu-1"],
        "the test needs the real id reused"
    );
    assert_eq!(rig.service("new"), Counters::default());
    assert_eq!(rig.backend("new", "eu-2"), Counters::default());
    assert_eq!(rig.passive("new", "eu-2"), Passive::default());
    // And the new service counts from zero.
    let p = tcp4(CLIENT, 40000, VIP_SOLO, 80).payload_len(10);
    rig.expect_tx("traffic of the new service", &p, &ipip(&p, EU2));
    let c = rig.service("new");
    assert_eq!(
        (c.packets, c.bytes, c.new_flows),
        (1, p.build().len() as u64, 1)
    );
}

// ---------------------------------------------------------------------------
// Path-MTU replies (issue 12): a packet too big for the MTU once
// encapsulated is answered with an ICMP fragmentation-needed (IPv4) or
// packet-too-big (IPv6), byte-exact against `expect_pmtu_reply`.

#[test]
#[ignore = "needs root: BPF or network namespaces (cargo xtask test runs it)"]
fn pmtu_replies_for_ipip_6in6_and_4in6_are_byte_exact() {
    if !steer_tests::require_root() {
        return;
    }
    let mut rig = Rig::new(BASIC);
    // IPIP: next-hop MTU 1500 - 20.
    for (i, p) in [
        tcp4(CLIENT, 40000, VIP_WEB, 80).payload_len(1460),
        tcp4(CLIENT, 40001, VIP_WEB, 80)
            .payload_len(1500)
            .vlan(Vlan::dot1q(42)),
        tcp4(CLIENT, 40002, VIP_WEB, 80)
            .payload_len(1500)
            .vlan(Vlan::dot1ad(1))
            .vlan(Vlan::dot1q(2))
            .tos(0xb8),
        // Options are quoted as they came.
        tcp4(CLIENT, 40003, VIP_WEB, 80)
            .v4_options(vec![1, 1, 1, 0, 7, 7, 4, 0, 0, 0, 0, 0])
            .payload_len(1450),
        udp4(client_n(9), 5353, VIP_WEB, 53).payload_len(1473 - 8),
        // Padding after the IP packet is not quoted.
        tcp4(CLIENT, 40004, VIP_WEB, 80)
            .payload_len(1442)
            .trailer(pattern(6)),
    ]
    .into_iter()
    .enumerate()
    {
        rig.expect_pmtu(&format!("IPIP case {i}"), &p, ENC, 1480);
    }
    // 6in6: MTU 1500 - 40, quote up to 1232 bytes.
    for (i, p) in [
        tcp6(CLIENT6, 40000, VIP6, 443).payload_len(1401),
        tcp6(client6_n(3), 40001, VIP6, 443)
            .payload_len(1440)
            .vlan(Vlan::dot1ad(5))
            .vlan(Vlan::dot1q(6))
            .tos(0x28),
        tcp6(CLIENT6, 40002, VIP6, 443)
            .ext(Ext::dest_opts())
            .payload_len(1440),
        udp6(CLIENT6, 5353, VIP6, 53).payload_len(1413),
    ]
    .into_iter()
    .enumerate()
    {
        rig.expect_pmtu(&format!("6in6 case {i}"), &p, ENC, 1460);
    }
    // 4in6: an ICMPv4 reply announcing 1500 - 40.
    for (i, p) in [
        tcp4(CLIENT, 40000, VIP_MIXED, 443).payload_len(1421),
        tcp4(CLIENT, 40001, VIP_MIXED, 443)
            .payload_len(1460)
            .vlan(Vlan::dot1q(9)),
    ]
    .into_iter()
    .enumerate()
    {
        rig.expect_pmtu(&format!("4in6 case {i}"), &p, ENC, 1460);
    }
    // Replies are no forwarded traffic.
    assert_eq!(rig.service("web").packets, 0);
    assert_eq!(rig.service("mixed").packets, 0);
}

#[test]
#[ignore = "needs root: BPF or network namespaces (cargo xtask test runs it)"]
fn pmtu_reply_at_the_smallest_mtu_quotes_the_whole_packet() {
    if !steer_tests::require_root() {
        return;
    }
    let mut rig = Rig::new(&BASIC.replacen("[dataplane]\n", "[dataplane]\nmtu = 576\n", 1));
    // 4in6: 540 + 40 > 576, and 540 < 548: the whole packet is quoted.
    let p = tcp4(CLIENT, 40000, VIP_MIXED, 443).payload_len(500);
    assert_eq!(p.ip_len(), 540);
    let got = rig.expect_pmtu("4in6 at MTU 576", &p, ENC, 536);
    assert_eq!(got.len(), 14 + 28 + 540);
    // An odd length (the checksum's last byte alone).
    let p = tcp4(CLIENT, 40001, VIP_MIXED, 443).payload_len(499);
    assert_eq!(p.ip_len(), 539);
    rig.expect_pmtu("odd 4in6 at MTU 576", &p, ENC, 536);
    let p6 = udp6(CLIENT6, 5353, VIP6, 53).payload_len(551);
    assert_eq!(p6.ip_len(), 599);
    let got = rig.expect_pmtu("odd 6in6 at MTU 576", &p6, ENC, 536);
    assert_eq!(got.len(), 14 + 48 + 599);
}

#[test]
#[ignore = "needs root: BPF or network namespaces (cargo xtask test runs it)"]
fn pmtu_ipv4_without_df_is_dropped_not_answered() {
    if !steer_tests::require_root() {
        return;
    }
    let mut rig = Rig::new(BASIC);
    // DF clear, not a fragment (MF clear, offset 0).
    for p in [
        tcp4(CLIENT, 40000, VIP_WEB, 80)
            .payload_len(1460)
            .v4_fragment(false, 0),
        tcp4(CLIENT, 40001, VIP_MIXED, 443)
            .payload_len(1460)
            .v4_fragment(false, 0),
    ] {
        rig.expect_drop("too big, DF clear", &p.build(), DropReason::TooBigDfClear);
    }
    assert_eq!(rig.paths()[Branch::PmtuReply as usize], 0);
}

#[test]
#[ignore = "needs root: BPF or network namespaces (cargo xtask test runs it)"]
fn pmtu_never_answers_icmp_errors_fragments_or_bad_sources() {
    if !steer_tests::require_root() {
        return;
    }
    let mut rig = Rig::new(BASIC);
    // ICMP errors for a VIP that are too big to forward: no error about an
    // error.
    let q4 = tcp4(VIP_POOL, 80, CLIENT, 40000)
        .payload_len(1460)
        .ip_packet();
    let icmp4 = frag_needed4(ROUTER4, VIP_POOL, 1400, q4);
    assert!(icmp4.ip_len() > 1480);
    rig.expect_drop("a too-big ICMPv4 error", &icmp4.build(), DropReason::TooBig);
    let q6 = tcp6(VIP6_POOL, 80, CLIENT6, 40000)
        .payload_len(1440)
        .ip_packet();
    let icmp6 = packet_too_big6(ROUTER6, VIP6_POOL, 1280, q6);
    assert!(icmp6.ip_len() > 1460);
    rig.expect_drop("a too-big ICMPv6 error", &icmp6.build(), DropReason::TooBig);

    // Fragments, first or not, are never forwarded nor answered.
    for p in [
        tcp4(CLIENT, 40000, VIP_WEB, 80)
            .payload_len(1460)
            .v4_fragment(true, 0),
        udp4(CLIENT, 5353, VIP_WEB, 53)
            .payload_len(1460)
            .v4_fragment(false, 185),
        udp6(CLIENT6, 5353, VIP6, 53)
            .ext(Ext::Fragment {
                offset: 0,
                more: true,
                ident: 7,
            })
            .payload_len(1440),
    ] {
        rig.expect_drop("a too-big fragment", &p.build(), DropReason::Fragment);
    }

    // Sources a reply must not go to.
    for src in [
        "0.0.0.0",
        "0.1.2.3",
        "127.0.0.1",
        "224.0.0.1",
        "239.255.255.250",
        "240.0.0.1",
        "255.255.255.255",
    ] {
        let src: Ipv4Addr = src.parse().unwrap();
        let p = tcp4(src, 40000, VIP_WEB, 80).payload_len(1460);
        rig.expect_drop(
            &format!("too big from {src}"),
            &p.build(),
            DropReason::TooBig,
        );
    }
    for src in ["::", "::1", "ff02::1", "ff0e::1234"] {
        let src: Ipv6Addr = src.parse().unwrap();
        let p = tcp6(src, 40000, VIP6, 443).payload_len(1440);
        rig.expect_drop(
            &format!("too big from {src}"),
            &p.build(),
            DropReason::TooBig,
        );
    }
    // A broadcast or multicast source MAC.
    for mac in [[0xff; 6], [0x01, 0x00, 0x5e, 0, 0, 1], [0; 6]] {
        let mut p = tcp4(CLIENT, 40000, VIP_WEB, 80).payload_len(1460);
        p.src_mac = mac;
        rig.expect_drop(
            &format!("too big from MAC {mac:02x?}"),
            &p.build(),
            DropReason::TooBig,
        );
    }
    assert_eq!(rig.paths()[Branch::PmtuReply as usize], 0);
    // The same packets from a unicast client are answered.
    let p = tcp4(CLIENT, 40000, VIP_WEB, 80).payload_len(1460);
    rig.expect_pmtu("too big from a client", &p, ENC, 1480);
}

/// Pins the calling thread to one CPU, so that every BPF_PROG_TEST_RUN it
/// makes runs on that CPU (the rate limit is per CPU). Returns the CPU.
fn pin_to_one_cpu() -> usize {
    // SAFETY: a zeroed cpu_set_t is an empty set; CPU_SET and
    // sched_getaffinity/sched_setaffinity only read and write it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        assert_eq!(
            libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set),
            0,
            "sched_getaffinity failed"
        );
        let cpu = (0..libc::CPU_SETSIZE as usize)
            .find(|&c| libc::CPU_ISSET(c, &set))
            .expect("no CPU in this thread's affinity mask");
        let mut one: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut one);
        assert_eq!(
            libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &one),
            0,
            "sched_setaffinity to CPU {cpu} failed"
        );
        cpu
    }
}

#[test]
#[ignore = "needs root: BPF or network namespaces (cargo xtask test runs it)"]
fn pmtu_replies_are_rate_limited_per_cpu() {
    if !steer_tests::require_root() {
        return;
    }
    // Each test runs on its own thread: pinning it affects no other test.
    pin_to_one_cpu();
    let mut rig = Rig::new(BASIC);
    // docs/operations.md: 100 replies a second per CPU, bursts of 100.
    let (rate, burst) = (100u64, 100u64);
    let p = tcp4(CLIENT, 40000, VIP_WEB, 80).payload_len(1460);
    let frame = p.build();
    let want = expect_pmtu_reply(&p, ENC, 1480);
    let sent = 400u64;
    let start = std::time::Instant::now();
    let (mut replies, mut limited) = (0u64, 0u64);
    for i in 0..sent {
        let before = rig.drops();
        let out = rig.run(&frame);
        match out.verdict {
            Verdict::Tx => {
                assert_frame_eq(&format!("reply {i}"), &out.data, &want);
                replies += 1;
            }
            Verdict::Drop => {
                let after = rig.drops();
                assert_eq!(
                    after[DropReason::TooBigRateLimited as usize]
                        - before[DropReason::TooBigRateLimited as usize],
                    1,
                    "packet {i} dropped, but not as rate limited: {}",
                    drop_delta_text(&before, &after)
                );
                limited += 1;
            }
            other => panic!("packet {i}: {other:?}"),
        }
    }
    let elapsed = start.elapsed();
    // The bucket refills one reply per 1/rate seconds while we send.
    let refill = (elapsed.as_secs_f64() * rate as f64).ceil() as u64 + 1;
    assert!(
        replies >= burst && replies <= burst + refill,
        "{replies} replies to {sent} packets in {elapsed:?}: expected {burst} to {}",
        burst + refill
    );
    assert_eq!(replies + limited, sent);
    assert!(limited > 0, "nothing was rate limited in {elapsed:?}");
    let drops = rig.drops();
    assert_eq!(drops[DropReason::TooBigRateLimited as usize], limited);
    assert_eq!(rig.paths()[Branch::PmtuReply as usize], replies);
    // After a pause long enough to refill a few tokens, replies resume.
    std::thread::sleep(std::time::Duration::from_millis(50));
    rig.expect_pmtu("after a pause", &p, ENC, 1480);
}

/// `BASIC` with `lines` added to `[dataplane]`.
fn basic_with(lines: &str) -> String {
    BASIC.replacen("[dataplane]\n", &format!("[dataplane]\n{lines}"), 1)
}

#[test]
#[ignore = "needs root: BPF or network namespaces (cargo xtask test runs it)"]
fn pmtu_reply_rate_and_burst_come_from_the_config() {
    if !steer_tests::require_root() {
        return;
    }
    pin_to_one_cpu();
    // One reply a second, bursts of 3: packets sent back to back within
    // the first second get exactly 3 replies, the rest are rate limited.
    let (rate, burst) = (1u64, 3u64);
    let mut rig = Rig::new(&basic_with(&format!(
        "pmtu_reply_rate = {rate}\npmtu_reply_burst = {burst}\n"
    )));
    let p = tcp4(CLIENT, 40000, VIP_WEB, 80).payload_len(1460);
    let frame = p.build();
    let want = expect_pmtu_reply(&p, ENC, 1480);
    let sent = 10u64;
    let start = std::time::Instant::now();
    let mut verdicts = Vec::new();
    for i in 0..sent {
        let out = rig.run(&frame);
        if matches!(out.verdict, Verdict::Tx) {
            assert_frame_eq(&format!("reply {i}"), &out.data, &want);
        }
        verdicts.push(out.verdict);
    }
    let elapsed = start.elapsed();
    assert!(
        elapsed.as_secs_f64() < 1.0 / rate as f64,
        "sending {sent} packets took {elapsed:?}: the bucket refilled, the count is not exact"
    );
    let replies: Vec<usize> = (0..verdicts.len())
        .filter(|&i| matches!(verdicts[i], Verdict::Tx))
        .collect();
    assert_eq!(
        replies,
        (0..burst as usize).collect::<Vec<_>>(),
        "the first {burst} packets are answered, then none: {verdicts:?}"
    );
    assert!(
        verdicts[burst as usize..]
            .iter()
            .all(|v| matches!(v, Verdict::Drop)),
        "{verdicts:?}"
    );
    assert_eq!(rig.paths()[Branch::PmtuReply as usize], burst);
    let drops = rig.drops();
    assert_eq!(
        drops[DropReason::TooBigRateLimited as usize],
        sent - burst,
        "{}",
        drop_delta_text(&Default::default(), &drops)
    );
    assert_eq!(drops.iter().sum::<u64>(), sent - burst);
}

#[test]
#[ignore = "needs root: BPF or network namespaces (cargo xtask test runs it)"]
fn pmtu_reply_rate_0_never_replies_and_a_reload_turns_replies_on_and_off() {
    if !steer_tests::require_root() {
        return;
    }
    let off = basic_with("pmtu_reply_rate = 0\n");
    let mut rig = Rig::new(&off);
    let p4 = tcp4(CLIENT, 40000, VIP_WEB, 80).payload_len(1460);
    let p6 = tcp6(CLIENT6, 40000, VIP6, 443).payload_len(1440);
    for i in 0..5 {
        rig.expect_drop(
            &format!("IPv4 too big, rate 0 ({i})"),
            &p4.build(),
            DropReason::TooBigRateLimited,
        );
        rig.expect_drop(
            &format!("IPv6 too big, rate 0 ({i})"),
            &p6.build(),
            DropReason::TooBigRateLimited,
        );
    }
    // DF clear keeps its own reason.
    rig.expect_drop(
        "too big, DF clear, rate 0",
        &p4.clone().v4_fragment(false, 0).build(),
        DropReason::TooBigDfClear,
    );
    assert_eq!(rig.paths()[Branch::PmtuReply as usize], 0);
    // A reload applies the rate without a restart: replies resume ...
    rig.reapply(BASIC);
    rig.expect_pmtu("after a reload to the default rate", &p4, ENC, 1480);
    rig.expect_pmtu("IPv6 after the reload", &p6, ENC, 1460);
    // ... and stop again.
    rig.reapply(&off);
    rig.expect_drop(
        "after a reload to rate 0",
        &p4.build(),
        DropReason::TooBigRateLimited,
    );
    assert_eq!(rig.paths()[Branch::PmtuReply as usize], 2);
}

// ---------------------------------------------------------------------------
// `steer explain` live (issue 12): a flow whose SYN was seen but not its
// next packet has no conntrack entry, only its RECENT_SYN slot; explain
// reads the slot and names the backend the SYN was sent to.

impl Rig {
    /// What the running daemon's `steer explain tcp CLIENT:SPORT VIP:80`
    /// says about conntrack for this data plane: the same function
    /// (`conntrack_live`) over a counter reader and the ledger.
    fn explain_live(&self, sport: u16, vip: Ipv4Addr) -> (Conntrack, String) {
        let q =
            parse_query("tcp", &format!("{CLIENT}:{sport}"), &format!("{vip}:80")).expect("query");
        let rt = Runtime {
            backends: BackendState {
                down: self.down.clone(),
                drained: BTreeSet::new(),
            },
            ..Default::default()
        };
        let planned = steer::policy::plan(&self.cfg, &rt);
        let reader = self.dp.counter_reader().expect("counter reader");
        let ct = conntrack_live(&self.cfg, &planned, &self.dp.ledger(), &reader, &q);
        let text = explain(&self.cfg, &planned, q, ct.clone()).to_string();
        (ct, text)
    }
}

#[test]
#[ignore = "needs root: BPF or network namespaces (cargo xtask test runs it)"]
fn explain_live_reports_a_pending_handshake_then_the_conntrack_entry() {
    if !steer_tests::require_root() {
        return;
    }
    let mut rig = Rig::new(BASIC);
    let syn = tcp4(CLIENT, 43000, VIP_POOL, 80).syn();
    let ack = tcp4(CLIENT, 43000, VIP_POOL, 80);
    let (ct, text) = rig.explain_live(43000, VIP_POOL);
    assert_eq!(ct, Conntrack::None, "{text}");

    // The SYN: where it went is read from the program's output.
    let (o, _) = rig.outer("SYN", &syn);
    let went = backend_name(o.dst());
    let (ct, text) = rig.explain_live(43000, VIP_POOL);
    assert_eq!(
        ct,
        Conntrack::HandshakePending {
            backend: went.to_string(),
            next: Pending::Follows
        },
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "conntrack   handshake pending: the SYN went to {went}; the flow's next packet \
             follows it (overrides the choice above)"
        )),
        "{text}"
    );
    // Explaining reads only: the slot is still there, the ACK follows it
    // into conntrack.
    let promoted = rig.paths()[Branch::SynPromoted as usize];
    rig.expect_to("ACK", &ack, went);
    assert_eq!(rig.paths()[Branch::SynPromoted as usize], promoted + 1);
    let (ct, text) = rig.explain_live(43000, VIP_POOL);
    assert_eq!(
        ct,
        Conntrack::Entry {
            backend: went.to_string(),
            usable: true
        },
        "{text}"
    );
    assert!(
        text.contains(&format!("conntrack   an entry pins this flow to {went}:")),
        "{text}"
    );
    assert!(!text.contains("handshake pending"), "{text}");

    // A second flow whose SYN's backend goes down before its ACK: explain
    // says it is re-selected, and the ACK is (`reselect`, to the table's
    // current choice).
    let syn = tcp4(CLIENT, 43001, VIP_POOL, 80).syn();
    let ack = tcp4(CLIENT, 43001, VIP_POOL, 80);
    let (o, _) = rig.outer("second SYN", &syn);
    let went = backend_name(o.dst());
    rig.down.insert(went.to_string());
    rig.reapply(BASIC);
    let (ct, text) = rig.explain_live(43001, VIP_POOL);
    assert_eq!(
        ct,
        Conntrack::HandshakePending {
            backend: went.to_string(),
            next: Pending::Down
        },
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "conntrack   handshake pending: the SYN went to {went}, which is down: the flow's \
             next packet is re-selected as above"
        )),
        "{text}"
    );
    let now = rig.table_says("pool", &ack);
    assert_ne!(now, went);
    let reselected = rig.paths()[Branch::Reselect as usize];
    rig.expect_to("second ACK, its SYN's backend down", &ack, now);
    assert_eq!(rig.paths()[Branch::Reselect as usize], reselected + 1);
}
