//! The audit: re-derives a ledger's Merkle tree, checks its signed checkpoints, and holds its entries to the
//! federation's rules, reporting every failure with the entry indices or checkpoint sizes involved.
//!
//! The audit is a pure function of what it is given: the entries' bytes, the checkpoint notes and the keys the
//! auditor trusts ([`AuditKeys`]). [`verify_parts`] takes them as slices (an offline copy, see
//! [`crate::export`]); [`verify_store`] reads them from a [`Store`] and also compares every stored perfect node
//! with the re-derived one. Open a RocksDB ledger with [`crate::store::RocksDbStore::open_for_audit`], which does
//! not refuse a damaged log, so that the report can name every damaged record rather than the first.
//!
//! # What is checked
//!
//! *Integrity*: every entry decodes ([`Entry::decode`]); each stored leaf hash equals the hash of its entry and
//! each stored interior node equals the node re-derived from the entries. A damaged record is reported once, at
//! the lowest level where the damage shows: a forged entry by its own index ([`Rule::LeafMismatch`]), a forged
//! node by the first leaf under it ([`Rule::NodeMismatch`]), not by every node above it.
//!
//! *Checkpoints*, in increasing size order: each parses, names the trusted origin, carries a valid signature by
//! the log's key, and its root is the re-derived root at its size (so all checkpoints are mutually consistent);
//! consecutive checkpoints are also linked by a consistency proof (from the store's nodes for a store), by the
//! previous-checkpoint hash, by strictly increasing sizes and by non-decreasing timestamps. At least
//! [`AuditKeys::quorum`] of the trusted witnesses must have co-signed each one, and any signature line that
//! names a trusted witness must verify.
//!
//! *Sealing*: [`AuditKeys`] is the auditor's trust policy, never the audited party's: a checkpoint is *sealed*
//! when it names the trusted origin, carries the log's signature, states the re-derived root and is co-signed by
//! [`AuditKeys::quorum`] distinct trusted witnesses. Entries beyond the last sealed checkpoint are the *unsealed
//! tail*; a ledger with no sealed checkpoint, or with an unsealed tail, never reads as PASS ([`Verdict`]), even
//! when no check failed, because nothing vouches for those entries but the party that shows them.
//!
//! *Memory*: [`verify_parts_since`] and [`verify_store_since`] also take the tree head the auditor verified on
//! an earlier run ([`TreeHead`]); the last sealed checkpoint must extend it (a consistency proof from the
//! remembered size, computed from the entries, verifies against both roots), so a rewritten history, a fork or a
//! rollback shown later fails under [`Rule::RememberedCheckpoint`].
//!
//! *Rules*, in log order:
//!
//! - [`Rule::Membership`]: a member registers one key; a `KeyRotated` names the current key as the old one and is
//!   signed by it (a rotation without that signature is a [`Rule::Signature`] failure and changes no key). A
//!   `KeyRevoked` names the member's current key; after it the member has no key until a `MemberRegistered` gives
//!   it a new one, and a revoked key is never registered or rotated to again.
//! - Revocation: nothing signed by a revoked key counts after its `KeyRevoked` ([`Rule::Signature`]).
//! - A `ManifestSigned` names a live study's own manifest ([`Rule::Study`]) and verifies under the key of a
//!   registered researcher ([`Rule::Signature`]; another role is a [`Rule::Membership`] failure).
//! - [`Rule::Signature`]: every consent, revocation and contribution verifies under the key registered for its
//!   PDC at that point of the log.
//! - [`Rule::Study`]: entries name studies that were created, once.
//! - [`Rule::ConsentBeforeContribution`]: a `ContributionAccepted` for `(study, pdc)` follows a valid
//!   `ConsentGranted` for the study's manifest, not revoked since, and names a round within the consent's
//!   `max_rounds` when it sets one.
//! - [`Rule::RoundOrder`]: `RoundOpened` round numbers increase per study (a round not yet aggregated may be
//!   opened again under its number: a retry); contributions, rejections and aggregations name the study's
//!   currently open round and come after its `RoundOpened` (contributions from its participants, once each,
//!   before the aggregation; the aggregation only of accepted contributors); utility, rewards and spends name a
//!   round that was opened; nothing names a study after its `StudyClosed`.
//! - [`Rule::PrivacyBudget`]: a `PrivacySpent` follows its PDC's `BudgetDeclared`; per PDC the cumulative ε and
//!   δ never decrease and never exceed the declared budget (see [`crate::entry`] for the figures' meaning); a
//!   contribution whose PDC signed a privacy claim is followed by a `PrivacySpent` for the same study, round and
//!   PDC stating exactly the signed cumulative ε and δ, so the coordinator can neither drop nor alter a spend.
//!   A `StatisticsReleased` is a spend too (its signed cumulative ε and δ are held to the same budget, and it
//!   charges the table the budget protects).
//! - Statistics: a `StatisticsReleased` verifies under its PDC's key ([`Rule::Signature`]); a feature summary
//!   names a live study the PDC consents to, comes before the study's first round and is released once per PDC;
//!   cohort counts answer their feasibility query once per PDC; a `StandardizationFitted` comes before the first
//!   round, once, and pools only PDCs that released a summary for the study ([`Rule::Study`],
//!   [`Rule::RoundOrder`], [`Rule::ConsentBeforeContribution`]).
//! - [`Rule::Rewards`]: each round's `RewardPaid` entries follow its `RewardsAllotted`, go to PDCs with an
//!   accepted contribution in that round, are not negative, and sum to the allotted budget within a relative
//!   `1e-9`; a carried-over budget has no `RewardPaid` at all.
//!
//! ```
//! use pdc_ledger::audit::{self, AuditKeys};
//! use pdc_ledger::checkpoint::Checkpoint;
//! use pdc_ledger::entry::Entry;
//! use pdc_ledger::merkle::MerkleTree;
//! use pdc_ledger::{Identity, merkle};
//!
//! let log = Identity::from_seed([1; 32]);
//! let keys = AuditKeys {
//!     origin: "pdc.example/ledger/sha3-256".into(),
//!     log_key_name: "pdc.example/log".into(),
//!     log_key: log.public_key(),
//!     witnesses: Vec::new(),
//!     quorum: 0,
//! };
//! let entries = vec![Entry::StudyCreated { study_id: "s".into(), manifest_hash: [7; 32] }.encode()];
//! let tree: MerkleTree = entries.iter().map(|e| merkle::leaf_hash(e)).collect();
//! let checkpoint =
//!     Checkpoint { origin: keys.origin.clone(), size: 1, root: tree.root(), previous: [0; 32], timestamp_ms: 1 };
//! let note = checkpoint.sign(&keys.log_key_name, &log)?.to_note();
//!
//! let report = audit::verify_parts(&entries, &[note], &keys);
//! assert!(report.passed(), "{report}");
//! assert!(report.to_string().starts_with("PASS\n"));
//! # Ok::<(), pdc_ledger::checkpoint::CheckpointError>(())
//! ```

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::checkpoint::{Checkpoint, CheckpointError, SignedCheckpoint};
use crate::entry::{Entry, Role};
use crate::merkle::{self, MerkleTree};
use crate::signing::StatisticKind;
use crate::store::Store;
use crate::{Hash, PublicKey};

/// Relative tolerance of the rewards rule: a round's payments must sum to its budget within this fraction.
pub const REWARD_TOLERANCE: f64 = 1e-9;

/// What the auditor trusts: the log's identity and key, and the witnesses that must co-sign.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuditKeys {
    /// The log's origin, the first line of each of its checkpoints.
    pub origin: String,
    /// The key name the log signs checkpoints under.
    pub log_key_name: String,
    /// The log's public key.
    pub log_key: PublicKey,
    /// The witnesses whose co-signatures count, as (key name, public key).
    pub witnesses: Vec<(String, PublicKey)>,
    /// How many of `witnesses` must have co-signed each checkpoint.
    pub quorum: usize,
}

/// A rule of the audit. Each has a stable [`Rule::code`], which is also its serde name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Rule {
    /// The store could not return an entry (missing or unreadable).
    EntryUnreadable,
    /// An entry's bytes are not a canonical [`Entry`].
    EntryMalformed,
    /// An entry does not hash to its stored leaf hash: the entry or its leaf was altered.
    LeafMismatch,
    /// A stored interior node differs from the node re-derived from the entries, or is missing.
    NodeMismatch,
    /// The store could not list its checkpoints.
    StoreUnreadable,
    /// A checkpoint is not valid UTF-8 or does not parse as a signed note.
    CheckpointMalformed,
    /// A checkpoint names another log.
    CheckpointOrigin,
    /// A checkpoint lacks a valid signature by the log's key.
    CheckpointSignature,
    /// A checkpoint's root is not the root of the log at its size, or its size is beyond the log.
    CheckpointRoot,
    /// The consistency proof between consecutive checkpoints does not verify.
    CheckpointConsistency,
    /// A checkpoint's `previous` hash is not the hash of the checkpoint before it.
    CheckpointChain,
    /// Checkpoint sizes do not strictly increase, timestamps decrease, or a checkpoint is stored under another
    /// size than the one it states.
    CheckpointOrder,
    /// A signature line naming a trusted witness does not verify.
    WitnessSignature,
    /// Fewer trusted witnesses co-signed a checkpoint than the quorum.
    WitnessQuorum,
    /// The log does not extend the tree head the auditor verified on an earlier run: its history was rewritten,
    /// a fork is shown, or it was rolled back behind what was verified.
    RememberedCheckpoint,
    /// A member re-registered with another key, rotated from a key that is not its current one, or registered a
    /// malformed key.
    Membership,
    /// A consent, revocation or contribution does not verify under its PDC's registered key, or its PDC is not
    /// registered.
    Signature,
    /// An entry names a study that was never created, or a study is created twice.
    Study,
    /// A contribution without a prior, unrevoked consent to the study's manifest, or a consent to another
    /// manifest.
    ConsentBeforeContribution,
    /// Rounds out of order, or an entry for a round that is not open, or anything after the study closed.
    RoundOrder,
    /// A privacy spend without a declared budget, decreasing, or beyond the budget; or a bad declaration.
    PrivacyBudget,
    /// Rewards that do not follow their round's allotment, or do not sum to it.
    Rewards,
}

impl Rule {
    /// Every rule, in the order of the enum.
    pub const ALL: [Rule; 22] = [
        Rule::EntryUnreadable,
        Rule::EntryMalformed,
        Rule::LeafMismatch,
        Rule::NodeMismatch,
        Rule::StoreUnreadable,
        Rule::CheckpointMalformed,
        Rule::CheckpointOrigin,
        Rule::CheckpointSignature,
        Rule::CheckpointRoot,
        Rule::CheckpointConsistency,
        Rule::CheckpointChain,
        Rule::CheckpointOrder,
        Rule::WitnessSignature,
        Rule::WitnessQuorum,
        Rule::RememberedCheckpoint,
        Rule::Membership,
        Rule::Signature,
        Rule::Study,
        Rule::ConsentBeforeContribution,
        Rule::RoundOrder,
        Rule::PrivacyBudget,
        Rule::Rewards,
    ];

    /// The rule's stable name, e.g. `"consent_before_contribution"`.
    pub fn code(self) -> &'static str {
        match self {
            Rule::EntryUnreadable => "entry_unreadable",
            Rule::EntryMalformed => "entry_malformed",
            Rule::LeafMismatch => "leaf_mismatch",
            Rule::NodeMismatch => "node_mismatch",
            Rule::StoreUnreadable => "store_unreadable",
            Rule::CheckpointMalformed => "checkpoint_malformed",
            Rule::CheckpointOrigin => "checkpoint_origin",
            Rule::CheckpointSignature => "checkpoint_signature",
            Rule::CheckpointRoot => "checkpoint_root",
            Rule::CheckpointConsistency => "checkpoint_consistency",
            Rule::CheckpointChain => "checkpoint_chain",
            Rule::CheckpointOrder => "checkpoint_order",
            Rule::WitnessSignature => "witness_signature",
            Rule::WitnessQuorum => "witness_quorum",
            Rule::RememberedCheckpoint => "remembered_checkpoint",
            Rule::Membership => "membership",
            Rule::Signature => "signature",
            Rule::Study => "study",
            Rule::ConsentBeforeContribution => "consent_before_contribution",
            Rule::RoundOrder => "round_order",
            Rule::PrivacyBudget => "privacy_budget",
            Rule::Rewards => "rewards",
        }
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

/// One failed check.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Failure {
    /// The rule that failed.
    pub rule: Rule,
    /// The entry indices involved, ascending (empty for a failure of checkpoints only).
    pub entries: Vec<u64>,
    /// The tree sizes of the checkpoints involved, ascending (empty for a failure of entries only, and for a
    /// checkpoint so damaged that its size is unknown; the message then gives its position).
    pub checkpoints: Vec<u64>,
    /// What is wrong, in a sentence.
    pub message: String,
}

/// A tree head: a log size and the Merkle root of its first `size` entries. What the audit reports as the last
/// sealed checkpoint, and what an auditor remembers between runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TreeHead {
    /// The number of entries covered.
    pub size: u64,
    /// Their Merkle root (hex in JSON).
    #[serde(with = "hex_hash")]
    pub root: Hash,
}

/// What an audit concludes, from its failures and how far the auditor's witnesses sealed the log.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// No check failed and a sealed checkpoint covers every entry.
    Pass,
    /// No check failed, but no checkpoint is sealed under the auditor's policy: nothing vouches for the entries.
    NoSealedCheckpoint,
    /// No check failed, but entries follow the last sealed checkpoint: they are the unsealed tail.
    UnsealedTail,
    /// At least one check failed.
    Fail,
}

/// The outcome of an audit.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AuditReport {
    /// The number of entries audited.
    pub size: u64,
    /// The re-derived Merkle root over those entries, hex.
    pub root: String,
    /// The number of checkpoints checked.
    pub checkpoints: usize,
    /// The largest checkpoint sealed under the auditor's policy (log signature, re-derived root, witness quorum);
    /// `None` when none is.
    #[serde(default)]
    pub sealed: Option<TreeHead>,
    /// Every failure found; empty when the ledger passes.
    pub failures: Vec<Failure>,
}

impl AuditReport {
    /// Whether no check failed. It says nothing of sealing: a ledger without a sealed checkpoint fails no check.
    /// What an auditor concludes is [`AuditReport::verdict`].
    pub fn passed(&self) -> bool {
        self.failures.is_empty()
    }

    /// The verdict: [`Verdict::Pass`] only when no check failed and a sealed checkpoint covers every entry.
    pub fn verdict(&self) -> Verdict {
        match self.sealed {
            _ if !self.failures.is_empty() => Verdict::Fail,
            None => Verdict::NoSealedCheckpoint,
            Some(sealed) if sealed.size < self.size => Verdict::UnsealedTail,
            Some(_) => Verdict::Pass,
        }
    }

    /// The indices of the entries no sealed checkpoint covers (all of them when none is sealed); empty when the
    /// last sealed checkpoint covers the whole log.
    pub fn unsealed_tail(&self) -> std::ops::Range<u64> {
        self.sealed.map_or(0, |sealed| sealed.size.min(self.size))..self.size
    }

    /// The failures of one rule.
    pub fn failures_of(&self, rule: Rule) -> impl Iterator<Item = &Failure> {
        self.failures.iter().filter(move |failure| failure.rule == rule)
    }
}

impl fmt::Display for AuditReport {
    /// A verdict line (`PASS`, `FAIL (n failures)`, `NO SEALED CHECKPOINT` or `UNSEALED TAIL (n entries)`), the
    /// size and root, the number of checkpoints checked, a line on the unsealed entries when there are any (or no
    /// sealed checkpoint), then one line per failure: its rule code, the entries and checkpoints it names, and its
    /// message.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let tail = self.unsealed_tail();
        match self.verdict() {
            Verdict::Pass => writeln!(f, "PASS")?,
            Verdict::Fail => writeln!(f, "FAIL ({} failures)", self.failures.len())?,
            Verdict::NoSealedCheckpoint => writeln!(f, "NO SEALED CHECKPOINT")?,
            Verdict::UnsealedTail => writeln!(f, "UNSEALED TAIL ({} entries)", tail.end - tail.start)?,
        }
        writeln!(f, "size: {} entries, root {}", self.size, self.root)?;
        writeln!(f, "checkpoints checked: {}", self.checkpoints)?;
        match self.sealed {
            None => writeln!(
                f,
                "unsealed: no checkpoint is sealed under the auditor's policy (log signature, root, witness quorum){}",
                if tail.is_empty() { String::new() } else { format!("; entries {}", range(&tail)) }
            )?,
            Some(sealed) if !tail.is_empty() => writeln!(
                f,
                "unsealed tail: entries {} beyond the last sealed checkpoint (size {})",
                range(&tail),
                sealed.size
            )?,
            Some(_) => {}
        }
        for failure in &self.failures {
            write!(f, "  {}", failure.rule)?;
            if !failure.entries.is_empty() {
                write!(f, " entries {}", join(&failure.entries))?;
            }
            if !failure.checkpoints.is_empty() {
                write!(f, " checkpoints {}", join(&failure.checkpoints))?;
            }
            writeln!(f, ": {}", failure.message)?;
        }
        Ok(())
    }
}

/// `first..=last (n entries)`, for a non-empty range.
fn range(tail: &std::ops::Range<u64>) -> String {
    format!("{}..={} ({} entries)", tail.start, tail.end - 1, tail.end - tail.start)
}

/// Serialises a [`Hash`] as lowercase hex.
mod hex_hash {
    use serde::{Deserialize, Deserializer, Serializer};

    use crate::Hash;

    pub fn serialize<S: Serializer>(hash: &Hash, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&hex::encode(hash))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Hash, D::Error> {
        let text = String::deserialize(deserializer)?;
        let bytes = hex::decode(&text).map_err(serde::de::Error::custom)?;
        Hash::try_from(bytes.as_slice()).map_err(|_| serde::de::Error::custom("a hash is 32 bytes"))
    }
}

/// Audits a ledger given as parts: the entries' bytes in log order and the checkpoint notes in the order they
/// were made (an offline copy; see [`crate::export`]).
pub fn verify_parts(entries: &[Vec<u8>], checkpoints: &[String], keys: &AuditKeys) -> AuditReport {
    verify_parts_since(entries, checkpoints, keys, None)
}

/// [`verify_parts`], and the last sealed checkpoint must extend `remembered`, the tree head the auditor verified
/// on an earlier run ([`Rule::RememberedCheckpoint`]); the consistency proof is computed from the entries.
pub fn verify_parts_since(
    entries: &[Vec<u8>],
    checkpoints: &[String],
    keys: &AuditKeys,
    remembered: Option<&TreeHead>,
) -> AuditReport {
    let mut failures = Vec::new();
    let mut rules = Rules::default();
    let mut tree = MerkleTree::new();
    for (index, bytes) in (0u64..).zip(entries) {
        tree.append(merkle::leaf_hash(bytes));
        check_entry(index, bytes, &mut rules, &mut failures);
    }
    let notes = checkpoints.iter().enumerate().map(|(position, note)| NoteInput {
        position,
        stored_size: None,
        note: Ok(note.clone()),
    });
    let consistency =
        |old_size, new_size| merkle::consistency_proof_from(&tree, old_size, new_size).map_err(|e| e.to_string());
    let (checked, sealed) = check_checkpoints(notes, &tree, keys, &consistency, &mut failures);
    if let Some(remembered) = remembered {
        check_remembered(remembered, sealed, &tree, &consistency, &mut failures);
    }
    failures.extend(rules.finish());
    report(&tree, checked, sealed, failures)
}

/// Audits a ledger in a store: everything [`verify_parts`] checks, and every stored perfect node against the
/// node re-derived from the entries.
///
/// Reads every entry and node once: `O(n)` reads and hashes and about `64·n` bytes of memory for `n` entries.
/// Store errors do not stop the audit; they become failures ([`Rule::EntryUnreadable`],
/// [`Rule::NodeMismatch`], [`Rule::StoreUnreadable`], [`Rule::CheckpointMalformed`]).
pub fn verify_store(store: &dyn Store, keys: &AuditKeys) -> AuditReport {
    verify_store_since(store, keys, None)
}

/// [`verify_store`], and the last sealed checkpoint must extend `remembered`, as in [`verify_parts_since`]; the
/// consistency proof comes from the re-derived tree, never from the store's own nodes.
pub fn verify_store_since(store: &dyn Store, keys: &AuditKeys, remembered: Option<&TreeHead>) -> AuditReport {
    let size = store.size();
    let mut failures = Vec::new();
    let mut rules = Rules::default();
    let mut tree = MerkleTree::new();
    for index in 0..size {
        match store.entry(index) {
            Ok(bytes) => {
                tree.append(merkle::leaf_hash(&bytes));
                check_entry(index, &bytes, &mut rules, &mut failures);
            }
            Err(error) => {
                failures.push(failure(
                    Rule::EntryUnreadable,
                    vec![index],
                    vec![],
                    format!("entry {index} cannot be read: {error}"),
                ));
                // Standing in the stored leaf keeps the damage to this index: the nodes above still compare.
                tree.append(store.node(0, index).unwrap_or([0; 32]));
            }
        }
    }
    compare_nodes(store, &tree, &mut failures);

    let (checked, sealed) = match store.checkpoints() {
        Ok(stored) => {
            let notes = stored.into_iter().enumerate().map(|(position, (size, bytes))| NoteInput {
                position,
                stored_size: Some(size),
                note: String::from_utf8(bytes).map_err(|_| "it is not valid UTF-8".to_owned()),
            });
            let consistency =
                |old_size, new_size| store.consistency_proof(old_size, new_size).map_err(|e| e.to_string());
            check_checkpoints(notes, &tree, keys, &consistency, &mut failures)
        }
        Err(error) => {
            failures.push(failure(
                Rule::StoreUnreadable,
                vec![],
                vec![],
                format!("the store's checkpoints cannot be read: {error}"),
            ));
            (0, None)
        }
    };
    if let Some(remembered) = remembered {
        let consistency =
            |old_size, new_size| merkle::consistency_proof_from(&tree, old_size, new_size).map_err(|e| e.to_string());
        check_remembered(remembered, sealed, &tree, &consistency, &mut failures);
    }
    failures.extend(rules.finish());
    report(&tree, checked, sealed, failures)
}

/// Parses `note` and checks that it is sealed under `keys` as far as the note alone can show: it names the
/// trusted origin, carries the log's signature and is co-signed by [`AuditKeys::quorum`] distinct trusted
/// witnesses, every trusted witness's line verifying. Its root is left to the caller, who holds the entries or a
/// proof. What `pdc audit prove` and `consistency` check a checkpoint with before proving anything against it.
pub fn sealed_checkpoint(note: &str, keys: &AuditKeys) -> Result<SignedCheckpoint, Failure> {
    let signed = SignedCheckpoint::parse(note).map_err(|error| {
        failure(Rule::CheckpointMalformed, vec![], vec![], format!("the checkpoint does not parse: {error}"))
    })?;
    let size = signed.checkpoint.size;
    let fail = |rule, message| failure(rule, vec![], vec![size], message);
    if signed.checkpoint.origin != keys.origin {
        let message = format!(
            "checkpoint {size} names origin {:?}, not the audited log {:?}",
            signed.checkpoint.origin, keys.origin
        );
        return Err(fail(Rule::CheckpointOrigin, message));
    }
    signed.verify(&keys.log_key_name, &keys.log_key).map_err(|error| {
        fail(Rule::CheckpointSignature, format!("checkpoint {size} lacks a valid log signature: {error}"))
    })?;
    let (cosigned, bad) = cosigners(&signed, keys);
    if let Some((witness, error)) = bad.into_iter().next() {
        let message =
            format!("checkpoint {size} carries a signature line by witness {witness:?} that does not verify: {error}");
        return Err(fail(Rule::WitnessSignature, message));
    }
    if cosigned < keys.quorum {
        return Err(fail(Rule::WitnessQuorum, quorum_message(size, cosigned, keys)));
    }
    Ok(signed)
}

/// Checks a store's latest checkpoint against the store in `O(log n)` reads: it parses, names the trusted origin,
/// carries a valid log signature, states the store's root at its size, and the log extends it (a consistency
/// proof from its size to the current size verifies). What a coordinator checks when it opens its ledger, before
/// appending; witness co-signatures are left to the full audit. Empty when all holds or no checkpoint is stored.
pub fn verify_latest_checkpoint(store: &dyn Store, keys: &AuditKeys) -> Vec<Failure> {
    let latest = match store.latest_checkpoint() {
        Ok(None) => return Vec::new(),
        Ok(Some(latest)) => latest,
        Err(error) => {
            let message = format!("the latest checkpoint cannot be read: {error}");
            return vec![failure(Rule::StoreUnreadable, vec![], vec![], message)];
        }
    };
    let (stored_size, bytes) = latest;
    let fail = |rule, message: String| vec![failure(rule, vec![], vec![stored_size], message)];
    let Some(signed) = std::str::from_utf8(&bytes).ok().and_then(|note| SignedCheckpoint::parse(note).ok()) else {
        return fail(Rule::CheckpointMalformed, format!("the latest checkpoint, size {stored_size}, does not parse"));
    };
    let checkpoint = &signed.checkpoint;
    let mut failures = Vec::new();
    if checkpoint.size != stored_size {
        failures.extend(fail(
            Rule::CheckpointOrder,
            format!("the checkpoint stored under size {stored_size} states size {}", checkpoint.size),
        ));
    }
    if checkpoint.origin != keys.origin {
        failures.extend(fail(
            Rule::CheckpointOrigin,
            format!("checkpoint {stored_size} names origin {:?}, not {:?}", checkpoint.origin, keys.origin),
        ));
    }
    if let Err(error) = signed.verify(&keys.log_key_name, &keys.log_key) {
        failures.extend(fail(Rule::CheckpointSignature, format!("checkpoint {stored_size}: {error}")));
    }
    let size = store.size();
    let checked = store.root_at(checkpoint.size).and_then(|root| {
        let proof = store.consistency_proof(checkpoint.size, size)?;
        Ok((root, proof, store.root()?))
    });
    match checked {
        Ok((root, _, _)) if root != checkpoint.root => failures.extend(fail(
            Rule::CheckpointRoot,
            format!("checkpoint {stored_size} states a root the store does not have at that size"),
        )),
        Ok((_, proof, current)) => {
            if let Err(error) = merkle::verify_consistency(checkpoint.size, size, &checkpoint.root, &current, &proof) {
                failures.extend(fail(
                    Rule::CheckpointConsistency,
                    format!("the log of {size} entries does not extend checkpoint {stored_size}: {error}"),
                ));
            }
        }
        Err(error) => failures.extend(fail(
            Rule::CheckpointRoot,
            format!("checkpoint {stored_size} cannot be checked against the store of {size} entries: {error}"),
        )),
    }
    failures
}

fn report(tree: &MerkleTree, checkpoints: usize, sealed: Option<TreeHead>, failures: Vec<Failure>) -> AuditReport {
    AuditReport { size: tree.len(), root: hex::encode(tree.root()), checkpoints, sealed, failures }
}

/// How many distinct trusted witnesses validly co-signed `signed`, and the trusted witnesses whose signature line
/// is there but does not verify. A key listed twice, under one name or two, counts once: a quorum counts parties.
fn cosigners(signed: &SignedCheckpoint, keys: &AuditKeys) -> (usize, Vec<(String, CheckpointError)>) {
    let mut counted: Vec<&PublicKey> = Vec::new();
    let mut bad = Vec::new();
    for (witness, key) in &keys.witnesses {
        if !signed.signatures.iter().any(|line| &line.name == witness) {
            continue;
        }
        match signed.verify(witness, key) {
            Ok(()) if !counted.contains(&key) => counted.push(key),
            Ok(()) => {}
            Err(error) => bad.push((witness.clone(), error)),
        }
    }
    (counted.len(), bad)
}

fn quorum_message(size: u64, cosigned: usize, keys: &AuditKeys) -> String {
    format!(
        "checkpoint {size} is co-signed by {cosigned} trusted witnesses, below the auditor's quorum of {} (of {} \
         trusted witnesses)",
        keys.quorum,
        keys.witnesses.len()
    )
}

/// Checks that `sealed`, the last sealed checkpoint, extends `remembered`, the tree head verified on an earlier
/// run: its size is not smaller, and a consistency proof from the remembered size verifies against both roots.
fn check_remembered(
    remembered: &TreeHead,
    sealed: Option<TreeHead>,
    tree: &MerkleTree,
    consistency: &dyn Fn(u64, u64) -> Result<Vec<Hash>, String>,
    failures: &mut Vec<Failure>,
) {
    let (size, root) = (remembered.size, hex::encode(remembered.root));
    let verified = format!("checkpoint {size} (root {root}) that this auditor verified before");
    let mut fail = |checkpoints: Vec<u64>, message: String| {
        failures.push(failure(Rule::RememberedCheckpoint, vec![], checkpoints, message));
    };
    // Entries that no longer hash to the remembered root are the plainest evidence, sealed or not.
    let rewritten = tree.root_at(size).is_ok_and(|root| root != remembered.root);
    match sealed {
        Some(sealed) if sealed.size >= size => {
            let proof = consistency(size, sealed.size);
            let checked = proof.and_then(|proof| {
                merkle::verify_consistency(size, sealed.size, &remembered.root, &sealed.root, &proof)
                    .map_err(|e| e.to_string())
            });
            if let Err(error) = checked {
                fail(
                    vec![size, sealed.size],
                    format!(
                        "history rewritten: the last sealed checkpoint {} does not extend {verified}: {error}",
                        sealed.size
                    ),
                );
            }
        }
        _ if rewritten => {
            fail(vec![size], format!("history rewritten: the entries no longer have the root of {verified}"))
        }
        Some(sealed) => fail(
            vec![size, sealed.size],
            format!(
                "rolled back: the last sealed checkpoint is {}, behind {verified}; the log shown is older, or a fork",
                sealed.size
            ),
        ),
        None => fail(vec![size], format!("rolled back: no checkpoint is sealed, yet this auditor verified {verified}")),
    }
}

fn failure(rule: Rule, mut entries: Vec<u64>, mut checkpoints: Vec<u64>, message: String) -> Failure {
    entries.sort_unstable();
    entries.dedup();
    checkpoints.sort_unstable();
    checkpoints.dedup();
    Failure { rule, entries, checkpoints, message }
}

fn join(values: &[u64]) -> String {
    values.iter().map(u64::to_string).collect::<Vec<_>>().join(", ")
}

/// Decodes entry `index` and feeds it to the rules, or reports why it does not decode.
fn check_entry(index: u64, bytes: &[u8], rules: &mut Rules, failures: &mut Vec<Failure>) {
    match Entry::decode(bytes) {
        Ok(entry) => rules.check(index, &entry),
        Err(error) => failures.push(failure(
            Rule::EntryMalformed,
            vec![index],
            vec![],
            format!("entry {index} does not decode: {error}"),
        )),
    }
}

/// Compares every stored perfect node with the re-derived one, reporting each damaged record at the lowest level
/// where its damage shows: a node whose child already differs is spoiled by that child, not damaged itself.
fn compare_nodes(store: &dyn Store, tree: &MerkleTree, failures: &mut Vec<Failure>) {
    let size = tree.len();
    let mut below: HashSet<u64> = HashSet::new();
    for level in 0..u64::BITS {
        let count = size >> level;
        if count == 0 {
            break;
        }
        let mut here = HashSet::new();
        for index in 0..count {
            let derived = match merkle::NodeSource::node(tree, level, index) {
                Ok(hash) => hash,
                // The tree holds every perfect node of its size; a miss would be a bug, and is reported.
                Err(error) => {
                    failures.push(failure(
                        Rule::NodeMismatch,
                        vec![index << level],
                        vec![],
                        format!("node ({level}, {index}) cannot be re-derived: {error}"),
                    ));
                    continue;
                }
            };
            let stored = store.node(level, index);
            if stored.as_ref().is_ok_and(|stored| *stored == derived) {
                continue;
            }
            here.insert(index);
            if level > 0 && (below.contains(&(2 * index)) || below.contains(&(2 * index + 1))) {
                continue;
            }
            let first_leaf = index << level;
            let what = match &stored {
                Ok(_) => "does not match".to_owned(),
                Err(error) => format!("cannot be read ({error}), so cannot match"),
            };
            failures.push(if level == 0 {
                failure(
                    Rule::LeafMismatch,
                    vec![index],
                    vec![],
                    format!("the stored leaf hash of entry {index} {what} the entry's hash: the entry or its leaf was altered"),
                )
            } else {
                let last_leaf = first_leaf + (1u64 << level) - 1;
                failure(
                    Rule::NodeMismatch,
                    vec![first_leaf],
                    vec![],
                    format!(
                        "stored node ({level}, {index}) over entries {first_leaf}..={last_leaf} {what} the node \
                         re-derived from them"
                    ),
                )
            });
        }
        below = here;
    }
}

/// One checkpoint to check: its place in the sequence, the size a store keeps it under, and its text (or why
/// there is none).
struct NoteInput {
    position: usize,
    stored_size: Option<u64>,
    note: Result<String, String>,
}

/// Checks the checkpoints in order against the re-derived tree; returns how many were checked and the largest
/// sealed one (see [`AuditReport::sealed`]).
fn check_checkpoints(
    notes: impl Iterator<Item = NoteInput>,
    tree: &MerkleTree,
    keys: &AuditKeys,
    consistency: &dyn Fn(u64, u64) -> Result<Vec<Hash>, String>,
    failures: &mut Vec<Failure>,
) -> (usize, Option<TreeHead>) {
    // The previous checkpoint, if one was checked: `Some(None)` when it did not parse, so the chain is unknown.
    let mut previous: Option<Option<Checkpoint>> = None;
    let mut sealed: Option<TreeHead> = None;
    let mut checked = 0;
    for input in notes {
        checked += 1;
        let label = |size: Option<u64>| match size {
            Some(size) => format!("checkpoint {size}"),
            None => format!("checkpoint #{} (0-based)", input.position),
        };
        let parsed = input
            .note
            .clone()
            .and_then(|note| SignedCheckpoint::parse(&note).map_err(|error| format!("it does not parse: {error}")));
        let signed = match parsed {
            Ok(signed) => signed,
            Err(reason) => {
                failures.push(failure(
                    Rule::CheckpointMalformed,
                    vec![],
                    input.stored_size.into_iter().collect(),
                    format!("{} is malformed: {reason}", label(input.stored_size)),
                ));
                previous = Some(None);
                continue;
            }
        };
        let checkpoint = &signed.checkpoint;
        let size = checkpoint.size;
        let name = label(Some(size));
        let mut fail = |rule, entries: Vec<u64>, extra: Option<u64>, message: String| {
            let mut checkpoints = vec![size];
            checkpoints.extend(extra);
            failures.push(failure(rule, entries, checkpoints, message));
        };
        if let Some(stored) = input.stored_size
            && stored != size
        {
            fail(
                Rule::CheckpointOrder,
                vec![],
                Some(stored),
                format!("the checkpoint stored under size {stored} states size {size}"),
            );
        }
        let origin_ok = checkpoint.origin == keys.origin;
        if !origin_ok {
            fail(
                Rule::CheckpointOrigin,
                vec![],
                None,
                format!("{name} names origin {:?}, not the audited log {:?}", checkpoint.origin, keys.origin),
            );
        }
        let signed_ok = signed.verify(&keys.log_key_name, &keys.log_key);
        if let Err(error) = &signed_ok {
            fail(Rule::CheckpointSignature, vec![], None, format!("{name} lacks a valid log signature: {error}"));
        }
        let (cosigned, bad) = cosigners(&signed, keys);
        for (witness, error) in bad {
            fail(
                Rule::WitnessSignature,
                vec![],
                None,
                format!("{name} carries a signature line by witness {witness:?} that does not verify: {error}"),
            );
        }
        if cosigned < keys.quorum {
            fail(Rule::WitnessQuorum, vec![], None, quorum_message(size, cosigned, keys));
        }
        let root_ok = match tree.root_at(size) {
            Ok(root) if root == checkpoint.root => true,
            Ok(root) => {
                fail(
                    Rule::CheckpointRoot,
                    vec![],
                    None,
                    format!(
                        "{name} states root {}, but the entries give {} at that size",
                        hex::encode(checkpoint.root),
                        hex::encode(root)
                    ),
                );
                false
            }
            Err(_) => {
                fail(
                    Rule::CheckpointRoot,
                    vec![],
                    None,
                    format!("{name} is beyond the log, which has {} entries", tree.len()),
                );
                false
            }
        };
        match &previous {
            None if checkpoint.previous != [0; 32] => fail(
                Rule::CheckpointChain,
                vec![],
                None,
                format!("{name} is the first checkpoint but its previous hash is not zero"),
            ),
            Some(Some(before)) => {
                if checkpoint.previous != before.note_hash() {
                    fail(
                        Rule::CheckpointChain,
                        vec![],
                        Some(before.size),
                        format!("{name}'s previous hash is not the hash of checkpoint {}", before.size),
                    );
                }
                if size <= before.size {
                    fail(
                        Rule::CheckpointOrder,
                        vec![],
                        Some(before.size),
                        format!("{name} follows checkpoint {}: sizes must strictly increase", before.size),
                    );
                }
                if checkpoint.timestamp_ms < before.timestamp_ms {
                    fail(
                        Rule::CheckpointOrder,
                        vec![],
                        Some(before.size),
                        format!(
                            "{name}'s timestamp {} is before checkpoint {}'s {}",
                            checkpoint.timestamp_ms, before.size, before.timestamp_ms
                        ),
                    );
                }
                // Only between checkpoints whose roots are right; a wrong root is reported once, above.
                let before_ok = tree.root_at(before.size).is_ok_and(|root| root == before.root);
                if root_ok && before_ok && before.size <= size {
                    let verified = consistency(before.size, size).and_then(|proof| {
                        merkle::verify_consistency(before.size, size, &before.root, &checkpoint.root, &proof)
                            .map_err(|e| e.to_string())
                    });
                    if let Err(error) = verified {
                        fail(
                            Rule::CheckpointConsistency,
                            vec![],
                            Some(before.size),
                            format!("no valid consistency proof from checkpoint {} to {name}: {error}", before.size),
                        );
                    }
                }
            }
            _ => {}
        }
        let stored_ok = input.stored_size.is_none_or(|stored| stored == size);
        if origin_ok
            && signed_ok.is_ok()
            && cosigned >= keys.quorum
            && root_ok
            && stored_ok
            && sealed.is_none_or(|sealed| sealed.size < size)
        {
            sealed = Some(TreeHead { size, root: checkpoint.root });
        }
        previous = Some(Some(checkpoint.clone()));
    }
    (checked, sealed)
}

/// A registered member and its current key.
struct Member {
    /// The key's bytes as registered or rotated to.
    key_bytes: [u8; 32],
    /// The parsed key; `None` when the bytes are not a valid Ed25519 key.
    key: Option<PublicKey>,
    /// The entry that registered or last rotated the key.
    index: u64,
    /// The member's role, as registered.
    role: Role,
    /// The entry that revoked the key, if it was revoked (then the member has no key).
    revoked: Option<u64>,
}

struct Study {
    manifest_hash: Hash,
    created: u64,
    closed: Option<u64>,
    rounds: BTreeMap<u32, Round>,
    current: Option<u32>,
    /// Feature summaries released for the study's standardisation, by PDC, with their entry index.
    summaries: BTreeMap<String, u64>,
    /// The entry of its `StandardizationFitted`.
    standardized: Option<u64>,
}

struct Round {
    opened: u64,
    participants: BTreeSet<String>,
    /// Accepted contributions, by PDC, with their entry index.
    contributions: BTreeMap<String, u64>,
    aggregated: Option<u64>,
}

struct Budget {
    index: u64,
    dataset: String,
    epsilon: f64,
    delta: f64,
}

struct Spent {
    index: u64,
    epsilon: f64,
    delta: f64,
}

struct Allotment {
    index: u64,
    budget: f64,
    carried_over: bool,
    paid: Vec<(u64, f64)>,
}

/// The rules' state as the log is read in order, and the failures found so far.
#[derive(Default)]
struct Rules {
    failures: Vec<Failure>,
    members: HashMap<String, Member>,
    studies: HashMap<String, Study>,
    /// `(study, pdc)` → the entry of the consent in force.
    consents: HashMap<(String, String), u64>,
    /// `(study, pdc)` → the last round the consent in force covers, when it is limited.
    consent_rounds: HashMap<(String, String), u32>,
    budgets: HashMap<String, Budget>,
    spent: HashMap<String, Spent>,
    /// `(study, round, pdc)` → the contribution entry whose PDC signed a privacy claim, and the claimed `(ε, δ)`;
    /// removed when the matching `PrivacySpent` is read.
    claims: BTreeMap<(String, u32, String), (u64, f64, f64)>,
    allotments: BTreeMap<(String, u32), Allotment>,
    /// `(scope, pdc)` → the entry of its cohort counts: a PDC answers each feasibility query once.
    cohort_answers: HashMap<(String, String), u64>,
    /// Every revoked key, with the entry that revoked it.
    revoked_keys: HashMap<[u8; 32], u64>,
}

/// Records a failure of `rule` naming `entries`.
fn fail(failures: &mut Vec<Failure>, rule: Rule, entries: Vec<u64>, message: String) {
    failures.push(failure(rule, entries, vec![], message));
}

impl Rules {
    fn check(&mut self, index: u64, entry: &Entry) {
        let failures = &mut self.failures;
        let studies = &mut self.studies;
        let kind = entry.kind();
        match entry {
            Entry::MemberRegistered { public_key, .. } | Entry::KeyRotated { new_key: public_key, .. }
                if self.revoked_keys.contains_key(public_key) =>
            {
                let revoked = self.revoked_keys[public_key];
                fail(
                    failures,
                    Rule::Membership,
                    vec![revoked, index],
                    format!("entry {index} ({kind}) brings back a key revoked at entry {revoked}"),
                );
            }
            Entry::MemberRegistered { pdc_id, role, public_key } => match self.members.get(pdc_id) {
                // Repeating a registration changes nothing.
                Some(member) if member.key_bytes == *public_key && member.revoked.is_none() => {}
                // A member whose key was revoked may come back with a new key (a rotation by the consortium).
                Some(member) if member.revoked.is_some() => {
                    let key = parse_key(failures, index, pdc_id, public_key);
                    let member = Member { key_bytes: *public_key, key, index, role: *role, revoked: None };
                    self.members.insert(pdc_id.clone(), member);
                }
                Some(member) => fail(
                    failures,
                    Rule::Membership,
                    vec![member.index, index],
                    format!(
                        "entry {index} registers {pdc_id:?} again with another key than entry {}'s; keys change only \
                         by KeyRotated",
                        member.index
                    ),
                ),
                None => {
                    let key = parse_key(failures, index, pdc_id, public_key);
                    let member = Member { key_bytes: *public_key, key, index, role: *role, revoked: None };
                    self.members.insert(pdc_id.clone(), member);
                }
            },
            Entry::KeyRevoked { pdc_id, key, .. } => match self.members.get_mut(pdc_id) {
                None => fail(
                    failures,
                    Rule::Membership,
                    vec![index],
                    format!("entry {index} revokes a key of {pdc_id:?}, which is not registered"),
                ),
                Some(member) if member.revoked.is_some() || member.key_bytes != *key => fail(
                    failures,
                    Rule::Membership,
                    vec![member.index, index],
                    format!(
                        "entry {index} revokes a key of {pdc_id:?} that is not its current one (set at entry {})",
                        member.index
                    ),
                ),
                Some(member) => {
                    member.revoked = Some(index);
                    member.key = None;
                    self.revoked_keys.insert(*key, index);
                }
            },
            Entry::ConsortiumRecorded { .. } => {}
            Entry::ManifestSigned { study_id, researcher_id, manifest_hash, .. } => {
                if check_signature(&self.members, failures, index, entry, researcher_id)
                    && let Some(member) = self.members.get(researcher_id)
                    && member.role != Role::Researcher
                {
                    fail(
                        failures,
                        Rule::Membership,
                        vec![member.index, index],
                        format!(
                            "entry {index} has {researcher_id:?} sign study {study_id:?}'s manifest, but it is \
                             registered as a {} (entry {}), not a researcher",
                            member.role.name(),
                            member.index
                        ),
                    );
                }
                let Some(study) = live_study(studies, failures, index, study_id, kind) else { return };
                if study.manifest_hash != *manifest_hash {
                    fail(
                        failures,
                        Rule::Study,
                        vec![study.created, index],
                        format!(
                            "entry {index} signs manifest {} for study {study_id:?}, whose manifest is {}",
                            hex::encode(manifest_hash),
                            hex::encode(study.manifest_hash)
                        ),
                    );
                }
            }
            Entry::KeyRotated { pdc_id, old_key, new_key, .. } => match self.members.get_mut(pdc_id) {
                None => fail(
                    failures,
                    Rule::Membership,
                    vec![index],
                    format!("entry {index} rotates the key of {pdc_id:?}, which is not registered"),
                ),
                Some(member) if member.key_bytes != *old_key || member.revoked.is_some() => fail(
                    failures,
                    Rule::Membership,
                    vec![member.index, index],
                    format!(
                        "entry {index} rotates {pdc_id:?} from a key that is not its current one (set at entry {})",
                        member.index
                    ),
                ),
                Some(member) => {
                    // The old key must have signed its replacement.
                    let signed = match &member.key {
                        Some(key) => entry.verify_signature(key).map_err(|e| e.to_string()),
                        None => Err("its current key is malformed".to_owned()),
                    };
                    if let Err(error) = signed {
                        fail(
                            failures,
                            Rule::Signature,
                            vec![index],
                            format!("entry {index} rotates {pdc_id:?}'s key without the old key's signature: {error}"),
                        );
                        return;
                    }
                    member.key = parse_key(failures, index, pdc_id, new_key);
                    member.key_bytes = *new_key;
                    member.index = index;
                }
            },
            Entry::StudyCreated { study_id, manifest_hash } => match studies.get(study_id) {
                Some(study) => fail(
                    failures,
                    Rule::Study,
                    vec![study.created, index],
                    format!(
                        "entry {index} creates study {study_id:?} again (first created at entry {})",
                        study.created
                    ),
                ),
                None => {
                    let study = Study {
                        manifest_hash: *manifest_hash,
                        created: index,
                        closed: None,
                        rounds: BTreeMap::new(),
                        current: None,
                        summaries: BTreeMap::new(),
                        standardized: None,
                    };
                    studies.insert(study_id.clone(), study);
                }
            },
            Entry::ConsentGranted { study_id, pdc_id, manifest_hash, .. }
            | Entry::ConsentRevoked { study_id, pdc_id, manifest_hash, .. } => {
                let signed = check_signature(&self.members, failures, index, entry, pdc_id);
                let Some(study) = live_study(studies, failures, index, study_id, kind) else { return };
                let right_manifest = study.manifest_hash == *manifest_hash;
                if !right_manifest {
                    fail(
                        failures,
                        Rule::ConsentBeforeContribution,
                        vec![study.created, index],
                        format!(
                            "entry {index} ({kind}) is for manifest {}, not study {study_id:?}'s manifest {}",
                            hex::encode(manifest_hash),
                            hex::encode(study.manifest_hash)
                        ),
                    );
                }
                let key = (study_id.clone(), pdc_id.clone());
                match entry {
                    Entry::ConsentGranted { conditions, .. } if signed && right_manifest => {
                        match conditions.and_then(|conditions| conditions.max_rounds) {
                            Some(rounds) => self.consent_rounds.insert(key.clone(), rounds),
                            None => self.consent_rounds.remove(&key),
                        };
                        self.consents.insert(key, index);
                    }
                    // A revocation counts whenever the PDC signed it: withdrawing is always allowed.
                    Entry::ConsentRevoked { .. } if signed => {
                        self.consent_rounds.remove(&key);
                        self.consents.remove(&key);
                    }
                    _ => {}
                }
            }
            Entry::RoundOpened { study_id, round, participants, .. } => {
                let Some(study) = live_study(studies, failures, index, study_id, kind) else { return };
                // A round abandoned before aggregation (too few updates by its deadline) is opened again under the
                // same number; its earlier opening's contributions do not carry over.
                let retry = study.current == Some(*round)
                    && study.rounds.get(round).is_some_and(|state| state.aggregated.is_none());
                if let Some((last, opened)) = study.rounds.last_key_value().map(|(r, state)| (*r, state.opened))
                    && *round <= last
                    && !retry
                {
                    fail(
                        failures,
                        Rule::RoundOrder,
                        vec![opened, index],
                        format!(
                            "entry {index} opens round {round} of study {study_id:?} after round {last} (entry \
                             {opened}): round numbers must increase"
                        ),
                    );
                    return;
                }
                let state = Round {
                    opened: index,
                    participants: participants.iter().cloned().collect(),
                    contributions: BTreeMap::new(),
                    aggregated: None,
                };
                study.rounds.insert(*round, state);
                study.current = Some(*round);
            }
            Entry::ContributionAccepted { contribution, .. } => {
                let pdc_id = &contribution.pdc_id;
                let study_id = &contribution.study_id;
                check_signature(&self.members, failures, index, entry, pdc_id);
                if let Some(claim) = &contribution.privacy {
                    let key = (study_id.clone(), contribution.round, pdc_id.clone());
                    self.claims.insert(key, (index, claim.epsilon, claim.delta));
                }
                let Some(study) = live_study(studies, failures, index, study_id, kind) else { return };
                let consent_key = (study_id.clone(), pdc_id.clone());
                match (self.consents.get(&consent_key), self.consent_rounds.get(&consent_key)) {
                    (None, _) => fail(
                        failures,
                        Rule::ConsentBeforeContribution,
                        vec![index],
                        format!(
                            "entry {index} accepts a contribution of {pdc_id:?} to study {study_id:?} without a prior \
                             valid consent in force"
                        ),
                    ),
                    (Some(&consented), Some(&rounds)) if contribution.round > rounds => fail(
                        failures,
                        Rule::ConsentBeforeContribution,
                        vec![consented, index],
                        format!(
                            "entry {index} accepts a contribution of {pdc_id:?} to round {} of study {study_id:?}, \
                             beyond the {rounds} rounds its consent (entry {consented}) covers",
                            contribution.round
                        ),
                    ),
                    _ => {}
                }
                let Some(round) = open_round(study, failures, index, study_id, contribution.round, kind, false) else {
                    return;
                };
                if !round.participants.contains(pdc_id) {
                    fail(
                        failures,
                        Rule::RoundOrder,
                        vec![round.opened, index],
                        format!(
                            "entry {index} accepts a contribution of {pdc_id:?}, which is not among the participants \
                             of round {} (entry {})",
                            contribution.round, round.opened
                        ),
                    );
                }
                if let Some(&earlier) = round.contributions.get(pdc_id) {
                    fail(
                        failures,
                        Rule::RoundOrder,
                        vec![earlier, index],
                        format!(
                            "entry {index} accepts a second contribution of {pdc_id:?} to round {} (the first is \
                             entry {earlier})",
                            contribution.round
                        ),
                    );
                } else {
                    round.contributions.insert(pdc_id.clone(), index);
                }
            }
            Entry::UpdateRejected { study_id, round, .. } => {
                let Some(study) = live_study(studies, failures, index, study_id, kind) else { return };
                // A late update may be rejected after its round was aggregated, so that is allowed here.
                open_round(study, failures, index, study_id, *round, kind, true);
            }
            Entry::RoundAggregated { study_id, round, contributors, .. } => {
                let Some(study) = live_study(studies, failures, index, study_id, kind) else { return };
                let Some(state) = open_round(study, failures, index, study_id, *round, kind, false) else { return };
                for contributor in contributors {
                    if !state.contributions.contains_key(contributor) {
                        fail(
                            failures,
                            Rule::RoundOrder,
                            vec![index],
                            format!(
                                "entry {index} aggregates {contributor:?}, which has no accepted contribution in \
                                 round {round} of study {study_id:?}"
                            ),
                        );
                    }
                }
                state.aggregated = Some(index);
            }
            Entry::UtilityScores { study_id, round, .. } => {
                let Some(study) = live_study(studies, failures, index, study_id, kind) else { return };
                opened_round(study, failures, index, study_id, *round, kind);
            }
            Entry::RewardsAllotted { study_id, round, budget, carried_over } => {
                let Some(study) = live_study(studies, failures, index, study_id, kind) else { return };
                if opened_round(study, failures, index, study_id, *round, kind).is_none() {
                    return;
                }
                if *budget < 0.0 {
                    fail(
                        failures,
                        Rule::Rewards,
                        vec![index],
                        format!("entry {index} allots a negative reward budget {budget} to round {round}"),
                    );
                }
                let key = (study_id.clone(), *round);
                if let Some(earlier) = self.allotments.get(&key) {
                    fail(
                        failures,
                        Rule::Rewards,
                        vec![earlier.index, index],
                        format!(
                            "entry {index} allots rewards to round {round} of study {study_id:?} again (first at entry \
                             {})",
                            earlier.index
                        ),
                    );
                } else {
                    let allotment = Allotment { index, budget: *budget, carried_over: *carried_over, paid: Vec::new() };
                    self.allotments.insert(key, allotment);
                }
            }
            Entry::RewardPaid { study_id, round, pdc_id, amount } => {
                let Some(study) = live_study(studies, failures, index, study_id, kind) else { return };
                let Some(state) = opened_round(study, failures, index, study_id, *round, kind) else { return };
                if !state.contributions.contains_key(pdc_id) {
                    fail(
                        failures,
                        Rule::Rewards,
                        vec![index],
                        format!(
                            "entry {index} rewards {pdc_id:?}, which has no accepted contribution in round {round} of \
                             study {study_id:?}"
                        ),
                    );
                }
                if *amount < 0.0 {
                    fail(
                        failures,
                        Rule::Rewards,
                        vec![index],
                        format!("entry {index} pays a negative reward {amount}"),
                    );
                }
                match self.allotments.get_mut(&(study_id.clone(), *round)) {
                    None => fail(
                        failures,
                        Rule::Rewards,
                        vec![index],
                        format!(
                            "entry {index} pays a reward for round {round} of study {study_id:?} before any \
                             RewardsAllotted for it"
                        ),
                    ),
                    Some(allotment) if allotment.carried_over => fail(
                        failures,
                        Rule::Rewards,
                        vec![allotment.index, index],
                        format!(
                            "entry {index} pays a reward for round {round}, whose budget was carried over at entry {}",
                            allotment.index
                        ),
                    ),
                    Some(allotment) => allotment.paid.push((index, *amount)),
                }
            }
            Entry::PrivacySpent { study_id, round, pdc_id, epsilon, delta } => {
                if let Some(study) = live_study(studies, failures, index, study_id, kind) {
                    opened_round(study, failures, index, study_id, *round, kind);
                }
                if let Some((claimed_at, claimed_epsilon, claimed_delta)) =
                    self.claims.remove(&(study_id.clone(), *round, pdc_id.clone()))
                    && (claimed_epsilon != *epsilon || claimed_delta != *delta)
                {
                    fail(
                        failures,
                        Rule::PrivacyBudget,
                        vec![claimed_at, index],
                        format!(
                            "entry {index} records {pdc_id:?}'s cumulative spend after round {round} as (ε = {epsilon}, \
                             δ = {delta}), but the PDC signed (ε = {claimed_epsilon}, δ = {claimed_delta}) in its \
                             contribution at entry {claimed_at}"
                        ),
                    );
                }
                self.check_spend(index, pdc_id, *epsilon, *delta);
            }
            Entry::StudyClosed { study_id, .. } => {
                if let Some(study) = live_study(studies, failures, index, study_id, kind) {
                    study.closed = Some(index);
                }
            }
            Entry::CentralDpRelease { study_id, round, .. } | Entry::CoalitionValues { study_id, round, .. } => {
                if let Some(study) = live_study(studies, failures, index, study_id, kind) {
                    opened_round(study, failures, index, study_id, *round, kind);
                }
            }
            Entry::StatisticsReleased { release, .. } => {
                check_signature(&self.members, failures, index, entry, &release.pdc_id);
                let pdc_id = &release.pdc_id;
                match release.kind {
                    StatisticKind::FeatureSummary => {
                        let study_id = &release.scope;
                        if let Some(study) = live_study(studies, failures, index, study_id, kind) {
                            if !self.consents.contains_key(&(study_id.clone(), pdc_id.clone())) {
                                fail(
                                    failures,
                                    Rule::ConsentBeforeContribution,
                                    vec![index],
                                    format!(
                                        "entry {index} records a feature summary of {pdc_id:?} for study {study_id:?} \
                                         without a prior valid consent in force"
                                    ),
                                );
                            }
                            before_first_round(study, failures, index, study_id, kind);
                            if let Some(&earlier) = study.summaries.get(pdc_id) {
                                fail(
                                    failures,
                                    Rule::RoundOrder,
                                    vec![earlier, index],
                                    format!(
                                        "entry {index} records a second feature summary of {pdc_id:?} for study \
                                         {study_id:?} (the first is entry {earlier})"
                                    ),
                                );
                            } else {
                                study.summaries.insert(pdc_id.clone(), index);
                            }
                        }
                    }
                    StatisticKind::CohortCounts => {
                        let key = (release.scope.clone(), pdc_id.clone());
                        if let Some(&earlier) = self.cohort_answers.get(&key) {
                            fail(
                                failures,
                                Rule::RoundOrder,
                                vec![earlier, index],
                                format!(
                                    "entry {index} records a second answer of {pdc_id:?} to feasibility query {:?} \
                                     (the first is entry {earlier})",
                                    release.scope
                                ),
                            );
                        } else {
                            self.cohort_answers.insert(key, index);
                        }
                    }
                }
                if self.budgets.get(pdc_id).is_some_and(|budget| budget.dataset != release.dataset) {
                    let budget = &self.budgets[pdc_id];
                    fail(
                        failures,
                        Rule::PrivacyBudget,
                        vec![budget.index, index],
                        format!(
                            "entry {index} charges {pdc_id:?}'s table {:?}, but its budget (entry {}) protects {:?}",
                            release.dataset, budget.index, budget.dataset
                        ),
                    );
                }
                self.check_spend(index, pdc_id, release.epsilon, release.delta);
            }
            Entry::StandardizationFitted { study_id, contributors, mean, std } => {
                let Some(study) = live_study(studies, failures, index, study_id, kind) else { return };
                before_first_round(study, failures, index, study_id, kind);
                if let Some(earlier) = study.standardized {
                    fail(
                        failures,
                        Rule::RoundOrder,
                        vec![earlier, index],
                        format!(
                            "entry {index} fits study {study_id:?}'s standardisation again (first at entry {earlier})"
                        ),
                    );
                }
                study.standardized = Some(index);
                if contributors.is_empty() || !contributors.windows(2).all(|pair| pair[0] < pair[1]) {
                    fail(
                        failures,
                        Rule::Study,
                        vec![index],
                        format!("entry {index} pools no PDCs, or lists them unsorted or twice"),
                    );
                }
                for contributor in contributors {
                    if !study.summaries.contains_key(contributor) {
                        fail(
                            failures,
                            Rule::Study,
                            vec![index],
                            format!(
                                "entry {index} pools a feature summary of {contributor:?}, which released none for \
                                 study {study_id:?}"
                            ),
                        );
                    }
                }
                if mean.len() != std.len() || std.iter().any(|&s| s <= 0.0) {
                    fail(
                        failures,
                        Rule::Study,
                        vec![index],
                        format!(
                            "entry {index} gives {} means and {} standard deviations; they must pair up and every \
                             standard deviation must be positive",
                            mean.len(),
                            std.len()
                        ),
                    );
                }
            }
            Entry::BudgetDeclared { pdc_id, dataset, epsilon, delta } => {
                if *epsilon < 0.0 || *delta < 0.0 || *delta >= 1.0 {
                    fail(
                        failures,
                        Rule::PrivacyBudget,
                        vec![index],
                        format!(
                            "entry {index} declares an invalid budget (ε = {epsilon}, δ = {delta}): ε ≥ 0 and \
                             0 ≤ δ < 1 are required"
                        ),
                    );
                    return;
                }
                match self.budgets.get(pdc_id) {
                    Some(budget)
                        if budget.dataset == *dataset && budget.epsilon == *epsilon && budget.delta == *delta => {}
                    Some(budget) => fail(
                        failures,
                        Rule::PrivacyBudget,
                        vec![budget.index, index],
                        format!(
                            "entry {index} declares another budget for {pdc_id:?} than entry {} did; a budget is \
                             declared once",
                            budget.index
                        ),
                    ),
                    None => {
                        let budget = Budget { index, dataset: dataset.clone(), epsilon: *epsilon, delta: *delta };
                        self.budgets.insert(pdc_id.clone(), budget);
                    }
                }
            }
        }
    }

    /// The privacy rule for a `PrivacySpent` of `pdc_id` at `index` stating cumulative `(epsilon, delta)`.
    fn check_spend(&mut self, index: u64, pdc_id: &str, epsilon: f64, delta: f64) {
        let failures = &mut self.failures;
        match self.budgets.get(pdc_id) {
            None => fail(
                failures,
                Rule::PrivacyBudget,
                vec![index],
                format!("entry {index} records a privacy spend of {pdc_id:?}, which declared no budget before it"),
            ),
            Some(budget) => {
                if epsilon > budget.epsilon || delta > budget.delta {
                    fail(
                        failures,
                        Rule::PrivacyBudget,
                        vec![budget.index, index],
                        format!(
                            "entry {index} takes {pdc_id:?}'s cumulative spend to (ε = {epsilon}, δ = {delta}), \
                             beyond its budget (ε = {}, δ = {}) declared at entry {}",
                            budget.epsilon, budget.delta, budget.index
                        ),
                    );
                }
            }
        }
        if let Some(spent) = self.spent.get(pdc_id)
            && (epsilon < spent.epsilon || delta < spent.delta)
        {
            fail(
                failures,
                Rule::PrivacyBudget,
                vec![spent.index, index],
                format!(
                    "entry {index} lowers {pdc_id:?}'s cumulative spend from (ε = {}, δ = {}) at entry {} to \
                     (ε = {epsilon}, δ = {delta}); it can only grow",
                    spent.epsilon, spent.delta, spent.index
                ),
            );
        }
        if epsilon < 0.0 || delta < 0.0 {
            fail(
                failures,
                Rule::PrivacyBudget,
                vec![index],
                format!("entry {index} records a negative cumulative spend (ε = {epsilon}, δ = {delta})"),
            );
        }
        self.spent.insert(pdc_id.to_owned(), Spent { index, epsilon, delta });
    }

    /// The checks that need the whole log: each round's payments against its allotment.
    fn finish(mut self) -> Vec<Failure> {
        for ((study_id, round, pdc_id), (index, epsilon, delta)) in &self.claims {
            let message = format!(
                "entry {index} accepts {pdc_id:?}'s contribution to round {round} of study {study_id:?} with a signed \
                 spend of (ε = {epsilon}, δ = {delta}), but no PrivacySpent records it"
            );
            self.failures.push(failure(Rule::PrivacyBudget, vec![*index], vec![], message));
        }
        for ((study_id, round), allotment) in &self.allotments {
            if allotment.carried_over {
                continue;
            }
            let total: f64 = allotment.paid.iter().map(|(_, amount)| amount).sum();
            let scale = allotment.budget.abs().max(total.abs());
            if (total - allotment.budget).abs() > REWARD_TOLERANCE * scale {
                let mut entries = vec![allotment.index];
                entries.extend(allotment.paid.iter().map(|(index, _)| *index));
                let message = format!(
                    "the rewards of round {round} of study {study_id:?} sum to {total} in {} payments, not the budget \
                     {} allotted at entry {}",
                    allotment.paid.len(),
                    allotment.budget,
                    allotment.index
                );
                self.failures.push(failure(Rule::Rewards, entries, vec![], message));
            }
        }
        self.failures
    }
}

/// Parses a registered key, reporting a malformed one.
fn parse_key(failures: &mut Vec<Failure>, index: u64, pdc_id: &str, bytes: &[u8; 32]) -> Option<PublicKey> {
    match PublicKey::from_bytes(bytes) {
        Ok(key) => Some(key),
        Err(error) => {
            fail(failures, Rule::Membership, vec![index], format!("entry {index} gives {pdc_id:?} a bad key: {error}"));
            None
        }
    }
}

/// Whether the signed `entry` at `index` verifies under `pdc_id`'s current key; reports it if not.
fn check_signature(
    members: &HashMap<String, Member>,
    failures: &mut Vec<Failure>,
    index: u64,
    entry: &Entry,
    pdc_id: &str,
) -> bool {
    let kind = entry.kind();
    let problem = match members.get(pdc_id) {
        None => format!("entry {index} ({kind}) is signed by {pdc_id:?}, which is not registered"),
        Some(Member { revoked: Some(revoked), .. }) => {
            format!("entry {index} ({kind}) is signed by {pdc_id:?}, whose key was revoked at entry {revoked}")
        }
        Some(Member { key: None, index: set, .. }) => {
            format!("entry {index} ({kind}) is signed by {pdc_id:?}, whose key set at entry {set} is malformed")
        }
        Some(Member { key: Some(key), index: set, .. }) => match entry.verify_signature(key) {
            Ok(()) => return true,
            Err(error) => format!(
                "entry {index} ({kind}) does not verify under {pdc_id:?}'s key registered at entry {set}: {error}"
            ),
        },
    };
    fail(failures, Rule::Signature, vec![index], problem);
    false
}

/// The study an entry names, if it was created and is not closed; reports it otherwise.
fn live_study<'a>(
    studies: &'a mut HashMap<String, Study>,
    failures: &mut Vec<Failure>,
    index: u64,
    study_id: &str,
    kind: &str,
) -> Option<&'a mut Study> {
    match studies.get_mut(study_id) {
        None => {
            fail(
                failures,
                Rule::Study,
                vec![index],
                format!("entry {index} ({kind}) names study {study_id:?}, which was never created before it"),
            );
            None
        }
        Some(Study { closed: Some(closed), .. }) => {
            fail(
                failures,
                Rule::RoundOrder,
                vec![*closed, index],
                format!("entry {index} ({kind}) names study {study_id:?} after it was closed at entry {closed}"),
            );
            None
        }
        Some(study) => Some(study),
    }
}

/// The study's currently open round if it is `round` (and, unless `after_aggregation`, not yet aggregated);
/// reports it otherwise.
fn open_round<'a>(
    study: &'a mut Study,
    failures: &mut Vec<Failure>,
    index: u64,
    study_id: &str,
    round: u32,
    kind: &str,
    after_aggregation: bool,
) -> Option<&'a mut Round> {
    if study.current != Some(round) {
        let (entries, detail) = match (study.rounds.get(&round), study.current) {
            (Some(state), Some(current)) => {
                let since = study.rounds.get(&current).map_or(state.opened, |open| open.opened);
                (vec![state.opened, since, index], format!("round {current} is open, since entry {since}"))
            }
            _ => (vec![index], format!("round {round} was never opened")),
        };
        fail(
            failures,
            Rule::RoundOrder,
            entries,
            format!("entry {index} ({kind}) is for round {round} of study {study_id:?}, but {detail}"),
        );
        return None;
    }
    let state = study.rounds.get_mut(&round)?;
    match state.aggregated {
        Some(aggregated) if !after_aggregation => {
            fail(
                failures,
                Rule::RoundOrder,
                vec![aggregated, index],
                format!(
                    "entry {index} ({kind}) is for round {round} of study {study_id:?}, which was aggregated at entry \
                     {aggregated}"
                ),
            );
            None
        }
        _ => Some(state),
    }
}

/// Reports an entry that must come before the study's first `RoundOpened` (its standardisation) but does not.
fn before_first_round(study: &Study, failures: &mut Vec<Failure>, index: u64, study_id: &str, kind: &str) {
    if let Some((round, state)) = study.rounds.first_key_value() {
        fail(
            failures,
            Rule::RoundOrder,
            vec![state.opened, index],
            format!(
                "entry {index} ({kind}) belongs to study {study_id:?}'s standardisation, which precedes its first \
                 round, but round {round} opened at entry {}",
                state.opened
            ),
        );
    }
}

/// The study's round `round` if it was opened (it may be over); reports it otherwise.
fn opened_round<'a>(
    study: &'a mut Study,
    failures: &mut Vec<Failure>,
    index: u64,
    study_id: &str,
    round: u32,
    kind: &str,
) -> Option<&'a mut Round> {
    let found = study.rounds.get_mut(&round);
    if found.is_none() {
        fail(
            failures,
            Rule::RoundOrder,
            vec![index],
            format!("entry {index} ({kind}) is for round {round} of study {study_id:?}, which was never opened"),
        );
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Identity;
    use crate::store::MemoryStore;

    fn keys() -> AuditKeys {
        AuditKeys {
            origin: "t/ledger/sha3-256".into(),
            log_key_name: "t/log".into(),
            log_key: Identity::from_seed([1; 32]).public_key(),
            witnesses: Vec::new(),
            quorum: 0,
        }
    }

    fn note(size: u64, root: Hash) -> Vec<u8> {
        let checkpoint = Checkpoint { origin: keys().origin, size, root, previous: [0; 32], timestamp_ms: 1 };
        checkpoint.sign("t/log", &Identity::from_seed([1; 32])).expect("sign").to_note().into_bytes()
    }

    #[test]
    fn an_empty_ledger_without_a_checkpoint_fails_no_check_but_does_not_pass() {
        let report = verify_store(&MemoryStore::new(), &keys());
        assert!(report.passed());
        assert_eq!(report.verdict(), Verdict::NoSealedCheckpoint);
        assert_eq!(
            report.to_string(),
            format!(
                "NO SEALED CHECKPOINT\nsize: 0 entries, root {}\ncheckpoints checked: 0\nunsealed: no checkpoint is \
                 sealed under the auditor's policy (log signature, root, witness quorum)\n",
                hex::encode(merkle::EMPTY_ROOT)
            )
        );
        assert_eq!(report, verify_parts(&[], &[], &keys()));
    }

    #[test]
    fn entries_beyond_the_last_sealed_checkpoint_are_the_unsealed_tail() {
        let entries: Vec<Vec<u8>> = (0u8..5)
            .map(|i| Entry::StudyCreated { study_id: format!("s{i}"), manifest_hash: [i; 32] }.encode())
            .collect();
        let leaves: Vec<Hash> = entries.iter().map(|e| merkle::leaf_hash(e)).collect();
        let notes = [String::from_utf8(note(3, merkle::root(&leaves[..3]))).expect("utf-8")];
        let report = verify_parts(&entries, &notes, &keys());
        assert!(report.passed(), "{report}");
        assert_eq!(report.verdict(), Verdict::UnsealedTail);
        assert_eq!(report.unsealed_tail(), 3..5);
        assert_eq!(report.sealed, Some(TreeHead { size: 3, root: merkle::root(&leaves[..3]) }));
        let text = report.to_string();
        assert!(text.starts_with("UNSEALED TAIL (2 entries)\n"), "{text}");
        assert!(
            text.contains("\nunsealed tail: entries 3..=4 (2 entries) beyond the last sealed checkpoint (size 3)\n")
        );

        // With a witness quorum the log's signature alone seals nothing.
        let witnessed =
            AuditKeys { witnesses: vec![("w".into(), Identity::from_seed([3; 32]).public_key())], quorum: 1, ..keys() };
        let report = verify_parts(&entries, &notes, &witnessed);
        assert_eq!((report.verdict(), report.sealed, report.unsealed_tail()), (Verdict::Fail, None, 0..5));
        assert!(report.to_string().contains("unsealed: no checkpoint is sealed under the auditor's policy (log signature, root, witness quorum); entries 0..=4 (5 entries)\n"), "{report}");
    }

    #[test]
    fn the_latest_checkpoint_is_checked_against_the_store() {
        let mut store = MemoryStore::new();
        assert!(verify_latest_checkpoint(&store, &keys()).is_empty());
        let entries: Vec<Vec<u8>> = (0u8..5).map(|i| vec![i]).collect();
        store.append(&entries[..3]).expect("append");
        store.put_checkpoint(3, &note(3, store.root().expect("root"))).expect("checkpoint");
        store.append(&entries[3..]).expect("append");
        assert!(verify_latest_checkpoint(&store, &keys()).is_empty());

        store.put_checkpoint(4, &note(4, [9; 32])).expect("checkpoint");
        let failures = verify_latest_checkpoint(&store, &keys());
        assert_eq!(failures.len(), 1, "{failures:?}");
        assert_eq!((failures[0].rule, failures[0].checkpoints.clone()), (Rule::CheckpointRoot, vec![4]));

        let other =
            AuditKeys { origin: "u/sha3-256".into(), log_key: Identity::from_seed([2; 32]).public_key(), ..keys() };
        store.put_checkpoint(5, &note(5, store.root().expect("root"))).expect("checkpoint");
        let rules: Vec<Rule> = verify_latest_checkpoint(&store, &other).iter().map(|f| f.rule).collect();
        assert_eq!(rules, [Rule::CheckpointOrigin, Rule::CheckpointSignature]);

        let mut garbled = MemoryStore::new();
        garbled.append(&entries).expect("append");
        garbled.put_checkpoint(2, b"\xff not a note").expect("checkpoint");
        let rules: Vec<Rule> = verify_latest_checkpoint(&garbled, &keys()).iter().map(|f| f.rule).collect();
        assert_eq!(rules, [Rule::CheckpointMalformed]);
    }
}
