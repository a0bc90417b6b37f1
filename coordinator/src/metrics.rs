//! The coordinator's operational metrics, and the Prometheus endpoint that serves them.
//!
//! Counters and gauges are plain atomics and small maps behind locks, updated where the events happen
//! ([`crate::service`], [`crate::server`]); [`Telemetry::render`] writes them in the Prometheus text exposition
//! format (version 0.0.4). [`serve`] answers `GET /metrics` over HTTP/1.1 on its own listener, so that a scraper
//! never needs the gRPC port or its TLS.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// Upper bounds of the round-latency histogram's buckets, in seconds.
const LATENCY_BUCKETS: [f64; 10] = [0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0];

/// The largest HTTP request head the endpoint reads.
const MAX_REQUEST_BYTES: usize = 8 << 10;

/// What the coordinator counts.
#[derive(Debug, Default)]
pub struct Telemetry {
    rounds_opened: AtomicU64,
    rounds_aggregated: AtomicU64,
    rounds_abandoned: AtomicU64,
    updates_accepted: AtomicU64,
    /// By reason: the gRPC status code of a refused upload (`invalid_argument`, …), or `flagged` for an update the
    /// anomaly check left out of aggregation.
    updates_rejected: Mutex<BTreeMap<String, u64>>,
    bytes_received: AtomicU64,
    bytes_sent: AtomicU64,
    /// Update chunks as they arrived, acknowledged or refused: uncompressed bytes, and bytes on the wire.
    chunk_bytes_received: AtomicU64,
    chunk_wire_bytes_received: AtomicU64,
    uploads_resumed: AtomicU64,
    model_wire_bytes_sent: AtomicU64,
    statistics_released: AtomicU64,
    latency: Mutex<Histogram>,
    /// Each PDC's latest recorded cumulative ε.
    epsilon: Mutex<BTreeMap<String, f64>>,
}

#[derive(Debug, Default)]
struct Histogram {
    counts: [u64; LATENCY_BUCKETS.len()],
    count: u64,
    sum: f64,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Telemetry {
    /// A round opened.
    pub fn round_opened(&self) {
        self.rounds_opened.fetch_add(1, Ordering::Relaxed);
    }

    /// A round was aggregated and recorded, `latency` after it opened.
    pub fn round_aggregated(&self, latency: Duration) {
        self.rounds_aggregated.fetch_add(1, Ordering::Relaxed);
        let seconds = latency.as_secs_f64();
        let mut histogram = lock(&self.latency);
        for (count, bound) in histogram.counts.iter_mut().zip(LATENCY_BUCKETS) {
            if seconds <= bound {
                *count += 1;
            }
        }
        histogram.count += 1;
        histogram.sum += seconds;
    }

    /// A round closed with too few updates and will be tried again.
    pub fn round_abandoned(&self) {
        self.rounds_abandoned.fetch_add(1, Ordering::Relaxed);
    }

    /// An update of `bytes` was accepted.
    pub fn update_accepted(&self, bytes: u64) {
        self.updates_accepted.fetch_add(1, Ordering::Relaxed);
        self.bytes_received.fetch_add(bytes, Ordering::Relaxed);
    }

    /// An update was refused or left out, for `reason` (a short snake_case label).
    pub fn update_rejected(&self, reason: &str) {
        *lock(&self.updates_rejected).entry(reason.to_owned()).or_default() += 1;
    }

    /// `bytes` of model were sent to a PDC or researcher, `wire_bytes` once compressed.
    pub fn model_bytes_sent(&self, bytes: u64, wire_bytes: u64) {
        self.bytes_sent.fetch_add(bytes, Ordering::Relaxed);
        self.model_wire_bytes_sent.fetch_add(wire_bytes, Ordering::Relaxed);
    }

    /// An update chunk of `bytes` (uncompressed) arrived as `wire_bytes`, before it was checked.
    pub fn update_chunk_received(&self, bytes: u64, wire_bytes: u64) {
        self.chunk_bytes_received.fetch_add(bytes, Ordering::Relaxed);
        self.chunk_wire_bytes_received.fetch_add(wire_bytes, Ordering::Relaxed);
    }

    /// An upload resumed a partial upload.
    pub fn upload_resumed(&self) {
        self.uploads_resumed.fetch_add(1, Ordering::Relaxed);
    }

    /// Update bytes received in chunks so far (uncompressed, acknowledged or not), and uploads resumed: what a
    /// test of resumption counts.
    pub fn upload_counts(&self) -> (u64, u64) {
        (self.chunk_bytes_received.load(Ordering::Relaxed), self.uploads_resumed.load(Ordering::Relaxed))
    }

    /// A PDC's DP statistics release was recorded.
    pub fn statistics_released(&self) {
        self.statistics_released.fetch_add(1, Ordering::Relaxed);
    }

    /// `pdc_id`'s cumulative ε is now `epsilon`.
    pub fn epsilon_spent(&self, pdc_id: &str, epsilon: f64) {
        lock(&self.epsilon).insert(pdc_id.to_owned(), epsilon);
    }

    /// The metrics in the Prometheus text exposition format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let counter = |out: &mut String, name: &str, help: &str, value: u64| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}");
        };
        let load = |value: &AtomicU64| value.load(Ordering::Relaxed);
        counter(&mut out, "pdc_rounds_opened_total", "Rounds opened, retries included.", load(&self.rounds_opened));
        counter(
            &mut out,
            "pdc_rounds_aggregated_total",
            "Rounds aggregated and recorded on the ledger.",
            load(&self.rounds_aggregated),
        );
        counter(
            &mut out,
            "pdc_rounds_abandoned_total",
            "Rounds that closed with too few updates.",
            load(&self.rounds_abandoned),
        );
        counter(&mut out, "pdc_updates_accepted_total", "Updates accepted.", load(&self.updates_accepted));
        let _ = writeln!(
            out,
            "# HELP pdc_updates_rejected_total Updates refused (by gRPC status) or left out of aggregation (flagged).\n\
             # TYPE pdc_updates_rejected_total counter"
        );
        for (reason, count) in lock(&self.updates_rejected).iter() {
            let _ = writeln!(out, "pdc_updates_rejected_total{{reason=\"{}\"}} {count}", escape(reason));
        }
        counter(&mut out, "pdc_update_bytes_received_total", "Bytes of accepted updates.", load(&self.bytes_received));
        counter(&mut out, "pdc_model_bytes_sent_total", "Bytes of models sent.", load(&self.bytes_sent));
        counter(
            &mut out,
            "pdc_model_wire_bytes_sent_total",
            "Bytes of models sent, as they travelled (compressed or not).",
            load(&self.model_wire_bytes_sent),
        );
        counter(
            &mut out,
            "pdc_update_chunk_bytes_total",
            "Bytes of update chunks received, acknowledged or refused (uncompressed).",
            load(&self.chunk_bytes_received),
        );
        counter(
            &mut out,
            "pdc_update_wire_bytes_total",
            "Bytes of update chunks received, as they travelled (compressed or not).",
            load(&self.chunk_wire_bytes_received),
        );
        counter(
            &mut out,
            "pdc_uploads_resumed_total",
            "Uploads that resumed a partial upload.",
            load(&self.uploads_resumed),
        );
        counter(
            &mut out,
            "pdc_statistics_released_total",
            "DP statistics releases recorded.",
            load(&self.statistics_released),
        );
        let histogram = lock(&self.latency);
        let _ = writeln!(
            out,
            "# HELP pdc_round_latency_seconds Time from a round's opening to its recorded aggregate.\n\
             # TYPE pdc_round_latency_seconds histogram"
        );
        for (count, bound) in histogram.counts.iter().zip(LATENCY_BUCKETS) {
            let _ = writeln!(out, "pdc_round_latency_seconds_bucket{{le=\"{bound}\"}} {count}");
        }
        let _ = writeln!(out, "pdc_round_latency_seconds_bucket{{le=\"+Inf\"}} {}", histogram.count);
        let _ = writeln!(out, "pdc_round_latency_seconds_sum {}", histogram.sum);
        let _ = writeln!(out, "pdc_round_latency_seconds_count {}", histogram.count);
        drop(histogram);
        let _ = writeln!(
            out,
            "# HELP pdc_epsilon_spent Each PDC's latest recorded cumulative privacy spend (epsilon).\n\
             # TYPE pdc_epsilon_spent gauge"
        );
        for (pdc_id, epsilon) in lock(&self.epsilon).iter() {
            let _ = writeln!(out, "pdc_epsilon_spent{{pdc=\"{}\"}} {epsilon}", escape(pdc_id));
        }
        out
    }
}

/// A label value with `\`, `"` and newlines escaped as the exposition format requires.
fn escape(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// The snake_case name of a gRPC status code, as a rejection reason.
pub fn code_label(code: tonic::Code) -> &'static str {
    use tonic::Code;
    match code {
        Code::Ok => "ok",
        Code::Cancelled => "cancelled",
        Code::Unknown => "unknown",
        Code::InvalidArgument => "invalid_argument",
        Code::DeadlineExceeded => "deadline_exceeded",
        Code::NotFound => "not_found",
        Code::AlreadyExists => "already_exists",
        Code::PermissionDenied => "permission_denied",
        Code::ResourceExhausted => "resource_exhausted",
        Code::FailedPrecondition => "failed_precondition",
        Code::Aborted => "aborted",
        Code::OutOfRange => "out_of_range",
        Code::Unimplemented => "unimplemented",
        Code::Internal => "internal",
        Code::Unavailable => "unavailable",
        Code::DataLoss => "data_loss",
        Code::Unauthenticated => "unauthenticated",
    }
}

/// Serves `GET /metrics` on `listener` until `shutdown` completes; any other request gets 404, a malformed or
/// oversized one 400. One request per connection.
pub async fn serve(
    metrics: std::sync::Arc<Telemetry>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send,
) -> std::io::Result<()> {
    tokio::pin!(shutdown);
    loop {
        let (mut socket, _) = tokio::select! {
            accepted = listener.accept() => accepted?,
            () = &mut shutdown => return Ok(()),
        };
        let metrics = std::sync::Arc::clone(&metrics);
        tokio::spawn(async move {
            let response = match tokio::time::timeout(Duration::from_secs(5), read_head(&mut socket)).await {
                Ok(Some(head)) if head.starts_with("GET /metrics ") || head.starts_with("GET /metrics?") => {
                    response("200 OK", "text/plain; version=0.0.4; charset=utf-8", &metrics.render())
                }
                Ok(Some(_)) => response("404 Not Found", "text/plain; charset=utf-8", "only GET /metrics is served\n"),
                _ => response("400 Bad Request", "text/plain; charset=utf-8", "malformed or oversized request\n"),
            };
            let _ = socket.write_all(response.as_bytes()).await;
            let _ = socket.shutdown().await;
        });
    }
}

/// Reads an HTTP request head (up to the blank line); `None` if it is not UTF-8, too long, or the peer closes first.
async fn read_head(socket: &mut tokio::net::TcpStream) -> Option<String> {
    let mut head = Vec::new();
    let mut buffer = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let read = socket.read(&mut buffer).await.ok()?;
        if read == 0 || head.len() + read > MAX_REQUEST_BYTES {
            return None;
        }
        head.extend_from_slice(&buffer[..read]);
    }
    String::from_utf8(head).ok()
}

fn response(status: &str, content_type: &str, body: &str) -> String {
    format!(
        "HTTP/1.1 {status}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_the_exposition_format() {
        let metrics = Telemetry::default();
        metrics.round_opened();
        metrics.round_opened();
        metrics.round_aggregated(Duration::from_millis(700));
        metrics.round_abandoned();
        metrics.update_accepted(4096);
        metrics.update_rejected("invalid_argument");
        metrics.update_rejected("invalid_argument");
        metrics.update_rejected("flagged");
        metrics.model_bytes_sent(100, 60);
        metrics.update_chunk_received(4096, 1000);
        metrics.upload_resumed();
        metrics.statistics_released();
        metrics.epsilon_spent("hospital \"a\"", 1.5);
        expect_test::expect![[r##"
            # HELP pdc_rounds_opened_total Rounds opened, retries included.
            # TYPE pdc_rounds_opened_total counter
            pdc_rounds_opened_total 2
            # HELP pdc_rounds_aggregated_total Rounds aggregated and recorded on the ledger.
            # TYPE pdc_rounds_aggregated_total counter
            pdc_rounds_aggregated_total 1
            # HELP pdc_rounds_abandoned_total Rounds that closed with too few updates.
            # TYPE pdc_rounds_abandoned_total counter
            pdc_rounds_abandoned_total 1
            # HELP pdc_updates_accepted_total Updates accepted.
            # TYPE pdc_updates_accepted_total counter
            pdc_updates_accepted_total 1
            # HELP pdc_updates_rejected_total Updates refused (by gRPC status) or left out of aggregation (flagged).
            # TYPE pdc_updates_rejected_total counter
            pdc_updates_rejected_total{reason="flagged"} 1
            pdc_updates_rejected_total{reason="invalid_argument"} 2
            # HELP pdc_update_bytes_received_total Bytes of accepted updates.
            # TYPE pdc_update_bytes_received_total counter
            pdc_update_bytes_received_total 4096
            # HELP pdc_model_bytes_sent_total Bytes of models sent.
            # TYPE pdc_model_bytes_sent_total counter
            pdc_model_bytes_sent_total 100
            # HELP pdc_model_wire_bytes_sent_total Bytes of models sent, as they travelled (compressed or not).
            # TYPE pdc_model_wire_bytes_sent_total counter
            pdc_model_wire_bytes_sent_total 60
            # HELP pdc_update_chunk_bytes_total Bytes of update chunks received, acknowledged or refused (uncompressed).
            # TYPE pdc_update_chunk_bytes_total counter
            pdc_update_chunk_bytes_total 4096
            # HELP pdc_update_wire_bytes_total Bytes of update chunks received, as they travelled (compressed or not).
            # TYPE pdc_update_wire_bytes_total counter
            pdc_update_wire_bytes_total 1000
            # HELP pdc_uploads_resumed_total Uploads that resumed a partial upload.
            # TYPE pdc_uploads_resumed_total counter
            pdc_uploads_resumed_total 1
            # HELP pdc_statistics_released_total DP statistics releases recorded.
            # TYPE pdc_statistics_released_total counter
            pdc_statistics_released_total 1
            # HELP pdc_round_latency_seconds Time from a round's opening to its recorded aggregate.
            # TYPE pdc_round_latency_seconds histogram
            pdc_round_latency_seconds_bucket{le="0.1"} 0
            pdc_round_latency_seconds_bucket{le="0.25"} 0
            pdc_round_latency_seconds_bucket{le="0.5"} 0
            pdc_round_latency_seconds_bucket{le="1"} 1
            pdc_round_latency_seconds_bucket{le="2.5"} 1
            pdc_round_latency_seconds_bucket{le="5"} 1
            pdc_round_latency_seconds_bucket{le="10"} 1
            pdc_round_latency_seconds_bucket{le="30"} 1
            pdc_round_latency_seconds_bucket{le="60"} 1
            pdc_round_latency_seconds_bucket{le="300"} 1
            pdc_round_latency_seconds_bucket{le="+Inf"} 1
            pdc_round_latency_seconds_sum 0.7
            pdc_round_latency_seconds_count 1
            # HELP pdc_epsilon_spent Each PDC's latest recorded cumulative privacy spend (epsilon).
            # TYPE pdc_epsilon_spent gauge
            pdc_epsilon_spent{pdc="hospital \"a\""} 1.5
        "##]]
        .assert_eq(&metrics.render());
    }

    #[tokio::test]
    async fn the_endpoint_serves_metrics_and_refuses_other_paths() {
        let metrics = std::sync::Arc::new(Telemetry::default());
        metrics.update_accepted(8);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve(std::sync::Arc::clone(&metrics), listener, async {
            let _ = stopped.await;
        }));
        let get = |request: &'static [u8]| async move {
            let mut socket = tokio::net::TcpStream::connect(address).await.unwrap();
            socket.write_all(request).await.unwrap();
            let mut text = String::new();
            socket.read_to_string(&mut text).await.unwrap();
            text
        };
        let ok = get(b"GET /metrics HTTP/1.1\r\nhost: x\r\n\r\n").await;
        assert!(ok.starts_with("HTTP/1.1 200 OK\r\ncontent-type: text/plain; version=0.0.4"), "{ok}");
        assert!(ok.contains("\r\n\r\n# HELP pdc_rounds_opened_total") && ok.contains("pdc_updates_accepted_total 1\n"));
        let missing = get(b"GET / HTTP/1.1\r\n\r\n").await;
        assert!(missing.starts_with("HTTP/1.1 404 Not Found"), "{missing}");
        let garbage = get(b"\xff\xfe\r\n\r\n").await;
        assert!(garbage.starts_with("HTTP/1.1 400 Bad Request"), "{garbage}");
        drop(stop);
        server.await.unwrap().unwrap();
    }
}
