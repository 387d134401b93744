//! The `steer` command. Each subcommand lives in its own module under
//! `cli/`; this file parses the command line, sets up logging and turns
//! the result into an exit code.

mod cli;

use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use tracing_subscriber::EnvFilter;

#[derive(Parser)]
#[command(name = "steer", version, about = "XDP traffic steerer")]
struct Cli {
    /// What to log: a level (error, warn, info, debug, trace) or tracing
    /// directives such as `steer=debug,info`
    /// [default: $RUST_LOG, else info].
    #[arg(long, global = true, value_name = "FILTER")]
    log_level: Option<String>,
    /// How log lines are written to stderr: `text` for people, `json` for
    /// log collectors (one JSON object per line).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug, ValueEnum)]
enum LogFormat {
    /// One line per event, for people.
    Text,
    /// One JSON object per event: timestamp, level, target, message and
    /// the event's fields.
    Json,
}

#[derive(Subcommand)]
enum Cmd {
    /// Attach to the configured interfaces and steer traffic until SIGTERM
    /// or `steer stop`.
    Run(cli::run::Args),
    /// Stop the daemon: by default it detaches XDP and removes its pinned
    /// state. With --detach, also cleans up after a daemon that was killed.
    Stop(cli::stop::Args),
    /// Make the daemon re-read its config (same as SIGHUP) and print what
    /// changed.
    Reload(cli::reload::Args),
    /// Version, uptime, interfaces, services, backends, health and counters.
    Status(cli::status::Args),
    /// Stop sending new flows to a backend (established flows continue).
    Drain(cli::drain::Args),
    /// Move a service's new flows from one region to another in stages,
    /// with automatic rollback: start, status, pause, resume, abort.
    Shift(cli::shift::Args),
    /// Why a flow goes where it goes: class, region order, health, dials,
    /// capacity, panic, residency and the backend, from the running daemon
    /// or offline from a config (--config).
    Explain(Box<cli::explain::Args>),
    /// Validate a configuration file and report every error.
    Check(cli::check::Args),
    /// Run every packet of a capture through the real XDP program
    /// (BPF_PROG_TEST_RUN; needs root, no NIC) and write what it transmitted.
    Replay(Box<cli::replay::Args>),
}

/// The log filter: `--log-level`, else `RUST_LOG`, else `info`.
fn log_filter(flag: Option<&str>) -> Result<EnvFilter, String> {
    match flag {
        Some(f) => EnvFilter::try_new(f).map_err(|e| {
            format!(
                "--log-level {f:?} is not a log filter ({e}); use a level (error, warn, info, \
                 debug, trace) or directives such as `steer=debug,info`"
            )
        }),
        None => Ok(EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"))),
    }
}

fn init_logging(filter: EnvFilter, format: LogFormat) {
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // A log line that cannot be written (stderr is a pipe whose reader
        // is gone) is dropped. By default the subscriber would report that
        // with eprintln!, which panics on the same closed pipe and would
        // take the daemon down.
        .log_internal_errors(false);
    match format {
        LogFormat::Text => builder
            .with_ansi(
                std::io::IsTerminal::is_terminal(&std::io::stderr())
                    && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty()),
            )
            .init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .init(),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = match log_filter(cli.log_level.as_deref()) {
        Ok(f) => f,
        Err(e) => {
            cli::errln(format_args!("steer: error: {e}"));
            return ExitCode::from(2);
        }
    };
    init_logging(filter, cli.log_format);
    // SIGPIPE stays ignored (Rust's default) for every subcommand, so a
    // closed pipe is an EPIPE error, never a kill: the daemon carries on,
    // and the other commands stop quietly (cli::StdoutClosed).
    let result = match cli.cmd {
        Cmd::Run(args) => cli::run::run(args),
        Cmd::Stop(args) => cli::stop::run(args),
        Cmd::Reload(args) => cli::reload::run(args),
        Cmd::Status(args) => cli::status::run(args),
        Cmd::Drain(args) => cli::drain::run(args),
        Cmd::Shift(args) => cli::shift::run(args),
        Cmd::Check(args) => cli::check::run(args),
        Cmd::Replay(args) => cli::replay::run(*args),
        Cmd::Explain(args) => cli::explain::run(*args),
    };
    match result {
        Ok(code) => code,
        // The reader of our output went away: nothing is wrong with what
        // was asked, there is just no one left to tell.
        Err(e) if e.is::<cli::StdoutClosed>() => ExitCode::SUCCESS,
        Err(e) => {
            // Each cause once, even when an error also prints its source.
            cli::errln(format_args!(
                "steer: error: {}",
                steer::errors::chain_anyhow(&e)
            ));
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory as _;

    /// Every argument of every (sub)command, with the path of commands
    /// that leads to it, for arguments that have no help text.
    fn undocumented(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
        for arg in cmd.get_arguments() {
            // clap's own --help and --version have their text.
            if arg.get_help().is_none() && arg.get_long_help().is_none() {
                missing.push(format!("{path} {}", arg.get_id()));
            }
            for v in arg.get_possible_values() {
                if !v.is_hide_set() && v.get_help().is_none() {
                    missing.push(format!("{path} {} value {}", arg.get_id(), v.get_name()));
                }
            }
        }
        for sub in cmd.get_subcommands() {
            if sub.get_name() == "help" {
                continue;
            }
            if sub.get_about().is_none() {
                missing.push(format!("{path} {} (no about)", sub.get_name()));
            }
            undocumented(sub, &format!("{path} {}", sub.get_name()), missing);
        }
    }

    #[test]
    fn every_flag_and_subcommand_has_help() {
        Cli::command().debug_assert();
        let mut cmd = Cli::command();
        cmd.build();
        let mut missing = Vec::new();
        undocumented(&cmd, "steer", &mut missing);
        assert!(missing.is_empty(), "no help text: {missing:#?}");
        // The walk reaches the subcommands' own flags.
        let run = cmd.find_subcommand("run").expect("run");
        assert!(run.get_arguments().any(|a| a.get_id() == "config"));
    }

    #[test]
    fn default_config_path() {
        for sub in ["run", "check"] {
            let cli = Cli::try_parse_from(["steer", sub]).expect(sub);
            let path = match cli.cmd {
                Cmd::Run(a) => a.config_path().to_path_buf(),
                Cmd::Check(a) => a.config_path().to_path_buf(),
                _ => unreachable!(),
            };
            assert_eq!(path, std::path::Path::new("/etc/steer/steer.toml"), "{sub}");
        }
    }

    #[test]
    fn logging_flags() {
        let cli = Cli::try_parse_from(["steer", "status", "--log-format", "json"]).unwrap();
        assert_eq!(cli.log_format, LogFormat::Json);
        let cli = Cli::try_parse_from(["steer", "--log-level", "debug", "status"]).unwrap();
        assert_eq!(cli.log_level.as_deref(), Some("debug"));
        assert!(Cli::try_parse_from(["steer", "status", "--log-format", "xml"]).is_err());
        assert!(log_filter(Some("steer=debug,info")).is_ok());
        let err = log_filter(Some("steer=loud")).unwrap_err();
        assert!(err.contains("--log-level \"steer=loud\""), "{err}");
    }
}
