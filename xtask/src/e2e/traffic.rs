//! Traffic the lab library does not have: a continuous UDP stream with
//! sequence numbers, malformed frames, background client processes, and a
//! loop of HTTP batches on a thread with a timestamp per batch.
use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr},
    process::{Child, Stdio},
    sync::atomic::{AtomicBool, Ordering},
    thread::{self, JoinHandle},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{anyhow, bail, Context as _, Result};
use serde_json::Value;

use crate::{
    lab::{self, client, topo, Lab, Load},
    util::describe,
};

/// Milliseconds since the epoch (the UDP client reports in these).
pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// A client process in the client namespace, running in the background;
/// its stdout is a JSON report.
pub struct Background {
    child: Option<Child>,
    shown: String,
    bound: Duration,
    started: Instant,
    out: Option<JoinHandle<Vec<u8>>>,
    err: Option<JoinHandle<Vec<u8>>>,
}

fn reader(p: Option<impl std::io::Read + Send + 'static>) -> Option<JoinHandle<Vec<u8>>> {
    p.map(|mut p| {
        thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = p.read_to_end(&mut buf);
            buf
        })
    })
}

impl Background {
    /// `steer-lab-backend ARGS...` in the client namespace; `bound` is the
    /// longest it may run.
    pub fn spawn(lab: &Lab, args: &[String], bound: Duration) -> Result<Background> {
        let mut cmd = lab::command_in(topo::NS_CLIENT, lab.backend_bin())?;
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let shown = format!("[{}] {}", topo::NS_CLIENT, describe(&cmd));
        let mut child = cmd
            .spawn()
            .with_context(|| format!("could not start `{shown}`"))?;
        let out = reader(child.stdout.take());
        let err = reader(child.stderr.take());
        Ok(Background {
            child: Some(child),
            shown,
            bound,
            started: Instant::now(),
            out,
            err,
        })
    }

    /// Waits (at most until its bound) and parses the report.
    pub fn wait(mut self) -> Result<Value> {
        let mut child = self.child.take().ok_or_else(|| anyhow!("already waited"))?;
        let left = self.bound.saturating_sub(self.started.elapsed());
        let status = match lab::sys::wait_timeout(&mut child, left)? {
            Some(s) => s,
            None => {
                let _ = child.kill();
                let _ = child.wait();
                bail!("`{}` did not finish within {:?}", self.shown, self.bound);
            }
        };
        let out = self
            .out
            .take()
            .and_then(|h| h.join().ok())
            .unwrap_or_default();
        let err = self
            .err
            .take()
            .and_then(|h| h.join().ok())
            .unwrap_or_default();
        if !status.success() {
            bail!(
                "`{}` failed ({status}): {}",
                self.shown,
                String::from_utf8_lossy(&err).trim()
            );
        }
        serde_json::from_slice(&out).with_context(|| {
            format!(
                "`{}` printed no report: {}",
                self.shown,
                String::from_utf8_lossy(&out).trim()
            )
        })
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A continuous UDP stream: `flows` sockets from `from`, `rate` datagrams
/// per second each, for `duration`.
pub struct UdpStream {
    pub to: SocketAddr,
    pub from: Vec<IpAddr>,
    pub flows: u32,
    pub rate: u32,
    pub duration: Duration,
    pub linger: Duration,
}

impl UdpStream {
    pub fn start(&self, lab: &Lab) -> Result<Background> {
        let mut a = client::target_args("client-udp-stream", self.to, &self.from);
        a.extend([
            "--flows".into(),
            self.flows.to_string(),
            "--rate".into(),
            self.rate.to_string(),
            "--duration-ms".into(),
            self.duration.as_millis().to_string(),
            "--linger-ms".into(),
            self.linger.as_millis().to_string(),
        ]);
        let bound = self.duration + self.linger + Duration::from_secs(15);
        Background::spawn(lab, &a, bound)
    }
}

/// What a UDP stream report says, summed.
#[derive(Debug, Default)]
pub struct UdpReport {
    pub sent: u64,
    pub received: u64,
    pub lost: u64,
    pub send_errors: u64,
    pub duplicates: u64,
    pub bad: u64,
    pub moves: u64,
    pub flow_errors: u64,
    pub backends: BTreeMap<String, u64>,
    /// Send times (unix ms) of the first lost datagrams of each flow.
    pub lost_at: Vec<u64>,
}

impl UdpReport {
    pub fn from_json(v: Value) -> UdpReport {
        let n = |k: &str| v[k].as_u64().unwrap_or(0);
        let mut lost_at: Vec<u64> = v["results"]
            .as_array()
            .map(|a| {
                a.iter()
                    .flat_map(|r| r["lost_at_unix_ms"].as_array().cloned().unwrap_or_default())
                    .filter_map(|x| x.as_u64())
                    .collect()
            })
            .unwrap_or_default();
        lost_at.sort_unstable();
        UdpReport {
            sent: n("sent"),
            received: n("received"),
            lost: n("lost"),
            send_errors: n("send_errors"),
            duplicates: n("duplicates"),
            bad: n("bad"),
            moves: n("moves"),
            flow_errors: n("flow_errors"),
            backends: serde_json::from_value(v["backends"].clone()).unwrap_or_default(),
            lost_at,
        }
    }

    pub fn line(&self) -> String {
        format!(
            "sent {}, echoed {}, lost {}, send errors {}, duplicates {}, bad {}, flow moves {}; by backend {}",
            self.sent,
            self.received,
            self.lost,
            self.send_errors,
            self.duplicates,
            self.bad,
            self.moves,
            counts(&self.backends)
        )
    }

    /// Zero losses, zero errors of any kind.
    pub fn check_clean(&self, what: &str) -> Result<()> {
        if self.sent == 0 {
            bail!("{what}: nothing was sent");
        }
        if self.lost != 0 || self.send_errors != 0 || self.flow_errors != 0 || self.bad != 0 {
            bail!("{what}: {}", self.line());
        }
        Ok(())
    }
}

/// `a 3, b 4`.
pub fn counts(m: &BTreeMap<String, u64>) -> String {
    if m.is_empty() {
        return "-".into();
    }
    m.iter()
        .map(|(k, v)| format!("{k} {v}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// One batch of an [`http_loop`]: when it ran (relative to the loop's
/// `t0`) and what it got.
#[derive(Clone, Debug)]
pub struct Batch {
    pub start: Duration,
    pub end: Duration,
    pub requests: u64,
    pub ok: u64,
    pub errors: BTreeMap<String, u64>,
}

/// Runs `load` again and again until `stop` is set; one [`Batch`] each.
/// A batch that could not run at all counts all its requests as errors.
pub fn http_loop(lab: &Lab, load: &Load, t0: Instant, stop: &AtomicBool) -> Vec<Batch> {
    let mut v = Vec::new();
    while !stop.load(Ordering::Acquire) {
        let start = t0.elapsed();
        let r = lab.http(load);
        let end = t0.elapsed();
        v.push(match r {
            Ok(r) => Batch {
                start,
                end,
                requests: r.requests,
                ok: r.ok,
                errors: r.errors_by_kind,
            },
            Err(e) => Batch {
                start,
                end,
                requests: u64::from(load.requests),
                ok: 0,
                errors: BTreeMap::from([(format!("client failed: {e:#}"), 1)]),
            },
        });
    }
    v
}

/// Sums of a list of batches.
pub fn sum_batches(b: &[Batch]) -> (u64, u64, BTreeMap<String, u64>) {
    let mut errors = BTreeMap::new();
    for x in b {
        for (k, n) in &x.errors {
            *errors.entry(k.clone()).or_default() += n;
        }
    }
    (
        b.iter().map(|x| x.requests).sum(),
        b.iter().map(|x| x.ok).sum(),
        errors,
    )
}
