//! The configuration model: what a validated config holds. Ranges and
//! defaults are in `defaults.rs` (and the field reference, `docs/config.md`);
//! how each field is read and checked is in `section/`.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use crate::partial::model;

/// A validated configuration. Only [`Config::parse`] and [`Config::load`]
/// produce one; every cross-reference in it resolves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub dataplane: DataplaneConfig,
    pub regions: Vec<Region>,
    pub backends: Vec<Backend>,
    pub services: Vec<Service>,
    pub health_checks: Vec<HealthCheck>,
    pub control: ControlConfig,
    pub metrics: MetricsConfig,
}

model! {
    /// `[dataplane]`: how the XDP program is attached and what it writes.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct DataplaneConfig (partial PDataplane) {
        /// Interfaces to attach to.
        pub interfaces: Vec<String>,
        /// XDP attach mode.
        pub mode: AttachMode,
        /// Destination MAC of every encapsulated packet. Required.
        pub next_hop_mac: [u8; 6],
        /// Source MAC of encapsulated packets when the interface's own MAC is
        /// not known (attached interfaces' MACs are read at attach; `steer
        /// replay` has none). Unicast only.
        pub source_mac: Option<[u8; 6]>,
        /// Outer source range for IPv4 encapsulation. Required if any backend is IPv4.
        pub encap_source_v4: Option<Ipv4Prefix>,
        /// Outer source range for IPv6 encapsulation (length >= 96). Required if
        /// any backend is IPv6.
        pub encap_source_v6: Option<Ipv6Prefix>,
        /// Largest packet (outer IP header included) steer transmits.
        pub mtu: u32,
        /// Conntrack entries.
        pub conntrack_size: u32,
        /// Maglev ring size (a prime).
        pub maglev_table_size: u32,
        /// TTL / hop limit of the outer header.
        pub ttl: u8,
        /// bpffs directory of steer's own for pinned maps and links.
        pub pin_path: PathBuf,
        /// Selection tables; at least the number of services.
        pub max_tables: u32,
        /// Reals (backend-of-a-service slots); at least the sum over services of
        /// their backend count.
        pub max_reals: u32,
    }
}

/// XDP attach mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum AttachMode {
    /// Native (driver) XDP; fails if the driver does not support it.
    #[default]
    Driver,
    /// Generic (SKB) XDP: works everywhere, slower.
    Skb,
    /// Driver mode, falling back to SKB mode.
    Auto,
}

/// An IPv4 prefix with host bits zero, e.g. `198.18.0.0/24`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Ipv4Prefix {
    pub addr: Ipv4Addr,
    pub len: u8,
}

/// An IPv6 prefix with host bits zero and `len >= 96`, e.g. `2001:db8:ffff::/96`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Ipv6Prefix {
    pub addr: Ipv6Addr,
    pub len: u8,
}

model! {
    /// `[[regions]]`: a named group of backends.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct Region (partial PRegion) {
        pub name: String,
        pub description: Option<String>,
    }
}

model! {
    /// `[[backends]]`: one server packets are encapsulated to.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct Backend (partial PBackend) {
        pub name: String,
        pub address: IpAddr,
        /// Name of a `[[regions]]` entry.
        pub region: String,
        /// Share of new flows; 0 drains the backend.
        pub weight: u32,
        pub encapsulation: Encapsulation,
        /// Name of a `[[health_checks]]` entry; overrides the service's check.
        pub health_check: Option<String>,
    }
}

/// How packets are encapsulated to a backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Encapsulation {
    /// IP-in-IP (IPv4: protocol 4, IPv6: protocol 41). The only kind so far.
    #[default]
    Ip,
}

model! {
    /// `[[services]]`: a VIP, port and protocol, and the backends serving it.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct Service (partial PService) {
        pub name: String,
        pub vip: IpAddr,
        /// Destination port; 0 = all ports.
        pub port: u16,
        pub protocol: Protocol,
        pub affinity: Affinity,
        /// Backend names.
        pub backends: Vec<String>,
        /// Region names: every backend of these regions serves too.
        pub regions: Vec<String>,
        /// Name of a `[[health_checks]]` entry.
        pub health_check: Option<String>,
    }
}

/// Transport protocol of a service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocol {
    Tcp,
    Udp,
}

/// What a backend choice sticks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Affinity {
    /// Each 5-tuple flow is placed independently.
    #[default]
    Flow,
    /// All flows from one client address to the VIP go to one backend.
    Client,
}

model! {
    /// `[[health_checks]]`: how a backend is probed.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct HealthCheck (partial PHealthCheck) {
        pub name: String,
        pub kind: CheckKind,
        /// Port to probe; `None` = the service port, or 80 (http) / 443 (https).
        /// See [`HealthCheck::effective_port`].
        pub port: Option<u16>,
        /// HTTP request path.
        pub path: String,
        pub interval: Duration,
        /// Shorter than `interval`.
        pub timeout: Duration,
        /// Consecutive successes to mark a backend up (>= 1).
        pub rise: u32,
        /// Consecutive failures to mark a backend down (>= 1).
        pub fall: u32,
        /// Random delay added to each probe; shorter than `interval`.
        pub jitter: Duration,
        /// Accepted HTTP status codes.
        pub expected_status: Vec<u16>,
        pub body_contains: Option<String>,
        /// Parse the body as JSON and require its `"status"` field to say up.
        pub deep_health: bool,
        /// Deep health: the `"status"` values that mean up (exact,
        /// case-sensitive). Not empty.
        pub up_statuses: Vec<String>,
        /// Deep health: the `"status"` values that mean up but degraded (the
        /// backend keeps traffic; `steer status` shows it degraded). None of
        /// them is in `up_statuses`.
        pub degraded_statuses: Vec<String>,
        pub sni: Option<String>,
        pub ca_file: Option<PathBuf>,
        pub insecure: bool,
    }
}

/// Health check probe type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CheckKind {
    Tcp,
    Http,
    Https,
}

/// `[control]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ControlConfig {
    /// Unix socket of the control API.
    pub socket: PathBuf,
    /// A group whose members may run `steer status` (read-only); every
    /// other request still needs root. `None`: root only.
    pub group: Option<ControlGroup>,
}

/// `[control] group`: resolved when the config is read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ControlGroup {
    /// The group's name, or its number if it has no name in the system's
    /// group database (a numeric `group` need not have one).
    pub name: String,
    pub gid: u32,
}

/// `[metrics]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetricsConfig {
    /// Prometheus listener; must be a loopback address.
    pub listen: SocketAddr,
}

/// An enum spelled as a lowercase keyword in TOML.
pub(crate) trait Keyword: Sized + Copy + PartialEq + 'static {
    /// What the value is, for error messages ("protocol").
    const WHAT: &'static str;
    const ALL: &'static [(&'static str, Self)];

    fn keyword(self) -> &'static str {
        Self::ALL
            .iter()
            .find(|(_, v)| *v == self)
            .map_or("?", |(k, _)| k)
    }
}

impl Keyword for AttachMode {
    const WHAT: &'static str = "attach mode";
    const ALL: &'static [(&'static str, Self)] = &[
        ("driver", AttachMode::Driver),
        ("skb", AttachMode::Skb),
        ("auto", AttachMode::Auto),
    ];
}
impl Keyword for Encapsulation {
    const WHAT: &'static str = "encapsulation";
    const ALL: &'static [(&'static str, Self)] = &[("ip", Encapsulation::Ip)];
}
impl Keyword for Protocol {
    const WHAT: &'static str = "protocol";
    const ALL: &'static [(&'static str, Self)] = &[("tcp", Protocol::Tcp), ("udp", Protocol::Udp)];
}
impl Keyword for Affinity {
    const WHAT: &'static str = "affinity";
    const ALL: &'static [(&'static str, Self)] =
        &[("flow", Affinity::Flow), ("client", Affinity::Client)];
}
impl Keyword for CheckKind {
    const WHAT: &'static str = "health check kind";
    const ALL: &'static [(&'static str, Self)] = &[
        ("tcp", CheckKind::Tcp),
        ("http", CheckKind::Http),
        ("https", CheckKind::Https),
    ];
}

macro_rules! keyword_api {
    ($($t:ty),*) => {$(
        impl $t {
            /// The TOML spelling.
            pub fn as_str(self) -> &'static str {
                Keyword::keyword(self)
            }
        }
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    )*};
}
keyword_api!(AttachMode, Encapsulation, Protocol, Affinity, CheckKind);

impl Protocol {
    /// IP protocol number (6 or 17).
    pub fn number(self) -> u8 {
        match self {
            Protocol::Tcp => 6,
            Protocol::Udp => 17,
        }
    }
}

pub(crate) fn keyword_list<T: Keyword>() -> String {
    T::ALL
        .iter()
        .map(|(k, _)| format!("{k:?}"))
        .collect::<Vec<_>>()
        .join(", ")
}
