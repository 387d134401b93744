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
    Start(Box<StartArgs>),
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
    /// Roll back at once when --to's repeated SYNs (SYNs the data plane
    /// saw again for the same connection: the first went unanswered) exceed
    /// this percentage of its new flows over the signal window.
    #[arg(long, value_name = "PERCENT")]
    max_repeated_syn_percent: Option<f64>,
    /// ...counted only over at least this many new flows to --to in the
    /// window (default 20).
    #[arg(long, value_name = "N")]
    min_new_flows: Option<u64>,
    /// How far back the repeated-SYN signal looks (default 5s).
    #[arg(long, value_name = "DURATION", value_parser = steer_config::parse_duration)]
    signal_window: Option<Duration>,
    /// Roll back at once when this HTTP endpoint reports failure. It is
    /// polled every second while the shift runs and answers JSON
    /// {"result": "pass" | "fail" | "inconclusive", "reason": "..."};
    /// three failed polls in a row (no answer, a status other than 2xx,
    /// a body that is not such JSON) count as a failure too.
    #[arg(long, value_name = "URL")]
    analysis_url: Option<String>,
    /// A rollback condition in one word, repeatable: `healthy<0.8`,
    /// `repeated-syn>20%`, `over-capacity`, `analysis=http://...`. The
    /// same as --min-healthy, --max-repeated-syn-percent,
    /// --max-over-capacity and --analysis-url.
    #[arg(long, value_name = "CONDITION", value_parser = parse_condition)]
    rollback_if: Vec<Condition>,
    #[command(flatten)]
    target: Target,
}

/// One `--rollback-if` condition.
#[derive(Clone, Debug, PartialEq)]
enum Condition {
    Healthy(f64),
    RepeatedSyn(f64),
    OverCapacity,
    Analysis(String),
}

fn parse_condition(s: &str) -> Result<Condition, String> {
    let number = |v: &str, what: &str| -> Result<f64, String> {
        v.trim()
            .trim_end_matches('%')
            .parse::<f64>()
            .ok()
            .filter(|x| x.is_finite())
            .ok_or_else(|| format!("{v:?} is not a number ({what})"))
    };
    let s = s.trim();
    if let Some(v) = s.strip_prefix("healthy<") {
        return number(v, "a fraction, for example healthy<0.8").map(Condition::Healthy);
    }
    if let Some(v) = s.strip_prefix("repeated-syn>") {
        return number(v, "a percentage, for example repeated-syn>20%").map(Condition::RepeatedSyn);
    }
    if s == "over-capacity" {
        return Ok(Condition::OverCapacity);
    }
    if let Some(v) = s.strip_prefix("analysis=") {
        return Ok(Condition::Analysis(v.to_string()));
    }
    Err(format!(
        "unknown condition {s:?}; use healthy<FRACTION, repeated-syn>PERCENT%, over-capacity or \
         analysis=URL"
    ))
}

/// The request a `steer shift` command line sends, and where.
fn request(cmd: Cmd) -> (Target, Request) {
    match cmd {
        Cmd::Start(a) => {
            let (mut min_healthy, mut over_capacity) = (a.min_healthy, a.max_over_capacity);
            let (mut repeated, mut analysis) = (a.max_repeated_syn_percent, a.analysis_url);
            for c in a.rollback_if {
                match c {
                    Condition::Healthy(f) => min_healthy = Some(f),
                    Condition::RepeatedSyn(p) => repeated = Some(p),
                    Condition::OverCapacity => over_capacity = true,
                    Condition::Analysis(u) => analysis = Some(u),
                }
            }
            let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
            (
                a.target,
                Request::ShiftStart {
                    service: a.service,
                    from: a.from,
                    to: a.to,
                    stages: a.stages,
                    hold_ms: ms(a.hold),
                    min_healthy,
                    over_capacity,
                    max_repeated_syn_percent: repeated,
                    min_new_flows: a.min_new_flows,
                    signal_window_ms: a.signal_window.map(ms),
                    analysis_url: analysis,
                },
            )
        }
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
                max_repeated_syn_percent: None,
                min_new_flows: None,
                signal_window_ms: None,
                analysis_url: None,
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
                max_repeated_syn_percent: None,
                min_new_flows: None,
                signal_window_ms: None,
                analysis_url: None,
            }
        );
        // The passive and analysis triggers, as flags or as conditions.
        let want = Request::ShiftStart {
            service: "web".into(),
            from: "eu".into(),
            to: "us".into(),
            stages: vec![25, 100],
            hold_ms: 60_000,
            min_healthy: Some(0.8),
            over_capacity: true,
            max_repeated_syn_percent: Some(20.0),
            min_new_flows: Some(10),
            signal_window_ms: Some(2_000),
            analysis_url: Some("http://127.0.0.1:8080/a".into()),
        };
        let base = [
            "start",
            "web",
            "--from",
            "eu",
            "--to",
            "us",
            "--stages",
            "25,100",
            "--hold",
            "1m",
            "--min-new-flows",
            "10",
            "--signal-window",
            "2s",
        ];
        let flags = [
            "--min-healthy",
            "0.8",
            "--max-over-capacity",
            "--max-repeated-syn-percent",
            "20",
            "--analysis-url",
            "http://127.0.0.1:8080/a",
        ];
        let conditions = [
            "--rollback-if",
            "healthy<0.8",
            "--rollback-if",
            "over-capacity",
            "--rollback-if",
            "repeated-syn>20%",
            "--rollback-if",
            "analysis=http://127.0.0.1:8080/a",
        ];
        for extra in [&flags[..], &conditions[..]] {
            let words: Vec<&str> = base.iter().chain(extra).copied().collect();
            assert_eq!(parse(&words).unwrap(), want, "{extra:?}");
        }
        let e = parse(&[
            "start",
            "web",
            "--from",
            "eu",
            "--to",
            "us",
            "--rollback-if",
            "latency>5",
        ])
        .unwrap_err()
        .to_string();
        assert!(e.contains("unknown condition \"latency>5\""), "{e}");
        let e = parse(&[
            "start",
            "web",
            "--from",
            "eu",
            "--to",
            "us",
            "--rollback-if",
            "healthy<x",
        ])
        .unwrap_err()
        .to_string();
        assert!(e.contains("\"x\" is not a number"), "{e}");
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
