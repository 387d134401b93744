//! Staged shifts with real connections (docs/operations.md "Staged
//! shifts"): a full shift under load, and a daemon killed (SIGKILL) and
//! started again in the middle of a stage.
//!
//! `web` is a geo service; the europe class prefers eu-west. The clients
//! of that class open connections at a steady rate (`client-live`, each
//! line stamped with the wall clock) while the scenario drives `steer
//! shift` over the control socket and notes, by the same wall clock, when
//! `steer status` shows each stage. The expected share of us-east at a
//! stage of p % is p % × eu-west's share before the shift (the semantics:
//! p % of the new flows the policy would send to `--from` go to `--to`),
//! worked out here, never read back from steer.
use std::{
    thread,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{anyhow, bail, Result};

use super::{
    config::Cfg,
    daemon::{self, Steer},
    policy_scenarios::{live, LiveLine},
    Ctx,
};
use crate::lab::{
    policy::{self, GEO_CLASSES},
    topo, Streams,
};

/// The tolerance for shares of new connections.
const TOL_PP: f64 = 3.0;
/// The fewest connections a stage's share is measured over.
const MIN_PER_STAGE: u64 = 1_000;

/// Wall-clock µs since the Unix epoch (the clock of `client-live`).
fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

fn europe() -> &'static policy::GeoClass {
    &GEO_CLASSES[0]
}

/// Connections started in `[from_us, to_us)`: (answered, failed, share
/// of `region` among the answered, in percent).
fn window(lines: &[LiveLine], from_us: u64, to_us: u64, region: &str) -> (u64, u64, f64) {
    let (mut ok, mut failed, mut hits) = (0u64, 0u64, 0u64);
    for l in lines
        .iter()
        .filter(|l| l.start_us >= from_us && l.start_us < to_us)
    {
        match l.backend.as_deref() {
            Some(b) => {
                ok += 1;
                if policy::region_of(b) == Some(region) {
                    hits += 1;
                }
            }
            None => failed += 1,
        }
    }
    let share = if ok == 0 {
        0.0
    } else {
        100.0 * hits as f64 / ok as f64
    };
    (ok, failed, share)
}

/// The service's shift as `steer status` shows it: (stage, percent,
/// state, ms to the next stage).
fn shift_of(steer: &Steer, service: &str) -> Result<(usize, u8, String, Option<u64>)> {
    let st = steer.status()?;
    let sh = daemon::service(&st, service)?
        .shift
        .clone()
        .ok_or_else(|| anyhow!("`steer status` shows no shift for {service}"))?;
    Ok((sh.stage, sh.percent, sh.state, sh.next_stage_in_ms))
}

/// Polls `steer status` every 100 ms until `done` holds for the shift
/// (or `limit` passes); returns every change of (stage, state) with the
/// wall-clock µs at which it was first seen.
fn watch(
    steer: &Steer,
    limit: Duration,
    done: impl Fn(usize, &str) -> bool,
) -> Result<Vec<(u64, usize, u8, String)>> {
    let t = Instant::now();
    let mut seen: Vec<(u64, usize, u8, String)> = Vec::new();
    loop {
        let at = now_us();
        let (stage, pct, state, _) = shift_of(steer, "web")?;
        let changed = seen
            .last()
            .is_none_or(|(_, s, _, st)| *s != stage || *st != state);
        if changed {
            seen.push((at, stage, pct, state.clone()));
        }
        if done(stage, &state) {
            return Ok(seen);
        }
        if t.elapsed() > limit {
            bail!("the shift did not get there within {limit:?}; seen: {seen:?}");
        }
        thread::sleep(Duration::from_millis(100));
    }
}

/// A full shift under load: `steer shift start web --from eu-west --to
/// us-east --stages 25,50,100 --hold 3s` while the europe class opens
/// about 600 connections/s and 8 long streams opened before the shift run
/// on eu-west. At each stage, us-east's share of new connections is p % ×
/// eu-west's share before the shift, within ±3 points over ≥ 1,000
/// connections; no request fails; the streams complete intact on eu-west;
/// `steer shift status` ends `completed`.
pub fn under_load(ctx: &Ctx) -> Result<String> {
    let mut cfg = Cfg::lab()?;
    policy::make_geo(&mut cfg.t, &["web"])?;
    let path = ctx.file("shift.toml");
    cfg.write(&path)?;
    let from = policy::class_addrs(europe(), false);
    let steer = Steer::start(ctx, &path)?;

    let mut s = Streams::new(topo::web());
    s.from = from.clone();
    s.streams = 8;
    s.bytes = 120 * 1024;
    s.interval = Duration::from_millis(100); // about 12 s
    let streams = ctx.lab.start_streams(&s)?;
    thread::sleep(Duration::from_millis(500));

    let rate = 600.0;
    let secs = 14;
    let (lines, t_cmd, t_ack, seen) = thread::scope(|sc| -> Result<_> {
        let lab = ctx.lab;
        let from = from.clone();
        let h = sc.spawn(move || live(lab, &from, rate, secs));
        thread::sleep(Duration::from_millis(2_500));
        let t_cmd = now_us();
        let out = steer.cli_ok(&[
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
            "3s",
        ]);
        let t_ack = now_us();
        let seen = out.and_then(|o| {
            ctx.say(format!("steer shift start: {}", o.trim()));
            watch(&steer, Duration::from_secs(14), |_, st| st == "completed")
        });
        let lines = h
            .join()
            .map_err(|_| anyhow!("the client thread panicked"))?;
        Ok((lines?, t_cmd, t_ack, seen?))
    })?;
    let report = streams.wait()?;
    let status_text = steer.cli_ok(&["shift", "status", "web"])?;
    let (_, _, end_state, _) = shift_of(&steer, "web")?;
    steer.stop()?;

    let first = lines.iter().map(|l| l.start_us).min().unwrap_or(0);
    let last = lines.iter().map(|l| l.start_us).max().unwrap_or(0);
    let ms = |us: u64| us.saturating_sub(t_ack) as f64 / 1_000.0;
    for (at, stage, pct, state) in &seen {
        ctx.say(format!(
            "  seen at {:+8.0} ms: stage {stage} ({pct}%), {state}",
            ms(*at)
        ));
    }
    let mut bad = Vec::new();
    let (ok0, f0, eu0) = window(&lines, first + 300_000, t_cmd, "eu-west");
    ctx.say(format!(
        "before the shift: {ok0} connections, {f0} failed, eu-west {eu0:.2}%"
    ));
    if ok0 < 500 {
        bad.push(format!("only {ok0} connections before the shift"));
    }
    // Stage k runs from when it was seen (stage 1: the command's answer)
    // to when the next was seen; margins cover the 100 ms polling.
    let starts: Vec<(u64, u8)> = [25u8, 50, 100]
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let at = if i == 0 {
                t_ack
            } else {
                seen.iter()
                    .find(|(_, st, _, _)| *st == i + 1)
                    .map_or(u64::MAX, |x| x.0)
            };
            (at, *p)
        })
        .collect();
    let mut figures = Vec::new();
    for (i, (at, p)) in starts.iter().enumerate() {
        if *at == u64::MAX {
            bad.push(format!("stage {} ({p}%) was never seen", i + 1));
            continue;
        }
        let end = starts
            .get(i + 1)
            .map_or(last + 1, |(n, _)| n.saturating_sub(400_000));
        let (ok, failed, us) = window(&lines, at + 300_000, end, "us-east");
        let exp = f64::from(*p) * eu0 / 100.0;
        ctx.say(format!(
            "stage {} ({p}%): {ok} connections, {failed} failed, us-east {us:.2}% (expected {exp:.2}%, {:+.2} pp)",
            i + 1,
            us - exp
        ));
        figures.push(format!("{p}%: us-east {us:.1}% (exp {exp:.1}) over {ok}"));
        if ok < MIN_PER_STAGE {
            bad.push(format!(
                "stage {p}%: only {ok} connections (want ≥ {MIN_PER_STAGE})"
            ));
        }
        if (us - exp).abs() > TOL_PP {
            bad.push(format!(
                "stage {p}%: us-east {us:.2}% instead of {exp:.2}% ± {TOL_PP}"
            ));
        }
    }
    let failed_all = lines.iter().filter(|l| l.backend.is_none()).count();
    ctx.say(format!(
        "all: {} connections, {failed_all} failed",
        lines.len()
    ));
    if failed_all > 0 {
        bad.push(format!("{failed_all} requests failed"));
    }
    let intact_eu = report
        .results
        .iter()
        .filter(|r| {
            r.ok && r.checksum_ok
                && r.pattern_ok
                && r.backend.as_deref().and_then(policy::region_of) == Some("eu-west")
        })
        .count();
    ctx.say(format!(
        "long streams opened before the shift: {intact_eu}/{} intact on eu-west ({:.1} s)",
        report.results.len(),
        report.elapsed_ms as f64 / 1_000.0
    ));
    if intact_eu != 8 || report.results.len() != 8 {
        bad.push(format!(
            "{intact_eu} of {} streams intact on eu-west (want 8 of 8)",
            report.results.len()
        ));
    }
    ctx.say(format!("steer shift status: {}", status_text.trim()));
    if end_state != "completed" || !status_text.contains("completed") {
        bad.push(format!("the shift ended {end_state}, not completed"));
    }
    if !bad.is_empty() {
        bail!("{}", bad.join("; "));
    }
    Ok(format!(
        "eu-west {eu0:.1}% before; {}; 0 of {} failed; 8/8 streams intact on eu-west; completed",
        figures.join(", "),
        lines.len()
    ))
}

/// A daemon restart in the middle of a shift: stages 30,60 with an 8 s
/// hold; at stage 1 the daemon is killed (SIGKILL) 2.5 s into the hold
/// and started again on the same pins and config. The shift resumes at
/// stage 1 (30 %); connections keep flowing (0 failed) with us-east's
/// share at 30 % × eu-west's share ±3 points before the kill and from the
/// kill to stage 2 (a window that holds the second or so the daemon is
/// down; that second alone, under 1,000 connections, is only printed),
/// and at 60 % × eu-west's share at stage 2; stage 2 arrives when the original hold ends (within ±1.5 s of
/// the shift's start + 8 s), not 8 s after the restart.
pub fn restart(ctx: &Ctx) -> Result<String> {
    let hold = Duration::from_secs(8);
    let mut cfg = Cfg::lab()?;
    policy::make_geo(&mut cfg.t, &["web"])?;
    let path = ctx.file("shift-restart.toml");
    cfg.write(&path)?;
    let from = policy::class_addrs(europe(), false);
    let mut steer = Steer::start(ctx, &path)?;

    let rate = 600.0;
    let secs = 15;
    let out = thread::scope(|sc| -> Result<_> {
        let lab = ctx.lab;
        let f = from.clone();
        let h = sc.spawn(move || live(lab, &f, rate, secs));
        let run = (|| -> Result<_> {
            thread::sleep(Duration::from_millis(2_000));
            let t_cmd = now_us();
            let o = steer.cli_ok(&[
                "shift", "start", "web", "--from", "eu-west", "--to", "us-east", "--stages",
                "30,60", "--hold", "8s",
            ])?;
            let t_ack = now_us();
            ctx.say(format!("steer shift start: {}", o.trim()));
            let (stage, pct, state, _) = shift_of(&steer, "web")?;
            if (stage, pct, state.as_str()) != (1, 30, "running") {
                bail!("after shift start: stage {stage} ({pct}%), {state}; expected stage 1 (30%), running");
            }
            thread::sleep(Duration::from_millis(2_500));
            let t_kill = now_us();
            steer.kill9()?;
            thread::sleep(Duration::from_millis(500));
            steer.restart()?;
            let t_up = now_us();
            let (stage, pct, state, next) = shift_of(&steer, "web")?;
            let text = steer.cli_ok(&["shift", "status", "web"])?;
            ctx.say(format!(
                "after the restart ({:.2} s after the kill): stage {stage} ({pct}%), {state}, next in {next:?} ms; \
                 steer shift status: {}",
                (t_up - t_kill) as f64 / 1e6,
                text.trim()
            ));
            let resumed = (stage, pct, state.clone());
            let seen = watch(&steer, Duration::from_secs(12), |s, _| s >= 2)?;
            Ok((t_cmd, t_ack, t_kill, t_up, resumed, seen))
        })();
        let lines = h
            .join()
            .map_err(|_| anyhow!("the client thread panicked"))?;
        Ok((lines?, run?))
    });
    let stop = steer.stop();
    let (lines, (t_cmd, t_ack, t_kill, t_up, resumed, seen)) = out?;
    stop?;

    let mut bad = Vec::new();
    let first = lines.iter().map(|l| l.start_us).min().unwrap_or(0);
    let last = lines.iter().map(|l| l.start_us).max().unwrap_or(0);
    let (ok0, _, eu0) = window(&lines, first + 300_000, t_cmd, "eu-west");
    ctx.say(format!(
        "before the shift: {ok0} connections, eu-west {eu0:.2}%"
    ));
    if resumed != (1, 30, "running".to_owned()) {
        bad.push(format!(
            "after the restart the shift is at stage {} ({}%), {}; expected stage 1 (30%), running",
            resumed.0, resumed.1, resumed.2
        ));
    }
    let t2 = seen
        .iter()
        .find(|(_, s, _, _)| *s >= 2)
        .map_or(u64::MAX, |x| x.0);
    let hold_us = u64::try_from(hold.as_micros())?;
    // Stage 1 started between the command and its answer.
    let want = t_ack + hold_us;
    let late = (t2 as f64 - want as f64) / 1e6;
    ctx.say(format!(
        "stage 2 seen {:.2} s after shift start (expected {:.2} s ± 1.5: the original hold); \
         {:.2} s after the restart",
        (t2.saturating_sub(t_ack)) as f64 / 1e6,
        hold.as_secs_f64(),
        (t2.saturating_sub(t_up)) as f64 / 1e6
    ));
    if late.abs() > 1.5 {
        bad.push(format!(
            "stage 2 came {late:+.2} s off the original hold's end (allowed ±1.5 s)"
        ));
    }
    let exp1 = 30.0 * eu0 / 100.0;
    let exp2 = 60.0 * eu0 / 100.0;
    let rows = [
        (
            "stage 1, before the kill",
            t_ack + 300_000,
            t_kill,
            exp1,
            true,
        ),
        ("stage 1, daemon down", t_kill, t_up, exp1, false),
        (
            "stage 1, from the kill to stage 2",
            t_kill,
            t2.saturating_sub(400_000),
            exp1,
            true,
        ),
        (
            "stage 1, whole",
            t_ack + 300_000,
            t2.saturating_sub(400_000),
            exp1,
            true,
        ),
        ("stage 2", t2 + 300_000, last + 1, exp2, true),
    ];
    let mut figures = Vec::new();
    for (label, a, b, exp, strict) in rows {
        let (ok, failed, us) = window(&lines, a, b, "us-east");
        ctx.say(format!(
            "{label}: {ok} connections, {failed} failed, us-east {us:.2}% (expected {exp:.2}%, {:+.2} pp)",
            us - exp
        ));
        figures.push(format!("{label} {us:.1}% over {ok}"));
        if strict && ok < MIN_PER_STAGE {
            bad.push(format!("{label}: only {ok} connections"));
        }
        if strict && (us - exp).abs() > TOL_PP {
            bad.push(format!(
                "{label}: us-east {us:.2}% instead of {exp:.2}% ± {TOL_PP}"
            ));
        }
    }
    let failed_all = lines.iter().filter(|l| l.backend.is_none()).count();
    ctx.say(format!(
        "all: {} connections, {failed_all} failed",
        lines.len()
    ));
    if failed_all > 0 {
        bad.push(format!("{failed_all} requests failed"));
    }
    if !bad.is_empty() {
        bail!("{}", bad.join("; "));
    }
    Ok(format!(
        "resumed at stage 1 (30%) after SIGKILL; stage 2 at {:.2} s (hold 8 s, {:.2} s after the restart); \
         {}; 0 of {} failed",
        (t2 - t_ack) as f64 / 1e6,
        (t2 - t_up) as f64 / 1e6,
        figures.join(", "),
        lines.len()
    ))
}
