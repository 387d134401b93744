//! Staged traffic shifts: a pure state machine of (plan, signals, time),
//! and the step that moves a shift's share of new flows in a table.
//!
//! # The plan
//!
//! A [`Plan`] moves the new flows of one service from region A
//! ([`Plan::from`]) to region B ([`Plan::to`]) in stages, for example
//! `[10, 25, 50, 100]` percent, holding each stage for [`Plan::hold_ms`].
//! At a stage of p %, p % of the new flows that the policy would send to A
//! go to B instead, chosen deterministically by flow hash (by table slot:
//! see [`apply_shift`]). Established flows never move: the data plane's
//! conntrack keeps them on their backend.
//!
//! How this maps to the systems operators know:
//!
//! | System | Their form | Here | Differences |
//! |---|---|---|---|
//! | AWS CodeDeploy | `TimeBasedCanary {canaryPercentage, canaryInterval}` | [`canary_stages`]: `[p, 100]` | CodeDeploy shifts a whole deployment; its rollback is a new deployment of the last good revision, here the shift goes back to 0 % at once |
//! | AWS CodeDeploy | `TimeBasedLinear {linearPercentage, linearInterval}` | [`linear_stages`]: `[p, 2p, ..., 100]` | as above; CodeDeploy's alarms (CloudWatch, threshold over N periods) are one trigger kind here ([`Triggers::analysis`]) |
//! | Argo Rollouts | canary `steps: [setWeight: N, pause: {duration}]` with background analysis | any increasing `stages`, one `hold` | Argo aborts to weight 0 when an AnalysisRun fails after `failureLimit` failures and pauses on Inconclusive; here the caller decides when a verdict is a failure, and an unknown verdict does nothing |
//! | Flagger | `stepWeights` (or `stepWeight`/`maxWeight`), `interval`, `threshold` | `stages`, `hold` | Flagger rolls back after `threshold` failed checks (about `interval × threshold`); here the first tick that sees a trigger rolls back |
//! | Route 53 | weighted records shifted by a script | `stages`, `hold` | Route 53 decides per DNS answer and waits on TTLs and resolver caches; here a stage takes effect on the next new flow, per flow, and established flows stay |
//!
//! # States
//!
//! ```text
//! start ──> Running{stage 0} ──hold──> Running{stage 1} ... ──hold──> Completed
//!              │   ▲                        │
//!        pause │   │ resume                 │ trigger (at any tick)
//!              ▼   │                        ▼
//!            Paused{stage, remaining}    RolledBack{reason}      abort: Aborted
//! ```
//!
//! - [`State::Running`]: the stage's percentage applies; when the hold has
//!   passed, the next [`Shift::tick`] enters the next stage (or, after the
//!   last stage, [`State::Completed`], which keeps the last percentage).
//!   A stage starts at the tick that enters it, so every stage is watched
//!   for a full hold even if ticks were late (a daemon that was down for
//!   longer than the rest of a hold enters the next stage at its first
//!   tick, it does not skip stages).
//! - [`State::Paused`]: the stage's percentage still applies, its hold
//!   clock is stopped ([`State::Paused::remaining_hold_ms`]); rollback
//!   triggers are still checked (as Argo Rollouts' background analysis
//!   runs through pause steps).
//! - [`State::RolledBack`] and [`State::Aborted`]: back to the pre-shift
//!   state at once (0 %). Terminal.
//!
//! # Rollback triggers
//!
//! Checked at every tick, Running or Paused, before the hold: detection
//! does not wait for a stage's hold to end, a trigger rolls back at the
//! first tick that sees it (unlike Flagger, which rolls back after
//! `threshold` failed checks, `interval × threshold`). Any one of:
//!
//! - B's healthy fraction below [`Triggers::min_healthy_fraction`];
//! - B's passive failure ratio (repeated SYNs / new flows in the signal
//!   window) above [`Triggers::max_failure_ratio`], over at least
//!   [`Triggers::failure_min_flows`] new flows (fewer is too little
//!   evidence and is ignored);
//! - B's new-flow rate above its capacity ([`Triggers::over_capacity`]);
//! - an external analysis verdict of failure ([`Triggers::analysis`]):
//!   Argo Rollouts' AnalysisRun `Failed` (which aborts the rollout to
//!   weight 0) or a CodeDeploy alarm. An unknown or pending verdict
//!   (Argo's `Inconclusive`) does nothing here.
//!
//! The caller computes [`Signals`] for region B; the machine only compares.
//!
//! # Time and persistence
//!
//! Times are wall-clock Unix milliseconds passed in ([`UnixMillis`]), never
//! read here. The [`Shift`] is serde-serializable: persisted and loaded
//! again after a daemon restart, it resumes where it was, and its hold
//! clock has kept running during the restart. A clock that goes backwards
//! counts as no time passing.
//!
//! # With the rest of the engine
//!
//! Per (service, class) table, with `svc` the service's inputs after
//! health checks and [`crate::outlier::Outliers::apply`]:
//!
//! ```text
//! let d = decide(&svc, &class);                           // shares
//! let ramped = slow_start.ramped(&ss_cfg, &svc, now);     // weights only
//! let mut table = compose(&ramped, &d, ring_size);
//! apply_shift(&ramped, &d, &mut table, a, b, shift.percent() as f64);
//! ```
//!
//! `apply_shift` takes the same service as `compose`, so a moved slot gets
//! the backend of B that B's own ring (slow start included) gives it.
//!
//! # Residency
//!
//! A shift never moves a residency class's flows outside its allowed
//! regions. [`check_plan`] (and so [`Shift::start`]) refuses a plan whose
//! B is outside the allowed regions of a class whose allowed regions
//! include A; [`apply_shift`] independently refuses to move any slot of a
//! class whose allowed regions exclude B.

use serde::{Deserialize, Serialize};
use steer_common::hash::murmur3_32;
use steer_common::maglev::{build, Entry};
use steer_common::NO_REAL;
use thiserror::Error;

use crate::model::{Decision, ServiceIn};

/// Wall-clock time in milliseconds since the Unix epoch.
pub type UnixMillis = u64;

/// A staged shift of one service's new flows from one region to another.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    /// The service's name.
    pub service: String,
    /// Region A: the region flows leave.
    pub from: String,
    /// Region B: the region flows go to.
    pub to: String,
    /// Percentages of A's new flows sent to B, strictly increasing, each
    /// in 1..=100.
    pub stages: Vec<u8>,
    /// How long each stage holds before the next, in milliseconds (> 0).
    pub hold_ms: u64,
    /// What rolls the shift back.
    #[serde(default)]
    pub rollback: Triggers,
}

/// Rollback triggers; `None` / `false` disables one.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Triggers {
    /// Roll back when B's healthy fraction (healthy weight / total weight,
    /// 0..=1) is below this.
    pub min_healthy_fraction: Option<f64>,
    /// Roll back when B's repeated-SYN ratio (repeated SYNs / new flows in
    /// the signal window, 0..=1) is above this...
    pub max_failure_ratio: Option<f64>,
    /// ...over at least this many new flows in the window.
    pub failure_min_flows: u64,
    /// Roll back when B's new-flow rate is above its capacity.
    pub over_capacity: bool,
    /// Roll back when the external analysis reports failure.
    pub analysis: bool,
    /// How far back the passive signal (repeated SYNs, new flows) looks,
    /// in milliseconds; 0 = [`DEFAULT_SIGNAL_WINDOW_MS`].
    #[serde(default)]
    pub window_ms: u64,
    /// The external analysis: an HTTP URL answering JSON, polled while
    /// the shift runs (sets `analysis`).
    #[serde(default)]
    pub analysis_url: Option<String>,
}

/// The passive signal's window when a plan gives none.
pub const DEFAULT_SIGNAL_WINDOW_MS: u64 = 5_000;

impl Triggers {
    /// The passive signal's window in milliseconds.
    pub fn signal_window_ms(&self) -> u64 {
        if self.window_ms == 0 {
            DEFAULT_SIGNAL_WINDOW_MS
        } else {
            self.window_ms
        }
    }
}

/// An external analysis verdict (for example an HTTP endpoint answering
/// JSON, polled by the caller).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Verdict {
    /// No answer yet, or inconclusive: no effect.
    #[default]
    Unknown,
    Pass,
    /// Failure, with the analysis's own words.
    Fail(String),
}

/// What the caller observes about region B at a tick.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Signals {
    /// B's healthy weight / total weight; `None` = unknown (no effect).
    pub healthy_fraction: Option<f64>,
    /// New flows to B's backends in the signal window.
    pub new_flows: u64,
    /// Of those, flows whose SYN was repeated (the handshake failed).
    pub repeated_syns: u64,
    /// B's measured new-flow rate (flows per second).
    pub new_flow_rate: Option<f64>,
    /// B's capacity (flows per second); `None` = unlimited.
    pub capacity: Option<f64>,
    pub analysis: Verdict,
}

/// Why a shift rolled back.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum RollbackReason {
    Unhealthy {
        healthy_fraction: f64,
        threshold: f64,
    },
    PassiveFailures {
        repeated_syns: u64,
        new_flows: u64,
        threshold: f64,
    },
    OverCapacity {
        rate: f64,
        capacity: f64,
    },
    Analysis {
        detail: String,
    },
}

impl std::fmt::Display for RollbackReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RollbackReason::Unhealthy {
                healthy_fraction,
                threshold,
            } => write!(
                f,
                "the target region's healthy fraction {:.1}% is below {:.1}%",
                healthy_fraction * 100.0,
                threshold * 100.0
            ),
            RollbackReason::PassiveFailures {
                repeated_syns,
                new_flows,
                threshold,
            } => write!(
                f,
                "the target region's repeated-SYN ratio {:.1}% ({repeated_syns} of {new_flows} \
                 new flows) is above {:.1}%",
                *repeated_syns as f64 * 100.0 / (*new_flows).max(1) as f64,
                threshold * 100.0
            ),
            RollbackReason::OverCapacity { rate, capacity } => write!(
                f,
                "the target region's new-flow rate {rate:.0}/s is above its capacity \
                 {capacity:.0}/s"
            ),
            RollbackReason::Analysis { detail } => {
                write!(f, "the external analysis reported failure: {detail}")
            }
        }
    }
}

impl Triggers {
    /// The first trigger `s` fires, in the order of the fields.
    pub fn check(&self, s: &Signals) -> Option<RollbackReason> {
        if let (Some(t), Some(h)) = (self.min_healthy_fraction, s.healthy_fraction) {
            if h < t {
                return Some(RollbackReason::Unhealthy {
                    healthy_fraction: h,
                    threshold: t,
                });
            }
        }
        if let Some(t) = self.max_failure_ratio {
            if s.new_flows > 0
                && s.new_flows >= self.failure_min_flows
                && s.repeated_syns as f64 / s.new_flows as f64 > t
            {
                return Some(RollbackReason::PassiveFailures {
                    repeated_syns: s.repeated_syns,
                    new_flows: s.new_flows,
                    threshold: t,
                });
            }
        }
        if self.over_capacity {
            if let (Some(rate), Some(capacity)) = (s.new_flow_rate, s.capacity) {
                if rate > capacity {
                    return Some(RollbackReason::OverCapacity { rate, capacity });
                }
            }
        }
        if self.analysis {
            if let Verdict::Fail(detail) = &s.analysis {
                return Some(RollbackReason::Analysis {
                    detail: detail.clone(),
                });
            }
        }
        None
    }
}

/// Where a shift is. `stage` is an index into [`Plan::stages`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum State {
    Running {
        stage: usize,
        stage_started: UnixMillis,
    },
    Paused {
        stage: usize,
        remaining_hold_ms: u64,
        paused_at: UnixMillis,
    },
    /// Every stage held; the last stage's percentage stays.
    Completed { at: UnixMillis },
    /// A trigger fired at `stage`: back to 0 %.
    RolledBack {
        stage: usize,
        reason: RollbackReason,
        at: UnixMillis,
    },
    /// The operator aborted at `stage`: back to 0 %.
    Aborted { stage: usize, at: UnixMillis },
}

/// What a tick or an operation did. Stages are indexes into
/// [`Plan::stages`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Event {
    Advanced {
        stage: usize,
        percent: u8,
        at: UnixMillis,
    },
    Completed {
        percent: u8,
        at: UnixMillis,
    },
    RolledBack {
        stage: usize,
        percent: u8,
        reason: RollbackReason,
        at: UnixMillis,
    },
    Paused {
        stage: usize,
        remaining_hold_ms: u64,
        at: UnixMillis,
    },
    Resumed {
        stage: usize,
        at: UnixMillis,
    },
    Aborted {
        stage: usize,
        percent: u8,
        at: UnixMillis,
    },
}

/// A class with a residency constraint, as [`check_plan`] sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResidencyClass {
    pub name: String,
    /// The class's allowed regions (names).
    pub allowed: Vec<String>,
}

/// What [`check_plan`] checks a plan against: the service's regions and
/// the residency classes it serves.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PlanContext {
    /// The service's region names.
    pub regions: Vec<String>,
    /// The classes with `allowed_regions` that the service serves.
    pub residency: Vec<ResidencyClass>,
}

/// A plan that may not start.
#[derive(Clone, Debug, Error, PartialEq)]
pub enum PlanError {
    #[error("shift of service {service}: no stages; give the percentages of the source region's new flows to move, for example --stages 10,25,50,100")]
    NoStages { service: String },
    #[error("shift of service {service}: stage {value}% is outside 1..=100; every stage is a percentage from 1 to 100")]
    StageOutOfRange { service: String, value: u8 },
    #[error("shift of service {service}: stages {stages:?} are not strictly increasing; list each percentage once, in increasing order, for example 10,25,50,100")]
    NotIncreasing { service: String, stages: Vec<u8> },
    #[error("shift of service {service}: the hold is 0; give how long each stage holds, for example --hold 5m")]
    ZeroHold { service: String },
    #[error("shift of service {service}: --from and --to are both {region}; a shift moves flows between two different regions")]
    SameRegion { service: String, region: String },
    #[error(
        "shift of service {service}: region {region} does not serve it; its regions are: {known}"
    )]
    UnknownRegion {
        service: String,
        region: String,
        known: String,
    },
    #[error("shift of service {service}: {name} = {value} is outside 0..=1; give a fraction, for example 0.8")]
    BadThreshold {
        service: String,
        name: &'static str,
        value: f64,
    },
    #[error("shift of service {service}: analysis URL {url:?} is not usable: {why}; give an http:// URL with an address or host name, for example http://127.0.0.1:8080/analysis")]
    BadAnalysisUrl {
        service: String,
        url: String,
        why: String,
    },
    #[error("shift of service {service}: client class {class} may only use regions [{allowed}]; moving its flows from {from} to {to} would break its data residency; shift to one of its allowed regions, or remove {from} from its allowed regions first")]
    Residency {
        service: String,
        class: String,
        allowed: String,
        from: String,
        to: String,
    },
}

/// CodeDeploy's `TimeBasedCanary`: `percent`, then 100 (just `[100]` for
/// 100 or more; 0 counts as 1).
pub fn canary_stages(percent: u8) -> Vec<u8> {
    match percent.clamp(1, 100) {
        100 => vec![100],
        p => vec![p, 100],
    }
}

/// CodeDeploy's `TimeBasedLinear`: `step`, `2 × step`, ... and 100 last
/// (0 counts as 1).
pub fn linear_stages(step: u8) -> Vec<u8> {
    let step = step.clamp(1, 100);
    let mut out: Vec<u8> = (1..).map(|k| k * step).take_while(|&p| p < 100).collect();
    out.push(100);
    out
}

/// Checks a plan without starting it (for `steer check` and `shift start`).
pub fn check_plan(plan: &Plan, ctx: &PlanContext) -> Result<(), PlanError> {
    let service = plan.service.clone();
    if plan.stages.is_empty() {
        return Err(PlanError::NoStages { service });
    }
    if let Some(&value) = plan.stages.iter().find(|&&v| v == 0 || v > 100) {
        return Err(PlanError::StageOutOfRange { service, value });
    }
    if plan.stages.windows(2).any(|w| w[0] >= w[1]) {
        return Err(PlanError::NotIncreasing {
            service,
            stages: plan.stages.clone(),
        });
    }
    if plan.hold_ms == 0 {
        return Err(PlanError::ZeroHold { service });
    }
    if plan.from == plan.to {
        return Err(PlanError::SameRegion {
            service,
            region: plan.from.clone(),
        });
    }
    for region in [&plan.from, &plan.to] {
        if !ctx.regions.contains(region) {
            return Err(PlanError::UnknownRegion {
                service,
                region: region.clone(),
                known: ctx.regions.join(", "),
            });
        }
    }
    let t = &plan.rollback;
    for (name, v) in [
        ("min_healthy_fraction", t.min_healthy_fraction),
        ("max_failure_ratio", t.max_failure_ratio),
    ] {
        if let Some(value) = v.filter(|v| !(0.0..=1.0).contains(v)) {
            return Err(PlanError::BadThreshold {
                service,
                name,
                value,
            });
        }
    }
    if let Some(url) = &t.analysis_url {
        if let Err(why) = parse_analysis_url(url) {
            return Err(PlanError::BadAnalysisUrl {
                service,
                url: url.clone(),
                why,
            });
        }
    }
    if let Some(c) = ctx
        .residency
        .iter()
        .find(|c| c.allowed.contains(&plan.from) && !c.allowed.contains(&plan.to))
    {
        return Err(PlanError::Residency {
            service,
            class: c.name.clone(),
            allowed: c.allowed.join(", "),
            from: plan.from.clone(),
            to: plan.to.clone(),
        });
    }
    Ok(())
}

/// `http://host[:port]/path?query` split into what a request needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AnalysisUrl {
    pub host: String,
    pub port: u16,
    /// Path and query, starting with `/`.
    pub target: String,
}

/// Parses an analysis URL (`http://` only; IPv6 hosts in brackets).
pub fn parse_analysis_url(url: &str) -> Result<AnalysisUrl, String> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| "only http:// URLs are supported".to_string())?;
    let split = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, target) = rest.split_at(split);
    let target = match target {
        "" => "/".to_string(),
        t if t.starts_with('?') => format!("/{t}"),
        t => t.to_string(),
    };
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (h, after) = v6
            .split_once(']')
            .ok_or_else(|| "unclosed [ in the host".to_string())?;
        (h.to_string(), after.strip_prefix(':'))
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h.to_string(), Some(p)),
            None => (authority.to_string(), None),
        }
    };
    if host.is_empty() {
        return Err("it has no host".to_string());
    }
    if url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("it contains spaces or control characters".to_string());
    }
    let port = match port {
        None => 80,
        Some(p) => p
            .parse::<u16>()
            .ok()
            .filter(|&p| p > 0)
            .ok_or_else(|| format!("port {p:?} is not a number from 1 to 65535"))?,
    };
    Ok(AnalysisUrl { host, port, target })
}

/// An operation that does not apply in the shift's state.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
#[error("shift of service {service} is {state}; {what}")]
pub struct OpError {
    pub service: String,
    /// The state, in words ("paused at stage 2 of 4 (25%)").
    pub state: String,
    /// What the operator can do instead.
    pub what: &'static str,
}

/// A shift in progress (or finished): the plan and its state.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Shift {
    pub plan: Plan,
    /// When it started.
    pub started: UnixMillis,
    pub state: State,
}

impl Shift {
    /// Checks `plan` ([`check_plan`]) and starts it at its first stage.
    pub fn start(plan: Plan, now: UnixMillis, ctx: &PlanContext) -> Result<Shift, PlanError> {
        check_plan(&plan, ctx)?;
        Ok(Shift {
            plan,
            started: now,
            state: State::Running {
                stage: 0,
                stage_started: now,
            },
        })
    }

    /// The percentage of the source region's new flows that go to the
    /// target now: the stage's while running or paused, the last stage's
    /// when completed, 0 after a rollback or abort.
    pub fn percent(&self) -> u8 {
        match self.state {
            State::Running { stage, .. } | State::Paused { stage, .. } => self.plan.stages[stage],
            State::Completed { .. } => self.plan.stages.last().copied().unwrap_or(0),
            State::RolledBack { .. } | State::Aborted { .. } => 0,
        }
    }

    /// Running or paused (not finished).
    pub fn is_active(&self) -> bool {
        matches!(self.state, State::Running { .. } | State::Paused { .. })
    }

    /// When the running stage's hold ends (`None` unless running).
    pub fn next_stage_at(&self) -> Option<UnixMillis> {
        match self.state {
            State::Running { stage_started, .. } => {
                Some(stage_started.saturating_add(self.plan.hold_ms))
            }
            _ => None,
        }
    }

    /// How long until the next stage (or completion): the rest of the
    /// hold; while paused, the frozen rest; `None` when finished.
    pub fn time_to_next_stage(&self, now: UnixMillis) -> Option<u64> {
        match self.state {
            State::Running { .. } => self.next_stage_at().map(|t| t.saturating_sub(now)),
            State::Paused {
                remaining_hold_ms, ..
            } => Some(remaining_hold_ms),
            _ => None,
        }
    }

    /// The state in words, stages counted from 1.
    pub fn describe(&self) -> String {
        let n = self.plan.stages.len();
        let at = |stage: usize| {
            format!(
                "stage {} of {n} ({}%)",
                stage + 1,
                self.plan.stages.get(stage).copied().unwrap_or(0)
            )
        };
        match &self.state {
            State::Running { stage, .. } => format!("running at {}", at(*stage)),
            State::Paused { stage, .. } => format!("paused at {}", at(*stage)),
            State::Completed { .. } => format!("completed ({}%)", self.percent()),
            State::RolledBack { stage, reason, .. } => {
                format!("rolled back at {} because {reason}", at(*stage))
            }
            State::Aborted { stage, .. } => format!("aborted at {}", at(*stage)),
        }
    }

    fn op_error(&self, what: &'static str) -> OpError {
        OpError {
            service: self.plan.service.clone(),
            state: self.describe(),
            what,
        }
    }

    /// Checks the triggers against `signals` (running or paused), then
    /// the hold (running). At most one stage per tick.
    pub fn tick(&mut self, now: UnixMillis, signals: &Signals) -> Vec<Event> {
        let stage = match self.state {
            State::Running { stage, .. } | State::Paused { stage, .. } => stage,
            _ => return Vec::new(),
        };
        if let Some(reason) = self.plan.rollback.check(signals) {
            let percent = self.percent();
            self.state = State::RolledBack {
                stage,
                reason: reason.clone(),
                at: now,
            };
            return vec![Event::RolledBack {
                stage,
                percent,
                reason,
                at: now,
            }];
        }
        let State::Running { stage_started, .. } = self.state else {
            return Vec::new();
        };
        if now.saturating_sub(stage_started) < self.plan.hold_ms {
            return Vec::new();
        }
        if stage + 1 >= self.plan.stages.len() {
            self.state = State::Completed { at: now };
            vec![Event::Completed {
                percent: self.percent(),
                at: now,
            }]
        } else {
            self.state = State::Running {
                stage: stage + 1,
                stage_started: now,
            };
            vec![Event::Advanced {
                stage: stage + 1,
                percent: self.plan.stages[stage + 1],
                at: now,
            }]
        }
    }

    /// Stops the hold clock; the stage's percentage stays.
    pub fn pause(&mut self, now: UnixMillis) -> Result<Event, OpError> {
        let State::Running {
            stage,
            stage_started,
        } = self.state
        else {
            return Err(self.op_error("only a running shift can be paused"));
        };
        let remaining_hold_ms = self
            .plan
            .hold_ms
            .saturating_sub(now.saturating_sub(stage_started));
        self.state = State::Paused {
            stage,
            remaining_hold_ms,
            paused_at: now,
        };
        Ok(Event::Paused {
            stage,
            remaining_hold_ms,
            at: now,
        })
    }

    /// Restarts the hold clock where it stopped.
    pub fn resume(&mut self, now: UnixMillis) -> Result<Event, OpError> {
        let State::Paused {
            stage,
            remaining_hold_ms,
            ..
        } = self.state
        else {
            return Err(self.op_error("only a paused shift can be resumed"));
        };
        let elapsed = self.plan.hold_ms.saturating_sub(remaining_hold_ms);
        self.state = State::Running {
            stage,
            stage_started: now.saturating_sub(elapsed),
        };
        Ok(Event::Resumed { stage, at: now })
    }

    /// Stops the shift and goes back to the pre-shift state (0 %).
    pub fn abort(&mut self, now: UnixMillis) -> Result<Event, OpError> {
        let (State::Running { stage, .. } | State::Paused { stage, .. }) = self.state else {
            return Err(self.op_error("it has already finished; start a new shift instead"));
        };
        let percent = self.percent();
        self.state = State::Aborted { stage, at: now };
        Ok(Event::Aborted {
            stage,
            percent,
            at: now,
        })
    }
}

/// Why [`apply_shift`] moved nothing.
#[derive(Clone, Copy, Debug, Error, PartialEq, Eq)]
pub enum NotShifted {
    #[error("source and target are the same region")]
    SameRegion,
    #[error("a region index is outside the service")]
    NoSuchRegion,
    #[error("the class's allowed regions exclude the target region (data residency)")]
    Residency,
    #[error("the target region is drained")]
    TargetDrained,
    #[error("the target region has no healthy backend with weight > 0")]
    TargetUnhealthy,
}

const SEED_SHIFT: u32 = 0x7368_6674; // "shft"

/// Moves `percent` % of the slots of `table` (from [`crate::compose`] for
/// `svc` and `d`) that hold a backend of region `from` to region `to`, and
/// returns how many moved.
///
/// - The moved slots are the `round(percent × n)` of the `n` slots on
///   `from` with the lowest per-slot hash, seeded by both regions' names:
///   the same on every host, and a larger percentage moves a superset.
/// - A moved slot takes the backend that `to`'s own Maglev ring gives it
///   (the ring over all its backends while that backend is healthy, else
///   the ring over the healthy ones, as `compose` does), so it keeps its
///   backend from one stage to the next.
/// - The other slots are not touched: flows that stay on `from` keep their
///   backends, and so do `to`'s own.
/// - It is the last step: the target's dial and capacity do not limit the
///   moved flows (the capacity rollback trigger watches them).
///
/// Nothing moves when the class's allowed regions (`d.allowed`) exclude
/// `to` (data residency), `to` is drained, or `to` has no healthy backend
/// (the flows stay on `from` rather than being dropped).
///
/// # Panics
/// If `table.len()` is not a prime (tables from `compose` are).
pub fn apply_shift(
    svc: &ServiceIn,
    d: &Decision,
    table: &mut [u32],
    from: usize,
    to: usize,
    percent: f64,
) -> Result<usize, NotShifted> {
    if from == to {
        return Err(NotShifted::SameRegion);
    }
    let (Some(a), Some(b)) = (svc.regions.get(from), svc.regions.get(to)) else {
        return Err(NotShifted::NoSuchRegion);
    };
    if d.allowed.as_ref().is_some_and(|al| !al.contains(&to)) {
        return Err(NotShifted::Residency);
    }
    if b.drained {
        return Err(NotShifted::TargetDrained);
    }
    if !b.backends.iter().any(|x| x.healthy && x.weight > 0) {
        return Err(NotShifted::TargetUnhealthy);
    }
    let size = u32::try_from(table.len()).unwrap_or(u32::MAX);
    let fraction = if percent.is_nan() {
        0.0
    } else {
        (percent / 100.0).clamp(0.0, 1.0)
    };
    let on_a = |v: u32| a.backends.iter().any(|x| x.index == v);
    let seed = murmur3_32(format!("{}\0{}", a.name, b.name).as_bytes(), SEED_SHIFT);
    let mut slots: Vec<u64> = (0..size)
        .filter(|&s| on_a(table[s as usize]))
        .map(|s| (u64::from(murmur3_32(&s.to_le_bytes(), seed)) << 32) | u64::from(s))
        .collect();
    let k = ((fraction * slots.len() as f64).round() as usize).min(slots.len());
    if k == 0 {
        return Ok(0);
    }
    slots.sort_unstable();
    let entries = |healthy_only: bool| -> Vec<Entry<'_>> {
        b.backends
            .iter()
            .enumerate()
            .filter(|(_, x)| !healthy_only || x.healthy)
            .map(|(i, x)| Entry {
                id: i as u32,
                key: x.name.as_bytes(),
                weight: x.weight,
            })
            .collect()
    };
    let full = build(&entries(false), size);
    let healthy = build(&entries(true), size);
    for &key in &slots[..k] {
        let s = key as u32 as usize;
        let e = match full[s] {
            e if e != NO_REAL && b.backends[e as usize].healthy => e,
            _ => healthy[s],
        };
        // The healthy ring has a backend at every slot (one exists).
        if e != NO_REAL {
            table[s] = b.backends[e as usize].index;
        }
    }
    Ok(k)
}
