//! Passive health with real connections (docs/lab.md "The passive
//! scenarios"): a backend that black-holes new connections while its
//! health checks pass is ejected by steer's outlier detection, no more
//! than the cap at once, and comes back through slow start; and a staged
//! shift whose target black-holes new connections rolls back on the
//! repeated-SYN signal without waiting for its hold.
//!
//! The fault is the lab backend's black-hole mode (`steer-lab-backend ctl
//! blackhole=on`): its decapsulator drops every new connection's SYN and
//! passes everything else, and its health endpoints, reached without the
//! tunnel, still answer. The clients open a new connection per request at a
//! steady rate (`client-live`, each line stamped with the wall clock) with
//! a 2 s timeout, so a black-holed connection's kernel sends its SYN once
//! more after 1 s: the repeated SYN steer counts. Expectations (the cap,
//! the shares, the times) are worked out here from the scenario's own
//! settings, never read back from steer; [`passive_of`] and [`shift_of`]
//! read `steer status --json` and are the only places that name its
//! passive-health fields.
use std::{
    collections::BTreeMap,
    net::IpAddr,
    thread,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{anyhow, bail, Context as _, Result};
use serde_json::Value;
use steer_api::ShiftReport;

use super::{
    config::Cfg,
    daemon::{self, Steer},
    policy_scenarios::client_live,
    Ctx,
};
use crate::lab::{
    policy::{self, GEO_CLASSES},
    topo, Lab,
};

// ------------------------------------------------------------ settings --

/// `outlier_interval`: the window the repeated-SYN ratio is measured over.
const OUTLIER_INTERVAL: Duration = Duration::from_secs(5);
/// `outlier_repeated_syn_percent`.
const OUTLIER_PERCENT: i64 = 30;
/// `outlier_min_new_flows`.
const OUTLIER_MIN_FLOWS: i64 = 10;
/// `outlier_base_ejection_time`: the first ejection lasts this long.
const EJECTION: Duration = Duration::from_secs(8);
/// `max_ejection_percent`.
const MAX_EJECTION_PERCENT: usize = 10;
/// `slow_start_window`.
const SLOW_START: Duration = Duration::from_secs(5);
/// `slow_start_min_weight_percent`.
const SLOW_START_MIN_PERCENT: i64 = 10;
/// The client's connect timeout: one retried SYN (Linux sends it after
/// 1 s), then the connection fails.
const CLIENT_TIMEOUT_MS: u64 = 2_000;
/// Client threads: enough that connections hanging on a black-holed
/// backend for 2 s do not slow the rate down.
const CLIENT_CONCURRENCY: u32 = 256;
/// How often the scenarios read `steer status`.
const POLL: Duration = Duration::from_millis(100);

/// Wall-clock µs since the Unix epoch (the clock of `client-live`).
fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

fn secs(us: u64) -> f64 {
    us as f64 / 1e6
}

// ------------------------------------------------ steer status, passive --

/// One backend's passive health as `steer status --json` shows it.
#[derive(Clone, Debug, PartialEq)]
pub(super) struct Passive {
    /// `up`, `down`, `degraded`, `unchecked`: the active health checks.
    pub(super) health: String,
    pub(super) ejected: bool,
    /// Unix ms at which the ejection ends; none while not ejected.
    pub(super) ejected_until_ms: Option<u64>,
    /// How many times it has been ejected.
    pub(super) ejections: u64,
    pub(super) repeated_syns: u64,
    pub(super) handshakes: u64,
    pub(super) new_flows: u64,
    /// Its share of a full weight while it ramps up; none when not ramping.
    pub(super) slow_start_percent: Option<f64>,
}

/// The backends of `service` in a `steer status --json` document, with
/// their passive health. Every field name of the daemon's passive health
/// is here and nowhere else: a rename is one edit.
pub(super) fn passive_of(status: &Value, service: &str) -> Result<BTreeMap<String, Passive>> {
    let svc = service_json(status, service)?;
    let backends = svc
        .get("backends")
        .and_then(Value::as_array)
        .ok_or_else(|| anyhow!("`steer status --json`: service {service} has no backends list"))?;
    let mut m = BTreeMap::new();
    for b in backends {
        let name = b
            .get("name")
            .and_then(Value::as_str)
            .ok_or_else(|| anyhow!("`steer status --json`: a backend of {service} has no name"))?;
        let field = |k: &str| -> Result<&Value> {
            b.get(k).ok_or_else(|| {
                anyhow!(
                    "`steer status --json`: backend {name} of {service} has no {k:?} (this \
                     scenario needs the daemon's passive health; renamed? see passive_of)"
                )
            })
        };
        let count = |k: &str| -> Result<u64> {
            field(k)?
                .as_u64()
                .ok_or_else(|| anyhow!("backend {name} of {service}: {k:?} is not a count"))
        };
        let opt = |k: &str| -> Result<Option<&Value>> {
            let v = field(k)?;
            Ok((!v.is_null()).then_some(v))
        };
        let p = Passive {
            health: field("health")?
                .as_str()
                .ok_or_else(|| anyhow!("backend {name} of {service}: \"health\" is no word"))?
                .to_owned(),
            ejected: field("ejected")?
                .as_bool()
                .ok_or_else(|| anyhow!("backend {name} of {service}: \"ejected\" is no bool"))?,
            ejected_until_ms: opt("ejected_until")?
                .map(|v| {
                    v.as_u64().ok_or_else(|| {
                        anyhow!("backend {name} of {service}: \"ejected_until\" is no unix ms")
                    })
                })
                .transpose()?,
            ejections: count("ejections")?,
            repeated_syns: count("repeated_syns")?,
            handshakes: count("handshakes")?,
            new_flows: count("new_flows")?,
            slow_start_percent: opt("slow_start_percent")?
                .map(|v| {
                    v.as_f64().ok_or_else(|| {
                        anyhow!("backend {name} of {service}: \"slow_start_percent\" is no number")
                    })
                })
                .transpose()?,
        };
        m.insert(name.to_owned(), p);
    }
    Ok(m)
}

/// The shift of `service` in a `steer status --json` document (none: no
/// shift).
pub(super) fn shift_of(status: &Value, service: &str) -> Result<Option<ShiftReport>> {
    match service_json(status, service)?.get("shift") {
        None | Some(Value::Null) => Ok(None),
        Some(v) => serde_json::from_value(v.clone())
            .map(Some)
            .with_context(|| format!("`steer status --json`: the shift of {service}")),
    }
}

/// Whether a shift state word means rolled back (`rolled_back` in JSON,
/// `rolled back` in words).
pub(super) fn rolled_back(state: &str) -> bool {
    matches!(state, "rolled_back" | "rolled back")
}

/// Whether a rollback reason names the repeated-SYN signal.
pub(super) fn repeated_syn_reason(reason: &str) -> bool {
    let r = reason.to_ascii_lowercase();
    r.contains("repeated") && r.contains("syn")
}

fn service_json<'v>(status: &'v Value, service: &str) -> Result<&'v Value> {
    status
        .get("services")
        .and_then(Value::as_array)
        .and_then(|a| {
            a.iter()
                .find(|s| s.get("name").and_then(Value::as_str) == Some(service))
        })
        .ok_or_else(|| anyhow!("`steer status --json` has no service {service}"))
}

/// `steer status --json`, untyped (the passive fields are read by
/// [`passive_of`]).
fn status_json(steer: &Steer) -> Result<Value> {
    let text = steer.cli_ok(&["status", "--json"])?;
    serde_json::from_str(&text).context("parsing `steer status --json`")
}

/// How many log lines have `message` and the field `backend=NAME` (a
/// tracing line; the value may be quoted).
fn log_lines(log: &str, message: &str, backend: &str) -> usize {
    log.lines()
        .filter(|l| l.contains(message))
        .filter(|l| {
            l.split_whitespace().any(|w| {
                w.strip_prefix("backend=")
                    .is_some_and(|v| v.trim_matches(|c| c == '"' || c == ',') == backend)
            })
        })
        .count()
}

// -------------------------------------------------------------- faults --

/// Turns every host's black-hole mode off when dropped (a scenario that
/// fails half-way must not leave a black hole to the next one).
struct Unblackhole<'a> {
    lab: &'a Lab,
}

impl Drop for Unblackhole<'_> {
    fn drop(&mut self) {
        for b in &topo::BACKENDS {
            let _ = self.lab.control(b.name, "blackhole=off");
        }
    }
}

/// Black-hole mode on or off on backend host `host`; checks that the
/// backend says so.
fn blackhole(lab: &Lab, host: &str, on: bool) -> Result<()> {
    let word = if on { "blackhole=on" } else { "blackhole=off" };
    let state = lab.control(host, word)?;
    if state.get("blackhole").and_then(Value::as_bool) != Some(on) {
        bail!("{host}: `ctl {word}` answered {state}, which does not say blackhole={on}");
    }
    Ok(())
}

// ------------------------------------------------------------- clients --

/// One `client-live` line.
#[derive(serde::Deserialize, Debug)]
struct Line {
    /// Wall-clock µs since the Unix epoch when the connection started.
    start_us: u64,
    /// How long the request took, milliseconds.
    ms: f64,
    /// The backend host that answered (none: the request failed).
    backend: Option<String>,
}

/// `client-live` to web at `rate` connections/s for `secs` from `from`,
/// with [`CLIENT_CONCURRENCY`] threads and a [`CLIENT_TIMEOUT_MS`]
/// timeout; its lines.
fn live(lab: &Lab, from: &[IpAddr], rate: f64, secs: u64) -> Result<Vec<Line>> {
    client_live(lab, from, rate, CLIENT_CONCURRENCY, CLIENT_TIMEOUT_MS, secs)
}

/// Connections started in `[from_us, to_us)`.
#[derive(Debug, Default)]
struct Window {
    ok: u64,
    failed: u64,
    /// Answered after more than 900 ms: their first SYN went unanswered
    /// and the retried one got through.
    recovered: u64,
    /// Answered per backend host.
    hosts: BTreeMap<String, u64>,
}

impl Window {
    fn of(lines: &[Line], from_us: u64, to_us: u64) -> Window {
        let mut w = Window::default();
        for l in lines
            .iter()
            .filter(|l| l.start_us >= from_us && l.start_us < to_us)
        {
            match &l.backend {
                Some(b) => {
                    w.ok += 1;
                    if l.ms > 900.0 {
                        w.recovered += 1;
                    }
                    *w.hosts.entry(b.clone()).or_default() += 1;
                }
                None => w.failed += 1,
            }
        }
        w
    }

    fn total(&self) -> u64 {
        self.ok + self.failed
    }

    fn failed_pct(&self) -> f64 {
        if self.total() == 0 {
            0.0
        } else {
            100.0 * self.failed as f64 / self.total() as f64
        }
    }

    fn line(&self) -> String {
        format!(
            "{} connections, {} answered ({} after a retried SYN), {} failed ({:.2}%)",
            self.total(),
            self.ok,
            self.recovered,
            self.failed,
            self.failed_pct()
        )
    }
}

// ------------------------------------------------- passive-ejection --

/// What the passive-ejection run saw, with wall-clock µs.
struct Ejection {
    t_fault: u64,
    t_fault_ack: u64,
    t_ejected: u64,
    ejected: String,
    at_ejection: Passive,
    flat: (u64, u64),
    t_off: u64,
    t_returned: u64,
    ramp: Vec<f64>,
    t_ramped: u64,
    most_ejected: usize,
    notes: Vec<String>,
}

/// Polls `steer status` every [`POLL`] until `done` holds for the
/// service's backends, or fails after `limit` saying `what`. Every poll
/// also goes to `each` (it may fail the wait). Returns the time (wall
/// clock µs, just before the poll) and the backends.
fn poll_until(
    ctx: &Ctx,
    steer: &Steer,
    limit: Duration,
    what: &str,
    mut each: impl FnMut(u64, &BTreeMap<String, Passive>) -> Result<()>,
    done: impl Fn(&BTreeMap<String, Passive>) -> bool,
) -> Result<(u64, BTreeMap<String, Passive>)> {
    let t = Instant::now();
    loop {
        ctx.check_time(what)?;
        let at = now_us();
        let m = passive_of(&status_json(steer)?, "web")?;
        each(at, &m)?;
        if done(&m) {
            return Ok((at, m));
        }
        if t.elapsed() > limit {
            let ejected: Vec<&String> = m.iter().filter(|(_, p)| p.ejected).map(|x| x.0).collect();
            bail!("{what}: not within {limit:?} (ejected now: {ejected:?})");
        }
        thread::sleep(POLL);
    }
}

fn ejected_names(m: &BTreeMap<String, Passive>) -> Vec<String> {
    m.iter()
        .filter(|(_, p)| p.ejected)
        .map(|(n, _)| n.clone())
        .collect()
}

/// Passive ejection: `web` over all twelve backend entries of the lab
/// (the six hosts by their IPv4 and by their IPv6 address) with outlier
/// detection (window 5 s, repeated-SYN ratio above 30 % over at least 10
/// new flows, ejection 8 s, `max_ejection_percent = 10`: at most one of
/// twelve) and slow start (5 s). Under 300 new connections/s from the
/// client prefixes, host us1 turns black-hole mode on: its two entries,
/// `us1` and `us1-v6`, drop every new connection while their health
/// checks pass. Within the window + 5 s exactly one of them is ejected,
/// its health still up; never more than one at once; new flows to it stop
/// (its new-flow counter stays flat); the other keeps black-holing (its
/// share of failures is 1 of the 11 backends left). Black-hole off; the
/// ejected one returns when its 8 s are up, ramps (slow start shown), and
/// ends its ramp; no connection fails after the black hole ends.
pub fn passive_ejection(ctx: &Ctx) -> Result<String> {
    let victim = "us1";
    let mut entries: Vec<String> = topo::BACKENDS.iter().map(|b| b.name.to_owned()).collect();
    entries.extend(topo::BACKENDS.iter().map(topo::Backend::v6_entry));
    let holed: Vec<String> = vec![victim.to_owned(), format!("{victim}-v6")];
    // The cap: 10 % of the backends, at least one.
    let cap = (entries.len() * MAX_EJECTION_PERCENT / 100).max(1);
    if entries.len() < 10 || cap != 1 {
        bail!(
            "the scenario needs ≥ 10 backends with a cap of 1; has {} with a cap of {cap}",
            entries.len()
        );
    }
    let mut cfg = Cfg::lab()?;
    let refs: Vec<&str> = entries.iter().map(String::as_str).collect();
    cfg.set_service_backends("web", &refs)?;
    let dur = |d: Duration| format!("{}s", d.as_secs());
    let t = &mut cfg.t;
    policy::set_service(t, "web", "outlier_detection", true)?;
    policy::set_service(t, "web", "outlier_interval", dur(OUTLIER_INTERVAL))?;
    policy::set_service(t, "web", "outlier_repeated_syn_percent", OUTLIER_PERCENT)?;
    policy::set_service(t, "web", "outlier_min_new_flows", OUTLIER_MIN_FLOWS)?;
    policy::set_service(t, "web", "outlier_base_ejection_time", dur(EJECTION))?;
    policy::set_service(t, "web", "outlier_max_ejection_time", "300s")?;
    policy::set_service(
        t,
        "web",
        "max_ejection_percent",
        i64::try_from(MAX_EJECTION_PERCENT)?,
    )?;
    policy::set_service(t, "web", "slow_start_window", dur(SLOW_START))?;
    policy::set_service(
        t,
        "web",
        "slow_start_min_weight_percent",
        SLOW_START_MIN_PERCENT,
    )?;
    let path = ctx.file("passive-ejection.toml");
    cfg.write(&path)?;
    ctx.say(format!(
        "web: {} backends ({}), outlier window {}, ratio > {OUTLIER_PERCENT}% over ≥ \
         {OUTLIER_MIN_FLOWS} new flows, ejection {}, cap {MAX_EJECTION_PERCENT}% = {cap}; \
         black hole on host {victim} ({})",
        entries.len(),
        refs.join(", "),
        dur(OUTLIER_INTERVAL),
        dur(EJECTION),
        holed.join(", ")
    ));

    let _restore = Unblackhole { lab: ctx.lab };
    let steer = Steer::start(ctx, &path)?;
    let from = topo::client_addrs(false);
    let rate = 300.0;
    let load_secs = 40;
    let detect_limit = OUTLIER_INTERVAL + Duration::from_secs(5);

    let out = thread::scope(|sc| -> Result<_> {
        let lab = ctx.lab;
        let f = from.clone();
        let h = sc.spawn(move || live(lab, &f, rate, load_secs));
        let run = (|| -> Result<Ejection> {
            let mut notes = Vec::new();
            // Every backend up, nothing ejected or ramping, before the
            // fault (slow start may ramp the backends that came up at
            // start-up).
            poll_until(
                ctx,
                &steer,
                Duration::from_secs(15),
                "every backend up, none ejected or ramping before the fault",
                |_, _| Ok(()),
                |m| {
                    m.len() == entries.len()
                        && m.values().all(|p| {
                            p.health == "up" && !p.ejected && p.slow_start_percent.is_none()
                        })
                },
            )?;
            thread::sleep(Duration::from_millis(3_000));
            let t_fault = now_us();
            blackhole(ctx.lab, victim, true)?;
            let t_fault_ack = now_us();

            let mut most = 0usize;
            let mut cap_check = |at: u64, m: &BTreeMap<String, Passive>| -> Result<()> {
                let ej = ejected_names(m);
                most = most.max(ej.len());
                if ej.len() > cap {
                    bail!(
                        "{} backends ejected at once ({}) at {:+.2} s, over the cap of {cap}",
                        ej.len(),
                        ej.join(", "),
                        secs(at.saturating_sub(t_fault))
                    );
                }
                Ok(())
            };
            let (t_ejected, m) = poll_until(
                ctx,
                &steer,
                detect_limit,
                "a black-holed backend ejected",
                &mut cap_check,
                |m| m.values().any(|p| p.ejected),
            )?;
            let ejected = ejected_names(&m).remove(0);
            if !holed.contains(&ejected) {
                bail!(
                    "{ejected} was ejected, but only {} black-hole connections",
                    holed.join(", ")
                );
            }
            let at_ejection = m[&ejected].clone();

            // New flows to the ejected backend stop.
            thread::sleep(Duration::from_millis(500));
            let (_, m0) = poll_until(
                ctx,
                &steer,
                Duration::ZERO,
                "reading the counters",
                &mut cap_check,
                |_| true,
            )?;
            let flat0 = m0[&ejected].new_flows;
            // 5 s: the failure rate while ejected is measured on the
            // connections that ended before the black hole does (those
            // started up to a client timeout before its end may be
            // answered after it, by a retried SYN).
            let watch_until = Instant::now() + Duration::from_secs(5);
            let (_, m1) = poll_until(
                ctx,
                &steer,
                Duration::from_secs(6),
                "watching the ejected backend",
                |at, m| {
                    cap_check(at, m)?;
                    let p = &m[&ejected];
                    if !p.ejected {
                        bail!(
                            "{ejected} came back after {:.2} s, before its {EJECTION:?}",
                            secs(at.saturating_sub(t_ejected))
                        );
                    }
                    if p.health != "up" {
                        bail!(
                            "{ejected}: health {} while ejected (the active checks should pass)",
                            p.health
                        );
                    }
                    Ok(())
                },
                |_| Instant::now() >= watch_until,
            )?;
            let flat1 = m1[&ejected].new_flows;

            let t_off = now_us();
            blackhole(ctx.lab, victim, false)?;

            // Back when the ejection time is up, then a ramp.
            let return_limit = EJECTION + Duration::from_secs(3);
            let mut ramp = Vec::new();
            let (t_returned, m) = poll_until(
                ctx,
                &steer,
                return_limit,
                "the ejected backend back",
                &mut cap_check,
                |m| !m[&ejected].ejected,
            )?;
            if let Some(p) = m[&ejected].slow_start_percent {
                ramp.push(p);
            }
            let (t_ramped, _) = poll_until(
                ctx,
                &steer,
                SLOW_START + Duration::from_secs(3),
                "the returned backend's ramp over",
                |at, m| {
                    cap_check(at, m)?;
                    if let Some(p) = m[&ejected].slow_start_percent {
                        ramp.push(p);
                    }
                    Ok(())
                },
                |m| m[&ejected].slow_start_percent.is_none(),
            )?;
            let other = holed
                .iter()
                .find(|h| **h != ejected)
                .cloned()
                .unwrap_or_default();
            let (_, m) = poll_until(
                ctx,
                &steer,
                Duration::ZERO,
                "reading the counters",
                |_, _| Ok(()),
                |_| true,
            )?;
            if let Some(p) = m.get(&other) {
                notes.push(format!(
                    "{other} (black-holed, not ejected: the cap): {} new flows, {} repeated SYNs, \
                     {} ejections so far",
                    p.new_flows, p.repeated_syns, p.ejections
                ));
            }
            Ok(Ejection {
                t_fault,
                t_fault_ack,
                t_ejected,
                ejected,
                at_ejection,
                flat: (flat0, flat1),
                t_off,
                t_returned,
                ramp,
                t_ramped,
                most_ejected: most,
                notes,
            })
        })();
        let lines = h
            .join()
            .map_err(|_| anyhow!("the client thread panicked"))?;
        Ok((lines?, run?))
    });
    let log = steer.log_text();
    let stop = steer.stop();
    let (lines, e) = out?;
    stop?;

    let mut bad = Vec::new();
    let detection = secs(e.t_ejected.saturating_sub(e.t_fault));
    ctx.say(format!(
        "{} ejected {detection:.2} s after the black hole (limit {:.0} s = window + 5 s); \
         health {}, {} repeated SYNs of {} new flows, {} handshakes, ejections {}",
        e.ejected,
        detect_limit.as_secs_f64(),
        e.at_ejection.health,
        e.at_ejection.repeated_syns,
        e.at_ejection.new_flows,
        e.at_ejection.handshakes,
        e.at_ejection.ejections
    ));
    if e.at_ejection.health != "up" {
        bad.push(format!(
            "{} was {} when ejected; its active health should still be up",
            e.ejected, e.at_ejection.health
        ));
    }
    if e.at_ejection.repeated_syns == 0 {
        bad.push(format!("{} was ejected with 0 repeated SYNs", e.ejected));
    }
    if e.at_ejection.ejections != 1 {
        bad.push(format!(
            "{}: {} ejections at its first ejection",
            e.ejected, e.at_ejection.ejections
        ));
    }
    // ejected_until = the ejection's start + 8 s; the start lies within a
    // poll (and a measurement tick) before it was seen.
    match e.at_ejection.ejected_until_ms {
        Some(until) => {
            let ahead = until as f64 / 1e3 - secs(e.t_ejected);
            ctx.say(format!(
                "ejected_until is {ahead:.2} s after the ejection was seen (ejection time {:.0} s)",
                EJECTION.as_secs_f64()
            ));
            if !(EJECTION.as_secs_f64() - 1.5..=EJECTION.as_secs_f64() + 0.5).contains(&ahead) {
                bad.push(format!(
                    "ejected_until is {ahead:.2} s after the ejection was seen, not ≈ {EJECTION:?}"
                ));
            }
        }
        None => bad.push(format!("{} is ejected with no ejected_until", e.ejected)),
    }
    ctx.say(format!(
        "most backends ejected at once: {} (cap {cap})",
        e.most_ejected
    ));
    ctx.say(format!(
        "{}'s new flows from 0.5 s to 5.5 s after its ejection: {} → {}",
        e.ejected, e.flat.0, e.flat.1
    ));
    if e.flat.1 != e.flat.0 {
        bad.push(format!(
            "{} got {} new flows while ejected",
            e.ejected,
            e.flat.1.saturating_sub(e.flat.0)
        ));
    }
    let back = secs(e.t_returned.saturating_sub(e.t_ejected));
    ctx.say(format!(
        "{} back {back:.2} s after its ejection was seen (ejection time {:.0} s); ramp seen: {:?}; \
         ramp over {:.2} s later (slow start {:.0} s)",
        e.ejected,
        EJECTION.as_secs_f64(),
        e.ramp,
        secs(e.t_ramped.saturating_sub(e.t_returned)),
        SLOW_START.as_secs_f64()
    ));
    // Seen late by up to a poll and a measurement tick (500 ms).
    if back < EJECTION.as_secs_f64() - 0.5 || back > EJECTION.as_secs_f64() + 2.0 {
        bad.push(format!(
            "{} came back {back:.2} s after its ejection was seen, not after its {EJECTION:?} \
             (allowed -0.5 s to +2 s)",
            e.ejected
        ));
    }
    if e.ramp.is_empty() {
        bad.push(format!(
            "{} came back without a slow start (slow_start_percent never shown)",
            e.ejected
        ));
    }
    if e.ramp.iter().any(|p| !(0.0..=100.0).contains(p)) {
        bad.push(format!("slow_start_percent out of 0–100: {:?}", e.ramp));
    }
    for n in &e.notes {
        ctx.say(n);
    }
    for (msg, want) in [
        ("backend ejected", true),
        ("backend returned from ejection", true),
    ] {
        let n = log_lines(&log, msg, &e.ejected);
        ctx.say(format!(
            "steer's log: {n} `{msg}` line(s) for {}",
            e.ejected
        ));
        if want && n == 0 {
            bad.push(format!("steer did not log `{msg}` for {}", e.ejected));
        }
    }

    // The connections, by phase.
    let first = lines.iter().map(|l| l.start_us).min().unwrap_or(0);
    let last = lines.iter().map(|l| l.start_us).max().unwrap_or(0);
    let before = Window::of(&lines, first + 300_000, e.t_fault);
    let fault = Window::of(&lines, e.t_fault_ack, e.t_ejected);
    // From 0.5 s after the ejection was seen (the table no longer has it)
    // to the black hole's end: only the other black-holed entry fails, 1
    // of the 11 backends left.
    // Connections started within a client timeout of the black hole's end
    // may end after it (a retried SYN answered): not counted as in it.
    let holed_end = e.t_off.saturating_sub(CLIENT_TIMEOUT_MS * 1_000);
    let ejected_w = Window::of(&lines, e.t_ejected + 500_000, holed_end);
    let holed_all = Window::of(&lines, e.t_fault_ack, holed_end);
    let after = Window::of(&lines, e.t_off + 100_000, last + 1);
    let exp_fault = 100.0 * holed.len() as f64 / entries.len() as f64;
    let exp_ejected = 100.0 / (entries.len() - cap) as f64;
    ctx.say(format!("before the black hole: {}", before.line()));
    ctx.say(format!(
        "black hole to ejection ({:.2} s): {} (two of twelve black-holed: ≈ {exp_fault:.1}% of \
         new connections meet the black hole)",
        detection,
        fault.line()
    ));
    ctx.say(format!(
        "ejected, black hole still on ({:.2} s): {} (expected ≈ {exp_ejected:.2}% failing: 1 of {} left)",
        secs(holed_end.saturating_sub(e.t_ejected + 500_000)),
        ejected_w.line(),
        entries.len() - cap
    ));
    ctx.say(format!("after the black hole: {}", after.line()));
    if before.total() < 500 {
        bad.push(format!(
            "only {} connections before the black hole",
            before.total()
        ));
    }
    if before.failed > 0 {
        bad.push(format!(
            "{} connections failed before the black hole",
            before.failed
        ));
    }
    let answered_by_victim = holed_all.hosts.get(victim).copied().unwrap_or(0);
    if answered_by_victim > 0 {
        bad.push(format!(
            "{answered_by_victim} new connections were answered by {victim} while it black-holed \
             new connections"
        ));
    }
    if ejected_w.total() < 300 {
        bad.push(format!(
            "only {} connections between the ejection and the black hole's end",
            ejected_w.total()
        ));
    } else if (ejected_w.failed_pct() - exp_ejected).abs() > 4.0 {
        bad.push(format!(
            "{:.2}% of connections failed while one black-holed backend was ejected, not \
             {exp_ejected:.2}% ± 4 (1 of {} backends)",
            ejected_w.failed_pct(),
            entries.len() - cap
        ));
    }
    if after.failed > 0 {
        bad.push(format!(
            "{} connections failed after the black hole ended",
            after.failed
        ));
    }
    if after.total() < 1_000 {
        bad.push(format!(
            "only {} connections after the black hole",
            after.total()
        ));
    }
    if !bad.is_empty() {
        bail!("{}", bad.join("; "));
    }
    Ok(format!(
        "{} ejected {detection:.2} s after the black hole (health up), cap held ({} at most), \
         new flows to it flat, back after {back:.2} s with a ramp {:?}; failed: {} before \
         ejection, {:.1}% while ejected (exp {exp_ejected:.1}), 0 after",
        e.ejected,
        e.most_ejected,
        e.ramp.first(),
        fault.failed,
        ejected_w.failed_pct()
    ))
}

// ------------------------------------------ shift-blackhole-rollback --

/// A shift whose target black-holes new connections: `steer shift start
/// web --from eu-west --to us-east --stages 25,50,100 --hold 60s
/// --max-repeated-syn-percent 20 --min-new-flows 10` while the europe
/// class opens 300 connections/s (`web` geo: the europe class goes to
/// eu-west). At the 25 % stage both us-east hosts turn black-hole mode on.
/// The shift must be rolled back with a repeated-SYN reason within 10 s of
/// the fault (not at the end of the 60 s hold) at stage 1; afterwards every
/// new connection reaches eu-west and none fails, and us-east's backends
/// get no new flow.
pub fn shift_blackhole_rollback(ctx: &Ctx) -> Result<String> {
    let within = Duration::from_secs(10);
    let mut cfg = Cfg::lab()?;
    policy::make_geo(&mut cfg.t, &["web"])?;
    let path = ctx.file("shift-blackhole.toml");
    cfg.write(&path)?;
    let europe = &GEO_CLASSES[0];
    let from = policy::class_addrs(europe, false);
    let to_hosts: Vec<&str> = topo::BACKENDS
        .iter()
        .filter(|b| b.region == "us-east")
        .map(|b| b.name)
        .collect();
    let _restore = Unblackhole { lab: ctx.lab };
    let steer = Steer::start(ctx, &path)?;
    let rate = 300.0;
    let secs_total = 24;

    struct Run {
        t_ack: u64,
        t_fault: u64,
        t_fault_ack: u64,
        t_rb: u64,
        report: ShiftReport,
        seen: Vec<(u64, usize, u8, String)>,
        flows: (BTreeMap<String, u64>, BTreeMap<String, u64>),
        status_text: String,
    }

    let out = thread::scope(|sc| -> Result<_> {
        let lab = ctx.lab;
        let f = from.clone();
        let h = sc.spawn(move || live(lab, &f, rate, secs_total));
        let run = (|| -> Result<Run> {
            thread::sleep(Duration::from_millis(2_500));
            let o = steer.cli_ok(&[
                "shift",
                "start",
                "web",
                "--from",
                "eu-west",
                "--to",
                "us-east",
                "--stages",
                "25,50,100",
                "--hold",
                "60s",
                "--max-repeated-syn-percent",
                "20",
                "--min-new-flows",
                "10",
            ])?;
            let t_ack = now_us();
            ctx.say(format!("steer shift start: {}", o.trim()));
            let sh = shift_of(&status_json(&steer)?, "web")?.ok_or_else(|| {
                anyhow!("`steer status` shows no shift for web after shift start")
            })?;
            if (sh.stage, sh.percent, sh.state.as_str()) != (1, 25, "running") {
                bail!(
                    "after shift start: stage {} ({}%), {}; expected stage 1 (25%), running",
                    sh.stage,
                    sh.percent,
                    sh.state
                );
            }
            thread::sleep(Duration::from_millis(2_500));
            let t_fault = now_us();
            for host in &to_hosts {
                blackhole(ctx.lab, host, true)?;
            }
            let t_fault_ack = now_us();
            // Every 100 ms until rolled back; every change noted.
            let t = Instant::now();
            let mut seen: Vec<(u64, usize, u8, String)> = Vec::new();
            let (t_rb, report) = loop {
                ctx.check_time("waiting for the rollback")?;
                let at = now_us();
                let sh = shift_of(&status_json(&steer)?, "web")?
                    .ok_or_else(|| anyhow!("`steer status` shows no shift for web"))?;
                if seen
                    .last()
                    .is_none_or(|(_, s, _, st)| *s != sh.stage || *st != sh.state)
                {
                    seen.push((at, sh.stage, sh.percent, sh.state.clone()));
                }
                if rolled_back(&sh.state) {
                    break (at, sh);
                }
                if t.elapsed() > within + Duration::from_secs(5) {
                    bail!(
                        "no rollback within {:?} of the black hole; seen: {seen:?}",
                        within + Duration::from_secs(5)
                    );
                }
                thread::sleep(POLL);
            };
            // us-east's backends get no new flow after the rollback.
            thread::sleep(Duration::from_millis(500));
            let flows = || -> Result<BTreeMap<String, u64>> {
                Ok(daemon::new_flows(&steer.status()?, "web")?
                    .into_iter()
                    .filter(|(n, _)| topo::backend_named(n).is_some_and(|b| b.region == "us-east"))
                    .collect())
            };
            let f0 = flows()?;
            thread::sleep(Duration::from_millis(3_000));
            let f1 = flows()?;
            let status_text = steer.cli_ok(&["shift", "status", "web"])?;
            for host in &to_hosts {
                blackhole(ctx.lab, host, false)?;
            }
            Ok(Run {
                t_ack,
                t_fault,
                t_fault_ack,
                t_rb,
                report,
                seen,
                flows: (f0, f1),
                status_text,
            })
        })();
        let lines = h
            .join()
            .map_err(|_| anyhow!("the client thread panicked"))?;
        Ok((lines?, run?))
    });
    let stop = steer.stop();
    let (lines, r) = out?;
    stop?;

    let mut bad = Vec::new();
    for (at, stage, pct, state) in &r.seen {
        ctx.say(format!(
            "  seen {:+6.2} s after the black hole: stage {stage} ({pct}%), {state}",
            secs(at.saturating_sub(r.t_fault))
        ));
    }
    let took = secs(r.t_rb.saturating_sub(r.t_fault));
    let reason = r.report.reason.clone().unwrap_or_default();
    ctx.say(format!(
        "rolled back {took:.2} s after the black hole on {} (limit {:.0} s; the hold is 60 s): {reason}",
        to_hosts.join(" and "),
        within.as_secs_f64()
    ));
    ctx.say(format!("steer shift status: {}", r.status_text.trim()));
    if took > within.as_secs_f64() {
        bad.push(format!(
            "rolled back {took:.2} s after the black hole, not within {within:?}"
        ));
    }
    if r.report.stage != 1 {
        bad.push(format!(
            "rolled back at stage {}, not at stage 1 (25%)",
            r.report.stage
        ));
    }
    if !repeated_syn_reason(&reason) {
        bad.push(format!(
            "the rollback's reason {reason:?} does not name repeated SYNs"
        ));
    }
    if r.report.percent != 0 {
        bad.push(format!(
            "after the rollback the shift still sends {}%",
            r.report.percent
        ));
    }
    if !r.status_text.contains("rolled back") && !r.status_text.contains("rolled_back") {
        bad.push("`steer shift status web` does not say rolled back".into());
    }

    let first = lines.iter().map(|l| l.start_us).min().unwrap_or(0);
    let last = lines.iter().map(|l| l.start_us).max().unwrap_or(0);
    let before = Window::of(&lines, first + 300_000, r.t_fault);
    let stage1 = Window::of(&lines, r.t_ack + 300_000, r.t_fault);
    let fault = Window::of(&lines, r.t_fault_ack, r.t_rb);
    let after = Window::of(&lines, r.t_rb + 300_000, last + 1);
    let share = |w: &Window, region: &str| -> f64 {
        let n: u64 = w
            .hosts
            .iter()
            .filter(|(h, _)| policy::region_of(h) == Some(region))
            .map(|(_, n)| n)
            .sum();
        if w.ok == 0 {
            0.0
        } else {
            100.0 * n as f64 / w.ok as f64
        }
    };
    ctx.say(format!(
        "stage 1 before the black hole: {}; us-east {:.2}% (25% of eu-west's flows)",
        stage1.line(),
        share(&stage1, "us-east")
    ));
    ctx.say(format!(
        "black hole to rollback: {}; us-east {:.2}% of the answered",
        fault.line(),
        share(&fault, "us-east")
    ));
    ctx.say(format!(
        "after the rollback: {}; eu-west {:.2}%",
        after.line(),
        share(&after, "eu-west")
    ));
    if before.failed > 0 {
        bad.push(format!(
            "{} connections failed before the black hole",
            before.failed
        ));
    }
    if stage1
        .hosts
        .keys()
        .all(|h| policy::region_of(h) != Some("us-east"))
    {
        bad.push("no connection reached us-east at stage 1 before the black hole".into());
    }
    let off_a: u64 = after
        .hosts
        .iter()
        .filter(|(h, _)| policy::region_of(h) != Some("eu-west"))
        .map(|(_, n)| n)
        .sum();
    if off_a > 0 || after.failed > 0 {
        bad.push(format!(
            "after the rollback {off_a} connections reached another region than eu-west and {} \
             failed",
            after.failed
        ));
    }
    if after.total() < 1_000 {
        bad.push(format!(
            "only {} connections after the rollback",
            after.total()
        ));
    }
    ctx.say(format!(
        "us-east's new flows from 0.5 s to 3.5 s after the rollback: {:?} → {:?}",
        r.flows.0, r.flows.1
    ));
    if r.flows.0.is_empty() || r.flows.0 != r.flows.1 {
        bad.push(format!(
            "us-east's backends got new flows after the rollback: {:?} → {:?}",
            r.flows.0, r.flows.1
        ));
    }
    if !bad.is_empty() {
        bail!("{}", bad.join("; "));
    }
    Ok(format!(
        "rolled back {took:.2} s after the black hole (stage 1, hold 60 s): {reason}; {} of {} \
         connections failed between the fault and the rollback ({} recovered on a retried SYN); \
         after: {} connections, all on eu-west, 0 failed",
        fault.failed,
        fault.total(),
        fault.recovered,
        after.total()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `steer status --json` with the passive fields as the daemon's spec
    /// names them (written by hand).
    const STATUS: &str = r#"{
      "generation": 2, "config_path": "/tmp/p.toml",
      "services": [
        {"name": "web", "vip": "203.0.113.10:80/tcp", "affinity": "flow",
         "backends": [
           {"name": "us1", "health": "up", "new_flows": 120, "ejected": true,
            "ejected_until": 1764650000123, "ejections": 1, "repeated_syns": 57,
            "handshakes": 3, "slow_start_percent": null},
           {"name": "us1-v6", "health": "up", "new_flows": 118, "ejected": false,
            "ejected_until": null, "ejections": 0, "repeated_syns": 55,
            "handshakes": 0, "slow_start_percent": 37.5}],
         "shift": {"from": "eu-west", "to": "us-east", "stages": [25, 50, 100],
            "stage": 1, "percent": 0, "state": "rolled_back", "hold_ms": 60000,
            "next_stage_in_ms": null,
            "reason": "the target region's repeated-SYN ratio 48.0% (24 of 50 new flows) is above 20.0%",
            "started_at": 1764650000, "description": "rolled back at stage 1 of 3"}},
        {"name": "echo", "backends": [{"name": "eu1", "health": "up", "new_flows": 1}]}]
    }"#;

    #[test]
    fn reads_passive_health_and_the_shift() {
        let st: Value = serde_json::from_str(STATUS).unwrap();
        let m = passive_of(&st, "web").unwrap();
        assert_eq!(
            m["us1"],
            Passive {
                health: "up".into(),
                ejected: true,
                ejected_until_ms: Some(1_764_650_000_123),
                ejections: 1,
                repeated_syns: 57,
                handshakes: 3,
                new_flows: 120,
                slow_start_percent: None,
            }
        );
        assert!(!m["us1-v6"].ejected);
        assert_eq!(m["us1-v6"].ejected_until_ms, None);
        assert_eq!(m["us1-v6"].slow_start_percent, Some(37.5));
        assert_eq!(ejected_names(&m), ["us1"]);

        let sh = shift_of(&st, "web").unwrap().unwrap();
        assert_eq!((sh.stage, sh.percent), (1, 0));
        assert!(rolled_back(&sh.state));
        assert!(repeated_syn_reason(sh.reason.as_deref().unwrap()));
        assert!(!repeated_syn_reason(
            "the target region's healthy fraction 0.0% is below 50.0%"
        ));
        assert!(shift_of(&st, "echo").unwrap().is_none());
    }

    #[test]
    fn a_missing_passive_field_is_named() {
        let st: Value = serde_json::from_str(STATUS).unwrap();
        let e = passive_of(&st, "echo").unwrap_err().to_string();
        assert!(e.contains("backend eu1 of echo has no \"ejected\""), "{e}");
        let e = passive_of(&st, "dns").unwrap_err().to_string();
        assert_eq!(e, "`steer status --json` has no service dns");
    }

    #[test]
    fn counts_log_lines_per_backend() {
        let log = "2026-12-02T04:00:01Z  WARN backend ejected service=web backend=us1-v6 ratio=0.9\n\
                   2026-12-02T04:00:01Z  WARN backend ejected service=web backend=\"us1\"\n\
                   2026-12-02T04:00:09Z  INFO backend returned from ejection service=web backend=us1\n";
        assert_eq!(log_lines(log, "backend ejected", "us1"), 1);
        assert_eq!(log_lines(log, "backend ejected", "us1-v6"), 1);
        assert_eq!(log_lines(log, "backend returned from ejection", "us1"), 1);
        assert_eq!(
            log_lines(log, "backend returned from ejection", "us1-v6"),
            0
        );
    }

    #[test]
    fn windows_count_by_start_time() {
        let l = |start_us, ms, backend: Option<&str>| Line {
            start_us,
            ms,
            backend: backend.map(str::to_owned),
        };
        let lines = [
            l(10, 2.0, Some("eu1")),
            l(20, 1_004.0, Some("eu2")),
            l(30, 2_000.0, None),
            l(40, 2.0, Some("eu1")),
        ];
        let w = Window::of(&lines, 10, 40);
        assert_eq!((w.ok, w.failed, w.recovered, w.total()), (2, 1, 1, 3));
        assert!((w.failed_pct() - 100.0 / 3.0).abs() < 1e-9);
        assert_eq!(w.hosts.get("eu1"), Some(&1));
    }
}
