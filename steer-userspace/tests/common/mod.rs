//! Helpers shared by the privileged integration tests.
#![allow(dead_code)]

/// True when the test may load BPF programs (root; bpffs mounted for pins).
/// Not root: skips locally, but fails loudly under CI=true, where these
/// tests must run.
pub fn require_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        if let Err(e) = steer::dataplane::ensure_bpffs() {
            panic!("pinning needs a BPF filesystem at /sys/fs/bpf: {e}");
        }
        return true;
    }
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("this test loads BPF programs and needs root; CI must run as root");
    }
    eprintln!("SKIP: not root, cannot load BPF programs");
    false
}

/// A scratch directory under the system's temporary directory, unique to
/// this process and `tag`, removed on drop.
pub struct Scratch(std::path::PathBuf);

impl Scratch {
    pub fn new(tag: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!("steer-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("scratch dir");
        Scratch(dir)
    }

    pub fn path(&self, name: &str) -> std::path::PathBuf {
        self.0.join(name)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
