//! Study manifests: the TOML a researcher writes, parsed strictly and validated before a study exists.

use pdc_models::{Dataset, FederatedStandardization, LocalDpSettings, ModelKind, ModelSpec, Schema, Task, TrainConfig};
use serde::{Deserialize, Serialize};

use crate::aggregation::AggregationConfig;
use crate::aggregation::rule::{OptimizerKind, RuleKind};
use crate::limits::{Limits, grouped};
use crate::rewards::ValuationSettings;
use crate::{Error, Result};

/// A study manifest (see `examples/study.toml`). Unknown keys are errors, so a typo never silently falls back
/// to a default.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// A human-readable name, unique among the coordinator's studies.
    pub name: String,
    /// Seed for everything random in the study except DP noise: initial model, selection, batch order.
    #[serde(default)]
    pub seed: u64,
    /// The model architecture.
    pub model: ModelKind,
    /// The data schema the PDCs' tables must have.
    pub data: DataSection,
    /// Rounds and local training.
    pub training: TrainingSection,
    /// How many PDCs take part in a round and how long they have.
    pub participants: ParticipantsSection,
    /// Checks applied to every update before aggregation.
    #[serde(default)]
    pub validation: UpdateChecks,
    /// The aggregation rule, its server optimiser and anomaly thresholds; plain FedAvg when absent (and then left
    /// out of the canonical form, so manifests without it keep their hash).
    #[serde(default, skip_serializing_if = "AggregationConfig::is_default")]
    pub aggregation: AggregationConfig,
    /// Each round's reward budget; no valuation runs without one (and the table is then left out of the
    /// canonical form).
    #[serde(default, skip_serializing_if = "RewardsSection::is_default")]
    pub rewards: RewardsSection,
    /// How utilities are measured and shared out.
    #[serde(default, skip_serializing_if = "is_default_valuation")]
    pub valuation: ValuationSettings,
    /// Local differential privacy: when present, every PDC trains with DP-SGD at these settings, signs its spend
    /// with each update, and the coordinator records it; absent, training is not private (and the table is left
    /// out of the canonical form).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub privacy: Option<LocalDpSettings>,
    /// Central DP for a trusted coordinator (DP-FedAvg): each round the coordinator clips every update, adds
    /// Gaussian noise to their sum and records the release; absent, aggregation adds no noise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub central_privacy: Option<CentralPrivacySection>,
    /// Federated standardisation: before the first round every PDC releases a DP feature summary of its table,
    /// charged to its budget, and the pooled mean and standard deviation standardise every PDC's data and the
    /// validation set; absent, the standardisation is fitted on the researcher's validation set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub federated_standardization: Option<FederatedStandardization>,
}

/// `[central_privacy]`: DP-FedAvg with optional adaptive clipping, PDC-level DP accounted per study.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CentralPrivacySection {
    /// The clip norm `S` of every update (the first round's, with adaptive clipping).
    pub clip_norm: f64,
    /// The noise multiplier `z` each round is charged at.
    pub noise_multiplier: f64,
    /// The δ at which the study's ε is reported.
    pub delta: f64,
    /// The noise sampler: `fast` (the default) or `exact`.
    #[serde(default)]
    pub noise: pdc_models::NoiseMode,
    /// Adaptive clipping (Andrew et al. 2021): the clip norm follows this quantile of the update norms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub adaptive: Option<pdc_privacy::central::AdaptiveClipping>,
}

impl CentralPrivacySection {
    /// The mechanism's configuration.
    pub fn config(&self) -> pdc_privacy::central::CentralDpConfig {
        pdc_privacy::central::CentralDpConfig {
            clip_norm: self.clip_norm,
            noise_multiplier: self.noise_multiplier,
            adaptive: self.adaptive,
            noise_mode: self.noise,
        }
    }
}

/// `[rewards]`: what each round pays, split by positive Shapley value.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RewardsSection {
    /// The amount each round pays out (plus whatever a round without measurable gain carried over); 0 runs no
    /// valuation.
    #[serde(default)]
    pub budget_per_round: f64,
}

impl RewardsSection {
    fn is_default(&self) -> bool {
        *self == Self::default()
    }
}

fn is_default_valuation(settings: &ValuationSettings) -> bool {
    *settings == ValuationSettings::default()
}

/// The data schema.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataSection {
    /// Binary classification or regression.
    pub task: Task,
    /// The label column.
    pub label: String,
    /// The feature columns; when absent, every column of the validation set but the label, in its order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub features: Vec<String>,
}

/// Rounds and local training.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainingSection {
    /// Number of federated rounds.
    pub rounds: u32,
    /// Local epochs per round.
    pub local_epochs: u32,
    /// Mini-batch size of local SGD.
    pub batch_size: usize,
    /// Learning rate of local SGD.
    pub learning_rate: f64,
    /// FedProx's proximal coefficient μ (Li et al., 2020): every PDC's local objective gains `μ/2·‖w − w_global‖²`,
    /// which keeps hospitals with skewed data from drifting far from the global model. 0 (the default, left out
    /// of the canonical form so that older manifests keep their hash) is plain local SGD. Needs
    /// `learning_rate × proximal_mu < 1`.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub proximal_mu: f64,
}

fn is_zero(value: &f64) -> bool {
    *value == 0.0
}

/// Participation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ParticipantsSection {
    /// A round opens only with at least this many available PDCs and closes at its deadline only with at least
    /// this many updates.
    pub min: usize,
    /// At most this many PDCs are selected per round.
    pub max: usize,
    /// The share of the available PDCs each round samples (FedAvg's C), in (0, 1]; within `min` and `max`.
    /// 1 (the default, left out of the canonical form) takes every available PDC up to `max`.
    #[serde(default = "all_of_them", skip_serializing_if = "is_all_of_them")]
    pub fraction: f64,
    /// Seconds a round stays open for updates.
    pub round_deadline_secs: u64,
}

fn all_of_them() -> f64 {
    1.0
}

fn is_all_of_them(fraction: &f64) -> bool {
    *fraction == 1.0
}

/// Update checks.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateChecks {
    /// Updates whose L2 norm exceeds this are rejected.
    #[serde(default = "default_max_update_norm")]
    pub max_update_norm: f64,
}

impl Default for UpdateChecks {
    fn default() -> Self {
        Self { max_update_norm: default_max_update_norm() }
    }
}

fn default_max_update_norm() -> f64 {
    1.0e4
}

/// Parameters the streaming FedAvg reads of each update at a time (the aggregator's 4 MiB piece).
const AGGREGATION_PIECE: u64 = 1 << 20;

impl Manifest {
    /// Parses manifest TOML, without checking it against data (see [`Manifest::resolve`]).
    pub fn parse(text: &str) -> Result<Self> {
        toml::from_str(text).map_err(|e| Error::InvalidManifest(e.message().to_owned()))
    }

    /// Checks every value, fills in the feature list from the validation set's header when absent, and checks
    /// that the validation set has every column the manifest names.
    pub fn resolve(mut self, validation_header: &[String]) -> Result<Self> {
        let invalid = |detail: String| Err(Error::InvalidManifest(detail));
        if self.name.trim().is_empty() || self.name.len() > 128 {
            return invalid("name must be 1 to 128 characters".into());
        }
        // How many layers, how wide and how many rounds are the coordinator's limits (`check_limits`).
        if let ModelKind::Mlp { hidden } = &self.model
            && (hidden.is_empty() || hidden.contains(&0))
        {
            return invalid("model.hidden must list 1 or more layer widths of at least 1".into());
        }
        let training = &self.training;
        if training.rounds == 0 {
            return invalid("training.rounds must be at least 1".into());
        }
        if training.local_epochs == 0 || training.local_epochs > 10_000 {
            return invalid("training.local_epochs must be between 1 and 10000".into());
        }
        if training.batch_size == 0 {
            return invalid("training.batch_size must be at least 1".into());
        }
        if !(training.learning_rate.is_finite() && training.learning_rate > 0.0) {
            return invalid("training.learning_rate must be finite and positive".into());
        }
        if pdc_models::check_proximal_mu(training.proximal_mu, training.learning_rate).is_err() {
            return invalid(format!(
                "training.proximal_mu must be finite and non-negative with learning_rate × proximal_mu < 1, got {} \
                 with learning_rate {}",
                training.proximal_mu, training.learning_rate
            ));
        }
        let participants = &self.participants;
        if participants.min == 0 || participants.max < participants.min {
            return invalid("participants: need 1 <= min <= max".into());
        }
        if !(participants.fraction > 0.0 && participants.fraction <= 1.0) {
            return invalid(format!("participants.fraction {} must be in (0, 1]", participants.fraction));
        }
        if participants.round_deadline_secs == 0 || participants.round_deadline_secs > 7 * 24 * 3600 {
            return invalid("participants.round_deadline_secs must be between 1 and 604800".into());
        }
        let norm = self.validation.max_update_norm;
        if !(norm.is_finite() && norm > 0.0) {
            return invalid("validation.max_update_norm must be finite and positive".into());
        }
        self.aggregation.validate(participants.max).map_err(|e| Error::InvalidManifest(error_detail(&e)))?;
        let needed = self.aggregation.rule().map(|rule| rule.min_updates()).unwrap_or(1);
        if participants.min < needed {
            return invalid(format!(
                "aggregation.rule = \"{}\" needs at least {needed} updates per round, but participants.min is {}",
                self.aggregation.rule, participants.min
            ));
        }
        let budget = self.rewards.budget_per_round;
        if !(budget.is_finite() && budget >= 0.0) {
            return invalid("rewards.budget_per_round must be finite and at least 0".into());
        }
        self.valuation.validate().map_err(|e| Error::InvalidManifest(format!("valuation: {}", error_detail(&e))))?;
        self.valuation
            .metric_for(self.data.task)
            .check_task(self.data.task)
            .map_err(|e| Error::InvalidManifest(format!("valuation: {}", error_detail(&e))))?;
        if let Some(privacy) = &self.privacy {
            privacy.validate().map_err(|e| Error::InvalidManifest(e.to_string()))?;
        }
        if let Some(central) = &self.central_privacy {
            if self.privacy.is_some() {
                return invalid("choose [privacy] (local DP-SGD) or [central_privacy] (DP-FedAvg), not both".into());
            }
            if !self.aggregation.is_default() {
                return invalid(
                    "[central_privacy] is DP-FedAvg: it replaces the aggregation rule and server optimiser; leave \
                     [aggregation] out"
                        .into(),
                );
            }
            if central.noise_multiplier.is_nan() || central.noise_multiplier <= 0.0 {
                return invalid("central_privacy.noise_multiplier must be positive (0 gives no privacy)".into());
            }
            if !(central.delta > 0.0 && central.delta < 1.0) {
                return invalid("central_privacy.delta must be in (0, 1)".into());
            }
            if self.rewards.budget_per_round > 0.0 {
                return invalid(
                    "[rewards] values each PDC's raw update, which [central_privacy] does not protect: choose one"
                        .into(),
                );
            }
            central.config().validate().map_err(|e| Error::InvalidManifest(format!("central_privacy: {e}")))?;
        }
        let has = |column: &str| validation_header.iter().any(|c| c == column);
        if !has(&self.data.label) {
            return invalid(format!("label column `{}` is not in the validation set", self.data.label));
        }
        if self.data.features.is_empty() {
            self.data.features = validation_header.iter().filter(|c| **c != self.data.label).cloned().collect();
        }
        if self.data.features.is_empty() {
            return invalid("the study has no feature columns".into());
        }
        if let Some(missing) = self.data.features.iter().find(|f| !has(f)) {
            return invalid(format!("feature column `{missing}` is not in the validation set"));
        }
        if self.data.features.contains(&self.data.label) {
            return invalid(format!("the label `{}` is also listed as a feature", self.data.label));
        }
        let mut unique = self.data.features.clone();
        unique.sort();
        unique.dedup();
        if unique.len() != self.data.features.len() {
            return invalid("data.features lists a column twice".into());
        }
        if let Some(standardization) = &self.federated_standardization {
            if self.privacy.is_none() {
                return invalid(
                    "[federated_standardization] charges each PDC's release to the budget it declared for local DP: \
                     it needs [privacy]"
                        .into(),
                );
            }
            standardization.noise_multiplier().map_err(|e| Error::InvalidManifest(e.to_string()))?;
            standardization.bounds_for(&self.data.features).map_err(|e| Error::InvalidManifest(e.to_string()))?;
        }
        Ok(self)
    }

    /// Parses manifest text no longer than `limits.max_manifest_bytes` (checked before the text is parsed).
    pub fn parse_within(text: &str, limits: &Limits) -> Result<Self> {
        match size_exceeded(text, limits) {
            Some(exceeded) => Err(exceeded.into()),
            None => Self::parse(text),
        }
    }

    /// Checks a resolved manifest, whose validation set has `validation_rows` rows, against a coordinator's
    /// `limits`: everything that sets the memory or CPU the study takes of the coordinator, computed without
    /// allocating anything of the model and with checked arithmetic, so no width overflows.
    pub fn check_limits(&self, limits: &Limits, validation_rows: usize) -> Result<(), LimitExceeded> {
        let exceeds = |limit, what: String, maximum: u64| Err(LimitExceeded::new(limit, what, maximum));
        // What the model takes of memory first: it is what a manifest like `hidden = [4096; 2000]` is about.
        let Some(parameters) = self.n_parameters() else {
            return exceeds(
                "max_parameters",
                format!("the model has more than {} parameters", grouped(u64::MAX)),
                limits.max_parameters,
            );
        };
        if parameters > limits.max_parameters {
            return exceeds(
                "max_parameters",
                format!("the model has {} parameters", grouped(parameters)),
                limits.max_parameters,
            );
        }
        let held = self.round_parameters(parameters);
        if held.is_none_or(|held| held > limits.max_round_parameters) {
            let held = held.map_or_else(|| format!("more than {}", grouped(u64::MAX)), grouped);
            let how = if self.holds_round_in_memory() {
                format!(
                    "its rule, server optimiser, central DP or rewards hold every update of a round in memory \
                     (participants.max = {} updates of {} parameters, the models and the server state)",
                    grouped(self.participants.max as u64),
                    grouped(parameters)
                )
            } else {
                format!(
                    "FedAvg streams the updates but holds two models and a 4 MiB piece of each of \
                     participants.max = {} updates",
                    grouped(self.participants.max as u64)
                )
            };
            let what = format!("a round of this study holds {held} parameters at once: {how}");
            return exceeds("max_round_parameters", what, limits.max_round_parameters);
        }
        if let ModelKind::Mlp { hidden } = &self.model {
            if hidden.len() > limits.max_layers {
                let what = format!("model.hidden has {} layers", grouped(hidden.len() as u64));
                return exceeds("max_layers", what, limits.max_layers as u64);
            }
            if let Some((index, &width)) =
                hidden.iter().enumerate().find(|(_, width)| **width > limits.max_hidden_width)
            {
                let what = format!("model.hidden layer {index} is {} wide", grouped(width as u64));
                return exceeds("max_hidden_width", what, limits.max_hidden_width as u64);
            }
        }
        let features = self.data.features.len();
        if features > limits.max_features {
            let what = format!("the study has {} feature columns", grouped(features as u64));
            return exceeds("max_features", what, limits.max_features as u64);
        }
        if validation_rows > limits.max_validation_rows {
            let what = format!("the validation set has {} rows", grouped(validation_rows as u64));
            return exceeds("max_validation_rows", what, limits.max_validation_rows as u64);
        }
        if self.training.rounds > limits.max_rounds {
            let what = format!("training.rounds is {}", grouped(u64::from(self.training.rounds)));
            return exceeds("max_rounds", what, u64::from(limits.max_rounds));
        }
        if self.participants.max > limits.max_participants {
            let what = format!("participants.max is {}", grouped(self.participants.max as u64));
            return exceeds("max_participants", what, limits.max_participants as u64);
        }
        let permutations = self.valuation.gtg.max_permutations;
        if permutations > limits.max_gtg_permutations {
            let what = format!("valuation.gtg.max_permutations is {}", grouped(permutations as u64));
            return exceeds("max_gtg_permutations", what, limits.max_gtg_permutations as u64);
        }
        if self.valuation.exact_limit > limits.max_exact_shapley_participants {
            let what = format!("valuation.exact_limit is {}", self.valuation.exact_limit);
            return exceeds("max_exact_shapley_participants", what, limits.max_exact_shapley_participants as u64);
        }
        if self.aggregation.rule == RuleKind::FlTrust && self.training.local_epochs > limits.max_server_epochs {
            let what = format!(
                "aggregation.rule = \"fltrust\" trains the coordinator's own update for training.local_epochs = {}",
                grouped(u64::from(self.training.local_epochs))
            );
            return exceeds("max_server_epochs", what, u64::from(limits.max_server_epochs));
        }
        Ok(())
    }

    /// The number of parameters of the study's model, counted without allocating it; `None` when it does not
    /// fit a `u64` (an absurd width).
    pub fn n_parameters(&self) -> Option<u64> {
        let mut widths = vec![self.data.features.len() as u64];
        if let ModelKind::Mlp { hidden } = &self.model {
            widths.extend(hidden.iter().map(|&width| width as u64));
        }
        widths.push(1);
        widths.windows(2).try_fold(0u64, |total, pair| {
            // A linear layer: `d_input × d_output` weights and `d_output` biases.
            pair[0].checked_mul(pair[1])?.checked_add(pair[1])?.checked_add(total)
        })
    }

    /// Whether aggregating a round of this study holds every update in memory: any rule but plain FedAvg, a
    /// server optimiser, central DP (which clips each update) and rewards (which value coalitions of them).
    /// Plain FedAvg streams the updates from the archive piece by piece.
    pub fn holds_round_in_memory(&self) -> bool {
        !self.aggregation.is_default() || self.central_privacy.is_some() || self.rewards.budget_per_round > 0.0
    }

    /// The parameters a round of this study makes the coordinator hold at once, at most, for a model of
    /// `n_parameters`: with the round in memory, every update of `participants.max` plus the global model, the
    /// new model and two vectors of server state; streaming, the two models plus a 4 MiB piece of each update.
    /// `None` when the count does not fit a `u64`.
    pub fn round_parameters(&self, n_parameters: u64) -> Option<u64> {
        let participants = self.participants.max as u64;
        if self.holds_round_in_memory() {
            participants.checked_add(4)?.checked_mul(n_parameters)
        } else {
            participants.checked_mul(n_parameters.min(AGGREGATION_PIECE))?.checked_add(n_parameters.checked_mul(2)?)
        }
    }

    /// Choices a valid manifest may make but that measured badly on the robustness matrix (`BENCHMARKS.md`), one
    /// sentence each with what to do instead. `pdc study create` prints them; the study is created regardless.
    pub fn warnings(&self) -> Vec<String> {
        let aggregation = &self.aggregation;
        let mut warnings = Vec::new();
        if aggregation.rule == RuleKind::Krum {
            warnings.push(
                "aggregation.rule = \"krum\" keeps one hospital's update per round: without any attacker it ended \
                 1.2 to 1.4 AUROC points below FedAvg on the robustness matrix; rule = \"multi_krum\" with its \
                 default m = n - f averages the best-scored updates and stayed within 0.3 (a small m is no middle \
                 way: m = 2 halved the gap but lost up to 8.8 points to free riders at 20 %)"
                    .to_owned(),
            );
        }
        if aggregation.server_optimizer != OptimizerKind::None && aggregation.anomaly.enabled {
            let anomaly = &aggregation.anomaly;
            let mut consequences = Vec::new();
            if self.rewards.budget_per_round > 0.0 {
                consequences.push("earn no reward".to_owned());
            }
            if anomaly.exclude_flagged {
                consequences.push("are left out of the aggregate".to_owned());
            }
            let suspend_after = aggregation.suspend_after_rounds();
            if suspend_after > 0 {
                consequences.push(format!("suspend a hospital after {suspend_after} rounds in a row"));
            }
            let consequences =
                if consequences.is_empty() { "are recorded on the ledger".to_owned() } else { consequences.join(", ") };
            warnings.push(format!(
                "aggregation.server_optimizer = \"{}\" with the anomaly check: on the breast-cancer benchmark the \
                 server optimisers at their default learning rates made the check flag 7 to 35 % of honest updates \
                 and miss up to 70 % of free riders (1.3 % and none without an optimiser), and flagged updates \
                 {consequences}; the server learning rates that kept it within 5 % (fedadam or fedyogi 0.003, \
                 fedadagrad 0.03) ended below plain FedAvg elsewhere, so leave the optimiser out or set \
                 [aggregation.anomaly] enabled = false",
                aggregation.server_optimizer
            ));
        }
        warnings
    }

    /// The canonical TOML of the manifest: what is hashed, signed by consenting PDCs and sent in tasks.
    pub fn to_canonical_toml(&self) -> String {
        toml::to_string(self).expect("a manifest always serialises")
    }

    /// The schema PDCs load their tables with.
    pub fn schema(&self) -> Schema {
        Schema { features: self.data.features.clone(), label: self.data.label.clone() }
    }

    /// The model specification.
    pub fn model_spec(&self) -> ModelSpec {
        ModelSpec { kind: self.model.clone(), n_features: self.data.features.len(), task: self.data.task }
    }

    /// The local-training configuration for one PDC in one round.
    pub fn train_config(&self, seed: u64) -> TrainConfig {
        TrainConfig {
            epochs: self.training.local_epochs,
            batch_size: self.training.batch_size,
            learning_rate: self.training.learning_rate,
            seed,
            proximal_mu: self.training.proximal_mu,
        }
    }
}

/// A manifest over one of a coordinator's [`Limits`]: which, by how much. As an [`Error`] it is
/// `InvalidManifest` (`InvalidArgument` on the wire), e.g. "invalid manifest: the model has 134,183,895,044
/// parameters; this coordinator's limit (limits.max_parameters) is 50,000,000".
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LimitExceeded {
    /// The key of the `[limits]` table.
    pub limit: &'static str,
    /// What the manifest asks for.
    pub what: String,
    /// The limit's value.
    pub maximum: u64,
}

impl std::fmt::Display for LimitExceeded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}; this coordinator's limit (limits.{}) is {}", self.what, self.limit, grouped(self.maximum))
    }
}

impl std::error::Error for LimitExceeded {}

impl LimitExceeded {
    fn new(limit: &'static str, what: String, maximum: u64) -> Self {
        Self { limit, what, maximum }
    }
}

impl From<LimitExceeded> for Error {
    fn from(exceeded: LimitExceeded) -> Self {
        Error::InvalidManifest(exceeded.to_string())
    }
}

/// Checks a study's manifest text and validation set against `limits`, the way `CreateStudy` and a restart do,
/// before anything of the study is built: the text's size, then (once parsed and resolved against the validation
/// set's header) [`Manifest::check_limits`]. Returns the limit exceeded, if any.
///
/// # Errors
///
/// A manifest or validation set that is invalid for any other reason (it would be refused anyway).
pub fn limit_exceeded(manifest_toml: &str, validation_csv: &[u8], limits: &Limits) -> Result<Option<LimitExceeded>> {
    if let Some(exceeded) = size_exceeded(manifest_toml, limits) {
        return Ok(Some(exceeded));
    }
    let manifest = Manifest::parse(manifest_toml)?;
    let csv_text = std::str::from_utf8(validation_csv)
        .map_err(|e| Error::InvalidArgument { field: "validation_csv", detail: format!("not UTF-8: {e}") })?;
    let manifest = manifest.resolve(&csv_header(csv_text))?;
    // Counted without parsing a value: a row is a non-blank line after the header.
    let rows = csv_text.lines().skip(1).filter(|line| !line.trim().is_empty()).count();
    Ok(manifest.check_limits(limits, rows).err())
}

/// The refusal of a manifest text longer than `limits.max_manifest_bytes`, if it is.
fn size_exceeded(text: &str, limits: &Limits) -> Option<LimitExceeded> {
    (text.len() > limits.max_manifest_bytes).then(|| {
        let what = format!("the manifest is {} bytes", grouped(text.len() as u64));
        LimitExceeded::new("max_manifest_bytes", what, limits.max_manifest_bytes as u64)
    })
}

/// The message of an error without the variant's prefix, so a nested manifest error reads once.
fn error_detail(error: &Error) -> String {
    match error {
        Error::InvalidManifest(detail) => detail.clone(),
        Error::InvalidArgument { field, detail } => format!("{field}: {detail}"),
        other => other.to_string(),
    }
}

/// Reads the header of a CSV text: the column names of its first line.
pub fn csv_header(text: &str) -> Vec<String> {
    let first = text.lines().next().unwrap_or("");
    first.split(',').map(|c| c.trim().trim_matches('"').to_owned()).collect()
}

/// Loads the researcher's validation set for a resolved manifest.
pub fn load_validation(manifest: &Manifest, csv_text: &str) -> Result<Dataset> {
    pdc_models::parse_csv(csv_text, "validation set", &manifest.schema()).map_err(Error::InvalidValidationSet)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MANIFEST: &str = r#"
name = "bc"
seed = 3
model = { kind = "mlp", hidden = [8] }
[data]
task = "binary_classification"
label = "y"
[training]
rounds = 2
local_epochs = 1
batch_size = 4
learning_rate = 0.1
[participants]
min = 1
max = 3
round_deadline_secs = 10
"#;

    fn header() -> Vec<String> {
        vec!["a".into(), "b".into(), "y".into()]
    }

    #[test]
    fn features_default_to_every_other_column() {
        let manifest = Manifest::parse(MANIFEST).unwrap().resolve(&header()).unwrap();
        assert_eq!(manifest.data.features, ["a", "b"]);
        assert_eq!(manifest.model_spec().n_features, 2);
        // The canonical form parses back to the same manifest.
        assert_eq!(Manifest::parse(&manifest.to_canonical_toml()).unwrap(), manifest);
    }

    /// The README's recommended robust study resolves, and needs the participants Multi-Krum needs.
    #[test]
    fn the_robust_example_resolves_and_needs_two_f_plus_three_participants() {
        let text = include_str!("../../examples/robust-study.toml");
        let header: Vec<String> = ["mean_radius", "worst_texture", "malignant"].map(str::to_owned).to_vec();
        let manifest = Manifest::parse(text).unwrap().resolve(&header).unwrap();
        assert_eq!(manifest.aggregation.rule().unwrap(), crate::aggregation::rule::Rule::MultiKrum { f: 2, m: None });
        assert!(manifest.aggregation.anomaly.exclude_flagged);
        assert_eq!(manifest.aggregation.server_optimizer, crate::aggregation::rule::OptimizerKind::None);
        let error = Manifest::parse(&text.replace("min = 7", "min = 6")).unwrap().resolve(&header).unwrap_err();
        assert_eq!(
            error.to_string(),
            "invalid manifest: aggregation.rule = \"multi_krum\" needs at least 7 updates per round, but \
             participants.min is 6"
        );
    }

    #[test]
    fn krum_and_a_server_optimizer_with_the_anomaly_check_are_warned_about() {
        let resolve = |extra: &str| {
            let text = format!("{MANIFEST}{extra}").replace("min = 1", "min = 3");
            Manifest::parse(&text).unwrap().resolve(&header()).unwrap()
        };
        assert!(resolve("").warnings().is_empty());
        let krum = resolve("[aggregation]\nrule = \"krum\"\nf = 0\n").warnings();
        assert_eq!(krum.len(), 1);
        assert!(krum[0].starts_with("aggregation.rule = \"krum\" keeps one hospital's update"), "{krum:?}");
        assert!(krum[0].contains("a small m is no middle way"), "{krum:?}");
        assert!(resolve("[aggregation]\nrule = \"multi_krum\"\nf = 0\n").warnings().is_empty());

        // The warning names what a flag does in this study.
        let adam = resolve("[aggregation]\nserver_optimizer = \"fedadam\"\n").warnings();
        assert_eq!(adam.len(), 1);
        assert!(adam[0].starts_with("aggregation.server_optimizer = \"fedadam\" with the anomaly check"), "{adam:?}");
        // Without a say from the manifest, an optimiser study suspends no one (`suspend_after_rounds()`).
        assert!(adam[0].contains("flagged updates are recorded on the ledger;"), "{adam:?}");
        let suspending =
            resolve("[aggregation]\nserver_optimizer = \"fedadam\"\n[aggregation.anomaly]\nsuspend_after_rounds = 3\n");
        assert!(suspending.warnings()[0].contains("flagged updates suspend a hospital after 3 rounds in a row;"));
        let consequences = resolve(
            "[rewards]\nbudget_per_round = 10.0\n[aggregation]\nserver_optimizer = \"fedyogi\"\n\
             [aggregation.anomaly]\nexclude_flagged = true\nsuspend_after_rounds = 0\n",
        )
        .warnings();
        assert!(
            consequences[0].contains("flagged updates earn no reward, are left out of the aggregate;"),
            "{consequences:?}"
        );
        let unchecked =
            resolve("[aggregation]\nserver_optimizer = \"fedadam\"\n[aggregation.anomaly]\nenabled = false\n");
        assert!(unchecked.warnings().is_empty());
        // The README's recommended study draws none.
        let text = include_str!("../../examples/robust-study.toml");
        let header: Vec<String> = ["mean_radius", "worst_texture", "malignant"].map(str::to_owned).to_vec();
        assert!(Manifest::parse(text).unwrap().resolve(&header).unwrap().warnings().is_empty());
    }

    fn limited(extra: &str, model: &str) -> Result<Option<LimitExceeded>> {
        let text = format!("{MANIFEST}{extra}").replace("hidden = [8]", model);
        limit_exceeded(&text, b"a,b,y\n1,2,0\n3,4,1\n", &Limits::default())
    }

    /// The issue's manifest: 2,000 layers of 4,096 over 30 features would be 134,183,895,044 bytes of `f32`.
    #[test]
    fn a_model_over_the_parameter_cap_is_refused_before_it_is_allocated() {
        let hidden = vec!["4096"; 2000].join(", ");
        let text = MANIFEST.replace("hidden = [8]", &format!("hidden = [{hidden}]"));
        let header: Vec<String> = (0..30).map(|i| format!("f{i}")).chain(["y".to_owned()]).collect();
        let manifest = Manifest::parse(&text).unwrap().resolve(&header).unwrap();
        assert_eq!(manifest.n_parameters(), Some(33_545_973_761));
        assert_eq!(manifest.n_parameters().unwrap() * 4, 134_183_895_044);
        let error = Error::from(manifest.check_limits(&Limits::default(), 10).unwrap_err());
        assert_eq!(
            error.to_string(),
            "invalid manifest: the model has 33,545,973,761 parameters; this coordinator's limit \
             (limits.max_parameters) is 50,000,000"
        );
        assert_eq!(crate::to_status(&error).code(), tonic::Code::InvalidArgument);
        // With the parameters allowed, the layers are still too many.
        let generous = Limits { max_parameters: u64::MAX, max_round_parameters: u64::MAX, ..Limits::default() };
        assert_eq!(
            manifest.check_limits(&generous, 10).unwrap_err().to_string(),
            "model.hidden has 2,000 layers; this coordinator's limit (limits.max_layers) is 64"
        );
    }

    /// Checked arithmetic: widths whose product does not fit 64 bits are refused, not wrapped or panicked on.
    #[test]
    fn an_absurd_width_overflows_nothing() {
        let absurd = "hidden = [9223372036854775807, 9223372036854775807]";
        let exceeded = limited("", absurd).unwrap().unwrap();
        assert_eq!(exceeded.limit, "max_parameters");
        assert_eq!(
            exceeded.to_string(),
            "the model has more than 18,446,744,073,709,551,615 parameters; this coordinator's limit \
             (limits.max_parameters) is 50,000,000"
        );
        let wide = limited("", "hidden = [5000]").unwrap().unwrap();
        assert_eq!(
            wide.to_string(),
            "model.hidden layer 0 is 5,000 wide; this coordinator's limit (limits.max_hidden_width) is 4,096"
        );
    }

    #[test]
    fn every_cap_is_named_with_the_value_asked_for() {
        for (extra, model, limit, what) in [
            ("", "hidden = [8]", None, ""),
            (
                "",
                &*format!("hidden = [{}]", vec!["8"; 65].join(", ")),
                Some("max_layers"),
                "model.hidden has 65 layers",
            ),
            (
                "[valuation.gtg]\nmax_permutations = 5001\n",
                "hidden = [8]",
                Some("max_gtg_permutations"),
                "valuation.gtg.max_permutations is 5,001",
            ),
            (
                "[valuation]\nexact_limit = 13\n",
                "hidden = [8]",
                Some("max_exact_shapley_participants"),
                "valuation.exact_limit is 13",
            ),
        ] {
            let exceeded = limited(extra, model).unwrap();
            assert_eq!(exceeded.as_ref().map(|e| e.limit), limit, "{extra}{model}");
            if let Some(exceeded) = exceeded {
                assert!(exceeded.to_string().starts_with(what), "{exceeded}");
            }
        }
        let replaced = |from: &str, to: &str| {
            let text = MANIFEST.replace(from, to);
            limit_exceeded(&text, b"a,b,y\n1,2,0\n", &Limits::default()).unwrap().unwrap().to_string()
        };
        assert_eq!(
            replaced("rounds = 2", "rounds = 100001"),
            "training.rounds is 100,001; this coordinator's limit (limits.max_rounds) is 100,000"
        );
        assert_eq!(
            replaced("max = 3", "max = 1001"),
            "participants.max is 1,001; this coordinator's limit (limits.max_participants) is 1,000"
        );
        let text = format!("{MANIFEST}[aggregation]\nrule = \"fltrust\"\n")
            .replace("min = 1", "min = 3")
            .replace("local_epochs = 1", "local_epochs = 101");
        let exceeded = limit_exceeded(&text, b"a,b,y\n1,2,0\n", &Limits::default()).unwrap().unwrap();
        assert_eq!(exceeded.limit, "max_server_epochs");
        assert!(exceeded.to_string().contains("training.local_epochs = 101"), "{exceeded}");

        // The manifest's own size, before it is parsed (this one would not even parse).
        let huge = "#".repeat(70_000);
        let exceeded = limit_exceeded(&huge, b"a,y\n", &Limits::default()).unwrap().unwrap();
        assert_eq!(
            exceeded.to_string(),
            "the manifest is 70,000 bytes; this coordinator's limit (limits.max_manifest_bytes) is 65,536"
        );
        // Features and validation rows come from the validation set.
        let small = Limits { max_features: 1, max_validation_rows: 1, ..Limits::default() };
        let exceeded = limit_exceeded(MANIFEST, b"a,b,y\n1,2,0\n", &small).unwrap().unwrap();
        assert_eq!(
            exceeded.to_string(),
            "the study has 2 feature columns; this coordinator's limit (limits.max_features) is 1"
        );
        let small = Limits { max_validation_rows: 1, ..Limits::default() };
        let exceeded = limit_exceeded(MANIFEST, b"a,b,y\n1,2,0\n3,4,1\n\n", &small).unwrap().unwrap();
        assert_eq!(exceeded.limit, "max_validation_rows");
        assert!(exceeded.to_string().starts_with("the validation set has 2 rows"), "{exceeded}");
        // A manifest that is invalid for another reason is an error, not a limit.
        let error = limit_exceeded(&MANIFEST.replace("rounds = 2", "rounds = 0"), b"a,b,y\n", &Limits::default());
        assert!(error.unwrap_err().to_string().contains("training.rounds must be at least 1"));
    }

    /// FedAvg streams, so only a piece of each update counts; any other table holds every update.
    #[test]
    fn the_round_footprint_follows_the_rule() {
        let manifest = Manifest::parse(MANIFEST).unwrap().resolve(&header()).unwrap();
        assert!(!manifest.holds_round_in_memory());
        // 3 participants: two models plus a piece (here the whole model) of each update.
        assert_eq!(manifest.round_parameters(1000), Some(5 * 1000));
        assert_eq!(manifest.round_parameters(10 << 20), Some(2 * (10 << 20) + 3 * (1 << 20)));
        assert_eq!(manifest.round_parameters(u64::MAX), None);
        let text = format!("{MANIFEST}[aggregation]\nrule = \"median\"\n");
        let median = Manifest::parse(&text).unwrap().resolve(&header()).unwrap();
        assert!(median.holds_round_in_memory());
        assert_eq!(median.round_parameters(10 << 20), Some(7 * (10 << 20)));

        // A 33.6M-parameter model streams with 100 participants but not with a median over them.
        let wide = |extra: &str| {
            let text = format!("{MANIFEST}{extra}")
                .replace("hidden = [8]", "hidden = [4096, 4096]")
                .replace("max = 3", "max = 100");
            let features: Vec<String> = (0..4096).map(|i| format!("f{i}")).chain(["y".to_owned()]).collect();
            Manifest::parse(&text).unwrap().resolve(&features).unwrap()
        };
        let limits = Limits::default();
        wide("").check_limits(&limits, 1).unwrap();
        let exceeded = wide("[aggregation]\nrule = \"median\"\n").check_limits(&limits, 1).unwrap_err();
        assert_eq!(exceeded.limit, "max_round_parameters");
        assert!(
            exceeded.to_string().starts_with(
                "a round of this study holds 3,490,938,984 parameters at once: its rule, server optimiser, central \
                 DP or rewards hold every update of a round in memory (participants.max = 100 updates of \
                 33,566,721 parameters"
            ),
            "{exceeded}"
        );
    }

    #[test]
    fn unknown_model_is_rejected_with_the_known_kinds() {
        let text = MANIFEST.replace("kind = \"mlp\", hidden = [8]", "kind = \"transformer\"");
        let error = Manifest::parse(&text).unwrap_err().to_string();
        assert!(error.contains("unknown variant `transformer`"), "{error}");
    }

    #[test]
    fn unknown_keys_and_bad_values_are_rejected() {
        let typo = MANIFEST.replace("rounds = 2", "rounds = 2\nround = 3");
        assert!(Manifest::parse(&typo).unwrap_err().to_string().contains("unknown field `round`"));
        for (from, to, expected) in [
            ("rounds = 2", "rounds = 0", "training.rounds"),
            ("learning_rate = 0.1", "learning_rate = nan", "learning_rate"),
            ("learning_rate = 0.1", "learning_rate = 0.1\nproximal_mu = -0.5", "training.proximal_mu must be"),
            ("learning_rate = 0.1", "learning_rate = 0.1\nproximal_mu = 10.0", "with learning_rate 0.1"),
            ("min = 1", "min = 4", "min <= max"),
            ("max = 3", "max = 3\nfraction = 0.0", "participants.fraction 0 must be in (0, 1]"),
            ("max = 3", "max = 3\nfraction = 1.5", "participants.fraction 1.5 must be in (0, 1]"),
            ("label = \"y\"", "label = \"z\"", "label column `z` is not in the validation set"),
        ] {
            let text = MANIFEST.replace(from, to);
            let error = Manifest::parse(&text).and_then(|m| m.resolve(&header())).unwrap_err().to_string();
            assert!(error.contains(expected), "{to}: {error}");
        }
    }

    #[test]
    fn proximal_mu_reaches_local_training_and_stays_out_of_a_plain_manifests_canonical_form() {
        let plain = Manifest::parse(MANIFEST).unwrap().resolve(&header()).unwrap();
        assert_eq!(plain.training.proximal_mu, 0.0);
        assert_eq!(plain.train_config(1).proximal_mu, 0.0);
        assert!(!plain.to_canonical_toml().contains("proximal_mu"));
        let text = MANIFEST.replace("learning_rate = 0.1", "learning_rate = 0.1\nproximal_mu = 0.5");
        let fedprox = Manifest::parse(&text).unwrap().resolve(&header()).unwrap();
        assert_eq!(fedprox.train_config(1).proximal_mu, 0.5);
        let canonical = fedprox.to_canonical_toml();
        assert!(canonical.contains("proximal_mu = 0.5"), "{canonical}");
        assert_eq!(Manifest::parse(&canonical).unwrap(), fedprox);
        // The hospital reads the same key from the canonical manifest its task carries.
        assert_ne!(canonical, plain.to_canonical_toml());
    }

    #[test]
    fn a_missing_feature_column_is_named() {
        let text = MANIFEST.replace("label = \"y\"", "label = \"y\"\nfeatures = [\"a\", \"c\"]");
        let error = Manifest::parse(&text).unwrap().resolve(&header()).unwrap_err().to_string();
        assert_eq!(error, "invalid manifest: feature column `c` is not in the validation set");
    }

    #[test]
    fn federated_standardization_needs_local_dp_and_bounds_for_every_feature() {
        let privacy = "[privacy]\nclip_norm = 1.0\nnoise_multiplier = 1.0\ndelta = 1e-5\n";
        let section = "[federated_standardization]\nnoise_multiplier = 2.0\nbounds = { a = [0, 1], b = [0, 5] }\n";
        let text = format!("{MANIFEST}{privacy}{section}");
        let manifest = Manifest::parse(&text).unwrap().resolve(&header()).unwrap();
        let parsed = Manifest::parse(&manifest.to_canonical_toml()).unwrap();
        assert_eq!(parsed.federated_standardization, manifest.federated_standardization);
        // Without the section the canonical form (and so the hash of existing manifests) is unchanged.
        assert!(!Manifest::parse(MANIFEST).unwrap().to_canonical_toml().contains("federated_standardization"));

        for (text, expected) in [
            (format!("{MANIFEST}{section}"), "it needs [privacy]"),
            (format!("{MANIFEST}{privacy}{}", section.replace(", b = [0, 5]", "")), "feature `b` has no bounds"),
            (format!("{MANIFEST}{privacy}{}", section.replace("noise_multiplier = 2.0", "epsilon = 1.0")), "delta"),
            (format!("{MANIFEST}{privacy}{}", section.replace("[0, 5]", "[5, 0]")), "`b`"),
        ] {
            let error = Manifest::parse(&text).and_then(|m| m.resolve(&header())).unwrap_err().to_string();
            assert!(error.contains(expected), "{text}: {error}");
        }
    }
}
