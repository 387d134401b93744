//! Restart adoption: a data plane opened on pinned maps left by a previous
//! run (killed without cleanup) takes over its flows, tables and counters.
//! Privileged: needs root (fails loudly under CI=true).
//!
//! Every test uses its own pin directory `/sys/fs/bpf/steer-test-<pid>-<name>`
//! and state directory under the temp dir; a guard removes both (and every
//! pin in them) even when the test fails.
//!
//! Expected backends are read from the packets the program produced (the
//! outer IPv4 destination, parsed with etherparse) and compared with the
//! addresses written in the test's configuration.

mod common;
use common::require_root;
use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use steer::config::Config;
use steer::dataplane::{Dataplane, DataplaneError, Persist, Verdict};
use steer::policy::ApplyConfig as _;
use steer_common::Branch;

/// A unique pin directory and state file, removed (with every pin) on drop.
struct Scratch {
    persist: Persist,
    state_dir: PathBuf,
}

impl Scratch {
    fn new(name: &str) -> Self {
        let tag = format!("steer-test-{}-{name}", std::process::id());
        let pin_dir = Path::new("/sys/fs/bpf").join(&tag);
        let state_dir = std::env::temp_dir().join(&tag);
        // Leftovers of an earlier process with the same pid.
        let persist = Persist {
            pin_dir,
            state_file: state_dir.join("state.json"),
        };
        let _ = Dataplane::remove_pins(&persist);
        let _ = std::fs::remove_dir_all(&persist.pin_dir);
        let _ = std::fs::remove_dir_all(&state_dir);
        std::fs::create_dir_all(&state_dir).expect("state dir");
        Scratch { persist, state_dir }
    }

    fn persist(&self) -> Persist {
        self.persist.clone()
    }

    /// Names of the entries in the pin directory (empty if it is gone).
    fn pins(&self) -> BTreeSet<String> {
        match std::fs::read_dir(&self.persist.pin_dir) {
            Ok(rd) => rd
                .map(|e| {
                    e.expect("dir entry")
                        .file_name()
                        .to_string_lossy()
                        .into_owned()
                })
                .collect(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeSet::new(),
            Err(e) => panic!("reading {}: {e}", self.persist.pin_dir.display()),
        }
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if let Err(e) = Dataplane::remove_pins(&self.persist) {
            eprintln!("cleanup: remove_pins: {e}");
        }
        // Whatever remove_pins left (it should leave nothing).
        if let Ok(rd) = std::fs::read_dir(&self.persist.pin_dir) {
            for e in rd.flatten() {
                let _ = std::fs::remove_file(e.path());
            }
        }
        let _ = std::fs::remove_dir(&self.persist.pin_dir);
        let _ = std::fs::remove_dir_all(&self.state_dir);
    }
}

/// Opens the data plane, panicking with the error (Dataplane is not Debug).
fn open(cfg: &Config, persist: Persist) -> (Dataplane, bool) {
    match Dataplane::open(&cfg.dataplane, persist) {
        Ok(x) => x,
        Err(e) => panic!("open: {e}"),
    }
}

const VIP: [u8; 4] = [203, 0, 113, 10];
const OTHER_VIP: [u8; 4] = [203, 0, 113, 20];

/// One backend of the test config: name, IPv4 address, weight, services.
struct B<'a>(&'a str, [u8; 4], u32, &'a [&'a str]);

/// A config with services `web` (VIP 203.0.113.10:80/tcp) and, if any
/// backend names it, `other` (203.0.113.20:80/tcp).
fn config(backends: &[B<'_>], conntrack_size: u32) -> Config {
    let mut t = format!(
        r#"
[dataplane]
next_hop_mac = "02:00:00:00:00:fe"
source_mac = "02:00:00:00:00:5e"
encap_source_v4 = "198.18.0.1/32"
maglev_table_size = 251
conntrack_size = {conntrack_size}
max_tables = 4
max_reals = 64

[[regions]]
name = "eu"
"#
    );
    let mut services: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for B(name, a, weight, svcs) in backends {
        t += &format!(
            "\n[[backends]]\nname = \"{name}\"\naddress = \"{}\"\nregion = \"eu\"\nweight = {weight}\n",
            Ipv4Addr::from(*a)
        );
        for s in *svcs {
            services.entry(s).or_default().push(name);
        }
    }
    for (svc, names) in services {
        let vip = match svc {
            "web" => VIP,
            "other" => OTHER_VIP,
            s => panic!("unknown test service {s}"),
        };
        t += &format!(
            "\n[[services]]\nname = \"{svc}\"\nvip = \"{}\"\nport = 80\nprotocol = \"tcp\"\nbackends = {names:?}\n",
            Ipv4Addr::from(vip)
        );
    }
    Config::parse(&t).unwrap_or_else(|e| panic!("test config: {e}\n{t}"))
}

/// TCP segment of flow `i` (distinct source address and port per `i`) from
/// a client range picked by `base` to `vip`:80.
fn flow(base: u8, i: u32, vip: [u8; 4]) -> Vec<u8> {
    let src = [100, 64 + base, (i >> 8) as u8, i as u8];
    let b = etherparse::PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
        .ipv4(src, vip, 64)
        .tcp(10_000 + i as u16, 80, 1, 1024)
        .ack(1);
    let mut v = Vec::new();
    b.write(&mut v, b"hello").expect("build");
    v
}

fn flows(base: u8, n: u32, vip: [u8; 4]) -> Vec<Vec<u8>> {
    (0..n).map(|i| flow(base, i, vip)).collect()
}

/// Runs `frame` and returns the outer IPv4 destination: the backend.
fn backend(dp: &Dataplane, frame: &[u8]) -> Ipv4Addr {
    let out = dp.run(frame).expect("test run");
    assert_eq!(out.verdict, Verdict::Tx, "the VIP's packet must be sent on");
    let eth = etherparse::Ethernet2HeaderSlice::from_slice(&out.data).expect("ethernet");
    assert_eq!(eth.ether_type(), etherparse::EtherType::IPV4);
    let (outer, inner) = etherparse::Ipv4Header::from_slice(&out.data[14..]).expect("outer IPv4");
    assert_eq!(outer.protocol, etherparse::IpNumber::IPV4, "IP-in-IP");
    assert_eq!(inner, &frame[14..], "the inner packet is untouched");
    Ipv4Addr::from(outer.destination)
}

fn run_all(dp: &Dataplane, frames: &[Vec<u8>]) -> Vec<Ipv4Addr> {
    frames.iter().map(|f| backend(dp, f)).collect()
}

/// Path counters grown between `before` and now, by name.
fn path_delta(dp: &Dataplane, before: &[u64; Branch::COUNT]) -> BTreeMap<&'static str, u64> {
    let after = dp.path_counts().expect("path counters");
    (0..Branch::COUNT)
        .map(|i| (Branch::ALL[i].name(), after[i] - before[i]))
        .collect()
}

/// Every branch not in `want` must not have grown. A flow's first
/// conntrack hit in a program counts in `ct_hit` and `flow_cache_fill`
/// (the flow cache is not pinned: a restarted program starts with it
/// empty); its next packets in the same epoch come from the cache.
fn expect_delta(got: &BTreeMap<&'static str, u64>, want: &[(&'static str, u64)], what: &str) {
    let mut expected: BTreeMap<&'static str, u64> =
        Branch::ALL.iter().map(|b| (b.name(), 0)).collect();
    for (k, v) in want {
        expected.insert(k, *v);
    }
    assert_eq!(got, &expected, "{what}: path counter deltas");
}

fn ip(a: [u8; 4]) -> Ipv4Addr {
    Ipv4Addr::from(a)
}

const N: u32 = 200;

const A1: [u8; 4] = [192, 0, 2, 11];
const A2: [u8; 4] = [192, 0, 2, 12];
const A3: [u8; 4] = [192, 0, 2, 13];
const A4: [u8; 4] = [192, 0, 2, 14];

fn three(conntrack: u32) -> Config {
    config(
        &[
            B("a1", A1, 100, &["web"]),
            B("a2", A2, 100, &["web"]),
            B("a3", A3, 100, &["web"]),
        ],
        conntrack,
    )
}

/// First run: fresh open, apply, `N` flows. Returns each flow's backend.
/// The data plane is dropped without removing pins (what SIGKILL leaves).
fn first_run(s: &Scratch, cfg: &Config, frames: &[Vec<u8>]) -> Vec<Ipv4Addr> {
    let (mut dp, adopted) = open(cfg, s.persist());
    assert!(!adopted, "nothing to adopt in a fresh pin directory");
    dp.apply(cfg, &BTreeSet::new()).expect("apply");
    let before = dp.path_counts().expect("counters");
    let got = run_all(&dp, frames);
    expect_delta(
        &path_delta(&dp, &before),
        &[("new_flow", frames.len() as u64)],
        "first run",
    );
    let allowed: BTreeSet<Ipv4Addr> = cfg
        .backends
        .iter()
        .filter(|b| b.weight > 0)
        .map(|b| match b.address {
            std::net::IpAddr::V4(a) => a,
            _ => unreachable!(),
        })
        .collect();
    for (i, b) in got.iter().enumerate() {
        assert!(allowed.contains(b), "flow {i} went to {b}, not a backend");
    }
    drop(dp);
    assert!(
        s.persist.state_file.exists(),
        "the state file must be written"
    );
    assert!(
        s.pins().len() > 1,
        "maps must stay pinned after the process is gone: {:?}",
        s.pins()
    );
    got
}

#[test]
#[ignore = "needs root: BPF or network namespaces (cargo xtask test runs it)"]
fn restart_adopts_pins_and_every_flow_keeps_its_backend() {
    if !require_root() {
        return;
    }
    let s = Scratch::new("adopt");
    let cfg = three(4096);
    let frames = flows(0, N, VIP);
    let first = first_run(&s, &cfg, &frames);
    let distinct: BTreeSet<_> = first.iter().collect();
    assert_eq!(
        distinct.len(),
        3,
        "200 flows must spread over all 3 backends"
    );

    let (mut dp, adopted) = open(&cfg, s.persist());
    assert!(adopted, "pins and state file present: must adopt");
    // The pinned counters carry over: the first run's packets are there.
    let before = dp.path_counts().expect("counters");
    assert!(
        before[Branch::NewFlow as usize] >= N as u64,
        "pinned PATH_STATS must carry the first run's {N} new flows, has {}",
        before[Branch::NewFlow as usize]
    );
    dp.apply(&cfg, &BTreeSet::new())
        .expect("apply after adoption");
    let again = run_all(&dp, &frames);
    for (i, (a, b)) in first.iter().zip(&again).enumerate() {
        assert_eq!(a, b, "flow {i} moved from {a} to {b} across the restart");
    }
    expect_delta(
        &path_delta(&dp, &before),
        &[("ct_hit", N as u64), ("flow_cache_fill", N as u64)],
        "replay after restart",
    );
}

/// A SYN (`syn`) or an ACK of flow `i` to `web`, as in [`flow`].
fn segment(i: u32, syn: bool) -> Vec<u8> {
    let b = etherparse::PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
        .ipv4([100, 90, 0, i as u8], VIP, 64)
        .tcp(20_000 + i as u16, 80, 1, 1024);
    let b = if syn { b.syn() } else { b.ack(1) };
    let mut v = Vec::new();
    b.write(&mut v, &[]).expect("build");
    v
}

/// The passive counters of every backend of `web`, by address.
fn passive(dp: &Dataplane, cfg: &Config) -> BTreeMap<Ipv4Addr, (u64, u64)> {
    cfg.backends
        .iter()
        .map(|b| {
            let p = dp
                .backend_passive("web", &b.name)
                .unwrap_or_else(|e| panic!("passive counters of {}: {e}", b.name));
            let std::net::IpAddr::V4(a) = b.address else {
                unreachable!()
            };
            (a, (p.repeated_syns, p.handshakes))
        })
        .collect()
}

#[test]
#[ignore = "needs root: BPF or network namespaces (cargo xtask test runs it)"]
fn passive_counters_and_pending_handshakes_survive_a_restart() {
    if !require_root() {
        return;
    }
    let s = Scratch::new("passive");
    let cfg = three(4096);
    let (mut dp, _) = open(&cfg, s.persist());
    dp.apply(&cfg, &BTreeSet::new()).expect("apply");
    // Flow 0: SYN, SYN (one repeat), ACK (one handshake). Flow 1: a SYN
    // only, its handshake pending when the process goes away.
    let f0 = backend(&dp, &segment(0, true));
    assert_eq!(backend(&dp, &segment(0, true)), f0);
    assert_eq!(backend(&dp, &segment(0, false)), f0);
    let f1 = backend(&dp, &segment(1, true));
    let mut want: BTreeMap<Ipv4Addr, (u64, u64)> =
        [A1, A2, A3].iter().map(|a| (ip(*a), (0, 0))).collect();
    want.get_mut(&f0).unwrap().0 += 1;
    want.get_mut(&f0).unwrap().1 += 1;
    assert_eq!(passive(&dp, &cfg), want, "first run");
    drop(dp);
    assert!(s.pins().contains("PASSIVE_STATS"), "{:?}", s.pins());

    // A restart keeps the counters.
    let (mut dp, adopted) = open(&cfg, s.persist());
    assert!(adopted);
    dp.apply(&cfg, &BTreeSet::new()).expect("apply");
    assert_eq!(passive(&dp, &cfg), want, "after a restart");
    drop(dp);

    // A pin directory of a steer without PASSIVE_STATS: the map is created
    // (and pinned), its counters start at zero, and the conntrack entries
    // carry on: flow 1's pending handshake too.
    std::fs::remove_file(s.persist.pin_dir.join("PASSIVE_STATS")).expect("remove the pin");
    let (mut dp, adopted) = open(&cfg, s.persist());
    assert!(adopted, "the other pins and the state file are there");
    assert!(s.pins().contains("PASSIVE_STATS"), "{:?}", s.pins());
    dp.apply(&cfg, &BTreeSet::new()).expect("apply");
    for v in want.values_mut() {
        *v = (0, 0);
    }
    assert_eq!(passive(&dp, &cfg), want, "a new map");
    // Flow 1's SYN again: its entry is still pending on f1, one repeat.
    assert_eq!(backend(&dp, &segment(1, true)), f1);
    want.get_mut(&f1).unwrap().0 += 1;
    // Flow 0's handshake was complete: an ACK is no new handshake.
    assert_eq!(backend(&dp, &segment(0, false)), f0);
    assert_eq!(passive(&dp, &cfg), want, "after the restart's packets");
}

#[test]
#[ignore = "needs root: BPF or network namespaces (cargo xtask test runs it)"]
fn adopted_flows_stay_when_weights_change() {
    if !require_root() {
        return;
    }
    let s = Scratch::new("weights");
    let cfg = three(4096);
    let frames = flows(0, N, VIP);
    let first = first_run(&s, &cfg, &frames);
    let on_a2 = first.iter().filter(|b| **b == ip(A2)).count();
    assert!(
        on_a2 > 0,
        "some flows must start on a2 for this test to mean anything"
    );

    let (mut dp, adopted) = open(&cfg, s.persist());
    assert!(adopted);
    // a2 drained (weight 0) and a4 added: the table changes for new flows.
    let changed = config(
        &[
            B("a1", A1, 100, &["web"]),
            B("a2", A2, 0, &["web"]),
            B("a3", A3, 100, &["web"]),
            B("a4", A4, 100, &["web"]),
        ],
        4096,
    );
    dp.apply(&changed, &BTreeSet::new()).expect("apply changed");

    let before = dp.path_counts().expect("counters");
    let again = run_all(&dp, &frames);
    for (i, (a, b)) in first.iter().zip(&again).enumerate() {
        assert_eq!(a, b, "established flow {i} moved from {a} to {b}");
    }
    expect_delta(
        &path_delta(&dp, &before),
        &[("ct_hit", N as u64), ("flow_cache_fill", N as u64)],
        "established flows after the weight change",
    );

    let before = dp.path_counts().expect("counters");
    let fresh = flows(1, N, VIP);
    let got = run_all(&dp, &fresh);
    for (i, b) in got.iter().enumerate() {
        assert_ne!(*b, ip(A2), "new flow {i} went to drained backend a2");
        assert!(
            [ip(A1), ip(A3), ip(A4)].contains(b),
            "new flow {i} went to {b}"
        );
    }
    assert!(
        got.contains(&ip(A4)),
        "the added backend a4 must get some of {N} new flows"
    );
    expect_delta(
        &path_delta(&dp, &before),
        &[("new_flow", N as u64)],
        "new flows after the weight change",
    );
}

#[test]
#[ignore = "needs root: BPF or network namespaces (cargo xtask test runs it)"]
fn pinned_size_mismatch_is_an_error_and_leaves_pins_alone() {
    if !require_root() {
        return;
    }
    let s = Scratch::new("size");
    let small = three(4096);
    let frames = flows(0, 50, VIP);
    let first = first_run(&s, &small, &frames);
    let pins = s.pins();
    let state = std::fs::read(&s.persist.state_file).expect("state file");

    let big = three(8192);
    match Dataplane::open(&big.dataplane, s.persist()) {
        Ok(_) => panic!("a pinned CONNTRACK4 of 4096 entries must not be adopted for 8192"),
        Err(DataplaneError::PinnedSizeMismatch { name, found, want }) => {
            assert_eq!((name, found, want), ("CONNTRACK4", 4096, 8192));
        }
        Err(e) => panic!("expected PinnedSizeMismatch, got: {e}"),
    }
    assert_eq!(s.pins(), pins, "a failed open must not touch the pins");
    assert_eq!(
        std::fs::read(&s.persist.state_file).expect("state file"),
        state,
        "a failed open must not touch the state file"
    );

    // The IPv6 table has a size of its own: pinned at 4096 (it followed
    // conntrack_size), it refuses 1024.
    let mut v6_small = small.clone();
    v6_small.dataplane.conntrack_size_v6 = 1024;
    match Dataplane::open(&v6_small.dataplane, s.persist()) {
        Ok(_) => panic!("a pinned CONNTRACK6 of 4096 entries must not be adopted for 1024"),
        Err(DataplaneError::PinnedSizeMismatch { name, found, want }) => {
            assert_eq!((name, found, want), ("CONNTRACK6", 4096, 1024));
        }
        Err(e) => panic!("expected PinnedSizeMismatch, got: {e}"),
    }
    assert_eq!(s.pins(), pins, "a failed open must not touch the pins");

    // The old size still adopts, with the flows intact.
    let (mut dp, adopted) = open(&small, s.persist());
    assert!(adopted, "reopening with the pinned sizes must adopt");
    dp.apply(&small, &BTreeSet::new()).expect("apply");
    let before = dp.path_counts().expect("counters");
    assert_eq!(run_all(&dp, &frames), first);
    expect_delta(
        &path_delta(&dp, &before),
        &[
            ("ct_hit", frames.len() as u64),
            ("flow_cache_fill", frames.len() as u64),
        ],
        "replay after the failed open",
    );
}

/// The state file is gone but the pins (and conntrack) are not. Real ids
/// get handed out again from 0, here to backends with other addresses and
/// weight 0: a conntrack entry that followed its real id would land on one
/// of them. The only weighted backend is n1, so every flow must go there.
#[test]
#[ignore = "needs root: BPF or network namespaces (cargo xtask test runs it)"]
fn missing_state_file_reselects_instead_of_following_reused_ids() {
    if !require_root() {
        return;
    }
    let s = Scratch::new("nostate");
    let cfg1 = three(4096);
    let frames = flows(0, N, VIP);

    // First run, recording which real id served which address.
    let (mut dp, adopted) = open(&cfg1, s.persist());
    assert!(!adopted);
    dp.apply(&cfg1, &BTreeSet::new()).expect("apply");
    let first = run_all(&dp, &frames);
    assert_eq!(first.iter().collect::<BTreeSet<_>>().len(), 3);
    let addr_of = |cfg: &Config, name: &str| cfg.backend(name).expect("backend").address;
    let old_ids: BTreeMap<u32, std::net::IpAddr> = (0..64)
        .filter_map(|id| {
            dp.backend_of_real("web", id)
                .map(|n| (id, addr_of(&cfg1, n)))
        })
        .collect();
    assert_eq!(old_ids.len(), 3);
    drop(dp);
    std::fs::remove_file(&s.persist.state_file).expect("remove state file");

    const D1: [u8; 4] = [192, 0, 2, 21];
    const D2: [u8; 4] = [192, 0, 2, 22];
    const D3: [u8; 4] = [192, 0, 2, 23];
    const N1: [u8; 4] = [192, 0, 2, 31];
    let cfg2 = config(
        &[
            B("d1", D1, 0, &["web"]),
            B("d2", D2, 0, &["web"]),
            B("d3", D3, 0, &["web"]),
            B("n1", N1, 100, &["web"]),
        ],
        4096,
    );
    let (mut dp, adopted) = open(&cfg2, s.persist());
    assert!(!adopted, "without a state file nothing can be adopted");
    dp.apply(&cfg2, &BTreeSet::new()).expect("apply");
    // The premise: some real id that carried flows now names a backend with
    // another address (a weight-0 one, which only a conntrack hit reaches).
    let reused: Vec<(u32, String)> = old_ids
        .iter()
        .filter_map(|(id, old)| {
            dp.backend_of_real("web", *id)
                .filter(|n| addr_of(&cfg2, n) != *old && cfg2.backend(n).unwrap().weight == 0)
                .map(|n| (*id, n.to_string()))
        })
        .collect();
    assert!(
        !reused.is_empty(),
        "test premise: an old real id must be reused for a weight-0 backend \
         with a different address (old ids {old_ids:?})"
    );
    eprintln!("real ids reused for other addresses: {reused:?}");

    let before = dp.path_counts().expect("counters");
    let again = run_all(&dp, &frames);
    for (i, b) in again.iter().enumerate() {
        assert_eq!(
            *b,
            ip(N1),
            "flow {i} (was on {}) went to {b}: it followed a reused real id",
            first[i]
        );
    }
    let d = path_delta(&dp, &before);
    assert_eq!(d["ct_hit"], 0, "no stale conntrack entry may hit: {d:?}");
    assert_eq!(
        d["reselect"] + d["new_flow"],
        N as u64,
        "every old flow is selected again: {d:?}"
    );

    // Selected again means remembered again: the next packets hit.
    let before = dp.path_counts().expect("counters");
    assert!(run_all(&dp, &frames).iter().all(|b| *b == ip(N1)));
    expect_delta(
        &path_delta(&dp, &before),
        &[("ct_hit", N as u64), ("flow_cache_fill", N as u64)],
        "second replay",
    );
}

/// The daemon died after it had written the maps of a change but before the
/// state file recording that change was renamed into place (or writing the
/// state file failed). The adopted bookkeeping is one change behind the
/// maps: real id 1 was handed out (to web's a2, which got every flow), but
/// the state file says it is still free. On restart id 1 goes to another
/// service's backend; web's flows must not follow it there.
#[test]
#[ignore = "needs root: BPF or network namespaces (cargo xtask test runs it)"]
fn stale_state_file_does_not_let_flows_follow_reused_ids() {
    if !require_root() {
        return;
    }
    let s = Scratch::new("stale");
    const X1: [u8; 4] = [192, 0, 2, 99];
    let only_a1 = config(&[B("a1", A1, 100, &["web"])], 4096);
    let (mut dp, adopted) = open(&only_a1, s.persist());
    assert!(!adopted);
    dp.apply(&only_a1, &BTreeSet::new()).expect("apply");
    let saved = std::fs::read(&s.persist.state_file).expect("state file");

    // a1 drained, a2 added: every new flow goes to a2.
    let to_a2 = config(
        &[B("a1", A1, 0, &["web"]), B("a2", A2, 100, &["web"])],
        4096,
    );
    dp.apply(&to_a2, &BTreeSet::new()).expect("apply");
    let frames = flows(0, 50, VIP);
    assert!(run_all(&dp, &frames).iter().all(|b| *b == ip(A2)));
    drop(dp);
    // The state file as it was before the last change.
    std::fs::write(&s.persist.state_file, &saved).expect("restore old state file");

    let cfg3 = config(
        &[B("a1", A1, 100, &["web"]), B("x1", X1, 100, &["other"])],
        4096,
    );
    let (mut dp, adopted) = open(&cfg3, s.persist());
    assert!(adopted, "the old state file matches the sizes: adopted");
    dp.apply(&cfg3, &BTreeSet::new()).expect("apply");
    let before = dp.path_counts().expect("counters");
    let again = run_all(&dp, &frames);
    let d = path_delta(&dp, &before);
    for (i, b) in again.iter().enumerate() {
        assert_eq!(
            *b,
            ip(A1),
            "web flow {i} went to {b} (a2 is gone, x1 serves another service): \
             it followed a reused real id; path deltas {d:?}"
        );
    }
    assert_eq!(d["ct_hit"], 0, "{d:?}");
}

#[test]
#[ignore = "needs root: BPF or network namespaces (cargo xtask test runs it)"]
fn remove_pins_leaves_nothing_behind() {
    if !require_root() {
        return;
    }
    let s = Scratch::new("remove");
    let cfg = three(4096);
    let frames = flows(0, 20, VIP);
    first_run(&s, &cfg, &frames);
    assert!(!s.pins().is_empty());

    let detached = Dataplane::remove_pins(&s.persist()).expect("remove_pins");
    assert!(detached.is_empty(), "nothing was attached: {detached:?}");
    assert!(s.pins().is_empty(), "pins left behind: {:?}", s.pins());
    assert!(
        !s.persist.state_file.exists(),
        "the state file must be removed"
    );
    // Idempotent, and the next open starts from scratch.
    assert!(Dataplane::remove_pins(&s.persist())
        .expect("second remove_pins")
        .is_empty());
    let (mut dp, adopted) = open(&cfg, s.persist());
    assert!(!adopted, "nothing to adopt after remove_pins");
    dp.apply(&cfg, &BTreeSet::new()).expect("apply");
    let before = dp.path_counts().expect("counters");
    assert_eq!(
        before[Branch::NewFlow as usize],
        0,
        "counters start at zero after remove_pins"
    );
    run_all(&dp, &frames);
    expect_delta(
        &path_delta(&dp, &before),
        &[("new_flow", frames.len() as u64)],
        "flows after remove_pins are new",
    );
    drop(dp);
    Dataplane::remove_pins(&s.persist()).expect("remove_pins");
    assert!(s.pins().is_empty());
    assert!(!s.persist.pin_dir.exists(), "the pin directory is removed");
}

/// With `max_reals` exactly the number of service backends, a reload that
/// readdresses every backend still fits: the service reuses the ids it
/// gives up (under new generations), and flows follow the new addresses.
#[test]
#[ignore = "needs root: BPF or network namespaces (cargo xtask test runs it)"]
fn readdressing_every_backend_at_full_capacity() {
    if !require_root() {
        return;
    }
    let s = Scratch::new("readdr");
    let mut before = config(
        &[
            B("a1", A1, 100, &["web"]),
            B("a2", A2, 100, &["web"]),
            B("a3", A3, 100, &["web"]),
        ],
        4096,
    );
    before.dataplane.max_reals = 3;
    let (mut dp, _) = open(&before, s.persist());
    dp.apply(&before, &BTreeSet::new()).expect("apply");
    let frames = flows(9, 60, VIP);
    for b in run_all(&dp, &frames) {
        assert!([ip(A1), ip(A2), ip(A3)].contains(&b));
    }
    let new = [[192, 0, 2, 201], [192, 0, 2, 202], [192, 0, 2, 203]];
    let mut after = config(
        &[
            B("a1", new[0], 100, &["web"]),
            B("a2", new[1], 100, &["web"]),
            B("a3", new[2], 100, &["web"]),
        ],
        4096,
    );
    after.dataplane.max_reals = 3;
    if let Err(e) = dp.apply(&after, &BTreeSet::new()) {
        panic!("a readdress within max_reals must fit: {e}");
    }
    for b in run_all(&dp, &frames) {
        assert!(
            new.iter().any(|a| ip(*a) == b),
            "a flow still went to an old address: {b}"
        );
    }
}

#[test]
#[ignore = "needs root: BPF or network namespaces (cargo xtask test runs it)"]
fn syn_slots_survive_a_restart_and_an_old_pin_directory_gets_them() {
    if !require_root() {
        return;
    }
    let s = Scratch::new("synslots");
    let cfg = three(4096);
    let handshakes = |dp: &Dataplane, a: Ipv4Addr| passive(dp, &cfg)[&a].1;
    let (mut dp, _) = open(&cfg, s.persist());
    dp.apply(&cfg, &BTreeSet::new()).expect("apply");
    // Flow 5: a SYN before the restart, its ACK after it.
    let f5 = backend(&dp, &segment(5, true));
    drop(dp);
    assert!(s.pins().contains("RECENT_SYN"), "{:?}", s.pins());
    let (mut dp, adopted) = open(&cfg, s.persist());
    assert!(adopted);
    dp.apply(&cfg, &BTreeSet::new()).expect("apply");
    assert_eq!(backend(&dp, &segment(5, false)), f5);
    assert_eq!(
        handshakes(&dp, f5),
        1,
        "the pinned slot completed flow 5's handshake"
    );
    // Flow 6: a SYN, then the process goes away and the pin directory
    // loses RECENT_SYN (a steer from before it existed).
    let f6 = backend(&dp, &segment(6, true));
    drop(dp);
    std::fs::remove_file(s.persist.pin_dir.join("RECENT_SYN")).expect("remove the pin");
    let (mut dp, adopted) = open(&cfg, s.persist());
    assert!(adopted, "the other pins and the state file are there");
    assert!(s.pins().contains("RECENT_SYN"), "{:?}", s.pins());
    dp.apply(&cfg, &BTreeSet::new()).expect("apply");
    let before = handshakes(&dp, f6);
    // The slot is gone: the ACK is selected by hash (the same backend, the
    // table did not change), no handshake counted.
    assert_eq!(backend(&dp, &segment(6, false)), f6);
    assert_eq!(handshakes(&dp, f6), before);
    // The new map works: flow 7's SYN and ACK, one handshake.
    let f7 = backend(&dp, &segment(7, true));
    let before = handshakes(&dp, f7);
    assert_eq!(backend(&dp, &segment(7, false)), f7);
    assert_eq!(handshakes(&dp, f7), before + 1);
}

/// Pins an empty BPF array map of `entries` values of `value_size` bytes
/// at `path` (raw BPF_MAP_CREATE and BPF_OBJ_PIN, as an older steer's
/// program would have left it).
fn pin_array(path: &Path, value_size: u32, entries: u32) {
    pin_map(path, BPF_MAP_TYPE_ARRAY, value_size, entries)
}

const BPF_MAP_TYPE_HASH: u32 = 1;
const BPF_MAP_TYPE_ARRAY: u32 = 2;
const BPF_MAP_TYPE_LRU_HASH: u32 = 9;
const BPF_F_MMAPABLE: u32 = 1 << 10;

/// Creates a map of `map_type` with 4-byte keys and pins it at `path`.
fn pin_map(path: &Path, map_type: u32, value_size: u32, entries: u32) {
    pin_map_keyed(path, map_type, 4, value_size, entries)
}

/// Creates a map of `map_type` with `key_size`-byte keys and pins it at
/// `path`.
fn pin_map_keyed(path: &Path, map_type: u32, key_size: u32, value_size: u32, entries: u32) {
    // union bpf_attr for BPF_MAP_CREATE: map_type, key_size, value_size,
    // max_entries, map_flags, then zeros.
    let mut attr = [0u8; 128];
    for (i, v) in [map_type, key_size, value_size, entries, 0]
        .into_iter()
        .enumerate()
    {
        attr[i * 4..i * 4 + 4].copy_from_slice(&v.to_ne_bytes());
    }
    // SAFETY: a valid, zero-padded bpf_attr of the size passed.
    let fd = unsafe { libc::syscall(libc::SYS_bpf, 0, attr.as_ptr(), attr.len()) };
    assert!(
        fd >= 0,
        "BPF_MAP_CREATE: {}",
        std::io::Error::last_os_error()
    );
    let name = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).expect("path");
    // union bpf_attr for BPF_OBJ_PIN: pathname (u64), bpf_fd (u32).
    let mut pin = [0u8; 128];
    pin[..8].copy_from_slice(&(name.as_ptr() as u64).to_ne_bytes());
    pin[8..12].copy_from_slice(&(fd as u32).to_ne_bytes());
    // SAFETY: as above; `name` outlives the call.
    let rc = unsafe { libc::syscall(libc::SYS_bpf, 6, pin.as_ptr(), pin.len()) };
    let err = std::io::Error::last_os_error();
    // SAFETY: `fd` is the descriptor BPF_MAP_CREATE returned, closed once.
    unsafe { libc::close(fd as i32) };
    assert_eq!(rc, 0, "BPF_OBJ_PIN {}: {err}", path.display());
}

/// An older steer kept every flow in one `CONNTRACK` map whose 40-byte
/// key had the addresses first. `open` moves its entries into
/// `CONNTRACK4`/`CONNTRACK6` and removes its pin: after a backend is
/// added, which would move some flows if they were selected again, every
/// flow keeps its backend.
#[test]
#[ignore = "needs root: BPF or network namespaces (cargo xtask test runs it)"]
fn an_older_steers_conntrack_is_moved_into_the_per_family_maps() {
    if !require_root() {
        return;
    }
    let s = Scratch::new("legacyct");
    let cfg = three(4096);
    let frames = flows(25, N, VIP);
    let before = first_run(&s, &cfg, &frames);

    // Rewrite the pins as the older steer left them: the flows' entries in
    // one CONNTRACK, keys laid out by hand in the old order (source,
    // destination, ports, protocol, family, padding), no per-family maps.
    let dir = &s.persist.pin_dir;
    let v4_pin = dir.join("CONNTRACK4");
    let entries: Vec<([u8; 16], steer_common::CtValue)> = {
        let m = aya::maps::MapData::from_pin(&v4_pin).expect("CONNTRACK4 pin");
        let m: aya::maps::HashMap<_, [u8; 16], steer_common::CtValue> =
            aya::maps::HashMap::try_from(aya::maps::Map::LruHashMap(m)).expect("lru hash");
        m.iter().map(|e| e.expect("entry")).collect()
    };
    assert_eq!(entries.len(), N as usize, "one entry per flow");
    let legacy = dir.join("CONNTRACK");
    pin_map_keyed(&legacy, BPF_MAP_TYPE_LRU_HASH, 40, 16, 4096);
    {
        let m = aya::maps::MapData::from_pin(&legacy).expect("legacy pin");
        let mut m: aya::maps::HashMap<_, [u8; 40], steer_common::CtValue> =
            aya::maps::HashMap::try_from(aya::maps::Map::LruHashMap(m)).expect("lru hash");
        for (k4, v) in &entries {
            // This layout: sport, dport, proto, family, pad, src, dst.
            let mut old = [0u8; 40];
            old[..4].copy_from_slice(&k4[8..12]);
            old[16..20].copy_from_slice(&k4[12..16]);
            old[32..36].copy_from_slice(&k4[..4]);
            old[36] = k4[4];
            old[37] = k4[5];
            assert_eq!(old[37], steer_common::FAMILY_V4);
            m.insert(old, v, 0).expect("insert");
        }
    }
    std::fs::remove_file(&v4_pin).expect("remove CONNTRACK4");
    std::fs::remove_file(dir.join("CONNTRACK6")).expect("remove CONNTRACK6");

    // A fourth backend: selected afresh, some flows would move.
    let grown = config(
        &[
            B("a1", A1, 100, &["web"]),
            B("a2", A2, 100, &["web"]),
            B("a3", A3, 100, &["web"]),
            B("a4", [192, 0, 2, 4], 100, &["web"]),
        ],
        4096,
    );
    {
        let mut fresh = Dataplane::load(&grown.dataplane).expect("load");
        fresh.apply(&grown, &BTreeSet::new()).expect("apply");
        let moved = run_all(&fresh, &frames)
            .iter()
            .zip(&before)
            .filter(|(a, b)| a != b)
            .count();
        assert!(moved > 0, "without conntrack, the new backend takes flows");
    }

    let (mut dp, adopted) = open(&grown, s.persist());
    assert!(adopted, "the other pins and the state file are adopted");
    assert_eq!(
        dp.migrated_conntrack(),
        Some(steer::dataplane::Migrated {
            ipv4: N as u64,
            ipv6: 0,
            skipped: 0
        })
    );
    assert!(!legacy.exists(), "the old pin is removed");
    dp.apply(&grown, &BTreeSet::new()).expect("apply");
    let pc = dp.path_counts().expect("counters");
    assert_eq!(
        run_all(&dp, &frames),
        before,
        "every flow keeps its backend"
    );
    expect_delta(
        &path_delta(&dp, &pc),
        &[("ct_hit", N as u64), ("flow_cache_fill", N as u64)],
        "after the move",
    );
}

/// An older steer pinned `SOURCE_MACS` as a hash map. The program now
/// reads it as an array: `open` replaces the pin, adopts everything else,
/// flows keep their backends, and transmitted frames carry the configured
/// source MAC (index 0 of the new array, written by the plan).
#[test]
#[ignore = "needs root: BPF or network namespaces (cargo xtask test runs it)"]
fn a_source_macs_pin_of_the_old_kind_is_replaced() {
    if !require_root() {
        return;
    }
    let s = Scratch::new("srcmacs");
    let cfg = three(4096);
    let (mut dp, _) = open(&cfg, s.persist());
    dp.apply(&cfg, &BTreeSet::new()).expect("apply");
    let frames = flows(23, 100, [203, 0, 113, 10]);
    let before = run_all(&dp, &frames);
    drop(dp);
    let pin = s.persist.pin_dir.join("SOURCE_MACS");
    std::fs::remove_file(&pin).expect("remove the pin");
    pin_map(&pin, BPF_MAP_TYPE_HASH, 8, 256);
    let kind = |p: &Path| {
        aya::maps::MapData::from_pin(p)
            .expect("open the pin")
            .info()
            .expect("info")
            .map_type()
            .expect("a known map type")
    };
    assert_eq!(kind(&pin), aya::maps::MapType::Hash);
    let (mut dp, adopted) = open(&cfg, s.persist());
    assert!(adopted, "the other pins and the state file are adopted");
    assert_eq!(
        kind(&pin),
        aya::maps::MapType::Array,
        "the hash pin was replaced"
    );
    dp.apply(&cfg, &BTreeSet::new()).expect("apply");
    assert_eq!(
        run_all(&dp, &frames),
        before,
        "every flow keeps its backend"
    );
    // The fixture's `dataplane.source_mac` (loopback, where the test runs,
    // has no MAC of its own).
    let out = dp.run(&frames[0]).expect("test run");
    assert_eq!(&out.data[6..12], &[0x02, 0, 0, 0, 0, 0x5e], "source MAC");
}

/// An older steer pinned `RECENT_SYN` with 32-byte buckets (no SYN
/// filter), and a later one with 64-byte buckets in a map without
/// `BPF_F_MMAPABLE` (whose buckets straddle two cache lines). The program
/// cannot use either: `open` replaces the pin (it only held handshakes in
/// progress), adopts everything else, and flows keep their backends.
#[test]
#[ignore = "needs root: BPF or network namespaces (cargo xtask test runs it)"]
fn a_recent_syn_pin_of_the_old_layout_is_replaced() {
    if !require_root() {
        return;
    }
    for (round, old_size) in [32u32, 64].into_iter().enumerate() {
        let s = Scratch::new(&format!("synlayout{round}"));
        let cfg = three(4096);
        let (mut dp, _) = open(&cfg, s.persist());
        dp.apply(&cfg, &BTreeSet::new()).expect("apply");
        let frames = flows(21, 200, [203, 0, 113, 10]);
        let before = run_all(&dp, &frames);
        drop(dp);
        let pin = s.persist.pin_dir.join("RECENT_SYN");
        std::fs::remove_file(&pin).expect("remove the pin");
        let buckets = steer_common::syn_buckets(4096);
        pin_array(&pin, old_size, buckets);
        let layout = |p: &Path| {
            let info = aya::maps::MapData::from_pin(p)
                .expect("open the pin")
                .info()
                .expect("info");
            (info.value_size(), info.map_flags() & BPF_F_MMAPABLE)
        };
        assert_eq!(layout(&pin), (old_size, 0));
        let (mut dp, adopted) = open(&cfg, s.persist());
        assert!(adopted, "the other pins and the state file are adopted");
        assert_eq!(
            layout(&pin),
            (64, BPF_F_MMAPABLE),
            "the old-layout pin was replaced"
        );
        dp.apply(&cfg, &BTreeSet::new()).expect("apply");
        assert_eq!(
            run_all(&dp, &frames),
            before,
            "every flow keeps its backend"
        );
        // The new map works: a SYN and its ACK.
        let syn = backend(&dp, &segment(9, true));
        assert_eq!(backend(&dp, &segment(9, false)), syn);
    }
}
