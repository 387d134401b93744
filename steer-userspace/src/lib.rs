//! steer's userspace: configuration, policy, health checking and the data
//! plane loader. The `steer` binary is a thin CLI over this library.
