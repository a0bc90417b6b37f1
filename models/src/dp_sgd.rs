//! DP-SGD: local training with Poisson sampling, per-example clipping and Gaussian noise, for every model of the zoo.
//!
//! Each step of [`train_dp`]
//! 1. draws a batch by Poisson sampling: every local row is included independently with probability
//!    `q = expected_batch_size / n_rows`, so the batch size varies from step to step (and may be 0);
//! 2. computes the gradient `gᵢ` of every sampled row's loss and clips it to L2 norm `C`, scaling it by
//!    `cᵢ = min(1, C / ‖gᵢ‖)`;
//! 3. adds Gaussian noise of standard deviation `σ·C` to every coordinate of the clipped sum `Σᵢ cᵢ gᵢ`, divides by
//!    the *expected* batch size `q·n_rows` (dividing by the actual size would leak it), and takes a plain SGD step
//!    (no momentum, no weight decay, as [`train_local`](crate::train_local)).
//!
//! A training run is therefore `steps` Poisson-subsampled Gaussian mechanisms with sensitivity `C` and noise
//! multiplier `σ`: [`DpTrainOutcome::record_spend`] feeds exactly that to a `pdc_privacy` accountant
//! (`compose_poisson_gaussian(q, σ, steps)`), and [`DpTrainConfig::sampling_rate`] and [`DpTrainConfig::steps`]
//! give the same figures before training, so a PDC can refuse a round its budget cannot afford.
//!
//! # How the per-example gradients are computed
//!
//! Every model is a stack of dense layers `z_l = a_l W_l + b_l` with ReLU between them. For one example the
//! gradient of layer `l`'s weight is the outer product `a_{l,i} Δ_{l,i}ᵀ` and that of its bias is `Δ_{l,i}`, where
//! `Δ_l = ∂ℓᵢ/∂z_l`. One backward pass over the whole batch yields every `Δ_l` as a `[batch, d_out]` matrix with one
//! row per example, because example `i`'s loss depends only on row `i`. Then
//! - the per-example norms follow in closed form: `‖gᵢ‖² = Σ_l ‖Δ_{l,i}‖² (‖a_{l,i}‖² + 1)`;
//! - the clipped sum of layer `l` is `a_lᵀ (c ⊙ Δ_l)` for the weight and `Σᵢ cᵢ Δ_{l,i}` for the bias: one matrix
//!   product per layer, and no per-example gradient is ever materialised.
//!
//! The clipped sum is accumulated in `f64`, and noised in `f64` before anything is rounded to `f32`: each term
//! (a product of two `f32` values) is exact in `f64`, so the sum's only rounding is the accumulation's, which
//! stretches one example's influence by at most a factor `1 + 2.02·m²·2⁻⁵³` for `m` terms. The noise's standard
//! deviation is `σ·C` times [`pdc_privacy::noise::f64_sum_rounding_factor`] of the table's size (the largest batch
//! Poisson sampling can draw), so rounding never leaves the sensitivity above what the noise covers. An `f32` sum
//! would not do: its rounding grows with the sum's magnitude, up to `m·C·2⁻²⁴`.
//!
//! The forward and backward passes are written out on `f32` buffers with ndarray's matrix products (matrixmultiply,
//! which picks AVX/FMA kernels at run time) instead of going through burn's autodiff: for models this small burn's
//! per-operation bookkeeping would dominate the step. The tests check every per-example gradient against burn's
//! autodiff run one example at a time, and a noiseless, unclipped run against burn-trained SGD on the same batches.
//!
//! # What is private and what is not
//!
//! - The returned parameters are (ε, δ)-DP with respect to adding or removing one row, as the accountant says,
//!   provided the sampling stays secret: amplification by subsampling assumes that nobody else knows which rows
//!   each batch held. Leave [`DpTrainConfig::sampling_seed`] at `None` in production (the seed then comes from the
//!   operating system); fixed seeds are for tests and simulations.
//! - [`DpTrainOutcome::mean_loss`] and [`DpTrainOutcome::n_clipped`] are computed from the rows without noise: they
//!   are for the hospital's own operators and logs, not for release.
//! - The fast noise ([`NoiseMode::Fast`]) has the floating-point caveat of every `f64` Gaussian sampler (Mironov
//!   2012); [`NoiseMode::Exact`] draws through OpenDP's exact sampler instead, at a far higher cost per value.

use ndarray::linalg::general_mat_mul;
use ndarray::{ArrayView2, ArrayViewMut2};
use pdc_privacy::noise::f64_sum_rounding_factor;
use pdc_privacy::{Accountant, GaussianNoise, NoiseMode};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha20Rng;
use serde::{Deserialize, Serialize};

use crate::train::check_model_and_data;
use crate::{Dataset, Error, ModelSpec, Result, Task};

/// How to train locally with DP-SGD ([`train_dp`]).
///
/// # Example
///
/// ```
/// use pdc_models::{DpTrainConfig, NoiseMode};
///
/// let config = DpTrainConfig {
///     epochs: 5,
///     expected_batch_size: 64,
///     learning_rate: 0.1,
///     clip_norm: 1.0,
///     noise_multiplier: 1.1,
///     noise_mode: NoiseMode::Fast,
///     sampling_seed: None,
///     proximal_mu: 0.0,
/// };
/// // On 1,000 local rows: q = 64 / 1000 and 5 x ceil(1000 / 64) = 80 steps.
/// assert_eq!(config.sampling_rate(1000), 0.064);
/// assert_eq!(config.steps(1000), 80);
/// # config.validate()?;
/// # Ok::<(), pdc_models::Error>(())
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DpTrainConfig {
    /// Passes over the data; at least 1. An epoch is `ceil(n_rows / expected_batch_size)` steps, so that it
    /// samples `n_rows` rows in expectation.
    pub epochs: u32,
    /// The expected number of rows per batch; at least 1. The sampling rate is
    /// `q = min(1, expected_batch_size / n_rows)`.
    pub expected_batch_size: usize,
    /// The SGD step size; finite and positive.
    pub learning_rate: f64,
    /// The L2 norm `C` every per-example gradient is clipped to; positive. `f64::INFINITY` turns clipping off and
    /// is only allowed with `noise_multiplier = 0` (then the run is plain SGD with Poisson batches, for tests).
    pub clip_norm: f64,
    /// The noise multiplier `σ`: the noise added to the clipped sum has standard deviation `σ·C`. Finite and
    /// non-negative; 0 adds no noise and gives no privacy (an accountant reports ε = ∞).
    pub noise_multiplier: f64,
    /// Which Gaussian sampler draws the noise: fast (ChaCha20 + ziggurat, the default) or OpenDP's exact sampler.
    #[serde(default)]
    pub noise_mode: NoiseMode,
    /// Seeds the Poisson sampling (a ChaCha20 stream). `None`, the production setting, seeds it from the operating
    /// system; a fixed seed makes the batches reproducible, for tests and simulations only (see the module docs).
    #[serde(default)]
    pub sampling_seed: Option<u64>,
    /// FedProx's proximal coefficient μ, as in [`TrainConfig::proximal_mu`](crate::TrainConfig::proximal_mu): each
    /// step also moves `w` by `−learning_rate·μ·(w − w₀)`, `w₀` the model training started from. The term
    /// depends only on the current parameters and the global model, never on a row, so it needs no clipping or
    /// noise and leaves the privacy analysis unchanged (post-processing). 0 (the default) is plain DP-SGD.
    #[serde(default)]
    pub proximal_mu: f64,
}

/// What DP-SGD produced: the trained parameters and the bookkeeping an accountant needs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DpTrainOutcome {
    /// The trained parameters, in [`ModelSpec::layout`] order.
    pub parameters: Vec<f32>,
    /// The number of local rows (the weight of this update in federated averaging).
    pub n_examples: usize,
    /// The number of DP-SGD steps taken, each a Poisson-subsampled Gaussian mechanism.
    pub steps: u64,
    /// The Poisson sampling rate `q` of every step.
    pub sampling_rate: f64,
    /// The noise multiplier `σ` of every step.
    pub noise_multiplier: f64,
    /// The clip norm `C` of every step (the L2 sensitivity of each step's sum).
    pub clip_norm: f64,
    /// The sampler that drew the noise.
    pub noise_mode: NoiseMode,
    /// The number of rows sampled over all steps (about `q · n_examples · steps`). Not private.
    pub n_sampled: u64,
    /// How many of those per-example gradients were longer than `C` and scaled down. Not private.
    pub n_clipped: u64,
    /// The training loss averaged over every sampled row, each measured in the forward pass of its batch (before
    /// that batch's update); 0 if no row was sampled. Not private: keep it inside the PDC.
    pub mean_loss: f64,
}

impl DpTrainConfig {
    /// Checks every field: epochs and expected batch size at least 1, the learning rate finite and positive, the
    /// noise multiplier finite and non-negative, the clip norm positive (infinite only without noise), the noise
    /// standard deviation `σ·C` finite, and the proximal coefficient valid ([`crate::check_proximal_mu`]).
    pub fn validate(&self) -> Result<()> {
        let invalid = |name, reason: String| Err(Error::InvalidArgument { name, reason });
        if self.epochs == 0 {
            return invalid("epochs", "must be at least 1".to_owned());
        }
        if self.expected_batch_size == 0 {
            return invalid("expected_batch_size", "must be at least 1".to_owned());
        }
        if !(self.learning_rate.is_finite() && self.learning_rate > 0.0) {
            return invalid("learning_rate", format!("{} is not finite and positive", self.learning_rate));
        }
        if !(self.noise_multiplier.is_finite() && self.noise_multiplier >= 0.0) {
            return invalid("noise_multiplier", format!("{} is not finite and non-negative", self.noise_multiplier));
        }
        if self.clip_norm.is_nan() || self.clip_norm <= 0.0 {
            return invalid("clip_norm", format!("{} is not positive", self.clip_norm));
        }
        if self.noise_multiplier > 0.0 && !(self.noise_multiplier * self.clip_norm).is_finite() {
            return invalid(
                "clip_norm",
                format!(
                    "the noise standard deviation {} x {} is not finite; an infinite clip norm needs noise_multiplier 0",
                    self.noise_multiplier, self.clip_norm
                ),
            );
        }
        crate::train::check_proximal_mu(self.proximal_mu, self.learning_rate)
    }

    /// The Poisson sampling rate on `n_rows` local rows: `min(1, expected_batch_size / n_rows)` (1 when `n_rows`
    /// is 0).
    pub fn sampling_rate(&self, n_rows: usize) -> f64 {
        if n_rows == 0 { 1.0 } else { self.expected_batch_size.min(n_rows) as f64 / n_rows as f64 }
    }

    /// The number of steps a run on `n_rows` local rows takes: `epochs × ceil(n_rows / expected_batch_size)`.
    pub fn steps(&self, n_rows: usize) -> u64 {
        u64::from(self.epochs) * self.steps_per_epoch(n_rows)
    }

    fn steps_per_epoch(&self, n_rows: usize) -> u64 {
        n_rows.div_ceil(self.expected_batch_size.max(1)) as u64
    }
}

impl DpTrainOutcome {
    /// Records what this run spent on `accountant`: `steps` Poisson-subsampled Gaussian steps at rate
    /// `sampling_rate` with noise multiplier `noise_multiplier`.
    ///
    /// # Example
    ///
    /// ```
    /// use pdc_models::{
    ///     DpTrainConfig, ModelKind, ModelSpec, NoiseMode, SyntheticConfig, Task, synthetic, train_dp,
    /// };
    /// use pdc_privacy::{Accountant, RdpAccountant};
    ///
    /// let data = synthetic(&SyntheticConfig { n_rows: 500, n_features: 4, positive_rate: 0.5, seed: 1 });
    /// let spec = ModelSpec { kind: ModelKind::LogisticRegression, n_features: 4, task: Task::BinaryClassification };
    /// let config = DpTrainConfig {
    ///     epochs: 2,
    ///     expected_batch_size: 50,
    ///     learning_rate: 0.1,
    ///     clip_norm: 1.0,
    ///     noise_multiplier: 1.1,
    ///     noise_mode: NoiseMode::Fast,
    ///     sampling_seed: None,
    ///     proximal_mu: 0.0,
    /// };
    /// let outcome = train_dp(&spec, &spec.init_parameters(0), &data, &config)?;
    /// assert_eq!((outcome.steps, outcome.sampling_rate), (20, 0.1));
    ///
    /// let mut accountant = RdpAccountant::new();
    /// outcome.record_spend(&mut accountant);
    /// let epsilon = accountant.epsilon(1e-5)?;
    /// assert!(epsilon > 0.0 && epsilon < 10.0, "{epsilon}");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn record_spend<A: Accountant + ?Sized>(&self, accountant: &mut A) {
        accountant.compose_poisson_gaussian(self.sampling_rate, self.noise_multiplier, self.steps);
    }
}

/// A study's `[privacy]` table: every PDC trains with DP-SGD at these settings.
///
/// The researcher states either the noise multiplier `σ` itself or a `target_epsilon` for the whole study; with a
/// target, each PDC calibrates the smallest `σ` that keeps `rounds × steps` Poisson-subsampled Gaussian steps at its
/// own sampling rate within `target_epsilon` at `delta` ([`LocalDpSettings::train_config`]), so PDCs of different
/// sizes use different `σ` for the same promise.
///
/// ```
/// use pdc_models::{LocalDpSettings, NoiseMode};
///
/// let settings: LocalDpSettings = toml::from_str("clip_norm = 1.0\ntarget_epsilon = 3.0\ndelta = 1e-5\n")?;
/// settings.validate()?;
/// // 10 rounds of 2 epochs at expected batch 32 on 256 rows: q = 1/8, 160 steps in all.
/// let config = settings.train_config(2, 32, 0.1, 10, 256)?;
/// assert_eq!(config.sampling_rate(256), 0.125);
/// assert!(config.noise_multiplier > 0.5 && config.noise_multiplier < 5.0);
/// assert_eq!(config.noise_mode, NoiseMode::Fast);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LocalDpSettings {
    /// The clip norm `C` of every per-example gradient; finite and positive.
    pub clip_norm: f64,
    /// The noise multiplier `σ`; give this or `target_epsilon`, not both.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub noise_multiplier: Option<f64>,
    /// The ε the whole study may cost each PDC, at `delta`; give this or `noise_multiplier`, not both.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_epsilon: Option<f64>,
    /// The δ of `target_epsilon`, in (0, 1). A PDC accounts at its own budget's δ.
    pub delta: f64,
    /// The noise sampler: `fast` (the default) or `exact`.
    #[serde(default)]
    pub noise: NoiseMode,
}

impl LocalDpSettings {
    /// Checks the values: a finite, positive clip norm; exactly one of a finite, positive noise multiplier and a
    /// finite, positive target ε; `0 < delta < 1`.
    pub fn validate(&self) -> Result<()> {
        let invalid = |name, reason: String| Err(Error::InvalidArgument { name, reason });
        if !(self.clip_norm.is_finite() && self.clip_norm > 0.0) {
            return invalid("privacy.clip_norm", format!("{} is not finite and positive", self.clip_norm));
        }
        if !(self.delta > 0.0 && self.delta < 1.0) {
            return invalid("privacy.delta", format!("{} is not in (0, 1)", self.delta));
        }
        match (self.noise_multiplier, self.target_epsilon) {
            (Some(_), Some(_)) | (None, None) => {
                invalid("privacy", "give exactly one of noise_multiplier and target_epsilon".to_owned())
            }
            (Some(sigma), None) if !(sigma.is_finite() && sigma > 0.0) => {
                invalid("privacy.noise_multiplier", format!("{sigma} is not finite and positive"))
            }
            (None, Some(epsilon)) if !(epsilon.is_finite() && epsilon > 0.0) => {
                invalid("privacy.target_epsilon", format!("{epsilon} is not finite and positive"))
            }
            _ => Ok(()),
        }
    }

    /// The DP-SGD configuration of one round on `n_rows` local rows of a study with `rounds` rounds of `epochs`
    /// epochs at `expected_batch_size` and `learning_rate`; the Poisson sampling is seeded from the operating
    /// system. With a target ε, `σ` is calibrated over all `rounds` of the study.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidArgument`] for invalid settings or sizes; [`Error::Privacy`] if no `σ` meets the target.
    pub fn train_config(
        &self,
        epochs: u32,
        expected_batch_size: usize,
        learning_rate: f64,
        rounds: u32,
        n_rows: usize,
    ) -> Result<DpTrainConfig> {
        self.validate()?;
        let mut config = DpTrainConfig {
            epochs,
            expected_batch_size,
            learning_rate,
            clip_norm: self.clip_norm,
            noise_multiplier: self.noise_multiplier.unwrap_or(0.0),
            noise_mode: self.noise,
            sampling_seed: None,
            proximal_mu: 0.0,
        };
        if let Some(target) = self.target_epsilon {
            let steps = config.steps(n_rows).saturating_mul(u64::from(rounds));
            config.noise_multiplier =
                pdc_privacy::calibrate_noise_multiplier(target, self.delta, config.sampling_rate(n_rows), steps)?;
        }
        config.validate()?;
        Ok(config)
    }
}

/// Trains `initial` parameters on `data` with DP-SGD: Poisson-sampled batches, per-example gradients clipped to
/// `config.clip_norm`, Gaussian noise of standard deviation `noise_multiplier · clip_norm` on their sum, division
/// by the expected batch size, then a plain SGD step (see the module docs for the method and for what is private).
///
/// The losses are those of [`train_local`](crate::train_local): binary cross-entropy with logits, or the squared
/// error, per row. Steps whose batch is empty still add noise and step, as the privacy analysis requires.
///
/// # Shapes
///
/// - `initial`: `[n_parameters]` in [`ModelSpec::layout`] order (weights `[d_input, d_output]` row-major, then
///   biases `[d_output]`, layer by layer)
/// - `data`: `[n_rows, spec.n_features]` features and `[n_rows]` labels
/// - each step's per-example output gradients `Δ_l`: `[batch_size, d_output]` per layer
/// - the result's `parameters`: `[n_parameters]`, same layout
///
/// # Errors
///
/// Fails before training if the spec, parameters, data or config are invalid (as [`train_local`](crate::train_local)
/// does, plus [`DpTrainConfig::validate`]), or with [`Error::Privacy`] if the operating system cannot seed the
/// sampler or the noise. During training: [`Error::Diverged`] as soon as a batch loss is not finite,
/// [`Error::NonFiniteGradient`] if a per-example gradient overflows, [`Error::Privacy`] if OpenDP's exact sampler
/// refuses, and [`Error::DivergedParameters`] if the last step leaves a parameter that is not finite.
pub fn train_dp(spec: &ModelSpec, initial: &[f32], data: &Dataset, config: &DpTrainConfig) -> Result<DpTrainOutcome> {
    config.validate()?;
    check_model_and_data(spec, initial, data)?;
    let sampler = PoissonSampler::new(data.n_rows(), config.sampling_rate(data.n_rows()), config.sampling_seed)?;
    let noise = if config.noise_multiplier > 0.0 {
        // The clipped sum is accumulated in f64 over a batch of at most n_rows examples; the factor keeps its
        // rounding within the noise (see `pdc_privacy::noise::f64_sum_rounding_factor`).
        let rounding = f64_sum_rounding_factor(data.n_rows());
        Some(GaussianNoise::new(config.noise_multiplier * config.clip_norm * rounding)?)
    } else {
        None
    };
    run(spec, initial, data, config, sampler, noise)
}

/// `1 − 2⁻²²`, as in `pdc_privacy::clip`: the clip factor is shrunk by this much so that rounding the scaled
/// `Δ` rows (and the factor itself) to `f32` can never push a clipped gradient's norm over `C`.
const CLIP_MARGIN: f64 = 1.0 - 1.0 / (1u64 << 22) as f64;

/// The training loop of [`train_dp`] on validated inputs, with the sampler and noise source given (tests inject
/// seeded ones; `noise` is `None` exactly when `config.noise_multiplier` is 0).
fn run(
    spec: &ModelSpec,
    initial: &[f32],
    data: &Dataset,
    config: &DpTrainConfig,
    mut sampler: PoissonSampler,
    mut noise: Option<GaussianNoise>,
) -> Result<DpTrainOutcome> {
    let n_rows = data.n_rows();
    let steps_per_epoch = config.steps_per_epoch(n_rows);
    let steps = config.steps(n_rows);
    let step_size = config.learning_rate / config.expected_batch_size.min(n_rows) as f64;
    let mut gradients = PerExampleGradients::new(spec);
    let mut parameters = initial.to_vec();
    let mut batch = Vec::with_capacity(2 * config.expected_batch_size.min(n_rows));
    let (mut n_sampled, mut n_clipped, mut loss_sum) = (0u64, 0u64, 0.0f64);

    for step in 1..=steps {
        // At most `epochs`, so it fits the u32 it came from.
        let epoch = ((step - 1) / steps_per_epoch + 1) as u32;
        sampler.sample(&mut batch);
        let batch_loss = gradients.backward(&parameters, data, &batch);
        if !batch_loss.is_finite() {
            return Err(Error::Diverged { epoch, step, loss: batch_loss / batch.len() as f64 });
        }
        loss_sum += batch_loss;
        n_sampled += batch.len() as u64;
        n_clipped += gradients.clip_and_sum(config.clip_norm).ok_or(Error::NonFiniteGradient { epoch, step })?;
        if let Some(noise) = &mut noise {
            noise.add_f64(gradients.sum_mut(), config.noise_mode)?;
        }
        if config.proximal_mu > 0.0 {
            // FedProx: the proximal gradient μ·(w − w₀) joins the privatised mean gradient.
            let pull = config.learning_rate * config.proximal_mu;
            for ((parameter, &gradient), &anchor) in parameters.iter_mut().zip(gradients.sum()).zip(initial) {
                let current = f64::from(*parameter);
                *parameter = (current - step_size * gradient - pull * (current - f64::from(anchor))) as f32;
            }
        } else {
            for (parameter, &gradient) in parameters.iter_mut().zip(gradients.sum()) {
                *parameter = (f64::from(*parameter) - step_size * gradient) as f32;
            }
        }
    }

    // Each update is checked by the next step's loss, except the last.
    if parameters.iter().any(|value| !value.is_finite()) {
        return Err(Error::DivergedParameters { epoch: config.epochs, step: steps });
    }
    Ok(DpTrainOutcome {
        parameters,
        n_examples: n_rows,
        steps,
        sampling_rate: config.sampling_rate(n_rows),
        noise_multiplier: config.noise_multiplier,
        clip_norm: config.clip_norm,
        noise_mode: config.noise_mode,
        n_sampled,
        n_clipped,
        mean_loss: if n_sampled == 0 { 0.0 } else { loss_sum / n_sampled as f64 },
    })
}

/// Poisson sampling of row indices: each of `n_rows` rows independently with probability `sampling_rate`.
///
/// Rather than one draw per row, it draws the gaps between sampled rows, which are geometric with parameter `q`
/// (`⌊ln U / ln(1 − q)⌋` failures before the next success, `U` uniform on (0, 1]): the same distribution at a cost
/// proportional to the batch, not to the dataset.
pub(crate) struct PoissonSampler {
    n_rows: usize,
    sampling_rate: f64,
    /// `ln(1 − q)`, negative when `q < 1`.
    log_complement: f64,
    rng: ChaCha20Rng,
}

impl PoissonSampler {
    /// A sampler over `n_rows` rows at `sampling_rate` in (0, 1], seeded with `seed` or, if `None`, from the
    /// operating system.
    pub(crate) fn new(n_rows: usize, sampling_rate: f64, seed: Option<u64>) -> Result<PoissonSampler> {
        let rng = match seed {
            Some(seed) => ChaCha20Rng::seed_from_u64(seed),
            None => ChaCha20Rng::try_from_os_rng()
                .map_err(|error| pdc_privacy::Error::Entropy { reason: error.to_string() })?,
        };
        Ok(PoissonSampler { n_rows, sampling_rate, log_complement: (-sampling_rate).ln_1p(), rng })
    }

    /// Replaces `batch` with the next sample, in increasing row order.
    pub(crate) fn sample(&mut self, batch: &mut Vec<usize>) {
        batch.clear();
        if self.sampling_rate >= 1.0 {
            batch.extend(0..self.n_rows);
            return;
        }
        let mut next = 0usize;
        while next < self.n_rows {
            let uniform = 1.0 - self.rng.random::<f64>();
            let gap = (uniform.ln() / self.log_complement).floor();
            // The gap is never NaN (ln U ≤ 0 and ln(1 − q) < 0) and may be +inf for a tiny q.
            if gap >= (self.n_rows - next) as f64 {
                break;
            }
            next += gap as usize;
            batch.push(next);
            next += 1;
        }
    }
}

/// Buffers for one batch's per-example gradients, kept between steps so that a step allocates nothing.
///
/// # Shapes
///
/// With `widths = [n_features, hidden..., 1]`, `L = widths.len() - 1` layers and `m` rows in the batch:
/// - `inputs[l]`: `[m, widths[l]]`, the input of layer `l` (`inputs[0]` the batch's features, then ReLU outputs)
/// - `deltas[l]`: `[m, widths[l + 1]]`, `∂ℓᵢ/∂z_l` per example (scaled by `cᵢ` once clipped)
/// - `squared_norms`: `[m]`
/// - `sum`: `[n_parameters]` in layout order
pub(crate) struct PerExampleGradients {
    task: Task,
    widths: Vec<usize>,
    /// Where each layer's weight starts in the flat parameter vector; its bias follows it.
    weight_offsets: Vec<usize>,
    n_rows: usize,
    inputs: Vec<Vec<f32>>,
    deltas: Vec<Vec<f32>>,
    squared_norms: Vec<f64>,
    /// The clipped sum, accumulated in `f64` so that its rounding stays within the noise's margin.
    sum: Vec<f64>,
    /// `f64` copies of one layer's `inputs` and `deltas` for the sum's matrix product (reused between steps).
    wide_inputs: Vec<f64>,
    wide_deltas: Vec<f64>,
}

impl PerExampleGradients {
    /// Empty buffers for a validated `spec`.
    pub(crate) fn new(spec: &ModelSpec) -> PerExampleGradients {
        let widths = spec.layer_widths();
        let n_layers = widths.len() - 1;
        let mut weight_offsets = Vec::with_capacity(n_layers);
        let mut offset = 0;
        for pair in widths.windows(2) {
            weight_offsets.push(offset);
            offset += pair[0] * pair[1] + pair[1];
        }
        PerExampleGradients {
            task: spec.task,
            widths,
            weight_offsets,
            n_rows: 0,
            inputs: vec![Vec::new(); n_layers],
            deltas: vec![Vec::new(); n_layers],
            squared_norms: Vec::new(),
            sum: vec![0.0; offset],
            wide_inputs: Vec::new(),
            wide_deltas: Vec::new(),
        }
    }

    /// One forward and backward pass over the rows `batch` of `data`: fills `inputs` and `deltas` and returns the
    /// sum of the rows' losses.
    pub(crate) fn backward(&mut self, parameters: &[f32], data: &Dataset, batch: &[usize]) -> f64 {
        let m = batch.len();
        let n_layers = self.widths.len() - 1;
        self.n_rows = m;
        let features = &mut self.inputs[0];
        features.clear();
        for &row in batch {
            features.extend_from_slice(data.row(row));
        }

        for layer in 0..n_layers {
            let (d_input, d_output) = (self.widths[layer], self.widths[layer + 1]);
            let (weight, bias) = layer_parameters(parameters, self.weight_offsets[layer], d_input, d_output);
            let (before, after) = self.inputs.split_at_mut(layer + 1);
            let hidden = layer + 1 < n_layers;
            // The output layer's z goes straight into its Δ buffer, which the loss's derivative then overwrites.
            let output = if hidden { &mut after[0] } else { &mut self.deltas[layer] };
            output.clear();
            for _ in 0..m {
                output.extend_from_slice(bias);
            }
            general_mat_mul(
                1.0,
                &matrix(&before[layer], m, d_input),
                &weight,
                1.0,
                &mut matrix_mut(output, m, d_output),
            );
            if hidden {
                for value in output.iter_mut() {
                    *value = value.max(0.0);
                }
            }
        }

        let mut loss_sum = 0.0;
        for (value, &row) in self.deltas[n_layers - 1].iter_mut().zip(batch) {
            let (loss, slope) = example_loss(self.task, f64::from(*value), f64::from(data.labels[row]));
            loss_sum += loss;
            *value = slope as f32;
        }

        for layer in (1..n_layers).rev() {
            let (d_input, d_output) = (self.widths[layer], self.widths[layer + 1]);
            let (weight, _) = layer_parameters(parameters, self.weight_offsets[layer], d_input, d_output);
            let (lower, upper) = self.deltas.split_at_mut(layer);
            let downstream = &mut lower[layer - 1];
            downstream.clear();
            downstream.resize(m * d_input, 0.0);
            general_mat_mul(
                1.0,
                &matrix(&upper[0], m, d_output),
                &weight.t(),
                0.0,
                &mut matrix_mut(downstream, m, d_input),
            );
            // inputs[layer] is ReLU(z_{layer-1}): positive exactly where the ReLU passes its gradient (burn's
            // convention too: no gradient at 0).
            for (delta, &activation) in downstream.iter_mut().zip(&self.inputs[layer]) {
                if activation <= 0.0 {
                    *delta = 0.0;
                }
            }
        }
        loss_sum
    }

    /// Computes `‖gᵢ‖² = Σ_l ‖Δ_{l,i}‖² (‖a_{l,i}‖² + 1)` for every row of the last [`backward`](Self::backward),
    /// in `f64`.
    pub(crate) fn compute_squared_norms(&mut self) -> &[f64] {
        self.squared_norms.clear();
        self.squared_norms.resize(self.n_rows, 0.0);
        for layer in 0..self.widths.len() - 1 {
            let (d_input, d_output) = (self.widths[layer], self.widths[layer + 1]);
            let rows = self.inputs[layer].chunks_exact(d_input).zip(self.deltas[layer].chunks_exact(d_output));
            for (norm, (input, delta)) in self.squared_norms.iter_mut().zip(rows) {
                *norm += squared_norm(delta) * (squared_norm(input) + 1.0);
            }
        }
        &self.squared_norms
    }

    /// Clips every per-example gradient of the last [`backward`](Self::backward) to `clip_norm` (scaling its `Δ`
    /// rows) and writes the clipped sum into [`sum`](Self::sum); returns how many were clipped, or `None` if a
    /// per-example norm is not finite. An infinite `clip_norm` clips nothing.
    pub(crate) fn clip_and_sum(&mut self, clip_norm: f64) -> Option<u64> {
        let m = self.n_rows;
        let n_layers = self.widths.len() - 1;
        let mut n_clipped = 0;
        if clip_norm.is_finite() {
            self.compute_squared_norms();
            for row in 0..m {
                let norm = self.squared_norms[row].sqrt();
                if !norm.is_finite() {
                    return None;
                }
                if norm > clip_norm {
                    n_clipped += 1;
                    let factor = (clip_norm / norm * CLIP_MARGIN) as f32;
                    for (layer, deltas) in self.deltas.iter_mut().enumerate() {
                        let d_output = self.widths[layer + 1];
                        for delta in &mut deltas[row * d_output..(row + 1) * d_output] {
                            *delta *= factor;
                        }
                    }
                }
            }
        }

        for layer in 0..n_layers {
            let (d_input, d_output) = (self.widths[layer], self.widths[layer + 1]);
            let start = self.weight_offsets[layer];
            let (weight_sum, rest) = self.sum[start..].split_at_mut(d_input * d_output);
            let bias_sum = &mut rest[..d_output];
            bias_sum.fill(0.0);
            if m == 0 {
                weight_sum.fill(0.0);
                continue;
            }
            // Every term a·Δ of two f32 values is exact in f64, so the sum's only rounding is the f64
            // accumulation that the noise's rounding factor allows for.
            widen(&self.inputs[layer][..m * d_input], &mut self.wide_inputs);
            widen(&self.deltas[layer][..m * d_output], &mut self.wide_deltas);
            general_mat_mul(
                1.0,
                &wide_matrix(&self.wide_inputs, m, d_input).t(),
                &wide_matrix(&self.wide_deltas, m, d_output),
                0.0,
                &mut ArrayViewMut2::from_shape((d_input, d_output), weight_sum).expect("the slice holds the weight"),
            );
            for delta in self.wide_deltas.chunks_exact(d_output) {
                for (total, &value) in bias_sum.iter_mut().zip(delta) {
                    *total += value;
                }
            }
        }
        Some(n_clipped)
    }

    /// The clipped sum of the per-example gradients, in layout order, as [`clip_and_sum`](Self::clip_and_sum)
    /// left it.
    pub(crate) fn sum(&self) -> &[f64] {
        &self.sum
    }

    /// The clipped sum, for the noise to be added in place.
    pub(crate) fn sum_mut(&mut self) -> &mut [f64] {
        &mut self.sum
    }

    /// Row `row`'s gradient as the `f64` clipped sum adds it: every entry the exact `f64` product of the `f32`
    /// input and `Δ` values (clipped if [`clip_and_sum`](Self::clip_and_sum) ran since).
    #[cfg(test)]
    pub(crate) fn exact_example_gradient(&self, row: usize) -> Vec<f64> {
        let mut gradient = Vec::with_capacity(self.sum.len());
        for layer in 0..self.widths.len() - 1 {
            let (d_input, d_output) = (self.widths[layer], self.widths[layer + 1]);
            let input = &self.inputs[layer][row * d_input..(row + 1) * d_input];
            let delta = &self.deltas[layer][row * d_output..(row + 1) * d_output];
            for &a in input {
                gradient.extend(delta.iter().map(|&d| f64::from(a) * f64::from(d)));
            }
            gradient.extend(delta.iter().map(|&d| f64::from(d)));
        }
        gradient
    }

    /// Row `row`'s gradient of the last [`backward`](Self::backward), materialised in layout order (clipped if
    /// [`clip_and_sum`](Self::clip_and_sum) ran since), each entry one `f32` product as the sum's terms are.
    #[cfg(test)]
    pub(crate) fn example_gradient(&self, row: usize) -> Vec<f32> {
        let mut gradient = Vec::with_capacity(self.sum.len());
        for layer in 0..self.widths.len() - 1 {
            let (d_input, d_output) = (self.widths[layer], self.widths[layer + 1]);
            let input = &self.inputs[layer][row * d_input..(row + 1) * d_input];
            let delta = &self.deltas[layer][row * d_output..(row + 1) * d_output];
            for &a in input {
                gradient.extend(delta.iter().map(|&d| a * d));
            }
            gradient.extend_from_slice(delta);
        }
        gradient
    }
}

/// The loss of one row and its derivative with respect to the model's output.
fn example_loss(task: Task, output: f64, label: f64) -> (f64, f64) {
    match task {
        Task::BinaryClassification => {
            // max(z, 0) - z y + ln(1 + e^-|z|), stable for any z (as in `evaluate`); its derivative is σ(z) - y.
            let loss = output.max(0.0) - output * label + (-output.abs()).exp().ln_1p();
            let probability = if output >= 0.0 {
                1.0 / (1.0 + (-output).exp())
            } else {
                let exp = output.exp();
                exp / (1.0 + exp)
            };
            (loss, probability - label)
        }
        Task::Regression => {
            let error = output - label;
            (error * error, 2.0 * error)
        }
    }
}

/// Layer `l`'s weight `[d_input, d_output]` and bias `[d_output]`, starting at `offset` of the flat parameters.
fn layer_parameters(
    parameters: &[f32],
    offset: usize,
    d_input: usize,
    d_output: usize,
) -> (ArrayView2<'_, f32>, &[f32]) {
    let (weight, rest) = parameters[offset..].split_at(d_input * d_output);
    (matrix(weight, d_input, d_output), &rest[..d_output])
}

/// `values[..rows × cols]` as a row-major matrix.
fn matrix(values: &[f32], rows: usize, cols: usize) -> ArrayView2<'_, f32> {
    ArrayView2::from_shape((rows, cols), &values[..rows * cols]).expect("the slice holds rows × cols values")
}

/// `values[..rows × cols]` as a mutable row-major matrix.
fn matrix_mut(values: &mut [f32], rows: usize, cols: usize) -> ArrayViewMut2<'_, f32> {
    ArrayViewMut2::from_shape((rows, cols), &mut values[..rows * cols]).expect("the slice holds rows × cols values")
}

/// `values[..rows × cols]` of `f64` as a row-major matrix.
fn wide_matrix(values: &[f64], rows: usize, cols: usize) -> ArrayView2<'_, f64> {
    ArrayView2::from_shape((rows, cols), &values[..rows * cols]).expect("the slice holds rows × cols values")
}

/// Replaces `wide` by `values` converted to `f64` (exactly).
fn widen(values: &[f32], wide: &mut Vec<f64>) {
    wide.clear();
    wide.extend(values.iter().map(|&value| f64::from(value)));
}

fn squared_norm(values: &[f32]) -> f64 {
    values.iter().map(|&value| f64::from(value) * f64::from(value)).sum()
}

#[cfg(test)]
mod tests {
    use burn::optim::{GradientsParams, SgdConfig};
    use burn::prelude::*;
    use pdc_privacy::{RdpAccountant, calibrate_noise_multiplier};
    use proptest::prelude::*;

    use super::*;
    use crate::network::{Network, cpu_device};
    use crate::test_data::{self, cancer_split, diabetes_split};
    use crate::train::batch_loss;
    use crate::{ModelKind, TrainConfig, evaluate, train_local};

    /// A noiseless, unclipped configuration: DP-SGD reduced to SGD on Poisson batches.
    fn plain(epochs: u32, expected_batch_size: usize, learning_rate: f64, seed: u64) -> DpTrainConfig {
        DpTrainConfig {
            epochs,
            expected_batch_size,
            learning_rate,
            clip_norm: f64::INFINITY,
            noise_multiplier: 0.0,
            noise_mode: NoiseMode::Fast,
            sampling_seed: Some(seed),
            proximal_mu: 0.0,
        }
    }

    fn private(clip_norm: f64, noise_multiplier: f64) -> DpTrainConfig {
        DpTrainConfig { clip_norm, noise_multiplier, ..plain(1, 16, 0.1, 3) }
    }

    fn assert_close(got: &[f32], expected: &[f32], tolerance: f32, what: &str) {
        assert_eq!(got.len(), expected.len(), "{what}: lengths");
        for (index, (&g, &e)) in got.iter().zip(expected).enumerate() {
            assert!((g - e).abs() <= tolerance * e.abs().max(1.0), "{what}: index {index}: {g} vs {e}");
        }
    }

    fn norm(values: &[f32]) -> f64 {
        squared_norm(values).sqrt()
    }

    /// The models and tasks of the zoo, each with data it is trained on.
    fn zoo() -> Vec<(ModelSpec, Dataset)> {
        let (cancer, _) = cancer_split();
        let (diabetes, _) = diabetes_split();
        let regression = |kind| ModelSpec { kind, n_features: 10, task: Task::Regression };
        vec![
            (test_data::cancer_spec(ModelKind::LogisticRegression), cancer.clone()),
            (test_data::cancer_spec(ModelKind::Mlp { hidden: vec![8, 4] }), cancer),
            (regression(ModelKind::LogisticRegression), diabetes.clone()),
            (regression(ModelKind::Mlp { hidden: vec![6] }), diabetes),
        ]
    }

    /// Burn's autodiff gradient of row `row`'s loss alone, flat in layout order.
    fn burn_example_gradient(spec: &ModelSpec, parameters: &[f32], data: &Dataset, row: usize) -> Vec<f32> {
        let device = cpu_device().autodiff();
        let network = Network::from_parameters(spec, parameters, &device).unwrap();
        let input = Tensor::<2>::from_data(TensorData::new(data.row(row).to_vec(), [1, spec.n_features]), &device);
        let target = Tensor::<2>::from_data(TensorData::new(vec![data.labels[row]], [1, 1]), &device);
        let gradients = batch_loss(spec.task, network.forward(input), target).backward();
        network.flat_gradients(&gradients).unwrap()
    }

    /// Plain SGD through burn's autodiff and optimiser on the given batches, each step minimising the batch's summed
    /// loss divided by `normaliser` (DP-SGD's estimator without clipping and noise).
    fn burn_sgd(
        spec: &ModelSpec,
        initial: &[f32],
        data: &Dataset,
        batches: &[Vec<usize>],
        learning_rate: f64,
        normaliser: f64,
    ) -> Vec<f32> {
        let device = cpu_device().autodiff();
        let mut network = Network::from_parameters(spec, initial, &device).unwrap();
        let mut optimizer = SgdConfig::new().init();
        for batch in batches.iter().filter(|batch| !batch.is_empty()) {
            let features: Vec<f32> = batch.iter().flat_map(|&row| data.row(row).to_vec()).collect();
            let labels: Vec<f32> = batch.iter().map(|&row| data.labels[row]).collect();
            let input = Tensor::<2>::from_data(TensorData::new(features, [batch.len(), spec.n_features]), &device);
            let targets = Tensor::<2>::from_data(TensorData::new(labels, [batch.len(), 1]), &device);
            let loss =
                batch_loss(spec.task, network.forward(input), targets).mul_scalar(batch.len() as f64 / normaliser);
            let gradients = GradientsParams::from_grads(loss.backward(), &network);
            network = optimizer.step(learning_rate, network, gradients);
        }
        network.to_parameters().unwrap()
    }

    #[test]
    fn without_noise_or_clipping_dp_sgd_equals_burn_sgd_on_the_same_batches() {
        for (spec, data) in zoo() {
            let config = plain(2, 32, 0.05, 11);
            let initial = spec.init_parameters(5);
            let outcome = train_dp(&spec, &initial, &data, &config).unwrap();

            let n_rows = data.n_rows();
            let mut sampler = PoissonSampler::new(n_rows, config.sampling_rate(n_rows), config.sampling_seed).unwrap();
            let batches: Vec<Vec<usize>> = (0..outcome.steps)
                .map(|_| {
                    let mut batch = Vec::new();
                    sampler.sample(&mut batch);
                    batch
                })
                .collect();
            let expected = burn_sgd(&spec, &initial, &data, &batches, config.learning_rate, 32.0);
            assert_close(&outcome.parameters, &expected, 1e-4, &format!("{spec:?}"));
            assert_ne!(outcome.parameters, initial);
            assert_eq!(outcome.n_sampled, batches.iter().map(|batch| batch.len() as u64).sum::<u64>());
            assert_eq!(outcome.n_clipped, 0);
        }
    }

    #[test]
    fn full_batch_dp_sgd_without_noise_or_clipping_equals_train_local() {
        // With q = 1 every batch is the whole dataset, so the shuffled full batches of train_local are the same.
        for (spec, data) in zoo() {
            let initial = spec.init_parameters(8);
            let outcome = train_dp(&spec, &initial, &data, &plain(6, data.n_rows(), 0.1, 1)).unwrap();
            let config =
                TrainConfig { epochs: 6, batch_size: data.n_rows(), learning_rate: 0.1, seed: 1, proximal_mu: 0.0 };
            let reference = train_local(&spec, &initial, &data, &config).unwrap();
            assert_eq!((outcome.steps, outcome.sampling_rate), (6, 1.0));
            assert_eq!(outcome.n_sampled, 6 * data.n_rows() as u64);
            assert_close(&outcome.parameters, &reference.parameters, 1e-4, &format!("{spec:?}"));
            assert!((outcome.mean_loss - reference.mean_loss).abs() < 1e-5, "{outcome:?} {reference:?}");
        }
    }

    #[test]
    fn full_batch_fedprox_dp_sgd_equals_fedprox_train_local_and_pulls_towards_the_start() {
        // The proximal step of DP-SGD (applied after the noisy mean gradient) and train_local's (the gradient of
        // μ/2·‖w − w₀‖² through autodiff) are the same update.
        for (spec, data) in zoo() {
            let initial = spec.init_parameters(8);
            let mu = 2.0;
            let fedprox = DpTrainConfig { proximal_mu: mu, ..plain(6, data.n_rows(), 0.1, 1) };
            let outcome = train_dp(&spec, &initial, &data, &fedprox).unwrap();
            let config =
                TrainConfig { epochs: 6, batch_size: data.n_rows(), learning_rate: 0.1, seed: 1, proximal_mu: mu };
            let reference = train_local(&spec, &initial, &data, &config).unwrap();
            assert_close(&outcome.parameters, &reference.parameters, 1e-4, &format!("{spec:?}"));
            let plain_outcome = train_dp(&spec, &initial, &data, &plain(6, data.n_rows(), 0.1, 1)).unwrap();
            let distance = |parameters: &[f32]| {
                let moved: Vec<f32> = parameters.iter().zip(&initial).map(|(w, w0)| w - w0).collect();
                norm(&moved)
            };
            assert!(distance(&outcome.parameters) < distance(&plain_outcome.parameters), "{spec:?}");
            assert!(outcome.parameters != plain_outcome.parameters);
        }
        // With noise, μ changes nothing the accountant sees.
        let (spec, data) = zoo().remove(0);
        let noisy = DpTrainConfig { proximal_mu: 0.5, ..private(1.0, 1.1) };
        let outcome = train_dp(&spec, &spec.init_parameters(1), &data, &noisy).unwrap();
        let without = train_dp(&spec, &spec.init_parameters(1), &data, &private(1.0, 1.1)).unwrap();
        assert_eq!(
            (outcome.steps, outcome.sampling_rate, outcome.noise_multiplier, outcome.clip_norm),
            (without.steps, without.sampling_rate, without.noise_multiplier, without.clip_norm)
        );
        let refused = DpTrainConfig { proximal_mu: 10.0, ..private(1.0, 1.1) };
        assert!(refused.validate().unwrap_err().to_string().starts_with("invalid proximal_mu"));
    }

    #[test]
    fn batched_per_example_gradients_match_burn_one_example_at_a_time() {
        for (spec, data) in zoo() {
            // Trained a little so that no layer is at its initial symmetry and some ReLUs are off.
            let parameters = train_local(
                &spec,
                &spec.init_parameters(2),
                &data,
                &TrainConfig { epochs: 1, batch_size: 16, learning_rate: 0.05, seed: 3, proximal_mu: 0.0 },
            )
            .unwrap()
            .parameters;
            let batch: Vec<usize> = (0..data.n_rows()).step_by(37).collect();
            let mut gradients = PerExampleGradients::new(&spec);
            gradients.backward(&parameters, &data, &batch);
            let squared_norms = gradients.compute_squared_norms().to_vec();

            let mut burn_gradients = Vec::new();
            for (position, &row) in batch.iter().enumerate() {
                let expected = burn_example_gradient(&spec, &parameters, &data, row);
                assert_close(&gradients.example_gradient(position), &expected, 1e-5, &format!("{spec:?} row {row}"));
                // The closed-form norm is the norm of the burn gradient.
                let burn_norm = norm(&expected);
                assert!((squared_norms[position].sqrt() - burn_norm).abs() <= 1e-5 * burn_norm.max(1.0));
                burn_gradients.push(expected);
            }

            // The clipped sum is Σ cᵢ gᵢ with cᵢ from burn's norms. C lies halfway between two middle norms, so
            // that rounding cannot decide whether an example is clipped.
            let clip_norm = {
                let mut norms: Vec<f64> = burn_gradients.iter().map(|g| norm(g)).collect();
                norms.sort_by(f64::total_cmp);
                let middle = norms.len() / 2;
                assert!(norms[middle] > norms[middle - 1] * (1.0 + 1e-4), "{norms:?}");
                (norms[middle - 1] + norms[middle]) / 2.0
            };
            let n_clipped = gradients.clip_and_sum(clip_norm).unwrap();
            let mut expected_sum = vec![0.0f32; gradients.sum().len()];
            let mut expected_clipped = 0;
            let got_sum: Vec<f32> = gradients.sum().iter().map(|&total| total as f32).collect();
            for gradient in &burn_gradients {
                let example_norm = norm(gradient);
                let factor = if example_norm > clip_norm {
                    expected_clipped += 1;
                    (clip_norm / example_norm) as f32
                } else {
                    1.0
                };
                for (total, &g) in expected_sum.iter_mut().zip(gradient) {
                    *total += factor * g;
                }
            }
            assert_eq!(n_clipped, expected_clipped);
            assert!(n_clipped > 0 && n_clipped < batch.len() as u64);
            assert_close(&got_sum, &expected_sum, 1e-4, &format!("{spec:?} clipped sum"));
        }
    }

    /// A random model of the zoo with random parameters and a random batch of rows, all scaled by random powers of
    /// ten so that norms range from tiny to large.
    fn random_case() -> impl Strategy<Value = (ModelSpec, Vec<f32>, Dataset, f64)> {
        let shape = (
            1usize..6,
            prop::collection::vec(1usize..6, 0..3),
            prop::bool::ANY,
            1usize..12,
            -2i32..3,
            -2i32..3,
            -3.0f64..2.0,
        );
        shape.prop_flat_map(|(n_features, hidden, binary, n_rows, parameter_scale, feature_scale, log_clip)| {
            let kind = if hidden.is_empty() { ModelKind::LogisticRegression } else { ModelKind::Mlp { hidden } };
            let task = if binary { Task::BinaryClassification } else { Task::Regression };
            let spec = ModelSpec { kind, n_features, task };
            let n_parameters = spec.layout().n_parameters();
            (
                Just(spec),
                prop::collection::vec(-1.0f32..1.0, n_parameters),
                prop::collection::vec(-1.0f32..1.0, n_rows * n_features),
                prop::collection::vec(prop::bool::ANY, n_rows),
                Just((parameter_scale, feature_scale, log_clip)),
            )
                .prop_map(
                    move |(spec, parameters, features, labels, (parameter_scale, feature_scale, log_clip))| {
                        let parameters = parameters.iter().map(|p| p * 10f32.powi(parameter_scale)).collect();
                        let features = features.iter().map(|x| x * 10f32.powi(feature_scale)).collect();
                        let labels = labels.iter().map(|&positive| f32::from(u8::from(positive))).collect();
                        let names = (0..spec.n_features).map(|i| format!("x{i}")).collect();
                        let data = Dataset::from_parts(names, features, labels).unwrap();
                        (spec, parameters, data, 10f64.powf(log_clip))
                    },
                )
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn every_clipped_per_example_gradient_has_norm_at_most_the_clip_norm(
            (spec, parameters, data, clip_norm) in random_case()
        ) {
            let batch: Vec<usize> = (0..data.n_rows()).collect();
            let mut gradients = PerExampleGradients::new(&spec);
            gradients.backward(&parameters, &data, &batch);
            let raw: Vec<Vec<f32>> = (0..batch.len()).map(|row| gradients.example_gradient(row)).collect();
            let n_clipped = gradients.clip_and_sum(clip_norm).unwrap();

            let mut expected_sum = vec![0.0f64; gradients.sum().len()];
            let mut expected_clipped = 0;
            for (row, raw) in raw.iter().enumerate() {
                let clipped = gradients.example_gradient(row);
                let clipped_norm = norm(&clipped);
                prop_assert!(clipped_norm <= clip_norm, "row {}: norm {} over {}", row, clipped_norm, clip_norm);
                if norm(raw) > clip_norm {
                    expected_clipped += 1;
                    prop_assert!(clipped_norm >= clip_norm * (1.0 - 1e-5), "row {} shrunk too far", row);
                } else {
                    prop_assert_eq!(&clipped, raw);
                }
                // The terms the sum is made of: exact f64 products of the f32 inputs and clipped Δ rows, whose
                // norm the clip bounds too.
                let exact = gradients.exact_example_gradient(row);
                let exact_norm = exact.iter().map(|g| g * g).sum::<f64>().sqrt();
                prop_assert!(exact_norm <= clip_norm, "row {}: exact norm {} over {}", row, exact_norm, clip_norm);
                for (total, &g) in expected_sum.iter_mut().zip(&exact) {
                    *total += g;
                }
            }
            prop_assert_eq!(n_clipped, expected_clipped);
            let scale = expected_sum.iter().fold(1.0f64, |m, v| m.max(v.abs()));
            // The f64 sum of exact f64 terms: only the accumulation's own rounding (γₙ·Σ|terms|) separates the
            // two, far below f32's resolution.
            for (&got, &expected) in gradients.sum().iter().zip(&expected_sum) {
                prop_assert!((got - expected).abs() <= 1e-12 * scale, "{} vs {}", got, expected);
            }
        }
    }

    /// A dataset whose every gradient is exactly zero for linear regression from zero parameters (features and
    /// labels 0, so the output and its error are 0): one DP-SGD step then moves the parameters by noise alone.
    fn zero_gradient_data(n_features: usize) -> (ModelSpec, Dataset) {
        let spec = ModelSpec { kind: ModelKind::LogisticRegression, n_features, task: Task::Regression };
        let names = (0..n_features).map(|i| format!("x{i}")).collect();
        (spec, Dataset::from_parts(names, vec![0.0; n_features], vec![0.0]).unwrap())
    }

    /// Checks that `values` look like N(0, std_dev²): the sample standard deviation within 6 standard errors
    /// (relative standard error 1/√(2n)) and the mean within 6 standard errors (std_dev/√n). A correct sampler
    /// fails this about once in 10⁹ runs.
    fn assert_gaussian(values: &[f32], std_dev: f64) {
        let n = values.len() as f64;
        let mean = values.iter().map(|&v| f64::from(v)).sum::<f64>() / n;
        let sample_std = (values.iter().map(|&v| (f64::from(v) - mean).powi(2)).sum::<f64>() / (n - 1.0)).sqrt();
        assert!(mean.abs() < 6.0 * std_dev / n.sqrt(), "mean {mean} for σ = {std_dev}");
        let tolerance = 6.0 / (2.0 * n).sqrt();
        assert!((sample_std / std_dev - 1.0).abs() < tolerance, "std {sample_std} for σ = {std_dev} (±{tolerance})");
    }

    #[test]
    fn the_added_noise_has_standard_deviation_noise_multiplier_times_clip_norm() {
        let (spec, data) = zero_gradient_data(200_000);
        let (clip_norm, noise_multiplier) = (0.7, 1.3);
        // One step (q = 1, one row) with learning rate 1 and expected batch 1: parameters = −noise.
        let config = DpTrainConfig {
            epochs: 1,
            expected_batch_size: 1,
            learning_rate: 1.0,
            ..private(clip_norm, noise_multiplier)
        };
        let outcome = train_dp(&spec, &vec![0.0; spec.layout().n_parameters()], &data, &config).unwrap();
        assert_eq!((outcome.steps, outcome.sampling_rate, outcome.n_sampled, outcome.n_clipped), (1, 1.0, 1, 0));
        assert_gaussian(&outcome.parameters, noise_multiplier * clip_norm);

        // The noise is divided by the expected batch size, not added after the division.
        let config = DpTrainConfig { learning_rate: 0.5, ..config };
        let (spec, data) = zero_gradient_data(50_000);
        let mut with_rows = data.clone();
        for _ in 0..3 {
            with_rows.features.extend(vec![0.0; spec.n_features]);
            with_rows.labels.push(0.0);
        }
        let config = DpTrainConfig { expected_batch_size: 4, ..config };
        let outcome = train_dp(&spec, &vec![0.0; spec.layout().n_parameters()], &with_rows, &config).unwrap();
        assert_gaussian(&outcome.parameters, 0.5 * noise_multiplier * clip_norm / 4.0);
    }

    #[test]
    fn exact_noise_goes_through_opendp_with_the_same_standard_deviation() {
        let (spec, data) = zero_gradient_data(20_000);
        let config = DpTrainConfig {
            epochs: 1,
            expected_batch_size: 1,
            learning_rate: 1.0,
            noise_mode: NoiseMode::Exact,
            ..private(2.0, 0.8)
        };
        let outcome = train_dp(&spec, &vec![0.0; spec.layout().n_parameters()], &data, &config).unwrap();
        assert_eq!(outcome.noise_mode, NoiseMode::Exact);
        assert_gaussian(&outcome.parameters, 1.6);
    }

    #[test]
    fn poisson_sampling_includes_each_row_independently_with_probability_q() {
        let (n_rows, sampling_rate, draws) = (1000usize, 0.05, 20_000usize);
        let mut sampler = PoissonSampler::new(n_rows, sampling_rate, Some(9)).unwrap();
        let mut batch = Vec::new();
        let mut sizes = Vec::with_capacity(draws);
        let mut inclusions = vec![0u32; n_rows];
        for _ in 0..draws {
            sampler.sample(&mut batch);
            assert!(batch.windows(2).all(|pair| pair[0] < pair[1]) && batch.iter().all(|&row| row < n_rows));
            sizes.push(batch.len() as f64);
            for &row in &batch {
                inclusions[row] += 1;
            }
        }
        // The batch size is Binomial(n, q): mean q·n = 50, variance n·q·(1 − q) = 47.5.
        let (expected_mean, expected_variance) = (sampling_rate * n_rows as f64, n_rows as f64 * 0.05 * 0.95);
        let mean = sizes.iter().sum::<f64>() / draws as f64;
        let variance = sizes.iter().map(|size| (size - mean).powi(2)).sum::<f64>() / (draws as f64 - 1.0);
        assert!((mean - expected_mean).abs() < 6.0 * (expected_variance / draws as f64).sqrt(), "mean {mean}");
        // The variance of a sample variance is about 2σ⁴/draws: 6 standard errors is 6% here.
        assert!((variance / expected_variance - 1.0).abs() < 6.0 * (2.0 / draws as f64).sqrt(), "variance {variance}");
        // Each row on its own: Binomial(draws, q), 6 standard errors of its frequency is 0.9 percentage points.
        let bound = 6.0 * (sampling_rate * (1.0 - sampling_rate) / draws as f64).sqrt();
        for (row, &count) in inclusions.iter().enumerate() {
            let frequency = f64::from(count) / draws as f64;
            assert!((frequency - sampling_rate).abs() < bound, "row {row}: {frequency}");
        }

        // Reproducible per seed, different across seeds, and everything at q = 1.
        let sample = |seed| {
            let mut sampler = PoissonSampler::new(100, 0.3, Some(seed)).unwrap();
            let mut batch = Vec::new();
            (0..5)
                .map(|_| {
                    sampler.sample(&mut batch);
                    batch.clone()
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(sample(1), sample(1));
        assert_ne!(sample(1), sample(2));
        let mut everything = PoissonSampler::new(7, 1.0, None).unwrap();
        everything.sample(&mut batch);
        assert_eq!(batch, (0..7).collect::<Vec<_>>());
    }

    #[test]
    fn train_dp_samples_q_n_rows_per_step_on_average_and_steps_through_empty_batches() {
        let (train, _) = cancer_split();
        let spec = test_data::cancer_spec(ModelKind::LogisticRegression);
        let config = DpTrainConfig { epochs: 40, expected_batch_size: 8, sampling_seed: None, ..private(1.0, 1.0) };
        let outcome = train_dp(&spec, &spec.init_parameters(0), &train, &config).unwrap();
        let n = train.n_rows() as f64;
        let q = 8.0 / n;
        assert_eq!(outcome.sampling_rate, q);
        assert_eq!(outcome.steps, 40 * train.n_rows().div_ceil(8) as u64);
        let expected = q * n * outcome.steps as f64;
        let standard_error = (n * q * (1.0 - q) * outcome.steps as f64).sqrt();
        assert!((outcome.n_sampled as f64 - expected).abs() < 6.0 * standard_error, "{outcome:?}");

        // One row at q = 1/10: most batches are empty, and each still takes a (noisy) step.
        let tiny = train.subset(&(0..10).collect::<Vec<_>>());
        let config = DpTrainConfig { epochs: 3, expected_batch_size: 1, ..private(1.0, 1.0) };
        let outcome = train_dp(&spec, &spec.init_parameters(0), &tiny, &config).unwrap();
        assert_eq!((outcome.steps, outcome.sampling_rate), (30, 0.1));
        assert!(outcome.n_sampled < 30, "{outcome:?}");
        assert!(outcome.parameters.iter().all(|p| p.is_finite()));
    }

    #[test]
    fn the_report_counts_clipped_examples() {
        let (train, _) = cancer_split();
        let spec = test_data::cancer_spec(ModelKind::Mlp { hidden: vec![8] });
        let initial = spec.init_parameters(4);
        // Every nonzero gradient is longer than 1e-9; none is longer than 1e9.
        let tiny = train_dp(&spec, &initial, &train, &private(1e-9, 0.0)).unwrap();
        assert!(tiny.n_sampled > 0);
        assert_eq!(tiny.n_clipped, tiny.n_sampled);
        let huge = train_dp(&spec, &initial, &train, &private(1e9, 0.0)).unwrap();
        assert_eq!(huge.n_clipped, 0);
        assert_eq!((huge.clip_norm, huge.noise_multiplier, huge.noise_mode), (1e9, 0.0, NoiseMode::Fast));
        let moderate = train_dp(&spec, &initial, &train, &private(0.5, 1.0)).unwrap();
        assert!(moderate.n_clipped > 0 && moderate.n_clipped < moderate.n_sampled, "{moderate:?}");
    }

    #[test]
    fn seeded_noiseless_runs_repeat_and_noisy_runs_do_not() {
        let (train, _) = cancer_split();
        let spec = test_data::cancer_spec(ModelKind::Mlp { hidden: vec![4] });
        let initial = spec.init_parameters(1);
        let config = private(0.5, 0.0);
        let first = train_dp(&spec, &initial, &train, &config).unwrap();
        assert_eq!(first, train_dp(&spec, &initial, &train, &config).unwrap());
        let reseeded = DpTrainConfig { sampling_seed: Some(4), ..config.clone() };
        assert_ne!(first.parameters, train_dp(&spec, &initial, &train, &reseeded).unwrap().parameters);
        // The noise comes from the operating system, whatever the sampling seed.
        let noisy = private(0.5, 1.0);
        assert_ne!(
            train_dp(&spec, &initial, &train, &noisy).unwrap().parameters,
            train_dp(&spec, &initial, &train, &noisy).unwrap().parameters
        );
    }

    #[test]
    fn dp_trained_models_still_learn_breast_cancer() {
        let (train, validation) = cancer_split();
        let (delta, target_epsilon) = (1e-5, 3.0);
        for kind in [ModelKind::LogisticRegression, ModelKind::Mlp { hidden: vec![16] }] {
            let spec = test_data::cancer_spec(kind);
            let mut config = DpTrainConfig {
                epochs: 10,
                expected_batch_size: 32,
                learning_rate: 0.5,
                clip_norm: 1.0,
                noise_multiplier: 0.0,
                noise_mode: NoiseMode::Fast,
                sampling_seed: None,
                proximal_mu: 0.0,
            };
            let n_rows = train.n_rows();
            config.noise_multiplier =
                calibrate_noise_multiplier(target_epsilon, delta, config.sampling_rate(n_rows), config.steps(n_rows))
                    .unwrap();
            let outcome = train_dp(&spec, &spec.init_parameters(6), &train, &config).unwrap();

            let mut accountant = RdpAccountant::new();
            outcome.record_spend(&mut accountant);
            let epsilon = accountant.epsilon(delta).unwrap();
            assert!(epsilon <= target_epsilon && epsilon > 0.9 * target_epsilon, "ε = {epsilon}");
            let metrics = evaluate(&spec, &outcome.parameters, &validation).unwrap();
            assert!(
                metrics.auroc.unwrap() > 0.9,
                "{spec:?} at ε = {epsilon} (σ = {}): {metrics:?}",
                config.noise_multiplier
            );
        }
    }

    #[test]
    fn invalid_configs_are_rejected_precisely() {
        let (train, _) = cancer_split();
        let spec = test_data::cancer_spec(ModelKind::LogisticRegression);
        let initial = spec.init_parameters(0);
        let good = private(1.0, 1.0);
        let message = |config: DpTrainConfig| train_dp(&spec, &initial, &train, &config).unwrap_err().to_string();

        assert_eq!(message(DpTrainConfig { epochs: 0, ..good.clone() }), "invalid epochs: must be at least 1");
        assert_eq!(
            message(DpTrainConfig { expected_batch_size: 0, ..good.clone() }),
            "invalid expected_batch_size: must be at least 1"
        );
        for learning_rate in [0.0, -1.0, f64::NAN, f64::INFINITY] {
            assert!(message(DpTrainConfig { learning_rate, ..good.clone() }).starts_with("invalid learning_rate"));
        }
        for noise_multiplier in [-0.5, f64::NAN, f64::INFINITY] {
            assert!(
                message(DpTrainConfig { noise_multiplier, ..good.clone() }).starts_with("invalid noise_multiplier")
            );
        }
        for clip_norm in [0.0, -1.0, f64::NAN, f64::INFINITY] {
            assert!(message(DpTrainConfig { clip_norm, ..good.clone() }).starts_with("invalid clip_norm"));
        }
        let overflowing = DpTrainConfig { clip_norm: 1e300, noise_multiplier: 1e10, ..good.clone() };
        assert!(message(overflowing).contains("is not finite"));
        // Infinite C is fine without noise; the model's own checks still apply.
        train_dp(&spec, &initial, &train, &plain(1, 16, 0.1, 0)).unwrap();
        assert_eq!(
            train_dp(&spec, &initial[1..], &train, &good).unwrap_err().to_string(),
            "expected 31 parameters for this model, got 30"
        );
        assert_eq!(
            train_dp(&spec, &initial, &train.subset(&[]), &good).unwrap_err().to_string(),
            "the dataset has no rows"
        );
    }

    #[test]
    fn divergence_is_reported() {
        let (mut train, _) = diabetes_split();
        for label in &mut train.labels {
            *label = *label * 100.0 + 150.0;
        }
        let spec = ModelSpec { kind: ModelKind::LogisticRegression, n_features: 10, task: Task::Regression };
        let config = DpTrainConfig { epochs: 50, learning_rate: 10.0, ..plain(50, 8, 10.0, 1) };
        let error = train_dp(&spec, &spec.init_parameters(0), &train, &config).unwrap_err();
        assert!(matches!(error, Error::Diverged { .. } | Error::DivergedParameters { .. }), "{error}");
    }
}
