//! The flow hash: MurmurHash3 (x86, 32-bit) over the bytes of a [`FlowKey`]
//! its family uses; for IPv6 in two lanes (the source address and the
//! ports; the destination address and the protocol), XORed. The XDP program
//! and userspace call the same code, so the host can predict which backend
//! a flow selects.

use crate::FlowKey;

/// Seed of the flow hash's source lane. Changing it reshuffles every new
/// flow.
pub const FLOW_SEED: u32 = 0x5eed_5eed;
/// Seed of the flow hash's destination lane (another seed than
/// [`FLOW_SEED`], so equal bytes in the two lanes do not cancel).
pub const FLOW_SEED_DST: u32 = 0x0d57_5eed;

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

/// Hash of a flow key, computed field by field (no byte loop in BPF):
/// - IPv4: `murmur3_32(src ‖ dst ‖ sport ‖ dport ‖ proto, FLOW_SEED)`, over
///   those 13 bytes: three blocks and a tail;
/// - IPv6: `murmur3_32(src ‖ sport ‖ dport, FLOW_SEED) ^ murmur3_32(dst ‖
///   proto, FLOW_SEED_DST)`: two lanes with no data dependency on each
///   other, which the CPU runs side by side, so the hash takes five serial
///   Murmur blocks, not ten.
///
/// Ports are in wire order. Each form was the fastest measured for its
/// family (docs/benchmarks.md, issue 12, third round: 16 ns less for an
/// IPv6 SYN than Murmur over the 40-byte key, 10 ns less for an IPv4 one;
/// two lanes cost IPv4 7 ns more, one lane over 13 bytes is shorter).
#[inline(always)]
pub fn flow_hash(key: &FlowKey) -> u32 {
    let ports = key.sport.to_ne_bytes();
    let dports = key.dport.to_ne_bytes();
    let ports = u32::from_le_bytes([ports[0], ports[1], dports[0], dports[1]]);
    let tail = u32::from(key.proto)
        .wrapping_mul(C1)
        .rotate_left(15)
        .wrapping_mul(C2);
    if key.family == crate::FAMILY_V4 {
        let mut h = mix_block(FLOW_SEED, word(&key.src, 0));
        h = mix_block(h, word(&key.dst, 0));
        h = mix_block(h, ports);
        return finish(h ^ tail, 13);
    }
    let mut a = mix_block(FLOW_SEED, word(&key.src, 0));
    let mut b = mix_block(FLOW_SEED_DST, word(&key.dst, 0));
    a = mix_block(a, word(&key.src, 4));
    b = mix_block(b, word(&key.dst, 4));
    a = mix_block(a, word(&key.src, 8));
    b = mix_block(b, word(&key.dst, 8));
    a = mix_block(a, word(&key.src, 12));
    b = mix_block(b, word(&key.dst, 12));
    a = mix_block(a, ports);
    finish(a, 20) ^ finish(b ^ tail, 17)
}

/// The SYN tag of a flow (see [`crate::SynSlot`]): a second hash of the
/// key, independent of [`flow_hash`] (whose low bits pick the slot), so
/// two flows sharing a slot have the same tag with probability 2^-31. Two
/// multiply-xor chains (the source address and the ports; the destination
/// address, protocol and family) over the 32-bit words the family uses,
/// joined, with a final mix: ten multiplications for IPv6 (five serial),
/// four for IPv4, no tables. Never 0 (bit 0 is always set), so an empty
/// slot matches no flow.
#[inline(always)]
pub fn flow_tag(key: &FlowKey) -> u32 {
    const K: u64 = 0x9e37_79b9_7f4a_7c15;
    let mix = |h: u64, w: u32| (h ^ u64::from(w)).wrapping_mul(K);
    let ports = key.sport.to_ne_bytes();
    let dports = key.dport.to_ne_bytes();
    let ports = u32::from_le_bytes([ports[0], ports[1], dports[0], dports[1]]);
    let last = u32::from_le_bytes([key.proto, key.family, key._pad[0], key._pad[1]]);
    let mut a = mix(0x243f_6a88_85a3_08d3, word(&key.src, 0));
    let mut b = mix(0x1319_8a2e_0370_7344, word(&key.dst, 0));
    if key.family != crate::FAMILY_V4 {
        a = mix(a, word(&key.src, 4));
        b = mix(b, word(&key.dst, 4));
        a = mix(a, word(&key.src, 8));
        b = mix(b, word(&key.dst, 8));
        a = mix(a, word(&key.src, 12));
        b = mix(b, word(&key.dst, 12));
    }
    a = mix(a, ports);
    b = mix(b, last);
    let mut h = a ^ b.rotate_left(32);
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

    #[test]
    fn flow_hash_is_murmur3_over_the_bytes_the_family_uses() {
        extern crate std;
        let mut k = FlowKey::default();
        for i in 0..200u32 {
            k.src[..4].copy_from_slice(&(0xc633_6400 + i).to_be_bytes());
            k.dst[..4].copy_from_slice(&[203, 0, 113, (i % 7) as u8]);
            k.sport = crate::port_to_wire(1024 + i as u16);
            k.dport = crate::port_to_wire(443);
            k.proto = if i % 2 == 0 {
                crate::PROTO_TCP
            } else {
                crate::PROTO_UDP
            };
            k.family = crate::FAMILY_V4;
            // IPv4: src ‖ dst ‖ sport ‖ dport ‖ proto, built here from the
            // packet's fields, not from the key's layout.
            let src = (0xc633_6400 + i).to_be_bytes();
            let dst = [203, 0, 113, (i % 7) as u8];
            let ports = [(1024 + i as u16).to_be_bytes(), 443u16.to_be_bytes()].concat();
            let bytes = [&src[..], &dst, &ports, &[k.proto]].concat();
            assert_eq!(bytes.len(), 13);
            assert_eq!(flow_hash(&k), murmur3_32(&bytes, FLOW_SEED));
            // IPv6: src ‖ sport ‖ dport and dst ‖ proto, two lanes.
            let mut k6 = k;
            k6.family = crate::FAMILY_V6;
            k6.src[4..8].copy_from_slice(&i.to_be_bytes());
            k6.dst[12..].copy_from_slice(&[0, 0, 0, 0x10]);
            let lane_a = [&k6.src[..], &ports].concat();
            let lane_b = [&k6.dst[..], &[k.proto]].concat();
            assert_eq!(
                flow_hash(&k6),
                murmur3_32(&lane_a, FLOW_SEED) ^ murmur3_32(&lane_b, FLOW_SEED_DST)
            );
        }
    }

    #[test]
    fn flow_hash_spreads_ipv6_clients() {
        // 64,000 IPv6 clients of one /64, numbered one after the other
        // (low entropy, only the last word varies), to one VIP: over 16
        // buckets as over 65,537 ring slots, as even as random.
        let mut k = FlowKey {
            proto: crate::PROTO_TCP,
            family: crate::FAMILY_V6,
            dport: crate::port_to_wire(443),
            sport: crate::port_to_wire(40000),
            ..Default::default()
        };
        k.dst = [
            0x20, 0x01, 0x0d, 0xb8, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10,
        ];
        k.src[..8].copy_from_slice(&[0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 7]);
        let mut buckets = [0u32; 16];
        let n = 64_000u32;
        for i in 0..n {
            k.src[12..].copy_from_slice(&i.to_be_bytes());
            buckets[(flow_hash(&k) % 16) as usize] += 1;
        }
        let expect = n / 16;
        for b in buckets {
            assert!(b.abs_diff(expect) < expect / 20, "bucket {b} vs {expect}");
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
