//! X.509 certificates bound to Ed25519 identities: a party's self-signed TLS certificate, whose public key is the
//! party's own signing key, so that a TLS handshake proves possession of the key the ledger knows the party by.
//!
//! There is no separate TLS key: [`private_key_pem`] hands TLS the identity's key in PKCS#8 form, and
//! [`certified_key`] reads the Ed25519 key back out of a peer's certificate so it can be compared with the key a
//! PDC registered.

use rcgen::{
    CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, KeyPair, KeyUsagePurpose, PKCS_ED25519,
};
use rustls_pki_types::{CertificateDer, PrivatePkcs8KeyDer};

use crate::entry::Role;
use crate::{Error, Identity, PublicKey, Result};

/// The DER of an Ed25519 `SubjectPublicKeyInfo` up to the key (RFC 8410 §4): `SEQUENCE { SEQUENCE { OID
/// 1.3.101.112 }, BIT STRING with no unused bits`, followed by the 32 key bytes.
const ED25519_SPKI_PREFIX: [u8; 12] = [0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00];

/// A party's self-signed certificate.
#[derive(Clone, Debug)]
pub struct SelfSignedCertificate {
    /// PEM text (`-----BEGIN CERTIFICATE-----`), as written to `<name>.crt`.
    pub pem: String,
    /// The DER bytes.
    pub der: Vec<u8>,
}

/// Makes `identity`'s self-signed certificate: subject `CN=<name>, OU=<role>, O=pdc`, the subject alternative
/// names given (each a DNS name or an IP address), usable by TLS servers and clients alike, certifying and signed
/// by `identity`'s Ed25519 key.
///
/// Trust in such a certificate comes from pinning it (listing it among the trusted certificates of the peer), not
/// from its validity period, which is rcgen's default (1975 to 4096); a party stops being trusted when its
/// certificate is removed from that list.
///
/// # Example
///
/// ```
/// use pdc_ledger::Identity;
/// use pdc_ledger::certificate::{certified_key, self_signed};
/// use pdc_ledger::entry::Role;
///
/// let identity = Identity::generate();
/// let certificate = self_signed(&identity, "hospital-a", Role::Hospital, &["localhost".into()]).unwrap();
/// assert_eq!(certified_key(&certificate.der).unwrap(), identity.public_key());
/// ```
pub fn self_signed(
    identity: &Identity,
    name: &str,
    role: Role,
    subject_alt_names: &[String],
) -> Result<SelfSignedCertificate> {
    let invalid = |detail: String| Error::Certificate { detail };
    if name.is_empty() || name.len() > 64 || name.chars().any(char::is_control) {
        return Err(invalid(format!("name {name:?} must be 1 to 64 characters without control characters")));
    }
    if let Some(bad) = subject_alt_names.iter().find(|name| !is_ip_or_dns_name(name)) {
        return Err(invalid(format!("subject alternative names: {bad:?} is neither an IP address nor a DNS name")));
    }
    let mut params = CertificateParams::new(subject_alt_names.to_vec())
        .map_err(|e| invalid(format!("subject alternative names {subject_alt_names:?}: {e}")))?;
    let mut subject = DistinguishedName::new();
    subject.push(DnType::CommonName, name);
    subject.push(DnType::OrganizationalUnitName, role.name());
    subject.push(DnType::OrganizationName, "pdc");
    params.distinguished_name = subject;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
    let key_pair = key_pair(identity)?;
    let certificate = params.self_signed(&key_pair).map_err(|e| invalid(format!("signing failed: {e}")))?;
    Ok(SelfSignedCertificate { pem: certificate.pem(), der: certificate.der().to_vec() })
}

/// `identity`'s key as PKCS#8 PEM (`-----BEGIN PRIVATE KEY-----`), the form TLS libraries load. It is the secret:
/// keep it in memory; the key file on disk stays in pdc's own format.
pub fn private_key_pem(identity: &Identity) -> Result<String> {
    Ok(key_pair(identity)?.serialize_pem())
}

/// The private key TLS should use, from `path`: a PEM file is taken as it is (a key from another tool); anything
/// else is read as a pdc key file (hex seed, what `pdc keygen` writes) and converted with [`private_key_pem`].
pub fn load_private_key_pem(path: &std::path::Path) -> Result<String> {
    let text = std::fs::read_to_string(path).map_err(|source| Error::KeyFile { path: path.to_owned(), source })?;
    if text.trim_start().starts_with("-----BEGIN") {
        use rustls_pki_types::pem::PemObject as _;
        rustls_pki_types::PrivateKeyDer::from_pem_slice(text.as_bytes()).map_err(|e| Error::Certificate {
            detail: format!("{}: no private key in the PEM file: {e}", path.display()),
        })?;
        return Ok(text);
    }
    private_key_pem(&Identity::load(path)?)
}

/// The Ed25519 key that the DER certificate `der` certifies; an error when it does not parse or certifies another
/// kind of key. It checks no signature: the TLS layer has verified the certificate before this is asked.
pub fn certified_key(der: &[u8]) -> Result<PublicKey> {
    let der = CertificateDer::from(der);
    let certificate = webpki::EndEntityCert::try_from(&der)
        .map_err(|e| Error::Certificate { detail: format!("unparsable certificate: {e}") })?;
    let spki = certificate.subject_public_key_info();
    let key =
        spki.as_ref().strip_prefix(ED25519_SPKI_PREFIX.as_slice()).filter(|key| key.len() == 32).ok_or_else(|| {
            Error::Certificate { detail: "the certificate's public key is not an Ed25519 key".into() }
        })?;
    PublicKey::from_bytes(key)
}

/// The certificates in PEM text, as DER, in order; an error when there are none or one is malformed.
pub fn certificates_from_pem(pem: &[u8]) -> Result<Vec<Vec<u8>>> {
    use rustls_pki_types::pem::PemObject as _;
    let certificates = CertificateDer::pem_slice_iter(pem)
        .map(|certificate| certificate.map(|der| der.to_vec()))
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| Error::Certificate { detail: format!("malformed PEM: {e}") })?;
    if certificates.is_empty() {
        return Err(Error::Certificate { detail: "no certificate in the PEM text".into() });
    }
    Ok(certificates)
}

/// An IP address, or a DNS name (RFC 1123 labels, optionally a leading `*.` wildcard).
fn is_ip_or_dns_name(name: &str) -> bool {
    if name.parse::<std::net::IpAddr>().is_ok() {
        return true;
    }
    let host = name.strip_prefix("*.").unwrap_or(name);
    let label_ok = |label: &str| {
        (1..=63).contains(&label.len())
            && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
            && !label.starts_with('-')
            && !label.ends_with('-')
    };
    !host.is_empty() && host.len() <= 253 && host.split('.').all(label_ok)
}

fn key_pair(identity: &Identity) -> Result<KeyPair> {
    let der = PrivatePkcs8KeyDer::from(identity.pkcs8_der());
    KeyPair::from_pkcs8_der_and_sign_algo(&der, &PKCS_ED25519)
        .map_err(|e| Error::Certificate { detail: format!("the identity's key is not a usable Ed25519 key: {e}") })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_certificate_certifies_the_identity_key_and_names_the_party() {
        let identity = Identity::from_seed([3; 32]);
        let sans = vec!["localhost".to_owned(), "127.0.0.1".to_owned()];
        let certificate = self_signed(&identity, "hospital-a", Role::Hospital, &sans).unwrap();
        assert!(certificate.pem.starts_with("-----BEGIN CERTIFICATE-----"), "{}", certificate.pem);
        assert_eq!(certificates_from_pem(certificate.pem.as_bytes()).unwrap(), vec![certificate.der.clone()]);
        assert_eq!(certified_key(&certificate.der).unwrap(), identity.public_key());
        let der = CertificateDer::from(certificate.der.as_slice());
        let parsed = webpki::EndEntityCert::try_from(&der).unwrap();
        // The subject carries the name and the role as UTF-8 strings.
        let subject = String::from_utf8_lossy(parsed.subject()).into_owned();
        assert!(subject.contains("hospital-a") && subject.contains("hospital"), "{subject}");
        let other = self_signed(&Identity::from_seed([4; 32]), "hospital-a", Role::Hospital, &sans).unwrap();
        assert_ne!(certified_key(&other.der).unwrap(), identity.public_key());
    }

    #[test]
    fn the_private_key_pem_is_the_identity_key() {
        let identity = Identity::from_seed([5; 32]);
        let pem = private_key_pem(&identity).unwrap();
        assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----"), "{pem}");
        let key_pair = KeyPair::from_pem(&pem).unwrap();
        assert_eq!(key_pair.public_key_raw(), identity.public_key().to_bytes());
    }

    #[test]
    fn a_tls_key_loads_from_a_pdc_key_file_or_a_pem_key_but_not_from_a_certificate() {
        let dir = tempfile::tempdir().unwrap();
        let key_file = dir.path().join("party.key");
        let identity = Identity::create(&key_file).unwrap();
        let pem = load_private_key_pem(&key_file).unwrap();
        assert_eq!(pem, private_key_pem(&identity).unwrap());
        let pem_file = dir.path().join("party.pem");
        std::fs::write(&pem_file, &pem).unwrap();
        assert_eq!(load_private_key_pem(&pem_file).unwrap(), pem);
        let cert_file = dir.path().join("party.crt");
        std::fs::write(&cert_file, self_signed(&identity, "party", Role::Auditor, &[]).unwrap().pem).unwrap();
        let error = load_private_key_pem(&cert_file).unwrap_err().to_string();
        assert!(error.contains("no private key in the PEM file"), "{error}");
        assert!(load_private_key_pem(&dir.path().join("absent.key")).is_err());
    }

    #[test]
    fn bad_names_and_non_certificates_are_refused() {
        let identity = Identity::from_seed([6; 32]);
        let error = self_signed(&identity, "", Role::Hospital, &[]).unwrap_err().to_string();
        assert!(error.contains("must be 1 to 64 characters"), "{error}");
        let error = self_signed(&identity, "a", Role::Hospital, &["not a name!".into()]).unwrap_err().to_string();
        assert!(error.contains("subject alternative names"), "{error}");
        let error = certified_key(b"not a certificate").unwrap_err().to_string();
        assert!(error.contains("unparsable certificate"), "{error}");
        assert!(certificates_from_pem(b"no pem here").is_err());
    }
}
