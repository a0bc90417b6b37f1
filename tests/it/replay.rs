//! `pdc audit replay`: a finished study replays bit for bit from the coordinator's archives, and a tampered
//! archived update, validation set or manifest is found.

use std::path::Path;
use std::time::Duration;

use pdc_coordinator::CoordinatorConfig;
use pdc_coordinator::archive::UpdateArchive;
use pdc_coordinator::replay::replay_study;
use pdc_ledger::entry::Entry;
use pdc_proto::pb;

use crate::ledger::{fetch, pdc_run};
use crate::support;

/// Ten rounds, trimmed mean with FedAdam on the server, and exact-Shapley rewards every round.
pub(crate) const MANIFEST: &str = r#"
name = "replayed"
seed = 11
model = { kind = "logistic_regression" }
[data]
task = "binary_classification"
label = "malignant"
[training]
rounds = 10
local_epochs = 1
batch_size = 16
learning_rate = 0.1
[participants]
min = 3
max = 3
round_deadline_secs = 60
[aggregation]
rule = "trimmed_mean"
beta = 0.34
server_optimizer = "fedadam"
[rewards]
budget_per_round = 100.0
"#;

/// Runs the study with three hand-driven PDCs sending distinct, round-dependent updates.
async fn run_study(url: &str) -> String {
    run_study_with(url, MANIFEST, 10).await
}

/// Runs `manifest`, which must have `rounds` rounds, with three hand-driven PDCs.
async fn run_study_with(url: &str, manifest: &str, rounds: u32) -> String {
    let mut researcher = support::researcher(url).await;
    let request = pb::CreateStudyRequest {
        manifest_toml: manifest.to_owned(),
        validation_csv: support::breast_cancer_csv().into_bytes(),
        ..Default::default()
    };
    let study_id = researcher.create_study(request).await.unwrap().into_inner().study_id;
    let (mut pdcs, mut streams) = support::consenting_pdcs(url, &["ward-a", "ward-b", "ward-c"]).await;
    researcher.start_study(pb::StudyRef { study_id: study_id.clone() }).await.unwrap();
    for _ in 0..rounds {
        for (index, (pdc, stream)) in pdcs.iter_mut().zip(&mut streams).enumerate() {
            let task = support::next_task(stream).await;
            let model = pdc.download(&task).await;
            let update: Vec<f32> = model
                .iter()
                .enumerate()
                .map(|(i, w)| 0.05 * ((i + index) % 5) as f32 - 0.1 * w + 0.001 * task.round as f32)
                .collect();
            pdc.submit(&task.study_id, task.round, &update).await.unwrap();
        }
    }
    support::wait_for_status(&mut researcher, &study_id, Duration::from_secs(60), |s| {
        s.state == pb::StudyState::Finished as i32
    })
    .await;
    study_id
}

fn replay(url_entries: &[Vec<u8>], study_id: &str, data_dir: &Path) -> pdc_coordinator::replay::ReplayReport {
    let entries: Vec<Entry> = url_entries.iter().map(|bytes| Entry::decode(bytes).unwrap()).collect();
    let archive = UpdateArchive::open_read_only(&data_dir.join("updates")).unwrap();
    replay_study(&entries, study_id, &data_dir.join("studies").join(study_id), &archive).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_study_replays_bit_for_bit_and_tampered_archives_are_found() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("coordinator");
    let mut config = CoordinatorConfig::new(data_dir.clone());
    config.tick_interval = Duration::from_millis(20);
    let (url, _stop, coordinator) = support::serve_coordinator(config, ([127, 0, 0, 1], 0).into()).await;
    let study_id = run_study(&url).await;
    coordinator.seal_ledger().await.unwrap();

    // Every round's model hash, metrics, utilities and payments come out the same.
    let (_, entries, _) = fetch(&url).await;
    let report = replay(&entries, &study_id, &data_dir);
    assert!(report.passed(), "{report}");
    assert_eq!(report.rounds.len(), 10);
    // FedAdam with the anomaly check on: the warning `pdc study create` printed comes back to the auditor.
    assert_eq!(report.warnings.len(), 1, "{report}");
    assert!(report.warnings[0].starts_with("aggregation.server_optimizer = \"fedadam\" with the anomaly check"));
    let recorded: Vec<[u8; 32]> = entries
        .iter()
        .filter_map(|bytes| match Entry::decode(bytes).unwrap() {
            Entry::RoundAggregated { model_hash, .. } => Some(model_hash),
            _ => None,
        })
        .collect();
    let replayed: Vec<[u8; 32]> = report.rounds.iter().map(|round| round.model_hash).collect();
    assert_eq!(replayed, recorded);
    let paid = entries.iter().filter(|bytes| matches!(Entry::decode(bytes).unwrap(), Entry::RewardPaid { .. })).count();
    assert!(paid >= 10, "rewards were paid and replayed: {paid}");

    // The command an auditor runs on a copy of the data folder says the same, auditing the ledger first under its
    // own policy (here: the log key trusted on first use, remembered in its state file).
    let folder = data_dir.to_str().unwrap();
    let state_file = data_dir.with_file_name("auditor-state.json");
    let state = state_file.to_str().unwrap();
    let replay_args = ["audit", "replay", "--data-dir", folder, "--study", &study_id, "--tofu", "--state", state];
    let (ok, stdout, stderr) = pdc_run(&replay_args);
    assert!(ok, "{stdout}{stderr}");
    assert!(stdout.contains(&format!("PASS: study {study_id} replays bit for bit (10 rounds)")), "{stdout}");
    assert!(stdout.starts_with("ledger: PASS"), "{stdout}");
    assert!(stdout.contains(&format!("  warning: {}\n", report.warnings[0])), "{stdout}");
    // Under a log key the auditor pinned that is not this log's, the replay refuses the ledger it would recompute.
    let stranger = hex::encode(pdc_ledger::Identity::generate().public_key().to_bytes());
    let other_state = data_dir.with_file_name("other-auditor-state.json");
    let pinned = ["--log-key", &stranger, "--state", other_state.to_str().unwrap()];
    let (ok, stdout, stderr) =
        pdc_run(&[&["audit", "replay", "--data-dir", folder, "--study", &study_id][..], &pinned[..]].concat());
    assert!(!ok, "{stdout}");
    assert!(stderr.contains(&format!("not the pinned {stranger}")), "{stdout}{stderr}");
    assert!(!stdout.contains("replays bit for bit"), "nothing is replayed from a ledger the auditor does not trust");

    // One byte of ward-b's archived round-4 update changed: found, named, and the replay stops there.
    let update_hash = entries
        .iter()
        .find_map(|bytes| match Entry::decode(bytes).unwrap() {
            Entry::ContributionAccepted { contribution, .. }
                if contribution.round == 4 && contribution.pdc_id == "ward-b" =>
            {
                Some(contribution.update_hash)
            }
            _ => None,
        })
        .unwrap();
    let path = data_dir.join("updates").join(format!("{}.f32", hex::encode(update_hash)));
    let original = std::fs::read(&path).unwrap();
    let mut tampered = original.clone();
    tampered[5] ^= 0x40;
    std::fs::write(&path, &tampered).unwrap();
    let (ok, stdout, _) = pdc_run(&replay_args);
    assert!(!ok, "{stdout}");
    assert!(stdout.contains("round 4: the archived update of ward-b"), "{stdout}");
    assert!(stdout.contains("does not hash to its id"), "{stdout}");
    assert!(stdout.contains("replay stopped at round 4"), "{stdout}");
    let report = replay(&entries, &study_id, &data_dir);
    assert_eq!(report.rounds.len(), 3, "{report}");
    assert!(report.rounds.iter().all(|round| round.differences.is_empty()));
    std::fs::write(&path, &original).unwrap();

    // A swapped validation set changes the recomputed metrics and valuations from round 1 on.
    let validation = data_dir.join("studies").join(&study_id).join("validation.csv");
    let text = std::fs::read_to_string(&validation).unwrap();
    let mut lines: Vec<&str> = text.lines().collect();
    lines.truncate(lines.len() - 40);
    std::fs::write(&validation, lines.join("\n") + "\n").unwrap();
    let report = replay(&entries, &study_id, &data_dir);
    assert!(!report.passed());
    assert!(!report.rounds[0].differences.is_empty(), "{report}");
    std::fs::write(&validation, &text).unwrap();

    // A manifest other than the one the ledger created the study with is refused outright.
    let manifest = data_dir.join("studies").join(&study_id).join("manifest.toml");
    let canonical = std::fs::read_to_string(&manifest).unwrap();
    std::fs::write(&manifest, canonical.replace("budget_per_round = 100.0", "budget_per_round = 1000.0")).unwrap();
    let report = replay(&entries, &study_id, &data_dir);
    assert!(report.problems[0].contains("the archived manifest hashes to"), "{report}");
    assert!(report.rounds.is_empty());
    std::fs::write(&manifest, &canonical).unwrap();
    assert!(replay(&entries, &study_id, &data_dir).passed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_fltrust_study_trains_its_server_update_on_the_root_data_and_replays_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("coordinator");
    let mut config = CoordinatorConfig::new(data_dir.clone());
    config.tick_interval = Duration::from_millis(20);
    let (url, _stop, coordinator) = support::serve_coordinator(config, ([127, 0, 0, 1], 0).into()).await;
    let manifest = MANIFEST
        .replace("rule = \"trimmed_mean\"\nbeta = 0.34\nserver_optimizer = \"fedadam\"", "rule = \"fltrust\"")
        .replace("[rewards]\nbudget_per_round = 100.0\n", "")
        .replace("rounds = 10", "rounds = 3");
    assert!(manifest.contains("fltrust") && !manifest.contains("rewards"));
    let study_id = run_study_with(&url, &manifest, 3).await;
    coordinator.seal_ledger().await.unwrap();
    let (_, entries, _) = fetch(&url).await;
    let report = replay(&entries, &study_id, &data_dir);
    assert!(report.passed(), "{report}");
    assert_eq!(report.rounds.len(), 3);
}
