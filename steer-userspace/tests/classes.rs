//! Client classes through the real XDP program (BPF_PROG_TEST_RUN): a new
//! flow's client class picks its service's table; established flows never
//! move when classes or class tables change; `RESIDENCY_DROP` and
//! `NO_REAL` slots drop under their own reasons; a table may send new flows
//! to a backend that is down (panic, fail-open) while conntrack still
//! re-selects established flows whose backend went down. Privileged.

mod common;
use common::require_root;

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::sync::Arc;

use steer::dataplane::{
    Dataplane, DesiredBackend, DesiredClasses, DesiredService, DesiredTable, Globals, Limits,
    TableSlots, Verdict,
};
use steer_common::{Branch, DropReason, NO_REAL, RESIDENCY_DROP};

const RING: u32 = 251;

fn limits() -> Limits {
    Limits {
        ring_size: RING,
        max_tables: 16,
        max_reals: 16,
        conntrack_size: 4096,
        conntrack_size_v6: 4096,
    }
}

fn globals() -> Globals {
    Globals {
        mtu: 1500,
        pmtu_reply_rate: 100,
        pmtu_reply_burst: 100,
        next_hop_mac: [2, 0, 0, 0, 0, 0xfe],
        ttl: 64,
        encap_source_v4: Some(([198, 18, 0, 1], 32)),
        encap_source_v6: Some((
            [
                0x20, 1, 0x0d, 0xb8, 0xff, 0xff, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
            ],
            112,
        )),
        source_mac: Some([2, 0, 0, 0, 0, 0x5e]),
    }
}

fn backend(name: &str, address: &str, up: bool) -> DesiredBackend {
    DesiredBackend {
        name: name.into(),
        address: address.parse().expect("address"),
        weight: 1,
        up,
    }
}

/// Every slot the same value: a backend index or a marker.
fn all(v: u32) -> TableSlots {
    TableSlots::Slots(Arc::new(vec![v; RING as usize]))
}

fn table(class: u8, slots: TableSlots) -> DesiredTable {
    DesiredTable { class, slots }
}

/// Backend indexes of "web" (IPv4).
const B0: u32 = 0;
const B1: u32 = 1;
const B2: u32 = 2;
const B3: u32 = 3;

/// "web" (IPv4) and "web6" (IPv6), with their tables: `web_tables` and
/// `down` (names) vary per step.
fn services(web_tables: Vec<DesiredTable>, down: &[&str]) -> Vec<DesiredService> {
    let up = |n: &str| !down.contains(&n);
    vec![
        DesiredService {
            name: "web".into(),
            vip: "203.0.113.10".parse().expect("vip"),
            port: 80,
            protocol: 6,
            client_affinity: false,
            backends: vec![
                backend("b0", "192.0.2.10", up("b0")),
                backend("b1", "192.0.2.11", up("b1")),
                backend("b2", "192.0.2.12", up("b2")),
                backend("b3", "192.0.2.13", up("b3")),
            ],
            tables: web_tables,
        },
        DesiredService {
            name: "web6".into(),
            vip: "2001:db8:ff::10".parse().expect("vip"),
            port: 80,
            protocol: 6,
            client_affinity: false,
            backends: vec![
                backend("c0", "2001:db8:1::10", true),
                backend("c1", "2001:db8:1::11", true),
            ],
            // Class 2 has no table here: its clients use the default.
            tables: vec![table(0, all(0)), table(1, all(1))],
        },
    ]
}

fn classes() -> DesiredClasses {
    let p4 = |a: [u8; 4], len: u8, class: u8| (a, len, class);
    let p6 = |a: &str, len: u8, class: u8| {
        let ip: std::net::Ipv6Addr = a.parse().expect("v6");
        (ip.octets(), len, class)
    };
    DesiredClasses {
        v4: vec![
            p4([198, 51, 100, 0], 24, 1),
            // Longest prefix wins: 10.1/16 is class 1 inside 10/8's class 2.
            p4([10, 0, 0, 0], 8, 2),
            p4([10, 1, 0, 0], 16, 1),
            p4([172, 16, 0, 0], 12, 3),
            p4([100, 64, 0, 0], 10, 4),
        ],
        v6: vec![
            p6("2001:db8::", 32, 2),
            p6("2001:db8:aaaa::", 48, 1),
            // Longer inside 2001:db8:aaaa::/48 (that /48 is then looked
            // up in the trie, not among the exact /48s).
            p6("2001:db8:aaaa:5500::", 56, 2),
            // An exact /48 with nothing inside.
            p6("2001:db8:cccc::", 48, 1),
            // Expanded into its two /48s (the /32 is not: too many).
            p6("2001:db8:dd00::", 47, 1),
        ],
    }
}

/// The web tables of the first step: default b0, class 1 b1, class 2
/// residency-drop, class 3 no backend, class 4 the down b3.
fn first_tables() -> Vec<DesiredTable> {
    vec![
        table(0, all(B0)),
        table(1, all(B1)),
        table(2, all(RESIDENCY_DROP)),
        table(3, all(NO_REAL)),
        table(4, all(B3)),
    ]
}

fn tcp(src: IpAddr, dst: IpAddr, sport: u16, syn: bool) -> Vec<u8> {
    let eth = etherparse::PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2]);
    let b = match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => eth.ipv4(s.octets(), d.octets(), 64),
        (IpAddr::V6(s), IpAddr::V6(d)) => eth.ipv6(s.octets(), d.octets(), 64),
        _ => panic!("mixed families"),
    };
    let b = b.tcp(sport, 80, 1, 1024);
    let b = if syn { b.syn() } else { b.ack(1) };
    let mut v = Vec::new();
    b.write(&mut v, &[]).expect("build");
    v
}

const VIP4: &str = "203.0.113.10";
const VIP6: &str = "2001:db8:ff::10";

/// Where the program sends this segment: the outer destination, or the
/// verdict if it is not transmitted.
fn send(dp: &Dataplane, client: &str, sport: u16, syn: bool) -> Result<IpAddr, Verdict> {
    let src: IpAddr = client.parse().expect("client");
    let dst: IpAddr = if src.is_ipv4() { VIP4 } else { VIP6 }
        .parse()
        .expect("vip");
    let out = dp.run(&tcp(src, dst, sport, syn)).expect("run");
    if out.verdict != Verdict::Tx {
        return Err(out.verdict);
    }
    // The outer header (no VLAN tags here): IPv4 or IPv6 by version.
    let ip = &out.data[14..];
    Ok(match ip[0] >> 4 {
        4 => {
            let h = etherparse::Ipv4HeaderSlice::from_slice(ip).expect("outer IPv4");
            IpAddr::from(h.destination())
        }
        6 => {
            let h = etherparse::Ipv6HeaderSlice::from_slice(ip).expect("outer IPv6");
            IpAddr::from(h.destination())
        }
        v => panic!("outer IP version {v}"),
    })
}

fn at(s: &str) -> Result<IpAddr, Verdict> {
    Ok(s.parse().expect("address"))
}

fn load() -> Dataplane {
    Dataplane::load(limits()).expect("load")
}

fn program(dp: &mut Dataplane, web: Vec<DesiredTable>, down: &[&str], c: &Arc<DesiredClasses>) {
    dp.program_with_classes(services(web, down), globals(), c, &BTreeSet::new())
        .expect("program");
}

#[test]
#[ignore = "needs root: BPF or network namespaces (cargo xtask test runs it)"]
fn a_new_flow_uses_its_client_class_table() {
    if !require_root() {
        return;
    }
    let mut dp = load();
    let c = Arc::new(classes());
    program(&mut dp, first_tables(), &["b3"], &c);
    // IPv4: class 1 by /24, class 1 by the longer /16 inside class 2's /8,
    // and an unclassed client on the default table.
    assert_eq!(send(&dp, "198.51.100.7", 40000, true), at("192.0.2.11"));
    assert_eq!(send(&dp, "10.1.2.3", 40000, true), at("192.0.2.11"));
    assert_eq!(send(&dp, "203.0.113.99", 40000, true), at("192.0.2.10"));
    // IPv6: class 1 by /48 (in the trie, and an exact one); class 2 (the
    // /32, and a /56 inside a class-1 /48), which web6 gives no table of
    // its own, and an unclassed client use the default.
    for (client, to) in [
        ("2001:db8:aaaa:1::7", "2001:db8:1::11"),
        ("2001:db8:cccc:1::7", "2001:db8:1::11"),
        ("2001:db8:dd01:1::7", "2001:db8:1::11"),
        ("2001:db8:dd02:1::7", "2001:db8:1::10"),
        ("2001:db8:aaaa:5601::7", "2001:db8:1::11"),
        ("2001:db8:aaaa:5500::7", "2001:db8:1::10"),
    ] {
        assert_eq!(send(&dp, client, 40000, true), at(to), "{client}");
    }
    assert_eq!(
        send(&dp, "2001:db8:bbbb::7", 40000, true),
        at("2001:db8:1::10")
    );
    assert_eq!(send(&dp, "2001:db9::7", 40000, true), at("2001:db8:1::10"));
    // Not a SYN, no conntrack entry: selected the same way.
    assert_eq!(send(&dp, "198.51.100.8", 40001, false), at("192.0.2.11"));
}

#[test]
#[ignore = "needs root: BPF or network namespaces (cargo xtask test runs it)"]
fn residency_and_empty_slots_drop_under_their_own_reasons() {
    if !require_root() {
        return;
    }
    let mut dp = load();
    let c = Arc::new(classes());
    program(&mut dp, first_tables(), &["b3"], &c);
    let before = dp.drop_counts().expect("drops");
    // 10.2/16 is class 2 (10/8): RESIDENCY_DROP.
    assert_eq!(send(&dp, "10.2.0.1", 40000, true), Err(Verdict::Drop));
    assert_eq!(send(&dp, "10.2.0.1", 40001, false), Err(Verdict::Drop));
    // 172.16/12 is class 3: NO_REAL.
    assert_eq!(send(&dp, "172.16.5.5", 40000, true), Err(Verdict::Drop));
    let after = dp.drop_counts().expect("drops");
    let d = |r: DropReason| after[r as usize] - before[r as usize];
    assert_eq!(d(DropReason::Residency), 2);
    assert_eq!(d(DropReason::NoBackend), 1);
    assert_eq!(after.iter().sum::<u64>() - before.iter().sum::<u64>(), 3);
}

#[test]
#[ignore = "needs root: BPF or network namespaces (cargo xtask test runs it)"]
fn established_flows_ignore_class_changes() {
    if !require_root() {
        return;
    }
    let mut dp = load();
    let c = Arc::new(classes());
    program(&mut dp, first_tables(), &["b3"], &c);
    assert_eq!(send(&dp, "198.51.100.7", 40000, true), at("192.0.2.11"));
    assert_eq!(
        send(&dp, "2001:db8:aaaa:1::7", 40000, true),
        at("2001:db8:1::11")
    );
    assert_eq!(
        send(&dp, "2001:db8:cccc:1::7", 40000, true),
        at("2001:db8:1::11")
    );
    // Class 1's web table now points at b2.
    let mut t = first_tables();
    t[1] = table(1, all(B2));
    program(&mut dp, t.clone(), &["b3"], &c);
    assert_eq!(send(&dp, "198.51.100.7", 40000, false), at("192.0.2.11"));
    assert_eq!(send(&dp, "198.51.100.7", 40002, true), at("192.0.2.12"));
    // The classes change: 198.51.100/24 and 2001:db8:aaaa::/48 are gone.
    let mut fewer = classes();
    fewer.v4.retain(|p| p.0 != [198, 51, 100, 0]);
    fewer.v6.retain(|p| p.1 != 48);
    let fewer = Arc::new(fewer);
    program(&mut dp, t, &["b3"], &fewer);
    // Three of the four flows sent only their SYN so far: their first ACK
    // takes the backend from the SYN's RECENT_SYN slot (`syn_promoted`),
    // the fourth hits conntrack. Neither looks at classes or tables.
    let followed = |dp: &Dataplane| {
        let p = dp.path_counts().expect("paths");
        (
            p[Branch::CtHit as usize],
            p[Branch::SynPromoted as usize],
            p[Branch::NewFlow as usize],
        )
    };
    let before = followed(&dp);
    assert_eq!(send(&dp, "198.51.100.7", 40000, false), at("192.0.2.11"));
    assert_eq!(send(&dp, "198.51.100.7", 40002, false), at("192.0.2.12"));
    assert_eq!(
        send(&dp, "2001:db8:aaaa:1::7", 40000, false),
        at("2001:db8:1::11")
    );
    assert_eq!(
        send(&dp, "2001:db8:cccc:1::7", 40000, false),
        at("2001:db8:1::11")
    );
    let after = followed(&dp);
    assert_eq!(after.0 - before.0, 1, "one conntrack hit");
    assert_eq!(
        after.1 - before.1,
        3,
        "three first ACKs took their SYN's slot"
    );
    assert_eq!(after.2, before.2, "none was selected");
    // New flows follow the new classes: the default tables.
    assert_eq!(send(&dp, "198.51.100.7", 40003, true), at("192.0.2.10"));
    assert_eq!(
        send(&dp, "2001:db8:aaaa:1::7", 40003, true),
        at("2001:db8:1::10")
    );
    assert_eq!(
        send(&dp, "2001:db8:cccc:1::7", 40003, true),
        at("2001:db8:1::10")
    );
    // `program` keeps the classes last programmed.
    dp.program(
        services(first_tables(), &["b3"]),
        globals(),
        &BTreeSet::new(),
    )
    .expect("program");
    assert_eq!(send(&dp, "198.51.100.7", 40004, true), at("192.0.2.10"));
    assert_eq!(send(&dp, "10.1.0.1", 40004, true), at("192.0.2.11"));
}

#[test]
#[ignore = "needs root: BPF or network namespaces (cargo xtask test runs it)"]
fn a_table_may_send_new_flows_to_a_down_backend_but_conntrack_reselects() {
    if !require_root() {
        return;
    }
    let mut dp = load();
    let c = Arc::new(classes());
    program(&mut dp, first_tables(), &["b3"], &c);
    // Class 4 (100.64/10): its table names b3, which is down (panic).
    assert_eq!(send(&dp, "100.64.0.1", 40000, true), at("192.0.2.13"));
    // An established flow on b1 (class 1): b1 goes down and the policy
    // moves class 1 to b2. The flow is re-selected onto b2.
    assert_eq!(send(&dp, "198.51.100.7", 40000, true), at("192.0.2.11"));
    let mut t = first_tables();
    t[1] = table(1, all(B2));
    program(&mut dp, t, &["b1", "b3"], &c);
    let reselect = dp.path_counts().expect("paths")[Branch::Reselect as usize];
    assert_eq!(send(&dp, "198.51.100.7", 40000, false), at("192.0.2.12"));
    assert_eq!(
        dp.path_counts().expect("paths")[Branch::Reselect as usize] - reselect,
        1
    );
    // And then stays there.
    assert_eq!(send(&dp, "198.51.100.7", 40000, false), at("192.0.2.12"));
}

#[test]
#[ignore = "needs root: BPF or network namespaces (cargo xtask test runs it)"]
fn a_service_without_tables_is_unchanged_by_classes() {
    if !require_root() {
        return;
    }
    let mut dp = load();
    let c = Arc::new(classes());
    // No tables: one Maglev table over the up backends, as before classes.
    program(&mut dp, vec![], &["b3"], &c);
    let mut seen = BTreeSet::new();
    for port in 0..64u16 {
        let to = send(&dp, "198.51.100.7", 30000 + port, true).expect("forwarded");
        seen.insert(to);
    }
    let want: BTreeSet<IpAddr> = ["192.0.2.10", "192.0.2.11", "192.0.2.12"]
        .iter()
        .map(|a| a.parse().expect("address"))
        .collect();
    assert_eq!(seen, want, "a class-1 client spread over every up backend");
}

/// A unique pin directory and state file, removed (with every pin) on
/// drop.
struct Pins {
    persist: steer::dataplane::Persist,
    state_dir: std::path::PathBuf,
}

impl Pins {
    fn new(name: &str) -> Pins {
        let tag = format!("steer-test-{}-{name}", std::process::id());
        let state_dir = std::env::temp_dir().join(&tag);
        let persist = steer::dataplane::Persist {
            pin_dir: std::path::Path::new("/sys/fs/bpf").join(&tag),
            state_file: state_dir.join("state.json"),
        };
        let _ = Dataplane::remove_pins(&persist);
        let _ = std::fs::remove_dir_all(&state_dir);
        std::fs::create_dir_all(&state_dir).expect("state dir");
        Pins { persist, state_dir }
    }
}

impl Drop for Pins {
    fn drop(&mut self) {
        if let Err(e) = Dataplane::remove_pins(&self.persist) {
            eprintln!("cleanup: remove_pins: {e}");
        }
        let _ = std::fs::remove_dir(&self.persist.pin_dir);
        let _ = std::fs::remove_dir_all(&self.state_dir);
    }
}

fn open(pins: &Pins) -> (Dataplane, bool) {
    match Dataplane::open(limits(), pins.persist.clone()) {
        Ok(x) => x,
        Err(e) => panic!("open: {e}"),
    }
}

/// A restart adopts the class tables, rows and class maps: classed new
/// flows keep their table before the first program, established flows
/// their backend, and the next program rewrites nothing it need not.
#[test]
#[ignore = "needs root: BPF or network namespaces (cargo xtask test runs it)"]
fn class_tables_and_maps_survive_a_restart() {
    if !require_root() {
        return;
    }
    let pins = Pins::new("classes-restart");
    let c = Arc::new(classes());
    let ids = {
        let (mut dp, adopted) = open(&pins);
        assert!(!adopted);
        program(&mut dp, first_tables(), &["b3"], &c);
        assert_eq!(send(&dp, "198.51.100.7", 40000, true), at("192.0.2.11"));
        dp.ledger()
    };
    let (mut dp, adopted) = open(&pins);
    assert!(adopted, "{:?}", dp.discarded_state());
    assert_eq!(dp.ledger(), ids);
    // Before any program: the pinned maps still steer.
    assert_eq!(send(&dp, "198.51.100.7", 40000, false), at("192.0.2.11"));
    assert_eq!(send(&dp, "198.51.100.7", 40001, true), at("192.0.2.11"));
    assert_eq!(send(&dp, "10.2.0.1", 40001, true), Err(Verdict::Drop));
    assert_eq!(
        send(&dp, "2001:db8:aaaa::1", 40001, true),
        at("2001:db8:1::11")
    );
    assert_eq!(
        send(&dp, "2001:db8:cccc::1", 40001, true),
        at("2001:db8:1::11")
    );
    assert_eq!(
        dp.class_table("web", 1).expect("web").expect("class 1"),
        vec![Some("b1".to_string()); RING as usize]
    );
    // The first program after the restart: class 1's table moves to b2,
    // and 198.51.100.0/24 and 2001:db8:aaaa::/48 lose their class. The
    // plan diffs against what the adopted maps hold, so they are removed.
    let mut t = first_tables();
    t[1] = table(1, all(B2));
    let mut fewer = classes();
    fewer.v4.retain(|p| p.0 != [198, 51, 100, 0]);
    fewer.v6.retain(|p| p.1 != 48);
    program(&mut dp, t, &["b3"], &Arc::new(fewer));
    assert_eq!(dp.ledger(), ids, "the adopted ids are kept");
    assert_eq!(send(&dp, "198.51.100.7", 40002, true), at("192.0.2.10"));
    assert_eq!(send(&dp, "10.1.0.1", 40002, true), at("192.0.2.12"));
    assert_eq!(
        send(&dp, "2001:db8:aaaa::1", 40002, true),
        at("2001:db8:1::10")
    );
    assert_eq!(
        send(&dp, "2001:db8:cccc::1", 40002, true),
        at("2001:db8:1::10")
    );
    assert_eq!(send(&dp, "198.51.100.7", 40000, false), at("192.0.2.11"));
}

/// An ICMPv4 fragmentation-needed error from a router on the path to
/// `client`, quoting a segment the VIP sent to `client`:`cport`.
fn frag_needed_for(client: [u8; 4], cport: u16) -> Vec<u8> {
    let vip = [203, 0, 113, 10];
    let quoted = {
        let b = etherparse::PacketBuilder::ipv4(vip, client, 64)
            .tcp(80, cport, 1, 1024)
            .ack(1);
        let mut v = Vec::new();
        b.write(&mut v, &[]).expect("quoted");
        v
    };
    let b = etherparse::PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
        .ipv4([192, 0, 2, 254], vip, 64)
        .icmpv4(etherparse::Icmpv4Type::DestinationUnreachable(
            etherparse::icmpv4::DestUnreachableHeader::FragmentationNeeded { next_hop_mtu: 1400 },
        ));
    let mut v = Vec::new();
    b.write(&mut v, &quoted).expect("build");
    v
}

/// An ICMP error for a flow conntrack does not know is selected like the
/// flow itself: by the client's class.
#[test]
#[ignore = "needs root: BPF or network namespaces (cargo xtask test runs it)"]
fn an_icmp_error_without_conntrack_follows_the_client_class() {
    if !require_root() {
        return;
    }
    let mut dp = load();
    let c = Arc::new(classes());
    program(&mut dp, first_tables(), &["b3"], &c);
    let to = |frame: &[u8]| {
        let out = dp.run(frame).expect("run");
        assert_eq!(out.verdict, Verdict::Tx);
        IpAddr::from(
            etherparse::Ipv4HeaderSlice::from_slice(&out.data[14..])
                .expect("outer")
                .destination(),
        )
    };
    let icmp = dp.path_counts().expect("paths")[Branch::IcmpError as usize];
    assert_eq!(
        to(&frag_needed_for([198, 51, 100, 7], 41000)),
        "192.0.2.11".parse::<IpAddr>().expect("ip")
    );
    assert_eq!(
        to(&frag_needed_for([203, 0, 113, 99], 41000)),
        "192.0.2.10".parse::<IpAddr>().expect("ip")
    );
    assert_eq!(
        dp.path_counts().expect("paths")[Branch::IcmpError as usize] - icmp,
        2
    );
}
