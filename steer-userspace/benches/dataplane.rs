//! `cargo xtask bench`: ns/packet for each branch of the XDP program, next
//! to a trivial XDP_TX program measured the same way in the same run.
//!
//! Two methods, both with the kernel's own timing (BPF_PROG_TEST_RUN):
//!
//! A. `repeat = REPEAT` in one call. Branches that rewrite the packet run
//!    through the benchmark-only entry `steer_bench`, which first strips the
//!    encapsulation the previous iteration added, so every iteration sees
//!    the original packet. A TCP SYN always opens a new connection, so the
//!    original SYN is selected afresh every time; with the same tuple each
//!    iteration it finds its own `RECENT_SYN` slot (the repeated-SYN path:
//!    no conntrack entry). The rows marked `*` additionally bump the source
//!    address each iteration, so each iteration is a flow never seen (the
//!    backend-down branch needs that to fill conntrack). The restore step's own cost is measured by
//!    `steer_bench_restore` and reported. The non-VIP pass branch does not
//!    modify the packet and runs the production entry directly. The geo
//!    rows' targets (against the plain new flow) are judged on this method,
//!    as ratios taken within each trial; the per-branch ratios to its 5 ns
//!    floor are shown, not judged (see `method_a`).
//! B. `repeat = 1`, once per packet (distinct packets for new flows): no
//!    restore needed, but every figure includes the syscall's fixed timing
//!    overhead, which the floor shows. The issue-12 targets are judged on
//!    this method, run first on a data plane of its own (no client
//!    classes): 7 rounds; 200,000 never-seen IPv4 and IPv6 tuples per
//!    round, each SYN timed and its first ACK (which takes the SYN's slot
//!    and creates the conntrack entry) a handshake window (4,096 flows)
//!    later, reported as a row of its own. `-- syn` runs only method B,
//!    the conntrack fill curve and the two-CPU run; `-- profile WHAT`
//!    loops one branch for `perf record` (see [`profile`]).
//!
//! After every batch the program's per-branch counters must have grown by
//! exactly the number of iterations, which proves each iteration took the
//! branch it is reported under.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use steer::config::Config;
use steer::dataplane::{
    BenchProgram, Dataplane, DesiredClasses, DesiredTable, Limits, TableSlots, Verdict,
};
use steer::policy::{self, ApplyConfig as _, BackendState};
use steer_common::{Branch, Passive, BENCH_VARY_NONE, BENCH_VARY_V4_SRC};

/// Method A: iterations per BPF_PROG_TEST_RUN call, and calls per branch.
const REPEAT: u32 = 50_000;
const TRIALS_A: usize = 7;
/// Method B: single-iteration calls per branch, and rounds (the issue's
/// method: 7 rounds of alternating blocks, each row's figure the median
/// of all its calls, the floor's the same).
const CALLS: usize = 5_000;
const TRIALS: usize = 7;

/// The tests' shared fixture (one region, eu-1 and eu-2, service "web")
/// with "web" served by eu-1..3, more backends and two more services;
/// [`bench_config`] gives it production map sizes.
const CFG: &str = concat!(
    include_str!("../tests/fixtures/eu.toml"),
    r#"backends = ["eu-1", "eu-2", "eu-3"]

[[backends]]
name = "eu-3"
address = "192.0.2.13"
region = "eu"
[[backends]]
name = "v6-1"
address = "2001:db8:1::11"
region = "eu"
[[backends]]
name = "v6-2"
address = "2001:db8:1::12"
region = "eu"
[[backends]]
name = "dn-a"
address = "192.0.2.21"
region = "eu"
[[backends]]
name = "dn-b"
address = "192.0.2.22"
region = "eu"
weight = 0

[[services]]
name = "web6"
vip = "2001:db8:100::10"
port = 443
protocol = "tcp"
backends = ["v6-1", "v6-2"]

[[services]]
name = "down"
vip = "203.0.113.20"
port = 80
protocol = "tcp"
backends = ["dn-a", "dn-b"]

# The geo VIPs: "web" and "web6" on another port, with client classes
# (see `program_geo`).
[[services]]
name = "geo"
vip = "203.0.113.10"
port = 8080
protocol = "tcp"
backends = ["eu-1", "eu-2", "eu-3"]

[[services]]
name = "geo6"
vip = "2001:db8:100::10"
port = 8443
protocol = "tcp"
backends = ["v6-1", "v6-2"]
"#
);

/// Port of the geo VIPs ("geo" is IPv4, "geo6" IPv6).
const GEO_PORT_V4: u16 = 8080;
const GEO_PORT_V6: u16 = 8443;
/// Prefixes per family in the geo benchmark.
const GEO_PREFIXES: u32 = 1_000_000;

/// 1,000,000 prefixes per family, within Route 53's limits (IPv4 /24,
/// IPv6 /48). IPv4: the /24s from 92.0.0.0 up, two classes alternating
/// (100.0.0.0/8, the benchmark's clients, is inside: its even /24s are
/// class 1). IPv6, in 2001:db0::/28 (2^20 /48s, dense): the even /48s, and
/// for each odd one the /47 that holds it and the even /48 before it (the
/// data plane expands the /47s into their /48s: 1,500,000 hash entries,
/// nothing left in the trie). Clients: 2001:db8::/48 (an exact /48),
/// 2001:db8:1::/48 (only its /47 matches) and 2001:dbf:ffff::/48 (no
/// class).
fn geo_classes() -> DesiredClasses {
    let v4 = (0..GEO_PREFIXES)
        .map(|i| {
            let p = (92u32 << 16) + i;
            (
                [(p >> 16) as u8, (p >> 8) as u8, p as u8, 0],
                24,
                1 + (i % 2) as u8,
            )
        })
        .collect();
    let v6 = (0..GEO_PREFIXES)
        .map(|i| {
            let top: u64 = (0x2001_0db0_0000 + u64::from(i)) << 16;
            let mut a = [0u8; 16];
            a[..8].copy_from_slice(&top.to_be_bytes());
            (a, if i % 2 == 0 { 48 } else { 47 }, 1)
        })
        .collect();
    DesiredClasses { v4, v6 }
}

/// Programs `cfg` with the geo VIPs given a table of their own for class 1
/// (Maglev over the same backends, another table id) and the classes of
/// [`geo_classes`]. Other services as `apply` programs them.
fn program_geo(dp: &mut Dataplane, cfg: &Config, classes: &Arc<DesiredClasses>) {
    let mut desired = policy::desired(cfg, &BackendState::default());
    for d in desired.iter_mut().filter(|d| d.name.starts_with("geo")) {
        d.tables = vec![DesiredTable {
            class: 1,
            slots: TableSlots::Maglev,
        }];
    }
    dp.program_with_classes(
        desired,
        policy::globals(&cfg.dataplane),
        classes,
        &BTreeSet::new(),
    )
    .expect("program the geo VIPs");
}

/// A segment of an established connection (ACK, no SYN): it follows
/// conntrack. A SYN always selects afresh.
fn v4_ack(src: [u8; 4], sport: u16, dst: [u8; 4], dport: u16) -> Vec<u8> {
    let b = etherparse::PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
        .ipv4(src, dst, 64)
        .tcp(sport, dport, 2, 1024)
        .ack(1);
    let mut v = Vec::with_capacity(64);
    b.write(&mut v, &[]).expect("build");
    v
}

fn v4_syn(src: [u8; 4], sport: u16, dst: [u8; 4], dport: u16) -> Vec<u8> {
    let b = etherparse::PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
        .ipv4(src, dst, 64)
        .tcp(sport, dport, 1, 1024)
        .syn();
    let mut v = Vec::with_capacity(64);
    b.write(&mut v, &[]).expect("build");
    v
}

fn v6_syn(src_low: u32, sport: u16) -> Vec<u8> {
    v6_syn_to(src_low, sport, 443)
}

fn v6_syn_to(src_low: u32, sport: u16, dport: u16) -> Vec<u8> {
    v6_syn_in([0x20, 0x01, 0x0d, 0xb8, 0, 0], src_low, sport, dport)
}

/// A SYN from `net` (a /48) :: `src_low`.
fn v6_syn_in(net: [u8; 6], src_low: u32, sport: u16, dport: u16) -> Vec<u8> {
    let mut src = [0u8; 16];
    src[..6].copy_from_slice(&net);
    src[12..].copy_from_slice(&src_low.to_be_bytes());
    let mut dst = [0u8; 16];
    dst[..6].copy_from_slice(&[0x20, 0x01, 0x0d, 0xb8, 0x01, 0x00]);
    dst[15] = 0x10;
    let b = etherparse::PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
        .ipv6(src, dst, 64)
        .tcp(sport, dport, 1, 1024)
        .syn();
    let mut v = Vec::with_capacity(84);
    b.write(&mut v, &[]).expect("build");
    v
}

/// Later segments (ACK) of the flows of `new_v4_flows`.
fn v4_flow_acks(trial: usize, dst: [u8; 4]) -> Vec<Vec<u8>> {
    flows_of(trial, dst, v4_ack)
}

fn flows_of(
    trial: usize,
    dst: [u8; 4],
    build: fn([u8; 4], u16, [u8; 4], u16) -> Vec<u8>,
) -> Vec<Vec<u8>> {
    (0..CALLS)
        .map(|i| {
            let src = [100, 64 + trial as u8, (i >> 8) as u8, i as u8];
            build(src, 1024 + (i % 50_000) as u16, dst, 80)
        })
        .collect()
}

fn median(mut v: Vec<Duration>) -> f64 {
    v.sort();
    v[v.len() / 2].as_nanos() as f64
}

/// The proof that every timed iteration took the branch it is reported
/// under: since `before`, `branch` grew by exactly `n` and no other branch
/// grew at all.
fn check_branches(
    dp: &Dataplane,
    before: &[u64; Branch::COUNT],
    branch: Option<Branch>,
    n: u64,
    what: &str,
) {
    // Conntrack hits of one established flow, repeated: served by the flow
    // cache, which needs one conntrack lookup per CPU (and per tick of the
    // conntrack clock, which nothing advances here) to fill.
    let fills = match branch {
        Some(Branch::CtHit) => 0..=cpus(),
        _ => 0..=0,
    };
    check_branches_fills(dp, before, branch, n, fills, what);
}

/// [`check_branches`] with the `flow_cache_fill` count expected in `fills`.
fn check_branches_fills(
    dp: &Dataplane,
    before: &[u64; Branch::COUNT],
    branch: Option<Branch>,
    n: u64,
    fills: std::ops::RangeInclusive<u64>,
    what: &str,
) {
    let after = dp.path_counts().expect("counters");
    for b in 0..Branch::COUNT {
        let delta = after[b] - before[b];
        if b == Branch::FlowCacheFill.index() as usize {
            assert!(
                fills.contains(&delta),
                "{what}: flow_cache_fill grew by {delta}, expected {fills:?}"
            );
            continue;
        }
        let expect = match branch {
            Some(x) if x.index() as usize == b => n,
            _ => 0,
        };
        assert_eq!(
            delta,
            expect,
            "{what}: branch counter {} grew by {delta}, expected {expect}",
            Branch::ALL[b].name()
        );
    }
}

/// The CPUs the program may run on (each has its own flow cache).
fn cpus() -> u64 {
    aya::util::nr_cpus().expect("number of CPUs") as u64
}

/// Runs `frames` through `run`, returns the median ns/packet and checks
/// every verdict and the branch counter.
fn timed(
    dp: &Dataplane,
    frames: &[Vec<u8>],
    floor: bool,
    want: Verdict,
    branch: Option<Branch>,
) -> f64 {
    let before = dp.path_counts().expect("counters");
    let mut d = Vec::with_capacity(frames.len());
    for f in frames {
        let out = if floor { dp.run_floor(f) } else { dp.run(f) }.expect("test run");
        assert_eq!(out.verdict, want, "unexpected verdict");
        d.push(out.duration);
    }
    check_branches(dp, &before, branch, frames.len() as u64, "repeat=1");
    median(d)
}

/// Established packets of distinct flows, each flow's first since its
/// handshake: every one misses this CPU's flow cache, hits conntrack and is
/// cached (`flow_cache_fill` grows by exactly one per packet).
fn timed_uncached(dp: &Dataplane, frames: &[Vec<u8>]) -> f64 {
    let before = dp.path_counts().expect("counters");
    let mut d = Vec::with_capacity(frames.len());
    for f in frames {
        let out = dp.run(f).expect("test run");
        assert_eq!(out.verdict, Verdict::Tx, "unexpected verdict");
        d.push(out.duration);
    }
    let n = frames.len() as u64;
    check_branches_fills(
        dp,
        &before,
        Some(Branch::CtHit),
        n,
        n..=n,
        "established, flow cache misses",
    );
    median(d)
}

/// Method B's distinct new flows per trial and family: at least 200,000
/// tuples the data plane has never seen (the issue's target condition).
const DISTINCT_B: usize = 200_000;
/// Method-B targets (× floor, same run), from issue 12.
const TARGETS_B: [(&str, f64); 4] = [
    ("non-VIP pass", 1.25),
    ("established IPv4 flow (conntrack hit)", 2.3),
    ("distinct new IPv4 flows (SYN)", 6.6),
    ("distinct new IPv6 flows (SYN)", 7.1),
];

/// A segment of an established IPv6 connection (ACK, no SYN) from
/// 2001:db8::`src_low`, the peer of [`v6_syn`].
fn v6_ack(src_low: u32, sport: u16) -> Vec<u8> {
    let mut f = v6_syn(src_low, sport);
    // TCP flags at Ethernet 14 + IPv6 40 + 13: SYN -> ACK, and the
    // checksum is not checked by the program.
    f[14 + 40 + 13] = 0x10;
    f
}

/// Flows whose SYNs are sent before their ACKs in [`timed_pairs`]: 4,096,
/// about 1 ms of packets at 4 Mpps, the first ACK's round trip. With free
/// slots, 4,096 pending handshakes in 2^18 four-slot buckets lose none (a
/// loss needs five in one bucket); in buckets an earlier row filled with
/// SYNs it never completed, a few are taken by later SYNs of the window.
const HANDSHAKE_WINDOW: usize = 4096;

/// Distinct-flow pairs: the SYNs of [`HANDSHAKE_WINDOW`] flows, then their
/// first ACKs, window after window. Returns the median of each and checks
/// every verdict and the branch counters: each SYN a `new_flow`, each ACK
/// `syn_promoted` (or, its slot taken, `new_flow`: counted and printed).
fn timed_pairs(dp: &Dataplane, flows: &[(Vec<u8>, Vec<u8>)]) -> (f64, f64) {
    let before = dp.path_counts().expect("counters");
    let mut syn = Vec::with_capacity(flows.len());
    let mut ack = Vec::with_capacity(flows.len());
    // A handshake takes a round trip: the SYNs of HANDSHAKE_WINDOW flows,
    // then their ACKs, so no ACK finds the lines its own SYN just touched
    // still in the cache (as none would a round trip later under load).
    let mut by_hash = 0;
    for window in flows.chunks(HANDSHAKE_WINDOW) {
        let w = window.len() as u64;
        let c0 = dp.path_counts().expect("counters");
        for (s, _) in window {
            let out = dp.run(s).expect("test run");
            assert_eq!(out.verdict, Verdict::Tx, "SYN verdict");
            syn.push(out.duration);
        }
        let c1 = dp.path_counts().expect("counters");
        for (_, a) in window {
            let out = dp.run(a).expect("test run");
            assert_eq!(out.verdict, Verdict::Tx, "ACK verdict");
            ack.push(out.duration);
        }
        let c2 = dp.path_counts().expect("counters");
        // Every SYN a new flow; every ACK a promotion of its SYN's slot,
        // or, when a later SYN of the window took that slot (its bucket
        // full, e.g. of SYNs an earlier row never completed), a new flow
        // selected by hash. Nothing else.
        let d = |a: &[u64; Branch::COUNT], b: &[u64; Branch::COUNT], x: Branch| {
            b[x.index() as usize] - a[x.index() as usize]
        };
        for x in Branch::ALL {
            let (syns, acks) = (d(&c0, &c1, x), d(&c1, &c2, x));
            match x {
                Branch::NewFlow => assert_eq!(syns, w, "every SYN a new flow"),
                Branch::SynPromoted => assert_eq!(syns, 0),
                _ => assert_eq!((syns, acks), (0, 0), "branch {}", x.name()),
            }
        }
        let promoted = d(&c1, &c2, Branch::SynPromoted);
        let hashed = d(&c1, &c2, Branch::NewFlow);
        assert_eq!(promoted + hashed, w, "every ACK promoted or selected");
        by_hash += hashed;
    }
    if by_hash > 0 {
        println!(
            "  (note: {by_hash} of {} ACKs found their slot taken and were selected by hash)",
            flows.len()
        );
    }
    let after = dp.path_counts().expect("counters");
    let n = flows.len() as u64;
    assert_eq!(
        after[Branch::NewFlow.index() as usize] - before[Branch::NewFlow.index() as usize],
        n + by_hash
    );
    (median(syn), median(ack))
}

/// IPv4 flows for method B: `trial` picks a /16 in 100.64.0.0/10 above
/// what `flows_of` uses, so no tuple repeats across trials or rows.
fn distinct_v4(trial: usize, n: usize) -> Vec<(Vec<u8>, Vec<u8>)> {
    (0..n)
        .map(|i| {
            let src = [100, 96 + trial as u8, (i >> 8) as u8, i as u8];
            let sport = 1024 + (i >> 16) as u16;
            let dst = [203, 0, 113, 10];
            (v4_syn(src, sport, dst, 80), v4_ack(src, sport, dst, 80))
        })
        .collect()
}

fn distinct_v6(trial: usize, n: usize) -> Vec<(Vec<u8>, Vec<u8>)> {
    (0..n)
        .map(|i| {
            let src_low = (0x4000_0000 | (trial as u32) << 24) + i as u32;
            (v6_syn(src_low, 1024), v6_ack(src_low, 1024))
        })
        .collect()
}

fn method_b(dp: &mut Dataplane, cfg: &Config) -> bool {
    let mut cfg = cfg.clone();

    let pass_pkt = v4_syn([198, 51, 100, 1], 5555, [198, 51, 100, 200], 80);
    let est_pkt = v4_ack([198, 51, 100, 2], 6666, [203, 0, 113, 10], 80);
    assert_eq!(dp.run(&est_pkt).expect("warm").verdict, Verdict::Tx);
    let same_syn = v4_syn([198, 51, 100, 3], 7777, [203, 0, 113, 10], 80);
    let pass_frames = vec![pass_pkt; CALLS];
    let est_frames = vec![est_pkt; CALLS];
    let same_frames = vec![same_syn; CALLS];

    let names = [
        "floor (XDP_TX only)",
        "non-VIP pass",
        "established IPv4 flow (conntrack hit)",
        "distinct new IPv4 flows (SYN)",
        "  their first ACK (slot -> conntrack insert)",
        "distinct new IPv6 flows (SYN)",
        "  their first ACK (slot -> conntrack insert)",
        "same-tuple SYN (repeated SYN)",
        "flow whose backend is down (re-select)",
        "established IPv4, 200000 flows (cache miss)",
    ];
    let mut results: Vec<Vec<f64>> = vec![Vec::new(); names.len()];
    for trial in 0..TRIALS {
        results[0].push(timed(dp, &pass_frames, true, Verdict::Tx, None));
        results[1].push(timed(
            dp,
            &pass_frames,
            false,
            Verdict::Pass,
            Some(Branch::Pass),
        ));
        results[2].push(timed(
            dp,
            &est_frames,
            false,
            Verdict::Tx,
            Some(Branch::CtHit),
        ));
        let fresh4 = distinct_v4(trial, DISTINCT_B);
        let (s, a) = timed_pairs(dp, &fresh4);
        results[3].push(s);
        results[4].push(a);
        let (s, a) = timed_pairs(dp, &distinct_v6(trial, DISTINCT_B));
        results[5].push(s);
        results[6].push(a);
        results[7].push(timed(
            dp,
            &same_frames,
            false,
            Verdict::Tx,
            Some(Branch::NewFlow),
        ));

        // Pin CALLS flows to dn-a (dn-b drained), then take dn-a down and
        // bring dn-b in: every timed packet finds a stale entry.
        set_weights(&mut cfg, 100, 0);
        dp.apply(&cfg, &BTreeSet::new()).expect("apply");
        let pinned = v4_flow_acks(TRIALS + trial, [203, 0, 113, 20]);
        for f in &pinned {
            assert_eq!(dp.run(f).expect("pin").verdict, Verdict::Tx);
        }
        set_weights(&mut cfg, 100, 100);
        let down: BTreeSet<String> = ["dn-a".to_string()].into();
        dp.apply(&cfg, &down).expect("apply");
        results[8].push(timed(
            dp,
            &pinned,
            false,
            Verdict::Tx,
            Some(Branch::Reselect),
        ));
        dp.apply(&cfg, &BTreeSet::new()).expect("apply");
        // Last, as it walks 200,000 conntrack entries: the new IPv4 flows'
        // next packets, in turn, so none is in the flow cache.
        let acks: Vec<Vec<u8>> = fresh4.into_iter().map(|(_, a)| a).collect();
        results[9].push(timed_uncached(dp, &acks));
    }

    let floor = med(&results[0]);
    println!(
        "\nmethod B: repeat=1, one call per packet; {CALLS} calls per row, {DISTINCT_B} distinct flows per new-flow row, x {TRIALS} trials (includes the syscall's timing overhead)"
    );
    println!(
        "{:<46} {:>10} {:>10} {:>8}",
        "branch", "ns/packet", "x floor", "Mpps"
    );
    for (i, n) in names.iter().enumerate() {
        let m = med(&results[i]);
        println!(
            "{:<46} {:>10.1} {:>10.2} {:>8.2}",
            n,
            m,
            m / floor,
            1000.0 / m
        );
    }
    let mut ok = true;
    for (name, t) in TARGETS_B {
        let i = names.iter().position(|n| *n == name).expect("target row");
        let x = med(&results[i]) / floor;
        let verdict = if x <= t { "met" } else { "MISSED" };
        ok &= x <= t;
        println!("target B {name:<44} <= {t:>4}x: {x:.2}x {verdict}");
    }
    ok
}

/// How a new flow's cost changes as conntrack fills: 5 × 200,000 distinct
/// IPv4 flows (SYN, then its first ACK, which inserts) into a data plane of
/// its own (empty 1,048,576-entry table), the medians after each step.
fn fill_curve(cfg: &Config) {
    let dp = load_programmed(cfg);
    let floor_frames = vec![v4_syn([198, 51, 100, 1], 5555, [198, 51, 100, 200], 80); CALLS];
    println!("\nconntrack filling up (method B, {DISTINCT_B} new IPv4 flows per step)");
    println!(
        "{:>12} {:>10} {:>10} {:>10} {:>10}",
        "entries", "SYN ns", "x floor", "ACK ns", "x floor"
    );
    for step in 0..5 {
        let floor = timed(&dp, &floor_frames, true, Verdict::Tx, None);
        let (s, a) = timed_pairs(&dp, &distinct_v4(40 + step, DISTINCT_B));
        println!(
            "{:>12} {:>10.1} {:>10.2} {:>10.1} {:>10.2}",
            format!("{}..{}", step * DISTINCT_B, (step + 1) * DISTINCT_B),
            s,
            s / floor,
            a,
            a / floor
        );
    }
}

/// Two CPUs at once: one thread pinned to each CPU runs BPF_PROG_TEST_RUN
/// on the same data plane (distinct new IPv4 flows, SYN then ACK; then an
/// established flow), against the same work on one CPU alone, to show the
/// conntrack layout does not collapse under contention.
fn two_cpus(cfg: &Config) {
    let dp = load_programmed(cfg);
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    if cpus < 2 {
        println!("\ntwo CPUs: skipped, {cpus} CPU available");
        return;
    }
    let pin = |cpu: usize| {
        // SAFETY: a zeroed cpu_set_t is an empty set; CPU_SET and
        // sched_setaffinity only write into it and the calling thread.
        unsafe {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            libc::CPU_SET(cpu, &mut set);
            libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
        }
    };
    let n = 100_000;
    let work = |cpu: usize, trial: usize, dp: &Dataplane| -> (f64, f64, f64) {
        pin(cpu);
        let flows = distinct_v4(60 + trial * 2 + cpu, n);
        let est = v4_ack([198, 51, 100, 9], 6000 + cpu as u16, [203, 0, 113, 10], 80);
        let mut syn = Vec::with_capacity(n);
        let mut ack = Vec::with_capacity(n);
        let mut hit = Vec::with_capacity(n);
        for window in flows.chunks(HANDSHAKE_WINDOW) {
            for (s, _) in window {
                syn.push(dp.run(s).expect("run").duration);
            }
            for (_, a) in window {
                ack.push(dp.run(a).expect("run").duration);
            }
        }
        for _ in 0..n {
            hit.push(dp.run(&est).expect("run").duration);
        }
        (median(syn), median(ack), median(hit))
    };
    println!("\ntwo CPUs: one thread per CPU, {n} new IPv4 flows (SYN, ACK) then {n} established packets each");
    println!(
        "{:<28} {:>10} {:>10} {:>12}",
        "run", "SYN ns", "ACK ns", "established"
    );
    let alone = work(0, 0, &dp);
    println!(
        "{:<28} {:>10.1} {:>10.1} {:>12.1}",
        "one CPU alone", alone.0, alone.1, alone.2
    );
    let both: Vec<(f64, f64, f64)> = std::thread::scope(|s| {
        let h: Vec<_> = (0..2)
            .map(|cpu| {
                let dp = &dp;
                s.spawn(move || work(cpu, 1, dp))
            })
            .collect();
        h.into_iter().map(|h| h.join().expect("thread")).collect()
    });
    for (cpu, r) in both.iter().enumerate() {
        println!(
            "{:<28} {:>10.1} {:>10.1} {:>12.1}",
            format!("both at once, CPU {cpu}"),
            r.0,
            r.1,
            r.2
        );
    }
}

fn med(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    s[s.len() / 2]
}

/// One method-A batch: checks the verdict and the branch counters, returns
/// ns/iteration.
fn batch(
    dp: &mut Dataplane,
    prog: BenchProgram,
    frame: &[u8],
    vary: u32,
    want: Verdict,
    branch: Option<Branch>,
) -> f64 {
    let before = dp.path_counts().expect("counters");
    let out = dp.bench_run(prog, frame, REPEAT, vary).expect("test run");
    assert_eq!(out.verdict, want, "unexpected verdict for {prog:?}");
    check_branches(dp, &before, branch, u64::from(REPEAT), &format!("{prog:?}"));
    out.duration.as_nanos() as f64
}

fn method_a(dp: &mut Dataplane, cfg: &mut Config, geo: &Arc<DesiredClasses>) -> bool {
    let pass_pkt = v4_syn([198, 51, 100, 1], 5555, [198, 51, 100, 200], 80);
    let est_pkt = v4_ack([198, 51, 100, 2], 6666, [203, 0, 113, 10], 80);
    assert_eq!(dp.run(&est_pkt).expect("warm").verdict, Verdict::Tx);
    const FLOOR: usize = 0;
    const PASS: usize = 1;
    const NEW4: usize = 2;
    const EST: usize = 3;
    const NEW6: usize = 4;
    const DOWN: usize = 5;
    const NEW4_COLD: usize = 6;
    const RESTORE: usize = 7;
    const NEW4_GEO: usize = 8;
    const NEW6_GEO: usize = 9;
    const NEW6_GEO_47: usize = 10;
    const NEW6_GEO_NONE: usize = 11;
    let names = [
        "floor (XDP_TX only)",
        "non-VIP pass",
        "new IPv4 TCP flow (same-tuple SYN)",
        "established IPv4 flow (conntrack hit)",
        "new IPv6 flow (same-tuple SYN)",
        "flow whose backend is down (re-select) *",
        "new IPv4 flows, distinct 5-tuples *",
        "restore step alone (not a branch)",
        "new IPv4 flow, geo VIP, 1,000,000 prefixes",
        "new IPv6 flow, geo VIP, 1,000,000 prefixes",
        "  the same, client in a /47 (expanded)",
        "  the same, client of no class",
    ];
    let mut r: Vec<Vec<f64>> = vec![Vec::new(); names.len()];
    use BenchProgram::*;
    for trial in 0..TRIALS_A {
        r[FLOOR].push(batch(
            dp,
            Floor,
            &pass_pkt,
            BENCH_VARY_NONE,
            Verdict::Tx,
            None,
        ));
        r[PASS].push(batch(
            dp,
            Steer,
            &pass_pkt,
            BENCH_VARY_NONE,
            Verdict::Pass,
            Some(Branch::Pass),
        ));
        // The original SYN, restored before every iteration. A SYN always
        // opens a new connection (port reuse included): every iteration
        // hashes, reads the Maglev table and inserts into conntrack, which
        // replaces the previous iteration's entry for the same 5-tuple.
        // That entry is still handshake-pending, so each iteration after
        // the first also counts a repeated SYN (see `passive_cost`).
        let syn = v4_syn([100, 50 + trial as u8, 0, 1], 1024, [203, 0, 113, 10], 80);
        r[NEW4].push(batch(
            dp,
            SteerWithRestore,
            &syn,
            BENCH_VARY_NONE,
            Verdict::Tx,
            Some(Branch::NewFlow),
        ));
        r[EST].push(batch(
            dp,
            SteerWithRestore,
            &est_pkt,
            BENCH_VARY_NONE,
            Verdict::Tx,
            Some(Branch::CtHit),
        ));
        let v6 = v6_syn((trial as u32 + 1) << 20, 1024);
        r[NEW6].push(batch(
            dp,
            SteerWithRestore,
            &v6,
            BENCH_VARY_NONE,
            Verdict::Tx,
            Some(Branch::NewFlow),
        ));
        // The same SYNs to the geo VIPs: plus the class lookup (IPv4: one
        // array read; IPv6: one LPM trie lookup among 1,000,000 /48s) and
        // the VIP's class row, then the class's own table.
        program_geo(dp, cfg, geo);
        let geo4 = v4_syn(
            [100, 50 + trial as u8, 0, 1],
            1024,
            [203, 0, 113, 10],
            GEO_PORT_V4,
        );
        r[NEW4_GEO].push(batch(
            dp,
            SteerWithRestore,
            &geo4,
            BENCH_VARY_NONE,
            Verdict::Tx,
            Some(Branch::NewFlow),
        ));
        let geo6 = v6_syn_to((trial as u32 + 1) << 20, 1024, GEO_PORT_V6);
        r[NEW6_GEO].push(batch(
            dp,
            SteerWithRestore,
            &geo6,
            BENCH_VARY_NONE,
            Verdict::Tx,
            Some(Branch::NewFlow),
        ));
        for (row, net) in [
            (NEW6_GEO_47, [0x20, 0x01, 0x0d, 0xb8, 0, 1]),
            (NEW6_GEO_NONE, [0x20, 0x01, 0x0d, 0xbf, 0xff, 0xff]),
        ] {
            let syn = v6_syn_in(net, (trial as u32 + 1) << 20, 1024, GEO_PORT_V6);
            r[row].push(batch(
                dp,
                SteerWithRestore,
                &syn,
                BENCH_VARY_NONE,
                Verdict::Tx,
                Some(Branch::NewFlow),
            ));
        }
        // Source 100.<100 + trial>.0.0 upwards, one more per iteration: a
        // conntrack entry the table has never held, every iteration.
        let fresh = v4_syn([100, 100 + trial as u8, 0, 0], 1024, [203, 0, 113, 10], 80);
        r[NEW4_COLD].push(batch(
            dp,
            SteerWithRestore,
            &fresh,
            BENCH_VARY_V4_SRC,
            Verdict::Tx,
            Some(Branch::NewFlow),
        ));
        // Pin REPEAT flows to dn-a (dn-b drained), take dn-a down, replay
        // the same flows: each iteration finds a stale conntrack entry. They
        // are pinned by an ACK each (a SYN creates no conntrack entry).
        set_weights(cfg, 100, 0);
        dp.apply(cfg, &BTreeSet::new()).expect("apply");
        let pinned = v4_ack([100, 200 + trial as u8, 0, 0], 2048, [203, 0, 113, 20], 80);
        batch(
            dp,
            SteerWithRestore,
            &pinned,
            BENCH_VARY_V4_SRC,
            Verdict::Tx,
            Some(Branch::NewFlow),
        );
        set_weights(cfg, 100, 100);
        let down: BTreeSet<String> = ["dn-a".to_string()].into();
        dp.apply(cfg, &down).expect("apply");
        // The same flows' later segments (ACK): they follow conntrack.
        let pinned_ack = v4_ack([100, 200 + trial as u8, 0, 0], 2048, [203, 0, 113, 20], 80);
        r[DOWN].push(batch(
            dp,
            SteerWithRestore,
            &pinned_ack,
            BENCH_VARY_V4_SRC,
            Verdict::Tx,
            Some(Branch::Reselect),
        ));
        dp.apply(cfg, &BTreeSet::new()).expect("apply");
        r[RESTORE].push(batch(
            dp,
            RestoreOnly,
            &est_pkt,
            BENCH_VARY_NONE,
            Verdict::Tx,
            None,
        ));
    }
    // Ratios are taken within each trial (branch and floor measured
    // moments apart), then the median over trials.
    let ratio = |i: usize| -> f64 {
        let per_trial: Vec<f64> = r[i].iter().zip(&r[FLOOR]).map(|(b, f)| b / f).collect();
        med(&per_trial)
    };
    // What the restore adds to a TX figure: the restore-only program minus
    // the floor (the per-iteration cost every program pays).
    let restore = med(&r[RESTORE]) - med(&r[FLOOR]);
    println!(
        "method A: repeat={REPEAT} per call, {TRIALS_A} trials, median; TX branches run through steer_bench (restore + program)"
    );
    println!(
        "{:<46} {:>10} {:>10} {:>16}",
        "branch", "ns/packet", "x floor", "minus restore"
    );
    for (i, n) in names.iter().enumerate() {
        let m = med(&r[i]);
        let net = if [
            NEW4,
            EST,
            NEW6,
            DOWN,
            NEW4_COLD,
            NEW4_GEO,
            NEW6_GEO,
            NEW6_GEO_47,
            NEW6_GEO_NONE,
        ]
        .contains(&i)
        {
            format!("{:.1}", m - restore)
        } else {
            "-".to_string()
        };
        println!("{:<46} {:>10.1} {:>10.2} {:>16}", n, m, ratio(i), net);
    }
    println!(
        "minus restore: the figure less what the restore step adds ({restore:.1} ns: restore-only program minus floor)"
    );
    println!(
        "* every iteration is a different flow (source address + 1): the conntrack table grows by {REPEAT} entries per call, so these also measure cache and TLB misses in a filling 1M-entry table"
    );
    let per_trial: Vec<String> = r[NEW4_COLD].iter().map(|v| format!("{v:.0}")).collect();
    println!(
        "  distinct 5-tuples per trial, in order (table filling up): {} ns",
        per_trial.join(", ")
    );
    // The per-branch targets of the first data-plane issue, set against a
    // 28 ns repeat-loop floor. Since the program is multi-buffer XDP the
    // kernel's repeat loop costs 5 ns, which no branch can be judged
    // against, so they are shown, not judged: issue 12's targets are
    // method B's (docs/benchmarks.md).
    let old_targets = [(PASS, 3.0), (EST, 6.0), (NEW4, 15.0)];
    let mut ok = true;
    println!();
    for (i, t) in old_targets {
        let x = ratio(i);
        println!(
            "(method A, not judged: {:<38} {x:.2}x, the old target <= {t}x)",
            names[i]
        );
    }
    // Geo over plain, per trial (measured moments apart), then the median.
    let over = |geo: usize, plain: usize| -> f64 {
        let per_trial: Vec<f64> = r[geo].iter().zip(&r[plain]).map(|(g, p)| g / p).collect();
        med(&per_trial)
    };
    for (geo, plain, t) in [(NEW4_GEO, NEW4, 1.10), (NEW6_GEO, NEW6, 1.25)] {
        let x = over(geo, plain);
        let verdict = if x <= t { "ok" } else { "MISSED" };
        ok &= x <= t;
        println!(
            "target {:<44} <= {t:>4}x the plain new flow: {x:.3}x {verdict}",
            names[geo]
        );
    }
    // Not targets: the other IPv6 clients.
    for (row, what) in [(NEW6_GEO_47, "in a /47"), (NEW6_GEO_NONE, "of no class")] {
        println!(
            "(IPv6 geo, client {what}: {:.3}x the plain new flow)",
            over(row, NEW6)
        );
    }
    ok
}

/// The passive health counting (`PASSIVE_STATS`, the handshake-pending
/// mark) against the same program without it (`steer_bench_nopassive`),
/// in the same run. Trials per row, each timing both variants moments
/// apart, in alternating order. The distinct-flow row runs every third
/// trial only: 2 x 9 x 50,000 new entries fit the 1M-entry table.
const TRIALS_P: usize = 27;

/// Repeated SYNs counted on the "web" backends so far.
fn web_repeats(dp: &Dataplane) -> u64 {
    ["eu-1", "eu-2", "eu-3"]
        .iter()
        .map(|b| {
            dp.backend_passive("web", b)
                .map(|p: Passive| p.repeated_syns)
                .expect("passive counters")
        })
        .sum()
}

/// Method A with and without the passive health counters, on a fresh data
/// plane: the established flow, distinct new flows (SYNs: each writes its
/// `RECENT_SYN` slot), and the same-tuple SYN, which finds its own tag in
/// its slot and counts a repeated SYN. Returns whether the targets were
/// met.
fn passive_cost(cfg: &Config) -> bool {
    let mut dp = load_programmed(cfg);
    let est_pkt = v4_ack([198, 51, 100, 2], 6666, [203, 0, 113, 10], 80);
    assert_eq!(dp.run(&est_pkt).expect("warm").verdict, Verdict::Tx);
    const EST: usize = 0;
    const COLD: usize = 1;
    const SAME: usize = 2;
    let names = [
        "established IPv4 flow (conntrack hit)",
        "new IPv4 flows, distinct 5-tuples *",
        "same-tuple SYN (repeat path with counting)",
    ];
    // [row][variant: 0 with, 1 without] -> ns per trial.
    let mut r = vec![[Vec::new(), Vec::new()]; names.len()];
    use BenchProgram::*;
    for trial in 0..TRIALS_P {
        let order = if trial % 2 == 0 {
            [(0, SteerWithRestore), (1, SteerWithRestoreNoPassive)]
        } else {
            [(1, SteerWithRestoreNoPassive), (0, SteerWithRestore)]
        };
        for (v, prog) in order {
            r[EST][v].push(batch(
                &mut dp,
                prog,
                &est_pkt,
                BENCH_VARY_NONE,
                Verdict::Tx,
                Some(Branch::CtHit),
            ));
        }
        for (v, prog) in order.into_iter().filter(|_| trial % 3 == 0) {
            // A /16 of its own per trial and variant: never held before.
            let fresh = v4_syn(
                [100, 100 + (2 * (trial / 3) + v) as u8, 0, 0],
                1024,
                [203, 0, 113, 10],
                80,
            );
            r[COLD][v].push(batch(
                &mut dp,
                prog,
                &fresh,
                BENCH_VARY_V4_SRC,
                Verdict::Tx,
                Some(Branch::NewFlow),
            ));
        }
        for (v, prog) in order {
            // Outside the distinct-flow rows' 100.100.0.0-100.117.255.255.
            let syn = v4_syn([101, trial as u8, v as u8, 1], 1024, [203, 0, 113, 10], 80);
            let before = web_repeats(&dp);
            r[SAME][v].push(batch(
                &mut dp,
                prog,
                &syn,
                BENCH_VARY_NONE,
                Verdict::Tx,
                Some(Branch::NewFlow),
            ));
            // Proof of the path taken: with the counting, every iteration
            // after the first found its own pending entry; without, none
            // was counted.
            let repeats = web_repeats(&dp) - before;
            let want = if v == 0 { u64::from(REPEAT) - 1 } else { 0 };
            assert_eq!(repeats, want, "repeated SYNs counted by {prog:?}");
        }
    }
    println!(
        "\npassive health counters: cost (method A, repeat={REPEAT}, {TRIALS_P} trials ({} for *), \
         fresh data plane; ratio = with / without within each trial, median; for *, \
         the geometric mean of the medians of the two orders)",
        TRIALS_P / 3
    );
    println!(
        "{:<46} {:>12} {:>12} {:>8} {:>16}",
        "branch", "with ns", "without ns", "ratio", "ratios min-max"
    );
    let mut ratios = Vec::new();
    for (i, n) in names.iter().enumerate() {
        let per: Vec<f64> = r[i][0].iter().zip(&r[i][1]).map(|(a, b)| a / b).collect();
        let lo = per.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = per.iter().copied().fold(0.0, f64::max);
        let x = if i == COLD {
            // The first batch of new flows in a trial pays ~50 ns per
            // packet more than the second, whichever variant it is (cold
            // `RECENT_SYN` lines). The variants alternate in going first
            // (even cold trials: with the counting first), so the medians
            // of the two orders carry that factor once up and once down:
            // their geometric mean cancels it.
            let even: Vec<f64> = per.iter().copied().step_by(2).collect();
            let odd: Vec<f64> = per.iter().copied().skip(1).step_by(2).collect();
            (med(&even) * med(&odd)).sqrt()
        } else {
            med(&per)
        };
        ratios.push(x);
        println!(
            "{:<46} {:>12.1} {:>12.1} {:>8.3} {:>16}",
            n,
            med(&r[i][0]),
            med(&r[i][1]),
            x,
            format!("{lo:.3}-{hi:.3}")
        );
    }
    let per_trial: Vec<String> = (0..r[COLD][0].len())
        .map(|t| format!("{:.0}/{:.0}", r[COLD][0][t], r[COLD][1][t]))
        .collect();
    println!(
        "  distinct 5-tuples per trial, with/without, in order (table filling up): {} ns",
        per_trial.join(", ")
    );
    let mut ok = true;
    for (i, t) in [(EST, 1.03), (COLD, 1.10)] {
        let verdict = if ratios[i] <= t { "ok" } else { "MISSED" };
        ok &= ratios[i] <= t;
        println!(
            "target {:<44} <= {t:>4}x without: {:.3}x {verdict}",
            names[i], ratios[i]
        );
    }
    ok
}

fn main() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("the data-plane benchmark loads BPF programs: run it as root");
        std::process::exit(1);
    }
    // `cargo bench -p steer-userspace --bench dataplane -- passive`: only
    // the passive counters' cost (cargo adds `--bench`).
    if std::env::args().skip(1).any(|a| a == "passive") {
        let ok = passive_cost(&bench_config());
        std::process::exit(if ok { 0 } else { 2 });
    }
    // `-- profile est|syn|syn6|floor`: one branch in a loop for 8 s, to
    // run `perf record -a` against (docs/benchmarks.md, "Profiling").
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let Some(i) = args.iter().position(|a| a == "profile") {
        let what = args.get(i + 1).map(String::as_str).unwrap_or("est");
        profile(what);
        return;
    }
    let mut cfg = bench_config();
    println!("steer data-plane benchmark (ns/packet as measured by the kernel)");
    // Method B first, on a data plane of its own: the issue-12 targets are
    // judged on a data plane like the one Katran was measured against (a
    // 1,048,576-entry conntrack, a 65,537-slot ring, no client classes),
    // before the geo rows program 2,000,000 class prefixes.
    let ok_b = {
        let mut dp = load_programmed(&cfg);
        method_b(&mut dp, &cfg)
    };
    // `-- syn`: only method B, the conntrack fill curve and the two-CPU
    // run (issue 12's rows), without the geo prefixes and method A.
    if std::env::args().skip(1).any(|a| a == "syn") {
        fill_curve(&bench_config());
        two_cpus(&bench_config());
        std::process::exit(if ok_b { 0 } else { 2 });
    }
    let mut dp = load_programmed(&cfg);
    let t = Instant::now();
    let geo = Arc::new(geo_classes());
    program_geo(&mut dp, &cfg, &geo);
    println!(
        "\n({GEO_PREFIXES} IPv4 and {GEO_PREFIXES} IPv6 class prefixes built and programmed in {:.2} s)\n",
        t.elapsed().as_secs_f64()
    );
    let ok = method_a(&mut dp, &mut cfg, &geo) && ok_b;
    drop(dp);
    fill_curve(&bench_config());
    two_cpus(&bench_config());
    let ok = passive_cost(&bench_config()) && ok;
    if !ok {
        std::process::exit(2);
    }
}

/// `-- profile WHAT`: runs one branch through BPF_PROG_TEST_RUN
/// (`repeat = 1`) for 8 seconds and prints the kernel's mean time: `est`
/// (an established IPv4 flow), `syn` / `syn6` (distinct new IPv4 / IPv6
/// SYNs, 100,000 per round), `floor`. For profiling only: no targets.
fn profile(what: &str) {
    let dp = load_programmed(&bench_config());
    let est = v4_ack([198, 51, 100, 2], 6666, [203, 0, 113, 10], 80);
    let t = Instant::now();
    let (mut n, mut total) = (0u64, 0u128);
    let mut round = 0;
    while t.elapsed() < Duration::from_secs(8) {
        // SYN and ACK frames as method B builds them (the ACKs unused):
        // the figures depend on the harness's own memory, so the ablations
        // in docs/benchmarks.md were all taken with this one.
        let frames: Vec<(Vec<u8>, Vec<u8>)> = match what {
            "est" | "floor" => vec![(est.clone(), Vec::new()); 100_000],
            "syn" => distinct_v4(round % 150, 100_000),
            "syn6" => distinct_v6(round % 150, 100_000),
            other => {
                eprintln!("profile: unknown branch {other:?} (est, syn, syn6, floor)");
                std::process::exit(2);
            }
        };
        for (f, _) in &frames {
            let out = if what == "floor" {
                dp.run_floor(f)
            } else {
                dp.run(f)
            }
            .expect("test run");
            total += out.duration.as_nanos();
            n += 1;
        }
        round += 1;
    }
    println!("{what}: {n} runs, mean {:.1} ns", total as f64 / n as f64);
}

/// [`CFG`] with the data plane the benchmark measures: the tests' fixture
/// keeps its maps small, the benchmark uses the default sizes (a 1M-entry
/// conntrack table, 65537-slot rings) and a /24 IPv4 source range, so that
/// varying the source address varies the outer source.
/// Loads the benchmark object for `cfg` and programs it, with loopback's
/// own source MAC set as attaching sets an interface's (see
/// `Dataplane::bench_interface_mac`).
fn load_programmed(cfg: &Config) -> Dataplane {
    let mut dp =
        Dataplane::load_bench(Limits::from(&cfg.dataplane)).expect("load the benchmark object");
    dp.bench_interface_mac(LOOPBACK_IFINDEX, [2, 0, 0, 0, 0, 0x10])
        .expect("loopback source MAC");
    dp.apply(cfg, &BTreeSet::new()).expect("apply");
    dp
}

/// BPF_PROG_TEST_RUN's ingress interface: loopback, always ifindex 1.
const LOOPBACK_IFINDEX: u32 = 1;

fn bench_config() -> Config {
    // The fixture's max_tables (4) is too small for the geo services to
    // parse; the production size is set below anyway.
    let text = CFG.replace("max_tables = 4\n", "max_tables = 128\n");
    assert_ne!(text, CFG, "the fixture sets max_tables = 4");
    let mut cfg = Config::parse(&text).expect("bench config");
    let d = &mut cfg.dataplane;
    d.encap_source_v4 = Some("198.18.0.0/24".parse().expect("prefix"));
    d.conntrack_size = 1_048_576;
    // Parsing defaulted it to the fixture's conntrack_size (4,096); the
    // issue's condition is a 1,048,576-entry table for either family.
    d.conntrack_size_v6 = 1_048_576;
    d.maglev_table_size = 65537;
    d.max_tables = 128;
    d.max_reals = 65536;
    cfg
}

fn set_weights(cfg: &mut Config, a: u32, b: u32) {
    for be in &mut cfg.backends {
        match be.name.as_str() {
            "dn-a" => be.weight = a,
            "dn-b" => be.weight = b,
            _ => {}
        }
    }
}
