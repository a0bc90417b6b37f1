//! The burn module behind every [`ModelSpec`]: a stack of linear layers with ReLU between them.

use burn::module::Param;
use burn::nn::Linear;
use burn::prelude::*;
use burn::tensor::activation::relu;

use crate::{Error, ModelSpec, Result};

/// Linear layers with ReLU between them and a single output column.
///
/// Built from a flat parameter vector rather than burn's random initialisers, so that the
/// coordinator's seed alone fixes the initial model (see [`ModelSpec::init_parameters`]).
#[derive(Module, Debug)]
pub(crate) struct Network {
    layers: Vec<Linear>,
}

impl Network {
    /// Builds the network for `spec` on `device` from parameters in [`ModelSpec::layout`] order.
    pub(crate) fn from_parameters(spec: &ModelSpec, parameters: &[f32], device: &Device) -> Result<Network> {
        spec.validate()?;
        let layout = spec.layout();
        let pieces = layout.split(parameters)?;
        let layers = pieces
            .chunks_exact(2)
            .zip(layout.tensors.chunks_exact(2))
            .map(|(values, tensors)| {
                let [d_input, d_output] = [tensors[0].shape[0], tensors[0].shape[1]];
                let weight = TensorData::new(values[0].to_vec(), [d_input, d_output]);
                let bias = TensorData::new(values[1].to_vec(), [d_output]);
                Linear {
                    weight: Param::from_tensor(Tensor::from_data(weight, device)),
                    bias: Some(Param::from_tensor(Tensor::from_data(bias, device))),
                }
            })
            .collect();
        Ok(Network { layers })
    }

    /// The model's output: a logit for binary classification, a value for regression.
    ///
    /// # Shapes
    ///
    /// - input: `[batch_size, n_features]`
    /// - output: `[batch_size, 1]`
    pub(crate) fn forward(&self, input: Tensor<2>) -> Tensor<2> {
        let mut activations = input;
        for (index, layer) in self.layers.iter().enumerate() {
            if index > 0 {
                activations = relu(activations);
            }
            activations = layer.forward(activations);
        }
        activations
    }

    /// `‖w − w₀‖²` over every parameter, with `anchor` holding `w₀`: differentiable in this network's
    /// parameters, a constant in the anchor's (FedProx's proximal term is `μ/2` times it).
    ///
    /// # Shapes
    ///
    /// - result: `[1]`
    pub(crate) fn squared_distance(&self, anchor: &Network) -> Tensor<1> {
        let mut terms = Vec::with_capacity(2 * self.layers.len());
        for (layer, fixed) in self.layers.iter().zip(&anchor.layers) {
            let weight = layer.weight.val() - fixed.weight.val().detach();
            terms.push(weight.square().sum());
            if let (Some(bias), Some(fixed_bias)) = (&layer.bias, &fixed.bias) {
                terms.push((bias.val() - fixed_bias.val().detach()).square().sum());
            }
        }
        terms.into_iter().reduce(|total, term| total + term).expect("a network has at least one layer")
    }

    /// The gradients in `gradients` of every parameter, as a flat vector in [`ModelSpec::layout`] order.
    #[cfg(test)]
    pub(crate) fn flat_gradients(&self, gradients: &burn::tensor::Gradients) -> Result<Vec<f32>> {
        let missing = || Error::Backend("a parameter has no gradient".to_owned());
        let mut flat = Vec::new();
        for layer in &self.layers {
            flat.extend(tensor_values(layer.weight.val().grad(gradients).ok_or_else(missing)?)?);
            if let Some(bias) = &layer.bias {
                flat.extend(tensor_values(bias.val().grad(gradients).ok_or_else(missing)?)?);
            }
        }
        Ok(flat)
    }

    /// The parameters as a flat vector in [`ModelSpec::layout`] order.
    pub(crate) fn to_parameters(&self) -> Result<Vec<f32>> {
        let mut parameters = Vec::new();
        for layer in &self.layers {
            parameters.extend(tensor_values(layer.weight.val())?);
            if let Some(bias) = &layer.bias {
                parameters.extend(tensor_values(bias.val())?);
            }
        }
        Ok(parameters)
    }
}

/// The CPU device every model of this crate runs on: burn's ndarray backend, the one the
/// workspace enables.
///
/// burn 0.22 deprecates ndarray in favour of its `flex` backend; moving means switching the
/// workspace's burn feature from `ndarray` to `flex` and this function to `Device::flex()`.
#[allow(deprecated)]
pub(crate) fn cpu_device() -> Device {
    Device::ndarray()
}

/// Reads a float tensor back into host memory.
pub(crate) fn tensor_values<const D: usize>(tensor: Tensor<D>) -> Result<Vec<f32>> {
    tensor
        .try_into_data()
        .map_err(|error| Error::Backend(error.to_string()))?
        .try_into_vec::<f32>()
        .map_err(|error| Error::Backend(error.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ModelKind, Task};

    #[test]
    fn parameters_survive_a_round_trip_through_the_network() {
        let spec =
            ModelSpec { kind: ModelKind::Mlp { hidden: vec![3, 2] }, n_features: 4, task: Task::BinaryClassification };
        let parameters = spec.init_parameters(5);
        let network = Network::from_parameters(&spec, &parameters, &cpu_device()).unwrap();
        assert_eq!(network.to_parameters().unwrap(), parameters);
    }

    #[test]
    fn forward_matches_a_hand_computation() {
        // One hidden unit: h = relu(2 x0 - x1 + 0.5); output = 3 h - 1.
        let spec = ModelSpec { kind: ModelKind::Mlp { hidden: vec![1] }, n_features: 2, task: Task::Regression };
        let parameters = [2.0, -1.0, 0.5, 3.0, -1.0];
        let device = cpu_device();
        let network = Network::from_parameters(&spec, &parameters, &device).unwrap();
        let input = Tensor::<2>::from_data(TensorData::new(vec![1.0f32, 1.0, 0.0, 4.0], [2, 2]), &device);
        let output = tensor_values(network.forward(input)).unwrap();
        assert_eq!(output, vec![3.0 * 1.5 - 1.0, -1.0]);
    }
}
