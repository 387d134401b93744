//! Packet captures for `steer replay`: reads pcap and pcapng (Ethernet
//! frames), writes pcap. The formats are parsed and written by the
//! `pcap-file` crate; this module adds what replaying needs on top: one
//! list of frames, errors that name the record, and a written snap length
//! that fits every record.
//!
//! xtask's replay demo includes this file by path (xtask/src/pcap.rs), so
//! it uses nothing but std, `thiserror` and `pcap-file`.

use std::fmt;
use std::io::{self, Read, Write};
use std::time::Duration;

use pcap_file::pcap::{PcapHeader, PcapPacket, PcapParser, PcapWriter};
use pcap_file::pcapng::blocks::interface_description::{
    InterfaceDescriptionBlock, InterfaceDescriptionOption,
};
use pcap_file::pcapng::{Block, PcapNgParser};
use pcap_file::{DataLink, Endianness, TsResolution};

/// LINKTYPE_ETHERNET, the only link type steer replays.
pub const LINKTYPE_ETHERNET: u32 = 1;
/// The snap length written into a capture that holds no record.
const EMPTY_SNAPLEN: u32 = 65_535;
/// The magic numbers that tell the formats apart (first four bytes, read
/// big-endian).
const PCAP_MAGICS: [u32; 4] = [0xa1b2_c3d4, 0xd4c3_b2a1, 0xa1b2_3c4d, 0x4d3c_b2a1];
const PCAPNG_MAGIC: u32 = 0x0a0d_0d0a;
/// The size of a classic pcap file header.
const PCAP_HEADER_LEN: usize = 24;

/// Where in a capture something went wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Place {
    /// The file header.
    FileHeader,
    /// A packet record, numbered from 1 as Wireshark and `tcpdump -#`
    /// number them.
    Record(usize),
    /// A pcapng block that holds no packet, after this many packet records.
    BlockAfter(usize),
}

impl fmt::Display for Place {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Place::FileHeader => write!(f, "the file header"),
            Place::Record(n) => write!(f, "packet record {n}"),
            Place::BlockAfter(0) => write!(f, "the pcapng block before the first packet record"),
            Place::BlockAfter(n) => write!(f, "the pcapng block after packet record {n}"),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PcapError {
    #[error("cannot read the capture: {0}")]
    Io(#[from] io::Error),
    #[error("the file is empty (0 bytes), not a capture")]
    Empty,
    #[error(
        "the file is truncated: it is {len} bytes long and ends inside its {format} file header \
         (a pcap header is 24 bytes, a pcapng section header at least 28)"
    )]
    TruncatedHeader { format: &'static str, len: usize },
    #[error(
        "not a pcap or pcapng file (it starts with {0:#010x}); steer reads pcap and pcapng captures"
    )]
    BadMagic(u32),
    #[error("the pcapng section header is corrupt ({0}); is the file a pcapng capture?")]
    BadSection(&'static str),
    #[error("link type {0} is not Ethernet (1); capture on an Ethernet interface")]
    LinkType(u32),
    #[error(
        "{at} was captured on interface {interface}, whose link type {link} is not Ethernet (1); \
         capture on an Ethernet interface"
    )]
    InterfaceLinkType {
        at: Place,
        interface: u32,
        link: u32,
    },
    #[error("{at} is truncated: the file ends inside it")]
    Truncated { at: Place },
    #[error("{at} is corrupt: {what}")]
    Corrupt { at: Place, what: String },
    #[error("{at} cannot be written as pcap: {what}")]
    Unwritable { at: Place, what: &'static str },
}

/// One captured frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    /// Since the Unix epoch.
    pub timestamp: Duration,
    pub data: Vec<u8>,
}

/// Reads every record of a pcap or pcapng capture (either byte order,
/// any timestamp resolution). Every packet must be an Ethernet frame.
pub fn read_all(mut r: impl Read) -> Result<Vec<Record>, PcapError> {
    let mut buf = Vec::new();
    r.read_to_end(&mut buf)?;
    parse(&buf)
}

/// [`read_all`] on a capture already in memory.
pub fn parse(buf: &[u8]) -> Result<Vec<Record>, PcapError> {
    if buf.is_empty() {
        return Err(PcapError::Empty);
    }
    let Some(magic) = buf.get(..4) else {
        return Err(PcapError::TruncatedHeader {
            format: "capture",
            len: buf.len(),
        });
    };
    let magic = u32::from_be_bytes([magic[0], magic[1], magic[2], magic[3]]);
    if PCAP_MAGICS.contains(&magic) {
        parse_pcap(buf)
    } else if magic == PCAPNG_MAGIC {
        parse_pcapng(buf)
    } else {
        Err(PcapError::BadMagic(magic))
    }
}

fn parse_pcap(buf: &[u8]) -> Result<Vec<Record>, PcapError> {
    if buf.len() < PCAP_HEADER_LEN {
        return Err(PcapError::TruncatedHeader {
            format: "pcap",
            len: buf.len(),
        });
    }
    let (mut rest, parser) = PcapParser::new(buf).map_err(|e| PcapError::Corrupt {
        at: Place::FileHeader,
        what: e.to_string(),
    })?;
    let header = parser.header();
    let link = u32::from(header.datalink);
    if link != LINKTYPE_ETHERNET {
        return Err(PcapError::LinkType(link));
    }
    let mut out = Vec::new();
    while !rest.is_empty() {
        let at = Place::Record(out.len() + 1);
        // Raw packets: the checked ones reject an original length above
        // the snap length, which is what every cut-short capture has.
        let (next, raw) = parser
            .next_raw_packet(rest)
            .map_err(|e| block_error(at, e))?;
        let frac_ns = match header.ts_resolution {
            TsResolution::MicroSecond => u64::from(raw.ts_frac) * 1_000,
            TsResolution::NanoSecond => u64::from(raw.ts_frac),
        };
        out.push(Record {
            timestamp: Duration::from_secs(raw.ts_sec.into()) + Duration::from_nanos(frac_ns),
            data: raw.data.into_owned(),
        });
        rest = next;
    }
    Ok(out)
}

fn block_error(at: Place, e: pcap_file::PcapError) -> PcapError {
    match e {
        pcap_file::PcapError::IncompleteBuffer => PcapError::Truncated { at },
        e => PcapError::Corrupt {
            at,
            what: e.to_string(),
        },
    }
}

fn parse_pcapng(buf: &[u8]) -> Result<Vec<Record>, PcapError> {
    let (mut rest, mut parser) = PcapNgParser::new(buf).map_err(|e| match e {
        pcap_file::PcapError::IncompleteBuffer => PcapError::TruncatedHeader {
            format: "pcapng",
            len: buf.len(),
        },
        pcap_file::PcapError::InvalidField(what) => PcapError::BadSection(what),
        e => PcapError::Corrupt {
            at: Place::BlockAfter(0),
            what: e.to_string(),
        },
    })?;
    let mut out = Vec::new();
    while !rest.is_empty() {
        let (next, block) = parser.next_block(rest).map_err(|e| {
            // Which kind of block failed is unknown; name the place by
            // the packet records read so far.
            block_error(Place::BlockAfter(out.len()), e)
        })?;
        rest = next;
        let at = Place::Record(out.len() + 1);
        let (interface, raw_ts, data) = match block {
            Block::EnhancedPacket(p) => (p.interface_id, Some(p.timestamp), p.data.into_owned()),
            Block::Packet(p) => (
                p.interface_id.into(),
                Some(Duration::from_nanos(p.timestamp)),
                p.data.into_owned(),
            ),
            Block::SimplePacket(p) => {
                // The block is padded: the packet is original_len bytes,
                // cut to the first interface's snap length (0: none).
                let snaplen = parser.interfaces().first().map_or(0, |i| i.snaplen);
                let mut len = p.original_len;
                if snaplen != 0 {
                    len = len.min(snaplen);
                }
                let mut data = p.data.into_owned();
                data.truncate(len as usize);
                (0, None, data)
            }
            _ => continue,
        };
        let Some(idb) = parser.interfaces().get(interface as usize) else {
            return Err(PcapError::Corrupt {
                at,
                what: format!("it names interface {interface}, which no interface block describes"),
            });
        };
        let link = u32::from(idb.linktype);
        if link != LINKTYPE_ETHERNET {
            return Err(PcapError::InterfaceLinkType {
                at,
                interface,
                link,
            });
        }
        // pcap-file hands the raw timestamp over as nanoseconds; its unit
        // is really the interface's if_tsresol (microseconds by default).
        let timestamp = raw_ts.map_or(Duration::ZERO, |t| {
            ng_timestamp(idb, u64::try_from(t.as_nanos()).unwrap_or(u64::MAX))
        });
        out.push(Record { timestamp, data });
    }
    Ok(out)
}

/// A pcapng timestamp in the interface's units (if_tsresol: 10^-n
/// seconds, or 2^-n with the top bit set; 10^-6 if absent), plus its
/// if_tsoffset seconds.
fn ng_timestamp(idb: &InterfaceDescriptionBlock<'_>, units: u64) -> Duration {
    let mut resol = 6u8;
    let mut offset = 0u64;
    for o in &idb.options {
        match o {
            InterfaceDescriptionOption::IfTsResol(r) => resol = *r,
            InterfaceDescriptionOption::IfTsOffset(s) => offset = *s,
            _ => {}
        }
    }
    let exp = u32::from(resol & 0x7f);
    let per_sec: u128 = if resol & 0x80 == 0 {
        10u128.saturating_pow(exp)
    } else {
        2u128.saturating_pow(exp)
    };
    let units = u128::from(units);
    let secs = units / per_sec;
    let nanos = (units % per_sec) * 1_000_000_000 / per_sec;
    Duration::from_secs(
        u64::try_from(secs)
            .unwrap_or(u64::MAX)
            .saturating_add(offset),
    ) + Duration::from_nanos(nanos as u64)
}

/// Writes a little-endian, microsecond-resolution pcap of Ethernet frames.
/// Its snap length is the largest record's length (so no reader takes a
/// record for longer than the capture allowed), or 65,535 when there is
/// no record.
pub fn write_all(w: impl Write, records: &[Record]) -> Result<(), PcapError> {
    let mut snaplen = 0u32;
    for (i, r) in records.iter().enumerate() {
        let len = u32::try_from(r.data.len()).map_err(|_| PcapError::Unwritable {
            at: Place::Record(i + 1),
            what: "it is longer than 4 GiB",
        })?;
        snaplen = snaplen.max(len);
    }
    if records.is_empty() {
        snaplen = EMPTY_SNAPLEN;
    }
    let header = PcapHeader {
        snaplen,
        datalink: DataLink::ETHERNET,
        ts_resolution: TsResolution::MicroSecond,
        endianness: Endianness::Little,
        ..PcapHeader::default()
    };
    let mut out = PcapWriter::with_header(w, header).map_err(write_error(Place::FileHeader))?;
    for (i, r) in records.iter().enumerate() {
        let len = r.data.len() as u32; // checked above
        out.write_packet(&PcapPacket::new(r.timestamp, len, &r.data))
            .map_err(write_error(Place::Record(i + 1)))?;
    }
    out.into_writer().flush()?;
    Ok(())
}

fn write_error(at: Place) -> impl Fn(pcap_file::PcapError) -> PcapError {
    move |e| match e {
        pcap_file::PcapError::IoError(e) => PcapError::Io(e),
        pcap_file::PcapError::InvalidField(what) => PcapError::Unwritable { at, what },
        e => PcapError::Corrupt {
            at,
            what: e.to_string(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(i: u8, n: usize) -> Record {
        Record {
            timestamp: Duration::new(1_700_000_000 + u64::from(i), 1_000_000 * u32::from(i)),
            data: vec![i; n],
        }
    }

    fn u32_le(b: &[u8], at: usize) -> u32 {
        u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
    }

    #[test]
    fn round_trip_with_a_snap_length_that_fits_every_record() {
        // 100,000 bytes: more than the 65,535 that used to be written.
        let recs = vec![rec(1, 60), rec(2, 100_000), rec(3, 14)];
        let mut buf = Vec::new();
        write_all(&mut buf, &recs).unwrap();
        assert_eq!(buf.len(), 24 + 3 * 16 + 60 + 100_000 + 14);
        // The header, by the pcap format: LE microsecond magic, snap
        // length at 16, link type at 20.
        assert_eq!(u32_le(&buf, 0), 0xa1b2_c3d4);
        assert_eq!(u32_le(&buf, 16), 100_000);
        assert_eq!(u32_le(&buf, 20), 1);
        // The first record: seconds, microseconds, both lengths.
        assert_eq!(u32_le(&buf, 24), 1_700_000_001);
        assert_eq!(u32_le(&buf, 28), 1_000);
        assert_eq!(u32_le(&buf, 32), 60);
        assert_eq!(u32_le(&buf, 36), 60);
        assert_eq!(parse(&buf).unwrap(), recs);

        let mut empty = Vec::new();
        write_all(&mut empty, &[]).unwrap();
        assert_eq!(empty.len(), 24);
        assert_eq!(u32_le(&empty, 16), 65_535);
        assert_eq!(parse(&empty).unwrap(), vec![]);
    }

    #[test]
    fn reads_big_endian_nanosecond_files() {
        // Hand-built per the pcap format: big-endian, nanosecond magic,
        // and a record cut short by a snap length of 3 (original 60).
        let mut b = Vec::new();
        b.extend_from_slice(&0xa1b2_3c4du32.to_be_bytes());
        b.extend_from_slice(&2u16.to_be_bytes());
        b.extend_from_slice(&4u16.to_be_bytes());
        b.extend_from_slice(&[0; 8]);
        b.extend_from_slice(&3u32.to_be_bytes());
        b.extend_from_slice(&1u32.to_be_bytes());
        b.extend_from_slice(&7u32.to_be_bytes());
        b.extend_from_slice(&5_000u32.to_be_bytes());
        b.extend_from_slice(&3u32.to_be_bytes());
        b.extend_from_slice(&60u32.to_be_bytes());
        b.extend_from_slice(&[9, 8, 7]);
        let r = read_all(&b[..]).unwrap();
        assert_eq!(
            r,
            vec![Record {
                timestamp: Duration::new(7, 5_000),
                data: vec![9, 8, 7]
            }]
        );
    }

    /// A pcapng block, little-endian, per the pcapng specification:
    /// type, total length, body (padded to 4), total length again.
    fn ng_block(kind: u32, body: &[u8]) -> Vec<u8> {
        let pad = (4 - body.len() % 4) % 4;
        let total = (12 + body.len() + pad) as u32;
        let mut b = Vec::new();
        b.extend_from_slice(&kind.to_le_bytes());
        b.extend_from_slice(&total.to_le_bytes());
        b.extend_from_slice(body);
        b.extend_from_slice(&vec![0; pad]);
        b.extend_from_slice(&total.to_le_bytes());
        b
    }

    fn ng_section() -> Vec<u8> {
        let mut shb = Vec::new();
        shb.extend_from_slice(&0x1a2b_3c4du32.to_le_bytes());
        shb.extend_from_slice(&1u16.to_le_bytes());
        shb.extend_from_slice(&0u16.to_le_bytes());
        shb.extend_from_slice(&(-1i64).to_le_bytes());
        ng_block(0x0a0d_0d0a, &shb)
    }

    /// An interface description block; `tsresol` adds that option.
    fn ng_interface(link: u16, tsresol: Option<u8>) -> Vec<u8> {
        let mut idb = Vec::new();
        idb.extend_from_slice(&link.to_le_bytes());
        idb.extend_from_slice(&0u16.to_le_bytes());
        idb.extend_from_slice(&0u32.to_le_bytes()); // snaplen: none
        if let Some(r) = tsresol {
            idb.extend_from_slice(&9u16.to_le_bytes()); // if_tsresol
            idb.extend_from_slice(&1u16.to_le_bytes());
            idb.extend_from_slice(&[r, 0, 0, 0]);
            idb.extend_from_slice(&[0; 4]); // opt_endofopt
        }
        ng_block(1, &idb)
    }

    fn ng_packet(interface: u32, units: u64, data: &[u8]) -> Vec<u8> {
        let mut epb = Vec::new();
        epb.extend_from_slice(&interface.to_le_bytes());
        epb.extend_from_slice(&((units >> 32) as u32).to_le_bytes());
        epb.extend_from_slice(&(units as u32).to_le_bytes());
        epb.extend_from_slice(&(data.len() as u32).to_le_bytes());
        epb.extend_from_slice(&(data.len() as u32).to_le_bytes());
        epb.extend_from_slice(data);
        epb.extend_from_slice(&vec![0; (4 - data.len() % 4) % 4]);
        ng_block(6, &epb)
    }

    #[test]
    fn reads_pcapng_with_each_interfaces_timestamp_unit() {
        let mut b = ng_section();
        b.extend(ng_interface(1, None)); // microseconds
        b.extend(ng_interface(1, Some(9))); // nanoseconds
        b.extend(ng_packet(0, 1_700_000_000_123_456, &[1, 2, 3, 4, 5]));
        b.extend(ng_block(4, &[0; 4])); // name resolution: skipped
        b.extend(ng_packet(1, 1_700_000_000_123_456_789, &[6; 60]));
        let mut spb = 3u32.to_le_bytes().to_vec();
        spb.extend_from_slice(&[7, 7, 7, 0]);
        b.extend(ng_block(3, &spb)); // simple packet: 3 bytes + padding
        let r = parse(&b).unwrap();
        assert_eq!(
            r,
            vec![
                Record {
                    timestamp: Duration::new(1_700_000_000, 123_456_000),
                    data: vec![1, 2, 3, 4, 5]
                },
                Record {
                    timestamp: Duration::new(1_700_000_000, 123_456_789),
                    data: vec![6; 60]
                },
                Record {
                    timestamp: Duration::ZERO,
                    data: vec![7, 7, 7]
                },
            ]
        );
    }

    #[test]
    fn clear_errors_for_bad_input() {
        let err = |b: &[u8]| parse(b).unwrap_err().to_string();
        assert_eq!(err(b""), "the file is empty (0 bytes), not a capture");
        assert!(err(b"hello").contains("not a pcap or pcapng file (it starts with 0x68656c6c)"));

        // A pcap header cut at 10 bytes: truncated, not a bad magic.
        let mut good = Vec::new();
        write_all(&mut good, &[rec(1, 100), rec(2, 50)]).unwrap();
        let e = err(&good[..10]);
        assert!(
            e.starts_with("the file is truncated: it is 10 bytes long"),
            "{e}"
        );
        assert!(e.contains("pcap file header"), "{e}");
        assert!(err(&good[..2]).contains("truncated"));

        // Cut inside the second record (numbered from 1).
        let e = err(&good[..good.len() - 10]);
        assert_eq!(e, "packet record 2 is truncated: the file ends inside it");
        // Cut inside the second record's header.
        let e = err(&good[..24 + 16 + 100 + 5]);
        assert_eq!(e, "packet record 2 is truncated: the file ends inside it");

        let mut wrong_link = Vec::new();
        write_all(&mut wrong_link, &[]).unwrap();
        wrong_link[20] = 101;
        assert!(err(&wrong_link).starts_with("link type 101 is not Ethernet"));

        // pcapng: a cut section header, a corrupt one, a non-Ethernet
        // interface, a packet on an interface never described, a cut packet.
        let section = ng_section();
        assert!(err(&section[..20]).contains("truncated"));
        let mut corrupt = section.clone();
        corrupt[8..12].copy_from_slice(&[0; 4]);
        assert!(err(&corrupt).contains("pcapng section header is corrupt"));
        let mut raw_ip = section.clone();
        raw_ip.extend(ng_interface(101, None));
        raw_ip.extend(ng_packet(0, 0, &[0; 20]));
        assert_eq!(
            err(&raw_ip),
            "packet record 1 was captured on interface 0, whose link type 101 is not \
             Ethernet (1); capture on an Ethernet interface"
        );
        let mut no_idb = section.clone();
        no_idb.extend(ng_packet(0, 0, &[0; 20]));
        assert!(err(&no_idb).contains("names interface 0, which no interface block describes"));
        let mut cut = section;
        cut.extend(ng_interface(1, None));
        cut.extend(ng_packet(0, 0, &[0; 20]));
        cut.extend(ng_packet(0, 0, &[0; 20]));
        cut.truncate(cut.len() - 8);
        assert_eq!(
            err(&cut),
            "the pcapng block after packet record 1 is truncated: the file ends inside it"
        );
    }
}
