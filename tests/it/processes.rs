//! The binary as separate processes: a coordinator and three hospitals on 127.0.0.1, configured from the
//! example files, train a model together; a hospital killed mid-round does not stop the study.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use pdc_proto::pb;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use crate::support::{self, root};

pub(crate) fn pdc() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_pdc"));
    command.kill_on_drop(true).env("PDC_LOG", "info");
    command
}

/// Runs a `pdc` command to completion and returns its standard output.
pub(crate) async fn pdc_output(args: &[&str]) -> String {
    let output = pdc().args(args).output().await.unwrap();
    assert!(output.status.success(), "pdc {args:?} failed: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8(output.stdout).unwrap()
}

/// Starts `pdc coordinator` from examples/coordinator.toml on a free port; returns it and its URL.
async fn start_coordinator(dir: &Path) -> (Child, String) {
    spawn_coordinator(&coordinator_config(dir, "127.0.0.1:0")).await
}

/// Writes a coordinator configuration from examples/coordinator.toml listening on `listen`, keeping its state
/// and key under `dir`; returns its path.
pub(crate) fn coordinator_config(dir: &Path, listen: &str) -> PathBuf {
    let example = std::fs::read_to_string(root().join("examples/coordinator.toml")).unwrap();
    let config = example
        .replace("listen = \"127.0.0.1:50051\"", &format!("listen = \"{listen}\""))
        .replace("data_dir = \"../target/pdc-coordinator\"", "data_dir = \"coordinator\"")
        .replace("key_file = \"../target/pdc-keys/coordinator.key\"", "key_file = \"coordinator.key\"")
        .replace("tick_ms = 100", "tick_ms = 20")
        .replace("metrics_listen = \"127.0.0.1:9464\"", "metrics_listen = \"127.0.0.1:0\"");
    assert_ne!(config, example, "examples/coordinator.toml changed: update this test");
    let path = dir.join("coordinator.toml");
    std::fs::write(&path, config).unwrap();
    path
}

/// Starts `pdc coordinator --config <path>` and waits for it to listen; returns it and its URL.
pub(crate) async fn spawn_coordinator(path: &Path) -> (Child, String) {
    let mut child = pdc().args(["coordinator", "--config"]).arg(path).stdout(Stdio::piped()).spawn().unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line()).await.unwrap().unwrap().unwrap();
    let address = line.strip_prefix("pdc coordinator listening on ").expect("the listening line").to_owned();
    (child, format!("http://{address}"))
}

/// Writes the configuration of hospital `name` from examples/<name>.toml, with its data from `data_dir`, its key
/// under `dir` and `extra` appended; returns its path.
pub(crate) fn hospital_config(dir: &Path, data_dir: &Path, name: &str, url: &str, extra: &str) -> PathBuf {
    let example = std::fs::read_to_string(root().join(format!("examples/{name}.toml"))).unwrap();
    let key = dir.join(format!("{name}.key"));
    let data = data_dir.join(format!("{name}.csv"));
    let config = example
        .replace("coordinator = \"http://127.0.0.1:50051\"", &format!("coordinator = \"{url}\""))
        .replace(&format!("key_file = \"../target/pdc-keys/{name}.key\""), &format!("key_file = {:?}", key))
        .replace(&format!("data = \"data/{name}.csv\""), &format!("data = {:?}", data))
        .replace("poll_ms = 1000", "poll_ms = 100")
        + extra;
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, config).unwrap();
    path
}

/// Starts `pdc hospital` for hospital `name`, from examples/<name>.toml with its data from `data_dir`.
fn start_hospital(dir: &Path, data_dir: &Path, name: &str, url: &str, extra: &str) -> Child {
    let path = hospital_config(dir, data_dir, name, url, extra);
    pdc().args(["hospital", "--config"]).arg(&path).stderr(Stdio::null()).spawn().unwrap()
}

/// Splits the bundled data into a validation set and three hospital tables with `pdc data split`.
pub(crate) async fn split_data(dir: &Path) -> PathBuf {
    let out = dir.join("data");
    let input = root().join("data/breast_cancer_wisconsin.csv");
    pdc_output(&[
        "data",
        "split",
        "--input",
        input.to_str().unwrap(),
        "--label",
        "malignant",
        "--hospitals",
        "3",
        "--alpha",
        "1.0",
        "--out",
        out.to_str().unwrap(),
    ])
    .await;
    out
}

pub(crate) async fn create_study(url: &str, manifest: &str, validation: &Path, dir: &Path) -> String {
    let path = dir.join("study.toml");
    std::fs::write(&path, manifest).unwrap();
    let output = pdc_output(&[
        "study",
        "create",
        "--coordinator",
        url,
        "--manifest",
        path.to_str().unwrap(),
        "--validation",
        validation.to_str().unwrap(),
    ])
    .await;
    output.trim().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_hospital_processes_train_a_model_together() {
    let dir = tempfile::tempdir().unwrap();
    let data = split_data(dir.path()).await;
    let (_coordinator, url) = start_coordinator(dir.path()).await;
    let manifest = std::fs::read_to_string(root().join("examples/study.toml")).unwrap();
    let study_id = create_study(&url, &manifest, &data.join("validation.csv"), dir.path()).await;
    let _hospitals: Vec<Child> = ["hospital-a", "hospital-b", "hospital-c"]
        .iter()
        .map(|name| start_hospital(dir.path(), &data, name, &url, ""))
        .collect();
    let mut researcher = support::researcher(&url).await;
    support::wait_for_status(&mut researcher, &study_id, Duration::from_secs(60), |s| s.consented.len() == 3).await;
    pdc_output(&["study", "start", "--coordinator", &url, &study_id]).await;

    let status = support::wait_for_status(&mut researcher, &study_id, Duration::from_secs(120), |s| {
        s.state != pb::StudyState::Running as i32
    })
    .await;
    assert_eq!(status.state, pb::StudyState::Finished as i32, "{status:#?}");
    assert_eq!(status.rounds.len(), 5);
    let auroc = status.rounds.last().unwrap().validation.as_ref().unwrap().auroc.unwrap();
    assert!(auroc > 0.95, "final validation AUROC {auroc}");
    // Every hospital took part, and the CLI reports it.
    let table = pdc_output(&["study", "status", "--coordinator", &url, &study_id]).await;
    for name in ["hospital-a", "hospital-b", "hospital-c"] {
        assert!(table.contains(name), "{table}");
    }
    assert!(status.hospitals.iter().all(|h| h.rounds_joined >= 4 && h.updates_rejected == 0), "{status:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hospital_killed_mid_round_does_not_stop_the_study() {
    let dir = tempfile::tempdir().unwrap();
    let data = split_data(dir.path()).await;
    let (_coordinator, url) = start_coordinator(dir.path()).await;
    let manifest = std::fs::read_to_string(root().join("examples/study.toml"))
        .unwrap()
        .replace("rounds = 5", "rounds = 3")
        .replace("round_deadline_secs = 20", "round_deadline_secs = 3");
    let study_id = create_study(&url, &manifest, &data.join("validation.csv"), dir.path()).await;
    let crash = "\n[simulate]\ncrash_at_round = 2\n";
    let mut hospitals = vec![
        start_hospital(dir.path(), &data, "hospital-a", &url, ""),
        start_hospital(dir.path(), &data, "hospital-b", &url, ""),
        start_hospital(dir.path(), &data, "hospital-c", &url, crash),
    ];
    let mut researcher = support::researcher(&url).await;
    support::wait_for_status(&mut researcher, &study_id, Duration::from_secs(60), |s| s.consented.len() == 3).await;
    researcher.start_study(pb::StudyRef { study_id: study_id.clone() }).await.unwrap();

    let status = support::wait_for_status(&mut researcher, &study_id, Duration::from_secs(120), |s| {
        s.state != pb::StudyState::Running as i32
    })
    .await;
    assert_eq!(status.state, pb::StudyState::Finished as i32, "{status:#?}");
    assert_eq!(status.rounds.len(), 3);
    let round_2 = &status.rounds[1];
    assert!(round_2.participants.contains(&"hospital-c".to_owned()), "{round_2:#?}");
    assert_eq!(round_2.contributors, ["hospital-a", "hospital-b"]);
    // The crashed process is gone, not merely idle.
    let crashed = hospitals.remove(2).wait().await.unwrap();
    assert!(!crashed.success());
}

/// `pdc study create` prints the manifest's warnings and still creates the study; the recommended study has none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn study_create_prints_the_manifests_warnings() {
    let dir = tempfile::tempdir().unwrap();
    let data = split_data(dir.path()).await;
    let (_coordinator, url) = start_coordinator(dir.path()).await;
    let robust = std::fs::read_to_string(root().join("examples/robust-study.toml")).unwrap();
    let with_adam = robust
        .replace("name = \"breast-cancer-robust\"", "name = \"breast-cancer-robust-adam\"")
        .replace("rule = \"multi_krum\"", "rule = \"multi_krum\"\nserver_optimizer = \"fedadam\"");
    assert_ne!(with_adam, robust);
    let validation = data.join("validation.csv");
    let create = |manifest: &str, name: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, manifest).unwrap();
        pdc()
            .args(["study", "create", "--coordinator", &url, "--manifest"])
            .arg(&path)
            .arg("--validation")
            .arg(&validation)
            .output()
    };
    let plain = create(&robust, "robust.toml").await.unwrap();
    assert!(plain.status.success(), "{}", String::from_utf8_lossy(&plain.stderr));
    assert!(!String::from_utf8_lossy(&plain.stderr).contains("warning"), "{}", String::from_utf8_lossy(&plain.stderr));

    let warned = create(&with_adam, "adam.toml").await.unwrap();
    let stderr = String::from_utf8_lossy(&warned.stderr);
    assert!(warned.status.success(), "{stderr}");
    assert!(!String::from_utf8_lossy(&warned.stdout).trim().is_empty(), "no study id: {warned:?}");
    let warnings: Vec<&str> = stderr.lines().filter(|line| line.starts_with("warning: ")).collect();
    assert_eq!(warnings.len(), 1, "{stderr}");
    assert!(
        warnings[0].starts_with("warning: aggregation.server_optimizer = \"fedadam\" with the anomaly check")
            && warnings[0].contains("flagged updates are left out of the aggregate, suspend a hospital after 3 rounds"),
        "{stderr}"
    );

    // The study's status repeats them, for whoever watches it later.
    let adam_id = String::from_utf8_lossy(&warned.stdout).trim().to_owned();
    let plain_id = String::from_utf8_lossy(&plain.stdout).trim().to_owned();
    let status = pdc_output(&["study", "status", "--coordinator", &url, &adam_id]).await;
    assert!(status.contains(&format!("  {}", warnings[0])), "{status}");
    let status = pdc_output(&["study", "status", "--coordinator", &url, &plain_id]).await;
    assert!(!status.contains("warning"), "{status}");
}
