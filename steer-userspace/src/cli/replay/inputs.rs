//! The runtime inputs of `steer replay` (and `steer explain`): backend and
//! region state and measurements, from flags or a state file, checked
//! against the configuration they apply to.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context as _, Result};
use serde::Deserialize;
use steer::config::Config;
use steer::policy::Runtime;

/// Flags that set runtime inputs; each adds to what `--state` gives.
#[derive(clap::Args, Clone, Debug, Default, PartialEq)]
pub struct InputArgs {
    /// Mark a backend down, as a failed health check would (repeatable).
    #[arg(long, value_name = "BACKEND")]
    pub down: Vec<String>,
    /// Drain a backend: no new flows (repeatable).
    #[arg(long, value_name = "BACKEND")]
    pub drain: Vec<String>,
    /// Drain a region: no new flows (repeatable).
    #[arg(long, value_name = "REGION")]
    pub drain_region: Vec<String>,
    /// A region's measured round-trip time in milliseconds, for `latency`
    /// policies (repeatable).
    #[arg(long, value_name = "REGION=MS", value_parser = parse_measure)]
    pub rtt: Vec<(String, f64)>,
    /// A region's measured new flows per second, for capacity limits
    /// (repeatable).
    #[arg(long, value_name = "REGION=FLOWS_PER_S", value_parser = parse_measure)]
    pub rate: Vec<(String, f64)>,
    /// A TOML file with the same inputs: `down`, `drained` and
    /// `drained_regions` (lists of names), and `[rtt]` (milliseconds) and
    /// `[rate]` (new flows per second) tables keyed by region.
    #[arg(long, value_name = "FILE")]
    pub state: Option<PathBuf>,
    /// A staged shift in force, for what-if: PERCENT % of the new flows
    /// SERVICE's tables send to region FROM go to region TO (repeatable,
    /// one per service).
    #[arg(long, value_name = "SERVICE:FROM:TO:PERCENT", value_parser = parse_shift)]
    pub shift: Vec<ShiftArg>,
}

/// One `--shift SERVICE:FROM:TO:PERCENT`.
#[derive(Clone, Debug, PartialEq)]
pub struct ShiftArg {
    pub service: String,
    pub from: String,
    pub to: String,
    pub percent: f64,
}

/// `SERVICE:FROM:TO:PERCENT`, the percentage from 0 to 100.
pub fn parse_shift(s: &str) -> Result<ShiftArg, String> {
    let parts: Vec<&str> = s.split(':').map(str::trim).collect();
    let [service, from, to, percent] = parts[..] else {
        return Err(format!(
            "{s:?}: expected SERVICE:FROM:TO:PERCENT, e.g. web:eu:us:25"
        ));
    };
    let percent: f64 = percent
        .trim_end_matches('%')
        .parse()
        .map_err(|_| format!("{s:?}: {percent:?} is not a number"))?;
    if !(0.0..=100.0).contains(&percent) {
        return Err(format!("{s:?}: the percentage must be from 0 to 100"));
    }
    Ok(ShiftArg {
        service: service.to_string(),
        from: from.to_string(),
        to: to.to_string(),
        percent,
    })
}

/// The state file's shape.
#[derive(Deserialize, Default, Debug)]
#[serde(deny_unknown_fields)]
struct StateFile {
    #[serde(default)]
    down: Vec<String>,
    #[serde(default)]
    drained: Vec<String>,
    #[serde(default)]
    drained_regions: Vec<String>,
    #[serde(default)]
    rtt: BTreeMap<String, f64>,
    #[serde(default)]
    rate: BTreeMap<String, f64>,
}

/// `NAME=NUMBER`, the number finite and not negative.
pub fn parse_measure(s: &str) -> Result<(String, f64), String> {
    let Some((name, value)) = s.split_once('=') else {
        return Err(format!("{s:?}: expected NAME=NUMBER, e.g. eu-west=25"));
    };
    let v: f64 = value
        .trim()
        .parse()
        .map_err(|_| format!("{s:?}: {value:?} is not a number"))?;
    if !v.is_finite() || v < 0.0 {
        return Err(format!("{s:?}: the value must be a finite number >= 0"));
    }
    Ok((name.trim().to_string(), v))
}

impl InputArgs {
    /// The runtime these flags describe, every name checked against `cfg`
    /// (read from `cfg_path`, for messages).
    pub fn runtime(&self, cfg: &Config, cfg_path: &Path) -> Result<Runtime> {
        let mut file = match &self.state {
            None => StateFile::default(),
            Some(p) => {
                let text = std::fs::read_to_string(p)
                    .with_context(|| format!("cannot read state file {}", p.display()))?;
                toml::from_str(&text)
                    .with_context(|| format!("state file {} is not valid", p.display()))?
            }
        };
        let from = |flag: &str| match &self.state {
            Some(p) => format!("{flag} (or {})", p.display()),
            None => flag.to_string(),
        };
        file.down.extend(self.down.iter().cloned());
        file.drained.extend(self.drain.iter().cloned());
        file.drained_regions
            .extend(self.drain_region.iter().cloned());
        file.rtt.extend(self.rtt.iter().cloned());
        file.rate.extend(self.rate.iter().cloned());
        let backends: Vec<&str> = cfg.backends.iter().map(|b| b.name.as_str()).collect();
        let regions: Vec<&str> = cfg.regions.iter().map(|r| r.name.as_str()).collect();
        for (flag, names) in [("--down", &file.down), ("--drain", &file.drained)] {
            for n in names {
                if !backends.contains(&n.as_str()) {
                    bail!(
                        "{} {n:?}: no such backend in {} (backends: {})",
                        from(flag),
                        cfg_path.display(),
                        backends.join(", ")
                    );
                }
            }
        }
        let region_names = file
            .drained_regions
            .iter()
            .map(|n| ("--drain-region", n))
            .chain(file.rtt.keys().map(|n| ("--rtt", n)))
            .chain(file.rate.keys().map(|n| ("--rate", n)));
        for (flag, n) in region_names {
            if !regions.contains(&n.as_str()) {
                bail!(
                    "{} {n:?}: no such region in {} (regions: {})",
                    from(flag),
                    cfg_path.display(),
                    regions.join(", ")
                );
            }
        }
        for (flag, map) in [("rtt", &file.rtt), ("rate", &file.rate)] {
            for (n, v) in map {
                if !v.is_finite() || *v < 0.0 {
                    bail!(
                        "{} {n}={v}: the value must be a finite number >= 0",
                        from(&format!("--{flag}"))
                    );
                }
            }
        }
        let mut rt = Runtime::default();
        for a in &self.shift {
            let Some(ctx) = steer::daemon::plan_context(cfg, &a.service) else {
                let names: Vec<&str> = cfg.services.iter().map(|s| s.name.as_str()).collect();
                bail!(
                    "--shift {}: no such service in {} (services: {})",
                    a.service,
                    cfg_path.display(),
                    names.join(", ")
                );
            };
            // The checks of `steer shift start`: regions of the service,
            // residency (a one-stage plan at this percentage).
            let plan = steer_policy::shift::Plan {
                service: a.service.clone(),
                from: a.from.clone(),
                to: a.to.clone(),
                stages: vec![a.percent.ceil().clamp(1.0, 100.0) as u8],
                hold_ms: 1,
                rollback: Default::default(),
            };
            steer_policy::shift::check_plan(&plan, &ctx)
                .map_err(|e| anyhow::anyhow!("--shift: {e}"))?;
            if rt
                .shifts
                .insert(a.service.clone(), (a.from.clone(), a.to.clone(), a.percent))
                .is_some()
            {
                bail!(
                    "--shift {}: given twice; a service has at most one shift",
                    a.service
                );
            }
        }
        rt.backends.down = file.down.into_iter().collect();
        rt.backends.drained = file.drained.into_iter().collect();
        rt.drained_regions = file.drained_regions.into_iter().collect();
        rt.rtt = file
            .rtt
            .into_iter()
            .map(|(k, ms)| (k, Duration::from_secs_f64(ms / 1000.0)))
            .collect();
        rt.rate = file.rate;
        // Offline there is no time for hysteresis or a controller to
        // settle: rank and keep from the measurements at once.
        steer::policy::regions::settle_offline(cfg, &mut rt);
        Ok(rt)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CFG: &str = r#"
[dataplane]
next_hop_mac = "02:00:00:00:00:fe"
encap_source_v4 = "198.18.0.0/24"

[[regions]]
name = "eu"
[[regions]]
name = "us"

[[backends]]
name = "eu-1"
address = "192.0.2.11"
region = "eu"
[[backends]]
name = "us-1"
address = "192.0.2.21"
region = "us"

[[services]]
name = "web"
vip = "203.0.113.10"
port = 80
protocol = "tcp"
regions = ["eu", "us"]
"#;

    fn cfg() -> Config {
        Config::parse(CFG).expect("valid")
    }

    #[test]
    fn flags_and_state_file_add_up() {
        let dir = std::env::temp_dir().join(format!("steer-inputs-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let state = dir.join("state.toml");
        std::fs::write(
            &state,
            "down = [\"eu-1\"]\ndrained_regions = [\"us\"]\n[rtt]\neu = 12.5\n[rate]\nus = 900\n",
        )
        .unwrap();
        let args = InputArgs {
            drain: vec!["us-1".into()],
            rtt: vec![("us".into(), 80.0)],
            state: Some(state),
            ..Default::default()
        };
        let rt = args.runtime(&cfg(), Path::new("steer.toml"));
        std::fs::remove_dir_all(&dir).ok();
        let rt = rt.expect("valid inputs");
        assert_eq!(rt.backends.down, ["eu-1".to_string()].into());
        assert_eq!(rt.backends.drained, ["us-1".to_string()].into());
        assert_eq!(rt.drained_regions, ["us".to_string()].into());
        assert_eq!(rt.rtt["eu"], Duration::from_micros(12_500));
        assert_eq!(rt.rtt["us"], Duration::from_millis(80));
        assert_eq!(rt.rate["us"], 900.0);
    }

    #[test]
    fn unknown_names_are_refused_with_the_known_ones() {
        let args = InputArgs {
            drain_region: vec!["ap".into()],
            ..Default::default()
        };
        let e = args
            .runtime(&cfg(), Path::new("steer.toml"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("--drain-region \"ap\""), "{e}");
        assert!(e.contains("regions: eu, us"), "{e}");
        let args = InputArgs {
            down: vec!["eu-9".into()],
            ..Default::default()
        };
        let e = args
            .runtime(&cfg(), Path::new("steer.toml"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("backends: eu-1, us-1"), "{e}");
    }

    #[test]
    fn shifts_parse_and_are_checked_against_the_config() {
        assert_eq!(
            parse_shift("web:eu:us:25"),
            Ok(ShiftArg {
                service: "web".into(),
                from: "eu".into(),
                to: "us".into(),
                percent: 25.0
            })
        );
        assert!(parse_shift("web:eu:us").is_err());
        assert!(parse_shift("web:eu:us:150").is_err());
        assert!(parse_shift("web:eu:us:x").is_err());
        let rt = InputArgs {
            shift: vec![parse_shift("web:eu:us:12.5").unwrap()],
            ..Default::default()
        }
        .runtime(&cfg(), Path::new("steer.toml"))
        .expect("valid");
        assert_eq!(rt.shifts["web"], ("eu".into(), "us".into(), 12.5));
        for (bad, needle) in [
            ("api:eu:us:10", "services: web"),
            ("web:eu:ap:10", "region ap does not serve it"),
            ("web:eu:eu:10", "both eu"),
        ] {
            let e = InputArgs {
                shift: vec![parse_shift(bad).unwrap()],
                ..Default::default()
            }
            .runtime(&cfg(), Path::new("steer.toml"))
            .unwrap_err()
            .to_string();
            assert!(e.contains(needle), "{bad}: {e}");
        }
    }

    #[test]
    fn measures_parse_and_reject_nonsense() {
        assert_eq!(parse_measure("eu=25"), Ok(("eu".into(), 25.0)));
        assert!(parse_measure("eu").is_err());
        assert!(parse_measure("eu=-1").is_err());
        assert!(parse_measure("eu=NaN").is_err());
        assert!(parse_measure("eu=fast").is_err());
    }
}
