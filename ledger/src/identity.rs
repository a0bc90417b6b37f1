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
        let key_file = |source| Error::KeyFile { path: path.to_owned(), source };
        match std::fs::read_to_string(path) {
            Ok(text) => {
                let bytes = hex::decode(text.trim())
                    .map_err(|e| Error::Malformed { what: "key file", detail: format!("{}: {e}", path.display()) })?;
                let seed: [u8; 32] = bytes.try_into().map_err(|_| Error::Malformed {
                    what: "key file",
                    detail: format!("{}: expected 32 hex-encoded bytes", path.display()),
                })?;
                Ok(Self::from_seed(seed))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let identity = Self::generate();
                if let Some(parent) = path.parent() {
                    std::fs::create_dir_all(parent).map_err(key_file)?;
                }
                write_secret(path, &hex::encode(identity.key.to_bytes())).map_err(key_file)?;
                Ok(identity)
            }
            Err(e) => Err(key_file(e)),
        }
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
    fn malformed_public_keys_are_rejected() {
        assert!(PublicKey::from_bytes(&[1; 31]).is_err());
        // The identity point is a weak key.
        let mut identity_point = [0u8; 32];
        identity_point[0] = 1;
        assert!(PublicKey::from_bytes(&identity_point).is_err());
    }
}
