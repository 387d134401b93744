//! Durations as the config writes them: `"250ms"`, `"1s"`, `"1m30s"`.

use std::time::Duration;

/// Parses a duration such as `"250ms"`, `"1s"`, `"2m"`, `"1h"` or a
/// combination like `"1m30s"`. Units: `ms`, `s`, `m`, `h`; whole numbers only.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let usage = || {
        format!(
            "{s:?} is not a duration (use a whole number and a unit: \"250ms\", \"1s\", \
             \"2m\", \"1h\"; units can be combined: \"1m30s\")"
        )
    };
    let too_long = || format!("{s:?} is too long a duration");
    if s.is_empty() {
        return Err(usage());
    }
    let bytes = s.as_bytes();
    let mut i = 0;
    let mut total_ms: u64 = 0;
    while i < bytes.len() {
        let start = i;
        while i < bytes.len() && bytes[i].is_ascii_digit() {
            i += 1;
        }
        if i == start {
            return Err(usage());
        }
        let n: u64 = s[start..i].parse().map_err(|_| too_long())?;
        let unit_start = i;
        while i < bytes.len() && bytes[i].is_ascii_alphabetic() {
            i += 1;
        }
        let unit_ms: u64 = match &s[unit_start..i] {
            "ms" => 1,
            "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            "" if i == bytes.len() && start == 0 => {
                return Err(format!(
                    "{s:?} has no unit (write e.g. \"{n}ms\" or \"{n}s\")"
                ))
            }
            _ => return Err(usage()),
        };
        total_ms = n
            .checked_mul(unit_ms)
            .and_then(|ms| total_ms.checked_add(ms))
            .ok_or_else(too_long)?;
    }
    Ok(Duration::from_millis(total_ms))
}

/// Formats a duration the way [`parse_duration`] reads it: `"1s"`, `"250ms"`,
/// `"1m30s"`, `"0s"`.
pub fn format_duration(d: Duration) -> String {
    if !d.subsec_nanos().is_multiple_of(1_000_000) {
        return format!("{d:?}");
    }
    let mut ms = d.as_millis();
    if ms == 0 {
        return "0s".to_string();
    }
    let mut out = String::new();
    for (unit, size) in [("h", 3_600_000u128), ("m", 60_000), ("s", 1_000), ("ms", 1)] {
        let n = ms / size;
        if n > 0 {
            out.push_str(&format!("{n}{unit}"));
            ms %= size;
        }
    }
    out
}
