//! TLS for the coordinator's gRPC server (rustls through tonic), and the binding of a PDC's TLS client
//! certificate to the Ed25519 key it registered.
//!
//! With TLS on, a PDC connects with its own certificate (made by `pdc keygen`, whose key is the PDC's identity
//! key) and every FederationService call is checked by `Peer::check_pdc`: the certificate the TLS handshake
//! verified must certify the key registered for the `pdc_id` the request names. So a hospital holding the
//! certificate of PDC a cannot act as PDC b even with b's signatures. Without TLS the checks pass and the
//! signatures alone authenticate, as before.

use std::path::{Path, PathBuf};

use pdc_ledger::PublicKey;
use pdc_ledger::certificate::{certificates_from_pem, certified_key, load_private_key_pem};
use tonic::Request;
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};

use crate::{Coordinator, Error, Result};

/// The server's TLS identity and which client certificates it trusts.
#[derive(Clone)]
pub struct TlsSettings {
    cert_pem: Vec<u8>,
    key_pem: String,
    client_certs_pem: Vec<u8>,
    require_client_cert: bool,
    server_key: Option<PublicKey>,
}

impl TlsSettings {
    /// Reads the server's certificate chain `cert` (PEM), its private key `key` (a pdc key file or PKCS#8 PEM),
    /// and the trusted client certificates (PEM files, each holding one or more certificates: a party's
    /// self-signed certificate, or a CA). With `require_client_cert`, a client without a trusted certificate is
    /// refused during the handshake; without it, such a client may still use the StudyService and AuditService,
    /// but never the FederationService.
    pub fn load(cert: &Path, key: &Path, client_certs: &[PathBuf], require_client_cert: bool) -> Result<Self> {
        Self::load_trusting(cert, key, client_certs, &[], require_client_cert)
    }

    /// As [`TlsSettings::load`], trusting the certificates in `more_client_certs_pem` too (the consortium's
    /// member certificates).
    pub fn load_trusting(
        cert: &Path,
        key: &Path,
        client_certs: &[PathBuf],
        more_client_certs_pem: &[u8],
        require_client_cert: bool,
    ) -> Result<Self> {
        let read = |field: &'static str, path: &Path| {
            std::fs::read(path)
                .map_err(|e| Error::InvalidArgument { field, detail: format!("{}: {e}", path.display()) })
        };
        let cert_pem = read("tls.cert", cert)?;
        let chain = certificates_from_pem(&cert_pem)
            .map_err(|e| Error::InvalidArgument { field: "tls.cert", detail: format!("{}: {e}", cert.display()) })?;
        let key_pem = load_private_key_pem(key)
            .map_err(|e| Error::InvalidArgument { field: "tls.key", detail: format!("{}: {e}", key.display()) })?;
        let mut client_certs_pem = Vec::new();
        for path in client_certs {
            let pem = read("tls.client_certs", path)?;
            certificates_from_pem(&pem).map_err(|e| Error::InvalidArgument {
                field: "tls.client_certs",
                detail: format!("{}: {e}", path.display()),
            })?;
            client_certs_pem.extend_from_slice(&pem);
            client_certs_pem.push(b'\n');
        }
        client_certs_pem.extend_from_slice(more_client_certs_pem);
        if require_client_cert && client_certs_pem.is_empty() {
            return Err(Error::InvalidArgument {
                field: "tls.client_certs",
                detail: "require_client_cert needs at least one trusted client certificate".into(),
            });
        }
        // Only a certificate of an Ed25519 key can be the coordinator's identity; another is fine for TLS alone.
        let server_key = certified_key(&chain[0]).ok();
        Ok(Self { cert_pem, key_pem, client_certs_pem, require_client_cert, server_key })
    }

    /// The Ed25519 key the server certificate certifies, if it is one.
    pub fn server_key(&self) -> Option<PublicKey> {
        self.server_key
    }

    /// Whether a client must present a trusted certificate to connect at all.
    pub fn requires_client_cert(&self) -> bool {
        self.require_client_cert
    }

    /// tonic's server configuration.
    pub fn server_config(&self) -> ServerTlsConfig {
        let config = ServerTlsConfig::new().identity(Identity::from_pem(&self.cert_pem, &self.key_pem));
        if self.client_certs_pem.is_empty() {
            return config;
        }
        config
            .client_ca_root(Certificate::from_pem(&self.client_certs_pem))
            .client_auth_optional(!self.require_client_cert)
    }
}

impl std::fmt::Debug for TlsSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the private key.
        f.debug_struct("TlsSettings")
            .field("server_key", &self.server_key.map(|key| hex::encode(key.to_bytes())))
            .field("require_client_cert", &self.require_client_cert)
            .finish_non_exhaustive()
    }
}

/// The coordinator's side of a TLS connection to a witness: the witness's certificate it pins, and the
/// coordinator's own certificate and key it presents, so that the witness can pin it in turn (mutual TLS).
#[derive(Clone, PartialEq)]
pub struct ClientTls {
    ca_pem: Vec<u8>,
    identity: Option<(Vec<u8>, String)>,
}

impl ClientTls {
    /// Trusts the certificates in `ca` (PEM) and, with `identity`, presents the certificate chain `cert` (PEM)
    /// with the private key `key` (a pdc key file or PKCS#8 PEM).
    pub fn load(ca: &Path, identity: Option<(&Path, &Path)>) -> Result<Self> {
        let read = |field: &'static str, path: &Path| -> Result<Vec<u8>> {
            let pem = std::fs::read(path)
                .map_err(|e| Error::InvalidArgument { field, detail: format!("{}: {e}", path.display()) })?;
            certificates_from_pem(&pem)
                .map_err(|e| Error::InvalidArgument { field, detail: format!("{}: {e}", path.display()) })?;
            Ok(pem)
        };
        let ca_pem = read("ledger.witnesses.ca", ca)?;
        let identity = match identity {
            Some((cert, key)) => {
                let key_pem = load_private_key_pem(key).map_err(|e| Error::InvalidArgument {
                    field: "tls.key",
                    detail: format!("{}: {e}", key.display()),
                })?;
                Some((read("tls.cert", cert)?, key_pem))
            }
            None => None,
        };
        Ok(Self { ca_pem, identity })
    }

    /// tonic's client configuration.
    pub fn client_config(&self) -> ClientTlsConfig {
        let config = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(&self.ca_pem));
        match &self.identity {
            Some((cert_pem, key_pem)) => config.identity(Identity::from_pem(cert_pem, key_pem)),
            None => config,
        }
    }
}

impl std::fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the private key.
        f.debug_struct("ClientTls").field("presents_certificate", &self.identity.is_some()).finish_non_exhaustive()
    }
}

/// What the TLS layer says of a request's sender.
#[derive(Clone, Debug)]
pub(crate) enum Peer {
    /// The connection is not TLS: nothing to bind, signatures alone authenticate.
    Plaintext,
    /// TLS, but the client presented no certificate.
    Anonymous,
    /// TLS with a verified client certificate of this Ed25519 key.
    Key(PublicKey),
    /// TLS with a verified client certificate of no usable Ed25519 key.
    Unbound(String),
}

impl Peer {
    /// The sender of `request`, as its connection's TLS session verified it.
    pub(crate) fn of<T>(request: &Request<T>) -> Self {
        let Some(tls) = request.extensions().get::<TlsConnectInfo<TcpConnectInfo>>() else {
            return Peer::Plaintext;
        };
        match tls.peer_certs().as_deref().and_then(|chain| chain.first()) {
            None => Peer::Anonymous,
            Some(certificate) => match certified_key(certificate) {
                Ok(key) => Peer::Key(key),
                Err(error) => Peer::Unbound(error.to_string()),
            },
        }
    }

    /// The Ed25519 key the sender's certificate certifies: `None` on plaintext or without a certificate, an
    /// error for a certificate of no usable key.
    pub(crate) fn certified_key(&self) -> Result<Option<PublicKey>, tonic::Status> {
        match self {
            Peer::Plaintext | Peer::Anonymous => Ok(None),
            Peer::Key(key) => Ok(Some(*key)),
            Peer::Unbound(detail) => Err(Error::PermissionDenied(format!(
                "the TLS client certificate is not bound to a consortium identity: {detail}"
            ))
            .into()),
        }
    }

    /// Checks that the sender's certificate certifies `pdc_id`'s registered key. An unregistered id passes: the
    /// call itself refuses it, and nothing can be done in its name. With a consortium the certified key must
    /// also be a current member's: a revoked key is refused here, whatever it signs.
    pub(crate) fn check_pdc(&self, coordinator: &Coordinator, pdc_id: &str) -> Result<(), tonic::Status> {
        self.check_member(coordinator)?;
        match coordinator.registered_key(pdc_id) {
            Some(registered) => self.check(pdc_id, &registered.to_bytes(), "registered key"),
            None => self.check_certificate().map(|_| ()),
        }
    }

    /// Checks that the sender's certificate certifies `public_key`, the key `pdc_id` asks to register.
    pub(crate) fn check_registration(
        &self,
        coordinator: &Coordinator,
        pdc_id: &str,
        public_key: &[u8],
    ) -> Result<(), tonic::Status> {
        self.check_member(coordinator)?;
        self.check(pdc_id, public_key, "key to register")
    }

    /// With a consortium, a certificate must certify a current member's key.
    fn check_member(&self, coordinator: &Coordinator) -> Result<(), tonic::Status> {
        if let Peer::Key(key) = self {
            coordinator.caller(Some(*key))?;
        }
        Ok(())
    }

    fn check(&self, pdc_id: &str, expected: &[u8], what: &str) -> Result<(), tonic::Status> {
        match self.check_certificate()? {
            Some(key) if key.to_bytes().as_slice() == expected => Ok(()),
            Some(key) => Err(Error::PermissionDenied(format!(
                "the TLS client certificate certifies key {}, not {pdc_id}'s {what} {}",
                hex::encode(key.to_bytes()),
                hex::encode(expected)
            ))
            .into()),
            None => Ok(()),
        }
    }

    /// The certified key; `None` on a plaintext connection; an error on TLS without a usable certificate.
    fn check_certificate(&self) -> Result<Option<PublicKey>, tonic::Status> {
        match self {
            Peer::Plaintext => Ok(None),
            Peer::Key(key) => Ok(Some(*key)),
            Peer::Anonymous => Err(Error::Unauthenticated(
                "FederationService calls over TLS need the PDC's client certificate (pdc keygen makes it)".into(),
            )
            .into()),
            Peer::Unbound(detail) => Err(Error::PermissionDenied(format!(
                "the TLS client certificate is not bound to a PDC identity: {detail}"
            ))
            .into()),
        }
    }
}

/// `request`'s message, once its sender's TLS certificate is checked against the registered key of the PDC
/// `pdc_id` names in it (see [`Peer::check_pdc`]).
pub(crate) fn bound<T>(
    coordinator: &Coordinator,
    request: Request<T>,
    pdc_id: impl FnOnce(&T) -> &str,
) -> Result<T, tonic::Status> {
    let peer = Peer::of(&request);
    let message = request.into_inner();
    peer.check_pdc(coordinator, pdc_id(&message))?;
    Ok(message)
}

#[cfg(test)]
mod tests {
    use pdc_ledger::Identity;
    use pdc_ledger::certificate::self_signed;
    use pdc_ledger::entry::Role;

    use super::*;

    #[test]
    fn settings_read_a_pdc_key_file_and_refuse_what_cannot_work() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("coordinator.key");
        let identity = Identity::create(&key).unwrap();
        let cert = dir.path().join("coordinator.crt");
        let sans = ["127.0.0.1".to_owned()];
        std::fs::write(&cert, self_signed(&identity, "coordinator", Role::Coordinator, &sans).unwrap().pem).unwrap();
        let hospital = dir.path().join("hospital.crt");
        let hospital_identity = Identity::generate();
        std::fs::write(&hospital, self_signed(&hospital_identity, "h", Role::Hospital, &[]).unwrap().pem).unwrap();

        let settings = TlsSettings::load(&cert, &key, std::slice::from_ref(&hospital), true).unwrap();
        assert_eq!(settings.server_key(), Some(identity.public_key()));
        assert!(settings.requires_client_cert());
        assert!(!format!("{settings:?}").contains("PRIVATE"), "the key is never printed");

        let error = TlsSettings::load(&cert, &key, &[], true).unwrap_err().to_string();
        assert!(error.contains("require_client_cert needs at least one trusted client certificate"), "{error}");
        TlsSettings::load(&cert, &key, &[], false).unwrap();
        let error = TlsSettings::load(&key, &key, &[], false).unwrap_err().to_string();
        assert!(error.starts_with("invalid tls.cert") && error.contains("no certificate"), "{error}");
        let error = TlsSettings::load(&cert, &cert, &[], false).unwrap_err().to_string();
        assert!(error.starts_with("invalid tls.key"), "{error}");
        let missing = dir.path().join("absent.crt");
        let error = TlsSettings::load(&cert, &key, &[missing], true).unwrap_err().to_string();
        assert!(error.starts_with("invalid tls.client_certs") && error.contains("absent.crt"), "{error}");
    }
}
