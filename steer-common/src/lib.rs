//! Types and pure logic shared by the steer XDP program and its userspace.
//!
//! Everything in a BPF map is `#[repr(C)]` with explicit padding and only
//! integer or byte-array fields, so both sides agree on the layout byte for
//! byte. Multi-byte addresses and ports are kept exactly as they appear on the
//! wire (network byte order); see [`port_to_wire`] and [`port_from_wire`].
#![no_std]
#![deny(clippy::undocumented_unsafe_blocks)]

#[cfg(feature = "std")]
extern crate std;

pub mod csum;
pub mod hash;
pub mod maps;
pub mod verdict;

#[cfg(feature = "user")]
pub mod maglev;

pub use maps::*;
pub use verdict::XdpVerdict;

/// Converts a host-order port into the representation stored in map keys:
/// the two wire bytes reinterpreted as a native `u16`.
#[inline(always)]
pub const fn port_to_wire(port: u16) -> u16 {
    u16::from_ne_bytes(port.to_be_bytes())
}

/// Inverse of [`port_to_wire`].
#[inline(always)]
pub const fn port_from_wire(raw: u16) -> u16 {
    u16::from_be_bytes(raw.to_ne_bytes())
}
