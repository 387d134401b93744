//! The `steer` command's subcommands, one module each, and what they
//! share: finding the daemon's control socket, printing its answers, and
//! writing to standard output without panicking when the reader is gone.

pub mod check;
pub mod drain;
pub mod explain;
pub mod reload;
pub mod replay;
pub mod run;
pub mod shift;
pub mod status;
pub mod stop;

use std::fmt;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context as _, Result};
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
/// read: the file may otherwise be invalid (that is what `steer reload` is
/// for; the daemon validates it and reports every error). But it must be
/// TOML, with a string at `control.socket` if it has one: guessing the
/// default socket for a file that cannot be read could reach another
/// daemon.
fn socket_from_config(path: &Path) -> Result<PathBuf> {
    let shown = path.display();
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {shown}"))?;
    let table = match toml::from_str::<toml::Table>(&text) {
        Ok(table) => table,
        Err(e) => {
            // The config crate's one-line syntax error, with its position.
            let why = Config::parse(&text)
                .err()
                .and_then(|errs| errs.0.into_iter().find(|e| e.path == "(syntax)"))
                .map_or_else(|| e.message().trim().to_string(), |e| e.message);
            bail!(
                "{shown}: {why}, so the daemon's control socket cannot be read from it; fix \
                 the file, or name the socket with --socket PATH"
            );
        }
    };
    let Some(control) = table.get("control") else {
        return Ok(PathBuf::from(DEFAULT_SOCKET));
    };
    let Some(control) = control.as_table() else {
        bail!(
            "{shown}: control is not a table, so its control.socket is unknown; fix the file, \
             or name the socket with --socket PATH"
        );
    };
    match control.get("socket") {
        None => Ok(PathBuf::from(DEFAULT_SOCKET)),
        Some(toml::Value::String(s)) if !s.is_empty() => Ok(PathBuf::from(s)),
        Some(other) => bail!(
            "{shown}: control.socket is {}, not a path; fix the file, or name the socket \
             with --socket PATH",
            match other {
                toml::Value::String(_) => "empty",
                toml::Value::Integer(_) => "an integer",
                toml::Value::Float(_) => "a float",
                toml::Value::Boolean(_) => "a boolean",
                toml::Value::Datetime(_) => "a date",
                toml::Value::Array(_) => "an array",
                toml::Value::Table(_) => "a table",
            }
        ),
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A config file in a scratch directory, removed on drop.
    struct File(PathBuf);

    impl File {
        fn new(tag: &str, text: &str) -> File {
            let path =
                std::env::temp_dir().join(format!("steer-cli-{tag}-{}.toml", std::process::id()));
            std::fs::write(&path, text).expect("write config");
            File(path)
        }
    }

    impl Drop for File {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    fn target(config: &File) -> Target {
        Target {
            config: Some(config.0.clone()),
            socket: None,
        }
    }

    #[test]
    fn a_config_that_is_not_toml_names_no_socket() {
        let f = File::new(
            "syntax",
            "[control]\nsocket = \"/run/x/c.sock\"\n[dataplane\n",
        );
        let err = target(&f)
            .socket()
            .expect_err("a socket from a broken file");
        let msg = format!("{err:#}");
        let shown = f.0.display();
        assert!(
            msg.starts_with(&format!("{shown}: line 3, column ")),
            "{msg}"
        );
        assert!(msg.contains("(the file is not valid TOML)"), "{msg}");
        assert!(
            msg.ends_with(
                "so the daemon's control socket cannot be read from it; fix the file, \
                 or name the socket with --socket PATH"
            ),
            "{msg}"
        );
        // --socket needs no file.
        let t = Target {
            socket: Some(PathBuf::from("/run/y/c.sock")),
            ..target(&f)
        };
        assert_eq!(t.socket().expect("socket"), PathBuf::from("/run/y/c.sock"));
    }

    #[test]
    fn an_invalid_config_still_names_its_socket() {
        // Valid TOML, invalid config (no [dataplane], an unknown key): the
        // socket is found, so that `steer reload` reaches the daemon and
        // the daemon reports the errors.
        let f = File::new(
            "invalid",
            "bogus = 1\n[control]\nsocket = \"/run/x/c.sock\"\ngroup = \"no-such\"\n",
        );
        assert!(Config::parse(&std::fs::read_to_string(&f.0).unwrap()).is_err());
        assert_eq!(
            target(&f).socket().expect("socket"),
            PathBuf::from("/run/x/c.sock")
        );
        let f = File::new("nocontrol", "bogus = 1\n");
        assert_eq!(
            target(&f).socket().expect("socket"),
            PathBuf::from("/run/steer/control.sock")
        );
    }

    #[test]
    fn a_socket_that_is_not_a_path_is_an_error() {
        for (text, what) in [
            (
                "[control]\nsocket = 5\n",
                "control.socket is an integer, not a path",
            ),
            (
                "[control]\nsocket = \"\"\n",
                "control.socket is empty, not a path",
            ),
            (
                "control = 5\n",
                "control is not a table, so its control.socket is unknown",
            ),
        ] {
            let f = File::new("notpath", text);
            let err = target(&f).socket().expect_err(text);
            let msg = format!("{err:#}");
            assert!(
                msg.starts_with(&format!("{}: {what}; ", f.0.display())),
                "{text}: {msg}"
            );
        }
    }
}
