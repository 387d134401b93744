//! Captures for the replay demo, read and written by steer's own pcap
//! module (pcap and pcapng in, pcap out, on the `pcap-file` crate),
//! included by path so that there is one implementation: xtask does not
//! depend on steer-userspace, which builds the XDP program.
use std::{
    fs::{self, File},
    io::{BufReader, BufWriter},
    path::Path,
};

use anyhow::{Context as _, Result};

#[path = "../../steer-userspace/src/pcap.rs"]
mod format;

pub use format::Record;

/// Writes `records` as a pcap (creating its directory).
pub fn write(path: &Path, records: &[Record]) -> Result<()> {
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let file = File::create(path).with_context(|| format!("creating {}", path.display()))?;
    format::write_all(BufWriter::new(file), records)
        .with_context(|| format!("writing {}", path.display()))
}

/// Reads a pcap or pcapng capture of Ethernet frames.
pub fn read(path: &Path) -> Result<Vec<Record>> {
    let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    format::read_all(BufReader::new(file)).with_context(|| format!("reading {}", path.display()))
}
