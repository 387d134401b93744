//! Names and references between sections.

use super::*;

#[test]
fn unknown_region_lists_defined_regions() {
    let text = doc(
        "",
        &format!("{WEB}\n[[backends]]\nname = \"ap-1\"\naddress = \"192.0.2.9\"\nregion = \"ap-south\"\n"),
    );
    assert_error(
        &text,
        "backends[3].region",
        r#"unknown region "ap-south" (defined regions: eu-west, us-east)"#,
    );
}

#[test]
fn duplicate_names() {
    let text = doc(
        "",
        &format!(
            r#"{WEB}{WEB}
[[regions]]
name = "eu-west"

[[backends]]
name = "eu-2"
address = "192.0.2.99"
region = "eu-west"

[[health_checks]]
name = "hc"
kind = "tcp"
port = 80
"#
        ),
    );
    let errs = errors(&text);
    assert!(has_error(
        &errs,
        "services[1].name",
        r#"duplicate name "web" (also services[0])"#
    ));
    assert!(has_error(
        &errs,
        "regions[2].name",
        r#"duplicate name "eu-west" (also regions[0])"#
    ));
    assert!(has_error(
        &errs,
        "backends[3].name",
        r#"duplicate name "eu-2" (also backends[1])"#
    ));
    assert!(has_error(
        &errs,
        "health_checks[1].name",
        r#"duplicate name "hc" (also health_checks[0])"#
    ));
}

#[test]
fn unknown_backend_in_service() {
    let text = doc(
        "",
        "[[services]]\nname = \"web\"\nvip = \"203.0.113.10\"\nprotocol = \"tcp\"\nbackends = [\"eu-1\", \"eu-9\"]\n",
    );
    assert_error(
        &text,
        "services[0].backends[1]",
        r#"unknown backend "eu-9""#,
    );
}

#[test]
fn unknown_region_in_service_and_repeated_entries() {
    let text = doc(
        "",
        "[[services]]\nname = \"web\"\nvip = \"203.0.113.10\"\nprotocol = \"tcp\"\nbackends = [\"eu-1\", \"eu-1\"]\nregions = [\"mars\"]\n",
    );
    let errs = errors(&text);
    assert!(has_error(
        &errs,
        "services[0].regions[0]",
        r#"unknown region "mars""#
    ));
    assert!(has_error(&errs, "services[0].backends[1]", "listed twice"));
}

#[test]
fn unknown_health_check_references() {
    let text = doc(
        "",
        r#"
[[services]]
name = "web"
vip = "203.0.113.10"
protocol = "tcp"
regions = ["eu-west"]
health_check = "nope"

[[backends]]
name = "x"
address = "192.0.2.50"
region = "eu-west"
health_check = "gone"
"#,
    );
    let errs = errors(&text);
    assert!(has_error(
        &errs,
        "services[0].health_check",
        r#"unknown health check "nope""#
    ));
    assert!(has_error(
        &errs,
        "backends[3].health_check",
        r#"unknown health check "gone""#
    ));
}

#[test]
fn service_without_backends_or_regions() {
    let text = doc(
        "",
        "[[services]]\nname = \"web\"\nvip = \"203.0.113.10\"\nprotocol = \"tcp\"\n",
    );
    assert_error(&text, "services[0]", "no backends");
    // A region without backends is fine.
    ok(&doc("", &format!("{WEB}\n[[regions]]\nname = \"empty\"\n")));
}

#[test]
fn duplicate_vip_port_protocol() {
    let mut services = String::new();
    for (i, (vip, port, proto)) in [
        ("203.0.113.10", 443, "tcp"),
        ("203.0.113.10", 80, "tcp"),
        ("203.0.113.10", 0, "tcp"),  // all ports: overlaps nothing
        ("203.0.113.10", 80, "udp"), // other protocol
        ("203.0.113.10", 80, "tcp"), // duplicate of services[1]
    ]
    .into_iter()
    .enumerate()
    {
        let name = if i == 1 {
            "web".to_string()
        } else {
            format!("s{i}")
        };
        services.push_str(&format!(
            "[[services]]\nname = \"{name}\"\nvip = \"{vip}\"\nport = {port}\nprotocol = \"{proto}\"\nregions = [\"eu-west\"]\n"
        ));
    }
    let errs = errors(&doc("", &services));
    assert_eq!(errs.len(), 1, "{}", ConfigErrors(errs.clone()));
    assert_eq!(errs[0].path, "services[4]");
    assert_eq!(
        errs[0].message,
        r#"VIP 203.0.113.10 port 80 tcp is already defined by services[1] "web""#
    );
}

#[test]
fn ipv6_vip_cannot_use_ipv4_backend() {
    let text = doc(
        "",
        "[[services]]\nname = \"v6\"\nvip = \"2001:db8:100::1\"\nprotocol = \"tcp\"\nbackends = [\"eu-1\", \"us-1\"]\n",
    );
    let errs = errors(&text);
    assert_eq!(errs.len(), 1, "{}", ConfigErrors(errs.clone()));
    assert_eq!(errs[0].path, "services[0]");
    assert_eq!(
        errs[0].message,
        r#"an IPv6 VIP cannot use IPv4 backend "eu-1" (IPv6 packets can only be encapsulated to IPv6 backends)"#
    );
    // Through a region: both IPv4 backends of eu-west.
    let text = doc(
        "",
        "[[services]]\nname = \"v6\"\nvip = \"2001:db8:100::1\"\nprotocol = \"tcp\"\nregions = [\"eu-west\"]\n",
    );
    let errs = errors(&text);
    assert!(has_error(
        &errs,
        "services[0]",
        r#"an IPv6 VIP cannot use IPv4 backend "eu-1""#
    ));
    assert!(has_error(
        &errs,
        "services[0]",
        r#"an IPv6 VIP cannot use IPv4 backend "eu-2""#
    ));
}

#[test]
fn ipv4_vip_with_ipv6_backends_is_fine() {
    ok(&doc(
        "",
        "[[services]]\nname = \"v4\"\nvip = \"203.0.113.10\"\nprotocol = \"tcp\"\nbackends = [\"us-1\", \"eu-1\"]\n",
    ));
}

#[test]
fn backend_weight_range() {
    let backend = |w: &str| {
        doc(
            "",
            &format!("{WEB}\n[[backends]]\nname = \"x\"\naddress = \"192.0.2.50\"\nregion = \"eu-west\"\nweight = {w}\n"),
        )
    };
    assert_error(&backend("65536"), "backends[3].weight", "out of range");
    assert_error(&backend("-1"), "backends[3].weight", "out of range");
    let cfg = ok(&backend("0"));
    assert_eq!(cfg.backends[3].weight, 0);
    ok(&backend("65535"));
}
