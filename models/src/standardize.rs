//! Per-feature standardisation to zero mean and unit variance, fitted on training data only.

use std::collections::BTreeMap;

use pdc_privacy::stats::{FeatureBounds, GlobalStandardization};
use serde::{Deserialize, Serialize};

use crate::{Dataset, Error, Result};

/// Standard deviations below this are treated as 1, so constant features pass through centred
/// instead of being blown up.
pub const MIN_STD: f64 = 1e-12;

/// The mean and standard deviation of each feature; applying it maps `x` to `(x - mean) / std`.
///
/// Fit it on the training rows and apply it to training, validation and test rows alike, so that
/// no statistic leaks from held-out data.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Standardizer {
    /// The mean of each feature.
    pub mean: Vec<f32>,
    /// The population standard deviation of each feature, floored as described at [`MIN_STD`].
    pub std: Vec<f32>,
}

impl Standardizer {
    /// Fits the per-feature mean and population standard deviation, accumulating in `f64`.
    ///
    /// A dataset without rows gives the identity (mean 0, std 1).
    pub fn fit(data: &Dataset) -> Standardizer {
        let n_features = data.n_features();
        let n_rows = data.n_rows();
        if n_rows == 0 {
            return Standardizer { mean: vec![0.0; n_features], std: vec![1.0; n_features] };
        }
        let mut sums = vec![0.0f64; n_features];
        for row in data.features.chunks_exact(n_features) {
            for (sum, &value) in sums.iter_mut().zip(row) {
                *sum += f64::from(value);
            }
        }
        let means: Vec<f64> = sums.iter().map(|sum| sum / n_rows as f64).collect();
        // A second pass over the centred values avoids the cancellation of `E[x²] - E[x]²`.
        let mut squares = vec![0.0f64; n_features];
        for row in data.features.chunks_exact(n_features) {
            for ((square, &value), mean) in squares.iter_mut().zip(row).zip(&means) {
                let centred = f64::from(value) - mean;
                *square += centred * centred;
            }
        }
        let std = squares
            .iter()
            .map(|square| {
                let std = (square / n_rows as f64).sqrt();
                if std < MIN_STD { 1.0 } else { std as f32 }
            })
            .collect();
        Standardizer { mean: means.iter().map(|&mean| mean as f32).collect(), std }
    }

    /// Standardises `data`'s features in place.
    ///
    /// Fails, leaving `data` unchanged, if the feature counts differ, if the standardiser itself is
    /// malformed (for example deserialised with a zero std), or if a result would not be finite.
    pub fn apply(&self, data: &mut Dataset) -> Result<()> {
        self.validate()?;
        let n_features = data.n_features();
        if n_features != self.mean.len() {
            return Err(Error::FeatureCountMismatch { expected: self.mean.len(), actual: n_features });
        }
        data.validate()?;
        let mut standardised = data.features.clone();
        for (index, value) in standardised.iter_mut().enumerate() {
            let feature = index % n_features;
            *value = (*value - self.mean[feature]) / self.std[feature];
            if !value.is_finite() {
                return Err(Error::NonFiniteFeature {
                    row: index / n_features,
                    feature: data.feature_names[feature].clone(),
                    value: *value,
                });
            }
        }
        data.features = standardised;
        Ok(())
    }

    /// Checks that mean and std have the same length, means are finite and stds finite and
    /// positive.
    pub fn validate(&self) -> Result<()> {
        if self.mean.len() != self.std.len() {
            return Err(Error::InvalidArgument {
                name: "standardizer",
                reason: format!("{} means but {} standard deviations", self.mean.len(), self.std.len()),
            });
        }
        if let Some(feature) = self.mean.iter().position(|mean| !mean.is_finite()) {
            return Err(Error::InvalidArgument {
                name: "standardizer",
                reason: format!("the mean of feature {feature} is {}", self.mean[feature]),
            });
        }
        if let Some(feature) = self.std.iter().position(|std| !(std.is_finite() && *std > 0.0)) {
            return Err(Error::InvalidArgument {
                name: "standardizer",
                reason: format!(
                    "the standard deviation of feature {feature} is {}; it must be finite and positive",
                    self.std[feature]
                ),
            });
        }
        Ok(())
    }
}

impl From<&GlobalStandardization> for Standardizer {
    /// The standardiser of a pooled DP estimate (whose standard deviations are positive by construction).
    fn from(global: &GlobalStandardization) -> Self {
        Standardizer {
            mean: global.mean.iter().map(|&mean| mean as f32).collect(),
            std: global.std.iter().map(|&std| (std as f32).max(f32::MIN_POSITIVE)).collect(),
        }
    }
}

/// A study's `[federated_standardization]`: instead of fitting the standardisation on the researcher's validation
/// set, every PDC releases a DP feature summary of its own table (see [`pdc_privacy::stats`]), charged to its
/// privacy budget, and the coordinator pools them into the global mean and standard deviation every PDC and the
/// validation set are standardised with.
///
/// The bounds are public: they are part of the manifest every PDC consents to, and must be chosen without looking
/// at the data (a range from the literature, the measuring device or the clinical scale), since bounds taken from
/// the data leak it. Values outside are clamped.
///
/// ```
/// let settings: pdc_models::FederatedStandardization = toml::from_str(r#"
///     epsilon = 0.5
///     delta = 1e-6
///     bounds = { age = [18, 100], bmi = [10, 70] }
/// "#)?;
/// let bounds = settings.bounds_for(&["bmi".to_owned(), "age".to_owned()])?;
/// assert_eq!((bounds[0].lower(), bounds[1].upper()), (10.0, 100.0));
/// assert!(settings.noise_multiplier()? > 1.0);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FederatedStandardization {
    /// The noise multiplier `z` of each PDC's release: its noise is `z` times the summary's L2 sensitivity. Give
    /// this or `epsilon`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub noise_multiplier: Option<f64>,
    /// The ε each PDC's release may cost at `delta`; the noise multiplier is calibrated to it. Give this or
    /// `noise_multiplier`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epsilon: Option<f64>,
    /// The δ `epsilon` is stated at (required with `epsilon`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delta: Option<f64>,
    /// Each feature's clamping range `[lower, upper]`, by column name; every feature of the study needs one.
    pub bounds: BTreeMap<String, [f64; 2]>,
}

impl FederatedStandardization {
    /// The noise multiplier of every PDC's release: as given, or the smallest that meets `epsilon` at `delta` for
    /// one Gaussian release.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidArgument`] unless exactly one of `noise_multiplier` and `epsilon` is given, with valid
    /// values (and `delta` with `epsilon`).
    pub fn noise_multiplier(&self) -> Result<f64> {
        let invalid = |reason: String| Error::InvalidArgument { name: "federated_standardization", reason };
        match (self.noise_multiplier, self.epsilon, self.delta) {
            (Some(z), None, None) if z.is_finite() && z > 0.0 => Ok(z),
            (Some(z), None, None) => Err(invalid(format!("noise_multiplier {z} must be finite and positive"))),
            (None, Some(epsilon), Some(delta)) => {
                pdc_privacy::calibrate_noise_multiplier(epsilon, delta, 1.0, 1).map_err(|e| invalid(e.to_string()))
            }
            (None, Some(_), None) => Err(invalid("epsilon needs the delta it is stated at".into())),
            _ => Err(invalid("give either noise_multiplier, or epsilon with delta".into())),
        }
    }

    /// The bounds of `features`, in their order.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidArgument`] for a feature without bounds, bounds naming a column that is not a feature, or
    /// invalid bounds (not finite, or `lower >= upper`).
    pub fn bounds_for(&self, features: &[String]) -> Result<Vec<FeatureBounds>> {
        let invalid = |reason: String| Error::InvalidArgument { name: "federated_standardization.bounds", reason };
        if let Some(extra) = self.bounds.keys().find(|name| !features.contains(name)) {
            return Err(invalid(format!("`{extra}` is not one of the study's features")));
        }
        features
            .iter()
            .map(|feature| {
                let [lower, upper] =
                    *self.bounds.get(feature).ok_or_else(|| invalid(format!("feature `{feature}` has no bounds")))?;
                FeatureBounds::new(lower, upper).map_err(|e| invalid(format!("`{feature}`: {e}")))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> Dataset {
        Dataset::from_parts(
            vec!["small".to_owned(), "large".to_owned(), "constant".to_owned()],
            vec![
                0.01, 1000.0, 5.0, //
                0.03, 3000.0, 5.0, //
                0.02, 2000.0, 5.0,
            ],
            vec![0.0, 1.0, 0.0],
        )
        .unwrap()
    }

    #[test]
    fn fit_and_apply_centre_and_scale_each_feature() {
        let mut data = table();
        let standardizer = Standardizer::fit(&data);
        assert!((standardizer.mean[0] - 0.02).abs() < 1e-7);
        assert!((standardizer.mean[1] - 2000.0).abs() < 1e-3);
        assert_eq!(standardizer.std[2], 1.0, "a constant feature keeps unit scale");
        standardizer.apply(&mut data).unwrap();
        let expected = (1.5f32).sqrt();
        for feature in 0..2 {
            let column: Vec<f32> = (0..3).map(|row| data.row(row)[feature]).collect();
            assert!((column[0] + expected).abs() < 1e-4, "{column:?}");
            assert!(column[2].abs() < 1e-4, "{column:?}");
            assert!((column[1] - expected).abs() < 1e-4, "{column:?}");
        }
        assert!(data.features.iter().skip(2).step_by(3).all(|&value| value == 0.0));
    }

    #[test]
    fn a_feature_count_mismatch_is_an_error_and_leaves_data_alone() {
        let standardizer = Standardizer { mean: vec![0.0; 2], std: vec![1.0; 2] };
        let mut data = table();
        let error = standardizer.apply(&mut data).unwrap_err();
        assert!(matches!(error, Error::FeatureCountMismatch { expected: 2, actual: 3 }));
        assert_eq!(data, table());
    }

    #[test]
    fn a_malformed_standardizer_is_rejected() {
        let mut standardizer = Standardizer::fit(&table());
        standardizer.std[1] = 0.0;
        let error = standardizer.apply(&mut table()).unwrap_err();
        assert!(error.to_string().contains("standard deviation of feature 1 is 0"), "{error}");
    }

    #[test]
    fn an_empty_dataset_fits_the_identity() {
        let empty = table().subset(&[]);
        let standardizer = Standardizer::fit(&empty);
        assert_eq!(standardizer.mean, vec![0.0; 3]);
        assert_eq!(standardizer.std, vec![1.0; 3]);
    }

    #[test]
    fn federated_settings_need_one_noise_figure_and_bounds_for_exactly_the_features() {
        let parse = |text: &str| toml::from_str::<FederatedStandardization>(text).unwrap();
        let features = ["a".to_owned(), "b".to_owned()];
        let settings = parse("noise_multiplier = 3.0\nbounds = { a = [0, 1], b = [-5, 5] }");
        assert_eq!(settings.noise_multiplier().unwrap(), 3.0);
        let bounds = settings.bounds_for(&features).unwrap();
        assert_eq!((bounds[1].lower(), bounds[1].upper()), (-5.0, 5.0));

        // ε = 1 at δ = 1e-5 for one Gaussian release needs σ ≈ 3.7 under RDP (analytically, 3.73).
        let calibrated = parse("epsilon = 1.0\ndelta = 1e-5\nbounds = {}").noise_multiplier().unwrap();
        assert!((3.0..4.5).contains(&calibrated), "{calibrated}");

        for (text, expected) in [
            ("bounds = {}", "give either noise_multiplier, or epsilon with delta"),
            ("noise_multiplier = 1.0\nepsilon = 1.0\ndelta = 1e-5\nbounds = {}", "give either"),
            ("epsilon = 1.0\nbounds = {}", "epsilon needs the delta"),
            ("noise_multiplier = -1.0\nbounds = {}", "must be finite and positive"),
        ] {
            let error = parse(text).noise_multiplier().unwrap_err().to_string();
            assert!(error.contains(expected), "{text}: {error}");
        }
        for (text, expected) in [
            ("noise_multiplier = 1.0\nbounds = { a = [0, 1] }", "feature `b` has no bounds"),
            ("noise_multiplier = 1.0\nbounds = { a = [0, 1], b = [0, 1], c = [0, 1] }", "`c` is not one of"),
            ("noise_multiplier = 1.0\nbounds = { a = [1, 0], b = [0, 1] }", "`a`:"),
        ] {
            let error = parse(text).bounds_for(&features).unwrap_err().to_string();
            assert!(error.contains(expected), "{text}: {error}");
        }
    }
}
