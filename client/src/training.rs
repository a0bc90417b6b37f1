//! Local training for one task: the PDC's private table in, a model delta out. No I/O, no clock.

use pdc_models::{Dataset, ModelSpec, Schema, Standardizer, TrainConfig};
use serde::Deserialize;

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
    /// Epochs per round.
    pub local_epochs: u32,
    /// Mini-batch size.
    pub batch_size: usize,
    /// Learning rate.
    pub learning_rate: f64,
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
    let config = TrainConfig {
        epochs: terms.training.local_epochs,
        batch_size: terms.training.batch_size,
        learning_rate: terms.training.learning_rate,
        seed,
    };
    let outcome = pdc_models::train_local(&terms.model_spec(), global, &data, &config)?;
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
