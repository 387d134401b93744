//! Reading and checking each section. Every file here reads one section
//! into its partial struct (see `partial.rs`), field by field in the order
//! the keys are listed in error messages, and checks what concerns it;
//! [`read`] and [`validate`] run them in order.

mod backends;
pub(crate) mod classes;
mod control_metrics;
pub(crate) mod dataplane;
mod health_checks;
mod regions;
mod services;

use std::collections::{HashMap, HashSet};

use toml::Table;

use crate::error::join;
use crate::model::{
    Config, ControlConfig, MetricsConfig, PBackend, PClientClass, PDataplane, PGeoIp, PHealthCheck,
    PRegion, PService, Policy,
};
use crate::walker::{Node, Walker};

/// A whole config as read.
pub(crate) struct Partial {
    dataplane: PDataplane,
    regions: Vec<PRegion>,
    backends: Vec<PBackend>,
    services: Vec<PService>,
    health_checks: Vec<PHealthCheck>,
    client_classes: Vec<PClientClass>,
    /// `None` if absent (or not a table: recorded).
    geoip: Option<PGeoIp>,
    control: Option<ControlConfig>,
    metrics: Option<MetricsConfig>,
}

/// Reads every section (the order is that of [`crate::error::ROOT_KEYS`]).
pub(crate) fn read(w: &mut Walker, root: &Table) -> Partial {
    let n = Node::new(w, "", root);
    let empty = Table::new();
    let dataplane = match n.table(w, "dataplane") {
        Ok(t) => dataplane::read(w, t.unwrap_or(&empty)),
        // Wrong type (recorded): read an empty table into a scratch walker so
        // that "missing" errors are not reported on top.
        Err(()) => dataplane::read(&mut Walker::default(), &empty),
    };
    let regions = n
        .tables(w, "regions")
        .into_iter()
        .map(|(path, t)| regions::read(w, &path, t))
        .collect();
    let backends = n
        .tables(w, "backends")
        .into_iter()
        .map(|(path, t)| backends::read(w, &path, t))
        .collect();
    let services = n
        .tables(w, "services")
        .into_iter()
        .map(|(path, t)| services::read(w, &path, t))
        .collect();
    let health_checks = n
        .tables(w, "health_checks")
        .into_iter()
        .map(|(path, t)| health_checks::read(w, &path, t))
        .collect();
    let mut client_classes: Vec<PClientClass> = n
        .tables(w, "client_classes")
        .into_iter()
        .map(|(path, t)| classes::read(w, &path, t))
        .collect();
    let geoip = match n.table(w, "geoip") {
        Ok(Some(t)) => Some(classes::read_geoip(w, t)),
        _ => None,
    };
    classes::resolve(w, &mut client_classes, geoip.as_ref());
    let control = match n.table(w, "control") {
        Ok(t) => control_metrics::read_control(w, t.unwrap_or(&empty)),
        Err(()) => None,
    };
    let metrics = match n.table(w, "metrics") {
        Ok(t) => control_metrics::read_metrics(w, t.unwrap_or(&empty)),
        Err(()) => None,
    };
    n.done(w);
    Partial {
        dataplane,
        regions,
        backends,
        services,
        health_checks,
        client_classes,
        geoip,
        control,
        metrics,
    }
}

impl Partial {
    /// The config, if every field is valid.
    pub(crate) fn finish(self) -> Option<Config> {
        fn all<P, T>(items: Vec<P>, finish: impl Fn(P) -> Option<T>) -> Option<Vec<T>> {
            items.into_iter().map(finish).collect()
        }
        Some(Config {
            dataplane: self.dataplane.finish()?,
            regions: all(self.regions, PRegion::finish)?,
            backends: all(self.backends, PBackend::finish)?,
            services: all(self.services, PService::finish)?,
            health_checks: all(self.health_checks, PHealthCheck::finish)?,
            client_classes: all(self.client_classes, PClientClass::finish)?,
            geoip: match self.geoip {
                Some(g) => Some(g.finish()?),
                None => None,
            },
            control: self.control?,
            metrics: self.metrics?,
        })
    }
}

/// `name -> (index, path)` of the first definition of each name.
pub(crate) type Names<'a> = HashMap<&'a str, (usize, &'a str)>;

/// The names defined in each section.
pub(crate) struct Defined<'a> {
    pub(crate) regions: Names<'a>,
    pub(crate) backends: Names<'a>,
    pub(crate) health_checks: Names<'a>,
    pub(crate) classes: Names<'a>,
}

/// Cross-reference checks, section by section.
pub(crate) fn validate(w: &mut Walker, p: &Partial) {
    let regions = unique_names(
        w,
        p.regions.iter().map(|r| (r.at.as_str(), r.name.as_deref())),
    );
    let backends = unique_names(
        w,
        p.backends
            .iter()
            .map(|b| (b.at.as_str(), b.name.as_deref())),
    );
    unique_names(
        w,
        p.services
            .iter()
            .map(|s| (s.at.as_str(), s.name.as_deref())),
    );
    let health_checks = unique_names(
        w,
        p.health_checks
            .iter()
            .map(|h| (h.at.as_str(), h.name.as_deref())),
    );
    let classes = unique_names(
        w,
        p.client_classes
            .iter()
            .map(|c| (c.at.as_str(), c.name.as_deref())),
    );
    let names = Defined {
        regions,
        backends,
        health_checks,
        classes,
    };
    backends::validate(w, &p.backends, &p.services, &names);
    let total_reals = services::validate(
        w,
        &p.services,
        &p.backends,
        &p.health_checks,
        &p.client_classes,
        &names,
    );
    classes::validate(w, &p.client_classes, &names);
    // Selection tables: each service has a default table, plus one per
    // client class with its own: the classes a geo service lists and every
    // residency class (they apply to every service).
    let residency: HashSet<&str> = p
        .client_classes
        .iter()
        .filter(|c| matches!(c.allowed_regions, Some(Some(_))))
        .filter_map(|c| c.name.as_deref())
        .collect();
    let tables: usize = p
        .services
        .iter()
        .map(|s| {
            let mut own = residency.clone();
            if let Some(Policy::Geo { classes }) = &s.policy {
                own.extend(classes.iter().map(String::as_str));
            }
            1 + own.len()
        })
        .sum();
    dataplane::validate(
        w,
        &p.dataplane,
        &p.backends,
        (p.services.len(), tables),
        total_reals,
    );
}

/// `name -> index of its first definition`; duplicates are recorded.
fn unique_names<'a>(
    w: &mut Walker,
    items: impl Iterator<Item = (&'a str, Option<&'a str>)>,
) -> Names<'a> {
    let mut seen: Names<'a> = HashMap::new();
    for (i, (path, name)) in items.enumerate() {
        let Some(name) = name else { continue };
        if let Some((_, first)) = seen.get(name) {
            w.err(
                join(path, "name"),
                format!("duplicate name {name:?} (also {first})"),
            );
        } else {
            seen.insert(name, (i, path));
        }
    }
    seen
}

/// `"(defined regions: a, b)"`, sorted, abbreviated when long.
pub(crate) fn defined<T>(what: &str, names: &HashMap<&str, T>) -> String {
    const SHOW: usize = 10;
    if names.is_empty() {
        return format!("(no {what} are defined)");
    }
    let mut sorted: Vec<&str> = names.keys().copied().collect();
    sorted.sort_unstable();
    let mut list = sorted
        .iter()
        .take(SHOW)
        .copied()
        .collect::<Vec<_>>()
        .join(", ");
    if sorted.len() > SHOW {
        list.push_str(&format!(", ... ({} more)", sorted.len() - SHOW));
    }
    format!("(defined {what}: {list})")
}

/// `" \"web\""` if the entry has a valid name.
pub(crate) fn quoted(name: Option<&String>) -> String {
    name.map(|n| format!(" {n:?}")).unwrap_or_default()
}

/// Records a reference to an undefined health check.
pub(crate) fn check_health_check_ref(
    w: &mut Walker,
    at: &str,
    check: &Option<Option<String>>,
    names: &Defined<'_>,
) {
    if let Some(Some(check)) = check {
        if !names.health_checks.contains_key(check.as_str()) {
            w.err(
                join(at, "health_check"),
                format!(
                    "unknown health check {check:?} {}",
                    defined("health checks", &names.health_checks)
                ),
            );
        }
    }
}
