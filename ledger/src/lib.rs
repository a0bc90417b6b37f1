//! pdc's ledger crate: identities, the canonical signed messages every party exchanges, and the verifiable log.
//!
//! [`identity`], [`hash`] and [`signing`] are what the federation protocol needs to authenticate PDCs: Ed25519
//! identities, SHA3-256 content hashes, and the domain-separated byte strings PDCs sign; [`certificate`] makes the
//! self-signed X.509 certificate whose key is a party's identity key, for TLS. [`merkle`] is the RFC 9162
//! Merkle tree over SHA3-256 with inclusion and consistency proofs; [`store`] keeps a log of entries with its tree
//! nodes, in memory or in RocksDB, and [`log`] shares a store between threads with group commit. [`entry`] is the
//! typed records, [`checkpoint`] the signed checkpoints, [`witness`] the witnesses' co-signing logic, [`audit`]
//! the offline verification of a whole ledger against the federation's rules, and [`export`] the self-contained
//! file an auditor verifies.

pub mod audit;
pub mod certificate;
pub mod checkpoint;
mod cursor;
pub mod entry;
pub mod export;
// The fuzz targets' properties, shared with the corpus tests; behind no feature so those tests always run.
#[doc(hidden)]
pub mod fuzzing;
pub mod hash;
pub mod identity;
pub mod log;
pub mod merkle;
pub mod signing;
pub mod store;
pub mod witness;

pub use hash::{Hash, sha3_256};
pub use identity::{Identity, PublicKey};

/// Errors of the ledger crate.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A key or signature had the wrong length or was not a valid Ed25519 value.
    #[error("malformed {what}: {detail}")]
    Malformed {
        /// What was malformed ("public key", "signature", …).
        what: &'static str,
        /// Why.
        detail: String,
    },
    /// A signature did not verify under the claimed key.
    #[error("signature does not verify for {signer}")]
    BadSignature {
        /// Who was claimed to have signed.
        signer: String,
    },
    /// A certificate could not be made or read, or certifies no Ed25519 key.
    #[error("certificate: {detail}")]
    Certificate {
        /// What is wrong.
        detail: String,
    },
    /// A key file could not be read or written.
    #[error("key file {path}: {source}")]
    KeyFile {
        /// The file.
        path: std::path::PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
}

/// The ledger crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
