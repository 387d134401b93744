fn main() {
    // Rebuild when the shared crate changes (it is a path dependency, but the
    // eBPF build runs in its own target directory).
    println!("cargo:rerun-if-changed=../steer-common/src");
}
