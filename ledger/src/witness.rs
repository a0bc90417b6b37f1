//! Witness logic: co-signs a log's checkpoint only if it is consistent with the last one it signed for that log.
//!
//! A witness remembers, per log origin, the size, root and note hash of the last checkpoint it co-signed. A new
//! checkpoint is co-signed only with a consistency proof from exactly that size, so a log cannot show two
//! diverging views (a *split view*) and get both co-signed by the same witness.
//!
//! [`Witness`] does no I/O: the caller persists [`Witness::state`] with [`save_state`] *before* releasing a
//! co-signature, so that a crash cannot make the witness forget what it signed.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::checkpoint::{CheckpointError, NoteSignature, SignedCheckpoint};
use crate::merkle::{self, EMPTY_ROOT, ProofError};
use crate::{Hash, Identity, PublicKey};

/// The first line of a saved [`WitnessState`]: the format and its version.
pub const STATE_HEADER: &str = "pdc-witness-state v1";

/// A log the witness follows, and the key its checkpoints must be signed with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TrustedLog {
    /// The log's origin, the first line of its checkpoints.
    pub origin: String,
    /// The key name the log signs checkpoints under.
    pub key_name: String,
    /// The log's public key.
    pub public_key: PublicKey,
}

/// What a witness is: its own key name and the logs it follows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WitnessConfig {
    /// The key name the witness co-signs under.
    pub name: String,
    /// The logs whose checkpoints the witness accepts.
    pub logs: Vec<TrustedLog>,
}

/// The last checkpoint a witness co-signed for one log.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogState {
    /// The checkpoint's tree size.
    pub size: u64,
    /// The checkpoint's root.
    pub root: Hash,
    /// [`SignedCheckpoint::note_hash`] of the checkpoint.
    pub note_hash: Hash,
}

/// Everything a witness must remember across restarts: per origin, the last checkpoint it co-signed.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct WitnessState {
    /// Keyed by origin; an origin absent here has never been co-signed.
    pub logs: BTreeMap<String, LogState>,
}

/// Why a witness refused to co-sign a checkpoint.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum WitnessError {
    /// The note does not parse as a signed checkpoint.
    #[error("malformed checkpoint: {0}")]
    Malformed(#[source] CheckpointError),
    /// The witness does not follow a log with this origin.
    #[error("unknown log {origin:?}")]
    UnknownLog {
        /// The checkpoint's origin.
        origin: String,
    },
    /// The log's signature is missing or does not verify.
    #[error("checkpoint of {origin:?} lacks a valid log signature: {source}")]
    BadSignature {
        /// The checkpoint's origin.
        origin: String,
        /// What the signature check found.
        source: CheckpointError,
    },
    /// The consistency proof starts from a size other than the one the witness last co-signed.
    #[error("consistency proof must start at size {expected}, the last co-signed size, not {got}")]
    StaleOldSize {
        /// The size the witness last co-signed (0 if none).
        expected: u64,
        /// The old size the caller gave.
        got: u64,
    },
    /// The checkpoint is smaller than one the witness already co-signed.
    #[error("checkpoint size {new_size} is below the last co-signed size {last_size}")]
    SizeDecreased {
        /// The size the witness last co-signed.
        last_size: u64,
        /// The checkpoint's size.
        new_size: u64,
    },
    /// The log signed a different root for a size the witness already co-signed: a split view.
    #[error("split view: a different root was already co-signed for size {size}")]
    SameSizeDifferentRoot {
        /// The size both checkpoints claim.
        size: u64,
    },
    /// The consistency proof does not link the last co-signed checkpoint to this one.
    #[error("consistency proof from {old_size} to {new_size} does not verify: {source}")]
    InconsistentProof {
        /// The last co-signed size.
        old_size: u64,
        /// The checkpoint's size.
        new_size: u64,
        /// What the proof check found.
        source: ProofError,
    },
    /// The witness could not sign: its configured key name is invalid.
    #[error("witness cannot sign: {0}")]
    CannotSign(#[source] CheckpointError),
}

impl WitnessError {
    /// A stable, distinct name for each kind of refusal, for the gRPC edge to map to status codes.
    pub fn code(&self) -> &'static str {
        match self {
            WitnessError::Malformed(_) => "malformed",
            WitnessError::UnknownLog { .. } => "unknown_log",
            WitnessError::BadSignature { .. } => "bad_signature",
            WitnessError::StaleOldSize { .. } => "stale_old_size",
            WitnessError::SizeDecreased { .. } => "size_decreased",
            WitnessError::SameSizeDifferentRoot { .. } => "split_view",
            WitnessError::InconsistentProof { .. } => "inconsistent_proof",
            WitnessError::CannotSign(_) => "cannot_sign",
        }
    }
}

/// Why a saved [`WitnessState`] could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// The file exists but could not be read.
    #[error("witness state {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// The file's content is not a valid state.
    #[error("witness state {path}, line {line_number}: {reason}")]
    Malformed {
        /// The file.
        path: PathBuf,
        /// The 1-based line, or the line after the last for a missing final newline.
        line_number: usize,
        /// What is wrong.
        reason: String,
    },
}

/// A witness: its configuration, signing key and the last checkpoint it co-signed per log.
#[derive(Debug)]
pub struct Witness {
    config: WitnessConfig,
    identity: Identity,
    state: WitnessState,
}

impl Witness {
    /// A witness resuming from `state` (use [`WitnessState::default`] for a new one).
    pub fn new(config: WitnessConfig, identity: Identity, state: WitnessState) -> Self {
        Witness { config, identity, state }
    }

    /// What the witness has co-signed so far; persist it before releasing a co-signature.
    pub fn state(&self) -> &WitnessState {
        &self.state
    }

    /// The witness's configuration.
    pub fn config(&self) -> &WitnessConfig {
        &self.config
    }

    /// Co-signs `note` if it is signed by its log and `proof` proves it consistent with the last checkpoint
    /// co-signed for that log, which has size `old_size`; returns the witness's signature and records the
    /// checkpoint.
    ///
    /// The first checkpoint of a log needs `old_size == 0` and an empty proof. Re-submitting the checkpoint
    /// last co-signed (same size, same root) is co-signed again. On any error the state is unchanged.
    pub fn add_checkpoint(&mut self, note: &str, old_size: u64, proof: &[Hash]) -> Result<NoteSignature, WitnessError> {
        let mut signed = SignedCheckpoint::parse(note).map_err(WitnessError::Malformed)?;
        let checkpoint = &signed.checkpoint;
        let log = self
            .config
            .logs
            .iter()
            .find(|log| log.origin == checkpoint.origin)
            .ok_or_else(|| WitnessError::UnknownLog { origin: checkpoint.origin.clone() })?;
        signed
            .verify(&log.key_name, &log.public_key)
            .map_err(|source| WitnessError::BadSignature { origin: checkpoint.origin.clone(), source })?;

        let last = self.state.logs.get(&checkpoint.origin).copied();
        let (last_size, last_root) = last.map_or((0, EMPTY_ROOT), |last| (last.size, last.root));
        let new_size = checkpoint.size;
        if new_size < last_size {
            return Err(WitnessError::SizeDecreased { last_size, new_size });
        }
        if old_size != last_size {
            return Err(WitnessError::StaleOldSize { expected: last_size, got: old_size });
        }
        if new_size == last_size && checkpoint.root != last_root {
            return Err(WitnessError::SameSizeDifferentRoot { size: new_size });
        }
        merkle::verify_consistency(last_size, new_size, &last_root, &checkpoint.root, proof)
            .map_err(|source| WitnessError::InconsistentProof { old_size: last_size, new_size, source })?;

        let record = LogState { size: new_size, root: checkpoint.root, note_hash: signed.note_hash() };
        let origin = checkpoint.origin.clone();
        signed.add_signature(&self.config.name, &self.identity).map_err(WitnessError::CannotSign)?;
        let signature = signed.signatures.pop().expect("add_signature appends one signature");
        self.state.logs.insert(origin, record);
        Ok(signature)
    }
}

/// Writes `state` to `path` atomically: a temporary file in the same folder, synced, renamed over `path`, and
/// the folder synced, so a crash leaves either the old state or the new one.
pub fn save_state(path: &Path, state: &WitnessState) -> io::Result<()> {
    let file_name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "witness state path has no file name"))?;
    let mut temp_name = std::ffi::OsString::from(".");
    temp_name.push(file_name);
    temp_name.push(".tmp");
    let temp_path = path.with_file_name(temp_name);
    {
        let mut file = File::create(&temp_path)?;
        file.write_all(encode_state(state).as_bytes())?;
        file.sync_all()?;
    }
    fs::rename(&temp_path, path)?;
    let folder = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    File::open(folder)?.sync_all()
}

/// Reads a state written by [`save_state`]; a missing file is the empty state of a new witness.
pub fn load_state(path: &Path) -> Result<WitnessState, StateError> {
    match fs::read_to_string(path) {
        Ok(text) => decode_state(&text).map_err(|(line_number, reason)| StateError::Malformed {
            path: path.to_owned(),
            line_number,
            reason,
        }),
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(WitnessState::default()),
        Err(source) => Err(StateError::Io { path: path.to_owned(), source }),
    }
}

/// The header line, then one line per log: `<size> <root hex> <note hash hex> <origin>`, origin last because
/// it may contain spaces.
fn encode_state(state: &WitnessState) -> String {
    let mut text = format!("{STATE_HEADER}\n");
    for (origin, log) in &state.logs {
        text.push_str(&format!("{} {} {} {origin}\n", log.size, hex::encode(log.root), hex::encode(log.note_hash)));
    }
    text
}

/// Parses [`encode_state`]'s format strictly: a state parses only if encoding it gives back the same text.
fn decode_state(text: &str) -> Result<WitnessState, (usize, String)> {
    let lines: Vec<&str> = text.split_terminator('\n').collect();
    if !text.ends_with('\n') {
        return Err((lines.len().max(1), "missing final newline".into()));
    }
    if lines.first() != Some(&STATE_HEADER) {
        return Err((1, format!("expected header {STATE_HEADER:?}")));
    }
    let mut state = WitnessState::default();
    let mut previous_origin: Option<&str> = None;
    for (index, line) in lines.iter().enumerate().skip(1) {
        let line_number = index + 1;
        let fail = |reason: &str| (line_number, reason.to_owned());
        let mut fields = line.splitn(4, ' ');
        let (Some(size), Some(root), Some(note_hash), Some(origin)) =
            (fields.next(), fields.next(), fields.next(), fields.next())
        else {
            return Err(fail("expected \"<size> <root> <note hash> <origin>\""));
        };
        let size = parse_decimal(size).ok_or_else(|| fail("invalid size"))?;
        let root = parse_hash(root).ok_or_else(|| fail("invalid root"))?;
        let note_hash = parse_hash(note_hash).ok_or_else(|| fail("invalid note hash"))?;
        if origin.is_empty() || origin.trim() != origin || origin.chars().any(char::is_control) {
            return Err(fail("invalid origin"));
        }
        // Origins are written in sorted order, once each; anything else was not written by `encode_state`.
        if previous_origin.is_some_and(|previous| previous >= origin) {
            return Err(fail("origins are duplicated or out of order"));
        }
        previous_origin = Some(origin);
        state.logs.insert(origin.to_owned(), LogState { size, root, note_hash });
    }
    Ok(state)
}

/// A decimal `u64` with no sign and no leading zeros.
fn parse_decimal(text: &str) -> Option<u64> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) || (text.len() > 1 && text.starts_with('0')) {
        return None;
    }
    text.parse().ok()
}

/// 64 lowercase hex digits, as `hex::encode` writes them.
fn parse_hash(text: &str) -> Option<Hash> {
    if text.len() != 64 || !text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return None;
    }
    hex::decode(text).ok()?.try_into().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkpoint::Checkpoint;
    use crate::merkle::MerkleTree;

    const ORIGIN: &str = "pdc.example/ledger/sha3-256";
    const LOG_KEY: &str = "pdc.example/log";
    const WITNESS_KEY: &str = "witness.example/w1";

    fn log_identity() -> Identity {
        Identity::from_seed([1; 32])
    }

    fn witness_identity() -> Identity {
        Identity::from_seed([2; 32])
    }

    fn new_witness() -> Witness {
        let config = WitnessConfig {
            name: WITNESS_KEY.into(),
            logs: vec![TrustedLog {
                origin: ORIGIN.into(),
                key_name: LOG_KEY.into(),
                public_key: log_identity().public_key(),
            }],
        };
        Witness::new(config, witness_identity(), WitnessState::default())
    }

    fn tree(n_leaves: u8) -> MerkleTree {
        (0..n_leaves).map(|i| merkle::leaf_hash(&[i])).collect()
    }

    fn note_for(origin: &str, size: u64, root: Hash, signer: &Identity) -> String {
        let checkpoint =
            Checkpoint { origin: origin.into(), size, root, previous: [0; 32], timestamp_ms: 1_000 + size };
        checkpoint.sign(LOG_KEY, signer).expect("sign").to_note()
    }

    fn note(log: &MerkleTree) -> String {
        note_for(ORIGIN, log.len(), log.root(), &log_identity())
    }

    /// Brings a fresh witness to `log`'s first `size` leaves.
    fn witness_at(log: &MerkleTree, size: u64) -> Witness {
        let mut witness = new_witness();
        let prefix: MerkleTree = log.leaf_hashes()[..size as usize].iter().copied().collect();
        witness.add_checkpoint(&note(&prefix), 0, &[]).expect("first checkpoint");
        witness
    }

    #[test]
    fn a_consistent_sequence_is_co_signed_and_the_state_advances() {
        let mut witness = new_witness();
        let full = tree(13);
        let mut last = 0;
        for size in [1u64, 3, 4, 4, 8, 13] {
            let log: MerkleTree = full.leaf_hashes()[..size as usize].iter().copied().collect();
            let proof = log.consistency_proof(last).expect("proof");
            let note = note(&log);
            let signature = witness.add_checkpoint(&note, last, &proof).expect("co-signed");

            let mut cosigned = SignedCheckpoint::parse(&note).expect("parse");
            cosigned.signatures.push(signature);
            let cosigned = SignedCheckpoint::parse(&cosigned.to_note()).expect("co-signed note parses");
            cosigned.verify(WITNESS_KEY, &witness_identity().public_key()).expect("witness signature verifies");
            assert_eq!(
                witness.state().logs[ORIGIN],
                LogState { size, root: log.root(), note_hash: cosigned.note_hash() }
            );
            last = size;
        }
    }

    #[test]
    fn a_split_view_cannot_get_both_checkpoints_co_signed() {
        let honest = tree(5);
        let mut forked = tree(4);
        forked.append(merkle::leaf_hash(b"other"));
        let mut witness = witness_at(&honest, 4);
        let proof = honest.consistency_proof(4).expect("proof");
        witness.add_checkpoint(&note(&honest), 4, &proof).expect("first view co-signed");

        assert_eq!(
            witness.add_checkpoint(&note(&forked), 5, &[]),
            Err(WitnessError::SameSizeDifferentRoot { size: 5 })
        );
        // Re-submitting the view already co-signed is fine.
        witness.add_checkpoint(&note(&honest), 5, &[]).expect("idempotent");
    }

    #[test]
    fn an_inconsistent_proof_is_refused() {
        let honest = tree(6);
        let mut witness = witness_at(&honest, 3);
        // A log that rewrote leaf 1 cannot prove consistency with the co-signed size-3 root.
        let mut rewritten = tree(1);
        rewritten.extend((1u8..6).map(|i| merkle::leaf_hash(&[i, 0xff])));
        let proof = rewritten.consistency_proof(3).expect("proof");
        let error = witness.add_checkpoint(&note(&rewritten), 3, &proof).unwrap_err();
        assert!(matches!(error, WitnessError::InconsistentProof { old_size: 3, new_size: 6, .. }), "{error:?}");
        assert_eq!(error.code(), "inconsistent_proof");
        // The first checkpoint also needs an empty proof.
        let error = new_witness().add_checkpoint(&note(&honest), 0, &[[0; 32]]).unwrap_err();
        assert!(matches!(error, WitnessError::InconsistentProof { old_size: 0, new_size: 6, .. }), "{error:?}");
    }

    #[test]
    fn stale_old_sizes_and_shrinking_logs_are_refused() {
        let log = tree(8);
        let mut witness = witness_at(&log, 5);
        let proof = log.consistency_proof(3).expect("proof");
        assert_eq!(
            witness.add_checkpoint(&note(&log), 3, &proof),
            Err(WitnessError::StaleOldSize { expected: 5, got: 3 })
        );
        let small = tree(4);
        assert_eq!(
            witness.add_checkpoint(&note(&small), 5, &[]),
            Err(WitnessError::SizeDecreased { last_size: 5, new_size: 4 })
        );
        assert_eq!(
            new_witness().add_checkpoint(&note(&log), 2, &[]),
            Err(WitnessError::StaleOldSize { expected: 0, got: 2 })
        );
    }

    #[test]
    fn unknown_logs_bad_signatures_and_malformed_notes_are_refused() {
        let log = tree(2);
        let mut witness = new_witness();
        let other = "other.example/ledger/sha3-256";
        assert_eq!(
            witness.add_checkpoint(&note_for(other, 2, log.root(), &log_identity()), 0, &[]),
            Err(WitnessError::UnknownLog { origin: other.into() })
        );
        let forged = note_for(ORIGIN, 2, log.root(), &Identity::from_seed([9; 32]));
        let error = witness.add_checkpoint(&forged, 0, &[]).unwrap_err();
        assert!(matches!(error, WitnessError::BadSignature { .. }), "{error:?}");
        let error = witness.add_checkpoint("not a note", 0, &[]).unwrap_err();
        assert!(matches!(error, WitnessError::Malformed(_)), "{error:?}");
        assert_eq!(witness.state(), &WitnessState::default());
    }

    #[test]
    fn every_refusal_has_its_own_code() {
        let errors = [
            WitnessError::Malformed(CheckpointError::MissingBlankLine),
            WitnessError::UnknownLog { origin: String::new() },
            WitnessError::BadSignature { origin: String::new(), source: CheckpointError::MissingSignatures },
            WitnessError::StaleOldSize { expected: 0, got: 1 },
            WitnessError::SizeDecreased { last_size: 1, new_size: 0 },
            WitnessError::SameSizeDifferentRoot { size: 1 },
            WitnessError::InconsistentProof { old_size: 0, new_size: 1, source: ProofError::RootMismatch },
            WitnessError::CannotSign(CheckpointError::MissingSignatures),
        ];
        let codes: std::collections::BTreeSet<_> = errors.iter().map(WitnessError::code).collect();
        assert_eq!(codes.len(), errors.len());
    }

    #[test]
    fn state_survives_save_and_load_and_refusals_leave_it_unchanged() {
        let folder = tempfile::tempdir().expect("tempdir");
        let path = folder.path().join("witness.state");
        assert_eq!(load_state(&path).expect("missing file"), WitnessState::default());

        let log = tree(7);
        let mut witness = witness_at(&log, 4);
        save_state(&path, witness.state()).expect("save");
        let saved = witness.state().clone();
        assert_eq!(load_state(&path).expect("load"), saved);

        // A refused checkpoint changes nothing in memory, so saving again writes the same bytes.
        let bytes = fs::read(&path).expect("read");
        let mut forked = tree(3);
        forked.extend((3u8..7).map(|i| merkle::leaf_hash(&[i, 1])));
        let proof = forked.consistency_proof(4).expect("proof");
        assert!(witness.add_checkpoint(&note(&forked), 4, &proof).is_err());
        assert_eq!(witness.state(), &saved);
        save_state(&path, witness.state()).expect("save");
        assert_eq!(fs::read(&path).expect("read"), bytes);

        // A resumed witness keeps refusing what the first one would refuse.
        let mut resumed = Witness::new(witness.config().clone(), witness_identity(), load_state(&path).expect("load"));
        assert_eq!(
            resumed.add_checkpoint(&note(&forked), 0, &[]),
            Err(WitnessError::StaleOldSize { expected: 4, got: 0 })
        );
        let proof = log.consistency_proof(4).expect("proof");
        resumed.add_checkpoint(&note(&log), 4, &proof).expect("consistent");
        save_state(&path, resumed.state()).expect("save");
        assert_eq!(load_state(&path).expect("load").logs[ORIGIN].size, 7);
        assert_eq!(fs::read_dir(folder.path()).expect("list").count(), 1, "no temporary file left behind");
    }

    #[test]
    fn malformed_state_files_are_rejected_precisely() {
        let folder = tempfile::tempdir().expect("tempdir");
        let path = folder.path().join("witness.state");
        let good = format!("{STATE_HEADER}\n3 {} {} {ORIGIN}\n", "ab".repeat(32), "cd".repeat(32));
        fs::write(&path, &good).expect("write");
        assert_eq!(encode_state(&load_state(&path).expect("load")), good);

        let cases = [
            ("", 1),
            ("pdc-witness-state v2\n", 1),
            (&good[..good.len() - 1], 2),
            (&good.replace("3 ", "03 "), 2),
            (&good.replace("ab", "AB"), 2),
            (&good.replace(ORIGIN, ""), 2),
            (&format!("{good}{}", &good[STATE_HEADER.len() + 1..]), 3),
        ];
        for (text, expected_line) in cases {
            fs::write(&path, text).expect("write");
            match load_state(&path) {
                Err(StateError::Malformed { line_number, .. }) => assert_eq!(line_number, expected_line, "{text:?}"),
                other => panic!("{text:?} gave {other:?}"),
            }
        }
    }
}
