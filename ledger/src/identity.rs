//! Ed25519 identities of the parties: key generation, key files, signing and strict verification.

use std::path::Path;

use ed25519_dalek::{Signer, SigningKey, VerifyingKey};

use crate::{Error, Result};

/// A party's Ed25519 public key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PublicKey(VerifyingKey);

impl PublicKey {
    /// Parses a 32-byte public key.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        let array: [u8; 32] = bytes.try_into().map_err(|_| Error::Malformed {
            what: "public key",
            detail: format!("expected 32 bytes, got {}", bytes.len()),
        })?;
        let key = VerifyingKey::from_bytes(&array)
            .map_err(|e| Error::Malformed { what: "public key", detail: e.to_string() })?;
        if key.is_weak() {
            return Err(Error::Malformed { what: "public key", detail: "weak (small-order) key".into() });
        }
        Ok(Self(key))
    }

    /// The key's 32 bytes.
    pub fn to_bytes(&self) -> [u8; 32] {
        self.0.to_bytes()
    }

    /// Verifies `signature` over `message` with `verify_strict`, which rejects malleable signatures.
    pub fn verify(&self, message: &[u8], signature: &[u8], signer: &str) -> Result<()> {
        let array: [u8; 64] = signature.try_into().map_err(|_| Error::Malformed {
            what: "signature",
            detail: format!("expected 64 bytes, got {}", signature.len()),
        })?;
        let signature = ed25519_dalek::Signature::from_bytes(&array);
        self.0.verify_strict(message, &signature).map_err(|_| Error::BadSignature { signer: signer.to_owned() })
    }
}

/// A party's Ed25519 signing key.
pub struct Identity {
    key: SigningKey,
}

impl Identity {
    /// A fresh identity from the operating system's CSPRNG.
    pub fn generate() -> Self {
        let mut seed = [0u8; 32];
        getrandom_fill(&mut seed);
        Self { key: SigningKey::from_bytes(&seed) }
    }

    /// The identity with this 32-byte secret seed.
    pub fn from_seed(seed: [u8; 32]) -> Self {
        Self { key: SigningKey::from_bytes(&seed) }
    }

    /// Loads the identity in `path` (the secret seed, hex), or creates it there (mode 0600) when absent.
    pub fn load_or_create(path: &Path) -> Result<Self> {
        match std::fs::read_to_string(path) {
            Ok(text) => Self::parse_key_file(path, &text),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Self::create(path),
            Err(e) => Err(Error::KeyFile { path: path.to_owned(), source: e }),
        }
    }

    /// Loads the identity in the key file `path`, which must exist.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::KeyFile { path: path.to_owned(), source })?;
        Self::parse_key_file(path, &text)
    }

    /// Makes a fresh identity and writes it to `path` (mode 0600), creating its folder; an existing file is never
    /// overwritten (the error's source is then [`std::io::ErrorKind::AlreadyExists`]).
    pub fn create(path: &Path) -> Result<Self> {
        let identity = Self::generate();
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|source| Error::KeyFile { path: path.to_owned(), source })?;
        }
        identity.write_new(path)?;
        Ok(identity)
    }

    /// Writes the identity to the new key file `path` (the secret seed, hex, mode 0600); an existing file is never
    /// overwritten.
    pub fn write_new(&self, path: &Path) -> Result<()> {
        write_secret(path, &hex::encode(self.key.to_bytes()))
            .map_err(|source| Error::KeyFile { path: path.to_owned(), source })
    }

    fn parse_key_file(path: &Path, text: &str) -> Result<Self> {
        let bytes = hex::decode(text.trim())
            .map_err(|e| Error::Malformed { what: "key file", detail: format!("{}: {e}", path.display()) })?;
        let seed: [u8; 32] = bytes.try_into().map_err(|_| Error::Malformed {
            what: "key file",
            detail: format!("{}: expected 32 hex-encoded bytes", path.display()),
        })?;
        Ok(Self::from_seed(seed))
    }

    /// The key as an unencrypted PKCS#8 v1 `PrivateKeyInfo` (RFC 8410 §7), the form TLS libraries take an
    /// Ed25519 key in. The bytes are the secret: keep them in memory only.
    pub fn pkcs8_der(&self) -> Vec<u8> {
        // SEQUENCE { INTEGER 0, SEQUENCE { OID 1.3.101.112 }, OCTET STRING { OCTET STRING seed } }.
        const PREFIX: [u8; 16] =
            [0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20];
        let mut der = PREFIX.to_vec();
        der.extend_from_slice(&self.key.to_bytes());
        der
    }

    /// The public half.
    pub fn public_key(&self) -> PublicKey {
        PublicKey(self.key.verifying_key())
    }

    /// Signs `message`.
    pub fn sign(&self, message: &[u8]) -> [u8; 64] {
        self.key.sign(message).to_bytes()
    }
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the secret.
        write!(f, "Identity({})", hex::encode(self.public_key().to_bytes()))
    }
}

fn getrandom_fill(buffer: &mut [u8]) {
    use rand::TryRngCore;
    // Without the operating system's randomness no key can be made safely; there is nothing to fall back to.
    rand::rngs::OsRng.try_fill_bytes(buffer).expect("the operating system's random number generator failed");
}

#[cfg(unix)]
fn write_secret(path: &Path, contents: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path)?;
    file.write_all(contents.as_bytes())?;
    file.sync_all()
}

#[cfg(not(unix))]
fn write_secret(path: &Path, contents: &str) -> std::io::Result<()> {
    std::fs::write(path, contents)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_verify_and_tampering_is_detected() {
        let identity = Identity::from_seed([7; 32]);
        let signature = identity.sign(b"message");
        let public = identity.public_key();
        public.verify(b"message", &signature, "a").unwrap();
        assert!(matches!(public.verify(b"messagE", &signature, "a"), Err(Error::BadSignature { .. })));
        assert!(matches!(public.verify(b"message", &signature[..63], "a"), Err(Error::Malformed { .. })));
    }

    #[test]
    fn key_file_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys/pdc.key");
        let first = Identity::load_or_create(&path).unwrap();
        let second = Identity::load_or_create(&path).unwrap();
        assert_eq!(first.public_key(), second.public_key());
    }

    #[test]
    fn create_never_overwrites_and_load_needs_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("party.key");
        assert!(matches!(Identity::load(&path), Err(Error::KeyFile { .. })));
        let created = Identity::create(&path).unwrap();
        assert_eq!(Identity::load(&path).unwrap().public_key(), created.public_key());
        match Identity::create(&path) {
            Err(Error::KeyFile { source, .. }) => assert_eq!(source.kind(), std::io::ErrorKind::AlreadyExists),
            other => panic!("expected AlreadyExists, got {other:?}"),
        }
        assert_eq!(Identity::load(&path).unwrap().public_key(), created.public_key());
    }

    #[test]
    fn pkcs8_holds_the_seed_after_the_rfc_8410_prefix() {
        let identity = Identity::from_seed([9; 32]);
        let der = identity.pkcs8_der();
        assert_eq!(der.len(), 48);
        assert_eq!(hex::encode(&der[..16]), "302e020100300506032b657004220420");
        assert_eq!(&der[16..], &[9; 32]);
    }

    #[test]
    fn malformed_public_keys_are_rejected() {
        assert!(PublicKey::from_bytes(&[1; 31]).is_err());
        // The identity point is a weak key.
        let mut identity_point = [0u8; 32];
        identity_point[0] = 1;
        assert!(PublicKey::from_bytes(&identity_point).is_err());
    }
}
