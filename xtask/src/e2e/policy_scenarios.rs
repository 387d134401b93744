//! Region policies with real connections (docs/policies.md): geo steering
//! by client prefix, a dial change, tier spill, panic, residency, the
//! capacity waterfall and a latency re-ranking.
//!
//! Every scenario writes its own config (examples/lab.toml with the lab's
//! client classes, [`lab::policy`]), starts steer, and compares where the
//! connections landed, per region, with the shares the policy's formulas
//! give (docs/policies.md), worked out here from the scenario's own
//! settings, never read back from steer. A [`Restore`] guard puts every
//! backend back to healthy and undelayed, whatever happens.
use std::{
    collections::BTreeMap,
    net::IpAddr,
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Result};
use steer_api::Health;
use toml::Value;

use super::{
    config::Cfg,
    daemon::{self, Steer},
    traffic::counts,
    Ctx,
};
use crate::lab::{
    self,
    policy::{self, GEO_CLASSES},
    topo, Lab, Load, Streams,
};

/// The tolerance for shares of new connections.
const TOL_PP: f64 = 3.0;
/// The minimum number of connections for a share.
const SHARE_CONNECTIONS: u64 = 10_000;

// ------------------------------------------------------------- helpers --

/// Puts every backend back to healthy with undelayed health endpoints
/// when dropped (a scenario that fails half-way must not leave a failing
/// backend to the next one).
struct Restore<'a> {
    lab: &'a Lab,
}

impl Drop for Restore<'_> {
    fn drop(&mut self) {
        for b in &topo::BACKENDS {
            let _ = self.lab.control(b.name, "recover");
            let _ = self.lab.control(b.name, "delay=0");
        }
    }
}

/// Connections per region (from the backend hosts that answered).
fn regions(backends: &BTreeMap<String, u64>) -> BTreeMap<&'static str, u64> {
    let mut m: BTreeMap<&'static str, u64> = topo::REGIONS.iter().map(|r| (*r, 0)).collect();
    for (b, n) in backends {
        if let Some(r) = policy::region_of(b) {
            *m.entry(r).or_default() += n;
        }
    }
    m
}

/// Many connections in batches, added up.
#[derive(Default)]
struct Tally {
    sent: u64,
    ok: u64,
    backends: BTreeMap<String, u64>,
    errors: BTreeMap<String, u64>,
    by_source: BTreeMap<String, BTreeMap<String, u64>>,
    secs: f64,
}

impl Tally {
    fn region_share(&self, region: &str) -> f64 {
        let n = regions(&self.backends).get(region).copied().unwrap_or(0);
        if self.ok == 0 {
            0.0
        } else {
            100.0 * n as f64 / self.ok as f64
        }
    }

    fn host_share(&self, host: &str) -> f64 {
        let n = self.backends.get(host).copied().unwrap_or(0);
        if self.ok == 0 {
            0.0
        } else {
            100.0 * n as f64 / self.ok as f64
        }
    }

    /// The per-source counts of the clients of one class, as a tally.
    fn of_class(&self, class: &str) -> Tally {
        let mut t = Tally {
            secs: self.secs,
            ..Tally::default()
        };
        for (src, m) in &self.by_source {
            let in_class = src
                .parse::<IpAddr>()
                .ok()
                .and_then(policy::class_of)
                .is_some_and(|c| c.name == class);
            if !in_class {
                continue;
            }
            for (k, n) in m {
                t.sent += n;
                match k.strip_prefix("error: ") {
                    Some(e) => *t.errors.entry(e.to_owned()).or_default() += n,
                    None => {
                        t.ok += n;
                        *t.backends.entry(k.clone()).or_default() += n;
                    }
                }
            }
        }
        t
    }

    fn regions_text(&self) -> String {
        topo::REGIONS
            .iter()
            .map(|r| format!("{r} {:.2}%", self.region_share(r)))
            .collect::<Vec<_>>()
            .join(", ")
    }

    fn errors_text(&self) -> String {
        if self.errors.is_empty() {
            "no errors".into()
        } else {
            format!("errors: {}", counts(&self.errors))
        }
    }
}

/// `total` connections to `to` from `from`, in batches of up to 2,000.
fn measure(ctx: &Ctx, to: std::net::SocketAddr, from: &[IpAddr], total: u64) -> Result<Tally> {
    measure_with(ctx, to, from, total, Duration::from_secs(3))
}

fn measure_with(
    ctx: &Ctx,
    to: std::net::SocketAddr,
    from: &[IpAddr],
    total: u64,
    timeout: Duration,
) -> Result<Tally> {
    let mut t = Tally::default();
    let start = Instant::now();
    while t.sent < total {
        ctx.check_time("sending connections")?;
        let n = (total - t.sent).min(2_000);
        let r = ctx.lab.http(
            &Load::new(to)
                .from(from.iter().copied())
                .requests(u32::try_from(n)?)
                .concurrency(64)
                .timeout(timeout),
        )?;
        t.sent += r.requests;
        t.ok += r.ok;
        for (b, n) in r.backends {
            *t.backends.entry(b).or_default() += n;
        }
        for (k, n) in r.errors_by_kind {
            *t.errors.entry(k).or_default() += n;
        }
        for (s, m) in r.by_source {
            let e = t.by_source.entry(s).or_default();
            for (k, n) in m {
                *e.entry(k).or_default() += n;
            }
        }
        if r.requests == 0 {
            bail!("the client sent nothing");
        }
    }
    t.secs = start.elapsed().as_secs_f64();
    Ok(t)
}

/// Checks a tally's region shares against `expected` (percent per
/// region; regions not named expect 0) within ±[`TOL_PP`]; prints one
/// line; returns the largest deviation, or an error naming every region
/// outside the tolerance.
fn check_regions(ctx: &Ctx, label: &str, t: &Tally, expected: &[(&str, f64)]) -> Result<f64> {
    let mut worst: f64 = 0.0;
    let mut bad = Vec::new();
    let mut cells = Vec::new();
    for r in topo::REGIONS {
        let exp = expected
            .iter()
            .find(|(n, _)| *n == r)
            .map_or(0.0, |(_, e)| *e);
        let got = t.region_share(r);
        let dev = got - exp;
        worst = worst.max(dev.abs());
        cells.push(format!("{r} {got:6.2}% (exp {exp:5.1}%)"));
        if dev.abs() > TOL_PP {
            bad.push(format!("{r} {got:.2}% instead of {exp:.1}% ({dev:+.2} pp)"));
        }
    }
    ctx.say(format!(
        "{label}: {} of {} answered ({:.1}s), {}; {}",
        t.ok,
        t.sent,
        t.secs,
        t.errors_text(),
        cells.join(", ")
    ));
    if t.ok == 0 {
        bail!("{label}: no connection answered ({})", t.errors_text());
    }
    if !bad.is_empty() {
        bail!("{label}: off by more than ±{TOL_PP} pp: {}", bad.join("; "));
    }
    Ok(worst)
}

/// Waits until `steer status` shows every entry of `hosts` in `service`
/// with `health` (each host's IPv4 entry; `-v6` for services that use
/// those), or fails after `limit`. Returns how long it took.
fn wait_health(
    steer: &Steer,
    service: &str,
    entries: &[String],
    health: Health,
    limit: Duration,
) -> Result<Duration> {
    let t = Instant::now();
    loop {
        let st = steer.status()?;
        let all = entries
            .iter()
            .all(|e| daemon::status_backend(&st, service, e).is_ok_and(|b| b.health == health));
        if all {
            return Ok(t.elapsed());
        }
        if t.elapsed() > limit {
            bail!(
                "{service}: {} not {} within {limit:?}",
                entries.join(", "),
                health.as_str()
            );
        }
        thread::sleep(Duration::from_millis(100));
    }
}

/// Sends small batches (24 connections) until `leave` gets no connection
/// in three batches in a row; returns when the first of those batches
/// started (the time new connections stopped reaching `leave`), measured
/// from `t0`. Fails after `limit` + 5 s.
fn time_until_gone(
    ctx: &Ctx,
    t0: Instant,
    to: std::net::SocketAddr,
    from: &[IpAddr],
    leave: &[&str],
    limit: Duration,
) -> Result<(Duration, u64)> {
    let mut streak = 0;
    let mut first_clean = None;
    let mut errors = 0;
    loop {
        ctx.check_time("waiting for traffic to leave")?;
        if t0.elapsed() > limit + Duration::from_secs(5) {
            bail!(
                "new connections still reached {} {:.1}s after the change (limit {limit:?})",
                leave.join("+"),
                t0.elapsed().as_secs_f64()
            );
        }
        let s = t0.elapsed();
        let r = ctx.lab.http(
            &Load::new(to)
                .from(from.iter().copied())
                .requests(24)
                .concurrency(24)
                .timeout(Duration::from_secs(2)),
        )?;
        errors += r.errors;
        let hits: u64 = leave
            .iter()
            .map(|h| r.backends.get(*h).copied().unwrap_or(0))
            .sum();
        if hits == 0 && r.ok > 0 {
            if streak == 0 {
                first_clean = Some(s);
            }
            streak += 1;
            if streak == 3 {
                return Ok((first_clean.unwrap_or(s), errors));
            }
        } else {
            streak = 0;
        }
    }
}

fn expect_text(e: &[(&str, f64)]) -> String {
    e.iter()
        .map(|(r, s)| format!("{r} {s:.0}%"))
        .collect::<Vec<_>>()
        .join(" / ")
}

/// `steer explain tcp CLIENT:40000 VIP` against the running daemon.
fn explain(steer: &Steer, client: IpAddr, vip: std::net::SocketAddr) -> Result<String> {
    let c = std::net::SocketAddr::new(client, 40_000).to_string();
    steer.cli_ok(&["explain", "tcp", &c, &vip.to_string()])
}

/// The lines of an explanation that carry the decision (class, order,
/// regions, choice), indented.
fn explain_lines(text: &str, max: usize) -> String {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .take(max)
        .map(|l| format!("  | {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

fn v4_all() -> Vec<IpAddr> {
    topo::client_addrs(false)
}

fn class(name: &str) -> &'static policy::GeoClass {
    GEO_CLASSES
        .iter()
        .find(|c| c.name == name)
        .unwrap_or(&GEO_CLASSES[0])
}

// ----------------------------------------------------------- scenarios --

/// Geo steering: each client prefix lands in its class's first region.
/// ≥ 10,000 IPv4 connections from all 20 client addresses, and IPv6
/// connections from all 20 IPv6 addresses; per class, the share of its
/// first region must be 100 % within ±3 points.
pub fn geo(ctx: &Ctx) -> Result<String> {
    let mut cfg = Cfg::lab()?;
    policy::make_geo(&mut cfg.t, &["web", "web6"])?;
    let path = ctx.file("geo.toml");
    cfg.write(&path)?;
    for c in &GEO_CLASSES {
        ctx.say(format!(
            "class {:<8} {} + {} -> order [{}]",
            c.name,
            c.v4,
            c.v6,
            c.regions.join(", ")
        ));
    }
    let _restore = Restore { lab: ctx.lab };
    let steer = Steer::start(ctx, &path)?;

    let v4 = measure(ctx, topo::web(), &v4_all(), SHARE_CONNECTIONS)?;
    let v6 = measure(ctx, topo::web6(), &topo::client_addrs(true), 3_000)?;
    let mut worst: f64 = 0.0;
    let mut failures = Vec::new();
    for (fam, t) in [("IPv4 web", &v4), ("IPv6 web6", &v6)] {
        ctx.say(format!(
            "{fam}: {} connections, {} answered, {}",
            t.sent,
            t.ok,
            t.errors_text()
        ));
        for c in &GEO_CLASSES {
            let ct = t.of_class(c.name);
            let label = format!("  {fam} class {:<8}", c.name);
            match check_regions(ctx, &label, &ct, &[(c.regions[0], 100.0)]) {
                Ok(w) => worst = worst.max(w),
                Err(e) => failures.push(format!("{e:#}")),
            }
        }
        if !t.errors.is_empty() {
            failures.push(format!("{fam}: {}", t.errors_text()));
        }
    }
    let ex = explain(&steer, topo::client_addrs(false)[15], topo::web())?;
    ctx.say(format!(
        "steer explain tcp {}:40000 {}:\n{}",
        topo::client_addrs(false)[15],
        topo::web(),
        explain_lines(&ex, 14)
    ));
    if !ex.contains("apac") {
        failures.push(format!(
            "steer explain does not name the class apac for {}",
            topo::client_addrs(false)[15]
        ));
    }
    steer.stop()?;
    if !failures.is_empty() {
        bail!("{}", failures.join("; "));
    }
    Ok(format!(
        "{} IPv4 + {} IPv6 connections: every class in its first region \
         (europe→eu-west, americas→us-east, apac→ap-south); largest deviation {worst:.2} pp",
        v4.ok, v6.ok
    ))
}

/// A dial change: the europe class prefers eu-west; its dial goes from
/// 100 to 30 by a reload. About 70 % of new connections then spill to the
/// next region of the order (us-east), while long streams opened before
/// stay on their eu-west backends and complete intact.
pub fn dial(ctx: &Ctx) -> Result<String> {
    let mut cfg = Cfg::lab()?;
    policy::make_geo(&mut cfg.t, &["web"])?;
    let path = ctx.file("dial.toml");
    cfg.write(&path)?;
    let eu = class("europe");
    let from = policy::class_addrs(eu, false);
    let _restore = Restore { lab: ctx.lab };
    let steer = Steer::start(ctx, &path)?;

    let before = measure(ctx, topo::web(), &from, 2_000)?;
    check_regions(
        ctx,
        "dial 100, europe clients",
        &before,
        &[("eu-west", 100.0)],
    )?;

    let mut s = Streams::new(topo::web());
    s.from = from.clone();
    s.streams = 8;
    s.bytes = 60 * 1024;
    s.interval = Duration::from_millis(100); // about 6 s
    let streams = ctx.lab.start_streams(&s)?;
    thread::sleep(Duration::from_millis(800));

    let dial = 30;
    policy::set_region(&mut cfg.t, "eu-west", "dial", Value::Integer(dial))?;
    cfg.write(&path)?;
    let msg = steer.reload()?;
    ctx.say(format!(
        "8 streams open to eu-west; eu-west dial = {dial}, reloaded: {}",
        msg.trim()
    ));
    let after = measure(ctx, topo::web(), &from, SHARE_CONNECTIONS)?;
    let keep = dial as f64;
    let expected = [("eu-west", keep), ("us-east", 100.0 - keep)];
    let res = check_regions(
        ctx,
        &format!("dial {dial}, europe clients"),
        &after,
        &expected,
    );
    // Another class's order is unaffected: americas prefers us-east.
    let am = measure(
        ctx,
        topo::web(),
        &policy::class_addrs(class("americas"), false),
        1_000,
    )?;
    let res_am = check_regions(ctx, "dial 30, americas clients", &am, &[("us-east", 100.0)]);
    let report = streams.wait()?;
    let in_eu = report
        .results
        .iter()
        .filter(|r| {
            r.backend
                .as_deref()
                .and_then(policy::region_of)
                .is_some_and(|g| g == "eu-west")
        })
        .count();
    ctx.say(format!(
        "streams opened before the change: {}/{} intact (checksum and pattern), {in_eu} on eu-west backends, backends {}",
        report.ok,
        report.streams,
        counts(&report.backends)
    ));
    steer.stop()?;
    let worst = res?;
    res_am?;
    if report.ok != report.streams || in_eu != report.results.len() {
        bail!(
            "established streams were disturbed by the dial change: {}/{} ok, {in_eu} on eu-west",
            report.ok,
            report.streams
        );
    }
    if !after.errors.is_empty() {
        bail!("after the dial change: {}", after.errors_text());
    }
    Ok(format!(
        "eu-west dial 100 -> {dial}: europe clients {} over {} connections (expected {}; largest deviation {worst:.2} pp); \
         {}/{} established streams stayed on eu-west intact",
        after.regions_text(),
        after.ok,
        expect_text(&expected),
        report.ok,
        report.streams
    ))
}

/// Failover tiers [[eu-west], [us-east], [ap-south]]: as eu-west loses
/// one of its two backends, it keeps 70 % (health 1.4 × 0.5) and spills
/// 30 % to us-east; when it loses both, everything moves to us-east
/// within fall × interval + 1 s; then the same one tier down.
pub fn tier_spill(ctx: &Ctx) -> Result<String> {
    let mut cfg = Cfg::lab()?;
    let tiers = Value::Array(vec![
        policy::strings(&["eu-west"]),
        policy::strings(&["us-east"]),
        policy::strings(&["ap-south"]),
    ]);
    policy::set_service(&mut cfg.t, "web", "policy", "failover")?;
    policy::set_service(&mut cfg.t, "web", "tiers", tiers)?;
    let path = ctx.file("tiers.toml");
    cfg.write(&path)?;
    let h = cfg.health("web")?;
    let limit = h.interval * h.fall + Duration::from_secs(1);
    ctx.say(format!(
        "web: policy failover, tiers [[eu-west], [us-east], [ap-south]]; health: interval {:?}, fall {} \
         -> failover limit {limit:?}",
        h.interval, h.fall
    ));
    let _restore = Restore { lab: ctx.lab };
    let steer = Steer::start(ctx, &path)?;
    let from = v4_all();
    let n = SHARE_CONNECTIONS;

    let t = measure(ctx, topo::web(), &from, 1_000)?;
    check_regions(ctx, "all healthy", &t, &[("eu-west", 100.0)])?;
    let mut figures = Vec::new();
    let mut worst: f64 = 0.0;

    for (tier, next, last) in [
        ("eu-west", "us-east", "ap-south"),
        ("us-east", "ap-south", ""),
    ] {
        let hosts = lab_region_hosts(tier);
        // One of two backends down: health 0.7, the tier keeps 70 %.
        ctx.lab.control(hosts[0], "fail")?;
        wait_health(
            &steer,
            "web",
            &[hosts[0].to_owned()],
            Health::Down,
            limit + limit,
        )?;
        let t = measure(ctx, topo::web(), &from, n)?;
        let exp = [(tier, 70.0), (next, 30.0)];
        worst = worst.max(check_regions(
            ctx,
            &format!("{tier} 1 of 2 healthy"),
            &t,
            &exp,
        )?);
        figures.push(format!(
            "{tier} half down: {}",
            expect_line(&t, &[tier, next])
        ));
        // The whole tier down.
        let t0 = Instant::now();
        ctx.lab.control(hosts[1], "fail")?;
        let (gone, errs) = time_until_gone(ctx, t0, topo::web(), &from, &hosts, limit)?;
        ctx.say(format!(
            "{tier} all down: new connections stopped reaching it after {:.2}s (limit {:.1}s; {errs} errors while probing)",
            gone.as_secs_f64(),
            limit.as_secs_f64()
        ));
        if gone > limit {
            bail!(
                "{tier}: failover took {:.2}s, over fall x interval + 1 s = {:.1}s",
                gone.as_secs_f64(),
                limit.as_secs_f64()
            );
        }
        wait_health(&steer, "web", &[hosts[1].to_owned()], Health::Down, limit)?;
        let t = measure(ctx, topo::web(), &from, 2_000)?;
        worst = worst.max(check_regions(
            ctx,
            &format!("{tier} all down"),
            &t,
            &[(next, 100.0)],
        )?);
        figures.push(format!(
            "{tier} down: {next} {:.1}% after {:.2}s",
            t.region_share(next),
            gone.as_secs_f64()
        ));
        let _ = last;
    }
    steer.stop()?;
    Ok(format!(
        "{}; largest deviation {worst:.2} pp; failover limit {:.1}s",
        figures.join("; "),
        limit.as_secs_f64()
    ))
}

fn expect_line(t: &Tally, regions: &[&str]) -> String {
    regions
        .iter()
        .map(|r| format!("{r} {:.1}%", t.region_share(r)))
        .collect::<Vec<_>>()
        .join(" / ")
}

fn lab_region_hosts(region: &str) -> Vec<&'static str> {
    topo::BACKENDS
        .iter()
        .filter(|b| b.region == region)
        .map(|b| b.name)
        .collect()
}

/// Panic: web over eu-west and us-east (tiers [[eu-west], [us-east]]),
/// panic_threshold 60. With eu1, us1 and us2 failing, the regions lack
/// healthy capacity (NTH = 0.7 < 1) and eu-west (50 % healthy, below
/// 60 %) keeps its whole share but spreads it over both its backends,
/// the failing eu1 too: 50 / 50. Once us-east recovers, NTH = 1, no panic:
/// eu-west keeps 70 % on eu2 alone and us-east takes 30 %.
pub fn panic_mode(ctx: &Ctx) -> Result<String> {
    let mut cfg = Cfg::lab()?;
    cfg.set_service_backends("web", &["eu1", "eu2", "us1", "us2"])?;
    policy::set_service(&mut cfg.t, "web", "policy", "failover")?;
    policy::set_service(
        &mut cfg.t,
        "web",
        "tiers",
        Value::Array(vec![
            policy::strings(&["eu-west"]),
            policy::strings(&["us-east"]),
        ]),
    )?;
    let threshold = 60;
    policy::set_service(
        &mut cfg.t,
        "web",
        "panic_threshold",
        Value::Integer(threshold),
    )?;
    let path = ctx.file("panic.toml");
    cfg.write(&path)?;
    let h = cfg.health("web")?;
    let limit = (h.interval * h.fall + Duration::from_secs(1)) * 2;
    ctx.say(format!(
        "web: eu1 eu2 us1 us2, policy failover, tiers [[eu-west], [us-east]], panic_threshold {threshold}"
    ));
    let _restore = Restore { lab: ctx.lab };
    let steer = Steer::start(ctx, &path)?;
    let from = v4_all();

    for b in ["eu1", "us1", "us2"] {
        ctx.lab.control(b, "fail")?;
    }
    let down: Vec<String> = ["eu1", "us1", "us2"].map(str::to_owned).to_vec();
    wait_health(&steer, "web", &down, Health::Down, limit)?;
    let t = measure(ctx, topo::web(), &from, SHARE_CONNECTIONS)?;
    let (e1, e2) = (t.host_share("eu1"), t.host_share("eu2"));
    ctx.say(format!(
        "eu1 (failing) + us1 + us2 down: {} of {} answered, {}; eu1 {e1:.2}%, eu2 {e2:.2}%, us-east {:.2}% \
         (panic: expected 50 / 50 / 0)",
        t.ok,
        t.sent,
        t.errors_text(),
        t.region_share("us-east")
    ));
    let mut bad = Vec::new();
    for (name, got, exp) in [
        ("eu1", e1, 50.0),
        ("eu2", e2, 50.0),
        ("us-east", t.region_share("us-east"), 0.0),
    ] {
        if (got - exp).abs() > TOL_PP {
            bad.push(format!("{name} {got:.2}% instead of {exp}%"));
        }
    }
    let logged = steer
        .log_text()
        .contains("panic: a region below panic_threshold");
    ctx.say(format!(
        "steer's log says panic: {}",
        if logged { "yes" } else { "NO" }
    ));
    if !logged {
        bad.push("steer did not log the panic".into());
    }

    ctx.lab.control("us1", "recover")?;
    ctx.lab.control("us2", "recover")?;
    let up: Vec<String> = ["us1", "us2"].map(str::to_owned).to_vec();
    wait_health(&steer, "web", &up, Health::Up, limit)?;
    let t2 = measure(ctx, topo::web(), &from, SHARE_CONNECTIONS)?;
    ctx.say(format!(
        "us-east back (NTH = 1, no panic): eu1 {:.2}%, eu2 {:.2}%, us-east {:.2}% (expected 0 / 70 / 30), {}",
        t2.host_share("eu1"),
        t2.host_share("eu2"),
        t2.region_share("us-east"),
        t2.errors_text()
    ));
    for (name, got, exp) in [
        ("eu1", t2.host_share("eu1"), 0.0),
        ("eu2", t2.host_share("eu2"), 70.0),
        ("us-east", t2.region_share("us-east"), 30.0),
    ] {
        if (got - exp).abs() > TOL_PP {
            bad.push(format!(
                "after recovery: {name} {got:.2}% instead of {exp}%"
            ));
        }
    }
    steer.stop()?;
    if !t.errors.is_empty() || !t2.errors.is_empty() {
        bad.push(format!(
            "errors: {} / {}",
            t.errors_text(),
            t2.errors_text()
        ));
    }
    if !bad.is_empty() {
        bail!("{}", bad.join("; "));
    }
    Ok(format!(
        "panic: eu1 {e1:.1}% / eu2 {e2:.1}% (expected 50 / 50) over {} connections; \
         after us-east recovered: eu2 {:.1}% / us-east {:.1}% (expected 70 / 30)",
        t.ok,
        t2.host_share("eu2"),
        t2.region_share("us-east")
    ))
}

/// Residency: the europe class may only use eu-west. With both eu-west
/// backends failing, `web` (on_no_healthy = "drop") drops the class's new
/// flows, counted as `residency`, and sends none elsewhere; `web-4in6`
/// (the default fail-open) keeps them on eu-west's failing backends.
/// Other classes are unaffected.
pub fn residency(ctx: &Ctx) -> Result<String> {
    let mut cfg = Cfg::lab()?;
    policy::add_classes(&mut cfg.t, &[("europe", &["eu-west"])])?;
    policy::make_geo(&mut cfg.t, &["web", "web-4in6"])?;
    policy::set_service(&mut cfg.t, "web", "on_no_healthy", "drop")?;
    let path = ctx.file("residency.toml");
    cfg.write(&path)?;
    let h = cfg.health("web")?;
    let limit = (h.interval * h.fall + Duration::from_secs(1)) * 2;
    ctx.say(
        "class europe (198.51.100.0/24, 2001:db8:c::/48): allowed_regions [eu-west]; \
         web: geo, on_no_healthy = \"drop\"; web-4in6: geo, fail-open (default)",
    );
    let _restore = Restore { lab: ctx.lab };
    let steer = Steer::start(ctx, &path)?;
    let eu_from = policy::class_addrs(class("europe"), false);
    let am_from = policy::class_addrs(class("americas"), false);

    let t = measure(ctx, topo::web(), &eu_from, 1_000)?;
    check_regions(ctx, "healthy, europe -> web", &t, &[("eu-west", 100.0)])?;

    for b in ["eu1", "eu2"] {
        ctx.lab.control(b, "fail")?;
    }
    let entries: Vec<String> = ["eu1", "eu2"].map(str::to_owned).to_vec();
    wait_health(&steer, "web", &entries, Health::Down, limit)?;
    let entries6: Vec<String> = ["eu1-v6", "eu2-v6"].map(str::to_owned).to_vec();
    wait_health(&steer, "web-4in6", &entries6, Health::Down, limit)?;
    let drops_before = steer.status()?.drops.get("residency").copied().unwrap_or(0);
    let n = 400;
    let dropped = measure_with(ctx, topo::web(), &eu_from, n, Duration::from_millis(400))?;
    let drops_after = steer.status()?.drops.get("residency").copied().unwrap_or(0);
    let counted = drops_after - drops_before;
    ctx.say(format!(
        "eu-west down, europe -> web (drop): {} of {} answered, backends {}, {}; \
         steer's residency drops +{counted}",
        dropped.ok,
        dropped.sent,
        counts(&dropped.backends),
        dropped.errors_text()
    ));
    let open = measure(ctx, topo::web_4in6(), &eu_from, 2_000)?;
    let res_open = check_regions(
        ctx,
        "eu-west down, europe -> web-4in6 (fail-open)",
        &open,
        &[("eu-west", 100.0)],
    );
    let am = measure(ctx, topo::web(), &am_from, 1_000)?;
    let res_am = check_regions(
        ctx,
        "eu-west down, americas -> web",
        &am,
        &[("us-east", 100.0)],
    );
    let ex = explain(&steer, eu_from[0], topo::web())?;
    ctx.say(format!(
        "steer explain tcp {}:40000 {}:\n{}",
        eu_from[0],
        topo::web(),
        explain_lines(&ex, 16)
    ));

    for b in ["eu1", "eu2"] {
        ctx.lab.control(b, "recover")?;
    }
    wait_health(&steer, "web", &entries, Health::Up, limit)?;
    let back = measure(ctx, topo::web(), &eu_from, 1_000)?;
    let res_back = check_regions(
        ctx,
        "eu-west back, europe -> web",
        &back,
        &[("eu-west", 100.0)],
    );
    steer.stop()?;

    if dropped.ok != 0 {
        bail!(
            "residency violated or not failed closed: {} connections of the europe class answered \
             while eu-west was down (backends {})",
            dropped.ok,
            counts(&dropped.backends)
        );
    }
    if counted < n {
        bail!("steer counted {counted} residency drops for {n} dropped connections (at least one SYN each)");
    }
    res_open?;
    res_am?;
    res_back?;
    let outside: u64 = regions(&open.backends)
        .iter()
        .filter(|(r, _)| **r != "eu-west")
        .map(|(_, n)| n)
        .sum();
    Ok(format!(
        "eu-west down: europe -> web (drop) {}/{} answered, 0 elsewhere, {counted} residency drops; \
         europe -> web-4in6 (fail-open) {:.1}% on eu-west ({outside} elsewhere) over {}; americas unaffected",
        dropped.ok,
        dropped.sent,
        open.region_share("eu-west"),
        open.ok
    ))
}

/// One `client-live` line.
#[derive(serde::Deserialize)]
pub(super) struct LiveLine {
    /// Wall-clock µs since the Unix epoch when the connection started.
    pub(super) start_us: u64,
    /// The backend that answered (none: the request failed).
    pub(super) backend: Option<String>,
}

/// `client-live` at `rate` requests/s for `secs` from `from`; the lines.
pub(super) fn live(lab: &Lab, from: &[IpAddr], rate: f64, secs: u64) -> Result<Vec<LiveLine>> {
    client_live(lab, from, rate, 64, 2000, secs)
}

/// `client-live` to web at `rate` requests/s for `secs` from `from`, with
/// `concurrency` threads and a `timeout_ms` timeout; its JSON lines, read
/// as `T`.
pub(super) fn client_live<T: serde::de::DeserializeOwned>(
    lab: &Lab,
    from: &[IpAddr],
    rate: f64,
    concurrency: u32,
    timeout_ms: u64,
    secs: u64,
) -> Result<Vec<T>> {
    let mut args: Vec<String> = vec!["client-live".into(), "--to".into(), topo::web().to_string()];
    for f in from {
        args.push("--from".into());
        args.push(f.to_string());
    }
    args.extend([
        "--rate".into(),
        format!("{rate}"),
        "--concurrency".into(),
        concurrency.to_string(),
        "--timeout-ms".into(),
        timeout_ms.to_string(),
        "--duration-ms".into(),
        (secs * 1000).to_string(),
    ]);
    let out = lab::run_in(
        topo::NS_CLIENT,
        &lab.backend_bin().to_string_lossy(),
        &args,
        Duration::from_secs(secs + 10),
    )?;
    if !out.status.success() {
        bail!(
            "client-live failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let text = String::from_utf8_lossy(&out.stdout);
    Ok(text
        .lines()
        .filter_map(|l| serde_json::from_str::<T>(l).ok())
        .collect())
}

/// The capacity waterfall: eu-west takes at most 200 new flows/s from
/// this host (`max_new_flows_per_second = 200`); the europe class offers
/// 100, then 300, then 600 new connections/s. eu-west must hold its limit
/// (within ±10 % over the settled seconds of each step) and spill only
/// the excess to us-east; prints the step response second by second.
pub fn capacity(ctx: &Ctx) -> Result<String> {
    let limit = 200.0;
    let mut cfg = Cfg::lab()?;
    policy::make_geo(&mut cfg.t, &["web"])?;
    policy::set_region(
        &mut cfg.t,
        "eu-west",
        "max_new_flows_per_second",
        Value::Integer(limit as i64),
    )?;
    let path = ctx.file("capacity.toml");
    cfg.write(&path)?;
    ctx.say(format!(
        "web: geo; eu-west max_new_flows_per_second = {limit}; europe clients (order eu-west, us-east, ap-south) \
         offer 100, 300, 600 new connections/s"
    ));
    let _restore = Restore { lab: ctx.lab };
    let steer = Steer::start(ctx, &path)?;
    let from = policy::class_addrs(class("europe"), false);
    let steps: [(f64, u64); 3] = [(100.0, 6), (300.0, 8), (600.0, 8)];
    let mut lines = Vec::new();
    let mut bounds = Vec::new();
    for (rate, secs) in steps {
        ctx.check_time("capacity steps")?;
        let l = live(ctx.lab, &from, rate, secs)?;
        let first = l.iter().map(|x| x.start_us).min().unwrap_or(0);
        bounds.push((rate, first, secs));
        lines.extend(l);
    }
    steer.stop()?;
    let t0 = bounds.first().map_or(0, |b| b.1);
    // Per second since t0: offered, eu-west, us-east, ap-south, errors.
    let mut bins: BTreeMap<u64, [u64; 5]> = BTreeMap::new();
    for l in &lines {
        let s = l.start_us.saturating_sub(t0) / 1_000_000;
        let b = bins.entry(s).or_default();
        b[0] += 1;
        match l.backend.as_deref().and_then(policy::region_of) {
            Some("eu-west") => b[1] += 1,
            Some("us-east") => b[2] += 1,
            Some(_) => b[3] += 1,
            None => b[4] += 1,
        }
    }
    ctx.say("step response (new connections per second; offered = sent by the clients):");
    ctx.say("  t(s)  offered  eu-west  us-east  ap-south  errors");
    for (s, b) in &bins {
        ctx.say(format!(
            "  {s:>4}  {:>7}  {:>7}  {:>7}  {:>8}  {:>6}",
            b[0], b[1], b[2], b[3], b[4]
        ));
    }
    // Settled: each step's seconds from 3 s after its start to its end.
    let mut bad = Vec::new();
    let mut figures = Vec::new();
    for (rate, first, secs) in &bounds {
        let from_s = (first.saturating_sub(t0)) / 1_000_000 + 3;
        let to_s = (first.saturating_sub(t0)) / 1_000_000 + secs - 1;
        let sel: Vec<&[u64; 5]> = bins.range(from_s..to_s).map(|(_, b)| b).collect();
        if sel.is_empty() {
            bad.push(format!("step {rate}/s: no settled seconds"));
            continue;
        }
        let k = sel.len() as f64;
        let avg = |i: usize| sel.iter().map(|b| b[i] as f64).sum::<f64>() / k;
        let (off, eu, us, ap, err) = (avg(0), avg(1), avg(2), avg(3), avg(4));
        let want_eu = off.min(limit);
        figures.push(format!(
            "{rate:.0}/s offered: eu-west {eu:.0}/s, us-east {us:.0}/s (expected {want_eu:.0} / {:.0})",
            off - want_eu
        ));
        if (eu - want_eu).abs() > 0.10 * want_eu.max(limit) || ap > 0.0 || err > 0.0 {
            bad.push(format!(
                "step {rate}/s (settled {from_s}..{to_s} s): offered {off:.0}/s, eu-west {eu:.0}/s \
                 (expected {want_eu:.0} ± 10 %), us-east {us:.0}/s, ap-south {ap:.0}/s, errors {err:.1}/s"
            ));
        }
    }
    // Convergence: after the step to 300/s, the first second from which
    // eu-west's rate, averaged over 2 s (one second and the next: a single
    // second counts only ~200 flows, whose hash draw alone varies by ~4 %),
    // stays within ±10 % of its limit.
    if let Some((_, first, secs)) = bounds.get(1) {
        let s0 = first.saturating_sub(t0) / 1_000_000;
        let eu = |x: u64| bins.get(&x).map(|b| b[1] as f64);
        let mut conv = None;
        for s in s0..s0 + secs {
            let ok = (s..s0 + secs - 2).all(|x| match (eu(x), eu(x + 1)) {
                (Some(a), Some(b)) => ((a + b) / 2.0 - limit).abs() <= 0.10 * limit,
                _ => false,
            });
            if ok {
                conv = Some(s - s0);
                break;
            }
        }
        ctx.say(format!(
            "after the step 100 -> 300/s, eu-west held its limit ±10 % (2 s average) from second {} on",
            conv.map_or("never".to_owned(), |c| c.to_string())
        ));
        match conv {
            Some(c) if c <= 3 => figures.push(format!("converged within {c} s")),
            _ => bad.push(format!(
                "eu-west did not settle within 3 s of the step to 300/s ({conv:?})"
            )),
        }
    }
    if !bad.is_empty() {
        bail!("{}", bad.join("; "));
    }
    Ok(figures.join("; "))
}

/// A latency re-ranking: web ranks regions by measured RTT (dwell 3 s).
/// All answer at once, so the configured order [eu-west, us-east,
/// ap-south] holds. Then eu-west's health endpoints answer 80 ms late and
/// ap-south's 30 ms late (the lab's latency, emulated in the backends):
/// after the EWMA has moved and the dwell has passed, new connections go
/// to us-east, the new first region.
pub fn latency(ctx: &Ctx) -> Result<String> {
    let dwell = Duration::from_secs(3);
    let mut cfg = Cfg::lab()?;
    policy::set_service(&mut cfg.t, "web", "policy", "latency")?;
    policy::set_service(&mut cfg.t, "web", "latency_dwell", "3s")?;
    policy::set_service(&mut cfg.t, "web", "latency_margin", Value::Integer(20))?;
    policy::set_service(&mut cfg.t, "web", "latency_margin_min", "5ms")?;
    let path = ctx.file("latency.toml");
    cfg.write(&path)?;
    ctx.say(
        "web: policy latency (configured order eu-west, us-east, ap-south), margin 20 % and 5 ms, dwell 3 s",
    );
    let _restore = Restore { lab: ctx.lab };
    let steer = Steer::start(ctx, &path)?;
    let from = v4_all();
    // RTTs exist after a few probes; all are near 0, so no re-ranking.
    thread::sleep(Duration::from_secs(3));
    let t = measure(ctx, topo::web(), &from, 1_000)?;
    check_regions(ctx, "no delay", &t, &[("eu-west", 100.0)])?;
    let ex0 = explain(&steer, from[0], topo::web())?;

    let t0 = Instant::now();
    for (h, ms) in [("eu1", 80), ("eu2", 80), ("ap1", 30), ("ap2", 30)] {
        ctx.lab.control(h, &format!("delay={ms}"))?;
    }
    ctx.say("eu-west's health endpoints now answer 80 ms late, ap-south's 30 ms");
    let eu = lab_region_hosts("eu-west");
    let bound = Duration::from_secs(15);
    let (gone, errs) = time_until_gone(ctx, t0, topo::web(), &from, &eu, bound)?;
    ctx.say(format!(
        "new connections left eu-west {:.2}s after the delay ({errs} errors while probing); the dwell is {:.0}s",
        gone.as_secs_f64(),
        dwell.as_secs_f64()
    ));
    let t2 = measure(ctx, topo::web(), &from, 2_000)?;
    let res = check_regions(ctx, "re-ranked", &t2, &[("us-east", 100.0)]);
    let ex = explain(&steer, from[0], topo::web())?;
    ctx.say(format!(
        "steer explain before:\n{}\nsteer explain after:\n{}",
        explain_lines(&ex0, 30),
        explain_lines(&ex, 30)
    ));
    steer.stop()?;
    res?;
    if gone < dwell {
        bail!(
            "the ranking changed after {:.2}s, before the {:.0}s dwell",
            gone.as_secs_f64(),
            dwell.as_secs_f64()
        );
    }
    Ok(format!(
        "eu-west +80 ms, ap-south +30 ms: new connections moved to us-east {:.2}s later (dwell {:.0}s), \
         then {:.1}% us-east over {} connections",
        gone.as_secs_f64(),
        dwell.as_secs_f64(),
        t2.region_share("us-east"),
        t2.ok
    ))
}
