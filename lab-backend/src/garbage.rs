//! `client-garbage`: malformed and random frames, sent with a raw
//! AF_PACKET socket on one interface to one MAC address (the edge), so
//! that they reach steer's XDP program exactly as built — truncated
//! headers, lengths that contradict the frame, fragments, broken IPv6
//! extension chains, ICMP errors with unusable quotes, and random bytes.
//!
//! Every kind is deterministic in what steer's parser sees (the random
//! kinds randomise only what does not change the outcome), so a test can
//! expect exact drop counters per kind. Prints JSON: frames sent per kind.
use std::{
    collections::BTreeMap,
    net::{Ipv4Addr, Ipv6Addr},
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Result};
use serde_json::{json, Value};

use crate::raw::{checksum, PacketSocket, Rng};

pub struct Options {
    pub iface: String,
    pub dst_mac: [u8; 6],
    pub src_mac: [u8; 6],
    /// Source addresses written into the packets.
    pub src4: Ipv4Addr,
    pub src6: Ipv6Addr,
    /// The VIPs (steer drops what is malformed and addressed to them).
    pub vip4: Ipv4Addr,
    pub vip6: Ipv6Addr,
    /// Addresses that are no VIP (steer passes malformed packets to them).
    pub other4: Ipv4Addr,
    pub other6: Ipv6Addr,
    /// Frames per kind.
    pub count: u32,
    pub seed: u64,
    /// Pause between frames.
    pub gap: Duration,
}

const ETH_IPV4: u16 = 0x0800;
const ETH_IPV6: u16 = 0x86dd;
const TCP: u8 = 6;
const UDP: u8 = 17;
const ICMP: u8 = 1;
const ICMPV6: u8 = 58;
const V6_FRAGMENT: u8 = 44;
const V6_HOPOPTS: u8 = 0;
const V6_DSTOPTS: u8 = 60;

fn eth(o: &Options, ethertype: u16) -> Vec<u8> {
    let mut f = Vec::with_capacity(128);
    f.extend_from_slice(&o.dst_mac);
    f.extend_from_slice(&o.src_mac);
    f.extend_from_slice(&ethertype.to_be_bytes());
    f
}

/// An IPv4 header: `ver_ihl`, total length, flags+fragment offset.
fn v4(ver_ihl: u8, total: u16, frag: u16, proto: u8, src: Ipv4Addr, dst: Ipv4Addr) -> Vec<u8> {
    let mut h = vec![0u8; 20];
    h[0] = ver_ihl;
    h[2..4].copy_from_slice(&total.to_be_bytes());
    h[4..6].copy_from_slice(&0x1234u16.to_be_bytes());
    h[6..8].copy_from_slice(&frag.to_be_bytes());
    h[8] = 64;
    h[9] = proto;
    h[12..16].copy_from_slice(&src.octets());
    h[16..20].copy_from_slice(&dst.octets());
    let c = checksum(&h);
    h[10..12].copy_from_slice(&c.to_be_bytes());
    h
}

fn v6(ver: u8, payload: u16, next: u8, src: Ipv6Addr, dst: Ipv6Addr) -> Vec<u8> {
    let mut h = vec![0u8; 40];
    h[0] = ver << 4;
    h[4..6].copy_from_slice(&payload.to_be_bytes());
    h[6] = next;
    h[7] = 64;
    h[8..24].copy_from_slice(&src.octets());
    h[24..40].copy_from_slice(&dst.octets());
    h
}

fn tcp(sport: u16, dport: u16) -> Vec<u8> {
    let mut t = vec![0u8; 20];
    t[0..2].copy_from_slice(&sport.to_be_bytes());
    t[2..4].copy_from_slice(&dport.to_be_bytes());
    t[4..8].copy_from_slice(&1u32.to_be_bytes());
    t[12] = 5 << 4;
    t[13] = 0x02; // SYN
    t[14..16].copy_from_slice(&64_240u16.to_be_bytes());
    t
}

/// Every kind of frame, by name. `sport` varies per frame.
fn build(kind: &str, o: &Options, r: &mut Rng) -> Option<Vec<u8>> {
    let sport = 40_000 + r.below(20_000) as u16;
    let (s4, s6) = (o.src4, o.src6);
    let f = match kind {
        // IPv4 to the VIP.
        "v4-bad-version" => {
            let mut f = eth(o, ETH_IPV4);
            f.extend(v4(0x65, 40, 0, TCP, s4, o.vip4));
            f.extend(tcp(sport, 80));
            f
        }
        "v4-ihl-below-5" => {
            let mut f = eth(o, ETH_IPV4);
            f.extend(v4(0x43, 40, 0, TCP, s4, o.vip4));
            f.extend(tcp(sport, 80));
            f
        }
        "v4-total-below-header" => {
            let mut f = eth(o, ETH_IPV4);
            f.extend(v4(0x45, 12, 0, TCP, s4, o.vip4));
            f.extend(tcp(sport, 80));
            f
        }
        "v4-total-beyond-frame" => {
            let mut f = eth(o, ETH_IPV4);
            f.extend(v4(0x45, 1000, 0, TCP, s4, o.vip4));
            f.extend(tcp(sport, 80));
            f
        }
        "v4-fragment-mf" => {
            let mut f = eth(o, ETH_IPV4);
            f.extend(v4(0x45, 40, 0x2000, TCP, s4, o.vip4));
            f.extend(tcp(sport, 80));
            f
        }
        "v4-fragment-offset" => {
            let mut f = eth(o, ETH_IPV4);
            f.extend(v4(0x45, 40, 0x0010, TCP, s4, o.vip4));
            f.extend(tcp(sport, 80));
            f
        }
        "v4-tcp-truncated" => {
            let mut f = eth(o, ETH_IPV4);
            f.extend(v4(0x45, 30, 0, TCP, s4, o.vip4));
            f.extend(&tcp(sport, 80)[..10]);
            f
        }
        "v4-udp-truncated" => {
            let mut f = eth(o, ETH_IPV4);
            f.extend(v4(0x45, 24, 0, UDP, s4, o.vip4));
            f.extend(sport.to_be_bytes());
            f.extend(7u16.to_be_bytes());
            f
        }
        "v4-icmp-bad-quote" => {
            // Fragmentation needed (3/4), quoting only 4 bytes.
            let mut f = eth(o, ETH_IPV4);
            f.extend(v4(0x45, 32, 0, ICMP, s4, o.vip4));
            f.extend([3, 4, 0, 0, 0, 0, 0x05, 0xdc]);
            f.extend([0x45, 0, 0, 40]);
            f
        }
        "v4-too-short" => {
            // Ends before the destination address.
            let mut f = eth(o, ETH_IPV4);
            f.extend(&v4(0x45, 40, 0, TCP, s4, o.vip4)[..14]);
            f
        }
        "v4-malformed-not-vip" => {
            let mut f = eth(o, ETH_IPV4);
            f.extend(v4(0x65, 40, 0, TCP, s4, o.other4));
            f.extend(tcp(sport, 80));
            f
        }
        // IPv6 to the VIP.
        "v6-bad-version" => {
            let mut f = eth(o, ETH_IPV6);
            f.extend(v6(4, 20, TCP, s6, o.vip6));
            f.extend(tcp(sport, 80));
            f
        }
        "v6-payload-beyond-frame" => {
            let mut f = eth(o, ETH_IPV6);
            f.extend(v6(6, 1000, TCP, s6, o.vip6));
            f.extend(tcp(sport, 80));
            f
        }
        "v6-fragment" => {
            let mut f = eth(o, ETH_IPV6);
            f.extend(v6(6, 28, V6_FRAGMENT, s6, o.vip6));
            f.extend([TCP, 0, 0, 1, 0, 0, 0, 7]); // offset 0, M=1
            f.extend(tcp(sport, 80));
            f
        }
        "v6-ext-past-end" => {
            // A hop-by-hop header claiming 32 bytes in an 8-byte payload.
            let mut f = eth(o, ETH_IPV6);
            f.extend(v6(6, 8, V6_HOPOPTS, s6, o.vip6));
            f.extend([TCP, 3, 1, 4, 0, 0, 0, 0]);
            f
        }
        "v6-too-many-ext" => {
            // Five destination-options headers, then TCP.
            let mut f = eth(o, ETH_IPV6);
            f.extend(v6(6, 5 * 8 + 20, V6_DSTOPTS, s6, o.vip6));
            for i in 0..5 {
                let next = if i < 4 { V6_DSTOPTS } else { TCP };
                f.extend([next, 0, 1, 4, 0, 0, 0, 0]);
            }
            f.extend(tcp(sport, 80));
            f
        }
        "v6-tcp-truncated" => {
            let mut f = eth(o, ETH_IPV6);
            f.extend(v6(6, 10, TCP, s6, o.vip6));
            f.extend(&tcp(sport, 80)[..10]);
            f
        }
        "v6-icmp-bad-quote" => {
            // Packet too big (2), quoting only 4 bytes.
            let mut f = eth(o, ETH_IPV6);
            f.extend(v6(6, 12, ICMPV6, s6, o.vip6));
            f.extend([2, 0, 0, 0, 0, 0, 0x05, 0xdc]);
            f.extend([0x60, 0, 0, 0]);
            f
        }
        "v6-too-short" => {
            let mut f = eth(o, ETH_IPV6);
            f.extend(&v6(6, 20, TCP, s6, o.vip6)[..30]);
            f
        }
        // Random bytes.
        "random-not-ip" => {
            let ethertype = loop {
                let t = r.next() as u16;
                if ![ETH_IPV4, ETH_IPV6, 0x8100, 0x88a8].contains(&t) {
                    break t;
                }
            };
            let mut f = eth(o, ethertype);
            let n = r.below(300) as usize;
            f.extend(r.bytes(n));
            f
        }
        "random-ip-not-vip" => {
            let v6 = r.below(2) == 1;
            let mut f = eth(o, if v6 { ETH_IPV6 } else { ETH_IPV4 });
            let n = 40 + r.below(260) as usize;
            f.extend(r.bytes(n));
            if v6 {
                f[22..38].copy_from_slice(&s6.octets());
                f[38..54].copy_from_slice(&o.other6.octets());
            } else {
                f[26..30].copy_from_slice(&s4.octets());
                f[30..34].copy_from_slice(&o.other4.octets());
            }
            f
        }
        "random-v4-vip-bad-version" => {
            let mut f = eth(o, ETH_IPV4);
            let n = 20 + r.below(280) as usize;
            f.extend(r.bytes(n));
            let version = loop {
                let v = r.below(16) as u8;
                if v != 4 {
                    break v;
                }
            };
            f[14] = (version << 4) | (f[14] & 0x0f);
            f[26..30].copy_from_slice(&s4.octets());
            f[30..34].copy_from_slice(&o.vip4.octets());
            f
        }
        "random-v6-vip-bad-version" => {
            let mut f = eth(o, ETH_IPV6);
            let n = 40 + r.below(260) as usize;
            f.extend(r.bytes(n));
            let version = loop {
                let v = r.below(16) as u8;
                if v != 6 {
                    break v;
                }
            };
            f[14] = (version << 4) | (f[14] & 0x0f);
            f[22..38].copy_from_slice(&s6.octets());
            f[38..54].copy_from_slice(&o.vip6.octets());
            f
        }
        "random-v4-vip-truncated" => {
            // A plausible header whose total length runs past the frame.
            let mut f = eth(o, ETH_IPV4);
            let n = 20 + r.below(280) as usize;
            f.extend(r.bytes(n));
            f[14] = 0x45;
            let total = n as u64 + 1 + r.below(65_535 - n as u64);
            f[16..18].copy_from_slice(&(total as u16).to_be_bytes());
            f[26..30].copy_from_slice(&s4.octets());
            f[30..34].copy_from_slice(&o.vip4.octets());
            f
        }
        _ => return None,
    };
    Some(f)
}

/// Every kind `build` knows, in the order they are sent.
pub const KINDS: [&str; 24] = [
    "v4-bad-version",
    "v4-ihl-below-5",
    "v4-total-below-header",
    "v4-total-beyond-frame",
    "v4-fragment-mf",
    "v4-fragment-offset",
    "v4-tcp-truncated",
    "v4-udp-truncated",
    "v4-icmp-bad-quote",
    "v4-too-short",
    "v4-malformed-not-vip",
    "v6-bad-version",
    "v6-payload-beyond-frame",
    "v6-fragment",
    "v6-ext-past-end",
    "v6-too-many-ext",
    "v6-tcp-truncated",
    "v6-icmp-bad-quote",
    "v6-too-short",
    "random-not-ip",
    "random-ip-not-vip",
    "random-v4-vip-bad-version",
    "random-v6-vip-bad-version",
    "random-v4-vip-truncated",
];

/// Sends `count` frames of every kind, interleaved (kind after kind).
pub fn garbage_client(o: &Options) -> Result<Value> {
    let sock = PacketSocket::open(&o.iface, o.dst_mac)?;
    let mut rng = Rng(o.seed.max(1));
    let mut sent: BTreeMap<&str, u64> = BTreeMap::new();
    let mut errors: BTreeMap<String, u64> = BTreeMap::new();
    let mut bytes = 0u64;
    let start = Instant::now();
    for _ in 0..o.count {
        for kind in KINDS {
            let Some(frame) = build(kind, o, &mut rng) else {
                bail!("no builder for kind {kind}");
            };
            match sock.send(&frame) {
                Ok(()) => {
                    *sent.entry(kind).or_default() += 1;
                    bytes += frame.len() as u64;
                }
                Err(e) => *errors.entry(format!("{kind}: {e}")).or_default() += 1,
            }
            if !o.gap.is_zero() {
                thread::sleep(o.gap);
            }
        }
    }
    Ok(json!({
        "iface": o.iface,
        "sent": sent,
        "frames": sent.values().sum::<u64>(),
        "bytes": bytes,
        "send_errors": errors,
        "elapsed_ms": start.elapsed().as_millis() as u64,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts() -> Options {
        Options {
            iface: "lo".into(),
            dst_mac: [2, 0, 0x5e, 0, 0, 2],
            src_mac: [2, 0, 0x5e, 0, 0, 0x10],
            src4: Ipv4Addr::new(198, 51, 100, 10),
            src6: "2001:db8:c::10".parse().unwrap(),
            vip4: Ipv4Addr::new(203, 0, 113, 10),
            vip6: "2001:db8:100::10".parse().unwrap(),
            other4: Ipv4Addr::new(198, 51, 100, 99),
            other6: "2001:db8:c::99".parse().unwrap(),
            count: 1,
            seed: 7,
            gap: Duration::ZERO,
        }
    }

    #[test]
    fn every_kind_builds_a_frame_with_an_ethernet_header() {
        let o = opts();
        let mut r = Rng(1);
        for _ in 0..50 {
            for k in KINDS {
                let f = build(k, &o, &mut r).unwrap_or_else(|| panic!("{k}"));
                assert!(f.len() >= 14, "{k}");
                assert_eq!(&f[..6], &o.dst_mac, "{k}");
            }
        }
        assert!(build("nope", &o, &mut r).is_none());
    }

    #[test]
    fn random_kinds_keep_the_fields_that_decide_the_outcome() {
        let o = opts();
        let mut r = Rng(3);
        for _ in 0..200 {
            let f = build("random-v4-vip-bad-version", &o, &mut r).unwrap();
            assert_ne!(f[14] >> 4, 4);
            assert_eq!(&f[30..34], &o.vip4.octets());
            let f = build("random-v6-vip-bad-version", &o, &mut r).unwrap();
            assert_ne!(f[14] >> 4, 6);
            assert_eq!(&f[38..54], &o.vip6.octets());
            let f = build("random-v4-vip-truncated", &o, &mut r).unwrap();
            let total = usize::from(u16::from_be_bytes([f[16], f[17]]));
            assert!(total > f.len() - 14 && total >= 20);
            let f = build("random-not-ip", &o, &mut r).unwrap();
            let t = u16::from_be_bytes([f[12], f[13]]);
            assert!(![ETH_IPV4, ETH_IPV6, 0x8100, 0x88a8].contains(&t));
        }
    }
}
