//! Traffic from the client namespace: `steer-lab-backend client*` run in
//! `stl-client`, their JSON reports parsed.
use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr},
    process::{Child, Command, Stdio},
    time::Duration,
};

use anyhow::{bail, Context as _, Result};
use serde::Deserialize;

use super::{
    sys,
    topo::{Backend, NS_CLIENT},
};
use crate::util::describe;

/// What `client` and `client-udp` report.
#[derive(Clone, Debug, Deserialize)]
pub struct LoadReport {
    pub target: String,
    pub requests: u64,
    pub ok: u64,
    pub errors: u64,
    /// Answers per backend name (the name the backend reports, e.g. `eu1`,
    /// whichever of its addresses the packets were tunnelled to).
    pub backends: BTreeMap<String, u64>,
    pub errors_by_kind: BTreeMap<String, u64>,
    /// Source address → backend name (or `error: <kind>`) → count.
    pub by_source: BTreeMap<String, BTreeMap<String, u64>>,
    pub elapsed_ms: u64,
    /// Only with `per_request`.
    #[serde(default)]
    pub results: Vec<RequestResult>,
}

#[derive(Clone, Debug, Deserialize)]
pub struct RequestResult {
    /// Source address and port of the flow.
    pub from: Option<String>,
    pub backend: Option<String>,
    pub error: Option<String>,
}

/// What `client-stream` reports.
#[derive(Clone, Debug, Deserialize)]
pub struct StreamReport {
    pub target: String,
    pub streams: u64,
    pub ok: u64,
    pub failed: u64,
    pub backends: BTreeMap<String, u64>,
    pub elapsed_ms: u64,
    pub results: Vec<StreamResult>,
}

#[derive(Clone, Debug, Deserialize)]
pub struct StreamResult {
    pub from: Option<String>,
    pub backend: Option<String>,
    pub bytes: u64,
    pub received: u64,
    pub checksum: String,
    pub checksum_ok: bool,
    pub pattern_ok: bool,
    pub first_mismatch: Option<u64>,
    pub error: Option<String>,
    pub ok: bool,
    pub elapsed_ms: u64,
}

/// HTTP or UDP load: `requests` requests (each a new flow) to `to`, from
/// the `from` addresses in turn (none: the kernel picks).
#[derive(Clone, Debug)]
pub struct Load {
    pub to: SocketAddr,
    pub from: Vec<IpAddr>,
    pub path: String,
    pub requests: u32,
    pub concurrency: u32,
    pub timeout: Duration,
    pub per_request: bool,
}

impl Load {
    pub fn new(to: SocketAddr) -> Self {
        Load {
            to,
            from: Vec::new(),
            path: "/".into(),
            requests: 1,
            concurrency: 8,
            timeout: Duration::from_secs(2),
            per_request: false,
        }
    }

    pub fn from(mut self, from: impl IntoIterator<Item = IpAddr>) -> Self {
        self.from = from.into_iter().collect();
        self
    }

    pub fn path(mut self, path: &str) -> Self {
        self.path = path.to_owned();
        self
    }

    pub fn requests(mut self, n: u32) -> Self {
        self.requests = n;
        self
    }

    pub fn concurrency(mut self, n: u32) -> Self {
        self.concurrency = n;
        self
    }

    pub fn timeout(mut self, t: Duration) -> Self {
        self.timeout = t;
        self
    }

    pub fn per_request(mut self) -> Self {
        self.per_request = true;
        self
    }

    /// `command` and its arguments for this load.
    fn args(&self, command: &str) -> Vec<String> {
        let mut a = target_args(command, self.to, &self.from);
        a.extend([
            "--requests".into(),
            self.requests.to_string(),
            "--concurrency".into(),
            self.concurrency.to_string(),
            "--timeout-ms".into(),
            self.timeout.as_millis().to_string(),
        ]);
        if self.per_request {
            a.push("--per-request".into());
        }
        a
    }

    /// An upper bound on how long the run can take.
    fn bound(&self, attempts: u32) -> Duration {
        let waves = self.requests.div_ceil(self.concurrency.max(1));
        // Connect + read per request, a margin for process start.
        self.timeout * 2 * attempts * waves + Duration::from_secs(10)
    }
}

/// The start of every load client's command line: `command --to TO`, then
/// `--from ADDR` for each client address to send from.
pub fn target_args(command: &str, to: SocketAddr, from: &[IpAddr]) -> Vec<String> {
    let mut a = vec![command.to_owned(), "--to".into(), to.to_string()];
    for f in from {
        a.push("--from".into());
        a.push(f.to_string());
    }
    a
}

/// Long streams: `streams` concurrent `GET /stream` of `bytes` each, sent
/// `chunk` bytes every `interval`.
#[derive(Clone, Debug)]
pub struct Streams {
    pub to: SocketAddr,
    pub from: Vec<IpAddr>,
    pub streams: u32,
    pub bytes: u64,
    pub chunk: u32,
    pub interval: Duration,
    pub timeout: Duration,
}

impl Streams {
    /// Defaults: 4 streams of 100 KiB, 1 KiB every 50 ms (about 5 s).
    pub fn new(to: SocketAddr) -> Self {
        Streams {
            to,
            from: Vec::new(),
            streams: 4,
            bytes: 100 * 1024,
            chunk: 1024,
            interval: Duration::from_millis(50),
            timeout: Duration::from_secs(5),
        }
    }

    /// About how long each stream lasts.
    pub fn duration(&self) -> Duration {
        let chunks = self.bytes.div_ceil(u64::from(self.chunk.max(1)));
        self.interval * u32::try_from(chunks).unwrap_or(u32::MAX)
    }

    fn args(&self) -> Vec<String> {
        let mut a = target_args("client-stream", self.to, &self.from);
        a.extend([
            "--streams".into(),
            self.streams.to_string(),
            "--bytes".into(),
            self.bytes.to_string(),
            "--chunk".into(),
            self.chunk.to_string(),
            "--interval-ms".into(),
            self.interval.as_millis().to_string(),
            "--timeout-ms".into(),
            self.timeout.as_millis().to_string(),
        ]);
        a
    }

    fn bound(&self) -> Duration {
        self.duration() * 3 + self.timeout * 2 + Duration::from_secs(10)
    }
}

/// Streams running in the background; `wait` for their report.
pub struct RunningStreams {
    child: Child,
    bound: Duration,
    shown: String,
}

impl RunningStreams {
    pub fn wait(mut self) -> Result<StreamReport> {
        let status = sys::wait_timeout(&mut self.child, self.bound)?;
        if status.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
            bail!("`{}` did not finish within {:?}", self.shown, self.bound);
        }
        let out = self.child.wait_with_output()?;
        parse(&self.shown, &out)
    }
}

fn parse<T: for<'de> Deserialize<'de>>(shown: &str, out: &std::process::Output) -> Result<T> {
    if !out.status.success() {
        bail!(
            "`{shown}` failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    serde_json::from_slice(&out.stdout).with_context(|| {
        format!(
            "`{shown}` printed no report: {}",
            String::from_utf8_lossy(&out.stdout).trim()
        )
    })
}

/// The lab's client side, using the backend binary at `bin`.
pub struct Client<'a> {
    pub bin: &'a std::path::Path,
}

impl Client<'_> {
    fn command(&self, args: &[String]) -> Result<(Command, String)> {
        let mut cmd = sys::command_in(NS_CLIENT, self.bin)?;
        cmd.args(args);
        let shown = format!("[{NS_CLIENT}] {}", describe(&cmd));
        Ok((cmd, shown))
    }

    fn run<T: for<'de> Deserialize<'de>>(&self, args: &[String], bound: Duration) -> Result<T> {
        let (mut cmd, shown) = self.command(args)?;
        let out = sys::output_with_timeout(&mut cmd, bound).with_context(|| shown.clone())?;
        parse(&shown, &out)
    }

    pub fn http(&self, load: &Load) -> Result<LoadReport> {
        let mut args = load.args("client");
        args.extend(["--path".into(), load.path.clone()]);
        self.run(&args, load.bound(1))
    }

    pub fn udp(&self, load: &Load, attempts: u32) -> Result<LoadReport> {
        let mut args = load.args("client-udp");
        args.extend(["--attempts".into(), attempts.to_string()]);
        self.run(&args, load.bound(attempts))
    }

    pub fn streams(&self, s: &Streams) -> Result<StreamReport> {
        self.run(&s.args(), s.bound())
    }

    pub fn start_streams(&self, s: &Streams) -> Result<RunningStreams> {
        let (mut cmd, shown) = self.command(&s.args())?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("could not start `{shown}`"))?;
        Ok(RunningStreams {
            child,
            bound: s.bound(),
            shown,
        })
    }

    /// A control request to backend `b` (`fail`, `recover`, `degrade`,
    /// `state`), sent from the client to the backend's own address; its
    /// state as JSON.
    pub fn control(&self, b: &Backend, action: &str) -> Result<serde_json::Value> {
        let args: Vec<String> = vec![
            "ctl".into(),
            "--to".into(),
            b.control_v4().to_string(),
            action.into(),
        ];
        let (mut cmd, shown) = self.command(&args)?;
        let out = sys::output_with_timeout(&mut cmd, Duration::from_secs(10))?;
        parse(&shown, &out)
    }
}
