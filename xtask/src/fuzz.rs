//! `cargo xtask fuzz`: the data-path fuzzer (`tests/fuzz.rs`) with a chosen
//! frame count and seed. `cargo xtask test` runs the same test with its
//! defaults (1,000,000 frames, a fixed seed).
use std::process::Command;

use anyhow::{bail, Result};

use crate::util::{is_root, run, workspace_root};

/// The seed to use: the given one, or one from the clock.
pub fn pick_seed(seed: Option<u64>) -> u64 {
    seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1)
    })
}

/// Parses a seed written in decimal or as `0x...` hex.
pub fn parse_seed(s: &str) -> Result<u64, String> {
    let parsed = match s.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => s.parse(),
    };
    parsed.map_err(|_| format!("{s:?} is not a seed: give a decimal number or 0x-prefixed hex"))
}

pub fn fuzz(frames: u64, seed: Option<u64>) -> Result<()> {
    if !is_root() {
        bail!("the fuzzer runs frames through the XDP program (BPF_PROG_TEST_RUN) and needs root; run it with sudo");
    }
    let seed = pick_seed(seed);
    println!(
        "=== fuzzing the data path: {frames} frames, seed {seed:#x} (repeat with --seed {seed:#x})"
    );
    run(Command::new("cargo")
        .current_dir(workspace_root())
        .env("STEER_FUZZ_FRAMES", frames.to_string())
        .env("STEER_FUZZ_SEED", format!("{seed:#x}"))
        .args([
            "test",
            "-p",
            "steer-tests",
            "--test",
            "fuzz",
            "--",
            "--include-ignored",
            "--nocapture",
        ]))
}
