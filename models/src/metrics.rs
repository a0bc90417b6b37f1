//! Evaluation of a parameter vector on a dataset: loss, accuracy, exact AUROC, MSE.

use burn::prelude::*;
use ndarray::{ArrayView1, ArrayView2};
use serde::{Deserialize, Serialize};

use crate::network::{Network, cpu_device, tensor_values};
use crate::train::check_model_and_data;
use crate::{Dataset, Error, ModelSpec, Result, Task};

/// Rows per forward pass in [`predict`], bounding memory on large datasets.
const PREDICT_CHUNK_ROWS: usize = 8192;

/// Models of more parameters than this are evaluated on views of the parameter vector, layer by layer, rather than
/// through a burn network, which copies every parameter into its tensors: for a 100M-parameter model (400 MB) that
/// copy would be a whole extra model in the coordinator, whose memory must stay within three models. Smaller
/// models keep burn's forward pass, so their figures are exactly as before.
const VIEW_FORWARD_PARAMETERS: usize = 1 << 24;

/// Rows per forward pass on views: activations are `rows × widest layer` floats.
const VIEW_FORWARD_ROWS: usize = 256;

/// How well a model does on a dataset.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Metrics {
    /// The mean loss the model is trained on: binary cross-entropy, or MSE for regression.
    pub loss: f64,
    /// Binary classification: the share of rows whose predicted probability is on the label's
    /// side of 0.5 (a probability of exactly 0.5 predicts 1).
    pub accuracy: Option<f64>,
    /// Binary classification: the area under the ROC curve, or `None` when only one class is
    /// present (see [`auroc`]).
    pub auroc: Option<f64>,
    /// Regression: the mean squared error (equal to `loss`).
    pub mse: Option<f64>,
    /// The number of rows evaluated.
    pub n_examples: usize,
}

/// Evaluates `parameters` on `data`.
///
/// The forward pass is the training network's, without autodiff; the metrics are accumulated in
/// `f64`. Fails on the same invalid inputs as [`train_local`](crate::train_local), and with
/// [`Error::NonFiniteOutput`] if the model's output overflows.
pub fn evaluate(spec: &ModelSpec, parameters: &[f32], data: &Dataset) -> Result<Metrics> {
    let outputs = predict(spec, parameters, data)?;
    let n_examples = data.n_rows();
    let n = n_examples as f64;
    match spec.task {
        Task::BinaryClassification => {
            let mut loss_sum = 0.0;
            let mut correct = 0usize;
            for (&logit, &label) in outputs.iter().zip(&data.labels) {
                let (z, y) = (f64::from(logit), f64::from(label));
                // max(z, 0) - z y + ln(1 + e^-|z|): binary cross-entropy, stable for any z.
                loss_sum += z.max(0.0) - z * y + (-z.abs()).exp().ln_1p();
                correct += usize::from((logit >= 0.0) == (label == 1.0));
            }
            let scores: Vec<f64> = outputs.iter().map(|&logit| f64::from(logit)).collect();
            Ok(Metrics {
                loss: loss_sum / n,
                accuracy: Some(correct as f64 / n),
                auroc: auroc(&scores, &data.labels),
                mse: None,
                n_examples,
            })
        }
        Task::Regression => {
            let squared_error_sum: f64 = outputs
                .iter()
                .zip(&data.labels)
                .map(|(&output, &label)| (f64::from(output) - f64::from(label)).powi(2))
                .sum();
            let mse = squared_error_sum / n;
            Ok(Metrics { loss: mse, accuracy: None, auroc: None, mse: Some(mse), n_examples })
        }
    }
}

/// The model's raw output for each row: a logit for binary classification (the probability is
/// its sigmoid), a value for regression.
///
/// Fails on invalid inputs as [`evaluate`] does, and with [`Error::NonFiniteOutput`] if an
/// output is not finite.
pub fn predict(spec: &ModelSpec, parameters: &[f32], data: &Dataset) -> Result<Vec<f32>> {
    check_model_and_data(spec, parameters, data)?;
    if parameters.len() > VIEW_FORWARD_PARAMETERS {
        let outputs = predict_on_views(spec, parameters, data)?;
        if let Some(row) = outputs.iter().position(|output| !output.is_finite()) {
            return Err(Error::NonFiniteOutput { row, value: outputs[row] });
        }
        return Ok(outputs);
    }
    let device = cpu_device();
    let network = Network::from_parameters(spec, parameters, &device)?;
    let n_features = data.n_features();
    let mut outputs = Vec::with_capacity(data.n_rows());
    for chunk in data.features.chunks(PREDICT_CHUNK_ROWS * n_features) {
        let n_rows = chunk.len() / n_features;
        let input = Tensor::<2>::from_data(TensorData::new(chunk.to_vec(), [n_rows, n_features]), &device);
        outputs.extend(tensor_values(network.forward(input))?);
    }
    if let Some(row) = outputs.iter().position(|output| !output.is_finite()) {
        return Err(Error::NonFiniteOutput { row, value: outputs[row] });
    }
    Ok(outputs)
}

/// The network's forward pass (linear layers, ReLU between them) with each weight matrix a view of `parameters`:
/// no parameter is copied.
fn predict_on_views(spec: &ModelSpec, parameters: &[f32], data: &Dataset) -> Result<Vec<f32>> {
    let layout = spec.layout();
    let pieces = layout.split(parameters)?;
    let n_features = data.n_features();
    let mut outputs = Vec::with_capacity(data.n_rows());
    for chunk in data.features.chunks(VIEW_FORWARD_ROWS * n_features) {
        let n_rows = chunk.len() / n_features;
        let mut activations =
            ArrayView2::from_shape((n_rows, n_features), chunk).expect("whole rows of the data set").to_owned();
        for (index, (values, tensors)) in pieces.chunks_exact(2).zip(layout.tensors.chunks_exact(2)).enumerate() {
            if index > 0 {
                activations.mapv_inplace(|value| value.max(0.0));
            }
            let (d_input, d_output) = (tensors[0].shape[0], tensors[0].shape[1]);
            let weight = ArrayView2::from_shape((d_input, d_output), values[0]).expect("the layout's shape");
            let mut next = activations.dot(&weight);
            next += &ArrayView1::from(values[1]);
            activations = next;
        }
        outputs.extend(activations.iter().copied());
    }
    Ok(outputs)
}

/// The area under the ROC curve of `scores` for `labels` (1 positive, 0 negative), computed
/// exactly as the Mann–Whitney U statistic with average ranks for ties: the probability that a
/// random positive scores above a random negative, counting ties as one half.
///
/// Returns `None` if the lengths differ, a score is NaN, a label is not 0 or 1, or either
/// class is absent.
///
/// # Example
///
/// ```
/// use pdc_models::auroc;
///
/// // Positives 0.8 and 0.4, negatives 0.4 and 0.1: the pairs score 1 + 1 + 0.5 + 1 out of 4.
/// assert_eq!(auroc(&[0.8, 0.4, 0.4, 0.1], &[1.0, 1.0, 0.0, 0.0]), Some(0.875));
/// assert_eq!(auroc(&[0.3, 0.7], &[1.0, 1.0]), None);
/// ```
pub fn auroc(scores: &[f64], labels: &[f32]) -> Option<f64> {
    if scores.len() != labels.len()
        || scores.iter().any(|score| score.is_nan())
        || labels.iter().any(|&label| label != 0.0 && label != 1.0)
    {
        return None;
    }
    let n_positive = labels.iter().filter(|&&label| label == 1.0).count();
    let n_negative = labels.len() - n_positive;
    if n_positive == 0 || n_negative == 0 {
        return None;
    }
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[a].total_cmp(&scores[b]));
    // Sum the 1-based ranks of the positives, giving each run of tied scores its average rank.
    let mut positive_rank_sum = 0.0f64;
    let mut start = 0;
    while start < order.len() {
        let mut end = start + 1;
        while end < order.len() && scores[order[end]] == scores[order[start]] {
            end += 1;
        }
        let average_rank = (start + 1 + end) as f64 / 2.0;
        let positives_in_run = order[start..end].iter().filter(|&&index| labels[index] == 1.0).count();
        positive_rank_sum += average_rank * positives_in_run as f64;
        start = end;
    }
    let (n_positive, n_negative) = (n_positive as f64, n_negative as f64);
    let u = positive_rank_sum - n_positive * (n_positive + 1.0) / 2.0;
    Some(u / (n_positive * n_negative))
}

#[cfg(test)]
mod view_tests {
    use super::*;
    use crate::{ModelKind, SyntheticConfig, synthetic};

    #[test]
    fn the_forward_pass_on_views_matches_burns() {
        let spec =
            ModelSpec { kind: ModelKind::Mlp { hidden: vec![16, 8] }, n_features: 6, task: Task::BinaryClassification };
        let parameters = spec.init_parameters(7);
        let data = synthetic(&SyntheticConfig { n_rows: 300, n_features: 6, positive_rate: 0.3, seed: 11 });
        let burn = predict(&spec, &parameters, &data).unwrap();
        let views = predict_on_views(&spec, &parameters, &data).unwrap();
        assert_eq!(burn.len(), views.len());
        for (row, (b, v)) in burn.iter().zip(&views).enumerate() {
            assert!((b - v).abs() <= 1e-5 * b.abs().max(1.0), "row {row}: burn {b}, views {v}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ModelKind;

    #[test]
    fn auroc_of_perfect_reversed_and_constant_scores() {
        let labels = [0.0, 0.0, 1.0, 1.0];
        assert_eq!(auroc(&[0.1, 0.2, 0.3, 0.4], &labels), Some(1.0));
        assert_eq!(auroc(&[0.4, 0.3, 0.2, 0.1], &labels), Some(0.0));
        assert_eq!(auroc(&[0.5; 4], &labels), Some(0.5));
    }

    #[test]
    fn auroc_with_ties_uses_average_ranks() {
        // Positives {0.9, 0.5, 0.5}, negatives {0.5, 0.2}. Pairs (pos, neg):
        // 0.9 beats both (2); each 0.5 ties 0.5 (0.5) and beats 0.2 (1): 2 x 1.5 = 3. U = 5 of 6.
        let scores = [0.5, 0.9, 0.2, 0.5, 0.5];
        let labels = [1.0, 1.0, 0.0, 0.0, 1.0];
        let value = auroc(&scores, &labels).unwrap();
        assert!((value - 5.0 / 6.0).abs() < 1e-12, "{value}");

        // Negatives {3, 1, 1}, positives {2, 1}: 2 beats 1, 1 (2) and loses to 3; 1 ties two 1s
        // (1) and loses to 3. U = 3 of 6.
        let value = auroc(&[3.0, 1.0, 1.0, 2.0, 1.0], &[0.0, 0.0, 0.0, 1.0, 1.0]).unwrap();
        assert!((value - 0.5).abs() < 1e-12, "{value}");
    }

    #[test]
    fn auroc_matches_pair_counting() {
        let scores = [0.3, 0.1, 0.3, 0.8, 0.5, 0.1, 0.8, 0.2];
        let labels = [1.0, 0.0, 0.0, 1.0, 1.0, 1.0, 0.0, 0.0];
        let mut wins = 0.0;
        let mut pairs = 0.0;
        for (i, &positive) in scores.iter().enumerate().filter(|&(i, _)| labels[i] == 1.0) {
            for (j, &negative) in scores.iter().enumerate().filter(|&(j, _)| labels[j] == 0.0) {
                assert_ne!(i, j);
                pairs += 1.0;
                wins += if positive > negative {
                    1.0
                } else if positive == negative {
                    0.5
                } else {
                    0.0
                };
            }
        }
        assert_eq!(auroc(&scores, &labels), Some(wins / pairs));
    }

    #[test]
    fn auroc_is_none_without_both_classes_or_with_bad_input() {
        assert_eq!(auroc(&[0.1, 0.9], &[0.0, 0.0]), None);
        assert_eq!(auroc(&[0.1, 0.9], &[1.0, 1.0]), None);
        assert_eq!(auroc(&[], &[]), None);
        assert_eq!(auroc(&[0.1], &[0.0, 1.0]), None);
        assert_eq!(auroc(&[0.1, f64::NAN], &[0.0, 1.0]), None);
        assert_eq!(auroc(&[0.1, 0.2], &[0.0, 0.5]), None);
    }

    #[test]
    fn evaluate_computes_binary_metrics_from_the_logits() {
        // Logistic regression with weight 1 and bias 0: the logit is the feature.
        let spec = ModelSpec { kind: ModelKind::LogisticRegression, n_features: 1, task: Task::BinaryClassification };
        let data =
            Dataset::from_parts(vec!["x".to_owned()], vec![2.0, -1.0, 0.0, -3.0], vec![1.0, 1.0, 0.0, 0.0]).unwrap();
        let metrics = evaluate(&spec, &[1.0, 0.0], &data).unwrap();
        let bce = |z: f64, y: f64| -(y * (1.0 / (1.0 + (-z).exp())).ln() + (1.0 - y) * (1.0 / (1.0 + z.exp())).ln());
        let expected = (bce(2.0, 1.0) + bce(-1.0, 1.0) + bce(0.0, 0.0) + bce(-3.0, 0.0)) / 4.0;
        assert!((metrics.loss - expected).abs() < 1e-9, "{metrics:?}");
        // Correct: 2 -> 1 and -3 -> 0; wrong: -1 -> 0 and 0 -> 1.
        assert_eq!(metrics.accuracy, Some(0.5));
        // Positives {2, -1} vs negatives {0, -3}: 1 + 1 + 0 + 1 of 4.
        assert_eq!(metrics.auroc, Some(0.75));
        assert_eq!((metrics.mse, metrics.n_examples), (None, 4));
        assert_eq!(predict(&spec, &[1.0, 0.0], &data).unwrap(), vec![2.0, -1.0, 0.0, -3.0]);
    }

    #[test]
    fn binary_loss_is_stable_for_extreme_logits() {
        let spec = ModelSpec { kind: ModelKind::LogisticRegression, n_features: 1, task: Task::BinaryClassification };
        let data = Dataset::from_parts(vec!["x".to_owned()], vec![1.0, 1.0], vec![1.0, 0.0]).unwrap();
        let metrics = evaluate(&spec, &[1000.0, 0.0], &data).unwrap();
        assert!((metrics.loss - 500.0).abs() < 1e-9, "{metrics:?}");
    }

    #[test]
    fn evaluate_computes_the_mse_for_regression() {
        let spec = ModelSpec { kind: ModelKind::LogisticRegression, n_features: 2, task: Task::Regression };
        let data = Dataset::from_parts(
            vec!["a".to_owned(), "b".to_owned()],
            vec![1.0, 0.0, 0.0, 1.0, 1.0, 1.0],
            vec![1.0, 1.0, 10.0],
        )
        .unwrap();
        // Outputs: 2 + 1 = 3, -1 + 1 = 0, 2 - 1 + 1 = 2; errors 2, -1, -8.
        let metrics = evaluate(&spec, &[2.0, -1.0, 1.0], &data).unwrap();
        assert_eq!(metrics.mse, Some((4.0 + 1.0 + 64.0) / 3.0));
        assert_eq!(metrics.loss, metrics.mse.unwrap());
    }

    #[test]
    fn overflowing_outputs_are_an_error() {
        let spec = ModelSpec { kind: ModelKind::LogisticRegression, n_features: 1, task: Task::Regression };
        let data = Dataset::from_parts(vec!["x".to_owned()], vec![1.0, 1e30], vec![0.0, 0.0]).unwrap();
        let error = evaluate(&spec, &[1e30, 0.0], &data).unwrap_err();
        assert!(matches!(error, Error::NonFiniteOutput { row: 1, .. }), "{error}");
    }
}
