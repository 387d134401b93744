//! The lab's topology: namespaces, links, addresses, routes, as data, and
//! the list of steps that builds it. Nothing here touches the system, so
//! the plan can be checked by unit tests without root.
//!
//! ```text
//!  stl-client ──┐                      ┌── stl-b-eu1 ... stl-b-ap2
//!               │  stl-br0 (front)     │  stl-br1 (back)
//!  stl-edge ────┤  198.51.100.0/24     │  192.0.2.0/24
//!               │  2001:db8:c::/64     │  2001:db8:b::/64
//!  stl-router ──┘ (stl-r0)     (stl-r1)└──
//! ```
//! Both bridges live in the `stl-net` namespace.
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// Every name the lab creates starts with this, so cleanup can find it.
pub const PREFIX: &str = "stl-";

pub const NS_NET: &str = "stl-net";
pub const NS_CLIENT: &str = "stl-client";
pub const NS_EDGE: &str = "stl-edge";
pub const NS_ROUTER: &str = "stl-router";

pub const BRIDGE_FRONT: &str = "stl-br0";
pub const BRIDGE_BACK: &str = "stl-br1";

/// The edge's interface: steer's XDP program attaches here.
pub const EDGE_IF: &str = "stl-e0";
/// The edge link's other end, a port of the front bridge in `stl-net`.
pub const EDGE_PORT: &str = "stl-pe";
pub const CLIENT_IF: &str = "stl-c0";
pub const ROUTER_FRONT_IF: &str = "stl-r0";
pub const ROUTER_BACK_IF: &str = "stl-r1";
pub const BACKEND_IF: &str = "stl-b0";
/// The TUN device a backend's decapsulator writes inner packets to.
pub const BACKEND_TUN: &str = "stl-tun0";

/// The router's MAC on the front segment: steer's `next_hop_mac`.
pub const ROUTER_MAC: &str = "02:00:5e:00:00:01";
pub const EDGE_MAC: &str = "02:00:5e:00:00:02";
pub const CLIENT_MAC: &str = "02:00:5e:00:00:10";
pub const ROUTER_BACK_MAC: &str = "02:00:5e:00:01:01";

/// Clients keep the usual 1500; everything behind them has room for the
/// 40 bytes of an outer IPv6 header (`mtu = 1600` in examples/lab.toml).
pub const CLIENT_MTU: u32 = 1500;
pub const FABRIC_MTU: u32 = 1600;

pub const ROUTER_FRONT_V4: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);
pub const EDGE_V4: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 2);
pub const ROUTER_FRONT_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0xc, 0, 0, 0, 0, 1);
pub const EDGE_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0xc, 0, 0, 0, 0, 2);
pub const ROUTER_BACK_V4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
pub const ROUTER_BACK_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0xb, 0, 0, 0, 0, 1);

/// Outer source ranges of encapsulated packets (examples/lab.toml); the
/// edge owns them (a `local` route) and the router routes them to it.
pub const ENCAP_SOURCE_V4: &str = "198.19.0.0/24";
pub const ENCAP_SOURCE_V6: &str = "2001:db8:ff::/96";

/// IPv4 VIPs: plain HTTP + UDP echo (IPIP), HTTP 4in6, HTTP with client
/// affinity.
pub const VIP_WEB: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);
pub const VIP_4IN6: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 11);
pub const VIP_AFFINITY: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 12);
/// The IPv6 VIP: HTTP + UDP echo (IP6IP6).
pub const VIP6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x100, 0, 0, 0, 0, 0x10);
pub const VIPS_V4: [Ipv4Addr; 3] = [VIP_WEB, VIP_4IN6, VIP_AFFINITY];
pub const VIPS_V6: [Ipv6Addr; 1] = [VIP6];

pub const HTTP_PORT: u16 = 80;
pub const UDP_PORT: u16 = 7;
pub const CONTROL_PORT: u16 = 9000;

/// The HTTP VIP (IPIP to the backends' IPv4 addresses).
pub fn web() -> SocketAddr {
    SocketAddr::new(VIP_WEB.into(), HTTP_PORT)
}
/// An IPv4 VIP served by the backends' IPv6 addresses (4in6).
pub fn web_4in6() -> SocketAddr {
    SocketAddr::new(VIP_4IN6.into(), HTTP_PORT)
}
/// An IPv4 VIP with client affinity.
pub fn web_affinity() -> SocketAddr {
    SocketAddr::new(VIP_AFFINITY.into(), HTTP_PORT)
}
/// The IPv6 HTTP VIP (6in6).
pub fn web6() -> SocketAddr {
    SocketAddr::new(VIP6.into(), HTTP_PORT)
}
/// UDP echo on the IPv4 VIP.
pub fn echo() -> SocketAddr {
    SocketAddr::new(VIP_WEB.into(), UDP_PORT)
}
/// UDP echo on the IPv6 VIP.
pub fn echo6() -> SocketAddr {
    SocketAddr::new(VIP6.into(), UDP_PORT)
}

/// One backend host (namespace `stl-b-<name>`). In examples/lab.toml it is
/// two `[[backends]]` entries: `<name>` (IPv4 address) and `<name>-v6`.
#[derive(Clone, Copy, Debug)]
pub struct Backend {
    pub name: &'static str,
    pub region: &'static str,
    pub v4: Ipv4Addr,
    pub v6: Ipv6Addr,
    pub mac: &'static str,
}

impl Backend {
    pub fn ns(&self) -> String {
        format!("stl-b-{}", self.name)
    }

    /// The bridge port (in `stl-net`) of this backend's link.
    pub fn port(&self) -> String {
        format!("stl-pb-{}", self.name)
    }

    /// The config entry using the IPv6 address.
    pub fn v6_entry(&self) -> String {
        format!("{}-v6", self.name)
    }

    pub fn control_v4(&self) -> SocketAddr {
        SocketAddr::new(self.v4.into(), CONTROL_PORT)
    }

    pub fn control_v6(&self) -> SocketAddr {
        SocketAddr::new(self.v6.into(), CONTROL_PORT)
    }

    pub fn http_v4(&self) -> SocketAddr {
        SocketAddr::new(self.v4.into(), HTTP_PORT)
    }

    pub fn http_v6(&self) -> SocketAddr {
        SocketAddr::new(self.v6.into(), HTTP_PORT)
    }
}

/// Backend `name` at 192.0.2.`host` and 2001:db8:b::`host` (the same
/// digits in both), with MAC 02:00:5e:00:01:`host`.
const fn backend(
    name: &'static str,
    region: &'static str,
    v4_host: u8,
    v6_host: u16,
    mac: &'static str,
) -> Backend {
    Backend {
        name,
        region,
        v4: Ipv4Addr::new(192, 0, 2, v4_host),
        v6: Ipv6Addr::new(0x2001, 0xdb8, 0xb, 0, 0, 0, 0, v6_host),
        mac,
    }
}

pub const REGIONS: [&str; 3] = ["eu-west", "us-east", "ap-south"];

pub const BACKENDS: [Backend; 6] = [
    backend("eu1", "eu-west", 11, 0x11, "02:00:5e:00:01:11"),
    backend("eu2", "eu-west", 12, 0x12, "02:00:5e:00:01:12"),
    backend("us1", "us-east", 21, 0x21, "02:00:5e:00:01:21"),
    backend("us2", "us-east", 22, 0x22, "02:00:5e:00:01:22"),
    backend("ap1", "ap-south", 31, 0x31, "02:00:5e:00:01:31"),
    backend("ap2", "ap-south", 32, 0x32, "02:00:5e:00:01:32"),
];

pub fn backend_named(name: &str) -> Option<&'static Backend> {
    BACKENDS
        .iter()
        .find(|b| b.name == name || b.ns() == name || b.v6_entry() == name)
}

/// Every namespace, switch first.
pub fn namespaces() -> Vec<String> {
    let mut v: Vec<String> = [NS_NET, NS_CLIENT, NS_EDGE, NS_ROUTER]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
    v.extend(BACKENDS.iter().map(Backend::ns));
    v
}

/// A client address group: future geo steering keys on client prefixes,
/// so clients come from several.
#[derive(Clone, Debug)]
pub struct ClientPrefix {
    pub prefix: &'static str,
    pub addrs: Vec<IpAddr>,
}

/// 198.51.100.10-19 (on the front segment itself), 198.18.1.10-14 and
/// 198.18.2.10-14 (/32s on the client's `lo`, routed to it by the router).
pub fn client_prefixes_v4() -> Vec<ClientPrefix> {
    let range = |a: u8, b: u8, c: u8, hosts: std::ops::RangeInclusive<u8>| {
        hosts
            .map(|h| IpAddr::V4(Ipv4Addr::new(a, b, c, h)))
            .collect::<Vec<_>>()
    };
    vec![
        ClientPrefix {
            prefix: "198.51.100.0/24",
            addrs: range(198, 51, 100, 10..=19),
        },
        ClientPrefix {
            prefix: "198.18.1.0/24",
            addrs: range(198, 18, 1, 10..=14),
        },
        ClientPrefix {
            prefix: "198.18.2.0/24",
            addrs: range(198, 18, 2, 10..=14),
        },
    ]
}

/// 2001:db8:c::10-19 (front segment), 2001:db8:c1::10-14 and
/// 2001:db8:c2::10-14 (/128s on `lo`).
pub fn client_prefixes_v6() -> Vec<ClientPrefix> {
    let range = |net: u16, hosts: std::ops::RangeInclusive<u16>| {
        hosts
            .map(|h| IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, net, 0, 0, 0, 0, h)))
            .collect::<Vec<_>>()
    };
    vec![
        ClientPrefix {
            prefix: "2001:db8:c::/64",
            addrs: range(0xc, 0x10..=0x19),
        },
        ClientPrefix {
            prefix: "2001:db8:c1::/64",
            addrs: range(0xc1, 0x10..=0x14),
        },
        ClientPrefix {
            prefix: "2001:db8:c2::/64",
            addrs: range(0xc2, 0x10..=0x14),
        },
    ]
}

/// Every client address of one family.
pub fn client_addrs(v6: bool) -> Vec<IpAddr> {
    let p = if v6 {
        client_prefixes_v6()
    } else {
        client_prefixes_v4()
    };
    p.into_iter().flat_map(|p| p.addrs).collect()
}

/// The client's main IPv4 address (the router's next hop for the extra
/// client prefixes).
pub fn client_main_v4() -> Ipv4Addr {
    Ipv4Addr::new(198, 51, 100, 10)
}

pub fn client_main_v6() -> Ipv6Addr {
    Ipv6Addr::new(0x2001, 0xdb8, 0xc, 0, 0, 0, 0, 0x10)
}

/// One thing `lab up` does to build the network.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// `ip ARGS...`
    Ip(Vec<String>),
    /// Write `value` to `/proc/sys/<key>` inside `ns`.
    Sysctl {
        ns: String,
        key: String,
        value: String,
    },
    /// Switch an offload feature of `ifname` in `ns` (what `ethtool -K`
    /// does).
    Feature {
        ns: String,
        ifname: String,
        feature: Feature,
        on: bool,
    },
    /// Attach an XDP program that passes everything to `ifname` in `ns`
    /// (driver mode). On the edge's bridge port: a veth delivers XDP_TX
    /// frames to its peer only if the peer has an XDP program.
    XdpPass { ns: String, ifname: String },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Feature {
    /// Transmit checksum offload. Off on the client: a packet steer sends
    /// back out with XDP_TX loses the "checksum still to be done" mark a
    /// locally generated packet carries on a veth, so it must already have
    /// a complete checksum.
    TxChecksum,
}

fn ip(args: &[&str]) -> Step {
    Step::Ip(args.iter().map(|s| (*s).to_owned()).collect())
}

fn ip_in(ns: &str, args: &[&str]) -> Step {
    let mut v = vec!["-n".to_owned(), ns.to_owned()];
    v.extend(args.iter().map(|s| (*s).to_owned()));
    Step::Ip(v)
}

fn sysctl(ns: &str, key: &str, value: &str) -> Step {
    Step::Sysctl {
        ns: ns.to_owned(),
        key: key.to_owned(),
        value: value.to_owned(),
    }
}

/// A veth from namespace `ns` (interface `ifname`, MAC `mac`) to a bridge
/// port `port` of `bridge` in `stl-net`.
fn attach(
    steps: &mut Vec<Step>,
    ns: &str,
    ifname: &str,
    mac: &str,
    port: &str,
    bridge: &str,
    mtu: u32,
) {
    let mtu = mtu.to_string();
    steps.push(ip_in(
        NS_NET,
        &[
            "link", "add", port, "type", "veth", "peer", "name", ifname, "netns", ns,
        ],
    ));
    steps.push(ip_in(
        ns,
        &["link", "set", ifname, "address", mac, "mtu", &mtu, "up"],
    ));
    steps.push(ip_in(
        NS_NET,
        &["link", "set", port, "master", bridge, "mtu", &mtu, "up"],
    ));
}

fn addr(ns: &str, a: &str, dev: &str) -> Step {
    if a.contains(':') {
        ip_in(ns, &["-6", "addr", "add", a, "dev", dev, "nodad"])
    } else {
        ip_in(ns, &["addr", "add", a, "dev", dev])
    }
}

fn route(ns: &str, dst: &str, via: &str) -> Step {
    if via.contains(':') {
        ip_in(ns, &["-6", "route", "add", dst, "via", via])
    } else {
        ip_in(ns, &["route", "add", dst, "via", via])
    }
}

/// Everything `lab up` does before it starts processes, in order.
pub fn plan() -> Vec<Step> {
    let mut s = Vec::new();
    let all = namespaces();
    for ns in &all {
        s.push(ip(&["netns", "add", ns]));
    }

    // Kernel settings, before any device exists so that new devices
    // inherit them from `default`.
    s.push(sysctl(NS_NET, "net/ipv6/conf/all/disable_ipv6", "1"));
    s.push(sysctl(NS_NET, "net/ipv6/conf/default/disable_ipv6", "1"));
    for ns in all.iter().filter(|n| *n != NS_NET) {
        let router = ns == NS_ROUTER;
        let fwd = if router { "1" } else { "0" };
        s.push(sysctl(ns, "net/ipv4/ip_forward", fwd));
        s.push(sysctl(ns, "net/ipv6/conf/all/forwarding", fwd));
        for scope in ["all", "default"] {
            s.push(sysctl(ns, &format!("net/ipv4/conf/{scope}/rp_filter"), "0"));
            s.push(sysctl(
                ns,
                &format!("net/ipv6/conf/{scope}/accept_dad"),
                "0",
            ));
            s.push(sysctl(ns, &format!("net/ipv6/conf/{scope}/accept_ra"), "0"));
        }
    }
    for b in &BACKENDS {
        // Direct server return: the VIPs sit on `lo`; never answer ARP for
        // them on the segment, nor use them as ARP source.
        s.push(sysctl(&b.ns(), "net/ipv4/conf/all/arp_ignore", "1"));
        s.push(sysctl(&b.ns(), "net/ipv4/conf/all/arp_announce", "2"));
    }
    for ns in &all {
        s.push(ip_in(ns, &["link", "set", "lo", "up"]));
    }

    // The two segments.
    for br in [BRIDGE_FRONT, BRIDGE_BACK] {
        s.push(ip_in(
            NS_NET,
            &[
                "link",
                "add",
                br,
                "type",
                "bridge",
                "stp_state",
                "0",
                "mcast_snooping",
                "0",
            ],
        ));
        s.push(ip_in(NS_NET, &["link", "set", br, "up"]));
    }
    attach(
        &mut s,
        NS_CLIENT,
        CLIENT_IF,
        CLIENT_MAC,
        "stl-pc",
        BRIDGE_FRONT,
        CLIENT_MTU,
    );
    attach(
        &mut s,
        NS_EDGE,
        EDGE_IF,
        EDGE_MAC,
        EDGE_PORT,
        BRIDGE_FRONT,
        FABRIC_MTU,
    );
    attach(
        &mut s,
        NS_ROUTER,
        ROUTER_FRONT_IF,
        ROUTER_MAC,
        "stl-pr0",
        BRIDGE_FRONT,
        FABRIC_MTU,
    );
    attach(
        &mut s,
        NS_ROUTER,
        ROUTER_BACK_IF,
        ROUTER_BACK_MAC,
        "stl-pr1",
        BRIDGE_BACK,
        FABRIC_MTU,
    );
    for b in &BACKENDS {
        attach(
            &mut s,
            &b.ns(),
            BACKEND_IF,
            b.mac,
            &b.port(),
            BRIDGE_BACK,
            FABRIC_MTU,
        );
    }
    s.push(Step::XdpPass {
        ns: NS_NET.into(),
        ifname: EDGE_PORT.into(),
    });
    s.push(Step::Feature {
        ns: NS_CLIENT.into(),
        ifname: CLIENT_IF.into(),
        feature: Feature::TxChecksum,
        on: false,
    });

    // Router.
    s.push(addr(
        NS_ROUTER,
        &format!("{ROUTER_FRONT_V4}/24"),
        ROUTER_FRONT_IF,
    ));
    s.push(addr(
        NS_ROUTER,
        &format!("{ROUTER_FRONT_V6}/64"),
        ROUTER_FRONT_IF,
    ));
    s.push(addr(
        NS_ROUTER,
        &format!("{ROUTER_BACK_V4}/24"),
        ROUTER_BACK_IF,
    ));
    s.push(addr(
        NS_ROUTER,
        &format!("{ROUTER_BACK_V6}/64"),
        ROUTER_BACK_IF,
    ));
    let main4 = client_main_v4().to_string();
    let main6 = client_main_v6().to_string();
    for p in client_prefixes_v4().iter().skip(1) {
        s.push(route(NS_ROUTER, p.prefix, &main4));
    }
    for p in client_prefixes_v6().iter().skip(1) {
        s.push(route(NS_ROUTER, p.prefix, &main6));
    }
    s.push(route(NS_ROUTER, ENCAP_SOURCE_V4, &EDGE_V4.to_string()));
    s.push(route(NS_ROUTER, ENCAP_SOURCE_V6, &EDGE_V6.to_string()));

    // Edge: reaches the backends (health checks) through the router, and
    // owns the encapsulation source ranges, so that anything a backend
    // sends back to them (ICMP errors) lands here.
    s.push(addr(NS_EDGE, &format!("{EDGE_V4}/24"), EDGE_IF));
    s.push(addr(NS_EDGE, &format!("{EDGE_V6}/64"), EDGE_IF));
    s.push(route(NS_EDGE, "192.0.2.0/24", &ROUTER_FRONT_V4.to_string()));
    s.push(route(
        NS_EDGE,
        "2001:db8:b::/64",
        &ROUTER_FRONT_V6.to_string(),
    ));
    s.push(ip_in(
        NS_EDGE,
        &["route", "add", "local", ENCAP_SOURCE_V4, "dev", "lo"],
    ));
    s.push(ip_in(
        NS_EDGE,
        &["-6", "route", "add", "local", ENCAP_SOURCE_V6, "dev", "lo"],
    ));

    // Client: VIPs through the edge, backends' own addresses through the
    // router, nothing else.
    for (i, p) in client_prefixes_v4().iter().enumerate() {
        for a in &p.addrs {
            if i == 0 {
                s.push(addr(NS_CLIENT, &format!("{a}/24"), CLIENT_IF));
            } else {
                s.push(addr(NS_CLIENT, &format!("{a}/32"), "lo"));
            }
        }
    }
    for (i, p) in client_prefixes_v6().iter().enumerate() {
        for a in &p.addrs {
            if i == 0 {
                s.push(addr(NS_CLIENT, &format!("{a}/64"), CLIENT_IF));
            } else {
                s.push(addr(NS_CLIENT, &format!("{a}/128"), "lo"));
            }
        }
    }
    s.push(route(NS_CLIENT, "203.0.113.0/24", &EDGE_V4.to_string()));
    s.push(route(NS_CLIENT, "2001:db8:100::/64", &EDGE_V6.to_string()));
    s.push(route(
        NS_CLIENT,
        "192.0.2.0/24",
        &ROUTER_FRONT_V4.to_string(),
    ));
    s.push(route(
        NS_CLIENT,
        "2001:db8:b::/64",
        &ROUTER_FRONT_V6.to_string(),
    ));

    // Backends: own addresses on the back segment, VIPs on lo, replies
    // straight back through the router, and the TUN device the
    // decapsulator writes inner packets to.
    for b in &BACKENDS {
        let ns = b.ns();
        s.push(addr(&ns, &format!("{}/24", b.v4), BACKEND_IF));
        s.push(addr(&ns, &format!("{}/64", b.v6), BACKEND_IF));
        for v in VIPS_V4 {
            s.push(addr(&ns, &format!("{v}/32"), "lo"));
        }
        for v in VIPS_V6 {
            s.push(addr(&ns, &format!("{v}/128"), "lo"));
        }
        s.push(route(&ns, "default", &ROUTER_BACK_V4.to_string()));
        s.push(route(&ns, "default", &ROUTER_BACK_V6.to_string()));
        s.push(ip_in(
            &ns,
            &["tuntap", "add", "dev", BACKEND_TUN, "mode", "tun"],
        ));
        s.push(ip_in(&ns, &["link", "set", BACKEND_TUN, "up"]));
        s.push(sysctl(
            &ns,
            &format!("net/ipv4/conf/{BACKEND_TUN}/rp_filter"),
            "0",
        ));
    }
    s
}

/// The arguments of one backend's `steer-lab-backend serve`.
pub fn serve_args(b: &Backend) -> Vec<String> {
    let mut a: Vec<String> = vec![
        "serve".into(),
        "--name".into(),
        b.name.into(),
        "--region".into(),
        b.region.into(),
        "--http".into(),
        format!("0.0.0.0:{HTTP_PORT}"),
        "--http".into(),
        format!("[::]:{HTTP_PORT}"),
        "--control".into(),
        b.control_v4().to_string(),
        "--control".into(),
        b.control_v6().to_string(),
        "--decap-tun".into(),
        BACKEND_TUN.into(),
    ];
    let udp: Vec<IpAddr> = VIPS_V4
        .iter()
        .map(|v| IpAddr::V4(*v))
        .chain(VIPS_V6.iter().map(|v| IpAddr::V6(*v)))
        .chain([IpAddr::V4(b.v4), IpAddr::V6(b.v6)])
        .collect();
    for u in udp {
        a.push("--udp".into());
        a.push(SocketAddr::new(u, UDP_PORT).to_string());
    }
    a
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names_in(step: &Step) -> Vec<String> {
        match step {
            Step::Ip(args) => {
                let mut v = Vec::new();
                for (i, a) in args.iter().enumerate() {
                    let prev = if i > 0 { args[i - 1].as_str() } else { "" };
                    if matches!(
                        prev,
                        "-n" | "netns" | "name" | "dev" | "master" | "add" | "set"
                    ) && !matches!(
                        a.as_str(),
                        "lo" | "local" | "default" | "dev" | "type" | "add"
                    ) && !a.contains('/')
                        && !a.contains('.')
                        && !a.contains(':')
                    {
                        v.push(a.clone());
                    }
                }
                v
            }
            Step::Sysctl { ns, .. } => vec![ns.clone()],
            Step::Feature { ns, ifname, .. } | Step::XdpPass { ns, ifname } => {
                vec![ns.clone(), ifname.clone()]
            }
        }
    }

    #[test]
    fn every_name_is_prefixed_and_fits_an_interface_name() {
        for step in plan() {
            for n in names_in(&step) {
                assert!(n.starts_with(PREFIX), "{n:?} in {step:?}");
                assert!(n.len() <= 15, "{n:?} is longer than IFNAMSIZ-1");
            }
        }
    }

    #[test]
    fn only_documentation_and_benchmark_ranges() {
        let allowed = |a: IpAddr| match a {
            IpAddr::V4(v) => {
                let o = v.octets();
                (o[0] == 198 && (o[1] == 18 || o[1] == 19))
                    || (o[0] == 198 && o[1] == 51 && o[2] == 100)
                    || (o[0] == 203 && o[1] == 0 && o[2] == 113)
                    || (o[0] == 192 && o[1] == 0 && o[2] == 2)
            }
            IpAddr::V6(v) => v.segments()[0] == 0x2001 && v.segments()[1] == 0xdb8,
        };
        let mut seen = 0;
        for step in plan() {
            if let Step::Ip(args) = step {
                for a in args {
                    let host = a.split('/').next().unwrap_or("");
                    if let Ok(addr) = host.parse::<IpAddr>() {
                        assert!(allowed(addr), "{a} is outside the allowed ranges");
                        seen += 1;
                    }
                }
            }
        }
        assert!(seen > 50, "only {seen} addresses checked");
        for b in &BACKENDS {
            for a in serve_args(b) {
                if let Ok(sa) = a.parse::<SocketAddr>() {
                    assert!(sa.ip().is_unspecified() || allowed(sa.ip()), "{a}");
                }
            }
        }
    }

    #[test]
    fn namespaces_are_created_before_use_and_links_after_sysctls() {
        let p = plan();
        let first_link = p
            .iter()
            .position(|s| matches!(s, Step::Ip(a) if a.get(3).map(String::as_str) == Some("add")))
            .unwrap();
        let last_netns = p
            .iter()
            .rposition(|s| matches!(s, Step::Ip(a) if a[0] == "netns"))
            .unwrap();
        let first_default_sysctl = p
            .iter()
            .position(|s| matches!(s, Step::Sysctl { key, .. } if key.contains("default")))
            .unwrap();
        assert!(last_netns < first_default_sysctl);
        assert!(first_default_sysctl < first_link);
        assert_eq!(namespaces().len(), 4 + BACKENDS.len());
    }

    #[test]
    fn backend_lookup_accepts_every_spelling() {
        assert_eq!(
            backend_named("eu2").unwrap().v4,
            Ipv4Addr::new(192, 0, 2, 12)
        );
        assert_eq!(
            backend_named("eu2").unwrap().v6.to_string(),
            "2001:db8:b::12"
        );
        assert_eq!(backend_named("stl-b-ap1").unwrap().name, "ap1");
        assert_eq!(backend_named("us1-v6").unwrap().name, "us1");
        assert!(backend_named("nope").is_none());
    }
}
