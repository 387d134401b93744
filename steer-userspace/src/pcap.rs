//! Classic pcap files (LINKTYPE_ETHERNET): enough to replay captures
//! through the program and write what it transmitted.

use std::io::{self, Read, Write};

const MAGIC_US: u32 = 0xa1b2_c3d4;
const MAGIC_NS: u32 = 0xa1b2_3c4d;
const PCAPNG: u32 = 0x0a0d_0d0a;
pub const LINKTYPE_ETHERNET: u32 = 1;
/// Larger records are rejected as corrupt.
const MAX_RECORD: u32 = 256 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum PcapError {
    #[error("reading the capture failed: {0}")]
    Io(#[from] io::Error),
    #[error(
        "the file is pcapng; steer reads classic pcap (convert with `editcap -F pcap IN OUT`)"
    )]
    Pcapng,
    #[error("not a pcap file (magic number {0:#010x})")]
    BadMagic(u32),
    #[error("link type {0} is not Ethernet (1); capture on an Ethernet interface")]
    LinkType(u32),
    #[error("packet record {index} is truncated: the file ends inside it")]
    Truncated { index: usize },
    #[error(
        "packet record {index} claims {len} bytes (more than {MAX_RECORD}): the file is corrupt"
    )]
    Oversized { index: usize, len: u32 },
}

/// One captured frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    pub ts_sec: u32,
    /// Microseconds (nanosecond captures are converted).
    pub ts_usec: u32,
    pub data: Vec<u8>,
}

/// Reads every record of a classic pcap stream.
pub fn read_all(mut r: impl Read) -> Result<Vec<Record>, PcapError> {
    let mut hdr = [0u8; 24];
    r.read_exact(&mut hdr).map_err(|e| match e.kind() {
        io::ErrorKind::UnexpectedEof => PcapError::BadMagic(0),
        _ => PcapError::Io(e),
    })?;
    let le = u32::from_le_bytes([hdr[0], hdr[1], hdr[2], hdr[3]]);
    let be = u32::from_be_bytes([hdr[0], hdr[1], hdr[2], hdr[3]]);
    let (little, nanos) = match (le, be) {
        (MAGIC_US, _) => (true, false),
        (MAGIC_NS, _) => (true, true),
        (_, MAGIC_US) => (false, false),
        (_, MAGIC_NS) => (false, true),
        (PCAPNG, _) => return Err(PcapError::Pcapng),
        _ => return Err(PcapError::BadMagic(be)),
    };
    let u32_at = |b: &[u8], i: usize| {
        let a = [b[i], b[i + 1], b[i + 2], b[i + 3]];
        if little {
            u32::from_le_bytes(a)
        } else {
            u32::from_be_bytes(a)
        }
    };
    let link = u32_at(&hdr, 20) & 0x0fff_ffff;
    if link != LINKTYPE_ETHERNET {
        return Err(PcapError::LinkType(link));
    }
    let mut out = Vec::new();
    loop {
        let index = out.len();
        let mut rh = [0u8; 16];
        match read_full(&mut r, &mut rh)? {
            0 => break,
            16 => {}
            _ => return Err(PcapError::Truncated { index }),
        }
        let incl = u32_at(&rh, 8);
        if incl > MAX_RECORD {
            return Err(PcapError::Oversized { index, len: incl });
        }
        let mut data = vec![0u8; incl as usize];
        if read_full(&mut r, &mut data)? != data.len() {
            return Err(PcapError::Truncated { index });
        }
        let frac = u32_at(&rh, 4);
        out.push(Record {
            ts_sec: u32_at(&rh, 0),
            ts_usec: if nanos { frac / 1000 } else { frac },
            data,
        });
    }
    Ok(out)
}

fn read_full(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// Writes a classic little-endian microsecond pcap with Ethernet frames.
pub fn write_all(mut w: impl Write, records: &[Record]) -> io::Result<()> {
    let mut hdr = Vec::with_capacity(24);
    hdr.extend_from_slice(&MAGIC_US.to_le_bytes());
    hdr.extend_from_slice(&2u16.to_le_bytes());
    hdr.extend_from_slice(&4u16.to_le_bytes());
    hdr.extend_from_slice(&0i32.to_le_bytes());
    hdr.extend_from_slice(&0u32.to_le_bytes());
    hdr.extend_from_slice(&65535u32.to_le_bytes());
    hdr.extend_from_slice(&LINKTYPE_ETHERNET.to_le_bytes());
    w.write_all(&hdr)?;
    for r in records {
        let len = r.data.len() as u32;
        w.write_all(&r.ts_sec.to_le_bytes())?;
        w.write_all(&r.ts_usec.to_le_bytes())?;
        w.write_all(&len.to_le_bytes())?;
        w.write_all(&len.to_le_bytes())?;
        w.write_all(&r.data)?;
    }
    w.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(i: u8, n: usize) -> Record {
        Record {
            ts_sec: 1_700_000_000 + i as u32,
            ts_usec: 1000 * i as u32,
            data: vec![i; n],
        }
    }

    #[test]
    fn round_trip() {
        let recs = vec![rec(1, 60), rec(2, 1514), rec(3, 14)];
        let mut buf = Vec::new();
        write_all(&mut buf, &recs).unwrap();
        assert_eq!(buf.len(), 24 + 3 * 16 + 60 + 1514 + 14);
        assert_eq!(read_all(&buf[..]).unwrap(), recs);
    }

    #[test]
    fn reads_big_endian_nanosecond_files() {
        // Hand-built per the pcap format: big-endian, nanosecond magic.
        let mut b = Vec::new();
        b.extend_from_slice(&MAGIC_NS.to_be_bytes());
        b.extend_from_slice(&2u16.to_be_bytes());
        b.extend_from_slice(&4u16.to_be_bytes());
        b.extend_from_slice(&[0; 8]);
        b.extend_from_slice(&65535u32.to_be_bytes());
        b.extend_from_slice(&1u32.to_be_bytes());
        b.extend_from_slice(&7u32.to_be_bytes());
        b.extend_from_slice(&5_000u32.to_be_bytes());
        b.extend_from_slice(&3u32.to_be_bytes());
        b.extend_from_slice(&3u32.to_be_bytes());
        b.extend_from_slice(&[9, 8, 7]);
        let r = read_all(&b[..]).unwrap();
        assert_eq!(
            r,
            vec![Record {
                ts_sec: 7,
                ts_usec: 5,
                data: vec![9, 8, 7]
            }]
        );
    }

    #[test]
    fn clear_errors_for_bad_input() {
        assert!(matches!(
            read_all(&b"hello"[..]),
            Err(PcapError::BadMagic(_))
        ));
        assert!(matches!(
            read_all(&[0x0a, 0x0d, 0x0d, 0x0a, 0, 0, 0, 0][..]),
            Err(PcapError::BadMagic(_)) | Err(PcapError::Pcapng)
        ));
        let mut ng = vec![0x0a, 0x0d, 0x0d, 0x0a];
        ng.extend_from_slice(&[0; 20]);
        assert!(matches!(read_all(&ng[..]), Err(PcapError::Pcapng)));
        let mut buf = Vec::new();
        write_all(&mut buf, &[rec(1, 100)]).unwrap();
        buf.truncate(buf.len() - 10);
        assert!(matches!(
            read_all(&buf[..]),
            Err(PcapError::Truncated { index: 0 })
        ));
        let mut wrong_link = Vec::new();
        write_all(&mut wrong_link, &[]).unwrap();
        wrong_link[20] = 101;
        assert!(matches!(
            read_all(&wrong_link[..]),
            Err(PcapError::LinkType(101))
        ));
    }
}
