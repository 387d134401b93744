//! Benchmark-only entry points, compiled only with feature `bench` (the
//! benchmark object; the production object has none of this). They are
//! loaded by the benchmarks but never attached.
//!
//! With BPF_PROG_TEST_RUN and `repeat > 1` the kernel runs the program on
//! the same buffer again and again, so after one encapsulation the next
//! iteration would see an encapsulated packet. `prepare` undoes that: it
//! strips the outer header the previous iteration added and puts back the
//! original Ethernet header. It can also turn each iteration into a flow
//! the connection table has never held, by bumping the IPv4 source address.
//! Its cost is measured on its own by `steer_bench_restore`.

use aya_ebpf::{
    helpers::generated::bpf_xdp_adjust_head, macros::map, maps::Array, programs::XdpContext,
};
use steer_common::{BenchState, BENCH_VARY_V4_SRC, OUTER_V4_LEN, OUTER_V6_LEN};

use crate::{maps::SETTINGS, parse::read};

/// Benchmark-only scratch state (one entry).
#[map]
pub static BENCH: Array<BenchState> = Array::with_max_entries(1, 0);

/// Writes `v` at byte `off` of the packet if it fits.
#[inline(always)]
fn write_at<const N: usize>(ctx: &XdpContext, off: usize, v: [u8; N]) -> Option<()> {
    let start = ctx.data();
    if start + off + N > ctx.data_end() {
        return None;
    }
    // SAFETY: bounds checked just above.
    unsafe { core::ptr::write_unaligned((start + off) as *mut [u8; N], v) };
    Some(())
}

/// Restores the original packet (see the module docs). Returns whether an
/// outer header was stripped.
#[inline(always)]
pub fn prepare(ctx: &XdpContext) -> Option<bool> {
    let st: *mut BenchState = BENCH.get_ptr_mut(0)?;
    let settings = SETTINGS.get(0)?;
    let eth = read::<[u8; 14]>(ctx, 0)?;
    // SAFETY: `st` comes from a successful lookup of our own array map; the
    // benchmark drives one packet at a time.
    let st = unsafe { &mut *st };
    let stripped = if st.saved_valid != 0 && eth[..6] == settings.next_hop_mac {
        let outer = if eth[12] == 0x08 && eth[13] == 0x00 {
            OUTER_V4_LEN
        } else {
            OUTER_V6_LEN
        };
        // SAFETY: helper call on our own context; fails cleanly if the
        // packet is shorter than the shrink.
        if unsafe { bpf_xdp_adjust_head(ctx.ctx, outer as i32) } != 0 {
            return None;
        }
        let mut e = [0u8; 14];
        e.copy_from_slice(&st.saved[..14]);
        write_at(ctx, 0, e)?;
        true
    } else {
        st.saved[..14].copy_from_slice(&eth);
        st.saved_valid = 1;
        false
    };
    if st.vary == BENCH_VARY_V4_SRC {
        let a = read::<[u8; 4]>(ctx, 26)?;
        write_at(ctx, 26, u32::from_be_bytes(a).wrapping_add(1).to_be_bytes())?;
    }
    Some(stripped)
}

/// The restore step alone: every other iteration strips what the previous
/// one added, and the ones in between add a dummy outer header of the same
/// size the way `encap` would (adjust_head + header writes).
#[inline(always)]
pub fn restore_only(ctx: &XdpContext) -> Option<()> {
    if prepare(ctx)? {
        return Some(());
    }
    let settings = SETTINGS.get(0)?;
    // SAFETY: helper call on our own context.
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, -(OUTER_V4_LEN as i32)) } != 0 {
        return None;
    }
    write_at(ctx, 0, settings.next_hop_mac)?;
    write_at(ctx, 12, [0x08u8, 0x00])?;
    write_at(ctx, 14, [0u8; OUTER_V4_LEN])?;
    Some(())
}
