//! Readiness and state notifications to systemd (`Type=notify`), through
//! the `sd-notify` crate. Without `$NOTIFY_SOCKET` (not started by systemd)
//! every call does nothing.

use sd_notify::NotifyState;
use tracing::warn;

fn send(states: &[NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(states) {
        // Not fatal: steer forwards all the same; systemd will time the
        // start out and say so.
        warn!(error = %e, "could not notify systemd through $NOTIFY_SOCKET");
    }
}

/// `READY=1`: the data plane is programmed and forwarding, and the control
/// socket answers. Also sent when a reload is over.
pub fn ready(generation: u64) {
    let status = format!("forwarding (config generation {generation})");
    send(&[NotifyState::Ready, NotifyState::Status(&status)]);
}

/// `RELOADING=1`, with the `MONOTONIC_USEC` systemd wants next to it.
pub fn reloading() {
    let mut states = vec![NotifyState::Reloading, NotifyState::Status("reloading")];
    if let Ok(t) = NotifyState::monotonic_usec_now() {
        states.push(t);
    }
    send(&states);
}

/// `STOPPING=1`.
pub fn stopping(keep_forwarding: bool) {
    send(&[
        NotifyState::Stopping,
        NotifyState::Status(if keep_forwarding {
            "stopping; XDP stays attached and keeps forwarding"
        } else {
            "stopping; detaching XDP"
        }),
    ]);
}
