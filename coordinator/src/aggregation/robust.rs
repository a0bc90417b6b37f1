//! Byzantine-robust aggregation rules: coordinate-wise median, trimmed mean, Krum, Multi-Krum, Bulyan, norm
//! bounding, centered clipping and FLTrust.
//!
//! Unlike [`super::FedAvg`], which streams, these rules need every update at once, so they take them as one matrix
//! of shape `(n_updates, n_parameters)`, one update per row, in a fixed order (sorted PDC ids). Every rule is a pure
//! function: no I/O, no randomness, `f64` accumulation and ties broken by a documented rule, so the same input always
//! gives the same bits. Values are ordered with `total_cmp`: the archive rejects non-finite updates before they get
//! here, and should one slip through, a rule returns a meaningless result rather than panicking.
//!
//! Semantics follow Flower's `flwr/server/strategy/aggregate.py` where Flower has the rule; each function says where
//! it differs.

use ndarray::{ArrayView1, ArrayView2, Axis, s};

use crate::{Error, Result};

/// The per-coordinate median of the updates. For an even number of updates it is the mean of the two middle values
/// (as `numpy.median`, which Flower's `aggregate_median` uses), computed in `f64` and rounded once to `f32`.
///
/// # Shapes
/// `updates`: `(n_updates, n_parameters)`; the result has `n_parameters` values.
///
/// ```
/// use ndarray::array;
/// use pdc_coordinator::aggregation::robust::coordinate_median;
/// let updates = array![[1.0f32, 10.0], [4.0, 0.0], [2.0, 3.0], [100.0, -7.0]];
/// assert_eq!(coordinate_median(updates.view()).unwrap(), vec![3.0, 1.5]);
/// ```
pub fn coordinate_median(updates: ArrayView2<f32>) -> Result<Vec<f32>> {
    check_not_empty(&updates, "coordinate median")?;
    Ok(map_columns(updates, |column| {
        column.sort_unstable_by(f32::total_cmp);
        median_of_sorted(column) as f32
    }))
}

/// The per-coordinate trimmed mean: in each coordinate the `⌊beta·n⌋` smallest and the `⌊beta·n⌋` largest values are
/// dropped and the rest averaged in `f64`.
///
/// This is Flower's `aggregate_trimmed_avg` (scipy's `trim_mean`): `beta` is the fraction cut from *each* side and
/// the count is `int(beta * n)`, rounded down. Flower accepts any `beta` and returns NaN when nothing remains; here
/// `beta` must lie in `[0, 0.5)`, and a cut that would leave nothing is refused.
///
/// # Shapes
/// `updates`: `(n_updates, n_parameters)`; the result has `n_parameters` values.
///
/// ```
/// use ndarray::array;
/// use pdc_coordinator::aggregation::robust::trimmed_mean;
/// // β·n = 1: the smallest and the largest value of each coordinate are dropped.
/// let updates = array![[10.0f32], [-100.0], [1.0], [2.0], [3.0]];
/// assert_eq!(trimmed_mean(updates.view(), 0.2).unwrap(), vec![2.0]);
/// ```
pub fn trimmed_mean(updates: ArrayView2<f32>, beta: f64) -> Result<Vec<f32>> {
    if !(0.0..0.5).contains(&beta) {
        return Err(Error::InvalidArgument { field: "beta", detail: format!("must lie in [0, 0.5), got {beta}") });
    }
    let n = check_not_empty(&updates, "trimmed mean")?;
    // `as usize` truncates towards zero, as Python's `int()` does for a non-negative number.
    let cut = (beta * n as f64) as usize;
    // β < 0.5 keeps at least one value except where β·n rounds up to exactly n/2 for a huge n; refuse that too.
    if 2 * cut >= n {
        return Err(Error::InvalidArgument {
            field: "beta",
            detail: format!("cutting {cut} values from each side of {n} leaves none"),
        });
    }
    Ok(map_columns(updates, |column| {
        column.sort_unstable_by(f32::total_cmp);
        mean(&column[cut..n - cut]) as f32
    }))
}

/// Krum (Blanchard et al., 2017): the update whose summed squared distance to its `n − f − 2` nearest other updates is
/// the smallest, returned unchanged. Tolerates `f` Byzantine updates among `n ≥ 2f + 3`; smaller `n` is refused.
///
/// Ties between scores go to the update with the lower index. Flower's `aggregate_krum` leaves ties to `np.argmin`
/// (also the lowest index) and does not check `n`.
///
/// # Shapes
/// `updates`: `(n_updates, n_parameters)`; the result has `n_parameters` values.
///
/// ```
/// use ndarray::array;
/// use pdc_coordinator::aggregation::robust::krum;
/// let updates = array![[0.0f32], [2.0], [3.0], [7.0], [100.0]];
/// assert_eq!(krum(updates.view(), 1).unwrap(), vec![2.0]);
/// ```
pub fn krum(updates: ArrayView2<f32>, f: usize) -> Result<Vec<f32>> {
    let n = check_krum(&updates, f, "Krum")?;
    let distances = pairwise_squared_distances(updates);
    let active: Vec<usize> = (0..n).collect();
    let scores = krum_scores(&distances, n, &active, n - f - 2);
    let best = rank(&scores)[0];
    Ok(updates.row(best).to_vec())
}

/// Multi-Krum: the weighted mean of the `m` updates with the best (lowest) Krum scores, each weighted by its entry
/// in `weights` (the PDC's example count), as Flower's `aggregate_krum` does with `to_keep = m`.
///
/// `1 ≤ m ≤ n` is required; Flower's `to_keep = 0`, which means plain Krum there, is refused here: call [`krum`].
/// Ties between scores go to the update with the lower index, and the mean is accumulated in `f64` in rank order,
/// so the result does not depend on the input order when the scores are distinct.
///
/// # Shapes
/// `updates`: `(n_updates, n_parameters)`; `weights`: `n_updates`; the result has `n_parameters` values.
///
/// ```
/// use ndarray::array;
/// use pdc_coordinator::aggregation::robust::multi_krum;
/// let updates = array![[0.0f32], [2.0], [3.0], [7.0], [100.0]];
/// // The two best are 2 (weight 1) and 3 (weight 3).
/// assert_eq!(multi_krum(updates.view(), &[1.0, 1.0, 3.0, 1.0, 1.0], 1, 2).unwrap(), vec![2.75]);
/// ```
pub fn multi_krum(updates: ArrayView2<f32>, weights: &[f64], f: usize, m: usize) -> Result<Vec<f32>> {
    let n = check_krum(&updates, f, "Multi-Krum")?;
    check_weights(weights, n)?;
    if m == 0 || m > n {
        return Err(Error::InvalidArgument { field: "m", detail: format!("must lie in 1..={n}, got {m}") });
    }
    let distances = pairwise_squared_distances(updates);
    let active: Vec<usize> = (0..n).collect();
    let scores = krum_scores(&distances, n, &active, n - f - 2);
    let best = &rank(&scores)[..m];
    let mut sum = vec![0.0f64; updates.ncols()];
    let mut total_weight = 0.0;
    for &i in best {
        for (sum, &value) in sum.iter_mut().zip(updates.row(i)) {
            *sum += weights[i] * f64::from(value);
        }
        total_weight += weights[i];
    }
    Ok(sum.into_iter().map(|sum| (sum / total_weight) as f32).collect())
}

/// Bulyan (El Mhamdi et al., 2018): θ = n − 2f updates are chosen by Krum applied repeatedly to those not yet chosen;
/// then in each coordinate the β = θ − 2f chosen values closest to the chosen values' median are averaged. Tolerates
/// `f` Byzantine updates among `n ≥ 4f + 3`; smaller `n` is refused.
///
/// As in Flower's `aggregate_bulyan`, every Krum round keeps the same `f` and scores against the
/// `max(1, n' − f − 2)` nearest of the `n'` updates still in play. Ties between Krum scores go to the lower index;
/// ties in distance to the median go to the smaller value (Flower leaves both to `argpartition`). Given the chosen
/// set, the result does not depend on the input order.
///
/// # Shapes
/// `updates`: `(n_updates, n_parameters)`; the result has `n_parameters` values.
///
/// ```
/// use ndarray::array;
/// use pdc_coordinator::aggregation::robust::bulyan;
/// // n = 7, f = 1: Krum chooses 0..=4, and the three values closest to their median 2 average to 2.
/// let updates = array![[0.0f32], [1.0], [2.0], [3.0], [4.0], [100.0], [-100.0]];
/// assert_eq!(bulyan(updates.view(), 1).unwrap(), vec![2.0]);
/// ```
pub fn bulyan(updates: ArrayView2<f32>, f: usize) -> Result<Vec<f32>> {
    let n = updates.nrows();
    let needed = f.saturating_mul(4).saturating_add(3);
    if n < needed {
        return Err(Error::InvalidArgument {
            field: "updates",
            detail: format!(
                "Bulyan needs n >= 4f + 3 = {needed} updates to tolerate f = {f} Byzantine ones, got n = {n}"
            ),
        });
    }
    let theta = n - 2 * f;
    let beta = theta - 2 * f;
    let distances = pairwise_squared_distances(updates);
    let mut active: Vec<usize> = (0..n).collect();
    let mut chosen = Vec::with_capacity(theta);
    for _ in 0..theta {
        let neighbours = active.len().saturating_sub(f + 2).max(1).min(active.len() - 1);
        let scores = krum_scores(&distances, n, &active, neighbours);
        // `active` stays in ascending index order, so rank's tie-break by position is a tie-break by index.
        let best = rank(&scores)[0];
        chosen.push(active.remove(best));
    }
    let chosen = updates.select(Axis(0), &chosen);
    Ok(map_columns(chosen.view(), |column| mean_of_closest_to_median(column, beta) as f32))
}

/// Scales `update` down so that its Euclidean norm is at most `max_norm`; an update already within the bound is left
/// untouched. Returns the norm before scaling. `max_norm` must be finite and positive.
///
/// The scaled values are rounded to `f32`, so the new norm may exceed `max_norm` by a few units in the last place.
///
/// ```
/// use pdc_coordinator::aggregation::robust::norm_bound;
/// let mut update = [3.0f32, 4.0];
/// assert_eq!(norm_bound(&mut update, 1.0).unwrap(), 5.0);
/// assert_eq!(update, [0.6, 0.8]);
/// ```
pub fn norm_bound(update: &mut [f32], max_norm: f64) -> Result<f64> {
    check_positive(max_norm, "max_norm")?;
    let norm = squared_norm(update.iter().copied()).sqrt();
    if norm > max_norm {
        let scale = max_norm / norm;
        for value in update.iter_mut() {
            *value = (f64::from(*value) * scale) as f32;
        }
    }
    Ok(norm)
}

/// Centered clipping (Karimireddy, He and Jaggi, 2021): starting from `v = center` (typically the previous aggregate,
/// or zero), `iterations` times `v ← v + (1/n)·Σᵢ clip(xᵢ − v, tau)`, where `clip(z, tau)` scales `z` down to norm
/// `tau`. `tau` must be finite and positive and `iterations` at least 1 (zero would silently ignore every update).
///
/// `v` is kept in `f64` throughout and rounded to `f32` once at the end; the sum runs in row order.
///
/// # Shapes
/// `updates`: `(n_updates, n_parameters)`; `center`: `n_parameters`; the result has `n_parameters` values.
///
/// ```
/// use ndarray::array;
/// use pdc_coordinator::aggregation::robust::centered_clipping;
/// let updates = array![[1.0f32], [2.0], [100.0]];
/// // One step from 0 with τ = 5: (1 + 2 + 5) / 3.
/// assert_eq!(centered_clipping(updates.view(), &[0.0], 5.0, 1).unwrap(), vec![(8.0f64 / 3.0) as f32]);
/// ```
pub fn centered_clipping(updates: ArrayView2<f32>, center: &[f32], tau: f64, iterations: usize) -> Result<Vec<f32>> {
    let n = check_not_empty(&updates, "centered clipping")?;
    check_length(center.len(), updates.ncols(), "center")?;
    check_positive(tau, "tau")?;
    if iterations == 0 {
        return Err(Error::InvalidArgument { field: "iterations", detail: "must be at least 1, got 0".into() });
    }
    let mut v: Vec<f64> = center.iter().map(|&value| f64::from(value)).collect();
    let mut step = vec![0.0f64; v.len()];
    for _ in 0..iterations {
        step.fill(0.0);
        for row in updates.rows() {
            let norm = squared_norm(row.iter().zip(&v).map(|(&x, &current)| f64::from(x) - current)).sqrt();
            let scale = if norm > tau { tau / norm } else { 1.0 };
            for ((total, &x), &current) in step.iter_mut().zip(row).zip(&v) {
                *total += scale * (f64::from(x) - current);
            }
        }
        for (current, &total) in v.iter_mut().zip(&step) {
            *current += total / n as f64;
        }
    }
    Ok(v.into_iter().map(|v| v as f32).collect())
}

/// FLTrust (Cao et al., 2021): each update xᵢ gets trust `ReLU(cos(xᵢ, g₀))` against the server's own update `g₀`
/// (computed on its root data set), is rescaled to `‖g₀‖`, and the result is `Σ trustᵢ·x̂ᵢ / Σ trustᵢ`.
///
/// An update of norm zero gets trust 0 rather than NaN. When every trust is 0 (all updates point away from `g₀`, or
/// `g₀` is zero) the result is the zero vector: no update is applied this round.
///
/// # Shapes
/// `updates`: `(n_updates, n_parameters)`; `server_update`: `n_parameters`; the result has `n_parameters` values.
///
/// ```
/// use ndarray::array;
/// use pdc_coordinator::aggregation::robust::fltrust;
/// // The second update points away from the server's and is ignored; the first is rescaled to norm 1.
/// let updates = array![[2.0f32, 0.0], [-5.0, 0.0]];
/// assert_eq!(fltrust(updates.view(), &[1.0, 0.0]).unwrap(), vec![1.0, 0.0]);
/// ```
pub fn fltrust(updates: ArrayView2<f32>, server_update: &[f32]) -> Result<Vec<f32>> {
    check_not_empty(&updates, "FLTrust")?;
    check_length(server_update.len(), updates.ncols(), "server_update")?;
    let server_norm = squared_norm(server_update.iter().copied()).sqrt();
    let mut sum = vec![0.0f64; server_update.len()];
    let mut total_trust = 0.0;
    for row in updates.rows() {
        let norm = squared_norm(row.iter().copied()).sqrt();
        if norm == 0.0 || server_norm == 0.0 {
            continue;
        }
        let dot: f64 = row.iter().zip(server_update).map(|(&x, &g)| f64::from(x) * f64::from(g)).sum();
        // `f64::max` returns the other operand for NaN, so a NaN cosine also becomes trust 0.
        let trust = (dot / (norm * server_norm)).max(0.0);
        if trust == 0.0 {
            continue;
        }
        let scale = trust * server_norm / norm;
        for (sum, &x) in sum.iter_mut().zip(row) {
            *sum += scale * f64::from(x);
        }
        total_trust += trust;
    }
    if total_trust == 0.0 {
        return Ok(vec![0.0; sum.len()]);
    }
    Ok(sum.into_iter().map(|sum| (sum / total_trust) as f32).collect())
}

/// How many columns [`map_columns`] gathers at a time: enough to read each row in long runs, small enough that the
/// gathered block stays in cache.
const COLUMN_BLOCK: usize = 64;

/// Applies `reduce` to every column of `updates` (the `n_updates` values of one coordinate, in a scratch buffer it
/// may reorder) and collects the results in column order.
fn map_columns(updates: ArrayView2<f32>, mut reduce: impl FnMut(&mut [f32]) -> f32) -> Vec<f32> {
    let (n, p) = updates.dim();
    let mut result = Vec::with_capacity(p);
    // Walking one column at a time would jump a whole row between reads; gathering a block of columns row by row
    // reads memory in order.
    let mut block = vec![0.0f32; n * COLUMN_BLOCK];
    for start in (0..p).step_by(COLUMN_BLOCK) {
        let width = COLUMN_BLOCK.min(p - start);
        for (i, row) in updates.slice(s![.., start..start + width]).rows().into_iter().enumerate() {
            for (k, &value) in row.iter().enumerate() {
                block[k * n + i] = value;
            }
        }
        for column in block.chunks_exact_mut(n).take(width) {
            result.push(reduce(column));
        }
    }
    result
}

/// The median of sorted values, in `f64`: the mean of the two middle values for an even count.
fn median_of_sorted(sorted: &[f32]) -> f64 {
    let middle = sorted.len() / 2;
    if sorted.len() % 2 == 1 {
        f64::from(sorted[middle])
    } else {
        (f64::from(sorted[middle - 1]) + f64::from(sorted[middle])) / 2.0
    }
}

/// The `f64` mean of `values`, summed in the given order.
fn mean(values: &[f32]) -> f64 {
    values.iter().map(|&value| f64::from(value)).sum::<f64>() / values.len() as f64
}

/// Bulyan's coordinate step: the mean of the `beta` values closest to the median. Ties in distance go to the smaller
/// value, so the result depends only on the multiset of values.
fn mean_of_closest_to_median(column: &mut [f32], beta: usize) -> f64 {
    column.sort_unstable_by(f32::total_cmp);
    let median = median_of_sorted(column);
    let distance = |value: f32| (f64::from(value) - median).abs();
    column.sort_by(|a, b| distance(*a).total_cmp(&distance(*b)).then(a.total_cmp(b)));
    mean(&column[..beta])
}

/// The squared Euclidean distance between every pair of rows, as a row-major `n × n` matrix. Each pair is computed
/// once, as `Σ (a − b)²` in `f64` rather than from dot products, which would cancel badly for nearby updates.
fn pairwise_squared_distances(updates: ArrayView2<f32>) -> Vec<f64> {
    let n = updates.nrows();
    let mut distances = vec![0.0f64; n * n];
    for i in 0..n {
        for j in i + 1..n {
            let distance = squared_distance(updates.row(i), updates.row(j));
            distances[i * n + j] = distance;
            distances[j * n + i] = distance;
        }
    }
    distances
}

fn squared_distance(a: ArrayView1<f32>, b: ArrayView1<f32>) -> f64 {
    let difference = |(&x, &y): (&f32, &f32)| f64::from(x) - f64::from(y);
    match (a.as_slice(), b.as_slice()) {
        // Contiguous rows (the usual case) take the slice path, which the compiler vectorises.
        (Some(a), Some(b)) => squared_norm(a.iter().zip(b).map(difference)),
        _ => squared_norm(a.iter().zip(b.iter()).map(difference)),
    }
}

fn squared_norm<T: Into<f64>>(values: impl Iterator<Item = T>) -> f64 {
    values
        .map(|value| {
            let value = value.into();
            value * value
        })
        .sum()
}

/// The Krum score of every row in `active`: the sum of its squared distances to its `neighbours` nearest other rows
/// in `active`. Distances are summed in ascending order, so a score depends only on the set, not on its order.
fn krum_scores(distances: &[f64], n: usize, active: &[usize], neighbours: usize) -> Vec<f64> {
    let mut others = Vec::with_capacity(active.len());
    active
        .iter()
        .map(|&i| {
            others.clear();
            others.extend(active.iter().filter(|&&j| j != i).map(|&j| distances[i * n + j]));
            others.sort_unstable_by(f64::total_cmp);
            others[..neighbours].iter().sum()
        })
        .collect()
}

/// Positions sorted by ascending score, equal scores by position.
fn rank(scores: &[f64]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..scores.len()).collect();
    // A stable sort keeps equal scores in position order.
    order.sort_by(|&a, &b| scores[a].total_cmp(&scores[b]));
    order
}

fn check_not_empty(updates: &ArrayView2<f32>, rule: &str) -> Result<usize> {
    match updates.nrows() {
        0 => Err(Error::FailedPrecondition(format!("{rule} over no updates"))),
        n => Ok(n),
    }
}

fn check_krum(updates: &ArrayView2<f32>, f: usize, rule: &str) -> Result<usize> {
    let n = updates.nrows();
    let needed = f.saturating_mul(2).saturating_add(3);
    if n < needed {
        return Err(Error::InvalidArgument {
            field: "updates",
            detail: format!(
                "{rule} needs n >= 2f + 3 = {needed} updates to tolerate f = {f} Byzantine ones, got n = {n}"
            ),
        });
    }
    Ok(n)
}

fn check_weights(weights: &[f64], n: usize) -> Result<()> {
    if weights.len() != n {
        return Err(Error::InvalidArgument {
            field: "weights",
            detail: format!("expected one weight per update ({n}), got {}", weights.len()),
        });
    }
    weights.iter().try_for_each(|&weight| check_positive(weight, "weights"))
}

fn check_positive(value: f64, field: &'static str) -> Result<()> {
    if value.is_finite() && value > 0.0 {
        Ok(())
    } else {
        Err(Error::InvalidArgument { field, detail: format!("must be finite and positive, got {value}") })
    }
}

fn check_length(actual: usize, expected: usize, field: &'static str) -> Result<()> {
    if actual == expected {
        Ok(())
    } else {
        Err(Error::InvalidArgument { field, detail: format!("expected {expected} parameters, got {actual}") })
    }
}

#[cfg(test)]
mod tests {
    use ndarray::{Array2, array};
    use proptest::prelude::*;

    use super::*;

    fn bits(values: &[f32]) -> Vec<u32> {
        values.iter().map(|value| value.to_bits()).collect()
    }

    fn message(result: Result<Vec<f32>>) -> String {
        result.unwrap_err().to_string()
    }

    #[test]
    fn median_odd_even_and_ties() {
        let odd = array![[1.0f32, 5.0], [3.0, -1.0], [2.0, 2.0]];
        assert_eq!(coordinate_median(odd.view()).unwrap(), vec![2.0, 2.0]);
        // Sorted columns 1, 2, 4, 100 and −7, 0, 3, 10: means of the middle pairs.
        let even = array![[1.0f32, 10.0], [4.0, 0.0], [2.0, 3.0], [100.0, -7.0]];
        assert_eq!(coordinate_median(even.view()).unwrap(), vec![3.0, 1.5]);
        let ties = array![[1.0f32], [1.0], [5.0]];
        assert_eq!(coordinate_median(ties.view()).unwrap(), vec![1.0]);
        let single = array![[7.0f32, -3.0]];
        assert_eq!(coordinate_median(single.view()).unwrap(), vec![7.0, -3.0]);
    }

    #[test]
    fn median_does_not_panic_on_nan() {
        // total_cmp puts a positive NaN after every number.
        let updates = array![[f32::NAN], [1.0], [2.0]];
        assert_eq!(coordinate_median(updates.view()).unwrap(), vec![2.0]);
    }

    #[test]
    fn median_spans_column_blocks_and_strided_views() {
        // 150 columns cover two full blocks and a partial one; the transposed view is not row-contiguous.
        let updates = Array2::from_shape_fn((3, 150), |(i, j)| (i * 1000 + j) as f32);
        let expected: Vec<f32> = (0..150).map(|j| (1000 + j) as f32).collect();
        assert_eq!(coordinate_median(updates.view()).unwrap(), expected);
        let transposed = updates.t().to_owned();
        assert_eq!(coordinate_median(transposed.t()).unwrap(), expected);
    }

    #[test]
    fn trimmed_mean_hand_computed() {
        let column = array![[10.0f32], [-100.0], [1.0], [2.0], [3.0]];
        // β·n = 1: drop −100 and 10.
        assert_eq!(trimmed_mean(column.view(), 0.2).unwrap(), vec![2.0]);
        // β·n = 1.5 rounds down to 1.
        assert_eq!(trimmed_mean(column.view(), 0.3).unwrap(), vec![2.0]);
        // β·n = 0.5 rounds down to 0: the plain mean, (10 − 100 + 1 + 2 + 3) / 5.
        assert_eq!(trimmed_mean(column.view(), 0.1).unwrap(), vec![-16.8]);
        // Ties: one 1 and one 5 are dropped.
        let ties = array![[1.0f32], [5.0], [1.0], [5.0], [1.0]];
        assert_eq!(trimmed_mean(ties.view(), 0.2).unwrap(), vec![(7.0f64 / 3.0) as f32]);
        // Even n: β·n = 1 leaves the middle two.
        let even = array![[4.0f32, 0.0], [1.0, 0.0], [3.0, 8.0], [2.0, 1.0]];
        assert_eq!(trimmed_mean(even.view(), 0.25).unwrap(), vec![2.5, 0.5]);
    }

    #[test]
    fn trimmed_mean_refusals() {
        let updates = array![[1.0f32], [2.0]];
        assert_eq!(message(trimmed_mean(updates.view(), 0.5)), "invalid beta: must lie in [0, 0.5), got 0.5");
        assert_eq!(message(trimmed_mean(updates.view(), -0.1)), "invalid beta: must lie in [0, 0.5), got -0.1");
        assert_eq!(message(trimmed_mean(updates.view(), f64::NAN)), "invalid beta: must lie in [0, 0.5), got NaN");
        let empty = Array2::<f32>::zeros((0, 3));
        assert_eq!(message(trimmed_mean(empty.view(), 0.1)), "trimmed mean over no updates");
        assert_eq!(message(coordinate_median(empty.view())), "coordinate median over no updates");
    }

    // Scores with f = 1 (2 neighbours): 0 → 4 + 9 = 13, 2 → 1 + 4 = 5, 3 → 1 + 9 = 10, 7 → 16 + 25 = 41,
    // 100 → 93² + 97².
    fn krum_example() -> Array2<f32> {
        array![[0.0f32], [2.0], [3.0], [7.0], [100.0]]
    }

    #[test]
    fn krum_hand_computed() {
        assert_eq!(krum(krum_example().view(), 1).unwrap(), vec![2.0]);
        // In two dimensions: the outlier [9, 9] is never chosen.
        let plane = array![[0.0f32, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [9.0, 9.0]];
        // Each corner of the unit square has two neighbours at distance 1: all score 2; the lowest index wins.
        assert_eq!(krum(plane.view(), 1).unwrap(), vec![0.0, 0.0]);
    }

    #[test]
    fn krum_breaks_ties_by_index() {
        // Scores with 2 neighbours: 0 → 1 + 4 = 5, 1 → 1 + 1 = 2, 2 → 1 + 1 = 2, 3 → 1 + 4 = 5: rows 1 and 2 tie.
        let updates = array![[0.0f32], [1.0], [2.0], [3.0], [100.0]];
        assert_eq!(krum(updates.view(), 1).unwrap(), vec![1.0]);
        let swapped = array![[0.0f32], [2.0], [1.0], [3.0], [100.0]];
        assert_eq!(krum(swapped.view(), 1).unwrap(), vec![2.0]);
    }

    #[test]
    fn multi_krum_hand_computed() {
        let weights = [1.0, 1.0, 3.0, 1.0, 1.0];
        // Best two: 2 (weight 1) and 3 (weight 3): (2 + 9) / 4.
        assert_eq!(multi_krum(krum_example().view(), &weights, 1, 2).unwrap(), vec![2.75]);
        // Best three add 0 (weight 1): (2 + 9 + 0) / 5.
        assert_eq!(multi_krum(krum_example().view(), &weights, 1, 3).unwrap(), vec![2.2]);
        // m = 1 is Krum.
        assert_eq!(multi_krum(krum_example().view(), &weights, 1, 1).unwrap(), vec![2.0]);
    }

    #[test]
    fn krum_refusals() {
        let four = array![[0.0f32], [1.0], [2.0], [3.0]];
        assert_eq!(
            message(krum(four.view(), 1)),
            "invalid updates: Krum needs n >= 2f + 3 = 5 updates to tolerate f = 1 Byzantine ones, got n = 4"
        );
        assert_eq!(
            message(multi_krum(four.view(), &[1.0; 4], 1, 2)),
            "invalid updates: Multi-Krum needs n >= 2f + 3 = 5 updates to tolerate f = 1 Byzantine ones, got n = 4"
        );
        let five = krum_example();
        assert_eq!(
            message(multi_krum(five.view(), &[1.0; 4], 1, 2)),
            "invalid weights: expected one weight per update (5), got 4"
        );
        assert_eq!(
            message(multi_krum(five.view(), &[1.0, 0.0, 1.0, 1.0, 1.0], 1, 2)),
            "invalid weights: must be finite and positive, got 0"
        );
        assert_eq!(message(multi_krum(five.view(), &[1.0; 5], 1, 0)), "invalid m: must lie in 1..=5, got 0");
        assert_eq!(message(multi_krum(five.view(), &[1.0; 5], 1, 6)), "invalid m: must lie in 1..=5, got 6");
        // A huge f must not overflow.
        assert!(krum(five.view(), usize::MAX).is_err());
    }

    #[test]
    fn bulyan_hand_computed() {
        // n = 7, f = 1: θ = 5, β = 3. Krum rounds (neighbours max(1, n' − 3)):
        //   n' = 7, 4 nearest: 0 → 30, 1 → 15, 2 → 10, 3 → 15, 4 → 30: choose 2.
        //   n' = 6, 3 nearest: 0 → 26, 1 → 14, 3 → 14, 4 → 26: tie, choose 1 (lower index).
        //   n' = 5, 2 nearest: 0 → 9 + 16 = 25, 3 → 1 + 9 = 10, 4 → 1 + 16 = 17: choose 3.
        //   n' = 4, 1 nearest: 0 → 16, 4 → 16: tie, choose 0.
        //   n' = 3, 1 nearest: 4 → 96², 100 → 96², −100 → 104²: tie, choose 4 (index 4 < 5).
        // Chosen 0..=4, median 2, the three closest are 1, 2, 3: mean 2.
        let updates = array![[0.0f32], [1.0], [2.0], [3.0], [4.0], [100.0], [-100.0]];
        assert_eq!(bulyan(updates.view(), 1).unwrap(), vec![2.0]);
        // f = 0 chooses everything and averages everything.
        let all = array![[1.0f32, 0.0], [2.0, 3.0], [6.0, 0.0]];
        assert_eq!(bulyan(all.view(), 0).unwrap(), vec![3.0, 1.0]);
    }

    #[test]
    fn bulyan_coordinate_step() {
        // Median 5; distances 5, 4, 0, 1, 2: the closest three are 5, 6, 7.
        assert_eq!(mean_of_closest_to_median(&mut [0.0, 1.0, 5.0, 6.0, 7.0], 3), 6.0);
        // Median 2 with 1 and 3 equally close: the smaller value wins whatever the order.
        assert_eq!(mean_of_closest_to_median(&mut [3.0, 1.0], 1), 1.0);
        assert_eq!(mean_of_closest_to_median(&mut [1.0, 3.0], 1), 1.0);
    }

    #[test]
    fn bulyan_refusal() {
        let six = Array2::<f32>::zeros((6, 2));
        assert_eq!(
            message(bulyan(six.view(), 1)),
            "invalid updates: Bulyan needs n >= 4f + 3 = 7 updates to tolerate f = 1 Byzantine ones, got n = 6"
        );
        assert!(bulyan(six.view(), usize::MAX).is_err());
    }

    #[test]
    fn norm_bound_scales_down_only() {
        let mut long = [3.0f32, 4.0];
        assert_eq!(norm_bound(&mut long, 1.0).unwrap(), 5.0);
        assert_eq!(long, [0.6, 0.8]);
        let mut short = [0.3f32, 0.4];
        norm_bound(&mut short, 1.0).unwrap();
        assert_eq!(short, [0.3, 0.4]);
        let mut zero = [0.0f32; 3];
        assert_eq!(norm_bound(&mut zero, 1.0).unwrap(), 0.0);
        assert_eq!(zero, [0.0; 3]);
        assert_eq!(
            norm_bound(&mut long, 0.0).unwrap_err().to_string(),
            "invalid max_norm: must be finite and positive, got 0"
        );
        assert!(norm_bound(&mut long, f64::INFINITY).is_err());
    }

    #[test]
    fn centered_clipping_hand_computed() {
        let updates = array![[1.0f32], [2.0], [100.0]];
        // Step 1 from 0: clips 1, 2, 5 → v = 8/3. Step 2: −5/3, −2/3, 5 → v = 8/3 + (8/3)/3 = 32/9.
        assert_eq!(centered_clipping(updates.view(), &[0.0], 5.0, 1).unwrap(), vec![(8.0f64 / 3.0) as f32]);
        assert_eq!(centered_clipping(updates.view(), &[0.0], 5.0, 2).unwrap(), vec![(32.0f64 / 9.0) as f32]);
        // In two dimensions the clip keeps the direction: [3, 4] clipped to norm 1.
        let plane = array![[3.0f32, 4.0]];
        assert_eq!(centered_clipping(plane.view(), &[0.0, 0.0], 1.0, 1).unwrap(), vec![0.6, 0.8]);
        // Starting from a center: [2, 0] is within τ of [1, 0], so one step lands on it.
        let near = array![[2.0f32, 0.0]];
        assert_eq!(centered_clipping(near.view(), &[1.0, 0.0], 5.0, 1).unwrap(), vec![2.0, 0.0]);
    }

    #[test]
    fn centered_clipping_refusals() {
        let updates = array![[1.0f32, 2.0]];
        assert_eq!(
            message(centered_clipping(updates.view(), &[0.0], 1.0, 1)),
            "invalid center: expected 2 parameters, got 1"
        );
        assert_eq!(
            message(centered_clipping(updates.view(), &[0.0; 2], -1.0, 1)),
            "invalid tau: must be finite and positive, got -1"
        );
        assert_eq!(
            message(centered_clipping(updates.view(), &[0.0; 2], 1.0, 0)),
            "invalid iterations: must be at least 1, got 0"
        );
        let empty = Array2::<f32>::zeros((0, 2));
        assert_eq!(message(centered_clipping(empty.view(), &[0.0; 2], 1.0, 1)), "centered clipping over no updates");
    }

    #[test]
    fn fltrust_hand_computed() {
        // g₀ = [1, 0]. [2, 0]: trust 1, rescaled [1, 0]. [0, 3]: orthogonal, trust 0. [−1, 0]: trust 0.
        // [1, 1]: trust t = 1/√2, rescaled [t, t]. [0, 0]: trust 0.
        let updates = array![[2.0f32, 0.0], [0.0, 3.0], [-1.0, 0.0], [1.0, 1.0], [0.0, 0.0]];
        let result = fltrust(updates.view(), &[1.0, 0.0]).unwrap();
        let t = 0.5f64.sqrt();
        let expected = [(1.0 + t * t) / (1.0 + t), t * t / (1.0 + t)];
        for (got, want) in result.iter().zip(expected) {
            assert!((f64::from(*got) - want).abs() < 1e-6, "{got} vs {want}");
        }
        // Rescaling to ‖g₀‖ = 2.
        let scaled = array![[0.0f32, 10.0]];
        assert_eq!(fltrust(scaled.view(), &[0.0, 2.0]).unwrap(), vec![0.0, 2.0]);
    }

    #[test]
    fn fltrust_with_no_trust_is_zero() {
        let against = array![[-1.0f32, 0.0], [0.0, 0.0]];
        assert_eq!(fltrust(against.view(), &[1.0, 0.0]).unwrap(), vec![0.0, 0.0]);
        let any = array![[1.0f32, 2.0]];
        assert_eq!(fltrust(any.view(), &[0.0, 0.0]).unwrap(), vec![0.0, 0.0]);
        assert_eq!(message(fltrust(any.view(), &[1.0])), "invalid server_update: expected 2 parameters, got 1");
    }

    /// A matrix of 3 to 8 rows of 1 to 4 parameters, and a permutation of its rows.
    fn matrix_and_permutation() -> impl Strategy<Value = (Array2<f32>, Vec<usize>)> {
        (3usize..9, 1usize..5).prop_flat_map(|(n, p)| {
            (prop::collection::vec(-100.0f32..100.0, n * p), Just((0..n).collect::<Vec<_>>()).prop_shuffle())
                .prop_map(move |(values, permutation)| (Array2::from_shape_vec((n, p), values).unwrap(), permutation))
        })
    }

    proptest! {
        #[test]
        fn order_independent_rules_ignore_row_order((updates, permutation) in matrix_and_permutation()) {
            let permuted = updates.select(Axis(0), &permutation);
            prop_assert_eq!(
                bits(&coordinate_median(updates.view()).unwrap()),
                bits(&coordinate_median(permuted.view()).unwrap())
            );
            prop_assert_eq!(
                bits(&trimmed_mean(updates.view(), 0.2).unwrap()),
                bits(&trimmed_mean(permuted.view(), 0.2).unwrap())
            );
            // With f = 0 Bulyan chooses every update, so only its order-independent coordinate step matters.
            prop_assert_eq!(bits(&bulyan(updates.view(), 0).unwrap()), bits(&bulyan(permuted.view(), 0).unwrap()));
        }

        #[test]
        fn krum_ignores_row_order_without_score_ties((updates, permutation) in matrix_and_permutation()) {
            let n = updates.nrows();
            let active: Vec<usize> = (0..n).collect();
            let scores = krum_scores(&pairwise_squared_distances(updates.view()), n, &active, n - 2);
            let order = rank(&scores);
            // Ties are broken by index, which a permutation changes: only distinct leading scores are compared.
            prop_assume!(scores[order[0]] < scores[order[1]]);
            prop_assume!(scores[order[1]] < scores[order[2]]);
            let permuted = updates.select(Axis(0), &permutation);
            let weights = vec![1.0; n];
            let permuted_weights: Vec<f64> = permutation.iter().map(|&i| weights[i]).collect();
            prop_assert_eq!(bits(&krum(updates.view(), 0).unwrap()), bits(&krum(permuted.view(), 0).unwrap()));
            prop_assert_eq!(
                bits(&multi_krum(updates.view(), &weights, 0, 2).unwrap()),
                bits(&multi_krum(permuted.view(), &permuted_weights, 0, 2).unwrap())
            );
        }

        #[test]
        fn every_rule_is_reproducible((updates, _) in matrix_and_permutation()) {
            let (n, p) = updates.dim();
            let view = updates.view();
            let weights: Vec<f64> = (1..=n).map(|i| i as f64).collect();
            let server: Vec<f32> = (0..p).map(|j| j as f32 - 1.0).collect();
            let runs = || {
                let mut bounded = updates.row(0).to_vec();
                norm_bound(&mut bounded, 1.0).unwrap();
                [
                    coordinate_median(view).unwrap(),
                    trimmed_mean(view, 0.2).unwrap(),
                    krum(view, 0).unwrap(),
                    multi_krum(view, &weights, 0, 2).unwrap(),
                    bulyan(view, 0).unwrap(),
                    bounded,
                    centered_clipping(view, &vec![0.0; p], 10.0, 3).unwrap(),
                    fltrust(view, &server).unwrap(),
                ]
                .map(|result| bits(&result))
            };
            prop_assert_eq!(runs(), runs());
        }
    }
}
