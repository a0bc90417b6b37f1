//! Contribution valuation: how much each PDC's update was worth to a round, so the round's reward budget can be split.
//!
//! A *game* is a value function `v` over coalitions of participants `0..n`, passed as sorted member indices (for
//! example the validation accuracy of the model aggregated from just those participants' updates). Three valuations
//! are offered, from most to least expensive:
//!
//! * [`exact_shapley`] / [`try_exact_shapley`]: the Shapley value, evaluating all 2ⁿ coalitions once each;
//! * [`gtg_shapley`]: GTG-Shapley (Liu et al. 2022), a truncated, guided Monte Carlo estimate of the Shapley value
//!   for rounds with too many participants for the exact form ([`gtg_shapley_batched`] evaluates several
//!   permutations' coalitions at once, for parallel evaluation, with the same result);
//! * [`leave_one_out`]: v(N) − v(N∖{i}), n + 1 evaluations, which misses credit that is shared (two hospitals with
//!   the same data each get nothing).
//!
//! [`split_rewards`] turns values into a split of the budget. Everything here is pure and deterministic: randomness
//! comes only from a seeded ChaCha8 generator.

use std::collections::{HashMap, HashSet};

use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;

use crate::{Error, Result};

/// The largest number of participants [`try_exact_shapley`] accepts unless its caller asks for more: 2¹⁰ = 1024
/// coalition evaluations, each of which may mean aggregating and evaluating a model.
pub const DEFAULT_EXACT_LIMIT: usize = 10;

/// The largest number of participants the exact Shapley value is ever computed for, whatever limit is asked for:
/// 2²⁰ coalitions already take 8 MiB of cached values and about a million evaluations.
pub const EXACT_HARD_LIMIT: usize = 20;

/// The exact Shapley value of the game `value` over participants `0..n`.
///
/// φᵢ = Σ_{S ⊆ N∖{i}} |S|!·(n − |S| − 1)!/n! · (v(S ∪ {i}) − v(S)). Each of the 2ⁿ coalitions is passed to `value`
/// exactly once, as its sorted member indices (the empty coalition included); `n = 0` gives an empty vector without
/// calling `value`. The values are efficient: they sum to v(N) − v(∅).
///
/// Use [`try_exact_shapley`] when `n` comes from outside.
///
/// # Panics
///
/// If `n` exceeds [`EXACT_HARD_LIMIT`].
///
/// # Examples
///
/// The glove game: participant 0 holds a left glove, 1 and 2 hold right gloves, and a coalition is worth 1 when it
/// can make a pair. The scarce left glove takes most of the credit.
///
/// ```
/// use pdc_coordinator::valuation::exact_shapley;
/// let values = exact_shapley(3, |coalition| {
///     let left = coalition.contains(&0);
///     let right = coalition.iter().any(|&member| member == 1 || member == 2);
///     if left && right { 1.0 } else { 0.0 }
/// });
/// let expected = [2.0 / 3.0, 1.0 / 6.0, 1.0 / 6.0];
/// for (value, expected) in values.iter().zip(expected) {
///     assert!((value - expected).abs() < 1e-12);
/// }
/// ```
pub fn exact_shapley(n: usize, value: impl Fn(&[usize]) -> f64) -> Vec<f64> {
    assert!(n <= EXACT_HARD_LIMIT, "exact Shapley over {n} participants exceeds the hard limit of {EXACT_HARD_LIMIT}");
    if n == 0 {
        return Vec::new();
    }
    let n_coalitions = 1usize << n;
    let mut members = Vec::with_capacity(n);
    let table: Vec<f64> = (0..n_coalitions)
        .map(|mask| {
            members.clear();
            // Ascending bit order gives the sorted member list the caller is promised.
            members.extend((0..n).filter(|&member| mask & (1 << member) != 0));
            value(&members)
        })
        .collect();
    shapley_from_table(n, &table)
}

/// [`exact_shapley`], refusing games with more than `limit` participants (or more than [`EXACT_HARD_LIMIT`], whatever
/// `limit` says) before evaluating anything, since the cost doubles with each participant.
///
/// Pass [`DEFAULT_EXACT_LIMIT`] unless the study says otherwise; fall back to [`gtg_shapley`] on refusal.
///
/// # Errors
///
/// [`Error::InvalidArgument`] on the field `participants` when `n` is over the limit.
///
/// # Examples
///
/// ```
/// use pdc_coordinator::valuation::{DEFAULT_EXACT_LIMIT, try_exact_shapley};
/// let additive = |coalition: &[usize]| coalition.iter().map(|&member| member as f64).sum::<f64>();
/// assert_eq!(try_exact_shapley(3, DEFAULT_EXACT_LIMIT, additive).unwrap(), vec![0.0, 1.0, 2.0]);
/// assert!(try_exact_shapley(11, DEFAULT_EXACT_LIMIT, additive).is_err());
/// ```
pub fn try_exact_shapley(n: usize, limit: usize, value: impl Fn(&[usize]) -> f64) -> Result<Vec<f64>> {
    let effective_limit = limit.min(EXACT_HARD_LIMIT);
    if n > effective_limit {
        let which = if limit > EXACT_HARD_LIMIT { "hard limit" } else { "limit" };
        return Err(Error::InvalidArgument {
            field: "participants",
            detail: format!(
                "exact Shapley over {n} participants needs 2^{n} coalition evaluations, above the {which} of \
                 {effective_limit} participants (2^{effective_limit} evaluations); use GTG-Shapley instead"
            ),
        });
    }
    Ok(exact_shapley(n, value))
}

/// Leave-one-out values: φᵢ = v(N) − v(N∖{i}), from n + 1 evaluations (none when `n = 0`).
///
/// Cheap, but not efficient (the values need not sum to v(N) − v(∅)) and blind to redundancy: when two participants
/// hold the same data, removing either costs nothing, so both get 0.
///
/// # Examples
///
/// ```
/// use pdc_coordinator::valuation::leave_one_out;
/// let weights = [1.0, 2.0, 3.0];
/// let values = leave_one_out(3, |coalition| coalition.iter().map(|&member| weights[member]).sum());
/// assert_eq!(values, vec![1.0, 2.0, 3.0]);
/// ```
pub fn leave_one_out(n: usize, value: impl Fn(&[usize]) -> f64) -> Vec<f64> {
    if n == 0 {
        return Vec::new();
    }
    let everyone: Vec<usize> = (0..n).collect();
    let grand = value(&everyone);
    let mut others = Vec::with_capacity(n - 1);
    (0..n)
        .map(|left_out| {
            others.clear();
            others.extend((0..n).filter(|&member| member != left_out));
            grand - value(&others)
        })
        .collect()
}

/// Settings of [`gtg_shapley`]. The two truncation thresholds are in the units of the value function (e.g. accuracy).
#[derive(Debug, Clone, PartialEq)]
pub struct GtgConfig {
    /// Seed of the ChaCha8 generator that shuffles the permutations.
    pub seed: u64,
    /// The most permutations sampled, converged or not.
    pub max_permutations: usize,
    /// Between-round truncation: when |v(N) − v(∅)| is at most this, the round changed nothing worth valuing and all
    /// values are 0 after just those two evaluations.
    pub eps_between_round: f64,
    /// Within-round truncation: while scanning a permutation, once |v(N) − v(prefix)| is at most this the remaining
    /// participants' marginal contributions are taken as 0 and not evaluated.
    pub eps_within_round: f64,
    /// Convergence: the largest relative change of the estimates after one permutation that counts as settled (see
    /// [`gtg_shapley`] for how it is measured).
    pub convergence_tolerance: f64,
    /// Convergence: how many consecutive settled permutations end the sampling.
    pub convergence_window: usize,
}

impl Default for GtgConfig {
    /// Seed 0; 1e-3 for both truncations, which suits values on an accuracy scale of 0 to 1 (a tenth of a percentage
    /// point is below what a validation set of a few thousand records can resolve); a 5 % tolerance held over 10
    /// permutations; at most 500 permutations.
    fn default() -> Self {
        Self {
            seed: 0,
            max_permutations: 500,
            eps_between_round: 1e-3,
            eps_within_round: 1e-3,
            convergence_tolerance: 0.05,
            convergence_window: 10,
        }
    }
}

/// What [`gtg_shapley`] found, and what it cost.
#[derive(Debug, Clone, PartialEq)]
pub struct GtgOutcome {
    /// The estimated Shapley value of each participant.
    pub values: Vec<f64>,
    /// How many distinct coalitions were evaluated (v(∅) and v(N) included); repeated coalitions are cached.
    pub evaluations: usize,
    /// How many permutations were sampled.
    pub permutations: usize,
    /// Whether between-round truncation applied, so that every value is 0 without sampling.
    pub truncated: bool,
}

/// GTG-Shapley (Liu, Chen, Cui, Yu, Ye, 2022): a Monte Carlo estimate of the Shapley value that saves evaluations by
/// truncation and guided sampling.
///
/// * **Between-round truncation**: v(∅) and v(N) are evaluated first; if they differ by at most
///   [`GtgConfig::eps_between_round`], every value is 0.
/// * **Guided sampling**: permutation k (from 0) puts participant k mod n first and shuffles the rest with the seeded
///   generator, so every participant is seen early in a permutation, where marginal contributions are largest and
///   most informative.
/// * **Within-round truncation**: each permutation is scanned prefix by prefix; once the prefix is within
///   [`GtgConfig::eps_within_round`] of v(N), the remaining marginals are taken as 0 without evaluation.
/// * **Caching**: each distinct coalition is evaluated once, whatever the number of permutations it appears in.
///
/// The estimate is the running mean of the marginals. After each permutation its change is measured as
/// Σᵢ|Δφᵢ| / Σᵢ|φᵢ| — the mean absolute change relative to the mean absolute value, which unlike a per-participant
/// ratio stays finite for participants whose value is near 0. Sampling stops once that change has stayed below
/// [`GtgConfig::convergence_tolerance`] for [`GtgConfig::convergence_window`] consecutive permutations, but never
/// before the first n permutations, so that every participant has been placed first once; or at
/// [`GtgConfig::max_permutations`].
///
/// `n = 0` gives no values and evaluates nothing.
///
/// # Examples
///
/// ```
/// use pdc_coordinator::valuation::{GtgConfig, gtg_shapley};
/// let weights = [0.1, 0.2, 0.3];
/// let outcome = gtg_shapley(3, |coalition| coalition.iter().map(|&member| weights[member]).sum(), &GtgConfig::default());
/// // In an additive game every permutation gives the exact values.
/// for (value, weight) in outcome.values.iter().zip(weights) {
///     assert!((value - weight).abs() < 1e-12);
/// }
/// assert!(!outcome.truncated);
/// ```
pub fn gtg_shapley(n: usize, value: impl Fn(&[usize]) -> f64, config: &GtgConfig) -> GtgOutcome {
    let evaluate = |batch: &[Vec<usize>]| batch.iter().map(|coalition| value(coalition)).collect();
    gtg_shapley_batched(n, evaluate, config, 1)
}

/// [`gtg_shapley`] scanning `group` permutations in lockstep, so that their next prefixes can be evaluated together
/// (in parallel, by the caller): `evaluate` receives batches of distinct, not yet evaluated coalitions (sorted
/// member indices) and returns their values in the same order.
///
/// The values, permutations and truncation are exactly [`gtg_shapley`]'s for any `group`: the permutations are
/// drawn from the generator in the same order, each is scanned and truncated on its own, and the estimates are
/// updated permutation by permutation with the same stopping rule. Only the evaluations differ: when sampling stops
/// inside a group, the coalitions already evaluated for the rest of the group (at most `group − 1` permutations'
/// worth) are counted but their marginals are not used. Keep `group` fixed (not the number of cores) where the set of
/// evaluated coalitions is recorded, so that it is the same on every machine. A `group` of 0 counts as 1.
///
/// # Panics
///
/// If `evaluate` returns a different number of values than it was given coalitions.
///
/// # Examples
///
/// ```
/// use pdc_coordinator::valuation::{GtgConfig, gtg_shapley, gtg_shapley_batched};
/// let value = |coalition: &[usize]| (coalition.len() as f64).sqrt() + coalition.first().map_or(0.0, |&m| m as f64);
/// let config = GtgConfig { eps_within_round: 0.0, ..GtgConfig::default() };
/// let batched = gtg_shapley_batched(6, |batch| batch.iter().map(|c| value(c)).collect(), &config, 4);
/// assert_eq!(batched.values, gtg_shapley(6, value, &config).values);
/// ```
pub fn gtg_shapley_batched(
    n: usize,
    mut evaluate: impl FnMut(&[Vec<usize>]) -> Vec<f64>,
    config: &GtgConfig,
    group: usize,
) -> GtgOutcome {
    if n == 0 {
        return GtgOutcome { values: Vec::new(), evaluations: 0, permutations: 0, truncated: false };
    }
    let group = group.max(1);
    let mut game = BatchCache::new(n);
    let everyone: Vec<usize> = (0..n).collect();
    game.fetch(vec![Vec::new(), everyone.clone()], &mut evaluate);
    let empty_value = game.value(&[]);
    let grand_value = game.value(&everyone);
    let mut values = vec![0.0; n];
    if (grand_value - empty_value).abs() <= config.eps_between_round {
        return GtgOutcome { values, evaluations: game.evaluations(), permutations: 0, truncated: true };
    }

    let mut rng = ChaCha8Rng::seed_from_u64(config.seed);
    let mut scans: Vec<Scan> = Vec::with_capacity(group);
    let mut settled_streak = 0;
    let mut permutations = 0;
    'sampling: while permutations < config.max_permutations {
        scans.clear();
        for k in permutations..permutations + group.min(config.max_permutations - permutations) {
            let first = k % n;
            let mut order = Vec::with_capacity(n);
            order.push(first);
            order.extend((0..n).filter(|&member| member != first));
            order[1..].shuffle(&mut rng);
            scans.push(Scan::new(order, empty_value));
        }
        loop {
            let mut requests = Vec::new();
            for scan in scans.iter_mut().filter(|scan| !scan.done) {
                if scan.position == n || (grand_value - scan.previous).abs() <= config.eps_within_round {
                    // Truncated (or complete): the prefix already does as well as everyone, so later marginals
                    // stay 0.
                    scan.done = true;
                    continue;
                }
                // Kept sorted by insertion, since the value function is promised sorted coalitions.
                let member = scan.order[scan.position];
                let at = scan.prefix.partition_point(|&other| other < member);
                scan.prefix.insert(at, member);
                requests.push(scan.prefix.clone());
            }
            if requests.is_empty() {
                break;
            }
            game.fetch(requests, &mut evaluate);
            for scan in scans.iter_mut().filter(|scan| !scan.done) {
                let member = scan.order[scan.position];
                let current = game.value(&scan.prefix);
                scan.marginals[member] = current - scan.previous;
                scan.previous = current;
                scan.position += 1;
            }
        }

        for scan in &scans {
            permutations += 1;
            let weight = 1.0 / permutations as f64;
            let mut change = 0.0;
            let mut magnitude = 0.0;
            for (estimate, marginal) in values.iter_mut().zip(&scan.marginals) {
                let step = (marginal - *estimate) * weight;
                *estimate += step;
                change += step.abs();
                magnitude += estimate.abs();
            }
            let relative_change = if change == 0.0 { 0.0 } else { change / magnitude };
            // The first permutation moves the estimates from nothing, so it can never count as settled.
            if permutations > 1 && relative_change < config.convergence_tolerance {
                settled_streak += 1;
            } else {
                settled_streak = 0;
            }
            if permutations >= n && settled_streak >= config.convergence_window {
                break 'sampling;
            }
        }
    }
    GtgOutcome { values, evaluations: game.evaluations(), permutations, truncated: false }
}

/// One permutation being scanned by [`gtg_shapley_batched`].
struct Scan {
    order: Vec<usize>,
    /// How many members of `order` are in `prefix`.
    position: usize,
    /// The first `position` members of `order`, sorted.
    prefix: Vec<usize>,
    /// v(prefix).
    previous: f64,
    marginals: Vec<f64>,
    done: bool,
}

impl Scan {
    fn new(order: Vec<usize>, empty_value: f64) -> Self {
        let n = order.len();
        Self {
            order,
            position: 0,
            prefix: Vec::with_capacity(n),
            previous: empty_value,
            marginals: vec![0.0; n],
            done: false,
        }
    }
}

/// Splits `budget` in proportion to the positive values: rewardᵢ = B·max(φᵢ, 0) / Σⱼ max(φⱼ, 0).
///
/// Participants with a negative value (they made the model worse) get nothing rather than a charge, so no reward is
/// ever negative. Non-finite values count as 0, since they come from a failed evaluation, not a contribution. When no
/// value is positive, or `budget` is not a positive finite number, every reward is 0 and nothing is paid out: the
/// caller carries the budget over to the next round. Otherwise the rewards sum to `budget` up to rounding.
///
/// # Examples
///
/// ```
/// use pdc_coordinator::valuation::split_rewards;
/// assert_eq!(split_rewards(100.0, &[3.0, 1.0, -2.0]), vec![75.0, 25.0, 0.0]);
/// assert_eq!(split_rewards(100.0, &[-1.0, 0.0]), vec![0.0, 0.0]);
/// ```
pub fn split_rewards(budget: f64, values: &[f64]) -> Vec<f64> {
    let payable = |value: f64| if value.is_finite() { value.max(0.0) } else { 0.0 };
    let total: f64 = values.iter().map(|&value| payable(value)).sum();
    if !(budget > 0.0 && budget.is_finite() && total > 0.0 && total.is_finite()) {
        return vec![0.0; values.len()];
    }
    values.iter().map(|&value| budget * (payable(value) / total)).collect()
}

/// Combines a table of all 2ⁿ coalition values, indexed by member bitmask, into Shapley values.
fn shapley_from_table(n: usize, table: &[f64]) -> Vec<f64> {
    // |S|!(n−|S|−1)!/n! = 1 / (n·C(n−1, |S|)); the binomial is built by the multiplicative recurrence, which is exact
    // in f64 for n ≤ EXACT_HARD_LIMIT, so no factorial is ever formed.
    let mut weights = Vec::with_capacity(n);
    let mut binomial = 1.0_f64;
    for size in 0..n {
        weights.push(1.0 / (n as f64 * binomial));
        binomial = binomial * (n - 1 - size) as f64 / (size + 1) as f64;
    }
    // Marginals are summed per coalition size first, then weighted once per size, which is both cheaper and adds
    // fewer rounding errors than weighting every term.
    let mut by_size = vec![0.0; n];
    (0..n)
        .map(|player| {
            let bit = 1usize << player;
            by_size.fill(0.0);
            for (mask, &without) in table.iter().enumerate() {
                if mask & bit == 0 {
                    by_size[mask.count_ones() as usize] += table[mask | bit] - without;
                }
            }
            by_size.iter().zip(&weights).map(|(sum, weight)| sum * weight).sum()
        })
        .collect()
}

/// Coalition values keyed by the member bitset, filled by batches; its size is the number of distinct evaluations.
struct BatchCache {
    values: HashMap<Vec<u64>, f64>,
    words: usize,
}

impl BatchCache {
    fn new(n: usize) -> Self {
        Self { values: HashMap::new(), words: n.div_ceil(64) }
    }

    fn key(&self, coalition: &[usize]) -> Vec<u64> {
        let mut key = vec![0u64; self.words];
        for &member in coalition {
            key[member / 64] |= 1 << (member % 64);
        }
        key
    }

    /// Evaluates, in one call of `evaluate`, those of `coalitions` (sorted) not evaluated yet, each once.
    fn fetch(&mut self, coalitions: Vec<Vec<usize>>, evaluate: &mut impl FnMut(&[Vec<usize>]) -> Vec<f64>) {
        let mut keys = Vec::new();
        let mut pending = Vec::new();
        let mut seen = HashSet::new();
        for coalition in coalitions {
            let key = self.key(&coalition);
            if !self.values.contains_key(&key) && seen.insert(key.clone()) {
                keys.push(key);
                pending.push(coalition);
            }
        }
        if pending.is_empty() {
            return;
        }
        let values = evaluate(&pending);
        assert_eq!(values.len(), pending.len(), "a batch of {} coalitions got {} values", pending.len(), values.len());
        self.values.extend(keys.into_iter().zip(values));
    }

    /// v(coalition) of a coalition already fetched.
    fn value(&self, coalition: &[usize]) -> f64 {
        self.values[&self.key(coalition)]
    }

    fn evaluations(&self) -> usize {
        self.values.len()
    }
}

#[cfg(test)]
mod tests {
    use std::cell::{Cell, RefCell};

    use proptest::prelude::*;
    use rand::Rng;

    use super::*;

    /// Looks a coalition up in a table indexed by member bitmask.
    fn table_game(table: &[f64]) -> impl Fn(&[usize]) -> f64 + '_ {
        move |coalition| table[coalition.iter().map(|&member| 1usize << member).sum::<usize>()]
    }

    fn assert_close(actual: &[f64], expected: &[f64], tolerance: f64) {
        assert_eq!(actual.len(), expected.len());
        for (index, (a, e)) in actual.iter().zip(expected).enumerate() {
            assert!((a - e).abs() <= tolerance, "value {index}: {a} != {e} (all: {actual:?} vs {expected:?})");
        }
    }

    fn cosine(a: &[f64], b: &[f64]) -> f64 {
        let dot: f64 = a.iter().zip(b).map(|(x, y)| x * y).sum();
        let norm = |v: &[f64]| v.iter().map(|x| x * x).sum::<f64>().sqrt();
        dot / (norm(a) * norm(b))
    }

    /// An additive game plus pairwise interactions: v(S) = Σ_{i∈S} wᵢ + Σ_{i<j ∈ S} cᵢⱼ, with wᵢ in [0, 1] and cᵢⱼ
    /// in [−0.05, 0.05]. Its Shapley value is wᵢ + ½Σⱼ cᵢⱼ, so the exact answer can be checked independently.
    struct InteractionGame {
        weights: Vec<f64>,
        interactions: Vec<Vec<f64>>,
    }

    impl InteractionGame {
        fn random(n: usize, seed: u64) -> Self {
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            let weights = (0..n).map(|_| rng.random_range(0.0..1.0)).collect();
            let mut interactions = vec![vec![0.0; n]; n];
            for (i, j) in (0..n).flat_map(|i| (i + 1..n).map(move |j| (i, j))) {
                let c = rng.random_range(-0.05..0.05);
                interactions[i][j] = c;
                interactions[j][i] = c;
            }
            Self { weights, interactions }
        }

        fn value(&self, coalition: &[usize]) -> f64 {
            let mut total = 0.0;
            for (position, &i) in coalition.iter().enumerate() {
                total += self.weights[i];
                for &j in &coalition[position + 1..] {
                    total += self.interactions[i][j];
                }
            }
            total
        }

        fn shapley(&self) -> Vec<f64> {
            self.weights.iter().zip(&self.interactions).map(|(w, row)| w + 0.5 * row.iter().sum::<f64>()).collect()
        }
    }

    #[test]
    fn glove_game_gives_two_thirds_and_sixths() {
        let values = exact_shapley(3, |coalition| {
            let left = coalition.contains(&0);
            let right = coalition.contains(&1) || coalition.contains(&2);
            f64::from(u8::from(left && right))
        });
        assert_close(&values, &[2.0 / 3.0, 1.0 / 6.0, 1.0 / 6.0], 1e-15);
    }

    #[test]
    fn weighted_majority_game_matches_hand_count() {
        // Quota 3, weights (2, 1, 1): participant 0 is pivotal in 4 of the 6 orders.
        let weights = [2, 1, 1];
        let values = exact_shapley(3, |coalition| {
            f64::from(u8::from(coalition.iter().map(|&member| weights[member]).sum::<i32>() >= 3))
        });
        assert_close(&values, &[2.0 / 3.0, 1.0 / 6.0, 1.0 / 6.0], 1e-15);
    }

    #[test]
    fn unanimity_game_shares_equally_among_the_carrier() {
        // v(S) = 1 iff {1, 3, 4} ⊆ S: each of the three gets 1/3, the others nothing.
        let values = exact_shapley(5, |coalition| {
            f64::from(u8::from([1, 3, 4].iter().all(|member| coalition.contains(member))))
        });
        assert_close(&values, &[0.0, 1.0 / 3.0, 0.0, 1.0 / 3.0, 1.0 / 3.0], 1e-15);
    }

    #[test]
    fn additive_game_gives_each_its_weight() {
        let weights = [0.5, -1.25, 2.0, 0.0, 3.75, 1.0];
        let game = |coalition: &[usize]| 10.0 + coalition.iter().map(|&member| weights[member]).sum::<f64>();
        assert_close(&exact_shapley(weights.len(), game), &weights, 1e-12);
        assert_close(&leave_one_out(weights.len(), game), &weights, 1e-12);
    }

    #[test]
    fn exact_shapley_matches_closed_form_of_interaction_game() {
        let game = InteractionGame::random(10, 7);
        assert_close(&exact_shapley(10, |coalition| game.value(coalition)), &game.shapley(), 1e-12);
    }

    #[test]
    fn exact_shapley_evaluates_each_coalition_once_sorted() {
        let seen = RefCell::new(Vec::new());
        exact_shapley(5, |coalition| {
            assert!(coalition.windows(2).all(|pair| pair[0] < pair[1]), "unsorted coalition {coalition:?}");
            seen.borrow_mut().push(coalition.to_vec());
            0.0
        });
        let mut seen = seen.into_inner();
        assert_eq!(seen.len(), 32);
        seen.sort();
        seen.dedup();
        assert_eq!(seen.len(), 32);
    }

    #[test]
    fn empty_game_evaluates_nothing() {
        let calls = Cell::new(0);
        let count = |_: &[usize]| {
            calls.set(calls.get() + 1);
            1.0
        };
        assert!(exact_shapley(0, count).is_empty());
        assert!(leave_one_out(0, count).is_empty());
        let outcome = gtg_shapley(0, count, &GtgConfig::default());
        assert!(outcome.values.is_empty());
        assert_eq!(outcome.evaluations, 0);
        assert_eq!(calls.get(), 0);
    }

    #[test]
    fn single_participant_gets_the_whole_gain() {
        let game = |coalition: &[usize]| if coalition.is_empty() { 0.25 } else { 0.75 };
        assert_eq!(exact_shapley(1, game), vec![0.5]);
        assert_eq!(leave_one_out(1, game), vec![0.5]);
        assert_eq!(gtg_shapley(1, game, &GtgConfig::default()).values, vec![0.5]);
    }

    #[test]
    fn try_exact_shapley_refuses_before_evaluating() {
        let calls = Cell::new(0);
        let count = |_: &[usize]| {
            calls.set(calls.get() + 1);
            0.0
        };
        let error = try_exact_shapley(11, DEFAULT_EXACT_LIMIT, count).unwrap_err();
        assert_eq!(
            error.to_string(),
            "invalid participants: exact Shapley over 11 participants needs 2^11 coalition evaluations, above the \
             limit of 10 participants (2^10 evaluations); use GTG-Shapley instead"
        );
        let error = try_exact_shapley(21, 64, count).unwrap_err();
        assert!(matches!(error, Error::InvalidArgument { field: "participants", .. }));
        assert!(error.to_string().contains("above the hard limit of 20 participants"), "{error}");
        assert_eq!(calls.get(), 0);
        assert_eq!(try_exact_shapley(4, 4, count).unwrap(), vec![0.0; 4]);
        assert_eq!(calls.get(), 16);
    }

    #[test]
    #[should_panic(expected = "exceeds the hard limit")]
    fn exact_shapley_panics_above_hard_limit() {
        exact_shapley(EXACT_HARD_LIMIT + 1, |_| 0.0);
    }

    #[test]
    fn leave_one_out_misses_redundant_participants() {
        // Participants 0 and 1 hold the same data: either alone is worth 1, both add nothing.
        let game = |coalition: &[usize]| f64::from(u8::from(coalition.contains(&0) || coalition.contains(&1)));
        assert_eq!(leave_one_out(2, game), vec![0.0, 0.0]);
        assert_eq!(exact_shapley(2, game), vec![0.5, 0.5]);
    }

    /// n = 10 interaction games: the estimate must point the same way as the exact value (cosine ≥ 0.98) while
    /// evaluating fewer than the 2¹⁰ coalitions the exact value needs. With weights in [0, 1] a constant vector only
    /// reaches a cosine of about 0.87, so the bound is not met by accident. Within-round truncation is off (the game
    /// has no plateau to truncate), so the savings come from caching and convergence alone. The evaluation bound holds
    /// by construction (at most 60 permutations × 9 new prefixes + 2 < 1024); measured over these 15 runs: cosine
    /// 0.9993 to 0.9999 from 87 to 124 evaluations and 10 to 16 permutations.
    #[test]
    fn gtg_shapley_is_close_to_exact_with_fewer_evaluations() {
        let n = 10;
        let config = GtgConfig {
            seed: 0,
            max_permutations: 60,
            eps_between_round: 1e-6,
            eps_within_round: 0.0,
            convergence_tolerance: 0.01,
            convergence_window: 5,
        };
        for game_seed in 0..5 {
            let game = InteractionGame::random(n, game_seed);
            let exact = exact_shapley(n, |coalition| game.value(coalition));
            for gtg_seed in 0..3 {
                let outcome =
                    gtg_shapley(n, |coalition| game.value(coalition), &GtgConfig { seed: gtg_seed, ..config });
                let similarity = cosine(&outcome.values, &exact);
                assert!(similarity >= 0.98, "game {game_seed}, seed {gtg_seed}: cosine {similarity}");
                assert!(outcome.evaluations < 1 << n, "game {game_seed}, seed {gtg_seed}: {outcome:?}");
                assert!(!outcome.truncated);
                // Efficiency holds permutation by permutation when nothing is truncated.
                let total: f64 = outcome.values.iter().sum();
                assert!((total - (game.value(&(0..n).collect::<Vec<_>>()) - game.value(&[]))).abs() < 1e-9);
            }
        }
    }

    #[test]
    fn gtg_shapley_is_deterministic_per_seed() {
        let game = InteractionGame::random(8, 3);
        let run = |seed| {
            gtg_shapley(
                8,
                |coalition| game.value(coalition),
                &GtgConfig { seed, eps_within_round: 0.0, ..Default::default() },
            )
        };
        assert_eq!(run(42), run(42));
        assert_ne!(run(42).values, run(43).values);
    }

    #[test]
    fn gtg_shapley_between_round_truncation_evaluates_only_ends() {
        let calls = Cell::new(0);
        let outcome = gtg_shapley(
            6,
            |coalition| {
                calls.set(calls.get() + 1);
                // A round that barely moved the model: v(N) − v(∅) is below the threshold.
                0.9 + 1e-4 * coalition.len() as f64 / 6.0
            },
            &GtgConfig::default(),
        );
        assert!(outcome.truncated);
        assert_eq!(outcome.values, vec![0.0; 6]);
        assert_eq!(outcome.permutations, 0);
        assert!(outcome.evaluations <= 2);
        assert_eq!(calls.get(), outcome.evaluations);
    }

    #[test]
    fn gtg_shapley_within_round_truncation_skips_the_tail() {
        // Participant 0 alone reaches the grand value; every permutation is truncated as soon as 0 has been added.
        let calls = Cell::new(0);
        let game = |coalition: &[usize]| {
            calls.set(calls.get() + 1);
            f64::from(u8::from(coalition.contains(&0)))
        };
        let config = GtgConfig { max_permutations: 30, convergence_window: 30, ..Default::default() };
        let outcome = gtg_shapley(8, game, &config);
        assert_eq!(outcome.values[1..], [0.0; 7]);
        assert!(outcome.values[0] > 0.0);
        // Every evaluation is of a coalition that does not hold 0 yet, or the first that does.
        assert_eq!(calls.get(), outcome.evaluations);
        assert_eq!(outcome.permutations, 30);
    }

    #[test]
    fn gtg_shapley_places_each_participant_first_in_turn() {
        let firsts = RefCell::new(Vec::new());
        // Strictly increasing in size, so the first evaluated singleton of each permutation is its first member.
        let game = |coalition: &[usize]| {
            if coalition.len() == 1 {
                firsts.borrow_mut().push(coalition[0]);
            }
            coalition.len() as f64
        };
        let config = GtgConfig { max_permutations: 5, eps_within_round: 0.0, ..Default::default() };
        gtg_shapley(5, game, &config);
        // Singletons are cached, so only the first of each permutation is evaluated (and only once).
        assert_eq!(firsts.into_inner(), vec![0, 1, 2, 3, 4]);
    }

    #[test]
    fn gtg_shapley_stops_at_max_permutations_or_convergence() {
        let game = InteractionGame::random(6, 11);
        let capped = GtgConfig { max_permutations: 7, convergence_window: 1000, ..Default::default() };
        assert_eq!(gtg_shapley(6, |coalition| game.value(coalition), &capped).permutations, 7);
        // An additive game never changes its estimate after the first permutation, so it settles right after the
        // first n permutations.
        let additive = |coalition: &[usize]| coalition.iter().map(|&member| 1.0 + member as f64).sum::<f64>();
        let settled = GtgConfig { convergence_window: 3, ..Default::default() };
        assert_eq!(gtg_shapley(6, additive, &settled).permutations, 6);
    }

    /// Lockstep scanning changes nothing but the evaluations: same values, permutations and truncation for every
    /// group size, with each batch made of distinct coalitions never evaluated before.
    #[test]
    fn gtg_shapley_batched_matches_sequential_for_every_group() {
        for (n, eps_within_round) in [(6, 0.0), (9, 0.0), (9, 0.05), (12, 0.02)] {
            let game = InteractionGame::random(n, n as u64);
            let config = GtgConfig { eps_within_round, convergence_window: 3, ..Default::default() };
            let sequential = gtg_shapley(n, |coalition| game.value(coalition), &config);
            for group in [0, 1, 2, 3, 8, 64] {
                let mut seen = std::collections::HashSet::new();
                let mut batches = 0;
                let batched = gtg_shapley_batched(
                    n,
                    |batch| {
                        batches += 1;
                        assert!(!batch.is_empty());
                        for coalition in batch {
                            assert!(coalition.windows(2).all(|pair| pair[0] < pair[1]));
                            assert!(seen.insert(coalition.clone()), "{coalition:?} evaluated twice");
                        }
                        batch.iter().map(|coalition| game.value(coalition)).collect()
                    },
                    &config,
                    group,
                );
                assert_eq!(batched.values, sequential.values, "n {n}, group {group}");
                assert_eq!((batched.permutations, batched.truncated), (sequential.permutations, sequential.truncated));
                assert_eq!(batched.evaluations, seen.len());
                assert!(batched.evaluations >= sequential.evaluations);
                assert!(batched.evaluations <= sequential.evaluations + group.saturating_sub(1) * (n - 1));
                if group <= 1 {
                    assert_eq!(batched.evaluations, sequential.evaluations);
                } else {
                    assert!(batches < sequential.evaluations, "group {group}: {batches} batches");
                }
            }
        }
    }

    #[test]
    fn split_rewards_is_proportional_to_positive_values() {
        assert_eq!(split_rewards(90.0, &[1.0, 2.0, -5.0, 0.0]), vec![30.0, 60.0, 0.0, 0.0]);
        assert_eq!(split_rewards(10.0, &[f64::NAN, f64::INFINITY, 1.0]), vec![0.0, 0.0, 10.0]);
    }

    #[test]
    fn split_rewards_pays_nothing_without_a_positive_value_or_budget() {
        assert_eq!(split_rewards(100.0, &[0.0, -1.0]), vec![0.0, 0.0]);
        assert_eq!(split_rewards(0.0, &[1.0, 2.0]), vec![0.0, 0.0]);
        assert_eq!(split_rewards(-5.0, &[1.0, 2.0]), vec![0.0, 0.0]);
        assert_eq!(split_rewards(f64::NAN, &[1.0]), vec![0.0]);
        assert_eq!(split_rewards(f64::INFINITY, &[1.0]), vec![0.0]);
        assert!(split_rewards(100.0, &[]).is_empty());
    }

    /// A random game table over n ≤ 7 participants, indexed by bitmask.
    fn game_table() -> impl Strategy<Value = (usize, Vec<f64>)> {
        (1usize..=7).prop_flat_map(|n| (Just(n), proptest::collection::vec(-10.0..10.0f64, 1 << n)))
    }

    proptest! {
        #[test]
        fn exact_shapley_is_efficient((n, table) in game_table()) {
            let values = exact_shapley(n, table_game(&table));
            let total: f64 = values.iter().sum();
            prop_assert!((total - (table[(1 << n) - 1] - table[0])).abs() < 1e-9, "{total} vs {table:?}");
        }

        #[test]
        fn exact_shapley_treats_symmetric_players_equally((n, mut table) in game_table(), a in 0usize..7, b in 0usize..7) {
            let (a, b) = (a % n, b % n);
            prop_assume!(a != b);
            // Make a and b interchangeable: a coalition with a but not b is worth the same as the swapped one.
            for mask in 0..table.len() {
                let has_a = (mask >> a) & 1;
                let has_b = (mask >> b) & 1;
                let swapped = (mask & !(1 << a) & !(1 << b)) | (has_a << b) | (has_b << a);
                table[mask] = table[mask.min(swapped)];
            }
            let values = exact_shapley(n, table_game(&table));
            prop_assert!((values[a] - values[b]).abs() < 1e-9, "{values:?}");
        }

        #[test]
        fn exact_shapley_gives_null_player_nothing((n, mut table) in game_table(), null in 0usize..7) {
            let null = null % n;
            // Adding the null player never changes a coalition's value.
            for mask in 0..table.len() {
                table[mask] = table[mask & !(1 << null)];
            }
            let values = exact_shapley(n, table_game(&table));
            prop_assert_eq!(values[null], 0.0);
        }

        #[test]
        fn gtg_shapley_is_efficient_without_truncation((n, table) in game_table(), seed in any::<u64>()) {
            let config = GtgConfig {
                seed, eps_within_round: -1.0, eps_between_round: -1.0, max_permutations: 20, ..Default::default()
            };
            let outcome = gtg_shapley(n, table_game(&table), &config);
            let total: f64 = outcome.values.iter().sum();
            prop_assert!((total - (table[(1 << n) - 1] - table[0])).abs() < 1e-9);
            prop_assert!(outcome.evaluations <= 1 << n);
        }

        #[test]
        fn split_rewards_never_negative_and_sums_to_budget(
            budget in 0.0..1e6f64,
            values in proptest::collection::vec(-1.0..1.0f64, 0..20),
        ) {
            let rewards = split_rewards(budget, &values);
            prop_assert_eq!(rewards.len(), values.len());
            prop_assert!(rewards.iter().all(|&reward| reward >= 0.0));
            let total: f64 = rewards.iter().sum();
            if budget > 0.0 && values.iter().any(|&value| value > 0.0) {
                prop_assert!((total - budget).abs() <= 1e-9 * budget, "{total} vs {budget}");
            } else {
                prop_assert_eq!(total, 0.0);
            }
        }
    }
}
