//! `[[health_checks]]`.

use super::*;

#[test]
fn health_check_timeout_must_be_shorter_than_interval() {
    let errs = errors(&with_check(
        "kind = \"http\"\ninterval = \"1s\"\ntimeout = \"2s\"",
    ));
    assert!(
        errs.iter().any(|e| e.path == "health_checks[1].timeout"
            && e.message == "2s must be shorter than interval 1s"),
        "{}",
        ConfigErrors(errs.clone())
    );
    assert_error(
        &with_check("kind = \"http\"\ntimeout = \"1s\""),
        "health_checks[1].timeout",
        "1s must be shorter than interval 1s",
    );
    assert_error(
        &with_check("kind = \"http\"\ninterval = \"500ms\"\ntimeout = \"100ms\"\njitter = \"1s\""),
        "health_checks[1].jitter",
        "1s must be shorter than interval 500ms",
    );
    assert_error(
        &with_check("kind = \"http\"\ninterval = \"0s\""),
        "health_checks[1].interval",
        "longer than 0s",
    );
}

#[test]
fn health_check_counts_and_statuses() {
    assert_error(
        &with_check("kind = \"tcp\"\nport = 22\nrise = 0"),
        "health_checks[1].rise",
        "out of range",
    );
    assert_error(
        &with_check("kind = \"tcp\"\nport = 22\nfall = 0"),
        "health_checks[1].fall",
        "out of range",
    );
    assert_error(
        &with_check("kind = \"tcp\"\nport = 0"),
        "health_checks[1].port",
        "out of range",
    );
    assert_error(
        &with_check("kind = \"http\"\nexpected_status = [200, 600]"),
        "health_checks[1].expected_status[1]",
        "600 is out of range",
    );
    assert_error(
        &with_check("kind = \"http\"\nexpected_status = [99]"),
        "health_checks[1].expected_status[0]",
        "out of range",
    );
    assert_error(
        &with_check("kind = \"http\"\nexpected_status = []"),
        "health_checks[1].expected_status",
        "must not be empty",
    );
    assert_error(
        &with_check("kind = \"http\"\npath = \"health\""),
        "health_checks[1].path",
        "must start with \"/\"",
    );
    let cfg = ok(&with_check(
        "kind = \"http\"\nexpected_status = [100, 599]\npath = \"/h?x=1\"",
    ));
    assert_eq!(cfg.health_checks[1].expected_status, vec![100, 599]);
}

#[test]
fn https_only_and_http_only_fields() {
    assert_error(
        &with_check("kind = \"http\"\nsni = \"example.com\""),
        "health_checks[1].sni",
        "only valid for kind \"https\"",
    );
    assert_error(
        &with_check("kind = \"tcp\"\nport = 1\nca_file = \"/ca.pem\""),
        "health_checks[1].ca_file",
        "only valid for kind \"https\"",
    );
    assert_error(
        &with_check("kind = \"http\"\ninsecure = true"),
        "health_checks[1].insecure",
        "only valid for kind \"https\"",
    );
    assert_error(
        &with_check("kind = \"tcp\"\nport = 1\npath = \"/\""),
        "health_checks[1].path",
        "only valid for kind \"http\" or \"https\"",
    );
    assert_error(
        &with_check("kind = \"tcp\"\nport = 1\ndeep_health = true"),
        "health_checks[1].deep_health",
        "only valid for kind \"http\" or \"https\"",
    );
    let cfg = ok(&with_check(
        "kind = \"https\"\nsni = \"example.com\"\nca_file = \"/ca.pem\"\ndeep_health = true\nbody_contains = \"ok\"",
    ));
    let h = &cfg.health_checks[1];
    assert_eq!(h.sni.as_deref(), Some("example.com"));
    assert_eq!(h.ca_file.as_deref(), Some(Path::new("/ca.pem")));
    assert!(h.deep_health);
    assert_eq!(h.body_contains.as_deref(), Some("ok"));
}

#[test]
fn insecure_with_ca_file_is_an_error() {
    assert_error(
        &with_check("kind = \"https\"\ninsecure = true\nca_file = \"/etc/ca.pem\""),
        "health_checks[1].insecure",
        "cannot be combined with ca_file",
    );
    let cfg = ok(&with_check("kind = \"https\"\ninsecure = true"));
    assert!(cfg.health_checks[1].insecure);
}

#[test]
fn tcp_check_needs_a_port_on_an_all_ports_service() {
    let text = doc(
        "",
        "[[services]]\nname = \"any\"\nvip = \"203.0.113.10\"\nprotocol = \"udp\"\nregions = [\"eu-west\"]\nhealth_check = \"t\"\n\n[[health_checks]]\nname = \"t\"\nkind = \"tcp\"\n",
    );
    let errs = errors(&text);
    assert_eq!(errs.len(), 1, "{}", ConfigErrors(errs.clone()));
    assert_eq!(errs[0].path, "services[0].health_check");
    assert!(errs[0].message.contains("health_checks[1]"));
}

#[test]
fn effective_port() {
    let cfg = ok(&doc(
        "",
        r#"
[[services]]
name = "all"
vip = "203.0.113.10"
protocol = "tcp"
regions = ["eu-west"]

[[services]]
name = "p8080"
vip = "203.0.113.10"
port = 8080
protocol = "tcp"
regions = ["eu-west"]

[[health_checks]]
name = "https"
kind = "https"

[[health_checks]]
name = "tcp9"
kind = "tcp"
port = 9
"#,
    ));
    let (all, p8080) = (&cfg.services[0], &cfg.services[1]);
    let hc = |n: &str| cfg.health_check(n).expect("defined");
    assert_eq!(hc("hc").effective_port(all), Some(80));
    assert_eq!(hc("hc").effective_port(p8080), Some(8080));
    assert_eq!(hc("https").effective_port(all), Some(443));
    assert_eq!(hc("tcp9").effective_port(p8080), Some(9));
}

#[test]
fn deep_health_status_lists() {
    let cfg = ok(&with_check(
        "kind = \"http\"\ndeep_health = true\nup_statuses = [\"UP\", \"pass\"]\ndegraded_statuses = []",
    ));
    let h = &cfg.health_checks[1];
    assert_eq!(h.up_statuses, ["UP", "pass"]);
    assert!(h.degraded_statuses.is_empty());
    let cfg = ok(&with_check(
        "kind = \"https\"\ndeep_health = true\ndegraded_statuses = [\"slow\"]",
    ));
    let h = &cfg.health_checks[1];
    assert_eq!(h.up_statuses, ["healthy", "ok", "pass", "up"]);
    assert_eq!(h.degraded_statuses, ["slow"]);

    let deep = "kind = \"http\"\ndeep_health = true\n";
    assert_error(
        &with_check(&format!("{deep}up_statuses = []")),
        "health_checks[1].up_statuses",
        "must not be empty: a deep-health check needs at least one status that means up",
    );
    assert_error(
        &with_check(&format!("{deep}up_statuses = [\"ok\", \"\"]")),
        "health_checks[1].up_statuses[1]",
        "must not be empty",
    );
    assert_error(
        &with_check(&format!("{deep}up_statuses = [\"ok\", 1]")),
        "health_checks[1].up_statuses[1]",
        "expected a string",
    );
    assert_error(
        &with_check(&format!("{deep}up_statuses = \"ok\"")),
        "health_checks[1].up_statuses",
        "expected an array",
    );
    assert_error(
        &with_check(&format!(
            "{deep}degraded_statuses = [\"warn\", \"slow\", \"warn\"]"
        )),
        "health_checks[1].degraded_statuses[2]",
        "\"warn\" is listed twice",
    );
    assert_error(
        &with_check(&format!(
            "{deep}up_statuses = [\"ok\"]\ndegraded_statuses = [\"slow\", \"ok\"]"
        )),
        "health_checks[1].degraded_statuses[1]",
        "\"ok\" is also in up_statuses: a status is either up or degraded",
    );
    assert_error(
        &with_check(&format!("{deep}degraded_statuses = [\"pass\"]")),
        "health_checks[1].degraded_statuses[0]",
        "\"pass\" is also in up_statuses (by default)",
    );
    // Without deep health the lists would be ignored: an error.
    assert_error(
        &with_check("kind = \"http\"\nup_statuses = [\"ok\"]"),
        "health_checks[1].up_statuses",
        "only used with deep_health = true",
    );
    assert_error(
        &with_check("kind = \"https\"\ndeep_health = false\ndegraded_statuses = [\"warn\"]"),
        "health_checks[1].degraded_statuses",
        "only used with deep_health = true",
    );
    assert_error(
        &with_check("kind = \"tcp\"\nport = 1\nup_statuses = [\"ok\"]"),
        "health_checks[1].up_statuses",
        "only valid for kind \"http\" or \"https\"",
    );
}
