//! Privacy-loss-distribution (PLD) accounting for the (Poisson-subsampled) Gaussian mechanism, after `dp_accounting` 0.6.
//!
//! Each event's privacy loss distribution is discretised on a grid of width [`DEFAULT_DISCRETIZATION`] with the
//! pessimistic "connect the dots" algorithm (Doroshenko et al. 2022, Algorithm 1), exactly as `dp_accounting`'s
//! `from_gaussian_mechanism` does by default: the noise is truncated where its log tail mass reaches
//! [`LOG_MASS_TRUNCATION_BOUND`], the hockey-stick divergence δ(ε) is evaluated at every grid point between the
//! extreme losses, and the probability masses are read off its second differences. Subsampling makes the "add" and
//! "remove" neighbouring relations differ, so both distributions are kept and ε is the worse of the two.
//!
//! `steps` identical events compose by raising the FFT of the mass function to the `steps`-th power, after cutting
//! the result to the Chernoff-bound window that holds all but [`TAIL_MASS_TRUNCATION`] of the mass (`dp_accounting`'s
//! `self_convolve`); different events compose by FFT convolution. Truncated mass is counted as infinite loss, so every
//! approximation errs on the side of a larger ε.

use std::f64::consts::{LN_2, PI, SQRT_2};

use crate::accountant::{Accountant, Poison};
use crate::special::{log_add, log_erfc};
use crate::{Error, Result};

/// The width of the privacy-loss grid, `dp_accounting`'s default `value_discretization_interval`.
pub const DEFAULT_DISCRETIZATION: f64 = 1e-4;

/// The natural log of the noise mass left out of each event's distribution (`dp_accounting`'s
/// `log_mass_truncation_bound`); that mass is counted as infinite privacy loss.
pub const LOG_MASS_TRUNCATION_BOUND: f64 = -50.0;

/// The probability mass each composition may cut from the tails of the result (`dp_accounting`'s
/// `tail_mass_truncation`); it too is counted as infinite privacy loss.
pub const TAIL_MASS_TRUNCATION: f64 = 1e-15;

/// A privacy-loss-distribution accountant for Gaussian releases, tighter than [`crate::RdpAccountant`].
///
/// It follows `dp_accounting` 0.6's `PLDAccountant` with its defaults (add-or-remove adjacency, grid width
/// [`DEFAULT_DISCRETIZATION`], pessimistic connect-the-dots discretisation), so the ε it reports is an upper bound
/// on the true ε up to the truncated tail masses, and agrees with `dp_accounting` to well within 1%.
///
/// # Invalid events
///
/// As with [`crate::RdpAccountant`], an event with an invalid sampling rate or noise multiplier *poisons* the
/// accountant: every later [`Accountant::epsilon`] fails with [`Error::AccountantPoisoned`]. Use
/// [`PldAccountant::try_compose_poisson_gaussian`] and [`PldAccountant::try_compose_gaussian`] to be told at once.
///
/// ```
/// use pdc_privacy::accountant::{Accountant, PldAccountant};
///
/// let mut accountant = PldAccountant::new();
/// accountant.compose_poisson_gaussian(0.01, 1.1, 1000);
/// let epsilon = accountant.epsilon(1e-5)?;
/// assert!((epsilon - 1.515).abs() < 0.01);
/// # Ok::<(), pdc_privacy::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct PldAccountant {
    remove: Pmf,
    add: Pmf,
    non_private: bool,
    poisoned: Poison,
}

impl PldAccountant {
    /// An empty accountant: nothing spent yet.
    pub fn new() -> Self {
        Self { remove: Pmf::identity(), add: Pmf::identity(), non_private: false, poisoned: Poison::default() }
    }

    /// Whether an invalid event was recorded through an infallible method (see "Invalid events").
    pub fn is_poisoned(&self) -> bool {
        self.poisoned.is_set()
    }

    /// Composes `steps` Poisson-subsampled Gaussian steps, or refuses invalid parameters without changing anything.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidSamplingRate`] unless `0 ≤ sampling_rate ≤ 1`; [`Error::InvalidNoiseMultiplier`] unless the
    /// noise multiplier is finite and non-negative (0 is allowed and means no privacy: ε becomes infinite).
    pub fn try_compose_poisson_gaussian(
        &mut self,
        sampling_rate: f64,
        noise_multiplier: f64,
        steps: u64,
    ) -> Result<()> {
        check_sampling_rate(sampling_rate)?;
        check_noise_multiplier(noise_multiplier)?;
        if steps == 0 || sampling_rate == 0.0 {
            return Ok(());
        }
        if noise_multiplier == 0.0 {
            self.non_private = true;
            return Ok(());
        }
        self.compose_event(noise_multiplier, sampling_rate, steps);
        Ok(())
    }

    /// Composes `count` releases of the (unsampled) Gaussian mechanism, or refuses an invalid noise multiplier.
    ///
    /// `count` releases with noise σ are one release with noise σ/√count, which is how they are accounted.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidNoiseMultiplier`] unless the noise multiplier is finite and non-negative.
    pub fn try_compose_gaussian(&mut self, noise_multiplier: f64, count: u64) -> Result<()> {
        check_noise_multiplier(noise_multiplier)?;
        if count == 0 {
            return Ok(());
        }
        if noise_multiplier == 0.0 {
            self.non_private = true;
            return Ok(());
        }
        self.compose_event(noise_multiplier / (count as f64).sqrt(), 1.0, 1);
        Ok(())
    }

    fn compose_event(&mut self, noise_multiplier: f64, sampling_rate: f64, steps: u64) {
        let remove = GaussianLoss { sigma: noise_multiplier, q: sampling_rate, adjacency: Adjacency::Remove };
        let remove_pmf = remove.connect_dots_pmf(DEFAULT_DISCRETIZATION).self_compose(steps);
        // Without subsampling the two relations give the same distribution (dp_accounting's symmetric PLD).
        let add_pmf = if sampling_rate == 1.0 {
            remove_pmf.clone()
        } else {
            let add = GaussianLoss { adjacency: Adjacency::Add, ..remove };
            add.connect_dots_pmf(DEFAULT_DISCRETIZATION).self_compose(steps)
        };
        self.remove = self.remove.compose(&remove_pmf);
        self.add = self.add.compose(&add_pmf);
    }
}

impl Default for PldAccountant {
    fn default() -> Self {
        Self::new()
    }
}

impl Accountant for PldAccountant {
    fn compose_poisson_gaussian(&mut self, sampling_rate: f64, noise_multiplier: f64, steps: u64) {
        let result = self.try_compose_poisson_gaussian(sampling_rate, noise_multiplier, steps);
        self.poisoned.record(result);
    }

    fn compose_gaussian(&mut self, noise_multiplier: f64, count: u64) {
        let result = self.try_compose_gaussian(noise_multiplier, count);
        self.poisoned.record(result);
    }

    fn epsilon(&self, delta: f64) -> Result<f64> {
        self.poisoned.check()?;
        if !(delta > 0.0 && delta < 1.0) {
            return Err(Error::InvalidDelta { delta });
        }
        if self.non_private {
            return Ok(f64::INFINITY);
        }
        Ok(self.remove.epsilon_for_delta(delta).max(self.add.epsilon_for_delta(delta)))
    }
}

fn check_sampling_rate(sampling_rate: f64) -> Result<()> {
    if (0.0..=1.0).contains(&sampling_rate) { Ok(()) } else { Err(Error::InvalidSamplingRate { sampling_rate }) }
}

fn check_noise_multiplier(noise_multiplier: f64) -> Result<()> {
    if noise_multiplier.is_finite() && noise_multiplier >= 0.0 {
        Ok(())
    } else {
        Err(Error::InvalidNoiseMultiplier { noise_multiplier })
    }
}

/// A discretised privacy loss distribution: `probs[i]` is the mass at loss `(lower + i) · DEFAULT_DISCRETIZATION`,
/// plus a mass at +∞.
#[derive(Debug, Clone, PartialEq)]
struct Pmf {
    lower: i64,
    probs: Vec<f64>,
    infinity_mass: f64,
}

impl Pmf {
    /// The distribution of a release that reveals nothing: all mass at loss 0.
    fn identity() -> Self {
        Self { lower: 0, probs: vec![1.0], infinity_mass: 0.0 }
    }

    /// The distribution of the sum of the losses of `self` and `other` (independent composition), tails cut.
    fn compose(&self, other: &Pmf) -> Pmf {
        let infinity_mass = self.infinity_mass + other.infinity_mass - self.infinity_mass * other.infinity_mass;
        if self.probs.len() == 1 || other.probs.len() == 1 {
            // Composing with a point mass only shifts and scales; no tails need cutting.
            let (point, spread) = if self.probs.len() == 1 { (self, other) } else { (other, self) };
            let probs = spread.probs.iter().map(|p| p * point.probs[0]).collect();
            return Pmf { lower: point.lower + spread.lower, probs, infinity_mass };
        }
        let probs = convolve(&self.probs, &other.probs);
        let (offset, probs, right_mass) = truncate_tails(probs, TAIL_MASS_TRUNCATION);
        Pmf { lower: self.lower + other.lower + offset as i64, probs, infinity_mass: infinity_mass + right_mass }
    }

    /// The distribution of `times` independent copies composed, as `dp_accounting`'s `DensePLDPmf.self_compose`.
    fn self_compose(&self, times: u64) -> Pmf {
        let (low, high) = self_convolve_bounds(&self.probs, times, TAIL_MASS_TRUNCATION);
        let output_len = (high - low + 1) as usize;
        let fft_len = output_len.max(self.probs.len()).next_power_of_two();
        let mut spectrum: Vec<Complex> =
            (0..fft_len).map(|i| Complex { re: self.probs.get(i).copied().unwrap_or(0.0), im: 0.0 }).collect();
        fft(&mut spectrum, false);
        for value in &mut spectrum {
            *value = value.powu(times);
        }
        fft(&mut spectrum, true);
        // The circular convolution wraps modulo fft_len; the window [low, high] fits in it without overlap.
        let probs =
            (0..output_len).map(|k| (spectrum[(k + low as usize) % fft_len].re / fft_len as f64).max(0.0)).collect();
        let infinity_mass = TAIL_MASS_TRUNCATION - (times as f64 * (-self.infinity_mass).ln_1p()).exp_m1();
        Pmf { lower: self.lower * times as i64 + low, probs, infinity_mass }
    }

    /// The smallest ε ≥ 0 with δ(ε) = m(∞) + Σ_{l > ε} p(l)(1 − e^{ε − l}) ≤ `delta` (`_get_epsilon_for_delta`).
    fn epsilon_for_delta(&self, delta: f64) -> f64 {
        if self.infinity_mass > delta {
            return f64::INFINITY;
        }
        let (mut mass_upper, mut mass_lower) = (self.infinity_mass, 0.0);
        for (i, &prob) in self.probs.iter().enumerate().rev() {
            let loss = (self.lower + i as i64) as f64 * DEFAULT_DISCRETIZATION;
            if mass_upper > delta && mass_lower > 0.0 && ((mass_upper - delta) / mass_lower).ln() >= loss {
                break;
            }
            mass_upper += prob;
            mass_lower += (-loss).exp() * prob;
            if mass_upper >= delta && mass_lower == 0.0 {
                return loss.max(0.0);
            }
        }
        if mass_upper <= mass_lower + delta {
            return 0.0;
        }
        ((mass_upper - delta) / mass_lower).ln()
    }
}

/// Which neighbouring relation a privacy loss is for: the second dataset has one record more (`Add`) or less.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Adjacency {
    Add,
    Remove,
}

/// The privacy loss of the Gaussian mechanism with noise `sigma` (sensitivity 1) under Poisson sampling at rate `q`
/// (`dp_accounting`'s `GaussianPrivacyLoss`).
#[derive(Debug, Clone, Copy)]
struct GaussianLoss {
    sigma: f64,
    q: f64,
    adjacency: Adjacency,
}

impl GaussianLoss {
    /// The privacy loss at output `x`, for the "remove" relation and before subsampling.
    fn loss_without_subsampling_remove(&self, x: f64) -> f64 {
        (-0.5 - x) / (self.sigma * self.sigma)
    }

    fn loss_remove(&self, x: f64) -> f64 {
        let loss = self.loss_without_subsampling_remove(x);
        if self.q == 1.0 { loss } else { log_add(self.q.ln() + loss, (-self.q).ln_1p()) }
    }

    /// The privacy loss at output `x`.
    fn loss(&self, x: f64) -> f64 {
        match self.adjacency {
            Adjacency::Remove => self.loss_remove(x),
            Adjacency::Add => -self.loss_remove(-x),
        }
    }

    fn noise_cdf(&self, x: f64) -> f64 {
        0.5 * crate::special::erfc(-x / (self.sigma * SQRT_2))
    }

    fn noise_log_cdf(&self, x: f64) -> f64 {
        log_erfc(-x / (self.sigma * SQRT_2)) - LN_2
    }

    /// The truncation points of the output range (`privacy_loss_tail`'s `lower_x_truncation`, `upper_x_truncation`).
    fn truncation(&self) -> (f64, f64) {
        let lower = self.sigma * standard_normal_quantile_log(LOG_MASS_TRUNCATION_BOUND - LN_2);
        match self.adjacency {
            Adjacency::Add => (lower, -lower + 1.0),
            Adjacency::Remove => (lower - 1.0, -lower),
        }
    }

    /// The hockey-stick divergence δ(ε) between the two output distributions (`get_delta_for_epsilon`).
    fn delta_for_epsilon(&self, epsilon: f64) -> f64 {
        let q = self.q;
        let log_1m_q = (-q).ln_1p();
        let (upper_cdf, lower_log_cdf) = match self.adjacency {
            Adjacency::Remove => {
                let x = if q == 1.0 {
                    -0.5 - epsilon * self.sigma * self.sigma
                } else if epsilon <= log_1m_q {
                    return (-epsilon.exp_m1()).clamp(0.0, 1.0);
                } else {
                    // log(1 + (e^ε − 1)/q): the loss before subsampling that gives ε after it.
                    let loss = log_sub(epsilon - q.ln(), (1.0 / q - 1.0).ln());
                    -0.5 - loss * self.sigma * self.sigma
                };
                let upper = if q == 1.0 {
                    self.noise_cdf(x + 1.0)
                } else {
                    (1.0 - q) * self.noise_cdf(x) + q * self.noise_cdf(x + 1.0)
                };
                (upper, self.noise_log_cdf(x))
            }
            Adjacency::Add => {
                let x = if q == 1.0 {
                    0.5 - epsilon * self.sigma * self.sigma
                } else if epsilon >= -log_1m_q {
                    return 0.0;
                } else {
                    let loss = -log_sub(-epsilon - q.ln(), (1.0 / q - 1.0).ln());
                    0.5 - loss * self.sigma * self.sigma
                };
                let lower = if q == 1.0 {
                    self.noise_log_cdf(x - 1.0)
                } else {
                    log_add(log_1m_q + self.noise_log_cdf(x), q.ln() + self.noise_log_cdf(x - 1.0))
                };
                (self.noise_cdf(x), lower)
            }
        };
        (upper_cdf - (epsilon + lower_log_cdf).exp()).clamp(0.0, 1.0)
    }

    /// The pessimistic connect-the-dots discretisation (`create_pmf_pessimistic_connect_dots_fixed_gap`).
    fn connect_dots_pmf(&self, discretization: f64) -> Pmf {
        let (lower_x, upper_x) = self.truncation();
        let epsilon_upper = self.loss(lower_x);
        let epsilon_lower = self.loss(upper_x);
        let rounded_upper = (epsilon_upper / discretization).ceil() as i64;
        let rounded_lower = (epsilon_lower / discretization).floor() as i64;
        let mut deltas: Vec<f64> =
            (rounded_lower..=rounded_upper).map(|i| self.delta_for_epsilon(i as f64 * discretization)).collect();
        if deltas.len() == 1 {
            return Pmf { lower: rounded_lower, probs: vec![1.0 - deltas[0]], infinity_mass: deltas[0] };
        }
        // δ(ε) is non-increasing; enforce it against rounding (numpy's minimum.accumulate).
        for i in 1..deltas.len() {
            deltas[i] = deltas[i].min(deltas[i - 1]);
        }
        let n = deltas.len();
        let expm1 = discretization.exp_m1();
        let exp = discretization.exp();
        let mut probs = vec![0.0; n];
        probs[0] = 1.0 - deltas[0] + (deltas[1] - deltas[0]) / expm1;
        for i in 1..n - 1 {
            probs[i] = ((deltas[i + 1] - deltas[i]) - (deltas[i] - deltas[i - 1]) * exp) / expm1;
        }
        probs[n - 1] = (deltas[n - 1] - deltas[n - 2]) / (-discretization).exp_m1();
        for prob in &mut probs {
            *prob = prob.max(0.0);
        }
        Pmf { lower: rounded_lower, probs, infinity_mass: deltas[n - 1] }
    }
}

/// `ln(eᵃ − eᵇ)` for `a > b`.
fn log_sub(a: f64, b: f64) -> f64 {
    a + (-(b - a).exp()).ln_1p()
}

/// The standard normal quantile at probability `e^log_p`, by bisection on `ln Φ` (accurate to the last bits).
fn standard_normal_quantile_log(log_p: f64) -> f64 {
    let log_cdf = |z: f64| log_erfc(-z / SQRT_2) - LN_2;
    let (mut low, mut high) = (-40.0_f64, 40.0_f64);
    for _ in 0..200 {
        let middle = 0.5 * (low + high);
        if middle == low || middle == high {
            break;
        }
        if log_cdf(middle) < log_p {
            low = middle;
        } else {
            high = middle;
        }
    }
    0.5 * (low + high)
}

/// The window `[low, high]` of indices of `probs`'s `times`-fold self-convolution outside which at most
/// `tail_mass` lies, by Chernoff bounds at a few orders (`compute_self_convolve_bounds`).
fn self_convolve_bounds(probs: &[f64], times: u64, tail_mass: f64) -> (i64, i64) {
    let len = probs.len();
    let mut high = (len as i64 - 1) * times as i64;
    let mut low = 0_i64;
    let orders = (-20..0).chain(1..21).map(|k| k as f64 / len as f64);
    for order in orders {
        let max = (0..len).filter(|&i| probs[i] > 0.0).map(|i| i as f64 * order).fold(f64::NEG_INFINITY, f64::max);
        let sum: f64 = probs.iter().enumerate().map(|(i, &p)| p * (i as f64 * order - max).exp()).sum();
        let log_mgf = max + sum.ln();
        let bound = (times as f64 * log_mgf + (2.0 / tail_mass).ln()) / order;
        if !bound.is_finite() {
            continue;
        }
        if order > 0.0 {
            high = high.min(bound.ceil() as i64);
        } else {
            low = low.max(bound.floor() as i64);
        }
    }
    (low, high)
}

/// Cuts the longest prefix and suffix of `probs` that each hold at most `tail_mass / 2`; the prefix's mass moves
/// to the first kept entry (rounding losses up), the suffix's is returned to be counted as infinite loss.
fn truncate_tails(probs: Vec<f64>, tail_mass: f64) -> (usize, Vec<f64>, f64) {
    let prefix_len = |iter: &mut dyn Iterator<Item = f64>| {
        let mut sum = 0.0;
        let mut count = 0;
        for value in iter {
            sum += value;
            if sum > tail_mass / 2.0 {
                break;
            }
            count += 1;
        }
        count
    };
    let left = prefix_len(&mut probs.iter().copied());
    let right = (probs.len() - prefix_len(&mut probs.iter().rev().copied())).max(left + 1);
    let left_mass: f64 = probs[..left].iter().sum();
    let right_mass: f64 = probs[right..].iter().sum();
    let mut kept = probs[left..right].to_vec();
    kept[0] += left_mass;
    (left, kept, right_mass)
}

/// The linear convolution of `a` and `b`, directly when one is short and by FFT otherwise.
fn convolve(a: &[f64], b: &[f64]) -> Vec<f64> {
    let out_len = a.len() + b.len() - 1;
    if a.len().min(b.len()) <= 64 {
        let mut out = vec![0.0; out_len];
        for (i, &x) in a.iter().enumerate() {
            for (j, &y) in b.iter().enumerate() {
                out[i + j] += x * y;
            }
        }
        return out;
    }
    let fft_len = out_len.next_power_of_two();
    let to_complex = |v: &[f64]| -> Vec<Complex> {
        (0..fft_len).map(|i| Complex { re: v.get(i).copied().unwrap_or(0.0), im: 0.0 }).collect()
    };
    let (mut fa, mut fb) = (to_complex(a), to_complex(b));
    fft(&mut fa, false);
    fft(&mut fb, false);
    for (x, y) in fa.iter_mut().zip(&fb) {
        *x = x.mul(*y);
    }
    fft(&mut fa, true);
    fa[..out_len].iter().map(|z| (z.re / fft_len as f64).max(0.0)).collect()
}

#[derive(Debug, Clone, Copy, PartialEq)]
struct Complex {
    re: f64,
    im: f64,
}

impl Complex {
    fn mul(self, other: Complex) -> Complex {
        Complex { re: self.re * other.re - self.im * other.im, im: self.re * other.im + self.im * other.re }
    }

    /// `self^n` by repeated squaring.
    fn powu(self, mut n: u64) -> Complex {
        let mut result = Complex { re: 1.0, im: 0.0 };
        let mut base = self;
        while n > 0 {
            if n & 1 == 1 {
                result = result.mul(base);
            }
            base = base.mul(base);
            n >>= 1;
        }
        result
    }
}

/// In-place iterative radix-2 FFT (unnormalised; `inverse` flips the sign of the exponent). `data.len()` must be a
/// power of two.
fn fft(data: &mut [Complex], inverse: bool) {
    let n = data.len();
    if n <= 1 {
        return;
    }
    let mut j = 0;
    for i in 1..n {
        let mut bit = n >> 1;
        while j & bit != 0 {
            j ^= bit;
            bit >>= 1;
        }
        j |= bit;
        if i < j {
            data.swap(i, j);
        }
    }
    // Twiddles computed directly (not by recurrence) so that rounding errors do not accumulate.
    let sign = if inverse { 1.0 } else { -1.0 };
    let twiddles: Vec<Complex> = (0..n / 2)
        .map(|k| {
            let (sin, cos) = (sign * 2.0 * PI * k as f64 / n as f64).sin_cos();
            Complex { re: cos, im: sin }
        })
        .collect();
    let mut len = 2;
    while len <= n {
        let stride = n / len;
        for start in (0..n).step_by(len) {
            for k in 0..len / 2 {
                let w = twiddles[k * stride];
                let u = data[start + k];
                let v = data[start + k + len / 2].mul(w);
                data[start + k] = Complex { re: u.re + v.re, im: u.im + v.im };
                data[start + k + len / 2] = Complex { re: u.re - v.re, im: u.im - v.im };
            }
        }
        len <<= 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn epsilon(q: f64, sigma: f64, steps: u64, delta: f64) -> f64 {
        let mut accountant = PldAccountant::new();
        accountant.try_compose_poisson_gaussian(q, sigma, steps).unwrap();
        accountant.epsilon(delta).unwrap()
    }

    fn assert_close(got: f64, expected: f64, what: &str) {
        assert!((got - expected).abs() <= 1e-6 * expected, "{what}: {got} vs dp_accounting's {expected}");
    }

    #[test]
    fn poisson_gaussian_matches_dp_accounting() {
        // dp_accounting 0.6.0: PLDAccountant() composed with PoissonSampledDpEvent(q, GaussianDpEvent(σ)) `steps`
        // times (GaussianDpEvent(σ) for q = 1), get_epsilon(1e-5). We agree to about 1e-9 relative.
        for (q, sigma, steps, expected) in [
            (0.01, 1.1, 1000, 1.5153702482034066),
            (0.01, 4.0, 10000, 0.9469993059852784),
            (0.1, 1.0, 100, 7.046602876945895),
            (1.0, 1.0, 1, 4.3771781000249295),
            (0.01, 1.1, 1, 0.1422907005976454),
            (0.5, 2.0, 10, 3.958995606031652),
        ] {
            assert_close(epsilon(q, sigma, steps, 1e-5), expected, &format!("q = {q}, σ = {sigma}, {steps} steps"));
        }
    }

    #[test]
    fn gaussian_releases_match_dp_accounting() {
        // GaussianDpEvent(2.0) composed 50 times: one release at σ = 2/√50.
        let mut accountant = PldAccountant::new();
        accountant.try_compose_gaussian(2.0, 50).unwrap();
        assert_close(accountant.epsilon(1e-5).unwrap(), 20.675508047742518, "Gaussian σ = 2, 50 releases");
    }

    #[test]
    fn different_events_compose_as_in_dp_accounting() {
        let mut accountant = PldAccountant::new();
        accountant.compose_poisson_gaussian(0.01, 1.1, 500);
        accountant.compose_poisson_gaussian(0.1, 2.0, 50);
        accountant.compose_gaussian(5.0, 1);
        assert_close(accountant.epsilon(1e-5).unwrap(), 2.1300354561796078, "mixed events at δ = 1e-5");
        assert_close(accountant.epsilon(1e-6).unwrap(), 2.437786796594876, "mixed events at δ = 1e-6");
    }

    #[test]
    fn pld_is_tighter_than_rdp() {
        let mut rdp = crate::RdpAccountant::new();
        rdp.compose_poisson_gaussian(0.01, 1.1, 1000);
        assert!(epsilon(0.01, 1.1, 1000, 1e-5) < rdp.epsilon(1e-5).unwrap());
    }

    #[test]
    fn nothing_recorded_spends_nothing() {
        let mut accountant = PldAccountant::new();
        assert_eq!(accountant.epsilon(1e-5), Ok(0.0));
        accountant.compose_poisson_gaussian(0.0, 1.0, 100);
        accountant.compose_poisson_gaussian(0.5, 1.0, 0);
        accountant.compose_gaussian(1.0, 0);
        assert_eq!(accountant.epsilon(1e-5), Ok(0.0));
    }

    #[test]
    fn a_release_without_noise_has_infinite_epsilon() {
        let mut accountant = PldAccountant::new();
        accountant.compose_poisson_gaussian(0.01, 0.0, 10);
        assert_eq!(accountant.epsilon(1e-5), Ok(f64::INFINITY));
        assert!(!accountant.is_poisoned());
        let mut accountant = PldAccountant::new();
        accountant.compose_gaussian(0.0, 1);
        assert_eq!(accountant.epsilon(1e-5), Ok(f64::INFINITY));
    }

    #[test]
    fn invalid_events_poison_the_accountant() {
        for (q, sigma, error) in [
            (1.5, 1.0, Error::InvalidSamplingRate { sampling_rate: 1.5 }),
            (-0.1, 1.0, Error::InvalidSamplingRate { sampling_rate: -0.1 }),
            (0.1, -1.0, Error::InvalidNoiseMultiplier { noise_multiplier: -1.0 }),
            (0.1, f64::INFINITY, Error::InvalidNoiseMultiplier { noise_multiplier: f64::INFINITY }),
        ] {
            let mut accountant = PldAccountant::new();
            assert_eq!(accountant.try_compose_poisson_gaussian(q, sigma, 10), Err(error.clone()));
            assert_eq!(accountant, PldAccountant::new(), "a refused try_ call must change nothing");
            accountant.compose_poisson_gaussian(q, sigma, 10);
            accountant.compose_poisson_gaussian(0.01, 1.0, 10);
            assert!(accountant.is_poisoned());
            assert_eq!(accountant.epsilon(1e-5), Err(Error::AccountantPoisoned { cause: Box::new(error) }));
        }
        let mut accountant = PldAccountant::new();
        accountant.try_compose_poisson_gaussian(f64::NAN, 1.0, 1).unwrap_err();
        accountant.compose_gaussian(f64::NAN, 1);
        assert!(matches!(accountant.epsilon(1e-5), Err(Error::AccountantPoisoned { .. })));
    }

    #[test]
    fn delta_must_be_a_probability() {
        let accountant = PldAccountant::new();
        for delta in [0.0, 1.0, -1e-5, f64::NAN] {
            assert!(matches!(accountant.epsilon(delta), Err(Error::InvalidDelta { .. })), "δ = {delta}");
        }
    }

    #[test]
    fn fft_convolution_matches_direct_convolution() {
        let a: Vec<f64> = (0..100).map(|i| ((i * 7 % 13) as f64) / 600.0).collect();
        let b: Vec<f64> = (0..80).map(|i| ((i * 5 % 11) as f64) / 400.0).collect();
        let by_fft = convolve(&a, &b);
        let mut direct = vec![0.0; a.len() + b.len() - 1];
        for (i, x) in a.iter().enumerate() {
            for (j, y) in b.iter().enumerate() {
                direct[i + j] += x * y;
            }
        }
        for (x, y) in by_fft.iter().zip(&direct) {
            assert!((x - y).abs() < 1e-14, "{x} vs {y}");
        }
    }

    #[test]
    fn the_truncation_point_is_the_normal_quantile() {
        // scipy.stats.norm.ppf(0.5 * exp(-50)).
        let z = standard_normal_quantile_log(LOG_MASS_TRUNCATION_BOUND - LN_2);
        assert!((z - -9.745474864965935).abs() < 1e-9, "{z}");
    }
}
