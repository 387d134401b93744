//! The data plane: loads the XDP program, programs its maps and runs packets
//! through it with BPF_PROG_TEST_RUN. This is the only module that touches
//! BPF objects. Map layout and the table flip: docs/architecture.md.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::IpAddr;
use std::os::fd::{AsFd, AsRawFd};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use aya::maps::{Array, HashMap, Map, MapData, PerCpuArray};
use aya::programs::{ProgramError, TestRun, TestRunOptions, Xdp};
use aya::{Ebpf, EbpfLoader};
use steer_common::{
    maglev, names, ring_index, ring_values, vip_filter_bit, AddrKey, Branch, Counters, DropReason,
    Real, Settings, VipInfo, VipKey, FAMILY_V4, FAMILY_V6, REAL_F_DOWN, REAL_F_PRESENT,
    SETTINGS_F_PORT0_VIPS, SETTINGS_F_READY, VIP_FILTER_WORDS, VIP_F_CLIENT_AFFINITY,
};

mod bench;
pub mod persist;
pub mod verdict;

pub use bench::BenchProgram;

use std::path::{Path, PathBuf};

use aya::programs::links::{FdLink, PinnedLink};
use aya::programs::xdp::{XdpLink, XdpMode};

use crate::config::{AttachMode, Config, DataplaneConfig};
use crate::policy::{self, BackendState, DesiredService};

/// The compiled XDP program, built by build.rs (production object: no
/// benchmark entries; see `bench.rs`).
static PROGRAM: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/steer"));
/// The programs `load` loads from `PROGRAM`.
const PROGRAMS: [&str; 1] = [names::PROG_STEER];

/// How long a ring that was just retired may still be read by a packet that
/// loaded the old generation. The program runs inside an RCU read-side
/// section of a few microseconds; this is a wide margin.
const GRACE: Duration = Duration::from_millis(10);

#[derive(Debug, thiserror::Error)]
pub enum DataplaneError {
    #[error("loading the XDP program failed: {0}. Is this root on Linux ≥ 5.15 with BPF enabled?")]
    Load(#[source] aya::EbpfError),
    #[error("the XDP program was rejected: {0}")]
    Program(#[source] ProgramError),
    #[error("BPF map {name}: {source}")]
    Map {
        name: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
    #[error("BPF map {name} is missing from the program, or has an unexpected type")]
    MissingMap { name: &'static str },
    #[error("XDP program {name} is missing from the compiled object")]
    MissingProgram { name: &'static str },
    #[error("memory-mapping BPF map {name} failed: {source}")]
    Mmap {
        name: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("too many {what}: the data plane holds at most {max} (raise dataplane.{knob})")]
    Capacity {
        what: &'static str,
        max: u32,
        knob: &'static str,
    },
    #[error("service {service}: IPv6 VIP cannot be sent to IPv4 backend {backend}")]
    FamilyMismatch { service: String, backend: String },
    #[error("unknown service {0:?}")]
    UnknownService(String),
    #[error("unknown backend {0:?}")]
    UnknownBackend(String),
    #[error("frame of {0} bytes is shorter than an Ethernet header (14 bytes); XDP never sees such frames")]
    FrameTooShort(usize),
    #[error("running the program failed: {0}")]
    Run(#[source] ProgramError),
    #[error("{path} is not on a BPF filesystem: mount one with `mount -t bpf bpf /sys/fs/bpf`, or \
             set dataplane.pin_path to a directory on one (note: `ip netns exec` hides the host's \
             /sys/fs/bpf; enter a network namespace with `nsenter --net=/var/run/netns/NAME` instead)")]
    NotBpffs { path: PathBuf },
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "the pinned map {name} holds {found} entries but the config asks for {want}; \
             sizes (conntrack_size, maglev_table_size, max_tables, max_reals) cannot change \
             while steer is attached: restore the old values, or run `steer stop --detach` first \
             (this drops established flows' state)"
    )]
    PinnedSizeMismatch {
        name: &'static str,
        found: u32,
        want: u32,
    },
    #[error("attaching XDP to {iface} in {mode} mode failed: {source}")]
    Attach {
        iface: String,
        mode: &'static str,
        #[source]
        source: ProgramError,
    },
    #[error("pinning the XDP link of {iface}: {source}")]
    PinLink {
        iface: String,
        #[source]
        source: aya::pin::PinError,
    },
}

type Result<T, E = DataplaneError> = std::result::Result<T, E>;

fn map_err(name: &'static str) -> impl Fn(aya::maps::MapError) -> DataplaneError {
    move |source| DataplaneError::Map { name, source }
}

/// The verdict of one packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Verdict {
    Aborted,
    Drop,
    Pass,
    Tx,
    Redirect,
    Unknown(u32),
}

impl Verdict {
    fn from_action(a: u32) -> Self {
        match a {
            0 => Verdict::Aborted,
            1 => Verdict::Drop,
            2 => Verdict::Pass,
            3 => Verdict::Tx,
            4 => Verdict::Redirect,
            n => Verdict::Unknown(n),
        }
    }
}

/// One packet after the program ran.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunOutput {
    pub verdict: Verdict,
    /// The frame as the program left it.
    pub data: Vec<u8>,
    /// What the kernel measured for this run.
    pub duration: Duration,
}

/// A shared, writable mapping of an mmapable BPF array.
struct Mmap {
    ptr: *mut u8,
    len: usize,
}

impl Mmap {
    fn new(name: &'static str, data: &MapData, bytes: usize) -> Result<Self> {
        // SAFETY: sysconf has no preconditions.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(4096) as usize;
        let len = bytes.div_ceil(page) * page;
        let fd = data.fd().as_fd().as_raw_fd();
        // SAFETY: mapping a BPF array map fd created with BPF_F_MMAPABLE;
        // `len` covers whole pages of the map's value area.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(DataplaneError::Mmap {
                name,
                source: std::io::Error::last_os_error(),
            });
        }
        Ok(Mmap {
            ptr: ptr.cast(),
            len,
        })
    }

    /// The 32-bit word at byte offset `off`.
    fn word(&self, off: usize) -> &AtomicU32 {
        assert!(
            off.is_multiple_of(4) && off + 4 <= self.len,
            "mmap offset {off} out of range"
        );
        // SAFETY: in bounds and aligned (checked above); the kernel and BPF
        // programs access these words concurrently, hence atomics.
        unsafe { AtomicU32::from_ptr(self.ptr.add(off).cast()) }
    }
}

impl Drop for Mmap {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly what `new` mapped.
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}

// SAFETY: the mapping is plain shared memory accessed through atomics.
unsafe impl Send for Mmap {}
// SAFETY: as above.
unsafe impl Sync for Mmap {}

#[derive(Clone, Debug)]
struct RealSlot {
    id: u32,
    address: IpAddr,
}

/// A service's reals, allocated but not yet written.
struct Prepared {
    reals: BTreeMap<String, RealSlot>,
    retired: Vec<u32>,
    inputs: Vec<(u32, String, u32)>,
}

#[derive(Debug)]
struct ServiceSlot {
    /// Doubles as the table id.
    vip_id: u32,
    key: VipKey,
    info: VipInfo,
    reals: BTreeMap<String, RealSlot>,
    /// The active ring's content.
    table: Vec<u32>,
    /// What `table` was built from: (real id, backend name, weight).
    inputs: Option<Vec<(u32, String, u32)>>,
    generation: u32,
    last_flip: Option<Instant>,
}

/// Sizes fixed at load time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    pub ring_size: u32,
    pub max_tables: u32,
    pub max_reals: u32,
    pub conntrack_size: u32,
}

impl Limits {
    pub fn from_config(cfg: &DataplaneConfig) -> Self {
        Limits {
            ring_size: cfg.maglev_table_size,
            max_tables: cfg.max_tables,
            max_reals: cfg.max_reals,
            conntrack_size: cfg.conntrack_size,
        }
    }
}

/// A loaded XDP program and the state steer has written into its maps.
pub struct Dataplane {
    ebpf: Ebpf,
    rings: Mmap,
    gens: Mmap,
    limits: Limits,
    services: BTreeMap<String, ServiceSlot>,
    free_vips: Vec<u32>,
    real_generation: Vec<u32>,
    /// Freed real ids, reused oldest first so stale flows see a generation
    /// change long after the fact rather than at once.
    free_reals: VecDeque<u32>,
    next_real: u32,
    config: Option<Config>,
    state: BackendState,
    /// The `VIP_FILTER` bitmap as last written.
    filter: Vec<u64>,
    persist: Option<Persist>,
    /// `REALS` entries as last written, so unchanged ones are skipped.
    written: std::collections::HashMap<u32, Real>,
    /// The state file as last written, so unchanged state is not rewritten.
    saved: Option<persist::SavedState>,
    /// VIPS keys this process has written (or adopted).
    vips_written: std::collections::HashSet<VipKey>,
}

/// Where a long-running data plane keeps what must survive a restart.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Persist {
    /// A directory on bpffs for the pinned maps and XDP links.
    pub pin_dir: PathBuf,
    /// The userspace bookkeeping (JSON).
    pub state_file: PathBuf,
}

/// How an interface ended up attached.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Attached {
    /// Newly attached in this mode.
    New(&'static str),
    /// `auto` mode: driver mode failed, generic (skb) mode used instead.
    FellBack { driver_error: String },
    /// A pinned link from a previous run was taken over: the program was
    /// replaced atomically, without a moment of no program.
    Replaced,
}

/// All the maps the program declares, for pinning.
const ALL_MAPS: [&str; 12] = [
    names::SETTINGS,
    names::VIPS,
    names::VIP_ADDRS,
    names::VIP_FILTER,
    names::REALS,
    names::RINGS,
    names::TABLE_GEN,
    names::CONNTRACK,
    names::VIP_STATS,
    names::REAL_STATS,
    names::DROP_STATS,
    names::PATH_STATS,
];

fn link_pin(pin_dir: &Path, iface: &str) -> PathBuf {
    pin_dir.join(format!("link-{iface}"))
}

/// The conventional bpffs mount point.
const BPFFS: &str = "/sys/fs/bpf";

/// Makes sure a BPF filesystem is mounted at /sys/fs/bpf, mounting one (as
/// systemd does on most distributions) if not. Safe to call concurrently:
/// only one mount is ever made.
pub fn ensure_bpffs() -> Result<()> {
    static MOUNT: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _guard = MOUNT.lock().unwrap_or_else(|e| e.into_inner());
    if is_bpffs(Path::new(BPFFS)) {
        return Ok(());
    }
    mount_bpffs()
}

fn mount_bpffs() -> Result<()> {
    let target = std::ffi::CString::new(BPFFS).expect("no NUL");
    // SAFETY: all pointers are valid NUL-terminated strings for the call.
    let rc = unsafe {
        libc::mount(
            c"bpf".as_ptr(),
            target.as_ptr(),
            c"bpf".as_ptr(),
            0,
            c"mode=0700".as_ptr().cast(),
        )
    };
    if rc != 0 {
        return Err(DataplaneError::Io {
            what: "mounting bpffs at",
            path: PathBuf::from(BPFFS),
            source: std::io::Error::last_os_error(),
        });
    }
    tracing::info!(path = BPFFS, "mounted bpffs");
    Ok(())
}

fn is_bpffs(path: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt as _;
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: statfs writes into the zeroed struct we pass; `c` is a valid
    // NUL-terminated path.
    unsafe {
        let mut st: libc::statfs = std::mem::zeroed();
        libc::statfs(c.as_ptr(), &mut st) == 0 && st.f_type as i64 == 0xcafe_4a11
    }
}

fn addr_bytes(a: &IpAddr) -> ([u8; 16], u8) {
    let mut out = [0u8; 16];
    match a {
        IpAddr::V4(v4) => {
            out[..4].copy_from_slice(&v4.octets());
            (out, FAMILY_V4)
        }
        IpAddr::V6(v6) => (v6.octets(), FAMILY_V6),
    }
}

fn prefix_mask(host_bits: u32) -> u32 {
    if host_bits >= 32 {
        u32::MAX
    } else {
        (1u32 << host_bits) - 1
    }
}

impl Dataplane {
    /// Loads the XDP program with map sizes from `cfg` (it is not attached
    /// anywhere; see `attach`).
    pub fn load(cfg: &DataplaneConfig) -> Result<Self> {
        Self::load_with(Limits::from_config(cfg))
    }

    pub fn load_with(limits: Limits) -> Result<Self> {
        Self::load_inner(PROGRAM, &PROGRAMS, limits, &[])
    }

    /// Loads `programs` of `object` (the production one, or the benchmark
    /// one in `bench.rs`).
    fn load_inner(
        object: &[u8],
        programs: &[&'static str],
        limits: Limits,
        pins: &[(&'static str, PathBuf)],
    ) -> Result<Self> {
        let mut loader = EbpfLoader::new();
        for (name, path) in pins {
            loader.map_pin_path(name, path.as_path());
        }
        loader
            .map_max_entries(names::CONNTRACK, limits.conntrack_size)
            .map_max_entries(
                names::RINGS,
                ring_values(limits.max_tables, limits.ring_size),
            )
            .map_max_entries(names::TABLE_GEN, limits.max_tables)
            .map_max_entries(names::VIPS, limits.max_tables)
            .map_max_entries(names::VIP_ADDRS, limits.max_tables)
            .map_max_entries(names::VIP_STATS, limits.max_tables)
            .map_max_entries(names::REALS, limits.max_reals)
            .map_max_entries(names::REAL_STATS, limits.max_reals);
        let mut ebpf = loader.load(object).map_err(DataplaneError::Load)?;
        for &name in programs {
            let prog: &mut Xdp = ebpf
                .program_mut(name)
                .ok_or(DataplaneError::MissingProgram { name })?
                .try_into()
                .map_err(DataplaneError::Program)?;
            prog.load().map_err(DataplaneError::Program)?;
        }
        let rings = {
            let data = map_data(&ebpf, names::RINGS)?;
            Mmap::new(
                names::RINGS,
                data,
                ring_values(limits.max_tables, limits.ring_size) as usize * 64,
            )?
        };
        let gens = {
            let data = map_data(&ebpf, names::TABLE_GEN)?;
            // Array values are 8-byte aligned: u32 generation i is at 8*i.
            Mmap::new(names::TABLE_GEN, data, limits.max_tables as usize * 8)?
        };
        Ok(Dataplane {
            ebpf,
            rings,
            gens,
            limits,
            services: BTreeMap::new(),
            free_vips: (0..limits.max_tables).rev().collect(),
            real_generation: vec![0; limits.max_reals as usize],
            free_reals: VecDeque::new(),
            next_real: 0,
            config: None,
            state: BackendState::default(),
            filter: vec![0; VIP_FILTER_WORDS as usize],
            persist: None,
            written: std::collections::HashMap::new(),
            saved: None,
            vips_written: std::collections::HashSet::new(),
        })
    }

    /// Loads the program with its maps pinned under `persist.pin_dir`. If
    /// a previous run left pinned maps (and its state file), they are
    /// adopted: established flows, tables and counters carry on. Returns
    /// whether state was adopted.
    pub fn open(cfg: &DataplaneConfig, persist: Persist) -> Result<(Self, bool)> {
        let limits = Limits::from_config(cfg);
        let dir = &persist.pin_dir;
        let parent = dir.parent().unwrap_or(Path::new("/"));
        if !dir.exists() && parent == Path::new(BPFFS) {
            ensure_bpffs()?;
        }
        if !dir.exists() && !is_bpffs(parent) {
            return Err(DataplaneError::NotBpffs {
                path: parent.to_path_buf(),
            });
        }
        std::fs::create_dir_all(dir).map_err(|source| DataplaneError::Io {
            what: "creating pin directory",
            path: dir.clone(),
            source,
        })?;
        if !is_bpffs(dir) {
            return Err(DataplaneError::NotBpffs { path: dir.clone() });
        }
        let existed = dir.join(names::RINGS).exists();
        let pins: Vec<(&'static str, PathBuf)> =
            ALL_MAPS.iter().map(|n| (*n, dir.join(n))).collect();
        let mut dp = Self::load_inner(PROGRAM, &PROGRAMS, limits, &pins)?;
        dp.check_pinned_sizes()?;
        dp.persist = Some(persist.clone());
        let saved = if existed {
            persist::load(&persist.state_file).map_err(|source| DataplaneError::Io {
                what: "reading state file",
                path: persist.state_file.clone(),
                source,
            })?
        } else {
            None
        };
        let adopted = match saved {
            Some(s) if dp.adopt(&s) => {
                dp.reconcile_adopted()?;
                true
            }
            _ => {
                if existed {
                    dp.reset_pinned()?;
                }
                false
            }
        };
        Ok((dp, adopted))
    }

    fn check_pinned_sizes(&self) -> Result<()> {
        let l = self.limits;
        for (name, want) in [
            (names::CONNTRACK, l.conntrack_size),
            (names::RINGS, ring_values(l.max_tables, l.ring_size)),
            (names::REALS, l.max_reals),
            (names::TABLE_GEN, l.max_tables),
        ] {
            let map = self
                .ebpf
                .map(name)
                .ok_or(DataplaneError::MissingMap { name })?;
            let data = match map {
                Map::Array(d) | Map::LruHashMap(d) => d,
                _ => return Err(DataplaneError::MissingMap { name }),
            };
            let found = data.info().map_err(map_err(name))?.max_entries();
            if found != want {
                return Err(DataplaneError::PinnedSizeMismatch { name, found, want });
            }
        }
        Ok(())
    }

    /// Takes over the bookkeeping of a previous run. False if it does not
    /// match this configuration's sizes (then the maps are reset instead).
    fn adopt(&mut self, s: &persist::SavedState) -> bool {
        let l = self.limits;
        if s.version != persist::STATE_VERSION
            || (s.ring_size, s.max_tables, s.max_reals, s.conntrack_size)
                != (l.ring_size, l.max_tables, l.max_reals, l.conntrack_size)
        {
            return false;
        }
        let mut used_vips = BTreeSet::new();
        for svc in &s.services {
            let key = VipKey {
                addr: svc.addr,
                port: svc.port,
                proto: svc.proto,
                family: svc.family,
            };
            let generation = self
                .gens
                .word(svc.vip_id as usize * 8)
                .load(Ordering::Acquire);
            let table = (0..l.ring_size)
                .map(|i| {
                    let flat = ring_index(svc.vip_id, generation, l.ring_size, i);
                    self.rings.word(flat as usize * 4).load(Ordering::Relaxed)
                })
                .collect();
            used_vips.insert(svc.vip_id);
            self.services.insert(
                svc.name.clone(),
                ServiceSlot {
                    vip_id: svc.vip_id,
                    key,
                    info: VipInfo {
                        vip_id: svc.vip_id,
                        table_id: svc.vip_id,
                        flags: svc.flags,
                        _pad: 0,
                    },
                    reals: svc
                        .reals
                        .iter()
                        .map(|(n, r)| {
                            (
                                n.clone(),
                                RealSlot {
                                    id: r.id,
                                    address: r.address,
                                },
                            )
                        })
                        .collect(),
                    table,
                    inputs: None,
                    generation,
                    // A packet may still hold the other ring: wait before
                    // reusing it.
                    last_flip: Some(Instant::now()),
                },
            );
        }
        self.free_vips = (0..l.max_tables)
            .rev()
            .filter(|v| !used_vips.contains(v))
            .collect();
        for (id, g) in &s.real_generation {
            if let Some(slot) = self.real_generation.get_mut(*id as usize) {
                *slot = *g;
            }
        }
        self.free_reals = s.free_reals.iter().copied().collect();
        self.next_real = s.next_real;
        self.state.drained = s.drained.iter().cloned().collect();
        // The filter is recomputed from the adopted services.
        self.filter = vec![u64::MAX; VIP_FILTER_WORDS as usize];
        true
    }

    /// The state file is written after the maps, so a crash in between can
    /// leave maps ahead of it. Make the maps agree with the adopted
    /// bookkeeping: any real the file does not own is written absent and
    /// moved to a generation newer than anything a conntrack entry can
    /// hold, VIPs the file does not know are removed, and the filter bitmap
    /// is read back as it is.
    fn reconcile_adopted(&mut self) -> Result<()> {
        let owned: std::collections::HashMap<u32, IpAddr> = self
            .services
            .values()
            .flat_map(|s| s.reals.values().map(|r| (r.id, r.address)))
            .collect();
        let mut stray = Vec::new();
        {
            let reals: Array<_, Real> = typed(&mut self.ebpf, names::REALS)?;
            for id in 0..self.limits.max_reals {
                let r = reals.get(&id, 0).map_err(map_err(names::REALS))?;
                let g = &mut self.real_generation[id as usize];
                match owned.get(&id) {
                    Some(addr) if addr_bytes(addr).0 == r.addr && r.generation == *g => {
                        self.written.insert(id, r);
                    }
                    _ if r.flags == 0 && r.generation <= *g && !owned.contains_key(&id) => {
                        self.written.insert(id, r);
                    }
                    _ => {
                        *g = (*g).max(r.generation).wrapping_add(1);
                        stray.push(id);
                    }
                }
            }
        }
        for id in stray {
            if let Some((addr, up)) = self
                .services
                .values()
                .flat_map(|s| s.reals.values())
                .find(|r| r.id == id)
                .map(|r| (r.address, true))
            {
                // Owned, but the map disagrees: rewrite it (new generation,
                // so old conntrack entries re-select).
                self.write_real(id, Some((&addr, up)))?;
            } else {
                self.write_real(id, None)?;
                if id < self.next_real && !self.free_reals.contains(&id) {
                    self.free_reals.push_back(id);
                }
            }
        }
        let known: std::collections::HashSet<VipKey> =
            self.services.values().map(|s| s.key).collect();
        let mut vips: HashMap<_, VipKey, VipInfo> = typed(&mut self.ebpf, names::VIPS)?;
        let keys: Vec<VipKey> = vips.keys().filter_map(|k| k.ok()).collect();
        for k in keys.iter().filter(|k| !known.contains(k)) {
            let _ = vips.remove(k);
        }
        let bits: Array<_, u64> = typed(&mut self.ebpf, names::VIP_FILTER)?;
        for i in 0..VIP_FILTER_WORDS {
            self.filter[i as usize] = bits.get(&i, 0).map_err(map_err(names::VIP_FILTER))?;
        }
        Ok(())
    }

    /// Pinned maps without usable bookkeeping: forget every service, and
    /// move every real to a new generation so no old conntrack entry can
    /// follow a real id that gets reused for another backend.
    fn reset_pinned(&mut self) -> Result<()> {
        {
            let reals: Array<_, Real> = typed(&mut self.ebpf, names::REALS)?;
            for id in 0..self.limits.max_reals {
                let r = reals.get(&id, 0).map_err(map_err(names::REALS))?;
                self.real_generation[id as usize] = r.generation.wrapping_add(1);
            }
        }
        for id in 0..self.limits.max_reals {
            self.write_real(id, None)?;
        }
        let mut vips: HashMap<_, VipKey, VipInfo> = typed(&mut self.ebpf, names::VIPS)?;
        let keys: Vec<VipKey> = vips.keys().filter_map(|k| k.ok()).collect();
        for k in keys {
            let _ = vips.remove(&k);
        }
        let mut addrs: HashMap<_, AddrKey, u32> = typed(&mut self.ebpf, names::VIP_ADDRS)?;
        let keys: Vec<AddrKey> = addrs.keys().filter_map(|k| k.ok()).collect();
        for k in keys {
            let _ = addrs.remove(&k);
        }
        self.filter = vec![u64::MAX; VIP_FILTER_WORDS as usize];
        self.write_filter(std::iter::empty(), false)
    }

    fn save_state(&mut self) -> Result<()> {
        let Some(p) = self.persist.clone() else {
            return Ok(());
        };
        let l = self.limits;
        let state = persist::SavedState {
            version: persist::STATE_VERSION,
            ring_size: l.ring_size,
            max_tables: l.max_tables,
            max_reals: l.max_reals,
            conntrack_size: l.conntrack_size,
            services: self
                .services
                .iter()
                .map(|(name, s)| persist::SavedService {
                    name: name.clone(),
                    vip_id: s.vip_id,
                    addr: s.key.addr,
                    port: s.key.port,
                    proto: s.key.proto,
                    family: s.key.family,
                    flags: s.info.flags,
                    generation: s.generation,
                    reals: s
                        .reals
                        .iter()
                        .map(|(n, r)| {
                            (
                                n.clone(),
                                persist::SavedReal {
                                    id: r.id,
                                    address: r.address,
                                },
                            )
                        })
                        .collect(),
                })
                .collect(),
            real_generation: self
                .real_generation
                .iter()
                .enumerate()
                .filter(|(_, g)| **g != 0)
                .map(|(i, g)| (i as u32, *g))
                .collect(),
            free_reals: self.free_reals.iter().copied().collect(),
            next_real: self.next_real,
            drained: self.state.drained.iter().cloned().collect(),
        };
        if self.saved.as_ref() == Some(&state) {
            return Ok(());
        }
        persist::save(&p.state_file, &state).map_err(|source| DataplaneError::Io {
            what: "writing state file",
            path: p.state_file.clone(),
            source,
        })?;
        self.saved = Some(state);
        Ok(())
    }

    /// Attaches the program to `iface`, or takes over the link a previous
    /// run pinned (replacing its program atomically). The link is pinned,
    /// so forwarding continues if this process dies.
    pub fn attach(&mut self, iface: &str, mode: AttachMode) -> Result<Attached> {
        let pin = self.persist.as_ref().map(|p| link_pin(&p.pin_dir, iface));
        let prog: &mut Xdp = self
            .ebpf
            .program_mut(names::PROG_STEER)
            .ok_or(DataplaneError::MissingProgram {
                name: names::PROG_STEER,
            })?
            .try_into()
            .map_err(DataplaneError::Program)?;
        if let Some(pin) = pin.as_ref().filter(|p| p.exists()) {
            let link = PinnedLink::from_pin(pin).map_err(|e| DataplaneError::Io {
                what: "opening pinned link",
                path: pin.clone(),
                source: std::io::Error::other(e),
            })?;
            let link = XdpLink::try_from(FdLink::from(link)).map_err(|e| DataplaneError::Io {
                what: "pinned link is not an XDP link",
                path: pin.clone(),
                source: std::io::Error::other(e),
            })?;
            prog.attach_to_link(link)
                .map_err(|source| DataplaneError::Attach {
                    iface: iface.to_string(),
                    mode: "replace",
                    source,
                })?;
            return Ok(Attached::Replaced);
        }
        let attempt = |prog: &mut Xdp, mode: XdpMode, name: &'static str| {
            prog.attach(iface, mode)
                .map_err(|source| DataplaneError::Attach {
                    iface: iface.to_string(),
                    mode: name,
                    source,
                })
        };
        let (id, outcome) = match mode {
            AttachMode::Driver => (
                attempt(prog, XdpMode::Driver, "driver")?,
                Attached::New("driver"),
            ),
            AttachMode::Skb => (attempt(prog, XdpMode::Skb, "skb")?, Attached::New("skb")),
            AttachMode::Auto => match attempt(prog, XdpMode::Driver, "driver") {
                Ok(id) => (id, Attached::New("driver")),
                Err(e) => (
                    attempt(prog, XdpMode::Skb, "skb")?,
                    Attached::FellBack {
                        driver_error: format!("{e:#}"),
                    },
                ),
            },
        };
        if let Some(pin) = pin {
            let link = prog.take_link(id).map_err(DataplaneError::Program)?;
            let fd = FdLink::try_from(link).map_err(|e| DataplaneError::Io {
                what: "XDP link is not a bpf_link",
                path: pin.clone(),
                source: std::io::Error::other(e),
            })?;
            fd.pin(&pin).map_err(|source| DataplaneError::PinLink {
                iface: iface.to_string(),
                source,
            })?;
        }
        Ok(outcome)
    }

    /// Detaches from every interface that has a pinned link and removes
    /// every pin and the state file: nothing of steer stays in the kernel.
    /// Works without a loaded program, for cleaning up after a killed
    /// daemon.
    pub fn remove_pins(persist: &Persist) -> Result<Vec<String>> {
        let mut detached = Vec::new();
        let dir = &persist.pin_dir;
        let entries = match std::fs::read_dir(dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(detached),
            Err(source) => {
                return Err(DataplaneError::Io {
                    what: "reading pin directory",
                    path: dir.clone(),
                    source,
                })
            }
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            if let Some(iface) = name.strip_prefix("link-") {
                // Unpinning drops the last reference: the link detaches.
                if let Ok(link) = PinnedLink::from_pin(&path) {
                    let _ = link.unpin();
                }
                detached.push(iface.to_string());
            }
            if path.exists() {
                std::fs::remove_file(&path).map_err(|source| DataplaneError::Io {
                    what: "removing pin",
                    path: path.clone(),
                    source,
                })?;
            }
        }
        let _ = std::fs::remove_dir(dir);
        match std::fs::remove_file(&persist.state_file) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(DataplaneError::Io {
                    what: "removing state file",
                    path: persist.state_file.clone(),
                    source,
                })
            }
        }
        Ok(detached)
    }

    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// The backend state last programmed (or adopted from a previous run).
    pub fn backend_state(&self) -> &BackendState {
        &self.state
    }

    /// Programs every map from `cfg` with the given backends marked down.
    pub fn apply(&mut self, cfg: &Config, down: &BTreeSet<String>) -> Result<()> {
        let state = BackendState {
            down: down.clone(),
            drained: self.state.drained.clone(),
        };
        self.apply_state(cfg, state)
    }

    /// Programs every map from `cfg` and `state`.
    pub fn apply_state(&mut self, cfg: &Config, state: BackendState) -> Result<()> {
        let desired = policy::desired(cfg, &state);
        self.write_settings(&cfg.dataplane, &desired)?;
        self.apply_desired(&desired)?;
        self.config = Some(cfg.clone());
        self.state = state;
        self.save_state()
    }

    /// Marks a backend down (in every service) or up again.
    pub fn set_backend_down(&mut self, backend: &str, down: bool) -> Result<()> {
        let cfg = self
            .config
            .clone()
            .ok_or_else(|| DataplaneError::UnknownBackend(backend.to_string()))?;
        if !cfg.backends.iter().any(|b| b.name == backend) {
            return Err(DataplaneError::UnknownBackend(backend.to_string()));
        }
        let mut state = self.state.clone();
        if down {
            state.down.insert(backend.to_string());
        } else {
            state.down.remove(backend);
        }
        self.apply_state(&cfg, state)
    }

    fn write_settings(&mut self, cfg: &DataplaneConfig, desired: &[DesiredService]) -> Result<()> {
        let mut s = Settings {
            ring_size: self.limits.ring_size,
            mtu: cfg.mtu,
            next_hop_mac: cfg.next_hop_mac,
            ttl: cfg.ttl,
            flags: SETTINGS_F_READY,
            ..Default::default()
        };
        if let Some(p) = &cfg.encap_source_v4 {
            s.src4_base = p.addr.octets();
            s.src4_mask = prefix_mask(32 - p.len as u32);
        }
        if let Some(p) = &cfg.encap_source_v6 {
            s.src6_base = p.addr.octets();
            s.src6_mask = prefix_mask(128 - p.len as u32);
        }
        if desired.iter().any(|d| d.port == 0) {
            s.flags |= SETTINGS_F_PORT0_VIPS;
        }
        let mut map: Array<_, Settings> = typed(&mut self.ebpf, names::SETTINGS)?;
        map.set(0, s, 0).map_err(map_err(names::SETTINGS))
    }

    fn alloc_real(&mut self) -> Result<u32> {
        if let Some(id) = self.free_reals.pop_front() {
            self.real_generation[id as usize] += 1;
            return Ok(id);
        }
        if self.next_real >= self.limits.max_reals {
            return Err(DataplaneError::Capacity {
                what: "service backends",
                max: self.limits.max_reals,
                knob: "max_reals",
            });
        }
        self.next_real += 1;
        Ok(self.next_real - 1)
    }

    fn apply_desired(&mut self, desired: &[DesiredService]) -> Result<()> {
        for d in desired {
            if d.vip.is_ipv6() {
                if let Some(b) = d.backends.iter().find(|b| b.address.is_ipv4()) {
                    return Err(DataplaneError::FamilyMismatch {
                        service: d.name.clone(),
                        backend: b.name.clone(),
                    });
                }
            }
        }
        // 1. Services that disappeared (or whose VIP changed) are removed.
        let wanted: BTreeMap<&str, &DesiredService> =
            desired.iter().map(|d| (d.name.as_str(), d)).collect();
        let stale: Vec<String> = self
            .services
            .iter()
            .filter(|(name, slot)| match wanted.get(name.as_str()) {
                None => true,
                Some(d) => vip_key(d) != slot.key,
            })
            .map(|(n, _)| n.clone())
            .collect();
        for name in stale {
            self.remove_service(&name)?;
        }
        // 2. Add or update the rest, filter bits first.
        self.write_filter(desired.iter().map(|d| vip_key(d).addr), true)?;
        self.apply_services(desired)?;
        self.write_vip_addrs()
    }

    fn remove_service(&mut self, name: &str) -> Result<()> {
        let Some(slot) = self.services.remove(name) else {
            return Ok(());
        };
        let mut vips: HashMap<_, VipKey, VipInfo> = typed(&mut self.ebpf, names::VIPS)?;
        match vips.remove(&slot.key) {
            Ok(()) | Err(aya::maps::MapError::KeyNotFound) => {}
            Err(e) => return Err(map_err(names::VIPS)(e)),
        }
        self.vips_written.remove(&slot.key);
        for real in slot.reals.values() {
            self.write_real(real.id, None)?;
            self.free_reals.push_back(real.id);
        }
        self.free_vips.push(slot.vip_id);
        Ok(())
    }

    fn write_real(&mut self, id: u32, value: Option<(&IpAddr, bool)>) -> Result<()> {
        let real = match value {
            None => Real {
                generation: self.real_generation[id as usize],
                ..Default::default()
            },
            Some((addr, up)) => {
                let (addr, family) = addr_bytes(addr);
                Real {
                    addr,
                    family,
                    flags: REAL_F_PRESENT | if up { 0 } else { REAL_F_DOWN },
                    _pad: [0; 2],
                    generation: self.real_generation[id as usize],
                }
            }
        };
        if self.written.get(&id) == Some(&real) {
            return Ok(());
        }
        let mut reals: Array<_, Real> = typed(&mut self.ebpf, names::REALS)?;
        reals.set(id, real, 0).map_err(map_err(names::REALS))?;
        self.written.insert(id, real);
        Ok(())
    }

    /// Allocates the service's slot and real ids; nothing is written yet.
    fn prepare_service(&mut self, d: &DesiredService) -> Result<Prepared> {
        if !self.services.contains_key(&d.name) {
            let vip_id = self.free_vips.pop().ok_or(DataplaneError::Capacity {
                what: "services",
                max: self.limits.max_tables,
                knob: "max_tables",
            })?;
            self.services.insert(
                d.name.clone(),
                ServiceSlot {
                    vip_id,
                    key: vip_key(d),
                    info: VipInfo::default(),
                    reals: BTreeMap::new(),
                    table: Vec::new(),
                    inputs: None,
                    generation: self.gens.word(vip_id as usize * 8).load(Ordering::Acquire),
                    last_flip: None,
                },
            );
        }
        // Reals: keep ids of backends whose address is unchanged.
        let old_reals = self.services[&d.name].reals.clone();
        let mut reals = BTreeMap::new();
        let mut retired = Vec::new();
        // Ids this service gives up (backend removed or readdressed): they
        // may be reused for its new backends when the pool is exhausted.
        let mut spare: Vec<u32> = old_reals
            .iter()
            .filter(|(n, r)| {
                !d.backends
                    .iter()
                    .any(|b| &b.name == *n && b.address == r.address)
            })
            .map(|(_, r)| r.id)
            .collect();
        for b in &d.backends {
            let id = match old_reals.get(&b.name) {
                Some(r) if r.address == b.address => r.id,
                _ => match self.alloc_real() {
                    Ok(id) => id,
                    Err(e) => {
                        // Reuse a spare id under a new generation: flows
                        // pinned to its old backend re-select.
                        let id = spare.pop().ok_or(e)?;
                        self.real_generation[id as usize] += 1;
                        id
                    }
                },
            };
            reals.insert(
                b.name.clone(),
                RealSlot {
                    id,
                    address: b.address,
                },
            );
        }
        // Ids of the old reals that no new real kept or reused.
        for r in old_reals.values() {
            if !reals.values().any(|n: &RealSlot| n.id == r.id) {
                retired.push(r.id);
            }
        }
        // Down and zero-weight backends get no slots.
        let inputs: Vec<(u32, String, u32)> = d
            .backends
            .iter()
            .map(|b| {
                (
                    reals[&b.name].id,
                    b.name.clone(),
                    if b.up { b.weight } else { 0 },
                )
            })
            .collect();
        Ok(Prepared {
            reals,
            retired,
            inputs,
        })
    }

    /// Programs every desired service. Tables whose inputs changed are
    /// rebuilt on several threads, then each is written to its shadow ring
    /// and flipped; nothing unchanged is rewritten.
    fn apply_services(&mut self, desired: &[DesiredService]) -> Result<()> {
        // Allocation first, with nothing written: if it fails (capacity),
        // undo it and leave the maps exactly as they were.
        let mut prepared = Vec::with_capacity(desired.len());
        let (free_before, next_before) = (self.free_reals.clone(), self.next_real);
        let generations_before = self.real_generation.clone();
        let (vips_before, names_before): (Vec<u32>, BTreeSet<String>) = (
            self.free_vips.clone(),
            self.services.keys().cloned().collect(),
        );
        for d in desired {
            match self.prepare_service(d) {
                Ok(p) => prepared.push(p),
                Err(e) => {
                    self.free_reals = free_before;
                    self.next_real = next_before;
                    self.real_generation = generations_before;
                    self.free_vips = vips_before;
                    self.services.retain(|n, _| names_before.contains(n));
                    return Err(e);
                }
            }
        }
        // Phase 1: backends that are up are present and up before any table
        // can point at them.
        for (d, p) in desired.iter().zip(&prepared) {
            for b in d.backends.iter().filter(|b| b.up) {
                self.write_real(p.reals[&b.name].id, Some((&b.address, true)))?;
            }
        }
        // Phase 2: build the tables whose inputs changed, in parallel.
        let todo: Vec<usize> = desired
            .iter()
            .zip(&prepared)
            .enumerate()
            .filter(|(_, (d, p))| self.services[&d.name].inputs.as_ref() != Some(&p.inputs))
            .map(|(i, _)| i)
            .collect();
        let size = self.limits.ring_size;
        let threads = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
            .clamp(1, 8);
        let built: Vec<(usize, Vec<u32>)> = std::thread::scope(|scope| {
            let chunk = todo.len().div_ceil(threads).max(1);
            let handles: Vec<_> = todo
                .chunks(chunk)
                .map(|ids| {
                    let prepared = &prepared;
                    scope.spawn(move || {
                        ids.iter()
                            .map(|&i| {
                                let entries: Vec<maglev::Entry<'_>> = prepared[i]
                                    .inputs
                                    .iter()
                                    .map(|(id, name, w)| maglev::Entry {
                                        id: *id,
                                        key: name.as_bytes(),
                                        weight: *w,
                                    })
                                    .collect();
                                (i, maglev::build(&entries, size))
                            })
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            handles
                .into_iter()
                .flat_map(|h| h.join().expect("maglev builder thread panicked"))
                .collect()
        });
        // A ring that was active within the grace period may still be read
        // by a packet: wait once for all of them, not once per table.
        let wait = built
            .iter()
            .filter_map(|(i, t)| {
                let slot = &self.services[&desired[*i].name];
                (slot.table != *t).then_some(slot.last_flip).flatten()
            })
            .map(|t| GRACE.saturating_sub(t.elapsed()))
            .max()
            .unwrap_or_default();
        if !wait.is_zero() {
            std::thread::sleep(wait);
        }
        let mut tables: BTreeMap<usize, Vec<u32>> = built.into_iter().collect();
        for (i, (d, p)) in desired.iter().zip(prepared).enumerate() {
            self.finish_service(d, p, tables.remove(&i))?;
        }
        Ok(())
    }

    /// Flips a rebuilt table in, updates the VIP and retires what the table
    /// no longer points at.
    fn finish_service(
        &mut self,
        d: &DesiredService,
        p: Prepared,
        table: Option<Vec<u32>>,
    ) -> Result<()> {
        let key = vip_key(d);
        let size = self.limits.ring_size;
        let slot = self.services.get_mut(&d.name).expect("prepared above");
        slot.reals = p.reals.clone();
        slot.inputs = Some(p.inputs);
        let vip_id = slot.vip_id;
        if let Some(table) = table.filter(|t| *t != slot.table) {
            let next_gen = (slot.generation + 1) & 1;
            for (i, real) in table.iter().enumerate() {
                let flat = ring_index(vip_id, next_gen, size, i as u32) as usize;
                self.rings.word(flat * 4).store(*real, Ordering::Relaxed);
            }
            // The flip: one aligned word; Release orders the ring writes
            // before it.
            self.gens
                .word(vip_id as usize * 8)
                .store(next_gen, Ordering::Release);
            slot.generation = next_gen;
            slot.table = table;
            slot.last_flip = Some(Instant::now());
        }
        let info = VipInfo {
            vip_id,
            table_id: vip_id,
            flags: if d.client_affinity {
                VIP_F_CLIENT_AFFINITY
            } else {
                0
            },
            _pad: 0,
        };
        let update_vip = slot.info != info;
        slot.info = info;
        // Phase 3: backends that are down, and removed ones, after the table
        // stopped pointing at them.
        for b in d.backends.iter().filter(|b| !b.up) {
            self.write_real(p.reals[&b.name].id, Some((&b.address, false)))?;
        }
        for id in p.retired {
            self.write_real(id, None)?;
            self.free_reals.push_back(id);
        }
        if update_vip || !self.vips_written.contains(&key) {
            let mut vips: HashMap<_, VipKey, VipInfo> = typed(&mut self.ebpf, names::VIPS)?;
            vips.insert(key, info, 0).map_err(map_err(names::VIPS))?;
            self.vips_written.insert(key);
        }
        Ok(())
    }

    /// Writes the `VIP_FILTER` bitmap for `addrs`; with `keep` the bits
    /// already set stay set (used before VIPs are added, so a new VIP never
    /// matches while its filter bit is still clear).
    fn write_filter(&mut self, addrs: impl Iterator<Item = [u8; 16]>, keep: bool) -> Result<()> {
        let mut filter = if keep {
            self.filter.clone()
        } else {
            vec![0u64; VIP_FILTER_WORDS as usize]
        };
        for a in addrs {
            let bit = vip_filter_bit(&a);
            filter[(bit >> 6) as usize] |= 1 << (bit & 63);
        }
        let mut bits: Array<_, u64> = typed(&mut self.ebpf, names::VIP_FILTER)?;
        for (i, (new, old)) in filter.iter().zip(&self.filter).enumerate() {
            if new != old {
                bits.set(i as u32, new, 0)
                    .map_err(map_err(names::VIP_FILTER))?;
            }
        }
        self.filter = filter;
        Ok(())
    }

    fn write_vip_addrs(&mut self) -> Result<()> {
        let wanted: std::collections::HashSet<AddrKey> = self
            .services
            .values()
            .map(|s| AddrKey {
                addr: s.key.addr,
                family: s.key.family,
                _pad: [0; 3],
            })
            .collect();
        self.write_filter(wanted.iter().map(|k| k.addr), false)?;
        let mut map: HashMap<_, AddrKey, u32> = typed(&mut self.ebpf, names::VIP_ADDRS)?;
        let present: Vec<AddrKey> = map.keys().filter_map(|k| k.ok()).collect();
        for k in &present {
            if !wanted.contains(k) {
                let _ = map.remove(k);
            }
        }
        for k in wanted {
            if !present.contains(&k) {
                map.insert(k, 1, 0).map_err(map_err(names::VIP_ADDRS))?;
            }
        }
        Ok(())
    }

    /// Runs one frame through the program (BPF_PROG_TEST_RUN).
    pub fn run(&self, frame: &[u8]) -> Result<RunOutput> {
        self.run_program(names::PROG_STEER, frame)
    }

    fn run_program(&self, name: &'static str, frame: &[u8]) -> Result<RunOutput> {
        self.run_program_repeat(name, frame, 1)
    }

    fn run_program_repeat(
        &self,
        name: &'static str,
        frame: &[u8],
        repeat: u32,
    ) -> Result<RunOutput> {
        if frame.len() < 14 {
            return Err(DataplaneError::FrameTooShort(frame.len()));
        }
        let prog: &Xdp = self
            .ebpf
            .program(name)
            .ok_or(DataplaneError::MissingProgram { name })?
            .try_into()
            .map_err(DataplaneError::Program)?;
        let mut out = vec![0u8; frame.len() + 256];
        let r = prog
            .test_run(TestRunOptions {
                data_in: Some(frame),
                data_out: Some(&mut out),
                repeat,
                ..Default::default()
            })
            .map_err(DataplaneError::Run)?;
        out.truncate(r.data_size_out as usize);
        Ok(RunOutput {
            verdict: Verdict::from_action(r.return_value),
            data: out,
            duration: r.duration,
        })
    }

    fn sum_u64(&self, name: &'static str, n: u32) -> Result<Vec<u64>> {
        let map: PerCpuArray<_, u64> = PerCpuArray::try_from(
            self.ebpf
                .map(name)
                .ok_or(DataplaneError::MissingMap { name })?,
        )
        .map_err(map_err(name))?;
        (0..n)
            .map(|i| {
                map.get(&i, 0)
                    .map(|v| v.iter().sum())
                    .map_err(map_err(name))
            })
            .collect()
    }

    /// Drops by reason, indexed by `DropReason as usize`, summed over CPUs.
    pub fn drop_counts(&self) -> Result<[u64; DropReason::COUNT]> {
        let v = self.sum_u64(names::DROP_STATS, DropReason::COUNT as u32)?;
        let mut out = [0; DropReason::COUNT];
        out.copy_from_slice(&v);
        Ok(out)
    }

    /// Packets by branch, indexed by `Branch as usize`, summed over CPUs.
    pub fn path_counts(&self) -> Result<[u64; Branch::COUNT]> {
        let v = self.sum_u64(names::PATH_STATS, Branch::COUNT as u32)?;
        let mut out = [0; Branch::COUNT];
        out.copy_from_slice(&v);
        Ok(out)
    }

    fn counters(&self, name: &'static str, idx: u32) -> Result<Counters> {
        let map: PerCpuArray<_, Counters> = PerCpuArray::try_from(
            self.ebpf
                .map(name)
                .ok_or(DataplaneError::MissingMap { name })?,
        )
        .map_err(map_err(name))?;
        let per_cpu = map.get(&idx, 0).map_err(map_err(name))?;
        Ok(per_cpu.iter().fold(Counters::default(), |a, c| Counters {
            packets: a.packets + c.packets,
            bytes: a.bytes + c.bytes,
            new_flows: a.new_flows + c.new_flows,
        }))
    }

    /// Counters of a service (all its backends).
    pub fn service_counters(&self, service: &str) -> Result<Counters> {
        let slot = self
            .services
            .get(service)
            .ok_or_else(|| DataplaneError::UnknownService(service.to_string()))?;
        self.counters(names::VIP_STATS, slot.vip_id)
    }

    /// Counters of one backend of one service.
    pub fn backend_counters(&self, service: &str, backend: &str) -> Result<Counters> {
        let slot = self
            .services
            .get(service)
            .ok_or_else(|| DataplaneError::UnknownService(service.to_string()))?;
        let real = slot
            .reals
            .get(backend)
            .ok_or_else(|| DataplaneError::UnknownBackend(backend.to_string()))?;
        self.counters(names::REAL_STATS, real.id)
    }

    /// The active selection table of a service: backend name per slot
    /// (`None` for an empty slot).
    pub fn table(&self, service: &str) -> Result<Vec<Option<String>>> {
        let slot = self
            .services
            .get(service)
            .ok_or_else(|| DataplaneError::UnknownService(service.to_string()))?;
        let by_id: BTreeMap<u32, &str> =
            slot.reals.iter().map(|(n, r)| (r.id, n.as_str())).collect();
        let generation = self
            .gens
            .word(slot.vip_id as usize * 8)
            .load(Ordering::Acquire);
        Ok((0..self.limits.ring_size)
            .map(|i| {
                let flat = ring_index(slot.vip_id, generation, self.limits.ring_size, i);
                let id = self.rings.word(flat as usize * 4).load(Ordering::Relaxed);
                by_id.get(&id).map(|s| s.to_string())
            })
            .collect())
    }

    /// The backend names of the service's reals, by real id.
    pub fn backend_of_real(&self, service: &str, real_id: u32) -> Option<&str> {
        self.services.get(service).and_then(|s| {
            s.reals
                .iter()
                .find(|(_, r)| r.id == real_id)
                .map(|(n, _)| n.as_str())
        })
    }
}

fn vip_key(d: &DesiredService) -> VipKey {
    let (addr, family) = addr_bytes(&d.vip);
    VipKey {
        addr,
        port: steer_common::port_to_wire(d.port),
        proto: d.protocol,
        family,
    }
}

fn map_data<'a>(ebpf: &'a Ebpf, name: &'static str) -> Result<&'a MapData> {
    match ebpf.map(name).ok_or(DataplaneError::MissingMap { name })? {
        Map::Array(d) => Ok(d),
        _ => Err(DataplaneError::MissingMap { name }),
    }
}

fn typed<'a, T>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<T>
where
    T: TryFrom<&'a mut Map, Error = aya::maps::MapError>,
{
    let map = ebpf
        .map_mut(name)
        .ok_or(DataplaneError::MissingMap { name })?;
    T::try_from(map).map_err(map_err(name))
}
