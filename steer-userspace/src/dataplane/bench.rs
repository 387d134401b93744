//! Benchmark support: the benchmark object (steer-ebpf built with feature
//! `bench`: the production program plus `steer_floor`, `steer_bench`,
//! `steer_bench_nopassive`, `steer_bench_restore` and the `BENCH` map) and the API that times it.
//! A data plane from `Dataplane::load` or `open` has none of these programs;
//! only `Dataplane::load_bench` loads them.

use aya::maps::Array;
use steer_common::{names, BenchState};

use super::{map_err, typed, Dataplane, Limits, Result, RunOutput};

/// The benchmark object, built by build.rs.
static BENCH_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/steer-bench"));

/// The programs `load_bench` loads: the production entry point and the
/// benchmark-only ones.
const BENCH_PROGRAMS: [&str; 5] = [
    names::PROG_STEER,
    names::PROG_FLOOR,
    names::PROG_BENCH,
    names::PROG_BENCH_NOPASSIVE,
    names::PROG_BENCH_RESTORE,
];

/// Programs `Dataplane::bench_run` can time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BenchProgram {
    /// The production entry point.
    Steer,
    /// Returns XDP_TX and nothing else.
    Floor,
    /// Restores the original packet, then the production code.
    SteerWithRestore,
    /// `SteerWithRestore` without the passive health counting (no
    /// handshake-pending mark, no `PASSIVE_STATS`): what that costs.
    SteerWithRestoreNoPassive,
    /// The restore step alone.
    RestoreOnly,
}

impl Dataplane {
    /// Loads the benchmark object with map sizes from `limits`: everything
    /// `load_with` gives (programmed the same way, `run` runs the same
    /// production code) plus the benchmark programs of `bench_run` and
    /// `run_floor`. For benchmarks only: never pinned, never attached.
    pub fn load_bench(limits: Limits) -> Result<Self> {
        Self::load_inner(BENCH_OBJECT, &BENCH_PROGRAMS, limits, &[])
    }

    /// Gives interface `ifindex` the source MAC `mac` in `SOURCE_MACS`, as
    /// attaching to an interface does: BPF_PROG_TEST_RUN runs on the
    /// loopback interface, whose MAC is zero, so without this every
    /// transmitted frame would take the fallback lookup (`SOURCE_MACS[0]`)
    /// after a miss, a path an attached interface never takes.
    pub fn bench_interface_mac(&mut self, ifindex: u32, mac: [u8; 6]) -> Result<()> {
        self.write_source_mac(ifindex, Some(mac))
    }

    /// Runs one frame through the trivial XDP_TX program (benchmark floor).
    /// Needs a data plane from `load_bench`.
    pub fn run_floor(&self, frame: &[u8]) -> Result<RunOutput> {
        self.run_program(names::PROG_FLOOR, frame)
    }

    /// Benchmark support: runs `frame` through program `which` with
    /// `repeat` iterations in one BPF_PROG_TEST_RUN and returns the verdict
    /// of the last iteration and the kernel's mean time per iteration.
    /// `vary` (`steer_common::BENCH_VARY_*`) applies to the `steer_bench`
    /// programs, which restore the original packet before each iteration.
    /// Needs a data plane from `load_bench`.
    pub fn bench_run(
        &mut self,
        which: BenchProgram,
        frame: &[u8],
        repeat: u32,
        vary: u32,
    ) -> Result<RunOutput> {
        let mut st: Array<_, BenchState> = typed(&mut self.ebpf, names::BENCH)?;
        st.set(
            0,
            BenchState {
                vary,
                ..Default::default()
            },
            0,
        )
        .map_err(map_err(names::BENCH))?;
        let name = match which {
            BenchProgram::Steer => names::PROG_STEER,
            BenchProgram::Floor => names::PROG_FLOOR,
            BenchProgram::SteerWithRestore => names::PROG_BENCH,
            BenchProgram::SteerWithRestoreNoPassive => names::PROG_BENCH_NOPASSIVE,
            BenchProgram::RestoreOnly => names::PROG_BENCH_RESTORE,
        };
        self.run_program_repeat(name, frame, repeat)
    }
}
