//! Syntax, unknown keys, types, required fields, keywords and names.

use super::*;

#[test]
fn syntax_error_has_line_and_column() {
    let errs = errors("[dataplane]\nnext_hop_mac = \"02:00:00:00:00:01\"\nmtu = = 5\n");
    assert_eq!(errs.len(), 1);
    assert_eq!(errs[0].path, "(syntax)");
    assert!(errs[0].message.contains("line 3"), "{}", errs[0].message);
    assert!(errs[0].message.contains("column"), "{}", errs[0].message);
    assert!(!errs[0].message.contains('\n'));
}

#[test]
fn unknown_key_lists_expected_keys() {
    let text = doc(
        "",
        r#"
[[services]]
name = "web"
vip = "203.0.113.10"
prot = "tcp"
protocol = "tcp"
regions = ["eu-west"]
"#,
    );
    assert_error(
        &text,
        "services[0].prot",
        "unknown key (expected one of: name, vip, port, protocol, affinity, backends, regions, \
         health_check, policy, classes, region_weights, tiers, overprovisioning_factor, \
         panic_threshold, on_no_healthy, max_ejection_percent, latency_margin, \
         latency_margin_min, latency_dwell, outlier_detection, outlier_interval, \
         outlier_repeated_syn_percent, outlier_min_new_flows, outlier_base_ejection_time, \
         outlier_max_ejection_time, slow_start_window, slow_start_min_weight_percent)",
    );
}

#[test]
fn unknown_section_and_dataplane_key() {
    let text = doc("mtus = 1500\n", "[dataplan]\nmtu = 1\n");
    assert_error(
        &text,
        "dataplan",
        "unknown key (expected one of: dataplane,",
    );
    assert_error(
        &text,
        "dataplane.mtus",
        "unknown key (expected one of: interfaces,",
    );
}

#[test]
fn wrong_types_are_reported() {
    let text = doc(
        "mtu = \"1500\"\n",
        r#"
[[services]]
name = "web"
vip = 5
port = 80
protocol = "tcp"
regions = "eu-west"
"#,
    );
    assert_error(
        &text,
        "dataplane.mtu",
        "expected an integer, found string \"1500\"",
    );
    assert_error(&text, "services[0].vip", "found integer 5");
    assert_error(&text, "services[0].regions", "expected an array");
}

#[test]
fn section_of_wrong_shape() {
    let text = "dataplane = 5\n[backends]\nname = \"x\"\n";
    let errs = errors(text);
    assert!(has_error(&errs, "dataplane", "expected a table"));
    assert!(has_error(&errs, "backends", "[[backends]]"));
    // No "missing" errors on top of the wrong type.
    assert!(!errs.iter().any(|e| e.path == "dataplane.next_hop_mac"));
}

#[test]
fn missing_next_hop_mac() {
    let text = format!(
        "[dataplane]\nencap_source_v4 = \"198.18.0.0/24\"\nencap_source_v6 = \"2001:db8:ffff::/96\"\n{BASE}{WEB}"
    );
    assert_error(
        &text,
        "dataplane.next_hop_mac",
        r#"missing (required), e.g. "02:00:00:00:00:01""#,
    );
    // No [dataplane] at all: the same error.
    assert_error(
        "",
        "dataplane.next_hop_mac",
        r#"missing (required), e.g. "02:00:00:00:00:01""#,
    );
}

#[test]
fn missing_required_fields_of_entries() {
    let text = doc(
        "",
        r#"
[[services]]
name = "web"
vip = "203.0.113.10"
regions = ["eu-west"]

[[backends]]
name = "x"

[[health_checks]]
name = "h2"
"#,
    );
    let errs = errors(&text);
    assert!(has_error(
        &errs,
        "services[0].protocol",
        "missing (required)"
    ));
    assert!(has_error(
        &errs,
        "backends[3].address",
        "missing (required)"
    ));
    assert!(has_error(&errs, "backends[3].region", "missing (required)"));
    assert!(has_error(
        &errs,
        "health_checks[1].kind",
        "missing (required)"
    ));
}

#[test]
fn bad_keyword_values() {
    let text = doc(
        "mode = \"native\"\n",
        r#"
[[services]]
name = "web"
vip = "203.0.113.10"
protocol = "tpc"
affinity = "sticky"
regions = ["eu-west"]

[[backends]]
name = "x"
address = "192.0.2.99"
region = "eu-west"
encapsulation = "gre"
"#,
    );
    let errs = errors(&text);
    assert!(has_error(
        &errs,
        "dataplane.mode",
        r#""native" is not a valid attach mode"#
    ));
    assert!(has_error(
        &errs,
        "services[0].protocol",
        r#"expected one of: "tcp", "udp""#
    ));
    assert!(has_error(&errs, "services[0].affinity", r#""sticky""#));
    assert!(has_error(&errs, "backends[3].encapsulation", r#""gre""#));
}

#[test]
fn invalid_names() {
    let text = doc(
        "",
        "[[regions]]\nname = \"eu west\"\n[[regions]]\nname = \"\"\n",
    );
    let errs = errors(&text);
    assert!(has_error(&errs, "regions[2].name", "is not a valid name"));
    assert!(has_error(&errs, "regions[3].name", "is not a valid name"));
}

#[test]
fn unknown_keys_list_the_keys_of_their_section() {
    // The lists are those of the tables in docs/config.md, in their order.
    let text = format!(
        "{}\n[[regions]]\nname = \"r9\"\nx = 1\n[[backends]]\nname = \"b9\"\naddress = \"192.0.2.99\"\nregion = \"r9\"\nx = 1\n{WEB}x = 1\n[[health_checks]]\nname = \"h9\"\nkind = \"tcp\"\nport = 1\nx = 1\n[[client_classes]]\nname = \"c\"\nprefixes = [\"192.0.2.0/24\"]\nx = 1\n[geoip]\ndatabase = \"x.mmdb\"\nx = 1\n[control]\nx = 1\n[metrics]\nx = 1\n",
        doc("x = 1\n", "")
    );
    let errs = errors(&text);
    let expected = [
        (
            "dataplane.x",
            "interfaces, mode, next_hop_mac, source_mac, encap_source_v4, encap_source_v6, mtu, \
             pmtu_reply_rate, pmtu_reply_burst, conntrack_size, conntrack_size_v6, maglev_table_size, ttl, \
             pin_path, max_tables, max_reals",
        ),
        (
            "regions[2].x",
            "name, description, dial, max_new_flows_per_second, capacity_scaler",
        ),
        (
            "backends[3].x",
            "name, address, region, weight, encapsulation, health_check",
        ),
        (
            "services[0].x",
            "name, vip, port, protocol, affinity, backends, regions, health_check, policy, \
             classes, region_weights, tiers, overprovisioning_factor, panic_threshold, \
             on_no_healthy, max_ejection_percent, latency_margin, latency_margin_min, \
             latency_dwell, outlier_detection, outlier_interval, outlier_repeated_syn_percent, \
             outlier_min_new_flows, outlier_base_ejection_time, outlier_max_ejection_time, \
             slow_start_window, slow_start_min_weight_percent",
        ),
        (
            "health_checks[1].x",
            "name, kind, port, path, interval, timeout, rise, fall, jitter, \
             expected_status, body_contains, deep_health, up_statuses, degraded_statuses, sni, \
             ca_file, insecure",
        ),
        (
            "client_classes[0].x",
            "name, prefixes, prefix_files, countries, continents, regions, allowed_regions",
        ),
        ("geoip.x", "database"),
        ("control.x", "socket, group"),
        ("metrics.x", "listen"),
    ];
    let got: Vec<(String, String)> = errs
        .iter()
        .map(|e| (e.path.clone(), e.message.clone()))
        .collect();
    let want: Vec<(String, String)> = expected
        .iter()
        .map(|(p, keys)| {
            (
                p.to_string(),
                format!("unknown key (expected one of: {keys})"),
            )
        })
        .collect();
    assert_eq!(got, want);
}

#[test]
fn unknown_keys_come_first_in_their_entry() {
    let errs = errors(&doc(
        "",
        "[[services]]\nname = \"web\"\nvip = \"x\"\nprotocol = \"tcp\"\nregions = [\"eu-west\"]\ncolour = 1\n",
    ));
    let paths: Vec<&str> = errs.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(paths, ["services[0].colour", "services[0].vip"]);
}
