//! Full audits (`pdc_ledger::audit::verify_store`) of ledgers with a realistic mix of entries, in memory and on
//! RocksDB, beside two baselines measured in the same run: re-deriving the Merkle tree alone, which every audit
//! must do, and one strict Ed25519 verification, which it does per signature
//! (`cargo bench --profile dev -p pdc-ledger --bench audit`).
//!
//! The ledger: 10 hospitals with real Ed25519 keys, each round a `RoundOpened`, 10 signed contributions, 10
//! privacy spends, the aggregation, utility scores, the rewards' allotment and 10 payments (34 entries, 10 of
//! them signed), sealed by a checkpoint signed by the log and co-signed by one witness.

// criterion's macros generate public functions without docs.
#![allow(missing_docs)]

use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use pdc_ledger::audit::{self, AuditKeys};
use pdc_ledger::checkpoint::Checkpoint;
use pdc_ledger::entry::{Entry, Role};
use pdc_ledger::merkle::{self, MerkleTree};
use pdc_ledger::signing::{self, ConsentAction, Contribution};
use pdc_ledger::store::{MemoryStore, RocksDbStore, Store};
use pdc_ledger::{Identity, sha3_256};

const ORIGIN: &str = "bench/ledger/sha3-256";
const LOG_KEY: &str = "bench/log";
const WITNESS_KEY: &str = "bench/witness";
const N_HOSPITALS: usize = 10;
const STUDY: &str = "bench-study";

fn keys() -> AuditKeys {
    AuditKeys {
        origin: ORIGIN.into(),
        log_key_name: LOG_KEY.into(),
        log_key: Identity::from_seed([1; 32]).public_key(),
        witnesses: vec![(WITNESS_KEY.into(), Identity::from_seed([2; 32]).public_key())],
        quorum: 1,
    }
}

/// Fills `store` with the study until it holds at least `target` entries.
fn fill(store: &mut dyn Store, target: u64) {
    let log = Identity::from_seed([1; 32]);
    let witness = Identity::from_seed([2; 32]);
    let hospitals: Vec<(String, Identity)> =
        (0..N_HOSPITALS).map(|i| (format!("hospital-{i}"), Identity::from_seed([10 + i as u8; 32]))).collect();
    let manifest_hash = sha3_256(b"bench manifest");
    let mut setup = vec![Entry::StudyCreated { study_id: STUDY.into(), manifest_hash }];
    for (pdc_id, identity) in &hospitals {
        setup.push(Entry::MemberRegistered {
            pdc_id: pdc_id.clone(),
            role: Role::Hospital,
            public_key: identity.public_key().to_bytes(),
        });
        setup.push(Entry::BudgetDeclared { pdc_id: pdc_id.clone(), dataset: "icu".into(), epsilon: 1e9, delta: 1e-5 });
        let message = signing::consent_message(ConsentAction::Grant, STUDY, &manifest_hash);
        setup.push(Entry::ConsentGranted {
            study_id: STUDY.into(),
            pdc_id: pdc_id.clone(),
            manifest_hash,
            signature: identity.sign(&message),
            conditions: None,
        });
    }
    let mut previous = [0; 32];
    let mut batch = setup;
    for round in 1u32.. {
        if store.size() >= target {
            break;
        }
        batch.push(Entry::RoundOpened {
            study_id: STUDY.into(),
            round,
            participants: hospitals.iter().map(|(id, _)| id.clone()).collect(),
            model_hash: sha3_256(&round.to_le_bytes()),
        });
        for (pdc_id, identity) in &hospitals {
            let contribution = Contribution {
                study_id: STUDY.into(),
                round,
                pdc_id: pdc_id.clone(),
                n_examples: 1000,
                n_parameters: 1 << 20,
                update_hash: sha3_256(format!("{round} {pdc_id}").as_bytes()),
                train_loss: 0.5,
                privacy: None,
            };
            let signature = identity.sign(&contribution.signing_bytes());
            batch.push(Entry::ContributionAccepted { contribution, signature });
            batch.push(Entry::PrivacySpent {
                study_id: STUDY.into(),
                round,
                pdc_id: pdc_id.clone(),
                epsilon: f64::from(round) * 0.01,
                delta: 1e-6,
            });
        }
        batch.push(Entry::RoundAggregated {
            study_id: STUDY.into(),
            round,
            model_hash: sha3_256(&(round + 1).to_le_bytes()),
            contributors: hospitals.iter().map(|(id, _)| id.clone()).collect(),
            metrics: vec![("loss".into(), 0.3), ("auroc".into(), 0.8)],
        });
        batch.push(Entry::UtilityScores {
            study_id: STUDY.into(),
            round,
            scores: hospitals.iter().map(|(id, _)| (id.clone(), 0.1)).collect(),
            method: "gtg-shapley".into(),
            seed: u64::from(round),
        });
        batch.push(Entry::RewardsAllotted { study_id: STUDY.into(), round, budget: 100.0, carried_over: false });
        for (pdc_id, _) in &hospitals {
            batch.push(Entry::RewardPaid { study_id: STUDY.into(), round, pdc_id: pdc_id.clone(), amount: 10.0 });
        }
        let bytes: Vec<Vec<u8>> = batch.drain(..).map(|entry| entry.encode()).collect();
        store.append(&bytes).unwrap();
        let size = store.size();
        let checkpoint = Checkpoint {
            origin: ORIGIN.into(),
            size,
            root: store.root().unwrap(),
            previous,
            timestamp_ms: u64::from(round),
        };
        let mut signed = checkpoint.sign(LOG_KEY, &log).unwrap();
        signed.add_signature(WITNESS_KEY, &witness).unwrap();
        store.put_checkpoint(size, signed.to_note().as_bytes()).unwrap();
        previous = checkpoint.note_hash();
    }
}

fn audit(c: &mut Criterion) {
    let keys = keys();
    let mut group = c.benchmark_group("audit");
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(20));

    // Second baseline: one strict Ed25519 verification, which the audit does for every signed entry and for each
    // checkpoint's log and witness signatures.
    let identity = Identity::from_seed([3; 32]);
    let (message, signature, public_key) =
        (b"a contribution".to_vec(), identity.sign(b"a contribution"), identity.public_key());
    group.bench_function("ed25519_verify_strict_baseline", |b| {
        b.iter(|| public_key.verify(&message, &signature, "bench").unwrap())
    });

    // A million entries when measuring; a small ledger when the suite only checks that the bench runs
    // (`cargo test`/nextest pass no `--bench`; `cargo bench -- --test` passes `--test`), so the test suite does not
    // spend minutes building ledgers.
    let measuring = std::env::args().any(|arg| arg == "--bench") && !std::env::args().any(|arg| arg == "--test");
    let entries = if measuring { 1_000_000 } else { 10_000 };
    let mut memory = MemoryStore::new();
    fill(&mut memory, entries);
    let size = memory.size();
    assert!(audit::verify_store(&memory, &keys).passed());
    group.throughput(Throughput::Elements(size));

    // Baseline: re-deriving the tree from the entries, the least any audit does.
    group.bench_function(format!("rederive_tree_baseline_{size}"), |b| {
        b.iter(|| {
            let tree: MerkleTree = (0..size).map(|i| merkle::leaf_hash(&memory.entry(i).unwrap())).collect();
            tree.root()
        })
    });
    group.bench_function(format!("verify_store_memory_{size}"), |b| b.iter(|| audit::verify_store(&memory, &keys)));
    drop(memory);

    let dir = tempfile::tempdir().unwrap();
    let mut rocks = RocksDbStore::open(dir.path()).unwrap();
    fill(&mut rocks, entries);
    drop(rocks);
    let rocks = RocksDbStore::open_for_audit(dir.path()).unwrap();
    group.throughput(Throughput::Elements(rocks.size()));
    group.bench_function(format!("verify_store_rocksdb_{}", rocks.size()), |b| {
        b.iter(|| audit::verify_store(&rocks, &keys))
    });
    group.finish();
}

criterion_group!(benches, audit);
criterion_main!(benches);
