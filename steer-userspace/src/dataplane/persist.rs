//! What survives a restart: the userspace bookkeeping that pairs with the
//! pinned maps (which real id belongs to which backend of which service).
//! The maps themselves live on bpffs; this file lives next to the control
//! socket. Written atomically (temp file + rename) after every change, mode
//! 0600, never through a symbolic link ([`save`]).

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::Path;

use serde::{Deserialize, Serialize};

pub const STATE_VERSION: u32 = 1;

/// The name every instance's state file had before it was keyed to the
/// pin path; a start that finds only this file migrates it once.
pub const LEGACY_STATE_FILE: &str = "dataplane-state.json";

/// The state file's name for the instance pinned at `pin_path`:
/// `dataplane-state-<pin path>.json`, with the path's components joined by
/// `-`, so two instances whose control sockets share a directory keep
/// separate files. Characters other than ASCII letters, digits, `.` and
/// `_` are escaped as `%XX` (a `-` inside a component too), which keeps
/// distinct paths distinct; `/a/b/` and `/a//b` are the same directory and
/// get the same name.
pub fn state_file_name(pin_path: &Path) -> String {
    use std::os::unix::ffi::OsStrExt as _;
    let mut key = String::new();
    for c in pin_path.components() {
        let std::path::Component::Normal(part) = c else {
            continue;
        };
        if !key.is_empty() {
            key.push('-');
        }
        for &b in part.as_bytes() {
            if b.is_ascii_alphanumeric() || b == b'.' || b == b'_' {
                key.push(b as char);
            } else {
                key.push_str(&format!("%{b:02x}"));
            }
        }
    }
    format!("dataplane-state-{key}.json")
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct SavedReal {
    pub id: u32,
    pub address: IpAddr,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct SavedService {
    pub name: String,
    pub vip_id: u32,
    pub addr: [u8; 16],
    pub port: u16,
    pub proto: u8,
    pub family: u8,
    pub flags: u32,
    pub generation: u32,
    pub reals: BTreeMap<String, SavedReal>,
    /// The service's class tables (its default table has its VIP id).
    /// Absent in files written before client classes existed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tables: Vec<SavedTable>,
}

/// A class table of a service.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct SavedTable {
    /// The client class, 1..=255.
    pub class: u8,
    pub table_id: u32,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct SavedState {
    pub version: u32,
    pub ring_size: u32,
    pub max_tables: u32,
    pub max_reals: u32,
    pub conntrack_size: u32,
    pub services: Vec<SavedService>,
    /// Non-zero real generations, by real id.
    pub real_generation: BTreeMap<u32, u32>,
    pub free_reals: Vec<u32>,
    pub next_real: u32,
    pub drained: Vec<String>,
    /// Regions drained by an operator (absent in files of older versions).
    #[serde(default)]
    pub drained_regions: Vec<String>,
    /// Of those, the ones drained with a timeout: when (seconds since the
    /// Unix epoch) their established flows are moved.
    #[serde(default)]
    pub region_drain_deadlines: BTreeMap<String, u64>,
    /// Staged shifts (`steer shift`), in force or finished, with their
    /// clocks (absent in files of older versions: none).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub shifts: Vec<steer_policy::shift::Shift>,
}

/// Mode of the state file, whatever the umask.
pub const STATE_FILE_MODE: u32 = 0o600;
/// Mode of the state file's directory when `save` has to create it.
pub const STATE_DIR_MODE: u32 = 0o700;

/// Writes `state` to `path` atomically: to `path` with the extension `tmp`,
/// then renamed over `path`. The file is mode 0600 whatever the umask.
///
/// Nothing at the temporary path is followed or reused: whatever is there
/// (a stale temp file from a crash, or a symbolic link someone planted) is
/// unlinked, and the new file is created with `O_CREAT|O_EXCL|O_NOFOLLOW`,
/// so a link put back in between makes the save fail instead of writing
/// through it. The rename replaces `path` itself, never what a link at
/// `path` points to. A missing directory is created mode 0700. (The daemon
/// keeps the file next to its control socket, in a directory it has
/// checked is root's and writable by no one else.)
pub fn save(path: &Path, state: &SavedState) -> std::io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _, PermissionsExt as _};

    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        if !dir.exists() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(STATE_DIR_MODE)
                .create(dir)?;
        }
    }
    let tmp = path.with_extension("tmp");
    let data = serde_json::to_vec(state).map_err(std::io::Error::other)?;
    match std::fs::remove_file(&tmp) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            return Err(std::io::Error::new(
                e.kind(),
                format!("removing the stale {}: {e}", tmp.display()),
            ))
        }
    }
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(STATE_FILE_MODE)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(&tmp)
        .map_err(|e| std::io::Error::new(e.kind(), format!("creating {}: {e}", tmp.display())))?;
    // The umask may have taken bits from the owner too; 0600 is what is
    // asked for.
    file.set_permissions(std::fs::Permissions::from_mode(STATE_FILE_MODE))?;
    file.write_all(&data)?;
    drop(file);
    std::fs::rename(&tmp, path)
}

pub fn load(path: &Path) -> std::io::Result<Option<SavedState>> {
    match std::fs::read(path) {
        Ok(data) => serde_json::from_slice(&data)
            .map(Some)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Why a saved state cannot be adopted with the given sizes: every problem
/// found, or `Ok` if each id is in range and owned at most once. Nothing
/// here trusts the file: it may be corrupt, from another version, or from
/// another instance.
pub fn validate(
    s: &SavedState,
    ring_size: u32,
    max_tables: u32,
    max_reals: u32,
    conntrack_size: u32,
) -> Result<(), Vec<String>> {
    use std::collections::BTreeSet;
    let mut problems = Vec::new();
    if s.version != STATE_VERSION {
        problems.push(format!(
            "version {} (this steer reads version {STATE_VERSION})",
            s.version
        ));
        return Err(problems);
    }
    let saved = (s.ring_size, s.max_tables, s.max_reals, s.conntrack_size);
    let now = (ring_size, max_tables, max_reals, conntrack_size);
    if saved != now {
        problems.push(format!(
            "sizes (maglev_table_size, max_tables, max_reals, conntrack_size) = {saved:?}, \
             the config has {now:?}"
        ));
        return Err(problems);
    }
    if s.next_real > max_reals {
        problems.push(format!(
            "next_real {} is beyond max_reals {max_reals}",
            s.next_real
        ));
    }
    let mut vips = BTreeSet::new();
    let mut names = BTreeSet::new();
    let mut owned = BTreeSet::new();
    for svc in &s.services {
        if !names.insert(svc.name.as_str()) {
            problems.push(format!("service {:?} appears twice", svc.name));
        }
        if svc.vip_id >= max_tables {
            problems.push(format!(
                "service {:?} has vip id {} (max_tables is {max_tables})",
                svc.name, svc.vip_id
            ));
        } else if !vips.insert(svc.vip_id) {
            problems.push(format!(
                "vip id {} is held by two services ({:?} among them)",
                svc.vip_id, svc.name
            ));
        }
        if svc.family != steer_common::FAMILY_V4 && svc.family != steer_common::FAMILY_V6 {
            problems.push(format!(
                "service {:?} has address family {}",
                svc.name, svc.family
            ));
        }
        if svc.proto != steer_common::PROTO_TCP && svc.proto != steer_common::PROTO_UDP {
            problems.push(format!(
                "service {:?} has IP protocol {}",
                svc.name, svc.proto
            ));
        }
        for (backend, r) in &svc.reals {
            if r.id >= max_reals || r.id >= s.next_real {
                problems.push(format!(
                    "backend {backend:?} of service {:?} has real id {} (next_real {}, max_reals {max_reals})",
                    svc.name, r.id, s.next_real
                ));
            } else if !owned.insert(r.id) {
                problems.push(format!(
                    "real id {} is held twice ({backend:?} of {:?} among them)",
                    r.id, svc.name
                ));
            }
        }
    }
    // Class tables after every VIP id is known: they share the id pool.
    for svc in &s.services {
        let mut classes = BTreeSet::new();
        for t in &svc.tables {
            if t.class == 0 || !classes.insert(t.class) {
                problems.push(format!(
                        "service {:?} has a class table for class {} (classes are 1..=255, one table each)",
                        svc.name, t.class
                    ));
            }
            if t.table_id >= max_tables {
                problems.push(format!(
                    "service {:?} has class table id {} (max_tables is {max_tables})",
                    svc.name, t.table_id
                ));
            } else if !vips.insert(t.table_id) {
                problems.push(format!(
                    "table id {} is held twice (class {} of {:?} among them)",
                    t.table_id, t.class, svc.name
                ));
            }
        }
    }
    let mut free = BTreeSet::new();
    for id in &s.free_reals {
        if *id >= s.next_real.min(max_reals) {
            problems.push(format!(
                "free real id {id} was never allocated (next_real {})",
                s.next_real
            ));
        } else if owned.contains(id) {
            problems.push(format!("real id {id} is both free and held"));
        } else if !free.insert(*id) {
            problems.push(format!("real id {id} is free twice"));
        }
    }
    if let Some(id) = s.real_generation.keys().find(|id| **id >= max_reals) {
        problems.push(format!(
            "a generation is recorded for real id {id} (max_reals {max_reals})"
        ));
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn real(id: u32) -> SavedReal {
        SavedReal {
            id,
            address: "192.0.2.1".parse().expect("address"),
        }
    }

    fn service(name: &str, vip_id: u32, reals: &[(&str, u32)]) -> SavedService {
        SavedService {
            name: name.into(),
            vip_id,
            addr: [0; 16],
            port: 80,
            proto: 6,
            family: 4,
            flags: 0,
            generation: 0,
            reals: reals
                .iter()
                .map(|(n, id)| (n.to_string(), real(*id)))
                .collect(),
            tables: vec![],
        }
    }

    fn state() -> SavedState {
        SavedState {
            version: STATE_VERSION,
            ring_size: 7,
            max_tables: 4,
            max_reals: 8,
            conntrack_size: 1024,
            services: vec![
                service("a", 0, &[("a1", 0), ("a2", 1)]),
                service("b", 3, &[("b1", 2)]),
            ],
            real_generation: [(0, 1), (3, 2)].into(),
            free_reals: vec![3],
            next_real: 4,
            drained: vec!["a1".into()],
            drained_regions: vec!["eu".into()],
            region_drain_deadlines: [("eu".to_string(), 1_700_000_000)].into(),
            shifts: vec![],
        }
    }

    /// A file without `shifts` (older versions) reads as no shift; a
    /// shift is saved with its plan and clock and reads back equal.
    #[test]
    fn shifts_are_optional_and_round_trip() {
        use steer_policy::shift::{Plan, Shift, State, Triggers};
        let json = serde_json::to_value(state()).expect("json");
        assert!(json.get("shifts").is_none(), "no shift: no field");
        let old: SavedState = serde_json::from_value(json).expect("old file");
        assert!(old.shifts.is_empty());
        let mut s = state();
        s.shifts = vec![Shift {
            plan: Plan {
                service: "a".into(),
                from: "eu".into(),
                to: "us".into(),
                stages: vec![10, 50, 100],
                hold_ms: 300_000,
                rollback: Triggers {
                    min_healthy_fraction: Some(0.5),
                    ..Triggers::default()
                },
            },
            started: 1_700_000_000_000,
            state: State::Running {
                stage: 1,
                stage_started: 1_700_000_300_000,
            },
        }];
        let text = serde_json::to_string(&s).expect("json");
        assert!(text.contains(r#""stage_started":1700000300000"#), "{text}");
        let back: SavedState = serde_json::from_str(&text).expect("reads back");
        assert_eq!(back, s);
    }

    fn check(s: &SavedState) -> Result<(), Vec<String>> {
        validate(s, 7, 4, 8, 1024)
    }

    fn fails_with(s: &SavedState, needle: &str) {
        let errs = check(s).expect_err("must be rejected");
        assert!(
            errs.iter().any(|e| e.contains(needle)),
            "expected a problem mentioning {needle:?}, got {errs:?}"
        );
    }

    #[test]
    fn a_consistent_state_is_accepted() {
        assert_eq!(check(&state()), Ok(()));
    }

    #[test]
    fn class_tables_must_hold_free_ids_once() {
        let with = |class: u8, table_id: u32| {
            let mut s = state();
            s.services[0].tables = vec![SavedTable { class, table_id }];
            s
        };
        assert_eq!(check(&with(1, 1)), Ok(()));
        // An old file without the key reads as no class tables.
        let mut json = serde_json::to_value(state()).expect("json");
        assert!(json["services"][0].get("tables").is_none());
        json["services"][0]
            .as_object_mut()
            .expect("object")
            .remove("tables");
        let old: SavedState = serde_json::from_value(json).expect("old file");
        assert!(old.services[0].tables.is_empty());
        fails_with(&with(1, 4), "class table id 4 (max_tables is 4)");
        fails_with(&with(1, 3), "table id 3 is held twice");
        fails_with(&with(1, 0), "table id 0 is held twice");
        fails_with(&with(0, 1), "class table for class 0");
    }

    #[test]
    fn other_versions_and_sizes_are_rejected() {
        let mut s = state();
        s.version = STATE_VERSION + 1;
        fails_with(&s, "version");
        let mut s = state();
        s.max_reals = 16;
        fails_with(&s, "sizes");
    }

    #[test]
    fn out_of_range_ids_are_rejected() {
        let mut s = state();
        s.services[1].vip_id = 4;
        fails_with(&s, "vip id 4");
        let mut s = state();
        s.services[0].reals.insert("a3".into(), real(8));
        fails_with(&s, "real id 8");
        let mut s = state();
        s.next_real = 9;
        fails_with(&s, "next_real 9");
        let mut s = state();
        s.free_reals.push(5);
        fails_with(&s, "free real id 5");
        let mut s = state();
        s.real_generation.insert(8, 1);
        fails_with(&s, "real id 8");
        let mut s = state();
        s.services[0].family = 5;
        fails_with(&s, "family 5");
    }

    #[test]
    fn ids_held_twice_are_rejected() {
        let mut s = state();
        s.services[1].vip_id = 0;
        fails_with(&s, "vip id 0 is held by two services");
        let mut s = state();
        s.services[1].reals.insert("b2".into(), real(1));
        fails_with(&s, "real id 1 is held twice");
        let mut s = state();
        s.free_reals.push(0);
        fails_with(&s, "both free and held");
        let mut s = state();
        s.free_reals.push(3);
        fails_with(&s, "free twice");
    }

    /// A unique scratch directory, removed on drop.
    struct Scratch(std::path::PathBuf);

    impl Scratch {
        fn new(tag: &str) -> Scratch {
            let dir =
                std::env::temp_dir().join(format!("steer-persist-{tag}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).expect("temp dir");
            Scratch(dir)
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn mode(path: &Path) -> u32 {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::symlink_metadata(path)
            .expect("stat")
            .permissions()
            .mode()
            & 0o7777
    }

    #[test]
    fn save_writes_a_private_file_and_load_reads_it() {
        let dir = Scratch::new("save");
        let path = dir.0.join("sub").join("dataplane-state.json");
        save(&path, &state()).expect("save");
        assert_eq!(load(&path).expect("load"), Some(state()));
        assert_eq!(mode(&path), 0o600);
        assert_eq!(mode(path.parent().expect("parent")), 0o700);
        assert!(!path.with_extension("tmp").exists());
        // Again, over the first one.
        let mut s = state();
        s.next_real = 3;
        s.free_reals.clear();
        save(&path, &s).expect("save again");
        assert_eq!(load(&path).expect("load"), Some(s));
    }

    #[test]
    fn save_never_writes_through_a_link() {
        use std::os::unix::fs::symlink;
        let dir = Scratch::new("link");
        let victim = dir.0.join("victim");
        std::fs::write(&victim, "precious").expect("victim");
        let path = dir.0.join("dataplane-state.json");
        let tmp = path.with_extension("tmp");
        // A link at the temp name: unlinked, not followed.
        symlink(&victim, &tmp).expect("symlink");
        save(&path, &state()).expect("save");
        assert_eq!(std::fs::read_to_string(&victim).expect("read"), "precious");
        assert!(std::fs::symlink_metadata(&tmp).is_err(), "temp file left");
        assert!(std::fs::symlink_metadata(&path).expect("stat").is_file());
        // A dangling link at the temp name (it would create the victim).
        let absent = dir.0.join("absent");
        symlink(&absent, &tmp).expect("symlink");
        save(&path, &state()).expect("save");
        assert!(!absent.exists(), "the save created the link's target");
        // A link at the file's own name is replaced, its target untouched.
        std::fs::remove_file(&path).expect("remove");
        symlink(&victim, &path).expect("symlink");
        save(&path, &state()).expect("save");
        assert_eq!(std::fs::read_to_string(&victim).expect("read"), "precious");
        assert!(std::fs::symlink_metadata(&path).expect("stat").is_file());
        assert_eq!(load(&path).expect("load"), Some(state()));
    }

    #[test]
    fn state_file_names_follow_the_pin_path() {
        assert_eq!(
            state_file_name(Path::new("/sys/fs/bpf/steer")),
            "dataplane-state-sys-fs-bpf-steer.json"
        );
        // The same directory spelled differently: the same file.
        assert_eq!(
            state_file_name(Path::new("/sys/fs/bpf//steer/")),
            "dataplane-state-sys-fs-bpf-steer.json"
        );
        // Two instances, two files.
        assert_ne!(
            state_file_name(Path::new("/sys/fs/bpf/steer-a")),
            state_file_name(Path::new("/sys/fs/bpf/steer-b"))
        );
        // `a-b` and `a/b` are different directories.
        assert_eq!(
            state_file_name(Path::new("/sys/fs/bpf/a-b")),
            "dataplane-state-sys-fs-bpf-a%2db.json"
        );
        assert_eq!(
            state_file_name(Path::new("/sys/fs/bpf/a/b")),
            "dataplane-state-sys-fs-bpf-a-b.json"
        );
        // Nothing that could leave the state directory.
        let odd = state_file_name(Path::new("/sys/fs/bpf/x y/../ü"));
        assert!(!odd.contains('/') && !odd.contains(' '), "{odd}");
        assert_eq!(odd, "dataplane-state-sys-fs-bpf-x%20y-%c3%bc.json");
    }

    #[test]
    fn a_truncated_file_is_invalid_data() {
        let dir = std::env::temp_dir().join(format!("steer-persist-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("state.json");
        std::fs::write(&path, br#"{"version":1}"#).expect("write");
        let err = load(&path).expect_err("missing fields");
        assert_eq!(err.kind(), std::io::ErrorKind::InvalidData);
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }
}
