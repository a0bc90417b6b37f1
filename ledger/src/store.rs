//! The ledger's append-only log store: entries and perfect Merkle nodes, behind a [`Store`] trait.
//!
//! A store keeps, for a log of `size` entries, every entry's bytes and every *perfect* Merkle node: node
//! `(level, index)` exists iff `(index + 1)·2^level <= size` (level 0 holds the leaf hashes). Perfect nodes never
//! change once their leaves are in, so appending writes only new nodes, and roots and RFC 9162 proofs for any
//! size up to the current one are `O(log n)` reads through [`merkle::root_from`], [`merkle::inclusion_proof_from`]
//! and [`merkle::consistency_proof_from`]. The Merkle logic lives in [`crate::merkle`]; this module only stores.
//!
//! Two implementations, in the manner of raft-rs's `Storage` and `MemStorage`, so that the ledger's core does no
//! I/O of its own:
//!
//! - [`MemoryStore`]: `Vec`-backed, for tests and tools;
//! - [`RocksDbStore`]: durable, on RocksDB. An append is one synchronous `WriteBatch` (entries, nodes and the new
//!   size together), so it is all-or-nothing and on disk when it returns. After a failed write the store is
//!   *poisoned* ([`StoreError::Poisoned`]) until reopened, as fjall does: the in-memory view may no longer match
//!   the disk, and reopening re-derives it and checks it.
//!
//! Many threads share one store through [`crate::log::SharedLog`], which batches their concurrent appends into
//! one synced [`Store::append`] (group commit). An auditor opens a RocksDB ledger with
//! [`RocksDbStore::open_for_audit`], which does not refuse a damaged log, and checks it with
//! [`crate::audit::verify_store`].
//!
//! Not done: checking an entry against its leaf hash on every read (an auditor re-derives hashes anyway, and
//! [`RocksDbStore::open`] checks everything once).
//!
//! ```
//! use pdc_ledger::merkle;
//! use pdc_ledger::store::{MemoryStore, Store};
//!
//! let mut store = MemoryStore::new();
//! store.append(&[b"register a".to_vec(), b"register b".to_vec()])?;
//! let old_root = store.root()?;
//! store.append(&[b"round 1".to_vec()])?;
//!
//! let proof = store.inclusion_proof(1, 3)?;
//! merkle::verify_inclusion(1, 3, &merkle::leaf_hash(b"register b"), &proof, &store.root()?)?;
//! let proof = store.consistency_proof(2, 3)?;
//! merkle::verify_consistency(2, 3, &old_root, &store.root()?, &proof)?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::collections::BTreeMap;
#[cfg(feature = "rocksdb")]
use std::collections::HashMap;
#[cfg(feature = "rocksdb")]
use std::path::Path;
use std::path::PathBuf;

#[cfg(feature = "rocksdb")]
use rocksdb::{ColumnFamily, DB, IteratorMode, Options, WriteBatch, WriteOptions};

use crate::Hash;
use crate::merkle::{self, MerkleTree, NodeSource, ProofError};

/// The `meta` key under which the log size is kept, as a big-endian `u64`. Reserved: [`Store::put_meta`] and
/// [`Store::meta`] refuse it, so that no caller can rewrite the size outside an append.
pub const SIZE_KEY: &str = "size";

/// The column families of a [`RocksDbStore`], in the order they are opened.
#[cfg(feature = "rocksdb")]
pub const COLUMN_FAMILIES: [&str; 4] = [CF_ENTRIES, CF_NODES, CF_CHECKPOINTS, CF_META];

#[cfg(feature = "rocksdb")]
const CF_ENTRIES: &str = "entries";
#[cfg(feature = "rocksdb")]
const CF_NODES: &str = "nodes";
#[cfg(feature = "rocksdb")]
const CF_CHECKPOINTS: &str = "checkpoints";
#[cfg(feature = "rocksdb")]
const CF_META: &str = "meta";

/// The error a [`RocksDbStore`] reports from RocksDB, in [`StoreError::Db`].
///
/// Without the `rocksdb` feature there is no RocksDB and this is [`std::convert::Infallible`], so that
/// `StoreError::Db` can never be made but code that matches on it builds either way.
#[cfg(feature = "rocksdb")]
pub type DbError = rocksdb::Error;

/// The error a RocksDB store reports, in [`StoreError::Db`]; without the `rocksdb` feature there is none, so
/// this is uninhabited and `StoreError::Db` can never be made, while code that matches on it still builds.
#[cfg(not(feature = "rocksdb"))]
pub type DbError = std::convert::Infallible;

/// Why a store operation failed.
///
/// `Clone`, so that a group commit ([`crate::log::SharedLog`]) can hand one failed write's error to every caller
/// whose entries were in it.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// An entry was asked for at or beyond the log size.
    #[error("entry {index} is out of range for a log of size {size}")]
    EntryOutOfRange {
        /// The requested entry.
        index: u64,
        /// The log size.
        size: u64,
    },
    /// A node was asked for that is not a perfect subtree of the current log (its leaves are not all in).
    #[error("no node at level {level}, index {index} in a log of size {size}")]
    NodeOutOfRange {
        /// The node's level (0 = leaves).
        level: u32,
        /// The node's index within its level.
        index: u64,
        /// The log size.
        size: u64,
    },
    /// A root or proof was asked for at a tree size beyond the log size.
    #[error("tree size {requested} is beyond the log size {size}")]
    SizeBeyondLog {
        /// The tree size asked for.
        requested: u64,
        /// The log size.
        size: u64,
    },
    /// A proof could not be made from these arguments (an index beyond the tree, an old size beyond the new).
    #[error(transparent)]
    Proof(#[from] ProofError),
    /// A checkpoint for this size is already stored with different bytes; checkpoints are never rewritten.
    #[error("a different checkpoint for size {size} is already stored")]
    CheckpointExists {
        /// The tree size of the checkpoint.
        size: u64,
    },
    /// The `meta` key is reserved for the store's own bookkeeping.
    #[error("meta key {key:?} is reserved")]
    ReservedMetaKey {
        /// The key.
        key: String,
    },
    /// An earlier durable write failed, so the store refuses writes until it is reopened.
    #[error("store is poisoned by an earlier failed write; reopen it")]
    Poisoned,
    /// The store was opened read-only, for an audit ([`RocksDbStore::open_for_audit`]).
    #[error("store is open read-only")]
    ReadOnly,
    /// The stored state is inconsistent: a missing, extra or wrong entry or node, or a malformed key or value.
    #[error("store is corrupt{}: {detail}", index.map(|i| format!(" at leaf index {i}")).unwrap_or_default())]
    Corrupt {
        /// The first leaf index where the damage shows, when it concerns a leaf or a node over leaves.
        index: Option<u64>,
        /// What is wrong.
        detail: String,
    },
    /// RocksDB reported an error.
    #[error("rocksdb at {path}: {source}")]
    Db {
        /// The database directory.
        path: PathBuf,
        /// The RocksDB error.
        source: DbError,
    },
}

/// The store module's result type.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// An append-only log of entries with its perfect Merkle nodes.
///
/// Implementations provide the storage methods; roots and proofs are provided on top of [`Store::node`] through
/// [`StoreNodes`], so every store answers them the same way, in `O(log n)` node reads. The trait is object safe:
/// the ledger holds a `Box<dyn Store>`.
pub trait Store {
    /// The number of entries.
    fn size(&self) -> u64;

    /// Appends `entries` in order, atomically, and returns the new size.
    ///
    /// For each new entry the store keeps its bytes, its leaf hash (node `(0, index)`) and every perfect node the
    /// append completes. Durable stores have the whole batch on disk when this returns, or none of it. An empty
    /// batch writes nothing.
    fn append(&mut self, entries: &[Vec<u8>]) -> Result<u64>;

    /// The bytes of entry `index`; [`StoreError::EntryOutOfRange`] at or beyond the size.
    fn entry(&self, index: u64) -> Result<Vec<u8>>;

    /// The perfect node `(level, index)` (see [`merkle::NodeSource`]); [`StoreError::NodeOutOfRange`] when its
    /// leaves are not all in the log.
    fn node(&self, level: u32, index: u64) -> Result<Hash>;

    /// Stores `value` under `key` in the store's metadata, replacing any earlier value. [`SIZE_KEY`] is reserved.
    fn put_meta(&mut self, key: &str, value: &[u8]) -> Result<()>;

    /// The metadata value under `key`, if any. [`SIZE_KEY`] is reserved.
    fn meta(&self, key: &str) -> Result<Option<Vec<u8>>>;

    /// Stores the checkpoint (e.g. a signed tree head) for tree size `size`.
    ///
    /// `size` must not exceed the log size. Storing the same bytes again is accepted; different bytes for a size
    /// already checkpointed are [`StoreError::CheckpointExists`], since a log that signs two heads for one size
    /// is equivocating.
    fn put_checkpoint(&mut self, size: u64, checkpoint: &[u8]) -> Result<()>;

    /// The checkpoint stored for tree size `size`, if any.
    fn checkpoint(&self, size: u64) -> Result<Option<Vec<u8>>>;

    /// The checkpoint with the largest tree size, with that size, if any is stored.
    fn latest_checkpoint(&self) -> Result<Option<(u64, Vec<u8>)>>;

    /// Every stored checkpoint with its tree size, in increasing size order.
    fn checkpoints(&self) -> Result<Vec<(u64, Vec<u8>)>>;

    /// The Merkle root of the current log; [`merkle::EMPTY_ROOT`] when empty.
    fn root(&self) -> Result<Hash> {
        self.root_at(self.size())
    }

    /// The Merkle root the log had at `size` entries; [`StoreError::SizeBeyondLog`] beyond the current size.
    fn root_at(&self, size: u64) -> Result<Hash> {
        check_size(size, self.size())?;
        merkle::root_from(&StoreNodes(self), size)
    }

    /// The inclusion proof of entry `index` in the tree of the first `size` entries.
    ///
    /// [`StoreError::SizeBeyondLog`] when `size` exceeds the log; [`ProofError::IndexOutOfRange`] (as
    /// [`StoreError::Proof`]) when `index >= size`.
    fn inclusion_proof(&self, index: u64, size: u64) -> Result<Vec<Hash>> {
        check_size(size, self.size())?;
        merkle::inclusion_proof_from(&StoreNodes(self), index, size)
    }

    /// The consistency proof from the tree of the first `old_size` entries to that of the first `new_size`.
    ///
    /// [`StoreError::SizeBeyondLog`] when `new_size` exceeds the log; [`ProofError::InvalidSizes`] (as
    /// [`StoreError::Proof`]) when `old_size > new_size`.
    fn consistency_proof(&self, old_size: u64, new_size: u64) -> Result<Vec<Hash>> {
        check_size(new_size, self.size())?;
        merkle::consistency_proof_from(&StoreNodes(self), old_size, new_size)
    }
}

/// A [`Store`] seen as a [`merkle::NodeSource`], so the `*_from` functions can read its nodes; works for
/// `&dyn Store` too.
///
/// ```
/// use pdc_ledger::merkle;
/// use pdc_ledger::store::{MemoryStore, Store, StoreNodes};
///
/// let mut store = MemoryStore::new();
/// store.append(&[b"a".to_vec(), b"b".to_vec(), b"c".to_vec()])?;
/// let store: &dyn Store = &store;
/// assert_eq!(merkle::root_from(&StoreNodes(store), 2)?, store.root_at(2)?);
/// # Ok::<(), pdc_ledger::store::StoreError>(())
/// ```
#[derive(Debug, Clone, Copy)]
pub struct StoreNodes<'a, S: ?Sized>(pub &'a S);

impl<S: Store + ?Sized> NodeSource for StoreNodes<'_, S> {
    type Error = StoreError;

    fn node(&self, level: u32, index: u64) -> Result<Hash> {
        self.0.node(level, index)
    }
}

/// A `Vec`-backed [`Store`] for tests and tools. Writes cannot fail, so it is never poisoned.
#[derive(Debug, Clone, Default)]
pub struct MemoryStore {
    entries: Vec<Vec<u8>>,
    /// Every perfect node over the entries' leaf hashes; its leaf count is the log size.
    nodes: MerkleTree,
    checkpoints: BTreeMap<u64, Vec<u8>>,
    meta: BTreeMap<String, Vec<u8>>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }
}

impl Store for MemoryStore {
    fn size(&self) -> u64 {
        self.nodes.len()
    }

    fn append(&mut self, entries: &[Vec<u8>]) -> Result<u64> {
        for entry in entries {
            self.nodes.append(merkle::leaf_hash(entry));
            self.entries.push(entry.clone());
        }
        Ok(self.size())
    }

    fn entry(&self, index: u64) -> Result<Vec<u8>> {
        let found = usize::try_from(index).ok().and_then(|i| self.entries.get(i));
        found.cloned().ok_or(StoreError::EntryOutOfRange { index, size: self.size() })
    }

    fn node(&self, level: u32, index: u64) -> Result<Hash> {
        check_node(level, index, self.size())?;
        // In range, so the tree has it; a miss would be a bug in `MerkleTree`, reported rather than panicking.
        Ok(self.nodes.node(level, index)?)
    }

    fn put_meta(&mut self, key: &str, value: &[u8]) -> Result<()> {
        check_meta_key(key)?;
        self.meta.insert(key.to_owned(), value.to_vec());
        Ok(())
    }

    fn meta(&self, key: &str) -> Result<Option<Vec<u8>>> {
        check_meta_key(key)?;
        Ok(self.meta.get(key).cloned())
    }

    fn put_checkpoint(&mut self, size: u64, checkpoint: &[u8]) -> Result<()> {
        check_size(size, self.size())?;
        match self.checkpoints.get(&size) {
            Some(existing) if existing == checkpoint => Ok(()),
            Some(_) => Err(StoreError::CheckpointExists { size }),
            None => {
                self.checkpoints.insert(size, checkpoint.to_vec());
                Ok(())
            }
        }
    }

    fn checkpoint(&self, size: u64) -> Result<Option<Vec<u8>>> {
        Ok(self.checkpoints.get(&size).cloned())
    }

    fn latest_checkpoint(&self) -> Result<Option<(u64, Vec<u8>)>> {
        Ok(self.checkpoints.last_key_value().map(|(size, checkpoint)| (*size, checkpoint.clone())))
    }

    fn checkpoints(&self) -> Result<Vec<(u64, Vec<u8>)>> {
        Ok(self.checkpoints.iter().map(|(size, checkpoint)| (*size, checkpoint.clone())).collect())
    }
}

/// A durable [`Store`] on RocksDB.
///
/// # On-disk format
///
/// Column families, all keys big-endian so that RocksDB's byte order is numeric order:
///
/// | family        | key                                   | value                          |
/// |---------------|---------------------------------------|--------------------------------|
/// | `entries`     | index, `u64` (8 bytes)                | the entry's bytes              |
/// | `nodes`       | level, `u8` ‖ index, `u64` (9 bytes)  | the node's 32-byte hash        |
/// | `checkpoints` | tree size, `u64` (8 bytes)            | the checkpoint's bytes         |
/// | `meta`        | UTF-8 key                             | bytes; `"size"`: `u64` (8 BE)  |
///
/// # Durability and poisoning
///
/// Every write is one `WriteBatch` written with `sync = true`; an append puts its entries, its nodes and the new
/// `size` in the same batch, so a crash leaves either the old log or the new one. If a write fails the store is
/// poisoned: every later write returns [`StoreError::Poisoned`] until the store is dropped and reopened, because
/// after a failed sync RocksDB's state and this handle's cached size may disagree. Reads keep working.
///
/// # Opening
///
/// [`RocksDbStore::open`] checks the whole log, `O(n)` time and about `64·n` bytes of memory for `n` entries: the
/// entries are numbered `0..size` without gaps, and every stored node equals the node recomputed from the
/// entries' leaf hashes, no node missing and none extra. A failed check is [`StoreError::Corrupt`] naming the
/// first leaf of the first bad record, taking the lowest damaged level first (a forged entry is named by its own
/// index, not by the larger nodes above it that it also spoils). This is the price of trusting the cached size and the stored nodes afterwards; a log
/// that grows past what a restart may cost should check incrementally instead (not done).
#[derive(Debug)]
#[cfg(feature = "rocksdb")]
pub struct RocksDbStore {
    db: DB,
    path: PathBuf,
    size: u64,
    poisoned: bool,
    /// Opened by [`RocksDbStore::open_for_audit`]: every write is refused.
    read_only: bool,
    /// Test-only fault injection: the next write goes out with the WAL disabled, which RocksDB rejects for a
    /// synced write ("Sync writes has to enable WAL"). That is a real write error from the real write path, so
    /// tests see exactly what a failed `fsync` would cause.
    #[cfg(test)]
    pub(crate) fail_next_write: bool,
}

#[cfg(feature = "rocksdb")]
impl RocksDbStore {
    /// Opens the store in directory `path`, creating the database and any missing column family, and checks the
    /// stored log (see the type's docs); [`StoreError::Corrupt`] if it is inconsistent.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let mut options = Options::default();
        options.create_if_missing(true);
        options.create_missing_column_families(true);
        let db = DB::open_cf(&options, &path, COLUMN_FAMILIES)
            .map_err(|source| StoreError::Db { path: path.clone(), source })?;
        let mut store = Self {
            db,
            path,
            size: 0,
            poisoned: false,
            read_only: false,
            #[cfg(test)]
            fail_next_write: false,
        };
        store.size = store.check()?;
        Ok(store)
    }

    /// Opens the store in directory `path` read-only, for an auditor, *without* checking it: a damaged log
    /// opens, so that [`crate::audit::verify_store`] can report every damaged entry, node and checkpoint rather
    /// than the first. Reads of damaged records fail with [`StoreError::Corrupt`]; every write fails with
    /// [`StoreError::ReadOnly`]. A coordinator may hold the database open meanwhile: the auditor sees the log as
    /// it was when opened.
    ///
    /// Fails if `path` holds no ledger (no database, or one without the ledger's column families), or if the
    /// stored size is malformed, since without it nothing says where the log ends.
    pub fn open_for_audit(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let db = DB::open_cf_for_read_only(&Options::default(), &path, COLUMN_FAMILIES, false)
            .map_err(|source| StoreError::Db { path: path.clone(), source })?;
        let mut store = Self {
            db,
            path,
            size: 0,
            poisoned: false,
            read_only: true,
            #[cfg(test)]
            fail_next_write: false,
        };
        store.size = store.stored_size()?;
        Ok(store)
    }

    /// The database directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether an earlier write failed, so writes are refused until the store is reopened.
    pub fn is_poisoned(&self) -> bool {
        self.poisoned
    }

    /// The size kept in `meta`; 0 for a new store.
    fn stored_size(&self) -> Result<u64> {
        match self.db.get_cf(self.cf(CF_META), SIZE_KEY).map_err(|e| self.db_error(e))? {
            None => Ok(0),
            Some(bytes) => {
                decode_u64(&bytes).ok_or_else(|| corrupt(None, format!("size is {} bytes, not 8", bytes.len())))
            }
        }
    }

    /// Checks the stored log and returns its size.
    fn check(&self) -> Result<u64> {
        let size = self.stored_size()?;

        let mut tree = MerkleTree::new();
        for item in self.db.iterator_cf(self.cf(CF_ENTRIES), IteratorMode::Start) {
            let (key, value) = item.map_err(|e| self.db_error(e))?;
            let expected = tree.len();
            let index =
                decode_u64(&key).ok_or_else(|| corrupt(Some(expected), format!("entry key {}", hex::encode(&key))))?;
            if index != expected {
                return Err(corrupt(Some(expected), format!("entry {expected} is missing (next stored is {index})")));
            }
            if index >= size {
                return Err(corrupt(Some(index), format!("entry {index} is stored beyond the size {size}")));
            }
            tree.append(merkle::leaf_hash(&value));
        }
        if tree.len() != size {
            return Err(corrupt(Some(tree.len()), format!("entry {} is missing (size is {size})", tree.len())));
        }

        // Nodes come in (level, index) order, so the first bad one is at the lowest damaged level: a forged entry
        // shows at its own leaf hash rather than at the larger nodes above it that it also spoils.
        let mut stored_nodes = 0u64;
        for item in self.db.iterator_cf(self.cf(CF_NODES), IteratorMode::Start) {
            let (key, value) = item.map_err(|e| self.db_error(e))?;
            let Some((level, index)) = decode_node_key(&key) else {
                return Err(corrupt(None, format!("node key {}", hex::encode(&key))));
            };
            let leaf = Some(index.checked_shl(level).unwrap_or(u64::MAX));
            let Ok(expected) = tree.node(level, index) else {
                return Err(corrupt(leaf, format!("node ({level}, {index}) is stored beyond the size {size}")));
            };
            if value.as_ref() != expected {
                return Err(corrupt(leaf, format!("node ({level}, {index}) does not match the entries")));
            }
            stored_nodes += 1;
        }
        // All stored nodes are right and none is extra, so any shortfall is a missing node; find the first.
        if stored_nodes != perfect_node_count(size) {
            for level in 0..u64::BITS {
                for index in 0..(size >> level) {
                    if self
                        .db
                        .get_pinned_cf(self.cf(CF_NODES), node_key(level, index))
                        .map_err(|e| self.db_error(e))?
                        .is_none()
                    {
                        return Err(corrupt(Some(index << level), format!("node ({level}, {index}) is missing")));
                    }
                }
            }
        }
        // Implied by the node checks; kept as the statement of what opening guarantees.
        let stored_root = merkle::root_from(&|level, index| self.read_node(level, index, size), size)?;
        if stored_root != tree.root() {
            return Err(corrupt(None, "root from stored nodes differs from root of entries".to_owned()));
        }
        Ok(size)
    }

    fn cf(&self, name: &str) -> &ColumnFamily {
        // Every family is created on open, so a missing handle is impossible short of a RocksDB bug.
        self.db.cf_handle(name).expect("column family is created on open")
    }

    fn db_error(&self, source: rocksdb::Error) -> StoreError {
        StoreError::Db { path: self.path.clone(), source }
    }

    /// Reads a node known to be in range for `size`; absent or malformed means corruption.
    fn read_node(&self, level: u32, index: u64, size: u64) -> Result<Hash> {
        check_node(level, index, size)?;
        let leaf = Some(index << level);
        let value = self
            .db
            .get_pinned_cf(self.cf(CF_NODES), node_key(level, index))
            .map_err(|e| self.db_error(e))?
            .ok_or_else(|| corrupt(leaf, format!("node ({level}, {index}) is missing")))?;
        Hash::try_from(value.as_ref())
            .map_err(|_| corrupt(leaf, format!("node ({level}, {index}) is {} bytes", value.len())))
    }

    /// [`StoreError::ReadOnly`] or [`StoreError::Poisoned`] when the store refuses writes.
    fn check_writable(&self) -> Result<()> {
        if self.read_only {
            Err(StoreError::ReadOnly)
        } else if self.poisoned {
            Err(StoreError::Poisoned)
        } else {
            Ok(())
        }
    }

    /// Writes `batch` synchronously, poisoning the store if that fails.
    fn write(&mut self, batch: WriteBatch) -> Result<()> {
        self.check_writable()?;
        let mut options = WriteOptions::default();
        options.set_sync(true);
        #[cfg(test)]
        if std::mem::take(&mut self.fail_next_write) {
            options.disable_wal(true);
        }
        self.db.write_opt(batch, &options).map_err(|source| {
            self.poisoned = true;
            StoreError::Db { path: self.path.clone(), source }
        })
    }
}

#[cfg(feature = "rocksdb")]
impl Store for RocksDbStore {
    fn size(&self) -> u64 {
        self.size
    }

    fn append(&mut self, entries: &[Vec<u8>]) -> Result<u64> {
        self.check_writable()?;
        if entries.is_empty() {
            return Ok(self.size);
        }
        let old_size = self.size;
        let nodes = new_nodes(old_size, entries, |level, index| self.read_node(level, index, old_size))?;
        let mut batch = WriteBatch::default();
        for (offset, entry) in entries.iter().enumerate() {
            batch.put_cf(self.cf(CF_ENTRIES), (old_size + offset as u64).to_be_bytes(), entry);
        }
        for ((level, index), hash) in &nodes {
            batch.put_cf(self.cf(CF_NODES), node_key(*level, *index), hash);
        }
        let new_size = old_size + entries.len() as u64;
        batch.put_cf(self.cf(CF_META), SIZE_KEY, new_size.to_be_bytes());
        self.write(batch)?;
        self.size = new_size;
        Ok(new_size)
    }

    fn entry(&self, index: u64) -> Result<Vec<u8>> {
        if index >= self.size {
            return Err(StoreError::EntryOutOfRange { index, size: self.size });
        }
        self.db
            .get_cf(self.cf(CF_ENTRIES), index.to_be_bytes())
            .map_err(|e| self.db_error(e))?
            .ok_or_else(|| corrupt(Some(index), format!("entry {index} is missing")))
    }

    fn node(&self, level: u32, index: u64) -> Result<Hash> {
        self.read_node(level, index, self.size)
    }

    fn put_meta(&mut self, key: &str, value: &[u8]) -> Result<()> {
        check_meta_key(key)?;
        let mut batch = WriteBatch::default();
        batch.put_cf(self.cf(CF_META), key, value);
        self.write(batch)
    }

    fn meta(&self, key: &str) -> Result<Option<Vec<u8>>> {
        check_meta_key(key)?;
        self.db.get_cf(self.cf(CF_META), key).map_err(|e| self.db_error(e))
    }

    fn put_checkpoint(&mut self, size: u64, checkpoint: &[u8]) -> Result<()> {
        self.check_writable()?;
        check_size(size, self.size)?;
        match self.checkpoint(size)? {
            Some(existing) if existing == checkpoint => Ok(()),
            Some(_) => Err(StoreError::CheckpointExists { size }),
            None => {
                let mut batch = WriteBatch::default();
                batch.put_cf(self.cf(CF_CHECKPOINTS), size.to_be_bytes(), checkpoint);
                self.write(batch)
            }
        }
    }

    fn checkpoint(&self, size: u64) -> Result<Option<Vec<u8>>> {
        self.db.get_cf(self.cf(CF_CHECKPOINTS), size.to_be_bytes()).map_err(|e| self.db_error(e))
    }

    fn latest_checkpoint(&self) -> Result<Option<(u64, Vec<u8>)>> {
        let Some(item) = self.db.iterator_cf(self.cf(CF_CHECKPOINTS), IteratorMode::End).next() else {
            return Ok(None);
        };
        let (key, value) = item.map_err(|e| self.db_error(e))?;
        let size = decode_u64(&key).ok_or_else(|| corrupt(None, format!("checkpoint key {}", hex::encode(&key))))?;
        Ok(Some((size, value.into_vec())))
    }

    fn checkpoints(&self) -> Result<Vec<(u64, Vec<u8>)>> {
        let mut checkpoints = Vec::new();
        for item in self.db.iterator_cf(self.cf(CF_CHECKPOINTS), IteratorMode::Start) {
            let (key, value) = item.map_err(|e| self.db_error(e))?;
            let size =
                decode_u64(&key).ok_or_else(|| corrupt(None, format!("checkpoint key {}", hex::encode(&key))))?;
            checkpoints.push((size, value.into_vec()));
        }
        Ok(checkpoints)
    }
}

/// The perfect nodes that appending `entries` to a log of `old_size` completes, keyed by `(level, index)`.
///
/// `read` fetches nodes already stored; nodes completed earlier in the same batch are taken from the result. Each
/// new node's left sibling, when there is one, is the last perfect node of its level before it, so this reads at
/// most `log2(old_size)` stored nodes in all.
#[cfg(feature = "rocksdb")]
fn new_nodes(
    old_size: u64,
    entries: &[Vec<u8>],
    read: impl Fn(u32, u64) -> Result<Hash>,
) -> Result<HashMap<(u32, u64), Hash>> {
    let mut nodes = HashMap::with_capacity(entries.len() * 2);
    for (offset, entry) in entries.iter().enumerate() {
        let (mut level, mut index) = (0u32, old_size + offset as u64);
        let mut hash = merkle::leaf_hash(entry);
        nodes.insert((level, index), hash);
        // A right child completes its parent; a left child waits for its sibling.
        while index % 2 == 1 {
            let left = match nodes.get(&(level, index - 1)) {
                Some(left) => *left,
                None => read(level, index - 1)?,
            };
            hash = merkle::node_hash(&left, &hash);
            level += 1;
            index /= 2;
            nodes.insert((level, index), hash);
        }
    }
    Ok(nodes)
}

/// [`StoreError::SizeBeyondLog`] when `requested` exceeds the log `size`.
fn check_size(requested: u64, size: u64) -> Result<()> {
    if requested > size { Err(StoreError::SizeBeyondLog { requested, size }) } else { Ok(()) }
}

/// [`StoreError::NodeOutOfRange`] unless node `(level, index)` is a perfect subtree of a log of `size`.
fn check_node(level: u32, index: u64, size: u64) -> Result<()> {
    let end = index.checked_add(1).and_then(|count| count.checked_mul(1u64.checked_shl(level)?));
    match end {
        Some(end) if end <= size && level < u64::BITS => Ok(()),
        _ => Err(StoreError::NodeOutOfRange { level, index, size }),
    }
}

/// [`StoreError::ReservedMetaKey`] for the store's own keys.
fn check_meta_key(key: &str) -> Result<()> {
    if key == SIZE_KEY { Err(StoreError::ReservedMetaKey { key: key.to_owned() }) } else { Ok(()) }
}

/// The number of perfect nodes in a log of `size` leaves: `size` leaves, `size / 2` pairs, and so on.
#[cfg(feature = "rocksdb")]
fn perfect_node_count(size: u64) -> u64 {
    (0..u64::BITS).map(|level| size >> level).sum()
}

#[cfg(feature = "rocksdb")]
fn node_key(level: u32, index: u64) -> [u8; 9] {
    let mut key = [0; 9];
    // Levels are below 64 (`check_node`), so one byte holds them.
    key[0] = level as u8;
    key[1..].copy_from_slice(&index.to_be_bytes());
    key
}

#[cfg(feature = "rocksdb")]
fn decode_node_key(key: &[u8]) -> Option<(u32, u64)> {
    let (&level, index) = key.split_first()?;
    Some((u32::from(level), decode_u64(index)?))
}

#[cfg(feature = "rocksdb")]
fn decode_u64(bytes: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(bytes.try_into().ok()?))
}

#[cfg(feature = "rocksdb")]
fn corrupt(index: Option<u64>, detail: String) -> StoreError {
    StoreError::Corrupt { index, detail }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Batch sizes 1, 2, 3, 5, 8, 13, 1, … until `total` entries: uneven, so batches straddle every subtree edge.
    fn batches(total: u64) -> Vec<Vec<Vec<u8>>> {
        let (mut a, mut b) = (1u64, 2u64);
        let mut next = 0u64;
        let mut out = Vec::new();
        while next < total {
            let take = a.min(total - next);
            out.push((next..next + take).map(|i| format!("entry {i}").into_bytes()).collect());
            next += take;
            (a, b) = (b, a + b);
            if a > 13 {
                (a, b) = (1, 2);
            }
        }
        out
    }

    /// Checks every root and every proof of `store` against the slice functions of `merkle`, and that they verify.
    fn check_against_merkle(store: &dyn Store) {
        let size = store.size();
        let leaves: Vec<Hash> = (0..size).map(|i| merkle::leaf_hash(&store.entry(i).unwrap())).collect();
        for n in 0..=size {
            let prefix = &leaves[..n as usize];
            let root = store.root_at(n).unwrap();
            assert_eq!(root, merkle::root(prefix), "root at {n}");
            for index in 0..n {
                let proof = store.inclusion_proof(index, n).unwrap();
                assert_eq!(proof, merkle::inclusion_proof(index, prefix), "inclusion {index} in {n}");
                merkle::verify_inclusion(index, n, &leaves[index as usize], &proof, &root).unwrap();
            }
            for old in 0..=n {
                let proof = store.consistency_proof(old, n).unwrap();
                assert_eq!(proof, merkle::consistency_proof(old, prefix), "consistency {old} to {n}");
                let old_root = merkle::root(&leaves[..old as usize]);
                merkle::verify_consistency(old, n, &old_root, &root, &proof).unwrap();
            }
        }
    }

    /// Appends 40 entries in uneven batches, checking the store after each batch.
    fn fill_and_check(store: &mut dyn Store) {
        for batch in batches(40) {
            let before = store.size();
            assert_eq!(store.append(&batch).unwrap(), before + batch.len() as u64);
            check_against_merkle(store);
        }
        assert_eq!(store.size(), 40);
    }

    #[cfg(feature = "rocksdb")]
    fn reopen_err(dir: &Path) -> StoreError {
        RocksDbStore::open(dir).expect_err("open should fail")
    }

    /// Opens the database underneath a closed store, to damage it the way a disk or an intruder might.
    #[cfg(feature = "rocksdb")]
    fn raw_db(dir: &Path) -> DB {
        DB::open_cf(&Options::default(), dir, COLUMN_FAMILIES).unwrap()
    }

    #[cfg(feature = "rocksdb")]
    fn filled_rocksdb(entries: u64) -> (tempfile::TempDir, RocksDbStore) {
        let dir = tempfile::tempdir().unwrap();
        let mut store = RocksDbStore::open(dir.path()).unwrap();
        for batch in batches(entries) {
            store.append(&batch).unwrap();
        }
        (dir, store)
    }

    #[test]
    fn memory_store_matches_merkle_for_every_size() {
        fill_and_check(&mut MemoryStore::new());
    }

    #[cfg(feature = "rocksdb")]
    #[test]
    fn rocksdb_store_matches_merkle_for_every_size() {
        let dir = tempfile::tempdir().unwrap();
        fill_and_check(&mut RocksDbStore::open(dir.path()).unwrap());
    }

    #[cfg(feature = "rocksdb")]
    #[test]
    fn both_stores_hold_exactly_the_perfect_nodes() {
        let (_dir, rocks) = filled_rocksdb(21);
        let mut memory = MemoryStore::new();
        memory.append(&(0..21).map(|i| format!("entry {i}").into_bytes()).collect::<Vec<_>>()).unwrap();
        for level in 0..7 {
            for index in 0..30 {
                let in_range = (index + 1) << level <= 21;
                let (m, r) = (memory.node(level, index), rocks.node(level, index));
                assert_eq!(m.is_ok(), in_range, "memory ({level}, {index})");
                assert_eq!(r.is_ok(), in_range, "rocksdb ({level}, {index})");
                if in_range {
                    assert_eq!(m.unwrap(), r.unwrap());
                } else {
                    assert!(matches!(r, Err(StoreError::NodeOutOfRange { size: 21, .. })));
                }
            }
        }
        assert!(matches!(rocks.node(64, 0), Err(StoreError::NodeOutOfRange { .. })));
        assert!(matches!(rocks.node(u32::MAX, u64::MAX), Err(StoreError::NodeOutOfRange { .. })));
        let raw = rocks.db.iterator_cf(rocks.cf(CF_NODES), IteratorMode::Start).count() as u64;
        assert_eq!(raw, perfect_node_count(21));
    }

    #[cfg(feature = "rocksdb")]
    #[test]
    fn empty_store_has_the_empty_root() {
        let dir = tempfile::tempdir().unwrap();
        let mut rocks = RocksDbStore::open(dir.path()).unwrap();
        assert_eq!(rocks.root().unwrap(), merkle::EMPTY_ROOT);
        assert_eq!(MemoryStore::new().root().unwrap(), merkle::EMPTY_ROOT);
        assert_eq!(rocks.append(&[]).unwrap(), 0);
        assert_eq!(rocks.consistency_proof(0, 0).unwrap(), Vec::<Hash>::new());
    }

    #[cfg(feature = "rocksdb")]
    #[test]
    fn reopen_gives_the_same_log() {
        let (dir, mut store) = filled_rocksdb(37);
        store.put_meta("key id", b"abc").unwrap();
        store.put_checkpoint(10, b"head 10").unwrap();
        store.put_checkpoint(37, b"head 37").unwrap();
        let root = store.root().unwrap();
        drop(store);

        let mut store = RocksDbStore::open(dir.path()).unwrap();
        assert_eq!(store.size(), 37);
        assert_eq!(store.root().unwrap(), root);
        for i in 0..37 {
            assert_eq!(store.entry(i).unwrap(), format!("entry {i}").into_bytes());
        }
        assert_eq!(store.meta("key id").unwrap(), Some(b"abc".to_vec()));
        assert_eq!(store.meta("other").unwrap(), None);
        assert_eq!(store.checkpoint(10).unwrap(), Some(b"head 10".to_vec()));
        assert_eq!(store.latest_checkpoint().unwrap(), Some((37, b"head 37".to_vec())));
        // Appending after a reopen reads the stored right edge to complete the new nodes.
        store.append(&(37..40).map(|i| format!("entry {i}").into_bytes()).collect::<Vec<_>>()).unwrap();
        assert_eq!(store.size(), 40);
        check_against_merkle(&store);
    }

    #[cfg(feature = "rocksdb")]
    #[test]
    fn out_of_range_requests_are_precise_errors() {
        let (_dir, rocks) = filled_rocksdb(5);
        let mut memory = MemoryStore::new();
        memory.append(&batches(5).concat()).unwrap();
        for store in [&rocks as &dyn Store, &memory] {
            assert!(matches!(store.entry(5), Err(StoreError::EntryOutOfRange { index: 5, size: 5 })));
            assert!(matches!(store.entry(u64::MAX), Err(StoreError::EntryOutOfRange { index: u64::MAX, size: 5 })));
            assert!(matches!(store.root_at(6), Err(StoreError::SizeBeyondLog { requested: 6, size: 5 })));
            assert!(matches!(store.inclusion_proof(0, 6), Err(StoreError::SizeBeyondLog { requested: 6, size: 5 })));
            assert!(matches!(
                store.inclusion_proof(5, 5),
                Err(StoreError::Proof(ProofError::IndexOutOfRange { index: 5, size: 5 }))
            ));
            assert!(matches!(
                store.consistency_proof(4, 3),
                Err(StoreError::Proof(ProofError::InvalidSizes { old_size: 4, new_size: 3 }))
            ));
            assert!(matches!(store.consistency_proof(1, 9), Err(StoreError::SizeBeyondLog { requested: 9, size: 5 })));
            assert!(matches!(store.meta(SIZE_KEY), Err(StoreError::ReservedMetaKey { .. })));
        }
    }

    #[cfg(feature = "rocksdb")]
    #[test]
    fn checkpoints_are_never_rewritten() {
        let (_dir, mut rocks) = filled_rocksdb(5);
        let mut memory = MemoryStore::new();
        memory.append(&batches(5).concat()).unwrap();
        for store in [&mut rocks as &mut dyn Store, &mut memory] {
            assert_eq!(store.latest_checkpoint().unwrap(), None);
            store.put_checkpoint(3, b"three").unwrap();
            store.put_checkpoint(3, b"three").unwrap();
            assert!(matches!(store.put_checkpoint(3, b"other"), Err(StoreError::CheckpointExists { size: 3 })));
            assert!(matches!(
                store.put_checkpoint(6, b"six"),
                Err(StoreError::SizeBeyondLog { requested: 6, size: 5 })
            ));
            assert!(matches!(store.put_meta(SIZE_KEY, b"x"), Err(StoreError::ReservedMetaKey { .. })));
            store.put_checkpoint(1, b"one").unwrap();
            assert_eq!(store.latest_checkpoint().unwrap(), Some((3, b"three".to_vec())));
        }
    }

    #[cfg(feature = "rocksdb")]
    #[test]
    fn failed_write_poisons_until_reopened() {
        let (dir, mut store) = filled_rocksdb(6);
        let root = store.root().unwrap();
        store.fail_next_write = true;
        assert!(matches!(store.append(&[b"lost".to_vec()]), Err(StoreError::Db { .. })));
        assert!(store.is_poisoned());
        // The failed append changed nothing, and every write is now refused, even ones that would succeed.
        assert_eq!(store.size(), 6);
        assert_eq!(store.root().unwrap(), root);
        assert!(matches!(store.append(&[b"again".to_vec()]), Err(StoreError::Poisoned)));
        assert!(matches!(store.append(&[]), Err(StoreError::Poisoned)));
        assert!(matches!(store.put_meta("k", b"v"), Err(StoreError::Poisoned)));
        assert!(matches!(store.put_checkpoint(6, b"head"), Err(StoreError::Poisoned)));
        drop(store);

        let mut store = RocksDbStore::open(dir.path()).unwrap();
        assert!(!store.is_poisoned());
        assert_eq!(store.size(), 6);
        assert_eq!(store.root().unwrap(), root);
        assert_eq!(store.append(&[b"kept".to_vec()]).unwrap(), 7);
    }

    #[cfg(feature = "rocksdb")]
    #[test]
    fn corrupt_entry_is_reported_with_its_index() {
        let (dir, store) = filled_rocksdb(13);
        drop(store);
        let db = raw_db(dir.path());
        db.put_cf(db.cf_handle(CF_ENTRIES).unwrap(), 9u64.to_be_bytes(), b"forged").unwrap();
        drop(db);
        assert!(matches!(reopen_err(dir.path()), StoreError::Corrupt { index: Some(9), .. }));
    }

    #[cfg(feature = "rocksdb")]
    #[test]
    fn corrupt_node_is_reported_with_its_first_leaf() {
        let (dir, store) = filled_rocksdb(13);
        drop(store);
        let db = raw_db(dir.path());
        // Node (2, 1) covers leaves 4..8, whose entries and leaf hashes are intact.
        db.put_cf(db.cf_handle(CF_NODES).unwrap(), node_key(2, 1), [7u8; 32]).unwrap();
        drop(db);
        let err = reopen_err(dir.path());
        assert!(matches!(err, StoreError::Corrupt { index: Some(4), .. }), "{err}");
    }

    /// A way to damage a closed store's database.
    #[cfg(feature = "rocksdb")]
    type Damage = fn(&DB);

    #[cfg(feature = "rocksdb")]
    #[test]
    fn missing_or_extra_records_are_corrupt() {
        let cases: [(&str, Damage, Option<u64>); 5] = [
            (
                "missing entry",
                |db| db.delete_cf(db.cf_handle(CF_ENTRIES).unwrap(), 3u64.to_be_bytes()).unwrap(),
                Some(3),
            ),
            ("missing node", |db| db.delete_cf(db.cf_handle(CF_NODES).unwrap(), node_key(1, 4)).unwrap(), Some(8)),
            (
                "extra node",
                |db| db.put_cf(db.cf_handle(CF_NODES).unwrap(), node_key(3, 1), [0u8; 32]).unwrap(),
                Some(8),
            ),
            (
                "entry beyond size",
                |db| db.put_cf(db.cf_handle(CF_ENTRIES).unwrap(), 13u64.to_be_bytes(), b"x").unwrap(),
                Some(13),
            ),
            ("malformed size", |db| db.put_cf(db.cf_handle(CF_META).unwrap(), SIZE_KEY, b"short").unwrap(), None),
        ];
        for (name, damage, index) in cases {
            let (dir, store) = filled_rocksdb(13);
            drop(store);
            let db = raw_db(dir.path());
            damage(&db);
            drop(db);
            match reopen_err(dir.path()) {
                StoreError::Corrupt { index: got, .. } => assert_eq!(got, index, "{name}"),
                other => panic!("{name}: {other}"),
            }
        }
    }
}
