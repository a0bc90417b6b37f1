//! Central DP (DP-FedAvg with adaptive clipping) end to end: each round's noisy release is archived and recorded
//! with the study's cumulative ε, the study replays from the recorded releases, and invalid combinations are
//! refused when the study is created.

use std::time::Duration;

use pdc_coordinator::CoordinatorConfig;
use pdc_coordinator::archive::UpdateArchive;
use pdc_coordinator::replay::replay_study;
use pdc_ledger::entry::Entry;
use pdc_privacy::{Accountant, RdpAccountant};
use pdc_proto::pb;
use tonic::Code;

use crate::ledger::fetch;
use crate::support;

const MANIFEST: &str = r#"
name = "central"
seed = 5
model = { kind = "logistic_regression" }
[data]
task = "binary_classification"
label = "malignant"
[training]
rounds = 4
local_epochs = 1
batch_size = 16
learning_rate = 0.1
[participants]
min = 3
max = 3
round_deadline_secs = 60
[central_privacy]
clip_norm = 0.5
noise_multiplier = 1.0
delta = 1e-5
adaptive = { target_quantile = 0.5, learning_rate = 0.2, count_noise_multiplier = 5.0 }
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn central_dp_rounds_are_released_accounted_recorded_and_replayed() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("coordinator");
    let mut config = CoordinatorConfig::new(data_dir.clone());
    config.tick_interval = Duration::from_millis(20);
    let (url, _stop, coordinator) = support::serve_coordinator(config, ([127, 0, 0, 1], 0).into()).await;
    let mut researcher = support::researcher(&url).await;
    let create = |manifest: String| pb::CreateStudyRequest {
        manifest_toml: manifest,
        validation_csv: support::breast_cancer_csv().into_bytes(),
        ..Default::default()
    };

    // Combinations central DP cannot honour are refused before a study exists.
    let refusals = [
        (
            MANIFEST.replace(
                "[central_privacy]",
                "[privacy]\nclip_norm = 1.0\nnoise_multiplier = 1.0\ndelta = 1e-5\n[central_privacy]",
            ),
            "not both",
        ),
        (MANIFEST.to_owned() + "[aggregation]\nrule = \"median\"\n", "leave [aggregation] out"),
        (MANIFEST.to_owned() + "[rewards]\nbudget_per_round = 10.0\n", "choose one"),
        (MANIFEST.replace("noise_multiplier = 1.0", "noise_multiplier = 0.0"), "must be positive"),
        (MANIFEST.replace("count_noise_multiplier = 5.0", "count_noise_multiplier = 0.4"), "central_privacy"),
    ];
    for (manifest, fragment) in refusals {
        let status = researcher.create_study(create(manifest)).await.expect_err("refused");
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        assert!(status.message().contains(fragment), "{} lacks {fragment:?}", status.message());
    }

    let study_id = researcher.create_study(create(MANIFEST.to_owned())).await.unwrap().into_inner().study_id;
    let (mut pdcs, mut streams) = support::consenting_pdcs(&url, &["ward-a", "ward-b", "ward-c"]).await;
    researcher.start_study(pb::StudyRef { study_id: study_id.clone() }).await.unwrap();
    for _ in 0..4 {
        for (index, (pdc, stream)) in pdcs.iter_mut().zip(&mut streams).enumerate() {
            let task = support::next_task(stream).await;
            let model = pdc.download(&task).await;
            // Norms of about 0.3, 0.6 and 0.9: the adaptive clip norm moves toward their median.
            let scale = 0.3 * (index + 1) as f32 / (model.len() as f32).sqrt();
            let update: Vec<f32> = (0..model.len()).map(|i| if i % 2 == 0 { scale } else { -scale }).collect();
            let upload = |train_loss| support::Upload {
                study_id: &task.study_id,
                round: task.round,
                values: &update,
                chunk_bytes: pdc_proto::MAX_CHUNK_BYTES,
                train_loss,
                privacy: None,
            };
            if task.round == 1 && index == 0 {
                // A PDC's exact loss on its rows is outside the study's central ε: it never reaches the ledger.
                let before = support::log_size(&url).await;
                let refused = support::upload_with(&mut pdc.client, &pdc.id, &pdc.identity, upload(0.25)).await;
                support::assert_status(
                    refused,
                    Code::InvalidArgument,
                    "under central DP the training loss is not released",
                );
                // Refused at the header, before a byte of the body: nothing reaches the ledger.
                assert_eq!(support::log_size(&url).await, before, "the refused header changes nothing");
            }
            support::upload_with(&mut pdc.client, &pdc.id, &pdc.identity, upload(0.0)).await.unwrap();
        }
    }
    support::wait_for_status(&mut researcher, &study_id, Duration::from_secs(60), |s| {
        s.state == pb::StudyState::Finished as i32
    })
    .await;
    coordinator.seal_ledger().await.unwrap();

    let (keys, entries, notes) = fetch(&url).await;
    let decoded: Vec<Entry> = entries.iter().map(|bytes| Entry::decode(bytes).unwrap()).collect();
    let releases: Vec<(f64, f64, f64)> = decoded
        .iter()
        .filter_map(|entry| match entry {
            Entry::CentralDpRelease { clip_norm, noise_std, epsilon, .. } => Some((*clip_norm, *noise_std, *epsilon)),
            _ => None,
        })
        .collect();
    assert_eq!(releases.len(), 4);
    // The study's ε is the composition of one Gaussian release at z = 1 per round.
    let mut accountant = RdpAccountant::new();
    for (round, (clip_norm, noise_std, epsilon)) in releases.iter().enumerate() {
        accountant.compose_gaussian(1.0, 1);
        assert_eq!(*epsilon, accountant.epsilon(1e-5).unwrap(), "round {}", round + 1);
        assert!(*noise_std >= *clip_norm, "the update noise multiplier exceeds z with adaptive clipping");
    }
    assert_eq!(releases[0].0, 0.5);
    assert_ne!(releases[1].0, 0.5, "the clip norm adapts");
    assert!(audit_passes(&keys, &entries, &notes));

    // Replayed from the recorded releases, bit for bit; a tampered release is found.
    let archive = UpdateArchive::open_read_only(&data_dir.join("updates")).unwrap();
    let study_dir = data_dir.join("studies").join(&study_id);
    let report = replay_study(&decoded, &study_id, &study_dir, &archive).unwrap();
    assert!(report.passed(), "{report}");
    assert_eq!(report.rounds.len(), 4);
    let release_hash = decoded
        .iter()
        .find_map(|entry| match entry {
            Entry::CentralDpRelease { round: 2, release_hash, .. } => Some(*release_hash),
            _ => None,
        })
        .unwrap();
    let path = data_dir.join("updates").join(format!("{}.f32", hex::encode(release_hash)));
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[0] ^= 1;
    std::fs::write(&path, bytes).unwrap();
    let report = replay_study(&decoded, &study_id, &study_dir, &archive).unwrap();
    assert!(!report.passed());
    assert!(report.problems.iter().any(|p| p.contains("round 2: the archived central DP release")), "{report}");
}

fn audit_passes(keys: &pdc_ledger::audit::AuditKeys, entries: &[Vec<u8>], notes: &[String]) -> bool {
    let report = pdc_ledger::audit::verify_parts(entries, notes, keys);
    assert!(report.passed(), "{report}");
    true
}

/// A real hospital agent takes part in a central DP study: it releases no training loss (the coordinator refuses
/// an update that carries one, so an agent that sent its loss would never contribute), and the study finishes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hospital_agents_release_no_training_loss_under_central_dp() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = CoordinatorConfig::new(dir.path().join("coordinator"));
    config.tick_interval = Duration::from_millis(20);
    let (url, _stop, _coordinator) = support::serve_coordinator(config, ([127, 0, 0, 1], 0).into()).await;
    let mut researcher = support::researcher(&url).await;
    let manifest = MANIFEST.replace("rounds = 4", "rounds = 2").replace("min = 3\nmax = 3", "min = 2\nmax = 2");
    let request = pb::CreateStudyRequest {
        manifest_toml: manifest,
        validation_csv: support::breast_cancer_csv().into_bytes(),
        ..Default::default()
    };
    let study_id = researcher.create_study(request).await.unwrap().into_inner().study_id;

    let data = support::root().join("data/breast_cancer_wisconsin.csv");
    let mut agents = Vec::new();
    for name in ["ward-a", "ward-b"] {
        let path = dir.path().join(format!("{name}.toml"));
        let key = dir.path().join(format!("{name}.key"));
        std::fs::write(
            &path,
            format!("pdc_id = {name:?}\ncoordinator = \"{url}\"\nkey_file = {key:?}\ndata = {data:?}\n"),
        )
        .unwrap();
        let agent = pdc_client::Agent::new(pdc_client::HospitalConfig::load(&path).unwrap()).unwrap();
        agents.push(tokio::spawn(agent.run()));
    }
    support::wait_for_status(&mut researcher, &study_id, Duration::from_secs(30), |s| s.consented.len() == 2).await;
    researcher.start_study(pb::StudyRef { study_id: study_id.clone() }).await.unwrap();
    let status = support::wait_for_status(&mut researcher, &study_id, Duration::from_secs(60), |s| {
        s.state == pb::StudyState::Finished as i32
    })
    .await;
    assert_eq!(status.rounds.len(), 2);
    let (_, entries, _) = fetch(&url).await;
    let mut contributions = 0;
    for bytes in &entries {
        if let Entry::ContributionAccepted { contribution, .. } = Entry::decode(bytes).unwrap() {
            assert_eq!(contribution.train_loss, 0.0, "{}'s loss reached the ledger", contribution.pdc_id);
            contributions += 1;
        }
    }
    assert_eq!(contributions, 4, "both wards in both rounds");
    for agent in agents {
        agent.abort();
    }
}
