//! Bad input over real gRPC: each malformed, unauthorised or out-of-round request gets a precise status, and
//! the round goes on with the others.

use std::time::Duration;

use pdc_ledger::Identity;
use pdc_proto::pb;
use tonic::Code;

use crate::support::{self, TestPdc, assert_status};

const MANIFEST: &str = r#"
name = "bad-input"
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
min = 2
max = 2
round_deadline_secs = 60
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_precise_errors_and_the_round_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let (url, _stop) = support::start_coordinator(dir.path()).await;
    let mut researcher = support::researcher(&url).await;
    let validation = support::breast_cancer_csv().into_bytes();
    let create = |manifest: String| pb::CreateStudyRequest {
        manifest_toml: manifest,
        validation_csv: validation.clone(),
        ..Default::default()
    };

    // Manifests: an unknown model, a missing column.
    let unknown_model = MANIFEST.replace("kind = \"logistic_regression\"", "kind = \"transformer\"");
    assert_status(
        researcher.create_study(create(unknown_model)).await,
        Code::InvalidArgument,
        "unknown variant `transformer`",
    );
    let missing_column = MANIFEST
        .replace("label = \"malignant\"", "label = \"malignant\"\nfeatures = [\"mean_radius\", \"tumour_colour\"]");
    assert_status(
        researcher.create_study(create(missing_column)).await,
        Code::InvalidArgument,
        "feature column `tumour_colour` is not in the validation set",
    );

    let study_id = researcher.create_study(create(MANIFEST.to_owned())).await.unwrap().into_inner().study_id;
    assert_status(researcher.create_study(create(MANIFEST.to_owned())).await, Code::AlreadyExists, "exists already");

    let mut a = TestPdc::register(&url, "hospital-a").await;
    let mut b = TestPdc::register(&url, "hospital-b").await;
    a.consent_all().await;
    b.consent_all().await;
    let mut a_tasks = a.tasks().await;
    let mut b_tasks = b.tasks().await;
    researcher.start_study(pb::StudyRef { study_id: study_id.clone() }).await.unwrap();
    let task = a_tasks.message().await.unwrap().unwrap();
    b_tasks.message().await.unwrap().unwrap();
    assert_eq!(task.round, 1);
    let model = a.download(&task).await;
    let n = model.len();
    let good = vec![0.01f32; n];

    // An upload from a PDC that never registered.
    let mut stranger = TestPdc::connect(&url, "stranger").await;
    assert_status(stranger.submit(&study_id, 1, &good).await, Code::Unauthenticated, "PDC stranger is not registered");
    // A PDC signing as another.
    let impostor = Identity::generate();
    assert_status(
        support::upload(&mut b.client, "hospital-a", &impostor, &study_id, 1, &good, 1 << 20).await,
        Code::Unauthenticated,
        "signature does not verify for hospital-a",
    );
    // The wrong length, in the header and in the body.
    assert_status(
        a.submit(&study_id, 1, &good[..n - 1]).await,
        Code::InvalidArgument,
        &format!("the study's model has {n}"),
    );
    // A NaN.
    let mut with_nan = good.clone();
    with_nan[3] = f32::NAN;
    assert_status(a.submit(&study_id, 1, &with_nan).await, Code::InvalidArgument, "parameter 3 is not finite");
    // A round that is not open.
    assert_status(a.submit(&study_id, 2, &good).await, Code::FailedPrecondition, "round 2 is not open");
    // An unknown study.
    assert_status(a.submit("no-such-study", 1, &good).await, Code::NotFound, "unknown study no-such-study");

    // None of that changed the round: a's and b's valid updates are accepted and close it.
    let receipt = a.submit(&study_id, 1, &good).await.unwrap();
    assert_eq!(receipt.received_in_round, 1);
    // A replayed update is refused.
    assert_status(a.submit(&study_id, 1, &good).await, Code::AlreadyExists, "already submitted an update for round 1");
    b.submit(&study_id, 1, &vec![-0.01f32; n]).await.unwrap();
    let status =
        support::wait_for_status(&mut researcher, &study_id, Duration::from_secs(20), |s| !s.rounds.is_empty()).await;
    assert_eq!(status.rounds[0].contributors, ["hospital-a", "hospital-b"]);
    let rejected: Vec<_> = status.hospitals.iter().map(|h| (h.pdc_id.as_str(), h.updates_rejected)).collect();
    assert_eq!(rejected, [("hospital-a", 2), ("hospital-b", 0)]);

    // An update for the closed round.
    assert_status(b.submit(&study_id, 1, &good).await, Code::FailedPrecondition, "round 1 is closed");
    // A model download by a PDC that is not a participant of the open round.
    support::wait_for_status(&mut researcher, &study_id, Duration::from_secs(20), |s| s.current_round == 2).await;
    let mut outsider = TestPdc::register(&url, "hospital-z").await;
    let request = pb::ModelRequest {
        study_id: study_id.clone(),
        round: 2,
        auth: Some(outsider.signed("DownloadGlobalModel")),
        ..Default::default()
    };
    assert_status(
        outsider.client.download_global_model(request).await,
        Code::PermissionDenied,
        "not a participant of round 2",
    );
    // A stale signed request.
    let mut stale = a.signed("ListStudies");
    stale.timestamp_ms -= 10 * 60 * 1000;
    assert_status(a.client.list_studies(stale).await, Code::Unauthenticated, "five minutes");
}

/// A model larger than one message moves in chunks both ways; an oversized chunk is refused and changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn models_larger_than_a_message_move_in_chunks() {
    let dir = tempfile::tempdir().unwrap();
    let (url, _stop) = support::start_coordinator(dir.path()).await;
    let mut researcher = support::researcher(&url).await;
    // 30·1024 + 1024 + 1024·256 + 256 + 256 + 1 = 294,401 parameters: 1.18 MB, two chunks.
    let manifest = MANIFEST
        .replace("kind = \"logistic_regression\"", "kind = \"mlp\", hidden = [1024, 256]")
        .replace("min = 2\nmax = 2", "min = 1\nmax = 1");
    let request = pb::CreateStudyRequest {
        manifest_toml: manifest,
        validation_csv: support::breast_cancer_csv().into_bytes(),
        ..Default::default()
    };
    let study_id = researcher.create_study(request).await.unwrap().into_inner().study_id;
    let mut a = TestPdc::register(&url, "hospital-a").await;
    a.consent_all().await;
    let mut tasks = a.tasks().await;
    researcher.start_study(pb::StudyRef { study_id: study_id.clone() }).await.unwrap();
    let task = tasks.message().await.unwrap().unwrap();
    assert_eq!(task.n_parameters, 294_401);

    let request = pb::ModelRequest {
        study_id: study_id.clone(),
        round: 1,
        auth: Some(a.signed("DownloadGlobalModel")),
        ..Default::default()
    };
    let mut parts = a.client.download_global_model(request).await.unwrap().into_inner();
    let mut chunk_sizes = Vec::new();
    let mut bytes = Vec::new();
    while let Some(part) = parts.message().await.unwrap() {
        if let Some(pb::model_part::Part::Chunk(chunk)) = part.part {
            assert_eq!(chunk.offset, bytes.len() as u64);
            chunk_sizes.push(chunk.data.len());
            bytes.extend_from_slice(&chunk.data);
        }
    }
    assert_eq!(chunk_sizes, [1 << 20, 294_401 * 4 - (1 << 20)]);
    assert_eq!(hex::encode(pdc_ledger::sha3_256(&bytes)), task.model_hash);

    let update = vec![0.001f32; 294_401];
    let oversized = support::upload(&mut a.client, "hospital-a", &a.identity, &study_id, 1, &update, 2 << 20).await;
    assert_status(oversized, Code::ResourceExhausted, "exceeds the 1048576-byte limit");
    let receipt = support::upload(&mut a.client, "hospital-a", &a.identity, &study_id, 1, &update, 1 << 20).await;
    assert_eq!(receipt.unwrap().received_in_round, 1);
}
