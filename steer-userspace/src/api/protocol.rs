//! Messages of the control protocol: they live in the `steer-api` crate (so
//! that tools can speak the protocol without the daemon) and are re-exported
//! here. The wire format is documented in [`steer_api::protocol`].

pub use steer_api::protocol::{
    Affinity, BackendStatus, Health, InterfaceStatus, RegionMeasure, RegionShare, Request,
    Response, ServiceStatus, ShiftReport, StatusReport, TableStatus, MAX_REQUEST_BYTES,
};

/// The status report's word for a service's configured affinity.
pub fn affinity(a: crate::config::Affinity) -> Affinity {
    match a {
        crate::config::Affinity::Flow => Affinity::Flow,
        crate::config::Affinity::Client => Affinity::Client,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_affinity_keeps_its_word() {
        // The status report says what the config said.
        for a in [
            crate::config::Affinity::Flow,
            crate::config::Affinity::Client,
        ] {
            assert_eq!(affinity(a).as_str(), a.as_str());
        }
    }
}
