//! `steer run`: the daemon. It owns the data plane on a dedicated thread (so
//! Maglev builds and map writes never run on the async workers), probes the
//! backends, serves the control socket and metrics, and reloads on SIGHUP.
//!
//! Data flows one way: config + health + operator drains → `policy` →
//! `dataplane`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Instant;

use anyhow::{anyhow, bail, Context as _, Result};
use steer_common::Counters;
use tokio::sync::watch;
use tracing::{error, info, warn};

use crate::api::{
    self, BackendStatus, ControlHandler, HandlerFuture, Request, Response, ServiceStatus,
    StatusReport,
};
use crate::config::{AttachMode, Config, Protocol};
use crate::dataplane::{Attached, Dataplane, Persist};
use crate::health::{self, HealthMonitor, TargetStatus};
use crate::policy::BackendState;

/// Options of `steer run` that override the config.
#[derive(Clone, Debug)]
pub struct RunOptions {
    pub config_path: PathBuf,
    pub interfaces: Vec<String>,
    pub mode: Option<AttachMode>,
}

/// Where the daemon keeps what survives a restart.
pub fn persist_for(cfg: &Config) -> Persist {
    let state_dir = cfg
        .control
        .socket
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("/run/steer"));
    Persist {
        pin_dir: cfg.dataplane.pin_path.clone(),
        state_file: state_dir.join("dataplane-state.json"),
    }
}

/// Counters read from the data plane for one status report.
#[derive(Default)]
struct Snapshot {
    services: BTreeMap<String, (Counters, BTreeMap<String, Counters>)>,
    drops: Vec<(&'static str, u64)>,
    /// `PATH_STATS[CT_INSERT_FAILED]`: new flows whose conntrack insert failed.
    ct_insert_failures: u64,
}

/// Work for the data-plane thread.
enum Job {
    Apply {
        cfg: Box<Config>,
        state: BackendState,
        reply: mpsc::Sender<Result<(), String>>,
    },
    Snapshot {
        cfg: Box<Config>,
        reply: mpsc::Sender<Snapshot>,
    },
    Exit {
        detach: bool,
        reply: mpsc::Sender<Result<Vec<String>, String>>,
    },
}

/// Handle to the data-plane thread.
#[derive(Clone)]
struct Programmer {
    tx: mpsc::Sender<Job>,
}

impl Programmer {
    /// Opens (or adopts) the data plane and attaches it, then serves jobs.
    fn start(
        cfg: &Config,
        interfaces: Vec<String>,
        mode: AttachMode,
    ) -> Result<(Programmer, BackendState)> {
        let persist = persist_for(cfg);
        let dp_cfg = cfg.dataplane.clone();
        let (tx, rx) = mpsc::channel::<Job>();
        let (ready_tx, ready_rx) = mpsc::channel::<Result<BackendState, String>>();
        std::thread::Builder::new()
            .name("steer-dataplane".into())
            .spawn(move || {
                let mut dp = match open_and_attach(&dp_cfg, persist.clone(), &interfaces, mode) {
                    Ok(dp) => {
                        let _ = ready_tx.send(Ok(dp.backend_state().clone()));
                        dp
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(format!("{e:#}")));
                        return;
                    }
                };
                serve_jobs(&mut dp, rx, &persist);
            })
            .context("starting the data-plane thread")?;
        let state = ready_rx
            .recv()
            .map_err(|_| anyhow!("the data-plane thread died while starting"))?
            .map_err(|e| anyhow!(e))?;
        Ok((Programmer { tx }, state))
    }

    fn apply(&self, cfg: &Config, state: BackendState) -> Result<(), String> {
        let (reply, rx) = mpsc::channel();
        self.tx
            .send(Job::Apply {
                cfg: Box::new(cfg.clone()),
                state,
                reply,
            })
            .map_err(|_| "the data-plane thread is gone".to_string())?;
        rx.recv()
            .map_err(|_| "the data-plane thread is gone".to_string())?
    }

    fn snapshot(&self, cfg: &Config) -> Snapshot {
        let (reply, rx) = mpsc::channel();
        if self
            .tx
            .send(Job::Snapshot {
                cfg: Box::new(cfg.clone()),
                reply,
            })
            .is_err()
        {
            return Snapshot::default();
        }
        rx.recv().unwrap_or_default()
    }

    fn exit(&self, detach: bool) -> Result<Vec<String>, String> {
        let (reply, rx) = mpsc::channel();
        self.tx
            .send(Job::Exit { detach, reply })
            .map_err(|_| "the data-plane thread is gone".to_string())?;
        rx.recv()
            .map_err(|_| "the data-plane thread is gone".to_string())?
    }
}

fn open_and_attach(
    cfg: &crate::config::DataplaneConfig,
    persist: Persist,
    interfaces: &[String],
    mode: AttachMode,
) -> Result<Dataplane> {
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
    for iface in interfaces {
        match dp.attach(iface, mode)? {
            Attached::New(m) => info!(iface, mode = m, "attached XDP"),
            Attached::Replaced => {
                info!(
                    iface,
                    "took over the pinned XDP link: program replaced atomically"
                )
            }
            Attached::FellBack { driver_error } => warn!(
                iface,
                %driver_error,
                "driver-mode XDP failed; attached in generic (skb) mode instead (mode = \"auto\")"
            ),
        }
    }
    Ok(dp)
}

fn serve_jobs(dp: &mut Dataplane, rx: mpsc::Receiver<Job>, persist: &Persist) {
    while let Ok(job) = rx.recv() {
        match job {
            Job::Apply { cfg, state, reply } => {
                let started = Instant::now();
                let r = dp.apply_state(&cfg, state).map_err(|e| format!("{e:#}"));
                if r.is_ok() {
                    info!(
                        elapsed_ms = started.elapsed().as_secs_f64() * 1000.0,
                        "data plane programmed"
                    );
                }
                let _ = reply.send(r);
            }
            Job::Snapshot { cfg, reply } => {
                let mut snap = Snapshot::default();
                for svc in &cfg.services {
                    let total = dp.service_counters(&svc.name).unwrap_or_default();
                    let per_backend = cfg
                        .service_backends(svc)
                        .iter()
                        .map(|b| {
                            (
                                b.name.clone(),
                                dp.backend_counters(&svc.name, &b.name).unwrap_or_default(),
                            )
                        })
                        .collect();
                    snap.services.insert(svc.name.clone(), (total, per_backend));
                }
                if let Ok(d) = dp.drop_counts() {
                    snap.drops = steer_common::DropReason::ALL
                        .iter()
                        .map(|r| (r.name(), d[*r as usize]))
                        .collect();
                }
                if let Ok(p) = dp.path_counts() {
                    snap.ct_insert_failures = p[steer_common::Branch::CtInsertFailed as usize];
                }
                let _ = reply.send(snap);
            }
            Job::Exit { detach, reply } => {
                let r = if detach {
                    Dataplane::remove_pins(persist).map_err(|e| format!("{e:#}"))
                } else {
                    Ok(Vec::new())
                };
                let _ = reply.send(r);
                return;
            }
        }
    }
}

/// Daemon state shared by the control handler, the health watcher and the
/// signal handlers.
struct Daemon {
    config_path: PathBuf,
    programmer: Programmer,
    inner: Mutex<Inner>,
    monitor: Mutex<Option<HealthMonitor>>,
    shutdown: watch::Sender<Option<bool>>,
}

struct Inner {
    cfg: Config,
    health: BTreeMap<String, TargetStatus>,
    drained: BTreeSet<String>,
    /// The down set last programmed.
    down: BTreeSet<String>,
    generation: u64,
    reloads: u64,
    reload_failures: u64,
    last_reload_error: Option<String>,
}

impl Inner {
    fn down_set(&self) -> BTreeSet<String> {
        self.cfg
            .backends
            .iter()
            .filter(|b| !health::backend_up(&self.health, &b.name))
            .map(|b| b.name.clone())
            .collect()
    }

    fn backend_state(&self) -> BackendState {
        BackendState {
            down: self.down_set(),
            drained: self.drained.clone(),
        }
    }
}

impl Daemon {
    /// Re-programs the data plane from the current config, health and
    /// drains (on the data-plane thread).
    fn program(&self) -> Result<(), String> {
        let (cfg, state) = {
            let inner = self.inner.lock().expect("daemon state poisoned");
            (inner.cfg.clone(), inner.backend_state())
        };
        let down = state.down.clone();
        self.programmer.apply(&cfg, state)?;
        self.inner.lock().expect("daemon state poisoned").down = down;
        Ok(())
    }

    fn on_health(&self, status: BTreeMap<String, TargetStatus>) {
        let changed = {
            let mut inner = self.inner.lock().expect("daemon state poisoned");
            inner.health = status;
            inner.down_set() != inner.down
        };
        if changed {
            if let Err(e) = self.program() {
                error!(error = %e, "programming the data plane after a health change failed");
            }
        }
    }

    /// Re-reads the config. An invalid config is rejected and the running
    /// one keeps serving.
    fn reload(&self) -> Response {
        let new = match Config::load(&self.config_path) {
            Ok(c) => c,
            Err(errs) => {
                let details: Vec<String> = errs.0.iter().map(|e| e.to_string()).collect();
                for d in &details {
                    error!(error = %d, "reload rejected: config error");
                }
                let msg = format!(
                    "{} has {} error(s); the running config keeps serving",
                    self.config_path.display(),
                    details.len()
                );
                self.reload_failed(&msg);
                return Response::Error {
                    message: msg,
                    details,
                };
            }
        };
        let old = self
            .inner
            .lock()
            .expect("daemon state poisoned")
            .cfg
            .clone();
        if new.dataplane != old.dataplane {
            let d = diff_dataplane(&old, &new);
            if !d.is_empty() {
                let msg = format!(
                    "these [dataplane] settings cannot change on reload: {} (restart steer to change them)",
                    d.join(", ")
                );
                error!(error = %msg, "reload rejected");
                self.reload_failed(&msg);
                return Response::Error {
                    message: msg,
                    details: Vec::new(),
                };
            }
        }
        // Probe the new targets (state of unchanged ones is kept).
        if let Some(m) = self.monitor.lock().expect("monitor poisoned").as_mut() {
            m.set_targets(health::targets_from_config(&new));
        }
        let previous = {
            let mut inner = self.inner.lock().expect("daemon state poisoned");
            inner.drained.retain(|b| new.backend(b).is_some());
            std::mem::replace(&mut inner.cfg, new)
        };
        match self.program() {
            Ok(()) => {
                let mut inner = self.inner.lock().expect("daemon state poisoned");
                inner.reloads += 1;
                inner.generation += 1;
                inner.last_reload_error = None;
                info!(
                    generation = inner.generation,
                    "reloaded {}",
                    self.config_path.display()
                );
                Response::Ok {
                    message: format!(
                        "reloaded {} (generation {})",
                        self.config_path.display(),
                        inner.generation
                    ),
                }
            }
            Err(e) => {
                self.inner.lock().expect("daemon state poisoned").cfg = previous;
                let _ = self.program();
                let msg = format!("applying the new config failed, kept the old one: {e}");
                error!(error = %msg, "reload failed");
                self.reload_failed(&msg);
                Response::Error {
                    message: msg,
                    details: Vec::new(),
                }
            }
        }
    }

    fn reload_failed(&self, msg: &str) {
        let mut inner = self.inner.lock().expect("daemon state poisoned");
        inner.reload_failures += 1;
        inner.last_reload_error = Some(msg.to_string());
    }

    fn drain(&self, backend: &str, undo: bool) -> Response {
        {
            let mut inner = self.inner.lock().expect("daemon state poisoned");
            if inner.cfg.backend(backend).is_none() {
                let known: Vec<&str> = inner.cfg.backends.iter().map(|b| b.name.as_str()).collect();
                return Response::Error {
                    message: format!(
                        "unknown backend {backend:?} (backends: {})",
                        known.join(", ")
                    ),
                    details: Vec::new(),
                };
            }
            if undo {
                inner.drained.remove(backend);
            } else {
                inner.drained.insert(backend.to_string());
            }
        }
        match self.program() {
            Ok(()) => {
                let what = if undo {
                    "undrained: receives new flows again"
                } else {
                    "drained: no new flows; established flows continue"
                };
                info!(backend, undo, "drain changed");
                Response::Ok {
                    message: format!("{backend} {what}"),
                }
            }
            Err(e) => Response::Error {
                message: format!("programming the data plane failed: {e}"),
                details: Vec::new(),
            },
        }
    }

    /// The status report, the drop counters and the conntrack insert
    /// failures.
    fn status(&self) -> (StatusReport, Vec<(&'static str, u64)>, u64) {
        let (cfg, health, drained, down, gen, reloads, fails, last) = {
            let i = self.inner.lock().expect("daemon state poisoned");
            (
                i.cfg.clone(),
                i.health.clone(),
                i.drained.clone(),
                i.down.clone(),
                i.generation,
                i.reloads,
                i.reload_failures,
                i.last_reload_error.clone(),
            )
        };
        let snap = self.programmer.snapshot(&cfg);
        let has_check: BTreeSet<String> = health::targets_from_config(&cfg)
            .into_iter()
            .map(|t| t.key.split('/').next().unwrap_or_default().to_string())
            .collect();
        let services = cfg
            .services
            .iter()
            .map(|svc| {
                let (total, per) = snap.services.get(&svc.name).cloned().unwrap_or_default();
                let proto = match svc.protocol {
                    Protocol::Tcp => "tcp",
                    Protocol::Udp => "udp",
                };
                let vip = match svc.vip {
                    std::net::IpAddr::V6(a) => format!("[{a}]:{}/{proto}", svc.port),
                    a => format!("{a}:{}/{proto}", svc.port),
                };
                ServiceStatus {
                    name: svc.name.clone(),
                    vip,
                    affinity: svc.affinity.as_str().to_string(),
                    packets: total.packets,
                    bytes: total.bytes,
                    new_flows: total.new_flows,
                    backends: cfg
                        .service_backends(svc)
                        .iter()
                        .map(|b| {
                            let c = per.get(&b.name).copied().unwrap_or_default();
                            let st = health.get(&b.name);
                            let is_down = down.contains(&b.name);
                            let health_word = if !has_check.contains(&b.name) {
                                api::protocol::HEALTH_UNCHECKED
                            } else if is_down {
                                api::protocol::HEALTH_DOWN
                            } else if st.is_some_and(|s| s.degraded) {
                                api::protocol::HEALTH_DEGRADED
                            } else {
                                api::protocol::HEALTH_UP
                            };
                            let is_drained = drained.contains(&b.name);
                            BackendStatus {
                                name: b.name.clone(),
                                address: b.address.to_string(),
                                region: b.region.clone(),
                                weight: b.weight,
                                effective_weight: if is_down || is_drained { 0 } else { b.weight },
                                health: health_word.to_string(),
                                drained: is_drained,
                                last_failure: health
                                    .iter()
                                    .filter(|(k, _)| {
                                        k.as_str() == b.name
                                            || k.starts_with(&format!("{}/", b.name))
                                    })
                                    .find_map(|(_, s)| s.last_failure.clone()),
                                packets: c.packets,
                                bytes: c.bytes,
                                new_flows: c.new_flows,
                            }
                        })
                        .collect(),
                }
            })
            .collect();
        (
            StatusReport {
                generation: gen,
                config_path: self.config_path.display().to_string(),
                reloads,
                reload_failures: fails,
                last_reload_error: last,
                services,
            },
            snap.drops,
            snap.ct_insert_failures,
        )
    }

    fn metrics(&self) -> String {
        let (report, drops, ct_insert_failures) = self.status();
        let hist = self
            .monitor
            .lock()
            .expect("monitor poisoned")
            .as_ref()
            .map(|m| m.latency_histogram());
        api::render_metrics(
            &report,
            &drops,
            ct_insert_failures,
            hist.as_ref()
                .map(|h| (h.buckets.as_slice(), h.sum, h.count)),
        )
    }
}

/// Names of `[dataplane]` settings that differ and need a restart.
fn diff_dataplane(old: &Config, new: &Config) -> Vec<&'static str> {
    let (a, b) = (&old.dataplane, &new.dataplane);
    let mut d = Vec::new();
    if a.interfaces != b.interfaces {
        d.push("interfaces");
    }
    if a.mode != b.mode {
        d.push("mode");
    }
    if a.conntrack_size != b.conntrack_size {
        d.push("conntrack_size");
    }
    if a.maglev_table_size != b.maglev_table_size {
        d.push("maglev_table_size");
    }
    if a.max_tables != b.max_tables {
        d.push("max_tables");
    }
    if a.max_reals != b.max_reals {
        d.push("max_reals");
    }
    if a.pin_path != b.pin_path {
        d.push("pin_path");
    }
    if old.control != new.control {
        d.push("control.socket");
    }
    if old.metrics != new.metrics {
        d.push("metrics.listen");
    }
    d
}

struct Handler(Arc<Daemon>);

impl ControlHandler for Handler {
    fn handle(&self, req: Request) -> HandlerFuture<'_> {
        let d = self.0.clone();
        Box::pin(async move {
            let work = tokio::task::spawn_blocking(move || match req {
                Request::Status => Response::Status(d.status().0),
                Request::Reload => d.reload(),
                Request::Drain { backend, undo } => d.drain(&backend, undo),
                Request::Stop { detach } => {
                    let _ = d.shutdown.send(Some(detach));
                    Response::Ok {
                        message: if detach {
                            "stopping: detaching XDP and removing pinned state".into()
                        } else {
                            "stopping: XDP stays attached and keeps forwarding on the last programmed state".into()
                        },
                    }
                }
            });
            work.await.unwrap_or_else(|e| Response::Error {
                message: format!("internal error: {e}"),
                details: Vec::new(),
            })
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
    rt.block_on(run_async(opts.config_path, cfg, interfaces, mode))
}

async fn run_async(
    config_path: PathBuf,
    cfg: Config,
    interfaces: Vec<String>,
    mode: AttachMode,
) -> Result<()> {
    let (programmer, adopted_state) = {
        let cfg = cfg.clone();
        tokio::task::spawn_blocking(move || Programmer::start(&cfg, interfaces, mode))
            .await
            .context("data-plane start")??
    };
    let (shutdown_tx, mut shutdown_rx) = watch::channel::<Option<bool>>(None);
    let daemon = Arc::new(Daemon {
        config_path: config_path.clone(),
        programmer: programmer.clone(),
        inner: Mutex::new(Inner {
            cfg: cfg.clone(),
            health: BTreeMap::new(),
            drained: adopted_state
                .drained
                .into_iter()
                .filter(|b| cfg.backend(b).is_some())
                .collect(),
            down: BTreeSet::new(),
            generation: 1,
            reloads: 0,
            reload_failures: 0,
            last_reload_error: None,
        }),
        monitor: Mutex::new(None),
        shutdown: shutdown_tx,
    });
    {
        let d = daemon.clone();
        tokio::task::spawn_blocking(move || d.program())
            .await?
            .map_err(|e| anyhow!("programming the data plane: {e}"))?;
    }
    info!(config = %config_path.display(), "steer is forwarding");

    // Health checks.
    let (health_tx, mut health_rx) = watch::channel(BTreeMap::new());
    *daemon.monitor.lock().expect("monitor poisoned") = Some(HealthMonitor::start(
        health::targets_from_config(&cfg),
        health_tx,
    ));
    {
        let d = daemon.clone();
        tokio::spawn(async move {
            while health_rx.changed().await.is_ok() {
                let status = health_rx.borrow_and_update().clone();
                let d = d.clone();
                let _ = tokio::task::spawn_blocking(move || d.on_health(status)).await;
            }
        });
    }

    // Control socket and metrics.
    let (stop_servers_tx, stop_servers_rx) = watch::channel(false);
    let control = {
        let path = cfg.control.socket.clone();
        let handler: Arc<dyn ControlHandler> = Arc::new(Handler(daemon.clone()));
        let rx = stop_servers_rx.clone();
        tokio::spawn(async move {
            if let Err(e) = api::serve_control(&path, handler, rx).await {
                error!(socket = %path.display(), error = %e, "control socket failed");
            }
        })
    };
    let metrics = {
        let d = daemon.clone();
        let source: Arc<dyn api::MetricsSource> = Arc::new(move || d.metrics());
        let addr = cfg.metrics.listen;
        let rx = stop_servers_rx.clone();
        tokio::spawn(async move {
            if let Err(e) = api::serve_metrics(addr, source, rx).await {
                error!(%addr, error = %e, "metrics endpoint failed");
            }
        })
    };

    // Signals.
    use tokio::signal::unix::{signal, SignalKind};
    let mut hup = signal(SignalKind::hangup()).context("SIGHUP handler")?;
    let mut term = signal(SignalKind::terminate()).context("SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("SIGINT handler")?;
    let detach = loop {
        tokio::select! {
            _ = hup.recv() => {
                info!("SIGHUP: reloading");
                let d = daemon.clone();
                let _ = tokio::task::spawn_blocking(move || d.reload()).await;
            }
            _ = term.recv() => { info!("SIGTERM: stopping"); break true; }
            _ = int.recv() => { info!("SIGINT: stopping"); break true; }
            r = shutdown_rx.changed() => {
                if r.is_err() { break true; }
                if let Some(detach) = *shutdown_rx.borrow() { break detach; }
            }
        }
    };

    if let Some(m) = daemon.monitor.lock().expect("monitor poisoned").take() {
        m.stop();
    }
    let _ = stop_servers_tx.send(true);
    let _ = tokio::time::timeout(std::time::Duration::from_secs(6), control).await;
    let _ = tokio::time::timeout(std::time::Duration::from_secs(6), metrics).await;
    let result = tokio::task::spawn_blocking(move || programmer.exit(detach)).await?;
    match result {
        Ok(ifaces) if detach => {
            info!(interfaces = ?ifaces, "detached and removed pinned state");
        }
        Ok(_) => info!("exited; XDP stays attached on the last programmed state"),
        Err(e) => bail!("cleaning up: {e}"),
    }
    Ok(())
}
