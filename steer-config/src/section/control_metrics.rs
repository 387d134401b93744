//! `[control]` and `[metrics]`: the daemon's control socket and its
//! Prometheus listener.

use std::net::SocketAddr;
use std::path::PathBuf;

use toml::{Table, Value};

use crate::defaults::{DEFAULT_CONTROL_SOCKET, DEFAULT_METRICS_LISTEN, MAX_SOCKET_PATH_LEN};
use crate::model::{ControlConfig, ControlGroup, MetricsConfig};
use crate::values::{non_empty_string, string};
use crate::walker::{describe, Node, Walker};

pub(super) fn read_control(w: &mut Walker, t: &Table) -> Option<ControlConfig> {
    let n = Node::new(w, "control", t);
    let socket = n.default(
        w,
        "socket",
        PathBuf::from(DEFAULT_CONTROL_SOCKET),
        socket_path,
    );
    let group = n.optional(w, "group", control_group);
    n.done(w);
    Some(ControlConfig {
        socket: socket?,
        group: group?,
    })
}

pub(super) fn read_metrics(w: &mut Walker, t: &Table) -> Option<MetricsConfig> {
    let n = Node::new(w, "metrics", t);
    let listen = n.default(w, "listen", DEFAULT_METRICS_LISTEN, listen_address);
    n.done(w);
    Some(MetricsConfig { listen: listen? })
}

fn socket_path(v: &Value) -> Result<PathBuf, String> {
    let s = non_empty_string(v)?;
    if s.len() > MAX_SOCKET_PATH_LEN {
        return Err(format!(
            "is {} bytes long; a Unix socket path can be at most {MAX_SOCKET_PATH_LEN}",
            s.len()
        ));
    }
    Ok(PathBuf::from(s))
}

/// The largest gid: `(gid_t)-1` means "no change" to chown(2), so it is not
/// a group.
const MAX_GID: i64 = u32::MAX as i64 - 1;

/// `group`: a group name that exists in the system's group database, or a
/// numeric gid (which need not have a name).
fn control_group(v: &Value) -> Result<ControlGroup, String> {
    match v {
        Value::Integer(gid) => {
            let gid = u32::try_from(*gid)
                .ok()
                .filter(|g| i64::from(*g) <= MAX_GID)
                .ok_or_else(|| format!("{gid} is not a group id (0 to {MAX_GID})"))?;
            let name = match nix::unistd::Group::from_gid(nix::unistd::Gid::from_raw(gid)) {
                Ok(Some(g)) => g.name,
                _ => gid.to_string(),
            };
            Ok(ControlGroup { name, gid })
        }
        Value::String(name) => {
            if name.is_empty() {
                return Err("must not be empty".to_string());
            }
            if name.contains('\0') {
                return Err(format!("{name:?} is not a group name"));
            }
            match nix::unistd::Group::from_name(name) {
                Ok(Some(g)) => Ok(ControlGroup {
                    name: g.name,
                    gid: g.gid.as_raw(),
                }),
                Ok(None) => Err(format!(
                    "no group named {name:?} on this system (create it with `groupadd {name}`, \
                     or give its number, e.g. group = 1001)"
                )),
                Err(e) => Err(format!("cannot look up group {name:?}: {e}")),
            }
        }
        other => Err(format!(
            "expected a group name (string) or a group id (integer), found {}",
            describe(other)
        )),
    }
}

fn listen_address(v: &Value) -> Result<SocketAddr, String> {
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
}
