//! The lab's clients: many short HTTP requests, UDP echoes, long streams,
//! one verbose GET, and control requests. Each request opens its own
//! socket bound to one of the `--from` addresses (a new flow each time)
//! and every wait is bounded by a timeout.
use std::{
    collections::BTreeMap,
    io::{self, BufReader, Read, Write},
    net::{IpAddr, SocketAddr, TcpStream, UdpSocket},
    sync::{
        atomic::{AtomicUsize, Ordering},
        Mutex,
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Result};
use serde_json::{json, Map, Value};
use socket2::{Domain, Socket, Type};

use crate::{http, pattern};

/// Largest response body a client reads (streams excepted).
const MAX_BODY: u64 = 1024 * 1024;

/// A short name for why a request failed, used as a JSON key.
pub fn error_kind(e: &io::Error) -> String {
    use io::ErrorKind as K;
    match e.kind() {
        K::TimedOut | K::WouldBlock => "timeout".into(),
        K::ConnectionRefused => "refused".into(),
        K::ConnectionReset => "reset".into(),
        K::ConnectionAborted => "aborted".into(),
        K::HostUnreachable => "host unreachable".into(),
        K::NetworkUnreachable => "network unreachable".into(),
        K::AddrNotAvailable => "source address not available".into(),
        K::UnexpectedEof => "closed early".into(),
        K::InvalidData => "bad response".into(),
        _ => match e.raw_os_error() {
            Some(code) => format!("os error {code}"),
            None => format!("{:?}", e.kind()),
        },
    }
}

/// A TCP connection from `from` (port chosen by the kernel) to `to`.
pub fn connect(from: Option<IpAddr>, to: SocketAddr, timeout: Duration) -> io::Result<TcpStream> {
    let s = Socket::new(Domain::for_address(to), Type::STREAM, None)?;
    if let Some(f) = from {
        s.bind(&SocketAddr::new(f, 0).into())?;
    }
    s.connect_timeout(&to.into(), timeout)?;
    let s: TcpStream = s.into();
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    s.set_nodelay(true)?;
    Ok(s)
}

/// A parsed response: status, head, body (at most `MAX_BODY`).
pub struct Response {
    pub status: u16,
    pub head: http::Head,
    pub body: Vec<u8>,
}

impl Response {
    /// The backend that answered: `X-Backend`, else `backend=` in the body.
    pub fn backend(&self) -> Option<String> {
        if let Some(b) = self.head.header("x-backend") {
            return Some(b.to_owned());
        }
        let text = String::from_utf8_lossy(&self.body);
        text.split_whitespace()
            .find_map(|w| w.strip_prefix("backend="))
            .map(str::to_owned)
    }
}

pub fn status_of(head: &http::Head) -> io::Result<u16> {
    let mut parts = head.start.split_whitespace();
    match (parts.next(), parts.next().and_then(|c| c.parse().ok())) {
        (Some(v), Some(code)) if v.starts_with("HTTP/1.") => Ok(code),
        _ => Err(http::invalid(format!("bad status line {:?}", head.start))),
    }
}

/// Sends one request on `stream` and reads the whole response.
pub fn request(
    stream: TcpStream,
    method: &str,
    to: SocketAddr,
    path: &str,
) -> io::Result<Response> {
    let mut w = stream.try_clone()?;
    // One write, so one segment (the socket has TCP_NODELAY). `write!` on
    // the stream would send each piece of the format as a segment of its
    // own; a backend answering with SYN cookies (its SYN queue full, as
    // during and for a minute after a SYN flood) that loses the handshake's
    // ACK and the first of those segments starts the connection at the next
    // one and reads a request line without its method.
    w.write_all(
        format!(
            "{method} {path} HTTP/1.1\r\nHost: {to}\r\nUser-Agent: steer-lab-client\r\n\
             Content-Length: 0\r\nConnection: close\r\n\r\n"
        )
        .as_bytes(),
    )?;
    let mut r = BufReader::new(stream);
    let head = http::read_head(&mut r)?.ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "connection closed without a response",
        )
    })?;
    let status = status_of(&head)?;
    let mut body = Vec::new();
    match head.content_length()? {
        Some(n) if n > MAX_BODY => return Err(http::invalid("response body too large")),
        Some(n) => {
            r.by_ref().take(n).read_to_end(&mut body)?;
            if body.len() as u64 != n {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "connection closed inside the body",
                ));
            }
        }
        None => {
            r.take(MAX_BODY).read_to_end(&mut body)?;
        }
    }
    Ok(Response { status, head, body })
}

/// One request's outcome, for the JSON report.
struct Outcome {
    from: Option<SocketAddr>,
    result: Result<(String, u16), String>,
}

/// Counts outcomes: per backend, per error kind, per source address.
#[derive(Default)]
struct Tally {
    ok: u64,
    errors: u64,
    backends: BTreeMap<String, u64>,
    errors_by_kind: BTreeMap<String, u64>,
    by_source: BTreeMap<String, BTreeMap<String, u64>>,
    results: Vec<Value>,
}

impl Tally {
    fn add(&mut self, source: &str, o: &Outcome, keep: bool) {
        let key = match &o.result {
            Ok((b, _)) => {
                self.ok += 1;
                *self.backends.entry(b.clone()).or_default() += 1;
                b.clone()
            }
            Err(k) => {
                self.errors += 1;
                *self.errors_by_kind.entry(k.clone()).or_default() += 1;
                format!("error: {k}")
            }
        };
        *self
            .by_source
            .entry(source.to_owned())
            .or_default()
            .entry(key)
            .or_default() += 1;
        if keep {
            let from = o.from.map(|f| f.to_string());
            self.results.push(match &o.result {
                Ok((b, status)) => json!({"from": from, "backend": b, "status": status}),
                Err(k) => json!({"from": from, "error": k}),
            });
        }
    }

    fn report(self, target: SocketAddr, requests: usize, elapsed: Duration, keep: bool) -> Value {
        let mut v = json!({
            "target": target.to_string(),
            "requests": requests,
            "ok": self.ok,
            "errors": self.errors,
            "backends": self.backends,
            "errors_by_kind": self.errors_by_kind,
            "by_source": self.by_source,
            "elapsed_ms": elapsed.as_millis() as u64,
        });
        if keep {
            v["results"] = Value::Array(self.results);
        }
        v
    }
}

/// Runs `requests` jobs on `concurrency` threads; job `i` uses source
/// `from[i % from.len()]`. Results come back in job order.
fn run_jobs<F>(requests: usize, concurrency: usize, job: F) -> Vec<Outcome>
where
    F: Fn(usize) -> Outcome + Sync,
{
    let next = AtomicUsize::new(0);
    let results: Mutex<Vec<Option<Outcome>>> = Mutex::new((0..requests).map(|_| None).collect());
    thread::scope(|s| {
        for _ in 0..concurrency.clamp(1, requests.max(1)) {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= requests {
                    break;
                }
                let o = job(i);
                if let Ok(mut r) = results.lock() {
                    r[i] = Some(o);
                }
            });
        }
    });
    results
        .into_inner()
        .unwrap_or_default()
        .into_iter()
        .flatten()
        .collect()
}

fn source_label(from: &[IpAddr], i: usize) -> String {
    from.get(i % from.len().max(1))
        .map_or_else(|| "default".to_owned(), ToString::to_string)
}

fn pick(from: &[IpAddr], i: usize) -> Option<IpAddr> {
    (!from.is_empty()).then(|| from[i % from.len()])
}

pub struct HttpOptions {
    pub from: Vec<IpAddr>,
    pub to: SocketAddr,
    pub path: String,
    pub requests: usize,
    pub concurrency: usize,
    pub timeout: Duration,
    pub per_request: bool,
}

/// `client`: N GETs, each on a new connection; JSON counts per backend.
pub fn http_client(o: &HttpOptions) -> Value {
    let start = Instant::now();
    let outcomes = run_jobs(o.requests, o.concurrency, |i| {
        let mut local = None;
        let result = connect(pick(&o.from, i), o.to, o.timeout)
            .and_then(|s| {
                local = s.local_addr().ok();
                request(s, "GET", o.to, &o.path)
            })
            .map_err(|e| error_kind(&e))
            .and_then(|r| match (r.status, r.backend()) {
                (200, Some(b)) => Ok((b, r.status)),
                (200, None) => Err("no backend name in the response".to_owned()),
                (s, _) => Err(format!("status {s}")),
            });
        Outcome {
            from: local,
            result,
        }
    });
    let mut t = Tally::default();
    for (i, out) in outcomes.iter().enumerate() {
        t.add(&source_label(&o.from, i), out, o.per_request);
    }
    t.report(o.to, o.requests, start.elapsed(), o.per_request)
}

pub struct UdpOptions {
    pub from: Vec<IpAddr>,
    pub to: SocketAddr,
    pub requests: usize,
    pub concurrency: usize,
    pub timeout: Duration,
    pub attempts: u32,
    pub per_request: bool,
}

fn udp_once(
    from: Option<IpAddr>,
    o: &UdpOptions,
    i: usize,
) -> (Option<SocketAddr>, Result<String, String>) {
    let any = match o.to {
        SocketAddr::V4(_) => IpAddr::from([0u8; 4]),
        SocketAddr::V6(_) => IpAddr::from([0u16; 8]),
    };
    let sock = match UdpSocket::bind(SocketAddr::new(from.unwrap_or(any), 0)) {
        Ok(s) => s,
        Err(e) => return (None, Err(error_kind(&e))),
    };
    let local = sock.local_addr().ok();
    let setup = sock
        .connect(o.to)
        .and_then(|()| sock.set_read_timeout(Some(o.timeout)));
    if let Err(e) = setup {
        return (local, Err(error_kind(&e)));
    }
    let payload = format!("req-{i}-{}", std::process::id());
    let mut buf = [0u8; 2048];
    let mut last = String::from("timeout");
    for _ in 0..o.attempts.max(1) {
        if let Err(e) = sock.send(payload.as_bytes()) {
            last = error_kind(&e);
            continue;
        }
        // Every attempt sends the same payload, so a late reply to an
        // earlier attempt is as good as the reply to this one.
        match sock.recv(&mut buf) {
            Ok(n) => {
                let reply = String::from_utf8_lossy(&buf[..n]);
                return match reply.split_once(':') {
                    Some((name, echoed)) if echoed == payload => (local, Ok(name.to_owned())),
                    _ => (local, Err("bad reply".to_owned())),
                };
            }
            Err(e) => last = error_kind(&e),
        }
    }
    (local, Err(last))
}

/// `client-udp`: N echo requests, each from a new socket (a new flow).
pub fn udp_client(o: &UdpOptions) -> Value {
    let start = Instant::now();
    let outcomes = run_jobs(o.requests, o.concurrency, |i| {
        let (from, result) = udp_once(pick(&o.from, i), o, i);
        Outcome {
            from,
            result: result.map(|b| (b, 0)),
        }
    });
    let mut t = Tally::default();
    for (i, out) in outcomes.iter().enumerate() {
        t.add(&source_label(&o.from, i), out, o.per_request);
    }
    let mut v = t.report(o.to, o.requests, start.elapsed(), o.per_request);
    if let Some(results) = v.get_mut("results").and_then(Value::as_array_mut) {
        for r in results {
            if let Some(m) = r.as_object_mut() {
                m.remove("status");
            }
        }
    }
    v
}

pub struct StreamOptions {
    pub from: Vec<IpAddr>,
    pub to: SocketAddr,
    pub streams: usize,
    pub bytes: u64,
    pub chunk: usize,
    pub interval_ms: u64,
    pub timeout: Duration,
}

/// One stream's result.
fn one_stream(from: Option<IpAddr>, o: &StreamOptions) -> Map<String, Value> {
    let start = Instant::now();
    let mut m = Map::new();
    let mut received = 0u64;
    let mut pattern_ok = true;
    let mut first_mismatch: Option<u64> = None;
    let mut hash = pattern::Fnv1a::default();
    let result = (|| -> io::Result<()> {
        let stream = connect(from, o.to, o.timeout)?;
        m.insert("from".into(), json!(stream.local_addr()?.to_string()));
        let mut w = stream.try_clone()?;
        // One write, one segment (see `request`).
        w.write_all(
            format!(
                "GET /stream?bytes={}&chunk={}&interval_ms={} HTTP/1.1\r\nHost: {}\r\n\
                 User-Agent: steer-lab-client\r\nConnection: close\r\n\r\n",
                o.bytes, o.chunk, o.interval_ms, o.to
            )
            .as_bytes(),
        )?;
        let mut r = BufReader::new(stream);
        let head = http::read_head(&mut r)?
            .ok_or_else(|| io::Error::new(io::ErrorKind::UnexpectedEof, "no response"))?;
        let status = status_of(&head)?;
        m.insert("status".into(), json!(status));
        if let Some(b) = head.header("x-backend") {
            m.insert("backend".into(), json!(b));
        }
        if status != 200 {
            return Err(http::invalid(format!("status {status}")));
        }
        let announced = head.header("x-checksum").map(str::to_owned);
        m.insert("checksum_announced".into(), json!(announced));
        let mut buf = vec![0u8; 64 * 1024];
        let mut want = vec![0u8; 64 * 1024];
        loop {
            let n = r.read(&mut buf)?;
            if n == 0 {
                break;
            }
            if received + n as u64 > o.bytes {
                return Err(http::invalid("more bytes than announced"));
            }
            pattern::fill(received, &mut want[..n]);
            if pattern_ok {
                if let Some(k) = (0..n).find(|&k| buf[k] != want[k]) {
                    pattern_ok = false;
                    first_mismatch = Some(received + k as u64);
                }
            }
            hash.update(&buf[..n]);
            received += n as u64;
        }
        Ok(())
    })();
    let checksum = format!("{:016x}", hash.finish());
    let expected = format!("{:016x}", pattern::checksum(o.bytes));
    let complete = result.is_ok() && received == o.bytes;
    let checksum_ok = complete
        && checksum == expected
        && m.get("checksum_announced").and_then(Value::as_str) == Some(expected.as_str());
    m.insert("bytes".into(), json!(o.bytes));
    m.insert("received".into(), json!(received));
    m.insert("checksum".into(), json!(checksum));
    m.insert("checksum_expected".into(), json!(expected));
    m.insert("checksum_ok".into(), json!(checksum_ok));
    m.insert("pattern_ok".into(), json!(pattern_ok));
    m.insert("first_mismatch".into(), json!(first_mismatch));
    m.insert(
        "error".into(),
        match &result {
            Err(e) => json!(format!("{}: {e}", error_kind(e))),
            Ok(()) if received < o.bytes => json!("closed early"),
            Ok(()) => Value::Null,
        },
    );
    m.insert("ok".into(), json!(complete && checksum_ok && pattern_ok));
    m.insert(
        "elapsed_ms".into(),
        json!(start.elapsed().as_millis() as u64),
    );
    m
}

/// `client-stream`: C concurrent long streams, each checked byte by byte
/// and by checksum.
pub fn stream_client(o: &StreamOptions) -> Value {
    let start = Instant::now();
    let results: Vec<Map<String, Value>> = thread::scope(|s| {
        let handles: Vec<_> = (0..o.streams)
            .map(|i| {
                let from = pick(&o.from, i);
                s.spawn(move || one_stream(from, o))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_default())
            .collect()
    });
    let ok = results
        .iter()
        .filter(|r| r.get("ok") == Some(&Value::Bool(true)))
        .count();
    let mut backends: BTreeMap<String, u64> = BTreeMap::new();
    for r in &results {
        if let Some(b) = r.get("backend").and_then(Value::as_str) {
            *backends.entry(b.to_owned()).or_default() += 1;
        }
    }
    json!({
        "target": o.to.to_string(),
        "streams": o.streams,
        "ok": ok,
        "failed": o.streams - ok,
        "backends": backends,
        "elapsed_ms": start.elapsed().as_millis() as u64,
        "results": results,
    })
}

/// `get`: one request, printed like `curl -i`. Fails unless 2xx.
pub fn get(from: Option<IpAddr>, to: SocketAddr, path: &str, timeout: Duration) -> Result<()> {
    let r = connect(from, to, timeout)
        .and_then(|s| request(s, "GET", to, path))
        .map_err(|e| anyhow::anyhow!("GET http://{to}{path}: {}: {e}", error_kind(&e)))?;
    println!("{}", r.head.start);
    for (k, v) in &r.head.headers {
        println!("{k}: {v}");
    }
    println!();
    io::stdout().write_all(&r.body)?;
    if !(200..300).contains(&r.status) {
        bail!("status {}", r.status);
    }
    Ok(())
}

/// The method and path of a `ctl` action.
fn ctl_request(action: &str) -> Result<(&'static str, String)> {
    Ok(match action {
        "fail" | "recover" | "degrade" => ("POST", format!("/control/{action}")),
        "state" => ("GET", "/control/state".to_owned()),
        "blackhole=on" => ("POST", "/control/blackhole?on=1".to_owned()),
        "blackhole=off" => ("POST", "/control/blackhole?on=0".to_owned()),
        a if a.starts_with("delay=") => (
            "POST",
            format!("/control/health-delay?ms={}", &a["delay=".len()..]),
        ),
        _ => bail!(
            "unknown action {action:?} (expected fail, recover, degrade, state, delay=MS, \
             blackhole=on or blackhole=off)"
        ),
    })
}

/// `ctl`: a control request (`fail`, `recover`, `degrade`, `state`,
/// `delay=MS`, `blackhole=on`, `blackhole=off`).
pub fn ctl(to: SocketAddr, action: &str, timeout: Duration) -> Result<()> {
    let (method, path) = ctl_request(action)?;
    let r = connect(None, to, timeout)
        .and_then(|s| request(s, method, to, &path))
        .map_err(|e| anyhow::anyhow!("{method} http://{to}{path}: {}: {e}", error_kind(&e)))?;
    io::stdout().write_all(&r.body)?;
    println!();
    if r.status != 200 {
        bail!("status {}", r.status);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ctl_words_map_to_control_requests() {
        let r = |a: &str| ctl_request(a).map(|(m, p)| format!("{m} {p}"));
        assert_eq!(r("blackhole=on").unwrap(), "POST /control/blackhole?on=1");
        assert_eq!(r("blackhole=off").unwrap(), "POST /control/blackhole?on=0");
        assert_eq!(r("delay=80").unwrap(), "POST /control/health-delay?ms=80");
        assert_eq!(r("state").unwrap(), "GET /control/state");
        let e = r("blackhole=1").unwrap_err().to_string();
        assert!(
            e.contains("\"blackhole=1\"") && e.contains("blackhole=on or blackhole=off"),
            "{e}"
        );
    }
}
