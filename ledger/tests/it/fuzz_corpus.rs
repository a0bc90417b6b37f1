//! The fuzz corpora and crash regressions of `fuzz/`, replayed as tests: every file of `fuzz/corpus/<target>/` and
//! `fuzz/regressions/<target>/` goes through the target's own property (`pdc_ledger::fuzzing`), so `cargo xtask
//! test` checks, without a fuzzer, what the fuzzer found; and the seeds the crate writes are checked to be what
//! it writes today.

use std::panic::{self, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::{env, fs};

use pdc_ledger::checkpoint::Checkpoint;
use pdc_ledger::entry::Entry;
use pdc_ledger::export;
use pdc_ledger::fuzzing::{self, Property, TARGETS};

use crate::support::{self, LOG_KEY, log_identity};

/// Set to `1` to rewrite the seeds of [`seeds_are_what_the_crate_writes`], as expect-test does for snapshots.
const UPDATE: &str = "UPDATE_EXPECT";

#[test]
fn every_corpus_file_holds_its_targets_property() {
    for (target, property) in TARGETS {
        let files = files_in(&fuzz_dir().join("corpus").join(target));
        assert!(!files.is_empty(), "fuzz/corpus/{target}/ is empty");
        let accepted = replay(target, property, &files);
        // A corpus that every parser rejects would only ever test the error paths.
        assert!(accepted > 0, "no file of fuzz/corpus/{target}/ is accepted by its parser");
    }
}

#[test]
fn every_regression_file_holds_its_targets_property() {
    for (target, property) in TARGETS {
        // A target that never crashed has no folder.
        replay(target, property, &files_in(&fuzz_dir().join("regressions").join(target)));
    }
}

#[test]
fn each_property_has_a_fuzz_target_and_each_target_a_property() {
    let mut on_disk: Vec<String> = files_in(&fuzz_dir().join("fuzz_targets"))
        .iter()
        .filter_map(|path| Some(path.file_name()?.to_str()?.strip_suffix(".rs")?.to_owned()))
        .collect();
    on_disk.sort();
    let mut named: Vec<String> = TARGETS.iter().map(|(name, _)| (*name).to_owned()).collect();
    named.sort();
    assert_eq!(on_disk, named, "fuzz/fuzz_targets/ and pdc_ledger::fuzzing::TARGETS differ");
}

/// The properties accept what is valid and reject what is not, so that a corpus file counts as accepted only
/// when it reaches a parser's success path.
#[test]
fn the_properties_accept_valid_inputs_and_reject_malformed_ones() {
    // A checkpoint note whose signature verifies must not verify once the checkpoint changes; the note itself
    // passes the property.
    let note = log_checkpoint().sign(LOG_KEY, &log_identity()).expect("sign").to_note();
    assert!(fuzzing::checkpoint(note.as_bytes()));
    // Honest proofs verify: a tree of 7 leaves, one inclusion check of leaf 2 in 5 with nothing altered.
    let honest_inclusion = [7, 0, 4, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 7, 0, 3, 1];
    assert!(fuzzing::merkle(&honest_inclusion));
    // Non-canonical or malformed inputs are rejected, not accepted.
    let mut padded = Entry::StudyCreated { study_id: "s".into(), manifest_hash: [7; 32] }.encode();
    assert!(fuzzing::entry(&padded));
    padded.push(0);
    assert!(!fuzzing::entry(&padded));
    assert!(!fuzzing::export(b"PDCLEDGR"));
    assert!(!fuzzing::checkpoint(&note.as_bytes()[..note.len() - 1]));
}

/// The seeds in `fuzz/corpus/` that the crate writes (a small export, signed notes, signed entries), checked
/// against what the writers produce today; `UPDATE_EXPECT=1` rewrites them. The other seeds are copies:
/// `entry/golden-*` are the entry module's golden encodings and `export/study-export-v1` is
/// `ledger/tests/data/export-v1.pdcx`; the `merkle` seeds are hand-made byte strings.
#[test]
fn seeds_are_what_the_crate_writes() {
    let update = env::var(UPDATE).is_ok_and(|value| value == "1");
    let mut stale = Vec::new();
    for (path, bytes) in written_seeds() {
        let path = fuzz_dir().join("corpus").join(path);
        if update {
            fs::write(&path, &bytes).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        } else if fs::read(&path).ok().as_ref() != Some(&bytes) {
            stale.push(path.display().to_string());
        }
    }
    assert!(stale.is_empty(), "seeds differ from what the crate writes (rerun with {UPDATE}=1): {stale:#?}");
    assert_eq!(
        fs::read(fuzz_dir().join("corpus/export/study-export-v1")).expect("the study export seed"),
        fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/export-v1.pdcx")).expect("the golden export"),
        "fuzz/corpus/export/study-export-v1 is a copy of ledger/tests/data/export-v1.pdcx",
    );
}

/// Each seed the crate writes, by its path under `fuzz/corpus/`.
fn written_seeds() -> Vec<(String, Vec<u8>)> {
    let entries = support::study_entries();
    let (bytes, notes) = support::sealed_parts(&entries[..4], &[2, 4]);
    let small_export = export::write_parts(&bytes, &notes, &support::keys()).expect("export");
    let log_only = log_checkpoint().sign(LOG_KEY, &log_identity()).expect("sign").to_note();
    let mut seeds = vec![
        ("export/small".to_owned(), small_export),
        ("checkpoint/cosigned".to_owned(), notes[1].clone().into_bytes()),
        ("checkpoint/log-signed".to_owned(), log_only.into_bytes()),
    ];
    // One entry of each kind the study writes, with real signatures where the kind is signed.
    let mut kinds = Vec::new();
    for entry in &entries {
        if !kinds.contains(&entry.kind()) {
            kinds.push(entry.kind());
            seeds.push((format!("entry/study-{}", entry.kind()), entry.encode()));
        }
    }
    seeds
}

fn log_checkpoint() -> Checkpoint {
    Checkpoint {
        origin: support::ORIGIN.into(),
        size: 5,
        root: [9; 32],
        previous: [0; 32],
        timestamp_ms: 1_767_000_000_000,
    }
}

/// Runs `property` on every file, naming each that panics; returns how many were accepted.
fn replay(target: &str, property: Property, files: &[PathBuf]) -> usize {
    let mut failed = Vec::new();
    let mut accepted = 0;
    for path in files {
        let bytes = fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        match panic::catch_unwind(AssertUnwindSafe(|| property(&bytes))) {
            Ok(true) => accepted += 1,
            Ok(false) => {}
            Err(_) => failed.push(path.display().to_string()),
        }
    }
    assert!(failed.is_empty(), "the {target} property fails on {failed:#?}");
    accepted
}

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz")
}

/// The files directly in `dir`, sorted; none when it does not exist.
fn files_in(dir: &Path) -> Vec<PathBuf> {
    let Ok(read) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> =
        read.map(|item| item.expect("a readable folder").path()).filter(|path| path.is_file()).collect();
    files.sort();
    files
}
