//! The audit under the auditor's own trust policy: what the audited party says of its witnesses and quorum is
//! never relied on, a ledger without a sealed checkpoint or with an unsealed tail never reads as PASS, and a
//! remembered tree head catches a rewritten history, a fork or a rollback shown later.

use pdc_ledger::Identity;
use pdc_ledger::audit::{self, AuditKeys, Rule, TreeHead, Verdict};
use pdc_ledger::checkpoint::{Checkpoint, SignedCheckpoint};
use pdc_ledger::entry::Entry;
use pdc_ledger::export;
use pdc_ledger::merkle::{self, MerkleTree};
use pdc_ledger::store::MemoryStore;

use crate::support::*;

/// The tree head of the first `size` entries.
fn head(entries: &[Vec<u8>], size: u64) -> TreeHead {
    let tree: MerkleTree = entries.iter().map(|bytes| merkle::leaf_hash(bytes)).collect();
    TreeHead { size, root: tree.root_at(size).expect("size within the log") }
}

/// Made-up entries a forger would show: a study with contributions nobody consented to, and a registration.
fn made_up_entries() -> Vec<Vec<u8>> {
    let mut entries = vec![Entry::StudyCreated { study_id: STUDY.into(), manifest_hash: manifest_hash() }];
    entries.push(Entry::MemberRegistered {
        pdc_id: "h1".into(),
        role: pdc_ledger::entry::Role::Hospital,
        public_key: hospital("h1").public_key().to_bytes(),
    });
    entries.iter().map(Entry::encode).collect()
}

#[test]
fn a_forged_export_with_quorum_zero_and_no_checkpoint_is_not_sealed_under_the_auditors_policy() {
    // The forger names the real log key and claims that no witness is needed.
    let claimed = AuditKeys { witnesses: Vec::new(), quorum: 0, ..keys() };
    let bytes = export::write_parts(&made_up_entries(), &[], &claimed).expect("write");
    let exported = export::parse(&bytes).expect("parses");
    assert_eq!(exported.keys.quorum, 0);

    let report = exported.verify_with(&keys());
    assert!(report.passed(), "no rule is broken by these entries alone: {report}");
    assert_eq!(report.verdict(), Verdict::NoSealedCheckpoint);
    assert_eq!((report.sealed, report.unsealed_tail()), (None, 0..2));
    let text = report.to_string();
    assert!(text.starts_with("NO SEALED CHECKPOINT\n"), "{text}");
    assert!(text.contains("entries 0..=1 (2 entries)"), "{text}");
    // Even the file's own policy, quorum 0, does not make made-up entries PASS without a checkpoint.
    assert_eq!(exported.verify().verdict(), Verdict::NoSealedCheckpoint);
}

#[test]
fn a_checkpoint_co_signed_by_a_witness_the_auditor_does_not_trust_is_not_sealed() {
    let (entries, notes) = study_parts();
    // The party lists its own witness and a quorum of 1; the auditor trusts only the real witness.
    let impostor = Identity::from_seed([77; 32]);
    let forged_notes: Vec<String> = notes
        .iter()
        .map(|note| {
            let mut signed = SignedCheckpoint::parse(note).expect("note");
            signed.signatures.retain(|line| line.name == LOG_KEY);
            signed.add_signature("impostor.test/w", &impostor).expect("sign");
            signed.to_note()
        })
        .collect();
    let claimed = AuditKeys { witnesses: vec![("impostor.test/w".into(), impostor.public_key())], quorum: 1, ..keys() };
    assert_eq!(audit::verify_parts(&entries, &forged_notes, &claimed).verdict(), Verdict::Pass);

    let report = audit::verify_parts(&entries, &forged_notes, &keys());
    assert_eq!(report.verdict(), Verdict::Fail);
    assert_eq!(report.sealed, None);
    assert_eq!(report.failures_of(Rule::WitnessQuorum).count(), notes.len(), "{report}");
    assert!(report.failures.iter().all(|f| f.rule == Rule::WitnessQuorum), "{report}");
    assert!(
        report.failures[0]
            .message
            .ends_with("is co-signed by 0 trusted witnesses, below the auditor's quorum of 1 (of 1 trusted witnesses)"),
        "{report}"
    );
    let error = audit::sealed_checkpoint(&forged_notes[0], &keys()).expect_err("not sealed");
    assert_eq!(error.rule, Rule::WitnessQuorum);
    assert!(audit::sealed_checkpoint(&notes[0], &keys()).is_ok());
}

#[test]
fn one_witness_listed_twice_counts_once_towards_the_quorum() {
    let (entries, notes) = study_parts();
    let mut doubled = keys();
    doubled.witnesses.push(("witness.test/alias".into(), witness_identity().public_key()));
    doubled.witnesses.push((WITNESS_KEY.into(), witness_identity().public_key()));
    doubled.quorum = 2;
    let report = audit::verify_parts(&entries, &notes, &doubled);
    assert_eq!(report.failures_of(Rule::WitnessQuorum).count(), notes.len(), "{report}");
    assert_eq!(audit::sealed_checkpoint(&notes[0], &doubled).expect_err("one party").rule, Rule::WitnessQuorum);
}

#[test]
fn entries_beyond_the_last_sealed_checkpoint_are_reported_as_the_unsealed_tail() {
    let (entries, notes) = study_parts();
    let sealed = notes.len() - 1;
    let report = audit::verify_parts(&entries, &notes[..sealed], &keys());
    assert!(report.passed(), "{report}");
    let last = SignedCheckpoint::parse(&notes[sealed - 1]).expect("note").checkpoint;
    assert_eq!(report.verdict(), Verdict::UnsealedTail);
    assert_eq!(report.sealed, Some(TreeHead { size: last.size, root: last.root }));
    assert_eq!(report.unsealed_tail(), last.size..entries.len() as u64);
    let text = report.to_string();
    let tail = entries.len() as u64 - last.size;
    assert!(text.starts_with(&format!("UNSEALED TAIL ({tail} entries)\n")), "{text}");
    let line = format!(
        "unsealed tail: entries {}..={} ({tail} entries) beyond the last sealed checkpoint (size {})",
        last.size,
        entries.len() - 1,
        last.size
    );
    assert!(text.lines().any(|l| l == line), "{text}");

    // The whole log sealed: PASS, and the JSON report says how far.
    let report = audit::verify_parts(&entries, &notes, &keys());
    assert_eq!(report.verdict(), Verdict::Pass);
    assert_eq!(report.unsealed_tail(), entries.len() as u64..entries.len() as u64);
    let json = serde_json::to_value(&report).expect("serialises");
    assert_eq!(json["sealed"]["size"], entries.len() as u64);
    assert_eq!(json["sealed"]["root"], report.root);
}

#[test]
fn an_honest_log_extends_the_remembered_tree_head() {
    let (entries, notes) = study_parts();
    let first = SignedCheckpoint::parse(&notes[0]).expect("note").checkpoint;
    let remembered = TreeHead { size: first.size, root: first.root };
    let report = audit::verify_parts_since(&entries, &notes, &keys(), Some(&remembered));
    assert_eq!(report.verdict(), Verdict::Pass, "{report}");
    // The same head as the last sealed checkpoint is consistent with itself.
    let last = report.sealed.expect("sealed");
    let again = audit::verify_parts_since(&entries, &notes, &keys(), Some(&last));
    assert_eq!(again.verdict(), Verdict::Pass, "{again}");

    let mut store = MemoryStore::new();
    write_study(&mut store);
    assert_eq!(audit::verify_store_since(&store, &keys(), Some(&remembered)), report);
}

#[test]
fn a_rewritten_history_after_a_verified_run_is_named() {
    let (entries, notes) = study_parts();
    let verified = audit::verify_parts(&entries, &notes, &keys()).sealed.expect("sealed");

    // The operator rewrites an early entry and has everything re-signed by its log key and a fresh witness
    // (one that never saw the old history): every check of the new copy alone passes.
    // Round 1's metrics are improved after the fact.
    let mut rewritten = study_entries();
    let aggregate = rewritten.iter_mut().find(|e| matches!(e, Entry::RoundAggregated { .. })).expect("a round");
    let Entry::RoundAggregated { metrics, .. } = aggregate else { unreachable!() };
    metrics[0].1 = 0.01;
    let sizes: Vec<u64> = notes.iter().map(|n| SignedCheckpoint::parse(n).expect("note").checkpoint.size).collect();
    let (forged_entries, forged_notes) = sealed_parts(&rewritten, &sizes);
    let fresh = audit::verify_parts(&forged_entries, &forged_notes, &keys());
    assert_eq!(fresh.verdict(), Verdict::Pass, "{fresh}");

    let report = audit::verify_parts_since(&forged_entries, &forged_notes, &keys(), Some(&verified));
    let failures: Vec<_> = report.failures_of(Rule::RememberedCheckpoint).collect();
    assert_eq!(failures.len(), 1, "{report}");
    assert_eq!(failures[0].checkpoints, [verified.size]);
    assert!(failures[0].message.starts_with("history rewritten: the last sealed checkpoint"), "{report}");
    assert!(failures[0].message.contains(&hex::encode(verified.root)), "{report}");
    assert_eq!(report.verdict(), Verdict::Fail);
}

#[test]
fn a_fork_or_a_rollback_shown_later_is_named() {
    let (entries, notes) = study_parts();
    let verified = audit::verify_parts(&entries, &notes, &keys()).sealed.expect("sealed");

    // An older copy: every check passes on its own, but it is behind what the auditor verified.
    let older = notes.len() - 2;
    let older_size = SignedCheckpoint::parse(&notes[older - 1]).expect("note").checkpoint.size;
    let report = audit::verify_parts_since(&entries[..older_size as usize], &notes[..older], &keys(), Some(&verified));
    let failure = report.failures_of(Rule::RememberedCheckpoint).next().expect("a rollback");
    assert!(
        failure.message.starts_with(&format!("rolled back: the last sealed checkpoint is {older_size}")),
        "{report}"
    );
    assert_eq!(failure.checkpoints, [older_size, verified.size]);

    // A fork: the same prefix, then other entries, sealed by the log key with a fresh witness.
    let mut fork = study_entries()[..older_size as usize].to_vec();
    // Longer than what was verified, so only the consistency proof can tell.
    for n in 0u8..(entries.len() - older_size as usize + 5) as u8 {
        fork.push(Entry::StudyCreated { study_id: format!("fork-{n}"), manifest_hash: [n; 32] });
    }
    assert!(fork.len() as u64 > verified.size);
    let tree: MerkleTree = fork.iter().map(|e| merkle::leaf_hash(&e.encode())).collect();
    let mut sealer = Sealer::new();
    let fork_notes: Vec<String> =
        [older_size, fork.len() as u64].iter().map(|&size| sealer.seal(&tree, size).to_note()).collect();
    let fork_bytes: Vec<Vec<u8>> = fork.iter().map(Entry::encode).collect();
    assert_eq!(audit::verify_parts(&fork_bytes, &fork_notes, &keys()).verdict(), Verdict::Pass);
    let report = audit::verify_parts_since(&fork_bytes, &fork_notes, &keys(), Some(&verified));
    let failure = report.failures_of(Rule::RememberedCheckpoint).next().expect("a fork");
    assert!(failure.message.starts_with("history rewritten"), "{report}");

    // Nothing sealed at all, after a verified run.
    let report = audit::verify_parts_since(&entries, &[], &keys(), Some(&verified));
    let failure = report.failures_of(Rule::RememberedCheckpoint).next().expect("no checkpoint");
    assert!(failure.message.starts_with("rolled back: no checkpoint is sealed"), "{report}");
    // A remembered head the entries contradict is named as a rewrite even without a checkpoint.
    let other = TreeHead { size: 3, root: [7; 32] };
    let report = audit::verify_parts_since(&entries, &[], &keys(), Some(&other));
    let failure = report.failures_of(Rule::RememberedCheckpoint).next().expect("a rewrite");
    assert!(failure.message.starts_with("history rewritten: the entries no longer have the root"), "{report}");
}

#[test]
fn the_remembered_head_is_checked_in_a_store_from_the_entries() {
    let mut store = MemoryStore::new();
    write_study(&mut store);
    let (entries, _) = study_parts();
    let wrong = TreeHead { size: 5, root: head(&entries, 6).root };
    let report = audit::verify_store_since(&store, &keys(), Some(&wrong));
    let failures: Vec<_> = report.failures_of(Rule::RememberedCheckpoint).collect();
    assert_eq!(failures.len(), 1, "{report}");
    assert!(failures[0].message.starts_with("history rewritten"), "{report}");
    assert!(audit::verify_store_since(&store, &keys(), Some(&head(&entries, 5))).failures.is_empty());
}

#[test]
fn a_checkpoint_signed_only_by_the_log_is_sealed_only_under_a_quorum_of_zero() {
    let entries = made_up_entries();
    let tree: MerkleTree = entries.iter().map(|bytes| merkle::leaf_hash(bytes)).collect();
    let checkpoint =
        Checkpoint { origin: ORIGIN.into(), size: 2, root: tree.root(), previous: [0; 32], timestamp_ms: 1 };
    let note = checkpoint.sign(LOG_KEY, &log_identity()).expect("sign").to_note();
    let trusting_the_log = AuditKeys { witnesses: Vec::new(), quorum: 0, ..keys() };
    assert_eq!(audit::verify_parts(&entries, std::slice::from_ref(&note), &trusting_the_log).verdict(), Verdict::Pass);
    let report = audit::verify_parts(&entries, &[note], &keys());
    assert_eq!((report.verdict(), report.sealed), (Verdict::Fail, None));
}
