fn main() {
    // Rebuild when the shared crate changes (it is a path dependency, but the
    // eBPF build runs in its own target directory).
    println!("cargo:rerun-if-changed=../steer-common/src");
    // bpf-linker asks LLVM to expand memcpy "in order" by default, which
    // also turns off inline expansion of memset/memmove: every struct copy
    // or zeroing then becomes a call to a byte-at-a-time loop. Let LLVM
    // expand them inline as word loads and stores instead.
    println!("cargo:rustc-link-arg=--disable-expand-memcpy-in-order");
    // The kernel lets packet and map-value accesses be misaligned on
    // architectures with efficient unaligned access (x86-64, arm64); LLVM
    // would otherwise split every header read and write it cannot prove
    // aligned into single bytes.
    println!("cargo:rustc-link-arg=--cpu-features=+allows-misaligned-mem-access");
    // The verifier refuses misaligned stack accesses, and with the feature
    // above LLVM's store merging would join the byte stores of a stack
    // object into misaligned words. A misaligned stack access left anyway
    // fails to load ("misaligned stack access") in every BPF test.
    println!("cargo:rustc-link-arg=--llvm-args=-combiner-store-merging=false");
}
