//! Ctrl-C (and SIGTERM, SIGHUP) for the long-running tasks, `e2e` and the
//! lab demo: a handler installed with signal-hook only records which
//! signal came; the task's loops poll [`caught`] and stop, tearing down
//! what they built. Handlers, unlike a blocked signal mask, are not
//! inherited by the programs a task starts: exec resets them.
use std::sync::atomic::{AtomicUsize, Ordering};

use anyhow::{Context as _, Result};
pub use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};

/// The last signal caught, 0 if none.
static CAUGHT: AtomicUsize = AtomicUsize::new(0);

/// From now on, each of `signals` is recorded instead of acted on.
pub fn catch(signals: &[libc::c_int]) -> Result<()> {
    for &sig in signals {
        let value = usize::try_from(sig).context("a negative signal number")?;
        signal_hook::flag::register_usize(sig, &CAUGHT, value)
            .with_context(|| format!("installing a handler for signal {sig}"))?;
    }
    Ok(())
}

/// The last signal caught, if any.
pub fn caught() -> Option<libc::c_int> {
    match CAUGHT.load(Ordering::SeqCst) {
        0 => None,
        sig => libc::c_int::try_from(sig).ok(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_caught_signal_is_recorded_not_acted_on() {
        // SIGHUP would end the test process if the handler were missing.
        catch(&[SIGHUP]).unwrap();
        assert_eq!(caught(), None);
        // SAFETY: raise(3) sends the signal to this thread; the handler
        // registered above only stores to an atomic.
        assert_eq!(unsafe { libc::raise(SIGHUP) }, 0);
        assert_eq!(caught(), Some(SIGHUP));
    }
}
