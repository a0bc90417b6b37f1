//! Participant selection over real gRPC: a manifest's `fraction` samples that share of the available hospitals
//! each round, and only the sampled ones get a task.

use std::time::Duration;

use pdc_proto::pb;

use crate::support;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fraction_of_the_available_hospitals_is_sampled_each_round() {
    let dir = tempfile::tempdir().unwrap();
    let (url, _stop) = support::start_coordinator(dir.path()).await;
    let mut researcher = support::researcher(&url).await;
    let manifest = r#"
name = "sampled"
seed = 5
model = { kind = "logistic_regression" }
[data]
task = "binary_classification"
label = "malignant"
[training]
rounds = 1
local_epochs = 1
batch_size = 16
learning_rate = 0.1
[participants]
min = 1
max = 4
fraction = 0.5
round_deadline_secs = 60
"#;
    let request = pb::CreateStudyRequest {
        manifest_toml: manifest.to_owned(),
        validation_csv: support::breast_cancer_csv().into_bytes(),
        ..Default::default()
    };
    let study_id = researcher.create_study(request).await.unwrap().into_inner().study_id;
    let ids = ["h1", "h2", "h3", "h4"];
    let (_pdcs, mut streams) = support::consenting_pdcs(&url, &ids).await;
    researcher.start_study(pb::StudyRef { study_id: study_id.clone() }).await.unwrap();
    // The sampled hospitals get the round's task; the others get nothing.
    let mut sampled = Vec::new();
    for (id, stream) in ids.iter().zip(&mut streams) {
        if let Ok(task) = tokio::time::timeout(Duration::from_secs(2), stream.message()).await {
            assert_eq!(task.unwrap().unwrap().round, 1);
            sampled.push(id.to_string());
        }
    }
    assert_eq!(sampled.len(), 2, "⌈0.5 × 4⌉ hospitals: {sampled:?}");
    // The ledger's RoundOpened names exactly them.
    let (_, entries, _) = crate::ledger::fetch(&url).await;
    let opened = entries
        .iter()
        .find_map(|bytes| match pdc_ledger::entry::Entry::decode(bytes).unwrap() {
            pdc_ledger::entry::Entry::RoundOpened { participants, .. } => Some(participants),
            _ => None,
        })
        .unwrap();
    assert_eq!(opened, sampled);
}
