//! A malicious coordinator against the real hospital agent (issue 20, parts 1 and 2): a tonic `FederationService`
//! on 127.0.0.1 that lies (tasks for studies never consented to, a manifest stripped of its `[privacy]` table,
//! inflated sizes, an oversized study list, queries that fish for raw cells or charge a non-binary label), run
//! against `pdc_client::Agent` in-process. Each test asserts what the fake coordinator received (no update, which
//! failure category) and that the PDC's spend file is unchanged where nothing may be spent.

use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{Stream, StreamExt};
use pdc_client::spend::SpendStore;
use pdc_ledger::hash::{f32_bytes, parameters_hash};
use pdc_proto::pb;
use pdc_proto::pb::federation_service_server::{FederationService, FederationServiceServer};
use tokio::sync::mpsc;
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tonic::{Request, Response, Status, Streaming};

type ResponseStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// The model every task names: logistic regression on two features (two weights and a bias).
const MODEL: [f32; 3] = [0.0; 3];

/// What the fake coordinator received from the agent.
#[derive(Debug, Default)]
struct Received {
    /// Every call, by method name, in order.
    calls: Vec<&'static str>,
    /// Studies consented to.
    consents: Vec<String>,
    updates: Vec<pb::UpdateHeader>,
    failures: Vec<pb::FailureReport>,
    statistics: Vec<pb::StatisticsSubmission>,
}

/// What the fake coordinator answers.
#[derive(Default)]
struct Scenario {
    studies: Vec<pb::StudyListing>,
    /// How many `ListStudies` calls get a response above the agent's message limit before the real list.
    oversized_lists: usize,
    /// The `n_parameters` the model header claims, when it lies.
    header_n_parameters: Option<u64>,
    /// The open task stream's sender.
    tasks: Option<mpsc::Sender<Result<pb::Task, Status>>>,
}

#[derive(Clone, Default)]
struct FakeCoordinator {
    scenario: Arc<Mutex<Scenario>>,
    received: Arc<Mutex<Received>>,
}

impl FakeCoordinator {
    fn call(&self, method: &'static str) {
        self.received.lock().unwrap().calls.push(method);
    }

    fn count(&self, method: &str) -> usize {
        self.received.lock().unwrap().calls.iter().filter(|m| **m == method).count()
    }

    /// Sends `task` on the agent's task stream, once it has one open.
    async fn send_task(&self, task: pb::Task) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let sender = self.scenario.lock().unwrap().tasks.clone();
            if let Some(sender) = sender
                && sender.send(Ok(task.clone())).await.is_ok()
            {
                return;
            }
            assert!(tokio::time::Instant::now() < deadline, "the agent never opened its task stream");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until `done` holds of what was received, or fails the test after 30 s.
    async fn wait_for(&self, what: &str, done: impl Fn(&Received) -> bool) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            if done(&self.received.lock().unwrap()) {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out waiting for {what}; received {:?}",
                self.received.lock().unwrap()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The only failure report received, after waiting for it.
    async fn one_failure(&self) -> pb::FailureReport {
        self.wait_for("a failure report", |r| !r.failures.is_empty()).await;
        let received = self.received.lock().unwrap();
        assert_eq!(received.failures.len(), 1, "{:?}", received.failures);
        received.failures[0].clone()
    }

    fn take_failures(&self) -> Vec<pb::FailureReport> {
        std::mem::take(&mut self.received.lock().unwrap().failures)
    }
}

#[tonic::async_trait]
impl FederationService for FakeCoordinator {
    async fn register(&self, _: Request<pb::RegisterRequest>) -> Result<Response<pb::RegisterResponse>, Status> {
        self.call("Register");
        Ok(Response::new(pb::RegisterResponse { newly_registered: true }))
    }

    async fn list_studies(&self, _: Request<pb::SignedRequest>) -> Result<Response<pb::ListStudiesResponse>, Status> {
        self.call("ListStudies");
        let mut scenario = self.scenario.lock().unwrap();
        if scenario.oversized_lists > 0 {
            scenario.oversized_lists -= 1;
            // Above the agent's 8 MiB decoding limit.
            let huge =
                pb::StudyListing { manifest_toml: "#".repeat(pdc_proto::MAX_MESSAGE_BYTES + 1), ..listing("x", "") };
            return Ok(Response::new(pb::ListStudiesResponse { studies: vec![huge] }));
        }
        let consents = self.received.lock().unwrap().consents.clone();
        let mut studies = scenario.studies.clone();
        for study in &mut studies {
            study.consented = consents.contains(&study.study_id);
        }
        Ok(Response::new(pb::ListStudiesResponse { studies }))
    }

    async fn consent(&self, request: Request<pb::ConsentRequest>) -> Result<Response<pb::ConsentResponse>, Status> {
        self.call("Consent");
        self.received.lock().unwrap().consents.push(request.into_inner().study_id);
        Ok(Response::new(pb::ConsentResponse {}))
    }

    async fn revoke_consent(&self, _: Request<pb::ConsentRequest>) -> Result<Response<pb::ConsentResponse>, Status> {
        self.call("RevokeConsent");
        Ok(Response::new(pb::ConsentResponse {}))
    }

    type WaitTasksStream = ResponseStream<pb::Task>;

    async fn wait_tasks(&self, _: Request<pb::SignedRequest>) -> Result<Response<Self::WaitTasksStream>, Status> {
        let (sender, receiver) = mpsc::channel(16);
        self.scenario.lock().unwrap().tasks = Some(sender);
        // Recorded once the stream is in place, so that a test waiting for this call sends on the new stream.
        self.call("WaitTasks");
        Ok(Response::new(Box::pin(ReceiverStream::new(receiver))))
    }

    type DownloadGlobalModelStream = ResponseStream<pb::ModelPart>;

    async fn download_global_model(
        &self,
        request: Request<pb::ModelRequest>,
    ) -> Result<Response<Self::DownloadGlobalModelStream>, Status> {
        self.call("DownloadGlobalModel");
        let request = request.into_inner();
        let claimed = self.scenario.lock().unwrap().header_n_parameters.unwrap_or(MODEL.len() as u64);
        let header = pb::ModelHeader {
            study_id: request.study_id,
            round: request.round,
            n_parameters: claimed,
            model_hash: hex::encode(parameters_hash(&MODEL)),
            ..Default::default()
        };
        let chunk = pb::Chunk { offset: 0, data: f32_bytes(&MODEL), running_hash: Vec::new() };
        let parts = [pb::model_part::Part::Header(header), pb::model_part::Part::Chunk(chunk)]
            .map(|part| Ok(pb::ModelPart { part: Some(part) }));
        Ok(Response::new(Box::pin(futures::stream::iter(parts))))
    }

    async fn upload_status(
        &self,
        _: Request<pb::UploadStatusRequest>,
    ) -> Result<Response<pb::UploadStatusResponse>, Status> {
        self.call("UploadStatus");
        Ok(Response::new(pb::UploadStatusResponse::default()))
    }

    async fn submit_update(
        &self,
        request: Request<Streaming<pb::UpdatePart>>,
    ) -> Result<Response<pb::UpdateReceipt>, Status> {
        self.call("SubmitUpdate");
        let mut parts = request.into_inner();
        let mut header = None;
        while let Some(part) = parts.next().await {
            if let Some(pb::update_part::Part::Header(h)) = part?.part {
                header = Some(h);
            }
        }
        let header = header.ok_or_else(|| Status::invalid_argument("no header"))?;
        let update_id = hex::encode(&header.update_hash);
        self.received.lock().unwrap().updates.push(header);
        Ok(Response::new(pb::UpdateReceipt { update_id, received_in_round: 1 }))
    }

    async fn report_failure(&self, request: Request<pb::FailureReport>) -> Result<Response<pb::FailureAck>, Status> {
        self.call("ReportFailure");
        self.received.lock().unwrap().failures.push(request.into_inner());
        Ok(Response::new(pb::FailureAck {}))
    }

    async fn declare_budget(&self, _: Request<pb::BudgetDeclaration>) -> Result<Response<pb::BudgetResponse>, Status> {
        self.call("DeclareBudget");
        Ok(Response::new(pb::BudgetResponse { newly_declared: true }))
    }

    async fn rotate_key(&self, _: Request<pb::KeyRotation>) -> Result<Response<pb::KeyRotationResponse>, Status> {
        self.call("RotateKey");
        Ok(Response::new(pb::KeyRotationResponse {}))
    }

    async fn submit_statistics(
        &self,
        request: Request<pb::StatisticsSubmission>,
    ) -> Result<Response<pb::StatisticsReceipt>, Status> {
        self.call("SubmitStatistics");
        self.received.lock().unwrap().statistics.push(request.into_inner());
        Ok(Response::new(pb::StatisticsReceipt { answers: 1 }))
    }
}

/// Serves `fake` on 127.0.0.1 for the rest of the test; returns its URL.
async fn serve(fake: &FakeCoordinator) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    // No encoding limit of its own: the fake sends what it likes, as a malicious coordinator would.
    let service = FederationServiceServer::new(fake.clone()).max_encoding_message_size(usize::MAX);
    let server =
        tonic::transport::Server::builder().add_service(service).serve_with_incoming(TcpListenerStream::new(listener));
    tokio::spawn(server);
    format!("http://{address}")
}

/// The hospital's table: features `a`, `b`, a binary label `y`, a three-valued `grade`, and a free-text `note`
/// holding a patient's name.
fn table() -> String {
    let mut text = String::from("a,b,y,grade,note\n");
    for row in 0..40 {
        let note = if row == 5 { "Jane Doe" } else { "ok" };
        text += &format!("{},{},{},{},{note}\n", f64::from(row) * 0.1, row % 7, row % 2, row % 3);
    }
    text
}

/// A hospital's config in `dir`: a budget of ε = 1,000 (feasibility queries up to ε = 10 each) when `budget`.
fn hospital(dir: &Path, url: &str, budget: bool) -> PathBuf {
    std::fs::write(dir.join("table.csv"), table()).unwrap();
    let mut text = format!(
        "pdc_id = \"hospital-a\"\ncoordinator = \"{url}\"\nkey_file = \"a.key\"\ndata = \"table.csv\"\n\n\
         [retry]\ninitial_ms = 50\nmax_ms = 200\npoll_ms = 50\n"
    );
    if budget {
        text += "\n[privacy]\ndataset = \"icu\"\nepsilon = 1000.0\ndelta = 1e-5\nfeasibility_epsilon = 10.0\n";
    }
    let path = dir.join("hospital.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn start_agent(config: &Path) -> tokio::task::JoinHandle<pdc_client::Result<()>> {
    let agent = pdc_client::Agent::new(pdc_client::HospitalConfig::load(config).unwrap()).unwrap();
    tokio::spawn(agent.run())
}

/// A logistic-regression study on `a` and `features`, labelled by `label`; with local DP when `private`.
fn manifest(name: &str, feature: &str, label: &str, private: bool) -> String {
    let mut text = format!(
        "name = \"{name}\"\nmodel = {{ kind = \"logistic_regression\" }}\n\n[data]\ntask = \"binary_classification\"\n\
         label = \"{label}\"\nfeatures = [\"a\", \"{feature}\"]\n\n[training]\nrounds = 3\nlocal_epochs = 1\n\
         batch_size = 8\nlearning_rate = 0.1\n"
    );
    if private {
        text += "\n[privacy]\nclip_norm = 1.0\nnoise_multiplier = 1.0\ndelta = 1e-5\n";
    }
    text
}

fn listing(study_id: &str, manifest_toml: &str) -> pb::StudyListing {
    pb::StudyListing {
        study_id: study_id.to_owned(),
        name: study_id.to_owned(),
        manifest_hash: hex::encode(pdc_ledger::sha3_256(manifest_toml.as_bytes())),
        manifest_toml: manifest_toml.to_owned(),
        ..Default::default()
    }
}

fn task(study_id: &str, round: u32, manifest_toml: &str) -> pb::Task {
    pb::Task {
        study_id: study_id.to_owned(),
        round,
        model_hash: hex::encode(parameters_hash(&MODEL)),
        n_parameters: MODEL.len() as u64,
        manifest_toml: manifest_toml.to_owned(),
        feature_mean: vec![0.0; 2],
        feature_std: vec![1.0; 2],
        deadline_in_ms: 60_000,
        training_seed: 7,
        query: None,
    }
}

/// A feasibility query for cohort counts on `label`.
fn cohort_query(scope: &str, label: &str) -> pb::Task {
    let query = pb::StatisticsQuery {
        kind: pb::StatisticKind::CohortCounts as i32,
        noise_multiplier: 5.0,
        label: label.to_owned(),
        ..Default::default()
    };
    pb::Task { query: Some(query), n_parameters: 0, model_hash: String::new(), ..task(scope, 0, "") }
}

/// A setup of one fake coordinator and one hospital (with a budget when `budget`) that lists `studies`; returns
/// once the agent consented to the first of them (if any).
async fn setup(
    dir: &Path,
    studies: &[(&str, &str)],
    budget: bool,
) -> (FakeCoordinator, tokio::task::JoinHandle<pdc_client::Result<()>>) {
    let fake = FakeCoordinator::default();
    fake.scenario.lock().unwrap().studies = studies.iter().map(|(id, text)| listing(id, text)).collect();
    let url = serve(&fake).await;
    let agent = start_agent(&hospital(dir, &url, budget));
    if let Some((first, _)) = studies.first() {
        fake.wait_for("the consent", |r| r.consents.iter().any(|s| s == first)).await;
    } else {
        fake.wait_for("a study listing", |r| r.calls.contains(&"ListStudies")).await;
    }
    (fake, agent)
}

fn spend_file(dir: &Path) -> PathBuf {
    dir.join("hospital-a.spend.json")
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap()
}

/// Asserts that `failure` is `category` for `study_id`'s `round`, of kind unspecified.
fn assert_failure(failure: &pb::FailureReport, study_id: &str, round: u32, category: &str) {
    assert_eq!(
        (failure.study_id.as_str(), failure.round, failure.reason.as_str(), failure.kind),
        (study_id, round, category, pb::FailureKind::Unspecified as i32)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adversary_stripped_dp_manifest_is_refused_untrained_and_unspent() {
    let dir = tempfile::tempdir().unwrap();
    let private = manifest("sepsis", "b", "y", true);
    let (fake, agent) = setup(dir.path(), &[("s1", &private)], true).await;
    let before = read(&spend_file(dir.path()));

    // The same study, the same round, its manifest without [privacy]: a non-private update is what it asks for.
    let stripped = private.split("\n[privacy]").next().unwrap().to_owned() + "\n";
    assert!(!stripped.contains("privacy"));
    fake.send_task(task("s1", 1, &stripped)).await;
    let failure = fake.one_failure().await;
    assert_failure(&failure, "s1", 1, "manifest_mismatch");
    assert_eq!(fake.count("DownloadGlobalModel"), 0, "nothing downloaded for a refused task");
    assert!(fake.received.lock().unwrap().updates.is_empty());
    assert_eq!(read(&spend_file(dir.path())), before, "nothing spent");

    // The manifest it signed is trained, privately, and paid for.
    fake.send_task(task("s1", 1, &private)).await;
    fake.wait_for("the update", |r| !r.updates.is_empty()).await;
    let update = fake.received.lock().unwrap().updates[0].clone();
    assert!(update.privacy.is_some() && update.train_loss == 0.0, "{update:?}");
    let events = SpendStore::load(&spend_file(dir.path())).unwrap().events().to_vec();
    assert_eq!(events.iter().map(|e| (e.study_id.as_str(), e.round)).collect::<Vec<_>>(), [("s1", 1)]);
    assert!(!agent.is_finished());
    agent.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adversary_a_restarted_agent_holds_tasks_to_the_manifest_it_signed() {
    let dir = tempfile::tempdir().unwrap();
    let private = manifest("sepsis", "b", "y", true);
    let (fake, agent) = setup(dir.path(), &[("s1", &private)], true).await;
    agent.abort();
    let _ = agent.await;
    let consents = dir.path().join("a.consents.json");
    assert!(read(&consents).contains(&hex::encode(pdc_ledger::sha3_256(private.as_bytes()))));

    // After a restart the coordinator lists the study as consented and swaps the manifest in its tasks.
    let calls = fake.count("WaitTasks");
    let agent = start_agent(&dir.path().join("hospital.toml"));
    fake.wait_for("the restarted agent's stream", |r| r.calls.iter().filter(|m| **m == "WaitTasks").count() > calls)
        .await;
    let before = read(&spend_file(dir.path()));
    let stripped = private.replace("noise_multiplier = 1.0", "noise_multiplier = 0.0001");
    fake.send_task(task("s1", 1, &stripped)).await;
    assert_failure(&fake.one_failure().await, "s1", 1, "manifest_mismatch");
    assert_eq!(read(&spend_file(dir.path())), before);
    assert_eq!(fake.count("Consent"), 1, "the consent is not given again");
    assert_eq!(fake.count("DownloadGlobalModel"), 0);
    agent.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adversary_unconsented_study_task_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (fake, agent) = setup(dir.path(), &[], true).await;
    let before = read(&spend_file(dir.path()));

    fake.send_task(task("never-listed", 1, &manifest("sepsis", "b", "y", true))).await;
    assert_failure(&fake.one_failure().await, "never-listed", 1, "not_consented");
    fake.take_failures();
    // A study's feature summary is refused the same way: statistics follow the consent too.
    let summary = pb::StatisticsQuery {
        kind: pb::StatisticKind::FeatureSummary as i32,
        noise_multiplier: 5.0,
        bounds: vec![pb::FeatureRange { lower: 0.0, upper: 4.0 }; 2],
        label: String::new(),
    };
    let query = pb::Task { query: Some(summary), ..task("never-listed", 0, &manifest("sepsis", "b", "y", true)) };
    fake.send_task(query).await;
    assert_failure(&fake.one_failure().await, "never-listed", 0, "not_consented");

    assert_eq!(fake.count("DownloadGlobalModel"), 0);
    {
        let received = fake.received.lock().unwrap();
        assert!(received.updates.is_empty() && received.statistics.is_empty() && received.consents.is_empty());
    }
    assert_eq!(read(&spend_file(dir.path())), before);
    assert!(!agent.is_finished());
    agent.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adversary_inflated_n_parameters_is_refused_before_allocation() {
    let dir = tempfile::tempdir().unwrap();
    let private = manifest("sepsis", "b", "y", true);
    let (fake, agent) = setup(dir.path(), &[("s1", &private)], true).await;
    let before = read(&spend_file(dir.path()));

    // The task claims a model of 2⁴⁰ parameters (4 TiB): refused before the download is even asked for.
    fake.send_task(pb::Task { n_parameters: 1 << 40, ..task("s1", 1, &private) }).await;
    assert_failure(&fake.one_failure().await, "s1", 1, "invalid_task");
    assert_eq!(fake.count("DownloadGlobalModel"), 0);
    fake.take_failures();

    // The task is right but the model header claims 2⁴⁰: refused at the header, before its buffer is allocated.
    fake.scenario.lock().unwrap().header_n_parameters = Some(1 << 40);
    fake.send_task(task("s1", 1, &private)).await;
    assert_failure(&fake.one_failure().await, "s1", 1, "invalid_task");
    assert_eq!(fake.count("DownloadGlobalModel"), 1);
    assert!(fake.received.lock().unwrap().updates.is_empty());
    assert_eq!(read(&spend_file(dir.path())), before, "nothing spent");
    assert!(!agent.is_finished());
    agent.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adversary_oversized_study_list_is_retried_and_the_agent_trains_later() {
    let dir = tempfile::tempdir().unwrap();
    let plain = manifest("sepsis", "b", "y", false);
    let fake = FakeCoordinator::default();
    {
        let mut scenario = fake.scenario.lock().unwrap();
        scenario.studies = vec![listing("s1", &plain)];
        scenario.oversized_lists = 3;
    }
    let url = serve(&fake).await;
    let agent = start_agent(&hospital(dir.path(), &url, false));

    // Three study lists above the message limit: each is logged and retried; the fourth is read and consented to.
    fake.wait_for("the consent", |r| r.consents == ["s1"]).await;
    assert!(fake.count("ListStudies") >= 4, "{:?}", fake.received.lock().unwrap().calls);
    assert!(!agent.is_finished(), "the agent ended: {:?}", agent.await);
    fake.send_task(task("s1", 1, &plain)).await;
    fake.wait_for("the update", |r| r.updates.len() == 1).await;

    // A task above the message limit breaks the stream: the agent reconnects, and trains the next round.
    let streams = fake.count("WaitTasks");
    let oversized = task("s1", 2, &"#".repeat(pdc_proto::MAX_MESSAGE_BYTES + 1));
    fake.send_task(oversized).await;
    fake.wait_for("a reconnection", |r| r.calls.iter().filter(|m| **m == "WaitTasks").count() > streams).await;
    assert!(fake.count("Register") >= 2, "the agent registered again on its new connection");
    fake.send_task(task("s1", 2, &plain)).await;
    fake.wait_for("the second update", |r| r.updates.len() == 2).await;
    assert_eq!(fake.received.lock().unwrap().updates[1].round, 2);
    assert!(fake.received.lock().unwrap().failures.is_empty());
    assert!(!agent.is_finished());
    agent.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adversary_raw_cell_never_leaves_in_a_decline() {
    let dir = tempfile::tempdir().unwrap();
    // A study that trains on the free-text column is declined locally: nothing is sent.
    let (fake, agent) = setup(dir.path(), &[], true).await;
    fake.scenario.lock().unwrap().studies = vec![listing("notes", &manifest("notes", "note", "y", true))];
    let lists = fake.count("ListStudies");
    fake.wait_for("two more listings", |r| r.calls.iter().filter(|m| **m == "ListStudies").count() > lists + 1).await;
    assert!(fake.received.lock().unwrap().consents.is_empty());
    let before = read(&spend_file(dir.path()));

    // A feasibility query whose "label" is the free-text column: the decline names a category, not the cell.
    fake.send_task(cohort_query("q1", "note")).await;
    let failure = fake.one_failure().await;
    assert_failure(&failure, "q1", 0, "local_data");
    assert!(!failure.reason.contains("Jane") && !failure.reason.contains("note"), "{}", failure.reason);
    assert_eq!(read(&spend_file(dir.path())), before, "nothing spent");
    fake.take_failures();
    // A task for the declined study: a category again.
    fake.send_task(task("notes", 1, &manifest("notes", "note", "y", true))).await;
    assert_failure(&fake.one_failure().await, "notes", 1, "not_consented");
    assert_eq!(read(&spend_file(dir.path())), before);

    // Only the named column is parsed: the name in another column does not stop a query on `y`.
    fake.send_task(cohort_query("q2", "y")).await;
    fake.wait_for("the release", |r| r.statistics.len() == 1).await;
    let events = SpendStore::load(&spend_file(dir.path())).unwrap().events().to_vec();
    assert_eq!(events.iter().map(|e| (e.study_id.as_str(), e.round)).collect::<Vec<_>>(), [("q2", 0)]);
    assert!(!agent.is_finished());
    agent.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adversary_non_binary_label_is_refused_before_any_spend() {
    let dir = tempfile::tempdir().unwrap();
    let (fake, agent) = setup(dir.path(), &[], true).await;
    // A binary study labelled by the three-valued column is not consented to.
    fake.scenario.lock().unwrap().studies = vec![listing("graded", &manifest("graded", "b", "grade", true))];
    let lists = fake.count("ListStudies");
    fake.wait_for("two more listings", |r| r.calls.iter().filter(|m| **m == "ListStudies").count() > lists + 1).await;
    assert!(fake.received.lock().unwrap().consents.is_empty());
    let before = read(&spend_file(dir.path()));

    // Cohort counts on it: refused before the budget is charged, with a category only.
    fake.send_task(cohort_query("q1", "grade")).await;
    let failure = fake.one_failure().await;
    assert_failure(&failure, "q1", 0, "local_data");
    assert_eq!(read(&spend_file(dir.path())), before, "the spend file is unchanged");
    assert!(fake.received.lock().unwrap().statistics.is_empty());
    assert!(!agent.is_finished());
    agent.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adversary_dp_sgd_abort_is_paid_for_and_reported_without_epoch_or_step() {
    let dir = tempfile::tempdir().unwrap();
    // A learning rate of 10³⁸ on one-row batches overflows the parameters at the first step: DP-SGD aborts.
    let diverging = manifest("diverging", "b", "y", true)
        .replace("batch_size = 8", "batch_size = 1")
        .replace("learning_rate = 0.1", "learning_rate = 1e38")
        .replace("clip_norm = 1.0", "clip_norm = 1e10");
    let (fake, agent) = setup(dir.path(), &[("s1", &diverging)], true).await;
    assert!(SpendStore::load(&spend_file(dir.path())).unwrap().events().is_empty());

    fake.send_task(task("s1", 1, &diverging)).await;
    let failure = fake.one_failure().await;
    assert_failure(&failure, "s1", 1, "training_failed");
    assert!(!failure.reason.contains("epoch") && !failure.reason.contains("step"), "{}", failure.reason);
    assert!(fake.received.lock().unwrap().updates.is_empty());
    // The aborted run touched the rows: it is paid for.
    let store = SpendStore::load(&spend_file(dir.path())).unwrap();
    let events: Vec<(&str, u32, u64)> =
        store.events().iter().map(|e| (e.study_id.as_str(), e.round, e.steps)).collect();
    assert_eq!(events, [("s1", 1, 40)]);
    assert!(store.spent() > 0.0);
    assert!(!agent.is_finished());
    agent.abort();
}
