//! The deterministic bytes `/stream` sends, and the checksum both sides
//! compute over them.

/// SplitMix64: a fixed, well-mixed function of `x`.
fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Byte `i` of every stream body: the same for every backend, so a client
/// can check a stream byte by byte whichever backend sent it.
pub fn byte_at(i: u64) -> u8 {
    (splitmix64(i / 8) >> ((i % 8) * 8)) as u8
}

/// Fills `buf` with the stream bytes starting at `offset`.
pub fn fill(offset: u64, buf: &mut [u8]) {
    for (k, b) in buf.iter_mut().enumerate() {
        *b = byte_at(offset + k as u64);
    }
}

/// FNV-1a, 64 bits.
#[derive(Clone, Copy)]
pub struct Fnv1a(u64);

impl Default for Fnv1a {
    fn default() -> Self {
        Fnv1a(0xcbf2_9ce4_8422_2325)
    }
}

impl Fnv1a {
    pub fn update(&mut self, data: &[u8]) {
        for b in data {
            self.0 ^= u64::from(*b);
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }

    pub fn finish(self) -> u64 {
        self.0
    }
}

/// The checksum of a whole stream body of `len` bytes, as sent in the
/// `X-Checksum` header (16 lowercase hex digits).
pub fn checksum(len: u64) -> u64 {
    let mut h = Fnv1a::default();
    let mut buf = vec![0u8; 64 * 1024];
    let mut off = 0u64;
    while off < len {
        let n = usize::try_from((len - off).min(buf.len() as u64)).unwrap_or(buf.len());
        fill(off, &mut buf[..n]);
        h.update(&buf[..n]);
        off += n as u64;
    }
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fill_matches_byte_at_at_any_offset() {
        let mut a = [0u8; 37];
        fill(1000, &mut a);
        for (k, b) in a.iter().enumerate() {
            assert_eq!(*b, byte_at(1000 + k as u64));
        }
    }

    #[test]
    fn checksum_is_chunking_independent() {
        let len = 200_003u64;
        let mut h = Fnv1a::default();
        let mut off = 0u64;
        for step in [1usize, 7, 4096, 65_536, 100_000].iter().cycle() {
            if off >= len {
                break;
            }
            let n = (*step).min(usize::try_from(len - off).unwrap());
            let mut buf = vec![0u8; n];
            fill(off, &mut buf);
            h.update(&buf);
            off += n as u64;
        }
        assert_eq!(h.finish(), checksum(len));
        assert_ne!(checksum(len), checksum(len - 1));
    }
}
