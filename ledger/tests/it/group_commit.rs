//! Group commit on RocksDB: concurrent appenders get distinct, dense indices, and what was acknowledged is there
//! after a reopen.

use std::collections::BTreeMap;
use std::sync::Arc;

use pdc_ledger::audit;
use pdc_ledger::log::SharedLog;
use pdc_ledger::store::{RocksDbStore, Store};

use crate::support::*;

#[test]
fn concurrent_appends_are_dense_durable_and_checkpointable() {
    const THREADS: u64 = 32;
    const PER_THREAD: u64 = 40;
    let dir = tempfile::tempdir().expect("temp dir");
    let log = Arc::new(SharedLog::new(Box::new(RocksDbStore::open(dir.path()).expect("open"))));
    let handles: Vec<_> = (0..THREADS)
        .map(|thread| {
            let log = Arc::clone(&log);
            std::thread::spawn(move || {
                (0..PER_THREAD)
                    .map(|sequence| {
                        let bytes = format!("thread {thread} entry {sequence}").into_bytes();
                        (log.append(bytes.clone()).expect("append"), bytes)
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let mut written = BTreeMap::new();
    for handle in handles {
        for (index, bytes) in handle.join().expect("appender") {
            assert!(written.insert(index, bytes).is_none(), "index {index} given twice");
        }
    }
    assert_eq!(written.keys().copied().collect::<Vec<_>>(), (0..THREADS * PER_THREAD).collect::<Vec<_>>());

    // A batch appended together lands at consecutive indices.
    let range = log.append_all(vec![b"a".to_vec(), b"b".to_vec(), b"c".to_vec()]).expect("append all");
    assert_eq!(range, THREADS * PER_THREAD..THREADS * PER_THREAD + 3);
    assert_eq!(log.entry(range.start + 1).expect("entry"), b"b");

    let checkpoint = log.prepare_checkpoint(ORIGIN, 5).expect("prepare");
    assert_eq!((checkpoint.size, checkpoint.previous), (range.end, [0; 32]));
    log.put_checkpoint(&checkpoint.sign(LOG_KEY, &log_identity()).expect("sign")).expect("put");
    let next = log.prepare_checkpoint(ORIGIN, 1).expect("prepare");
    assert_eq!((next.previous, next.timestamp_ms), (checkpoint.note_hash(), 5), "chained; timestamps never fall");

    // A checkpoint whose root is not the log's is refused.
    let mut forged = checkpoint.clone();
    forged.size -= 1;
    assert!(log.put_checkpoint(&forged.sign(LOG_KEY, &log_identity()).expect("sign")).is_err());

    let log = Arc::into_inner(log).expect("sole owner");
    drop(log.into_inner());
    let store = RocksDbStore::open(dir.path()).expect("reopen");
    for (index, bytes) in &written {
        assert_eq!(&store.entry(*index).expect("entry"), bytes);
    }
    let keys = pdc_ledger::audit::AuditKeys { witnesses: vec![], quorum: 0, ..keys() };
    let report = audit::verify_store(&store, &keys);
    // The entries are not ledger entries, so only decoding fails; the tree and the checkpoint verify.
    assert!(report.failures.iter().all(|f| f.rule == audit::Rule::EntryMalformed), "{report}");
    assert_eq!(report.failures.len() as u64, store.size());
}
