//! Local training: mini-batch SGD with burn's autodiff on the ndarray backend, optionally with FedProx's proximal
//! term (Li et al., "Federated Optimization in Heterogeneous Networks", 2020).

use burn::optim::{GradientsParams, SgdConfig};
use burn::prelude::*;
use burn::tensor::activation::log_sigmoid;
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::network::{Network, cpu_device};
use crate::{Dataset, Error, ModelSpec, Result, Task};

/// How to train locally.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    /// Passes over the data; at least 1.
    pub epochs: u32,
    /// Rows per mini-batch; at least 1. The last batch of an epoch may be smaller.
    pub batch_size: usize,
    /// The SGD step size; finite and positive.
    pub learning_rate: f64,
    /// Seeds the shuffle that orders each epoch's rows.
    pub seed: u64,
    /// FedProx's proximal coefficient μ: each step minimises the batch loss plus `μ/2·‖w − w₀‖²`, where `w₀` is
    /// the model training started from (the round's global model), so its gradient gains `μ·(w − w₀)`. Finite,
    /// non-negative and with `learning_rate × proximal_mu < 1`; 0 (the default) is plain SGD.
    #[serde(default)]
    pub proximal_mu: f64,
}

/// What local training produced.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainOutcome {
    /// The trained parameters, in [`ModelSpec::layout`] order.
    pub parameters: Vec<f32>,
    /// The number of rows trained on (the weight of this update in federated averaging).
    pub n_examples: usize,
    /// The number of SGD steps taken: `epochs x ceil(n_examples / batch_size)`.
    pub steps: u64,
    /// The training loss averaged over every row visit of every epoch, each measured in the
    /// forward pass of its mini-batch (before that batch's update).
    pub mean_loss: f64,
}

impl TrainConfig {
    /// Checks that epochs and batch size are at least 1, the learning rate finite and positive, and the proximal
    /// coefficient valid ([`check_proximal_mu`]).
    pub fn validate(&self) -> Result<()> {
        if self.epochs == 0 {
            return Err(Error::InvalidArgument { name: "epochs", reason: "must be at least 1".to_owned() });
        }
        if self.batch_size == 0 {
            return Err(Error::InvalidArgument { name: "batch_size", reason: "must be at least 1".to_owned() });
        }
        if !(self.learning_rate.is_finite() && self.learning_rate > 0.0) {
            return Err(Error::InvalidArgument {
                name: "learning_rate",
                reason: format!("{} is not finite and positive", self.learning_rate),
            });
        }
        check_proximal_mu(self.proximal_mu, self.learning_rate)
    }
}

/// Checks FedProx's μ against the learning rate η: finite, `μ ≥ 0` and `η·μ < 1`. The proximal part of a step
/// moves `w` to `w − η·μ·(w − w₀)`; with `η·μ ≥ 1` it would land on or overshoot the global model `w₀` instead of
/// pulling towards it.
pub fn check_proximal_mu(proximal_mu: f64, learning_rate: f64) -> Result<()> {
    if proximal_mu.is_finite() && proximal_mu >= 0.0 && learning_rate * proximal_mu < 1.0 {
        return Ok(());
    }
    Err(Error::InvalidArgument {
        name: "proximal_mu",
        reason: format!(
            "must be finite and non-negative with learning_rate × proximal_mu < 1 (else the proximal step \
             overshoots the global model), got μ = {proximal_mu} with learning rate {learning_rate}"
        ),
    })
}

/// Trains `initial` parameters on `data` with plain mini-batch SGD (no momentum, no weight decay).
///
/// Each epoch visits the rows in an order drawn from a ChaCha8 stream seeded with
/// `config.seed`; each step minimises the batch's mean loss (binary cross-entropy with logits,
/// or mean squared error), plus `μ/2·‖w − initial‖²` when `config.proximal_mu = μ > 0` (FedProx;
/// the reported loss stays the data loss). The same inputs give bit-identical outputs, and μ = 0
/// is exactly the plain run.
///
/// Fails before training if the spec, parameters, data or config are invalid (including
/// labels other than 0 and 1 for binary classification); fails with [`Error::Diverged`] as
/// soon as a batch loss is not finite, and with [`Error::DivergedParameters`] if the last update
/// leaves a parameter that is not.
pub fn train_local(spec: &ModelSpec, initial: &[f32], data: &Dataset, config: &TrainConfig) -> Result<TrainOutcome> {
    config.validate()?;
    check_model_and_data(spec, initial, data)?;

    let device = cpu_device().autodiff();
    let mut network = Network::from_parameters(spec, initial, &device)?;
    // FedProx's anchor, the global model, as constants: autodiff differentiates only the trained copy.
    let anchor = if config.proximal_mu > 0.0 { Some(Network::from_parameters(spec, initial, &device)?) } else { None };
    let mut optimizer = SgdConfig::new().init();
    let mut rng = ChaCha8Rng::seed_from_u64(config.seed);
    let n_features = data.n_features();
    let mut order: Vec<usize> = (0..data.n_rows()).collect();
    let mut steps = 0u64;
    let mut loss_sum = 0.0f64;

    for epoch in 1..=config.epochs {
        order.shuffle(&mut rng);
        for batch in order.chunks(config.batch_size) {
            let mut features = Vec::with_capacity(batch.len() * n_features);
            for &row in batch {
                features.extend_from_slice(data.row(row));
            }
            let labels: Vec<f32> = batch.iter().map(|&row| data.labels[row]).collect();
            let input = Tensor::<2>::from_data(TensorData::new(features, [batch.len(), n_features]), &device);
            let targets = Tensor::<2>::from_data(TensorData::new(labels, [batch.len(), 1]), &device);

            let loss = batch_loss(spec.task, network.forward(input), targets);
            let loss_value =
                f64::from(loss.clone().try_into_scalar::<f32>().map_err(|error| Error::Backend(error.to_string()))?);
            steps += 1;
            if !loss_value.is_finite() {
                return Err(Error::Diverged { epoch, step: steps, loss: loss_value });
            }
            loss_sum += loss_value * batch.len() as f64;
            let loss = match &anchor {
                Some(anchor) => loss + network.squared_distance(anchor).mul_scalar(config.proximal_mu / 2.0),
                None => loss,
            };

            let gradients = GradientsParams::from_grads(loss.backward(), &network);
            network = optimizer.step(config.learning_rate, network, gradients);
        }
    }

    let parameters = network.to_parameters()?;
    // Each update is checked by the next step's loss, except the last.
    if parameters.iter().any(|value| !value.is_finite()) {
        return Err(Error::DivergedParameters { epoch: config.epochs, step: steps });
    }
    let visits = data.n_rows() as f64 * f64::from(config.epochs);
    Ok(TrainOutcome { parameters, n_examples: data.n_rows(), steps, mean_loss: loss_sum / visits })
}

/// Checks everything [`train_local`] and [`evaluate`](crate::evaluate) need from their inputs.
pub(crate) fn check_model_and_data(spec: &ModelSpec, parameters: &[f32], data: &Dataset) -> Result<()> {
    spec.validate()?;
    spec.layout().validate(parameters)?;
    data.validate()?;
    if data.n_features() != spec.n_features {
        return Err(Error::FeatureCountMismatch { expected: spec.n_features, actual: data.n_features() });
    }
    if data.n_rows() == 0 {
        return Err(Error::EmptyDataset);
    }
    if spec.task == Task::BinaryClassification {
        data.check_binary_labels()?;
    }
    Ok(())
}

/// The mean loss of a batch.
///
/// # Shapes
///
/// - output: `[batch_size, 1]`
/// - targets: `[batch_size, 1]`
/// - result: `[1]`
pub(crate) fn batch_loss(task: Task, output: Tensor<2>, targets: Tensor<2>) -> Tensor<1> {
    match task {
        // -[y log σ(z) + (1 - y) log(1 - σ(z))] = (1 - y) z - log σ(z), and burn's log_sigmoid
        // is computed stably for large |z|.
        Task::BinaryClassification => {
            let negatives = targets.neg().add_scalar(1.0);
            (negatives * output.clone() - log_sigmoid(output)).mean()
        }
        Task::Regression => {
            let error = output - targets;
            (error.clone() * error).mean()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_data::{self, cancer_split, diabetes_split};
    use crate::{ModelKind, evaluate};

    fn config(epochs: u32, batch_size: usize, learning_rate: f64) -> TrainConfig {
        TrainConfig { epochs, batch_size, learning_rate, seed: 17, proximal_mu: 0.0 }
    }

    #[test]
    fn one_full_batch_step_matches_the_hand_computed_gradient() {
        // Logistic regression on two rows, one step of batch gradient descent:
        // grad_w = mean((σ(z) - y) x), grad_b = mean(σ(z) - y); with zero weights σ(z) = 0.5.
        let spec = ModelSpec { kind: ModelKind::LogisticRegression, n_features: 2, task: Task::BinaryClassification };
        let data = Dataset::from_parts(vec!["a".to_owned(), "b".to_owned()], vec![1.0, 2.0, -1.0, 0.5], vec![1.0, 0.0])
            .unwrap();
        let outcome = train_local(&spec, &[0.0; 3], &data, &config(1, 2, 0.5)).unwrap();
        let residuals = [0.5 - 1.0, 0.5 - 0.0];
        let rows = [[1.0, 2.0], [-1.0, 0.5]];
        let gradient = [
            (residuals[0] * rows[0][0] + residuals[1] * rows[1][0]) / 2.0,
            (residuals[0] * rows[0][1] + residuals[1] * rows[1][1]) / 2.0,
            (residuals[0] + residuals[1]) / 2.0,
        ];
        for (got, g) in outcome.parameters.iter().zip(gradient) {
            let expected: f32 = -0.5 * g;
            assert!((got - expected).abs() < 1e-6, "{:?}", outcome.parameters);
        }
        assert!((outcome.mean_loss - std::f64::consts::LN_2).abs() < 1e-6);
        assert_eq!((outcome.steps, outcome.n_examples), (1, 2));
    }

    #[test]
    fn training_is_deterministic_and_reduces_the_loss() {
        let (train, _) = cancer_split();
        let spec = test_data::cancer_spec(ModelKind::Mlp { hidden: vec![8] });
        let initial = spec.init_parameters(1);
        let settings = config(2, 32, 0.05);
        let first = train_local(&spec, &initial, &train, &settings).unwrap();
        let second = train_local(&spec, &initial, &train, &settings).unwrap();
        assert_eq!(first, second);
        let reseeded = train_local(&spec, &initial, &train, &TrainConfig { seed: 18, ..settings }).unwrap();
        assert_ne!(first.parameters, reseeded.parameters);
        assert_eq!(first.steps, 2 * train.n_rows().div_ceil(32) as u64);

        let before = evaluate(&spec, &initial, &train).unwrap().loss;
        let after = evaluate(&spec, &first.parameters, &train).unwrap().loss;
        assert!(after < 0.5 * before, "loss {before} -> {after}");
    }

    #[test]
    fn fedprox_steps_add_mu_times_the_distance_to_the_start_to_the_gradient() {
        // One full batch per epoch. Epoch 1 starts at w₀, where the proximal gradient is zero: a plain step.
        // Epoch 2 is a plain step from w₁ minus η·μ·(w₁ − w₀).
        let (train, _) = cancer_split();
        let spec = test_data::cancer_spec(ModelKind::Mlp { hidden: vec![8] });
        let initial = spec.init_parameters(5);
        let (rate, mu) = (0.5, 0.8);
        let full = |epochs: u32, proximal_mu: f64| TrainConfig { proximal_mu, ..config(epochs, train.n_rows(), rate) };
        let fedprox = train_local(&spec, &initial, &train, &full(2, mu)).unwrap();
        let w1 = train_local(&spec, &initial, &train, &full(1, 0.0)).unwrap().parameters;
        let w1_plain_step = train_local(&spec, &w1, &train, &full(1, 0.0)).unwrap().parameters;
        for (i, (&got, (&stepped, (&current, &start)))) in
            fedprox.parameters.iter().zip(w1_plain_step.iter().zip(w1.iter().zip(&initial))).enumerate()
        {
            let expected = f64::from(stepped) - rate * mu * (f64::from(current) - f64::from(start));
            assert!((f64::from(got) - expected).abs() < 1e-5, "parameter {i}: {got} vs {expected}");
        }
        // The reported loss is the data loss alone: epoch 1's loss is the plain run's.
        let plain = train_local(&spec, &initial, &train, &full(2, 0.0)).unwrap();
        let first_epoch = train_local(&spec, &initial, &train, &full(1, mu)).unwrap();
        assert_eq!(first_epoch.mean_loss, train_local(&spec, &initial, &train, &full(1, 0.0)).unwrap().mean_loss);
        assert!(fedprox.mean_loss.is_finite() && fedprox.parameters != plain.parameters);
    }

    #[test]
    fn mu_zero_is_plain_training_and_a_larger_mu_stays_closer_to_the_global_model() {
        let (train, _) = cancer_split();
        let spec = test_data::cancer_spec(ModelKind::Mlp { hidden: vec![8] });
        let initial = spec.init_parameters(6);
        let settings = config(3, 16, 0.1);
        let plain = train_local(&spec, &initial, &train, &settings).unwrap();
        // A configuration without the key (an older one) deserialises to μ = 0 and trains bit for bit the same.
        let older: TrainConfig = toml::from_str("epochs = 3\nbatch_size = 16\nlearning_rate = 0.1\nseed = 17").unwrap();
        assert_eq!(older, settings);
        assert_eq!(train_local(&spec, &initial, &train, &older).unwrap(), plain);
        let distance = |outcome: &TrainOutcome| {
            outcome.parameters.iter().zip(&initial).map(|(w, w0)| f64::from(w - w0).powi(2)).sum::<f64>().sqrt()
        };
        let mut last = distance(&plain);
        for mu in [0.5, 2.0, 8.0] {
            let outcome =
                train_local(&spec, &initial, &train, &TrainConfig { proximal_mu: mu, ..settings.clone() }).unwrap();
            assert!(distance(&outcome) < last, "μ = {mu}: {} vs {last}", distance(&outcome));
            last = distance(&outcome);
            // Still learning: the loss falls below the initial model's.
            let before = evaluate(&spec, &initial, &train).unwrap().loss;
            assert!(evaluate(&spec, &outcome.parameters, &train).unwrap().loss < before);
        }
        for mu in [-0.1, 10.0, f64::NAN, f64::INFINITY] {
            let error =
                train_local(&spec, &initial, &train, &TrainConfig { proximal_mu: mu, ..settings.clone() }).unwrap_err();
            assert!(error.to_string().starts_with("invalid proximal_mu"), "{mu}: {error}");
        }
    }

    #[test]
    fn logistic_regression_learns_breast_cancer() {
        let (train, validation) = cancer_split();
        let spec = test_data::cancer_spec(ModelKind::LogisticRegression);
        let outcome = train_local(&spec, &spec.init_parameters(2), &train, &config(5, 16, 0.1)).unwrap();
        let metrics = evaluate(&spec, &outcome.parameters, &validation).unwrap();
        assert!(metrics.auroc.unwrap() > 0.95, "{metrics:?}");
        assert!(metrics.accuracy.unwrap() > 0.9, "{metrics:?}");
    }

    #[test]
    fn mlp_learns_breast_cancer() {
        let (train, validation) = cancer_split();
        let spec = test_data::cancer_spec(ModelKind::Mlp { hidden: vec![16] });
        let outcome = train_local(&spec, &spec.init_parameters(3), &train, &config(8, 32, 0.05)).unwrap();
        let metrics = evaluate(&spec, &outcome.parameters, &validation).unwrap();
        assert!(metrics.auroc.unwrap() > 0.95, "{metrics:?}");
        assert!(metrics.accuracy.unwrap() > 0.9, "{metrics:?}");
    }

    #[test]
    fn regression_on_diabetes_with_scaled_labels_converges() {
        let (train, validation) = diabetes_split();
        let spec = ModelSpec { kind: ModelKind::Mlp { hidden: vec![16] }, n_features: 10, task: Task::Regression };
        let initial = spec.init_parameters(4);
        let baseline = evaluate(&spec, &initial, &validation).unwrap();
        let outcome = train_local(&spec, &initial, &train, &config(20, 16, 0.05)).unwrap();
        let metrics = evaluate(&spec, &outcome.parameters, &validation).unwrap();
        // Labels are standardised, so predicting the mean scores an MSE of about 1; the
        // published linear fits explain about half of the variance.
        assert!(metrics.mse.unwrap() < 0.65, "{metrics:?} (untrained: {baseline:?})");
        assert_eq!(metrics.loss, metrics.mse.unwrap());
        assert!(metrics.auroc.is_none() && metrics.accuracy.is_none());
    }

    #[test]
    fn a_too_large_learning_rate_is_reported_as_divergence() {
        let (mut train, _) = diabetes_split();
        // Raw labels of a few hundred with a huge step overflow within a few steps.
        for label in &mut train.labels {
            *label = *label * 100.0 + 150.0;
        }
        let spec = ModelSpec { kind: ModelKind::LogisticRegression, n_features: 10, task: Task::Regression };
        let error = train_local(&spec, &spec.init_parameters(0), &train, &config(50, 8, 10.0)).unwrap_err();
        assert!(matches!(error, Error::Diverged { .. }), "{error}");
    }

    #[test]
    fn invalid_inputs_are_rejected_precisely() {
        let (train, _) = cancer_split();
        let spec = test_data::cancer_spec(ModelKind::LogisticRegression);
        let initial = spec.init_parameters(0);
        let good = config(1, 8, 0.1);
        let error_of = |spec: &ModelSpec, initial: &[f32], data: &Dataset, config: &TrainConfig| {
            train_local(spec, initial, data, config).unwrap_err().to_string()
        };

        assert_eq!(error_of(&spec, &initial[1..], &train, &good), "expected 31 parameters for this model, got 30");
        let narrow = ModelSpec { n_features: 29, ..spec.clone() };
        assert_eq!(
            error_of(&narrow, &narrow.init_parameters(0), &train, &good),
            "the data has 30 features but 29 are expected"
        );
        for learning_rate in [0.0, -1.0, f64::NAN, f64::INFINITY] {
            let message = error_of(&spec, &initial, &train, &TrainConfig { learning_rate, ..good.clone() });
            assert!(message.starts_with("invalid learning_rate"), "{message}");
        }
        let message = error_of(&spec, &initial, &train, &TrainConfig { batch_size: 0, ..good.clone() });
        assert_eq!(message, "invalid batch_size: must be at least 1");
        let message = error_of(&spec, &initial, &train, &TrainConfig { epochs: 0, ..good.clone() });
        assert_eq!(message, "invalid epochs: must be at least 1");
        assert_eq!(error_of(&spec, &initial, &train.subset(&[]), &good), "the dataset has no rows");

        let mut not_binary = train.clone();
        not_binary.labels[3] = 2.0;
        assert_eq!(
            error_of(&spec, &initial, &not_binary, &good),
            "row 3: label 2 is not 0 or 1, as binary classification requires"
        );
    }
}
