//! Tamper detection: flipping any one byte of a stored entry, node or checkpoint of a RocksDB ledger makes the
//! audit fail and name the damaged entry's index (or the checkpoint's size).

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rocksdb::{DB, IteratorMode, Options};

use pdc_ledger::audit::{self, Rule};
use pdc_ledger::store::{COLUMN_FAMILIES, RocksDbStore};

use crate::support::*;

/// What a flipped byte damaged, and so what the report must name.
#[derive(Debug)]
enum Target {
    Entry(u64),
    Node { level: u32, index: u64 },
    Checkpoint(u64),
}

#[test]
fn every_flipped_byte_is_reported_with_its_index() {
    let dir = tempfile::tempdir().expect("temp dir");
    {
        let mut store = RocksDbStore::open(dir.path()).expect("open");
        write_study(&mut store);
    }
    let pristine = audit::verify_store(&RocksDbStore::open_for_audit(dir.path()).expect("audit open"), &keys());
    assert!(pristine.passed(), "{pristine}");

    // The tests hold the database open underneath the store, as an intruder with disk access might, and audit
    // through a second, read-only handle that sees each change.
    let db = DB::open_cf(&Options::default(), dir.path(), COLUMN_FAMILIES).expect("raw open");
    let records = |family: &str| -> Vec<(Vec<u8>, Vec<u8>)> {
        let cf = db.cf_handle(family).expect("family");
        db.iterator_cf(cf, IteratorMode::Start)
            .map(|item| item.expect("read"))
            .map(|(k, v)| (k.into(), v.into()))
            .collect()
    };
    let families =
        [("entries", records("entries")), ("nodes", records("nodes")), ("checkpoints", records("checkpoints"))];
    assert!(families.iter().all(|(_, records)| !records.is_empty()));

    let mut rng = StdRng::seed_from_u64(0x7a3e_5eed);
    let mut seen = [0usize; 3];
    for trial in 0..240 {
        let which = match rng.random_range(0..10) {
            0..4 => 0,
            4..8 => 1,
            _ => 2,
        };
        seen[which] += 1;
        let (family, records) = &families[which];
        let (key, value) = &records[rng.random_range(0..records.len())];
        let position = rng.random_range(0..value.len());
        let mask: u8 = rng.random_range(1..=255);
        let target = match which {
            0 => Target::Entry(u64::from_be_bytes(key[..].try_into().expect("entry key"))),
            1 => Target::Node {
                level: u32::from(key[0]),
                index: u64::from_be_bytes(key[1..].try_into().expect("node key")),
            },
            _ => Target::Checkpoint(u64::from_be_bytes(key[..].try_into().expect("checkpoint key"))),
        };

        let cf = db.cf_handle(family).expect("family");
        let mut damaged = value.clone();
        damaged[position] ^= mask;
        db.put_cf(cf, key, &damaged).expect("damage");
        let report = audit::verify_store(&RocksDbStore::open_for_audit(dir.path()).expect("audit open"), &keys());
        db.put_cf(cf, key, value).expect("repair");

        let context = format!("trial {trial}: {target:?}, byte {position} ^ {mask:#04x}\n{report}");
        assert!(!report.passed(), "{context}");
        let named = match target {
            Target::Entry(index) => report.failures_of(Rule::LeafMismatch).any(|f| f.entries == [index]),
            Target::Node { level: 0, index } => report.failures_of(Rule::LeafMismatch).any(|f| f.entries == [index]),
            Target::Node { level, index } => {
                report.failures_of(Rule::NodeMismatch).any(|f| f.entries == [index << level])
            }
            Target::Checkpoint(size) => report.failures.iter().any(|f| f.checkpoints.contains(&size)),
        };
        assert!(named, "{context}");
        // A damaged node or entry is reported once, where the damage is, not at every node above it.
        if !matches!(target, Target::Checkpoint(_)) {
            let integrity =
                report.failures_of(Rule::LeafMismatch).count() + report.failures_of(Rule::NodeMismatch).count();
            assert_eq!(integrity, 1, "{context}");
        }
    }
    assert!(seen.iter().all(|&count| count >= 20), "{seen:?}");

    // Every repair put the original bytes back.
    drop(db);
    let repaired = audit::verify_store(&RocksDbStore::open(dir.path()).expect("reopen"), &keys());
    assert!(repaired.passed(), "{repaired}");
}

#[test]
fn missing_records_are_reported_by_the_audit_and_the_read_only_store_refuses_writes() {
    use pdc_ledger::store::{Store, StoreError};

    let dir = tempfile::tempdir().expect("temp dir");
    {
        let mut store = RocksDbStore::open(dir.path()).expect("open");
        write_study(&mut store);
    }
    {
        let db = DB::open_cf(&Options::default(), dir.path(), COLUMN_FAMILIES).expect("raw open");
        db.delete_cf(db.cf_handle("entries").expect("family"), 9u64.to_be_bytes()).expect("delete");
        let mut node = vec![2u8];
        node.extend_from_slice(&3u64.to_be_bytes());
        db.delete_cf(db.cf_handle("nodes").expect("family"), node).expect("delete");
    }
    assert!(matches!(RocksDbStore::open(dir.path()), Err(StoreError::Corrupt { index: Some(9), .. })));

    let mut store = RocksDbStore::open_for_audit(dir.path()).expect("audit open");
    let report = audit::verify_store(&store, &keys());
    assert!(report.failures_of(Rule::EntryUnreadable).any(|f| f.entries == [9]), "{report}");
    assert!(report.failures_of(Rule::NodeMismatch).any(|f| f.entries == [12]), "{report}");
    assert_eq!(report.failures_of(Rule::LeafMismatch).count(), 0, "{report}");

    assert!(matches!(store.append(&[b"x".to_vec()]), Err(StoreError::ReadOnly)));
    assert!(matches!(store.put_checkpoint(1, b"x"), Err(StoreError::ReadOnly)));
    assert!(matches!(store.put_meta("k", b"v"), Err(StoreError::ReadOnly)));
}
