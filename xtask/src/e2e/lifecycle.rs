//! What happens to traffic when steer itself changes: reloads (valid,
//! repeated, invalid), SIGKILL and restart, and malformed traffic.
use std::{
    collections::BTreeMap,
    fs,
    sync::atomic::{AtomicBool, Ordering},
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};

use super::{
    config::Cfg,
    daemon::{self, Steer},
    traffic::{self, counts, http_loop, sum_batches, Batch, UdpReport, UdpStream},
    Ctx,
};
use crate::lab::{self, topo, Load, StreamReport, Streams};

/// `a` after the reload both reload scenarios make: web's weights
/// 50/150/100/250 on eu1, eu2, us1, us2, and ap1 (300) and ap2 (100) added.
pub(super) fn with_ap_added(a: &Cfg) -> Result<Cfg> {
    let mut b = a.clone();
    b.set_service_backends("web", &["eu1", "eu2", "us1", "us2", "ap1", "ap2"])?;
    for (n, w) in [
        ("eu1", 50),
        ("eu2", 150),
        ("us1", 100),
        ("us2", 250),
        ("ap1", 300),
        ("ap2", 100),
    ] {
        b.set_weight(n, w)?;
    }
    Ok(b)
}

/// How long the shortest stream of `r` lasted, in milliseconds.
pub(super) fn shortest_ms(r: &StreamReport) -> u64 {
    r.results.iter().map(|x| x.elapsed_ms).min().unwrap_or(0)
}

/// Why new connections after [`with_ap_added`]'s reload show it did not
/// take effect (errors, or ap1 or ap2 never chosen), if they do.
pub(super) fn ap_reload_missing(fresh: &lab::LoadReport) -> Option<String> {
    (fresh.errors > 0 || !fresh.backends.contains_key("ap1") || !fresh.backends.contains_key("ap2"))
        .then(|| {
            let failed: Vec<String> = fresh
                .results
                .iter()
                .filter_map(|r| {
                    r.error
                        .as_ref()
                        .map(|e| format!("{} ({e})", r.from.as_deref().unwrap_or("?")))
                })
                .collect();
            format!(
                "the reload did not take effect for new connections: {} errors ({}; flows: {}), \
                 backends {}",
                fresh.errors,
                counts(&fresh.errors_by_kind),
                if failed.is_empty() {
                    "-".into()
                } else {
                    failed.join(", ")
                },
                counts(&fresh.backends)
            )
        })
}

/// Streams that did not finish complete and intact.
pub(super) fn broken_streams(r: &StreamReport) -> Vec<String> {
    r.results
        .iter()
        .filter(|x| {
            !(x.ok && x.checksum_ok && x.pattern_ok && x.error.is_none() && x.received == x.bytes)
        })
        .map(|x| {
            format!(
                "{} on {}: {}/{} bytes, checksum_ok {}, pattern_ok {}, first mismatch {:?}, error {:?}",
                x.from.as_deref().unwrap_or("?"),
                x.backend.as_deref().unwrap_or("?"),
                x.received,
                x.bytes,
                x.checksum_ok,
                x.pattern_ok,
                x.first_mismatch,
                x.error
            )
        })
        .collect()
}

pub(super) fn stream_line(r: &StreamReport) -> String {
    let bytes: u64 = r.results.iter().map(|x| x.received).sum();
    let resets = r
        .results
        .iter()
        .filter(|x| x.error.as_deref().is_some_and(|e| e.contains("reset")))
        .count();
    let corrupt = r
        .results
        .iter()
        .filter(|x| !x.checksum_ok || !x.pattern_ok)
        .count();
    let lost: u64 = r
        .results
        .iter()
        .map(|x| x.bytes.saturating_sub(x.received))
        .sum();
    format!(
        "{}/{} streams complete, {bytes} bytes received, {lost} bytes missing, {resets} resets, \
         {corrupt} with a bad checksum or pattern; by backend {}",
        r.ok,
        r.streams,
        counts(&r.backends)
    )
}

/// Waits until steer has counted `n` new flows on `svc`.
pub(super) fn wait_new_flows(steer: &Steer, svc: &str, n: u64, within: Duration) -> Result<()> {
    let deadline = Instant::now() + within;
    loop {
        let f: u64 = daemon::new_flows(&steer.status()?, svc)?.values().sum();
        if f >= n {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("steer counted only {f} new flows on {svc} within {within:?} (expected {n})");
        }
        thread::sleep(Duration::from_millis(50));
    }
}

/// Long TCP streams run while a reload changes weights and adds backends:
/// no reset, no lost or corrupted byte (checksums).
pub fn reload_keeps_connections(ctx: &Ctx) -> Result<String> {
    let mut a = Cfg::lab()?;
    a.set_service_backends("web", &["eu1", "eu2", "us1", "us2"])?;
    let b = with_ap_added(&a)?;
    let path = ctx.file("reload-streams.toml");
    a.write(&path)?;
    b.write(&ctx.file("reload-streams-after.toml"))?;
    let steer = Steer::start(ctx, &path)?;

    let mut s = Streams::new(topo::web());
    s.from = topo::client_addrs(false);
    s.streams = 32;
    s.bytes = 384 * 1024;
    s.chunk = 4096;
    s.interval = Duration::from_millis(60);
    s.timeout = Duration::from_secs(5);
    let t0 = Instant::now();
    let running = ctx.lab.start_streams(&s)?;
    wait_new_flows(&steer, "web", u64::from(s.streams), Duration::from_secs(5))?;
    let established = t0.elapsed();
    thread::sleep(Duration::from_millis(500));
    b.write(&path)?;
    let msg = steer.reload()?;
    let reloaded = t0.elapsed();
    ctx.say(format!(
        "{} streams of {} KiB (~{:.1}s each) to web on eu1,eu2,us1,us2 open at {:.2}s; \
         reload at {:.2}s (weights 50/150/100/250 + ap1 300, ap2 100): {}",
        s.streams,
        s.bytes / 1024,
        s.duration().as_secs_f64(),
        established.as_secs_f64(),
        reloaded.as_secs_f64(),
        msg.trim()
    ));
    let st = steer.status()?;
    let now: Vec<String> = daemon::service(&st, "web")?
        .backends
        .iter()
        .map(|x| format!("{}={}", x.name, x.weight))
        .collect();
    let fresh = ctx.lab.http(
        &Load::new(topo::web())
            .from(topo::client_addrs(false))
            .requests(300)
            .per_request()
            .concurrency(32)
            .timeout(Duration::from_secs(3)),
    )?;
    ctx.say(format!(
        "after the reload: web = {}; 300 new connections: {} answered, backends {}",
        now.join(" "),
        fresh.ok,
        counts(&fresh.backends)
    ));
    let report = running.wait()?;
    let shortest = shortest_ms(&report);
    ctx.say(format!(
        "{}; shortest stream lasted {:.2}s",
        stream_line(&report),
        shortest as f64 / 1000.0
    ));
    steer.stop()?;

    let mut problems = broken_streams(&report);
    if report.ok != u64::from(s.streams) {
        problems.push(format!("{} of {} streams ok", report.ok, s.streams));
    }
    if (shortest as u128) <= reloaded.as_millis() {
        problems.push(format!(
            "a stream ended ({shortest} ms) before the reload was done ({} ms): not across it",
            reloaded.as_millis()
        ));
    }
    problems.extend(ap_reload_missing(&fresh));
    if !problems.is_empty() {
        bail!("{}", problems.join("; "));
    }
    let bytes: u64 = report.results.iter().map(|x| x.received).sum();
    Ok(format!(
        "{} streams across a reload (weights changed, 2 backends added): 0 resets, 0 of {bytes} bytes \
         lost or corrupted (checksums and byte pattern verified)",
        report.ok
    ))
}

/// Sums a counter over the backends' control state.
fn backend_sum(ctx: &Ctx, f: impl Fn(&serde_json::Value) -> u64) -> Result<u64> {
    let mut n = 0;
    for b in &topo::BACKENDS {
        n += f(&daemon::backend_state(ctx, b.name)?);
    }
    Ok(n)
}

/// A continuous UDP stream through the echo VIP while steer reloads 20
/// times (alternating weights and whether ap2 serves): 0 datagrams lost.
pub fn reload_under_load(ctx: &Ctx) -> Result<String> {
    const RELOADS: usize = 20;
    let x = Cfg::lab()?;
    let mut y = x.clone();
    y.set_service_backends("echo", &["eu1", "eu2", "us1", "us2", "ap1"])?;
    y.set_weight("eu1", 200)?;
    y.set_weight("us2", 50)?;
    let path = ctx.file("reload-udp.toml");
    x.write(&path)?;
    y.write(&ctx.file("reload-udp-b.toml"))?;
    let steer = Steer::start(ctx, &path)?;

    let udp_before = backend_sum(ctx, |s| s["udp_packets"].as_u64().unwrap_or(0))?;
    let decap_before = backend_sum(ctx, |s| s["decap"]["ipip"].as_u64().unwrap_or(0))?;
    let stream = UdpStream {
        to: topo::echo(),
        from: topo::client_addrs(false),
        flows: 20,
        rate: 100,
        duration: Duration::from_secs(11),
        linger: Duration::from_millis(1500),
    };
    let bg = stream.start(ctx.lab)?;
    let t0 = Instant::now();
    thread::sleep(Duration::from_millis(1500));
    let mut reload_at = Vec::new();
    let mut took = Vec::new();
    let mut failure = None;
    for i in 0..RELOADS {
        let cfg = if i % 2 == 0 { &y } else { &x };
        cfg.write(&path)?;
        let t = Instant::now();
        let at = traffic::unix_ms();
        match steer.reload() {
            Ok(_) => {}
            Err(e) => {
                failure = Some(format!("reload {}: {e:#}", i + 1));
                break;
            }
        }
        took.push(t.elapsed());
        reload_at.push(at);
        thread::sleep(Duration::from_millis(250));
    }
    let reloads_done = t0.elapsed();
    let report = UdpReport::from_json(bg.wait()?);
    let st = steer.status()?;
    let udp_after = backend_sum(ctx, |s| s["udp_packets"].as_u64().unwrap_or(0))?;
    let decap_after = backend_sum(ctx, |s| s["decap"]["ipip"].as_u64().unwrap_or(0))?;
    let echo = daemon::service(&st, "echo")?;
    let max_ms = took.iter().max().map_or(0, Duration::as_millis);
    ctx.say(format!(
        "{} reloads between 1.5s and {:.1}s of an {:.0}s stream ({} flows x {}/s); each took <= {max_ms} ms; \
         steer reports {} reloads, {} failures",
        reload_at.len(),
        reloads_done.as_secs_f64(),
        stream.duration.as_secs_f64(),
        stream.flows,
        stream.rate,
        st.reloads,
        st.reload_failures
    ));
    ctx.say(report.line());
    ctx.say(format!(
        "on the way: steer forwarded {} packets to echo; backends decapsulated {} IPIP packets and \
         their echo sockets received {} datagrams",
        echo.packets,
        decap_after.saturating_sub(decap_before),
        udp_after.saturating_sub(udp_before)
    ));
    if report.lost > 0 {
        let near: Vec<String> = report
            .lost_at
            .iter()
            .take(20)
            .map(|l| {
                let nearest = reload_at
                    .iter()
                    .map(|r| *l as i64 - *r as i64)
                    .min_by_key(|d| d.abs())
                    .unwrap_or(0);
                format!("{nearest:+} ms")
            })
            .collect();
        ctx.say(format!(
            "lost datagrams were sent at these offsets from the nearest reload: {}",
            near.join(", ")
        ));
    }
    steer.stop()?;

    if let Some(f) = failure {
        bail!("{f}");
    }
    if reloads_done > stream.duration {
        bail!(
            "the reloads took until {:.1}s, past the end of the stream",
            reloads_done.as_secs_f64()
        );
    }
    if st.reloads != RELOADS as u64 {
        bail!("steer counted {} reloads, not {RELOADS}", st.reloads);
    }
    report.check_clean(&format!("across {RELOADS} reloads"))?;
    Ok(format!(
        "{} datagrams in {} flows across {RELOADS} reloads: {} echoed, 0 lost ({} flow moves between backends)",
        report.sent, stream.flows, report.received, report.moves
    ))
}

/// SIGKILL under load: forwarding goes on (requests succeed during the
/// gap, streams and UDP flows survive); a new steer adopts the pinned
/// state and everything is still fine.
pub fn daemon_killed(ctx: &Ctx) -> Result<String> {
    let cfg = Cfg::lab()?;
    let path = ctx.file("killed.toml");
    cfg.write(&path)?;
    let mut steer = Steer::start(ctx, &path)?;
    let v4 = topo::client_addrs(false);
    let mut s = Streams::new(topo::web());
    s.from = v4.clone();
    s.streams = 24;
    s.bytes = 640 * 1024;
    s.chunk = 4096;
    s.interval = Duration::from_millis(60);
    s.timeout = Duration::from_secs(5);
    let udp = UdpStream {
        to: topo::echo(),
        from: v4[..10].to_vec(),
        flows: 10,
        rate: 100,
        duration: Duration::from_secs(10),
        linger: Duration::from_millis(1500),
    };
    let probe = Load::new(topo::web())
        .from(v4.clone())
        .requests(30)
        .concurrency(15)
        .timeout(Duration::from_secs(1));
    let t0 = Instant::now();
    let streams = ctx.lab.start_streams(&s)?;
    let udp_bg = udp.start(ctx.lab)?;
    let stop = AtomicBool::new(false);

    struct Timeline {
        kill: Duration,
        restart: Duration,
        up: Duration,
        prog_before: Option<(String, u32)>,
        prog_gap: Option<(String, u32)>,
        pins_gap: usize,
        adopted: bool,
        took_over: bool,
    }
    let (timeline, batches): (Result<Timeline>, Vec<Batch>) = thread::scope(|sc| {
        let h = sc.spawn(|| http_loop(ctx.lab, &probe, t0, &stop));
        let r = (|| -> Result<Timeline> {
            thread::sleep(Duration::from_millis(1500));
            let prog_before = lab::xdp_on_edge();
            let kill = t0.elapsed();
            steer.kill9()?;
            thread::sleep(Duration::from_millis(200));
            let prog_gap = lab::xdp_on_edge();
            let pins_gap = fs::read_dir(lab::PIN_DIR).map_or(0, |d| d.count());
            thread::sleep(Duration::from_millis(2800));
            let restart = t0.elapsed();
            steer.restart()?;
            let up = t0.elapsed();
            let log = steer.this_run_log();
            let adopted = log.contains("adopted the data plane of a previous run");
            let took_over = log.contains("took over the pinned XDP link");
            thread::sleep(Duration::from_millis(1500));
            Ok(Timeline {
                kill,
                restart,
                up,
                prog_before,
                prog_gap,
                pins_gap,
                adopted,
                took_over,
            })
        })();
        stop.store(true, Ordering::Release);
        let b = h.join().unwrap_or_default();
        (r, b)
    });
    let stream_report = streams.wait();
    let udp_report = udp_bg.wait().map(UdpReport::from_json);
    let tl = timeline?;
    let stream_report = stream_report?;
    let udp_report = udp_report?;
    let alive = steer.running();
    let status_ok = steer.status().is_ok();

    let gap: Vec<&Batch> = batches
        .iter()
        .filter(|b| b.start >= tl.kill && b.end <= tl.restart)
        .collect();
    let restarting: Vec<&Batch> = batches
        .iter()
        .filter(|b| b.end > tl.restart && b.start < tl.up)
        .collect();
    let (gap_req, gap_ok, _) = sum_batches(&gap.iter().map(|b| (*b).clone()).collect::<Vec<_>>());
    let (rs_req, rs_ok, _) =
        sum_batches(&restarting.iter().map(|b| (*b).clone()).collect::<Vec<_>>());
    let (all_req, all_ok, all_err) = sum_batches(&batches);
    ctx.say(format!(
        "killed at {:.2}s; XDP program before {:?}, after the kill {:?}; {} pins remained",
        tl.kill.as_secs_f64(),
        tl.prog_before,
        tl.prog_gap,
        tl.pins_gap
    ));
    ctx.say(format!(
        "restarted at {:.2}s, forwarding again (per its log) at {:.2}s; adopted pinned state: {}, \
         took over the pinned link: {}",
        tl.restart.as_secs_f64(),
        tl.up.as_secs_f64(),
        tl.adopted,
        tl.took_over
    ));
    ctx.say(format!(
        "requests (1 s timeout, new connection each): {gap_ok}/{gap_req} ok with no daemon, \
         {rs_ok}/{rs_req} ok during the restart, {all_ok}/{all_req} ok overall{}",
        if all_err.is_empty() {
            String::new()
        } else {
            format!("; errors {}", counts(&all_err))
        }
    ));
    ctx.say(format!("streams: {}", stream_line(&stream_report)));
    ctx.say(format!("udp: {}", udp_report.line()));
    if alive {
        steer.stop()?;
    }

    let mut problems = Vec::new();
    if tl.prog_gap.is_none() || tl.prog_gap != tl.prog_before {
        problems.push(format!(
            "the XDP program did not stay attached: before {:?}, after the kill {:?}",
            tl.prog_before, tl.prog_gap
        ));
    }
    if gap_req == 0 {
        problems.push("no request batch ran entirely in the gap".into());
    }
    if all_ok != all_req {
        problems.push(format!(
            "{} of {all_req} requests failed ({})",
            all_req - all_ok,
            counts(&all_err)
        ));
    }
    if !tl.adopted || !tl.took_over {
        problems.push(format!(
            "the new steer did not adopt (adopted {}, took over link {})",
            tl.adopted, tl.took_over
        ));
    }
    let broken = broken_streams(&stream_report);
    if !broken.is_empty() || stream_report.ok != u64::from(s.streams) {
        problems.push(format!("streams: {}", broken.join("; ")));
    }
    if let Err(e) = udp_report.check_clean("udp flows across the kill and restart") {
        problems.push(format!("{e:#}"));
    }
    if !alive || !status_ok {
        problems.push(format!(
            "the restarted steer is not healthy (running {alive}, status answers {status_ok})"
        ));
    }
    if !problems.is_empty() {
        bail!("{}", problems.join("; "));
    }
    Ok(format!(
        "{gap_ok}/{gap_req} requests ok while no daemon ran ({:.1}s gap), {all_ok}/{all_req} overall; \
         {} streams intact; {} datagrams, 0 lost; restart adopted the pinned state",
        (tl.restart - tl.kill).as_secs_f64(),
        stream_report.ok,
        udp_report.sent
    ))
}

/// An invalid config: `steer reload` exits non-zero and prints every
/// error, the log has them, and traffic flows per the old config.
pub fn invalid_reload(ctx: &Ctx) -> Result<String> {
    let good = Cfg::lab()?;
    let path = ctx.file("invalid.toml");
    good.write(&path)?;
    let steer = Steer::start(ctx, &path)?;
    let load = Load::new(topo::web())
        .from(topo::client_addrs(false))
        .requests(600)
        .concurrency(64)
        .timeout(Duration::from_secs(3));
    let base = ctx.lab.http(&load)?;
    ctx.say(format!(
        "before: {}/{} answered, backends {}",
        base.ok,
        base.requests,
        counts(&base.backends)
    ));

    // A valid-looking change (eu1 leaves web) plus three errors.
    let mut broken = good.clone();
    let web_backends = ["eu2", "us1", "us2", "ap1", "ap2", "no-such-backend"];
    broken.set_service_backends("web", &web_backends)?;
    broken.set_weight("eu2", 70_000)?;
    broken.set_check_int("health", "fall", 0)?;
    let expected_paths = [
        format!("backends[{}].weight", broken.index_of("backends", "eu2")?),
        format!(
            "services[{}].backends[{}]",
            broken.index_of("services", "web")?,
            web_backends.len() - 1
        ),
        format!(
            "health_checks[{}].fall",
            broken.index_of("health_checks", "health")?
        ),
    ];
    broken.write(&path)?;
    let log_before = steer.log_text().len();
    let out = steer.cli(&["reload"])?;
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    ctx.say(format!(
        "`steer reload --socket {}` with 3 errors in the file: {}; it printed:\n{}",
        daemon::CONTROL_SOCKET,
        out.status,
        stderr.trim_end()
    ));
    let rejected_log = |from: usize| -> Vec<String> {
        steer
            .log_text()
            .get(from..)
            .unwrap_or("")
            .lines()
            .filter(|l| l.contains("reload rejected"))
            .map(str::to_owned)
            .collect()
    };
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut log_lines = rejected_log(log_before);
    while log_lines.len() < expected_paths.len() && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(50));
        log_lines = rejected_log(log_before);
    }
    ctx.say(format!("steer's log:\n{}", log_lines.join("\n")));
    // The same through SIGHUP.
    let log_mid = steer.log_text().len();
    steer.signal(libc::SIGHUP)?;
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut hup_lines = rejected_log(log_mid);
    while hup_lines.len() < expected_paths.len() && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(50));
        hup_lines = rejected_log(log_mid);
    }
    ctx.say(format!(
        "SIGHUP with the same file: {} error lines in the log",
        hup_lines.len()
    ));
    let st = steer.status()?;
    let web_now: Vec<String> = daemon::service(&st, "web")?
        .backends
        .iter()
        .map(|b| b.name.clone())
        .collect();
    let after = ctx.lab.http(&load)?;
    ctx.say(format!(
        "after: status reload_failures={} reloads={} generation={} web backends [{}]; {}/{} answered, backends {}",
        st.reload_failures,
        st.reloads,
        st.generation,
        web_now.join(", "),
        after.ok,
        after.requests,
        counts(&after.backends)
    ));

    // The same change without the errors does apply: the rejection was
    // not a partial apply.
    let mut fixed = good.clone();
    fixed.set_service_backends("web", &web_backends[..5])?;
    fixed.write(&path)?;
    let msg = steer.reload()?;
    let applied = ctx.lab.http(&load)?;
    ctx.say(format!(
        "valid config without eu1: {}; {}/{} answered, backends {}",
        msg.trim(),
        applied.ok,
        applied.requests,
        counts(&applied.backends)
    ));
    steer.stop()?;

    let mut problems = Vec::new();
    if out.status.success() {
        problems.push("steer reload exited 0".to_owned());
    }
    for p in &expected_paths {
        if !stderr.contains(p.as_str()) {
            problems.push(format!("steer reload did not print the error at {p}"));
        }
        if !log_lines.iter().any(|l| l.contains(p.as_str())) {
            problems.push(format!("the log has no error at {p}"));
        }
        if !hup_lines.iter().any(|l| l.contains(p.as_str())) {
            problems.push(format!("after SIGHUP the log has no error at {p}"));
        }
    }
    if st.reload_failures != 2 || st.last_reload_error.is_none() {
        problems.push(format!(
            "status: reload_failures {}, last_reload_error {:?}",
            st.reload_failures, st.last_reload_error
        ));
    }
    if !web_now.iter().any(|b| b == "eu1") {
        problems.push("web lost eu1: the invalid config was applied".into());
    }
    if after.errors > 0 || after.backends.get("eu1").copied().unwrap_or(0) == 0 {
        problems.push(format!(
            "traffic after the rejected reload: {} errors, backends {} (eu1 should still serve)",
            after.errors,
            counts(&after.backends)
        ));
    }
    if base.errors > 0 || applied.errors > 0 || applied.backends.contains_key("eu1") {
        problems.push(format!(
            "control runs: before {} errors; valid reload {} errors, backends {}",
            base.errors,
            applied.errors,
            counts(&applied.backends)
        ));
    }
    if !problems.is_empty() {
        bail!("{}", problems.join("; "));
    }
    Ok(format!(
        "rejected (exit {}), all 3 errors printed and logged ({}), also on SIGHUP; {}/{} requests \
         then served per the old config (eu1 still in web)",
        out.status.code().unwrap_or(-1),
        expected_paths.join(", "),
        after.ok,
        after.requests
    ))
}

/// The documented `steer reload --config FILE` (docs/operations.md,
/// "Reload") with an invalid FILE: it must exit 1 and print the errors,
/// and the daemon must log them and count the failure; `steer status
/// --config FILE` must keep working meanwhile.
pub fn reload_cli_broken_config(ctx: &Ctx) -> Result<String> {
    let good = Cfg::lab()?;
    let path = ctx.file("cli-broken.toml");
    good.write(&path)?;
    let steer = Steer::start(ctx, &path)?;
    let mut broken = good.clone();
    broken.set_weight("eu2", 70_000)?;
    broken.write(&path)?;
    let err_path = format!("backends[{}].weight", broken.index_of("backends", "eu2")?);
    let log_before = steer.log_text().len();
    let p = path.to_string_lossy().into_owned();
    let reload = steer.cli_raw(&["reload"], &["--config", &p])?;
    let status = steer.cli_raw(&["status", "--json"], &["--config", &p])?;
    thread::sleep(Duration::from_millis(500));
    let logged = steer
        .log_text()
        .get(log_before..)
        .unwrap_or("")
        .lines()
        .any(|l| l.contains("reload rejected") && l.contains(&err_path));
    let st = steer.status()?;
    ctx.say(format!(
        "`steer reload --config FILE` (FILE invalid): {}; stderr: {}",
        reload.status,
        String::from_utf8_lossy(&reload.stderr).trim()
    ));
    ctx.say(format!(
        "daemon log has the error: {logged}; daemon's reload_failures: {}",
        st.reload_failures
    ));
    ctx.say(format!(
        "`steer status --config FILE` meanwhile: {}; stderr: {}",
        status.status,
        String::from_utf8_lossy(&status.stderr).trim()
    ));
    good.write(&path)?;
    steer.stop()?;

    let printed = String::from_utf8_lossy(&reload.stderr).contains(&err_path);
    let mut problems = Vec::new();
    if reload.status.success() || !printed {
        problems.push(format!(
            "reload exit {}, printed the error: {printed}",
            reload.status
        ));
    }
    if !logged || st.reload_failures != 1 {
        problems.push(format!(
            "the daemon never saw the reload (log has the error: {logged}, reload_failures {}): \
             the CLI validated FILE to find control.socket and stopped there, so the documented \
             log line and steer_reload_failures_total do not happen",
            st.reload_failures
        ));
    }
    if !status.status.success() {
        problems.push(format!(
            "`steer status --config FILE` fails while FILE is invalid ({})",
            status.status
        ));
    }
    if !problems.is_empty() {
        bail!("steer CLI: {}", problems.join("; "));
    }
    Ok(
        "`steer reload --config FILE` reached the daemon, which logged and counted the error"
            .into(),
    )
}

/// What steer does with each kind of frame `client-garbage` sends
/// (docs/architecture.md "The per-packet path" 3-4, and the drop reasons
/// in steer-common/src/maps.rs): the drop reason, or `None` for passed to
/// the kernel untouched (not addressed to a VIP, or not even readable up
/// to the destination address).
const GARBAGE: [(&str, Option<&str>); 24] = [
    ("v4-bad-version", Some("malformed_l3")),
    ("v4-ihl-below-5", Some("malformed_l3")),
    ("v4-total-below-header", Some("malformed_l3")),
    ("v4-total-beyond-frame", Some("truncated_l3")),
    ("v4-fragment-mf", Some("fragment")),
    ("v4-fragment-offset", Some("fragment")),
    ("v4-tcp-truncated", Some("truncated_l4")),
    ("v4-udp-truncated", Some("truncated_l4")),
    ("v4-icmp-bad-quote", Some("bad_icmp")),
    ("v4-too-short", None),
    ("v4-malformed-not-vip", None),
    ("v6-bad-version", Some("malformed_l3")),
    ("v6-payload-beyond-frame", Some("truncated_l3")),
    ("v6-fragment", Some("fragment")),
    ("v6-ext-past-end", Some("ipv6_ext")),
    ("v6-too-many-ext", Some("ipv6_ext")),
    ("v6-tcp-truncated", Some("truncated_l4")),
    ("v6-icmp-bad-quote", Some("bad_icmp")),
    ("v6-too-short", None),
    ("random-not-ip", None),
    ("random-ip-not-vip", None),
    ("random-v4-vip-bad-version", Some("malformed_l3")),
    ("random-v6-vip-bad-version", Some("malformed_l3")),
    ("random-v4-vip-truncated", Some("truncated_l3")),
];

/// Frames of each kind.
const GARBAGE_COUNT: u32 = 40;

pub(super) fn drops(m: &BTreeMap<String, f64>) -> BTreeMap<String, u64> {
    m.iter()
        .filter_map(|(k, v)| {
            let reason = k
                .strip_prefix("steer_drops_total{reason=\"")?
                .strip_suffix("\"}")?;
            Some((reason.to_owned(), *v as u64))
        })
        .collect()
}

/// Bridge netfilter's sysctls (per network namespace).
const BRIDGE_NF: [&str; 3] = [
    "net/bridge/bridge-nf-call-iptables",
    "net/bridge/bridge-nf-call-ip6tables",
    "net/bridge/bridge-nf-call-arptables",
];

/// Bridge netfilter switched off in the lab's switch namespace while it
/// lives; the old values come back on drop.
///
/// With `CONFIG_BRIDGE_NETFILTER` and these sysctls at 1 (the default in a
/// new namespace), the kernel validates the IPv4/IPv6 header of every
/// bridged frame (`br_validate_ipv4/ipv6`) and drops the malformed ones on
/// the bridge, so they never reach the edge. A real switch does not; the
/// lab does not switch it off yet (xtask/src/lab/topo.rs).
struct BridgeNfOff {
    restore: Vec<(&'static str, String)>,
}

impl BridgeNfOff {
    fn new() -> Result<BridgeNfOff> {
        let mut restore = Vec::new();
        for key in BRIDGE_NF {
            let now = lab::sys::in_netns(topo::NS_NET, || {
                Ok(fs::read_to_string(std::path::Path::new("/proc/sys").join(key)).ok())
            })?;
            if let Some(v) = now.map(|v| v.trim().to_owned()) {
                if v != "0" {
                    lab::sys::sysctl(topo::NS_NET, key, "0")?;
                    restore.push((key, v));
                }
            }
        }
        Ok(BridgeNfOff { restore })
    }
}

impl Drop for BridgeNfOff {
    fn drop(&mut self) {
        for (key, v) in &self.restore {
            let _ = lab::sys::sysctl(topo::NS_NET, key, v);
        }
    }
}

/// Malformed and random frames at the edge while good traffic runs: the
/// good traffic sees no error, steer keeps running, and its drop counters
/// went up by exactly what was addressed to a VIP, per reason.
pub fn bad_traffic(ctx: &Ctx) -> Result<String> {
    let cfg = Cfg::lab()?;
    let path = ctx.file("bad-traffic.toml");
    cfg.write(&path)?;
    let mut steer = Steer::start(ctx, &path)?;
    let nf = BridgeNfOff::new()?;
    if !nf.restore.is_empty() {
        ctx.say(format!(
            "bridge netfilter was on in {} ({}): switched off for this scenario, or the bridge \
             would drop the malformed IP frames before they reach the edge",
            topo::NS_NET,
            nf.restore
                .iter()
                .map(|(k, v)| format!("{}={v}", k.rsplit('/').next().unwrap_or(k)))
                .collect::<Vec<_>>()
                .join(" ")
        ));
    }
    let before = drops(&steer.metrics()?);
    let v4 = topo::client_addrs(false);
    let v6 = topo::client_addrs(true);
    let udp = UdpStream {
        to: topo::echo6(),
        from: v6[..8].to_vec(),
        flows: 8,
        rate: 100,
        duration: Duration::from_secs(4),
        linger: Duration::from_millis(1500),
    };
    let probe = Load::new(topo::web())
        .from(v4)
        .requests(30)
        .concurrency(15)
        .timeout(Duration::from_secs(2));
    let args: Vec<String> = [
        "client-garbage",
        "--iface",
        topo::CLIENT_IF,
        "--dst-mac",
        topo::EDGE_MAC,
        "--src-mac",
        topo::CLIENT_MAC,
        "--src4",
        &topo::client_main_v4().to_string(),
        "--src6",
        &topo::client_main_v6().to_string(),
        "--vip4",
        &topo::VIP_WEB.to_string(),
        "--vip6",
        &topo::VIP6.to_string(),
        "--other4",
        "198.51.100.99",
        "--other6",
        "2001:db8:c::99",
        "--count",
        &GARBAGE_COUNT.to_string(),
        "--seed",
        "20240601",
        "--gap-us",
        "100",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    let t0 = Instant::now();
    let udp_bg = udp.start(ctx.lab)?;
    let stop = AtomicBool::new(false);
    let (garbage, batches) = thread::scope(|sc| {
        let h = sc.spawn(|| http_loop(ctx.lab, &probe, t0, &stop));
        thread::sleep(Duration::from_millis(700));
        let g = lab::run_in(
            topo::NS_CLIENT,
            &ctx.lab.backend_bin().to_string_lossy(),
            &args,
            Duration::from_secs(30),
        );
        thread::sleep(Duration::from_millis(1500));
        stop.store(true, Ordering::Release);
        (g, h.join().unwrap_or_default())
    });
    let udp_report = udp_bg.wait().map(UdpReport::from_json);
    let garbage = garbage?;
    if !garbage.status.success() {
        bail!(
            "client-garbage failed: {}",
            String::from_utf8_lossy(&garbage.stderr).trim()
        );
    }
    let g: serde_json::Value =
        serde_json::from_slice(&garbage.stdout).context("client-garbage printed no report")?;
    let udp_report = udp_report?;
    thread::sleep(Duration::from_millis(300));
    let after = drops(&steer.metrics()?);
    let alive = steer.running();
    let status_ok = steer.status().is_ok();

    let sent: BTreeMap<String, u64> = serde_json::from_value(g["sent"].clone()).unwrap_or_default();
    let mut expected: BTreeMap<String, u64> = BTreeMap::new();
    let mut passed = 0u64;
    let mut problems = Vec::new();
    for (kind, n) in &sent {
        match GARBAGE.iter().find(|(k, _)| k == kind) {
            Some((_, Some(reason))) => *expected.entry((*reason).to_owned()).or_default() += n,
            Some((_, None)) => passed += n,
            None => problems.push(format!("client-garbage sent an unknown kind {kind}")),
        }
    }
    for (kind, _) in GARBAGE {
        if !sent.contains_key(kind) {
            problems.push(format!("client-garbage sent no {kind}"));
        }
    }
    let frames: u64 = sent.values().sum();
    ctx.say(format!(
        "sent {frames} malformed/random frames ({} kinds x {}) from {} to {} in {} ms; send errors: {}",
        sent.len(),
        GARBAGE_COUNT,
        topo::CLIENT_IF,
        topo::EDGE_MAC,
        g["elapsed_ms"],
        g["send_errors"]
    ));
    ctx.say("drop reason      expected   counted (delta)");
    let reasons: std::collections::BTreeSet<&String> =
        expected.keys().chain(after.keys()).collect();
    for r in reasons {
        let e = expected.get(r).copied().unwrap_or(0);
        let d = after
            .get(r)
            .copied()
            .unwrap_or(0)
            .saturating_sub(before.get(r).copied().unwrap_or(0));
        if e > 0 || d > 0 {
            ctx.say(format!("{r:<16} {e:>8}   {d:>8}"));
        }
        if d != e {
            problems.push(format!("drop counter {r}: +{d}, expected +{e}"));
        }
    }
    ctx.say(format!(
        "{passed} frames were for no VIP or too short to read: passed to the kernel (no drop counted)"
    ));
    let (req, ok, errs) = sum_batches(&batches);
    ctx.say(format!(
        "good traffic meanwhile: HTTP {ok}/{req} ok{}; UDP (echo6) {}",
        if errs.is_empty() {
            String::new()
        } else {
            format!(", errors {}", counts(&errs))
        },
        udp_report.line()
    ));
    ctx.say(format!(
        "steer still running: {alive}, status answers: {status_ok}"
    ));
    if alive {
        steer.stop()?;
    }

    if g["send_errors"].as_object().is_some_and(|m| !m.is_empty()) {
        problems.push(format!("frames could not be sent: {}", g["send_errors"]));
    }
    if req == 0 || ok != req {
        problems.push(format!(
            "good HTTP traffic: {ok}/{req} ok ({})",
            counts(&errs)
        ));
    }
    if let Err(e) = udp_report.check_clean("good UDP traffic") {
        problems.push(format!("{e:#}"));
    }
    if !alive || !status_ok {
        problems.push(format!("steer running {alive}, status answers {status_ok}"));
    }
    if !problems.is_empty() {
        bail!("{}", problems.join("; "));
    }
    let dropped: u64 = expected.values().sum();
    Ok(format!(
        "{frames} bad frames: {dropped} dropped with exactly the documented reasons, {passed} passed; \
         good traffic {ok}/{req} HTTP ok and {} datagrams with 0 lost; steer still running",
        udp_report.sent
    ))
}
