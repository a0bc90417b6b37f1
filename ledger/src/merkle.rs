//! The ledger's Merkle log: RFC 9162 §2.1 trees over SHA3-256, with inclusion and consistency proofs.
//!
//! Hashing follows RFC 9162 §2.1.1 with SHA3-256 in place of SHA-256: a leaf is `H(0x00 ‖ entry)`, an interior
//! node is `H(0x01 ‖ left ‖ right)`, and the empty tree is `H("")`. A tree of `n > 1` leaves splits at the
//! largest power of two `k < n`, so its left subtree is always perfect and only the right edge can be ragged.
//!
//! Proofs carry nodes in the RFC's order: inclusion proofs are the audit path bottom-up (§2.1.3.1 `PATH`) and are
//! verified with §2.1.3.2; consistency proofs are §2.1.4.1 `SUBPROOF` and are verified with §2.1.4.2. Any RFC 9162
//! implementation that swaps in SHA3-256 produces and accepts the same proofs.
//!
//! There are three ways to get at a tree:
//!
//! - slice functions ([`root`], [`inclusion_proof`], [`consistency_proof`]) take every leaf hash and rehash what
//!   they need, `O(n)` hashes per call: simple, for tests and small logs;
//! - the `*_from` functions ([`root_from`], [`inclusion_proof_from`], [`consistency_proof_from`]) read perfect
//!   subtree roots from a [`NodeSource`], `O(log n)` reads and hashes per call, so a store that keeps interior
//!   nodes answers proofs without loading the leaves;
//! - [`MerkleTree`] is an in-memory [`NodeSource`] that keeps every perfect node as leaves are appended.
//!
//! Verification ([`verify_inclusion`], [`verify_consistency`]) needs only the proof: `O(log n)` hashes and no
//! allocation.
//!
//! A proof never binds the tree size on its own: RFC 9162 verification accepts a proof for size `n` against the
//! same root under any other size whose path has the same shape (leaf 0 of 3 leaves and of 4, say), and most
//! neighbouring sizes share it. Sizes must therefore come from a signed checkpoint, never from whoever supplies
//! the proof.
//!
//! ```
//! use pdc_ledger::merkle::{self, MerkleTree};
//!
//! let mut tree = MerkleTree::new();
//! for entry in [&b"register a"[..], b"register b", b"round 1"] {
//!     tree.append(merkle::leaf_hash(entry));
//! }
//! let old_root = tree.root();
//! tree.append(merkle::leaf_hash(b"round 2"));
//!
//! let proof = tree.inclusion_proof(1)?;
//! merkle::verify_inclusion(1, 4, &merkle::leaf_hash(b"register b"), &proof, &tree.root())?;
//!
//! let proof = tree.consistency_proof(3)?;
//! merkle::verify_consistency(3, 4, &old_root, &tree.root(), &proof)?;
//! # Ok::<(), merkle::ProofError>(())
//! ```

use sha3::{Digest, Sha3_256};

/// A SHA3-256 digest; the same type as [`crate::Hash`].
pub use crate::Hash;

/// The root of the empty tree: SHA3-256 of the empty string (RFC 9162 §2.1.1).
///
/// ```
/// assert_eq!(pdc_ledger::merkle::EMPTY_ROOT, pdc_ledger::sha3_256(b""));
/// ```
pub const EMPTY_ROOT: Hash = [
    0xa7, 0xff, 0xc6, 0xf8, 0xbf, 0x1e, 0xd7, 0x66, 0x51, 0xc1, 0x47, 0x56, 0xa0, 0x61, 0xd6, 0x62, 0xf5, 0x80, 0xff,
    0x4d, 0xe4, 0x3b, 0x49, 0xfa, 0x82, 0xd8, 0x0a, 0x4b, 0x80, 0xf8, 0x43, 0x4a,
];

/// Why a proof could not be made or did not verify.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ProofError {
    /// The leaf index is not below the tree size.
    #[error("leaf index {index} is out of range for a tree of size {size}")]
    IndexOutOfRange {
        /// The requested leaf.
        index: u64,
        /// The size of the tree.
        size: u64,
    },
    /// The proof has a different number of nodes than its sizes call for.
    #[error("proof has {actual} nodes where {expected} are expected")]
    WrongProofLength {
        /// The number of nodes a proof for these sizes has.
        expected: usize,
        /// The number of nodes supplied.
        actual: usize,
    },
    /// The inclusion proof does not lead from the leaf to the claimed root.
    #[error("inclusion proof does not lead to the claimed root")]
    RootMismatch,
    /// A consistency proof was asked for or checked with an old size larger than the new one.
    #[error("old size {old_size} is larger than new size {new_size}")]
    InvalidSizes {
        /// The size of the earlier tree.
        old_size: u64,
        /// The size of the later tree.
        new_size: u64,
    },
    /// The consistency proof does not show that the old root's tree is a prefix of the new root's tree.
    #[error("consistency proof from size {old_size} to size {new_size} does not verify")]
    ConsistencyProofInvalid {
        /// The size of the earlier tree.
        old_size: u64,
        /// The size of the later tree.
        new_size: u64,
    },
    /// A [`NodeSource`] was asked for a node it does not hold, i.e. one beyond the tree it stores.
    #[error("no node at level {level}, index {index}")]
    MissingNode {
        /// The node's level (0 = leaves).
        level: u32,
        /// The node's index within its level.
        index: u64,
    },
}

/// The Merkle module's result type.
pub type Result<T, E = ProofError> = std::result::Result<T, E>;

/// Where the `*_from` functions read perfect subtree roots: a store's node table, an in-memory [`MerkleTree`], a
/// closure.
///
/// The node at `(level, index)` is the root of the perfect subtree over leaves `[index·2^level,
/// (index+1)·2^level)`; level 0 holds the leaf hashes. Callers only ask for nodes whose leaves all lie inside the
/// tree size they were given, so a source never has to hash a ragged right edge itself.
///
/// Any `Fn(u32, u64) -> Result<Hash, E>` is a source, which lets a store answer proofs with a closure over its
/// table:
///
/// ```
/// use pdc_ledger::merkle::{self, Hash, ProofError};
///
/// let leaves: Vec<Hash> = (0u8..5).map(|i| merkle::leaf_hash(&[i])).collect();
/// // A real store would look the node up; this one rehashes the leaves it covers.
/// let source = |level: u32, index: u64| -> Result<Hash, ProofError> {
///     let width = 1usize << level;
///     let start = index as usize * width;
///     Ok(merkle::root(&leaves[start..start + width]))
/// };
/// let proof = merkle::inclusion_proof_from(&source, 3, 5)?;
/// assert_eq!(proof, merkle::inclusion_proof(3, &leaves));
/// # Ok::<(), ProofError>(())
/// ```
pub trait NodeSource {
    /// What a failed read returns. It absorbs [`ProofError`] so that the `*_from` functions can report bad
    /// arguments (an index beyond the size, an old size beyond the new) through the same type.
    type Error: From<ProofError>;

    /// The root of the perfect subtree at `(level, index)`.
    fn node(&self, level: u32, index: u64) -> Result<Hash, Self::Error>;
}

impl<F, E> NodeSource for F
where
    F: Fn(u32, u64) -> Result<Hash, E>,
    E: From<ProofError>,
{
    type Error = E;

    fn node(&self, level: u32, index: u64) -> Result<Hash, E> {
        self(level, index)
    }
}

/// The leaf hash of a log entry: `SHA3-256(0x00 ‖ data)`.
///
/// The prefix byte keeps leaf hashes and interior-node hashes in separate domains, so no interior node can be
/// passed off as a leaf (RFC 9162 §2.1.1).
///
/// ```
/// use pdc_ledger::merkle;
///
/// assert_eq!(merkle::leaf_hash(b"entry"), pdc_ledger::sha3_256(b"\x00entry"));
/// ```
pub fn leaf_hash(data: &[u8]) -> Hash {
    Sha3_256::new().chain_update([0x00]).chain_update(data).finalize().into()
}

/// The hash of an interior node: `SHA3-256(0x01 ‖ left ‖ right)`.
///
/// ```
/// use pdc_ledger::merkle;
///
/// let (left, right) = (merkle::leaf_hash(b"a"), merkle::leaf_hash(b"b"));
/// let bytes = [&[0x01][..], &left, &right].concat();
/// assert_eq!(merkle::node_hash(&left, &right), pdc_ledger::sha3_256(&bytes));
/// ```
pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    // One contiguous 65-byte input fits a single SHA3-256 block, so the digest is one permutation and no heap.
    let mut input = [0u8; 65];
    input[0] = 0x01;
    input[1..33].copy_from_slice(left);
    input[33..].copy_from_slice(right);
    Sha3_256::digest(input).into()
}

/// The root of the tree whose leaves have these hashes (RFC 9162 §2.1.1 `MTH`); [`EMPTY_ROOT`] for no leaves.
///
/// Rehashes every leaf: `n - 1` node hashes. Use [`root_from`] when interior nodes are stored.
///
/// ```
/// use pdc_ledger::merkle;
///
/// let leaves = [merkle::leaf_hash(b"a"), merkle::leaf_hash(b"b"), merkle::leaf_hash(b"c")];
/// let expected = merkle::node_hash(&merkle::node_hash(&leaves[0], &leaves[1]), &leaves[2]);
/// assert_eq!(merkle::root(&leaves), expected);
/// assert_eq!(merkle::root(&[]), merkle::EMPTY_ROOT);
/// ```
pub fn root(leaf_hashes: &[Hash]) -> Hash {
    // The perfect pieces are the binary digits of the length, largest first; fold them from the right.
    let mut rest = leaf_hashes;
    let mut hash: Option<Hash> = None;
    while !rest.is_empty() {
        let width = 1 << rest.len().trailing_zeros();
        let (left, piece) = rest.split_at(rest.len() - width);
        let piece = perfect_slice_root(piece);
        hash = Some(hash.map_or(piece, |right| node_hash(&piece, &right)));
        rest = left;
    }
    hash.unwrap_or(EMPTY_ROOT)
}

/// The inclusion proof of leaf `index` in the tree of these leaves: its audit path, bottom-up (RFC 9162 §2.1.3.1
/// `PATH`).
///
/// Returns an empty proof when `index` is not below the number of leaves; an empty proof only verifies for the
/// single leaf of a one-leaf tree, so verifying it under the true size fails with
/// [`ProofError::IndexOutOfRange`]. Use [`try_inclusion_proof`] to have the error here instead.
///
/// Rehashes the leaves around the path, about `n` hashes; [`inclusion_proof_from`] needs `O(log n)`.
///
/// ```
/// use pdc_ledger::merkle;
///
/// let leaves: Vec<_> = (0u8..3).map(|i| merkle::leaf_hash(&[i])).collect();
/// // Leaf 2's sibling is the subtree over leaves 0 and 1.
/// assert_eq!(merkle::inclusion_proof(2, &leaves), [merkle::node_hash(&leaves[0], &leaves[1])]);
/// assert!(merkle::inclusion_proof(3, &leaves).is_empty());
/// ```
pub fn inclusion_proof(index: u64, leaf_hashes: &[Hash]) -> Vec<Hash> {
    try_inclusion_proof(index, leaf_hashes).unwrap_or_default()
}

/// Like [`inclusion_proof`], but an `index` that is not below the number of leaves is
/// [`ProofError::IndexOutOfRange`].
pub fn try_inclusion_proof(index: u64, leaf_hashes: &[Hash]) -> Result<Vec<Hash>> {
    inclusion_proof_from(&LeafSlice(leaf_hashes), index, leaf_count(leaf_hashes))
}

/// Checks that `leaf_hash` is leaf `index` of the tree of `size` leaves whose root is `root` (RFC 9162 §2.1.3.2).
///
/// The proof length is checked before any hashing, so a truncated or padded proof fails fast with
/// [`ProofError::WrongProofLength`]; a proof of the right length that does not reproduce `root` is
/// [`ProofError::RootMismatch`].
///
/// `size` must come from a trusted (signed) checkpoint: the proof cannot bind it, see the [module
/// documentation](self).
///
/// ```
/// use pdc_ledger::merkle::{self, ProofError};
///
/// let leaves: Vec<_> = (0u8..5).map(|i| merkle::leaf_hash(&[i])).collect();
/// let (proof, root) = (merkle::inclusion_proof(3, &leaves), merkle::root(&leaves));
/// assert_eq!(merkle::verify_inclusion(3, 5, &leaves[3], &proof, &root), Ok(()));
/// assert_eq!(merkle::verify_inclusion(3, 5, &leaves[2], &proof, &root), Err(ProofError::RootMismatch));
/// ```
pub fn verify_inclusion(index: u64, size: u64, leaf_hash: &Hash, proof: &[Hash], root: &Hash) -> Result<()> {
    if index >= size {
        return Err(ProofError::IndexOutOfRange { index, size });
    }
    let expected = inclusion_proof_len(index, size);
    if proof.len() != expected {
        return Err(ProofError::WrongProofLength { expected, actual: proof.len() });
    }
    // `position` walks up from the leaf, `last` up from the last leaf; where they meet the path runs along the
    // right edge, whose collapsed levels have no sibling and so no proof node.
    let (mut position, mut last) = (index, size - 1);
    let mut hash = *leaf_hash;
    for sibling in proof {
        if position & 1 == 1 || position == last {
            hash = node_hash(sibling, &hash);
            while position & 1 == 0 && position != 0 {
                position >>= 1;
                last >>= 1;
            }
        } else {
            hash = node_hash(&hash, sibling);
        }
        position >>= 1;
        last >>= 1;
    }
    if last == 0 && hash == *root { Ok(()) } else { Err(ProofError::RootMismatch) }
}

/// The proof that the tree of the first `old_size` leaves is a prefix of the tree of all of them (RFC 9162
/// §2.1.4.1 `PROOF`, built from `SUBPROOF`).
///
/// Edge cases, all matched by [`verify_consistency`]: `old_size == 0` and `old_size == leaf_hashes.len()` give an
/// empty proof (the empty tree is a prefix of every tree; a tree is its own prefix). An `old_size` beyond the
/// number of leaves also gives an empty proof, which fails verification under the true sizes with
/// [`ProofError::WrongProofLength`] or [`ProofError::InvalidSizes`]; use [`try_consistency_proof`] to have the
/// error here instead.
///
/// Rehashes the leaves, about `n` hashes; [`consistency_proof_from`] needs `O(log n)`.
///
/// ```
/// use pdc_ledger::merkle;
///
/// let leaves: Vec<_> = (0u8..3).map(|i| merkle::leaf_hash(&[i])).collect();
/// // The old tree (leaves 0, 1) is a perfect subtree of the new one; only its right neighbour is needed.
/// assert_eq!(merkle::consistency_proof(2, &leaves), [leaves[2]]);
/// ```
pub fn consistency_proof(old_size: u64, leaf_hashes: &[Hash]) -> Vec<Hash> {
    try_consistency_proof(old_size, leaf_hashes).unwrap_or_default()
}

/// Like [`consistency_proof`], but an `old_size` beyond the number of leaves is [`ProofError::InvalidSizes`].
pub fn try_consistency_proof(old_size: u64, leaf_hashes: &[Hash]) -> Result<Vec<Hash>> {
    consistency_proof_from(&LeafSlice(leaf_hashes), old_size, leaf_count(leaf_hashes))
}

/// Checks that the tree of `old_size` leaves with root `old_root` is a prefix of the tree of `new_size` leaves
/// with root `new_root` (RFC 9162 §2.1.4.2).
///
/// RFC 9162 leaves two cases open; this module defines them so that they agree with [`consistency_proof`]:
///
/// - `old_size == new_size`: the proof must be empty and the roots equal;
/// - `old_size == 0`: the proof must be empty and `old_root` must be [`EMPTY_ROOT`]. Every tree extends the empty
///   one, so `new_root` is not constrained.
///
/// Errors: [`ProofError::InvalidSizes`] when `old_size > new_size`; [`ProofError::WrongProofLength`] before any
/// hashing when the proof has the wrong number of nodes; [`ProofError::ConsistencyProofInvalid`] when the proof
/// does not reproduce both roots. As with inclusion, the sizes must come from trusted checkpoints.
///
/// ```
/// use pdc_ledger::merkle::{self, ProofError};
///
/// let leaves: Vec<_> = (0u8..7).map(|i| merkle::leaf_hash(&[i])).collect();
/// let (old_root, new_root) = (merkle::root(&leaves[..3]), merkle::root(&leaves));
/// let proof = merkle::consistency_proof(3, &leaves);
/// assert_eq!(merkle::verify_consistency(3, 7, &old_root, &new_root, &proof), Ok(()));
/// assert_eq!(
///     merkle::verify_consistency(3, 7, &new_root, &new_root, &proof),
///     Err(ProofError::ConsistencyProofInvalid { old_size: 3, new_size: 7 }),
/// );
/// ```
pub fn verify_consistency(
    old_size: u64,
    new_size: u64,
    old_root: &Hash,
    new_root: &Hash,
    proof: &[Hash],
) -> Result<()> {
    if old_size > new_size {
        return Err(ProofError::InvalidSizes { old_size, new_size });
    }
    let expected = consistency_proof_len(old_size, new_size);
    if proof.len() != expected {
        return Err(ProofError::WrongProofLength { expected, actual: proof.len() });
    }
    let invalid = ProofError::ConsistencyProofInvalid { old_size, new_size };
    if old_size == 0 {
        return if *old_root == EMPTY_ROOT { Ok(()) } else { Err(invalid) };
    }
    if old_size == new_size {
        return if old_root == new_root { Ok(()) } else { Err(invalid) };
    }

    // When the old tree is perfect it is itself a node of the new tree, and the proof leaves it out: the RFC
    // prepends the old root. Chaining it on avoids copying the proof.
    let mut nodes = proof.iter();
    let seed = if old_size.is_power_of_two() {
        old_root
    } else {
        // The length check guarantees at least one node for 0 < old_size < new_size.
        nodes.next().ok_or(invalid)?
    };
    let (mut old_position, mut last) = (old_size - 1, new_size - 1);
    while old_position & 1 == 1 {
        old_position >>= 1;
        last >>= 1;
    }
    // `old_hash` rebuilds the old root from the nodes left of the old edge, `new_hash` the new root from all.
    let (mut old_hash, mut new_hash) = (*seed, *seed);
    for node in nodes {
        if last == 0 {
            return Err(invalid);
        }
        if old_position & 1 == 1 || old_position == last {
            old_hash = node_hash(node, &old_hash);
            new_hash = node_hash(node, &new_hash);
            while old_position & 1 == 0 && old_position != 0 {
                old_position >>= 1;
                last >>= 1;
            }
        } else {
            new_hash = node_hash(&new_hash, node);
        }
        old_position >>= 1;
        last >>= 1;
    }
    if last == 0 && old_hash == *old_root && new_hash == *new_root { Ok(()) } else { Err(invalid) }
}

/// The root of the first `size` leaves of `source`'s tree, from at most `log2(size) + 1` node reads.
///
/// A ragged right edge is rebuilt from the perfect subtrees that cover it; [`EMPTY_ROOT`] for `size == 0`.
pub fn root_from<S: NodeSource + ?Sized>(source: &S, size: u64) -> Result<Hash, S::Error> {
    if size == 0 { Ok(EMPTY_ROOT) } else { range_root(source, 0, size) }
}

/// The inclusion proof of leaf `index` in the first `size` leaves of `source`'s tree, the same as
/// [`inclusion_proof`] but from `O(log size)` node reads (at most `2·⌈log2 size⌉ + 1`).
///
/// `index >= size` is [`ProofError::IndexOutOfRange`], converted into the source's error type.
pub fn inclusion_proof_from<S: NodeSource + ?Sized>(source: &S, index: u64, size: u64) -> Result<Vec<Hash>, S::Error> {
    if index >= size {
        return Err(ProofError::IndexOutOfRange { index, size }.into());
    }
    let mut proof = Vec::with_capacity(inclusion_proof_len(index, size));
    // Walk `PATH` top-down over the subtree [start, start + width) and reverse at the end: the RFC lists the
    // deepest sibling first. Left siblings are perfect; a right sibling is ragged only on the tree's right edge,
    // which the walk leaves at most once, so the reads stay logarithmic.
    let (mut start, mut width) = (0, size);
    while width > 1 {
        let split = split_point(width);
        if index - start < split {
            proof.push(range_root(source, start + split, start + width)?);
            width = split;
        } else {
            proof.push(perfect_root(source, start, split)?);
            start += split;
            width -= split;
        }
    }
    proof.reverse();
    Ok(proof)
}

/// The consistency proof from the first `old_size` to the first `new_size` leaves of `source`'s tree, the same
/// as [`consistency_proof`] but from `O(log new_size)` node reads.
///
/// `old_size > new_size` is [`ProofError::InvalidSizes`], converted into the source's error type; `old_size == 0`
/// and `old_size == new_size` give an empty proof without reading anything.
pub fn consistency_proof_from<S: NodeSource + ?Sized>(
    source: &S,
    old_size: u64,
    new_size: u64,
) -> Result<Vec<Hash>, S::Error> {
    if old_size > new_size {
        return Err(ProofError::InvalidSizes { old_size, new_size }.into());
    }
    let mut proof = Vec::with_capacity(consistency_proof_len(old_size, new_size));
    if old_size == 0 || old_size == new_size {
        return Ok(proof);
    }
    // `SUBPROOF` top-down, reversed at the end like `PATH`. `old_width` is how much of the current subtree the
    // old tree covers; `whole` is the RFC's flag `b`, false once the old tree's root is not a node we are in.
    let (mut start, mut width, mut old_width, mut whole) = (0, new_size, old_size, true);
    while old_width != width {
        let split = split_point(width);
        if old_width <= split {
            proof.push(range_root(source, start + split, start + width)?);
            width = split;
        } else {
            proof.push(perfect_root(source, start, split)?);
            start += split;
            width -= split;
            old_width -= split;
            whole = false;
        }
    }
    if !whole {
        // The loop can only end by stepping left, so this subtree is perfect.
        proof.push(perfect_root(source, start, width)?);
    }
    proof.reverse();
    Ok(proof)
}

/// An append-only in-memory Merkle log that keeps every perfect node, so roots and proofs cost `O(log n)`.
///
/// Holds about `2n` hashes for `n` leaves. Appending is amortised one node hash per leaf. Roots and proofs for
/// any earlier size are available too, since a perfect node never changes once its leaves are in.
///
/// ```
/// use pdc_ledger::merkle::{self, MerkleTree};
///
/// let leaves: Vec<_> = (0u8..10).map(|i| merkle::leaf_hash(&[i])).collect();
/// let tree: MerkleTree = leaves.iter().copied().collect();
/// assert_eq!(tree.root(), merkle::root(&leaves));
/// assert_eq!(tree.root_at(4)?, merkle::root(&leaves[..4]));
/// assert_eq!(tree.inclusion_proof(7)?, merkle::inclusion_proof(7, &leaves));
/// # Ok::<(), merkle::ProofError>(())
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MerkleTree {
    /// `levels[l][i]` is the perfect node `(l, i)`; level 0 is the leaf hashes.
    levels: Vec<Vec<Hash>>,
}

impl MerkleTree {
    /// An empty log.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends a leaf hash (see [`leaf_hash`]) and returns its index.
    pub fn append(&mut self, leaf_hash: Hash) -> u64 {
        let index = self.len();
        let mut hash = leaf_hash;
        for level in 0.. {
            if self.levels.len() == level {
                self.levels.push(Vec::new());
            }
            let nodes = &mut self.levels[level];
            nodes.push(hash);
            // A node that arrives as a left child waits for its sibling; a right child completes its parent.
            if nodes.len() % 2 == 1 {
                break;
            }
            hash = node_hash(&nodes[nodes.len() - 2], &nodes[nodes.len() - 1]);
        }
        index
    }

    /// The number of leaves.
    pub fn len(&self) -> u64 {
        self.levels.first().map_or(0, |leaves| leaf_count(leaves))
    }

    /// Whether the log has no leaves.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The leaf hashes, in order.
    pub fn leaf_hashes(&self) -> &[Hash] {
        self.levels.first().map_or(&[], Vec::as_slice)
    }

    /// The current root; [`EMPTY_ROOT`] when empty.
    pub fn root(&self) -> Hash {
        // For the current length, the piece at each set bit of the length is the last node of that level.
        let len = self.len();
        let mut hash: Option<Hash> = None;
        for (level, nodes) in self.levels.iter().enumerate() {
            if let (1, Some(piece)) = ((len >> level) & 1, nodes.last()) {
                hash = Some(hash.map_or(*piece, |right| node_hash(piece, &right)));
            }
        }
        hash.unwrap_or(EMPTY_ROOT)
    }

    /// The root the log had when it held `size` leaves; [`ProofError::InvalidSizes`] beyond the current length.
    pub fn root_at(&self, size: u64) -> Result<Hash> {
        if size > self.len() {
            return Err(ProofError::InvalidSizes { old_size: size, new_size: self.len() });
        }
        root_from(self, size)
    }

    /// The inclusion proof of leaf `index` in the current tree; [`ProofError::IndexOutOfRange`] beyond it.
    pub fn inclusion_proof(&self, index: u64) -> Result<Vec<Hash>> {
        inclusion_proof_from(self, index, self.len())
    }

    /// The consistency proof from the tree's first `old_size` leaves to the current tree;
    /// [`ProofError::InvalidSizes`] when `old_size` is beyond the current length.
    pub fn consistency_proof(&self, old_size: u64) -> Result<Vec<Hash>> {
        consistency_proof_from(self, old_size, self.len())
    }
}

impl NodeSource for MerkleTree {
    type Error = ProofError;

    fn node(&self, level: u32, index: u64) -> Result<Hash> {
        let missing = ProofError::MissingNode { level, index };
        let nodes = self.levels.get(usize::try_from(level).map_err(|_| missing)?).ok_or(missing)?;
        nodes.get(usize::try_from(index).map_err(|_| missing)?).copied().ok_or(missing)
    }
}

impl Extend<Hash> for MerkleTree {
    fn extend<I: IntoIterator<Item = Hash>>(&mut self, leaf_hashes: I) {
        for leaf_hash in leaf_hashes {
            self.append(leaf_hash);
        }
    }
}

impl FromIterator<Hash> for MerkleTree {
    fn from_iter<I: IntoIterator<Item = Hash>>(leaf_hashes: I) -> Self {
        let mut tree = Self::new();
        tree.extend(leaf_hashes);
        tree
    }
}

/// The number of nodes in the inclusion proof of `index` in a tree of `size` leaves (`index < size`).
fn inclusion_proof_len(index: u64, size: u64) -> usize {
    // Below the level where the paths to `index` and to the last leaf join, every level has a sibling; above it
    // the path runs along the right edge and only levels where it is a right child have one (a left sibling).
    let inner = u64::BITS - (index ^ (size - 1)).leading_zeros();
    // `inner` is 64 when the paths part at the root of a tree past 2⁶³ leaves: nothing lies above it, and a shift
    // by 64 would overflow (a hostile size reached this; `fuzz/regressions/merkle` replays it).
    let border = index.checked_shr(inner).unwrap_or(0).count_ones();
    (inner + border) as usize
}

/// The number of nodes in the consistency proof from `old_size` to `new_size` leaves (`old_size <= new_size`).
fn consistency_proof_len(old_size: u64, new_size: u64) -> usize {
    if old_size == 0 || old_size == new_size {
        return 0;
    }
    // Replays the `SUBPROOF` walk of `consistency_proof_from` without hashing: at most 64 steps.
    let (mut width, mut old_width, mut whole, mut len) = (new_size, old_size, true, 0);
    while old_width != width {
        let split = split_point(width);
        if old_width <= split {
            width = split;
        } else {
            width -= split;
            old_width -= split;
            whole = false;
        }
        len += 1;
    }
    len + usize::from(!whole)
}

/// The largest power of two strictly below `width` (`width >= 2`): where RFC 9162 splits a subtree.
fn split_point(width: u64) -> u64 {
    1 << (u64::BITS - 1 - (width - 1).leading_zeros())
}

/// The root of the perfect subtree of `width` leaves (a power of two) starting at leaf `start`.
fn perfect_root<S: NodeSource + ?Sized>(source: &S, start: u64, width: u64) -> Result<Hash, S::Error> {
    debug_assert!(width.is_power_of_two() && start.is_multiple_of(width));
    let level = width.trailing_zeros();
    source.node(level, start >> level)
}

/// The RFC 9162 root of leaves `[start, end)` for a subtree of the RFC tree, read as perfect pieces.
///
/// Such a subtree starts at a multiple of the next power of two above its width, so its pieces are the binary
/// digits of the width, largest first, and its root folds them from the right. Folding from the right also means
/// no buffer: the smallest piece ends at `end`.
fn range_root<S: NodeSource + ?Sized>(source: &S, start: u64, end: u64) -> Result<Hash, S::Error> {
    debug_assert!(start < end && start.is_multiple_of((end - start).next_power_of_two()));
    let mut remaining = end - start;
    let mut piece_end = end;
    let mut hash: Option<Hash> = None;
    while remaining != 0 {
        let level = remaining.trailing_zeros();
        piece_end -= 1 << level;
        let piece = source.node(level, piece_end >> level)?;
        hash = Some(hash.map_or(piece, |right| node_hash(&piece, &right)));
        remaining &= remaining - 1;
    }
    Ok(hash.unwrap_or(EMPTY_ROOT))
}

/// Leaf hashes in a slice as a [`NodeSource`]: perfect nodes are rehashed from their leaves on demand.
struct LeafSlice<'a>(&'a [Hash]);

impl NodeSource for LeafSlice<'_> {
    type Error = ProofError;

    fn node(&self, level: u32, index: u64) -> Result<Hash> {
        let missing = ProofError::MissingNode { level, index };
        let width = 1usize.checked_shl(level).ok_or(missing)?;
        let start = usize::try_from(index).ok().and_then(|index| index.checked_mul(width)).ok_or(missing)?;
        let leaves = self.0.get(start..start.checked_add(width).ok_or(missing)?).ok_or(missing)?;
        Ok(perfect_slice_root(leaves))
    }
}

/// The root of a perfect (power-of-two-sized, non-empty) run of leaf hashes.
fn perfect_slice_root(leaves: &[Hash]) -> Hash {
    match leaves {
        [leaf] => *leaf,
        _ => {
            let (left, right) = leaves.split_at(leaves.len() / 2);
            node_hash(&perfect_slice_root(left), &perfect_slice_root(right))
        }
    }
}

/// The number of leaves in a slice, as a tree size.
fn leaf_count(leaf_hashes: &[Hash]) -> u64 {
    // usize is at most 64 bits on every target Rust supports, so this never truncates.
    leaf_hashes.len() as u64
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use proptest::prelude::*;

    use super::*;

    /// The largest tree the exhaustive tests cover.
    const MAX_SIZE: u64 = 64;

    #[test]
    fn sizes_past_two_to_the_63_are_refused_not_a_panic() {
        // The fuzzer's find: index 0 and the last leaf of a tree of 2⁶³ + 1 part at the root, 64 levels up.
        let size = (1u64 << 63) + 1;
        assert_eq!(inclusion_proof_len(0, size), 64);
        assert_eq!(inclusion_proof_len(size - 1, size), 1);
        let error = verify_inclusion(0, size, &[0; 32], &[], &[0; 32]).unwrap_err();
        assert_eq!(error, ProofError::WrongProofLength { expected: 64, actual: 0 });
        assert!(verify_inclusion(u64::MAX - 1, u64::MAX, &[0; 32], &[[1; 32]; 3], &[0; 32]).is_err());
    }

    fn leaves(n: u64) -> Vec<Hash> {
        (0..n).map(|i| leaf_hash(format!("entry {i}").as_bytes())).collect()
    }

    /// RFC 9162 §2.1.1 `MTH`, transcribed: the reference the fast code is checked against.
    fn naive_root(leaves: &[Hash]) -> Hash {
        match leaves.len() {
            0 => crate::sha3_256(b""),
            1 => leaves[0],
            n => {
                let k = naive_split(n);
                naive_node(&naive_root(&leaves[..k]), &naive_root(&leaves[k..]))
            }
        }
    }

    /// RFC 9162 §2.1.3.1 `PATH`, transcribed.
    fn naive_path(m: usize, leaves: &[Hash]) -> Vec<Hash> {
        let n = leaves.len();
        if n == 1 {
            return Vec::new();
        }
        let k = naive_split(n);
        if m < k {
            let mut path = naive_path(m, &leaves[..k]);
            path.push(naive_root(&leaves[k..]));
            path
        } else {
            let mut path = naive_path(m - k, &leaves[k..]);
            path.push(naive_root(&leaves[..k]));
            path
        }
    }

    /// RFC 9162 §2.1.4.1 `PROOF`, transcribed.
    fn naive_proof(m: usize, leaves: &[Hash]) -> Vec<Hash> {
        if m == 0 || m == leaves.len() { Vec::new() } else { naive_subproof(m, leaves, true) }
    }

    /// RFC 9162 §2.1.4.1 `SUBPROOF`, transcribed.
    fn naive_subproof(m: usize, leaves: &[Hash], whole: bool) -> Vec<Hash> {
        let n = leaves.len();
        if m == n {
            return if whole { Vec::new() } else { vec![naive_root(leaves)] };
        }
        let k = naive_split(n);
        if m <= k {
            let mut proof = naive_subproof(m, &leaves[..k], whole);
            proof.push(naive_root(&leaves[k..]));
            proof
        } else {
            let mut proof = naive_subproof(m - k, &leaves[k..], false);
            proof.push(naive_root(&leaves[..k]));
            proof
        }
    }

    /// The largest power of two strictly below `n`, by counting rather than bit tricks.
    fn naive_split(n: usize) -> usize {
        let mut k = 1;
        while k * 2 < n {
            k *= 2;
        }
        k
    }

    /// Node hashing through an allocating concatenation, independent of `node_hash`'s buffer.
    fn naive_node(left: &Hash, right: &Hash) -> Hash {
        crate::sha3_256(&[&[1u8][..], left, right].concat())
    }

    /// Which way each step of §2.1.3.2 combines (true: proof node on the left), for the sizes alone. Two claims
    /// with the same trace hash the same inputs the same way, so no verifier can tell them apart.
    fn inclusion_trace(index: u64, size: u64) -> Vec<bool> {
        let (mut position, mut last, mut trace) = (index, size - 1, Vec::new());
        while last != 0 {
            let left = position % 2 == 1 || position == last;
            trace.push(left);
            if left {
                while position.is_multiple_of(2) && position != 0 {
                    position /= 2;
                    last /= 2;
                }
            }
            position /= 2;
            last /= 2;
        }
        trace
    }

    /// The §2.1.4.2 analogue of [`inclusion_trace`]: whether the old root is prepended, then each step's branch.
    fn consistency_trace(old_size: u64, new_size: u64) -> (bool, Vec<bool>) {
        let (mut position, mut last, mut trace) = (old_size - 1, new_size - 1, Vec::new());
        while position % 2 == 1 {
            position /= 2;
            last /= 2;
        }
        while last != 0 {
            let both = position % 2 == 1 || position == last;
            trace.push(both);
            if both {
                while position.is_multiple_of(2) && position != 0 {
                    position /= 2;
                    last /= 2;
                }
            }
            position /= 2;
            last /= 2;
        }
        (old_size.is_power_of_two(), trace)
    }

    /// A source that rehashes nodes from the leaves and counts its reads.
    struct CountingSource {
        leaves: Vec<Hash>,
        reads: Cell<u32>,
    }

    impl NodeSource for CountingSource {
        type Error = ProofError;

        fn node(&self, level: u32, index: u64) -> Result<Hash> {
            self.reads.set(self.reads.get() + 1);
            let width = 1usize << level;
            let start = index as usize * width;
            assert!(start + width <= self.leaves.len(), "read ({level}, {index}) beyond {}", self.leaves.len());
            Ok(naive_root(&self.leaves[start..start + width]))
        }
    }

    impl CountingSource {
        fn take_reads(&self) -> u32 {
            self.reads.replace(0)
        }
    }

    /// `ceil(log2(size))`: the height of a tree of `size` leaves.
    fn height(size: u64) -> u32 {
        u64::BITS - size.saturating_sub(1).leading_zeros()
    }

    fn flip_bit(hash: &mut Hash, bit: usize) {
        hash[bit / 8] ^= 1 << (bit % 8);
    }

    #[test]
    fn empty_root_is_sha3_of_nothing() {
        assert_eq!(hex::encode(EMPTY_ROOT), "a7ffc6f8bf1ed76651c14756a061d662f580ff4de43b49fa82d80a4b80f8434a");
        assert_eq!(root(&[]), EMPTY_ROOT);
        assert_eq!(MerkleTree::new().root(), EMPTY_ROOT);
    }

    #[test]
    fn hashes_are_domain_separated() {
        assert_eq!(leaf_hash(b"d0"), crate::sha3_256(b"\x00d0"));
        let (left, right) = (leaf_hash(b"d0"), leaf_hash(b"d1"));
        assert_eq!(node_hash(&left, &right), naive_node(&left, &right));
        assert_ne!(node_hash(&left, &right), node_hash(&right, &left));
    }

    #[test]
    fn small_roots_by_hand() {
        let (l0, l1, l2) = (leaf_hash(b"d0"), leaf_hash(b"d1"), leaf_hash(b"d2"));
        assert_eq!(root(&[l0]), l0);
        assert_eq!(root(&[l0, l1]), node_hash(&l0, &l1));
        assert_eq!(root(&[l0, l1, l2]), node_hash(&node_hash(&l0, &l1), &l2));
        let l3 = leaf_hash(b"d3");
        let l4 = leaf_hash(b"d4");
        assert_eq!(root(&[l0, l1, l2, l3, l4]), node_hash(&node_hash(&node_hash(&l0, &l1), &node_hash(&l2, &l3)), &l4));
    }

    #[test]
    fn roots_match_rfc_mth() {
        let all = leaves(MAX_SIZE);
        for size in 0..=MAX_SIZE as usize {
            assert_eq!(root(&all[..size]), naive_root(&all[..size]), "size {size}");
        }
    }

    #[test]
    fn inclusion_proofs_match_rfc_path_and_verify() {
        let all = leaves(MAX_SIZE);
        for size in 1..=MAX_SIZE {
            let tree = &all[..size as usize];
            let root = naive_root(tree);
            for index in 0..size {
                let proof = inclusion_proof(index, tree);
                assert_eq!(proof, naive_path(index as usize, tree), "index {index}, size {size}");
                assert_eq!(proof.len(), inclusion_proof_len(index, size));
                assert_eq!(verify_inclusion(index, size, &tree[index as usize], &proof, &root), Ok(()));
            }
        }
    }

    #[test]
    fn consistency_proofs_match_rfc_subproof_and_verify() {
        let all = leaves(MAX_SIZE);
        for new_size in 0..=MAX_SIZE {
            let tree = &all[..new_size as usize];
            let new_root = naive_root(tree);
            for old_size in 0..=new_size {
                let proof = consistency_proof(old_size, tree);
                assert_eq!(proof, naive_proof(old_size as usize, tree), "old {old_size}, new {new_size}");
                assert_eq!(proof.len(), consistency_proof_len(old_size, new_size));
                let old_root = naive_root(&tree[..old_size as usize]);
                assert_eq!(verify_consistency(old_size, new_size, &old_root, &new_root, &proof), Ok(()));
            }
        }
    }

    #[test]
    fn node_sources_agree_with_slices_in_logarithmic_reads() {
        let all = leaves(MAX_SIZE);
        let tree: MerkleTree = all.iter().copied().collect();
        let counting = CountingSource { leaves: all.clone(), reads: Cell::new(0) };
        for size in 0..=MAX_SIZE {
            let slice = &all[..size as usize];
            let reads_allowed = 2 * height(size) + 1;

            assert_eq!(root_from(&tree, size), Ok(root(slice)));
            assert_eq!(root_from(&counting, size), Ok(root(slice)));
            assert!(counting.take_reads() <= height(size) + 1, "root at {size}");

            for index in 0..size {
                assert_eq!(inclusion_proof_from(&tree, index, size), Ok(inclusion_proof(index, slice)));
                assert_eq!(inclusion_proof_from(&counting, index, size), Ok(inclusion_proof(index, slice)));
                assert!(counting.take_reads() <= reads_allowed, "inclusion of {index} in {size}");
            }
            for old_size in 0..=size {
                let expected = Ok(consistency_proof(old_size, slice));
                assert_eq!(consistency_proof_from(&tree, old_size, size), expected);
                assert_eq!(consistency_proof_from(&counting, old_size, size), expected);
                assert!(counting.take_reads() <= reads_allowed, "consistency from {old_size} to {size}");
            }
        }
    }

    #[test]
    fn tree_grows_like_the_slice() {
        let all = leaves(MAX_SIZE);
        let mut tree = MerkleTree::new();
        for (index, leaf) in all.iter().enumerate() {
            assert_eq!(tree.append(*leaf), index as u64);
            let slice = &all[..=index];
            assert_eq!(tree.len(), slice.len() as u64);
            assert_eq!(tree.leaf_hashes(), slice);
            assert_eq!(tree.root(), naive_root(slice));
        }
        for size in 0..=MAX_SIZE {
            assert_eq!(tree.root_at(size), Ok(naive_root(&all[..size as usize])));
            assert_eq!(tree.consistency_proof(size), Ok(consistency_proof(size, &all)));
        }
        assert_eq!(tree.inclusion_proof(MAX_SIZE - 1), Ok(inclusion_proof(MAX_SIZE - 1, &all)));
    }

    #[test]
    fn out_of_range_requests_are_errors_or_empty() {
        let all = leaves(5);
        let tree: MerkleTree = all.iter().copied().collect();
        assert!(inclusion_proof(5, &all).is_empty());
        assert!(inclusion_proof(0, &[]).is_empty());
        assert_eq!(try_inclusion_proof(5, &all), Err(ProofError::IndexOutOfRange { index: 5, size: 5 }));
        assert_eq!(tree.inclusion_proof(9), Err(ProofError::IndexOutOfRange { index: 9, size: 5 }));
        assert_eq!(
            verify_inclusion(5, 5, &all[0], &inclusion_proof(5, &all), &root(&all)),
            Err(ProofError::IndexOutOfRange { index: 5, size: 5 })
        );

        assert!(consistency_proof(6, &all).is_empty());
        assert_eq!(try_consistency_proof(6, &all), Err(ProofError::InvalidSizes { old_size: 6, new_size: 5 }));
        assert_eq!(tree.consistency_proof(6), Err(ProofError::InvalidSizes { old_size: 6, new_size: 5 }));
        assert_eq!(tree.root_at(6), Err(ProofError::InvalidSizes { old_size: 6, new_size: 5 }));
        assert_eq!(
            verify_consistency(6, 5, &root(&all), &root(&all), &[]),
            Err(ProofError::InvalidSizes { old_size: 6, new_size: 5 })
        );

        // A source asked beyond what it holds says so rather than panicking.
        assert_eq!(inclusion_proof_from(&tree, 3, 8), Err(ProofError::MissingNode { level: 2, index: 1 }));
        assert_eq!(root_from(&tree, 6), Err(ProofError::MissingNode { level: 1, index: 2 }));
    }

    #[test]
    fn consistency_edge_cases_are_defined() {
        let all = leaves(6);
        let (old_root, new_root) = (root(&all[..4]), root(&all));
        // From the empty tree: no proof needed, but the old root must be the empty root.
        assert_eq!(verify_consistency(0, 6, &EMPTY_ROOT, &new_root, &[]), Ok(()));
        assert_eq!(verify_consistency(0, 0, &EMPTY_ROOT, &EMPTY_ROOT, &[]), Ok(()));
        assert_eq!(
            verify_consistency(0, 6, &old_root, &new_root, &[]),
            Err(ProofError::ConsistencyProofInvalid { old_size: 0, new_size: 6 })
        );
        assert_eq!(
            verify_consistency(0, 6, &EMPTY_ROOT, &new_root, &[new_root]),
            Err(ProofError::WrongProofLength { expected: 0, actual: 1 })
        );
        // Same size: no proof, equal roots.
        assert_eq!(verify_consistency(6, 6, &new_root, &new_root, &[]), Ok(()));
        assert_eq!(
            verify_consistency(6, 6, &old_root, &new_root, &[]),
            Err(ProofError::ConsistencyProofInvalid { old_size: 6, new_size: 6 })
        );
        assert_eq!(
            verify_consistency(6, 6, &new_root, &new_root, &[new_root]),
            Err(ProofError::WrongProofLength { expected: 0, actual: 1 })
        );
        // Between different non-zero sizes a proof is never empty.
        assert_eq!(
            verify_consistency(4, 6, &old_root, &new_root, &[]),
            Err(ProofError::WrongProofLength { expected: 1, actual: 0 })
        );
    }

    #[test]
    fn closures_are_node_sources() {
        let all = leaves(11);
        let source = |level: u32, index: u64| -> Result<Hash> {
            let width = 1usize << level;
            let start = index as usize * width;
            Ok(naive_root(&all[start..start + width]))
        };
        assert_eq!(root_from(&source, 11), Ok(root(&all)));
        assert_eq!(inclusion_proof_from(&source, 10, 11), Ok(inclusion_proof(10, &all)));
        assert_eq!(consistency_proof_from(&source, 7, 11), Ok(consistency_proof(7, &all)));
    }

    /// Every way of tampering with an inclusion claim except a size change is rejected; a size change is rejected
    /// exactly when it changes the verifier's hashing steps. When it does not, no RFC 9162 verifier can tell, and
    /// the function returns how many such changes it met.
    fn assert_inclusion_tampering_rejected(all: &[Hash], index: u64, size: u64, bits: &[usize]) -> usize {
        let tree = &all[..size as usize];
        let leaf = tree[index as usize];
        let root = root(tree);
        let proof = inclusion_proof(index, tree);
        let rejects = |index: u64, size: u64, leaf: &Hash, proof: &[Hash], root: &Hash| {
            verify_inclusion(index, size, leaf, proof, root).is_err()
        };
        let context = format!("index {index}, size {size}");

        for other in [index.checked_sub(1), index.checked_add(1)].into_iter().flatten() {
            assert!(rejects(other, size, &leaf, &proof, &root), "{context}: index {other}");
        }
        let mut undetectable = 0;
        for other in [size - 1, size + 1] {
            let same_steps = index < other && inclusion_trace(index, other) == inclusion_trace(index, size);
            assert_eq!(rejects(index, other, &leaf, &proof, &root), !same_steps, "{context}: size {other}");
            undetectable += usize::from(same_steps);
        }
        for position in 0..proof.len() {
            for &bit in bits {
                let mut tampered = proof.clone();
                flip_bit(&mut tampered[position], bit);
                assert!(rejects(index, size, &leaf, &tampered, &root), "{context}: node {position} bit {bit}");
            }
            let mut shorter = proof.clone();
            shorter.remove(position);
            assert!(rejects(index, size, &leaf, &shorter, &root), "{context}: node {position} removed");
        }
        for extra in [leaf, root, EMPTY_ROOT] {
            let longer = [&proof[..], &[extra]].concat();
            assert!(rejects(index, size, &leaf, &longer, &root), "{context}: node appended");
        }
        for &bit in bits {
            let mut wrong = leaf;
            flip_bit(&mut wrong, bit);
            assert!(rejects(index, size, &wrong, &proof, &root), "{context}: leaf bit {bit}");
            let mut wrong = root;
            flip_bit(&mut wrong, bit);
            assert!(rejects(index, size, &leaf, &proof, &wrong), "{context}: root bit {bit}");
        }
        let other_leaf = leaf_hash(b"not in the log");
        assert!(rejects(index, size, &other_leaf, &proof, &root), "{context}: other leaf");
        undetectable
    }

    /// The consistency counterpart of [`assert_inclusion_tampering_rejected`]. From size 0 the proof is empty and
    /// the new root unconstrained by definition, so only the old root can be tampered with there.
    fn assert_consistency_tampering_rejected(all: &[Hash], old_size: u64, new_size: u64, bits: &[usize]) -> usize {
        let tree = &all[..new_size as usize];
        let (old_root, new_root) = (root(&tree[..old_size as usize]), root(tree));
        let proof = consistency_proof(old_size, tree);
        let rejects = |old_size: u64, new_size: u64, old_root: &Hash, new_root: &Hash, proof: &[Hash]| {
            verify_consistency(old_size, new_size, old_root, new_root, proof).is_err()
        };
        let context = format!("old {old_size}, new {new_size}");

        let mut undetectable = 0;
        let size_changes = [
            (old_size.checked_sub(1), Some(new_size)),
            (old_size.checked_add(1), Some(new_size)),
            (Some(old_size), new_size.checked_sub(1)),
            (Some(old_size), new_size.checked_add(1)),
        ];
        for (other_old, other_new) in size_changes {
            let (Some(other_old), Some(other_new)) = (other_old, other_new) else { continue };
            // Only a claim the verifier checks with the same steps on the same inputs can pass. Old size 0 checks
            // only the old root, equal sizes only that the roots are equal; otherwise the §2.1.4.2 steps decide.
            let same_steps = other_old <= other_new
                && consistency_proof_len(other_old, other_new) == proof.len()
                && if other_old == 0 {
                    old_size == 0
                } else if other_old == other_new {
                    old_size == new_size
                } else {
                    old_size != 0
                        && old_size != new_size
                        && consistency_trace(other_old, other_new) == consistency_trace(old_size, new_size)
                };
            let rejected = rejects(other_old, other_new, &old_root, &new_root, &proof);
            assert_eq!(rejected, !same_steps, "{context}: sizes {other_old} → {other_new}");
            undetectable += usize::from(same_steps);
        }
        for position in 0..proof.len() {
            for &bit in bits {
                let mut tampered = proof.clone();
                flip_bit(&mut tampered[position], bit);
                assert!(rejects(old_size, new_size, &old_root, &new_root, &tampered), "{context}: node {position}");
            }
            let mut shorter = proof.clone();
            shorter.remove(position);
            assert!(rejects(old_size, new_size, &old_root, &new_root, &shorter), "{context}: node removed");
        }
        for extra in [old_root, new_root, EMPTY_ROOT] {
            let longer = [&proof[..], &[extra]].concat();
            assert!(rejects(old_size, new_size, &old_root, &new_root, &longer), "{context}: node appended");
        }
        for &bit in bits {
            let mut wrong = old_root;
            flip_bit(&mut wrong, bit);
            assert!(rejects(old_size, new_size, &wrong, &new_root, &proof), "{context}: old root bit {bit}");
            if old_size != 0 {
                let mut wrong = new_root;
                flip_bit(&mut wrong, bit);
                assert!(rejects(old_size, new_size, &old_root, &wrong, &proof), "{context}: new root bit {bit}");
            }
        }
        undetectable
    }

    #[test]
    fn tampered_inclusion_claims_are_rejected() {
        let all = leaves(MAX_SIZE + 1);
        let every_bit: Vec<usize> = (0..256).collect();
        let mut undetectable = 0;
        for size in 1..=MAX_SIZE {
            for index in 0..size {
                // Every bit of every node for small trees; beyond that a spread of bits keeps the test quick.
                let bits: Vec<usize> =
                    if size <= 8 { every_bit.clone() } else { vec![0, 7, (index as usize * 37) % 256, 255] };
                undetectable += assert_inclusion_tampering_rejected(&all, index, size, &bits);
            }
        }
        // Most ±1 size changes are of this kind (3648 of the 4160 here): the proof only carries the path's shape,
        // which a neighbouring size usually shares. Hence sizes must come from signed checkpoints.
        assert!(undetectable > 0);
    }

    #[test]
    fn tampered_consistency_claims_are_rejected() {
        let all = leaves(MAX_SIZE + 1);
        let every_bit: Vec<usize> = (0..256).collect();
        let mut undetectable = 0;
        for new_size in 0..=MAX_SIZE {
            for old_size in 0..=new_size {
                let bits: Vec<usize> =
                    if new_size <= 8 { every_bit.clone() } else { vec![0, 7, (old_size as usize * 37) % 256, 255] };
                undetectable += assert_consistency_tampering_rejected(&all, old_size, new_size, &bits);
            }
        }
        assert!(undetectable > 0);
    }

    #[test]
    fn wrong_size_with_same_steps_is_undetectable() {
        // Why size changes are not always rejected: leaf 0's proof in 3 leaves verifies as leaf 0 of 4 against
        // the 3-leaf root. The size has to come from a signed checkpoint.
        let all = leaves(3);
        let proof = inclusion_proof(0, &all);
        assert_eq!(verify_inclusion(0, 4, &all[0], &proof, &root(&all)), Ok(()));
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

        #[test]
        fn inclusion_holds_in_large_trees(size in 1u64..3000, index_seed in any::<u64>(), bit in 0usize..256) {
            let all = leaves(size);
            let index = index_seed % size;
            let tree: MerkleTree = all.iter().copied().collect();
            let root = tree.root();
            prop_assert_eq!(root, naive_root(&all));

            let proof = tree.inclusion_proof(index)?;
            prop_assert_eq!(&proof, &inclusion_proof(index, &all));
            prop_assert_eq!(&proof, &naive_path(index as usize, &all));
            prop_assert_eq!(verify_inclusion(index, size, &all[index as usize], &proof, &root), Ok(()));

            for position in 0..proof.len() {
                let mut tampered = proof.clone();
                flip_bit(&mut tampered[position], bit);
                prop_assert!(verify_inclusion(index, size, &all[index as usize], &tampered, &root).is_err());
            }
            let other = (index + 1) % size;
            if other != index {
                prop_assert!(verify_inclusion(other, size, &all[index as usize], &proof, &root).is_err());
            }
        }

        #[test]
        fn consistency_holds_in_large_trees(new_size in 1u64..3000, old_seed in any::<u64>(), bit in 0usize..256) {
            let all = leaves(new_size);
            let old_size = old_seed % (new_size + 1);
            let tree: MerkleTree = all.iter().copied().collect();
            let (old_root, new_root) = (tree.root_at(old_size)?, tree.root());
            prop_assert_eq!(old_root, naive_root(&all[..old_size as usize]));

            let proof = tree.consistency_proof(old_size)?;
            prop_assert_eq!(&proof, &consistency_proof(old_size, &all));
            prop_assert_eq!(&proof, &naive_proof(old_size as usize, &all));
            prop_assert_eq!(verify_consistency(old_size, new_size, &old_root, &new_root, &proof), Ok(()));

            for position in 0..proof.len() {
                let mut tampered = proof.clone();
                flip_bit(&mut tampered[position], bit);
                prop_assert!(verify_consistency(old_size, new_size, &old_root, &new_root, &tampered).is_err());
            }
            let mut wrong_old_root = old_root;
            flip_bit(&mut wrong_old_root, bit);
            prop_assert!(verify_consistency(old_size, new_size, &wrong_old_root, &new_root, &proof).is_err());
        }
    }
}
