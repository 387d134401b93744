//! The `steer` command's subcommands, one module each, and what they
//! share: finding the daemon's control socket, printing its answers, and
//! writing to standard output without panicking when the reader is gone.

pub mod check;
pub mod drain;
pub mod reload;
pub mod replay;
pub mod run;
pub mod status;
pub mod stop;

use std::fmt;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context as _, Result};
use steer::api::{self, Request, Response};
use steer::config::Config;

/// Where to find the running daemon's control socket.
#[derive(clap::Args, Clone)]
pub struct Target {
    /// The daemon's config file; its [control] socket is used.
    #[arg(long, short, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// The daemon's control socket, if not the one in the config
    /// [default: /run/steer/control.sock].
    #[arg(long, value_name = "PATH")]
    pub socket: Option<PathBuf>,
}

impl Target {
    pub fn socket(&self) -> Result<PathBuf> {
        if let Some(s) = &self.socket {
            return Ok(s.clone());
        }
        if let Some(c) = &self.config {
            return socket_from_config(c);
        }
        Ok(PathBuf::from(DEFAULT_SOCKET))
    }
}

/// The config file `steer run` and `steer check` read unless given
/// `--config`.
pub const DEFAULT_CONFIG: &str = "/etc/steer/steer.toml";

const DEFAULT_SOCKET: &str = "/run/steer/control.sock";

/// The control socket named by a config file. Only `[control] socket` is
/// read: the file may be invalid (that is what `steer reload` is for; the
/// daemon validates it and reports every error).
fn socket_from_config(path: &Path) -> Result<PathBuf> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let socket = toml::from_str::<toml::Table>(&text)
        .ok()
        .and_then(|t| t.get("control")?.get("socket")?.as_str().map(PathBuf::from));
    Ok(socket.unwrap_or_else(|| PathBuf::from(DEFAULT_SOCKET)))
}

/// Standard output was closed by its reader (`steer status | head -1`).
/// Not a failure: `main` exits quietly, as Unix tools do.
#[derive(Debug)]
pub struct StdoutClosed;

impl fmt::Display for StdoutClosed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("standard output was closed")
    }
}

impl std::error::Error for StdoutClosed {}

/// Writes to standard output. A closed pipe becomes [`StdoutClosed`];
/// any other failure (a full disk, say) is an error that says so.
pub fn out(args: fmt::Arguments<'_>) -> Result<()> {
    let mut stdout = std::io::stdout().lock();
    match stdout.write_fmt(args).and_then(|()| stdout.flush()) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Err(StdoutClosed.into()),
        Err(e) => Err(e).context("writing to standard output"),
    }
}

/// `println!` through [`out`]: returns an error instead of panicking.
macro_rules! outln {
    ($($arg:tt)*) => {
        $crate::cli::out(format_args!("{}\n", format_args!($($arg)*)))
    };
}
pub(crate) use outln;

/// Writes a line to standard error; if that is closed too, there is
/// nowhere left to say anything, so the line is dropped.
pub fn errln(line: fmt::Arguments<'_>) {
    let _ = writeln!(std::io::stderr().lock(), "{line}");
}

/// Sends one request to the daemon and prints the answer.
pub fn control(target: &Target, req: Request, json: bool) -> Result<ExitCode> {
    let socket = target.socket()?;
    let resp = api::request(&socket, &req)?;
    print_response(resp, json)
}

pub fn print_response(resp: Response, json: bool) -> Result<ExitCode> {
    match resp {
        Response::Status(report) => {
            if json {
                match serde_json::to_string_pretty(&report) {
                    Ok(s) => outln!("{s}")?,
                    Err(e) => {
                        errln(format_args!("steer: error: {e}"));
                        return Ok(ExitCode::FAILURE);
                    }
                }
            } else {
                out(format_args!("{}", api::render_status_table(&report)))?;
            }
            Ok(ExitCode::SUCCESS)
        }
        Response::Ok { message } => {
            outln!("{message}")?;
            Ok(ExitCode::SUCCESS)
        }
        Response::Error { message, details } => {
            errln(format_args!("steer: error: {message}"));
            for d in details {
                errln(format_args!("  {d}"));
            }
            Ok(ExitCode::FAILURE)
        }
    }
}

pub fn load_config(path: &Path) -> Result<Config> {
    Config::load(path).map_err(|errs| {
        anyhow::anyhow!("{} has {} error(s):\n{errs}", path.display(), errs.0.len())
    })
}
