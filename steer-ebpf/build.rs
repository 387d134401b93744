fn main() {
    // Rebuild when the shared crate changes (it is a path dependency, but the
    // eBPF build runs in its own target directory).
    println!("cargo:rerun-if-changed=../steer-common/src");
    // bpf-linker asks LLVM to expand memcpy "in order" by default, which
    // also turns off inline expansion of memset/memmove: every struct copy
    // or zeroing then becomes a call to a byte-at-a-time loop. Let LLVM
    // expand them inline as word loads and stores instead.
    println!("cargo:rustc-link-arg=--disable-expand-memcpy-in-order");
}
