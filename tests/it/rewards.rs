//! Rewards end to end on the demo's split: real hospital agents over gRPC, one holding a copy of another's table,
//! one training on flipped labels and one free riding ([attack] tables), valued by exact Shapley every round.

use std::path::{Path, PathBuf};
use std::time::Duration;

use pdc_ledger::entry::Entry;
use pdc_models::Schema;
use pdc_proto::pb;

use crate::ledger::fetch;
use crate::support;

/// The demo's study without local DP (attack simulation runs only without it), on logistic regression.
const MANIFEST: &str = r#"
name = "rewards"
seed = 42
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
min = 8
max = 8
round_deadline_secs = 60
[rewards]
budget_per_round = 100.0
"#;

/// The demo's split (seed 42, 20 % held out, Dirichlet α = 0.5 over 5 hospitals): each table's path, and the
/// validation CSV.
fn demo_split(dir: &Path) -> (Vec<PathBuf>, Vec<u8>) {
    let text = support::breast_cancer_csv();
    let header: Vec<String> = text.lines().next().unwrap().split(',').map(str::to_owned).collect();
    let label = "malignant".to_owned();
    let schema = Schema { features: header.iter().filter(|c| **c != label).cloned().collect(), label };
    let table = pdc_models::parse_csv(&text, "breast_cancer_wisconsin.csv", &schema).unwrap();
    let (train, validation) = pdc_models::train_validation_split(&table, 0.2, 42).unwrap();
    let parts = pdc_models::partition_dirichlet(&train, 5, 0.5, 42).unwrap();
    let paths = parts
        .iter()
        .enumerate()
        .map(|(index, part)| {
            let path = dir.join(format!("part-{index}.csv"));
            std::fs::write(&path, support::csv_text(part, &schema)).unwrap();
            path
        })
        .collect();
    (paths, support::csv_text(&validation, &schema).into_bytes())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_twin_is_paid_like_its_original_and_a_label_flipper_and_a_free_rider_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (url, _stop) = support::start_coordinator(dir.path()).await;
    let (parts, validation) = demo_split(dir.path());
    // Five honest hospitals on the demo split; a twin of the largest (hospital-d); a label flipper and a free
    // rider, each with a table of its own (copies of hospital-c's and hospital-b's).
    let hospitals: Vec<(&str, &PathBuf, &str)> = vec![
        ("hospital-a", &parts[0], ""),
        ("hospital-b", &parts[1], ""),
        ("hospital-c", &parts[2], ""),
        ("hospital-d", &parts[3], ""),
        ("hospital-e", &parts[4], ""),
        ("twin-d", &parts[3], ""),
        ("flipper", &parts[2], "[attack]\nkind = \"label_flip\"\n"),
        ("free-rider", &parts[1], "[attack]\nkind = \"free_ride\"\n"),
    ];
    let mut agents = Vec::new();
    for (name, data, attack) in &hospitals {
        let folder = dir.path().join(name);
        std::fs::create_dir_all(&folder).unwrap();
        let text = format!(
            "pdc_id = \"{name}\"\ncoordinator = \"{url}\"\nkey_file = \"{name}.key\"\ndata = {data:?}\n\n\
             [retry]\ninitial_ms = 50\nmax_ms = 200\npoll_ms = 50\n\n{attack}"
        );
        let path = folder.join("hospital.toml");
        std::fs::write(&path, text).unwrap();
        let agent = pdc_client::Agent::new(pdc_client::HospitalConfig::load(&path).unwrap()).unwrap();
        agents.push(tokio::spawn(agent.run()));
    }
    let mut researcher = support::researcher(&url).await;
    let request =
        pb::CreateStudyRequest { manifest_toml: MANIFEST.to_owned(), validation_csv: validation, ..Default::default() };
    let study_id = researcher.create_study(request).await.unwrap().into_inner().study_id;
    support::wait_for_status(&mut researcher, &study_id, Duration::from_secs(30), |s| s.consented.len() == 8).await;
    researcher.start_study(pb::StudyRef { study_id: study_id.clone() }).await.unwrap();
    let status = support::wait_for_status(&mut researcher, &study_id, Duration::from_secs(240), |s| {
        s.state == pb::StudyState::Finished as i32
    })
    .await;
    for agent in agents {
        agent.abort();
    }
    assert_eq!(status.rounds.len(), 10);

    let mut audit = pb::audit_service_client::AuditServiceClient::connect(url.clone()).await.unwrap();
    let report = audit.get_rewards(pb::StudyQuery { study_id: study_id.clone() }).await.unwrap().into_inner();
    let paid_in = |id: &str, round: u32| {
        report.rewards.iter().filter(|r| r.pdc_id == id && r.round == round).map(|r| r.amount).sum::<f64>()
    };
    let total = |id: &str| (1..=10).map(|round| paid_in(id, round)).sum::<f64>();
    let (original, twin) = (total("hospital-d"), total("twin-d"));
    println!(
        "rewards over 10 rounds: hospital-d {original:.2}, twin-d {twin:.2}, flipper {:.2}, free-rider {:.2}",
        total("flipper"),
        total("free-rider")
    );
    assert!(original > 0.0, "{report:#?}");
    assert!((original - twin).abs() <= 0.05 * original.max(twin), "hospital-d {original} vs its twin {twin}");
    for cheat in ["flipper", "free-rider"] {
        let unpaid = (1..=10).filter(|&round| paid_in(cheat, round) == 0.0).count();
        assert!(unpaid >= 9, "{cheat} was paid in {} of 10 rounds", 10 - unpaid);
    }
    let free_rider = status.hospitals.iter().find(|h| h.pdc_id == "free-rider").unwrap();
    assert_eq!(free_rider.strikes, 10, "the free rider is struck every round");
    // Every unit of every round's budget is paid out, or still carried over after the last round.
    let (_, entries, _) = fetch(&url).await;
    let (mut paid, mut carried) = (0.0, 0.0);
    for bytes in &entries {
        match Entry::decode(bytes).unwrap() {
            Entry::RewardPaid { amount, .. } => paid += amount,
            Entry::RewardsAllotted { budget, carried_over, .. } => carried = if carried_over { budget } else { 0.0 },
            _ => {}
        }
    }
    assert!((paid - report.rewards.iter().map(|r| r.amount).sum::<f64>()).abs() < 1e-9);
    assert!((paid + carried - 1000.0).abs() < 1e-6, "paid {paid} + carried {carried}");
}
