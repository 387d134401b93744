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
