//! steer's userspace: configuration, policy, health checking and the data
//! plane loader. The `steer` binary is a thin CLI over this library.

pub mod api;
/// The configuration model and its validation: the `steer-config` crate.
pub use steer_config as config;
pub mod daemon;
pub mod dataplane;
pub mod errors;
pub mod health;
pub mod pcap;
pub mod policy;
