//! The steer daemon under test: `steer run` in the edge namespace with its
//! stderr in a log file, the CLI (`reload`, `status --json`, `drain`,
//! `stop`) run in the same namespace, and its metrics.
use std::{
    collections::BTreeMap,
    fs::{self, OpenOptions},
    path::{Path, PathBuf},
    process::{Child, Output, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{anyhow, bail, Context as _, Result};
use serde_json::Value;
use steer_api::{BackendStatus, ServiceStatus, StatusReport};

use super::Ctx;
use crate::lab::{self, topo};

/// `control.socket` in examples/lab.toml (kept by every scenario config).
pub const CONTROL_SOCKET: &str = "/run/steer-lab/steer/control.sock";
/// `metrics.listen` in examples/lab.toml, inside the edge namespace.
pub const METRICS: &str = "127.0.0.1:9477";
/// How long `steer run` may take to say it is forwarding.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long any CLI command may take.
const CLI_TIMEOUT: Duration = Duration::from_secs(20);

pub struct Steer<'a> {
    ctx: &'a Ctx<'a>,
    child: Option<Child>,
    pub config: PathBuf,
    pub log: PathBuf,
    /// Where this run's part of the log starts.
    log_from: usize,
}

/// The last `n` lines of `text`.
pub fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

impl<'a> Steer<'a> {
    /// `steer run --config CONFIG` in the edge namespace; returns once the
    /// log says `steer is forwarding` and the control socket answers.
    pub fn start(ctx: &'a Ctx<'a>, config: &Path) -> Result<Steer<'a>> {
        let log = ctx.file("steer.log");
        let mut s = Steer {
            ctx,
            child: None,
            config: config.to_path_buf(),
            log,
            log_from: 0,
        };
        s.spawn()?;
        Ok(s)
    }

    /// Starts the daemon again (after [`Steer::kill9`]); its log goes on in
    /// the same file.
    pub fn restart(&mut self) -> Result<Duration> {
        if self.child.is_some() {
            bail!("steer is still running");
        }
        let t = Instant::now();
        self.spawn()?;
        Ok(t.elapsed())
    }

    fn spawn(&mut self) -> Result<()> {
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .with_context(|| format!("opening {}", self.log.display()))?;
        self.log_from = fs::metadata(&self.log).map_or(0, |m| m.len() as usize);
        let mut cmd = self
            .ctx
            .lab
            .steer_command(self.ctx.steer_bin, &self.config)?;
        cmd.env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file);
        let child = cmd.spawn().context("starting steer run")?;
        self.child = Some(child);
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if self.this_run_log().contains("steer is forwarding") {
                break;
            }
            if let Some(c) = self.child.as_mut() {
                if let Some(status) = c.try_wait()? {
                    self.child = None;
                    bail!(
                        "steer run exited ({status}) before forwarding:\n{}",
                        tail(&self.this_run_log(), 30)
                    );
                }
            }
            if Instant::now() > deadline {
                bail!(
                    "steer run did not say `steer is forwarding` within {START_TIMEOUT:?}:\n{}",
                    tail(&self.this_run_log(), 30)
                );
            }
            thread::sleep(Duration::from_millis(20));
        }
        // The control socket comes up right after.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match self.status() {
                Ok(_) => return Ok(()),
                Err(e) if Instant::now() > deadline => {
                    return Err(e.context("steer's control socket does not answer"))
                }
                Err(_) => thread::sleep(Duration::from_millis(50)),
            }
        }
    }

    /// The whole log file (every run of this scenario).
    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The log since the latest start.
    pub fn this_run_log(&self) -> String {
        let text = self.log_text();
        text.get(self.log_from..).unwrap_or("").to_owned()
    }

    /// Whether the daemon process still runs.
    pub fn running(&mut self) -> bool {
        match self.child.as_mut().map(Child::try_wait) {
            Some(Ok(None)) => true,
            Some(_) => {
                self.child = None;
                false
            }
            None => false,
        }
    }

    /// `steer ARGS... --socket CONTROL_SOCKET` in the edge namespace.
    /// (`--socket`, not `--config`: the CLI would load and validate the
    /// config file just to find the socket, and fail while it is invalid.)
    pub fn cli(&self, args: &[&str]) -> Result<Output> {
        self.cli_raw(args, &["--socket", CONTROL_SOCKET])
    }

    /// `steer ARGS... TARGET...` in the edge namespace.
    pub fn cli_raw(&self, args: &[&str], target: &[&str]) -> Result<Output> {
        let a: Vec<&str> = args.iter().chain(target).copied().collect();
        lab::run_in(
            topo::NS_EDGE,
            &self.ctx.steer_bin.to_string_lossy(),
            &a,
            CLI_TIMEOUT,
        )
    }

    /// Sends `sig` to the daemon.
    pub fn signal(&self, sig: libc::c_int) -> Result<()> {
        let pid = self
            .child
            .as_ref()
            .and_then(|c| i32::try_from(c.id()).ok())
            .ok_or_else(|| anyhow!("steer is not running"))?;
        // SAFETY: kill(2) on our own child's pid.
        if unsafe { libc::kill(pid, sig) } != 0 {
            return Err(std::io::Error::last_os_error()).context("kill");
        }
        Ok(())
    }

    /// A CLI command that must succeed; its stdout.
    pub fn cli_ok(&self, args: &[&str]) -> Result<String> {
        let out = self.cli(args)?;
        if !out.status.success() {
            bail!(
                "`steer {}` failed ({}): {}{}",
                args.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    pub fn reload(&self) -> Result<String> {
        self.cli_ok(&["reload"])
    }

    pub fn status(&self) -> Result<StatusReport> {
        let text = self.cli_ok(&["status", "--json"])?;
        serde_json::from_str(&text).context("parsing `steer status --json`")
    }

    /// Metrics from `metrics.listen` in the edge namespace: `name{labels}`
    /// → value.
    pub fn metrics(&self) -> Result<BTreeMap<String, f64>> {
        let out = lab::run_in(
            topo::NS_EDGE,
            &self.ctx.lab.backend_bin().to_string_lossy(),
            [
                "get",
                "--to",
                METRICS,
                "--path",
                "/metrics",
                "--timeout-ms",
                "3000",
            ],
            Duration::from_secs(10),
        )?;
        if !out.status.success() {
            bail!(
                "GET http://{METRICS}/metrics failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        let text = String::from_utf8_lossy(&out.stdout);
        let mut m = BTreeMap::new();
        for line in text.lines().filter(|l| l.starts_with("steer_")) {
            if let Some((k, v)) = line.rsplit_once(' ') {
                if let Ok(v) = v.parse::<f64>() {
                    m.insert(k.to_owned(), v);
                }
            }
        }
        if m.is_empty() {
            bail!("no steer_ metrics in the answer:\n{}", tail(&text, 10));
        }
        Ok(m)
    }

    /// SIGKILL: the daemon dies without detaching anything.
    pub fn kill9(&mut self) -> Result<()> {
        let mut c = self
            .child
            .take()
            .ok_or_else(|| anyhow!("steer is not running"))?;
        c.kill().context("SIGKILL to steer")?;
        let status = c.wait()?;
        self.ctx
            .say(format!("steer (pid {}) killed: {status}", c.id()));
        Ok(())
    }

    /// `steer stop` (detaches XDP, removes the pins), waits for the daemon
    /// to exit, and checks that nothing of it is left.
    pub fn stop(mut self) -> Result<()> {
        let mut c = self
            .child
            .take()
            .ok_or_else(|| anyhow!("steer is not running"))?;
        let out = self.cli(&["stop"]);
        let deadline = Instant::now() + Duration::from_secs(15);
        let status = loop {
            if let Some(s) = c.try_wait()? {
                break Some(s);
            }
            if Instant::now() > deadline {
                break None;
            }
            thread::sleep(Duration::from_millis(20));
        };
        let Some(status) = status else {
            let _ = c.kill();
            let _ = c.wait();
            bail!(
                "steer did not exit within 15 s of `steer stop` ({:?}); killed it",
                out.map(|o| o.status)
            );
        };
        let out = out?;
        if !out.status.success() {
            bail!(
                "`steer stop` failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        if !status.success() {
            bail!(
                "steer exited with {status} after `steer stop`:\n{}",
                tail(&self.this_run_log(), 20)
            );
        }
        let mut left = Vec::new();
        if lab::xdp_on_edge().is_some() {
            left.push(format!("an XDP program on {}", topo::EDGE_IF));
        }
        if fs::read_dir(lab::PIN_DIR).is_ok_and(|mut d| d.next().is_some()) {
            left.push(format!("pins in {}", lab::PIN_DIR));
        }
        if Path::new(CONTROL_SOCKET).exists() {
            left.push(format!("the control socket {CONTROL_SOCKET}"));
        }
        if !left.is_empty() {
            bail!("after `steer stop`: {}", left.join(", "));
        }
        Ok(())
    }
}

impl Drop for Steer<'_> {
    /// A scenario that failed half-way: SIGTERM (steer detaches and removes
    /// its pins), SIGKILL if that does not work; the harness then checks
    /// for leftovers and removes them.
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            if let Ok(pid) = i32::try_from(c.id()) {
                lab::sys::terminate(&[pid], Duration::from_secs(5));
            }
            let _ = c.wait();
        }
    }
}

/// One backend's state from its control endpoint (health, counters).
pub fn backend_state(ctx: &Ctx, name: &str) -> Result<Value> {
    ctx.lab.control(name, "state")
}

/// A service of a status report by name.
pub fn service<'r>(status: &'r StatusReport, name: &str) -> Result<&'r ServiceStatus> {
    status
        .services
        .iter()
        .find(|s| s.name == name)
        .ok_or_else(|| anyhow!("`steer status` has no service {name}"))
}

/// A backend of a service of a status report.
pub fn status_backend<'r>(
    status: &'r StatusReport,
    svc: &str,
    backend: &str,
) -> Result<&'r BackendStatus> {
    service(status, svc)?
        .backends
        .iter()
        .find(|b| b.name == backend)
        .ok_or_else(|| anyhow!("`steer status`: service {svc} has no backend {backend}"))
}

/// Per backend of a service: new flows counted by steer.
pub fn new_flows(status: &StatusReport, svc: &str) -> Result<BTreeMap<String, u64>> {
    Ok(service(status, svc)?
        .backends
        .iter()
        .map(|b| (b.name.clone(), b.new_flows))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use steer_api::Health;

    /// What `steer status --json` prints (written by hand, in the
    /// documented wire words).
    const STATUS: &str = r#"{
      "generation": 3, "config_path": "/tmp/lab.toml", "reloads": 1,
      "reload_failures": 0, "last_reload_error": null,
      "services": [
        {"name": "web", "vip": "203.0.113.10:80/tcp", "affinity": "flow",
         "packets": 10, "bytes": 1000, "new_flows": 3,
         "backends": [
           {"name": "eu1", "address": "10.0.1.1", "region": "eu", "weight": 100,
            "effective_weight": 100, "health": "up", "drained": false,
            "last_failure": null, "packets": 6, "bytes": 600, "new_flows": 2},
           {"name": "us1", "address": "10.0.2.1", "region": "us", "weight": 100,
            "effective_weight": 0, "health": "down", "drained": true,
            "last_failure": "connection refused", "packets": 4, "bytes": 400,
            "new_flows": 1}]},
        {"name": "echo", "vip": "203.0.113.10:7/udp", "affinity": "client",
         "backends": []}]
    }"#;

    #[test]
    fn reads_steer_status() {
        let st: StatusReport = serde_json::from_str(STATUS).unwrap();
        assert_eq!(st.reloads, 1);
        let us1 = status_backend(&st, "web", "us1").unwrap();
        assert_eq!(us1.health, Health::Down);
        assert!(us1.drained);
        assert_eq!(us1.last_failure.as_deref(), Some("connection refused"));
        assert_eq!(
            new_flows(&st, "web").unwrap(),
            BTreeMap::from([("eu1".to_owned(), 2), ("us1".to_owned(), 1)])
        );
        assert!(new_flows(&st, "echo").unwrap().is_empty());
        assert_eq!(
            service(&st, "dns").unwrap_err().to_string(),
            "`steer status` has no service dns"
        );
        assert_eq!(
            status_backend(&st, "echo", "eu1").unwrap_err().to_string(),
            "`steer status`: service echo has no backend eu1"
        );
    }
}
