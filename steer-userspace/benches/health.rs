//! `cargo bench -p steer-userspace --bench health`: can one [`HealthMonitor`]
//! keep 5,000 targets probed every second on this machine?
//!
//! 5,000 TCP-check targets (interval 1s, timeout 500ms, jitter 100ms — the
//! config defaults) against a handful of listeners on 127.0.0.1 that accept
//! and drop connections, served by their own thread. After a warm-up, the
//! monitor is measured for a fixed window: every target has exactly one tick
//! per second on its grid, so the window holds `targets × seconds` scheduled
//! probes. The run fails (exit 1) if fewer than 95% of them completed, if a
//! probe started more than 250 ms late, or if any target went down.
//!
//! Knobs (environment): `STEER_HEALTH_BENCH_TARGETS` (5000),
//! `STEER_HEALTH_BENCH_SECS` (10), `STEER_HEALTH_BENCH_JITTER_MS` (100).

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use steer::config::{CheckKind, HealthCheck};
use steer::health::{HealthMonitor, Histogram, Target};
use tokio::net::TcpSocket;
use tokio::sync::watch;

const LISTENERS: usize = 8;
const WARMUP: Duration = Duration::from_secs(2);
const MIN_COMPLETED: f64 = 0.95;
const MAX_LAG: Duration = Duration::from_millis(250);

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Raises the soft open-file limit to the hard limit.
fn raise_nofile() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read/write the struct passed.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            let want = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &want) == 0 {
                lim = want;
            }
        }
    }
    lim.rlim_cur
}

/// CPU time (user + system) of this process.
fn cpu_time() -> Duration {
    // SAFETY: getrusage fills the zeroed struct.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: valid pointer to a rusage struct.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// Starts the listeners on their own thread; returns their addresses, the
/// accepted-connection counter and the stop flag.
fn start_listeners() -> (Vec<SocketAddr>, Arc<AtomicU64>, Arc<AtomicBool>) {
    let accepted = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let (tx, rx) = std::sync::mpsc::channel();
    let (count, flag) = (accepted.clone(), stop.clone());
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("listener runtime");
        rt.block_on(async move {
            let mut addrs = Vec::new();
            let mut tasks = Vec::new();
            for _ in 0..LISTENERS {
                let socket = TcpSocket::new_v4().expect("socket");
                socket
                    .bind(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0))
                    .expect("bind");
                let listener = socket.listen(4096).expect("listen");
                addrs.push(listener.local_addr().expect("addr"));
                let count = count.clone();
                tasks.push(tokio::spawn(async move {
                    loop {
                        if let Ok((s, _)) = listener.accept().await {
                            count.fetch_add(1, Ordering::Relaxed);
                            drop(s);
                        }
                    }
                }));
            }
            tx.send(addrs).expect("send addresses");
            while !flag.load(Ordering::Relaxed) {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            for t in tasks {
                t.abort();
            }
        });
    });
    let addrs = rx.recv().expect("listener addresses");
    (addrs, accepted, stop)
}

fn check(jitter: Duration) -> HealthCheck {
    HealthCheck {
        jitter,
        ..HealthCheck::new("bench-tcp", CheckKind::Tcp)
    }
}

fn delta(after: &Histogram, before: &Histogram) -> Histogram {
    Histogram {
        buckets: after
            .buckets
            .iter()
            .zip(&before.buckets)
            .map(|((le, a), (_, b))| (*le, a - b))
            .collect(),
        sum: after.sum - before.sum,
        count: after.count - before.count,
    }
}

fn ms(secs: f64) -> String {
    if secs.is_infinite() {
        "+Inf".into()
    } else {
        format!("{:.1} ms", secs * 1e3)
    }
}

fn main() -> ExitCode {
    let targets_n = env_u64("STEER_HEALTH_BENCH_TARGETS", 5000) as usize;
    let secs = env_u64("STEER_HEALTH_BENCH_SECS", 10);
    let jitter = Duration::from_millis(env_u64("STEER_HEALTH_BENCH_JITTER_MS", 100));
    let nofile = raise_nofile();
    let (addrs, accepted, stop_listeners) = start_listeners();

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let check = check(jitter);
    let targets: Vec<Target> = (0..targets_n)
        .map(|i| {
            let addr = addrs[i % addrs.len()];
            Target {
                key: format!("backend-{i:05}"),
                address: addr.ip(),
                port: addr.port(),
                check: check.clone(),
            }
        })
        .collect();

    println!(
        "health bench: {targets_n} tcp targets, interval 1s, timeout 500ms, jitter {}ms, \
         {LISTENERS} listeners on 127.0.0.1, {} worker threads, RLIMIT_NOFILE {nofile}",
        jitter.as_millis(),
        2
    );
    let (tx, rx) = watch::channel(BTreeMap::new());
    let report = rt.block_on(async move {
        let origin = tokio::time::Instant::now();
        let monitor = HealthMonitor::start(targets, tx);
        // Start the window half-way between two ticks of the grid, so that
        // (for jitter < 500ms) no probe straddles either end of it.
        tokio::time::sleep_until(origin + WARMUP + Duration::from_millis(500)).await;

        let lat0 = monitor.latency_histogram();
        let lag0 = monitor.schedule_lag_histogram();
        let missed0 = monitor.missed_ticks();
        let accepted0 = accepted.load(Ordering::Relaxed);
        let cpu0 = cpu_time();
        let t0 = Instant::now();
        let end = t0 + Duration::from_secs(secs);
        let mut max_lag = Duration::ZERO;
        loop {
            let now = Instant::now();
            if now >= end {
                break;
            }
            tokio::time::sleep((end - now).min(Duration::from_millis(100))).await;
            max_lag = max_lag.max(monitor.schedule_lag());
        }
        let elapsed = t0.elapsed();
        let cpu = cpu_time() - cpu0;
        let lat = delta(&monitor.latency_histogram(), &lat0);
        let lag = delta(&monitor.schedule_lag_histogram(), &lag0);
        let missed = monitor.missed_ticks() - missed0;
        let accepted = accepted.load(Ordering::Relaxed) - accepted0;
        let status = monitor.snapshot();
        monitor.stop();
        (elapsed, cpu, lat, lag, missed, accepted, max_lag, status)
    });
    let (elapsed, cpu, lat, lag, missed, accepted, max_lag, status) = report;
    drop(rx);
    stop_listeners.store(true, Ordering::Relaxed);

    let scheduled = targets_n as u64 * secs;
    let completed = lat.count;
    let ratio = completed as f64 / scheduled as f64;
    let down = status.values().filter(|s| !s.up).count();
    let failures: u64 = status.values().map(|s| s.failures).sum();
    let p99_lag = lag.quantile_upper_bound(0.99).unwrap_or(0.0);
    let p50_lat = lat.quantile_upper_bound(0.5).unwrap_or(0.0);
    let p99_lat = lat.quantile_upper_bound(0.99).unwrap_or(0.0);

    println!(
        "window            {:.2} s (after a {:.1} s warm-up)",
        elapsed.as_secs_f64(),
        WARMUP.as_secs_f64() + 0.5
    );
    println!(
        "probes            {completed} completed / {scheduled} scheduled ({:.2}%), {:.0}/s",
        ratio * 100.0,
        completed as f64 / elapsed.as_secs_f64()
    );
    println!("connections seen  {accepted} accepted by the listeners");
    println!("missed ticks      {missed}");
    println!(
        "schedule lag      max {:.1} ms (sampled every 100 ms), p99 <= {}",
        max_lag.as_secs_f64() * 1e3,
        ms(p99_lag)
    );
    println!(
        "probe latency     mean {}, p50 <= {}, p99 <= {}",
        ms(if completed > 0 {
            lat.sum / completed as f64
        } else {
            0.0
        }),
        ms(p50_lat),
        ms(p99_lat)
    );
    println!(
        "cpu               {:.2} s over the window ({:.0}% of one core, listeners included)",
        cpu.as_secs_f64(),
        cpu.as_secs_f64() / elapsed.as_secs_f64() * 100.0
    );
    println!("targets down      {down} (failed probes over the whole run: {failures})");

    let mut ok = true;
    if ratio < MIN_COMPLETED {
        println!(
            "FAIL: completed {:.2}% < {:.0}% of scheduled probes",
            ratio * 100.0,
            MIN_COMPLETED * 100.0
        );
        ok = false;
    }
    if max_lag > MAX_LAG {
        println!(
            "FAIL: max schedule lag {:.1} ms > {} ms",
            max_lag.as_secs_f64() * 1e3,
            MAX_LAG.as_millis()
        );
        ok = false;
    }
    if down > 0 {
        println!("FAIL: {down} targets down");
        ok = false;
    }
    if ok {
        println!("PASS: the monitor kept up");
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
