//! `cargo xtask setup`: installs what the build and the tests need.
//!
//! Idempotent. Every step first checks whether its work is already done and
//! skips it if so; `verbose` decides whether the skips are printed (the other
//! subcommands run setup quietly, so it prints only when it changes
//! something).
use std::{
    env,
    ffi::OsString,
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{anyhow, bail, Context as _, Result};

use crate::util::{is_root, run, stdout_of};

/// The bpf-linker release steer builds with, and the LLVM it is built for.
pub const BPF_LINKER_VERSION: &str = "0.13.0";
const BPF_LINKER_LLVM_FEATURE: &str = "llvm-22";
/// The nightly toolchain's LLVM library must match `BPF_LINKER_LLVM_FEATURE`.
const LIBLLVM_PREFIX: &str = "libLLVM.so.22.";

struct Log {
    verbose: bool,
}

impl Log {
    /// A check that found nothing to do.
    fn ok(&self, msg: &str) {
        if self.verbose {
            println!("setup: ok: {msg}");
        }
    }

    /// Something setup is about to change.
    fn act(&self, msg: &str) {
        println!("setup: {msg}");
    }
}

pub fn setup(verbose: bool) -> Result<()> {
    let log = Log { verbose };
    ensure_cargo_bin_on_path(&log)?;
    ensure_toolchains(&log)?;
    ensure_bpf_linker(&log)?;
    ensure_ip(&log)?;
    if verbose {
        println!("setup: done; everything the build and the tests need is installed");
    }
    Ok(())
}

/// `$CARGO_HOME/bin`, where rustup's proxies and `cargo install` live.
fn cargo_bin_dir() -> Result<PathBuf> {
    if let Some(home) = env::var_os("CARGO_HOME").filter(|h| !h.is_empty()) {
        return Ok(PathBuf::from(home).join("bin"));
    }
    let home = env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .ok_or_else(|| anyhow!("neither CARGO_HOME nor HOME is set"))?;
    Ok(PathBuf::from(home).join(".cargo").join("bin"))
}

fn path_entries() -> Vec<PathBuf> {
    env::var_os("PATH")
        .map(|p| env::split_paths(&p).collect())
        .unwrap_or_default()
}

/// Puts `dir` on PATH for this process and all its children: first, if
/// `to_front`, else only if it is missing (then also first).
fn put_on_path(dir: &Path, to_front: bool) -> Result<()> {
    let mut entries = path_entries();
    let present = entries.iter().any(|e| e == dir);
    if present && !to_front {
        return Ok(());
    }
    entries.retain(|e| e != dir);
    entries.insert(0, dir.to_path_buf());
    let joined: OsString = env::join_paths(entries).context("joining PATH")?;
    // Edition 2021: set_var is safe. xtask is single-threaded here, and every
    // child process inherits the new PATH.
    env::set_var("PATH", joined);
    Ok(())
}

fn ensure_cargo_bin_on_path(log: &Log) -> Result<()> {
    let dir = cargo_bin_dir()?;
    if path_entries().iter().any(|e| e == &dir) {
        log.ok(&format!("{} is on PATH", dir.display()));
    } else {
        log.act(&format!(
            "{} is not on PATH; adding it for the commands xtask runs",
            dir.display()
        ));
        put_on_path(&dir, false)?;
    }
    Ok(())
}

fn host_triple() -> Result<String> {
    let vv = stdout_of("rustc", ["-vV"]).ok_or_else(|| {
        anyhow!("`rustc -vV` failed; is rustup installed and ~/.cargo/bin on PATH?")
    })?;
    vv.lines()
        .find_map(|l| l.strip_prefix("host: "))
        .map(|h| h.trim().to_owned())
        .ok_or_else(|| anyhow!("`rustc -vV` printed no host line"))
}

fn has_component(toolchain: Option<&str>, component: &str) -> Result<bool> {
    let mut args = vec!["component", "list", "--installed"];
    if let Some(t) = toolchain {
        args.extend(["--toolchain", t]);
    }
    let out =
        stdout_of("rustup", &args).ok_or_else(|| anyhow!("`rustup {}` failed", args.join(" ")))?;
    let prefix = format!("{component}-");
    Ok(out
        .lines()
        .map(str::trim)
        .any(|l| l == component || l.starts_with(&prefix)))
}

fn ensure_toolchains(log: &Log) -> Result<()> {
    if stdout_of("rustup", ["--version"]).is_none() {
        bail!(
            "rustup is required (the eBPF program is built with a nightly toolchain); \
             install it from https://rustup.rs"
        );
    }
    let nightly = format!("nightly-{}", host_triple()?);
    let toolchains = stdout_of("rustup", ["toolchain", "list"])
        .ok_or_else(|| anyhow!("`rustup toolchain list` failed"))?;
    let have_nightly = toolchains
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .any(|t| t == nightly);
    if have_nightly {
        log.ok(&format!("toolchain {nightly} is installed"));
    } else {
        log.act("no nightly toolchain; installing it (used only to build the eBPF program)");
        run(Command::new("rustup").args([
            "toolchain",
            "install",
            "nightly",
            "--profile",
            "minimal",
        ]))?;
    }

    // The default toolchain builds and lints the workspace; nightly builds
    // and lints the eBPF crate (with -Z build-std=core, hence rust-src).
    let wanted: [(Option<&str>, &str); 4] = [
        (None, "rustfmt"),
        (None, "clippy"),
        (Some("nightly"), "rust-src"),
        (Some("nightly"), "clippy"),
    ];
    for (toolchain, component) in wanted {
        let name = toolchain.unwrap_or("default");
        if has_component(toolchain, component)? {
            log.ok(&format!(
                "component {component} ({name} toolchain) is installed"
            ));
            continue;
        }
        log.act(&format!(
            "installing component {component} ({name} toolchain)"
        ));
        let mut cmd = Command::new("rustup");
        cmd.args(["component", "add", component]);
        if let Some(t) = toolchain {
            cmd.args(["--toolchain", t]);
        }
        run(&mut cmd)?;
    }
    Ok(())
}

/// The version `<binary> --version` reports, if it runs.
fn bpf_linker_version(binary: &Path) -> Option<String> {
    let out = stdout_of(binary.to_str()?, ["--version"])?;
    // "bpf-linker 0.13.0"
    out.split_whitespace().nth(1).map(str::to_owned)
}

/// Where bpf-linker's build finds LLVM: a directory whose `lib/` holds
/// links to the nightly toolchain's libLLVM.
pub fn llvm_prefix() -> Result<PathBuf> {
    let cache = match env::var_os("XDG_CACHE_HOME").filter(|c| !c.is_empty()) {
        Some(c) => PathBuf::from(c),
        None => {
            let home = env::var_os("HOME")
                .filter(|h| !h.is_empty())
                .ok_or_else(|| anyhow!("neither XDG_CACHE_HOME nor HOME is set"))?;
            PathBuf::from(home).join(".cache")
        }
    };
    Ok(cache.join("steer").join("llvm"))
}

/// `$(rustc +nightly --print sysroot)/lib/libLLVM.so.22.*-rust-*`.
fn nightly_libllvm() -> Result<PathBuf> {
    let sysroot = stdout_of("rustc", ["+nightly", "--print", "sysroot"])
        .ok_or_else(|| anyhow!("`rustc +nightly --print sysroot` failed"))?;
    let lib = Path::new(sysroot.trim()).join("lib");
    let mut found = Vec::new();
    let mut other = Vec::new();
    for entry in fs::read_dir(&lib).with_context(|| format!("reading {}", lib.display()))? {
        let name = entry?.file_name().to_string_lossy().into_owned();
        if name.starts_with(LIBLLVM_PREFIX) && name.contains("-rust-") {
            found.push(lib.join(&name));
        } else if name.starts_with("libLLVM") {
            other.push(name);
        }
    }
    found.sort();
    match found.pop() {
        Some(path) => Ok(path),
        None => bail!(
            "the nightly toolchain has no {LIBLLVM_PREFIX}*-rust-* in {}{}; bpf-linker \
             {BPF_LINKER_VERSION} is built with --features {BPF_LINKER_LLVM_FEATURE} and needs \
             the nightly toolchain's LLVM to be LLVM 22 (try `rustup update nightly`, or pin a \
             nightly whose `rustc +nightly -vV` reports LLVM 22)",
            lib.display(),
            if other.is_empty() {
                String::from(" (no libLLVM at all)")
            } else {
                format!(" (found: {})", other.join(", "))
            }
        ),
    }
}

/// Makes `link` a symlink to `target`, replacing whatever was there.
fn symlink(link: &Path, target: &Path, log: &Log) -> Result<()> {
    if fs::read_link(link).ok().as_deref() == Some(target) {
        log.ok(&format!("{} -> {}", link.display(), target.display()));
        return Ok(());
    }
    if fs::symlink_metadata(link).is_ok() {
        fs::remove_file(link).with_context(|| format!("removing {}", link.display()))?;
    }
    log.act(&format!(
        "linking {} -> {}",
        link.display(),
        target.display()
    ));
    std::os::unix::fs::symlink(target, link)
        .with_context(|| format!("symlinking {} -> {}", link.display(), target.display()))
}

/// Fills `<prefix>/lib` with `libLLVM.so` (what bpf-linker's build links
/// against) and a link under the library's own file name, which is its
/// soname: the built bpf-linker has `<prefix>/lib` as its RUNPATH and asks
/// the dynamic loader for the soname, not for `libLLVM.so`. Links left over
/// from an older nightly, now dangling, are removed.
fn link_llvm(prefix: &Path, log: &Log) -> Result<()> {
    let libllvm = nightly_libllvm()?;
    let lib = prefix.join("lib");
    fs::create_dir_all(&lib).with_context(|| format!("creating {}", lib.display()))?;
    for entry in fs::read_dir(&lib)? {
        let path = entry?.path();
        let is_link = fs::symlink_metadata(&path).is_ok_and(|m| m.file_type().is_symlink());
        if is_link && !path.exists() {
            log.act(&format!("removing dangling link {}", path.display()));
            fs::remove_file(&path)?;
        }
    }
    let file_name = libllvm
        .file_name()
        .ok_or_else(|| anyhow!("{} has no file name", libllvm.display()))?;
    symlink(&lib.join("libLLVM.so"), &libllvm, log)?;
    symlink(&lib.join(file_name), &libllvm, log)?;
    Ok(())
}

/// Builds and installs bpf-linker against the nightly toolchain's LLVM, into
/// `root` (cargo's `--root`) or, by default, `$CARGO_HOME/bin`.
pub fn install_bpf_linker(root: Option<&Path>) -> Result<()> {
    let log = Log { verbose: true };
    let prefix = llvm_prefix()?;
    link_llvm(&prefix, &log)?;
    let mut cmd = Command::new("cargo");
    cmd.env("LLVM_PREFIX", &prefix).args([
        "install",
        "bpf-linker",
        "--version",
        BPF_LINKER_VERSION,
        "--no-default-features",
        "--features",
        BPF_LINKER_LLVM_FEATURE,
        // Rebuild even if cargo's records say this version is installed: we
        // only get here when the installed binary does not run (typically
        // because the nightly it was linked against was replaced).
        "--force",
    ]);
    if let Some(root) = root {
        cmd.arg("--root").arg(root);
    }
    run(&mut cmd).context("building bpf-linker failed")?;
    let installed = match root {
        Some(root) => root.join("bin").join("bpf-linker"),
        None => cargo_bin_dir()?.join("bpf-linker"),
    };
    match bpf_linker_version(&installed) {
        Some(v) if v == BPF_LINKER_VERSION => {
            println!("setup: {} reports version {v}", installed.display());
            Ok(())
        }
        other => bail!(
            "{} was built but `--version` reports {other:?}, not {BPF_LINKER_VERSION}",
            installed.display()
        ),
    }
}

fn ensure_bpf_linker(log: &Log) -> Result<()> {
    let wanted = Some(BPF_LINKER_VERSION.to_owned());
    let in_cargo_bin = cargo_bin_dir()?.join("bpf-linker");
    let good = |log: &Log| -> Result<bool> {
        if bpf_linker_version(Path::new("bpf-linker")) == wanted {
            return Ok(true);
        }
        if bpf_linker_version(&in_cargo_bin) == wanted {
            // A different bpf-linker comes first on PATH; prefer ours.
            log.act(&format!(
                "putting {} first on PATH (another bpf-linker shadows it)",
                in_cargo_bin.display()
            ));
            put_on_path(&cargo_bin_dir()?, true)?;
            return Ok(true);
        }
        Ok(false)
    };

    if good(log)? {
        log.ok(&format!("bpf-linker {BPF_LINKER_VERSION} is installed"));
        return Ok(());
    }

    // An installed bpf-linker may just be missing its libLLVM link (for
    // example the soname link, or a nightly update changed the path).
    if in_cargo_bin.exists() {
        link_llvm(&llvm_prefix()?, log)?;
        if good(log)? {
            log.ok(&format!(
                "bpf-linker {BPF_LINKER_VERSION} runs again after relinking libLLVM"
            ));
            return Ok(());
        }
    }

    log.act(&format!(
        "installing bpf-linker {BPF_LINKER_VERSION} against the nightly toolchain's LLVM \
         (this takes a few minutes)"
    ));
    install_bpf_linker(None)?;
    if !good(log)? {
        bail!(
            "bpf-linker was installed into {} but `bpf-linker --version` does not report {}",
            in_cargo_bin.display(),
            BPF_LINKER_VERSION
        );
    }
    Ok(())
}

fn ensure_ip(log: &Log) -> Result<()> {
    if stdout_of("ip", ["-V"]).is_some() {
        log.ok("ip (iproute2) is installed");
        return Ok(());
    }
    if !is_root() {
        bail!(
            "the tests need `ip` (iproute2), which is missing; install it \
             (e.g. `sudo apt-get install iproute2`) or run as root so setup can"
        );
    }
    if stdout_of("apt-get", ["--version"]).is_none() {
        bail!("the tests need `ip` (iproute2), which is missing, and there is no apt-get to install it with; install iproute2 with your package manager");
    }
    log.act("ip (iproute2) is missing; installing it with apt-get");
    run(Command::new("apt-get").arg("update"))?;
    run(Command::new("apt-get")
        .env("DEBIAN_FRONTEND", "noninteractive")
        .args(["install", "-y", "iproute2"]))?;
    if stdout_of("ip", ["-V"]).is_none() {
        bail!("installed iproute2 but `ip -V` still fails");
    }
    Ok(())
}
