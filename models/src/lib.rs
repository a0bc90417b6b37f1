//! Models, local training, evaluation and data handling for pdc, on burn's ndarray backend.
//!
//! A model is a [`ModelSpec`] (architecture, feature count, task) plus a flat `Vec<f32>` of
//! parameters in the spec's [`Layout`]; that vector is what PDCs and the coordinator exchange,
//! clip, noise and average. This crate turns CSV files into [`Dataset`]s, trains parameters
//! locally with mini-batch SGD ([`train_local`]) or with differentially private DP-SGD
//! ([`train_dp`]: Poisson sampling, per-example clipping, Gaussian noise), evaluates them
//! ([`evaluate`]), splits data for simulations ([`partition_iid`], [`partition_dirichlet`],
//! [`synthetic`]), and exports a model as safetensors for PyTorch ([`to_safetensors`]).
//!
//! Everything is deterministic: initial parameters, shuffles, partitions and synthetic data come
//! from seeded ChaCha streams, never from burn's global RNG. The one deliberate exception is
//! DP-SGD's noise, which is drawn from an OS-seeded generator because noise that can be replayed
//! can be subtracted.
//!
//! # Example
//!
//! ```
//! use pdc_models::{
//!     ModelKind, ModelSpec, Standardizer, SyntheticConfig, Task, TrainConfig, evaluate,
//!     synthetic, train_local, train_validation_split,
//! };
//!
//! let data = synthetic(&SyntheticConfig { n_rows: 600, n_features: 8, positive_rate: 0.3, seed: 7 });
//! let (mut train, mut validation) = train_validation_split(&data, 0.25, 7)?;
//! // Fit the standardiser on the training rows only.
//! let standardizer = Standardizer::fit(&train);
//! standardizer.apply(&mut train)?;
//! standardizer.apply(&mut validation)?;
//!
//! let spec = ModelSpec {
//!     kind: ModelKind::Mlp { hidden: vec![16] },
//!     n_features: 8,
//!     task: Task::BinaryClassification,
//! };
//! let initial = spec.init_parameters(42);
//! let config = TrainConfig { epochs: 5, batch_size: 32, learning_rate: 0.1, seed: 1, proximal_mu: 0.0 };
//! let outcome = train_local(&spec, &initial, &train, &config)?;
//! assert_eq!(outcome.n_examples, train.n_rows());
//!
//! let metrics = evaluate(&spec, &outcome.parameters, &validation)?;
//! assert!(metrics.auroc.unwrap() > 0.75);
//! # Ok::<(), pdc_models::Error>(())
//! ```

mod data;
mod dp_sgd;
mod error;
mod export;
mod metrics;
mod network;
mod partition;
mod spec;
mod standardize;
mod synthetic;
mod train;

pub use data::{Dataset, Schema, load_csv, parse_csv, read_csv};
pub use dp_sgd::{DpTrainConfig, DpTrainOutcome, LocalDpSettings, train_dp};
pub use error::{Error, Result};
pub use export::{WEIGHT_LAYOUT_KEY, from_safetensors, to_safetensors};
pub use metrics::{Metrics, auroc, evaluate, predict};
pub use partition::{MIN_ROWS_PER_PART, partition_dirichlet, partition_iid, train_validation_split};
pub use spec::{Layout, ModelKind, ModelSpec, Task, TensorLayout};
pub use standardize::{FederatedStandardization, MIN_STD, Standardizer};
pub use synthetic::{SyntheticConfig, synthetic};
pub use train::{TrainConfig, TrainOutcome, check_proximal_mu, train_local};

/// Which Gaussian sampler DP-SGD draws its noise with (re-exported from `pdc-privacy` for [`DpTrainConfig`]).
pub use pdc_privacy::NoiseMode;

/// The bundled public datasets, split and standardised as the tests use them.
#[cfg(test)]
pub(crate) mod test_data {
    use std::path::PathBuf;

    use crate::{Dataset, ModelKind, ModelSpec, Schema, Standardizer, Task, load_csv, train_validation_split};

    /// The bundled tables, found from the directory cargo names when it runs the test (a shared build cache can
    /// hold a test binary built in a clone elsewhere, whose compile-time path is gone).
    pub(crate) fn data_dir() -> PathBuf {
        PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR when it runs tests"))
            .join("../data")
    }

    pub(crate) fn cancer_schema() -> Schema {
        let text = std::fs::read_to_string(data_dir().join("breast_cancer_wisconsin.csv")).unwrap();
        let header = text.lines().next().unwrap();
        Schema {
            features: header.split(',').filter(|&name| name != "malignant").map(str::to_owned).collect(),
            label: "malignant".to_owned(),
        }
    }

    pub(crate) fn diabetes_schema() -> Schema {
        Schema {
            features: ["age", "sex", "bmi", "bp", "s1", "s2", "s3", "s4", "s5", "s6"].map(str::to_owned).to_vec(),
            label: "progression".to_owned(),
        }
    }

    pub(crate) fn cancer_spec(kind: ModelKind) -> ModelSpec {
        ModelSpec { kind, n_features: 30, task: Task::BinaryClassification }
    }

    /// Training and validation parts (80/20, stratified) with features standardised on the
    /// training part.
    pub(crate) fn cancer_split() -> (Dataset, Dataset) {
        let data = load_csv(&data_dir().join("breast_cancer_wisconsin.csv"), &cancer_schema()).unwrap();
        standardised_split(&data)
    }

    /// Training and validation parts (80/20) with features and labels standardised on the
    /// training part.
    pub(crate) fn diabetes_split() -> (Dataset, Dataset) {
        let data = load_csv(&data_dir().join("diabetes_progression.csv"), &diabetes_schema()).unwrap();
        let (mut train, mut validation) = standardised_split(&data);
        let n = train.n_rows() as f32;
        let mean = train.labels.iter().sum::<f32>() / n;
        let std = (train.labels.iter().map(|y| (y - mean).powi(2)).sum::<f32>() / n).sqrt();
        for label in train.labels.iter_mut().chain(validation.labels.iter_mut()) {
            *label = (*label - mean) / std;
        }
        (train, validation)
    }

    fn standardised_split(data: &Dataset) -> (Dataset, Dataset) {
        let (mut train, mut validation) = train_validation_split(data, 0.2, 2024).unwrap();
        let standardizer = Standardizer::fit(&train);
        standardizer.apply(&mut train).unwrap();
        standardizer.apply(&mut validation).unwrap();
        (train, validation)
    }
}
