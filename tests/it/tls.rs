//! TLS end to end, with certificates made at test time by `pdc keygen`: a coordinator serving mutual TLS with
//! rustls refuses an unknown certificate at the handshake; a hospital holding PDC a's certificate cannot act as
//! PDC b, whatever it signs; hospital agents and the researcher's CLI complete a study over TLS, and
//! `pdc study download --format safetensors` writes the model with PyTorch's tensor names and shapes.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use pdc_coordinator::tls::TlsSettings;
use pdc_coordinator::{Coordinator, CoordinatorConfig};
use pdc_ledger::Identity;
use pdc_ledger::certificate::{certificates_from_pem, certified_key, private_key_pem};
use pdc_ledger::signing::{self, ConsentAction};
use pdc_proto::pb;
use pdc_proto::pb::federation_service_client::FederationServiceClient;
use pdc_proto::pb::study_service_client::StudyServiceClient;
use tonic::Code;
use tonic::transport::{Channel, Endpoint};

use crate::support::{self, TestPdc, assert_status, root};

/// A party made by `pdc keygen`: its key file, its certificate and the identity in the key file.
pub(crate) struct Party {
    pub(crate) name: String,
    pub(crate) key: PathBuf,
    pub(crate) cert: PathBuf,
    pub(crate) identity: Identity,
}

/// Runs `pdc keygen` and returns its output.
fn keygen_command(args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_pdc")).arg("keygen").args(args).output().unwrap()
}

/// Makes `name`'s key and certificate in `dir` with `pdc keygen`.
pub(crate) fn keygen(dir: &Path, name: &str, role: &str) -> Party {
    let out = dir.to_str().unwrap();
    let output = keygen_command(&["--name", name, "--role", role, "--out", out]);
    assert!(output.status.success(), "pdc keygen failed: {}", String::from_utf8_lossy(&output.stderr));
    let (key, cert) = (dir.join(format!("{name}.key")), dir.join(format!("{name}.crt")));
    let identity = Identity::load(&key).unwrap();
    Party { name: name.to_owned(), key, cert, identity }
}

/// A coordinator serving mutual TLS on 127.0.0.1 with `server`'s certificate, trusting `trusted`'s certificates.
async fn start_tls_coordinator(
    dir: &Path,
    server: &Party,
    trusted: &[&Party],
) -> (String, tokio::sync::oneshot::Sender<()>, Arc<Coordinator>) {
    start_tls_coordinator_with(dir, server, trusted, None).await
}

/// As [`start_tls_coordinator`], with the consortium file `consortium` (whose member certificates it trusts too).
pub(crate) async fn start_tls_coordinator_with(
    dir: &Path,
    server: &Party,
    trusted: &[&Party],
    consortium: Option<&Path>,
) -> (String, tokio::sync::oneshot::Sender<()>, Arc<Coordinator>) {
    let client_certs: Vec<PathBuf> = trusted.iter().map(|party| party.cert.clone()).collect();
    let members = consortium
        .map(|path| pdc_coordinator::consortium::Consortium::load(path).unwrap().certificates_pem())
        .unwrap_or_default();
    let tls = TlsSettings::load_trusting(&server.cert, &server.key, &client_certs, &members, true).unwrap();
    assert_eq!(tls.server_key(), Some(server.identity.public_key()));
    let mut config = CoordinatorConfig::new(dir.join("coordinator"));
    config.tick_interval = Duration::from_millis(20);
    config.consortium = consortium.map(Path::to_path_buf);
    let coordinator = Coordinator::new(config).unwrap();
    coordinator.spawn_driver();
    let (listener, address) = pdc_coordinator::server::bind(([127, 0, 0, 1], 0).into()).await.unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let serving = Arc::clone(&coordinator);
    tokio::spawn(async move {
        let shutdown = async {
            let _ = stopped.await;
        };
        pdc_coordinator::server::serve_with_tls(serving, listener, Some(&tls), shutdown).await
    });
    (format!("https://{address}"), stop, coordinator)
}

/// A TLS channel that trusts the coordinator's certificate `ca` and presents `client`'s certificate, if any.
pub(crate) async fn tls_channel(
    url: &str,
    ca: &Path,
    client: Option<&Party>,
) -> Result<Channel, tonic::transport::Error> {
    let key_pem = client.map(|party| private_key_pem(&party.identity).unwrap());
    let identity = client.zip(key_pem.as_deref()).map(|(party, key)| (party.cert.as_path(), key));
    let config = pdc_client::tls::client_config(ca, identity, None).unwrap();
    Endpoint::from_shared(url.to_owned()).unwrap().tls_config(config).unwrap().connect().await
}

/// A hand-driven PDC connected over TLS with `certificate`'s certificate, acting as `party`.
pub(crate) async fn tls_pdc(url: &str, ca: &Path, certificate: &Party, party: &Party) -> TestPdc {
    let client = FederationServiceClient::new(tls_channel(url, ca, Some(certificate)).await.unwrap());
    TestPdc { id: party.name.clone(), identity: Identity::load(&party.key).unwrap(), client }
}

pub(crate) fn register_request(party: &Party, pdc_id: &str) -> pb::RegisterRequest {
    let public_key = party.identity.public_key().to_bytes();
    pb::RegisterRequest {
        pdc_id: pdc_id.to_owned(),
        public_key: public_key.to_vec(),
        signature: party.identity.sign(&signing::register_message(pdc_id, &public_key)).to_vec(),
    }
}

async fn log_size_over(channel: Channel) -> u64 {
    let mut audit = pb::audit_service_client::AuditServiceClient::new(channel);
    audit.get_log_info(pb::LogInfoRequest {}).await.unwrap().into_inner().size
}

const MANIFEST: &str = r#"
name = "tls"
model = { kind = "mlp", hidden = [4] }
[data]
task = "binary_classification"
label = "malignant"
[training]
rounds = 2
local_epochs = 1
batch_size = 32
learning_rate = 0.1
[participants]
min = MIN
max = MAX
round_deadline_secs = 60
"#;

fn manifest(min: u32, max: u32) -> String {
    MANIFEST.replace("MIN", &min.to_string()).replace("MAX", &max.to_string()).replace("rounds = 2", "rounds = 1")
}

#[test]
fn keygen_binds_the_certificate_to_the_key_and_never_overwrites_without_force() {
    let dir = tempfile::tempdir().unwrap();
    let party = keygen(dir.path(), "hospital-a", "hospital");
    let pem = std::fs::read(&party.cert).unwrap();
    let chain = certificates_from_pem(&pem).unwrap();
    assert_eq!(certified_key(&chain[0]).unwrap(), party.identity.public_key());
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&party.key).unwrap().permissions().mode() & 0o777, 0o600);
    }

    let out = dir.path().to_str().unwrap();
    let again = keygen_command(&["--name", "hospital-a", "--role", "hospital", "--out", out]);
    assert!(!again.status.success());
    let stderr = String::from_utf8_lossy(&again.stderr);
    assert!(stderr.contains("hospital-a.key exists; pass --force"), "{stderr}");
    assert_eq!(Identity::load(&party.key).unwrap().public_key(), party.identity.public_key(), "the key is kept");
    assert_eq!(std::fs::read(&party.cert).unwrap(), pem, "the certificate is kept");

    let forced = keygen_command(&["--name", "hospital-a", "--role", "hospital", "--out", out, "--force"]);
    assert!(forced.status.success(), "{}", String::from_utf8_lossy(&forced.stderr));
    let replaced = Identity::load(&party.key).unwrap().public_key();
    assert_ne!(replaced, party.identity.public_key());
    let chain = certificates_from_pem(&std::fs::read(&party.cert).unwrap()).unwrap();
    assert_eq!(certified_key(&chain[0]).unwrap(), replaced);
    let stdout = String::from_utf8_lossy(&forced.stdout);
    assert!(stdout.starts_with(&format!("hospital hospital-a key {}", hex::encode(replaced.to_bytes()))), "{stdout}");

    let bad_role = keygen_command(&["--name", "x", "--role", "nurse", "--out", out]);
    assert!(String::from_utf8_lossy(&bad_role.stderr).contains("unknown role `nurse`"));
    let bad_name = keygen_command(&["--name", "../x", "--role", "hospital", "--out", out]);
    assert!(String::from_utf8_lossy(&bad_name.stderr).contains("must be letters, digits"));
    let bad_san = keygen_command(&["--name", "y", "--role", "coordinator", "--out", out, "--san", "no spaces"]);
    assert!(String::from_utf8_lossy(&bad_san.stderr).contains("subject alternative names"));
    assert!(!dir.path().join("y.key").exists(), "nothing is written when the certificate cannot be made");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_client_certificate_is_refused_at_the_handshake() {
    let dir = tempfile::tempdir().unwrap();
    let server = keygen(dir.path(), "coordinator", "coordinator");
    let hospital = keygen(dir.path(), "hospital-a", "hospital");
    let stranger = keygen(dir.path(), "stranger", "hospital");
    let (url, _stop, coordinator) = start_tls_coordinator(dir.path(), &server, &[&hospital]).await;
    let trusted = tls_channel(&url, &server.cert, Some(&hospital)).await.unwrap();
    let size = log_size_over(trusted.clone()).await;

    // A certificate nobody listed, and no certificate at all: the coordinator ends the handshake, so no call
    // reaches a service (with TLS 1.3 the client may only learn so at its first call).
    for client in [Some(&stranger), None] {
        let refusal = match tls_channel(&url, &server.cert, client).await {
            Err(error) => format!("connect: {error}"),
            Ok(channel) => {
                let mut federation = FederationServiceClient::new(channel);
                let status = federation.register(register_request(&stranger, "stranger")).await.unwrap_err();
                // A transport failure, never an answer from a service; which code depends on when the client
                // notices the closed connection.
                assert!(matches!(status.code(), Code::Unavailable | Code::Unknown | Code::Cancelled), "{status:?}");
                format!("{status:?}")
            }
        };
        assert!(!refusal.is_empty());
    }
    // A plaintext client cannot talk to a TLS coordinator either.
    let plaintext = url.replace("https://", "http://");
    if let Ok(channel) = Endpoint::from_shared(plaintext).unwrap().connect().await {
        let mut federation = FederationServiceClient::new(channel);
        federation.register(register_request(&stranger, "stranger")).await.unwrap_err();
    }
    assert_eq!(coordinator.registered_key("stranger"), None);
    assert_eq!(log_size_over(trusted.clone()).await, size, "refused clients leave the ledger as it was");

    // The coordinator does not trust a client that does not trust it: a wrong CA fails on the client's side.
    let wrong_ca = tls_channel(&url, &stranger.cert, Some(&hospital)).await;
    if let Ok(channel) = wrong_ca {
        let mut federation = FederationServiceClient::new(channel);
        federation.register(register_request(&hospital, "hospital-a")).await.unwrap_err();
    }

    // The listed hospital gets through and registers its own key.
    let mut federation = FederationServiceClient::new(trusted.clone());
    assert!(
        federation.register(register_request(&hospital, "hospital-a")).await.unwrap().into_inner().newly_registered
    );
    assert_eq!(coordinator.registered_key("hospital-a"), Some(hospital.identity.public_key()));
    assert_eq!(log_size_over(trusted).await, size + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hospital_with_pdc_a_certificate_cannot_register_consent_or_submit_as_pdc_b() {
    let dir = tempfile::tempdir().unwrap();
    let server = keygen(dir.path(), "coordinator", "coordinator");
    let a = keygen(dir.path(), "hospital-a", "hospital");
    let b = keygen(dir.path(), "hospital-b", "hospital");
    let researcher = keygen(dir.path(), "researcher", "researcher");
    let (url, _stop, coordinator) = start_tls_coordinator(dir.path(), &server, &[&a, &b, &researcher]).await;
    let researcher_channel = tls_channel(&url, &server.cert, Some(&researcher)).await.unwrap();
    let mut study_client = StudyServiceClient::new(researcher_channel.clone());

    let mut honest_b = tls_pdc(&url, &server.cert, &b, &b).await;
    honest_b.client.register(register_request(&b, "hospital-b")).await.unwrap();
    // The impostor connects with a's certificate but holds b's key file too, so everything it signs as b verifies:
    // only the TLS binding stands in its way.
    let mut impostor = tls_pdc(&url, &server.cert, &a, &b).await;
    let a_key = hex::encode(a.identity.public_key().to_bytes());
    let b_key = hex::encode(b.identity.public_key().to_bytes());
    let wrong_key =
        format!("the TLS client certificate certifies key {a_key}, not hospital-b's registered key {b_key}");

    let request = pb::CreateStudyRequest {
        manifest_toml: manifest(1, 1),
        validation_csv: support::breast_cancer_csv().into_bytes(),
        ..Default::default()
    };
    let study_id = study_client.create_study(request).await.unwrap().into_inner().study_id;
    let size = log_size_over(researcher_channel.clone()).await;

    // Registering b's key under a new id, with b's valid proof of possession.
    let status = impostor.client.register(register_request(&b, "hospital-c")).await;
    let expected = format!("certifies key {a_key}, not hospital-c's key to register {b_key}");
    assert_status(status, Code::PermissionDenied, &expected);
    // Listing studies, consenting and opening a task stream as b.
    assert_status(
        impostor.client.list_studies(impostor.signed("ListStudies")).await,
        Code::PermissionDenied,
        &wrong_key,
    );
    let listing = honest_b.client.list_studies(honest_b.signed("ListStudies")).await.unwrap().into_inner().studies;
    let manifest_hash = pdc_ledger::sha3_256(listing[0].manifest_toml.as_bytes());
    let consent = pb::ConsentRequest {
        pdc_id: "hospital-b".into(),
        study_id: study_id.clone(),
        signature: b.identity.sign(&signing::consent_message(ConsentAction::Grant, &study_id, &manifest_hash)).to_vec(),
        ..Default::default()
    };
    assert_status(impostor.client.consent(consent.clone()).await, Code::PermissionDenied, &wrong_key);
    let status = impostor.client.wait_tasks(impostor.signed("WaitTasks")).await.map(|_| ());
    assert_status(status, Code::PermissionDenied, &wrong_key);
    assert_eq!(log_size_over(researcher_channel.clone()).await, size, "refused calls leave the ledger as it was");
    let status = study_client.get_status(pb::StudyRef { study_id: study_id.clone() }).await.unwrap().into_inner();
    assert!(status.consented.is_empty(), "{:?}", status.consented);
    assert_eq!(coordinator.registered_key("hospital-c"), None);

    // b itself consents and is given the round's task.
    honest_b.client.consent(consent).await.unwrap();
    let mut tasks = honest_b.tasks().await;
    study_client.start_study(pb::StudyRef { study_id: study_id.clone() }).await.unwrap();
    let task = support::next_task(&mut tasks).await;
    let size = log_size_over(researcher_channel.clone()).await;

    // The impostor can neither fetch b's model nor upload an update as b, signed with b's key.
    let model_request = pb::ModelRequest {
        study_id: study_id.clone(),
        round: task.round,
        auth: Some(impostor.signed("DownloadGlobalModel")),
        ..Default::default()
    };
    let status = impostor.client.download_global_model(model_request).await.map(|_| ());
    assert_status(status, Code::PermissionDenied, &wrong_key);
    // Nor learn how much of b's upload the coordinator holds.
    let status_request = pb::UploadStatusRequest {
        study_id: study_id.clone(),
        round: task.round,
        update_hash: vec![0; 32],
        auth: Some(impostor.signed("UploadStatus")),
    };
    assert_status(impostor.client.upload_status(status_request).await, Code::PermissionDenied, &wrong_key);
    let model = honest_b.download(&task).await;
    let delta = vec![0.01; model.len()];
    assert_status(impostor.submit(&study_id, task.round, &delta).await, Code::PermissionDenied, &wrong_key);
    let failure = pb::FailureReport {
        study_id: study_id.clone(),
        round: task.round,
        reason: "not me".into(),
        kind: pb::FailureKind::Unspecified as i32,
        auth: Some(impostor.signed("ReportFailure")),
    };
    assert_status(impostor.client.report_failure(failure).await, Code::PermissionDenied, &wrong_key);
    assert_eq!(log_size_over(researcher_channel.clone()).await, size, "refused uploads leave the ledger as it was");
    let status = study_client.get_status(pb::StudyRef { study_id: study_id.clone() }).await.unwrap().into_inner();
    assert_eq!(status.state, pb::StudyState::Running as i32, "the round is still waiting for b");

    // b's own upload is accepted and closes the study.
    honest_b.submit(&study_id, task.round, &delta).await.unwrap();
    let status = support::wait_for_status(&mut study_client, &study_id, Duration::from_secs(30), |s| {
        s.state == pb::StudyState::Finished as i32
    })
    .await;
    assert_eq!(status.rounds[0].contributors, ["hospital-b"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hospitals_and_the_researcher_cli_run_a_study_over_tls_and_download_it_as_safetensors() {
    let dir = tempfile::tempdir().unwrap();
    let server = keygen(dir.path(), "coordinator", "coordinator");
    let researcher = keygen(dir.path(), "researcher", "researcher");
    let hospitals = [keygen(dir.path(), "hospital-a", "hospital"), keygen(dir.path(), "hospital-b", "hospital")];
    let mut trusted: Vec<&Party> = hospitals.iter().collect();
    trusted.push(&researcher);
    let (url, _stop, _coordinator) = start_tls_coordinator(dir.path(), &server, &trusted).await;

    // Real hospital agents from config files with a [tls] table; the key file is the one keygen wrote.
    let data = root().join("data/breast_cancer_wisconsin.csv");
    let mut agents = Vec::new();
    for hospital in &hospitals {
        let config = format!(
            "pdc_id = \"{}\"\ncoordinator = \"{url}\"\nkey_file = {:?}\ndata = {data:?}\n\n\
             [retry]\ninitial_ms = 50\nmax_ms = 200\npoll_ms = 50\n\n[tls]\nca = {:?}\ncert = {:?}\n",
            hospital.name, hospital.key, server.cert, hospital.cert
        );
        let path = dir.path().join(format!("{}.toml", hospital.name));
        std::fs::write(&path, config).unwrap();
        let agent = pdc_client::Agent::new(pdc_client::HospitalConfig::load(&path).unwrap()).unwrap();
        agents.push(tokio::spawn(agent.run()));
    }

    let mut study_client = StudyServiceClient::new(tls_channel(&url, &server.cert, Some(&researcher)).await.unwrap())
        .max_decoding_message_size(8 << 20);
    let request = pb::CreateStudyRequest {
        manifest_toml: MANIFEST.replace("MIN", "2").replace("MAX", "2"),
        validation_csv: support::breast_cancer_csv().into_bytes(),
        ..Default::default()
    };
    let study_id = study_client.create_study(request).await.unwrap().into_inner().study_id;
    study_client.start_study(pb::StudyRef { study_id: study_id.clone() }).await.unwrap();
    let status = support::wait_for_status(&mut study_client, &study_id, Duration::from_secs(60), |s| {
        s.state == pb::StudyState::Finished as i32 || s.state == pb::StudyState::Failed as i32
    })
    .await;
    assert_eq!(status.state, pb::StudyState::Finished as i32, "{status:#?}");
    assert_eq!(status.rounds.len(), 2);
    for round in &status.rounds {
        assert_eq!(round.contributors, ["hospital-a", "hospital-b"]);
    }
    for agent in &agents {
        assert!(!agent.is_finished(), "an agent stopped: it was refused");
    }

    // The researcher's CLI over TLS: without --ca an https:// coordinator is refused before connecting…
    let pdc = |args: &[&str]| std::process::Command::new(env!("CARGO_BIN_EXE_pdc")).args(args).output().unwrap();
    let output = pdc(&["study", "status", &study_id, "--coordinator", &url]);
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("needs --ca"), "{output:?}");
    // …and with its certificate it downloads the model as safetensors.
    let out = dir.path().join("model.safetensors");
    let (ca, cert, key) =
        (server.cert.to_str().unwrap(), researcher.cert.to_str().unwrap(), researcher.key.to_str().unwrap());
    let args = ["study", "download", &study_id, "--coordinator", &url, "--ca", ca, "--cert", cert, "--key", key];
    let output = pdc(&[&args[..], &["--format", "safetensors", "--out", out.to_str().unwrap()]].concat());
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));

    // The same model as the StudyService serves it, read back with the safetensors crate.
    let mut parts =
        study_client.download_model(pb::StudyRef { study_id: study_id.clone() }).await.unwrap().into_inner();
    let Some(pb::ModelPart { part: Some(pb::model_part::Part::Header(header)) }) = parts.message().await.unwrap()
    else {
        panic!("no model header");
    };
    let mut values = Vec::new();
    while let Some(part) = parts.message().await.unwrap() {
        if let Some(pb::model_part::Part::Chunk(chunk)) = part.part {
            values.extend(chunk.data.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])));
        }
    }
    let bytes = std::fs::read(&out).unwrap();
    let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut names = file.names();
    names.sort();
    assert_eq!(names, ["layers.0.bias", "layers.0.weight", "layers.1.bias", "layers.1.weight"]);
    // 30 features, 4 hidden units, 1 output: PyTorch's [out, in] weights.
    assert_eq!(file.tensor("layers.0.weight").unwrap().shape(), [4, 30]);
    assert_eq!(file.tensor("layers.0.bias").unwrap().shape(), [4]);
    assert_eq!(file.tensor("layers.1.weight").unwrap().shape(), [1, 4]);
    assert_eq!(file.tensor("layers.1.bias").unwrap().shape(), [1]);
    let weight = file.tensor("layers.0.weight").unwrap();
    let first_row: Vec<f32> =
        weight.data()[..30 * 4].chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
    // Row 0 of the [out, in] weight is column 0 of pdc's [in, out] one.
    let column: Vec<f32> = (0..30).map(|input| values[input * 4]).collect();
    assert_eq!(first_row, column);

    let layout = pdc_models::Layout {
        tensors: header
            .layout
            .unwrap()
            .tensors
            .iter()
            .map(|t| pdc_models::TensorLayout {
                name: t.name.clone(),
                shape: t.shape.iter().map(|&d| d as usize).collect(),
            })
            .collect(),
    };
    let (read, metadata) = pdc_models::from_safetensors(&bytes, &layout).unwrap();
    assert_eq!(read, values, "every value survives the export");
    assert_eq!(metadata["study_id"], study_id);
    assert_eq!(metadata["round"], header.round.to_string());
    assert_eq!(metadata["model_hash"], header.model_hash);
    assert_eq!(metadata["model_hash"], hex::encode(pdc_ledger::hash::parameters_hash(&read)));
    let mut audit = pb::audit_service_client::AuditServiceClient::new(
        tls_channel(&url, &server.cert, Some(&researcher)).await.unwrap(),
    );
    let provenance = audit.get_provenance(pb::StudyQuery { study_id: study_id.clone() }).await.unwrap().into_inner();
    assert_eq!(metadata["manifest_hash"], provenance.manifest_hash);
    for agent in agents {
        agent.abort();
    }
}

/// A witness serving mutual TLS with `witness`'s certificate, trusting only `coordinator`'s, and following the
/// log `coordinator` signs; returns its address.
async fn start_tls_witness(dir: &Path, witness: &Party, coordinator: &Party) -> std::net::SocketAddr {
    use pdc_ledger::witness::{TrustedLog, Witness, WitnessConfig};
    let defaults = pdc_coordinator::ledger::LedgerSettings::default();
    let config = WitnessConfig {
        name: witness.name.clone(),
        logs: vec![TrustedLog {
            origin: defaults.origin,
            key_name: defaults.key_name,
            public_key: coordinator.identity.public_key(),
        }],
    };
    let identity = Identity::load(&witness.key).unwrap();
    let state = dir.join(format!("{}.state", witness.name));
    let api = pdc_coordinator::audit_server::WitnessApi::new(Witness::new(config, identity, Default::default()), state);
    let tls = TlsSettings::load(&witness.cert, &witness.key, std::slice::from_ref(&coordinator.cert), true).unwrap();
    let (listener, address) = pdc_coordinator::server::bind(([127, 0, 0, 1], 0).into()).await.unwrap();
    tokio::spawn(async move {
        pdc_coordinator::server::serve_witness_with_tls(api, listener, Some(&tls), std::future::pending()).await
    });
    address
}

/// A ledger signed by `log`'s key whose one witness is at `url`, pinned to `pinned`'s certificate, to which it
/// presents `presented`'s certificate (none when `None`); one entry recorded, ready to seal.
fn ledger_towards(
    log: &Party,
    witness: &Party,
    url: String,
    pinned: &Party,
    presented: Option<&Party>,
) -> pdc_coordinator::ledger::Ledger {
    use pdc_coordinator::ledger::{Ledger, LedgerSettings, WitnessEndpoint};
    let presented = presented.map(|party| (party.cert.as_path(), party.key.as_path()));
    let tls = pdc_coordinator::tls::ClientTls::load(&pinned.cert, presented).unwrap();
    let endpoint =
        WitnessEndpoint { name: witness.name.clone(), url, public_key: witness.identity.public_key(), tls: Some(tls) };
    let settings = LedgerSettings {
        witnesses: vec![endpoint],
        quorum: 1,
        witness_timeout: Duration::from_secs(2),
        ..LedgerSettings::default()
    };
    let ledger = Ledger::in_memory(Identity::load(&log.key).unwrap(), settings).unwrap();
    let entry = pdc_ledger::entry::Entry::StudyCreated { study_id: "s".into(), manifest_hash: [1; 32] };
    ledger.record(&[entry]).unwrap();
    ledger
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn witnesses_co_sign_over_mutual_tls_and_refuse_unknown_certificates() {
    let dir = tempfile::tempdir().unwrap();
    let coordinator = keygen(dir.path(), "coordinator", "coordinator");
    let witness = keygen(dir.path(), "board-witness", "witness");
    let impostor = keygen(dir.path(), "impostor", "coordinator");
    let address = start_tls_witness(dir.path(), &witness, &coordinator).await;
    let url = format!("https://{address}");
    // Sealing waits for the quorum, retrying; a refused connection shows as a seal that never completes.
    let seal = |ledger: pdc_coordinator::ledger::Ledger| async move {
        tokio::time::timeout(Duration::from_secs(4), async move { ledger.seal(1).await.unwrap() }).await
    };

    // The coordinator presents its own certificate, which the witness pins, and pins the witness's.
    let note = seal(ledger_towards(&coordinator, &witness, url.clone(), &witness, Some(&coordinator))).await;
    let note = note.expect("the witness co-signs over mutual TLS");
    assert!(note.contains("— board-witness "), "{note}");

    // The witness refuses a client with a certificate it does not pin, and one without any, at the handshake.
    assert!(seal(ledger_towards(&coordinator, &witness, url.clone(), &witness, Some(&impostor))).await.is_err());
    assert!(seal(ledger_towards(&coordinator, &witness, url.clone(), &witness, None)).await.is_err());
    // The coordinator refuses a witness whose certificate is not the one it pins.
    assert!(seal(ledger_towards(&coordinator, &witness, url.clone(), &impostor, Some(&coordinator))).await.is_err());
    // And plaintext does not reach a TLS witness.
    let mut plain = pdc_proto::pb::witness_service_client::WitnessServiceClient::connect(format!("http://{address}"))
        .await
        .unwrap();
    let request = pdc_proto::pb::AddCheckpointRequest { old_size: 0, note: String::new(), proof: Vec::new() };
    assert!(plain.add_checkpoint(request).await.is_err());
}
