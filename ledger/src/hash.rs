//! SHA3-256 content hashes: the ids of models, updates and manifests.

use sha3::{Digest, Sha3_256};

/// A SHA3-256 digest.
pub type Hash = [u8; 32];

/// SHA3-256 of `data`.
///
/// ```
/// let h = pdc_ledger::sha3_256(b"");
/// assert_eq!(hex::encode(h), "a7ffc6f8bf1ed76651c14756a061d662f580ff4de43b49fa82d80a4b80f8434a");
/// ```
pub fn sha3_256(data: &[u8]) -> Hash {
    Sha3_256::digest(data).into()
}

/// An incremental SHA3-256, for streams that arrive in chunks.
#[derive(Default, Clone)]
pub struct StreamHasher(Sha3_256);

impl std::fmt::Debug for StreamHasher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StreamHasher")
    }
}

impl StreamHasher {
    /// A hasher over the empty stream.
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds the next bytes of the stream.
    pub fn update(&mut self, data: &[u8]) {
        self.0.update(data);
    }

    /// The digest of everything fed so far.
    pub fn finish(self) -> Hash {
        self.0.finalize().into()
    }
}

/// The canonical bytes of a flat `f32` parameter vector: little-endian, 4 bytes per value.
pub fn f32_bytes(values: &[f32]) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(values.len() * 4);
    for value in values {
        bytes.extend_from_slice(&value.to_le_bytes());
    }
    bytes
}

/// The id of a flat parameter vector: SHA3-256 of its canonical bytes.
pub fn parameters_hash(values: &[f32]) -> Hash {
    let mut hasher = StreamHasher::new();
    // Hash in slices so a large model is not copied whole.
    for block in values.chunks(16 * 1024) {
        hasher.update(&f32_bytes(block));
    }
    hasher.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_hash_equals_one_shot_hash() {
        let values: Vec<f32> = (0..40_000).map(|i| i as f32 * 0.5 - 7.0).collect();
        assert_eq!(parameters_hash(&values), sha3_256(&f32_bytes(&values)));
    }

    #[test]
    fn known_answer_for_abc() {
        assert_eq!(hex::encode(sha3_256(b"abc")), "3a985da74fe225b2045c172d6bd390bd855f086e3e9d525b46bfe24511431532");
    }
}
