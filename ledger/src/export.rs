//! The export file: a self-contained copy of a ledger (keys, entries, checkpoints) that an auditor can verify
//! offline, with no access to the coordinator.
//!
//! # Format, version 1
//!
//! A binary file, every integer little-endian:
//!
//! ```text
//! magic            8 bytes   "PDCLEDGR"
//! version          u32       1
//! origin           string    the log's origin (≤ 1 KiB)
//! log key name     string    (≤ 1 KiB)
//! log public key   32 bytes  Ed25519
//! witness count    u32       (≤ 1,024), then per witness:
//!   name           string    (≤ 1 KiB)
//!   public key     32 bytes  Ed25519
//! quorum           u32       ≤ witness count
//! entry count      u64       then per entry, in log order:
//!   entry          bytes     the entry's canonical encoding (≤ 16 MiB), see [`crate::entry`]
//! checkpoint count u64       then per checkpoint, in increasing size order:
//!   note           string    the signed note, with every co-signature (≤ 64 KiB), see [`crate::checkpoint`]
//! ```
//!
//! where `string` and `bytes` are a `u32` byte length followed by that many bytes (UTF-8 for strings). Nothing
//! may follow the last note.
//!
//! [`parse`] accepts exactly what [`write()`] produces. It checks every length and count against what is left of
//! the input, and against the limits above, *before* allocating, so a hostile file cannot make it reserve more
//! memory than the file's own size; each error names the field and its byte offset.
//!
//! The keys in the file say which log it claims to be. An auditor should check the file against keys it trusts
//! from elsewhere, with [`ExportedLedger::verify_with`]; [`ExportedLedger::verify`] uses the file's own keys and
//! so only shows that the file is internally consistent.
//!
//! ```
//! use pdc_ledger::audit::AuditKeys;
//! use pdc_ledger::entry::Entry;
//! use pdc_ledger::export;
//! use pdc_ledger::store::{MemoryStore, Store};
//! use pdc_ledger::Identity;
//!
//! let keys = AuditKeys {
//!     origin: "pdc.example/ledger/sha3-256".into(),
//!     log_key_name: "pdc.example/log".into(),
//!     log_key: Identity::from_seed([1; 32]).public_key(),
//!     witnesses: Vec::new(),
//!     quorum: 0,
//! };
//! let mut store = MemoryStore::new();
//! store.append(&[Entry::StudyCreated { study_id: "s".into(), manifest_hash: [7; 32] }.encode()])?;
//!
//! let bytes = export::write(&store, &keys)?;
//! let exported = export::parse(&bytes)?;
//! assert_eq!(exported.entries.len(), 1);
//! assert!(exported.verify_with(&keys).passed());
//! # Ok::<(), export::ExportError>(())
//! ```

use crate::PublicKey;
use crate::audit::{self, AuditKeys, AuditReport};
use crate::cursor::{Cursor, Truncated};
use crate::store::{Store, StoreError};

/// The first 8 bytes of every export file.
pub const MAGIC: [u8; 8] = *b"PDCLEDGR";

/// The format version [`write()`] produces and [`parse`] reads.
pub const VERSION: u32 = 1;

/// The longest origin or key name, in bytes.
pub const MAX_NAME_BYTES: usize = 1024;

/// The most witnesses a file may list.
pub const MAX_WITNESSES: usize = 1024;

/// The longest entry, in bytes.
pub const MAX_ENTRY_BYTES: usize = 16 << 20;

/// The longest checkpoint note, in bytes.
pub const MAX_NOTE_BYTES: usize = 64 << 10;

/// A parsed export file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExportedLedger {
    /// The keys the file names: the log's origin and key, its witnesses and quorum.
    pub keys: AuditKeys,
    /// Every entry's bytes, in log order.
    pub entries: Vec<Vec<u8>>,
    /// Every checkpoint note, in increasing size order.
    pub checkpoints: Vec<String>,
}

impl ExportedLedger {
    /// Audits the file's entries and checkpoints against `trusted`, keys the auditor holds independently of the
    /// file: a file from another log, or re-signed with another key, fails.
    pub fn verify_with(&self, trusted: &AuditKeys) -> AuditReport {
        audit::verify_parts(&self.entries, &self.checkpoints, trusted)
    }

    /// Audits the file against its own keys: shows that it is internally consistent, not that it is the log the
    /// auditor thinks it is (see [`ExportedLedger::verify_with`]).
    pub fn verify(&self) -> AuditReport {
        self.verify_with(&self.keys)
    }
}

/// Why an export could not be written or parsed.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// The file does not start with [`MAGIC`].
    #[error("not a pdc ledger export: the file does not start with \"PDCLEDGR\"")]
    BadMagic,
    /// The format version is not one this code reads.
    #[error("unsupported export version {version} at byte 8 (expected {VERSION})")]
    UnsupportedVersion {
        /// The version found.
        version: u32,
    },
    /// The input ended inside a field.
    #[error("truncated export: {what} at byte {offset} needs {needed} bytes, {remaining} remain")]
    Truncated {
        /// The field being read.
        what: &'static str,
        /// Where it starts.
        offset: usize,
        /// Bytes it needs.
        needed: usize,
        /// Bytes left.
        remaining: usize,
    },
    /// A length or count describes more data than the input holds.
    #[error("{what} at byte {offset} claims at least {claimed} bytes, only {remaining} remain")]
    LengthBeyondInput {
        /// The field.
        what: &'static str,
        /// Where its length prefix starts.
        offset: usize,
        /// The least number of bytes the length implies.
        claimed: u64,
        /// Bytes left after the prefix.
        remaining: usize,
    },
    /// A length or count exceeds the format's limit for its field.
    #[error("{what} at byte {offset} has length {length}, above the limit of {limit}")]
    OverLimit {
        /// The field.
        what: &'static str,
        /// Where its length prefix starts (0 when writing).
        offset: usize,
        /// The length found.
        length: u64,
        /// The limit.
        limit: u64,
    },
    /// A string is not UTF-8.
    #[error("{what} at byte {offset} is not valid UTF-8")]
    InvalidUtf8 {
        /// The field.
        what: &'static str,
        /// Where its bytes start.
        offset: usize,
    },
    /// A public key is not a valid Ed25519 key.
    #[error("{what} at byte {offset} is not a valid Ed25519 public key: {detail}")]
    InvalidKey {
        /// The field.
        what: &'static str,
        /// Where it starts.
        offset: usize,
        /// Why.
        detail: String,
    },
    /// The quorum exceeds the number of witnesses, so no checkpoint could meet it.
    #[error("quorum {quorum} at byte {offset} exceeds the {witnesses} witnesses listed")]
    QuorumAboveWitnesses {
        /// The quorum.
        quorum: u64,
        /// How many witnesses the file lists.
        witnesses: usize,
        /// Where the quorum starts.
        offset: usize,
    },
    /// Bytes follow the last checkpoint.
    #[error("{count} trailing bytes after the export, from byte {offset}")]
    TrailingBytes {
        /// Where they start.
        offset: usize,
        /// How many there are.
        count: usize,
    },
    /// The store could not be read while writing, or holds a checkpoint that is not UTF-8.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Writes every entry and checkpoint of `store`, with `keys`, in the export format.
pub fn write(store: &dyn Store, keys: &AuditKeys) -> Result<Vec<u8>, ExportError> {
    let entries = (0..store.size()).map(|index| store.entry(index)).collect::<Result<Vec<_>, _>>()?;
    let checkpoints = store
        .checkpoints()?
        .into_iter()
        .map(|(size, bytes)| {
            String::from_utf8(bytes).map_err(|_| StoreError::Corrupt {
                index: None,
                detail: format!("the checkpoint for size {size} is not UTF-8"),
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    write_parts(&entries, &checkpoints, keys)
}

/// Writes `entries` and `checkpoints` with `keys` in the export format; [`ExportError::OverLimit`] when a field
/// exceeds the format's limits (so that [`parse`] would refuse the file).
pub fn write_parts(entries: &[Vec<u8>], checkpoints: &[String], keys: &AuditKeys) -> Result<Vec<u8>, ExportError> {
    let mut writer = Writer(MAGIC.to_vec());
    writer.u32(VERSION);
    writer.bytes("origin", keys.origin.as_bytes(), MAX_NAME_BYTES)?;
    writer.bytes("log key name", keys.log_key_name.as_bytes(), MAX_NAME_BYTES)?;
    writer.0.extend_from_slice(&keys.log_key.to_bytes());
    writer.count("witness count", keys.witnesses.len(), MAX_WITNESSES)?;
    for (name, key) in &keys.witnesses {
        writer.bytes("witness name", name.as_bytes(), MAX_NAME_BYTES)?;
        writer.0.extend_from_slice(&key.to_bytes());
    }
    if keys.quorum > keys.witnesses.len() {
        return Err(ExportError::QuorumAboveWitnesses {
            quorum: keys.quorum as u64,
            witnesses: keys.witnesses.len(),
            offset: writer.0.len(),
        });
    }
    writer.count("quorum", keys.quorum, MAX_WITNESSES)?;
    writer.u64(entries.len() as u64);
    for entry in entries {
        writer.bytes("entry", entry, MAX_ENTRY_BYTES)?;
    }
    writer.u64(checkpoints.len() as u64);
    for note in checkpoints {
        writer.bytes("checkpoint note", note.as_bytes(), MAX_NOTE_BYTES)?;
    }
    Ok(writer.0)
}

/// Parses an export file strictly (see the module docs); checks no signature or hash (that is the audit's job).
pub fn parse(bytes: &[u8]) -> Result<ExportedLedger, ExportError> {
    let mut reader = Reader::new(bytes);
    if reader.remaining() < MAGIC.len() || bytes[..MAGIC.len()] != MAGIC {
        return Err(ExportError::BadMagic);
    }
    reader.offset = MAGIC.len();
    let version = reader.u32("version")?;
    if version != VERSION {
        return Err(ExportError::UnsupportedVersion { version });
    }
    let origin = reader.string("origin", MAX_NAME_BYTES)?;
    let log_key_name = reader.string("log key name", MAX_NAME_BYTES)?;
    let log_key = reader.key("log public key")?;
    // Each witness is at least a 4-byte name length and a 32-byte key.
    let n_witnesses = reader.count32("witness count", MAX_WITNESSES, 36)?;
    let mut witnesses = Vec::with_capacity(n_witnesses);
    for _ in 0..n_witnesses {
        let name = reader.string("witness name", MAX_NAME_BYTES)?;
        witnesses.push((name, reader.key("witness public key")?));
    }
    let quorum_offset = reader.offset;
    let quorum = reader.u32("quorum")?;
    if quorum as usize > witnesses.len() {
        return Err(ExportError::QuorumAboveWitnesses {
            quorum: u64::from(quorum),
            witnesses: witnesses.len(),
            offset: quorum_offset,
        });
    }
    // Each entry or note is at least its 4-byte length.
    let n_entries = reader.count64("entry count", 4)?;
    let mut entries = Vec::with_capacity(n_entries);
    for _ in 0..n_entries {
        entries.push(reader.bytes("entry", MAX_ENTRY_BYTES)?.to_vec());
    }
    let n_checkpoints = reader.count64("checkpoint count", 4)?;
    let mut checkpoints = Vec::with_capacity(n_checkpoints);
    for _ in 0..n_checkpoints {
        checkpoints.push(reader.string("checkpoint note", MAX_NOTE_BYTES)?);
    }
    if reader.remaining() != 0 {
        return Err(ExportError::TrailingBytes { offset: reader.offset, count: reader.remaining() });
    }
    let keys = AuditKeys { origin, log_key_name, log_key, witnesses, quorum: quorum as usize };
    Ok(ExportedLedger { keys, entries, checkpoints })
}

struct Writer(Vec<u8>);

impl Writer {
    fn u32(&mut self, value: u32) {
        self.0.extend_from_slice(&value.to_le_bytes());
    }

    fn u64(&mut self, value: u64) {
        self.0.extend_from_slice(&value.to_le_bytes());
    }

    /// A `u32` count, refused above `limit`.
    fn count(&mut self, what: &'static str, count: usize, limit: usize) -> Result<(), ExportError> {
        if count > limit {
            return Err(ExportError::OverLimit { what, offset: 0, length: count as u64, limit: limit as u64 });
        }
        // `limit` is far below u32::MAX.
        self.u32(count as u32);
        Ok(())
    }

    fn bytes(&mut self, what: &'static str, bytes: &[u8], limit: usize) -> Result<(), ExportError> {
        self.count(what, bytes.len(), limit)?;
        self.0.extend_from_slice(bytes);
        Ok(())
    }
}

type Reader<'a> = Cursor<'a, ExportError>;

impl From<Truncated> for ExportError {
    fn from(Truncated { what, offset, needed, remaining }: Truncated) -> Self {
        ExportError::Truncated { what, offset, needed, remaining }
    }
}

impl<'a> Reader<'a> {
    fn key(&mut self, what: &'static str) -> Result<PublicKey, ExportError> {
        let offset = self.offset;
        let bytes: [u8; 32] = self.array(what)?;
        PublicKey::from_bytes(&bytes).map_err(|error| ExportError::InvalidKey {
            what,
            offset,
            detail: error.to_string(),
        })
    }

    /// Checks a length or count read at `offset` against `limit` and, at `min_item_size` bytes per item, against
    /// the rest of the input, before anything is allocated for it.
    fn check_length(
        &self,
        what: &'static str,
        offset: usize,
        length: u64,
        limit: u64,
        min_item_size: u64,
    ) -> Result<usize, ExportError> {
        if length > limit {
            return Err(ExportError::OverLimit { what, offset, length, limit });
        }
        let claimed = length.saturating_mul(min_item_size);
        let remaining = self.remaining();
        if claimed > remaining as u64 {
            return Err(ExportError::LengthBeyondInput { what, offset, claimed, remaining });
        }
        // At most `remaining`, so it fits a usize.
        Ok(length as usize)
    }

    fn count32(&mut self, what: &'static str, limit: usize, min_item_size: u64) -> Result<usize, ExportError> {
        let offset = self.offset;
        let count = self.u32(what)?;
        self.check_length(what, offset, u64::from(count), limit as u64, min_item_size)
    }

    fn count64(&mut self, what: &'static str, min_item_size: u64) -> Result<usize, ExportError> {
        let offset = self.offset;
        let count = self.u64(what)?;
        self.check_length(what, offset, count, u64::MAX, min_item_size)
    }

    fn bytes(&mut self, what: &'static str, limit: usize) -> Result<&'a [u8], ExportError> {
        let length = self.count32(what, limit, 1)?;
        self.take(what, length)
    }

    fn string(&mut self, what: &'static str, limit: usize) -> Result<String, ExportError> {
        let offset = self.offset + 4;
        let bytes = self.bytes(what, limit)?;
        let text = std::str::from_utf8(bytes).map_err(|_| ExportError::InvalidUtf8 { what, offset })?;
        Ok(text.to_owned())
    }
}
