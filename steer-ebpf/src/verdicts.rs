//! Programs that return a fixed verdict and touch nothing: `steer_pass`
//! (XDP_PASS), `steer_tx` (XDP_TX) and `steer_drop` (XDP_DROP). No maps.
//!
//! `steer_pass` goes on the far end of a veth that steer sends XDP_TX frames
//! into: a veth only delivers XDP_TX frames to a peer that has an XDP
//! program of its own (`veth_xdp_flush` schedules the peer's NAPI poll only
//! then). The lab's bridge port and the daemon tests' peers use it.
//! `steer_tx` and `steer_drop` are the throughput bench's references.
//! Userspace loads them with `steer::dataplane::verdict`.
//!
//! All three are multi-buffer aware (`xdp.frags`): they never read the
//! frame, so they are correct for jumbo frames, and a veth whose MTU is
//! above one page accepts them.
#![no_std]
#![no_main]
#![deny(clippy::undocumented_unsafe_blocks)]

use aya_ebpf::{bindings::xdp_action, macros::xdp, programs::XdpContext};

/// Hands every frame to the kernel's stack unchanged.
#[xdp(frags)]
pub fn steer_pass(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}

/// Sends every frame back out of the interface it came in on, unchanged.
#[xdp(frags)]
pub fn steer_tx(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_TX
}

/// Drops every frame.
#[xdp(frags)]
pub fn steer_drop(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_DROP
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // Unreachable: nothing here can panic.
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
