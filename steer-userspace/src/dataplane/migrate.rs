//! Moving the conntrack of an older steer into this one's maps.
//!
//! Before the per-family conntrack maps, steer kept every flow in one map,
//! `CONNTRACK`, whose 40-byte key had the addresses first. Its pin is
//! found at start; its entries are copied, key by key, into `CONNTRACK4`
//! (IPv4) and `CONNTRACK6` (IPv6), and the old pin is removed. The flows
//! keep their backends across the upgrade.

use std::path::Path;

use aya::maps::{HashMap, Map, MapData};
use steer_common::{names, CtValue, FlowKey, FlowKey4, FAMILY_V4, FAMILY_V6};

use super::{typed, Dataplane, DataplaneError, Result};

/// An entry's key as the older steer laid it out: source, destination
/// (IPv4 in the first 4 bytes of each), ports (wire order), protocol,
/// family, 2 bytes of padding.
pub(super) type LegacyKey = [u8; 40];

/// The flow key of a legacy entry in this steer's layout, or `None` if its
/// family byte is neither IPv4 nor IPv6.
pub(super) fn from_legacy(k: &LegacyKey) -> Option<FlowKey> {
    let family = k[37];
    if family != FAMILY_V4 && family != FAMILY_V6 {
        return None;
    }
    let mut key = FlowKey {
        // The old map stored the fields' own bytes: read them back as such.
        sport: u16::from_ne_bytes([k[32], k[33]]),
        dport: u16::from_ne_bytes([k[34], k[35]]),
        proto: k[36],
        family,
        ..Default::default()
    };
    if family == FAMILY_V4 {
        key.src[..4].copy_from_slice(&k[..4]);
        key.dst[..4].copy_from_slice(&k[16..20]);
    } else {
        key.src.copy_from_slice(&k[..16]);
        key.dst.copy_from_slice(&k[16..32]);
    }
    Some(key)
}

/// What moving a legacy conntrack did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Migrated {
    pub ipv4: u64,
    pub ipv6: u64,
    /// Entries that could not be read or written, or had no valid family.
    pub skipped: u64,
}

impl Dataplane {
    /// Copies the entries of the legacy conntrack pinned at `path` into
    /// `CONNTRACK4` and `CONNTRACK6`, then removes the pin. A pin that is
    /// not such a map (another key or value size) is left in place, with a
    /// warning, and nothing is copied.
    pub(super) fn migrate_legacy_conntrack(&mut self, path: &Path) -> Result<Migrated> {
        let opened = MapData::from_pin(path)
            .map_err(|e| e.to_string())
            .and_then(|data| {
                let capacity = data.info().map_err(|e| e.to_string())?.max_entries();
                let map = HashMap::try_from(Map::LruHashMap(data)).map_err(|e| e.to_string())?;
                Ok((map, capacity))
            });
        let (legacy, capacity): (HashMap<MapData, LegacyKey, CtValue>, u32) = match opened {
            Ok(m) => m,
            Err(error) => {
                tracing::warn!(
                    path = %path.display(),
                    %error,
                    "a pinned CONNTRACK that cannot be read as an older steer's is left in place; its flows are not carried over"
                );
                return Ok(Migrated::default());
            }
        };
        let mut done = Migrated::default();
        let mut v4: HashMap<&mut MapData, FlowKey4, CtValue> =
            typed(&mut self.ebpf, names::CONNTRACK4)?;
        let mut entries4 = Vec::new();
        let mut entries6 = Vec::new();
        // The old program may still be adding and evicting entries. An
        // iteration that loses its place ends early; one whose key was
        // evicted starts over from the first key (the kernel's
        // get_next_key), so it is bounded by the map's capacity (a key
        // read twice is written twice, the same entry). Entries not read
        // are left to be selected again by hash (the same backend while
        // the table is unchanged).
        for item in legacy.iter().take(capacity as usize) {
            let Ok((k, v)) = item else {
                done.skipped += 1;
                break;
            };
            match from_legacy(&k) {
                Some(key) if key.family == FAMILY_V4 => entries4.push((key.key4(), v)),
                Some(key) => entries6.push((key, v)),
                None => done.skipped += 1,
            }
        }
        for (k, v) in &entries4 {
            match v4.insert(k, v, 0) {
                Ok(()) => done.ipv4 += 1,
                Err(_) => done.skipped += 1,
            }
        }
        let mut v6: HashMap<&mut MapData, FlowKey, CtValue> =
            typed(&mut self.ebpf, names::CONNTRACK6)?;
        for (k, v) in &entries6 {
            match v6.insert(k, v, 0) {
                Ok(()) => done.ipv6 += 1,
                Err(_) => done.skipped += 1,
            }
        }
        drop(legacy);
        std::fs::remove_file(path).map_err(|source| DataplaneError::Io {
            what: "removing the conntrack pinned by an older steer",
            path: path.to_path_buf(),
            source,
        })?;
        tracing::info!(
            ipv4 = done.ipv4,
            ipv6 = done.ipv6,
            skipped = done.skipped,
            "moved the conntrack pinned by an older steer into CONNTRACK4 and CONNTRACK6"
        );
        Ok(done)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn legacy_keys_become_keys_of_this_layout() {
        // An IPv4 key as the older program wrote it: 192.0.2.7:40000 ->
        // 203.0.113.10:443, TCP.
        let mut old = [0u8; 40];
        old[..4].copy_from_slice(&[192, 0, 2, 7]);
        old[16..20].copy_from_slice(&[203, 0, 113, 10]);
        old[32..34].copy_from_slice(&40_000u16.to_be_bytes());
        old[34..36].copy_from_slice(&443u16.to_be_bytes());
        old[36] = 6;
        old[37] = FAMILY_V4;
        let k = from_legacy(&old).expect("IPv4");
        assert_eq!(u16::from_be_bytes(k.sport.to_ne_bytes()), 40_000);
        assert_eq!(u16::from_be_bytes(k.dport.to_ne_bytes()), 443);
        assert_eq!((k.proto, k.family), (6, FAMILY_V4));
        assert_eq!(k.key4().src, [192, 0, 2, 7]);
        assert_eq!(k.key4().dst, [203, 0, 113, 10]);
        assert_eq!(k.src[4..], [0; 12]);

        let mut old6 = [0u8; 40];
        for (i, b) in old6[..32].iter_mut().enumerate() {
            *b = i as u8 + 1;
        }
        old6[32..34].copy_from_slice(&53u16.to_be_bytes());
        old6[34..36].copy_from_slice(&5353u16.to_be_bytes());
        old6[36] = 17;
        old6[37] = FAMILY_V6;
        let k = from_legacy(&old6).expect("IPv6");
        assert_eq!(k.src[0], 1);
        assert_eq!(k.src[15], 16);
        assert_eq!(k.dst[0], 17);
        assert_eq!(k.dst[15], 32);
        assert_eq!(u16::from_be_bytes(k.sport.to_ne_bytes()), 53);
        assert_eq!(u16::from_be_bytes(k.dport.to_ne_bytes()), 5353);
        assert_eq!((k.proto, k.family), (17, FAMILY_V6));

        old6[37] = 9;
        assert_eq!(from_legacy(&old6), None);
    }
}
