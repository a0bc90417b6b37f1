//! The TLS options of the CLI's client commands (`pdc study …`, `pdc audit …`): which coordinator certificate to
//! trust and, for a coordinator that requires client certificates, which certificate and key to present.

use std::path::PathBuf;

use anyhow::{Context, bail};
use tonic::transport::{Channel, Endpoint};

/// `--ca`, `--cert`, `--key` (or `PDC_TLS_CA`, `PDC_TLS_CERT`, `PDC_TLS_KEY`).
#[derive(clap::Args, Clone, Debug, Default)]
pub struct TlsArgs {
    /// The coordinator's certificate, or its CA (PEM); connects over TLS (the URL must be https://).
    #[arg(long, env = "PDC_TLS_CA")]
    pub ca: Option<PathBuf>,
    /// Your certificate (PEM, from `pdc keygen`), for a coordinator that requires client certificates.
    #[arg(long, env = "PDC_TLS_CERT", requires = "key", requires = "ca")]
    pub cert: Option<PathBuf>,
    /// Your key (a key file from `pdc keygen`, or PKCS#8 PEM).
    #[arg(long, env = "PDC_TLS_KEY", requires = "cert")]
    pub key: Option<PathBuf>,
}

/// A channel to the coordinator at `url`, over TLS when `tls` names a CA.
pub async fn channel(url: &str, tls: &TlsArgs) -> anyhow::Result<Channel> {
    let mut endpoint =
        Endpoint::from_shared(url.to_owned()).with_context(|| format!("invalid coordinator URL {url}"))?;
    match (&tls.ca, url.starts_with("https://")) {
        (Some(ca), true) => {
            let key_pem = match &tls.key {
                Some(key) => Some(
                    pdc_ledger::certificate::load_private_key_pem(key)
                        .with_context(|| format!("cannot load the TLS key {}", key.display()))?,
                ),
                None => None,
            };
            let client = tls.cert.as_deref().zip(key_pem.as_deref());
            let config = pdc_client::tls::client_config(ca, client, None)?;
            endpoint = endpoint.tls_config(config).context("invalid TLS configuration")?;
        }
        (Some(_), false) => bail!("with --ca the coordinator URL must be https://, not {url}"),
        (None, true) => bail!("an https:// coordinator needs --ca (the coordinator's certificate) to be trusted"),
        (None, false) => {}
    }
    endpoint.connect().await.with_context(|| format!("cannot reach the coordinator at {url}"))
}
