//! Crash recovery: the coordinator process is killed with SIGKILL at random points of a running study (while
//! hospitals train, upload, or wait, and while it aggregates or seals) and restarted on the same address. The
//! hospitals reconnect by themselves; the study completes with all its rounds; every update a hospital was told
//! was accepted is counted exactly once; and the ledger verifies and replays.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use pdc_ledger::entry::Entry;
use pdc_proto::pb;
use rand::{Rng, SeedableRng};
use tokio::process::Child;

use crate::processes::{
    coordinator_config, create_study, hospital_config, pdc, pdc_output, spawn_coordinator, split_data,
};
use crate::support::{self, root};

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

    // The ledger verifies, and the study replays from the archives to the same models.
    let audit = pdc_output(&["audit", "verify", "--coordinator", &url]).await;
    assert!(audit.starts_with("PASS"), "{audit}");
    coordinator.start_kill().unwrap();
    coordinator.wait().await.unwrap();
    let data_dir = dir.path().join("coordinator");
    let replay = pdc_output(&["audit", "replay", "--data-dir", data_dir.to_str().unwrap(), "--study", &study_id]).await;
    assert!(replay.contains(&format!("PASS: study {study_id} replays bit for bit ({ROUNDS} rounds)")), "{replay}");
}
