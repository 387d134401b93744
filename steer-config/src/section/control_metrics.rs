//! `[control]` and `[metrics]`: the daemon's control socket and its
//! Prometheus listener.

use std::net::SocketAddr;
use std::path::PathBuf;

use toml::{Table, Value};

use crate::defaults::{DEFAULT_CONTROL_SOCKET, DEFAULT_METRICS_LISTEN, MAX_SOCKET_PATH_LEN};
use crate::model::{ControlConfig, MetricsConfig};
use crate::values::{non_empty_string, string};
use crate::walker::{Node, Walker};

pub(super) fn read_control(w: &mut Walker, t: &Table) -> Option<ControlConfig> {
    let n = Node::new(w, "control", t);
    let socket = n.default(
        w,
        "socket",
        PathBuf::from(DEFAULT_CONTROL_SOCKET),
        socket_path,
    );
    n.done(w);
    Some(ControlConfig { socket: socket? })
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
