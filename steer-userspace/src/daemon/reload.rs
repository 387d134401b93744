//! What a reload may change.
//!
//! Most of the config applies on reload. A few settings are fixed while
//! steer runs: map sizes (they are the sizes of the pinned maps), where the
//! pins live, the interfaces and attach mode, and the control socket (and
//! its read-only group) and metrics listener (they are bound once). A reload that changes any of them
//! is rejected as a whole, naming every such key, and the running config
//! keeps serving.

use crate::config::{Config, DataplaneConfig};

/// The keys (`section.key`) whose change needs a restart, in config order.
/// Empty when `new` can be applied by a reload.
pub fn restart_only_changes(old: &Config, new: &Config) -> Vec<&'static str> {
    // Destructured so that a new `[dataplane]` field cannot be added
    // without deciding here whether a reload may change it.
    let DataplaneConfig {
        interfaces,
        mode,
        next_hop_mac: _,
        source_mac: _,
        encap_source_v4: _,
        encap_source_v6: _,
        mtu: _,
        pmtu_reply_rate: _,
        pmtu_reply_burst: _,
        conntrack_size,
        conntrack_size_v6,
        maglev_table_size,
        ttl: _,
        pin_path,
        max_tables,
        max_reals,
    } = &old.dataplane;
    let b = &new.dataplane;
    let mut d = Vec::new();
    if *interfaces != b.interfaces {
        d.push("dataplane.interfaces");
    }
    if *mode != b.mode {
        d.push("dataplane.mode");
    }
    if *conntrack_size != b.conntrack_size {
        d.push("dataplane.conntrack_size");
    }
    if *conntrack_size_v6 != b.conntrack_size_v6 {
        d.push("dataplane.conntrack_size_v6");
    }
    if *maglev_table_size != b.maglev_table_size {
        d.push("dataplane.maglev_table_size");
    }
    if *pin_path != b.pin_path {
        d.push("dataplane.pin_path");
    }
    if *max_tables != b.max_tables {
        d.push("dataplane.max_tables");
    }
    if *max_reals != b.max_reals {
        d.push("dataplane.max_reals");
    }
    if old.control.socket != new.control.socket {
        d.push("control.socket");
    }
    if old.control.group != new.control.group {
        d.push("control.group");
    }
    if old.metrics.listen != new.metrics.listen {
        d.push("metrics.listen");
    }
    d
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = r#"
[dataplane]
interfaces = ["eth0"]
next_hop_mac = "02:00:00:00:00:fe"
encap_source_v4 = "198.18.0.0/24"
encap_source_v6 = "2001:db8:ffff::/112"

[[regions]]
name = "eu"

[[backends]]
name = "eu-1"
address = "192.0.2.11"
region = "eu"

[[services]]
name = "web"
vip = "203.0.113.10"
port = 80
protocol = "tcp"
regions = ["eu"]
"#;

    fn parse(text: &str) -> Config {
        Config::parse(text).unwrap_or_else(|e| panic!("invalid test config: {e}\n{text}"))
    }

    /// `BASE` with `line` added at the end of `[dataplane]`, or as a new
    /// section when it starts with `[`.
    fn with(line: &str) -> Config {
        let text = if line.starts_with('[') {
            format!("{BASE}\n{line}\n")
        } else {
            BASE.replacen(
                "encap_source_v6 = \"2001:db8:ffff::/112\"\n",
                &format!("encap_source_v6 = \"2001:db8:ffff::/112\"\n{line}\n"),
                1,
            )
        };
        parse(&text)
    }

    #[test]
    fn every_restart_only_key_is_rejected_alone() {
        let base = parse(BASE);
        let cases: [(&str, &str); 11] = [
            ("dataplane.interfaces", "interfaces = [\"eth1\"]"),
            ("dataplane.mode", "mode = \"skb\""),
            // conntrack_size_v6 follows conntrack_size unless set.
            (
                "dataplane.conntrack_size",
                "conntrack_size = 2048\nconntrack_size_v6 = 1048576",
            ),
            ("dataplane.conntrack_size_v6", "conntrack_size_v6 = 2048"),
            ("dataplane.maglev_table_size", "maglev_table_size = 251"),
            ("dataplane.pin_path", "pin_path = \"/sys/fs/bpf/other\""),
            ("dataplane.max_tables", "max_tables = 64"),
            ("dataplane.max_reals", "max_reals = 1024"),
            (
                "control.socket",
                "[control]\nsocket = \"/run/other/control.sock\"",
            ),
            ("control.group", "[control]\ngroup = \"root\""),
            ("metrics.listen", "[metrics]\nlisten = \"127.0.0.1:9999\""),
        ];
        for (key, line) in cases {
            let text = if line.starts_with("interfaces") {
                BASE.replace("interfaces = [\"eth0\"]", line)
            } else {
                String::new()
            };
            let new = if text.is_empty() {
                with(line)
            } else {
                parse(&text)
            };
            assert_eq!(
                restart_only_changes(&base, &new),
                vec![key],
                "changing only {key} ({line})"
            );
        }
    }

    #[test]
    fn reloadable_keys_pass() {
        let base = parse(BASE);
        for line in [
            "mtu = 1400",
            "ttl = 32",
            "pmtu_reply_rate = 0",
            "pmtu_reply_burst = 3",
            "next_hop_mac = \"02:00:00:00:00:fd\"",
        ] {
            let text = if line.starts_with("next_hop_mac") {
                BASE.replace("next_hop_mac = \"02:00:00:00:00:fe\"", line)
            } else {
                BASE.replacen(
                    "encap_source_v6 = \"2001:db8:ffff::/112\"\n",
                    &format!("encap_source_v6 = \"2001:db8:ffff::/112\"\n{line}\n"),
                    1,
                )
            };
            let new = parse(&text);
            assert_ne!(new, base, "{line} must change the config");
            assert!(restart_only_changes(&base, &new).is_empty(), "{line}");
        }
        // Services and backends change freely.
        let more = parse(&BASE.replace("port = 80", "port = 8080"));
        assert!(restart_only_changes(&base, &more).is_empty());
    }

    #[test]
    fn several_changes_are_all_named() {
        let base = parse(BASE);
        let new = parse(&format!(
            "{}\n[control]\nsocket = \"/run/x/c.sock\"\n",
            BASE.replace(
                "interfaces = [\"eth0\"]",
                "interfaces = [\"eth0\", \"eth1\"]"
            )
        ));
        assert_eq!(
            restart_only_changes(&base, &new),
            vec!["dataplane.interfaces", "control.socket"]
        );
    }
}
