//! A minimal MaxMind DB writer for the tests (format: "MaxMind DB File
//! Format Specification" 2.0): an IPv6 search tree with 24-bit records, the
//! IPv4 networks under `::/96`, one data record per (country, continent)
//! holding `{country: {iso_code}, continent: {code}}`, and the metadata
//! map. Only what `maxminddb` needs to read it back; networks must not
//! nest.

use std::collections::HashMap;
use std::net::IpAddr;

#[derive(Clone, Copy)]
enum Rec {
    Empty,
    Node(usize),
    Data(usize),
}

/// `(cidr, country, continent)` → the bytes of a `.mmdb` file.
pub(crate) fn write(networks: &[(&str, &str, &str)]) -> Vec<u8> {
    let mut nodes: Vec<[Rec; 2]> = vec![[Rec::Empty, Rec::Empty]];
    let mut data = Vec::new();
    let mut records: HashMap<(&str, &str), usize> = HashMap::new();
    for &(cidr, country, continent) in networks {
        let (addr, len) = cidr.split_once('/').expect("cidr");
        let (bits, len): (u128, u32) = match addr.parse::<IpAddr>().expect("address") {
            IpAddr::V4(a) => (
                u128::from(u32::from(a)),
                len.parse::<u32>().expect("len") + 96,
            ),
            IpAddr::V6(a) => (u128::from(a), len.parse().expect("len")),
        };
        let offset = *records.entry((country, continent)).or_insert_with(|| {
            let at = data.len();
            map(&mut data, 2);
            string(&mut data, "country");
            map(&mut data, 1);
            string(&mut data, "iso_code");
            string(&mut data, country);
            string(&mut data, "continent");
            map(&mut data, 1);
            string(&mut data, "code");
            string(&mut data, continent);
            at
        });
        let mut node = 0;
        for depth in 0..len {
            let bit = ((bits >> (127 - depth)) & 1) as usize;
            if depth == len - 1 {
                nodes[node][bit] = Rec::Data(offset);
                break;
            }
            node = match nodes[node][bit] {
                Rec::Node(n) => n,
                Rec::Empty => {
                    nodes.push([Rec::Empty, Rec::Empty]);
                    let n = nodes.len() - 1;
                    nodes[node][bit] = Rec::Node(n);
                    n
                }
                Rec::Data(_) => panic!("nested networks are not supported"),
            };
        }
    }
    let count = nodes.len();
    let mut out = Vec::new();
    for pair in &nodes {
        for rec in pair {
            let v = match *rec {
                Rec::Empty => count,
                Rec::Node(n) => n,
                Rec::Data(off) => count + 16 + off,
            } as u32;
            out.extend_from_slice(&v.to_be_bytes()[1..]);
        }
    }
    out.extend_from_slice(&[0; 16]);
    out.extend_from_slice(&data);
    out.extend_from_slice(b"\xAB\xCD\xEFMaxMind.com");
    let m = &mut out;
    map(m, 9);
    string(m, "binary_format_major_version");
    uint(m, 5, 2);
    string(m, "binary_format_minor_version");
    uint(m, 5, 0);
    string(m, "build_epoch");
    extended_uint(m, 9, 1_700_000_000);
    string(m, "database_type");
    string(m, "steer-test-Country");
    string(m, "description");
    map(m, 1);
    string(m, "en");
    string(m, "steer test database");
    string(m, "ip_version");
    uint(m, 5, 6);
    string(m, "languages");
    m.extend_from_slice(&[1, 11 - 7]);
    string(m, "en");
    string(m, "node_count");
    uint(m, 6, count as u64);
    string(m, "record_size");
    uint(m, 5, 24);
    out
}

fn map(out: &mut Vec<u8>, entries: u8) {
    out.push((7 << 5) | entries);
}

fn string(out: &mut Vec<u8>, s: &str) {
    assert!(s.len() < 29);
    out.push((2 << 5) | s.len() as u8);
    out.extend_from_slice(s.as_bytes());
}

/// An unsigned integer of type `kind` (5 = uint16, 6 = uint32) in as few
/// bytes as it needs.
fn uint(out: &mut Vec<u8>, kind: u8, v: u64) {
    let bytes = v.to_be_bytes();
    let skip = bytes.iter().take_while(|b| **b == 0).count();
    out.push((kind << 5) | (8 - skip) as u8);
    out.extend_from_slice(&bytes[skip..]);
}

/// An extended-type unsigned integer (9 = uint64).
fn extended_uint(out: &mut Vec<u8>, kind: u8, v: u64) {
    let bytes = v.to_be_bytes();
    let skip = bytes.iter().take_while(|b| **b == 0).count();
    out.push((8 - skip) as u8);
    out.push(kind - 7);
    out.extend_from_slice(&bytes[skip..]);
}
