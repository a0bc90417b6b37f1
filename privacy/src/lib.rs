//! Differential-privacy primitives for pdc: clipping, Gaussian noise, privacy accounting and budgets.
//!
//! A PDC trains with DP-SGD: it [clips](clip) each per-example gradient to an L2 norm `C`, adds Gaussian
//! [noise] of standard deviation `noise_multiplier · C`, and records every step with an
//! [accountant] so that it can refuse a round that would take a dataset past its [budget].
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
pub mod clip;
mod error;
pub mod noise;
mod special;

pub use accountant::{Accountant, PldAccountant, RdpAccountant, calibrate_noise_multiplier};
pub use budget::{Budget, PrivacyBudget};
pub use error::{Error, Result};
pub use noise::{GaussianNoise, NoiseMode, add_exact};
