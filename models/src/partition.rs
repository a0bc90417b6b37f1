//! Seeded splits of one dataset: IID and label-skewed (Dirichlet) shards for simulated PDCs, and
//! a stratified train/validation split.

use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Gamma};

use crate::{Dataset, Error, Result};

/// Every part of a partition gets at least this many rows, so that each PDC can train and
/// evaluate.
pub const MIN_ROWS_PER_PART: usize = 2;

/// Splits `data` into `n_parts` shards of near-equal size (differing by at most one row) from a
/// seeded shuffle. Each shard keeps its rows in their original order.
///
/// Fails if `n_parts` is 0 or there are fewer than `n_parts x` [`MIN_ROWS_PER_PART`] rows.
pub fn partition_iid(data: &Dataset, n_parts: usize, seed: u64) -> Result<Vec<Dataset>> {
    check_partition_arguments(data, n_parts)?;
    let mut order: Vec<usize> = (0..data.n_rows()).collect();
    order.shuffle(&mut ChaCha8Rng::seed_from_u64(seed));
    let (base, extra) = (data.n_rows() / n_parts, data.n_rows() % n_parts);
    let mut rest = order.as_slice();
    let parts = (0..n_parts)
        .map(|part| {
            let (rows, tail) = rest.split_at(base + usize::from(part < extra));
            rest = tail;
            rows.to_vec()
        })
        .collect();
    Ok(subsets(data, parts))
}

/// Splits `data` into `n_parts` shards with label skew, the usual non-IID benchmark.
///
/// Rows are grouped into two classes: by label when every label is 0 or 1, otherwise below and
/// above the median label (by rank, so ties do not unbalance the halves). For each class, shard
/// proportions are drawn from a symmetric Dirichlet(`alpha`) and the class's shuffled rows are
/// cut accordingly: a small `alpha` (0.1) gives shards dominated by one class, a large one
/// (100) approaches IID. Shards that the draw leaves with fewer than [`MIN_ROWS_PER_PART`] rows
/// are then topped up with random rows from the currently largest shard, which softens the skew
/// only where a hospital would otherwise have (almost) no data. Each shard keeps its rows in
/// their original order.
///
/// Fails if `n_parts` is 0, there are fewer than `n_parts x` [`MIN_ROWS_PER_PART`] rows, or
/// `alpha` is not finite and positive.
pub fn partition_dirichlet(data: &Dataset, n_parts: usize, alpha: f64, seed: u64) -> Result<Vec<Dataset>> {
    check_partition_arguments(data, n_parts)?;
    if !(alpha.is_finite() && alpha > 0.0) {
        return Err(Error::InvalidArgument { name: "alpha", reason: format!("{alpha} is not finite and positive") });
    }
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut parts: Vec<Vec<usize>> = vec![Vec::new(); n_parts];
    for mut class_rows in label_classes(data) {
        class_rows.shuffle(&mut rng);
        let proportions = dirichlet(n_parts, alpha, &mut rng)?;
        let mut cumulative = 0.0;
        let mut start = 0;
        for (part, proportion) in parts.iter_mut().zip(proportions) {
            cumulative += proportion;
            // Rounding the cumulative share, not each share, makes the cuts add up exactly.
            let end = ((cumulative * class_rows.len() as f64).round() as usize).clamp(start, class_rows.len());
            part.extend_from_slice(&class_rows[start..end]);
            start = end;
        }
        // Floating-point shortfall in the last cumulative share leaves no row behind.
        parts[n_parts - 1].extend_from_slice(&class_rows[start..]);
    }
    top_up_small_parts(&mut parts, &mut rng);
    Ok(subsets(data, parts))
}

/// Splits `data` into (train, validation) with about `validation_fraction` of the rows in
/// validation, from a seeded shuffle.
///
/// With binary labels the split is stratified: each class contributes the fraction of its own
/// rows (rounded), so both parts keep the class balance. Both parts keep their rows in the
/// original order. Fails if `validation_fraction` is not strictly between 0 and 1 or either part
/// would be empty.
pub fn train_validation_split(data: &Dataset, validation_fraction: f64, seed: u64) -> Result<(Dataset, Dataset)> {
    data.validate()?;
    if !(validation_fraction > 0.0 && validation_fraction < 1.0) {
        return Err(Error::InvalidArgument {
            name: "validation_fraction",
            reason: format!("{validation_fraction} is not strictly between 0 and 1"),
        });
    }
    let strata = if data.has_binary_labels() {
        let [negatives, positives] = binary_classes(data);
        vec![negatives, positives]
    } else {
        vec![(0..data.n_rows()).collect()]
    };
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut train = Vec::new();
    let mut validation = Vec::new();
    for mut rows in strata {
        rows.shuffle(&mut rng);
        let n_validation = (rows.len() as f64 * validation_fraction).round() as usize;
        validation.extend_from_slice(&rows[..n_validation]);
        train.extend_from_slice(&rows[n_validation..]);
    }
    if train.is_empty() || validation.is_empty() {
        return Err(Error::InvalidArgument {
            name: "validation_fraction",
            reason: format!(
                "{validation_fraction} of {} rows leaves the {} part empty",
                data.n_rows(),
                if train.is_empty() { "training" } else { "validation" }
            ),
        });
    }
    train.sort_unstable();
    validation.sort_unstable();
    Ok((data.subset(&train), data.subset(&validation)))
}

fn check_partition_arguments(data: &Dataset, n_parts: usize) -> Result<()> {
    data.validate()?;
    if n_parts == 0 {
        return Err(Error::InvalidArgument { name: "n_parts", reason: "must be at least 1".to_owned() });
    }
    let needed = n_parts.saturating_mul(MIN_ROWS_PER_PART);
    if data.n_rows() < needed {
        return Err(Error::InvalidArgument {
            name: "n_parts",
            reason: format!(
                "{n_parts} parts of at least {MIN_ROWS_PER_PART} rows need {needed} rows; the data has {}",
                data.n_rows()
            ),
        });
    }
    Ok(())
}

/// The row indices of each label class: 0 and 1 for binary labels, else the lower and upper
/// halves by label rank.
fn label_classes(data: &Dataset) -> Vec<Vec<usize>> {
    if data.has_binary_labels() {
        return binary_classes(data).into();
    }
    let mut by_label: Vec<usize> = (0..data.n_rows()).collect();
    by_label.sort_by(|&a, &b| data.labels[a].total_cmp(&data.labels[b]).then(a.cmp(&b)));
    let upper = by_label.split_off(by_label.len() / 2);
    vec![by_label, upper]
}

fn binary_classes(data: &Dataset) -> [Vec<usize>; 2] {
    let (positives, negatives): (Vec<usize>, Vec<usize>) = (0..data.n_rows()).partition(|&row| data.labels[row] == 1.0);
    [negatives, positives]
}

/// A draw from the symmetric Dirichlet(`alpha`) distribution on `n` categories.
///
/// Normalised Gamma(`alpha`) draws, taken in log space: for `alpha < 1` a Gamma draw is
/// `Gamma(alpha + 1) * U^(1 / alpha)`, which underflows to 0 in linear space for small `alpha`,
/// while the log stays finite and the normalisation exact.
fn dirichlet(n: usize, alpha: f64, rng: &mut impl Rng) -> Result<Vec<f64>> {
    let (shape, boost) = if alpha < 1.0 { (alpha + 1.0, true) } else { (alpha, false) };
    let gamma =
        Gamma::new(shape, 1.0).map_err(|error| Error::InvalidArgument { name: "alpha", reason: error.to_string() })?;
    let log_draws: Vec<f64> = (0..n)
        .map(|_| {
            let draw: f64 = gamma.sample(rng);
            let mut log_draw = draw.ln();
            if boost {
                // 1 - [0, 1) is (0, 1], so the logarithm is finite.
                let uniform = 1.0 - rng.random::<f64>();
                log_draw += uniform.ln() / alpha;
            }
            log_draw
        })
        .collect();
    let max = log_draws.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let weights: Vec<f64> = log_draws.iter().map(|log_draw| (log_draw - max).exp()).collect();
    let total: f64 = weights.iter().sum();
    Ok(weights.iter().map(|weight| weight / total).collect())
}

/// Moves random rows from the largest part to each part below [`MIN_ROWS_PER_PART`].
fn top_up_small_parts(parts: &mut [Vec<usize>], rng: &mut impl Rng) {
    while let Some(small) = parts.iter().position(|rows| rows.len() < MIN_ROWS_PER_PART) {
        // The caller guarantees `n_parts x MIN_ROWS_PER_PART` rows, so the largest part has
        // more than the minimum whenever another has less.
        let Some(largest) = (0..parts.len()).max_by_key(|&part| (parts[part].len(), std::cmp::Reverse(part))) else {
            break;
        };
        let taken = rng.random_range(0..parts[largest].len());
        let row = parts[largest].swap_remove(taken);
        parts[small].push(row);
    }
}

fn subsets(data: &Dataset, parts: Vec<Vec<usize>>) -> Vec<Dataset> {
    parts
        .into_iter()
        .map(|mut rows| {
            rows.sort_unstable();
            data.subset(&rows)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::{SyntheticConfig, synthetic};

    fn data(n_rows: usize, positive_rate: f64) -> Dataset {
        synthetic(&SyntheticConfig { n_rows, n_features: 3, positive_rate, seed: 9 })
    }

    /// Every row of `data` appears in exactly one part.
    fn assert_is_partition(data: &Dataset, parts: &[Dataset]) {
        assert_eq!(parts.iter().map(Dataset::n_rows).sum::<usize>(), data.n_rows());
        let mut rows: Vec<(Vec<u32>, u32)> = parts
            .iter()
            .flat_map(|part| {
                (0..part.n_rows())
                    .map(move |row| (part.row(row).iter().map(|v| v.to_bits()).collect(), part.labels[row].to_bits()))
            })
            .collect();
        let mut expected: Vec<(Vec<u32>, u32)> = (0..data.n_rows())
            .map(|row| (data.row(row).iter().map(|v| v.to_bits()).collect(), data.labels[row].to_bits()))
            .collect();
        rows.sort();
        expected.sort();
        assert_eq!(rows, expected);
    }

    #[test]
    fn iid_parts_are_balanced_and_deterministic() {
        let data = data(103, 0.3);
        let parts = partition_iid(&data, 5, 1).unwrap();
        let sizes: Vec<usize> = parts.iter().map(Dataset::n_rows).collect();
        assert_eq!(sizes, vec![21, 21, 21, 20, 20]);
        assert_is_partition(&data, &parts);
        assert_eq!(parts, partition_iid(&data, 5, 1).unwrap());
        assert_ne!(parts, partition_iid(&data, 5, 2).unwrap());
    }

    #[test]
    fn small_alpha_skews_labels_and_large_alpha_does_not() {
        let data = data(2000, 0.4);
        let positive_shares = |alpha: f64| -> Vec<f64> {
            let parts = partition_dirichlet(&data, 5, alpha, 3).unwrap();
            assert_is_partition(&data, &parts);
            assert!(parts.iter().all(|part| part.n_rows() >= MIN_ROWS_PER_PART));
            parts.iter().map(|part| part.positive_count() as f64 / part.n_rows() as f64).collect()
        };
        let skewed = positive_shares(0.1);
        let spread = |shares: &[f64]| {
            shares.iter().copied().fold(f64::MIN, f64::max) - shares.iter().copied().fold(f64::MAX, f64::min)
        };
        assert!(spread(&skewed) > 0.5, "{skewed:?}");
        let mixed = positive_shares(1000.0);
        assert!(spread(&mixed) < 0.1, "{mixed:?}");
    }

    #[test]
    fn tiny_alpha_still_gives_every_part_rows() {
        let data = data(40, 0.5);
        for seed in 0..20 {
            let parts = partition_dirichlet(&data, 10, 1e-3, seed).unwrap();
            assert_is_partition(&data, &parts);
            assert!(parts.iter().all(|part| part.n_rows() >= MIN_ROWS_PER_PART));
        }
    }

    #[test]
    fn regression_labels_are_skewed_by_median_halves() {
        let mut data = data(400, 0.5);
        for (row, label) in data.labels.iter_mut().enumerate() {
            *label = row as f32;
        }
        let parts = partition_dirichlet(&data, 4, 0.05, 5).unwrap();
        assert_is_partition(&data, &parts);
        let upper_shares: Vec<f64> = parts
            .iter()
            .map(|part| part.labels.iter().filter(|&&l| l >= 200.0).count() as f64 / part.n_rows() as f64)
            .collect();
        assert!(upper_shares.iter().any(|share| !(0.1..=0.9).contains(share)), "{upper_shares:?}");
    }

    #[test]
    fn partition_arguments_are_checked() {
        let data = data(10, 0.5);
        assert!(partition_iid(&data, 0, 0).is_err());
        let error = partition_iid(&data, 6, 0).unwrap_err().to_string();
        assert_eq!(error, "invalid n_parts: 6 parts of at least 2 rows need 12 rows; the data has 10");
        assert!(partition_dirichlet(&data, 6, 1.0, 0).is_err());
        for alpha in [0.0, -1.0, f64::NAN, f64::INFINITY] {
            let error = partition_dirichlet(&data, 2, alpha, 0).unwrap_err().to_string();
            assert!(error.starts_with("invalid alpha"), "{error}");
        }
    }

    #[test]
    fn the_split_is_stratified_and_deterministic() {
        let data = data(1000, 0.2);
        let (train, validation) = train_validation_split(&data, 0.25, 4).unwrap();
        assert_is_partition(&data, &[train.clone(), validation.clone()]);
        let [negatives, positives] = data.label_counts();
        assert_eq!(validation.positive_count(), (positives as f64 * 0.25).round() as usize);
        assert_eq!(validation.n_rows() - validation.positive_count(), (negatives as f64 * 0.25).round() as usize);
        assert_eq!((train, validation), train_validation_split(&data, 0.25, 4).unwrap());
    }

    #[test]
    fn split_arguments_are_checked() {
        let data = data(10, 0.5);
        for fraction in [0.0, 1.0, -0.1, f64::NAN] {
            let error = train_validation_split(&data, fraction, 0).unwrap_err().to_string();
            assert!(error.starts_with("invalid validation_fraction"), "{error}");
        }
        let error = train_validation_split(&data.subset(&[0]), 0.1, 0).unwrap_err().to_string();
        assert!(error.contains("leaves the validation part empty"), "{error}");
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn dirichlet_parts_always_cover_the_data(
            n_rows in 2usize..60,
            n_parts in 1usize..8,
            alpha in 0.01f64..10.0,
            seed in any::<u64>(),
        ) {
            prop_assume!(n_rows >= n_parts * MIN_ROWS_PER_PART);
            let data = data(n_rows, 0.3);
            let parts = partition_dirichlet(&data, n_parts, alpha, seed).unwrap();
            prop_assert_eq!(parts.len(), n_parts);
            prop_assert!(parts.iter().all(|part| part.n_rows() >= MIN_ROWS_PER_PART));
            assert_is_partition(&data, &parts);
        }
    }
}
