//! A realistic ledger for the tests: a consortium with real keys, a study run over several rounds, and
//! checkpoints signed by the log and co-signed by a witness that checks consistency.

use pdc_ledger::audit::AuditKeys;
use pdc_ledger::checkpoint::{Checkpoint, SignedCheckpoint};
use pdc_ledger::entry::{Entry, Role};
use pdc_ledger::merkle::{self, MerkleTree};
use pdc_ledger::signing::{self, ConsentAction, Contribution};
use pdc_ledger::store::Store;
use pdc_ledger::witness::{TrustedLog, Witness, WitnessConfig, WitnessState};
use pdc_ledger::{Identity, sha3_256};

pub const ORIGIN: &str = "pdc.test/ledger/sha3-256";
pub const LOG_KEY: &str = "pdc.test/log";
pub const WITNESS_KEY: &str = "witness.test/w1";
pub const STUDY: &str = "sepsis-2026";
pub const HOSPITALS: [&str; 3] = ["h1", "h2", "h3"];
pub const ROUNDS: u32 = 4;
pub const ROUND_BUDGET: f64 = 100.0;
pub const EPSILON_BUDGET: f64 = 8.0;
pub const DELTA_BUDGET: f64 = 1e-5;
/// Each hospital's ε spent per round; the cumulative figure after round `r` is `r` times this.
pub const EPSILON_PER_ROUND: f64 = 0.75;

pub fn log_identity() -> Identity {
    Identity::from_seed([1; 32])
}

pub fn witness_identity() -> Identity {
    Identity::from_seed([2; 32])
}

pub fn hospital(pdc_id: &str) -> Identity {
    let position = HOSPITALS.iter().position(|h| *h == pdc_id).expect("a known hospital") as u8;
    Identity::from_seed([10 + position; 32])
}

pub fn keys() -> AuditKeys {
    AuditKeys {
        origin: ORIGIN.into(),
        log_key_name: LOG_KEY.into(),
        log_key: log_identity().public_key(),
        witnesses: vec![(WITNESS_KEY.into(), witness_identity().public_key())],
        quorum: 1,
    }
}

pub fn manifest_hash() -> [u8; 32] {
    sha3_256(b"manifest of sepsis-2026")
}

pub fn consent(action: ConsentAction, pdc_id: &str) -> Entry {
    let message = signing::consent_message(action, STUDY, &manifest_hash());
    let signature = hospital(pdc_id).sign(&message);
    let (study_id, pdc_id, manifest_hash) = (STUDY.to_owned(), pdc_id.to_owned(), manifest_hash());
    match action {
        ConsentAction::Grant => Entry::ConsentGranted { study_id, pdc_id, manifest_hash, signature, conditions: None },
        ConsentAction::Revoke => Entry::ConsentRevoked { study_id, pdc_id, manifest_hash, signature },
    }
}

pub fn contribution(round: u32, pdc_id: &str, signer: &Identity) -> Entry {
    let contribution = Contribution {
        study_id: STUDY.into(),
        round,
        pdc_id: pdc_id.into(),
        n_examples: 100 + u64::from(round),
        n_parameters: 42,
        update_hash: sha3_256(format!("update {round} {pdc_id}").as_bytes()),
        train_loss: 0.5 / f64::from(round),
        privacy: None,
    };
    let signature = signer.sign(&contribution.signing_bytes());
    Entry::ContributionAccepted { contribution, signature }
}

/// The payments of a round: 50 %, 30 % and 20 % of the budget.
pub fn reward_shares() -> [f64; 3] {
    [0.5 * ROUND_BUDGET, 0.3 * ROUND_BUDGET, 0.2 * ROUND_BUDGET]
}

/// What is appended at once: a batch of entries, after which the log is checkpointed when `seal` is set.
pub struct Step {
    pub entries: Vec<Entry>,
    pub seal: bool,
}

/// The whole study, step by step: registration, budgets, consent, `ROUNDS` rounds each sealed by a checkpoint,
/// and the close.
pub fn study_steps() -> Vec<Step> {
    let mut steps = Vec::new();
    let mut setup = vec![Entry::MemberRegistered {
        pdc_id: "coordinator".into(),
        role: Role::Coordinator,
        public_key: log_identity().public_key().to_bytes(),
    }];
    for h in HOSPITALS {
        setup.push(Entry::MemberRegistered {
            pdc_id: h.into(),
            role: Role::Hospital,
            public_key: hospital(h).public_key().to_bytes(),
        });
        setup.push(Entry::BudgetDeclared {
            pdc_id: h.into(),
            dataset: format!("{h}/icu.csv"),
            epsilon: EPSILON_BUDGET,
            delta: DELTA_BUDGET,
        });
    }
    setup.push(Entry::StudyCreated { study_id: STUDY.into(), manifest_hash: manifest_hash() });
    steps.push(Step { entries: setup, seal: true });
    steps.push(Step { entries: HOSPITALS.iter().map(|h| consent(ConsentAction::Grant, h)).collect(), seal: false });

    for round in 1..=ROUNDS {
        let mut entries = vec![Entry::RoundOpened {
            study_id: STUDY.into(),
            round,
            participants: HOSPITALS.iter().map(|h| h.to_string()).collect(),
            model_hash: sha3_256(format!("model {}", round - 1).as_bytes()),
        }];
        for h in HOSPITALS {
            entries.push(contribution(round, h, &hospital(h)));
            entries.push(Entry::PrivacySpent {
                study_id: STUDY.into(),
                round,
                pdc_id: h.into(),
                epsilon: EPSILON_PER_ROUND * f64::from(round),
                delta: 1e-6,
            });
        }
        if round == 2 {
            entries.push(Entry::UpdateRejected {
                study_id: STUDY.into(),
                round,
                pdc_id: "h2".into(),
                reason: "a duplicate upload".into(),
            });
        }
        entries.push(Entry::RoundAggregated {
            study_id: STUDY.into(),
            round,
            model_hash: sha3_256(format!("model {round}").as_bytes()),
            contributors: HOSPITALS.iter().map(|h| h.to_string()).collect(),
            metrics: vec![("loss".into(), 0.4 / f64::from(round)), ("auroc".into(), 0.7)],
        });
        entries.push(Entry::UtilityScores {
            study_id: STUDY.into(),
            round,
            scores: HOSPITALS.iter().zip(reward_shares()).map(|(h, s)| (h.to_string(), s / 1000.0)).collect(),
            method: "shapley-exact".into(),
            seed: u64::from(round),
        });
        entries.push(Entry::RewardsAllotted {
            study_id: STUDY.into(),
            round,
            budget: ROUND_BUDGET,
            carried_over: false,
        });
        for (h, amount) in HOSPITALS.iter().zip(reward_shares()) {
            entries.push(Entry::RewardPaid { study_id: STUDY.into(), round, pdc_id: h.to_string(), amount });
        }
        steps.push(Step { entries, seal: true });
    }
    steps.push(Step {
        entries: vec![Entry::StudyClosed { study_id: STUDY.into(), state: "completed".into() }],
        seal: true,
    });
    steps
}

/// Every entry of [`study_steps`], in order.
pub fn study_entries() -> Vec<Entry> {
    study_steps().into_iter().flat_map(|step| step.entries).collect()
}

/// The index of the first entry satisfying `matches`.
pub fn find(entries: &[Entry], matches: impl Fn(&Entry) -> bool) -> u64 {
    entries.iter().position(matches).expect("an entry that matches") as u64
}

/// Signs checkpoints the way the coordinator does: the log signs, the witness checks consistency with what it
/// last co-signed and co-signs.
pub struct Sealer {
    witness: Witness,
    last: Option<Checkpoint>,
    timestamp_ms: u64,
}

impl Sealer {
    pub fn new() -> Self {
        let config = WitnessConfig {
            name: WITNESS_KEY.into(),
            logs: vec![TrustedLog {
                origin: ORIGIN.into(),
                key_name: LOG_KEY.into(),
                public_key: log_identity().public_key(),
            }],
        };
        Sealer {
            witness: Witness::new(config, witness_identity(), WitnessState::default()),
            last: None,
            timestamp_ms: 1_767_000_000_000,
        }
    }

    /// A co-signed checkpoint of the first `size` leaves of `tree`.
    pub fn seal(&mut self, tree: &MerkleTree, size: u64) -> SignedCheckpoint {
        self.timestamp_ms += 60_000;
        let checkpoint = Checkpoint {
            origin: ORIGIN.into(),
            size,
            root: tree.root_at(size).expect("size within the tree"),
            previous: self.last.as_ref().map_or([0; 32], Checkpoint::note_hash),
            timestamp_ms: self.timestamp_ms,
        };
        let mut signed = checkpoint.sign(LOG_KEY, &log_identity()).expect("sign");
        let old_size = self.last.as_ref().map_or(0, |last| last.size);
        let proof = merkle::consistency_proof_from(tree, old_size, size).expect("proof");
        let cosignature = self.witness.add_checkpoint(&signed.to_note(), old_size, &proof).expect("co-signed");
        signed.signatures.push(cosignature);
        self.last = Some(checkpoint);
        signed
    }
}

/// Encodes `entries` and seals a checkpoint after the entries at each of `seal_after` (sizes).
pub fn sealed_parts(entries: &[Entry], seal_after: &[u64]) -> (Vec<Vec<u8>>, Vec<String>) {
    let bytes: Vec<Vec<u8>> = entries.iter().map(Entry::encode).collect();
    let tree: MerkleTree = bytes.iter().map(|b| merkle::leaf_hash(b)).collect();
    let mut sealer = Sealer::new();
    let notes = seal_after.iter().map(|&size| sealer.seal(&tree, size).to_note()).collect();
    (bytes, notes)
}

/// The study's entries sealed after every step that seals, as the coordinator would.
pub fn study_parts() -> (Vec<Vec<u8>>, Vec<String>) {
    let mut sizes = Vec::new();
    let mut size = 0;
    for step in study_steps() {
        size += step.entries.len() as u64;
        if step.seal {
            sizes.push(size);
        }
    }
    sealed_parts(&study_entries(), &sizes)
}

/// Writes the study into `store`, one durable batch per step, checkpointing after each sealed step.
pub fn write_study(store: &mut dyn Store) {
    let mut sealer = Sealer::new();
    let mut tree = MerkleTree::new();
    for step in study_steps() {
        let bytes: Vec<Vec<u8>> = step.entries.iter().map(Entry::encode).collect();
        tree.extend(bytes.iter().map(|b| merkle::leaf_hash(b)));
        store.append(&bytes).expect("append");
        if step.seal {
            let signed = sealer.seal(&tree, tree.len());
            store.put_checkpoint(tree.len(), signed.to_note().as_bytes()).expect("checkpoint");
        }
    }
}
