//! Typed ledger entries and their canonical, versioned binary encoding.
//!
//! Every record the federation writes to the log is an [`Entry`]. Entries carry identifiers, hashes,
//! signatures and aggregate figures only — never patient data. The log stores [`Entry::encode`]'s bytes, so the
//! encoding is part of the ledger's format and must be *canonical*: one entry has exactly one encoding, and
//! [`Entry::decode`] accepts exactly the encodings [`Entry::encode`] produces.
//!
//! # Format, version 1
//!
//! ```text
//! version: u8 (= 1) | tag: u8 | fields, in declaration order
//! ```
//!
//! - `u8`, `u32`, `u64`: little-endian;
//! - `f64`: its IEEE 754 bits as a little-endian `u64`; NaN and infinities are rejected on decode;
//! - strings: `u32` LE byte length, then UTF-8;
//! - [`StatisticKind`]: one byte, see [`StatisticKind::code`];
//! - vectors: `u32` LE item count, then the items;
//! - pairs: the two items in order;
//! - hashes (32 bytes), public keys (32 bytes) and signatures (64 bytes): raw;
//! - `bool`: one byte, `0` or `1`; anything else is rejected on decode;
//! - [`Role`]: one byte, see [`Role::code`].
//!
//! Tags: 1 `MemberRegistered`, 2 `KeyRotated`, 3 `StudyCreated`, 4 `ConsentGranted`, 5 `ConsentRevoked`,
//! 6 `RoundOpened`, 7 `ContributionAccepted`, 8 `UpdateRejected`, 9 `RoundAggregated`, 10 `UtilityScores`,
//! 11 `RewardPaid`, 12 `PrivacySpent`, 13 `StudyClosed`, 14 `BudgetDeclared`, 15 `RewardsAllotted`,
//! 16 `CentralDpRelease`, 17 `CoalitionValues`, 18 `StatisticsReleased`, 19 `StandardizationFitted`,
//! 20 `ConsortiumRecorded`, 21 `KeyRevoked`, 22 `ManifestSigned`. New kinds take new tags at the end; the bytes of
//! existing kinds never change within a version.
//!
//! # Meaning of the figures
//!
//! The audit ([`crate::audit`]) holds the log to these readings:
//!
//! - [`Entry::BudgetDeclared`] is a PDC's total privacy budget `(ε, δ)`, declared once (repeating the same
//!   declaration is harmless; a different one is a failure);
//! - [`Entry::PrivacySpent`]'s `epsilon` and `delta` are the PDC's **cumulative** ε and δ over everything it has
//!   taken part in, after the round named: per PDC they never decrease, and never exceed its declared budget;
//! - [`Entry::RewardsAllotted`] is a round's reward budget, recorded before that round's [`Entry::RewardPaid`]
//!   entries, whose amounts must sum to it (relative tolerance `1e-9`); with `carried_over` the budget moves to a
//!   later round and no `RewardPaid` for the round may follow.
//!
//! The decoder never allocates more than the input could describe: a length or count is checked against the
//! remaining bytes before anything is reserved.
//!
//! ```
//! use pdc_ledger::entry::Entry;
//!
//! let entry = Entry::StudyCreated { study_id: "sepsis-2026".into(), manifest_hash: [7; 32] };
//! let bytes = entry.encode();
//! assert_eq!(Entry::decode(&bytes)?, entry);
//! # Ok::<(), pdc_ledger::entry::EntryError>(())
//! ```

use crate::cursor::{Cursor, Truncated};
use crate::signing::{
    self, ConsentAction, ConsentConditions, Contribution, PrivacyClaim, StatisticKind, StatisticsRelease,
};
use crate::{Hash, PublicKey};

/// The format version [`Entry::encode`] writes and [`Entry::decode`] accepts.
pub const FORMAT_VERSION: u8 = 1;

/// A party's role in the federation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    /// Runs rounds and aggregates updates.
    Coordinator,
    /// A hospital's Private Data Centre, which trains on its own data.
    Hospital,
    /// Proposes studies and receives models.
    Researcher,
    /// Reads and checks the ledger.
    Auditor,
    /// Co-signs checkpoints after checking consistency.
    Witness,
}

impl Role {
    /// The role's byte in the canonical encoding.
    pub fn code(self) -> u8 {
        match self {
            Role::Coordinator => 1,
            Role::Hospital => 2,
            Role::Researcher => 3,
            Role::Auditor => 4,
            Role::Witness => 5,
        }
    }

    /// The role's lower-case name, as the CLI and certificates spell it.
    pub fn name(self) -> &'static str {
        match self {
            Role::Coordinator => "coordinator",
            Role::Hospital => "hospital",
            Role::Researcher => "researcher",
            Role::Auditor => "auditor",
            Role::Witness => "witness",
        }
    }

    /// The role named `name` (see [`Role::name`]), if any.
    pub fn from_name(name: &str) -> Option<Role> {
        [Role::Coordinator, Role::Hospital, Role::Researcher, Role::Auditor, Role::Witness]
            .into_iter()
            .find(|role| role.name() == name)
    }

    /// The role with byte `code`, if any.
    pub fn from_code(code: u8) -> Option<Role> {
        Some(match code {
            1 => Role::Coordinator,
            2 => Role::Hospital,
            3 => Role::Researcher,
            4 => Role::Auditor,
            5 => Role::Witness,
            _ => return None,
        })
    }
}

/// One typed ledger record.
#[derive(Clone, Debug, PartialEq)]
pub enum Entry {
    /// A party joined the federation with this key.
    MemberRegistered {
        /// The party's id (a PDC id for hospitals).
        pdc_id: String,
        /// What the party does.
        role: Role,
        /// Its Ed25519 public key.
        public_key: [u8; 32],
    },
    /// A party replaced its key; `signature` is the old key's over [`signing::rotate_message`], so the coordinator
    /// cannot rotate a key on its own.
    KeyRotated {
        /// The party.
        pdc_id: String,
        /// The key it used until now.
        old_key: [u8; 32],
        /// The key it uses from now on.
        new_key: [u8; 32],
        /// The old key's Ed25519 signature.
        signature: [u8; 64],
    },
    /// A study was created with this manifest.
    StudyCreated {
        /// The study.
        study_id: String,
        /// SHA3-256 of the study's manifest.
        manifest_hash: Hash,
    },
    /// A PDC consented to a study; `signature` is over [`signing::consent_message`] with [`ConsentAction::Grant`],
    /// or over [`signing::conditional_consent_message`] when the consent carries conditions.
    ConsentGranted {
        /// The study.
        study_id: String,
        /// The consenting PDC.
        pdc_id: String,
        /// The manifest consented to.
        manifest_hash: Hash,
        /// The PDC's Ed25519 signature.
        signature: [u8; 64],
        /// The limits the PDC set; `None` for an unconditional consent. Encoded after the signature, flagged by a
        /// 1 (then [`ConsentConditions::encode`]'s bytes); without conditions the entry ends at the signature, as
        /// consents did before conditions existed.
        conditions: Option<ConsentConditions>,
    },
    /// A PDC withdrew; `signature` is over [`signing::consent_message`] with [`ConsentAction::Revoke`].
    ConsentRevoked {
        /// The study.
        study_id: String,
        /// The withdrawing PDC.
        pdc_id: String,
        /// The manifest consent was given to.
        manifest_hash: Hash,
        /// The PDC's Ed25519 signature.
        signature: [u8; 64],
    },
    /// A round began.
    RoundOpened {
        /// The study.
        study_id: String,
        /// The round number.
        round: u32,
        /// The PDCs asked to train.
        participants: Vec<String>,
        /// SHA3-256 of the global model sent out.
        model_hash: Hash,
    },
    /// The coordinator accepted a PDC's signed update; `signature` is over [`Contribution::signing_bytes`].
    ContributionAccepted {
        /// The contribution as the PDC signed it.
        contribution: Contribution,
        /// The PDC's Ed25519 signature.
        signature: [u8; 64],
    },
    /// The coordinator rejected a PDC's update.
    UpdateRejected {
        /// The study.
        study_id: String,
        /// The round.
        round: u32,
        /// The PDC whose update was rejected.
        pdc_id: String,
        /// Why, in words.
        reason: String,
    },
    /// A round's updates were aggregated into a new model.
    RoundAggregated {
        /// The study.
        study_id: String,
        /// The round.
        round: u32,
        /// SHA3-256 of the new global model.
        model_hash: Hash,
        /// The PDCs whose updates went in.
        contributors: Vec<String>,
        /// Named figures of the round (loss, accuracy, …).
        metrics: Vec<(String, f64)>,
    },
    /// Each PDC's utility for a round, as used for rewards.
    UtilityScores {
        /// The study.
        study_id: String,
        /// The round.
        round: u32,
        /// PDC id and its score.
        scores: Vec<(String, f64)>,
        /// How the scores were computed ("shapley-mc", "leave-one-out", …).
        method: String,
        /// The seed of any sampling, so the scores can be recomputed.
        seed: u64,
    },
    /// A PDC was rewarded.
    RewardPaid {
        /// The study.
        study_id: String,
        /// The round.
        round: u32,
        /// The rewarded PDC.
        pdc_id: String,
        /// The amount.
        amount: f64,
    },
    /// A PDC spent differential-privacy budget in a round.
    PrivacySpent {
        /// The study.
        study_id: String,
        /// The round.
        round: u32,
        /// The PDC.
        pdc_id: String,
        /// The PDC's cumulative ε after this round, over all studies: never decreasing, at most its declared ε.
        epsilon: f64,
        /// The PDC's cumulative δ after this round: never decreasing, at most its declared δ.
        delta: f64,
    },
    /// A study ended.
    StudyClosed {
        /// The study.
        study_id: String,
        /// Its final state ("completed", "cancelled", …).
        state: String,
    },
    /// A PDC declared its total differential-privacy budget; every later [`Entry::PrivacySpent`] of that PDC is
    /// held to it.
    BudgetDeclared {
        /// The PDC.
        pdc_id: String,
        /// The dataset the budget protects (the PDC's local table).
        dataset: String,
        /// The total ε the PDC will ever spend.
        epsilon: f64,
        /// The total δ.
        delta: f64,
    },
    /// A round's reward budget, recorded before the round's [`Entry::RewardPaid`] entries.
    RewardsAllotted {
        /// The study.
        study_id: String,
        /// The round.
        round: u32,
        /// The amount the round's rewards sum to.
        budget: f64,
        /// Whether the budget is carried over to a later round instead of paid out (no positive utility, say);
        /// then no `RewardPaid` for this round may follow.
        carried_over: bool,
    },
    /// The coordinator's central DP release of a round (DP-FedAvg): the noisy mean of the clipped updates, archived
    /// under `release_hash`, from which the round's model follows. The noise cannot be reproduced, so the release
    /// itself is the record a replay starts from.
    CentralDpRelease {
        /// The study.
        study_id: String,
        /// The round.
        round: u32,
        /// SHA3-256 of the noisy mean's canonical bytes.
        release_hash: Hash,
        /// The clip norm `S` the round used.
        clip_norm: f64,
        /// The standard deviation of the noise added to the sum.
        noise_std: f64,
        /// The study's cumulative PDC-level ε after this round, at `delta`.
        epsilon: f64,
        /// The δ of `epsilon`.
        delta: f64,
    },
    /// Every coalition value a round's valuation computed: the inputs its utilities (and so its rewards) follow
    /// from, recorded with the `UtilityScores` they produced.
    CoalitionValues {
        /// The study.
        study_id: String,
        /// The round.
        round: u32,
        /// Each coalition's members (sorted PDC ids joined by `+`; empty for the previous global model) and its
        /// utility.
        values: Vec<(String, f64)>,
    },
    /// A PDC's signed DP release of statistics about its table outside training (a feature summary for a study's
    /// federated standardisation, or cohort counts for a feasibility query). It is also the PDC's spend record:
    /// its `epsilon` and `delta` are cumulative, held to the rules of [`Entry::PrivacySpent`].
    StatisticsReleased {
        /// The release, as the PDC signed it.
        release: StatisticsRelease,
        /// The PDC's Ed25519 signature over [`StatisticsRelease::signing_bytes`].
        signature: [u8; 64],
    },
    /// The global standardisation a study's coordinator pooled from its PDCs' feature summaries, before the study's
    /// first round: every PDC and the validation set are standardised with it.
    StandardizationFitted {
        /// The study.
        study_id: String,
        /// The PDCs whose `StatisticsReleased` summaries were pooled, sorted.
        contributors: Vec<String>,
        /// Each feature's pooled mean.
        mean: Vec<f64>,
        /// Each feature's pooled standard deviation.
        std: Vec<f64>,
    },
    /// The coordinator read the consortium file whose bytes hash to `file_hash`; the membership changes it makes
    /// (`MemberRegistered`, `KeyRevoked`) follow in the same batch.
    ConsortiumRecorded {
        /// SHA3-256 of the file's bytes.
        file_hash: Hash,
        /// How many members it lists.
        members: u32,
    },
    /// A party's key was revoked (removed from the consortium, or replaced there): nothing signed by it counts
    /// after this entry, and it may never be registered again.
    KeyRevoked {
        /// The party.
        pdc_id: String,
        /// The key revoked: the party's current key.
        key: [u8; 32],
        /// Why, in words.
        reason: String,
    },
    /// A researcher put its name to a study's manifest; `signature` is its key's over
    /// [`signing::manifest_message`]. The researcher owns the study.
    ManifestSigned {
        /// The study.
        study_id: String,
        /// The researcher's consortium id.
        researcher_id: String,
        /// SHA3-256 of the study's canonical manifest.
        manifest_hash: Hash,
        /// The researcher's Ed25519 signature.
        signature: [u8; 64],
    },
}

/// Why bytes are not a canonical entry, or why an entry's signature does not check.
#[derive(Debug, thiserror::Error)]
pub enum EntryError {
    /// The format version byte is not one this code reads.
    #[error("unsupported entry format version {version} at byte 0 (expected {FORMAT_VERSION})")]
    UnsupportedVersion {
        /// The version found.
        version: u8,
    },
    /// The tag byte names no entry kind.
    #[error("unknown entry tag {tag} at byte 1")]
    UnknownTag {
        /// The tag found.
        tag: u8,
    },
    /// The input ended inside a field.
    #[error("truncated entry: {what} at byte {offset} needs {needed} bytes, {remaining} remain")]
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
    /// A string length or vector count describes more data than the input holds.
    #[error("{what} at byte {offset} claims {claimed} bytes, only {remaining} remain")]
    LengthBeyondInput {
        /// The string or vector.
        what: &'static str,
        /// Where its length prefix starts.
        offset: usize,
        /// The least number of bytes the length implies.
        claimed: u64,
        /// Bytes left after the prefix.
        remaining: usize,
    },
    /// A string is not UTF-8.
    #[error("{what} at byte {offset} is not valid UTF-8")]
    InvalidUtf8 {
        /// The string field.
        what: &'static str,
        /// Where its bytes start.
        offset: usize,
    },
    /// A float is NaN or infinite.
    #[error("{what} at byte {offset} is not finite (bits {bits:#018x})")]
    NonFiniteFloat {
        /// The float field.
        what: &'static str,
        /// Where it starts.
        offset: usize,
        /// Its bits.
        bits: u64,
    },
    /// A boolean byte is neither 0 nor 1.
    #[error("{what} at byte {offset} is {value}, not a boolean 0 or 1")]
    InvalidBool {
        /// The boolean field.
        what: &'static str,
        /// Where it is.
        offset: usize,
        /// The byte found.
        value: u8,
    },
    /// A role byte names no role.
    #[error("unknown role {code} at byte {offset}")]
    UnknownRole {
        /// The byte found.
        code: u8,
        /// Where it is.
        offset: usize,
    },
    /// A statistic-kind byte names no kind.
    #[error("unknown statistic kind {code} at byte {offset}")]
    UnknownStatisticKind {
        /// The byte found.
        code: u8,
        /// Where it is.
        offset: usize,
    },
    /// Bytes follow a complete entry.
    #[error("{count} trailing bytes after the entry, from byte {offset}")]
    TrailingBytes {
        /// Where the extra bytes start.
        offset: usize,
        /// How many there are.
        count: usize,
    },
    /// [`Entry::verify_signature`] was asked about an entry that carries no signature.
    #[error("a {kind} entry carries no signature")]
    Unsigned {
        /// The entry's kind.
        kind: &'static str,
    },
    /// The entry's signature is malformed or does not verify.
    #[error(transparent)]
    Signature(#[from] crate::Error),
}

impl Entry {
    /// The entry's tag byte in the encoding.
    pub fn tag(&self) -> u8 {
        match self {
            Entry::MemberRegistered { .. } => 1,
            Entry::KeyRotated { .. } => 2,
            Entry::StudyCreated { .. } => 3,
            Entry::ConsentGranted { .. } => 4,
            Entry::ConsentRevoked { .. } => 5,
            Entry::RoundOpened { .. } => 6,
            Entry::ContributionAccepted { .. } => 7,
            Entry::UpdateRejected { .. } => 8,
            Entry::RoundAggregated { .. } => 9,
            Entry::UtilityScores { .. } => 10,
            Entry::RewardPaid { .. } => 11,
            Entry::PrivacySpent { .. } => 12,
            Entry::StudyClosed { .. } => 13,
            Entry::BudgetDeclared { .. } => 14,
            Entry::RewardsAllotted { .. } => 15,
            Entry::CentralDpRelease { .. } => 16,
            Entry::CoalitionValues { .. } => 17,
            Entry::StatisticsReleased { .. } => 18,
            Entry::StandardizationFitted { .. } => 19,
            Entry::ConsortiumRecorded { .. } => 20,
            Entry::KeyRevoked { .. } => 21,
            Entry::ManifestSigned { .. } => 22,
        }
    }

    /// The study the entry belongs to; `None` for membership and budget entries, which concern a party. A
    /// `StatisticsReleased` belongs to the study its scope names, if it feeds one (a feature summary); cohort counts
    /// answer a feasibility query, not a study.
    pub fn study_id(&self) -> Option<&str> {
        match self {
            Entry::StudyCreated { study_id, .. }
            | Entry::ConsentGranted { study_id, .. }
            | Entry::ConsentRevoked { study_id, .. }
            | Entry::RoundOpened { study_id, .. }
            | Entry::UpdateRejected { study_id, .. }
            | Entry::RoundAggregated { study_id, .. }
            | Entry::UtilityScores { study_id, .. }
            | Entry::RewardsAllotted { study_id, .. }
            | Entry::CentralDpRelease { study_id, .. }
            | Entry::CoalitionValues { study_id, .. }
            | Entry::StandardizationFitted { study_id, .. }
            | Entry::ManifestSigned { study_id, .. }
            | Entry::RewardPaid { study_id, .. }
            | Entry::PrivacySpent { study_id, .. }
            | Entry::StudyClosed { study_id, .. } => Some(study_id),
            Entry::ContributionAccepted { contribution, .. } => Some(&contribution.study_id),
            Entry::StatisticsReleased { release, .. } => {
                (release.kind == StatisticKind::FeatureSummary).then_some(release.scope.as_str())
            }
            Entry::MemberRegistered { .. }
            | Entry::KeyRotated { .. }
            | Entry::BudgetDeclared { .. }
            | Entry::ConsortiumRecorded { .. }
            | Entry::KeyRevoked { .. } => None,
        }
    }

    /// The entry kind's name, as in the enum.
    pub fn kind(&self) -> &'static str {
        match self {
            Entry::MemberRegistered { .. } => "MemberRegistered",
            Entry::KeyRotated { .. } => "KeyRotated",
            Entry::StudyCreated { .. } => "StudyCreated",
            Entry::ConsentGranted { .. } => "ConsentGranted",
            Entry::ConsentRevoked { .. } => "ConsentRevoked",
            Entry::RoundOpened { .. } => "RoundOpened",
            Entry::ContributionAccepted { .. } => "ContributionAccepted",
            Entry::UpdateRejected { .. } => "UpdateRejected",
            Entry::RoundAggregated { .. } => "RoundAggregated",
            Entry::UtilityScores { .. } => "UtilityScores",
            Entry::RewardPaid { .. } => "RewardPaid",
            Entry::PrivacySpent { .. } => "PrivacySpent",
            Entry::StudyClosed { .. } => "StudyClosed",
            Entry::BudgetDeclared { .. } => "BudgetDeclared",
            Entry::RewardsAllotted { .. } => "RewardsAllotted",
            Entry::CentralDpRelease { .. } => "CentralDpRelease",
            Entry::CoalitionValues { .. } => "CoalitionValues",
            Entry::StatisticsReleased { .. } => "StatisticsReleased",
            Entry::StandardizationFitted { .. } => "StandardizationFitted",
            Entry::ConsortiumRecorded { .. } => "ConsortiumRecorded",
            Entry::KeyRevoked { .. } => "KeyRevoked",
            Entry::ManifestSigned { .. } => "ManifestSigned",
        }
    }

    /// The canonical bytes of the entry (format version [`FORMAT_VERSION`]).
    ///
    /// Floats are written as their bits whatever they hold; an entry with a NaN or infinite float encodes, but
    /// [`Entry::decode`] rejects the result, so writers must keep figures finite. Strings and vectors longer than
    /// `u32::MAX` cannot be encoded and panic; nothing the federation records comes near that.
    pub fn encode(&self) -> Vec<u8> {
        let mut writer = Writer(vec![FORMAT_VERSION, self.tag()]);
        match self {
            Entry::MemberRegistered { pdc_id, role, public_key } => {
                writer.string(pdc_id);
                writer.0.push(role.code());
                writer.bytes(public_key);
            }
            Entry::KeyRotated { pdc_id, old_key, new_key, signature } => {
                writer.string(pdc_id);
                writer.bytes(old_key);
                writer.bytes(new_key);
                writer.bytes(signature);
            }
            Entry::StudyCreated { study_id, manifest_hash } => {
                writer.string(study_id);
                writer.bytes(manifest_hash);
            }
            Entry::ConsentGranted { study_id, pdc_id, manifest_hash, signature, conditions } => {
                writer.string(study_id);
                writer.string(pdc_id);
                writer.bytes(manifest_hash);
                writer.bytes(signature);
                if let Some(conditions) = conditions {
                    writer.0.push(1);
                    writer.bytes(&conditions.encode());
                }
            }
            Entry::ConsentRevoked { study_id, pdc_id, manifest_hash, signature } => {
                writer.string(study_id);
                writer.string(pdc_id);
                writer.bytes(manifest_hash);
                writer.bytes(signature);
            }
            Entry::RoundOpened { study_id, round, participants, model_hash } => {
                writer.string(study_id);
                writer.u32(*round);
                writer.strings(participants);
                writer.bytes(model_hash);
            }
            Entry::ContributionAccepted { contribution, signature } => {
                writer.string(&contribution.study_id);
                writer.u32(contribution.round);
                writer.string(&contribution.pdc_id);
                writer.u64(contribution.n_examples);
                writer.u64(contribution.n_parameters);
                writer.bytes(&contribution.update_hash);
                writer.f64(contribution.train_loss);
                writer.bytes(signature);
                // A claim follows the signature, flagged by a 1; without one the entry ends there, as entries of
                // this kind did before claims existed.
                if let Some(claim) = &contribution.privacy {
                    writer.0.push(1);
                    writer.string(&claim.dataset);
                    writer.f64(claim.noise_multiplier);
                    writer.f64(claim.sampling_rate);
                    writer.u64(claim.steps);
                    writer.f64(claim.clip_norm);
                    writer.f64(claim.epsilon);
                    writer.f64(claim.delta);
                }
            }
            Entry::UpdateRejected { study_id, round, pdc_id, reason } => {
                writer.string(study_id);
                writer.u32(*round);
                writer.string(pdc_id);
                writer.string(reason);
            }
            Entry::RoundAggregated { study_id, round, model_hash, contributors, metrics } => {
                writer.string(study_id);
                writer.u32(*round);
                writer.bytes(model_hash);
                writer.strings(contributors);
                writer.pairs(metrics);
            }
            Entry::UtilityScores { study_id, round, scores, method, seed } => {
                writer.string(study_id);
                writer.u32(*round);
                writer.pairs(scores);
                writer.string(method);
                writer.u64(*seed);
            }
            Entry::RewardPaid { study_id, round, pdc_id, amount } => {
                writer.string(study_id);
                writer.u32(*round);
                writer.string(pdc_id);
                writer.f64(*amount);
            }
            Entry::PrivacySpent { study_id, round, pdc_id, epsilon, delta } => {
                writer.string(study_id);
                writer.u32(*round);
                writer.string(pdc_id);
                writer.f64(*epsilon);
                writer.f64(*delta);
            }
            Entry::StudyClosed { study_id, state } => {
                writer.string(study_id);
                writer.string(state);
            }
            Entry::BudgetDeclared { pdc_id, dataset, epsilon, delta } => {
                writer.string(pdc_id);
                writer.string(dataset);
                writer.f64(*epsilon);
                writer.f64(*delta);
            }
            Entry::RewardsAllotted { study_id, round, budget, carried_over } => {
                writer.string(study_id);
                writer.u32(*round);
                writer.f64(*budget);
                writer.0.push(u8::from(*carried_over));
            }
            Entry::CentralDpRelease { study_id, round, release_hash, clip_norm, noise_std, epsilon, delta } => {
                writer.string(study_id);
                writer.u32(*round);
                writer.bytes(release_hash);
                writer.f64(*clip_norm);
                writer.f64(*noise_std);
                writer.f64(*epsilon);
                writer.f64(*delta);
            }
            Entry::CoalitionValues { study_id, round, values } => {
                writer.string(study_id);
                writer.u32(*round);
                writer.pairs(values);
            }
            Entry::StatisticsReleased { release, signature } => {
                writer.string(&release.scope);
                writer.string(&release.pdc_id);
                writer.0.push(release.kind.code());
                writer.string(&release.dataset);
                writer.f64(release.noise_multiplier);
                writer.f64s(&release.values);
                writer.f64(release.epsilon);
                writer.f64(release.delta);
                writer.bytes(signature);
            }
            Entry::StandardizationFitted { study_id, contributors, mean, std } => {
                writer.string(study_id);
                writer.strings(contributors);
                writer.f64s(mean);
                writer.f64s(std);
            }
            Entry::ConsortiumRecorded { file_hash, members } => {
                writer.bytes(file_hash);
                writer.u32(*members);
            }
            Entry::KeyRevoked { pdc_id, key, reason } => {
                writer.string(pdc_id);
                writer.bytes(key);
                writer.string(reason);
            }
            Entry::ManifestSigned { study_id, researcher_id, manifest_hash, signature } => {
                writer.string(study_id);
                writer.string(researcher_id);
                writer.bytes(manifest_hash);
                writer.bytes(signature);
            }
        }
        writer.0
    }

    /// Parses canonical bytes written by [`Entry::encode`], rejecting anything else with the offending offset.
    pub fn decode(bytes: &[u8]) -> Result<Entry, EntryError> {
        let mut reader = Reader::new(bytes);
        let version = reader.u8("format version")?;
        if version != FORMAT_VERSION {
            return Err(EntryError::UnsupportedVersion { version });
        }
        let tag = reader.u8("entry tag")?;
        let entry = match tag {
            1 => Entry::MemberRegistered {
                pdc_id: reader.string("pdc_id")?,
                role: reader.role()?,
                public_key: reader.array("public_key")?,
            },
            2 => Entry::KeyRotated {
                pdc_id: reader.string("pdc_id")?,
                old_key: reader.array("old_key")?,
                new_key: reader.array("new_key")?,
                signature: reader.array("signature")?,
            },
            3 => Entry::StudyCreated {
                study_id: reader.string("study_id")?,
                manifest_hash: reader.array("manifest_hash")?,
            },
            4 => {
                let study_id = reader.string("study_id")?;
                let pdc_id = reader.string("pdc_id")?;
                let manifest_hash = reader.array("manifest_hash")?;
                let signature = reader.array("signature")?;
                // Only a 1 starts the conditions; any other byte is left for the trailing-bytes check.
                let conditions = if reader.bytes.get(reader.offset) == Some(&1) {
                    reader.offset += 1;
                    Some(reader.conditions()?)
                } else {
                    None
                };
                Entry::ConsentGranted { study_id, pdc_id, manifest_hash, signature, conditions }
            }
            5 => Entry::ConsentRevoked {
                study_id: reader.string("study_id")?,
                pdc_id: reader.string("pdc_id")?,
                manifest_hash: reader.array("manifest_hash")?,
                signature: reader.array("signature")?,
            },
            6 => Entry::RoundOpened {
                study_id: reader.string("study_id")?,
                round: reader.u32("round")?,
                participants: reader.strings("participants")?,
                model_hash: reader.array("model_hash")?,
            },
            7 => {
                let mut contribution = Contribution {
                    study_id: reader.string("study_id")?,
                    round: reader.u32("round")?,
                    pdc_id: reader.string("pdc_id")?,
                    n_examples: reader.u64("n_examples")?,
                    n_parameters: reader.u64("n_parameters")?,
                    update_hash: reader.array("update_hash")?,
                    train_loss: reader.f64("train_loss")?,
                    privacy: None,
                };
                let signature = reader.array("signature")?;
                // Only a 1 starts a claim; any other byte is left for the trailing-bytes check.
                if reader.bytes.get(reader.offset) == Some(&1) {
                    reader.offset += 1;
                    contribution.privacy = Some(PrivacyClaim {
                        dataset: reader.string("privacy.dataset")?,
                        noise_multiplier: reader.f64("privacy.noise_multiplier")?,
                        sampling_rate: reader.f64("privacy.sampling_rate")?,
                        steps: reader.u64("privacy.steps")?,
                        clip_norm: reader.f64("privacy.clip_norm")?,
                        epsilon: reader.f64("privacy.epsilon")?,
                        delta: reader.f64("privacy.delta")?,
                    });
                }
                Entry::ContributionAccepted { contribution, signature }
            }
            8 => Entry::UpdateRejected {
                study_id: reader.string("study_id")?,
                round: reader.u32("round")?,
                pdc_id: reader.string("pdc_id")?,
                reason: reader.string("reason")?,
            },
            9 => Entry::RoundAggregated {
                study_id: reader.string("study_id")?,
                round: reader.u32("round")?,
                model_hash: reader.array("model_hash")?,
                contributors: reader.strings("contributors")?,
                metrics: reader.pairs("metrics")?,
            },
            10 => Entry::UtilityScores {
                study_id: reader.string("study_id")?,
                round: reader.u32("round")?,
                scores: reader.pairs("scores")?,
                method: reader.string("method")?,
                seed: reader.u64("seed")?,
            },
            11 => Entry::RewardPaid {
                study_id: reader.string("study_id")?,
                round: reader.u32("round")?,
                pdc_id: reader.string("pdc_id")?,
                amount: reader.f64("amount")?,
            },
            12 => Entry::PrivacySpent {
                study_id: reader.string("study_id")?,
                round: reader.u32("round")?,
                pdc_id: reader.string("pdc_id")?,
                epsilon: reader.f64("epsilon")?,
                delta: reader.f64("delta")?,
            },
            13 => Entry::StudyClosed { study_id: reader.string("study_id")?, state: reader.string("state")? },
            14 => Entry::BudgetDeclared {
                pdc_id: reader.string("pdc_id")?,
                dataset: reader.string("dataset")?,
                epsilon: reader.f64("epsilon")?,
                delta: reader.f64("delta")?,
            },
            15 => Entry::RewardsAllotted {
                study_id: reader.string("study_id")?,
                round: reader.u32("round")?,
                budget: reader.f64("budget")?,
                carried_over: reader.bool("carried_over")?,
            },
            16 => Entry::CentralDpRelease {
                study_id: reader.string("study_id")?,
                round: reader.u32("round")?,
                release_hash: reader.array("release_hash")?,
                clip_norm: reader.f64("clip_norm")?,
                noise_std: reader.f64("noise_std")?,
                epsilon: reader.f64("epsilon")?,
                delta: reader.f64("delta")?,
            },
            17 => Entry::CoalitionValues {
                study_id: reader.string("study_id")?,
                round: reader.u32("round")?,
                values: reader.pairs("values")?,
            },
            18 => Entry::StatisticsReleased {
                release: StatisticsRelease {
                    scope: reader.string("scope")?,
                    pdc_id: reader.string("pdc_id")?,
                    kind: reader.statistic_kind()?,
                    dataset: reader.string("dataset")?,
                    noise_multiplier: reader.f64("noise_multiplier")?,
                    values: reader.f64s("values")?,
                    epsilon: reader.f64("epsilon")?,
                    delta: reader.f64("delta")?,
                },
                signature: reader.array("signature")?,
            },
            19 => Entry::StandardizationFitted {
                study_id: reader.string("study_id")?,
                contributors: reader.strings("contributors")?,
                mean: reader.f64s("mean")?,
                std: reader.f64s("std")?,
            },
            20 => Entry::ConsortiumRecorded { file_hash: reader.array("file_hash")?, members: reader.u32("members")? },
            21 => Entry::KeyRevoked {
                pdc_id: reader.string("pdc_id")?,
                key: reader.array("key")?,
                reason: reader.string("reason")?,
            },
            22 => Entry::ManifestSigned {
                study_id: reader.string("study_id")?,
                researcher_id: reader.string("researcher_id")?,
                manifest_hash: reader.array("manifest_hash")?,
                signature: reader.array("signature")?,
            },
            tag => return Err(EntryError::UnknownTag { tag }),
        };
        let remaining = reader.remaining();
        if remaining != 0 {
            return Err(EntryError::TrailingBytes { offset: reader.offset, count: remaining });
        }
        Ok(entry)
    }

    /// Checks the signature a signed entry carries against `key`, the signer's registered key.
    ///
    /// `ConsentGranted` and `ConsentRevoked` are signed over [`signing::consent_message`];
    /// `ContributionAccepted` over [`Contribution::signing_bytes`]; `StatisticsReleased` over
    /// [`StatisticsRelease::signing_bytes`]; `KeyRotated` over [`signing::rotate_message`], by the
    /// old key; `ManifestSigned` over [`signing::manifest_message`], by the researcher. Other kinds carry no signature and give
    /// [`EntryError::Unsigned`].
    pub fn verify_signature(&self, key: &PublicKey) -> Result<(), EntryError> {
        let (message, signature, signer) = match self {
            Entry::ConsentGranted { study_id, pdc_id, manifest_hash, signature, conditions: None } => {
                (signing::consent_message(ConsentAction::Grant, study_id, manifest_hash), signature, pdc_id)
            }
            Entry::ConsentGranted { study_id, pdc_id, manifest_hash, signature, conditions: Some(conditions) } => {
                (signing::conditional_consent_message(study_id, manifest_hash, conditions), signature, pdc_id)
            }
            Entry::ConsentRevoked { study_id, pdc_id, manifest_hash, signature } => {
                (signing::consent_message(ConsentAction::Revoke, study_id, manifest_hash), signature, pdc_id)
            }
            Entry::ContributionAccepted { contribution, signature } => {
                (contribution.signing_bytes(), signature, &contribution.pdc_id)
            }
            Entry::KeyRotated { pdc_id, old_key, new_key, signature } => {
                (signing::rotate_message(pdc_id, old_key, new_key), signature, pdc_id)
            }
            Entry::StatisticsReleased { release, signature } => (release.signing_bytes(), signature, &release.pdc_id),
            Entry::ManifestSigned { study_id: _, researcher_id, manifest_hash, signature } => {
                (signing::manifest_message(researcher_id, manifest_hash), signature, researcher_id)
            }
            other => return Err(EntryError::Unsigned { kind: other.kind() }),
        };
        key.verify(&message, signature, signer)?;
        Ok(())
    }
}

struct Writer(Vec<u8>);

impl Writer {
    fn bytes(&mut self, bytes: &[u8]) {
        self.0.extend_from_slice(bytes);
    }

    fn u32(&mut self, value: u32) {
        self.bytes(&value.to_le_bytes());
    }

    fn u64(&mut self, value: u64) {
        self.bytes(&value.to_le_bytes());
    }

    fn f64(&mut self, value: f64) {
        self.u64(value.to_bits());
    }

    fn length(&mut self, length: usize) {
        self.u32(u32::try_from(length).expect("a string or vector in a ledger entry exceeds u32::MAX"));
    }

    fn string(&mut self, value: &str) {
        self.length(value.len());
        self.bytes(value.as_bytes());
    }

    fn strings(&mut self, values: &[String]) {
        self.length(values.len());
        for value in values {
            self.string(value);
        }
    }

    fn pairs(&mut self, values: &[(String, f64)]) {
        self.length(values.len());
        for (name, value) in values {
            self.string(name);
            self.f64(*value);
        }
    }

    fn f64s(&mut self, values: &[f64]) {
        self.length(values.len());
        for value in values {
            self.f64(*value);
        }
    }
}

type Reader<'a> = Cursor<'a, EntryError>;

impl From<Truncated> for EntryError {
    fn from(Truncated { what, offset, needed, remaining }: Truncated) -> Self {
        EntryError::Truncated { what, offset, needed, remaining }
    }
}

impl Reader<'_> {
    fn f64(&mut self, what: &'static str) -> Result<f64, EntryError> {
        let offset = self.offset;
        let bits = self.u64(what)?;
        let value = f64::from_bits(bits);
        if !value.is_finite() {
            return Err(EntryError::NonFiniteFloat { what, offset, bits });
        }
        Ok(value)
    }

    fn bool(&mut self, what: &'static str) -> Result<bool, EntryError> {
        let offset = self.offset;
        match self.u8(what)? {
            0 => Ok(false),
            1 => Ok(true),
            value => Err(EntryError::InvalidBool { what, offset, value }),
        }
    }

    fn role(&mut self) -> Result<Role, EntryError> {
        let offset = self.offset;
        let code = self.u8("role")?;
        Role::from_code(code).ok_or(EntryError::UnknownRole { code, offset })
    }

    /// Reads a `u32` length or count whose items take at least `min_item_size` bytes each, and checks that the
    /// rest of the input can hold them before the caller allocates anything.
    fn length(&mut self, what: &'static str, min_item_size: usize) -> Result<usize, EntryError> {
        let offset = self.offset;
        let length = self.u32(what)?;
        let claimed = u64::from(length) * min_item_size as u64;
        let remaining = self.remaining();
        if claimed > remaining as u64 {
            return Err(EntryError::LengthBeyondInput { what, offset, claimed, remaining });
        }
        Ok(length as usize)
    }

    fn string(&mut self, what: &'static str) -> Result<String, EntryError> {
        let length = self.length(what, 1)?;
        let offset = self.offset;
        let bytes = self.take(what, length)?;
        let text = std::str::from_utf8(bytes).map_err(|_| EntryError::InvalidUtf8 { what, offset })?;
        Ok(text.to_owned())
    }

    fn strings(&mut self, what: &'static str) -> Result<Vec<String>, EntryError> {
        // Each string is at least its 4-byte length.
        let count = self.length(what, 4)?;
        (0..count).map(|_| self.string(what)).collect()
    }

    fn pairs(&mut self, what: &'static str) -> Result<Vec<(String, f64)>, EntryError> {
        // Each pair is at least a 4-byte string length and an 8-byte float.
        let count = self.length(what, 12)?;
        (0..count).map(|_| Ok((self.string(what)?, self.f64(what)?))).collect()
    }

    fn f64s(&mut self, what: &'static str) -> Result<Vec<f64>, EntryError> {
        let count = self.length(what, 8)?;
        (0..count).map(|_| self.f64(what)).collect()
    }

    fn conditions(&mut self) -> Result<ConsentConditions, EntryError> {
        let max_rounds =
            if self.bool("conditions.max_rounds flag")? { Some(self.u32("conditions.max_rounds")?) } else { None };
        let max_epsilon =
            if self.bool("conditions.max_epsilon flag")? { Some(self.f64("conditions.max_epsilon")?) } else { None };
        let expires_at_ms = if self.bool("conditions.expires_at_ms flag")? {
            Some(self.u64("conditions.expires_at_ms")?)
        } else {
            None
        };
        Ok(ConsentConditions { max_rounds, max_epsilon, expires_at_ms })
    }

    fn statistic_kind(&mut self) -> Result<StatisticKind, EntryError> {
        let offset = self.offset;
        let code = self.u8("statistic kind")?;
        StatisticKind::from_code(code).ok_or(EntryError::UnknownStatisticKind { code, offset })
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::Identity;

    fn finite() -> impl Strategy<Value = f64> {
        prop_oneof![any::<f64>().prop_filter("finite", |v| v.is_finite()), Just(0.0), Just(-0.0), Just(f64::MIN)]
    }

    fn text() -> impl Strategy<Value = String> {
        prop_oneof![".{0,12}", Just(String::new()), Just("hôpital-é".to_owned())]
    }

    fn claim() -> impl Strategy<Value = PrivacyClaim> {
        (text(), finite(), finite(), any::<u64>(), finite(), finite(), finite()).prop_map(
            |(dataset, noise_multiplier, sampling_rate, steps, clip_norm, epsilon, delta)| PrivacyClaim {
                dataset,
                noise_multiplier,
                sampling_rate,
                steps,
                clip_norm,
                epsilon,
                delta,
            },
        )
    }

    fn conditions() -> impl Strategy<Value = ConsentConditions> {
        (prop::option::of(any::<u32>()), prop::option::of(finite()), prop::option::of(any::<u64>())).prop_map(
            |(max_rounds, max_epsilon, expires_at_ms)| ConsentConditions { max_rounds, max_epsilon, expires_at_ms },
        )
    }

    fn role() -> impl Strategy<Value = Role> {
        prop_oneof![
            Just(Role::Coordinator),
            Just(Role::Hospital),
            Just(Role::Researcher),
            Just(Role::Auditor),
            Just(Role::Witness)
        ]
    }

    fn names() -> impl Strategy<Value = Vec<String>> {
        prop::collection::vec(text(), 0..4)
    }

    fn pairs() -> impl Strategy<Value = Vec<(String, f64)>> {
        prop::collection::vec((text(), finite()), 0..4)
    }

    fn entry() -> impl Strategy<Value = Entry> {
        let hash = any::<[u8; 32]>();
        let signature = prop::collection::vec(any::<u8>(), 64).prop_map(|v| <[u8; 64]>::try_from(v).unwrap());
        prop_oneof![
            (text(), role(), hash).prop_map(|(pdc_id, role, public_key)| Entry::MemberRegistered {
                pdc_id,
                role,
                public_key
            }),
            (text(), hash, hash, signature.clone()).prop_map(|(pdc_id, old_key, new_key, signature)| {
                Entry::KeyRotated { pdc_id, old_key, new_key, signature }
            }),
            (text(), hash).prop_map(|(study_id, manifest_hash)| Entry::StudyCreated { study_id, manifest_hash }),
            (text(), text(), hash, signature.clone(), prop::option::of(conditions())).prop_map(
                |(study_id, pdc_id, manifest_hash, signature, conditions)| Entry::ConsentGranted {
                    study_id,
                    pdc_id,
                    manifest_hash,
                    signature,
                    conditions
                }
            ),
            (text(), text(), hash, signature.clone()).prop_map(|(study_id, pdc_id, manifest_hash, signature)| {
                Entry::ConsentRevoked { study_id, pdc_id, manifest_hash, signature }
            }),
            (text(), any::<u32>(), names(), hash).prop_map(|(study_id, round, participants, model_hash)| {
                Entry::RoundOpened { study_id, round, participants, model_hash }
            }),
            (
                (text(), any::<u32>(), text(), any::<u64>(), any::<u64>(), hash, finite(), signature.clone()),
                prop::option::of(claim()),
            )
                .prop_map(
                    |(
                        (study_id, round, pdc_id, n_examples, n_parameters, update_hash, train_loss, signature),
                        privacy,
                    )| {
                        Entry::ContributionAccepted {
                            contribution: Contribution {
                                study_id,
                                round,
                                pdc_id,
                                n_examples,
                                n_parameters,
                                update_hash,
                                train_loss,
                                privacy,
                            },
                            signature,
                        }
                    }
                ),
            (text(), any::<u32>(), text(), text()).prop_map(|(study_id, round, pdc_id, reason)| {
                Entry::UpdateRejected { study_id, round, pdc_id, reason }
            }),
            (text(), any::<u32>(), hash, names(), pairs()).prop_map(
                |(study_id, round, model_hash, contributors, metrics)| Entry::RoundAggregated {
                    study_id,
                    round,
                    model_hash,
                    contributors,
                    metrics
                }
            ),
            (text(), any::<u32>(), pairs(), text(), any::<u64>()).prop_map(
                |(study_id, round, scores, method, seed)| Entry::UtilityScores {
                    study_id,
                    round,
                    scores,
                    method,
                    seed
                }
            ),
            (text(), any::<u32>(), text(), finite()).prop_map(|(study_id, round, pdc_id, amount)| {
                Entry::RewardPaid { study_id, round, pdc_id, amount }
            }),
            (text(), any::<u32>(), text(), finite(), finite()).prop_map(|(study_id, round, pdc_id, epsilon, delta)| {
                Entry::PrivacySpent { study_id, round, pdc_id, epsilon, delta }
            }),
            (text(), text()).prop_map(|(study_id, state)| Entry::StudyClosed { study_id, state }),
            (text(), text(), finite(), finite()).prop_map(|(pdc_id, dataset, epsilon, delta)| {
                Entry::BudgetDeclared { pdc_id, dataset, epsilon, delta }
            }),
            (text(), any::<u32>(), finite(), any::<bool>()).prop_map(|(study_id, round, budget, carried_over)| {
                Entry::RewardsAllotted { study_id, round, budget, carried_over }
            }),
            (text(), any::<u32>(), hash, finite(), finite(), finite(), finite()).prop_map(
                |(study_id, round, release_hash, clip_norm, noise_std, epsilon, delta)| Entry::CentralDpRelease {
                    study_id,
                    round,
                    release_hash,
                    clip_norm,
                    noise_std,
                    epsilon,
                    delta,
                }
            ),
            (text(), any::<u32>(), pairs()).prop_map(|(study_id, round, values)| Entry::CoalitionValues {
                study_id,
                round,
                values,
            }),
            (
                (text(), text(), any::<bool>(), text(), finite()),
                (prop::collection::vec(finite(), 0..5), finite(), finite(), signature.clone()),
            )
                .prop_map(
                    |((scope, pdc_id, counts, dataset, noise_multiplier), (values, epsilon, delta, signature))| {
                        let kind = if counts { StatisticKind::CohortCounts } else { StatisticKind::FeatureSummary };
                        let release = StatisticsRelease {
                            scope,
                            pdc_id,
                            kind,
                            dataset,
                            noise_multiplier,
                            values,
                            epsilon,
                            delta,
                        };
                        Entry::StatisticsReleased { release, signature }
                    }
                ),
            (text(), names(), prop::collection::vec(finite(), 0..4), prop::collection::vec(finite(), 0..4)).prop_map(
                |(study_id, contributors, mean, std)| Entry::StandardizationFitted {
                    study_id,
                    contributors,
                    mean,
                    std
                }
            ),
            (hash, any::<u32>()).prop_map(|(file_hash, members)| Entry::ConsortiumRecorded { file_hash, members }),
            (text(), hash, text()).prop_map(|(pdc_id, key, reason)| Entry::KeyRevoked { pdc_id, key, reason }),
            (text(), text(), hash, signature.clone()).prop_map(
                |(study_id, researcher_id, manifest_hash, signature)| Entry::ManifestSigned {
                    study_id,
                    researcher_id,
                    manifest_hash,
                    signature
                }
            ),
        ]
    }

    /// Compares floats by bits, so that `-0.0` must come back as `-0.0`.
    fn same(a: &Entry, b: &Entry) -> bool {
        a.encode() == b.encode() && a == b
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

        #[test]
        fn encode_decode_round_trips(entry in entry()) {
            let bytes = entry.encode();
            let decoded = Entry::decode(&bytes).unwrap();
            prop_assert!(same(&decoded, &entry), "{decoded:?} != {entry:?}");
        }

        #[test]
        fn every_truncation_is_rejected(entry in entry()) {
            let bytes = entry.encode();
            for length in 0..bytes.len() {
                // Cut just before its claim, a private contribution reads as one without a claim; its signature,
                // which covered the claim, then no longer verifies.
                if let Ok(Entry::ContributionAccepted { contribution, .. }) = Entry::decode(&bytes[..length]) {
                    let Entry::ContributionAccepted { contribution: full, .. } = &entry else { unreachable!() };
                    prop_assert!(full.privacy.is_some() && contribution.privacy.is_none());
                    continue;
                }
                // Likewise a conditional consent cut just before its conditions, whose signature then fails.
                if let Ok(Entry::ConsentGranted { conditions, .. }) = Entry::decode(&bytes[..length]) {
                    let Entry::ConsentGranted { conditions: full, .. } = &entry else { unreachable!() };
                    prop_assert!(full.is_some() && conditions.is_none());
                    continue;
                }
                let error = Entry::decode(&bytes[..length]).unwrap_err();
                prop_assert!(
                    matches!(error, EntryError::Truncated { .. } | EntryError::LengthBeyondInput { .. }),
                    "length {length}: {error}"
                );
            }
        }

        #[test]
        fn trailing_bytes_are_rejected(entry in entry(), extra in prop::collection::vec(any::<u8>(), 1..8)) {
            // A 1 after a contribution without a claim starts one, so it is no longer a trailing byte.
            let claimless = matches!(&entry, Entry::ContributionAccepted { contribution, .. } if contribution.privacy.is_none());
            let unconditional = matches!(&entry, Entry::ConsentGranted { conditions: None, .. });
            prop_assume!(!((claimless || unconditional) && extra[0] == 1));
            let mut bytes = entry.encode();
            let offset = bytes.len();
            bytes.extend_from_slice(&extra);
            let error = Entry::decode(&bytes).unwrap_err();
            prop_assert!(matches!(error, EntryError::TrailingBytes { offset: o, count } if o == offset && count == extra.len()), "{error}");
        }

        #[test]
        fn decoding_arbitrary_bytes_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
            if let Ok(entry) = Entry::decode(&bytes) {
                // Whatever decodes is canonical: it re-encodes to the same bytes.
                prop_assert_eq!(entry.encode(), bytes);
            }
        }
    }

    /// One entry of each kind, with small, readable values.
    fn samples() -> Vec<Entry> {
        let contribution = Contribution {
            study_id: "s".into(),
            round: 2,
            pdc_id: "h".into(),
            n_examples: 100,
            n_parameters: 7,
            update_hash: [0xcc; 32],
            train_loss: 0.5,
            privacy: None,
        };
        vec![
            Entry::MemberRegistered { pdc_id: "h".into(), role: Role::Hospital, public_key: [0xaa; 32] },
            Entry::KeyRotated { pdc_id: "h".into(), old_key: [0xaa; 32], new_key: [0xbb; 32], signature: [0x55; 64] },
            Entry::StudyCreated { study_id: "s".into(), manifest_hash: [0x11; 32] },
            Entry::ConsentGranted {
                study_id: "s".into(),
                pdc_id: "h".into(),
                manifest_hash: [0x11; 32],
                signature: [0x55; 64],
                conditions: None,
            },
            Entry::ConsentRevoked {
                study_id: "s".into(),
                pdc_id: "h".into(),
                manifest_hash: [0x11; 32],
                signature: [0x66; 64],
            },
            Entry::RoundOpened {
                study_id: "s".into(),
                round: 2,
                participants: vec!["h".into(), "i".into()],
                model_hash: [0x22; 32],
            },
            Entry::ContributionAccepted { contribution, signature: [0x77; 64] },
            Entry::UpdateRejected { study_id: "s".into(), round: 2, pdc_id: "h".into(), reason: "norm".into() },
            Entry::RoundAggregated {
                study_id: "s".into(),
                round: 2,
                model_hash: [0x33; 32],
                contributors: vec!["h".into()],
                metrics: vec![("loss".into(), 0.25)],
            },
            Entry::UtilityScores {
                study_id: "s".into(),
                round: 2,
                scores: vec![("h".into(), 1.0)],
                method: "loo".into(),
                seed: 42,
            },
            Entry::RewardPaid { study_id: "s".into(), round: 2, pdc_id: "h".into(), amount: 1.5 },
            Entry::PrivacySpent { study_id: "s".into(), round: 2, pdc_id: "h".into(), epsilon: 0.5, delta: 1e-5 },
            Entry::StudyClosed { study_id: "s".into(), state: "completed".into() },
            Entry::BudgetDeclared { pdc_id: "h".into(), dataset: "d".into(), epsilon: 8.0, delta: 1e-5 },
            Entry::RewardsAllotted { study_id: "s".into(), round: 2, budget: 100.0, carried_over: true },
            Entry::CentralDpRelease {
                study_id: "s".into(),
                round: 2,
                release_hash: [0xdd; 32],
                clip_norm: 1.0,
                noise_std: 0.5,
                epsilon: 2.0,
                delta: 1e-5,
            },
            Entry::CoalitionValues {
                study_id: "s".into(),
                round: 2,
                values: vec![(String::new(), 0.5), ("a+b".into(), 0.75)],
            },
            Entry::StatisticsReleased {
                release: StatisticsRelease {
                    scope: "s".into(),
                    pdc_id: "h".into(),
                    kind: StatisticKind::FeatureSummary,
                    dataset: "d".into(),
                    noise_multiplier: 2.0,
                    values: vec![10.0, -1.5, 0.25],
                    epsilon: 0.5,
                    delta: 1e-5,
                },
                signature: [0x88; 64],
            },
            Entry::StandardizationFitted {
                study_id: "s".into(),
                contributors: vec!["h".into()],
                mean: vec![4.0],
                std: vec![2.0],
            },
            Entry::ConsortiumRecorded { file_hash: [0x99; 32], members: 3 },
            Entry::KeyRevoked { pdc_id: "h".into(), key: [0xaa; 32], reason: "gone".into() },
            Entry::ManifestSigned {
                study_id: "s".into(),
                researcher_id: "r".into(),
                manifest_hash: [0x11; 32],
                signature: [0x44; 64],
            },
        ]
    }

    /// The version-1 encodings of [`samples`]. A change here is a format change: bump [`FORMAT_VERSION`] and keep
    /// a decoder for the old version rather than editing these.
    const GOLDEN: [&str; 22] = [
        "0101010000006802aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
        concat!(
            "01020100000068aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaabbbbbbbbbbbbbbbbbb",
            "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb555555555555555555555555555555555555555555555555",
            "55555555555555555555555555555555555555555555555555555555555555555555555555555555",
        ),
        "010301000000731111111111111111111111111111111111111111111111111111111111111111",
        concat!(
            "010401000000730100000068111111111111111111111111111111111111111111111111111111111111111155555555",
            "555555555555555555555555555555555555555555555555555555555555555555555555555555555555555555555555",
            "555555555555555555555555",
        ),
        concat!(
            "010501000000730100000068111111111111111111111111111111111111111111111111111111111111111166666666",
            "666666666666666666666666666666666666666666666666666666666666666666666666666666666666666666666666",
            "666666666666666666666666",
        ),
        concat!(
            "010601000000730200000002000000010000006801000000692222222222222222222222222222222222222222222222",
            "222222222222222222",
        ),
        concat!(
            "0107010000007302000000010000006864000000000000000700000000000000cccccccccccccccccccccccccccccccc",
            "cccccccccccccccccccccccccccccccc000000000000e03f777777777777777777777777777777777777777777777777",
            "77777777777777777777777777777777777777777777777777777777777777777777777777777777",
        ),
        "01080100000073020000000100000068040000006e6f726d",
        concat!(
            "010901000000730200000033333333333333333333333333333333333333333333333333333333333333330100000001",
            "0000006801000000040000006c6f7373000000000000d03f",
        ),
        "010a010000007302000000010000000100000068000000000000f03f030000006c6f6f2a00000000000000",
        "010b0100000073020000000100000068000000000000f83f",
        "010c0100000073020000000100000068000000000000e03ff168e388b5f8e43e",
        "010d010000007309000000636f6d706c65746564",
        "010e010000006801000000640000000000002040f168e388b5f8e43e",
        "010f010000007302000000000000000000594001",
        concat!(
            "0110010000007302000000dddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddddd000000000000f03f",
            "000000000000e03f0000000000000040f168e388b5f8e43e",
        ),
        "01110100000073020000000200000000000000000000000000e03f03000000612b62000000000000e83f",
        concat!(
            "0112010000007301000000680101000000640000000000000040030000000000000000002440000000000000f8bf0000",
            "00000000d03f000000000000e03ff168e388b5f8e43e8888888888888888888888888888888888888888888888888888",
            "8888888888888888888888888888888888888888888888888888888888888888888888888888",
        ),
        "01130100000073010000000100000068010000000000000000001040010000000000000000000040",
        "0114999999999999999999999999999999999999999999999999999999999999999903000000",
        "01150100000068aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa04000000676f6e65",
        concat!(
            "011601000000730100000072111111111111111111111111111111111111111111111111111111111111111144444444",
            "444444444444444444444444444444444444444444444444444444444444444444444444444444444444444444444444",
            "444444444444444444444444",
        ),
    ];

    #[test]
    fn golden_encodings_are_stable() {
        let samples = samples();
        let actual: Vec<String> = samples.iter().map(|entry| hex::encode(entry.encode())).collect();
        assert_eq!(actual, GOLDEN, "actual:\n{actual:#?}");
        for (entry, golden) in samples.iter().zip(GOLDEN) {
            assert_eq!(&Entry::decode(&hex::decode(golden).unwrap()).unwrap(), entry);
        }
        // Every kind appears once, in tag order.
        let tags: Vec<u8> = samples.iter().map(Entry::tag).collect();
        assert_eq!(tags, (1..=22).collect::<Vec<u8>>());
    }

    #[test]
    fn a_privacy_claim_follows_the_signature_and_is_signed() {
        let Entry::ContributionAccepted { mut contribution, .. } = samples().swap_remove(6) else { unreachable!() };
        let claimless = contribution.signing_bytes();
        contribution.privacy = Some(PrivacyClaim {
            dataset: "d".into(),
            noise_multiplier: 1.5,
            sampling_rate: 0.25,
            steps: 3,
            clip_norm: 1.0,
            epsilon: 2.0,
            delta: 1e-5,
        });
        let identity = Identity::generate();
        let entry = Entry::ContributionAccepted {
            signature: identity.sign(&contribution.signing_bytes()),
            contribution: contribution.clone(),
        };
        let bytes = entry.encode();
        expect_test::expect![[r#"
            0107010000007302000000010000006864000000000000000700000000000000cccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccc000000000000e03f
            010100000064000000000000f83f000000000000d03f0300000000000000000000000000f03f0000000000000040f168e388b5f8e43e"#]]
        .assert_eq(&format!("{}\n{}", hex::encode(&bytes[..72]), hex::encode(&bytes[72 + 64..])));
        assert_eq!(Entry::decode(&bytes).unwrap(), entry);
        entry.verify_signature(&identity.public_key()).unwrap();
        // The claim is part of what was signed: the same signature does not cover the claimless contribution.
        assert_ne!(claimless, contribution.signing_bytes());
        let Entry::ContributionAccepted { mut contribution, signature } = entry else { unreachable!() };
        contribution.privacy.as_mut().unwrap().epsilon = 1.0;
        assert!(
            Entry::ContributionAccepted { contribution, signature }.verify_signature(&identity.public_key()).is_err()
        );
        // A claim cut short is an error naming the field.
        let error = Entry::decode(&bytes[..bytes.len() - 4]).unwrap_err().to_string();
        assert!(error.contains("privacy.delta"), "{error}");
    }

    #[test]
    fn bad_version_and_tag_are_rejected_with_their_offset() {
        let bytes = samples()[2].encode();
        let mut wrong_version = bytes.clone();
        wrong_version[0] = 2;
        assert!(matches!(Entry::decode(&wrong_version), Err(EntryError::UnsupportedVersion { version: 2 })));
        for tag in [0, 23, 255] {
            let mut wrong_tag = bytes.clone();
            wrong_tag[1] = tag;
            assert!(matches!(Entry::decode(&wrong_tag), Err(EntryError::UnknownTag { tag: t }) if t == tag));
        }
        assert!(matches!(Entry::decode(&[]), Err(EntryError::Truncated { offset: 0, .. })));
    }

    #[test]
    fn a_huge_length_is_rejected_before_allocating() {
        // StudyCreated whose study_id claims 4 GiB.
        let bytes = [1, 3, 0xff, 0xff, 0xff, 0xff, b'x'];
        let error = Entry::decode(&bytes).unwrap_err();
        assert!(
            matches!(error, EntryError::LengthBeyondInput { offset: 2, claimed: 0xffff_ffff, remaining: 1, .. }),
            "{error}"
        );
        // RoundOpened whose participant count claims 2^32 - 1 strings in 8 bytes.
        let mut bytes = vec![1, 6, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff];
        bytes.extend_from_slice(&[0; 8]);
        let error = Entry::decode(&bytes).unwrap_err();
        assert!(matches!(error, EntryError::LengthBeyondInput { offset: 10, remaining: 8, .. }), "{error}");
    }

    #[test]
    fn invalid_utf8_non_finite_floats_bad_booleans_and_unknown_roles_are_rejected() {
        let bytes = [1, 3, 1, 0, 0, 0, 0xff];
        let mut bytes = bytes.to_vec();
        bytes.extend_from_slice(&[0; 32]);
        assert!(matches!(Entry::decode(&bytes), Err(EntryError::InvalidUtf8 { offset: 6, .. })));

        for bad in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
            let entry = Entry::RewardPaid { study_id: "s".into(), round: 2, pdc_id: "h".into(), amount: bad };
            let error = Entry::decode(&entry.encode()).unwrap_err();
            // version, tag, "s" (4 + 1), round (4), "h" (4 + 1).
            assert!(matches!(error, EntryError::NonFiniteFloat { what: "amount", offset: 16, .. }), "{error}");
        }

        let mut bytes = samples()[14].encode();
        let last = bytes.len() - 1;
        bytes[last] = 2;
        assert!(matches!(
            Entry::decode(&bytes),
            Err(EntryError::InvalidBool { what: "carried_over", value: 2, offset }) if offset == last
        ));

        let mut bytes = samples()[0].encode();
        // version, tag, "h" (4 + 1): the role byte.
        bytes[7] = 9;
        assert!(matches!(Entry::decode(&bytes), Err(EntryError::UnknownRole { code: 9, offset: 7 })));
    }

    #[test]
    fn signatures_verify_for_consent_and_contributions() {
        let identity = Identity::from_seed([9; 32]);
        let key = identity.public_key();
        let manifest_hash = [4; 32];
        let grant = signing::consent_message(ConsentAction::Grant, "s", &manifest_hash);
        let revoke = signing::consent_message(ConsentAction::Revoke, "s", &manifest_hash);
        let granted = Entry::ConsentGranted {
            study_id: "s".into(),
            pdc_id: "h".into(),
            manifest_hash,
            signature: identity.sign(&grant),
            conditions: None,
        };
        granted.verify_signature(&key).unwrap();
        // Conditions follow the signature and are signed: dropping or changing them breaks the signature.
        let conditions =
            ConsentConditions { max_rounds: Some(5), max_epsilon: Some(2.0), expires_at_ms: Some(1_800_000_000_000) };
        let conditional = Entry::ConsentGranted {
            study_id: "s".into(),
            pdc_id: "h".into(),
            manifest_hash,
            signature: identity.sign(&signing::conditional_consent_message("s", &manifest_hash, &conditions)),
            conditions: Some(conditions),
        };
        conditional.verify_signature(&key).unwrap();
        let bytes = conditional.encode();
        expect_test::expect!["0101050000000100000000000000400100505c18a3010000"]
            .assert_eq(&hex::encode(&bytes[bytes.len() - 24..]));
        assert_eq!(Entry::decode(&bytes).unwrap(), conditional);
        let Entry::ConsentGranted { study_id, pdc_id, signature, .. } = conditional.clone() else { unreachable!() };
        let stripped = Entry::ConsentGranted {
            study_id: study_id.clone(),
            pdc_id: pdc_id.clone(),
            manifest_hash,
            signature,
            conditions: None,
        };
        assert!(stripped.verify_signature(&key).is_err(), "conditions cannot be dropped");
        let loosened = Entry::ConsentGranted {
            study_id,
            pdc_id,
            manifest_hash,
            signature,
            conditions: Some(ConsentConditions { max_rounds: Some(50), ..conditions }),
        };
        assert!(loosened.verify_signature(&key).is_err(), "conditions cannot be changed");
        let mut bad_flag = bytes.clone();
        let flag_at = bytes.len() - 24 + 6;
        bad_flag[flag_at] = 2;
        let error = Entry::decode(&bad_flag).unwrap_err();
        assert!(matches!(error, EntryError::InvalidBool { what: "conditions.max_epsilon flag", .. }), "{error}");
        let revoked = Entry::ConsentRevoked {
            study_id: "s".into(),
            pdc_id: "h".into(),
            manifest_hash,
            signature: identity.sign(&revoke),
        };
        revoked.verify_signature(&key).unwrap();
        // A grant signature cannot be passed off as a revocation.
        let replayed = Entry::ConsentRevoked {
            study_id: "s".into(),
            pdc_id: "h".into(),
            manifest_hash,
            signature: identity.sign(&grant),
        };
        assert!(matches!(
            replayed.verify_signature(&key),
            Err(EntryError::Signature(crate::Error::BadSignature { .. }))
        ));

        let Entry::ContributionAccepted { contribution, .. } = samples().swap_remove(6) else { unreachable!() };
        let accepted =
            Entry::ContributionAccepted { signature: identity.sign(&contribution.signing_bytes()), contribution };
        accepted.verify_signature(&key).unwrap();
        let other = Identity::from_seed([8; 32]).public_key();
        assert!(accepted.verify_signature(&other).is_err());
        let Entry::ContributionAccepted { mut contribution, signature } = accepted else { unreachable!() };
        contribution.n_examples += 1;
        let altered = Entry::ContributionAccepted { contribution, signature };
        assert!(altered.verify_signature(&key).is_err());

        assert!(matches!(samples()[2].verify_signature(&key), Err(EntryError::Unsigned { kind: "StudyCreated" })));
    }
}
