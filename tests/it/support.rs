//! Shared helpers: an in-process coordinator on a free port, and a hand-driven PDC that can send anything.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use pdc_coordinator::{Coordinator, CoordinatorConfig};
use pdc_ledger::Identity;
use pdc_ledger::hash::{f32_bytes, parameters_hash};
use pdc_ledger::signing::{self, ConsentAction, Contribution, PrivacyClaim};
use pdc_proto::pb;
use pdc_proto::pb::federation_service_client::FederationServiceClient;
use pdc_proto::pb::study_service_client::StudyServiceClient;
use tonic::transport::Channel;

/// The repository's root, as cargo names it when it runs the test (a shared build cache can hold a test binary
/// built in a clone elsewhere, whose compile-time path is gone).
pub fn root() -> PathBuf {
    PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR when it runs tests"))
}

/// The bundled breast-cancer table.
pub fn breast_cancer_csv() -> String {
    std::fs::read_to_string(root().join("data/breast_cancer_wisconsin.csv")).unwrap()
}

/// A coordinator serving on 127.0.0.1 until the returned sender is dropped.
pub async fn start_coordinator(dir: &Path) -> (String, tokio::sync::oneshot::Sender<()>) {
    start_coordinator_at(dir, ([127, 0, 0, 1], 0).into()).await
}

/// A coordinator serving on `address` until the returned sender is dropped.
pub async fn start_coordinator_at(
    dir: &Path,
    address: std::net::SocketAddr,
) -> (String, tokio::sync::oneshot::Sender<()>) {
    let mut config = CoordinatorConfig::new(dir.join("coordinator"));
    config.tick_interval = Duration::from_millis(20);
    let (url, stop, _) = serve_coordinator(config, address).await;
    (url, stop)
}

/// Serves a coordinator made from `config` on `address` until the returned sender is dropped; returns its URL
/// and the coordinator itself.
pub async fn serve_coordinator(
    config: CoordinatorConfig,
    address: std::net::SocketAddr,
) -> (String, tokio::sync::oneshot::Sender<()>, std::sync::Arc<Coordinator>) {
    let coordinator = Coordinator::new(config).unwrap();
    coordinator.spawn_driver();
    let (listener, address) = pdc_coordinator::server::bind(address).await.unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(pdc_coordinator::server::serve(std::sync::Arc::clone(&coordinator), listener, async {
        let _ = stopped.await;
    }));
    (format!("http://{address}"), stop, coordinator)
}

pub async fn researcher(url: &str) -> StudyServiceClient<Channel> {
    StudyServiceClient::connect(url.to_owned()).await.unwrap().max_decoding_message_size(8 << 20)
}

/// A PDC driven by hand, able to send well-formed and malformed messages alike.
pub struct TestPdc {
    pub id: String,
    pub identity: Identity,
    pub client: FederationServiceClient<Channel>,
}

impl TestPdc {
    /// Connects without registering.
    pub async fn connect(url: &str, id: &str) -> Self {
        let client = FederationServiceClient::connect(url.to_owned()).await.unwrap();
        Self { id: id.to_owned(), identity: Identity::generate(), client }
    }

    /// Connects and registers.
    pub async fn register(url: &str, id: &str) -> Self {
        let mut pdc = Self::connect(url, id).await;
        let public_key = pdc.identity.public_key().to_bytes();
        let signature = pdc.identity.sign(&signing::register_message(id, &public_key)).to_vec();
        let request = pb::RegisterRequest { pdc_id: id.to_owned(), public_key: public_key.to_vec(), signature };
        pdc.client.register(request).await.unwrap();
        pdc
    }

    pub fn signed(&self, method: &str) -> pb::SignedRequest {
        let timestamp_ms = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as u64;
        let nonce: [u8; 16] = rand::random();
        let message = signing::request_message(method, &self.id, timestamp_ms, &nonce);
        let signature = self.identity.sign(&message).to_vec();
        pb::SignedRequest { pdc_id: self.id.clone(), timestamp_ms, signature, nonce: nonce.to_vec() }
    }

    /// Consents to every listed study.
    pub async fn consent_all(&mut self) {
        let studies = self.client.list_studies(self.signed("ListStudies")).await.unwrap().into_inner().studies;
        for study in studies {
            let hash = pdc_ledger::sha3_256(study.manifest_toml.as_bytes());
            let signature =
                self.identity.sign(&signing::consent_message(ConsentAction::Grant, &study.study_id, &hash)).to_vec();
            let request = pb::ConsentRequest {
                pdc_id: self.id.clone(),
                study_id: study.study_id,
                signature,
                ..Default::default()
            };
            self.client.consent(request).await.unwrap();
        }
    }

    pub async fn tasks(&mut self) -> tonic::Streaming<pb::Task> {
        self.client.wait_tasks(self.signed("WaitTasks")).await.unwrap().into_inner()
    }

    pub async fn download(&mut self, task: &pb::Task) -> Vec<f32> {
        let request = pb::ModelRequest {
            study_id: task.study_id.clone(),
            round: task.round,
            auth: Some(self.signed("DownloadGlobalModel")),
            ..Default::default()
        };
        let mut parts = self.client.download_global_model(request).await.unwrap().into_inner();
        let mut bytes = Vec::new();
        while let Some(part) = parts.message().await.unwrap() {
            if let Some(pb::model_part::Part::Chunk(chunk)) = part.part {
                bytes.extend_from_slice(&chunk.data);
            }
        }
        bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect()
    }

    /// Uploads `values` as this PDC's update for `round`, signed with its own key.
    pub async fn submit(
        &mut self,
        study_id: &str,
        round: u32,
        values: &[f32],
    ) -> Result<pb::UpdateReceipt, tonic::Status> {
        upload(&mut self.client, &self.id, &self.identity, study_id, round, values, pdc_proto::MAX_CHUNK_BYTES).await
    }
}

/// Uploads `values` as `pdc_id`'s update, signed with `signer` (which may be someone else's key).
pub async fn upload(
    client: &mut FederationServiceClient<Channel>,
    pdc_id: &str,
    signer: &Identity,
    study_id: &str,
    round: u32,
    values: &[f32],
    chunk_bytes: usize,
) -> Result<pb::UpdateReceipt, tonic::Status> {
    let update = Upload { study_id, round, values, chunk_bytes, train_loss: 0.5, privacy: None };
    upload_with(client, pdc_id, signer, update).await
}

/// An upload's contents, for [`upload_with`].
pub struct Upload<'a> {
    pub study_id: &'a str,
    pub round: u32,
    pub values: &'a [f32],
    pub chunk_bytes: usize,
    pub train_loss: f64,
    pub privacy: Option<PrivacyClaim>,
}

/// Uploads `update` as `pdc_id`'s, signed with `signer`, claiming whatever privacy it says.
pub async fn upload_with(
    client: &mut FederationServiceClient<Channel>,
    pdc_id: &str,
    signer: &Identity,
    update: Upload<'_>,
) -> Result<pb::UpdateReceipt, tonic::Status> {
    let Upload { study_id, round, values, chunk_bytes, train_loss, privacy } = update;
    let contribution = Contribution {
        study_id: study_id.to_owned(),
        round,
        pdc_id: pdc_id.to_owned(),
        n_examples: 10,
        n_parameters: values.len() as u64,
        update_hash: parameters_hash(values),
        train_loss,
        privacy,
    };
    let signature = signer.sign(&contribution.signing_bytes());
    let header = pdc_client::agent::update_header(&contribution, &signature, pb::Compression::None);
    let bytes = f32_bytes(values);
    let chunks = bytes.chunks(chunk_bytes.max(1)).enumerate().map(|(index, data)| pb::UpdatePart {
        part: Some(pb::update_part::Part::Chunk(pb::Chunk {
            offset: (index * chunk_bytes) as u64,
            data: data.to_vec(),
            running_hash: Vec::new(),
        })),
    });
    let parts: Vec<_> =
        std::iter::once(pb::UpdatePart { part: Some(pb::update_part::Part::Header(header)) }).chain(chunks).collect();
    client.submit_update(futures::stream::iter(parts)).await.map(|r| r.into_inner())
}

/// Polls a study's status until `done` holds, or panics after `timeout`.
pub async fn wait_for_status(
    researcher: &mut StudyServiceClient<Channel>,
    study_id: &str,
    timeout: Duration,
    done: impl Fn(&pb::StudyStatus) -> bool,
) -> pb::StudyStatus {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let status = researcher.get_status(pb::StudyRef { study_id: study_id.to_owned() }).await.unwrap().into_inner();
        if done(&status) {
            return status;
        }
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting; last status: {status:#?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Asserts that `result` is a refusal with `code` whose message contains `fragment`, and returns the status.
pub fn assert_status<T: std::fmt::Debug>(
    result: Result<T, tonic::Status>,
    code: tonic::Code,
    fragment: &str,
) -> tonic::Status {
    let status = result.expect_err("the request must be refused");
    assert_eq!(status.code(), code, "{}", status.message());
    assert!(status.message().contains(fragment), "`{}` does not mention `{fragment}`", status.message());
    status
}

/// The ledger's size, from the AuditService.
pub async fn log_size(url: &str) -> u64 {
    let mut client = pb::audit_service_client::AuditServiceClient::connect(url.to_owned()).await.unwrap();
    client.get_log_info(pb::LogInfoRequest {}).await.unwrap().into_inner().size
}

/// A table as CSV text with the schema's columns (features, then label).
pub fn csv_text(data: &pdc_models::Dataset, schema: &pdc_models::Schema) -> String {
    use std::fmt::Write as _;
    let mut text = format!("{},{}\n", schema.features.join(","), schema.label);
    for row in 0..data.n_rows() {
        for value in data.row(row) {
            write!(text, "{value},").unwrap();
        }
        writeln!(text, "{}", data.labels[row]).unwrap();
    }
    text
}

/// Registers a hand-driven PDC for each of `ids`, consents each to every listed study, and opens each one's task
/// stream, in that order.
pub async fn consenting_pdcs(url: &str, ids: &[&str]) -> (Vec<TestPdc>, Vec<tonic::Streaming<pb::Task>>) {
    let mut pdcs = Vec::new();
    for id in ids {
        let mut pdc = TestPdc::register(url, id).await;
        pdc.consent_all().await;
        pdcs.push(pdc);
    }
    let mut streams = Vec::new();
    for pdc in &mut pdcs {
        streams.push(pdc.tasks().await);
    }
    (pdcs, streams)
}

/// The next task on `stream`, failing the test after 30 s or if the stream ends.
pub async fn next_task(stream: &mut tonic::Streaming<pb::Task>) -> pb::Task {
    tokio::time::timeout(Duration::from_secs(30), stream.message())
        .await
        .expect("a task within 30 s")
        .unwrap()
        .expect("the task stream stays open")
}
