//! `[[regions]]` dials and capacity, and the `[[services]]` policy keys.

use super::*;

/// `doc` with one service `web` whose body (after name, vip, protocol) is
/// `body`.
fn svc(body: &str) -> String {
    doc(
        "",
        &format!(
            "[[services]]\nname = \"web\"\nvip = \"203.0.113.10\"\nprotocol = \"tcp\"\n{body}\n{CLASSES}"
        ),
    )
}

/// Two classes: `eu` prefers eu-west then us-east; `none` has no regions.
const CLASSES: &str = r#"
[[client_classes]]
name = "eu"
prefixes = ["192.0.2.0/24"]
regions = ["eu-west", "us-east"]

[[client_classes]]
name = "none"
prefixes = ["198.51.100.0/24"]
allowed_regions = ["eu-west"]
"#;

/// A third region `ap-south` (no backends).
const AP: &str = "[[regions]]\nname = \"ap-south\"\n";

#[test]
fn region_defaults_and_explicit_values() {
    let cfg = ok(&doc(
        "",
        &format!(
            "{WEB}\n[[regions]]\nname = \"ap-south\"\ndial = 30\nmax_new_flows_per_second = 5000\ncapacity_scaler = 0.5\n\n[[regions]]\nname = \"off\"\ncapacity_scaler = 0\n"
        ),
    ));
    let eu = cfg.region("eu-west").expect("eu-west");
    assert_eq!(
        (eu.dial, eu.max_new_flows_per_second, eu.capacity_scaler),
        (100, None, Milli(1000))
    );
    let ap = cfg.region("ap-south").expect("ap-south");
    assert_eq!(
        (ap.dial, ap.max_new_flows_per_second, ap.capacity_scaler),
        (30, Some(5000), Milli(500))
    );
    assert_eq!(ap.capacity_scaler.get(), 0.5);
    assert_eq!(cfg.region("off").map(|r| r.capacity_scaler), Some(Milli(0)));
}

#[test]
fn region_ranges() {
    let text = doc(
        "",
        "[[regions]]\nname = \"a\"\ndial = 101\nmax_new_flows_per_second = 0\ncapacity_scaler = 0.05\n\n[[regions]]\nname = \"b\"\ncapacity_scaler = 1.5\ndial = -1\n\n[[regions]]\nname = \"c\"\ncapacity_scaler = 0.1234\n",
    );
    let errs = errors(&text);
    for (path, needle) in [
        (
            "regions[2].dial",
            "101 is out of range (must be between 0 and 100)",
        ),
        (
            "regions[2].max_new_flows_per_second",
            "0 is out of range (must be between 1 and",
        ),
        (
            "regions[2].capacity_scaler",
            "0.05 is out of range (must be 0,",
        ),
        ("regions[3].capacity_scaler", "1.5 is out of range"),
        ("regions[3].dial", "-1 is out of range"),
        ("regions[4].capacity_scaler", "more than three decimals"),
    ] {
        assert!(
            has_error(&errs, path, needle),
            "no {path}: {needle}; got:\n{}",
            ConfigErrors(errs.clone())
        );
    }
}

#[test]
fn service_policy_defaults() {
    let cfg = ok(&svc("regions = [\"eu-west\"]"));
    let s = &cfg.services[0];
    assert_eq!(s.policy, Policy::Maglev);
    assert_eq!(s.policy.kind(), PolicyKind::Maglev);
    assert_eq!(s.overprovisioning_factor.get(), 1.4);
    assert_eq!(s.panic_threshold, 50);
    assert_eq!(s.on_no_healthy, OnNoHealthy::FailOpen);
    assert_eq!(s.max_ejection_percent, 100);
    assert_eq!(s.latency, LatencyTuning::default());
    assert_eq!(s.latency.margin_percent, 20);
    assert_eq!(s.latency.margin_min, Duration::from_millis(5));
    assert_eq!(s.latency.dwell, Duration::from_secs(30));
}

#[test]
fn every_policy_is_read() {
    let cfg = ok(&doc(
        "",
        &format!(
            r#"{AP}
[[services]]
name = "w"
vip = "203.0.113.1"
protocol = "tcp"
regions = ["us-east", "eu-west", "ap-south"]
policy = "weighted"
region_weights = {{ "us-east" = 2, "eu-west" = 1, "ap-south" = 0 }}
overprovisioning_factor = 2
panic_threshold = 0
on_no_healthy = "drop"
max_ejection_percent = 30

[[services]]
name = "f"
vip = "203.0.113.2"
protocol = "tcp"
regions = ["us-east", "eu-west", "ap-south"]
policy = "failover"
tiers = [["us-east"], ["eu-west", "ap-south"]]
overprovisioning_factor = 1.25

[[services]]
name = "g"
vip = "203.0.113.3"
protocol = "tcp"
regions = ["us-east", "eu-west"]
policy = "geo"
classes = ["eu"]

[[services]]
name = "l"
vip = "203.0.113.4"
protocol = "tcp"
regions = ["us-east", "eu-west"]
policy = "latency"
latency_margin = 10
latency_margin_min = "2ms"
latency_dwell = "1m"
{CLASSES}"#
        ),
    ));
    let w = cfg.service("w").expect("w");
    // Sorted by region name.
    assert_eq!(
        w.policy,
        Policy::Weighted {
            weights: vec![
                ("ap-south".into(), 0),
                ("eu-west".into(), 1),
                ("us-east".into(), 2)
            ]
        }
    );
    assert_eq!(w.overprovisioning_factor, Milli(2000));
    assert_eq!(w.panic_threshold, 0);
    assert_eq!(w.on_no_healthy, OnNoHealthy::Drop);
    assert_eq!(w.max_ejection_percent, 30);
    let f = cfg.service("f").expect("f");
    assert_eq!(
        f.policy,
        Policy::Failover {
            tiers: vec![
                vec!["us-east".into()],
                vec!["eu-west".into(), "ap-south".into()]
            ]
        }
    );
    assert_eq!(f.overprovisioning_factor, Milli(1250));
    assert_eq!(
        cfg.service("g").map(|s| &s.policy),
        Some(&Policy::Geo {
            classes: vec!["eu".into()]
        })
    );
    let l = cfg.service("l").expect("l");
    assert_eq!(l.policy, Policy::Latency);
    assert_eq!(
        l.latency,
        LatencyTuning {
            margin_percent: 10,
            margin_min: Duration::from_millis(2),
            dwell: Duration::from_secs(60),
        }
    );
    assert_eq!(PolicyKind::Failover.as_str(), "failover");
    assert_eq!(OnNoHealthy::FailOpen.to_string(), "fail-open");
}

#[test]
fn unknown_policy_and_keywords() {
    let errs = errors(&svc(
        "regions = [\"eu-west\"]\npolicy = \"nearest\"\non_no_healthy = \"open\"",
    ));
    assert!(has_error(
        &errs,
        "services[0].policy",
        "\"nearest\" is not a valid policy (expected one of: \"maglev\", \"weighted\", \"failover\", \"geo\", \"latency\")"
    ));
    assert!(has_error(
        &errs,
        "services[0].on_no_healthy",
        "\"open\" is not a valid on_no_healthy action (expected one of: \"fail-open\", \"drop\")"
    ));
}

#[test]
fn policy_keys_only_with_their_policy() {
    let errs = errors(&svc(
        "regions = [\"eu-west\"]\npolicy = \"failover\"\ntiers = [[\"eu-west\"]]\nregion_weights = { \"eu-west\" = 1 }\nclasses = [\"eu\"]\nlatency_margin = 5\nlatency_margin_min = \"1ms\"\nlatency_dwell = \"1s\"",
    ));
    for (key, owner) in [
        ("region_weights", "weighted"),
        ("classes", "geo"),
        ("latency_margin", "latency"),
        ("latency_margin_min", "latency"),
        ("latency_dwell", "latency"),
    ] {
        let needle = format!(
            "{key} is only for policy = \"{owner}\" (this service's policy is \"failover\")"
        );
        assert!(
            has_error(&errs, &format!("services[0].{key}"), &needle),
            "{key}: {}",
            ConfigErrors(errs.clone())
        );
    }
    // With the default policy too.
    assert_error(
        &svc("regions = [\"eu-west\"]\ntiers = [[\"eu-west\"]]"),
        "services[0].tiers",
        "tiers is only for policy = \"failover\" (this service's policy is \"maglev\")",
    );
}

#[test]
fn policy_needs_its_key() {
    assert_error(
        &svc("regions = [\"eu-west\"]\npolicy = \"weighted\""),
        "services[0].region_weights",
        "missing (required with policy = \"weighted\")",
    );
    assert_error(
        &svc("regions = [\"eu-west\"]\npolicy = \"failover\""),
        "services[0].tiers",
        "missing (required with policy = \"failover\")",
    );
    assert_error(
        &svc("regions = [\"eu-west\"]\npolicy = \"geo\""),
        "services[0].classes",
        "missing (required with policy = \"geo\")",
    );
    assert_error(
        &svc("regions = [\"eu-west\"]\npolicy = \"geo\"\nclasses = []"),
        "services[0].classes",
        "is empty: policy = \"geo\" needs at least one client class",
    );
}

#[test]
fn region_weights_name_every_region_of_the_service() {
    let text = doc(
        "",
        &format!(
            "{AP}\n[[services]]\nname = \"web\"\nvip = \"203.0.113.10\"\nprotocol = \"tcp\"\nregions = [\"eu-west\"]\nbackends = [\"us-1\"]\npolicy = \"weighted\"\nregion_weights = {{ \"eu-west\" = 2, \"us-east\" = 1, \"ap-south\" = 1, \"mars\" = 1 }}\n"
        ),
    );
    let errs = errors(&text);
    for (path, needle) in [
        (
            "services[0].region_weights.ap-south",
            "region \"ap-south\" does not serve this service (its regions: [\"eu-west\", \"us-east\"]",
        ),
        (
            "services[0].region_weights.mars",
            "unknown region \"mars\" (defined regions: ap-south, eu-west, us-east)",
        ),
    ] {
        assert!(
            has_error(&errs, path, needle),
            "no {path}: {needle}; got:\n{}",
            ConfigErrors(errs.clone())
        );
    }
    assert_error(
        &svc("regions = [\"eu-west\"]\npolicy = \"weighted\"\nregion_weights = { \"eu-west\" = 256 }"),
        "services[0].region_weights.eu-west",
        "256 is out of range (must be between 0 and 255)",
    );
    // us-east serves through the explicit backend us-1: it needs a weight.
    assert_error(
        &doc(
            "",
            "[[services]]\nname = \"web\"\nvip = \"203.0.113.10\"\nprotocol = \"tcp\"\nregions = [\"eu-west\"]\nbackends = [\"us-1\"]\npolicy = \"weighted\"\nregion_weights = { \"eu-west\" = 1 }\n",
        ),
        "services[0].region_weights",
        "region \"us-east\" of this service is not given a weight",
    );
    assert_error(
        &svc("regions = [\"eu-west\"]\npolicy = \"weighted\"\nregion_weights = {}"),
        "services[0].region_weights",
        "is empty",
    );
    assert_error(
        &svc("regions = [\"eu-west\"]\npolicy = \"weighted\"\nregion_weights = [1]"),
        "services[0].region_weights",
        "expected a table of region weights",
    );
}

#[test]
fn tiers_cover_every_region_exactly_once() {
    let text = doc(
        "",
        &format!(
            "{AP}\n[[services]]\nname = \"web\"\nvip = \"203.0.113.10\"\nprotocol = \"tcp\"\nregions = [\"eu-west\", \"us-east\", \"ap-south\"]\npolicy = \"failover\"\ntiers = [[\"eu-west\"], [\"eu-west\", \"mars\"]]\n"
        ),
    );
    let errs = errors(&text);
    for (path, needle) in [
        (
            "services[0].tiers[1][0]",
            "region \"eu-west\" is listed twice (also tiers[0][0]); each region is in exactly one tier",
        ),
        ("services[0].tiers[1][1]", "unknown region \"mars\""),
        (
            "services[0].tiers",
            "regions \"us-east\", \"ap-south\" of this service are not in a tier",
        ),
    ] {
        assert!(
            has_error(&errs, path, needle),
            "no {path}: {needle}; got:\n{}",
            ConfigErrors(errs.clone())
        );
    }
    assert_error(
        &svc("regions = [\"eu-west\"]\npolicy = \"failover\"\ntiers = [[\"eu-west\"], []]"),
        "services[0].tiers[1]",
        "is an empty tier",
    );
    assert_error(
        &svc("regions = [\"eu-west\"]\npolicy = \"failover\"\ntiers = [[\"eu-west\", 3]]"),
        "services[0].tiers[0][1]",
        "expected a string, found integer 3",
    );
    assert_error(
        &svc("regions = [\"eu-west\"]\npolicy = \"failover\"\ntiers = [\"eu-west\"]"),
        "services[0].tiers[0]",
        "expected a tier: an array of region names",
    );
    assert_error(
        &doc(
            "",
            &format!("{AP}\n[[services]]\nname = \"web\"\nvip = \"203.0.113.10\"\nprotocol = \"tcp\"\nregions = [\"eu-west\"]\npolicy = \"failover\"\ntiers = [[\"eu-west\"], [\"ap-south\"]]\n"),
        ),
        "services[0].tiers[1][0]",
        "region \"ap-south\" does not serve this service",
    );
}

#[test]
fn geo_classes_resolve_and_prefer_the_services_regions() {
    let errs = errors(&svc(
        "regions = [\"eu-west\"]\npolicy = \"geo\"\nclasses = [\"eu\", \"none\", \"apac\", \"eu\"]",
    ));
    for (path, needle) in [
        (
            "services[0].classes[0]",
            "class \"eu\" prefers region \"us-east\" (client_classes[0].regions[1]), which does not serve this service",
        ),
        (
            "services[0].classes[1]",
            "class \"none\" (client_classes[1]) has no regions",
        ),
        (
            "services[0].classes[2]",
            "unknown client class \"apac\" (defined client classes: eu, none)",
        ),
        (
            "services[0].classes[3]",
            "class \"eu\" is listed twice (also [0])",
        ),
    ] {
        assert!(
            has_error(&errs, path, needle),
            "no {path}: {needle}; got:\n{}",
            ConfigErrors(errs.clone())
        );
    }
    // us-east through an explicit backend is a region of the service.
    let cfg = ok(&svc(
        "regions = [\"eu-west\"]\nbackends = [\"us-1\"]\npolicy = \"geo\"\nclasses = [\"eu\"]",
    ));
    assert!(matches!(cfg.services[0].policy, Policy::Geo { .. }));
}

#[test]
fn tuning_ranges() {
    let errs = errors(&svc(
        "regions = [\"eu-west\"]\noverprovisioning_factor = 0.9\npanic_threshold = 101\nmax_ejection_percent = 101",
    ));
    for (path, needle) in [
        (
            "services[0].overprovisioning_factor",
            "0.9 is out of range (must be between 1 and 100",
        ),
        (
            "services[0].panic_threshold",
            "101 is out of range (must be between 0 and 100)",
        ),
        (
            "services[0].max_ejection_percent",
            "101 is out of range (must be between 0 and 100)",
        ),
    ] {
        assert!(
            has_error(&errs, path, needle),
            "no {path}: {needle}; got:\n{}",
            ConfigErrors(errs.clone())
        );
    }
    let errs = errors(&svc(
        "regions = [\"eu-west\"]\npolicy = \"latency\"\nlatency_margin = 101\nlatency_margin_min = \"11s\"\nlatency_dwell = \"2h\"",
    ));
    for (path, needle) in [
        ("services[0].latency_margin", "101 is out of range"),
        (
            "services[0].latency_margin_min",
            "11s is too long (at most 10s)",
        ),
        ("services[0].latency_dwell", "2h is too long (at most 1h)"),
    ] {
        assert!(
            has_error(&errs, path, needle),
            "no {path}: {needle}; got:\n{}",
            ConfigErrors(errs.clone())
        );
    }
    assert_error(
        &svc("regions = [\"eu-west\"]\noverprovisioning_factor = \"1.4\""),
        "services[0].overprovisioning_factor",
        "expected a number, found string",
    );
}

#[test]
fn service_regions_is_the_default_order() {
    let cfg = ok(&doc(
        "",
        &format!(
            "{AP}\n[[backends]]\nname = \"ap-1\"\naddress = \"192.0.2.50\"\nregion = \"ap-south\"\n\n[[services]]\nname = \"web\"\nvip = \"203.0.113.10\"\nprotocol = \"tcp\"\nregions = [\"eu-west\"]\nbackends = [\"ap-1\", \"eu-2\", \"us-1\"]\n"
        ),
    ));
    let s = cfg.service("web").expect("web");
    // Its regions, then its backends' regions in [[backends]] order
    // (us-1 before ap-1), eu-west once.
    assert_eq!(cfg.service_regions(s), ["eu-west", "us-east", "ap-south"]);
}

#[test]
fn max_tables_counts_the_class_tables() {
    // web lists eu; "none" is a residency class, which applies to every
    // service: 1 default + eu + none = 3 tables.
    let body = "regions = [\"eu-west\", \"us-east\"]\npolicy = \"geo\"\nclasses = [\"eu\"]\n";
    let text = |max: u32| {
        doc(
            &format!("max_tables = {max}\n"),
            &format!(
                "[[services]]\nname = \"web\"\nvip = \"203.0.113.10\"\nprotocol = \"tcp\"\n{body}\n{CLASSES}"
            ),
        )
    };
    let errs = errors(&text(2));
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert_eq!(errs[0].path, "dataplane.max_tables");
    assert!(
        errs[0]
            .message
            .contains("2 is too small for 1 services and their client-class tables (3 tables")
            && errs[0].message.contains("raise max_tables to at least 3"),
        "{}",
        errs[0].message
    );
    ok(&text(3));
}
