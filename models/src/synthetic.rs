//! A seeded generator of tabular data shaped like the medical tables, for benchmarks and
//! simulations with many PDCs.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::StandardNormal;
use serde::{Deserialize, Serialize};

use crate::{Dataset, Error, Result};

/// Seeds the table's structure (scales, correlations, true coefficients), which depends only on
/// the number of features: datasets drawn with different seeds, as for different simulated
/// hospitals, share one underlying relationship between features and label.
const STRUCTURE_SEED: u64 = 0x7064_632d_7379_6e74;

/// Latent factors shared between features, which make them correlated.
const N_FACTORS: usize = 3;

/// The standard deviation of the true logit around its intercept: strong enough for a clearly
/// learnable task, weak enough that the labels stay noisy (a Bayes AUROC near 0.9).
const SIGNAL_STD: f64 = 2.5;

/// Feature scales, cycled over the features: lab values in the thousandths next to counts in the
/// thousands, as in the Wisconsin breast-cancer table.
const SCALES: [f64; 6] = [1000.0, 0.01, 1.0, 100.0, 0.1, 10.0];

/// What to generate.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SyntheticConfig {
    /// The number of rows.
    pub n_rows: usize,
    /// The number of features; at least 1.
    pub n_features: usize,
    /// The expected share of rows labelled 1, in `[0, 1]`.
    pub positive_rate: f64,
    /// Seeds the rows (not the table's structure, see [`synthetic`]).
    pub seed: u64,
}

impl SyntheticConfig {
    /// Checks that `n_features` is at least 1 and `positive_rate` lies in `[0, 1]`.
    pub fn validate(&self) -> Result<()> {
        if self.n_features == 0 {
            return Err(Error::InvalidArgument { name: "n_features", reason: "must be at least 1".to_owned() });
        }
        if !(0.0..=1.0).contains(&self.positive_rate) {
            return Err(Error::InvalidArgument {
                name: "positive_rate",
                reason: format!("{} is not between 0 and 1", self.positive_rate),
            });
        }
        Ok(())
    }
}

/// Generates a binary-classification table from a latent logistic model.
///
/// Each row draws three latent factors; each feature is a noisy mix of them (so features are
/// correlated), standardised, then put on its own scale (from about 0.01 to about 1000, some
/// log-normally skewed and all positive on average, like lab values). The label is drawn from a
/// logistic model of the standardised features whose intercept gives `positive_rate` in
/// expectation. The structure depends only on `n_features`; `seed` draws the rows, so the same
/// config always gives the same table.
///
/// This never fails: an invalid config is made valid (`n_features` of 0 becomes 1, the rate is
/// clamped into `[0, 1]` and NaN taken as 0.5). Call [`SyntheticConfig::validate`] to reject
/// such configs instead.
///
/// # Example
///
/// ```
/// use pdc_models::{synthetic, SyntheticConfig};
///
/// let config = SyntheticConfig { n_rows: 1000, n_features: 12, positive_rate: 0.2, seed: 1 };
/// let data = synthetic(&config);
/// assert_eq!((data.n_rows(), data.n_features()), (1000, 12));
/// assert_eq!(data, synthetic(&config));
/// ```
pub fn synthetic(config: &SyntheticConfig) -> Dataset {
    let n_features = config.n_features.max(1);
    let positive_rate = if config.positive_rate.is_nan() { 0.5 } else { config.positive_rate.clamp(0.0, 1.0) };
    let structure = Structure::new(n_features);
    let intercept = intercept_for_rate(positive_rate);

    let mut rng = ChaCha8Rng::seed_from_u64(config.seed);
    let mut features = Vec::with_capacity(config.n_rows * n_features);
    let mut labels = Vec::with_capacity(config.n_rows);
    let mut factors = [0.0f64; N_FACTORS];
    for _ in 0..config.n_rows {
        for factor in &mut factors {
            *factor = rng.sample(StandardNormal);
        }
        let mut logit = intercept;
        for feature in &structure.features {
            let shared: f64 = feature.loadings.iter().zip(&factors).map(|(l, z)| l * z).sum();
            let noise: f64 = rng.sample(StandardNormal);
            let standardised = shared + feature.noise_std * noise;
            logit += feature.coefficient * standardised;
            features.push(feature.scaled(standardised) as f32);
        }
        let probability = 1.0 / (1.0 + (-logit).exp());
        labels.push(if rng.random::<f64>() < probability { 1.0 } else { 0.0 });
    }
    Dataset { feature_names: (0..n_features).map(|j| format!("feature_{j:02}")).collect(), features, labels }
}

/// How the features derive from the latent factors and the label from the features.
struct Structure {
    features: Vec<FeatureStructure>,
}

struct FeatureStructure {
    /// Loadings on the latent factors; their squares sum to less than 1.
    loadings: [f64; N_FACTORS],
    /// The standard deviation of the feature's own noise, making its variance 1.
    noise_std: f64,
    /// The feature's coefficient in the true logit.
    coefficient: f64,
    /// The typical magnitude of the feature.
    scale: f64,
    /// The feature's centre, in units of `scale`.
    centre: f64,
    /// Whether the feature is log-normal (right-skewed) rather than normal.
    skewed: bool,
}

impl FeatureStructure {
    /// Maps a standard-normal value to the feature's scale; always finite for finite input.
    fn scaled(&self, standardised: f64) -> f64 {
        if self.skewed {
            self.scale * self.centre * (0.3 * standardised).exp()
        } else {
            self.scale * (self.centre + standardised)
        }
    }
}

impl Structure {
    fn new(n_features: usize) -> Structure {
        let mut rng = ChaCha8Rng::seed_from_u64(STRUCTURE_SEED ^ n_features as u64);
        let mut features: Vec<FeatureStructure> = (0..n_features)
            .map(|j| {
                let mut loadings = [0.0; N_FACTORS];
                for (factor, loading) in loadings.iter_mut().enumerate() {
                    *loading =
                        if factor == j % N_FACTORS { rng.random_range(0.55..0.8) } else { rng.random_range(-0.2..0.2) };
                }
                let shared_variance: f64 = loadings.iter().map(|l| l * l).sum();
                // A third of the features carry no signal, as in real tables.
                let informative = j == 0 || j % 3 != 2;
                let coefficient = if informative {
                    let magnitude: f64 = rng.random_range(0.3..1.0);
                    if rng.random::<bool>() { magnitude } else { -magnitude }
                } else {
                    0.0
                };
                FeatureStructure {
                    loadings,
                    noise_std: (1.0 - shared_variance).sqrt(),
                    coefficient,
                    scale: SCALES[j % SCALES.len()],
                    centre: rng.random_range(2.0..5.0),
                    skewed: j % 4 == 3,
                }
            })
            .collect();
        // Rescale the coefficients so the logit's standard deviation is SIGNAL_STD: its variance
        // is cᵀ Σ c with Σ the features' correlations (loadings' dot products off the diagonal).
        let mut variance = 0.0;
        for (j, a) in features.iter().enumerate() {
            for (l, b) in features.iter().enumerate() {
                let correlation =
                    if j == l { 1.0 } else { a.loadings.iter().zip(&b.loadings).map(|(x, y)| x * y).sum() };
                variance += a.coefficient * b.coefficient * correlation;
            }
        }
        let factor = SIGNAL_STD / variance.sqrt();
        for feature in &mut features {
            feature.coefficient *= factor;
        }
        Structure { features }
    }
}

/// The intercept `b` with `E[σ(b + SIGNAL_STD · Z)] = rate` for standard-normal `Z`, found by
/// bisection on a quadrature of the expectation; ±∞ for rates 0 and 1.
fn intercept_for_rate(rate: f64) -> f64 {
    if rate <= 0.0 {
        return f64::NEG_INFINITY;
    }
    if rate >= 1.0 {
        return f64::INFINITY;
    }
    let expected_rate = |intercept: f64| {
        const STEPS: usize = 1601;
        let (mut weighted, mut total) = (0.0, 0.0);
        for step in 0..STEPS {
            let z = -8.0 + 16.0 * step as f64 / (STEPS - 1) as f64;
            let density = (-0.5 * z * z).exp();
            weighted += density / (1.0 + (-(intercept + SIGNAL_STD * z)).exp());
            total += density;
        }
        weighted / total
    };
    let (mut low, mut high) = (-60.0, 60.0);
    for _ in 0..80 {
        let middle = 0.5 * (low + high);
        if expected_rate(middle) < rate {
            low = middle;
        } else {
            high = middle;
        }
    }
    0.5 * (low + high)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ModelKind, ModelSpec, Standardizer, Task, TrainConfig, evaluate, train_local, train_validation_split};

    fn config(n_rows: usize, positive_rate: f64, seed: u64) -> SyntheticConfig {
        SyntheticConfig { n_rows, n_features: 12, positive_rate, seed }
    }

    fn column(data: &Dataset, feature: usize) -> Vec<f64> {
        (0..data.n_rows()).map(|row| f64::from(data.row(row)[feature])).collect()
    }

    fn mean_and_std(values: &[f64]) -> (f64, f64) {
        let mean = values.iter().sum::<f64>() / values.len() as f64;
        let variance = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / values.len() as f64;
        (mean, variance.sqrt())
    }

    #[test]
    fn it_is_deterministic_per_seed() {
        assert_eq!(synthetic(&config(200, 0.3, 5)), synthetic(&config(200, 0.3, 5)));
        assert_ne!(synthetic(&config(200, 0.3, 5)), synthetic(&config(200, 0.3, 6)));
    }

    #[test]
    fn the_positive_rate_is_as_requested() {
        for rate in [0.05, 0.3, 0.5, 0.8] {
            let data = synthetic(&config(20_000, rate, 1));
            let observed = data.positive_count() as f64 / data.n_rows() as f64;
            assert!((observed - rate).abs() < 0.015, "rate {rate}: observed {observed}");
        }
        assert_eq!(synthetic(&config(100, 0.0, 1)).positive_count(), 0);
        assert_eq!(synthetic(&config(100, 1.0, 1)).positive_count(), 100);
    }

    #[test]
    fn features_have_mixed_scales_and_correlations() {
        let data = synthetic(&config(5000, 0.3, 2));
        data.validate().unwrap();
        let (large_mean, large_std) = mean_and_std(&column(&data, 0));
        let (small_mean, small_std) = mean_and_std(&column(&data, 1));
        assert!(large_mean > 1000.0 && large_std > 500.0, "{large_mean} {large_std}");
        assert!(small_mean < 0.1 && small_std < 0.02, "{small_mean} {small_std}");
        // Features 0 and 6 load mainly on the same latent factor.
        let (a, b) = (column(&data, 0), column(&data, 6));
        let ((mean_a, std_a), (mean_b, std_b)) = (mean_and_std(&a), mean_and_std(&b));
        let covariance = a.iter().zip(&b).map(|(x, y)| (x - mean_a) * (y - mean_b)).sum::<f64>() / a.len() as f64;
        let correlation = covariance / (std_a * std_b);
        assert!(correlation > 0.2, "{correlation}");
    }

    #[test]
    fn the_label_is_learnable_but_noisy() {
        let data = synthetic(&config(3000, 0.25, 3));
        let (mut train, mut validation) = train_validation_split(&data, 0.3, 3).unwrap();
        let standardizer = Standardizer::fit(&train);
        standardizer.apply(&mut train).unwrap();
        standardizer.apply(&mut validation).unwrap();
        let spec = ModelSpec { kind: ModelKind::LogisticRegression, n_features: 12, task: Task::BinaryClassification };
        let settings = TrainConfig { epochs: 3, batch_size: 32, learning_rate: 0.1, seed: 3, proximal_mu: 0.0 };
        let outcome = train_local(&spec, &spec.init_parameters(3), &train, &settings).unwrap();
        let auroc = evaluate(&spec, &outcome.parameters, &validation).unwrap().auroc.unwrap();
        assert!((0.8..0.97).contains(&auroc), "{auroc}");
    }

    #[test]
    fn invalid_configs_are_reported_but_still_generate() {
        let mut bad = config(10, 1.5, 0);
        assert!(bad.validate().unwrap_err().to_string().starts_with("invalid positive_rate"));
        assert_eq!(synthetic(&bad).positive_count(), 10);
        bad.positive_rate = f64::NAN;
        assert!(bad.validate().is_err());
        bad.n_features = 0;
        assert!(bad.validate().unwrap_err().to_string().starts_with("invalid n_features"));
        synthetic(&bad).validate().unwrap();
    }
}
