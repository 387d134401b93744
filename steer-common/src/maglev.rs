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
    let mut filled = 0u64;
    while filled < m {
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
            if filled == m {
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
    fn removing_one_of_n_remaps_at_most_one_nth_plus_one_percent() {
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
                let rest: Vec<Entry<'_>> = all
                    .iter()
                    .copied()
                    .filter(|e| e.id != removed as u32)
                    .collect();
                let after = build(&rest, 65537);
                let moved = before.iter().zip(&after).filter(|(a, b)| a != b).count();
                let frac = moved as f64 / 65537.0;
                assert!(
                    frac <= 1.0 / n as f64 + 0.01,
                    "n={n} removed={removed}: {frac} of slots moved"
                );
                // Every slot that moved belonged to the removed backend, or
                // was needed to keep the table balanced.
                assert!(after.iter().all(|&s| s != removed as u32));
            }
        }
    }

    #[test]
    fn stable_for_the_same_input() {
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
        assert_eq!(build(&e, 251), build(&e, 251));
        let mut rev = e.clone();
        rev.reverse();
        // Order of entries changes claim order only; shares stay balanced.
        let t = build(&rev, 65537);
        assert!(t.iter().all(|s| s % 10 == 0 && *s < 40));
    }
}
