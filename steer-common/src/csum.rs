//! Internet checksum arithmetic (RFC 1071) shared by the XDP program and its
//! tests.

/// Folds a 32-bit one's-complement accumulator into 16 bits, without the
/// final inversion.
#[inline(always)]
pub fn fold(mut sum: u32) -> u16 {
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    sum as u16
}

/// Checksum of a 20-byte IPv4 header given as ten 16-bit words in *wire*
/// order (each word read with `from_be_bytes`), with the checksum word
/// itself zero. Returns the value to store, host order.
#[inline(always)]
pub fn ipv4_header_checksum(words: &[u16; 10]) -> u16 {
    let mut sum: u32 = 0;
    let mut i = 0;
    while i < 10 {
        sum += words[i] as u32;
        i += 1;
    }
    !fold(sum)
}

/// Same as [`ipv4_header_checksum`] over header bytes (host side).
pub fn ipv4_header_checksum_bytes(hdr: &[u8; 20]) -> u16 {
    let mut words = [0u16; 10];
    for (i, w) in words.iter_mut().enumerate() {
        *w = u16::from_be_bytes([hdr[2 * i], hdr[2 * i + 1]]);
    }
    words[5] = 0;
    ipv4_header_checksum(&words)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fold_carries_twice() {
        assert_eq!(fold(0x0001_ffff), 0x0001);
        assert_eq!(fold(0xffff_ffff), 0xffff);
        assert_eq!(fold(0), 0);
    }

    #[test]
    fn rfc1071_textbook_example() {
        // The classic example header 4500 0073 0000 4000 4011 [b861] c0a8 0001 c0a8 00c7.
        let hdr = [
            0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0x00, 0x00, 0xc0, 0xa8,
            0x00, 0x01, 0xc0, 0xa8, 0x00, 0xc7,
        ];
        assert_eq!(ipv4_header_checksum_bytes(&hdr), 0xb861);
    }

    #[test]
    fn agrees_with_etherparse() {
        for i in 0..500u32 {
            let h = etherparse::Ipv4Header::new(
                (i * 7 % 1400) as u16,
                (i % 255) as u8,
                etherparse::IpNumber((i % 256) as u8),
                (0x0a00_0000u32 + i * 7919).to_be_bytes(),
                (0xc000_0200u32 ^ (i * 104_729)).to_be_bytes(),
            )
            .unwrap();
            let bytes = h.to_bytes();
            let arr: [u8; 20] = bytes[..20].try_into().unwrap();
            assert_eq!(ipv4_header_checksum_bytes(&arr), h.calc_header_checksum());
        }
    }
}
