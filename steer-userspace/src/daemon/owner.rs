//! The one owner of the daemon's state.
//!
//! A single thread owns the config, the health view, the operator drains,
//! the health monitor's target set and the [`Dataplane`]. Every input (a
//! health transition, a drain, a reload, a stop, and the timers later
//! features add) is an [`Event`] on one bounded queue, applied in the order
//! it arrives. Nothing else writes this state, so an older state can never
//! be programmed after a newer one.
//!
//! After every event the owner publishes an immutable [`Published`]
//! snapshot. Status and metrics read that snapshot (and the counter maps
//! through their own descriptors); they never wait for the owner.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::{mpsc, oneshot, watch};
use tracing::{error, info, warn};

use crate::api::Response;
use crate::config::Config;
use crate::dataplane::{Dataplane, Ledger};
use crate::health::{self, HealthMonitor, TargetStatus};
use crate::policy::{self, ApplyConfig as _, BackendState, Planned, Runtime};
use steer_policy::outlier::CounterWindow;
use steer_policy::shift::{self, Plan, PlanContext, ResidencyClass, Shift, Signals, Verdict};
use steer_policy::Outcome;

use super::measure::{self, Measured, Measurer};
use super::passive::Passive;

use super::changes::config_changes;
use super::reload;

/// How many events may wait for the owner. Producers wait (async) when the
/// queue is full, so a burst slows its source instead of growing memory.
pub const EVENT_QUEUE: usize = 256;

/// One input to the daemon's state.
#[derive(Debug)]
pub enum Event {
    /// The health monitor's full status map (updates are coalesced).
    Health(BTreeMap<String, TargetStatus>),
    /// An operator drain (or undrain) of a backend.
    Drain {
        backend: String,
        undo: bool,
        reply: Option<oneshot::Sender<Response>>,
    },
    /// An operator drain (or undrain) of every backend of a region.
    DrainRegion {
        region: String,
        undo: bool,
        /// Move the region's established flows too once this has passed.
        timeout: Option<Duration>,
        reply: Option<oneshot::Sender<Response>>,
    },
    /// The measurement timer ([`super::measure::TICK`]): round-trip times
    /// and new-flow rates for the latency and capacity policies.
    Tick,
    /// Start a staged shift (`steer shift start`).
    ShiftStart {
        plan: Plan,
        reply: Option<oneshot::Sender<Response>>,
    },
    /// Pause, resume or abort a service's shift.
    ShiftOp {
        service: String,
        op: ShiftOp,
        reply: Option<oneshot::Sender<Response>>,
    },
    /// What a shift's external analysis endpoint answered (the poller
    /// in `super::analysis`), for the shift of `service` polling `url`.
    Analysis {
        service: String,
        url: String,
        verdict: Verdict,
    },
    /// Re-read the config file (control socket or SIGHUP).
    Reload {
        reply: Option<oneshot::Sender<Response>>,
    },
    /// Stop: the owner stops the health monitor and returns.
    Stop,
}

/// An operation on a running shift.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ShiftOp {
    Pause,
    Resume,
    Abort,
}

/// Wall-clock time in Unix milliseconds, as the shifts count it.
pub fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// What `steer shift start` checks a plan of `service` against: its
/// regions and every class with a residency constraint (every service
/// gets a table per residency class).
pub fn plan_context(cfg: &Config, service: &str) -> Option<PlanContext> {
    let svc = cfg.service(service)?;
    Some(PlanContext {
        regions: cfg
            .service_regions(svc)
            .into_iter()
            .map(str::to_string)
            .collect(),
        residency: cfg
            .client_classes
            .iter()
            .filter_map(|c| {
                c.allowed_regions.as_ref().map(|a| ResidencyClass {
                    name: c.name.clone(),
                    allowed: a.clone(),
                })
            })
            .collect(),
    })
}

/// Why a shift no longer fits `cfg` (its service or a region is gone).
fn shift_misfit(cfg: &Config, s: &Shift) -> Option<String> {
    let Some(ctx) = plan_context(cfg, &s.plan.service) else {
        return Some(format!(
            "service {} is no longer in the config",
            s.plan.service
        ));
    };
    if let Some(r) = [&s.plan.from, &s.plan.to]
        .into_iter()
        .find(|r| !ctx.regions.contains(r))
    {
        return Some(format!(
            "region {r} no longer serves service {}",
            s.plan.service
        ));
    }
    // A residency class the new config adds (or narrows) that the shift
    // would break: the shift stops applying rather than move its flows.
    match shift::check_plan(&s.plan, &ctx) {
        Err(e @ shift::PlanError::Residency { .. }) => Some(e.to_string()),
        _ => None,
    }
}

/// What the owner knows about region `to` of `service`: its healthy
/// fraction (healthy configured weight / configured weight of its
/// backends in the service), and its new-flow rate and capacity.
fn shift_signals(
    cfg: &Config,
    health: &BTreeMap<String, TargetStatus>,
    measured: &Measured,
    service: &str,
    to: &str,
) -> Signals {
    let (mut up, mut total) = (0u64, 0u64);
    if let Some(svc) = cfg.service(service) {
        for b in cfg.service_backends(svc).iter().filter(|b| b.region == to) {
            total += u64::from(b.weight);
            if health::backend_up(health, &b.name) {
                up += u64::from(b.weight);
            }
        }
    }
    Signals {
        healthy_fraction: (total > 0).then(|| up as f64 / total as f64),
        new_flow_rate: measured.rate.get(to).copied(),
        capacity: cfg.region(to).and_then(|r| {
            r.max_new_flows_per_second
                .map(|m| f64::from(m) * r.capacity_scaler.get())
        }),
        ..Signals::default()
    }
}

/// The outcome of the latest reload attempt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReloadOutcome {
    pub at: SystemTime,
    pub ok: bool,
}

/// When the health checks last brought a backend up and took it down.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Transitions {
    pub last_up: Option<SystemTime>,
    pub last_down: Option<SystemTime>,
}

/// An interface XDP is attached to, as start-up attached it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Interface {
    pub name: String,
    /// `"driver"` or `"skb"` (for an adopted link: the mode asked for).
    pub mode: String,
    /// A pinned link of a previous run was taken over.
    pub adopted: bool,
}

/// Records, at `now`, the backends of `cfg` whose up/down state differs
/// between `old` and `new` health.
pub fn record_transitions(
    transitions: &mut BTreeMap<String, Transitions>,
    cfg: &Config,
    old: &BTreeMap<String, TargetStatus>,
    new: &BTreeMap<String, TargetStatus>,
    now: SystemTime,
) {
    for b in &cfg.backends {
        let (was, is) = (
            health::backend_up(old, &b.name),
            health::backend_up(new, &b.name),
        );
        if was != is {
            let t = transitions.entry(b.name.clone()).or_default();
            if is {
                t.last_up = Some(now);
            } else {
                t.last_down = Some(now);
            }
        }
    }
}

/// The daemon's state, as the owner applies events to it.
#[derive(Clone, Debug)]
pub struct State {
    pub config_path: PathBuf,
    pub cfg: Arc<Config>,
    pub health: BTreeMap<String, TargetStatus>,
    pub drained: BTreeSet<String>,
    /// Regions drained by an operator.
    pub drained_regions: BTreeSet<String>,
    /// Drained regions with a `--timeout`: when their established flows
    /// are moved. Past it, the region's backends are programmed down.
    pub region_drain_deadlines: BTreeMap<String, SystemTime>,
    /// Drained regions whose timeout passed (their flows were moved).
    pub drain_moved: BTreeSet<String>,
    /// The last plan programmed: every table and the decision behind it.
    pub planned: Arc<Planned>,
    /// The measurements the policy read last.
    pub measured: Measured,
    /// The backends programmed as down.
    pub down: BTreeSet<String>,
    /// Starts at 1; one more for every successful reload (wrapping).
    pub generation: u64,
    pub reloads: u64,
    pub reload_failures: u64,
    pub last_reload_error: Option<String>,
    pub last_reload: Option<ReloadOutcome>,
    /// When the running config was loaded (at start or by a reload).
    pub last_load: SystemTime,
    /// Successful programmings of the data plane so far.
    pub programmed: u64,
    pub started: SystemTime,
    /// Per backend, its last health transitions since start.
    pub transitions: BTreeMap<String, Transitions>,
    /// The interfaces XDP is attached to (empty until
    /// [`Owner::set_interfaces`]).
    pub interfaces: Vec<Interface>,
    /// Staged shifts by service: in force, or finished (kept for `steer
    /// status` until a new one starts or `steer shift abort` forgets it).
    pub shifts: BTreeMap<String, Shift>,
    /// Outlier ejection and slow start, per service.
    pub passive: Passive,
    /// Per service with a shift that has an analysis endpoint: its latest
    /// verdict.
    pub analysis: BTreeMap<String, Verdict>,
}

/// What the owner last applied: an immutable snapshot for status and
/// metrics (the state's fields are reachable directly: `published.cfg`).
#[derive(Clone, Debug)]
pub struct Published {
    pub state: State,
    /// Service and backend ids, for reading counters.
    pub ledger: Ledger,
}

impl std::ops::Deref for Published {
    type Target = State;
    fn deref(&self) -> &State {
        &self.state
    }
}

/// The daemon's state and the data plane, owned by one thread.
pub struct Owner {
    dp: Dataplane,
    monitor: Option<HealthMonitor>,
    measurer: Measurer,
    /// Per shifted service: its target region's (new flows, repeated
    /// SYNs) over the shift's signal window.
    shift_windows: BTreeMap<String, CounterWindow>,
    state: State,
    publish: watch::Sender<Arc<Published>>,
}

/// Backends by the time of their latest down transition, earliest first.
fn down_order(transitions: &BTreeMap<String, Transitions>) -> Vec<String> {
    let mut v: Vec<(SystemTime, &String)> = transitions
        .iter()
        .filter_map(|(b, t)| t.last_down.map(|at| (at, b)))
        .collect();
    v.sort();
    v.into_iter().map(|(_, b)| b.clone()).collect()
}

/// Logs what changed between two plans that an operator must know:
/// regions entering or leaving panic, fail-open and residency drops.
fn log_plan_changes(old: &Planned, new: &Planned) {
    let states = |p: &Planned| -> BTreeMap<(String, u8), (bool, Option<Outcome>)> {
        p.services
            .iter()
            .zip(&p.plans)
            .flat_map(|(d, plan)| {
                plan.tables.iter().filter_map(move |t| {
                    t.engine.as_ref().map(|e| {
                        (
                            (d.name.clone(), t.class),
                            (
                                e.decision.regions.iter().any(|r| r.panic),
                                Some(e.decision.outcome),
                            ),
                        )
                    })
                })
            })
            .collect()
    };
    let (a, b) = (states(old), states(new));
    for (k, v) in &b {
        let was = a.get(k).copied().unwrap_or((false, Some(Outcome::Serve)));
        if was == *v {
            continue;
        }
        let (panic, outcome) = *v;
        let class = new
            .service(&k.0)
            .and_then(|(_, p)| p.tables.iter().find(|t| t.class == k.1))
            .and_then(|t| t.class_name.clone())
            .unwrap_or_else(|| "default".to_string());
        match outcome {
            Some(Outcome::DropResidency) => warn!(
                service = %k.0, class = %class,
                "residency: no allowed region may serve; new flows of this class are dropped (fail closed)"
            ),
            Some(Outcome::FailOpen) => warn!(
                service = %k.0, class = %class,
                "no healthy backend in the order: failing open to all backends"
            ),
            Some(Outcome::DropNoHealthy) => warn!(
                service = %k.0, class = %class,
                "no healthy backend in the order: new flows are dropped (on_no_healthy = drop)"
            ),
            _ if panic => warn!(
                service = %k.0, class = %class,
                "panic: a region below panic_threshold spreads its share over all its backends"
            ),
            _ => {
                info!(service = %k.0, class = %class, "back to normal: no panic, serving healthy backends")
            }
        }
    }
}

/// The backends of `cfg` that `health` says are down.
pub fn down_set(cfg: &Config, health: &BTreeMap<String, TargetStatus>) -> BTreeSet<String> {
    cfg.backends
        .iter()
        .filter(|b| !health::backend_up(health, &b.name))
        .map(|b| b.name.clone())
        .collect()
}

impl Owner {
    /// Takes ownership of an opened data plane. `drained` are drains
    /// adopted from a previous run (those of unknown backends are dropped).
    /// Nothing is programmed yet: call [`Owner::program`].
    pub fn new(
        config_path: PathBuf,
        cfg: Config,
        dp: Dataplane,
        drained: BTreeSet<String>,
    ) -> (Owner, watch::Receiver<Arc<Published>>) {
        let drained = drained
            .into_iter()
            .filter(|b| cfg.backend(b).is_some())
            .collect();
        // Region drains adopted from a previous run (those of unknown
        // regions are dropped).
        let drained_regions = dp
            .drained_regions()
            .iter()
            .filter(|r| cfg.region(r).is_some())
            .cloned()
            .collect();
        let region_drain_deadlines: BTreeMap<String, SystemTime> = dp
            .region_drain_deadlines()
            .iter()
            .filter(|(r, _)| cfg.region(r).is_some())
            .map(|(r, secs)| {
                (
                    r.clone(),
                    std::time::UNIX_EPOCH + Duration::from_secs(*secs),
                )
            })
            .collect();
        // Shifts adopted from a previous run: their clocks kept running.
        let mut shifts = BTreeMap::new();
        for s in dp.shifts() {
            match shift_misfit(&cfg, s) {
                Some(why) => warn!(
                    service = %s.plan.service,
                    reason = %why,
                    "dropped the staged shift of the previous run"
                ),
                None => {
                    info!(
                        service = %s.plan.service,
                        from = %s.plan.from,
                        to = %s.plan.to,
                        state = %s.describe(),
                        "adopted the staged shift of the previous run"
                    );
                    shifts.insert(s.plan.service.clone(), s.clone());
                }
            }
        }
        let started = SystemTime::now();
        let state = State {
            config_path,
            cfg: Arc::new(cfg),
            health: BTreeMap::new(),
            drained,
            drained_regions,
            region_drain_deadlines,
            drain_moved: BTreeSet::new(),
            planned: Arc::default(),
            measured: Measured::default(),
            down: BTreeSet::new(),
            generation: 1,
            reloads: 0,
            reload_failures: 0,
            last_reload_error: None,
            last_reload: None,
            last_load: started,
            programmed: 0,
            started,
            transitions: BTreeMap::new(),
            interfaces: Vec::new(),
            shifts,
            passive: Passive::default(),
            analysis: BTreeMap::new(),
        };
        let (publish, rx) = watch::channel(Arc::new(Published {
            state: state.clone(),
            ledger: dp.ledger(),
        }));
        let owner = Owner {
            dp,
            monitor: None,
            measurer: Measurer::default(),
            shift_windows: BTreeMap::new(),
            state,
            publish,
        };
        (owner, rx)
    }

    /// Hands the owner the health monitor, whose targets it keeps in step
    /// with the config.
    pub fn set_monitor(&mut self, monitor: HealthMonitor) {
        self.monitor = Some(monitor);
    }

    /// Records the interfaces start-up attached, for `steer status`.
    pub fn set_interfaces(&mut self, interfaces: Vec<Interface>) {
        self.state.interfaces = interfaces;
        self.publish();
    }

    /// The data plane (for tests that read the maps back).
    pub fn dataplane(&self) -> &Dataplane {
        &self.dp
    }

    /// The latest published snapshot.
    pub fn published(&self) -> Arc<Published> {
        self.publish.borrow().clone()
    }

    fn backend_state(&self) -> BackendState {
        BackendState {
            down: down_set(&self.state.cfg, &self.state.health),
            drained: self.state.drained.clone(),
        }
    }

    /// Everything the policy needs besides the config.
    fn runtime(&self) -> Runtime {
        let m = &self.state.measured;
        let mut backends = self.backend_state();
        // Past a region drain's timeout its established flows move: its
        // backends are programmed down (conntrack re-selects their flows).
        let now = SystemTime::now();
        for (region, at) in &self.state.region_drain_deadlines {
            if *at <= now {
                backends.down.extend(
                    self.state
                        .cfg
                        .backends
                        .iter()
                        .filter(|b| b.region == *region)
                        .map(|b| b.name.clone()),
                );
            }
        }
        Runtime {
            backends,
            drained_regions: self.state.drained_regions.clone(),
            rtt: m.rtt.clone(),
            rate: m.rate.clone(),
            down_order: down_order(&self.state.transitions),
            ranked: m.ranked.clone(),
            capacity_keep: m.keep.clone(),
            shifts: self
                .state
                .shifts
                .iter()
                .filter(|(_, s)| s.percent() > 0)
                .map(|(svc, s)| {
                    (
                        svc.clone(),
                        (
                            s.plan.from.clone(),
                            s.plan.to.clone(),
                            f64::from(s.percent()),
                        ),
                    )
                })
                .collect(),
            ejected: self.state.passive.ejected(),
            ramps: self
                .state
                .passive
                .ramps(&self.state.cfg, unix_ms(SystemTime::now())),
        }
    }

    fn publish(&self) {
        self.publish.send_replace(Arc::new(Published {
            state: self.state.clone(),
            ledger: self.dp.ledger(),
        }));
    }

    /// Programs the data plane from the current config, health and drains,
    /// then publishes.
    pub fn program(&mut self) -> Result<(), String> {
        let rt = self.runtime();
        let down = rt.backends.down.clone();
        let started = Instant::now();
        let planned = policy::plan_from(&self.state.cfg, &rt, Some(&self.state.planned));
        let deadlines = self
            .state
            .region_drain_deadlines
            .iter()
            .map(|(r, at)| {
                let secs = at
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs());
                (r.clone(), secs)
            })
            .collect();
        self.dp
            .set_drained_regions(&self.state.drained_regions, deadlines);
        self.dp
            .set_shifts(self.state.shifts.values().cloned().collect());
        let r = self
            .dp
            .apply_plan(&self.state.cfg, &planned, &rt.backends.drained)
            .map_err(|e| crate::errors::chain(&e));
        if r.is_ok() {
            log_plan_changes(&self.state.planned, &planned);
            self.state.planned = Arc::new(planned);
            self.state.down = down;
            self.state.programmed = self.state.programmed.wrapping_add(1);
            info!(
                elapsed_ms = started.elapsed().as_secs_f64() * 1000.0,
                "data plane programmed"
            );
        }
        self.publish();
        r
    }

    /// Applies events in order until [`Event::Stop`] or until every sender
    /// is gone; then stops the health monitor and returns the owner (for
    /// the final cleanup).
    pub fn run(mut self, mut rx: mpsc::Receiver<Event>) -> Owner {
        while let Some(ev) = rx.blocking_recv() {
            if matches!(ev, Event::Stop) {
                break;
            }
            self.handle(ev);
        }
        if let Some(m) = self.monitor.take() {
            m.stop();
        }
        self
    }

    /// Applies one event.
    pub fn handle(&mut self, ev: Event) {
        match ev {
            Event::Health(status) => self.on_health(status),
            Event::Drain {
                backend,
                undo,
                reply,
            } => {
                let r = self.drain(&backend, undo);
                if let Some(reply) = reply {
                    let _ = reply.send(r);
                }
            }
            Event::DrainRegion {
                region,
                undo,
                timeout,
                reply,
            } => {
                let r = self.drain_region(&region, undo, timeout);
                if let Some(reply) = reply {
                    let _ = reply.send(r);
                }
            }
            Event::ShiftStart { plan, reply } => {
                let r = self.shift_start(plan);
                if let Some(reply) = reply {
                    let _ = reply.send(r);
                }
            }
            Event::ShiftOp { service, op, reply } => {
                let r = self.shift_op(&service, op);
                if let Some(reply) = reply {
                    let _ = reply.send(r);
                }
            }
            Event::Tick => self.on_tick(),
            Event::Analysis {
                service,
                url,
                verdict,
            } => {
                let current = self.state.shifts.get(&service).is_some_and(|s| {
                    s.is_active() && s.plan.rollback.analysis_url.as_deref() == Some(url.as_str())
                });
                if current && self.state.analysis.get(&service) != Some(&verdict) {
                    info!(service = %service, url = %url, verdict = ?verdict, "shift analysis verdict");
                    self.state.analysis.insert(service, verdict);
                    self.publish();
                }
            }
            Event::Reload { reply } => {
                super::notify::reloading();
                let r = self.reload();
                super::notify::ready(self.state.generation);
                if let Some(reply) = reply {
                    let _ = reply.send(r);
                }
            }
            Event::Stop => {}
        }
    }

    /// Starts a staged shift: checked against the service's regions and
    /// residency classes; refused while another shift of the service is
    /// in force.
    fn shift_start(&mut self, plan: Plan) -> Response {
        let Some(ctx) = plan_context(&self.state.cfg, &plan.service) else {
            let known: Vec<&str> = self
                .state
                .cfg
                .services
                .iter()
                .map(|s| s.name.as_str())
                .collect();
            return Response::error(format!(
                "unknown service {:?} (services: {})",
                plan.service,
                known.join(", ")
            ));
        };
        if let Some(old) = self.state.shifts.get(&plan.service) {
            if old.percent() > 0 {
                return Response::error(format!(
                    "service {} already has a shift from {} to {} ({}); abort it first with \
                     `steer shift abort {}`",
                    plan.service,
                    old.plan.from,
                    old.plan.to,
                    old.describe(),
                    plan.service
                ));
            }
        }
        let now = unix_ms(SystemTime::now());
        let shift = match Shift::start(plan, now, &ctx) {
            Ok(s) => s,
            Err(e) => return Response::error(e.to_string()),
        };
        let service = shift.plan.service.clone();
        let before = self.state.shifts.insert(service.clone(), shift.clone());
        match self.program() {
            Ok(()) => {
                info!(
                    service = %service,
                    from = %shift.plan.from,
                    to = %shift.plan.to,
                    stages = ?shift.plan.stages,
                    hold_ms = shift.plan.hold_ms,
                    "shift started: {}",
                    shift.describe()
                );
                Response::ok(format!(
                    "shift of {service} from {} to {} started: {}; each stage holds {}",
                    shift.plan.from,
                    shift.plan.to,
                    shift.describe(),
                    steer_config::format_duration(Duration::from_millis(shift.plan.hold_ms))
                ))
            }
            Err(e) => {
                match before {
                    Some(b) => self.state.shifts.insert(service, b),
                    None => self.state.shifts.remove(&service),
                };
                let rollback = self.roll_back();
                Response::error(format!(
                    "programming the data plane failed, the shift was not started: {e}{rollback}"
                ))
            }
        }
    }

    /// Pauses, resumes or aborts a service's shift. Aborting a finished
    /// shift forgets it (a completed one stops applying).
    fn shift_op(&mut self, service: &str, op: ShiftOp) -> Response {
        let Some(before) = self.state.shifts.get(service).cloned() else {
            return Response::error(format!(
                "service {service:?} has no shift; start one with `steer shift start {service} \
                 --from A --to B`"
            ));
        };
        let now = unix_ms(SystemTime::now());
        let mut s = before.clone();
        let forget = op == ShiftOp::Abort && !s.is_active();
        let done = if forget {
            self.state.shifts.remove(service);
            format!(
                "forgot the finished shift of {service} ({}){}",
                s.describe(),
                if s.percent() > 0 {
                    format!(
                        "; its {}% no longer applies: new flows follow the policy",
                        s.percent()
                    )
                } else {
                    String::new()
                }
            )
        } else {
            let r = match op {
                ShiftOp::Pause => s.pause(now),
                ShiftOp::Resume => s.resume(now),
                ShiftOp::Abort => s.abort(now),
            };
            if let Err(e) = r {
                return Response::error(e.to_string());
            }
            let d = s.describe();
            self.state.shifts.insert(service.to_string(), s);
            format!("shift of {service}: {d}")
        };
        match self.program() {
            Ok(()) => {
                info!(service, op = ?op, "shift changed: {done}");
                Response::ok(done)
            }
            Err(e) => {
                self.state.shifts.insert(service.to_string(), before);
                let rollback = self.roll_back();
                Response::error(format!(
                    "programming the data plane failed, the shift was not changed: {e}{rollback}"
                ))
            }
        }
    }

    /// Ticks every shift in force; logs what happened. Returns whether
    /// any changed (its percentage or its persisted state).
    fn tick_shifts(&mut self) -> bool {
        let now = unix_ms(SystemTime::now());
        let mut changed = false;
        let services: Vec<String> = self.state.shifts.keys().cloned().collect();
        self.shift_windows
            .retain(|svc, _| self.state.shifts.get(svc).is_some_and(Shift::is_active));
        self.state.analysis.retain(|svc, _| {
            self.state
                .shifts
                .get(svc)
                .is_some_and(|s| s.is_active() && s.plan.rollback.analysis_url.is_some())
        });
        for service in services {
            let Some(mut s) = self.state.shifts.get(&service).cloned() else {
                continue;
            };
            if !s.is_active() {
                continue;
            }
            let mut signals = shift_signals(
                &self.state.cfg,
                &self.state.health,
                &self.state.measured,
                &service,
                &s.plan.to,
            );
            // The target region's passive signal over the window.
            let (mut n, mut r) = (0u64, 0u64);
            if let Some(svc) = self.state.cfg.service(&service) {
                for b in self
                    .state
                    .cfg
                    .service_backends(svc)
                    .iter()
                    .filter(|b| b.region == s.plan.to)
                {
                    if let Some((bn, br)) = self.passive_counts(&service, &b.name) {
                        n += bn;
                        r += br;
                    }
                }
            }
            let w = self.shift_windows.entry(service.clone()).or_default();
            w.push(now, n, r, s.plan.rollback.signal_window_ms());
            (signals.new_flows, signals.repeated_syns) = w.counts();
            signals.analysis = self
                .state
                .analysis
                .get(&service)
                .cloned()
                .unwrap_or_default();
            let events = s.tick(now, &signals);
            for ev in &events {
                match ev {
                    shift::Event::Advanced { stage, percent, .. } => info!(
                        service = %service,
                        from = %s.plan.from,
                        to = %s.plan.to,
                        stage = stage + 1,
                        stages = s.plan.stages.len(),
                        percent,
                        "shift advanced: {percent}% of {}'s new flows go to {}",
                        s.plan.from,
                        s.plan.to
                    ),
                    shift::Event::Completed { percent, .. } => info!(
                        service = %service,
                        from = %s.plan.from,
                        to = %s.plan.to,
                        percent,
                        "shift completed: {percent}% of {}'s new flows go to {}",
                        s.plan.from,
                        s.plan.to
                    ),
                    shift::Event::RolledBack {
                        stage,
                        percent,
                        reason,
                        ..
                    } => warn!(
                        service = %service,
                        from = %s.plan.from,
                        to = %s.plan.to,
                        stage = stage + 1,
                        percent,
                        reason = %reason,
                        "shift rolled back to 0%: {reason}"
                    ),
                    other => info!(service = %service, event = ?other, "shift changed"),
                }
            }
            if !events.is_empty() {
                changed = true;
                self.state.shifts.insert(service, s);
            }
        }
        changed
    }

    /// Measures (when a policy needs it) and re-programs if what the
    /// policy reads changed.
    fn on_tick(&mut self) {
        // The conntrack clock (537 ms ticks): a flow-cache slot lasts one
        // tick, and its epoch (4.3 s) ages the SYN path's filter.
        if let Err(e) = self.dp.set_ct_tick(crate::dataplane::ct_tick_now()) {
            error!(error = %e, "advancing the conntrack clock failed");
        }
        if self.tick_passive() {
            if let Err(e) = self.program() {
                error!(error = %e, "programming the data plane after an outlier or slow start change failed");
            }
        }
        if self.tick_shifts() {
            if let Err(e) = self.program() {
                error!(error = %e, "programming the data plane after a shift change failed");
            }
        }
        // A region drain's timeout that passed since the last programming.
        let now = SystemTime::now();
        let expired = self
            .state
            .region_drain_deadlines
            .iter()
            .any(|(r, at)| *at <= now && !self.state.drain_moved.contains(r));
        if expired {
            for (r, at) in &self.state.region_drain_deadlines {
                if *at <= now && self.state.drain_moved.insert(r.clone()) {
                    info!(region = %r, "region drain timeout passed: moving its established flows");
                }
            }
            if let Err(e) = self.program() {
                error!(error = %e, "programming the data plane after a drain timeout failed");
            }
        }
        if !measure::needed(&self.state.cfg) {
            return;
        }
        let health = match &self.monitor {
            Some(m) => m.snapshot(),
            None => self.state.health.clone(),
        };
        let counts = self.region_new_flows();
        let changed = self
            .measurer
            .tick(&self.state.cfg, &health, counts, Instant::now());
        self.state.measured = self.measurer.measured.clone();
        if changed {
            if let Err(e) = self.program() {
                error!(error = %e, "programming the data plane after a measurement failed");
            }
        }
    }

    /// A backend's cumulative (new flows, repeated SYNs) in a service, as
    /// the data plane counts them.
    fn passive_counts(&self, service: &str, backend: &str) -> Option<(u64, u64)> {
        let c = self.dp.backend_counters(service, backend).ok()?;
        let p = self.dp.backend_passive(service, backend).ok()?;
        Some((c.new_flows, p.repeated_syns))
    }

    /// Outlier ejection and slow start: returns whether the tables must be
    /// recomposed.
    fn tick_passive(&mut self) -> bool {
        let cfg = self.state.cfg.clone();
        if !cfg
            .services
            .iter()
            .any(|s| s.outlier.is_some() || !s.slow_start.window.is_zero())
        {
            self.state.passive = Passive::default();
            return false;
        }
        let health = match &self.monitor {
            Some(m) => m.snapshot(),
            None => self.state.health.clone(),
        };
        let mut passive = std::mem::take(&mut self.state.passive);
        let changed = passive.tick(
            &cfg,
            &health,
            &|s: &str, b: &str| self.passive_counts(s, b),
            unix_ms(SystemTime::now()),
        );
        self.state.passive = passive;
        if !changed {
            // Counters and windows moved: status shows them.
            self.publish();
        }
        changed
    }

    /// New flows counted so far per region, over every service's backends.
    fn region_new_flows(&self) -> BTreeMap<String, u64> {
        let cfg = &self.state.cfg;
        let mut out: BTreeMap<String, u64> =
            cfg.regions.iter().map(|r| (r.name.clone(), 0)).collect();
        for svc in &cfg.services {
            for b in cfg.service_backends(svc) {
                if let Ok(c) = self.dp.backend_counters(&svc.name, &b.name) {
                    *out.entry(b.region.clone()).or_default() += c.new_flows;
                }
            }
        }
        out
    }

    fn on_health(&mut self, status: BTreeMap<String, TargetStatus>) {
        record_transitions(
            &mut self.state.transitions,
            &self.state.cfg,
            &self.state.health,
            &status,
            SystemTime::now(),
        );
        let first = self.state.health.is_empty();
        let was_down = down_set(&self.state.cfg, &self.state.health);
        self.state.health = status;
        let is_down = down_set(&self.state.cfg, &self.state.health);
        if !first {
            let now = unix_ms(SystemTime::now());
            let cfg = self.state.cfg.clone();
            for b in was_down.difference(&is_down) {
                self.state.passive.backend_came_up(&cfg, b, now);
            }
            for b in is_down.difference(&was_down) {
                self.state.passive.backend_went_down(b);
            }
        }
        if is_down != self.state.down {
            if let Err(e) = self.program() {
                error!(error = %e, "programming the data plane after a health change failed");
            }
        } else {
            // Details (last failure, degraded) changed: status shows them.
            self.publish();
        }
    }

    fn drain(&mut self, backend: &str, undo: bool) -> Response {
        if self.state.cfg.backend(backend).is_none() {
            let known: Vec<&str> = self
                .state
                .cfg
                .backends
                .iter()
                .map(|b| b.name.as_str())
                .collect();
            return Response::error(format!(
                "unknown backend {backend:?} (backends: {})",
                known.join(", ")
            ));
        }
        let before = self.state.drained.clone();
        let passive_before = self.state.passive.clone();
        if undo {
            if self.state.drained.remove(backend) {
                let cfg = self.state.cfg.clone();
                self.state
                    .passive
                    .backend_came_up(&cfg, backend, unix_ms(SystemTime::now()));
            }
        } else {
            self.state.drained.insert(backend.to_string());
        }
        match self.program() {
            Ok(()) => {
                info!(backend, undo, "drain changed");
                Response::ok(format!(
                    "{backend} {}",
                    if undo {
                        "undrained: receives new flows again"
                    } else {
                        "drained: no new flows; established flows continue"
                    }
                ))
            }
            Err(e) => {
                self.state.drained = before;
                self.state.passive = passive_before;
                let rollback = self.roll_back();
                Response::error(format!(
                    "programming the data plane failed, the drain was not applied: {e}{rollback}"
                ))
            }
        }
    }

    fn drain_region(&mut self, region: &str, undo: bool, timeout: Option<Duration>) -> Response {
        if self.state.cfg.region(region).is_none() {
            let known: Vec<&str> = self
                .state
                .cfg
                .regions
                .iter()
                .map(|r| r.name.as_str())
                .collect();
            return Response::error(format!(
                "unknown region {region:?} (regions: {})",
                known.join(", ")
            ));
        }
        let before = self.state.drained_regions.clone();
        let deadlines_before = self.state.region_drain_deadlines.clone();
        if undo {
            self.state.drained_regions.remove(region);
            self.state.region_drain_deadlines.remove(region);
            self.state.drain_moved.remove(region);
        } else {
            self.state.drained_regions.insert(region.to_string());
            match timeout {
                Some(t) => {
                    self.state
                        .region_drain_deadlines
                        .insert(region.to_string(), SystemTime::now() + t);
                }
                None => {
                    self.state.region_drain_deadlines.remove(region);
                    self.state.drain_moved.remove(region);
                }
            }
        }
        match self.program() {
            Ok(()) => {
                info!(
                    region,
                    undo,
                    timeout_s = timeout.map(|t| t.as_secs()),
                    "region drain changed"
                );
                Response::ok(format!(
                    "region {region} {}",
                    match (undo, timeout) {
                        (true, _) => "undrained: receives new flows again".to_string(),
                        (false, None) =>
                            "drained: no new flows; established flows continue".to_string(),
                        (false, Some(t)) => format!(
                            "drained: no new flows; established flows continue for {} and are \
                             then moved to other regions",
                            steer_config::format_duration(t)
                        ),
                    }
                ))
            }
            Err(e) => {
                self.state.drained_regions = before;
                self.state.region_drain_deadlines = deadlines_before;
                let rollback = self.roll_back();
                Response::error(format!(
                    "programming the data plane failed, the region drain was not applied: \
                     {e}{rollback}"
                ))
            }
        }
    }

    /// Re-programs the state as it was before a failed apply. Returns ""
    /// when that worked, or a sentence for the operator when it did not.
    fn roll_back(&mut self) -> String {
        match self.program() {
            Ok(()) => String::new(),
            Err(e) => {
                error!(error = %e, "rolling back to the previous state failed: the data plane may not match `steer status`");
                format!(
                    "; rolling back to the previous state also failed ({e}): the data plane \
                     may not match `steer status`; fix the cause and reload, or restart steer"
                )
            }
        }
    }

    fn reload_failed(&mut self, msg: &str) {
        self.state.reload_failures = self.state.reload_failures.wrapping_add(1);
        self.state.last_reload_error = Some(msg.to_string());
        self.state.last_reload = Some(ReloadOutcome {
            at: SystemTime::now(),
            ok: false,
        });
        self.publish();
    }

    /// Re-reads the config. An invalid config, or one that changes a
    /// setting only a restart can change, is rejected and the running one
    /// keeps serving. If programming the new one fails, the config, the
    /// health targets and the drains are restored and re-programmed.
    fn reload(&mut self) -> Response {
        let new = match Config::load(&self.state.config_path) {
            Ok(c) => c,
            Err(errs) => {
                let details: Vec<String> = errs.0.iter().map(|e| e.to_string()).collect();
                for d in &details {
                    error!(error = %d, "reload rejected: config error");
                }
                let msg = format!(
                    "{} has {} error(s); the running config keeps serving",
                    self.state.config_path.display(),
                    details.len()
                );
                self.reload_failed(&msg);
                return Response::error_with_details(msg, details);
            }
        };
        let restart_only = reload::restart_only_changes(&self.state.cfg, &new);
        if !restart_only.is_empty() {
            let msg = format!(
                "these settings cannot change on reload: {} (restart steer to change them); \
                 the running config keeps serving",
                restart_only.join(", ")
            );
            error!(error = %msg, "reload rejected");
            self.reload_failed(&msg);
            return Response::error(msg);
        }
        let old_cfg = std::mem::replace(&mut self.state.cfg, Arc::new(new));
        let old_drained = self.state.drained.clone();
        let old_drained_regions = self.state.drained_regions.clone();
        let cfg = self.state.cfg.clone();
        self.state.drained.retain(|b| cfg.backend(b).is_some());
        self.state
            .drained_regions
            .retain(|r| cfg.region(r).is_some());
        let old_deadlines = self.state.region_drain_deadlines.clone();
        let kept = self.state.drained_regions.clone();
        self.state
            .region_drain_deadlines
            .retain(|r, _| kept.contains(r));
        self.state.drain_moved.retain(|r| kept.contains(r));
        let old_shifts = self.state.shifts.clone();
        let cfg = self.state.cfg.clone();
        self.state
            .shifts
            .retain(|service, s| match shift_misfit(&cfg, s) {
                Some(why) => {
                    warn!(service = %service, reason = %why, "reload dropped the staged shift");
                    false
                }
                None => true,
            });
        // Probe the new targets (the state of unchanged ones is kept).
        if let Some(m) = self.monitor.as_mut() {
            m.set_targets(health::targets_from_config(&self.state.cfg));
        }
        match self.program() {
            Ok(()) => {
                self.state.reloads = self.state.reloads.wrapping_add(1);
                self.state.generation = self.state.generation.wrapping_add(1);
                self.state.last_reload_error = None;
                let now = SystemTime::now();
                self.state.last_reload = Some(ReloadOutcome { at: now, ok: true });
                self.state.last_load = now;
                self.publish();
                let changes = config_changes(&old_cfg, &self.state.cfg);
                info!(
                    generation = self.state.generation,
                    changes = changes.len(),
                    "reloaded {}",
                    self.state.config_path.display()
                );
                for c in &changes {
                    info!(generation = self.state.generation, change = %c, "reload changed");
                }
                let mut msg = format!(
                    "reloaded {} (generation {}): ",
                    self.state.config_path.display(),
                    self.state.generation
                );
                if changes.is_empty() {
                    msg.push_str("nothing changed");
                } else {
                    msg.push_str(&format!("{} change(s)", changes.len()));
                    for c in &changes {
                        msg.push_str(&format!("\n  {c}"));
                    }
                }
                Response::ok(msg)
            }
            Err(e) => {
                self.state.cfg = old_cfg;
                self.state.drained = old_drained;
                self.state.drained_regions = old_drained_regions;
                self.state.region_drain_deadlines = old_deadlines;
                self.state.shifts = old_shifts;
                if let Some(m) = self.monitor.as_mut() {
                    m.set_targets(health::targets_from_config(&self.state.cfg));
                }
                let rollback = self.roll_back();
                let msg =
                    format!("applying the new config failed, kept the old one: {e}{rollback}");
                error!(error = %msg, "reload failed");
                self.reload_failed(&msg);
                Response::error(msg)
            }
        }
    }

    /// Consumes the owner at shutdown. With `detach`, every pin steer made
    /// and its state file are removed (XDP detaches); the names of the
    /// interfaces detached are returned.
    pub fn finish(self, detach: bool) -> Result<Vec<String>, String> {
        let persist = self.dp.persist().cloned();
        drop(self.dp);
        match (detach, persist) {
            (true, Some(p)) => Dataplane::remove_pins(&p).map_err(|e| crate::errors::chain(&e)),
            _ => Ok(Vec::new()),
        }
    }

    /// Logs a discarded previous state (see [`Dataplane::discarded_state`]).
    pub fn warn_discarded(&self) {
        if let Some(why) = self.dp.discarded_state() {
            warn!(
                reason = why,
                "discarded the previous run's state and started fresh: established flows \
                 re-select their backends and earlier drains are forgotten"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const CFG: &str = include_str!("testdata/two_backends.toml");

    fn status(up: &[(&str, bool)]) -> BTreeMap<String, TargetStatus> {
        up.iter()
            .map(|(k, up)| {
                (
                    k.to_string(),
                    TargetStatus {
                        up: *up,
                        degraded: false,
                        last_failure: None,
                        last_latency: None,
                        rtt: None,
                        probes: 1,
                        failures: 0,
                    },
                )
            })
            .collect()
    }

    #[test]
    fn health_transitions_are_timestamped_per_backend() {
        let cfg = Config::parse(CFG).unwrap();
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000);
        let t1 = t0 + Duration::from_secs(10);
        let t2 = t0 + Duration::from_secs(20);
        let mut tr = BTreeMap::new();
        let all_up = status(&[("b1/web", true), ("b2/web", true)]);
        // No probe yet counts as up: the first report changes nothing.
        record_transitions(&mut tr, &cfg, &BTreeMap::new(), &all_up, t0);
        assert!(tr.is_empty(), "{tr:?}");
        let b2_down = status(&[("b1/web", true), ("b2/web", false)]);
        record_transitions(&mut tr, &cfg, &all_up, &b2_down, t1);
        // Still down: the time of going down stays.
        record_transitions(&mut tr, &cfg, &b2_down, &b2_down, t2);
        assert_eq!(
            tr,
            BTreeMap::from([(
                "b2".to_string(),
                Transitions {
                    last_up: None,
                    last_down: Some(t1),
                }
            )])
        );
        record_transitions(&mut tr, &cfg, &b2_down, &all_up, t2);
        assert_eq!(
            tr["b2"],
            Transitions {
                last_up: Some(t2),
                last_down: Some(t1),
            }
        );
        assert!(!tr.contains_key("b1"));
    }
}
