//! Gaussian noise for DP releases: a fast CSPRNG path for per-step DP-SGD noise and an exact path through OpenDP.
//!
//! - [`GaussianNoise`] (the [`NoiseMode::Fast`] path) draws from a ChaCha20 generator seeded from the operating
//!   system, turning its output into normal variates with the ziggurat method (`rand_distr::StandardNormal`). It is
//!   fast enough to noise a model-sized gradient every step. As with every floating-point Gaussian sampler, the
//!   low-order bits of its output are not exactly Gaussian (Mironov 2012); that is the accepted trade-off for
//!   per-step noise that is averaged over many steps.
//! - [`add_exact`] (the [`NoiseMode::Exact`] path) runs OpenDP's Gaussian measurement (`make_gaussian` over
//!   `VectorDomain<AtomDomain<f32>>` with the L2 distance), which samples an exact discrete Gaussian (Canonne, Kamath
//!   and Steinke 2020) on the grid of 2⁻¹⁴⁹ — the finest spacing of `f32` — with arbitrary-precision arithmetic, and
//!   rounds the noisy value back to `f32`. It is orders of magnitude slower and meant for one-shot releases
//!   (central DP-FedAvg noise on an aggregate, DP statistics).
//!
//! The workspace builds OpenDP without its `use-openssl` feature, so OpenDP draws its random bits from `rand` 0.7's
//! `thread_rng` (ChaCha20, reseeded from the OS) rather than OpenSSL's `RAND_priv_bytes`; OpenDP calls that
//! configuration "non-secure" because it does not vouch for a generator it does not control.

use opendp::core::Measurement;
use opendp::domains::{AtomDomain, VectorDomain};
use opendp::measurements::make_gaussian;
use opendp::measures::ZeroConcentratedDivergence;
use opendp::metrics::L2Distance;
use rand::Rng;
use rand::SeedableRng;
use rand_chacha::ChaCha20Rng;
use rand_distr::StandardNormal;
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// Which Gaussian sampler to use for a release.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NoiseMode {
    /// ChaCha20 + ziggurat through [`GaussianNoise::add_to`]: for per-step DP-SGD noise.
    #[default]
    Fast,
    /// OpenDP's exact discrete-Gaussian measurement through [`add_exact`]: for one-shot releases.
    Exact,
}

/// A source of N(0, σ²) noise: a ChaCha20 CSPRNG seeded from the operating system, with ziggurat sampling.
///
/// Deliberately neither `Clone` nor seedable in production: two generators with the same state produce the same
/// noise, and anyone who can reproduce the noise can subtract it and recover the clipped update exactly. For the
/// same reason its `Debug` output shows σ but not the generator's state.
///
/// ```
/// use pdc_privacy::noise::GaussianNoise;
///
/// let mut noise = GaussianNoise::new(0.5)?;
/// let mut gradient = vec![0.0_f32; 1024];
/// noise.add_to(&mut gradient);
/// assert!(gradient.iter().any(|&g| g != 0.0));
/// # Ok::<(), pdc_privacy::Error>(())
/// ```
pub struct GaussianNoise {
    std_dev: f64,
    rng: ChaCha20Rng,
}

impl GaussianNoise {
    /// A noise source with standard deviation `std_dev`, seeded from the operating system's entropy.
    ///
    /// For DP-SGD, `std_dev = noise_multiplier · clip_norm`.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidStdDev`] unless `std_dev` is finite and positive; [`Error::Entropy`] if the operating system
    /// cannot provide a seed.
    pub fn new(std_dev: f64) -> Result<Self> {
        check_std_dev(std_dev)?;
        let rng = ChaCha20Rng::try_from_os_rng().map_err(|e| Error::Entropy { reason: e.to_string() })?;
        Ok(Self { std_dev, rng })
    }

    /// A noise source with a fixed seed, **for tests and simulations only**.
    ///
    /// Noise from a known seed is no noise at all: whoever knows (or guesses) the seed regenerates the exact noise
    /// vector and subtracts it, recovering the clipped update and voiding the privacy guarantee. Production code
    /// must use [`GaussianNoise::new`]. This exists so that tests elsewhere in the workspace can replay a run.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidStdDev`] unless `std_dev` is finite and positive.
    pub fn for_testing_with_seed(std_dev: f64, seed: u64) -> Result<Self> {
        check_std_dev(std_dev)?;
        Ok(Self { std_dev, rng: ChaCha20Rng::seed_from_u64(seed) })
    }

    /// The standard deviation σ of the noise this source adds.
    pub fn std_dev(&self) -> f64 {
        self.std_dev
    }

    /// Adds independent N(0, σ²) noise to every entry of `values`.
    ///
    /// The noise is drawn and added in `f64`, then the sum is rounded once to `f32`.
    pub fn add_to(&mut self, values: &mut [f32]) {
        for value in values.iter_mut() {
            let z: f64 = self.rng.sample(StandardNormal);
            *value = (f64::from(*value) + self.std_dev * z) as f32;
        }
    }

    /// Adds N(0, σ²) noise to every entry of `values` with the sampler `mode` selects.
    ///
    /// [`NoiseMode::Exact`] uses only this source's σ: OpenDP draws from its own generator, never from this one.
    ///
    /// # Errors
    ///
    /// With [`NoiseMode::Exact`], those of [`add_exact`]; [`NoiseMode::Fast`] never fails.
    pub fn add(&mut self, values: &mut [f32], mode: NoiseMode) -> Result<()> {
        match mode {
            NoiseMode::Fast => {
                self.add_to(values);
                Ok(())
            }
            NoiseMode::Exact => add_exact(values, self.std_dev),
        }
    }
}

impl GaussianNoise {
    /// Adds N(0, σ²) noise to every entry of an `f64` sum with the sampler `mode` selects, leaving it in `f64`.
    ///
    /// DP-SGD's clipped sum is accumulated in `f64` (see [`f64_sum_rounding_factor`]) and noised without being
    /// rounded to `f32` first: rounding a sum of up to `m·C` in norm to `f32` moves it by up to `2⁻²⁴·m·C`, far more
    /// than one example's sensitivity allows for. [`NoiseMode::Exact`] runs OpenDP's `f64` Gaussian, as the central
    /// aggregate does.
    ///
    /// # Errors
    ///
    /// [`Error::NonFiniteValue`] for the first non-finite entry with [`NoiseMode::Exact`] (OpenDP would silently
    /// replace a NaN by 0), and those of OpenDP's measurement; [`NoiseMode::Fast`] never fails.
    pub fn add_f64(&mut self, values: &mut [f64], mode: NoiseMode) -> Result<()> {
        match mode {
            NoiseMode::Fast => {
                for value in values.iter_mut() {
                    let z: f64 = self.rng.sample(StandardNormal);
                    *value += self.std_dev * z;
                }
                Ok(())
            }
            NoiseMode::Exact => {
                if let Some((index, &value)) = values.iter().enumerate().find(|(_, v)| !v.is_finite()) {
                    // The index and value name the coordinate of a gradient sum; they stay inside the PDC.
                    return Err(Error::NonFiniteValue { index, value: value as f32 });
                }
                crate::exact::add_exact_f64(values, self.std_dev)
            }
        }
    }
}

/// The factor `1 + 4·n²·2⁻⁵³` by which a Gaussian mechanism on a sum of `n` terms, accumulated in `f64` in any
/// order, scales its noise so that the rounded sum's sensitivity stays within the exact sum's.
///
/// Adding or removing one term of L2 norm at most `C` from a sum of `n` such terms changes the computed sum by at
/// most `C·(1 + 2.02·n²·2⁻⁵³)`: Higham's bound on recursive summation, `γₙ·Σ|xᵢ|` per coordinate with
/// `γₙ ≤ 1.01·n·2⁻⁵³`, applied to both sums, whose terms have a total L2 norm of at most `n·C`. Blocked and fused
/// (FMA) summations, as in a matrix product, satisfy the same bound. The products of two `f32` values that make up
/// DP-SGD's terms are exact in `f64`, so no other rounding enters. The factor is `1 + 4.4·10⁻¹⁰` at a thousand
/// terms and `1 + 4.4·10⁻⁴` at a million.
///
/// ```
/// use pdc_privacy::noise::f64_sum_rounding_factor;
///
/// assert_eq!(f64_sum_rounding_factor(0), 1.0);
/// assert!(f64_sum_rounding_factor(1_000) < 1.0 + 1e-9);
/// assert!(f64_sum_rounding_factor(1_000_000) < 1.0 + 1e-3);
/// ```
pub fn f64_sum_rounding_factor(n: usize) -> f64 {
    let n = n as f64;
    1.0 + 4.0 * n * n * (f64::EPSILON / 2.0)
}

impl std::fmt::Debug for GaussianNoise {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The generator's state is the noise: never print it.
        f.debug_struct("GaussianNoise").field("std_dev", &self.std_dev).finish_non_exhaustive()
    }
}

/// Adds N(0, `std_dev`²) noise to every entry of `values` through OpenDP's exact Gaussian measurement.
///
/// Builds `opendp::measurements::make_gaussian` on `VectorDomain<AtomDomain<f32>>` (non-NaN entries) with
/// `L2Distance<f32>` and the zero-concentrated-divergence output measure, at OpenDP's default granularity for `f32`
/// (2⁻¹⁴⁹, so no sensitivity is lost to rounding the input), and invokes it on `values`. On error `values` is left
/// untouched.
///
/// # Errors
///
/// [`Error::InvalidStdDev`] unless `std_dev` is finite and positive; [`Error::NonFiniteValue`] for the first NaN or
/// infinite entry (OpenDP would silently replace a NaN by 0); [`Error::OpenDp`] if OpenDP refuses the measurement or
/// cannot draw randomness.
///
/// ```
/// let mut aggregate = vec![1.0_f32; 8];
/// pdc_privacy::noise::add_exact(&mut aggregate, 0.1)?;
/// assert!(aggregate.iter().all(|a| (a - 1.0).abs() < 1.0));
/// # Ok::<(), pdc_privacy::Error>(())
/// ```
pub fn add_exact(values: &mut [f32], std_dev: f64) -> Result<()> {
    check_std_dev(std_dev)?;
    if let Some((index, &value)) = values.iter().enumerate().find(|(_, v)| !v.is_finite()) {
        return Err(Error::NonFiniteValue { index, value });
    }
    let measurement = exact_measurement(std_dev)?;
    let noisy = measurement.invoke(&values.to_vec()).map_err(opendp_error)?;
    if noisy.len() != values.len() {
        return Err(Error::OpenDp {
            message: format!("measurement returned {} values for {} inputs", noisy.len(), values.len()),
        });
    }
    values.copy_from_slice(&noisy);
    Ok(())
}

/// The OpenDP Gaussian measurement on `f32` vectors under the L2 distance, with noise scale `std_dev`.
fn exact_measurement(std_dev: f64) -> Result<ExactGaussian> {
    let input_domain = VectorDomain::new(AtomDomain::<f32>::new_non_nan());
    make_gaussian::<_, _, ZeroConcentratedDivergence>(input_domain, L2Distance::<f32>::default(), std_dev, None)
        .map_err(opendp_error)
}

/// OpenDP's Gaussian mechanism on `f32` vectors: L2 sensitivity in, zCDP ρ out.
type ExactGaussian = Measurement<VectorDomain<AtomDomain<f32>>, L2Distance<f32>, ZeroConcentratedDivergence, Vec<f32>>;

fn opendp_error(error: opendp::error::Error) -> Error {
    Error::OpenDp { message: error.to_string() }
}

fn check_std_dev(std_dev: f64) -> Result<()> {
    if std_dev.is_finite() && std_dev > 0.0 { Ok(()) } else { Err(Error::InvalidStdDev { std_dev }) }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DRAWS: usize = 100_000;

    /// Sample mean and standard deviation, in f64.
    fn moments(values: &[f32]) -> (f64, f64) {
        let n = values.len() as f64;
        let mean = values.iter().map(|&v| f64::from(v)).sum::<f64>() / n;
        let variance = values.iter().map(|&v| (f64::from(v) - mean).powi(2)).sum::<f64>() / (n - 1.0);
        (mean, variance.sqrt())
    }

    /// With 100k draws the sample std has a relative standard error of 1/√(2n) ≈ 0.22% and the mean a standard
    /// error of σ/√n ≈ 0.32% of σ, so 2% on each is a 6-to-9-sigma margin: these tests do not flake.
    fn assert_standard_gaussian_noise(noisy: &[f32], offset: f32, std_dev: f64) {
        let centred: Vec<f32> = noisy.iter().map(|&v| v - offset).collect();
        let (mean, sample_std) = moments(&centred);
        assert!(mean.abs() < 0.02 * std_dev, "mean {mean} for σ = {std_dev}");
        assert!((sample_std / std_dev - 1.0).abs() < 0.02, "std {sample_std} for σ = {std_dev}");
        // A Gaussian puts 4.55% of its mass beyond 2σ (sd of the fraction ≈ 0.066%); a wrong shape with the right
        // variance (uniform, Laplace) would not.
        let beyond = centred.iter().filter(|&&v| f64::from(v).abs() > 2.0 * std_dev).count() as f64 / DRAWS as f64;
        assert!((beyond - 0.0455).abs() < 0.004, "fraction beyond 2σ: {beyond}");
    }

    #[test]
    fn f64_noise_has_the_requested_moments_and_keeps_f64_precision() {
        let std_dev = 1.5;
        let mut noise = GaussianNoise::new(std_dev).unwrap();
        // An offset far beyond f32's integer range: an f32 round trip would lose the noise's low bits entirely.
        let offset = 1e12_f64;
        let mut values = vec![offset; DRAWS];
        noise.add_f64(&mut values, NoiseMode::Fast).unwrap();
        let centred: Vec<f32> = values.iter().map(|&v| (v - offset) as f32).collect();
        assert_standard_gaussian_noise(&centred, 0.0, std_dev);
    }

    #[test]
    fn exact_f64_noise_refuses_a_non_finite_entry_and_leaves_the_values() {
        let mut noise = GaussianNoise::new(1.0).unwrap();
        let mut values = vec![1.0, f64::NAN, 2.0];
        let error = noise.add_f64(&mut values, NoiseMode::Exact).unwrap_err();
        assert!(matches!(error, Error::NonFiniteValue { index: 1, .. }), "{error:?}");
        assert_eq!(values[0], 1.0);
        assert_eq!(values[2], 2.0);

        let mut values = vec![0.5_f64; 16];
        noise.add_f64(&mut values, NoiseMode::Exact).unwrap();
        assert!(values.iter().all(|v| v.is_finite()) && values.iter().any(|&v| v != 0.5));
    }

    #[test]
    fn the_f64_sum_rounding_factor_is_above_one_and_negligible() {
        assert_eq!(f64_sum_rounding_factor(0), 1.0);
        assert!(f64_sum_rounding_factor(1) > 1.0);
        // 4·n²·2⁻⁵³: 4.4e-4 at a million terms, 4.4e-10 at a thousand.
        assert!(f64_sum_rounding_factor(1_000_000) < 1.0 + 1e-3);
        assert!(f64_sum_rounding_factor(1_000) < 1.0 + 1e-9);
        assert!(f64_sum_rounding_factor(2_000) > f64_sum_rounding_factor(1_000));
    }

    #[test]
    fn fast_noise_has_the_requested_moments() {
        let std_dev = 2.5;
        let mut noise = GaussianNoise::new(std_dev).unwrap();
        let mut values = vec![3.0_f32; DRAWS];
        noise.add_to(&mut values);
        assert_standard_gaussian_noise(&values, 3.0, std_dev);
    }

    #[test]
    fn fast_noise_with_a_test_seed_has_the_requested_moments() {
        let std_dev = 0.01;
        let mut noise = GaussianNoise::for_testing_with_seed(std_dev, 7).unwrap();
        let mut values = vec![0.0_f32; DRAWS];
        noise.add(&mut values, NoiseMode::Fast).unwrap();
        assert_standard_gaussian_noise(&values, 0.0, std_dev);
    }

    #[test]
    fn exact_noise_has_the_requested_moments() {
        let std_dev = 1.5;
        let mut values = vec![-2.0_f32; DRAWS];
        add_exact(&mut values, std_dev).unwrap();
        assert_standard_gaussian_noise(&values, -2.0, std_dev);
    }

    #[test]
    fn exact_mode_goes_through_opendp() {
        let mut noise = GaussianNoise::for_testing_with_seed(1.0, 1).unwrap();
        let mut a = vec![0.0_f32; 64];
        let mut b = vec![0.0_f32; 64];
        noise.add(&mut a, NoiseMode::Exact).unwrap();
        // The exact path ignores the seeded generator, so a second generator with the same seed differs.
        let mut twin = GaussianNoise::for_testing_with_seed(1.0, 1).unwrap();
        twin.add(&mut b, NoiseMode::Exact).unwrap();
        assert_ne!(a, b);
    }

    #[test]
    fn exact_measurement_is_the_gaussian_mechanism() {
        // OpenDP's privacy map gives zCDP ρ = Δ² / (2σ²) for L2 sensitivity Δ.
        let measurement = exact_measurement(2.0).unwrap();
        let rho = measurement.map(&1.0).unwrap();
        assert!((rho - 0.125).abs() < 1e-9, "rho {rho}");
    }

    #[test]
    fn os_seeded_sources_differ_and_test_seeds_repeat() {
        let draw = |noise: &mut GaussianNoise| {
            let mut values = vec![0.0_f32; 16];
            noise.add_to(&mut values);
            values
        };
        assert_ne!(draw(&mut GaussianNoise::new(1.0).unwrap()), draw(&mut GaussianNoise::new(1.0).unwrap()));
        assert_eq!(
            draw(&mut GaussianNoise::for_testing_with_seed(1.0, 42).unwrap()),
            draw(&mut GaussianNoise::for_testing_with_seed(1.0, 42).unwrap())
        );
    }

    #[test]
    fn invalid_std_devs_are_refused() {
        for std_dev in [0.0, -1.0, f64::INFINITY, f64::NEG_INFINITY] {
            assert_eq!(GaussianNoise::new(std_dev).unwrap_err(), Error::InvalidStdDev { std_dev });
            assert_eq!(GaussianNoise::for_testing_with_seed(std_dev, 0).unwrap_err(), Error::InvalidStdDev { std_dev });
            assert_eq!(add_exact(&mut [0.0], std_dev), Err(Error::InvalidStdDev { std_dev }));
        }
        assert!(matches!(GaussianNoise::new(f64::NAN), Err(Error::InvalidStdDev { .. })));
    }

    #[test]
    fn exact_noise_refuses_non_finite_values_and_leaves_them_alone() {
        let mut values = [1.0_f32, f32::NAN, 2.0];
        let error = add_exact(&mut values, 1.0).unwrap_err();
        assert!(matches!(error, Error::NonFiniteValue { index: 1, value } if value.is_nan()));
        assert_eq!(values[0], 1.0);
        assert_eq!(values[2], 2.0);
    }

    #[test]
    fn empty_inputs_are_fine() {
        add_exact(&mut [], 1.0).unwrap();
        GaussianNoise::new(1.0).unwrap().add_to(&mut []);
    }

    #[test]
    fn debug_output_hides_the_generator_state() {
        let noise = GaussianNoise::for_testing_with_seed(0.5, 9).unwrap();
        assert_eq!(format!("{noise:?}"), "GaussianNoise { std_dev: 0.5, .. }");
    }

    #[test]
    fn noise_mode_serialises_in_snake_case() {
        assert_eq!(NoiseMode::default(), NoiseMode::Fast);
        assert_eq!(serde_json::to_string(&NoiseMode::Exact).unwrap(), r#""exact""#);
        assert_eq!(serde_json::from_str::<NoiseMode>(r#""fast""#).unwrap(), NoiseMode::Fast);
    }
}
