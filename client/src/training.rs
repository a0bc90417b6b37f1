//! Local training for one task: the PDC's private table in, a model delta out. No I/O, no clock.
//!
//! With `training.proximal_mu = μ > 0` in the study's manifest the local objective is FedProx's (Li et al., 2020):
//! the data loss plus `μ/2·‖w − w_global‖²`. A configured [`Attack`] poisons the table before training and
//! rewrites the delta after it ([`train_round_attacked`]).

use pdc_models::{Dataset, DpTrainConfig, LocalDpSettings, ModelSpec, Schema, Standardizer, TrainConfig};
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use serde::Deserialize;

use crate::attack::{Attack, BenignEstimate};
use crate::{Error, Result};

/// The parts of a study manifest a PDC needs to train (the coordinator's canonical manifest carries more).
#[derive(Clone, Debug, Deserialize, PartialEq)]
pub struct StudyTerms {
    /// The study's name.
    pub name: String,
    /// The model.
    pub model: pdc_models::ModelKind,
    /// The data schema.
    pub data: DataTerms,
    /// Local training.
    pub training: TrainingTerms,
    /// Local DP-SGD, when the study asks for it.
    #[serde(default)]
    pub privacy: Option<LocalDpSettings>,
    /// The DP feature summary the study asks of every PDC before its first round, when it standardises
    /// federatedly.
    #[serde(default)]
    pub federated_standardization: Option<pdc_models::FederatedStandardization>,
    /// The coordinator's `[central_privacy]` table, when the study aggregates with central DP. The PDC needs
    /// only to know that it does: its training loss is then not released (it reports 0).
    #[serde(default)]
    pub central_privacy: Option<toml::Table>,
}

/// The schema.
#[derive(Clone, Debug, Deserialize, PartialEq)]
pub struct DataTerms {
    /// The task.
    pub task: pdc_models::Task,
    /// The label column.
    pub label: String,
    /// The feature columns.
    pub features: Vec<String>,
}

/// Local training settings.
#[derive(Clone, Debug, Deserialize, PartialEq)]
pub struct TrainingTerms {
    /// Rounds in the study (a target ε is spread over all of them).
    pub rounds: u32,
    /// Epochs per round.
    pub local_epochs: u32,
    /// Mini-batch size.
    pub batch_size: usize,
    /// Learning rate.
    pub learning_rate: f64,
    /// FedProx's proximal coefficient μ ≥ 0; 0 (the default, and what a manifest without the key means) is plain
    /// local SGD.
    #[serde(default)]
    pub proximal_mu: f64,
}

impl StudyTerms {
    /// Parses the manifest TOML a task or listing carries, ignoring what the PDC does not need.
    pub fn parse(manifest_toml: &str) -> std::result::Result<Self, String> {
        toml::from_str(manifest_toml).map_err(|e| e.message().to_owned())
    }

    /// The schema to load local data with.
    pub fn schema(&self) -> Schema {
        Schema { features: self.data.features.clone(), label: self.data.label.clone() }
    }

    /// The model.
    pub fn model_spec(&self) -> ModelSpec {
        ModelSpec { kind: self.model.clone(), n_features: self.data.features.len(), task: self.data.task }
    }
}

/// An update ready to sign and send.
#[derive(Clone, Debug, PartialEq)]
pub struct LocalUpdate {
    /// Trained parameters minus the global model's.
    pub delta: Vec<f32>,
    /// Examples trained on.
    pub n_examples: u64,
    /// Mean training loss.
    pub train_loss: f64,
}

/// The DP-SGD configuration of this study's rounds on `n_rows` local rows, if it trains with local DP.
pub fn dp_config(terms: &StudyTerms, n_rows: usize) -> Result<Option<DpTrainConfig>> {
    let Some(privacy) = &terms.privacy else { return Ok(None) };
    let training = &terms.training;
    let mut config = privacy.train_config(
        training.local_epochs,
        training.batch_size,
        training.learning_rate,
        training.rounds,
        n_rows,
    )?;
    config.proximal_mu = training.proximal_mu;
    config.validate()?;
    Ok(Some(config))
}

/// An update trained with DP-SGD, and what the round spent.
#[derive(Clone, Debug, PartialEq)]
pub struct PrivateUpdate {
    /// The update; its `train_loss` is 0, since the loss on private rows is not released.
    pub update: LocalUpdate,
    /// The mechanism's parameters, for the accountant and the signed claim.
    pub config: DpTrainConfig,
    /// The Poisson sampling rate.
    pub sampling_rate: f64,
    /// The steps taken.
    pub steps: u64,
    /// The training loss over the sampled rows: for the hospital's own logs only.
    pub local_loss: f64,
}

/// Trains `global` on `data` with DP-SGD at `config` for one round (with FedProx's proximal term when
/// [`dp_config`] set one from the manifest).
pub fn train_round_private(
    terms: &StudyTerms,
    global: &[f32],
    data: &Dataset,
    standardizer: &Standardizer,
    config: &DpTrainConfig,
) -> Result<PrivateUpdate> {
    let mut data = data.clone();
    standardizer.apply(&mut data)?;
    let outcome = pdc_models::train_dp(&terms.model_spec(), global, &data, config)?;
    let delta = outcome.parameters.iter().zip(global).map(|(trained, start)| trained - start).collect();
    Ok(PrivateUpdate {
        update: LocalUpdate { delta, n_examples: outcome.n_examples as u64, train_loss: 0.0 },
        config: config.clone(),
        sampling_rate: outcome.sampling_rate,
        steps: outcome.steps,
        local_loss: outcome.mean_loss,
    })
}

/// Trains `global` on `data` (already in the study's schema) for one round and returns the delta.
pub fn train_round(
    terms: &StudyTerms,
    global: &[f32],
    data: &Dataset,
    standardizer: &Standardizer,
    seed: u64,
) -> Result<LocalUpdate> {
    let mut data = data.clone();
    standardizer.apply(&mut data)?;
    train_standardized(terms, global, &data, seed)
}

/// Trains like [`train_round`] but misbehaves as `attack` says: the table is poisoned (label flipping, backdoor
/// triggers) before standardisation and training, and the delta rewritten after ([`Attack::apply_to_delta`]).
///
/// ALIE and IPM use `benign` when the simulation knows the honest updates' statistics; without it the attacker
/// estimates them from its own table, training one update on each of `benign_runs` disjoint seeded shards (see
/// [`crate::attack`]). A free rider does not train: its delta is zero or noise, its weight its table's row count
/// and its reported loss the global model's loss on its table.
pub fn train_round_attacked(
    terms: &StudyTerms,
    global: &[f32],
    data: &Dataset,
    standardizer: &Standardizer,
    seed: u64,
    attack: &Attack,
    benign: Option<&BenignEstimate>,
) -> Result<LocalUpdate> {
    let mut poisoned = data.clone();
    attack.apply_to_table(&mut poisoned, terms.data.task)?;
    standardizer.apply(&mut poisoned)?;
    let mut update = if attack.skips_training() {
        let metrics = pdc_models::evaluate(&terms.model_spec(), global, &poisoned)?;
        LocalUpdate { delta: vec![0.0; global.len()], n_examples: poisoned.n_rows() as u64, train_loss: metrics.loss }
    } else {
        train_standardized(terms, global, &poisoned, seed)?
    };
    let estimated;
    let benign = match (benign, attack.benign_runs()) {
        (None, Some((runs, shard_seed))) => {
            let mut clean = data.clone();
            standardizer.apply(&mut clean)?;
            estimated = estimate_benign(terms, global, &clean, seed, runs, shard_seed)?;
            Some(&estimated)
        }
        (given, _) => given,
    };
    attack.apply_to_delta(&mut update.delta, benign, seed)?;
    Ok(update)
}

/// An attacker's own estimate of the benign updates: one honest update per disjoint shard of its (standardised)
/// table, `runs` shards chosen by a shuffle seeded with `shard_seed`.
fn estimate_benign(
    terms: &StudyTerms,
    global: &[f32],
    data: &Dataset,
    seed: u64,
    runs: usize,
    shard_seed: u64,
) -> Result<BenignEstimate> {
    let n = data.n_rows();
    if n < runs {
        return Err(Error::Attack(format!("cannot split {n} rows into {runs} shards to estimate benign updates")));
    }
    let mut rows: Vec<usize> = (0..n).collect();
    rows.shuffle(&mut StdRng::seed_from_u64(shard_seed));
    let mut deltas = Vec::with_capacity(runs);
    for shard in 0..runs {
        // Shard k holds rows [k·n/runs, (k+1)·n/runs) of the shuffle: sizes differ by at most one.
        let part = data.subset(&rows[shard * n / runs..(shard + 1) * n / runs]);
        let update = train_standardized(terms, global, &part, seed.wrapping_add(shard as u64 + 1))?;
        deltas.push(update.delta);
    }
    BenignEstimate::from_deltas(&deltas)
}

/// Trains on a table already standardised; FedProx when `proximal_mu > 0` (`pdc-models` adds the proximal term
/// to each step's gradient).
fn train_standardized(terms: &StudyTerms, global: &[f32], data: &Dataset, seed: u64) -> Result<LocalUpdate> {
    let config = TrainConfig {
        epochs: terms.training.local_epochs,
        batch_size: terms.training.batch_size,
        learning_rate: terms.training.learning_rate,
        seed,
        proximal_mu: terms.training.proximal_mu,
    };
    let outcome = pdc_models::train_local(&terms.model_spec(), global, data, &config)?;
    let delta = outcome.parameters.iter().zip(global).map(|(trained, start)| trained - start).collect();
    Ok(LocalUpdate { delta, n_examples: outcome.n_examples as u64, train_loss: outcome.mean_loss })
}

/// Builds the standardiser a task sends, checking it fits the schema.
pub fn standardizer(
    study_id: &str,
    round: u32,
    n_features: usize,
    mean: Vec<f32>,
    std: Vec<f32>,
) -> Result<Standardizer> {
    let bad = |detail: String| Error::BadTask { study_id: study_id.to_owned(), round, detail };
    if mean.len() != n_features || std.len() != n_features {
        return Err(bad(format!(
            "standardisation has {} means and {} deviations for {n_features} features",
            mean.len(),
            std.len()
        )));
    }
    if mean.iter().chain(&std).any(|v| !v.is_finite()) || std.iter().any(|&s| s <= 0.0) {
        return Err(bad("standardisation holds non-finite or non-positive values".into()));
    }
    Ok(Standardizer { mean, std })
}

#[cfg(test)]
mod tests {
    use pdc_models::{ModelKind, Standardizer, SyntheticConfig, Task, synthetic};

    use super::*;

    fn terms(batch_size: usize, proximal_mu: f64) -> StudyTerms {
        let data = table();
        StudyTerms {
            name: "s".into(),
            model: ModelKind::LogisticRegression,
            data: DataTerms {
                task: Task::BinaryClassification,
                label: "y".into(),
                features: data.feature_names.clone(),
            },
            training: TrainingTerms { rounds: 3, local_epochs: 2, batch_size, learning_rate: 0.5, proximal_mu },
            privacy: None,
            federated_standardization: None,
            central_privacy: None,
        }
    }

    fn table() -> Dataset {
        synthetic(&SyntheticConfig { n_rows: 120, n_features: 4, positive_rate: 0.4, seed: 9 })
    }

    fn setup(batch_size: usize, mu: f64) -> (StudyTerms, Vec<f32>, Dataset, Standardizer) {
        let terms = terms(batch_size, mu);
        let global = terms.model_spec().init_parameters(1);
        let data = table();
        let standardizer = Standardizer::fit(&data);
        (terms, global, data, standardizer)
    }

    fn norm(values: &[f32]) -> f64 {
        values.iter().map(|&v| f64::from(v).powi(2)).sum::<f64>().sqrt()
    }

    #[test]
    fn proximal_mu_is_read_from_the_manifest_and_defaults_to_zero() {
        let manifest = "name = \"s\"\nmodel = { kind = \"logistic_regression\" }\n[data]\ntask = \
                        \"binary_classification\"\nlabel = \"y\"\nfeatures = [\"a\"]\n[training]\nrounds = 3\n\
                        local_epochs = 1\nbatch_size = 8\nlearning_rate = 0.1\n";
        assert_eq!(StudyTerms::parse(manifest).unwrap().training.proximal_mu, 0.0);
        let with_mu = manifest.replace("learning_rate = 0.1", "learning_rate = 0.1\nproximal_mu = 0.01");
        assert_eq!(StudyTerms::parse(&with_mu).unwrap().training.proximal_mu, 0.01);
    }

    #[test]
    fn fedprox_steps_are_sgd_steps_pulled_towards_the_global_model() {
        // One full batch per epoch, so the batch order cannot matter: epoch 1 starts at the global model and is a
        // plain SGD step; epoch 2 is a plain step from w₁ minus η·μ·(w₁ − w_global).
        let mu = 0.8;
        let (terms, global, data, standardizer) = setup(120, mu);
        let update = train_round(&terms, &global, &data, &standardizer, 3).unwrap();
        let mut standardized = data.clone();
        standardizer.apply(&mut standardized).unwrap();
        let step = |from: &[f32]| {
            let config = TrainConfig { epochs: 1, batch_size: 120, learning_rate: 0.5, seed: 0, proximal_mu: 0.0 };
            pdc_models::train_local(&terms.model_spec(), from, &standardized, &config).unwrap().parameters
        };
        let w1 = step(&global);
        let w1_stepped = step(&w1);
        for (i, ((&got, &stepped), (&current, &start))) in
            update.delta.iter().zip(&w1_stepped).zip(w1.iter().zip(&global)).enumerate()
        {
            let expected = f64::from(stepped) - 0.5 * mu * (f64::from(current) - f64::from(start)) - f64::from(start);
            assert!((f64::from(got) - expected).abs() < 1e-5, "parameter {i}: {got} vs {expected}");
        }
        assert_eq!(update.n_examples, 120);
    }

    #[test]
    fn a_larger_mu_keeps_the_model_closer_and_training_is_deterministic() {
        let (plain_terms, global, data, standardizer) = setup(16, 0.0);
        let plain = train_round(&plain_terms, &global, &data, &standardizer, 5).unwrap();
        let weak = train_round(&terms(16, 0.1), &global, &data, &standardizer, 5).unwrap();
        let strong = train_round(&terms(16, 1.5), &global, &data, &standardizer, 5).unwrap();
        assert!(norm(&strong.delta) < norm(&weak.delta), "{} vs {}", norm(&strong.delta), norm(&weak.delta));
        assert!(norm(&strong.delta) < norm(&plain.delta));
        assert_eq!(strong, train_round(&terms(16, 1.5), &global, &data, &standardizer, 5).unwrap());
        assert!(strong.train_loss.is_finite() && strong.n_examples == 120);
    }

    #[test]
    fn private_training_carries_the_proximal_term() {
        let (_, global, data, standardizer) = setup(16, 0.0);
        let mut private_terms = terms(16, 0.4);
        private_terms.privacy = Some(toml::from_str("clip_norm = 1.0\nnoise_multiplier = 1.0\ndelta = 1e-5").unwrap());
        let config = dp_config(&private_terms, data.n_rows()).unwrap().unwrap();
        assert_eq!(config.proximal_mu, 0.4);
        let update = train_round_private(&private_terms, &global, &data, &standardizer, &config).unwrap();
        assert_eq!(update.update.n_examples, 120);
        // μ = 2 with learning rate 0.5 would overshoot the global model: refused before training.
        private_terms.training.proximal_mu = 2.0;
        assert!(dp_config(&private_terms, data.n_rows()).unwrap_err().to_string().contains("proximal_mu"));
    }

    #[test]
    fn invalid_mu_is_refused() {
        let (_, global, data, standardizer) = setup(16, 0.0);
        for mu in [-0.1, 2.0, f64::NAN] {
            let error = train_round(&terms(16, mu), &global, &data, &standardizer, 1).unwrap_err().to_string();
            assert!(error.contains("proximal_mu"), "{mu}: {error}");
        }
    }

    #[test]
    fn attacks_poison_the_table_and_rewrite_the_delta() {
        let (terms, global, data, standardizer) = setup(16, 0.0);
        let honest = train_round(&terms, &global, &data, &standardizer, 7).unwrap();
        let attacked =
            |attack: &Attack| train_round_attacked(&terms, &global, &data, &standardizer, 7, attack, None).unwrap();
        // Sign flipping negates the honest delta exactly; the weight and loss are the honest ones.
        let flipped = attacked(&Attack::SignFlip { scale: 4.0 });
        let expected: Vec<f32> = honest.delta.iter().map(|v| -4.0 * v).collect();
        assert_eq!(flipped.delta, expected);
        assert_eq!((flipped.n_examples, flipped.train_loss), (honest.n_examples, honest.train_loss));
        // Label flipping is training on the flipped table.
        let mut flipped_table = data.clone();
        flipped_table.labels.iter_mut().for_each(|label| *label = 1.0 - *label);
        let label_flipped = attacked(&Attack::LabelFlip { fraction: 1.0, seed: 0 });
        assert_eq!(label_flipped, train_round(&terms, &global, &flipped_table, &standardizer, 7).unwrap());
        // Crashing mid-upload trains honestly.
        assert_eq!(attacked(&Attack::CrashMidUpload { after_bytes: 10 }), honest);
        // A free rider sends the global model back and still claims its rows.
        let free_rider = attacked(&Attack::FreeRide { noise_std: 0.0, seed: 0 });
        assert!(free_rider.delta.iter().all(|&v| v == 0.0));
        assert_eq!(free_rider.n_examples, 120);
        assert!(free_rider.train_loss > 0.0);
        // IPM with the attacker's own estimate points against the honest update.
        let ipm = attacked(&Attack::Ipm { epsilon: 1.0, benign_runs: 4, seed: 2 });
        let dot: f64 = ipm.delta.iter().zip(&honest.delta).map(|(&a, &b)| f64::from(a) * f64::from(b)).sum();
        assert!(dot < 0.0, "{dot}");
        // With the statistics given, ALIE uses them instead.
        let benign = BenignEstimate { mean: vec![0.5; global.len()], std: vec![0.25; global.len()] };
        let alie = Attack::Alie { z: Some(2.0), n_pdcs: None, n_attackers: None, benign_runs: 5, seed: 0 };
        let given = train_round_attacked(&terms, &global, &data, &standardizer, 7, &alie, Some(&benign)).unwrap();
        assert!(given.delta.iter().all(|&v| v == 0.0));
        // A backdoor naming a column the study lacks is refused before training.
        let backdoor = Attack::Backdoor {
            features: vec!["missing".into()],
            trigger_value: 5.0,
            target_label: 1.0,
            poison_fraction: 0.2,
            boost: 3.0,
            seed: 0,
        };
        let error = train_round_attacked(&terms, &global, &data, &standardizer, 7, &backdoor, None).unwrap_err();
        assert!(error.to_string().contains("`missing`"), "{error}");
    }
}
