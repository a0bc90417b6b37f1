//! The ledger end to end: a study's events recorded as entries, each round sealed by a checkpoint that witnesses
//! co-sign, audited over the AuditService and with `pdc audit`; bad input to the audit and witness services.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use pdc_coordinator::CoordinatorConfig;
use pdc_coordinator::audit_server::WitnessApi;
use pdc_coordinator::ledger::{LedgerSettings, WitnessEndpoint};
use pdc_ledger::audit::{self, AuditKeys};
use pdc_ledger::checkpoint::{Checkpoint, SignedCheckpoint};
use pdc_ledger::entry::Entry;
use pdc_ledger::merkle::{self, MerkleTree};
use pdc_ledger::witness::{TrustedLog, Witness, WitnessConfig};
use pdc_ledger::{Identity, PublicKey};
use pdc_proto::pb;
use pdc_proto::pb::audit_service_client::AuditServiceClient;
use pdc_proto::pb::witness_service_client::WitnessServiceClient;
use tonic::Code;

use crate::support::{self, TestPdc, assert_status};

pub(crate) const MANIFEST: &str = r#"
name = "ledger"
seed = 3
model = { kind = "logistic_regression" }
[data]
task = "binary_classification"
label = "malignant"
[training]
rounds = 2
local_epochs = 1
batch_size = 16
learning_rate = 0.1
[participants]
min = 2
max = 2
round_deadline_secs = 60
"#;

fn pdc() -> std::process::Command {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_pdc"));
    command.env("PDC_LOG", "warn");
    command
}

/// Runs `pdc` and returns (success, stdout, stderr).
pub(crate) fn pdc_run(args: &[&str]) -> (bool, String, String) {
    let output = pdc().args(args).output().unwrap();
    let (stdout, stderr) =
        (String::from_utf8_lossy(&output.stdout).into_owned(), String::from_utf8_lossy(&output.stderr).into_owned());
    assert!(!stderr.contains("panicked"), "pdc {args:?} panicked: {stderr}");
    (output.status.success(), stdout, stderr)
}

/// An in-process witness following the log signed by `log_key`.
async fn start_witness(dir: &Path, name: &str, log_key: PublicKey) -> (WitnessEndpoint, tokio::task::JoinHandle<()>) {
    let defaults = LedgerSettings::default();
    let identity = Identity::generate();
    let public_key = identity.public_key();
    let config = WitnessConfig {
        name: name.to_owned(),
        logs: vec![TrustedLog { origin: defaults.origin, key_name: defaults.key_name, public_key: log_key }],
    };
    let api = WitnessApi::new(Witness::new(config, identity, Default::default()), dir.join(format!("{name}.state")));
    let (listener, address) = pdc_coordinator::server::bind(([127, 0, 0, 1], 0).into()).await.unwrap();
    let server = tokio::spawn(async move {
        pdc_coordinator::server::serve_witness(api, listener, std::future::pending()).await.unwrap();
    });
    (WitnessEndpoint { name: name.to_owned(), url: format!("http://{address}"), public_key, tls: None }, server)
}

/// A coordinator config under `dir` whose ledger key is `key` and whose witnesses are `witnesses`.
fn config_with(dir: &Path, key: &Identity, witnesses: Vec<WitnessEndpoint>, quorum: usize) -> CoordinatorConfig {
    let folder = dir.join("coordinator");
    std::fs::create_dir_all(&folder).unwrap();
    let key_file = folder.join("ledger.key");
    // The coordinator loads the key the test made, so the witnesses can be told it first.
    let seeded = Identity::load_or_create(&key_file).unwrap();
    assert_eq!(seeded.public_key(), key.public_key());
    let mut config = CoordinatorConfig::new(folder);
    config.tick_interval = Duration::from_millis(20);
    config.ledger = LedgerSettings { key_file: Some(key_file), witnesses, quorum, ..LedgerSettings::default() };
    config
}

/// A coordinator key saved under `dir`, so a config can point at it.
fn coordinator_key(dir: &Path) -> Identity {
    let folder = dir.join("coordinator");
    std::fs::create_dir_all(&folder).unwrap();
    Identity::load_or_create(&folder.join("ledger.key")).unwrap()
}

/// Creates and starts the study with two hand-driven PDCs; returns the study id and the PDCs.
async fn start_study(url: &str) -> (String, Vec<TestPdc>) {
    start_study_with(url, MANIFEST).await
}

/// [`start_study`] with another manifest.
async fn start_study_with(url: &str, manifest: &str) -> (String, Vec<TestPdc>) {
    let mut researcher = support::researcher(url).await;
    let request = pb::CreateStudyRequest {
        manifest_toml: manifest.to_owned(),
        validation_csv: support::breast_cancer_csv().into_bytes(),
        ..Default::default()
    };
    let study_id = researcher.create_study(request).await.unwrap().into_inner().study_id;
    let mut pdcs = vec![TestPdc::register(url, "ward-a").await, TestPdc::register(url, "ward-b").await];
    for pdc in &mut pdcs {
        pdc.consent_all().await;
    }
    researcher.start_study(pb::StudyRef { study_id: study_id.clone() }).await.unwrap();
    (study_id, pdcs)
}

/// Each PDC answers the tasks of `rounds` rounds with a small update.
async fn train_rounds(pdcs: &mut [TestPdc], rounds: u32) {
    let mut streams = Vec::new();
    for pdc in pdcs.iter_mut() {
        streams.push(pdc.tasks().await);
    }
    for _ in 0..rounds {
        for (index, (pdc, stream)) in pdcs.iter_mut().zip(&mut streams).enumerate() {
            let task = tokio::time::timeout(Duration::from_secs(30), stream.message())
                .await
                .expect("a task within 30 s")
                .unwrap()
                .expect("the task stream stays open");
            let model = pdc.download(&task).await;
            // Different per PDC, so no two are near-copies of each other.
            let scale = 0.01 * (index + 1) as f32;
            let update: Vec<f32> = (0..model.len()).map(|i| scale * ((i % 7) as f32 - 3.0 + index as f32)).collect();
            pdc.submit(&task.study_id, task.round, &update).await.unwrap();
        }
    }
}

async fn audit_client(url: &str) -> AuditServiceClient<tonic::transport::Channel> {
    AuditServiceClient::connect(url.to_owned()).await.unwrap()
}

/// The whole ledger over the AuditService: keys, entries, checkpoints.
pub(crate) async fn fetch(url: &str) -> (AuditKeys, Vec<Vec<u8>>, Vec<String>) {
    let mut client = audit_client(url).await;
    let info = client.get_log_info(pb::LogInfoRequest {}).await.unwrap().into_inner();
    let mut stream = client.get_entries(pb::EntriesRequest { start: 0, end: info.size }).await.unwrap().into_inner();
    let mut entries = Vec::new();
    while let Some(entry) = stream.message().await.unwrap() {
        assert_eq!(entry.index, entries.len() as u64);
        entries.push(entry.data);
    }
    let mut stream = client.list_checkpoints(pb::ListCheckpointsRequest {}).await.unwrap().into_inner();
    let mut checkpoints = Vec::new();
    while let Some(checkpoint) = stream.message().await.unwrap() {
        checkpoints.push(checkpoint.note);
    }
    let keys = AuditKeys {
        origin: info.origin,
        log_key_name: info.key_name,
        log_key: PublicKey::from_bytes(&info.public_key).unwrap(),
        witnesses: info
            .witnesses
            .iter()
            .map(|w| (w.name.clone(), PublicKey::from_bytes(&w.public_key).unwrap()))
            .collect(),
        quorum: info.quorum as usize,
    };
    (keys, entries, checkpoints)
}

fn kinds(entries: &[Vec<u8>]) -> BTreeMap<&'static str, usize> {
    let mut counts = BTreeMap::new();
    for bytes in entries {
        *counts.entry(Entry::decode(bytes).unwrap().kind()).or_default() += 1;
    }
    counts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_study_is_recorded_sealed_witnessed_and_audited() {
    let dir = tempfile::tempdir().unwrap();
    let key = coordinator_key(dir.path());
    let (witness_a, _a) = start_witness(dir.path(), "witness-a", key.public_key()).await;
    let (witness_b, _b) = start_witness(dir.path(), "witness-b", key.public_key()).await;
    let config = config_with(dir.path(), &key, vec![witness_a.clone(), witness_b.clone()], 2);
    let (url, _stop, coordinator) = support::serve_coordinator(config, ([127, 0, 0, 1], 0).into()).await;

    let (study_id, mut pdcs) = start_study_with(&url, &format!("{MANIFEST}[rewards]\nbudget_per_round = 10.0\n")).await;
    train_rounds(&mut pdcs, 2).await;
    let mut researcher = support::researcher(&url).await;
    let status = support::wait_for_status(&mut researcher, &study_id, Duration::from_secs(60), |s| {
        s.state == pb::StudyState::Finished as i32
    })
    .await;
    assert_eq!(status.rounds.len(), 2);
    coordinator.seal_ledger().await.unwrap();

    // Every event of the study is on the ledger.
    let (keys, entries, checkpoints) = fetch(&url).await;
    let expected: BTreeMap<&str, usize> = [
        ("MemberRegistered", 2),
        ("StudyCreated", 1),
        ("ConsentGranted", 2),
        ("RoundOpened", 2),
        ("ContributionAccepted", 4),
        ("RoundAggregated", 2),
        ("CoalitionValues", 2),
        ("UtilityScores", 2),
        ("RewardsAllotted", 2),
        ("StudyClosed", 1),
    ]
    .into_iter()
    .collect();
    let mut counted = kinds(&entries);
    let payments = counted.remove("RewardPaid").unwrap_or(0);
    assert_eq!(counted, expected);
    // The recorded coalition values are what the utilities follow from: two players' exact Shapley values are
    // φ_a = ½[(v(a) − v(∅)) + (v(ab) − v(b))], recomputable from the ledger alone.
    let decoded: Vec<Entry> = entries.iter().map(|bytes| Entry::decode(bytes).unwrap()).collect();
    for (values, scores) in decoded.iter().filter_map(|entry| match entry {
        Entry::CoalitionValues { round, values, .. } => decoded.iter().find_map(|other| match other {
            Entry::UtilityScores { round: r, scores, .. } if r == round => Some((values, scores)),
            _ => None,
        }),
        _ => None,
    }) {
        let v = |key: &str| values.iter().find(|(k, _)| k == key).map(|(_, v)| *v).unwrap();
        assert_eq!(values.len(), 4, "{values:?}");
        let phi_a = 0.5 * ((v("ward-a") - v("")) + (v("ward-a+ward-b") - v("ward-b")));
        assert!((scores[0].1 - phi_a).abs() < 1e-12, "{scores:?} vs {phi_a}");
    }
    assert!(payments <= 4);

    // Each round pays exactly its allotment, or carries it over and pays nothing.
    let mut allotted = BTreeMap::new();
    let mut paid: BTreeMap<u32, f64> = BTreeMap::new();
    for bytes in &entries {
        match Entry::decode(bytes).unwrap() {
            Entry::RewardsAllotted { round, budget, carried_over, .. } => {
                allotted.insert(round, (budget, carried_over));
            }
            Entry::RewardPaid { round, amount, .. } => *paid.entry(round).or_default() += amount,
            _ => {}
        }
    }
    assert_eq!(allotted[&1].0, 10.0);
    for (round, (budget, carried_over)) in &allotted {
        let paid = paid.get(round).copied().unwrap_or(0.0);
        if *carried_over {
            assert_eq!(paid, 0.0);
        } else {
            assert!((paid - budget).abs() <= 1e-9 * budget, "round {round}: paid {paid} of {budget}");
        }
    }

    // The aggregated model hashes on the ledger are the ones the researcher sees.
    let aggregated: Vec<Vec<u8>> = entries
        .iter()
        .filter_map(|bytes| match Entry::decode(bytes).unwrap() {
            Entry::RoundAggregated { model_hash, .. } => Some(model_hash.to_vec()),
            _ => None,
        })
        .collect();
    let seen: Vec<Vec<u8>> = status.rounds.iter().map(|r| hex::decode(&r.model_hash).unwrap()).collect();
    assert_eq!(aggregated, seen);

    // At least one checkpoint per round, the last covering everything, each co-signed by both witnesses.
    assert!(checkpoints.len() >= 3, "{} checkpoints", checkpoints.len());
    let last = SignedCheckpoint::parse(checkpoints.last().unwrap()).unwrap();
    assert_eq!(last.checkpoint.size, entries.len() as u64);
    for note in &checkpoints {
        let signed = SignedCheckpoint::parse(note).unwrap();
        signed.verify(&witness_a.name, &witness_a.public_key).unwrap();
        signed.verify(&witness_b.name, &witness_b.public_key).unwrap();
    }

    let report = audit::verify_parts(&entries, &checkpoints, &keys);
    assert!(report.passed(), "{report}");
    assert_eq!(report.checkpoints, checkpoints.len());

    // A contribution is provably in the log, and the first checkpoint is a prefix of the last.
    let mut client = audit_client(&url).await;
    let index = entries
        .iter()
        .position(|bytes| matches!(Entry::decode(bytes).unwrap(), Entry::ContributionAccepted { .. }))
        .unwrap() as u64;
    let size = last.checkpoint.size;
    let proof = client.get_inclusion_proof(pb::InclusionProofRequest { index, tree_size: size }).await.unwrap();
    let proof: Vec<[u8; 32]> = proof.into_inner().hashes.iter().map(|h| h.as_slice().try_into().unwrap()).collect();
    let leaf = merkle::leaf_hash(&entries[index as usize]);
    merkle::verify_inclusion(index, size, &leaf, &proof, &last.checkpoint.root).unwrap();
    let first = SignedCheckpoint::parse(&checkpoints[0]).unwrap();
    let proof = client
        .get_consistency_proof(pb::ConsistencyProofRequest { old_size: first.checkpoint.size, new_size: size })
        .await
        .unwrap();
    let proof: Vec<[u8; 32]> = proof.into_inner().hashes.iter().map(|h| h.as_slice().try_into().unwrap()).collect();
    merkle::verify_consistency(first.checkpoint.size, size, &first.checkpoint.root, &last.checkpoint.root, &proof)
        .unwrap();

    // The researcher's view of the same payments.
    let (ok, stdout, stderr) = pdc_run(&["study", "rewards", "--coordinator", &url, &study_id]);
    assert!(ok, "{stderr}");
    if payments > 0 {
        assert!(stdout.contains("rewards by round"), "{stdout}");
        for bytes in &entries {
            if let Entry::RewardPaid { round, pdc_id, amount, .. } = Entry::decode(bytes).unwrap() {
                let line = format!("{round:>5}  {pdc_id:<16}");
                let row = stdout.lines().find(|l| l.contains(&line)).unwrap_or_else(|| panic!("no {line}: {stdout}"));
                assert!(row.ends_with(&format!("{amount:>12.4}")), "{row}");
            }
        }
    } else {
        assert!(stdout.contains("no rewards recorded"), "{stdout}");
    }

    // The same through `pdc audit`, with the log key, the witnesses and the quorum pinned.
    let log_key = hex::encode(key.public_key().to_bytes());
    let state = dir.path().join("auditor-state.json");
    let witnesses: Vec<String> = [&witness_a, &witness_b]
        .iter()
        .map(|w| format!("{}={}", w.name, hex::encode(w.public_key.to_bytes())))
        .collect();
    let trust =
        ["--witness", &witnesses[0], "--witness", &witnesses[1], "--quorum", "2", "--state", state.to_str().unwrap()];
    let with_trust = |args: &[&str]| -> Vec<String> { args.iter().chain(&trust).map(|a| a.to_string()).collect() };
    let run = |args: Vec<String>| pdc_run(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let (ok, stdout, stderr) = run(with_trust(&["audit", "verify", "--coordinator", &url, "--log-key", &log_key]));
    assert!(ok && stdout.starts_with("PASS"), "{stdout}{stderr}");
    let entry = index.to_string();
    let (ok, stdout, stderr) =
        run(with_trust(&["audit", "prove", "--coordinator", &url, "--log-key", &log_key, "--entry", &entry]));
    assert!(ok && stdout.contains(&format!("entry {index} (ContributionAccepted) is included")), "{stdout}{stderr}");
    let (from, to) = (first.checkpoint.size.to_string(), size.to_string());
    let consistency =
        ["audit", "consistency", "--coordinator", &url, "--log-key", &log_key, "--from", &from, "--to", &to];
    let (ok, stdout, stderr) = run(with_trust(&consistency));
    assert!(ok && stdout.contains("consistently extends"), "{stdout}{stderr}");
    let (ok, stdout, stderr) = pdc_run(&["audit", "show", "--coordinator", &url, "--json"]);
    assert!(ok, "{stderr}");
    let shown: Vec<serde_json::Value> = serde_json::from_str(&stdout).unwrap();
    assert_eq!(shown.len(), entries.len());
    assert_eq!(shown[index as usize]["kind"], "ContributionAccepted");
    let other_key = hex::encode(Identity::generate().public_key().to_bytes());
    let (ok, _, stderr) = run(with_trust(&["audit", "verify", "--coordinator", &url, "--log-key", &other_key]));
    assert!(!ok && stderr.contains("not the pinned"), "{stderr}");

    // An offline copy verifies with no coordinator; a damaged one is refused, never with a panic.
    let export = dir.path().join("ledger.export");
    let export_arg = export.to_str().unwrap();
    let (ok, stdout, stderr) = pdc_run(&["audit", "export", "--coordinator", &url, "--out", export_arg]);
    assert!(ok, "{stdout}{stderr}");
    let (ok, stdout, stderr) = run(with_trust(&["audit", "verify", "--file", export_arg, "--log-key", &log_key]));
    assert!(ok && stdout.starts_with("PASS"), "{stdout}{stderr}");
    let bytes = std::fs::read(&export).unwrap();
    let damaged = dir.path().join("damaged.export");
    let damaged_arg = damaged.to_str().unwrap();
    std::fs::write(&damaged, &bytes[..bytes.len() / 2]).unwrap();
    let (ok, _, stderr) = run(with_trust(&["audit", "verify", "--file", damaged_arg, "--log-key", &log_key]));
    assert!(!ok && stderr.contains("is not a valid ledger export"), "{stderr}");
    let mut rng = 0x9e37_79b9_7f4a_7c15_u64;
    for _ in 0..12 {
        rng = rng.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        let position = (rng >> 33) as usize % bytes.len();
        let mut flipped = bytes.clone();
        flipped[position] ^= 1 << (rng % 8);
        std::fs::write(&damaged, &flipped).unwrap();
        let (ok, stdout, stderr) = run(with_trust(&["audit", "verify", "--file", damaged_arg, "--log-key", &log_key]));
        assert!(!ok, "a flipped bit at byte {position} went unnoticed: {stdout}{stderr}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_round_is_final_only_once_the_witness_quorum_has_co_signed() {
    let dir = tempfile::tempdir().unwrap();
    let key = coordinator_key(dir.path());
    let (honest, _honest) = start_witness(dir.path(), "honest", key.public_key()).await;
    // This witness follows another key, so it refuses every checkpoint of this coordinator.
    let (stranger, _stranger) = start_witness(dir.path(), "stranger", Identity::generate().public_key()).await;
    let config = config_with(dir.path(), &key, vec![honest.clone(), stranger.clone()], 2);
    let (url, _stop, _coordinator) = support::serve_coordinator(config, ([127, 0, 0, 1], 0).into()).await;

    let (study_id, mut pdcs) = start_study(&url).await;
    train_rounds(&mut pdcs, 1).await;
    let mut researcher = support::researcher(&url).await;
    support::wait_for_status(&mut researcher, &study_id, Duration::from_secs(30), |s| s.rounds.len() == 1).await;
    // Round 1 is aggregated but cannot be sealed with one co-signature of two: round 2 never opens.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (_, entries, checkpoints) = fetch(&url).await;
    assert!(checkpoints.is_empty(), "a checkpoint was stored without the quorum");
    let opened =
        entries.iter().filter(|bytes| matches!(Entry::decode(bytes).unwrap(), Entry::RoundOpened { .. })).count();
    assert_eq!(opened, 1);
    let status = researcher.get_status(pb::StudyRef { study_id: study_id.clone() }).await.unwrap().into_inner();
    assert_eq!(status.current_round, 1);

    // With a quorum of one, the honest witness suffices and the study finishes.
    let dir = tempfile::tempdir().unwrap();
    let key = coordinator_key(dir.path());
    let (honest, _honest) = start_witness(dir.path(), "honest", key.public_key()).await;
    let (stranger, _stranger) = start_witness(dir.path(), "stranger", Identity::generate().public_key()).await;
    let config = config_with(dir.path(), &key, vec![honest.clone(), stranger.clone()], 1);
    let (url, _stop, _coordinator) = support::serve_coordinator(config, ([127, 0, 0, 1], 0).into()).await;
    let (study_id, mut pdcs) = start_study(&url).await;
    train_rounds(&mut pdcs, 2).await;
    let mut researcher = support::researcher(&url).await;
    support::wait_for_status(&mut researcher, &study_id, Duration::from_secs(60), |s| {
        s.state == pb::StudyState::Finished as i32
    })
    .await;
    let (keys, entries, checkpoints) = fetch(&url).await;
    assert!(checkpoints.len() >= 2);
    for note in &checkpoints {
        let signed = SignedCheckpoint::parse(note).unwrap();
        signed.verify(&honest.name, &honest.public_key).unwrap();
        assert!(signed.verify(&stranger.name, &stranger.public_key).is_err());
    }
    let report = audit::verify_parts(&entries, &checkpoints, &keys);
    assert!(report.passed(), "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_audit_service_refuses_bad_requests_precisely() {
    let dir = tempfile::tempdir().unwrap();
    let (url, _stop) = support::start_coordinator(dir.path()).await;
    TestPdc::register(&url, "ward-a").await;
    TestPdc::register(&url, "ward-b").await;
    let mut client = audit_client(&url).await;
    let size = client.get_log_info(pb::LogInfoRequest {}).await.unwrap().into_inner().size;
    assert_eq!(size, 2);

    let entries = |start, end| pb::EntriesRequest { start, end };
    assert_status(client.get_entries(entries(1, 0)).await, Code::InvalidArgument, "is not within the log of 2");
    assert_status(client.get_entries(entries(0, 3)).await, Code::InvalidArgument, "is not within the log of 2");
    let proof = |index, tree_size| pb::InclusionProofRequest { index, tree_size };
    assert_status(client.get_inclusion_proof(proof(2, 2)).await, Code::InvalidArgument, "no entry 2");
    assert_status(client.get_inclusion_proof(proof(0, 3)).await, Code::InvalidArgument, "the log has 2");
    let consistency = |old_size, new_size| pb::ConsistencyProofRequest { old_size, new_size };
    assert_status(client.get_consistency_proof(consistency(2, 1)).await, Code::InvalidArgument, "old size 2");
    assert_status(client.get_consistency_proof(consistency(1, 5)).await, Code::InvalidArgument, "log size 2");
    assert_status(client.get_checkpoint(pb::CheckpointRequest { size: 0 }).await, Code::NotFound, "no checkpoint");
    assert_status(client.get_checkpoint(pb::CheckpointRequest { size: 7 }).await, Code::NotFound, "size 7");
    let query = pb::StudyQuery { study_id: "no-such-study".into() };
    assert_status(client.get_rewards(query.clone()).await, Code::NotFound, "no-such-study");
    assert_status(client.get_privacy_spend(query.clone()).await, Code::NotFound, "no-such-study");
    assert_status(client.get_provenance(query).await, Code::NotFound, "no-such-study");

    // Nothing was written, and good requests still work.
    assert_eq!(client.get_log_info(pb::LogInfoRequest {}).await.unwrap().into_inner().size, 2);
    let proof = client.get_inclusion_proof(proof(1, 2)).await.unwrap().into_inner();
    assert_eq!(proof.hashes.len(), 1);
}

/// A log of `n` entries and its tree.
fn tree_of(n: u64) -> MerkleTree {
    let mut tree = MerkleTree::new();
    for i in 0..n {
        tree.append(merkle::leaf_hash(format!("entry {i}").as_bytes()));
    }
    tree
}

fn note(origin: &str, tree: &MerkleTree, signer: &Identity) -> String {
    let checkpoint = Checkpoint {
        origin: origin.to_owned(),
        size: tree.len(),
        root: tree.root(),
        previous: [0; 32],
        timestamp_ms: 1,
    };
    checkpoint.sign(&LedgerSettings::default().key_name, signer).unwrap().to_note()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_witness_service_refuses_bad_checkpoints_with_distinct_codes() {
    let dir = tempfile::tempdir().unwrap();
    let log = Identity::generate();
    let (witness, _server) = start_witness(dir.path(), "witness", log.public_key()).await;
    let mut client = WitnessServiceClient::connect(witness.url.clone()).await.unwrap();
    let origin = LedgerSettings::default().origin;
    let request = |old_size, note: String, proof: Vec<Vec<u8>>| pb::AddCheckpointRequest { old_size, note, proof };
    let hashes = |proof: Vec<[u8; 32]>| proof.iter().map(|h| h.to_vec()).collect::<Vec<_>>();

    let (three, five) = (tree_of(3), tree_of(5));
    let first = client.add_checkpoint(request(0, note(&origin, &three, &log), vec![])).await.unwrap();
    let with_cosignature = format!("{}{}\n", note(&origin, &three, &log), first.into_inner().cosignature);
    SignedCheckpoint::parse(&with_cosignature).unwrap().verify(&witness.name, &witness.public_key).unwrap();

    assert_status(
        client.add_checkpoint(request(3, "garbage".into(), vec![])).await,
        Code::InvalidArgument,
        "malformed",
    );
    let other_origin = note("elsewhere.example/log/sha3-256", &five, &log);
    assert_status(client.add_checkpoint(request(3, other_origin, vec![])).await, Code::NotFound, "unknown_log");
    let forged = note(&origin, &five, &Identity::generate());
    assert_status(client.add_checkpoint(request(3, forged, vec![])).await, Code::Unauthenticated, "bad_signature");
    let proof = hashes(five.consistency_proof(3).unwrap());
    let stale = assert_status(
        client.add_checkpoint(request(0, note(&origin, &five, &log), proof.clone())).await,
        Code::FailedPrecondition,
        "stale_old_size",
    );
    assert_eq!(stale.metadata().get("pdc-witness-size").unwrap().to_str().unwrap(), "3");
    let wrong_proof = vec![vec![7u8; 32]; proof.len()];
    assert_status(
        client.add_checkpoint(request(3, note(&origin, &five, &log), wrong_proof)).await,
        Code::DataLoss,
        "inconsistent_proof",
    );
    let mut split = tree_of(2);
    split.append(merkle::leaf_hash(b"another third entry"));
    assert_status(
        client.add_checkpoint(request(3, note(&origin, &split, &log), vec![])).await,
        Code::AlreadyExists,
        "split_view",
    );
    assert_status(
        client.add_checkpoint(request(3, note(&origin, &tree_of(2), &log), vec![])).await,
        Code::OutOfRange,
        "size_decreased",
    );
    assert_status(
        client.add_checkpoint(request(3, note(&origin, &five, &log), vec![vec![1u8; 31]])).await,
        Code::InvalidArgument,
        "proof hash 0 has 31 bytes",
    );
    assert_status(
        client.add_checkpoint(request(3, "x".repeat(20_000), vec![])).await,
        Code::ResourceExhausted,
        "exceeds",
    );

    // None of that moved the witness: the consistent checkpoint is still co-signed, and the state is on disk.
    client.add_checkpoint(request(3, note(&origin, &five, &log), proof)).await.unwrap();
    let state = pdc_ledger::witness::load_state(&dir.path().join("witness.state")).unwrap();
    assert_eq!(state.logs[&origin].size, 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_manifest_chooses_a_robust_rule_and_flagged_updates_are_left_out_on_the_record() {
    let dir = tempfile::tempdir().unwrap();
    let (url, _stop) = support::start_coordinator(dir.path()).await;
    let mut researcher = support::researcher(&url).await;
    let create = |manifest: String| pb::CreateStudyRequest {
        manifest_toml: manifest,
        validation_csv: support::breast_cancer_csv().into_bytes(),
        ..Default::default()
    };
    let three = MANIFEST.replace("min = 2\nmax = 2", "min = 3\nmax = 3").replace("rounds = 2", "rounds = 1");

    // Invalid combinations are refused at creation.
    let krum = three.clone() + "[aggregation]\nrule = \"krum\"\nf = 1\n";
    assert_status(
        researcher.create_study(create(krum)).await,
        Code::InvalidArgument,
        "needs at least 2f + 3 = 5 participants",
    );
    let bulyan = three.clone() + "[aggregation]\nrule = \"bulyan\"\nf = 1\n";
    assert_status(researcher.create_study(create(bulyan)).await, Code::InvalidArgument, "bulyan");
    let unknown = three.clone() + "[aggregation]\nrule = \"median\"\nbeta = 0.1\n";
    assert_status(researcher.create_study(create(unknown)).await, Code::InvalidArgument, "beta");

    // The coordinate median with flagged updates left out: a free rider's echo is excluded and recorded.
    let median = three + "[aggregation]\nrule = \"median\"\n[aggregation.anomaly]\nexclude_flagged = true\n";
    let study_id = researcher.create_study(create(median)).await.unwrap().into_inner().study_id;
    let mut pdcs = Vec::new();
    for id in ["ward-a", "ward-b", "ward-c"] {
        let mut pdc = TestPdc::register(&url, id).await;
        pdc.consent_all().await;
        pdcs.push(pdc);
    }
    researcher.start_study(pb::StudyRef { study_id: study_id.clone() }).await.unwrap();
    let mut streams = Vec::new();
    for pdc in &mut pdcs {
        streams.push(pdc.tasks().await);
    }
    for (index, (pdc, stream)) in pdcs.iter_mut().zip(&mut streams).enumerate() {
        let task = support::next_task(stream).await;
        let model = pdc.download(&task).await;
        let update: Vec<f32> = if index == 2 {
            vec![0.0; model.len()]
        } else {
            (0..model.len()).map(|i| 0.01 * (1.0 + (i % 5) as f32 + index as f32)).collect()
        };
        pdc.submit(&task.study_id, task.round, &update).await.unwrap();
    }
    let status = support::wait_for_status(&mut researcher, &study_id, Duration::from_secs(30), |s| {
        s.state == pb::StudyState::Finished as i32
    })
    .await;
    assert_eq!(status.rounds[0].contributors, vec!["ward-a".to_owned(), "ward-b".to_owned()]);
    let (keys, entries, checkpoints) = fetch(&url).await;
    let rejected: Vec<String> = entries
        .iter()
        .filter_map(|bytes| match Entry::decode(bytes).unwrap() {
            Entry::UpdateRejected { pdc_id, reason, .. } => Some(format!("{pdc_id}: {reason}")),
            _ => None,
        })
        .collect();
    assert_eq!(rejected.len(), 1, "{rejected:?}");
    assert!(rejected[0].starts_with("ward-c: flagged and left out of aggregation"), "{rejected:?}");
    let report = audit::verify_parts(&entries, &checkpoints, &keys);
    assert!(report.passed(), "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pdc_flagged_in_consecutive_rounds_is_suspended_from_selection_on_the_record() {
    let dir = tempfile::tempdir().unwrap();
    let (url, _stop) = support::start_coordinator(dir.path()).await;
    let mut researcher = support::researcher(&url).await;
    let manifest = MANIFEST.replace("min = 2\nmax = 2", "min = 3\nmax = 4").replace("rounds = 2", "rounds = 4")
        + "[aggregation]\nrule = \"median\"\n[aggregation.anomaly]\nexclude_flagged = true\nsuspend_after_rounds = 2\n";
    let request = pb::CreateStudyRequest {
        manifest_toml: manifest,
        validation_csv: support::breast_cancer_csv().into_bytes(),
        ..Default::default()
    };
    let study_id = researcher.create_study(request).await.unwrap().into_inner().study_id;
    let (mut pdcs, mut streams) = support::consenting_pdcs(&url, &["ward-a", "ward-b", "ward-c", "ward-d"]).await;
    researcher.start_study(pb::StudyRef { study_id: study_id.clone() }).await.unwrap();
    for round in 1..=4u32 {
        // ward-d echoes the global model (a zero delta) whenever it is asked; from round 3 it is not asked.
        let selected = if round <= 2 { 4 } else { 3 };
        for (index, (pdc, stream)) in pdcs.iter_mut().zip(&mut streams).enumerate().take(selected) {
            let task = support::next_task(stream).await;
            assert_eq!(task.round, round);
            let model = pdc.download(&task).await;
            let update: Vec<f32> = if index == 3 {
                vec![0.0; model.len()]
            } else {
                (0..model.len()).map(|i| 0.01 * (1.0 + (i % 5) as f32 + index as f32)).collect()
            };
            pdc.submit(&task.study_id, task.round, &update).await.unwrap();
        }
    }
    let status = support::wait_for_status(&mut researcher, &study_id, Duration::from_secs(30), |s| {
        s.state == pb::StudyState::Finished as i32
    })
    .await;
    let participants: Vec<usize> = status.rounds.iter().map(|round| round.participants.len()).collect();
    assert_eq!(participants, [4, 4, 3, 3]);
    assert!(status.rounds[2..].iter().all(|round| !round.participants.contains(&"ward-d".to_owned())));
    assert!(
        tokio::time::timeout(Duration::from_millis(200), streams[3].message()).await.is_err(),
        "no task for ward-d"
    );
    let (keys, entries, checkpoints) = fetch(&url).await;
    let suspensions: Vec<(u32, String)> = entries
        .iter()
        .filter_map(|bytes| match Entry::decode(bytes).unwrap() {
            Entry::UpdateRejected { round, pdc_id, reason, .. } if reason.starts_with("suspended from selection") => {
                Some((round, pdc_id))
            }
            _ => None,
        })
        .collect();
    assert_eq!(suspensions, [(2, "ward-d".to_owned())]);
    let report = audit::verify_parts(&entries, &checkpoints, &keys);
    assert!(report.passed(), "{report}");
}
