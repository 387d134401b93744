//! Prometheus metrics: steer's metric families, encoded by
//! [`prometheus_client`] from a [`MetricsSnapshot`] on each scrape, and a
//! loopback-only HTTP listener ([`http`]) that serves them at `/metrics`.
//!
//! The text is the Prometheus exposition format 0.0.4 ([`CONTENT_TYPE`]):
//!
//! | family | type | labels |
//! |---|---|---|
//! | `steer_vip_packets_total`, `steer_vip_bytes_total`, `steer_vip_new_flows_total` | counter | `service`, `vip` |
//! | `steer_backend_packets_total`, `steer_backend_bytes_total`, `steer_backend_new_flows_total` | counter | `service`, `backend`, `region` |
//! | `steer_backend_repeated_syns_total`, `steer_backend_handshakes_total` | counter | `service`, `backend`, `region` |
//! | `steer_backend_up`, `steer_backend_degraded`, `steer_backend_drained`, `steer_backend_ejected` | gauge (0/1) | `service`, `backend`, `region` |
//! | `steer_backend_weight_ratio` (below 1 in slow start) | gauge | `service`, `backend`, `region` |
//! | `steer_drops_total` | counter | `reason` |
//! | `steer_conntrack_insert_failures_total` | counter | — |
//! | `steer_pmtu_replies_total` | counter | — |
//! | `steer_health_probe_duration_seconds` | histogram | — |
//! | `steer_probe_failures_total` | counter | `backend`, `reason` |
//! | `steer_reloads_total`, `steer_reload_failures_total` | counter | — |
//! | `steer_config_last_reload_successful` | gauge (0/1) | — |
//! | `steer_config_last_reload_success_timestamp_seconds` | gauge | — |
//! | `steer_table_generation` | gauge | — |
//! | `steer_build_info` | gauge (always 1) | `version` |
//!
//! `steer_backend_up` is 1 unless the backend's health is `down` (so an
//! unchecked or degraded backend is up). The backend gauges carry `service`
//! because a backend serving two services is checked, and can be healthy,
//! per service; without it the same series would appear twice.

pub mod http;

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{
    prometheus_text, DescriptorEncoder, EncodeGaugeValue, EncodeLabelSet, EncodeMetric, NoLabelSet,
};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use super::protocol::{BackendStatus, Health, ServiceStatus, StatusReport};

pub use http::{bind_metrics, serve_metrics, MetricsListener, MAX_METRICS_CONNECTIONS};

/// `Content-Type` of a `/metrics` answer: the Prometheus text format 0.0.4.
pub const CONTENT_TYPE: &str = prometheus_text::CONTENT_TYPE;

/// Everything the metrics are made of, as read at one moment. The daemon
/// publishes one; each scrape encodes the latest.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MetricsSnapshot {
    /// Per-service and per-backend counters and state, reload counts and the
    /// table generation.
    pub report: StatusReport,
    /// `(reason, packets)` from the XDP program's drop counters.
    pub drops: Vec<(&'static str, u64)>,
    /// New flows whose conntrack insert failed.
    pub ct_insert_failures: u64,
    /// Health probe durations; `None` (no health monitor) leaves the
    /// histogram family out.
    pub probe_latency: Option<HistogramSnapshot>,
    /// Failed health probes: backend → reason → count.
    pub probe_failures: BTreeMap<String, BTreeMap<String, u64>>,
    /// Whether the last config load (at start or by a reload) succeeded.
    pub last_reload_successful: bool,
    /// When the config was last loaded successfully, in seconds since the
    /// Unix epoch.
    pub last_reload_success_timestamp_seconds: f64,
}

/// A histogram in the Prometheus layout: `buckets[i] = (le, n)` where `n`
/// counts the observations `<= le` (cumulative, so `n` never decreases along
/// the list, and `le` increases); it may end with `(f64::INFINITY, count)`.
/// `sum` is the sum of all observations, `count` their number.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HistogramSnapshot {
    pub buckets: Vec<(f64, u64)>,
    pub sum: f64,
    pub count: u64,
}

/// Gives the snapshot to encode on each scrape. It is called on a blocking
/// thread, but should only hand out the latest published snapshot.
pub trait MetricsSource: Send + Sync + 'static {
    fn snapshot(&self) -> Arc<MetricsSnapshot>;
}

impl<F> MetricsSource for F
where
    F: Fn() -> Arc<MetricsSnapshot> + Send + Sync + 'static,
{
    fn snapshot(&self) -> Arc<MetricsSnapshot> {
        self()
    }
}

/// The `/metrics` text of `snapshot` (see the module documentation for the
/// families), in the Prometheus text format 0.0.4.
pub fn render_metrics(snapshot: Arc<MetricsSnapshot>) -> String {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(SnapshotCollector(snapshot)));
    let mut out = String::new();
    // Writing to a String cannot fail, and the collector fails only when
    // its writer does.
    prometheus_text::encode(&mut out, &registry).expect("encoding metrics into a String");
    out
}

/// Encodes steer's families from one snapshot.
#[derive(Debug)]
struct SnapshotCollector(Arc<MetricsSnapshot>);

/// `name` without its `_total`: prometheus-client appends `_total` to
/// counter names, so `"steer_drops_total"` is registered as `"steer_drops"`
/// and appears on the wire as written here.
fn counter(name: &'static str) -> &'static str {
    name.strip_suffix("_total")
        .expect("counter names end with _total")
}

/// One counter family: a sample per `(labels, value)`.
fn counters<L: EncodeLabelSet>(
    enc: &mut DescriptorEncoder<'_>,
    name: &'static str,
    help: &str,
    samples: impl IntoIterator<Item = (L, u64)>,
) -> fmt::Result {
    let mut family = enc.encode_descriptor(counter(name), help, None, MetricType::Counter)?;
    for (labels, value) in samples {
        ConstCounter::new(value).encode(family.encode_family(&labels)?)?;
    }
    Ok(())
}

/// One gauge family: a sample per `(labels, value)`.
fn gauges<L, V>(
    enc: &mut DescriptorEncoder<'_>,
    name: &'static str,
    help: &str,
    samples: impl IntoIterator<Item = (L, V)>,
) -> fmt::Result
where
    L: EncodeLabelSet,
    V: EncodeGaugeValue + fmt::Debug,
{
    let mut family = enc.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (labels, value) in samples {
        ConstGauge::new(value).encode(family.encode_family(&labels)?)?;
    }
    Ok(())
}

/// The states of a staged shift, as `steer_shift_state` labels them.
const SHIFT_STATES: [&str; 5] = ["running", "paused", "completed", "rolled_back", "aborted"];

/// A sample per backend of each service, labelled `service`, `backend`,
/// `region`.
fn backend_samples<'a, T>(
    report: &'a StatusReport,
    value: impl Fn(&BackendStatus) -> T + Copy + 'a,
) -> impl Iterator<Item = ([(&'static str, &'a str); 3], T)> + 'a {
    report.services.iter().flat_map(move |s| {
        s.backends.iter().map(move |b| {
            (
                [
                    ("service", s.name.as_str()),
                    ("backend", b.name.as_str()),
                    ("region", b.region.as_str()),
                ],
                value(b),
            )
        })
    })
}

/// The label set of a family's only sample.
const NO_LABELS: [(&str, &str); 0] = [];

/// A 0/1 gauge value.
fn flag(b: bool) -> i64 {
    i64::from(b)
}

impl Collector for SnapshotCollector {
    fn encode(&self, mut enc: DescriptorEncoder<'_>) -> fmt::Result {
        let snap = &*self.0;
        let report = &snap.report;
        let enc = &mut enc;

        let vips = |value: fn(&ServiceStatus) -> u64| {
            report.services.iter().map(move |s| {
                (
                    [("service", s.name.as_str()), ("vip", s.vip.as_str())],
                    value(s),
                )
            })
        };
        counters(
            enc,
            "steer_vip_packets_total",
            "Packets received for a service's VIP.",
            vips(|s| s.packets),
        )?;
        counters(
            enc,
            "steer_vip_bytes_total",
            "Bytes received for a service's VIP.",
            vips(|s| s.bytes),
        )?;
        counters(
            enc,
            "steer_vip_new_flows_total",
            "New flows (backend selections) for a service's VIP.",
            vips(|s| s.new_flows),
        )?;

        let backends = |value: fn(&BackendStatus) -> u64| backend_samples(report, value);
        counters(
            enc,
            "steer_backend_packets_total",
            "Packets sent to a backend of a service.",
            backends(|b| b.packets),
        )?;
        counters(
            enc,
            "steer_backend_bytes_total",
            "Bytes sent to a backend of a service.",
            backends(|b| b.bytes),
        )?;
        counters(
            enc,
            "steer_backend_new_flows_total",
            "New flows assigned to a backend of a service.",
            backends(|b| b.new_flows),
        )?;
        counters(
            enc,
            "steer_backend_repeated_syns_total",
            "TCP SYNs a client repeated because the SYN sent to this backend of a service \
             went unanswered (flow-affinity TCP services).",
            backends(|b| b.repeated_syns),
        )?;
        counters(
            enc,
            "steer_backend_handshakes_total",
            "TCP handshakes completed through a backend of a service: the client's first \
             packet after its SYN (flow-affinity TCP services).",
            backends(|b| b.handshakes),
        )?;
        let backend_flags =
            |value: fn(&BackendStatus) -> bool| backend_samples(report, move |b| flag(value(b)));
        gauges(
            enc,
            "steer_backend_up",
            "Whether a backend of a service passes its health checks (1 unless down; \
             unchecked and degraded backends are up).",
            backend_flags(|b| b.health != Health::Down),
        )?;
        gauges(
            enc,
            "steer_backend_degraded",
            "Whether a backend of a service reports itself degraded.",
            backend_flags(|b| b.health == Health::Degraded),
        )?;
        gauges(
            enc,
            "steer_backend_drained",
            "Whether a backend was drained by an operator.",
            backend_flags(|b| b.drained),
        )?;
        gauges(
            enc,
            "steer_backend_ejected",
            "Whether outlier detection ejected a backend of a service from new flows.",
            backend_flags(|b| b.ejected),
        )?;
        gauges(
            enc,
            "steer_backend_weight_ratio",
            "The fraction of its weight a backend of a service gets for new flows: below 1 \
             during slow start.",
            backend_samples(report, |b| b.slow_start_percent.map_or(1.0, |p| p / 100.0)),
        )?;

        counters(
            enc,
            "steer_drops_total",
            "Packets dropped by the XDP program, by reason.",
            snap.drops.iter().map(|(r, v)| ([("reason", *r)], *v)),
        )?;
        counters(
            enc,
            "steer_conntrack_insert_failures_total",
            "New flows whose conntrack insert failed (still forwarded; their next packet \
             is selected again).",
            [(NO_LABELS, snap.ct_insert_failures)],
        )?;
        counters(
            enc,
            "steer_pmtu_replies_total",
            "Packets too big for the MTU once encapsulated that were answered with an ICMP \
             fragmentation-needed or packet-too-big reply (path-MTU discovery).",
            [(NO_LABELS, snap.report.pmtu_replies)],
        )?;

        if let Some(h) = &snap.probe_latency {
            let mut family = enc.encode_descriptor(
                "steer_health_probe_duration_seconds",
                "Duration of health check probes.",
                None,
                MetricType::Histogram,
            )?;
            // prometheus-client takes per-bucket counts and adds them up.
            let mut below = 0;
            let per_bucket: Vec<(f64, u64)> = h
                .buckets
                .iter()
                .map(|&(le, cumulative)| {
                    let n = cumulative.saturating_sub(below);
                    below = below.max(cumulative);
                    (le, n)
                })
                .collect();
            family.encode_histogram::<NoLabelSet>(h.sum, h.count, &per_bucket, None)?;
        }
        counters(
            enc,
            "steer_probe_failures_total",
            "Failed health check probes of a backend, by reason.",
            snap.probe_failures.iter().flat_map(|(backend, reasons)| {
                reasons.iter().map(move |(reason, n)| {
                    (
                        [("backend", backend.as_str()), ("reason", reason.as_str())],
                        *n,
                    )
                })
            }),
        )?;

        counters(
            enc,
            "steer_reloads_total",
            "Successful config reloads.",
            [(NO_LABELS, report.reloads)],
        )?;
        counters(
            enc,
            "steer_reload_failures_total",
            "Failed config reloads.",
            [(NO_LABELS, report.reload_failures)],
        )?;
        gauges(
            enc,
            "steer_config_last_reload_successful",
            "Whether the last config reload attempt was successful.",
            [(NO_LABELS, flag(snap.last_reload_successful))],
        )?;
        gauges(
            enc,
            "steer_config_last_reload_success_timestamp_seconds",
            "When the config was last loaded successfully (at start or by a reload), \
             in seconds since the Unix epoch.",
            [(NO_LABELS, snap.last_reload_success_timestamp_seconds)],
        )?;
        gauges(
            enc,
            "steer_table_generation",
            "Generation of the applied config and selection tables.",
            [(NO_LABELS, report.generation)],
        )?;
        // Region policies: per (service, table, region) the share and
        // panic state; per table its outcome; per region its measurements.
        let region_rows = || {
            report.services.iter().flat_map(|s| {
                s.tables.iter().flat_map(move |t| {
                    let class = t.class.as_deref().unwrap_or("default");
                    t.regions.iter().map(move |g| {
                        (
                            [
                                ("service", s.name.as_str()),
                                ("class", class),
                                ("region", g.name.as_str()),
                            ],
                            g,
                        )
                    })
                })
            })
        };
        gauges(
            enc,
            "steer_region_share",
            "The share (0..1) of a service's new flows of a client class (\"default\": \
             clients without a class table) that a region takes.",
            region_rows().map(|(l, g)| (l, g.share)),
        )?;
        gauges(
            enc,
            "steer_region_panic",
            "Whether a region is in panic for a service's client class: below \
             panic_threshold healthy while the regions together lack healthy capacity, \
             its share is spread over all its backends, healthy or not.",
            region_rows().map(|(l, g)| (l, flag(g.panic))),
        )?;
        gauges(
            enc,
            "steer_table_outcome",
            "1 for the current outcome of a service's client class: serve, fail-open (no \
             healthy backend: all backends), drop (no healthy backend, on_no_healthy = \
             drop) or residency (no allowed region may serve: dropped, fail closed).",
            report.services.iter().flat_map(|s| {
                s.tables.iter().flat_map(move |t| {
                    let class = t.class.as_deref().unwrap_or("default");
                    steer_policy::Outcome::ALL.map(move |o| {
                        let o = o.as_str();
                        (
                            [
                                ("service", s.name.as_str()),
                                ("class", class),
                                ("outcome", o),
                            ],
                            flag(t.outcome == o),
                        )
                    })
                })
            }),
        )?;
        gauges(
            enc,
            "steer_region_drained",
            "Whether a region was drained by an operator.",
            report.regions.iter().map(|r| {
                (
                    [("region", r.name.as_str())],
                    flag(report.drained_regions.contains(&r.name)),
                )
            }),
        )?;
        gauges(
            enc,
            "steer_region_rtt_seconds",
            "Median smoothed health-probe time of a region's healthy backends (the \
             latency policy's measure).",
            report.regions.iter().filter_map(|r| {
                r.rtt_ms
                    .map(|ms| ([("region", r.name.as_str())], ms / 1000.0))
            }),
        )?;
        gauges(
            enc,
            "steer_region_new_flows_per_second",
            "New flows per second that landed in a region, over every service.",
            report.regions.iter().filter_map(|r| {
                r.new_flows_per_second
                    .map(|v| ([("region", r.name.as_str())], v))
            }),
        )?;
        gauges(
            enc,
            "steer_region_capacity_keep",
            "The fraction of the new flows reaching a region that it keeps (the capacity \
             waterfall; 1 = all).",
            report
                .regions
                .iter()
                .map(|r| ([("region", r.name.as_str())], r.keep)),
        )?;
        gauges(
            enc,
            "steer_shift_percent",
            "The percentage of a service's new flows to region `from` that a staged shift \
             sends to region `to` (0 after a rollback or abort).",
            report.services.iter().filter_map(|s| {
                s.shift.as_ref().map(|sh| {
                    (
                        [
                            ("service", s.name.as_str()),
                            ("from", sh.from.as_str()),
                            ("to", sh.to.as_str()),
                        ],
                        i64::from(sh.percent),
                    )
                })
            }),
        )?;
        gauges(
            enc,
            "steer_shift_state",
            "A service's staged shift: 1 for its state (running, paused, completed, \
             rolled_back, aborted), 0 for the others.",
            report.services.iter().flat_map(|s| {
                s.shift.iter().flat_map(move |sh| {
                    SHIFT_STATES.iter().map(move |st| {
                        (
                            [("service", s.name.as_str()), ("state", *st)],
                            flag(sh.state == *st),
                        )
                    })
                })
            }),
        )?;
        gauges(
            enc,
            "steer_build_info",
            "The running steer's version; always 1.",
            [([("version", env!("CARGO_PKG_VERSION"))], 1i64)],
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use openmetrics_parser::prometheus::parse_prometheus;
    use openmetrics_parser::{MetricsExposition, PrometheusType, PrometheusValue};

    type Exposition = MetricsExposition<PrometheusType, PrometheusValue>;

    /// Parses `text` with an independent Prometheus text-format parser.
    pub(crate) fn parse(text: &str) -> Exposition {
        parse_prometheus(text)
            .unwrap_or_else(|e| panic!("not valid Prometheus text ({e:?}):\n{text}"))
    }

    /// The value of the one sample of `family` whose labels are exactly
    /// `labels`.
    pub(crate) fn value(exp: &Exposition, family: &str, labels: &[(&str, &str)]) -> f64 {
        let fam = exp
            .families
            .get(family)
            .unwrap_or_else(|| panic!("no family {family}"));
        let found: Vec<f64> = fam
            .iter_samples()
            .filter(|s| {
                let set = s.get_labelset().unwrap();
                set.iter().count() == labels.len()
                    && labels
                        .iter()
                        .all(|(k, v)| set.get_label_value(k) == Some(*v))
            })
            .map(|s| match &s.value {
                PrometheusValue::Counter(c) => c.value.as_f64(),
                PrometheusValue::Gauge(g) => g.as_f64(),
                other => panic!("{family}: unexpected value {other:?}"),
            })
            .collect();
        assert_eq!(found.len(), 1, "{family}{labels:?}: {found:?}");
        found[0]
    }

    fn samples(exp: &Exposition, family: &str) -> usize {
        exp.families[family].iter_samples().count()
    }

    /// Every family with its type; the help of the families steer had before
    /// prometheus-client, which must not change.
    const FAMILIES: &[(&str, PrometheusType, Option<&str>)] = &[
        ("steer_vip_packets_total", PrometheusType::Counter, Some("Packets received for a service's VIP.")),
        ("steer_vip_bytes_total", PrometheusType::Counter, Some("Bytes received for a service's VIP.")),
        ("steer_vip_new_flows_total", PrometheusType::Counter, Some("New flows (backend selections) for a service's VIP.")),
        ("steer_backend_packets_total", PrometheusType::Counter, Some("Packets sent to a backend of a service.")),
        ("steer_backend_bytes_total", PrometheusType::Counter, Some("Bytes sent to a backend of a service.")),
        ("steer_backend_new_flows_total", PrometheusType::Counter, Some("New flows assigned to a backend of a service.")),
        ("steer_backend_repeated_syns_total", PrometheusType::Counter, None),
        ("steer_backend_handshakes_total", PrometheusType::Counter, None),
        ("steer_backend_up", PrometheusType::Gauge, Some("Whether a backend of a service passes its health checks (1 unless down; unchecked and degraded backends are up).")),
        ("steer_backend_degraded", PrometheusType::Gauge, Some("Whether a backend of a service reports itself degraded.")),
        ("steer_backend_drained", PrometheusType::Gauge, Some("Whether a backend was drained by an operator.")),
        ("steer_backend_ejected", PrometheusType::Gauge, None),
        ("steer_backend_weight_ratio", PrometheusType::Gauge, None),
        ("steer_drops_total", PrometheusType::Counter, Some("Packets dropped by the XDP program, by reason.")),
        ("steer_conntrack_insert_failures_total", PrometheusType::Counter, Some("New flows whose conntrack insert failed (still forwarded; their next packet is selected again).")),
        ("steer_pmtu_replies_total", PrometheusType::Counter, None),
        ("steer_health_probe_duration_seconds", PrometheusType::Histogram, Some("Duration of health check probes.")),
        ("steer_probe_failures_total", PrometheusType::Counter, None),
        ("steer_reloads_total", PrometheusType::Counter, Some("Successful config reloads.")),
        ("steer_reload_failures_total", PrometheusType::Counter, Some("Failed config reloads.")),
        ("steer_config_last_reload_successful", PrometheusType::Gauge, None),
        ("steer_config_last_reload_success_timestamp_seconds", PrometheusType::Gauge, None),
        ("steer_table_generation", PrometheusType::Gauge, Some("Generation of the applied config and selection tables.")),
        ("steer_region_share", PrometheusType::Gauge, None),
        ("steer_region_panic", PrometheusType::Gauge, None),
        ("steer_table_outcome", PrometheusType::Gauge, None),
        ("steer_region_drained", PrometheusType::Gauge, Some("Whether a region was drained by an operator.")),
        ("steer_region_rtt_seconds", PrometheusType::Gauge, None),
        ("steer_region_new_flows_per_second", PrometheusType::Gauge, Some("New flows per second that landed in a region, over every service.")),
        ("steer_region_capacity_keep", PrometheusType::Gauge, None),
        ("steer_shift_percent", PrometheusType::Gauge, None),
        ("steer_shift_state", PrometheusType::Gauge, None),
        ("steer_build_info", PrometheusType::Gauge, None),
    ];

    pub(crate) fn snapshot() -> MetricsSnapshot {
        MetricsSnapshot {
            report: report(),
            drops: vec![("fragment", 3), ("too_big", 0)],
            ct_insert_failures: 5,
            probe_latency: Some(HistogramSnapshot {
                buckets: vec![(0.001, 2), (0.01, 9), (0.1, 10)],
                sum: 0.625,
                count: 11,
            }),
            probe_failures: BTreeMap::from([
                (
                    "web-1".to_string(),
                    BTreeMap::from([("timeout".to_string(), 4), ("status 503".to_string(), 1)]),
                ),
                (
                    "we\"b\\2".to_string(),
                    BTreeMap::from([("connection refused".to_string(), 9)]),
                ),
            ]),
            last_reload_successful: false,
            last_reload_success_timestamp_seconds: 1_764_630_000.25,
        }
    }

    #[test]
    fn every_family_with_the_snapshot_values() {
        let text = render_metrics(Arc::new(snapshot()));
        let exp = parse(&text);

        let mut names: Vec<&str> = exp.families.keys().map(String::as_str).collect();
        names.sort_unstable();
        let mut expected: Vec<&str> = FAMILIES.iter().map(|f| f.0).collect();
        expected.sort_unstable();
        assert_eq!(names, expected);
        for (name, kind, help) in FAMILIES {
            let fam = &exp.families[*name];
            assert_eq!(fam.family_type, *kind, "{name}");
            if let Some(help) = help {
                assert_eq!(fam.help, *help, "{name}");
            } else {
                assert!(!fam.help.is_empty(), "{name} has no help");
            }
        }

        let web = [("service", "web"), ("vip", "203.0.113.10:80/tcp")];
        let dns = [("service", "dns"), ("vip", "[2001:db8::53]:53/udp")];
        for (family, web_v, dns_v) in [
            ("steer_vip_packets_total", 100.0, 7.0),
            ("steer_vip_bytes_total", 15000.0, 700.0),
            ("steer_vip_new_flows_total", 10.0, 7.0),
        ] {
            assert_eq!(samples(&exp, family), 2, "{family}");
            assert_eq!(value(&exp, family, &web), web_v, "{family}");
            assert_eq!(value(&exp, family, &dns), dns_v, "{family}");
        }

        let backend = |service, backend, region| {
            [
                ("service", service),
                ("backend", backend),
                ("region", region),
            ]
        };
        let web1 = backend("web", "web-1", "eu");
        // Label values with a quote, a backslash and a newline.
        let web2 = backend("web", "we\"b\\2", "us\neast");
        let dns1 = backend("dns", "dns-1", "eu");
        let dns2 = backend("dns", "dns-2", "eu");
        // (family, web-1, we"b\2, dns-1, dns-2)
        for (family, v) in [
            ("steer_backend_packets_total", [60.0, 40.0, 5.0, 2.0]),
            ("steer_backend_bytes_total", [9000.0, 6000.0, 500.0, 200.0]),
            ("steer_backend_new_flows_total", [6.0, 4.0, 5.0, 2.0]),
            ("steer_backend_repeated_syns_total", [1.0, 3.0, 0.0, 0.0]),
            ("steer_backend_handshakes_total", [5.0, 0.0, 0.0, 0.0]),
            // health up, down, degraded, unchecked
            ("steer_backend_up", [1.0, 0.0, 1.0, 1.0]),
            ("steer_backend_degraded", [0.0, 0.0, 1.0, 0.0]),
            ("steer_backend_drained", [0.0, 1.0, 0.0, 0.0]),
            ("steer_backend_ejected", [1.0, 0.0, 0.0, 0.0]),
            ("steer_backend_weight_ratio", [1.0, 0.3, 1.0, 1.0]),
        ] {
            assert_eq!(samples(&exp, family), 4, "{family}");
            for (labels, v) in [web1, web2, dns1, dns2].iter().zip(v) {
                assert_eq!(value(&exp, family, labels), v, "{family}{labels:?}");
            }
        }

        // Region policies.
        let eu = [("service", "web"), ("class", "eu"), ("region", "eu")];
        let us = [("service", "web"), ("class", "eu"), ("region", "us\neast")];
        assert_eq!(value(&exp, "steer_region_share", &eu), 0.56);
        assert_eq!(value(&exp, "steer_region_share", &us), 0.44);
        assert_eq!(value(&exp, "steer_region_panic", &eu), 1.0);
        assert_eq!(value(&exp, "steer_region_panic", &us), 0.0);
        assert_eq!(samples(&exp, "steer_table_outcome"), 4);
        for (o, v) in [
            ("serve", 1.0),
            ("fail-open", 0.0),
            ("drop", 0.0),
            ("residency", 0.0),
        ] {
            let l = [("service", "web"), ("class", "eu"), ("outcome", o)];
            assert_eq!(value(&exp, "steer_table_outcome", &l), v, "{o}");
        }
        assert_eq!(
            value(&exp, "steer_region_drained", &[("region", "eu")]),
            1.0
        );
        assert_eq!(
            value(&exp, "steer_region_rtt_seconds", &[("region", "eu")]),
            0.025
        );
        assert_eq!(
            value(
                &exp,
                "steer_region_new_flows_per_second",
                &[("region", "eu")]
            ),
            480.0
        );
        assert_eq!(
            value(&exp, "steer_region_capacity_keep", &[("region", "eu")]),
            0.75
        );

        // Staged shifts: web's only (dns has none).
        assert_eq!(
            value(
                &exp,
                "steer_shift_percent",
                &[("service", "web"), ("from", "eu"), ("to", "us\neast")]
            ),
            25.0
        );
        assert_eq!(samples(&exp, "steer_shift_percent"), 1);
        assert_eq!(samples(&exp, "steer_shift_state"), 5);
        for (st, v) in [
            ("running", 0.0),
            ("paused", 1.0),
            ("completed", 0.0),
            ("rolled_back", 0.0),
            ("aborted", 0.0),
        ] {
            let l = [("service", "web"), ("state", st)];
            assert_eq!(value(&exp, "steer_shift_state", &l), v, "{st}");
        }

        assert_eq!(samples(&exp, "steer_drops_total"), 2);
        assert_eq!(
            value(&exp, "steer_drops_total", &[("reason", "fragment")]),
            3.0
        );
        assert_eq!(
            value(&exp, "steer_drops_total", &[("reason", "too_big")]),
            0.0
        );
        assert_eq!(
            value(&exp, "steer_conntrack_insert_failures_total", &[]),
            5.0
        );
        assert_eq!(value(&exp, "steer_pmtu_replies_total", &[]), 9.0);

        let hist = &exp.families["steer_health_probe_duration_seconds"];
        let samples_h: Vec<_> = hist.iter_samples().collect();
        assert_eq!(samples_h.len(), 1);
        let PrometheusValue::Histogram(h) = &samples_h[0].value else {
            panic!("not a histogram: {:?}", samples_h[0].value);
        };
        let buckets: Vec<(f64, f64)> = h
            .buckets
            .iter()
            .map(|b| (b.upper_bound, b.count.as_f64()))
            .collect();
        assert_eq!(
            buckets,
            [
                (0.001, 2.0),
                (0.01, 9.0),
                (0.1, 10.0),
                (f64::INFINITY, 11.0)
            ]
        );
        assert_eq!(h.sum.as_ref().map(|s| s.as_f64()), Some(0.625));
        assert_eq!(h.count, Some(11));

        assert_eq!(samples(&exp, "steer_probe_failures_total"), 3);
        for (backend, reason, n) in [
            ("web-1", "timeout", 4.0),
            ("web-1", "status 503", 1.0),
            ("we\"b\\2", "connection refused", 9.0),
        ] {
            let labels = [("backend", backend), ("reason", reason)];
            assert_eq!(value(&exp, "steer_probe_failures_total", &labels), n);
        }

        assert_eq!(value(&exp, "steer_reloads_total", &[]), 3.0);
        assert_eq!(value(&exp, "steer_reload_failures_total", &[]), 1.0);
        assert_eq!(value(&exp, "steer_config_last_reload_successful", &[]), 0.0);
        assert_eq!(
            value(
                &exp,
                "steer_config_last_reload_success_timestamp_seconds",
                &[]
            ),
            1_764_630_000.25
        );
        assert_eq!(value(&exp, "steer_table_generation", &[]), 12.0);
        assert_eq!(
            value(
                &exp,
                "steer_build_info",
                &[("version", env!("CARGO_PKG_VERSION"))]
            ),
            1.0
        );
    }

    /// The e2e suite and dashboards read these lines as they are: the
    /// counters' names keep their `_total` in `# HELP`/`# TYPE` too.
    #[test]
    fn wire_names_are_unchanged() {
        let text = render_metrics(Arc::new(snapshot()));
        for line in [
            "# HELP steer_drops_total Packets dropped by the XDP program, by reason.",
            "# TYPE steer_drops_total counter",
            "steer_drops_total{reason=\"fragment\"} 3",
            "# TYPE steer_reload_failures_total counter",
            "steer_reload_failures_total 1",
            "steer_vip_packets_total{service=\"web\",vip=\"203.0.113.10:80/tcp\"} 100",
            "steer_backend_packets_total{service=\"web\",backend=\"we\\\"b\\\\2\",region=\"us\\neast\"} 40",
            "steer_backend_up{service=\"web\",backend=\"web-1\",region=\"eu\"} 1",
            "# TYPE steer_backend_repeated_syns_total counter",
            "steer_backend_repeated_syns_total{service=\"web\",backend=\"web-1\",region=\"eu\"} 1",
            "steer_backend_handshakes_total{service=\"web\",backend=\"web-1\",region=\"eu\"} 5",
            "steer_health_probe_duration_seconds_bucket{le=\"+Inf\"} 11",
            "steer_config_last_reload_successful 0",
            "steer_table_generation 12",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing line {line:?} in:\n{text}"
            );
        }
        assert!(!text.contains("{}"), "empty label sets:\n{text}");
    }

    /// The checks above mean something only if the parser refuses what
    /// Prometheus would.
    #[test]
    fn the_parser_refuses_broken_text() {
        for bad in [
            "x{a=\"1} 2\n",
            "x{a=\"1\"} two\n",
            "# TYPE x counter\nx{a=\"new\nline\"} 1\n",
        ] {
            assert!(parse_prometheus(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn empty_snapshot() {
        let text = render_metrics(Arc::new(MetricsSnapshot::default()));
        let exp = parse(&text);
        // No histogram without a health monitor; every other family is
        // described, and the unlabelled ones have their one sample.
        assert!(!exp
            .families
            .contains_key("steer_health_probe_duration_seconds"));
        assert_eq!(exp.families.len(), FAMILIES.len() - 1);
        for family in [
            "steer_vip_packets_total",
            "steer_backend_up",
            "steer_drops_total",
            "steer_probe_failures_total",
        ] {
            assert_eq!(samples(&exp, family), 0, "{family}");
        }
        for (family, v) in [
            ("steer_conntrack_insert_failures_total", 0.0),
            ("steer_pmtu_replies_total", 0.0),
            ("steer_reloads_total", 0.0),
            ("steer_config_last_reload_successful", 0.0),
            ("steer_config_last_reload_success_timestamp_seconds", 0.0),
            ("steer_table_generation", 0.0),
        ] {
            assert_eq!(value(&exp, family, &[]), v, "{family}");
        }
    }

    #[test]
    fn histogram_with_its_own_inf_bucket() {
        let snap = MetricsSnapshot {
            probe_latency: Some(HistogramSnapshot {
                buckets: vec![(0.5, 0), (2.0, 3), (f64::INFINITY, 4)],
                sum: 4.5,
                count: 4,
            }),
            ..MetricsSnapshot::default()
        };
        let exp = parse(&render_metrics(Arc::new(snap)));
        let fam = &exp.families["steer_health_probe_duration_seconds"];
        let PrometheusValue::Histogram(h) = &fam.iter_samples().next().unwrap().value else {
            panic!("not a histogram");
        };
        let buckets: Vec<(f64, f64)> = h
            .buckets
            .iter()
            .map(|b| (b.upper_bound, b.count.as_f64()))
            .collect();
        assert_eq!(buckets, [(0.5, 0.0), (2.0, 3.0), (f64::INFINITY, 4.0)]);
        assert_eq!(h.count, Some(4));
    }

    fn report() -> StatusReport {
        StatusReport {
            generation: 12,
            config_path: "/etc/steer/steer.toml".into(),
            reloads: 3,
            reload_failures: 1,
            pmtu_replies: 9,
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
                            repeated_syns: 1,
                            handshakes: 5,
                            ejected: true,
                            ejected_until: Some(1_764_630_030_000),
                            ejections: 1,
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
                            repeated_syns: 3,
                            slow_start_percent: Some(30.0),
                            ..BackendStatus::default()
                        },
                    ],
                    policy: "geo".into(),
                    tables: vec![crate::api::TableStatus {
                        class: Some("eu".into()),
                        order: vec!["eu".into(), "us\neast".into()],
                        outcome: "serve".into(),
                        allowed_regions: None,
                        regions: vec![
                            crate::api::RegionShare {
                                name: "eu".into(),
                                healthy: 0.4,
                                load: 0.56,
                                dial: 100,
                                keep: 1.0,
                                share: 0.56,
                                panic: true,
                            },
                            crate::api::RegionShare {
                                name: "us\neast".into(),
                                healthy: 1.0,
                                load: 0.44,
                                dial: 100,
                                keep: 1.0,
                                share: 0.44,
                                panic: false,
                            },
                        ],
                    }],
                    shift: Some(crate::api::ShiftReport {
                        from: "eu".into(),
                        to: "us\neast".into(),
                        stages: vec![10, 25, 50, 100],
                        stage: 2,
                        percent: 25,
                        state: "paused".into(),
                        ..Default::default()
                    }),
                    ..ServiceStatus::default()
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
                    ..ServiceStatus::default()
                },
            ],
            drained_regions: vec!["eu".into()],
            regions: vec![crate::api::RegionMeasure {
                name: "eu".into(),
                rtt_ms: Some(25.0),
                new_flows_per_second: Some(480.0),
                capacity: Some(500.0),
                keep: 0.75,
            }],
            ..StatusReport::default()
        }
    }
}
