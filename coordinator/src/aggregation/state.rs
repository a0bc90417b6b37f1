//! What a study's aggregation carries from one round to the next: the server optimiser's moments and, for
//! centered clipping, the previous round's aggregate.
//!
//! Centered clipping (Karimireddy, He and Jaggi, "Learning from History for Byzantine Robust Optimization", 2021)
//! clips every update around a centre `v` and moves `v` by the mean of the clipped differences. The paper's centre
//! is the previous step's aggregate: honest updates of consecutive rounds point in similar directions, so from
//! there one iteration is already close to the honest mean, and an attacker can move the result by at most `τ`
//! times its share per round. Starting each round from zero instead makes every honest update of norm above `τ`
//! look like an outlier. [`ServerState`] keeps that aggregate between rounds, next to the optimiser, as serde
//! state that a coordinator (or a replay of its ledger) threads through its rounds in order.

use serde::{Deserialize, Serialize};

use super::apply_delta;
use super::optimizer::ServerOptimizer;
use super::rule::{AggregationConfig, RoundInputs, RuleKind};
use crate::{Error, Result};

/// A study's aggregation state between rounds.
///
/// ```
/// use pdc_coordinator::aggregation::rule::{AggregationConfig, aggregate_round};
/// use pdc_coordinator::aggregation::state::ServerState;
///
/// let config: AggregationConfig =
///     toml::from_str("rule = \"centered_clipping\"\ntau = 5.0\niterations = 1\n[anomaly]\nenabled = false").unwrap();
/// let mut state = ServerState::new(&config, 1).unwrap();
/// let updates: [(&str, f64, &[f32]); 3] = [("a", 1.0, &[1.0]), ("b", 1.0, &[2.0]), ("c", 1.0, &[100.0])];
/// // Round 1 starts from zero: (1 + 2 + 5) / 3.
/// let first = aggregate_round(&config, &updates, &state.round_inputs(None)).unwrap();
/// assert_eq!(first.delta, vec![(8.0f64 / 3.0) as f32]);
/// let model = state.apply(&[0.0], &first.delta).unwrap();
/// assert_eq!(state.previous_aggregate(), Some(&first.delta[..]));
/// // Round 2 starts from round 1's aggregate.
/// let second = aggregate_round(&config, &updates, &state.round_inputs(None)).unwrap();
/// let centre = f64::from((8.0f64 / 3.0) as f32);
/// let expected = centre + ((1.0 - centre) + (2.0 - centre) + 5.0) / 3.0;
/// assert!((f64::from(second.delta[0]) - expected).abs() < 1e-6);
/// assert_eq!(state.apply(&model, &second.delta).unwrap(), vec![model[0] + second.delta[0]]);
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerState {
    /// Whether the rule centres on the previous aggregate (centered clipping), so it must be kept.
    keeps_previous: bool,
    /// The last applied round's aggregate (the rule's output, before the optimiser), when the rule needs it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    previous_aggregate: Option<Vec<f32>>,
    /// The server optimiser and its moments, when the study has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    optimizer: Option<ServerOptimizer>,
}

impl ServerState {
    /// The state before a study's first round, for a model of `n_parameters`. Fails if the table's optimiser
    /// hyper-parameters are invalid.
    pub fn new(config: &AggregationConfig, n_parameters: usize) -> Result<Self> {
        Ok(Self {
            keeps_previous: config.rule == RuleKind::CenteredClipping,
            previous_aggregate: None,
            optimizer: config.new_server_optimizer(n_parameters)?,
        })
    }

    /// The server optimiser, if the study has one.
    pub fn optimizer(&self) -> Option<&ServerOptimizer> {
        self.optimizer.as_ref()
    }

    /// The previous round's aggregate, kept only for a rule that centres on it; `None` before the first round.
    pub fn previous_aggregate(&self) -> Option<&[f32]> {
        self.previous_aggregate.as_deref()
    }

    /// The inputs of the next round's [`aggregate_round`](super::rule::aggregate_round): the previous aggregate
    /// from this state, and the coordinator's own update for FLTrust when it has one.
    pub fn round_inputs<'a>(&'a self, server_update: Option<&'a [f32]>) -> RoundInputs<'a> {
        RoundInputs { server_update, previous_aggregate: self.previous_aggregate(), local_batch_size: None }
    }

    /// Applies a round's aggregated delta to `global` and returns the next model: a server optimiser step if the
    /// study has one, `global + delta` otherwise. Remembers the aggregate for the next round when the rule
    /// centres on it. Fails, changing nothing, if the lengths differ or the optimiser refuses the step.
    pub fn apply(&mut self, global: &[f32], aggregated_delta: &[f32]) -> Result<Vec<f32>> {
        if let Some(previous) = &self.previous_aggregate
            && previous.len() != aggregated_delta.len()
        {
            return Err(Error::InvalidArgument {
                field: "aggregated_delta",
                detail: format!(
                    "the state holds a previous aggregate of {} parameters, got {}",
                    previous.len(),
                    aggregated_delta.len()
                ),
            });
        }
        let model = match &mut self.optimizer {
            Some(optimizer) => {
                let mut model = global.to_vec();
                optimizer.step(&mut model, aggregated_delta)?;
                model
            }
            None => apply_delta(global, aggregated_delta)?,
        };
        if self.keeps_previous {
            self.previous_aggregate = Some(aggregated_delta.to_vec());
        }
        Ok(model)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aggregation::rule::aggregate_round;

    fn parse(text: &str) -> AggregationConfig {
        toml::from_str(text).unwrap()
    }

    /// Honest updates along [1, 1] and one attacker far away, `(id, weight, delta)`.
    fn round(scale: f32) -> Vec<(String, f64, Vec<f32>)> {
        let mut rows: Vec<(String, f64, Vec<f32>)> =
            (0..4).map(|i| (format!("h{i}"), 1.0, vec![scale * (1.0 + 0.1 * i as f32), scale])).collect();
        rows.push(("x".to_owned(), 1.0, vec![-50.0, 50.0]));
        rows
    }

    fn borrowed(owned: &[(String, f64, Vec<f32>)]) -> Vec<(&str, f64, &[f32])> {
        owned.iter().map(|(id, weight, delta)| (id.as_str(), *weight, delta.as_slice())).collect()
    }

    #[test]
    fn centered_clipping_centres_each_round_on_the_previous_aggregate() {
        let config = parse("rule = \"centered_clipping\"\ntau = 0.5\niterations = 1\n[anomaly]\nenabled = false");
        let mut state = ServerState::new(&config, 2).unwrap();
        assert_eq!(state.previous_aggregate(), None);
        let owned = round(2.0);
        let updates = borrowed(&owned);
        let mut model = vec![0.0f32; 2];
        let mut aggregates = Vec::new();
        for _ in 0..12 {
            let aggregate = aggregate_round(&config, &updates, &state.round_inputs(None)).unwrap();
            // Each round continues from the last: the same as clipping from the previous aggregate by hand.
            let centre = state.previous_aggregate().map_or_else(|| vec![0.0; 2], <[f32]>::to_vec);
            let matrix = ndarray::Array2::from_shape_fn((5, 2), |(i, j)| updates[i].2[j]);
            let by_hand = crate::aggregation::robust::centered_clipping(matrix.view(), &centre, 0.5, 1).unwrap();
            assert_eq!(aggregate.delta, by_hand);
            model = state.apply(&model, &aggregate.delta).unwrap();
            assert_eq!(state.previous_aggregate(), Some(&aggregate.delta[..]));
            aggregates.push(aggregate.delta);
        }
        // One iteration moves the centre by at most τ = 0.5, so from zero the first aggregate is far from the
        // honest mean [2.3, 2]. Round after round it approaches it, to the fixed point where the four honest
        // updates balance the attacker's clipped pull: 0.5 / 4 = 0.125 from the honest mean.
        let distance = |v: &[f32]| (f64::from(v[0]) - 2.3).hypot(f64::from(v[1]) - 2.0);
        assert!(distance(&aggregates[0]) > 2.0, "{aggregates:?}");
        assert!(distance(&aggregates[11]) < 0.2, "{aggregates:?}");
        assert!(aggregates.windows(2).all(|pair| distance(&pair[1]) <= distance(&pair[0]) + 1e-6), "{aggregates:?}");
        // Without the state every round would start from zero again and stay where round 1 was.
        let from_zero = aggregate_round(&config, &updates, &RoundInputs::default()).unwrap();
        assert_eq!(from_zero.delta, aggregates[0]);
        assert_eq!(model.len(), 2);
    }

    #[test]
    fn other_rules_keep_no_aggregate_and_the_optimizer_steps() {
        let median = parse("rule = \"median\"");
        let mut state = ServerState::new(&median, 2).unwrap();
        assert_eq!(state.apply(&[1.0, 1.0], &[0.5, -0.5]).unwrap(), vec![1.5, 0.5]);
        assert_eq!(state.previous_aggregate(), None);
        assert!(state.optimizer().is_none());
        let momentum = parse("server_optimizer = \"fedavgm\"\nserver_momentum = 0.5");
        let mut state = ServerState::new(&momentum, 1).unwrap();
        assert_eq!(state.apply(&[0.0], &[1.0]).unwrap(), vec![1.0]);
        // m = 0.5·1 + 1.
        assert_eq!(state.apply(&[1.0], &[1.0]).unwrap(), vec![2.5]);
        assert_eq!(state.optimizer().unwrap().steps(), 2);
    }

    #[test]
    fn state_survives_serialisation_and_refuses_another_models_delta() {
        let config = parse("rule = \"centered_clipping\"\ntau = 1.0\nserver_optimizer = \"fedadam\"");
        let mut state = ServerState::new(&config, 2).unwrap();
        state.apply(&[0.0, 0.0], &[0.25, -0.5]).unwrap();
        let saved = toml::to_string(&state).unwrap();
        let restored: ServerState = toml::from_str(&saved).unwrap();
        assert_eq!(restored, state);
        let before = state.clone();
        let error = state.apply(&[0.0; 3], &[0.0; 3]).unwrap_err().to_string();
        assert_eq!(error, "invalid aggregated_delta: the state holds a previous aggregate of 2 parameters, got 3");
        assert_eq!(state, before);
        assert!(ServerState::new(&parse("server_optimizer = \"fedadam\"\nserver_learning_rate = -1.0"), 2).is_err());
    }
}
