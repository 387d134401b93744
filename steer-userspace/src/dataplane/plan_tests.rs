//! The plan without a kernel: ids, write order and minimal rewrites.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::time::{Duration, Instant};

use steer_common::{REAL_F_DOWN, REAL_F_PRESENT};

use super::*;

const LIMITS: Limits = Limits {
    ring_size: 251,
    max_tables: 4,
    max_reals: 8,
    conntrack_size: 1024,
    conntrack_size_v6: 1024,
};

fn backend(name: &str, last: u8, weight: u32, up: bool) -> DesiredBackend {
    DesiredBackend {
        name: name.into(),
        address: IpAddr::from([192, 0, 2, last]),
        weight,
        up,
    }
}

fn service(name: &str, last: u8, backends: Vec<DesiredBackend>) -> DesiredService {
    DesiredService {
        name: name.into(),
        vip: IpAddr::from([203, 0, 113, last]),
        port: 80,
        protocol: 6,
        client_affinity: false,
        backends,
        tables: vec![],
    }
}

fn two_services() -> Vec<DesiredService> {
    vec![
        service(
            "web",
            10,
            vec![
                backend("a", 1, 100, true),
                backend("b", 2, 300, true),
                backend("c", 3, 100, false),
            ],
        ),
        service("dns", 11, vec![backend("d", 4, 100, true)]),
    ]
}

fn globals() -> Globals {
    Globals {
        mtu: 1500,
        pmtu_reply_rate: 100,
        pmtu_reply_burst: 100,
        next_hop_mac: [2, 0, 0, 0, 0, 0xfe],
        ttl: 64,
        encap_source_v4: Some(([198, 18, 0, 0], 24)),
        encap_source_v6: None,
        source_mac: None,
    }
}

/// The ids of a service's backends in the ledger.
fn ids(l: &IdLedger, svc: &str) -> BTreeMap<String, u32> {
    l.services[svc]
        .reals
        .iter()
        .map(|(n, r)| (n.clone(), r.id))
        .collect()
}

fn tables(writes: &[Write]) -> Vec<(u32, &Vec<u32>)> {
    writes
        .iter()
        .filter_map(|w| match w {
            Write::Table {
                table_id, table, ..
            } => Some((*table_id, &**table)),
            _ => None,
        })
        .collect()
}

/// Replays the writes on a model of the REALS map and checks, at every
/// table flip, that each id in the new table is present and up.
fn check_order(writes: &[Write]) {
    let mut reals: BTreeMap<u32, Real> = BTreeMap::new();
    for (i, w) in writes.iter().enumerate() {
        match w {
            Write::Real { id, real } => {
                reals.insert(*id, *real);
            }
            Write::Table { table, .. } => {
                for id in table.iter().collect::<BTreeSet<_>>() {
                    let r = reals.get(id).unwrap_or_else(|| {
                        panic!("write {i}: table points at real {id} before it is written")
                    });
                    assert_eq!(
                        r.flags, REAL_F_PRESENT,
                        "write {i}: table points at real {id} that is not present and up"
                    );
                }
            }
            _ => {}
        }
    }
}

#[test]
fn first_plan_allocates_ids_and_orders_writes_safely() {
    let l = IdLedger::new(LIMITS);
    let (next, writes) = l
        .plan(&two_services(), &globals(), Instant::now())
        .expect("plan");
    // Distinct real ids, all below max_reals, distinct vip ids.
    let web = ids(&next, "web");
    let dns = ids(&next, "dns");
    let all: BTreeSet<u32> = web.values().chain(dns.values()).copied().collect();
    assert_eq!(all.len(), 4);
    assert!(all.iter().all(|id| *id < LIMITS.max_reals));
    assert_ne!(next.services["web"].vip_id, next.services["dns"].vip_id);
    assert!(matches!(writes[0], Write::Settings(_)));
    check_order(&writes);
    // The down backend "c" gets no slot, and is written down after the
    // table flips.
    let t = tables(&writes);
    assert_eq!(t.len(), 2, "one table per service");
    let web_table = t
        .iter()
        .find(|(v, _)| *v == next.services["web"].vip_id)
        .expect("web table")
        .1;
    assert!(!web_table.contains(&web["c"]));
    // Shares follow the weights (1:3) within 2 % of the ring.
    let b = web_table.iter().filter(|id| **id == web["b"]).count() as f64;
    let a = web_table.iter().filter(|id| **id == web["a"]).count() as f64;
    let n = web_table.len() as f64;
    assert_eq!(a + b, n, "every slot filled by a or b");
    assert!((b / n - 0.75).abs() < 0.02, "b share {}", b / n);
    let flip = writes
        .iter()
        .position(|w| matches!(w, Write::Table { .. }))
        .expect("a flip");
    let c_down = writes
        .iter()
        .position(|w| matches!(w, Write::Real { id, real } if *id == web["c"] && real.flags == REAL_F_PRESENT | REAL_F_DOWN))
        .expect("c written down");
    assert!(c_down > flip, "a down real is written after the flip");
    // Nothing was waited for: no ring flipped before.
    assert!(!writes.iter().any(|w| matches!(w, Write::Wait(_))));
    // The last write is the exact VIP address set.
    let Some(Write::VipAddrs(addrs)) = writes.last() else {
        panic!("VIP_ADDRS last");
    };
    assert_eq!(addrs.len(), 2);
}

#[test]
fn an_unchanged_plan_rewrites_no_table() {
    let l = IdLedger::new(LIMITS);
    let now = Instant::now();
    let (l1, _) = l.plan(&two_services(), &globals(), now).expect("plan");
    let (l2, writes) = l1
        .plan(&two_services(), &globals(), now + Duration::from_secs(1))
        .expect("plan again");
    assert!(tables(&writes).is_empty(), "no table rebuilt");
    assert!(!writes.iter().any(|w| matches!(w, Write::Wait(_))));
    assert_eq!(ids(&l1, "web"), ids(&l2, "web"), "ids are stable");
}

#[test]
fn a_weight_change_rebuilds_one_table_after_the_grace_period() {
    let l = IdLedger::new(LIMITS);
    let now = Instant::now();
    let (l1, _) = l.plan(&two_services(), &globals(), now).expect("plan");
    let mut d = two_services();
    d[0].backends[0].weight = 300;
    // 4 ms after the first flip: wait the remaining 6 ms of the grace.
    let (l2, writes) = l1
        .plan(&d, &globals(), now + Duration::from_millis(4))
        .expect("plan");
    let t = tables(&writes);
    assert_eq!(t.len(), 1);
    assert_eq!(t[0].0, l1.services["web"].vip_id);
    let wait = writes
        .iter()
        .find_map(|w| match w {
            Write::Wait(d) => Some(*d),
            _ => None,
        })
        .expect("a wait before the flip");
    assert_eq!(wait, GRACE - Duration::from_millis(4));
    let wait_at = writes.iter().position(|w| matches!(w, Write::Wait(_)));
    let flip_at = writes.iter().position(|w| matches!(w, Write::Table { .. }));
    assert!(wait_at < flip_at);
    // The other ring of the same table.
    assert_ne!(
        l2.services["web"].default_table().generation,
        l1.services["web"].default_table().generation
    );
    check_order(&writes);
}

#[test]
fn a_removed_service_frees_its_ids_for_reuse_under_a_new_generation() {
    let l = IdLedger::new(LIMITS);
    let now = Instant::now();
    let (l1, _) = l.plan(&two_services(), &globals(), now).expect("plan");
    let old_dns = ids(&l1, "dns")["d"];
    let old_vip = l1.services["dns"].vip_id;
    let mut d = two_services();
    d.pop();
    let (l2, writes) = l1.plan(&d, &globals(), now).expect("plan");
    assert!(matches!(writes[2], Write::RemoveVip(_)), "{:?}", writes[2]);
    assert!(l2.free_reals.contains(&old_dns));
    assert!(l2.free_vips.contains(&old_vip));
    // A new service takes the freed id, one generation later.
    d.push(service("ntp", 12, vec![backend("e", 5, 100, true)]));
    let (l3, _) = l2.plan(&d, &globals(), now).expect("plan");
    assert_eq!(ids(&l3, "ntp")["e"], old_dns);
    assert_eq!(
        l3.real_generation[old_dns as usize],
        l1.real_generation[old_dns as usize].wrapping_add(1)
    );
}

#[test]
fn capacity_and_family_errors_allocate_nothing() {
    let l = IdLedger::new(LIMITS);
    let too_many: Vec<DesiredBackend> = (0..9)
        .map(|i| backend(&format!("b{i}"), 20 + i, 100, true))
        .collect();
    let err = l
        .plan(&[service("big", 10, too_many)], &globals(), Instant::now())
        .expect_err("9 reals do not fit in 8");
    assert_eq!(
        err,
        PlanError::Capacity {
            what: "service backends",
            max: 8,
            knob: "max_reals"
        }
    );
    assert!(l.services.is_empty() && l.next_real == 0);
    let mut v6 = service("v6", 10, vec![backend("a", 1, 100, true)]);
    v6.vip = "2001:db8::10".parse().expect("v6");
    assert!(matches!(
        l.plan(&[v6], &globals(), Instant::now()),
        Err(PlanError::FamilyMismatch { .. })
    ));
}

#[test]
fn settings_carry_the_globals() {
    let s = settings(&LIMITS, &globals(), &two_services());
    assert_eq!(s.ring_size, 251);
    assert_eq!(s.mtu, 1500);
    assert_eq!(s.src4_base, [198, 18, 0, 0]);
    assert_eq!(s.src4_mask, 0xff, "a /24 leaves 8 host bits");
    assert_eq!(s.flags & SETTINGS_F_PORT0_VIPS, 0);
    let g = Globals {
        pmtu_reply_rate: 7,
        pmtu_reply_burst: 3,
        ..globals()
    };
    let s = settings(&LIMITS, &g, &two_services());
    assert_eq!((s.pmtu_reply_rate, s.pmtu_reply_burst), (7, 3));
    let mut any_port = two_services();
    any_port[1].port = 0;
    let s = settings(&LIMITS, &globals(), &any_port);
    assert_ne!(s.flags & SETTINGS_F_PORT0_VIPS, 0);
}

/// Position of the first write matching `f`.
fn first(writes: &[Write], f: impl Fn(&Write) -> bool) -> Option<usize> {
    writes.iter().position(f)
}

fn zero_vip_at(writes: &[Write], id: u32) -> Option<usize> {
    first(
        writes,
        |w| matches!(w, Write::ZeroStats { vip: Some(v), real: None } if *v == id),
    )
}

fn zero_real_at(writes: &[Write], id: u32) -> Option<usize> {
    first(
        writes,
        |w| matches!(w, Write::ZeroStats { vip: None, real: Some(r) } if *r == id),
    )
}

/// Item 8 of the hardening issue: a service added in the same plan that
/// removes another takes over its VIP id and real id; both ids' counters
/// are zeroed after the old holder is gone and before anything refers to
/// the ids again.
#[test]
fn a_reused_id_has_its_counters_zeroed_before_its_first_use() {
    let l = IdLedger::new(LIMITS);
    let now = Instant::now();
    let (l1, _) = l.plan(&two_services(), &globals(), now).expect("plan");
    let old_real = ids(&l1, "dns")["d"];
    let old_vip = l1.services["dns"].vip_id;
    let mut d = two_services();
    d.pop();
    d.push(service("ntp", 12, vec![backend("e", 5, 100, true)]));
    let (l2, writes) = l1.plan(&d, &globals(), now).expect("plan");
    assert_eq!(l2.services["ntp"].vip_id, old_vip, "the VIP id is reused");
    assert_eq!(ids(&l2, "ntp")["e"], old_real, "the real id is reused");

    let zero_vip = zero_vip_at(&writes, old_vip).expect("VIP_STATS of the reused id zeroed");
    let zero_real = zero_real_at(&writes, old_real).expect("REAL_STATS of the reused id zeroed");
    let removed = first(&writes, |w| matches!(w, Write::RemoveVip(_))).expect("old VIP removed");
    let cleared = first(
        &writes,
        |w| matches!(w, Write::Real { id, real } if *id == old_real && real.flags == 0),
    )
    .expect("old real cleared");
    let present = first(
        &writes,
        |w| matches!(w, Write::Real { id, real } if *id == old_real && real.flags == REAL_F_PRESENT),
    )
    .expect("new real written");
    let table = first(
        &writes,
        |w| matches!(w, Write::Table { table_id, .. } if *table_id == old_vip),
    )
    .expect("new table");
    let vip = first(
        &writes,
        |w| matches!(w, Write::Vip { info, .. } if info.vip_id == old_vip),
    )
    .expect("new VIP");
    assert!(
        removed < zero_vip && cleared < zero_real,
        "zeroed after the old holder went"
    );
    assert!(
        zero_vip < table && zero_vip < vip,
        "VIP id zeroed before its first use"
    );
    assert!(
        zero_real < present && zero_real < table,
        "real id zeroed before its first use"
    );
    // The kept service's ids are not touched.
    for id in ids(&l2, "web").values() {
        assert_eq!(zero_real_at(&writes, *id), None, "kept real {id} zeroed");
    }
    assert_eq!(zero_vip_at(&writes, l2.services["web"].vip_id), None);
}

#[test]
fn ids_that_stay_with_their_holder_are_never_zeroed() {
    let l = IdLedger::new(LIMITS);
    let now = Instant::now();
    let (l1, first_writes) = l.plan(&two_services(), &globals(), now).expect("plan");
    // The first plan allocates every id: all of them start from zero.
    for svc in ["web", "dns"] {
        assert!(zero_vip_at(&first_writes, l1.services[svc].vip_id).is_some());
        for id in ids(&l1, svc).values() {
            assert!(zero_real_at(&first_writes, *id).is_some());
        }
    }
    // Weights, health and drains change no id.
    let mut d = two_services();
    d[0].backends[0].weight = 0;
    d[0].backends[1].up = false;
    let (_, writes) = l1
        .plan(&d, &globals(), now + Duration::from_secs(1))
        .expect("plan");
    assert!(
        !writes.iter().any(|w| matches!(w, Write::ZeroStats { .. })),
        "{writes:?}"
    );
}

#[test]
fn a_readdressed_backend_gets_zeroed_counters() {
    let l = IdLedger::new(LIMITS);
    let now = Instant::now();
    let (l1, _) = l.plan(&two_services(), &globals(), now).expect("plan");
    let mut d = two_services();
    d[1].backends[0].address = IpAddr::from([192, 0, 2, 44]);
    let (l2, writes) = l1.plan(&d, &globals(), now).expect("plan");
    let new_id = ids(&l2, "dns")["d"];
    assert!(zero_real_at(&writes, new_id).is_some(), "{writes:?}");
}

#[test]
fn the_fallback_source_mac_follows_the_globals() {
    let l = IdLedger::new(LIMITS);
    let (_, writes) = l
        .plan(&two_services(), &globals(), Instant::now())
        .expect("plan");
    assert_eq!(writes[1], Write::FallbackSourceMac(None));
    let g = Globals {
        source_mac: Some([2, 0, 0, 0, 0, 0x5e]),
        ..globals()
    };
    let (_, writes) = l.plan(&two_services(), &g, Instant::now()).expect("plan");
    assert_eq!(
        writes[1],
        Write::FallbackSourceMac(Some([2, 0, 0, 0, 0, 0x5e]))
    );
}
