//! Where traffic goes: weights, failover, drain, IPv6.
use std::{
    collections::{BTreeMap, BTreeSet},
    net::SocketAddr,
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};

use super::{
    config::Cfg,
    daemon::{self, Steer},
    traffic::{self, counts},
    Ctx,
};
use crate::lab::{self, topo, Load, Streams};

/// The tolerance for the split of new connections.
const SHARE_TOLERANCE_PP: f64 = 3.0;
/// Connections the distribution must be measured over, at least.
const DISTRIBUTION_CONNECTIONS: u32 = 10_000;

fn pct(x: f64) -> String {
    format!("{:.2}%", x * 100.0)
}

/// ≥ 10,000 TCP connections to the IPv4 web VIP from 20 client addresses
/// (a new source port each), split per the configured weights within
/// ±3 percentage points per backend.
pub fn distribution(ctx: &Ctx) -> Result<String> {
    let mut cfg = Cfg::lab()?;
    for (b, w) in [
        ("eu1", 100),
        ("eu2", 200),
        ("us1", 300),
        ("us2", 400),
        ("ap1", 500),
        ("ap2", 600),
    ] {
        cfg.set_weight(b, w)?;
    }
    let path = ctx.file("distribution.toml");
    cfg.write(&path)?;
    let expected = cfg.expected_shares("web")?;
    ctx.say(format!(
        "config {}: web weights {}",
        path.display(),
        cfg.service_backends("web")?
            .iter()
            .map(|b| format!("{b}={}", cfg.weight(b).unwrap_or(0)))
            .collect::<Vec<_>>()
            .join(" ")
    ));
    let steer = Steer::start(ctx, &path)?;

    let from = topo::client_addrs(false);
    const BATCH: u32 = 2_000;
    let mut got: BTreeMap<String, u64> = BTreeMap::new();
    let mut errors: BTreeMap<String, u64> = BTreeMap::new();
    let (mut ok, mut sent) = (0u64, 0u64);
    let mut addrs: BTreeSet<String> = BTreeSet::new();
    let mut pairs: BTreeSet<String> = BTreeSet::new();
    let t = Instant::now();
    while sent < u64::from(DISTRIBUTION_CONNECTIONS) {
        ctx.check_time("sending connections")?;
        let r = ctx.lab.http(
            &Load::new(topo::web())
                .from(from.clone())
                .requests(BATCH)
                .concurrency(64)
                .timeout(Duration::from_secs(3))
                .per_request(),
        )?;
        sent += r.requests;
        ok += r.ok;
        for (b, n) in &r.backends {
            *got.entry(b.clone()).or_default() += n;
        }
        for (k, n) in &r.errors_by_kind {
            *errors.entry(k.clone()).or_default() += n;
        }
        for x in &r.results {
            if let Some(f) = &x.from {
                if let Ok(sa) = f.parse::<SocketAddr>() {
                    addrs.insert(sa.ip().to_string());
                }
                pairs.insert(f.clone());
            }
        }
        if r.errors > 0 {
            break;
        }
    }
    let secs = t.elapsed().as_secs_f64();
    ctx.say(format!(
        "{sent} connections in {secs:.1}s ({:.0}/s): {ok} answered, errors: {}; \
         {} source addresses, {} distinct source address:port pairs",
        sent as f64 / secs,
        if errors.is_empty() {
            "none".to_owned()
        } else {
            counts(&errors)
        },
        addrs.len(),
        pairs.len()
    ));
    let status = steer.status()?;
    let steer_flows = daemon::new_flows(&status, "web")?;

    let mut bad = Vec::new();
    let mut worst: f64 = 0.0;
    ctx.say("backend  weight  expected  measured  (count)   deviation   steer's new_flows");
    let names: BTreeSet<&String> = expected.keys().chain(got.keys()).collect();
    for b in names {
        let exp = expected.get(b).copied().unwrap_or(0.0);
        let n = got.get(b).copied().unwrap_or(0);
        let share = if ok > 0 { n as f64 / ok as f64 } else { 0.0 };
        let dev = (share - exp) * 100.0;
        worst = worst.max(dev.abs());
        let w = cfg.weight(b).map(|w| w.to_string()).unwrap_or("-".into());
        ctx.say(format!(
            "{b:<8} {w:>6}  {:>8}  {:>8}  ({n:>5})  {dev:>+6.2} pp   {}",
            pct(exp),
            pct(share),
            steer_flows.get(b).copied().unwrap_or(0)
        ));
        if dev.abs() > SHARE_TOLERANCE_PP {
            bad.push(format!(
                "{b}: {} instead of {} ({dev:+.2} pp)",
                pct(share),
                pct(exp)
            ));
        }
    }
    steer.stop()?;

    if sent < u64::from(DISTRIBUTION_CONNECTIONS) || !errors.is_empty() {
        bail!(
            "{ok} of {sent} connections answered (errors: {}); stopped early",
            counts(&errors)
        );
    }
    if addrs.len() < from.len() {
        bail!(
            "only {} of {} client addresses were used",
            addrs.len(),
            from.len()
        );
    }
    if !bad.is_empty() {
        bail!(
            "split off by more than ±{SHARE_TOLERANCE_PP} pp: {}",
            bad.join("; ")
        );
    }
    Ok(format!(
        "{ok} connections from {} addresses / {} source ports split per weights 1:2:3:4:5:6; \
         largest deviation {worst:.2} pp (limit ±{SHARE_TOLERANCE_PP} pp)",
        addrs.len(),
        pairs.len()
    ))
}

/// A probe batch in which connections failed.
struct ErrBatch {
    phase: &'static str,
    start: Duration,
    end: Duration,
    kinds: BTreeMap<String, u64>,
}

/// Milliseconds since the epoch of an RFC 3339 UTC timestamp as steer
/// logs it (`2026-11-22T20:07:09.931414Z`).
fn parse_log_time(ts: &str) -> Option<u64> {
    let (date, time) = ts.strip_suffix('Z')?.split_once('T')?;
    let mut d = date.split('-').map(|x| x.parse::<i64>().ok());
    let (y, m, day) = (d.next()??, d.next()??, d.next()??);
    let mut t = time.split(':');
    let (h, min) = (
        t.next()?.parse::<i64>().ok()?,
        t.next()?.parse::<i64>().ok()?,
    );
    let sec: f64 = t.next()?.parse().ok()?;
    // Days from civil (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + h * 3600 + min * 60;
    u64::try_from(secs * 1000 + (sec * 1000.0) as i64).ok()
}

/// When steer's log says backend `name` went `state` (`DOWN` or `UP`),
/// the last time.
fn transition(log: &str, name: &str, state: &str) -> Option<u64> {
    let needle = format!("backend {name} (");
    let what = format!("is {state}:");
    log.lines()
        .filter(|l| l.contains(&needle) && l.contains(&what))
        .filter_map(|l| l.split_whitespace().next().and_then(parse_log_time))
        .next_back()
}

/// Hits on any of `names` in a backend → count map.
fn hits(m: &BTreeMap<String, u64>, names: &[&str]) -> u64 {
    names.iter().map(|n| m.get(*n).copied().unwrap_or(0)).sum()
}

/// A whole region's health checks fail: new connections must stop reaching
/// it within fall × interval + 1 s, and none of the next 1200 may reach
/// it. Then it recovers and gets traffic again.
pub fn failover(ctx: &Ctx) -> Result<String> {
    let cfg = Cfg::lab()?;
    let path = ctx.file("failover.toml");
    cfg.write(&path)?;
    let h = cfg.health("web")?;
    let limit = h.interval * h.fall + Duration::from_secs(1);
    let back_limit = h.interval * h.rise + Duration::from_secs(1);
    let region = "eu-west";
    let dead: Vec<&str> = topo::BACKENDS
        .iter()
        .filter(|b| b.region == region)
        .map(|b| b.name)
        .collect();
    ctx.say(format!(
        "health check: interval {:?}, fall {}, rise {} -> failover limit {:?} (fall x interval + 1 s); \
         failing region {region}: {}",
        h.interval,
        h.fall,
        h.rise,
        limit,
        dead.join(", ")
    ));
    let steer = Steer::start(ctx, &path)?;
    let from = topo::client_addrs(false);
    let probe = Load::new(topo::web())
        .from(from.clone())
        .requests(24)
        .concurrency(24)
        .timeout(Duration::from_secs(2));

    let warm = ctx.lab.http(&probe.clone().requests(120).concurrency(32))?;
    if warm.errors > 0 || hits(&warm.backends, &dead) == 0 {
        bail!(
            "before failing anything: {}/{} answered, backends {}",
            warm.ok,
            warm.requests,
            counts(&warm.backends)
        );
    }

    // Fail the region; sample new connections until they avoid it for
    // five batches in a row.
    let t0 = Instant::now();
    let t0_unix = traffic::unix_ms();
    for b in &dead {
        ctx.lab.control(b, "fail")?;
    }
    let failed_in = t0.elapsed();
    let mut error_batches: Vec<ErrBatch> = Vec::new();
    let mut streak = 0;
    let mut first_clean: Option<Duration> = None;
    let mut last_dirty: Option<(Duration, Duration, u64)> = None;
    let mut sampled = 0u64;
    let mut errors = 0u64;
    let give_up = limit + Duration::from_secs(5);
    while streak < 5 {
        if t0.elapsed() > give_up {
            bail!(
                "new connections still reached {region} {:.1}s after the failure (limit {limit:?}); \
                 last batch reaching it: {last_dirty:?}",
                t0.elapsed().as_secs_f64()
            );
        }
        let s = t0.elapsed();
        let r = ctx.lab.http(&probe)?;
        let e = t0.elapsed();
        sampled += r.requests;
        errors += r.errors;
        if r.errors > 0 {
            error_batches.push(ErrBatch {
                phase: "failing",
                start: s,
                end: e,
                kinds: r.errors_by_kind.clone(),
            });
        }
        let n = hits(&r.backends, &dead);
        if n == 0 && r.ok > 0 {
            if streak == 0 {
                first_clean = Some(s);
            }
            streak += 1;
        } else {
            streak = 0;
            first_clean = None;
            last_dirty = Some((s, e, n));
        }
    }
    let cut = first_clean.unwrap_or_default();
    ctx.say(format!(
        "fail sent to {} in {:.0} ms; {sampled} sampled connections ({errors} errors); \
         last batch reaching {region} ran {}; first of the clean batches started at {:.2}s",
        dead.join("+"),
        failed_in.as_secs_f64() * 1000.0,
        last_dirty.map_or("before the failure".to_owned(), |(s, e, n)| format!(
            "{:.2}s-{:.2}s ({n} hits)",
            s.as_secs_f64(),
            e.as_secs_f64()
        )),
        cut.as_secs_f64()
    ));

    let after = ctx.lab.http(
        &Load::new(topo::web())
            .from(from.clone())
            .requests(1200)
            .concurrency(64)
            .timeout(Duration::from_secs(3)),
    )?;
    let after_hits = hits(&after.backends, &dead);
    ctx.say(format!(
        "next {} connections: {} answered, {after_hits} reached {region}; backends {}",
        after.requests,
        after.ok,
        counts(&after.backends)
    ));
    let status = steer.status()?;
    let health: Vec<String> = dead
        .iter()
        .map(|b| {
            daemon::status_backend(&status, "web", b).map(|s| {
                format!(
                    "{b} {} ({})",
                    s.health,
                    s.last_failure.as_deref().unwrap_or("-")
                )
            })
        })
        .collect::<Result<_>>()?;
    ctx.say(format!("steer status: {}", health.join(", ")));

    // Recover: traffic returns.
    let t1 = Instant::now();
    let t1_unix = traffic::unix_ms();
    for b in &dead {
        ctx.lab.control(b, "recover")?;
    }
    let mut back: BTreeMap<&str, Duration> = BTreeMap::new();
    while back.len() < dead.len() {
        if t1.elapsed() > back_limit + Duration::from_secs(5) {
            break;
        }
        let s = t1.elapsed();
        let r = ctx.lab.http(&probe)?;
        errors += r.errors;
        if r.errors > 0 {
            error_batches.push(ErrBatch {
                phase: "recovering",
                start: s,
                end: t1.elapsed(),
                kinds: r.errors_by_kind.clone(),
            });
        }
        for b in &dead {
            if r.backends.get(*b).copied().unwrap_or(0) > 0 {
                back.entry(b).or_insert(s);
            }
        }
    }
    let fin = ctx.lab.http(
        &Load::new(topo::web())
            .from(from)
            .requests(600)
            .concurrency(64)
            .timeout(Duration::from_secs(3)),
    )?;
    ctx.say(format!(
        "recovered: traffic back at {}; then 600 connections: {} answered, {region} share {} (expected {}), backends {}",
        dead.iter()
            .map(|b| format!(
                "{b} {}",
                back.get(b)
                    .map_or("never".to_owned(), |d| format!("{:.2}s", d.as_secs_f64()))
            ))
            .collect::<Vec<_>>()
            .join(", "),
        fin.ok,
        pct(hits(&fin.backends, &dead) as f64 / fin.ok.max(1) as f64),
        pct(cfg.expected_shares("web")?
            .iter()
            .filter(|(b, _)| dead.contains(&b.as_str()))
            .map(|(_, s)| s)
            .sum()),
        counts(&fin.backends)
    ));
    let log = steer.log_text();
    let down_at: Vec<u64> = dead
        .iter()
        .filter_map(|b| transition(&log, b, "DOWN"))
        .collect();
    // A connection in flight to a backend at the moment steer marks it
    // down is re-selected to another backend mid-connection and reset:
    // documented ("its established flows are re-selected",
    // docs/operations.md). Such resets are expected in the batch that
    // spans a DOWN transition, and nowhere else.
    let at_transition = |x: &ErrBatch| {
        x.phase == "failing"
            && x.kinds.keys().all(|k| k == "reset")
            && down_at.iter().any(|d| {
                let (s, e) = (
                    t0_unix + x.start.as_millis() as u64,
                    t0_unix + x.end.as_millis() as u64,
                );
                s <= d + 250 && e + 50 >= *d
            })
    };
    let expected_resets: u64 = error_batches
        .iter()
        .filter(|x| at_transition(x))
        .map(|x| x.kinds.values().sum::<u64>())
        .sum();
    let unexpected: Vec<String> = error_batches
        .iter()
        .filter(|x| !at_transition(x))
        .map(|x| {
            format!(
                "{} while {} ({:.2}s-{:.2}s)",
                counts(&x.kinds),
                x.phase,
                x.start.as_secs_f64(),
                x.end.as_secs_f64()
            )
        })
        .collect();
    for b in &dead {
        let down = transition(&log, b, "DOWN").map(|t| {
            format!(
                "{:.2}s after the failure",
                (t as f64 - t0_unix as f64) / 1000.0
            )
        });
        let up = transition(&log, b, "UP").map(|t| {
            format!(
                "{:.2}s after the recovery",
                (t as f64 - t1_unix as f64) / 1000.0
            )
        });
        ctx.say(format!(
            "steer's log: {b} DOWN {}, UP {}",
            down.unwrap_or_else(|| "never".into()),
            up.unwrap_or_else(|| "never".into())
        ));
    }
    for x in &error_batches {
        ctx.say(format!(
            "failed connections while {} (batch {:.2}s-{:.2}s): {}{}",
            x.phase,
            x.start.as_secs_f64(),
            x.end.as_secs_f64(),
            counts(&x.kinds),
            if at_transition(x) {
                " - in flight when steer marked their backend down (re-selected, as documented)"
            } else {
                " - UNEXPECTED"
            }
        ));
    }
    steer.stop()?;

    let mut problems = Vec::new();
    if cut > limit {
        problems.push(format!(
            "new connections stopped reaching {region} only after {:.2}s (limit {limit:?})",
            cut.as_secs_f64()
        ));
    }
    if after_hits > 0 || after.errors > 0 {
        problems.push(format!(
            "after the cut-over {after_hits} of {} connections still reached {region}, {} failed",
            after.requests, after.errors
        ));
    }
    if !unexpected.is_empty() || fin.errors > 0 || warm.errors > 0 {
        problems.push(format!(
            "connections failed: {}{}",
            unexpected.join("; "),
            if fin.errors > 0 {
                format!("; {} of the final 600", fin.errors)
            } else {
                String::new()
            }
        ));
    }
    debug_assert_eq!(
        errors,
        error_batches
            .iter()
            .map(|x| x.kinds.values().sum::<u64>())
            .sum::<u64>()
    );
    for b in &dead {
        match back.get(b) {
            Some(d) if *d <= back_limit => {}
            Some(d) => problems.push(format!(
                "{b} got traffic again only after {:.2}s (rise x interval + 1 s = {back_limit:?})",
                d.as_secs_f64()
            )),
            None => problems.push(format!("{b} never got traffic again")),
        }
    }
    if !problems.is_empty() {
        bail!("{}", problems.join("; "));
    }
    Ok(format!(
        "{region} out after {:.2}s (limit {limit:?}); 0 of {} later connections reached it; back after {}; \
         {expected_resets} in-flight connections reset at the down transition",
        cut.as_secs_f64(),
        after.requests,
        back.values()
            .map(|d| format!("{:.2}s", d.as_secs_f64()))
            .collect::<Vec<_>>()
            .join("/")
    ))
}

/// Waits until steer counts at least `n` new flows on `svc`.
fn wait_flows(steer: &Steer, svc: &str, n: u64, within: Duration) -> Result<BTreeMap<String, u64>> {
    let deadline = Instant::now() + within;
    loop {
        let f = daemon::new_flows(&steer.status()?, svc)?;
        if f.values().sum::<u64>() >= n {
            return Ok(f);
        }
        if Instant::now() > deadline {
            bail!(
                "steer counted only {} new flows on {svc} after {within:?} (waiting for {n})",
                f.values().sum::<u64>()
            );
        }
        thread::sleep(Duration::from_millis(50));
    }
}

/// `steer drain BACKEND` with streams running: the streams on it finish
/// intact, new connections avoid it; `--undo` brings it back.
pub fn drain(ctx: &Ctx) -> Result<String> {
    let cfg = Cfg::lab()?;
    let path = ctx.file("drain.toml");
    cfg.write(&path)?;
    let steer = Steer::start(ctx, &path)?;
    let from = topo::client_addrs(false);
    let mut s = Streams::new(topo::web());
    s.from = from.clone();
    s.streams = 36;
    s.bytes = 320 * 1024;
    s.chunk = 4096;
    s.interval = Duration::from_millis(60);
    s.timeout = Duration::from_secs(5);
    let running = ctx.lab.start_streams(&s)?;
    let flows = wait_flows(&steer, "web", u64::from(s.streams), Duration::from_secs(5))?;
    let (target, on_target) = flows
        .iter()
        .max_by_key(|(_, n)| **n)
        .map(|(b, n)| (b.clone(), *n))
        .context("no backends")?;
    ctx.say(format!(
        "{} streams of {} KiB (~{:.1}s each) open; steer's new flows per backend: {}; \
         draining {target} (the one with the most: {on_target})",
        s.streams,
        s.bytes / 1024,
        s.duration().as_secs_f64(),
        counts(&flows)
    ));
    let msg = steer.cli_ok(&["drain", &target])?;
    ctx.say(format!("steer drain {target}: {}", msg.trim()));
    let st = steer.status()?;
    let b = daemon::status_backend(&st, "web", &target)?;
    let drained_ok = b.drained && b.effective_weight == 0;
    ctx.say(format!(
        "status: {target} drained={} effective_weight={} weight={}",
        b.drained, b.effective_weight, b.weight
    ));
    let load = Load::new(topo::web())
        .from(from)
        .requests(1200)
        .concurrency(64)
        .timeout(Duration::from_secs(3));
    let during = ctx.lab.http(&load)?;
    let during_hits = during.backends.get(&target).copied().unwrap_or(0);
    ctx.say(format!(
        "{} new connections while drained: {} answered, {during_hits} on {target}; backends {}",
        during.requests,
        during.ok,
        counts(&during.backends)
    ));
    let report = running.wait()?;
    let on_drained: Vec<_> = report
        .results
        .iter()
        .filter(|r| r.backend.as_deref() == Some(&target))
        .collect();
    let broken: Vec<String> = report
        .results
        .iter()
        .filter(|r| !(r.ok && r.checksum_ok && r.pattern_ok && r.error.is_none()))
        .map(|r| {
            format!(
                "{:?} on {:?}: {}/{} bytes, checksum_ok {}, pattern_ok {}, error {:?}",
                r.from, r.backend, r.received, r.bytes, r.checksum_ok, r.pattern_ok, r.error
            )
        })
        .collect();
    let drained_bytes: u64 = on_drained.iter().map(|r| r.received).sum();
    ctx.say(format!(
        "streams: {}/{} complete with good checksums; {} of them on {target} ({} bytes, all intact: {})",
        report.ok,
        report.streams,
        on_drained.len(),
        drained_bytes,
        on_drained.iter().all(|r| r.ok)
    ));
    let msg = steer.cli_ok(&["drain", &target, "--undo"])?;
    ctx.say(format!("steer drain {target} --undo: {}", msg.trim()));
    let st = steer.status()?;
    let undone = !daemon::status_backend(&st, "web", &target)?.drained;
    let after = ctx.lab.http(&load)?;
    let after_hits = after.backends.get(&target).copied().unwrap_or(0);
    ctx.say(format!(
        "{} new connections after --undo: {} answered, {after_hits} on {target}; backends {}",
        after.requests,
        after.ok,
        counts(&after.backends)
    ));
    steer.stop()?;

    let mut problems = Vec::new();
    if !drained_ok {
        problems.push(format!(
            "status did not show {target} drained with weight 0"
        ));
    }
    if during_hits > 0 {
        problems.push(format!(
            "{during_hits} new connections reached the drained {target}"
        ));
    }
    if during.errors > 0 || after.errors > 0 {
        problems.push(format!(
            "connections failed: {} while drained, {} after undo",
            during.errors, after.errors
        ));
    }
    if on_drained.is_empty() {
        problems.push(format!("no stream ran on {target}, so nothing was shown"));
    }
    if !broken.is_empty() {
        problems.push(format!("streams broken: {}", broken.join("; ")));
    }
    if !undone || after_hits == 0 {
        problems.push(format!(
            "after --undo: drained flag cleared {undone}, {after_hits} new connections on {target}"
        ));
    }
    if !problems.is_empty() {
        bail!("{}", problems.join("; "));
    }
    Ok(format!(
        "{} streams on drained {target} finished intact ({} bytes); 0 of {} new connections reached it; \
         after --undo it got {after_hits} of {}",
        on_drained.len(),
        drained_bytes,
        during.requests,
        after.requests
    ))
}

/// Decapsulation counters of every backend host: (ipip, 4in6, 6in6).
fn decap_counters(ctx: &Ctx) -> Result<BTreeMap<&'static str, [u64; 3]>> {
    let mut m = BTreeMap::new();
    for b in &topo::BACKENDS {
        let s = daemon::backend_state(ctx, b.name)?;
        let d = &s["decap"];
        m.insert(
            b.name,
            [
                d["ipip"].as_u64().unwrap_or(0),
                d["4in6"].as_u64().unwrap_or(0),
                d["6in6"].as_u64().unwrap_or(0),
            ],
        );
    }
    Ok(m)
}

/// `GET /whoami` through a VIP from one client address: the body line.
fn whoami(ctx: &Ctx, from: std::net::IpAddr, to: SocketAddr) -> Result<String> {
    let out = lab::run_in(
        topo::NS_CLIENT,
        &ctx.lab.backend_bin().to_string_lossy(),
        [
            "get".to_owned(),
            "--from".into(),
            from.to_string(),
            "--to".into(),
            to.to_string(),
            "--path".into(),
            "/whoami".into(),
        ],
        Duration::from_secs(10),
    )?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "GET {to}/whoami from {from}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(text
        .lines()
        .find(|l| l.contains("client="))
        .unwrap_or("(no client= line)")
        .trim()
        .to_owned())
}

/// The IPv6 VIP end to end (IPv6 in IPv6, TCP and UDP) and IPv4 clients to
/// IPv6-addressed backends (IPv4 in IPv6).
pub fn ipv6(ctx: &Ctx) -> Result<String> {
    let cfg = Cfg::lab()?;
    let path = ctx.file("ipv6.toml");
    cfg.write(&path)?;
    let steer = Steer::start(ctx, &path)?;
    let v4 = topo::client_addrs(false);
    let v6 = topo::client_addrs(true);
    const N: u32 = 300;
    const U: u32 = 100;
    let before = decap_counters(ctx)?;
    let load = |to, from: &Vec<std::net::IpAddr>| {
        Load::new(to)
            .from(from.clone())
            .requests(N)
            .concurrency(32)
            .timeout(Duration::from_secs(3))
    };
    let r6 = ctx.lab.http(&load(topo::web6(), &v6))?;
    let r46 = ctx.lab.http(&load(topo::web_4in6(), &v4))?;
    let u6 = ctx.lab.udp(
        &Load::new(topo::echo6())
            .from(v6.clone())
            .requests(U)
            .concurrency(16)
            .timeout(Duration::from_secs(2)),
        1,
    )?;
    let after = decap_counters(ctx)?;
    let delta = |i: usize| -> u64 {
        after
            .iter()
            .map(|(b, a)| a[i].saturating_sub(before.get(b).map_or(0, |x| x[i])))
            .sum()
    };
    let (ipip, four_in_six, six_in_six) = (delta(0), delta(1), delta(2));
    let status = steer.status()?;
    let mut addr_lines = Vec::new();
    let mut v4_backends = Vec::new();
    for svc in ["web6", "web-4in6", "echo6"] {
        let s = daemon::service(&status, svc)?;
        let mut parts = Vec::new();
        for b in &s.backends {
            let addr = &b.address;
            if b.new_flows > 0 && !addr.contains(':') {
                v4_backends.push(format!("{svc}/{}", b.name));
            }
            parts.push(format!("{} [{addr}] {}", b.name, b.new_flows));
        }
        addr_lines.push(format!("{svc} ({}): {}", s.vip, parts.join(", ")));
    }
    let who6 = whoami(ctx, v6[3], topo::web6())?;
    let who46 = whoami(ctx, v4[3], topo::web_4in6())?;
    ctx.say(format!(
        "web6 {}: {}/{} answered, backends {}; errors {}",
        topo::web6(),
        r6.ok,
        r6.requests,
        counts(&r6.backends),
        counts(&r6.errors_by_kind)
    ));
    ctx.say(format!(
        "web-4in6 {}: {}/{} answered, backends {}; errors {}",
        topo::web_4in6(),
        r46.ok,
        r46.requests,
        counts(&r46.backends),
        counts(&r46.errors_by_kind)
    ));
    ctx.say(format!(
        "echo6 {}: {}/{} echoed (1 attempt each), backends {}",
        topo::echo6(),
        u6.ok,
        u6.requests,
        counts(&u6.backends)
    ));
    ctx.say(format!(
        "packets the backends decapsulated meanwhile: 6in6 {six_in_six}, 4in6 {four_in_six}, ipip {ipip}"
    ));
    for l in &addr_lines {
        ctx.say(format!("steer new flows per backend: {l}"));
    }
    ctx.say(format!("whoami via web6 from {}: {who6}", v6[3]));
    ctx.say(format!("whoami via web-4in6 from {}: {who46}", v4[3]));
    steer.stop()?;

    let mut problems = Vec::new();
    if r6.ok != u64::from(N) || r46.ok != u64::from(N) || u6.ok != u64::from(U) {
        problems.push(format!(
            "answered: web6 {}/{N}, web-4in6 {}/{N}, echo6 {}/{U}",
            r6.ok, r46.ok, u6.ok
        ));
    }
    // Each TCP connection sends at least SYN, ACK+request and FIN towards
    // the VIP; each UDP request one datagram. Only this traffic is
    // tunnelled here (health checks go to the backends directly).
    if six_in_six < 3 * u64::from(N) + u64::from(U) {
        problems.push(format!(
            "only {six_in_six} IPv6-in-IPv6 packets decapsulated for {N} connections + {U} datagrams"
        ));
    }
    if four_in_six < 3 * u64::from(N) {
        problems.push(format!(
            "only {four_in_six} IPv4-in-IPv6 packets decapsulated for {N} connections"
        ));
    }
    if ipip != 0 {
        problems.push(format!("{ipip} packets went over IPv4 (IPIP) instead"));
    }
    if !v4_backends.is_empty() {
        problems.push(format!(
            "IPv4 backends got flows: {}",
            v4_backends.join(", ")
        ));
    }
    if !who6.contains(&format!("client=[{}]", v6[3]))
        || !who46.contains(&format!("client={}", v4[3]))
    {
        problems.push(format!(
            "the backends did not see the real client address: {who6:?}, {who46:?}"
        ));
    }
    if !problems.is_empty() {
        bail!("{}", problems.join("; "));
    }
    Ok(format!(
        "web6 {N}/{N} and echo6 {U}/{U} over 6in6 ({six_in_six} packets), web-4in6 {N}/{N} over 4in6 \
         ({four_in_six} packets) to IPv6-addressed backends; 0 over IPIP"
    ))
}

/// Client affinity through the lab: every connection (a new source port
/// each) from one client address to the affinity VIP reaches one backend,
/// while the same clients spread over several backends on the ordinary
/// VIP, and the clients together use more than one backend.
pub fn affinity(ctx: &Ctx) -> Result<String> {
    let cfg = Cfg::lab()?;
    let path = ctx.file("affinity.toml");
    cfg.write(&path)?;
    let steer = Steer::start(ctx, &path)?;
    let v4 = topo::client_addrs(false);
    const N: u32 = 400;
    let load = |to| {
        Load::new(to)
            .from(v4.clone())
            .requests(N)
            .concurrency(16)
            .timeout(Duration::from_secs(3))
    };
    let sticky = ctx.lab.http(&load(topo::web_affinity()))?;
    let spread = ctx.lab.http(&load(topo::web()))?;
    steer.stop()?;

    let backends_of = |r: &lab::LoadReport, src: &str| -> Vec<String> {
        r.by_source
            .get(src)
            .map(|m| m.keys().cloned().collect())
            .unwrap_or_default()
    };
    let mut problems = Vec::new();
    for (what, r) in [("web-affinity", &sticky), ("web", &spread)] {
        if r.ok != u64::from(N) {
            problems.push(format!(
                "{what}: {}/{N} answered, errors {}",
                r.ok,
                counts(&r.errors_by_kind)
            ));
        }
        if r.by_source.len() != v4.len() {
            problems.push(format!(
                "{what}: {} of {} client addresses were used",
                r.by_source.len(),
                v4.len()
            ));
        }
    }
    let mut not_sticky = Vec::new();
    let mut one_backend_on_web = Vec::new();
    for src in v4.iter().map(|a| a.to_string()) {
        let b = backends_of(&sticky, &src);
        if b.len() != 1 {
            not_sticky.push(format!("{src} -> {}", b.join("+")));
        }
        if backends_of(&spread, &src).len() < 2 {
            one_backend_on_web.push(src);
        }
    }
    if !not_sticky.is_empty() {
        problems.push(format!(
            "clients that reached more than one backend through web-affinity: {}",
            not_sticky.join(", ")
        ));
    }
    if !one_backend_on_web.is_empty() {
        problems.push(format!(
            "clients that reached only one backend through web (so stickiness proves nothing): {}",
            one_backend_on_web.join(", ")
        ));
    }
    if sticky.backends.len() < 2 {
        problems.push(format!(
            "all clients of web-affinity on one backend: {}",
            counts(&sticky.backends)
        ));
    }
    let per_client = u64::from(N) / v4.len().max(1) as u64;
    ctx.say(format!(
        "web-affinity {}: {}/{N} answered from {} clients (~{per_client} connections each), every client on exactly one backend; connections per backend {}",
        topo::web_affinity(),
        sticky.ok,
        sticky.by_source.len(),
        counts(&sticky.backends)
    ));
    ctx.say(format!(
        "web {} (no affinity), same clients: {}/{N} answered, every client on 2 or more backends: {}",
        topo::web(),
        spread.ok,
        counts(&spread.backends)
    ));
    if !problems.is_empty() {
        bail!("{}", problems.join("; "));
    }
    Ok(format!(
        "{} clients x ~{per_client} connections: each on one backend via web-affinity, on 2+ via web",
        v4.len()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_steer_log_times() {
        assert_eq!(parse_log_time("1970-01-01T00:00:01.5Z"), Some(1500));
        assert_eq!(
            parse_log_time("2026-11-22T20:07:09.931414Z"),
            Some(1_795_378_029_931)
        );
        let log = "2026-11-22T20:07:09.931414Z  WARN steer::health: backend eu1 (192.0.2.11 port 80, \
                   http check \"health\") is DOWN: status 503\n\
                   2026-11-22T20:07:09.411556Z  WARN steer::health: backend eu1-v6 (2001:db8:b::11) is DOWN: x";
        assert_eq!(transition(log, "eu1", "DOWN"), Some(1_795_378_029_931));
        assert_eq!(transition(log, "eu1", "UP"), None);
    }
}
