//! Which programs and maps each compiled object has: the production object
//! (`Dataplane::load` / `open`) carries no benchmark code and pins no
//! benchmark map; the benchmark object (`Dataplane::load_bench`) runs the
//! benchmark programs; the verdict programs return their verdict.
//! Privileged: needs root (fails loudly under CI=true).

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::path::PathBuf;

use steer::config::Config;
use steer::dataplane::verdict::{VerdictProgram, XdpVerdict};
use steer::dataplane::{BenchProgram, Dataplane, DataplaneError, Limits, Persist, Verdict};
use steer::policy::ApplyConfig as _;
use steer_common::{Branch, BENCH_VARY_NONE};
use steer_tests::*;

const BASIC: &str = include_str!("fixtures/basic.toml");

fn cfg() -> Config {
    Config::parse(BASIC).unwrap_or_else(|e| panic!("test config does not parse: {e:?}"))
}

/// A TCP packet to basic.toml's `web` VIP (203.0.113.10:80).
fn tcp_frame() -> Vec<u8> {
    tcp4(
        Ipv4Addr::new(198, 51, 100, 7),
        40000,
        Ipv4Addr::new(203, 0, 113, 10),
        80,
    )
    .build()
}

#[test]
#[ignore = "needs root: BPF or network namespaces (cargo xtask test runs it)"]
fn production_object_has_no_benchmark_programs() {
    if !require_root() {
        return;
    }
    let cfg = cfg();
    let mut dp = Dataplane::load(&cfg.dataplane).expect("load");
    dp.apply(&cfg, &BTreeSet::new()).expect("apply");
    assert_eq!(dp.run(&tcp_frame()).expect("run").verdict, Verdict::Tx);
    match dp.run_floor(&tcp_frame()) {
        Err(DataplaneError::MissingProgram {
            name: "steer_floor",
        }) => {}
        other => panic!("the production object must have no steer_floor, got {other:?}"),
    }
    for which in [BenchProgram::SteerWithRestore, BenchProgram::RestoreOnly] {
        match dp.bench_run(which, &tcp_frame(), 1, BENCH_VARY_NONE) {
            Err(DataplaneError::MissingMap { name: "BENCH" }) => {}
            other => {
                panic!("{which:?}: the production object must have no BENCH map, got {other:?}")
            }
        }
    }
}

#[test]
#[ignore = "needs root: BPF or network namespaces (cargo xtask test runs it)"]
fn pinned_maps_are_the_production_maps_only() {
    if !require_root() {
        return;
    }
    steer::dataplane::ensure_bpffs().expect("bpffs");
    let pin_dir = PathBuf::from(format!(
        "/sys/fs/bpf/steer-objects-test-{}",
        std::process::id()
    ));
    let state_file =
        std::env::temp_dir().join(format!("steer-objects-test-{}.json", std::process::id()));
    let persist = Persist {
        pin_dir: pin_dir.clone(),
        state_file,
    };
    struct Cleanup(Persist);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            let _ = Dataplane::remove_pins(&self.0);
        }
    }
    let _cleanup = Cleanup(persist.clone());
    let cfg = cfg();
    let (dp, adopted) = Dataplane::open(&cfg.dataplane, persist).expect("open");
    assert!(!adopted, "a fresh pin directory has nothing to adopt");
    let pinned: BTreeSet<String> = std::fs::read_dir(&pin_dir)
        .expect("pin dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    // The maps of docs/architecture.md, BENCH, PMTU_PROGS and PMTU_BUCKET
    // (made afresh by every load) excepted.
    let want: BTreeSet<String> = [
        "SETTINGS",
        "VIPS",
        "VIP_ADDRS",
        "VIP_FILTER",
        "REALS",
        "RINGS",
        "TABLE_GEN",
        "CONNTRACK4",
        "CONNTRACK6",
        "VIP_STATS",
        "REAL_STATS",
        "PASSIVE_STATS",
        "DROP_STATS",
        "PATH_STATS",
        "SOURCE_MACS",
        "SOURCE_MACS_HIGH",
        "CLASS_V4",
        "CLASS_V6",
        "CLASS_V6_48",
        "CLASS_TABLES",
        "RECENT_SYN",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    assert_eq!(pinned, want, "pinned maps");
    drop(dp);
}

#[test]
#[ignore = "needs root: BPF or network namespaces (cargo xtask test runs it)"]
fn benchmark_object_runs_the_benchmark_programs() {
    if !require_root() {
        return;
    }
    let cfg = cfg();
    let mut dp = Dataplane::load_bench(Limits::from(&cfg.dataplane)).expect("load_bench");
    dp.apply(&cfg, &BTreeSet::new()).expect("apply");
    let frame = tcp_frame();

    let floor = dp.run_floor(&frame).expect("floor");
    assert_eq!(floor.verdict, Verdict::Tx, "steer_floor returns XDP_TX");
    assert_eq!(floor.data, frame, "steer_floor leaves the frame alone");

    // The production entry point of the benchmark object forwards like the
    // production object's: one new flow, then 9 conntrack hits, all XDP_TX.
    let before = dp.path_counts().expect("paths");
    let out = dp.bench_run(BenchProgram::SteerWithRestore, &frame, 10, BENCH_VARY_NONE);
    assert_eq!(out.expect("steer_bench").verdict, Verdict::Tx);
    let after = dp.path_counts().expect("paths");
    let grew = |b: Branch| after[b as usize] - before[b as usize];
    assert_eq!(
        (
            grew(Branch::NewFlow),
            grew(Branch::CtHit),
            grew(Branch::Drop)
        ),
        (1, 9, 0),
        "steer_bench with repeat 10: new_flow, ct_hit, drop"
    );
    let out = dp.bench_run(BenchProgram::RestoreOnly, &frame, 10, BENCH_VARY_NONE);
    assert_eq!(out.expect("steer_bench_restore").verdict, Verdict::Tx);
}

#[test]
#[ignore = "needs root: BPF or network namespaces (cargo xtask test runs it)"]
fn verdict_programs_return_their_verdict() {
    if !require_root() {
        return;
    }
    // enum xdp_action in include/uapi/linux/bpf.h.
    for (v, action) in [
        (XdpVerdict::Drop, 1),
        (XdpVerdict::Pass, 2),
        (XdpVerdict::Tx, 3),
    ] {
        let p = VerdictProgram::load(v).unwrap_or_else(|e| panic!("loading {v:?}: {e}"));
        let got = p
            .test_run(&tcp_frame())
            .unwrap_or_else(|e| panic!("running {v:?}: {e}"));
        assert_eq!(got, action, "{} returns {action}", v.program());
    }
}
