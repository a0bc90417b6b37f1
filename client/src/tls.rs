//! TLS for connections to the coordinator (rustls through tonic): the coordinator's certificate to trust and,
//! for mutual TLS, the caller's own certificate and key.
//!
//! A PDC's TLS key is its identity key itself: [`agent_config`] hands TLS the key from `key_file` and refuses a
//! certificate that certifies any other key, so the certificate the coordinator sees is always bound to the key
//! the PDC registered.

use std::path::Path;

use pdc_ledger::Identity;
use pdc_ledger::certificate::{certificates_from_pem, certified_key, private_key_pem};
use tonic::transport::{Certificate, ClientTlsConfig};

use crate::config::TlsConfig;
use crate::{Error, Result};

/// A client TLS configuration that trusts the certificates in `ca` (PEM: the coordinator's self-signed
/// certificate, or a CA) and, when `client` is given, presents its certificate (PEM file) with the private key
/// (PKCS#8 PEM). `domain` overrides the server name checked against the coordinator's certificate (by default
/// the URL's host).
pub fn client_config(ca: &Path, client: Option<(&Path, &str)>, domain: Option<&str>) -> Result<ClientTlsConfig> {
    let ca_pem = read_certificates(ca)?;
    let mut config = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca_pem));
    if let Some((cert, key_pem)) = client {
        let cert_pem = read_certificates(cert)?;
        config = config.identity(tonic::transport::Identity::from_pem(cert_pem, key_pem));
    }
    if let Some(domain) = domain {
        config = config.domain_name(domain);
    }
    Ok(config)
}

/// The hospital agent's TLS configuration: `[tls]`'s trusted coordinator certificate, and the PDC's own
/// certificate with `identity`'s key. A certificate of another key is an error here rather than a refusal later.
pub fn agent_config(tls: &TlsConfig, identity: &Identity) -> Result<ClientTlsConfig> {
    let cert_pem = read_certificates(&tls.cert)?;
    let chain = certificates_from_pem(&cert_pem).map_err(|e| config_error(&tls.cert, e.to_string()))?;
    let certified = certified_key(&chain[0]).map_err(|e| config_error(&tls.cert, e.to_string()))?;
    if certified != identity.public_key() {
        return Err(config_error(
            &tls.cert,
            format!(
                "certifies key {}, but the PDC's key file holds {}; make the certificate from the key file \
                 (pdc keygen) or point key_file at its key",
                hex::encode(certified.to_bytes()),
                hex::encode(identity.public_key().to_bytes())
            ),
        ));
    }
    let key_pem = private_key_pem(identity)?;
    client_config(&tls.ca, Some((&tls.cert, &key_pem)), tls.domain.as_deref())
}

fn read_certificates(path: &Path) -> Result<Vec<u8>> {
    let pem = std::fs::read(path).map_err(|e| config_error(path, e.to_string()))?;
    certificates_from_pem(&pem).map_err(|e| config_error(path, e.to_string()))?;
    Ok(pem)
}

fn config_error(path: &Path, detail: String) -> Error {
    Error::Config { path: path.to_owned(), detail }
}

#[cfg(test)]
mod tests {
    use pdc_ledger::certificate::self_signed;
    use pdc_ledger::entry::Role;

    use super::*;

    #[test]
    fn a_certificate_of_another_key_is_refused_before_connecting() {
        let dir = tempfile::tempdir().unwrap();
        let identity = Identity::from_seed([1; 32]);
        let other = Identity::from_seed([2; 32]);
        let write = |name: &str, identity: &Identity| {
            let path = dir.path().join(name);
            std::fs::write(&path, self_signed(identity, name, Role::Hospital, &[]).unwrap().pem).unwrap();
            path
        };
        let tls = TlsConfig { ca: write("ca.crt", &other), cert: write("a.crt", &identity), domain: None };
        agent_config(&tls, &identity).unwrap();
        let error = agent_config(&tls, &other).unwrap_err().to_string();
        assert!(error.contains("a.crt") && error.contains("but the PDC's key file holds"), "{error}");

        let missing = TlsConfig { ca: dir.path().join("absent.crt"), ..tls.clone() };
        let error = agent_config(&missing, &identity).unwrap_err().to_string();
        assert!(error.contains("absent.crt"), "{error}");
        std::fs::write(dir.path().join("junk.crt"), "not pem").unwrap();
        let junk = TlsConfig { ca: dir.path().join("junk.crt"), ..tls };
        let error = agent_config(&junk, &identity).unwrap_err().to_string();
        assert!(error.contains("no certificate"), "{error}");
    }
}
