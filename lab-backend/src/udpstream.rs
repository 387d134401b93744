//! `client-udp-stream`: a continuous, paced stream of numbered UDP datagrams
//! per flow (one socket each, for the whole run) to an echo service, and an
//! exact account of which sequence numbers came back, from which backend.
//!
//! Each datagram carries `s<flow>:<seq>:` and padding; the echo service
//! answers `<backend>:<payload>`. A datagram is lost when its sequence
//! number never comes back before `linger` after the last send.
use std::{
    collections::BTreeMap,
    io,
    net::{IpAddr, SocketAddr, UdpSocket},
    sync::atomic::{AtomicBool, Ordering},
    thread,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use serde_json::{json, Value};
use socket2::{Domain, Socket, Type};

use crate::client::error_kind;

/// The most sequence numbers one flow may send (bounds memory).
const MAX_SEQ: u64 = 5_000_000;
/// How many lost sequence numbers a flow lists in the report.
const LIST_LOST: usize = 100;

pub struct Options {
    pub from: Vec<IpAddr>,
    pub to: SocketAddr,
    /// Flows (sockets); flow `i` uses `from[i % from.len()]`.
    pub flows: usize,
    /// Datagrams per second per flow.
    pub rate: u32,
    pub duration: Duration,
    /// Payload size (at least the header `s<flow>:<seq>:`).
    pub size: usize,
    /// How long to wait for late echoes after the last send.
    pub linger: Duration,
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[derive(Default)]
struct Received {
    /// Echoes per sequence number.
    seen: Vec<u32>,
    duplicates: u64,
    bad: u64,
    backends: BTreeMap<String, u64>,
    /// Times the answering backend differed from the previous answer's.
    moves: u64,
    last_backend: Option<String>,
}

impl Received {
    fn add(&mut self, flow: usize, reply: &[u8]) {
        let text = String::from_utf8_lossy(reply);
        let parsed = text.split_once(':').and_then(|(backend, payload)| {
            let mut p = payload.splitn(3, ':');
            let tag = p.next()?;
            let seq: u64 = p.next()?.parse().ok()?;
            (tag == format!("s{flow}") && seq < MAX_SEQ).then(|| (backend.to_owned(), seq))
        });
        let Some((backend, seq)) = parsed else {
            self.bad += 1;
            return;
        };
        let i = seq as usize;
        if self.seen.len() <= i {
            self.seen.resize(i + 1, 0);
        }
        self.seen[i] += 1;
        if self.seen[i] > 1 {
            self.duplicates += 1;
        }
        if self
            .last_backend
            .as_ref()
            .is_some_and(|last| *last != backend)
        {
            self.moves += 1;
        }
        *self.backends.entry(backend.clone()).or_default() += 1;
        self.last_backend = Some(backend);
    }
}

fn socket(from: Option<IpAddr>, to: SocketAddr) -> io::Result<UdpSocket> {
    let s = Socket::new(Domain::for_address(to), Type::DGRAM, None)?;
    let _ = s.set_recv_buffer_size(4 * 1024 * 1024);
    let _ = s.set_send_buffer_size(4 * 1024 * 1024);
    let any = match to {
        SocketAddr::V4(_) => IpAddr::from([0u8; 4]),
        SocketAddr::V6(_) => IpAddr::from([0u16; 8]),
    };
    s.bind(&SocketAddr::new(from.unwrap_or(any), 0).into())?;
    s.connect(&to.into())?;
    let s: UdpSocket = s.into();
    s.set_read_timeout(Some(Duration::from_millis(50)))?;
    Ok(s)
}

/// One flow: a sender on this thread, a receiver on another.
fn flow(i: usize, from: Option<IpAddr>, o: &Options) -> Value {
    let sock = match socket(from, o.to) {
        Ok(s) => s,
        Err(e) => return json!({"flow": i, "error": format!("{}: {e}", error_kind(&e))}),
    };
    let local = sock.local_addr().ok().map(|a| a.to_string());
    let recv_sock = match sock.try_clone() {
        Ok(s) => s,
        Err(e) => return json!({"flow": i, "error": format!("{}: {e}", error_kind(&e))}),
    };
    let done = AtomicBool::new(false);
    let interval = Duration::from_secs_f64(1.0 / f64::from(o.rate.max(1)));
    let header_len = format!("s{i}:{MAX_SEQ}:").len();
    let pad = "x".repeat(o.size.saturating_sub(header_len));
    let (sent_at, send_errors, received) = thread::scope(|s| {
        let receiver = s.spawn(|| {
            let mut r = Received::default();
            let mut buf = vec![0u8; 65_536];
            let mut quiet_since: Option<Instant> = None;
            loop {
                match recv_sock.recv(&mut buf) {
                    Ok(n) => r.add(i, &buf[..n]),
                    Err(e)
                        if matches!(
                            e.kind(),
                            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                        ) => {}
                    // ICMP errors (e.g. port unreachable) surface here;
                    // the datagram they answer is simply not echoed.
                    Err(_) => {}
                }
                if done.load(Ordering::Acquire) {
                    let since = *quiet_since.get_or_insert_with(Instant::now);
                    if since.elapsed() >= o.linger {
                        break;
                    }
                }
            }
            r
        });
        let start = Instant::now();
        let mut sent_at: Vec<u64> = Vec::new();
        let mut send_errors = 0u64;
        let mut seq = 0u64;
        while seq < MAX_SEQ {
            let due = start + interval.mul_f64(seq as f64);
            if due >= start + o.duration {
                break;
            }
            let now = Instant::now();
            if due > now {
                thread::sleep(due - now);
            }
            let payload = format!("s{i}:{seq}:{pad}");
            match sock.send(payload.as_bytes()) {
                Ok(_) => sent_at.push(unix_ms()),
                Err(_) => {
                    // Not sent, so not lost either: counted on its own
                    // (and the sequence number stays unused).
                    send_errors += 1;
                    sent_at.push(0);
                }
            }
            seq += 1;
        }
        done.store(true, Ordering::Release);
        let received = receiver.join().unwrap_or_default();
        (sent_at, send_errors, received)
    });
    let mut lost = 0u64;
    let mut first_lost = Vec::new();
    let mut lost_at = Vec::new();
    for (seq, at) in sent_at.iter().enumerate() {
        if *at == 0 {
            continue;
        }
        if received.seen.get(seq).copied().unwrap_or(0) == 0 {
            lost += 1;
            if first_lost.len() < LIST_LOST {
                first_lost.push(seq as u64);
                lost_at.push(*at);
            }
        }
    }
    let sent = sent_at.iter().filter(|a| **a != 0).count() as u64;
    json!({
        "flow": i,
        "from": local,
        "sent": sent,
        "send_errors": send_errors,
        "received": sent - lost,
        "lost": lost,
        "duplicates": received.duplicates,
        "bad": received.bad,
        "backends": received.backends,
        "moves": received.moves,
        "first_lost": first_lost,
        "lost_at_unix_ms": lost_at,
    })
}

/// Runs every flow at once; the report sums them and lists each.
pub fn udp_stream_client(o: &Options) -> Value {
    let start_unix = unix_ms();
    let start = Instant::now();
    let results: Vec<Value> = thread::scope(|s| {
        let handles: Vec<_> = (0..o.flows.max(1))
            .map(|i| {
                let from = (!o.from.is_empty()).then(|| o.from[i % o.from.len()]);
                s.spawn(move || flow(i, from, o))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| json!({"error": "flow thread panicked"}))
            })
            .collect()
    });
    let sum = |k: &str| -> u64 { results.iter().filter_map(|r| r[k].as_u64()).sum() };
    let mut backends: BTreeMap<String, u64> = BTreeMap::new();
    for r in &results {
        if let Some(m) = r["backends"].as_object() {
            for (b, n) in m {
                *backends.entry(b.clone()).or_default() += n.as_u64().unwrap_or(0);
            }
        }
    }
    let errors: Vec<&Value> = results.iter().filter(|r| !r["error"].is_null()).collect();
    json!({
        "target": o.to.to_string(),
        "flows": o.flows.max(1),
        "rate": o.rate,
        "sent": sum("sent"),
        "send_errors": sum("send_errors"),
        "received": sum("received"),
        "lost": sum("lost"),
        "duplicates": sum("duplicates"),
        "bad": sum("bad"),
        "moves": sum("moves"),
        "backends": backends,
        "flow_errors": errors.len(),
        "start_unix_ms": start_unix,
        "elapsed_ms": start.elapsed().as_millis() as u64,
        "results": results,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_echoes_duplicates_and_moves() {
        let mut r = Received::default();
        r.add(3, b"eu1:s3:0:xxxx");
        r.add(3, b"eu1:s3:1:xxxx");
        r.add(3, b"eu2:s3:1:xxxx");
        r.add(3, b"eu2:s4:2:xxxx"); // another flow's tag
        r.add(3, b"garbage");
        assert_eq!(r.seen, [1, 2]);
        assert_eq!(r.duplicates, 1);
        assert_eq!(r.moves, 1);
        assert_eq!(r.bad, 2);
        assert_eq!(r.backends.get("eu1"), Some(&2));
    }
}
