//! `client-live`: HTTP GETs at a steady rate until stopped, each on a new
//! connection (a new flow), reported as one JSON line per request as soon
//! as it completes. For live views of where traffic goes (`cargo xtask
//! demo`), where the one report at the end that `client` prints comes too
//! late.
//!
//! ```text
//! {"seq":17,"start_us":1763840000123456,"ms":1.8,"src":"198.18.1.12","from":"198.18.1.12:40312","backend":"eu1"}
//! {"seq":18,"start_us":1763840000128456,"ms":2000.4,"src":"198.18.2.10","from":"198.18.2.10:53318","error":"timeout"}
//! ```
//!
//! `start_us` is the wall-clock time (µs since the Unix epoch) just before
//! the connection was opened, so that a caller on the same host can compare
//! it with the moment it changed something (a health check, a drain).
use std::{
    io::{self, Write},
    net::{IpAddr, SocketAddr},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Mutex,
    },
    thread,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::Result;
use serde_json::{json, Value};

use crate::client::{connect, error_kind, request};

pub struct LiveOptions {
    pub from: Vec<IpAddr>,
    pub to: SocketAddr,
    pub path: String,
    /// Requests per second, over all workers.
    pub rate: f64,
    pub concurrency: usize,
    pub timeout: Duration,
    /// Stop after this long; `None`: until killed or stdout is closed.
    pub duration: Option<Duration>,
}

fn unix_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// Hands out start times `period` apart. A worker that is late (every
/// worker was busy, e.g. waiting for timeouts) does not cause a burst
/// afterwards: the schedule restarts from now.
struct Pacer {
    next: Mutex<Instant>,
    period: Duration,
}

impl Pacer {
    fn slot(&self) -> Instant {
        let Ok(mut next) = self.next.lock() else {
            return Instant::now();
        };
        let now = Instant::now();
        if *next + self.period < now {
            *next = now;
        }
        let at = *next;
        *next += self.period;
        at
    }
}

fn one(o: &LiveOptions, seq: u64) -> Value {
    let src = (!o.from.is_empty()).then(|| o.from[seq as usize % o.from.len()]);
    let start_us = unix_us();
    let t = Instant::now();
    let mut local = None;
    let result = connect(src, o.to, o.timeout)
        .and_then(|s| {
            local = s.local_addr().ok();
            request(s, "GET", o.to, &o.path)
        })
        .map_err(|e| error_kind(&e))
        .and_then(|r| match (r.status, r.backend()) {
            (200, Some(b)) => Ok(b),
            (200, None) => Err("no backend name in the response".to_owned()),
            (s, _) => Err(format!("status {s}")),
        });
    let mut v = json!({
        "seq": seq,
        "start_us": start_us,
        "ms": (t.elapsed().as_secs_f64() * 1e6).round() / 1e3,
        "src": src.map(|a| a.to_string()),
        "from": local.map(|a| a.to_string()),
    });
    match result {
        Ok(b) => v["backend"] = json!(b),
        Err(e) => v["error"] = json!(e),
    }
    v
}

/// `client-live`: runs until `duration` is over, or until stdout is gone
/// (the reader exited), or the process is killed.
pub fn live_client(o: &LiveOptions) -> Result<()> {
    let rate = if o.rate.is_finite() && o.rate > 0.0 {
        o.rate
    } else {
        100.0
    };
    let pacer = Pacer {
        next: Mutex::new(Instant::now()),
        period: Duration::from_secs_f64(1.0 / rate),
    };
    let end = o.duration.map(|d| Instant::now() + d);
    let seq = AtomicU64::new(0);
    let stop = AtomicBool::new(false);
    let out = Mutex::new(io::stdout());
    thread::scope(|s| {
        for _ in 0..o.concurrency.max(1) {
            s.spawn(|| {
                while !stop.load(Ordering::Relaxed) {
                    let at = pacer.slot();
                    if end.is_some_and(|e| at >= e) {
                        break;
                    }
                    let now = Instant::now();
                    if at > now {
                        thread::sleep(at - now);
                    }
                    let v = one(o, seq.fetch_add(1, Ordering::Relaxed));
                    let written = out
                        .lock()
                        .map_err(|_| io::Error::other("stdout lock poisoned"))
                        .and_then(|mut w| {
                            writeln!(w, "{v}")?;
                            w.flush()
                        });
                    if written.is_err() {
                        // Nobody reads any more.
                        stop.store(true, Ordering::Relaxed);
                    }
                }
            });
        }
    });
    Ok(())
}
