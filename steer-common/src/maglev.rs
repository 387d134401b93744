//! Weighted Maglev lookup-table builder (host only).
//!
//! Each backend walks its own permutation of the table's slots (offset and
//! skip derived from a stable identity, so tables stay stable when other
//! backends come and go) and claims free slots at a rate proportional to its
//! weight. Weight 0 means "no new flows": such a backend claims nothing.

use std::vec;
use std::vec::Vec;

use crate::hash::murmur3_32;
use crate::NO_REAL;

/// One entry of a table under construction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Entry<'a> {
    /// What the table stores for this backend (the real id).
    pub id: u32,
    /// Stable identity (for example the backend's name); decides the
    /// backend's permutation.
    pub key: &'a [u8],
    pub weight: u32,
}

/// Returns whether `n` is prime (trial division; table sizes are small).
pub fn is_prime(n: u32) -> bool {
    if n < 2 {
        return false;
    }
    if n.is_multiple_of(2) {
        return n == 2;
    }
    let mut d = 3u32;
    while (d as u64) * (d as u64) <= n as u64 {
        if n.is_multiple_of(d) {
            return false;
        }
        d += 2;
    }
    true
}

/// Builds a table of `size` slots (`size` must be prime). Slots hold the
/// entries' `id`s; when no entry has a positive weight every slot is
/// [`NO_REAL`].
///
/// # Panics
/// If `size` is not a prime; callers validate the configured size first.
pub fn build(entries: &[Entry<'_>], size: u32) -> Vec<u32> {
    assert!(is_prime(size), "maglev table size {size} is not prime");
    let m = size as u64;
    let mut table = vec![NO_REAL; size as usize];
    let live: Vec<&Entry<'_>> = entries.iter().filter(|e| e.weight > 0).collect();
    if live.is_empty() {
        return table;
    }
    let max_w = live.iter().map(|e| e.weight as u64).max().unwrap_or(1);
    // Per backend: its current position in its permutation, its skip, and
    // its weight credit. The permutation is offset, offset + skip, ... mod
    // m; advancing by one add and one conditional subtract avoids a
    // division per step.
    let mut pos: Vec<u32> = Vec::with_capacity(live.len());
    let mut skip: Vec<u32> = Vec::with_capacity(live.len());
    for e in &live {
        pos.push((murmur3_32(e.key, 0x6d61_676c) as u64 % m) as u32);
        skip.push((murmur3_32(e.key, 0x6576_2121) as u64 % (m - 1) + 1) as u32);
    }
    let mut credit = vec![0u64; live.len()];
    // Which slots are taken, as a bitmap: 8 KiB for 65,537 slots stays in
    // L1 cache while the probing jumps around, unlike the table itself.
    let mut taken = vec![0u64; (m as usize).div_ceil(64)];
    let size = m as u32;
    // The permutation walks stop when only `tail` slots (0.1 %) are left:
    // finding the last free slots costs most of the probes (about m * ln m
    // in all; the last 0.1 % alone take some 40 % of them). The tail is
    // filled below in slot order, by the same weighted turns, so it moves
    // at most 0.1 % of the slots when the backends change.
    let goal = m - m / 1000;
    let mut filled = 0u64;
    let mut turn = 0usize;
    'walk: while filled < goal {
        for (i, e) in live.iter().enumerate() {
            credit[i] += e.weight as u64;
            if credit[i] < max_w {
                continue;
            }
            credit[i] -= max_w;
            let mut p = pos[i];
            loop {
                let slot = p as usize;
                p += skip[i];
                if p >= size {
                    p -= size;
                }
                let (word, bit) = (slot >> 6, 1u64 << (slot & 63));
                if taken[word] & bit == 0 {
                    taken[word] |= bit;
                    table[slot] = e.id;
                    filled += 1;
                    break;
                }
            }
            pos[i] = p;
            if filled == goal {
                turn = i + 1;
                break 'walk;
            }
        }
    }
    // The tail: free slots in order, each to the next backend whose turn
    // (weight credit) comes up, continuing the rotation where it stopped.
    for slot in 0..m as usize {
        if taken[slot >> 6] & (1u64 << (slot & 63)) != 0 {
            continue;
        }
        loop {
            let i = turn % live.len();
            turn = i + 1;
            credit[i] += live[i].weight as u64;
            if credit[i] >= max_w {
                credit[i] -= max_w;
                table[slot] = live[i].id;
                break;
            }
        }
    }
    table
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::format;
    use std::string::String;

    fn names(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("backend-{i}")).collect()
    }

    fn shares(table: &[u32], n: usize) -> Vec<f64> {
        let mut c = vec![0u64; n];
        for &s in table {
            c[s as usize] += 1;
        }
        c.iter().map(|&x| x as f64 / table.len() as f64).collect()
    }

    #[test]
    fn primes() {
        assert!(is_prime(65537));
        assert!(is_prime(13));
        assert!(!is_prime(65535));
        assert!(!is_prime(1));
    }

    #[test]
    fn equal_weights_share_within_one_percent() {
        for n in [2usize, 3, 7, 10, 50] {
            let ns = names(n);
            let e: Vec<Entry<'_>> = ns
                .iter()
                .enumerate()
                .map(|(i, s)| Entry {
                    id: i as u32,
                    key: s.as_bytes(),
                    weight: 1,
                })
                .collect();
            let t = build(&e, 65537);
            for s in shares(&t, n) {
                assert!((s - 1.0 / n as f64).abs() <= 0.01, "n={n} share {s}");
            }
        }
    }

    #[test]
    fn weighted_shares_within_one_percent() {
        let weights = [100u32, 50, 25, 10, 1, 300, 7];
        let total: u32 = weights.iter().sum();
        let ns = names(weights.len());
        let e: Vec<Entry<'_>> = ns
            .iter()
            .zip(weights)
            .enumerate()
            .map(|(i, (s, w))| Entry {
                id: i as u32,
                key: s.as_bytes(),
                weight: w,
            })
            .collect();
        let t = build(&e, 65537);
        assert!(t.iter().all(|&s| s != NO_REAL));
        for (s, w) in shares(&t, weights.len()).iter().zip(weights) {
            let want = w as f64 / total as f64;
            assert!(
                (s - want).abs() <= 0.01,
                "weight {w}: share {s} want {want}"
            );
        }
    }

    #[test]
    fn zero_weight_gets_no_slots_and_all_zero_is_empty() {
        let ns = names(3);
        let mut e: Vec<Entry<'_>> = ns
            .iter()
            .enumerate()
            .map(|(i, s)| Entry {
                id: i as u32,
                key: s.as_bytes(),
                weight: 1,
            })
            .collect();
        e[1].weight = 0;
        let t = build(&e, 65537);
        assert!(!t.contains(&1));
        assert!(t.iter().all(|&s| s == 0 || s == 2));
        for x in &mut e {
            x.weight = 0;
        }
        assert!(build(&e, 13).iter().all(|&s| s == NO_REAL));
    }

    #[test]
    fn removing_one_of_n_moves_its_slots_and_few_others() {
        for n in [3usize, 5, 10, 20] {
            let ns = names(n);
            let all: Vec<Entry<'_>> = ns
                .iter()
                .enumerate()
                .map(|(i, s)| Entry {
                    id: i as u32,
                    key: s.as_bytes(),
                    weight: 1,
                })
                .collect();
            let before = build(&all, 65537);
            for removed in [0, n / 2, n - 1] {
                let removed = removed as u32;
                assert!(
                    before.contains(&removed),
                    "n={n}: backend {removed} has slots before it is removed"
                );
                let rest: Vec<Entry<'_>> =
                    all.iter().copied().filter(|e| e.id != removed).collect();
                let after = build(&rest, 65537);
                // Every slot goes to a backend that is still there.
                assert!(
                    after.iter().all(|s| rest.iter().any(|e| e.id == *s)),
                    "n={n} removed={removed}: a slot holds an id not in the input"
                );
                // Maglev's promise: the removed backend's slots move, the
                // survivors' slots (nearly) stay. A builder whose
                // permutations depended on the position in the input, or
                // that did not fill slots in permutation order, would
                // reshuffle a large part of the table.
                let owned = before.iter().filter(|&&s| s == removed).count();
                let disturbed = before
                    .iter()
                    .zip(&after)
                    .filter(|(b, a)| **b != removed && b != a)
                    .count();
                let frac = disturbed as f64 / 65537.0;
                assert!(
                    frac <= 0.02,
                    "n={n} removed={removed}: {frac:.4} of the slots of surviving backends moved \
                     ({owned} slots were the removed backend's)"
                );
                // The freed slots are spread over the survivors, each
                // getting its fair share of them within a third.
                let mut got = vec![0usize; n];
                for (b, a) in before.iter().zip(&after) {
                    if *b == removed {
                        got[*a as usize] += 1;
                    }
                }
                let fair = owned as f64 / (n - 1) as f64;
                for e in &rest {
                    let g = got[e.id as usize] as f64;
                    assert!(
                        (g - fair).abs() <= fair / 3.0,
                        "n={n} removed={removed}: backend {} took {g} of {owned} freed slots, \
                         fair share {fair:.0}",
                        e.id
                    );
                }
            }
        }
    }

    #[test]
    fn the_table_depends_on_keys_and_weights_not_on_ids_or_order() {
        let ns = names(4);
        let e: Vec<Entry<'_>> = ns
            .iter()
            .enumerate()
            .map(|(i, s)| Entry {
                id: i as u32 * 10,
                key: s.as_bytes(),
                weight: 2,
            })
            .collect();
        let t = build(&e, 65537);
        assert_eq!(t, build(&e, 65537), "same input, same table");
        // Different ids, same keys: the same slots, relabelled.
        let relabelled: Vec<Entry<'_>> = e.iter().map(|x| Entry { id: x.id + 1, ..*x }).collect();
        let r = build(&relabelled, 65537);
        assert!(
            t.iter().zip(&r).all(|(a, b)| a + 1 == *b),
            "the ids chose the slots"
        );
        // Another key for one backend: a different permutation, so many of
        // the table's slots change.
        let other = String::from("backend-other");
        let mut rekeyed = e.clone();
        rekeyed[1].key = other.as_bytes();
        let k = build(&rekeyed, 65537);
        let changed = t.iter().zip(&k).filter(|(a, b)| a != b).count();
        assert!(
            changed > 65537 / 10,
            "changing one backend's key moved only {changed} slots"
        );
        // Reversed input order changes only which backend wins a contested
        // slot: shares stay equal and most slots stay put.
        let mut rev = e.clone();
        rev.reverse();
        let v = build(&rev, 65537);
        for id in [0u32, 10, 20, 30] {
            let share = v.iter().filter(|&&s| s == id).count() as f64 / 65537.0;
            assert!((share - 0.25).abs() <= 0.01, "id {id}: share {share}");
        }
        let moved = t.iter().zip(&v).filter(|(a, b)| a != b).count();
        assert!(
            (moved as f64) < 0.05 * 65537.0,
            "reversing the input moved {moved} slots"
        );
    }
}
