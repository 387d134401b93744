//! steer's control protocol, shared by the daemon (`steer run`), the CLI
//! (`steer status|drain|reload|stop`) and the developer tools (xtask).
//! Depends on serde, serde_json and nix (for the socket owner's checks).
//!
//! - [`protocol`]: the messages ([`Request`], [`Response`], [`StatusReport`]
//!   with its [`ServiceStatus`], [`BackendStatus`], [`Health`] and
//!   [`Affinity`]). One JSON object per line over a Unix stream socket: the
//!   client writes one request line and reads one response line; a
//!   connection may carry several requests in turn.
//! - [`client`]: a blocking client ([`request`]) with the timeouts of
//!   [`timeout_for`]; it talks only to a socket that root (or the caller)
//!   owns and serves ([`trusted_uid`]).
//! - [`table`]: the human rendering of a status report
//!   ([`render_status_table`]).
//!
//! The server side (the daemon's socket) lives in steer-userspace.

pub mod client;
pub mod protocol;
pub mod table;

pub use client::{
    request, request_with_timeout, timeout_for, trusted_uid, ClientError, Untrusted,
    MAX_RESPONSE_BYTES, RELOAD_TIMEOUT, REQUEST_TIMEOUT,
};
pub use protocol::{
    Affinity, BackendStatus, Health, InterfaceStatus, RegionMeasure, RegionShare, Request,
    Response, ServiceStatus, ShiftReport, StatusReport, TableStatus, MAX_REQUEST_BYTES,
};
pub use table::{render_status_table, shift_line};
