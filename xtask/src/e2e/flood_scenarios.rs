//! A real SYN flood from the client namespace during a reload (issue 12,
//! "A SYN flood must not move established flows"): long-lived streams
//! must survive it with 0 resets and 0 corrupted bytes while genuine new
//! connections keep being made.
//!
//! The conntrack is made small (16,384 entries) so that a data plane that
//! inserts one entry per SYN has every stream's entry evicted many times
//! over; the reload (new weights, ap1 and ap2 added) then moves whatever
//! steer no longer tracks, and a moved stream is reset by its new backend.
use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr},
    sync::atomic::{AtomicBool, Ordering},
    thread,
    time::{Duration, Instant},
};

use anyhow::{anyhow, bail, Context as _, Result};

use super::{
    config::Cfg,
    daemon::{self, Steer},
    lifecycle::{
        ap_reload_missing, broken_streams, drops, shortest_ms, stream_line, wait_new_flows,
        with_ap_added,
    },
    traffic::{counts, http_loop, sum_batches, Background},
    Ctx,
};
use crate::lab::{topo, Load, Streams};

/// Where the spoofed sources come from: no lab client is in it (checked).
const FLOOD_PREFIX: &str = "10.128.0.0/9";
/// How long the flood runs (full speed, one sender).
const FLOOD_FOR: Duration = Duration::from_millis(4500);
/// Fewer SYNs than this prove nothing about a 16,384-entry conntrack.
const MIN_SYNS: u64 = 100_000;
const CONNTRACK_SIZE: i64 = 16_384;
/// When the reload starts, after the flood started.
const RELOAD_AFTER: Duration = Duration::from_millis(1500);
const STREAMS: u32 = 32;
/// How long the idle streams send nothing (longer than the flood).
const IDLE_GAP: Duration = Duration::from_secs(6);
/// Read by the metrics; absent from older steers.
const INSERT_FAILURES: &str = "steer_conntrack_insert_failures_total";

/// Whether `a` is inside the IPv4 prefix `p` (`ADDR/LEN`).
fn in_prefix_v4(p: &str, a: IpAddr) -> Result<bool> {
    let (net, len) = p
        .split_once('/')
        .ok_or_else(|| anyhow!("{p:?} is no prefix"))?;
    let net: Ipv4Addr = net.parse().with_context(|| format!("prefix {p:?}"))?;
    let len: u32 = len.parse().with_context(|| format!("prefix {p:?}"))?;
    let mask = u32::MAX.checked_shl(32 - len.min(32)).unwrap_or(0);
    Ok(match a {
        IpAddr::V4(a) => u32::from(a) & mask == u32::from(net) & mask,
        IpAddr::V6(_) => false,
    })
}

/// `after - before` per key (keys of either), only those that changed.
fn deltas(before: &BTreeMap<String, u64>, after: &BTreeMap<String, u64>) -> String {
    let v: Vec<String> = after
        .iter()
        .map(|(k, a)| (k, a.saturating_sub(before.get(k).copied().unwrap_or(0))))
        .filter(|(_, d)| *d > 0)
        .map(|(k, d)| format!("{k} +{d}"))
        .collect();
    if v.is_empty() {
        "none".into()
    } else {
        v.join(", ")
    }
}

/// The flood's command line (after the binary).
fn flood_args() -> Vec<String> {
    [
        "client-synflood",
        "--iface",
        topo::CLIENT_IF,
        "--dst-mac",
        topo::EDGE_MAC,
        "--src-mac",
        topo::CLIENT_MAC,
        "--vip",
        &topo::VIP_WEB.to_string(),
        "--port",
        &topo::HTTP_PORT.to_string(),
        "--src-prefix",
        FLOOD_PREFIX,
        "--duration-ms",
        &FLOOD_FOR.as_millis().to_string(),
        "--seed",
        "12",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect()
}

/// 32 long streams to web; a full-speed spoofed SYN flood (≥ 100,000
/// SYNs from 10.128.0.0/9) to web's VIP and port; 1.5 s into it a reload
/// that changes weights and adds ap1 and ap2; genuine connections all the
/// while. Every stream completes with 0 resets and 0 bad bytes, no genuine
/// connection is reset or answered with an error (timeouts are reported),
/// and the reload takes effect for new connections.
// With a conntrack entry per SYN (before RECENT_SYN) it failed: 6 of 32
// idle streams reset on 2026-12-02.
pub fn synflood_reload(ctx: &Ctx) -> Result<String> {
    let real: Vec<IpAddr> = topo::client_addrs(false)
        .into_iter()
        .filter(|a| in_prefix_v4(FLOOD_PREFIX, *a).unwrap_or(true))
        .collect();
    if !real.is_empty() {
        bail!("the flood's source prefix {FLOOD_PREFIX} holds real client addresses: {real:?}");
    }
    let mut a = Cfg::lab()?;
    a.set_dataplane_int("conntrack_size", CONNTRACK_SIZE)?;
    a.set_service_backends("web", &["eu1", "eu2", "us1", "us2"])?;
    // What the scenario wrote, for its messages.
    let ct = a
        .dataplane_int("conntrack_size")
        .ok_or_else(|| anyhow!("the config has no [dataplane] conntrack_size"))?;
    let b = with_ap_added(&a)?;
    let path = ctx.file("synflood.toml");
    a.write(&path)?;
    b.write(&ctx.file("synflood-after.toml"))?;
    let steer = Steer::start(ctx, &path)?;

    // ~9.6 s each: across the flood (≈ 1 s to 5.5 s) and the reload.
    let mut s = Streams::new(topo::web());
    s.from = topo::client_addrs(false);
    s.streams = STREAMS;
    s.bytes = 640 * 1024;
    s.chunk = 4096;
    s.interval = Duration::from_millis(60);
    s.timeout = Duration::from_secs(5);
    // Idle streams: one chunk, then nothing from either side for 6 s
    // (across the flood and the reload), then two more. Their conntrack
    // entries are the least recently used: the ones a flood that fills
    // conntrack would evict, and after the reload's table change a
    // re-selected flow may land on another backend, which resets it.
    let mut idle = Streams::new(topo::web());
    idle.from = topo::client_addrs(false);
    idle.streams = STREAMS;
    idle.bytes = 3 * 4096;
    idle.chunk = 4096;
    idle.interval = IDLE_GAP;
    idle.timeout = IDLE_GAP + Duration::from_secs(4);
    let t0 = Instant::now();
    let idle_running = ctx.lab.start_streams(&idle)?;
    let running = ctx.lab.start_streams(&s)?;
    wait_new_flows(
        &steer,
        "web",
        u64::from(s.streams + idle.streams),
        Duration::from_secs(5),
    )?;
    let established = t0.elapsed();
    thread::sleep(Duration::from_millis(500));
    let st0 = steer.status()?;
    let m0 = steer.metrics()?;

    let genuine = Load::new(topo::web())
        .from(topo::client_addrs(false))
        .requests(50)
        .concurrency(16)
        .timeout(Duration::from_secs(3));
    let flood = Background::spawn(ctx.lab, &flood_args(), FLOOD_FOR + Duration::from_secs(15))?;
    let flood_start = t0.elapsed();
    let stop = AtomicBool::new(false);
    let (reload, batches) = thread::scope(|sc| {
        let h = sc.spawn(|| {
            // Let the flood get going first.
            thread::sleep(Duration::from_millis(200));
            http_loop(ctx.lab, &genuine, t0, &stop)
        });
        let r = (|| -> Result<(String, Duration, Duration)> {
            thread::sleep(RELOAD_AFTER);
            b.write(&path)?;
            let at = t0.elapsed();
            let msg = steer.reload()?;
            Ok((msg, at, t0.elapsed()))
        })();
        // Genuine connections until the flood's planned end.
        thread::sleep((flood_start + FLOOD_FOR).saturating_sub(t0.elapsed()));
        stop.store(true, Ordering::Release);
        (r, h.join().unwrap_or_default())
    });
    let flood = flood.wait();
    let flood_done = t0.elapsed();
    let (reload_msg, reload_at, reloaded) = reload?;
    let f = flood?;
    let syns = f["frames"].as_u64().unwrap_or(0);
    let flood_ms = f["elapsed_ms"].as_u64().unwrap_or(0);
    let flood_end = flood_start + Duration::from_millis(flood_ms);
    ctx.say(format!(
        "{} streams of {} KiB (~{:.1}s each) to web on eu1,eu2,us1,us2 open at {:.2}s; \
         conntrack_size {ct}",
        s.streams,
        s.bytes / 1024,
        s.duration().as_secs_f64(),
        established.as_secs_f64(),
    ));
    ctx.say(format!(
        "SYN flood from {FLOOD_PREFIX} to {}:{} from {:.2}s for {flood_ms} ms: {syns} SYNs sent \
         ({} per second, {} send errors, {:.0}x the conntrack)",
        topo::VIP_WEB,
        topo::HTTP_PORT,
        flood_start.as_secs_f64(),
        f["rate_pps"],
        f["errors"],
        syns as f64 / ct as f64
    ));
    ctx.say(format!(
        "reload at {:.2}s, done at {:.2}s (weights 50/150/100/250 + ap1 300, ap2 100): {}",
        reload_at.as_secs_f64(),
        reloaded.as_secs_f64(),
        reload_msg.trim()
    ));
    let (g_req, g_ok, g_err) = sum_batches(&batches);
    let g_span = match (batches.first(), batches.last()) {
        (Some(x), Some(y)) => format!(
            "{:.2}s to {:.2}s",
            x.start.as_secs_f64(),
            y.end.as_secs_f64()
        ),
        _ => "none ran".into(),
    };
    ctx.say(format!(
        "genuine connections during the flood ({g_span}, {} batches of {}, concurrency 16, \
         timeout 3 s): {g_ok} of {g_req} answered, {} failed; errors: {}",
        batches.len(),
        genuine.requests,
        g_req - g_ok,
        counts(&g_err)
    ));

    thread::sleep(Duration::from_millis(300));
    let st1 = steer.status()?;
    let m1 = steer.metrics()?;
    let web0 = daemon::service(&st0, "web")?;
    let web1 = daemon::service(&st1, "web")?;
    let insert_failures = match (m0.get(INSERT_FAILURES), m1.get(INSERT_FAILURES)) {
        (Some(x), Some(y)) => format!("{x} -> {y}"),
        _ => "not exported".into(),
    };
    ctx.say(format!(
        "steer's counters before -> after the flood: web new flows {} -> {} (+{}); \
         drops: {}; conntrack insert failures {insert_failures}",
        web0.new_flows,
        web1.new_flows,
        web1.new_flows.saturating_sub(web0.new_flows),
        deltas(&drops(&m0), &drops(&m1))
    ));
    let now: Vec<String> = web1
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
        "after the flood: web = {}; 300 new connections: {} answered, backends {}",
        now.join(" "),
        fresh.ok,
        counts(&fresh.backends)
    ));
    let report = running.wait()?;
    let idle_report = idle_running.wait()?;
    let idle_shortest = shortest_ms(&idle_report);
    ctx.say(format!(
        "idle streams ({} of {} KiB, {:.0} s between chunks): {}; shortest lasted {:.2}s",
        idle.streams,
        idle.bytes / 1024,
        IDLE_GAP.as_secs_f64(),
        stream_line(&idle_report),
        idle_shortest as f64 / 1000.0
    ));
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
    problems.extend(
        broken_streams(&idle_report)
            .into_iter()
            .map(|p| format!("idle streams: {p}")),
    );
    if idle_report.ok != u64::from(idle.streams) {
        problems.push(format!(
            "{} of {} idle streams ok",
            idle_report.ok, idle.streams
        ));
    }
    if (idle_shortest as u128) <= flood_done.as_millis() {
        problems.push(format!(
            "an idle stream ended ({idle_shortest} ms) before the flood was over ({} ms)",
            flood_done.as_millis()
        ));
    }
    if syns < MIN_SYNS {
        problems.push(format!(
            "the flood sent only {syns} SYNs in {flood_ms} ms, fewer than {MIN_SYNS}: too few to \
             prove anything about a {ct}-entry conntrack (is the machine busy?)"
        ));
    }
    if reloaded > flood_end || reload_at < flood_start {
        problems.push(format!(
            "the reload ({:.2}s to {:.2}s) was not during the flood ({:.2}s to {:.2}s)",
            reload_at.as_secs_f64(),
            reloaded.as_secs_f64(),
            flood_start.as_secs_f64(),
            flood_end.as_secs_f64()
        ));
    }
    if (shortest as u128) <= flood_done.as_millis() {
        problems.push(format!(
            "a stream ended ({shortest} ms) before the flood was over ({} ms): not across it",
            flood_done.as_millis()
        ));
    }
    // A genuine connection reset or answered with an error during the
    // flood: its packets reached a backend that did not hold it (a moved
    // handshake) or lost part of its request. Timeouts are the lab's load.
    let wrong: Vec<String> = g_err
        .iter()
        .filter(|(k, _)| k.as_str() != "timeout")
        .map(|(k, n)| format!("{k} {n}"))
        .collect();
    if !wrong.is_empty() {
        problems.push(format!(
            "genuine connections during the flood failed other than by a timeout: {}",
            wrong.join(", ")
        ));
    }
    problems.extend(ap_reload_missing(&fresh));
    if !problems.is_empty() {
        bail!("{}", problems.join("; "));
    }
    let bytes: u64 = report.results.iter().map(|x| x.received).sum();
    Ok(format!(
        "{} busy and {} idle streams across a {syns}-SYN flood ({} per second) and a reload \
         during it: 0 resets, 0 of {bytes} bytes lost or corrupted; genuine connections during \
         the flood: {g_ok} of {g_req} answered",
        report.ok, idle_report.ok, f["rate_pps"]
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_flood_prefix_holds_no_lab_client() {
        for a in topo::client_addrs(false) {
            assert!(!in_prefix_v4(FLOOD_PREFIX, a).unwrap(), "{a}");
        }
        assert!(in_prefix_v4(FLOOD_PREFIX, "10.128.0.1".parse().unwrap()).unwrap());
        assert!(in_prefix_v4(FLOOD_PREFIX, "10.255.255.255".parse().unwrap()).unwrap());
        assert!(!in_prefix_v4(FLOOD_PREFIX, "10.127.255.255".parse().unwrap()).unwrap());
        assert!(in_prefix_v4("0.0.0.0/0", "198.51.100.10".parse().unwrap()).unwrap());
        assert!(in_prefix_v4("10.0.0.0", "10.0.0.1".parse().unwrap()).is_err());
    }

    #[test]
    fn the_flood_command_names_the_vip_the_edge_and_the_prefix() {
        let a = flood_args();
        let after = |k: &str| {
            let i = a
                .iter()
                .position(|x| x == k)
                .unwrap_or_else(|| panic!("{k}"));
            a[i + 1].clone()
        };
        assert_eq!(a[0], "client-synflood");
        assert_eq!(after("--vip"), "203.0.113.10");
        assert_eq!(after("--port"), "80");
        assert_eq!(after("--dst-mac"), topo::EDGE_MAC);
        assert_eq!(after("--iface"), topo::CLIENT_IF);
        assert_eq!(after("--src-prefix"), FLOOD_PREFIX);
        assert_eq!(after("--duration-ms"), "4500");
        assert!(!a.iter().any(|x| x == "--rate"), "full speed");
    }

    #[test]
    fn deltas_list_only_what_went_up() {
        let b = BTreeMap::from([("a".to_owned(), 5), ("b".to_owned(), 1)]);
        let a = BTreeMap::from([
            ("a".to_owned(), 5),
            ("b".to_owned(), 4),
            ("c".to_owned(), 2),
        ]);
        assert_eq!(deltas(&b, &a), "b +3, c +2");
        assert_eq!(deltas(&a, &a), "none");
    }
}
