//! The coordinator's configuration file (TOML), as `pdc coordinator --config` reads it.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use pdc_ledger::PublicKey;

use crate::ledger::{LedgerSettings, WitnessEndpoint};
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
        config.ledger_settings()?.validate()?;
        if config.max_round_attempts == 0 {
            return Err(Error::InvalidArgument { field: "max_round_attempts", detail: "must be at least 1".into() });
        }
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

    /// The runtime settings.
    pub fn coordinator_config(&self) -> Result<CoordinatorConfig> {
        Ok(CoordinatorConfig {
            data_dir: self.data_dir.clone(),
            tick_interval: Duration::from_millis(self.tick_ms),
            max_round_attempts: self.max_round_attempts,
            ledger: self.ledger_settings()?,
            consortium: self.consortium.clone(),
        })
    }
}
