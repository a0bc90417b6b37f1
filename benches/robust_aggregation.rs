//! Robust aggregation cost: every rule of a study's `[aggregation]` table over 20 updates of 1M parameters, through
//! the same dispatcher a round uses, with FedAvg measured in the same run as the baseline; plus anomaly scoring and
//! one server-optimiser step (`cargo bench --profile dev --bench robust_aggregation`).
//!
//! Each figure includes what the rule costs a round beyond reading its inputs: sorting by PDC id and, for the rules
//! that need every update at once, copying them into one contiguous matrix. Krum, Multi-Krum and Bulyan compute all
//! pairwise distances, O(n²·d); the others are O(n·d) or O(n·log n·d).

// criterion's macros generate public functions without docs.
#![allow(missing_docs)]

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use pdc_coordinator::aggregation::anomaly::{AnomalyConfig, score_updates};
use pdc_coordinator::aggregation::optimizer::{ServerOptimizer, ServerOptimizerSpec};
use pdc_coordinator::aggregation::rule::{AggregationConfig, aggregate};

const N_UPDATES: usize = 20;
const N_PARAMETERS: usize = 1_000_000;

fn updates() -> Vec<Vec<f32>> {
    // A cheap deterministic pattern that differs per update, so that sorts and distances do real work.
    (0..N_UPDATES)
        .map(|u| (0..N_PARAMETERS).map(|i| ((i * 31 + u * 17 + i * u * 7) % 1000) as f32 * 1e-3 - 0.5).collect())
        .collect()
}

fn robust_aggregation(c: &mut Criterion) {
    let owned = updates();
    let ids: Vec<String> = (0..N_UPDATES).map(|u| format!("pdc-{u:02}")).collect();
    let rows: Vec<(&str, f64, &[f32])> = ids
        .iter()
        .zip(&owned)
        .enumerate()
        .map(|(u, (id, delta))| (id.as_str(), (u + 1) as f64, delta.as_slice()))
        .collect();
    let server: Vec<f32> = (0..N_PARAMETERS).map(|i| ((i * 13) % 1000) as f32 * 1e-3 - 0.5).collect();

    let mut group = c.benchmark_group("robust_20x1M");
    group.sample_size(10);
    // f = 4 Byzantine updates of 20 (20%): within Krum's 2f + 3 and Bulyan's 4f + 3.
    for (name, table) in [
        ("fedavg", "rule = \"fedavg\""),
        ("median", "rule = \"median\""),
        ("trimmed_mean", "rule = \"trimmed_mean\"\nbeta = 0.2"),
        ("krum", "rule = \"krum\"\nf = 4"),
        ("multi_krum", "rule = \"multi_krum\"\nf = 4"),
        ("bulyan", "rule = \"bulyan\"\nf = 4"),
        ("fltrust", "rule = \"fltrust\""),
        ("centered_clipping", "rule = \"centered_clipping\"\ntau = 10.0\niterations = 3"),
        ("norm_bound", "rule = \"norm_bound\"\nmax_norm = 100.0"),
    ] {
        let config: AggregationConfig = toml::from_str(table).unwrap();
        config.validate(N_UPDATES).unwrap();
        group.bench_function(name, |b| b.iter(|| black_box(aggregate(&config, &rows, Some(&server)).unwrap())));
    }

    // Anomaly scores need the matrix too: time them on one, as `aggregate_round` does.
    let mut values = Vec::with_capacity(N_UPDATES * N_PARAMETERS);
    owned.iter().for_each(|update| values.extend_from_slice(update));
    let matrix = ndarray::Array2::from_shape_vec((N_UPDATES, N_PARAMETERS), values).unwrap();
    let anomaly = AnomalyConfig::default();
    let weights: Vec<f64> = (1..=N_UPDATES).map(|u| u as f64).collect();
    group.bench_function("anomaly_scores", |b| {
        b.iter(|| black_box(score_updates(&anomaly, matrix.view(), &weights).unwrap()))
    });

    let spec = ServerOptimizerSpec::FedAdam {
        learning_rate: 0.1,
        beta_1: 0.9,
        beta_2: 0.99,
        tau: 1e-9,
        bias_correction: true,
    };
    let mut optimizer = ServerOptimizer::new(spec, N_PARAMETERS).unwrap();
    let mut global = vec![0.0f32; N_PARAMETERS];
    group.bench_function("fedadam_step", |b| b.iter(|| optimizer.step(black_box(&mut global), &owned[0]).unwrap()));
    group.finish();
}

criterion_group!(benches, robust_aggregation);
criterion_main!(benches);
