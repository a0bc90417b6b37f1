//! Task delivery is a push: a round's tasks reach connected hospitals as soon as the round can open, not at the
//! coordinator's next driver tick.

use std::time::Duration;

use pdc_coordinator::CoordinatorConfig;
use pdc_proto::pb;

use crate::support;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_next_round_is_pushed_when_the_last_one_is_sealed_without_waiting_for_a_tick() {
    let dir = tempfile::tempdir().unwrap();
    // A driver that ticks once an hour: every round below can only open through an event (the start, or the
    // previous round's seal). Deadlines are not exercised here.
    let mut config = CoordinatorConfig::new(dir.path().join("coordinator"));
    config.tick_interval = Duration::from_secs(3600);
    let (url, _stop, _coordinator) = support::serve_coordinator(config, ([127, 0, 0, 1], 0).into()).await;
    let mut researcher = support::researcher(&url).await;
    let manifest = r#"
name = "pushed"
seed = 3
model = { kind = "logistic_regression" }
[data]
task = "binary_classification"
label = "malignant"
[training]
rounds = 3
local_epochs = 1
batch_size = 16
learning_rate = 0.1
[participants]
min = 2
max = 2
round_deadline_secs = 600
"#;
    let request = pb::CreateStudyRequest {
        manifest_toml: manifest.to_owned(),
        validation_csv: support::breast_cancer_csv().into_bytes(),
        ..Default::default()
    };
    let study_id = researcher.create_study(request).await.unwrap().into_inner().study_id;
    let (mut pdcs, mut streams) = support::consenting_pdcs(&url, &["push-a", "push-b"]).await;
    researcher.start_study(pb::StudyRef { study_id: study_id.clone() }).await.unwrap();

    for round in 1..=3u32 {
        for (pdc, stream) in pdcs.iter_mut().zip(&mut streams) {
            // Far below the hour the driver would take: only a push delivers the task in time.
            let task = tokio::time::timeout(Duration::from_secs(20), stream.message())
                .await
                .unwrap_or_else(|_| panic!("round {round}'s task was not pushed to {}", pdc.id))
                .unwrap()
                .expect("the task stream stays open");
            assert_eq!((task.study_id.as_str(), task.round), (study_id.as_str(), round));
            let model = pdc.download(&task).await;
            let delta = vec![0.001_f32; model.len()];
            pdc.submit(&study_id, round, &delta).await.unwrap();
        }
    }
    let status = support::wait_for_status(&mut researcher, &study_id, Duration::from_secs(20), |status| {
        status.state == pb::StudyState::Finished as i32
    })
    .await;
    assert_eq!(status.current_round, 3);
}
