//! Messages of the control protocol.
//!
//! Each message is one JSON object on one line (no newline inside: serde_json
//! escapes newlines in strings). Requests are tagged by `"cmd"`, responses by
//! `"result"`:
//!
//! ```text
//! → {"cmd":"status"}
//! ← {"result":"status","generation":3,"config_path":"/etc/steer/steer.toml",...}
//! → {"cmd":"drain","backend":"web-2","undo":false}
//! → {"cmd":"drain_region","region":"eu-west","undo":false}
//! ← {"result":"ok","message":"web-2 drained"}
//! → {"cmd":"reload"}
//! ← {"result":"error","message":"config has 2 errors","details":["services[0].vip: ...","..."]}
//! → {"cmd":"stop","detach":false}
//! ← {"result":"ok","message":"stopping"}
//! ```
//!
//! Every request field is required (a misspelt `"detatch"` must not silently
//! mean `false`), and unknown fields are rejected. (serde would also read a
//! request from an array such as `["stop",true]`; the server accepts objects
//! only.)
//!
//! A request line longer than [`MAX_REQUEST_BYTES`] is answered with an
//! error response and the connection is closed. So is a connection beyond
//! the daemon's limit of concurrent control connections (64): its one line
//! is `{"result":"error","message":"too many connections: ...","details":[]}`.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Longest request line the daemon reads (the newline not included). A
/// longer request is answered with an error and the connection is closed.
pub const MAX_REQUEST_BYTES: usize = 64 * 1024;

/// A request from `steer status|drain|reload|stop` to the daemon.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(tag = "cmd", rename_all = "snake_case", from = "RequestWire")]
pub enum Request {
    /// Report generation, reload history and per-service, per-backend state.
    Status,
    /// Stop sending new flows to a backend (in every service), or with
    /// `undo`, resume.
    Drain { backend: String, undo: bool },
    /// Stop sending new flows to every backend of a region (in every
    /// service), or with `undo`, resume. With `timeout_seconds`, the
    /// region's established flows are moved too once it has passed.
    DrainRegion {
        region: String,
        undo: bool,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        timeout_seconds: Option<u64>,
    },
    /// The decision path of one flow (`steer explain`): `protocol` is
    /// `tcp` or `udp`, `client` and `vip` are socket addresses
    /// (`198.51.100.7:40000`, `[2001:db8::7]:40000`).
    Explain {
        protocol: String,
        client: String,
        vip: String,
    },
    /// Re-read the config file and apply it.
    Reload,
    /// Stop the daemon. With `detach`, leave the XDP program attached and its
    /// maps pinned so that traffic keeps flowing.
    Stop { detach: bool },
    /// Start a staged shift of `service`'s new flows from region `from` to
    /// region `to` (`steer shift start`): `stages` are percentages of
    /// `from`'s new flows, each held `hold_ms` milliseconds. Rolls back
    /// when `to`'s healthy fraction falls below `min_healthy` (0..=1), or
    /// with `over_capacity`, when `to`'s new-flow rate exceeds its capacity.
    ShiftStart {
        service: String,
        from: String,
        to: String,
        stages: Vec<u8>,
        hold_ms: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        min_healthy: Option<f64>,
        over_capacity: bool,
        /// Roll back when `to`'s repeated SYNs exceed this percentage of its
        /// new flows over the signal window...
        #[serde(default, skip_serializing_if = "Option::is_none")]
        max_repeated_syn_percent: Option<f64>,
        /// ...over at least this many new flows (default 20).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        min_new_flows: Option<u64>,
        /// The signal window, in milliseconds (default 5000).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        signal_window_ms: Option<u64>,
        /// Roll back when this HTTP endpoint reports failure.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        analysis_url: Option<String>,
    },
    /// The shifts in force (`service`: only that service's). Read-only.
    ShiftStatus {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        service: Option<String>,
    },
    /// Stop a running shift's hold clock; its percentage stays.
    ShiftPause { service: String },
    /// Restart a paused shift's hold clock where it stopped.
    ShiftResume { service: String },
    /// Stop a shift and go back to the pre-shift state (0 %) at once; on a
    /// finished shift, forget it (a completed one stops applying).
    ShiftAbort { service: String },
}

impl Request {
    /// The request's `cmd` word on the wire (`"status"`, `"drain"`,
    /// `"reload"`, `"stop"`).
    pub const fn cmd(&self) -> &'static str {
        match self {
            Request::Status => "status",
            Request::Drain { .. } => "drain",
            Request::DrainRegion { .. } => "drain_region",
            Request::Explain { .. } => "explain",
            Request::Reload => "reload",
            Request::Stop { .. } => "stop",
            Request::ShiftStart { .. } => "shift_start",
            Request::ShiftStatus { .. } => "shift_status",
            Request::ShiftPause { .. } => "shift_pause",
            Request::ShiftResume { .. } => "shift_resume",
            Request::ShiftAbort { .. } => "shift_abort",
        }
    }

    /// Whether the request only reads (`status`, `explain`,
    /// `shift_status`): the ones a read-only client (a member of
    /// `[control] group`) may send.
    pub const fn is_read_only(&self) -> bool {
        matches!(
            self,
            Request::Status | Request::Explain { .. } | Request::ShiftStatus { .. }
        )
    }
}

/// How a [`Request`] is read: the same shape, with the unit variants as empty
/// struct variants, because serde's `deny_unknown_fields` does not reject
/// extra fields next to the tag of a unit variant (`{"cmd":"status","x":1}`).
#[derive(Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case", deny_unknown_fields)]
enum RequestWire {
    Status {},
    Drain {
        backend: String,
        undo: bool,
    },
    DrainRegion {
        region: String,
        undo: bool,
        #[serde(default)]
        timeout_seconds: Option<u64>,
    },
    Explain {
        protocol: String,
        client: String,
        vip: String,
    },
    Reload {},
    Stop {
        detach: bool,
    },
    ShiftStart {
        service: String,
        from: String,
        to: String,
        stages: Vec<u8>,
        hold_ms: u64,
        #[serde(default)]
        min_healthy: Option<f64>,
        over_capacity: bool,
        #[serde(default)]
        max_repeated_syn_percent: Option<f64>,
        #[serde(default)]
        min_new_flows: Option<u64>,
        #[serde(default)]
        signal_window_ms: Option<u64>,
        #[serde(default)]
        analysis_url: Option<String>,
    },
    ShiftStatus {
        #[serde(default)]
        service: Option<String>,
    },
    ShiftPause {
        service: String,
    },
    ShiftResume {
        service: String,
    },
    ShiftAbort {
        service: String,
    },
}

impl From<RequestWire> for Request {
    fn from(wire: RequestWire) -> Request {
        match wire {
            RequestWire::Status {} => Request::Status,
            RequestWire::Drain { backend, undo } => Request::Drain { backend, undo },
            RequestWire::DrainRegion {
                region,
                undo,
                timeout_seconds,
            } => Request::DrainRegion {
                region,
                undo,
                timeout_seconds,
            },
            RequestWire::Explain {
                protocol,
                client,
                vip,
            } => Request::Explain {
                protocol,
                client,
                vip,
            },
            RequestWire::Reload {} => Request::Reload,
            RequestWire::Stop { detach } => Request::Stop { detach },
            RequestWire::ShiftStart {
                service,
                from,
                to,
                stages,
                hold_ms,
                min_healthy,
                over_capacity,
                max_repeated_syn_percent,
                min_new_flows,
                signal_window_ms,
                analysis_url,
            } => Request::ShiftStart {
                service,
                from,
                to,
                stages,
                hold_ms,
                min_healthy,
                over_capacity,
                max_repeated_syn_percent,
                min_new_flows,
                signal_window_ms,
                analysis_url,
            },
            RequestWire::ShiftStatus { service } => Request::ShiftStatus { service },
            RequestWire::ShiftPause { service } => Request::ShiftPause { service },
            RequestWire::ShiftResume { service } => Request::ShiftResume { service },
            RequestWire::ShiftAbort { service } => Request::ShiftAbort { service },
        }
    }
}

/// The daemon's answer to one [`Request`].
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum Response {
    Status(StatusReport),
    Ok {
        message: String,
    },
    Error {
        message: String,
        /// More lines, e.g. every config error of a failed reload.
        #[serde(default)]
        details: Vec<String>,
    },
}

impl Response {
    /// `Response::Ok` with `message`.
    pub fn ok(message: impl Into<String>) -> Response {
        Response::Ok {
            message: message.into(),
        }
    }

    /// `Response::Error` with `message` and no details.
    pub fn error(message: impl Into<String>) -> Response {
        Response::Error {
            message: message.into(),
            details: Vec::new(),
        }
    }

    /// `Response::Error` with `message` and `details`.
    pub fn error_with_details(
        message: impl Into<String>,
        details: impl IntoIterator<Item = impl Into<String>>,
    ) -> Response {
        Response::Error {
            message: message.into(),
            details: details.into_iter().map(Into::into).collect(),
        }
    }
}

/// Everything `steer status` shows.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Default)]
#[serde(default)]
pub struct StatusReport {
    /// Config/table generation: bumped by every applied change.
    pub generation: u64,
    pub config_path: String,
    /// Successful reloads since start.
    pub reloads: u64,
    /// Failed reloads since start.
    pub reload_failures: u64,
    /// Why the last reload failed, if the last reload failed.
    pub last_reload_error: Option<String>,
    pub services: Vec<ServiceStatus>,
    /// The daemon's version (`steer --version`); empty from an older daemon.
    pub version: String,
    /// When this report was made, in seconds since the Unix epoch (UTC);
    /// the reference for the other timestamps.
    pub time: u64,
    /// Seconds since the daemon started.
    pub uptime_seconds: u64,
    /// The interfaces XDP is attached to.
    pub interfaces: Vec<InterfaceStatus>,
    /// Packets the program dropped, by reason (every reason, zeros included).
    pub drops: std::collections::BTreeMap<String, u64>,
    /// New flows whose conntrack insert failed (they were still forwarded).
    pub ct_insert_failures: u64,
    /// Path-MTU replies sent: packets too big for `dataplane.mtu` once
    /// encapsulated, answered with ICMP fragmentation-needed / packet too
    /// big (the `pmtu_reply` branch).
    pub pmtu_replies: u64,
    /// Regions drained by an operator (`steer drain --region`).
    pub drained_regions: Vec<String>,
    /// What the daemon measures for the latency and capacity policies.
    pub regions: Vec<RegionMeasure>,
}

/// One region's measurements.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Default)]
#[serde(default)]
pub struct RegionMeasure {
    pub name: String,
    /// Median smoothed probe time of its healthy backends, milliseconds.
    pub rtt_ms: Option<f64>,
    /// New flows per second that landed in the region (all services).
    pub new_flows_per_second: Option<f64>,
    /// `max_new_flows_per_second × capacity_scaler`, if limited.
    pub capacity: Option<f64>,
    /// The fraction of the new flows reaching the region it keeps (the
    /// capacity waterfall); 1 = everything.
    pub keep: f64,
}

/// How one selection table of a service was decided.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Default)]
#[serde(default)]
pub struct TableStatus {
    /// The client class (`None`: the default table).
    pub class: Option<String>,
    /// The regions in the order new flows meet them (after residency and
    /// region drains).
    pub order: Vec<String>,
    /// `serve`, `fail-open`, `drop` (no healthy backend) or `residency`.
    pub outcome: String,
    /// The residency constraint, if the class has one.
    pub allowed_regions: Option<Vec<String>>,
    pub regions: Vec<RegionShare>,
}

/// One region's part in a table.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Default)]
#[serde(default)]
pub struct RegionShare {
    pub name: String,
    /// Healthy weight / total weight.
    pub healthy: f64,
    /// Step-1 load (health spill or weights), 0..=1.
    pub load: f64,
    pub dial: u8,
    /// The capacity keep fraction applied.
    pub keep: f64,
    /// The final share of the table's new flows, 0..=1.
    pub share: f64,
    /// Envoy panic: the share is spread over all the region's backends.
    pub panic: bool,
}

/// One interface the daemon attached XDP to.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Default)]
#[serde(default)]
pub struct InterfaceStatus {
    pub name: String,
    /// `"driver"` or `"skb"`. For a link taken over from a previous run
    /// (`adopted`), the mode the config asks for.
    pub mode: String,
    /// The pinned XDP link of a previous run was taken over (the program
    /// was replaced in place) rather than attached anew.
    pub adopted: bool,
}

/// One service (VIP, port, protocol) and its backends.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Default)]
#[serde(default)]
pub struct ServiceStatus {
    pub name: String,
    /// `"203.0.113.10:80/tcp"`, `"[2001:db8::10]:443/tcp"`; port 0 = all ports.
    pub vip: String,
    /// How flows are placed on the backends.
    pub affinity: Affinity,
    pub packets: u64,
    pub bytes: u64,
    pub new_flows: u64,
    pub backends: Vec<BackendStatus>,
    /// `maglev`, `weighted`, `failover`, `geo` or `latency`.
    pub policy: String,
    /// A hash of the service's backends and tables (16 hex digits): equal
    /// on two edge hosts with the same config, health and measurements.
    pub content_hash: String,
    /// How each table was decided (empty for a plain `maglev` table).
    pub tables: Vec<TableStatus>,
    /// Backends whose failed health checks are ignored because more than
    /// `max_ejection_percent` of the service's backends are down.
    pub ejection_capped: Vec<String>,
    /// The service's staged shift (`steer shift`), if one is in force or
    /// finished since the daemon's state last forgot it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shift: Option<ShiftReport>,
}

/// A staged shift of a service's new flows from one region to another.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Default)]
#[serde(default)]
pub struct ShiftReport {
    /// The region flows leave.
    pub from: String,
    /// The region flows go to.
    pub to: String,
    /// The plan's percentages of `from`'s new flows.
    pub stages: Vec<u8>,
    /// The current (or last) stage, counted from 1.
    pub stage: usize,
    /// The percentage of `from`'s new flows sent to `to` now.
    pub percent: u8,
    /// `running`, `paused`, `completed`, `rolled_back` or `aborted`.
    pub state: String,
    /// How long each stage holds, milliseconds.
    pub hold_ms: u64,
    /// Milliseconds until the next stage (or completion): none when
    /// finished; while paused, the frozen rest of the hold.
    pub next_stage_in_ms: Option<u64>,
    /// Why it rolled back.
    pub reason: Option<String>,
    /// When it started, seconds since the Unix epoch.
    pub started_at: u64,
    /// The state in words ("running at stage 2 of 4 (25%)").
    pub description: String,
    /// The rollback conditions watched, one word each as `--rollback-if`
    /// takes them (`healthy<0.5`, `repeated-syn>20%`, `over-capacity`,
    /// `analysis=URL`).
    pub rollback_if: Vec<String>,
}

/// One backend of one service.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Default)]
#[serde(default)]
pub struct BackendStatus {
    pub name: String,
    pub address: String,
    pub region: String,
    /// Configured weight.
    pub weight: u32,
    /// Weight in the selection table now: 0 when drained, down or ejected;
    /// part of it in slow start.
    pub effective_weight: u32,
    /// What the health checks say.
    pub health: Health,
    pub drained: bool,
    /// Why the last failed check failed.
    pub last_failure: Option<String>,
    /// When the health checks last brought it up (from down), in seconds
    /// since the Unix epoch; none if that has not happened since start.
    pub last_up_at: Option<u64>,
    /// When the health checks last took it down, in seconds since the Unix
    /// epoch; none if that has not happened since start.
    pub last_down_at: Option<u64>,
    pub packets: u64,
    pub bytes: u64,
    pub new_flows: u64,
    /// Passive health (flow-affinity TCP services): SYNs that repeated a
    /// SYN this backend was sent and that was never answered (the client
    /// sent it again before any other packet of the flow).
    pub repeated_syns: u64,
    /// Passive health: handshakes completed through this backend (the
    /// first non-SYN packet of a flow whose SYN it was sent).
    pub handshakes: u64,
    /// Outlier detection ejected it from new flows (its established flows
    /// stay); its health checks may still pass.
    pub ejected: bool,
    /// When its ejection ends, in milliseconds since the Unix epoch.
    pub ejected_until: Option<u64>,
    /// Its ejection count: the next ejection lasts one more base time;
    /// it decays by one per base time in service.
    pub ejections: u32,
    /// In slow start: the percentage of its weight it gets for new flows
    /// now; none when it has its full weight.
    pub slow_start_percent: Option<f64>,
}

/// A backend's health as the daemon reports it. On the wire, the lowercase
/// word: `"up"`, `"down"`, `"degraded"`, `"unchecked"`.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[serde(rename_all = "lowercase")]
pub enum Health {
    /// Its checks pass.
    Up,
    /// Its checks fail; it gets no new flows.
    Down,
    /// It answers but reports trouble; it still gets new flows.
    Degraded,
    /// It has no health check (also what a report without the field means).
    #[default]
    Unchecked,
}

impl Health {
    /// Every value, in the order of the declaration.
    pub const ALL: [Health; 4] = [
        Health::Up,
        Health::Down,
        Health::Degraded,
        Health::Unchecked,
    ];

    /// The wire word: `"up"`, `"down"`, `"degraded"` or `"unchecked"`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Health::Up => "up",
            Health::Down => "down",
            Health::Degraded => "degraded",
            Health::Unchecked => "unchecked",
        }
    }

    /// Down or degraded: the backend's last failure is worth showing.
    pub const fn is_failing(self) -> bool {
        matches!(self, Health::Down | Health::Degraded)
    }
}

impl fmt::Display for Health {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Compares with the wire word (`Health::Up == "up"`).
impl PartialEq<str> for Health {
    fn eq(&self, word: &str) -> bool {
        self.as_str() == word
    }
}

/// Compares with the wire word (`Health::Up == "up"`).
impl PartialEq<&str> for Health {
    fn eq(&self, word: &&str) -> bool {
        self.as_str() == *word
    }
}

/// How a service places flows on its backends. On the wire, the lowercase
/// word: `"flow"` or `"client"`.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[serde(rename_all = "lowercase")]
pub enum Affinity {
    /// Each 5-tuple flow is placed on its own.
    #[default]
    Flow,
    /// All flows from one client address to the VIP go to one backend.
    Client,
}

impl Affinity {
    /// The wire word: `"flow"` or `"client"`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Affinity::Flow => "flow",
            Affinity::Client => "client",
        }
    }
}

impl fmt::Display for Affinity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Serializes `value`, compares with `json` (written by hand), and parses
    /// `json` back.
    fn round_trip<T>(value: &T, json: &str)
    where
        T: Serialize + for<'de> Deserialize<'de> + PartialEq + std::fmt::Debug,
    {
        let text = serde_json::to_string(value).unwrap();
        assert_eq!(text, json);
        let back: T = serde_json::from_str(json).unwrap();
        assert_eq!(&back, value);
    }

    #[test]
    fn requests() {
        round_trip(&Request::Status, r#"{"cmd":"status"}"#);
        round_trip(
            &Request::Drain {
                backend: "web-2".into(),
                undo: false,
            },
            r#"{"cmd":"drain","backend":"web-2","undo":false}"#,
        );
        round_trip(
            &Request::Drain {
                backend: "web-2".into(),
                undo: true,
            },
            r#"{"cmd":"drain","backend":"web-2","undo":true}"#,
        );
        round_trip(
            &Request::DrainRegion {
                region: "eu-west".into(),
                undo: false,
                timeout_seconds: None,
            },
            r#"{"cmd":"drain_region","region":"eu-west","undo":false}"#,
        );
        round_trip(
            &Request::DrainRegion {
                region: "eu-west".into(),
                undo: false,
                timeout_seconds: Some(300),
            },
            r#"{"cmd":"drain_region","region":"eu-west","undo":false,"timeout_seconds":300}"#,
        );
        round_trip(
            &Request::Explain {
                protocol: "tcp".into(),
                client: "198.51.100.7:40000".into(),
                vip: "203.0.113.10:443".into(),
            },
            r#"{"cmd":"explain","protocol":"tcp","client":"198.51.100.7:40000","vip":"203.0.113.10:443"}"#,
        );
        round_trip(&Request::Reload, r#"{"cmd":"reload"}"#);
        round_trip(
            &Request::Stop { detach: true },
            r#"{"cmd":"stop","detach":true}"#,
        );
        round_trip(
            &Request::Stop { detach: false },
            r#"{"cmd":"stop","detach":false}"#,
        );
        round_trip(
            &Request::ShiftStart {
                service: "web".into(),
                from: "eu".into(),
                to: "us".into(),
                stages: vec![10, 25, 50, 100],
                hold_ms: 300_000,
                min_healthy: Some(0.5),
                over_capacity: true,
                max_repeated_syn_percent: None,
                min_new_flows: None,
                signal_window_ms: None,
                analysis_url: None,
            },
            concat!(
                r#"{"cmd":"shift_start","service":"web","from":"eu","to":"us","#,
                r#""stages":[10,25,50,100],"hold_ms":300000,"min_healthy":0.5,"over_capacity":true}"#
            ),
        );
        round_trip(
            &Request::ShiftStart {
                service: "web".into(),
                from: "eu".into(),
                to: "us".into(),
                stages: vec![100],
                hold_ms: 1000,
                min_healthy: None,
                over_capacity: false,
                max_repeated_syn_percent: None,
                min_new_flows: None,
                signal_window_ms: None,
                analysis_url: None,
            },
            concat!(
                r#"{"cmd":"shift_start","service":"web","from":"eu","to":"us","#,
                r#""stages":[100],"hold_ms":1000,"over_capacity":false}"#
            ),
        );
        round_trip(
            &Request::ShiftStart {
                service: "web".into(),
                from: "eu".into(),
                to: "us".into(),
                stages: vec![25],
                hold_ms: 1000,
                min_healthy: None,
                over_capacity: false,
                max_repeated_syn_percent: Some(20.0),
                min_new_flows: Some(10),
                signal_window_ms: Some(5000),
                analysis_url: Some("http://127.0.0.1:9/a".into()),
            },
            concat!(
                r#"{"cmd":"shift_start","service":"web","from":"eu","to":"us","#,
                r#""stages":[25],"hold_ms":1000,"over_capacity":false,"#,
                r#""max_repeated_syn_percent":20.0,"min_new_flows":10,"signal_window_ms":5000,"#,
                r#""analysis_url":"http://127.0.0.1:9/a"}"#
            ),
        );
        round_trip(
            &Request::ShiftStatus { service: None },
            r#"{"cmd":"shift_status"}"#,
        );
        round_trip(
            &Request::ShiftStatus {
                service: Some("web".into()),
            },
            r#"{"cmd":"shift_status","service":"web"}"#,
        );
        round_trip(
            &Request::ShiftPause {
                service: "web".into(),
            },
            r#"{"cmd":"shift_pause","service":"web"}"#,
        );
        round_trip(
            &Request::ShiftResume {
                service: "web".into(),
            },
            r#"{"cmd":"shift_resume","service":"web"}"#,
        );
        round_trip(
            &Request::ShiftAbort {
                service: "web".into(),
            },
            r#"{"cmd":"shift_abort","service":"web"}"#,
        );
    }

    #[test]
    fn cmd_is_the_wire_word() {
        for req in [
            Request::Status,
            Request::Drain {
                backend: "b".into(),
                undo: true,
            },
            Request::DrainRegion {
                region: "r".into(),
                undo: false,
                timeout_seconds: None,
            },
            Request::Explain {
                protocol: "tcp".into(),
                client: "198.51.100.7:40000".into(),
                vip: "203.0.113.10:443".into(),
            },
            Request::Reload,
            Request::Stop { detach: false },
            Request::ShiftStart {
                service: "s".into(),
                from: "a".into(),
                to: "b".into(),
                stages: vec![50, 100],
                hold_ms: 1,
                min_healthy: None,
                over_capacity: false,
                max_repeated_syn_percent: None,
                min_new_flows: None,
                signal_window_ms: None,
                analysis_url: None,
            },
            Request::ShiftStatus { service: None },
            Request::ShiftPause {
                service: "s".into(),
            },
            Request::ShiftResume {
                service: "s".into(),
            },
            Request::ShiftAbort {
                service: "s".into(),
            },
        ] {
            let wire: serde_json::Value = serde_json::to_value(&req).unwrap();
            assert_eq!(wire["cmd"], req.cmd(), "{req:?}");
            assert_eq!(
                req.is_read_only(),
                wire["cmd"] == "status"
                    || wire["cmd"] == "explain"
                    || wire["cmd"] == "shift_status",
                "{req:?}"
            );
        }
    }

    #[test]
    fn requests_are_strict() {
        for bad in [
            r#"{"cmd":"stop","detatch":true}"#,
            r#"{"cmd":"stop"}"#,
            r#"{"cmd":"drain","backend":"x"}"#,
            r#"{"cmd":"status","extra":1}"#,
            r#"{"cmd":"reload","force":true}"#,
            r#"{"cmd":"stop","detach":true,"now":1}"#,
            r#"{"cmd":"drain","backend":"x","undo":false,"all":true}"#,
            r#"{"cmd":"drain","backend":7,"undo":false}"#,
            r#"{"cmd":"drain_region","backend":"x","undo":false}"#,
            r#"{"cmd":"drain_region","region":"x"}"#,
            r#"{"cmd":"restart"}"#,
            r#"{"backend":"x"}"#,
            r#"{"cmd":"shift_start","service":"w","from":"a","to":"b","stages":[10],"hold_ms":1}"#,
            r#"{"cmd":"shift_start","service":"w","from":"a","to":"b","stages":[10],"hold_ms":1,"over_capacity":false,"hold":5}"#,
            r#"{"cmd":"shift_start","service":"w","from":"a","stages":[10],"hold_ms":1,"over_capacity":false}"#,
            r#"{"cmd":"shift_start","service":"w","from":"a","to":"b","stages":[300],"hold_ms":1,"over_capacity":false}"#,
            r#"{"cmd":"shift_pause"}"#,
            r#"{"cmd":"shift_abort","service":"w","force":true}"#,
            r#"{"cmd":"shift_status","service":"w","all":true}"#,
        ] {
            assert!(
                serde_json::from_str::<Request>(bad).is_err(),
                "{bad} was accepted"
            );
        }
    }

    #[test]
    fn ok_and_error_responses() {
        round_trip(
            &Response::ok("web-2 drained"),
            r#"{"result":"ok","message":"web-2 drained"}"#,
        );
        round_trip(
            &Response::error_with_details(
                "config has 2 errors",
                ["services[0].vip: bad", "dataplane.mtu: \"x\""],
            ),
            r#"{"result":"error","message":"config has 2 errors","details":["services[0].vip: bad","dataplane.mtu: \"x\""]}"#,
        );
        round_trip(
            &Response::error("no such backend"),
            r#"{"result":"error","message":"no such backend","details":[]}"#,
        );
        // `details` may be left out.
        let r: Response = serde_json::from_str(r#"{"result":"error","message":"m"}"#).unwrap();
        assert_eq!(r, Response::error("m"));
    }

    #[test]
    fn status_response() {
        let report = StatusReport {
            generation: 7,
            config_path: "/etc/steer/steer.toml".into(),
            reloads: 2,
            reload_failures: 1,
            last_reload_error: Some("bad\nline".into()),
            services: vec![ServiceStatus {
                name: "web".into(),
                vip: "203.0.113.10:80/tcp".into(),
                affinity: Affinity::Flow,
                packets: 10,
                bytes: 1000,
                new_flows: 3,
                backends: vec![BackendStatus {
                    name: "web-1".into(),
                    address: "10.0.0.1".into(),
                    region: "eu".into(),
                    weight: 100,
                    effective_weight: 0,
                    health: Health::Down,
                    drained: false,
                    last_failure: Some("connection refused".into()),
                    packets: 9,
                    bytes: 900,
                    new_flows: 2,
                    ..BackendStatus::default()
                }],
                ..ServiceStatus::default()
            }],
            ..StatusReport::default()
        };
        // The report of a daemon before version, uptime, interfaces,
        // drops and health transitions were added.
        let json = concat!(
            r#"{"result":"status","generation":7,"config_path":"/etc/steer/steer.toml","#,
            r#""reloads":2,"reload_failures":1,"last_reload_error":"bad\nline","#,
            r#""services":[{"name":"web","vip":"203.0.113.10:80/tcp","affinity":"flow","#,
            r#""packets":10,"bytes":1000,"new_flows":3,"backends":[{"name":"web-1","#,
            r#""address":"10.0.0.1","region":"eu","weight":100,"effective_weight":0,"#,
            r#""health":"down","drained":false,"last_failure":"connection refused","#,
            r#""packets":9,"bytes":900,"new_flows":2}]}]}"#
        );
        let old: Response = serde_json::from_str(json).unwrap();
        assert_eq!(old, Response::Status(report.clone()));

        // The fields added later: a report without them (from an older
        // daemon) still reads, with defaults.
        let mut full = report.clone();
        full.version = "0.1.0".into();
        full.time = 1_700_000_300;
        full.uptime_seconds = 300;
        full.interfaces = vec![InterfaceStatus {
            name: "eth0".into(),
            mode: "driver".into(),
            adopted: true,
        }];
        full.drops = [("fragment".to_string(), 2)].into_iter().collect();
        full.ct_insert_failures = 1;
        full.services[0].backends[0].last_up_at = Some(1_700_000_010);
        full.services[0].backends[0].last_down_at = Some(1_700_000_200);
        full.services[0].backends[0].repeated_syns = 4;
        full.services[0].backends[0].handshakes = 11;
        let text = serde_json::to_string(&Response::Status(full.clone())).unwrap();
        for field in [
            r#""version":"0.1.0""#,
            r#""time":1700000300"#,
            r#""uptime_seconds":300"#,
            r#""interfaces":[{"name":"eth0","mode":"driver","adopted":true}]"#,
            r#""drops":{"fragment":2}"#,
            r#""ct_insert_failures":1"#,
            r#""last_up_at":1700000010,"last_down_at":1700000200"#,
            r#""new_flows":2,"repeated_syns":4,"handshakes":11"#,
        ] {
            assert!(text.contains(field), "{field} missing from {text}");
        }
        assert_eq!(
            serde_json::from_str::<Response>(&text).unwrap(),
            Response::Status(full)
        );

        round_trip(
            &Response::Status(StatusReport::default()),
            concat!(
                r#"{"result":"status","generation":0,"config_path":"","reloads":0,"#,
                r#""reload_failures":0,"last_reload_error":null,"services":[],"version":"","#,
                r#""time":0,"uptime_seconds":0,"interfaces":[],"drops":{},"ct_insert_failures":0,"#,
                r#""pmtu_replies":0,"#,
                r#""drained_regions":[],"regions":[]}"#
            ),
        );
    }
}

#[cfg(test)]
mod word_tests {
    use super::*;

    /// `value` is the JSON string `word` both ways, and displays as `word`.
    fn word_round_trip<T>(value: T, word: &str)
    where
        T: Serialize + for<'de> Deserialize<'de> + PartialEq + fmt::Debug + fmt::Display,
    {
        let json = format!("\"{word}\"");
        assert_eq!(serde_json::to_string(&value).unwrap(), json);
        assert_eq!(serde_json::from_str::<T>(&json).unwrap(), value);
        assert_eq!(value.to_string(), word);
    }

    #[test]
    fn health_and_affinity_words() {
        // The words of the protocol as documented (written by hand), each
        // both ways.
        for (health, word) in [
            (Health::Up, "up"),
            (Health::Down, "down"),
            (Health::Degraded, "degraded"),
            (Health::Unchecked, "unchecked"),
        ] {
            word_round_trip(health, word);
            assert_eq!(health, word);
        }
        for (affinity, word) in [(Affinity::Flow, "flow"), (Affinity::Client, "client")] {
            word_round_trip(affinity, word);
        }
        assert_ne!(Health::Up, "Up");
        // Unknown words are errors that name the known ones.
        let err = serde_json::from_str::<Health>(r#""sick""#).unwrap_err();
        assert!(
            err.to_string().contains(
                "unknown variant `sick`, expected one of `up`, `down`, `degraded`, `unchecked`"
            ),
            "{err}"
        );
        assert!(serde_json::from_str::<Affinity>(r#""Flow""#).is_err());
        let failing: Vec<Health> = Health::ALL.into_iter().filter(|h| h.is_failing()).collect();
        assert_eq!(failing, [Health::Down, Health::Degraded]);
    }

    #[test]
    fn missing_fields_take_defaults() {
        let b: BackendStatus = serde_json::from_str(r#"{"name":"web-1"}"#).unwrap();
        assert_eq!(b.health, Health::Unchecked);
        assert_eq!(b.name, "web-1");
        let s: ServiceStatus = serde_json::from_str(r#"{"name":"web"}"#).unwrap();
        assert_eq!(s.affinity, Affinity::Flow);
        // A status with a health word this client does not know is an
        // error, not a silent default.
        assert!(serde_json::from_str::<BackendStatus>(r#"{"health":"maybe"}"#).is_err());
    }
}
