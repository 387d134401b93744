//! What a reload changes, for the log and for `steer reload`'s answer:
//! computed from the old and the new config only.

use std::collections::BTreeMap;
use std::fmt;

use crate::config::{Backend, ClientClass, Config, HealthCheck, Policy, Region, Service};

/// One change between two configs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// `kind` (`service`, `backend`, `region`, `health check`) `name` is new.
    Added {
        kind: &'static str,
        name: String,
    },
    Removed {
        kind: &'static str,
        name: String,
    },
    /// Its settings changed; each entry is `what: old -> new`, or for a
    /// service's backends `backends: +added -removed`.
    Changed {
        kind: &'static str,
        name: String,
        what: Vec<String>,
    },
    /// Settings outside the named entries changed (`dataplane`).
    Section(&'static str),
}

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Change::Added { kind, name } => write!(f, "{kind} {name} added"),
            Change::Removed { kind, name } => write!(f, "{kind} {name} removed"),
            Change::Changed { kind, name, what } => {
                write!(f, "{kind} {name} changed: {}", what.join(", "))
            }
            Change::Section(s) => write!(f, "[{s}] settings changed"),
        }
    }
}

/// Every change from `old` to `new`: services (address, port, protocol,
/// affinity, health check, the backends that serve them), backends
/// (address, region, weight, health check), regions and health checks,
/// each added, removed or changed, in that order; then `[dataplane]` if any
/// of its reloadable settings changed. Empty when nothing changed.
pub fn config_changes(old: &Config, new: &Config) -> Vec<Change> {
    let mut out = Vec::new();
    diff(&mut out, "service", &old.services, &new.services, |a, b| {
        service_changes(old, a, new, b)
    });
    diff(
        &mut out,
        "backend",
        &old.backends,
        &new.backends,
        backend_changes,
    );
    diff(
        &mut out,
        "region",
        &old.regions,
        &new.regions,
        |a: &Region, b| {
            let cap = |r: &Region| {
                r.max_new_flows_per_second
                    .map_or_else(|| "none".to_string(), |m| m.to_string())
            };
            [
                field(
                    "description",
                    &a.description.as_deref().unwrap_or(""),
                    &b.description.as_deref().unwrap_or(""),
                ),
                field("dial", &a.dial, &b.dial),
                field("max_new_flows_per_second", &cap(a), &cap(b)),
                field("capacity_scaler", &a.capacity_scaler, &b.capacity_scaler),
            ]
            .into_iter()
            .flatten()
            .collect()
        },
    );
    diff(
        &mut out,
        "client class",
        &old.client_classes,
        &new.client_classes,
        class_changes,
    );
    diff(
        &mut out,
        "health check",
        &old.health_checks,
        &new.health_checks,
        |a: &HealthCheck, b| {
            if a == b {
                Vec::new()
            } else {
                vec!["settings".to_string()]
            }
        },
    );
    if old.dataplane != new.dataplane {
        out.push(Change::Section("dataplane"));
    }
    if old.geoip != new.geoip {
        out.push(Change::Section("geoip"));
    }
    out
}

fn class_changes(a: &ClientClass, b: &ClientClass) -> Vec<String> {
    let list = |v: &[String]| format!("[{}]", v.join(", "));
    let allowed = |c: &ClientClass| c.allowed_regions.as_deref().map_or("any".into(), list);
    let mut what: Vec<String> = [
        field("regions", &list(&a.regions), &list(&b.regions)),
        field("allowed_regions", &allowed(a), &allowed(b)),
    ]
    .into_iter()
    .flatten()
    .collect();
    if a.prefixes != b.prefixes {
        let before: std::collections::BTreeSet<_> = a.prefixes.iter().collect();
        let after: std::collections::BTreeSet<_> = b.prefixes.iter().collect();
        what.push(format!(
            "prefixes +{} -{} (now {})",
            after.difference(&before).count(),
            before.difference(&after).count(),
            b.prefixes.len()
        ));
    }
    what
}

/// A service's policy in a line: `geo (classes eu, apac)`.
fn policy_words(p: &Policy) -> String {
    match p {
        Policy::Maglev => "maglev".into(),
        Policy::Weighted { weights } => format!(
            "weighted ({})",
            weights
                .iter()
                .map(|(r, w)| format!("{r}={w}"))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        Policy::Failover { tiers } => format!(
            "failover ({})",
            tiers
                .iter()
                .map(|t| format!("[{}]", t.join(", ")))
                .collect::<Vec<_>>()
                .join(" ")
        ),
        Policy::Geo { classes } => format!("geo (classes {})", classes.join(", ")),
        Policy::Latency => "latency".into(),
    }
}

trait Named {
    fn name(&self) -> &str;
}
impl Named for Service {
    fn name(&self) -> &str {
        &self.name
    }
}
impl Named for Backend {
    fn name(&self) -> &str {
        &self.name
    }
}
impl Named for Region {
    fn name(&self) -> &str {
        &self.name
    }
}
impl Named for ClientClass {
    fn name(&self) -> &str {
        &self.name
    }
}
impl Named for HealthCheck {
    fn name(&self) -> &str {
        &self.name
    }
}

/// Added, removed and changed entries of one list, by name, in name order.
fn diff<T: Named>(
    out: &mut Vec<Change>,
    kind: &'static str,
    old: &[T],
    new: &[T],
    changes: impl Fn(&T, &T) -> Vec<String>,
) {
    let old: BTreeMap<&str, &T> = old.iter().map(|x| (x.name(), x)).collect();
    let new: BTreeMap<&str, &T> = new.iter().map(|x| (x.name(), x)).collect();
    for (name, n) in &new {
        match old.get(name) {
            None => out.push(Change::Added {
                kind,
                name: name.to_string(),
            }),
            Some(o) => {
                let what = changes(o, n);
                if !what.is_empty() {
                    out.push(Change::Changed {
                        kind,
                        name: name.to_string(),
                        what,
                    });
                }
            }
        }
    }
    for name in old.keys().filter(|n| !new.contains_key(*n)) {
        out.push(Change::Removed {
            kind,
            name: name.to_string(),
        });
    }
}

fn field<T: fmt::Display + PartialEq + ?Sized>(what: &str, old: &T, new: &T) -> Option<String> {
    (old != new).then(|| format!("{what} {old} -> {new}"))
}

fn opt(s: &Option<String>) -> &str {
    s.as_deref().unwrap_or("none")
}

fn service_changes(old_cfg: &Config, a: &Service, new_cfg: &Config, b: &Service) -> Vec<String> {
    let mut what: Vec<String> = [
        field("vip", &a.vip, &b.vip),
        field("port", &a.port, &b.port),
        field("protocol", &a.protocol, &b.protocol),
        field("affinity", &a.affinity, &b.affinity),
        field("health check", opt(&a.health_check), opt(&b.health_check)),
        field("policy", &policy_words(&a.policy), &policy_words(&b.policy)),
        field(
            "overprovisioning_factor",
            &a.overprovisioning_factor,
            &b.overprovisioning_factor,
        ),
        field("panic_threshold", &a.panic_threshold, &b.panic_threshold),
        field("on_no_healthy", &a.on_no_healthy, &b.on_no_healthy),
        field(
            "max_ejection_percent",
            &a.max_ejection_percent,
            &b.max_ejection_percent,
        ),
        (a.latency != b.latency).then(|| "latency tuning".to_string()),
    ]
    .into_iter()
    .flatten()
    .collect();
    // The backends that serve it, named or through a region.
    let before: std::collections::BTreeSet<&str> = old_cfg
        .service_backends(a)
        .into_iter()
        .map(|x| x.name.as_str())
        .collect();
    let after: std::collections::BTreeSet<&str> = new_cfg
        .service_backends(b)
        .into_iter()
        .map(|x| x.name.as_str())
        .collect();
    let mut members: Vec<String> = after.difference(&before).map(|n| format!("+{n}")).collect();
    members.extend(before.difference(&after).map(|n| format!("-{n}")));
    if !members.is_empty() {
        what.push(format!("backends {}", members.join(" ")));
    }
    what
}

fn backend_changes(a: &Backend, b: &Backend) -> Vec<String> {
    [
        field("address", &a.address, &b.address),
        field("region", &a.region, &b.region),
        field("weight", &a.weight, &b.weight),
        field("health check", opt(&a.health_check), opt(&b.health_check)),
    ]
    .into_iter()
    .flatten()
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = r#"
[dataplane]
interfaces = ["eth0"]
next_hop_mac = "02:00:00:00:00:01"
encap_source_v4 = "198.18.0.0/24"

[[regions]]
name = "eu"

[[regions]]
name = "us"

[[health_checks]]
name = "tcp"
kind = "tcp"

[[backends]]
name = "b1"
address = "10.0.0.1"
region = "eu"
weight = 100

[[backends]]
name = "b2"
address = "10.0.0.2"
region = "eu"
weight = 100

[[services]]
name = "web"
vip = "203.0.113.10"
port = 80
protocol = "tcp"
regions = ["eu"]

[[services]]
name = "dns"
vip = "203.0.113.53"
port = 53
protocol = "udp"
backends = ["b1"]
"#;

    fn cfg(text: &str) -> Config {
        Config::parse(text).unwrap_or_else(|e| panic!("{e}\n{text}"))
    }

    fn lines(old: &str, new: &str) -> Vec<String> {
        config_changes(&cfg(old), &cfg(new))
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    #[test]
    fn same_config_no_changes() {
        assert!(lines(BASE, BASE).is_empty());
    }

    #[test]
    fn weight_and_address_change() {
        let new = BASE
            .replacen("weight = 100", "weight = 50", 1)
            .replace("10.0.0.2", "10.0.0.22");
        assert_eq!(
            lines(BASE, &new),
            [
                "backend b1 changed: weight 100 -> 50",
                "backend b2 changed: address 10.0.0.2 -> 10.0.0.22",
            ]
        );
    }

    #[test]
    fn backends_added_and_removed_and_membership() {
        // b3 joins region eu (so web); b2 goes (from web).
        let new = BASE.replace(
            "[[backends]]\nname = \"b2\"\naddress = \"10.0.0.2\"\nregion = \"eu\"\nweight = 100\n",
            "[[backends]]\nname = \"b3\"\naddress = \"10.0.0.3\"\nregion = \"eu\"\nweight = 10\n",
        );
        assert_eq!(
            lines(BASE, &new),
            [
                "service web changed: backends +b3 -b2",
                "backend b3 added",
                "backend b2 removed",
            ]
        );
    }

    #[test]
    fn services_added_removed_changed() {
        let new = BASE
            .replace(
                "name = \"dns\"\nvip = \"203.0.113.53\"\nport = 53",
                "name = \"dns2\"\nvip = \"203.0.113.53\"\nport = 53",
            )
            .replace(
                "port = 80\nprotocol = \"tcp\"\nregions = [\"eu\"]",
                "port = 8080\nprotocol = \"tcp\"\nregions = [\"eu\"]\naffinity = \"client\"\nhealth_check = \"tcp\"",
            );
        assert_eq!(
            lines(BASE, &new),
            [
                "service dns2 added",
                "service web changed: port 80 -> 8080, affinity flow -> client, health check none -> tcp",
                "service dns removed",
            ]
        );
    }

    #[test]
    fn regions_health_checks_and_dataplane() {
        let new = BASE
            .replace("name = \"us\"\n", "name = \"ap\"\n")
            .replace("kind = \"tcp\"", "kind = \"tcp\"\nrise = 5")
            .replace("[dataplane]\n", "[dataplane]\nmtu = 1400\n");
        assert_eq!(
            lines(BASE, &new),
            [
                "region ap added",
                "region us removed",
                "health check tcp changed: settings",
                "[dataplane] settings changed",
            ]
        );
    }

    #[test]
    fn policies_dials_and_classes() {
        let old = format!(
            "{BASE}\n[[client_classes]]\nname = \"eu\"\nprefixes = [\"192.0.2.0/24\"]\nregions = [\"eu\"]\n"
        );
        let new = old
            .replace("name = \"us\"\n", "name = \"us\"\ndial = 30\n")
            .replace(
                "prefixes = [\"192.0.2.0/24\"]",
                "prefixes = [\"192.0.2.0/24\", \"198.51.100.0/24\"]\nallowed_regions = [\"eu\"]",
            )
            .replace(
                "regions = [\"eu\"]\n\n[[services]]",
                "regions = [\"eu\"]\npolicy = \"geo\"\nclasses = [\"eu\"]\non_no_healthy = \"drop\"\n\n[[services]]",
            );
        assert_eq!(
            lines(&old, &new),
            [
                "service web changed: policy maglev -> geo (classes eu), on_no_healthy fail-open -> drop",
                "region us changed: dial 100 -> 30",
                "client class eu changed: allowed_regions any -> [eu], prefixes +1 -0 (now 2)",
            ]
        );
    }
}
