//! `outlier_*` and `slow_start_*` keys of `[[services]]`.

use super::*;

fn svc(body: &str) -> String {
    doc(
        "",
        &format!(
            "[[services]]\nname = \"web\"\nvip = \"203.0.113.10\"\nprotocol = \"tcp\"\nregions = [\"eu-west\"]\n{body}\n"
        ),
    )
}

#[test]
fn outlier_detection_is_off_by_default_and_slow_start_too() {
    let cfg = ok(&svc(""));
    let s = cfg.service("web").expect("web");
    assert_eq!(s.outlier, None);
    assert_eq!(s.slow_start.window, Duration::ZERO);
    assert_eq!(s.slow_start.min_weight_percent, 10);
}

#[test]
fn outlier_defaults_follow_envoy_with_a_ten_percent_cap() {
    let cfg = ok(&svc("outlier_detection = true"));
    let o = cfg.service("web").expect("web").outlier.expect("on");
    assert_eq!(
        o,
        OutlierTuning {
            interval: Duration::from_secs(10),
            repeated_syn_percent: 30,
            min_new_flows: 20,
            base_ejection_time: Duration::from_secs(30),
            max_ejection_time: Duration::from_secs(300),
            max_ejection_percent: 10,
        }
    );
    // The health checks stay uncapped unless the service says otherwise.
    assert_eq!(cfg.service("web").expect("web").max_ejection_percent, 100);
}

#[test]
fn every_outlier_and_slow_start_key_is_read() {
    let cfg = ok(&svc(
        "outlier_detection = true\noutlier_interval = \"5s\"\noutlier_repeated_syn_percent = 25\n\
         outlier_min_new_flows = 7\noutlier_base_ejection_time = \"8s\"\n\
         outlier_max_ejection_time = \"1m\"\nmax_ejection_percent = 30\n\
         slow_start_window = \"20s\"\nslow_start_min_weight_percent = 5",
    ));
    let s = cfg.service("web").expect("web");
    let o = s.outlier.expect("on");
    assert_eq!(o.interval, Duration::from_secs(5));
    assert_eq!(o.repeated_syn_percent, 25);
    assert_eq!(o.min_new_flows, 7);
    assert_eq!(o.base_ejection_time, Duration::from_secs(8));
    assert_eq!(o.max_ejection_time, Duration::from_secs(60));
    // The service's cap is shared with the health checks.
    assert_eq!(o.max_ejection_percent, 30);
    assert_eq!(s.max_ejection_percent, 30);
    assert_eq!(s.slow_start.window, Duration::from_secs(20));
    assert_eq!(s.slow_start.min_weight_percent, 5);
}

#[test]
fn outlier_keys_without_outlier_detection_are_an_error() {
    assert_error(
        &svc("outlier_interval = \"5s\"\noutlier_min_new_flows = 3"),
        "services[0]",
        "outlier_interval, outlier_min_new_flows set but outlier detection is off: add \
         outlier_detection = true",
    );
    assert_error(
        &svc("outlier_detection = false\noutlier_repeated_syn_percent = 3"),
        "services[0]",
        "outlier_repeated_syn_percent set but outlier detection is off",
    );
}

#[test]
fn outlier_values_out_of_range_name_their_key() {
    for (body, path, needle) in [
        (
            "outlier_detection = 1",
            "services[0].outlier_detection",
            "",
        ),
        (
            "outlier_detection = true\noutlier_interval = \"500ms\"",
            "services[0].outlier_interval",
            "500ms is too short (at least 1s",
        ),
        (
            "outlier_detection = true\noutlier_interval = \"2h\"",
            "services[0].outlier_interval",
            "is too long (at most 1h",
        ),
        (
            "outlier_detection = true\noutlier_repeated_syn_percent = 0",
            "services[0].outlier_repeated_syn_percent",
            "",
        ),
        (
            "outlier_detection = true\noutlier_repeated_syn_percent = 101",
            "services[0].outlier_repeated_syn_percent",
            "",
        ),
        (
            "outlier_detection = true\noutlier_min_new_flows = 0",
            "services[0].outlier_min_new_flows",
            "",
        ),
        (
            "outlier_detection = true\noutlier_base_ejection_time = \"0s\"",
            "services[0].outlier_base_ejection_time",
            "must be longer than 0s",
        ),
        (
            "outlier_detection = true\noutlier_base_ejection_time = \"1m\"\noutlier_max_ejection_time = \"30s\"",
            "services[0].outlier_max_ejection_time",
            "30s is shorter than outlier_base_ejection_time (1m)",
        ),
        (
            "slow_start_window = \"2h\"",
            "services[0].slow_start_window",
            "is too long (at most 1h",
        ),
        (
            "slow_start_window = \"10s\"\nslow_start_min_weight_percent = 0",
            "services[0].slow_start_min_weight_percent",
            "",
        ),
        (
            "slow_start_min_weight_percent = 20",
            "services[0].slow_start_min_weight_percent",
            "set but slow start is off: set slow_start_window",
        ),
    ] {
        let errs = errors(&svc(body));
        assert!(
            has_error(&errs, path, needle),
            "{body}: expected {path}: {needle}, got {}",
            ConfigErrors(errs.clone())
        );
        assert_eq!(errs.len(), 1, "{body}: {}", ConfigErrors(errs.clone()));
    }
}
