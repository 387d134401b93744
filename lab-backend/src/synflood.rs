//! `client-synflood`: spoofed TCP SYNs as fast as one core can send them
//! (or at `--rate`), on a raw AF_PACKET socket on one interface to one MAC
//! (steer's edge), for `--duration-ms` or `--count` frames, whichever ends
//! first.
//!
//! Every SYN has a random source address from `--src-prefix` (and, with
//! `--vip6`, `--src6-prefix`), a random source port, a random sequence
//! number and a random IPv4 identification, is addressed to `--vip` (or
//! `--vip6`) on `--port`, carries an MSS option, and has valid IPv4 and TCP
//! checksums: to steer each one is a new flow. With both families, frames
//! alternate between them. Frames go out in batches of `--batch` with
//! `sendmmsg(2)`. Prints JSON: frames sent (per family), errors, elapsed
//! milliseconds and the achieved rate.
use std::{
    collections::BTreeMap,
    fmt, io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    str::FromStr,
    thread,
    time::{Duration, Instant},
};

use anyhow::{anyhow, bail, Result};
use serde_json::{json, Value};

use crate::raw::{fold, sum16, PacketSocket, Rng};

/// The longest flood `--duration-ms` allows (every run is bounded).
pub const MAX_DURATION: Duration = Duration::from_secs(600);
/// The largest `--batch` (frames per `sendmmsg` call).
pub const MAX_BATCH: usize = 1024;

/// An address prefix, `ADDR/LEN`, with no host bit set.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Prefix {
    pub addr: IpAddr,
    pub len: u8,
}

impl fmt::Display for Prefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

fn host_mask4(len: u8) -> u32 {
    u32::MAX.checked_shr(u32::from(len)).unwrap_or(0)
}

fn host_mask6(len: u8) -> u128 {
    u128::MAX.checked_shr(u32::from(len)).unwrap_or(0)
}

impl FromStr for Prefix {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> Result<Prefix> {
        let (a, l) = s
            .split_once('/')
            .ok_or_else(|| anyhow!("{s:?} is not a prefix: write ADDR/LEN, e.g. 10.128.0.0/9"))?;
        let addr: IpAddr = a
            .parse()
            .map_err(|_| anyhow!("{s:?}: {a:?} is not an IPv4 or IPv6 address"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let len: u8 = l
            .parse()
            .ok()
            .filter(|n| *n <= max)
            .ok_or_else(|| anyhow!("{s:?}: the length after '/' must be 0..={max}"))?;
        let (host_bits, net) = match addr {
            IpAddr::V4(v) => {
                let m = host_mask4(len);
                (
                    u32::from(v) & m != 0,
                    IpAddr::V4(Ipv4Addr::from(u32::from(v) & !m)),
                )
            }
            IpAddr::V6(v) => {
                let m = host_mask6(len);
                (
                    u128::from(v) & m != 0,
                    IpAddr::V6(Ipv6Addr::from(u128::from(v) & !m)),
                )
            }
        };
        if host_bits {
            bail!("{s:?} has host bits set: write {net}/{len}");
        }
        Ok(Prefix { addr, len })
    }
}

impl Prefix {
    #[cfg(test)]
    pub fn contains(&self, a: IpAddr) -> bool {
        match (self.addr, a) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                (u32::from(a) & !host_mask4(self.len)) == u32::from(n)
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => {
                (u128::from(a) & !host_mask6(self.len)) == u128::from(n)
            }
            _ => false,
        }
    }

    /// A random IPv4 address inside (the prefix must be IPv4).
    fn random_v4(&self, r: &mut Rng) -> Ipv4Addr {
        let IpAddr::V4(n) = self.addr else {
            unreachable!("checked when the options were made")
        };
        Ipv4Addr::from(u32::from(n) | (r.next() as u32 & host_mask4(self.len)))
    }

    /// A random IPv6 address inside (the prefix must be IPv6).
    fn random_v6(&self, r: &mut Rng) -> Ipv6Addr {
        let IpAddr::V6(n) = self.addr else {
            unreachable!("checked when the options were made")
        };
        let x = (u128::from(r.next()) << 64) | u128::from(r.next());
        Ipv6Addr::from(u128::from(n) | (x & host_mask6(self.len)))
    }
}

pub struct Options {
    pub iface: String,
    pub dst_mac: [u8; 6],
    pub src_mac: [u8; 6],
    /// IPv4 target and where its spoofed sources come from.
    pub v4: Option<(Ipv4Addr, Prefix)>,
    /// IPv6 target and where its spoofed sources come from.
    pub v6: Option<(Ipv6Addr, Prefix)>,
    pub port: u16,
    pub duration: Duration,
    /// Stop after this many frames (also bounded by `duration`).
    pub count: Option<u64>,
    /// Frames per second (None: as fast as possible).
    pub rate: Option<u64>,
    pub batch: usize,
    pub seed: u64,
}

impl Options {
    /// Checks what clap cannot: a family to send, prefixes of the right
    /// family, bounds.
    pub fn check(&self) -> Result<()> {
        if self.v4.is_none() && self.v6.is_none() {
            bail!("nothing to send: give --vip (with --src-prefix) or --vip6 (with --src6-prefix)");
        }
        if let Some((_, p)) = &self.v4 {
            if !p.addr.is_ipv4() {
                bail!("--src-prefix {p} is not IPv4: the spoofed sources of --vip must be IPv4");
            }
        }
        if let Some((_, p)) = &self.v6 {
            if !p.addr.is_ipv6() {
                bail!("--src6-prefix {p} is not IPv6: the spoofed sources of --vip6 must be IPv6");
            }
        }
        if self.duration.is_zero() || self.duration > MAX_DURATION {
            bail!(
                "--duration-ms {} is out of range: 1..={}",
                self.duration.as_millis(),
                MAX_DURATION.as_millis()
            );
        }
        if self.batch == 0 || self.batch > MAX_BATCH {
            bail!("--batch {} is out of range: 1..={MAX_BATCH}", self.batch);
        }
        if self.rate == Some(0) {
            bail!(
                "--rate 0 would send nothing: give a positive rate, or leave it out for full speed"
            );
        }
        Ok(())
    }
}

const ETH_IPV4: u16 = 0x0800;
const ETH_IPV6: u16 = 0x86dd;
const TCP: u8 = 6;
/// Ethernet + IPv4 + TCP with a 4-byte MSS option.
const V4_LEN: usize = 14 + 20 + 24;
/// Ethernet + IPv6 + TCP with a 4-byte MSS option.
const V6_LEN: usize = 14 + 40 + 24;
const FRAME_MAX: usize = V6_LEN;
const TCP_LEN: usize = 24;

/// One SYN's random fields.
struct Syn {
    sport: u16,
    seq: u32,
    ip_id: u16,
}

impl Syn {
    fn random(r: &mut Rng) -> Syn {
        let x = r.next();
        Syn {
            // Ephemeral-looking ports, never 0.
            sport: 1024 + (x % (65_536 - 1024)) as u16,
            seq: (x >> 32) as u32,
            ip_id: (x >> 16) as u16,
        }
    }
}

fn eth(f: &mut [u8], o: &Options, ethertype: u16) {
    f[0..6].copy_from_slice(&o.dst_mac);
    f[6..12].copy_from_slice(&o.src_mac);
    f[12..14].copy_from_slice(&ethertype.to_be_bytes());
}

/// The TCP header (checksum zero): SYN, window 64240, MSS 1460.
fn tcp(t: &mut [u8], s: &Syn, dport: u16) {
    t[0..2].copy_from_slice(&s.sport.to_be_bytes());
    t[2..4].copy_from_slice(&dport.to_be_bytes());
    t[4..8].copy_from_slice(&s.seq.to_be_bytes());
    t[8..12].fill(0);
    t[12] = 6 << 4; // 24 bytes: 20 + the MSS option
    t[13] = 0x02; // SYN
    t[14..16].copy_from_slice(&64_240u16.to_be_bytes());
    t[16..20].fill(0); // checksum, urgent pointer
    t[20..24].copy_from_slice(&[2, 4, 0x05, 0xb4]); // MSS 1460
}

/// Writes an IPv4 SYN into `f` (at least [`V4_LEN`] bytes); returns its
/// length.
fn fill_v4(f: &mut [u8], o: &Options, src: Ipv4Addr, dst: Ipv4Addr, s: &Syn) -> usize {
    eth(f, o, ETH_IPV4);
    let h = &mut f[14..34];
    h[0] = 0x45;
    h[1] = 0;
    h[2..4].copy_from_slice(&((20 + TCP_LEN) as u16).to_be_bytes());
    h[4..6].copy_from_slice(&s.ip_id.to_be_bytes());
    h[6..8].copy_from_slice(&0x4000u16.to_be_bytes()); // DF
    h[8] = 64;
    h[9] = TCP;
    h[10..12].fill(0);
    h[12..16].copy_from_slice(&src.octets());
    h[16..20].copy_from_slice(&dst.octets());
    let c = fold(sum16(0, h));
    h[10..12].copy_from_slice(&c.to_be_bytes());
    let t = &mut f[34..V4_LEN];
    tcp(t, s, o.port);
    let mut sum = sum16(0, &src.octets());
    sum = sum16(sum, &dst.octets());
    sum = sum16(sum, &[0, TCP]);
    sum = sum16(sum, &(TCP_LEN as u16).to_be_bytes());
    let c = fold(sum16(sum, t));
    t[16..18].copy_from_slice(&c.to_be_bytes());
    V4_LEN
}

/// Writes an IPv6 SYN into `f` (at least [`V6_LEN`] bytes); returns its
/// length.
fn fill_v6(f: &mut [u8], o: &Options, src: Ipv6Addr, dst: Ipv6Addr, s: &Syn) -> usize {
    eth(f, o, ETH_IPV6);
    let h = &mut f[14..54];
    h[0..4].copy_from_slice(&0x6000_0000u32.to_be_bytes());
    h[4..6].copy_from_slice(&(TCP_LEN as u16).to_be_bytes());
    h[6] = TCP;
    h[7] = 64;
    h[8..24].copy_from_slice(&src.octets());
    h[24..40].copy_from_slice(&dst.octets());
    let t = &mut f[54..V6_LEN];
    tcp(t, s, o.port);
    let mut sum = sum16(0, &src.octets());
    sum = sum16(sum, &dst.octets());
    sum = sum16(sum, &(TCP_LEN as u32).to_be_bytes());
    sum = sum16(sum, &[0, 0, 0, TCP]);
    let c = fold(sum16(sum, t));
    t[16..18].copy_from_slice(&c.to_be_bytes());
    V6_LEN
}

/// Builds the next SYN into `f`; `v6` picks the family when both are on.
fn build(f: &mut [u8; FRAME_MAX], o: &Options, r: &mut Rng, v6: bool) -> (usize, bool) {
    let s = Syn::random(r);
    match (&o.v4, &o.v6, v6) {
        (Some((vip, p)), None, _) | (Some((vip, p)), Some(_), false) => {
            let src = p.random_v4(r);
            (fill_v4(f, o, src, *vip, &s), false)
        }
        (_, Some((vip, p)), _) => {
            let src = p.random_v6(r);
            (fill_v6(f, o, src, *vip, &s), true)
        }
        (None, None, _) => unreachable!("Options::check requires a family"),
    }
}

/// Where the frames go: the packet socket, or a test's collector.
pub trait Sender {
    /// Sends the frames in order; how many were taken from the front.
    fn send_batch(&mut self, frames: &[&[u8]]) -> io::Result<usize>;
}

impl Sender for PacketSocket {
    fn send_batch(&mut self, frames: &[&[u8]]) -> io::Result<usize> {
        PacketSocket::send_batch(self, frames)
    }
}

/// What a flood did.
#[derive(Debug, Default)]
pub struct Tally {
    pub sent: u64,
    pub v4: u64,
    pub v6: u64,
    /// Frames a failed `sendmmsg` call did not send, by error.
    pub errors: BTreeMap<String, u64>,
    pub calls: u64,
    pub elapsed: Duration,
}

/// The send loop: batches until `count` frames are sent or `duration` has
/// passed, paced to `rate` if given. Frames a call did not take are not
/// retried (the next batch has new random ones).
pub fn flood(o: &Options, out: &mut impl Sender) -> Result<Tally> {
    o.check()?;
    let mut rng = Rng(o.seed.max(1));
    let mut bufs = vec![[0u8; FRAME_MAX]; o.batch];
    let mut lens = vec![0usize; o.batch];
    let mut fams = vec![false; o.batch];
    let limit = o.count.unwrap_or(u64::MAX);
    let start = Instant::now();
    let end = start + o.duration;
    let mut t = Tally::default();
    let mut next_v6 = false;
    loop {
        let now = Instant::now();
        if t.sent >= limit || now >= end {
            break;
        }
        let mut n = o
            .batch
            .min(usize::try_from(limit - t.sent).unwrap_or(usize::MAX));
        if let Some(rate) = o.rate {
            // Frame number `sent` is due at start + sent / rate; send only
            // the frames already due.
            let due = start + Duration::from_secs_f64(t.sent as f64 / rate as f64);
            if due > now {
                thread::sleep(due.min(end) - now);
                continue;
            }
            let due_now = ((now - start).as_secs_f64() * rate as f64) as u64 + 1;
            n = n.min(usize::try_from(due_now.saturating_sub(t.sent)).unwrap_or(usize::MAX));
        }
        for i in 0..n {
            let (len, v6) = build(&mut bufs[i], o, &mut rng, next_v6);
            lens[i] = len;
            fams[i] = v6;
            next_v6 = !next_v6;
        }
        let frames: Vec<&[u8]> = bufs[..n].iter().zip(&lens).map(|(b, l)| &b[..*l]).collect();
        t.calls += 1;
        match out.send_batch(&frames) {
            Ok(k) => {
                let k = k.min(n);
                t.sent += k as u64;
                let v6 = fams[..k].iter().filter(|x| **x).count() as u64;
                t.v6 += v6;
                t.v4 += k as u64 - v6;
            }
            Err(e) => {
                *t.errors.entry(e.to_string()).or_default() += n as u64;
                // ENOBUFS and the like pass; do not spin on them.
                thread::yield_now();
            }
        }
    }
    t.elapsed = start.elapsed();
    Ok(t)
}

/// Opens the socket, floods, and reports as JSON.
pub fn synflood_client(o: &Options) -> Result<Value> {
    o.check()?;
    let mut sock = PacketSocket::open(&o.iface, o.dst_mac)?;
    let t = flood(o, &mut sock)?;
    let secs = t.elapsed.as_secs_f64();
    Ok(json!({
        "iface": o.iface,
        "vip": o.v4.map(|(a, _)| a.to_string()),
        "vip6": o.v6.map(|(a, _)| a.to_string()),
        "port": o.port,
        "src_prefix": o.v4.map(|(_, p)| p.to_string()),
        "src6_prefix": o.v6.map(|(_, p)| p.to_string()),
        "frames": t.sent,
        "v4": t.v4,
        "v6": t.v6,
        "errors": t.errors.values().sum::<u64>(),
        "errors_by_kind": t.errors,
        "sendmmsg_calls": t.calls,
        "batch": o.batch,
        "target_rate": o.rate,
        "elapsed_ms": t.elapsed.as_millis() as u64,
        "rate_pps": if secs > 0.0 { (t.sent as f64 / secs).round() } else { 0.0 },
    }))
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use etherparse::{NetSlice, SlicedPacket, TransportSlice};

    use super::*;

    fn p(s: &str) -> Prefix {
        s.parse().unwrap()
    }

    fn opts() -> Options {
        Options {
            iface: "lo".into(),
            dst_mac: [2, 0, 0x5e, 0, 0, 2],
            src_mac: [2, 0, 0x5e, 0, 0, 0x10],
            v4: Some((Ipv4Addr::new(203, 0, 113, 10), p("10.128.0.0/9"))),
            v6: None,
            port: 80,
            duration: Duration::from_secs(5),
            count: Some(1000),
            rate: None,
            batch: 64,
            seed: 7,
        }
    }

    /// Collects frames; takes at most `take` per call, fails every
    /// `fail_every`-th call.
    #[derive(Default)]
    struct Collect {
        frames: Vec<Vec<u8>>,
        take: Option<usize>,
        fail_every: Option<u64>,
        calls: u64,
    }

    impl Sender for Collect {
        fn send_batch(&mut self, frames: &[&[u8]]) -> io::Result<usize> {
            self.calls += 1;
            if self
                .fail_every
                .is_some_and(|n| self.calls.is_multiple_of(n))
            {
                return Err(io::Error::from_raw_os_error(libc::ENOBUFS));
            }
            let k = self.take.map_or(frames.len(), |t| t.min(frames.len()));
            self.frames.extend(frames[..k].iter().map(|f| f.to_vec()));
            Ok(k)
        }
    }

    /// Checks one frame with etherparse: a SYN (no other flag) from inside
    /// the prefix to the VIP and port, both checksums right; returns the
    /// source address, port and sequence number.
    fn check_syn(f: &[u8], o: &Options) -> (IpAddr, u16, u32) {
        assert_eq!(&f[..6], &o.dst_mac);
        assert_eq!(&f[6..12], &o.src_mac);
        let pkt = SlicedPacket::from_ethernet(f).expect("parses");
        let Some(TransportSlice::Tcp(tcp)) = &pkt.transport else {
            panic!("not TCP: {:?}", pkt.transport);
        };
        assert!(tcp.syn() && !tcp.ack() && !tcp.rst() && !tcp.fin() && !tcp.psh());
        assert_eq!(tcp.destination_port(), o.port);
        assert_ne!(tcp.source_port(), 0);
        assert!(tcp.payload().is_empty());
        let th = tcp.to_header();
        let src = match pkt.net.as_ref().expect("an IP layer") {
            NetSlice::Ipv4(ip) => {
                let h = ip.header().to_header();
                assert_eq!(h.header_checksum, h.calc_header_checksum(), "IPv4 checksum");
                assert_eq!(usize::from(h.total_len), f.len() - 14);
                assert!(h.dont_fragment && !h.more_fragments);
                assert_eq!(
                    th.checksum,
                    th.calc_checksum_ipv4(&h, tcp.payload()).unwrap(),
                    "TCP checksum over IPv4"
                );
                let (vip, pre) = o.v4.unwrap();
                assert_eq!(Ipv4Addr::from(h.destination), vip);
                let src = IpAddr::V4(h.source.into());
                assert!(pre.contains(src), "{src} outside {pre}");
                src
            }
            NetSlice::Ipv6(ip) => {
                let h = ip.header().to_header();
                assert_eq!(usize::from(h.payload_length), f.len() - 54);
                assert_eq!(
                    th.checksum,
                    th.calc_checksum_ipv6(&h, tcp.payload()).unwrap(),
                    "TCP checksum over IPv6"
                );
                let (vip, pre) = o.v6.unwrap();
                assert_eq!(Ipv6Addr::from(h.destination), vip);
                let src = IpAddr::V6(h.source.into());
                assert!(pre.contains(src), "{src} outside {pre}");
                src
            }
        };
        (src, tcp.source_port(), tcp.sequence_number())
    }

    #[test]
    fn ipv4_frames_are_valid_syns_from_inside_the_prefix() {
        let o = opts();
        let mut c = Collect::default();
        let t = flood(&o, &mut c).unwrap();
        assert_eq!(t.sent, 1000);
        assert_eq!((t.v4, t.v6), (1000, 0));
        assert_eq!(c.frames.len(), 1000);
        let mut srcs = HashSet::new();
        let mut seqs = HashSet::new();
        for f in &c.frames {
            assert_eq!(f.len(), V4_LEN);
            let (src, sport, seq) = check_syn(f, &o);
            srcs.insert((src, sport));
            seqs.insert(seq);
        }
        // Random tuples: a 2^23-address prefix and 64,512 ports make a
        // repeat among 1,000 draws all but impossible.
        assert!(srcs.len() >= 995, "{} distinct tuples", srcs.len());
        assert!(
            seqs.len() >= 995,
            "{} distinct sequence numbers",
            seqs.len()
        );
    }

    #[test]
    fn both_families_alternate_and_are_valid() {
        let mut o = opts();
        o.v6 = Some(("2001:db8:100::10".parse().unwrap(), p("2001:db8:f100::/40")));
        o.count = Some(501);
        o.batch = 7;
        let mut c = Collect::default();
        let t = flood(&o, &mut c).unwrap();
        assert_eq!((t.sent, t.v4, t.v6), (501, 251, 250));
        for (i, f) in c.frames.iter().enumerate() {
            let (src, _, _) = check_syn(f, &o);
            assert_eq!(src.is_ipv6(), i % 2 == 1, "frame {i}");
        }
        // Only IPv6.
        o.v4 = None;
        o.count = Some(50);
        let mut c = Collect::default();
        let t = flood(&o, &mut c).unwrap();
        assert_eq!((t.v4, t.v6), (0, 50));
        for f in &c.frames {
            assert!(check_syn(f, &o).0.is_ipv6());
        }
    }

    #[test]
    fn sources_stay_inside_narrow_and_odd_prefixes() {
        let mut r = Rng(99);
        for s in [
            "10.128.0.0/9",
            "192.0.2.128/25",
            "198.18.7.5/32",
            "0.0.0.0/0",
        ] {
            let pre = p(s);
            let mut seen = HashSet::new();
            for _ in 0..5000 {
                let a = pre.random_v4(&mut r);
                assert!(pre.contains(IpAddr::V4(a)), "{a} outside {s}");
                seen.insert(a);
            }
            let size = 1u64 << (32 - pre.len);
            assert!(
                seen.len() as u64 >= size.min(4900),
                "{s}: {} distinct",
                seen.len()
            );
        }
        for s in [
            "2001:db8:f100::/40",
            "2001:db8::1/128",
            "2001:db8:0:0:8000::/65",
        ] {
            let pre = p(s);
            for _ in 0..5000 {
                let a = pre.random_v6(&mut r);
                assert!(pre.contains(IpAddr::V6(a)), "{a} outside {s}");
            }
        }
        // Outside: the lab's real clients are not in 10.128.0.0/9.
        let pre = p("10.128.0.0/9");
        for a in ["10.127.255.255", "10.0.0.1", "198.51.100.10", "11.0.0.0"] {
            assert!(!pre.contains(a.parse().unwrap()), "{a}");
        }
        assert!(pre.contains("10.255.255.255".parse().unwrap()));
        assert!(!pre.contains("::1".parse().unwrap()));
    }

    #[test]
    fn prefixes_that_are_wrong_say_why() {
        let e = |s: &str| s.parse::<Prefix>().unwrap_err().to_string();
        assert!(
            e("10.128.0.0").contains("write ADDR/LEN"),
            "{}",
            e("10.128.0.0")
        );
        assert!(e("10.128.0.0/33").contains("0..=32"));
        assert!(e("2001:db8::/129").contains("0..=128"));
        assert!(e("10.128.0.x/9").contains("not an IPv4 or IPv6 address"));
        assert_eq!(
            e("10.128.0.1/9"),
            "\"10.128.0.1/9\" has host bits set: write 10.128.0.0/9"
        );
        assert_eq!(
            e("2001:db8::1/64"),
            "\"2001:db8::1/64\" has host bits set: write 2001:db8::/64"
        );
    }

    #[test]
    fn options_that_cannot_work_are_refused() {
        let mut o = opts();
        o.v4 = None;
        assert!(flood(&o, &mut Collect::default())
            .unwrap_err()
            .to_string()
            .contains("nothing to send"));
        let mut o = opts();
        o.v4 = Some((Ipv4Addr::new(203, 0, 113, 10), p("2001:db8::/32")));
        assert!(o.check().unwrap_err().to_string().contains("is not IPv4"));
        let mut o = opts();
        o.batch = 0;
        assert!(o.check().is_err());
        let mut o = opts();
        o.duration = MAX_DURATION + Duration::from_secs(1);
        assert!(o.check().is_err());
        let mut o = opts();
        o.rate = Some(0);
        assert!(o.check().is_err());
    }

    #[test]
    fn partial_sends_and_errors_are_counted_not_retried() {
        let mut o = opts();
        o.count = Some(300);
        o.batch = 10;
        // The kernel takes 4 of every 10, and every 5th call fails.
        let mut c = Collect {
            take: Some(4),
            fail_every: Some(5),
            ..Collect::default()
        };
        let t = flood(&o, &mut c).unwrap();
        assert_eq!(t.sent, 300);
        assert_eq!(c.frames.len(), 300);
        // 300 / 4 = 75 good calls, and one failed call per 4 good ones.
        assert_eq!(t.calls, 75 + 18);
        assert_eq!(t.errors.values().sum::<u64>(), 18 * 10);
        assert_eq!(t.errors.len(), 1, "{:?}", t.errors);
        for f in &c.frames {
            check_syn(f, &o);
        }
    }

    #[test]
    fn duration_bounds_a_flood_without_count_and_rate_paces_it() {
        // No count: the duration ends it.
        let mut o = opts();
        o.count = None;
        o.duration = Duration::from_millis(200);
        let t0 = Instant::now();
        let t = flood(&o, &mut Collect::default()).unwrap();
        let took = t0.elapsed();
        assert!(t.sent > 0);
        assert!(
            took >= Duration::from_millis(200) && took < Duration::from_secs(3),
            "{took:?}"
        );
        // A sender that always fails still ends on time.
        let mut c = Collect {
            fail_every: Some(1),
            ..Collect::default()
        };
        let t = flood(&o, &mut c).unwrap();
        assert_eq!(t.sent, 0);
        assert!(t.errors.values().sum::<u64>() > 0);
        // 2,000 frames per second: 600 frames need about 0.3 s (the last
        // frame is due at 0.2995 s; batches never send frames before they
        // are due).
        let mut o = opts();
        o.count = Some(600);
        o.batch = 20;
        o.rate = Some(2000);
        let t = flood(&o, &mut Collect::default()).unwrap();
        assert_eq!(t.sent, 600);
        assert!(
            t.elapsed >= Duration::from_millis(295) && t.elapsed < Duration::from_secs(3),
            "{:?}",
            t.elapsed
        );
        // A rate the duration cuts short: 100 per second for 0.3 s is 30
        // frames (due at 0, 10, ..., 290 ms), batched or not.
        o.count = None;
        o.rate = Some(100);
        o.duration = Duration::from_millis(300);
        for batch in [1, 64] {
            o.batch = batch;
            let t = flood(&o, &mut Collect::default()).unwrap();
            assert!((30..=31).contains(&t.sent), "batch {batch}: {}", t.sent);
        }
    }

    fn require_root() -> bool {
        // SAFETY: geteuid has no preconditions and cannot fail.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipped: needs root");
            return false;
        }
        true
    }

    /// A real AF_PACKET socket and `sendmmsg`, on the loopback of a new
    /// network namespace of this thread only (nothing leaves it; it goes
    /// away with the thread).
    #[test]
    #[ignore = "needs root: AF_PACKET socket in a new network namespace"]
    fn sends_through_a_real_packet_socket() {
        if !require_root() {
            return;
        }
        let h = thread::spawn(|| -> Result<Value> {
            // SAFETY: unshare affects only this thread's namespaces (a
            // thread of its own, which ends with the test).
            if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
                bail!("unshare: {}", io::Error::last_os_error());
            }
            let st = std::process::Command::new("ip")
                .args(["link", "set", "lo", "up"])
                .status()?;
            if !st.success() {
                bail!("ip link set lo up: {st}");
            }
            let mut o = opts();
            o.count = Some(5000);
            o.duration = Duration::from_secs(10);
            synflood_client(&o)
        });
        let v = h.join().expect("thread").expect("flood");
        assert_eq!(v["frames"], 5000, "{v}");
        assert_eq!(v["errors"], 0, "{v}");
        assert!(v["sendmmsg_calls"].as_u64().unwrap() >= 5000 / 64, "{v}");
        assert!(v["rate_pps"].as_f64().unwrap() > 0.0, "{v}");
    }
}
