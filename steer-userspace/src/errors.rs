//! Error messages for people: an error and its causes on one line.

use std::error::Error;

/// `err` and its sources as `outer: inner: innermost`, like anyhow's
/// `{:#}`, except that a source whose text the message before it already
/// contains is left out.
///
/// Many errors (ours built with thiserror's `{source}`, and some of the
/// libraries') both print their source in their own message and return it
/// from [`Error::source`]; printing the whole chain would then say
/// "Permission denied (os error 13): Permission denied (os error 13)".
pub fn chain(err: &(dyn Error + 'static)) -> String {
    let mut out = err.to_string();
    // The text a source is compared with: the last message printed.
    let mut last = out.clone();
    let mut next = err.source();
    while let Some(e) = next {
        let msg = e.to_string();
        if !msg.is_empty() && !last.contains(&msg) {
            out.push_str(": ");
            out.push_str(&msg);
            last = msg;
        }
        next = e.source();
    }
    out
}

/// [`chain`] of an `anyhow::Error` (its contexts included).
pub fn chain_anyhow(err: &anyhow::Error) -> String {
    let e: &(dyn Error + Send + Sync + 'static) = err.as_ref();
    chain(e)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("create {what}: {source}")]
    struct ShowsSource {
        what: &'static str,
        #[source]
        source: std::io::Error,
    }

    #[derive(Debug, thiserror::Error)]
    #[error("reading the capture")]
    struct HidesSource(#[source] std::io::Error);

    #[test]
    fn a_source_shown_by_its_wrapper_is_not_repeated() {
        let e = anyhow::Error::new(ShowsSource {
            what: "/sys/fs/bpf/steer",
            source: std::io::Error::from_raw_os_error(libc::EACCES),
        })
        .context("opening the data plane");
        assert_eq!(
            chain_anyhow(&e),
            "opening the data plane: create /sys/fs/bpf/steer: Permission denied (os error 13)"
        );
    }

    #[test]
    fn a_source_not_shown_by_its_wrapper_is_printed() {
        let e = anyhow::Error::new(HidesSource(std::io::Error::from_raw_os_error(libc::EISDIR)))
            .context("/tmp/x is not a usable capture");
        assert_eq!(
            chain_anyhow(&e),
            "/tmp/x is not a usable capture: reading the capture: Is a directory (os error 21)"
        );
    }
}
