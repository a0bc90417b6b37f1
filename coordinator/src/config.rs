//! The coordinator's configuration file (TOML), as `pdc coordinator --config` reads it.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::{CoordinatorConfig, Error, Result};

/// `coordinator.toml` (see `examples/coordinator.toml`).
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    /// Address to listen on, e.g. `127.0.0.1:50051`; port 0 picks a free port.
    pub listen: SocketAddr,
    /// Where the coordinator keeps its state; relative paths are relative to the config file.
    pub data_dir: PathBuf,
    /// How often deadlines are checked, in milliseconds.
    #[serde(default = "default_tick_ms")]
    pub tick_ms: u64,
    /// Failed attempts at one round before its study fails.
    #[serde(default = "default_max_round_attempts")]
    pub max_round_attempts: u32,
}

fn default_tick_ms() -> u64 {
    100
}

fn default_max_round_attempts() -> u32 {
    3
}

impl ConfigFile {
    /// Reads and checks a config file.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::InvalidArgument { field: "config", detail: format!("{}: {e}", path.display()) })?;
        let mut config: Self = toml::from_str(&text).map_err(|e| Error::InvalidArgument {
            field: "config",
            detail: format!("{}: {}", path.display(), e.message()),
        })?;
        if config.data_dir.is_relative() {
            let base = path.parent().unwrap_or(Path::new("."));
            config.data_dir = base.join(&config.data_dir);
        }
        if config.tick_ms == 0 || config.tick_ms > 60_000 {
            return Err(Error::InvalidArgument { field: "tick_ms", detail: "must be between 1 and 60000".into() });
        }
        if config.max_round_attempts == 0 {
            return Err(Error::InvalidArgument { field: "max_round_attempts", detail: "must be at least 1".into() });
        }
        Ok(config)
    }

    /// The runtime settings.
    pub fn coordinator_config(&self) -> CoordinatorConfig {
        CoordinatorConfig {
            data_dir: self.data_dir.clone(),
            tick_interval: Duration::from_millis(self.tick_ms),
            max_round_attempts: self.max_round_attempts,
        }
    }
}
