//! The export file: a golden file per format version (and corrupt ones), precise errors for bad input, and an
//! offline audit that catches a wrong origin or a bad signature.

use std::path::PathBuf;

use pdc_ledger::Identity;
use pdc_ledger::audit::{AuditKeys, Rule};
use pdc_ledger::checkpoint::SignedCheckpoint;
use pdc_ledger::export::{self, ExportError, MAGIC, MAX_ENTRY_BYTES, MAX_WITNESSES};
use pdc_ledger::store::MemoryStore;

use crate::support::*;

/// Set to rewrite the golden files from the current code (only when the format deliberately changes, with a new
/// version).
const UPDATE: &str = "PDC_UPDATE_GOLDEN";

fn data(name: &str) -> PathBuf {
    // From the directory cargo names at run time: the compile-time one is gone if the build cache is shared with a
    // clone elsewhere.
    PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR when it runs tests"))
        .join("tests/data")
        .join(name)
}

fn golden_bytes() -> Vec<u8> {
    let (entries, notes) = study_parts();
    export::write_parts(&entries, &notes, &keys()).expect("write")
}

/// The study's export with one character of the last checkpoint's log signature changed.
fn bad_signature_bytes() -> Vec<u8> {
    let (entries, mut notes) = study_parts();
    let last = notes.last_mut().expect("notes");
    let line_start = last.find(&format!("\u{2014} {LOG_KEY} ")).expect("log signature line");
    // The first base64 character after the key name: part of the key hash, so the note still parses.
    let position = line_start + "\u{2014} ".len() + LOG_KEY.len() + 1;
    let replacement = if last.as_bytes()[position] == b'A' { "B" } else { "A" };
    last.replace_range(position..position + 1, replacement);
    export::write_parts(&entries, &notes, &keys()).expect("write")
}

fn truncated_bytes() -> Vec<u8> {
    let mut bytes = golden_bytes();
    bytes.truncate(bytes.len() - 10);
    bytes
}

#[test]
fn the_golden_files_are_stable_and_verify() {
    let cases = [
        ("export-v1.pdcx", golden_bytes()),
        ("export-v1-bad-signature.pdcx", bad_signature_bytes()),
        ("export-v1-truncated.pdcx", truncated_bytes()),
    ];
    if std::env::var_os(UPDATE).is_some() {
        for (name, bytes) in &cases {
            std::fs::write(data(name), bytes).expect("write golden file");
        }
    }
    for (name, bytes) in &cases {
        let golden = std::fs::read(data(name)).expect("golden file (regenerate with PDC_UPDATE_GOLDEN=1)");
        assert!(
            golden == *bytes,
            "{name} differs from what the code writes: a format change needs a new VERSION and a new golden file"
        );
    }

    let exported = export::parse(&cases[0].1).expect("golden parses");
    assert_eq!(exported.keys, keys());
    let (entries, notes) = study_parts();
    assert_eq!((exported.entries, exported.checkpoints.clone()), (entries, notes));
    let exported = export::parse(&cases[0].1).expect("golden parses");
    let report = exported.verify_with(&keys());
    assert!(report.passed(), "{report}");
    assert_eq!(exported.verify(), report);

    let corrupt = export::parse(&cases[1].1).expect("the bad-signature file parses");
    let report = corrupt.verify_with(&keys());
    let last_size = SignedCheckpoint::parse(corrupt.checkpoints.last().expect("notes")).expect("note").checkpoint.size;
    assert_eq!(report.failures.len(), 1, "{report}");
    assert_eq!(
        (report.failures[0].rule, report.failures[0].checkpoints.clone()),
        (Rule::CheckpointSignature, vec![last_size])
    );

    let length = cases[2].1.len();
    assert!(
        matches!(
            export::parse(&cases[2].1),
            Err(ExportError::LengthBeyondInput { what: "checkpoint note", remaining, .. }) if remaining < length
        ),
        "{:?}",
        export::parse(&cases[2].1)
    );
}

#[test]
fn a_store_exports_what_it_holds() {
    let mut store = MemoryStore::new();
    write_study(&mut store);
    let bytes = export::write(&store, &keys()).expect("write");
    assert_eq!(bytes, golden_bytes());
}

#[test]
fn the_offline_audit_checks_the_file_against_trusted_keys() {
    let exported = export::parse(&golden_bytes()).expect("parses");
    let other_origin = AuditKeys { origin: "elsewhere/ledger/sha3-256".into(), ..keys() };
    let report = exported.verify_with(&other_origin);
    assert!(!report.passed());
    assert!(report.failures.iter().all(|f| f.rule == Rule::CheckpointOrigin), "{report}");
    assert_eq!(report.failures.len(), exported.checkpoints.len());

    // A file re-signed under another log key passes its own keys but not the trusted ones.
    let forger = Identity::from_seed([66; 32]);
    let mut forged = exported.clone();
    forged.keys.log_key = forger.public_key();
    forged.keys.witnesses.clear();
    forged.keys.quorum = 0;
    for note in &mut forged.checkpoints {
        let mut signed = SignedCheckpoint::parse(note).expect("note");
        signed.signatures.clear();
        signed.add_signature(LOG_KEY, &forger).expect("sign");
        *note = signed.to_note();
    }
    let bytes = export::write_parts(&forged.entries, &forged.checkpoints, &forged.keys).expect("write");
    let forged = export::parse(&bytes).expect("parses");
    assert!(forged.verify().passed());
    let report = forged.verify_with(&keys());
    assert!(report.failures_of(Rule::CheckpointSignature).count() == forged.checkpoints.len(), "{report}");
    assert!(report.failures_of(Rule::WitnessQuorum).count() == forged.checkpoints.len(), "{report}");
}

#[test]
fn every_truncation_is_a_precise_error() {
    let bytes = golden_bytes();
    for length in 0..bytes.len() {
        match export::parse(&bytes[..length]) {
            Err(ExportError::BadMagic) => assert!(length < MAGIC.len(), "length {length}"),
            Err(ExportError::Truncated { offset, needed, remaining, .. }) => {
                assert_eq!(offset + remaining, length, "length {length}");
                assert!(needed > remaining);
            }
            Err(ExportError::LengthBeyondInput { .. }) => {}
            other => panic!("length {length}: {other:?}"),
        }
    }
}

/// A file header up to and including the quorum: origin "o/sha3-256", key name "k", the log key, no witnesses.
fn header() -> Vec<u8> {
    let mut bytes = MAGIC.to_vec();
    bytes.extend_from_slice(&1u32.to_le_bytes());
    for text in ["o/sha3-256", "k"] {
        bytes.extend_from_slice(&(text.len() as u32).to_le_bytes());
        bytes.extend_from_slice(text.as_bytes());
    }
    bytes.extend_from_slice(&log_identity().public_key().to_bytes());
    bytes.extend_from_slice(&0u32.to_le_bytes());
    bytes.extend_from_slice(&0u32.to_le_bytes());
    bytes
}

#[test]
fn malformed_files_get_precise_errors_before_anything_is_allocated() {
    let golden = golden_bytes();
    let mut empty = header();
    empty.extend_from_slice(&0u64.to_le_bytes());
    empty.extend_from_slice(&0u64.to_le_bytes());
    let parsed = export::parse(&empty).expect("an empty ledger");
    assert!(parsed.entries.is_empty() && parsed.checkpoints.is_empty());

    let mut bad_magic = golden.clone();
    bad_magic[0] ^= 1;
    assert!(matches!(export::parse(&bad_magic), Err(ExportError::BadMagic)));

    let mut version_2 = golden.clone();
    version_2[8] = 2;
    assert!(matches!(export::parse(&version_2), Err(ExportError::UnsupportedVersion { version: 2 })));

    let mut trailing = golden.clone();
    trailing.push(0);
    assert!(matches!(
        export::parse(&trailing),
        Err(ExportError::TrailingBytes { offset, count: 1 }) if offset == golden.len()
    ));

    // An entry count of 2^64 - 1 in a file of a few bytes: refused, not allocated.
    let entry_count_offset = header().len();
    let mut huge_count = header();
    huge_count.extend_from_slice(&u64::MAX.to_le_bytes());
    huge_count.extend_from_slice(&[0; 16]);
    assert!(matches!(
        export::parse(&huge_count),
        Err(ExportError::LengthBeyondInput { what: "entry count", offset, remaining: 16, .. }) if offset == entry_count_offset
    ));

    // An entry claiming 4 GiB: above the format's limit.
    let mut huge_entry = header();
    huge_entry.extend_from_slice(&1u64.to_le_bytes());
    huge_entry.extend_from_slice(&u32::MAX.to_le_bytes());
    assert!(matches!(
        export::parse(&huge_entry),
        Err(ExportError::OverLimit { what: "entry", length: 0xffff_ffff, limit, .. }) if limit == MAX_ENTRY_BYTES as u64
    ));

    // An entry claiming more than is left.
    let mut long_entry = header();
    long_entry.extend_from_slice(&1u64.to_le_bytes());
    long_entry.extend_from_slice(&100u32.to_le_bytes());
    long_entry.extend_from_slice(&[1; 10]);
    assert!(matches!(
        export::parse(&long_entry),
        Err(ExportError::LengthBeyondInput { what: "entry", claimed: 100, remaining: 10, .. })
    ));

    // Witnesses: too many, and a quorum above their number.
    let witness_count_offset = header().len() - 8;
    let mut many_witnesses = header();
    many_witnesses[witness_count_offset..witness_count_offset + 4]
        .copy_from_slice(&(MAX_WITNESSES as u32 + 1).to_le_bytes());
    assert!(matches!(export::parse(&many_witnesses), Err(ExportError::OverLimit { what: "witness count", .. })));
    let mut high_quorum = header();
    let quorum_offset = header().len() - 4;
    high_quorum[quorum_offset..].copy_from_slice(&1u32.to_le_bytes());
    high_quorum.extend_from_slice(&[0; 16]);
    assert!(matches!(
        export::parse(&high_quorum),
        Err(ExportError::QuorumAboveWitnesses { quorum: 1, witnesses: 0, offset }) if offset == quorum_offset
    ));

    // A weak public key and an origin that is not UTF-8.
    let key_offset = 12 + 4 + "o/sha3-256".len() + 4 + 1;
    let mut weak_key = header();
    weak_key[key_offset..key_offset + 32].copy_from_slice(&{
        let mut identity_point = [0u8; 32];
        identity_point[0] = 1;
        identity_point
    });
    assert!(matches!(
        export::parse(&weak_key),
        Err(ExportError::InvalidKey { what: "log public key", offset, .. }) if offset == key_offset
    ));
    let mut bad_origin = header();
    bad_origin[16] = 0xff;
    assert!(matches!(export::parse(&bad_origin), Err(ExportError::InvalidUtf8 { what: "origin", offset: 16 })));
}

#[test]
fn writing_refuses_what_parsing_would_refuse() {
    let mut keys = keys();
    keys.quorum = 2;
    assert!(matches!(export::write_parts(&[], &[], &keys), Err(ExportError::QuorumAboveWitnesses { .. })));
    let keys = AuditKeys { origin: "o".repeat(export::MAX_NAME_BYTES + 1), ..crate::support::keys() };
    assert!(matches!(export::write_parts(&[], &[], &keys), Err(ExportError::OverLimit { what: "origin", .. })));
}
