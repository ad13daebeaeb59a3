//! What every configuration file shares: loading with errors that name the
//! file, field and reason; duration values; the `[log]` and `[metrics]`
//! sections. Each binary owns its own schema (`agent::config`,
//! `master::config`, `cli::config`).

use std::net::SocketAddr;
use std::path::Path;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// Why a configuration file could not be used; names file, field, reason.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {field}: {reason}")]
pub struct ConfigError {
    pub path: String,
    pub field: String,
    pub reason: String,
}

impl ConfigError {
    /// A problem with one field.
    pub fn new(path: &Path, field: &str, reason: impl Into<String>) -> Self {
        ConfigError {
            path: path.display().to_string(),
            field: field.to_string(),
            reason: reason.into(),
        }
    }
}

/// Reads and parses a TOML configuration file.
pub fn load<T: DeserializeOwned>(path: &Path) -> Result<T, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError::new(path, "(file)", e.to_string()))?;
    mcp_model::parse_toml(&text).map_err(|(field, reason)| ConfigError {
        path: path.display().to_string(),
        field,
        reason,
    })
}

/// `[metrics]`: the Prometheus `/metrics` listener of a daemon (agent or
/// master). Plain HTTP without authentication, so it is off unless this
/// section is present, and belongs on loopback or a management network.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsSection {
    /// Address of the listener, e.g. `127.0.0.1:9464`.
    pub listen: SocketAddr,
}

/// Parses `90`, `90s`, `2m`, `1h` into seconds.
pub fn parse_duration(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let (num, mult) = match t.chars().last() {
        Some('s') => (&t[..t.len() - 1], 1),
        Some('m') => (&t[..t.len() - 1], 60),
        Some('h') => (&t[..t.len() - 1], 3600),
        _ => (t, 1),
    };
    num.parse::<u64>()
        .map(|n| n * mult)
        .map_err(|_| format!("{s:?} is not a duration such as 90s, 2m or 1h"))
}

/// `[log]`: log output.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogSection {
    /// `text` or `json`.
    #[serde(default = "default_log_format")]
    pub format: String,
    /// tracing filter, e.g. `info` or `mcp_agent=debug,info`.
    #[serde(default = "default_log_level")]
    pub level: String,
}
fn default_log_format() -> String {
    "text".to_string()
}
fn default_log_level() -> String {
    "info".to_string()
}

impl Default for LogSection {
    fn default() -> Self {
        LogSection {
            format: default_log_format(),
            level: default_log_level(),
        }
    }
}

impl LogSection {
    /// Checks the values serde cannot: the format name.
    pub fn check(&self, path: &Path) -> Result<(), ConfigError> {
        if self.format != "text" && self.format != "json" {
            return Err(ConfigError::new(path, "log.format", "expected \"text\" or \"json\""));
        }
        Ok(())
    }
}

/// Keys of `cfg` (a fully populated configuration) that `doc` never names
/// in backquotes: the configuration reference must cover every key.
#[cfg(feature = "testing")]
pub fn undocumented_keys(doc: &str, cfg: &impl Serialize) -> Vec<String> {
    fn keys(prefix: &str, v: &toml::Value, out: &mut Vec<String>) {
        match v {
            toml::Value::Table(t) => {
                for (k, v) in t {
                    let p = if prefix.is_empty() {
                        k.clone()
                    } else {
                        format!("{prefix}.{k}")
                    };
                    keys(&p, v, out);
                }
            }
            toml::Value::Array(a) if a.first().is_some_and(toml::Value::is_table) => {
                keys(&format!("{prefix}[]"), &a[0], out)
            }
            _ => out.push(prefix.to_string()),
        }
    }
    let mut all = Vec::new();
    keys(
        "",
        &toml::Value::try_from(cfg).expect("a configuration serializes to TOML"),
        &mut all,
    );
    assert!(all.len() > 5, "too few keys to be a populated configuration: {all:?}");
    all.retain(|k| !doc.contains(&format!("`{k}`")));
    all
}
