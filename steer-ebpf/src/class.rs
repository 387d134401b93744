//! Client classes: which selection table a *new* flow of a VIP uses. Only
//! VIPs with `VIP_F_CLASSES` pay for it, and only when a flow is selected
//! (new flow, reselect, ICMP error without a conntrack entry): an
//! established flow hits conntrack first and never gets here.

use aya_ebpf::maps::lpm_trie::Key;
use steer_common::{class_v4_index, FlowKey, VipInfo, CLASS_V4_LANES, FAMILY_V4, VIP_F_CLASSES};

use crate::maps::{CLASS_TABLES, CLASS_V4, CLASS_V6, CLASS_V6_48};

/// The table id for a new flow of `vip` whose client-side key is `key`
/// (`key.src` is the client): the class's own table if the client has a
/// class and the VIP gives that class a table, else the VIP's default.
#[inline(always)]
pub fn table_id(vip: &VipInfo, key: &FlowKey) -> u32 {
    if vip.flags & VIP_F_CLASSES == 0 {
        return vip.table_id;
    }
    let class = client_class(key);
    if class == 0 {
        return vip.table_id;
    }
    let Some(row) = CLASS_TABLES.get(vip.vip_id) else {
        return vip.table_id;
    };
    // `class` is a u8 and the row has 256 entries: always in bounds.
    match row[class as usize] {
        0 => vip.table_id,
        t => t - 1,
    }
}

/// The client's class id (0 = none): IPv4, one array lookup by /24;
/// IPv6, one hash lookup of its /48 (an exact /48 with nothing longer
/// inside is the longest match there can be), else one longest-prefix
/// lookup on the top 64 bits.
#[inline(always)]
fn client_class(key: &FlowKey) -> u8 {
    let s = &key.src;
    if key.family == FAMILY_V4 {
        let p = class_v4_index([s[0], s[1], s[2], s[3]]);
        // A map sized below 2^21 values (no IPv4 classes) has no entry:
        // no class.
        match CLASS_V4.get(p / CLASS_V4_LANES) {
            Some(lanes) => lanes[(p % CLASS_V4_LANES) as usize],
            None => 0,
        }
    } else {
        // The /48 is the first six bytes of the key itself: no copy on the
        // stack, which has no room to spare.
        if let Some(k48) = s.first_chunk::<6>() {
            // SAFETY: the value is copied out at once; userspace may replace
            // it concurrently, which gives either the old class or the new.
            if let Some(c) = unsafe { CLASS_V6_48.get(k48) } {
                return (*c & 0xff) as u8;
            }
        }
        let k = Key::new(64, [s[0], s[1], s[2], s[3], s[4], s[5], s[6], s[7]]);
        match CLASS_V6.get(&k) {
            Some(c) => (*c & 0xff) as u8,
            None => 0,
        }
    }
}
