//! Central DP for a trusted coordinator: DP-FedAvg (McMahan et al. 2018, "Learning Differentially Private
//! Recurrent Language Models") with optional adaptive clipping (Andrew et al. 2021, "Differentially Private Learning
//! with Adaptive Clipping").
//!
//! Each round, [`CentralDp::aggregate`] clips every PDC's update to the L2 norm `S`, sums the clipped updates, adds
//! N(0, (z_Δ·S)²) noise to every coordinate of the sum and divides by the number of updates `n`. With
//! [`AdaptiveClipping`] it also releases the noisy fraction of updates that needed no clipping,
//! `b̄ = (Σᵢ 1[‖Δᵢ‖ ≤ S] + N(0, σ_b²)) / n`, and moves the clip norm geometrically toward the target quantile γ of
//! the update norms: `S ← S · exp(−η_C (b̄ − γ))`.
//!
//! # The privacy guarantee
//!
//! The unit of privacy is a **PDC** (user-level DP in the papers' terms): neighbouring inputs differ by adding or
//! removing one PDC's whole update. Clipping bounds the sum's L2 sensitivity by `S`; the count
//! `Σᵢ 1[‖Δᵢ‖ ≤ S]` is released as `Σᵢ (1[‖Δᵢ‖ ≤ S] − ½) + N(0, σ_b²)`, whose sensitivity is `½`, and `n/2` is
//! added back afterwards, which gives exactly the `b̄` above. The two Gaussian releases of one round together are
//! the Gaussian mechanism with noise multiplier `z` when `z_Δ⁻² + (2σ_b)⁻² = z⁻²` (Andrew et al., Theorem 1), so
//!
//! ```text
//! z_Δ = (z⁻² − (2σ_b)⁻²)^(−1/2),
//! ```
//!
//! which exists only when `2σ_b > z`; without adaptive clipping `z_Δ = z`. [`CentralDp::record_round`] charges a
//! round as one Gaussian (or Poisson-subsampled Gaussian) step with noise multiplier `z`.
//!
//! **Participation is public.** The mean is divided by the actual number of updates `n` and the coordinator learns
//! (and records on the ledger) which PDCs took part, so what is protected is the *content* of each PDC's update,
//! not whether it participated: DP with fixed, public participation. McMahan et al. divide by the expected number
//! of participants instead, to hide participation under Poisson sampling; pdc does not claim that.
//!
//! The noise is slightly larger than `z_Δ·S`, never smaller: the sum is accumulated in `f64` in a fixed order,
//! and adding or removing one update can change the rounded sum by up to `S·(1 + 2.02·n²·2⁻⁵³)` (Higham's bound on
//! recursive summation, applied to both sums), so the noise standard deviation is `z_Δ · S · (1 + 4n²·2⁻⁵³)`, and
//! a further relative 2⁻⁴⁰ absorbs the rounding of these products. Together they stay below `1 + 10⁻⁷` for up to
//! 10⁴ PDCs. (The clipped updates' own norms are at most `S` exactly: see [`clip_l2`].)
//!
//! ```
//! use pdc_privacy::central::{AdaptiveClipping, CentralDp, CentralDpConfig};
//! use pdc_privacy::{Accountant, NoiseMode, RdpAccountant};
//!
//! let config = CentralDpConfig {
//!     clip_norm: 1.0,
//!     noise_multiplier: 1.0,
//!     adaptive: Some(AdaptiveClipping { target_quantile: 0.5, learning_rate: 0.2, count_noise_multiplier: 5.0 }),
//!     noise_mode: NoiseMode::Fast,
//! };
//! let mut central = CentralDp::new(config)?;
//! let updates: [&[f32]; 3] = [&[0.3, 0.4], &[3.0, 4.0], &[0.0, -1.0]];
//! let round = central.aggregate(&updates)?;
//! assert_eq!((round.participants, round.clipped, round.clip_norm), (3, 1, 1.0));
//! assert_eq!(central.clip_norm(), round.adaptive.unwrap().next_clip_norm);
//!
//! // One round over every consenting PDC costs one Gaussian release at z, for each PDC.
//! let mut accountant = RdpAccountant::new();
//! central.record_round(&mut accountant, 1.0);
//! assert!(accountant.epsilon(1e-5)?.is_finite());
//! # Ok::<(), pdc_privacy::Error>(())
//! ```

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;
use rand_distr::StandardNormal;
use serde::{Deserialize, Serialize};

use crate::accountant::Accountant;
use crate::clip::clip_l2;
use crate::exact::{self, NOISE_MARGIN};
use crate::noise::NoiseMode;
use crate::{Error, Result};

/// The parameters of central DP-FedAvg for one study.
///
/// Deserialisation does not validate; [`CentralDp::new`] does (through [`CentralDpConfig::validate`]).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct CentralDpConfig {
    /// The clip norm `S` of the first round (every round's with fixed clipping): finite and positive.
    pub clip_norm: f64,
    /// The noise multiplier `z` the whole round is charged at: finite and non-negative (0 means no privacy).
    pub noise_multiplier: f64,
    /// Adaptive clipping, or `None` to keep `S` fixed.
    pub adaptive: Option<AdaptiveClipping>,
    /// Which Gaussian sampler adds the noise: [`NoiseMode::Exact`] goes through OpenDP (about 45 µs per model
    /// coordinate per round), [`NoiseMode::Fast`] through a ChaCha20 generator seeded from the operating system.
    pub noise_mode: NoiseMode,
}

/// Adaptive clipping (Andrew et al. 2021): the clip norm tracks a quantile of the update norms.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct AdaptiveClipping {
    /// The quantile γ of the update norms that the clip norm moves toward, in `(0, 1)` (the paper uses 0.5).
    pub target_quantile: f64,
    /// The step size η_C of the geometric update `S ← S · exp(−η_C (b̄ − γ))`, finite and positive (the paper
    /// uses 0.2).
    pub learning_rate: f64,
    /// The standard deviation σ_b of the noise on the count of unclipped updates; must exceed `z / 2`. The paper
    /// suggests `n / 20` for `n` updates per round.
    pub count_noise_multiplier: f64,
}

impl CentralDpConfig {
    /// Checks every parameter.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidClipNorm`] for a NaN, zero or negative clip norm and [`Error::ClipNormNotFinite`] for an
    /// infinite one; [`Error::InvalidNoiseMultiplier`] unless `z` is finite and non-negative; with adaptive
    /// clipping, those of [`AdaptiveClipping::validate`] and [`Error::CountNoiseTooSmall`] unless `2σ_b > z`.
    pub fn validate(&self) -> Result<()> {
        let Self { clip_norm, noise_multiplier, adaptive, noise_mode: _ } = *self;
        if clip_norm.is_nan() || clip_norm <= 0.0 {
            return Err(Error::InvalidClipNorm { clip_norm });
        }
        if !clip_norm.is_finite() {
            return Err(Error::ClipNormNotFinite { clip_norm });
        }
        if !(noise_multiplier.is_finite() && noise_multiplier >= 0.0) {
            return Err(Error::InvalidNoiseMultiplier { noise_multiplier });
        }
        if let Some(adaptive) = adaptive {
            adaptive.validate()?;
            // Halving z (exact for normal numbers) rather than doubling σ_b cannot overflow.
            if noise_multiplier / 2.0 >= adaptive.count_noise_multiplier {
                return Err(Error::CountNoiseTooSmall {
                    noise_multiplier,
                    count_noise_multiplier: adaptive.count_noise_multiplier,
                });
            }
        }
        Ok(())
    }

    /// The noise multiplier `z_Δ` applied to the clipped sum: `z` with fixed clipping, `(z⁻² − (2σ_b)⁻²)^(−1/2)`
    /// with adaptive clipping (see the [module documentation](self)).
    ///
    /// ```
    /// use pdc_privacy::central::{AdaptiveClipping, CentralDpConfig};
    ///
    /// let adaptive = AdaptiveClipping { target_quantile: 0.5, learning_rate: 0.2, count_noise_multiplier: 2.0 };
    /// let config = CentralDpConfig {
    ///     clip_norm: 1.0,
    ///     noise_multiplier: 2.0,
    ///     adaptive: Some(adaptive),
    ///     noise_mode: Default::default(),
    /// };
    /// // 1/4 − 1/16 = 3/16.
    /// assert!((config.update_noise_multiplier()? - (16.0_f64 / 3.0).sqrt()).abs() < 1e-12);
    /// # Ok::<(), pdc_privacy::Error>(())
    /// ```
    ///
    /// # Errors
    ///
    /// Those of [`CentralDpConfig::validate`]; [`Error::InvalidNoiseMultiplier`] if `z_Δ` overflows (only for
    /// `z` beyond about 10³⁰⁰).
    pub fn update_noise_multiplier(&self) -> Result<f64> {
        self.validate()?;
        let z = self.noise_multiplier;
        let Some(adaptive) = self.adaptive else {
            return Ok(z);
        };
        if z == 0.0 {
            return Ok(0.0);
        }
        // z_Δ = z / √((1 − r)(1 + r)) with r = z / (2σ_b) < 1. 1 − r is formed as (σ_b − z/2)/σ_b, which is exact
        // or within an ulp even when r is close to 1 (Sterbenz), where computing r first would lose every digit.
        let sigma_b = adaptive.count_noise_multiplier;
        let half_z = z / 2.0;
        let one_minus_r = (sigma_b - half_z) / sigma_b;
        let one_plus_r = 1.0 + half_z / sigma_b;
        let update = z / (one_minus_r * one_plus_r).sqrt();
        if update.is_finite() { Ok(update) } else { Err(Error::InvalidNoiseMultiplier { noise_multiplier: update }) }
    }
}

impl AdaptiveClipping {
    /// Checks the adaptive-clipping parameters on their own (the constraint `2σ_b > z` is checked by
    /// [`CentralDpConfig::validate`]).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidTargetQuantile`] unless `0 < γ < 1`; [`Error::InvalidClipLearningRate`] unless `η_C` is
    /// finite and positive; [`Error::InvalidCountNoiseMultiplier`] unless `σ_b` is finite and positive.
    pub fn validate(&self) -> Result<()> {
        let Self { target_quantile, learning_rate, count_noise_multiplier } = *self;
        if !(target_quantile > 0.0 && target_quantile < 1.0) {
            return Err(Error::InvalidTargetQuantile { target_quantile });
        }
        if !(learning_rate.is_finite() && learning_rate > 0.0) {
            return Err(Error::InvalidClipLearningRate { learning_rate });
        }
        if !(count_noise_multiplier.is_finite() && count_noise_multiplier > 0.0) {
            return Err(Error::InvalidCountNoiseMultiplier { count_noise_multiplier });
        }
        Ok(())
    }
}

/// The coordinator's central-DP aggregator for one study: the configuration, the current clip norm and a noise
/// generator.
///
/// Deliberately not `Clone`, and its `Debug` output hides the generator: whoever can reproduce the noise can
/// subtract it.
pub struct CentralDp {
    config: CentralDpConfig,
    update_noise_multiplier: f64,
    clip_norm: f64,
    rng: ChaCha20Rng,
}

/// The outcome of one central-DP round.
#[derive(Debug, Clone, PartialEq)]
pub struct CentralRound {
    /// The noisy mean update: `(Σᵢ clip(Δᵢ, S) + N(0, noise_std²·I)) / participants`, rounded once to `f32`.
    pub mean: Vec<f32>,
    /// The clip norm `S` used this round.
    pub clip_norm: f64,
    /// The standard deviation of the noise added to each coordinate of the *sum* (`z_Δ·S`, rounded up as the
    /// [module documentation](self) explains); the mean carries `noise_std / participants`.
    pub noise_std: f64,
    /// The number of updates `n` aggregated (public: see the [module documentation](self)).
    pub participants: usize,
    /// The exact number of updates whose norm exceeded `S`.
    ///
    /// **Not differentially private**: a diagnostic for the trusted coordinator, never to be published or written to
    /// the ledger (adaptive clipping releases its noisy counterpart, [`AdaptiveClipRound::unclipped_fraction`]).
    pub clipped: usize,
    /// The adaptive-clipping release, when adaptive clipping is on.
    pub adaptive: Option<AdaptiveClipRound>,
}

/// What adaptive clipping released and decided in one round.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdaptiveClipRound {
    /// The noisy fraction `b̄` of updates whose norm was at most `S` (may fall outside `[0, 1]`).
    pub unclipped_fraction: f64,
    /// The clip norm of the next round, `S · exp(−η_C (b̄ − γ))`, kept within the positive normal `f64` range.
    pub next_clip_norm: f64,
}

impl CentralDp {
    /// An aggregator for `config`, with a noise generator seeded from the operating system.
    ///
    /// # Errors
    ///
    /// Those of [`CentralDpConfig::update_noise_multiplier`]; [`Error::Entropy`] if the operating system cannot
    /// provide a seed.
    pub fn new(config: CentralDpConfig) -> Result<Self> {
        let rng = ChaCha20Rng::try_from_os_rng().map_err(|e| Error::Entropy { reason: e.to_string() })?;
        Self::with_rng(config, rng)
    }

    /// An aggregator whose fast noise comes from a fixed seed, **for tests and simulations only**.
    ///
    /// Noise from a known seed is no noise at all: whoever knows (or guesses) the seed regenerates it and subtracts
    /// it from the released mean, voiding the guarantee. Production code must use [`CentralDp::new`]. With
    /// [`NoiseMode::Exact`] the seed is unused (OpenDP draws from its own generator).
    ///
    /// # Errors
    ///
    /// Those of [`CentralDpConfig::update_noise_multiplier`].
    pub fn for_testing_with_seed(config: CentralDpConfig, seed: u64) -> Result<Self> {
        Self::with_rng(config, ChaCha20Rng::seed_from_u64(seed))
    }

    fn with_rng(config: CentralDpConfig, rng: ChaCha20Rng) -> Result<Self> {
        let update_noise_multiplier = config.update_noise_multiplier()?;
        Ok(Self { config, update_noise_multiplier, clip_norm: config.clip_norm, rng })
    }

    /// The configuration.
    pub fn config(&self) -> &CentralDpConfig {
        &self.config
    }

    /// The clip norm the next round will use.
    pub fn clip_norm(&self) -> f64 {
        self.clip_norm
    }

    /// Sets the clip norm `S` of the next round to `clip_norm`, where adaptive clipping had moved it before a
    /// coordinator restarted (the noise, drawn afresh, is not part of the state).
    pub fn resume_at(&mut self, clip_norm: f64) -> Result<()> {
        if clip_norm.is_nan() || clip_norm <= 0.0 {
            return Err(Error::InvalidClipNorm { clip_norm });
        }
        if !clip_norm.is_finite() {
            return Err(Error::ClipNormNotFinite { clip_norm });
        }
        self.clip_norm = clip_norm;
        Ok(())
    }

    /// The noise multiplier `z_Δ` applied to the clipped sum.
    pub fn update_noise_multiplier(&self) -> f64 {
        self.update_noise_multiplier
    }

    /// Aggregates one round's PDC updates: clips each to the current `S`, sums them, adds Gaussian noise, divides
    /// by their number and, with adaptive clipping, releases the noisy unclipped fraction and moves `S` (see the
    /// [module documentation](self)).
    ///
    /// Updates are summed in the order given, in `f64`.
    ///
    /// # Errors
    ///
    /// [`Error::NoUpdates`] for an empty slice; [`Error::UpdateLengthMismatch`] or [`Error::NonFiniteUpdate`] for
    /// the first offending update; [`Error::InvalidStdDev`] if the noise standard deviation overflows;
    /// [`Error::OpenDp`] if the exact sampler fails; [`Error::NonFiniteValue`] if the noisy mean overflows `f32`.
    /// On error the clip norm is unchanged and nothing is released; the noise generator is never rewound, so that
    /// no noise is ever used twice.
    pub fn aggregate(&mut self, updates: &[&[f32]]) -> Result<CentralRound> {
        let first = updates.first().ok_or(Error::NoUpdates)?;
        let dimension = first.len();
        for (update, values) in updates.iter().enumerate() {
            if values.len() != dimension {
                return Err(Error::UpdateLengthMismatch { update, expected: dimension, found: values.len() });
            }
            if let Some((index, &value)) = values.iter().enumerate().find(|(_, v)| !v.is_finite()) {
                return Err(Error::NonFiniteUpdate { update, index, value });
            }
        }

        let clip_norm = self.clip_norm;
        let participants = updates.len();
        let mut sum = vec![0.0_f64; dimension];
        let mut scratch = vec![0.0_f32; dimension];
        let mut clipped = 0;
        for values in updates {
            scratch.copy_from_slice(values);
            if clip_l2(&mut scratch, clip_norm) > clip_norm {
                clipped += 1;
            }
            for (total, &value) in sum.iter_mut().zip(&scratch) {
                *total += f64::from(value);
            }
        }

        let noise_std = self.update_noise_multiplier * clip_norm * sum_rounding_factor(participants) * NOISE_MARGIN;
        if !noise_std.is_finite() {
            return Err(Error::InvalidStdDev { std_dev: noise_std });
        }
        if noise_std > 0.0 {
            self.add_noise(&mut sum, noise_std)?;
        }

        let adaptive = match self.config.adaptive {
            Some(adaptive) => Some(self.adapt(&adaptive, participants, participants - clipped)?),
            None => None,
        };

        let n = participants as f64;
        let mean: Vec<f32> = sum.iter().map(|&total| (total / n) as f32).collect();
        if let Some((index, &value)) = mean.iter().enumerate().find(|(_, v)| !v.is_finite()) {
            return Err(Error::NonFiniteValue { index, value });
        }

        if let Some(adaptive) = adaptive {
            self.clip_norm = adaptive.next_clip_norm;
        }
        Ok(CentralRound { mean, clip_norm, noise_std, participants, clipped, adaptive })
    }

    /// Records one round on a PDC's `accountant`: a Poisson-subsampled Gaussian step
    /// (`compose_poisson_gaussian(q, z, 1)`) when PDCs are sampled with probability `sampling_rate < 1`, a plain
    /// Gaussian release (`compose_gaussian(z, 1)`) when every PDC takes part (`sampling_rate = 1`).
    ///
    /// The charge is PDC-level (user-level) DP for the study: it bounds what the round reveals about a PDC's whole
    /// dataset, not about one patient, and it holds for `z` even with adaptive clipping (see the [module
    /// documentation](self)). An invalid `sampling_rate` (NaN, or outside `[0, 1]`) poisons the accountant, which
    /// then refuses to report ε.
    pub fn record_round(&self, accountant: &mut impl Accountant, sampling_rate: f64) {
        if sampling_rate == 1.0 {
            accountant.compose_gaussian(self.config.noise_multiplier, 1);
        } else {
            accountant.compose_poisson_gaussian(sampling_rate, self.config.noise_multiplier, 1);
        }
    }

    /// Adds N(0, `std_dev`²) to every entry of `sum` with the configured sampler.
    fn add_noise(&mut self, sum: &mut [f64], std_dev: f64) -> Result<()> {
        match self.config.noise_mode {
            NoiseMode::Fast => {
                for total in sum.iter_mut() {
                    let z: f64 = self.rng.sample(StandardNormal);
                    *total += std_dev * z;
                }
                Ok(())
            }
            NoiseMode::Exact => exact::add_exact_f64(sum, std_dev),
        }
    }

    /// Releases the noisy unclipped fraction and computes the next clip norm.
    fn adapt(
        &mut self,
        adaptive: &AdaptiveClipping,
        participants: usize,
        unclipped: usize,
    ) -> Result<AdaptiveClipRound> {
        // Σ(bᵢ − ½) has sensitivity ½; it is a multiple of ½ well within f64's exact integers.
        let centred = unclipped as f64 - participants as f64 / 2.0;
        let std_dev = adaptive.count_noise_multiplier * NOISE_MARGIN;
        let noisy = match self.config.noise_mode {
            NoiseMode::Fast => {
                let z: f64 = self.rng.sample(StandardNormal);
                centred + std_dev * z
            }
            NoiseMode::Exact => exact::exact_scalar(centred, std_dev)?,
        };
        let unclipped_fraction = noisy / participants as f64 + 0.5;
        let step = (-adaptive.learning_rate * (unclipped_fraction - adaptive.target_quantile)).exp();
        // Post-processing: keeping S a positive normal number keeps the next round's configuration valid.
        let next_clip_norm = (self.clip_norm * step).clamp(f64::MIN_POSITIVE, f64::MAX);
        Ok(AdaptiveClipRound { unclipped_fraction, next_clip_norm })
    }
}

impl std::fmt::Debug for CentralDp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The generator's state is the noise: never print it.
        f.debug_struct("CentralDp")
            .field("config", &self.config)
            .field("update_noise_multiplier", &self.update_noise_multiplier)
            .field("clip_norm", &self.clip_norm)
            .finish_non_exhaustive()
    }
}

/// `1 + 4n²·2⁻⁵³`: bounds how far `f64` rounding in summing `n` updates can stretch the sum's sensitivity beyond
/// `S` (Higham, "Accuracy and Stability of Numerical Algorithms", (4.4): each rounded sum is within
/// `γ_{n−1} Σᵢ‖xᵢ‖ ≤ 1.01·n·2⁻⁵³·n·S` of the exact one, for both neighbours). DP-SGD's clipped sum uses the same
/// bound ([`crate::noise::f64_sum_rounding_factor`]).
fn sum_rounding_factor(participants: usize) -> f64 {
    crate::noise::f64_sum_rounding_factor(participants)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::accountant::RdpAccountant;
    use crate::clip::l2_norm;

    fn fixed(clip_norm: f64, noise_multiplier: f64) -> CentralDpConfig {
        CentralDpConfig { clip_norm, noise_multiplier, adaptive: None, noise_mode: NoiseMode::Fast }
    }

    fn adaptive(
        clip_norm: f64,
        noise_multiplier: f64,
        target_quantile: f64,
        learning_rate: f64,
        count_noise_multiplier: f64,
    ) -> CentralDpConfig {
        CentralDpConfig {
            adaptive: Some(AdaptiveClipping { target_quantile, learning_rate, count_noise_multiplier }),
            ..fixed(clip_norm, noise_multiplier)
        }
    }

    /// Plain FedAvg: the mean in f64, in the given order, rounded once to f32.
    fn fedavg(updates: &[&[f32]]) -> Vec<f32> {
        let n = updates.len() as f64;
        (0..updates[0].len()).map(|j| (updates.iter().map(|u| f64::from(u[j])).sum::<f64>() / n) as f32).collect()
    }

    /// The sample standard deviation of `values` around `centre`.
    fn std_around(values: &[f32], centre: f32) -> f64 {
        (values.iter().map(|&v| f64::from(v - centre).powi(2)).sum::<f64>() / values.len() as f64).sqrt()
    }

    #[test]
    fn without_noise_and_clipping_it_is_fedavg() {
        let updates: [&[f32]; 3] = [&[1.0, -2.0, 3.5], &[0.25, 4.0, -1.0], &[-7.0, 0.0, 2.0]];
        let mut central = CentralDp::new(fixed(1e30, 0.0)).unwrap();
        let round = central.aggregate(&updates).unwrap();
        assert_eq!(round.mean, fedavg(&updates));
        assert_eq!((round.clip_norm, round.noise_std, round.participants, round.clipped), (1e30, 0.0, 3, 0));
        assert_eq!(round.adaptive, None);
        assert_eq!(central.clip_norm(), 1e30);
    }

    #[test]
    fn clipping_is_per_update_before_averaging() {
        // Norms 5 and 0.5 with S = 1: the first is scaled to (0.6, 0.8), the second is kept.
        let updates: [&[f32]; 2] = [&[3.0, 4.0], &[0.5, 0.0]];
        let round = CentralDp::new(fixed(1.0, 0.0)).unwrap().aggregate(&updates).unwrap();
        assert_eq!(round.clipped, 1);
        assert!((f64::from(round.mean[0]) - 0.55).abs() < 1e-6 && (f64::from(round.mean[1]) - 0.4).abs() < 1e-6);
    }

    #[test]
    fn update_noise_multiplier_hand_computed() {
        assert_eq!(fixed(1.0, 1.3).update_noise_multiplier(), Ok(1.3));
        // z = 1, σ_b = 5: (1 − 1/100)^(−1/2).
        let z_delta = adaptive(1.0, 1.0, 0.5, 0.2, 5.0).update_noise_multiplier().unwrap();
        assert!((z_delta - 1.0 / 0.99_f64.sqrt()).abs() < 1e-15, "{z_delta}");
        // z = 2, σ_b = 2: (1/4 − 1/16)^(−1/2) = 4/√3.
        let z_delta = adaptive(1.0, 2.0, 0.5, 0.2, 2.0).update_noise_multiplier().unwrap();
        assert!((z_delta - 4.0 / 3.0_f64.sqrt()).abs() < 1e-14, "{z_delta}");
        // The composition identity holds, even when 2σ_b is barely above z (where the naive formula cancels).
        for (z, sigma_b) in [(1.0, 0.5 + 1e-9), (0.7, 3.0), (3.0, 100.0), (1e-3, 1e-3)] {
            let z_delta = adaptive(1.0, z, 0.5, 0.2, sigma_b).update_noise_multiplier().unwrap();
            let total = z_delta.powi(-2) + (2.0 * sigma_b).powi(-2);
            assert!((total * z * z - 1.0).abs() < 1e-6, "z = {z}, σ_b = {sigma_b}: {total}");
            assert!(z_delta > z);
        }
        // Without noise there is nothing to split.
        assert_eq!(adaptive(1.0, 0.0, 0.5, 0.2, 1.0).update_noise_multiplier(), Ok(0.0));
    }

    #[test]
    fn invalid_configs_are_refused() {
        for clip_norm in [0.0, -1.0] {
            assert_eq!(CentralDp::new(fixed(clip_norm, 1.0)).unwrap_err(), Error::InvalidClipNorm { clip_norm });
        }
        assert!(matches!(fixed(f64::NAN, 1.0).validate(), Err(Error::InvalidClipNorm { .. })));
        assert_eq!(fixed(f64::INFINITY, 0.0).validate(), Err(Error::ClipNormNotFinite { clip_norm: f64::INFINITY }));
        for noise_multiplier in [-0.1, f64::INFINITY] {
            assert_eq!(
                fixed(1.0, noise_multiplier).validate(),
                Err(Error::InvalidNoiseMultiplier { noise_multiplier })
            );
        }
        for target_quantile in [0.0, 1.0, -0.5, 1.5] {
            assert_eq!(
                adaptive(1.0, 1.0, target_quantile, 0.2, 5.0).validate(),
                Err(Error::InvalidTargetQuantile { target_quantile })
            );
        }
        assert!(matches!(adaptive(1.0, 1.0, f64::NAN, 0.2, 5.0).validate(), Err(Error::InvalidTargetQuantile { .. })));
        for learning_rate in [0.0, -1.0, f64::INFINITY] {
            assert_eq!(
                adaptive(1.0, 1.0, 0.5, learning_rate, 5.0).validate(),
                Err(Error::InvalidClipLearningRate { learning_rate })
            );
        }
        for count_noise_multiplier in [0.0, -2.0, f64::INFINITY] {
            assert_eq!(
                adaptive(1.0, 1.0, 0.5, 0.2, count_noise_multiplier).validate(),
                Err(Error::InvalidCountNoiseMultiplier { count_noise_multiplier })
            );
        }
        // z⁻² ≤ (2σ_b)⁻² ⟺ 2σ_b ≤ z: the count would use up the whole round's privacy.
        for (noise_multiplier, count_noise_multiplier) in [(1.0, 0.5), (1.0, 0.25), (4.0, 1.0)] {
            let config = adaptive(1.0, noise_multiplier, 0.5, 0.2, count_noise_multiplier);
            assert_eq!(config.validate(), Err(Error::CountNoiseTooSmall { noise_multiplier, count_noise_multiplier }));
            assert!(CentralDp::for_testing_with_seed(config, 0).is_err());
        }
        assert!(adaptive(1.0, 1.0, 0.5, 0.2, 0.5 + 1e-12).validate().is_ok());
    }

    #[test]
    fn invalid_updates_are_refused_and_change_nothing() {
        let config = adaptive(2.0, 1.0, 0.5, 0.2, 5.0);
        let mut central = CentralDp::for_testing_with_seed(config, 3).unwrap();
        let mut twin = CentralDp::for_testing_with_seed(config, 3).unwrap();
        assert_eq!(central.aggregate(&[]), Err(Error::NoUpdates));
        assert_eq!(
            central.aggregate(&[&[1.0, 2.0], &[1.0, 2.0], &[1.0]]),
            Err(Error::UpdateLengthMismatch { update: 2, expected: 2, found: 1 })
        );
        assert_eq!(
            central.aggregate(&[&[1.0, 2.0], &[1.0, f32::INFINITY]]),
            Err(Error::NonFiniteUpdate { update: 1, index: 1, value: f32::INFINITY })
        );
        assert!(matches!(
            central.aggregate(&[&[f32::NAN]]),
            Err(Error::NonFiniteUpdate { update: 0, index: 0, value }) if value.is_nan()
        ));
        assert_eq!(central.clip_norm(), 2.0);
        // Validation failures draw no noise: the seeded twin is still in step.
        let updates: [&[f32]; 2] = [&[1.0, 2.0], &[0.5, -0.5]];
        assert_eq!(central.aggregate(&updates).unwrap(), twin.aggregate(&updates).unwrap());
    }

    #[test]
    fn fast_noise_std_matches_the_update_noise_multiplier() {
        // 200k coordinates: the sample std has relative standard error 1/√(4·10⁵) ≈ 0.16 %; 1 % is a 6σ bound.
        let dimension = 200_000;
        let zeros = vec![0.0_f32; dimension];
        for config in [fixed(0.7, 1.3), adaptive(0.7, 1.3, 0.5, 0.2, 2.0)] {
            let mut central = CentralDp::for_testing_with_seed(config, 17).unwrap();
            let n = 3;
            let round = central.aggregate(&vec![zeros.as_slice(); n]).unwrap();
            let expected = config.update_noise_multiplier().unwrap() * 0.7;
            assert!(round.noise_std >= expected && round.noise_std < expected * (1.0 + 1e-10), "{}", round.noise_std);
            let measured = std_around(&round.mean, 0.0) * n as f64;
            assert!((measured / expected - 1.0).abs() < 0.01, "{config:?}: std {measured}, expected {expected}");
        }
    }

    #[test]
    fn exact_noise_std_matches_the_update_noise_multiplier() {
        // 6000 coordinates through OpenDP (≈ 0.3 s): relative standard error ≈ 0.9 %, bound ≈ 5.5σ.
        let config = CentralDpConfig { noise_mode: NoiseMode::Exact, ..adaptive(2.0, 0.9, 0.5, 0.2, 1.0) };
        let mut central = CentralDp::new(config).unwrap();
        let update = vec![0.25_f32; 6000];
        let round = central.aggregate(&[update.as_slice()]).unwrap();
        let expected = config.update_noise_multiplier().unwrap() * 2.0;
        let measured = std_around(&round.mean, 0.25);
        assert!((measured / expected - 1.0).abs() < 0.05, "std {measured}, expected {expected}");
        assert!(round.adaptive.is_some());
    }

    #[test]
    fn seeded_runs_replay_and_os_seeded_runs_differ() {
        let config = adaptive(1.0, 1.0, 0.5, 0.2, 5.0);
        let updates: [&[f32]; 2] = [&[0.5, 1.5, -2.0], &[0.1, 0.2, 0.3]];
        let run = |mut central: CentralDp| (0..3).map(|_| central.aggregate(&updates).unwrap()).collect::<Vec<_>>();
        assert_eq!(
            run(CentralDp::for_testing_with_seed(config, 5).unwrap()),
            run(CentralDp::for_testing_with_seed(config, 5).unwrap())
        );
        assert_ne!(run(CentralDp::new(config).unwrap()), run(CentralDp::new(config).unwrap()));
    }

    #[test]
    fn one_adaptive_step_hand_computed() {
        // Negligible noise (z = 10⁻⁹, σ_b = 10⁻⁶): norms 1, 2, 3, 4 with S = 2.5 leave half unclipped, so b̄ ≈ ½
        // and, with γ = ¼ and η = ½, S becomes 2.5·e^(−0.125) ≈ 2.206 242.
        let config = adaptive(2.5, 1e-9, 0.25, 0.5, 1e-6);
        let mut central = CentralDp::for_testing_with_seed(config, 1).unwrap();
        let updates: [&[f32]; 4] = [&[1.0, 0.0], &[0.0, 2.0], &[-3.0, 0.0], &[0.0, -4.0]];
        let round = central.aggregate(&updates).unwrap();
        let step = round.adaptive.unwrap();
        assert_eq!(round.clipped, 2);
        assert!((step.unclipped_fraction - 0.5).abs() < 1e-5, "{step:?}");
        assert!((step.next_clip_norm - 2.206_242_3).abs() < 1e-5, "{step:?}");
        assert_eq!(step.next_clip_norm, 2.5 * (-0.5 * (step.unclipped_fraction - 0.25)).exp());
        assert_eq!(central.clip_norm(), step.next_clip_norm);
        // The next round uses the new clip norm.
        assert_eq!(central.aggregate(&updates).unwrap().clip_norm, step.next_clip_norm);
    }

    #[test]
    fn adaptive_clipping_converges_to_the_target_quantile() {
        // 100 updates with norms 1, 2, …, 100 in varied directions: the median norm is 50–51, the 0.8-quantile 80–81.
        let updates: Vec<Vec<f32>> = (1..=100)
            .map(|k| {
                let angle = f64::from(k) * 0.7;
                vec![(f64::from(k) * angle.cos()) as f32, (f64::from(k) * angle.sin()) as f32]
            })
            .collect();
        let updates: Vec<&[f32]> = updates.iter().map(Vec::as_slice).collect();
        for (target_quantile, start, expected) in [(0.5, 1.0, 50.5), (0.5, 1000.0, 50.5), (0.8, 5.0, 80.5)] {
            // σ_b = n/20 as the paper suggests: the noise on b̄ has std 0.05.
            let config = adaptive(start, 1.0, target_quantile, 0.2, 5.0);
            let mut central = CentralDp::for_testing_with_seed(config, 23).unwrap();
            let norms: Vec<f64> = (0..600).map(|_| central.aggregate(&updates).unwrap().clip_norm).collect();
            let settled = norms[400..].iter().sum::<f64>() / 200.0;
            assert!(
                (settled / expected - 1.0).abs() < 0.1,
                "γ = {target_quantile} from S = {start}: settled at {settled}, expected ≈ {expected}"
            );
        }
    }

    #[test]
    fn rounds_are_charged_at_the_total_noise_multiplier() {
        let central = CentralDp::new(adaptive(1.0, 1.2, 0.5, 0.2, 3.0)).unwrap();
        let mut charged = RdpAccountant::new();
        central.record_round(&mut charged, 1.0);
        let mut expected = RdpAccountant::new();
        expected.compose_gaussian(1.2, 1);
        assert_eq!(charged, expected);

        let mut charged = RdpAccountant::new();
        central.record_round(&mut charged, 0.1);
        let mut expected = RdpAccountant::new();
        expected.compose_poisson_gaussian(0.1, 1.2, 1);
        assert_eq!(charged, expected);

        for sampling_rate in [1.5, -0.1, f64::NAN] {
            let mut accountant = RdpAccountant::new();
            central.record_round(&mut accountant, sampling_rate);
            assert!(matches!(accountant.epsilon(1e-5), Err(Error::AccountantPoisoned { .. })));
        }
        // Without noise the round is not private at all.
        let mut accountant = RdpAccountant::new();
        CentralDp::new(fixed(1.0, 0.0)).unwrap().record_round(&mut accountant, 1.0);
        assert_eq!(accountant.epsilon(1e-5), Ok(f64::INFINITY));
    }

    #[test]
    fn sum_rounding_factor_is_negligible_but_grows_with_participants() {
        assert_eq!(sum_rounding_factor(0), 1.0);
        assert!(sum_rounding_factor(1) > 1.0);
        assert!(sum_rounding_factor(10_000) < 1.0 + 1e-7);
        assert!(sum_rounding_factor(10_000) > sum_rounding_factor(100));
    }

    #[test]
    fn debug_output_hides_the_generator_state() {
        let central = CentralDp::for_testing_with_seed(fixed(1.0, 0.5), 9).unwrap();
        let debug = format!("{central:?}");
        assert!(debug.starts_with("CentralDp { config: CentralDpConfig { clip_norm: 1.0, noise_multiplier: 0.5"));
        assert!(debug.ends_with("clip_norm: 1.0, .. }"), "{debug}");
    }

    #[test]
    fn config_serialises_with_snake_case_noise_mode() {
        let config = adaptive(1.5, 1.0, 0.5, 0.25, 5.0);
        let json = serde_json::to_string(&config).unwrap();
        assert_eq!(
            json,
            r#"{"clip_norm":1.5,"noise_multiplier":1.0,"adaptive":{"target_quantile":0.5,"learning_rate":0.25,"count_noise_multiplier":5.0},"noise_mode":"fast"}"#
        );
        assert_eq!(serde_json::from_str::<CentralDpConfig>(&json).unwrap(), config);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]

        #[test]
        fn clipped_updates_never_exceed_the_clip_norm(
            updates in prop::collection::vec(prop::collection::vec(-1e3_f32..1e3, 8), 1..6),
            clip_norm in 1e-3_f64..1e3,
        ) {
            let views: Vec<&[f32]> = updates.iter().map(Vec::as_slice).collect();
            // Without noise, one update's "mean" is the clipped update itself.
            for update in &views {
                let round = CentralDp::new(fixed(clip_norm, 0.0)).unwrap().aggregate(&[update]).unwrap();
                prop_assert!(l2_norm(&round.mean) <= clip_norm, "{} > {}", l2_norm(&round.mean), clip_norm);
                prop_assert_eq!(round.clipped, usize::from(l2_norm(update) > clip_norm));
            }
            // The mean of clipped updates is the FedAvg of the individually clipped updates, and inside the ball.
            let round = CentralDp::new(fixed(clip_norm, 0.0)).unwrap().aggregate(&views).unwrap();
            let clipped: Vec<Vec<f32>> = updates
                .iter()
                .map(|u| {
                    let mut u = u.clone();
                    clip_l2(&mut u, clip_norm);
                    u
                })
                .collect();
            let clipped: Vec<&[f32]> = clipped.iter().map(Vec::as_slice).collect();
            prop_assert_eq!(&round.mean, &fedavg(&clipped));
            prop_assert!(l2_norm(&round.mean) <= clip_norm * (1.0 + 1e-6));
            prop_assert_eq!(round.clipped, views.iter().filter(|u| l2_norm(u) > clip_norm).count());
        }
    }
}
