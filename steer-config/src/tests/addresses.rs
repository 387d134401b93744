//! VIP and backend addresses.

use super::*;

#[test]
fn bad_vip_is_not_an_ip_address() {
    let text = doc(
        "",
        r#"
[[services]]
name = "a"
vip = "203.0.113.1"
protocol = "tcp"
regions = ["eu-west"]

[[services]]
name = "b"
vip = "203.0.113.2"
protocol = "tcp"
regions = ["eu-west"]

[[services]]
name = "c"
vip = "203.0.113.300"
protocol = "tcp"
regions = ["eu-west"]
"#,
    );
    assert_error(
        &text,
        "services[2].vip",
        r#""203.0.113.300" is not an IP address"#,
    );
}

#[test]
fn unusable_addresses() {
    let text = doc(
        "",
        r#"
[[services]]
name = "a"
vip = "0.0.0.0"
protocol = "tcp"
regions = ["eu-west"]

[[services]]
name = "b"
vip = "ff02::1"
protocol = "tcp"
regions = ["us-east"]

[[backends]]
name = "lo"
address = "127.0.0.1"
region = "eu-west"

[[backends]]
name = "mapped"
address = "::ffff:192.0.2.77"
region = "eu-west"
"#,
    );
    let errs = errors(&text);
    assert!(has_error(&errs, "services[0].vip", "unspecified"));
    assert!(has_error(&errs, "services[1].vip", "multicast"));
    assert!(has_error(&errs, "backends[3].address", "loopback"));
    assert!(has_error(&errs, "backends[4].address", "192.0.2.77"));
}

#[test]
fn duplicate_backend_address() {
    let text = format!(
        r#"[dataplane]
{DP}
[[regions]]
name = "eu-west"

[[backends]]
name = "eu-0"
address = "192.0.2.4"
region = "eu-west"

[[backends]]
name = "eu-1"
address = "192.0.2.5"
region = "eu-west"

[[backends]]
name = "eu-2"
address = "192.0.2.6"
region = "eu-west"

[[backends]]
name = "eu-3"
address = "192.0.2.5"
region = "eu-west"
{WEB}"#
    );
    assert_error(
        &text,
        "backends[3].address",
        r#"192.0.2.5 is already used by backends[1] "eu-1""#,
    );
}

#[test]
fn backend_cannot_be_a_vip() {
    let text = doc(
        "",
        &format!("{WEB}\n[[backends]]\nname = \"loop\"\naddress = \"203.0.113.10\"\nregion = \"us-east\"\n"),
    );
    assert_error(
        &text,
        "backends[3].address",
        "is the VIP of services[0] \"web\"",
    );
}
