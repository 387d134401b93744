//! The configuration model and its validation (`steer check`).
//!
//! A config is TOML with the sections `[dataplane]`, `[[regions]]`,
//! `[[backends]]`, `[[services]]`, `[[health_checks]]`, `[control]` and
//! `[metrics]` (field reference: `docs/config.md`).
//!
//! [`Config::parse`] reads the text into a `toml::Table` and converts it by
//! hand with a path-tracking walker, so that it can report *every* problem at
//! once — unknown keys, wrong types, bad values and broken cross-references —
//! each with the path of the offending value (`services[2].vip`,
//! `dataplane.mtu`, ...). Parsing is pure: it never touches the file system or
//! the network.
//!
//! Parsing happens in two steps. First every section is read into a *partial*
//! model in which a field is `None` when its value was invalid (the error has
//! then already been recorded). Cross-reference checks only look at fields that
//! are `Some`, so one bad value never causes a cascade of follow-on errors.
//! Only when no error at all was recorded is the partial model turned into a
//! [`Config`].

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use steer_common::maglev::is_prime;
use steer_common::maps::capacity;
use toml::{Table, Value};

// ---------------------------------------------------------------------------
// Defaults and limits (documented in docs/config.md; keep them in sync).
// ---------------------------------------------------------------------------

const DEFAULT_MTU: u32 = 1500;
const MTU_MIN: u32 = 576;
const MTU_MAX: u32 = 9216;
const DEFAULT_CONNTRACK_SIZE: u32 = 1_048_576;
const CONNTRACK_MIN: u32 = 1024;
const CONNTRACK_MAX: u32 = 67_108_864;
const DEFAULT_MAGLEV_TABLE_SIZE: u32 = 65537;
const MAGLEV_MIN: u32 = 7;
const MAGLEV_MAX: u32 = 1_000_003;
const DEFAULT_TTL: u8 = 64;
const DEFAULT_PIN_PATH: &str = "/sys/fs/bpf/steer";
const DEFAULT_MAX_TABLES: u32 = 128;
const DEFAULT_MAX_REALS: u32 = 65536;
const DEFAULT_WEIGHT: u32 = 100;
const MAX_WEIGHT: u32 = 65535;
const DEFAULT_HC_PATH: &str = "/";
const DEFAULT_INTERVAL: Duration = Duration::from_secs(1);
const DEFAULT_TIMEOUT: Duration = Duration::from_millis(500);
const DEFAULT_JITTER: Duration = Duration::from_millis(100);
const DEFAULT_RISE: u32 = 2;
const DEFAULT_FALL: u32 = 3;
const DEFAULT_EXPECTED_STATUS: u16 = 200;
const DEFAULT_CONTROL_SOCKET: &str = "/run/steer/control.sock";
const DEFAULT_METRICS_LISTEN: SocketAddr =
    SocketAddr::new(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1)), 9477);
/// Longest name accepted for regions, backends, services and health checks.
const MAX_NAME_LEN: usize = 63;
/// `IFNAMSIZ - 1`.
const MAX_IFNAME_LEN: usize = 15;
/// `sizeof(sun_path) - 1`.
const MAX_SOCKET_PATH_LEN: usize = 107;

// ---------------------------------------------------------------------------
// The model
// ---------------------------------------------------------------------------

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

/// `[dataplane]`: how the XDP program is attached and what it writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataplaneConfig {
    /// Interfaces to attach to. Default: none.
    pub interfaces: Vec<String>,
    /// XDP attach mode. Default: [`AttachMode::Driver`].
    pub mode: AttachMode,
    /// Destination MAC of every encapsulated packet. Required.
    pub next_hop_mac: [u8; 6],
    /// Outer source range for IPv4 encapsulation. Required if any backend is IPv4.
    pub encap_source_v4: Option<Ipv4Prefix>,
    /// Outer source range for IPv6 encapsulation (length >= 96). Required if
    /// any backend is IPv6.
    pub encap_source_v6: Option<Ipv6Prefix>,
    /// Largest packet (outer IP header included) steer transmits. 576..=9216, default 1500.
    pub mtu: u32,
    /// Conntrack entries. 1024..=67_108_864, default 1_048_576.
    pub conntrack_size: u32,
    /// Maglev ring size: a prime in 7..=1_000_003, default 65537.
    pub maglev_table_size: u32,
    /// TTL / hop limit of the outer header. 1..=255, default 64.
    pub ttl: u8,
    /// bpffs directory for pinned maps and links. Default `/sys/fs/bpf/steer`.
    pub pin_path: PathBuf,
    /// Selection tables; at least the number of services. Default 128.
    pub max_tables: u32,
    /// Reals (backend-of-a-service slots); at least the sum over services of
    /// their backend count. Default 65536.
    pub max_reals: u32,
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

/// `[[regions]]`: a named group of backends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Region {
    pub name: String,
    pub description: Option<String>,
}

/// `[[backends]]`: one server packets are encapsulated to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backend {
    pub name: String,
    pub address: IpAddr,
    /// Name of a `[[regions]]` entry.
    pub region: String,
    /// Share of new flows, 0..=65535; 0 drains the backend. Default 100.
    pub weight: u32,
    pub encapsulation: Encapsulation,
    /// Name of a `[[health_checks]]` entry; overrides the service's check.
    pub health_check: Option<String>,
}

/// How packets are encapsulated to a backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Encapsulation {
    /// IP-in-IP (IPv4: protocol 4, IPv6: protocol 41). The only kind so far.
    #[default]
    Ip,
}

/// `[[services]]`: a VIP, port and protocol, and the backends serving it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Service {
    pub name: String,
    pub vip: IpAddr,
    /// Destination port; 0 = all ports. Default 0.
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

/// `[[health_checks]]`: how a backend is probed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthCheck {
    pub name: String,
    pub kind: CheckKind,
    /// Port to probe; `None` = the service port, or 80 (http) / 443 (https).
    /// See [`HealthCheck::effective_port`].
    pub port: Option<u16>,
    /// HTTP request path. Default `/`.
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
    /// Accepted HTTP status codes. Default `[200]`.
    pub expected_status: Vec<u16>,
    pub body_contains: Option<String>,
    /// Parse the body as JSON and require its `"status"` field to say up.
    pub deep_health: bool,
    pub sni: Option<String>,
    pub ca_file: Option<PathBuf>,
    pub insecure: bool,
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
    /// Unix socket of the control API. Default `/run/steer/control.sock`.
    pub socket: PathBuf,
}

/// `[metrics]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetricsConfig {
    /// Prometheus listener; must be a loopback address. Default `127.0.0.1:9477`.
    pub listen: SocketAddr,
}

impl Default for ControlConfig {
    fn default() -> Self {
        ControlConfig {
            socket: PathBuf::from(DEFAULT_CONTROL_SOCKET),
        }
    }
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig {
            listen: DEFAULT_METRICS_LISTEN,
        }
    }
}

// ---------------------------------------------------------------------------
// Keywords
// ---------------------------------------------------------------------------

/// An enum spelled as a lowercase keyword in TOML.
trait Keyword: Sized + Copy + PartialEq + 'static {
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

fn keyword_list<T: Keyword>() -> String {
    T::ALL
        .iter()
        .map(|(k, _)| format!("{k:?}"))
        .collect::<Vec<_>>()
        .join(", ")
}

// ---------------------------------------------------------------------------
// Prefixes
// ---------------------------------------------------------------------------

impl Ipv4Prefix {
    /// The bits a flow may vary: `base | (hash & host_mask)`.
    pub fn host_mask(&self) -> u32 {
        u32::MAX.checked_shr(u32::from(self.len)).unwrap_or(0)
    }
}

impl Ipv6Prefix {
    /// The bits of the last 32-bit word a flow may vary.
    pub fn host_mask(&self) -> u32 {
        u32::MAX
            .checked_shr(u32::from(self.len.saturating_sub(96)))
            .unwrap_or(0)
    }
}

impl fmt::Display for Ipv4Prefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

impl fmt::Display for Ipv6Prefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

fn split_prefix(s: &str, example: &str) -> Result<(String, u8), String> {
    let Some((addr, len)) = s.split_once('/') else {
        return Err(format!(
            "{s:?} is not a prefix (write it as address/length, e.g. {example:?})"
        ));
    };
    let len: u8 = len
        .parse()
        .map_err(|_| format!("{s:?}: {len:?} is not a prefix length"))?;
    Ok((addr.to_string(), len))
}

impl FromStr for Ipv4Prefix {
    type Err = String;

    /// Parses `"198.18.0.0/24"`. Host bits must be zero.
    fn from_str(s: &str) -> Result<Self, String> {
        let (addr, len) = split_prefix(s, "198.18.0.0/24")?;
        let addr: Ipv4Addr = addr
            .parse()
            .map_err(|_| format!("{s:?}: {addr:?} is not an IPv4 address"))?;
        if len > 32 {
            return Err(format!(
                "{s:?}: prefix length {len} is out of range (must be between 0 and 32)"
            ));
        }
        let net_mask = !u32::MAX.checked_shr(u32::from(len)).unwrap_or(0);
        let bits = u32::from(addr);
        if bits & !net_mask != 0 {
            let fixed = Ipv4Addr::from(bits & net_mask);
            return Err(format!(
                "{s:?} has host bits set (did you mean \"{fixed}/{len}\"?)"
            ));
        }
        Ok(Ipv4Prefix { addr, len })
    }
}

impl FromStr for Ipv6Prefix {
    type Err = String;

    /// Parses `"2001:db8:ffff::/96"`. Host bits must be zero; length 96..=128.
    fn from_str(s: &str) -> Result<Self, String> {
        let (addr, len) = split_prefix(s, "2001:db8:ffff::/96")?;
        let addr: Ipv6Addr = addr
            .parse()
            .map_err(|_| format!("{s:?}: {addr:?} is not an IPv6 address"))?;
        if len > 128 {
            return Err(format!(
                "{s:?}: prefix length {len} is out of range (must be between 96 and 128)"
            ));
        }
        if len < 96 {
            return Err(format!(
                "{s:?}: prefix length {len} is too short: only the last 32 bits of the \
                 encapsulation source vary, so use a length between 96 and 128 (e.g. /96)"
            ));
        }
        let net_mask = !u128::MAX.checked_shr(u32::from(len)).unwrap_or(0);
        let bits = u128::from(addr);
        if bits & !net_mask != 0 {
            let fixed = Ipv6Addr::from(bits & net_mask);
            return Err(format!(
                "{s:?} has host bits set (did you mean \"{fixed}/{len}\"?)"
            ));
        }
        Ok(Ipv6Prefix { addr, len })
    }
}

// ---------------------------------------------------------------------------
// Durations
// ---------------------------------------------------------------------------

/// Parses a duration such as `"250ms"`, `"1s"`, `"2m"`, `"1h"` or a
/// combination like `"1m30s"`. Units: `ms`, `s`, `m`, `h`; whole numbers only.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let usage = || {
        format!(
            "{s:?} is not a duration (use a whole number and a unit: \"250ms\", \"1s\", \
             \"2m\", \"1h\"; units can be combined: \"1m30s\")"
        )
    };
    let too_long = || format!("{s:?} is too long a duration");
    if s.is_empty() {
        return Err(usage());
    }
    let bytes = s.as_bytes();
    let mut i = 0;
    let mut total_ms: u64 = 0;
    while i < bytes.len() {
        let start = i;
        while i < bytes.len() && bytes[i].is_ascii_digit() {
            i += 1;
        }
        if i == start {
            return Err(usage());
        }
        let n: u64 = s[start..i].parse().map_err(|_| too_long())?;
        let unit_start = i;
        while i < bytes.len() && bytes[i].is_ascii_alphabetic() {
            i += 1;
        }
        let unit_ms: u64 = match &s[unit_start..i] {
            "ms" => 1,
            "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            "" if i == bytes.len() && start == 0 => {
                return Err(format!(
                    "{s:?} has no unit (write e.g. \"{n}ms\" or \"{n}s\")"
                ))
            }
            _ => return Err(usage()),
        };
        total_ms = n
            .checked_mul(unit_ms)
            .and_then(|ms| total_ms.checked_add(ms))
            .ok_or_else(too_long)?;
    }
    Ok(Duration::from_millis(total_ms))
}

/// Formats a duration the way [`parse_duration`] reads it: `"1s"`, `"250ms"`,
/// `"1m30s"`, `"0s"`.
pub fn format_duration(d: Duration) -> String {
    if !d.subsec_nanos().is_multiple_of(1_000_000) {
        return format!("{d:?}");
    }
    let mut ms = d.as_millis();
    if ms == 0 {
        return "0s".to_string();
    }
    let mut out = String::new();
    for (unit, size) in [("h", 3_600_000u128), ("m", 60_000), ("s", 1_000), ("ms", 1)] {
        let n = ms / size;
        if n > 0 {
            out.push_str(&format!("{n}{unit}"));
            ms %= size;
        }
    }
    out
}

// ---------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------

/// One problem in a config: where (`services[2].vip`) and what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub path: String,
    pub message: String,
}

impl ConfigError {
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError {
            path: path.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

impl std::error::Error for ConfigError {}

/// Every problem found in a config, grouped by section (in the order
/// `dataplane`, `regions`, `backends`, `services`, `health_checks`, `control`,
/// `metrics`) and by entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    /// One error per line, no trailing newline.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

// ---------------------------------------------------------------------------
// The public entry points
// ---------------------------------------------------------------------------

impl Config {
    /// Parses and validates a config, collecting every error.
    pub fn parse(text: &str) -> Result<Config, ConfigErrors> {
        let root: Table = match text.parse::<Table>() {
            Ok(t) => t,
            Err(e) => return Err(ConfigErrors(vec![syntax_error(text, &e)])),
        };
        let mut w = Walker::default();
        let partial = read_root(&mut w, &root);
        validate(&mut w, &partial);
        if !w.errors.is_empty() {
            // Group by section (in ROOT_KEYS order) and entry; stable, so
            // each entry's errors keep the order they were found in.
            w.errors.sort_by_key(|e| error_position(&e.path));
            return Err(ConfigErrors(w.errors));
        }
        partial.finish().ok_or_else(|| {
            ConfigErrors(vec![ConfigError::new(
                "(config)",
                "internal error: a value was rejected without a message; please report this",
            )])
        })
    }

    /// Reads and parses a config file. A read error is reported as one
    /// [`ConfigError`] whose path is the file path.
    pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
        match std::fs::read_to_string(path) {
            Ok(text) => Config::parse(&text),
            Err(e) => {
                let message = match e.kind() {
                    std::io::ErrorKind::NotFound => {
                        "cannot read config file: no such file (check the path)".to_string()
                    }
                    std::io::ErrorKind::InvalidData => {
                        "cannot read config file: it is not valid UTF-8 text".to_string()
                    }
                    _ => format!("cannot read config file: {e}"),
                };
                Err(ConfigErrors(vec![ConfigError::new(
                    path.display().to_string(),
                    message,
                )]))
            }
        }
    }

    /// The backends serving `service`: its explicit backends plus every
    /// backend of its regions, each once, in config (`[[backends]]`) order.
    pub fn service_backends(&self, service: &Service) -> Vec<&Backend> {
        let names: HashSet<&str> = service.backends.iter().map(String::as_str).collect();
        let regions: HashSet<&str> = service.regions.iter().map(String::as_str).collect();
        self.backends
            .iter()
            .filter(|b| names.contains(b.name.as_str()) || regions.contains(b.region.as_str()))
            .collect()
    }

    /// The health check probing `backend` for `service`: the backend's own
    /// check if it names one, else the service's, else none.
    pub fn health_check_for(&self, service: &Service, backend: &Backend) -> Option<&HealthCheck> {
        let name = backend
            .health_check
            .as_deref()
            .or(service.health_check.as_deref())?;
        self.health_check(name)
    }

    /// The service named `name`.
    pub fn service(&self, name: &str) -> Option<&Service> {
        self.services.iter().find(|s| s.name == name)
    }

    /// The backend named `name`.
    pub fn backend(&self, name: &str) -> Option<&Backend> {
        self.backends.iter().find(|b| b.name == name)
    }

    /// The health check named `name`.
    pub fn health_check(&self, name: &str) -> Option<&HealthCheck> {
        self.health_checks.iter().find(|h| h.name == name)
    }
}

impl HealthCheck {
    /// A check of `kind` with every other field at its documented default
    /// (see docs/config.md): port from the service, path "/", interval 1s,
    /// timeout 500ms, rise 2, fall 3, jitter 100ms, expected status 200.
    pub fn new(name: &str, kind: CheckKind) -> HealthCheck {
        HealthCheck {
            name: name.to_string(),
            kind,
            port: None,
            path: "/".into(),
            interval: Duration::from_secs(1),
            timeout: Duration::from_millis(500),
            rise: 2,
            fall: 3,
            jitter: Duration::from_millis(100),
            expected_status: vec![200],
            body_contains: None,
            deep_health: false,
            sni: None,
            ca_file: None,
            insecure: false,
        }
    }

    /// The port this check probes for `service`: its own `port`, else the
    /// service port (unless 0), else 80 for http and 443 for https. `None`
    /// only for a tcp check without a port on an all-ports service, which
    /// validation rejects.
    pub fn effective_port(&self, service: &Service) -> Option<u16> {
        self.port
            .or((service.port != 0).then_some(service.port))
            .or(match self.kind {
                CheckKind::Tcp => None,
                CheckKind::Http => Some(80),
                CheckKind::Https => Some(443),
            })
    }
}

/// Sort key of an error path: `(section rank, entry index)`.
fn error_position(path: &str) -> (usize, Option<usize>) {
    let end = path.find(['.', '[']).unwrap_or(path.len());
    let (section, rest) = path.split_at(end);
    let rank = ROOT_KEYS
        .iter()
        .position(|k| *k == section)
        .unwrap_or(ROOT_KEYS.len());
    let index = rest
        .strip_prefix('[')
        .and_then(|r| r.split(']').next())
        .and_then(|i| i.parse().ok());
    (rank, index)
}

fn syntax_error(text: &str, e: &toml::de::Error) -> ConfigError {
    let message = e
        .message()
        .trim()
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("; ");
    let location = e.span().map(|span| {
        let before = text.get(..span.start).unwrap_or(text);
        let line = before.matches('\n').count() + 1;
        let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
        format!("line {line}, column {column}: ")
    });
    ConfigError::new(
        "(syntax)",
        format!(
            "{}{message} (the file is not valid TOML)",
            location.unwrap_or_default()
        ),
    )
}

// ---------------------------------------------------------------------------
// The walker
// ---------------------------------------------------------------------------

#[derive(Default)]
struct Walker {
    errors: Vec<ConfigError>,
}

impl Walker {
    fn err(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.errors.push(ConfigError::new(path, message));
    }
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

/// One TOML table at a path.
#[derive(Clone, Copy)]
struct Node<'a> {
    path: &'a str,
    table: &'a Table,
}

impl<'a> Node<'a> {
    fn new(path: &'a str, table: &'a Table) -> Self {
        Node { path, table }
    }

    fn check_keys(&self, w: &mut Walker, allowed: &[&str]) {
        for key in self.table.keys() {
            if !allowed.contains(&key.as_str()) {
                w.err(
                    join(self.path, key),
                    format!("unknown key (expected one of: {})", allowed.join(", ")),
                );
            }
        }
    }

    fn has(&self, key: &str) -> bool {
        self.table.contains_key(key)
    }

    /// `Ok(None)` if absent, `Err(())` if present but invalid (recorded).
    fn get<T>(
        &self,
        w: &mut Walker,
        key: &str,
        conv: impl FnOnce(&Value) -> Result<T, String>,
    ) -> Result<Option<T>, ()> {
        match self.table.get(key) {
            None => Ok(None),
            Some(v) => match conv(v) {
                Ok(t) => Ok(Some(t)),
                Err(m) => {
                    w.err(join(self.path, key), m);
                    Err(())
                }
            },
        }
    }

    /// An optional field: `Some(None)` if absent, `None` if invalid.
    fn optional<T>(
        &self,
        w: &mut Walker,
        key: &str,
        conv: impl FnOnce(&Value) -> Result<T, String>,
    ) -> Option<Option<T>> {
        self.get(w, key, conv).ok()
    }

    /// A field with a default: `None` if invalid.
    fn default<T>(
        &self,
        w: &mut Walker,
        key: &str,
        default: T,
        conv: impl FnOnce(&Value) -> Result<T, String>,
    ) -> Option<T> {
        match self.get(w, key, conv) {
            Ok(Some(t)) => Some(t),
            Ok(None) => Some(default),
            Err(()) => None,
        }
    }

    /// A required field: `None` if missing (recorded, with `hint`) or invalid.
    fn required<T>(
        &self,
        w: &mut Walker,
        key: &str,
        hint: &str,
        conv: impl FnOnce(&Value) -> Result<T, String>,
    ) -> Option<T> {
        match self.get(w, key, conv) {
            Ok(Some(t)) => Some(t),
            Ok(None) => {
                w.err(join(self.path, key), format!("missing (required), {hint}"));
                None
            }
            Err(()) => None,
        }
    }

    /// An array whose elements are converted one by one, each error at
    /// `path.key[i]`. `Some(vec![])` if absent; `None` if not an array.
    /// Invalid elements are `None`.
    fn list<T>(
        &self,
        w: &mut Walker,
        key: &str,
        conv: impl Fn(&Value) -> Result<T, String>,
    ) -> Option<Vec<Option<T>>> {
        let path = join(self.path, key);
        match self.table.get(key) {
            None => Some(Vec::new()),
            Some(Value::Array(items)) => Some(
                items
                    .iter()
                    .enumerate()
                    .map(|(i, v)| match conv(v) {
                        Ok(t) => Some(t),
                        Err(m) => {
                            w.err(format!("{path}[{i}]"), m);
                            None
                        }
                    })
                    .collect(),
            ),
            Some(v) => {
                w.err(path, format!("expected an array, found {}", describe(v)));
                None
            }
        }
    }
}

fn describe(v: &Value) -> String {
    match v {
        Value::String(s) => format!("string {s:?}"),
        Value::Integer(i) => format!("integer {i}"),
        Value::Float(f) => format!("float {f}"),
        Value::Boolean(b) => format!("boolean {b}"),
        Value::Datetime(d) => format!("datetime {d}"),
        Value::Array(_) => "an array".to_string(),
        Value::Table(_) => "a table".to_string(),
    }
}

// --- value converters ------------------------------------------------------

fn string(v: &Value) -> Result<String, String> {
    v.as_str()
        .map(str::to_string)
        .ok_or_else(|| format!("expected a string, found {}", describe(v)))
}

fn non_empty_string(v: &Value) -> Result<String, String> {
    let s = string(v)?;
    if s.is_empty() {
        return Err("must not be empty".to_string());
    }
    Ok(s)
}

fn boolean(v: &Value) -> Result<bool, String> {
    v.as_bool()
        .ok_or_else(|| format!("expected true or false, found {}", describe(v)))
}

fn int_in<T: TryFrom<i64>>(v: &Value, lo: i64, hi: i64) -> Result<T, String> {
    let Value::Integer(i) = v else {
        return Err(format!("expected an integer, found {}", describe(v)));
    };
    if !(lo..=hi).contains(i) {
        return Err(format!(
            "{i} is out of range (must be between {lo} and {hi})"
        ));
    }
    T::try_from(*i).map_err(|_| format!("{i} is out of range (must be between {lo} and {hi})"))
}

fn u32_in(lo: u32, hi: u32) -> impl Fn(&Value) -> Result<u32, String> {
    move |v| int_in(v, i64::from(lo), i64::from(hi))
}

fn keyword<T: Keyword>(v: &Value) -> Result<T, String> {
    let s = v
        .as_str()
        .ok_or_else(|| format!("expected a string, found {}", describe(v)))?;
    T::ALL
        .iter()
        .find(|(k, _)| *k == s)
        .map(|(_, t)| *t)
        .ok_or_else(|| {
            format!(
                "{s:?} is not a valid {} (expected one of: {})",
                T::WHAT,
                keyword_list::<T>()
            )
        })
}

fn name(v: &Value) -> Result<String, String> {
    let s = string(v)?;
    let ok = !s.is_empty()
        && s.len() <= MAX_NAME_LEN
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(s)
    } else {
        Err(format!(
            "{s:?} is not a valid name (use 1 to {MAX_NAME_LEN} ASCII letters, digits, '-', '_' or '.')"
        ))
    }
}

fn duration(v: &Value) -> Result<Duration, String> {
    match v {
        Value::String(s) => parse_duration(s),
        _ => Err(format!(
            "expected a duration string such as \"1s\" or \"250ms\", found {}",
            describe(v)
        )),
    }
}

fn ip_address(v: &Value) -> Result<IpAddr, String> {
    let s = v.as_str().ok_or_else(|| {
        format!(
            "expected an IP address string such as \"192.0.2.1\", found {}",
            describe(v)
        )
    })?;
    s.parse::<IpAddr>()
        .map_err(|_| format!("{s:?} is not an IP address"))
}

/// An address that can be a VIP or a backend: unicast, not loopback, not
/// unspecified, not IPv4-mapped.
fn unicast_address(v: &Value, role: &str) -> Result<IpAddr, String> {
    let ip = ip_address(v)?;
    let what = match ip {
        IpAddr::V4(a) if a.is_unspecified() => Some("the unspecified address"),
        IpAddr::V6(a) if a.is_unspecified() => Some("the unspecified address"),
        IpAddr::V4(a) if a.is_broadcast() => Some("the broadcast address"),
        _ if ip.is_multicast() => Some("a multicast address"),
        _ if ip.is_loopback() => Some("a loopback address"),
        _ => None,
    };
    if let Some(what) = what {
        return Err(format!(
            "{ip} is {what} and cannot be {role} (use a unicast address)"
        ));
    }
    if let IpAddr::V6(a) = ip {
        if let Some(v4) = a.to_ipv4_mapped() {
            return Err(format!(
                "{ip} is an IPv4-mapped IPv6 address; write the IPv4 address {v4} instead"
            ));
        }
    }
    Ok(ip)
}

fn mac_address(v: &Value) -> Result<[u8; 6], String> {
    let s = v.as_str().ok_or_else(|| {
        format!(
            "expected a MAC address string such as \"02:00:00:00:00:01\", found {}",
            describe(v)
        )
    })?;
    let bad = || {
        format!("{s:?} is not a MAC address (expected six hex pairs like \"02:00:00:00:00:01\")")
    };
    let mut mac = [0u8; 6];
    let mut parts = s.split(':');
    for byte in &mut mac {
        let part = parts.next().ok_or_else(bad)?;
        if part.len() != 2 {
            return Err(bad());
        }
        *byte = u8::from_str_radix(part, 16).map_err(|_| bad())?;
    }
    if parts.next().is_some() {
        return Err(bad());
    }
    if mac == [0; 6] {
        return Err(format!(
            "{s:?} is the all-zero MAC address (set the MAC of the next-hop router)"
        ));
    }
    if mac[0] & 1 != 0 {
        return Err(format!(
            "{s:?} is a multicast or broadcast MAC address (the next hop must be a unicast MAC)"
        ));
    }
    Ok(mac)
}

fn absolute_path(example: &'static str) -> impl Fn(&Value) -> Result<PathBuf, String> {
    move |v| {
        let s = non_empty_string(v)?;
        if !s.starts_with('/') {
            return Err(format!("{s:?} must be an absolute path (e.g. {example:?})"));
        }
        Ok(PathBuf::from(s))
    }
}

fn interface_name(v: &Value) -> Result<String, String> {
    let s = string(v)?;
    let ok = !s.is_empty()
        && s.len() <= MAX_IFNAME_LEN
        && s != "."
        && s != ".."
        && !s
            .chars()
            .any(|c| c == '/' || c == ':' || c.is_whitespace() || c.is_control());
    if ok {
        Ok(s)
    } else {
        Err(format!(
            "{s:?} is not a valid interface name (1 to {MAX_IFNAME_LEN} characters, \
             no spaces, '/' or ':')"
        ))
    }
}

fn http_path(v: &Value) -> Result<String, String> {
    let s = string(v)?;
    if !s.starts_with('/') {
        return Err(format!("{s:?} must start with \"/\" (e.g. \"/health\")"));
    }
    if s.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!(
            "{s:?} contains spaces or control characters (percent-encode them)"
        ));
    }
    Ok(s)
}

fn hostname(v: &Value) -> Result<String, String> {
    let s = non_empty_string(v)?;
    if s.chars()
        .any(|c| c.is_whitespace() || c.is_control() || c == '/')
    {
        return Err(format!("{s:?} is not a host name"));
    }
    Ok(s)
}

// ---------------------------------------------------------------------------
// Partial model
// ---------------------------------------------------------------------------

/// A field is `None` when its value was rejected (and the error recorded).
struct PDataplane {
    interfaces: Option<Vec<Option<String>>>,
    mode: Option<AttachMode>,
    next_hop_mac: Option<[u8; 6]>,
    encap_source_v4: Option<Option<Ipv4Prefix>>,
    encap_source_v6: Option<Option<Ipv6Prefix>>,
    mtu: Option<u32>,
    conntrack_size: Option<u32>,
    maglev_table_size: Option<u32>,
    ttl: Option<u8>,
    pin_path: Option<PathBuf>,
    max_tables: Option<u32>,
    max_reals: Option<u32>,
}

struct PRegion {
    path: String,
    name: Option<String>,
    description: Option<Option<String>>,
}

struct PBackend {
    path: String,
    name: Option<String>,
    address: Option<IpAddr>,
    region: Option<String>,
    weight: Option<u32>,
    encapsulation: Option<Encapsulation>,
    health_check: Option<Option<String>>,
}

struct PService {
    path: String,
    name: Option<String>,
    vip: Option<IpAddr>,
    port: Option<u16>,
    protocol: Option<Protocol>,
    affinity: Option<Affinity>,
    backends: Option<Vec<Option<String>>>,
    regions: Option<Vec<Option<String>>>,
    health_check: Option<Option<String>>,
}

struct PHealthCheck {
    path: String,
    name: Option<String>,
    kind: Option<CheckKind>,
    port: Option<Option<u16>>,
    http_path: Option<String>,
    interval: Option<Duration>,
    timeout: Option<Duration>,
    rise: Option<u32>,
    fall: Option<u32>,
    jitter: Option<Duration>,
    expected_status: Option<Vec<Option<u16>>>,
    body_contains: Option<Option<String>>,
    deep_health: Option<bool>,
    sni: Option<Option<String>>,
    ca_file: Option<Option<PathBuf>>,
    insecure: Option<bool>,
}

struct Partial {
    dataplane: PDataplane,
    regions: Vec<PRegion>,
    backends: Vec<PBackend>,
    services: Vec<PService>,
    health_checks: Vec<PHealthCheck>,
    control: Option<ControlConfig>,
    metrics: Option<MetricsConfig>,
}

fn all<T>(items: Vec<Option<T>>) -> Option<Vec<T>> {
    items.into_iter().collect()
}

impl Partial {
    /// The config, if every field is valid.
    fn finish(self) -> Option<Config> {
        let d = self.dataplane;
        let dataplane = DataplaneConfig {
            interfaces: all(d.interfaces?)?,
            mode: d.mode?,
            next_hop_mac: d.next_hop_mac?,
            encap_source_v4: d.encap_source_v4?,
            encap_source_v6: d.encap_source_v6?,
            mtu: d.mtu?,
            conntrack_size: d.conntrack_size?,
            maglev_table_size: d.maglev_table_size?,
            ttl: d.ttl?,
            pin_path: d.pin_path?,
            max_tables: d.max_tables?,
            max_reals: d.max_reals?,
        };
        let regions = all(self
            .regions
            .into_iter()
            .map(|r| {
                Some(Region {
                    name: r.name?,
                    description: r.description?,
                })
            })
            .collect())?;
        let backends = all(self
            .backends
            .into_iter()
            .map(|b| {
                Some(Backend {
                    name: b.name?,
                    address: b.address?,
                    region: b.region?,
                    weight: b.weight?,
                    encapsulation: b.encapsulation?,
                    health_check: b.health_check?,
                })
            })
            .collect())?;
        let services = all(self
            .services
            .into_iter()
            .map(|s| {
                Some(Service {
                    name: s.name?,
                    vip: s.vip?,
                    port: s.port?,
                    protocol: s.protocol?,
                    affinity: s.affinity?,
                    backends: all(s.backends?)?,
                    regions: all(s.regions?)?,
                    health_check: s.health_check?,
                })
            })
            .collect())?;
        let health_checks = all(self
            .health_checks
            .into_iter()
            .map(|h| {
                Some(HealthCheck {
                    name: h.name?,
                    kind: h.kind?,
                    port: h.port?,
                    path: h.http_path?,
                    interval: h.interval?,
                    timeout: h.timeout?,
                    rise: h.rise?,
                    fall: h.fall?,
                    jitter: h.jitter?,
                    expected_status: all(h.expected_status?)?,
                    body_contains: h.body_contains?,
                    deep_health: h.deep_health?,
                    sni: h.sni?,
                    ca_file: h.ca_file?,
                    insecure: h.insecure?,
                })
            })
            .collect())?;
        Some(Config {
            dataplane,
            regions,
            backends,
            services,
            health_checks,
            control: self.control?,
            metrics: self.metrics?,
        })
    }
}

// ---------------------------------------------------------------------------
// Reading sections
// ---------------------------------------------------------------------------

const ROOT_KEYS: &[&str] = &[
    "dataplane",
    "regions",
    "backends",
    "services",
    "health_checks",
    "control",
    "metrics",
];
const DATAPLANE_KEYS: &[&str] = &[
    "interfaces",
    "mode",
    "next_hop_mac",
    "encap_source_v4",
    "encap_source_v6",
    "mtu",
    "conntrack_size",
    "maglev_table_size",
    "ttl",
    "pin_path",
    "max_tables",
    "max_reals",
];
const REGION_KEYS: &[&str] = &["name", "description"];
const BACKEND_KEYS: &[&str] = &[
    "name",
    "address",
    "region",
    "weight",
    "encapsulation",
    "health_check",
];
const SERVICE_KEYS: &[&str] = &[
    "name",
    "vip",
    "port",
    "protocol",
    "affinity",
    "backends",
    "regions",
    "health_check",
];
const HEALTH_CHECK_KEYS: &[&str] = &[
    "name",
    "kind",
    "port",
    "path",
    "interval",
    "timeout",
    "rise",
    "fall",
    "jitter",
    "expected_status",
    "body_contains",
    "deep_health",
    "sni",
    "ca_file",
    "insecure",
];
const HTTP_ONLY_KEYS: &[&str] = &["path", "expected_status", "body_contains", "deep_health"];
const HTTPS_ONLY_KEYS: &[&str] = &["sni", "ca_file", "insecure"];
const CONTROL_KEYS: &[&str] = &["socket"];
const METRICS_KEYS: &[&str] = &["listen"];

fn read_root(w: &mut Walker, root: &Table) -> Partial {
    Node::new("", root).check_keys(w, ROOT_KEYS);
    let empty = Table::new();

    let dataplane = match single_table(w, root, "dataplane") {
        Ok(t) => read_dataplane(w, t.unwrap_or(&empty)),
        // Wrong type (recorded): read an empty table into a scratch walker so
        // that "missing" errors are not reported on top.
        Err(()) => read_dataplane(&mut Walker::default(), &empty),
    };
    let regions = table_array(w, root, "regions")
        .into_iter()
        .map(|(path, t)| read_region(w, path, t))
        .collect();
    let backends = table_array(w, root, "backends")
        .into_iter()
        .map(|(path, t)| read_backend(w, path, t))
        .collect();
    let services = table_array(w, root, "services")
        .into_iter()
        .map(|(path, t)| read_service(w, path, t))
        .collect();
    let health_checks = table_array(w, root, "health_checks")
        .into_iter()
        .map(|(path, t)| read_health_check(w, path, t))
        .collect();
    let control = match single_table(w, root, "control") {
        Ok(t) => read_control(w, t.unwrap_or(&empty)),
        Err(()) => None,
    };
    let metrics = match single_table(w, root, "metrics") {
        Ok(t) => read_metrics(w, t.unwrap_or(&empty)),
        Err(()) => None,
    };
    Partial {
        dataplane,
        regions,
        backends,
        services,
        health_checks,
        control,
        metrics,
    }
}

/// `[key]`: `Ok(None)` if absent, `Err(())` if not a table (recorded).
fn single_table<'a>(w: &mut Walker, root: &'a Table, key: &str) -> Result<Option<&'a Table>, ()> {
    match root.get(key) {
        None => Ok(None),
        Some(Value::Table(t)) => Ok(Some(t)),
        Some(v) => {
            w.err(
                key,
                format!("expected a table ([{key}]), found {}", describe(v)),
            );
            Err(())
        }
    }
}

/// `[[key]]`: the tables with their paths; elements that are not tables are
/// recorded and skipped.
fn table_array<'a>(w: &mut Walker, root: &'a Table, key: &str) -> Vec<(String, &'a Table)> {
    match root.get(key) {
        None => Vec::new(),
        Some(Value::Array(items)) => items
            .iter()
            .enumerate()
            .filter_map(|(i, v)| {
                let path = format!("{key}[{i}]");
                match v {
                    Value::Table(t) => Some((path, t)),
                    _ => {
                        w.err(path, format!("expected a table, found {}", describe(v)));
                        None
                    }
                }
            })
            .collect(),
        Some(v) => {
            w.err(
                key,
                format!(
                    "expected an array of tables (write each entry as [[{key}]]), found {}",
                    describe(v)
                ),
            );
            Vec::new()
        }
    }
}

fn read_dataplane(w: &mut Walker, t: &Table) -> PDataplane {
    let n = Node::new("dataplane", t);
    n.check_keys(w, DATAPLANE_KEYS);
    let interfaces = n.list(w, "interfaces", interface_name);
    if let Some(list) = &interfaces {
        let mut seen: HashMap<&str, usize> = HashMap::new();
        for (i, name) in list.iter().enumerate() {
            let Some(name) = name else { continue };
            if let Some(first) = seen.get(name.as_str()) {
                w.err(
                    format!("dataplane.interfaces[{i}]"),
                    format!("{name:?} is listed twice (also interfaces[{first}])"),
                );
            } else {
                seen.insert(name, i);
            }
        }
    }
    let mode = n.default(w, "mode", AttachMode::Driver, keyword);
    let next_hop_mac = n.required(
        w,
        "next_hop_mac",
        "e.g. \"02:00:00:00:00:01\" (the MAC of the router encapsulated packets are sent to)",
        mac_address,
    );
    let encap_source_v4 = n.optional(w, "encap_source_v4", |v| string(v)?.parse::<Ipv4Prefix>());
    let encap_source_v6 = n.optional(w, "encap_source_v6", |v| string(v)?.parse::<Ipv6Prefix>());
    let mtu = n.default(w, "mtu", DEFAULT_MTU, u32_in(MTU_MIN, MTU_MAX));
    let conntrack_size = n.default(
        w,
        "conntrack_size",
        DEFAULT_CONNTRACK_SIZE,
        u32_in(CONNTRACK_MIN, CONNTRACK_MAX),
    );
    let maglev_table_size = n.default(w, "maglev_table_size", DEFAULT_MAGLEV_TABLE_SIZE, |v| {
        let size = u32_in(MAGLEV_MIN, MAGLEV_MAX)(v)?;
        if is_prime(size) {
            Ok(size)
        } else {
            Err(format!(
                "{size} is not prime (try {}); Maglev needs a prime table size",
                next_prime(size)
            ))
        }
    });
    let ttl = n.default(w, "ttl", DEFAULT_TTL, |v| int_in(v, 1, 255));
    let pin_path = n.default(
        w,
        "pin_path",
        PathBuf::from(DEFAULT_PIN_PATH),
        absolute_path(DEFAULT_PIN_PATH),
    );
    let max_tables = n.default(w, "max_tables", DEFAULT_MAX_TABLES, u32_in(1, u32::MAX));
    let max_reals = n.default(w, "max_reals", DEFAULT_MAX_REALS, u32_in(1, u32::MAX));
    PDataplane {
        interfaces,
        mode,
        next_hop_mac,
        encap_source_v4,
        encap_source_v6,
        mtu,
        conntrack_size,
        maglev_table_size,
        ttl,
        pin_path,
        max_tables,
        max_reals,
    }
}

fn read_region(w: &mut Walker, path: String, t: &Table) -> PRegion {
    let n = Node::new(&path, t);
    n.check_keys(w, REGION_KEYS);
    let name = n.required(w, "name", "e.g. \"eu-west\"", name);
    let description = n.optional(w, "description", string);
    PRegion {
        path,
        name,
        description,
    }
}

fn read_backend(w: &mut Walker, path: String, t: &Table) -> PBackend {
    let n = Node::new(&path, t);
    n.check_keys(w, BACKEND_KEYS);
    let name = n.required(w, "name", "e.g. \"eu-1\"", name);
    let address = n.required(w, "address", "e.g. \"192.0.2.10\"", |v| {
        unicast_address(v, "a backend address")
    });
    let region = n.required(
        w,
        "region",
        "the name of a [[regions]] entry, e.g. \"eu-west\"",
        non_empty_string,
    );
    let weight = n.default(w, "weight", DEFAULT_WEIGHT, u32_in(0, MAX_WEIGHT));
    let encapsulation = n.default(w, "encapsulation", Encapsulation::Ip, keyword);
    let health_check = n.optional(w, "health_check", non_empty_string);
    PBackend {
        path,
        name,
        address,
        region,
        weight,
        encapsulation,
        health_check,
    }
}

fn read_service(w: &mut Walker, path: String, t: &Table) -> PService {
    let n = Node::new(&path, t);
    n.check_keys(w, SERVICE_KEYS);
    let name = n.required(w, "name", "e.g. \"web\"", name);
    let vip = n.required(w, "vip", "e.g. \"203.0.113.10\"", |v| {
        unicast_address(v, "a VIP")
    });
    let port = n.default(w, "port", 0u16, |v| int_in(v, 0, 65535));
    let protocol = n.required(
        w,
        "protocol",
        &format!("one of: {}", keyword_list::<Protocol>()),
        keyword,
    );
    let affinity = n.default(w, "affinity", Affinity::Flow, keyword);
    let backends = n.list(w, "backends", non_empty_string);
    let regions = n.list(w, "regions", non_empty_string);
    let health_check = n.optional(w, "health_check", non_empty_string);
    PService {
        path,
        name,
        vip,
        port,
        protocol,
        affinity,
        backends,
        regions,
        health_check,
    }
}

fn read_health_check(w: &mut Walker, path: String, t: &Table) -> PHealthCheck {
    let n = Node::new(&path, t);
    n.check_keys(w, HEALTH_CHECK_KEYS);
    let name = n.required(w, "name", "e.g. \"http-health\"", name);
    let kind: Option<CheckKind> = n.required(
        w,
        "kind",
        &format!("one of: {}", keyword_list::<CheckKind>()),
        keyword,
    );
    let port = n.optional(w, "port", |v| int_in(v, 1, 65535));
    let http_path_v = n.default(w, "path", DEFAULT_HC_PATH.to_string(), http_path);
    let mut interval = n.default(w, "interval", DEFAULT_INTERVAL, duration);
    let mut timeout = n.default(w, "timeout", DEFAULT_TIMEOUT, duration);
    let rise = n.default(w, "rise", DEFAULT_RISE, u32_in(1, u32::MAX));
    let fall = n.default(w, "fall", DEFAULT_FALL, u32_in(1, u32::MAX));
    let jitter = n.default(w, "jitter", DEFAULT_JITTER, duration);
    let expected_status = if n.has("expected_status") {
        let list = n.list(w, "expected_status", |v| int_in::<u16>(v, 100, 599));
        if matches!(&list, Some(l) if l.is_empty()) {
            w.err(
                join(&path, "expected_status"),
                "must not be empty (e.g. [200] or [200, 204])",
            );
            None
        } else {
            list
        }
    } else {
        Some(vec![Some(DEFAULT_EXPECTED_STATUS)])
    };
    let body_contains = n.optional(w, "body_contains", non_empty_string);
    let deep_health = n.default(w, "deep_health", false, boolean);
    let sni = n.optional(w, "sni", hostname);
    let ca_file = n.optional(w, "ca_file", |v| non_empty_string(v).map(PathBuf::from));
    let insecure = n.default(w, "insecure", false, boolean);

    // Relations between fields.
    for (field, value) in [("interval", &mut interval), ("timeout", &mut timeout)] {
        if *value == Some(Duration::ZERO) {
            w.err(join(&path, field), "must be longer than 0s");
            *value = None;
        }
    }
    if let Some(i) = interval {
        for (field, value) in [("timeout", timeout), ("jitter", jitter)] {
            if let Some(d) = value {
                if d >= i {
                    w.err(
                        join(&path, field),
                        format!(
                            "{} must be shorter than interval {}",
                            format_duration(d),
                            format_duration(i)
                        ),
                    );
                }
            }
        }
    }
    if let Some(kind) = kind {
        if kind == CheckKind::Tcp {
            for key in HTTP_ONLY_KEYS.iter().filter(|k| n.has(k)) {
                w.err(
                    join(&path, key),
                    "only valid for kind \"http\" or \"https\" (this check is \"tcp\"; remove it)",
                );
            }
        }
        if kind != CheckKind::Https {
            for key in HTTPS_ONLY_KEYS.iter().filter(|k| n.has(k)) {
                w.err(
                    join(&path, key),
                    format!(
                        "only valid for kind \"https\" (this check is {:?}; remove it)",
                        kind.as_str()
                    ),
                );
            }
        }
    }
    if kind.is_none_or(|k| k == CheckKind::Https)
        && insecure == Some(true)
        && matches!(ca_file, Some(Some(_)))
    {
        w.err(
            join(&path, "insecure"),
            "insecure = true cannot be combined with ca_file (insecure skips certificate \
             verification, so ca_file would be ignored); remove one of them",
        );
    }
    PHealthCheck {
        path,
        name,
        kind,
        port,
        http_path: http_path_v,
        interval,
        timeout,
        rise,
        fall,
        jitter,
        expected_status,
        body_contains,
        deep_health,
        sni,
        ca_file,
        insecure,
    }
}

fn read_control(w: &mut Walker, t: &Table) -> Option<ControlConfig> {
    let n = Node::new("control", t);
    n.check_keys(w, CONTROL_KEYS);
    let socket = n.default(w, "socket", PathBuf::from(DEFAULT_CONTROL_SOCKET), |v| {
        let s = non_empty_string(v)?;
        if s.len() > MAX_SOCKET_PATH_LEN {
            return Err(format!(
                "is {} bytes long; a Unix socket path can be at most {MAX_SOCKET_PATH_LEN}",
                s.len()
            ));
        }
        Ok(PathBuf::from(s))
    })?;
    Some(ControlConfig { socket })
}

fn read_metrics(w: &mut Walker, t: &Table) -> Option<MetricsConfig> {
    let n = Node::new("metrics", t);
    n.check_keys(w, METRICS_KEYS);
    let listen = n.default(w, "listen", DEFAULT_METRICS_LISTEN, |v| {
        let s = string(v)?;
        let addr: SocketAddr = s.parse().map_err(|_| {
            format!(
                "{s:?} is not a socket address (expected address:port, e.g. \"127.0.0.1:9477\" or \"[::1]:9477\")"
            )
        })?;
        if !addr.ip().is_loopback() {
            return Err(format!(
                "{addr} is not a loopback address (metrics are served without \
                 authentication; listen on 127.0.0.1 or [::1] and put a proxy in front \
                 to expose them)"
            ));
        }
        if addr.port() == 0 {
            return Err(format!(
                "{addr}: port 0 would pick a random port; choose a fixed port (e.g. 9477)"
            ));
        }
        Ok(addr)
    })?;
    Some(MetricsConfig { listen })
}

// ---------------------------------------------------------------------------
// Cross-reference validation
// ---------------------------------------------------------------------------

/// `name -> index of its first definition`; duplicates are recorded.
fn unique_names<'a>(
    w: &mut Walker,
    items: impl Iterator<Item = (&'a str, Option<&'a str>)>,
) -> HashMap<&'a str, (usize, &'a str)> {
    let mut seen: HashMap<&'a str, (usize, &'a str)> = HashMap::new();
    for (i, (path, name)) in items.enumerate() {
        let Some(name) = name else { continue };
        if let Some((_, first)) = seen.get(name) {
            w.err(
                join(path, "name"),
                format!("duplicate name {name:?} (also {first})"),
            );
        } else {
            seen.insert(name, (i, path));
        }
    }
    seen
}

/// `"(defined regions: a, b)"`, sorted, abbreviated when long.
fn defined<T>(what: &str, names: &HashMap<&str, T>) -> String {
    const SHOW: usize = 10;
    if names.is_empty() {
        return format!("(no {what} are defined)");
    }
    let mut sorted: Vec<&str> = names.keys().copied().collect();
    sorted.sort_unstable();
    let mut list = sorted
        .iter()
        .take(SHOW)
        .copied()
        .collect::<Vec<_>>()
        .join(", ");
    if sorted.len() > SHOW {
        list.push_str(&format!(", ... ({} more)", sorted.len() - SHOW));
    }
    format!("(defined {what}: {list})")
}

/// `" \"web\""` if the entry has a valid name.
fn quoted(name: Option<&String>) -> String {
    name.map(|n| format!(" {n:?}")).unwrap_or_default()
}

/// Indices (in `backends`) of the backends serving `s`, in config order.
fn resolve(s: &PService, backends: &[PBackend]) -> Vec<usize> {
    let names: HashSet<&str> = s
        .backends
        .iter()
        .flatten()
        .flatten()
        .map(String::as_str)
        .collect();
    let regions: HashSet<&str> = s
        .regions
        .iter()
        .flatten()
        .flatten()
        .map(String::as_str)
        .collect();
    backends
        .iter()
        .enumerate()
        .filter(|(_, b)| {
            b.name.as_deref().is_some_and(|n| names.contains(n))
                || b.region.as_deref().is_some_and(|r| regions.contains(r))
        })
        .map(|(i, _)| i)
        .collect()
}

/// Records duplicates within a service's `backends` or `regions` list and
/// references to undefined names.
fn check_name_list<T>(
    w: &mut Walker,
    list_path: &str,
    what: &str,
    what_plural: &str,
    list: &[Option<String>],
    defined_names: &HashMap<&str, T>,
) {
    let mut seen: HashMap<&str, usize> = HashMap::new();
    for (i, entry) in list.iter().enumerate() {
        let Some(entry) = entry else { continue };
        let path = format!("{list_path}[{i}]");
        if let Some(first) = seen.get(entry.as_str()) {
            w.err(
                path,
                format!("{what} {entry:?} is listed twice (also [{first}]); remove one"),
            );
            continue;
        }
        seen.insert(entry, i);
        if !defined_names.contains_key(entry.as_str()) {
            w.err(
                path,
                format!(
                    "unknown {what} {entry:?} {}",
                    defined(what_plural, defined_names)
                ),
            );
        }
    }
}

fn validate(w: &mut Walker, p: &Partial) {
    let region_names = unique_names(
        w,
        p.regions
            .iter()
            .map(|r| (r.path.as_str(), r.name.as_deref())),
    );
    let backend_names = unique_names(
        w,
        p.backends
            .iter()
            .map(|b| (b.path.as_str(), b.name.as_deref())),
    );
    unique_names(
        w,
        p.services
            .iter()
            .map(|s| (s.path.as_str(), s.name.as_deref())),
    );
    let check_names = unique_names(
        w,
        p.health_checks
            .iter()
            .map(|h| (h.path.as_str(), h.name.as_deref())),
    );

    // VIP addresses, for the backend-is-a-VIP check.
    let mut vip_addrs: HashMap<IpAddr, &PService> = HashMap::new();
    for s in &p.services {
        if let Some(vip) = s.vip {
            vip_addrs.entry(vip).or_insert(s);
        }
    }

    // Backends.
    let mut addresses: HashMap<IpAddr, &PBackend> = HashMap::new();
    for b in &p.backends {
        if let Some(region) = &b.region {
            if !region_names.contains_key(region.as_str()) {
                w.err(
                    join(&b.path, "region"),
                    format!(
                        "unknown region {region:?} {}",
                        defined("regions", &region_names)
                    ),
                );
            }
        }
        if let Some(Some(check)) = &b.health_check {
            if !check_names.contains_key(check.as_str()) {
                w.err(
                    join(&b.path, "health_check"),
                    format!(
                        "unknown health check {check:?} {}",
                        defined("health checks", &check_names)
                    ),
                );
            }
        }
        if let Some(addr) = b.address {
            if let Some(first) = addresses.get(&addr) {
                w.err(
                    join(&b.path, "address"),
                    format!(
                        "{addr} is already used by {}{}",
                        first.path,
                        quoted(first.name.as_ref())
                    ),
                );
            } else {
                addresses.insert(addr, b);
            }
            if let Some(s) = vip_addrs.get(&addr) {
                w.err(
                    join(&b.path, "address"),
                    format!(
                        "{addr} is the VIP of {}{} (a backend cannot be a VIP: its packets would loop)",
                        s.path,
                        quoted(s.name.as_ref())
                    ),
                );
            }
        }
    }

    // Services.
    let mut vip_keys: HashMap<(IpAddr, u16, Protocol), &PService> = HashMap::new();
    let mut total_reals: u64 = 0;
    for s in &p.services {
        if let Some(list) = &s.backends {
            check_name_list(
                w,
                &join(&s.path, "backends"),
                "backend",
                "backends",
                list,
                &backend_names,
            );
        }
        if let Some(list) = &s.regions {
            check_name_list(
                w,
                &join(&s.path, "regions"),
                "region",
                "regions",
                list,
                &region_names,
            );
        }
        if let Some(Some(check)) = &s.health_check {
            if !check_names.contains_key(check.as_str()) {
                w.err(
                    join(&s.path, "health_check"),
                    format!(
                        "unknown health check {check:?} {}",
                        defined("health checks", &check_names)
                    ),
                );
            }
        }
        if let (Some(b), Some(r)) = (&s.backends, &s.regions) {
            if b.is_empty() && r.is_empty() {
                w.err(
                    s.path.clone(),
                    "no backends: list backend names in backends = [...] or whole regions \
                     in regions = [...]",
                );
            }
        }
        if let (Some(vip), Some(port), Some(proto)) = (s.vip, s.port, s.protocol) {
            if let Some(first) = vip_keys.get(&(vip, port, proto)) {
                w.err(
                    s.path.clone(),
                    format!(
                        "VIP {vip} port {port} {proto} is already defined by {}{}",
                        first.path,
                        quoted(first.name.as_ref())
                    ),
                );
            } else {
                vip_keys.insert((vip, port, proto), s);
            }
        }

        let served = resolve(s, &p.backends);
        total_reals += served.len() as u64;
        let explicit: HashSet<&str> = s
            .backends
            .iter()
            .flatten()
            .flatten()
            .map(String::as_str)
            .collect();
        let mut reported_checks: HashSet<&str> = HashSet::new();
        for &i in &served {
            let b = &p.backends[i];
            let bname = b.name.as_deref().unwrap_or("?");
            if let (Some(IpAddr::V6(_)), Some(IpAddr::V4(_))) = (s.vip, b.address) {
                let via = match (&b.region, explicit.contains(bname)) {
                    (Some(region), false) => format!(" of region {region:?}"),
                    _ => String::new(),
                };
                w.err(
                    s.path.clone(),
                    format!(
                        "an IPv6 VIP cannot use IPv4 backend {bname:?}{via} (IPv6 packets \
                         can only be encapsulated to IPv6 backends)"
                    ),
                );
            }
            // A tcp check without a port has nothing to probe on an
            // all-ports service.
            if s.port == Some(0) {
                let (check, at) = match (&b.health_check, &s.health_check) {
                    (Some(Some(c)), _) => (Some(c), join(&b.path, "health_check")),
                    (Some(None), Some(Some(c))) => (Some(c), join(&s.path, "health_check")),
                    _ => (None, String::new()),
                };
                let Some(check) = check else { continue };
                let Some((ci, _)) = check_names.get(check.as_str()) else {
                    continue;
                };
                let hc = &p.health_checks[*ci];
                if hc.kind == Some(CheckKind::Tcp)
                    && hc.port == Some(None)
                    && reported_checks.insert(check.as_str())
                {
                    w.err(
                        at,
                        format!(
                            "health check {check:?} is a tcp check without a port, and \
                             service{} has port 0 (all ports): set port in {}",
                            quoted(s.name.as_ref()),
                            hc.path
                        ),
                    );
                }
            }
        }
    }

    // Dataplane.
    let d = &p.dataplane;
    for (family_v4, field, example) in [
        (true, "encap_source_v4", "198.18.0.0/24"),
        (false, "encap_source_v6", "2001:db8:ffff::/96"),
    ] {
        let missing = if family_v4 {
            d.encap_source_v4 == Some(None)
        } else {
            d.encap_source_v6 == Some(None)
        };
        if !missing {
            continue;
        }
        let user = p
            .backends
            .iter()
            .find(|b| b.address.is_some_and(|a| a.is_ipv4() == family_v4));
        if let Some(b) = user {
            w.err(
                join("dataplane", field),
                format!(
                    "missing, required because {}{} has an {} address (the outer source \
                     range for encapsulated packets, e.g. {example:?})",
                    b.path,
                    quoted(b.name.as_ref()),
                    if family_v4 { "IPv4" } else { "IPv6" }
                ),
            );
        }
    }
    if p.services.len() > capacity::VIPS as usize {
        w.err(
            "services",
            format!(
                "{} services are more than the data plane can hold ({} VIPs); remove some",
                p.services.len(),
                capacity::VIPS
            ),
        );
    }
    if let Some(max_tables) = d.max_tables {
        let n = p.services.len();
        if (max_tables as usize) < n {
            w.err(
                "dataplane.max_tables",
                format!(
                    "{max_tables} is too small for {n} services (each service needs a \
                     table; raise max_tables to at least {n})"
                ),
            );
        }
        if let Some(size) = d.maglev_table_size {
            let slots = u64::from(max_tables) * 2 * u64::from(size);
            if slots > u64::from(u32::MAX) {
                w.err(
                    "dataplane.max_tables",
                    format!(
                        "max_tables {max_tables} × 2 × maglev_table_size {size} = {slots} ring \
                         slots, more than a BPF array can hold ({}); lower one of them",
                        u32::MAX
                    ),
                );
            }
        }
    }
    if let Some(max_reals) = d.max_reals {
        if u64::from(max_reals) < total_reals {
            w.err(
                "dataplane.max_reals",
                format!(
                    "{max_reals} is too small: the services use {total_reals} backends in \
                     total (a backend counts once per service it serves); raise max_reals \
                     to at least {total_reals}"
                ),
            );
        }
    }
}

/// The smallest prime >= n (n <= MAGLEV_MAX, so this is in range).
fn next_prime(n: u32) -> u32 {
    let mut p = n.max(2);
    while !is_prime(p) {
        p += 1;
    }
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `[dataplane]` body used by most tests.
    const DP: &str = r#"next_hop_mac = "02:00:00:00:00:01"
encap_source_v4 = "198.18.0.0/24"
encap_source_v6 = "2001:db8:ffff::/96"
"#;

    /// Two regions, three backends (two IPv4 in eu-west, one IPv6 in
    /// us-east), one health check.
    const BASE: &str = r#"
[[regions]]
name = "eu-west"

[[regions]]
name = "us-east"

[[backends]]
name = "eu-1"
address = "192.0.2.1"
region = "eu-west"

[[backends]]
name = "eu-2"
address = "192.0.2.2"
region = "eu-west"

[[backends]]
name = "us-1"
address = "2001:db8:1::1"
region = "us-east"

[[health_checks]]
name = "hc"
kind = "http"
"#;

    const WEB: &str = r#"
[[services]]
name = "web"
vip = "203.0.113.10"
port = 80
protocol = "tcp"
regions = ["eu-west"]
"#;

    /// `[dataplane]` with `DP` plus `extra`, then `BASE`, then `rest`.
    fn doc(extra: &str, rest: &str) -> String {
        format!("[dataplane]\n{DP}{extra}\n{BASE}\n{rest}")
    }

    fn ok(text: &str) -> Config {
        match Config::parse(text) {
            Ok(c) => c,
            Err(e) => panic!("unexpected errors:\n{e}"),
        }
    }

    fn errors(text: &str) -> Vec<ConfigError> {
        match Config::parse(text) {
            Ok(_) => panic!("expected errors, config was accepted:\n{text}"),
            Err(e) => e.0,
        }
    }

    fn has_error(errs: &[ConfigError], path: &str, needle: &str) -> bool {
        errs.iter()
            .any(|e| e.path == path && e.message.contains(needle))
    }

    #[track_caller]
    fn assert_error(text: &str, path: &str, needle: &str) {
        let errs = errors(text);
        assert!(
            has_error(&errs, path, needle),
            "no error at {path} containing {needle:?}; got:\n{}",
            ConfigErrors(errs.clone())
        );
    }

    // --- whole configs -----------------------------------------------------

    #[test]
    fn defaults_are_applied() {
        let cfg = ok(r#"
[dataplane]
next_hop_mac = "02:00:00:00:00:01"
encap_source_v4 = "198.18.0.0/24"

[[regions]]
name = "r"

[[backends]]
name = "b"
address = "192.0.2.1"
region = "r"

[[services]]
name = "s"
vip = "203.0.113.1"
protocol = "tcp"
backends = ["b"]

[[health_checks]]
name = "h"
kind = "http"
"#);
        let d = &cfg.dataplane;
        assert!(d.interfaces.is_empty());
        assert_eq!(d.mode, AttachMode::Driver);
        assert_eq!(d.next_hop_mac, [0x02, 0, 0, 0, 0, 0x01]);
        assert_eq!(
            d.encap_source_v4,
            Some(Ipv4Prefix {
                addr: Ipv4Addr::new(198, 18, 0, 0),
                len: 24
            })
        );
        assert_eq!(d.encap_source_v6, None);
        assert_eq!(d.mtu, 1500);
        assert_eq!(d.conntrack_size, 1_048_576);
        assert_eq!(d.maglev_table_size, 65537);
        assert_eq!(d.ttl, 64);
        assert_eq!(d.pin_path, PathBuf::from("/sys/fs/bpf/steer"));
        assert_eq!(d.max_tables, 128);
        assert_eq!(d.max_reals, 65536);

        assert_eq!(
            cfg.regions,
            vec![Region {
                name: "r".into(),
                description: None
            }]
        );
        let b = &cfg.backends[0];
        assert_eq!(b.weight, 100);
        assert_eq!(b.encapsulation, Encapsulation::Ip);
        assert_eq!(b.health_check, None);

        let s = &cfg.services[0];
        assert_eq!(s.port, 0);
        assert_eq!(s.protocol, Protocol::Tcp);
        assert_eq!(s.affinity, Affinity::Flow);
        assert!(s.regions.is_empty());
        assert_eq!(s.health_check, None);

        let h = &cfg.health_checks[0];
        assert_eq!(h.kind, CheckKind::Http);
        assert_eq!(h.port, None);
        assert_eq!(h.path, "/");
        assert_eq!(h.interval, Duration::from_secs(1));
        assert_eq!(h.timeout, Duration::from_millis(500));
        assert_eq!(h.rise, 2);
        assert_eq!(h.fall, 3);
        assert_eq!(h.jitter, Duration::from_millis(100));
        assert_eq!(h.expected_status, vec![200]);
        assert_eq!(h.body_contains, None);
        assert!(!h.deep_health);
        assert_eq!(h.sni, None);
        assert_eq!(h.ca_file, None);
        assert!(!h.insecure);
        // The constructor gives exactly the parsed defaults.
        assert_eq!(*h, HealthCheck::new("h", CheckKind::Http));

        assert_eq!(cfg.control.socket, PathBuf::from("/run/steer/control.sock"));
        assert_eq!(
            cfg.metrics.listen,
            "127.0.0.1:9477".parse::<SocketAddr>().expect("literal")
        );
    }

    #[test]
    fn example_config_parses() {
        let cfg = ok(include_str!("../../examples/steer.toml"));
        assert_eq!(cfg.regions.len(), 3);
        assert!(cfg.services.len() >= 3);
        assert!(cfg.services.iter().any(|s| s.vip.is_ipv4()));
        assert!(cfg.services.iter().any(|s| s.vip.is_ipv6()));
        assert!(cfg.backends.iter().any(|b| b.address.is_ipv4()));
        assert!(cfg.backends.iter().any(|b| b.address.is_ipv6()));
        assert!(!cfg.health_checks.is_empty());
        // Every service resolves to at least one backend and a health check.
        for s in &cfg.services {
            let backends = cfg.service_backends(s);
            assert!(!backends.is_empty(), "{} has no backends", s.name);
            for b in backends {
                let hc = cfg.health_check_for(s, b);
                assert!(hc.is_some(), "{}/{} has no health check", s.name, b.name);
                assert!(hc.and_then(|h| h.effective_port(s)).is_some());
            }
        }
    }

    #[test]
    fn explicit_values_are_read() {
        let cfg = ok(&doc(
            r#"interfaces = ["eth0", "eth1"]
mode = "auto"
mtu = 9000
conntrack_size = 2048
maglev_table_size = 251
ttl = 32
pin_path = "/sys/fs/bpf/other"
max_tables = 4
max_reals = 100
"#,
            r#"
[[services]]
name = "web"
vip = "2001:db8:100::1"
port = 443
protocol = "udp"
affinity = "client"
backends = ["us-1"]
health_check = "hc"

[control]
socket = "/tmp/steer.sock"

[metrics]
listen = "[::1]:9100"
"#,
        ));
        let d = &cfg.dataplane;
        assert_eq!(d.interfaces, vec!["eth0".to_string(), "eth1".to_string()]);
        assert_eq!(d.mode, AttachMode::Auto);
        assert_eq!(d.mtu, 9000);
        assert_eq!(d.conntrack_size, 2048);
        assert_eq!(d.maglev_table_size, 251);
        assert_eq!(d.ttl, 32);
        assert_eq!(d.pin_path, PathBuf::from("/sys/fs/bpf/other"));
        assert_eq!((d.max_tables, d.max_reals), (4, 100));
        assert_eq!(
            d.encap_source_v6,
            Some(Ipv6Prefix {
                addr: "2001:db8:ffff::".parse().expect("literal"),
                len: 96
            })
        );
        let s = &cfg.services[0];
        assert_eq!(s.port, 443);
        assert_eq!(s.protocol, Protocol::Udp);
        assert_eq!(s.affinity, Affinity::Client);
        assert_eq!(s.health_check.as_deref(), Some("hc"));
        assert_eq!(cfg.control.socket, PathBuf::from("/tmp/steer.sock"));
        assert_eq!(cfg.metrics.listen.port(), 9100);
    }

    // --- syntax, unknown keys, types ---------------------------------------

    #[test]
    fn syntax_error_has_line_and_column() {
        let errs = errors("[dataplane]\nnext_hop_mac = \"02:00:00:00:00:01\"\nmtu = = 5\n");
        assert_eq!(errs.len(), 1);
        assert_eq!(errs[0].path, "(syntax)");
        assert!(errs[0].message.contains("line 3"), "{}", errs[0].message);
        assert!(errs[0].message.contains("column"), "{}", errs[0].message);
        assert!(!errs[0].message.contains('\n'));
    }

    #[test]
    fn unknown_key_lists_expected_keys() {
        let text = doc(
            "",
            r#"
[[services]]
name = "web"
vip = "203.0.113.10"
prot = "tcp"
protocol = "tcp"
regions = ["eu-west"]
"#,
        );
        assert_error(
            &text,
            "services[0].prot",
            "unknown key (expected one of: name, vip, port, protocol, affinity, backends, regions, health_check)",
        );
    }

    #[test]
    fn unknown_section_and_dataplane_key() {
        let text = doc("mtus = 1500\n", "[dataplan]\nmtu = 1\n");
        assert_error(
            &text,
            "dataplan",
            "unknown key (expected one of: dataplane,",
        );
        assert_error(
            &text,
            "dataplane.mtus",
            "unknown key (expected one of: interfaces,",
        );
    }

    #[test]
    fn wrong_types_are_reported() {
        let text = doc(
            "mtu = \"1500\"\n",
            r#"
[[services]]
name = "web"
vip = 5
port = 80
protocol = "tcp"
regions = "eu-west"
"#,
        );
        assert_error(
            &text,
            "dataplane.mtu",
            "expected an integer, found string \"1500\"",
        );
        assert_error(&text, "services[0].vip", "found integer 5");
        assert_error(&text, "services[0].regions", "expected an array");
    }

    #[test]
    fn section_of_wrong_shape() {
        let text = "dataplane = 5\n[backends]\nname = \"x\"\n";
        let errs = errors(text);
        assert!(has_error(&errs, "dataplane", "expected a table"));
        assert!(has_error(&errs, "backends", "[[backends]]"));
        // No "missing" errors on top of the wrong type.
        assert!(!errs.iter().any(|e| e.path == "dataplane.next_hop_mac"));
    }

    // --- required fields ---------------------------------------------------

    #[test]
    fn missing_next_hop_mac() {
        let text = format!(
            "[dataplane]\nencap_source_v4 = \"198.18.0.0/24\"\nencap_source_v6 = \"2001:db8:ffff::/96\"\n{BASE}{WEB}"
        );
        assert_error(
            &text,
            "dataplane.next_hop_mac",
            r#"missing (required), e.g. "02:00:00:00:00:01""#,
        );
        // No [dataplane] at all: the same error.
        assert_error(
            "",
            "dataplane.next_hop_mac",
            r#"missing (required), e.g. "02:00:00:00:00:01""#,
        );
    }

    #[test]
    fn missing_required_fields_of_entries() {
        let text = doc(
            "",
            r#"
[[services]]
name = "web"
vip = "203.0.113.10"
regions = ["eu-west"]

[[backends]]
name = "x"

[[health_checks]]
name = "h2"
"#,
        );
        let errs = errors(&text);
        assert!(has_error(
            &errs,
            "services[0].protocol",
            "missing (required)"
        ));
        assert!(has_error(
            &errs,
            "backends[3].address",
            "missing (required)"
        ));
        assert!(has_error(&errs, "backends[3].region", "missing (required)"));
        assert!(has_error(
            &errs,
            "health_checks[1].kind",
            "missing (required)"
        ));
    }

    #[test]
    fn bad_keyword_values() {
        let text = doc(
            "mode = \"native\"\n",
            r#"
[[services]]
name = "web"
vip = "203.0.113.10"
protocol = "tpc"
affinity = "sticky"
regions = ["eu-west"]

[[backends]]
name = "x"
address = "192.0.2.99"
region = "eu-west"
encapsulation = "gre"
"#,
        );
        let errs = errors(&text);
        assert!(has_error(
            &errs,
            "dataplane.mode",
            r#""native" is not a valid attach mode"#
        ));
        assert!(has_error(
            &errs,
            "services[0].protocol",
            r#"expected one of: "tcp", "udp""#
        ));
        assert!(has_error(&errs, "services[0].affinity", r#""sticky""#));
        assert!(has_error(&errs, "backends[3].encapsulation", r#""gre""#));
    }

    #[test]
    fn invalid_names() {
        let text = doc(
            "",
            "[[regions]]\nname = \"eu west\"\n[[regions]]\nname = \"\"\n",
        );
        let errs = errors(&text);
        assert!(has_error(&errs, "regions[2].name", "is not a valid name"));
        assert!(has_error(&errs, "regions[3].name", "is not a valid name"));
    }

    // --- addresses ---------------------------------------------------------

    #[test]
    fn bad_vip_is_not_an_ip_address() {
        let text = doc(
            "",
            r#"
[[services]]
name = "a"
vip = "203.0.113.1"
protocol = "tcp"
regions = ["eu-west"]

[[services]]
name = "b"
vip = "203.0.113.2"
protocol = "tcp"
regions = ["eu-west"]

[[services]]
name = "c"
vip = "203.0.113.300"
protocol = "tcp"
regions = ["eu-west"]
"#,
        );
        assert_error(
            &text,
            "services[2].vip",
            r#""203.0.113.300" is not an IP address"#,
        );
    }

    #[test]
    fn unusable_addresses() {
        let text = doc(
            "",
            r#"
[[services]]
name = "a"
vip = "0.0.0.0"
protocol = "tcp"
regions = ["eu-west"]

[[services]]
name = "b"
vip = "ff02::1"
protocol = "tcp"
regions = ["us-east"]

[[backends]]
name = "lo"
address = "127.0.0.1"
region = "eu-west"

[[backends]]
name = "mapped"
address = "::ffff:192.0.2.77"
region = "eu-west"
"#,
        );
        let errs = errors(&text);
        assert!(has_error(&errs, "services[0].vip", "unspecified"));
        assert!(has_error(&errs, "services[1].vip", "multicast"));
        assert!(has_error(&errs, "backends[3].address", "loopback"));
        assert!(has_error(&errs, "backends[4].address", "192.0.2.77"));
    }

    #[test]
    fn duplicate_backend_address() {
        let text = format!(
            r#"[dataplane]
{DP}
[[regions]]
name = "eu-west"

[[backends]]
name = "eu-0"
address = "192.0.2.4"
region = "eu-west"

[[backends]]
name = "eu-1"
address = "192.0.2.5"
region = "eu-west"

[[backends]]
name = "eu-2"
address = "192.0.2.6"
region = "eu-west"

[[backends]]
name = "eu-3"
address = "192.0.2.5"
region = "eu-west"
{WEB}"#
        );
        assert_error(
            &text,
            "backends[3].address",
            r#"192.0.2.5 is already used by backends[1] "eu-1""#,
        );
    }

    #[test]
    fn backend_cannot_be_a_vip() {
        let text = doc(
            "",
            &format!("{WEB}\n[[backends]]\nname = \"loop\"\naddress = \"203.0.113.10\"\nregion = \"us-east\"\n"),
        );
        assert_error(
            &text,
            "backends[3].address",
            "is the VIP of services[0] \"web\"",
        );
    }

    #[test]
    fn next_hop_mac_format() {
        for (mac, needle) in [
            ("02:00:00:00:01", "is not a MAC address"),
            ("02:00:00:00:00:01:02", "is not a MAC address"),
            ("02-00-00-00-00-01", "is not a MAC address"),
            ("0g:00:00:00:00:01", "is not a MAC address"),
            ("ff:ff:ff:ff:ff:ff", "unicast"),
            ("00:00:00:00:00:00", "all-zero"),
        ] {
            let text = format!(
                "[dataplane]\nnext_hop_mac = \"{mac}\"\nencap_source_v4 = \"198.18.0.0/24\"\nencap_source_v6 = \"2001:db8:ffff::/96\"\n{BASE}{WEB}"
            );
            assert_error(&text, "dataplane.next_hop_mac", needle);
        }
    }

    // --- dataplane values --------------------------------------------------

    #[test]
    fn dataplane_ranges() {
        for (line, path, needle) in [
            ("mtu = 575", "dataplane.mtu", "575 is out of range"),
            ("mtu = 9217", "dataplane.mtu", "9217 is out of range"),
            (
                "conntrack_size = 1023",
                "dataplane.conntrack_size",
                "out of range",
            ),
            (
                "conntrack_size = 67108865",
                "dataplane.conntrack_size",
                "out of range",
            ),
            ("ttl = 0", "dataplane.ttl", "0 is out of range"),
            ("ttl = 256", "dataplane.ttl", "256 is out of range"),
            (
                "maglev_table_size = 5",
                "dataplane.maglev_table_size",
                "out of range",
            ),
            (
                "maglev_table_size = 1000033",
                "dataplane.maglev_table_size",
                "out of range",
            ),
            (
                "pin_path = \"steer\"",
                "dataplane.pin_path",
                "absolute path",
            ),
            (
                "interfaces = [\"eth0\", \"eth0\"]",
                "dataplane.interfaces[1]",
                "listed twice",
            ),
            (
                "interfaces = [\"a-very-long-interface\"]",
                "dataplane.interfaces[0]",
                "not a valid interface name",
            ),
        ] {
            assert_error(&doc(&format!("{line}\n"), WEB), path, needle);
        }
        for line in [
            "mtu = 576",
            "mtu = 9216",
            "conntrack_size = 1024",
            "conntrack_size = 67108864",
            "ttl = 1",
            "ttl = 255",
            "maglev_table_size = 7",
            "maglev_table_size = 1000003",
        ] {
            ok(&doc(&format!("{line}\n"), WEB));
        }
    }

    #[test]
    fn maglev_table_size_must_be_prime() {
        assert_error(
            &doc("maglev_table_size = 65536\n", WEB),
            "dataplane.maglev_table_size",
            "65536 is not prime (try 65537)",
        );
    }

    #[test]
    fn encap_source_prefixes() {
        let with = |v4: &str, v6: &str| {
            format!(
                "[dataplane]\nnext_hop_mac = \"02:00:00:00:00:01\"\nencap_source_v4 = \"{v4}\"\nencap_source_v6 = \"{v6}\"\n{BASE}{WEB}"
            )
        };
        assert_error(
            &with("198.18.0.1/24", "2001:db8:ffff::/96"),
            "dataplane.encap_source_v4",
            "host bits",
        );
        assert_error(
            &with("198.18.0.0/33", "2001:db8:ffff::/96"),
            "dataplane.encap_source_v4",
            "out of range",
        );
        assert_error(
            &with("198.18.0.0", "2001:db8:ffff::/96"),
            "dataplane.encap_source_v4",
            "is not a prefix",
        );
        assert_error(
            &with("198.18.0.0/24", "2001:db8::/64"),
            "dataplane.encap_source_v6",
            "too short",
        );
        assert_error(
            &with("198.18.0.0/24", "2001:db8::1/96"),
            "dataplane.encap_source_v6",
            "host bits",
        );
        let cfg = ok(&with("198.18.0.7/32", "2001:db8::1/128"));
        assert_eq!(
            cfg.dataplane.encap_source_v4.map(|p| p.host_mask()),
            Some(0)
        );
        let cfg = ok(&with("198.18.0.0/15", "2001:db8:ffff::/96"));
        assert_eq!(
            cfg.dataplane.encap_source_v4.map(|p| p.host_mask()),
            Some(0x0001_ffff)
        );
        assert_eq!(
            cfg.dataplane.encap_source_v6.map(|p| p.host_mask()),
            Some(u32::MAX)
        );
    }

    #[test]
    fn encap_sources_required_by_backend_family() {
        // BASE has IPv4 and IPv6 backends.
        let no_v4 = format!(
            "[dataplane]\nnext_hop_mac = \"02:00:00:00:00:01\"\nencap_source_v6 = \"2001:db8:ffff::/96\"\n{BASE}{WEB}"
        );
        assert_error(&no_v4, "dataplane.encap_source_v4", "missing");
        let no_v6 = format!(
            "[dataplane]\nnext_hop_mac = \"02:00:00:00:00:01\"\nencap_source_v4 = \"198.18.0.0/24\"\n{BASE}{WEB}"
        );
        assert_error(&no_v6, "dataplane.encap_source_v6", "missing");
    }

    #[test]
    fn capacity_limits() {
        let two_services = format!(
            "{WEB}\n[[services]]\nname = \"web2\"\nvip = \"203.0.113.11\"\nprotocol = \"tcp\"\nbackends = [\"eu-1\", \"us-1\"]\n"
        );
        // web: 2 backends (eu-west), web2: 2 backends: 2 tables, 4 reals.
        assert_error(
            &doc("max_tables = 1\n", &two_services),
            "dataplane.max_tables",
            "too small",
        );
        assert_error(
            &doc("max_reals = 3\n", &two_services),
            "dataplane.max_reals",
            "too small",
        );
        ok(&doc("max_tables = 2\nmax_reals = 4\n", &two_services));
        // A backend listed explicitly and through its region counts once.
        let overlap = "[[services]]\nname = \"s\"\nvip = \"203.0.113.1\"\nprotocol = \"tcp\"\nbackends = [\"eu-1\"]\nregions = [\"eu-west\"]\n";
        ok(&doc("max_reals = 2\n", overlap));
    }

    // --- names and references ----------------------------------------------

    #[test]
    fn unknown_region_lists_defined_regions() {
        let text = doc(
            "",
            &format!("{WEB}\n[[backends]]\nname = \"ap-1\"\naddress = \"192.0.2.9\"\nregion = \"ap-south\"\n"),
        );
        assert_error(
            &text,
            "backends[3].region",
            r#"unknown region "ap-south" (defined regions: eu-west, us-east)"#,
        );
    }

    #[test]
    fn duplicate_names() {
        let text = doc(
            "",
            &format!(
                r#"{WEB}{WEB}
[[regions]]
name = "eu-west"

[[backends]]
name = "eu-2"
address = "192.0.2.99"
region = "eu-west"

[[health_checks]]
name = "hc"
kind = "tcp"
port = 80
"#
            ),
        );
        let errs = errors(&text);
        assert!(has_error(
            &errs,
            "services[1].name",
            r#"duplicate name "web" (also services[0])"#
        ));
        assert!(has_error(
            &errs,
            "regions[2].name",
            r#"duplicate name "eu-west" (also regions[0])"#
        ));
        assert!(has_error(
            &errs,
            "backends[3].name",
            r#"duplicate name "eu-2" (also backends[1])"#
        ));
        assert!(has_error(
            &errs,
            "health_checks[1].name",
            r#"duplicate name "hc" (also health_checks[0])"#
        ));
    }

    #[test]
    fn unknown_backend_in_service() {
        let text = doc(
            "",
            "[[services]]\nname = \"web\"\nvip = \"203.0.113.10\"\nprotocol = \"tcp\"\nbackends = [\"eu-1\", \"eu-9\"]\n",
        );
        assert_error(
            &text,
            "services[0].backends[1]",
            r#"unknown backend "eu-9""#,
        );
    }

    #[test]
    fn unknown_region_in_service_and_repeated_entries() {
        let text = doc(
            "",
            "[[services]]\nname = \"web\"\nvip = \"203.0.113.10\"\nprotocol = \"tcp\"\nbackends = [\"eu-1\", \"eu-1\"]\nregions = [\"mars\"]\n",
        );
        let errs = errors(&text);
        assert!(has_error(
            &errs,
            "services[0].regions[0]",
            r#"unknown region "mars""#
        ));
        assert!(has_error(&errs, "services[0].backends[1]", "listed twice"));
    }

    #[test]
    fn unknown_health_check_references() {
        let text = doc(
            "",
            r#"
[[services]]
name = "web"
vip = "203.0.113.10"
protocol = "tcp"
regions = ["eu-west"]
health_check = "nope"

[[backends]]
name = "x"
address = "192.0.2.50"
region = "eu-west"
health_check = "gone"
"#,
        );
        let errs = errors(&text);
        assert!(has_error(
            &errs,
            "services[0].health_check",
            r#"unknown health check "nope""#
        ));
        assert!(has_error(
            &errs,
            "backends[3].health_check",
            r#"unknown health check "gone""#
        ));
    }

    #[test]
    fn service_without_backends_or_regions() {
        let text = doc(
            "",
            "[[services]]\nname = \"web\"\nvip = \"203.0.113.10\"\nprotocol = \"tcp\"\n",
        );
        assert_error(&text, "services[0]", "no backends");
        // A region without backends is fine.
        ok(&doc("", &format!("{WEB}\n[[regions]]\nname = \"empty\"\n")));
    }

    #[test]
    fn duplicate_vip_port_protocol() {
        let mut services = String::new();
        for (i, (vip, port, proto)) in [
            ("203.0.113.10", 443, "tcp"),
            ("203.0.113.10", 80, "tcp"),
            ("203.0.113.10", 0, "tcp"),  // all ports: overlaps nothing
            ("203.0.113.10", 80, "udp"), // other protocol
            ("203.0.113.10", 80, "tcp"), // duplicate of services[1]
        ]
        .into_iter()
        .enumerate()
        {
            let name = if i == 1 {
                "web".to_string()
            } else {
                format!("s{i}")
            };
            services.push_str(&format!(
                "[[services]]\nname = \"{name}\"\nvip = \"{vip}\"\nport = {port}\nprotocol = \"{proto}\"\nregions = [\"eu-west\"]\n"
            ));
        }
        let errs = errors(&doc("", &services));
        assert_eq!(errs.len(), 1, "{}", ConfigErrors(errs.clone()));
        assert_eq!(errs[0].path, "services[4]");
        assert_eq!(
            errs[0].message,
            r#"VIP 203.0.113.10 port 80 tcp is already defined by services[1] "web""#
        );
    }

    #[test]
    fn ipv6_vip_cannot_use_ipv4_backend() {
        let text = doc(
            "",
            "[[services]]\nname = \"v6\"\nvip = \"2001:db8:100::1\"\nprotocol = \"tcp\"\nbackends = [\"eu-1\", \"us-1\"]\n",
        );
        let errs = errors(&text);
        assert_eq!(errs.len(), 1, "{}", ConfigErrors(errs.clone()));
        assert_eq!(errs[0].path, "services[0]");
        assert_eq!(
            errs[0].message,
            r#"an IPv6 VIP cannot use IPv4 backend "eu-1" (IPv6 packets can only be encapsulated to IPv6 backends)"#
        );
        // Through a region: both IPv4 backends of eu-west.
        let text = doc(
            "",
            "[[services]]\nname = \"v6\"\nvip = \"2001:db8:100::1\"\nprotocol = \"tcp\"\nregions = [\"eu-west\"]\n",
        );
        let errs = errors(&text);
        assert!(has_error(
            &errs,
            "services[0]",
            r#"an IPv6 VIP cannot use IPv4 backend "eu-1""#
        ));
        assert!(has_error(
            &errs,
            "services[0]",
            r#"an IPv6 VIP cannot use IPv4 backend "eu-2""#
        ));
    }

    #[test]
    fn ipv4_vip_with_ipv6_backends_is_fine() {
        ok(&doc(
            "",
            "[[services]]\nname = \"v4\"\nvip = \"203.0.113.10\"\nprotocol = \"tcp\"\nbackends = [\"us-1\", \"eu-1\"]\n",
        ));
    }

    #[test]
    fn backend_weight_range() {
        let backend = |w: &str| {
            doc(
                "",
                &format!("{WEB}\n[[backends]]\nname = \"x\"\naddress = \"192.0.2.50\"\nregion = \"eu-west\"\nweight = {w}\n"),
            )
        };
        assert_error(&backend("65536"), "backends[3].weight", "out of range");
        assert_error(&backend("-1"), "backends[3].weight", "out of range");
        let cfg = ok(&backend("0"));
        assert_eq!(cfg.backends[3].weight, 0);
        ok(&backend("65535"));
    }

    // --- health checks -----------------------------------------------------

    fn with_check(check: &str) -> String {
        doc(
            "",
            &format!("{WEB}\n[[health_checks]]\nname = \"c\"\n{check}\n"),
        )
    }

    #[test]
    fn health_check_timeout_must_be_shorter_than_interval() {
        let errs = errors(&with_check(
            "kind = \"http\"\ninterval = \"1s\"\ntimeout = \"2s\"",
        ));
        assert!(
            errs.iter().any(|e| e.path == "health_checks[1].timeout"
                && e.message == "2s must be shorter than interval 1s"),
            "{}",
            ConfigErrors(errs.clone())
        );
        assert_error(
            &with_check("kind = \"http\"\ntimeout = \"1s\""),
            "health_checks[1].timeout",
            "1s must be shorter than interval 1s",
        );
        assert_error(
            &with_check(
                "kind = \"http\"\ninterval = \"500ms\"\ntimeout = \"100ms\"\njitter = \"1s\"",
            ),
            "health_checks[1].jitter",
            "1s must be shorter than interval 500ms",
        );
        assert_error(
            &with_check("kind = \"http\"\ninterval = \"0s\""),
            "health_checks[1].interval",
            "longer than 0s",
        );
    }

    #[test]
    fn health_check_counts_and_statuses() {
        assert_error(
            &with_check("kind = \"tcp\"\nport = 22\nrise = 0"),
            "health_checks[1].rise",
            "out of range",
        );
        assert_error(
            &with_check("kind = \"tcp\"\nport = 22\nfall = 0"),
            "health_checks[1].fall",
            "out of range",
        );
        assert_error(
            &with_check("kind = \"tcp\"\nport = 0"),
            "health_checks[1].port",
            "out of range",
        );
        assert_error(
            &with_check("kind = \"http\"\nexpected_status = [200, 600]"),
            "health_checks[1].expected_status[1]",
            "600 is out of range",
        );
        assert_error(
            &with_check("kind = \"http\"\nexpected_status = [99]"),
            "health_checks[1].expected_status[0]",
            "out of range",
        );
        assert_error(
            &with_check("kind = \"http\"\nexpected_status = []"),
            "health_checks[1].expected_status",
            "must not be empty",
        );
        assert_error(
            &with_check("kind = \"http\"\npath = \"health\""),
            "health_checks[1].path",
            "must start with \"/\"",
        );
        let cfg = ok(&with_check(
            "kind = \"http\"\nexpected_status = [100, 599]\npath = \"/h?x=1\"",
        ));
        assert_eq!(cfg.health_checks[1].expected_status, vec![100, 599]);
    }

    #[test]
    fn https_only_and_http_only_fields() {
        assert_error(
            &with_check("kind = \"http\"\nsni = \"example.com\""),
            "health_checks[1].sni",
            "only valid for kind \"https\"",
        );
        assert_error(
            &with_check("kind = \"tcp\"\nport = 1\nca_file = \"/ca.pem\""),
            "health_checks[1].ca_file",
            "only valid for kind \"https\"",
        );
        assert_error(
            &with_check("kind = \"http\"\ninsecure = true"),
            "health_checks[1].insecure",
            "only valid for kind \"https\"",
        );
        assert_error(
            &with_check("kind = \"tcp\"\nport = 1\npath = \"/\""),
            "health_checks[1].path",
            "only valid for kind \"http\" or \"https\"",
        );
        assert_error(
            &with_check("kind = \"tcp\"\nport = 1\ndeep_health = true"),
            "health_checks[1].deep_health",
            "only valid for kind \"http\" or \"https\"",
        );
        let cfg = ok(&with_check(
            "kind = \"https\"\nsni = \"example.com\"\nca_file = \"/ca.pem\"\ndeep_health = true\nbody_contains = \"ok\"",
        ));
        let h = &cfg.health_checks[1];
        assert_eq!(h.sni.as_deref(), Some("example.com"));
        assert_eq!(h.ca_file.as_deref(), Some(Path::new("/ca.pem")));
        assert!(h.deep_health);
        assert_eq!(h.body_contains.as_deref(), Some("ok"));
    }

    #[test]
    fn insecure_with_ca_file_is_an_error() {
        assert_error(
            &with_check("kind = \"https\"\ninsecure = true\nca_file = \"/etc/ca.pem\""),
            "health_checks[1].insecure",
            "cannot be combined with ca_file",
        );
        let cfg = ok(&with_check("kind = \"https\"\ninsecure = true"));
        assert!(cfg.health_checks[1].insecure);
    }

    #[test]
    fn tcp_check_needs_a_port_on_an_all_ports_service() {
        let text = doc(
            "",
            "[[services]]\nname = \"any\"\nvip = \"203.0.113.10\"\nprotocol = \"udp\"\nregions = [\"eu-west\"]\nhealth_check = \"t\"\n\n[[health_checks]]\nname = \"t\"\nkind = \"tcp\"\n",
        );
        let errs = errors(&text);
        assert_eq!(errs.len(), 1, "{}", ConfigErrors(errs.clone()));
        assert_eq!(errs[0].path, "services[0].health_check");
        assert!(errs[0].message.contains("health_checks[1]"));
    }

    #[test]
    fn effective_port() {
        let cfg = ok(&doc(
            "",
            r#"
[[services]]
name = "all"
vip = "203.0.113.10"
protocol = "tcp"
regions = ["eu-west"]

[[services]]
name = "p8080"
vip = "203.0.113.10"
port = 8080
protocol = "tcp"
regions = ["eu-west"]

[[health_checks]]
name = "https"
kind = "https"

[[health_checks]]
name = "tcp9"
kind = "tcp"
port = 9
"#,
        ));
        let (all, p8080) = (&cfg.services[0], &cfg.services[1]);
        let hc = |n: &str| cfg.health_check(n).expect("defined");
        assert_eq!(hc("hc").effective_port(all), Some(80));
        assert_eq!(hc("hc").effective_port(p8080), Some(8080));
        assert_eq!(hc("https").effective_port(all), Some(443));
        assert_eq!(hc("tcp9").effective_port(p8080), Some(9));
    }

    // --- control and metrics -----------------------------------------------

    #[test]
    fn metrics_must_listen_on_loopback() {
        assert_error(
            &doc(
                "",
                &format!("{WEB}\n[metrics]\nlisten = \"0.0.0.0:9477\"\n"),
            ),
            "metrics.listen",
            "is not a loopback address",
        );
        assert_error(
            &doc(
                "",
                &format!("{WEB}\n[metrics]\nlisten = \"localhost:9477\"\n"),
            ),
            "metrics.listen",
            "is not a socket address",
        );
        ok(&doc(
            "",
            &format!("{WEB}\n[metrics]\nlisten = \"[::1]:9477\"\n"),
        ));
    }

    #[test]
    fn control_socket_path_length() {
        let long = format!("/{}", "x".repeat(120));
        assert_error(
            &doc("", &format!("{WEB}\n[control]\nsocket = \"{long}\"\n")),
            "control.socket",
            "at most 107",
        );
    }

    // --- several errors, no cascades ---------------------------------------

    #[test]
    fn every_error_is_reported_at_once() {
        let text = doc(
            "mtu = 100\nmaglev_table_size = 65536\n",
            r#"
[[services]]
name = "web"
vip = "203.0.113.300"
protocol = "tcp"
backends = ["eu-9"]

[[services]]
name = "web"
vip = "203.0.113.11"
protocol = "tcp"
regions = ["eu-west"]
colour = "blue"

[[backends]]
name = "ap-1"
address = "192.0.2.77"
region = "ap-south"

[[health_checks]]
name = "slow"
kind = "http"
timeout = "5s"

[metrics]
listen = "192.0.2.1:9477"
"#,
        );
        let errs = errors(&text);
        for (path, needle) in [
            ("dataplane.mtu", "out of range"),
            ("dataplane.maglev_table_size", "not prime"),
            ("services[0].vip", "is not an IP address"),
            ("services[0].backends[0]", "unknown backend \"eu-9\""),
            ("services[1].name", "duplicate name \"web\""),
            ("services[1].colour", "unknown key"),
            ("backends[3].region", "unknown region \"ap-south\""),
            (
                "health_checks[1].timeout",
                "5s must be shorter than interval 1s",
            ),
            ("metrics.listen", "not a loopback address"),
        ] {
            assert!(
                has_error(&errs, path, needle),
                "missing {path}: {needle}; got:\n{}",
                ConfigErrors(errs.clone())
            );
        }
        assert_eq!(errs.len(), 9, "{}", ConfigErrors(errs.clone()));
    }

    #[test]
    fn a_bad_value_does_not_cascade() {
        // The backend's address is invalid: the service that uses it gets no
        // "unknown backend" or family error, and no other error appears.
        let text = doc(
            "",
            r#"
[[backends]]
name = "broken"
address = "not-an-ip"
region = "eu-west"

[[services]]
name = "v6"
vip = "2001:db8:100::1"
protocol = "tcp"
backends = ["broken"]

[[health_checks]]
name = "h"
kind = "http"
interval = "soon"
timeout = "2s"
"#,
        );
        let errs = errors(&text);
        assert_eq!(errs.len(), 2, "{}", ConfigErrors(errs.clone()));
        assert!(has_error(
            &errs,
            "backends[3].address",
            "\"not-an-ip\" is not an IP address"
        ));
        assert!(has_error(
            &errs,
            "health_checks[1].interval",
            "\"soon\" is not a duration"
        ));
    }

    #[test]
    fn errors_display_one_per_line() {
        let errs = ConfigErrors(vec![
            ConfigError::new("dataplane.mtu", "100 is out of range"),
            ConfigError::new("services[0].vip", "\"x\" is not an IP address"),
        ]);
        assert_eq!(
            errs.to_string(),
            "dataplane.mtu: 100 is out of range\nservices[0].vip: \"x\" is not an IP address"
        );
    }

    // --- lookups -----------------------------------------------------------

    #[test]
    fn service_backends_dedupes_in_config_order() {
        let cfg = ok(&doc(
            "",
            "[[services]]\nname = \"s\"\nvip = \"203.0.113.1\"\nprotocol = \"tcp\"\nbackends = [\"us-1\", \"eu-1\"]\nregions = [\"eu-west\"]\n",
        ));
        let names: Vec<&str> = cfg
            .service_backends(&cfg.services[0])
            .iter()
            .map(|b| b.name.as_str())
            .collect();
        assert_eq!(names, ["eu-1", "eu-2", "us-1"]);
    }

    #[test]
    fn health_check_for_prefers_the_backend_override() {
        let cfg = ok(&doc(
            "",
            r#"
[[services]]
name = "s"
vip = "203.0.113.1"
port = 80
protocol = "tcp"
regions = ["eu-west"]
health_check = "hc"

[[services]]
name = "bare"
vip = "203.0.113.2"
port = 80
protocol = "tcp"
backends = ["eu-1"]

[[backends]]
name = "odd"
address = "192.0.2.60"
region = "eu-west"
health_check = "alt"

[[health_checks]]
name = "alt"
kind = "tcp"
port = 22
"#,
        ));
        let s = cfg.service("s").expect("defined");
        let bare = cfg.service("bare").expect("defined");
        let eu1 = cfg.backend("eu-1").expect("defined");
        let odd = cfg.backend("odd").expect("defined");
        assert_eq!(
            cfg.health_check_for(s, eu1).map(|h| h.name.as_str()),
            Some("hc")
        );
        assert_eq!(
            cfg.health_check_for(s, odd).map(|h| h.name.as_str()),
            Some("alt")
        );
        assert_eq!(cfg.health_check_for(bare, eu1), None);
    }

    #[test]
    fn load_reports_unreadable_file() {
        let path = Path::new("/nonexistent/steer/config.toml");
        let errs = match Config::load(path) {
            Ok(_) => panic!("loaded a missing file"),
            Err(e) => e.0,
        };
        assert_eq!(errs.len(), 1);
        assert_eq!(errs[0].path, "/nonexistent/steer/config.toml");
        assert!(
            errs[0].message.contains("cannot read"),
            "{}",
            errs[0].message
        );
    }

    #[test]
    fn load_reads_a_file() {
        let dir = std::env::temp_dir().join(format!("steer-config-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("steer.toml");
        std::fs::write(&path, doc("", WEB)).expect("write");
        let loaded = Config::load(&path);
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(loaded.map(|c| c.services.len()), Ok(1));
    }

    // --- durations ---------------------------------------------------------

    #[test]
    fn parse_durations() {
        for (text, ms) in [
            ("1s", 1000),
            ("250ms", 250),
            ("2m", 120_000),
            ("1h", 3_600_000),
            ("1m30s", 90_000),
            ("1s500ms", 1500),
            ("0s", 0),
            ("0ms", 0),
        ] {
            assert_eq!(
                parse_duration(text),
                Ok(Duration::from_millis(ms)),
                "{text}"
            );
        }
        for text in [
            "",
            "1.5s",
            "5 s",
            " 1s",
            "-1s",
            "1d",
            "ms",
            "1s2",
            "1µs",
            "99999999999999999999s",
        ] {
            assert!(parse_duration(text).is_err(), "{text:?} accepted");
        }
        let e = parse_duration("10").err().unwrap_or_default();
        assert!(e.contains("no unit"), "{e}");
        let e = parse_duration("1x").err().unwrap_or_default();
        assert!(e.contains("is not a duration"), "{e}");
    }

    #[test]
    fn format_durations_round_trip() {
        for (ms, text) in [
            (1000, "1s"),
            (500, "500ms"),
            (90_000, "1m30s"),
            (3_600_000, "1h"),
            (3_723_004, "1h2m3s4ms"),
            (0, "0s"),
        ] {
            let d = Duration::from_millis(ms);
            assert_eq!(format_duration(d), text);
            assert_eq!(parse_duration(text), Ok(d));
        }
    }

    #[test]
    fn durations_must_be_strings() {
        assert_error(
            &with_check("kind = \"http\"\ninterval = 1000"),
            "health_checks[1].interval",
            "expected a duration string such as \"1s\"",
        );
    }
}
