//! Classic pcap files (not pcapng), Ethernet link type, written by hand.
use std::{fs, path::Path};

use anyhow::{bail, Context as _, Result};

const MAGIC_MICROS: u32 = 0xa1b2_c3d4;
const MAGIC_NANOS: u32 = 0xa1b2_3c4d;
const LINKTYPE_ETHERNET: u32 = 1;
const SNAPLEN: u32 = 65_535;

/// One captured frame; `ts_us` is microseconds since the epoch.
pub struct Record {
    pub ts_us: u64,
    pub data: Vec<u8>,
}

/// Writes `records` as a little-endian, microsecond-resolution pcap.
pub fn write(path: &Path, records: &[Record]) -> Result<()> {
    let mut out = Vec::with_capacity(24 + records.iter().map(|r| 16 + r.data.len()).sum::<usize>());
    out.extend_from_slice(&MAGIC_MICROS.to_le_bytes());
    out.extend_from_slice(&2u16.to_le_bytes()); // version major
    out.extend_from_slice(&4u16.to_le_bytes()); // version minor
    out.extend_from_slice(&0i32.to_le_bytes()); // thiszone
    out.extend_from_slice(&0u32.to_le_bytes()); // sigfigs
    out.extend_from_slice(&SNAPLEN.to_le_bytes());
    out.extend_from_slice(&LINKTYPE_ETHERNET.to_le_bytes());
    for r in records {
        let len = u32::try_from(r.data.len()).context("frame too long for pcap")?;
        let secs = u32::try_from(r.ts_us / 1_000_000).context("timestamp past 2106")?;
        let micros = u32::try_from(r.ts_us % 1_000_000).unwrap_or(0);
        out.extend_from_slice(&secs.to_le_bytes());
        out.extend_from_slice(&micros.to_le_bytes());
        out.extend_from_slice(&len.to_le_bytes()); // captured length
        out.extend_from_slice(&len.to_le_bytes()); // original length
        out.extend_from_slice(&r.data);
    }
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    fs::write(path, out).with_context(|| format!("writing {}", path.display()))
}

/// Reads a classic pcap of either byte order and either resolution. Only
/// Ethernet captures are accepted.
pub fn read(path: &Path) -> Result<Vec<Record>> {
    let buf = fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    parse(&buf).with_context(|| format!("parsing {}", path.display()))
}

fn parse(buf: &[u8]) -> Result<Vec<Record>> {
    if buf.len() < 24 {
        bail!("too short for a pcap header ({} bytes)", buf.len());
    }
    let word = |b: &[u8], at: usize, le: bool| {
        let w = [b[at], b[at + 1], b[at + 2], b[at + 3]];
        if le {
            u32::from_le_bytes(w)
        } else {
            u32::from_be_bytes(w)
        }
    };
    let (le, nanos) = match (word(buf, 0, true), word(buf, 0, false)) {
        (MAGIC_MICROS, _) => (true, false),
        (MAGIC_NANOS, _) => (true, true),
        (_, MAGIC_MICROS) => (false, false),
        (_, MAGIC_NANOS) => (false, true),
        (m, _) => bail!("not a classic pcap file (magic {m:#010x})"),
    };
    let linktype = word(buf, 20, le) & 0x0fff_ffff;
    if linktype != LINKTYPE_ETHERNET {
        bail!("link type {linktype}, expected Ethernet (1)");
    }
    let mut records = Vec::new();
    let mut at = 24;
    while at < buf.len() {
        if buf.len() - at < 16 {
            bail!("truncated record header at offset {at}");
        }
        let secs = u64::from(word(buf, at, le));
        let frac = u64::from(word(buf, at + 4, le));
        let caplen = usize::try_from(word(buf, at + 8, le))?;
        at += 16;
        if buf.len() - at < caplen {
            bail!("truncated record at offset {at}");
        }
        let ts_us = secs * 1_000_000 + if nanos { frac / 1000 } else { frac };
        records.push(Record {
            ts_us,
            data: buf[at..at + caplen].to_vec(),
        });
        at += caplen;
    }
    Ok(records)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() -> Result<()> {
        let dir = std::env::temp_dir().join(format!("xtask-pcap-{}", std::process::id()));
        let path = dir.join("t.pcap");
        let recs = vec![
            Record {
                ts_us: 1_700_000_000_123_456,
                data: vec![1, 2, 3],
            },
            Record {
                ts_us: 1_700_000_001_000_000,
                data: vec![0; 60],
            },
        ];
        write(&path, &recs)?;
        let raw = fs::read(&path)?;
        assert_eq!(&raw[..4], &[0xd4, 0xc3, 0xb2, 0xa1]);
        assert_eq!(raw.len(), 24 + 16 + 3 + 16 + 60);
        let back = read(&path)?;
        assert_eq!(back.len(), 2);
        assert_eq!(back[0].ts_us, recs[0].ts_us);
        assert_eq!(back[0].data, recs[0].data);
        assert_eq!(back[1].data, recs[1].data);
        fs::remove_dir_all(dir)?;
        Ok(())
    }
}
