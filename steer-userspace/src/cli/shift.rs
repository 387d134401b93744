//! `steer shift`: staged shifts of a service's new flows from one region
//! to another (start, status, pause, resume, abort).

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Result;
use steer::api::Request;

use super::Target;

#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(clap::Subcommand)]
enum Cmd {
    /// Start moving SERVICE's new flows from region --from to region --to
    /// in stages; each stage holds --hold, then the next starts.
    Start(StartArgs),
    /// The shifts in force (or finished): stage, percentage, time to the
    /// next stage, or the end state and its reason.
    Status {
        /// Only this service's shift.
        service: Option<String>,
        #[command(flatten)]
        target: Target,
    },
    /// Stop the hold clock; the stage's percentage stays (rollback
    /// triggers are still watched).
    Pause(OneService),
    /// Restart the hold clock where it stopped.
    Resume(OneService),
    /// Stop the shift and send new flows as before it at once (0 %); on a
    /// finished shift, forget it (a completed one stops applying).
    Abort(OneService),
}

#[derive(clap::Args)]
struct OneService {
    /// The service's name, as in the config's [[services]].
    service: String,
    #[command(flatten)]
    target: Target,
}

#[derive(clap::Args)]
struct StartArgs {
    /// The service's name, as in the config's [[services]].
    service: String,
    /// The region new flows leave (one of the service's regions).
    #[arg(long, value_name = "REGION")]
    from: String,
    /// The region new flows go to (one of the service's regions).
    #[arg(long, value_name = "REGION")]
    to: String,
    /// Percentages of --from's new flows sent to --to, strictly
    /// increasing, each 1 to 100.
    #[arg(
        long,
        value_name = "P,P,...",
        value_delimiter = ',',
        default_value = "10,25,50,100"
    )]
    stages: Vec<u8>,
    /// How long each stage holds before the next (e.g. 30s, 5m).
    #[arg(long, value_name = "DURATION", default_value = "5m",
          value_parser = steer_config::parse_duration)]
    hold: Duration,
    /// Roll back at once when --to's healthy fraction (healthy weight /
    /// weight of its backends in the service, 0 to 1) falls below this.
    #[arg(long, value_name = "FRACTION")]
    min_healthy: Option<f64>,
    /// Roll back at once when --to's new-flow rate exceeds its capacity
    /// (max_new_flows_per_second × capacity_scaler of the region).
    #[arg(long, visible_alias = "rollback-over-capacity")]
    max_over_capacity: bool,
    #[command(flatten)]
    target: Target,
}

/// The request a `steer shift` command line sends, and where.
fn request(cmd: Cmd) -> (Target, Request) {
    match cmd {
        Cmd::Start(a) => (
            a.target,
            Request::ShiftStart {
                service: a.service,
                from: a.from,
                to: a.to,
                stages: a.stages,
                hold_ms: u64::try_from(a.hold.as_millis()).unwrap_or(u64::MAX),
                min_healthy: a.min_healthy,
                over_capacity: a.max_over_capacity,
            },
        ),
        Cmd::Status { service, target } => (target, Request::ShiftStatus { service }),
        Cmd::Pause(o) => (o.target, Request::ShiftPause { service: o.service }),
        Cmd::Resume(o) => (o.target, Request::ShiftResume { service: o.service }),
        Cmd::Abort(o) => (o.target, Request::ShiftAbort { service: o.service }),
    }
}

pub fn run(args: Args) -> Result<ExitCode> {
    let (target, req) = request(args.cmd);
    super::control(&target, req, false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: Args,
    }

    fn parse(words: &[&str]) -> Result<Request, clap::Error> {
        let cli = Cli::try_parse_from(std::iter::once("shift").chain(words.iter().copied()))?;
        Ok(request(cli.args.cmd).1)
    }

    #[test]
    fn start_takes_the_plan_and_its_defaults() {
        assert_eq!(
            parse(&["start", "web", "--from", "eu", "--to", "us"]).unwrap(),
            Request::ShiftStart {
                service: "web".into(),
                from: "eu".into(),
                to: "us".into(),
                stages: vec![10, 25, 50, 100],
                hold_ms: 300_000,
                min_healthy: None,
                over_capacity: false,
            }
        );
        assert_eq!(
            parse(&[
                "start",
                "web",
                "--from",
                "eu",
                "--to",
                "us",
                "--stages",
                "5,100",
                "--hold",
                "300ms",
                "--min-healthy",
                "0.5",
                "--max-over-capacity",
            ])
            .unwrap(),
            Request::ShiftStart {
                service: "web".into(),
                from: "eu".into(),
                to: "us".into(),
                stages: vec![5, 100],
                hold_ms: 300,
                min_healthy: Some(0.5),
                over_capacity: true,
            }
        );
        // --to is required; a stage is a number 0..=255 (the daemon checks
        // 1..=100).
        assert!(parse(&["start", "web", "--from", "eu"]).is_err());
        assert!(
            parse(&["start", "web", "--from", "eu", "--to", "us", "--stages", "10,x"]).is_err()
        );
    }

    #[test]
    fn the_other_commands_name_a_service() {
        assert_eq!(
            parse(&["status"]).unwrap(),
            Request::ShiftStatus { service: None }
        );
        assert_eq!(
            parse(&["status", "web"]).unwrap(),
            Request::ShiftStatus {
                service: Some("web".into())
            }
        );
        assert_eq!(
            parse(&["pause", "web"]).unwrap(),
            Request::ShiftPause {
                service: "web".into()
            }
        );
        assert_eq!(
            parse(&["resume", "web"]).unwrap(),
            Request::ShiftResume {
                service: "web".into()
            }
        );
        assert_eq!(
            parse(&["abort", "web"]).unwrap(),
            Request::ShiftAbort {
                service: "web".into()
            }
        );
        assert!(parse(&["abort"]).is_err());
    }
}
