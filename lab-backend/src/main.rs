//! `steer-lab-backend`: the backend and the clients of steer's lab
//! (`cargo xtask lab`, docs/lab.md).
//!
//! - `serve`: an HTTP/1.1 service answering `GET /` with
//!   `backend=<name> region=<region>`, health endpoints (`/alive`, `/ready`,
//!   `/health`), a slow deterministic `/stream`, a control endpoint that
//!   makes the health endpoints fail, recover or degrade, a UDP echo, and a
//!   userspace decapsulator (IPIP, IPv4-in-IPv6, IPv6-in-IPv6 → TUN).
//! - `client`, `client-udp`, `client-stream`: load from chosen source
//!   addresses, reported as JSON on stdout.
//! - `get`, `ctl`: one request, for people.
mod client;
mod decap;
mod http;
mod pattern;
mod server;

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
        /// fail, recover, degrade or state.
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
