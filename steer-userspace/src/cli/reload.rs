//! `steer reload`: make the daemon re-read its config.
//!
//! A reload re-reads the file the daemon was started with; it cannot load
//! another one. So with `--config FILE`, FILE must be the daemon's own file
//! (compared after resolving links and relative paths, with the
//! `config_path` of its status report): a reload "of" another file would
//! say "reloaded" while the daemon read its own.

use std::path::Path;
use std::process::ExitCode;

use anyhow::{bail, Context as _, Result};
use steer::api::{self, Request, Response};

use super::Target;

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    target: Target,
}

pub fn run(args: Args) -> Result<ExitCode> {
    let target = &args.target;
    if let Some(ours) = &target.config {
        let socket = target.socket()?;
        let report = match api::request(&socket, &Request::Status)? {
            Response::Status(report) => report,
            // Refused, say: the daemon's word is the answer.
            other => return super::print_response(other, false),
        };
        let theirs = Path::new(&report.config_path);
        if !same_file(ours, theirs)? {
            bail!(
                "refusing to reload: the daemon on {} was started with {}, not {}, and a \
                 reload only re-reads the daemon's own file. Edit {} and run `steer reload \
                 --config {}`; to run {} instead, restart the daemon with it",
                socket.display(),
                theirs.display(),
                ours.display(),
                theirs.display(),
                theirs.display(),
                ours.display(),
            );
        }
    }
    // The answer names the file the daemon read ("reloaded FILE ...", or
    // "FILE has N error(s) ...").
    super::control(target, Request::Reload, false)
}

/// Whether `ours` (which must exist) and `theirs` are the same file once
/// links and relative paths are resolved.
fn same_file(ours: &Path, theirs: &Path) -> Result<bool> {
    let ours =
        std::fs::canonicalize(ours).with_context(|| format!("cannot read {}", ours.display()))?;
    Ok(std::fs::canonicalize(theirs).is_ok_and(|theirs| theirs == ours))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_file_resolves_links_and_relative_paths() {
        let dir = std::env::temp_dir().join(format!("steer-cli-same-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("sub")).unwrap();
        let file = dir.join("steer.toml");
        let other = dir.join("other.toml");
        std::fs::write(&file, "").unwrap();
        std::fs::write(&other, "").unwrap();
        let link = dir.join("link.toml");
        std::os::unix::fs::symlink(&file, &link).unwrap();
        let dotted = dir.join("sub").join("..").join("steer.toml");

        assert!(same_file(&file, &file).unwrap());
        assert!(same_file(&link, &file).unwrap());
        assert!(same_file(&dotted, &link).unwrap());
        assert!(!same_file(&other, &file).unwrap());
        // The daemon's file is gone: not the same.
        assert!(!same_file(&file, &dir.join("gone.toml")).unwrap());
        // Ours must exist.
        let err = same_file(&dir.join("gone.toml"), &file).unwrap_err();
        assert!(err.to_string().starts_with("cannot read "), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
