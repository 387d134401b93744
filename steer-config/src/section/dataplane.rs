//! `[dataplane]`: how the XDP program is attached, what it writes, and the
//! sizes of its maps.

use std::collections::HashMap;
use std::path::{Component, Path, PathBuf};

use steer_common::RING_LANES;
use toml::{Table, Value};

use super::quoted;
use crate::defaults::{
    BPFFS_ROOT, CONNTRACK_MAX, CONNTRACK_MIN, DEFAULT_CONNTRACK_SIZE, DEFAULT_MAGLEV_TABLE_SIZE,
    DEFAULT_MAX_REALS, DEFAULT_MAX_TABLES, DEFAULT_MTU, DEFAULT_PIN_PATH, DEFAULT_TTL, MAGLEV_MAX,
    MAGLEV_MIN, MAX_REALS_LIMIT, MAX_TABLES_LIMIT, MTU_MAX, MTU_MIN, PMTU_REPLY_BURST,
    PMTU_REPLY_MAX, PMTU_REPLY_RATE, RINGS_MAX_BYTES, RING_SLOT_BYTES,
};
use crate::error::join;
use crate::model::{AttachMode, Ipv4Prefix, Ipv6Prefix, PBackend, PDataplane};
use crate::values::{
    int_in, interface_name, keyword, mac_address, non_empty_string, string, u32_in, unicast_mac,
};
use crate::walker::{Node, Walker};

pub(super) fn read(w: &mut Walker, t: &Table) -> PDataplane {
    let n = Node::new(w, "dataplane", t);
    // `conntrack_size_v6` defaults to `conntrack_size` (the fields are
    // read in the order written, so the keys are listed in this order).
    let conntrack_size;
    let dataplane = PDataplane {
        interfaces: interfaces(w, &n),
        mode: n.default(w, "mode", AttachMode::default(), keyword),
        next_hop_mac: n.required(
            w,
            "next_hop_mac",
            "e.g. \"02:00:00:00:00:01\" (the MAC of the router encapsulated packets are sent to)",
            mac_address,
        ),
        source_mac: n.optional(w, "source_mac", |v| source_mac(string(v)?.as_str())),
        encap_source_v4: n.optional(w, "encap_source_v4", |v| string(v)?.parse::<Ipv4Prefix>()),
        encap_source_v6: n.optional(w, "encap_source_v6", |v| string(v)?.parse::<Ipv6Prefix>()),
        mtu: n.default(w, "mtu", DEFAULT_MTU, u32_in(MTU_MIN, MTU_MAX)),
        pmtu_reply_rate: n.default(w, "pmtu_reply_rate", PMTU_REPLY_RATE, |v| {
            int_in(v, 0, i64::from(PMTU_REPLY_MAX)).map_err(|e| {
                format!("{e}: path-MTU replies per second per CPU; 0 turns the replies off")
            })
        }),
        pmtu_reply_burst: n.default(w, "pmtu_reply_burst", PMTU_REPLY_BURST, |v| {
            int_in(v, 0, i64::from(PMTU_REPLY_MAX))
                .map_err(|e| format!("{e}: path-MTU replies a CPU may send back to back"))
        }),
        conntrack_size: {
            conntrack_size = n.default(
                w,
                "conntrack_size",
                DEFAULT_CONNTRACK_SIZE,
                u32_in(CONNTRACK_MIN, CONNTRACK_MAX),
            );
            conntrack_size
        },
        conntrack_size_v6: n.default(
            w,
            "conntrack_size_v6",
            conntrack_size.unwrap_or(DEFAULT_CONNTRACK_SIZE),
            u32_in(CONNTRACK_MIN, CONNTRACK_MAX),
        ),
        maglev_table_size: n.default(
            w,
            "maglev_table_size",
            DEFAULT_MAGLEV_TABLE_SIZE,
            maglev_table_size,
        ),
        ttl: n.default(w, "ttl", DEFAULT_TTL, |v| int_in(v, 1, 255)),
        pin_path: n.default(w, "pin_path", PathBuf::from(DEFAULT_PIN_PATH), pin_path),
        max_tables: n.default(w, "max_tables", DEFAULT_MAX_TABLES, |v| {
            capacity(
                v,
                "max_tables",
                MAX_TABLES_LIMIT,
                "the data plane holds at most that many VIPs, and each service uses one table",
            )
        }),
        max_reals: n.default(w, "max_reals", DEFAULT_MAX_REALS, |v| {
            capacity(
                v,
                "max_reals",
                MAX_REALS_LIMIT,
                "the REALS and per-CPU REAL_STATS maps are allocated at this size up front",
            )
        }),
        at: "dataplane".to_string(),
    };
    n.done(w);
    dataplane
}

/// `interfaces`, each listed once.
fn interfaces(w: &mut Walker, n: &Node<'_>) -> Option<Vec<Option<String>>> {
    let interfaces = n.list(w, "interfaces", interface_name);
    let list = interfaces.as_ref()?;
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
    interfaces
}

/// `dataplane.source_mac` (and `steer replay --source-mac`): a unicast MAC,
/// the source of transmitted frames.
pub fn source_mac(s: &str) -> Result<[u8; 6], String> {
    unicast_mac(
        s,
        "use the MAC of the interface steer sends from",
        "a frame's source must be a unicast MAC: use the MAC of the interface steer sends from",
    )
}

fn maglev_table_size(v: &Value) -> Result<u32, String> {
    let size = u32_in(MAGLEV_MIN, MAGLEV_MAX)(v)?;
    if is_prime(size) {
        Ok(size)
    } else {
        Err(format!(
            "{size} is not prime (try {}); Maglev needs a prime table size",
            next_prime(size)
        ))
    }
}

/// A map capacity: at least 1, at most `limit`.
fn capacity(v: &Value, key: &str, limit: u32, why: &str) -> Result<u32, String> {
    let n = u32_in(1, u32::MAX)(v)?;
    if n > limit {
        return Err(format!(
            "{n} is more than {key} can be ({limit}: {why}); set {key} to at most {limit}"
        ));
    }
    Ok(n)
}

/// An absolute path to a directory of steer's own on the BPF file system.
fn pin_path(v: &Value) -> Result<PathBuf, String> {
    let s = non_empty_string(v)?;
    let advice = format!("use a directory such as {DEFAULT_PIN_PATH:?}");
    if !s.starts_with('/') {
        return Err(format!("{s:?} must be an absolute path ({advice})"));
    }
    let path = Path::new(&s);
    if path.components().any(|c| c == Component::ParentDir) {
        return Err(format!("{s:?} must not contain \"..\" ({advice})"));
    }
    // Drops repeated and trailing slashes and "." components.
    let normal: PathBuf = path.components().collect();
    if normal == Path::new("/") {
        return Err(format!(
            "{s:?} is the root directory: steer pins its maps and links in a directory \
             of its own; {advice}"
        ));
    }
    if normal == Path::new(BPFFS_ROOT) {
        return Err(format!(
            "{s:?} is the root of the BPF file system, shared with every other BPF \
             program: steer pins its maps and links in a directory of its own; {advice}"
        ));
    }
    Ok(PathBuf::from(s))
}

/// Encapsulation sources the backends need, and map capacities.
pub(super) fn validate(
    w: &mut Walker,
    d: &PDataplane,
    backends: &[PBackend],
    // (services, selection tables they need)
    services: (usize, usize),
    total_reals: u64,
) {
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
        let user = backends
            .iter()
            .find(|b| b.address.is_some_and(|a| a.is_ipv4() == family_v4));
        if let Some(b) = user {
            w.err(
                join(&d.at, field),
                format!(
                    "missing, required because {}{} has an {} address (the outer source \
                     range for encapsulated packets, e.g. {example:?})",
                    b.at,
                    quoted(b.name.as_ref()),
                    if family_v4 { "IPv4" } else { "IPv6" }
                ),
            );
        }
    }
    if let (Some(rate @ 1..), Some(0)) = (d.pmtu_reply_rate, d.pmtu_reply_burst) {
        w.err(
            join(&d.at, "pmtu_reply_burst"),
            format!(
                "0 with pmtu_reply_rate = {rate} would never send a path-MTU reply; set \
                 pmtu_reply_burst to at least 1, or pmtu_reply_rate = 0 to turn the replies off"
            ),
        );
    }
    if let Some(max_tables) = d.max_tables {
        let (services, tables) = services;
        if (max_tables as usize) < tables {
            let why = if tables == services {
                format!("{services} services (each service needs a table")
            } else {
                format!(
                    "{services} services and their client-class tables ({tables} tables: \
                     each service needs one, plus one per class a geo service lists and \
                     one per residency class"
                )
            };
            w.err(
                join(&d.at, "max_tables"),
                format!(
                    "{max_tables} is too small for {why}; raise max_tables to at least \
                     {tables})"
                ),
            );
        }
        if let Some(size) = d.maglev_table_size {
            check_rings(w, max_tables, size);
        }
    }
    if let Some(max_reals) = d.max_reals {
        if u64::from(max_reals) < total_reals {
            w.err(
                join(&d.at, "max_reals"),
                format!(
                    "{max_reals} is too small: the services use {total_reals} backends in \
                     total (a backend counts once per service it serves); raise max_reals \
                     to at least {total_reals}"
                ),
            );
        }
    }
}

/// The Maglev rings (`ring_values(max_tables, maglev_table_size)` values of
/// `RING_LANES` slots in one BPF array) must stay within [`RINGS_MAX_BYTES`].
fn check_rings(w: &mut Walker, max_tables: u32, size: u32) {
    let lanes = u64::from(RING_LANES);
    let slots = u64::from(max_tables) * 2 * u64::from(size);
    let bytes = slots.div_ceil(lanes) * lanes * RING_SLOT_BYTES;
    if bytes <= RINGS_MAX_BYTES {
        return;
    }
    let fit = RINGS_MAX_BYTES / (2 * u64::from(size) * RING_SLOT_BYTES);
    w.err(
        "dataplane.max_tables",
        format!(
            "max_tables {max_tables} × 2 × maglev_table_size {size} × {RING_SLOT_BYTES} bytes \
             = {} MiB of Maglev rings, more than the limit of {} MiB; lower max_tables \
             (to at most {fit} with this maglev_table_size) or maglev_table_size",
            bytes.div_ceil(1 << 20),
            RINGS_MAX_BYTES >> 20
        ),
    );
}

fn is_prime(n: u32) -> bool {
    n >= 2
        && (2..)
            .take_while(|d| d * d <= u64::from(n))
            .all(|d| u64::from(n) % d != 0)
}

/// The smallest prime >= n (n <= MAGLEV_MAX, so this is in range).
fn next_prime(n: u32) -> u32 {
    (n.max(2)..).find(|&p| is_prime(p)).unwrap_or(n)
}
