//! What this PDC consented to, per study: the SHA3-256 of the manifest text it signed and the conditions it signed
//! with it, kept in a file next to its key so that a restarted agent still knows them. A task is acted on only when
//! it passes the checks here, all before anything is downloaded, trained or spent: its study is one the PDC
//! consented to, its manifest is byte for byte the one signed ([`check_manifest`]), its round is within the study's
//! rounds and the consent's conditions ([`check_round`]), and what it would cost keeps the study within the
//! consent's `max_epsilon` and the study's own `target_epsilon` ([`check_epsilon`]). The checks are pure: the time
//! is passed in.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use pdc_ledger::signing::ConsentConditions;
use pdc_ledger::{Hash, sha3_256};
use serde::{Deserialize, Serialize};

use crate::training::StudyTerms;
use crate::{Error, FailureCategory, Result};

/// The consent file's format version.
const FORMAT: u32 = 1;

/// Relative slack when comparing a study's ε with its `target_epsilon`: the study calibrated σ with the same
/// accountant over all its steps at once, and composing round by round may differ in the last bits.
const TARGET_TOLERANCE: f64 = 1e-9;

/// One study's consent, as the PDC signed it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ConsentRecord {
    /// SHA3-256 of the manifest text the PDC read and signed.
    pub manifest_hash: Hash,
    /// The conditions signed with it (all absent for an unconditional consent).
    pub conditions: ConsentConditions,
}

/// Why a task is refused: the category the coordinator is told, and the detail the hospital's log keeps.
#[derive(Clone, Debug, PartialEq)]
pub struct Refusal {
    /// What the coordinator is told.
    pub category: FailureCategory,
    /// Why, for the local log only.
    pub detail: String,
}

impl Refusal {
    /// A refusal of `category` for `detail`.
    pub fn new(category: FailureCategory, detail: impl Into<String>) -> Self {
        Self { category, detail: detail.into() }
    }

    /// The agent's error for this refusal of `study_id`'s `round`.
    pub fn into_error(self, study_id: &str, round: u32) -> Error {
        Error::TaskRefused { study_id: study_id.to_owned(), round, category: self.category, detail: self.detail }
    }
}

/// The PDC's consents, backed by their file.
#[derive(Debug)]
pub struct ConsentStore {
    path: PathBuf,
    studies: BTreeMap<String, ConsentRecord>,
}

#[derive(Serialize, Deserialize)]
struct ConsentFile {
    format: u32,
    studies: BTreeMap<String, RecordFile>,
}

#[derive(Serialize, Deserialize)]
struct RecordFile {
    manifest_hash: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    max_rounds: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    max_epsilon: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    expires_at_ms: Option<u64>,
}

impl ConsentStore {
    /// Where the consents of the PDC whose key is `key_file` are kept: next to it, `<key stem>.consents.json`.
    pub fn path_for(key_file: &Path) -> PathBuf {
        key_file.with_extension("consents.json")
    }

    /// Opens the consent file at `path`; a missing file holds no consent (it is written at the first one).
    ///
    /// # Errors
    ///
    /// [`Error::Config`] if the file cannot be read or is malformed.
    pub fn open(path: &Path) -> Result<Self> {
        let error = |detail: String| Error::Config { path: path.to_owned(), detail };
        if !path.exists() {
            return Ok(Self { path: path.to_owned(), studies: BTreeMap::new() });
        }
        let text = std::fs::read_to_string(path).map_err(|e| error(e.to_string()))?;
        let file: ConsentFile = serde_json::from_str(&text).map_err(|e| error(e.to_string()))?;
        if file.format != FORMAT {
            return Err(error(format!("format {} is not the supported {FORMAT}", file.format)));
        }
        let mut studies = BTreeMap::new();
        for (study_id, record) in file.studies {
            let manifest_hash = hex::decode(&record.manifest_hash)
                .ok()
                .and_then(|bytes| Hash::try_from(bytes).ok())
                .ok_or_else(|| error(format!("study {study_id}: the manifest hash is not 64 hex digits")))?;
            let conditions = ConsentConditions {
                max_rounds: record.max_rounds,
                max_epsilon: record.max_epsilon,
                expires_at_ms: record.expires_at_ms,
            };
            studies.insert(study_id, ConsentRecord { manifest_hash, conditions });
        }
        Ok(Self { path: path.to_owned(), studies })
    }

    /// The consent to `study_id`, if the PDC gave one.
    pub fn get(&self, study_id: &str) -> Option<&ConsentRecord> {
        self.studies.get(study_id)
    }

    /// Records the consent to `study_id` (replacing an earlier one) and writes the file before returning.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] if the file cannot be written; then nothing is recorded.
    pub fn record(&mut self, study_id: &str, record: ConsentRecord) -> Result<()> {
        let previous = self.studies.insert(study_id.to_owned(), record);
        if let Err(error) = self.write() {
            match previous {
                Some(previous) => self.studies.insert(study_id.to_owned(), previous),
                None => self.studies.remove(study_id),
            };
            return Err(error);
        }
        Ok(())
    }

    fn write(&self) -> Result<()> {
        let studies = self
            .studies
            .iter()
            .map(|(study_id, record)| {
                let conditions = record.conditions;
                let file = RecordFile {
                    manifest_hash: hex::encode(record.manifest_hash),
                    max_rounds: conditions.max_rounds,
                    max_epsilon: conditions.max_epsilon,
                    expires_at_ms: conditions.expires_at_ms,
                };
                (study_id.clone(), file)
            })
            .collect();
        let error = |detail: String| Error::Config { path: self.path.clone(), detail };
        let text =
            serde_json::to_string_pretty(&ConsentFile { format: FORMAT, studies }).map_err(|e| error(e.to_string()))?;
        crate::durable::replace_file(&self.path, text.as_bytes()).map_err(|e| error(format!("cannot write: {e}")))
    }
}

/// Checks that a task's study is one this PDC consented to (`record`) and that `manifest_toml` is the text it
/// signed; returns the terms parsed from it.
///
/// # Errors
///
/// A [`Refusal`]: [`FailureCategory::NotConsented`] without a consent, [`FailureCategory::ManifestMismatch`] when the
/// text's hash differs (a `[privacy]` table stripped, say), [`FailureCategory::InvalidTask`] if the signed text does
/// not parse.
pub fn check_manifest(record: Option<&ConsentRecord>, manifest_toml: &str) -> Result<StudyTerms, Refusal> {
    let Some(record) = record else {
        return Err(Refusal::new(FailureCategory::NotConsented, "this PDC has not consented to the study"));
    };
    let hash = sha3_256(manifest_toml.as_bytes());
    if hash != record.manifest_hash {
        return Err(Refusal::new(
            FailureCategory::ManifestMismatch,
            format!(
                "the task's manifest hashes to {}, not to the {} this PDC consented to",
                hex::encode(hash),
                hex::encode(record.manifest_hash)
            ),
        ));
    }
    StudyTerms::parse(manifest_toml)
        .map_err(|e| Refusal::new(FailureCategory::InvalidTask, format!("unreadable manifest: {e}")))
}

/// Checks that training `round` is within the study's rounds and the consent's `max_rounds` and expiry at `now_ms`
/// (Unix milliseconds).
///
/// # Errors
///
/// A [`Refusal`]: [`FailureCategory::InvalidTask`] for round 0, [`FailureCategory::OutsideConsent`] otherwise.
pub fn check_round(record: &ConsentRecord, terms: &StudyTerms, round: u32, now_ms: u64) -> Result<(), Refusal> {
    let outside = |detail: String| Err(Refusal::new(FailureCategory::OutsideConsent, detail));
    if round == 0 {
        return Err(Refusal::new(FailureCategory::InvalidTask, "a training task for round 0"));
    }
    if round > terms.training.rounds {
        return outside(format!("round {round} is beyond the study's {} rounds", terms.training.rounds));
    }
    let conditions = record.conditions;
    if let Some(max_rounds) = conditions.max_rounds
        && round > max_rounds
    {
        return outside(format!("round {round} is beyond the consent's max_rounds = {max_rounds}"));
    }
    if let Some(expires_at_ms) = conditions.expires_at_ms
        && now_ms >= expires_at_ms
    {
        return outside(format!("the consent expired at {expires_at_ms} ms (now {now_ms} ms)"));
    }
    Ok(())
}

/// Checks what a release would bring this study's own ε to: `with_release` (every release for the study, this
/// one included, composed alone, at the budget's δ) against the consent's `max_epsilon`, and `training` (the
/// study's training rounds alone, at the manifest's δ) against the study's `target_epsilon`, which calibrated σ for
/// exactly those rounds. `training` is `None` for a statistics release.
///
/// # Errors
///
/// A [`FailureCategory::EpsilonCap`] [`Refusal`] naming the cap.
pub fn check_epsilon(
    conditions: &ConsentConditions,
    with_release: f64,
    target_epsilon: Option<f64>,
    training: Option<f64>,
) -> Result<(), Refusal> {
    if let Some(cap) = conditions.max_epsilon
        && with_release > cap
    {
        return Err(Refusal::new(
            FailureCategory::EpsilonCap,
            format!("the study's ε would reach {with_release}, above the consent's max_epsilon = {cap}"),
        ));
    }
    if let (Some(target), Some(training)) = (target_epsilon, training)
        && training > target * (1.0 + TARGET_TOLERANCE)
    {
        return Err(Refusal::new(
            FailureCategory::EpsilonCap,
            format!("the study's training ε would reach {training}, above its target_epsilon = {target}"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const MANIFEST: &str = "name = \"s\"\nmodel = { kind = \"logistic_regression\" }\n[data]\ntask = \
                            \"binary_classification\"\nlabel = \"y\"\nfeatures = [\"a\"]\n[training]\nrounds = 3\n\
                            local_epochs = 1\nbatch_size = 8\nlearning_rate = 0.1\n\
                            [privacy]\nclip_norm = 1.0\nnoise_multiplier = 1.0\ndelta = 1e-5\n";

    fn record(conditions: ConsentConditions) -> ConsentRecord {
        ConsentRecord { manifest_hash: sha3_256(MANIFEST.as_bytes()), conditions }
    }

    #[test]
    fn a_task_needs_a_consent_and_the_very_manifest_signed() {
        let consented = record(ConsentConditions::default());
        assert!(check_manifest(Some(&consented), MANIFEST).unwrap().privacy.is_some());
        let refusal = check_manifest(None, MANIFEST).unwrap_err();
        assert_eq!(refusal.category, FailureCategory::NotConsented);
        // The same study without its [privacy] table is another manifest.
        let stripped = MANIFEST.split("[privacy]").next().unwrap();
        let refusal = check_manifest(Some(&consented), stripped).unwrap_err();
        assert_eq!(refusal.category, FailureCategory::ManifestMismatch);
        assert!(refusal.detail.contains(&hex::encode(consented.manifest_hash)), "{}", refusal.detail);
        // A trailing space is another manifest too: the hash is over the text.
        let refusal = check_manifest(Some(&consented), &format!("{MANIFEST} ")).unwrap_err();
        assert_eq!(refusal.category, FailureCategory::ManifestMismatch);
    }

    #[test]
    fn rounds_are_held_to_the_study_and_the_consent() {
        let terms = StudyTerms::parse(MANIFEST).unwrap();
        let open = record(ConsentConditions::default());
        assert!(check_round(&open, &terms, 1, 0).is_ok() && check_round(&open, &terms, 3, 0).is_ok());
        assert_eq!(check_round(&open, &terms, 0, 0).unwrap_err().category, FailureCategory::InvalidTask);
        let beyond = check_round(&open, &terms, 4, 0).unwrap_err();
        assert_eq!(beyond.category, FailureCategory::OutsideConsent);
        assert!(beyond.detail.contains("beyond the study's 3 rounds"), "{}", beyond.detail);

        let limited = record(ConsentConditions { max_rounds: Some(2), expires_at_ms: Some(1_000), max_epsilon: None });
        assert!(check_round(&limited, &terms, 2, 999).is_ok());
        let refusal = check_round(&limited, &terms, 3, 0).unwrap_err();
        assert!(refusal.detail.contains("max_rounds = 2"), "{}", refusal.detail);
        let refusal = check_round(&limited, &terms, 1, 1_000).unwrap_err();
        assert_eq!(refusal.category, FailureCategory::OutsideConsent);
        assert!(refusal.detail.contains("expired"), "{}", refusal.detail);
    }

    #[test]
    fn epsilon_is_held_to_the_consent_cap_and_the_study_target() {
        let capped = ConsentConditions { max_epsilon: Some(2.0), ..ConsentConditions::default() };
        assert!(check_epsilon(&capped, 2.0, None, None).is_ok());
        let refusal = check_epsilon(&capped, 2.01, None, None).unwrap_err();
        assert_eq!(refusal.category, FailureCategory::EpsilonCap);
        assert!(refusal.detail.contains("max_epsilon = 2"), "{}", refusal.detail);
        let open = ConsentConditions::default();
        assert!(check_epsilon(&open, 9.0, Some(1.0), Some(1.0 + 1e-12)).is_ok());
        let refusal = check_epsilon(&open, 9.0, Some(1.0), Some(1.001)).unwrap_err();
        assert!(refusal.detail.contains("target_epsilon = 1"), "{}", refusal.detail);
        // A statistics release has no training ε to compare with the target.
        assert!(check_epsilon(&open, 9.0, Some(1.0), None).is_ok());
    }

    #[test]
    fn consents_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let path = ConsentStore::path_for(&dir.path().join("hospital-a.key"));
        assert_eq!(path, dir.path().join("hospital-a.consents.json"));
        let mut store = ConsentStore::open(&path).unwrap();
        assert!(store.get("s").is_none() && !path.exists());
        let conditions = ConsentConditions { max_rounds: Some(4), max_epsilon: Some(1.5), expires_at_ms: None };
        store.record("s", record(conditions)).unwrap();
        let reopened = ConsentStore::open(&path).unwrap();
        assert_eq!(reopened.get("s"), Some(&record(conditions)));
        std::fs::write(&path, "{\"format\": 1, \"studies\": {\"s\": {\"manifest_hash\": \"zz\"}}}").unwrap();
        let error = ConsentStore::open(&path).unwrap_err().to_string();
        assert!(error.contains("not 64 hex digits"), "{error}");
    }
}
