//! Several errors at once, no cascades, and how errors print.

use super::*;

#[test]
fn every_error_is_reported_at_once() {
    let text = doc(
        "mtu = 100\nmaglev_table_size = 65536\n",
        r#"
[[services]]
name = "web"
vip = "203.0.113.300"
protocol = "tcp"
backends = ["eu-9"]

[[services]]
name = "web"
vip = "203.0.113.11"
protocol = "tcp"
regions = ["eu-west"]
colour = "blue"

[[backends]]
name = "ap-1"
address = "192.0.2.77"
region = "ap-south"

[[health_checks]]
name = "slow"
kind = "http"
timeout = "5s"

[metrics]
listen = "192.0.2.1:9477"
"#,
    );
    let errs = errors(&text);
    for (path, needle) in [
        ("dataplane.mtu", "out of range"),
        ("dataplane.maglev_table_size", "not prime"),
        ("services[0].vip", "is not an IP address"),
        ("services[0].backends[0]", "unknown backend \"eu-9\""),
        ("services[1].name", "duplicate name \"web\""),
        ("services[1].colour", "unknown key"),
        ("backends[3].region", "unknown region \"ap-south\""),
        (
            "health_checks[1].timeout",
            "5s must be shorter than interval 1s",
        ),
        ("metrics.listen", "not a loopback address"),
    ] {
        assert!(
            has_error(&errs, path, needle),
            "missing {path}: {needle}; got:\n{}",
            ConfigErrors(errs.clone())
        );
    }
    assert_eq!(errs.len(), 9, "{}", ConfigErrors(errs.clone()));
}

#[test]
fn a_bad_value_does_not_cascade() {
    // The backend's address is invalid: the service that uses it gets no
    // "unknown backend" or family error, and no other error appears.
    let text = doc(
        "",
        r#"
[[backends]]
name = "broken"
address = "not-an-ip"
region = "eu-west"

[[services]]
name = "v6"
vip = "2001:db8:100::1"
protocol = "tcp"
backends = ["broken"]

[[health_checks]]
name = "h"
kind = "http"
interval = "soon"
timeout = "2s"
"#,
    );
    let errs = errors(&text);
    assert_eq!(errs.len(), 2, "{}", ConfigErrors(errs.clone()));
    assert!(has_error(
        &errs,
        "backends[3].address",
        "\"not-an-ip\" is not an IP address"
    ));
    assert!(has_error(
        &errs,
        "health_checks[1].interval",
        "\"soon\" is not a duration"
    ));
}

#[test]
fn errors_display_one_per_line() {
    let errs = ConfigErrors(vec![
        ConfigError::new("dataplane.mtu", "100 is out of range"),
        ConfigError::new("services[0].vip", "\"x\" is not an IP address"),
    ]);
    assert_eq!(
        errs.to_string(),
        "dataplane.mtu: 100 is out of range\nservices[0].vip: \"x\" is not an IP address"
    );
}

#[test]
fn odd_keys_are_escaped_in_paths() {
    // TOML quoted keys can hold a newline, an escape sequence or NUL.
    let text = doc(
        "\"mt\\nu\" = 1\n\"\\u001b[31mred\" = 2\n\"nul\\u0000\" = 3\n\"\" = 4\n\"two words\" = 5\n",
        WEB,
    );
    let errs = errors(&text);
    let paths: Vec<&str> = errs.iter().map(|e| e.path.as_str()).collect();
    for want in [
        r#"dataplane."mt\nu""#,
        r#"dataplane."\u{1b}[31mred""#,
        r#"dataplane."nul\0""#,
        r#"dataplane."""#,
        r#"dataplane."two words""#,
    ] {
        assert!(paths.contains(&want), "no {want} in {paths:?}");
    }
    let printed = ConfigErrors(errs).to_string();
    assert_eq!(printed.lines().count(), 5, "{printed}");
    assert!(
        !printed.contains(['\u{1b}', '\0']),
        "raw control characters in: {printed:?}"
    );
    // Bare keys are printed as they are.
    assert_error(
        &doc("max-x_1 = 1\n", WEB),
        "dataplane.max-x_1",
        "unknown key",
    );
    // A root key too (before the first table header).
    assert_error(
        &format!("\"\" = 1\n{}", doc("", WEB)),
        r#""""#,
        "unknown key (expected one of: dataplane,",
    );
}

#[test]
fn a_follow_on_error_is_reported_once() {
    // Two backends named b1 (one error), then an IPv6 VIP using b1: the
    // family error concerns both definitions but is one problem.
    let text = doc(
        "",
        r#"
[[backends]]
name = "b1"
address = "192.0.2.71"
region = "eu-west"

[[backends]]
name = "b1"
address = "192.0.2.72"
region = "eu-west"

[[services]]
name = "v6"
vip = "2001:db8:100::1"
protocol = "tcp"
backends = ["b1"]
"#,
    );
    let errs = errors(&text);
    assert_eq!(
        errs.iter().map(ToString::to_string).collect::<Vec<_>>(),
        [
            r#"backends[4].name: duplicate name "b1" (also backends[3])"#,
            r#"services[0]: an IPv6 VIP cannot use IPv4 backend "b1" (IPv6 packets can only be encapsulated to IPv6 backends)"#,
        ],
    );
}
