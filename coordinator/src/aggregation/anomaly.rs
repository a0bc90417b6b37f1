//! Anomaly scores for a round's updates, free-rider detection, and the suspension of PDCs flagged round after
//! round.
//!
//! Honest hospitals do not send alike updates. One with more rows takes more SGD steps and sends a longer delta,
//! and under label skew (a hospital that sees mostly one class) its direction differs from the consensus too. The
//! scores are built so that such updates pass while free riders and poisoners stand out:
//!
//! 1. **A common scale.** Every update is divided by `(nᵢ / ñ)^e` before it is compared, `nᵢ` being its size
//!    (its example count, or, when the coordinator passes the study's batch size, its local SGD steps per epoch
//!    `⌈examples / batch⌉`: a hospital with fewer rows than a batch takes one whole step, not a fraction of one),
//!    `ñ` the round's median size and `e` [`AnomalyConfig::examples_exponent`] (default ½: the norm of a sum of
//!    `s` steps grows between `√s`, for noisy steps, and `s`, for aligned ones). The example count is what the PDC
//!    claims; see the caveat below.
//! 2. **Free riders and duplicates first**, on the non-zero updates: an **echo** (the global model sent back: a
//!    delta of exactly zero), a **negligible** norm (far below the median), a **noisy echo** (a small norm *and*
//!    no alignment with the coordinate median: the global model plus a little isotropic noise; in high dimension
//!    such noise is nearly orthogonal to any fixed direction), and a **near duplicate** (another update of the
//!    round lies within a tiny fraction of the median norm: colluders sending one crafted vector, as ALIE and IPM
//!    do, or a PDC copying another's update; honest hospitals train on different rows and never coincide).
//! 3. **The robust centre and spreads from the rest.** Updates flagged in step 2 are left out of the statistics,
//!    so that 40 % echoes cannot drag the median norm and the centre towards zero and make every honest update look
//!    long. Over the rest: the centre is the coordinate-wise median (of the scaled updates), the median norm and
//!    its MAD (median absolute deviation), and the median distance to the centre.
//! 4. **Poisoning checks** on every update against those: `norm_z = (‖x‖ − median norm) / (1.4826 · MAD)`, a robust
//!    z-score (above [`AnomalyConfig::max_norm_z`]: scaling, model replacement); `cosine` to the centre (below
//!    [`AnomalyConfig::min_cosine`], slightly negative by default so that skewed honest updates pass: sign
//!    flipping, IPM); and `distance_ratio`, the distance to the centre over the median distance (above
//!    [`AnomalyConfig::max_distance_ratio`]).
//!
//! The relative measures need a spread to compare with. When honest updates are nearly identical (an IID
//! simulation) the MAD and the median distance are tiny and a 1% difference would look enormous, so both are
//! floored at [`AnomalyConfig::relative_spread_floor`] times the median norm.
//!
//! What this cannot see: an attacker who claims more examples than it has gains FedAvg weight (that is so with or
//! without these checks, since counts are not verified), and with `e = ½` a `k`-fold inflated count also hides a
//! `√k`-fold longer update from the norm check. Colluders who add a little jitter to a shared vector are no longer
//! near duplicates; ALIE then stays within the honest spread by construction.
//!
//! [`SuspensionTracker`] counts, per PDC, the consecutive rounds in which it was flagged, and suspends it after
//! `k` of them. Everything here is pure: no I/O, no clock, `f64` arithmetic, and results depend only on the rows'
//! order (which the caller fixes by sorting PDC ids).

use std::collections::BTreeMap;
use std::fmt;

use ndarray::ArrayView2;
use serde::{Deserialize, Serialize};

use super::robust::coordinate_median;
use crate::{Error, Result};

/// Thresholds that turn anomaly scores into flags, and the suspension rule: the `[aggregation.anomaly]` table of
/// a study manifest. Every field has a default; an infinite limit (`inf` in TOML) disables its check.
///
/// The defaults were chosen on the robustness benchmark (`robustness-report.md`): Dirichlet-skewed breast-cancer
/// hospitals and IID synthetic ones, where they keep honest false positives at a few per cent while flagging free
/// riders in every round.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AnomalyConfig {
    /// Whether updates are scored at all.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Updates are compared after dividing each by `(examples / median examples)^examples_exponent` (default 0.5);
    /// 0 compares them as sent. In `[0, 1]`.
    #[serde(default = "default_examples_exponent")]
    pub examples_exponent: f64,
    /// Flag an update whose norm z-score exceeds this (default 7: Iglewicz and Hoaglin's 3.5 for the modified
    /// z-score flags too many honest hospitals, whose norms are heavy-tailed under label skew; on the benchmark's
    /// breast-cancer consortium one honest hospital scores 5 to 10 round after round while boosted updates score
    /// above 8). Too *small* a norm is the free-rider checks' business.
    #[serde(default = "default_max_norm_z")]
    pub max_norm_z: f64,
    /// Flag a non-zero update whose cosine to the centre is below this (default −0.2: pointing away from the
    /// consensus, as a sign-flipped update does, with a margin for honest updates that label skew turns away from
    /// it: a hospital that sees mostly one class scores −0.1 to −0.25 round after round on the benchmark). −1
    /// disables the check.
    #[serde(default = "default_min_cosine")]
    pub min_cosine: f64,
    /// Flag an update farther from the centre than this many median distances (default 4).
    #[serde(default = "default_max_distance_ratio")]
    pub max_distance_ratio: f64,
    /// Flag a non-zero update whose norm is below this fraction of the median norm as a free rider (default
    /// 0.01). 0 disables the check.
    #[serde(default = "default_free_rider_norm_ratio")]
    pub free_rider_norm_ratio: f64,
    /// A noisy echo has a norm below this fraction of the median norm (default 0.25) ...
    #[serde(default = "default_noisy_echo_norm_ratio")]
    pub noisy_echo_norm_ratio: f64,
    /// ... and a cosine to the centre below this (default 0.3). Random noise in `d` dimensions has a cosine of
    /// about ±1/√d to any fixed direction: 0.3 is 5 standard deviations at `d = 256`, but only 1.7 at `d = 31`
    /// (a logistic regression on 30 features), where this check is weak.
    #[serde(default = "default_noisy_echo_max_cosine")]
    pub noisy_echo_max_cosine: f64,
    /// Flag two updates as near duplicates when their distance is below this fraction of the median norm
    /// (default 0.01). 0 disables the check.
    #[serde(default = "default_duplicate_distance_ratio")]
    pub duplicate_distance_ratio: f64,
    /// The MAD and the median distance are floored at this fraction of the median norm (default 0.05).
    #[serde(default = "default_relative_spread_floor")]
    pub relative_spread_floor: f64,
    /// Rounds with fewer updates than this (default 3) are too small for statistics: only echoes are flagged.
    #[serde(default = "default_min_updates")]
    pub min_updates: usize,
    /// A PDC flagged in this many consecutive rounds it took part in is suspended from selection; 0 never
    /// suspends. When absent: [`DEFAULT_SUSPEND_AFTER_ROUNDS`], or never with a server optimiser, under which the
    /// checks flag honest hospitals far more often (see [`AggregationConfig::suspend_after_rounds`]).
    ///
    /// [`AggregationConfig::suspend_after_rounds`]: super::AggregationConfig::suspend_after_rounds
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub suspend_after_rounds: Option<u32>,
    /// Whether flagged updates are left out of the aggregate (default false: they are recorded, and the robust
    /// rule is trusted to resist them).
    #[serde(default)]
    pub exclude_flagged: bool,
}

impl Default for AnomalyConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            examples_exponent: default_examples_exponent(),
            max_norm_z: default_max_norm_z(),
            min_cosine: default_min_cosine(),
            max_distance_ratio: default_max_distance_ratio(),
            free_rider_norm_ratio: default_free_rider_norm_ratio(),
            noisy_echo_norm_ratio: default_noisy_echo_norm_ratio(),
            noisy_echo_max_cosine: default_noisy_echo_max_cosine(),
            duplicate_distance_ratio: default_duplicate_distance_ratio(),
            relative_spread_floor: default_relative_spread_floor(),
            min_updates: default_min_updates(),
            suspend_after_rounds: None,
            exclude_flagged: false,
        }
    }
}

fn default_true() -> bool {
    true
}

fn default_examples_exponent() -> f64 {
    0.5
}

fn default_max_norm_z() -> f64 {
    7.0
}

fn default_min_cosine() -> f64 {
    -0.2
}

fn default_max_distance_ratio() -> f64 {
    4.0
}

fn default_free_rider_norm_ratio() -> f64 {
    0.01
}

fn default_noisy_echo_norm_ratio() -> f64 {
    0.25
}

fn default_noisy_echo_max_cosine() -> f64 {
    0.3
}

fn default_duplicate_distance_ratio() -> f64 {
    0.01
}

fn default_relative_spread_floor() -> f64 {
    0.05
}

fn default_min_updates() -> usize {
    3
}

/// How many consecutive flagged rounds suspend a PDC when the manifest does not say and the study has no server
/// optimiser.
pub const DEFAULT_SUSPEND_AFTER_ROUNDS: u32 = 3;

impl AnomalyConfig {
    /// Checks every threshold; the error names the `aggregation.anomaly` key.
    pub fn validate(&self) -> Result<()> {
        let invalid =
            |key: &str, detail: String| Err(Error::InvalidManifest(format!("aggregation.anomaly.{key} {detail}")));
        if self.max_norm_z.is_nan() || self.max_norm_z <= 0.0 {
            return invalid("max_norm_z", format!("must be positive (inf disables it), got {}", self.max_norm_z));
        }
        for (key, value) in [("min_cosine", self.min_cosine), ("noisy_echo_max_cosine", self.noisy_echo_max_cosine)] {
            if !(-1.0..=1.0).contains(&value) {
                return invalid(key, format!("must lie in [-1, 1], got {value}"));
            }
        }
        if self.max_distance_ratio.is_nan() || self.max_distance_ratio < 1.0 {
            return invalid(
                "max_distance_ratio",
                format!("must be at least 1 (inf disables it), got {}", self.max_distance_ratio),
            );
        }
        for (key, value) in [
            ("examples_exponent", self.examples_exponent),
            ("free_rider_norm_ratio", self.free_rider_norm_ratio),
            ("noisy_echo_norm_ratio", self.noisy_echo_norm_ratio),
            ("duplicate_distance_ratio", self.duplicate_distance_ratio),
            ("relative_spread_floor", self.relative_spread_floor),
        ] {
            if !(0.0..=1.0).contains(&value) {
                return invalid(key, format!("must lie in [0, 1], got {value}"));
            }
        }
        if self.min_updates == 0 {
            return invalid("min_updates", "must be at least 1".into());
        }
        Ok(())
    }
}

/// One update's scores against its round, and whether (and why) it is flagged. Norms and distances are of the
/// update at the round's common scale (see the module documentation), except `norm`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AnomalyScore {
    /// The update's Euclidean norm, as sent.
    pub norm: f64,
    /// Its scaled norm over the median scaled norm of the updates the statistics came from (0 in a round too
    /// small for statistics). A free-rider reason carries the ratio to the median of every non-zero update.
    pub norm_ratio: f64,
    /// The robust z-score of its scaled norm (0 when the round has no spread to compare with).
    pub norm_z: f64,
    /// The Euclidean distance of the scaled update to the robust centre.
    pub distance: f64,
    /// That distance over the round's (floored) median distance (0 when there is no reference).
    pub distance_ratio: f64,
    /// Its cosine similarity to the robust centre; 0 when either is the zero vector.
    pub cosine: f64,
    /// The distance (as sent) to the nearest other non-zero update of the round over their median norm (0 in a
    /// round too small for statistics).
    pub nearest_ratio: f64,
    /// Whether any check failed: `!reasons.is_empty()`.
    pub flagged: bool,
    /// Every check that failed, in a fixed order.
    pub reasons: Vec<AnomalyReason>,
}

impl AnomalyScore {
    /// Whether a reason marks the update as a free rider's (an echo, a negligible norm, a noisy echo).
    pub fn is_free_rider(&self) -> bool {
        self.reasons.iter().any(AnomalyReason::is_free_riding)
    }

    /// The reasons as one line, e.g. for the ledger's record of a flagged update.
    pub fn describe(&self) -> String {
        let reasons: Vec<String> = self.reasons.iter().map(ToString::to_string).collect();
        reasons.join("; ")
    }
}

/// Why an update was flagged, with the measured value and the limit it broke.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "reason", rename_all = "snake_case")]
pub enum AnomalyReason {
    /// The delta is exactly zero: the PDC sent back the global model it received.
    Echo,
    /// A free rider: the norm is a negligible fraction of the round's median norm.
    NegligibleNorm {
        /// Norm over the median norm.
        norm_ratio: f64,
        /// The configured limit.
        limit: f64,
    },
    /// A free rider: a small norm that does not point along the consensus (the global model plus noise).
    NoisyEcho {
        /// Norm over the median norm.
        norm_ratio: f64,
        /// Cosine to the robust centre.
        cosine: f64,
    },
    /// Another update of the round is (nearly) the same vector: colluders sharing one crafted update, or a copy.
    NearDuplicate {
        /// Distance to the nearest other update over the median norm.
        nearest_ratio: f64,
        /// The configured limit.
        limit: f64,
    },
    /// The norm is far above the round's (scaling, model replacement).
    NormTooLarge {
        /// The robust z-score.
        norm_z: f64,
        /// The configured limit.
        limit: f64,
    },
    /// The update points away from the consensus (sign flipping, IPM).
    LowCosine {
        /// Cosine to the robust centre.
        cosine: f64,
        /// The configured limit.
        limit: f64,
    },
    /// The update is far from the robust centre.
    FarFromCentre {
        /// Distance over the median distance.
        distance_ratio: f64,
        /// The configured limit.
        limit: f64,
    },
}

impl AnomalyReason {
    /// Whether this reason is one of the free-rider checks.
    pub fn is_free_riding(&self) -> bool {
        matches!(self, Self::Echo | Self::NegligibleNorm { .. } | Self::NoisyEcho { .. })
    }
}

impl fmt::Display for AnomalyReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Echo => write!(f, "echo: the update is exactly zero"),
            Self::NegligibleNorm { norm_ratio, limit } => {
                write!(f, "free rider: norm is {norm_ratio:.4} of the median norm, below {limit}")
            }
            Self::NoisyEcho { norm_ratio, cosine } => write!(
                f,
                "noisy echo: norm is {norm_ratio:.4} of the median norm and cosine to the centre is {cosine:.4}"
            ),
            Self::NearDuplicate { nearest_ratio, limit } => {
                write!(f, "near duplicate: another update lies {nearest_ratio:.4} median norms away, below {limit}")
            }
            Self::NormTooLarge { norm_z, limit } => write!(f, "norm z-score {norm_z:.2} above {limit}"),
            Self::LowCosine { cosine, limit } => write!(f, "cosine to the centre {cosine:.4} below {limit}"),
            Self::FarFromCentre { distance_ratio, limit } => {
                write!(f, "distance to the centre is {distance_ratio:.2} median distances, above {limit}")
            }
        }
    }
}

/// The scale that turns a MAD into a standard deviation for normally distributed values: 1 / Φ⁻¹(3/4).
const MAD_TO_STD: f64 = 1.482_602_218_505_602;

/// Scores every row of `updates`, whose example counts are `weights`, against the round (see the module
/// documentation), in row order.
///
/// # Shapes
/// `updates`: `(n_updates, n_parameters)`; `weights`: `n_updates`; the result has `n_updates` scores.
///
/// ```
/// use ndarray::array;
/// use pdc_coordinator::aggregation::anomaly::{AnomalyConfig, AnomalyReason, score_updates};
/// let updates = array![[1.0f32, 1.0], [1.1, 0.9], [0.9, 1.0], [-1.0, -1.0], [0.0, 0.0]];
/// let scores = score_updates(&AnomalyConfig::default(), updates.view(), &[10.0; 5]).unwrap();
/// assert!(!scores[0].flagged && !scores[1].flagged && !scores[2].flagged);
/// assert!(matches!(scores[3].reasons[0], AnomalyReason::LowCosine { .. }));
/// assert_eq!(scores[4].reasons[0], AnomalyReason::Echo);
/// ```
pub fn score_updates(config: &AnomalyConfig, updates: ArrayView2<f32>, weights: &[f64]) -> Result<Vec<AnomalyScore>> {
    config.validate()?;
    let n = updates.nrows();
    if n == 0 {
        return Err(Error::FailedPrecondition("anomaly scores over no updates".into()));
    }
    if weights.len() != n {
        return Err(Error::InvalidArgument {
            field: "weights",
            detail: format!("{} weights for {n} updates", weights.len()),
        });
    }
    if let Some(weight) = weights.iter().find(|weight| !(weight.is_finite() && **weight > 0.0)) {
        return Err(Error::InvalidArgument {
            field: "weights",
            detail: format!("every weight must be finite and positive, got {weight}"),
        });
    }
    let raw_norms: Vec<f64> = updates.rows().into_iter().map(|row| norm(row.iter().copied())).collect();
    let non_zero: Vec<usize> = (0..n).filter(|&i| raw_norms[i] > 0.0).collect();
    // With fewer updates than `min_updates`, or with at most half the round non-zero (the median norm is 0),
    // the relative checks have nothing to compare with: only echoes are flagged.
    let statistics = n >= config.min_updates && 2 * non_zero.len() > n;
    let mut reasons: Vec<Vec<AnomalyReason>> =
        raw_norms.iter().map(|&norm| if norm == 0.0 { vec![AnomalyReason::Echo] } else { Vec::new() }).collect();
    if !statistics {
        let scores = (0..n).map(|i| AnomalyScore {
            norm: raw_norms[i],
            norm_ratio: 0.0,
            norm_z: 0.0,
            distance: 0.0,
            distance_ratio: 0.0,
            cosine: 0.0,
            nearest_ratio: 0.0,
            flagged: !reasons[i].is_empty(),
            reasons: std::mem::take(&mut reasons[i]),
        });
        return Ok(scores.collect());
    }

    // 1. The common scale.
    let median_weight = median(&non_zero.iter().map(|&i| weights[i]).collect::<Vec<_>>());
    let scales: Vec<f64> =
        weights.iter().map(|&weight| (weight / median_weight).powf(config.examples_exponent)).collect();
    let scaled =
        ndarray::Array2::from_shape_fn(updates.dim(), |(i, j)| (f64::from(updates[(i, j)]) / scales[i]) as f32);
    let norms: Vec<f64> = (0..n).map(|i| raw_norms[i] / scales[i]).collect();

    // 2. Free riders and near duplicates, against the non-zero updates.
    let stage_one = Round::measure(scaled.view(), &norms, &non_zero, config.relative_spread_floor)?;
    let raw_median_norm = median(&non_zero.iter().map(|&i| raw_norms[i]).collect::<Vec<_>>());
    let nearest = nearest_distances(updates, &non_zero);
    let nearest_ratios: Vec<f64> = nearest.iter().map(|&distance| distance / raw_median_norm).collect();
    for &i in &non_zero {
        let norm_ratio = norms[i] / stage_one.median_norm;
        let cosine = stage_one.cosines[i];
        if norm_ratio < config.free_rider_norm_ratio {
            reasons[i].push(AnomalyReason::NegligibleNorm { norm_ratio, limit: config.free_rider_norm_ratio });
        } else if norm_ratio < config.noisy_echo_norm_ratio && cosine < config.noisy_echo_max_cosine {
            reasons[i].push(AnomalyReason::NoisyEcho { norm_ratio, cosine });
        }
        if nearest_ratios[i] < config.duplicate_distance_ratio {
            reasons[i].push(AnomalyReason::NearDuplicate {
                nearest_ratio: nearest_ratios[i],
                limit: config.duplicate_distance_ratio,
            });
        }
    }

    // 3. The statistics from the updates step 2 did not flag (all non-zero ones if too few remain).
    let mut reference: Vec<usize> = non_zero.iter().copied().filter(|&i| reasons[i].is_empty()).collect();
    if reference.len() < config.min_updates {
        reference = non_zero.clone();
    }
    let round = Round::measure(scaled.view(), &norms, &reference, config.relative_spread_floor)?;

    // 4. The poisoning checks.
    let scores = (0..n)
        .map(|i| {
            let norm = norms[i];
            let cosine = round.cosines[i];
            let norm_ratio = norm / round.median_norm;
            let norm_z = if round.spread > 0.0 { (norm - round.median_norm) / round.spread } else { 0.0 };
            let distance_ratio =
                if round.reference_distance > 0.0 { round.distances[i] / round.reference_distance } else { 0.0 };
            let mut reasons = std::mem::take(&mut reasons[i]);
            if norm > 0.0 {
                if norm_z > config.max_norm_z {
                    reasons.push(AnomalyReason::NormTooLarge { norm_z, limit: config.max_norm_z });
                }
                if cosine < config.min_cosine {
                    reasons.push(AnomalyReason::LowCosine { cosine, limit: config.min_cosine });
                }
                if distance_ratio > config.max_distance_ratio {
                    reasons.push(AnomalyReason::FarFromCentre { distance_ratio, limit: config.max_distance_ratio });
                }
            }
            AnomalyScore {
                norm: raw_norms[i],
                norm_ratio,
                norm_z,
                distance: round.distances[i],
                distance_ratio,
                cosine,
                nearest_ratio: nearest_ratios[i],
                flagged: !reasons.is_empty(),
                reasons,
            }
        })
        .collect();
    Ok(scores)
}

/// A round's robust statistics over a reference set of (scaled) updates, and every update measured against them.
struct Round {
    /// The median norm of the reference updates.
    median_norm: f64,
    /// `1.4826 · MAD` of their norms, floored.
    spread: f64,
    /// Their median distance to the centre, floored.
    reference_distance: f64,
    /// Every update's distance to the centre.
    distances: Vec<f64>,
    /// Every update's cosine to the centre.
    cosines: Vec<f64>,
}

impl Round {
    /// The statistics of the rows `reference` (not empty, every one of a positive norm) of `scaled`, whose norms are
    /// `norms`: the centre is their coordinate median.
    fn measure(scaled: ArrayView2<f32>, norms: &[f64], reference: &[usize], floor: f64) -> Result<Round> {
        let centre = coordinate_median(scaled.select(ndarray::Axis(0), reference).view())?;
        let centre_norm = norm(centre.iter().copied());
        let mut distances = Vec::with_capacity(scaled.nrows());
        let mut cosines = Vec::with_capacity(scaled.nrows());
        for (row, &row_norm) in scaled.rows().into_iter().zip(norms) {
            let (mut dot, mut distance) = (0.0f64, 0.0f64);
            for (&x, &c) in row.iter().zip(&centre) {
                let (x, c) = (f64::from(x), f64::from(c));
                dot += x * c;
                distance += (x - c) * (x - c);
            }
            distances.push(distance.sqrt());
            cosines.push(if row_norm > 0.0 && centre_norm > 0.0 {
                (dot / (row_norm * centre_norm)).clamp(-1.0, 1.0)
            } else {
                0.0
            });
        }
        let reference_norms: Vec<f64> = reference.iter().map(|&i| norms[i]).collect();
        let median_norm = median(&reference_norms);
        let deviations: Vec<f64> = reference_norms.iter().map(|norm| (norm - median_norm).abs()).collect();
        let floor = floor * median_norm;
        let spread = (MAD_TO_STD * median(&deviations)).max(floor);
        let reference_distance = median(&reference.iter().map(|&i| distances[i]).collect::<Vec<_>>()).max(floor);
        Ok(Round { median_norm, spread, reference_distance, distances, cosines })
    }
}

/// Each row's Euclidean distance to the nearest other row among `others` (infinite when there is none), in `f64`.
///
/// Each pair's distance is computed once: `d(i, j)` and `d(j, i)` are the same bits, since `(a − b)²` and `(b − a)²`
/// are, and the sum runs over the coordinates in the same order.
fn nearest_distances(updates: ArrayView2<f32>, others: &[usize]) -> Vec<f64> {
    let distance = |i: usize, j: usize| -> f64 {
        updates
            .row(i)
            .iter()
            .zip(updates.row(j))
            .map(|(&a, &b)| {
                let difference = f64::from(a) - f64::from(b);
                difference * difference
            })
            .sum::<f64>()
            .sqrt()
    };
    let mut known: BTreeMap<(usize, usize), f64> = BTreeMap::new();
    let mut nearest = vec![f64::INFINITY; updates.nrows()];
    for (i, nearest) in nearest.iter_mut().enumerate() {
        for &j in others.iter().filter(|&&j| j != i) {
            let pair = (i.min(j), i.max(j));
            let d = *known.entry(pair).or_insert_with(|| distance(pair.0, pair.1));
            *nearest = nearest.min(d);
        }
    }
    nearest
}

/// Suspends PDCs flagged in `k` consecutive rounds they took part in.
///
/// A round a PDC was not part of neither extends nor breaks its streak; an unflagged update resets it. A
/// suspension lasts until [`SuspensionTracker::reinstate`] (a governance decision, not a timer). The state is
/// plain maps keyed by PDC id, so it serialises with serde and iterates in a fixed order.
///
/// ```
/// use pdc_coordinator::aggregation::anomaly::SuspensionTracker;
/// let mut tracker = SuspensionTracker::new(2);
/// assert!(tracker.record_round(1, [("a", true), ("b", false)]).unwrap().is_empty());
/// assert_eq!(tracker.record_round(2, [("a", true), ("b", true)]).unwrap(), ["a"]);
/// assert!(tracker.is_suspended("a") && !tracker.is_suspended("b"));
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SuspensionTracker {
    suspend_after: u32,
    last_round: Option<u32>,
    streaks: BTreeMap<String, u32>,
    suspended: BTreeMap<String, u32>,
}

impl SuspensionTracker {
    /// A tracker that suspends after `suspend_after` consecutive flagged rounds; 0 never suspends.
    pub fn new(suspend_after: u32) -> Self {
        Self { suspend_after, ..Self::default() }
    }

    /// Records one round's outcome per participating PDC (`(pdc_id, flagged)`) and returns the PDCs suspended by
    /// it, in id order.
    ///
    /// Rounds must be recorded in increasing order and name each PDC at most once; otherwise nothing changes and
    /// an error says why. Outcomes of PDCs already suspended are ignored.
    pub fn record_round<'a>(
        &mut self,
        round: u32,
        outcomes: impl IntoIterator<Item = (&'a str, bool)>,
    ) -> Result<Vec<String>> {
        if let Some(last) = self.last_round
            && round <= last
        {
            return Err(Error::FailedPrecondition(format!(
                "suspension tracker: round {round} recorded after round {last}"
            )));
        }
        let mut outcomes: Vec<(&str, bool)> = outcomes.into_iter().collect();
        outcomes.sort_by(|a, b| a.0.cmp(b.0));
        if let Some(pair) = outcomes.windows(2).find(|pair| pair[0].0 == pair[1].0) {
            return Err(Error::FailedPrecondition(format!(
                "suspension tracker: PDC {} is named twice in round {round}",
                pair[0].0
            )));
        }
        self.last_round = Some(round);
        let mut newly_suspended = Vec::new();
        for (pdc_id, flagged) in outcomes {
            if self.suspended.contains_key(pdc_id) {
                continue;
            }
            if !flagged {
                self.streaks.remove(pdc_id);
                continue;
            }
            let streak = self.streaks.entry(pdc_id.to_owned()).or_insert(0);
            *streak += 1;
            if self.suspend_after > 0 && *streak >= self.suspend_after {
                self.streaks.remove(pdc_id);
                self.suspended.insert(pdc_id.to_owned(), round);
                newly_suspended.push(pdc_id.to_owned());
            }
        }
        Ok(newly_suspended)
    }

    /// Whether `pdc_id` is suspended from selection.
    pub fn is_suspended(&self, pdc_id: &str) -> bool {
        self.suspended.contains_key(pdc_id)
    }

    /// The suspended PDCs with the round that suspended each, in id order.
    pub fn suspended(&self) -> impl Iterator<Item = (&str, u32)> {
        self.suspended.iter().map(|(id, &round)| (id.as_str(), round))
    }

    /// How many consecutive rounds `pdc_id` has been flagged in so far (0 once suspended).
    pub fn streak(&self, pdc_id: &str) -> u32 {
        self.streaks.get(pdc_id).copied().unwrap_or(0)
    }

    /// Lifts a suspension; returns whether `pdc_id` was suspended. Its streak starts again from zero.
    pub fn reinstate(&mut self, pdc_id: &str) -> bool {
        self.suspended.remove(pdc_id).is_some()
    }
}

fn norm(values: impl Iterator<Item = f32>) -> f64 {
    values.map(|value| f64::from(value) * f64::from(value)).sum::<f64>().sqrt()
}

/// The median of `values` (the mean of the two middle ones for an even count); `values` is not empty.
fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_unstable_by(f64::total_cmp);
    let middle = sorted.len() / 2;
    if sorted.len() % 2 == 1 { sorted[middle] } else { (sorted[middle - 1] + sorted[middle]) / 2.0 }
}

#[cfg(test)]
mod tests {
    use ndarray::Array2;

    use super::*;

    const D: usize = 256;

    /// A deterministic stream of values in [−1, 1) (xorshift64*), so the tests need no RNG crate.
    fn pseudo_random(seed: u64, n: usize) -> Vec<f64> {
        let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..n)
            .map(|_| {
                state ^= state >> 12;
                state ^= state << 25;
                state ^= state >> 27;
                let bits = state.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11;
                bits as f64 / (1u64 << 52) as f64 - 1.0
            })
            .collect()
    }

    fn unit(vector: &[f64]) -> Vec<f64> {
        let length = vector.iter().map(|v| v * v).sum::<f64>().sqrt();
        vector.iter().map(|v| v / length).collect()
    }

    /// The honest direction: a unit vector.
    fn direction() -> Vec<f64> {
        unit(&pseudo_random(1, D))
    }

    /// Honest update `i`: the direction scaled by 0.9 to 1.1, plus noise of norm 0.2.
    fn honest(i: usize) -> Vec<f64> {
        let scale = 0.9 + 0.2 * (i as f64 / 7.0);
        let noise = unit(&pseudo_random(100 + i as u64, D));
        direction().iter().zip(&noise).map(|(b, e)| scale * b + 0.2 * e).collect()
    }

    fn matrix(rows: &[Vec<f64>]) -> Array2<f32> {
        Array2::from_shape_fn((rows.len(), D), |(i, j)| rows[i][j] as f32)
    }

    /// Eight honest updates, then sign-flipped, scaled ×4, zero, noisy echo and a negligible one.
    fn round() -> Array2<f32> {
        let mut rows: Vec<Vec<f64>> = (0..8).map(honest).collect();
        rows.push(honest(0).iter().map(|v| -v).collect());
        rows.push(honest(1).iter().map(|v| 4.0 * v).collect());
        rows.push(vec![0.0; D]);
        rows.push(unit(&pseudo_random(999, D)).iter().map(|v| 0.1 * v).collect());
        rows.push(honest(2).iter().map(|v| 0.001 * v).collect());
        matrix(&rows)
    }

    fn kinds(score: &AnomalyScore) -> Vec<&'static str> {
        score
            .reasons
            .iter()
            .map(|reason| match reason {
                AnomalyReason::Echo => "echo",
                AnomalyReason::NegligibleNorm { .. } => "negligible",
                AnomalyReason::NoisyEcho { .. } => "noisy_echo",
                AnomalyReason::NearDuplicate { .. } => "duplicate",
                AnomalyReason::NormTooLarge { .. } => "norm",
                AnomalyReason::LowCosine { .. } => "cosine",
                AnomalyReason::FarFromCentre { .. } => "distance",
            })
            .collect()
    }

    /// Equal weights for `n` updates.
    fn equal(n: usize) -> Vec<f64> {
        vec![100.0; n]
    }

    fn score(config: &AnomalyConfig, rows: &[Vec<f64>], weights: &[f64]) -> Vec<AnomalyScore> {
        score_updates(config, matrix(rows).view(), weights).unwrap()
    }

    #[test]
    fn honest_cluster_passes_and_each_attack_is_flagged_for_its_reason() {
        let updates = round();
        let scores = score_updates(&AnomalyConfig::default(), updates.view(), &equal(13)).unwrap();
        for (i, score) in scores[..8].iter().enumerate() {
            assert!(!score.flagged, "honest {i}: {score:?}");
            assert!(score.cosine > 0.9, "honest {i}: {score:?}");
        }
        let sign_flipped = &scores[8];
        assert!(sign_flipped.cosine < -0.9, "{sign_flipped:?}");
        assert!(kinds(sign_flipped).contains(&"cosine") && kinds(sign_flipped).contains(&"distance"));
        assert!(!sign_flipped.is_free_rider());
        let scaled = &scores[9];
        assert!(scaled.norm_z > 10.0, "{scaled:?}");
        assert!(kinds(scaled).contains(&"norm") && kinds(scaled).contains(&"distance"));
        assert!(!kinds(scaled).contains(&"cosine"));
        let zero = &scores[10];
        assert_eq!(zero.reasons, [AnomalyReason::Echo]);
        assert_eq!(zero.cosine, 0.0);
        assert!(zero.is_free_rider());
        let noisy_echo = &scores[11];
        // Its distance to the centre (about the centre's norm) is large too.
        assert_eq!(kinds(noisy_echo)[0], "noisy_echo", "{noisy_echo:?}");
        assert!(noisy_echo.cosine.abs() < 0.3 && (noisy_echo.norm_ratio - 0.1).abs() < 0.02, "{noisy_echo:?}");
        assert!(noisy_echo.is_free_rider());
        let negligible = &scores[12];
        assert_eq!(kinds(negligible)[0], "negligible");
        assert!(negligible.is_free_rider());
        for score in &scores {
            assert_eq!(score.flagged, !score.reasons.is_empty());
            assert!(
                [score.norm, score.norm_z, score.distance, score.distance_ratio, score.cosine, score.nearest_ratio]
                    .iter()
                    .all(|v| v.is_finite())
            );
        }
    }

    #[test]
    fn hand_computed_scores() {
        // a, b, c, d and an echo e; c has 4 times the examples of the others, so with exponent ½ it is compared
        // at half its length: [1.1, 0]. Scaled norms 1, 1.2, 1.1, 1.5 (e: 0), median 1.15; deviations 0.15, 0.05,
        // 0.05, 0.35: MAD 0.1, spread 1.4826·0.1. Centre = coordinate median of the four non-zero scaled updates:
        // [(1 + 1.1)/2, (0 + 0.9)/2] = [1.05, 0.45].
        let rows: [[f32; 2]; 5] = [[1.0, 0.0], [0.0, 1.2], [2.2, 0.0], [1.2, 0.9], [0.0, 0.0]];
        let updates = Array2::from_shape_fn((5, 2), |(i, j)| rows[i][j]);
        let scores = score_updates(&AnomalyConfig::default(), updates.view(), &[1.0, 1.0, 4.0, 1.0, 1.0]).unwrap();
        let close = |got: f64, want: f64| assert!((got - want).abs() < 1e-6, "{got} vs {want}");
        let spread = MAD_TO_STD * 0.1;
        close(scores[0].norm_z, -0.15 / spread);
        close(scores[1].norm_z, 0.05 / spread);
        close(scores[2].norm_z, -0.05 / spread);
        close(scores[3].norm_z, 0.35 / spread);
        close(scores[2].norm_ratio, 1.1 / 1.15);
        // `norm` is the update as sent.
        close(scores[2].norm, 2.2);
        let centre_norm = (1.05f64 * 1.05 + 0.45 * 0.45).sqrt();
        close(scores[0].cosine, 1.05 / centre_norm);
        close(scores[1].cosine, 0.45 / centre_norm);
        close(scores[3].cosine, (1.2 * 1.05 + 0.9 * 0.45) / (1.5 * centre_norm));
        assert_eq!(scores[4].cosine, 0.0);
        // Distances to the centre: a and c 0.45277, b 1.29035, d 0.47434; median of the four (0.45277 +
        // 0.47434)/2.
        let (a, b, d) = (0.205f64.sqrt(), 1.665f64.sqrt(), 0.225f64.sqrt());
        close(scores[1].distance, b);
        close(scores[1].distance_ratio, b / ((a + d) / 2.0));
        close(scores[4].distance, centre_norm);
        // Nearest other non-zero update, as sent, over the median of the non-zero norms (1, 1.2, 1.5, 2.2): 1.35.
        close(scores[0].nearest_ratio, 0.85f64.sqrt() / 1.35);
        close(scores[1].nearest_ratio, 1.53f64.sqrt() / 1.35);
        close(scores[4].nearest_ratio, 1.0 / 1.35);
        assert!(scores[..4].iter().all(|score| !score.flagged), "{scores:?}");
        assert_eq!(scores[4].reasons, [AnomalyReason::Echo]);
        assert_eq!(scores[4].describe(), "echo: the update is exactly zero");
        // Compared as sent (exponent 0), c is the longest: its z-score is (2.2 − 1.35)/(1.4826·0.25).
        let unscaled = AnomalyConfig { examples_exponent: 0.0, ..AnomalyConfig::default() };
        let scores = score_updates(&unscaled, updates.view(), &[1.0, 1.0, 4.0, 1.0, 1.0]).unwrap();
        close(scores[2].norm_z, 0.85 / (MAD_TO_STD * 0.25));
    }

    #[test]
    fn honest_updates_scaled_by_their_examples_pass_and_a_long_one_does_not() {
        // Six hospitals of 100 rows and two of 900: an honest update's length grows with √rows. Compared as sent,
        // the two large hospitals look like scaling attacks; at the common scale they pass, while an update 4 times
        // as long as its size explains is still flagged, and a free rider claiming many rows is still a free rider.
        let sizes = [100.0, 100.0, 100.0, 100.0, 100.0, 100.0, 900.0, 900.0];
        let mut rows: Vec<Vec<f64>> = sizes
            .iter()
            .enumerate()
            .map(|(i, &n)| honest(i).iter().map(|v| v * (n / 100.0f64).sqrt()).collect())
            .collect();
        let mut weights = sizes.to_vec();
        rows.push(honest(3).iter().map(|v| 4.0 * v).collect());
        weights.push(100.0);
        rows.push(unit(&pseudo_random(7, D)).iter().map(|v| 0.05 * v).collect());
        weights.push(400.0);
        let scores = score(&AnomalyConfig::default(), &rows, &weights);
        assert!(scores[..8].iter().all(|score| !score.flagged), "{scores:?}");
        assert!(kinds(&scores[8]).contains(&"norm"), "{:?}", scores[8]);
        assert!(scores[9].is_free_rider(), "{:?}", scores[9]);
        let unscaled = AnomalyConfig { examples_exponent: 0.0, ..AnomalyConfig::default() };
        let scores = score(&unscaled, &rows, &weights);
        assert!(scores[6].flagged && scores[7].flagged, "{:?}", &scores[6..8]);
    }

    #[test]
    fn free_riders_do_not_drag_the_statistics() {
        // Six honest updates and four echoes (or four noisy echoes): the median norm, its spread and the centre
        // come from the six, so none of them looks long or far.
        let honest_rows: Vec<Vec<f64>> = (0..6).map(honest).collect();
        let mut echoes = honest_rows.clone();
        echoes.extend((0..4).map(|_| vec![0.0; D]));
        let mut noisy = honest_rows.clone();
        noisy.extend((0..4).map(|i| unit(&pseudo_random(500 + i, D)).iter().map(|v| 0.02 * v).collect()));
        for rows in [echoes, noisy] {
            let scores = score(&AnomalyConfig::default(), &rows, &equal(10));
            assert!(scores[..6].iter().all(|score| !score.flagged), "{scores:?}");
            assert!(scores[6..].iter().all(AnomalyScore::is_free_rider), "{scores:?}");
            assert!(scores[..6].iter().all(|score| score.norm_ratio > 0.8 && score.norm_ratio < 1.2), "{scores:?}");
        }
    }

    #[test]
    fn colluders_sending_one_vector_are_near_duplicates() {
        // ALIE: both attackers send mean − z·std of the honest updates, the same vector, which sits inside the
        // honest spread; only their coincidence gives them away. Copies of an honest update are caught the same
        // way (both the copy and its original: which is which cannot be told).
        let mut rows: Vec<Vec<f64>> = (0..8).map(honest).collect();
        let mean: Vec<f64> = (0..D).map(|j| rows.iter().map(|row| row[j]).sum::<f64>() / 8.0).collect();
        let std: Vec<f64> =
            (0..D).map(|j| (rows.iter().map(|row| (row[j] - mean[j]).powi(2)).sum::<f64>() / 8.0).sqrt()).collect();
        let alie: Vec<f64> = mean.iter().zip(&std).map(|(m, s)| m - 0.5 * s).collect();
        rows.push(alie.clone());
        rows.push(alie);
        let scores = score(&AnomalyConfig::default(), &rows, &equal(10));
        assert!(scores[..8].iter().all(|score| !score.flagged), "{scores:?}");
        for score in &scores[8..] {
            assert_eq!(kinds(score), ["duplicate"], "{score:?}");
            assert_eq!(score.nearest_ratio, 0.0);
            assert!(!score.is_free_rider());
        }
        // Without the duplicate check ALIE passes every other test.
        let blind = AnomalyConfig { duplicate_distance_ratio: 0.0, ..AnomalyConfig::default() };
        assert!(score(&blind, &rows, &equal(10)).iter().all(|score| !score.flagged));
        let mut copied: Vec<Vec<f64>> = (0..8).map(honest).collect();
        copied.push(honest(2));
        let scores = score(&AnomalyConfig::default(), &copied, &equal(9));
        let flagged: Vec<usize> = (0..9).filter(|&i| scores[i].flagged).collect();
        assert_eq!(flagged, [2, 8]);
    }

    #[test]
    fn a_slightly_negative_cosine_passes_and_a_flipped_update_does_not() {
        // Six honest updates around [1, 0, 0], one that label skew turned almost orthogonal, and h₁ negated. The
        // coordinate median is [0.975, 0, 0], so the skewed update's cosine is −0.05/‖s‖ and the flipped one's
        // −1/‖h₁‖. With the distance check off, the cosine check alone passes the first and flags the second.
        let rows: [[f32; 3]; 8] = [
            [1.0, 0.1, 0.0],
            [1.0, -0.1, 0.0],
            [0.9, 0.0, 0.1],
            [1.1, 0.0, -0.1],
            [1.0, 0.05, 0.05],
            [0.95, -0.05, 0.0],
            [-0.05, 1.0, 0.0],
            [-1.0, -0.1, 0.0],
        ];
        let updates = Array2::from_shape_fn((8, 3), |(i, j)| rows[i][j]);
        let config = AnomalyConfig { max_distance_ratio: f64::INFINITY, ..AnomalyConfig::default() };
        let scores = score_updates(&config, updates.view(), &equal(8)).unwrap();
        let skewed_norm = (0.05f64 * 0.05 + 1.0).sqrt();
        assert!((scores[6].cosine + 0.05 / skewed_norm).abs() < 1e-6, "{:?}", scores[6]);
        assert!(!scores[6].flagged, "{:?}", scores[6]);
        assert_eq!(kinds(&scores[7]), ["cosine"]);
        assert!(scores[..6].iter().all(|score| !score.flagged), "{scores:?}");
        // The old limit of 0 flagged the skewed one too.
        let strict = AnomalyConfig { min_cosine: 0.0, ..config };
        assert!(score_updates(&strict, updates.view(), &equal(8)).unwrap()[6].flagged);
    }

    #[test]
    fn nearly_identical_honest_updates_do_not_flag_small_differences() {
        // The MAD and the median distance are tiny; the floor keeps a 1% longer update unflagged. The updates
        // differ by 2 % noise, twice the near-duplicate limit.
        let mut rows: Vec<Vec<f64>> = (0..5)
            .map(|i| {
                let noise = unit(&pseudo_random(300 + i, D));
                direction().iter().zip(&noise).map(|(d, e)| d + 0.014 * e).collect()
            })
            .collect();
        rows.push(direction().iter().map(|v| 1.01 * v).collect());
        let scores = score(&AnomalyConfig::default(), &rows, &equal(6));
        assert!(scores.iter().all(|score| !score.flagged), "{scores:?}");
        // About (1.01 − 1)/0.05 = 0.2: the noise makes the median norm a little above 1.
        assert!(scores[5].norm_z > 0.15 && scores[5].norm_z < 0.21, "{:?}", scores[5]);
    }

    #[test]
    fn small_rounds_flag_only_echoes() {
        let weights = [1.0; 3];
        let updates = ndarray::array![[1.0f32, 0.0], [-5.0, 0.0]];
        let scores = score_updates(&AnomalyConfig::default(), updates.view(), &weights[..2]).unwrap();
        assert!(scores.iter().all(|score| !score.flagged));
        let with_echo = ndarray::array![[1.0f32, 0.0], [0.0, 0.0]];
        let scores = score_updates(&AnomalyConfig::default(), with_echo.view(), &weights[..2]).unwrap();
        assert_eq!(scores[1].reasons, [AnomalyReason::Echo]);
        // Mostly echoes: only the echoes themselves are flagged.
        let echoes = ndarray::array![[0.0f32, 0.0], [0.0, 0.0], [3.0, 4.0]];
        let scores = score_updates(&AnomalyConfig::default(), echoes.view(), &weights).unwrap();
        assert!(scores[0].flagged && scores[1].flagged && !scores[2].flagged);
        assert_eq!(scores[2].norm_ratio, 0.0);
    }

    #[test]
    fn thresholds_are_configurable() {
        let lenient = AnomalyConfig {
            min_cosine: -1.0,
            max_norm_z: f64::INFINITY,
            max_distance_ratio: f64::INFINITY,
            ..AnomalyConfig::default()
        };
        let scores = score_updates(&lenient, round().view(), &equal(13)).unwrap();
        assert!(!scores[8].flagged && !scores[9].flagged, "{:?}", &scores[8..10]);
        assert!(scores[10].flagged && scores[11].flagged && scores[12].flagged);
    }

    #[test]
    fn invalid_thresholds_and_weights_are_refused() {
        for (config, expected) in [
            (AnomalyConfig { max_norm_z: 0.0, ..AnomalyConfig::default() }, "max_norm_z must be positive"),
            (AnomalyConfig { min_cosine: 1.5, ..AnomalyConfig::default() }, "min_cosine must lie in [-1, 1], got 1.5"),
            (
                AnomalyConfig { max_distance_ratio: 0.5, ..AnomalyConfig::default() },
                "max_distance_ratio must be at least 1",
            ),
            (
                AnomalyConfig { free_rider_norm_ratio: f64::NAN, ..AnomalyConfig::default() },
                "free_rider_norm_ratio must lie in [0, 1], got NaN",
            ),
            (
                AnomalyConfig { examples_exponent: 2.0, ..AnomalyConfig::default() },
                "examples_exponent must lie in [0, 1], got 2",
            ),
            (
                AnomalyConfig { duplicate_distance_ratio: -0.1, ..AnomalyConfig::default() },
                "duplicate_distance_ratio must lie in [0, 1], got -0.1",
            ),
            (AnomalyConfig { min_updates: 0, ..AnomalyConfig::default() }, "min_updates must be at least 1"),
        ] {
            let error = config.validate().unwrap_err().to_string();
            assert!(error.contains(expected), "{error}");
            assert!(error.starts_with("invalid manifest: aggregation.anomaly."), "{error}");
        }
        let empty = Array2::<f32>::zeros((0, 2));
        assert!(score_updates(&AnomalyConfig::default(), empty.view(), &[]).is_err());
        let updates = round();
        let message = |weights: &[f64]| {
            score_updates(&AnomalyConfig::default(), updates.view(), weights).unwrap_err().to_string()
        };
        assert_eq!(message(&[1.0; 3]), "invalid weights: 3 weights for 13 updates");
        let mut weights = equal(13);
        weights[4] = 0.0;
        assert_eq!(message(&weights), "invalid weights: every weight must be finite and positive, got 0");
    }

    #[test]
    fn scores_are_reproducible() {
        let a = score_updates(&AnomalyConfig::default(), round().view(), &equal(13)).unwrap();
        let b = score_updates(&AnomalyConfig::default(), round().view(), &equal(13)).unwrap();
        assert_eq!(a, b);
    }

    #[test]
    fn suspension_after_k_consecutive_flagged_participations() {
        let mut tracker = SuspensionTracker::new(2);
        assert!(tracker.record_round(1, [("a", true), ("b", true), ("c", true)]).unwrap().is_empty());
        // b is clean in round 2, which resets it; c is absent, which neither extends nor breaks its streak.
        assert_eq!(tracker.record_round(2, [("a", true), ("b", false)]).unwrap(), ["a"]);
        assert_eq!(tracker.streak("b"), 0);
        assert_eq!(tracker.streak("c"), 1);
        assert_eq!(tracker.record_round(3, [("b", true), ("c", true), ("a", false)]).unwrap(), ["c"]);
        assert!(tracker.is_suspended("a") && tracker.is_suspended("c") && !tracker.is_suspended("b"));
        assert_eq!(tracker.suspended().collect::<Vec<_>>(), [("a", 2), ("c", 3)]);
        // The state survives a restart.
        let saved = toml::to_string(&tracker).unwrap();
        let mut restored: SuspensionTracker = toml::from_str(&saved).unwrap();
        assert_eq!(restored, tracker);
        assert!(restored.reinstate("a"));
        assert!(!restored.reinstate("a"));
        assert!(!restored.is_suspended("a"));
        assert!(restored.record_round(4, [("a", true)]).unwrap().is_empty());
        assert_eq!(restored.record_round(5, [("a", true)]).unwrap(), ["a"]);
    }

    #[test]
    fn suspension_refusals_and_k_zero() {
        let mut tracker = SuspensionTracker::new(0);
        for round in 1..=10 {
            assert!(tracker.record_round(round, [("a", true)]).unwrap().is_empty());
        }
        assert!(!tracker.is_suspended("a"));
        assert_eq!(
            tracker.record_round(10, [("a", true)]).unwrap_err().to_string(),
            "suspension tracker: round 10 recorded after round 10"
        );
        let mut tracker = SuspensionTracker::new(1);
        assert_eq!(
            tracker.record_round(1, [("a", true), ("a", false)]).unwrap_err().to_string(),
            "suspension tracker: PDC a is named twice in round 1"
        );
        // The refused round changed nothing: round 1 can still be recorded.
        assert_eq!(tracker.record_round(1, [("a", true)]).unwrap(), ["a"]);
    }
}
