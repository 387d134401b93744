//! steer's control protocol, shared by the daemon (`steer run`), the CLI
//! (`steer status|drain|reload|stop`) and the developer tools (xtask).
//!
//! - [`protocol`]: the messages ([`Request`], [`Response`], [`StatusReport`]
//!   with its [`ServiceStatus`], [`BackendStatus`], [`Health`] and
//!   [`Affinity`]). One JSON object per line over a Unix stream socket: the
//!   client writes one request line and reads one response line; a
//!   connection may carry several requests in turn.
//! - [`client`]: a blocking client ([`request`]) with the timeouts of
//!   [`timeout_for`].
//! - [`table`]: the human rendering of a status report
//!   ([`render_status_table`]).
//!
//! The server side (the daemon's socket) lives in steer-userspace.

pub mod client;
pub mod protocol;
pub mod table;

pub use client::{
    request, request_with_timeout, timeout_for, ClientError, MAX_RESPONSE_BYTES, RELOAD_TIMEOUT,
    REQUEST_TIMEOUT,
};
pub use protocol::{
    Affinity, BackendStatus, Health, InterfaceStatus, Request, Response, ServiceStatus,
    StatusReport, MAX_REQUEST_BYTES,
};
pub use table::render_status_table;
