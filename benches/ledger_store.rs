//! Durable ledger appends: the RocksDB store's synced batches against the disk's own floor, a 200-byte write plus
//! fsync of a plain file, measured in the same run (`cargo bench --profile dev --bench ledger_store`).

// criterion's macros generate public functions without docs.
#![allow(missing_docs)]

use std::io::Write;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use pdc_ledger::store::{RocksDbStore, Store};

const ENTRY_BYTES: usize = 200;

fn ledger_store(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let mut group = c.benchmark_group("ledger_append");
    group.sample_size(20);

    // Floor: one synced write of one entry's size to a plain file. A durable append cannot beat this per batch.
    let mut file = std::fs::File::create(dir.path().join("floor")).unwrap();
    group.throughput(Throughput::Elements(1));
    group.bench_function("file_write_fsync_baseline", |b| {
        b.iter(|| {
            file.write_all(&[7u8; ENTRY_BYTES]).unwrap();
            file.sync_data().unwrap();
        })
    });

    let mut store = RocksDbStore::open(dir.path().join("log")).unwrap();
    for batch in [1usize, 100] {
        let entries: Vec<Vec<u8>> = (0..batch).map(|i| vec![(i % 251) as u8; ENTRY_BYTES]).collect();
        group.throughput(Throughput::Elements(batch as u64));
        group.bench_function(format!("rocksdb_synced_batch_of_{batch}"), |b| {
            b.iter_batched(|| entries.clone(), |entries| store.append(&entries).unwrap(), BatchSize::SmallInput)
        });
    }
    group.finish();
}

criterion_group!(benches, ledger_store);
criterion_main!(benches);
