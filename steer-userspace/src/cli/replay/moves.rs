//! What a what-if switch did to flows: which flows forwarded before the
//! switch went to another backend after it.

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;

use etherparse::{NetSlice, SlicedPacket, TransportSlice};

/// A TCP or UDP flow as the client sent it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Flow {
    pub proto: u8,
    pub src: IpAddr,
    pub sport: u16,
    pub dst: IpAddr,
    pub dport: u16,
}

impl fmt::Display for Flow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let proto = match self.proto {
            6 => "tcp",
            17 => "udp",
            _ => "ip",
        };
        let sock = |a: &IpAddr, p: u16| match a {
            IpAddr::V4(v4) => format!("{v4}:{p}"),
            IpAddr::V6(v6) => format!("[{v6}]:{p}"),
        };
        write!(
            f,
            "{proto} {} -> {}",
            sock(&self.src, self.sport),
            sock(&self.dst, self.dport)
        )
    }
}

/// The client's flow in a received frame (TCP or UDP over IPv4 or IPv6).
pub fn flow_of(frame: &[u8]) -> Option<Flow> {
    let p = SlicedPacket::from_ethernet(frame).ok()?;
    let (src, dst): (IpAddr, IpAddr) = match p.net? {
        NetSlice::Ipv4(ip) => (
            ip.header().source_addr().into(),
            ip.header().destination_addr().into(),
        ),
        NetSlice::Ipv6(ip) => (
            ip.header().source_addr().into(),
            ip.header().destination_addr().into(),
        ),
    };
    let (proto, sport, dport) = match p.transport? {
        TransportSlice::Tcp(t) => (6, t.source_port(), t.destination_port()),
        TransportSlice::Udp(u) => (17, u.source_port(), u.destination_port()),
        _ => return None,
    };
    Some(Flow {
        proto,
        src,
        sport,
        dst,
        dport,
    })
}

/// The outer destination (the backend) of a transmitted frame.
pub fn backend_of(frame: &[u8]) -> Option<IpAddr> {
    match SlicedPacket::from_ethernet(frame).ok()?.net? {
        NetSlice::Ipv4(ip) => Some(ip.header().destination_addr().into()),
        NetSlice::Ipv6(ip) => Some(ip.header().destination_addr().into()),
    }
}

/// The backend each flow was last sent to, before and after the switch.
#[derive(Default)]
pub struct Moves {
    before: HashMap<Flow, IpAddr>,
    after: HashMap<Flow, IpAddr>,
    switched: bool,
}

/// What [`Moves::summary`] found.
#[derive(Debug, PartialEq, Eq)]
pub struct Summary {
    /// Flows forwarded both before and after the switch.
    pub continuing: usize,
    /// Those of them whose backend changed, with (before, after).
    pub moved: Vec<(Flow, IpAddr, IpAddr)>,
    /// Flows first forwarded after the switch.
    pub new_after: usize,
}

impl Moves {
    pub fn switch(&mut self) {
        self.switched = true;
    }

    /// Notes that the frame `input` was transmitted as `output`.
    pub fn forwarded(&mut self, input: &[u8], output: &[u8]) {
        let (Some(flow), Some(backend)) = (flow_of(input), backend_of(output)) else {
            return;
        };
        let map = if self.switched {
            &mut self.after
        } else {
            &mut self.before
        };
        map.insert(flow, backend);
    }

    pub fn summary(&self) -> Summary {
        let mut moved: Vec<(Flow, IpAddr, IpAddr)> = self
            .after
            .iter()
            .filter_map(|(f, a)| match self.before.get(f) {
                Some(b) if b != a => Some((*f, *b, *a)),
                _ => None,
            })
            .collect();
        moved.sort();
        Summary {
            continuing: self
                .after
                .keys()
                .filter(|f| self.before.contains_key(f))
                .count(),
            moved,
            new_after: self
                .after
                .keys()
                .filter(|f| !self.before.contains_key(f))
                .count(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use etherparse::PacketBuilder;

    fn tcp(src: [u8; 4], sport: u16) -> Vec<u8> {
        let mut out = Vec::new();
        PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
            .ipv4(src, [203, 0, 113, 10], 64)
            .tcp(sport, 443, 1, 1000)
            .write(&mut out, b"x")
            .unwrap();
        out
    }

    fn encap(backend: [u8; 4], inner: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        PacketBuilder::ethernet2([2, 0, 0, 0, 0, 3], [2, 0, 0, 0, 0, 4])
            .ipv4([198, 18, 0, 1], backend, 64)
            .write(&mut out, etherparse::IpNumber(4), &inner[14..])
            .unwrap();
        out
    }

    #[test]
    fn reports_moved_continuing_and_new_flows() {
        let (a, b) = (tcp([198, 51, 100, 7], 40000), tcp([198, 51, 100, 8], 40001));
        let c = tcp([198, 51, 100, 9], 40002);
        let mut m = Moves::default();
        m.forwarded(&a, &encap([192, 0, 2, 11], &a));
        m.forwarded(&b, &encap([192, 0, 2, 11], &b));
        m.switch();
        m.forwarded(&a, &encap([192, 0, 2, 11], &a));
        m.forwarded(&b, &encap([192, 0, 2, 21], &b));
        m.forwarded(&c, &encap([192, 0, 2, 21], &c));
        let s = m.summary();
        assert_eq!(s.continuing, 2);
        assert_eq!(s.new_after, 1);
        assert_eq!(s.moved.len(), 1);
        let (flow, before, after) = s.moved[0];
        assert_eq!(
            flow.to_string(),
            "tcp 198.51.100.8:40001 -> 203.0.113.10:443"
        );
        assert_eq!(before, IpAddr::from([192, 0, 2, 11]));
        assert_eq!(after, IpAddr::from([192, 0, 2, 21]));
    }

    #[test]
    fn frames_that_are_not_tcp_or_udp_are_ignored() {
        assert_eq!(flow_of(&[0u8; 10]), None);
        let mut m = Moves::default();
        m.forwarded(&[0u8; 60], &[0u8; 60]);
        assert_eq!(m.summary().continuing, 0);
    }
}
