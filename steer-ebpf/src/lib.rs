#![no_std]
#![deny(clippy::undocumented_unsafe_blocks)]
// The program itself is the `steer` binary target (src/main.rs), built for
// bpfel-unknown-none by steer-userspace's build.rs. This empty library lets
// that crate declare a build-dependency on us so cargo rebuilds on changes.
