//! `steer run`: the daemon.
//!
//! Data flows one way (docs/architecture.md):
//!
//! ```text
//! inputs (config file, health transitions, operator commands, signals)
//!    -> one owner (owner.rs: applies events in order, on its own thread)
//!    -> policy (pure: config + health + drains -> desired services)
//!    -> dataplane (the only code that touches BPF maps and links)
//! ```
//!
//! The owner publishes an immutable snapshot after every event; the control
//! socket's `status` and the metrics endpoint read it (status.rs) and never
//! wait for the owner.

pub mod analysis;
mod changes;
pub mod measure;
mod notify;
mod owner;
pub mod passive;
mod reload;
mod status;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{anyhow, bail, Context as _, Result};
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{error, info, warn};

pub use changes::{config_changes, Change};
pub use owner::{
    down_set, plan_context, record_transitions, unix_ms, Event, Interface, Owner, Published,
    ReloadOutcome, ShiftOp, State, Transitions, EVENT_QUEUE,
};
pub use reload::restart_only_changes;
pub use status::{report as status_report, shift_report, Status};

use crate::api::{self, ControlHandler, HandlerFuture, Request, Response};
use crate::config::{AttachMode, Config};
use crate::dataplane::{
    persist, pin_entries, Attached, CounterReader, Dataplane, InstanceLock, Persist,
};
use crate::health::{self, HealthMonitor};
use crate::policy::{explain, ApplyConfig as _};

/// Options of `steer run` that override the config.
#[derive(Clone, Debug)]
pub struct RunOptions {
    pub config_path: PathBuf,
    pub interfaces: Vec<String>,
    pub mode: Option<AttachMode>,
    /// SIGTERM and SIGINT detach XDP and remove the pins (else they leave
    /// XDP forwarding for the next run to adopt, like
    /// `steer stop --keep-forwarding`).
    pub detach_on_sigterm: bool,
}

/// Where the daemon keeps what survives a restart: the pins under
/// `dataplane.pin_path`, and the state file next to the control socket,
/// named after the pin path (`persist::state_file_name`) so instances
/// whose sockets share a directory keep separate files.
pub fn persist_for(cfg: &Config) -> Persist {
    let state_dir = cfg
        .control
        .socket
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("/run/steer"));
    Persist {
        pin_dir: cfg.dataplane.pin_path.clone(),
        state_file: state_dir.join(persist::state_file_name(&cfg.dataplane.pin_path)),
    }
}

fn open_and_attach(
    cfg: &crate::config::DataplaneConfig,
    persist: Persist,
    interfaces: &[String],
    mode: AttachMode,
) -> Result<(Dataplane, Vec<Interface>)> {
    let (mut dp, adopted) = Dataplane::open(cfg, persist.clone()).with_context(|| {
        format!(
            "opening the data plane (pins in {})",
            persist.pin_dir.display()
        )
    })?;
    if adopted {
        info!(pins = %persist.pin_dir.display(), "adopted the data plane of a previous run: established flows keep their backends");
    } else {
        info!(pins = %persist.pin_dir.display(), "started a fresh data plane");
    }
    let mut attached = Vec::new();
    for iface in interfaces {
        let (shown, adopted) = match dp.attach(iface, mode)? {
            Attached::New(m) => {
                info!(iface, mode = m, "attached XDP");
                (m, false)
            }
            Attached::Replaced => {
                info!(
                    iface,
                    "took over the pinned XDP link: program replaced atomically"
                );
                // The mode the kernel has it in (with `auto`, either).
                let shown = match crate::dataplane::kernel_xdp_mode(iface) {
                    Ok(crate::dataplane::KernelXdpMode::Driver) => "driver",
                    Ok(crate::dataplane::KernelXdpMode::Skb) => "skb",
                    _ => mode.as_str(),
                };
                (shown, true)
            }
            Attached::FellBack { driver_error } => {
                warn!(
                    iface,
                    %driver_error,
                    "driver-mode XDP failed; attached in generic (skb) mode instead (mode = \"auto\")"
                );
                ("skb", false)
            }
            Attached::ModeChanged { from, to } => {
                info!(
                    iface,
                    from,
                    to,
                    "the pinned XDP link was in another mode: detached it and attached XDP anew"
                );
                (to, false)
            }
        };
        attached.push(Interface {
            name: iface.clone(),
            mode: shown.to_string(),
            adopted,
        });
    }
    Ok((dp, attached))
}

/// Waits (at most 5 s) until the control socket accepts a connection.
async fn wait_for_control(path: &Path) {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
    while tokio::time::Instant::now() < deadline {
        if tokio::net::UnixStream::connect(path).await.is_ok() {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    warn!(socket = %path.display(), "the control socket does not answer; announcing readiness anyway");
}

/// What the control socket and the metrics endpoint read: the owner's
/// published snapshot and the counter maps. No lock on the owner.
#[derive(Clone)]
struct View {
    published: watch::Receiver<Arc<Published>>,
    counters: Arc<CounterReader>,
    /// The health probes' statistics.
    health: health::HealthStats,
}

impl View {
    /// `steer explain` against the running daemon: the published plan and
    /// the live conntrack entry (or pending handshake).
    fn explain(&self, protocol: &str, client: &str, vip: &str) -> Response {
        let q = match explain::parse_query(protocol, client, vip) {
            Ok(q) => q,
            Err(e) => return Response::error(e),
        };
        let p = self.published.borrow().clone();
        let ct = explain::conntrack_live(&p.cfg, &p.planned, &p.ledger, &self.counters, &q);
        let mut e = explain::explain(&p.cfg, &p.planned, q, ct);
        // The running shift's stage and clock (the plan shows its
        // percentage only).
        if let Some(s) = e.service.as_ref().and_then(|svc| p.shifts.get(svc)) {
            let r = shift_report(s, unix_ms(std::time::SystemTime::now()));
            e.lines
                .push(format!("stage       {}", steer_api::shift_line(&r)));
        }
        Response::ok(e.to_string())
    }

    /// `steer shift status`: the shifts of the published state (of
    /// `service` only, if given).
    fn shift_status(&self, service: Option<&str>) -> Response {
        let p = self.published.borrow().clone();
        if let Some(s) = service {
            if p.cfg.service(s).is_none() {
                return Response::error(format!("unknown service {s:?}"));
            }
        }
        let now = unix_ms(std::time::SystemTime::now());
        let lines: Vec<String> = p
            .shifts
            .iter()
            .filter(|(name, _)| service.is_none_or(|s| s == name.as_str()))
            .map(|(name, s)| format!("{name}: {}", steer_api::shift_line(&shift_report(s, now))))
            .collect();
        Response::ok(if lines.is_empty() {
            match service {
                Some(s) => format!("{s}: no shift"),
                None => "no shift".to_string(),
            }
        } else {
            lines.join("\n")
        })
    }

    fn status(&self) -> Status {
        let p = self.published.borrow().clone();
        status::report(&p, Some(&self.counters))
    }

    fn metrics(&self) -> Arc<api::MetricsSnapshot> {
        let p = self.published.borrow().clone();
        let s = status::report(&p, Some(&self.counters));
        let h = self.health.latency_histogram();
        Arc::new(api::MetricsSnapshot {
            report: s.report,
            drops: s.drops,
            ct_insert_failures: s.ct_insert_failures,
            probe_latency: Some(api::HistogramSnapshot {
                buckets: h.buckets,
                sum: h.sum,
                count: h.count,
            }),
            probe_failures: self
                .health
                .probe_failures()
                .into_iter()
                .map(|(b, kinds)| {
                    (
                        b,
                        kinds.into_iter().map(|(k, n)| (k.to_string(), n)).collect(),
                    )
                })
                .collect(),
            last_reload_successful: p.last_reload.as_ref().is_none_or(|o| o.ok),
            last_reload_success_timestamp_seconds: p
                .last_load
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs_f64())
                .unwrap_or_default(),
        })
    }
}

/// `steer shift start --min-new-flows` when not given: the repeated-SYN
/// trigger needs at least this many new flows to the target region in its
/// window (Envoy's `failure_percentage_request_volume` is 50 requests; a
/// region of a few backends sees fewer new connections).
const DEFAULT_MIN_NEW_FLOWS: u64 = 20;

struct Handler {
    events: mpsc::Sender<Event>,
    view: View,
    shutdown: watch::Sender<Option<bool>>,
}

impl Handler {
    /// Queues an event that answers, and waits for the answer.
    async fn ask(&self, make: impl FnOnce(oneshot::Sender<Response>) -> Event) -> Response {
        let (tx, rx) = oneshot::channel();
        if self.events.send(make(tx)).await.is_err() {
            return Response::error("the daemon is stopping");
        }
        rx.await
            .unwrap_or_else(|_| Response::error("the daemon stopped before answering"))
    }
}

impl Handler {
    async fn shift_op(&self, service: String, op: ShiftOp) -> Response {
        self.ask(|reply| Event::ShiftOp {
            service,
            op,
            reply: Some(reply),
        })
        .await
    }
}

impl ControlHandler for Handler {
    fn handle(&self, req: Request) -> HandlerFuture<'_> {
        Box::pin(async move {
            match req {
                Request::Status => {
                    let view = self.view.clone();
                    // Counter reads are syscalls: off the async workers.
                    tokio::task::spawn_blocking(move || Response::Status(view.status().report))
                        .await
                        .unwrap_or_else(|e| Response::error(format!("internal error: {e}")))
                }
                Request::Reload => self.ask(|reply| Event::Reload { reply: Some(reply) }).await,
                Request::Drain { backend, undo } => {
                    self.ask(|reply| Event::Drain {
                        backend,
                        undo,
                        reply: Some(reply),
                    })
                    .await
                }
                Request::DrainRegion {
                    region,
                    undo,
                    timeout_seconds,
                } => {
                    self.ask(|reply| Event::DrainRegion {
                        region,
                        undo,
                        timeout: timeout_seconds.map(std::time::Duration::from_secs),
                        reply: Some(reply),
                    })
                    .await
                }
                Request::Explain {
                    protocol,
                    client,
                    vip,
                } => {
                    let view = self.view.clone();
                    tokio::task::spawn_blocking(move || view.explain(&protocol, &client, &vip))
                        .await
                        .unwrap_or_else(|e| Response::error(format!("internal error: {e}")))
                }
                Request::ShiftStart {
                    service,
                    from,
                    to,
                    stages,
                    hold_ms,
                    min_healthy,
                    over_capacity,
                    max_repeated_syn_percent,
                    min_new_flows,
                    signal_window_ms,
                    analysis_url,
                } => {
                    let plan = steer_policy::shift::Plan {
                        service,
                        from,
                        to,
                        stages,
                        hold_ms,
                        rollback: steer_policy::shift::Triggers {
                            min_healthy_fraction: min_healthy,
                            max_failure_ratio: max_repeated_syn_percent.map(|p| p / 100.0),
                            failure_min_flows: min_new_flows.unwrap_or(DEFAULT_MIN_NEW_FLOWS),
                            over_capacity,
                            analysis: analysis_url.is_some(),
                            window_ms: signal_window_ms.unwrap_or(0),
                            analysis_url,
                        },
                    };
                    self.ask(|reply| Event::ShiftStart {
                        plan,
                        reply: Some(reply),
                    })
                    .await
                }
                Request::ShiftStatus { service } => self.view.shift_status(service.as_deref()),
                Request::ShiftPause { service } => self.shift_op(service, ShiftOp::Pause).await,
                Request::ShiftResume { service } => self.shift_op(service, ShiftOp::Resume).await,
                Request::ShiftAbort { service } => self.shift_op(service, ShiftOp::Abort).await,
                Request::Stop { detach } => {
                    let _ = self.shutdown.send(Some(detach));
                    Response::ok(if detach {
                        "stopping: detaching XDP and removing pinned state"
                    } else {
                        "stopping: XDP stays attached and keeps forwarding on the last programmed state"
                    })
                }
            }
        })
    }
}

/// Runs the daemon until SIGTERM/SIGINT or `steer stop`.
pub fn run(opts: RunOptions) -> Result<()> {
    let cfg = Config::load(&opts.config_path).map_err(|errs| {
        anyhow!(
            "{} has {} error(s):\n{errs}",
            opts.config_path.display(),
            errs.0.len()
        )
    })?;
    let interfaces = if opts.interfaces.is_empty() {
        cfg.dataplane.interfaces.clone()
    } else {
        opts.interfaces.clone()
    };
    if interfaces.is_empty() {
        bail!(
            "no interface to attach to: set dataplane.interfaces in {} or pass --iface",
            opts.config_path.display()
        );
    }
    let mode = opts.mode.unwrap_or(cfg.dataplane.mode);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(run_async(
        opts.config_path,
        cfg,
        interfaces,
        mode,
        opts.detach_on_sigterm,
    ))
}

/// What a successful start hands to the running daemon.
type Started = (
    api::MetricsListener,
    api::ControlSocket,
    Owner,
    watch::Receiver<Arc<Published>>,
    CounterReader,
);

/// The start: the listeners (bound before anything touches the kernel, so
/// a taken port or a bad socket path fails with nothing to undo), then the
/// data plane opened, attached and programmed, then the pinned links of
/// interfaces no longer configured detached. On error the caller undoes
/// what this did in the kernel.
async fn start(
    config_path: &Path,
    cfg: &Config,
    persist: Persist,
    interfaces: Vec<String>,
    mode: AttachMode,
) -> Result<Started> {
    let metrics_listener = api::bind_metrics(cfg.metrics.listen).await?;
    // So is the control socket: its directory is checked (root's, writable
    // by no one else) before the state file is written there.
    let control_listener = api::ControlSocket::bind(
        &cfg.control.socket,
        cfg.control.group.as_ref().map(|g| api::ReadOnlyGroup {
            name: g.name.clone(),
            gid: g.gid,
        }),
    )
    .await
    .with_context(|| format!("control socket {}", cfg.control.socket.display()))?;
    // Open, attach and program on a blocking thread: the owner is created
    // there and later runs on its own thread.
    let cfg = cfg.clone();
    let config_path = config_path.to_path_buf();
    let (owner, published, counters) = tokio::task::spawn_blocking(move || -> Result<_> {
        let (dp, attached) = open_and_attach(&cfg.dataplane, persist.clone(), &interfaces, mode)?;
        let counters = dp.counter_reader()?;
        let drained = dp.backend_state().drained.clone();
        let (mut owner, published) = Owner::new(config_path, cfg, dp, drained);
        owner.set_interfaces(attached);
        owner.warn_discarded();
        owner
            .program()
            .map_err(|e| anyhow!("programming the data plane: {e}"))?;
        // Only now, when nothing can fail any more: a restart with another
        // interface set leaves no old interface attached.
        for iface in Dataplane::detach_links_except(&persist, &interfaces) {
            info!(
                iface,
                "detached XDP from an interface a previous run attached and this one does not"
            );
        }
        Ok((owner, published, counters))
    })
    .await
    .context("data-plane start")??;
    Ok((
        metrics_listener,
        control_listener,
        owner,
        published,
        counters,
    ))
}

async fn run_async(
    config_path: PathBuf,
    cfg: Config,
    interfaces: Vec<String>,
    mode: AttachMode,
    detach_on_sigterm: bool,
) -> Result<()> {
    // Signals first: a SIGTERM during the start is handled once it is
    // complete (a clean stop), instead of killing the process half-way.
    use tokio::signal::unix::{signal, SignalKind};
    let mut hup = signal(SignalKind::hangup()).context("SIGHUP handler")?;
    let mut term = signal(SignalKind::terminate()).context("SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("SIGINT handler")?;
    // One instance per pin directory, before anything else: a second
    // `steer run` on the same pins touches nothing (see InstanceLock).
    let persist = persist_for(&cfg);
    let lock = InstanceLock::acquire(&persist).context("taking the single-instance lock")?;
    let before = pin_entries(&persist.pin_dir);
    let started = start(&config_path, &cfg, persist.clone(), interfaces, mode).await;
    let (metrics_listener, control_listener, mut owner, published, counters) = match started {
        Ok(s) => s,
        Err(e) => {
            // Undo what this start did; a previous run's pins stay as found.
            let removed = tokio::task::spawn_blocking({
                let persist = persist.clone();
                let created = lock.created_dir();
                let before = before.clone();
                move || Dataplane::remove_created(&persist, &before, created)
            })
            .await
            .unwrap_or_default();
            let mut undone = if removed.is_empty() {
                "nothing to undo in the kernel".to_string()
            } else {
                format!(
                    "undone: removed {} from {}",
                    removed.join(", "),
                    persist.pin_dir.display()
                )
            };
            if !before.is_empty() {
                undone += &format!(
                    "; the {} pins a previous run left in {} were kept as found",
                    before.len(),
                    persist.pin_dir.display()
                );
            }
            return Err(e.context(format!("steer did not start ({undone})")));
        }
    };
    info!(config = %config_path.display(), "steer is forwarding");

    // Health checks: the monitor's targets belong to the owner.
    let (health_tx, mut health_rx) = watch::channel(Default::default());
    let monitor = HealthMonitor::start(health::targets_from_config(&cfg), health_tx);
    let health_stats = monitor.stats();
    owner.set_monitor(monitor);

    let (events, rx) = mpsc::channel::<Event>(EVENT_QUEUE);
    let owner_thread = std::thread::Builder::new()
        .name("steer-owner".into())
        .spawn(move || owner.run(rx))
        .context("starting the owner thread")?;

    {
        let events = events.clone();
        tokio::spawn(async move {
            while health_rx.changed().await.is_ok() {
                let status = health_rx.borrow_and_update().clone();
                if events.send(Event::Health(status)).await.is_err() {
                    break;
                }
            }
        });
    }

    // The measurement timer. A tick that finds the queue full is skipped
    // (the next one measures over the longer interval).
    {
        let events = events.clone();
        tokio::spawn(async move {
            let mut every = tokio::time::interval(measure::TICK);
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                every.tick().await;
                match events.try_send(Event::Tick) {
                    Ok(()) | Err(mpsc::error::TrySendError::Full(_)) => {}
                    Err(mpsc::error::TrySendError::Closed(_)) => break,
                }
            }
        });
    }

    // The external analysis of staged shifts.
    tokio::spawn(analysis::run(published.clone(), events.clone()));

    let view = View {
        published,
        counters: Arc::new(counters),
        health: health_stats,
    };
    let (shutdown_tx, mut shutdown_rx) = watch::channel::<Option<bool>>(None);

    // Control socket and metrics.
    let (stop_servers_tx, stop_servers_rx) = watch::channel(false);
    let control = {
        let path = cfg.control.socket.clone();
        let handler: Arc<dyn ControlHandler> = Arc::new(Handler {
            events: events.clone(),
            view: view.clone(),
            shutdown: shutdown_tx,
        });
        let rx = stop_servers_rx.clone();
        tokio::spawn(async move {
            if let Err(e) = control_listener.serve(handler, rx).await {
                error!(socket = %path.display(), error = %e, "control socket failed");
            }
        })
    };
    let metrics = {
        let view = view.clone();
        let source: Arc<dyn api::MetricsSource> = Arc::new(move || view.metrics());
        let addr = cfg.metrics.listen;
        let rx = stop_servers_rx.clone();
        tokio::spawn(async move {
            if let Err(e) = api::serve_metrics(metrics_listener, source, rx).await {
                error!(%addr, error = %e, "metrics endpoint failed");
            }
        })
    };

    // Ready: forwarding, and `steer reload` (systemd's ExecReload) can
    // reach the control socket.
    wait_for_control(&cfg.control.socket).await;
    notify::ready(view.published.borrow().generation);

    let on_signal = if detach_on_sigterm {
        "detaching XDP"
    } else {
        "XDP stays attached and keeps forwarding"
    };
    let detach = loop {
        tokio::select! {
            _ = hup.recv() => {
                info!("SIGHUP: reloading");
                let _ = events.send(Event::Reload { reply: None }).await;
            }
            _ = term.recv() => { info!("SIGTERM: stopping; {on_signal}"); break detach_on_sigterm; }
            _ = int.recv() => { info!("SIGINT: stopping; {on_signal}"); break detach_on_sigterm; }
            r = shutdown_rx.changed() => {
                if r.is_err() { break true; }
                if let Some(detach) = *shutdown_rx.borrow() { break detach; }
            }
        }
    };

    notify::stopping(!detach);

    let _ = stop_servers_tx.send(true);
    let _ = tokio::time::timeout(std::time::Duration::from_secs(6), control).await;
    let _ = tokio::time::timeout(std::time::Duration::from_secs(6), metrics).await;
    let _ = events.send(Event::Stop).await;
    let result = tokio::task::spawn_blocking(move || {
        owner_thread
            .join()
            .map_err(|_| "the owner thread panicked".to_string())
            .and_then(|owner| owner.finish(detach))
    })
    .await?;
    match result {
        Ok(ifaces) if detach => {
            info!(interfaces = ?ifaces, "detached and removed pinned state");
        }
        Ok(_) => info!("exited; XDP stays attached on the last programmed state"),
        Err(e) => bail!("cleaning up: {e}"),
    }
    // Held until the pins are gone, so no new instance starts on them
    // while this one removes them.
    drop(lock);
    Ok(())
}
