//! Server optimisers applied on top of any aggregation rule: FedAvgM, FedAdam, FedYogi and FedAdagrad.
//!
//! An aggregation rule turns a round's updates into one aggregated delta Δ (a mean or robust centre of the PDCs'
//! "trained minus global" vectors). Plain FedAvg applies it as `global += Δ`; a server optimiser instead treats Δ
//! as a pseudo-gradient step (Reddi et al., 2021, "Adaptive Federated Optimization"; Hsu et al., 2019, for
//! FedAvgM) and keeps state across rounds. That state is plain `f64` vectors and a step count, so it serialises
//! with serde and a coordinator can persist it beside the global model and resume bit for bit.
//!
//! Semantics follow Flower's strategies (`flwr/server/strategy/fedavgm.py`, `fedadam.py`, `fedyogi.py`,
//! `fedadagrad.py`), written in terms of Δ = aggregate − global (Flower's `delta_t`):
//!
//! - **FedAvgM**: `m ← momentum·m + Δ` (so `m = Δ` on the first step, as Flower sets its momentum vector to the
//!   first pseudo-gradient), `w ← w + lr·m`. Flower works with the pseudo-gradient −Δ and subtracts; the sign
//!   cancels. No Nesterov, as in Flower.
//! - **FedAdam**: `m ← β₁m + (1−β₁)Δ`, `v ← β₂v + (1−β₂)Δ²`, `w ← w + η_t·m/(√v + τ)`. With bias correction
//!   `η_t = η·√(1−β₂ᵗ)/(1−β₁ᵗ)` where `t` is the number of steps taken, 1 on the first (Kingma and Ba's `α_t`).
//!   **Difference:** Flower uses the exponent `server_round + 1` with rounds counted from 1, i.e. `t + 1`; this
//!   module uses `t`, the textbook correction. `bias_correction = false` gives Reddi et al.'s Algorithm 2, which
//!   has no correction at all.
//! - **FedYogi**: `m` as Adam, `v ← v − (1−β₂)·Δ²·sign(v − Δ²)` with `sign(0) = 0` (`np.sign`), no bias
//!   correction, `w ← w + η·m/(√v + τ)`.
//! - **FedAdagrad**: `m ← β₁m + (1−β₁)Δ`, `v ← v + Δ²`, `w ← w + η·m/(√v + τ)`. Flower fixes `β₁ = 0`
//!   (so `m = Δ`), which is the default here; Reddi et al. allow momentum, so `β₁` may be set.
//!
//! Both moments start at zero, as in Flower (Reddi et al. start `v` at `τ²` or more). Moments are kept in `f64`;
//! the global model stays `f32` and is rounded once per coordinate per step.

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// A server optimiser and its hyper-parameters.
///
/// Defaults (see the `DEFAULT_*` constants) are Flower's, except FedAvgM's momentum: Flower defaults to 0, which
/// makes FedAvgM plain FedAvg, so here it defaults to 0.9 (Hsu et al.'s usual value).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum ServerOptimizerSpec {
    /// Server momentum (Hsu et al., 2019).
    FedAvgM {
        /// Server learning rate; Flower's `server_learning_rate`.
        learning_rate: f64,
        /// Momentum factor in `[0, 1)`; Flower's `server_momentum`.
        momentum: f64,
    },
    /// Adam on the server (Reddi et al., 2021).
    FedAdam {
        /// Server learning rate η; Flower's `eta`.
        learning_rate: f64,
        /// First-moment decay β₁ in `[0, 1)`.
        beta_1: f64,
        /// Second-moment decay β₂ in `[0, 1)`.
        beta_2: f64,
        /// Adaptivity τ > 0, added to `√v`.
        tau: f64,
        /// Whether to apply Adam's bias correction to the learning rate (Flower does, with an offset; see the
        /// module documentation).
        bias_correction: bool,
    },
    /// Yogi on the server (Reddi et al., 2021).
    FedYogi {
        /// Server learning rate η.
        learning_rate: f64,
        /// First-moment decay β₁ in `[0, 1)`.
        beta_1: f64,
        /// Second-moment rate β₂ in `[0, 1)`.
        beta_2: f64,
        /// Adaptivity τ > 0.
        tau: f64,
    },
    /// Adagrad on the server (Reddi et al., 2021).
    FedAdagrad {
        /// Server learning rate η.
        learning_rate: f64,
        /// First-moment decay β₁ in `[0, 1)`; 0 (Flower's fixed value) means `m = Δ`.
        beta_1: f64,
        /// Adaptivity τ > 0.
        tau: f64,
    },
}

/// FedAvgM's default server learning rate (Flower's).
pub const DEFAULT_FEDAVGM_LEARNING_RATE: f64 = 1.0;
/// FedAvgM's default momentum (Flower's default is 0, i.e. no momentum; see [`ServerOptimizerSpec`]).
pub const DEFAULT_FEDAVGM_MOMENTUM: f64 = 0.9;
/// FedAdam's and FedAdagrad's default server learning rate (Flower's `eta = 1e-1`).
pub const DEFAULT_ADAM_LEARNING_RATE: f64 = 0.1;
/// FedYogi's default server learning rate (Flower's `eta = 1e-2`).
pub const DEFAULT_YOGI_LEARNING_RATE: f64 = 0.01;
/// Default β₁ of FedAdam and FedYogi (Flower's).
pub const DEFAULT_BETA_1: f64 = 0.9;
/// Default β₂ of FedAdam and FedYogi (Flower's).
pub const DEFAULT_BETA_2: f64 = 0.99;
/// FedAdam's and FedAdagrad's default τ (Flower's `1e-9`).
pub const DEFAULT_ADAM_TAU: f64 = 1e-9;
/// FedYogi's default τ (Flower's `1e-3`).
pub const DEFAULT_YOGI_TAU: f64 = 1e-3;

impl ServerOptimizerSpec {
    /// Checks every hyper-parameter: learning rates finite and positive, decays in `[0, 1)`, τ finite and positive.
    pub fn validate(&self) -> Result<()> {
        match *self {
            Self::FedAvgM { learning_rate, momentum } => {
                check_positive(learning_rate, "server_learning_rate")?;
                check_decay(momentum, "server_momentum")
            }
            Self::FedAdam { learning_rate, beta_1, beta_2, tau, bias_correction: _ }
            | Self::FedYogi { learning_rate, beta_1, beta_2, tau } => {
                check_positive(learning_rate, "server_learning_rate")?;
                check_decay(beta_1, "server_beta_1")?;
                check_decay(beta_2, "server_beta_2")?;
                check_positive(tau, "server_tau")
            }
            Self::FedAdagrad { learning_rate, beta_1, tau } => {
                check_positive(learning_rate, "server_learning_rate")?;
                check_decay(beta_1, "server_beta_1")?;
                check_positive(tau, "server_tau")
            }
        }
    }

    /// Whether the optimiser keeps a second moment `v`.
    fn is_adaptive(&self) -> bool {
        !matches!(self, Self::FedAvgM { .. })
    }
}

/// A server optimiser's state across rounds: its hyper-parameters, the steps taken and its moments.
///
/// ```
/// use pdc_coordinator::aggregation::optimizer::{ServerOptimizer, ServerOptimizerSpec};
/// let spec = ServerOptimizerSpec::FedAvgM { learning_rate: 1.0, momentum: 0.5 };
/// let mut optimizer = ServerOptimizer::new(spec, 1).unwrap();
/// let mut global = [0.0f32];
/// optimizer.step(&mut global, &[1.0]).unwrap(); // m = 1
/// optimizer.step(&mut global, &[1.0]).unwrap(); // m = 0.5 + 1
/// assert_eq!(global, [2.5]);
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerOptimizer {
    // Plain values first and the `spec` table last: TOML wants a table's values before its sub-tables.
    steps: u64,
    first_moment: Vec<f64>,
    second_moment: Vec<f64>,
    spec: ServerOptimizerSpec,
}

impl ServerOptimizer {
    /// A fresh optimiser for a model of `n_parameters`, with zero moments. Fails if a hyper-parameter is invalid.
    pub fn new(spec: ServerOptimizerSpec, n_parameters: usize) -> Result<Self> {
        spec.validate()?;
        let second = if spec.is_adaptive() { n_parameters } else { 0 };
        Ok(Self { spec, steps: 0, first_moment: vec![0.0; n_parameters], second_moment: vec![0.0; second] })
    }

    /// The hyper-parameters.
    pub fn spec(&self) -> &ServerOptimizerSpec {
        &self.spec
    }

    /// How many steps were taken.
    pub fn steps(&self) -> u64 {
        self.steps
    }

    /// The first moment: FedAvgM's momentum vector, or the adaptive optimisers' `m`.
    pub fn first_moment(&self) -> &[f64] {
        &self.first_moment
    }

    /// The second moment `v` of the adaptive optimisers; empty for FedAvgM.
    pub fn second_moment(&self) -> &[f64] {
        &self.second_moment
    }

    /// Applies one round's aggregated delta to `global` in place and updates the moments.
    ///
    /// Fails, changing nothing, if the lengths of `global`, `aggregated_delta` and the state differ (a state
    /// restored for another model), if a hyper-parameter of a deserialised state is invalid, or if the delta holds
    /// a non-finite value.
    pub fn step(&mut self, global: &mut [f32], aggregated_delta: &[f32]) -> Result<()> {
        self.spec.validate()?;
        let n = self.first_moment.len();
        for (actual, field) in [(global.len(), "global"), (aggregated_delta.len(), "aggregated_delta")] {
            if actual != n {
                return Err(Error::InvalidArgument {
                    field,
                    detail: format!("the optimiser holds {n} parameters, got {actual}"),
                });
            }
        }
        if self.spec.is_adaptive() && self.second_moment.len() != n {
            return Err(Error::FailedPrecondition(format!(
                "server optimiser state is corrupt: {} first and {} second moments",
                n,
                self.second_moment.len()
            )));
        }
        if let Some(index) = aggregated_delta.iter().position(|value| !value.is_finite()) {
            return Err(Error::InvalidArgument {
                field: "aggregated_delta",
                detail: format!("value {} at index {index} is not finite", aggregated_delta[index]),
            });
        }
        self.steps += 1;
        let m = &mut self.first_moment;
        let v = &mut self.second_moment;
        match self.spec {
            ServerOptimizerSpec::FedAvgM { learning_rate, momentum } => {
                for ((w, m), &delta) in global.iter_mut().zip(m.iter_mut()).zip(aggregated_delta) {
                    *m = momentum * *m + f64::from(delta);
                    *w = (f64::from(*w) + learning_rate * *m) as f32;
                }
            }
            ServerOptimizerSpec::FedAdam { learning_rate, beta_1, beta_2, tau, bias_correction } => {
                let rate = if bias_correction {
                    // Exponents beyond i32 would underflow the powers to 0 anyway.
                    let t = i32::try_from(self.steps).unwrap_or(i32::MAX);
                    learning_rate * (1.0 - beta_2.powi(t)).sqrt() / (1.0 - beta_1.powi(t))
                } else {
                    learning_rate
                };
                adaptive_step(global, m, v, aggregated_delta, beta_1, rate, tau, |v, square| {
                    beta_2 * v + (1.0 - beta_2) * square
                });
            }
            ServerOptimizerSpec::FedYogi { learning_rate, beta_1, beta_2, tau } => {
                adaptive_step(global, m, v, aggregated_delta, beta_1, learning_rate, tau, |v, square| {
                    v - (1.0 - beta_2) * square * sign(v - square)
                });
            }
            ServerOptimizerSpec::FedAdagrad { learning_rate, beta_1, tau } => {
                adaptive_step(global, m, v, aggregated_delta, beta_1, learning_rate, tau, |v, square| v + square);
            }
        }
        Ok(())
    }
}

/// One step of an adaptive optimiser: `m ← β₁m + (1−β₁)Δ`, `v ← second(v, Δ²)`, `w ← w + rate·m/(√v + τ)`.
#[allow(clippy::too_many_arguments)]
fn adaptive_step(
    global: &mut [f32],
    first: &mut [f64],
    second: &mut [f64],
    delta: &[f32],
    beta_1: f64,
    rate: f64,
    tau: f64,
    update_second: impl Fn(f64, f64) -> f64,
) {
    for (((w, m), v), &delta) in global.iter_mut().zip(first.iter_mut()).zip(second.iter_mut()).zip(delta) {
        let delta = f64::from(delta);
        *m = beta_1 * *m + (1.0 - beta_1) * delta;
        *v = update_second(*v, delta * delta);
        *w = (f64::from(*w) + rate * *m / (v.sqrt() + tau)) as f32;
    }
}

/// `np.sign`: −1, 0 or 1.
fn sign(value: f64) -> f64 {
    if value > 0.0 {
        1.0
    } else if value < 0.0 {
        -1.0
    } else {
        0.0
    }
}

fn check_positive(value: f64, field: &'static str) -> Result<()> {
    if value.is_finite() && value > 0.0 {
        Ok(())
    } else {
        Err(Error::InvalidArgument { field, detail: format!("must be finite and positive, got {value}") })
    }
}

fn check_decay(value: f64, field: &'static str) -> Result<()> {
    if (0.0..1.0).contains(&value) {
        Ok(())
    } else {
        Err(Error::InvalidArgument { field, detail: format!("must lie in [0, 1), got {value}") })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(actual: &[f64], expected: &[f64]) {
        assert_eq!(actual.len(), expected.len());
        for (a, e) in actual.iter().zip(expected) {
            assert!((a - e).abs() <= 1e-12 * e.abs().max(1.0), "{actual:?} vs {expected:?}");
        }
    }

    fn close_f32(actual: &[f32], expected: &[f64]) {
        assert_eq!(actual.len(), expected.len());
        for (a, e) in actual.iter().zip(expected) {
            // One f32 rounding per step.
            assert!((f64::from(*a) - e).abs() <= 1e-6 * e.abs().max(1.0), "{actual:?} vs {expected:?}");
        }
    }

    #[test]
    fn fedavgm_two_steps() {
        let spec = ServerOptimizerSpec::FedAvgM { learning_rate: 0.5, momentum: 0.5 };
        let mut optimizer = ServerOptimizer::new(spec, 2).unwrap();
        let mut global = [1.0f32, 2.0];
        // Step 1: m = Δ = [0.5, −1]; w = [1 + 0.25, 2 − 0.5].
        optimizer.step(&mut global, &[0.5, -1.0]).unwrap();
        assert_eq!(optimizer.first_moment(), [0.5, -1.0]);
        assert_eq!(global, [1.25, 1.5]);
        // Step 2: m = 0.5·[0.5, −1] + [1, 1] = [1.25, 0.5]; w = [1.25 + 0.625, 1.5 + 0.25].
        optimizer.step(&mut global, &[1.0, 1.0]).unwrap();
        assert_eq!(optimizer.first_moment(), [1.25, 0.5]);
        assert_eq!(global, [1.875, 1.75]);
        assert!(optimizer.second_moment().is_empty());
        assert_eq!(optimizer.steps(), 2);
    }

    #[test]
    fn fedavgm_without_momentum_is_fedavg() {
        let spec = ServerOptimizerSpec::FedAvgM { learning_rate: 1.0, momentum: 0.0 };
        let mut optimizer = ServerOptimizer::new(spec, 3).unwrap();
        let mut global = [1.0f32, -2.0, 0.5];
        optimizer.step(&mut global, &[0.25, 0.5, -0.5]).unwrap();
        optimizer.step(&mut global, &[0.25, 0.5, -0.5]).unwrap();
        assert_eq!(global, [1.5, -1.0, -0.5]);
    }

    #[test]
    fn fedadam_two_steps_without_bias_correction() {
        // β₁ = 0.5, β₂ = 0.75, τ = 1, η = 1.
        let spec = ServerOptimizerSpec::FedAdam {
            learning_rate: 1.0,
            beta_1: 0.5,
            beta_2: 0.75,
            tau: 1.0,
            bias_correction: false,
        };
        let mut optimizer = ServerOptimizer::new(spec, 2).unwrap();
        let mut global = [0.0f32, 0.0];
        // Step 1, Δ = [2, −4]: m = [1, −2], v = 0.25·[4, 16] = [1, 4], step = [1/(1+1), −2/(2+1)].
        optimizer.step(&mut global, &[2.0, -4.0]).unwrap();
        close(optimizer.first_moment(), &[1.0, -2.0]);
        close(optimizer.second_moment(), &[1.0, 4.0]);
        close_f32(&global, &[0.5, -2.0 / 3.0]);
        // Step 2, Δ = [0, 4]: m = [0.5, 1], v = [0.75, 3 + 4] = [0.75, 7],
        // step = [0.5/(√0.75 + 1), 1/(√7 + 1)].
        optimizer.step(&mut global, &[0.0, 4.0]).unwrap();
        close(optimizer.first_moment(), &[0.5, 1.0]);
        close(optimizer.second_moment(), &[0.75, 7.0]);
        close_f32(&global, &[0.5 + 0.5 / (0.75f64.sqrt() + 1.0), -2.0 / 3.0 + 1.0 / (7.0f64.sqrt() + 1.0)]);
    }

    #[test]
    fn fedadam_bias_correction_scales_the_rate() {
        let spec = ServerOptimizerSpec::FedAdam {
            learning_rate: 1.0,
            beta_1: 0.5,
            beta_2: 0.75,
            tau: 1.0,
            bias_correction: true,
        };
        let mut optimizer = ServerOptimizer::new(spec, 2).unwrap();
        let mut global = [0.0f32, 0.0];
        // t = 1: η₁ = √(1 − 0.75)/(1 − 0.5) = 1, the same first step as without correction.
        optimizer.step(&mut global, &[2.0, -4.0]).unwrap();
        close_f32(&global, &[0.5, -2.0 / 3.0]);
        // t = 2: η₂ = √(1 − 0.5625)/(1 − 0.25) = √0.4375/0.75; the moments are as without correction.
        optimizer.step(&mut global, &[0.0, 4.0]).unwrap();
        let rate = 0.4375f64.sqrt() / 0.75;
        close(optimizer.first_moment(), &[0.5, 1.0]);
        close(optimizer.second_moment(), &[0.75, 7.0]);
        close_f32(&global, &[0.5 + rate * 0.5 / (0.75f64.sqrt() + 1.0), -2.0 / 3.0 + rate / (7.0f64.sqrt() + 1.0)]);
    }

    #[test]
    fn fedyogi_two_steps() {
        let spec = ServerOptimizerSpec::FedYogi { learning_rate: 1.0, beta_1: 0.5, beta_2: 0.75, tau: 1.0 };
        let mut optimizer = ServerOptimizer::new(spec, 2).unwrap();
        let mut global = [0.0f32, 0.0];
        // Step 1, Δ = [2, −4]: m = [1, −2]; v = 0 − 0.25·Δ²·sign(0 − Δ²) = [1, 4]; as Adam's first step.
        optimizer.step(&mut global, &[2.0, -4.0]).unwrap();
        close(optimizer.first_moment(), &[1.0, -2.0]);
        close(optimizer.second_moment(), &[1.0, 4.0]);
        close_f32(&global, &[0.5, -2.0 / 3.0]);
        // Step 2, Δ = [0, 4]: m = [0.5, 1]. v₀: 1 − 0.25·0·sign(1) = 1. v₁: Δ² = 16 > 4, so 4 + 0.25·16 = 8
        // (Adam would give 7).
        optimizer.step(&mut global, &[0.0, 4.0]).unwrap();
        close(optimizer.first_moment(), &[0.5, 1.0]);
        close(optimizer.second_moment(), &[1.0, 8.0]);
        close_f32(&global, &[0.5 + 0.5 / 2.0, -2.0 / 3.0 + 1.0 / (8.0f64.sqrt() + 1.0)]);
        // Δ² < v shrinks v by (1 − β₂)Δ²: v₁ = 8 − 0.25·1 = 7.75; Δ² = v leaves it (sign 0).
        optimizer.step(&mut global, &[1.0, 1.0]).unwrap();
        close(optimizer.second_moment(), &[1.0, 7.75]);
    }

    #[test]
    fn fedadagrad_two_steps() {
        let spec = ServerOptimizerSpec::FedAdagrad { learning_rate: 0.5, beta_1: 0.0, tau: 1.0 };
        let mut optimizer = ServerOptimizer::new(spec, 2).unwrap();
        let mut global = [1.0f32, 1.0];
        // Step 1, Δ = [3, −1]: m = Δ, v = [9, 1]; w += 0.5·[3/(3+1), −1/(1+1)] = [0.375, −0.25].
        optimizer.step(&mut global, &[3.0, -1.0]).unwrap();
        close(optimizer.first_moment(), &[3.0, -1.0]);
        close(optimizer.second_moment(), &[9.0, 1.0]);
        assert_eq!(global, [1.375, 0.75]);
        // Step 2, Δ = [4, 0]: m = [4, 0], v = [25, 1]; w += 0.5·[4/(5+1), 0].
        optimizer.step(&mut global, &[4.0, 0.0]).unwrap();
        close(optimizer.first_moment(), &[4.0, 0.0]);
        close(optimizer.second_moment(), &[25.0, 1.0]);
        close_f32(&global, &[1.375 + 2.0 / 6.0, 0.75]);
    }

    #[test]
    fn fedadagrad_with_momentum() {
        let spec = ServerOptimizerSpec::FedAdagrad { learning_rate: 1.0, beta_1: 0.5, tau: 1.0 };
        let mut optimizer = ServerOptimizer::new(spec, 1).unwrap();
        let mut global = [0.0f32];
        // m = 0.5·2 = 1, v = 4: w = 1/3. Then m = 0.5 + 0.5·2 = 1.5, v = 8: w += 1.5/(√8 + 1).
        optimizer.step(&mut global, &[2.0]).unwrap();
        optimizer.step(&mut global, &[2.0]).unwrap();
        close(optimizer.first_moment(), &[1.5]);
        close(optimizer.second_moment(), &[8.0]);
        close_f32(&global, &[1.0 / 3.0 + 1.5 / (8.0f64.sqrt() + 1.0)]);
    }

    fn every_spec() -> [ServerOptimizerSpec; 4] {
        [
            ServerOptimizerSpec::FedAvgM { learning_rate: 0.7, momentum: 0.9 },
            ServerOptimizerSpec::FedAdam {
                learning_rate: 0.1,
                beta_1: 0.9,
                beta_2: 0.99,
                tau: 1e-9,
                bias_correction: true,
            },
            ServerOptimizerSpec::FedYogi { learning_rate: 0.01, beta_1: 0.9, beta_2: 0.99, tau: 1e-3 },
            ServerOptimizerSpec::FedAdagrad { learning_rate: 0.1, beta_1: 0.0, tau: 1e-9 },
        ]
    }

    #[test]
    fn steps_are_deterministic_and_the_state_round_trips() {
        let deltas: Vec<Vec<f32>> =
            (0..4).map(|round| (0..50).map(|i| ((i * 7 + round * 13) % 11) as f32 * 0.01 - 0.05).collect()).collect();
        for spec in every_spec() {
            let run = |stop_at: usize, resume: bool| {
                let mut optimizer = ServerOptimizer::new(spec, 50).unwrap();
                let mut global = vec![0.1f32; 50];
                for (round, delta) in deltas.iter().enumerate() {
                    if round == stop_at && resume {
                        // Persist and restore mid-study, as a coordinator restart would.
                        let saved = toml::to_string(&optimizer).unwrap();
                        optimizer = toml::from_str(&saved).unwrap();
                    }
                    optimizer.step(&mut global, delta).unwrap();
                }
                (global.iter().map(|v| v.to_bits()).collect::<Vec<_>>(), optimizer)
            };
            let (first, state) = run(0, false);
            let (second, _) = run(0, false);
            let (resumed, resumed_state) = run(2, true);
            assert_eq!(first, second, "{spec:?}");
            assert_eq!(first, resumed, "{spec:?}");
            assert_eq!(state, resumed_state, "{spec:?}");
        }
    }

    #[test]
    fn refusals_change_nothing() {
        let spec = every_spec()[1];
        let mut optimizer = ServerOptimizer::new(spec, 2).unwrap();
        let mut global = [1.0f32, 2.0];
        assert_eq!(
            optimizer.step(&mut global, &[1.0]).unwrap_err().to_string(),
            "invalid aggregated_delta: the optimiser holds 2 parameters, got 1"
        );
        assert_eq!(
            optimizer.step(&mut [0.0; 3], &[1.0, 2.0]).unwrap_err().to_string(),
            "invalid global: the optimiser holds 2 parameters, got 3"
        );
        assert_eq!(
            optimizer.step(&mut global, &[1.0, f32::NAN]).unwrap_err().to_string(),
            "invalid aggregated_delta: value NaN at index 1 is not finite"
        );
        assert_eq!(global, [1.0, 2.0]);
        assert_eq!(optimizer.steps(), 0);
        assert_eq!(optimizer.first_moment(), [0.0, 0.0]);
    }

    #[test]
    fn invalid_hyper_parameters_are_refused() {
        for (spec, expected) in [
            (
                ServerOptimizerSpec::FedAvgM { learning_rate: -1.0, momentum: 0.9 },
                "invalid server_learning_rate: must be finite and positive, got -1",
            ),
            (
                ServerOptimizerSpec::FedAvgM { learning_rate: 1.0, momentum: 1.0 },
                "invalid server_momentum: must lie in [0, 1), got 1",
            ),
            (
                ServerOptimizerSpec::FedAdam {
                    learning_rate: 0.1,
                    beta_1: 0.9,
                    beta_2: f64::NAN,
                    tau: 1e-9,
                    bias_correction: true,
                },
                "invalid server_beta_2: must lie in [0, 1), got NaN",
            ),
            (
                ServerOptimizerSpec::FedYogi { learning_rate: 0.1, beta_1: 0.9, beta_2: 0.99, tau: 0.0 },
                "invalid server_tau: must be finite and positive, got 0",
            ),
            (
                ServerOptimizerSpec::FedAdagrad { learning_rate: 0.1, beta_1: -0.1, tau: 1e-9 },
                "invalid server_beta_1: must lie in [0, 1), got -0.1",
            ),
        ] {
            assert_eq!(ServerOptimizer::new(spec, 1).unwrap_err().to_string(), expected);
        }
    }

    #[test]
    fn a_state_for_another_model_is_refused() {
        let mut optimizer = ServerOptimizer::new(every_spec()[2], 2).unwrap();
        let mut text = toml::to_string(&optimizer).unwrap();
        text = text.replace("second_moment = [0.0, 0.0]", "second_moment = [0.0]");
        optimizer = toml::from_str(&text).unwrap();
        assert_eq!(
            optimizer.step(&mut [0.0; 2], &[1.0, 1.0]).unwrap_err().to_string(),
            "server optimiser state is corrupt: 2 first and 1 second moments"
        );
    }
}
