//! The coordinator's configuration file (TOML), as `pdc coordinator --config` reads it.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use pdc_ledger::PublicKey;

use crate::ledger::{LedgerSettings, WitnessEndpoint};
use crate::limits::Limits;
use crate::tls::{ClientTls, TlsSettings};
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
    /// The ledger's name, signing key and witnesses.
    #[serde(default)]
    pub ledger: LedgerSection,
    /// Where to serve Prometheus metrics (`GET /metrics`, plain HTTP), e.g. `127.0.0.1:9464`; port 0 picks a free
    /// port. Absent: no metrics endpoint.
    #[serde(default)]
    pub metrics_listen: Option<SocketAddr>,
    /// TLS for every connection; without it the coordinator serves plaintext (for loopback demos and tests).
    #[serde(default)]
    pub tls: Option<TlsSection>,
    /// The consortium file (members, roles, keys; see `examples/consortium.toml`); relative to the config file.
    /// Absent: any PDC may register and any client may use the StudyService and AuditService.
    #[serde(default)]
    pub consortium: Option<PathBuf>,
    /// Without a consortium, allow `listen` on an address other than loopback: anyone who can reach the port may
    /// then register as a PDC, create studies and read the ledger. Default false, so an open coordinator is never
    /// exposed by accident (`pdc coordinator --open` sets it too).
    #[serde(default)]
    pub open: bool,
    /// The caps on manifests and connections (see [`Limits`]); every key optional.
    #[serde(default)]
    pub limits: Limits,
}

/// `[tls]`: the coordinator's certificate and key, and the client certificates it trusts (mutual TLS).
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TlsSection {
    /// The server's certificate chain (PEM), e.g. `coordinator.crt` from `pdc keygen`; relative to the config
    /// file.
    pub cert: PathBuf,
    /// Its private key: a pdc key file (e.g. the ledger's key file, so the certificate is bound to the ledger key)
    /// or a PKCS#8 PEM file; relative to the config file.
    pub key: PathBuf,
    /// The trusted client certificates (PEM files: each party's self-signed certificate, or a CA's); relative to
    /// the config file.
    #[serde(default)]
    pub client_certs: Vec<PathBuf>,
    /// Refuse, during the handshake, a client without a trusted certificate. Default true. Either way the
    /// FederationService needs the PDC's own certificate.
    #[serde(default = "default_require_client_cert")]
    pub require_client_cert: bool,
}

fn default_require_client_cert() -> bool {
    true
}

/// `[ledger]`: how checkpoints are named, signed and witnessed.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LedgerSection {
    /// The log's origin; must contain `sha3-256`. Default `pdc.local/ledger/sha3-256`.
    pub origin: Option<String>,
    /// The key name checkpoints are signed under. Default `pdc.local/coordinator`.
    pub key_name: Option<String>,
    /// The coordinator's signing key file, created on first start; relative to the config file. Default
    /// `<data_dir>/coordinator.key`.
    pub key_file: Option<PathBuf>,
    /// Co-signatures each checkpoint needs before its round is final. Default 0.
    #[serde(default)]
    pub quorum: usize,
    /// The witnesses asked to co-sign.
    #[serde(default)]
    pub witnesses: Vec<WitnessSection>,
}

/// One `[[ledger.witnesses]]` entry.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct WitnessSection {
    /// The key name the witness co-signs under.
    pub name: String,
    /// Its WitnessService address, e.g. `http://127.0.0.1:50061`.
    pub url: String,
    /// Its Ed25519 public key, 64 hex digits.
    pub public_key: String,
    /// Its TLS certificate (PEM, made by `pdc keygen`; relative to this file), pinned: the coordinator then connects
    /// over TLS (`url` must be `https://`) and presents its own `[tls]` certificate, which the witness pins in turn.
    #[serde(default)]
    pub ca: Option<PathBuf>,
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
        Self::load_with_open(path, false)
    }

    /// Reads and checks a config file, with [`ConfigFile::open`] set when `open` is (`pdc coordinator --open`).
    pub fn load_with_open(path: &Path, open: bool) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::InvalidArgument { field: "config", detail: format!("{}: {e}", path.display()) })?;
        let mut config: Self = toml::from_str(&text).map_err(|e| Error::InvalidArgument {
            field: "config",
            detail: format!("{}: {}", path.display(), e.message()),
        })?;
        config.open |= open;
        if config.data_dir.is_relative() {
            let base = path.parent().unwrap_or(Path::new("."));
            config.data_dir = base.join(&config.data_dir);
        }
        if config.tick_ms == 0 || config.tick_ms > 60_000 {
            return Err(Error::InvalidArgument { field: "tick_ms", detail: "must be between 1 and 60000".into() });
        }
        if let Some(key_file) = &config.ledger.key_file
            && key_file.is_relative()
        {
            let base = path.parent().unwrap_or(Path::new("."));
            config.ledger.key_file = Some(base.join(key_file));
        }
        for witness in &mut config.ledger.witnesses {
            if let Some(ca) = &mut witness.ca {
                *ca = path.parent().unwrap_or(Path::new(".")).join(&*ca);
            }
        }
        if let Some(consortium) = &mut config.consortium {
            let base = path.parent().unwrap_or(Path::new("."));
            *consortium = base.join(&*consortium);
            crate::consortium::Consortium::load(consortium)?;
        }
        if let Some(tls) = &mut config.tls {
            let base = path.parent().unwrap_or(Path::new("."));
            tls.cert = base.join(&tls.cert);
            tls.key = base.join(&tls.key);
            for cert in &mut tls.client_certs {
                *cert = base.join(&*cert);
            }
            config.tls_settings()?;
        }
        let ledger = config.ledger_settings()?;
        ledger.validate()?;
        // A config file must name a majority of its witnesses; settings built in code (tests that show what a
        // minority risks) are not held to it.
        ledger.check_majority_quorum()?;
        if config.max_round_attempts == 0 {
            return Err(Error::InvalidArgument { field: "max_round_attempts", detail: "must be at least 1".into() });
        }
        config.limits.validate()?;
        config.check_exposure()?;
        Ok(config)
    }

    /// The ledger settings the `[ledger]` section describes.
    pub fn ledger_settings(&self) -> Result<LedgerSettings> {
        let section = &self.ledger;
        let defaults = LedgerSettings::default();
        let witnesses = section
            .witnesses
            .iter()
            .map(|witness| {
                let bytes = hex::decode(&witness.public_key).map_err(|e| Error::InvalidArgument {
                    field: "ledger.witnesses.public_key",
                    detail: format!("witness {}: {e}", witness.name),
                })?;
                let public_key = PublicKey::from_bytes(&bytes).map_err(|e| Error::InvalidArgument {
                    field: "ledger.witnesses.public_key",
                    detail: format!("witness {}: {e}", witness.name),
                })?;
                let tls = match &witness.ca {
                    Some(ca) => {
                        if !witness.url.starts_with("https://") {
                            return Err(Error::InvalidArgument {
                                field: "ledger.witnesses.url",
                                detail: format!(
                                    "witness {} has a pinned certificate (ca) but a url that is not https://",
                                    witness.name
                                ),
                            });
                        }
                        let identity = self.tls.as_ref().map(|tls| (tls.cert.as_path(), tls.key.as_path()));
                        Some(ClientTls::load(ca, identity)?)
                    }
                    None => None,
                };
                Ok(WitnessEndpoint { name: witness.name.clone(), url: witness.url.clone(), public_key, tls })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(LedgerSettings {
            origin: section.origin.clone().unwrap_or(defaults.origin),
            key_name: section.key_name.clone().unwrap_or(defaults.key_name),
            key_file: section.key_file.clone(),
            witnesses,
            quorum: section.quorum,
            witness_timeout: defaults.witness_timeout,
        })
    }

    /// The TLS settings the `[tls]` section describes (its files read and checked), if it is present. The
    /// consortium's member certificates are trusted too.
    pub fn tls_settings(&self) -> Result<Option<TlsSettings>> {
        let Some(tls) = &self.tls else { return Ok(None) };
        let members = match &self.consortium {
            Some(path) => crate::consortium::Consortium::load(path)?.certificates_pem(),
            None => Vec::new(),
        };
        TlsSettings::load_trusting(&tls.cert, &tls.key, &tls.client_certs, &members, tls.require_client_cert).map(Some)
    }

    /// What an [`ConfigFile::open`] coordinator allows, to log when it starts: `None` unless it listens beyond
    /// loopback without a consortium.
    pub fn exposure_warning(&self) -> Option<String> {
        (self.consortium.is_none() && !self.listen.ip().is_loopback()).then(|| {
            format!(
                "open coordinator on {} without a consortium file: anyone who can reach this port may register as \
                 a PDC, create and start studies, and read the ledger",
                self.listen
            )
        })
    }

    /// Refuses a coordinator without a consortium file on an address other than loopback unless it is
    /// explicitly [`ConfigFile::open`]: without a consortium anyone who reaches the port may register and create
    /// studies. [`ConfigFile::load`] calls it.
    pub fn check_exposure(&self) -> Result<()> {
        if self.open || self.exposure_warning().is_none() {
            return Ok(());
        }
        Err(Error::InvalidArgument {
            field: "listen",
            detail: format!(
                "{} is not a loopback address and there is no consortium file: anyone who can reach it could \
                 register as a PDC and create studies. Name a consortium file (consortium = \"…\"), listen on \
                 127.0.0.1, or allow it explicitly with open = true in the config or `pdc coordinator --open`",
                self.listen
            ),
        })
    }

    /// The runtime settings.
    pub fn coordinator_config(&self) -> Result<CoordinatorConfig> {
        Ok(CoordinatorConfig {
            data_dir: self.data_dir.clone(),
            tick_interval: Duration::from_millis(self.tick_ms),
            max_round_attempts: self.max_round_attempts,
            ledger: self.ledger_settings()?,
            consortium: self.consortium.clone(),
            limits: self.limits.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str) -> Result<ConfigFile> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("coordinator.toml");
        std::fs::write(&path, text).unwrap();
        ConfigFile::load(&path)
    }

    #[test]
    fn limits_default_and_reach_the_runtime_settings() {
        let config = load("listen = \"127.0.0.1:0\"\ndata_dir = \"data\"\n").unwrap();
        assert_eq!(config.limits, Limits::default());
        let config = load(
            "listen = \"127.0.0.1:0\"\ndata_dir = \"data\"\n[limits]\nmax_parameters = 200000000\n\
             first_message_timeout_ms = 500\n",
        )
        .unwrap();
        let runtime = config.coordinator_config().unwrap();
        assert_eq!(runtime.limits.max_parameters, 200_000_000);
        assert_eq!(runtime.limits.first_message_timeout(), Duration::from_millis(500));
        assert_eq!(runtime.limits.max_layers, Limits::default().max_layers);

        let error = load("listen = \"127.0.0.1:0\"\ndata_dir = \"data\"\n[limits]\nmax_layers = 0\n").unwrap_err();
        assert_eq!(error.to_string(), "invalid limits.max_layers: must be at least 1");
        let error = load("listen = \"127.0.0.1:0\"\ndata_dir = \"data\"\n[limits]\nmax_layer = 3\n").unwrap_err();
        assert!(error.to_string().contains("unknown field `max_layer`"), "{error}");
    }

    /// Without a consortium anyone who reaches the port may register and create studies: beyond loopback that
    /// takes an explicit `open`.
    #[test]
    fn a_coordinator_without_a_consortium_stays_on_loopback_unless_open() {
        let error = load("listen = \"0.0.0.0:50051\"\ndata_dir = \"data\"\n").unwrap_err();
        assert_eq!(
            error.to_string(),
            "invalid listen: 0.0.0.0:50051 is not a loopback address and there is no consortium file: anyone who \
             can reach it could register as a PDC and create studies. Name a consortium file (consortium = \"…\"), \
             listen on 127.0.0.1, or allow it explicitly with open = true in the config or `pdc coordinator --open`"
        );
        assert!(load("listen = \"[::]:50051\"\ndata_dir = \"data\"\n").is_err());
        for loopback in ["127.0.0.1:0", "[::1]:0"] {
            let config = load(&format!("listen = \"{loopback}\"\ndata_dir = \"data\"\n")).unwrap();
            assert_eq!(config.exposure_warning(), None);
        }
        let open = load("listen = \"0.0.0.0:50051\"\ndata_dir = \"data\"\nopen = true\n").unwrap();
        assert!(open.exposure_warning().unwrap().contains("anyone who can reach this port may register as a PDC"));

        // `pdc coordinator --open` does what the config's `open = true` does.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("coordinator.toml");
        std::fs::write(&path, "listen = \"0.0.0.0:50051\"\ndata_dir = \"data\"\n").unwrap();
        assert!(ConfigFile::load_with_open(&path, true).unwrap().open);
    }

    /// The example's `[limits]` table lists every limit at its default, so it documents what a coordinator does
    /// without one.
    #[test]
    fn the_example_lists_every_limit_at_its_default() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/coordinator.toml");
        let config = ConfigFile::load(&path).unwrap();
        assert_eq!(config.limits, Limits::default());
        let text = std::fs::read_to_string(&path).unwrap();
        let table: toml::Table = toml::from_str(&text).unwrap();
        let listed = table["limits"].as_table().unwrap().len();
        let fields = toml::Table::try_from(Limits::default()).unwrap().len();
        assert_eq!(listed, fields, "examples/coordinator.toml's [limits] names every limit");
        assert!(!config.open);
    }
}
