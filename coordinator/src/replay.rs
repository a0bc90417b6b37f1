//! Replaying a study from its archives: an auditor with a copy of the coordinator's data folder recomputes every
//! round's aggregate, validation metrics, Shapley values and rewards, and compares them with what the ledger says.
//!
//! The inputs are the ledger's entries, the study's archived manifest and validation set
//! (`<data_dir>/studies/<study>/`), and the update archive (`<data_dir>/updates/`), in which every accepted update
//! is stored under its SHA3-256 id. Nothing the coordinator computed is trusted:
//!
//! 1. the archived manifest must hash to the `StudyCreated` entry's manifest hash, and the initial model derived
//!    from it must be the one the first `RoundOpened` names;
//! 2. for each aggregated round, its contributions are the `ContributionAccepted` entries after the round's last
//!    `RoundOpened`, taken in PDC-id order as the coordinator aggregates them; each archived update must hash to
//!    the id its PDC signed;
//! 3. the round is aggregated with the study's rule and server optimiser by the coordinator's own code, evaluated
//!    on the validation set and valued with the recorded seed, and the entries that record it (left-out updates,
//!    the aggregate with its model hash and metrics, utilities, allotment, payments) are rebuilt and compared
//!    byte for byte with the ledger's;
//! 4. every `RoundOpened` must name the model the replay holds at that point;
//! 5. a study that standardises federatedly is replayed with the `StandardizationFitted` its rounds used, after
//!    checking that it is exactly the pooling of the PDCs' signed `StatisticsReleased` summaries (the DP noise is
//!    inside the signed releases, so the pooling is deterministic).
//!
//! Aggregation, valuation and evaluation are deterministic, so an honest study replays bit for bit. Local DP noise
//! is added inside the PDCs, before the update is signed, and is therefore part of the archived input; central DP
//! noise is drawn by the coordinator from a CSPRNG and cannot be recomputed, so a central DP round is replayed
//! from its recorded release (`CentralDpRelease`, archived under its hash): the replay checks that the release is
//! the archived one and that the round's model follows from it.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;
use std::sync::Mutex;

use pdc_ledger::entry::Entry;
use pdc_ledger::hash::{StreamHasher, parameters_hash};
use pdc_ledger::{Hash, sha3_256};

use crate::archive::UpdateArchive;
use crate::pipeline::{
    Aggregated, CentralRelease, LEFT_OUT_PREFIX, RootData, ValuationInputs, aggregate, aggregation_entries,
    value_contributions,
};
use crate::round::AcceptedUpdate;
use crate::service::{PreparedStudy, prepare_study, read_archived_study};
use crate::{Error, Result};

/// Pieces an archived update is hashed in, in parameters.
const HASH_PIECE: usize = 1 << 16;

/// What replaying one round found.
#[derive(Clone, Debug, PartialEq)]
pub struct RoundReplay {
    /// The round.
    pub round: u32,
    /// The recomputed model's SHA3-256.
    pub model_hash: Hash,
    /// Every mismatch between the ledger and the recomputation; empty when the round replays exactly.
    pub differences: Vec<String>,
}

/// What replaying a study found.
#[derive(Clone, Debug, PartialEq)]
pub struct ReplayReport {
    /// The study.
    pub study_id: String,
    /// Problems with the study's inputs (manifest, initial model) and with rounds that could not be replayed.
    pub problems: Vec<String>,
    /// The archived manifest's warnings ([`crate::manifest::Manifest::warnings`]): choices the coordinator warned
    /// about at creation. They do not fail the replay.
    pub warnings: Vec<String>,
    /// Each aggregated round, in ledger order, up to the first that could not be replayed.
    pub rounds: Vec<RoundReplay>,
}

impl ReplayReport {
    /// Whether everything replayed exactly.
    pub fn passed(&self) -> bool {
        self.problems.is_empty() && self.rounds.iter().all(|round| round.differences.is_empty())
    }
}

impl fmt::Display for ReplayReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let differing = self.rounds.iter().filter(|round| !round.differences.is_empty()).count();
        if self.passed() {
            writeln!(f, "PASS: study {} replays bit for bit ({} rounds)", self.study_id, self.rounds.len())?;
        } else {
            writeln!(
                f,
                "FAIL: study {}: {} problems, {differing} of {} rounds differ",
                self.study_id,
                self.problems.len(),
                self.rounds.len()
            )?;
        }
        for warning in &self.warnings {
            writeln!(f, "  warning: {warning}")?;
        }
        for problem in &self.problems {
            writeln!(f, "  {problem}")?;
        }
        for round in &self.rounds {
            let verdict = if round.differences.is_empty() { "identical" } else { "DIFFERS" };
            writeln!(f, "  round {:>4}: model {}  {verdict}", round.round, hex::encode(round.model_hash))?;
            for difference in &round.differences {
                writeln!(f, "    {difference}")?;
            }
        }
        Ok(())
    }
}

/// Re-pools a federated standardisation from the PDCs' signed feature summaries on the ledger and compares it with
/// the recorded `StandardizationFitted`; returns the standardiser the rounds used (the recorded one), or `None`
/// when the ledger records none.
fn replay_standardization(
    manifest: &crate::manifest::Manifest,
    study_entries: &[&Entry],
    report: &mut ReplayReport,
) -> Option<pdc_models::Standardizer> {
    let (contributors, mean, std) = study_entries.iter().find_map(|entry| match entry {
        Entry::StandardizationFitted { contributors, mean, std, .. } => Some((contributors, mean, std)),
        _ => None,
    })?;
    let recorded = pdc_privacy::stats::GlobalStandardization { mean: mean.clone(), std: std.clone(), count: 0.0 };
    let settings = manifest.federated_standardization.as_ref().expect("checked by the caller");
    let inputs = settings.noise_multiplier().and_then(|z| Ok((z, settings.bounds_for(&manifest.data.features)?)));
    let (noise_multiplier, bounds) = match inputs {
        Ok(inputs) => inputs,
        Err(error) => {
            report.problems.push(format!("the manifest's federated standardisation does not resolve: {error}"));
            return Some(pdc_models::Standardizer::from(&recorded));
        }
    };
    let mut summaries = Vec::new();
    for contributor in contributors {
        let release = study_entries.iter().find_map(|entry| match entry {
            Entry::StatisticsReleased { release, .. } if release.pdc_id == *contributor => Some(release),
            _ => None,
        });
        let Some(release) = release else {
            report.problems.push(format!("the standardisation pools {contributor}, which released no summary"));
            continue;
        };
        match pdc_privacy::stats::NoisyFeatureSummary::from_values(&bounds, noise_multiplier, &release.values) {
            Ok(summary) if release.noise_multiplier == noise_multiplier => summaries.push(summary),
            Ok(_) => report.problems.push(format!(
                "{contributor}'s summary was released at noise {}, the manifest states {noise_multiplier}",
                release.noise_multiplier
            )),
            Err(error) => report.problems.push(format!("{contributor}'s summary is malformed: {error}")),
        }
    }
    if summaries.len() == contributors.len() {
        match pdc_privacy::stats::combine_feature_summaries(&summaries) {
            Ok(pooled) if pooled.mean == recorded.mean && pooled.std == recorded.std => {}
            Ok(_) => report
                .problems
                .push("the recorded standardisation is not the pooling of the recorded feature summaries".to_owned()),
            Err(error) => report.problems.push(format!("the recorded feature summaries do not pool: {error}")),
        }
    }
    Some(pdc_models::Standardizer::from(&recorded))
}

/// One aggregated round as the ledger tells it.
struct LedgerRound {
    round: u32,
    /// Its contributions, by PDC id (the order the coordinator aggregates them in).
    contributions: BTreeMap<String, AcceptedUpdate>,
    /// The entries that recorded its aggregation, in ledger order.
    recorded: Vec<Entry>,
}

/// Replays `study_id` from the ledger `entries` (decoded, in log order), the study's archive folder `study_dir`
/// (holding [`crate::service::ARCHIVED_MANIFEST`] and [`crate::service::ARCHIVED_VALIDATION`]) and the update
/// `archive`.
///
/// # Errors
///
/// Only for inputs that cannot be read at all (a missing archive file, a study the ledger never created);
/// every mismatch is reported in the [`ReplayReport`].
pub fn replay_study(
    entries: &[Entry],
    study_id: &str,
    study_dir: &Path,
    archive: &UpdateArchive,
) -> Result<ReplayReport> {
    let (manifest_bytes, validation_csv) = read_archived_study(study_dir)?;
    let mut report =
        ReplayReport { study_id: study_id.to_owned(), problems: Vec::new(), warnings: Vec::new(), rounds: Vec::new() };
    let created = entries.iter().find_map(|entry| match entry {
        Entry::StudyCreated { study_id: id, manifest_hash } if id == study_id => Some(*manifest_hash),
        _ => None,
    });
    let Some(manifest_hash) = created else {
        return Err(Error::UnknownStudy(format!("{study_id} (the ledger records no StudyCreated for it)")));
    };
    if sha3_256(&manifest_bytes) != manifest_hash {
        report.problems.push(format!(
            "the archived manifest hashes to {}, the ledger created the study with {}",
            hex::encode(sha3_256(&manifest_bytes)),
            hex::encode(manifest_hash)
        ));
        return Ok(report);
    }
    let manifest_text = String::from_utf8(manifest_bytes)
        .map_err(|e| Error::InvalidArgument { field: "manifest", detail: format!("not UTF-8: {e}") })?;
    let PreparedStudy {
        manifest,
        mut validation,
        raw_validation,
        spec,
        mut global,
        optimizer,
        manifest_hash: derived,
        ..
    } = prepare_study(&manifest_text, &validation_csv)?;
    if derived != manifest_hash {
        report.problems.push("the archived manifest is not in canonical form".to_owned());
        return Ok(report);
    }
    report.warnings = manifest.warnings();
    let optimizer = Mutex::new(optimizer);

    let study_entries: Vec<&Entry> = entries.iter().filter(|entry| entry.study_id() == Some(study_id)).collect();
    if manifest.federated_standardization.is_some() {
        match replay_standardization(&manifest, &study_entries, &mut report) {
            Some(standardizer) => {
                validation = raw_validation;
                standardizer.apply(&mut validation)?;
            }
            None if study_entries.iter().any(|entry| matches!(entry, Entry::RoundAggregated { .. })) => {
                report.problems.push(
                    "the study standardises federatedly but the ledger records no StandardizationFitted".to_owned(),
                );
                return Ok(report);
            }
            None => {}
        }
    }
    let mut rounds: Vec<LedgerRound> = Vec::new();
    let mut open: BTreeMap<String, AcceptedUpdate> = BTreeMap::new();
    // (round, model hash) of each RoundOpened, in order, checked as the replay reaches them.
    let mut openings: Vec<(u32, Hash)> = Vec::new();
    for entry in &study_entries {
        match entry {
            Entry::RoundOpened { round, model_hash, .. } => {
                open.clear();
                openings.push((*round, *model_hash));
            }
            Entry::ContributionAccepted { contribution, .. } => {
                let update =
                    AcceptedUpdate { n_examples: contribution.n_examples, update_hash: contribution.update_hash };
                open.insert(contribution.pdc_id.clone(), update);
            }
            Entry::RoundAggregated { round, .. } => rounds.push(LedgerRound {
                round: *round,
                contributions: std::mem::take(&mut open),
                recorded: Vec::new(),
            }),
            _ => {}
        }
    }
    for round in &mut rounds {
        round.recorded = study_entries
            .iter()
            .filter(|entry| is_aggregation_record(entry, round.round))
            .map(|entry| (*entry).clone())
            .collect();
    }

    let budget = manifest.rewards.budget_per_round;
    let mut carried = 0.0;
    let mut next_opening = 0;
    for ledger_round in &rounds {
        let round = ledger_round.round;
        // Every opening up to this round's must name the model the replay holds now.
        while let Some(&(opened, model_hash)) = openings.get(next_opening) {
            if opened > round {
                break;
            }
            if model_hash != parameters_hash(&global) {
                report.problems.push(format!(
                    "round {opened} was opened with model {}, but the replay holds {} at that point",
                    hex::encode(model_hash),
                    hex::encode(parameters_hash(&global))
                ));
            }
            next_opening += 1;
        }
        let mut missing = Vec::new();
        for (pdc_id, update) in &ledger_round.contributions {
            if let Err(problem) = check_archived(archive, &update.update_hash, global.len()) {
                missing.push(format!("round {round}: the archived update of {pdc_id} {problem}"));
            }
        }
        if !missing.is_empty() {
            // Without its inputs the round cannot be recomputed, and no later round can either.
            report.problems.extend(missing);
            report.problems.push(format!("replay stopped at round {round}"));
            break;
        }
        let contributions: Vec<(String, AcceptedUpdate)> =
            ledger_round.contributions.iter().map(|(id, update)| (id.clone(), update.clone())).collect();
        let mut aggregated = if manifest.central_privacy.is_some() {
            // The noise cannot be recomputed: the round starts from its recorded, archived release.
            let release = ledger_round.recorded.iter().find_map(|entry| match entry {
                Entry::CentralDpRelease { release_hash, .. } => Some((*release_hash, entry.clone())),
                _ => None,
            });
            let Some((release_hash, entry)) = release else {
                report.problems.push(format!("round {round} of a central DP study has no CentralDpRelease"));
                break;
            };
            if let Err(problem) = check_archived(archive, &release_hash, global.len()) {
                report.problems.push(format!("round {round}: the archived central DP release {problem}"));
                report.problems.push(format!("replay stopped at round {round}"));
                break;
            }
            let mean = archive.read(&release_hash)?;
            Aggregated {
                model: crate::aggregation::apply_delta(&global, &mean)?,
                excluded: Vec::new(),
                valuation: None,
                release: Some(CentralRelease { entry, mean }),
                flagged: Vec::new(),
            }
        } else {
            let root = RootData::new(&manifest, &spec, &validation, round);
            aggregate(archive, &global, &contributions, &manifest.aggregation, &optimizer, &root)?
        };
        if budget > 0.0 {
            let inputs = ValuationInputs {
                round,
                budget,
                carried_in: carried,
                seed: crate::rewards::round_seed(manifest.seed, round),
                settings: &manifest.valuation,
            };
            let valuation =
                value_contributions(archive, &spec, &global, &validation, &contributions, &aggregated, inputs)?;
            carried = valuation.carried_over;
            aggregated.valuation = Some(valuation);
        }
        let metrics = pdc_models::evaluate(&spec, &aggregated.model, &validation)?;
        let model_hash = parameters_hash(&aggregated.model);
        let (_, mut expected) = aggregation_entries(
            study_id,
            round,
            &contributions,
            &aggregated.excluded,
            model_hash,
            &metrics,
            &aggregated.valuation,
        );
        if let Some(release) = aggregated.release.take() {
            expected.insert(expected.len() - 1, release.entry);
        }
        let differences = compare(&ledger_round.recorded, &expected);
        report.rounds.push(RoundReplay { round, model_hash, differences });
        global = aggregated.model;
    }
    Ok(report)
}

/// Whether `entry` is one of those the coordinator appends when it aggregates `round`.
fn is_aggregation_record(entry: &Entry, round: u32) -> bool {
    match entry {
        Entry::UpdateRejected { round: r, reason, .. } => *r == round && reason.starts_with(LEFT_OUT_PREFIX),
        Entry::RoundAggregated { round: r, .. }
        | Entry::UtilityScores { round: r, .. }
        | Entry::RewardsAllotted { round: r, .. }
        | Entry::RewardPaid { round: r, .. }
        | Entry::CentralDpRelease { round: r, .. }
        | Entry::CoalitionValues { round: r, .. } => *r == round,
        _ => false,
    }
}

/// Checks that the archive holds `id` with `n_parameters` values hashing to it.
fn check_archived(archive: &UpdateArchive, id: &Hash, n_parameters: usize) -> std::result::Result<(), String> {
    let mut hasher = StreamHasher::new();
    let mut count = 0;
    let read = archive.read_pieces(id, HASH_PIECE, |_, values| {
        count += values.len();
        hasher.update(&pdc_ledger::hash::f32_bytes(values));
        Ok(())
    });
    match read {
        Err(error) => Err(format!("({}) cannot be read: {error}", hex::encode(id))),
        Ok(()) if count != n_parameters => {
            Err(format!("({}) has {count} parameters, the model has {n_parameters}", hex::encode(id)))
        }
        Ok(()) if hasher.finish() != *id => {
            Err(format!("({}) does not hash to its id: it was altered after it was accepted", hex::encode(id)))
        }
        Ok(()) => Ok(()),
    }
}

/// The differences between the recorded and the recomputed entries of a round, entry by entry.
fn compare(recorded: &[Entry], expected: &[Entry]) -> Vec<String> {
    let mut differences = Vec::new();
    for (index, pair) in recorded.iter().zip(expected).enumerate() {
        if pair.0.encode() != pair.1.encode() {
            differences.push(format!("entry {index}: the ledger has {:?}, the replay computes {:?}", pair.0, pair.1));
        }
    }
    if recorded.len() != expected.len() {
        differences.push(format!(
            "the ledger records {} entries for the round's aggregation, the replay computes {}",
            recorded.len(),
            expected.len()
        ));
    }
    differences
}
