//! Country and continent codes to client prefixes, through a MaxMind-format
//! database (`[geoip] database`): one pass over every network of the
//! database (`within` 0.0.0.0/0 or ::/0), keeping those whose
//! `country.iso_code` or `continent.code` a class asks for.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;

use maxminddb::{PathElement, Reader, WithinOptions};

use crate::model::ClientPrefix;

/// The codes one class asks for.
pub(crate) struct Wanted {
    pub(crate) countries: HashSet<String>,
    pub(crate) continents: HashSet<String>,
}

/// A prefix found for a class; `widened` if the database's network was
/// longer than the data plane accepts and was cut to /24 (IPv4) or /48
/// (IPv6).
pub(crate) struct Found {
    pub(crate) class: usize,
    pub(crate) prefix: ClientPrefix,
    pub(crate) widened: bool,
}

/// Every network of the database (`bytes`) that a class of `wanted` asks
/// for. A network in the IPv4-mapped part of an IPv6 database is returned
/// as IPv4.
pub(crate) fn resolve(bytes: Vec<u8>, wanted: &[Wanted]) -> Result<Vec<Found>, String> {
    let reader = Reader::from_source(bytes)
        .map_err(|e| format!("is not a MaxMind DB (.mmdb) database: {e}"))?;
    let all = if reader.metadata().ip_version == 6 {
        "::/0"
    } else {
        "0.0.0.0/0"
    };
    let networks = reader
        .within(
            all.parse().map_err(|_| "internal error: bad network")?,
            WithinOptions::default(),
        )
        .map_err(|e| format!("cannot be read: {e}"))?;
    // Many networks share one data record: decode each record once.
    let mut codes: HashMap<usize, (Option<String>, Option<String>)> = HashMap::new();
    let mut found = Vec::new();
    for item in networks {
        let item = item.map_err(|e| format!("is damaged: {e}"))?;
        let Some(offset) = item.offset() else {
            continue;
        };
        let (country, continent) = match codes.get(&offset) {
            Some(c) => c.clone(),
            None => {
                let country = item
                    .decode_path::<String>(&[
                        PathElement::Key("country"),
                        PathElement::Key("iso_code"),
                    ])
                    .ok()
                    .flatten();
                let continent = item
                    .decode_path::<String>(&[
                        PathElement::Key("continent"),
                        PathElement::Key("code"),
                    ])
                    .ok()
                    .flatten();
                codes.insert(offset, (country.clone(), continent.clone()));
                (country, continent)
            }
        };
        if country.is_none() && continent.is_none() {
            continue;
        }
        let net = item.network().map_err(|e| format!("is damaged: {e}"))?;
        let (addr, len): (IpAddr, u8) = (net.network(), net.prefix());
        if len == 0 {
            continue;
        }
        let max = ClientPrefix::max_len(addr);
        let prefix = ClientPrefix::truncate(addr, len.min(max));
        for (class, w) in wanted.iter().enumerate() {
            let hit = country.as_ref().is_some_and(|c| w.countries.contains(c))
                || continent.as_ref().is_some_and(|c| w.continents.contains(c));
            if hit {
                found.push(Found {
                    class,
                    prefix,
                    widened: len > max,
                });
            }
        }
    }
    Ok(found)
}
