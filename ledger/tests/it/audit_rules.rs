//! The audit's rules and checkpoint checks: an honest study passes, and each violation is reported under its
//! rule with the entry indices (or checkpoint sizes) involved.

use pdc_ledger::Identity;
use pdc_ledger::audit::{self, AuditKeys, AuditReport, Failure, Rule};
use pdc_ledger::entry::{Entry, Role};
use pdc_ledger::signing::{self, ConsentAction, PrivacyClaim, StatisticKind, StatisticsRelease};
use pdc_ledger::store::MemoryStore;

use crate::support::*;

/// Audits `entries` sealed by one honest checkpoint at the end, so only the rules can fail.
fn audit_entries(entries: &[Entry]) -> AuditReport {
    let (bytes, notes) = sealed_parts(entries, &[entries.len() as u64]);
    audit::verify_parts(&bytes, &notes, &keys())
}

/// The entry lists of the report's failures, asserting that every failure is of `rule`.
fn only(report: &AuditReport, rule: Rule) -> Vec<Vec<u64>> {
    assert!(!report.passed(), "expected a failure of {rule}");
    for failure in &report.failures {
        assert_eq!(failure.rule, rule, "unexpected failure in\n{report}");
    }
    report.failures.iter().map(|failure| failure.entries.clone()).collect()
}

fn has(report: &AuditReport, rule: Rule, entries: &[u64]) -> bool {
    report.failures.iter().any(|failure| failure.rule == rule && failure.entries == entries)
}

fn is_contribution(round: u32, pdc_id: &str) -> impl Fn(&Entry) -> bool {
    move |entry| matches!(entry, Entry::ContributionAccepted { contribution, .. } if contribution.round == round && contribution.pdc_id == pdc_id)
}

fn is_spend(round: u32, pdc_id: &'static str) -> impl Fn(&Entry) -> bool {
    move |entry| matches!(entry, Entry::PrivacySpent { round: r, pdc_id: p, .. } if *r == round && p == pdc_id)
}

fn is_round_opened(round: u32) -> impl Fn(&Entry) -> bool {
    move |entry| matches!(entry, Entry::RoundOpened { round: r, .. } if *r == round)
}

#[test]
fn an_honest_study_passes_as_parts_and_as_a_store() {
    let (entries, notes) = study_parts();
    let report = audit::verify_parts(&entries, &notes, &keys());
    assert!(report.passed(), "{report}");
    assert_eq!(report.size, study_entries().len() as u64);
    assert_eq!(report.checkpoints, ROUNDS as usize + 2);
    assert!(report.to_string().starts_with("PASS\nsize: "), "{report}");

    let mut store = MemoryStore::new();
    write_study(&mut store);
    let from_store = audit::verify_store(&store, &keys());
    assert!(from_store.passed(), "{from_store}");
    assert_eq!(from_store, report);
}

#[test]
fn a_contribution_without_consent_in_force_is_reported() {
    // h2 withdraws before round 3; its contributions to rounds 3 and 4 have no consent behind them.
    let mut entries = study_entries();
    let at = find(&entries, is_round_opened(3)) as usize;
    entries.insert(at, consent(ConsentAction::Revoke, "h2"));
    let report = audit_entries(&entries);
    let expected = [find(&entries, is_contribution(3, "h2")), find(&entries, is_contribution(4, "h2"))];
    assert_eq!(only(&report, Rule::ConsentBeforeContribution), [[expected[0]], [expected[1]]], "{report}");

    // h3 never consents at all.
    let mut entries = study_entries();
    entries.retain(|entry| !matches!(entry, Entry::ConsentGranted { pdc_id, .. } if pdc_id == "h3"));
    let report = audit_entries(&entries);
    let expected: Vec<Vec<u64>> =
        (1..=ROUNDS).map(|round| vec![find(&entries, is_contribution(round, "h3"))]).collect();
    assert_eq!(only(&report, Rule::ConsentBeforeContribution), expected);
}

#[test]
fn a_contribution_beyond_the_rounds_a_consent_covers_is_reported() {
    let mut entries = study_entries();
    let at = find(&entries, |e| matches!(e, Entry::ConsentGranted { pdc_id, .. } if pdc_id == "h1")) as usize;
    let conditions = signing::ConsentConditions { max_rounds: Some(2), ..Default::default() };
    let message = signing::conditional_consent_message(STUDY, &manifest_hash(), &conditions);
    entries[at] = Entry::ConsentGranted {
        study_id: STUDY.into(),
        pdc_id: "h1".into(),
        manifest_hash: manifest_hash(),
        signature: hospital("h1").sign(&message),
        conditions: Some(conditions),
    };
    let report = audit_entries(&entries);
    let late = [find(&entries, is_contribution(3, "h1")), find(&entries, is_contribution(4, "h1"))];
    assert_eq!(only(&report, Rule::ConsentBeforeContribution), [[at as u64, late[0]], [at as u64, late[1]]]);
    assert!(report.failures[0].message.contains("beyond the 2 rounds"), "{report}");
    // The conditions are signed: an unconditional signature does not carry them.
    let Entry::ConsentGranted { conditions, .. } = &mut entries[at] else { unreachable!() };
    *conditions = Some(signing::ConsentConditions { max_rounds: Some(4), ..Default::default() });
    assert!(has(&audit_entries(&entries), Rule::Signature, &[at as u64]));
}

#[test]
fn a_consent_signed_by_another_key_does_not_count() {
    let mut entries = study_entries();
    let at = find(&entries, |e| matches!(e, Entry::ConsentGranted { pdc_id, .. } if pdc_id == "h1")) as usize;
    let Entry::ConsentGranted { study_id, pdc_id, manifest_hash, .. } = entries[at].clone() else { unreachable!() };
    let message = pdc_ledger::signing::consent_message(ConsentAction::Grant, &study_id, &manifest_hash);
    let signature = hospital("h2").sign(&message);
    entries[at] = Entry::ConsentGranted { study_id, pdc_id, manifest_hash, signature, conditions: None };
    let report = audit_entries(&entries);
    assert!(has(&report, Rule::Signature, &[at as u64]), "{report}");
    for round in 1..=ROUNDS {
        assert!(has(&report, Rule::ConsentBeforeContribution, &[find(&entries, is_contribution(round, "h1"))]));
    }
}

#[test]
fn a_contribution_signed_by_another_key_is_reported() {
    let mut entries = study_entries();
    let at = find(&entries, is_contribution(2, "h1"));
    entries[at as usize] = contribution(2, "h1", &hospital("h2"));
    let report = audit_entries(&entries);
    assert_eq!(only(&report, Rule::Signature), [[at]], "{report}");
    assert!(report.failures[0].message.contains("h1"), "{report}");
}

#[test]
fn signatures_follow_key_rotation() {
    let new_key = Identity::from_seed([99; 32]);
    let (old_bytes, new_bytes) = (hospital("h1").public_key().to_bytes(), new_key.public_key().to_bytes());
    let signature = hospital("h1").sign(&signing::rotate_message("h1", &old_bytes, &new_bytes));
    let rotation = Entry::KeyRotated { pdc_id: "h1".into(), old_key: old_bytes, new_key: new_bytes, signature };

    // A rotation the old key did not sign is refused and changes nothing.
    let mut entries = study_entries();
    let at = find(&entries, is_round_opened(3)) as usize;
    let forged_signature = new_key.sign(&signing::rotate_message("h1", &old_bytes, &new_bytes));
    let forged =
        Entry::KeyRotated { pdc_id: "h1".into(), old_key: old_bytes, new_key: new_bytes, signature: forged_signature };
    entries.insert(at, forged);
    assert_eq!(only(&audit_entries(&entries), Rule::Signature), [[at as u64]]);

    let mut entries = study_entries();
    let at = find(&entries, is_round_opened(3)) as usize;
    entries.insert(at, rotation.clone());
    // Rounds 3 and 4 are still signed with the old key.
    let report = audit_entries(&entries);
    let stale = [find(&entries, is_contribution(3, "h1")), find(&entries, is_contribution(4, "h1"))];
    assert_eq!(only(&report, Rule::Signature), [[stale[0]], [stale[1]]], "{report}");

    for index in stale {
        entries[index as usize] = contribution(if index == stale[0] { 3 } else { 4 }, "h1", &new_key);
    }
    let report = audit_entries(&entries);
    assert!(report.passed(), "{report}");

    // Rotating from a key that is not the current one is a membership failure.
    entries.insert(at + 1, rotation);
    let report = audit_entries(&entries);
    assert_eq!(only(&report, Rule::Membership), [[at as u64, at as u64 + 1]], "{report}");
}

#[test]
fn nothing_signed_by_a_revoked_key_counts_after_its_revocation() {
    let old_bytes = hospital("h1").public_key().to_bytes();
    let revoke = || Entry::KeyRevoked { pdc_id: "h1".into(), key: old_bytes, reason: "left the consortium".into() };
    let mut entries = study_entries();
    let at = find(&entries, is_round_opened(3)) as usize;
    entries.insert(at, revoke());
    let report = audit_entries(&entries);
    let stale = [find(&entries, is_contribution(3, "h1")), find(&entries, is_contribution(4, "h1"))];
    assert_eq!(only(&report, Rule::Signature), [[stale[0]], [stale[1]]], "{report}");
    assert!(report.failures[0].message.contains(&format!("revoked at entry {at}")), "{report}");

    // The consortium gives h1 a new key: its later contributions, signed with it, count again.
    let new_key = Identity::from_seed([98; 32]);
    let register =
        |key: [u8; 32]| Entry::MemberRegistered { pdc_id: "h1".into(), role: Role::Hospital, public_key: key };
    entries.insert(at + 1, register(new_key.public_key().to_bytes()));
    for index in stale {
        let index = index as usize + 1;
        entries[index] = contribution(if index == stale[0] as usize + 1 { 3 } else { 4 }, "h1", &new_key);
    }
    let report = audit_entries(&entries);
    assert!(report.passed(), "{report}");

    // A revoked key never comes back, and a key revoked twice (or one that is not current) is a membership failure.
    let mut again = entries.clone();
    again.insert(at + 2, register(old_bytes));
    let report = audit_entries(&again);
    assert_eq!(only(&report, Rule::Membership), [[at as u64, at as u64 + 2]], "{report}");
    let registered = find(&entries, |e| matches!(e, Entry::MemberRegistered { pdc_id, .. } if pdc_id == "h1"));
    let mut twice = entries.clone();
    twice.insert(at + 1, revoke());
    let report = audit_entries(&twice);
    assert_eq!(only(&report, Rule::Membership), [[registered, at as u64 + 1]], "{report}");
    let unknown = Entry::KeyRevoked { pdc_id: "nobody".into(), key: [7; 32], reason: String::new() };
    let mut entries = study_entries();
    entries.insert(1, unknown);
    assert_eq!(only(&audit_entries(&entries), Rule::Membership), [[1]]);
}

#[test]
fn a_manifest_is_signed_by_a_registered_researcher_for_its_own_study() {
    let researcher = Identity::from_seed([77; 32]);
    let register =
        |role| Entry::MemberRegistered { pdc_id: "alice".into(), role, public_key: researcher.public_key().to_bytes() };
    let signed = |hash: [u8; 32], signer: &Identity| Entry::ManifestSigned {
        study_id: STUDY.into(),
        researcher_id: "alice".into(),
        manifest_hash: hash,
        signature: signer.sign(&signing::manifest_message("alice", &hash)),
    };
    let created = find(&study_entries(), |entry| matches!(entry, Entry::StudyCreated { .. })) as usize;
    let with = |entries: Vec<Entry>| {
        let mut all = study_entries();
        for (offset, entry) in entries.into_iter().enumerate() {
            all.insert(created + 1 + offset, entry);
        }
        all
    };
    let report = audit_entries(&with(vec![register(Role::Researcher), signed(manifest_hash(), &researcher)]));
    assert!(report.passed(), "{report}");

    let signed_at = created as u64 + 2;
    let report = audit_entries(&with(vec![register(Role::Hospital), signed(manifest_hash(), &researcher)]));
    assert_eq!(only(&report, Rule::Membership), [[created as u64 + 1, signed_at]], "{report}");
    let report = audit_entries(&with(vec![register(Role::Researcher), signed(manifest_hash(), &hospital("h1"))]));
    assert_eq!(only(&report, Rule::Signature), [[signed_at]], "{report}");
    let report = audit_entries(&with(vec![signed(manifest_hash(), &researcher)]));
    assert_eq!(only(&report, Rule::Signature), [[created as u64 + 1]], "{report}");
    let other = pdc_ledger::sha3_256(b"another manifest");
    let report = audit_entries(&with(vec![register(Role::Researcher), signed(other, &researcher)]));
    assert_eq!(only(&report, Rule::Study), [[created as u64, signed_at]], "{report}");
}

#[test]
fn a_decreasing_privacy_spend_is_reported() {
    let mut entries = study_entries();
    let at = find(&entries, is_spend(3, "h1"));
    let Entry::PrivacySpent { epsilon, .. } = &mut entries[at as usize] else { unreachable!() };
    *epsilon = 0.5;
    let report = audit_entries(&entries);
    assert_eq!(only(&report, Rule::PrivacyBudget), [[find(&entries, is_spend(2, "h1")), at]], "{report}");
}

#[test]
fn a_privacy_spend_beyond_the_budget_is_reported() {
    let mut entries = study_entries();
    let at = find(&entries, is_spend(4, "h3"));
    let Entry::PrivacySpent { epsilon, .. } = &mut entries[at as usize] else { unreachable!() };
    *epsilon = EPSILON_BUDGET + 0.25;
    let report = audit_entries(&entries);
    let declared = find(&entries, |e| matches!(e, Entry::BudgetDeclared { pdc_id, .. } if pdc_id == "h3"));
    assert_eq!(only(&report, Rule::PrivacyBudget), [[declared, at]], "{report}");

    // δ is held to its budget too.
    let mut entries = study_entries();
    let Entry::PrivacySpent { delta, .. } = &mut entries[at as usize] else { unreachable!() };
    *delta = 2.0 * DELTA_BUDGET;
    assert_eq!(only(&audit_entries(&entries), Rule::PrivacyBudget), [[declared, at]]);
}

/// The study with h1's round-2 contribution carrying a signed claim of cumulative `(epsilon, 1e-6)`.
fn with_claim(epsilon: f64) -> (Vec<Entry>, u64) {
    let mut entries = study_entries();
    let at = find(&entries, is_contribution(2, "h1"));
    let Entry::ContributionAccepted { contribution, signature } = &mut entries[at as usize] else { unreachable!() };
    contribution.privacy = Some(PrivacyClaim {
        dataset: "h1/icu.csv".into(),
        noise_multiplier: 1.1,
        sampling_rate: 0.05,
        steps: 40,
        clip_norm: 1.0,
        epsilon,
        delta: 1e-6,
    });
    *signature = hospital("h1").sign(&contribution.signing_bytes());
    (entries, at)
}

#[test]
fn a_spend_must_state_what_the_pdc_signed_and_must_not_be_dropped() {
    // The ledger's spend for h1 after round 2 is 2 × 0.75: a claim of exactly that passes.
    let (entries, _) = with_claim(2.0 * EPSILON_PER_ROUND);
    let report = audit_entries(&entries);
    assert!(report.passed(), "{report}");

    // The coordinator recording less than the PDC signed is caught, naming both entries.
    let (entries, claimed) = with_claim(2.0 * EPSILON_PER_ROUND + 0.125);
    let spend = find(&entries, is_spend(2, "h1"));
    assert_eq!(only(&audit_entries(&entries), Rule::PrivacyBudget), [[claimed, spend]]);

    // So is dropping the spend altogether.
    let (mut entries, claimed) = with_claim(2.0 * EPSILON_PER_ROUND);
    entries.remove(spend as usize);
    let report = audit_entries(&entries);
    assert_eq!(only(&report, Rule::PrivacyBudget), [[claimed]], "{report}");
    assert!(report.failures[0].message.contains("no PrivacySpent records it"), "{report}");
}

#[test]
fn a_privacy_spend_without_a_declared_budget_is_reported() {
    let mut entries = study_entries();
    entries.retain(|entry| !matches!(entry, Entry::BudgetDeclared { pdc_id, .. } if pdc_id == "h2"));
    let report = audit_entries(&entries);
    let expected: Vec<Vec<u64>> = (1..=ROUNDS).map(|round| vec![find(&entries, is_spend(round, "h2"))]).collect();
    assert_eq!(only(&report, Rule::PrivacyBudget), expected, "{report}");
}

#[test]
fn rewards_that_do_not_sum_to_the_round_budget_are_reported() {
    let mut entries = study_entries();
    let is_payment = |round: u32| move |e: &Entry| matches!(e, Entry::RewardPaid { round: r, .. } if *r == round);
    let first_payment = find(&entries, is_payment(2));
    let Entry::RewardPaid { amount, .. } = &mut entries[first_payment as usize + 2] else { unreachable!() };
    *amount += 1e-3;
    let report = audit_entries(&entries);
    let allotted = find(&entries, |e| matches!(e, Entry::RewardsAllotted { round: 2, .. }));
    assert_eq!(
        only(&report, Rule::Rewards),
        [[allotted, first_payment, first_payment + 1, first_payment + 2]],
        "{report}"
    );

    // Within the relative tolerance is fine.
    let mut entries = study_entries();
    let Entry::RewardPaid { amount, .. } = &mut entries[first_payment as usize] else { unreachable!() };
    *amount += ROUND_BUDGET * 1e-12;
    assert!(audit_entries(&entries).passed());
}

#[test]
fn a_carried_over_budget_with_payments_and_payments_without_allotment_are_reported() {
    let mut entries = study_entries();
    let allotted = find(&entries, |e| matches!(e, Entry::RewardsAllotted { round: 1, .. }));
    let Entry::RewardsAllotted { carried_over, .. } = &mut entries[allotted as usize] else { unreachable!() };
    *carried_over = true;
    let report = audit_entries(&entries);
    let paid: Vec<Vec<u64>> = (1..=3).map(|offset| vec![allotted, allotted + offset]).collect();
    assert_eq!(only(&report, Rule::Rewards), paid, "{report}");

    let mut entries = study_entries();
    entries.remove(allotted as usize);
    let report = audit_entries(&entries);
    let paid: Vec<Vec<u64>> = (0..3).map(|offset| vec![allotted + offset]).collect();
    assert_eq!(only(&report, Rule::Rewards), paid, "{report}");
}

#[test]
fn rounds_out_of_order_are_reported() {
    // Round 2 is opened a second time, where round 3 should start.
    let mut entries = study_entries();
    let round_2 = find(&entries, is_round_opened(2));
    let at = find(&entries, is_round_opened(3));
    let mut reopened = entries[round_2 as usize].clone();
    let Entry::RoundOpened { round, .. } = &mut reopened else { unreachable!() };
    *round = 2;
    entries.insert(at as usize, reopened);
    let report = audit_entries(&entries);
    assert_eq!(only(&report, Rule::RoundOrder), [[round_2, at]], "{report}");

    // A contribution to round 3 arrives while round 2 is still the open one.
    let mut entries = study_entries();
    let early = find(&entries, is_contribution(3, "h1"));
    let moved = entries.remove(early as usize);
    let target = find(&entries, |e| matches!(e, Entry::RoundAggregated { round: 2, .. }));
    entries.insert(target as usize, moved);
    let report = audit_entries(&entries);
    assert!(has(&report, Rule::RoundOrder, &[target]), "{report}");

    // A contribution after its round was aggregated.
    let mut entries = study_entries();
    let late = find(&entries, is_contribution(1, "h2"));
    let moved = entries.remove(late as usize);
    let aggregated = find(&entries, |e| matches!(e, Entry::RoundAggregated { round: 1, .. }));
    entries.insert(aggregated as usize + 1, moved);
    let report = audit_entries(&entries);
    assert!(has(&report, Rule::RoundOrder, &[aggregated, aggregated + 1]), "{report}");
}

#[test]
fn nothing_may_follow_the_close_and_studies_must_exist() {
    let mut entries = study_entries();
    let closed = entries.len() as u64 - 1;
    entries.push(contribution(4, "h1", &hospital("h1")));
    let report = audit_entries(&entries);
    assert_eq!(only(&report, Rule::RoundOrder), [[closed, closed + 1]], "{report}");

    let mut entries = study_entries();
    let Entry::StudyClosed { study_id, .. } = entries.last_mut().expect("entries") else { unreachable!() };
    *study_id = "unknown".into();
    let report = audit_entries(&entries);
    assert_eq!(only(&report, Rule::Study), [[closed]], "{report}");
}

#[test]
fn checkpoints_under_wrong_keys_or_below_quorum_are_reported() {
    let (entries, notes) = study_parts();
    let sizes: Vec<u64> = notes.iter().map(|note| size_of(note)).collect();

    let other_origin = AuditKeys { origin: "elsewhere/ledger/sha3-256".into(), ..keys() };
    let report = audit::verify_parts(&entries, &notes, &other_origin);
    assert_eq!(checkpoints_of(&report, Rule::CheckpointOrigin), sizes, "{report}");
    assert_eq!(report.failures.len(), sizes.len());

    let other_key = AuditKeys { log_key: Identity::from_seed([3; 32]).public_key(), ..keys() };
    let report = audit::verify_parts(&entries, &notes, &other_key);
    assert_eq!(checkpoints_of(&report, Rule::CheckpointSignature), sizes, "{report}");

    let mut two_witnesses = keys();
    two_witnesses.witnesses.push(("witness.test/w2".into(), Identity::from_seed([4; 32]).public_key()));
    two_witnesses.quorum = 2;
    let report = audit::verify_parts(&entries, &notes, &two_witnesses);
    assert_eq!(checkpoints_of(&report, Rule::WitnessQuorum), sizes, "{report}");
    assert_eq!(report.failures.len(), sizes.len());
}

#[test]
fn a_broken_chain_reordered_checkpoints_and_a_checkpoint_beyond_the_log_are_reported() {
    let (entries, notes) = study_parts();
    let sizes: Vec<u64> = notes.iter().map(|note| size_of(note)).collect();

    let mut gap = notes.clone();
    gap.remove(2);
    let report = audit::verify_parts(&entries, &gap, &keys());
    assert_eq!(report.failures.len(), 1, "{report}");
    assert_eq!(report.failures[0].rule, Rule::CheckpointChain);
    assert_eq!(report.failures[0].checkpoints, [sizes[1], sizes[3]]);

    let mut swapped = notes.clone();
    swapped.swap(3, 4);
    let report = audit::verify_parts(&entries, &swapped, &keys());
    assert!(report.failures_of(Rule::CheckpointOrder).any(|f| f.checkpoints == [sizes[3], sizes[4]]), "{report}");
    assert!(report.failures_of(Rule::CheckpointChain).count() >= 2, "{report}");

    let shorter = &entries[..entries.len() - 1];
    let report = audit::verify_parts(shorter, &notes, &keys());
    assert_eq!(only_checkpoints(&report), [(Rule::CheckpointRoot, vec![*sizes.last().expect("sizes")])]);

    let mut garbled = notes.clone();
    garbled[1] = "not a note".into();
    let report = audit::verify_parts(&entries, &garbled, &keys());
    assert_eq!(report.failures.len(), 1, "{report}");
    assert_eq!(report.failures[0].rule, Rule::CheckpointMalformed);
    assert!(report.failures[0].message.contains("#1"), "{report}");
}

#[test]
fn a_malformed_entry_is_reported_and_the_report_reads_and_serialises() {
    let (mut entries, notes) = study_parts();
    entries[5].push(0);
    let report = audit::verify_parts(&entries, &notes, &keys());
    assert!(has(&report, Rule::EntryMalformed, &[5]), "{report}");
    // The root changed too, so every checkpoint after entry 5 fails its root check.
    assert!(report.failures_of(Rule::CheckpointRoot).count() >= 1);

    let text = report.to_string();
    let mut lines = text.lines();
    assert_eq!(lines.next(), Some(format!("FAIL ({} failures)", report.failures.len()).as_str()));
    assert!(lines.next().expect("size line").starts_with(&format!("size: {} entries, root ", entries.len())));
    assert_eq!(lines.next(), Some(format!("checkpoints checked: {}", notes.len()).as_str()));
    // Every checkpoint covers entry 5, so none is sealed, and the report says so before the failures.
    let unsealed = format!(
        "unsealed: no checkpoint is sealed under the auditor's policy (log signature, root, witness quorum); entries \
         0..={} ({} entries)",
        entries.len() - 1,
        entries.len()
    );
    assert_eq!(lines.next(), Some(unsealed.as_str()));
    assert!(text.contains("\n  entry_malformed entries 5: entry 5 does not decode"), "{text}");
    assert_eq!(text.lines().count(), 4 + report.failures.len());

    let json = serde_json::to_string(&report).expect("serialises");
    assert!(json.contains("\"rule\":\"entry_malformed\""), "{json}");
    let back: AuditReport = serde_json::from_str(&json).expect("deserialises");
    assert_eq!(back, report);
}

#[test]
fn rule_codes_are_stable_and_are_the_serde_names() {
    let codes: Vec<&str> = Rule::ALL.iter().map(|rule| rule.code()).collect();
    let mut unique = codes.clone();
    unique.sort_unstable();
    unique.dedup();
    assert_eq!(unique.len(), codes.len());
    for rule in Rule::ALL {
        assert_eq!(serde_json::to_string(&rule).expect("serialises"), format!("\"{}\"", rule.code()));
    }
    let failure = Failure { rule: Rule::Rewards, entries: vec![1, 2], checkpoints: vec![], message: "m".into() };
    assert_eq!(
        serde_json::to_string(&failure).expect("serialises"),
        r#"{"rule":"rewards","entries":[1,2],"checkpoints":[],"message":"m"}"#
    );
}

fn size_of(note: &str) -> u64 {
    pdc_ledger::checkpoint::SignedCheckpoint::parse(note).expect("note").checkpoint.size
}

fn checkpoints_of(report: &AuditReport, rule: Rule) -> Vec<u64> {
    report.failures_of(rule).flat_map(|failure| failure.checkpoints.clone()).collect()
}

fn only_checkpoints(report: &AuditReport) -> Vec<(Rule, Vec<u64>)> {
    report.failures.iter().map(|failure| (failure.rule, failure.checkpoints.clone())).collect()
}

#[test]
fn a_round_opened_again_before_it_was_aggregated_is_a_retry_and_in_order() {
    // Round 2 is abandoned at its deadline and opened again under its number, before any contribution.
    let mut entries = study_entries();
    let round_2 = find(&entries, is_round_opened(2));
    let again = entries[round_2 as usize].clone();
    entries.insert(round_2 as usize + 1, again);
    let report = audit_entries(&entries);
    assert!(report.passed(), "{report}");
}

/// `pdc_id`'s signed statistics release for `scope` at cumulative ε `epsilon`.
fn release(scope: &str, pdc_id: &str, kind: StatisticKind, epsilon: f64, signer: &Identity) -> Entry {
    let values = match kind {
        StatisticKind::FeatureSummary => vec![101.5, -3.25, 7.0],
        StatisticKind::CohortCounts => vec![40.5, 61.0],
    };
    let release = StatisticsRelease {
        scope: scope.into(),
        pdc_id: pdc_id.into(),
        kind,
        dataset: format!("{pdc_id}/icu.csv"),
        noise_multiplier: 4.0,
        values,
        epsilon,
        delta: 1e-6,
    };
    let signature = signer.sign(&release.signing_bytes());
    Entry::StatisticsReleased { release, signature }
}

/// The study with a federated standardisation before round 1 (each hospital releases a summary at ε = 0.25 and
/// the coordinator pools them), and h1 answering a feasibility query before the study; the index of the fit.
fn with_standardisation() -> (Vec<Entry>, u64) {
    let mut entries = study_entries();
    let at = find(&entries, is_round_opened(1)) as usize;
    let mut phase: Vec<Entry> =
        HOSPITALS.iter().map(|h| release(STUDY, h, StatisticKind::FeatureSummary, 0.25, &hospital(h))).collect();
    phase.push(Entry::StandardizationFitted {
        study_id: STUDY.into(),
        contributors: HOSPITALS.iter().map(|h| h.to_string()).collect(),
        mean: vec![4.0],
        std: vec![1.5],
    });
    let fitted = (at + phase.len() - 1) as u64;
    entries.splice(at..at, phase);
    let consents = find(&entries, |e| matches!(e, Entry::ConsentGranted { .. })) as usize;
    entries.insert(consents, release("feasibility-1", "h1", StatisticKind::CohortCounts, 0.125, &hospital("h1")));
    (entries, fitted + 1)
}

fn is_release(pdc_id: &'static str, kind: StatisticKind) -> impl Fn(&Entry) -> bool {
    move |entry| matches!(entry, Entry::StatisticsReleased { release, .. } if release.pdc_id == pdc_id && release.kind == kind)
}

#[test]
fn statistics_releases_are_spends_signed_by_their_pdc_and_precede_the_first_round() {
    let (entries, fitted) = with_standardisation();
    let report = audit_entries(&entries);
    assert!(report.passed(), "{report}");

    // A release the PDC did not sign.
    let (mut entries, _) = with_standardisation();
    let at = find(&entries, is_release("h2", StatisticKind::FeatureSummary));
    entries[at as usize] = release(STUDY, "h2", StatisticKind::FeatureSummary, 0.25, &hospital("h3"));
    assert_eq!(only(&audit_entries(&entries), Rule::Signature), [[at]]);

    // A release beyond the budget, and one whose spend goes back below what was recorded before.
    let (mut entries, _) = with_standardisation();
    let at = find(&entries, is_release("h3", StatisticKind::FeatureSummary));
    entries[at as usize] = release(STUDY, "h3", StatisticKind::FeatureSummary, EPSILON_BUDGET + 1.0, &hospital("h3"));
    let report = audit_entries(&entries);
    let declared = find(&entries, |e| matches!(e, Entry::BudgetDeclared { pdc_id, .. } if pdc_id == "h3"));
    assert!(has(&report, Rule::PrivacyBudget, &[declared, at]), "{report}");
    let (mut entries, _) = with_standardisation();
    let at = find(&entries, is_release("h1", StatisticKind::FeatureSummary));
    entries[at as usize] = release(STUDY, "h1", StatisticKind::FeatureSummary, 0.0625, &hospital("h1"));
    let counts = find(&entries, is_release("h1", StatisticKind::CohortCounts));
    assert_eq!(only(&audit_entries(&entries), Rule::PrivacyBudget), [[counts, at]]);

    // A summary from a PDC without consent, and a fit that pools a PDC which released nothing.
    let (mut entries, _) = with_standardisation();
    entries.retain(|entry| !matches!(entry, Entry::ConsentGranted { pdc_id, .. } if pdc_id == "h3"));
    let report = audit_entries(&entries);
    let at = find(&entries, is_release("h3", StatisticKind::FeatureSummary));
    assert!(has(&report, Rule::ConsentBeforeContribution, &[at]), "{report}");
    let (mut entries, fitted_at) = with_standardisation();
    let at = find(&entries, is_release("h2", StatisticKind::FeatureSummary));
    entries.remove(at as usize);
    let report = audit_entries(&entries);
    assert_eq!(only(&report, Rule::Study), [[fitted_at - 1]], "{report}");
    assert!(report.failures[0].message.contains("\"h2\", which released none"), "{report}");

    // A fit after the first round opened, a second summary of one PDC, and a query answered twice.
    let (mut entries, _) = with_standardisation();
    let fit = entries.remove(fitted as usize);
    let round_2 = find(&entries, is_round_opened(2)) as usize;
    entries.insert(round_2, fit);
    let report = audit_entries(&entries);
    assert_eq!(only(&report, Rule::RoundOrder), [[find(&entries, is_round_opened(1)), round_2 as u64]]);
    let (mut entries, _) = with_standardisation();
    let again = release(STUDY, "h1", StatisticKind::FeatureSummary, 0.5, &hospital("h1"));
    entries.insert(fitted as usize, again);
    let first = find(&entries, is_release("h1", StatisticKind::FeatureSummary));
    assert_eq!(only(&audit_entries(&entries), Rule::RoundOrder), [[first, fitted]]);
    let (mut entries, _) = with_standardisation();
    let counts = find(&entries, is_release("h1", StatisticKind::CohortCounts));
    let repeat = release("feasibility-1", "h1", StatisticKind::CohortCounts, 0.125, &hospital("h1"));
    entries.insert(counts as usize + 1, repeat);
    assert_eq!(only(&audit_entries(&entries), Rule::RoundOrder), [[counts, counts + 1]]);
}
