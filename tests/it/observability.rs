//! Observability: the Prometheus endpoint counts what a study did (rounds, updates accepted and rejected by
//! reason, bytes, latency), and `pdc --log-format json` writes one JSON object per log line.

use std::time::Duration;

use pdc_proto::pb;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

use crate::support::{self, TestPdc};

const MANIFEST: &str = r#"
name = "observed"
seed = 3
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
min = 2
max = 2
round_deadline_secs = 60
"#;

async fn scrape(address: std::net::SocketAddr) -> String {
    let mut socket = tokio::net::TcpStream::connect(address).await.unwrap();
    socket.write_all(b"GET /metrics HTTP/1.1\r\nhost: pdc\r\n\r\n").await.unwrap();
    let mut text = String::new();
    socket.read_to_string(&mut text).await.unwrap();
    assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
    text
}

/// The value of the sample `name` (with its labels) in an exposition.
fn sample(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|line| line.strip_prefix(name).and_then(|rest| rest.strip_prefix(' ')))
        .unwrap_or_else(|| panic!("no sample {name} in\n{text}"))
        .parse()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_metrics_endpoint_counts_a_round_its_updates_and_its_rejections() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = pdc_coordinator::CoordinatorConfig::new(dir.path().join("coordinator"));
    config.tick_interval = Duration::from_millis(20);
    let (url, _stop, coordinator) = support::serve_coordinator(config, ([127, 0, 0, 1], 0).into()).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let metrics_address = listener.local_addr().unwrap();
    tokio::spawn(pdc_coordinator::metrics::serve(
        std::sync::Arc::clone(coordinator.metrics()),
        listener,
        std::future::pending(),
    ));
    let before = scrape(metrics_address).await;
    assert_eq!(sample(&before, "pdc_rounds_opened_total"), 0.0);

    let mut researcher = support::researcher(&url).await;
    let request = pb::CreateStudyRequest {
        manifest_toml: MANIFEST.to_owned(),
        validation_csv: support::breast_cancer_csv().into_bytes(),
        ..Default::default()
    };
    let study_id = researcher.create_study(request).await.unwrap().into_inner().study_id;
    let (mut pdcs, mut streams) = support::consenting_pdcs(&url, &["hospital-a", "hospital-b"]).await;
    researcher.start_study(pb::StudyRef { study_id: study_id.clone() }).await.unwrap();
    let task = support::next_task(&mut streams[0]).await;
    support::next_task(&mut streams[1]).await;
    let model = pdcs[0].download(&task).await;
    // One refused upload (the wrong length), then both good ones.
    let wrong = vec![0.0f32; model.len() + 1];
    assert!(pdcs[0].submit(&study_id, 1, &wrong).await.is_err());
    let mut stranger = TestPdc::connect(&url, "stranger").await;
    assert!(stranger.submit(&study_id, 1, &model).await.is_err());
    for pdc in &mut pdcs {
        pdc.submit(&study_id, 1, &vec![0.01f32; model.len()]).await.unwrap();
    }
    support::wait_for_status(&mut researcher, &study_id, Duration::from_secs(30), |s| {
        s.state == pb::StudyState::Finished as i32
    })
    .await;

    let text = scrape(metrics_address).await;
    assert_eq!(sample(&text, "pdc_rounds_opened_total"), 1.0);
    assert_eq!(sample(&text, "pdc_rounds_aggregated_total"), 1.0);
    assert_eq!(sample(&text, "pdc_updates_accepted_total"), 2.0);
    assert_eq!(sample(&text, "pdc_updates_rejected_total{reason=\"invalid_argument\"}"), 1.0);
    assert_eq!(sample(&text, "pdc_updates_rejected_total{reason=\"unauthenticated\"}"), 1.0);
    assert_eq!(sample(&text, "pdc_update_bytes_received_total"), (2 * 4 * model.len()) as f64);
    assert!(sample(&text, "pdc_model_bytes_sent_total") >= (4 * model.len()) as f64);
    assert_eq!(sample(&text, "pdc_round_latency_seconds_count"), 1.0);
    assert!(sample(&text, "pdc_round_latency_seconds_sum") > 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_coordinator_process_logs_json_lines_and_serves_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let config = "listen = \"127.0.0.1:0\"\ndata_dir = \"coordinator\"\nmetrics_listen = \"127.0.0.1:0\"\n\n[ledger]\nkey_file = \
         \"coordinator.key\"\n";
    let path = dir.path().join("coordinator.toml");
    std::fs::write(&path, config).unwrap();
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_pdc"))
        .args(["--log-format", "json", "--log", "info", "coordinator", "--config"])
        .arg(&path)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut stderr = BufReader::new(child.stderr.take().unwrap()).lines();
    let next = |line: Option<String>| line.expect("a line");
    let timeout = Duration::from_secs(30);
    let listening = next(tokio::time::timeout(timeout, stdout.next_line()).await.unwrap().unwrap());
    assert!(listening.starts_with("pdc coordinator listening on 127.0.0.1:"), "{listening}");
    let _ledger = next(tokio::time::timeout(timeout, stdout.next_line()).await.unwrap().unwrap());
    let metrics = next(tokio::time::timeout(timeout, stdout.next_line()).await.unwrap().unwrap());
    let address = metrics
        .strip_prefix("pdc coordinator metrics on http://")
        .and_then(|rest| rest.strip_suffix("/metrics"))
        .unwrap_or_else(|| panic!("{metrics}"));
    let text = scrape(address.parse().unwrap()).await;
    assert!(text.contains("# TYPE pdc_updates_rejected_total counter"), "{text}");

    // Every log line is a JSON object with a level, a timestamp, a target and its fields.
    loop {
        let line = next(tokio::time::timeout(timeout, stderr.next_line()).await.unwrap().unwrap());
        let json: serde_json::Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert!(json["level"].is_string() && json["timestamp"].is_string() && json["target"].is_string(), "{line}");
        if json["fields"]["message"].as_str().is_some_and(|m| m.starts_with("coordinator started")) {
            // Without [tls] the coordinator warns that it serves plaintext.
            assert_eq!(json["level"], "WARN", "{line}");
            assert!(json["fields"]["address"].as_str().unwrap().starts_with("127.0.0.1:"), "{line}");
            break;
        }
    }
    child.kill().await.unwrap();
}
