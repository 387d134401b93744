//! Builds the XDP programs (crate `steer-ebpf`) with the nightly toolchain
//! for `bpfel-unknown-none`; `dataplane` embeds the objects:
//!
//! - `steer`: the production object, `steer_xdp` and its maps only;
//! - `steer-bench`: the same with feature `bench`, which adds the benchmark
//!   entry points and the `BENCH` map (`Dataplane::load_bench`);
//! - `steer-verdicts`: `steer_pass`, `steer_tx`, `steer_drop`
//!   (`dataplane::verdict`).
use anyhow::{anyhow, Context as _};

fn build(root: &str, features: &'static [&'static str]) -> anyhow::Result<()> {
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "steer-ebpf",
            root_dir: root,
            features,
            ..Default::default()
        }],
        aya_build::Toolchain::default(),
    )
    .context("building the XDP program failed; run `cargo xtask setup` to install bpf-linker and rust-src")
}

fn main() -> anyhow::Result<()> {
    let manifest = std::path::PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?);
    let ebpf_dir = manifest
        .parent()
        .ok_or_else(|| anyhow!("no workspace root"))?
        .join("steer-ebpf");
    let root = ebpf_dir.to_str().ok_or_else(|| anyhow!("non-UTF-8 path"))?;
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    // aya-build copies each binary target to OUT_DIR/<bin name>, so the
    // benchmark build's `steer` is renamed before the production build
    // writes its own. (Both builds share one target directory; cargo keeps
    // both feature sets' artifacts, so neither rebuilds the other's.)
    build(root, &["bench"])?;
    let (from, to) = (out.join("steer"), out.join("steer-bench"));
    std::fs::rename(&from, &to)
        .with_context(|| format!("renaming {} to {}", from.display(), to.display()))?;
    build(root, &[])
}
