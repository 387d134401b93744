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
fn source_mac_is_optional_and_unicast() {
    let with = |line: &str| {
        format!(
            "[dataplane]\nnext_hop_mac = \"02:00:00:00:00:01\"\n{line}\nencap_source_v4 = \"198.18.0.0/24\"\nencap_source_v6 = \"2001:db8:ffff::/96\"\n{BASE}{WEB}"
        )
    };
    let cfg = Config::parse(&with("")).expect("no source_mac is valid");
    assert_eq!(cfg.dataplane.source_mac, None);
    let cfg = Config::parse(&with("source_mac = \"02:00:00:00:00:5E\"")).expect("valid");
    assert_eq!(cfg.dataplane.source_mac, Some([2, 0, 0, 0, 0, 0x5e]));
    for (mac, needle) in [
        (
            "ff:ff:ff:ff:ff:ff",
            "a frame's source must be a unicast MAC",
        ),
        ("01:00:5e:00:00:01", "multicast or broadcast"),
        ("00:00:00:00:00:00", "all-zero"),
        ("02:00:00:00:00", "is not a MAC address"),
    ] {
        assert_error(
            &with(&format!("source_mac = \"{mac}\"")),
            "dataplane.source_mac",
            needle,
        );
    }
    let err = crate::parse_source_mac("33:33:00:00:00:01").expect_err("multicast");
    assert!(err.contains("unicast"), "{err}");
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
        (
            "conntrack_size_v6 = 1023",
            "dataplane.conntrack_size_v6",
            "out of range",
        ),
        (
            "conntrack_size_v6 = 67108865",
            "dataplane.conntrack_size_v6",
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
        "conntrack_size_v6 = 1024",
        "conntrack_size_v6 = 67108864",
        "ttl = 1",
        "ttl = 255",
        "maglev_table_size = 7",
        "maglev_table_size = 1000003",
    ] {
        ok(&doc(&format!("{line}\n"), WEB));
    }
}

#[test]
fn pmtu_reply_rate_is_0_to_10000() {
    for (line, needle) in [
        (
            "pmtu_reply_rate = -1",
            "-1 is out of range (must be between 0 and 10000)",
        ),
        (
            "pmtu_reply_rate = 10001",
            "10001 is out of range (must be between 0 and 10000)",
        ),
        ("pmtu_reply_rate = 1.5", "expected an integer"),
    ] {
        assert_error(
            &doc(&format!("{line}\n"), WEB),
            "dataplane.pmtu_reply_rate",
            needle,
        );
    }
    for rate in [0u16, 1, 10_000] {
        let cfg = ok(&doc(&format!("pmtu_reply_rate = {rate}\n"), WEB));
        assert_eq!(cfg.dataplane.pmtu_reply_rate, rate);
    }
}

#[test]
fn pmtu_reply_burst_is_at_most_10000() {
    for (line, needle) in [
        (
            "pmtu_reply_burst = -1",
            "-1 is out of range (must be between 0 and 10000)",
        ),
        (
            "pmtu_reply_burst = 10001",
            "10001 is out of range (must be between 0 and 10000)",
        ),
        ("pmtu_reply_burst = \"3\"", "expected an integer"),
    ] {
        assert_error(
            &doc(&format!("{line}\n"), WEB),
            "dataplane.pmtu_reply_burst",
            needle,
        );
    }
    for burst in [1u16, 10_000] {
        let cfg = ok(&doc(&format!("pmtu_reply_burst = {burst}\n"), WEB));
        assert_eq!(cfg.dataplane.pmtu_reply_burst, burst);
    }
}

#[test]
fn pmtu_reply_burst_must_be_at_least_1_when_replies_are_on() {
    // With the default rate (100) and with an explicit one.
    for rate in ["", "pmtu_reply_rate = 5\n"] {
        let errs = errors(&doc(&format!("{rate}pmtu_reply_burst = 0\n"), WEB));
        assert_eq!(errs.len(), 1, "{}", ConfigErrors(errs.clone()));
        assert_eq!(errs[0].path, "dataplane.pmtu_reply_burst");
        assert!(
            errs[0]
                .message
                .contains("would never send a path-MTU reply")
                && errs[0]
                    .message
                    .contains("set pmtu_reply_burst to at least 1")
                && errs[0]
                    .message
                    .contains("pmtu_reply_rate = 0 to turn the replies off"),
            "{}",
            errs[0].message
        );
    }
    // Replies off: the burst does not matter.
    let cfg = ok(&doc("pmtu_reply_rate = 0\npmtu_reply_burst = 0\n", WEB));
    assert_eq!(
        (
            cfg.dataplane.pmtu_reply_rate,
            cfg.dataplane.pmtu_reply_burst
        ),
        (0, 0)
    );
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

#[test]
fn a_sign_is_not_a_hex_digit_or_a_prefix_length() {
    // `u8::from_str_radix` and `u8::from_str` accept a leading '+'.
    let text = format!(
        "[dataplane]\nnext_hop_mac = \"02:00:00:00:00:+e\"\nencap_source_v4 = \"198.18.0.0/+24\"\nencap_source_v6 = \"2001:db8:ffff::/+96\"\n{BASE}{WEB}"
    );
    let errs = errors(&text);
    assert!(has_error(
        &errs,
        "dataplane.next_hop_mac",
        "is not a MAC address"
    ));
    assert!(has_error(
        &errs,
        "dataplane.encap_source_v4",
        "\"+24\" is not a prefix length"
    ));
    assert!(has_error(
        &errs,
        "dataplane.encap_source_v6",
        "\"+96\" is not a prefix length"
    ));
    assert_eq!(errs.len(), 3, "{}", ConfigErrors(errs.clone()));
    // Upper-case hex is fine.
    let cfg = ok(&format!(
        "[dataplane]\nnext_hop_mac = \"02:00:00:00:00:FE\"\nencap_source_v4 = \"198.18.0.0/24\"\nencap_source_v6 = \"2001:db8:ffff::/96\"\n{BASE}{WEB}"
    ));
    assert_eq!(cfg.dataplane.next_hop_mac, [2, 0, 0, 0, 0, 0xfe]);
}

#[test]
fn pin_path_is_a_directory_of_its_own_on_bpffs() {
    for (value, needle) in [
        ("/", "is the root directory"),
        ("//", "is the root directory"),
        ("/sys/fs/bpf", "is the root of the BPF file system"),
        ("/sys/fs/bpf/", "is the root of the BPF file system"),
        ("/sys/fs/bpf/./", "is the root of the BPF file system"),
        ("/sys/fs/bpf/steer/..", "must not contain \"..\""),
        ("sys/fs/bpf/steer", "must be an absolute path"),
        ("./steer", "must be an absolute path"),
    ] {
        let errs = errors(&doc(&format!("pin_path = \"{value}\"\n"), WEB));
        assert!(
            has_error(&errs, "dataplane.pin_path", needle)
                && has_error(&errs, "dataplane.pin_path", "such as \"/sys/fs/bpf/steer\""),
            "{value}: {}",
            ConfigErrors(errs.clone())
        );
    }
    for value in [
        "/sys/fs/bpf/steer",
        "/sys/fs/bpf/lb/steer-1",
        "/run/steer/bpf",
    ] {
        let cfg = ok(&doc(&format!("pin_path = \"{value}\"\n"), WEB));
        assert_eq!(cfg.dataplane.pin_path, PathBuf::from(value));
    }
}

#[test]
fn max_tables_and_max_reals_have_upper_bounds() {
    // 4096 = the VIP maps' capacity (steer_common::capacity::VIPS); with
    // a small ring the rings bound does not interfere.
    let small_ring = "maglev_table_size = 7\n";
    ok(&doc(&format!("{small_ring}max_tables = 4096\n"), WEB));
    let errs = errors(&doc(&format!("{small_ring}max_tables = 4097\n"), WEB));
    assert_eq!(errs.len(), 1, "{}", ConfigErrors(errs.clone()));
    assert_eq!(errs[0].path, "dataplane.max_tables");
    assert!(
        errs[0]
            .message
            .contains("4097 is more than max_tables can be (4096")
            && errs[0].message.contains("set max_tables to at most 4096"),
        "{}",
        errs[0].message
    );
    // 2^20 reals.
    ok(&doc("max_reals = 1048576\n", WEB));
    let errs = errors(&doc("max_reals = 1048577\n", WEB));
    assert_eq!(errs.len(), 1, "{}", ConfigErrors(errs.clone()));
    assert_eq!(errs[0].path, "dataplane.max_reals");
    assert!(
        errs[0]
            .message
            .contains("more than max_reals can be (1048576")
            && errs[0].message.contains("set max_reals to at most 1048576"),
        "{}",
        errs[0].message
    );
    assert_error(
        &doc("max_reals = 4294967295\n", WEB),
        "dataplane.max_reals",
        "set max_reals to at most 1048576",
    );
}

#[test]
fn maglev_rings_stay_within_a_gibibyte() {
    // 2047 × 2 × 65537 slots × 4 bytes = 1_073_233_912 bytes < 2^30; 2048
    // tables are 1024.02 MiB (shown rounded up).
    ok(&doc("max_tables = 2047\n", WEB));
    let errs = errors(&doc("max_tables = 2048\n", WEB));
    assert_eq!(errs.len(), 1, "{}", ConfigErrors(errs.clone()));
    assert_eq!(errs[0].path, "dataplane.max_tables");
    assert!(
        errs[0].message.contains("= 1025 MiB of Maglev rings")
            && errs[0].message.contains("limit of 1024 MiB")
            && errs[0]
                .message
                .contains("at most 2047 with this maglev_table_size"),
        "{}",
        errs[0].message
    );
    // The largest ring: 134 × 2 × 1000003 × 4 = 1_072_003_216 < 2^30, 135
    // tables are over.
    ok(&doc("maglev_table_size = 1000003\nmax_tables = 134\n", WEB));
    assert_error(
        &doc("maglev_table_size = 1000003\nmax_tables = 135\n", WEB),
        "dataplane.max_tables",
        "at most 134 with this maglev_table_size",
    );
}

#[test]
fn conntrack_size_v6_follows_conntrack_size_unless_set() {
    let c = ok(&doc("conntrack_size = 4096\n", WEB));
    assert_eq!(
        (c.dataplane.conntrack_size, c.dataplane.conntrack_size_v6),
        (4096, 4096)
    );
    let c = ok(&doc(
        "conntrack_size = 4096\nconntrack_size_v6 = 1024\n",
        WEB,
    ));
    assert_eq!(
        (c.dataplane.conntrack_size, c.dataplane.conntrack_size_v6),
        (4096, 1024)
    );
}
