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
}
