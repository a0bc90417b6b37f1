//! The hospital agent's session over real gRPC: what it asks the coordinator, in which order.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use pdc_coordinator::{Coordinator, CoordinatorConfig};
use pdc_proto::pb;
use tokio_stream::wrappers::TcpListenerStream;

use crate::support::{self, root};

/// A round opens for the PDCs that have consented *and* hold a task stream. An agent that consented first and
/// opened its stream after would, for the moment in between, count as consented but absent, and a round opening
/// then would leave it out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_holds_its_task_stream_before_it_consents() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = CoordinatorConfig::new(dir.path().join("coordinator"));
    config.tick_interval = Duration::from_millis(20);
    let coordinator = Coordinator::new(config).unwrap();
    coordinator.spawn_driver();
    let (listener, address) = pdc_coordinator::server::bind(([127, 0, 0, 1], 0).into()).await.unwrap();
    // Every request's path, in the order the server received it.
    let calls = Arc::new(Mutex::new(Vec::<String>::new()));
    let recorder = Arc::clone(&calls);
    let layer = tower::util::MapRequestLayer::new(move |request: tonic::codegen::http::Request<tonic::body::Body>| {
        recorder.lock().unwrap().push(request.uri().path().to_owned());
        request
    });
    let (_stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tonic::transport::Server::builder()
        .layer(layer)
        .add_routes(pdc_coordinator::server::routes(Arc::clone(&coordinator)))
        .serve_with_incoming_shutdown(TcpListenerStream::new(listener), async {
            let _ = stopped.await;
        });
    tokio::spawn(server);
    let url = format!("http://{address}");

    // The study is listed before the agent connects, so its first consent pass consents to it.
    let mut researcher = support::researcher(&url).await;
    let request = pb::CreateStudyRequest {
        manifest_toml: crate::retry::MANIFEST.to_owned(),
        validation_csv: support::breast_cancer_csv().into_bytes(),
        ..Default::default()
    };
    let study_id = researcher.create_study(request).await.unwrap().into_inner().study_id;

    let data = root().join("data/breast_cancer_wisconsin.csv");
    let path = dir.path().join("hospital.toml");
    std::fs::write(
        &path,
        format!("pdc_id = \"hospital-a\"\ncoordinator = \"{url}\"\nkey_file = \"a.key\"\ndata = {data:?}\n"),
    )
    .unwrap();
    let agent = pdc_client::Agent::new(pdc_client::HospitalConfig::load(&path).unwrap()).unwrap();
    let hospital = tokio::spawn(agent.run());
    support::wait_for_status(&mut researcher, &study_id, Duration::from_secs(30), |s| s.consented == ["hospital-a"])
        .await;

    let federation: Vec<String> = calls
        .lock()
        .unwrap()
        .iter()
        .filter_map(|path| path.strip_prefix("/pdc.v1.FederationService/"))
        .map(str::to_owned)
        .collect();
    let position = |method: &str| federation.iter().position(|m| m == method);
    let (Some(stream), Some(consent)) = (position("WaitTasks"), position("Consent")) else {
        panic!("the agent never opened its stream or never consented: {federation:?}");
    };
    assert!(stream < consent, "the agent consented before it opened its task stream: {federation:?}");
    assert_eq!(federation[..2], ["Register", "WaitTasks"], "{federation:?}");

    // And the study it consented to runs with it.
    researcher.start_study(pb::StudyRef { study_id: study_id.clone() }).await.unwrap();
    let status = support::wait_for_status(&mut researcher, &study_id, Duration::from_secs(30), |s| {
        s.state == pb::StudyState::Finished as i32
    })
    .await;
    assert_eq!(status.rounds[0].contributors, ["hospital-a"]);
    hospital.abort();
}
