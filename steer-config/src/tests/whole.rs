//! Whole configs: defaults, the example file, explicit values.

use super::*;

#[test]
fn defaults_are_applied() {
    let cfg = ok(r#"
[dataplane]
next_hop_mac = "02:00:00:00:00:01"
encap_source_v4 = "198.18.0.0/24"

[[regions]]
name = "r"

[[backends]]
name = "b"
address = "192.0.2.1"
region = "r"

[[services]]
name = "s"
vip = "203.0.113.1"
protocol = "tcp"
backends = ["b"]

[[health_checks]]
name = "h"
kind = "http"
"#);
    let d = &cfg.dataplane;
    assert!(d.interfaces.is_empty());
    assert_eq!(d.mode, AttachMode::Driver);
    assert_eq!(d.next_hop_mac, [0x02, 0, 0, 0, 0, 0x01]);
    assert_eq!(
        d.encap_source_v4,
        Some(Ipv4Prefix {
            addr: Ipv4Addr::new(198, 18, 0, 0),
            len: 24
        })
    );
    assert_eq!(d.encap_source_v6, None);
    assert_eq!(d.mtu, 1500);
    assert_eq!((d.pmtu_reply_rate, d.pmtu_reply_burst), (100, 100));
    assert_eq!(d.conntrack_size, 1_048_576);
    assert_eq!(d.conntrack_size_v6, 1_048_576);
    assert_eq!(d.maglev_table_size, 65537);
    assert_eq!(d.ttl, 64);
    assert_eq!(d.pin_path, PathBuf::from("/sys/fs/bpf/steer"));
    assert_eq!(d.max_tables, 128);
    assert_eq!(d.max_reals, 65536);

    assert_eq!(
        cfg.regions,
        vec![Region {
            name: "r".into(),
            description: None,
            dial: 100,
            max_new_flows_per_second: None,
            capacity_scaler: Milli(1000),
        }]
    );
    let b = &cfg.backends[0];
    assert_eq!(b.weight, 100);
    assert_eq!(b.encapsulation, Encapsulation::Ip);
    assert_eq!(b.health_check, None);

    let s = &cfg.services[0];
    assert_eq!(s.port, 0);
    assert_eq!(s.protocol, Protocol::Tcp);
    assert_eq!(s.affinity, Affinity::Flow);
    assert!(s.regions.is_empty());
    assert_eq!(s.health_check, None);
    assert_eq!(s.policy, Policy::Maglev);
    assert_eq!(s.overprovisioning_factor, Milli(1400));
    assert_eq!(s.panic_threshold, 50);
    assert_eq!(s.on_no_healthy, OnNoHealthy::FailOpen);
    assert_eq!(s.max_ejection_percent, 100);
    assert_eq!(
        s.latency,
        LatencyTuning {
            margin_percent: 20,
            margin_min: Duration::from_millis(5),
            dwell: Duration::from_secs(30),
        }
    );
    assert!(cfg.client_classes.is_empty());
    assert_eq!(cfg.geoip, None);

    let h = &cfg.health_checks[0];
    assert_eq!(h.kind, CheckKind::Http);
    assert_eq!(h.port, None);
    assert_eq!(h.path, "/");
    assert_eq!(h.interval, Duration::from_secs(1));
    assert_eq!(h.timeout, Duration::from_millis(500));
    assert_eq!(h.rise, 2);
    assert_eq!(h.fall, 3);
    assert_eq!(h.jitter, Duration::from_millis(100));
    assert_eq!(h.expected_status, vec![200]);
    assert_eq!(h.body_contains, None);
    assert!(!h.deep_health);
    assert_eq!(h.up_statuses, ["healthy", "ok", "pass", "up"]);
    assert_eq!(h.degraded_statuses, ["degraded", "warn"]);
    assert_eq!(h.sni, None);
    assert_eq!(h.ca_file, None);
    assert!(!h.insecure);
    // The constructor gives exactly the parsed defaults.
    assert_eq!(*h, HealthCheck::new("h", CheckKind::Http));

    assert_eq!(cfg.control.socket, PathBuf::from("/run/steer/control.sock"));
    assert_eq!(
        cfg.metrics.listen,
        "127.0.0.1:9477".parse::<SocketAddr>().expect("literal")
    );
}

#[test]
fn example_config_parses() {
    let cfg = ok(include_str!("../../../examples/steer.toml"));
    assert_eq!(cfg.regions.len(), 3);
    assert!(cfg.services.len() >= 3);
    assert!(cfg.services.iter().any(|s| s.vip.is_ipv4()));
    assert!(cfg.services.iter().any(|s| s.vip.is_ipv6()));
    assert!(cfg.backends.iter().any(|b| b.address.is_ipv4()));
    assert!(cfg.backends.iter().any(|b| b.address.is_ipv6()));
    assert!(!cfg.health_checks.is_empty());
    // Every service resolves to at least one backend and a health check.
    for s in &cfg.services {
        let backends = cfg.service_backends(s);
        assert!(!backends.is_empty(), "{} has no backends", s.name);
        for b in backends {
            let hc = cfg.health_check_for(s, b);
            assert!(hc.is_some(), "{}/{} has no health check", s.name, b.name);
            assert!(hc.and_then(|h| h.effective_port(s)).is_some());
        }
    }
}

#[test]
fn explicit_values_are_read() {
    let cfg = ok(&doc(
        r#"interfaces = ["eth0", "eth1"]
mode = "auto"
mtu = 9000
pmtu_reply_rate = 7
pmtu_reply_burst = 3
conntrack_size = 2048
maglev_table_size = 251
ttl = 32
pin_path = "/sys/fs/bpf/other"
max_tables = 4
max_reals = 100
"#,
        r#"
[[services]]
name = "web"
vip = "2001:db8:100::1"
port = 443
protocol = "udp"
affinity = "client"
backends = ["us-1"]
health_check = "hc"

[control]
socket = "/tmp/steer.sock"

[metrics]
listen = "[::1]:9100"
"#,
    ));
    let d = &cfg.dataplane;
    assert_eq!(d.interfaces, vec!["eth0".to_string(), "eth1".to_string()]);
    assert_eq!(d.mode, AttachMode::Auto);
    assert_eq!(d.mtu, 9000);
    assert_eq!((d.pmtu_reply_rate, d.pmtu_reply_burst), (7, 3));
    assert_eq!(d.conntrack_size, 2048);
    // Not set: follows conntrack_size.
    assert_eq!(d.conntrack_size_v6, 2048);
    assert_eq!(d.maglev_table_size, 251);
    assert_eq!(d.ttl, 32);
    assert_eq!(d.pin_path, PathBuf::from("/sys/fs/bpf/other"));
    assert_eq!((d.max_tables, d.max_reals), (4, 100));
    assert_eq!(
        d.encap_source_v6,
        Some(Ipv6Prefix {
            addr: "2001:db8:ffff::".parse().expect("literal"),
            len: 96
        })
    );
    let s = &cfg.services[0];
    assert_eq!(s.port, 443);
    assert_eq!(s.protocol, Protocol::Udp);
    assert_eq!(s.affinity, Affinity::Client);
    assert_eq!(s.health_check.as_deref(), Some("hc"));
    assert_eq!(cfg.control.socket, PathBuf::from("/tmp/steer.sock"));
    assert_eq!(cfg.metrics.listen.port(), 9100);
}

#[test]
fn every_example_parses() {
    // Every new key is optional: the examples written before client
    // classes and region policies still parse, with today's behaviour.
    // (Text only: steer.toml names a ca_file of the host it is meant for.)
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
    for name in ["steer.toml", "lab.toml", "replay.toml"] {
        let text = std::fs::read_to_string(dir.join(name)).expect("example");
        let cfg = Config::parse(&text).unwrap_or_else(|e| panic!("{name}:\n{e}"));
        assert!(!cfg.services.is_empty(), "{name}");
    }
}
