//! Anomaly scores for a round's updates, free-rider detection, and the suspension of PDCs flagged round after
//! round.
//!
//! Every update (a delta, one row of the round's matrix) is compared with the round's **robust centre**, the
//! coordinate-wise median of all its updates, which a minority of attackers cannot drag far:
//!
//! - `distance`: the Euclidean distance to the centre, and `distance_ratio`, that distance over the median
//!   distance of the round's updates;
//! - `cosine`: the cosine similarity to the centre (0 when either vector is zero, never NaN);
//! - `norm_z`: a robust z-score of the update's norm, `(‖x‖ − median norm) / (1.4826 · MAD)`, the MAD (median
//!   absolute deviation) being scaled to estimate a standard deviation for normal data.
//!
//! The relative measures need a spread to compare with. When honest updates are nearly identical (an IID
//! simulation) the MAD and the median distance are tiny and a 1% difference would look enormous, so both are
//! floored at [`AnomalyConfig::relative_spread_floor`] times the median norm.
//!
//! A [`AnomalyConfig`] turns the scores into flags with one reason each ([`AnomalyReason`]). Free riders are
//! detected explicitly: an **echo** (the PDC sent back the global model: a delta of exactly zero), a
//! **negligible** norm (far below the median norm), and a **noisy echo** (a small norm *and* no alignment with
//! the centre, i.e. the global model plus a little isotropic noise). In high dimension random noise is nearly
//! orthogonal to any fixed direction, while honest updates share the direction of the consensus.
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
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AnomalyConfig {
    /// Whether updates are scored at all.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Flag an update whose norm z-score exceeds this (default 3.5, Iglewicz and Hoaglin's cut-off for the
    /// modified z-score). Too *small* a norm is the free-rider checks' business.
    #[serde(default = "default_max_norm_z")]
    pub max_norm_z: f64,
    /// Flag a non-zero update whose cosine to the centre is below this (default 0: pointing away from the
    /// consensus, as a sign-flipped update does). −1 disables the check.
    #[serde(default)]
    pub min_cosine: f64,
    /// Flag an update farther from the centre than this many median distances (default 3).
    #[serde(default = "default_max_distance_ratio")]
    pub max_distance_ratio: f64,
    /// Flag a non-zero update whose norm is below this fraction of the median norm as a free rider (default
    /// 0.01). 0 disables the check.
    #[serde(default = "default_free_rider_norm_ratio")]
    pub free_rider_norm_ratio: f64,
    /// A noisy echo has a norm below this fraction of the median norm (default 0.5) ...
    #[serde(default = "default_noisy_echo_norm_ratio")]
    pub noisy_echo_norm_ratio: f64,
    /// ... and a cosine to the centre below this (default 0.3). Random noise in `d` dimensions has a cosine of
    /// about ±1/√d to any fixed direction: 0.3 is 5 standard deviations at `d = 256`, but only 1.7 at `d = 31`
    /// (a logistic regression on 30 features), where this check is weak.
    #[serde(default = "default_noisy_echo_max_cosine")]
    pub noisy_echo_max_cosine: f64,
    /// The MAD and the median distance are floored at this fraction of the median norm (default 0.05).
    #[serde(default = "default_relative_spread_floor")]
    pub relative_spread_floor: f64,
    /// Rounds with fewer updates than this (default 3) are too small for statistics: only echoes are flagged.
    #[serde(default = "default_min_updates")]
    pub min_updates: usize,
    /// A PDC flagged in this many consecutive rounds it took part in is suspended from selection (default 3);
    /// 0 never suspends.
    #[serde(default = "default_suspend_after_rounds")]
    pub suspend_after_rounds: u32,
    /// Whether flagged updates are left out of the aggregate (default false: they are recorded, and the robust
    /// rule is trusted to resist them).
    #[serde(default)]
    pub exclude_flagged: bool,
}

impl Default for AnomalyConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            max_norm_z: default_max_norm_z(),
            min_cosine: 0.0,
            max_distance_ratio: default_max_distance_ratio(),
            free_rider_norm_ratio: default_free_rider_norm_ratio(),
            noisy_echo_norm_ratio: default_noisy_echo_norm_ratio(),
            noisy_echo_max_cosine: default_noisy_echo_max_cosine(),
            relative_spread_floor: default_relative_spread_floor(),
            min_updates: default_min_updates(),
            suspend_after_rounds: default_suspend_after_rounds(),
            exclude_flagged: false,
        }
    }
}

fn default_true() -> bool {
    true
}

fn default_max_norm_z() -> f64 {
    3.5
}

fn default_max_distance_ratio() -> f64 {
    3.0
}

fn default_free_rider_norm_ratio() -> f64 {
    0.01
}

fn default_noisy_echo_norm_ratio() -> f64 {
    0.5
}

fn default_noisy_echo_max_cosine() -> f64 {
    0.3
}

fn default_relative_spread_floor() -> f64 {
    0.05
}

fn default_min_updates() -> usize {
    3
}

fn default_suspend_after_rounds() -> u32 {
    3
}

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
            ("free_rider_norm_ratio", self.free_rider_norm_ratio),
            ("noisy_echo_norm_ratio", self.noisy_echo_norm_ratio),
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

/// One update's scores against its round, and whether (and why) it is flagged.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AnomalyScore {
    /// The update's Euclidean norm.
    pub norm: f64,
    /// Its norm over the round's median norm (0 when the median norm is 0).
    pub norm_ratio: f64,
    /// The robust z-score of its norm (0 when the round has no spread to compare with).
    pub norm_z: f64,
    /// Its Euclidean distance to the robust centre.
    pub distance: f64,
    /// That distance over the round's (floored) median distance (0 when there is no reference).
    pub distance_ratio: f64,
    /// Its cosine similarity to the robust centre; 0 when either is the zero vector.
    pub cosine: f64,
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

/// Scores every row of `updates` against the round (see the module documentation), in row order.
///
/// # Shapes
/// `updates`: `(n_updates, n_parameters)`; the result has `n_updates` scores.
///
/// ```
/// use ndarray::array;
/// use pdc_coordinator::aggregation::anomaly::{AnomalyConfig, AnomalyReason, score_updates};
/// let updates = array![[1.0f32, 1.0], [1.1, 0.9], [0.9, 1.0], [-1.0, -1.0], [0.0, 0.0]];
/// let scores = score_updates(&AnomalyConfig::default(), updates.view()).unwrap();
/// assert!(!scores[0].flagged && !scores[1].flagged && !scores[2].flagged);
/// assert!(matches!(scores[3].reasons[0], AnomalyReason::LowCosine { .. }));
/// assert_eq!(scores[4].reasons[0], AnomalyReason::Echo);
/// ```
pub fn score_updates(config: &AnomalyConfig, updates: ArrayView2<f32>) -> Result<Vec<AnomalyScore>> {
    config.validate()?;
    let n = updates.nrows();
    if n == 0 {
        return Err(Error::FailedPrecondition("anomaly scores over no updates".into()));
    }
    let centre = coordinate_median(updates)?;
    let centre_norm = norm(centre.iter().copied());
    let mut norms = Vec::with_capacity(n);
    let mut distances = Vec::with_capacity(n);
    let mut cosines = Vec::with_capacity(n);
    for row in updates.rows() {
        let (mut squares, mut dot, mut distance) = (0.0f64, 0.0f64, 0.0f64);
        for (&x, &c) in row.iter().zip(&centre) {
            let (x, c) = (f64::from(x), f64::from(c));
            squares += x * x;
            dot += x * c;
            distance += (x - c) * (x - c);
        }
        let row_norm = squares.sqrt();
        norms.push(row_norm);
        distances.push(distance.sqrt());
        cosines.push(if row_norm > 0.0 && centre_norm > 0.0 {
            (dot / (row_norm * centre_norm)).clamp(-1.0, 1.0)
        } else {
            0.0
        });
    }

    let median_norm = median(&norms);
    let deviations: Vec<f64> = norms.iter().map(|norm| (norm - median_norm).abs()).collect();
    let floor = config.relative_spread_floor * median_norm;
    let spread = (MAD_TO_STD * median(&deviations)).max(floor);
    let reference_distance = median(&distances).max(floor);
    // With fewer updates than `min_updates`, or with a zero median norm (at least half the round echoed), the
    // relative checks have nothing to compare with.
    let statistics = n >= config.min_updates && median_norm > 0.0;

    let scores: Vec<AnomalyScore> = (0..n)
        .map(|i| {
            let norm = norms[i];
            let cosine = cosines[i];
            let norm_ratio = if median_norm > 0.0 { norm / median_norm } else { 0.0 };
            let norm_z = if spread > 0.0 { (norm - median_norm) / spread } else { 0.0 };
            let distance_ratio = if reference_distance > 0.0 { distances[i] / reference_distance } else { 0.0 };
            let mut reasons = Vec::new();
            if norm == 0.0 {
                reasons.push(AnomalyReason::Echo);
            }
            if statistics {
                if norm > 0.0 && norm_ratio < config.free_rider_norm_ratio {
                    reasons.push(AnomalyReason::NegligibleNorm { norm_ratio, limit: config.free_rider_norm_ratio });
                } else if norm > 0.0
                    && norm_ratio < config.noisy_echo_norm_ratio
                    && cosine < config.noisy_echo_max_cosine
                {
                    reasons.push(AnomalyReason::NoisyEcho { norm_ratio, cosine });
                }
                if norm_z > config.max_norm_z {
                    reasons.push(AnomalyReason::NormTooLarge { norm_z, limit: config.max_norm_z });
                }
                if norm > 0.0 && cosine < config.min_cosine {
                    reasons.push(AnomalyReason::LowCosine { cosine, limit: config.min_cosine });
                }
                if distance_ratio > config.max_distance_ratio {
                    reasons.push(AnomalyReason::FarFromCentre { distance_ratio, limit: config.max_distance_ratio });
                }
            }
            AnomalyScore {
                norm,
                norm_ratio,
                norm_z,
                distance: distances[i],
                distance_ratio,
                cosine,
                flagged: !reasons.is_empty(),
                reasons,
            }
        })
        .collect();
    Ok(scores)
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
                AnomalyReason::NormTooLarge { .. } => "norm",
                AnomalyReason::LowCosine { .. } => "cosine",
                AnomalyReason::FarFromCentre { .. } => "distance",
            })
            .collect()
    }

    #[test]
    fn honest_cluster_passes_and_each_attack_is_flagged_for_its_reason() {
        let scores = score_updates(&AnomalyConfig::default(), round().view()).unwrap();
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
        assert_eq!(zero.reasons[0], AnomalyReason::Echo);
        assert_eq!(zero.cosine, 0.0);
        assert!(zero.is_free_rider());
        let noisy_echo = &scores[11];
        assert!(kinds(noisy_echo).contains(&"noisy_echo"), "{noisy_echo:?}");
        assert!(noisy_echo.cosine.abs() < 0.3 && (noisy_echo.norm_ratio - 0.1).abs() < 0.02, "{noisy_echo:?}");
        assert!(noisy_echo.is_free_rider());
        let negligible = &scores[12];
        assert_eq!(kinds(negligible)[0], "negligible");
        assert!(negligible.is_free_rider());
        for score in &scores {
            assert_eq!(score.flagged, !score.reasons.is_empty());
            assert!(
                [score.norm, score.norm_z, score.distance, score.distance_ratio, score.cosine]
                    .iter()
                    .all(|v| v.is_finite())
            );
        }
    }

    #[test]
    fn hand_computed_scores() {
        // Centre = coordinate median = [(0 + 1)/2, 0] = [0.5, 0]. Norms 1, 1, 2, 0: median 1, deviations
        // 0, 0, 1, 1: MAD 0.5, spread 1.4826·0.5. Distances 0.5, √1.25, 1.5, 0.5: median (0.5 + √1.25)/2.
        let updates = ndarray::array![[1.0f32, 0.0], [0.0, 1.0], [2.0, 0.0], [0.0, 0.0]];
        let scores = score_updates(&AnomalyConfig::default(), updates.view()).unwrap();
        let spread = MAD_TO_STD * 0.5;
        let median_distance = (0.5 + 1.25f64.sqrt()) / 2.0;
        assert_eq!(scores[0].distance, 0.5);
        assert_eq!(scores[0].cosine, 1.0);
        assert_eq!(scores[0].norm_z, 0.0);
        assert_eq!(scores[1].cosine, 0.0);
        assert_eq!(scores[1].distance, 1.25f64.sqrt());
        assert_eq!(scores[2].norm_z, 1.0 / spread);
        assert_eq!(scores[2].norm_ratio, 2.0);
        assert!((scores[2].distance_ratio - 1.5 / median_distance).abs() < 1e-12);
        assert_eq!(scores[3].norm_z, -1.0 / spread);
        assert_eq!(scores[3].norm_ratio, 0.0);
        assert_eq!(scores[3].reasons, [AnomalyReason::Echo]);
        assert!(scores[..3].iter().all(|score| !score.flagged));
        assert_eq!(scores[3].describe(), "echo: the update is exactly zero");
        // A cosine of exactly 0 is not below the default limit of 0.
        assert!(scores[1].reasons.is_empty());
    }

    #[test]
    fn identical_honest_updates_do_not_flag_small_differences() {
        // The MAD and the median distance are 0; the floor keeps a 1% longer update unflagged.
        let mut rows = vec![direction(); 5];
        rows.push(direction().iter().map(|v| 1.01 * v).collect());
        let scores = score_updates(&AnomalyConfig::default(), matrix(&rows).view()).unwrap();
        assert!(scores.iter().all(|score| !score.flagged), "{scores:?}");
        assert!((scores[5].norm_z - 0.2).abs() < 1e-4, "{:?}", scores[5]);
    }

    #[test]
    fn small_rounds_flag_only_echoes() {
        let updates = ndarray::array![[1.0f32, 0.0], [-5.0, 0.0]];
        let scores = score_updates(&AnomalyConfig::default(), updates.view()).unwrap();
        assert!(scores.iter().all(|score| !score.flagged));
        let with_echo = ndarray::array![[1.0f32, 0.0], [0.0, 0.0]];
        let scores = score_updates(&AnomalyConfig::default(), with_echo.view()).unwrap();
        assert_eq!(scores[1].reasons, [AnomalyReason::Echo]);
        // Mostly echoes: the median norm is 0, so only the echoes themselves are flagged.
        let echoes = ndarray::array![[0.0f32, 0.0], [0.0, 0.0], [3.0, 4.0]];
        let scores = score_updates(&AnomalyConfig::default(), echoes.view()).unwrap();
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
        let scores = score_updates(&lenient, round().view()).unwrap();
        assert!(!scores[8].flagged && !scores[9].flagged, "{:?}", &scores[8..10]);
        assert!(scores[10].flagged && scores[11].flagged && scores[12].flagged);
    }

    #[test]
    fn invalid_thresholds_are_refused() {
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
            (AnomalyConfig { min_updates: 0, ..AnomalyConfig::default() }, "min_updates must be at least 1"),
        ] {
            let error = config.validate().unwrap_err().to_string();
            assert!(error.contains(expected), "{error}");
            assert!(error.starts_with("invalid manifest: aggregation.anomaly."), "{error}");
        }
        let empty = Array2::<f32>::zeros((0, 2));
        assert!(score_updates(&AnomalyConfig::default(), empty.view()).is_err());
    }

    #[test]
    fn scores_are_reproducible() {
        let a = score_updates(&AnomalyConfig::default(), round().view()).unwrap();
        let b = score_updates(&AnomalyConfig::default(), round().view()).unwrap();
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
