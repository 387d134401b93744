//! The `steer` command. Each subcommand lives in its own module under
//! `cli/`; this file parses the command line, sets up logging and turns
//! the result into an exit code.

mod cli;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "steer", version, about = "XDP traffic steerer")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Attach to the configured interfaces and steer traffic until SIGTERM
    /// or `steer stop`.
    Run(cli::run::Args),
    /// Stop the daemon: by default it detaches XDP and removes its pinned
    /// state. With --detach, also cleans up after a daemon that was killed.
    Stop(cli::stop::Args),
    /// Make the daemon re-read its config (same as SIGHUP).
    Reload(cli::reload::Args),
    /// Services, backends, health and counters.
    Status(cli::status::Args),
    /// Stop sending new flows to a backend (established flows continue).
    Drain(cli::drain::Args),
    /// Validate a configuration file and report every error.
    Check(cli::check::Args),
    /// Run every packet of a capture through the real XDP program
    /// (BPF_PROG_TEST_RUN; needs root, no NIC) and write what it transmitted.
    Replay(cli::replay::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        // A log line that cannot be written (stderr is a pipe whose reader
        // is gone) is dropped. By default the subscriber would report that
        // with eprintln!, which panics on the same closed pipe and would
        // take the daemon down.
        .log_internal_errors(false)
        .init();
    // SIGPIPE stays ignored (Rust's default) for every subcommand, so a
    // closed pipe is an EPIPE error, never a kill: the daemon carries on,
    // and the other commands stop quietly (cli::StdoutClosed).
    let result = match cli.cmd {
        Cmd::Run(args) => cli::run::run(args),
        Cmd::Stop(args) => cli::stop::run(args),
        Cmd::Reload(args) => cli::reload::run(args),
        Cmd::Status(args) => cli::status::run(args),
        Cmd::Drain(args) => cli::drain::run(args),
        Cmd::Check(args) => cli::check::run(args),
        Cmd::Replay(args) => cli::replay::run(args),
    };
    match result {
        Ok(code) => code,
        // The reader of our output went away: nothing is wrong with what
        // was asked, there is just no one left to tell.
        Err(e) if e.is::<cli::StdoutClosed>() => ExitCode::SUCCESS,
        Err(e) => {
            cli::errln(format_args!("steer: error: {e:#}"));
            ExitCode::FAILURE
        }
    }
}
