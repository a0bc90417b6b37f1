//! Durable appends per second through group commit (`pdc_ledger::log::SharedLog` over `RocksDbStore`) from 1 to
//! 64 concurrent threads, beside the disk's floor measured in the same run: a 200-byte write plus `fsync` of a
//! plain file (`cargo bench --profile dev -p pdc-ledger --bench group_commit`).

// criterion's macros generate public functions without docs.
#![allow(missing_docs)]

use std::io::Write;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use pdc_ledger::log::SharedLog;
use pdc_ledger::store::RocksDbStore;

const ENTRY_BYTES: usize = 200;

fn group_commit(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let mut group = c.benchmark_group("group_commit");
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(6));
    group.throughput(Throughput::Elements(1));

    // Floor: one synced write of one entry's size to a plain file. One durable write costs at least this.
    let mut file = std::fs::File::create(dir.path().join("floor")).unwrap();
    group.bench_function("file_write_fsync_baseline", |b| {
        b.iter(|| {
            file.write_all(&[7u8; ENTRY_BYTES]).unwrap();
            file.sync_data().unwrap();
        })
    });

    let log = SharedLog::new(Box::new(RocksDbStore::open(dir.path().join("log")).unwrap()));
    for threads in [1u64, 8, 32, 64] {
        let before = log.stats();
        group.bench_function(format!("shared_log_{threads}_threads"), |b| {
            b.iter_custom(|iters| {
                // `iters` appends, shared out over the threads; the spawn cost is inside the measurement and
                // makes the figure slightly pessimistic.
                let per_thread = iters.div_ceil(threads);
                let start = Instant::now();
                std::thread::scope(|scope| {
                    for thread in 0..threads {
                        let log = &log;
                        scope.spawn(move || {
                            for i in 0..per_thread {
                                let mut entry = vec![(thread % 251) as u8; ENTRY_BYTES];
                                entry[..8].copy_from_slice(&i.to_le_bytes());
                                log.append(entry).unwrap();
                            }
                        });
                    }
                });
                let elapsed = start.elapsed();
                elapsed.mul_f64(iters as f64 / (per_thread * threads) as f64)
            })
        });
        let after = log.stats();
        let (batches, entries) = (after.batches - before.batches, after.entries - before.entries);
        eprintln!(
            "{threads} threads: {entries} entries in {batches} synced writes, {:.1} entries per write",
            entries as f64 / batches.max(1) as f64
        );
    }
    group.finish();
    eprintln!("log size after the bench: {} entries", log.size());
}

criterion_group!(benches, group_commit);
criterion_main!(benches);
