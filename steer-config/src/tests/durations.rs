//! Durations.

use super::*;

#[test]
fn parse_durations() {
    for (text, ms) in [
        ("1s", 1000),
        ("250ms", 250),
        ("2m", 120_000),
        ("1h", 3_600_000),
        ("1m30s", 90_000),
        ("1s500ms", 1500),
        ("0s", 0),
        ("0ms", 0),
    ] {
        assert_eq!(
            parse_duration(text),
            Ok(Duration::from_millis(ms)),
            "{text}"
        );
    }
    for text in [
        "",
        "1.5s",
        "5 s",
        " 1s",
        "-1s",
        "1d",
        "ms",
        "1s2",
        "1µs",
        "99999999999999999999s",
    ] {
        assert!(parse_duration(text).is_err(), "{text:?} accepted");
    }
    let e = parse_duration("10").err().unwrap_or_default();
    assert!(e.contains("no unit"), "{e}");
    let e = parse_duration("1x").err().unwrap_or_default();
    assert!(e.contains("is not a duration"), "{e}");
}

#[test]
fn format_durations_round_trip() {
    for (ms, text) in [
        (1000, "1s"),
        (500, "500ms"),
        (90_000, "1m30s"),
        (3_600_000, "1h"),
        (3_723_004, "1h2m3s4ms"),
        (0, "0s"),
    ] {
        let d = Duration::from_millis(ms);
        assert_eq!(format_duration(d), text);
        assert_eq!(parse_duration(text), Ok(d));
    }
}

#[test]
fn durations_must_be_strings() {
    assert_error(
        &with_check("kind = \"http\"\ninterval = 1000"),
        "health_checks[1].interval",
        "expected a duration string such as \"1s\"",
    );
}
