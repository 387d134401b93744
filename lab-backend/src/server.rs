//! `steer-lab-backend serve`: the HTTP service (on the VIPs and the
//! backend's own addresses), the control endpoint, the UDP echo, and the
//! decapsulator.
use std::{
    io::{self, BufReader, Write},
    net::{Shutdown, SocketAddr, TcpListener, TcpStream, UdpSocket},
    sync::{
        atomic::{AtomicBool, AtomicU64, AtomicU8, AtomicUsize, Ordering},
        Arc,
    },
    thread,
    time::Duration,
};

use anyhow::{Context as _, Result};
use serde_json::json;
use socket2::{Domain, Socket, Type};

use crate::{
    decap,
    http::{self, Target},
    pattern,
};

/// What `/health`, `/alive` and `/ready` report; changed through the
/// control endpoint.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[repr(u8)]
pub enum Health {
    Healthy = 0,
    Degraded = 1,
    Failed = 2,
}

impl Health {
    fn from_u8(v: u8) -> Self {
        match v {
            1 => Health::Degraded,
            2 => Health::Failed,
            _ => Health::Healthy,
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Health::Healthy => "healthy",
            Health::Degraded => "degraded",
            Health::Failed => "unhealthy",
        }
    }
}

/// Longest `/stream` body.
const MAX_STREAM: u64 = 256 * 1024 * 1024;
/// Open connections beyond this are closed at once.
const MAX_CONNECTIONS: usize = 4096;
/// Idle keep-alive connections are closed after this.
const IDLE: Duration = Duration::from_secs(30);
/// Longest health-endpoint delay (`/control/health-delay?ms=N`): below
/// any health check timeout one would use in the lab.
const MAX_HEALTH_DELAY_MS: u64 = 10_000;

pub struct Options {
    pub name: String,
    pub region: String,
    pub http: Vec<SocketAddr>,
    pub control: Vec<SocketAddr>,
    pub udp: Vec<SocketAddr>,
    pub decap_tun: Option<String>,
}

#[derive(Default)]
pub struct Counters {
    pub http_requests: AtomicU64,
    pub health_probes: AtomicU64,
    pub streams_started: AtomicU64,
    pub streams_active: AtomicU64,
    pub udp_packets: AtomicU64,
    pub decap_ipip: AtomicU64,
    pub decap_4in6: AtomicU64,
    pub decap_6in6: AtomicU64,
    pub decap_errors: AtomicU64,
    /// Connection-opening packets (TCP SYN without ACK) the decapsulator
    /// dropped in black-hole mode.
    pub blackhole_dropped_syns: AtomicU64,
}

pub struct Shared {
    name: String,
    region: String,
    health: AtomicU8,
    /// Milliseconds the health endpoints wait before answering: a
    /// region's latency, emulated (the lab's kernel has no netem).
    health_delay_ms: AtomicU64,
    /// Black-hole mode (`/control/blackhole?on=1`): the decapsulator drops
    /// every new connection's SYN, silently.
    blackhole: AtomicBool,
    connections: AtomicUsize,
    pub counters: Counters,
}

impl Shared {
    pub(crate) fn new(name: &str, region: &str) -> Self {
        Shared {
            name: name.to_owned(),
            region: region.to_owned(),
            health: AtomicU8::new(Health::Healthy as u8),
            health_delay_ms: AtomicU64::new(0),
            blackhole: AtomicBool::new(false),
            connections: AtomicUsize::new(0),
            counters: Counters::default(),
        }
    }

    fn health(&self) -> Health {
        Health::from_u8(self.health.load(Ordering::Relaxed))
    }

    /// Whether black-hole mode is on.
    pub fn blackhole_on(&self) -> bool {
        self.blackhole.load(Ordering::Relaxed)
    }

    /// Turns black-hole mode on or off; returns whether it was on.
    pub fn set_blackhole(&self, on: bool) -> bool {
        self.blackhole.swap(on, Ordering::Relaxed)
    }

    pub(crate) fn state_json(&self) -> serde_json::Value {
        let c = &self.counters;
        let n = |a: &AtomicU64| a.load(Ordering::Relaxed);
        json!({
            "backend": self.name,
            "region": self.region,
            "health": self.health().as_str(),
            "health_delay_ms": self.health_delay_ms.load(Ordering::Relaxed),
            "blackhole": self.blackhole_on(),
            "blackhole_dropped_syns": n(&c.blackhole_dropped_syns),
            "http_requests": n(&c.http_requests),
            "health_probes": n(&c.health_probes),
            "streams_started": n(&c.streams_started),
            "streams_active": n(&c.streams_active),
            "udp_packets": n(&c.udp_packets),
            "decap": {
                "ipip": n(&c.decap_ipip),
                "4in6": n(&c.decap_4in6),
                "6in6": n(&c.decap_6in6),
                "errors": n(&c.decap_errors),
            },
        })
    }
}

fn listener(addr: SocketAddr) -> Result<TcpListener> {
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    s.set_reuse_address(true)?;
    if addr.is_ipv6() {
        s.set_only_v6(true)?;
    }
    s.bind(&addr.into())
        .with_context(|| format!("binding TCP {addr}"))?;
    s.listen(1024)?;
    Ok(s.into())
}

fn udp_socket(addr: SocketAddr) -> Result<UdpSocket> {
    let s = Socket::new(Domain::for_address(addr), Type::DGRAM, None)?;
    s.set_reuse_address(true)?;
    if addr.is_ipv6() {
        s.set_only_v6(true)?;
    }
    s.bind(&addr.into())
        .with_context(|| format!("binding UDP {addr}"))?;
    Ok(s.into())
}

#[derive(Clone, Copy)]
enum Kind {
    Service,
    Control,
}

pub fn serve(opts: Options) -> Result<()> {
    let shared = Arc::new(Shared::new(&opts.name, &opts.region));

    // Bind everything first, so "ready" means every socket is there.
    let mut listeners = Vec::new();
    for a in &opts.http {
        listeners.push((listener(*a)?, Kind::Service));
    }
    for a in &opts.control {
        listeners.push((listener(*a)?, Kind::Control));
    }
    let mut udps = Vec::new();
    for a in &opts.udp {
        udps.push(udp_socket(*a)?);
    }
    let decap = match &opts.decap_tun {
        Some(tun) => Some(decap::Decap::open(tun)?),
        None => None,
    };

    for (l, kind) in listeners {
        let shared = shared.clone();
        thread::spawn(move || accept_loop(&l, kind, &shared));
    }
    for u in udps {
        let shared = shared.clone();
        thread::spawn(move || udp_loop(&u, &shared));
    }
    if let Some(d) = decap {
        d.spawn(shared.clone())?;
    }

    let list = |v: &[SocketAddr]| {
        v.iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(",")
    };
    println!(
        "steer-lab-backend {} ({}) ready: http=[{}] control=[{}] udp=[{}] decap={}",
        opts.name,
        opts.region,
        list(&opts.http),
        list(&opts.control),
        list(&opts.udp),
        opts.decap_tun.as_deref().unwrap_or("off"),
    );
    io::stdout().flush()?;
    loop {
        thread::park();
    }
}

fn accept_loop(l: &TcpListener, kind: Kind, shared: &Arc<Shared>) {
    loop {
        let (stream, peer) = match l.accept() {
            Ok(x) => x,
            Err(e) => {
                eprintln!("{}: accept: {e}", shared.name);
                thread::sleep(Duration::from_millis(50));
                continue;
            }
        };
        if shared.connections.fetch_add(1, Ordering::Relaxed) >= MAX_CONNECTIONS {
            shared.connections.fetch_sub(1, Ordering::Relaxed);
            let _ = stream.shutdown(Shutdown::Both);
            continue;
        }
        let shared = shared.clone();
        thread::spawn(move || {
            let _ = connection(stream, peer, kind, &shared);
            shared.connections.fetch_sub(1, Ordering::Relaxed);
        });
    }
}

fn connection(stream: TcpStream, peer: SocketAddr, kind: Kind, shared: &Shared) -> io::Result<()> {
    stream.set_read_timeout(Some(IDLE))?;
    stream.set_write_timeout(Some(IDLE))?;
    stream.set_nodelay(true)?;
    let local = stream.local_addr()?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut w = stream;
    loop {
        let Some(head) = http::read_head(&mut reader)? else {
            return Ok(());
        };
        let mut parts = head.start.split_whitespace();
        let (Some(method), Some(target), Some(version)) =
            (parts.next(), parts.next(), parts.next())
        else {
            http::write_response(&mut w, 400, "text/plain", &[], b"bad request line\n", true)?;
            return Ok(());
        };
        if !version.starts_with("HTTP/1.") {
            http::write_response(&mut w, 400, "text/plain", &[], b"not HTTP/1.x\n", true)?;
            return Ok(());
        }
        let body_len = match head.content_length() {
            Ok(n) => n.unwrap_or(0),
            Err(_) => {
                http::write_response(
                    &mut w,
                    400,
                    "text/plain",
                    &[],
                    b"bad Content-Length\n",
                    true,
                )?;
                return Ok(());
            }
        };
        http::discard(&mut reader, body_len, 1024 * 1024)?;
        let close = head.wants_close();
        let target = Target::parse(target);
        let more = match kind {
            Kind::Service => service(&mut w, method, &target, close, peer, local, shared)?,
            Kind::Control => control(&mut w, method, &target, close, shared)?,
        };
        if close || !more {
            let _ = w.shutdown(Shutdown::Write);
            return Ok(());
        }
    }
}

/// Answers one request on the service port. Returns whether the
/// connection may carry another request.
fn service(
    w: &mut TcpStream,
    method: &str,
    target: &Target<'_>,
    close: bool,
    peer: SocketAddr,
    local: SocketAddr,
    shared: &Shared,
) -> io::Result<bool> {
    let c = &shared.counters;
    let ids = [
        ("X-Backend", shared.name.clone()),
        ("X-Region", shared.region.clone()),
    ];
    if method != "GET" {
        http::write_response(w, 405, "text/plain", &ids, b"only GET\n", close)?;
        return Ok(true);
    }
    let health = shared.health();
    let failing = health == Health::Failed;
    if matches!(target.path, "/alive" | "/ready" | "/health") {
        let delay = shared.health_delay_ms.load(Ordering::Relaxed);
        if delay > 0 {
            thread::sleep(Duration::from_millis(delay));
        }
    }
    match target.path {
        "/" => {
            c.http_requests.fetch_add(1, Ordering::Relaxed);
            let body = format!("backend={} region={}\n", shared.name, shared.region);
            http::write_response(w, 200, "text/plain", &ids, body.as_bytes(), close)?;
        }
        "/whoami" => {
            c.http_requests.fetch_add(1, Ordering::Relaxed);
            let body = format!(
                "backend={} region={} client={peer} local={local}\n",
                shared.name, shared.region
            );
            http::write_response(w, 200, "text/plain", &ids, body.as_bytes(), close)?;
        }
        "/alive" | "/ready" => {
            c.health_probes.fetch_add(1, Ordering::Relaxed);
            let (status, body): (u16, &[u8]) = if failing {
                (503, b"failing\n")
            } else {
                (200, b"ok\n")
            };
            http::write_response(w, status, "text/plain", &ids, body, close)?;
        }
        "/health" => {
            c.health_probes.fetch_add(1, Ordering::Relaxed);
            let status = if failing { 503 } else { 200 };
            let body = json!({
                "status": health.as_str(),
                "backend": shared.name,
                "region": shared.region,
            })
            .to_string();
            http::write_response(w, status, "application/json", &ids, body.as_bytes(), close)?;
        }
        "/stream" => {
            c.http_requests.fetch_add(1, Ordering::Relaxed);
            return stream(w, target, shared).map(|()| false);
        }
        _ => {
            http::write_response(w, 404, "text/plain", &ids, b"not found\n", close)?;
        }
    }
    Ok(true)
}

fn param<T: std::str::FromStr>(target: &Target<'_>, name: &str, default: T) -> Option<T> {
    match target.param(name) {
        None => Some(default),
        Some(v) => v.parse().ok(),
    }
}

/// `GET /stream?bytes=N&chunk=C&interval_ms=I`: N pattern bytes, C at a
/// time, one chunk every I milliseconds; always closes the connection.
fn stream(w: &mut TcpStream, target: &Target<'_>, shared: &Shared) -> io::Result<()> {
    let ids = [
        ("X-Backend", shared.name.clone()),
        ("X-Region", shared.region.clone()),
    ];
    let (Some(bytes), Some(chunk), Some(interval)) = (
        param(target, "bytes", 65_536u64),
        param(target, "chunk", 1024usize),
        param(target, "interval_ms", 10u64),
    ) else {
        return http::write_response(w, 400, "text/plain", &ids, b"bad parameters\n", true);
    };
    if bytes > MAX_STREAM || chunk == 0 || chunk > 1024 * 1024 || interval > 60_000 {
        return http::write_response(
            w,
            400,
            "text/plain",
            &ids,
            b"parameters out of range\n",
            true,
        );
    }
    let c = &shared.counters;
    c.streams_started.fetch_add(1, Ordering::Relaxed);
    c.streams_active.fetch_add(1, Ordering::Relaxed);
    let result = (|| {
        let head = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: {bytes}\r\n\
             X-Backend: {}\r\nX-Region: {}\r\nX-Checksum: {:016x}\r\nConnection: close\r\n\r\n",
            shared.name,
            shared.region,
            pattern::checksum(bytes)
        );
        w.write_all(head.as_bytes())?;
        let mut buf = vec![0u8; chunk];
        let mut off = 0u64;
        while off < bytes {
            let n = usize::try_from((bytes - off).min(chunk as u64)).unwrap_or(chunk);
            pattern::fill(off, &mut buf[..n]);
            w.write_all(&buf[..n])?;
            off += n as u64;
            if off < bytes && interval > 0 {
                thread::sleep(Duration::from_millis(interval));
            }
        }
        w.flush()
    })();
    c.streams_active.fetch_sub(1, Ordering::Relaxed);
    result
}

/// Answers one request on the control port.
fn control(
    w: &mut TcpStream,
    method: &str,
    target: &Target<'_>,
    close: bool,
    shared: &Shared,
) -> io::Result<bool> {
    if target.path == "/control/health-delay" {
        return health_delay(w, method, target, close, shared);
    }
    if target.path == "/control/blackhole" {
        return blackhole(w, method, target, close, shared);
    }
    let set = match target.path {
        "/control/fail" => Some(Health::Failed),
        "/control/recover" => Some(Health::Healthy),
        "/control/degrade" => Some(Health::Degraded),
        "/" | "/control/state" => None,
        _ => {
            http::write_response(w, 404, "text/plain", &[], b"not found\n", close)?;
            return Ok(true);
        }
    };
    match (set, method) {
        (Some(h), "POST") => {
            let before = Health::from_u8(shared.health.swap(h as u8, Ordering::Relaxed));
            if before != h {
                println!(
                    "{}: health {} -> {} (control)",
                    shared.name,
                    before.as_str(),
                    h.as_str()
                );
            }
        }
        (None, "GET") => {}
        _ => {
            let allowed = if set.is_some() { "POST" } else { "GET" };
            http::write_response(
                w,
                405,
                "text/plain",
                &[("Allow", allowed.to_owned())],
                b"method not allowed\n",
                close,
            )?;
            return Ok(true);
        }
    }
    let body = shared.state_json().to_string();
    http::write_response(w, 200, "application/json", &[], body.as_bytes(), close)?;
    Ok(true)
}

/// `POST /control/health-delay?ms=N`: the health endpoints answer N ms
/// late from now on (0: at once), so that steer's probes measure N ms
/// more round-trip time to this backend.
fn health_delay(
    w: &mut TcpStream,
    method: &str,
    target: &Target<'_>,
    close: bool,
    shared: &Shared,
) -> io::Result<bool> {
    if method != "POST" {
        http::write_response(
            w,
            405,
            "text/plain",
            &[("Allow", "POST".to_owned())],
            b"method not allowed\n",
            close,
        )?;
        return Ok(true);
    }
    match target.param("ms").and_then(|v| v.parse::<u64>().ok()) {
        Some(ms) if ms <= MAX_HEALTH_DELAY_MS => {
            let before = shared.health_delay_ms.swap(ms, Ordering::Relaxed);
            if before != ms {
                println!(
                    "{}: health endpoints delayed {before} ms -> {ms} ms (control)",
                    shared.name
                );
            }
            let body = shared.state_json().to_string();
            http::write_response(w, 200, "application/json", &[], body.as_bytes(), close)?;
        }
        _ => {
            let msg = format!("give the delay as ?ms=N with N from 0 to {MAX_HEALTH_DELAY_MS}\n");
            http::write_response(w, 400, "text/plain", &[], msg.as_bytes(), close)?;
        }
    }
    Ok(true)
}

/// The value of `?on=` of `/control/blackhole`: `1` or `0`.
fn blackhole_param(target: &Target<'_>) -> Result<bool, String> {
    match target.param("on") {
        Some("1") => Ok(true),
        Some("0") => Ok(false),
        Some(v) => Err(format!(
            "/control/blackhole: on={v:?} is neither 1 nor 0; give ?on=1 to drop new \
             connections, ?on=0 to stop\n"
        )),
        None => Err(
            "/control/blackhole: no ?on=; give ?on=1 to drop new connections, ?on=0 to stop\n"
                .to_owned(),
        ),
    }
}

/// `POST /control/blackhole?on=1|0`: black-hole mode on or off. While on,
/// the decapsulator silently drops every new connection's SYN (SYN set,
/// ACK clear) and passes everything else; the health endpoints, reached on
/// the host's own address without the tunnel, still answer.
fn blackhole(
    w: &mut TcpStream,
    method: &str,
    target: &Target<'_>,
    close: bool,
    shared: &Shared,
) -> io::Result<bool> {
    if method != "POST" {
        http::write_response(
            w,
            405,
            "text/plain",
            &[("Allow", "POST".to_owned())],
            b"method not allowed\n",
            close,
        )?;
        return Ok(true);
    }
    match blackhole_param(target) {
        Ok(on) => {
            let before = shared.set_blackhole(on);
            if before != on {
                let word = |b: bool| if b { "on" } else { "off" };
                println!(
                    "{}: black-hole mode {} -> {} (control)",
                    shared.name,
                    word(before),
                    word(on)
                );
            }
            let body = shared.state_json().to_string();
            http::write_response(w, 200, "application/json", &[], body.as_bytes(), close)?;
        }
        Err(msg) => {
            http::write_response(w, 400, "text/plain", &[], msg.as_bytes(), close)?;
        }
    }
    Ok(true)
}

/// UDP echo: replies `<name>:<payload>` from the address the datagram was
/// sent to (the socket is bound to that one address).
fn udp_loop(sock: &UdpSocket, shared: &Shared) {
    let mut buf = vec![0u8; 65_536];
    let prefix = format!("{}:", shared.name);
    loop {
        let (n, from) = match sock.recv_from(&mut buf) {
            Ok(x) => x,
            Err(e) => {
                eprintln!("{}: udp recv: {e}", shared.name);
                thread::sleep(Duration::from_millis(50));
                continue;
            }
        };
        shared.counters.udp_packets.fetch_add(1, Ordering::Relaxed);
        let mut reply = Vec::with_capacity(prefix.len() + n);
        reply.extend_from_slice(prefix.as_bytes());
        reply.extend_from_slice(&buf[..n.min(60_000)]);
        let _ = sock.send_to(&reply, from);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client;

    /// One request to the control port of `shared`, over loopback; the
    /// status and the body.
    fn control_request(shared: &Arc<Shared>, method: &str, path: &str) -> (u16, String) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let sh = shared.clone();
        let server = thread::spawn(move || {
            let (s, peer) = l.accept().unwrap();
            connection(s, peer, Kind::Control, &sh).unwrap();
        });
        let s = client::connect(None, addr, Duration::from_secs(5)).unwrap();
        let r = client::request(s, method, addr, path).unwrap();
        server.join().unwrap();
        (r.status, String::from_utf8_lossy(&r.body).into_owned())
    }

    #[test]
    fn the_blackhole_endpoint_turns_the_mode_on_and_off() {
        let shared = Arc::new(Shared::new("us1", "us-east"));
        let state = |body: &str| -> serde_json::Value { serde_json::from_str(body).unwrap() };

        let (status, body) = control_request(&shared, "GET", "/control/state");
        assert_eq!(status, 200);
        assert_eq!(state(&body)["blackhole"], false);
        assert_eq!(state(&body)["blackhole_dropped_syns"], 0);

        let (status, body) = control_request(&shared, "POST", "/control/blackhole?on=1");
        assert_eq!(status, 200, "{body}");
        assert_eq!(state(&body)["blackhole"], true);
        assert!(shared.blackhole_on());
        // The health endpoints' state is untouched.
        assert_eq!(state(&body)["health"], "healthy");

        let (status, body) = control_request(&shared, "POST", "/control/blackhole?on=0");
        assert_eq!(status, 200, "{body}");
        assert_eq!(state(&body)["blackhole"], false);
        assert!(!shared.blackhole_on());
    }

    #[test]
    fn the_blackhole_endpoint_rejects_bad_requests() {
        let shared = Arc::new(Shared::new("us1", "us-east"));
        for (method, path, want, says) in [
            (
                "POST",
                "/control/blackhole?on=yes",
                400,
                "on=\"yes\" is neither 1 nor 0",
            ),
            ("POST", "/control/blackhole", 400, "no ?on="),
            ("GET", "/control/blackhole?on=1", 405, "method not allowed"),
        ] {
            let (status, body) = control_request(&shared, method, path);
            assert_eq!(status, want, "{method} {path}: {body}");
            assert!(body.contains(says), "{method} {path}: {body}");
            assert!(!shared.blackhole_on(), "{method} {path} turned it on");
        }
    }
}
