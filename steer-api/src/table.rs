//! `steer status` for people: a fixed-width table.
//!
//! ```text
//! steer 0.1.0  up 2h05m  interfaces eth0 (driver), eth1 (skb, adopted)
//! drops: fragment 3, no_backend 1
//! generation 7  config /etc/steer/steer.toml  reloads 2  reload failures 1
//! last reload error: services[0].vip: "x" is not an IP address
//!
//! service web  vip 203.0.113.10:80/tcp  affinity flow  packets 1234  bytes 98765  new flows 56
//!   BACKEND  REGION  ADDRESS   HEALTH  WEIGHT         PACKETS  NEW FLOWS  REPEATED SYNS  HANDSHAKES  LAST UP   LAST DOWN  LAST FAILURE
//!   web-1    eu      10.0.0.1  up      100/100           1000         40              1          38  -         -
//!   web-2    us      10.0.0.2  down    0/100                0          0              0           0  1h02m ago  3m12s ago  connection refused
//!   web-3    us      10.0.0.3  up      0/100 drained      234         16              0          16  -         -
//! ```
//!
//! WEIGHT is effective/configured. REPEATED SYNS and HANDSHAKES are the
//! passive health counters (flow-affinity TCP services only): SYNs the
//! client had to repeat after one sent to this backend went unanswered,
//! and handshakes completed through it. LAST UP and LAST DOWN say how long ago
//! the health checks last brought the backend up or took it down ("-": not
//! since the daemon started); `--json` has the Unix timestamps. The drops
//! line lists the reasons with packets only ("drops: none"). A report from
//! a daemon too old to send its version starts at the generation line. The
//! last failure is shown for backends that are down or degraded, last so
//! that a long reason does not widen the other columns. Columns have the
//! same widths in every service's block. Text is shown on one line: control
//! characters (newlines in an error) become spaces, and a failure reason is
//! cut at 80 characters (`--json` has it whole).

use std::fmt::Write as _;

use crate::protocol::{ShiftReport, StatusReport};

/// Longest failure reason shown in the HEALTH column.
const MAX_REASON_CHARS: usize = 80;

const COLUMNS: usize = 12;
const HEADER: [&str; COLUMNS] = [
    "BACKEND",
    "REGION",
    "ADDRESS",
    "HEALTH",
    "WEIGHT",
    "PACKETS",
    "NEW FLOWS",
    "REPEATED SYNS",
    "HANDSHAKES",
    "LAST UP",
    "LAST DOWN",
    "LAST FAILURE",
];
/// Which columns are right-aligned (the numbers).
const RIGHT: [bool; COLUMNS] = [
    false, false, false, false, false, true, true, true, true, false, false, false,
];

/// Renders `r` as a table for a terminal (see the module documentation).
/// The text ends with a newline.
pub fn render_status_table(r: &StatusReport) -> String {
    let mut out = String::new();
    if !r.version.is_empty() {
        let ifaces: Vec<String> = r
            .interfaces
            .iter()
            .map(|i| {
                let adopted = if i.adopted { ", adopted" } else { "" };
                format!("{} ({}{adopted})", one_line(&i.name), one_line(&i.mode))
            })
            .collect();
        let _ = writeln!(
            out,
            "steer {}  up {}  interfaces {}",
            one_line(&r.version),
            duration(r.uptime_seconds),
            if ifaces.is_empty() {
                "none".to_string()
            } else {
                ifaces.join(", ")
            }
        );
        let mut drops: Vec<String> = r
            .drops
            .iter()
            .filter(|(_, &n)| n > 0)
            .map(|(reason, n)| format!("{} {n}", one_line(reason)))
            .collect();
        if r.ct_insert_failures > 0 {
            drops.push(format!(
                "(conntrack inserts failed: {})",
                r.ct_insert_failures
            ));
        }
        if r.pmtu_replies > 0 {
            drops.push(format!("(path-MTU replies sent: {})", r.pmtu_replies));
        }
        let _ = writeln!(
            out,
            "drops: {}",
            if drops.is_empty() {
                "none".to_string()
            } else {
                drops.join(", ")
            }
        );
    }
    if !r.drained_regions.is_empty() {
        let names: Vec<String> = r.drained_regions.iter().map(|n| one_line(n)).collect();
        let _ = writeln!(out, "drained regions: {}", names.join(", "));
    }
    for m in &r.regions {
        if m.rtt_ms.is_none() && m.capacity.is_none() {
            continue;
        }
        let mut line = format!("region {}", one_line(&m.name));
        if let Some(rtt) = m.rtt_ms {
            let _ = write!(line, "  rtt {rtt:.1} ms");
        }
        if let Some(rate) = m.new_flows_per_second {
            let _ = write!(line, "  new flows {rate:.0}/s");
        }
        if let Some(cap) = m.capacity {
            let _ = write!(line, "  capacity {cap:.0}/s  keep {:.3}", m.keep);
        }
        let _ = writeln!(out, "{line}");
    }
    let _ = writeln!(
        out,
        "generation {}  config {}  reloads {}  reload failures {}",
        r.generation,
        one_line(&r.config_path),
        r.reloads,
        r.reload_failures
    );
    if let Some(err) = &r.last_reload_error {
        let _ = writeln!(out, "last reload error: {}", one_line(err));
    }
    if r.services.is_empty() {
        out.push_str("\nno services\n");
        return out;
    }

    // Every backend row of every service, to size the columns once.
    let rows: Vec<Vec<[String; COLUMNS]>> = r
        .services
        .iter()
        .map(|s| {
            s.backends
                .iter()
                .map(|b| {
                    let reason = match &b.last_failure {
                        Some(reason) if b.health.is_failing() => truncate(&one_line(reason)),
                        _ => String::new(),
                    };
                    let mut weight = format!("{}/{}", b.effective_weight, b.weight);
                    if b.drained {
                        weight.push_str(" drained");
                    }
                    if b.ejected {
                        weight.push_str(" ejected");
                    }
                    if let Some(p) = b.slow_start_percent {
                        weight.push_str(&format!(" slow start {p:.0}%"));
                    }
                    [
                        one_line(&b.name),
                        one_line(&b.region),
                        one_line(&b.address),
                        b.health.to_string(),
                        weight,
                        b.packets.to_string(),
                        b.new_flows.to_string(),
                        b.repeated_syns.to_string(),
                        b.handshakes.to_string(),
                        ago(r.time, b.last_up_at),
                        ago(r.time, b.last_down_at),
                        reason,
                    ]
                })
                .collect()
        })
        .collect();
    let mut widths = HEADER.map(|h| h.chars().count());
    for row in rows.iter().flatten() {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }

    for (service, rows) in r.services.iter().zip(&rows) {
        let mut policy = String::new();
        if !service.policy.is_empty() {
            let _ = write!(
                policy,
                "  policy {}  hash {}",
                one_line(&service.policy),
                one_line(&service.content_hash)
            );
        }
        let _ = writeln!(
            out,
            "\nservice {}  vip {}  affinity {}  packets {}  bytes {}  new flows {}{policy}",
            one_line(&service.name),
            one_line(&service.vip),
            service.affinity,
            service.packets,
            service.bytes,
            service.new_flows
        );
        for t in &service.tables {
            let shares: Vec<String> = t
                .regions
                .iter()
                .map(|g| {
                    let mut s = format!("{} {:.1}%", one_line(&g.name), g.share * 100.0);
                    let mut notes = Vec::new();
                    if g.healthy < 1.0 {
                        notes.push(format!("{:.0}% healthy", g.healthy * 100.0));
                    }
                    if g.dial < 100 {
                        notes.push(format!("dial {}", g.dial));
                    }
                    if g.keep < 1.0 {
                        notes.push(format!("keep {:.3}", g.keep));
                    }
                    if g.panic {
                        notes.push("PANIC".to_string());
                    }
                    if !notes.is_empty() {
                        let _ = write!(s, " ({})", notes.join(", "));
                    }
                    s
                })
                .collect();
            let residency = match &t.allowed_regions {
                Some(a) => format!(
                    "  residency {}",
                    a.iter().map(|n| one_line(n)).collect::<Vec<_>>().join(",")
                ),
                None => String::new(),
            };
            let _ = writeln!(
                out,
                "  {}: {}  [{}]{residency}",
                t.class.as_deref().map_or_else(
                    || "default".to_string(),
                    |c| format!("class {}", one_line(c))
                ),
                if shares.is_empty() {
                    "no region".to_string()
                } else {
                    shares.join(", ")
                },
                one_line(&t.outcome)
            );
        }
        for b in &service.ejection_capped {
            let _ = writeln!(
                out,
                "  {} is down but kept: max_ejection_percent reached",
                one_line(b)
            );
        }
        if let Some(shift) = &service.shift {
            let _ = writeln!(out, "  {}", shift_line(shift));
        }
        if rows.is_empty() {
            out.push_str("  (no backends)\n");
            continue;
        }
        push_row(&mut out, &HEADER.map(String::from), &widths);
        for row in rows {
            push_row(&mut out, row, &widths);
        }
    }
    out
}

/// A service's staged shift on one line: `shift eu -> us: running at
/// stage 2 of 4 (25%), next stage in 4m12s`.
pub fn shift_line(s: &ShiftReport) -> String {
    let next = match (s.state.as_str(), s.next_stage_in_ms) {
        ("running", Some(ms)) => format!(", next stage in {}", duration(ms.div_ceil(1000))),
        ("paused", Some(ms)) => format!(", {} of the hold left", duration(ms.div_ceil(1000))),
        _ => String::new(),
    };
    let watch = if s.rollback_if.is_empty() || !matches!(s.state.as_str(), "running" | "paused") {
        String::new()
    } else {
        format!("; rollback if {}", one_line(&s.rollback_if.join(", ")))
    };
    format!(
        "shift {} -> {}: {}{next}; {}% of {}'s new flows go to {}{watch}",
        one_line(&s.from),
        one_line(&s.to),
        one_line(&s.description),
        s.percent,
        one_line(&s.from),
        one_line(&s.to)
    )
}

fn push_row(out: &mut String, cells: &[String; COLUMNS], widths: &[usize; COLUMNS]) {
    let mut line = String::from(" ");
    for ((cell, &width), &right) in cells.iter().zip(widths).zip(&RIGHT) {
        line.push(' ');
        let pad = width.saturating_sub(cell.chars().count());
        if right {
            line.extend(std::iter::repeat_n(' ', pad));
            line.push_str(cell);
        } else {
            line.push_str(cell);
            line.extend(std::iter::repeat_n(' ', pad));
        }
        line.push(' ');
    }
    out.push_str(line.trim_end());
    out.push('\n');
}

/// How long before `now` the Unix time `at` was: `"3m12s ago"`, or `"-"`
/// for none.
fn ago(now: u64, at: Option<u64>) -> String {
    match at {
        Some(at) => format!("{} ago", duration(now.saturating_sub(at))),
        None => "-".to_string(),
    }
}

/// A duration for people, to two units: `45s`, `3m12s`, `2h05m`, `3d04h`.
fn duration(secs: u64) -> String {
    let (d, h, m, s) = (secs / 86_400, secs / 3600 % 24, secs / 60 % 60, secs % 60);
    if d > 0 {
        format!("{d}d{h:02}h")
    } else if h > 0 {
        format!("{h}h{m:02}m")
    } else if m > 0 {
        format!("{m}m{s:02}s")
    } else {
        format!("{s}s")
    }
}

/// `s` with every control character (newline, tab, escape) replaced by a space.
fn one_line(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

fn truncate(s: &str) -> String {
    if s.chars().count() <= MAX_REASON_CHARS {
        return s.to_string();
    }
    let mut cut: String = s.chars().take(MAX_REASON_CHARS - 1).collect();
    cut.push('…');
    cut
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{Affinity, BackendStatus, Health, InterfaceStatus, ServiceStatus};

    fn backend(name: &str, region: &str, address: &str, health: Health) -> BackendStatus {
        BackendStatus {
            name: name.into(),
            address: address.into(),
            region: region.into(),
            weight: 100,
            effective_weight: 100,
            health,
            ..BackendStatus::default()
        }
    }

    fn report() -> StatusReport {
        let mut down = backend("web-2", "us", "10.0.0.2", Health::Down);
        down.effective_weight = 0;
        down.last_failure = Some("connection\nrefused".into());
        let mut drained = backend("web-3", "us", "2001:db8::3", Health::Up);
        drained.effective_weight = 0;
        drained.drained = true;
        drained.packets = 234;
        drained.new_flows = 16;
        drained.handshakes = 15;
        let mut up = backend("web-1", "eu", "10.0.0.1", Health::Up);
        up.packets = 1000;
        up.new_flows = 40;
        up.repeated_syns = 3;
        up.handshakes = 37;
        up.last_failure = Some("old failure, not shown".into());
        let mut degraded = backend("dns-1", "eu", "10.0.1.1", Health::Degraded);
        degraded.weight = 5;
        degraded.effective_weight = 5;
        degraded.last_failure = Some("x".repeat(90));
        StatusReport {
            generation: 7,
            config_path: "/etc/steer/steer.toml".into(),
            reloads: 2,
            reload_failures: 1,
            last_reload_error: Some("services[0].vip: bad\ndataplane.mtu: bad".into()),
            services: vec![
                ServiceStatus {
                    name: "web".into(),
                    vip: "203.0.113.10:80/tcp".into(),
                    affinity: Affinity::Flow,
                    packets: 1234,
                    bytes: 98765,
                    new_flows: 56,
                    backends: vec![up, down, drained],
                    ..ServiceStatus::default()
                },
                ServiceStatus {
                    name: "dns".into(),
                    vip: "[2001:db8::53]:53/udp".into(),
                    affinity: Affinity::Client,
                    backends: vec![degraded],
                    ..ServiceStatus::default()
                },
                ServiceStatus {
                    name: "empty".into(),
                    vip: "203.0.113.11:0/tcp".into(),
                    affinity: Affinity::Flow,
                    ..ServiceStatus::default()
                },
            ],
            ..StatusReport::default()
        }
    }

    #[test]
    fn ejected_and_ramping_backends_say_so_in_the_weight_column() {
        let mut r = report();
        let b = &mut r.services[0].backends;
        b[0].ejected = true;
        b[0].effective_weight = 0;
        b[2].drained = false;
        b[2].effective_weight = 30;
        b[2].slow_start_percent = Some(30.0);
        let text = render_status_table(&r);
        let row = |name: &str| {
            text.lines()
                .find(|l| l.trim_start().starts_with(name))
                .unwrap_or_else(|| panic!("no row {name} in {text}"))
                .to_string()
        };
        assert!(row("web-1").contains("0/100 ejected"), "{text}");
        assert!(row("web-3").contains("30/100 slow start 30%"), "{text}");
    }

    #[test]
    fn table_has_the_expected_cells() {
        let text = render_status_table(&report());
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[0],
            "generation 7  config /etc/steer/steer.toml  reloads 2  reload failures 1"
        );
        assert_eq!(
            lines[1],
            "last reload error: services[0].vip: bad dataplane.mtu: bad"
        );
        assert_eq!(lines[2], "");
        assert_eq!(
            lines[3],
            "service web  vip 203.0.113.10:80/tcp  affinity flow  packets 1234  bytes 98765  new flows 56"
        );
        let cells = |line: &str| -> Vec<String> {
            line.split("  ")
                .map(str::trim)
                .filter(|c| !c.is_empty())
                .map(String::from)
                .collect()
        };
        assert_eq!(
            cells(lines[4]),
            [
                "BACKEND",
                "REGION",
                "ADDRESS",
                "HEALTH",
                "WEIGHT",
                "PACKETS",
                "NEW FLOWS",
                "REPEATED SYNS",
                "HANDSHAKES",
                "LAST UP",
                "LAST DOWN",
                "LAST FAILURE"
            ]
        );
        assert_eq!(
            cells(lines[5]),
            ["web-1", "eu", "10.0.0.1", "up", "100/100", "1000", "40", "3", "37", "-", "-"]
        );
        assert_eq!(
            cells(lines[6]),
            [
                "web-2",
                "us",
                "10.0.0.2",
                "down",
                "0/100",
                "0",
                "0",
                "0",
                "0",
                "-",
                "-",
                "connection refused"
            ]
        );
        assert_eq!(
            cells(lines[7]),
            [
                "web-3",
                "us",
                "2001:db8::3",
                "up",
                "0/100 drained",
                "234",
                "16",
                "0",
                "15",
                "-",
                "-"
            ]
        );
        assert_eq!(lines[8], "");
        assert_eq!(
            lines[9],
            "service dns  vip [2001:db8::53]:53/udp  affinity client  packets 0  bytes 0  new flows 0"
        );
        let reason = format!("{}…", "x".repeat(79));
        assert_eq!(
            cells(lines[11]),
            ["dns-1", "eu", "10.0.1.1", "degraded", "5/5", "0", "0", "0", "0", "-", "-", &reason]
        );
        assert_eq!(
            lines[13],
            "service empty  vip 203.0.113.11:0/tcp  affinity flow  packets 0  bytes 0  new flows 0"
        );
        assert_eq!(lines[14], "  (no backends)");
        assert_eq!(lines.len(), 15);
        assert!(text.ends_with('\n'));
    }

    #[test]
    fn columns_line_up_across_services() {
        let text = render_status_table(&report());
        let lines: Vec<&str> = text.lines().collect();
        // Every column starts at the same offset in both header rows and in
        // every backend row: check the HEALTH and PACKETS columns.
        let header = lines[4];
        assert_eq!(header, lines[10]);
        let health_at = header.find("HEALTH").unwrap();
        assert_eq!(lines[5][health_at..].split("  ").next(), Some("up"));
        assert!(lines[6][health_at..].starts_with("down "));
        assert!(lines[11][health_at..].starts_with("degraded "));
        let failure_at = header.find("LAST FAILURE").unwrap();
        assert_eq!(&lines[6][failure_at..], "connection refused");
        assert!(lines[5].len() < failure_at, "no trailing blanks");
        // Numbers are right-aligned under their header's end (counted in
        // characters: the cut reason on the dns-1 row ends in a multi-byte
        // "…").
        let packets_end = header.find("PACKETS").unwrap() + "PACKETS".len();
        let chars = |line: &str, from: usize| -> String {
            line.chars().skip(from).take(packets_end - from).collect()
        };
        assert_eq!(chars(lines[5], packets_end - 4), "1000");
        assert_eq!(chars(lines[7], packets_end - 3), "234");
        assert_eq!(chars(lines[11], packets_end - 2), " 0");
        assert!(lines[5].starts_with("  web-1  "));
        assert!(lines.iter().all(|l| !l.ends_with(' ')));
        // The passive counters too, right-aligned under their headers.
        for (title, row, want) in [
            ("REPEATED SYNS", 5, " 3"),
            ("HANDSHAKES", 5, "37"),
            ("HANDSHAKES", 7, "15"),
        ] {
            let end = header.find(title).unwrap() + title.len();
            assert_eq!(&lines[row][end - 2..end], want, "{title} on line {row}");
        }
    }

    #[test]
    fn daemon_lines_and_health_transitions() {
        let mut r = report();
        r.version = "0.1.0".into();
        r.time = 1_000_000;
        r.uptime_seconds = 2 * 3600 + 5 * 60 + 9;
        r.interfaces = vec![
            InterfaceStatus {
                name: "eth0".into(),
                mode: "driver".into(),
                adopted: false,
            },
            InterfaceStatus {
                name: "eth1".into(),
                mode: "skb".into(),
                adopted: true,
            },
        ];
        r.drops = [("fragment", 3), ("no_backend", 1), ("too_big", 0)]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect();
        r.ct_insert_failures = 2;
        r.pmtu_replies = 4;
        // web-2 came up 62 minutes ago and went down 192 s ago.
        let web2 = &mut r.services[0].backends[1];
        web2.last_up_at = Some(1_000_000 - 62 * 60);
        web2.last_down_at = Some(1_000_000 - 192);
        let text = render_status_table(&r);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[0],
            "steer 0.1.0  up 2h05m  interfaces eth0 (driver), eth1 (skb, adopted)"
        );
        assert_eq!(
            lines[1],
            "drops: fragment 3, no_backend 1, (conntrack inserts failed: 2), (path-MTU replies sent: 4)"
        );
        assert!(lines[2].starts_with("generation 7  "), "{}", lines[2]);
        let header = lines[6];
        let up_at = header.find("LAST UP").unwrap();
        let down_at = header.find("LAST DOWN").unwrap();
        let web2 = lines[8];
        assert!(web2.starts_with("  web-2 "), "{web2}");
        assert_eq!(web2[up_at..].split("  ").next(), Some("1h02m ago"));
        assert_eq!(web2[down_at..].split("  ").next(), Some("3m12s ago"));
        assert_eq!(lines[7][up_at..].split("  ").next(), Some("-"));

        r.drops.values_mut().for_each(|n| *n = 0);
        r.ct_insert_failures = 0;
        r.pmtu_replies = 0;
        r.interfaces.clear();
        let text = render_status_table(&r);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "steer 0.1.0  up 2h05m  interfaces none");
        assert_eq!(lines[1], "drops: none");
    }

    #[test]
    fn durations() {
        assert_eq!(duration(0), "0s");
        assert_eq!(duration(59), "59s");
        assert_eq!(duration(60), "1m00s");
        assert_eq!(duration(3599), "59m59s");
        assert_eq!(duration(3600), "1h00m");
        assert_eq!(duration(86_399), "23h59m");
        assert_eq!(duration(86_400 + 4 * 3600 + 59), "1d04h");
        assert_eq!(ago(100, Some(40)), "1m00s ago");
        // A clock that went back shows "0s ago", not a wrapped number.
        assert_eq!(ago(100, Some(140)), "0s ago");
        assert_eq!(ago(100, None), "-");
    }

    #[test]
    fn empty_report() {
        assert_eq!(
            render_status_table(&StatusReport::default()),
            "generation 0  config   reloads 0  reload failures 0\n\nno services\n"
        );
    }

    #[test]
    fn region_policy_lines() {
        use crate::protocol::{RegionMeasure, RegionShare, TableStatus};
        let mut r = report();
        r.drained_regions = vec!["ap".into()];
        r.regions = vec![
            RegionMeasure {
                name: "eu".into(),
                rtt_ms: Some(12.34),
                new_flows_per_second: Some(480.0),
                capacity: Some(500.0),
                keep: 0.8,
            },
            RegionMeasure {
                name: "us".into(),
                keep: 1.0,
                ..RegionMeasure::default()
            },
        ];
        let web = &mut r.services[0];
        web.policy = "geo".into();
        web.content_hash = "00112233aabbccdd".into();
        web.tables = vec![TableStatus {
            class: Some("eu".into()),
            order: vec!["eu".into(), "us".into()],
            outcome: "serve".into(),
            allowed_regions: Some(vec!["eu".into()]),
            regions: vec![RegionShare {
                name: "eu".into(),
                healthy: 0.25,
                load: 1.0,
                dial: 40,
                keep: 1.0,
                share: 1.0,
                panic: true,
            }],
        }];
        web.ejection_capped = vec!["web-2".into()];
        web.shift = Some(crate::protocol::ShiftReport {
            from: "eu".into(),
            to: "us".into(),
            stages: vec![10, 25, 50, 100],
            stage: 2,
            percent: 25,
            state: "running".into(),
            hold_ms: 300_000,
            next_stage_in_ms: Some(252_500),
            description: "running at stage 2 of 4 (25%)".into(),
            rollback_if: vec!["healthy<0.5".into(), "repeated-syn>20%".into()],
            ..Default::default()
        });
        let text = render_status_table(&r);
        assert!(
            text.lines().any(|l| l
                == "  shift eu -> us: running at stage 2 of 4 (25%), next stage in 4m13s; \
                    25% of eu's new flows go to us; rollback if healthy<0.5, repeated-syn>20%"),
            "{text}"
        );
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines.contains(&"drained regions: ap"), "{text}");
        assert!(
            lines.contains(&"region eu  rtt 12.3 ms  new flows 480/s  capacity 500/s  keep 0.800"),
            "{text}"
        );
        assert!(
            !text.contains("region us"),
            "nothing measured: no line\n{text}"
        );
        assert!(
            lines.contains(
                &"service web  vip 203.0.113.10:80/tcp  affinity flow  packets 1234  bytes 98765  new flows 56  policy geo  hash 00112233aabbccdd"
            ),
            "{text}"
        );
        assert!(
            lines.contains(
                &"  class eu: eu 100.0% (25% healthy, dial 40, PANIC)  [serve]  residency eu"
            ),
            "{text}"
        );
        assert!(
            lines.contains(&"  web-2 is down but kept: max_ejection_percent reached"),
            "{text}"
        );
    }
}
