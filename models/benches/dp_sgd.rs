//! DP-SGD throughput (examples/s, noise included) beside non-private burn-autodiff training of the same model in the
//! same run, and exact (OpenDP) against fast Gaussian noise (`cargo bench --profile dev -p pdc-models --bench dp_sgd`).
//!
//! Each training iteration is one epoch over 4,096 standardised synthetic rows with 30 features at batch size 64:
//! 64 steps of exactly 64 rows for `train_local`, and 64 Poisson-sampled steps of 64 rows in expectation for
//! `train_dp` (σ = 1.1, C = 1, fast noise), so both process 4,096 examples per iteration in expectation.

// criterion's macros generate public functions without docs.
#![allow(missing_docs)]

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use pdc_models::{
    Dataset, DpTrainConfig, ModelKind, ModelSpec, NoiseMode, Standardizer, SyntheticConfig, Task, TrainConfig,
    synthetic, train_dp, train_local,
};
use pdc_privacy::GaussianNoise;

const N_ROWS: usize = 4096;
const N_FEATURES: usize = 30;
const BATCH_SIZE: usize = 64;

fn data() -> Dataset {
    let mut data = synthetic(&SyntheticConfig { n_rows: N_ROWS, n_features: N_FEATURES, positive_rate: 0.3, seed: 5 });
    Standardizer::fit(&data).apply(&mut data).unwrap();
    data
}

fn training(c: &mut Criterion) {
    let data = data();
    let non_private = TrainConfig { epochs: 1, batch_size: BATCH_SIZE, learning_rate: 0.05, seed: 1, proximal_mu: 0.0 };
    let private = DpTrainConfig {
        epochs: 1,
        expected_batch_size: BATCH_SIZE,
        learning_rate: 0.05,
        clip_norm: 1.0,
        noise_multiplier: 1.1,
        noise_mode: NoiseMode::Fast,
        sampling_seed: None,
        proximal_mu: 0.0,
    };
    let models = [
        ("mlp_32_16", ModelKind::Mlp { hidden: vec![32, 16] }),
        ("logistic_regression", ModelKind::LogisticRegression),
    ];
    for (name, kind) in models {
        let spec = ModelSpec { kind, n_features: N_FEATURES, task: Task::BinaryClassification };
        let initial = spec.init_parameters(3);
        let mut group = c.benchmark_group(format!("train_epoch_{name}_batch_{BATCH_SIZE}"));
        group.throughput(Throughput::Elements(N_ROWS as u64));
        group.sample_size(20);
        group.bench_function("burn_autodiff_sgd", |b| {
            b.iter(|| black_box(train_local(&spec, &initial, &data, &non_private).unwrap()))
        });
        group.bench_function("dp_sgd_fast_noise", |b| {
            b.iter(|| black_box(train_dp(&spec, &initial, &data, &private).unwrap()))
        });
        group.finish();
    }
}

fn noise(c: &mut Criterion) {
    // One gradient of the MLP above: 30·32 + 32 + 32·16 + 16 + 16 + 1 parameters.
    let n_values = 1537;
    let mut group = c.benchmark_group(format!("gaussian_noise_{n_values}_values"));
    group.throughput(Throughput::Elements(n_values as u64));
    let mut values = vec![0.0f32; n_values];
    let mut fast = GaussianNoise::new(1.1).unwrap();
    group.bench_function("fast_chacha20_ziggurat", |b| {
        b.iter(|| {
            fast.add_to(&mut values);
            black_box(&values);
        })
    });
    group.sample_size(10);
    group.bench_function("exact_opendp", |b| {
        b.iter(|| {
            pdc_privacy::add_exact(&mut values, 1.1).unwrap();
            black_box(&values);
        })
    });
    group.finish();
}

criterion_group!(benches, training, noise);
criterion_main!(benches);
