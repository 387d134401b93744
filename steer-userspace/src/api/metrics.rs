//! Prometheus metrics: the text exposition format (version 0.0.4) and a
//! loopback-only HTTP listener that serves it at `GET /metrics`.
//!
//! [`MetricsWriter`] builds correctly escaped text; [`render_metrics`] turns a
//! [`StatusReport`] (plus drop counters and probe latencies) into steer's
//! metric families:
//!
//! | family | type | labels |
//! |---|---|---|
//! | `steer_vip_packets_total`, `steer_vip_bytes_total`, `steer_vip_new_flows_total` | counter | `service`, `vip` |
//! | `steer_backend_packets_total`, `steer_backend_bytes_total`, `steer_backend_new_flows_total` | counter | `service`, `backend`, `region` |
//! | `steer_backend_up`, `steer_backend_degraded`, `steer_backend_drained` | gauge (0/1) | `service`, `backend`, `region` |
//! | `steer_drops_total` | counter | `reason` |
//! | `steer_conntrack_insert_failures_total` | counter | — |
//! | `steer_health_probe_duration_seconds` | histogram | — |
//! | `steer_reloads_total`, `steer_reload_failures_total` | counter | — |
//! | `steer_table_generation` | gauge | — |
//!
//! `steer_backend_up` is 1 unless the backend's health is `down` (so an
//! unchecked or degraded backend is up). The backend gauges carry `service`
//! because a backend serving two services is checked, and can be healthy,
//! per service; without it the same series would appear twice.

use std::fmt::Write as _;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing::{debug, info, warn};

use super::control::wait_shutdown;
use super::protocol::{BackendStatus, ServiceStatus, StatusReport, HEALTH_DEGRADED, HEALTH_DOWN};

/// `Content-Type` of a `/metrics` answer.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4";
/// Largest HTTP request head read.
const MAX_HEAD_BYTES: usize = 8192;
/// Everything about one HTTP connection must be done within this.
const CONNECTION_TIMEOUT: Duration = Duration::from_secs(10);

/// The labels of one sample: `(name, value)` pairs.
pub type Labels<'a> = &'a [(&'a str, &'a str)];

/// A histogram's data as [`MetricsWriter::histogram`] takes it: `(buckets as
/// (upper bound, cumulative count), sum, count)`.
pub type HistogramData<'a> = (&'a [(f64, u64)], f64, u64);

/// Produces the `/metrics` text on each scrape.
pub trait MetricsSource: Send + Sync + 'static {
    fn render(&self) -> String;
}

impl<F> MetricsSource for F
where
    F: Fn() -> String + Send + Sync + 'static,
{
    fn render(&self) -> String {
        self()
    }
}

// ---------------------------------------------------------------------------
// Text format
// ---------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Counter,
    Gauge,
    Histogram,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }
}

#[derive(Debug)]
struct Family {
    name: String,
    help: String,
    kind: Kind,
    samples: String,
}

/// Builds text in the Prometheus exposition format 0.0.4.
///
/// Each family gets its `# HELP` and `# TYPE` lines once, followed by all of
/// its samples, in the order the families were first written; writing a
/// family again adds samples to it. Label values and help text are escaped.
///
/// ```
/// use steer::api::MetricsWriter;
/// let mut w = MetricsWriter::new();
/// w.counter("x_total", "Xs.", &[(&[("a", "1")], 3)]);
/// assert_eq!(w.finish(), "# HELP x_total Xs.\n# TYPE x_total counter\nx_total{a=\"1\"} 3\n");
/// ```
#[derive(Debug, Default)]
pub struct MetricsWriter {
    families: Vec<Family>,
}

impl MetricsWriter {
    pub fn new() -> MetricsWriter {
        MetricsWriter::default()
    }

    /// Adds a counter family (or samples to it): one sample per
    /// `(labels, value)`.
    pub fn counter(&mut self, name: &str, help: &str, samples: &[(Labels<'_>, u64)]) -> &mut Self {
        if let Some(out) = self.family(name, help, Kind::Counter) {
            for (labels, value) in samples {
                sample(out, name, labels, None, &value.to_string());
            }
        }
        self
    }

    /// Adds a gauge family (or samples to it).
    pub fn gauge(&mut self, name: &str, help: &str, samples: &[(Labels<'_>, f64)]) -> &mut Self {
        if let Some(out) = self.family(name, help, Kind::Gauge) {
            for (labels, value) in samples {
                sample(out, name, labels, None, &float(*value));
            }
        }
        self
    }

    /// Adds one histogram with `labels` to the family `name`: a
    /// `name_bucket{le="..."}` line per bucket (`buckets` are `(upper bound,
    /// cumulative count)` in increasing order), a `le="+Inf"` bucket with
    /// `count` unless `buckets` already ends with one, then `name_sum` and
    /// `name_count`.
    pub fn histogram(
        &mut self,
        name: &str,
        help: &str,
        labels: Labels<'_>,
        buckets: &[(f64, u64)],
        sum: f64,
        count: u64,
    ) -> &mut Self {
        debug_assert!(
            labels.iter().all(|(k, _)| *k != "le"),
            "`le` is reserved in histograms"
        );
        if let Some(out) = self.family(name, help, Kind::Histogram) {
            let bucket = format!("{name}_bucket");
            for (le, cumulative) in buckets {
                sample(
                    out,
                    &bucket,
                    labels,
                    Some(&float(*le)),
                    &cumulative.to_string(),
                );
            }
            if !buckets.last().is_some_and(|(le, _)| *le == f64::INFINITY) {
                sample(out, &bucket, labels, Some("+Inf"), &count.to_string());
            }
            sample(out, &format!("{name}_sum"), labels, None, &float(sum));
            sample(
                out,
                &format!("{name}_count"),
                labels,
                None,
                &count.to_string(),
            );
        }
        self
    }

    /// The text: every family, each line ending with a newline.
    pub fn finish(self) -> String {
        let mut out = String::new();
        for f in &self.families {
            let _ = writeln!(out, "# HELP {} {}", f.name, escape_help(&f.help));
            let _ = writeln!(out, "# TYPE {} {}", f.name, f.kind.as_str());
            out.push_str(&f.samples);
        }
        out
    }

    /// The sample text of family `name`, created if new. `None` (and a
    /// warning) if `name` was already written as another type.
    fn family(&mut self, name: &str, help: &str, kind: Kind) -> Option<&mut String> {
        debug_assert!(valid_name(name, true), "bad metric name {name:?}");
        let i = match self.families.iter().position(|f| f.name == name) {
            Some(i) => i,
            None => {
                self.families.push(Family {
                    name: name.to_string(),
                    help: help.to_string(),
                    kind,
                    samples: String::new(),
                });
                self.families.len() - 1
            }
        };
        let family = &mut self.families[i];
        if family.kind != kind {
            debug_assert!(false, "metric {name} written as two types");
            warn!(
                metric = name,
                "metric written as two types; samples dropped"
            );
            return None;
        }
        Some(&mut family.samples)
    }
}

/// Appends `name{labels,le="..."} value\n`.
fn sample(out: &mut String, name: &str, labels: Labels<'_>, le: Option<&str>, value: &str) {
    out.push_str(name);
    let le = le.map(|le| ("le", le));
    let mut all = labels.iter().copied().chain(le).peekable();
    if all.peek().is_some() {
        out.push('{');
        for (i, (key, value)) in all.enumerate() {
            debug_assert!(valid_name(key, false), "bad label name {key:?}");
            if i > 0 {
                out.push(',');
            }
            out.push_str(key);
            out.push_str("=\"");
            escape_label_value(out, value);
            out.push('"');
        }
        out.push('}');
    }
    out.push(' ');
    out.push_str(value);
    out.push('\n');
}

fn escape_label_value(out: &mut String, value: &str) {
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

fn escape_help(help: &str) -> String {
    help.replace('\\', "\\\\").replace('\n', "\\n")
}

/// A float as Prometheus writes it: `+Inf`, `-Inf`, `NaN`, else the shortest
/// decimal text that reads back as the same number (`1`, `0.25`,
/// `0.0000001`).
fn float(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v == f64::INFINITY {
        "+Inf".into()
    } else if v == f64::NEG_INFINITY {
        "-Inf".into()
    } else {
        v.to_string()
    }
}

/// `[a-zA-Z_:][a-zA-Z0-9_:]*` for metric names; label names have no `:`.
fn valid_name(name: &str, metric: bool) -> bool {
    let ok = |c: char, first: bool| {
        c.is_ascii_alphabetic()
            || c == '_'
            || (metric && c == ':')
            || (!first && c.is_ascii_digit())
    };
    let mut chars = name.chars();
    chars.next().is_some_and(|c| ok(c, true)) && chars.all(|c| ok(c, false))
}

// ---------------------------------------------------------------------------
// steer's families
// ---------------------------------------------------------------------------

/// Renders steer's metrics (see the module documentation for the families).
///
/// `drops` are `(reason, packets)` from the XDP program's drop counters;
/// `ct_insert_failures` is its count of new flows whose conntrack insert
/// failed; `health_latency` is the probe duration histogram as `(buckets, sum,
/// count)`, with buckets as [`MetricsWriter::histogram`] takes them. Without
/// it the histogram family is left out.
pub fn render_metrics(
    report: &StatusReport,
    drops: &[(&str, u64)],
    ct_insert_failures: u64,
    health_latency: Option<HistogramData<'_>>,
) -> String {
    let mut w = MetricsWriter::new();

    let vip_labels: Vec<[(&str, &str); 2]> = report
        .services
        .iter()
        .map(|s| [("service", s.name.as_str()), ("vip", s.vip.as_str())])
        .collect();
    let vip_counter =
        |w: &mut MetricsWriter, name: &str, help: &str, value: fn(&ServiceStatus) -> u64| {
            let samples: Vec<(Labels<'_>, u64)> = vip_labels
                .iter()
                .zip(&report.services)
                .map(|(l, s)| (&l[..], value(s)))
                .collect();
            w.counter(name, help, &samples);
        };
    vip_counter(
        &mut w,
        "steer_vip_packets_total",
        "Packets received for a service's VIP.",
        |s| s.packets,
    );
    vip_counter(
        &mut w,
        "steer_vip_bytes_total",
        "Bytes received for a service's VIP.",
        |s| s.bytes,
    );
    vip_counter(
        &mut w,
        "steer_vip_new_flows_total",
        "New flows (backend selections) for a service's VIP.",
        |s| s.new_flows,
    );

    let backends: Vec<_> = report
        .services
        .iter()
        .flat_map(|s| s.backends.iter().map(move |b| (s, b)))
        .collect();
    let backend_labels: Vec<[(&str, &str); 3]> = backends
        .iter()
        .map(|(s, b)| {
            [
                ("service", s.name.as_str()),
                ("backend", b.name.as_str()),
                ("region", b.region.as_str()),
            ]
        })
        .collect();
    let backend_samples = |value: &dyn Fn(&BackendStatus) -> u64| {
        backend_labels
            .iter()
            .zip(&backends)
            .map(|(l, (_, b))| (&l[..], value(b)))
            .collect::<Vec<(Labels<'_>, u64)>>()
    };
    w.counter(
        "steer_backend_packets_total",
        "Packets sent to a backend of a service.",
        &backend_samples(&|b| b.packets),
    );
    w.counter(
        "steer_backend_bytes_total",
        "Bytes sent to a backend of a service.",
        &backend_samples(&|b| b.bytes),
    );
    w.counter(
        "steer_backend_new_flows_total",
        "New flows assigned to a backend of a service.",
        &backend_samples(&|b| b.new_flows),
    );
    fn flag(samples: Vec<(Labels<'_>, u64)>) -> Vec<(Labels<'_>, f64)> {
        samples
            .into_iter()
            .map(|(l, v)| (l, if v == 0 { 0.0 } else { 1.0 }))
            .collect()
    }
    w.gauge(
        "steer_backend_up",
        "Whether a backend of a service passes its health checks (1 unless down; \
         unchecked and degraded backends are up).",
        &flag(backend_samples(&|b| u64::from(b.health != HEALTH_DOWN))),
    );
    w.gauge(
        "steer_backend_degraded",
        "Whether a backend of a service reports itself degraded.",
        &flag(backend_samples(&|b| u64::from(b.health == HEALTH_DEGRADED))),
    );
    w.gauge(
        "steer_backend_drained",
        "Whether a backend was drained by an operator.",
        &flag(backend_samples(&|b| u64::from(b.drained))),
    );

    let drop_labels: Vec<[(&str, &str); 1]> = drops.iter().map(|(r, _)| [("reason", *r)]).collect();
    let drop_samples: Vec<(Labels<'_>, u64)> = drop_labels
        .iter()
        .zip(drops)
        .map(|(l, (_, v))| (&l[..], *v))
        .collect();
    w.counter(
        "steer_drops_total",
        "Packets dropped by the XDP program, by reason.",
        &drop_samples,
    );
    w.counter(
        "steer_conntrack_insert_failures_total",
        "New flows whose conntrack insert failed (still forwarded; their next packet \
         is selected again).",
        &[(&[], ct_insert_failures)],
    );

    if let Some((buckets, sum, count)) = health_latency {
        w.histogram(
            "steer_health_probe_duration_seconds",
            "Duration of health check probes.",
            &[],
            buckets,
            sum,
            count,
        );
    }

    w.counter(
        "steer_reloads_total",
        "Successful config reloads.",
        &[(&[], report.reloads)],
    );
    w.counter(
        "steer_reload_failures_total",
        "Failed config reloads.",
        &[(&[], report.reload_failures)],
    );
    // Exact as a float up to 2^53 generations.
    let generation = report.generation as f64;
    w.gauge(
        "steer_table_generation",
        "Generation of the applied config and selection tables.",
        &[(&[], generation)],
    );
    w.finish()
}

// ---------------------------------------------------------------------------
// HTTP
// ---------------------------------------------------------------------------

/// Serves `GET /metrics` on `addr` until `shutdown` becomes `true` (or its
/// sender is dropped). `addr` must be a loopback address: the metrics are
/// served without authentication.
pub async fn serve_metrics(
    addr: SocketAddr,
    source: Arc<dyn MetricsSource>,
    shutdown: watch::Receiver<bool>,
) -> io::Result<()> {
    check_loopback(addr)?;
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|e| io::Error::new(e.kind(), format!("binding metrics listener {addr}: {e}")))?;
    serve_metrics_on(listener, source, shutdown).await
}

fn check_loopback(addr: SocketAddr) -> io::Result<()> {
    if addr.ip().is_loopback() {
        Ok(())
    } else {
        Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "metrics listen address {addr} is not a loopback address \
                 (metrics are served without authentication)"
            ),
        ))
    }
}

/// [`serve_metrics`] on a listener bound by the caller (to `127.0.0.1:0` in
/// tests, say). Its address must be a loopback address.
///
/// `GET /metrics` (a query string is ignored) is answered with 200 and
/// [`CONTENT_TYPE`], any other method or path with 404, an unreadable request
/// with 400. One request per connection.
pub async fn serve_metrics_on(
    listener: TcpListener,
    source: Arc<dyn MetricsSource>,
    mut shutdown: watch::Receiver<bool>,
) -> io::Result<()> {
    let local = listener.local_addr()?;
    check_loopback(local)?;
    info!(listen = %local, "metrics listening");
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            () = wait_shutdown(&mut shutdown) => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let source = Arc::clone(&source);
                    conns.spawn(async move {
                        match tokio::time::timeout(CONNECTION_TIMEOUT, serve_http(stream, source)).await {
                            Ok(Ok(())) => {}
                            Ok(Err(e)) => debug!(%peer, error = %e, "metrics connection failed"),
                            Err(_) => debug!(%peer, "metrics connection timed out"),
                        }
                    });
                }
                Err(e) => {
                    warn!(error = %e, "metrics accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
    conns.abort_all();
    Ok(())
}

async fn serve_http(mut stream: TcpStream, source: Arc<dyn MetricsSource>) -> io::Result<()> {
    let head = read_head(&mut stream).await?;
    let response = match request_line(&head) {
        None => http_response(400, "Bad Request", "text/plain", "bad request\n"),
        Some(("GET", "/metrics")) => {
            match tokio::task::spawn_blocking(move || source.render()).await {
                Ok(body) => http_response(200, "OK", CONTENT_TYPE, &body),
                Err(e) => {
                    warn!(error = %e, "rendering metrics failed");
                    http_response(
                        500,
                        "Internal Server Error",
                        "text/plain",
                        "rendering metrics failed\n",
                    )
                }
            }
        }
        Some(_) => http_response(
            404,
            "Not Found",
            "text/plain",
            "not found: steer serves GET /metrics only\n",
        ),
    };
    stream.write_all(&response).await?;
    stream.shutdown().await
}

/// Reads until the end of the request head (an empty line), end of stream, or
/// [`MAX_HEAD_BYTES`].
async fn read_head(stream: &mut TcpStream) -> io::Result<Vec<u8>> {
    let mut head = Vec::new();
    let mut chunk = [0u8; 1024];
    while head.len() < MAX_HEAD_BYTES {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&chunk[..n]);
        if head.windows(4).any(|w| w == b"\r\n\r\n") || head.windows(2).any(|w| w == b"\n\n") {
            break;
        }
    }
    Ok(head)
}

/// `(method, path)` from the first line, the query string removed.
fn request_line(head: &[u8]) -> Option<(&str, &str)> {
    let end = head.iter().position(|&b| b == b'\n')?;
    let line = std::str::from_utf8(&head[..end])
        .ok()?
        .trim_end_matches('\r');
    let mut parts = line.split(' ');
    let method = parts.next()?;
    let target = parts.next()?;
    let version = parts.next()?;
    if parts.next().is_some() || method.is_empty() || !version.starts_with("HTTP/1.") {
        return None;
    }
    let path = target.split_once('?').map_or(target, |(p, _)| p);
    Some((method, path))
}

fn http_response(code: u16, reason: &str, content_type: &str, body: &str) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 {code} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(body.as_bytes());
    out
}

// ---------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::protocol::{BackendStatus, ServiceStatus};

    /// Compares line by line, so that a failure names the first differing line.
    fn assert_lines(actual: &str, expected: &str) {
        let a: Vec<&str> = actual.lines().collect();
        let e: Vec<&str> = expected.lines().collect();
        for (i, (a, e)) in a.iter().zip(&e).enumerate() {
            assert_eq!(a, e, "line {}", i + 1);
        }
        assert_eq!(a.len(), e.len(), "line count:\n{actual}");
        assert_eq!(actual, expected);
    }

    #[test]
    fn writer_escapes_and_groups_families() {
        let mut w = MetricsWriter::new();
        w.counter(
            "a_total",
            "Help with \\ and\nnewline \"quoted\".",
            &[
                (&[("k", "plain")], 1),
                (&[("k", "back\\slash"), ("j", "q\"uote")], 2),
                (&[("k", "new\nline")], 3),
            ],
        );
        w.gauge("b", "A gauge.", &[(&[], 0.5), (&[("x", "y")], -2.0)]);
        // More samples for a_total land in its family, not after b.
        w.counter(
            "a_total",
            "ignored",
            &[(&[("k", "")], 18_446_744_073_709_551_615)],
        );
        w.gauge(
            "c",
            "Specials.",
            &[
                (&[("v", "inf")], f64::INFINITY),
                (&[("v", "-inf")], f64::NEG_INFINITY),
                (&[("v", "nan")], f64::NAN),
                (&[("v", "small")], 1e-7),
                (&[("v", "zürich")], 3.0),
            ],
        );
        w.counter("empty_total", "No samples.", &[]);
        let expected = r#"# HELP a_total Help with \\ and\nnewline "quoted".
# TYPE a_total counter
a_total{k="plain"} 1
a_total{k="back\\slash",j="q\"uote"} 2
a_total{k="new\nline"} 3
a_total{k=""} 18446744073709551615
# HELP b A gauge.
# TYPE b gauge
b 0.5
b{x="y"} -2
# HELP c Specials.
# TYPE c gauge
c{v="inf"} +Inf
c{v="-inf"} -Inf
c{v="nan"} NaN
c{v="small"} 0.0000001
c{v="zürich"} 3
# HELP empty_total No samples.
# TYPE empty_total counter
"#;
        assert_lines(&w.finish(), expected);
    }

    #[test]
    fn writer_histograms() {
        let mut w = MetricsWriter::new();
        w.histogram(
            "lat_seconds",
            "Latency.",
            &[("check", "web")],
            &[(0.005, 1), (0.25, 4), (1.0, 6)],
            2.75,
            7,
        );
        // Buckets already ending in +Inf get no second one.
        w.histogram(
            "lat_seconds",
            "Latency.",
            &[("check", "d\"b")],
            &[(0.1, 0), (f64::INFINITY, 2)],
            0.5,
            2,
        );
        w.histogram("bare", "No labels, no buckets.", &[], &[], 0.0, 0);
        let expected = r#"# HELP lat_seconds Latency.
# TYPE lat_seconds histogram
lat_seconds_bucket{check="web",le="0.005"} 1
lat_seconds_bucket{check="web",le="0.25"} 4
lat_seconds_bucket{check="web",le="1"} 6
lat_seconds_bucket{check="web",le="+Inf"} 7
lat_seconds_sum{check="web"} 2.75
lat_seconds_count{check="web"} 7
lat_seconds_bucket{check="d\"b",le="0.1"} 0
lat_seconds_bucket{check="d\"b",le="+Inf"} 2
lat_seconds_sum{check="d\"b"} 0.5
lat_seconds_count{check="d\"b"} 2
# HELP bare No labels, no buckets.
# TYPE bare histogram
bare_bucket{le="+Inf"} 0
bare_sum 0
bare_count 0
"#;
        assert_lines(&w.finish(), expected);
    }

    #[test]
    fn names() {
        assert!(valid_name("steer_vip_packets_total", true));
        assert!(valid_name("a:b", true));
        assert!(!valid_name("a:b", false));
        assert!(!valid_name("1a", true));
        assert!(!valid_name("", false));
        assert!(!valid_name("a-b", true));
    }

    fn report() -> StatusReport {
        StatusReport {
            generation: 12,
            config_path: "/etc/steer/steer.toml".into(),
            reloads: 3,
            reload_failures: 1,
            last_reload_error: None,
            services: vec![
                ServiceStatus {
                    name: "web".into(),
                    vip: "203.0.113.10:80/tcp".into(),
                    affinity: crate::api::Affinity::Flow,
                    packets: 100,
                    bytes: 15000,
                    new_flows: 10,
                    backends: vec![
                        BackendStatus {
                            name: "web-1".into(),
                            address: "10.0.0.1".into(),
                            region: "eu".into(),
                            weight: 100,
                            effective_weight: 100,
                            health: crate::api::Health::Up,
                            packets: 60,
                            bytes: 9000,
                            new_flows: 6,
                            ..BackendStatus::default()
                        },
                        BackendStatus {
                            name: "we\"b\\2".into(),
                            address: "10.0.0.2".into(),
                            region: "us\neast".into(),
                            weight: 100,
                            health: crate::api::Health::Down,
                            drained: true,
                            packets: 40,
                            bytes: 6000,
                            new_flows: 4,
                            ..BackendStatus::default()
                        },
                    ],
                },
                ServiceStatus {
                    name: "dns".into(),
                    vip: "[2001:db8::53]:53/udp".into(),
                    affinity: crate::api::Affinity::Client,
                    packets: 7,
                    bytes: 700,
                    new_flows: 7,
                    backends: vec![
                        BackendStatus {
                            name: "dns-1".into(),
                            region: "eu".into(),
                            health: crate::api::Health::Degraded,
                            packets: 5,
                            bytes: 500,
                            new_flows: 5,
                            ..BackendStatus::default()
                        },
                        BackendStatus {
                            name: "dns-2".into(),
                            region: "eu".into(),
                            health: crate::api::Health::Unchecked,
                            packets: 2,
                            bytes: 200,
                            new_flows: 2,
                            ..BackendStatus::default()
                        },
                    ],
                },
            ],
        }
    }

    const EXPECTED: &str = r#"# HELP steer_vip_packets_total Packets received for a service's VIP.
# TYPE steer_vip_packets_total counter
steer_vip_packets_total{service="web",vip="203.0.113.10:80/tcp"} 100
steer_vip_packets_total{service="dns",vip="[2001:db8::53]:53/udp"} 7
# HELP steer_vip_bytes_total Bytes received for a service's VIP.
# TYPE steer_vip_bytes_total counter
steer_vip_bytes_total{service="web",vip="203.0.113.10:80/tcp"} 15000
steer_vip_bytes_total{service="dns",vip="[2001:db8::53]:53/udp"} 700
# HELP steer_vip_new_flows_total New flows (backend selections) for a service's VIP.
# TYPE steer_vip_new_flows_total counter
steer_vip_new_flows_total{service="web",vip="203.0.113.10:80/tcp"} 10
steer_vip_new_flows_total{service="dns",vip="[2001:db8::53]:53/udp"} 7
# HELP steer_backend_packets_total Packets sent to a backend of a service.
# TYPE steer_backend_packets_total counter
steer_backend_packets_total{service="web",backend="web-1",region="eu"} 60
steer_backend_packets_total{service="web",backend="we\"b\\2",region="us\neast"} 40
steer_backend_packets_total{service="dns",backend="dns-1",region="eu"} 5
steer_backend_packets_total{service="dns",backend="dns-2",region="eu"} 2
# HELP steer_backend_bytes_total Bytes sent to a backend of a service.
# TYPE steer_backend_bytes_total counter
steer_backend_bytes_total{service="web",backend="web-1",region="eu"} 9000
steer_backend_bytes_total{service="web",backend="we\"b\\2",region="us\neast"} 6000
steer_backend_bytes_total{service="dns",backend="dns-1",region="eu"} 500
steer_backend_bytes_total{service="dns",backend="dns-2",region="eu"} 200
# HELP steer_backend_new_flows_total New flows assigned to a backend of a service.
# TYPE steer_backend_new_flows_total counter
steer_backend_new_flows_total{service="web",backend="web-1",region="eu"} 6
steer_backend_new_flows_total{service="web",backend="we\"b\\2",region="us\neast"} 4
steer_backend_new_flows_total{service="dns",backend="dns-1",region="eu"} 5
steer_backend_new_flows_total{service="dns",backend="dns-2",region="eu"} 2
# HELP steer_backend_up Whether a backend of a service passes its health checks (1 unless down; unchecked and degraded backends are up).
# TYPE steer_backend_up gauge
steer_backend_up{service="web",backend="web-1",region="eu"} 1
steer_backend_up{service="web",backend="we\"b\\2",region="us\neast"} 0
steer_backend_up{service="dns",backend="dns-1",region="eu"} 1
steer_backend_up{service="dns",backend="dns-2",region="eu"} 1
# HELP steer_backend_degraded Whether a backend of a service reports itself degraded.
# TYPE steer_backend_degraded gauge
steer_backend_degraded{service="web",backend="web-1",region="eu"} 0
steer_backend_degraded{service="web",backend="we\"b\\2",region="us\neast"} 0
steer_backend_degraded{service="dns",backend="dns-1",region="eu"} 1
steer_backend_degraded{service="dns",backend="dns-2",region="eu"} 0
# HELP steer_backend_drained Whether a backend was drained by an operator.
# TYPE steer_backend_drained gauge
steer_backend_drained{service="web",backend="web-1",region="eu"} 0
steer_backend_drained{service="web",backend="we\"b\\2",region="us\neast"} 1
steer_backend_drained{service="dns",backend="dns-1",region="eu"} 0
steer_backend_drained{service="dns",backend="dns-2",region="eu"} 0
# HELP steer_drops_total Packets dropped by the XDP program, by reason.
# TYPE steer_drops_total counter
steer_drops_total{reason="fragment"} 3
steer_drops_total{reason="too_big"} 0
# HELP steer_conntrack_insert_failures_total New flows whose conntrack insert failed (still forwarded; their next packet is selected again).
# TYPE steer_conntrack_insert_failures_total counter
steer_conntrack_insert_failures_total 5
# HELP steer_health_probe_duration_seconds Duration of health check probes.
# TYPE steer_health_probe_duration_seconds histogram
steer_health_probe_duration_seconds_bucket{le="0.001"} 2
steer_health_probe_duration_seconds_bucket{le="0.01"} 9
steer_health_probe_duration_seconds_bucket{le="0.1"} 10
steer_health_probe_duration_seconds_bucket{le="+Inf"} 11
steer_health_probe_duration_seconds_sum 0.625
steer_health_probe_duration_seconds_count 11
# HELP steer_reloads_total Successful config reloads.
# TYPE steer_reloads_total counter
steer_reloads_total 3
# HELP steer_reload_failures_total Failed config reloads.
# TYPE steer_reload_failures_total counter
steer_reload_failures_total 1
# HELP steer_table_generation Generation of the applied config and selection tables.
# TYPE steer_table_generation gauge
steer_table_generation 12
"#;

    fn render_sample() -> String {
        render_metrics(
            &report(),
            &[("fragment", 3), ("too_big", 0)],
            5,
            Some((&[(0.001, 2), (0.01, 9), (0.1, 10)], 0.625, 11)),
        )
    }

    #[test]
    fn steer_families() {
        assert_lines(&render_sample(), EXPECTED);
    }

    #[test]
    fn steer_families_when_empty() {
        let expected = r#"# HELP steer_vip_packets_total Packets received for a service's VIP.
# TYPE steer_vip_packets_total counter
# HELP steer_vip_bytes_total Bytes received for a service's VIP.
# TYPE steer_vip_bytes_total counter
# HELP steer_vip_new_flows_total New flows (backend selections) for a service's VIP.
# TYPE steer_vip_new_flows_total counter
# HELP steer_backend_packets_total Packets sent to a backend of a service.
# TYPE steer_backend_packets_total counter
# HELP steer_backend_bytes_total Bytes sent to a backend of a service.
# TYPE steer_backend_bytes_total counter
# HELP steer_backend_new_flows_total New flows assigned to a backend of a service.
# TYPE steer_backend_new_flows_total counter
# HELP steer_backend_up Whether a backend of a service passes its health checks (1 unless down; unchecked and degraded backends are up).
# TYPE steer_backend_up gauge
# HELP steer_backend_degraded Whether a backend of a service reports itself degraded.
# TYPE steer_backend_degraded gauge
# HELP steer_backend_drained Whether a backend was drained by an operator.
# TYPE steer_backend_drained gauge
# HELP steer_drops_total Packets dropped by the XDP program, by reason.
# TYPE steer_drops_total counter
# HELP steer_conntrack_insert_failures_total New flows whose conntrack insert failed (still forwarded; their next packet is selected again).
# TYPE steer_conntrack_insert_failures_total counter
steer_conntrack_insert_failures_total 0
# HELP steer_reloads_total Successful config reloads.
# TYPE steer_reloads_total counter
steer_reloads_total 0
# HELP steer_reload_failures_total Failed config reloads.
# TYPE steer_reload_failures_total counter
steer_reload_failures_total 0
# HELP steer_table_generation Generation of the applied config and selection tables.
# TYPE steer_table_generation gauge
steer_table_generation 0
"#;
        assert_lines(
            &render_metrics(&StatusReport::default(), &[], 0, None),
            expected,
        );
    }

    // --- HTTP ----------------------------------------------------------------

    async fn bounded<F: std::future::Future>(body: F) -> F::Output {
        tokio::time::timeout(Duration::from_secs(30), body)
            .await
            .expect("test timed out")
    }

    /// Sends `request` raw and returns (status line, headers, body).
    async fn fetch(addr: SocketAddr, request: &str) -> (String, Vec<String>, String) {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await.unwrap();
        let text = String::from_utf8(raw).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").expect("no end of head");
        let mut lines = head.split("\r\n");
        let status = lines.next().unwrap().to_string();
        (status, lines.map(String::from).collect(), body.to_string())
    }

    #[tokio::test]
    async fn http_serves_metrics() {
        bounded(async {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let (tx, rx) = watch::channel(false);
            let source: Arc<dyn MetricsSource> = Arc::new(render_sample);
            let server = tokio::spawn(serve_metrics_on(listener, source, rx));

            let (status, headers, body) = fetch(
                addr,
                "GET /metrics HTTP/1.1\r\nHost: localhost\r\nAccept: */*\r\n\r\n",
            )
            .await;
            assert_eq!(status, "HTTP/1.1 200 OK");
            assert_eq!(
                headers,
                [
                    "Content-Type: text/plain; version=0.0.4".to_string(),
                    format!("Content-Length: {}", EXPECTED.len()),
                    "Connection: close".to_string(),
                ]
            );
            assert_lines(&body, EXPECTED);

            // A query string is ignored; HTTP/1.0 and bare newlines work.
            let (status, _, body) = fetch(addr, "GET /metrics?x=1 HTTP/1.0\n\n").await;
            assert_eq!(status, "HTTP/1.1 200 OK");
            assert_eq!(body, EXPECTED);

            for other in [
                "GET / HTTP/1.1\r\n\r\n",
                "GET /metrics/ HTTP/1.1\r\n\r\n",
                "POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n",
                "HEAD /metrics HTTP/1.1\r\n\r\n",
            ] {
                let (status, headers, body) = fetch(addr, other).await;
                assert_eq!(status, "HTTP/1.1 404 Not Found", "{other:?}");
                assert_eq!(headers[0], "Content-Type: text/plain");
                assert_eq!(body, "not found: steer serves GET /metrics only\n");
            }
            for bad in ["hello\r\n\r\n", "GET /metrics\r\n\r\n", "\r\n\r\n"] {
                let (status, _, _) = fetch(addr, bad).await;
                assert_eq!(status, "HTTP/1.1 400 Bad Request", "{bad:?}");
            }

            tx.send(true).unwrap();
            tokio::time::timeout(Duration::from_secs(5), server)
                .await
                .expect("metrics server did not stop")
                .unwrap()
                .unwrap();
            assert!(TcpStream::connect(addr).await.is_err());
        })
        .await;
    }

    #[tokio::test]
    async fn http_refuses_non_loopback() {
        bounded(async {
            let (_tx, rx) = watch::channel(false);
            let source: Arc<dyn MetricsSource> = Arc::new(String::new);
            let err = serve_metrics(
                "0.0.0.0:0".parse().unwrap(),
                Arc::clone(&source),
                rx.clone(),
            )
            .await
            .unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
            assert_eq!(
                err.to_string(),
                "metrics listen address 0.0.0.0:0 is not a loopback address \
                 (metrics are served without authentication)"
            );
            let err = serve_metrics("192.0.2.1:9477".parse().unwrap(), source, rx)
                .await
                .unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
        })
        .await;
    }

    #[tokio::test]
    async fn http_stops_when_the_sender_is_dropped() {
        bounded(async {
            let (tx, rx) = watch::channel(false);
            let source: Arc<dyn MetricsSource> = Arc::new(|| "x 1\n".to_string());
            let server = tokio::spawn(serve_metrics("127.0.0.1:0".parse().unwrap(), source, rx));
            tokio::time::sleep(Duration::from_millis(50)).await;
            assert!(!server.is_finished());
            drop(tx);
            tokio::time::timeout(Duration::from_secs(5), server)
                .await
                .expect("metrics server did not stop")
                .unwrap()
                .unwrap();
        })
        .await;
    }
}
