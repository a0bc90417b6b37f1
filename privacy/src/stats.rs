//! DP statistics a PDC releases about its own data: feature summaries for global standardisation, and cohort
//! counts. Each is one exact Gaussian release through OpenDP, charged to the PDC's privacy budget.
//!
//! # Feature summaries
//!
//! Before training, the coordinator needs each feature's mean and standard deviation over all PDCs to standardise
//! inputs the same way everywhere. Each PDC runs [`release_feature_summary`] on its table; the coordinator pools
//! the results with [`combine_feature_summaries`]. Only the noisy summaries leave a PDC.
//!
//! ## What is released, and its sensitivity
//!
//! Feature `j` is clamped to its [`FeatureBounds`] `[lⱼ, uⱼ]`, with centre `cⱼ = (lⱼ + uⱼ)/2` and half-width
//! `rⱼ = (uⱼ − lⱼ)/2`. A row `x` with `d` features contributes the vector of `1 + 2d` entries
//!
//! ```text
//! v(x) = (1, a₁, …, a_d, b₁, …, b_d),   aⱼ = q((clamp(xⱼ) − cⱼ) / rⱼ),   bⱼ = q(2aⱼ² − 1),
//! ```
//!
//! where `q` rounds to the grid of multiples of 2⁻²⁰ and clamps to `[−1, 1]`. The statistic is the sum
//! `T(D) = Σ_{x ∈ D} v(x)` = (count, deviation sums, square sums), and one Gaussian release adds N(0, (z·Δ)²) to
//! each of its entries, where `z` is the noise multiplier and
//!
//! ```text
//! Δ = √(1 + 2d)
//! ```
//!
//! is its L2 sensitivity under adding or removing one row.
//! *Proof.* Every entry of `v(x)` is a multiple of 2⁻²⁰ in `[−1, 1]`, so the sums are sums of integers (in units of
//! 2⁻²⁰) that are computed exactly in `i64` and are exactly representable in `f64` for up to [`MAX_ROWS`] rows.
//! Adding or removing a row `x` therefore changes `T` by exactly `±v(x)`, whose squared norm is
//! `1 + Σⱼ aⱼ² + Σⱼ bⱼ² ≤ 1 + d + d`. The bound is attained by any row on a corner of the box (`aⱼ = ±1`, so
//! `bⱼ = 1`). ∎ The sensitivity and noise scale handed to OpenDP are both rounded up by a relative 2⁻⁴⁰, so that
//! `f64` rounding never makes them smaller than claimed; OpenDP's ρ is then at most `1/(2z²)`.
//!
//! ## Why not the raw count, sums and sums of squares
//!
//! Releasing `(n, Σxⱼ, Σxⱼ²)` directly has sensitivity `√(1 + Σmⱼ² + Σmⱼ⁴)` with `mⱼ = max(|lⱼ|, |uⱼ|)`, and
//! every entry gets noise of that size: for systolic blood pressure in `[40, 250]` the count alone would get noise
//! of standard deviation ≈ 6·10⁴·z, and `E[x²] − E[x]²` would cancel catastrophically. Centring each feature on its
//! box and scaling each entry to `[−1, 1]` gives every statistic the same share of the sensitivity: the mean of
//! feature `j` gets noise `z·Δ·rⱼ / n` and its variance `z·Δ·rⱼ² / (2n)`, independent of where the box sits and of
//! the other features' ranges. Shifting the square term to `2a² − 1` (range 2) rather than `a²` (range 1, but never
//! negative) halves its noise relative to the second moment it measures. The affine maps are inverted after the
//! noise, so this is post-processing and costs nothing.
//!
//! ## Pooling
//!
//! [`combine_feature_summaries`] adds the PDCs' noisy vectors, takes `ñ = max(Σ countᵢ, 1)`, and estimates
//! `āⱼ = clamp(Aⱼ/ñ, −1, 1)`, `meanⱼ = cⱼ + rⱼ āⱼ` and the population variance
//! `varⱼ = rⱼ² · clamp((Bⱼ/ñ + 1)/2 − āⱼ², MIN_SCALED_VARIANCE, 1)`: noise can push the raw estimate of a
//! variance below zero, and a standardisation must never divide by zero, so the variance is floored at
//! [`MIN_SCALED_VARIANCE`] `· rⱼ²` (a standard deviation of at least 10⁻³ half-widths) and capped at `rⱼ²`, the
//! largest variance a clamped feature can have. All of it is post-processing of DP releases.
//!
//! # Cohort counts
//!
//! [`release_cohort_counts`] releases (positives, negatives) of a binary label. Adding or removing one row changes
//! exactly one of them by 1, so the sensitivity is 1; the number of rows is their sum (noise variance `2z²`). This
//! is better than also releasing the row count, which would raise the sensitivity to √2 and double every variance.
//!
//! # Accounting
//!
//! Every release is the Gaussian mechanism with noise `z` times its L2 sensitivity, so it costs what
//! [`Accountant::compose_gaussian`]`(z, 1)` records: use [`PrivacyCost::record`] through
//! [`Budget::try_spend`](crate::Budget::try_spend) **before** releasing, as below. For reporting, the releases also
//! give their own zCDP ρ and ε through OpenDP's conversion.
//!
//! ```
//! use pdc_privacy::stats::{FeatureBounds, PrivacyCost, combine_feature_summaries, release_feature_summary};
//! use pdc_privacy::{Budget, PrivacyBudget, RdpAccountant};
//!
//! // Two features: age in [18, 90] and systolic blood pressure in [40, 250].
//! let bounds = [FeatureBounds::new(18.0, 90.0)?, FeatureBounds::new(40.0, 250.0)?];
//! let rows = vec![vec![54.0, 130.0], vec![71.0, 145.0], vec![33.0, 118.0]];
//! let noise_multiplier = 10.0;
//!
//! // Charge the PDC's budget first: refused releases must not happen.
//! let mut budget = Budget::new(PrivacyBudget::new(1.0, 1e-6)?);
//! let mut accountant = RdpAccountant::new();
//! let cost = PrivacyCost::gaussian(noise_multiplier)?;
//! budget.try_spend(&mut accountant, |a| cost.record(a))?;
//!
//! let summary = release_feature_summary(&rows, &bounds, noise_multiplier)?;
//! assert_eq!(summary.privacy_cost(), cost);
//! assert!(summary.epsilon(1e-6)? < 1.0);
//!
//! // The coordinator pools every PDC's summary.
//! let global = combine_feature_summaries(&[summary])?;
//! assert!(global.std.iter().all(|&s| s > 0.0));
//! # Ok::<(), pdc_privacy::Error>(())
//! ```

use serde::{Deserialize, Serialize};

use crate::accountant::Accountant;
use crate::exact::{self, NOISE_MARGIN};
use crate::{Error, Result};

/// The most rows a feature summary accepts: below it, its sums in units of 2⁻²⁰ stay under 2⁵³ and are exact in
/// `f64`.
pub const MAX_ROWS: u64 = 1 << (53 - QUANTUM_BITS);

/// The floor on a pooled variance, in units of the feature's squared half-width `r²`: a standard deviation is never
/// below `10⁻³ · r`.
pub const MIN_SCALED_VARIANCE: f64 = 1e-6;

/// The clamping range `[lower, upper]` of one feature.
///
/// Bounds are part of a study's data schema and must be chosen without looking at the data (data-dependent bounds
/// leak); values outside are clamped onto them. Deserialisation validates like [`FeatureBounds::new`].
///
/// ```
/// let age = pdc_privacy::stats::FeatureBounds::new(18.0, 90.0)?;
/// assert_eq!(age.clamp(104.0), 90.0);
/// assert!(pdc_privacy::stats::FeatureBounds::new(1.0, 1.0).is_err());
/// # Ok::<(), pdc_privacy::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "FeatureBoundsFields")]
pub struct FeatureBounds {
    lower: f64,
    upper: f64,
}

impl FeatureBounds {
    /// The range `[lower, upper]`.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidFeatureBounds`] unless both are finite, `lower < upper`, and the half-width
    /// `upper/2 − lower/2` is not rounded to zero (bounds a few subnormals apart).
    pub fn new(lower: f64, upper: f64) -> Result<Self> {
        let bounds = Self { lower, upper };
        if lower.is_finite() && upper.is_finite() && lower < upper && bounds.half_width() > 0.0 {
            Ok(bounds)
        } else {
            Err(Error::InvalidFeatureBounds { lower, upper })
        }
    }

    /// The lower bound.
    pub fn lower(&self) -> f64 {
        self.lower
    }

    /// The upper bound.
    pub fn upper(&self) -> f64 {
        self.upper
    }

    /// `value` clamped to `[lower, upper]`.
    pub fn clamp(&self, value: f64) -> f64 {
        value.clamp(self.lower, self.upper)
    }

    /// The centre of the range; halving first keeps it finite for any finite bounds.
    fn centre(&self) -> f64 {
        self.lower / 2.0 + self.upper / 2.0
    }

    /// Half the width of the range; halving first keeps it finite for any finite bounds.
    fn half_width(&self) -> f64 {
        self.upper / 2.0 - self.lower / 2.0
    }
}

/// The privacy cost of one Gaussian release: what the releasing PDC's accountant must record.
///
/// Known before the release, so that a budget can refuse it; the release reports the same cost afterwards.
///
/// ```
/// use pdc_privacy::stats::PrivacyCost;
/// use pdc_privacy::{Accountant, RdpAccountant};
///
/// let mut accountant = RdpAccountant::new();
/// PrivacyCost::gaussian(2.0)?.record(&mut accountant);
/// assert!(accountant.epsilon(1e-5)? < 2.5);
/// # Ok::<(), pdc_privacy::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PrivacyCost {
    noise_multiplier: f64,
}

impl PrivacyCost {
    /// The cost of one Gaussian release whose noise is `noise_multiplier` times its L2 sensitivity.
    ///
    /// # Errors
    ///
    /// [`Error::NonPositiveNoiseMultiplier`] unless `noise_multiplier` is finite and positive.
    pub fn gaussian(noise_multiplier: f64) -> Result<Self> {
        check_noise_multiplier(noise_multiplier)?;
        Ok(Self { noise_multiplier })
    }

    /// The sensitivity-normalised noise multiplier `z`.
    pub fn noise_multiplier(&self) -> f64 {
        self.noise_multiplier
    }

    /// Records the release on `accountant`: [`Accountant::compose_gaussian`]`(z, 1)`.
    pub fn record(&self, accountant: &mut impl Accountant) {
        accountant.compose_gaussian(self.noise_multiplier, 1);
    }
}

/// One PDC's noisy feature summary: the count, deviation sums and square sums of the [module
/// documentation](self), released together by one Gaussian mechanism.
///
/// Only post-processing of this release is safe to publish; its fields are already noisy. Deserialisation checks
/// that the parts are consistent and finite.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "NoisyFeatureSummaryFields")]
pub struct NoisyFeatureSummary {
    bounds: Vec<FeatureBounds>,
    noise_multiplier: f64,
    count: f64,
    deviation_sums: Vec<f64>,
    square_sums: Vec<f64>,
}

impl NoisyFeatureSummary {
    /// Rebuilds a release from its flat values `(count, deviation sums…, square sums…)`, as [`Self::values`] gives
    /// them and a PDC sends them, checking them like deserialisation does.
    ///
    /// # Errors
    ///
    /// [`Error::NoFeatures`] for empty `bounds`; [`Error::NonPositiveNoiseMultiplier`];
    /// [`Error::MalformedRelease`] unless there are `1 + 2·bounds.len()` values, all finite.
    pub fn from_values(bounds: &[FeatureBounds], noise_multiplier: f64, values: &[f64]) -> Result<Self> {
        let d = bounds.len();
        if d > 0 && values.len() != 1 + 2 * d {
            return Err(malformed(format!(
                "{} released values for {d} features; expected {}",
                values.len(),
                1 + 2 * d
            )));
        }
        NoisyFeatureSummaryFields {
            bounds: bounds.to_vec(),
            noise_multiplier,
            count: values.first().copied().unwrap_or(0.0),
            deviation_sums: values.get(1..=d).map(<[f64]>::to_vec).unwrap_or_default(),
            square_sums: values.get(d + 1..).map(<[f64]>::to_vec).unwrap_or_default(),
        }
        .try_into()
    }

    /// The released values, flat: the count, then the deviation sums, then the square sums.
    pub fn values(&self) -> Vec<f64> {
        std::iter::once(self.count)
            .chain(self.deviation_sums.iter().copied())
            .chain(self.square_sums.iter().copied())
            .collect()
    }

    /// The clamping bounds, one per feature.
    pub fn bounds(&self) -> &[FeatureBounds] {
        &self.bounds
    }

    /// The number of features `d`.
    pub fn n_features(&self) -> usize {
        self.bounds.len()
    }

    /// The noisy number of rows (may be negative or fractional).
    pub fn count(&self) -> f64 {
        self.count
    }

    /// The noisy `Σ aⱼ`, one per feature, with `aⱼ = (clamp(xⱼ) − cⱼ)/rⱼ` in `[−1, 1]`.
    pub fn deviation_sums(&self) -> &[f64] {
        &self.deviation_sums
    }

    /// The noisy `Σ (2aⱼ² − 1)`, one per feature.
    pub fn square_sums(&self) -> &[f64] {
        &self.square_sums
    }

    /// The noise multiplier `z` of the release.
    pub fn noise_multiplier(&self) -> f64 {
        self.noise_multiplier
    }

    /// The L2 sensitivity Δ of the released vector: [`feature_summary_sensitivity`] of the number of features.
    pub fn sensitivity(&self) -> f64 {
        feature_summary_sensitivity(self.n_features())
    }

    /// The standard deviation `z·Δ` of the noise on every released entry (rounded up like Δ).
    pub fn noise_std(&self) -> f64 {
        noise_scale(self.noise_multiplier, self.sensitivity())
    }

    /// What the releasing PDC's accountant must record for this release.
    pub fn privacy_cost(&self) -> PrivacyCost {
        PrivacyCost { noise_multiplier: self.noise_multiplier }
    }

    /// The release's zCDP ρ by OpenDP's privacy map: at most `1/(2z²)`.
    ///
    /// # Errors
    ///
    /// [`Error::OpenDp`] if OpenDP refuses the measurement.
    pub fn zcdp_rho(&self) -> Result<f64> {
        exact::zcdp_rho(self.noise_std(), self.sensitivity())
    }

    /// The release's ε at `delta`, by OpenDP's zCDP → (ε, δ) conversion.
    ///
    /// OpenDP minimises the conversion over every real Rényi order, so this is at most (and within about 0.2 % of)
    /// what [`RdpAccountant`](crate::RdpAccountant) reports for [`PrivacyCost::record`] on its grid of orders.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidDelta`] unless `0 < delta < 1`; [`Error::OpenDp`] if OpenDP refuses the measurement.
    pub fn epsilon(&self, delta: f64) -> Result<f64> {
        exact::epsilon(self.noise_std(), self.sensitivity(), delta)
    }
}

/// The L2 sensitivity `√(1 + 2d)` of a feature summary over `n_features` features, under adding or removing one
/// row, rounded up by a relative 2⁻⁴⁰ (see the [module documentation](self) for the proof).
///
/// ```
/// let delta = pdc_privacy::stats::feature_summary_sensitivity(4);
/// assert!(delta >= 3.0 && delta < 3.0 + 1e-11);
/// ```
pub fn feature_summary_sensitivity(n_features: usize) -> f64 {
    (1.0 + 2.0 * n_features as f64).sqrt() * NOISE_MARGIN
}

/// Releases a PDC's noisy feature summary: clamps every value to its feature's bounds and releases the count,
/// deviation sums and square sums (see the [module documentation](self)) through one exact Gaussian mechanism with
/// noise `noise_multiplier` × [`feature_summary_sensitivity`].
///
/// `rows` is row-major: one slice of `bounds.len()` values per record (`&[Vec<f64>]`, `&[&[f64]]` and `&[[f64; D]]`
/// all work). Zero rows is a valid table (the count is then pure noise). The caller charges the PDC's budget
/// beforehand with [`PrivacyCost::gaussian`]`(noise_multiplier)`.
///
/// # Errors
///
/// [`Error::NonPositiveNoiseMultiplier`] unless `noise_multiplier` is finite and positive; [`Error::NoFeatures`]
/// for empty `bounds`; [`Error::TooManyRows`] beyond [`MAX_ROWS`]; [`Error::RowLengthMismatch`] for the first row
/// of the wrong length; [`Error::NonFiniteFeature`] for the first NaN or infinite value (it cannot be clamped
/// meaningfully); [`Error::OpenDp`] if OpenDP refuses the measurement or cannot draw randomness.
///
/// ```
/// use pdc_privacy::stats::{FeatureBounds, release_feature_summary};
///
/// let bounds = [FeatureBounds::new(0.0, 1.0)?];
/// let rows: Vec<[f64; 1]> = (0..1000).map(|i| [f64::from(i % 2)]).collect();
/// let summary = release_feature_summary(&rows, &bounds, 1.0)?;
/// assert!((summary.count() - 1000.0).abs() < 20.0);
/// # Ok::<(), pdc_privacy::Error>(())
/// ```
pub fn release_feature_summary<R: AsRef<[f64]>>(
    rows: &[R],
    bounds: &[FeatureBounds],
    noise_multiplier: f64,
) -> Result<NoisyFeatureSummary> {
    check_noise_multiplier(noise_multiplier)?;
    let mut released = exact_feature_statistics(rows, bounds)?;
    let sensitivity = feature_summary_sensitivity(bounds.len());
    exact::add_exact_f64(&mut released, noise_scale(noise_multiplier, sensitivity))?;
    let d = bounds.len();
    Ok(NoisyFeatureSummary {
        bounds: bounds.to_vec(),
        noise_multiplier,
        count: released[0],
        deviation_sums: released[1..=d].to_vec(),
        square_sums: released[d + 1..].to_vec(),
    })
}

/// The global per-feature mean and standard deviation pooled from every PDC's feature summary.
///
/// Every `std` entry is finite and positive and every `mean` lies within its feature's bounds; `count` is the
/// pooled noisy number of rows, at least 1.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GlobalStandardization {
    /// The estimated mean of each (clamped) feature.
    pub mean: Vec<f64>,
    /// The estimated population standard deviation of each (clamped) feature.
    pub std: Vec<f64>,
    /// The pooled noisy row count, clamped to at least 1.
    pub count: f64,
}

/// Pools PDCs' feature summaries into a global standardisation (see "Pooling" in the [module
/// documentation](self)); pure post-processing of the releases.
///
/// # Errors
///
/// [`Error::NoSummaries`] for an empty slice; [`Error::FeatureCountMismatch`] or [`Error::FeatureBoundsMismatch`]
/// for the first summary whose features differ from the first summary's (sums over different clamping ranges cannot
/// be pooled).
///
/// ```
/// use pdc_privacy::stats::{FeatureBounds, combine_feature_summaries, release_feature_summary};
///
/// let bounds = [FeatureBounds::new(-10.0, 10.0)?];
/// let hospital_a: Vec<[f64; 1]> = (0..20_000).map(|i| [f64::from(i % 3)]).collect(); // 0, 1, 2, …
/// let hospital_b: Vec<[f64; 1]> = (0..20_000).map(|i| [f64::from(i % 3) + 3.0]).collect(); // 3, 4, 5, …
/// let summaries =
///     [release_feature_summary(&hospital_a, &bounds, 2.0)?, release_feature_summary(&hospital_b, &bounds, 2.0)?];
/// let global = combine_feature_summaries(&summaries)?;
/// // Pooled, the values are 0..=5 with equal frequency: mean 2.5, variance 35/12.
/// assert!((global.mean[0] - 2.5).abs() < 0.05);
/// assert!((global.std[0] - (35.0_f64 / 12.0).sqrt()).abs() < 0.1);
/// # Ok::<(), pdc_privacy::Error>(())
/// ```
pub fn combine_feature_summaries(summaries: &[NoisyFeatureSummary]) -> Result<GlobalStandardization> {
    let first = summaries.first().ok_or(Error::NoSummaries)?;
    let d = first.n_features();
    let mut count = 0.0;
    let mut deviation_sums = vec![0.0; d];
    let mut square_sums = vec![0.0; d];
    for (index, summary) in summaries.iter().enumerate() {
        if summary.n_features() != d {
            return Err(Error::FeatureCountMismatch { summary: index, expected: d, found: summary.n_features() });
        }
        let mismatch = first.bounds.iter().zip(&summary.bounds).enumerate().find(|(_, (a, b))| a != b);
        if let Some((feature, (expected, found))) = mismatch {
            return Err(Error::FeatureBoundsMismatch {
                summary: index,
                feature,
                expected_lower: expected.lower,
                expected_upper: expected.upper,
                found_lower: found.lower,
                found_upper: found.upper,
            });
        }
        count += summary.count;
        for (total, &sum) in deviation_sums.iter_mut().zip(&summary.deviation_sums) {
            *total += sum;
        }
        for (total, &sum) in square_sums.iter_mut().zip(&summary.square_sums) {
            *total += sum;
        }
    }

    // Validated summaries hold finite values, so only a pooled overflow could make this non-finite.
    let count = if count.is_finite() { count.max(1.0) } else { 1.0 };
    let mut mean = Vec::with_capacity(d);
    let mut std = Vec::with_capacity(d);
    for ((bounds, &deviation_sum), &square_sum) in first.bounds.iter().zip(&deviation_sums).zip(&square_sums) {
        let deviation = finite_or(deviation_sum / count, 0.0).clamp(-1.0, 1.0);
        let second_moment = (finite_or(square_sum / count, 1.0) + 1.0) / 2.0;
        let scaled_variance = (second_moment - deviation * deviation).clamp(MIN_SCALED_VARIANCE, 1.0);
        let half_width = bounds.half_width();
        mean.push(bounds.clamp(bounds.centre() + half_width * deviation));
        std.push(half_width * scaled_variance.sqrt());
    }
    Ok(GlobalStandardization { mean, std, count })
}

/// A PDC's noisy cohort counts for a binary label, released by one Gaussian mechanism of L2 sensitivity 1.
///
/// `positives` and `negatives` are the raw noisy releases (possibly negative or fractional); `rows` is their sum.
/// Use [`NoisyCohortCounts::rounded`] for display. Deserialisation checks that the values are finite and consistent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "NoisyCohortCountsFields")]
pub struct NoisyCohortCounts {
    /// The noisy number of rows: `positives + negatives`.
    pub rows: f64,
    /// The noisy number of rows labelled 1.
    pub positives: f64,
    /// The noisy number of rows labelled 0.
    pub negatives: f64,
    noise_multiplier: f64,
}

/// Cohort counts rounded for display: non-negative integers with `rows = positives + negatives`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct RoundedCohortCounts {
    /// `positives + negatives`.
    pub rows: u64,
    /// The noisy number of positives, rounded to the nearest integer and clamped at 0.
    pub positives: u64,
    /// The noisy number of negatives, rounded to the nearest integer and clamped at 0.
    pub negatives: u64,
}

impl NoisyCohortCounts {
    /// Rebuilds a release from the `(positives, negatives)` a PDC sent.
    ///
    /// # Errors
    ///
    /// [`Error::NonPositiveNoiseMultiplier`]; [`Error::MalformedRelease`] for a non-finite count.
    pub fn from_values(noise_multiplier: f64, positives: f64, negatives: f64) -> Result<Self> {
        NoisyCohortCountsFields { rows: positives + negatives, positives, negatives, noise_multiplier }.try_into()
    }

    /// The noise multiplier `z` of the release.
    pub fn noise_multiplier(&self) -> f64 {
        self.noise_multiplier
    }

    /// The L2 sensitivity of (positives, negatives): 1, rounded up by a relative 2⁻⁴⁰ like every sensitivity here.
    pub fn sensitivity(&self) -> f64 {
        COHORT_SENSITIVITY
    }

    /// The standard deviation `z` of the noise on `positives` and on `negatives` (`rows` has `√2` times as much).
    pub fn noise_std(&self) -> f64 {
        noise_scale(self.noise_multiplier, COHORT_SENSITIVITY)
    }

    /// What the releasing PDC's accountant must record for this release.
    pub fn privacy_cost(&self) -> PrivacyCost {
        PrivacyCost { noise_multiplier: self.noise_multiplier }
    }

    /// The release's zCDP ρ by OpenDP's privacy map: at most `1/(2z²)`.
    ///
    /// # Errors
    ///
    /// [`Error::OpenDp`] if OpenDP refuses the measurement.
    pub fn zcdp_rho(&self) -> Result<f64> {
        exact::zcdp_rho(self.noise_std(), COHORT_SENSITIVITY)
    }

    /// The release's ε at `delta`, by OpenDP's zCDP → (ε, δ) conversion (see [`NoisyFeatureSummary::epsilon`]).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidDelta`] unless `0 < delta < 1`; [`Error::OpenDp`] if OpenDP refuses the measurement.
    pub fn epsilon(&self, delta: f64) -> Result<f64> {
        exact::epsilon(self.noise_std(), COHORT_SENSITIVITY, delta)
    }

    /// The counts rounded to non-negative integers for display (post-processing; the raw values stay available).
    ///
    /// Positives and negatives are rounded to the nearest integer and clamped at 0; `rows` is their sum, so the
    /// rounded counts stay consistent.
    pub fn rounded(&self) -> RoundedCohortCounts {
        // `as` saturates: a negative count becomes 0 (after `max`) and a huge one u64::MAX.
        let positives = self.positives.round().max(0.0) as u64;
        let negatives = self.negatives.round().max(0.0) as u64;
        RoundedCohortCounts { rows: positives.saturating_add(negatives), positives, negatives }
    }
}

/// Releases a PDC's noisy cohort counts for binary `labels` (each exactly 0 or 1): the vector (positives,
/// negatives) through one exact Gaussian mechanism with noise std `noise_multiplier` (its sensitivity is 1, see the
/// [module documentation](self)).
///
/// The caller charges the PDC's budget beforehand with [`PrivacyCost::gaussian`]`(noise_multiplier)`.
///
/// # Errors
///
/// [`Error::NonPositiveNoiseMultiplier`] unless `noise_multiplier` is finite and positive; [`Error::InvalidLabel`]
/// for the first label that is not 0 or 1; [`Error::OpenDp`] if OpenDP refuses the measurement or cannot draw
/// randomness.
///
/// ```
/// let labels = [1.0, 0.0, 0.0, 1.0, 1.0];
/// let counts = pdc_privacy::stats::release_cohort_counts(&labels, 0.5)?;
/// assert_eq!(counts.rows, counts.positives + counts.negatives);
/// assert!((counts.positives - 3.0).abs() < 5.0);
/// # Ok::<(), pdc_privacy::Error>(())
/// ```
pub fn release_cohort_counts(labels: &[f64], noise_multiplier: f64) -> Result<NoisyCohortCounts> {
    check_noise_multiplier(noise_multiplier)?;
    let mut released = exact_cohort_counts(labels)?.to_vec();
    exact::add_exact_f64(&mut released, noise_scale(noise_multiplier, COHORT_SENSITIVITY))?;
    let (positives, negatives) = (released[0], released[1]);
    Ok(NoisyCohortCounts { rows: positives + negatives, positives, negatives, noise_multiplier })
}

/// Feature contributions are rounded to multiples of 2⁻²⁰, so sums of them are exact.
const QUANTUM_BITS: u32 = 20;

/// 2²⁰: one unit of a feature contribution, in grid steps.
const QUANTA_PER_UNIT: i64 = 1 << QUANTUM_BITS;

/// The cohort counts' L2 sensitivity, 1, with the same upward margin as every sensitivity here.
const COHORT_SENSITIVITY: f64 = NOISE_MARGIN;

/// The exact released vector `[count, Σa₁, …, Σa_d, Σb₁, …, Σb_d]` of a feature summary, before noise.
fn exact_feature_statistics<R: AsRef<[f64]>>(rows: &[R], bounds: &[FeatureBounds]) -> Result<Vec<f64>> {
    if bounds.is_empty() {
        return Err(Error::NoFeatures);
    }
    if rows.len() as u64 > MAX_ROWS {
        return Err(Error::TooManyRows { rows: rows.len(), max_rows: MAX_ROWS });
    }
    let d = bounds.len();
    // Sums in grid steps: |total| ≤ MAX_ROWS · 2²⁰ = 2⁵³, far from i64's limit and exact when converted to f64.
    let mut totals = vec![0_i64; 2 * d];
    for (row_index, row) in rows.iter().enumerate() {
        let row = row.as_ref();
        if row.len() != d {
            return Err(Error::RowLengthMismatch { row: row_index, expected: d, found: row.len() });
        }
        for (feature, (&value, bounds)) in row.iter().zip(bounds).enumerate() {
            if !value.is_finite() {
                return Err(Error::NonFiniteFeature { row: row_index, feature, value });
            }
            let (deviation, square) = contribution(value, bounds);
            totals[feature] += deviation;
            totals[d + feature] += square;
        }
    }
    let unit = QUANTA_PER_UNIT as f64;
    let mut statistics = Vec::with_capacity(1 + 2 * d);
    statistics.push(rows.len() as f64);
    statistics.extend(totals.iter().map(|&total| total as f64 / unit));
    Ok(statistics)
}

/// One finite value's contribution `(a, b)` to the deviation and square sums, in grid steps of 2⁻²⁰, each within
/// `[−2²⁰, 2²⁰]` (i.e. within `[−1, 1]`): the sensitivity proof rests on that range, so it is enforced by clamping
/// after every rounding.
fn contribution(value: f64, bounds: &FeatureBounds) -> (i64, i64) {
    let unit = QUANTA_PER_UNIT as f64;
    let scaled = (bounds.clamp(value) - bounds.centre()) / bounds.half_width();
    let deviation = ((scaled * unit).round() as i64).clamp(-QUANTA_PER_UNIT, QUANTA_PER_UNIT);
    // a = deviation / 2²⁰ exactly, so 2a² − 1 is computed exactly (its numerator has at most 41 bits).
    let a = deviation as f64 / unit;
    let square = (((2.0 * a * a - 1.0) * unit).round() as i64).clamp(-QUANTA_PER_UNIT, QUANTA_PER_UNIT);
    (deviation, square)
}

/// The exact (positives, negatives) of binary labels.
fn exact_cohort_counts(labels: &[f64]) -> Result<[f64; 2]> {
    let mut positives = 0_u64;
    for (index, &value) in labels.iter().enumerate() {
        if value == 1.0 {
            positives += 1;
        } else if value != 0.0 {
            return Err(Error::InvalidLabel { index, value });
        }
    }
    // Exact for any slice that fits in memory (fewer than 2⁵³ labels).
    Ok([positives as f64, (labels.len() as u64 - positives) as f64])
}

/// The noise scale `noise_multiplier × sensitivity`, rounded up so that it is never below the exact product.
fn noise_scale(noise_multiplier: f64, sensitivity: f64) -> f64 {
    noise_multiplier * sensitivity * NOISE_MARGIN
}

fn check_noise_multiplier(noise_multiplier: f64) -> Result<()> {
    if noise_multiplier.is_finite() && noise_multiplier > 0.0 {
        Ok(())
    } else {
        Err(Error::NonPositiveNoiseMultiplier { noise_multiplier })
    }
}

fn finite_or(value: f64, fallback: f64) -> f64 {
    if value.is_finite() { value } else { fallback }
}

/// The serialised form of [`FeatureBounds`], validated on the way in.
#[derive(Deserialize)]
struct FeatureBoundsFields {
    lower: f64,
    upper: f64,
}

impl TryFrom<FeatureBoundsFields> for FeatureBounds {
    type Error = Error;

    fn try_from(fields: FeatureBoundsFields) -> Result<Self> {
        Self::new(fields.lower, fields.upper)
    }
}

/// The serialised form of [`NoisyFeatureSummary`], validated on the way in.
#[derive(Deserialize)]
struct NoisyFeatureSummaryFields {
    bounds: Vec<FeatureBounds>,
    noise_multiplier: f64,
    count: f64,
    deviation_sums: Vec<f64>,
    square_sums: Vec<f64>,
}

impl TryFrom<NoisyFeatureSummaryFields> for NoisyFeatureSummary {
    type Error = Error;

    fn try_from(fields: NoisyFeatureSummaryFields) -> Result<Self> {
        let d = fields.bounds.len();
        if d == 0 {
            return Err(Error::NoFeatures);
        }
        check_noise_multiplier(fields.noise_multiplier)?;
        for (name, values) in [("deviation_sums", &fields.deviation_sums), ("square_sums", &fields.square_sums)] {
            if values.len() != d {
                return Err(malformed(format!("{name} has {} values for {d} features", values.len())));
            }
        }
        let values = std::iter::once(&fields.count).chain(&fields.deviation_sums).chain(&fields.square_sums);
        if let Some(value) = values.into_iter().find(|v| !v.is_finite()) {
            return Err(malformed(format!("released value {value} is not finite")));
        }
        Ok(Self {
            bounds: fields.bounds,
            noise_multiplier: fields.noise_multiplier,
            count: fields.count,
            deviation_sums: fields.deviation_sums,
            square_sums: fields.square_sums,
        })
    }
}

/// The serialised form of [`NoisyCohortCounts`], validated on the way in.
#[derive(Deserialize)]
struct NoisyCohortCountsFields {
    rows: f64,
    positives: f64,
    negatives: f64,
    noise_multiplier: f64,
}

impl TryFrom<NoisyCohortCountsFields> for NoisyCohortCounts {
    type Error = Error;

    fn try_from(fields: NoisyCohortCountsFields) -> Result<Self> {
        check_noise_multiplier(fields.noise_multiplier)?;
        let NoisyCohortCountsFields { rows, positives, negatives, noise_multiplier } = fields;
        if let Some(value) = [rows, positives, negatives].into_iter().find(|v| !v.is_finite()) {
            return Err(malformed(format!("released count {value} is not finite")));
        }
        if rows != positives + negatives {
            return Err(malformed(format!("rows {rows} is not positives {positives} + negatives {negatives}")));
        }
        Ok(Self { rows, positives, negatives, noise_multiplier })
    }
}

fn malformed(reason: String) -> Error {
    Error::MalformedRelease { reason }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha20Rng;
    use rand_distr::Normal;

    use super::*;
    use crate::accountant::{PldAccountant, RdpAccountant};

    fn bounds(lower: f64, upper: f64) -> FeatureBounds {
        FeatureBounds::new(lower, upper).unwrap()
    }

    /// Exact population mean and standard deviation of each column of `rows`, after clamping, in f64.
    fn exact_moments(rows: &[Vec<f64>], bounds: &[FeatureBounds]) -> (Vec<f64>, Vec<f64>) {
        let n = rows.len() as f64;
        let column = |j: usize| rows.iter().map(move |row| bounds[j].clamp(row[j]));
        let mean: Vec<f64> = (0..bounds.len()).map(|j| column(j).sum::<f64>() / n).collect();
        let std =
            (0..bounds.len()).map(|j| (column(j).map(|x| (x - mean[j]).powi(2)).sum::<f64>() / n).sqrt()).collect();
        (mean, std)
    }

    /// The L2 norm of one row's contribution vector v(x), in units (not grid steps).
    fn contribution_norm(row: &[f64], bounds: &[FeatureBounds]) -> f64 {
        let unit = QUANTA_PER_UNIT as f64;
        let squares: f64 = row
            .iter()
            .zip(bounds)
            .map(|(&x, b)| {
                let (a, s) = contribution(x, b);
                (a as f64 / unit).powi(2) + (s as f64 / unit).powi(2)
            })
            .sum();
        (1.0 + squares).sqrt()
    }

    #[test]
    fn feature_bounds_validation() {
        let age = bounds(18.0, 90.0);
        assert_eq!((age.lower(), age.upper()), (18.0, 90.0));
        assert_eq!((age.clamp(-3.0), age.clamp(50.0), age.clamp(1e9)), (18.0, 50.0, 90.0));
        for (lower, upper) in [
            (1.0, 1.0),
            (2.0, 1.0),
            (f64::NEG_INFINITY, 0.0),
            (0.0, f64::INFINITY),
            (0.0, 5e-324), // half-width rounds to zero
        ] {
            assert_eq!(FeatureBounds::new(lower, upper), Err(Error::InvalidFeatureBounds { lower, upper }));
        }
        assert!(FeatureBounds::new(f64::NAN, 1.0).is_err());
        assert!(FeatureBounds::new(0.0, f64::NAN).is_err());
        // The widest finite range is fine: centre and half-width are formed without overflow.
        let widest = bounds(-f64::MAX, f64::MAX);
        assert_eq!((widest.centre(), widest.half_width()), (0.0, f64::MAX));
    }

    #[test]
    fn releases_rebuild_from_their_flat_values() {
        let box2 = [bounds(0.0, 10.0), bounds(-1.0, 1.0)];
        let rows = [[1.0, 0.5], [9.0, -0.25], [4.0, 0.0]];
        let summary = release_feature_summary(&rows, &box2, 3.0).unwrap();
        let values = summary.values();
        assert_eq!(values.len(), 5);
        assert_eq!(NoisyFeatureSummary::from_values(&box2, 3.0, &values).unwrap(), summary);
        let short = NoisyFeatureSummary::from_values(&box2, 3.0, &values[..4]).unwrap_err().to_string();
        assert!(short.contains("4 released values for 2 features; expected 5"), "{short}");
        let mut bad = values.clone();
        bad[3] = f64::NAN;
        assert!(NoisyFeatureSummary::from_values(&box2, 3.0, &bad).is_err());
        assert!(NoisyFeatureSummary::from_values(&box2, 0.0, &values).is_err());
        assert_eq!(NoisyFeatureSummary::from_values(&[], 3.0, &[1.0]), Err(Error::NoFeatures));

        let counts = release_cohort_counts(&[1.0, 0.0, 1.0], 2.0).unwrap();
        assert_eq!(NoisyCohortCounts::from_values(2.0, counts.positives, counts.negatives).unwrap(), counts);
        assert!(NoisyCohortCounts::from_values(2.0, f64::INFINITY, 1.0).is_err());
    }

    #[test]
    fn hand_computed_statistics_and_moments() {
        // One feature in [0, 10]: centre 5, half-width 5. Values 0, 5, 10, 2.5 give a = −1, 0, 1, −0.5 and
        // b = 2a² − 1 = 1, −1, 1, −0.5.
        let rows = [[0.0], [5.0], [10.0], [2.5]];
        let statistics = exact_feature_statistics(&rows, &[bounds(0.0, 10.0)]).unwrap();
        assert_eq!(statistics, [4.0, -0.5, 0.5]);

        // Released with negligible noise, the pooled moments are the exact ones: mean 4.375 and population
        // variance 54.6875 / 4 = 13.671875.
        let summary = release_feature_summary(&rows, &[bounds(0.0, 10.0)], 1e-9).unwrap();
        let global = combine_feature_summaries(&[summary]).unwrap();
        assert!((global.mean[0] - 4.375).abs() < 1e-6, "{global:?}");
        assert!((global.std[0] - 13.671875_f64.sqrt()).abs() < 1e-6, "{global:?}");
        assert!((global.count - 4.0).abs() < 1e-6);
    }

    #[test]
    fn values_outside_the_bounds_are_clamped() {
        let features = [bounds(-1.0, 1.0), bounds(100.0, 200.0)];
        let wild = [vec![-7.0, 1e300], vec![0.25, -1e300], vec![3.0, 150.0]];
        let tame = [vec![-1.0, 200.0], vec![0.25, 100.0], vec![1.0, 150.0]];
        assert_eq!(
            exact_feature_statistics(&wild, &features).unwrap(),
            exact_feature_statistics(&tame, &features).unwrap()
        );
        // Clamped rows: feature 0 is −1, 0.25, 1 → a = −1, 0.25, 1; feature 1 is 200, 100, 150 → a = 1, −1, 0.
        assert_eq!(exact_feature_statistics(&wild, &features).unwrap(), [3.0, 0.25, 0.0, 1.0 + -0.875 + 1.0, 1.0]);
    }

    #[test]
    fn sensitivity_is_attained_at_the_corners_and_bounds_every_row() {
        for d in [1, 2, 4, 7] {
            assert!((feature_summary_sensitivity(d) - (1.0 + 2.0 * d as f64).sqrt()).abs() < 1e-11);
            assert!(feature_summary_sensitivity(d) >= (1.0 + 2.0 * d as f64).sqrt());
        }
        let features = [bounds(-3.0, 1.0), bounds(10.0, 20.0), bounds(0.0, 1e-3)];
        let corner = [1.0, 10.0, 1e-3];
        assert_eq!(contribution_norm(&corner, &features), 7.0_f64.sqrt());
        // The centre of the box contributes (1, 0, 0, 0, −1, −1, −1).
        assert_eq!(contribution_norm(&[-1.0, 15.0, 5e-4], &features), 2.0);
    }

    #[test]
    fn large_data_with_little_noise_gives_the_exact_pooled_moments() {
        let features = [bounds(18.0, 90.0), bounds(40.0, 250.0), bounds(-5.0, 5.0)];
        let mut rng = ChaCha20Rng::seed_from_u64(11);
        // Three hospitals with different populations; some values fall outside the bounds and are clamped.
        let hospitals: Vec<Vec<Vec<f64>>> = [(45.0, 120.0, 0.0), (70.0, 150.0, 2.0), (30.0, 110.0, -4.0)]
            .into_iter()
            .map(|(age, pressure, score)| {
                let (age, pressure, score) = (
                    Normal::new(age, 15.0).unwrap(),
                    Normal::new(pressure, 30.0).unwrap(),
                    Normal::new(score, 2.0).unwrap(),
                );
                (0..20_000).map(|_| vec![rng.sample(age), rng.sample(pressure), rng.sample(score)]).collect()
            })
            .collect();
        let summaries: Vec<_> =
            hospitals.iter().map(|rows| release_feature_summary(rows, &features, 0.05).unwrap()).collect();
        let global = combine_feature_summaries(&summaries).unwrap();

        let pooled: Vec<Vec<f64>> = hospitals.concat();
        let (mean, std) = exact_moments(&pooled, &features);
        assert!((global.count - 60_000.0).abs() < 1.0, "count {}", global.count);
        for j in 0..features.len() {
            // Noise on the mean is ≈ r·z·Δ·√3/n ≈ 4e-5·r; the 2⁻²⁰ grid adds ≈ 1e-6·r.
            let half_width = features[j].half_width();
            assert!((global.mean[j] - mean[j]).abs() < 1e-3 * half_width, "feature {j}: {global:?} vs {mean:?}");
            assert!((global.std[j] / std[j] - 1.0).abs() < 1e-3, "feature {j}: {global:?} vs {std:?}");
        }
    }

    #[test]
    fn noise_std_is_noise_multiplier_times_sensitivity() {
        // 2000 releases of a 5-entry vector: each entry's sample variance has relative standard error
        // √(2/2000) ≈ 3.2 %, the pooled one √(2/10000) ≈ 1.4 %; the bounds below are about 4.5 and 5 sigma.
        let features = [bounds(0.0, 1.0), bounds(-2.0, 2.0)];
        let rows = [vec![0.2, -1.0], vec![0.9, 0.5], vec![0.4, 2.0]];
        let exact = exact_feature_statistics(&rows, &features).unwrap();
        let noise_multiplier = 1.7;
        let releases = 2000;
        let mut sum_squares = [0.0; 5];
        for _ in 0..releases {
            let summary = release_feature_summary(&rows, &features, noise_multiplier).unwrap();
            let released = std::iter::once(summary.count())
                .chain(summary.deviation_sums().iter().copied())
                .chain(summary.square_sums().iter().copied());
            for (total, (noisy, exact)) in sum_squares.iter_mut().zip(released.zip(&exact)) {
                *total += (noisy - exact).powi(2);
            }
        }
        let expected_variance = (noise_multiplier * 5.0_f64.sqrt()).powi(2);
        for (entry, total) in sum_squares.iter().enumerate() {
            let ratio = total / releases as f64 / expected_variance;
            assert!((ratio - 1.0).abs() < 0.15, "entry {entry}: variance ratio {ratio}");
        }
        let pooled = sum_squares.iter().sum::<f64>() / (5 * releases) as f64 / expected_variance;
        assert!((pooled - 1.0).abs() < 0.07, "pooled variance ratio {pooled}");
    }

    #[test]
    fn summary_reports_its_parameters_and_privacy() {
        let summary = release_feature_summary(&[[1.0, 2.0]], &[bounds(0.0, 2.0), bounds(0.0, 4.0)], 2.0).unwrap();
        assert_eq!(summary.n_features(), 2);
        assert_eq!(summary.noise_multiplier(), 2.0);
        assert!((summary.sensitivity() - 5.0_f64.sqrt()).abs() < 1e-11);
        assert!((summary.noise_std() - 2.0 * 5.0_f64.sqrt()).abs() < 1e-11);
        assert!(summary.noise_std() >= 2.0 * summary.sensitivity());
        assert_eq!(summary.privacy_cost(), PrivacyCost::gaussian(2.0).unwrap());
        // ρ = Δ²/(2σ²) = 1/(2z²) = 0.125, a hair below for the margins: never above.
        let rho = summary.zcdp_rho().unwrap();
        assert!(rho <= 0.125 && rho > 0.125 * (1.0 - 1e-11), "rho {rho}");
        assert_eq!(summary.epsilon(0.0), Err(Error::InvalidDelta { delta: 0.0 }));
        assert_eq!(summary.epsilon(1.0), Err(Error::InvalidDelta { delta: 1.0 }));
    }

    #[test]
    fn opendp_epsilon_agrees_with_the_accountants() {
        // OpenDP converts ρ to ε minimising over every real order; RDP does the same conversion on its grid of
        // orders, so it is never below OpenDP and only slightly above; PLD is near-exact and below both.
        for noise_multiplier in [0.8, 1.0, 2.0, 5.0, 10.0] {
            let summary = release_feature_summary(&[[0.5]], &[bounds(0.0, 1.0)], noise_multiplier).unwrap();
            let counts = release_cohort_counts(&[1.0, 0.0], noise_multiplier).unwrap();
            for delta in [1e-5, 1e-7] {
                let opendp = summary.epsilon(delta).unwrap();
                assert!((counts.epsilon(delta).unwrap() / opendp - 1.0).abs() < 1e-9);
                let mut rdp = RdpAccountant::new();
                summary.privacy_cost().record(&mut rdp);
                let rdp = rdp.epsilon(delta).unwrap();
                let mut pld = PldAccountant::new();
                counts.privacy_cost().record(&mut pld);
                let pld = pld.epsilon(delta).unwrap();
                let case = format!("z = {noise_multiplier}, δ = {delta:e}: OpenDP {opendp}, RDP {rdp}, PLD {pld}");
                assert!(rdp >= opendp, "{case}");
                assert!(rdp <= opendp * (1.0 + 2e-3), "{case}");
                assert!(pld <= opendp, "{case}");
            }
        }
    }

    #[test]
    fn release_refuses_bad_inputs() {
        let features = [bounds(0.0, 1.0), bounds(0.0, 1.0)];
        for noise_multiplier in [0.0, -1.0, f64::INFINITY] {
            assert_eq!(
                release_feature_summary(&[[0.5, 0.5]], &features, noise_multiplier),
                Err(Error::NonPositiveNoiseMultiplier { noise_multiplier })
            );
            assert_eq!(
                release_cohort_counts(&[1.0], noise_multiplier),
                Err(Error::NonPositiveNoiseMultiplier { noise_multiplier })
            );
            assert_eq!(
                PrivacyCost::gaussian(noise_multiplier),
                Err(Error::NonPositiveNoiseMultiplier { noise_multiplier })
            );
        }
        assert!(matches!(
            release_feature_summary(&[[0.5, 0.5]], &features, f64::NAN),
            Err(Error::NonPositiveNoiseMultiplier { .. })
        ));
        assert_eq!(release_feature_summary(&[[0.5; 0]], &[], 1.0), Err(Error::NoFeatures));
        assert_eq!(
            release_feature_summary(&[vec![0.5, 0.5], vec![0.5]], &features, 1.0),
            Err(Error::RowLengthMismatch { row: 1, expected: 2, found: 1 })
        );
        assert_eq!(
            release_feature_summary(&[[0.5, 0.5], [0.1, f64::NEG_INFINITY]], &features, 1.0),
            Err(Error::NonFiniteFeature { row: 1, feature: 1, value: f64::NEG_INFINITY })
        );
        assert!(matches!(
            release_feature_summary(&[[f64::NAN, 0.5]], &features, 1.0),
            Err(Error::NonFiniteFeature { row: 0, feature: 0, value }) if value.is_nan()
        ));
    }

    #[test]
    fn an_empty_table_is_a_valid_release() {
        let summary = release_feature_summary(&[[0.0; 1]; 0], &[bounds(0.0, 1.0)], 1.0).unwrap();
        let global = combine_feature_summaries(&[summary]).unwrap();
        assert!(global.count >= 1.0);
        assert!(global.std[0] > 0.0 && global.mean[0] >= 0.0 && global.mean[0] <= 1.0, "{global:?}");
    }

    #[test]
    fn combining_refuses_mismatched_summaries() {
        assert_eq!(combine_feature_summaries(&[]), Err(Error::NoSummaries));
        let one = release_feature_summary(&[[0.5]], &[bounds(0.0, 1.0)], 1.0).unwrap();
        let two = release_feature_summary(&[[0.5, 0.5]], &[bounds(0.0, 1.0), bounds(0.0, 1.0)], 1.0).unwrap();
        assert_eq!(
            combine_feature_summaries(&[two.clone(), two.clone(), one.clone()]),
            Err(Error::FeatureCountMismatch { summary: 2, expected: 2, found: 1 })
        );
        let other = release_feature_summary(&[[0.5, 0.5]], &[bounds(0.0, 1.0), bounds(0.0, 2.0)], 1.0).unwrap();
        assert_eq!(
            combine_feature_summaries(&[two, other]),
            Err(Error::FeatureBoundsMismatch {
                summary: 1,
                feature: 1,
                expected_lower: 0.0,
                expected_upper: 1.0,
                found_lower: 0.0,
                found_upper: 2.0,
            })
        );
    }

    #[test]
    fn pooled_estimates_are_clamped_into_range() {
        // Hand-made summaries whose noise pushed every estimate out of range.
        let make = |count: f64, deviation: f64, square: f64| NoisyFeatureSummary {
            bounds: vec![bounds(10.0, 20.0)],
            noise_multiplier: 1.0,
            count,
            deviation_sums: vec![deviation],
            square_sums: vec![square],
        };
        // A negative count is clamped to 1; a deviation beyond the box puts the mean on its edge; a negative
        // variance is floored.
        let global = combine_feature_summaries(&[make(-3.0, 5.0, -10.0)]).unwrap();
        assert_eq!(global.count, 1.0);
        assert_eq!(global.mean, [20.0]);
        assert_eq!(global.std, [5.0 * MIN_SCALED_VARIANCE.sqrt()]);
        // A variance above the largest possible is capped at the half-width squared.
        let global = combine_feature_summaries(&[make(2.0, 0.0, 50.0)]).unwrap();
        assert_eq!((global.mean[0], global.std[0]), (15.0, 5.0));
        // Pooling adds the parts: (2 + 2) rows, Σa = 1 + 1, Σb = 0 + 0 → ā = ½, E[a²] = ½, var = r²·¼.
        let global = combine_feature_summaries(&[make(2.0, 1.0, 0.0), make(2.0, 1.0, 0.0)]).unwrap();
        assert_eq!((global.count, global.mean[0], global.std[0]), (4.0, 17.5, 2.5));
    }

    #[test]
    fn cohort_counts_hand_computed_and_rounded() {
        let labels = [1.0, 0.0, 1.0, 1.0, 0.0, 1.0, 1.0];
        assert_eq!(exact_cohort_counts(&labels).unwrap(), [5.0, 2.0]);
        assert_eq!(exact_cohort_counts(&[]).unwrap(), [0.0, 0.0]);

        let counts = release_cohort_counts(&labels, 1e-6).unwrap();
        assert!((counts.positives - 5.0).abs() < 1e-4 && (counts.negatives - 2.0).abs() < 1e-4, "{counts:?}");
        assert_eq!(counts.rows, counts.positives + counts.negatives);
        assert_eq!(counts.rounded(), RoundedCohortCounts { rows: 7, positives: 5, negatives: 2 });
        assert_eq!(counts.noise_multiplier(), 1e-6);
        assert!(counts.sensitivity() >= 1.0 && counts.sensitivity() < 1.0 + 1e-11);

        let noisy = NoisyCohortCounts { rows: 0.5 - 3.6, positives: 0.5, negatives: -3.6, noise_multiplier: 1.0 };
        assert_eq!(noisy.rounded(), RoundedCohortCounts { rows: 1, positives: 1, negatives: 0 });
        let rho = noisy.zcdp_rho().unwrap();
        assert!(rho <= 0.5 && rho > 0.5 * (1.0 - 1e-11), "rho {rho}");
    }

    #[test]
    fn cohort_labels_must_be_binary() {
        for (value, index) in [(0.5, 2), (-1.0, 2), (f64::INFINITY, 2), (2.0, 2)] {
            assert_eq!(release_cohort_counts(&[0.0, 1.0, value, 0.3], 1.0), Err(Error::InvalidLabel { index, value }));
        }
        assert!(matches!(
            release_cohort_counts(&[f64::NAN], 1.0),
            Err(Error::InvalidLabel { index: 0, value }) if value.is_nan()
        ));
        // −0.0 == 0.0: a negative zero is a 0 label.
        assert!(release_cohort_counts(&[-0.0], 1.0).is_ok());
    }

    #[test]
    fn cohort_noise_std_is_the_noise_multiplier() {
        // 3000 releases of 2 counts: the pooled variance has relative standard error √(2/6000) ≈ 1.8 %.
        let labels: Vec<f64> = (0..50).map(|i| f64::from(i % 3 == 0)).collect();
        let [positives, negatives] = exact_cohort_counts(&labels).unwrap();
        let noise_multiplier = 2.5;
        let (mut squares, mut row_squares) = (0.0, 0.0);
        let releases = 3000;
        for _ in 0..releases {
            let counts = release_cohort_counts(&labels, noise_multiplier).unwrap();
            squares += (counts.positives - positives).powi(2) + (counts.negatives - negatives).powi(2);
            row_squares += (counts.rows - 50.0).powi(2);
        }
        let ratio = squares / (2 * releases) as f64 / noise_multiplier.powi(2);
        assert!((ratio - 1.0).abs() < 0.09, "variance ratio {ratio}");
        // rows = positives + negatives carries twice the variance (4.4 % standard error).
        let ratio = row_squares / releases as f64 / (2.0 * noise_multiplier.powi(2));
        assert!((ratio - 1.0).abs() < 0.2, "row variance ratio {ratio}");
    }

    #[test]
    fn privacy_cost_charges_a_budget_before_the_release() {
        let mut budget = crate::Budget::new(crate::PrivacyBudget::new(1.0, 1e-6).unwrap());
        let mut accountant = RdpAccountant::new();
        let cost = PrivacyCost::gaussian(10.0).unwrap();
        assert_eq!(cost.noise_multiplier(), 10.0);
        let spent = budget.try_spend(&mut accountant, |a| cost.record(a)).unwrap();
        let mut direct = RdpAccountant::new();
        direct.compose_gaussian(10.0, 1);
        assert_eq!(spent, direct.epsilon(1e-6).unwrap());
        // A release at z = 1 would cost ε ≈ 5.8: refused, nothing spent.
        let result = budget.try_spend(&mut accountant, |a| PrivacyCost::gaussian(1.0).unwrap().record(a));
        assert!(matches!(result, Err(Error::BudgetExceeded { .. })), "{result:?}");
        assert_eq!(budget.spent_epsilon(), spent);
    }

    #[test]
    fn serde_round_trips_and_validates() {
        let summary = release_feature_summary(&[[0.5, 3.0]], &[bounds(0.0, 1.0), bounds(-4.0, 4.0)], 1.5).unwrap();
        let json = serde_json::to_string(&summary).unwrap();
        let back: NoisyFeatureSummary = serde_json::from_str(&json).unwrap();
        assert_eq!(back.bounds(), summary.bounds());
        assert_eq!(back.noise_multiplier(), 1.5);
        assert!((back.count() - summary.count()).abs() <= 1e-12 * summary.count().abs().max(1.0));

        let valid = r#"{"bounds":[{"lower":0.0,"upper":1.0}],"noise_multiplier":1.0,"count":3.5,
            "deviation_sums":[0.5],"square_sums":[-1.0]}"#;
        let parsed: NoisyFeatureSummary = serde_json::from_str(valid).unwrap();
        assert_eq!((parsed.count(), parsed.deviation_sums(), parsed.square_sums()), (3.5, &[0.5][..], &[-1.0][..]));
        for (json, expected) in [
            (valid.replace(r#""upper":1.0"#, r#""upper":0.0"#), "feature bounds"),
            (valid.replace(r#""noise_multiplier":1.0"#, r#""noise_multiplier":0.0"#), "positive noise multiplier"),
            (valid.replace("[0.5]", "[0.5, 1.0]"), "deviation_sums has 2 values for 1 features"),
            (valid.replace(r#""bounds":[{"lower":0.0,"upper":1.0}]"#, r#""bounds":[]"#), "at least one feature"),
        ] {
            let error = serde_json::from_str::<NoisyFeatureSummary>(&json).unwrap_err().to_string();
            assert!(error.contains(expected), "{error}");
        }

        let counts = NoisyCohortCounts { rows: 5.5, positives: 2.25, negatives: 3.25, noise_multiplier: 2.0 };
        let json = serde_json::to_string(&counts).unwrap();
        assert_eq!(json, r#"{"rows":5.5,"positives":2.25,"negatives":3.25,"noise_multiplier":2.0}"#);
        assert_eq!(serde_json::from_str::<NoisyCohortCounts>(&json).unwrap(), counts);
        let inconsistent = json.replace("5.5", "6.0");
        let error = serde_json::from_str::<NoisyCohortCounts>(&inconsistent).unwrap_err().to_string();
        assert!(error.contains("rows 6 is not positives 2.25 + negatives 3.25"), "{error}");
        assert!(serde_json::from_str::<FeatureBounds>(r#"{"lower":2.0,"upper":1.0}"#).is_err());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn every_contribution_is_within_the_unit_box(
            value in prop_oneof![-1e6_f64..1e6, Just(f64::MAX), Just(-f64::MAX), Just(0.0)],
            lower in -1e3_f64..1e3,
            width in 1e-9_f64..1e4,
        ) {
            let bounds = FeatureBounds::new(lower, lower + width).unwrap();
            let (deviation, square) = contribution(value, &bounds);
            prop_assert!(deviation.abs() <= QUANTA_PER_UNIT && square.abs() <= QUANTA_PER_UNIT);
            prop_assert!(contribution_norm(&[value], &[bounds]) <= feature_summary_sensitivity(1));
        }

        #[test]
        fn pooled_standardization_is_always_usable(
            tables in prop::collection::vec(
                prop::collection::vec(prop::collection::vec(-50.0_f64..50.0, 2), 0..6), 1..4),
            noise_multiplier in prop_oneof![Just(1e-3), 0.5_f64..200.0],
        ) {
            let features = [bounds(-10.0, 10.0), bounds(0.0, 30.0)];
            let summaries: Vec<_> = tables
                .iter()
                .map(|rows| release_feature_summary(rows, &features, noise_multiplier).unwrap())
                .collect();
            let global = combine_feature_summaries(&summaries).unwrap();
            prop_assert!(global.count >= 1.0 && global.count.is_finite());
            for (j, bounds) in features.iter().enumerate() {
                prop_assert!(global.mean[j] >= bounds.lower() && global.mean[j] <= bounds.upper());
                prop_assert!(global.std[j].is_finite() && global.std[j] > 0.0);
                prop_assert!(global.std[j] <= bounds.half_width());
            }
        }
    }
}
