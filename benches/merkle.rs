//! Merkle proofs at one million entries: inclusion-proof generation and verification, consistency proofs, beside
//! the cost of one SHA3-256 node hash measured in the same run (`cargo bench --profile dev --bench merkle`).

// criterion's macros generate public functions without docs.
#![allow(missing_docs)]

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use pdc_ledger::merkle::{MerkleTree, leaf_hash, node_hash, verify_consistency, verify_inclusion};

const N_ENTRIES: u64 = 1_000_000;

fn merkle(c: &mut Criterion) {
    let tree: MerkleTree = (0..N_ENTRIES).map(|i| leaf_hash(&i.to_le_bytes())).collect();
    let root = tree.root();
    let mut group = c.benchmark_group("merkle_1M");

    // Baseline: one interior node hash; a proof at 1M entries costs about 20 of them to verify.
    let (left, right) = (leaf_hash(b"left"), leaf_hash(b"right"));
    group.bench_function("node_hash_baseline", |b| b.iter(|| black_box(node_hash(&left, &right))));

    // Indices spread over the tree so no single path stays in cache.
    let mut index = 0u64;
    group.bench_function("inclusion_proof", |b| {
        b.iter(|| {
            index = (index + 7_919) % N_ENTRIES;
            black_box(tree.inclusion_proof(index).unwrap())
        })
    });

    let proofs: Vec<(u64, Vec<_>)> =
        (0..64u64).map(|i| i * 15_601 % N_ENTRIES).map(|i| (i, tree.inclusion_proof(i).unwrap())).collect();
    let mut next = 0;
    group.bench_function("verify_inclusion", |b| {
        b.iter(|| {
            next = (next + 1) % proofs.len();
            let (index, proof) = &proofs[next];
            let leaf = tree.leaf_hashes()[*index as usize];
            verify_inclusion(*index, N_ENTRIES, &leaf, proof, &root).unwrap()
        })
    });

    let old_size = N_ENTRIES - 12_345;
    let old_root = tree.root_at(old_size).unwrap();
    let consistency = tree.consistency_proof(old_size).unwrap();
    group.bench_function("consistency_proof", |b| b.iter(|| black_box(tree.consistency_proof(old_size).unwrap())));
    group.bench_function("verify_consistency", |b| {
        b.iter(|| verify_consistency(old_size, N_ENTRIES, &old_root, &root, &consistency).unwrap())
    });
    group.finish();
}

criterion_group!(benches, merkle);
criterion_main!(benches);
