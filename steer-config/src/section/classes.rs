//! `[[client_classes]]` and `[geoip]`: named sets of client prefixes, read
//! inline, from prefix files and (through a MaxMind database) from country
//! and continent codes, each with a preferred region order and optional
//! data residency.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;

use toml::{Table, Value};

use super::services::check_name_list;
use super::{quoted, Defined};
use crate::defaults::{
    CONTINENTS, MAX_CLIENT_CLASSES, MAX_FILE_ERRORS, MAX_GEOIP_BYTES, MAX_PREFIX_FILES,
};
use crate::error::join;
use crate::files::{read_limited, read_up_to};
use crate::geoip::{self, Wanted};
use crate::model::{ClientPrefix, PClientClass, PGeoIp};
use crate::values::{name, non_empty_string, string};
use crate::walker::{Node, Walker};

/// Where a prefix came from: `source` is [`INLINE`], [`GEOIP`] or `k + 1`
/// for `prefix_files[k]`; `pos` is the index in `prefixes` or the line of
/// the file.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Origin {
    source: u16,
    pos: u32,
}

const INLINE: u16 = 0;
const GEOIP: u16 = u16::MAX;

/// A prefix as read, with its origin.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Sourced {
    pub(crate) prefix: ClientPrefix,
    origin: Origin,
}

pub(super) fn read_geoip(w: &mut Walker, t: &Table) -> PGeoIp {
    let n = Node::new(w, "geoip", t);
    let mut geoip = PGeoIp {
        database: n.required(
            w,
            "database",
            "e.g. \"/var/lib/GeoIP/GeoLite2-Country.mmdb\"",
            |v| non_empty_string(v).map(PathBuf::from),
        ),
        at: "geoip".to_string(),
    };
    n.done(w);
    if let Some(db) = geoip.database.take() {
        geoip.database = Some(w.resolve(&db).unwrap_or(db));
    }
    geoip
}

pub(super) fn read(w: &mut Walker, at: &str, t: &Table) -> PClientClass {
    let n = Node::new(w, at, t);
    let name = n.required(w, "name", "e.g. \"eu\"", name);
    let inline = n.list(w, "prefixes", |v| string(v)?.parse::<ClientPrefix>());
    let files = n.list(w, "prefix_files", |v| {
        non_empty_string(v).map(PathBuf::from)
    });
    let countries = n.list(w, "countries", country);
    let continents = n.list(w, "continents", continent);
    let regions = n.list(w, "regions", non_empty_string);
    let residency = n.has("allowed_regions");
    let allowed = n
        .list(w, "allowed_regions", non_empty_string)
        .map(|l| residency.then_some(l));
    n.done(w);

    let mut prefixes: Option<Vec<Sourced>> = None;
    if let Some(inline) = &inline {
        let mut all: Option<Vec<Sourced>> = Some(Vec::with_capacity(inline.len()));
        for (i, p) in inline.iter().enumerate() {
            match (p, all.as_mut()) {
                (Some(prefix), Some(all)) => all.push(Sourced {
                    prefix: *prefix,
                    origin: Origin {
                        source: INLINE,
                        pos: i as u32,
                    },
                }),
                _ => all = None,
            }
        }
        prefixes = all;
    }
    let files = files.filter(|files| {
        let ok = files.len() <= MAX_PREFIX_FILES;
        if !ok {
            w.err(
                join(at, "prefix_files"),
                format!(
                    "{} files are more than a class may list ({MAX_PREFIX_FILES}); \
                     concatenate some",
                    files.len()
                ),
            );
        }
        ok
    });
    // Resolved file paths; the files' prefixes join `prefixes`.
    let prefix_files = files.as_ref().map(|files| {
        let mut resolved_all = Vec::with_capacity(files.len());
        for (k, file) in files.iter().enumerate() {
            let Some(file) = file else {
                resolved_all.push(None);
                continue;
            };
            let path = format!("{}[{k}]", join(at, "prefix_files"));
            let Some(resolved) = w.resolve(file) else {
                w.err(
                    path,
                    "prefix files are read only when the config is loaded from a file \
                     (steer check FILE, steer run --config FILE): relative paths resolve \
                     against its directory",
                );
                resolved_all.push(None);
                continue;
            };
            match read_prefix_file(w, &path, &resolved, (k + 1) as u16) {
                Some(found) => {
                    if let Some(all) = prefixes.as_mut() {
                        all.extend(found);
                    }
                    resolved_all.push(Some(resolved));
                }
                None => resolved_all.push(None),
            }
        }
        resolved_all
    });
    if !matches!(&prefix_files, Some(f) if f.iter().all(Option::is_some)) {
        prefixes = None;
    }
    PClientClass {
        name,
        prefixes,
        prefix_files,
        countries,
        continents,
        regions,
        allowed_regions: allowed,
        at: at.to_string(),
    }
}

/// `countries` entry: an ISO 3166 alpha-2 code, upper case.
fn country(v: &Value) -> Result<String, String> {
    let s = string(v)?;
    if s.len() == 2 && s.bytes().all(|b| b.is_ascii_uppercase()) {
        Ok(s)
    } else {
        Err(format!(
            "{s:?} is not a country code (use ISO 3166 alpha-2 codes in upper case, e.g. \"DE\")"
        ))
    }
}

/// `continents` entry: one of [`CONTINENTS`].
fn continent(v: &Value) -> Result<String, String> {
    let s = string(v)?;
    if CONTINENTS.contains(&s.as_str()) {
        Ok(s)
    } else {
        Err(format!(
            "{s:?} is not a continent code (expected one of: {})",
            CONTINENTS.join(", ")
        ))
    }
}

/// Reads one prefix file: one CIDR per line, blank lines and `#` comments
/// allowed. Bad lines are recorded at `path` (the first
/// [`MAX_FILE_ERRORS`], then a count); `None` if the file is unreadable or
/// has a bad line.
fn read_prefix_file(
    w: &mut Walker,
    path: &str,
    file: &std::path::Path,
    source: u16,
) -> Option<Vec<Sourced>> {
    let shown = file.display();
    let bytes = match read_limited(file) {
        Ok(b) => b,
        Err(m) => {
            w.err(path, format!("cannot read {shown}: {m}"));
            return None;
        }
    };
    let Ok(text) = std::str::from_utf8(&bytes) else {
        w.err(
            path,
            format!("cannot read {shown}: it is not UTF-8 text (one CIDR per line)"),
        );
        return None;
    };
    let mut out = Vec::with_capacity(text.len() / 12);
    let mut bad = 0usize;
    for (i, line) in text.lines().enumerate() {
        let line_no = i + 1;
        let entry = line.split('#').next().unwrap_or("").trim();
        if entry.is_empty() {
            continue;
        }
        match entry.parse::<ClientPrefix>() {
            Ok(prefix) => out.push(Sourced {
                prefix,
                origin: Origin {
                    source,
                    pos: line_no as u32,
                },
            }),
            Err(m) => {
                bad += 1;
                if bad <= MAX_FILE_ERRORS {
                    w.err(path, format!("{shown} line {line_no}: {m}"));
                }
            }
        }
    }
    if bad > MAX_FILE_ERRORS {
        w.err(
            path,
            format!(
                "{shown}: {} more bad lines not shown ({bad} in all)",
                bad - MAX_FILE_ERRORS
            ),
        );
    }
    (bad == 0).then_some(out)
}

/// Adds the prefixes of `countries` and `continents` from the `[geoip]`
/// database, then sorts and deduplicates every class's prefixes. A
/// database network longer than the data plane accepts is cut to /24
/// (IPv4) or /48 (IPv6), unless the cut prefix would then belong to two
/// classes: then it is left out of both.
pub(super) fn resolve(w: &mut Walker, classes: &mut [PClientClass], geoip: Option<&PGeoIp>) {
    let wanted: Vec<Wanted> = classes
        .iter()
        .map(|c| Wanted {
            countries: c.countries.iter().flatten().flatten().cloned().collect(),
            continents: c.continents.iter().flatten().flatten().cloned().collect(),
        })
        .collect();
    let users: Vec<usize> = (0..classes.len())
        .filter(|&i| !wanted[i].countries.is_empty() || !wanted[i].continents.is_empty())
        .collect();
    if !users.is_empty() {
        match geoip {
            None => {
                for &i in &users {
                    let c = &classes[i];
                    let key = if wanted[i].countries.is_empty() {
                        "continents"
                    } else {
                        "countries"
                    };
                    w.err(
                        join(&c.at, key),
                        format!(
                            "{key} are resolved through a MaxMind-format database: add \
                             [geoip] database = \"/var/lib/GeoIP/GeoLite2-Country.mmdb\" \
                             (or list the prefixes in prefixes or prefix_files)"
                        ),
                    );
                }
                for &i in &users {
                    classes[i].prefixes = None;
                }
            }
            Some(g) => match load_geoip(w, g, &wanted) {
                Some(found) => add_geoip(classes, found),
                None => {
                    for &i in &users {
                        classes[i].prefixes = None;
                    }
                }
            },
        }
    }
    for c in classes.iter_mut() {
        if let Some(p) = c.prefixes.as_mut() {
            // Stable: of equal prefixes, the first origin stays.
            p.sort_by_key(|s| s.prefix);
            p.dedup_by_key(|s| s.prefix);
        }
    }
}

fn load_geoip(w: &mut Walker, g: &PGeoIp, wanted: &[Wanted]) -> Option<Vec<geoip::Found>> {
    let db = g.database.as_ref()?;
    let path = join(&g.at, "database");
    let Some(resolved) = w.base.is_some().then(|| db.clone()) else {
        w.err(
            path,
            "the geoip database is read only when the config is loaded from a file \
             (steer check FILE, steer run --config FILE)",
        );
        return None;
    };
    let shown = resolved.display();
    let bytes = match read_up_to(&resolved, MAX_GEOIP_BYTES) {
        Ok(b) => b,
        Err(m) => {
            w.err(path, format!("cannot read {shown}: {m}"));
            return None;
        }
    };
    match geoip::resolve(bytes, wanted) {
        Ok(found) => Some(found),
        Err(m) => {
            w.err(path, format!("{shown} {m}"));
            None
        }
    }
}

fn add_geoip(classes: &mut [PClientClass], mut found: Vec<geoip::Found>) {
    found.sort_by_key(|f| (f.prefix, f.class));
    found.dedup_by_key(|f| (f.prefix, f.class));
    let mut i = 0;
    while i < found.len() {
        let mut j = i + 1;
        while j < found.len() && found[j].prefix == found[i].prefix {
            j += 1;
        }
        let shared = j - i > 1;
        for f in &found[i..j] {
            if shared && f.widened {
                continue;
            }
            if let Some(p) = classes[f.class].prefixes.as_mut() {
                p.push(Sourced {
                    prefix: f.prefix,
                    origin: Origin {
                        source: GEOIP,
                        pos: 0,
                    },
                });
            }
        }
        i = j;
    }
}

/// Where a class's prefix came from: its path and a note for the message.
fn place(c: &PClientClass, origin: Origin) -> (String, String) {
    match origin.source {
        INLINE => (
            format!("{}[{}]", join(&c.at, "prefixes"), origin.pos),
            String::new(),
        ),
        GEOIP => {
            let key = if c.countries.as_ref().is_some_and(|l| !l.is_empty()) {
                "countries"
            } else {
                "continents"
            };
            (join(&c.at, key), " (from the geoip database)".to_string())
        }
        k => {
            let file = c
                .prefix_files
                .as_ref()
                .and_then(|f| f.get(usize::from(k) - 1))
                .and_then(|f| f.as_ref())
                .map_or_else(|| "?".to_string(), |f| f.display().to_string());
            (
                format!("{}[{}]", join(&c.at, "prefix_files"), k - 1),
                format!(" ({file} line {})", origin.pos),
            )
        }
    }
}

/// Region references, residency, the class limit, and the prefixes across
/// classes: a prefix in two classes, and a class nested inside a residency
/// class without a subset of its allowed regions.
pub(super) fn validate(w: &mut Walker, classes: &[PClientClass], names: &Defined<'_>) {
    if classes.len() > MAX_CLIENT_CLASSES {
        w.err(
            "client_classes",
            format!(
                "{} classes are more than the data plane can tell apart ({MAX_CLIENT_CLASSES}); \
                 merge some",
                classes.len()
            ),
        );
    }
    for c in classes {
        if let Some(regions) = &c.regions {
            check_name_list(
                w,
                &join(&c.at, "regions"),
                ("region", "regions"),
                regions,
                &names.regions,
            );
        }
        if let Some(Some(allowed)) = &c.allowed_regions {
            check_name_list(
                w,
                &join(&c.at, "allowed_regions"),
                ("region", "regions"),
                allowed,
                &names.regions,
            );
            if allowed.is_empty() {
                w.err(
                    join(&c.at, "allowed_regions"),
                    "is empty, which would drop every new flow of the class: list the \
                     regions its flows may use, or remove the key",
                );
            }
        }
        let sources = [&c.countries, &c.continents]
            .iter()
            .any(|l| l.as_ref().is_some_and(|l| !l.is_empty()))
            || c.prefix_files.as_ref().is_some_and(|l| !l.is_empty())
            || c.prefixes.as_ref().is_some_and(|l| !l.is_empty());
        let read_failed = c.prefixes.is_none();
        if !sources && !read_failed {
            w.err(
                c.at.clone(),
                "matches no client: give prefixes, prefix_files, countries or continents",
            );
        }
    }
    check_prefixes(w, classes);
}

/// One pass over every class's prefixes in address order: a prefix sorts
/// before the prefixes inside it, so a stack of the enclosing prefixes
/// gives each prefix its innermost enclosing residency class.
fn check_prefixes(w: &mut Walker, classes: &[PClientClass]) {
    let mut all: Vec<(ClientPrefix, u16, Origin)> = Vec::new();
    for (ci, c) in classes.iter().enumerate().take(MAX_CLIENT_CLASSES) {
        for s in c.prefixes.iter().flatten() {
            all.push((s.prefix, ci as u16, s.origin));
        }
    }
    // Stable and each class already sorted: a merge of sorted runs.
    all.sort_by_key(|e| e.0);
    let allowed: Vec<Option<HashSet<&str>>> = classes
        .iter()
        .map(|c| match &c.allowed_regions {
            Some(Some(list)) => Some(list.iter().flatten().map(String::as_str).collect()),
            _ => None,
        })
        .collect();
    // (class, other class) -> (count, first prefix, its origin, other prefix)
    type Pairs = HashMap<(u16, u16), (usize, ClientPrefix, Origin, ClientPrefix)>;
    let mut duplicates: Pairs = HashMap::new();
    let mut nested: Pairs = HashMap::new();
    let note = |map: &mut Pairs, key, p, o, q| {
        map.entry(key)
            .and_modify(|e: &mut (usize, ClientPrefix, Origin, ClientPrefix)| e.0 += 1)
            .or_insert((1, p, o, q));
    };
    // (prefix, its class, innermost residency class enclosing or being it)
    type Open = (ClientPrefix, u16, Option<(u16, ClientPrefix)>);
    let mut stack: Vec<Open> = Vec::new();
    for &(p, c, o) in &all {
        while stack.last().is_some_and(|t| !t.0.contains(&p)) {
            stack.pop();
        }
        let enclosing = stack.last().copied();
        if let Some((q, qc, _)) = enclosing {
            if q == p && qc != c {
                note(&mut duplicates, (c, qc), p, o, q);
                continue;
            }
        }
        let outer = enclosing.and_then(|t| t.2);
        if let Some((rc, rp)) = outer {
            if rc != c && !is_subset(&allowed[usize::from(c)], &allowed[usize::from(rc)]) {
                note(&mut nested, (c, rc), p, o, rp);
            }
        }
        let own = if allowed[usize::from(c)].is_some() {
            Some((c, p))
        } else {
            outer
        };
        stack.push((p, c, own));
    }
    let mut duplicates: Vec<_> = duplicates.into_iter().collect();
    duplicates.sort_by_key(|(k, _)| *k);
    for ((c, other), (count, p, o, _)) in duplicates {
        let (class, other) = (&classes[usize::from(c)], &classes[usize::from(other)]);
        let (path, note) = place(class, o);
        let more = if count > 1 {
            format!(" ({count} prefixes in common)")
        } else {
            String::new()
        };
        w.err(
            path,
            format!(
                "prefix {p}{note} is also in class{} ({}){more}: a client prefix can be in \
                 one class only; remove it from one of them",
                quoted(other.name.as_ref()),
                other.at
            ),
        );
    }
    let mut nested: Vec<_> = nested.into_iter().collect();
    nested.sort_by_key(|(k, _)| *k);
    for ((c, outer), (count, p, o, q)) in nested {
        let (class, outer) = (&classes[usize::from(c)], &classes[usize::from(outer)]);
        let (path, note) = place(class, o);
        let more = if count > 1 {
            format!(" ({count} such prefixes)")
        } else {
            String::new()
        };
        let theirs = allowed_list(outer);
        let what = if allowed[usize::from(c)].is_some() {
            format!(
                "its allowed_regions {} are not a subset",
                allowed_list(class)
            )
        } else {
            "it has no allowed_regions".to_string()
        };
        w.err(
            path,
            format!(
                "prefix {p}{note} lies inside {q} of residency class{} ({}){more}, but {what} \
                 of that class's {theirs}, so its flows could leave them: give class{} \
                 allowed_regions within {theirs}",
                quoted(outer.name.as_ref()),
                outer.at,
                quoted(class.name.as_ref()),
            ),
        );
    }
}

fn is_subset(inner: &Option<HashSet<&str>>, outer: &Option<HashSet<&str>>) -> bool {
    match (inner, outer) {
        (_, None) => true,
        (None, Some(_)) => false,
        (Some(i), Some(o)) => i.is_subset(o),
    }
}

/// `["eu-west", "eu-central"]`.
fn allowed_list(c: &PClientClass) -> String {
    let list: Vec<String> = c
        .allowed_regions
        .iter()
        .flatten()
        .flatten()
        .flatten()
        .map(|r| format!("{r:?}"))
        .collect();
    format!("[{}]", list.join(", "))
}
