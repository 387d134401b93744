//! `[dataplane]` values, encapsulation sources and capacities.

use super::*;

#[test]
fn next_hop_mac_format() {
    for (mac, needle) in [
        ("02:00:00:00:01", "is not a MAC address"),
        ("02:00:00:00:00:01:02", "is not a MAC address"),
        ("02-00-00-00-00-01", "is not a MAC address"),
        ("0g:00:00:00:00:01", "is not a MAC address"),
        ("ff:ff:ff:ff:ff:ff", "unicast"),
        ("00:00:00:00:00:00", "all-zero"),
    ] {
        let text = format!(
            "[dataplane]\nnext_hop_mac = \"{mac}\"\nencap_source_v4 = \"198.18.0.0/24\"\nencap_source_v6 = \"2001:db8:ffff::/96\"\n{BASE}{WEB}"
        );
        assert_error(&text, "dataplane.next_hop_mac", needle);
    }
}

#[test]
fn dataplane_ranges() {
    for (line, path, needle) in [
        ("mtu = 575", "dataplane.mtu", "575 is out of range"),
        ("mtu = 9217", "dataplane.mtu", "9217 is out of range"),
        (
            "conntrack_size = 1023",
            "dataplane.conntrack_size",
            "out of range",
        ),
        (
            "conntrack_size = 67108865",
            "dataplane.conntrack_size",
            "out of range",
        ),
        ("ttl = 0", "dataplane.ttl", "0 is out of range"),
        ("ttl = 256", "dataplane.ttl", "256 is out of range"),
        (
            "maglev_table_size = 5",
            "dataplane.maglev_table_size",
            "out of range",
        ),
        (
            "maglev_table_size = 1000033",
            "dataplane.maglev_table_size",
            "out of range",
        ),
        (
            "pin_path = \"steer\"",
            "dataplane.pin_path",
            "absolute path",
        ),
        (
            "interfaces = [\"eth0\", \"eth0\"]",
            "dataplane.interfaces[1]",
            "listed twice",
        ),
        (
            "interfaces = [\"a-very-long-interface\"]",
            "dataplane.interfaces[0]",
            "not a valid interface name",
        ),
    ] {
        assert_error(&doc(&format!("{line}\n"), WEB), path, needle);
    }
    for line in [
        "mtu = 576",
        "mtu = 9216",
        "conntrack_size = 1024",
        "conntrack_size = 67108864",
        "ttl = 1",
        "ttl = 255",
        "maglev_table_size = 7",
        "maglev_table_size = 1000003",
    ] {
        ok(&doc(&format!("{line}\n"), WEB));
    }
}

#[test]
fn maglev_table_size_must_be_prime() {
    assert_error(
        &doc("maglev_table_size = 65536\n", WEB),
        "dataplane.maglev_table_size",
        "65536 is not prime (try 65537)",
    );
}

#[test]
fn encap_source_prefixes() {
    let with = |v4: &str, v6: &str| {
        format!(
            "[dataplane]\nnext_hop_mac = \"02:00:00:00:00:01\"\nencap_source_v4 = \"{v4}\"\nencap_source_v6 = \"{v6}\"\n{BASE}{WEB}"
        )
    };
    assert_error(
        &with("198.18.0.1/24", "2001:db8:ffff::/96"),
        "dataplane.encap_source_v4",
        "host bits",
    );
    assert_error(
        &with("198.18.0.0/33", "2001:db8:ffff::/96"),
        "dataplane.encap_source_v4",
        "out of range",
    );
    assert_error(
        &with("198.18.0.0", "2001:db8:ffff::/96"),
        "dataplane.encap_source_v4",
        "is not a prefix",
    );
    assert_error(
        &with("198.18.0.0/24", "2001:db8::/64"),
        "dataplane.encap_source_v6",
        "too short",
    );
    assert_error(
        &with("198.18.0.0/24", "2001:db8::1/96"),
        "dataplane.encap_source_v6",
        "host bits",
    );
    let cfg = ok(&with("198.18.0.7/32", "2001:db8::1/128"));
    assert_eq!(
        cfg.dataplane.encap_source_v4.map(|p| p.host_mask()),
        Some(0)
    );
    let cfg = ok(&with("198.18.0.0/15", "2001:db8:ffff::/96"));
    assert_eq!(
        cfg.dataplane.encap_source_v4.map(|p| p.host_mask()),
        Some(0x0001_ffff)
    );
    assert_eq!(
        cfg.dataplane.encap_source_v6.map(|p| p.host_mask()),
        Some(u32::MAX)
    );
}

#[test]
fn encap_sources_required_by_backend_family() {
    // BASE has IPv4 and IPv6 backends.
    let no_v4 = format!(
        "[dataplane]\nnext_hop_mac = \"02:00:00:00:00:01\"\nencap_source_v6 = \"2001:db8:ffff::/96\"\n{BASE}{WEB}"
    );
    assert_error(&no_v4, "dataplane.encap_source_v4", "missing");
    let no_v6 = format!(
        "[dataplane]\nnext_hop_mac = \"02:00:00:00:00:01\"\nencap_source_v4 = \"198.18.0.0/24\"\n{BASE}{WEB}"
    );
    assert_error(&no_v6, "dataplane.encap_source_v6", "missing");
}

#[test]
fn capacity_limits() {
    let two_services = format!(
        "{WEB}\n[[services]]\nname = \"web2\"\nvip = \"203.0.113.11\"\nprotocol = \"tcp\"\nbackends = [\"eu-1\", \"us-1\"]\n"
    );
    // web: 2 backends (eu-west), web2: 2 backends: 2 tables, 4 reals.
    assert_error(
        &doc("max_tables = 1\n", &two_services),
        "dataplane.max_tables",
        "too small",
    );
    assert_error(
        &doc("max_reals = 3\n", &two_services),
        "dataplane.max_reals",
        "too small",
    );
    ok(&doc("max_tables = 2\nmax_reals = 4\n", &two_services));
    // A backend listed explicitly and through its region counts once.
    let overlap = "[[services]]\nname = \"s\"\nvip = \"203.0.113.1\"\nprotocol = \"tcp\"\nbackends = [\"eu-1\"]\nregions = [\"eu-west\"]\n";
    ok(&doc("max_reals = 2\n", overlap));
}
