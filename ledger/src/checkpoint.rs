//! Signed checkpoints of the ledger: a log's size and root, chained to the previous checkpoint, as a signed note.
//!
//! The text format follows C2SP's `tlog-checkpoint` and `signed-note`, with two extension lines and SHA3-256 in
//! place of SHA-256:
//!
//! ```text
//! pdc.example/ledger/sha3-256
//! 42
//! <base64 of the 32-byte RFC 9162 root>
//! previous <hex of SHA3-256 of the previous checkpoint's body, or 64 zeros>
//! timestamp <Unix milliseconds>
//!
//! — <key name> <base64(key hash (4 bytes) || Ed25519 signature (64 bytes))>
//! — <another key name> <…>
//! ```
//!
//! - The *body* is the five lines, each ending in `\n`; signatures are Ed25519 (strictly verified) over the
//!   body's bytes, as in signed-note.
//! - The origin must name the hash algorithm: it must contain `sha3-256`, so a verifier cannot mistake this log
//!   for a SHA-256 one.
//! - The key hash is the first 4 bytes of SHA3-256(key name ‖ `\n` ‖ `0x01` ‖ 32-byte public key). signed-note
//!   uses SHA-256 here; pdc uses SHA3-256 throughout, so these notes are *not* byte-compatible with Go's `note`
//!   package. `0x01` is signed-note's identifier for Ed25519.
//! - Witnesses co-sign by appending signature lines over the same body ([`SignedCheckpoint::add_signature`]).
//! - `previous` chains checkpoints: it is [`Checkpoint::note_hash`] of the previous checkpoint, a hash of the
//!   previous *body*, not the whole note, so that witnesses adding co-signatures later do not change the chain.
//!
//! Parsing is strict: a note parses only if writing it back gives the same text.
//!
//! ```
//! use pdc_ledger::checkpoint::{Checkpoint, SignedCheckpoint};
//! use pdc_ledger::Identity;
//!
//! let log = Identity::from_seed([1; 32]);
//! let checkpoint = Checkpoint {
//!     origin: "pdc.example/ledger/sha3-256".into(),
//!     size: 3,
//!     root: [9; 32],
//!     previous: [0; 32],
//!     timestamp_ms: 1_700_000_000_000,
//! };
//! let note = checkpoint.sign("pdc.example/log", &log)?.to_note();
//! let parsed = SignedCheckpoint::parse(&note)?;
//! parsed.verify("pdc.example/log", &log.public_key())?;
//! assert_eq!(parsed.checkpoint, checkpoint);
//! # Ok::<(), pdc_ledger::checkpoint::CheckpointError>(())
//! ```

use crate::{Hash, Identity, PublicKey, sha3_256};

/// The text an origin must contain: the log's hash algorithm.
pub const HASH_ALGORITHM: &str = "sha3-256";

/// The prefix of every signature line: an em dash (U+2014) and a space, as in signed-note.
pub const SIGNATURE_PREFIX: &str = "\u{2014} ";

/// signed-note's algorithm identifier for Ed25519, hashed into the key hash.
const ED25519_ALGORITHM: u8 = 0x01;

/// The state of the log at one moment: what a log operator signs and witnesses co-sign.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Checkpoint {
    /// The log's name; must contain [`HASH_ALGORITHM`], e.g. `pdc.example/ledger/sha3-256`.
    pub origin: String,
    /// The number of entries in the log.
    pub size: u64,
    /// The RFC 9162 root over the first `size` entries.
    pub root: Hash,
    /// [`Checkpoint::note_hash`] of the previous checkpoint; all zeros for the first.
    pub previous: Hash,
    /// When the checkpoint was made, in Unix milliseconds (passed in, never read from a clock here).
    pub timestamp_ms: u64,
}

/// One signature line of a note.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NoteSignature {
    /// The signer's key name (no whitespace, no `+`).
    pub name: String,
    /// The first 4 bytes of the key's hash; see [`key_hash`].
    pub key_hash: [u8; 4],
    /// The Ed25519 signature over the checkpoint's body.
    pub signature: [u8; 64],
}

/// A checkpoint with the signatures of the log and any witnesses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignedCheckpoint {
    /// What was signed.
    pub checkpoint: Checkpoint,
    /// The signatures, in note order.
    pub signatures: Vec<NoteSignature>,
}

/// Why a note does not parse, or a checkpoint does not verify.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum CheckpointError {
    /// The note has no blank line between body and signatures.
    #[error("note has no blank line separating the body from the signatures")]
    MissingBlankLine,
    /// The body does not have exactly five lines.
    #[error("checkpoint body has {found} lines, expected 5")]
    BodyLineCount {
        /// Lines found.
        found: usize,
    },
    /// The origin is empty or contains a character that would break the format.
    #[error("invalid origin {origin:?}")]
    InvalidOrigin {
        /// The origin.
        origin: String,
    },
    /// The origin does not name the hash algorithm.
    #[error("origin {origin:?} does not name the hash algorithm {HASH_ALGORITHM}")]
    OriginWithoutHashAlgorithm {
        /// The origin.
        origin: String,
    },
    /// The size line is not a canonical decimal `u64`.
    #[error("size line {line:?} is not a decimal number without leading zeros")]
    InvalidSize {
        /// The line.
        line: String,
    },
    /// Base64 text is not strict, padded, standard-alphabet base64.
    #[error("bad base64 in {what}: {detail}")]
    BadBase64 {
        /// Where ("root", "signature line 2").
        what: String,
        /// Why.
        detail: String,
    },
    /// The root is not 32 bytes.
    #[error("root is {length} bytes, expected 32")]
    RootLength {
        /// Its length.
        length: usize,
    },
    /// The `previous` line is malformed.
    #[error("previous line {line:?} is not `previous ` followed by 64 lowercase hex digits")]
    InvalidPrevious {
        /// The line.
        line: String,
    },
    /// The `timestamp` line is malformed.
    #[error("timestamp line {line:?} is not `timestamp ` followed by a decimal number without leading zeros")]
    InvalidTimestamp {
        /// The line.
        line: String,
    },
    /// The note has no signature lines.
    #[error("note has no signatures")]
    MissingSignatures,
    /// A signature line is malformed.
    #[error("signature line {line_number}: {reason}")]
    MalformedSignatureLine {
        /// 1-based among the signature lines.
        line_number: usize,
        /// What is wrong.
        reason: String,
    },
    /// Text follows the signatures: a blank line, or a last line without its newline.
    #[error("trailing text after the signatures at byte {offset}")]
    TrailingGarbage {
        /// Where it starts in the note.
        offset: usize,
    },
    /// A key name is empty or contains whitespace or `+`.
    #[error("invalid key name {name:?}")]
    InvalidKeyName {
        /// The name.
        name: String,
    },
    /// No signature line carries this key's name and key hash.
    #[error("no signature by key {name:?} with key hash {key_hash}")]
    UnknownKey {
        /// The key name.
        name: String,
        /// The key hash, hex.
        key_hash: String,
    },
    /// A signature by this key does not verify.
    #[error("signature by {name:?} does not verify")]
    BadSignature {
        /// The key name.
        name: String,
    },
}

/// The first 4 bytes of SHA3-256(`name` ‖ `\n` ‖ `0x01` ‖ public key): which key a signature line claims.
pub fn key_hash(name: &str, key: &PublicKey) -> [u8; 4] {
    let mut data = Vec::with_capacity(name.len() + 34);
    data.extend_from_slice(name.as_bytes());
    data.push(b'\n');
    data.push(ED25519_ALGORITHM);
    data.extend_from_slice(&key.to_bytes());
    let hash = sha3_256(&data);
    [hash[0], hash[1], hash[2], hash[3]]
}

impl Checkpoint {
    /// The five body lines the signatures cover, each ending in `\n`.
    pub fn body(&self) -> String {
        format!(
            "{}\n{}\n{}\nprevious {}\ntimestamp {}\n",
            self.origin,
            self.size,
            base64_encode(&self.root),
            hex::encode(self.previous),
            self.timestamp_ms
        )
    }

    /// SHA3-256 of [`Checkpoint::body`]: the next checkpoint's `previous`.
    pub fn note_hash(&self) -> Hash {
        sha3_256(self.body().as_bytes())
    }

    /// Checks the origin, then signs the body as `name`.
    pub fn sign(&self, name: &str, identity: &Identity) -> Result<SignedCheckpoint, CheckpointError> {
        check_origin(&self.origin)?;
        let mut signed = SignedCheckpoint { checkpoint: self.clone(), signatures: Vec::new() };
        signed.add_signature(name, identity)?;
        Ok(signed)
    }
}

impl SignedCheckpoint {
    /// Appends a signature by `identity` under `name`, as a witness co-signing does.
    pub fn add_signature(&mut self, name: &str, identity: &Identity) -> Result<(), CheckpointError> {
        check_key_name(name)?;
        let signature = identity.sign(self.checkpoint.body().as_bytes());
        self.signatures.push(NoteSignature {
            name: name.to_owned(),
            key_hash: key_hash(name, &identity.public_key()),
            signature,
        });
        Ok(())
    }

    /// The note: body, blank line, one line per signature.
    pub fn to_note(&self) -> String {
        let mut note = self.checkpoint.body();
        note.push('\n');
        for signature in &self.signatures {
            let mut blob = signature.key_hash.to_vec();
            blob.extend_from_slice(&signature.signature);
            note.push_str(&format!("{SIGNATURE_PREFIX}{} {}\n", signature.name, base64_encode(&blob)));
        }
        note
    }

    /// SHA3-256 of the checkpoint's body; see [`Checkpoint::note_hash`].
    pub fn note_hash(&self) -> Hash {
        self.checkpoint.note_hash()
    }

    /// Parses a note, strictly; it does not check any signature (see [`SignedCheckpoint::verify`]).
    pub fn parse(note: &str) -> Result<SignedCheckpoint, CheckpointError> {
        let split = note.find("\n\n").ok_or(CheckpointError::MissingBlankLine)?;
        let body = &note[..split + 1];
        let lines: Vec<&str> = body.split_terminator('\n').collect();
        let [origin, size, root, previous, timestamp] = lines[..] else {
            return Err(CheckpointError::BodyLineCount { found: lines.len() });
        };
        check_origin(origin)?;
        let size = parse_decimal(size).ok_or_else(|| CheckpointError::InvalidSize { line: size.to_owned() })?;
        let root_bytes = base64_decode(root)
            .map_err(|detail| CheckpointError::BadBase64 { what: "root".into(), detail: detail.to_owned() })?;
        let root: Hash =
            root_bytes.as_slice().try_into().map_err(|_| CheckpointError::RootLength { length: root_bytes.len() })?;
        let previous =
            parse_previous(previous).ok_or_else(|| CheckpointError::InvalidPrevious { line: previous.to_owned() })?;
        let timestamp_ms = timestamp
            .strip_prefix("timestamp ")
            .and_then(parse_decimal)
            .ok_or_else(|| CheckpointError::InvalidTimestamp { line: timestamp.to_owned() })?;
        let checkpoint = Checkpoint { origin: origin.to_owned(), size, root, previous, timestamp_ms };

        let mut signatures = Vec::new();
        let mut offset = split + 2;
        let mut rest = &note[offset..];
        while !rest.is_empty() {
            let Some(end) = rest.find('\n') else {
                return Err(CheckpointError::TrailingGarbage { offset });
            };
            let line = &rest[..end];
            if line.is_empty() {
                return Err(CheckpointError::TrailingGarbage { offset });
            }
            signatures.push(parse_signature_line(line, signatures.len() + 1)?);
            offset += end + 1;
            rest = &rest[end + 1..];
        }
        if signatures.is_empty() {
            return Err(CheckpointError::MissingSignatures);
        }
        Ok(SignedCheckpoint { checkpoint, signatures })
    }

    /// Checks that a signature by `name` with `key` is on the note and verifies (strictly) over the body.
    pub fn verify(&self, name: &str, key: &PublicKey) -> Result<(), CheckpointError> {
        let expected = key_hash(name, key);
        let mut candidates = self
            .signatures
            .iter()
            .filter(|signature| signature.name == name && signature.key_hash == expected)
            .peekable();
        if candidates.peek().is_none() {
            return Err(CheckpointError::UnknownKey { name: name.to_owned(), key_hash: hex::encode(expected) });
        }
        let body = self.checkpoint.body();
        if candidates.any(|signature| key.verify(body.as_bytes(), &signature.signature, name).is_ok()) {
            Ok(())
        } else {
            Err(CheckpointError::BadSignature { name: name.to_owned() })
        }
    }
}

fn check_origin(origin: &str) -> Result<(), CheckpointError> {
    if origin.is_empty() || origin.chars().any(|c| c.is_control()) || origin.trim() != origin {
        return Err(CheckpointError::InvalidOrigin { origin: origin.to_owned() });
    }
    if !origin.contains(HASH_ALGORITHM) {
        return Err(CheckpointError::OriginWithoutHashAlgorithm { origin: origin.to_owned() });
    }
    Ok(())
}

fn check_key_name(name: &str) -> Result<(), CheckpointError> {
    if name.is_empty() || name.chars().any(|c| c.is_whitespace() || c.is_control() || c == '+') {
        return Err(CheckpointError::InvalidKeyName { name: name.to_owned() });
    }
    Ok(())
}

/// A decimal `u64` with no sign and no leading zeros, so that each number has one spelling.
fn parse_decimal(text: &str) -> Option<u64> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) || (text.len() > 1 && text.starts_with('0')) {
        return None;
    }
    text.parse().ok()
}

fn parse_previous(line: &str) -> Option<Hash> {
    let digits = line.strip_prefix("previous ")?;
    // Lowercase only, as `hex::encode` writes it, so the body has one spelling.
    if digits.len() != 64 || !digits.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return None;
    }
    hex::decode(digits).ok()?.try_into().ok()
}

fn parse_signature_line(line: &str, line_number: usize) -> Result<NoteSignature, CheckpointError> {
    let malformed = |reason: &str| CheckpointError::MalformedSignatureLine { line_number, reason: reason.to_owned() };
    let rest = line.strip_prefix(SIGNATURE_PREFIX).ok_or_else(|| malformed("does not start with \"\u{2014} \""))?;
    let (name, blob) = rest.split_once(' ').ok_or_else(|| malformed("no space between key name and signature"))?;
    check_key_name(name).map_err(|_| malformed("invalid key name"))?;
    let blob = base64_decode(blob).map_err(|detail| CheckpointError::BadBase64 {
        what: format!("signature line {line_number}"),
        detail: detail.to_owned(),
    })?;
    if blob.len() != 68 {
        return Err(malformed(&format!("signature is {} bytes, expected 4 + 64", blob.len())));
    }
    Ok(NoteSignature {
        name: name.to_owned(),
        key_hash: blob[..4].try_into().expect("4 bytes"),
        signature: blob[4..].try_into().expect("64 bytes"),
    })
}

const BASE64_ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Standard-alphabet base64 with `=` padding (RFC 4648 §4).
fn base64_encode(bytes: &[u8]) -> String {
    let mut text = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let group = (u32::from(chunk[0]) << 16)
            | (u32::from(chunk.get(1).copied().unwrap_or(0)) << 8)
            | u32::from(chunk.get(2).copied().unwrap_or(0));
        for i in 0..4 {
            if i <= chunk.len() {
                text.push(char::from(BASE64_ALPHABET[(group >> (18 - 6 * i)) as usize & 63]));
            } else {
                text.push('=');
            }
        }
    }
    text
}

/// Decodes what [`base64_encode`] writes and nothing else: length a multiple of 4, padding only at the end,
/// and unused bits zero, so every byte string has exactly one accepted spelling.
fn base64_decode(text: &str) -> Result<Vec<u8>, &'static str> {
    let input = text.as_bytes();
    if !input.len().is_multiple_of(4) {
        return Err("length is not a multiple of 4");
    }
    let mut bytes = Vec::with_capacity(input.len() / 4 * 3);
    let n_groups = input.len() / 4;
    for (index, group) in input.chunks(4).enumerate() {
        let padding = group.iter().rev().take_while(|&&c| c == b'=').count();
        if padding > 2 || (padding > 0 && index + 1 != n_groups) {
            return Err("padding in the wrong place");
        }
        let mut value = 0u32;
        for &c in &group[..4 - padding] {
            let digit = BASE64_ALPHABET.iter().position(|&a| a == c).ok_or("character outside the alphabet")?;
            value = (value << 6) | digit as u32;
        }
        value <<= 6 * padding;
        let decoded = [(value >> 16) as u8, (value >> 8) as u8, value as u8];
        let n_bytes = 3 - padding;
        if decoded[n_bytes..].iter().any(|&b| b != 0) {
            return Err("non-zero bits in the padding");
        }
        bytes.extend_from_slice(&decoded[..n_bytes]);
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const LOG: &str = "pdc.example/log";

    fn checkpoint() -> Checkpoint {
        Checkpoint {
            origin: "pdc.example/ledger/sha3-256".into(),
            size: 7,
            root: [0x5a; 32],
            previous: [0; 32],
            timestamp_ms: 1_700_000_000_123,
        }
    }

    fn log_identity() -> Identity {
        Identity::from_seed([1; 32])
    }

    proptest! {
        #[test]
        fn base64_round_trips(bytes in prop::collection::vec(any::<u8>(), 0..80)) {
            let text = base64_encode(&bytes);
            prop_assert_eq!(base64_decode(&text).unwrap(), bytes);
        }

        #[test]
        fn notes_round_trip(size in any::<u64>(), root in any::<[u8; 32]>(), previous in any::<[u8; 32]>(), timestamp_ms in any::<u64>()) {
            let checkpoint = Checkpoint { origin: "o/sha3-256".into(), size, root, previous, timestamp_ms };
            let signed = checkpoint.sign(LOG, &log_identity()).unwrap();
            let parsed = SignedCheckpoint::parse(&signed.to_note()).unwrap();
            parsed.verify(LOG, &log_identity().public_key()).unwrap();
            prop_assert_eq!(parsed, signed);
        }
    }

    #[test]
    fn base64_matches_rfc4648_vectors_and_is_strict() {
        let vectors =
            [("", ""), ("f", "Zg=="), ("fo", "Zm8="), ("foo", "Zm9v"), ("foob", "Zm9vYg=="), ("fooba", "Zm9vYmE=")];
        for (plain, encoded) in vectors {
            assert_eq!(base64_encode(plain.as_bytes()), encoded);
            assert_eq!(base64_decode(encoded).unwrap(), plain.as_bytes());
        }
        for bad in ["Zg", "Zg=", "Zh==", "Z===", "Zg==Zm9v", "Zm9v!A==", "Zm 9"] {
            assert!(base64_decode(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn sign_parse_verify_round_trips_and_the_note_looks_as_documented() {
        let signed = checkpoint().sign(LOG, &log_identity()).unwrap();
        let note = signed.to_note();
        let (body, signatures) = note.split_once("\n\n").unwrap();
        assert_eq!(
            format!("{body}\n"),
            concat!(
                "pdc.example/ledger/sha3-256\n",
                "7\n",
                "WlpaWlpaWlpaWlpaWlpaWlpaWlpaWlpaWlpaWlpaWlo=\n",
                "previous 0000000000000000000000000000000000000000000000000000000000000000\n",
                "timestamp 1700000000123\n",
            )
        );
        assert!(signatures.starts_with("\u{2014} pdc.example/log "));
        let parsed = SignedCheckpoint::parse(&note).unwrap();
        assert_eq!(parsed, signed);
        parsed.verify(LOG, &log_identity().public_key()).unwrap();
    }

    #[test]
    fn tampering_with_any_byte_of_the_body_is_detected() {
        let note = checkpoint().sign(LOG, &log_identity()).unwrap().to_note();
        let body_length = note.find("\n\n").unwrap() + 1;
        let key = log_identity().public_key();
        for position in 0..body_length {
            for flip in [0x01u8, 0x20] {
                let mut bytes = note.clone().into_bytes();
                bytes[position] ^= flip;
                let accepted = String::from_utf8(bytes)
                    .ok()
                    .and_then(|text| SignedCheckpoint::parse(&text).ok())
                    .is_some_and(|signed| signed.verify(LOG, &key).is_ok());
                assert!(!accepted, "flipping {flip:#04x} at byte {position} went unnoticed");
            }
        }
    }

    #[test]
    fn wrong_keys_and_names_are_rejected() {
        let signed = checkpoint().sign(LOG, &log_identity()).unwrap();
        let other = Identity::from_seed([2; 32]).public_key();
        assert!(matches!(signed.verify(LOG, &other), Err(CheckpointError::UnknownKey { .. })));
        assert!(matches!(
            signed.verify("other", &log_identity().public_key()),
            Err(CheckpointError::UnknownKey { .. })
        ));
        // A line that claims the right key hash but carries another key's signature.
        let mut forged = signed.clone();
        forged.signatures[0].signature = Identity::from_seed([2; 32]).sign(checkpoint().body().as_bytes());
        assert_eq!(
            forged.verify(LOG, &log_identity().public_key()),
            Err(CheckpointError::BadSignature { name: LOG.into() })
        );
    }

    #[test]
    fn witnesses_co_sign() {
        let mut signed = checkpoint().sign(LOG, &log_identity()).unwrap();
        let witness = Identity::from_seed([3; 32]);
        signed.add_signature("witness.example", &witness).unwrap();
        let parsed = SignedCheckpoint::parse(&signed.to_note()).unwrap();
        assert_eq!(parsed.signatures.len(), 2);
        parsed.verify(LOG, &log_identity().public_key()).unwrap();
        parsed.verify("witness.example", &witness.public_key()).unwrap();
        // Co-signing leaves the chain hash alone.
        assert_eq!(parsed.note_hash(), checkpoint().note_hash());
        assert!(matches!(signed.add_signature("bad name", &witness), Err(CheckpointError::InvalidKeyName { .. })));
    }

    #[test]
    fn checkpoints_chain_by_previous_hash() {
        let first = checkpoint().sign(LOG, &log_identity()).unwrap();
        let second = Checkpoint { size: 9, root: [0x6b; 32], previous: first.note_hash(), ..checkpoint() }
            .sign(LOG, &log_identity())
            .unwrap();
        let parsed = SignedCheckpoint::parse(&second.to_note()).unwrap();
        assert_eq!(parsed.checkpoint.previous, sha3_256(first.checkpoint.body().as_bytes()));
        assert_ne!(parsed.checkpoint.previous, [0; 32]);
        assert_ne!(second.note_hash(), first.note_hash());
    }

    #[test]
    fn sign_rejects_an_origin_without_the_hash_algorithm() {
        let checkpoint = Checkpoint { origin: "pdc.example/ledger".into(), ..checkpoint() };
        assert!(matches!(
            checkpoint.sign(LOG, &log_identity()),
            Err(CheckpointError::OriginWithoutHashAlgorithm { .. })
        ));
    }

    #[test]
    fn each_malformation_has_its_own_error() {
        use CheckpointError as E;
        let note = checkpoint().sign(LOG, &log_identity()).unwrap().to_note();
        let lines: Vec<&str> = note.lines().collect();
        // Rebuilds the note with line `index` replaced.
        let with = |index: usize, line: &str| {
            let mut lines = lines.clone();
            lines[index] = line;
            lines.join("\n") + "\n"
        };
        let parse = |text: &str| SignedCheckpoint::parse(text).unwrap_err();

        assert_eq!(parse(&note.replace("\n\n", "\n")), E::MissingBlankLine);
        assert_eq!(parse(&note.replacen("7\n", "", 1)), E::BodyLineCount { found: 4 });
        assert_eq!(parse(&note.replacen("7\n", "7\nextra\n", 1)), E::BodyLineCount { found: 6 });
        assert!(matches!(parse(&with(0, "pdc.example/ledger")), E::OriginWithoutHashAlgorithm { .. }));
        assert!(matches!(parse(&with(0, " pdc/sha3-256")), E::InvalidOrigin { .. }));
        assert!(matches!(parse(&with(1, "seven")), E::InvalidSize { .. }));
        assert!(matches!(parse(&with(1, "07")), E::InvalidSize { .. }));
        assert!(matches!(parse(&with(1, "18446744073709551616")), E::InvalidSize { .. }));
        assert!(matches!(parse(&with(2, "WlpaWlpa!lpaWlpaWlpaWlpaWlpaWlpaWlpaWlpaWlo=")), E::BadBase64 { .. }));
        assert!(matches!(parse(&with(2, "WlpaWlpaWlpaWlpaWlpaWlpaWlpaWlpaWlpaWlpaWlp=")), E::BadBase64 { .. }));
        assert_eq!(parse(&with(2, "Wlpa")), E::RootLength { length: 3 });
        assert!(matches!(parse(&with(3, "previous 00")), E::InvalidPrevious { .. }));
        assert!(matches!(parse(&with(3, &format!("previous {}", "A".repeat(64)))), E::InvalidPrevious { .. }));
        assert!(matches!(parse(&with(3, &format!("prev {}", "0".repeat(64)))), E::InvalidPrevious { .. }));
        assert!(matches!(parse(&with(4, "timestamp -1")), E::InvalidTimestamp { .. }));
        assert!(matches!(parse(&with(4, "time 1")), E::InvalidTimestamp { .. }));

        let body_end = note.find("\n\n").unwrap() + 2;
        assert_eq!(parse(&note[..body_end]), E::MissingSignatures);
        let signature_line = lines[6];
        assert!(matches!(
            parse(&with(6, &signature_line.replacen('\u{2014}', "-", 1))),
            E::MalformedSignatureLine { line_number: 1, .. }
        ));
        assert!(matches!(parse(&with(6, "\u{2014} nameonly")), E::MalformedSignatureLine { line_number: 1, .. }));
        assert!(matches!(parse(&with(6, "\u{2014} a+b AAAA")), E::MalformedSignatureLine { line_number: 1, .. }));
        assert!(matches!(parse(&with(6, "\u{2014} name AAAA")), E::MalformedSignatureLine { line_number: 1, .. }));
        assert!(matches!(parse(&with(6, "\u{2014} name AA*A")), E::BadBase64 { .. }));
        assert_eq!(parse(&format!("{note}garbage")), E::TrailingGarbage { offset: note.len() });
        assert_eq!(parse(&format!("{note}\n")), E::TrailingGarbage { offset: note.len() });
        assert!(matches!(parse(&format!("{note}{signature_line}")), E::TrailingGarbage { .. }));
    }
}
