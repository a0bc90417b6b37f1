//! The safetensors export of a model: one named tensor per layer, laid out as PyTorch's `nn.Linear` expects, with
//! the model's provenance in the file's metadata.
//!
//! pdc keeps a linear layer's weight as `[d_input, d_output]` (burn's `output = input · weight + bias`); PyTorch
//! keeps it as `[d_output, d_input]` (`output = input · weightᵀ + bias`). The export transposes every weight, so
//! `layers.{i}.weight` is `[out, in]` and `layers.{i}.bias` is `[out]`: a PyTorch user loads the file with
//! `safetensors.torch.load_file` into linear layers of those names. [`from_safetensors`] undoes it exactly.

use std::collections::{BTreeMap, HashMap};

use safetensors::tensor::{Dtype, SafeTensors, TensorView};

use crate::{Error, Layout, Result};

/// The metadata key saying how weights are laid out, and its value.
pub const WEIGHT_LAYOUT_KEY: &str = "pdc.weight_layout";
const WEIGHT_LAYOUT: &str = "torch.nn.Linear: weight [out, in], bias [out]";

/// The safetensors bytes of `parameters` (a flat vector in `layout`): every tensor as little-endian `f32`, 2-D
/// tensors (linear weights) transposed to `[out, in]`, and `metadata` (plus `format = "pt"` and
/// [`WEIGHT_LAYOUT_KEY`]) in the header.
///
/// # Example
///
/// ```
/// use std::collections::BTreeMap;
///
/// use pdc_models::{ModelKind, ModelSpec, Task, from_safetensors, to_safetensors};
///
/// let spec = ModelSpec { kind: ModelKind::Mlp { hidden: vec![4] }, n_features: 3, task: Task::Regression };
/// let parameters = spec.init_parameters(1);
/// let metadata = BTreeMap::from([("round".to_owned(), "7".to_owned())]);
/// let bytes = to_safetensors(&spec.layout(), &parameters, &metadata)?;
/// let (back, read) = from_safetensors(&bytes, &spec.layout())?;
/// assert_eq!(back, parameters);
/// assert_eq!(read["round"], "7");
/// # Ok::<(), pdc_models::Error>(())
/// ```
pub fn to_safetensors(layout: &Layout, parameters: &[f32], metadata: &BTreeMap<String, String>) -> Result<Vec<u8>> {
    let pieces = layout.split(parameters)?;
    let mut tensors = Vec::with_capacity(pieces.len());
    for (tensor, values) in layout.tensors.iter().zip(pieces) {
        let (shape, values) = match tensor.shape.as_slice() {
            &[d_input, d_output] => (vec![d_output, d_input], transpose(values, d_input, d_output)),
            shape => (shape.to_vec(), values.to_vec()),
        };
        let bytes: Vec<u8> = values.iter().flat_map(|value| value.to_le_bytes()).collect();
        tensors.push((tensor.name.clone(), shape, bytes));
    }
    let views = tensors
        .iter()
        .map(|(name, shape, bytes)| {
            TensorView::new(Dtype::F32, shape.clone(), bytes).map(|view| (name.clone(), view)).map_err(invalid)
        })
        .collect::<Result<Vec<_>>>()?;
    let mut header: HashMap<String, String> = metadata.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    header.insert("format".to_owned(), "pt".to_owned());
    header.insert(WEIGHT_LAYOUT_KEY.to_owned(), WEIGHT_LAYOUT.to_owned());
    safetensors::serialize(views, Some(header)).map_err(invalid)
}

/// Reads a file [`to_safetensors`] wrote for `layout` back into a flat vector in `layout`, with its metadata.
/// Every tensor of the layout must be present as `f32` with the exported shape, and no other.
pub fn from_safetensors(bytes: &[u8], layout: &Layout) -> Result<(Vec<f32>, BTreeMap<String, String>)> {
    let file = SafeTensors::deserialize(bytes).map_err(invalid)?;
    if file.len() != layout.tensors.len() {
        return Err(Error::Safetensors(format!(
            "the file has {} tensors, the model {}",
            file.len(),
            layout.tensors.len()
        )));
    }
    let mut parameters = Vec::with_capacity(layout.n_parameters());
    for tensor in &layout.tensors {
        let view = file.tensor(&tensor.name).map_err(|e| Error::Safetensors(format!("`{}`: {e}", tensor.name)))?;
        let expected = match tensor.shape.as_slice() {
            &[d_input, d_output] => vec![d_output, d_input],
            shape => shape.to_vec(),
        };
        if view.dtype() != Dtype::F32 || view.shape() != expected.as_slice() {
            return Err(Error::Safetensors(format!(
                "`{}` is {:?} {:?}, expected F32 {expected:?}",
                tensor.name,
                view.dtype(),
                view.shape()
            )));
        }
        let values: Vec<f32> =
            view.data().chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
        match tensor.shape.as_slice() {
            // Stored [out, in]; back to [in, out].
            &[d_input, d_output] => parameters.extend(transpose(&values, d_output, d_input)),
            _ => parameters.extend(values),
        }
    }
    let (_, header) = SafeTensors::read_metadata(bytes).map_err(invalid)?;
    let metadata = header.metadata().clone().unwrap_or_default().into_iter().collect();
    Ok((parameters, metadata))
}

/// `values` as a `rows × columns` row-major matrix, transposed (row-major `columns × rows`).
fn transpose(values: &[f32], rows: usize, columns: usize) -> Vec<f32> {
    (0..columns).flat_map(|column| (0..rows).map(move |row| values[row * columns + column])).collect()
}

fn invalid(error: safetensors::SafeTensorError) -> Error {
    Error::Safetensors(error.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ModelKind, ModelSpec, Task};

    #[test]
    fn tensors_are_named_by_layer_with_pytorch_shapes_and_values_and_metadata_survive() {
        let spec = ModelSpec { kind: ModelKind::Mlp { hidden: vec![3] }, n_features: 2, task: Task::Regression };
        let layout = spec.layout();
        // 2×3 weights, 3 biases, 3×1 weights, 1 bias; distinct values so a wrong transpose shows.
        let parameters: Vec<f32> = (0..layout.n_parameters()).map(|i| i as f32 * 0.5 - 1.0).collect();
        let metadata = BTreeMap::from([
            ("study_id".to_owned(), "s-1".to_owned()),
            ("model_hash".to_owned(), "ab".repeat(32)),
            ("round".to_owned(), "4".to_owned()),
        ]);
        let bytes = to_safetensors(&layout, &parameters, &metadata).unwrap();

        // Read with the safetensors crate itself, as a PyTorch user's loader would.
        let file = SafeTensors::deserialize(&bytes).unwrap();
        let mut names = file.names();
        names.sort();
        assert_eq!(names, ["layers.0.bias", "layers.0.weight", "layers.1.bias", "layers.1.weight"]);
        let read = |name: &str| {
            let view = file.tensor(name).unwrap();
            assert_eq!(view.dtype(), Dtype::F32);
            let values: Vec<f32> =
                view.data().chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect();
            (view.shape().to_vec(), values)
        };
        // pdc's [in = 2, out = 3] weight [[-1, -0.5, 0], [0.5, 1, 1.5]] becomes [out = 3, in = 2].
        assert_eq!(read("layers.0.weight"), (vec![3, 2], vec![-1.0, 0.5, -0.5, 1.0, 0.0, 1.5]));
        assert_eq!(read("layers.0.bias"), (vec![3], vec![2.0, 2.5, 3.0]));
        assert_eq!(read("layers.1.weight"), (vec![1, 3], vec![3.5, 4.0, 4.5]));
        assert_eq!(read("layers.1.bias"), (vec![1], vec![5.0]));

        let (back, read_metadata) = from_safetensors(&bytes, &layout).unwrap();
        assert_eq!(back, parameters);
        assert_eq!(read_metadata["study_id"], "s-1");
        assert_eq!(read_metadata["round"], "4");
        assert_eq!(read_metadata["format"], "pt");
        assert_eq!(read_metadata[WEIGHT_LAYOUT_KEY], WEIGHT_LAYOUT);
    }

    #[test]
    fn wrong_lengths_shapes_and_garbage_are_refused() {
        let spec = ModelSpec { kind: ModelKind::LogisticRegression, n_features: 3, task: Task::BinaryClassification };
        let layout = spec.layout();
        let error = to_safetensors(&layout, &[0.0; 3], &BTreeMap::new()).unwrap_err();
        assert!(matches!(error, Error::ParameterLength { expected: 4, actual: 3 }), "{error}");
        let error = to_safetensors(&layout, &[0.0, f32::NAN, 0.0, 0.0], &BTreeMap::new()).unwrap_err();
        assert!(matches!(error, Error::NonFiniteParameter { .. }), "{error}");

        let bytes = to_safetensors(&layout, &[1.0, 2.0, 3.0, 4.0], &BTreeMap::new()).unwrap();
        let other = ModelSpec { n_features: 2, ..spec }.layout();
        let error = from_safetensors(&bytes, &other).unwrap_err().to_string();
        assert!(error.contains("`layers.0.weight` is F32 [1, 3], expected F32 [1, 2]"), "{error}");
        let error = from_safetensors(b"not a safetensors file", &layout).unwrap_err();
        assert!(matches!(error, Error::Safetensors(_)), "{error}");
    }
}
