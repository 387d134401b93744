//! `cargo xtask test`: everything CI checks, failing fast with the step named.
use std::{
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{bail, Result};

use crate::util::{is_root, run, workspace_root};

struct Step {
    name: &'static str,
    cmd: Command,
}

fn cargo(args: &[&str]) -> Command {
    let mut cmd = Command::new("cargo");
    cmd.current_dir(workspace_root()).args(args);
    cmd
}

/// The BPF target for this host's byte order.
fn bpf_target() -> &'static str {
    if cfg!(target_endian = "big") {
        "bpfeb-unknown-none"
    } else {
        "bpfel-unknown-none"
    }
}

/// The `bpf_target_arch` cfg aya-ebpf needs (aya-build passes the same).
fn bpf_target_arch() -> &'static str {
    match std::env::consts::ARCH {
        a if a.starts_with("riscv64") => "riscv64",
        a => a,
    }
}

/// Lints the XDP program the way aya-build compiles it: nightly,
/// `-Z build-std=core`, for the BPF target, release.
fn ebpf_clippy() -> Command {
    let mut cmd = Command::new("cargo");
    cmd.current_dir(workspace_root().join("steer-ebpf"))
        // Flags meant for the host build must not leak into the BPF build.
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("RUSTC")
        .env_remove("RUSTC_WORKSPACE_WRAPPER")
        .env(
            "RUSTFLAGS",
            format!("--cfg bpf_target_arch=\"{}\"", bpf_target_arch()),
        )
        .args([
            "+nightly",
            "clippy",
            "-p",
            "steer-ebpf",
            "--target",
            bpf_target(),
            "-Z",
            "build-std=core",
            "--release",
            // The benchmark entry points too (feature `bench`).
            "--all-features",
            "--",
            "-D",
            "warnings",
        ]);
    cmd
}

fn secs(d: Duration) -> String {
    format!("{:.1}s", d.as_secs_f64())
}

/// The arguments after `cargo test --workspace ...`: the caller's, with
/// `--include-ignored` added for the test binaries. The privileged tests
/// (BPF, network namespaces) are `#[ignore]`d so that a plain `cargo test`
/// shows them as not run; this runs them, and under CI=true they fail
/// loudly if they cannot.
fn test_args(extra: &[String]) -> Vec<String> {
    let mut args = extra.to_vec();
    if !args.iter().any(|a| a == "--") {
        args.push("--".into());
    }
    args.push("--include-ignored".into());
    args
}

pub fn test(extra: &[String]) -> Result<()> {
    let mut tests = cargo(&["test", "--workspace", "--exclude", "steer-ebpf"]);
    tests.args(test_args(extra));
    let steps = [
        Step {
            name: "fmt",
            cmd: cargo(&["fmt", "--all", "--", "--check"]),
        },
        Step {
            name: "clippy",
            cmd: cargo(&[
                "clippy",
                "--workspace",
                "--exclude",
                "steer-ebpf",
                "--all-targets",
                "--",
                "-D",
                "warnings",
            ]),
        },
        Step {
            name: "clippy (eBPF)",
            cmd: ebpf_clippy(),
        },
        Step {
            name: "tests",
            cmd: tests,
        },
        Step {
            name: "end-to-end (lab)",
            cmd: {
                let mut c =
                    Command::new(std::env::current_exe().unwrap_or_else(|_| "xtask".into()));
                c.current_dir(workspace_root()).arg("e2e");
                c
            },
        },
    ];

    if !is_root() {
        println!(
            "xtask test: warning: not running as root; the privileged tests (which load the \
             XDP program) need root and will fail"
        );
    }

    let start = Instant::now();
    let total = steps.len();
    let mut passed = Vec::new();
    for (i, mut step) in steps.into_iter().enumerate() {
        println!("\n=== [{}/{total}] {} ===", i + 1, step.name);
        let t = Instant::now();
        if let Err(e) = run(&mut step.cmd) {
            println!(
                "\nxtask test: FAILED at step {}/{total} `{}` after {} (passed: {})",
                i + 1,
                step.name,
                secs(start.elapsed()),
                if passed.is_empty() {
                    String::from("none")
                } else {
                    passed.join(", ")
                }
            );
            bail!("step `{}` failed: {e:#}", step.name);
        }
        println!("--- {} passed in {}", step.name, secs(t.elapsed()));
        passed.push(step.name);
    }
    println!(
        "\nxtask test: PASSED all {total} steps ({}) in {}",
        passed.join(", "),
        secs(start.elapsed())
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::test_args;

    #[test]
    fn ignored_tests_are_included_after_the_callers_arguments() {
        assert_eq!(test_args(&[]), ["--", "--include-ignored"]);
        let filter = ["conntrack".to_string()];
        assert_eq!(test_args(&filter), ["conntrack", "--", "--include-ignored"]);
        let harness = [
            "-p".to_string(),
            "x".into(),
            "--".into(),
            "--nocapture".into(),
        ];
        assert_eq!(
            test_args(&harness),
            ["-p", "x", "--", "--nocapture", "--include-ignored"]
        );
    }
}
