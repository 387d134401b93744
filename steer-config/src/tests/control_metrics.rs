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
