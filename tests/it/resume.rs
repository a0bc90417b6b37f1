//! Resumable uploads over real gRPC: an upload cut off mid-stream resumes from the coordinator's last acknowledged
//! chunk without sending those chunks again (counted by the coordinator), every malformed resume is refused
//! precisely and changes nothing, and partial uploads go when their round closes.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use pdc_coordinator::CoordinatorConfig;
use pdc_ledger::entry::Entry;
use pdc_ledger::hash::{f32_bytes, parameters_hash};
use pdc_ledger::signing::Contribution;
use pdc_proto::pb;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;

use crate::support::{self, TestPdc, assert_status};

/// 30 features → 2048 → 256 → 1: 588,289 parameters, 2.35 MB, so an upload spans many chunks.
const MANIFEST: &str = r#"
name = "resume"
seed = 3
model = { kind = "mlp", hidden = [2048, 256] }
[data]
task = "binary_classification"
label = "malignant"
[training]
rounds = 2
local_epochs = 1
batch_size = 64
learning_rate = 0.05
[participants]
min = 2
max = 3
round_deadline_secs = 120
"#;

/// A chunk size of the hand-driven uploads: 64 KiB, so an update is 36 chunks.
const CHUNK: usize = 64 << 10;

/// A seed for the cut, printed so that a failure can be replayed.
fn random_below(bound: usize) -> usize {
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().subsec_nanos() as usize;
    nanos % bound
}

/// One hand-made upload: its signed header and its bytes.
struct Prepared {
    header: pb::UpdateHeader,
    bytes: Vec<u8>,
}

fn prepare(pdc: &TestPdc, study_id: &str, values: &[f32]) -> Prepared {
    let contribution = Contribution {
        study_id: study_id.to_owned(),
        round: 1,
        pdc_id: pdc.id.clone(),
        n_examples: 10,
        n_parameters: values.len() as u64,
        update_hash: parameters_hash(values),
        train_loss: 0.5,
        privacy: None,
    };
    let header = pb::UpdateHeader {
        study_id: study_id.to_owned(),
        round: 1,
        pdc_id: pdc.id.clone(),
        n_examples: contribution.n_examples,
        n_parameters: contribution.n_parameters,
        update_hash: contribution.update_hash.to_vec(),
        train_loss: contribution.train_loss,
        signature: pdc.identity.sign(&contribution.signing_bytes()).to_vec(),
        ..Default::default()
    };
    Prepared { header, bytes: f32_bytes(values) }
}

impl Prepared {
    /// The chunk at `offset` of up to `CHUNK` bytes, with its running hash.
    fn chunk(&self, offset: usize) -> pb::Chunk {
        let end = (offset + CHUNK).min(self.bytes.len());
        pb::Chunk {
            offset: offset as u64,
            data: self.bytes[offset..end].to_vec(),
            running_hash: pdc_ledger::sha3_256(&self.bytes[..end]).to_vec(),
        }
    }

    /// The header with `resume_offset`, then `chunks`.
    fn parts(&self, resume_offset: u64, chunks: Vec<pb::Chunk>) -> Vec<pb::UpdatePart> {
        let header = pb::UpdateHeader { resume_offset, ..self.header.clone() };
        std::iter::once(pb::update_part::Part::Header(header))
            .chain(chunks.into_iter().map(pb::update_part::Part::Chunk))
            .map(|part| pb::UpdatePart { part: Some(part) })
            .collect()
    }

    /// The chunks from `offset` to the end.
    fn chunks_from(&self, offset: usize) -> Vec<pb::Chunk> {
        (offset..self.bytes.len()).step_by(CHUNK).map(|start| self.chunk(start)).collect()
    }
}

async fn upload_status(
    pdc: &mut TestPdc,
    study_id: &str,
    hash: &[u8],
) -> Result<pb::UploadStatusResponse, tonic::Status> {
    let request = pb::UploadStatusRequest {
        study_id: study_id.to_owned(),
        round: 1,
        update_hash: hash.to_vec(),
        auth: Some(pdc.signed("UploadStatus")),
    };
    pdc.client.upload_status(request).await.map(|response| response.into_inner())
}

async fn hospitals(
    researcher: &mut pb::study_service_client::StudyServiceClient<tonic::transport::Channel>,
    study_id: &str,
) -> Vec<pb::HospitalSummary> {
    let request = pb::StudyRef { study_id: study_id.to_owned() };
    researcher.get_status(request).await.unwrap().into_inner().hospitals
}

async fn submit(pdc: &mut TestPdc, parts: Vec<pb::UpdatePart>) -> Result<pb::UpdateReceipt, tonic::Status> {
    pdc.client.submit_update(futures::stream::iter(parts)).await.map(|response| response.into_inner())
}

/// Sends the header and the first `n_chunks` chunks over a connection through `proxy`, waits until the coordinator
/// acknowledged them, then cuts the connection (`cut`), and waits until the coordinator noticed.
async fn cut_after(
    pdc: &mut TestPdc,
    study_id: &str,
    upload: &Prepared,
    n_chunks: usize,
    (proxy, cut): &(String, tokio::sync::broadcast::Sender<()>),
) -> pb::UploadStatusResponse {
    let (sender, receiver) = tokio::sync::mpsc::channel(64);
    for part in upload.parts(0, upload.chunks_from(0).into_iter().take(n_chunks).collect()) {
        sender.send(part).await.unwrap();
    }
    let mut client = pb::federation_service_client::FederationServiceClient::connect(proxy.clone()).await.unwrap();
    // The sender stays alive: the stream must break, not end.
    let call = tokio::spawn(async move { client.submit_update(ReceiverStream::new(receiver)).await });
    let expected = (n_chunks * CHUNK) as u64;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let status = upload_status(pdc, study_id, &upload.header.update_hash).await.unwrap();
        if status.acknowledged_bytes == expected {
            assert!(status.receiving, "the stream is still open");
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "never acknowledged {expected} bytes: {status:?}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    cut.send(()).unwrap();
    assert!(call.await.unwrap().is_err(), "the cut call fails");
    loop {
        let status = upload_status(pdc, study_id, &upload.header.update_hash).await.unwrap();
        if !status.receiving {
            drop(sender);
            return status;
        }
        assert!(tokio::time::Instant::now() < deadline, "the coordinator never noticed the break: {status:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_cut_at_a_random_chunk_resumes_without_resending_acknowledged_chunks() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = CoordinatorConfig::new(dir.path().join("coordinator"));
    config.tick_interval = Duration::from_millis(20);
    let (url, _stop, coordinator) = support::serve_coordinator(config, ([127, 0, 0, 1], 0).into()).await;
    let incoming = dir.path().join("coordinator/updates/incoming");
    let mut researcher = support::researcher(&url).await;
    let request = pb::CreateStudyRequest {
        manifest_toml: MANIFEST.to_owned(),
        validation_csv: support::breast_cancer_csv().into_bytes(),
        ..Default::default()
    };
    let study_id = researcher.create_study(request).await.unwrap().into_inner().study_id;
    let (mut pdcs, mut streams) = support::consenting_pdcs(&url, &["hospital-a", "hospital-b", "hospital-c"]).await;
    researcher.start_study(pb::StudyRef { study_id: study_id.clone() }).await.unwrap();
    let task = support::next_task(&mut streams[0]).await;
    let n = task.n_parameters as usize;
    assert_eq!(n, 588_289);

    // The model comes compressed when asked for: one zstd frame per chunk, offsets over the uncompressed bytes.
    let request = pb::ModelRequest {
        study_id: study_id.clone(),
        round: 1,
        auth: Some(pdcs[0].signed("DownloadGlobalModel")),
        compression: pb::Compression::Zstd as i32,
    };
    let mut parts = pdcs[0].client.download_global_model(request).await.unwrap().into_inner();
    let mut model = Vec::new();
    while let Some(part) = parts.message().await.unwrap() {
        match part.part.unwrap() {
            pb::model_part::Part::Header(header) => assert_eq!(header.compression, pb::Compression::Zstd as i32),
            pb::model_part::Part::Chunk(chunk) => {
                assert_eq!(chunk.offset, model.len() as u64);
                model.extend(zstd::bulk::decompress(&chunk.data, pdc_proto::MAX_CHUNK_BYTES).unwrap());
            }
        }
    }
    assert_eq!(hex::encode(pdc_ledger::sha3_256(&model)), task.model_hash);
    let [a, b, c] = &mut pdcs[..] else { unreachable!() };

    let a_values: Vec<f32> = (0..n).map(|i| ((i % 97) as f32 - 48.0) * 1e-4).collect();
    let a_upload = prepare(a, &study_id, &a_values);
    let n_chunks = a_upload.bytes.len().div_ceil(CHUNK);
    let cut = 1 + random_below(n_chunks - 1);
    let why = format!("upload cut after chunk {cut} of {n_chunks}");
    let proxy = cutting_proxy(url.trim_start_matches("http://").to_owned()).await;
    let acknowledged = cut_after(a, &study_id, &a_upload, cut, &proxy).await;
    let prefix = (cut * CHUNK) as u64;
    assert_eq!(acknowledged.acknowledged_bytes, prefix, "{why}");
    assert_eq!(acknowledged.running_hash, pdc_ledger::sha3_256(&a_upload.bytes[..prefix as usize]), "{why}");
    assert_eq!(acknowledged.total_bytes, a_upload.bytes.len() as u64);
    assert_eq!(std::fs::read_dir(&incoming).unwrap().count(), 1, "the partial upload is on disk");

    // Every malformed resume is refused precisely and changes nothing: not the ledger, not the study, not what
    // the coordinator acknowledged.
    let ledger_size = support::log_size(&url).await;
    let hospitals_before = hospitals(&mut researcher, &study_id).await;
    let at = prefix as usize;
    let mut wrong_hash = a_upload.chunk(at);
    wrong_hash.running_hash = vec![7; 32];
    let mut oversized = a_upload.chunk(at);
    oversized.data = vec![0; pdc_proto::MAX_CHUNK_BYTES + 4];
    let mut bomb = a_upload.parts(prefix, vec![a_upload.chunk(at)]);
    if let Some(pb::update_part::Part::Header(header)) = &mut bomb[0].part {
        header.compression = pb::Compression::Zstd as i32;
    }
    if let Some(pb::update_part::Part::Chunk(chunk)) = &mut bomb[1].part {
        // 64 MiB of zeros in a few kilobytes.
        chunk.data = zstd::bulk::compress(&vec![0u8; 64 << 20], 3).unwrap();
        assert!(chunk.data.len() < 16 << 10);
    }
    let malformed: Vec<(&str, Vec<pb::UpdatePart>, Code, String)> = vec![
        (
            "a resume at another offset",
            a_upload.parts(prefix + 4, a_upload.chunks_from(at + 4)),
            Code::FailedPrecondition,
            format!("cannot resume at byte {}: the coordinator acknowledged {prefix} bytes", prefix + 4),
        ),
        (
            "an offset gap",
            a_upload.parts(prefix, vec![a_upload.chunk(at + 4)]),
            Code::InvalidArgument,
            format!("chunk at offset {} leaves a gap: expected offset {prefix}", at + 4),
        ),
        (
            "an overlap",
            a_upload.parts(prefix, vec![a_upload.chunk(at - CHUNK)]),
            Code::InvalidArgument,
            format!("chunk at offset {} overlaps the acknowledged bytes", at - CHUNK),
        ),
        (
            "a wrong running hash",
            a_upload.parts(prefix, vec![wrong_hash]),
            Code::InvalidArgument,
            "invalid chunk.running_hash".into(),
        ),
        ("an oversized chunk", a_upload.parts(prefix, vec![oversized]), Code::ResourceExhausted, "exceeds the".into()),
        ("a zip bomb", bomb, Code::ResourceExhausted, "decompresses to more than the 1048576-byte limit".into()),
    ];
    for (what, parts, code, fragment) in malformed {
        let status = submit(a, parts).await.expect_err(what);
        assert_eq!(status.code(), code, "{what}: {}", status.message());
        assert!(status.message().contains(&fragment), "{what}: `{}` lacks `{fragment}`", status.message());
        let now = upload_status(a, &study_id, &a_upload.header.update_hash).await.unwrap();
        assert_eq!((now.acknowledged_bytes, &now.running_hash), (prefix, &acknowledged.running_hash), "{what}");
    }
    // Another PDC cannot resume a's upload, nor see it.
    let b_of_a = Prepared { header: prepare(b, &study_id, &a_values).header, bytes: a_upload.bytes.clone() };
    assert_status(
        submit(b, b_of_a.parts(prefix, b_of_a.chunks_from(at))).await,
        Code::FailedPrecondition,
        "no partial upload of update",
    );
    assert_eq!(upload_status(b, &study_id, &a_upload.header.update_hash).await.unwrap().acknowledged_bytes, 0);
    assert_eq!(support::log_size(&url).await, ledger_size, "refused resumes leave the ledger as it was");
    let hospitals = hospitals(&mut researcher, &study_id).await;
    assert_eq!(hospitals, hospitals_before, "and the study's record of its hospitals");

    // The real resume sends only what was not acknowledged; the coordinator counts every chunk byte it is sent.
    let (received_before, resumed_before) = coordinator.metrics().upload_counts();
    let rest = a_upload.chunks_from(at);
    let sent: usize = rest.iter().map(|chunk| chunk.data.len()).sum();
    assert_eq!(sent, a_upload.bytes.len() - at, "{why}");
    // In zstd frames, for the compressed path: offsets and hashes still refer to the uncompressed bytes.
    let mut parts = a_upload.parts(prefix, rest);
    for part in &mut parts {
        match &mut part.part {
            Some(pb::update_part::Part::Header(header)) => header.compression = pb::Compression::Zstd as i32,
            Some(pb::update_part::Part::Chunk(chunk)) => chunk.data = zstd::bulk::compress(&chunk.data, 1).unwrap(),
            None => unreachable!(),
        }
    }
    let receipt = submit(a, parts).await.unwrap();
    assert_eq!(receipt.update_id, hex::encode(parameters_hash(&a_values)));
    assert_eq!(receipt.received_in_round, 1);
    let (received, resumed) = coordinator.metrics().upload_counts();
    assert_eq!(received - received_before, sent as u64, "{why}");
    assert_eq!(resumed - resumed_before, 1);
    assert_status(
        upload_status(a, &study_id, &a_upload.header.update_hash).await,
        Code::AlreadyExists,
        "already submitted an update for round 1",
    );

    // b breaks off too, then drops out; c delivers: the round closes with a and c.
    let b_values = vec![-2e-4f32; n];
    let b_upload = prepare(b, &study_id, &b_values);
    let b_acknowledged = cut_after(b, &study_id, &b_upload, 2, &proxy).await;
    assert_eq!(b_acknowledged.acknowledged_bytes, 2 * CHUNK as u64);
    let report = pb::FailureReport {
        study_id: study_id.clone(),
        round: 1,
        reason: "link down".into(),
        auth: Some(b.signed("ReportFailure")),
        kind: pb::FailureKind::Unspecified as i32,
    };
    b.client.report_failure(report).await.unwrap();
    // c first sends 8 bytes more than it declared, in 1 MiB chunks: the last one is refused, nothing recorded.
    let c_values = vec![1e-4f32; n];
    let c_upload = prepare(c, &study_id, &c_values);
    let long = [&c_upload.bytes[..], &[0; 8]].concat();
    let mib = pdc_proto::MAX_CHUNK_BYTES;
    let chunks = (0..long.len())
        .step_by(mib)
        .map(|start| pb::Chunk {
            offset: start as u64,
            data: long[start..(start + mib).min(long.len())].to_vec(),
            running_hash: Vec::new(),
        })
        .collect();
    let ledger_size = support::log_size(&url).await;
    assert_status(
        submit(c, c_upload.parts(0, chunks)).await,
        Code::ResourceExhausted,
        &format!("runs to byte {}, past the {} bytes", long.len(), c_upload.bytes.len()),
    );
    assert_eq!(support::log_size(&url).await, ledger_size);
    c.submit(&study_id, 1, &c_values).await.unwrap();
    let status =
        support::wait_for_status(&mut researcher, &study_id, Duration::from_secs(60), |s| !s.rounds.is_empty()).await;
    assert_eq!(status.rounds[0].contributors, ["hospital-a", "hospital-c"]);
    let a_stats = status.hospitals.iter().find(|h| h.pdc_id == "hospital-a").unwrap();
    assert_eq!((a_stats.rounds_joined, a_stats.updates_rejected), (1, 0));
    let accepted: Vec<String> = coordinator
        .ledger()
        .entries()
        .unwrap()
        .into_iter()
        .filter_map(|(_, entry)| match entry {
            Entry::ContributionAccepted { contribution, .. } => Some(contribution.pdc_id),
            _ => None,
        })
        .collect();
    assert_eq!(accepted, ["hospital-a", "hospital-c"], "a's update is counted once");

    // A resume after the round closed is refused, and the partial upload is gone from the disk.
    let b_at = 2 * CHUNK;
    assert_status(
        submit(b, b_upload.parts(b_at as u64, b_upload.chunks_from(b_at))).await,
        Code::FailedPrecondition,
        "round 1 is closed",
    );
    assert_status(
        upload_status(b, &study_id, &b_upload.header.update_hash).await,
        Code::FailedPrecondition,
        "round 1 is closed",
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while std::fs::read_dir(&incoming).unwrap().count() > 0 {
        assert!(tokio::time::Instant::now() < deadline, "partial uploads outlived their round");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A TCP proxy that forwards hospital-to-coordinator bytes at about 4 MB/s (so an upload of a few megabytes takes
/// long enough to be cut in the middle) and drops every connection open when `cut` fires; later connections are
/// forwarded as before.
async fn cutting_proxy(target: String) -> (String, tokio::sync::broadcast::Sender<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let (cut, _) = tokio::sync::broadcast::channel::<()>(1);
    let cuts = cut.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut client, _)) = listener.accept().await else { return };
            let Ok(mut server) = tokio::net::TcpStream::connect(&target).await else { return };
            let mut cut = cuts.subscribe();
            tokio::spawn(async move {
                let (mut up, mut down) = (vec![0u8; 16 << 10], vec![0u8; 16 << 10]);
                loop {
                    tokio::select! {
                        read = client.read(&mut up) => {
                            let Ok(n) = read else { return };
                            if n == 0 || server.write_all(&up[..n]).await.is_err() {
                                return;
                            }
                            tokio::time::sleep(Duration::from_micros(n as u64 / 4)).await;
                        }
                        read = server.read(&mut down) => {
                            let Ok(n) = read else { return };
                            if n == 0 || client.write_all(&down[..n]).await.is_err() {
                                return;
                            }
                        }
                        // Dropping both sockets breaks the connection in the middle of whatever it carries.
                        _ = cut.recv() => return,
                    }
                }
            });
        }
    });
    (format!("http://{address}"), cut)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_cut_off_mid_upload_reconnects_and_sends_only_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = CoordinatorConfig::new(dir.path().join("coordinator"));
    config.tick_interval = Duration::from_millis(20);
    let (url, _stop, coordinator) = support::serve_coordinator(config, ([127, 0, 0, 1], 0).into()).await;
    let manifest = MANIFEST.replace("min = 2\nmax = 3", "min = 1\nmax = 1").replace("rounds = 2", "rounds = 1");
    let mut researcher = support::researcher(&url).await;
    let request = pb::CreateStudyRequest {
        manifest_toml: manifest,
        validation_csv: support::breast_cancer_csv().into_bytes(),
        ..Default::default()
    };
    let study_id = researcher.create_study(request).await.unwrap().into_inner().study_id;

    let (proxy, cut) = cutting_proxy(url.trim_start_matches("http://").to_owned()).await;
    let data = support::root().join("data/breast_cancer_wisconsin.csv");
    let hospital = format!(
        "pdc_id = \"hospital-a\"\ncoordinator = \"{proxy}\"\nkey_file = \"a.key\"\ndata = {data:?}\n\
         compression = \"zstd\"\n\n[retry]\ninitial_ms = 50\nmax_ms = 200\npoll_ms = 50\n"
    );
    let path = dir.path().join("hospital.toml");
    std::fs::write(&path, hospital).unwrap();
    let agent = pdc_client::Agent::new(pdc_client::HospitalConfig::load(&path).unwrap()).unwrap();
    let running = tokio::spawn(agent.run());
    // Wait for the hospital's consent before starting, so round 1 has its participant.
    support::wait_for_status(&mut researcher, &study_id, Duration::from_secs(30), |s| !s.consented.is_empty()).await;
    researcher.start_study(pb::StudyRef { study_id: study_id.clone() }).await.unwrap();

    // The agent sends its update in 1 MiB chunks (zstd frames; the coordinator counts uncompressed bytes): cut the
    // connection once the coordinator has acknowledged one or two of them, at random.
    let update_bytes = 588_289 * 4;
    let cut_after = (1 + random_below(2) as u64) << 20;
    let why = format!("connection cut once {cut_after} bytes were received");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while coordinator.metrics().upload_counts().0 < cut_after {
        assert!(tokio::time::Instant::now() < deadline, "the upload never reached {cut_after} bytes");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    cut.send(()).unwrap();
    let status = support::wait_for_status(&mut researcher, &study_id, Duration::from_secs(120), |s| {
        s.state == pb::StudyState::Finished as i32
    })
    .await;
    running.abort();
    assert_eq!(status.rounds[0].contributors, ["hospital-a"], "{why}");
    let (received, resumed) = coordinator.metrics().upload_counts();
    assert_eq!(resumed, 1, "the upload resumed instead of starting over: {why}");
    assert_eq!(received, update_bytes as u64, "no acknowledged byte was sent twice: {why}");
    let contributions = coordinator
        .ledger()
        .entries()
        .unwrap()
        .into_iter()
        .filter(|(_, entry)| matches!(entry, Entry::ContributionAccepted { .. }))
        .count();
    assert_eq!(contributions, 1, "{why}");
}
