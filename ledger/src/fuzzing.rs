//! The properties the fuzz targets in `fuzz/` check, one function per target, shared with the corpus tests
//! (`ledger/tests/it/fuzz_corpus.rs`) so that a corpus or regression file replayed as a test checks exactly what
//! the fuzzer checked, and a property cannot drift between the two.
//!
//! Each function takes arbitrary bytes, panics when a property fails, and returns whether the input was accepted
//! (it decoded, parsed, or some proof in it verified), so that the corpus tests can tell a corpus that reaches
//! the parsers' success paths from one that only exercises their rejections. Not part of the crate's API.

use crate::checkpoint::{Checkpoint, SignedCheckpoint};
use crate::entry::Entry;
use crate::merkle::{self, EMPTY_ROOT, MerkleTree};
use crate::witness::{TrustedLog, Witness, WitnessConfig, WitnessState};
use crate::{Hash, Identity, PublicKey, export};

/// A target's property: panics when it fails, and says whether the input was accepted.
pub type Property = fn(&[u8]) -> bool;

/// Every target: its name (the file `fuzz/fuzz_targets/<name>.rs` and the folders `fuzz/corpus/<name>/` and
/// `fuzz/regressions/<name>/`) and its property.
pub const TARGETS: [(&str, Property); 4] =
    [("entry", entry), ("export", export), ("checkpoint", checkpoint), ("merkle", merkle)];

/// The key name of the log whose notes the corpus holds (the ledger tests' log, `ledger/tests/it/support.rs`).
pub const LOG_KEY_NAME: &str = "pdc.test/log";

/// The key name of the witness that co-signed the corpus's notes (the ledger tests' witness).
pub const WITNESS_KEY_NAME: &str = "witness.test/w1";

/// The log's signing identity; its seed is public, which is what lets the checkpoint target sign notes.
pub fn log_identity() -> Identity {
    Identity::from_seed([1; 32])
}

/// The witness's signing identity.
pub fn witness_identity() -> Identity {
    Identity::from_seed([2; 32])
}

/// Ledger entries: whatever [`Entry::decode`] accepts is canonical (it re-encodes to the same bytes) and decodes
/// back to the same entry; checking its signature never panics.
pub fn entry(data: &[u8]) -> bool {
    let Ok(entry) = Entry::decode(data) else {
        return false;
    };
    let encoded = entry.encode();
    assert_eq!(encoded, data, "decode accepted a non-canonical encoding of {entry:?}");
    assert_eq!(Entry::decode(&encoded).as_ref().ok(), Some(&entry), "re-decoding gives another entry");
    for key in [log_identity().public_key(), witness_identity().public_key()] {
        // Unsigned kinds and foreign keys are errors, never panics.
        let _ = entry.verify_signature(&key);
    }
    true
}

/// Export files: whatever [`export::parse`] accepts is written back byte for byte by [`export::write_parts`]
/// (the format's promise that `parse` accepts exactly what the writer produces), and auditing it never panics.
/// An audit that passes has decoded every entry and verified every checkpoint under the file's log key.
pub fn export(data: &[u8]) -> bool {
    let Ok(exported) = export::parse(data) else {
        return false;
    };
    let written = export::write_parts(&exported.entries, &exported.checkpoints, &exported.keys)
        .expect("a file that parses is within the format's limits");
    assert_eq!(written, data, "the export does not re-serialise to the bytes it was parsed from");
    if exported.verify().passed() {
        for (index, bytes) in exported.entries.iter().enumerate() {
            assert!(Entry::decode(bytes).is_ok(), "the audit passed but entry {index} does not decode");
        }
        for (index, note) in exported.checkpoints.iter().enumerate() {
            let verified = SignedCheckpoint::parse(note)
                .is_ok_and(|signed| signed.verify(&exported.keys.log_key_name, &exported.keys.log_key).is_ok());
            assert!(verified, "the audit passed but checkpoint {index} is not signed by the log");
        }
    }
    true
}

/// Checkpoint notes and their co-signatures: whatever [`SignedCheckpoint::parse`] accepts is written back
/// identically by [`SignedCheckpoint::to_note`]; verifying it under any key never panics; a signature that
/// verifies stops verifying when any field of the checkpoint changes; and a witness co-signs a note only when
/// the log's key verifies it, with a co-signature that verifies in turn and that it refuses to repeat for a
/// different root at the same size.
pub fn checkpoint(data: &[u8]) -> bool {
    let Ok(note) = std::str::from_utf8(data) else {
        return false;
    };
    let Ok(signed) = SignedCheckpoint::parse(note) else {
        return false;
    };
    assert_eq!(signed.to_note(), note, "the note does not re-serialise to the text it was parsed from");
    assert_eq!(SignedCheckpoint::parse(&signed.to_note()).as_ref(), Ok(&signed), "re-parsing gives another note");

    let keys = [log_identity().public_key(), witness_identity().public_key()];
    let mut names: Vec<&str> = signed.signatures.iter().map(|signature| signature.name.as_str()).collect();
    names.extend([LOG_KEY_NAME, WITNESS_KEY_NAME]);
    for name in names {
        for key in &keys {
            if signed.verify(name, key).is_ok() {
                signature_binds_the_checkpoint(&signed, name, key);
            }
        }
    }
    witness_cosigns_only_log_signed_notes(note, &signed);
    true
}

/// Inclusion and consistency proofs: for a real tree of up to 64 leaves, built from the input's first byte, the
/// rest of the input chooses proofs, sizes, indices, leaves and roots, honest or altered. Verification never
/// panics; honest proofs verify; a proof that verifies against the tree's root under its true sizes is the
/// honest proof for the real leaf (or old root); under any claimed size, no leaf hash outside the tree can be
/// proved included; and the `O(log n)` proofs read from a [`MerkleTree`] equal those rehashed from the leaves.
pub fn merkle(data: &[u8]) -> bool {
    let mut input = Input(data);
    let n_leaves = u64::from(input.byte() % 65);
    let leaves: Vec<Hash> = (0..n_leaves).map(|i| merkle::leaf_hash(&i.to_le_bytes())).collect();
    let tree: MerkleTree = leaves.iter().copied().collect();
    let mut any_verified = false;
    // Bounded, so that one input stays fast whatever its length.
    for _ in 0..64 {
        if input.is_empty() {
            break;
        }
        any_verified |= match input.byte() % 4 {
            0 => check_inclusion(&mut input, &leaves),
            1 => check_consistency(&mut input, &leaves),
            2 => check_raw_proofs(&mut input),
            _ => {
                check_tree_matches_slices(&mut input, &tree, &leaves);
                false
            }
        };
    }
    any_verified
}

/// A checkpoint with each field changed in turn: a signature over the original must verify over none of them.
fn signature_binds_the_checkpoint(signed: &SignedCheckpoint, name: &str, key: &PublicKey) {
    let original = &signed.checkpoint;
    let mut root = original.root;
    root[0] ^= 1;
    let mut previous = original.previous;
    previous[31] ^= 0x80;
    let changed = [
        Checkpoint { origin: format!("{}x", original.origin), ..original.clone() },
        Checkpoint { size: original.size ^ 1, ..original.clone() },
        Checkpoint { root, ..original.clone() },
        Checkpoint { previous, ..original.clone() },
        Checkpoint { timestamp_ms: original.timestamp_ms ^ 1, ..original.clone() },
    ];
    for checkpoint in changed {
        let forged = SignedCheckpoint { checkpoint, signatures: signed.signatures.clone() };
        assert!(forged.verify(name, key).is_err(), "a signature by {name} verifies over a changed checkpoint");
    }
}

/// A new witness that follows the note's origin under the log's key: co-signs the note only if the log's
/// signature verifies; the co-signature verifies under the witness's key; and once it has co-signed, it refuses
/// a log-signed checkpoint of the same size with another root (a split view).
fn witness_cosigns_only_log_signed_notes(note: &str, signed: &SignedCheckpoint) {
    let log = log_identity();
    let witness_name = "witness.fuzz/w2";
    let witness_key = Identity::from_seed([3; 32]).public_key();
    let config = WitnessConfig {
        name: witness_name.into(),
        logs: vec![TrustedLog {
            origin: signed.checkpoint.origin.clone(),
            key_name: LOG_KEY_NAME.into(),
            public_key: log.public_key(),
        }],
    };
    let mut witness = Witness::new(config, Identity::from_seed([3; 32]), WitnessState::default());
    let log_signed = signed.verify(LOG_KEY_NAME, &log.public_key()).is_ok();
    let Ok(cosignature) = witness.add_checkpoint(note, 0, &[]) else {
        assert!(!log_signed, "the witness refused a first checkpoint that its log signed");
        return;
    };
    assert!(log_signed, "the witness co-signed a note that its log's key does not verify");
    let mut cosigned = signed.clone();
    cosigned.signatures.push(cosignature);
    assert!(cosigned.verify(witness_name, &witness_key).is_ok(), "the co-signature does not verify");

    let mut root = signed.checkpoint.root;
    root[31] ^= 1;
    let split = Checkpoint { root, ..signed.checkpoint.clone() };
    let split_note = split.sign(LOG_KEY_NAME, &log).expect("the origin parsed, so it signs").to_note();
    let size = signed.checkpoint.size;
    assert!(witness.add_checkpoint(&split_note, size, &[]).is_err(), "the witness co-signed a split view");
}

/// An inclusion proof for leaf `index` of the first `size` leaves, maybe altered, checked against that tree's
/// root under the true size or a claimed one.
fn check_inclusion(input: &mut Input, leaves: &[Hash]) -> bool {
    if leaves.is_empty() {
        return false;
    }
    let size = 1 + input.below(leaves.len() as u64);
    let index = input.below(size);
    let honest = merkle::inclusion_proof(index, &leaves[..size as usize]);
    let root = merkle::root(&leaves[..size as usize]);
    let real_leaf = leaves[index as usize];
    let mut proof = honest.clone();
    input.alter(&mut proof);
    // A raw 32-byte value may be an interior node's hash, which a lie about the size can prove "included" (the
    // caller hashes leaves, and the leaf/node prefixes keep real leaves apart); anything hashed as a leaf cannot.
    let (leaf, raw) = match input.byte() % 4 {
        0 => (leaves[input.below(size) as usize], false),
        1 => (merkle::leaf_hash(&input.hash()), false),
        2 => (input.hash(), true),
        _ => (real_leaf, false),
    };
    let claimed_size = if input.byte().is_multiple_of(4) { input.u64() % 130 } else { size };
    let verified = merkle::verify_inclusion(index, claimed_size, &leaf, &proof, &root).is_ok();
    if claimed_size == size && proof == honest && leaf == real_leaf {
        assert!(verified, "the honest proof of leaf {index} in {size} does not verify");
    }
    if verified {
        if !raw {
            assert!(leaves[..size as usize].contains(&leaf), "a leaf hash not in the tree was proved included");
        }
        if claimed_size == size {
            assert_eq!(leaf, real_leaf, "another leaf was proved to be leaf {index} of {size}");
            assert_eq!(proof, honest, "a proof other than the honest one verified for leaf {index} of {size}");
        }
    }
    verified
}

/// A consistency proof from the first `old_size` leaves to the first `new_size`, maybe altered, with the true old
/// root or another, checked against the new tree's root under the true sizes or claimed ones.
fn check_consistency(input: &mut Input, leaves: &[Hash]) -> bool {
    let n_leaves = leaves.len() as u64;
    let old_size = input.below(n_leaves + 1);
    let new_size = old_size + input.below(n_leaves - old_size + 1);
    let new_leaves = &leaves[..new_size as usize];
    let honest = merkle::consistency_proof(old_size, new_leaves);
    let true_old_root = merkle::root(&leaves[..old_size as usize]);
    let new_root = merkle::root(new_leaves);
    let mut proof = honest.clone();
    input.alter(&mut proof);
    let old_root = match input.byte() % 4 {
        0 => merkle::root(&leaves[..input.below(n_leaves + 1) as usize]),
        1 => input.hash(),
        _ => true_old_root,
    };
    let (claimed_old, claimed_new) =
        if input.byte().is_multiple_of(4) { (input.u64() % 130, input.u64() % 130) } else { (old_size, new_size) };
    let verified = merkle::verify_consistency(claimed_old, claimed_new, &old_root, &new_root, &proof).is_ok();
    let true_sizes = (claimed_old, claimed_new) == (old_size, new_size);
    if true_sizes && proof == honest && old_root == true_old_root {
        assert!(verified, "the honest proof from {old_size} to {new_size} does not verify");
    }
    if verified && true_sizes {
        assert_eq!(old_root, true_old_root, "a root that is not the tree's at {old_size} was proved its prefix");
        assert_eq!(proof, honest, "a proof other than the honest one verified from {old_size} to {new_size}");
    }
    verified
}

/// Sizes and indices anywhere in `u64`, proofs of any length and arbitrary roots: verification only has to
/// return, and a proof that verifies must at least have been checked against the root it names.
fn check_raw_proofs(input: &mut Input) -> bool {
    let (index, size, old_size) = (input.u64(), input.u64(), input.u64());
    let (leaf, root, other_root) = (input.hash(), input.hash(), input.hash());
    let n_nodes = usize::from(input.byte() % 70);
    let proof: Vec<Hash> = (0..n_nodes).map(|_| input.hash()).collect();
    let included = merkle::verify_inclusion(index, size, &leaf, &proof, &root).is_ok();
    if included {
        // The same proof cannot also lead to a different root.
        assert!(merkle::verify_inclusion(index, size, &leaf, &proof, &other_root).is_ok() == (root == other_root));
    }
    let consistent = merkle::verify_consistency(old_size, size, &other_root, &root, &proof).is_ok();
    if consistent && old_size != 0 && old_size != size {
        let mut altered = root;
        altered[0] ^= 1;
        assert!(merkle::verify_consistency(old_size, size, &other_root, &altered, &proof).is_err());
    }
    if consistent && old_size == 0 {
        assert_eq!(other_root, EMPTY_ROOT, "only the empty root is the tree of size 0");
    }
    included || consistent
}

/// The `*_from` functions over a [`MerkleTree`] (what the stores use) against the slice functions.
fn check_tree_matches_slices(input: &mut Input, tree: &MerkleTree, leaves: &[Hash]) {
    let n_leaves = leaves.len() as u64;
    let size = input.below(n_leaves + 1);
    let prefix = &leaves[..size as usize];
    assert_eq!(tree.root_at(size), Ok(merkle::root(prefix)), "root at {size}");
    let old_size = input.below(size + 1);
    let proof = merkle::consistency_proof_from(tree, old_size, size);
    assert_eq!(proof, Ok(merkle::consistency_proof(old_size, prefix)), "consistency {old_size} to {size}");
    if size > 0 {
        let index = input.below(size);
        let proof = merkle::inclusion_proof_from(tree, index, size);
        assert_eq!(proof, Ok(merkle::inclusion_proof(index, prefix)), "inclusion of {index} in {size}");
    }
}

/// The fuzz input read front to back; once it runs out every read gives zeros, so any input is a valid one.
struct Input<'a>(&'a [u8]);

impl Input<'_> {
    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn byte(&mut self) -> u8 {
        let [first, rest @ ..] = self.0 else {
            return 0;
        };
        self.0 = rest;
        *first
    }

    fn u64(&mut self) -> u64 {
        u64::from_le_bytes(std::array::from_fn(|_| self.byte()))
    }

    /// A number below `bound`, which must be positive.
    fn below(&mut self, bound: u64) -> u64 {
        self.u64() % bound
    }

    fn hash(&mut self) -> Hash {
        std::array::from_fn(|_| self.byte())
    }

    /// Leaves `proof` as it is, or flips a bit of a node, drops a node, adds one or replaces one.
    fn alter(&mut self, proof: &mut Vec<Hash>) {
        let choice = self.byte() % 8;
        let position = usize::from(self.byte());
        match choice {
            0 if !proof.is_empty() => {
                let bit = self.byte();
                let at = position % proof.len();
                proof[at][usize::from(bit / 8) % 32] ^= 1 << (bit % 8);
            }
            1 if !proof.is_empty() => {
                proof.remove(position % proof.len());
            }
            2 => {
                let node = self.hash();
                proof.insert(position % (proof.len() + 1), node);
            }
            3 if !proof.is_empty() => {
                let at = position % proof.len();
                proof[at] = self.hash();
            }
            _ => {}
        }
    }
}
