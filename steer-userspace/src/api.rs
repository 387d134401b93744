//! The operator-facing control plane of `steer run`.
//!
//! - [`protocol`]: the control protocol's messages ([`Request`],
//!   [`Response`], [`StatusReport`]), from the `steer-api` crate. One JSON
//!   object per line over a Unix stream socket: the client writes one
//!   request line and reads one response line; a connection may carry
//!   several requests in turn.
//! - [`control`]: the control socket's server ([`ControlSocket`], driven by
//!   a [`ControlHandler`]). The client ([`request`], blocking) and the human
//!   rendering of a status report ([`render_status_table`]) are steer-api's,
//!   re-exported here.
//! - [`metrics`]: steer's Prometheus metrics, encoded from a
//!   [`MetricsSnapshot`] ([`render_metrics`]), and their loopback-only HTTP
//!   listener ([`bind_metrics`], then [`serve_metrics`]).
//!
//! Nothing here touches BPF maps or the configuration: the daemon implements
//! [`ControlHandler`] and [`MetricsSource`] over its own state.

pub mod control;
pub mod metrics;
pub mod protocol;

pub use control::{
    serve_control, ControlHandler, ControlSocket, HandlerFuture, ReadOnlyGroup, MAX_CONNECTIONS,
};
pub use metrics::{
    bind_metrics, render_metrics, serve_metrics, HistogramSnapshot, MetricsListener,
    MetricsSnapshot, MetricsSource, CONTENT_TYPE, MAX_METRICS_CONNECTIONS,
};
pub use protocol::{
    Affinity, BackendStatus, Health, InterfaceStatus, RegionMeasure, RegionShare, Request,
    Response, ServiceStatus, ShiftReport, StatusReport, TableStatus, MAX_REQUEST_BYTES,
};
pub use steer_api::{
    render_status_table, request, request_with_timeout, timeout_for, ClientError,
    MAX_RESPONSE_BYTES,
};
