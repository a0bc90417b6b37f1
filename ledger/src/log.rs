//! Group commit: a thread-safe handle on a [`Store`] that batches concurrent appends into one durable write.
//!
//! Many threads call [`SharedLog::append`] at once; each returns only when its entry is durable. Rather than one
//! synced write (one `fsync`) per entry, the appends that arrive while a write is in progress wait together, and
//! the next write takes all of them as one [`Store::append`] (for [`crate::store::RocksDbStore`], one
//! `WriteBatch` with sync). Throughput then grows with the number of concurrent appenders instead of being capped
//! at one entry per `fsync`.
//!
//! There is no writer thread. The first appender to find no write in progress becomes the *leader*: it takes
//! every pending entry, writes them, publishes the outcome, and wakes the others; whoever is still pending then
//! elects the next leader. Only `std` threads, a [`Mutex`] and a [`Condvar`] are involved.
//!
//! # Failure
//!
//! If a batch's write fails, every caller whose entries were in it gets the error, and the log is *poisoned*:
//! every later write ([`SharedLog::append`], [`SharedLog::put_checkpoint`]) returns [`StoreError::Poisoned`]
//! until the store is reopened, because after a failed sync nobody knows what is on disk (the store poisons
//! itself too; this handle also refuses entries that were queued behind the failed batch). Reads keep working.
//!
//! ```
//! use std::sync::Arc;
//!
//! use pdc_ledger::log::SharedLog;
//! use pdc_ledger::store::MemoryStore;
//!
//! let log = Arc::new(SharedLog::new(Box::new(MemoryStore::new())));
//! let threads: Vec<_> = (0..4u8)
//!     .map(|t| {
//!         let log = Arc::clone(&log);
//!         std::thread::spawn(move || log.append(vec![t]))
//!     })
//!     .collect();
//! let mut indices: Vec<u64> = threads.into_iter().map(|t| t.join().unwrap()).collect::<Result<_, _>>()?;
//! indices.sort();
//! assert_eq!(indices, [0, 1, 2, 3]);
//! assert_eq!(log.size(), 4);
//! # Ok::<(), pdc_ledger::store::StoreError>(())
//! ```

use std::collections::HashMap;
use std::ops::Range;
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};

use crate::Hash;
use crate::checkpoint::{Checkpoint, SignedCheckpoint};
use crate::entry::Entry;
use crate::store::{Result, Store, StoreError};

/// A [`Store`] shared between threads, with group commit. `Sync`: share it with an `Arc`.
pub struct SharedLog {
    /// Who is waiting for which batch, and the batches' outcomes.
    state: Mutex<State>,
    /// Signalled when a batch's outcome is published.
    published: Condvar,
    /// The store; held by the leader while it writes, and briefly by readers.
    store: Mutex<Box<dyn Store + Send>>,
}

/// The group-commit bookkeeping, behind [`SharedLog::state`].
struct State {
    /// Entries waiting for the next batch, in arrival order.
    pending: Vec<Vec<u8>>,
    /// The id of the batch `pending` will be written in.
    next_batch: u64,
    /// Whether a leader is writing a batch now.
    writing: bool,
    /// Outcomes of finished batches not yet collected by all their callers: the index of the batch's first
    /// entry, or the error; and how many callers have still to collect it.
    outcomes: HashMap<u64, (Result<u64>, usize)>,
    /// The number of callers in each batch, `pending`'s included.
    callers: HashMap<u64, usize>,
    /// Set by the first failed write; every later write fails.
    poisoned: bool,
    /// What has been written so far.
    stats: CommitStats,
}

/// How much grouping the log has done: batches written and the entries they held.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CommitStats {
    /// Successful durable writes.
    pub batches: u64,
    /// Entries in them.
    pub entries: u64,
}

/// Publishes a batch's outcome when dropped, whether the leader returns or unwinds.
struct PublishOnDrop<'a> {
    log: &'a SharedLog,
    batch: u64,
    callers: usize,
    entries: u64,
    outcome: Result<u64>,
}

impl Drop for PublishOnDrop<'_> {
    fn drop(&mut self) {
        let outcome = std::mem::replace(&mut self.outcome, Err(StoreError::Poisoned));
        let mut state = self.log.lock_state();
        state.writing = false;
        if outcome.is_err() {
            state.poisoned = true;
        } else {
            state.stats.batches += 1;
            state.stats.entries += self.entries;
        }
        state.outcomes.insert(self.batch, (outcome, self.callers));
        self.log.published.notify_all();
    }
}

impl std::fmt::Debug for SharedLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedLog").field("size", &self.size()).finish_non_exhaustive()
    }
}

impl SharedLog {
    /// Shares `store`, which should hold no other writer: this handle assumes it is the only one appending.
    pub fn new(store: Box<dyn Store + Send>) -> Self {
        let state = State {
            pending: Vec::new(),
            next_batch: 0,
            writing: false,
            outcomes: HashMap::new(),
            callers: HashMap::new(),
            poisoned: false,
            stats: CommitStats::default(),
        };
        SharedLog { state: Mutex::new(state), published: Condvar::new(), store: Mutex::new(store) }
    }

    /// Appends one entry's bytes and returns its index once it is durable, batched with whatever other threads
    /// append meanwhile.
    pub fn append(&self, entry: Vec<u8>) -> Result<u64> {
        Ok(self.append_all(vec![entry])?.start)
    }

    /// Appends `entry`'s canonical encoding; see [`SharedLog::append`].
    pub fn append_entry(&self, entry: &Entry) -> Result<u64> {
        self.append(entry.encode())
    }

    /// Appends `entries` at consecutive indices, in the same durable batch, and returns their index range once
    /// they are durable. An empty `entries` writes nothing and returns an empty range at the current size.
    pub fn append_all(&self, entries: Vec<Vec<u8>>) -> Result<Range<u64>> {
        let count = entries.len() as u64;
        let mut state = self.lock_state();
        if state.poisoned {
            return Err(StoreError::Poisoned);
        }
        if entries.is_empty() {
            drop(state);
            let size = self.size();
            return Ok(size..size);
        }
        let batch = state.next_batch;
        let offset = state.pending.len() as u64;
        state.pending.extend(entries);
        *state.callers.entry(batch).or_insert(0) += 1;
        loop {
            if let Some((outcome, remaining)) = state.outcomes.get_mut(&batch) {
                let outcome = outcome.clone();
                *remaining -= 1;
                if *remaining == 0 {
                    state.outcomes.remove(&batch);
                }
                return outcome.map(|first| first + offset..first + offset + count);
            }
            if !state.writing && state.next_batch == batch {
                // No write in progress and this caller's batch is next: lead it.
                state = self.lead(state);
                continue;
            }
            state = self.published.wait(state).unwrap_or_else(PoisonError::into_inner);
        }
    }

    /// Writes the pending batch as its leader, publishes the outcome, and wakes every waiter.
    fn lead<'a>(&'a self, mut state: MutexGuard<'a, State>) -> MutexGuard<'a, State> {
        let batch = state.next_batch;
        let entries = std::mem::take(&mut state.pending);
        let callers = state.callers.remove(&batch).unwrap_or(0);
        state.next_batch += 1;
        let poisoned = state.poisoned;
        state.writing = true;
        drop(state);

        // Should the store panic, the guard still publishes a failure, so that no waiter sleeps forever.
        let mut guard = PublishOnDrop {
            log: self,
            batch,
            callers,
            entries: entries.len() as u64,
            outcome: Err(StoreError::Poisoned),
        };
        if !poisoned {
            let mut store = self.lock_store();
            guard.outcome = store.append(&entries).map(|new_size| new_size - entries.len() as u64);
        }
        drop(guard);
        self.lock_state()
    }

    /// The number of entries that are durable.
    pub fn size(&self) -> u64 {
        self.lock_store().size()
    }

    /// The current size and root, read together.
    pub fn head(&self) -> Result<(u64, Hash)> {
        let store = self.lock_store();
        Ok((store.size(), store.root()?))
    }

    /// The bytes of entry `index`.
    pub fn entry(&self, index: u64) -> Result<Vec<u8>> {
        self.lock_store().entry(index)
    }

    /// The root at `size` entries; see [`Store::root_at`].
    pub fn root_at(&self, size: u64) -> Result<Hash> {
        self.lock_store().root_at(size)
    }

    /// The inclusion proof of entry `index` in the tree of `size` entries; see [`Store::inclusion_proof`].
    pub fn inclusion_proof(&self, index: u64, size: u64) -> Result<Vec<Hash>> {
        self.lock_store().inclusion_proof(index, size)
    }

    /// The consistency proof from `old_size` to `new_size`; see [`Store::consistency_proof`].
    pub fn consistency_proof(&self, old_size: u64, new_size: u64) -> Result<Vec<Hash>> {
        self.lock_store().consistency_proof(old_size, new_size)
    }

    /// The checkpoint stored for `size`, if any.
    pub fn checkpoint(&self, size: u64) -> Result<Option<Vec<u8>>> {
        self.lock_store().checkpoint(size)
    }

    /// The checkpoint with the largest size, if any.
    pub fn latest_checkpoint(&self) -> Result<Option<(u64, Vec<u8>)>> {
        self.lock_store().latest_checkpoint()
    }

    /// Every stored checkpoint, in increasing size order.
    pub fn checkpoints(&self) -> Result<Vec<(u64, Vec<u8>)>> {
        self.lock_store().checkpoints()
    }

    /// Runs `read` on the store with appends held off, e.g. [`crate::audit::verify_store`] or
    /// [`crate::export::write`] on a consistent view.
    pub fn with_store<T>(&self, read: impl FnOnce(&dyn Store) -> T) -> T {
        let store = self.lock_store();
        read(&**store)
    }

    /// The next checkpoint to sign: the current size and root, chained to the latest stored checkpoint, at
    /// `timestamp_ms` or the latest checkpoint's timestamp if that is later (so timestamps never decrease, even
    /// if the clock steps back).
    ///
    /// Sign it, have witnesses co-sign it, then store it with [`SharedLog::put_checkpoint`]: a store keeps one
    /// checkpoint per size, so store the note once it carries every co-signature it will get. If the latest
    /// stored checkpoint is already at the current size, the next one is for that same size and
    /// `put_checkpoint` will refuse a different note for it.
    ///
    /// [`StoreError::Corrupt`] if the latest stored checkpoint does not parse.
    pub fn prepare_checkpoint(&self, origin: &str, timestamp_ms: u64) -> Result<Checkpoint> {
        let store = self.lock_store();
        let size = store.size();
        let root = store.root()?;
        let (previous, timestamp_ms) = match store.latest_checkpoint()? {
            None => ([0; 32], timestamp_ms),
            Some((stored_size, bytes)) => {
                let parsed = std::str::from_utf8(&bytes).ok().and_then(|note| SignedCheckpoint::parse(note).ok());
                let Some(latest) = parsed else {
                    return Err(StoreError::Corrupt {
                        index: None,
                        detail: format!("the checkpoint stored for size {stored_size} does not parse"),
                    });
                };
                (latest.note_hash(), timestamp_ms.max(latest.checkpoint.timestamp_ms))
            }
        };
        Ok(Checkpoint { origin: origin.to_owned(), size, root, previous, timestamp_ms })
    }

    /// Stores a signed checkpoint (with its co-signatures) under its size; see [`Store::put_checkpoint`]. Its
    /// root must be the log's root at that size, or [`StoreError::Corrupt`] is returned and nothing is stored.
    pub fn put_checkpoint(&self, signed: &SignedCheckpoint) -> Result<()> {
        if self.lock_state().poisoned {
            return Err(StoreError::Poisoned);
        }
        let mut store = self.lock_store();
        let size = signed.checkpoint.size;
        let root = store.root_at(size)?;
        if root != signed.checkpoint.root {
            return Err(StoreError::Corrupt {
                index: None,
                detail: format!(
                    "checkpoint for size {size} states root {}, the log's is {}",
                    hex::encode(signed.checkpoint.root),
                    hex::encode(root)
                ),
            });
        }
        let result = store.put_checkpoint(size, signed.to_note().as_bytes());
        if matches!(result, Err(StoreError::Db { .. })) {
            drop(store);
            self.lock_state().poisoned = true;
        }
        result
    }

    /// How many durable writes the appends so far took, and how many entries they held: `entries / batches`
    /// is the average group size.
    pub fn stats(&self) -> CommitStats {
        self.lock_state().stats
    }

    /// Whether a write failed, so writes are refused until the store is reopened.
    pub fn is_poisoned(&self) -> bool {
        self.lock_state().poisoned
    }

    /// The store back, e.g. to close it. Waits for nothing: call it once every appender is done.
    pub fn into_inner(self) -> Box<dyn Store + Send> {
        self.store.into_inner().unwrap_or_else(PoisonError::into_inner)
    }

    fn lock_state(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves the bookkeeping consistent (every update is a single step), so
        // the lock's poison flag carries no information here.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn lock_store(&self) -> MutexGuard<'_, Box<dyn Store + Send>> {
        self.store.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use super::*;
    use crate::Identity;
    use crate::store::{MemoryStore, RocksDbStore};

    /// A memory store whose appends take a while, like an `fsync`, and are counted.
    struct SlowStore {
        inner: MemoryStore,
        appends: Arc<AtomicUsize>,
    }

    impl Store for SlowStore {
        fn size(&self) -> u64 {
            self.inner.size()
        }
        fn append(&mut self, entries: &[Vec<u8>]) -> Result<u64> {
            std::thread::sleep(Duration::from_millis(2));
            self.appends.fetch_add(1, Ordering::SeqCst);
            self.inner.append(entries)
        }
        fn entry(&self, index: u64) -> Result<Vec<u8>> {
            self.inner.entry(index)
        }
        fn node(&self, level: u32, index: u64) -> Result<Hash> {
            self.inner.node(level, index)
        }
        fn put_meta(&mut self, key: &str, value: &[u8]) -> Result<()> {
            self.inner.put_meta(key, value)
        }
        fn meta(&self, key: &str) -> Result<Option<Vec<u8>>> {
            self.inner.meta(key)
        }
        fn put_checkpoint(&mut self, size: u64, checkpoint: &[u8]) -> Result<()> {
            self.inner.put_checkpoint(size, checkpoint)
        }
        fn checkpoint(&self, size: u64) -> Result<Option<Vec<u8>>> {
            self.inner.checkpoint(size)
        }
        fn latest_checkpoint(&self) -> Result<Option<(u64, Vec<u8>)>> {
            self.inner.latest_checkpoint()
        }
        fn checkpoints(&self) -> Result<Vec<(u64, Vec<u8>)>> {
            self.inner.checkpoints()
        }
    }

    /// Runs `threads` appenders of `per_thread` entries each; returns every (index, bytes) acknowledged.
    fn hammer(log: &Arc<SharedLog>, threads: u64, per_thread: u64) -> Vec<(u64, Vec<u8>)> {
        let handles: Vec<_> = (0..threads)
            .map(|thread| {
                let log = Arc::clone(log);
                std::thread::spawn(move || {
                    (0..per_thread)
                        .map(|sequence| {
                            let bytes = format!("{thread}/{sequence}").into_bytes();
                            (log.append(bytes.clone()).expect("append"), bytes)
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles.into_iter().flat_map(|handle| handle.join().expect("appender")).collect()
    }

    #[test]
    fn concurrent_appends_share_writes_and_get_their_own_indices() {
        let appends = Arc::new(AtomicUsize::new(0));
        let store = SlowStore { inner: MemoryStore::new(), appends: Arc::clone(&appends) };
        let log = Arc::new(SharedLog::new(Box::new(store)));
        let (threads, per_thread) = (32, 25);
        let mut acknowledged = hammer(&log, threads, per_thread);
        acknowledged.sort();
        let total = threads * per_thread;
        assert_eq!(acknowledged.iter().map(|(index, _)| *index).collect::<Vec<_>>(), (0..total).collect::<Vec<_>>());
        for (index, bytes) in &acknowledged {
            assert_eq!(&log.entry(*index).expect("entry"), bytes);
        }
        // Each write takes 2 ms while 32 threads wait, so writes are shared: far fewer writes than entries.
        let writes = appends.load(Ordering::SeqCst) as u64;
        assert!(writes * 4 <= total, "{writes} writes for {total} entries");
        assert_eq!(log.stats(), CommitStats { batches: writes, entries: total });
        assert_eq!(log.size(), total);
        let leaves: Vec<Hash> = (0..total).map(|i| crate::merkle::leaf_hash(&log.entry(i).unwrap())).collect();
        assert_eq!(log.head().expect("head"), (total, crate::merkle::root(&leaves)));
    }

    #[test]
    fn a_failed_write_fails_its_whole_batch_and_poisons_the_log() {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut store = RocksDbStore::open(dir.path()).expect("open");
        store.append(&[b"kept".to_vec()]).expect("append");
        store.fail_next_write = true;
        let log = Arc::new(SharedLog::new(Box::new(store)));

        let results: Vec<Result<u64>> = {
            let handles: Vec<_> = (0..8u8)
                .map(|thread| {
                    let log = Arc::clone(&log);
                    std::thread::spawn(move || log.append(vec![thread]))
                })
                .collect();
            handles.into_iter().map(|handle| handle.join().expect("appender")).collect()
        };
        // The first batch to be written fails with the database's error for every caller in it; whoever was
        // queued behind it is refused without a write.
        let failed = results.iter().filter(|result| matches!(result, Err(StoreError::Db { .. }))).count();
        let refused = results.iter().filter(|result| matches!(result, Err(StoreError::Poisoned))).count();
        assert!(failed >= 1, "{results:?}");
        assert_eq!(failed + refused, results.len(), "{results:?}");
        assert!(log.is_poisoned());
        assert!(matches!(log.append(b"later".to_vec()), Err(StoreError::Poisoned)));
        assert!(matches!(log.append_all(Vec::new()), Err(StoreError::Poisoned)));
        let checkpoint = crate::checkpoint::Checkpoint {
            origin: "t/sha3-256".into(),
            size: 1,
            root: log.root_at(1).expect("root"),
            previous: [0; 32],
            timestamp_ms: 1,
        };
        let signed = checkpoint.sign("t", &Identity::from_seed([1; 32])).expect("sign");
        assert!(matches!(log.put_checkpoint(&signed), Err(StoreError::Poisoned)));
        // Reads still work, and nothing of the failed batch is in the log.
        assert_eq!(log.size(), 1);
        assert_eq!(log.entry(0).expect("entry"), b"kept");

        drop(Arc::into_inner(log).expect("sole owner").into_inner());
        let store = RocksDbStore::open(dir.path()).expect("reopen");
        assert_eq!(store.size(), 1);
        let log = SharedLog::new(Box::new(store));
        assert!(!log.is_poisoned());
        assert_eq!(log.append(b"after reopening".to_vec()).expect("append"), 1);
    }

    #[test]
    fn a_panicking_store_fails_its_batch_instead_of_hanging_the_others() {
        struct PanickingStore(MemoryStore);
        impl Store for PanickingStore {
            fn size(&self) -> u64 {
                self.0.size()
            }
            fn append(&mut self, _: &[Vec<u8>]) -> Result<u64> {
                std::thread::sleep(Duration::from_millis(5));
                panic!("the disk caught fire");
            }
            fn entry(&self, index: u64) -> Result<Vec<u8>> {
                self.0.entry(index)
            }
            fn node(&self, level: u32, index: u64) -> Result<Hash> {
                self.0.node(level, index)
            }
            fn put_meta(&mut self, key: &str, value: &[u8]) -> Result<()> {
                self.0.put_meta(key, value)
            }
            fn meta(&self, key: &str) -> Result<Option<Vec<u8>>> {
                self.0.meta(key)
            }
            fn put_checkpoint(&mut self, size: u64, checkpoint: &[u8]) -> Result<()> {
                self.0.put_checkpoint(size, checkpoint)
            }
            fn checkpoint(&self, size: u64) -> Result<Option<Vec<u8>>> {
                self.0.checkpoint(size)
            }
            fn latest_checkpoint(&self) -> Result<Option<(u64, Vec<u8>)>> {
                self.0.latest_checkpoint()
            }
            fn checkpoints(&self) -> Result<Vec<(u64, Vec<u8>)>> {
                self.0.checkpoints()
            }
        }
        let log = Arc::new(SharedLog::new(Box::new(PanickingStore(MemoryStore::new()))));
        let handles: Vec<_> = (0..6u8)
            .map(|thread| {
                let log = Arc::clone(&log);
                std::thread::spawn(move || log.append(vec![thread]))
            })
            .collect();
        let outcomes: Vec<_> = handles.into_iter().map(|handle| handle.join()).collect();
        // The leader's thread panicked; everyone else returned an error rather than waiting forever.
        assert!(outcomes.iter().any(|outcome| outcome.is_err()));
        for outcome in outcomes.into_iter().flatten() {
            assert!(matches!(outcome, Err(StoreError::Poisoned)), "{outcome:?}");
        }
        assert!(log.is_poisoned());
    }
}
