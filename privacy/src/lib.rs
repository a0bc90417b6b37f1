//! Differential-privacy primitives for pdc: clipping, Gaussian noise, privacy accounting, budgets, DP statistics
//! and central DP aggregation.
//!
//! A PDC trains with DP-SGD: it [clips](clip) each per-example gradient to an L2 norm `C`, adds Gaussian
//! [noise] of standard deviation `noise_multiplier · C`, and records every step with an
//! [accountant] so that it can refuse a round that would take a dataset past its [budget].
//!
//! Before training, a PDC releases DP [statistics](stats) about its data (feature summaries for global
//! standardisation, cohort counts) through OpenDP's Gaussian mechanism, charged to the same budget. A trusted
//! coordinator may instead add the noise itself, to the aggregate: [central] DP-FedAvg, with optional adaptive
//! clipping.
//!
//! This crate is a pure core: it does no I/O besides drawing randomness, reads no clock, and never touches the
//! network, a disk or a model framework.
//!
//! ```
//! use pdc_privacy::{Accountant, Budget, GaussianNoise, PrivacyBudget, RdpAccountant, clip::clip_l2};
//!
//! let (clip_norm, noise_multiplier, sampling_rate, steps) = (1.0, 1.1, 0.01, 1000);
//!
//! // Before the round: can the dataset afford it?
//! let mut budget = Budget::new(PrivacyBudget::new(3.0, 1e-5)?);
//! let mut accountant = RdpAccountant::new();
//! budget.try_spend(&mut accountant, |a| a.compose_poisson_gaussian(sampling_rate, noise_multiplier, steps))?;
//!
//! // Each step: clip every per-example gradient, sum, add noise.
//! let mut noise = GaussianNoise::new(noise_multiplier * clip_norm)?;
//! let mut gradient = vec![0.5_f32, -2.0, 1.0];
//! clip_l2(&mut gradient, clip_norm);
//! noise.add_to(&mut gradient);
//! # Ok::<(), pdc_privacy::Error>(())
//! ```

pub mod accountant;
pub mod budget;
pub mod central;
pub mod clip;
mod error;
mod exact;
pub mod noise;
mod special;
pub mod stats;

pub use accountant::{Accountant, PldAccountant, RdpAccountant, calibrate_noise_multiplier};
pub use budget::{Budget, PrivacyBudget};
pub use central::{AdaptiveClipping, CentralDp, CentralDpConfig, CentralRound};
pub use error::{Error, Result};
pub use noise::{GaussianNoise, NoiseMode, add_exact};
pub use stats::{
    FeatureBounds, GlobalStandardization, NoisyCohortCounts, NoisyFeatureSummary, combine_feature_summaries,
    release_cohort_counts, release_feature_summary,
};
