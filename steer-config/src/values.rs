//! Value converters: one TOML value to one model value, or a message
//! saying what is wrong with it (the walker adds the path).

use std::net::IpAddr;
use std::time::Duration;

use toml::Value;

use crate::defaults::{MAX_IFNAME_LEN, MAX_NAME_LEN};
use crate::duration::parse_duration;
use crate::model::{keyword_list, Keyword, Milli};
use crate::walker::describe;

pub(crate) fn string(v: &Value) -> Result<String, String> {
    v.as_str()
        .map(str::to_string)
        .ok_or_else(|| format!("expected a string, found {}", describe(v)))
}

pub(crate) fn non_empty_string(v: &Value) -> Result<String, String> {
    let s = string(v)?;
    if s.is_empty() {
        return Err("must not be empty".to_string());
    }
    Ok(s)
}

pub(crate) fn boolean(v: &Value) -> Result<bool, String> {
    v.as_bool()
        .ok_or_else(|| format!("expected true or false, found {}", describe(v)))
}

pub(crate) fn int_in<T: TryFrom<i64>>(v: &Value, lo: i64, hi: i64) -> Result<T, String> {
    let Value::Integer(i) = v else {
        return Err(format!("expected an integer, found {}", describe(v)));
    };
    if !(lo..=hi).contains(i) {
        return Err(format!(
            "{i} is out of range (must be between {lo} and {hi})"
        ));
    }
    T::try_from(*i).map_err(|_| format!("{i} is out of range (must be between {lo} and {hi})"))
}

pub(crate) fn u32_in(lo: u32, hi: u32) -> impl Fn(&Value) -> Result<u32, String> {
    move |v| int_in(v, i64::from(lo), i64::from(hi))
}

pub(crate) fn keyword<T: Keyword>(v: &Value) -> Result<T, String> {
    let s = v
        .as_str()
        .ok_or_else(|| format!("expected a string, found {}", describe(v)))?;
    T::ALL
        .iter()
        .find(|(k, _)| *k == s)
        .map(|(_, t)| *t)
        .ok_or_else(|| {
            format!(
                "{s:?} is not a valid {} (expected one of: {})",
                T::WHAT,
                keyword_list::<T>()
            )
        })
}

pub(crate) fn name(v: &Value) -> Result<String, String> {
    let s = string(v)?;
    let ok = !s.is_empty()
        && s.len() <= MAX_NAME_LEN
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(s)
    } else {
        Err(format!(
            "{s:?} is not a valid name (use 1 to {MAX_NAME_LEN} ASCII letters, digits, '-', '_' or '.')"
        ))
    }
}

pub(crate) fn duration(v: &Value) -> Result<Duration, String> {
    match v {
        Value::String(s) => parse_duration(s),
        _ => Err(format!(
            "expected a duration string such as \"1s\" or \"250ms\", found {}",
            describe(v)
        )),
    }
}

pub(crate) fn ip_address(v: &Value) -> Result<IpAddr, String> {
    let s = v.as_str().ok_or_else(|| {
        format!(
            "expected an IP address string such as \"192.0.2.1\", found {}",
            describe(v)
        )
    })?;
    s.parse::<IpAddr>()
        .map_err(|_| format!("{s:?} is not an IP address"))
}

/// An address that can be a VIP or a backend: unicast, not loopback, not
/// unspecified, not IPv4-mapped.
pub(crate) fn unicast_address(v: &Value, role: &str) -> Result<IpAddr, String> {
    let ip = ip_address(v)?;
    let what = match ip {
        IpAddr::V4(a) if a.is_unspecified() => Some("the unspecified address"),
        IpAddr::V6(a) if a.is_unspecified() => Some("the unspecified address"),
        IpAddr::V4(a) if a.is_broadcast() => Some("the broadcast address"),
        _ if ip.is_multicast() => Some("a multicast address"),
        _ if ip.is_loopback() => Some("a loopback address"),
        _ => None,
    };
    if let Some(what) = what {
        return Err(format!(
            "{ip} is {what} and cannot be {role} (use a unicast address)"
        ));
    }
    if let IpAddr::V6(a) = ip {
        if let Some(v4) = a.to_ipv4_mapped() {
            return Err(format!(
                "{ip} is an IPv4-mapped IPv6 address; write the IPv4 address {v4} instead"
            ));
        }
    }
    Ok(ip)
}

pub(crate) fn mac_address(v: &Value) -> Result<[u8; 6], String> {
    let s = v.as_str().ok_or_else(|| {
        format!(
            "expected a MAC address string such as \"02:00:00:00:00:01\", found {}",
            describe(v)
        )
    })?;
    unicast_mac(
        s,
        "set the MAC of the next-hop router",
        "the next hop must be a unicast MAC",
    )
}

/// A unicast MAC address `"02:00:00:00:00:01"`; `zero` and `multicast` are
/// the advice for an all-zero and a multicast/broadcast one.
pub(crate) fn unicast_mac(s: &str, zero: &str, multicast: &str) -> Result<[u8; 6], String> {
    let bad = || {
        format!("{s:?} is not a MAC address (expected six hex pairs like \"02:00:00:00:00:01\")")
    };
    let mut mac = [0u8; 6];
    let mut parts = s.split(':');
    for byte in &mut mac {
        let part = parts.next().ok_or_else(bad)?;
        // `from_str_radix` accepts a leading '+': require two hex digits.
        if part.len() != 2 || !part.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(bad());
        }
        *byte = u8::from_str_radix(part, 16).map_err(|_| bad())?;
    }
    if parts.next().is_some() {
        return Err(bad());
    }
    if mac == [0; 6] {
        return Err(format!("{s:?} is the all-zero MAC address ({zero})"));
    }
    if mac[0] & 1 != 0 {
        return Err(format!(
            "{s:?} is a multicast or broadcast MAC address ({multicast})"
        ));
    }
    Ok(mac)
}

pub(crate) fn interface_name(v: &Value) -> Result<String, String> {
    let s = string(v)?;
    let ok = !s.is_empty()
        && s.len() <= MAX_IFNAME_LEN
        && s != "."
        && s != ".."
        && !s
            .chars()
            .any(|c| c == '/' || c == ':' || c.is_whitespace() || c.is_control());
    if ok {
        Ok(s)
    } else {
        Err(format!(
            "{s:?} is not a valid interface name (1 to {MAX_IFNAME_LEN} characters, \
             no spaces, '/' or ':')"
        ))
    }
}

pub(crate) fn http_path(v: &Value) -> Result<String, String> {
    let s = string(v)?;
    if !s.starts_with('/') {
        return Err(format!("{s:?} must start with \"/\" (e.g. \"/health\")"));
    }
    if s.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!(
            "{s:?} contains spaces or control characters (percent-encode them)"
        ));
    }
    Ok(s)
}

pub(crate) fn hostname(v: &Value) -> Result<String, String> {
    let s = non_empty_string(v)?;
    if s.chars()
        .any(|c| c.is_whitespace() || c.is_control() || c == '/')
    {
        return Err(format!("{s:?} is not a host name"));
    }
    Ok(s)
}

/// A non-negative decimal with at most three fractional digits, as a float
/// (`1.4`) or an integer (`1`).
pub(crate) fn milli(v: &Value) -> Result<Milli, String> {
    let x = match v {
        Value::Float(f) => *f,
        Value::Integer(i) => *i as f64,
        _ => return Err(format!("expected a number, found {}", describe(v))),
    };
    let thousandths = x * 1000.0;
    let rounded = thousandths.round();
    if !x.is_finite() || x < 0.0 || rounded > f64::from(u32::MAX) {
        return Err(format!(
            "{x} is out of range (must be a non-negative number)"
        ));
    }
    if (thousandths - rounded).abs() > 1e-6 {
        return Err(format!(
            "{x} has more than three decimals (write e.g. {:.3})",
            rounded / 1000.0
        ));
    }
    Ok(Milli(rounded as u32))
}
