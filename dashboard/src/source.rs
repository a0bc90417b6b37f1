//! Where the dashboard's ledger comes from (a copied ledger folder or an export file), the auditor's trust policy,
//! and the snapshot a page is rendered from: the entries decoded once, the re-derived tree, the checkpoints, and
//! the verdict of the whole-ledger audit.
//!
//! The audit is called in one place, `audit_ledger`, under the trust policy of the dashboard's own flags, never
//! under the keys the ledger names for itself.

use std::path::{Path, PathBuf};

use pdc_coordinator::ledger::{LOG_INFO_KEY, LogInfo};
use pdc_ledger::audit::{self, AuditKeys, AuditReport};
use pdc_ledger::checkpoint::SignedCheckpoint;
use pdc_ledger::entry::Entry;
use pdc_ledger::merkle::{self, MerkleTree};
use pdc_ledger::store::{RocksDbStore, Store};
use pdc_ledger::{Hash, PublicKey};

use crate::model::{Indexed, Seals};
use crate::{Error, Result};

/// Where the ledger is read from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    /// A copy of a coordinator's ledger folder (`<data_dir>/ledger`), opened read-only.
    Folder(PathBuf),
    /// An export file (`pdc audit export`).
    File(PathBuf),
}

impl Source {
    /// The flag that names this source on the command line, for the offline commands the pages print.
    pub fn flag(&self) -> String {
        match self {
            Source::Folder(path) => format!("--ledger {}", path.display()),
            Source::File(path) => format!("--file {}", path.display()),
        }
    }

    /// The source in words.
    pub fn describe(&self) -> String {
        match self {
            Source::Folder(path) => format!("ledger folder {}", path.display()),
            Source::File(path) => format!("export file {}", path.display()),
        }
    }
}

/// What the auditor trusts, from the dashboard's flags: never what the ledger says about itself.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TrustPolicy {
    /// The log's public key, obtained independently; without it the dashboard gives no verdict.
    pub log_key: Option<PublicKey>,
    /// The witnesses whose co-signatures count, as (key name, public key).
    pub witnesses: Vec<(String, PublicKey)>,
    /// How many of them must co-sign each checkpoint; `None`: all of them.
    pub quorum: Option<usize>,
}

impl TrustPolicy {
    /// The quorum in force: the one given, or every pinned witness.
    pub fn quorum(&self) -> usize {
        self.quorum.unwrap_or(self.witnesses.len())
    }

    /// The policy of the dashboard's flags: `--log-key HEX`, each `--witness NAME=HEX`, `--quorum N` (at most the
    /// number of witnesses, which is also its default).
    pub fn from_flags(log_key: Option<&str>, witnesses: &[String], quorum: Option<usize>) -> Result<TrustPolicy> {
        let witnesses = witnesses.iter().map(|w| Self::parse_witness(w)).collect::<Result<Vec<_>>>()?;
        if let Some(quorum) = quorum
            && quorum > witnesses.len()
        {
            return Err(Error::Policy(format!(
                "--quorum {quorum} exceeds the {} pinned witnesses (--witness NAME=HEX)",
                witnesses.len()
            )));
        }
        Ok(TrustPolicy { log_key: log_key.map(Self::parse_log_key).transpose()?, witnesses, quorum })
    }

    /// Parses `--witness NAME=HEX`.
    pub fn parse_witness(text: &str) -> Result<(String, PublicKey)> {
        let (name, key) =
            text.split_once('=').ok_or_else(|| Error::Policy(format!("--witness {text:?} is not NAME=HEX")))?;
        Ok((name.to_owned(), parse_key(key).map_err(|detail| Error::Policy(format!("--witness {name}: {detail}")))?))
    }

    /// Parses `--log-key HEX`.
    pub fn parse_log_key(text: &str) -> Result<PublicKey> {
        parse_key(text).map_err(|detail| Error::Policy(format!("--log-key: {detail}")))
    }
}

fn parse_key(text: &str) -> std::result::Result<PublicKey, String> {
    let bytes = hex::decode(text.trim()).map_err(|e| format!("not hex: {e}"))?;
    PublicKey::from_bytes(&bytes).map_err(|e| e.to_string())
}

/// One entry as loaded: its bytes, leaf hash and decoding.
#[derive(Clone, Debug)]
pub struct LoadedEntry {
    /// The entry's bytes; empty when the store could not return them.
    pub bytes: Vec<u8>,
    /// Its RFC 9162 leaf hash.
    pub leaf_hash: Hash,
    /// The decoded entry, or why it does not decode (or could not be read).
    pub decoded: std::result::Result<Entry, String>,
}

/// A checkpoint note as stored, and its parse.
#[derive(Clone, Debug)]
pub struct StoredCheckpoint {
    /// The note's text.
    pub note: String,
    /// The parsed note, or why it does not parse.
    pub parsed: std::result::Result<SignedCheckpoint, String>,
}

/// The audit's outcome as the head page shows it.
#[derive(Clone, Debug, PartialEq)]
pub enum Verdict {
    /// No verdict: no log key was pinned, so nothing independent says whose log this is.
    Unavailable {
        /// Why.
        reason: String,
    },
    /// The audit ran under the trust policy.
    Checked(AuditReport),
}

/// The ledger at one moment, with everything the pages are rendered from.
#[derive(Debug)]
pub struct Snapshot {
    /// The source in words.
    pub source: String,
    /// The source's flag, for offline commands.
    pub source_flag: String,
    /// The keys the ledger names for itself (origin, key name, log key, witnesses, quorum): shown, not trusted.
    pub claimed: AuditKeys,
    /// The auditor's trust policy.
    pub policy: TrustPolicy,
    /// Every entry, in log order.
    pub entries: Vec<LoadedEntry>,
    /// The decoded entries with their indices, for the views.
    pub decoded: Vec<Indexed>,
    /// The tree re-derived from the entries.
    pub tree: MerkleTree,
    /// The checkpoints, in increasing size order.
    pub checkpoints: Vec<StoredCheckpoint>,
    /// When each entry was sealed.
    pub seals: Seals,
    /// The whole-ledger audit's verdict.
    pub verdict: Verdict,
    /// When the snapshot was taken, Unix milliseconds.
    pub loaded_at_ms: u64,
}

impl Snapshot {
    /// Reads `source` and audits it under `policy`.
    pub fn load(source: &Source, policy: TrustPolicy, now_ms: u64) -> Result<Snapshot> {
        match source {
            Source::Folder(dir) => {
                let store = RocksDbStore::open_for_audit(dir)
                    .map_err(|e| Error::Source { source_name: source.describe(), detail: e.to_string() })?;
                let claimed = folder_keys(&store, dir)?;
                let entries: Vec<std::result::Result<Vec<u8>, String>> =
                    (0..store.size()).map(|index| store.entry(index).map_err(|e| e.to_string())).collect();
                let notes = store.checkpoints().map_err(|e| Error::Source {
                    source_name: source.describe(),
                    detail: format!("the checkpoints cannot be read: {e}"),
                })?;
                let notes = notes
                    .into_iter()
                    .map(|(_, bytes)| {
                        String::from_utf8(bytes).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into())
                    })
                    .collect();
                let verdict = audit_ledger(AuditInput::Store(&store), &claimed, &policy);
                Ok(Snapshot::build(source, claimed, policy, entries, notes, verdict, now_ms))
            }
            Source::File(path) => {
                let bytes = std::fs::read(path)
                    .map_err(|e| Error::Source { source_name: source.describe(), detail: e.to_string() })?;
                let exported = pdc_ledger::export::parse(&bytes).map_err(|e| Error::Source {
                    source_name: source.describe(),
                    detail: format!("not a valid ledger export: {e}"),
                })?;
                let verdict = audit_ledger(
                    AuditInput::Parts { entries: &exported.entries, checkpoints: &exported.checkpoints },
                    &exported.keys,
                    &policy,
                );
                let entries = exported.entries.into_iter().map(Ok).collect();
                Ok(Snapshot::build(source, exported.keys, policy, entries, exported.checkpoints, verdict, now_ms))
            }
        }
    }

    fn build(
        source: &Source,
        claimed: AuditKeys,
        policy: TrustPolicy,
        raw: Vec<std::result::Result<Vec<u8>, String>>,
        notes: Vec<String>,
        verdict: Verdict,
        now_ms: u64,
    ) -> Snapshot {
        let entries: Vec<LoadedEntry> = raw
            .into_iter()
            .map(|read| match read {
                Ok(bytes) => LoadedEntry {
                    leaf_hash: merkle::leaf_hash(&bytes),
                    decoded: Entry::decode(&bytes).map_err(|e| e.to_string()),
                    bytes,
                },
                Err(error) => LoadedEntry {
                    bytes: Vec::new(),
                    leaf_hash: [0; 32],
                    decoded: Err(format!("cannot be read: {error}")),
                },
            })
            .collect();
        let tree: MerkleTree = entries.iter().map(|e| e.leaf_hash).collect();
        let decoded =
            (0u64..).zip(&entries).filter_map(|(i, e)| e.decoded.as_ref().ok().map(|d| (i, d.clone()))).collect();
        let checkpoints: Vec<StoredCheckpoint> = notes
            .into_iter()
            .map(|note| StoredCheckpoint { parsed: SignedCheckpoint::parse(&note).map_err(|e| e.to_string()), note })
            .collect();
        let seals = Seals::new(
            checkpoints
                .iter()
                .filter_map(|c| c.parsed.as_ref().ok())
                .map(|c| (c.checkpoint.size, c.checkpoint.timestamp_ms))
                .collect(),
        );
        Snapshot {
            source: source.describe(),
            source_flag: source.flag(),
            claimed,
            policy,
            entries,
            decoded,
            tree,
            checkpoints,
            seals,
            verdict,
            loaded_at_ms: now_ms,
        }
    }

    /// The keys the checks run under: the ledger's origin and key name (which the pinned key's signature binds),
    /// with the pinned log key and witnesses; `None` without a pinned log key.
    pub fn trusted_keys(&self) -> Option<AuditKeys> {
        trusted_keys(&self.claimed, &self.policy)
    }

    /// The latest checkpoint that parses, if any.
    pub fn latest_checkpoint(&self) -> Option<&SignedCheckpoint> {
        self.checkpoints.iter().rev().find_map(|c| c.parsed.as_ref().ok())
    }
}

fn trusted_keys(claimed: &AuditKeys, policy: &TrustPolicy) -> Option<AuditKeys> {
    Some(AuditKeys {
        origin: claimed.origin.clone(),
        log_key_name: claimed.log_key_name.clone(),
        log_key: policy.log_key?,
        witnesses: policy.witnesses.clone(),
        quorum: policy.quorum(),
    })
}

/// What an audit reads: a store (audited node by node, so a damaged stored node is found even where the entries
/// are intact) or the parts of an export.
enum AuditInput<'a> {
    Store(&'a dyn Store),
    Parts { entries: &'a [Vec<u8>], checkpoints: &'a [String] },
}

/// The one call of `pdc_ledger::audit`: the whole ledger under the auditor's trust policy.
fn audit_ledger(input: AuditInput<'_>, claimed: &AuditKeys, policy: &TrustPolicy) -> Verdict {
    let Some(keys) = trusted_keys(claimed, policy) else {
        return Verdict::Unavailable {
            reason: "no log key is pinned (--log-key): the ledger's own keys prove nothing about whose log it is"
                .into(),
        };
    };
    Verdict::Checked(match input {
        AuditInput::Store(store) => audit::verify_store(store, &keys),
        AuditInput::Parts { entries, checkpoints } => audit::verify_parts(entries, checkpoints, &keys),
    })
}

/// The keys a ledger folder names for itself, from the coordinator's log-info record.
fn folder_keys(store: &dyn Store, dir: &Path) -> Result<AuditKeys> {
    let source_name = format!("ledger folder {}", dir.display());
    let text = store
        .meta(LOG_INFO_KEY)
        .map_err(|e| Error::Source { source_name: source_name.clone(), detail: e.to_string() })?
        .ok_or_else(|| Error::Source {
            source_name: source_name.clone(),
            detail: "it does not say whose log it is (no log-info)".into(),
        })?;
    let text = String::from_utf8(text)
        .map_err(|_| Error::Source { source_name: source_name.clone(), detail: "its log-info is not UTF-8".into() })?;
    let info = LogInfo::from_text(&text).map_err(|e| Error::Source { source_name, detail: e.to_string() })?;
    Ok(info.audit_keys())
}
