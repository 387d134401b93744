//! IPv4 and IPv6 prefixes (`encap_source_v4`, `encap_source_v6`, and the
//! client prefixes of `[[client_classes]]`).

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use crate::defaults::{CLIENT_PREFIX_V4_MAX, CLIENT_PREFIX_V6_MAX};
use crate::model::{ClientPrefix, Ipv4Prefix, Ipv6Prefix};

impl ClientPrefix {
    /// The address as 128 bits, IPv4 in the top 32 (for masking).
    fn bits(&self) -> u128 {
        match self.addr {
            IpAddr::V4(a) => u128::from(u32::from(a)) << 96,
            IpAddr::V6(a) => u128::from(a),
        }
    }

    /// Whether `other` lies inside this prefix (or is it).
    pub fn contains(&self, other: &ClientPrefix) -> bool {
        if self.addr.is_ipv4() != other.addr.is_ipv4() || other.len < self.len {
            return false;
        }
        let mask = !u128::MAX.checked_shr(u32::from(self.len)).unwrap_or(0);
        other.bits() & mask == self.bits()
    }

    /// Whether `addr` lies inside this prefix.
    pub fn contains_addr(&self, addr: IpAddr) -> bool {
        let max = if addr.is_ipv4() { 32 } else { 128 };
        self.contains(&ClientPrefix { addr, len: max })
    }

    /// This prefix cut to `len` bits (host bits cleared); `len` must not be
    /// longer than the family's address.
    pub(crate) fn truncate(addr: IpAddr, len: u8) -> ClientPrefix {
        match addr {
            IpAddr::V4(a) => {
                let mask = !u32::MAX.checked_shr(u32::from(len)).unwrap_or(0);
                ClientPrefix {
                    addr: IpAddr::V4(Ipv4Addr::from(u32::from(a) & mask)),
                    len,
                }
            }
            IpAddr::V6(a) => {
                let mask = !u128::MAX.checked_shr(u32::from(len)).unwrap_or(0);
                ClientPrefix {
                    addr: IpAddr::V6(Ipv6Addr::from(u128::from(a) & mask)),
                    len,
                }
            }
        }
    }

    /// The longest length accepted for this family.
    pub fn max_len(addr: IpAddr) -> u8 {
        if addr.is_ipv4() {
            CLIENT_PREFIX_V4_MAX
        } else {
            CLIENT_PREFIX_V6_MAX
        }
    }
}

impl fmt::Display for ClientPrefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

impl FromStr for ClientPrefix {
    type Err = String;

    /// Parses `"192.0.2.0/24"` or `"2001:db8::/48"`: host bits zero, IPv4
    /// length 1..=24, IPv6 length 1..=48, not IPv4-mapped.
    fn from_str(s: &str) -> Result<Self, String> {
        let (addr, len) = split_prefix(s, "192.0.2.0/24")?;
        let addr: IpAddr = addr
            .parse()
            .map_err(|_| format!("{s:?}: {addr:?} is not an IP address"))?;
        if let IpAddr::V6(a) = addr {
            if a.to_ipv4_mapped().is_some() && len >= 96 {
                return Err(format!(
                    "{s:?} is an IPv4-mapped IPv6 prefix; write the IPv4 prefix instead"
                ));
            }
        }
        let (family, max) = if addr.is_ipv4() {
            ("IPv4", CLIENT_PREFIX_V4_MAX)
        } else {
            ("IPv6", CLIENT_PREFIX_V6_MAX)
        };
        if len == 0 || len > max {
            return Err(format!(
                "{s:?}: an {family} client prefix length must be between 1 and {max} \
                 (the data plane's class lookup is per /{max} at most; split a catch-all \
                 /0 into two /1s)"
            ));
        }
        let p = ClientPrefix::truncate(addr, len);
        if p.addr != addr {
            return Err(format!("{s:?} has host bits set (did you mean \"{p}\"?)"));
        }
        Ok(p)
    }
}

impl Ipv4Prefix {
    /// The bits a flow may vary: `base | (hash & host_mask)`.
    pub fn host_mask(&self) -> u32 {
        u32::MAX.checked_shr(u32::from(self.len)).unwrap_or(0)
    }
}

impl Ipv6Prefix {
    /// The bits of the last 32-bit word a flow may vary.
    pub fn host_mask(&self) -> u32 {
        u32::MAX
            .checked_shr(u32::from(self.len.saturating_sub(96)))
            .unwrap_or(0)
    }
}

impl fmt::Display for Ipv4Prefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

impl fmt::Display for Ipv6Prefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

fn split_prefix(s: &str, example: &str) -> Result<(String, u8), String> {
    let Some((addr, len)) = s.split_once('/') else {
        return Err(format!(
            "{s:?} is not a prefix (write it as address/length, e.g. {example:?})"
        ));
    };
    // `u8::from_str` accepts a leading '+': only digits are a length.
    let len: u8 = Some(len)
        .filter(|l| !l.is_empty() && l.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|l| l.parse().ok())
        .ok_or_else(|| {
            format!("{s:?}: {len:?} is not a prefix length (write digits only, e.g. /24)")
        })?;
    Ok((addr.to_string(), len))
}

impl FromStr for Ipv4Prefix {
    type Err = String;

    /// Parses `"198.18.0.0/24"`. Host bits must be zero.
    fn from_str(s: &str) -> Result<Self, String> {
        let (addr, len) = split_prefix(s, "198.18.0.0/24")?;
        let addr: Ipv4Addr = addr
            .parse()
            .map_err(|_| format!("{s:?}: {addr:?} is not an IPv4 address"))?;
        if len > 32 {
            return Err(format!(
                "{s:?}: prefix length {len} is out of range (must be between 0 and 32)"
            ));
        }
        let net_mask = !u32::MAX.checked_shr(u32::from(len)).unwrap_or(0);
        let bits = u32::from(addr);
        if bits & !net_mask != 0 {
            let fixed = Ipv4Addr::from(bits & net_mask);
            return Err(format!(
                "{s:?} has host bits set (did you mean \"{fixed}/{len}\"?)"
            ));
        }
        Ok(Ipv4Prefix { addr, len })
    }
}

impl FromStr for Ipv6Prefix {
    type Err = String;

    /// Parses `"2001:db8:ffff::/96"`. Host bits must be zero; length 96..=128.
    fn from_str(s: &str) -> Result<Self, String> {
        let (addr, len) = split_prefix(s, "2001:db8:ffff::/96")?;
        let addr: Ipv6Addr = addr
            .parse()
            .map_err(|_| format!("{s:?}: {addr:?} is not an IPv6 address"))?;
        if len > 128 {
            return Err(format!(
                "{s:?}: prefix length {len} is out of range (must be between 96 and 128)"
            ));
        }
        if len < 96 {
            return Err(format!(
                "{s:?}: prefix length {len} is too short: only the last 32 bits of the \
                 encapsulation source vary, so use a length between 96 and 128 (e.g. /96)"
            ));
        }
        let net_mask = !u128::MAX.checked_shr(u32::from(len)).unwrap_or(0);
        let bits = u128::from(addr);
        if bits & !net_mask != 0 {
            let fixed = Ipv6Addr::from(bits & net_mask);
            return Err(format!(
                "{s:?} has host bits set (did you mean \"{fixed}/{len}\"?)"
            ));
        }
        Ok(Ipv6Prefix { addr, len })
    }
}
