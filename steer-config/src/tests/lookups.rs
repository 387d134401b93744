//! Lookups on a valid config.

use super::*;

#[test]
fn service_backends_dedupes_in_config_order() {
    let cfg = ok(&doc(
        "",
        "[[services]]\nname = \"s\"\nvip = \"203.0.113.1\"\nprotocol = \"tcp\"\nbackends = [\"us-1\", \"eu-1\"]\nregions = [\"eu-west\"]\n",
    ));
    let names: Vec<&str> = cfg
        .service_backends(&cfg.services[0])
        .iter()
        .map(|b| b.name.as_str())
        .collect();
    assert_eq!(names, ["eu-1", "eu-2", "us-1"]);
}

#[test]
fn health_check_for_prefers_the_backend_override() {
    let cfg = ok(&doc(
        "",
        r#"
[[services]]
name = "s"
vip = "203.0.113.1"
port = 80
protocol = "tcp"
regions = ["eu-west"]
health_check = "hc"

[[services]]
name = "bare"
vip = "203.0.113.2"
port = 80
protocol = "tcp"
backends = ["eu-1"]

[[backends]]
name = "odd"
address = "192.0.2.60"
region = "eu-west"
health_check = "alt"

[[health_checks]]
name = "alt"
kind = "tcp"
port = 22
"#,
    ));
    let s = cfg.service("s").expect("defined");
    let bare = cfg.service("bare").expect("defined");
    let eu1 = cfg.backend("eu-1").expect("defined");
    let odd = cfg.backend("odd").expect("defined");
    assert_eq!(
        cfg.health_check_for(s, eu1).map(|h| h.name.as_str()),
        Some("hc")
    );
    assert_eq!(
        cfg.health_check_for(s, odd).map(|h| h.name.as_str()),
        Some("alt")
    );
    assert_eq!(cfg.health_check_for(bare, eu1), None);
}
