//! Aggregation of PDC updates into the next global model.
//!
//! Weighted FedAvg streams: updates are added one at a time in a fixed order (sorted PDC ids) into an `f64`
//! accumulator, so memory is O(model size) whatever the number of PDCs and the result is bit-for-bit
//! reproducible. An update may itself arrive in pieces ([`FedAvg::add_slice`]), so a coordinator can aggregate
//! updates straight from its archive without holding any of them whole.
//!
//! The robust rules ([`robust`]) need every update at once. [`rule`] is what a study chooses in its manifest's
//! `[aggregation]` table and dispatches a round to the right rule; [`anomaly`] scores each update against the
//! round's robust centre, detects free riders and suspends PDCs flagged round after round; [`optimizer`] holds
//! the server optimisers (FedAvgM, FedAdam, FedYogi, FedAdagrad) applied to whichever rule's output; [`state`]
//! carries a study's optimiser and the previous round's aggregate (centered clipping's centre) between rounds.

pub mod anomaly;
pub mod optimizer;
pub mod robust;
pub mod rule;
pub mod state;

pub use anomaly::{AnomalyConfig, AnomalyReason, AnomalyScore, SuspensionTracker};
pub use optimizer::{ServerOptimizer, ServerOptimizerSpec};
pub use rule::{AggregationConfig, RoundAggregate, RoundInputs, aggregate, aggregate_round, aggregate_with};
pub use state::ServerState;

use ndarray::{Array1, ArrayView1, Zip};

use crate::{Error, Result};

/// A weighted FedAvg in progress: Σ wᵢ·uᵢ and Σ wᵢ.
#[derive(Debug, Clone)]
pub struct FedAvg {
    sum: Array1<f64>,
    total_weight: f64,
    n_updates: usize,
}

impl FedAvg {
    /// An empty average over vectors of `n_parameters`.
    pub fn new(n_parameters: usize) -> Self {
        Self { sum: Array1::zeros(n_parameters), total_weight: 0.0, n_updates: 0 }
    }

    /// Adds a whole update with weight `weight` (the PDC's example count).
    ///
    /// ```
    /// use pdc_coordinator::aggregation::FedAvg;
    /// let mut average = FedAvg::new(2);
    /// average.add(1.0, &[1.0, 0.0]).unwrap();
    /// average.add(3.0, &[0.0, 4.0]).unwrap();
    /// assert_eq!(average.finish().unwrap(), vec![0.25, 3.0]);
    /// ```
    pub fn add(&mut self, weight: f64, update: &[f32]) -> Result<()> {
        if update.len() != self.sum.len() {
            return Err(length_error(self.sum.len(), update.len()));
        }
        self.add_slice(0, weight, update)?;
        self.commit(weight)
    }

    /// Adds `values`, the piece of an update that starts at `offset`, with weight `weight`. Call
    /// [`FedAvg::commit`] once every piece of the update has been added.
    pub fn add_slice(&mut self, offset: usize, weight: f64, values: &[f32]) -> Result<()> {
        check_weight(weight)?;
        let end = offset.checked_add(values.len()).filter(|&end| end <= self.sum.len());
        let Some(end) = end else {
            return Err(length_error(self.sum.len(), offset.saturating_add(values.len())));
        };
        let mut target = self.sum.slice_mut(ndarray::s![offset..end]);
        match target.as_slice_mut() {
            // The accumulator is contiguous: a plain zip over slices is what the compiler vectorises best.
            Some(sums) => {
                for (sum, &value) in sums.iter_mut().zip(values) {
                    *sum += weight * f64::from(value);
                }
            }
            None => Zip::from(&mut target).and(ArrayView1::from(values)).for_each(|sum, &value| {
                *sum += weight * f64::from(value);
            }),
        }
        Ok(())
    }

    /// Counts an update whose pieces were all added with [`FedAvg::add_slice`].
    pub fn commit(&mut self, weight: f64) -> Result<()> {
        check_weight(weight)?;
        self.total_weight += weight;
        self.n_updates += 1;
        Ok(())
    }

    /// How many updates were added.
    pub fn n_updates(&self) -> usize {
        self.n_updates
    }

    /// The weighted average, rounded to `f32`.
    pub fn finish(self) -> Result<Vec<f32>> {
        if self.n_updates == 0 || self.total_weight <= 0.0 {
            return Err(Error::FailedPrecondition("FedAvg over no updates".into()));
        }
        let scale = 1.0 / self.total_weight;
        // `f64 -> f32` rounds to nearest: the only rounding step of the whole average.
        Ok(self.sum.iter().map(|&sum| (sum * scale) as f32).collect())
    }
}

fn check_weight(weight: f64) -> Result<()> {
    if weight.is_finite() && weight > 0.0 {
        Ok(())
    } else {
        Err(Error::InvalidArgument { field: "weight", detail: format!("must be finite and positive, got {weight}") })
    }
}

fn length_error(expected: usize, actual: usize) -> Error {
    Error::InvalidArgument { field: "update", detail: format!("expected {expected} parameters, got {actual}") }
}

/// Applies an aggregated update (a mean delta) to the global model: `global + delta`.
pub fn apply_delta(global: &[f32], delta: &[f32]) -> Result<Vec<f32>> {
    if global.len() != delta.len() {
        return Err(length_error(global.len(), delta.len()));
    }
    Ok(global.iter().zip(delta).map(|(g, d)| g + d).collect())
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn hand_computed_weighted_mean() {
        let mut average = FedAvg::new(3);
        average.add(2.0, &[1.0, -1.0, 0.5]).unwrap();
        average.add(1.0, &[4.0, 2.0, -0.5]).unwrap();
        average.add(1.0, &[0.0, 0.0, 0.0]).unwrap();
        // (2·1 + 4)/4, (−2 + 2)/4, (1 − 0.5)/4
        assert_eq!(average.finish().unwrap(), vec![1.5, 0.0, 0.125]);
    }

    #[test]
    fn pieces_equal_whole_updates() {
        let update: Vec<f32> = (0..10).map(|i| i as f32 * 0.3).collect();
        let mut whole = FedAvg::new(10);
        whole.add(3.0, &update).unwrap();
        let mut pieces = FedAvg::new(10);
        pieces.add_slice(0, 3.0, &update[..4]).unwrap();
        pieces.add_slice(4, 3.0, &update[4..]).unwrap();
        pieces.commit(3.0).unwrap();
        assert_eq!(whole.finish().unwrap(), pieces.finish().unwrap());
    }

    #[test]
    fn bad_lengths_and_weights_are_refused() {
        let mut average = FedAvg::new(2);
        assert!(average.add(1.0, &[1.0]).is_err());
        assert!(average.add_slice(1, 1.0, &[1.0, 2.0]).is_err());
        assert!(average.add(0.0, &[1.0, 2.0]).is_err());
        assert!(average.add(f64::NAN, &[1.0, 2.0]).is_err());
        assert!(FedAvg::new(2).finish().is_err());
    }

    proptest! {
        // With the f64 accumulator the order of equal-weight updates changes the sum only by f64 rounding,
        // far below f32 resolution: the f32 result is the same in any order for these magnitudes.
        #[test]
        fn average_is_close_to_exact_mean_for_any_order(
            updates in prop::collection::vec(prop::collection::vec(-100.0f32..100.0, 4), 1..8),
            rotation in 0usize..8,
        ) {
            let mut rotated = updates.clone();
            let len = rotated.len();
            rotated.rotate_left(rotation % len);
            let mean = |list: &[Vec<f32>]| {
                let mut average = FedAvg::new(4);
                for update in list {
                    average.add(1.0, update).unwrap();
                }
                average.finish().unwrap()
            };
            let (a, b) = (mean(&updates), mean(&rotated));
            for (x, y) in a.iter().zip(&b) {
                prop_assert!((x - y).abs() <= 1e-5 * x.abs().max(1.0));
            }
        }
    }
}
