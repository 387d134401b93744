//! `steer stop`: stop the daemon, or clean up after a killed one.

use std::process::ExitCode;

use anyhow::{bail, Result};
use steer::api::{self, ClientError, Request, Response};
use steer::dataplane::{Dataplane, InstanceLock};

use super::{load_config, outln, print_response, Target};

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    target: Target,
    /// Detach and remove pins even if no daemon is running (needs
    /// --config to know the interfaces and the pin directory). Only when
    /// there is no control socket, or nothing listens on it: a daemon that
    /// does not answer is left alone, and nothing is removed.
    #[arg(long, conflicts_with = "keep_forwarding")]
    detach: bool,
    /// Exit but leave XDP attached, forwarding on the last programmed
    /// state (for upgrades: the next `steer run` adopts it).
    #[arg(long)]
    keep_forwarding: bool,
}

pub fn run(args: Args) -> Result<ExitCode> {
    let Args {
        target,
        detach,
        keep_forwarding,
    } = args;
    let socket = target.socket()?;
    let req = Request::Stop {
        detach: !keep_forwarding,
    };
    match api::request(&socket, &req) {
        Ok(resp) => {
            let stopping = matches!(resp, Response::Ok { .. });
            let code = print_response(resp, false);
            // Wait (bounded) for the daemon to finish and remove its socket.
            for _ in 0..100 {
                if !stopping || !socket.exists() {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
            code
        }
        // Only a socket that is absent or that nobody listens on means no
        // daemon: clean up what a killed one left behind.
        Err(e @ (ClientError::NotRunning { .. } | ClientError::Stale { .. })) if detach => {
            let Some(config) = &target.config else {
                bail!("{e}; to clean up pinned state without a daemon, pass --config FILE");
            };
            let cfg = load_config(config)?;
            let persist = steer::daemon::persist_for(&cfg);
            // A daemon whose socket is gone still holds the lock: then
            // this must not pull its pins away.
            let _lock = if persist.pin_dir.exists() {
                Some(InstanceLock::acquire(&persist)?)
            } else {
                None
            };
            let r = Dataplane::remove_pins_report(&persist)?;
            if !r.detached.is_empty() {
                outln!(
                    "no daemon running; detached from {} and removed steer's pins from {}",
                    r.detached.join(", "),
                    persist.pin_dir.display()
                )?;
            } else if !r.removed.is_empty() {
                outln!(
                    "no daemon running; removed steer's pins from {}",
                    persist.pin_dir.display()
                )?;
            } else {
                outln!(
                    "no daemon running and nothing pinned under {}",
                    persist.pin_dir.display()
                )?;
            }
            for (name, why) in &r.left {
                outln!("left {}: {why}", persist.pin_dir.join(name).display())?;
            }
            Ok(ExitCode::SUCCESS)
        }
        // A daemon that does not answer may still be running (stopped,
        // stuck, busy): its pins are not ours to remove.
        Err(e @ ClientError::Timeout { .. }) if detach => bail!(
            "{e}: a daemon may still be running there (stopped with SIGSTOP, or stuck), so \
             nothing was removed; find it (`pgrep -a steer`), then let it finish, or kill it \
             and run `steer stop --detach --config FILE` again"
        ),
        Err(e) if detach => bail!("{e}; nothing was removed"),
        Err(e) => Err(e.into()),
    }
}
