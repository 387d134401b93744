//! Region policies in the lab (docs/policies.md): client classes keyed on
//! the lab's client prefixes, and edits of a steer config (as a TOML
//! table) that the e2e scenarios and the demo share.
//!
//! The lab's clients sit in three IPv4 and three IPv6 prefixes
//! ([`super::topo::client_prefixes_v4`]); each pair becomes one class
//! whose preferred order starts with a different region.
use std::net::IpAddr;

use anyhow::{anyhow, Result};
use toml::{Table, Value};

use super::topo;

/// A client class of the lab: one IPv4 and one IPv6 client prefix and an
/// order of regions.
#[derive(Clone, Copy, Debug)]
pub struct GeoClass {
    pub name: &'static str,
    /// The class's IPv4 prefix (a client prefix of the lab, /24).
    pub v4: &'static str,
    /// The class's IPv6 prefix: the /48 around a client /64 of the lab
    /// (classes take IPv6 prefixes up to /48).
    pub v6: &'static str,
    /// The lab's client prefixes of this class (as `topo` names them).
    pub client_prefixes: [&'static str; 2],
    pub regions: [&'static str; 3],
}

/// The lab's three classes: each client prefix prefers another region.
pub const GEO_CLASSES: [GeoClass; 3] = [
    GeoClass {
        name: "europe",
        v4: "198.51.100.0/24",
        v6: "2001:db8:c::/48",
        client_prefixes: ["198.51.100.0/24", "2001:db8:c::/64"],
        regions: ["eu-west", "us-east", "ap-south"],
    },
    GeoClass {
        name: "americas",
        v4: "198.18.1.0/24",
        v6: "2001:db8:c1::/48",
        client_prefixes: ["198.18.1.0/24", "2001:db8:c1::/64"],
        regions: ["us-east", "eu-west", "ap-south"],
    },
    GeoClass {
        name: "apac",
        v4: "198.18.2.0/24",
        v6: "2001:db8:c2::/48",
        client_prefixes: ["198.18.2.0/24", "2001:db8:c2::/64"],
        regions: ["ap-south", "us-east", "eu-west"],
    },
];

/// The lab class of a client address (none for an address outside the
/// lab's client prefixes).
pub fn class_of(addr: IpAddr) -> Option<&'static GeoClass> {
    let prefix = topo::client_prefixes_v4()
        .into_iter()
        .chain(topo::client_prefixes_v6())
        .find(|p| p.addrs.contains(&addr))?
        .prefix;
    GEO_CLASSES
        .iter()
        .find(|c| c.client_prefixes.contains(&prefix))
}

/// The client addresses of one class, of one family.
pub fn class_addrs(class: &GeoClass, v6: bool) -> Vec<IpAddr> {
    let prefixes = if v6 {
        topo::client_prefixes_v6()
    } else {
        topo::client_prefixes_v4()
    };
    prefixes
        .into_iter()
        .filter(|p| class.client_prefixes.contains(&p.prefix))
        .flat_map(|p| p.addrs)
        .collect()
}

/// The region of a lab backend host (`eu1` → `eu-west`).
pub fn region_of(host: &str) -> Option<&'static str> {
    topo::backend_named(host).map(|b| b.region)
}

fn array_mut<'t>(t: &'t mut Table, key: &str) -> Result<&'t mut Vec<Value>> {
    t.get_mut(key)
        .and_then(Value::as_array_mut)
        .ok_or_else(|| anyhow!("the config has no [[{key}]]"))
}

fn named_mut<'t>(t: &'t mut Table, key: &str, name: &str) -> Result<&'t mut Table> {
    array_mut(t, key)?
        .iter_mut()
        .filter_map(Value::as_table_mut)
        .find(|e| e.get("name").and_then(Value::as_str) == Some(name))
        .ok_or_else(|| anyhow!("the config has no {key} entry named {name:?}"))
}

/// Sets `key` of service `service`.
pub fn set_service(t: &mut Table, service: &str, key: &str, v: impl Into<Value>) -> Result<()> {
    named_mut(t, "services", service)?.insert(key.into(), v.into());
    Ok(())
}

/// Sets `key` of region `region` (`dial`, `max_new_flows_per_second`, ...).
pub fn set_region(t: &mut Table, region: &str, key: &str, v: impl Into<Value>) -> Result<()> {
    named_mut(t, "regions", region)?.insert(key.into(), v.into());
    Ok(())
}

/// A TOML array of strings.
pub fn strings(v: &[&str]) -> Value {
    Value::Array(v.iter().map(|s| Value::String((*s).to_owned())).collect())
}

/// Adds the lab's [`GEO_CLASSES`] as `[[client_classes]]` (once), with
/// `allowed_regions` for the classes named in `residency`.
pub fn add_classes(t: &mut Table, residency: &[(&str, &[&str])]) -> Result<()> {
    if t.contains_key("client_classes") {
        return Ok(());
    }
    let mut list = Vec::new();
    for c in &GEO_CLASSES {
        let mut e = Table::new();
        e.insert("name".into(), c.name.into());
        e.insert("prefixes".into(), strings(&[c.v4, c.v6]));
        e.insert("regions".into(), strings(&c.regions));
        if let Some((_, allowed)) = residency.iter().find(|(n, _)| *n == c.name) {
            e.insert("allowed_regions".into(), strings(allowed));
        }
        list.push(Value::Table(e));
    }
    t.insert("client_classes".into(), Value::Array(list));
    Ok(())
}

/// Makes `services` geo services over the lab's classes (adding them).
pub fn make_geo(t: &mut Table, services: &[&str]) -> Result<()> {
    add_classes(t, &[])?;
    let names: Vec<&str> = GEO_CLASSES.iter().map(|c| c.name).collect();
    for s in services {
        set_service(t, s, "policy", "geo")?;
        set_service(t, s, "classes", strings(&names))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_lab_client_has_a_class() {
        for v6 in [false, true] {
            for a in topo::client_addrs(v6) {
                assert!(class_of(a).is_some(), "{a}");
            }
        }
        let eu = &GEO_CLASSES[0];
        assert_eq!(class_addrs(eu, false).len(), 10);
        assert_eq!(class_addrs(eu, true).len(), 10);
        assert_eq!(class_addrs(&GEO_CLASSES[1], false).len(), 5);
        // Each class's IPv4 and IPv6 prefix contains its clients.
        for c in &GEO_CLASSES {
            for a in class_addrs(c, false)
                .into_iter()
                .chain(class_addrs(c, true))
            {
                assert_eq!(class_of(a).map(|k| k.name), Some(c.name));
                let (net, len) = if a.is_ipv4() {
                    c.v4.split_once('/').unwrap()
                } else {
                    c.v6.split_once('/').unwrap()
                };
                let len: u32 = len.parse().unwrap();
                let net: IpAddr = net.parse().unwrap();
                let bits = |x: IpAddr| match x {
                    IpAddr::V4(v) => u128::from(u32::from(v)) << 96,
                    IpAddr::V6(v) => u128::from(v),
                };
                // IPv4 sits in the top 32 bits, so one mask works for both.
                let mask = !0u128 << (128 - len);
                assert_eq!(bits(a) & mask, bits(net) & mask, "{a} in {}", c.name);
            }
        }
        assert_eq!(region_of("ap2"), Some("ap-south"));
    }
}
