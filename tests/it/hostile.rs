//! Hostile input at the coordinator's edges (issue 21): manifests that would exhaust its memory, an update header
//! of a trillion parameters, an upload whose header never comes, a stored study over the limits on restart, and
//! a coordinator without a consortium asked to listen beyond loopback. Each refusal is a precise status, the
//! coordinator still answers, and the ledger and the studies are as they were.

use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use pdc_coordinator::access::Caller;
use pdc_coordinator::limits::Limits;
use pdc_coordinator::{Coordinator, CoordinatorConfig};
use pdc_ledger::signing::Contribution;
use pdc_proto::pb;
use tokio::io::{AsyncBufReadExt, BufReader};
use tonic::Code;

use crate::processes::pdc;
use crate::support::{self, TestPdc, assert_status};

const MANIFEST: &str = r#"
name = "hostile"
seed = 1
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
min = 1
max = 1
round_deadline_secs = 60
"#;

/// The breast-cancer table has 30 features, so logistic regression has 31 parameters.
const LOGISTIC_PARAMETERS: u64 = 31;

fn config(data_dir: &Path, limits: Limits) -> CoordinatorConfig {
    let mut config = CoordinatorConfig::new(data_dir.to_owned());
    config.tick_interval = Duration::from_millis(20);
    config.limits = limits;
    config
}

fn create_request(manifest: &str) -> pb::CreateStudyRequest {
    pb::CreateStudyRequest {
        manifest_toml: manifest.to_owned(),
        validation_csv: support::breast_cancer_csv().into_bytes(),
        ..Default::default()
    }
}

/// What a refusal must leave as it was: the ledger's size, the studies a PDC is offered, and the study folders
/// on disk.
#[derive(Debug, PartialEq)]
struct Observed {
    ledger_size: u64,
    studies: Vec<(String, String)>,
    study_folders: usize,
}

async fn observe(url: &str, pdc: &mut TestPdc, data_dir: &Path) -> Observed {
    let listed = pdc.client.list_studies(pdc.signed("ListStudies")).await.unwrap().into_inner().studies;
    let folders = std::fs::read_dir(data_dir.join("studies")).map_or(0, |entries| entries.count());
    Observed {
        ledger_size: support::log_size(url).await,
        studies: listed.into_iter().map(|study| (study.study_id, study.manifest_hash)).collect(),
        study_folders: folders,
    }
}

/// A coordinator with one study and one registered PDC, the state every manifest refusal is checked against.
async fn coordinator_with_a_study(
    dir: &Path,
) -> (String, tokio::sync::oneshot::Sender<()>, Arc<Coordinator>, TestPdc, Observed) {
    let data_dir = dir.join("coordinator");
    let (url, stop, coordinator) =
        support::serve_coordinator(config(&data_dir, Limits::default()), ([127, 0, 0, 1], 0).into()).await;
    let mut researcher = support::researcher(&url).await;
    researcher.create_study(create_request(MANIFEST)).await.unwrap();
    let mut pdc = TestPdc::register(&url, "hospital-a").await;
    let before = observe(&url, &mut pdc, &data_dir).await;
    assert_eq!(before.studies.len(), 1);
    assert_eq!(before.study_folders, 1);
    (url, stop, coordinator, pdc, before)
}

/// The issue's report: `hidden = [4096, …]` with 2,000 layers aborted the coordinator allocating 134,183,895,044
/// bytes. It is refused before anything is allocated, naming the limit, and the coordinator goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_two_thousand_layer_manifest_is_refused_naming_the_limit() {
    let dir = tempfile::tempdir().unwrap();
    let (url, _stop, _coordinator, mut pdc, before) = coordinator_with_a_study(dir.path()).await;
    let hidden = vec!["4096"; 2000].join(", ");
    let manifest = MANIFEST
        .replace("name = \"hostile\"", "name = \"deep\"")
        .replace("kind = \"logistic_regression\"", &format!("kind = \"mlp\", hidden = [{hidden}]"));
    assert!(manifest.len() > 10_000 && manifest.len() < Limits::default().max_manifest_bytes);
    let mut researcher = support::researcher(&url).await;
    let status = assert_status(
        researcher.create_study(create_request(&manifest)).await,
        Code::InvalidArgument,
        "limits.max_parameters",
    );
    // 33,545,973,761 parameters × 4 bytes = the 134,183,895,044 bytes of the report.
    assert_eq!(
        status.message(),
        "invalid manifest: the model has 33,545,973,761 parameters; this coordinator's limit \
         (limits.max_parameters) is 50,000,000"
    );
    assert_eq!(observe(&url, &mut pdc, &dir.path().join("coordinator")).await, before);
    // The coordinator still answers, and still creates studies within its limits.
    let created = researcher
        .create_study(create_request(&MANIFEST.replace("name = \"hostile\"", "name = \"after\"")))
        .await
        .unwrap()
        .into_inner();
    assert!(created.study_id.starts_with("after-"));
}

/// Widths whose product does not fit 64 bits are counted with checked arithmetic: refused, never wrapped into a
/// small count or a panic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_absurd_width_is_refused_without_overflow() {
    let dir = tempfile::tempdir().unwrap();
    let (url, _stop, _coordinator, mut pdc, before) = coordinator_with_a_study(dir.path()).await;
    let mut researcher = support::researcher(&url).await;
    let absurd = MANIFEST
        .replace("name = \"hostile\"", "name = \"wide\"")
        .replace("kind = \"logistic_regression\"", "kind = \"mlp\", hidden = [9223372036854775807, 4294967296]");
    let status =
        assert_status(researcher.create_study(create_request(&absurd)).await, Code::InvalidArgument, "limits.");
    assert_eq!(
        status.message(),
        "invalid manifest: the model has more than 18,446,744,073,709,551,615 parameters; this coordinator's limit \
         (limits.max_parameters) is 50,000,000"
    );
    // One layer a little too wide, with a model small enough: the width's own limit.
    let wide = MANIFEST
        .replace("name = \"hostile\"", "name = \"wide\"")
        .replace("kind = \"logistic_regression\"", "kind = \"mlp\", hidden = [4097]");
    let status = assert_status(researcher.create_study(create_request(&wide)).await, Code::InvalidArgument, "4,097");
    assert_eq!(
        status.message(),
        "invalid manifest: model.hidden layer 0 is 4,097 wide; this coordinator's limit (limits.max_hidden_width) \
         is 4,096"
    );
    // A manifest text over its size limit is refused before it is parsed.
    let long = format!("{MANIFEST}{}", "# padding\n".repeat(7_000));
    assert_status(researcher.create_study(create_request(&long)).await, Code::InvalidArgument, "the manifest is 70,");
    assert_eq!(observe(&url, &mut pdc, &dir.path().join("coordinator")).await, before);
}

/// An update header claiming 10^12 parameters is refused from the header alone (nothing is allocated or
/// written for it); the refusal is recorded as the rejection it is, and the round goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_update_header_of_a_trillion_parameters_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("coordinator");
    let (url, _stop, _coordinator) =
        support::serve_coordinator(config(&data_dir, Limits::default()), ([127, 0, 0, 1], 0).into()).await;
    let mut researcher = support::researcher(&url).await;
    let study_id = researcher.create_study(create_request(MANIFEST)).await.unwrap().into_inner().study_id;
    let (mut pdcs, mut streams) = support::consenting_pdcs(&url, &["hospital-a"]).await;
    researcher.start_study(pb::StudyRef { study_id: study_id.clone() }).await.unwrap();
    let task = support::next_task(&mut streams[0]).await;
    assert_eq!(task.n_parameters, LOGISTIC_PARAMETERS);
    let pdc = &mut pdcs[0];
    let ledger_size = support::log_size(&url).await;

    let contribution = Contribution {
        study_id: study_id.clone(),
        round: 1,
        pdc_id: pdc.id.clone(),
        n_examples: 10,
        n_parameters: 1_000_000_000_000,
        update_hash: [7; 32],
        train_loss: 0.5,
        privacy: None,
    };
    let signature = pdc.identity.sign(&contribution.signing_bytes());
    let header = pdc_client::agent::update_header(&contribution, &signature, pb::Compression::None);
    let parts = vec![pb::UpdatePart { part: Some(pb::update_part::Part::Header(header)) }];
    let status = assert_status(
        pdc.client.submit_update(futures::stream::iter(parts)).await,
        Code::InvalidArgument,
        "update has 1000000000000 parameters",
    );
    assert_eq!(
        status.message(),
        format!(
            "invalid update from hospital-a: update has 1000000000000 parameters, the study's model has \
             {LOGISTIC_PARAMETERS}"
        )
    );
    // One entry, the rejection; no upload was started, and the PDC is still a participant of round 1.
    assert_eq!(support::log_size(&url).await, ledger_size + 1);
    assert_eq!(incoming_uploads(&data_dir), 0);
    let status = researcher.get_status(pb::StudyRef { study_id: study_id.clone() }).await.unwrap().into_inner();
    assert_eq!((status.current_round, status.hospitals[0].updates_rejected), (1, 1));
    let model = pdc.download(&task).await;
    let receipt = pdc.submit(&study_id, 1, &vec![0.01; model.len()]).await.unwrap();
    assert_eq!(receipt.received_in_round, 1);
}

/// Files of uploads in progress: an upload refused before its body leaves none.
fn incoming_uploads(data_dir: &Path) -> usize {
    std::fs::read_dir(data_dir.join("updates/incoming")).map_or(0, |entries| entries.count())
}

/// An upload stream whose header never arrives is ended with `DeadlineExceeded` once the first-message deadline
/// passes, and leaves nothing behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_whose_header_never_arrives_is_ended_at_the_deadline() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("coordinator");
    let limits = Limits { first_message_timeout_ms: 300, ..Limits::default() };
    let (url, _stop, _coordinator) =
        support::serve_coordinator(config(&data_dir, limits), ([127, 0, 0, 1], 0).into()).await;
    let mut researcher = support::researcher(&url).await;
    let study_id = researcher.create_study(create_request(MANIFEST)).await.unwrap().into_inner().study_id;
    let (mut pdcs, _streams) = support::consenting_pdcs(&url, &["hospital-a"]).await;
    let pdc = &mut pdcs[0];
    let ledger_size = support::log_size(&url).await;

    let started = Instant::now();
    let silent = futures::stream::pending::<pb::UpdatePart>();
    let answer = tokio::time::timeout(Duration::from_secs(20), pdc.client.submit_update(silent))
        .await
        .expect("the coordinator ends the stream itself");
    let elapsed = started.elapsed();
    let status = assert_status(answer, Code::DeadlineExceeded, "no upload header");
    assert_eq!(status.message(), "no upload header within 300 ms (limits.first_message_timeout_ms)");
    assert!(elapsed >= Duration::from_millis(300), "ended after {elapsed:?}, before the deadline");
    assert!(elapsed < Duration::from_secs(10), "ended after {elapsed:?}");

    // Nothing behind: no upload file, no ledger entry, the study as it was; the coordinator answers.
    assert_eq!(incoming_uploads(&data_dir), 0);
    assert_eq!(support::log_size(&url).await, ledger_size);
    let status = researcher.get_status(pb::StudyRef { study_id }).await.unwrap().into_inner();
    assert_eq!(status.state, pb::StudyState::Recruiting as i32);
    assert!(status.hospitals.iter().all(|hospital| hospital.updates_rejected == 0));
}

/// One connection may have `max_requests_per_connection` requests in handlers at once: one more is refused at
/// once with `ResourceExhausted` rather than queued, and the connection serves again when a slot frees.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_over_the_per_connection_limit_are_refused_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("coordinator");
    let limits = Limits { max_requests_per_connection: 1, first_message_timeout_ms: 3_000, ..Limits::default() };
    let (url, _stop, _coordinator) =
        support::serve_coordinator(config(&data_dir, limits), ([127, 0, 0, 1], 0).into()).await;
    let pdc = TestPdc::connect(&url, "hospital-a").await;
    // An upload without a header holds the connection's one slot until its deadline.
    let mut holder = pdc.client.clone();
    let held = tokio::spawn(async move { holder.submit_update(futures::stream::pending::<pb::UpdatePart>()).await });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let started = Instant::now();
    let refused = pdc.client.clone().submit_update(futures::stream::pending::<pb::UpdatePart>()).await;
    assert_status(refused, Code::ResourceExhausted, "Too many active requests for the connection");
    assert!(started.elapsed() < Duration::from_secs(2), "refused at once, not queued: {:?}", started.elapsed());
    assert_status(held.await.unwrap(), Code::DeadlineExceeded, "no upload header within 3000 ms");
    // The slot is free again: the same connection registers the PDC.
    let public_key = pdc.identity.public_key().to_bytes();
    let signature = pdc.identity.sign(&pdc_ledger::signing::register_message(&pdc.id, &public_key)).to_vec();
    let request = pb::RegisterRequest { pdc_id: pdc.id.clone(), public_key: public_key.to_vec(), signature };
    assert!(pdc.client.clone().register(request).await.unwrap().into_inner().newly_registered);
    assert_eq!(support::log_size(&url).await, 1);
}

/// A study stored under higher limits than the coordinator restarts with never stops it from starting: it is
/// left out (with its reason logged), the other studies are served, nothing on disk or on the ledger changes,
/// and a restart with the limits raised again brings it back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stored_study_over_the_limits_is_left_out_on_restart() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("coordinator");
    // 30 × 1024 + 1024 weights and biases, then 1024 + 1: 32,769 parameters.
    let big_manifest = MANIFEST
        .replace("name = \"hostile\"", "name = \"big\"")
        .replace("kind = \"logistic_regression\"", "kind = \"mlp\", hidden = [1024]");
    let raised = Limits { max_parameters: 40_000, ..Limits::default() };
    let lowered = Limits { max_parameters: 30_000, ..Limits::default() };
    let validation = support::breast_cancer_csv().into_bytes();

    let coordinator = Coordinator::new(config(&data_dir, raised.clone())).unwrap();
    let (big, _, _) = coordinator.create_study(&Caller::Open, &big_manifest, &validation, None, false).unwrap();
    let (small, _, _) = coordinator.create_study(&Caller::Open, MANIFEST, &validation, None, false).unwrap();
    let ledger_size = coordinator.ledger().size();
    drop(coordinator);
    let archived = std::fs::read(data_dir.join("studies").join(&big).join("manifest.toml")).unwrap();

    // Restarted under the lower limit: it starts, serves the small study, and leaves the big one out.
    let (url, stop, coordinator) =
        support::serve_coordinator(config(&data_dir, lowered.clone()), ([127, 0, 0, 1], 0).into()).await;
    let mut researcher = support::researcher(&url).await;
    let status = researcher.get_status(pb::StudyRef { study_id: small.clone() }).await.unwrap().into_inner();
    assert_eq!(status.state, pb::StudyState::Recruiting as i32);
    assert_status(
        researcher.get_status(pb::StudyRef { study_id: big.clone() }).await,
        Code::NotFound,
        &format!("unknown study {big}"),
    );
    // The same manifest sent again is refused by the same limit.
    let status = assert_status(
        researcher.create_study(create_request(&big_manifest)).await,
        Code::InvalidArgument,
        "limits.max_parameters",
    );
    assert_eq!(
        status.message(),
        "invalid manifest: the model has 32,769 parameters; this coordinator's limit (limits.max_parameters) is \
         30,000"
    );
    let mut pdc = TestPdc::register(&url, "hospital-a").await;
    let listed = pdc.client.list_studies(pdc.signed("ListStudies")).await.unwrap().into_inner().studies;
    assert_eq!(listed.iter().map(|study| study.study_id.as_str()).collect::<Vec<_>>(), [small.as_str()]);
    // Registering was the only change to the ledger; the big study's archive is as it was.
    assert_eq!(support::log_size(&url).await, ledger_size + 1);
    assert_eq!(std::fs::read(data_dir.join("studies").join(&big).join("manifest.toml")).unwrap(), archived);
    drop((researcher, pdc));
    shut_down(stop, coordinator).await;

    // With the limit raised again, the big study is back.
    let coordinator = Coordinator::new(config(&data_dir, raised)).unwrap();
    let status = coordinator.status(&big).unwrap();
    assert_eq!(status.name, "big");
    assert_eq!(coordinator.ledger().size(), ledger_size + 1);
}

/// Stops a served coordinator and waits until nothing holds it, so that its RocksDB folders are closed.
async fn shut_down(stop: tokio::sync::oneshot::Sender<()>, coordinator: Arc<Coordinator>) {
    drop(stop);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while Arc::strong_count(&coordinator) > 1 {
        assert!(tokio::time::Instant::now() < deadline, "the coordinator is still held");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(coordinator);
}

/// Without a consortium file, `pdc coordinator` refuses to listen beyond loopback, having touched nothing; with
/// `--open` it starts and says what that allows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_coordinator_without_a_consortium_refuses_a_public_address_unless_open() {
    let dir = tempfile::tempdir().unwrap();
    let config = crate::processes::coordinator_config(dir.path(), "0.0.0.0:0");
    let output = pdc().args(["coordinator", "--config"]).arg(&config).output().await.unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(
            "invalid listen: 0.0.0.0:0 is not a loopback address and there is no consortium file: anyone who can \
             reach it could register as a PDC and create studies"
        ),
        "{stderr}"
    );
    assert!(stderr.contains("`pdc coordinator --open`"), "{stderr}");
    assert!(!dir.path().join("coordinator").exists(), "a refused start creates no state");

    let mut child = pdc()
        .args(["coordinator", "--open", "--config"])
        .arg(&config)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap()).lines();
    let line = tokio::time::timeout(Duration::from_secs(30), stdout.next_line()).await.unwrap().unwrap().unwrap();
    let port = line.strip_prefix("pdc coordinator listening on 0.0.0.0:").expect("the listening line");
    // It answers (on loopback, which 0.0.0.0 includes), and its log says what it allows.
    let url = format!("http://127.0.0.1:{port}");
    assert_eq!(support::log_size(&url).await, 0);
    let mut stderr = BufReader::new(child.stderr.take().unwrap()).lines();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let line = tokio::time::timeout_at(deadline, stderr.next_line()).await.unwrap().unwrap().expect("a log line");
        if line.contains("open coordinator on 0.0.0.0:0 without a consortium file") {
            assert!(line.contains("anyone who can reach this port may register as a PDC"), "{line}");
            break;
        }
    }
    child.kill().await.unwrap();
}
