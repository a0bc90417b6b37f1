//! Replayed signed requests (issue 21, part 2): a signed request captured on the wire and sent again within the
//! signature window is refused, so it can neither report a hospital's failure a second time nor take over its task
//! stream. Each refusal leaves the ledger and the study as they were.

use std::time::Duration;

use pdc_proto::pb;
use tonic::Code;

use crate::support::{self, TestPdc, assert_status};

const MANIFEST: &str = r#"
name = "replayed"
seed = 2
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
round_deadline_secs = 600
"#;

/// Creates the study; returns its id and the researcher's client.
async fn create_study(url: &str) -> (String, pb::study_service_client::StudyServiceClient<tonic::transport::Channel>) {
    let mut researcher = support::researcher(url).await;
    let request = pb::CreateStudyRequest {
        manifest_toml: MANIFEST.to_owned(),
        validation_csv: support::breast_cancer_csv().into_bytes(),
        ..Default::default()
    };
    let study_id = researcher.create_study(request).await.unwrap().into_inner().study_id;
    (study_id, researcher)
}

async fn running_study(url: &str) -> (String, Vec<TestPdc>, Vec<tonic::Streaming<pb::Task>>) {
    let (study_id, mut researcher) = create_study(url).await;
    let (pdcs, streams) = support::consenting_pdcs(url, &["ward-a", "ward-b"]).await;
    researcher.start_study(pb::StudyRef { study_id: study_id.clone() }).await.unwrap();
    (study_id, pdcs, streams)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_report_failure_is_refused_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (url, _stop) = support::start_coordinator(dir.path()).await;
    let (study_id, mut pdcs, mut streams) = running_study(&url).await;
    for stream in &mut streams {
        assert_eq!(support::next_task(stream).await.round, 1);
    }
    let report = pb::FailureReport {
        study_id: study_id.clone(),
        round: 1,
        reason: "link down".into(),
        auth: Some(pdcs[1].signed("ReportFailure")),
        kind: pb::FailureKind::Unspecified as i32,
    };
    pdcs[1].client.report_failure(report.clone()).await.unwrap();
    let mut researcher = support::researcher(&url).await;
    let status_request = pb::StudyRef { study_id: study_id.clone() };
    let before_status = researcher.get_status(status_request.clone()).await.unwrap().into_inner();
    let before_size = support::log_size(&url).await;

    // The same bytes again, as an attacker who captured them would send them, within the five-minute window.
    let replayed = pdcs[1].client.report_failure(report).await;
    assert_status(replayed, Code::Unauthenticated, "replayed request");
    assert_eq!(support::log_size(&url).await, before_size, "the replay recorded nothing");
    assert_eq!(researcher.get_status(status_request).await.unwrap().into_inner(), before_status);

    // The hospital itself goes on: a fresh request of its own is accepted.
    let auth = pdcs[1].signed("ListStudies");
    let listed = pdcs[1].client.list_studies(auth).await.unwrap().into_inner();
    assert_eq!(listed.studies.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_wait_tasks_cannot_take_over_the_task_stream() {
    let dir = tempfile::tempdir().unwrap();
    let (url, _stop) = support::start_coordinator(dir.path()).await;
    let (study_id, mut researcher) = create_study(&url).await;
    let mut a = TestPdc::register(&url, "ward-a").await;
    let mut b = TestPdc::register(&url, "ward-b").await;
    a.consent_all().await;
    b.consent_all().await;
    let captured = a.signed("WaitTasks");
    let mut own = a.client.wait_tasks(captured.clone()).await.unwrap().into_inner();
    let mut other = b.tasks().await;

    // An attacker replays ward-a's WaitTasks on a connection of its own: refused, so it gets no stream.
    let mut attacker = pb::federation_service_client::FederationServiceClient::connect(url.clone()).await.unwrap();
    assert_status(attacker.wait_tasks(captured).await, Code::Unauthenticated, "replayed request");

    // ward-a's own stream still receives the round's task.
    researcher.start_study(pb::StudyRef { study_id: study_id.clone() }).await.unwrap();
    let task = tokio::time::timeout(Duration::from_secs(20), own.message())
        .await
        .expect("ward-a's stream keeps its task")
        .unwrap()
        .expect("the stream stays open");
    assert_eq!((task.study_id.as_str(), task.round), (study_id.as_str(), 1));
    assert_eq!(support::next_task(&mut other).await.round, 1);
}
