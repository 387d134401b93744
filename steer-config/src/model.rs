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
    /// `[[client_classes]]`, in config order; class id = index + 1.
    pub client_classes: Vec<ClientClass>,
    /// `[geoip]`, if present.
    pub geoip: Option<GeoIpConfig>,
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
        /// Path-MTU replies each CPU may send per second; 0: none.
        pub pmtu_reply_rate: u16,
        /// Path-MTU replies each CPU may send back to back (at least 1 when
        /// the rate is not 0).
        pub pmtu_reply_burst: u16,
        /// Conntrack entries of IPv4 flows (`CONNTRACK4`); also sizes
        /// `RECENT_SYN`.
        pub conntrack_size: u32,
        /// Conntrack entries of IPv6 flows (`CONNTRACK6`); `conntrack_size`
        /// unless set.
        pub conntrack_size_v6: u32,
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
        /// Traffic dial, 0..=100 (Global Accelerator): the percentage of the
        /// new flows reaching the region that it keeps; the rest spill on.
        pub dial: u8,
        /// Per-host limit of new flows per second (Google Cloud RATE
        /// balancing mode); `None` = no limit.
        pub max_new_flows_per_second: Option<u32>,
        /// Scales `max_new_flows_per_second` (Google Cloud capacity scaler):
        /// 0 or 0.1..=1.0. Effective capacity = max × scaler.
        pub capacity_scaler: Milli,
    }
}

/// A non-negative decimal with three fractional digits, held exactly as
/// thousandths so that configs stay `Eq` (`capacity_scaler = 0.5` is
/// `Milli(500)`). Written in TOML as a float or an integer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Milli(pub u32);

impl Milli {
    /// The value as thousandths (`0.5` → 500).
    pub fn thousandths(self) -> u32 {
        self.0
    }

    /// The value as a float (`Milli(500)` → 0.5).
    pub fn get(self) -> f64 {
        f64::from(self.0) / 1000.0
    }
}

impl fmt::Display for Milli {
    /// `1.4`, `1`, `0.125`: as short as exact.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (whole, frac) = (self.0 / 1000, self.0 % 1000);
        if frac == 0 {
            return write!(f, "{whole}");
        }
        let digits = format!("{frac:03}");
        write!(f, "{whole}.{}", digits.trim_end_matches('0'))
    }
}

/// A client prefix of a [`ClientClass`]: host bits zero; IPv4 length
/// 1..=24, IPv6 length 1..=48 (Route 53's limits for IP-based routing).
/// Ordered by family (IPv4 first), then address, then length, so that a
/// prefix sorts before the prefixes it contains.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ClientPrefix {
    pub addr: IpAddr,
    pub len: u8,
}

model! {
    /// `[[client_classes]]`: a named set of client prefixes with a preferred
    /// region order and, optionally, the only regions its flows may use.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct ClientClass (partial PClientClass) {
        pub name: String,
        /// Every prefix of the class, from `prefixes`, `prefix_files` and
        /// (through `[geoip]`) `countries` and `continents`: sorted
        /// ([`ClientPrefix`] order), each once. No prefix is in two classes.
        pub prefixes: Vec<ClientPrefix>,
        /// The prefix files read, resolved against the config file's
        /// directory.
        pub prefix_files: Vec<PathBuf>,
        /// ISO 3166 alpha-2 country codes, upper case, resolved through `[geoip]`.
        pub countries: Vec<String>,
        /// Continent codes (`AF AN AS EU NA OC SA`), resolved through `[geoip]`.
        pub continents: Vec<String>,
        /// Preferred region order (used by `policy = "geo"` services that
        /// list the class). May be empty for a residency-only class.
        pub regions: Vec<String>,
        /// Data residency: the only regions a new flow of this class may
        /// land in, whatever the service. `None` = no constraint. Not empty.
        pub allowed_regions: Option<Vec<String>>,
    }
}

model! {
    /// `[geoip]`: the MaxMind-format database that resolves `countries` and
    /// `continents` of client classes.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct GeoIpConfig (partial PGeoIp) {
        /// Resolved against the config file's directory.
        pub database: PathBuf,
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
        /// How each client's region order is decided.
        pub policy: Policy,
        /// Envoy's overprovisioning factor, >= 1: health(region) =
        /// min(1, factor × healthy weight / total weight).
        pub overprovisioning_factor: Milli,
        /// Percent 0..=100; a region whose healthy fraction is below it
        /// panics when the regions together lack healthy capacity. 0
        /// disables panic mode.
        pub panic_threshold: u8,
        /// What happens to a new flow when no region of its order has a
        /// healthy backend.
        pub on_no_healthy: OnNoHealthy,
        /// Percent 0..=100 of the service's backends that health checks may
        /// mark down at once; 100 = no cap.
        pub max_ejection_percent: u8,
        /// Hysteresis of `policy = "latency"` (defaults otherwise).
        pub latency: LatencyTuning,
        /// Passive outlier ejection (`outlier_detection = true` and the
        /// `outlier_*` keys); `None` = off.
        pub outlier: Option<OutlierTuning>,
        /// Slow start of backends that come up (`slow_start_window`,
        /// `slow_start_min_weight_percent`); a zero window = off.
        pub slow_start: SlowStartTuning,
    }
}

/// `[[services]] policy` with its policy-specific keys.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Policy {
    /// One Maglev ring over every backend of the service, no region logic
    /// (the behaviour before region policies).
    #[default]
    Maglev,
    /// Regions by weight (`region_weights`): one entry per region of the
    /// service, sorted by region name; weights 0..=255.
    Weighted { weights: Vec<(String, u8)> },
    /// Ordered tiers of regions (`tiers`); every region of the service is in
    /// exactly one tier.
    Failover { tiers: Vec<Vec<String>> },
    /// The client's class gives the order (`classes`, at least one);
    /// unmatched clients use the service's default order.
    Geo { classes: Vec<String> },
    /// Regions ranked by measured round-trip time.
    Latency,
}

impl Policy {
    /// The keyword `policy = "..."` selects.
    pub fn kind(&self) -> PolicyKind {
        match self {
            Policy::Maglev => PolicyKind::Maglev,
            Policy::Weighted { .. } => PolicyKind::Weighted,
            Policy::Failover { .. } => PolicyKind::Failover,
            Policy::Geo { .. } => PolicyKind::Geo,
            Policy::Latency => PolicyKind::Latency,
        }
    }
}

/// The policy keyword alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum PolicyKind {
    #[default]
    Maglev,
    Weighted,
    Failover,
    Geo,
    Latency,
}

/// `[[services]] on_no_healthy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum OnNoHealthy {
    /// Send the flows anyway: to the first region of the order (`weighted`:
    /// every region by weight), over all its backends.
    #[default]
    FailOpen,
    /// Drop them.
    Drop,
}

/// `[[services]] latency_margin`, `latency_margin_min`, `latency_dwell`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct LatencyTuning {
    /// A new ranking must be better by this percentage...
    pub margin_percent: u8,
    /// ...and by at least this much...
    pub margin_min: Duration,
    /// ...continuously for this long before it applies.
    pub dwell: Duration,
}

/// `[[services]] outlier_*`: eject backends whose new connections fail, as
/// the data plane sees it (repeated SYNs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct OutlierTuning {
    /// `outlier_interval`: the window the counts cover.
    pub interval: Duration,
    /// `outlier_repeated_syn_percent`: eject above this share of repeated
    /// SYNs among the window's new flows (1..=100)...
    pub repeated_syn_percent: u8,
    /// `outlier_min_new_flows`: ...over at least this many new flows.
    pub min_new_flows: u32,
    /// `outlier_base_ejection_time`: the first ejection's length; the n-th
    /// lasts n times this...
    pub base_ejection_time: Duration,
    /// `outlier_max_ejection_time`: ...up to this.
    pub max_ejection_time: Duration,
    /// The service's `max_ejection_percent` if set, else 10 (Envoy's
    /// default): backends out at once, health checks' included.
    pub max_ejection_percent: u8,
}

/// `[[services]] slow_start_*`: how a backend that comes up (health,
/// ejection end, undrain) ramps its weight for new flows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SlowStartTuning {
    /// `slow_start_window`: the ramp's length; zero = no slow start.
    pub window: Duration,
    /// `slow_start_min_weight_percent`: the weight it starts with (1..=100).
    pub min_weight_percent: u8,
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
impl Keyword for PolicyKind {
    const WHAT: &'static str = "policy";
    const ALL: &'static [(&'static str, Self)] = &[
        ("maglev", PolicyKind::Maglev),
        ("weighted", PolicyKind::Weighted),
        ("failover", PolicyKind::Failover),
        ("geo", PolicyKind::Geo),
        ("latency", PolicyKind::Latency),
    ];
}
impl Keyword for OnNoHealthy {
    const WHAT: &'static str = "on_no_healthy action";
    const ALL: &'static [(&'static str, Self)] = &[
        ("fail-open", OnNoHealthy::FailOpen),
        ("drop", OnNoHealthy::Drop),
    ];
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
keyword_api!(
    AttachMode,
    Encapsulation,
    Protocol,
    Affinity,
    CheckKind,
    PolicyKind,
    OnNoHealthy
);

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
