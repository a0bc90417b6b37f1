//! Crash recovery: the coordinator process is killed with SIGKILL at random points of a running study (while
//! hospitals train, upload, or wait, and while it aggregates or seals) and restarted on the same address. The
//! hospitals reconnect by themselves; the study completes with all its rounds; every update a hospital was told
//! was accepted is counted exactly once; and the ledger verifies and replays. And in process: a study stopped and
//! restarted mid-round reaches exactly the models and rewards of the same study run without a stop.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use pdc_coordinator::{Coordinator, CoordinatorConfig};
use pdc_ledger::entry::Entry;
use pdc_ledger::signing::ConsentConditions;
use pdc_proto::pb;
use rand::{Rng, SeedableRng};
use tokio::process::Child;

use crate::processes::{
    coordinator_config, create_study, hospital_config, pdc, pdc_output, spawn_coordinator, split_data,
};
use crate::roles::consent_with;
use crate::support::{self, TestPdc, root};

/// Kills of the coordinator, each at a random point.
const KILLS: usize = 10;
/// Rounds of the study: enough that it is still running after every kill.
const ROUNDS: u32 = 60;
const HOSPITALS: [&str; 3] = ["hospital-a", "hospital-b", "hospital-c"];

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Starts a hospital that reconnects quickly and logs JSON to `<dir>/<name>.log`.
fn start_hospital(dir: &Path, data: &Path, name: &str, url: &str) -> (Child, PathBuf) {
    let path = hospital_config(dir, data, name, url, "");
    let config = std::fs::read_to_string(&path).unwrap();
    let quick = config.replace("initial_ms = 200", "initial_ms = 50").replace("max_ms = 5000", "max_ms = 300");
    assert_ne!(quick, config, "examples/{name}.toml's [retry] changed: update this test");
    std::fs::write(&path, quick).unwrap();
    let log = dir.join(format!("{name}.log"));
    let child = pdc()
        .env("PDC_LOG_FORMAT", "json")
        .args(["hospital", "--config"])
        .arg(&path)
        .stderr(Stdio::from(std::fs::File::create(&log).unwrap()))
        .spawn()
        .unwrap();
    (child, log)
}

/// The updates a hospital's log says the coordinator acknowledged: (round, update id).
fn acknowledged(log: &Path) -> Vec<(u32, String)> {
    std::fs::read_to_string(log)
        .unwrap()
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|line| line["fields"]["message"] == "update accepted")
        .map(|line| {
            let fields = &line["fields"];
            let round = fields["round"].as_u64().expect("a round") as u32;
            (round, fields["update"].as_str().expect("an update id").to_owned())
        })
        .collect()
}

/// Waits (at most 30 s) until the latest checkpoint covers every entry of the log.
async fn wait_until_sealed(url: &str) {
    let mut client = pb::audit_service_client::AuditServiceClient::connect(url.to_owned()).await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let size = client.get_log_info(pb::LogInfoRequest {}).await.unwrap().into_inner().size;
        // A checkpoint note's second line is the tree size it signs (C2SP tlog-checkpoint).
        let sealed = client.get_checkpoint(pb::CheckpointRequest { size: 0 }).await.ok().and_then(|checkpoint| {
            checkpoint.into_inner().note.lines().nth(1).and_then(|line| line.parse::<u64>().ok())
        });
        if sealed == Some(size) {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "the log of {size} entries is sealed only to {sealed:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn ledger_entries(url: &str) -> Vec<Entry> {
    let mut client = pb::audit_service_client::AuditServiceClient::connect(url.to_owned()).await.unwrap();
    let size = client.get_log_info(pb::LogInfoRequest {}).await.unwrap().into_inner().size;
    let mut stream = client.get_entries(pb::EntriesRequest { start: 0, end: size }).await.unwrap().into_inner();
    let mut entries = Vec::new();
    while let Some(entry) = stream.message().await.unwrap() {
        entries.push(Entry::decode(&entry.data).unwrap());
    }
    entries
}

async fn status(url: &str, study_id: &str) -> pb::StudyStatus {
    let mut researcher = support::researcher(url).await;
    researcher.get_status(pb::StudyRef { study_id: study_id.to_owned() }).await.unwrap().into_inner()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_coordinator_killed_at_random_points_resumes_its_study() {
    let dir = tempfile::tempdir().unwrap();
    let data = split_data(dir.path()).await;
    // A fixed address, so that the hospitals find the restarted coordinator where they left it.
    let config = coordinator_config(dir.path(), &format!("127.0.0.1:{}", free_port()));
    let (mut coordinator, url) = spawn_coordinator(&config).await;
    let manifest = std::fs::read_to_string(root().join("examples/study.toml")).unwrap();
    let manifest = manifest
        .replace("rounds = 5", &format!("rounds = {ROUNDS}"))
        .replace("local_epochs = 2", "local_epochs = 1")
        .replace("round_deadline_secs = 20", "round_deadline_secs = 15");
    let study_id = create_study(&url, &manifest, &data.join("validation.csv"), dir.path()).await;
    let (_hospitals, logs): (Vec<Child>, Vec<PathBuf>) =
        HOSPITALS.iter().map(|name| start_hospital(dir.path(), &data, name, &url)).unzip();
    let mut researcher = support::researcher(&url).await;
    support::wait_for_status(&mut researcher, &study_id, Duration::from_secs(60), |s| s.consented.len() == 3).await;
    researcher.start_study(pb::StudyRef { study_id: study_id.clone() }).await.unwrap();

    // Kill at random points, seeded so that a failure can be rerun.
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0x5eed_c4a5);
    let mut rounds_at_kill = Vec::new();
    while rounds_at_kill.len() < KILLS {
        tokio::time::sleep(Duration::from_millis(rng.random_range(20..400))).await;
        let before = status(&url, &study_id).await;
        assert_eq!(before.state, pb::StudyState::Running as i32, "the study ended after {rounds_at_kill:?}");
        rounds_at_kill.push(before.rounds.len());
        // SIGKILL: nothing is flushed or shut down.
        coordinator.start_kill().unwrap();
        coordinator.wait().await.unwrap();
        let (restarted, restarted_url) = spawn_coordinator(&config).await;
        assert_eq!(restarted_url, url);
        coordinator = restarted;
        // The restarted coordinator reports the study at the round it was in, never behind it.
        let after = status(&url, &study_id).await;
        assert!(after.rounds.len() >= before.rounds.len(), "rounds went back from {before:#?} to {after:#?}");
    }
    // The kills were spread over the study, not bunched before its first round.
    assert!(rounds_at_kill.iter().collect::<BTreeSet<_>>().len() >= 3, "kills at rounds {rounds_at_kill:?}");

    let mut researcher = support::researcher(&url).await;
    let done = support::wait_for_status(&mut researcher, &study_id, Duration::from_secs(300), |s| {
        s.state != pb::StudyState::Running as i32
    })
    .await;
    assert_eq!(done.state, pb::StudyState::Finished as i32, "{done:#?}");
    let rounds: Vec<u32> = done.rounds.iter().map(|round| round.round).collect();
    assert_eq!(rounds, (1..=ROUNDS).collect::<Vec<_>>(), "kills at rounds {rounds_at_kill:?}");

    // Every contribution the ledger accepted is aggregated in its round, once; no round is aggregated twice.
    let entries = ledger_entries(&url).await;
    let mut accepted: BTreeMap<(u32, String), Vec<String>> = BTreeMap::new();
    let mut aggregated: BTreeMap<u32, Vec<String>> = BTreeMap::new();
    for entry in &entries {
        match entry {
            Entry::ContributionAccepted { contribution, .. } if contribution.study_id == study_id => {
                let key = (contribution.round, contribution.pdc_id.clone());
                accepted.entry(key).or_default().push(hex::encode(contribution.update_hash));
            }
            Entry::RoundAggregated { study_id: id, round, contributors, .. } if *id == study_id => {
                assert!(aggregated.insert(*round, contributors.clone()).is_none(), "round {round} aggregated twice");
            }
            _ => {}
        }
    }
    assert_eq!(aggregated.keys().copied().collect::<Vec<_>>(), rounds);
    for ((round, pdc_id), updates) in &accepted {
        assert_eq!(updates.len(), 1, "{pdc_id}'s update for round {round} was accepted {} times", updates.len());
        assert!(aggregated[round].contains(pdc_id), "{pdc_id}'s accepted update of round {round} is not aggregated");
    }
    let contributions: usize = aggregated.values().map(Vec::len).sum();
    assert_eq!(contributions, accepted.len());
    // Every update a hospital was told was accepted is one of them.
    let mut acknowledged_count = 0;
    for (name, log) in HOSPITALS.iter().zip(&logs) {
        for (round, update) in acknowledged(log) {
            let recorded = accepted.get(&(round, (*name).to_owned()));
            assert_eq!(recorded, Some(&vec![update.clone()]), "{name}'s acknowledged update {update} of round {round}");
            acknowledged_count += 1;
        }
    }
    assert!(acknowledged_count >= ROUNDS as usize, "only {acknowledged_count} acknowledged updates in the logs");

    // The ledger verifies, and the study replays from the archives to the same models. The study's last entry is
    // sealed by a task of its own after the study reads finished: the board audits once the checkpoint covers the
    // whole log (an unsealed tail is, rightly, no pass).
    wait_until_sealed(&url).await;
    // The board trusts the log key on first use, remembering it beside the test's other state.
    let state = dir.path().join("auditor-state.json");
    let audit =
        pdc_output(&["audit", "verify", "--coordinator", &url, "--tofu", "--state", state.to_str().unwrap()]).await;
    assert!(audit.starts_with("PASS"), "{audit}");
    coordinator.start_kill().unwrap();
    coordinator.wait().await.unwrap();
    let data_dir = dir.path().join("coordinator");
    let (data_arg, state_arg) = (data_dir.to_str().unwrap(), state.to_str().unwrap());
    let replay_args = ["audit", "replay", "--data-dir", data_arg, "--study", &study_id, "--tofu", "--state", state_arg];
    let replay = pdc_output(&replay_args).await;
    assert!(replay.contains(&format!("PASS: study {study_id} replays bit for bit ({ROUNDS} rounds)")), "{replay}");
}

/// Six rounds of replay.rs's study (trimmed mean with FedAdam on the server and exact-Shapley rewards): every kind
/// of state a round carries to the next (optimiser moments, hospital figures, the carried reward budget).
fn stateful_manifest() -> String {
    let manifest = crate::replay::MANIFEST.replace("name = \"replayed\"", "name = \"restarted\"");
    let six = manifest.replace("rounds = 10", "rounds = 6");
    assert_ne!(six, manifest, "replay.rs's manifest changed: update this test");
    six
}

const WARDS: [&str; 3] = ["ward-a", "ward-b", "ward-c"];

/// A ward's deterministic update from the model it downloaded.
fn ward_update(model: &[f32], ward: usize, round: u32) -> Vec<f32> {
    model.iter().enumerate().map(|(i, w)| 0.05 * ((i + ward) % 5) as f32 - 0.1 * w + 0.001 * round as f32).collect()
}

/// Serves a coordinator on `data_dir`, recovering whatever is there.
async fn serve(data_dir: &Path) -> (String, tokio::sync::oneshot::Sender<()>, std::sync::Arc<Coordinator>) {
    let mut config = CoordinatorConfig::new(data_dir.to_owned());
    config.tick_interval = Duration::from_millis(20);
    support::serve_coordinator(config, ([127, 0, 0, 1], 0).into()).await
}

/// Stops a served coordinator and waits until nothing holds it, so that its RocksDB folders are closed.
async fn shut_down(stop: tokio::sync::oneshot::Sender<()>, coordinator: std::sync::Arc<Coordinator>) {
    drop(stop);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while std::sync::Arc::strong_count(&coordinator) > 1 {
        assert!(tokio::time::Instant::now() < deadline, "the coordinator is still held");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(coordinator);
}

/// Plays `rounds` of the study for the wards whose streams are given (index into [`WARDS`], stream).
async fn play(pdcs: &mut [TestPdc], streams: &mut [(usize, tonic::Streaming<pb::Task>)], rounds: usize) {
    for _ in 0..rounds {
        for (ward, stream) in streams.iter_mut() {
            let task = support::next_task(stream).await;
            let pdc = &mut pdcs[*ward];
            let model = pdc.download(&task).await;
            pdc.submit(&task.study_id, task.round, &ward_update(&model, *ward, task.round)).await.unwrap();
        }
    }
}

async fn create_and_start(url: &str) -> (String, Vec<TestPdc>, Vec<(usize, tonic::Streaming<pb::Task>)>) {
    let mut researcher = support::researcher(url).await;
    let request = pb::CreateStudyRequest {
        manifest_toml: stateful_manifest(),
        validation_csv: support::breast_cancer_csv().into_bytes(),
        ..Default::default()
    };
    let study_id = researcher.create_study(request).await.unwrap().into_inner().study_id;
    let (pdcs, streams) = support::consenting_pdcs(url, &WARDS).await;
    researcher.start_study(pb::StudyRef { study_id: study_id.clone() }).await.unwrap();
    (study_id, pdcs, streams.into_iter().enumerate().collect())
}

async fn finished(url: &str, study_id: &str) -> pb::StudyStatus {
    let mut researcher = support::researcher(url).await;
    support::wait_for_status(&mut researcher, study_id, Duration::from_secs(60), |s| {
        s.state == pb::StudyState::Finished as i32
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_coordinator_reaches_the_models_and_rewards_of_an_uninterrupted_one() {
    // The reference: the study run through without a restart.
    let reference_dir = tempfile::tempdir().unwrap();
    let (url, stop, coordinator) = serve(reference_dir.path()).await;
    let (study_id, mut pdcs, mut streams) = create_and_start(&url).await;
    play(&mut pdcs, &mut streams, 6).await;
    let reference = finished(&url, &study_id).await;
    drop((pdcs, streams));
    shut_down(stop, coordinator).await;

    // The same study, stopped after three rounds and one update of the fourth, and restarted on its folder.
    let dir = tempfile::tempdir().unwrap();
    let (url, stop, coordinator) = serve(dir.path()).await;
    let (restarted_id, mut pdcs, mut streams) = create_and_start(&url).await;
    assert_eq!(restarted_id, study_id);
    play(&mut pdcs, &mut streams, 3).await;
    play(&mut pdcs, &mut streams[..1], 1).await;
    // The wards keep their keys but let go of their connections, which would hold the server open.
    drop(streams);
    let nowhere = tonic::transport::Endpoint::from_static("http://127.0.0.1:9").connect_lazy();
    for pdc in &mut pdcs {
        pdc.client = pb::federation_service_client::FederationServiceClient::new(nowhere.clone());
    }
    shut_down(stop, coordinator).await;

    let (url, _stop, _coordinator) = serve(dir.path()).await;
    let before = status(&url, &study_id).await;
    assert_eq!(before.state, pb::StudyState::Running as i32, "{before:#?}");
    assert_eq!((before.current_round, before.rounds.len()), (4, 3), "{before:#?}");
    assert_eq!(before.rounds[..], reference.rounds[..3]);
    for pdc in &mut pdcs {
        pdc.client = pb::federation_service_client::FederationServiceClient::connect(url.clone()).await.unwrap();
    }
    let mut streams = Vec::new();
    for (ward, pdc) in pdcs.iter_mut().enumerate() {
        streams.push((ward, pdc.tasks().await));
    }
    // Wards b and c are sent round 4 again. Ward a's round-4 update was acknowledged before the restart: it is
    // not asked again, and cannot send it twice.
    let task = support::next_task(&mut streams[1].1).await;
    assert_eq!(task.round, 4);
    let model = pdcs[1].download(&task).await;
    let again = pdcs[0].submit(&study_id, 4, &ward_update(&model, 0, 4)).await;
    support::assert_status(again, tonic::Code::AlreadyExists, "already submitted an update for round 4");
    pdcs[1].submit(&study_id, 4, &ward_update(&model, 1, 4)).await.unwrap();
    let task = support::next_task(&mut streams[2].1).await;
    assert_eq!(task.round, 4);
    let model = pdcs[2].download(&task).await;
    pdcs[2].submit(&study_id, 4, &ward_update(&model, 2, 4)).await.unwrap();
    // Ward a's first task on its new stream is round 5.
    play(&mut pdcs, &mut streams, 2).await;
    let restarted = finished(&url, &study_id).await;

    assert_eq!(restarted.rounds, reference.rounds, "the same models, contributors and metrics, round by round");
    assert_eq!(restarted.hospitals, reference.hospitals, "the same rewards, utilities and figures");
}

/// ledger.rs's two-round study named `name`, with one ward enough for a round.
fn one_ward_manifest(name: &str) -> String {
    let manifest = crate::ledger::MANIFEST.replace("name = \"ledger\"", &format!("name = \"{name}\""));
    let one = manifest.replace("min = 2\nmax = 2", "min = 1\nmax = 1");
    assert_ne!(one, manifest, "ledger.rs's manifest changed: update this test");
    one
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_coordinator_keeps_drafts_recruiting_studies_and_consent_conditions() {
    let dir = tempfile::tempdir().unwrap();
    let (url, stop, coordinator) = serve(dir.path()).await;
    let mut researcher = support::researcher(&url).await;
    let request = |name: &str, draft: bool| pb::CreateStudyRequest {
        manifest_toml: one_ward_manifest(name),
        validation_csv: support::breast_cancer_csv().into_bytes(),
        draft,
        ..Default::default()
    };
    let mut create = async |name: &str, draft: bool| {
        researcher.create_study(request(name, draft)).await.unwrap().into_inner().study_id
    };
    let draft = create("kept-draft", true).await;
    let opened = create("opened-draft", true).await;
    let recruiting = create("recruiting", false).await;
    researcher.open_recruiting(pb::StudyRef { study_id: opened.clone() }).await.unwrap();
    let mut ward = TestPdc::register(&url, "ward-a").await;
    let one_round = ConsentConditions { max_rounds: Some(1), ..ConsentConditions::default() };
    consent_with(&mut ward, &recruiting, one_round).await.unwrap();
    drop(researcher);
    ward.client = pb::federation_service_client::FederationServiceClient::new(
        tonic::transport::Endpoint::from_static("http://127.0.0.1:9").connect_lazy(),
    );
    shut_down(stop, coordinator).await;

    let (url, _stop, _coordinator) = serve(dir.path()).await;
    assert_eq!(status(&url, &draft).await.state, pb::StudyState::Created as i32, "still a draft");
    assert_eq!(status(&url, &opened).await.state, pb::StudyState::Recruiting as i32);
    let before = status(&url, &recruiting).await;
    assert_eq!(
        (before.state, before.consented.clone()),
        (pb::StudyState::Recruiting as i32, vec!["ward-a".to_owned()])
    );
    ward.client = pb::federation_service_client::FederationServiceClient::connect(url.clone()).await.unwrap();
    let listed: Vec<String> = ward
        .client
        .list_studies(ward.signed("ListStudies"))
        .await
        .unwrap()
        .into_inner()
        .studies
        .into_iter()
        .map(|study| study.study_id)
        .collect();
    assert!(!listed.contains(&draft) && listed.contains(&opened) && listed.contains(&recruiting), "{listed:?}");

    // The consent's one-round limit survived the restart: ward a trains round 1 and is never asked for round 2.
    let mut researcher = support::researcher(&url).await;
    researcher.start_study(pb::StudyRef { study_id: recruiting.clone() }).await.unwrap();
    let mut tasks = ward.tasks().await;
    let task = support::next_task(&mut tasks).await;
    assert_eq!((task.study_id.as_str(), task.round), (recruiting.as_str(), 1));
    let model = ward.download(&task).await;
    ward.submit(&recruiting, 1, &ward_update(&model, 0, 1)).await.unwrap();
    support::wait_for_status(&mut researcher, &recruiting, Duration::from_secs(30), |s| s.rounds.len() == 1).await;
    assert!(tokio::time::timeout(Duration::from_millis(600), tasks.message()).await.is_err(), "a task for round 2");
    let after = status(&url, &recruiting).await;
    assert_eq!((after.state, after.current_round), (pb::StudyState::Running as i32, 1), "{after:#?}");
}
