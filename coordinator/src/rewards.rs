//! Rewards for a round: each PDC's utility measured on the researcher's validation set, free riders struck, and the
//! round's reward budget split in proportion to positive utility, with everything an auditor needs to recompute it.
//!
//! A round is valued as a cooperative game over its accepted updates (see [`crate::valuation`]): the value of a
//! coalition is the study's validation metric ([`UtilityMetric`]) of the model the coalition's updates would have
//! made, i.e. the previous global model plus the FedAvg of the coalition's deltas (weights = example counts, `f64`
//! accumulation, members in sorted PDC-id order, exactly as the round itself aggregates). The empty coalition is the
//! previous global model. [`CoalitionGame`] evaluates coalitions, caches their values and evaluates batches of them
//! in parallel; [`value_round`] values a round and splits its budget:
//!
//! 1. updates are sorted by PDC id, checked, and screened for free riders ([`Strike`]);
//! 2. utilities φᵢ come from the study's [`ValuationMethod`] (exact Shapley up to
//!    [`ValuationSettings::exact_limit`] participants, GTG-Shapley above it or on request, or leave-one-out);
//! 3. the budget available (this round's plus whatever earlier rounds carried over) is split as
//!    B·max(φᵢ, 0)/Σⱼ max(φⱼ, 0) over the PDCs that were not struck, so that the rewards sum to exactly what is paid;
//! 4. a round where that sum of positive utilities is at most [`ValuationSettings::truncation_epsilon`] showed no
//!    measurable gain: it pays nobody and carries the whole amount to the next round.
//!
//! Everything here is pure and deterministic: no I/O, no clock, and randomness only from the seed in the input (see
//! [`round_seed`]). The same [`RoundInput`] gives the same [`RoundValuation`] bit for bit, whatever the number of
//! threads, so [`replay_round`] can recompute a recorded round and report every difference.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, PoisonError};

use pdc_models::{Dataset, Metrics, ModelSpec, Task};
use pdc_privacy::clip::l2_norm;
use serde::{Deserialize, Serialize};

use crate::aggregation::{FedAvg, apply_delta};
use crate::valuation::{
    DEFAULT_EXACT_LIMIT, EXACT_HARD_LIMIT, GtgConfig, exact_shapley, gtg_shapley_batched, leave_one_out,
};
use crate::{Error, Result};

/// The default [`ValuationSettings::free_rider_norm_ratio`]: an update a thousand times smaller than the round's
/// median update did not train.
pub const DEFAULT_FREE_RIDER_NORM_RATIO: f64 = 1e-3;

/// The default [`ValuationSettings::truncation_epsilon`]: only guards against rounding noise. A round whose positive
/// utilities sum to less than this (in the metric's units) pays nobody.
pub const DEFAULT_TRUNCATION_EPSILON: f64 = 1e-9;

/// An update whose L2 norm is at most this fraction of the global model's norm is an echo of the global model: the
/// PDC sent back (to within a few `f32` rounding steps, since `f32::EPSILON` ≈ 1.2e-7) the model it was given.
pub const ECHO_RELATIVE_NORM: f64 = 1e-6;

/// Two updates whose cosine similarity exceeds this and whose [`NEAR_COPY_RELATIVE_DIFFERENCE`] test also holds are
/// near-copies of each other (see [`Strike::NearCopy`]).
pub const NEAR_COPY_COSINE: f64 = 0.9999;

/// Two updates a, b with ‖a − b‖ / max(‖a‖, ‖b‖) below this (and a cosine above [`NEAR_COPY_COSINE`]) are
/// near-copies of each other (see [`Strike::NearCopy`]).
pub const NEAR_COPY_RELATIVE_DIFFERENCE: f64 = 1e-4;

/// How many permutations GTG-Shapley scans in lockstep ([`gtg_shapley_batched`]), so that up to this many coalitions
/// are evaluated in parallel. The values are those of sequential GTG-Shapley whatever the group; the group is a
/// constant rather than the number of cores so that the coalitions evaluated (and recorded for auditors) are the
/// same on every machine. The price: when sampling stops, up to 7 permutations' worth of coalitions were evaluated
/// for nothing.
pub const GTG_PERMUTATION_GROUP: usize = 8;

/// The validation metric a coalition's model is scored by. Every variant is oriented so that larger is better.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UtilityMetric {
    /// The area under the ROC curve (binary classification; the default there).
    Auroc,
    /// The share of validation rows classified correctly (binary classification).
    Accuracy,
    /// Minus the mean training loss: binary cross-entropy, or MSE for regression.
    NegativeLoss,
    /// Minus the mean squared error (regression; the default there).
    NegativeMse,
}

impl UtilityMetric {
    /// The metric a study uses when its manifest names none: AUROC for binary classification, negative MSE for
    /// regression.
    pub fn default_for(task: Task) -> Self {
        match task {
            Task::BinaryClassification => Self::Auroc,
            Task::Regression => Self::NegativeMse,
        }
    }

    /// The metric's name, as in a manifest.
    pub fn name(self) -> &'static str {
        match self {
            Self::Auroc => "auroc",
            Self::Accuracy => "accuracy",
            Self::NegativeLoss => "negative_loss",
            Self::NegativeMse => "negative_mse",
        }
    }

    /// Checks that the metric exists for `task`: AUROC and accuracy only for binary classification, negative MSE
    /// only for regression, negative loss for both.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidArgument`] on the field `valuation.metric`.
    pub fn check_task(self, task: Task) -> Result<()> {
        let fits = match self {
            Self::Auroc | Self::Accuracy => task == Task::BinaryClassification,
            Self::NegativeMse => task == Task::Regression,
            Self::NegativeLoss => true,
        };
        if fits {
            Ok(())
        } else {
            Err(Error::InvalidArgument {
                field: "valuation.metric",
                detail: format!("{} is not defined for {task:?}", self.name()),
            })
        }
    }

    /// The metric's value in `metrics`.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidArgument`] on the field `validation` when the metric is absent: AUROC on a validation set
    /// with a single class, or a metric of the other task.
    pub fn score(self, metrics: &Metrics) -> Result<f64> {
        let value = match self {
            Self::Auroc => metrics.auroc,
            Self::Accuracy => metrics.accuracy,
            Self::NegativeLoss => Some(-metrics.loss),
            Self::NegativeMse => metrics.mse.map(|mse| -mse),
        };
        value.ok_or_else(|| Error::InvalidArgument {
            field: "validation",
            detail: match self {
                Self::Auroc => "AUROC needs both classes in the validation set".to_owned(),
                _ => format!("the validation metrics hold no {}", self.name()),
            },
        })
    }
}

impl fmt::Display for UtilityMetric {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(self.name())
    }
}

/// How a round's utilities are computed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ValuationMethod {
    /// The exact Shapley value (all 2ⁿ coalitions) up to [`ValuationSettings::exact_limit`] participants, GTG-Shapley
    /// above it. The default.
    #[default]
    ExactShapley,
    /// GTG-Shapley, a truncated, guided Monte Carlo estimate of the Shapley value (seeded).
    GtgShapley,
    /// Leave-one-out: v(N) − v(N∖{i}), n + 2 evaluations (v(∅) is always evaluated and recorded); gives nothing to
    /// either of two redundant PDCs.
    LeaveOneOut,
}

impl ValuationMethod {
    /// The method's name, as in a manifest and on the ledger.
    pub fn name(self) -> &'static str {
        match self {
            Self::ExactShapley => "exact_shapley",
            Self::GtgShapley => "gtg_shapley",
            Self::LeaveOneOut => "leave_one_out",
        }
    }
}

impl fmt::Display for ValuationMethod {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(self.name())
    }
}

/// GTG-Shapley's settings as a manifest states them (the seed comes from the study and the round, see
/// [`round_seed`]). The thresholds are in the units of the utility metric; the defaults are
/// [`GtgConfig::default`]'s.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GtgSettings {
    /// See [`GtgConfig::max_permutations`].
    pub max_permutations: usize,
    /// See [`GtgConfig::eps_between_round`].
    pub eps_between_round: f64,
    /// See [`GtgConfig::eps_within_round`].
    pub eps_within_round: f64,
    /// See [`GtgConfig::convergence_tolerance`].
    pub convergence_tolerance: f64,
    /// See [`GtgConfig::convergence_window`].
    pub convergence_window: usize,
}

impl Default for GtgSettings {
    fn default() -> Self {
        let GtgConfig {
            seed: _,
            max_permutations,
            eps_between_round,
            eps_within_round,
            convergence_tolerance,
            convergence_window,
        } = GtgConfig::default();
        Self { max_permutations, eps_between_round, eps_within_round, convergence_tolerance, convergence_window }
    }
}

impl GtgSettings {
    /// The [`GtgConfig`] of these settings with `seed`.
    pub fn config(&self, seed: u64) -> GtgConfig {
        GtgConfig {
            seed,
            max_permutations: self.max_permutations,
            eps_between_round: self.eps_between_round,
            eps_within_round: self.eps_within_round,
            convergence_tolerance: self.convergence_tolerance,
            convergence_window: self.convergence_window,
        }
    }
}

/// A study's valuation settings: the manifest's `[valuation]` table. Every key is optional.
///
/// ```toml
/// [valuation]
/// method = "exact_shapley"        # exact_shapley | gtg_shapley | leave_one_out
/// metric = "auroc"                # auroc | accuracy | negative_loss | negative_mse (default by task)
/// exact_limit = 10                # exact Shapley up to this many PDCs, GTG-Shapley above
/// free_rider_norm_ratio = 1e-3
/// truncation_epsilon = 1e-9
/// [valuation.gtg]
/// max_permutations = 500
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ValuationSettings {
    /// How utilities are computed.
    pub method: ValuationMethod,
    /// The utility metric; `None` means [`UtilityMetric::default_for`] the study's task.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metric: Option<UtilityMetric>,
    /// [`ValuationMethod::ExactShapley`] is exact up to this many participants (at most [`EXACT_HARD_LIMIT`]) and
    /// falls back to GTG-Shapley above it.
    pub exact_limit: usize,
    /// An update whose L2 norm is below this fraction of the round's median update norm is struck as
    /// [`Strike::NegligibleUpdate`].
    pub free_rider_norm_ratio: f64,
    /// A round whose positive utilities (of PDCs not struck) sum to at most this is truncated: it pays nobody and
    /// carries its budget over.
    pub truncation_epsilon: f64,
    /// GTG-Shapley's settings.
    pub gtg: GtgSettings,
}

impl Default for ValuationSettings {
    fn default() -> Self {
        Self {
            method: ValuationMethod::default(),
            metric: None,
            exact_limit: DEFAULT_EXACT_LIMIT,
            free_rider_norm_ratio: DEFAULT_FREE_RIDER_NORM_RATIO,
            truncation_epsilon: DEFAULT_TRUNCATION_EPSILON,
            gtg: GtgSettings::default(),
        }
    }
}

impl ValuationSettings {
    /// The metric used for `task`: the one named, or the task's default.
    pub fn metric_for(&self, task: Task) -> UtilityMetric {
        self.metric.unwrap_or_else(|| UtilityMetric::default_for(task))
    }

    /// Checks every value.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidArgument`] naming the offending `valuation.…` key.
    pub fn validate(&self) -> Result<()> {
        let invalid = |field: &'static str, detail: String| Err(Error::InvalidArgument { field, detail });
        if self.exact_limit > EXACT_HARD_LIMIT {
            return invalid(
                "valuation.exact_limit",
                format!("{} is above the hard limit of {EXACT_HARD_LIMIT} participants", self.exact_limit),
            );
        }
        let ratio = self.free_rider_norm_ratio;
        if !(ratio.is_finite() && (0.0..1.0).contains(&ratio)) {
            return invalid("valuation.free_rider_norm_ratio", format!("{ratio} is not in [0, 1)"));
        }
        let epsilon = self.truncation_epsilon;
        if !(epsilon.is_finite() && epsilon >= 0.0) {
            return invalid("valuation.truncation_epsilon", format!("{epsilon} is not finite and non-negative"));
        }
        let gtg = &self.gtg;
        if gtg.max_permutations == 0 {
            return invalid("valuation.gtg.max_permutations", "must be at least 1".to_owned());
        }
        for (field, value) in [
            ("valuation.gtg.eps_between_round", gtg.eps_between_round),
            ("valuation.gtg.eps_within_round", gtg.eps_within_round),
            ("valuation.gtg.convergence_tolerance", gtg.convergence_tolerance),
        ] {
            if !value.is_finite() {
                return invalid(field, format!("{value} is not finite"));
            }
        }
        Ok(())
    }
}

/// The seed of a round's valuation (GTG-Shapley's permutations): the first 8 bytes, little-endian, of
/// SHA3-256(`"pdc/valuation/v1"` ‖ study seed (8 bytes LE) ‖ round (4 bytes LE)). Distinct from the seeds the
/// coordinator derives for training, so valuation never replays a PDC's batch order.
///
/// ```
/// use pdc_coordinator::rewards::round_seed;
/// assert_eq!(round_seed(7, 3), round_seed(7, 3));
/// assert_ne!(round_seed(7, 3), round_seed(7, 4));
/// ```
pub fn round_seed(study_seed: u64, round: u32) -> u64 {
    let mut key = b"pdc/valuation/v1".to_vec();
    key.extend_from_slice(&study_seed.to_le_bytes());
    key.extend_from_slice(&round.to_le_bytes());
    let digest = pdc_ledger::sha3_256(&key);
    u64::from_le_bytes(digest[..8].try_into().expect("a SHA3-256 digest has 32 bytes"))
}

/// Aggregates a coalition's updates `(pdc_id, weight, delta)`, given in sorted PDC-id order, into one delta; the
/// study's aggregation rule when it is not FedAvg (for example `rule::aggregate` with the study's configuration).
pub type Aggregator = dyn Fn(&[(&str, f64, &[f32])]) -> Result<Vec<f32>> + Sync;

/// One accepted update of a round, as valued.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RoundUpdate<'a> {
    /// The PDC that sent it.
    pub pdc_id: &'a str,
    /// The number of examples it was trained on: its FedAvg weight; at least 1.
    pub n_examples: u64,
    /// The trained parameters minus the global model the PDC started from.
    pub delta: &'a [f32],
    /// Whether the caller flagged the update (an anomaly score, a failed check): it is valued but struck.
    pub flagged: bool,
}

/// Everything a round's valuation depends on. The same input always gives the same [`RoundValuation`], bit for bit.
#[derive(Clone, Copy)]
pub struct RoundInput<'a> {
    /// The round.
    pub round: u32,
    /// The valuation seed: [`round_seed`] of the study's seed and the round.
    pub seed: u64,
    /// The study's model.
    pub spec: &'a ModelSpec,
    /// The global model the round started from (the empty coalition's model).
    pub global: &'a [f32],
    /// The researcher's validation set, standardised as the PDCs' data is.
    pub validation: &'a Dataset,
    /// The round's accepted updates, in any order (they are valued in sorted PDC-id order); ids are unique.
    pub updates: &'a [RoundUpdate<'a>],
    /// The study's valuation settings.
    pub settings: &'a ValuationSettings,
    /// How a coalition's updates are aggregated; `None` is FedAvg weighted by example counts.
    pub aggregator: Option<&'a Aggregator>,
    /// The round's own reward budget; finite and non-negative.
    pub budget: f64,
    /// What earlier truncated rounds carried over to this one; finite and non-negative.
    pub carried_in: f64,
}

impl fmt::Debug for RoundInput<'_> {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter
            .debug_struct("RoundInput")
            .field("round", &self.round)
            .field("seed", &self.seed)
            .field("spec", self.spec)
            .field("n_parameters", &self.global.len())
            .field("n_validation_rows", &self.validation.n_rows())
            .field("pdcs", &self.updates.iter().map(|update| update.pdc_id).collect::<Vec<_>>())
            .field("settings", self.settings)
            .field("aggregator", &if self.aggregator.is_some() { "custom" } else { "fedavg" })
            .field("budget", &self.budget)
            .field("carried_in", &self.carried_in)
            .finish()
    }
}

/// Why a PDC gets no reward for a round, whatever its utility.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "reason", rename_all = "snake_case")]
pub enum Strike {
    /// The caller flagged the update ([`RoundUpdate::flagged`]).
    Flagged,
    /// The update is zero, or so small (‖δ‖ ≤ [`ECHO_RELATIVE_NORM`]·‖global‖) that the PDC sent back the global
    /// model it was given.
    EchoOfGlobal {
        /// ‖δ‖.
        update_norm: f64,
        /// ‖global‖.
        global_norm: f64,
    },
    /// The update is below [`ValuationSettings::free_rider_norm_ratio`] times the round's median update norm: too
    /// small to have come from training like the others.
    NegligibleUpdate {
        /// ‖δ‖.
        update_norm: f64,
        /// The median ‖δ‖ over the round's updates (the mean of the two middle ones for an even count).
        median_norm: f64,
    },
    /// The update is a near-copy of another PDC's: cosine similarity above [`NEAR_COPY_COSINE`] and
    /// ‖a − b‖ / max(‖a‖, ‖b‖) below [`NEAR_COPY_RELATIVE_DIFFERENCE`].
    ///
    /// Independent training never comes this close: two hospitals holding the very same rows still shuffle them
    /// with their own seeds (and add their own DP noise), which moves their updates apart by far more than 1e-4
    /// relative (about 0.1 on the breast-cancer table). So a near-copy means that one PDC re-sent another's update
    /// or that both sent an update computed once. The coordinator cannot tell original from copy (both arrive
    /// within one round, unseen by the other PDCs), so **every** member of such a pair is struck, each naming the
    /// first (by id) other PDC it copies, and the governance board settles the case from the ledger. Echoed and
    /// negligible updates are struck as such and not compared, since two zero updates are trivially alike.
    NearCopy {
        /// The first PDC (by id) whose update this one nearly copies.
        of: String,
        /// The cosine similarity of the two updates.
        cosine: f64,
        /// ‖a − b‖ / max(‖a‖, ‖b‖).
        relative_difference: f64,
    },
}

/// One PDC's part of a round's valuation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PdcValuation {
    /// The PDC.
    pub pdc_id: String,
    /// Its update's FedAvg weight.
    pub n_examples: u64,
    /// ‖δ‖, the L2 norm of its update (accumulated in `f64`).
    pub update_norm: f64,
    /// Its utility φᵢ, in the metric's units (struck PDCs keep theirs: it is what they did to the model).
    pub utility: f64,
    /// Its reward for the round: 0 when struck, when φᵢ ≤ 0, or when the round is truncated.
    pub reward: f64,
    /// Why it is paid nothing whatever its utility, if it is struck.
    pub strike: Option<Strike>,
}

/// A coalition's value, as used by a valuation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CoalitionValue {
    /// The members' PDC ids, sorted; empty for the previous global model.
    pub members: Vec<String>,
    /// The utility metric of the coalition's model.
    pub value: f64,
}

/// A round's valuation and rewards, with what an auditor needs to recompute them.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RoundValuation {
    /// The round.
    pub round: u32,
    /// The method actually applied: [`ValuationMethod::GtgShapley`] when exact Shapley was asked for above the
    /// exact limit.
    pub method: ValuationMethod,
    /// The utility metric.
    pub metric: UtilityMetric,
    /// The valuation seed (used by GTG-Shapley only, recorded whatever the method).
    pub seed: u64,
    /// Every PDC of the round, sorted by id.
    pub pdcs: Vec<PdcValuation>,
    /// v(∅): the metric of the global model the round started from.
    pub empty_value: f64,
    /// v(N): the metric of the model of every update of the round.
    pub grand_value: f64,
    /// Every coalition evaluated, sorted by size and then by member ids (as sorted PDC-index lists).
    pub coalitions: Vec<CoalitionValue>,
    /// How many distinct coalitions were evaluated (the length of `coalitions`).
    pub evaluations: usize,
    /// GTG-Shapley's permutations sampled; 0 for the other methods.
    pub permutations: usize,
    /// The round's own budget.
    pub budget: f64,
    /// What earlier rounds carried over to this one.
    pub carried_in: f64,
    /// The sum of the rewards (in PDC-id order): `budget + carried_in` to within 1e-12 relative, or 0 when
    /// truncated.
    pub paid: f64,
    /// What is carried to the next round: `budget + carried_in` when truncated, 0 otherwise.
    pub carried_over: f64,
    /// Whether the round showed no measurable gain (see [`ValuationSettings::truncation_epsilon`]).
    pub truncated: bool,
}

impl RoundValuation {
    /// The struck PDCs and why, in id order.
    pub fn struck(&self) -> impl Iterator<Item = (&str, &Strike)> {
        self.pdcs.iter().filter_map(|pdc| pdc.strike.as_ref().map(|strike| (pdc.pdc_id.as_str(), strike)))
    }

    /// `(pdc_id, utility)` of every PDC, in id order (the ledger's `UtilityScores`).
    pub fn utilities(&self) -> Vec<(String, f64)> {
        self.pdcs.iter().map(|pdc| (pdc.pdc_id.clone(), pdc.utility)).collect()
    }

    /// `(pdc_id, reward)` of every PDC with a positive reward, in id order (the ledger's `RewardPaid`).
    pub fn rewards(&self) -> Vec<(String, f64)> {
        self.pdcs.iter().filter(|pdc| pdc.reward > 0.0).map(|pdc| (pdc.pdc_id.clone(), pdc.reward)).collect()
    }
}

/// Values a round: screens its updates for free riders, computes each PDC's utility with the study's method and
/// splits the available budget (`budget + carried_in`) in proportion to positive utility among the PDCs not struck.
///
/// The rewards sum to the available budget: each is B·pᵢ/Σp with pᵢ = max(φᵢ, 0), and the largest then absorbs the
/// rounding residue (B minus the sum of the others), so their `f64` sum in id order is B to within 1e-12 relative;
/// the residue goes to the largest reward because it is then never more than a few ulps of it, and can never make
/// a reward negative. When Σp ≤ [`ValuationSettings::truncation_epsilon`] (or nothing is positive, or every PDC is
/// struck) the round is truncated: nobody is paid and the whole amount is carried over. A round without updates is
/// truncated too.
///
/// Coalitions are evaluated in parallel on the available cores; the result does not depend on how many there are.
///
/// # Errors
///
/// [`Error::InvalidArgument`] for invalid settings, a negative or non-finite budget, a metric the task lacks or
/// duplicate PDC ids; [`Error::InvalidUpdate`] for an update of the wrong length, with a non-finite value or without
/// examples; [`Error::Model`] when the global model does not fit the spec or a coalition's model cannot be evaluated;
/// the aggregator's error.
pub fn value_round(input: &RoundInput<'_>) -> Result<RoundValuation> {
    let settings = input.settings;
    settings.validate()?;
    check_amount("budget", input.budget)?;
    check_amount("carried_in", input.carried_in)?;
    let metric = settings.metric_for(input.spec.task);
    metric.check_task(input.spec.task)?;

    let mut updates = input.updates.to_vec();
    updates.sort_by(|a, b| a.pdc_id.cmp(b.pdc_id));
    if let Some(pair) = updates.windows(2).find(|pair| pair[0].pdc_id == pair[1].pdc_id) {
        return Err(Error::InvalidArgument {
            field: "updates",
            detail: format!("PDC {} has two updates in the round", pair[0].pdc_id),
        });
    }
    let game = CoalitionGame::new(input.spec, input.global, input.validation, metric, &updates)?;
    let game = match input.aggregator {
        Some(aggregator) => game.with_aggregator(aggregator),
        None => game,
    };
    let norms: Vec<f64> = updates.iter().map(|update| l2_norm(update.delta)).collect();
    let strikes = free_riders(&updates, &norms, l2_norm(input.global), settings.free_rider_norm_ratio);

    let n = updates.len();
    let everyone: Vec<usize> = (0..n).collect();
    let exact = n <= settings.exact_limit.min(EXACT_HARD_LIMIT);
    let (method, utilities, permutations) = match settings.method {
        ValuationMethod::ExactShapley if exact => {
            game.prefetch_all()?;
            (ValuationMethod::ExactShapley, exact_shapley(n, |coalition| game.value(coalition)), 0)
        }
        ValuationMethod::ExactShapley | ValuationMethod::GtgShapley => {
            let evaluate = |batch: &[Vec<usize>]| match game.prefetch(batch) {
                Ok(()) => batch.iter().map(|coalition| game.value(coalition)).collect(),
                Err(error) => {
                    game.record(error);
                    vec![f64::NAN; batch.len()]
                }
            };
            let config = settings.gtg.config(input.seed);
            let outcome = gtg_shapley_batched(n, evaluate, &config, GTG_PERMUTATION_GROUP);
            (ValuationMethod::GtgShapley, outcome.values, outcome.permutations)
        }
        ValuationMethod::LeaveOneOut => {
            let mut coalitions = vec![Vec::new(), everyone.clone()];
            coalitions.extend((0..n).map(|left_out| everyone.iter().copied().filter(|&m| m != left_out).collect()));
            game.prefetch(&coalitions)?;
            (ValuationMethod::LeaveOneOut, leave_one_out(n, |coalition| game.value(coalition)), 0)
        }
    };
    // The value closure cannot fail; an evaluation that did is reported here.
    game.check()?;
    let empty_value = game.value(&[]);
    let grand_value = game.value(&everyone);
    game.check()?;
    if let Some((index, utility)) = utilities.iter().enumerate().find(|(_, utility)| !utility.is_finite()) {
        return Err(Error::InvalidArgument {
            field: "validation",
            detail: format!("the utility of PDC {} is {utility}", updates[index].pdc_id),
        });
    }

    let available = input.budget + input.carried_in;
    let payable: Vec<f64> = utilities
        .iter()
        .zip(&strikes)
        .map(|(&utility, strike)| if strike.is_some() { 0.0 } else { utility.max(0.0) })
        .collect();
    let split = split_budget(available, &payable, settings.truncation_epsilon);

    let pdcs = updates
        .iter()
        .zip(norms)
        .zip(utilities)
        .zip(&split.rewards)
        .zip(strikes)
        .map(|((((update, update_norm), utility), &reward), strike)| PdcValuation {
            pdc_id: update.pdc_id.to_owned(),
            n_examples: update.n_examples,
            update_norm,
            utility,
            reward,
            strike,
        })
        .collect();
    let coalitions = game.coalition_values();
    Ok(RoundValuation {
        round: input.round,
        method,
        metric,
        seed: input.seed,
        pdcs,
        empty_value,
        grand_value,
        evaluations: coalitions.len(),
        coalitions,
        permutations,
        budget: input.budget,
        carried_in: input.carried_in,
        paid: split.paid,
        carried_over: split.carried_over,
        truncated: split.truncated,
    })
}

/// One field in which a recorded valuation and its recomputation differ.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Difference {
    /// The field, as a path: `seed`, `pdcs[hospital-a].utility`, `coalitions[{hospital-a, hospital-b}].value`.
    pub field: String,
    /// The recorded value (`absent` when only the recomputation has the field).
    pub recorded: String,
    /// The recomputed value (`absent` when only the record has the field).
    pub recomputed: String,
}

impl fmt::Display for Difference {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(formatter, "{}: recorded {}, recomputed {}", self.field, self.recorded, self.recomputed)
    }
}

/// Every field in which `recorded` and `recomputed` differ, in the order of [`RoundValuation`]'s fields (PDCs by id,
/// coalitions in recorded order, then the ones only recomputed). Floats are compared bit for bit and shown in their
/// shortest exact form, so an empty list means the two are identical.
pub fn compare_valuations(recorded: &RoundValuation, recomputed: &RoundValuation) -> Vec<Difference> {
    let mut differences = Differences::default();
    differences.exact("round", &recorded.round, &recomputed.round);
    differences.exact("method", &recorded.method, &recomputed.method);
    differences.exact("metric", &recorded.metric, &recomputed.metric);
    differences.exact("seed", &recorded.seed, &recomputed.seed);

    let recomputed_pdcs: BTreeMap<&str, &PdcValuation> =
        recomputed.pdcs.iter().map(|pdc| (pdc.pdc_id.as_str(), pdc)).collect();
    let recorded_pdcs: BTreeMap<&str, &PdcValuation> =
        recorded.pdcs.iter().map(|pdc| (pdc.pdc_id.as_str(), pdc)).collect();
    for (&id, &old) in &recorded_pdcs {
        let path = |field: &str| format!("pdcs[{id}].{field}");
        let Some(&new) = recomputed_pdcs.get(id) else {
            differences.absent(format!("pdcs[{id}]"), true);
            continue;
        };
        differences.exact(&path("n_examples"), &old.n_examples, &new.n_examples);
        differences.float(&path("update_norm"), old.update_norm, new.update_norm);
        differences.float(&path("utility"), old.utility, new.utility);
        differences.float(&path("reward"), old.reward, new.reward);
        // Debug output of f64 is its shortest round-trip form, so equal strings mean equal bits.
        differences.exact(&path("strike"), &old.strike, &new.strike);
    }
    for &id in recomputed_pdcs.keys().filter(|id| !recorded_pdcs.contains_key(*id)) {
        differences.absent(format!("pdcs[{id}]"), false);
    }
    if recorded.pdcs.iter().map(|pdc| &pdc.pdc_id).ne(recomputed.pdcs.iter().map(|pdc| &pdc.pdc_id)) {
        differences.push("pdcs.order", "(see record)".to_owned(), "(sorted by id)".to_owned());
    }

    differences.float("empty_value", recorded.empty_value, recomputed.empty_value);
    differences.float("grand_value", recorded.grand_value, recomputed.grand_value);
    let name = |members: &[String]| format!("coalitions[{{{}}}]", members.join(", "));
    let recomputed_coalitions: HashMap<&[String], f64> =
        recomputed.coalitions.iter().map(|coalition| (coalition.members.as_slice(), coalition.value)).collect();
    let recorded_coalitions: HashMap<&[String], f64> =
        recorded.coalitions.iter().map(|coalition| (coalition.members.as_slice(), coalition.value)).collect();
    for coalition in &recorded.coalitions {
        match recomputed_coalitions.get(coalition.members.as_slice()) {
            Some(&value) => differences.float(&format!("{}.value", name(&coalition.members)), coalition.value, value),
            None => differences.absent(name(&coalition.members), true),
        }
    }
    for coalition in recomputed.coalitions.iter().filter(|c| !recorded_coalitions.contains_key(c.members.as_slice())) {
        differences.absent(name(&coalition.members), false);
    }
    differences.exact("evaluations", &recorded.evaluations, &recomputed.evaluations);
    differences.exact("permutations", &recorded.permutations, &recomputed.permutations);
    differences.float("budget", recorded.budget, recomputed.budget);
    differences.float("carried_in", recorded.carried_in, recomputed.carried_in);
    differences.float("paid", recorded.paid, recomputed.paid);
    differences.float("carried_over", recorded.carried_over, recomputed.carried_over);
    differences.exact("truncated", &recorded.truncated, &recomputed.truncated);
    differences.0
}

/// Recomputes a round from its inputs (archived updates, validation set, recorded seed and budget) and compares the
/// result with the `recorded` valuation: what `pdc audit replay` reports for the round. An empty list means the
/// record is reproduced bit for bit.
///
/// # Errors
///
/// As [`value_round`].
pub fn replay_round(input: &RoundInput<'_>, recorded: &RoundValuation) -> Result<Vec<Difference>> {
    Ok(compare_valuations(recorded, &value_round(input)?))
}

/// Per-PDC totals over a study's rounds, for `pdc study rewards` and the demo's final table.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct StudyRewards {
    /// Each PDC's totals, by id.
    pub pdcs: BTreeMap<String, PdcTotals>,
    /// The rounds added.
    pub rounds: u32,
    /// The total paid out.
    pub paid: f64,
    /// What the last round added carried over (waiting for a round with a measurable gain).
    pub carried_over: f64,
    /// How many of the rounds were truncated.
    pub truncated_rounds: u32,
}

/// One PDC's totals over a study's rounds.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct PdcTotals {
    /// The rounds it took part in.
    pub rounds: u32,
    /// The sum of its utilities.
    pub utility: f64,
    /// The sum of its rewards.
    pub reward: f64,
    /// The rounds it was struck in.
    pub strikes: u32,
}

impl StudyRewards {
    /// Adds a round's valuation (rounds are expected in order).
    pub fn add(&mut self, round: &RoundValuation) {
        for pdc in &round.pdcs {
            let totals = self.pdcs.entry(pdc.pdc_id.clone()).or_default();
            totals.rounds += 1;
            totals.utility += pdc.utility;
            totals.reward += pdc.reward;
            totals.strikes += u32::from(pdc.strike.is_some());
        }
        self.rounds += 1;
        self.paid += round.paid;
        self.carried_over = round.carried_over;
        self.truncated_rounds += u32::from(round.truncated);
    }
}

/// The cooperative game of a round: v(S) is the utility metric of the previous global model plus the aggregate of
/// the updates of S (the global model itself for S = ∅).
///
/// Coalitions are sorted member indices into the updates the game was built with. Values are cached by coalition, so
/// each is evaluated once however often it is asked for; [`CoalitionGame::prefetch`] evaluates a batch in parallel
/// on the available cores. [`CoalitionGame::value`] fits the `value` argument of [`crate::valuation`]'s functions.
///
/// ```no_run
/// # fn example(game: &pdc_coordinator::rewards::CoalitionGame<'_>) -> pdc_coordinator::Result<()> {
/// use pdc_coordinator::valuation::exact_shapley;
/// game.prefetch_all()?; // all 2ⁿ coalitions, in parallel
/// let values = exact_shapley(game.n_players(), |coalition| game.value(coalition));
/// game.check()?; // any failed evaluation
/// # Ok(()) }
/// ```
pub struct CoalitionGame<'a> {
    spec: &'a ModelSpec,
    global: &'a [f32],
    validation: &'a Dataset,
    metric: UtilityMetric,
    players: Vec<RoundUpdate<'a>>,
    aggregator: Option<&'a Aggregator>,
    threads: usize,
    cache: Mutex<HashMap<Vec<u64>, f64>>,
    error: Mutex<Option<Error>>,
}

impl fmt::Debug for CoalitionGame<'_> {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter
            .debug_struct("CoalitionGame")
            .field("metric", &self.metric)
            .field("players", &self.players.iter().map(|player| player.pdc_id).collect::<Vec<_>>())
            .field("threads", &self.threads)
            .field("evaluations", &self.evaluations())
            .finish_non_exhaustive()
    }
}

impl<'a> CoalitionGame<'a> {
    /// A game over `players` (in the order given: player i is `players[i]`) with FedAvg aggregation, evaluated on
    /// `validation` with `metric`, using every available core.
    ///
    /// # Errors
    ///
    /// [`Error::Model`] when `spec` is invalid or `global` does not fit it; [`Error::InvalidArgument`] when the metric
    /// does not fit the task; [`Error::InvalidUpdate`] when an update has the wrong length, a non-finite value, or no
    /// examples.
    pub fn new(
        spec: &'a ModelSpec,
        global: &'a [f32],
        validation: &'a Dataset,
        metric: UtilityMetric,
        players: &[RoundUpdate<'a>],
    ) -> Result<Self> {
        spec.validate()?;
        spec.layout().validate(global)?;
        metric.check_task(spec.task)?;
        for player in players {
            let invalid = |detail: String| Err(Error::InvalidUpdate { pdc_id: player.pdc_id.to_owned(), detail });
            if player.delta.len() != global.len() {
                return invalid(format!("{} parameters, the model has {}", player.delta.len(), global.len()));
            }
            if let Some(index) = player.delta.iter().position(|value| !value.is_finite()) {
                return invalid(format!("parameter {index} is {}", player.delta[index]));
            }
            if player.n_examples == 0 {
                return invalid("no examples".to_owned());
            }
        }
        let threads = std::thread::available_parallelism().map_or(1, NonZeroUsize::get);
        Ok(Self {
            spec,
            global,
            validation,
            metric,
            players: players.to_vec(),
            aggregator: None,
            threads,
            cache: Mutex::new(HashMap::new()),
            error: Mutex::new(None),
        })
    }

    /// Aggregates coalitions with `aggregator` instead of FedAvg.
    pub fn with_aggregator(mut self, aggregator: &'a Aggregator) -> Self {
        self.aggregator = Some(aggregator);
        self
    }

    /// Evaluates batches on at most `threads` threads (at least 1); values do not depend on it.
    pub fn with_threads(mut self, threads: usize) -> Self {
        self.threads = threads.max(1);
        self
    }

    /// The number of players.
    pub fn n_players(&self) -> usize {
        self.players.len()
    }

    /// The model of a coalition: the global model plus the aggregate of its members' updates, in member order.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidArgument`] when a member is out of range or the members are not strictly increasing; the
    /// aggregator's error.
    pub fn model(&self, coalition: &[usize]) -> Result<Vec<f32>> {
        self.check_coalition(coalition)?;
        if coalition.is_empty() {
            return Ok(self.global.to_vec());
        }
        let delta = match self.aggregator {
            Some(aggregator) => {
                let rows: Vec<(&str, f64, &[f32])> = coalition
                    .iter()
                    .map(|&member| {
                        let player = &self.players[member];
                        (player.pdc_id, player.n_examples as f64, player.delta)
                    })
                    .collect();
                aggregator(&rows)?
            }
            None => {
                let mut average = FedAvg::new(self.global.len());
                for &member in coalition {
                    let player = &self.players[member];
                    average.add(player.n_examples as f64, player.delta)?;
                }
                average.finish()?
            }
        };
        apply_delta(self.global, &delta)
    }

    /// v(coalition), computed now and not cached.
    ///
    /// # Errors
    ///
    /// As [`CoalitionGame::model`], and [`Error::Model`] or [`Error::InvalidArgument`] when the model cannot be
    /// evaluated or lacks the metric.
    pub fn evaluate(&self, coalition: &[usize]) -> Result<f64> {
        let parameters = self.model(coalition)?;
        let metrics = pdc_models::evaluate(self.spec, &parameters, self.validation)?;
        self.metric.score(&metrics)
    }

    /// v(coalition), from the cache or evaluated and cached; `coalition` is sorted member indices.
    ///
    /// This is the `value` function of [`crate::valuation`], which cannot fail: on a failed evaluation it records the
    /// first error (for [`CoalitionGame::check`]) and returns NaN.
    pub fn value(&self, coalition: &[usize]) -> f64 {
        if let Err(error) = self.check_coalition(coalition) {
            self.record(error);
            return f64::NAN;
        }
        let key = self.key(coalition);
        if let Some(&value) = lock(&self.cache).get(&key) {
            return value;
        }
        // Evaluated outside the lock, so that callers on other threads are not held up.
        match self.evaluate(coalition) {
            Ok(value) => *lock(&self.cache).entry(key).or_insert(value),
            Err(error) => {
                self.record(error);
                f64::NAN
            }
        }
    }

    /// Keeps `error` for [`CoalitionGame::check`] unless an earlier one is kept already.
    fn record(&self, error: Error) {
        lock(&self.error).get_or_insert(error);
    }

    /// Evaluates every coalition of `coalitions` not cached yet, in parallel, and caches the values.
    ///
    /// # Errors
    ///
    /// The error of the first coalition (in `coalitions` order) whose evaluation failed; the others are still cached.
    pub fn prefetch(&self, coalitions: &[Vec<usize>]) -> Result<()> {
        for coalition in coalitions {
            self.check_coalition(coalition)?;
        }
        let mut pending: Vec<(Vec<u64>, &[usize])> = Vec::new();
        {
            let cache = lock(&self.cache);
            let mut seen = HashSet::new();
            for coalition in coalitions {
                let key = self.key(coalition);
                if !cache.contains_key(&key) && seen.insert(key.clone()) {
                    pending.push((key, coalition));
                }
            }
        }
        let results = self.evaluate_all(pending.iter().map(|(_, coalition)| *coalition).collect());
        let mut first_error = None;
        let mut cache = lock(&self.cache);
        for ((key, _), result) in pending.into_iter().zip(results) {
            match result {
                Ok(value) => {
                    cache.insert(key, value);
                }
                Err(error) => {
                    first_error.get_or_insert(error);
                }
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Evaluates all 2ⁿ coalitions in parallel: what the exact Shapley value needs.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidArgument`] when n exceeds [`EXACT_HARD_LIMIT`]; as [`CoalitionGame::prefetch`].
    pub fn prefetch_all(&self) -> Result<()> {
        let n = self.players.len();
        if n > EXACT_HARD_LIMIT {
            return Err(Error::InvalidArgument {
                field: "participants",
                detail: format!("all 2^{n} coalitions are beyond the hard limit of {EXACT_HARD_LIMIT} participants"),
            });
        }
        let coalitions: Vec<Vec<usize>> =
            (0..1usize << n).map(|mask| (0..n).filter(|&member| mask & (1 << member) != 0).collect()).collect();
        self.prefetch(&coalitions)
    }

    /// How many distinct coalitions have been evaluated (successfully) so far.
    pub fn evaluations(&self) -> usize {
        lock(&self.cache).len()
    }

    /// The first error [`CoalitionGame::value`] met since the last check, if any; clears it.
    ///
    /// # Errors
    ///
    /// That error.
    pub fn check(&self) -> Result<()> {
        lock(&self.error).take().map_or(Ok(()), Err)
    }

    /// Every coalition evaluated so far with its value, sorted by size and then by member indices; members are named
    /// by PDC id.
    pub fn coalition_values(&self) -> Vec<CoalitionValue> {
        let mut entries: Vec<(Vec<usize>, f64)> = lock(&self.cache)
            .iter()
            .map(|(key, &value)| {
                let members = (0..self.players.len()).filter(|&m| key[m / 64] & (1 << (m % 64)) != 0).collect();
                (members, value)
            })
            .collect();
        entries.sort_by(|(a, _), (b, _)| a.len().cmp(&b.len()).then_with(|| a.cmp(b)));
        entries
            .into_iter()
            .map(|(members, value)| CoalitionValue {
                members: members.iter().map(|&member| self.players[member].pdc_id.to_owned()).collect(),
                value,
            })
            .collect()
    }

    /// Evaluates `coalitions` on up to `self.threads` threads, each taking the next unclaimed coalition, and returns
    /// the results in input order.
    fn evaluate_all(&self, coalitions: Vec<&[usize]>) -> Vec<Result<f64>> {
        let threads = self.threads.min(coalitions.len());
        if threads <= 1 {
            return coalitions.into_iter().map(|coalition| self.evaluate(coalition)).collect();
        }
        let next = AtomicUsize::new(0);
        let mut indexed: Vec<(usize, Result<f64>)> = std::thread::scope(|scope| {
            let workers: Vec<_> = (0..threads)
                .map(|_| {
                    scope.spawn(|| {
                        let mut done = Vec::new();
                        loop {
                            let index = next.fetch_add(1, Ordering::Relaxed);
                            let Some(coalition) = coalitions.get(index) else { break done };
                            done.push((index, self.evaluate(coalition)));
                        }
                    })
                })
                .collect();
            workers
                .into_iter()
                .flat_map(|worker| worker.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic)))
                .collect()
        });
        indexed.sort_by_key(|(index, _)| *index);
        indexed.into_iter().map(|(_, result)| result).collect()
    }

    fn check_coalition(&self, coalition: &[usize]) -> Result<()> {
        let n = self.players.len();
        if coalition.iter().any(|&member| member >= n) || coalition.windows(2).any(|pair| pair[0] >= pair[1]) {
            return Err(Error::InvalidArgument {
                field: "coalition",
                detail: format!("{coalition:?} is not a strictly increasing list of players below {n}"),
            });
        }
        Ok(())
    }

    /// The member bitset of a coalition checked by [`CoalitionGame::check_coalition`].
    fn key(&self, coalition: &[usize]) -> Vec<u64> {
        let mut key = vec![0u64; self.players.len().div_ceil(64).max(1)];
        for &member in coalition {
            key[member / 64] |= 1 << (member % 64);
        }
        key
    }
}

/// The result of splitting a round's available budget.
struct Split {
    rewards: Vec<f64>,
    paid: f64,
    carried_over: f64,
    truncated: bool,
}

/// Splits `available` in proportion to `payable` (non-negative, finite); see [`value_round`] for the rounding.
fn split_budget(available: f64, payable: &[f64], truncation_epsilon: f64) -> Split {
    let total: f64 = payable.iter().sum();
    if total <= truncation_epsilon || total <= 0.0 {
        return Split { rewards: vec![0.0; payable.len()], paid: 0.0, carried_over: available, truncated: true };
    }
    let mut rewards: Vec<f64> = payable.iter().map(|&share| available * (share / total)).collect();
    // The first of the largest rewards absorbs the rounding residue.
    let largest = (0..rewards.len()).fold(0, |best, index| if rewards[index] > rewards[best] { index } else { best });
    let others: f64 = rewards.iter().enumerate().filter(|&(index, _)| index != largest).map(|(_, &r)| r).sum();
    rewards[largest] = (available - others).max(0.0);
    let paid = rewards.iter().sum();
    Split { rewards, paid, carried_over: 0.0, truncated: false }
}

/// Strikes flagged updates, echoes of the global model, negligible updates and near-copies (see [`Strike`]);
/// `updates` are sorted by id and `norms` are theirs.
fn free_riders(updates: &[RoundUpdate<'_>], norms: &[f64], global_norm: f64, norm_ratio: f64) -> Vec<Option<Strike>> {
    let median_norm = median(norms);
    let mut strikes: Vec<Option<Strike>> = updates
        .iter()
        .zip(norms)
        .map(|(update, &update_norm)| {
            if update.flagged {
                Some(Strike::Flagged)
            } else if update_norm <= ECHO_RELATIVE_NORM * global_norm {
                Some(Strike::EchoOfGlobal { update_norm, global_norm })
            } else if update_norm < norm_ratio * median_norm {
                Some(Strike::NegligibleUpdate { update_norm, median_norm })
            } else {
                None
            }
        })
        .collect();
    // Flagged updates take part in the comparison (a copy of a flagged update is still a copy); zero-like ones do
    // not, since any two of them are alike.
    let comparable: Vec<bool> = strikes
        .iter()
        .zip(norms)
        .map(|(strike, &norm)| norm > 0.0 && matches!(strike, None | Some(Strike::Flagged)))
        .collect();
    for i in 0..updates.len() {
        if !comparable[i] || strikes[i].is_some() {
            continue;
        }
        for j in (0..updates.len()).filter(|&j| j != i && comparable[j]) {
            let (cosine, relative_difference) = similarity(updates[i].delta, updates[j].delta, norms[i], norms[j]);
            if cosine > NEAR_COPY_COSINE && relative_difference < NEAR_COPY_RELATIVE_DIFFERENCE {
                strikes[i] = Some(Strike::NearCopy { of: updates[j].pdc_id.to_owned(), cosine, relative_difference });
                break;
            }
        }
    }
    strikes
}

/// The cosine similarity of `a` and `b` and ‖a − b‖ / max(‖a‖, ‖b‖), in `f64`, given their (non-zero) norms.
fn similarity(a: &[f32], b: &[f32], norm_a: f64, norm_b: f64) -> (f64, f64) {
    let (mut dot, mut difference) = (0.0f64, 0.0f64);
    for (&x, &y) in a.iter().zip(b) {
        let (x, y) = (f64::from(x), f64::from(y));
        dot += x * y;
        difference += (x - y) * (x - y);
    }
    (dot / (norm_a * norm_b), difference.sqrt() / norm_a.max(norm_b))
}

fn median(values: &[f64]) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let middle = sorted.len() / 2;
    if sorted.len() % 2 == 1 { sorted[middle] } else { (sorted[middle - 1] + sorted[middle]) / 2.0 }
}

fn check_amount(field: &'static str, amount: f64) -> Result<()> {
    if amount.is_finite() && amount >= 0.0 {
        Ok(())
    } else {
        Err(Error::InvalidArgument { field, detail: format!("{amount} is not finite and non-negative") })
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding the lock leaves the map consistent (an insert either happened or not).
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Collects the differences of [`compare_valuations`].
#[derive(Default)]
struct Differences(Vec<Difference>);

impl Differences {
    fn push(&mut self, field: &str, recorded: String, recomputed: String) {
        self.0.push(Difference { field: field.to_owned(), recorded, recomputed });
    }

    fn exact<T: fmt::Debug>(&mut self, field: &str, recorded: &T, recomputed: &T) {
        // Debug of any float inside is its shortest round-trip form, so comparing the text compares the bits.
        let (recorded, recomputed) = (format!("{recorded:?}"), format!("{recomputed:?}"));
        if recorded != recomputed {
            self.push(field, recorded, recomputed);
        }
    }

    fn float(&mut self, field: &str, recorded: f64, recomputed: f64) {
        if recorded.to_bits() != recomputed.to_bits() {
            self.push(field, format!("{recorded:?}"), format!("{recomputed:?}"));
        }
    }

    fn absent(&mut self, field: String, recorded: bool) {
        let (present, absent) = ("present".to_owned(), "absent".to_owned());
        if recorded { self.push(&field, present, absent) } else { self.push(&field, absent, present) }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use pdc_models::{ModelKind, Schema, Standardizer, SyntheticConfig, TrainConfig};
    use proptest::prelude::*;

    use super::*;

    /// The breast-cancer table split 80/20 (stratified), standardised on the validation part as the coordinator
    /// does with the researcher's set.
    fn breast_cancer() -> (Dataset, Dataset) {
        // From the directory cargo names at run time: the compile-time one is gone if the build cache is shared
        // with a clone elsewhere.
        let path = std::path::PathBuf::from(
            std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR when it runs tests"),
        )
        .join("../data/breast_cancer_wisconsin.csv");
        let text = std::fs::read_to_string(path).unwrap();
        let header: Vec<String> = text.lines().next().unwrap().split(',').map(str::to_owned).collect();
        let schema = Schema {
            features: header.iter().filter(|&name| name != "malignant").cloned().collect(),
            label: "malignant".into(),
        };
        let table = pdc_models::parse_csv(&text, "breast_cancer_wisconsin.csv", &schema).unwrap();
        standardised_split(&table, 11)
    }

    /// A synthetic table of 1500 rows and 10 mixed-scale features, split and standardised like [`breast_cancer`].
    fn synthetic_table() -> (Dataset, Dataset) {
        let table =
            pdc_models::synthetic(&SyntheticConfig { n_rows: 1500, n_features: 10, positive_rate: 0.3, seed: 5 });
        standardised_split(&table, 5)
    }

    fn standardised_split(table: &Dataset, seed: u64) -> (Dataset, Dataset) {
        let (mut train, mut validation) = pdc_models::train_validation_split(table, 0.2, seed).unwrap();
        let standardizer = Standardizer::fit(&validation);
        standardizer.apply(&mut train).unwrap();
        standardizer.apply(&mut validation).unwrap();
        (train, validation)
    }

    fn binary_spec(kind: ModelKind, n_features: usize) -> ModelSpec {
        ModelSpec { kind, n_features, task: Task::BinaryClassification }
    }

    /// A simulated hospital: its data, or none for a free rider, which sends a zero delta claiming `n_examples`.
    struct Hospital {
        id: String,
        data: Option<Dataset>,
        n_examples: u64,
    }

    impl Hospital {
        fn honest(id: &str, data: Dataset) -> Self {
            Self { id: id.to_owned(), n_examples: data.n_rows() as u64, data: Some(data) }
        }

        fn free_rider(id: &str, n_examples: u64) -> Self {
            Self { id: id.to_owned(), data: None, n_examples }
        }
    }

    /// Each hospital's update for a round: one local epoch of SGD from `global`, seeded by round and hospital.
    fn train_round(spec: &ModelSpec, global: &[f32], hospitals: &[Hospital], round: u32) -> Vec<Vec<f32>> {
        hospitals
            .iter()
            .enumerate()
            .map(|(index, hospital)| match &hospital.data {
                Some(data) => {
                    let config = TrainConfig {
                        epochs: 1,
                        batch_size: 16,
                        learning_rate: 0.1,
                        seed: 1000 * u64::from(round) + index as u64,
                        proximal_mu: 0.0,
                    };
                    let trained = pdc_models::train_local(spec, global, data, &config).unwrap();
                    trained.parameters.iter().zip(global).map(|(t, g)| t - g).collect()
                }
                None => vec![0.0; global.len()],
            })
            .collect()
    }

    fn round_updates<'a>(hospitals: &'a [Hospital], deltas: &'a [Vec<f32>]) -> Vec<RoundUpdate<'a>> {
        hospitals
            .iter()
            .zip(deltas)
            .map(|(hospital, delta)| RoundUpdate {
                pdc_id: &hospital.id,
                n_examples: hospital.n_examples,
                delta,
                flagged: false,
            })
            .collect()
    }

    /// The FedAvg of `updates` applied to `global`: the round's new global model.
    fn fedavg(global: &[f32], updates: &[RoundUpdate<'_>]) -> Vec<f32> {
        let mut sorted = updates.to_vec();
        sorted.sort_by(|a, b| a.pdc_id.cmp(b.pdc_id));
        let mut average = FedAvg::new(global.len());
        for update in &sorted {
            average.add(update.n_examples as f64, update.delta).unwrap();
        }
        apply_delta(global, &average.finish().unwrap()).unwrap()
    }

    fn input<'a>(
        spec: &'a ModelSpec,
        global: &'a [f32],
        validation: &'a Dataset,
        updates: &'a [RoundUpdate<'a>],
        settings: &'a ValuationSettings,
        round: u32,
    ) -> RoundInput<'a> {
        RoundInput {
            round,
            seed: round_seed(42, round),
            spec,
            global,
            validation,
            updates,
            settings,
            aggregator: None,
            budget: 100.0,
            carried_in: 0.0,
        }
    }

    fn cosine(a: &[f64], b: &[f64]) -> f64 {
        let dot: f64 = a.iter().zip(b).map(|(x, y)| x * y).sum();
        let norm = |v: &[f64]| v.iter().map(|x| x * x).sum::<f64>().sqrt();
        dot / (norm(a) * norm(b))
    }

    fn assert_paid_in_full(valuation: &RoundValuation) {
        let available = valuation.budget + valuation.carried_in;
        let total: f64 = valuation.pdcs.iter().map(|pdc| pdc.reward).sum();
        assert_eq!(total.to_bits(), valuation.paid.to_bits());
        assert!(valuation.pdcs.iter().all(|pdc| pdc.reward >= 0.0));
        if valuation.truncated {
            assert_eq!(valuation.paid, 0.0);
            assert_eq!(valuation.carried_over, available);
        } else {
            assert!((total - available).abs() <= 1e-12 * available, "{total} vs {available}");
            assert_eq!(valuation.carried_over, 0.0);
        }
    }

    #[test]
    fn metrics_default_by_task_and_refuse_the_other_task() {
        assert_eq!(UtilityMetric::default_for(Task::BinaryClassification), UtilityMetric::Auroc);
        assert_eq!(UtilityMetric::default_for(Task::Regression), UtilityMetric::NegativeMse);
        assert!(UtilityMetric::Auroc.check_task(Task::Regression).is_err());
        assert!(UtilityMetric::NegativeMse.check_task(Task::BinaryClassification).is_err());
        assert!(UtilityMetric::NegativeLoss.check_task(Task::Regression).is_ok());
        let metrics = Metrics { loss: 0.25, accuracy: Some(0.9), auroc: None, mse: None, n_examples: 10 };
        assert_eq!(UtilityMetric::NegativeLoss.score(&metrics).unwrap(), -0.25);
        assert_eq!(UtilityMetric::Accuracy.score(&metrics).unwrap(), 0.9);
        let error = UtilityMetric::Auroc.score(&metrics).unwrap_err().to_string();
        assert_eq!(error, "invalid validation: AUROC needs both classes in the validation set");
    }

    #[test]
    fn settings_read_from_a_manifest_table_with_defaults() {
        let settings: ValuationSettings =
            toml::from_str("method = \"gtg_shapley\"\nmetric = \"negative_loss\"\n[gtg]\nmax_permutations = 40\n")
                .unwrap();
        assert_eq!(settings.method, ValuationMethod::GtgShapley);
        assert_eq!(settings.metric_for(Task::BinaryClassification), UtilityMetric::NegativeLoss);
        assert_eq!(settings.gtg.max_permutations, 40);
        assert_eq!(settings.gtg.eps_within_round, GtgConfig::default().eps_within_round);
        assert_eq!(settings.exact_limit, DEFAULT_EXACT_LIMIT);
        let defaults: ValuationSettings = toml::from_str("").unwrap();
        assert_eq!(defaults, ValuationSettings::default());
        assert_eq!(defaults.metric_for(Task::Regression), UtilityMetric::NegativeMse);
        // The canonical form round-trips, and typos are errors rather than defaults.
        assert_eq!(toml::from_str::<ValuationSettings>(&toml::to_string(&settings).unwrap()).unwrap(), settings);
        assert!(toml::from_str::<ValuationSettings>("exact_limt = 4").is_err());
        for (bad, field) in [
            (ValuationSettings { exact_limit: 21, ..Default::default() }, "valuation.exact_limit"),
            (
                ValuationSettings { free_rider_norm_ratio: -1.0, ..Default::default() },
                "valuation.free_rider_norm_ratio",
            ),
            (ValuationSettings { truncation_epsilon: f64::NAN, ..Default::default() }, "valuation.truncation_epsilon"),
        ] {
            assert!(matches!(bad.validate(), Err(Error::InvalidArgument { field: f, .. }) if f == field), "{field}");
        }
    }

    #[test]
    fn round_seed_is_pinned() {
        // Recorded seeds must be re-derivable by any later version: this value may never change.
        assert_eq!(round_seed(0, 0), round_seed(0, 0));
        assert_eq!(round_seed(7, 3), 12_479_067_195_347_754_316);
        assert_ne!(round_seed(7, 3), round_seed(8, 3));
    }

    #[test]
    fn budget_split_is_proportional_and_exact() {
        let split = split_budget(90.0, &[1.0, 2.0, 0.0], 1e-9);
        assert_eq!(split.rewards, vec![30.0, 60.0, 0.0]);
        assert_eq!((split.paid, split.carried_over, split.truncated), (90.0, 0.0, false));
        // Thirds do not add up in binary; the largest (the first of equals) takes the residue.
        let split = split_budget(100.0, &[1.0, 1.0, 1.0], 1e-9);
        assert_eq!(split.paid, 100.0);
        assert!(split.rewards.iter().all(|&reward| (reward - 100.0 / 3.0).abs() < 1e-12));
        let split = split_budget(100.0, &[0.0, 1e-10], 1e-9);
        assert!(split.truncated);
        assert_eq!((split.paid, split.carried_over), (0.0, 100.0));
        assert!(split_budget(5.0, &[], 1e-9).truncated);
    }

    proptest! {
        #[test]
        fn budget_split_sums_to_what_is_available(
            available in 0.0..1e9f64,
            payable in proptest::collection::vec(prop_oneof![Just(0.0), 0.0..1.0f64, 1e-12..1e-6f64], 1..60),
        ) {
            let split = split_budget(available, &payable, 1e-9);
            prop_assert!(split.rewards.iter().all(|&reward| reward >= 0.0));
            let total: f64 = split.rewards.iter().sum();
            prop_assert_eq!(total.to_bits(), split.paid.to_bits());
            if split.truncated {
                prop_assert_eq!(split.paid, 0.0);
                prop_assert_eq!(split.carried_over, available);
            } else {
                prop_assert!((total - available).abs() <= 1e-12 * available, "{} vs {}", total, available);
                for (&reward, &share) in split.rewards.iter().zip(&payable) {
                    prop_assert_eq!(reward > 0.0 || available == 0.0, share > 0.0 || reward > 0.0);
                }
            }
        }
    }

    #[test]
    fn free_riders_are_struck_and_twins_are_not() {
        let honest: Vec<f32> = (0..200).map(|i| ((i * 37 % 101) as f32 - 50.0) * 1e-3).collect();
        // What a twin trained with its own shuffle looks like: the same direction, 1% apart.
        let twin: Vec<f32> =
            honest.iter().enumerate().map(|(i, &x)| x + if i % 2 == 0 { 1e-4 } else { -1e-4 }).collect();
        let copy: Vec<f32> = honest.iter().map(|&x| x * (1.0 + 1e-6)).collect();
        let other: Vec<f32> = (0..200).map(|i| ((i * 53 % 97) as f32 - 48.0) * 1e-3).collect();
        let tiny: Vec<f32> = other.iter().map(|&x| x * 1e-4).collect();
        let zero = vec![0.0; 200];
        let global = vec![1.0; 200];
        let update = |pdc_id, delta, flagged| RoundUpdate { pdc_id, n_examples: 10, delta, flagged };
        let updates = [
            update("a", &honest[..], false),
            update("b-twin", &twin, false),
            update("c-copy", &copy, false),
            update("d", &other, true),
            update("e-tiny", &tiny, false),
            update("f-zero", &zero, false),
            update("g", &other, false),
        ];
        let norms: Vec<f64> = updates.iter().map(|u| l2_norm(u.delta)).collect();
        let strikes = free_riders(&updates, &norms, l2_norm(&global), DEFAULT_FREE_RIDER_NORM_RATIO);
        let reason =
            |i: usize| strikes[i].as_ref().map(|s| format!("{s:?}").split([' ', '{']).next().unwrap().to_owned());
        // "a" and "c-copy" name each other; "g" copies the flagged "d", which stays flagged.
        assert!(matches!(&strikes[0], Some(Strike::NearCopy { of, .. }) if of == "c-copy"), "{:?}", strikes[0]);
        assert_eq!(reason(1), None);
        assert!(matches!(&strikes[2], Some(Strike::NearCopy { of, .. }) if of == "a"));
        assert_eq!(strikes[3], Some(Strike::Flagged));
        assert_eq!(reason(4).as_deref(), Some("NegligibleUpdate"));
        assert!(matches!(strikes[5], Some(Strike::EchoOfGlobal { update_norm: 0.0, .. })));
        assert!(matches!(&strikes[6], Some(Strike::NearCopy { of, .. }) if of == "d"));
        let (cosine, relative) = similarity(&honest, &twin, norms[0], norms[1]);
        assert!(cosine > NEAR_COPY_COSINE && relative > NEAR_COPY_RELATIVE_DIFFERENCE, "{cosine} {relative}");
    }

    /// The game's grand coalition is the round's FedAvg model, its empty coalition the global model, and its values
    /// do not depend on the number of threads.
    #[test]
    fn coalition_game_uses_fedavg_and_is_thread_independent() {
        let (train, validation) = breast_cancer();
        let spec = binary_spec(ModelKind::Mlp { hidden: vec![4] }, train.n_features());
        let global = spec.init_parameters(3);
        let parts = pdc_models::partition_iid(&train, 5, 3).unwrap();
        let hospitals: Vec<Hospital> =
            parts.into_iter().enumerate().map(|(i, part)| Hospital::honest(&format!("h{i}"), part)).collect();
        let deltas = train_round(&spec, &global, &hospitals, 0);
        let updates = round_updates(&hospitals, &deltas);
        let game = |threads| {
            CoalitionGame::new(&spec, &global, &validation, UtilityMetric::Auroc, &updates)
                .unwrap()
                .with_threads(threads)
        };
        let (serial, parallel) = (game(1), game(4));
        serial.prefetch_all().unwrap();
        parallel.prefetch_all().unwrap();
        assert_eq!(serial.evaluations(), 32);
        let values = serial.coalition_values();
        assert_eq!(values, parallel.coalition_values());
        let auroc = |parameters: &[f32]| pdc_models::evaluate(&spec, parameters, &validation).unwrap().auroc.unwrap();
        assert_eq!(values[0].value.to_bits(), auroc(&global).to_bits());
        assert_eq!(values[31].value.to_bits(), auroc(&fedavg(&global, &updates)).to_bits());
        assert_eq!(values[31].members, ["h0", "h1", "h2", "h3", "h4"]);
        assert_eq!(serial.value(&[1, 3]).to_bits(), serial.evaluate(&[1, 3]).unwrap().to_bits());
        // Bad coalitions are refused, by value() through check().
        assert!(serial.value(&[3, 1]).is_nan());
        assert!(matches!(serial.check(), Err(Error::InvalidArgument { field: "coalition", .. })));
        assert!(serial.check().is_ok());
        assert!(serial.prefetch(&[vec![5]]).is_err());
        // A custom aggregator replaces FedAvg: here an unweighted mean of the first member only.
        let first_only = |rows: &[(&str, f64, &[f32])]| Ok(rows[0].2.to_vec());
        let custom = game(2).with_aggregator(&first_only);
        assert_eq!(custom.value(&[2, 4]).to_bits(), serial.value(&[2]).to_bits());
    }

    /// A small FedAvg study of six hospitals over ten rounds: "a-twin" holds the same rows as "a" (but shuffles them
    /// with its own seed), "flipper" trains on inverted labels and "free-rider" sends zero deltas.
    #[test]
    fn twins_share_alike_while_label_flippers_and_free_riders_get_nothing() {
        let (train, validation) = breast_cancer();
        let spec = binary_spec(ModelKind::LogisticRegression, train.n_features());
        let mut parts = pdc_models::partition_iid(&train, 4, 8).unwrap();
        let mut flipped = parts.pop().unwrap();
        for label in &mut flipped.labels {
            *label = 1.0 - *label;
        }
        let hospitals = vec![
            Hospital::honest("a", parts[0].clone()),
            Hospital::honest("a-twin", parts[0].clone()),
            Hospital::honest("b", parts[1].clone()),
            Hospital::honest("c", parts[2].clone()),
            Hospital::honest("flipper", flipped),
            Hospital::free_rider("free-rider", parts[0].n_rows() as u64),
        ];
        let settings = ValuationSettings::default();
        let mut global = spec.init_parameters(9);
        let mut totals = StudyRewards::default();
        let mut carried = 0.0;
        let mut flipper_unpaid = 0;
        let rounds = 10;
        for round in 0..rounds {
            let deltas = train_round(&spec, &global, &hospitals, round);
            let updates = round_updates(&hospitals, &deltas);
            let valuation = value_round(&RoundInput {
                carried_in: carried,
                ..input(&spec, &global, &validation, &updates, &settings, round)
            })
            .unwrap();
            assert_eq!(valuation.method, ValuationMethod::ExactShapley);
            assert_eq!(valuation.evaluations, 64);
            assert_paid_in_full(&valuation);
            let struck: Vec<&str> = valuation.struck().map(|(id, _)| id).collect();
            assert_eq!(struck, ["free-rider"], "round {round}");
            carried = valuation.carried_over;
            println!(
                "round {round}: v(∅) {:.4} v(N) {:.4} {}",
                valuation.empty_value,
                valuation.grand_value,
                valuation
                    .pdcs
                    .iter()
                    .map(|p| format!("{} φ {:+.5} r {:.2}", p.pdc_id, p.utility, p.reward))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            flipper_unpaid += u32::from(valuation.pdcs.iter().any(|p| p.pdc_id == "flipper" && p.reward == 0.0));
            totals.add(&valuation);
            global = fedavg(&global, &updates);
        }
        let total = |id: &str| &totals.pdcs[id];
        let (a, twin) = (total("a").reward, total("a-twin").reward);
        println!("totals: {totals:#?}");
        assert!((a - twin).abs() <= 0.05 * a.max(twin), "a {a} vs twin {twin}");
        assert_eq!(total("free-rider").reward, 0.0);
        assert_eq!(total("free-rider").strikes, rounds);
        assert!(flipper_unpaid >= rounds * 9 / 10, "flipper unpaid in {flipper_unpaid} of {rounds} rounds");
        assert!((totals.paid + totals.carried_over - 100.0 * f64::from(rounds)).abs() < 1e-9);
    }

    /// Exact Shapley against GTG-Shapley (default settings, seeded per round) on ten hospitals of a Dirichlet
    /// (α = 1) split, for the first two rounds of a FedAvg study on each dataset.
    #[test]
    fn gtg_shapley_matches_exact_shapley_on_ten_hospitals_with_half_the_evaluations() {
        for (name, (train, validation)) in [("breast cancer", breast_cancer()), ("synthetic", synthetic_table())] {
            let spec = binary_spec(ModelKind::LogisticRegression, train.n_features());
            let parts = pdc_models::partition_dirichlet(&train, 10, 1.0, 21).unwrap();
            let hospitals: Vec<Hospital> =
                parts.into_iter().enumerate().map(|(i, part)| Hospital::honest(&format!("h{i:02}"), part)).collect();
            let exact_settings = ValuationSettings::default();
            let gtg_settings = ValuationSettings { method: ValuationMethod::GtgShapley, ..Default::default() };
            let mut global = spec.init_parameters(4);
            for round in 0..2 {
                let deltas = train_round(&spec, &global, &hospitals, round);
                let updates = round_updates(&hospitals, &deltas);
                let start = Instant::now();
                let exact = value_round(&input(&spec, &global, &validation, &updates, &exact_settings, round)).unwrap();
                let exact_time = start.elapsed();
                let start = Instant::now();
                let gtg = value_round(&input(&spec, &global, &validation, &updates, &gtg_settings, round)).unwrap();
                let gtg_time = start.elapsed();
                let values = |valuation: &RoundValuation| valuation.pdcs.iter().map(|p| p.utility).collect::<Vec<_>>();
                let similarity = cosine(&values(&exact), &values(&gtg));
                println!(
                    "{name}, round {round}: v(∅) {:.4} → v(N) {:.4}; exact {} evaluations in {exact_time:.2?}; GTG {} \
                     evaluations ({} permutations) in {gtg_time:.2?}; cosine {similarity:.5}",
                    exact.empty_value, exact.grand_value, exact.evaluations, gtg.evaluations, gtg.permutations
                );
                assert_eq!((exact.method, gtg.method), (ValuationMethod::ExactShapley, ValuationMethod::GtgShapley));
                assert_eq!(exact.evaluations, 1024);
                assert!(similarity >= 0.98, "{name}, round {round}: cosine {similarity}");
                assert!(2 * gtg.evaluations <= exact.evaluations, "{name}, round {round}: {}", gtg.evaluations);
                global = fedavg(&global, &updates);
            }
        }
    }

    /// Four hospitals valued by GTG-Shapley (so the seed matters): the same inputs, in any order, give the same
    /// valuation bit for bit; a replay of the record finds nothing, and finds each tampered field or update.
    #[test]
    fn valuation_is_bit_identical_and_replay_reports_every_change() {
        let (train, validation) = breast_cancer();
        let spec = binary_spec(ModelKind::Mlp { hidden: vec![4] }, train.n_features());
        let global = spec.init_parameters(6);
        let parts = pdc_models::partition_dirichlet(&train, 4, 0.5, 6).unwrap();
        let hospitals: Vec<Hospital> =
            parts.into_iter().enumerate().map(|(i, part)| Hospital::honest(&format!("h{i}"), part)).collect();
        let deltas = train_round(&spec, &global, &hospitals, 0);
        let updates = round_updates(&hospitals, &deltas);
        let settings = ValuationSettings {
            method: ValuationMethod::GtgShapley,
            gtg: GtgSettings { eps_within_round: 0.0, ..Default::default() },
            ..Default::default()
        };
        let round = input(&spec, &global, &validation, &updates, &settings, 3);
        let first = value_round(&round).unwrap();
        let second = value_round(&round).unwrap();
        assert_eq!(first, second);
        assert!(compare_valuations(&first, &second).is_empty());
        let mut reversed = updates.clone();
        reversed.reverse();
        let reordered = value_round(&RoundInput { updates: &reversed, ..round }).unwrap();
        assert!(compare_valuations(&first, &reordered).is_empty());
        assert!(replay_round(&round, &first).unwrap().is_empty());
        assert!(first.permutations >= 4 && first.evaluations <= 16, "{first:?}");

        // A record changed by one ulp, and a wrong seed.
        let mut tampered = first.clone();
        tampered.pdcs[1].utility = f64::from_bits(tampered.pdcs[1].utility.to_bits() + 1);
        tampered.seed ^= 1;
        let differences = replay_round(&round, &tampered).unwrap();
        let fields: Vec<&str> = differences.iter().map(|difference| difference.field.as_str()).collect();
        assert_eq!(fields, ["seed", "pdcs[h1].utility"]);
        assert!(differences[1].to_string().starts_with("pdcs[h1].utility: recorded "), "{}", differences[1]);

        // A tampered archived update changes its norm and the value of (at least) the coalition of that PDC alone; the
        // global model's value is untouched.
        let mut changed = deltas.clone();
        changed[2][0] += 0.05;
        let changed_updates = round_updates(&hospitals, &changed);
        let differences = replay_round(&RoundInput { updates: &changed_updates, ..round }, &first).unwrap();
        let fields: Vec<&str> = differences.iter().map(|difference| difference.field.as_str()).collect();
        assert!(fields.contains(&"pdcs[h2].update_norm"), "{fields:?}");
        assert!(fields.contains(&"coalitions[{h2}].value"), "{fields:?}");
        assert!(!fields.contains(&"empty_value"), "{fields:?}");

        // A missing PDC is named.
        let differences = replay_round(&RoundInput { updates: &updates[..3], ..round }, &first).unwrap();
        assert!(differences.iter().any(|d| d.field == "pdcs[h3]" && d.recomputed == "absent"), "{differences:?}");
    }

    #[test]
    fn a_round_without_gain_carries_its_budget_to_the_next() {
        let (train, validation) = breast_cancer();
        let spec = binary_spec(ModelKind::LogisticRegression, train.n_features());
        let global = spec.init_parameters(2);
        let parts = pdc_models::partition_iid(&train, 3, 2).unwrap();
        let hospitals: Vec<Hospital> =
            parts.into_iter().enumerate().map(|(i, part)| Hospital::honest(&format!("h{i}"), part)).collect();
        let settings = ValuationSettings::default();

        // Every PDC echoes the global model: all struck, nothing gained, nothing paid.
        let zeros = vec![vec![0.0; global.len()]; 3];
        let echoes = round_updates(&hospitals, &zeros);
        let idle =
            value_round(&RoundInput { carried_in: 20.0, ..input(&spec, &global, &validation, &echoes, &settings, 0) })
                .unwrap();
        assert!(idle.truncated);
        assert_eq!((idle.paid, idle.carried_over), (0.0, 120.0));
        assert_eq!(idle.empty_value.to_bits(), idle.grand_value.to_bits());
        assert!(idle.pdcs.iter().all(|pdc| matches!(pdc.strike, Some(Strike::EchoOfGlobal { .. }))));
        assert_paid_in_full(&idle);

        // No updates at all: one evaluation (the global model), everything carried.
        let empty =
            value_round(&RoundInput { carried_in: 120.0, ..input(&spec, &global, &validation, &[], &settings, 1) })
                .unwrap();
        assert!(empty.truncated && empty.pdcs.is_empty());
        assert_eq!((empty.evaluations, empty.carried_over), (1, 220.0));

        // A real round then pays this round's budget and everything carried.
        let deltas = train_round(&spec, &global, &hospitals, 2);
        let updates = round_updates(&hospitals, &deltas);
        let paying = value_round(&RoundInput {
            carried_in: 220.0,
            ..input(&spec, &global, &validation, &updates, &settings, 2)
        })
        .unwrap();
        assert!(!paying.truncated);
        assert!((paying.paid - 320.0).abs() <= 320.0 * 1e-12);
        assert_paid_in_full(&paying);
        assert_eq!(paying.rewards().len(), paying.pdcs.iter().filter(|pdc| pdc.reward > 0.0).count());
    }

    #[test]
    fn leave_one_out_and_the_exact_limit_choose_their_coalitions() {
        let (train, validation) = breast_cancer();
        let spec = binary_spec(ModelKind::LogisticRegression, train.n_features());
        let global = spec.init_parameters(12);
        let parts = pdc_models::partition_iid(&train, 4, 12).unwrap();
        let hospitals: Vec<Hospital> =
            parts.into_iter().enumerate().map(|(i, part)| Hospital::honest(&format!("h{i}"), part)).collect();
        let deltas = train_round(&spec, &global, &hospitals, 0);
        let updates = round_updates(&hospitals, &deltas);

        let settings = ValuationSettings { method: ValuationMethod::LeaveOneOut, ..Default::default() };
        let loo = value_round(&input(&spec, &global, &validation, &updates, &settings, 0)).unwrap();
        assert_eq!((loo.method, loo.evaluations), (ValuationMethod::LeaveOneOut, 6));
        let value_of = |members: &[&str]| {
            loo.coalitions
                .iter()
                .find(|coalition| coalition.members == members)
                .map(|coalition| coalition.value)
                .unwrap()
        };
        assert_eq!(loo.pdcs[0].utility, loo.grand_value - value_of(&["h1", "h2", "h3"]));
        assert_eq!(value_of(&[]), loo.empty_value);

        let settings = ValuationSettings { exact_limit: 3, ..Default::default() };
        let fallback = value_round(&input(&spec, &global, &validation, &updates, &settings, 0)).unwrap();
        assert_eq!(fallback.method, ValuationMethod::GtgShapley);
        assert!(fallback.permutations >= 4);
        let settings = ValuationSettings { exact_limit: 4, ..Default::default() };
        let exact = value_round(&input(&spec, &global, &validation, &updates, &settings, 0)).unwrap();
        assert_eq!((exact.method, exact.evaluations, exact.permutations), (ValuationMethod::ExactShapley, 16, 0));
        // Exact Shapley is efficient: the utilities add up to the round's gain.
        let total: f64 = exact.pdcs.iter().map(|pdc| pdc.utility).sum();
        assert!((total - (exact.grand_value - exact.empty_value)).abs() < 1e-12);
    }

    #[test]
    fn bad_inputs_are_refused_before_evaluating() {
        let (train, validation) = breast_cancer();
        let spec = binary_spec(ModelKind::LogisticRegression, train.n_features());
        let global = spec.init_parameters(1);
        let delta = vec![0.01; global.len()];
        let short = vec![0.01; 3];
        let update = |pdc_id, delta, n_examples| RoundUpdate { pdc_id, n_examples, delta, flagged: false };
        let settings = ValuationSettings::default();
        let run = |updates: &[RoundUpdate<'_>], settings: &ValuationSettings, budget: f64| {
            value_round(&RoundInput { budget, ..input(&spec, &global, &validation, updates, settings, 0) })
        };
        let twice = [update("a", &delta[..], 5), update("a", &delta[..], 5)];
        let error = run(&twice, &settings, 1.0).unwrap_err();
        assert_eq!(error.to_string(), "invalid updates: PDC a has two updates in the round");
        let error = run(&[update("a", &short, 5)], &settings, 1.0).unwrap_err();
        assert_eq!(error.to_string(), "invalid update from a: 3 parameters, the model has 31");
        assert!(matches!(run(&[update("a", &delta, 0)], &settings, 1.0), Err(Error::InvalidUpdate { .. })));
        assert!(matches!(
            run(&[update("a", &delta, 5)], &settings, -1.0),
            Err(Error::InvalidArgument { field: "budget", .. })
        ));
        let mse = ValuationSettings { metric: Some(UtilityMetric::NegativeMse), ..Default::default() };
        assert!(matches!(
            run(&[update("a", &delta, 5)], &mse, 1.0),
            Err(Error::InvalidArgument { field: "valuation.metric", .. })
        ));
    }
}
