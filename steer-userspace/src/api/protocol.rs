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

use serde::{Deserialize, Serialize};

/// `BackendStatus::health` of a backend whose checks pass.
pub const HEALTH_UP: &str = "up";
/// `BackendStatus::health` of a backend whose checks fail; it gets no new flows.
pub const HEALTH_DOWN: &str = "down";
/// `BackendStatus::health` of a backend that answers but reports trouble.
pub const HEALTH_DEGRADED: &str = "degraded";
/// `BackendStatus::health` of a backend without a health check.
pub const HEALTH_UNCHECKED: &str = "unchecked";

/// A request from `steer status|drain|reload|stop` to the daemon.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(tag = "cmd", rename_all = "snake_case", from = "RequestWire")]
pub enum Request {
    /// Report generation, reload history and per-service, per-backend state.
    Status,
    /// Stop sending new flows to a backend (in every service), or with
    /// `undo`, resume.
    Drain { backend: String, undo: bool },
    /// Re-read the config file and apply it.
    Reload,
    /// Stop the daemon. With `detach`, leave the XDP program attached and its
    /// maps pinned so that traffic keeps flowing.
    Stop { detach: bool },
}

/// How a [`Request`] is read: the same shape, with the unit variants as empty
/// struct variants, because serde's `deny_unknown_fields` does not reject
/// extra fields next to the tag of a unit variant (`{"cmd":"status","x":1}`).
#[derive(Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case", deny_unknown_fields)]
enum RequestWire {
    Status {},
    Drain { backend: String, undo: bool },
    Reload {},
    Stop { detach: bool },
}

impl From<RequestWire> for Request {
    fn from(wire: RequestWire) -> Request {
        match wire {
            RequestWire::Status {} => Request::Status,
            RequestWire::Drain { backend, undo } => Request::Drain { backend, undo },
            RequestWire::Reload {} => Request::Reload,
            RequestWire::Stop { detach } => Request::Stop { detach },
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
}

/// One service (VIP, port, protocol) and its backends.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Default)]
#[serde(default)]
pub struct ServiceStatus {
    pub name: String,
    /// `"203.0.113.10:80/tcp"`, `"[2001:db8::10]:443/tcp"`; port 0 = all ports.
    pub vip: String,
    /// `"flow"` or `"client"`.
    pub affinity: String,
    pub packets: u64,
    pub bytes: u64,
    pub new_flows: u64,
    pub backends: Vec<BackendStatus>,
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
    /// Weight in the selection table now: 0 when drained or down.
    pub effective_weight: u32,
    /// [`HEALTH_UP`], [`HEALTH_DOWN`], [`HEALTH_DEGRADED`] or
    /// [`HEALTH_UNCHECKED`].
    pub health: String,
    pub drained: bool,
    /// Why the last failed check failed.
    pub last_failure: Option<String>,
    pub packets: u64,
    pub bytes: u64,
    pub new_flows: u64,
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
        round_trip(&Request::Reload, r#"{"cmd":"reload"}"#);
        round_trip(
            &Request::Stop { detach: true },
            r#"{"cmd":"stop","detach":true}"#,
        );
        round_trip(
            &Request::Stop { detach: false },
            r#"{"cmd":"stop","detach":false}"#,
        );
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
            r#"{"cmd":"restart"}"#,
            r#"{"backend":"x"}"#,
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
                affinity: "flow".into(),
                packets: 10,
                bytes: 1000,
                new_flows: 3,
                backends: vec![BackendStatus {
                    name: "web-1".into(),
                    address: "10.0.0.1".into(),
                    region: "eu".into(),
                    weight: 100,
                    effective_weight: 0,
                    health: "down".into(),
                    drained: false,
                    last_failure: Some("connection refused".into()),
                    packets: 9,
                    bytes: 900,
                    new_flows: 2,
                }],
            }],
        };
        let json = concat!(
            r#"{"result":"status","generation":7,"config_path":"/etc/steer/steer.toml","#,
            r#""reloads":2,"reload_failures":1,"last_reload_error":"bad\nline","#,
            r#""services":[{"name":"web","vip":"203.0.113.10:80/tcp","affinity":"flow","#,
            r#""packets":10,"bytes":1000,"new_flows":3,"backends":[{"name":"web-1","#,
            r#""address":"10.0.0.1","region":"eu","weight":100,"effective_weight":0,"#,
            r#""health":"down","drained":false,"last_failure":"connection refused","#,
            r#""packets":9,"bytes":900,"new_flows":2}]}]}"#
        );
        round_trip(&Response::Status(report), json);

        round_trip(
            &Response::Status(StatusReport::default()),
            concat!(
                r#"{"result":"status","generation":0,"config_path":"","reloads":0,"#,
                r#""reload_failures":0,"last_reload_error":null,"services":[]}"#
            ),
        );
    }
}
