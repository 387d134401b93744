//! The data plane: loads the XDP program, programs its maps and runs packets
//! through it with BPF_PROG_TEST_RUN. This is the only module that touches
//! BPF objects. Map layout and the table flip: docs/architecture.md.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::os::fd::{AsFd, AsRawFd};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use aya::maps::lpm_trie::{Key as LpmKey, LpmTrie};
use aya::maps::{Array, HashMap, Map, MapData, PerCpuArray, PerCpuValues};
use aya::programs::{ProgramError, TestRun, TestRunOptions, Xdp};
use aya::{Ebpf, EbpfLoader};
use steer_common::{
    is_unicast_mac, names, ring_index, ring_values, vip_slot_index, AddrKey, Branch, Counters,
    DropReason, Passive, Real, Settings, SourceMac, VipInfo, VipKey, SOURCE_MAC_FALLBACK,
    SOURCE_MAC_SLOTS, VIP_FILTER_WORDS, VIP_SLOTS,
};

mod adopt;
mod bench;
mod counters;
mod migrate;
pub mod persist;
mod pins;
pub mod plan;
pub mod verdict;
mod writer;

pub use bench::BenchProgram;
pub use counters::{CounterReader, PendingSyn};
pub use migrate::Migrated;
pub use pins::{kernel_xdp_mode, pin_entries, InstanceLock, KernelXdpMode, Removal};
use plan::{addr_bytes, RealSlot, ServiceSlot};
pub use plan::{
    DesiredBackend, DesiredClasses, DesiredService, DesiredTable, Globals, IdLedger, PlanError,
    TableSlots, Write,
};

use std::path::{Path, PathBuf};

use aya::programs::links::{FdLink, PinnedLink};
use aya::programs::xdp::{XdpLink, XdpMode};

/// The compiled XDP program, built by build.rs (production object: no
/// benchmark entries; see `bench.rs`).
static PROGRAM: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/steer"));
/// The programs `load` loads from `PROGRAM`.
const PROGRAMS: [&str; 3] = [names::PROG_STEER, names::PROG_PMTU4, names::PROG_PMTU6];

#[derive(Debug, thiserror::Error)]
pub enum DataplaneError {
    #[error("loading the XDP program failed: {0}. Is this root on Linux ≥ 5.18 (multi-buffer XDP) with BPF enabled?")]
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
    /// Capacity or address-family problems found by the plan; nothing was
    /// written.
    #[error(transparent)]
    Plan(#[from] PlanError),
    #[error("unknown service {0:?}")]
    UnknownService(String),
    #[error("unknown backend {0:?}")]
    UnknownBackend(String),
    #[error(
        "backend {backend:?} of service {service:?}: its tables come from a region policy, \
         which must be recomputed for a health change (program the new state through the \
         policy, e.g. ApplyConfig::apply_runtime)"
    )]
    PolicyTables { backend: String, service: String },
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
             sizes (conntrack_size, conntrack_size_v6, maglev_table_size, max_tables, \
             max_reals) cannot change while steer is attached: restore the old values, or run \
             `steer stop --detach` first (this drops established flows' state)"
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
    #[error(
        "interface {iface}: {reason}; steer needs it to read the interface's MAC, the source \
         MAC of every frame it sends back out (check dataplane.interfaces)"
    )]
    InterfaceMac { iface: String, reason: String },
    #[error("pinning the XDP link of {iface}: {source}")]
    PinLink {
        iface: String,
        #[source]
        source: aya::pin::PinError,
    },
    #[error(
        "another steer is running on pin directory {pin_dir}{}: stop it first (`steer stop`), \
         or give this instance its own dataplane.pin_path",
        holder.map(|p| format!(" (pid {p})")).unwrap_or_default()
    )]
    Locked {
        pin_dir: PathBuf,
        /// The pid the running instance recorded, if readable.
        holder: Option<u32>,
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

    /// The `n` 32-bit words from byte offset `off`.
    fn words(&self, off: usize, n: usize) -> &[AtomicU32] {
        assert!(
            off.is_multiple_of(4) && off + 4 * n <= self.len,
            "mmap range {off}+{n} words out of range"
        );
        // SAFETY: in bounds and aligned (checked above); AtomicU32 has the
        // layout of u32, and the kernel and BPF programs access these words
        // concurrently, hence atomics.
        unsafe { std::slice::from_raw_parts(self.ptr.add(off).cast::<AtomicU32>(), n) }
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

/// Sizes fixed at load time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    pub ring_size: u32,
    pub max_tables: u32,
    pub max_reals: u32,
    /// `CONNTRACK4` entries (and, through `steer_common::syn_buckets`,
    /// `RECENT_SYN`'s buckets).
    pub conntrack_size: u32,
    /// `CONNTRACK6` entries.
    pub conntrack_size_v6: u32,
}

/// A loaded XDP program and the state steer has written into its maps.
pub struct Dataplane {
    ebpf: Ebpf,
    rings: Mmap,
    gens: Mmap,
    /// `CLASS_V4`, one byte per IPv4 /24.
    class_v4: Mmap,
    /// `VIP_SLOTS` (see `steer_common::VipSlot`), written through this
    /// mapping only, and the key each slot holds.
    vip_slots: Mmap,
    vip_slot_keys: Vec<Option<VipKey>>,
    /// Which ids the services and backends hold (the plan's input).
    ledger: IdLedger,
    /// Operator drains, persisted with the state so a restart keeps them.
    drained: BTreeSet<String>,
    /// Operator region drains, persisted the same way.
    drained_regions: BTreeSet<String>,
    /// Their timeouts, in seconds since the Unix epoch.
    region_drain_deadlines: BTreeMap<String, u64>,
    /// Staged shifts, persisted the same way.
    shifts: Vec<steer_policy::shift::Shift>,
    /// Backends programmed as down.
    down: BTreeSet<String>,
    /// What was last programmed.
    last: Option<(Vec<DesiredService>, Globals)>,
    /// The `VIP_FILTER` bitmap as last written.
    filter_written: Vec<u64>,
    persist: Option<Persist>,
    /// `REALS` entries as last written, so unchanged ones are skipped.
    written: std::collections::HashMap<u32, Real>,
    /// The state file as last written, so unchanged state is not rewritten.
    saved: Option<persist::SavedState>,
    /// VIPS entries this process has written.
    vips_written: std::collections::HashMap<VipKey, VipInfo>,
    /// The counter maps.
    counters: CounterReader,
    /// Why a previous run's state was discarded at `open`.
    discarded: Option<String>,
    /// The flows `open` moved from an older steer's `CONNTRACK` pin.
    migrated: Option<Migrated>,
    /// The conntrack clock tick as last written to `CT_CLOCK`.
    ct_tick: u32,
}

/// The conntrack clock now: [`steer_common::ct_tick_at`] of the time since
/// boot (`CLOCK_BOOTTIME`, which counts suspend too and survives a daemon
/// restart, as the pinned maps do).
pub fn ct_tick_now() -> u32 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; CLOCK_BOOTTIME exists on
    // every kernel steer runs on (it needs BPF features far newer).
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
    if rc != 0 {
        return 0;
    }
    steer_common::ct_tick_at(ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64)
}

/// The conntrack epoch now: the epoch of [`ct_tick_now`].
pub fn ct_epoch_now() -> u32 {
    steer_common::ct_epoch_of_tick(ct_tick_now())
}

/// Which ids the data plane gave each service and its backends: the key to
/// their counters.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Ledger {
    pub services: BTreeMap<String, ServiceIds>,
}

/// The ids of one service.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ServiceIds {
    /// The VIP's id (index into `VIP_STATS`).
    pub vip_id: u32,
    /// Backend name -> real id (index into `REAL_STATS`).
    pub reals: BTreeMap<String, u32>,
}

/// Where a long-running data plane keeps what must survive a restart.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Persist {
    /// A directory on bpffs for the pinned maps and XDP links.
    pub pin_dir: PathBuf,
    /// The userspace bookkeeping (JSON).
    pub state_file: PathBuf,
}

/// How to attach XDP to an interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttachMode {
    /// Native (driver) XDP; fails if the driver does not support it.
    Driver,
    /// Generic (skb) XDP: works everywhere, slower.
    Skb,
    /// Driver mode, falling back to skb mode.
    Auto,
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
    /// A pinned link from a previous run was in another mode than the one
    /// asked for: it was detached and the program attached anew (`to`).
    ModeChanged {
        from: &'static str,
        to: &'static str,
    },
}

/// `BPF_F_MMAPABLE` (linux/bpf.h): an array map whose values can be
/// mapped into userspace; its values start on a page boundary.
const BPF_F_MMAPABLE: u32 = 1 << 10;

/// All the maps the program declares, for pinning.
const ALL_MAPS: [&str; 21] = [
    names::SETTINGS,
    names::VIPS,
    names::VIP_ADDRS,
    names::VIP_FILTER,
    names::REALS,
    names::RINGS,
    names::TABLE_GEN,
    names::CONNTRACK4,
    names::CONNTRACK6,
    names::VIP_STATS,
    names::REAL_STATS,
    names::PASSIVE_STATS,
    names::DROP_STATS,
    names::PATH_STATS,
    names::SOURCE_MACS,
    names::SOURCE_MACS_HIGH,
    names::CLASS_V4,
    names::CLASS_V6,
    names::CLASS_V6_48,
    names::CLASS_TABLES,
    names::RECENT_SYN,
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

impl Dataplane {
    /// Loads the XDP program with map sizes from `cfg` (it is not attached
    /// anywhere; see `attach`).
    pub fn load(limits: impl Into<Limits>) -> Result<Self> {
        Self::load_with(limits.into())
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
        let syn_buckets = steer_common::syn_buckets(limits.conntrack_size);
        let syn_slot_mask = syn_buckets - 1;
        let mut loader = EbpfLoader::new();
        for (name, path) in pins {
            loader.map_pin_path(name, path.as_path());
        }
        loader
            .map_max_entries(names::CONNTRACK4, limits.conntrack_size)
            .map_max_entries(names::CONNTRACK6, limits.conntrack_size_v6)
            .map_max_entries(
                names::RINGS,
                ring_values(limits.max_tables, limits.ring_size),
            )
            .map_max_entries(names::TABLE_GEN, limits.max_tables)
            .map_max_entries(names::CLASS_TABLES, limits.max_tables)
            .map_max_entries(names::VIPS, limits.max_tables)
            .map_max_entries(names::VIP_ADDRS, limits.max_tables)
            .map_max_entries(names::VIP_STATS, limits.max_tables)
            .map_max_entries(names::REALS, limits.max_reals)
            .map_max_entries(names::REAL_STATS, limits.max_reals)
            .map_max_entries(names::PASSIVE_STATS, limits.max_reals)
            .map_max_entries(names::RECENT_SYN, syn_buckets)
            .override_global(names::SYN_SLOT_MASK, &syn_slot_mask, true);
        let mut ebpf = loader.load(object).map_err(DataplaneError::Load)?;
        for &name in programs {
            let prog: &mut Xdp = ebpf
                .program_mut(name)
                .ok_or(DataplaneError::MissingProgram { name })?
                .try_into()
                .map_err(DataplaneError::Program)?;
            prog.load().map_err(DataplaneError::Program)?;
        }
        fill_pmtu_progs(&mut ebpf)?;
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
        let class_v4 = {
            let data = map_data(&ebpf, names::CLASS_V4)?;
            Mmap::new(
                names::CLASS_V4,
                data,
                steer_common::CLASS_V4_VALUES as usize * 8,
            )?
        };
        let vip_slots = {
            let data = map_data(&ebpf, names::VIP_SLOTS)?;
            Mmap::new(
                names::VIP_SLOTS,
                data,
                VIP_SLOTS as usize * std::mem::size_of::<steer_common::VipSlot>(),
            )?
        };
        let counters = CounterReader::new(&ebpf)?;
        let mut dp = Dataplane {
            counters,
            discarded: None,
            migrated: None,
            ebpf,
            rings,
            gens,
            class_v4,
            vip_slots,
            vip_slot_keys: vec![None; VIP_SLOTS as usize],
            ledger: IdLedger::new(limits),
            drained: BTreeSet::new(),
            drained_regions: BTreeSet::new(),
            region_drain_deadlines: BTreeMap::new(),
            shifts: Vec::new(),
            down: BTreeSet::new(),
            last: None,
            filter_written: vec![0; VIP_FILTER_WORDS as usize],
            ct_tick: 0,
            persist: None,
            written: std::collections::HashMap::new(),
            saved: None,
            vips_written: std::collections::HashMap::new(),
        };
        dp.write_ct_tick(ct_tick_now())?;
        Ok(dp)
    }

    /// Loads the program with its maps pinned under `persist.pin_dir`. If
    /// a previous run left pinned maps (and its state file), they are
    /// adopted: established flows, tables and counters carry on. Returns
    /// whether state was adopted.
    ///
    /// A missing pin directory is created with mode 0700. If the state file
    /// is missing but an old shared one ([`persist::LEGACY_STATE_FILE`]) is
    /// next to it and matches the pinned maps, that one is adopted, written
    /// under the new name and removed. The caller holds the pin
    /// directory's [`InstanceLock`] (the daemon does).
    pub fn open(limits: impl Into<Limits>, persist: Persist) -> Result<(Self, bool)> {
        let limits: Limits = limits.into();
        let dir = &persist.pin_dir;
        pins::prepare_pin_dir(dir)?;
        let existed = dir.join(names::RINGS).exists();
        // A RECENT_SYN pinned by a steer with another bucket layout (before
        // the SYN filter, 32-byte buckets; or not mmapable, so its buckets
        // straddle cache lines) cannot serve this program; it holds only
        // handshakes in progress, whose ACKs are then selected by hash
        // (the same backend while the table is unchanged).
        pins::drop_if_layout_differs(
            &dir.join(names::RECENT_SYN),
            aya::maps::MapType::Array,
            std::mem::size_of::<steer_common::SynBucket>() as u32,
            BPF_F_MMAPABLE,
        )?;
        // A SOURCE_MACS pinned by a steer before it was an array (a hash
        // map): made anew; attaching writes each interface's MAC again and
        // every plan the fallback.
        pins::drop_if_layout_differs(
            &dir.join(names::SOURCE_MACS),
            aya::maps::MapType::Array,
            std::mem::size_of::<steer_common::SourceMac>() as u32,
            0,
        )?;
        let pins: Vec<(&'static str, PathBuf)> =
            ALL_MAPS.iter().map(|n| (*n, dir.join(n))).collect();
        let mut dp = Self::load_inner(PROGRAM, &PROGRAMS, limits, &pins)?;
        dp.check_pinned_sizes()?;
        // The one conntrack map of a steer before CONNTRACK4/CONNTRACK6:
        // its flows move into them, keeping their backends.
        let legacy_ct = dir.join(names::LEGACY_CONNTRACK);
        if legacy_ct.exists() {
            dp.migrated = Some(dp.migrate_legacy_conntrack(&legacy_ct)?);
        }
        dp.persist = Some(persist.clone());
        let saved = if existed {
            match persist::load(&persist.state_file) {
                Ok(s) => s,
                // Corrupt or foreign: start fresh and say so.
                Err(e) if e.kind() == std::io::ErrorKind::InvalidData => {
                    dp.discarded = Some(format!(
                        "the state file {} is unreadable ({e})",
                        persist.state_file.display()
                    ));
                    None
                }
                Err(source) => {
                    return Err(DataplaneError::Io {
                        what: "reading state file",
                        path: persist.state_file.clone(),
                        source,
                    })
                }
            }
        } else {
            None
        };
        // Migration: the state file of a steer that named it
        // `dataplane-state.json` whatever the pin path. Used once, and
        // only if it matches the pinned maps.
        let legacy = persist
            .state_file
            .with_file_name(persist::LEGACY_STATE_FILE);
        let keyed_missing = matches!(
            std::fs::symlink_metadata(&persist.state_file),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound
        );
        if existed && keyed_missing && legacy != persist.state_file {
            if let Ok(Some(old)) = persist::load(&legacy) {
                match dp.adopt(&old) {
                    Ok(()) => {
                        dp.reconcile_adopted()?;
                        // Keyed from now on: write it, then retire the old.
                        dp.save_state()?;
                        if let Err(e) = std::fs::remove_file(&legacy) {
                            tracing::warn!(file = %legacy.display(), error = %e, "cannot remove the migrated state file");
                        }
                        tracing::info!(
                            from = %legacy.display(),
                            to = %persist.state_file.display(),
                            "migrated the state file to its per-instance name"
                        );
                        return Ok((dp, true));
                    }
                    Err(problems) => tracing::info!(
                        file = %legacy.display(),
                        problems = %problems.join("; "),
                        "left an old state file alone: it does not match this instance's pinned maps"
                    ),
                }
            }
        }
        let adopted = match saved.map(|s| dp.adopt(&s)) {
            Some(Ok(())) => {
                dp.reconcile_adopted()?;
                true
            }
            other => {
                if let Some(Err(problems)) = other {
                    dp.discarded = Some(format!(
                        "the state file {} does not match the pinned maps: {}",
                        persist.state_file.display(),
                        problems.join("; ")
                    ));
                    // Nothing of the rejected state may stay behind.
                    dp.ledger = IdLedger::new(limits);
                    dp.drained.clear();
                    dp.drained_regions.clear();
                    dp.region_drain_deadlines.clear();
                    dp.shifts.clear();
                }
                if existed {
                    dp.reset_pinned()?;
                }
                false
            }
        };
        Ok((dp, adopted))
    }

    /// Attaches the program to `iface`, or takes over the link a previous
    /// run pinned (replacing its program atomically). The link is pinned,
    /// so forwarding continues if this process dies.
    ///
    /// A pinned link whose attach mode (read from the kernel) is not the
    /// one asked for is detached first and the program attached anew
    /// ([`Attached::ModeChanged`]); `auto` accepts either mode.
    pub fn attach(&mut self, iface: &str, mode: impl Into<AttachMode>) -> Result<Attached> {
        self.write_interface_mac(iface)?;
        let mode: AttachMode = mode.into();
        let pin = self.persist.as_ref().map(|p| link_pin(&p.pin_dir, iface));
        let mut changed_from = None;
        if let Some(pin) = pin.as_ref().filter(|p| p.exists()) {
            let now = kernel_xdp_mode(iface).map_err(|source| DataplaneError::Io {
                what: "reading the XDP attach mode of",
                path: PathBuf::from(iface),
                source,
            })?;
            let fits = matches!(
                (mode, now),
                (AttachMode::Driver, KernelXdpMode::Driver)
                    | (AttachMode::Skb, KernelXdpMode::Skb)
                    | (AttachMode::Auto, KernelXdpMode::Driver | KernelXdpMode::Skb)
                    | (_, KernelXdpMode::None)
            );
            if !fits {
                // The kernel allows one mode at a time: detach, then attach.
                let link = PinnedLink::from_pin(pin).map_err(|e| DataplaneError::Io {
                    what: "opening pinned link",
                    path: pin.clone(),
                    source: std::io::Error::other(e),
                })?;
                let fd = link.unpin().map_err(|source| DataplaneError::Io {
                    what: "unpinning link",
                    path: pin.clone(),
                    source,
                })?;
                drop(fd);
                changed_from = Some(now.name());
            }
        }
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
        let outcome = match (changed_from, outcome) {
            (Some(from), Attached::New(to)) => Attached::ModeChanged { from, to },
            (Some(from), Attached::FellBack { .. }) => Attached::ModeChanged { from, to: "skb" },
            (_, o) => o,
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

    /// Detaches from every interface that has a pinned XDP link and removes
    /// the maps steer pinned, the directory if that leaves it empty, and
    /// the state file. Anything else in the pin directory (a map another
    /// tool pinned there) is left, and logged as a warning; see
    /// [`Dataplane::remove_pins_report`]. Returns the interfaces detached.
    /// Works without a loaded program, for cleaning up after a killed
    /// daemon.
    pub fn remove_pins(persist: &Persist) -> Result<Vec<String>> {
        let r = Self::remove_pins_report(persist)?;
        for (name, why) in &r.left {
            tracing::warn!(
                pin = %persist.pin_dir.join(name).display(),
                reason = %why,
                "left in the pin directory"
            );
        }
        Ok(r.detached)
    }

    /// [`Dataplane::remove_pins`], returning also what was left and why.
    pub fn remove_pins_report(persist: &Persist) -> Result<Removal> {
        pins::remove_steer_pins(persist)
    }

    /// Detaches (unpins) the pinned XDP links of the interfaces not in
    /// `keep`: after a restart with another interface set. Returns the
    /// interfaces detached.
    pub fn detach_links_except(persist: &Persist, keep: &[String]) -> Vec<String> {
        pins::detach_links_except(persist, keep)
    }

    /// Undoes a failed start: removes the steer pins that are not in
    /// `before` (the pin directory's entries before the start; links
    /// detach), and the directory if `created_dir` and it is then empty.
    /// A previous run's pins (in `before`) are left as found. Returns what
    /// was removed.
    pub fn remove_created(
        persist: &Persist,
        before: &BTreeSet<String>,
        created_dir: bool,
    ) -> Vec<String> {
        pins::remove_created(persist, before, created_dir)
    }

    /// Where this data plane keeps its pins and state file, if it does.
    pub fn persist(&self) -> Option<&Persist> {
        self.persist.as_ref()
    }

    pub fn limits(&self) -> Limits {
        self.ledger.limits
    }

    /// The client classes last programmed (none at first, or after a
    /// restart until the first `program_with_classes`).
    pub fn classes(&self) -> std::sync::Arc<DesiredClasses> {
        self.ledger.classes.desired.clone().unwrap_or_default()
    }

    /// The drains last programmed, or adopted from a previous run.
    pub fn drained(&self) -> &BTreeSet<String> {
        &self.drained
    }

    /// The region drains to persist with the next programming, or those
    /// adopted from a previous run.
    pub fn drained_regions(&self) -> &BTreeSet<String> {
        &self.drained_regions
    }

    /// The timeouts of the region drains (seconds since the Unix epoch).
    pub fn region_drain_deadlines(&self) -> &BTreeMap<String, u64> {
        &self.region_drain_deadlines
    }

    /// Sets the region drains (and their timeouts, in seconds since the
    /// Unix epoch) the next programming persists.
    pub fn set_drained_regions(
        &mut self,
        regions: &BTreeSet<String>,
        deadlines: BTreeMap<String, u64>,
    ) {
        self.drained_regions = regions.clone();
        self.region_drain_deadlines = deadlines;
    }

    /// The staged shifts to persist with the next programming, or those
    /// adopted from a previous run.
    pub fn shifts(&self) -> &[steer_policy::shift::Shift] {
        &self.shifts
    }

    /// Sets the staged shifts the next programming persists.
    pub fn set_shifts(&mut self, shifts: Vec<steer_policy::shift::Shift>) {
        self.shifts = shifts;
    }

    /// The backends last programmed as down.
    pub fn down(&self) -> &BTreeSet<String> {
        &self.down
    }

    /// Programs every map for `desired` (the plan, then its writes).
    /// `drained` is the operator's drain set, persisted with the state so
    /// that a restart keeps it; the weights in `desired` already reflect it.
    ///
    /// On a capacity or family error nothing is written. If a map write
    /// fails part-way, the next call rewrites everything.
    ///
    /// The client classes stay those last programmed (none at first); see
    /// [`Dataplane::program_with_classes`].
    pub fn program(
        &mut self,
        desired: Vec<DesiredService>,
        globals: Globals,
        drained: &BTreeSet<String>,
    ) -> Result<()> {
        let classes = self.classes();
        self.program_with_classes(desired, globals, &classes, drained)
    }

    /// [`Dataplane::program`] with these client classes: the class maps
    /// are brought to `classes` (only what differs is written), after the
    /// tables and before the VIP entries that use them.
    pub fn program_with_classes(
        &mut self,
        desired: Vec<DesiredService>,
        globals: Globals,
        classes: &std::sync::Arc<DesiredClasses>,
        drained: &BTreeSet<String>,
    ) -> Result<()> {
        let (next, writes) =
            self.ledger
                .plan_with_classes(&desired, &globals, classes, Instant::now())?;
        let done = self.execute(&writes);
        self.ledger = next;
        if let Err(e) = done {
            self.forget_written();
            return Err(e);
        }
        self.drained = drained.clone();
        self.down = desired
            .iter()
            .flat_map(|d| d.backends.iter().filter(|b| !b.up))
            .map(|b| b.name.clone())
            .collect();
        self.last = Some((desired, globals));
        self.save_state()
    }

    /// Marks a backend down (in every service) or up again, on top of what
    /// was last programmed.
    pub fn set_backend_down(&mut self, backend: &str, down: bool) -> Result<()> {
        let Some((mut desired, globals)) = self.last.clone() else {
            return Err(DataplaneError::UnknownBackend(backend.to_string()));
        };
        let mut found = false;
        for d in desired.iter_mut() {
            let mine = d.backends.iter().any(|b| b.name == backend);
            // A policy table holds its slots as the policy composed them
            // for the old health: flipping the flag would not move them.
            if mine
                && d.tables
                    .iter()
                    .any(|t| matches!(t.slots, TableSlots::Slots(_)))
            {
                return Err(DataplaneError::PolicyTables {
                    backend: backend.to_string(),
                    service: d.name.clone(),
                });
            }
            for b in d.backends.iter_mut().filter(|b| b.name == backend) {
                b.up = !down;
                found = true;
            }
        }
        if !found {
            return Err(DataplaneError::UnknownBackend(backend.to_string()));
        }
        let drained = self.drained.clone();
        self.program(desired, globals, &drained)
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

    /// Drops by reason, indexed by `DropReason as usize`, summed over CPUs.
    pub fn drop_counts(&self) -> Result<[u64; DropReason::COUNT]> {
        self.counters.drops()
    }

    /// Packets by branch, indexed by `Branch as usize`, summed over CPUs.
    pub fn path_counts(&self) -> Result<[u64; Branch::COUNT]> {
        self.counters.paths()
    }

    /// A reader of the counter maps that other threads can use while this
    /// data plane is being programmed.
    pub fn counter_reader(&self) -> Result<CounterReader> {
        CounterReader::new(&self.ebpf)
    }

    /// The ids each service and backend holds, for reading their counters.
    pub fn ledger(&self) -> Ledger {
        Ledger {
            services: self
                .ledger
                .services
                .iter()
                .map(|(name, s)| {
                    (
                        name.clone(),
                        ServiceIds {
                            vip_id: s.vip_id,
                            reals: s.reals.iter().map(|(b, r)| (b.clone(), r.id)).collect(),
                        },
                    )
                })
                .collect(),
        }
    }

    /// Counters of a service (all its backends).
    pub fn service_counters(&self, service: &str) -> Result<Counters> {
        let slot = self
            .ledger
            .services
            .get(service)
            .ok_or_else(|| DataplaneError::UnknownService(service.to_string()))?;
        self.counters.service(slot.vip_id)
    }

    /// The real id of one backend of one service.
    fn real_id_of(&self, service: &str, backend: &str) -> Result<u32> {
        let slot = self
            .ledger
            .services
            .get(service)
            .ok_or_else(|| DataplaneError::UnknownService(service.to_string()))?;
        let real = slot
            .reals
            .get(backend)
            .ok_or_else(|| DataplaneError::UnknownBackend(backend.to_string()))?;
        Ok(real.id)
    }

    /// Counters of one backend of one service.
    pub fn backend_counters(&self, service: &str, backend: &str) -> Result<Counters> {
        self.counters.real(self.real_id_of(service, backend)?)
    }

    /// Passive health counters (repeated SYNs, handshakes) of one backend
    /// of one service, summed over CPUs.
    pub fn backend_passive(&self, service: &str, backend: &str) -> Result<Passive> {
        self.counters.passive(self.real_id_of(service, backend)?)
    }

    /// The active selection table of a service: backend name per slot
    /// (`None` for an empty slot).
    pub fn table(&self, service: &str) -> Result<Vec<Option<String>>> {
        Ok(self
            .class_table(service, 0)?
            .expect("every service has a default table"))
    }

    /// The active selection table of class `class` of a service (0: the
    /// default table): backend name per slot (`None` for `NO_REAL` or
    /// `RESIDENCY_DROP`); `None` if the class has no table of its own.
    pub fn class_table(&self, service: &str, class: u8) -> Result<Option<Vec<Option<String>>>> {
        let slot = self
            .ledger
            .services
            .get(service)
            .ok_or_else(|| DataplaneError::UnknownService(service.to_string()))?;
        let Some(t) = slot.tables.get(&class) else {
            return Ok(None);
        };
        let by_id: BTreeMap<u32, &str> =
            slot.reals.iter().map(|(n, r)| (r.id, n.as_str())).collect();
        let generation = self
            .gens
            .word(t.table_id as usize * 8)
            .load(Ordering::Acquire);
        Ok(Some(
            (0..self.ledger.limits.ring_size)
                .map(|i| {
                    let flat = ring_index(t.table_id, generation, self.ledger.limits.ring_size, i);
                    let id = self.rings.word(flat as usize * 4).load(Ordering::Relaxed);
                    by_id.get(&id).map(|s| s.to_string())
                })
                .collect(),
        ))
    }

    /// The backend names of the service's reals, by real id.
    pub fn backend_of_real(&self, service: &str, real_id: u32) -> Option<&str> {
        self.ledger.services.get(service).and_then(|s| {
            s.reals
                .iter()
                .find(|(_, r)| r.id == real_id)
                .map(|(n, _)| n.as_str())
        })
    }
}

/// The ifindex of `iface` in this network namespace and its link-layer
/// address (`None` if it has no 6-byte one). Read over netlink
/// (getifaddrs), so it is right inside a network namespace entered with
/// `nsenter`, where /sys/class/net may still show another one.
pub fn interface_mac(iface: &str) -> Result<(u32, Option<[u8; 6]>)> {
    let err = |reason: String| DataplaneError::InterfaceMac {
        iface: iface.to_string(),
        reason,
    };
    let addrs = nix::ifaddrs::getifaddrs()
        .map_err(|e| err(format!("listing the interfaces failed ({e})")))?;
    for a in addrs.filter(|a| a.interface_name == iface) {
        if let Some(link) = a.address.as_ref().and_then(|s| s.as_link_addr()) {
            let ifindex = u32::try_from(link.ifindex())
                .map_err(|_| err(format!("ifindex {} out of range", link.ifindex())))?;
            return Ok((ifindex, link.addr()));
        }
    }
    Err(err(
        "no such interface in this network namespace".to_string()
    ))
}

/// A hash-map removal that also succeeds when the key was not there
/// (aya reports the kernel's ENOENT as a syscall error, not as
/// `KeyNotFound`).
fn absent_ok(
    r: std::result::Result<(), aya::maps::MapError>,
) -> std::result::Result<(), aya::maps::MapError> {
    match r {
        Err(aya::maps::MapError::KeyNotFound) => Ok(()),
        Err(aya::maps::MapError::SyscallError(e))
            if e.io_error.raw_os_error() == Some(libc::ENOENT) =>
        {
            Ok(())
        }
        other => other,
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

/// Puts the path-MTU reply programs (when this load loaded them: the
/// benchmark object does not) into `PMTU_PROGS`, where `steer_xdp`
/// tail-calls them. Without them too-big packets are dropped unanswered.
fn fill_pmtu_progs(ebpf: &mut Ebpf) -> Result<()> {
    use aya::maps::ProgramArray;
    use steer_common::{PMTU_SLOT_OUTER_V4, PMTU_SLOT_OUTER_V6};
    let mut fds = Vec::new();
    for (slot, name) in [
        (PMTU_SLOT_OUTER_V4, names::PROG_PMTU4),
        (PMTU_SLOT_OUTER_V6, names::PROG_PMTU6),
    ] {
        let Some(prog) = ebpf.program(name) else {
            continue;
        };
        let Ok(fd) = prog.fd() else {
            continue;
        };
        let fd = fd
            .try_clone()
            .map_err(|e| DataplaneError::Program(e.into()))?;
        fds.push((slot, fd));
    }
    if fds.is_empty() {
        return Ok(());
    }
    let mut progs: ProgramArray<&mut MapData> = typed(ebpf, names::PMTU_PROGS)?;
    for (slot, fd) in &fds {
        progs
            .set(*slot, fd, 0)
            .map_err(map_err(names::PMTU_PROGS))?;
    }
    Ok(())
}
