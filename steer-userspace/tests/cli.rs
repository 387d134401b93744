//! The `steer` command line without a daemon and without privileges:
//! default paths, logging flags and error messages.

mod common;
use common::{text, Scratch};

use std::process::{Command, Output};

const STEER: &str = env!("CARGO_BIN_EXE_steer");

/// The shared fixture, its service served by region eu.
const CFG: &str = concat!(
    include_str!("fixtures/eu.toml"),
    r#"regions = ["eu"]
"#
);

fn steer(args: &[&str]) -> Output {
    Command::new(STEER)
        .args(args)
        .env("NO_COLOR", "1")
        .env_remove("RUST_LOG")
        .output()
        .expect("run steer")
}

/// An error whose source is also printed in its own message (thiserror's
/// `{0}` with `#[from]`) used to be shown twice: "... Is a directory (os
/// error 21): Is a directory (os error 21)".
#[test]
fn error_causes_are_not_repeated() {
    let dir = Scratch::new("cli-chain");
    let cfg = dir.path("steer.toml");
    std::fs::write(&cfg, CFG).unwrap();
    // A directory opens, and reading it fails with EISDIR.
    let capture = dir.path("capture-dir");
    std::fs::create_dir(&capture).unwrap();
    let out = steer(&[
        "replay",
        "--config",
        cfg.to_str().unwrap(),
        "--in",
        capture.to_str().unwrap(),
        "--out",
        dir.path("out.pcap").to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    let cause = "Is a directory (os error 21)";
    assert_eq!(err.matches(cause).count(), 1, "cause not shown once: {err}");
    assert!(
        err.starts_with(&format!(
            "steer: error: {} is not a usable capture: ",
            capture.display()
        )),
        "{err}"
    );
}

/// `steer check` without --config reads /etc/steer/steer.toml.
#[test]
fn check_defaults_to_etc_steer() {
    let out = steer(&["check"]);
    let said = text(&out.stdout) + &text(&out.stderr);
    assert!(said.contains("/etc/steer/steer.toml"), "{said}");
    if !std::path::Path::new("/etc/steer/steer.toml").exists() {
        assert!(!out.status.success(), "{said}");
    }
}

/// A --log-level that is not a filter is refused before anything runs,
/// with the flag and a way out in the message.
#[test]
fn bad_log_level_is_refused() {
    let dir = Scratch::new("cli-log");
    let cfg = dir.path("steer.toml");
    std::fs::write(&cfg, CFG).unwrap();
    let out = steer(&[
        "check",
        "--log-level",
        "steer=loud",
        "--config",
        cfg.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert!(
        err.contains("--log-level \"steer=loud\" is not a log filter"),
        "{err}"
    );
    assert!(err.contains("steer=debug,info"), "{err}");
    // A good one is accepted, before or after the subcommand.
    let out = steer(&[
        "--log-level",
        "debug",
        "check",
        "--config",
        cfg.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = steer(&[
        "check",
        "--log-format",
        "json",
        "--config",
        cfg.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
}
