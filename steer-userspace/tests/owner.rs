//! The daemon's owner: every input applied in order, the maps always equal
//! to the policy of the owner's final state, failed applies rolled back,
//! and a previous run's state validated before it is adopted.
//! Privileged: needs root (fails loudly under CI=true).

mod common;
use common::{require_root, Pins};

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use steer::api::Response;
use steer::config::Config;
use steer::daemon::{down_set, Event, Owner, Published};
use steer::dataplane::Dataplane;
use steer::health::TargetStatus;
use steer::policy::ApplyConfig as _;
use steer::policy::BackendState;
use tokio::sync::{mpsc, oneshot};

/// A config with `services` services over `backends` backends in two
/// regions; `variant` changes weights and which backends the last service
/// uses, so reloads really change the tables.
fn config(variant: u32) -> String {
    let mut s = String::from(
        r#"
[dataplane]
next_hop_mac = "02:00:00:00:00:fe"
encap_source_v4 = "198.18.0.0/24"
conntrack_size = 1024
maglev_table_size = 251
max_tables = 8
max_reals = 64

[[regions]]
name = "eu"
[[regions]]
name = "us"
"#,
    );
    for i in 0..8u32 {
        let region = if i < 4 { "eu" } else { "us" };
        let weight = 10 + (i * 7 + variant * 13) % 50;
        s.push_str(&format!(
            "\n[[backends]]\nname = \"b{i}\"\naddress = \"192.0.2.{}\"\nregion = \"{region}\"\nweight = {weight}\n",
            10 + i
        ));
    }
    s.push_str(
        r#"
[[services]]
name = "web"
vip = "203.0.113.10"
port = 80
protocol = "tcp"
regions = ["eu", "us"]

[[services]]
name = "eu-only"
vip = "203.0.113.11"
port = 443
protocol = "tcp"
regions = ["eu"]
"#,
    );
    let picked: Vec<String> = (0..8u32)
        .filter(|i| !(i + variant).is_multiple_of(3))
        .map(|i| format!("\"b{i}\""))
        .collect();
    s.push_str(&format!(
        "\n[[services]]\nname = \"mixed\"\nvip = \"203.0.113.12\"\nport = 53\nprotocol = \"udp\"\nbackends = [{}]\n",
        picked.join(", ")
    ));
    s
}

struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!("steer-owner-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Writes `text` to `path` atomically, so a concurrent reload reads either
/// the old or the new file, never half of one.
fn write_atomic(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).expect("write config");
    std::fs::rename(&tmp, path).expect("rename config");
}

fn status(up: bool) -> TargetStatus {
    TargetStatus {
        up,
        ..TargetStatus::initial()
    }
}

/// Every service's active table, by backend name, as the kernel holds it.
fn tables(dp: &Dataplane, cfg: &Config) -> BTreeMap<String, Vec<Option<String>>> {
    cfg.services
        .iter()
        .map(|s| (s.name.clone(), dp.table(&s.name).expect("table")))
        .collect()
}

/// What a fresh data plane holds after programming `state` on `cfg`:
/// the policy of that state, written by an independent data plane.
fn expected_tables(cfg: &Config, state: BackendState) -> BTreeMap<String, Vec<Option<String>>> {
    let mut fresh = Dataplane::load(&cfg.dataplane).expect("load a second data plane");
    fresh
        .apply_state(cfg, state)
        .expect("apply to the fresh one");
    tables(&fresh, cfg)
}

fn ask(
    events: &mpsc::Sender<Event>,
    make: impl FnOnce(oneshot::Sender<Response>) -> Event,
) -> Response {
    let (tx, rx) = oneshot::channel();
    events.blocking_send(make(tx)).expect("owner alive");
    rx.blocking_recv().expect("owner answered")
}

/// A tiny deterministic generator (no dependency, reproducible runs).
struct Lcg(u64);
impl Lcg {
    fn next(&mut self) -> u32 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) as u32
    }
}

#[test]
#[ignore = "needs root: BPF or network namespaces (cargo xtask test runs it)"]
fn interleaved_health_drains_and_reloads_leave_the_maps_equal_to_the_final_state() {
    if !require_root() {
        return;
    }
    let dir = TempDir::new("stress");
    let path = dir.0.join("steer.toml");
    write_atomic(&path, &config(0));
    let cfg = Config::load(&path).expect("valid config");
    let dp = Dataplane::load(&cfg.dataplane).expect("load");
    let (mut owner, published) = Owner::new(path.clone(), cfg, dp, BTreeSet::new());
    owner.program().expect("first programming");
    let (events, rx) = mpsc::channel(steer::daemon::EVENT_QUEUE);
    let owner_thread = std::thread::spawn(move || owner.run(rx));

    const HEALTH_FLIPS: u32 = 400;
    const DRAINS: u32 = 200;
    const RELOADS: u32 = 60;
    let mut workers = Vec::new();
    // Health: the monitor sends whole maps; flip random subsets.
    for seed in 1..=2u64 {
        let events = events.clone();
        workers.push(std::thread::spawn(move || {
            let mut rng = Lcg(seed);
            for _ in 0..HEALTH_FLIPS / 2 {
                let map: BTreeMap<String, TargetStatus> = (0..8)
                    .map(|i| (format!("b{i}"), status(!rng.next().is_multiple_of(4))))
                    .collect();
                events
                    .blocking_send(Event::Health(map))
                    .expect("owner alive");
            }
        }));
    }
    // Drains and undrains; some name a backend that a reload removed.
    {
        let events = events.clone();
        workers.push(std::thread::spawn(move || {
            let mut rng = Lcg(7);
            for _ in 0..DRAINS {
                let backend = format!("b{}", rng.next() % 8);
                let undo = rng.next().is_multiple_of(2);
                let r = ask(&events, |reply| Event::Drain {
                    backend: backend.clone(),
                    undo,
                    reply: Some(reply),
                });
                assert!(matches!(r, Response::Ok { .. }), "drain {backend}: {r:?}");
            }
        }));
    }
    // Reloads of changing files.
    {
        let events = events.clone();
        let path = path.clone();
        workers.push(std::thread::spawn(move || {
            for v in 1..=RELOADS {
                write_atomic(&path, &config(v));
                let r = ask(&events, |reply| Event::Reload { reply: Some(reply) });
                assert!(matches!(r, Response::Ok { .. }), "reload {v}: {r:?}");
            }
        }));
    }
    // A reader of the published snapshot: generations never go back.
    let reader = {
        let published = published.clone();
        std::thread::spawn(move || {
            let mut last = 0u64;
            let mut seen = 0u32;
            let deadline = std::time::Instant::now() + Duration::from_secs(120);
            while std::time::Instant::now() < deadline && seen < 5_000 {
                let p: Arc<Published> = published.borrow().clone();
                assert!(
                    p.generation >= last,
                    "generation went back from {last} to {}",
                    p.generation
                );
                last = p.generation;
                seen += 1;
                std::thread::yield_now();
            }
        })
    };
    for w in workers {
        w.join().expect("worker");
    }
    reader.join().expect("reader");
    // A last health map with every backend up except b0: the drains (one
    // thread, a fixed sequence) then decide the rest.
    let last: BTreeMap<String, TargetStatus> =
        (0..8).map(|i| (format!("b{i}"), status(i != 0))).collect();
    events
        .blocking_send(Event::Health(last))
        .expect("owner alive");
    events.blocking_send(Event::Stop).expect("owner alive");
    let owner = owner_thread.join().expect("owner thread");

    let p = owner.published();
    assert_eq!(p.reloads, u64::from(RELOADS), "every reload applied");
    assert_eq!(p.generation, 1 + u64::from(RELOADS));
    assert_eq!(p.reload_failures, 0);
    // The last reload read the last file.
    let final_cfg = Config::parse(&config(RELOADS)).expect("final config");
    assert_eq!(*p.cfg, final_cfg, "the owner holds the last config written");
    // The published state is the owner's state, and the kernel's maps are
    // exactly the policy of it.
    let want_down = down_set(&p.cfg, &p.health);
    assert_eq!(p.down, want_down, "published down set");
    let state = BackendState {
        down: want_down,
        drained: p.drained.clone(),
    };
    let got = tables(owner.dataplane(), &p.cfg);
    let want = expected_tables(&p.cfg, state);
    assert_eq!(got.len(), 3);
    for (svc, table) in &want {
        assert_eq!(
            got.get(svc),
            Some(table),
            "service {svc}: the kernel's table differs from policy(final state)"
        );
    }
    // Not vacuous: web holds exactly its backends that are neither down
    // nor drained.
    let in_web: BTreeSet<String> = got["web"].iter().flatten().cloned().collect();
    let serving: BTreeSet<String> = (1..8)
        .map(|i| format!("b{i}"))
        .filter(|b| !p.drained.contains(b))
        .collect();
    assert_eq!(p.down, BTreeSet::from(["b0".to_string()]));
    assert_eq!(in_web, serving, "drained {:?}", p.drained);
    assert!(
        !serving.is_empty(),
        "the drain sequence leaves some backend serving"
    );
    drop(owner);
}

/// Three backends for service "a" and one for "b", with room for exactly
/// four reals. The reload moves two of "a"'s backends to "b": still four
/// in all (valid), but "b" needs new ids before "a" releases its old ones,
/// so programming fails with a capacity error and must be rolled back.
fn rollback_config(moved: bool) -> String {
    let (a, b) = if moved {
        ("\"a1\"", "\"b1\", \"b2\", \"b3\"")
    } else {
        ("\"a1\", \"a2\", \"a3\"", "\"b1\"")
    };
    let mut s = String::from(
        r#"
[dataplane]
next_hop_mac = "02:00:00:00:00:fe"
encap_source_v4 = "198.18.0.0/24"
conntrack_size = 1024
maglev_table_size = 251
max_tables = 4
max_reals = 4

[[regions]]
name = "eu"
"#,
    );
    let names: &[&str] = if moved {
        &["a1", "b1", "b2", "b3"]
    } else {
        &["a1", "a2", "a3", "b1"]
    };
    for (i, n) in names.iter().enumerate() {
        s.push_str(&format!(
            "\n[[backends]]\nname = \"{n}\"\naddress = \"192.0.2.{}\"\nregion = \"eu\"\n",
            20 + i
        ));
    }
    s.push_str(&format!(
        "\n[[services]]\nname = \"a\"\nvip = \"203.0.113.20\"\nport = 80\nprotocol = \"tcp\"\nbackends = [{a}]\n\
         \n[[services]]\nname = \"b\"\nvip = \"203.0.113.21\"\nport = 80\nprotocol = \"tcp\"\nbackends = [{b}]\n"
    ));
    s
}

#[test]
#[ignore = "needs root: BPF or network namespaces (cargo xtask test runs it)"]
fn a_failed_reload_restores_the_config_and_the_drains() {
    if !require_root() {
        return;
    }
    let dir = TempDir::new("rollback");
    let path = dir.0.join("steer.toml");
    write_atomic(&path, &rollback_config(false));
    let cfg = Config::load(&path).expect("valid config");
    let dp = Dataplane::load(&cfg.dataplane).expect("load");
    let (mut owner, _published) = Owner::new(path.clone(), cfg.clone(), dp, BTreeSet::new());
    owner.program().expect("first programming");
    // Drain a3, which the new config removes.
    let (tx, rx) = oneshot::channel();
    owner.handle(Event::Drain {
        backend: "a3".into(),
        undo: false,
        reply: Some(tx),
    });
    assert!(matches!(rx.blocking_recv(), Ok(Response::Ok { .. })));
    let before = tables(owner.dataplane(), &cfg);

    let moved = rollback_config(true);
    Config::parse(&moved).expect("the new config itself is valid");
    write_atomic(&path, &moved);
    let (tx, rx) = oneshot::channel();
    owner.handle(Event::Reload { reply: Some(tx) });
    let r = rx.blocking_recv().expect("answer");
    let Response::Error { message, .. } = r else {
        panic!("the reload must fail, got {r:?}");
    };
    assert!(message.contains("kept the old one"), "{message}");
    assert!(
        message.contains("max_reals"),
        "names the capacity: {message}"
    );
    assert!(
        !message.contains("rolling back"),
        "the rollback worked: {message}"
    );

    let p = owner.published();
    assert_eq!(*p.cfg, cfg, "the old config is back");
    assert_eq!(
        p.drained,
        BTreeSet::from(["a3".to_string()]),
        "the drain is back"
    );
    assert_eq!(p.reload_failures, 1);
    assert_eq!(p.generation, 1);
    assert!(p.last_reload.as_ref().is_some_and(|o| !o.ok));
    assert_eq!(
        tables(owner.dataplane(), &cfg),
        before,
        "the old tables serve"
    );
    let state = BackendState {
        down: BTreeSet::new(),
        drained: p.drained.clone(),
    };
    assert_eq!(before, expected_tables(&cfg, state));
    assert!(
        !before["a"].iter().flatten().any(|b| b == "a3"),
        "a3 stays drained in the table"
    );
}

#[test]
#[ignore = "needs root: BPF or network namespaces (cargo xtask test runs it)"]
fn a_region_drain_empties_the_region_from_every_table_and_undoes() {
    if !require_root() {
        return;
    }
    let dir = TempDir::new("drain-region");
    let path = dir.0.join("steer.toml");
    write_atomic(&path, &config(0));
    let cfg = Config::load(&path).expect("valid config");
    let dp = Dataplane::load(&cfg.dataplane).expect("load");
    let (mut owner, _published) = Owner::new(path.clone(), cfg.clone(), dp, BTreeSet::new());
    owner.program().expect("first programming");
    let us: BTreeSet<String> = (4..8).map(|i| format!("b{i}")).collect();
    let uses_us = |t: &Vec<Option<String>>| t.iter().flatten().any(|b| us.contains(b));
    let before = tables(owner.dataplane(), &cfg);
    assert!(uses_us(&before["web"]), "web is served by us before");

    let drain = |owner: &mut Owner, region: &str, undo: bool| {
        let (tx, rx) = oneshot::channel();
        owner.handle(Event::DrainRegion {
            region: region.into(),
            undo,
            timeout: None,
            reply: Some(tx),
        });
        rx.blocking_recv().expect("answer")
    };
    let r = drain(&mut owner, "us", false);
    assert!(
        matches!(&r, Response::Ok { message } if message.contains("region us drained")),
        "{r:?}"
    );
    let t = tables(owner.dataplane(), &cfg);
    assert!(
        !uses_us(&t["web"]) && !uses_us(&t["mixed"]),
        "no us backend takes new flows"
    );
    assert_eq!(t["eu-only"], before["eu-only"], "eu-only is untouched");
    // The same tables as draining each us backend one by one.
    let state = BackendState {
        down: BTreeSet::new(),
        drained: us.clone(),
    };
    assert_eq!(t, expected_tables(&cfg, state));
    assert_eq!(
        owner.published().drained_regions,
        BTreeSet::from(["us".to_string()])
    );

    let r = drain(&mut owner, "ap", false);
    assert!(
        matches!(&r, Response::Error { message, .. } if message.contains("unknown region \"ap\" (regions: eu, us)")),
        "{r:?}"
    );
    let r = drain(&mut owner, "us", true);
    assert!(matches!(r, Response::Ok { .. }), "{r:?}");
    assert_eq!(tables(owner.dataplane(), &cfg), before, "undrained");
    assert!(owner.published().drained_regions.is_empty());
}

/// Runs a first data plane with pins, drains a backend, drops it without
/// cleanup (as a killed daemon would), replaces its state file with
/// `corrupt(valid state)`, and opens again.
fn reopen_with_state(name: &str, corrupt: impl Fn(&str) -> String) -> (Dataplane, bool) {
    let cfg = Config::parse(&config(0)).expect("valid");
    let pins = Pins::new(name);
    {
        let (mut dp, adopted) = Dataplane::open(&cfg.dataplane, pins.0.clone()).expect("open");
        assert!(!adopted);
        let state = BackendState {
            down: BTreeSet::new(),
            drained: ["b1".to_string()].into(),
        };
        dp.apply_state(&cfg, state).expect("apply");
    }
    let valid = std::fs::read_to_string(&pins.0.state_file).expect("state file written");
    std::fs::write(&pins.0.state_file, corrupt(&valid)).expect("corrupt it");
    let r = Dataplane::open(&cfg.dataplane, pins.0.clone())
        .expect("a bad state file must not stop the start");
    let dp = r.0;
    // Programming works on the fresh start, and the tables are those of a
    // fresh data plane.
    let mut dp = dp;
    dp.apply_state(&cfg, BackendState::default())
        .expect("apply after a discarded state");
    assert_eq!(
        tables(&dp, &cfg),
        expected_tables(&cfg, BackendState::default())
    );
    drop(pins);
    (dp, r.1)
}

#[test]
#[ignore = "needs root: BPF or network namespaces (cargo xtask test runs it)"]
fn an_unparsable_state_file_gives_a_fresh_start_that_says_why() {
    if !require_root() {
        return;
    }
    let (dp, adopted) = reopen_with_state("corrupt", |_| r#"{"version":1}"#.to_string());
    assert!(!adopted);
    let why = dp
        .discarded_state()
        .expect("the reason is kept for the warning");
    assert!(why.contains("unreadable"), "{why}");
    assert!(
        dp.backend_state().drained.is_empty(),
        "no drain survives a discarded state"
    );
}

#[test]
#[ignore = "needs root: BPF or network namespaces (cargo xtask test runs it)"]
fn a_state_file_with_out_of_range_ids_is_discarded_not_a_panic() {
    if !require_root() {
        return;
    }
    // Real ids beyond max_reals (64) and a vip id beyond max_tables (8):
    // before validation these hit index panics and an assert in the mmap.
    let (dp, adopted) = reopen_with_state("range", |valid| {
        let mut v: serde_json::Value = serde_json::from_str(valid).expect("json");
        v["services"][0]["vip_id"] = serde_json::json!(1000);
        let reals = v["services"][1]["reals"].as_object_mut().expect("reals");
        for r in reals.values_mut() {
            r["id"] = serde_json::json!(100_000);
        }
        v.to_string()
    });
    assert!(!adopted);
    let why = dp.discarded_state().expect("reason");
    assert!(why.contains("vip id 1000"), "{why}");
    assert!(why.contains("real id 100000"), "{why}");
}

#[test]
#[ignore = "needs root: BPF or network namespaces (cargo xtask test runs it)"]
fn a_state_file_from_other_sizes_is_discarded_with_the_sizes_named() {
    if !require_root() {
        return;
    }
    let (dp, adopted) = reopen_with_state("sizes", |valid| {
        let mut v: serde_json::Value = serde_json::from_str(valid).expect("json");
        v["max_reals"] = serde_json::json!(128);
        v.to_string()
    });
    assert!(!adopted);
    assert!(dp.discarded_state().expect("reason").contains("sizes"));
}

#[test]
#[ignore = "needs root: BPF or network namespaces (cargo xtask test runs it)"]
fn a_region_drain_survives_a_restart() {
    if !require_root() {
        return;
    }
    let dir = TempDir::new("drain-region-restart");
    let path = dir.0.join("steer.toml");
    write_atomic(&path, &config(0));
    let cfg = Config::load(&path).expect("valid config");
    let pins = Pins::new("owner-drain-region-restart");
    {
        let (dp, adopted) = Dataplane::open(&cfg.dataplane, pins.0.clone()).expect("open");
        assert!(!adopted);
        let (mut owner, _p) = Owner::new(path.clone(), cfg.clone(), dp, BTreeSet::new());
        owner.program().expect("program");
        let (tx, rx) = oneshot::channel();
        owner.handle(Event::DrainRegion {
            region: "us".into(),
            undo: false,
            timeout: None,
            reply: Some(tx),
        });
        assert!(matches!(rx.blocking_recv(), Ok(Response::Ok { .. })));
        // Dropped without cleanup, as a killed daemon.
    }
    let (dp, adopted) = Dataplane::open(&cfg.dataplane, pins.0.clone()).expect("reopen");
    assert!(adopted, "the pins and state are adopted");
    assert_eq!(
        dp.drained_regions(),
        &BTreeSet::from(["us".to_string()]),
        "the state file kept the region drain"
    );
    let drained = dp.backend_state().drained.clone();
    let (mut owner, _p) = Owner::new(path.clone(), cfg.clone(), dp, drained);
    owner.program().expect("program after the restart");
    assert_eq!(
        owner.published().drained_regions,
        BTreeSet::from(["us".to_string()])
    );
    let us: BTreeSet<String> = (4..8).map(|i| format!("b{i}")).collect();
    let t = tables(owner.dataplane(), &cfg);
    assert!(
        !t["web"].iter().flatten().any(|b| us.contains(b)),
        "still no new flows to us after the restart"
    );
}

#[test]
#[ignore = "needs root: BPF or network namespaces (cargo xtask test runs it)"]
fn a_region_drain_timeout_moves_established_flows_once_it_passes() {
    if !require_root() {
        return;
    }
    let dir = TempDir::new("drain-region-timeout");
    let path = dir.0.join("steer.toml");
    write_atomic(&path, &config(0));
    let cfg = Config::load(&path).expect("valid config");
    let dp = Dataplane::load(&cfg.dataplane).expect("load");
    let (mut owner, _p) = Owner::new(path.clone(), cfg.clone(), dp, BTreeSet::new());
    owner.program().expect("program");
    let us: BTreeSet<String> = (4..8).map(|i| format!("b{i}")).collect();
    let (tx, rx) = oneshot::channel();
    owner.handle(Event::DrainRegion {
        region: "us".into(),
        undo: false,
        timeout: Some(Duration::from_millis(300)),
        reply: Some(tx),
    });
    let r = rx.blocking_recv().expect("answer");
    assert!(
        matches!(&r, Response::Ok { message } if message.contains("established flows continue for")),
        "{r:?}"
    );
    // Before the timeout: no new flows, but established ones stay (the
    // backends are not down, so conntrack keeps them).
    owner.handle(Event::Tick);
    assert!(owner.published().down.is_disjoint(&us));
    std::thread::sleep(Duration::from_millis(400));
    owner.handle(Event::Tick);
    let p = owner.published();
    assert!(us.is_subset(&p.down), "past the timeout: {:?}", p.down);
    assert!(p.drain_moved.contains("us"));
    // Undo: the region serves again and nothing is down.
    let (tx, rx) = oneshot::channel();
    owner.handle(Event::DrainRegion {
        region: "us".into(),
        undo: true,
        timeout: None,
        reply: Some(tx),
    });
    assert!(matches!(rx.blocking_recv(), Ok(Response::Ok { .. })));
    let p = owner.published();
    assert!(p.down.is_disjoint(&us) && p.region_drain_deadlines.is_empty());
}
