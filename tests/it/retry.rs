//! A hospital agent started before its coordinator keeps retrying with back-off and joins once it is up.

use std::time::Duration;

use pdc_proto::pb;

use crate::support::{self, root};

/// One round of logistic regression with one hospital (also for the agent tests).
pub(crate) const MANIFEST: &str = r#"
name = "retry"
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
max = 1
round_deadline_secs = 30
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hospital_started_before_its_coordinator_joins_when_it_comes_up() {
    let dir = tempfile::tempdir().unwrap();
    // Reserve a free port and release it: the hospital points there before anything listens.
    let address = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let url = format!("http://{address}");
    let data = root().join("data/breast_cancer_wisconsin.csv");
    let config = format!(
        "pdc_id = \"hospital-a\"\ncoordinator = \"{url}\"\nkey_file = \"a.key\"\ndata = {data:?}\n\n\
         [retry]\ninitial_ms = 50\nmax_ms = 200\npoll_ms = 50\n"
    );
    let path = dir.path().join("hospital.toml");
    std::fs::write(&path, config).unwrap();
    let agent = pdc_client::Agent::new(pdc_client::HospitalConfig::load(&path).unwrap()).unwrap();
    let hospital = tokio::spawn(agent.run());

    // Several attempts fail meanwhile; the agent must still be trying, not have given up.
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(!hospital.is_finished(), "the agent stopped instead of retrying: {:?}", hospital.await);

    let (_, _stop) = support::start_coordinator_at(dir.path(), address).await;
    let mut researcher = support::researcher(&url).await;
    let request = pb::CreateStudyRequest {
        manifest_toml: MANIFEST.to_owned(),
        validation_csv: support::breast_cancer_csv().into_bytes(),
        ..Default::default()
    };
    let study_id = researcher.create_study(request).await.unwrap().into_inner().study_id;
    researcher.start_study(pb::StudyRef { study_id: study_id.clone() }).await.unwrap();
    let status = support::wait_for_status(&mut researcher, &study_id, Duration::from_secs(30), |s| {
        s.state == pb::StudyState::Finished as i32
    })
    .await;
    assert_eq!(status.rounds[0].contributors, ["hospital-a"]);
    hospital.abort();
}
