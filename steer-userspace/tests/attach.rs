//! Attaching to real interfaces: a veth pair in a network namespace each
//! test creates for itself. Privileged: needs root and `ip` (fails loudly
//! under CI=true).
//!
//! The network namespace is a per-thread property, so everything that
//! resolves an interface name (`attach`) runs on a thread that first enters
//! the test's namespace with setns(2). `ip -n NS link show` is the
//! independent witness of what is attached.
//!
//! Every test removes what it created even when it fails: a guard deletes
//! the namespaces (which destroys the veth pair), another removes the pins
//! (which detaches) and the state directory.

mod common;
use common::{ip, require_root};
use std::collections::BTreeSet;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use steer::config::{AttachMode, Config};
use steer::dataplane::{Attached, Dataplane, Persist};
use steer::policy::ApplyConfig as _;
use steer_common::Branch;

/// A network namespace, deleted on drop (with every interface in it).
struct Netns(String);

impl Netns {
    fn new(case: &str) -> Self {
        let name = format!("steer-t-{}-{case}", std::process::id());
        // A leftover of an earlier process with the same pid.
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        ip(&["netns", "add", &name]);
        Netns(name)
    }

    fn name(&self) -> &str {
        &self.0
    }

    /// Runs `f` on a thread that has entered this namespace.
    fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let file = PathBuf::from("/var/run/netns").join(&self.0);
        std::thread::spawn(move || {
            let ns = std::fs::File::open(&file)
                .unwrap_or_else(|e| panic!("opening {}: {e}", file.display()));
            // SAFETY: setns on a valid namespace fd; it changes only this
            // thread's network namespace, and the thread ends with `f`.
            let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
            f()
        })
        .join()
        .unwrap_or_else(|e| std::panic::resume_unwind(e))
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        match Command::new("ip").args(["netns", "del", &self.0]).output() {
            Ok(o) if o.status.success() => {}
            Ok(o) => eprintln!(
                "cleanup: ip netns del {}: {}",
                self.0,
                String::from_utf8_lossy(&o.stderr)
            ),
            Err(e) => eprintln!("cleanup: ip netns del {}: {e}", self.0),
        }
    }
}

const STT0_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x10];
const STT1_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x11];

fn mac(m: [u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// A namespace with the veth pair stt0/stt1, both up.
fn veth_ns(case: &str) -> Netns {
    let ns = Netns::new(case);
    let n = ns.name().to_string();
    ip(&[
        "-n",
        &n,
        "link",
        "add",
        "stt0",
        "address",
        &mac(STT0_MAC),
        "type",
        "veth",
        "peer",
        "name",
        "stt1",
        "address",
        &mac(STT1_MAC),
    ]);
    ip(&["-n", &n, "link", "set", "stt0", "up"]);
    ip(&["-n", &n, "link", "set", "stt1", "up"]);
    ns
}

/// A unique pin directory and state file, removed (with every pin, which
/// detaches every pinned link) on drop.
struct Scratch {
    persist: Persist,
    state_dir: PathBuf,
}

impl Scratch {
    fn new(name: &str) -> Self {
        let tag = format!("steer-test-{}-{name}", std::process::id());
        let state_dir = std::env::temp_dir().join(&tag);
        let persist = Persist {
            pin_dir: Path::new("/sys/fs/bpf").join(&tag),
            state_file: state_dir.join("state.json"),
        };
        let _ = Dataplane::remove_pins(&persist);
        let _ = std::fs::remove_dir_all(&state_dir);
        std::fs::create_dir_all(&state_dir).expect("state dir");
        Scratch { persist, state_dir }
    }

    fn persist(&self) -> Persist {
        self.persist.clone()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if let Err(e) = Dataplane::remove_pins(&self.persist) {
            eprintln!("cleanup: remove_pins: {e}");
        }
        if let Ok(rd) = std::fs::read_dir(&self.persist.pin_dir) {
            for e in rd.flatten() {
                let _ = std::fs::remove_file(e.path());
            }
        }
        let _ = std::fs::remove_dir(&self.persist.pin_dir);
        let _ = std::fs::remove_dir_all(&self.state_dir);
    }
}

/// The shared fixture, its TCP service served by eu-1, and a UDP service
/// on eu-1 that the traffic test uses.
const CFG: &str = concat!(
    include_str!("fixtures/eu.toml"),
    r#"backends = ["eu-1"]

[[services]]
name = "dns"
vip = "203.0.113.10"
port = 53
protocol = "udp"
backends = ["eu-1"]
"#
);

fn config() -> Config {
    Config::parse(CFG).expect("test config")
}

/// Opens (adopting what is pinned), applies the config and attaches to
/// stt0 inside `ns`. Returns the data plane, whether it adopted, and how it
/// attached.
fn open_and_attach(ns: &Netns, s: &Scratch, mode: AttachMode) -> (Dataplane, bool, Attached) {
    let persist = s.persist();
    ns.run(move || {
        let cfg = config();
        let (mut dp, adopted) = match Dataplane::open(&cfg.dataplane, persist) {
            Ok(x) => x,
            Err(e) => panic!("open: {e}"),
        };
        if let Err(e) = dp.apply(&cfg, &BTreeSet::new()) {
            panic!("apply: {e}");
        }
        let attached = match dp.attach("stt0", mode) {
            Ok(a) => a,
            Err(e) => panic!("attach {mode:?}: {e}"),
        };
        (dp, adopted, attached)
    })
}

/// What `ip link show` says about XDP on an interface.
#[derive(Debug, PartialEq, Eq)]
struct XdpState {
    /// The flag `ip` prints: "xdp" (native), "xdpgeneric" (skb), ...
    flag: Option<String>,
    prog_id: Option<u32>,
}

fn xdp_state(ns: &str, dev: &str) -> XdpState {
    parse_xdp(&ip(&["-n", ns, "link", "show", "dev", dev]))
}

fn parse_xdp(out: &str) -> XdpState {
    let flag = out
        .split_whitespace()
        .find(|w| w.starts_with("xdp"))
        .map(str::to_string);
    let prog_id = out
        .lines()
        .map(str::trim)
        .find_map(|l| l.strip_prefix("prog/xdp"))
        .and_then(|rest| {
            let mut it = rest.split_whitespace();
            while let Some(w) = it.next() {
                if w == "id" {
                    return it.next().and_then(|v| v.parse().ok());
                }
            }
            None
        });
    XdpState { flag, prog_id }
}

fn link_pin(s: &Scratch) -> PathBuf {
    s.persist.pin_dir.join("link-stt0")
}

#[test]
#[ignore = "needs root: BPF or network namespaces (cargo xtask test runs it)"]
fn driver_mode_attaches_to_veth_and_pins_the_link() {
    if !require_root() {
        return;
    }
    let ns = veth_ns("drv");
    let s = Scratch::new("attach-drv");
    assert_eq!(xdp_state(ns.name(), "stt0").flag, None, "fresh veth");
    let (dp, adopted, attached) = open_and_attach(&ns, &s, AttachMode::Driver);
    assert!(!adopted);
    assert_eq!(attached, Attached::New("driver"));
    assert!(link_pin(&s).exists(), "link-stt0 must be pinned");
    let st = xdp_state(ns.name(), "stt0");
    assert_eq!(st.flag.as_deref(), Some("xdp"), "native XDP: {st:?}");
    assert!(st.prog_id.is_some(), "a program id is shown: {st:?}");
    // The peer is untouched.
    assert_eq!(xdp_state(ns.name(), "stt1").flag, None);
    // The link is pinned: it outlives the process's handles.
    drop(dp);
    assert_eq!(xdp_state(ns.name(), "stt0"), st);
}

#[test]
#[ignore = "needs root: BPF or network namespaces (cargo xtask test runs it)"]
fn second_open_replaces_the_program_without_a_gap() {
    if !require_root() {
        return;
    }
    let ns = veth_ns("replace");
    let s = Scratch::new("attach-replace");
    let (dp, _, attached) = open_and_attach(&ns, &s, AttachMode::Driver);
    assert_eq!(attached, Attached::New("driver"));
    let first = xdp_state(ns.name(), "stt0");
    assert!(first.prog_id.is_some(), "{first:?}");
    drop(dp); // as if killed: the pins stay
    assert_eq!(
        xdp_state(ns.name(), "stt0"),
        first,
        "still attached after the first process is gone"
    );

    // Watch the interface while the second run takes over.
    let stop = Arc::new(AtomicBool::new(false));
    let watcher = {
        let stop = stop.clone();
        let name = ns.name().to_string();
        std::thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(30);
            let mut samples = Vec::new();
            while !stop.load(Ordering::Acquire)
                && Instant::now() < deadline
                && samples.len() < 10_000
            {
                samples.push(xdp_state(&name, "stt0"));
            }
            samples
        })
    };
    std::thread::sleep(Duration::from_millis(50));
    let (dp2, adopted, attached) = open_and_attach(&ns, &s, AttachMode::Driver);
    std::thread::sleep(Duration::from_millis(50));
    stop.store(true, Ordering::Release);
    let samples = watcher.join().expect("watcher");

    eprintln!(
        "takeover: {first:?} -> {:?}, {} samples while it ran",
        xdp_state(ns.name(), "stt0"),
        samples.len()
    );
    assert!(adopted, "the second run adopts the pinned maps");
    assert_eq!(attached, Attached::Replaced);
    let second = xdp_state(ns.name(), "stt0");
    assert_eq!(second.flag.as_deref(), Some("xdp"), "{second:?}");
    assert!(second.prog_id.is_some());
    assert_ne!(
        second.prog_id, first.prog_id,
        "the new run's program replaced the old one"
    );
    assert!(
        samples.len() >= 2,
        "the watcher must have sampled: {samples:?}"
    );
    for (i, smp) in samples.iter().enumerate() {
        assert!(
            smp.flag.as_deref() == Some("xdp") && smp.prog_id.is_some(),
            "sample {i} of {} during the takeover shows no XDP program: {smp:?}",
            samples.len()
        );
        assert!(
            smp.prog_id == first.prog_id || smp.prog_id == second.prog_id,
            "sample {i}: unexpected program {smp:?}"
        );
    }
    drop(dp2);
    assert_eq!(xdp_state(ns.name(), "stt0"), second);
}

#[test]
#[ignore = "needs root: BPF or network namespaces (cargo xtask test runs it)"]
fn remove_pins_detaches() {
    if !require_root() {
        return;
    }
    let ns = veth_ns("rm");
    let s = Scratch::new("attach-rm");
    let (dp, _, attached) = open_and_attach(&ns, &s, AttachMode::Driver);
    assert_eq!(attached, Attached::New("driver"));
    drop(dp);
    assert!(xdp_state(ns.name(), "stt0").prog_id.is_some());
    let detached = Dataplane::remove_pins(&s.persist()).expect("remove_pins");
    assert_eq!(detached, vec!["stt0".to_string()]);
    let st = xdp_state(ns.name(), "stt0");
    assert_eq!(
        st,
        XdpState {
            flag: None,
            prog_id: None
        },
        "remove_pins must detach"
    );
    assert!(!s.persist.pin_dir.exists(), "the pin directory is removed");
    assert!(!s.persist.state_file.exists(), "the state file is removed");
}

#[test]
#[ignore = "needs root: BPF or network namespaces (cargo xtask test runs it)"]
fn skb_mode_attaches() {
    if !require_root() {
        return;
    }
    let ns = veth_ns("skb");
    let s = Scratch::new("attach-skb");
    let (dp, _, attached) = open_and_attach(&ns, &s, AttachMode::Skb);
    assert_eq!(attached, Attached::New("skb"));
    assert!(link_pin(&s).exists());
    let st = xdp_state(ns.name(), "stt0");
    assert_eq!(
        st.flag.as_deref(),
        Some("xdpgeneric"),
        "generic XDP: {st:?}"
    );
    assert!(st.prog_id.is_some());
    drop(dp);
    Dataplane::remove_pins(&s.persist()).expect("remove_pins");
    assert_eq!(xdp_state(ns.name(), "stt0").flag, None);
}

#[test]
#[ignore = "needs root: BPF or network namespaces (cargo xtask test runs it)"]
fn auto_mode_attaches() {
    if !require_root() {
        return;
    }
    let ns = veth_ns("auto");
    let s = Scratch::new("attach-auto");
    let (_dp, _, attached) = open_and_attach(&ns, &s, AttachMode::Auto);
    let st = xdp_state(ns.name(), "stt0");
    // veth has native XDP, so auto picks driver mode; a kernel without it
    // falls back to generic mode, and `ip` must agree with what was reported.
    match &attached {
        Attached::New("driver") => assert_eq!(st.flag.as_deref(), Some("xdp"), "{st:?}"),
        Attached::FellBack { driver_error } => {
            eprintln!("driver mode failed on veth: {driver_error}");
            assert_eq!(st.flag.as_deref(), Some("xdpgeneric"), "{st:?}");
        }
        other => panic!("auto mode attached as {other:?}"),
    }
    assert!(st.prog_id.is_some());
    assert!(link_pin(&s).exists());
}

/// Real traffic: stt1 lives in a second namespace (the "client side"). A
/// UDP packet to the VIP sent on stt1 arrives on stt0, where the program
/// encapsulates it and bounces it with XDP_TX back out of stt0, so it
/// arrives on stt1, where a raw AF_PACKET socket captures it.
#[test]
#[ignore = "needs root: BPF or network namespaces (cargo xtask test runs it)"]
fn a_packet_to_the_vip_comes_back_encapsulated() {
    if !require_root() {
        return;
    }
    let ns = veth_ns("trf");
    let peer = Netns::new("trf-peer");
    ip(&["-n", ns.name(), "link", "set", "stt1", "netns", peer.name()]);
    ip(&["-n", peer.name(), "link", "set", "stt1", "up"]);
    let s = Scratch::new("attach-trf");
    // Generic mode: a native-mode XDP_TX on veth needs NAPI on the peer
    // (GRO or an XDP program there); generic mode transmits through the
    // ordinary stack.
    let (dp, _, attached) = open_and_attach(&ns, &s, AttachMode::Skb);
    assert_eq!(attached, Attached::New("skb"));
    let before = dp.path_counts().expect("counters");

    let payload = b"steer attach test";
    let frame = {
        let b = etherparse::PacketBuilder::ethernet2(STT1_MAC, STT0_MAC)
            .ipv4([198, 51, 100, 7], [203, 0, 113, 10], 64)
            .udp(40_000, 53);
        let mut v = Vec::new();
        b.write(&mut v, payload).expect("build");
        v
    };
    let sent = frame.clone();
    let got = peer.run(move || send_and_capture("stt1", &sent));
    let got = got.unwrap_or_else(|e| panic!("{e}"));

    let eth = etherparse::Ethernet2HeaderSlice::from_slice(&got).expect("ethernet");
    assert_eq!(eth.destination(), [2, 0, 0, 0, 0, 0xfe], "next-hop MAC");
    assert_eq!(eth.source(), STT0_MAC, "the MAC the packet arrived for");
    let (outer, inner) = etherparse::Ipv4Header::from_slice(&got[14..]).expect("outer");
    assert_eq!(outer.destination, [192, 0, 2, 11], "the backend");
    assert_eq!(outer.source, [198, 18, 0, 1]);
    assert_eq!(outer.protocol, etherparse::IpNumber::IPV4);
    assert_eq!(outer.header_checksum, outer.calc_header_checksum());
    assert_eq!(
        &inner[..frame.len() - 14],
        &frame[14..],
        "the inner packet is untouched"
    );
    let after = dp.path_counts().expect("counters");
    assert!(
        after[Branch::NewFlow as usize] > before[Branch::NewFlow as usize],
        "the attached program counted the new flow"
    );
}

/// Sends `frame` on `dev` with a raw socket and returns the first incoming
/// frame carrying IP-in-IP. Bounded: gives up after 5 s.
fn send_and_capture(dev: &str, frame: &[u8]) -> Result<Vec<u8>, String> {
    let err = |what: &str| format!("{what}: {}", std::io::Error::last_os_error());
    let proto = (libc::ETH_P_ALL as u16).to_be();
    // SAFETY: plain socket(2).
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, proto as i32) };
    if fd < 0 {
        return Err(err("socket(AF_PACKET)"));
    }
    // SAFETY: `fd` was just created and is owned here.
    let sock = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    let fd = sock.as_raw_fd();
    let name = std::ffi::CString::new(dev).expect("name");
    // SAFETY: NUL-terminated name.
    let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
    if ifindex == 0 {
        return Err(err("if_nametoindex"));
    }
    // SAFETY: an all-zero sockaddr_ll is valid; fields set below.
    let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    sll.sll_family = libc::AF_PACKET as u16;
    sll.sll_protocol = proto;
    sll.sll_ifindex = ifindex as i32;
    let sll_len = std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
    // SAFETY: `sll` is a valid sockaddr_ll of the given length.
    if unsafe { libc::bind(fd, (&sll as *const libc::sockaddr_ll).cast(), sll_len) } != 0 {
        return Err(err("bind"));
    }
    let tv = libc::timeval {
        tv_sec: 0,
        tv_usec: 200_000,
    };
    // SAFETY: a valid timeval of the given length.
    if unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&tv as *const libc::timeval).cast(),
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        )
    } != 0
    {
        return Err(err("SO_RCVTIMEO"));
    }
    // SAFETY: `frame` is valid for its length.
    let n = unsafe { libc::send(fd, frame.as_ptr().cast(), frame.len(), 0) };
    if n != frame.len() as isize {
        return Err(err("send"));
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut buf = vec![0u8; 2048];
    let mut seen = 0;
    while Instant::now() < deadline {
        // SAFETY: an all-zero sockaddr_ll is valid.
        let mut from: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        let mut from_len = sll_len;
        // SAFETY: buffers valid for their lengths.
        let n = unsafe {
            libc::recvfrom(
                fd,
                buf.as_mut_ptr().cast(),
                buf.len(),
                0,
                (&mut from as *mut libc::sockaddr_ll).cast(),
                &mut from_len,
            )
        };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            match e.kind() {
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted => continue,
                _ => return Err(format!("recvfrom: {e}")),
            }
        }
        seen += 1;
        let data = &buf[..n as usize];
        if from.sll_pkttype == libc::PACKET_OUTGOING || data.len() < 34 {
            continue;
        }
        // IPv4 (0x0800) carrying IPv4 (protocol 4).
        if data[12..14] == [0x08, 0x00] && data[14 + 9] == 4 {
            return Ok(data.to_vec());
        }
    }
    Err(format!(
        "no IP-in-IP frame came back on {dev} within 5 s ({seen} frames seen)"
    ))
}

/// Hardening item 17 on a real interface: a frame to the VIP sent to the
/// broadcast MAC leaves with stt0's own MAC as its source (read at
/// attach), not the broadcast MAC and not the config's fallback
/// `dataplane.source_mac` (02:00:00:00:00:5e in the fixture).
#[test]
#[ignore = "needs root: BPF or network namespaces (cargo xtask test runs it)"]
fn a_broadcast_frame_leaves_with_the_interfaces_own_mac() {
    if !require_root() {
        return;
    }
    let ns = veth_ns("bcast");
    let peer = Netns::new("bcast-peer");
    ip(&["-n", ns.name(), "link", "set", "stt1", "netns", peer.name()]);
    ip(&["-n", peer.name(), "link", "set", "stt1", "up"]);
    let s = Scratch::new("attach-bcast");
    let (_dp, _, attached) = open_and_attach(&ns, &s, AttachMode::Skb);
    assert_eq!(attached, Attached::New("skb"));
    let frame = {
        let b = etherparse::PacketBuilder::ethernet2(STT1_MAC, [0xff; 6])
            .ipv4([198, 51, 100, 7], [203, 0, 113, 10], 64)
            .udp(40_001, 53);
        let mut v = Vec::new();
        b.write(&mut v, b"broadcast").expect("build");
        v
    };
    let got = peer.run(move || send_and_capture("stt1", &frame));
    let got = got.unwrap_or_else(|e| panic!("{e}"));
    let eth = etherparse::Ethernet2HeaderSlice::from_slice(&got).expect("ethernet");
    assert_eq!(eth.destination(), [2, 0, 0, 0, 0, 0xfe], "next-hop MAC");
    assert_eq!(eth.source(), STT0_MAC, "stt0's own MAC");
}

/// Hardening item 18 on a real interface: with a jumbo MTU (9,000) on both
/// ends of the veth, native XDP attaches. veth refuses a program that is
/// not multi-buffer aware when the peer's MTU exceeds one page ("peer MTU
/// is too large to set XDP").
#[test]
#[ignore = "needs root: BPF or network namespaces (cargo xtask test runs it)"]
fn driver_mode_attaches_to_a_jumbo_mtu_veth() {
    if !require_root() {
        return;
    }
    let ns = veth_ns("jumbo");
    ip(&["-n", ns.name(), "link", "set", "stt0", "mtu", "9000"]);
    ip(&["-n", ns.name(), "link", "set", "stt1", "mtu", "9000"]);
    let s = Scratch::new("attach-jumbo");
    let (_dp, _, attached) = open_and_attach(&ns, &s, AttachMode::Driver);
    assert_eq!(attached, Attached::New("driver"));
    let st = xdp_state(ns.name(), "stt0");
    assert_eq!(st.flag.as_deref(), Some("xdp"), "{st:?}");
}
