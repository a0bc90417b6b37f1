//! FedAvg throughput: 10 updates of 1M parameters, beside a plain memory-read baseline over the same bytes
//! measured in the same run (`cargo bench --bench aggregation`).

// criterion's macros generate public functions without docs.
#![allow(missing_docs)]

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use pdc_coordinator::aggregation::FedAvg;

const N_UPDATES: usize = 10;
const N_PARAMETERS: usize = 1_000_000;

fn updates() -> Vec<Vec<f32>> {
    // A cheap deterministic pattern: the values do not matter to the timing, only that they are not constant.
    (0..N_UPDATES)
        .map(|u| (0..N_PARAMETERS).map(|i| ((i * 31 + u * 17) % 1000) as f32 * 1e-3 - 0.5).collect())
        .collect()
}

fn aggregation(c: &mut Criterion) {
    let updates = updates();
    let bytes = (N_UPDATES * N_PARAMETERS * 4) as u64;
    let mut group = c.benchmark_group("fedavg_10x1M");
    group.throughput(Throughput::Bytes(bytes));
    group.sample_size(20);

    // Baseline: read every byte of every update once. A wrapping integer sum of the bit patterns vectorises
    // freely (a float sum would be bound by its fixed addition order), so this runs at memory speed: the floor
    // any aggregation that reads its inputs must pay.
    group.bench_function("memory_read_baseline", |b| {
        b.iter(|| {
            let mut total = 0u32;
            for update in &updates {
                total = update.iter().fold(total, |sum, value| sum.wrapping_add(value.to_bits()));
            }
            black_box(total)
        })
    });

    group.bench_function("fedavg_streaming", |b| {
        b.iter(|| {
            let mut average = FedAvg::new(N_PARAMETERS);
            for (index, update) in updates.iter().enumerate() {
                average.add((index + 1) as f64, update).unwrap();
            }
            black_box(average.finish().unwrap())
        })
    });
    group.finish();
}

criterion_group!(benches, aggregation);
criterion_main!(benches);
