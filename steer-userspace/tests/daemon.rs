//! The real `steer` daemon, attached in driver mode to a veth in a network
//! namespace of its own, driven by real frames. Privileged: needs root
//! (fails loudly under CI=true).
//!
//! Each test builds a lab (see [`Lab`]):
//!
//! ```text
//!   netns stdt-peer-<pid>-<n>            netns stdt-edge-<pid>-<n>
//!   ┌────────────────────────┐           ┌──────────────────────────────┐
//!   │ test: AF_PACKET on sd1 │──veth────▶│ sd0: steer_xdp (driver mode) │
//!   │ (steer_pass: XDP_PASS) │◀──XDP_TX──│ steer run --config F         │
//!   └────────────────────────┘           └──────────────────────────────┘
//! ```
//!
//! The test sends TCP frames to the VIP from the peer side and reads the
//! IPIP-encapsulated frames the program sends back out of sd0 (XDP_TX): the
//! outer IPv4 destination is the backend the flow was given.
//!
//! The peer end carries `steer_pass`, a program that returns XDP_PASS
//! (`steer::dataplane::verdict`). That is a property of
//! veth, not of steer: frames an XDP program sends with XDP_TX are queued
//! on the peer's XDP ring, and the kernel only kicks the peer's NAPI poll
//! for them if the peer has an XDP program itself; without one they sit in
//! the ring until unrelated traffic happens to wake it (seen on 6.18:
//! without the dummy program no encapsulated frame comes back).
//!
//! The daemon is started with `nsenter --net=...` rather than
//! `ip netns exec`, which remounts /sys (hiding bpffs, where steer pins its
//! maps and links). A guard kills the daemon, detaches and unpins
//! (`steer stop --detach`), deletes both namespaces and removes the temp
//! files, also when a test fails.

mod common;
use common::{ip, require_root, run_bounded, text, try_run_bounded, wait_bounded};
use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use steer::api::StatusReport;
use steer::dataplane::verdict::{VerdictProgram, XdpVerdict};

const STEER: &str = env!("CARGO_BIN_EXE_steer");

const SD0_MAC: [u8; 6] = [0x02, 0x5d, 0, 0, 0, 0x01];
const SD1_MAC: [u8; 6] = [0x02, 0x5d, 0, 0, 0, 0x02];
const NEXT_HOP_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0xfe];
const VIP: [u8; 4] = [203, 0, 113, 10];
const ENCAP_SOURCE: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);

/// Backends of the initial config: name, address, weight.
const BACKENDS: [(&str, Ipv4Addr, u32); 3] = [
    ("b1", Ipv4Addr::new(192, 0, 2, 11), 100),
    ("b2", Ipv4Addr::new(192, 0, 2, 12), 100),
    ("b3", Ipv4Addr::new(192, 0, 2, 13), 100),
];
const B4: (&str, Ipv4Addr, u32) = ("b4", Ipv4Addr::new(192, 0, 2, 14), 100);

/// How long the daemon may take to answer `steer status` after starting.
const READY_TIMEOUT: Duration = Duration::from_secs(20);
/// How long to wait for the encapsulated copy of a frame.
const REPLY_TIMEOUT: Duration = Duration::from_secs(3);
/// How long to wait before concluding a frame was not sent back.
const SILENCE: Duration = Duration::from_millis(400);

static NEXT_LAB: AtomicU32 = AtomicU32::new(0);

// ---------------------------------------------------------------------------
// Commands
// ---------------------------------------------------------------------------

fn mac(m: [u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

// ---------------------------------------------------------------------------
// The peer side: an AF_PACKET socket on sd1 in the peer namespace
// ---------------------------------------------------------------------------

/// The test's end of the wire.
struct Peer {
    sock: OwnedFd,
    /// `steer_pass`, attached to the peer's veth with a bpf link that lasts
    /// as long as this.
    _xdp_pass: VerdictProgram,
}

impl Peer {
    /// Opens a raw socket on `iface` in netns `ns` and attaches the dummy
    /// XDP program there. The namespace switch happens on a short-lived
    /// thread; the socket keeps its namespace after the thread is gone.
    fn open(ns: &str, iface: &str) -> Peer {
        let ns_path = format!("/var/run/netns/{ns}");
        let iface = std::ffi::CString::new(iface).expect("iface");
        std::thread::spawn(move || -> Result<Peer, String> {
            let nsf = std::fs::File::open(&ns_path).map_err(|e| format!("open {ns_path}: {e}"))?;
            // SAFETY: setns on a valid netns fd; affects only this thread.
            if unsafe { libc::setns(nsf.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(format!(
                    "setns {ns_path}: {}",
                    std::io::Error::last_os_error()
                ));
            }
            // SAFETY: NUL-terminated name.
            let ifindex = unsafe { libc::if_nametoindex(iface.as_ptr()) };
            if ifindex == 0 {
                return Err(format!(
                    "no interface {iface:?} in {ns_path}: {}",
                    std::io::Error::last_os_error()
                ));
            }
            let proto = (libc::ETH_P_ALL as u16).to_be();
            // SAFETY: plain socket(2).
            let fd = unsafe {
                libc::socket(
                    libc::AF_PACKET,
                    libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                    proto as libc::c_int,
                )
            };
            if fd < 0 {
                return Err(format!(
                    "AF_PACKET socket: {}",
                    std::io::Error::last_os_error()
                ));
            }
            // SAFETY: a new fd we own.
            let sock = unsafe { OwnedFd::from_raw_fd(fd) };
            // SAFETY: sockaddr_ll is plain data; zero is a valid value.
            let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
            sll.sll_family = libc::AF_PACKET as u16;
            sll.sll_protocol = proto;
            sll.sll_ifindex = ifindex as i32;
            // SAFETY: `sll` is a valid sockaddr_ll of the given length.
            let rc = unsafe {
                libc::bind(
                    sock.as_raw_fd(),
                    &sll as *const libc::sockaddr_ll as *const libc::sockaddr,
                    std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
                )
            };
            if rc != 0 {
                return Err(format!("bind: {}", std::io::Error::last_os_error()));
            }
            let tv = libc::timeval {
                tv_sec: 0,
                tv_usec: 100_000,
            };
            // SAFETY: SO_RCVTIMEO takes a timeval of this size.
            let rc = unsafe {
                libc::setsockopt(
                    sock.as_raw_fd(),
                    libc::SOL_SOCKET,
                    libc::SO_RCVTIMEO,
                    &tv as *const libc::timeval as *const libc::c_void,
                    std::mem::size_of::<libc::timeval>() as libc::socklen_t,
                )
            };
            if rc != 0 {
                return Err(format!("SO_RCVTIMEO: {}", std::io::Error::last_os_error()));
            }
            let mut pass = VerdictProgram::load(XdpVerdict::Pass)
                .map_err(|e| format!("loading steer_pass: {e}"))?;
            pass.attach(ifindex)
                .map_err(|e| format!("attaching steer_pass to {iface:?}: {e}"))?;
            Ok(Peer {
                sock,
                _xdp_pass: pass,
            })
        })
        .join()
        .expect("peer setup thread panicked")
        .unwrap_or_else(|e| panic!("peer setup: {e}"))
    }

    fn send(&self, frame: &[u8]) {
        // SAFETY: `frame` is a valid buffer of the given length.
        let n = unsafe {
            libc::send(
                self.sock.as_raw_fd(),
                frame.as_ptr() as *const libc::c_void,
                frame.len(),
                0,
            )
        };
        assert_eq!(
            n,
            frame.len() as isize,
            "send on the peer socket: {}",
            std::io::Error::last_os_error()
        );
    }

    /// The next frame received on the wire (not one we sent), or None once
    /// `deadline` has passed.
    fn recv(&self, deadline: Instant) -> Option<Vec<u8>> {
        let mut buf = vec![0u8; 4096];
        while Instant::now() < deadline {
            // SAFETY: sockaddr_ll is plain data; zero is a valid value.
            let mut from: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
            let mut len = std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
            // SAFETY: valid buffers of the given lengths.
            let n = unsafe {
                libc::recvfrom(
                    self.sock.as_raw_fd(),
                    buf.as_mut_ptr() as *mut libc::c_void,
                    buf.len(),
                    0,
                    &mut from as *mut libc::sockaddr_ll as *mut libc::sockaddr,
                    &mut len,
                )
            };
            if n < 0 {
                let e = std::io::Error::last_os_error();
                match e.kind() {
                    std::io::ErrorKind::WouldBlock
                    | std::io::ErrorKind::TimedOut
                    | std::io::ErrorKind::Interrupted => continue,
                    _ => panic!("recv on the peer socket: {e}"),
                }
            }
            if from.sll_pkttype == libc::PACKET_OUTGOING {
                continue;
            }
            return Some(buf[..n as usize].to_vec());
        }
        None
    }
}

// ---------------------------------------------------------------------------
// Frames
// ---------------------------------------------------------------------------

/// A client's flow to the VIP: the client port picks the flow.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Flow(u16);

impl Flow {
    /// The flow's `seq`-th frame: a SYN first, then data segments, so every
    /// frame of a flow is distinct and its encapsulated copy is recognised.
    fn frame(self, seq: u32) -> Vec<u8> {
        let b = etherparse::PacketBuilder::ethernet2(SD1_MAC, SD0_MAC)
            .ipv4([198, 51, 100, 7], VIP, 64)
            .tcp(self.0, 80, 1000 + seq * 100, 1024);
        let mut v = Vec::new();
        if seq == 0 {
            b.syn().write(&mut v, &[]).expect("build");
        } else {
            let payload = format!("segment {seq} of flow {}", self.0);
            b.ack(1)
                .psh()
                .write(&mut v, payload.as_bytes())
                .expect("build");
        }
        v
    }
}

/// What the program sent back for a frame.
#[derive(Debug)]
struct Encap {
    eth_dst: [u8; 6],
    eth_src: [u8; 6],
    outer: etherparse::Ipv4Header,
    /// Everything after the outer IPv4 header.
    inner: Vec<u8>,
}

/// Parses an IPIP-in-Ethernet frame; None for anything else.
fn parse_ipip(frame: &[u8]) -> Option<Encap> {
    let (eth, rest) = etherparse::Ethernet2Header::from_slice(frame).ok()?;
    if eth.ether_type != etherparse::EtherType::IPV4 {
        return None;
    }
    let (outer, inner) = etherparse::Ipv4Header::from_slice(rest).ok()?;
    if outer.protocol != etherparse::IpNumber::IPV4 {
        return None;
    }
    Some(Encap {
        eth_dst: eth.destination,
        eth_src: eth.source,
        outer,
        inner: inner.to_vec(),
    })
}

// ---------------------------------------------------------------------------
// The lab
// ---------------------------------------------------------------------------

/// Two network namespaces joined by a veth, a config, and the daemon.
/// Dropping it tears everything down, whatever state the test left.
struct Lab {
    edge: String,
    peer_ns: String,
    dir: PathBuf,
    config: PathBuf,
    /// A valid config with the same paths, for cleanup even when the test
    /// left an invalid one at `config`.
    cleanup_config: PathBuf,
    socket: PathBuf,
    pin_dir: PathBuf,
    state_file: PathBuf,
    metrics: String,
    daemon: Option<Child>,
    runs: u32,
    logs: Vec<PathBuf>,
    peer: Option<Peer>,
    created_edge: bool,
    created_peer: bool,
    /// Frames sent to the VIP so far.
    sent: u64,
}

impl Lab {
    /// Builds the namespaces and the veth, writes the config with
    /// [`BACKENDS`], starts the daemon and waits until it answers.
    fn start() -> Lab {
        let mut lab = Lab::bare();
        lab.create_network();
        let cfg = lab.config_text(&BACKENDS);
        std::fs::write(&lab.cleanup_config, &cfg).expect("write cleanup config");
        lab.write_config(&cfg);
        lab.start_daemon();
        lab.peer = Some(Peer::open(&lab.peer_ns, "sd1"));
        lab
    }

    fn bare() -> Lab {
        let n = NEXT_LAB.fetch_add(1, Ordering::SeqCst);
        let id = format!("{}-{n}", std::process::id());
        let dir = std::env::temp_dir().join(format!("steer-dt-{id}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        let lab = Lab {
            edge: format!("stdt-edge-{id}"),
            peer_ns: format!("stdt-peer-{id}"),
            config: dir.join("steer.toml"),
            cleanup_config: dir.join("cleanup.toml"),
            socket: dir.join("control.sock"),
            state_file: dir.join(steer::dataplane::persist::state_file_name(
                std::path::Path::new(&format!("/sys/fs/bpf/steer-dt-{id}")),
            )),
            pin_dir: PathBuf::from(format!("/sys/fs/bpf/steer-dt-{id}")),
            // A fresh namespace: any port is free on its loopback.
            metrics: format!("127.0.0.{}:{}", 2 + n % 250, 20_000 + n % 10_000),
            dir,
            daemon: None,
            runs: 0,
            logs: Vec::new(),
            peer: None,
            created_edge: false,
            created_peer: false,
            sent: 0,
        };
        // Leftovers of an earlier process with the same pid.
        let _ = std::fs::remove_dir_all(&lab.pin_dir);
        lab
    }

    fn create_network(&mut self) {
        for ns in [self.edge.clone(), self.peer_ns.clone()] {
            let _ = try_run_bounded(
                Command::new("ip").args(["netns", "del", &ns]),
                Duration::from_secs(10),
            );
        }
        ip(&["netns", "add", &self.edge]);
        self.created_edge = true;
        ip(&["netns", "add", &self.peer_ns]);
        self.created_peer = true;
        let (e, p) = (self.edge.clone(), self.peer_ns.clone());
        ip(&[
            "-n",
            &e,
            "link",
            "add",
            "sd0",
            "address",
            &mac(SD0_MAC),
            "type",
            "veth",
            "peer",
            "name",
            "sd1",
            "address",
            &mac(SD1_MAC),
            "netns",
            &p,
        ]);
        ip(&["-n", &e, "link", "set", "lo", "up"]);
        ip(&["-n", &e, "link", "set", "sd0", "up"]);
        ip(&["-n", &p, "link", "set", "lo", "up"]);
        ip(&["-n", &p, "link", "set", "sd1", "up"]);
    }

    fn config_text(&self, backends: &[(&str, Ipv4Addr, u32)]) -> String {
        let mut t = format!(
            r#"
[dataplane]
interfaces = ["sd0"]
mode = "driver"
next_hop_mac = "{}"
encap_source_v4 = "{ENCAP_SOURCE}/32"
maglev_table_size = 251
conntrack_size = 4096
max_tables = 8
max_reals = 64
pin_path = "{}"

[[regions]]
name = "lab"

[[services]]
name = "web"
vip = "{}"
port = 80
protocol = "tcp"
regions = ["lab"]

[control]
socket = "{}"

[metrics]
listen = "{}"
"#,
            mac(NEXT_HOP_MAC),
            self.pin_dir.display(),
            Ipv4Addr::from(VIP),
            self.socket.display(),
            self.metrics,
        );
        for (name, addr, weight) in backends {
            t += &format!(
                "\n[[backends]]\nname = \"{name}\"\naddress = \"{addr}\"\nregion = \"lab\"\nweight = {weight}\n"
            );
        }
        t
    }

    fn write_config(&self, text: &str) {
        // Write and rename, so the daemon never reads half a file.
        let tmp = self.dir.join("steer.toml.tmp");
        std::fs::write(&tmp, text).expect("write config");
        std::fs::rename(&tmp, &self.config).expect("rename config");
    }

    /// Starts `steer run` in the edge namespace and waits until it answers
    /// on its control socket.
    fn start_daemon(&mut self) {
        assert!(self.daemon.is_none(), "a daemon is already running");
        self.runs += 1;
        let log = self.dir.join(format!("daemon-{}.log", self.runs));
        let f = std::fs::File::create(&log).expect("log file");
        let child = Command::new("nsenter")
            .arg(format!("--net=/var/run/netns/{}", self.edge))
            .arg(STEER)
            .arg("run")
            .arg("--config")
            .arg(&self.config)
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(f.try_clone().expect("log fd"))
            .stderr(f)
            .spawn()
            .expect("spawn nsenter steer run");
        self.daemon = Some(child);
        self.logs.push(log);
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(st) = self
                .daemon
                .as_mut()
                .expect("daemon")
                .try_wait()
                .expect("try_wait")
            {
                self.daemon = None;
                panic!("steer run exited early ({st}):\n{}", self.log());
            }
            let out = self.steer(&["status", "--socket", &self.socket_str()]);
            if out.status.success() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "steer run did not answer `steer status` within {READY_TIMEOUT:?}:\n{}\nlast status error: {}",
                self.log(),
                text(&out.stderr)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The log of the current (or last) daemon run.
    fn log(&self) -> String {
        self.logs
            .last()
            .map(|p| std::fs::read_to_string(p).unwrap_or_default())
            .unwrap_or_default()
    }

    fn socket_str(&self) -> String {
        self.socket.display().to_string()
    }

    fn config_str(&self) -> String {
        self.config.display().to_string()
    }

    /// Runs the `steer` CLI (in the test's own namespace: the control
    /// socket is a path, reachable from any network namespace).
    fn steer(&self, args: &[&str]) -> Output {
        run_bounded(
            Command::new(STEER).args(args).env("NO_COLOR", "1"),
            Duration::from_secs(40),
        )
    }

    /// Runs the `steer` CLI and asserts it succeeded.
    fn steer_ok(&self, args: &[&str]) -> Output {
        let out = self.steer(args);
        assert!(
            out.status.success(),
            "steer {} failed ({}):\nstdout: {}\nstderr: {}\ndaemon log:\n{}",
            args.join(" "),
            out.status,
            text(&out.stdout),
            text(&out.stderr),
            self.log()
        );
        out
    }

    fn status(&self) -> StatusReport {
        let out = self.steer_ok(&["status", "--json", "--socket", &self.socket_str()]);
        serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("status JSON: {e}\n{}", text(&out.stdout)))
    }

    fn kill_daemon(&mut self) {
        let mut child = self.daemon.take().expect("no daemon running");
        child.kill().expect("SIGKILL the daemon");
        wait_bounded(&mut child, Duration::from_secs(10)).expect("the daemon did not die");
    }

    fn xdp_attached(&self) -> bool {
        ip(&["-n", &self.edge, "link", "show", "dev", "sd0"]).contains("prog/xdp")
    }

    fn peer(&self) -> &Peer {
        self.peer.as_ref().expect("peer")
    }

    /// Sends `frame` and returns its encapsulated copy, if one comes back
    /// within `wait`. Other frames on the wire (late copies of earlier
    /// frames, IPv6 router solicitations, ...) are skipped.
    fn exchange(&mut self, frame: &[u8], wait: Duration) -> Option<Encap> {
        self.peer().send(frame);
        self.sent += 1;
        let deadline = Instant::now() + wait;
        while let Some(got) = self.peer().recv(deadline) {
            if let Some(e) = parse_ipip(&got) {
                if e.inner == frame[14..] {
                    return Some(e);
                }
            }
        }
        None
    }

    /// Sends the flow's `seq`-th frame and returns the backend it was sent
    /// to, checking the encapsulation on the way.
    fn backend_of(&mut self, flow: Flow, seq: u32) -> Ipv4Addr {
        let frame = flow.frame(seq);
        let Some(e) = self.exchange(&frame, REPLY_TIMEOUT) else {
            panic!(
                "no encapsulated copy of frame {seq} of {flow:?} within {REPLY_TIMEOUT:?}\ndaemon log:\n{}",
                self.log()
            );
        };
        assert_eq!(e.outer.source, ENCAP_SOURCE.octets(), "outer source");
        assert_eq!(e.eth_dst, NEXT_HOP_MAC, "Ethernet destination");
        assert_eq!(e.eth_src, SD0_MAC, "Ethernet source");
        assert_eq!(
            e.outer.header_checksum,
            e.outer.calc_header_checksum(),
            "outer checksum"
        );
        assert_eq!(
            usize::from(e.outer.total_len),
            frame.len() - 14 + 20,
            "outer total length"
        );
        Ipv4Addr::from(e.outer.destination)
    }

    /// Sends a frame of each flow and records its backend.
    fn backends_of(&mut self, flows: &[Flow], seq: u32) -> BTreeMap<Flow, Ipv4Addr> {
        flows
            .iter()
            .map(|&f| (f, self.backend_of(f, seq)))
            .collect()
    }

    /// Asserts that a frame of `flow` is not sent back encapsulated.
    fn assert_not_forwarded(&mut self, flow: Flow, seq: u32) {
        let frame = flow.frame(seq);
        if let Some(e) = self.exchange(&frame, SILENCE) {
            panic!(
                "frame {seq} of {flow:?} was still encapsulated (to {})",
                Ipv4Addr::from(e.outer.destination)
            );
        }
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        // Our sockets and the dummy XDP link hold the peer namespace.
        self.peer.take();
        if let Some(mut child) = self.daemon.take() {
            let _ = child.kill();
            if wait_bounded(&mut child, Duration::from_secs(10)).is_none() {
                eprintln!("cleanup: steer run (pid {}) did not die", child.id());
            }
        }
        if self.cleanup_config.exists() {
            match try_run_bounded(
                Command::new(STEER)
                    .args(["stop", "--detach", "--config"])
                    .arg(&self.cleanup_config),
                Duration::from_secs(30),
            ) {
                Ok(out) if out.status.success() => {}
                Ok(out) => eprintln!("cleanup: steer stop --detach: {}", text(&out.stderr)),
                Err(e) => eprintln!("cleanup: {e}"),
            }
        }
        // Whatever is left of the pins (there should be nothing).
        if let Ok(rd) = std::fs::read_dir(&self.pin_dir) {
            for e in rd.flatten() {
                let _ = std::fs::remove_file(e.path());
            }
        }
        let _ = std::fs::remove_dir(&self.pin_dir);
        for (ns, created) in [
            (&self.edge, self.created_edge),
            (&self.peer_ns, self.created_peer),
        ] {
            if created {
                match try_run_bounded(
                    Command::new("ip").args(["netns", "del", ns]),
                    Duration::from_secs(10),
                ) {
                    Ok(out) if out.status.success() => {}
                    Ok(out) => eprintln!("cleanup: ip netns del {ns}: {}", text(&out.stderr)),
                    Err(e) => eprintln!("cleanup: {e}"),
                }
            }
        }
        if std::thread::panicking() {
            for p in &self.logs {
                eprintln!(
                    "--- {}:\n{}",
                    p.display(),
                    std::fs::read_to_string(p).unwrap_or_default()
                );
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn flows(range: std::ops::Range<u16>) -> Vec<Flow> {
    range.map(Flow).collect()
}

fn backend_addrs(list: &[(&str, Ipv4Addr, u32)]) -> BTreeSet<Ipv4Addr> {
    list.iter().map(|b| b.1).collect()
}

fn web(report: &StatusReport) -> &steer::api::ServiceStatus {
    report
        .services
        .iter()
        .find(|s| s.name == "web")
        .expect("service web in status")
}

// ---------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------

#[test]
#[ignore = "needs root: BPF or network namespaces (cargo xtask test runs it)"]
fn forwards_and_programs_maps() {
    if !require_root() {
        return;
    }
    let mut lab = Lab::start();
    assert!(lab.xdp_attached(), "no XDP program on sd0");
    let all = backend_addrs(&BACKENDS);
    let fl = flows(20_000..20_050);
    let got = lab.backends_of(&fl, 0);
    for (f, b) in &got {
        assert!(all.contains(b), "{f:?} went to {b}, not a backend");
    }
    let used: BTreeSet<Ipv4Addr> = got.values().copied().collect();
    assert_eq!(used, all, "50 flows should use every backend");

    // A second frame of each flow goes where the first went.
    let again = lab.backends_of(&fl, 1);
    assert_eq!(again, got, "established flows changed backend");

    let st = lab.status();
    let svc = web(&st);
    assert_eq!(svc.vip, "203.0.113.10:80/tcp");
    assert_eq!(svc.packets, lab.sent, "service packet counter");
    assert_eq!(svc.new_flows, 50, "service new-flow counter");
    let per: u64 = svc.backends.iter().map(|b| b.packets).sum();
    assert_eq!(
        per, svc.packets,
        "per-backend packets must sum to the service's"
    );
    for b in &svc.backends {
        let addr: Ipv4Addr = b.address.parse().expect("backend address");
        let flows_there = got.values().filter(|a| **a == addr).count() as u64;
        assert_eq!(b.packets, 2 * flows_there, "packets of {}", b.name);
        assert_eq!(b.new_flows, flows_there, "new flows of {}", b.name);
        assert_eq!(b.health, "unchecked");
        assert!(!b.drained);
    }
    assert_eq!((st.generation, st.reloads, st.reload_failures), (1, 0, 0));
}

#[test]
#[ignore = "needs root: BPF or network namespaces (cargo xtask test runs it)"]
fn reload_keeps_established_flows() {
    if !require_root() {
        return;
    }
    let mut lab = Lab::start();
    let old_flows = flows(21_000..21_040);
    let before = lab.backends_of(&old_flows, 0);

    let mut next = BACKENDS.to_vec();
    next[0].2 = 50;
    next[1].2 = 200;
    next.push(B4);
    lab.write_config(&lab.config_text(&next));
    let out = lab.steer_ok(&["reload", "--socket", &lab.socket_str()]);
    assert!(
        text(&out.stdout).contains("reloaded"),
        "reload output: {}",
        text(&out.stdout)
    );

    let after = lab.backends_of(&old_flows, 1);
    assert_eq!(after, before, "a reload moved established flows");

    let new_flows = flows(21_100..21_160);
    let fresh = lab.backends_of(&new_flows, 0);
    let all = backend_addrs(&next);
    for (f, b) in &fresh {
        assert!(all.contains(b), "{f:?} went to {b}, not a backend");
    }
    let to_b4 = fresh.values().filter(|b| **b == B4.1).count();
    assert!(to_b4 > 0, "no new flow went to the new backend: {fresh:?}");

    let st = lab.status();
    assert_eq!(st.reloads, 1);
    assert_eq!(st.reload_failures, 0);
    assert_eq!(st.generation, 2);
    assert_eq!(st.last_reload_error, None);
    let svc = web(&st);
    let weights: BTreeMap<&str, u32> = svc
        .backends
        .iter()
        .map(|b| (b.name.as_str(), b.weight))
        .collect();
    assert_eq!(
        weights,
        BTreeMap::from([("b1", 50), ("b2", 200), ("b3", 100), ("b4", 100)])
    );
    assert_eq!(svc.packets, lab.sent);
    let per: u64 = svc.backends.iter().map(|b| b.packets).sum();
    assert_eq!(per, svc.packets);
    let b4 = svc.backends.iter().find(|b| b.name == "b4").expect("b4");
    assert_eq!(b4.new_flows, to_b4 as u64);
}

/// The config used by the invalid-reload tests: an unknown key and a bad
/// address, both reported with their paths.
fn invalid_config(lab: &Lab) -> String {
    lab.config_text(&BACKENDS)
        .replace(
            "maglev_table_size = 251",
            "maglev_table_size = 251\ncolour = \"blue\"",
        )
        .replace("\"192.0.2.12\"", "\"192.0.2.300\"")
}

fn assert_invalid_reload_rejected(lab: &Lab) {
    let out = lab.steer(&["reload", "--socket", &lab.socket_str()]);
    let err = text(&out.stderr);
    assert!(!out.status.success(), "an invalid reload succeeded: {err}");
    assert!(
        err.contains("dataplane.colour: unknown key"),
        "the unknown key is not reported by path: {err}"
    );
    assert!(
        err.contains(r#"backends[1].address: "192.0.2.300" is not an IP address"#),
        "the bad address is not reported by path: {err}"
    );
    assert!(err.contains("2 error(s)"), "{err}");
}

#[test]
#[ignore = "needs root: BPF or network namespaces (cargo xtask test runs it)"]
fn invalid_reload_keeps_old_config() {
    if !require_root() {
        return;
    }
    let mut lab = Lab::start();
    let old_flows = flows(22_000..22_030);
    let before = lab.backends_of(&old_flows, 0);

    lab.write_config(&invalid_config(&lab));
    assert_invalid_reload_rejected(&lab);

    // Forwarding is unchanged: old flows stay, new ones use the old set.
    let after = lab.backends_of(&old_flows, 1);
    assert_eq!(after, before, "a rejected reload moved established flows");
    let all = backend_addrs(&BACKENDS);
    let fresh = lab.backends_of(&flows(22_100..22_130), 0);
    for (f, b) in &fresh {
        assert!(all.contains(b), "{f:?} went to {b}, not a backend");
    }

    let st = lab.status();
    assert_eq!(st.reload_failures, 1);
    assert_eq!(st.reloads, 0);
    assert_eq!(st.generation, 1);
    let last = st
        .last_reload_error
        .clone()
        .expect("last_reload_error is not set");
    assert!(last.contains("2 error(s)"), "last_reload_error: {last}");
    let svc = web(&st);
    assert_eq!(svc.packets, lab.sent);
    let names: Vec<&str> = svc.backends.iter().map(|b| b.name.as_str()).collect();
    assert_eq!(names, ["b1", "b2", "b3"]);
}

/// `last_reload_error` is documented as "why the last reload failed, if the
/// last reload failed": a later successful reload must clear it.
#[test]
#[ignore = "needs root: BPF or network namespaces (cargo xtask test runs it)"]
fn successful_reload_clears_last_reload_error() {
    if !require_root() {
        return;
    }
    let lab = Lab::start();
    lab.write_config(&invalid_config(&lab));
    assert_invalid_reload_rejected(&lab);
    assert!(lab.status().last_reload_error.is_some());

    lab.write_config(&lab.config_text(&BACKENDS));
    lab.steer_ok(&["reload", "--socket", &lab.socket_str()]);
    let st = lab.status();
    assert_eq!((st.reloads, st.reload_failures), (1, 1));
    assert_eq!(
        st.last_reload_error, None,
        "the last reload succeeded, yet last_reload_error still reports the earlier failure"
    );
}

#[test]
#[ignore = "needs root: BPF or network namespaces (cargo xtask test runs it)"]
fn drain_keeps_existing_flows() {
    if !require_root() {
        return;
    }
    let mut lab = Lab::start();
    let old_flows = flows(23_000..23_030);
    let before = lab.backends_of(&old_flows, 0);
    // Drain the backend with the most established flows.
    let mut count: BTreeMap<Ipv4Addr, usize> = BTreeMap::new();
    for b in before.values() {
        *count.entry(*b).or_default() += 1;
    }
    let (&drained_addr, &n) = count.iter().max_by_key(|(_, n)| **n).expect("flows");
    assert!(n > 0);
    let name = BACKENDS
        .iter()
        .find(|b| b.1 == drained_addr)
        .expect("backend")
        .0;

    let out = lab.steer_ok(&["drain", name, "--socket", &lab.socket_str()]);
    assert!(
        text(&out.stdout).contains("drained"),
        "{}",
        text(&out.stdout)
    );
    let st = lab.status();
    let b = web(&st)
        .backends
        .iter()
        .find(|b| b.name == name)
        .expect("drained backend in status");
    assert!(b.drained);
    assert_eq!(b.effective_weight, 0);

    let after = lab.backends_of(&old_flows, 1);
    assert_eq!(after, before, "draining moved established flows");
    let fresh = lab.backends_of(&flows(23_100..23_200), 0);
    for (f, b) in &fresh {
        assert_ne!(*b, drained_addr, "new {f:?} went to drained {name}");
    }

    lab.steer_ok(&["drain", name, "--undo", "--socket", &lab.socket_str()]);
    let st = lab.status();
    let b = web(&st)
        .backends
        .iter()
        .find(|b| b.name == name)
        .expect("backend in status");
    assert!(!b.drained);
    assert_eq!(b.effective_weight, b.weight);
    let undone = lab.backends_of(&flows(23_300..23_360), 0);
    assert!(
        undone.values().any(|b| *b == drained_addr),
        "after --undo no new flow went to {name}: {undone:?}"
    );
    // The flows established before the drain are still where they were.
    assert_eq!(lab.backends_of(&old_flows, 2), before);
}

#[test]
#[ignore = "needs root: BPF or network namespaces (cargo xtask test runs it)"]
fn explain_live_names_the_backend_and_the_conntrack_entry() {
    if !require_root() {
        return;
    }
    let mut lab = Lab::start();
    let socket = lab.socket_str();
    let explain = |lab: &Lab, port: u16| {
        let out = lab.steer_ok(&[
            "explain",
            "tcp",
            &format!("198.51.100.7:{port}"),
            "203.0.113.10:80",
            "--socket",
            &socket,
        ]);
        text(&out.stdout)
    };
    let name_of = |a: Ipv4Addr| BACKENDS.iter().find(|b| b.1 == a).expect("backend").0;
    // A flow the daemon has not seen: no entry, and the backend explain
    // names is where its SYN then goes.
    let out = explain(&lab, 24_000);
    assert!(out.contains("conntrack   no entry"), "{out}");
    let went = lab.backend_of(Flow(24_000), 0);
    assert!(
        out.contains(&format!("new flow    -> backend {} ", name_of(went))),
        "explain named another backend than the program chose ({went}):\n{out}"
    );
    // Between the SYN and the flow's next packet there is no conntrack
    // entry, only the SYN's RECENT_SYN slot: explain reads it.
    let out = explain(&lab, 24_000);
    assert!(
        out.contains(&format!(
            "conntrack   handshake pending: the SYN went to {}; the flow's next packet follows it",
            name_of(went)
        )),
        "{out}"
    );
    // Its first data segment follows the SYN (which left no conntrack
    // entry, only its RECENT_SYN slot) and creates the entry.
    assert_eq!(lab.backend_of(Flow(24_000), 1), went);
    // Now conntrack knows it.
    let out = explain(&lab, 24_000);
    assert!(
        out.contains(&format!(
            "conntrack   an entry pins this flow to {}:",
            name_of(went)
        )),
        "{out}"
    );
    // Every flow of a range: explain's backend is the program's.
    for port in 24_100..24_130 {
        let out = explain(&lab, port);
        let went = lab.backend_of(Flow(port), 0);
        assert!(
            out.contains(&format!("new flow    -> backend {} ", name_of(went))),
            "flow {port} went to {went}:\n{out}"
        );
    }
    // Bad input is refused with a reason.
    let out = lab.steer(&[
        "explain",
        "sctp",
        "1.2.3.4:1",
        "203.0.113.10:80",
        "--socket",
        &socket,
    ]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("expected tcp or udp"),
        "{}",
        text(&out.stderr)
    );
}

/// Polls `ip link show sd0` on a thread until dropped, counting the samples
/// without an XDP program.
struct XdpWatch {
    stop: Arc<AtomicBool>,
    samples: Arc<AtomicUsize>,
    missing: Arc<AtomicUsize>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl XdpWatch {
    fn start(edge: &str) -> XdpWatch {
        let stop = Arc::new(AtomicBool::new(false));
        let samples = Arc::new(AtomicUsize::new(0));
        let missing = Arc::new(AtomicUsize::new(0));
        let (s, n, m, edge) = (
            stop.clone(),
            samples.clone(),
            missing.clone(),
            edge.to_string(),
        );
        let thread = std::thread::spawn(move || {
            let give_up = Instant::now() + Duration::from_secs(60);
            while !s.load(Ordering::SeqCst) && Instant::now() < give_up {
                let Ok(out) = try_run_bounded(
                    Command::new("ip").args(["-n", &edge, "link", "show", "dev", "sd0"]),
                    Duration::from_secs(10),
                ) else {
                    break;
                };
                if !out.status.success() {
                    break;
                }
                n.fetch_add(1, Ordering::SeqCst);
                if !text(&out.stdout).contains("prog/xdp") {
                    m.fetch_add(1, Ordering::SeqCst);
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        });
        XdpWatch {
            stop,
            samples,
            missing,
            thread: Some(thread),
        }
    }

    /// Stops watching: (samples, samples without XDP).
    fn finish(mut self) -> (usize, usize) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            t.join().expect("xdp watcher");
        }
        (
            self.samples.load(Ordering::SeqCst),
            self.missing.load(Ordering::SeqCst),
        )
    }
}

impl Drop for XdpWatch {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[test]
#[ignore = "needs root: BPF or network namespaces (cargo xtask test runs it)"]
fn sigkill_keeps_forwarding_and_restart_adopts() {
    if !require_root() {
        return;
    }
    let mut lab = Lab::start();
    let old_flows = flows(24_000..24_030);
    let before = lab.backends_of(&old_flows, 0);
    assert!(lab.xdp_attached());
    let watch = XdpWatch::start(&lab.edge);

    lab.kill_daemon();
    assert!(lab.xdp_attached(), "XDP went away with the killed daemon");
    assert!(
        lab.pin_dir.exists(),
        "pins went away with the killed daemon"
    );
    // The pinned link keeps the program attached: flows keep forwarding.
    assert_eq!(
        lab.backends_of(&old_flows, 1),
        before,
        "without a daemon, established flows changed backend"
    );
    let all = backend_addrs(&BACKENDS);
    let orphan_flows = flows(24_100..24_110);
    let orphans = lab.backends_of(&orphan_flows, 0);
    assert!(orphans.values().all(|b| all.contains(b)));

    lab.start_daemon();
    let log = lab.log();
    assert!(
        log.contains("adopted the data plane of a previous run"),
        "the restarted daemon did not adopt:\n{log}"
    );
    assert!(
        log.contains("took over the pinned XDP link"),
        "the restarted daemon did not take over the pinned link:\n{log}"
    );
    assert_eq!(
        lab.backends_of(&old_flows, 2),
        before,
        "after restart, established flows changed backend"
    );
    assert_eq!(
        lab.backends_of(&orphan_flows, 1),
        orphans,
        "after restart, flows placed without a daemon changed backend"
    );
    let (samples, missing) = watch.finish();
    assert!(samples > 0, "the XDP watcher took no sample");
    assert_eq!(
        missing, 0,
        "sd0 had no XDP program in {missing} of {samples} samples across kill and restart"
    );
    assert!(lab.xdp_attached());

    // Counters carried over: everything sent since the first start.
    let st = lab.status();
    let svc = web(&st);
    assert_eq!(svc.packets, lab.sent, "service packets across the restart");
    assert_eq!(svc.new_flows, (old_flows.len() + orphan_flows.len()) as u64);
    let per: u64 = svc.backends.iter().map(|b| b.packets).sum();
    assert_eq!(per, svc.packets);
}

#[test]
#[ignore = "needs root: BPF or network namespaces (cargo xtask test runs it)"]
fn stop_detaches_and_cleans_up() {
    if !require_root() {
        return;
    }
    let mut lab = Lab::start();
    let fl = flows(25_000..25_005);
    lab.backends_of(&fl, 0);
    assert!(lab.pin_dir.exists());
    assert!(lab.state_file.exists(), "no state file while running");

    let out = lab.steer_ok(&["stop", "--socket", &lab.socket_str()]);
    assert!(
        text(&out.stdout).contains("detaching"),
        "{}",
        text(&out.stdout)
    );
    let mut child = lab.daemon.take().expect("daemon");
    let st = wait_bounded(&mut child, Duration::from_secs(20));
    let log = lab.log();
    let st = st.unwrap_or_else(|| {
        let _ = child.kill();
        let _ = child.wait();
        panic!("steer run did not exit within 20 s of `steer stop`:\n{log}")
    });
    assert!(st.success(), "steer run exited with {st}:\n{log}");
    assert!(!lab.xdp_attached(), "sd0 still has an XDP program");
    assert!(!lab.pin_dir.exists(), "pin directory left behind");
    assert!(!lab.socket.exists(), "control socket left behind");
    assert!(!lab.state_file.exists(), "state file left behind");
    for &f in &fl {
        lab.assert_not_forwarded(f, 1);
    }
}

#[test]
#[ignore = "needs root: BPF or network namespaces (cargo xtask test runs it)"]
fn stop_detach_without_daemon() {
    if !require_root() {
        return;
    }
    let mut lab = Lab::start();
    let fl = flows(26_000..26_005);
    lab.backends_of(&fl, 0);
    lab.kill_daemon();
    assert!(lab.xdp_attached());
    assert!(lab.pin_dir.exists());
    lab.backends_of(&fl, 1);

    // Without --detach, a stop with no daemon is an error and touches
    // nothing.
    let out = lab.steer(&["stop", "--config", &lab.config_str()]);
    assert!(!out.status.success(), "stop without a daemon succeeded");
    assert!(lab.xdp_attached());
    assert!(lab.pin_dir.exists());

    let out = lab.steer_ok(&["stop", "--detach", "--config", &lab.config_str()]);
    let said = text(&out.stdout);
    assert!(said.contains("detached from sd0"), "{said}");
    assert!(!lab.xdp_attached(), "sd0 still has an XDP program");
    assert!(!lab.pin_dir.exists(), "pin directory left behind");
    assert!(!lab.state_file.exists(), "state file left behind");
    for &f in &fl {
        lab.assert_not_forwarded(f, 2);
    }
    // Idempotent.
    let out = lab.steer_ok(&["stop", "--detach", "--config", &lab.config_str()]);
    assert!(text(&out.stdout).contains("nothing pinned"));
}

/// `steer shift` end to end through the control socket: the shift starts,
/// advances on the daemon's own timer, shows in `steer status` and `steer
/// shift status`, moves new flows only, and is forgotten by `abort` once
/// completed.
#[test]
#[ignore = "needs root: BPF or network namespaces (cargo xtask test runs it)"]
fn a_staged_shift_advances_on_the_daemons_timer_and_moves_new_flows_only() {
    if !require_root() {
        return;
    }
    let mut lab = Lab::bare();
    lab.create_network();
    // A second region, lab2, with one backend: lab has 3/4 of the weight.
    let cfg = lab
        .config_text(&BACKENDS)
        .replace(
            "[[regions]]\nname = \"lab\"\n",
            "[[regions]]\nname = \"lab\"\n[[regions]]\nname = \"lab2\"\n",
        )
        .replace("regions = [\"lab\"]", "regions = [\"lab\", \"lab2\"]")
        + &format!(
            "\n[[backends]]\nname = \"{}\"\naddress = \"{}\"\nregion = \"lab2\"\nweight = {}\n",
            B4.0, B4.1, B4.2
        );
    std::fs::write(&lab.cleanup_config, &cfg).expect("write cleanup config");
    lab.write_config(&cfg);
    lab.start_daemon();
    lab.peer = Some(Peer::open(&lab.peer_ns, "sd1"));
    let socket = lab.socket_str();

    let old_flows = flows(24_000..24_030);
    let before = lab.backends_of(&old_flows, 0);
    let out = lab.steer_ok(&[
        "shift",
        "start",
        "web",
        "--from",
        "lab",
        "--to",
        "lab2",
        "--stages",
        "50,100",
        "--hold",
        "2s",
        "--min-healthy",
        "0.5",
        "--socket",
        &socket,
    ]);
    assert!(
        text(&out.stdout).contains("running at stage 1 of 2 (50%)"),
        "{}",
        text(&out.stdout)
    );
    let st = lab.status();
    let shift = web(&st).shift.clone().expect("the shift in status");
    assert_eq!(
        (shift.state.as_str(), shift.stage, shift.percent),
        ("running", 1, 50)
    );
    // A second start is refused; the read-only status names the stage.
    let again = lab.steer(&[
        "shift", "start", "web", "--from", "lab", "--to", "lab2", "--socket", &socket,
    ]);
    assert!(!again.status.success());
    assert!(
        text(&again.stderr).contains("already has a shift"),
        "{}",
        text(&again.stderr)
    );
    let out = lab.steer_ok(&["shift", "status", "web", "--socket", &socket]);
    assert!(
        text(&out.stdout).contains("web: shift lab -> lab2: running at stage 1 of 2 (50%)"),
        "{}",
        text(&out.stdout)
    );
    // Live explain names the shift's stage and clock.
    let vip = format!("{}:80", Ipv4Addr::from(VIP));
    let out = lab.steer_ok(&[
        "explain",
        "tcp",
        "198.51.100.7:40000",
        &vip,
        "--socket",
        &socket,
    ]);
    let explained = text(&out.stdout);
    assert!(
        explained
            .lines()
            .any(|l| l.starts_with("shift       lab -> lab2 at 50%")),
        "{explained}"
    );
    assert!(
        explained.lines().any(|l| l.starts_with(
            "stage       shift lab -> lab2: running at stage 1 of 2 (50%), next stage in"
        )),
        "{explained}"
    );
    // At 50 %: lab2 takes 1/4 + 3/8 of the new flows; the established
    // ones stay where they were.
    let fresh = lab.backends_of(&flows(24_100..24_200), 0);
    let to_b4 = fresh.values().filter(|b| **b == B4.1).count();
    assert!(
        (40..=85).contains(&to_b4),
        "{to_b4} of 100 new flows to lab2"
    );
    assert_eq!(
        lab.backends_of(&old_flows, 1),
        before,
        "established flows moved"
    );

    // The daemon's timer advances it: 100 %, then completed.
    let deadline = Instant::now() + Duration::from_secs(15);
    let done = loop {
        let st = lab.status();
        let s = web(&st).shift.clone().expect("shift");
        if s.state == "completed" || Instant::now() > deadline {
            break s;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!((done.state.as_str(), done.percent), ("completed", 100));
    let fresh = lab.backends_of(&flows(24_300..24_330), 0);
    assert!(
        fresh.values().all(|b| *b == B4.1),
        "at 100 % every new flow goes to lab2: {fresh:?}"
    );
    assert_eq!(
        lab.backends_of(&old_flows, 2),
        before,
        "established flows moved"
    );

    let out = lab.steer_ok(&["shift", "abort", "web", "--socket", &socket]);
    assert!(
        text(&out.stdout).contains("forgot"),
        "{}",
        text(&out.stdout)
    );
    assert!(web(&lab.status()).shift.is_none());
}
