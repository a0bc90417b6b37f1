//! DP statistics end to end: a study's federated standardisation pooled from the hospitals' signed feature
//! summaries (charged to their budgets, recorded, audited and replayed), and a researcher's feasibility query
//! answered with noisy cohort counts by the hospitals whose policy allows it; bad releases are refused precisely
//! and change nothing.

use std::path::{Path, PathBuf};
use std::time::Duration;

use pdc_client::spend::SpendStore;
use pdc_coordinator::archive::UpdateArchive;
use pdc_coordinator::replay::replay_study;
use pdc_ledger::audit;
use pdc_ledger::entry::Entry;
use pdc_ledger::signing::{self, StatisticKind, StatisticsRelease};
use pdc_models::Schema;
use pdc_proto::pb;
use tonic::Code;

use crate::ledger::{fetch, pdc_run};
use crate::privacy::{create_and_start, hospital_config, split, start_agent};
use crate::support::{self, TestPdc, assert_status};

/// The sensitivity margin `pdc_privacy::stats` rounds every sensitivity up by.
const MARGIN: f64 = 1.0 + 1.0 / (1u64 << 40) as f64;

fn schema() -> Schema {
    let text = support::breast_cancer_csv();
    let header: Vec<String> = text.lines().next().unwrap().split(',').map(str::to_owned).collect();
    let label = "malignant".to_owned();
    Schema { features: header.iter().filter(|c| **c != label).cloned().collect(), label }
}

fn read_table(path: &Path) -> pdc_models::Dataset {
    pdc_models::load_csv(path, &schema()).unwrap()
}

/// Clamping bounds for every feature: `[0, 1.25 × the column's maximum]`. A real study takes them from the
/// literature; a test may look at its own data.
fn bounds() -> Vec<(String, f64, f64)> {
    let table = pdc_models::parse_csv(&support::breast_cancer_csv(), "table", &schema()).unwrap();
    let d = table.n_features();
    (0..d)
        .map(|j| {
            let max = (0..table.n_rows()).map(|i| f64::from(table.row(i)[j])).fold(0.0, f64::max);
            (table.feature_names[j].clone(), 0.0, (max * 1.25 * 1000.0).ceil() / 1000.0)
        })
        .collect()
}

fn manifest() -> String {
    let bounds: Vec<String> =
        bounds().iter().map(|(name, lower, upper)| format!("{name} = [{lower}, {upper}]")).collect();
    format!(
        r#"
name = "federated-standardisation"
seed = 11
model = {{ kind = "mlp", hidden = [8] }}
[data]
task = "binary_classification"
label = "malignant"
[training]
rounds = 8
local_epochs = 1
batch_size = 16
learning_rate = 0.1
[participants]
min = 3
max = 3
round_deadline_secs = 30
[privacy]
clip_norm = 1.0
target_epsilon = 3.0
delta = 1e-5
[federated_standardization]
epsilon = 4.0
delta = 1e-5
bounds = {{ {} }}
"#,
        bounds.join(", ")
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_federated_standardisation_pools_signed_dp_summaries_charged_to_every_budget_and_replays() {
    let dir = tempfile::tempdir().unwrap();
    let (url, _stop) = support::start_coordinator(dir.path()).await;
    let (parts, validation) = split(dir.path(), 3, 5);
    let names = ["hospital-a", "hospital-b", "hospital-c"];
    let configs: Vec<PathBuf> =
        names.iter().zip(&parts).map(|(name, data)| hospital_config(dir.path(), name, &url, data, 8.0)).collect();
    let agents: Vec<_> = configs.iter().map(|config| start_agent(config)).collect();
    let manifest = manifest();
    let study_id = create_and_start(&url, &manifest, validation, 3).await;
    let mut researcher = support::researcher(&url).await;
    let status = support::wait_for_status(&mut researcher, &study_id, Duration::from_secs(120), |s| {
        s.state == pb::StudyState::Finished as i32
    })
    .await;
    for agent in agents {
        agent.abort();
    }
    assert_eq!(status.rounds.len(), 8, "{status:#?}");
    // Every round's model was evaluated on the validation set, standardised with the pooled estimate. No AUROC
    // floor: with 30 features and ~150 rows per hospital the noisy variances can wreck a run (0.45 to 0.99 was
    // measured over repeated runs), which is why the validation-set standardisation stays the default.
    assert!(status.rounds.iter().all(|r| r.validation.unwrap().auroc.is_some_and(f64::is_finite)), "{status:#?}");

    // The ledger: three signed summaries and the fit, all before the first round.
    let (keys, bytes, notes) = fetch(&url).await;
    let entries: Vec<Entry> = bytes.iter().map(|b| Entry::decode(b).unwrap()).collect();
    let first_round = entries.iter().position(|e| matches!(e, Entry::RoundOpened { .. })).unwrap();
    let releases: Vec<(usize, &StatisticsRelease)> = entries
        .iter()
        .enumerate()
        .filter_map(|(index, entry)| match entry {
            Entry::StatisticsReleased { release, .. } => Some((index, release)),
            _ => None,
        })
        .collect();
    assert_eq!(releases.len(), 3);
    let (fitted_at, contributors, mean, std) = entries
        .iter()
        .enumerate()
        .find_map(|(index, entry)| match entry {
            Entry::StandardizationFitted { contributors, mean, std, .. } => Some((index, contributors, mean, std)),
            _ => None,
        })
        .expect("a recorded fit");
    assert_eq!(contributors, &names.map(str::to_owned));
    assert!(releases.iter().all(|(index, _)| *index < fitted_at) && fitted_at < first_round);
    let noise_multiplier = releases[0].1.noise_multiplier;
    for (_, release) in &releases {
        assert_eq!(release.kind, StatisticKind::FeatureSummary);
        assert_eq!(release.scope, study_id);
        assert_eq!(release.values.len(), 61);
        assert_eq!(release.noise_multiplier, noise_multiplier);
    }

    // The pooled estimate is within six standard deviations of the noise of the exact pooled statistics of the
    // clamped tables.
    let tables: Vec<pdc_models::Dataset> = parts.iter().map(|p| read_table(p)).collect();
    let n: f64 = tables.iter().map(|t| t.n_rows() as f64).sum();
    let noise = noise_multiplier * (61f64).sqrt() * MARGIN * 3f64.sqrt() / n;
    for (j, (name, lower, upper)) in bounds().iter().enumerate() {
        let (centre, radius) = ((lower + upper) / 2.0, (upper - lower) / 2.0);
        let values: Vec<f64> = tables
            .iter()
            .flat_map(|t| (0..t.n_rows()).map(move |i| f64::from(t.row(i)[j]).clamp(*lower, *upper)))
            .collect();
        let true_mean = values.iter().sum::<f64>() / n;
        let true_var = values.iter().map(|v| (v - true_mean).powi(2)).sum::<f64>() / n;
        let scaled = (true_mean - centre) / radius;
        assert!((mean[j] - true_mean).abs() <= 6.0 * noise * radius, "{name}: mean {} vs {true_mean}", mean[j]);
        let var_bound = 6.0 * (noise / 2.0 + 2.0 * (scaled.abs() + 6.0 * noise) * noise) * radius * radius;
        assert!((std[j].powi(2) - true_var).abs() <= var_bound.max(1e-6 * radius * radius), "{name}: std {}", std[j]);
    }

    // Each release is a spend: it comes first in every spend file, and the training rounds continue from it,
    // within the budget.
    for (name, config) in names.iter().zip(&configs) {
        let store = SpendStore::load(&config.parent().unwrap().join(format!("{name}.spend.json"))).unwrap();
        let first = &store.events()[0];
        assert_eq!((first.study_id.as_str(), first.round, first.sampling_rate, first.steps), (&*study_id, 0, 1.0, 1));
        let release = releases.iter().find(|(_, r)| r.pdc_id == *name).unwrap().1;
        assert_eq!(release.epsilon, first.epsilon_after);
        assert!(store.spent() > release.epsilon && store.spent() <= 8.0);
    }
    let report = audit::verify_parts(&bytes, &notes, &keys);
    assert!(report.passed(), "{report}");

    // A board replays the study from the ledger and the archives: the fit is the pooling of the signed summaries,
    // and every round follows from it.
    let data_dir = dir.path().join("coordinator");
    let archive = UpdateArchive::open_read_only(&data_dir.join("updates")).unwrap();
    let replayed = replay_study(&entries, &study_id, &data_dir.join("studies").join(&study_id), &archive).unwrap();
    assert!(replayed.passed(), "{replayed}");
    assert_eq!(replayed.rounds.len(), 8);

    // A ledger whose fit was altered does not replay.
    let mut forged = entries.clone();
    let Entry::StandardizationFitted { mean, .. } = &mut forged[fitted_at] else { unreachable!() };
    mean[0] += 0.5;
    let replayed = replay_study(&forged, &study_id, &data_dir.join("studies").join(&study_id), &archive).unwrap();
    assert!(!replayed.passed());
    assert!(replayed.to_string().contains("not the pooling of the recorded feature summaries"), "{replayed}");
}

/// A hospital's config with `feasibility_epsilon` set to `cap` (or absent).
fn feasibility_config(dir: &Path, name: &str, url: &str, data: &Path, cap: Option<f64>) -> PathBuf {
    let path = hospital_config(dir, name, url, data, 2.0);
    if let Some(cap) = cap {
        let mut text = std::fs::read_to_string(&path).unwrap();
        text += &format!("feasibility_epsilon = {cap}\n");
        std::fs::write(&path, text).unwrap();
    }
    path
}

/// `pdc`'s signed cohort counts for `scope`.
fn cohort_release(
    pdc: &TestPdc,
    scope: &str,
    noise_multiplier: f64,
    values: Vec<f64>,
    epsilon: f64,
) -> pb::StatisticsSubmission {
    signed_release(pdc, scope, StatisticKind::CohortCounts, noise_multiplier, values, epsilon)
}

/// `pdc`'s signed release of `kind` for `scope`, on its table "manual".
fn signed_release(
    pdc: &TestPdc,
    scope: &str,
    kind: StatisticKind,
    noise_multiplier: f64,
    values: Vec<f64>,
    epsilon: f64,
) -> pb::StatisticsSubmission {
    let release = StatisticsRelease {
        scope: scope.to_owned(),
        pdc_id: pdc.id.clone(),
        kind,
        dataset: "manual".into(),
        noise_multiplier,
        values,
        epsilon,
        delta: 1e-5,
    };
    let signature = pdc.identity.sign(&release.signing_bytes()).to_vec();
    pb::StatisticsSubmission {
        scope: release.scope,
        pdc_id: release.pdc_id,
        kind: match kind {
            StatisticKind::FeatureSummary => pb::StatisticKind::FeatureSummary,
            StatisticKind::CohortCounts => pb::StatisticKind::CohortCounts,
        } as i32,
        dataset: release.dataset,
        noise_multiplier,
        values: release.values,
        epsilon,
        delta: 1e-5,
        signature,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_feasibility_query_gets_noisy_counts_from_willing_hospitals_and_bad_releases_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (url, _stop) = support::start_coordinator(dir.path()).await;
    let (parts, _) = split(dir.path(), 3, 9);
    // hospital-a answers queries up to ε = 0.5; hospital-b answers none; hospital-c only up to ε = 0.01.
    let caps = [("hospital-a", Some(0.5)), ("hospital-b", None), ("hospital-c", Some(0.01))];
    let configs: Vec<PathBuf> = caps
        .iter()
        .zip(&parts)
        .map(|((name, cap), data)| feasibility_config(dir.path(), name, &url, data, *cap))
        .collect();
    let agents: Vec<_> = configs.iter().map(|config| start_agent(config)).collect();
    // A hand-driven PDC with a declared budget, connected but answering only what the test sends.
    let mut manual = TestPdc::register(&url, "manual").await;
    let message = signing::budget_message("manual", "manual", 1.0, 1e-5);
    let declaration = pb::BudgetDeclaration {
        pdc_id: "manual".into(),
        dataset: "manual".into(),
        epsilon: 1.0,
        delta: 1e-5,
        signature: manual.identity.sign(&message).to_vec(),
    };
    manual.client.declare_budget(declaration).await.unwrap();
    let mut tasks = manual.tasks().await;
    // And one that is asked but never answers, which keeps the query open until its timeout.
    let mut silent = TestPdc::register(&url, "silent").await;
    let _silent_tasks = silent.tasks().await;
    // Every agent is connected once it has declared its budget.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while fetch(&url).await.1.iter().filter(|b| matches!(Entry::decode(b), Ok(Entry::BudgetDeclared { .. }))).count()
        < 4
    {
        assert!(tokio::time::Instant::now() < deadline, "the agents did not connect");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;

    // The researcher asks; the query runs while the manual PDC tries bad answers.
    let coordinator = url.clone();
    let query = tokio::spawn(async move {
        let (ok, stdout, stderr) = tokio::task::spawn_blocking(move || {
            pdc_run(&[
                "study",
                "feasibility",
                "--coordinator",
                &coordinator,
                "--label",
                "malignant",
                "--epsilon",
                "0.2",
                "--timeout",
                "4",
            ])
        })
        .await
        .unwrap();
        assert!(ok, "{stderr}");
        stdout
    });
    let task = support::next_task(&mut tasks).await;
    let asked = task.query.clone().expect("a statistics query");
    assert_eq!(
        (task.round, asked.kind, asked.label.as_str()),
        (0, pb::StatisticKind::CohortCounts as i32, "malignant")
    );
    let scope = task.study_id.clone();
    assert!(scope.starts_with("feasibility-"), "{scope}");
    let z = asked.noise_multiplier;

    let bad = [
        (cohort_release(&manual, &scope, z * 0.5, vec![3.0, 4.0], 0.5), Code::InvalidArgument, "not the query's noise"),
        (cohort_release(&manual, &scope, z, vec![3.0, 4.0, 5.0], 0.5), Code::InvalidArgument, "2 values, not 3"),
        (cohort_release(&manual, &scope, z, vec![3.0, f64::NAN], 0.5), Code::InvalidArgument, "not finite"),
        (cohort_release(&manual, &scope, z, vec![3.0, 4.0], 1.5), Code::InvalidArgument, "not within the declared"),
        (cohort_release(&manual, "feasibility-none", z, vec![3.0, 4.0], 0.5), Code::NotFound, "feasibility-none"),
    ];
    for (submission, code, fragment) in bad {
        assert_status(manual.client.submit_statistics(submission).await, code, fragment);
    }
    let mut forged = cohort_release(&manual, &scope, z, vec![3.0, 4.0], 0.5);
    forged.values[0] = 30.0;
    assert_status(manual.client.submit_statistics(forged).await, Code::Unauthenticated, "statistics of manual");
    let summary = signed_release(&manual, "no-such-study", StatisticKind::FeatureSummary, z, vec![1.0, 2.0, 3.0], 0.5);
    assert_status(manual.client.submit_statistics(summary).await, Code::NotFound, "unknown study no-such-study");
    let mut unknown_kind = cohort_release(&manual, &scope, z, vec![3.0, 4.0], 0.5);
    unknown_kind.kind = 7;
    assert_status(
        manual.client.submit_statistics(unknown_kind).await,
        Code::InvalidArgument,
        "unknown statistic kind 7",
    );
    // The agents answer meanwhile, so the ledger grows; none of the refused releases is on it.
    let manual_releases = |bytes: &[Vec<u8>]| {
        bytes
            .iter()
            .filter(|b| matches!(Entry::decode(b), Ok(Entry::StatisticsReleased { release, .. }) if release.pdc_id == "manual"))
            .count()
    };
    assert_eq!(manual_releases(&fetch(&url).await.1), 0, "no refused release is recorded");

    // A good answer counts once; its replay is refused.
    let good = cohort_release(&manual, &scope, z, vec![10.5, 19.25], 0.5);
    assert!(manual.client.submit_statistics(good.clone()).await.unwrap().into_inner().answers >= 1);
    assert_status(manual.client.submit_statistics(good).await, Code::AlreadyExists, "already answered");

    let stdout = query.await.unwrap();
    let line =
        |name: &str| stdout.lines().find(|l| l.trim_start().starts_with(name)).unwrap_or_else(|| panic!("{stdout}"));
    assert!(stdout.starts_with(&format!("feasibility query {scope} (noise multiplier ")), "{stdout}");
    assert!(line("hospital-b").contains("answers no feasibility queries"), "{stdout}");
    assert!(line("hospital-c").contains("above this hospital's cap of 0.01"), "{stdout}");
    assert!(line("silent").contains("no answer in time"), "{stdout}");
    assert!(line("total").contains("2 of 5 answered"), "{stdout}");
    // hospital-a's counts are its true counts plus noise of the stated size.
    let table = read_table(&parts[0]);
    let positives = table.labels.iter().filter(|&&y| y == 1.0).count() as f64;
    let negatives = table.n_rows() as f64 - positives;
    let columns: Vec<&str> = line("hospital-a").split_whitespace().collect();
    let (released_positives, released_negatives, sd): (f64, f64, f64) =
        (columns[2].parse().unwrap(), columns[3].parse().unwrap(), columns[4].parse().unwrap());
    assert!((sd - z).abs() < 0.1, "the noise sd is z times the sensitivity 1: {sd} vs {z}");
    assert!((released_positives - positives).abs() <= 6.0 * sd + 0.5, "{released_positives} vs {positives}");
    assert!((released_negatives - negatives).abs() <= 6.0 * sd + 0.5, "{released_negatives} vs {negatives}");

    // Once the query closed, late answers are refused as unknown.
    let late = cohort_release(&manual, &scope, z, vec![1.0, 1.0], 0.6);
    assert_status(manual.client.submit_statistics(late).await, Code::NotFound, "no open feasibility query");
    for agent in agents {
        agent.abort();
    }

    // The ledger holds the two releases, and hospital-a's spend file the charge; the audit passes.
    let (keys, bytes, notes) = fetch(&url).await;
    let released: Vec<String> = bytes
        .iter()
        .filter_map(|b| match Entry::decode(b).unwrap() {
            Entry::StatisticsReleased { release, .. } => Some(release.pdc_id),
            _ => None,
        })
        .collect();
    assert_eq!(released.len(), 2, "{released:?}");
    assert!(released.contains(&"hospital-a".to_owned()) && released.contains(&"manual".to_owned()));
    let store = SpendStore::load(&configs[0].parent().unwrap().join("hospital-a.spend.json")).unwrap();
    assert_eq!(store.events().len(), 1);
    assert_eq!((store.events()[0].study_id.as_str(), store.events()[0].round), (&*scope, 0));
    assert!((0.19..=0.2 + 1e-9).contains(&store.spent()), "{}", store.spent());
    // The hospital's operator sees the release as a statistics charge of the query, not a training round.
    let (ok, stdout, stderr) = pdc_run(&["hospital", "budget", "--config", configs[0].to_str().unwrap()]);
    assert!(ok, "{stderr}");
    let row: Vec<&str> =
        stdout.lines().find(|l| l.contains(&scope)).unwrap_or_else(|| panic!("{stdout}")).split_whitespace().collect();
    assert_eq!(&row[1..3], ["0", "1"], "{stdout}");
    for name in ["hospital-b", "hospital-c"] {
        let path = dir.path().join(name).join(format!("{name}.spend.json"));
        assert!(SpendStore::load(&path).map(|s| s.events().is_empty()).unwrap_or(true), "{name} spent nothing");
    }
    let report = audit::verify_parts(&bytes, &notes, &keys);
    assert!(report.passed(), "{report}");
}
