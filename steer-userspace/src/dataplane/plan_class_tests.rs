//! The plan's client classes and class tables, without a kernel: table ids
//! from the shared pool, `CLASS_TABLES` rows, slot mapping, the painted
//! IPv4 array (longest prefix wins) and the minimal class-map diffs.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use steer_common::{
    class_v4_index, ClassV6Key, NO_REAL, REAL_F_DOWN, REAL_F_PRESENT, RESIDENCY_DROP, VIP_F_CLASSES,
};

use super::*;

const RING: u32 = 13;

fn limits(max_tables: u32) -> Limits {
    Limits {
        ring_size: RING,
        max_tables,
        max_reals: 16,
        conntrack_size: 1024,
        conntrack_size_v6: 1024,
    }
}

fn globals() -> Globals {
    Globals {
        mtu: 1500,
        pmtu_reply_rate: 100,
        pmtu_reply_burst: 100,
        ttl: 64,
        ..Default::default()
    }
}

fn backend(name: &str, last: u8, up: bool) -> DesiredBackend {
    DesiredBackend {
        name: name.into(),
        address: IpAddr::from([192, 0, 2, last]),
        weight: 1,
        up,
    }
}

fn service(name: &str, last: u8, tables: Vec<DesiredTable>) -> DesiredService {
    DesiredService {
        name: name.into(),
        vip: IpAddr::from([203, 0, 113, last]),
        port: 80,
        protocol: 6,
        client_affinity: false,
        backends: vec![
            backend(&format!("{name}-a"), 1, true),
            backend(&format!("{name}-b"), 2, true),
            backend(&format!("{name}-c"), 3, false),
        ],
        tables,
    }
}

fn slots(v: &[u32]) -> TableSlots {
    TableSlots::Slots(Arc::new(
        (0..RING as usize).map(|i| v[i % v.len()]).collect(),
    ))
}

fn table(class: u8, slots: TableSlots) -> DesiredTable {
    DesiredTable { class, slots }
}

fn plan(
    l: &IdLedger,
    d: &[DesiredService],
    c: &DesiredClasses,
) -> Result<(IdLedger, Vec<Write>), PlanError> {
    l.plan_with_classes(d, &globals(), &Arc::new(c.clone()), Instant::now())
}

fn pos(writes: &[Write], f: impl Fn(&Write) -> bool) -> usize {
    writes.iter().position(f).expect("the write is there")
}

#[test]
fn class_tables_take_ids_from_the_pool_and_rows_point_at_them() {
    let l = IdLedger::new(limits(4));
    let geo = service(
        "geo",
        10,
        vec![table(1, TableSlots::Maglev), table(7, slots(&[1]))],
    );
    let plain = service("plain", 11, vec![]);
    let (next, writes) =
        plan(&l, &[geo.clone(), plain.clone()], &Default::default()).expect("plan");
    let g = &next.services["geo"];
    let ids: BTreeSet<u32> = g
        .tables
        .values()
        .map(|t| t.table_id)
        .chain([next.services["plain"].vip_id])
        .collect();
    assert_eq!(
        ids.len(),
        4,
        "three tables of geo and plain's: four distinct ids"
    );
    assert!(ids.iter().all(|id| *id < 4));
    assert_eq!(g.default_table().table_id, g.vip_id);
    // The row: class 1 and 7 to their table id + 1, every other entry 0.
    let row = writes
        .iter()
        .find_map(|w| match w {
            Write::ClassRow { vip_id, row } if *vip_id == g.vip_id => Some(row.clone()),
            _ => None,
        })
        .expect("geo's row");
    for (class, want) in row.iter().enumerate() {
        let expect = match class {
            1 => g.tables[&1].table_id + 1,
            7 => g.tables[&7].table_id + 1,
            _ => 0,
        };
        assert_eq!(*want, expect, "row entry {class}");
    }
    // geo's VIP has VIP_F_CLASSES, plain's has not and gets no row.
    let flags = |svc: &str| {
        writes
            .iter()
            .find_map(|w| match w {
                Write::Vip { info, .. } if info.vip_id == next.services[svc].vip_id => {
                    Some(info.flags)
                }
                _ => None,
            })
            .expect("vip")
    };
    assert_eq!(flags("geo") & VIP_F_CLASSES, VIP_F_CLASSES);
    assert_eq!(flags("plain") & VIP_F_CLASSES, 0);
    assert!(!writes.iter().any(
        |w| matches!(w, Write::ClassRow { vip_id, .. } if *vip_id == next.services["plain"].vip_id)
    ));
    // Order: every table flipped before the row, the row before the VIP.
    let row_at = pos(&writes, |w| matches!(w, Write::ClassRow { .. }));
    let last_table = writes
        .iter()
        .rposition(|w| matches!(w, Write::Table { .. }))
        .expect("tables");
    let vip_at = pos(
        &writes,
        |w| matches!(w, Write::Vip { info, .. } if info.vip_id == g.vip_id),
    );
    assert!(last_table < row_at && row_at < vip_at);
    // Class 7's table is exactly the slots given, as real ids (index 1 is
    // geo-b).
    let b = g.reals["geo-b"].id;
    let t7 = writes
        .iter()
        .find_map(|w| match w {
            Write::Table {
                table_id, table, ..
            } if *table_id == g.tables[&7].table_id => Some(table.clone()),
            _ => None,
        })
        .expect("class 7 table");
    assert_eq!(*t7, vec![b; RING as usize]);
    // A fifth table does not fit: nothing is allocated.
    let more = service("more", 12, vec![]);
    let err = plan(&next, &[geo, plain, more], &Default::default()).expect_err("full");
    assert!(
        matches!(
            err,
            PlanError::Capacity {
                what: "services and class tables",
                max: 4,
                ..
            }
        ),
        "{err:?}"
    );
}

#[test]
fn a_service_without_tables_gets_the_maglev_table_it_always_had() {
    let l = IdLedger::new(limits(4));
    let (_, without) = plan(&l, &[service("s", 10, vec![])], &Default::default()).expect("plan");
    let (_, with) = plan(
        &l,
        &[service("s", 10, vec![table(0, TableSlots::Maglev)])],
        &Default::default(),
    )
    .expect("plan");
    assert_eq!(without, with, "tables: [] is one Maglev default table");
    let tables: Vec<_> = without
        .iter()
        .filter(|w| matches!(w, Write::Table { .. }))
        .collect();
    assert_eq!(tables.len(), 1);
}

#[test]
fn slots_map_backend_indexes_to_real_ids_and_keep_markers() {
    let l = IdLedger::new(limits(4));
    let d = service(
        "s",
        10,
        vec![table(0, slots(&[0, 2, NO_REAL, RESIDENCY_DROP]))],
    );
    let (next, writes) = plan(&l, &[d], &Default::default()).expect("plan");
    let s = &next.services["s"];
    let (a, c) = (s.reals["s-a"].id, s.reals["s-c"].id);
    let t = writes
        .iter()
        .find_map(|w| match w {
            Write::Table { table, .. } => Some(table.clone()),
            _ => None,
        })
        .expect("table");
    let want: Vec<u32> = (0..RING as usize)
        .map(|i| [a, c, NO_REAL, RESIDENCY_DROP][i % 4])
        .collect();
    assert_eq!(*t, want);
    // "s-c" is down and new, and the table names it: it is written
    // present (and down) before the flip, never after.
    let real_c = pos(
        &writes,
        |w| matches!(w, Write::Real { id, real } if *id == c && real.flags == REAL_F_PRESENT | REAL_F_DOWN),
    );
    let flip = pos(&writes, |w| matches!(w, Write::Table { .. }));
    assert!(real_c < flip);
    assert_eq!(
        writes
            .iter()
            .filter(|w| matches!(w, Write::Real { id, .. } if *id == c))
            .count(),
        1
    );
}

#[test]
fn malformed_tables_are_refused_before_anything_is_allocated() {
    let l = IdLedger::new(limits(4));
    let cases = [
        (
            vec![table(1, slots(&[0])), table(1, slots(&[1]))],
            "given twice",
        ),
        (
            vec![table(0, TableSlots::Slots(Arc::new(vec![0; 5])))],
            "5 slots, the ring size is 13",
        ),
        (vec![table(2, slots(&[3]))], "slot value 3"),
    ];
    for (tables, needle) in cases {
        let err = plan(&l, &[service("s", 10, tables)], &Default::default()).expect_err("bad");
        assert!(err.to_string().contains(needle), "{err} lacks {needle:?}");
        assert!(err.to_string().contains("service s"), "{err}");
    }
}

#[test]
fn a_class_that_goes_frees_its_table_after_the_plan() {
    let l = IdLedger::new(limits(4));
    let two = service(
        "s",
        10,
        vec![table(1, TableSlots::Maglev), table(2, TableSlots::Maglev)],
    );
    let (l1, _) = plan(&l, &[two], &Default::default()).expect("plan");
    let gone = l1.services["s"].tables[&2].table_id;
    let (l2, writes) = plan(
        &l1,
        &[service("s", 10, vec![table(1, TableSlots::Maglev)])],
        &Default::default(),
    )
    .expect("plan");
    assert!(!l2.services["s"].tables.contains_key(&2));
    // The row no longer points at it; the id is free, reused last.
    let row = writes
        .iter()
        .find_map(|w| match w {
            Write::ClassRow { row, .. } => Some(row.clone()),
            _ => None,
        })
        .expect("row rewritten");
    assert_eq!(row[2], 0);
    assert_eq!(row[1], l2.services["s"].tables[&1].table_id + 1);
    assert_eq!(l2.free_vips.first(), Some(&gone));
    // No table was rewritten: class 1's inputs did not change.
    assert!(!writes.iter().any(|w| matches!(w, Write::Table { .. })));
    // The last class goes: the row is all zero and the flag is cleared.
    let (_, writes) = plan(&l2, &[service("s", 10, vec![])], &Default::default()).expect("plan");
    assert!(writes
        .iter()
        .any(|w| matches!(w, Write::ClassRow { row, .. } if row.iter().all(|e| *e == 0))));
    assert!(writes
        .iter()
        .any(|w| matches!(w, Write::Vip { info, .. } if info.flags & VIP_F_CLASSES == 0)));
}

#[test]
fn the_longest_ipv4_prefix_wins_whatever_the_order() {
    let wide = ([10, 0, 0, 0], 8, 2);
    let narrow = ([10, 1, 0, 0], 16, 1);
    // Host bits are ignored: 10.1.2.99/24 is 10.1.2.0/24.
    let host = ([10, 1, 2, 99], 24, 3);
    for order in [vec![wide, narrow, host], vec![host, narrow, wide]] {
        let bytes = paint_v4(&order).expect("paint");
        let at = |a: [u8; 4]| bytes[class_v4_index(a) as usize];
        assert_eq!(at([10, 0, 0, 1]), 2);
        assert_eq!(at([10, 2, 255, 1]), 2);
        assert_eq!(at([10, 1, 0, 1]), 1);
        assert_eq!(at([10, 1, 255, 1]), 1);
        assert_eq!(at([10, 1, 2, 1]), 3);
        assert_eq!(at([9, 255, 255, 255]), 0);
        assert_eq!(at([11, 0, 0, 0]), 0);
        assert_eq!(bytes.iter().filter(|b| **b != 0).count(), 1 << 16);
    }
    assert!(
        paint_v4(&[]).expect("empty").is_empty(),
        "no prefix: all zero"
    );
    assert!(
        paint_v4(&[([10, 0, 0, 0], 25, 1)]).is_err(),
        "/25 is finer than a lane"
    );
    assert!(
        paint_v4(&[([10, 0, 0, 0], 8, 0)]).is_err(),
        "class 0 is no class"
    );
    let twice = paint_v4(&[([10, 0, 0, 0], 8, 1), ([10, 9, 0, 0], 8, 2)]).expect_err("twice");
    assert!(
        twice.to_string().contains("10.0.0.0/8 is given twice"),
        "{twice}"
    );
}

#[test]
fn the_ipv6_trie_holds_the_top_64_bits() {
    let a: std::net::Ipv6Addr = "2001:db8:aaaa:bbbb:cccc::1".parse().expect("v6");
    let t = trie_v6(&[(a.octets(), 48, 4), (a.octets(), 64, 5)]).expect("trie");
    assert_eq!(
        t,
        BTreeMap::from([
            (
                ClassV6Key {
                    prefixlen: 48,
                    addr: [0x20, 0x01, 0x0d, 0xb8, 0xaa, 0xaa, 0, 0]
                },
                4
            ),
            (
                ClassV6Key {
                    prefixlen: 64,
                    addr: [0x20, 0x01, 0x0d, 0xb8, 0xaa, 0xaa, 0xbb, 0xbb]
                },
                5
            ),
        ])
    );
    assert!(trie_v6(&[(a.octets(), 65, 1)]).is_err());
}

#[test]
fn class_maps_are_written_only_where_they_change() {
    let l = IdLedger::new(limits(4));
    let v6: std::net::Ipv6Addr = "2001:db8:1::".parse().expect("v6");
    let v6b: std::net::Ipv6Addr = "2001:db8:2::".parse().expect("v6");
    let v6_32: std::net::Ipv6Addr = "2001:db8::".parse().expect("v6");
    let v6_56: std::net::Ipv6Addr = "2001:db8:1:ff00::".parse().expect("v6");
    let c1 = DesiredClasses {
        v4: vec![([198, 51, 100, 0], 24, 1), ([10, 0, 0, 0], 8, 2)],
        v6: vec![
            (v6.octets(), 48, 1),
            (v6b.octets(), 48, 2),
            (v6_32.octets(), 32, 4),
        ],
    };
    let d = [service("s", 10, vec![table(1, TableSlots::Maglev)])];
    let (l1, w1) = plan(&l, &d, &c1).expect("plan");
    let v4_words = |w: &[Write]| {
        w.iter()
            .find_map(|w| match w {
                Write::ClassV4(words) => Some(words.clone()),
                _ => None,
            })
            .unwrap_or_default()
    };
    // First time: 1 word for the /24, 2^16 / 4 for the /8.
    assert_eq!(v4_words(&w1).len(), 1 + (1 << 14));
    let (l2, w2) = plan(&l1, &d, &c1).expect("plan");
    assert!(
        !w2.iter()
            .any(|w| matches!(w, Write::ClassV4(_) | Write::ClassV6 { .. })),
        "same classes: no class write"
    );
    // The plain `plan` keeps the classes last planned.
    let (_, w3) = l2.plan(&d, &globals(), Instant::now()).expect("plan");
    assert!(!w3
        .iter()
        .any(|w| matches!(w, Write::ClassV4(_) | Write::ClassV6 { .. })));
    // One /24 changes class. IPv6: one /48 goes, the other changes class
    // and gets a /56 inside it, so it moves from the exact /48s to the
    // trie; the /32 stays in the trie, unwritten.
    let c2 = DesiredClasses {
        v4: vec![([198, 51, 100, 0], 24, 3), ([10, 0, 0, 0], 8, 2)],
        v6: vec![
            (v6.octets(), 48, 3),
            (v6_32.octets(), 32, 4),
            (v6_56.octets(), 56, 5),
        ],
    };
    let (l3, w4) = plan(&l2, &d, &c2).expect("plan");
    let idx = class_v4_index([198, 51, 100, 0]);
    let mut word = [0u8; 4];
    word[(idx % 4) as usize] = 3;
    assert_eq!(v4_words(&w4), vec![(idx / 4, word)]);
    let diff = w4
        .iter()
        .find_map(|w| match w {
            Write::ClassV6 {
                insert,
                insert_48,
                remove_48,
                remove,
            } => Some((
                insert.clone(),
                insert_48.clone(),
                remove_48.clone(),
                remove.clone(),
            )),
            _ => None,
        })
        .expect("v6 diff");
    let key = |a: std::net::Ipv6Addr, prefixlen: u32| {
        let o = a.octets();
        ClassV6Key {
            prefixlen,
            addr: [o[0], o[1], o[2], o[3], o[4], o[5], o[6], o[7]],
        }
    };
    let six = |a: std::net::Ipv6Addr| {
        let o = a.octets();
        [o[0], o[1], o[2], o[3], o[4], o[5]]
    };
    assert_eq!(
        diff,
        (
            vec![(key(v6, 48), 3), (key(v6_56, 56), 5)],
            vec![],
            vec![six(v6), six(v6b)],
            vec![]
        )
    );
    // What the first plan wrote: the /48s exact, the /32 in the trie.
    let first = w1
        .iter()
        .find_map(|w| match w {
            Write::ClassV6 {
                insert, insert_48, ..
            } => Some((insert.clone(), insert_48.clone())),
            _ => None,
        })
        .expect("v6 writes");
    assert_eq!(
        first,
        (vec![(key(v6_32, 32), 4)], vec![(six(v6), 1), (six(v6b), 2)])
    );
    // No classes at all: every painted word goes back to zero.
    let (_, w5) = plan(&l3, &d, &DesiredClasses::default()).expect("plan");
    let words = v4_words(&w5);
    assert_eq!(words.len(), 1 + (1 << 14));
    assert!(words.iter().all(|(_, w)| *w == [0; 4]));
    // Bad classes allocate nothing.
    let bad = DesiredClasses {
        v4: vec![([1, 2, 3, 0], 24, 0)],
        v6: vec![],
    };
    assert!(matches!(plan(&l3, &d, &bad), Err(PlanError::Classes(_))));
}

fn v6key(a: &str, prefixlen: u32) -> ClassV6Key {
    let o = a.parse::<std::net::Ipv6Addr>().expect("v6").octets();
    ClassV6Key {
        prefixlen,
        addr: [o[0], o[1], o[2], o[3], o[4], o[5], o[6], o[7]],
    }
}

fn six(a: &str) -> [u8; 6] {
    let o = a.parse::<std::net::Ipv6Addr>().expect("v6").octets();
    [o[0], o[1], o[2], o[3], o[4], o[5]]
}

#[test]
fn ipv6_prefixes_up_to_48_are_expanded_into_the_48_hash_longest_winning() {
    let all = BTreeMap::from([
        // Covers :4 :5 :6 :7.
        (v6key("2001:db8:4::", 46), 1),
        (v6key("2001:db8:5::", 48), 2),
        // Longer than /48, inside :6.
        (v6key("2001:db8:6:ff00::", 56), 3),
        // 65,536 /48s: over the budget together with the rest.
        (v6key("2001:db8::", 32), 4),
    ]);
    let (exact, trie) = split_v6(all);
    assert_eq!(
        exact,
        BTreeMap::from([
            (six("2001:db8:4::"), 1),
            (six("2001:db8:5::"), 2),
            (six("2001:db8:7::"), 1),
        ]),
        "the /46 expanded, the /48 inside it wins, :6 (holds a /56) left out"
    );
    assert_eq!(
        trie,
        BTreeMap::from([
            (v6key("2001:db8::", 32), 4),
            // It covers :6, which the hash does not hold.
            (v6key("2001:db8:4::", 46), 1),
            (v6key("2001:db8:6:ff00::", 56), 3),
        ])
    );
}

#[test]
fn ipv6_expansion_stays_within_its_budget() {
    assert_eq!(v6_48_budget(3), 1 << 16);
    assert_eq!(v6_48_budget(1_000_000), 2_000_000);
    assert_eq!(v6_48_budget(5_000_000), 1 << 21);
    // One /32 is 65,536 /48s: within the floor, expanded.
    let (exact, trie) = split_v6(BTreeMap::from([(v6key("2001:db8::", 32), 7)]));
    assert_eq!(exact.len(), 1 << 16);
    assert!(exact.values().all(|c| *c == 7));
    assert!(trie.is_empty());
    // A /31 is twice that: the trie.
    let (exact, trie) = split_v6(BTreeMap::from([(v6key("2001:db8::", 31), 7)]));
    assert!(exact.is_empty());
    assert_eq!(trie.len(), 1);
}
