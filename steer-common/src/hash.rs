//! The flow hash: MurmurHash3 (x86, 32-bit) over the 40 bytes of a
//! [`FlowKey`]. The XDP program and userspace call the same code, so the host
//! can predict which backend a flow selects.

use crate::FlowKey;

/// Seed for flow hashing. Changing it reshuffles every new flow.
pub const FLOW_SEED: u32 = 0x5eed_5eed;

const C1: u32 = 0xcc9e_2d51;
const C2: u32 = 0x1b87_3593;

#[inline(always)]
fn mix_block(h: u32, k: u32) -> u32 {
    let k = k.wrapping_mul(C1).rotate_left(15).wrapping_mul(C2);
    (h ^ k)
        .rotate_left(13)
        .wrapping_mul(5)
        .wrapping_add(0xe654_6b64)
}

#[inline(always)]
fn finish(mut h: u32, len: u32) -> u32 {
    h ^= len;
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^ (h >> 16)
}

/// MurmurHash3_x86_32 of an arbitrary byte string. Host-side reference used
/// to check [`flow_hash`] against published test vectors.
pub fn murmur3_32(data: &[u8], seed: u32) -> u32 {
    let mut h = seed;
    let mut chunks = data.chunks_exact(4);
    for c in &mut chunks {
        h = mix_block(h, u32::from_le_bytes([c[0], c[1], c[2], c[3]]));
    }
    let tail = chunks.remainder();
    if !tail.is_empty() {
        let mut k: u32 = 0;
        for (i, b) in tail.iter().enumerate() {
            k |= (*b as u32) << (8 * i);
        }
        h ^= k.wrapping_mul(C1).rotate_left(15).wrapping_mul(C2);
    }
    finish(h, data.len() as u32)
}

#[inline(always)]
fn word(b: &[u8; 16], i: usize) -> u32 {
    u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]])
}

/// Hash of a flow key: `murmur3_32(key_bytes, FLOW_SEED)`, computed field by
/// field so it needs no byte loop in BPF.
#[inline(always)]
pub fn flow_hash(key: &FlowKey) -> u32 {
    let mut h = FLOW_SEED;
    h = mix_block(h, word(&key.src, 0));
    h = mix_block(h, word(&key.src, 4));
    h = mix_block(h, word(&key.src, 8));
    h = mix_block(h, word(&key.src, 12));
    h = mix_block(h, word(&key.dst, 0));
    h = mix_block(h, word(&key.dst, 4));
    h = mix_block(h, word(&key.dst, 8));
    h = mix_block(h, word(&key.dst, 12));
    let ports = key.sport.to_ne_bytes();
    let dports = key.dport.to_ne_bytes();
    h = mix_block(
        h,
        u32::from_le_bytes([ports[0], ports[1], dports[0], dports[1]]),
    );
    h = mix_block(
        h,
        u32::from_le_bytes([key.proto, key.family, key._pad[0], key._pad[1]]),
    );
    finish(h, 40)
}

/// The SYN tag of a flow (see [`crate::SynSlot`]): a second hash of the
/// key, independent of [`flow_hash`] (whose low bits pick the slot), so
/// two flows sharing a slot have the same tag with probability 2^-31. A
/// multiply-xor chain over the key's ten 32-bit words with a final mix:
/// ten multiplications, no tables. Never 0 (bit 0 is always set), so an
/// empty slot matches no flow.
#[inline(always)]
pub fn flow_tag(key: &FlowKey) -> u32 {
    const K: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut h: u64 = 0x243f_6a88_85a3_08d3;
    let mut mix = |w: u32| h = (h ^ u64::from(w)).wrapping_mul(K);
    mix(word(&key.src, 0));
    mix(word(&key.src, 4));
    mix(word(&key.src, 8));
    mix(word(&key.src, 12));
    mix(word(&key.dst, 0));
    mix(word(&key.dst, 4));
    mix(word(&key.dst, 8));
    mix(word(&key.dst, 12));
    let ports = key.sport.to_ne_bytes();
    let dports = key.dport.to_ne_bytes();
    mix(u32::from_le_bytes([
        ports[0], ports[1], dports[0], dports[1],
    ]));
    mix(u32::from_le_bytes([
        key.proto,
        key.family,
        key._pad[0],
        key._pad[1],
    ]));
    h ^= h >> 29;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    ((h >> 32) as u32) | 1
}

#[cfg(test)]
mod tests {
    use super::*;

    // Published MurmurHash3_x86_32 vectors (from the reference
    // implementation's SMHasher verification and widely reproduced tables).
    #[test]
    fn murmur3_matches_reference_vectors() {
        assert_eq!(murmur3_32(b"", 0), 0);
        assert_eq!(murmur3_32(b"", 1), 0x514e_28b7);
        assert_eq!(murmur3_32(b"", 0xffff_ffff), 0x81f1_6f39);
        assert_eq!(murmur3_32(&[0, 0, 0, 0], 0), 0x2362_f9de);
        assert_eq!(murmur3_32(b"aaaa", 0x9747_b28c), 0x5a97_808a);
        assert_eq!(murmur3_32(b"Hello, world!", 1234), 0xfaf6_cdb3);
        assert_eq!(
            murmur3_32(b"The quick brown fox jumps over the lazy dog", 0),
            0x2e4f_f723
        );
    }

    fn key_bytes(k: &FlowKey) -> [u8; 40] {
        let mut b = [0u8; 40];
        b[..16].copy_from_slice(&k.src);
        b[16..32].copy_from_slice(&k.dst);
        b[32..34].copy_from_slice(&k.sport.to_ne_bytes());
        b[34..36].copy_from_slice(&k.dport.to_ne_bytes());
        b[36] = k.proto;
        b[37] = k.family;
        b
    }

    #[test]
    fn flow_hash_is_murmur3_of_the_key_bytes() {
        let mut k = FlowKey::default();
        for i in 0..200u32 {
            k.src[..4].copy_from_slice(&(0xc633_6400 + i).to_be_bytes());
            k.dst[..4].copy_from_slice(&[203, 0, 113, (i % 7) as u8]);
            k.sport = crate::port_to_wire(1024 + i as u16);
            k.dport = crate::port_to_wire(443);
            k.proto = crate::PROTO_TCP;
            k.family = crate::FAMILY_V4;
            assert_eq!(flow_hash(&k), murmur3_32(&key_bytes(&k), FLOW_SEED));
        }
    }

    #[test]
    fn flow_hash_spreads_source_ports() {
        let mut k = FlowKey {
            proto: crate::PROTO_UDP,
            family: crate::FAMILY_V4,
            ..Default::default()
        };
        k.src[..4].copy_from_slice(&[198, 51, 100, 1]);
        k.dst[..4].copy_from_slice(&[203, 0, 113, 1]);
        let mut buckets = [0u32; 16];
        let n = 64_000u32;
        for p in 0..n {
            k.sport = crate::port_to_wire(p as u16);
            buckets[(flow_hash(&k) % 16) as usize] += 1;
        }
        let expect = n / 16;
        for b in buckets {
            assert!(b.abs_diff(expect) < expect / 20, "bucket {b} vs {expect}");
        }
    }

    #[test]
    fn flow_tag_is_independent_of_the_slot_index() {
        extern crate std;
        // Flows that share a slot (the same low 16 bits of flow_hash)
        // must still have different tags: count tag collisions among
        // flows of one slot, and over all flows.
        let mut k = FlowKey {
            proto: crate::PROTO_TCP,
            family: crate::FAMILY_V4,
            ..Default::default()
        };
        k.dst[..4].copy_from_slice(&[203, 0, 113, 1]);
        k.dport = crate::port_to_wire(80);
        let mut by_slot: std::collections::HashMap<u32, std::vec::Vec<u32>> =
            std::collections::HashMap::new();
        let mut all = std::collections::HashSet::new();
        let n = 200_000u32;
        for i in 0..n {
            k.src[..4].copy_from_slice(&(0x6440_0000 + i / 50).to_be_bytes());
            k.sport = crate::port_to_wire(1024 + (i % 50) as u16);
            let t = flow_tag(&k);
            assert_eq!(t & 1, 1, "a tag is never 0");
            all.insert(t);
            by_slot.entry(flow_hash(&k) & 0xffff).or_default().push(t);
        }
        // 200,000 random 31-bit values collide ~9 times on average.
        assert!(
            n as usize - all.len() < 40,
            "{} tag collisions",
            n as usize - all.len()
        );
        let same_slot_collisions: usize = by_slot
            .values()
            .map(|v| {
                let set: std::collections::HashSet<_> = v.iter().collect();
                v.len() - set.len()
            })
            .sum();
        assert!(
            same_slot_collisions < 3,
            "{same_slot_collisions} collisions within a slot"
        );
    }
}
