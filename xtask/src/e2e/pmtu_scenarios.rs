//! Path-MTU discovery through steer (issue 12): a client without MSS
//! clamping uploads with 1,500-byte packets through an edge whose steer has
//! `mtu = 1500`; steer answers the first too-big segments with ICMP
//! fragmentation-needed (next-hop MTU 1480), the client's kernel lowers the
//! path MTU and the upload completes.
use std::{
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};

use super::{config::Cfg, daemon::Steer, Ctx};
use crate::lab::{sys, topo};

/// The upload: large enough for hundreds of full-size segments, below the
/// lab backend's 1 MiB request-body limit.
const UPLOAD_BYTES: usize = 512 * 1024;
/// Every socket operation of the upload is bounded by this.
const IO_TIMEOUT: Duration = Duration::from_secs(15);
/// The MTU the client must learn: steer's 1500 minus the 20-byte IPIP
/// header.
const LEARNED_MTU: &str = "mtu 1480";

/// Flushes the client namespace's route cache (its learned path MTUs) when
/// dropped, so no later scenario starts with a lowered MTU.
struct FlushClientCache;

impl Drop for FlushClientCache {
    fn drop(&mut self) {
        let _ = sys::ip_quiet(&["-n", topo::NS_CLIENT, "-4", "route", "flush", "cache"]);
    }
}

fn client_route(vip: &str) -> Result<String> {
    Ok(
        sys::ip(&["-n", topo::NS_CLIENT, "-4", "route", "get", vip])?
            .trim()
            .to_owned(),
    )
}

/// One `GET /` with a `UPLOAD_BYTES` body (the lab backend reads and
/// discards request bodies), from the client namespace's default address.
/// Returns the status line and the answering backend.
fn upload(to: SocketAddr) -> Result<(String, String)> {
    let mut s = TcpStream::connect_timeout(&to, Duration::from_secs(3))
        .with_context(|| format!("connecting to {to}"))?;
    s.set_write_timeout(Some(IO_TIMEOUT))?;
    s.set_read_timeout(Some(IO_TIMEOUT))?;
    write!(
        s,
        "GET / HTTP/1.1\r\nHost: {to}\r\nUser-Agent: steer-e2e-pmtu\r\n\
         Content-Length: {UPLOAD_BYTES}\r\nConnection: close\r\n\r\n"
    )?;
    let chunk: Vec<u8> = (0..64 * 1024).map(|i| (i % 251) as u8).collect();
    let mut left = UPLOAD_BYTES;
    while left > 0 {
        let n = left.min(chunk.len());
        s.write_all(&chunk[..n])
            .with_context(|| format!("sending the body, {left} bytes left"))?;
        left -= n;
    }
    s.flush()?;
    let mut r = BufReader::new(s);
    let mut status = String::new();
    r.read_line(&mut status)
        .context("reading the status line")?;
    let mut backend = String::new();
    loop {
        let mut line = String::new();
        if r.read_line(&mut line)? == 0 || line.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = line.split_once(':') {
            if k.eq_ignore_ascii_case("x-backend") {
                backend = v.trim().to_owned();
            }
        }
    }
    let mut rest = Vec::new();
    let _ = r.take(1 << 20).read_to_end(&mut rest);
    Ok((status.trim().to_owned(), backend))
}

/// steer with `mtu = 1500` on the lab's 1600-byte fabric; the client (MTU
/// 1500, no MSS clamping: it sends 1460-byte segments, 1,500-byte
/// packets) uploads 512 KiB to the IPv4 web VIP. The upload must complete,
/// steer must have sent path-MTU replies (`steer_pmtu_replies_total`), and
/// the client's route cache must hold `mtu 1480` for the VIP.
pub fn pmtu_discovery(ctx: &Ctx) -> Result<String> {
    let mut cfg = Cfg::lab()?;
    cfg.set_dataplane_int("mtu", 1500)?;
    let path = ctx.file("pmtu.toml");
    cfg.write(&path)?;
    let vip = topo::VIP_WEB.to_string();
    let _flush = FlushClientCache;
    sys::ip(&["-n", topo::NS_CLIENT, "-4", "route", "flush", "cache"])?;
    let before = client_route(&vip)?;
    if before.contains(" mtu ") {
        bail!("the client's route to {vip} has a path MTU before the test: {before}");
    }
    ctx.say(format!(
        "config {}: dataplane.mtu = 1500 (fabric {}, clients {}); client route before: {before}",
        path.display(),
        topo::FABRIC_MTU,
        topo::CLIENT_MTU
    ));
    let steer = Steer::start(ctx, &path)?;
    let replies = |m: &std::collections::BTreeMap<String, f64>| {
        m.get("steer_pmtu_replies_total").copied().unwrap_or(0.0) as u64
    };
    let drops = |m: &std::collections::BTreeMap<String, f64>, reason: &str| {
        m.get(&format!("steer_drops_total{{reason=\"{reason}\"}}"))
            .copied()
            .unwrap_or(0.0) as u64
    };
    let m0 = steer.metrics()?;
    ctx.check_time("before the upload")?;
    let t = Instant::now();
    let result = sys::in_netns(topo::NS_CLIENT, || upload(topo::web()));
    let took = t.elapsed();
    let m1 = steer.metrics()?;
    let route = client_route(&vip)?;
    steer.stop()?;
    let (status, backend) = result.context("the upload through steer with mtu 1500")?;
    let sent = replies(&m1) - replies(&m0);
    let unanswered: Vec<String> = ["too_big", "too_big_df_clear", "too_big_rate_limited"]
        .iter()
        .map(|r| format!("{r} {}", drops(&m1, r) - drops(&m0, r)))
        .collect();
    ctx.say(format!(
        "upload of {UPLOAD_BYTES} bytes: {status:?} from {backend} in {took:.2?}; \
         path-MTU replies sent {sent}; too-big drops: {}",
        unanswered.join(", ")
    ));
    ctx.say(format!("client route after: {route}"));
    if !status.starts_with("HTTP/1.1 200") {
        bail!("the upload was answered {status:?}, not 200");
    }
    if sent == 0 {
        bail!("steer sent no path-MTU reply (steer_pmtu_replies_total did not move)");
    }
    if !route.contains(LEARNED_MTU) {
        bail!("the client did not learn the path MTU: `ip route get {vip}` says {route:?}, expected {LEARNED_MTU:?}");
    }
    Ok(format!(
        "512 KiB upload completed in {took:.2?} after {sent} path-MTU replies; client learned {LEARNED_MTU}"
    ))
}
