//! The study manifest's `[aggregation]` table (which rule, its parameters, the server optimiser, the anomaly
//! thresholds), its validation, and the dispatch of a round's updates to the rules of [`super::robust`].
//!
//! The table is flat so that a manifest reads naturally:
//!
//! ```toml
//! [aggregation]
//! rule = "multi_krum"          # fedavg | median | trimmed_mean | krum | multi_krum | bulyan | fltrust
//!                              # | centered_clipping | norm_bound
//! f = 2                        # Byzantine updates tolerated (krum, multi_krum, bulyan)
//! m = 6                        # updates averaged (multi_krum; default n − f)
//! server_optimizer = "fedadam" # none | fedavgm | fedadam | fedyogi | fedadagrad
//! server_learning_rate = 0.05
//!
//! [aggregation.anomaly]
//! suspend_after_rounds = 3
//! ```
//!
//! A parameter that the chosen rule or optimiser does not take is an error, not silently ignored, just as an
//! unknown key is. Updates are always processed in sorted PDC-id order, so a round's result does not depend on
//! the order in which updates arrived.

use std::fmt;

use ndarray::{Array2, ArrayView2, Axis};
use serde::{Deserialize, Serialize};

use super::anomaly::{AnomalyConfig, AnomalyScore, DEFAULT_SUSPEND_AFTER_ROUNDS, score_updates};
use super::optimizer::{
    DEFAULT_ADAM_LEARNING_RATE, DEFAULT_ADAM_TAU, DEFAULT_BETA_1, DEFAULT_BETA_2, DEFAULT_FEDAVGM_LEARNING_RATE,
    DEFAULT_FEDAVGM_MOMENTUM, DEFAULT_YOGI_LEARNING_RATE, DEFAULT_YOGI_TAU, ServerOptimizer, ServerOptimizerSpec,
};
use super::{FedAvg, robust};
use crate::{Error, Result};

/// The aggregation rules a manifest can name.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum RuleKind {
    /// Weighted FedAvg (the default).
    #[default]
    #[serde(rename = "fedavg")]
    FedAvg,
    /// Coordinate-wise median.
    #[serde(rename = "median")]
    Median,
    /// Coordinate-wise trimmed mean (parameter `beta`).
    #[serde(rename = "trimmed_mean")]
    TrimmedMean,
    /// Krum (parameter `f`).
    #[serde(rename = "krum")]
    Krum,
    /// Multi-Krum (parameters `f`, `m`).
    #[serde(rename = "multi_krum")]
    MultiKrum,
    /// Bulyan (parameter `f`).
    #[serde(rename = "bulyan")]
    Bulyan,
    /// FLTrust against the coordinator's update on the researcher's validation set.
    #[serde(rename = "fltrust")]
    FlTrust,
    /// Centered clipping (parameters `tau`, `iterations`).
    #[serde(rename = "centered_clipping")]
    CenteredClipping,
    /// Every update scaled down to `max_norm`, then weighted FedAvg.
    #[serde(rename = "norm_bound")]
    NormBound,
}

impl RuleKind {
    /// The name a manifest uses.
    pub fn name(self) -> &'static str {
        match self {
            Self::FedAvg => "fedavg",
            Self::Median => "median",
            Self::TrimmedMean => "trimmed_mean",
            Self::Krum => "krum",
            Self::MultiKrum => "multi_krum",
            Self::Bulyan => "bulyan",
            Self::FlTrust => "fltrust",
            Self::CenteredClipping => "centered_clipping",
            Self::NormBound => "norm_bound",
        }
    }

    /// The `[aggregation]` keys this rule takes.
    fn parameters(self) -> &'static [&'static str] {
        match self {
            Self::FedAvg | Self::Median | Self::FlTrust => &[],
            Self::TrimmedMean => &["beta"],
            Self::Krum | Self::Bulyan => &["f"],
            Self::MultiKrum => &["f", "m"],
            Self::CenteredClipping => &["tau", "iterations"],
            Self::NormBound => &["max_norm"],
        }
    }
}

impl fmt::Display for RuleKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The server optimisers a manifest can name.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OptimizerKind {
    /// The aggregate is added to the global model as it is (the default).
    #[default]
    None,
    /// Server momentum.
    FedAvgM,
    /// Adam on the server.
    FedAdam,
    /// Yogi on the server.
    FedYogi,
    /// Adagrad on the server.
    FedAdagrad,
}

impl OptimizerKind {
    /// Every server optimiser, `none` first (for tools that list or parse them, e.g. the robustness harness).
    pub const ALL: [OptimizerKind; 5] = [Self::None, Self::FedAvgM, Self::FedAdam, Self::FedYogi, Self::FedAdagrad];

    /// The name a manifest uses.
    pub fn name(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::FedAvgM => "fedavgm",
            Self::FedAdam => "fedadam",
            Self::FedYogi => "fedyogi",
            Self::FedAdagrad => "fedadagrad",
        }
    }

    /// The `[aggregation]` keys this optimiser takes.
    fn parameters(self) -> &'static [&'static str] {
        match self {
            Self::None => &[],
            Self::FedAvgM => &["server_learning_rate", "server_momentum"],
            Self::FedAdam => {
                &["server_learning_rate", "server_beta_1", "server_beta_2", "server_tau", "server_bias_correction"]
            }
            Self::FedYogi => &["server_learning_rate", "server_beta_1", "server_beta_2", "server_tau"],
            Self::FedAdagrad => &["server_learning_rate", "server_beta_1", "server_tau"],
        }
    }
}

impl fmt::Display for OptimizerKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The `[aggregation]` table of a study manifest. Every key is optional; the default is plain FedAvg with no
/// server optimiser and the default anomaly thresholds.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AggregationConfig {
    /// The rule.
    #[serde(default)]
    pub rule: RuleKind,
    /// `trimmed_mean`: the fraction cut from each side, in `[0, 0.5)` (default 0.2, Flower's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub beta: Option<f64>,
    /// `krum`, `multi_krum`, `bulyan`: how many Byzantine updates to tolerate (required).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub f: Option<usize>,
    /// `multi_krum`: how many of the best-scored updates to average (default `n − f` for a round of `n`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub m: Option<usize>,
    /// `centered_clipping`: the clipping radius τ (required: it depends on the model's scale).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tau: Option<f64>,
    /// `centered_clipping`: the number of clipping iterations (default 3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iterations: Option<usize>,
    /// `norm_bound`: the norm every update is scaled down to (required).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_norm: Option<f64>,
    /// The server optimiser applied to the rule's output.
    #[serde(default)]
    pub server_optimizer: OptimizerKind,
    /// The server learning rate (defaults: fedavgm 1, fedadam and fedadagrad 0.1, fedyogi 0.01).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_learning_rate: Option<f64>,
    /// `fedavgm`: the momentum factor (default 0.9).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_momentum: Option<f64>,
    /// `fedadam`, `fedyogi`, `fedadagrad`: β₁ (default 0.9; 0 for fedadagrad, as Flower).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_beta_1: Option<f64>,
    /// `fedadam`, `fedyogi`: β₂ (default 0.99).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_beta_2: Option<f64>,
    /// `fedadam`, `fedyogi`, `fedadagrad`: τ (defaults 1e-9, 1e-3 for fedyogi).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_tau: Option<f64>,
    /// `fedadam`: whether to bias-correct the learning rate (default true).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_bias_correction: Option<bool>,
    /// Anomaly thresholds and the suspension rule.
    #[serde(default)]
    pub anomaly: AnomalyConfig,
}

/// A rule with every parameter resolved (defaults filled in).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Rule {
    /// Weighted FedAvg.
    FedAvg,
    /// Coordinate-wise median ([`robust::coordinate_median`]).
    Median,
    /// Trimmed mean ([`robust::trimmed_mean`]).
    TrimmedMean {
        /// Fraction cut from each side.
        beta: f64,
    },
    /// Krum ([`robust::krum`]).
    Krum {
        /// Byzantine updates tolerated.
        f: usize,
    },
    /// Multi-Krum ([`robust::multi_krum`]).
    MultiKrum {
        /// Byzantine updates tolerated.
        f: usize,
        /// Updates averaged; `None` means `n − f`.
        m: Option<usize>,
    },
    /// Bulyan ([`robust::bulyan`]).
    Bulyan {
        /// Byzantine updates tolerated.
        f: usize,
    },
    /// FLTrust ([`robust::fltrust`]).
    FlTrust,
    /// Centered clipping ([`robust::centered_clipping`]).
    CenteredClipping {
        /// Clipping radius.
        tau: f64,
        /// Iterations.
        iterations: usize,
    },
    /// Norm bounding ([`robust::norm_bound`]) then weighted FedAvg.
    NormBound {
        /// The bound.
        max_norm: f64,
    },
}

/// The trimmed mean's default β (Flower's `FedTrimmedAvg`).
pub const DEFAULT_TRIM_BETA: f64 = 0.2;
/// Centered clipping's default number of iterations. Karimireddy et al. use one, starting from the previous
/// round's aggregate; a round without one starts from zero and needs a few to move away from it.
pub const DEFAULT_CLIPPING_ITERATIONS: usize = 3;

impl Rule {
    /// The fewest updates a round needs for this rule: `2f + 3` for Krum and Multi-Krum, `4f + 3` for Bulyan,
    /// 1 otherwise.
    pub fn min_updates(&self) -> usize {
        match *self {
            Self::Krum { f } | Self::MultiKrum { f, .. } => f.saturating_mul(2).saturating_add(3),
            Self::Bulyan { f } => f.saturating_mul(4).saturating_add(3),
            _ => 1,
        }
    }

    /// The Byzantine updates this rule is sized for: `Some(f)` for Krum, Multi-Krum and Bulyan, `None` otherwise.
    pub fn byzantine_f(&self) -> Option<usize> {
        match *self {
            Self::Krum { f } | Self::MultiKrum { f, .. } | Self::Bulyan { f } => Some(f),
            _ => None,
        }
    }

    /// The rule as it runs on the `n_kept` updates of a round that the anomaly check left after leaving flagged
    /// ones out, or `None` when it cannot run on so few.
    ///
    /// Krum, Multi-Krum and Bulyan keep their `f` when `n_kept` still allows it and otherwise tolerate as many
    /// Byzantine updates as `n_kept` allows: `f' = min(f, ⌊(n_kept − 3) / 2⌋)` (Krum, Multi-Krum) or
    /// `min(f, ⌊(n_kept − 3) / 4⌋)` (Bulyan). The left-out updates thus count towards the `f` the study declared,
    /// but `f` is lowered only as far as the count forces, never by the number left out: a flagged update may be
    /// an honest one, so the kept updates can still hold up to `f` attackers and the rule should keep its full
    /// tolerance wherever it can. Below 3 kept updates (where even `f' = 0` has no neighbours to score) the
    /// result is `None`. Every other rule runs unchanged on any non-empty round.
    ///
    /// ```
    /// use pdc_coordinator::aggregation::rule::Rule;
    /// // f = 2 needs 7 updates; a round of 7 with one flagged update left out runs with f = 1 on 6.
    /// assert_eq!(Rule::MultiKrum { f: 2, m: None }.for_kept_updates(6), Some(Rule::MultiKrum { f: 1, m: None }));
    /// assert_eq!(Rule::Krum { f: 2 }.for_kept_updates(9), Some(Rule::Krum { f: 2 }));
    /// assert_eq!(Rule::Bulyan { f: 2 }.for_kept_updates(8), Some(Rule::Bulyan { f: 1 }));
    /// assert_eq!(Rule::Krum { f: 1 }.for_kept_updates(2), None);
    /// ```
    pub fn for_kept_updates(&self, n_kept: usize) -> Option<Rule> {
        const FEWEST: usize = 3;
        if self.byzantine_f().is_some() && n_kept < FEWEST {
            return None;
        }
        let fitting = |f: usize, per_byzantine: usize| f.min((n_kept - FEWEST) / per_byzantine);
        Some(match *self {
            Self::Krum { f } => Self::Krum { f: fitting(f, 2) },
            Self::MultiKrum { f, m } => Self::MultiKrum { f: fitting(f, 2), m },
            Self::Bulyan { f } => Self::Bulyan { f: fitting(f, 4) },
            other => other,
        })
    }
}

impl AggregationConfig {
    /// After how many consecutive flagged rounds a PDC is suspended (0: never). Unless the manifest sets
    /// `anomaly.suspend_after_rounds`, [`DEFAULT_SUSPEND_AFTER_ROUNDS`] without a server optimiser and never
    /// with one: on the robustness matrix the optimisers' defaults made the checks flag 7 to 35 % of honest
    /// updates on breast cancer, one honest hospital in 20 rounds running (BENCHMARKS.md).
    pub fn suspend_after_rounds(&self) -> u32 {
        self.anomaly.suspend_after_rounds.unwrap_or(match self.server_optimizer {
            OptimizerKind::None => DEFAULT_SUSPEND_AFTER_ROUNDS,
            _ => 0,
        })
    }

    /// The rule with its parameters resolved. Fails if a parameter the rule does not take is set, a required one
    /// is missing, or a value is out of range (checks that depend on the number of participants are in
    /// [`AggregationConfig::validate`]).
    pub fn rule(&self) -> Result<Rule> {
        let kind = self.rule;
        let present = [
            ("beta", self.beta.is_some()),
            ("f", self.f.is_some()),
            ("m", self.m.is_some()),
            ("tau", self.tau.is_some()),
            ("iterations", self.iterations.is_some()),
            ("max_norm", self.max_norm.is_some()),
        ];
        check_relevant(&present, kind.parameters(), &format!("rule `{kind}`"))?;
        let required = |value: Option<usize>, key: &str, meaning: &str| {
            value.ok_or_else(|| invalid(format!("aggregation.rule `{kind}` needs `{key}` ({meaning})")))
        };
        let rule = match kind {
            RuleKind::FedAvg => Rule::FedAvg,
            RuleKind::Median => Rule::Median,
            RuleKind::TrimmedMean => {
                let beta = self.beta.unwrap_or(DEFAULT_TRIM_BETA);
                if !(0.0..0.5).contains(&beta) {
                    return Err(invalid(format!("aggregation.beta must lie in [0, 0.5), got {beta}")));
                }
                Rule::TrimmedMean { beta }
            }
            RuleKind::Krum => Rule::Krum { f: required(self.f, "f", "the number of Byzantine updates to tolerate")? },
            RuleKind::MultiKrum => {
                let f = required(self.f, "f", "the number of Byzantine updates to tolerate")?;
                if self.m == Some(0) {
                    return Err(invalid("aggregation.m must be at least 1".into()));
                }
                Rule::MultiKrum { f, m: self.m }
            }
            RuleKind::Bulyan => {
                Rule::Bulyan { f: required(self.f, "f", "the number of Byzantine updates to tolerate")? }
            }
            RuleKind::FlTrust => Rule::FlTrust,
            RuleKind::CenteredClipping => {
                let tau = self
                    .tau
                    .ok_or_else(|| invalid(format!("aggregation.rule `{kind}` needs `tau` (the clipping radius)")))?;
                positive(tau, "aggregation.tau")?;
                let iterations = self.iterations.unwrap_or(DEFAULT_CLIPPING_ITERATIONS);
                if iterations == 0 || iterations > 1000 {
                    return Err(invalid(format!("aggregation.iterations must lie in 1..=1000, got {iterations}")));
                }
                Rule::CenteredClipping { tau, iterations }
            }
            RuleKind::NormBound => {
                let max_norm = self.max_norm.ok_or_else(|| {
                    invalid(format!("aggregation.rule `{kind}` needs `max_norm` (the norm updates are scaled to)"))
                })?;
                positive(max_norm, "aggregation.max_norm")?;
                Rule::NormBound { max_norm }
            }
        };
        Ok(rule)
    }

    /// The server optimiser with its hyper-parameters resolved, or `None`. Fails if a hyper-parameter the
    /// optimiser does not take is set, or a value is out of range.
    pub fn server_optimizer(&self) -> Result<Option<ServerOptimizerSpec>> {
        let kind = self.server_optimizer;
        let present = [
            ("server_learning_rate", self.server_learning_rate.is_some()),
            ("server_momentum", self.server_momentum.is_some()),
            ("server_beta_1", self.server_beta_1.is_some()),
            ("server_beta_2", self.server_beta_2.is_some()),
            ("server_tau", self.server_tau.is_some()),
            ("server_bias_correction", self.server_bias_correction.is_some()),
        ];
        check_relevant(&present, kind.parameters(), &format!("server_optimizer `{kind}`"))?;
        let rate = |default: f64| self.server_learning_rate.unwrap_or(default);
        let spec = match kind {
            OptimizerKind::None => return Ok(None),
            OptimizerKind::FedAvgM => ServerOptimizerSpec::FedAvgM {
                learning_rate: rate(DEFAULT_FEDAVGM_LEARNING_RATE),
                momentum: self.server_momentum.unwrap_or(DEFAULT_FEDAVGM_MOMENTUM),
            },
            OptimizerKind::FedAdam => ServerOptimizerSpec::FedAdam {
                learning_rate: rate(DEFAULT_ADAM_LEARNING_RATE),
                beta_1: self.server_beta_1.unwrap_or(DEFAULT_BETA_1),
                beta_2: self.server_beta_2.unwrap_or(DEFAULT_BETA_2),
                tau: self.server_tau.unwrap_or(DEFAULT_ADAM_TAU),
                bias_correction: self.server_bias_correction.unwrap_or(true),
            },
            OptimizerKind::FedYogi => ServerOptimizerSpec::FedYogi {
                learning_rate: rate(DEFAULT_YOGI_LEARNING_RATE),
                beta_1: self.server_beta_1.unwrap_or(DEFAULT_BETA_1),
                beta_2: self.server_beta_2.unwrap_or(DEFAULT_BETA_2),
                tau: self.server_tau.unwrap_or(DEFAULT_YOGI_TAU),
            },
            OptimizerKind::FedAdagrad => ServerOptimizerSpec::FedAdagrad {
                learning_rate: rate(DEFAULT_ADAM_LEARNING_RATE),
                beta_1: self.server_beta_1.unwrap_or(0.0),
                tau: self.server_tau.unwrap_or(DEFAULT_ADAM_TAU),
            },
        };
        spec.validate().map_err(|error| match error {
            Error::InvalidArgument { field, detail } => invalid(format!("aggregation.{field} {detail}")),
            other => other,
        })?;
        Ok(Some(spec))
    }

    /// A fresh server optimiser for a model of `n_parameters`, or `None` when the study uses none.
    pub fn new_server_optimizer(&self, n_parameters: usize) -> Result<Option<ServerOptimizer>> {
        self.server_optimizer()?.map(|spec| ServerOptimizer::new(spec, n_parameters)).transpose()
    }

    /// Checks the whole table for a study that selects at most `n_max_participants` PDCs per round: the rule's
    /// parameters, that a full round is large enough for it (Krum and Multi-Krum need `2f + 3` updates, Bulyan
    /// `4f + 3`), that a trimmed mean trims something and Multi-Krum's `m` fits, the optimiser's
    /// hyper-parameters, and the anomaly thresholds. Errors are [`Error::InvalidManifest`] naming the key.
    ///
    /// A round that closes at its deadline with fewer updates than [`Rule::min_updates`] cannot be aggregated
    /// by the rule; compare that with the study's minimum participants as well.
    ///
    /// ```
    /// use pdc_coordinator::aggregation::rule::AggregationConfig;
    /// let config: AggregationConfig = toml::from_str("rule = \"bulyan\"\nf = 2").unwrap();
    /// assert!(config.validate(11).is_ok());
    /// assert_eq!(
    ///     config.validate(10).unwrap_err().to_string(),
    ///     "invalid manifest: aggregation.rule `bulyan` with f = 2 needs at least 4f + 3 = 11 participants \
    ///      per round, but participants.max is 10"
    /// );
    /// ```
    pub fn validate(&self, n_max_participants: usize) -> Result<()> {
        if n_max_participants == 0 {
            return Err(invalid("participants.max must be at least 1".into()));
        }
        let rule = self.rule()?;
        let too_few = |f: usize, formula: &str| {
            invalid(format!(
                "aggregation.rule `{}` with f = {f} needs at least {formula} = {} participants per round, but \
                 participants.max is {n_max_participants}",
                self.rule,
                rule.min_updates()
            ))
        };
        match rule {
            Rule::Krum { f } | Rule::MultiKrum { f, .. } if n_max_participants < rule.min_updates() => {
                return Err(too_few(f, "2f + 3"));
            }
            Rule::Bulyan { f } if n_max_participants < rule.min_updates() => return Err(too_few(f, "4f + 3")),
            Rule::MultiKrum { f, m: Some(m) } if m > n_max_participants - f => {
                return Err(invalid(format!(
                    "aggregation.m must lie in 1..={} (n − f with participants.max = {n_max_participants} and \
                     f = {f}), got {m}",
                    n_max_participants - f
                )));
            }
            Rule::TrimmedMean { beta } => {
                let cut = (beta * n_max_participants as f64) as usize;
                if cut == 0 {
                    return Err(invalid(format!(
                        "aggregation.beta = {beta} trims ⌊{beta} × {n_max_participants}⌋ = 0 updates from each \
                         side even in a full round of participants.max = {n_max_participants}: the trimmed mean \
                         would be the plain mean (use a larger beta, or rule = \"fedavg\")"
                    )));
                }
            }
            _ => {}
        }
        self.server_optimizer()?;
        self.anomaly.validate()
    }

    /// Whether the rule needs the coordinator's own update on the researcher's validation set (FLTrust).
    pub fn needs_server_update(&self) -> bool {
        self.rule == RuleKind::FlTrust
    }

    /// Whether this is the default table (plain FedAvg, no optimiser, default thresholds), e.g. to leave it out
    /// of a manifest's canonical form.
    pub fn is_default(&self) -> bool {
        *self == Self::default()
    }
}

/// What a round has besides its updates.
#[derive(Clone, Copy, Debug, Default)]
pub struct RoundInputs<'a> {
    /// The coordinator's own update on its root data (the researcher's validation set), for FLTrust.
    pub server_update: Option<&'a [f32]>,
    /// The previous round's aggregated delta: centered clipping starts from it (from zero without it).
    pub previous_aggregate: Option<&'a [f32]>,
    /// The study's local batch size. With it, the anomaly scores compare updates at a common number of local SGD
    /// steps per epoch, `⌈examples / batch⌉`, rather than at a common example count: a hospital with fewer rows
    /// than a batch takes one step, as long as one of a hospital with a full batch, so scaling it by its example
    /// count would inflate it (see [`super::anomaly`]). Without it, updates are compared by example count.
    pub local_batch_size: Option<usize>,
}

/// A round's aggregate together with its anomaly scores.
#[derive(Clone, Debug, PartialEq)]
pub struct RoundAggregate {
    /// The aggregated delta, before any server optimiser.
    pub delta: Vec<f32>,
    /// Every update's anomaly score, in sorted PDC-id order; empty when scoring is disabled.
    pub scores: Vec<(String, AnomalyScore)>,
    /// The PDCs whose flagged updates were left out (only with `anomaly.exclude_flagged`), in id order.
    pub excluded: Vec<String>,
    /// The rule as it ran: the configured one, or for Krum, Multi-Krum and Bulyan with `f` lowered to fit the
    /// updates kept after the exclusions (see [`Rule::for_kept_updates`]).
    pub rule: Rule,
}

/// Aggregates a round's updates `(pdc_id, weight, delta)` with the configured rule, in sorted PDC-id order.
///
/// `weight` (the PDC's example count) is used by FedAvg, norm bounding and Multi-Krum; the median, trimmed mean,
/// Krum, Bulyan, centered clipping and FLTrust are unweighted, as in Flower and in the papers. FLTrust needs
/// `server_update`. Centered clipping starts from zero here; [`aggregate_with`] can pass the previous aggregate.
///
/// ```
/// use pdc_coordinator::aggregation::rule::{AggregationConfig, aggregate};
/// let config: AggregationConfig = toml::from_str("rule = \"median\"").unwrap();
/// let updates: [(&str, f64, &[f32]); 3] = [("b", 1.0, &[100.0]), ("a", 1.0, &[1.0]), ("c", 9.0, &[2.0])];
/// assert_eq!(aggregate(&config, &updates, None).unwrap(), vec![2.0]);
/// ```
pub fn aggregate(
    config: &AggregationConfig,
    updates: &[(&str, f64, &[f32])],
    server_update: Option<&[f32]>,
) -> Result<Vec<f32>> {
    aggregate_with(config, updates, &RoundInputs { server_update, ..RoundInputs::default() })
}

/// [`aggregate`] with every input a round may have.
pub fn aggregate_with(
    config: &AggregationConfig,
    updates: &[(&str, f64, &[f32])],
    inputs: &RoundInputs<'_>,
) -> Result<Vec<f32>> {
    let rule = config.rule()?;
    let order = sorted_order(updates)?;
    let rows: Vec<(&str, f64, &[f32])> = order.iter().map(|&i| updates[i]).collect();
    let matrix = needs_matrix(rule).then(|| stack(&rows));
    apply(rule, &rows, matrix.as_ref().map(|matrix| matrix.view()), inputs)
}

/// The size an update is compared at by the anomaly scores: its local SGD steps per epoch, `⌈examples / batch⌉`,
/// when the batch size is known, else its example count (a weight that is not finite and positive is passed
/// through, for [`score_updates`] to refuse).
fn comparison_size(examples: f64, local_batch_size: Option<usize>) -> f64 {
    match local_batch_size {
        Some(batch) if batch > 0 && examples.is_finite() && examples > 0.0 => (examples / batch as f64).ceil(),
        _ => examples,
    }
}

/// Scores every update (see [`super::anomaly`]), leaves out the flagged ones if the configuration says so, and
/// aggregates the rest: what a round does between its last update and the server optimiser.
///
/// Leaving updates out shrinks the round, and Krum, Multi-Krum and Bulyan need `2f + 3` or `4f + 3` updates. So
/// the left-out updates count towards the study's `f`: the rule runs on the kept updates with `f` lowered only
/// as far as their number forces ([`Rule::for_kept_updates`]; [`RoundAggregate::rule`] says what ran). When fewer
/// than 3 updates are kept, too few for any Krum-type rule, nothing is left out and the rule runs on the whole
/// round with its own `f`: the anomaly check never makes a round fail that the rule alone would have
/// aggregated. The flags are recorded either way.
///
/// Fails if the configuration is invalid, the updates do not fit together, every update was flagged and left
/// out, or the rule refuses the round (too few updates for Krum or Bulyan, no server update for FLTrust).
pub fn aggregate_round(
    config: &AggregationConfig,
    updates: &[(&str, f64, &[f32])],
    inputs: &RoundInputs<'_>,
) -> Result<RoundAggregate> {
    let rule = config.rule()?;
    let order = sorted_order(updates)?;
    let rows: Vec<(&str, f64, &[f32])> = order.iter().map(|&i| updates[i]).collect();
    if !config.anomaly.enabled {
        let matrix = needs_matrix(rule).then(|| stack(&rows));
        let delta = apply(rule, &rows, matrix.as_ref().map(|matrix| matrix.view()), inputs)?;
        return Ok(RoundAggregate { delta, scores: Vec::new(), excluded: Vec::new(), rule });
    }
    let matrix = stack(&rows);
    let sizes: Vec<f64> = rows.iter().map(|row| comparison_size(row.1, inputs.local_batch_size)).collect();
    let scores = score_updates(&config.anomaly, matrix.view(), &sizes)?;
    let kept: Vec<usize> = if config.anomaly.exclude_flagged {
        (0..rows.len()).filter(|&i| !scores[i].flagged).collect()
    } else {
        (0..rows.len()).collect()
    };
    if kept.is_empty() {
        return Err(Error::FailedPrecondition(format!(
            "every one of the round's {} updates was flagged as anomalous: nothing to aggregate",
            rows.len()
        )));
    }
    // The rule as it can run on the kept updates; `None` (too few for a Krum-type rule) keeps every update.
    let resized = if kept.len() == rows.len() { Some(rule) } else { rule.for_kept_updates(kept.len()) };
    let (delta, excluded, rule) = match resized {
        Some(resized) if kept.len() < rows.len() => {
            let kept_rows: Vec<(&str, f64, &[f32])> = kept.iter().map(|&i| rows[i]).collect();
            let kept_matrix = matrix.select(Axis(0), &kept);
            let delta = apply(resized, &kept_rows, Some(kept_matrix.view()), inputs)?;
            let excluded =
                (0..rows.len()).filter(|i| kept.binary_search(i).is_err()).map(|i| rows[i].0.to_owned()).collect();
            (delta, excluded, resized)
        }
        _ => (apply(rule, &rows, Some(matrix.view()), inputs)?, Vec::new(), rule),
    };
    let scores = rows.iter().zip(scores).map(|(row, score)| (row.0.to_owned(), score)).collect();
    Ok(RoundAggregate { delta, scores, excluded, rule })
}

/// The rules that need every update in one matrix (FedAvg and norm bounding stream).
fn needs_matrix(rule: Rule) -> bool {
    !matches!(rule, Rule::FedAvg | Rule::NormBound { .. })
}

/// Runs `rule` over `rows` (sorted by PDC id; `matrix` holds them when the rule needs it).
fn apply(
    rule: Rule,
    rows: &[(&str, f64, &[f32])],
    matrix: Option<ArrayView2<f32>>,
    inputs: &RoundInputs<'_>,
) -> Result<Vec<f32>> {
    let n_parameters = rows[0].2.len();
    let matrix = || matrix.ok_or_else(|| Error::FailedPrecondition("aggregation matrix missing".into()));
    match rule {
        Rule::FedAvg => {
            let mut average = FedAvg::new(n_parameters);
            for &(_, weight, delta) in rows {
                average.add(weight, delta)?;
            }
            average.finish()
        }
        Rule::NormBound { max_norm } => {
            let mut average = FedAvg::new(n_parameters);
            let mut bounded = vec![0.0f32; n_parameters];
            for &(_, weight, delta) in rows {
                bounded.copy_from_slice(delta);
                robust::norm_bound(&mut bounded, max_norm)?;
                average.add(weight, &bounded)?;
            }
            average.finish()
        }
        Rule::Median => robust::coordinate_median(matrix()?),
        Rule::TrimmedMean { beta } => robust::trimmed_mean(matrix()?, beta),
        Rule::Krum { f } => robust::krum(matrix()?, f),
        Rule::MultiKrum { f, m } => {
            // Multi-Krum's guarantee needs m ≤ n − f; a round smaller than the configured m averages n − f.
            let limit = rows.len().saturating_sub(f).max(1);
            let m = m.unwrap_or(limit).min(limit);
            let weights: Vec<f64> = rows.iter().map(|row| row.1).collect();
            robust::multi_krum(matrix()?, &weights, f, m)
        }
        Rule::Bulyan { f } => robust::bulyan(matrix()?, f),
        Rule::FlTrust => {
            let server = inputs.server_update.ok_or_else(|| {
                Error::FailedPrecondition(
                    "FLTrust needs the coordinator's update on the researcher's validation set".into(),
                )
            })?;
            robust::fltrust(matrix()?, server)
        }
        Rule::CenteredClipping { tau, iterations } => {
            let zero;
            let centre = match inputs.previous_aggregate {
                Some(previous) => previous,
                None => {
                    zero = vec![0.0f32; n_parameters];
                    &zero
                }
            };
            robust::centered_clipping(matrix()?, centre, tau, iterations)
        }
    }
}

/// The indices of `updates` in ascending PDC-id order, after checking that there is at least one, that every
/// delta has the same length, that no PDC appears twice and that every weight is finite and positive.
fn sorted_order(updates: &[(&str, f64, &[f32])]) -> Result<Vec<usize>> {
    let Some(first) = updates.first() else {
        return Err(Error::FailedPrecondition("aggregation over no updates".into()));
    };
    let n_parameters = first.2.len();
    for &(pdc_id, weight, delta) in updates {
        if delta.len() != n_parameters {
            return Err(Error::InvalidUpdate {
                pdc_id: pdc_id.to_owned(),
                detail: format!("{} parameters where the round's first update has {n_parameters}", delta.len()),
            });
        }
        if !(weight.is_finite() && weight > 0.0) {
            return Err(Error::InvalidUpdate {
                pdc_id: pdc_id.to_owned(),
                detail: format!("weight must be finite and positive, got {weight}"),
            });
        }
    }
    let mut order: Vec<usize> = (0..updates.len()).collect();
    order.sort_by(|&a, &b| updates[a].0.cmp(updates[b].0));
    if let Some(pair) = order.windows(2).find(|pair| updates[pair[0]].0 == updates[pair[1]].0) {
        return Err(Error::InvalidArgument {
            field: "updates",
            detail: format!("PDC {} appears twice in one round", updates[pair[0]].0),
        });
    }
    Ok(order)
}

/// The rows as one contiguous `(n_updates, n_parameters)` matrix.
fn stack(rows: &[(&str, f64, &[f32])]) -> Array2<f32> {
    let n_parameters = rows[0].2.len();
    let mut values = Vec::with_capacity(rows.len() * n_parameters);
    for row in rows {
        values.extend_from_slice(row.2);
    }
    Array2::from_shape_vec((rows.len(), n_parameters), values).expect("every row has n_parameters values")
}

fn invalid(detail: String) -> Error {
    Error::InvalidManifest(detail)
}

fn positive(value: f64, key: &str) -> Result<()> {
    if value.is_finite() && value > 0.0 {
        Ok(())
    } else {
        Err(invalid(format!("{key} must be finite and positive, got {value}")))
    }
}

/// Refuses a key that is set but not among `allowed`.
fn check_relevant(present: &[(&str, bool)], allowed: &[&str], owner: &str) -> Result<()> {
    match present.iter().find(|(key, set)| *set && !allowed.contains(key)) {
        Some((key, _)) => {
            let takes = if allowed.is_empty() { "no parameters".to_owned() } else { allowed.join(", ") };
            Err(invalid(format!("aggregation.{key} is not a parameter of {owner}, which takes {takes}")))
        }
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn parse(text: &str) -> AggregationConfig {
        toml::from_str(text).unwrap()
    }

    #[test]
    fn suspension_defaults_to_three_rounds_and_to_never_with_a_server_optimizer() {
        assert_eq!(parse("").suspend_after_rounds(), DEFAULT_SUSPEND_AFTER_ROUNDS);
        assert_eq!(parse("rule = \"median\"").suspend_after_rounds(), 3);
        for kind in OptimizerKind::ALL.into_iter().skip(1) {
            let config = parse(&format!("server_optimizer = \"{}\"", kind.name()));
            assert_eq!(config.suspend_after_rounds(), 0, "{kind}");
            let explicit =
                parse(&format!("server_optimizer = \"{}\"\n[anomaly]\nsuspend_after_rounds = 2", kind.name()));
            assert_eq!(explicit.suspend_after_rounds(), 2, "{kind}");
        }
        assert_eq!(parse("[anomaly]\nsuspend_after_rounds = 0").suspend_after_rounds(), 0);
        // Left out, it stays out of the canonical form, so the default is resolved the same way on reload.
        assert!(!toml::to_string(&parse("")).unwrap().contains("suspend_after_rounds"));
        let explicit = toml::to_string(&parse("[anomaly]\nsuspend_after_rounds = 3")).unwrap();
        assert_eq!(parse(&explicit).anomaly.suspend_after_rounds, Some(3));
    }

    #[test]
    fn every_optimizer_is_listed_once_and_parses_from_its_name() {
        // A new variant breaks this match, and the test then asks for it in `ALL`.
        let position = |kind: OptimizerKind| match kind {
            OptimizerKind::None => 0,
            OptimizerKind::FedAvgM => 1,
            OptimizerKind::FedAdam => 2,
            OptimizerKind::FedYogi => 3,
            OptimizerKind::FedAdagrad => 4,
        };
        for (index, kind) in OptimizerKind::ALL.into_iter().enumerate() {
            assert_eq!(position(kind), index, "{kind} is out of place in OptimizerKind::ALL");
            let config = parse(&format!("server_optimizer = \"{}\"", kind.name()));
            assert_eq!(config.server_optimizer, kind);
        }
    }

    fn error(text: &str, n_max: usize) -> String {
        match toml::from_str::<AggregationConfig>(text) {
            Ok(config) => config.validate(n_max).unwrap_err().to_string(),
            Err(error) => error.message().to_owned(),
        }
    }

    #[test]
    fn defaults_are_fedavg_without_optimizer() {
        let config = parse("");
        assert!(config.is_default());
        assert_eq!(config.rule().unwrap(), Rule::FedAvg);
        assert_eq!(config.server_optimizer().unwrap(), None);
        assert!(config.validate(1).is_ok());
        assert!(config.new_server_optimizer(3).unwrap().is_none());
    }

    #[test]
    fn every_rule_parses_with_its_parameters() {
        for (text, expected) in [
            ("rule = \"fedavg\"", Rule::FedAvg),
            ("rule = \"median\"", Rule::Median),
            ("rule = \"trimmed_mean\"", Rule::TrimmedMean { beta: 0.2 }),
            ("rule = \"trimmed_mean\"\nbeta = 0.3", Rule::TrimmedMean { beta: 0.3 }),
            ("rule = \"krum\"\nf = 1", Rule::Krum { f: 1 }),
            ("rule = \"multi_krum\"\nf = 1", Rule::MultiKrum { f: 1, m: None }),
            ("rule = \"multi_krum\"\nf = 1\nm = 3", Rule::MultiKrum { f: 1, m: Some(3) }),
            ("rule = \"bulyan\"\nf = 1", Rule::Bulyan { f: 1 }),
            ("rule = \"fltrust\"", Rule::FlTrust),
            ("rule = \"centered_clipping\"\ntau = 2.5", Rule::CenteredClipping { tau: 2.5, iterations: 3 }),
            (
                "rule = \"centered_clipping\"\ntau = 2.5\niterations = 1",
                Rule::CenteredClipping { tau: 2.5, iterations: 1 },
            ),
            ("rule = \"norm_bound\"\nmax_norm = 5.0", Rule::NormBound { max_norm: 5.0 }),
        ] {
            let config = parse(text);
            assert_eq!(config.rule().unwrap(), expected, "{text}");
            assert!(config.validate(10).is_ok(), "{text}: {:?}", config.validate(10));
            // The canonical form parses back to the same table.
            assert_eq!(parse(&toml::to_string(&config).unwrap()), config, "{text}");
        }
    }

    #[test]
    fn every_optimizer_parses_with_flower_defaults() {
        assert_eq!(
            parse("server_optimizer = \"fedavgm\"").server_optimizer().unwrap(),
            Some(ServerOptimizerSpec::FedAvgM { learning_rate: 1.0, momentum: 0.9 })
        );
        assert_eq!(
            parse("server_optimizer = \"fedadam\"").server_optimizer().unwrap(),
            Some(ServerOptimizerSpec::FedAdam {
                learning_rate: 0.1,
                beta_1: 0.9,
                beta_2: 0.99,
                tau: 1e-9,
                bias_correction: true
            })
        );
        assert_eq!(
            parse("server_optimizer = \"fedyogi\"\nserver_learning_rate = 0.05").server_optimizer().unwrap(),
            Some(ServerOptimizerSpec::FedYogi { learning_rate: 0.05, beta_1: 0.9, beta_2: 0.99, tau: 1e-3 })
        );
        assert_eq!(
            parse("server_optimizer = \"fedadagrad\"").server_optimizer().unwrap(),
            Some(ServerOptimizerSpec::FedAdagrad { learning_rate: 0.1, beta_1: 0.0, tau: 1e-9 })
        );
        let config = parse("server_optimizer = \"fedadam\"\nserver_bias_correction = false\nserver_tau = 0.001");
        assert!(config.validate(2).is_ok());
        assert_eq!(config.new_server_optimizer(4).unwrap().unwrap().first_moment().len(), 4);
    }

    #[test]
    fn invalid_combinations_are_refused_with_precise_errors() {
        for (text, n_max, expected) in [
            (
                "rule = \"krum\"",
                10,
                "invalid manifest: aggregation.rule `krum` needs `f` (the number of Byzantine updates to tolerate)",
            ),
            (
                "rule = \"krum\"\nf = 2",
                6,
                "invalid manifest: aggregation.rule `krum` with f = 2 needs at least 2f + 3 = 7 participants per round, but participants.max is 6",
            ),
            (
                "rule = \"multi_krum\"\nf = 1",
                4,
                "invalid manifest: aggregation.rule `multi_krum` with f = 1 needs at least 2f + 3 = 5 participants per round, but participants.max is 4",
            ),
            (
                "rule = \"multi_krum\"\nf = 1\nm = 5",
                5,
                "invalid manifest: aggregation.m must lie in 1..=4 (n − f with participants.max = 5 and f = 1), got 5",
            ),
            ("rule = \"multi_krum\"\nf = 1\nm = 0", 5, "invalid manifest: aggregation.m must be at least 1"),
            (
                "rule = \"bulyan\"\nf = 1",
                6,
                "invalid manifest: aggregation.rule `bulyan` with f = 1 needs at least 4f + 3 = 7 participants per round, but participants.max is 6",
            ),
            (
                "rule = \"trimmed_mean\"\nbeta = 0.5",
                10,
                "invalid manifest: aggregation.beta must lie in [0, 0.5), got 0.5",
            ),
            (
                "rule = \"trimmed_mean\"\nbeta = -0.1",
                10,
                "invalid manifest: aggregation.beta must lie in [0, 0.5), got -0.1",
            ),
            (
                "rule = \"trimmed_mean\"\nbeta = 0.1",
                5,
                "invalid manifest: aggregation.beta = 0.1 trims ⌊0.1 × 5⌋ = 0 updates from each side even in a full round of participants.max = 5: the trimmed mean would be the plain mean (use a larger beta, or rule = \"fedavg\")",
            ),
            (
                "rule = \"median\"\nf = 1",
                10,
                "invalid manifest: aggregation.f is not a parameter of rule `median`, which takes no parameters",
            ),
            (
                "rule = \"krum\"\nf = 1\nbeta = 0.1",
                10,
                "invalid manifest: aggregation.beta is not a parameter of rule `krum`, which takes f",
            ),
            (
                "rule = \"centered_clipping\"",
                10,
                "invalid manifest: aggregation.rule `centered_clipping` needs `tau` (the clipping radius)",
            ),
            (
                "rule = \"centered_clipping\"\ntau = -1.0",
                10,
                "invalid manifest: aggregation.tau must be finite and positive, got -1",
            ),
            (
                "rule = \"centered_clipping\"\ntau = 1.0\niterations = 0",
                10,
                "invalid manifest: aggregation.iterations must lie in 1..=1000, got 0",
            ),
            (
                "rule = \"norm_bound\"",
                10,
                "invalid manifest: aggregation.rule `norm_bound` needs `max_norm` (the norm updates are scaled to)",
            ),
            (
                "rule = \"norm_bound\"\nmax_norm = inf",
                10,
                "invalid manifest: aggregation.max_norm must be finite and positive, got inf",
            ),
            (
                "server_optimizer = \"fedadam\"\nserver_learning_rate = -0.1",
                10,
                "invalid manifest: aggregation.server_learning_rate must be finite and positive, got -0.1",
            ),
            (
                "server_optimizer = \"fedyogi\"\nserver_beta_2 = 1.0",
                10,
                "invalid manifest: aggregation.server_beta_2 must lie in [0, 1), got 1",
            ),
            (
                "server_optimizer = \"fedavgm\"\nserver_tau = 0.1",
                10,
                "invalid manifest: aggregation.server_tau is not a parameter of server_optimizer `fedavgm`, which takes server_learning_rate, server_momentum",
            ),
            (
                "server_learning_rate = 0.1",
                10,
                "invalid manifest: aggregation.server_learning_rate is not a parameter of server_optimizer `none`, which takes no parameters",
            ),
            ("[anomaly]\nmin_updates = 0", 10, "invalid manifest: aggregation.anomaly.min_updates must be at least 1"),
            ("", 0, "invalid manifest: participants.max must be at least 1"),
        ] {
            assert_eq!(error(text, n_max), expected, "{text}");
        }
        for (text, expected) in [
            ("rule = \"krun\"", "unknown variant `krun`"),
            ("rulle = \"krum\"", "unknown field `rulle`"),
            ("server_optimizer = \"adam\"", "unknown variant `adam`"),
            ("[anomaly]\nmax_z = 3.0", "unknown field `max_z`"),
        ] {
            let message = error(text, 10);
            assert!(message.contains(expected), "{text}: {message}");
        }
    }

    #[test]
    fn min_updates_per_rule() {
        assert_eq!(Rule::Krum { f: 2 }.min_updates(), 7);
        assert_eq!(Rule::MultiKrum { f: 1, m: None }.min_updates(), 5);
        assert_eq!(Rule::Bulyan { f: 2 }.min_updates(), 11);
        assert_eq!(Rule::Median.min_updates(), 1);
        assert_eq!(Rule::Bulyan { f: usize::MAX }.min_updates(), usize::MAX);
    }

    fn example() -> Vec<(&'static str, f64, Vec<f32>)> {
        // Out of id order on purpose.
        vec![
            ("pdc-e", 1.0, vec![100.0, -100.0]),
            ("pdc-b", 2.0, vec![2.0, 1.0]),
            ("pdc-a", 1.0, vec![0.0, 0.0]),
            ("pdc-d", 1.0, vec![7.0, 2.0]),
            ("pdc-c", 3.0, vec![3.0, 1.0]),
        ]
    }

    fn borrowed<'a>(updates: &'a [(&'static str, f64, Vec<f32>)]) -> Vec<(&'static str, f64, &'a [f32])> {
        updates.iter().map(|(id, weight, delta)| (*id, *weight, delta.as_slice())).collect()
    }

    #[test]
    fn dispatch_matches_the_rules_on_the_sorted_matrix() {
        let owned = example();
        let updates = borrowed(&owned);
        let run = |text: &str, server: Option<&[f32]>| aggregate(&parse(text), &updates, server).unwrap();
        // Weighted FedAvg: (100 + 4 + 0 + 7 + 9)/8, (−100 + 2 + 0 + 2 + 3)/8.
        assert_eq!(run("", None), vec![15.0, -11.625]);
        // Median of 0, 2, 3, 7, 100 and of −100, 0, 1, 1, 2.
        assert_eq!(run("rule = \"median\"", None), vec![3.0, 1.0]);
        // β·n = 1: mean of 2, 3, 7 and of 0, 1, 1.
        assert_eq!(run("rule = \"trimmed_mean\"", None), vec![4.0, (2.0f64 / 3.0) as f32]);
        // Sorted rows a, b, c, d, e; with f = 1 Krum picks b = [2, 1] (nearest to c and a).
        assert_eq!(run("rule = \"krum\"\nf = 1", None), vec![2.0, 1.0]);
        // Multi-Krum, m = 2: b (weight 2) and c (weight 3): (4 + 9)/5, (2 + 3)/5.
        assert_eq!(run("rule = \"multi_krum\"\nf = 1\nm = 2", None), vec![2.6, 1.0]);
        // Norm bound 1: e is scaled to [1/√2, −1/√2], the rest to unit length, then weighted.
        let bounded = run("rule = \"norm_bound\"\nmax_norm = 1.0", None);
        let s = std::f64::consts::FRAC_1_SQRT_2;
        let (b, d) = (5f64.sqrt(), 53f64.sqrt());
        let c = 10f64.sqrt();
        let expected = [(s + 2.0 * 2.0 / b + 7.0 / d + 3.0 * 3.0 / c) / 8.0, (-s + 2.0 / b + 2.0 / d + 3.0 / c) / 8.0];
        for (got, want) in bounded.iter().zip(expected) {
            assert!((f64::from(*got) - want).abs() < 1e-6, "{bounded:?} vs {expected:?}");
        }
        // FLTrust against [1, 0]: e points away in part, a has norm 0.
        let server = [1.0f32, 0.0];
        assert_eq!(
            run("rule = \"fltrust\"", Some(&server)),
            robust::fltrust(stack(&sorted(&updates)).view(), &server).unwrap()
        );
        assert_eq!(
            run("rule = \"centered_clipping\"\ntau = 1.0", None),
            robust::centered_clipping(stack(&sorted(&updates)).view(), &[0.0, 0.0], 1.0, 3).unwrap()
        );
    }

    fn sorted<'a>(updates: &[(&'a str, f64, &'a [f32])]) -> Vec<(&'a str, f64, &'a [f32])> {
        let mut rows = updates.to_vec();
        rows.sort_by(|a, b| a.0.cmp(b.0));
        rows
    }

    #[test]
    fn bulyan_dispatch() {
        let owned: Vec<(String, f64, Vec<f32>)> = [0.0f32, 1.0, 2.0, 3.0, 4.0, 100.0, -100.0]
            .iter()
            .enumerate()
            .map(|(i, &v)| (format!("pdc-{i}"), 1.0, vec![v]))
            .collect();
        let updates: Vec<(&str, f64, &[f32])> =
            owned.iter().map(|(id, weight, delta)| (id.as_str(), *weight, delta.as_slice())).collect();
        assert_eq!(aggregate(&parse("rule = \"bulyan\"\nf = 1"), &updates, None).unwrap(), vec![2.0]);
    }

    #[test]
    fn centered_clipping_starts_from_the_previous_aggregate() {
        let updates: [(&str, f64, &[f32]); 3] = [("a", 1.0, &[1.0]), ("b", 1.0, &[2.0]), ("c", 1.0, &[100.0])];
        let config = parse("rule = \"centered_clipping\"\ntau = 5.0\niterations = 1");
        // From 0: (1 + 2 + 5)/3. From 2: 2 + (−1 + 0 + 5)/3.
        assert_eq!(aggregate(&config, &updates, None).unwrap(), vec![(8.0f64 / 3.0) as f32]);
        let inputs = RoundInputs { previous_aggregate: Some(&[2.0]), ..RoundInputs::default() };
        assert_eq!(aggregate_with(&config, &updates, &inputs).unwrap(), vec![(2.0 + 4.0f64 / 3.0) as f32]);
    }

    #[test]
    fn runtime_refusals() {
        let owned = example();
        let updates = borrowed(&owned);
        let message = |text: &str, updates: &[(&str, f64, &[f32])], server: Option<&[f32]>| {
            aggregate(&parse(text), updates, server).unwrap_err().to_string()
        };
        assert_eq!(message("", &[], None), "aggregation over no updates");
        assert_eq!(
            message("rule = \"fltrust\"", &updates, None),
            "FLTrust needs the coordinator's update on the researcher's validation set"
        );
        assert_eq!(
            message("rule = \"krum\"\nf = 2", &updates, None),
            "invalid updates: Krum needs n >= 2f + 3 = 7 updates to tolerate f = 2 Byzantine ones, got n = 5"
        );
        let short: [(&str, f64, &[f32]); 2] = [("a", 1.0, &[1.0, 2.0]), ("b", 1.0, &[1.0])];
        assert_eq!(
            message("", &short, None),
            "invalid update from b: 1 parameters where the round's first update has 2"
        );
        let twice: [(&str, f64, &[f32]); 2] = [("a", 1.0, &[1.0]), ("a", 1.0, &[2.0])];
        assert_eq!(message("", &twice, None), "invalid updates: PDC a appears twice in one round");
        let weightless: [(&str, f64, &[f32]); 1] = [("a", 0.0, &[1.0])];
        assert_eq!(message("", &weightless, None), "invalid update from a: weight must be finite and positive, got 0");
        // Multi-Krum with m larger than a smaller round's n − f averages n − f.
        let config = parse("rule = \"multi_krum\"\nf = 1\nm = 10");
        assert_eq!(
            aggregate(&config, &updates, None).unwrap(),
            aggregate(&parse("rule = \"multi_krum\"\nf = 1\nm = 4"), &updates, None).unwrap()
        );
    }

    #[test]
    fn aggregate_round_scores_and_optionally_excludes() {
        // Eight similar (but not nearly identical) updates and one sign-flipped one with a large weight.
        let mut owned: Vec<(String, f64, Vec<f32>)> =
            (0..8).map(|i| (format!("h{i}"), 1.0, vec![1.0 + 0.03 * i as f32, 1.0 - 0.03 * i as f32, 0.5])).collect();
        owned.push(("x".to_owned(), 50.0, vec![-1.0, -1.0, -0.5]));
        let updates: Vec<(&str, f64, &[f32])> =
            owned.iter().map(|(id, weight, delta)| (id.as_str(), *weight, delta.as_slice())).collect();
        let recorded = aggregate_round(&parse(""), &updates, &RoundInputs::default()).unwrap();
        assert_eq!(recorded.scores.len(), 9);
        assert_eq!(recorded.scores[8].0, "x");
        assert!(recorded.scores[8].1.flagged);
        assert!(recorded.scores[..8].iter().all(|(_, score)| !score.flagged));
        assert!(recorded.excluded.is_empty());
        // FedAvg with the attacker's weight 50 flips the aggregate.
        assert!(recorded.delta[0] < 0.0);
        let excluded =
            aggregate_round(&parse("[anomaly]\nexclude_flagged = true"), &updates, &RoundInputs::default()).unwrap();
        assert_eq!(excluded.excluded, ["x"]);
        assert!((excluded.delta[0] - 1.105).abs() < 1e-6, "{:?}", excluded.delta);
        assert_eq!(excluded.scores, recorded.scores);
        // Scoring disabled: no scores, the plain aggregate.
        let plain = aggregate_round(&parse("[anomaly]\nenabled = false"), &updates, &RoundInputs::default()).unwrap();
        assert!(plain.scores.is_empty());
        assert_eq!(plain.delta, recorded.delta);
        // Every update an echo and excluded: refused.
        let echoes: [(&str, f64, &[f32]); 2] = [("a", 1.0, &[0.0]), ("b", 1.0, &[0.0])];
        assert_eq!(
            aggregate_round(&parse("[anomaly]\nexclude_flagged = true"), &echoes, &RoundInputs::default())
                .unwrap_err()
                .to_string(),
            "every one of the round's 2 updates was flagged as anomalous: nothing to aggregate"
        );
    }

    /// `(id, weight, delta)` rows borrowed from owned ones.
    fn rows_of(owned: &[(String, f64, Vec<f32>)]) -> Vec<(&str, f64, &[f32])> {
        owned.iter().map(|(id, weight, delta)| (id.as_str(), *weight, delta.as_slice())).collect()
    }

    /// `n` similar updates `h0`, `h1`, … and `n_echoes` echoes `x0`, `x1`, … (zero deltas, always flagged).
    fn similar_and_echoes(n: usize, n_echoes: usize) -> Vec<(String, f64, Vec<f32>)> {
        let mut owned: Vec<(String, f64, Vec<f32>)> =
            (0..n).map(|i| (format!("h{i}"), 1.0, vec![1.0 + 0.01 * i as f32, 1.0 - 0.02 * i as f32, 0.5])).collect();
        owned.extend((0..n_echoes).map(|i| (format!("x{i}"), 1.0, vec![0.0; 3])));
        owned
    }

    #[test]
    fn flagged_updates_left_out_count_towards_f_instead_of_failing_the_round() {
        // Multi-Krum with f = 2 needs 7 updates. Before, leaving the echo out of a round of 7 made the rule refuse
        // the remaining 6 ("Multi-Krum needs n >= 2f + 3 = 7 updates to tolerate f = 2 Byzantine ones, got n = 6")
        // and the coordinator stopped the study.
        let owned = similar_and_echoes(6, 1);
        let updates = rows_of(&owned);
        let honest = rows_of(&owned[..6]);
        let excluding = |rule: &str| parse(&format!("{rule}\n[anomaly]\nexclude_flagged = true"));
        let round =
            aggregate_round(&excluding("rule = \"multi_krum\"\nf = 2"), &updates, &RoundInputs::default()).unwrap();
        assert_eq!(round.excluded, ["x0"]);
        assert_eq!(round.rule, Rule::MultiKrum { f: 1, m: None });
        // Exactly Multi-Krum with f = 1 (averaging n − f = 5) over the six kept updates.
        assert_eq!(round.delta, aggregate(&parse("rule = \"multi_krum\"\nf = 1"), &honest, None).unwrap());
        // The same for Krum, and for Bulyan (f = 1 needs 7; 6 kept allow f = 0).
        let krum = aggregate_round(&excluding("rule = \"krum\"\nf = 2"), &updates, &RoundInputs::default()).unwrap();
        assert_eq!((krum.rule, krum.excluded.len()), (Rule::Krum { f: 1 }, 1));
        assert_eq!(krum.delta, aggregate(&parse("rule = \"krum\"\nf = 1"), &honest, None).unwrap());
        let bulyan =
            aggregate_round(&excluding("rule = \"bulyan\"\nf = 1"), &updates, &RoundInputs::default()).unwrap();
        assert_eq!(bulyan.rule, Rule::Bulyan { f: 0 });
        assert_eq!(bulyan.delta, aggregate(&parse("rule = \"bulyan\"\nf = 0"), &honest, None).unwrap());
        // With room to spare f is kept: 9 of 10 kept still allow f = 2 for Multi-Krum.
        let owned = similar_and_echoes(9, 1);
        let roomy =
            aggregate_round(&excluding("rule = \"multi_krum\"\nf = 2"), &rows_of(&owned), &RoundInputs::default())
                .unwrap();
        assert_eq!((roomy.rule, roomy.excluded.len()), (Rule::MultiKrum { f: 2, m: None }, 1));
        // Without exclusion the configured rule runs and says so.
        let plain = aggregate_round(&parse("rule = \"multi_krum\"\nf = 2"), &updates, &RoundInputs::default()).unwrap();
        assert_eq!((plain.rule, plain.excluded.len()), (Rule::MultiKrum { f: 2, m: None }, 0));
    }

    #[test]
    fn too_few_kept_updates_for_krum_keep_every_update() {
        // Two similar updates and three echoes: the median norm is 0, so only the echoes are flagged. Two kept
        // are too few for any Krum, so nothing is left out and Krum with f = 1 (n = 5 ≥ 5) runs on all five.
        let owned = similar_and_echoes(2, 3);
        let updates = rows_of(&owned);
        let config = parse("rule = \"krum\"\nf = 1\n[anomaly]\nexclude_flagged = true");
        let round = aggregate_round(&config, &updates, &RoundInputs::default()).unwrap();
        assert!(round.excluded.is_empty());
        assert_eq!(round.rule, Rule::Krum { f: 1 });
        assert_eq!(round.scores.iter().filter(|(_, score)| score.flagged).count(), 3);
        assert_eq!(round.delta, aggregate(&parse("rule = \"krum\"\nf = 1"), &updates, None).unwrap());
        // A rule that runs on any count still leaves them out.
        let median = aggregate_round(
            &parse("rule = \"median\"\n[anomaly]\nexclude_flagged = true"),
            &updates,
            &RoundInputs::default(),
        )
        .unwrap();
        assert_eq!(median.excluded, ["x0", "x1", "x2"]);
        // And a round the rule alone would refuse is still refused, with the rule's reason.
        let config = parse("rule = \"krum\"\nf = 2\n[anomaly]\nexclude_flagged = true");
        assert_eq!(
            aggregate_round(&config, &updates, &RoundInputs::default()).unwrap_err().to_string(),
            "invalid updates: Krum needs n >= 2f + 3 = 7 updates to tolerate f = 2 Byzantine ones, got n = 5"
        );
    }

    /// A hospital with fewer rows than a batch takes one step, as long as a full batch's: compared by example
    /// count its update looks several times too long, compared by local steps (the batch size known) it does not.
    #[test]
    fn anomaly_scores_compare_updates_by_local_steps_when_the_batch_size_is_known() {
        let owned: Vec<(String, f64, Vec<f32>)> = [
            (64.0, [1.0f32, 0.0]),
            (64.0, [1.02, 0.02]),
            (64.0, [0.98, -0.02]),
            (64.0, [1.01, 0.01]),
            (3.0, [0.8, 0.0]),
        ]
        .iter()
        .enumerate()
        .map(|(i, (examples, delta))| (format!("h{i}"), *examples, delta.to_vec()))
        .collect();
        let updates = rows_of(&owned);
        let config = parse("[anomaly]\nexclude_flagged = true");
        let small = |round: &RoundAggregate| round.scores[4].1.clone();
        let by_examples = aggregate_round(&config, &updates, &RoundInputs::default()).unwrap();
        assert!(small(&by_examples).flagged, "{:?}", small(&by_examples));
        assert_eq!(by_examples.excluded, ["h4"]);
        let inputs = RoundInputs { local_batch_size: Some(32), ..RoundInputs::default() };
        let by_steps = aggregate_round(&config, &updates, &inputs).unwrap();
        // Two steps against one: its norm is compared after dividing by √(1/2), 1.13 against a median of 1.01.
        assert!(!small(&by_steps).flagged, "{:?}", small(&by_steps));
        assert!((small(&by_steps).norm_ratio - 0.8 * 2f64.sqrt() / 1.01).abs() < 1e-3, "{:?}", small(&by_steps));
        assert!(by_steps.excluded.is_empty());
        // The weights of the aggregate are still the example counts.
        assert_eq!(by_steps.delta, aggregate(&parse(""), &updates, None).unwrap());
        assert_eq!(
            [comparison_size(3.0, Some(32)), comparison_size(64.0, Some(32)), comparison_size(65.0, Some(32))],
            [1.0, 2.0, 3.0]
        );
        assert_eq!(comparison_size(3.0, None), 3.0);
        assert!(comparison_size(f64::NAN, Some(32)).is_nan());
    }

    #[test]
    fn kept_update_sizing_per_rule() {
        for (rule, n_kept, expected) in [
            (Rule::Krum { f: 3 }, 9, Some(Rule::Krum { f: 3 })),
            (Rule::Krum { f: 3 }, 8, Some(Rule::Krum { f: 2 })),
            (Rule::Krum { f: 3 }, 3, Some(Rule::Krum { f: 0 })),
            (Rule::MultiKrum { f: 2, m: Some(4) }, 5, Some(Rule::MultiKrum { f: 1, m: Some(4) })),
            (Rule::Bulyan { f: 2 }, 11, Some(Rule::Bulyan { f: 2 })),
            (Rule::Bulyan { f: 2 }, 10, Some(Rule::Bulyan { f: 1 })),
            (Rule::Bulyan { f: 2 }, 6, Some(Rule::Bulyan { f: 0 })),
            (Rule::Bulyan { f: 2 }, 2, None),
            (Rule::Krum { f: 0 }, 2, None),
            (Rule::Median, 1, Some(Rule::Median)),
            (Rule::TrimmedMean { beta: 0.2 }, 2, Some(Rule::TrimmedMean { beta: 0.2 })),
        ] {
            assert_eq!(rule.for_kept_updates(n_kept), expected, "{rule:?} on {n_kept}");
            if let Some(resized) = expected {
                assert!(n_kept >= resized.min_updates(), "{resized:?}");
            }
        }
    }

    fn every_config() -> Vec<AggregationConfig> {
        [
            "",
            "rule = \"median\"",
            "rule = \"trimmed_mean\"",
            "rule = \"krum\"\nf = 1",
            "rule = \"multi_krum\"\nf = 1",
            "rule = \"bulyan\"\nf = 0",
            "rule = \"fltrust\"",
            "rule = \"centered_clipping\"\ntau = 10.0",
            "rule = \"norm_bound\"\nmax_norm = 50.0",
        ]
        .iter()
        .map(|text| parse(text))
        .collect()
    }

    /// A round's updates, owned: `(pdc_id, weight, delta)`.
    type OwnedRound = Vec<(String, f64, Vec<f32>)>;

    /// 5 to 8 updates of 1 to 4 parameters with ids and weights, and a permutation of them.
    fn round_and_permutation() -> impl Strategy<Value = (OwnedRound, Vec<usize>)> {
        (5usize..9, 1usize..5).prop_flat_map(|(n, p)| {
            (
                prop::collection::vec((1.0f64..10.0, prop::collection::vec(-100.0f32..100.0, p)), n),
                Just((0..n).collect::<Vec<_>>()).prop_shuffle(),
            )
                .prop_map(|(rows, permutation)| {
                    let rows = rows
                        .into_iter()
                        .enumerate()
                        .map(|(i, (weight, delta))| (format!("pdc-{i:02}"), weight.round(), delta))
                        .collect();
                    (rows, permutation)
                })
        })
    }

    proptest! {
        #[test]
        fn aggregation_is_independent_of_arrival_order((rows, permutation) in round_and_permutation()) {
            let p = rows[0].2.len();
            let server: Vec<f32> = (0..p).map(|j| j as f32 - 0.5).collect();
            let updates: Vec<(&str, f64, &[f32])> =
                rows.iter().map(|(id, weight, delta)| (id.as_str(), *weight, delta.as_slice())).collect();
            let shuffled: Vec<(&str, f64, &[f32])> = permutation.iter().map(|&i| updates[i]).collect();
            for config in every_config() {
                let bits = |updates: &[(&str, f64, &[f32])]| {
                    aggregate(&config, updates, Some(&server)).unwrap().iter().map(|v| v.to_bits()).collect::<Vec<_>>()
                };
                prop_assert_eq!(bits(&updates), bits(&shuffled), "{:?}", config.rule);
                let round = aggregate_round(&config, &shuffled, &RoundInputs { server_update: Some(&server), ..RoundInputs::default() }).unwrap();
                prop_assert_eq!(round, aggregate_round(&config, &updates, &RoundInputs { server_update: Some(&server), ..RoundInputs::default() }).unwrap());
            }
        }
    }
}
