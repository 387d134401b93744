//! `steer-lab-backend`: the backend and the clients of steer's lab
//! (`cargo xtask lab`, docs/lab.md).
//!
//! - `serve`: an HTTP/1.1 service answering `GET /` with
//!   `backend=<name> region=<region>`, health endpoints (`/alive`, `/ready`,
//!   `/health`), a slow deterministic `/stream`, a control endpoint that
//!   makes the health endpoints fail, recover or degrade (or black-holes
//!   new connections), a UDP echo, and a userspace decapsulator (IPIP,
//!   IPv4-in-IPv6, IPv6-in-IPv6 → TUN).
//! - `client`, `client-udp`, `client-stream`: load from chosen source
//!   addresses, reported as JSON on stdout.
//! - `client-live`: steady HTTP load until stopped, one JSON line per
//!   request (for live views).
//! - `client-udp-stream`: numbered UDP datagrams per flow, every loss
//!   counted; `client-garbage`: malformed and random frames on a raw
//!   AF_PACKET socket (for steer's drop counters); `client-synflood`:
//!   spoofed TCP SYNs from random sources on a raw AF_PACKET socket,
//!   batched with `sendmmsg`.
//! - `get`, `ctl`: one request, for people.
mod client;
mod decap;
mod garbage;
mod http;
mod live;
mod pattern;
mod raw;
mod server;
mod synflood;
mod udpstream;

use std::{
    net::{IpAddr, SocketAddr},
    process::ExitCode,
    time::Duration,
};

use anyhow::{bail, Result};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "steer-lab-backend", about = "steer's lab backend and clients")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run a backend until killed.
    Serve {
        /// Backend name, reported in every answer.
        #[arg(long)]
        name: String,
        /// Region name, reported in every answer.
        #[arg(long)]
        region: String,
        /// HTTP service listener, e.g. 0.0.0.0:80 or [::]:80 (repeatable).
        #[arg(long, value_name = "ADDR:PORT")]
        http: Vec<SocketAddr>,
        /// Control listener (repeatable): POST /control/{fail,recover,degrade},
        /// GET /control/state.
        #[arg(long, value_name = "ADDR:PORT")]
        control: Vec<SocketAddr>,
        /// UDP echo socket, bound to exactly this address so that replies
        /// come from it (repeatable; one per VIP).
        #[arg(long, value_name = "ADDR:PORT")]
        udp: Vec<SocketAddr>,
        /// Decapsulate IP-in-IP packets addressed to this host into this
        /// TUN device.
        #[arg(long, value_name = "IFNAME")]
        decap_tun: Option<String>,
    },
    /// HTTP GETs, one connection each; prints JSON counts per backend.
    Client {
        /// Source address (repeatable; request i uses the i-th modulo the count).
        #[arg(long = "from", value_name = "ADDR")]
        from: Vec<IpAddr>,
        #[arg(long, value_name = "ADDR:PORT")]
        to: SocketAddr,
        #[arg(long, default_value = "/")]
        path: String,
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
        requests: u32,
        #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=1024))]
        concurrency: u32,
        /// Connect and read timeout per request.
        #[arg(long, default_value_t = 2000)]
        timeout_ms: u64,
        /// Also list every request's source address and port and its backend.
        #[arg(long)]
        per_request: bool,
    },
    /// UDP echo requests, a new socket (flow) each; prints JSON counts.
    ClientUdp {
        #[arg(long = "from", value_name = "ADDR")]
        from: Vec<IpAddr>,
        #[arg(long, value_name = "ADDR:PORT")]
        to: SocketAddr,
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
        requests: u32,
        #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=1024))]
        concurrency: u32,
        /// Wait per attempt.
        #[arg(long, default_value_t = 1000)]
        timeout_ms: u64,
        /// Sends per request (on the same socket) before giving up.
        #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=10))]
        attempts: u32,
        #[arg(long)]
        per_request: bool,
    },
    /// Long streams (GET /stream), checked byte by byte and by checksum.
    ClientStream {
        #[arg(long = "from", value_name = "ADDR")]
        from: Vec<IpAddr>,
        #[arg(long, value_name = "ADDR:PORT")]
        to: SocketAddr,
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=1024))]
        streams: u32,
        #[arg(long, default_value_t = 102_400)]
        bytes: u64,
        #[arg(long, default_value_t = 1024)]
        chunk: usize,
        /// Pause between chunks: the stream lasts about
        /// bytes / chunk * interval.
        #[arg(long, default_value_t = 20)]
        interval_ms: u64,
        /// Connect timeout, and the longest wait for any one read.
        #[arg(long, default_value_t = 5000)]
        timeout_ms: u64,
    },
    /// HTTP GETs at a steady rate, one connection each, until killed (or
    /// --duration-ms); prints one JSON line per request as it completes.
    ClientLive {
        #[arg(long = "from", value_name = "ADDR")]
        from: Vec<IpAddr>,
        #[arg(long, value_name = "ADDR:PORT")]
        to: SocketAddr,
        #[arg(long, default_value = "/")]
        path: String,
        /// Requests per second (all workers together).
        #[arg(long, default_value_t = 100.0)]
        rate: f64,
        #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=1024))]
        concurrency: u32,
        #[arg(long, default_value_t = 2000)]
        timeout_ms: u64,
        /// Stop after this long (0: run until killed).
        #[arg(long, default_value_t = 0)]
        duration_ms: u64,
    },
    /// A continuous, paced stream of numbered UDP datagrams per flow (one
    /// socket each for the whole run) to an echo service; prints JSON:
    /// sent, echoed, lost (by sequence number), backends.
    ClientUdpStream {
        #[arg(long = "from", value_name = "ADDR")]
        from: Vec<IpAddr>,
        #[arg(long, value_name = "ADDR:PORT")]
        to: SocketAddr,
        /// Flows (sockets); flow i uses the i-th --from modulo the count.
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=256))]
        flows: u32,
        /// Datagrams per second per flow.
        #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=100_000))]
        rate: u32,
        #[arg(long, default_value_t = 5000)]
        duration_ms: u64,
        /// Payload bytes per datagram.
        #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=1400))]
        size: u32,
        /// Wait for late echoes after the last send.
        #[arg(long, default_value_t = 1000)]
        linger_ms: u64,
    },
    /// Malformed and random frames on a raw AF_PACKET socket to one MAC
    /// (steer's edge), each kind `--count` times; prints JSON per kind.
    ClientGarbage {
        #[arg(long, value_name = "IFNAME")]
        iface: String,
        #[arg(long, value_name = "MAC")]
        dst_mac: String,
        #[arg(long, value_name = "MAC")]
        src_mac: String,
        #[arg(long)]
        src4: std::net::Ipv4Addr,
        #[arg(long)]
        src6: std::net::Ipv6Addr,
        #[arg(long)]
        vip4: std::net::Ipv4Addr,
        #[arg(long)]
        vip6: std::net::Ipv6Addr,
        /// An address that is no VIP.
        #[arg(long)]
        other4: std::net::Ipv4Addr,
        #[arg(long)]
        other6: std::net::Ipv6Addr,
        #[arg(long, default_value_t = 40)]
        count: u32,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Pause between frames, in microseconds.
        #[arg(long, default_value_t = 100)]
        gap_us: u64,
    },
    /// Spoofed TCP SYNs on a raw AF_PACKET socket to one MAC (steer's
    /// edge), from random sources in a prefix, as fast as one core can
    /// (or at --rate), for --duration-ms or --count frames; prints JSON:
    /// frames, errors, elapsed ms, rate.
    ClientSynflood {
        #[arg(long, value_name = "IFNAME")]
        iface: String,
        #[arg(long, value_name = "MAC")]
        dst_mac: String,
        #[arg(long, value_name = "MAC")]
        src_mac: String,
        /// The IPv4 VIP to flood (needs --src-prefix).
        #[arg(long, requires = "src_prefix")]
        vip: Option<std::net::Ipv4Addr>,
        /// Where the spoofed IPv4 sources come from, e.g. 10.128.0.0/9
        /// (keep it clear of real clients).
        #[arg(long, value_name = "ADDR/LEN", requires = "vip")]
        src_prefix: Option<synflood::Prefix>,
        /// The IPv6 VIP to flood (needs --src6-prefix); with --vip too,
        /// frames alternate between the families.
        #[arg(long, requires = "src6_prefix")]
        vip6: Option<std::net::Ipv6Addr>,
        #[arg(long, value_name = "ADDR/LEN", requires = "vip6")]
        src6_prefix: Option<synflood::Prefix>,
        /// The VIP's TCP port.
        #[arg(long, default_value_t = 80)]
        port: u16,
        /// How long to flood (at most 600,000).
        #[arg(long, default_value_t = 5000)]
        duration_ms: u64,
        /// Stop after this many frames (the duration still bounds it).
        #[arg(long)]
        count: Option<u64>,
        /// Frames per second (default: as fast as possible).
        #[arg(long)]
        rate: Option<u64>,
        /// Frames per sendmmsg(2) call (1..=1024).
        #[arg(long, default_value_t = 64)]
        batch: usize,
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
    /// One GET, printed like `curl -i`; exits 1 unless 2xx.
    Get {
        #[arg(long, value_name = "ADDR")]
        from: Option<IpAddr>,
        #[arg(long, value_name = "ADDR:PORT")]
        to: SocketAddr,
        #[arg(long, default_value = "/")]
        path: String,
        #[arg(long, default_value_t = 2000)]
        timeout_ms: u64,
    },
    /// A control request to a backend's control port.
    Ctl {
        #[arg(long, value_name = "ADDR:PORT")]
        to: SocketAddr,
        /// fail, recover, degrade, state, delay=MS (the health
        /// endpoints answer MS milliseconds late; delay=0 undoes it), or
        /// blackhole=on|off (new connections are silently dropped while
        /// the health endpoints still answer).
        action: String,
        #[arg(long, default_value_t = 2000)]
        timeout_ms: u64,
    },
}

fn ms(v: u64) -> Duration {
    Duration::from_millis(v.max(1))
}

fn run(cli: Cli) -> Result<()> {
    match cli.cmd {
        Cmd::Serve {
            name,
            region,
            http,
            control,
            udp,
            decap_tun,
        } => {
            if http.is_empty() && control.is_empty() && udp.is_empty() {
                bail!("nothing to serve: give --http, --control or --udp");
            }
            server::serve(server::Options {
                name,
                region,
                http,
                control,
                udp,
                decap_tun,
            })
        }
        Cmd::Client {
            from,
            to,
            path,
            requests,
            concurrency,
            timeout_ms,
            per_request,
        } => {
            let v = client::http_client(&client::HttpOptions {
                from,
                to,
                path,
                requests: requests as usize,
                concurrency: concurrency as usize,
                timeout: ms(timeout_ms),
                per_request,
            });
            println!("{v}");
            Ok(())
        }
        Cmd::ClientUdp {
            from,
            to,
            requests,
            concurrency,
            timeout_ms,
            attempts,
            per_request,
        } => {
            let v = client::udp_client(&client::UdpOptions {
                from,
                to,
                requests: requests as usize,
                concurrency: concurrency as usize,
                timeout: ms(timeout_ms),
                attempts,
                per_request,
            });
            println!("{v}");
            Ok(())
        }
        Cmd::ClientStream {
            from,
            to,
            streams,
            bytes,
            chunk,
            interval_ms,
            timeout_ms,
        } => {
            if chunk == 0 || chunk > 1024 * 1024 {
                bail!("--chunk must be 1..=1048576");
            }
            let v = client::stream_client(&client::StreamOptions {
                from,
                to,
                streams: streams as usize,
                bytes,
                chunk,
                interval_ms,
                timeout: ms(timeout_ms),
            });
            println!("{v}");
            Ok(())
        }
        Cmd::ClientLive {
            from,
            to,
            path,
            rate,
            concurrency,
            timeout_ms,
            duration_ms,
        } => live::live_client(&live::LiveOptions {
            from,
            to,
            path,
            rate,
            concurrency: concurrency as usize,
            timeout: ms(timeout_ms),
            duration: (duration_ms > 0).then(|| Duration::from_millis(duration_ms)),
        }),
        Cmd::ClientUdpStream {
            from,
            to,
            flows,
            rate,
            duration_ms,
            size,
            linger_ms,
        } => {
            let v = udpstream::udp_stream_client(&udpstream::Options {
                from,
                to,
                flows: flows as usize,
                rate,
                duration: Duration::from_millis(duration_ms),
                size: size as usize,
                linger: Duration::from_millis(linger_ms),
            });
            println!("{v}");
            Ok(())
        }
        Cmd::ClientGarbage {
            iface,
            dst_mac,
            src_mac,
            src4,
            src6,
            vip4,
            vip6,
            other4,
            other6,
            count,
            seed,
            gap_us,
        } => {
            let v = garbage::garbage_client(&garbage::Options {
                iface,
                dst_mac: raw::parse_mac(&dst_mac)?,
                src_mac: raw::parse_mac(&src_mac)?,
                src4,
                src6,
                vip4,
                vip6,
                other4,
                other6,
                count,
                seed,
                gap: Duration::from_micros(gap_us),
            })?;
            println!("{v}");
            Ok(())
        }
        Cmd::ClientSynflood {
            iface,
            dst_mac,
            src_mac,
            vip,
            src_prefix,
            vip6,
            src6_prefix,
            port,
            duration_ms,
            count,
            rate,
            batch,
            seed,
        } => {
            let v = synflood::synflood_client(&synflood::Options {
                iface,
                dst_mac: raw::parse_mac(&dst_mac)?,
                src_mac: raw::parse_mac(&src_mac)?,
                v4: vip.zip(src_prefix),
                v6: vip6.zip(src6_prefix),
                port,
                duration: Duration::from_millis(duration_ms),
                count,
                rate,
                batch,
                seed,
            })?;
            println!("{v}");
            Ok(())
        }
        Cmd::Get {
            from,
            to,
            path,
            timeout_ms,
        } => client::get(from, to, &path, ms(timeout_ms)),
        Cmd::Ctl {
            to,
            action,
            timeout_ms,
        } => client::ctl(to, &action, ms(timeout_ms)),
    }
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("steer-lab-backend: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
