//! The PDC's own record of the privacy its table has spent: every DP-SGD round it released, across all studies,
//! kept in a file that survives restarts, and never more than the declared budget. The budget is the table's, so
//! the accountant is cumulative over every study; what one study costs is accounted separately, from that study's
//! releases alone ([`SpendStore::study_epsilon`]).
//!
//! The file holds the budget and the list of releases (study, round, sampling rate, noise multiplier, steps),
//! each with the cumulative ε it brought the table to. Opening it replays every release into a fresh
//! [`RdpAccountant`] and checks each recorded ε against the replay, so a hand-edited or corrupted file is refused
//! rather than trusted. A release is committed — and the file rewritten atomically (temporary file, `fsync`,
//! rename, `fsync` of the folder) — before the update it protects leaves the PDC, so a crash can over-count a
//! round's spend (the update was never sent) but never under-count it.

use std::path::{Path, PathBuf};

use pdc_privacy::{Accountant, Budget, PrivacyBudget, RdpAccountant};
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// The file format's version.
const FORMAT: u32 = 1;
/// Relative tolerance between a recorded ε and its replay (the accountant is deterministic; this only absorbs
/// printing and parsing of floats).
const REPLAY_TOLERANCE: f64 = 1e-9;

/// One DP-SGD round the table was used for.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpendEvent {
    /// The study.
    pub study_id: String,
    /// The round.
    pub round: u32,
    /// The Poisson sampling rate of every step.
    pub sampling_rate: f64,
    /// The noise multiplier of every step.
    pub noise_multiplier: f64,
    /// The number of steps.
    pub steps: u64,
    /// The table's cumulative ε after this release, at the budget's δ.
    pub epsilon_after: f64,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SpendFile {
    format: u32,
    dataset: String,
    epsilon: f64,
    delta: f64,
    events: Vec<SpendEvent>,
}

/// A round the budget cannot afford.
#[derive(Clone, Debug, PartialEq)]
pub struct Unaffordable {
    /// The ε the table would reach.
    pub epsilon_after: f64,
    /// The ε already spent.
    pub spent: f64,
    /// The budget's ε.
    pub budget: f64,
}

impl std::fmt::Display for Unaffordable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the round would take the table's ε from {:.4} to {:.4}, beyond its budget of {}",
            self.spent, self.epsilon_after, self.budget
        )
    }
}

/// The spend of one dataset, backed by its file.
#[derive(Debug)]
pub struct SpendStore {
    path: PathBuf,
    dataset: String,
    budget: Budget,
    accountant: RdpAccountant,
    events: Vec<SpendEvent>,
}

impl SpendStore {
    /// Opens the spend file at `path` for `dataset` with budget `limit`, creating it (empty) if missing.
    ///
    /// # Errors
    ///
    /// [`Error::Spend`] if the file cannot be read or written, is malformed, records another dataset or budget (a
    /// budget is declared once), or its recorded spend does not replay.
    pub fn open(path: &Path, dataset: &str, limit: PrivacyBudget) -> Result<Self> {
        if !path.exists() {
            let store = Self {
                path: path.to_owned(),
                dataset: dataset.to_owned(),
                budget: Budget::new(limit),
                accountant: RdpAccountant::new(),
                events: Vec::new(),
            };
            store.write()?;
            return Ok(store);
        }
        let store = Self::load(path)?;
        let recorded = store.budget.limit();
        if store.dataset != dataset || recorded != limit {
            return Err(spend_error(
                path,
                format!(
                    "records dataset {:?} with a budget of (ε = {}, δ = {}), but the configuration declares {dataset:?} \
                     with (ε = {}, δ = {}); a budget is declared once: use a new dataset name and spend file for a \
                     new budget",
                    store.dataset,
                    recorded.epsilon(),
                    recorded.delta(),
                    limit.epsilon(),
                    limit.delta()
                ),
            ));
        }
        Ok(store)
    }

    /// Reads a spend file and replays it, without a configuration to compare it with (`pdc hospital budget`).
    ///
    /// # Errors
    ///
    /// As [`SpendStore::open`], except that a missing file is an error too.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| spend_error(path, e.to_string()))?;
        let file: SpendFile = serde_json::from_str(&text).map_err(|e| spend_error(path, e.to_string()))?;
        if file.format != FORMAT {
            return Err(spend_error(path, format!("format {} is not the supported {FORMAT}", file.format)));
        }
        let limit = PrivacyBudget::new(file.epsilon, file.delta).map_err(|e| spend_error(path, e.to_string()))?;
        let mut accountant = RdpAccountant::new();
        let mut budget = Budget::new(limit);
        for (index, event) in file.events.iter().enumerate() {
            accountant
                .try_compose_poisson_gaussian(event.sampling_rate, event.noise_multiplier, event.steps)
                .map_err(|e| spend_error(path, format!("release {index}: {e}")))?;
            let replayed =
                budget.commit(&accountant).map_err(|e| spend_error(path, format!("release {index}: {e}")))?;
            if (replayed - event.epsilon_after).abs() > REPLAY_TOLERANCE * replayed.abs().max(1.0) {
                return Err(spend_error(
                    path,
                    format!(
                        "release {index} ({} round {}) records ε = {} but replays to {replayed}",
                        event.study_id, event.round, event.epsilon_after
                    ),
                ));
            }
        }
        Ok(Self { path: path.to_owned(), dataset: file.dataset, budget, accountant, events: file.events })
    }

    /// The dataset's name.
    pub fn dataset(&self) -> &str {
        &self.dataset
    }

    /// The budget.
    pub fn limit(&self) -> PrivacyBudget {
        self.budget.limit()
    }

    /// The ε spent so far.
    pub fn spent(&self) -> f64 {
        self.budget.spent_epsilon()
    }

    /// Every release so far, oldest first.
    pub fn events(&self) -> &[SpendEvent] {
        &self.events
    }

    /// Study `study_id`'s own ε at `delta` if a release of `steps` steps at `sampling_rate` and `noise_multiplier`
    /// were added to it: the study's recorded releases (its training rounds, and its statistics releases, round 0,
    /// unless `training_only`) composed in an accountant of their own. This, not the difference of the table's
    /// cumulative ε before and after, is what a study costs: the difference under-counts a study that follows
    /// another (1,000 steps at q = 0.01, σ = 1.1 cost ε ≈ 1.71 alone at δ = 1e-5, yet add only ≈ 0.67 after an
    /// identical study). Nothing is recorded.
    ///
    /// # Errors
    ///
    /// [`Error::Spend`] for parameters the accountant refuses.
    pub fn study_epsilon(
        &self,
        study_id: &str,
        (sampling_rate, noise_multiplier, steps): (f64, f64, u64),
        delta: f64,
        training_only: bool,
    ) -> Result<f64> {
        let mut alone = RdpAccountant::new();
        let recorded = self.events.iter().filter(|e| e.study_id == study_id && !(training_only && e.round == 0));
        for event in recorded {
            alone
                .try_compose_poisson_gaussian(event.sampling_rate, event.noise_multiplier, event.steps)
                .map_err(|e| spend_error(&self.path, e.to_string()))?;
        }
        alone
            .try_compose_poisson_gaussian(sampling_rate, noise_multiplier, steps)
            .map_err(|e| spend_error(&self.path, e.to_string()))?;
        alone.epsilon(delta).map_err(|e| spend_error(&self.path, e.to_string()))
    }

    /// The cumulative ε after a round of `steps` steps at `sampling_rate` and `noise_multiplier`, if the budget
    /// affords it; nothing is recorded.
    ///
    /// # Errors
    ///
    /// [`Error::Spend`] for parameters the accountant refuses (a rate outside `[0, 1]`, say).
    pub fn plan(&self, sampling_rate: f64, noise_multiplier: f64, steps: u64) -> Result<Result<f64, Unaffordable>> {
        let mut after = self.accountant.clone();
        after
            .try_compose_poisson_gaussian(sampling_rate, noise_multiplier, steps)
            .map_err(|e| spend_error(&self.path, e.to_string()))?;
        let epsilon_after =
            after.epsilon(self.budget.limit().delta()).map_err(|e| spend_error(&self.path, e.to_string()))?;
        if epsilon_after <= self.budget.limit().epsilon() {
            Ok(Ok(epsilon_after))
        } else {
            Ok(Err(Unaffordable { epsilon_after, spent: self.spent(), budget: self.budget.limit().epsilon() }))
        }
    }

    /// Records a release and writes the file before returning the cumulative ε it brings the table to.
    ///
    /// # Errors
    ///
    /// [`Error::Spend`] if the budget cannot afford it or the file cannot be written; then nothing is recorded.
    pub fn commit(
        &mut self,
        study_id: &str,
        round: u32,
        sampling_rate: f64,
        noise_multiplier: f64,
        steps: u64,
    ) -> Result<f64> {
        let epsilon_after = match self.plan(sampling_rate, noise_multiplier, steps)? {
            Ok(epsilon_after) => epsilon_after,
            Err(unaffordable) => return Err(spend_error(&self.path, unaffordable.to_string())),
        };
        let mut accountant = self.accountant.clone();
        accountant
            .try_compose_poisson_gaussian(sampling_rate, noise_multiplier, steps)
            .map_err(|e| spend_error(&self.path, e.to_string()))?;
        let event =
            SpendEvent { study_id: study_id.to_owned(), round, sampling_rate, noise_multiplier, steps, epsilon_after };
        self.events.push(event);
        if let Err(error) = self.write() {
            self.events.pop();
            return Err(error);
        }
        let mut budget = self.budget.clone();
        budget.commit(&accountant).map_err(|e| spend_error(&self.path, e.to_string()))?;
        self.budget = budget;
        self.accountant = accountant;
        Ok(epsilon_after)
    }

    fn write(&self) -> Result<()> {
        let limit = self.budget.limit();
        let file = SpendFile {
            format: FORMAT,
            dataset: self.dataset.clone(),
            epsilon: limit.epsilon(),
            delta: limit.delta(),
            events: self.events.clone(),
        };
        let text = serde_json::to_string_pretty(&file).map_err(|e| spend_error(&self.path, e.to_string()))?;
        crate::durable::replace_file(&self.path, text.as_bytes())
            .map_err(|e| spend_error(&self.path, format!("cannot write: {e}")))
    }
}

fn spend_error(path: &Path, detail: String) -> Error {
    Error::Spend { path: path.to_owned(), detail }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limit(epsilon: f64) -> PrivacyBudget {
        PrivacyBudget::new(epsilon, 1e-5).unwrap()
    }

    #[test]
    fn spend_survives_reopening_and_stops_at_the_budget() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.spend.json");
        let mut store = SpendStore::open(&path, "icu", limit(3.0)).unwrap();
        assert_eq!(store.spent(), 0.0);
        let first = store.commit("s", 1, 0.1, 1.5, 20).unwrap();
        let second = store.commit("s", 2, 0.1, 1.5, 20).unwrap();
        assert!(0.0 < first && first < second && second <= 3.0, "{first} {second}");

        // A restart reads the same spend back, and the accountant carries on from it.
        let mut reopened = SpendStore::open(&path, "icu", limit(3.0)).unwrap();
        assert_eq!(reopened.spent(), second);
        assert_eq!(reopened.events().len(), 2);
        let mut rounds = 2;
        loop {
            match reopened.plan(0.1, 1.5, 20).unwrap() {
                Ok(after) => {
                    rounds += 1;
                    assert_eq!(reopened.commit("s", rounds, 0.1, 1.5, 20).unwrap(), after);
                }
                Err(unaffordable) => {
                    assert!(unaffordable.epsilon_after > 3.0 && unaffordable.spent <= 3.0, "{unaffordable}");
                    break;
                }
            }
        }
        // Committing what the budget cannot afford is refused and changes nothing, in memory or on disk.
        let spent = reopened.spent();
        let error = reopened.commit("s", rounds + 1, 0.1, 1.5, 20).unwrap_err().to_string();
        assert!(error.contains("beyond its budget of 3"), "{error}");
        assert_eq!(reopened.spent(), spent);
        assert_eq!(SpendStore::load(&path).unwrap().spent(), spent);
        assert!(!dir.path().join("a.spend.json.tmp").exists());
    }

    #[test]
    fn a_study_is_accounted_alone_not_as_a_difference_of_the_cumulative_spend() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.spend.json");
        let mut store = SpendStore::open(&path, "icu", limit(10.0)).unwrap();
        let round = (0.01, 1.1, 1_000);
        let alone = store.study_epsilon("first", round, 1e-5, false).unwrap();
        store.commit("first", 1, round.0, round.1, round.2).unwrap();
        let before = store.spent();
        assert!((before - alone).abs() < 1e-12, "{before} vs {alone}");
        let difference = store.plan(round.0, round.1, round.2).unwrap().unwrap() - before;
        let second = store.study_epsilon("second", round, 1e-5, false).unwrap();
        assert!((second - 1.712).abs() < 1e-3, "an identical study costs what the first did alone: {second}");
        assert!((difference - 0.669).abs() < 1e-3, "the cumulative difference under-counts it: {difference}");
        // The first study's own ε grows with its next round; a statistics release (round 0) counts unless asked
        // for training alone.
        store.commit("first", 0, 1.0, 20.0, 1).unwrap();
        let with_stats = store.study_epsilon("first", round, 1e-5, false).unwrap();
        let training = store.study_epsilon("first", round, 1e-5, true).unwrap();
        assert!(with_stats > training && training > alone, "{with_stats} {training} {alone}");
        // A restart replays the same per-study figures from the file.
        let reopened = SpendStore::open(&path, "icu", limit(10.0)).unwrap();
        assert_eq!(reopened.study_epsilon("first", round, 1e-5, false).unwrap(), with_stats);
    }

    #[test]
    fn another_budget_or_a_tampered_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.spend.json");
        let mut store = SpendStore::open(&path, "icu", limit(3.0)).unwrap();
        store.commit("s", 1, 0.1, 1.5, 20).unwrap();
        let error = SpendStore::open(&path, "icu", limit(4.0)).unwrap_err().to_string();
        assert!(error.contains("a budget is declared once"), "{error}");
        let error = SpendStore::open(&path, "other", limit(3.0)).unwrap_err().to_string();
        assert!(error.contains("records dataset \"icu\""), "{error}");

        // Lowering a recorded ε (to hide spend) no longer replays.
        let text = std::fs::read_to_string(&path).unwrap();
        let file: SpendFile = serde_json::from_str(&text).unwrap();
        let recorded = file.events[0].epsilon_after;
        let tampered = text.replace(&format!("{recorded}"), &format!("{}", recorded / 2.0));
        std::fs::write(&path, tampered).unwrap();
        let error = SpendStore::open(&path, "icu", limit(3.0)).unwrap_err().to_string();
        assert!(error.contains("replays to"), "{error}");

        // Dropping the file's events is caught by nothing but the ledger, which keeps the PDC's signed spends;
        // malformed JSON and an unknown version are plain errors.
        std::fs::write(&path, "{").unwrap();
        assert!(SpendStore::open(&path, "icu", limit(3.0)).is_err());
        std::fs::write(&path, text.replace("\"format\": 1", "\"format\": 7")).unwrap();
        let error = SpendStore::open(&path, "icu", limit(3.0)).unwrap_err().to_string();
        assert!(error.contains("format 7"), "{error}");
    }
}
