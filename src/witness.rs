//! `pdc witness`: a witness node that co-signs a coordinator's checkpoints when they are consistent with the last
//! one it co-signed. Wiring only: the rules are `pdc_ledger::witness`, the service `pdc_coordinator::audit_server`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use pdc_coordinator::tls::TlsSettings;
use pdc_ledger::witness::{TrustedLog, Witness, WitnessConfig};
use pdc_ledger::{Identity, PublicKey};
use serde::Deserialize;

/// `witness.toml` (see examples/witness.toml).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WitnessFile {
    /// Address to listen on; port 0 picks a free one.
    pub listen: SocketAddr,
    /// The key name this witness co-signs under.
    pub name: String,
    /// Its signing key, created on first start; relative to this file.
    pub key_file: PathBuf,
    /// Where it remembers what it co-signed; relative to this file.
    pub state_file: PathBuf,
    /// The logs it follows.
    pub logs: Vec<LogSection>,
    /// TLS (rustls): the witness's certificate and key from `pdc keygen`, and in `client_certs` the coordinator's
    /// certificate, so that only the coordinator can connect (mutual TLS). Paths relative to this file.
    #[serde(default)]
    pub tls: Option<pdc_coordinator::config::TlsSection>,
}

/// One `[[logs]]` entry.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogSection {
    /// The log's origin.
    pub origin: String,
    /// The key name the log signs under.
    pub key_name: String,
    /// The log's public key, 64 hex digits.
    pub public_key: String,
}

impl WitnessFile {
    /// Reads a witness config; relative paths are relative to the file.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
        let mut file: Self =
            toml::from_str(&text).with_context(|| format!("{} is not a witness config", path.display()))?;
        let base = path.parent().unwrap_or(Path::new("."));
        for p in [&mut file.key_file, &mut file.state_file] {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
        if let Some(tls) = &mut file.tls {
            tls.cert = base.join(&tls.cert);
            tls.key = base.join(&tls.key);
            for cert in &mut tls.client_certs {
                *cert = base.join(&*cert);
            }
        }
        if file.logs.is_empty() {
            bail!("{}: a witness must follow at least one log ([[logs]])", path.display());
        }
        Ok(file)
    }

    /// The witness's rules: its name and the logs it trusts.
    pub fn config(&self) -> anyhow::Result<WitnessConfig> {
        let logs = self
            .logs
            .iter()
            .map(|log| {
                let bytes = hex::decode(&log.public_key)
                    .with_context(|| format!("log {}: public_key is not hex", log.origin))?;
                let public_key = PublicKey::from_bytes(&bytes).with_context(|| format!("log {}", log.origin))?;
                Ok(TrustedLog { origin: log.origin.clone(), key_name: log.key_name.clone(), public_key })
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        Ok(WitnessConfig { name: self.name.clone(), logs })
    }
}

/// Runs a witness until Ctrl-C.
pub async fn run(config_path: &Path) -> anyhow::Result<()> {
    let file = WitnessFile::load(config_path)?;
    let config = file.config()?;
    let identity = Identity::load_or_create(&file.key_file)
        .with_context(|| format!("cannot load the witness key {}", file.key_file.display()))?;
    if let Some(folder) = file.state_file.parent() {
        std::fs::create_dir_all(folder).with_context(|| format!("cannot create {}", folder.display()))?;
    }
    let tls = file
        .tls
        .as_ref()
        .map(|tls| TlsSettings::load(&tls.cert, &tls.key, &tls.client_certs, tls.require_client_cert))
        .transpose()
        .with_context(|| format!("{}: [tls]", config_path.display()))?;
    let state = pdc_ledger::witness::load_state(&file.state_file)?;
    let public_key = hex::encode(identity.public_key().to_bytes());
    let witness = Witness::new(config, identity, state);
    let api = pdc_coordinator::audit_server::WitnessApi::new(witness, file.state_file.clone());
    let (listener, address) = pdc_coordinator::server::bind(file.listen)
        .await
        .with_context(|| format!("cannot listen on {}", file.listen))?;
    // Tests and scripts read this line for the port and the key to configure in the coordinator.
    println!("pdc witness {} key {public_key} listening on {address}", file.name);
    let shutdown = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    if tls.is_none() {
        tracing::warn!(%address, "witness started without TLS: plaintext, for loopback only");
    }
    pdc_coordinator::server::serve_witness_with_tls(api, listener, tls.as_ref(), shutdown)
        .await
        .context("the witness server failed")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_witness_file_resolves_its_paths_and_tls_files_relative_to_itself() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("witness.toml");
        let text = "listen = \"127.0.0.1:0\"\nname = \"w\"\nkey_file = \"w.key\"\nstate_file = \"state/w.state\"\n\
                    [[logs]]\norigin = \"pdc.local/ledger/sha3-256\"\nkey_name = \"pdc.local/coordinator\"\n\
                    public_key = \"0000000000000000000000000000000000000000000000000000000000000000\"\n\
                    [tls]\ncert = \"w.crt\"\nkey = \"w.key\"\nclient_certs = [\"coordinator.crt\"]\n";
        std::fs::write(&path, text).unwrap();
        let file = WitnessFile::load(&path).unwrap();
        assert_eq!(file.key_file, dir.path().join("w.key"));
        let tls = file.tls.expect("a [tls] table");
        assert_eq!((tls.cert, tls.key), (dir.path().join("w.crt"), dir.path().join("w.key")));
        assert_eq!(tls.client_certs, [dir.path().join("coordinator.crt")]);
        assert!(tls.require_client_cert, "mutual TLS by default");

        // An unknown key in [tls] is refused, naming the file.
        std::fs::write(&path, text.replace("client_certs", "clients")).unwrap();
        let error = format!("{:#}", WitnessFile::load(&path).unwrap_err());
        assert!(error.contains("witness.toml is not a witness config") && error.contains("clients"), "{error}");
    }
}
