//! steer's userspace: configuration, policy, health checking and the data
//! plane loader. The `steer` binary is a thin CLI over this library.

pub mod config;
pub mod dataplane;
pub mod pcap;
pub mod policy;
