//! The round pipeline: screen → aggregate → evaluate → value → reward, as functions over an [`UpdateSource`].
//!
//! One pipeline serves the three places that compute a round: the coordinator (`crate::service`, on a blocking
//! thread), `pdc audit replay` (`crate::replay`, which recomputes every round from the archive and compares the
//! entries with the ledger's) and the robustness harness (`pdc-robustness`, on updates held in memory). Nothing
//! here writes to disk, reads a clock or touches the network: updates are read through an [`UpdateSource`] (the
//! coordinator's archive, or [`MemoryUpdates`] in tests and simulations), and what must become durable (the
//! central DP release, the model, the entries) is returned for the caller to store and record.
//!
//! - [`screen`]: the checks an update passes before it may be aggregated.
//! - `aggregate` / [`aggregate_rows`] / `central_aggregate`: the round's new model under the manifest's rule,
//!   server optimiser and anomaly check, or DP-FedAvg.
//! - `value_contributions`: Shapley utilities and the reward split ([`crate::rewards`]).
//! - `aggregation_entries` / `reward_entries`: the ledger entries that record the round, in order.

use std::collections::BTreeMap;
use std::sync::Mutex;

use pdc_ledger::Hash;
use pdc_ledger::entry::Entry;
use pdc_models::{Dataset, Metrics, ModelSpec};
use pdc_privacy::clip::l2_norm;

use crate::aggregation::anomaly::AnomalyScore;
use crate::aggregation::rule::RoundInputs;
use crate::aggregation::{AggregationConfig, FedAvg, ServerState, aggregate_round, apply_delta};
use crate::archive::{UpdateArchive, UpdateReader};
use crate::manifest::{Manifest, UpdateChecks};
use crate::rewards::{RoundUpdate, RoundValuation, ValuationSettings};
use crate::round::AcceptedUpdate;
use crate::{Error, Result};

/// Pieces the aggregator reads from the archive at a time, in parameters (4 MiB).
pub(crate) const AGGREGATION_PIECE: usize = 1 << 20;

/// How the reason of an update the anomaly check left out of aggregation begins.
pub(crate) const LEFT_OUT_PREFIX: &str = "flagged and left out of aggregation: ";

/// Where the pipeline reads a round's updates from, by content hash.
pub trait UpdateSource {
    /// The whole update `id`.
    ///
    /// # Errors
    ///
    /// When the update is missing or cannot be read.
    fn read(&self, id: &Hash) -> Result<Vec<f32>>;

    /// The update `id`, to be read front to back in pieces, side by side with others.
    ///
    /// # Errors
    ///
    /// When the update is missing or cannot be opened.
    fn pieces(&self, id: &Hash) -> Result<Box<dyn PieceReader + '_>>;
}

/// An update read in consecutive pieces.
pub trait PieceReader {
    /// Replaces `values` by the next `len` values; an update that ends before them is an error.
    ///
    /// # Errors
    ///
    /// When the update is shorter or cannot be read.
    fn read_piece(&mut self, len: usize, values: &mut Vec<f32>) -> Result<()>;
}

impl UpdateSource for UpdateArchive {
    fn read(&self, id: &Hash) -> Result<Vec<f32>> {
        UpdateArchive::read(self, id)
    }

    fn pieces(&self, id: &Hash) -> Result<Box<dyn PieceReader + '_>> {
        Ok(Box::new(self.reader(id)?))
    }
}

impl PieceReader for UpdateReader {
    fn read_piece(&mut self, len: usize, values: &mut Vec<f32>) -> Result<()> {
        UpdateReader::read_piece(self, len, values)
    }
}

/// Updates held in memory, by the same content hash the archive uses: for tests and simulations.
#[derive(Clone, Debug, Default)]
pub struct MemoryUpdates {
    updates: BTreeMap<Hash, Vec<f32>>,
}

impl MemoryUpdates {
    /// Holds `values` and returns their hash ([`pdc_ledger::hash::parameters_hash`]).
    pub fn insert(&mut self, values: Vec<f32>) -> Hash {
        let id = pdc_ledger::hash::parameters_hash(&values);
        self.updates.insert(id, values);
        id
    }
}

impl UpdateSource for MemoryUpdates {
    fn read(&self, id: &Hash) -> Result<Vec<f32>> {
        self.updates.get(id).cloned().ok_or_else(|| missing(id))
    }

    fn pieces(&self, id: &Hash) -> Result<Box<dyn PieceReader + '_>> {
        let values = self.updates.get(id).ok_or_else(|| missing(id))?;
        Ok(Box::new(MemoryPieces { id: *id, values, offset: 0 }))
    }
}

fn missing(id: &Hash) -> Error {
    Error::Archive(std::io::Error::new(std::io::ErrorKind::NotFound, format!("no update {}", hex::encode(id))))
}

/// [`MemoryUpdates`]' piece reader.
struct MemoryPieces<'a> {
    id: Hash,
    values: &'a [f32],
    offset: usize,
}

impl PieceReader for MemoryPieces<'_> {
    fn read_piece(&mut self, len: usize, values: &mut Vec<f32>) -> Result<()> {
        let end = self.offset + len;
        let Some(piece) = self.values.get(self.offset..end) else {
            return Err(Error::Archive(std::io::Error::other(format!("update {} is truncated", hex::encode(self.id)))));
        };
        values.clear();
        values.extend_from_slice(piece);
        self.offset = end;
        Ok(())
    }
}

/// A study's central DP: the mechanism (with its adaptive clip norm) and the PDC-level accountant of its rounds.
pub(crate) struct CentralState {
    pub(crate) dp: pdc_privacy::central::CentralDp,
    pub(crate) accountant: pdc_privacy::RdpAccountant,
    pub(crate) delta: f64,
}

/// What a round's aggregation produced: the new model, and the updates its anomaly check left out (with why).
pub(crate) struct Aggregated {
    pub(crate) model: Vec<f32>,
    pub(crate) excluded: Vec<(String, String)>,
    /// The round's utilities and rewards, when the study pays rewards.
    pub(crate) valuation: Option<RoundValuation>,
    /// The central DP release the model follows from, when the study uses central DP.
    pub(crate) release: Option<CentralRelease>,
    /// The PDCs the anomaly check flagged this round (left out or not).
    pub(crate) flagged: Vec<String>,
}

/// A central DP round's release: its ledger entry, and the noisy mean it names by hash, which the caller archives
/// before the entry is recorded.
pub(crate) struct CentralRelease {
    pub(crate) entry: Entry,
    pub(crate) mean: Vec<f32>,
}

/// How many entries [`reward_entries`] makes for `valuation`.
pub(crate) fn valuation_entry_count(valuation: &Option<RoundValuation>) -> usize {
    valuation.as_ref().map_or(0, |valuation| reward_entries("", valuation).len())
}

/// DP-FedAvg: clips every update, adds the noise to their sum and charges the round to the study's accountant
/// (every selected PDC takes part, so the round is one Gaussian release at `z`). The noisy mean comes back in
/// [`Aggregated::release`] for the caller to archive.
pub(crate) fn central_aggregate(
    source: &dyn UpdateSource,
    study_id: &str,
    round: u32,
    global: &[f32],
    contributions: &[(String, AcceptedUpdate)],
    central: &Mutex<CentralState>,
) -> Result<Aggregated> {
    let deltas =
        contributions.iter().map(|(_, update)| source.read(&update.update_hash)).collect::<Result<Vec<Vec<f32>>>>()?;
    let updates: Vec<&[f32]> = deltas.iter().map(Vec::as_slice).collect();
    let mut state = central.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let state = &mut *state;
    let privacy = |e: pdc_privacy::Error| Error::Model(pdc_models::Error::from(e));
    let released = state.dp.aggregate(&updates).map_err(privacy)?;
    state.dp.record_round(&mut state.accountant, 1.0);
    let epsilon = pdc_privacy::Accountant::epsilon(&state.accountant, state.delta).map_err(privacy)?;
    // The archive names what it stores by the same hash.
    let release_hash = pdc_ledger::hash::parameters_hash(&released.mean);
    let entry = Entry::CentralDpRelease {
        study_id: study_id.to_owned(),
        round,
        release_hash,
        clip_norm: released.clip_norm,
        noise_std: released.noise_std,
        epsilon,
        delta: state.delta,
    };
    Ok(Aggregated {
        model: apply_delta(global, &released.mean)?,
        excluded: Vec::new(),
        valuation: None,
        release: Some(CentralRelease { entry, mean: released.mean }),
        flagged: Vec::new(),
    })
}

/// What valuing a round needs besides its updates.
pub(crate) struct ValuationInputs<'a> {
    pub(crate) round: u32,
    pub(crate) budget: f64,
    pub(crate) carried_in: f64,
    pub(crate) seed: u64,
    pub(crate) settings: &'a ValuationSettings,
}

/// The entries that record a round's aggregation, in the order the coordinator appends them: a rejection for each
/// update the anomaly check left out, the aggregate, then the valuation's entries. Returns the contributors too.
pub(crate) fn aggregation_entries(
    study_id: &str,
    round: u32,
    contributions: &[(String, AcceptedUpdate)],
    excluded: &[(String, String)],
    model_hash: Hash,
    validation: &Metrics,
    valuation: &Option<RoundValuation>,
) -> (Vec<String>, Vec<Entry>) {
    let contributors: Vec<String> = contributions
        .iter()
        .map(|(id, _)| id.clone())
        .filter(|id| !excluded.iter().any(|(left_out, _)| left_out == id))
        .collect();
    let mut entries: Vec<Entry> = excluded
        .iter()
        .map(|(pdc_id, reason)| Entry::UpdateRejected {
            study_id: study_id.to_owned(),
            round,
            pdc_id: pdc_id.clone(),
            reason: reason.clone(),
        })
        .collect();
    entries.push(Entry::RoundAggregated {
        study_id: study_id.to_owned(),
        round,
        model_hash,
        contributors: contributors.clone(),
        metrics: metric_pairs(validation),
    });
    if let Some(valuation) = valuation {
        entries.extend(reward_entries(study_id, valuation));
    }
    (contributors, entries)
}

/// Values every contribution of the round (Shapley values of the validation metric over coalitions aggregated
/// with FedAvg from `global`) and splits the round's budget; updates left out by the anomaly check count as
/// flagged and are paid nothing.
pub(crate) fn value_contributions(
    source: &dyn UpdateSource,
    spec: &ModelSpec,
    global: &[f32],
    validation: &Dataset,
    contributions: &[(String, AcceptedUpdate)],
    aggregated: &Aggregated,
    inputs: ValuationInputs<'_>,
) -> Result<RoundValuation> {
    let deltas =
        contributions.iter().map(|(_, update)| source.read(&update.update_hash)).collect::<Result<Vec<Vec<f32>>>>()?;
    let updates: Vec<RoundUpdate<'_>> = contributions
        .iter()
        .zip(&deltas)
        .map(|((pdc_id, update), delta)| RoundUpdate {
            pdc_id,
            n_examples: update.n_examples,
            delta,
            flagged: aggregated.excluded.iter().any(|(id, _)| id == pdc_id),
        })
        .collect();
    let round = crate::rewards::RoundInput {
        round: inputs.round,
        seed: inputs.seed,
        spec,
        global,
        validation,
        updates: &updates,
        settings: inputs.settings,
        aggregator: None,
        budget: inputs.budget,
        carried_in: inputs.carried_in,
    };
    crate::rewards::value_round(&round)
}

/// The ledger entries of a round's valuation: the utilities with how they were computed, the allotment, and one
/// payment per rewarded PDC (none when the budget was carried over).
pub(crate) fn reward_entries(study_id: &str, valuation: &RoundValuation) -> Vec<Entry> {
    let round = valuation.round;
    let values = valuation.coalitions.iter().map(|coalition| (coalition.members.join("+"), coalition.value)).collect();
    let mut entries = vec![
        Entry::CoalitionValues { study_id: study_id.to_owned(), round, values },
        Entry::UtilityScores {
            study_id: study_id.to_owned(),
            round,
            scores: valuation.utilities(),
            method: valuation.method.name().to_owned(),
            seed: valuation.seed,
        },
        Entry::RewardsAllotted {
            study_id: study_id.to_owned(),
            round,
            budget: valuation.budget + valuation.carried_in,
            carried_over: valuation.truncated,
        },
    ];
    if !valuation.truncated {
        entries.extend(valuation.rewards().into_iter().map(|(pdc_id, amount)| Entry::RewardPaid {
            study_id: study_id.to_owned(),
            round,
            pdc_id,
            amount,
        }));
    }
    entries
}

/// What FLTrust's server update is trained on: the study's root data (the researcher's standardised validation
/// set) with the study's local training settings, seeded per round so that a replay trains the same update.
pub(crate) struct RootData<'a> {
    pub(crate) spec: &'a ModelSpec,
    pub(crate) data: &'a Dataset,
    pub(crate) train: pdc_models::TrainConfig,
}

impl<'a> RootData<'a> {
    /// The root data of `manifest`'s study for `round`.
    pub(crate) fn new(manifest: &Manifest, spec: &'a ModelSpec, data: &'a Dataset, round: u32) -> Self {
        // Apart from the valuation's seed of the same round.
        let seed = crate::rewards::round_seed(manifest.seed, round) ^ 0x464c_5452_5553_5400;
        Self { spec, data, train: manifest.train_config(seed) }
    }
}

/// Aggregates the contributions' deltas, read from the archive in the given (sorted) order, and applies them to
/// `global`. Plain FedAvg streams (memory O(model)); any other rule or a server optimiser holds the round's updates
/// in memory, scores them, and steps the study's server optimiser.
pub(crate) fn aggregate(
    source: &dyn UpdateSource,
    global: &[f32],
    contributions: &[(String, AcceptedUpdate)],
    config: &AggregationConfig,
    optimizer: &Mutex<ServerState>,
    root: &RootData<'_>,
) -> Result<Aggregated> {
    if config.is_default() {
        return Ok(Aggregated {
            model: fedavg_piecewise(source, global, contributions)?,
            excluded: Vec::new(),
            valuation: None,
            release: None,
            flagged: Vec::new(),
        });
    }
    let deltas =
        contributions.iter().map(|(_, update)| source.read(&update.update_hash)).collect::<Result<Vec<Vec<f32>>>>()?;
    let rows: Vec<(&str, f64, &[f32])> = contributions
        .iter()
        .zip(&deltas)
        .map(|((pdc_id, update), delta)| (pdc_id.as_str(), update.n_examples as f64, delta.as_slice()))
        .collect();
    // FLTrust weighs each update by its agreement with the coordinator's own update on the root data.
    let server_update: Option<Vec<f32>> = if config.rule == crate::aggregation::rule::RuleKind::FlTrust {
        let trained = pdc_models::train_local(root.spec, global, root.data, &root.train)?;
        Some(trained.parameters.iter().zip(global).map(|(after, before)| after - before).collect())
    } else {
        None
    };
    let mut state = optimizer.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let outcome = aggregate_rows(config, &rows, &mut state, global, server_update.as_deref(), root.train.batch_size)?;
    Ok(Aggregated {
        model: outcome.model,
        excluded: outcome.excluded,
        valuation: None,
        release: None,
        flagged: outcome.flagged,
    })
}

/// What [`aggregate_rows`] produced: the new model and the anomaly check's verdicts.
#[derive(Clone, Debug)]
pub struct RuleOutcome {
    /// The new global model.
    pub model: Vec<f32>,
    /// The updates left out of the aggregate, each with the reason recorded for it on the ledger.
    pub excluded: Vec<(String, String)>,
    /// The PDCs the anomaly check flagged (left out or not).
    pub flagged: Vec<String>,
    /// Every update's anomaly score, in the order of the rows.
    pub scores: Vec<(String, AnomalyScore)>,
}

/// Aggregates a round's updates, held in memory as `(pdc_id, weight, delta)` rows in PDC order, under `config`'s
/// rule and anomaly check, and steps the study's server state from `global`. The coordinator, `pdc audit replay`
/// and the robustness harness all aggregate through here; only plain FedAvg, which the coordinator streams from
/// the archive instead (`aggregate`), takes another path, with the same sums in the same order.
///
/// `server_update` is FLTrust's update on the root data; `local_batch_size` puts the anomaly scores on a common
/// scale of local steps.
///
/// # Errors
///
/// Those of the rule ([`aggregate_round`]) and of the server state's step (a model that is no longer finite).
pub fn aggregate_rows(
    config: &AggregationConfig,
    rows: &[(&str, f64, &[f32])],
    state: &mut ServerState,
    global: &[f32],
    server_update: Option<&[f32]>,
    local_batch_size: usize,
) -> Result<RuleOutcome> {
    // The anomaly scores compare updates at a common number of local steps, which the batch size gives.
    let inputs = RoundInputs { local_batch_size: Some(local_batch_size), ..state.round_inputs(server_update) };
    let round = aggregate_round(config, rows, &inputs)?;
    let excluded = round
        .excluded
        .iter()
        .map(|pdc_id| {
            let why = round.scores.iter().find(|(id, _)| id == pdc_id).map(|(_, score)| score.describe());
            (pdc_id.clone(), format!("{LEFT_OUT_PREFIX}{}", why.unwrap_or_default()))
        })
        .collect();
    let model = state.apply(global, &round.delta)?;
    let flagged = round.scores.iter().filter(|(_, score)| score.flagged).map(|(id, _)| id.clone()).collect();
    Ok(RuleOutcome { model, excluded, flagged, scores: round.scores })
}

/// Why an update fails the upload screen (see [`screen`]).
#[derive(Clone, Debug, PartialEq)]
pub enum ScreenRefusal {
    /// A value is NaN or infinite.
    NonFinite {
        /// The first such value's index.
        index: usize,
    },
    /// The update's L2 norm passes the manifest's `validation.max_update_norm`.
    NormAboveBound {
        /// The update's norm.
        norm: f64,
        /// The bound.
        bound: f64,
    },
    /// The update claims no training examples, so it has no FedAvg weight.
    NoExamples,
}

/// The checks every update passes before it can be aggregated: finite values, an L2 norm within the manifest's
/// bound, and at least one example. The coordinator's archive applies the same checks while an upload streams
/// in (`crate::archive`, with the norm accumulated in the same order); the robustness harness calls this.
pub fn screen(delta: &[f32], n_examples: u64, checks: &UpdateChecks) -> std::result::Result<(), ScreenRefusal> {
    if let Some(index) = delta.iter().position(|value| !value.is_finite()) {
        return Err(ScreenRefusal::NonFinite { index });
    }
    let norm = l2_norm(delta);
    if norm > checks.max_update_norm {
        return Err(ScreenRefusal::NormAboveBound { norm, bound: checks.max_update_norm });
    }
    if n_examples == 0 {
        return Err(ScreenRefusal::NoExamples);
    }
    Ok(())
}

/// FedAvg read piece-major: every update is read side by side, one piece of each at a time, and each piece of the
/// new model is written as soon as it is averaged. Memory is the global model, the new one and one piece per
/// update — O(model), whatever the number of PDCs. Each value is the same sum, in the same PDC order, as a whole
/// [`FedAvg`] over the updates followed by [`apply_delta`], so the model hash is too.
fn fedavg_piecewise(
    source: &dyn UpdateSource,
    global: &[f32],
    contributions: &[(String, AcceptedUpdate)],
) -> Result<Vec<f32>> {
    if contributions.is_empty() {
        // FedAvg refuses a round without updates, with its own error.
        FedAvg::new(0).finish()?;
    }
    let mut readers =
        contributions.iter().map(|(_, update)| source.pieces(&update.update_hash)).collect::<Result<Vec<_>>>()?;
    let mut model = Vec::with_capacity(global.len());
    let mut piece = Vec::with_capacity(AGGREGATION_PIECE);
    for start in (0..global.len()).step_by(AGGREGATION_PIECE) {
        let end = (start + AGGREGATION_PIECE).min(global.len());
        let mut average = FedAvg::new(end - start);
        for ((_, update), reader) in contributions.iter().zip(&mut readers) {
            reader.read_piece(end - start, &mut piece)?;
            average.add(update.n_examples as f64, &piece)?;
        }
        let delta = average.finish()?;
        model.extend(global[start..end].iter().zip(&delta).map(|(g, d)| g + d));
    }
    Ok(model)
}

/// A model's validation figures as named pairs for the ledger; absent figures are left out.
pub(crate) fn metric_pairs(metrics: &Metrics) -> Vec<(String, f64)> {
    let named =
        [("loss", Some(metrics.loss)), ("accuracy", metrics.accuracy), ("auroc", metrics.auroc), ("mse", metrics.mse)];
    named
        .into_iter()
        .filter_map(|(name, value)| Some((name.to_owned(), value?)))
        .filter(|(_, v)| v.is_finite())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Three PDCs' deltas of `n` values, held in memory, as sorted contributions.
    fn memory_round(n: usize) -> (MemoryUpdates, Vec<(String, AcceptedUpdate)>) {
        let mut source = MemoryUpdates::default();
        let contributions = (0..3u64)
            .map(|k| {
                let delta: Vec<f32> = (0..n as u64).map(|i| ((i * 7 + k * 13) % 101) as f32 * 1e-4 - 5e-3).collect();
                let update = AcceptedUpdate { n_examples: 10 + 7 * k, update_hash: source.insert(delta) };
                (format!("pdc-{k}"), update)
            })
            .collect();
        (source, contributions)
    }

    /// Root data that no rule here trains on (only FLTrust does).
    fn root_data<'a>(spec: &'a ModelSpec, data: &'a Dataset) -> RootData<'a> {
        let train =
            pdc_models::TrainConfig { epochs: 1, batch_size: 32, learning_rate: 0.1, seed: 0, proximal_mu: 0.0 };
        RootData { spec, data, train }
    }

    /// A one-feature regression model and a one-row table, for the root data.
    fn tiny() -> (ModelSpec, Dataset) {
        let spec = ModelSpec {
            kind: pdc_models::ModelKind::LogisticRegression,
            n_features: 1,
            task: pdc_models::Task::Regression,
        };
        (spec, Dataset::from_parts(vec!["x".into()], vec![0.0], vec![0.0]).unwrap())
    }

    #[test]
    fn the_streamed_fedavg_and_the_rule_path_give_the_same_model_bit_for_bit() {
        // The coordinator streams plain FedAvg from its archive; the harness (and every other rule) aggregates rows
        // in memory. Both must give the same model hash, or a replay and a simulation would disagree with a study.
        let n = AGGREGATION_PIECE + 777;
        let (source, contributions) = memory_round(n);
        let global: Vec<f32> = (0..n).map(|i| (i as f32 * 1e-3).cos()).collect();
        let config = AggregationConfig::default();
        let (spec, data) = tiny();
        let optimizer = Mutex::new(ServerState::new(&config, n).unwrap());
        let streamed =
            aggregate(&source, &global, &contributions, &config, &optimizer, &root_data(&spec, &data)).unwrap();

        let deltas: Vec<Vec<f32>> = contributions.iter().map(|(_, u)| source.read(&u.update_hash).unwrap()).collect();
        let rows: Vec<(&str, f64, &[f32])> = contributions
            .iter()
            .zip(&deltas)
            .map(|((id, update), delta)| (id.as_str(), update.n_examples as f64, delta.as_slice()))
            .collect();
        let mut state = ServerState::new(&config, n).unwrap();
        let in_memory = aggregate_rows(&config, &rows, &mut state, &global, None, 32).unwrap();
        assert_eq!(streamed.model, in_memory.model);
        assert!(streamed.excluded.is_empty() && in_memory.excluded.is_empty());
    }

    #[test]
    fn a_rule_leaves_out_flagged_updates_with_the_recorded_reason() {
        let n = 64;
        let (mut source, mut contributions) = memory_round(n);
        // A fourth PDC echoes nothing: a free rider the anomaly check flags and, with `exclude_flagged`, leaves out.
        let zero = AcceptedUpdate { n_examples: 50, update_hash: source.insert(vec![0.0; n]) };
        contributions.push(("pdc-3".into(), zero));
        let config: AggregationConfig =
            toml::from_str("rule = \"median\"\n\n[anomaly]\nexclude_flagged = true\n").unwrap();
        let global = vec![0.5_f32; n];
        let (spec, data) = tiny();
        let optimizer = Mutex::new(ServerState::new(&config, n).unwrap());
        let aggregated =
            aggregate(&source, &global, &contributions, &config, &optimizer, &root_data(&spec, &data)).unwrap();
        assert_eq!(aggregated.flagged, vec!["pdc-3".to_owned()]);
        assert_eq!(aggregated.excluded.len(), 1);
        let (left_out, reason) = &aggregated.excluded[0];
        assert_eq!(left_out, "pdc-3");
        assert!(reason.starts_with(LEFT_OUT_PREFIX), "{reason}");

        // The entries record the exclusion, then the aggregate over the others, in that order.
        let metrics = Metrics { loss: 0.25, accuracy: Some(0.9), auroc: None, mse: None, n_examples: 10 };
        let hash = pdc_ledger::hash::parameters_hash(&aggregated.model);
        let (contributors, entries) =
            aggregation_entries("s", 4, &contributions, &aggregated.excluded, hash, &metrics, &None);
        assert_eq!(contributors, ["pdc-0", "pdc-1", "pdc-2"]);
        assert!(matches!(&entries[0], Entry::UpdateRejected { pdc_id, round: 4, .. } if pdc_id == "pdc-3"));
        match &entries[1] {
            Entry::RoundAggregated { round: 4, model_hash, contributors: recorded, metrics, .. } => {
                assert_eq!(*model_hash, hash);
                assert_eq!(recorded, &contributors);
                assert_eq!(metrics, &[("loss".to_owned(), 0.25), ("accuracy".to_owned(), 0.9)]);
            }
            other => panic!("expected the aggregate, got {other:?}"),
        }
        assert_eq!(entries.len(), 2);
    }

    #[test]
    fn central_dp_returns_its_release_for_the_caller_to_archive() {
        let n = 32;
        let (source, contributions) = memory_round(n);
        let global = vec![1.0_f32; n];
        let config = pdc_privacy::central::CentralDpConfig {
            clip_norm: 0.01,
            noise_multiplier: 1.0,
            adaptive: None,
            noise_mode: pdc_privacy::NoiseMode::Fast,
        };
        let dp = pdc_privacy::central::CentralDp::for_testing_with_seed(config, 7).unwrap();
        let central = Mutex::new(CentralState { dp, accountant: pdc_privacy::RdpAccountant::new(), delta: 1e-5 });
        let aggregated = central_aggregate(&source, "s", 1, &global, &contributions, &central).unwrap();
        let release = aggregated.release.expect("a central DP round has a release");
        let expected_model: Vec<f32> = global.iter().zip(&release.mean).map(|(g, d)| g + d).collect();
        assert_eq!(aggregated.model, expected_model);
        match release.entry {
            Entry::CentralDpRelease { round: 1, release_hash, epsilon, delta, clip_norm, .. } => {
                // The hash the archive will store the mean under, so the entry names what a replay reads back.
                assert_eq!(release_hash, pdc_ledger::hash::parameters_hash(&release.mean));
                assert!(epsilon > 0.0 && epsilon.is_finite());
                assert_eq!((delta, clip_norm), (1e-5, 0.01));
            }
            other => panic!("expected the release, got {other:?}"),
        }
    }

    #[test]
    fn the_screen_refuses_non_finite_values_long_updates_and_no_examples() {
        let checks = UpdateChecks { max_update_norm: 5.0 };
        assert_eq!(screen(&[3.0, 4.0], 1, &checks), Ok(()));
        assert_eq!(screen(&[1.0, f32::NAN], 1, &checks), Err(ScreenRefusal::NonFinite { index: 1 }));
        assert_eq!(screen(&[f32::INFINITY], 1, &checks), Err(ScreenRefusal::NonFinite { index: 0 }));
        assert_eq!(
            screen(&[3.0, 4.5], 1, &checks),
            Err(ScreenRefusal::NormAboveBound { norm: (9.0f64 + 20.25).sqrt(), bound: 5.0 })
        );
        assert_eq!(screen(&[3.0, 4.0], 0, &checks), Err(ScreenRefusal::NoExamples));
    }

    #[test]
    fn memory_pieces_refuse_to_read_past_the_end() {
        let mut source = MemoryUpdates::default();
        let id = source.insert(vec![1.0, 2.0, 3.0]);
        let mut reader = source.pieces(&id).unwrap();
        let mut piece = Vec::new();
        reader.read_piece(2, &mut piece).unwrap();
        assert_eq!(piece, [1.0, 2.0]);
        let error = reader.read_piece(2, &mut piece).unwrap_err().to_string();
        assert!(error.contains("truncated"), "{error}");
        assert!(source.read(&[0; 32]).unwrap_err().to_string().contains("no update"));
    }

    #[test]
    fn piecewise_fedavg_equals_a_whole_vector_fedavg_over_several_pieces() {
        let dir = tempfile::tempdir().unwrap();
        let archive = UpdateArchive::open(dir.path()).unwrap();
        let n = 2 * AGGREGATION_PIECE + 12_345;
        let global: Vec<f32> = (0..n).map(|i| (i as f32 * 1e-3).sin()).collect();
        let contributions: Vec<(String, AcceptedUpdate)> = (0..3u64)
            .map(|k| {
                let delta: Vec<f32> = (0..n as u64).map(|i| ((i * 7 + k * 13) % 101) as f32 * 1e-4 - 5e-3).collect();
                let update = AcceptedUpdate { n_examples: 10 + 7 * k, update_hash: archive.store(&delta).unwrap() };
                (format!("pdc-{k}"), update)
            })
            .collect();
        let mut whole = FedAvg::new(n);
        for (_, update) in &contributions {
            whole.add(update.n_examples as f64, &archive.read(&update.update_hash).unwrap()).unwrap();
        }
        let expected = apply_delta(&global, &whole.finish().unwrap()).unwrap();
        let piecewise = fedavg_piecewise(&archive, &global, &contributions).unwrap();
        assert_eq!(piecewise, expected, "the same sums in the same order, bit for bit");
        let error = fedavg_piecewise(&archive, &global, &[]).unwrap_err().to_string();
        assert!(error.contains("no updates"), "{error}");
    }
}
