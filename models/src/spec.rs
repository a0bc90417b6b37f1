//! Model specifications and the flat parameter layout that travels between PDCs and the coordinator.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// What a model predicts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Task {
    /// One logit per row; labels are 0 or 1; the loss is binary cross-entropy with logits.
    BinaryClassification,
    /// One value per row; labels are any finite number; the loss is the mean squared error.
    Regression,
}

/// The architecture of a model.
///
/// Serialised with a `kind` tag, e.g. `{"kind": "mlp", "hidden": [32, 16]}` or
/// `{"kind": "logistic_regression"}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ModelKind {
    /// One linear layer from the features to the output (logistic regression for
    /// [`Task::BinaryClassification`], linear regression for [`Task::Regression`]).
    LogisticRegression,
    /// A multi-layer perceptron: linear layers of the given widths, each followed by ReLU, then a
    /// linear output layer.
    Mlp {
        /// The widths of the hidden layers, input side first.
        hidden: Vec<usize>,
    },
}

/// A complete description of a model: with a parameter vector it determines every prediction.
///
/// # Example
///
/// ```
/// use pdc_models::{ModelKind, ModelSpec, Task};
///
/// let spec = ModelSpec {
///     kind: ModelKind::Mlp { hidden: vec![16] },
///     n_features: 30,
///     task: Task::BinaryClassification,
/// };
/// // 30 x 16 weights + 16 biases, then 16 x 1 weights + 1 bias.
/// assert_eq!(spec.layout().n_parameters(), 30 * 16 + 16 + 16 + 1);
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelSpec {
    /// The architecture.
    pub kind: ModelKind,
    /// The number of input features.
    pub n_features: usize,
    /// What the model predicts.
    pub task: Task,
}

/// The name and shape of one parameter tensor.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TensorLayout {
    /// The tensor's name, e.g. `layers.0.weight` (burn's module path).
    pub name: String,
    /// The tensor's shape; its elements are stored row-major.
    pub shape: Vec<usize>,
}

/// How a flat `Vec<f32>` of parameters splits into named tensors, in a fixed order.
///
/// For each linear layer `i` (input side first) there are two tensors: `layers.{i}.weight` of
/// shape `[d_input, d_output]` (burn's row layout: `output = input · weight + bias`) and
/// `layers.{i}.bias` of shape `[d_output]`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Layout {
    /// The tensors, in the order their elements appear in the flat vector.
    pub tensors: Vec<TensorLayout>,
}

impl ModelSpec {
    /// Checks that the spec describes a model: at least one feature and no zero-width layer.
    pub fn validate(&self) -> Result<()> {
        if self.n_features == 0 {
            return Err(Error::InvalidModelSpec { reason: "n_features must be at least 1".to_owned() });
        }
        if let ModelKind::Mlp { hidden } = &self.kind
            && let Some(position) = hidden.iter().position(|&width| width == 0)
        {
            return Err(Error::InvalidModelSpec { reason: format!("hidden layer {position} has width 0") });
        }
        Ok(())
    }

    /// The widths of every layer boundary: `[n_features, hidden..., 1]`.
    pub fn layer_widths(&self) -> Vec<usize> {
        let mut widths = vec![self.n_features];
        if let ModelKind::Mlp { hidden } = &self.kind {
            widths.extend_from_slice(hidden);
        }
        widths.push(1);
        widths
    }

    /// The names and shapes of the parameter tensors, in their fixed order.
    pub fn layout(&self) -> Layout {
        let widths = self.layer_widths();
        let tensors = widths
            .windows(2)
            .enumerate()
            .flat_map(|(layer, pair)| {
                let (d_input, d_output) = (pair[0], pair[1]);
                [
                    TensorLayout { name: format!("layers.{layer}.weight"), shape: vec![d_input, d_output] },
                    TensorLayout { name: format!("layers.{layer}.bias"), shape: vec![d_output] },
                ]
            })
            .collect();
        Layout { tensors }
    }

    /// Fresh parameters, determined by `seed` alone (a ChaCha8 stream, independent of burn's RNG).
    ///
    /// Weights of layers followed by ReLU are Kaiming-uniform (`U(-b, b)`, `b = sqrt(6 /
    /// d_input)`); the output layer's weights are Xavier-uniform (`b = sqrt(6 / (d_input +
    /// d_output))`); biases are zero.
    pub fn init_parameters(&self, seed: u64) -> Vec<f32> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let widths = self.layer_widths();
        let n_layers = widths.len() - 1;
        let mut parameters = Vec::with_capacity(self.layout().n_parameters());
        for (layer, pair) in widths.windows(2).enumerate() {
            let (d_input, d_output) = (pair[0], pair[1]);
            let bound = if layer + 1 < n_layers {
                (6.0 / d_input.max(1) as f64).sqrt()
            } else {
                (6.0 / (d_input + d_output) as f64).sqrt()
            } as f32;
            parameters.extend((0..d_input * d_output).map(|_| rng.random_range(-bound..=bound)));
            parameters.extend(std::iter::repeat_n(0.0, d_output));
        }
        parameters
    }
}

impl TensorLayout {
    /// The number of elements: the product of the shape.
    pub fn n_elements(&self) -> usize {
        self.shape.iter().product()
    }
}

impl Layout {
    /// The total number of parameters.
    pub fn n_parameters(&self) -> usize {
        self.tensors.iter().map(TensorLayout::n_elements).sum()
    }

    /// Checks that `parameters` has this layout's length and only finite values.
    pub fn validate(&self, parameters: &[f32]) -> Result<()> {
        let expected = self.n_parameters();
        if parameters.len() != expected {
            return Err(Error::ParameterLength { expected, actual: parameters.len() });
        }
        if let Some(index) = parameters.iter().position(|value| !value.is_finite()) {
            let tensor = self.tensor_of(index).map_or_else(String::new, |t| t.name.clone());
            return Err(Error::NonFiniteParameter { tensor, index, value: parameters[index] });
        }
        Ok(())
    }

    /// Splits a flat parameter vector into one slice per tensor, after [`validate`](Self::validate).
    pub fn split<'a>(&self, parameters: &'a [f32]) -> Result<Vec<&'a [f32]>> {
        self.validate(parameters)?;
        let mut rest = parameters;
        Ok(self
            .tensors
            .iter()
            .map(|tensor| {
                let (head, tail) = rest.split_at(tensor.n_elements());
                rest = tail;
                head
            })
            .collect())
    }

    /// The tensor holding flat index `index`, if any.
    fn tensor_of(&self, index: usize) -> Option<&TensorLayout> {
        let mut end = 0;
        self.tensors.iter().find(|tensor| {
            end += tensor.n_elements();
            index < end
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mlp(hidden: Vec<usize>) -> ModelSpec {
        ModelSpec { kind: ModelKind::Mlp { hidden }, n_features: 5, task: Task::BinaryClassification }
    }

    #[test]
    fn layout_names_and_shapes_follow_the_layers() {
        let layout = mlp(vec![4, 3]).layout();
        let described: Vec<(String, Vec<usize>)> =
            layout.tensors.iter().map(|t| (t.name.clone(), t.shape.clone())).collect();
        assert_eq!(
            described,
            vec![
                ("layers.0.weight".to_owned(), vec![5, 4]),
                ("layers.0.bias".to_owned(), vec![4]),
                ("layers.1.weight".to_owned(), vec![4, 3]),
                ("layers.1.bias".to_owned(), vec![3]),
                ("layers.2.weight".to_owned(), vec![3, 1]),
                ("layers.2.bias".to_owned(), vec![1]),
            ]
        );
        assert_eq!(layout.n_parameters(), 20 + 4 + 12 + 3 + 3 + 1);
    }

    #[test]
    fn logistic_regression_is_one_layer() {
        let spec = ModelSpec { kind: ModelKind::LogisticRegression, n_features: 7, task: Task::Regression };
        assert_eq!(spec.layer_widths(), vec![7, 1]);
        assert_eq!(spec.layout().n_parameters(), 8);
    }

    #[test]
    fn parameters_round_trip_through_the_layout() {
        let spec = mlp(vec![4]);
        let layout = spec.layout();
        let parameters = spec.init_parameters(3);
        assert_eq!(parameters.len(), layout.n_parameters());
        let pieces = layout.split(&parameters).unwrap();
        assert_eq!(pieces.len(), layout.tensors.len());
        for (piece, tensor) in pieces.iter().zip(&layout.tensors) {
            assert_eq!(piece.len(), tensor.n_elements());
        }
        assert_eq!(pieces.concat(), parameters);
        // Biases start at zero, weights do not.
        assert!(pieces[1].iter().all(|&b| b == 0.0));
        assert!(pieces[0].iter().any(|&w| w != 0.0));
    }

    #[test]
    fn init_is_deterministic_per_seed_and_bounded() {
        let spec = mlp(vec![8]);
        assert_eq!(spec.init_parameters(11), spec.init_parameters(11));
        assert_ne!(spec.init_parameters(11), spec.init_parameters(12));
        let bound = (6.0f32 / 5.0).sqrt();
        let pieces_owner = spec.init_parameters(11);
        let pieces = spec.layout().split(&pieces_owner).unwrap();
        assert!(pieces[0].iter().all(|w| w.abs() <= bound));
        let output_bound = (6.0f32 / 9.0).sqrt();
        assert!(pieces[2].iter().all(|w| w.abs() <= output_bound));
    }

    #[test]
    fn validate_rejects_wrong_length_and_non_finite_values() {
        let layout = mlp(vec![2]).layout();
        let error = layout.validate(&[0.0; 3]).unwrap_err();
        assert!(matches!(error, Error::ParameterLength { expected: 15, actual: 3 }));
        let mut parameters = vec![0.0; 15];
        parameters[12] = f32::NAN;
        let error = layout.validate(&parameters).unwrap_err();
        assert!(error.to_string().contains("parameter 12 (in tensor `layers.1.weight`)"), "{error}");
    }

    #[test]
    fn invalid_specs_are_rejected() {
        let mut spec = mlp(vec![4, 0]);
        assert!(spec.validate().unwrap_err().to_string().contains("hidden layer 1 has width 0"));
        spec.kind = ModelKind::LogisticRegression;
        spec.n_features = 0;
        assert!(spec.validate().unwrap_err().to_string().contains("n_features"));
    }

    #[test]
    fn specs_serialise_with_a_kind_tag() {
        let spec = mlp(vec![32, 16]);
        let json = serde_json::to_string(&spec).unwrap();
        assert_eq!(json, r#"{"kind":{"kind":"mlp","hidden":[32,16]},"n_features":5,"task":"binary_classification"}"#);
        assert_eq!(serde_json::from_str::<ModelSpec>(&json).unwrap(), spec);
        let kind: ModelKind = serde_json::from_str(r#"{"kind":"logistic_regression"}"#).unwrap();
        assert_eq!(kind, ModelKind::LogisticRegression);
    }
}
