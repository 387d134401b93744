//! Builds the XDP program (crate `steer-ebpf`) with the nightly toolchain for
//! `bpfel-unknown-none`; the object is embedded by `dataplane`.
use anyhow::{anyhow, Context as _};

fn main() -> anyhow::Result<()> {
    let manifest = std::path::PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?);
    let ebpf_dir = manifest
        .parent()
        .ok_or_else(|| anyhow!("no workspace root"))?
        .join("steer-ebpf");
    let root = ebpf_dir.to_str().ok_or_else(|| anyhow!("non-UTF-8 path"))?;
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "steer-ebpf",
            root_dir: root,
            ..Default::default()
        }],
        aya_build::Toolchain::default(),
    )
    .context("building the XDP program failed; run `cargo xtask setup` to install bpf-linker and rust-src")
}
