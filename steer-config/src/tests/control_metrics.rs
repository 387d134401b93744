//! `[control]` and `[metrics]`.

use super::*;

#[test]
fn metrics_must_listen_on_loopback() {
    assert_error(
        &doc(
            "",
            &format!("{WEB}\n[metrics]\nlisten = \"0.0.0.0:9477\"\n"),
        ),
        "metrics.listen",
        "is not a loopback address",
    );
    assert_error(
        &doc(
            "",
            &format!("{WEB}\n[metrics]\nlisten = \"localhost:9477\"\n"),
        ),
        "metrics.listen",
        "is not a socket address",
    );
    ok(&doc(
        "",
        &format!("{WEB}\n[metrics]\nlisten = \"[::1]:9477\"\n"),
    ));
}

#[test]
fn control_socket_path_length() {
    let long = format!("/{}", "x".repeat(120));
    assert_error(
        &doc("", &format!("{WEB}\n[control]\nsocket = \"{long}\"\n")),
        "control.socket",
        "at most 107",
    );
}

#[test]
fn control_group_is_optional() {
    assert_eq!(ok(&doc("", WEB)).control.group, None);
}

#[test]
fn control_group_by_name_or_number() {
    let group = |value: &str| {
        ok(&doc("", &format!("{WEB}\n[control]\ngroup = {value}\n")))
            .control
            .group
    };
    // Every Unix system has a group named root with gid 0.
    let root = Some(ControlGroup {
        name: "root".into(),
        gid: 0,
    });
    assert_eq!(group("\"root\""), root);
    assert_eq!(group("0"), root);
    // A gid need not have a name: the number stands for it.
    let unnamed = (4_000_000_000u32..4_000_000_100)
        .find(|g| {
            nix::unistd::Group::from_gid(nix::unistd::Gid::from_raw(*g))
                .map(|found| found.is_none())
                .unwrap_or(false)
        })
        .expect("an unused gid");
    assert_eq!(
        group(&unnamed.to_string()),
        Some(ControlGroup {
            name: unnamed.to_string(),
            gid: unnamed,
        })
    );
}

#[test]
fn control_group_must_exist_and_be_a_group() {
    let with = |value: &str| doc("", &format!("{WEB}\n[control]\ngroup = {value}\n"));
    assert_error(
        &with("\"steer-no-such-group\""),
        "control.group",
        "no group named \"steer-no-such-group\" on this system (create it with `groupadd steer-no-such-group`",
    );
    assert_error(&with("\"\""), "control.group", "must not be empty");
    assert_error(
        &with("-1"),
        "control.group",
        "-1 is not a group id (0 to 4294967294)",
    );
    assert_error(
        &with("4294967295"),
        "control.group",
        "4294967295 is not a group id (0 to 4294967294)",
    );
    assert_error(
        &with("true"),
        "control.group",
        "expected a group name (string) or a group id (integer), found boolean true",
    );
}
