//! Defaults and limits, each written once (documented in docs/config.md;
//! keep them in sync). The readers in `section/` and the constructors below
//! ([`HealthCheck::new`], `Default` for [`ControlConfig`] and
//! [`MetricsConfig`]) all take their values from here.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use steer_common::capacity;

use crate::model::{CheckKind, ControlConfig, HealthCheck, LatencyTuning, MetricsConfig, Milli};

// --- [dataplane] -----------------------------------------------------------

pub(crate) const DEFAULT_MTU: u32 = 1500;
pub(crate) const MTU_MIN: u32 = 576;
pub(crate) const MTU_MAX: u32 = 9216;
pub(crate) const DEFAULT_CONNTRACK_SIZE: u32 = 1_048_576;
pub(crate) const CONNTRACK_MIN: u32 = 1024;
pub(crate) const CONNTRACK_MAX: u32 = 67_108_864;
pub(crate) const DEFAULT_MAGLEV_TABLE_SIZE: u32 = 65537;
pub(crate) const MAGLEV_MIN: u32 = 7;
pub(crate) const MAGLEV_MAX: u32 = 1_000_003;
pub(crate) const DEFAULT_TTL: u8 = 64;
/// `pmtu_reply_rate` (replies per second per CPU) and `pmtu_reply_burst`:
/// the defaults and the bound of both, shared with the XDP program.
pub(crate) use steer_common::{PMTU_REPLY_BURST, PMTU_REPLY_MAX, PMTU_REPLY_RATE};
pub(crate) const DEFAULT_PIN_PATH: &str = "/sys/fs/bpf/steer";
/// The bpffs mount point: `pin_path` must be a directory below it, not it.
pub(crate) const BPFFS_ROOT: &str = "/sys/fs/bpf";
pub(crate) const DEFAULT_MAX_TABLES: u32 = 128;
/// Upper bound of `max_tables`: the tables are indexed by VIP and the VIP
/// maps (`VIPS`, `VIP_ADDRS`, `VIP_STATS`) hold at most this many entries
/// (each service needs one table, and at most this many services are
/// accepted), so more tables could never be used.
pub const MAX_TABLES_LIMIT: u32 = capacity::VIPS;
pub(crate) const DEFAULT_MAX_REALS: u32 = 65536;
/// Upper bound of `max_reals`: 16 × the default. `REALS` and the per-CPU
/// `REAL_STATS` and `PASSIVE_STATS` (24 + 16 = 40 bytes per CPU per real:
/// 40 MiB per CPU at this bound) are arrays of `max_reals` entries the
/// kernel allocates up front.
pub const MAX_REALS_LIMIT: u32 = 1 << 20;
/// Upper bound of the Maglev rings (the `RINGS` BPF array): `max_tables ×
/// 2 × maglev_table_size` slots of 4 bytes, allocated up front and mapped
/// into the daemon. 1 GiB: 16 × the default (128 tables × 2 × 65537 slots
/// = 64 MiB), and far below what the kernel allows for one array
/// (2^31 entries of 64 bytes).
pub const RINGS_MAX_BYTES: u64 = 1 << 30;
/// Bytes per ring slot (a `u32` backend index).
pub(crate) const RING_SLOT_BYTES: u64 = 4;

// --- [[regions]] -----------------------------------------------------------

pub(crate) const DEFAULT_DIAL: u8 = 100;
pub(crate) const DIAL_MAX: u8 = 100;
/// `max_new_flows_per_second`: 1..=this (per host).
pub(crate) const MAX_NEW_FLOWS_PER_SECOND: u32 = 1_000_000_000;
/// `capacity_scaler`: 0, or between these (thousandths), as Google Cloud.
pub(crate) const DEFAULT_CAPACITY_SCALER: Milli = Milli(1000);
pub(crate) const CAPACITY_SCALER_MIN_NONZERO: Milli = Milli(100);
pub(crate) const CAPACITY_SCALER_MAX: Milli = Milli(1000);

// --- [[client_classes]], [geoip] -------------------------------------------

/// Classes: ids 1..=255 in the data plane's class lookup (0 = no class).
pub const MAX_CLIENT_CLASSES: usize = 255;
/// Longest client prefix accepted: Route 53's limits for IP-based routing,
/// which the data plane's class lookup relies on (a flat array indexed by
/// the top 24 bits for IPv4; the top 64 bits for IPv6).
pub const CLIENT_PREFIX_V4_MAX: u8 = 24;
pub const CLIENT_PREFIX_V6_MAX: u8 = 48;
/// Continent codes of MaxMind databases (`continent.code`).
pub(crate) const CONTINENTS: &[&str] = &["AF", "AN", "AS", "EU", "NA", "OC", "SA"];
/// Largest `[geoip] database` read (GeoLite2-City is about 70 MiB).
pub(crate) const MAX_GEOIP_BYTES: u64 = 512 << 20;
/// `prefix_files` per class.
pub(crate) const MAX_PREFIX_FILES: usize = 1024;
/// Bad lines reported per prefix file (the rest are counted).
pub(crate) const MAX_FILE_ERRORS: usize = 10;

// --- [[services]] policies -------------------------------------------------

pub(crate) const DEFAULT_OVERPROVISIONING: Milli = Milli(1400);
pub(crate) const OVERPROVISIONING_MIN: Milli = Milli(1000);
pub(crate) const OVERPROVISIONING_MAX: Milli = Milli(100_000);
pub(crate) const DEFAULT_PANIC_THRESHOLD: u8 = 50;
pub(crate) const DEFAULT_MAX_EJECTION_PERCENT: u8 = 100;
pub(crate) const DEFAULT_LATENCY_MARGIN: u8 = 20;
pub(crate) const DEFAULT_LATENCY_MARGIN_MIN: Duration = Duration::from_millis(5);
pub(crate) const LATENCY_MARGIN_MIN_MAX: Duration = Duration::from_secs(10);
pub(crate) const DEFAULT_LATENCY_DWELL: Duration = Duration::from_secs(30);
pub(crate) const LATENCY_DWELL_MAX: Duration = Duration::from_secs(3600);

pub(crate) const DEFAULT_OUTLIER_INTERVAL: Duration = Duration::from_secs(10);
pub(crate) const OUTLIER_INTERVAL_MIN: Duration = Duration::from_secs(1);
pub(crate) const OUTLIER_INTERVAL_MAX: Duration = Duration::from_secs(3600);
pub(crate) const DEFAULT_OUTLIER_REPEATED_SYN_PERCENT: u8 = 30;
pub(crate) const DEFAULT_OUTLIER_MIN_NEW_FLOWS: u32 = 20;
pub(crate) const OUTLIER_MIN_NEW_FLOWS_MAX: u32 = 1_000_000;
pub(crate) const DEFAULT_OUTLIER_BASE_EJECTION: Duration = Duration::from_secs(30);
pub(crate) const DEFAULT_OUTLIER_MAX_EJECTION: Duration = Duration::from_secs(300);
pub(crate) const OUTLIER_EJECTION_MAX: Duration = Duration::from_secs(86_400);
/// The outlier cap when the service sets no `max_ejection_percent`
/// (Envoy's default).
pub(crate) const DEFAULT_OUTLIER_MAX_EJECTION_PERCENT: u8 = 10;
pub(crate) const DEFAULT_SLOW_START_MIN_WEIGHT_PERCENT: u8 = 10;
pub(crate) const SLOW_START_WINDOW_MAX: Duration = Duration::from_secs(3600);

impl Default for LatencyTuning {
    fn default() -> Self {
        LatencyTuning {
            margin_percent: DEFAULT_LATENCY_MARGIN,
            margin_min: DEFAULT_LATENCY_MARGIN_MIN,
            dwell: DEFAULT_LATENCY_DWELL,
        }
    }
}

// --- [[backends]] ----------------------------------------------------------

pub(crate) const DEFAULT_WEIGHT: u32 = 100;
pub(crate) const MAX_WEIGHT: u32 = 65535;

// --- [[health_checks]] -----------------------------------------------------

pub(crate) const DEFAULT_HC_PATH: &str = "/";
pub(crate) const DEFAULT_INTERVAL: Duration = Duration::from_secs(1);
pub(crate) const DEFAULT_TIMEOUT: Duration = Duration::from_millis(500);
pub(crate) const DEFAULT_JITTER: Duration = Duration::from_millis(100);
pub(crate) const DEFAULT_RISE: u32 = 2;
pub(crate) const DEFAULT_FALL: u32 = 3;
pub(crate) const DEFAULT_EXPECTED_STATUS: u16 = 200;
pub(crate) const DEFAULT_DEEP_HEALTH: bool = false;
/// Deep-health `"status"` values that mean up: steer's own `healthy`, the
/// common `ok` and `up`, and the health-check draft's `pass`
/// (draft-inadarei-api-health-check).
pub(crate) const DEFAULT_UP_STATUSES: &[&str] = &["healthy", "ok", "pass", "up"];
/// Deep-health `"status"` values that mean up but degraded: steer's own
/// `degraded` and the draft's `warn`.
pub(crate) const DEFAULT_DEGRADED_STATUSES: &[&str] = &["degraded", "warn"];
pub(crate) const DEFAULT_INSECURE: bool = false;

// --- [control], [metrics] --------------------------------------------------

pub(crate) const DEFAULT_CONTROL_SOCKET: &str = "/run/steer/control.sock";
pub(crate) const DEFAULT_METRICS_LISTEN: SocketAddr =
    SocketAddr::new(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1)), 9477);

// --- names, files ----------------------------------------------------------

/// Longest name accepted for regions, backends, services and health checks.
pub(crate) const MAX_NAME_LEN: usize = 63;
/// `IFNAMSIZ - 1`.
pub(crate) const MAX_IFNAME_LEN: usize = 15;
/// `sizeof(sun_path) - 1`.
pub(crate) const MAX_SOCKET_PATH_LEN: usize = 107;
/// Largest config file (and `ca_file`) read: far above any real config, low
/// enough that a wrong path cannot exhaust memory.
pub const MAX_FILE_BYTES: u64 = 64 << 20;

impl HealthCheck {
    /// A check of `kind` with every other field at its documented default
    /// (see docs/config.md), the same defaults the reader applies.
    pub fn new(name: &str, kind: CheckKind) -> HealthCheck {
        HealthCheck {
            name: name.to_string(),
            kind,
            port: None,
            path: DEFAULT_HC_PATH.into(),
            interval: DEFAULT_INTERVAL,
            timeout: DEFAULT_TIMEOUT,
            rise: DEFAULT_RISE,
            fall: DEFAULT_FALL,
            jitter: DEFAULT_JITTER,
            expected_status: vec![DEFAULT_EXPECTED_STATUS],
            body_contains: None,
            deep_health: DEFAULT_DEEP_HEALTH,
            up_statuses: strings(DEFAULT_UP_STATUSES),
            degraded_statuses: strings(DEFAULT_DEGRADED_STATUSES),
            sni: None,
            ca_file: None,
            insecure: DEFAULT_INSECURE,
        }
    }
}

pub(crate) fn strings(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

impl Default for ControlConfig {
    fn default() -> Self {
        ControlConfig {
            socket: PathBuf::from(DEFAULT_CONTROL_SOCKET),
            group: None,
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
