//! The operator-facing control plane of `steer run`.
//!
//! - [`protocol`]: the control protocol's messages ([`Request`],
//!   [`Response`], [`StatusReport`]). One JSON object per line over a Unix
//!   stream socket: the client writes one request line and reads one
//!   response line; a connection may carry several requests in turn.
//! - [`control`]: the control socket's server ([`serve_control`], driven by a
//!   [`ControlHandler`]) and client ([`request`]).
//! - [`table`]: the human rendering of a status report
//!   ([`render_status_table`]).
//! - [`metrics`]: steer's Prometheus metrics, encoded from a
//!   [`MetricsSnapshot`] ([`render_metrics`]), and their loopback-only HTTP
//!   listener ([`bind_metrics`], then [`serve_metrics`]).
//!
//! Nothing here touches BPF maps or the configuration: the daemon implements
//! [`ControlHandler`] and [`MetricsSource`] over its own state.

pub mod control;
pub mod metrics;
pub mod protocol;
pub mod table;

pub use control::{
    request, request_with_timeout, serve_control, timeout_for, ClientError, ControlHandler,
    HandlerFuture, MAX_REQUEST_BYTES,
};
pub use metrics::{
    bind_metrics, render_metrics, serve_metrics, HistogramSnapshot, MetricsListener,
    MetricsSnapshot, MetricsSource, CONTENT_TYPE, MAX_METRICS_CONNECTIONS,
};
pub use protocol::{BackendStatus, Request, Response, ServiceStatus, StatusReport};
pub use table::render_status_table;
