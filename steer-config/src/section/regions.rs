//! `[[regions]]`: named groups of backends, with their traffic dial and
//! capacity. Their names are checked for uniqueness with the other
//! sections' (`section/mod.rs`); a region without backends is allowed.

use toml::{Table, Value};

use crate::defaults::{
    CAPACITY_SCALER_MAX, CAPACITY_SCALER_MIN_NONZERO, DEFAULT_CAPACITY_SCALER, DEFAULT_DIAL,
    DIAL_MAX, MAX_NEW_FLOWS_PER_SECOND,
};
use crate::model::{Milli, PRegion};
use crate::values::{int_in, milli, name, string, u32_in};
use crate::walker::{Node, Walker};

pub(super) fn read(w: &mut Walker, at: &str, t: &Table) -> PRegion {
    let n = Node::new(w, at, t);
    let region = PRegion {
        name: n.required(w, "name", "e.g. \"eu-west\"", name),
        description: n.optional(w, "description", string),
        dial: n.default(w, "dial", DEFAULT_DIAL, |v| {
            int_in(v, 0, i64::from(DIAL_MAX))
        }),
        max_new_flows_per_second: n.optional(
            w,
            "max_new_flows_per_second",
            u32_in(1, MAX_NEW_FLOWS_PER_SECOND),
        ),
        capacity_scaler: n.default(w, "capacity_scaler", DEFAULT_CAPACITY_SCALER, scaler),
        at: at.to_string(),
    };
    n.done(w);
    region
}

/// `capacity_scaler`: 0, or 0.1..=1.0 (Google Cloud's range).
fn scaler(v: &Value) -> Result<Milli, String> {
    let m = milli(v)?;
    if m == Milli(0) || (CAPACITY_SCALER_MIN_NONZERO..=CAPACITY_SCALER_MAX).contains(&m) {
        Ok(m)
    } else {
        Err(format!(
            "{m} is out of range (must be 0, which takes the region out of new flows, or \
             between {CAPACITY_SCALER_MIN_NONZERO} and {CAPACITY_SCALER_MAX})"
        ))
    }
}
