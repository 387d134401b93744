//! Scenario configs: examples/lab.toml, edited as TOML and written to the
//! scenario's directory. Expectations (weights, health timing) are read
//! from the config the scenario wrote, never from steer.
use std::{collections::BTreeMap, fs, path::Path, time::Duration};

use anyhow::{anyhow, bail, Context as _, Result};
use toml::{Table, Value};

use crate::{
    lab::{self, topo},
    util::workspace_root,
};

/// A backend's weight when the config gives none (docs/config.md).
pub const DEFAULT_WEIGHT: u32 = 100;

#[derive(Clone, Debug)]
pub struct Cfg {
    pub t: Table,
}

/// A health check's timing.
#[derive(Clone, Copy, Debug)]
pub struct Health {
    pub interval: Duration,
    pub rise: u32,
    pub fall: u32,
}

/// "1s", "500ms", "2m": the forms the lab config uses.
fn duration(s: &str) -> Result<Duration> {
    let (num, unit) = s
        .find(|c: char| !c.is_ascii_digit())
        .map(|i| s.split_at(i))
        .ok_or_else(|| anyhow!("duration {s:?} has no unit"))?;
    let n: u64 = num.parse().with_context(|| format!("duration {s:?}"))?;
    Ok(match unit {
        "ms" => Duration::from_millis(n),
        "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n * 60),
        _ => bail!("duration {s:?}: unit {unit:?} not understood here"),
    })
}

impl Cfg {
    /// examples/lab.toml.
    pub fn lab() -> Result<Cfg> {
        let path = workspace_root().join(lab::CONFIG);
        let text =
            fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
        let t: Table =
            toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
        Ok(Cfg { t })
    }

    pub fn write(&self, path: &Path) -> Result<()> {
        let text = toml::to_string(&self.t)?;
        fs::write(path, text).with_context(|| format!("writing {}", path.display()))
    }

    fn array_mut(&mut self, key: &str) -> Result<&mut Vec<Value>> {
        self.t
            .get_mut(key)
            .and_then(Value::as_array_mut)
            .ok_or_else(|| anyhow!("the config has no [[{key}]]"))
    }

    fn array(&self, key: &str) -> Result<&Vec<Value>> {
        self.t
            .get(key)
            .and_then(Value::as_array)
            .ok_or_else(|| anyhow!("the config has no [[{key}]]"))
    }

    fn named_mut(&mut self, key: &str, name: &str) -> Result<&mut Table> {
        self.array_mut(key)?
            .iter_mut()
            .filter_map(Value::as_table_mut)
            .find(|t| t.get("name").and_then(Value::as_str) == Some(name))
            .ok_or_else(|| anyhow!("no {key} entry named {name:?}"))
    }

    fn named(&self, key: &str, name: &str) -> Result<&Table> {
        self.array(key)?
            .iter()
            .filter_map(Value::as_table)
            .find(|t| t.get("name").and_then(Value::as_str) == Some(name))
            .ok_or_else(|| anyhow!("no {key} entry named {name:?}"))
    }

    /// Index of a named entry (for error paths like `backends[1]`).
    pub fn index_of(&self, key: &str, name: &str) -> Result<usize> {
        self.array(key)?
            .iter()
            .position(|v| v.get("name").and_then(Value::as_str) == Some(name))
            .ok_or_else(|| anyhow!("no {key} entry named {name:?}"))
    }

    pub fn set_weight(&mut self, backend: &str, weight: i64) -> Result<()> {
        self.named_mut("backends", backend)?
            .insert("weight".into(), Value::Integer(weight));
        Ok(())
    }

    pub fn weight(&self, backend: &str) -> Result<u32> {
        match self.named("backends", backend)?.get("weight") {
            None => Ok(DEFAULT_WEIGHT),
            Some(v) => v
                .as_integer()
                .and_then(|w| u32::try_from(w).ok())
                .ok_or_else(|| anyhow!("backend {backend}: weight {v} is not a weight")),
        }
    }

    pub fn service_backends(&self, service: &str) -> Result<Vec<String>> {
        let s = self.named("services", service)?;
        s.get("backends")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(Value::as_str)
                    .map(str::to_owned)
                    .collect()
            })
            .ok_or_else(|| anyhow!("service {service} lists no backends"))
    }

    pub fn set_service_backends(&mut self, service: &str, backends: &[&str]) -> Result<()> {
        let list = backends
            .iter()
            .map(|b| Value::String((*b).to_owned()))
            .collect();
        self.named_mut("services", service)?
            .insert("backends".into(), Value::Array(list));
        Ok(())
    }

    /// Sets `[dataplane] key` to an integer (e.g. `conntrack_size`).
    pub fn set_dataplane_int(&mut self, key: &str, v: i64) -> Result<()> {
        self.t
            .get_mut("dataplane")
            .and_then(Value::as_table_mut)
            .ok_or_else(|| anyhow!("the config has no [dataplane]"))?
            .insert(key.into(), Value::Integer(v));
        Ok(())
    }

    /// `[dataplane] key` as an integer, if it is one.
    pub fn dataplane_int(&self, key: &str) -> Option<i64> {
        self.t.get("dataplane")?.get(key)?.as_integer()
    }

    /// Sets `key` of health check `check` to an integer.
    pub fn set_check_int(&mut self, check: &str, key: &str, v: i64) -> Result<()> {
        self.named_mut("health_checks", check)?
            .insert(key.into(), Value::Integer(v));
        Ok(())
    }

    /// The timing of the health check service `service` uses.
    pub fn health(&self, service: &str) -> Result<Health> {
        let s = self.named("services", service)?;
        let check = s
            .get("health_check")
            .and_then(Value::as_str)
            .ok_or_else(|| anyhow!("service {service} has no health check"))?;
        let h = self.named("health_checks", check)?;
        let int = |k: &str| -> Result<u32> {
            h.get(k)
                .and_then(Value::as_integer)
                .and_then(|v| u32::try_from(v).ok())
                .ok_or_else(|| anyhow!("health check {check}: no {k}"))
        };
        let interval = h
            .get("interval")
            .and_then(Value::as_str)
            .ok_or_else(|| anyhow!("health check {check}: no interval"))?;
        Ok(Health {
            interval: duration(interval)?,
            rise: int("rise")?,
            fall: int("fall")?,
        })
    }

    /// Expected share of new connections per backend *host* (the name the
    /// lab's backends answer with), from the service's configured weights.
    pub fn expected_shares(&self, service: &str) -> Result<BTreeMap<String, f64>> {
        let mut w: BTreeMap<String, f64> = BTreeMap::new();
        for b in self.service_backends(service)? {
            let host = topo::backend_named(&b)
                .ok_or_else(|| anyhow!("{b} is no lab backend"))?
                .name;
            *w.entry(host.to_owned()).or_default() += f64::from(self.weight(&b)?);
        }
        let total: f64 = w.values().sum();
        if total <= 0.0 {
            bail!("service {service} has no weight at all");
        }
        Ok(w.into_iter().map(|(k, v)| (k, v / total)).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_and_edits_the_lab_config() {
        let mut c = Cfg::lab().unwrap();
        let h = c.health("web").unwrap();
        assert_eq!(h.interval, Duration::from_secs(1));
        assert!(h.fall >= 1 && h.rise >= 1);
        c.set_weight("eu1", 300).unwrap();
        assert_eq!(c.weight("eu1").unwrap(), 300);
        assert_eq!(c.weight("eu2").unwrap(), DEFAULT_WEIGHT);
        let s = c.expected_shares("web").unwrap();
        assert!((s["eu1"] - 300.0 / 800.0).abs() < 1e-9, "{s:?}");
        c.set_service_backends("web", &["eu1", "us1"]).unwrap();
        assert_eq!(c.service_backends("web").unwrap(), ["eu1", "us1"]);
        assert_eq!(c.index_of("backends", "eu2").unwrap(), 1);
        assert_eq!(c.dataplane_int("conntrack_size"), Some(65_536));
        c.set_dataplane_int("conntrack_size", 16_384).unwrap();
        assert_eq!(c.dataplane_int("conntrack_size"), Some(16_384));
        assert!(toml::to_string(&c.t)
            .unwrap()
            .contains("conntrack_size = 16384"));
        let text = toml::to_string(&c.t).unwrap();
        let back: Table = toml::from_str(&text).unwrap();
        assert_eq!(back, c.t);
        assert_eq!(duration("500ms").unwrap(), Duration::from_millis(500));
        assert!(duration("5").is_err());
    }
}
