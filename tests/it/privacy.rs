//! Local DP end to end: real hospital agents train with DP-SGD under declared budgets, sign their spend with
//! every update, and the coordinator records it; a PDC whose budget would be exceeded refuses and the study goes
//! on; a restarted PDC keeps its spend; bad budget declarations and privacy claims are refused and change nothing.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use pdc_client::spend::SpendStore;
use pdc_ledger::audit;
use pdc_ledger::entry::Entry;
use pdc_ledger::signing::{self, PrivacyClaim};
use pdc_models::Schema;
use pdc_proto::pb;
use tonic::Code;

use crate::ledger::{fetch, pdc_run};
use crate::support::{self, TestPdc, Upload, assert_status, log_size};

/// The demo's study: an MLP on the breast-cancer table, each PDC's noise calibrated to ε = 3 at δ = 1e-5 over
/// all rounds.
const PRIVATE_MANIFEST: &str = r#"
name = "private"
seed = 42
model = { kind = "mlp", hidden = [16] }
[data]
task = "binary_classification"
label = "malignant"
[training]
rounds = 20
local_epochs = 1
batch_size = 16
learning_rate = 0.1
[participants]
min = 3
max = 5
round_deadline_secs = 30
[privacy]
clip_norm = 1.0
target_epsilon = 3.0
delta = 1e-5
"#;

/// Splits 80 % of the breast-cancer table between `n` hospitals with label skew; returns each hospital's CSV and
/// the held-out 20 % as the researcher's validation CSV.
pub(crate) fn split(dir: &Path, n: usize, seed: u64) -> (Vec<PathBuf>, Vec<u8>) {
    let text = support::breast_cancer_csv();
    let header: Vec<String> = text.lines().next().unwrap().split(',').map(str::to_owned).collect();
    let label = "malignant".to_owned();
    let schema = Schema { features: header.iter().filter(|c| **c != label).cloned().collect(), label };
    let table = pdc_models::parse_csv(&text, "breast_cancer_wisconsin.csv", &schema).unwrap();
    let (train, validation) = pdc_models::train_validation_split(&table, 0.2, seed).unwrap();
    let parts = pdc_models::partition_dirichlet(&train, n, 0.5, seed).unwrap();
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

/// Writes `name`'s hospital.toml with a budget of `epsilon` at δ = 1e-5 and returns its path.
pub(crate) fn hospital_config(dir: &Path, name: &str, url: &str, data: &Path, epsilon: f64) -> PathBuf {
    let folder = dir.join(name);
    std::fs::create_dir_all(&folder).unwrap();
    let text = format!(
        "pdc_id = \"{name}\"\ncoordinator = \"{url}\"\nkey_file = \"{name}.key\"\ndata = {data:?}\n\n\
         [retry]\ninitial_ms = 50\nmax_ms = 200\npoll_ms = 50\n\n\
         [privacy]\ndataset = \"{name}/icu\"\nepsilon = {epsilon}\ndelta = 1e-5\n"
    );
    let path = folder.join("hospital.toml");
    std::fs::write(&path, text).unwrap();
    path
}

pub(crate) fn start_agent(config: &Path) -> tokio::task::JoinHandle<pdc_client::Result<()>> {
    let agent = pdc_client::Agent::new(pdc_client::HospitalConfig::load(config).unwrap()).unwrap();
    tokio::spawn(agent.run())
}

pub(crate) async fn create_and_start(url: &str, manifest: &str, validation: Vec<u8>, hospitals: usize) -> String {
    let mut researcher = support::researcher(url).await;
    let request =
        pb::CreateStudyRequest { manifest_toml: manifest.to_owned(), validation_csv: validation, ..Default::default() };
    let study_id = researcher.create_study(request).await.unwrap().into_inner().study_id;
    support::wait_for_status(&mut researcher, &study_id, Duration::from_secs(30), |s| s.consented.len() == hospitals)
        .await;
    researcher.start_study(pb::StudyRef { study_id: study_id.clone() }).await.unwrap();
    study_id
}

/// Per PDC, the cumulative ε of its `PrivacySpent` entries in ledger order, and the signed claims.
fn spends(entries: &[Vec<u8>]) -> (BTreeMap<String, Vec<f64>>, BTreeMap<String, Vec<f64>>) {
    let (mut recorded, mut claimed) = (BTreeMap::<String, Vec<f64>>::new(), BTreeMap::<String, Vec<f64>>::new());
    for bytes in entries {
        match Entry::decode(bytes).unwrap() {
            Entry::PrivacySpent { pdc_id, epsilon, delta, .. } => {
                assert_eq!(delta, 1e-5);
                recorded.entry(pdc_id).or_default().push(epsilon);
            }
            Entry::ContributionAccepted { contribution, .. } => {
                let claim = contribution.privacy.expect("every update of a private study carries a claim");
                assert_eq!(contribution.train_loss, 0.0, "the loss on private rows is not released");
                claimed.entry(contribution.pdc_id).or_default().push(claim.epsilon);
            }
            _ => {}
        }
    }
    (recorded, claimed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_study_at_epsilon_3_reaches_auroc_0_90_and_every_spend_is_signed_and_recorded() {
    let dir = tempfile::tempdir().unwrap();
    let (url, _stop) = support::start_coordinator(dir.path()).await;
    let (parts, validation) = split(dir.path(), 5, 42);
    let names: Vec<String> = (0..5).map(|i| format!("hospital-{}", char::from(b'a' + i as u8))).collect();
    let configs: Vec<PathBuf> =
        names.iter().zip(&parts).map(|(name, data)| hospital_config(dir.path(), name, &url, data, 4.0)).collect();
    let agents: Vec<_> = configs.iter().map(|config| start_agent(config)).collect();
    let study_id = create_and_start(&url, PRIVATE_MANIFEST, validation, 5).await;

    let mut researcher = support::researcher(&url).await;
    let status = support::wait_for_status(&mut researcher, &study_id, Duration::from_secs(120), |s| {
        s.state == pb::StudyState::Finished as i32
    })
    .await;
    let auroc = status.rounds.last().unwrap().validation.unwrap().auroc.unwrap();
    assert!(auroc >= 0.90, "final AUROC {auroc} at ε = 3");
    assert_eq!(status.rounds.len(), 20);
    for agent in agents {
        agent.abort();
    }

    // Every contribution carries the PDC's signed claim, and the ledger records exactly that spend after it.
    let (keys, entries, notes) = fetch(&url).await;
    let (recorded, claimed) = spends(&entries);
    assert_eq!(recorded, claimed);
    for (name, config) in names.iter().zip(&configs) {
        let spent = &recorded[name];
        assert_eq!(spent.len(), 20, "{name}: {spent:?}");
        assert!(spent.windows(2).all(|w| w[0] < w[1]), "{name}'s spend must grow: {spent:?}");
        // Calibrated to the target: the whole study costs at most ε = 3, and nearly all of it.
        let last = *spent.last().unwrap();
        assert!((2.9..=3.0 + 1e-9).contains(&last), "{name}: {last}");
        let hospital = status.hospitals.iter().find(|h| h.pdc_id == *name).unwrap();
        assert_eq!(hospital.epsilon, last);
        assert!(!hospital.budget_exhausted);
        // The PDC's own spend file agrees with the ledger.
        let file = config.parent().unwrap().join(format!("{name}.spend.json"));
        assert_eq!(SpendStore::load(&file).unwrap().spent(), last);
    }
    // Each round's summary lists the contributors' spend.
    assert_eq!(status.rounds[0].privacy.len(), 5);
    let report = audit::verify_parts(&entries, &notes, &keys);
    assert!(report.passed(), "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pdc_out_of_budget_refuses_the_study_goes_on_and_a_restart_keeps_its_spend() {
    let dir = tempfile::tempdir().unwrap();
    let (url, _stop) = support::start_coordinator(dir.path()).await;
    let (parts, validation) = split(dir.path(), 3, 7);
    let manifest = PRIVATE_MANIFEST
        .replace("rounds = 20", "rounds = 6")
        .replace("min = 3", "min = 2")
        .replace("max = 5", "max = 3")
        .replace("hidden = [16]", "hidden = [8]");
    // hospital-c can afford only part of a study that costs ε = 3.
    let budgets = [("hospital-a", 4.0), ("hospital-b", 4.0), ("hospital-c", 1.8)];
    let configs: Vec<PathBuf> = budgets
        .iter()
        .zip(&parts)
        .map(|((name, epsilon), data)| hospital_config(dir.path(), name, &url, data, *epsilon))
        .collect();
    let mut agents: Vec<_> = configs.iter().map(|config| start_agent(config)).collect();
    let study_id = create_and_start(&url, &manifest, validation, 3).await;
    let mut researcher = support::researcher(&url).await;

    // Once hospital-c has had an update accepted, it is stopped and started again from its files.
    let joined = |s: &pb::StudyStatus| s.hospitals.iter().any(|h| h.pdc_id == "hospital-c" && h.rounds_joined >= 1);
    support::wait_for_status(&mut researcher, &study_id, Duration::from_secs(60), joined).await;
    agents.pop().unwrap().abort();
    let spend_file = dir.path().join("hospital-c/hospital-c.spend.json");
    let before_restart = SpendStore::load(&spend_file).unwrap().spent();
    assert!(before_restart > 0.0);
    agents.push(start_agent(&configs[2]));
    // The restarted PDC reads its spend back instead of starting from zero.
    assert!(SpendStore::load(&spend_file).unwrap().spent() >= before_restart);

    let status = support::wait_for_status(&mut researcher, &study_id, Duration::from_secs(120), |s| {
        s.state == pb::StudyState::Finished as i32
    })
    .await;
    for agent in agents {
        agent.abort();
    }
    assert_eq!(status.rounds.len(), 6, "the study goes on without the exhausted PDC");
    let hospital = |name: &str| status.hospitals.iter().find(|h| h.pdc_id == name).unwrap().clone();
    assert!(hospital("hospital-c").budget_exhausted, "{status:#?}");
    assert!(hospital("hospital-c").rounds_joined < 6);
    assert_eq!(hospital("hospital-a").rounds_joined, 6);
    assert_eq!(hospital("hospital-b").rounds_joined, 6);

    let (keys, entries, notes) = fetch(&url).await;
    let (recorded, _) = spends(&entries);
    let c = &recorded["hospital-c"];
    assert!(c.windows(2).all(|w| w[0] < w[1]), "hospital-c's spend never resets or repeats: {c:?}");
    assert!(*c.last().unwrap() <= 1.8, "the spend stops within the budget: {c:?}");
    assert!(c.iter().any(|&e| e > before_restart) || c.len() == 1, "{c:?} after {before_restart}");
    // The refusal is on the record, with its reason, exactly once: hospital-c is not selected again.
    let refusals: Vec<String> = entries
        .iter()
        .filter_map(|bytes| match Entry::decode(bytes).unwrap() {
            Entry::UpdateRejected { pdc_id, reason, .. } if pdc_id == "hospital-c" => Some(reason),
            _ => None,
        })
        .collect();
    assert_eq!(refusals.len(), 1, "{refusals:?}");
    assert!(refusals[0].starts_with("privacy budget exhausted: "), "{refusals:?}");
    assert!(refusals[0].contains("beyond its budget of 1.8"), "{refusals:?}");
    let report = audit::verify_parts(&entries, &notes, &keys);
    assert!(report.passed(), "{report}");

    // The hospital's operator sees the same spend from its own file.
    let config = configs[2].to_str().unwrap();
    let (ok, stdout, stderr) = pdc_run(&["hospital", "budget", "--config", config, "--rounds"]);
    assert!(ok, "{stderr}");
    let last = c.last().unwrap();
    assert!(
        stdout.starts_with("hospital-c: dataset \"hospital-c/icu\", budget ε = 1.8 at δ = 0.00001: spent ε = "),
        "{stdout}"
    );
    assert!(stdout.contains(&format!("{last:.4}")), "{stdout}");
    assert!(stdout.contains(&study_id), "{stdout}");
    let (ok, stdout, _) = pdc_run(&["hospital", "budget", "--config", config, "--json"]);
    assert!(ok);
    let json: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(json["budget"]["epsilon"], 1.8);
    assert!(json["spent_epsilon"].as_f64().unwrap() >= *last);
    assert!(json["releases"].as_array().unwrap().len() >= c.len());
}

fn declaration(pdc: &TestPdc, dataset: &str, epsilon: f64, delta: f64) -> pb::BudgetDeclaration {
    let signature = pdc.identity.sign(&signing::budget_message(&pdc.id, dataset, epsilon, delta)).to_vec();
    pb::BudgetDeclaration { pdc_id: pdc.id.clone(), dataset: dataset.to_owned(), epsilon, delta, signature }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_budgets_and_privacy_claims_are_refused_precisely_and_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (url, _stop) = support::start_coordinator(dir.path()).await;
    let manifest = PRIVATE_MANIFEST
        .replace("target_epsilon = 3.0", "noise_multiplier = 1.0")
        .replace("min = 3", "min = 1")
        .replace("max = 5", "max = 2")
        .replace("rounds = 20", "rounds = 2");
    let mut researcher = support::researcher(&url).await;
    let request = pb::CreateStudyRequest {
        manifest_toml: manifest,
        validation_csv: support::breast_cancer_csv().into_bytes(),
        ..Default::default()
    };
    let study_id = researcher.create_study(request).await.unwrap().into_inner().study_id;
    let mut pdc = TestPdc::register(&url, "ward-a").await;

    // Budget declarations: each refusal leaves the ledger as it was.
    let size = log_size(&url).await;
    let stranger = TestPdc::connect(&url, "ward-z").await;
    assert_status(
        pdc.client.declare_budget(declaration(&stranger, "icu", 2.0, 1e-5)).await,
        Code::Unauthenticated,
        "ward-z",
    );
    let mut forged = declaration(&pdc, "icu", 2.0, 1e-5);
    forged.epsilon = 20.0;
    assert_status(pdc.client.declare_budget(forged).await, Code::Unauthenticated, "budget declaration of ward-a");
    for (epsilon, delta, field) in [(f64::NAN, 1e-5, "epsilon"), (-1.0, 1e-5, "epsilon"), (2.0, 1.0, "delta")] {
        assert_status(
            pdc.client.declare_budget(declaration(&pdc, "icu", epsilon, delta)).await,
            Code::InvalidArgument,
            field,
        );
    }
    assert_status(pdc.client.declare_budget(declaration(&pdc, "", 2.0, 1e-5)).await, Code::InvalidArgument, "dataset");
    assert_eq!(log_size(&url).await, size);
    let first = pdc.client.declare_budget(declaration(&pdc, "icu", 2.0, 1e-5)).await.unwrap().into_inner();
    assert!(first.newly_declared);
    let again = pdc.client.declare_budget(declaration(&pdc, "icu", 2.0, 1e-5)).await.unwrap().into_inner();
    assert!(!again.newly_declared);
    let size = log_size(&url).await;
    assert_status(
        pdc.client.declare_budget(declaration(&pdc, "icu", 3.0, 1e-5)).await,
        Code::FailedPrecondition,
        "a budget is declared once",
    );
    assert_eq!(log_size(&url).await, size);

    // ward-b declares no budget; both take part in round 1.
    let mut other = TestPdc::register(&url, "ward-b").await;
    pdc.consent_all().await;
    other.consent_all().await;
    let mut tasks = pdc.tasks().await;
    let mut other_tasks = other.tasks().await;
    researcher.start_study(pb::StudyRef { study_id: study_id.clone() }).await.unwrap();
    let task = tokio::time::timeout(Duration::from_secs(30), tasks.message()).await.unwrap().unwrap().unwrap();
    let other_task =
        tokio::time::timeout(Duration::from_secs(30), other_tasks.message()).await.unwrap().unwrap().unwrap();
    assert_eq!((task.round, other_task.round), (1, 1));
    let model = pdc.download(&task).await;
    let update = vec![0.01f32; model.len()];
    let claim = PrivacyClaim {
        dataset: "icu".into(),
        noise_multiplier: 1.0,
        sampling_rate: 0.05,
        steps: 20,
        clip_norm: 1.0,
        epsilon: 0.5,
        delta: 1e-5,
    };
    let size = log_size(&url).await;
    let attempts = [
        (None, 0.0, "carries no privacy claim"),
        (Some(claim.clone()), 0.5, "the training loss is not released"),
        (Some(PrivacyClaim { dataset: "other".into(), ..claim.clone() }), 0.0, "names dataset \"other\""),
        (Some(PrivacyClaim { noise_multiplier: 0.5, ..claim.clone() }), 0.0, "below the study's 1"),
        (Some(PrivacyClaim { clip_norm: 2.0, ..claim.clone() }), 0.0, "clip norm 2"),
        (Some(PrivacyClaim { epsilon: 2.5, ..claim.clone() }), 0.0, "not within the declared budget"),
        (Some(PrivacyClaim { delta: 1e-4, ..claim.clone() }), 0.0, "not within the declared budget"),
        (Some(PrivacyClaim { sampling_rate: 0.0, ..claim.clone() }), 0.0, "a rate in (0, 1]"),
        (Some(PrivacyClaim { epsilon: f64::INFINITY, ..claim.clone() }), 0.0, "non-finite"),
    ];
    for (privacy, train_loss, fragment) in attempts {
        let upload = Upload {
            study_id: &study_id,
            round: task.round,
            values: &update,
            chunk_bytes: 1 << 20,
            train_loss,
            privacy,
        };
        assert_status(
            support::upload_with(&mut pdc.client, "ward-a", &pdc.identity, upload).await,
            Code::InvalidArgument,
            fragment,
        );
    }
    assert_eq!(log_size(&url).await, size, "refused claims leave the ledger as it was");

    // A PDC that declared no budget cannot contribute to a private study.
    let upload = Upload {
        study_id: &study_id,
        round: 1,
        values: &update,
        chunk_bytes: 1 << 20,
        train_loss: 0.0,
        privacy: Some(claim.clone()),
    };
    let result = support::upload_with(&mut other.client, "ward-b", &other.identity, upload).await;
    assert_status(result, Code::FailedPrecondition, "ward-b has declared no privacy budget");
    assert_eq!(log_size(&url).await, size);

    // An unknown failure kind is refused; ward-b then gives the round up plainly.
    let report = |auth, kind| pb::FailureReport {
        study_id: study_id.clone(),
        round: 1,
        reason: "no budget".into(),
        auth: Some(auth),
        kind,
    };
    let refused = report(other.signed("ReportFailure"), 9);
    assert_status(other.client.report_failure(refused).await, Code::InvalidArgument, "unknown failure kind 9");
    let given_up = report(other.signed("ReportFailure"), 0);
    other.client.report_failure(given_up).await.unwrap();

    // A valid claim is accepted and recorded; the next round may not claim less.
    let upload = Upload {
        study_id: &study_id,
        round: task.round,
        values: &update,
        chunk_bytes: 1 << 20,
        train_loss: 0.0,
        privacy: Some(claim.clone()),
    };
    support::upload_with(&mut pdc.client, "ward-a", &pdc.identity, upload).await.unwrap();
    let task = tokio::time::timeout(Duration::from_secs(30), tasks.message()).await.unwrap().unwrap().unwrap();
    assert_eq!(task.round, 2);
    let size = log_size(&url).await;
    let lower = PrivacyClaim { epsilon: 0.25, ..claim.clone() };
    let upload = Upload {
        study_id: &study_id,
        round: 2,
        values: &update,
        chunk_bytes: 1 << 20,
        train_loss: 0.0,
        privacy: Some(lower),
    };
    assert_status(
        support::upload_with(&mut pdc.client, "ward-a", &pdc.identity, upload).await,
        Code::InvalidArgument,
        "already recorded",
    );
    assert_eq!(log_size(&url).await, size);
}
