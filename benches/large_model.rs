//! The large-model bench: the real `pdc coordinator` binary under `/usr/bin/time -v`, one FedAvg round of a
//! ~100M-parameter MLP (50 features, seven hidden layers of 4096, the widest a manifest allows: 100.9M
//! parameters, 404 MB) with ten hospitals over real gRPC, reporting the coordinator's peak RSS against
//! the model's size and the throughput of model downloads and update uploads.
//!
//! `cargo xtask bench large-model [--parameters N] [--hospitals N] [--compression none|zstd]`; with `--test` (as
//! `cargo bench -- --test` passes) it runs a 1M-parameter round with two hospitals once, so the harness keeps
//! working in CI.
//!
//! The hospitals are lean bench clients in this process, not the full agent: each downloads the model (checking
//! its hash, keeping nothing) and uploads a valid signed update of seeded values, generated chunk by chunk. Burn
//! training of 100M parameters on two cores would take the bench's whole time and measure training, not the
//! coordinator.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use pdc_ledger::Identity;
use pdc_ledger::hash::StreamHasher;
use pdc_ledger::signing::{self, ConsentAction, Contribution};
use pdc_proto::pb;
use pdc_proto::pb::federation_service_client::FederationServiceClient;
use pdc_proto::pb::study_service_client::StudyServiceClient;
use pdc_proto::{MAX_CHUNK_BYTES, MAX_MESSAGE_BYTES};
use tonic::transport::Channel;

/// The features of the bench's table.
const FEATURES: usize = 50;
/// The widest hidden layer a manifest allows.
const MAX_WIDTH: usize = 4096;
/// Rows of the validation set the coordinator evaluates every round on.
const VALIDATION_ROWS: usize = 200;
/// The acceptance bound: the coordinator's peak RSS at most this many times the model's size.
const RSS_BOUND: f64 = 3.0;

struct Options {
    parameters: u64,
    hospitals: usize,
    compression: pb::Compression,
    quick: bool,
}

fn options() -> Result<Options> {
    let mut options =
        Options { parameters: 100_000_000, hospitals: 10, compression: pb::Compression::None, quick: false };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = |name: &str| args.next().with_context(|| format!("{name} needs a value"));
        match arg.as_str() {
            "--parameters" => options.parameters = value("--parameters")?.parse()?,
            "--hospitals" => options.hospitals = value("--hospitals")?.parse()?,
            "--compression" => {
                options.compression = match value("--compression")?.as_str() {
                    "none" => pb::Compression::None,
                    "zstd" => pb::Compression::Zstd,
                    other => bail!("--compression is none or zstd, not {other}"),
                }
            }
            "--test" => options.quick = true,
            // cargo bench passes `--bench`.
            "--bench" => {}
            other => bail!("unknown argument {other}"),
        }
    }
    if options.quick {
        (options.parameters, options.hospitals) = (1_000_000, 2);
    }
    Ok(options)
}

fn main() -> Result<()> {
    // Test runners list a bench's tests (nextest: `--list --format terse --ignored`): it has none to list.
    if std::env::args().any(|arg| arg == "--list") {
        return Ok(());
    }
    let options = options()?;
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    runtime.block_on(run(options))
}

/// Hidden layers giving about `parameters` parameters: `[h, h]` for small models, else layers of the widest
/// width a manifest allows (4096: 16.8M parameters between two of them), as many as it takes.
fn hidden_layers(parameters: u64) -> Vec<usize> {
    let per_layer = (MAX_WIDTH * MAX_WIDTH) as u64;
    if parameters < per_layer {
        let width = ((parameters as f64).sqrt() as usize).max(1);
        return vec![width, width];
    }
    vec![MAX_WIDTH; ((parameters + per_layer / 2) / per_layer) as usize + 1]
}

fn n_parameters(hidden: &[usize]) -> u64 {
    let mut widths = vec![FEATURES];
    widths.extend_from_slice(hidden);
    widths.push(1);
    widths.windows(2).map(|pair| (pair[0] * pair[1] + pair[1]) as u64).sum()
}

async fn run(options: Options) -> Result<()> {
    let hidden = hidden_layers(options.parameters);
    let n = n_parameters(&hidden);
    let model_bytes = n * 4;
    let dir = tempfile::tempdir()?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let config = dir.path().join("coordinator.toml");
    // Above the default `limits.max_parameters` (50M): the bench raises it for its own model.
    std::fs::write(
        &config,
        format!("listen = \"127.0.0.1:{port}\"\ndata_dir = \"data\"\ntick_ms = 50\n[limits]\nmax_parameters = {n}\n"),
    )?;
    let mut coordinator = Coordinator::start(&config, dir.path())?;
    let url = format!("http://127.0.0.1:{port}");
    let outcome = round(&options, &url, &hidden, n).await;
    let memory = coordinator.stop()?;
    let figures = outcome?;

    let mb = |bytes: u64| bytes as f64 / 1e6;
    let total = model_bytes * options.hospitals as u64;
    let rss_ratio = memory.peak_rss_bytes as f64 / model_bytes as f64;
    println!("large-model bench: {} hospitals, FedAvg, compression {:?}", options.hospitals, options.compression);
    let layers: Vec<String> = hidden.iter().map(usize::to_string).collect();
    println!("  model: MLP {FEATURES} → {} → 1, {n} parameters, {:.1} MB", layers.join(" → "), mb(model_bytes));
    println!(
        "  downloads: {:.0} MB in {:.1} s = {:.0} MB/s ({:.0} MB on the wire)",
        mb(total),
        figures.download.as_secs_f64(),
        mb(total) / figures.download.as_secs_f64(),
        mb(figures.download_wire_bytes)
    );
    println!(
        "  uploads: {:.0} MB in {:.1} s = {:.0} MB/s ({:.0} MB on the wire)",
        mb(total),
        figures.upload.as_secs_f64(),
        mb(total) / figures.upload.as_secs_f64(),
        mb(figures.upload_wire_bytes)
    );
    println!("  aggregation, evaluation and sealing after the last upload: {:.1} s", figures.aggregation.as_secs_f64());
    println!(
        "  coordinator peak RSS: {:.0} MB = {rss_ratio:.2} × the model ({}; the bound is {RSS_BOUND} ×)",
        mb(memory.peak_rss_bytes),
        memory.source
    );
    if let Some(report) = &memory.time_report {
        for line in report.lines().filter(|line| {
            ["Elapsed (wall clock)", "Percent of CPU", "Maximum resident set size"].iter().any(|key| line.contains(key))
        }) {
            println!("    /usr/bin/time -v: {}", line.trim());
        }
    }
    // A small model is dwarfed by the process's own footprint; the bound speaks of large ones.
    if !options.quick && rss_ratio > RSS_BOUND {
        bail!("the coordinator's peak RSS is {rss_ratio:.2} × the model, over the bound of {RSS_BOUND} ×");
    }
    Ok(())
}

/// What one round measured.
struct Figures {
    download: Duration,
    upload: Duration,
    aggregation: Duration,
    download_wire_bytes: u64,
    upload_wire_bytes: u64,
}

async fn round(options: &Options, url: &str, hidden: &[usize], n: u64) -> Result<Figures> {
    let mut researcher = connect_researcher(url).await?;
    let manifest = format!(
        "name = \"large-model\"\nseed = 1\nmodel = {{ kind = \"mlp\", hidden = {hidden:?} }}\n\
         [data]\ntask = \"binary_classification\"\nlabel = \"label\"\n\
         [training]\nrounds = 1\nlocal_epochs = 1\nbatch_size = 32\nlearning_rate = 0.01\n\
         [participants]\nmin = {0}\nmax = {0}\nround_deadline_secs = 3600\n",
        options.hospitals
    );
    let request = pb::CreateStudyRequest {
        manifest_toml: manifest,
        validation_csv: validation_csv().into_bytes(),
        ..Default::default()
    };
    let study_id = researcher.create_study(request).await?.into_inner().study_id;
    let mut hospitals = Vec::new();
    for index in 0..options.hospitals {
        hospitals.push(Hospital::join(url, &format!("hospital-{index:02}")).await?);
    }
    let mut streams = Vec::new();
    for hospital in &mut hospitals {
        streams.push(hospital.client.wait_tasks(hospital.signed("WaitTasks")).await?.into_inner());
    }
    researcher.start_study(pb::StudyRef { study_id: study_id.clone() }).await?;

    // Every hospital downloads at once, then every hospital uploads at once: each phase is timed on its own.
    let barrier = Arc::new(tokio::sync::Barrier::new(options.hospitals + 1));
    let mut tasks = Vec::new();
    for (index, (mut hospital, mut stream)) in hospitals.into_iter().zip(streams).enumerate() {
        let (barrier, compression) = (Arc::clone(&barrier), options.compression);
        tasks.push(tokio::spawn(async move {
            // Every hospital passes every barrier, failed or not, so that a failure cannot hang the others.
            let downloaded = async {
                let task = stream.message().await?.context("the task stream ended")?;
                anyhow::ensure!(task.n_parameters == n, "the task's model has {} parameters", task.n_parameters);
                let wire = hospital.download(&task, compression).await?;
                Ok((task, wire))
            }
            .await;
            barrier.wait().await;
            // Hashing the update before the upload phase: it is the hospital's work, not the transfer's.
            let prepared = downloaded.as_ref().ok().map(|(task, _)| hospital.prepare(task, index as u64, compression));
            barrier.wait().await;
            let uploaded = match prepared {
                Some(prepared) => hospital.upload(prepared).await,
                None => Ok(0),
            };
            barrier.wait().await;
            Ok::<_, anyhow::Error>((downloaded?.1, uploaded?))
        }));
    }
    let started = Instant::now();
    barrier.wait().await;
    let download = started.elapsed();
    let started = Instant::now();
    barrier.wait().await;
    barrier.wait().await;
    let upload = started.elapsed();
    let (mut download_wire_bytes, mut upload_wire_bytes) = (0, 0);
    for task in tasks {
        let (down, up) = task.await??;
        download_wire_bytes += down;
        upload_wire_bytes += up;
    }
    let started = Instant::now();
    loop {
        let status = researcher.get_status(pb::StudyRef { study_id: study_id.clone() }).await?.into_inner();
        match pb::StudyState::try_from(status.state) {
            Ok(pb::StudyState::Finished) => break,
            Ok(pb::StudyState::Failed | pb::StudyState::Stopped) => bail!("the study ended early: {}", status.detail),
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
    let aggregation = started.elapsed();
    Ok(Figures { download, upload, aggregation, download_wire_bytes, upload_wire_bytes })
}

async fn connect_researcher(url: &str) -> Result<StudyServiceClient<Channel>> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match StudyServiceClient::connect(url.to_owned()).await {
            Ok(client) => {
                return Ok(client
                    .max_decoding_message_size(MAX_MESSAGE_BYTES)
                    .max_encoding_message_size(MAX_MESSAGE_BYTES));
            }
            Err(_) if Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(100)).await,
            Err(error) => return Err(error).context("the coordinator never answered"),
        }
    }
}

/// A seeded table of `FEATURES` standard-normal-ish features and a balanced label, as CSV.
fn validation_csv() -> String {
    let config =
        pdc_models::SyntheticConfig { n_rows: VALIDATION_ROWS, n_features: FEATURES, positive_rate: 0.5, seed: 7 };
    let data = pdc_models::synthetic(&config);
    let mut text: Vec<String> = (0..FEATURES).map(|i| format!("f{i}")).collect();
    text.push("label".into());
    let mut csv = text.join(",") + "\n";
    for row in 0..data.n_rows() {
        for value in data.row(row) {
            csv.push_str(&format!("{value},"));
        }
        csv.push_str(&format!("{}\n", data.labels[row]));
    }
    csv
}

/// A bench hospital: registered, consented, and its own connection.
struct Hospital {
    id: String,
    identity: Identity,
    client: FederationServiceClient<Channel>,
}

impl Hospital {
    async fn join(url: &str, id: &str) -> Result<Self> {
        let client = FederationServiceClient::connect(url.to_owned())
            .await?
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES);
        let mut hospital = Self { id: id.to_owned(), identity: Identity::generate(), client };
        let public_key = hospital.identity.public_key().to_bytes();
        let signature = hospital.identity.sign(&signing::register_message(id, &public_key)).to_vec();
        let request = pb::RegisterRequest { pdc_id: id.to_owned(), public_key: public_key.to_vec(), signature };
        hospital.client.register(request).await?;
        let studies = hospital.client.list_studies(hospital.signed("ListStudies")).await?.into_inner().studies;
        for study in studies {
            let hash = pdc_ledger::sha3_256(study.manifest_toml.as_bytes());
            let message = signing::consent_message(ConsentAction::Grant, &study.study_id, &hash);
            let signature = hospital.identity.sign(&message).to_vec();
            let request =
                pb::ConsentRequest { pdc_id: id.to_owned(), study_id: study.study_id, signature, ..Default::default() };
            hospital.client.consent(request).await?;
        }
        Ok(hospital)
    }

    fn signed(&self, method: &str) -> pb::SignedRequest {
        let timestamp_ms = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0);
        let nonce: [u8; 16] = rand::random();
        let message = signing::request_message(method, &self.id, timestamp_ms, &nonce);
        let signature = self.identity.sign(&message).to_vec();
        pb::SignedRequest { pdc_id: self.id.clone(), timestamp_ms, signature, nonce: nonce.to_vec() }
    }

    /// Downloads the task's model, checks its hash, and returns the bytes that travelled.
    async fn download(&mut self, task: &pb::Task, compression: pb::Compression) -> Result<u64> {
        let request = pb::ModelRequest {
            study_id: task.study_id.clone(),
            round: task.round,
            auth: Some(self.signed("DownloadGlobalModel")),
            compression: compression as i32,
        };
        let mut parts = self.client.download_global_model(request).await?.into_inner();
        let (mut hasher, mut received, mut wire) = (StreamHasher::new(), 0u64, 0u64);
        let mut buffer = vec![0u8; MAX_CHUNK_BYTES];
        let mut compressed = false;
        while let Some(part) = parts.message().await? {
            match part.part {
                Some(pb::model_part::Part::Header(header)) => {
                    compressed = header.compression == pb::Compression::Zstd as i32
                }
                Some(pb::model_part::Part::Chunk(chunk)) => {
                    anyhow::ensure!(chunk.offset == received, "model chunk at {}, expected {received}", chunk.offset);
                    wire += chunk.data.len() as u64;
                    let data = if compressed {
                        let size = zstd::bulk::decompress_to_buffer(&chunk.data, buffer.as_mut_slice())?;
                        &buffer[..size]
                    } else {
                        &chunk.data[..]
                    };
                    hasher.update(data);
                    received += data.len() as u64;
                }
                None => bail!("an empty model part"),
            }
        }
        anyhow::ensure!(hex::encode(hasher.finish()) == task.model_hash, "the model does not match its hash");
        Ok(wire)
    }

    /// A seeded update of the task's size: its signed header and the running hash at the end of every chunk.
    fn prepare(&self, task: &pb::Task, seed: u64, compression: pb::Compression) -> PreparedUpload {
        let n = task.n_parameters as usize;
        let per_chunk = MAX_CHUNK_BYTES / 4;
        // First pass: the running hash at the end of every chunk, and the update's hash, which the header signs.
        let mut hasher = StreamHasher::new();
        let mut running = Vec::new();
        for start in (0..n).step_by(per_chunk) {
            hasher.update(&chunk_bytes(seed, start, (start + per_chunk).min(n)));
            running.push(hasher.clone().finish());
        }
        let contribution = Contribution {
            study_id: task.study_id.clone(),
            round: task.round,
            pdc_id: self.id.clone(),
            n_examples: 100 + seed,
            n_parameters: n as u64,
            update_hash: hasher.finish(),
            train_loss: 0.5,
            privacy: None,
        };
        let signature = self.identity.sign(&contribution.signing_bytes());
        let header = pdc_client::agent::update_header(&contribution, &signature, compression);
        PreparedUpload { header, running, seed, n, compression }
    }

    /// Uploads a prepared update, its chunks made one at a time as tonic sends them; returns the bytes that
    /// travelled.
    async fn upload(&mut self, prepared: PreparedUpload) -> Result<u64> {
        let PreparedUpload { header, running, seed, n, compression } = prepared;
        let per_chunk = MAX_CHUNK_BYTES / 4;
        let wire = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let counted = Arc::clone(&wire);
        let chunks = (0..n).step_by(per_chunk).zip(running).map(move |(start, running_hash)| {
            let bytes = chunk_bytes(seed, start, (start + per_chunk).min(n));
            let data = match compression {
                pb::Compression::None => bytes,
                pb::Compression::Zstd => zstd::bulk::compress(&bytes, 1).expect("zstd compresses a chunk"),
            };
            counted.fetch_add(data.len() as u64, std::sync::atomic::Ordering::Relaxed);
            let chunk = pb::Chunk { offset: start as u64 * 4, data, running_hash: running_hash.to_vec() };
            pb::UpdatePart { part: Some(pb::update_part::Part::Chunk(chunk)) }
        });
        let parts = std::iter::once(pb::UpdatePart { part: Some(pb::update_part::Part::Header(header)) }).chain(chunks);
        self.client.submit_update(futures::stream::iter(parts)).await?;
        Ok(wire.load(std::sync::atomic::Ordering::Relaxed))
    }
}

/// What [`Hospital::prepare`] computed for [`Hospital::upload`].
struct PreparedUpload {
    header: pb::UpdateHeader,
    running: Vec<pdc_ledger::Hash>,
    seed: u64,
    n: usize,
    compression: pb::Compression,
}

/// Values `start..end` of hospital `seed`'s update, as bytes: 24 random bits each, scaled to ±1e-5, so the update's
/// norm stays far below the default bound and its bytes are as incompressible as a trained update's.
fn chunk_bytes(seed: u64, start: usize, end: usize) -> Vec<u8> {
    let mut bytes = Vec::with_capacity((end - start) * 4);
    for index in start..end {
        let mixed = (index as u64 ^ (seed << 40)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let value = ((mixed >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 2e-5;
        bytes.extend_from_slice(&value.to_le_bytes());
    }
    bytes
}

/// The coordinator process, under `/usr/bin/time -v` when it is installed.
struct Coordinator {
    process: Child,
    under_time: bool,
    report: std::path::PathBuf,
}

/// What the coordinator's memory peaked at.
struct Memory {
    peak_rss_bytes: u64,
    source: &'static str,
    time_report: Option<String>,
}

impl Coordinator {
    fn start(config: &Path, dir: &Path) -> Result<Self> {
        let pdc = env!("CARGO_BIN_EXE_pdc");
        let report = dir.join("time.txt");
        let under_time = Path::new("/usr/bin/time").is_file();
        let mut command = if under_time {
            let mut command = Command::new("/usr/bin/time");
            command.arg("-v").arg("-o").arg(&report).arg(pdc);
            command
        } else {
            eprintln!("large-model bench: /usr/bin/time is missing (`cargo xtask bench large-model` installs it)");
            Command::new(pdc)
        };
        command.arg("coordinator").arg("--config").arg(config).env("PDC_LOG", "warn");
        let process = command.stdout(Stdio::null()).stderr(Stdio::inherit()).spawn().context("starting pdc")?;
        Ok(Self { process, under_time, report })
    }

    /// The `pdc` process itself: the child of `time`, or the process.
    fn pdc_pid(&self) -> Result<u32> {
        if !self.under_time {
            return Ok(self.process.id());
        }
        let id = self.process.id();
        let children = std::fs::read_to_string(format!("/proc/{id}/task/{id}/children"))?;
        children.split_whitespace().next().context("time has no child")?.parse().context("a pid")
    }

    /// Stops the coordinator with SIGINT (a clean shutdown) and reads its peak RSS: `time -v`'s figure when it ran
    /// under time, else the kernel's high-water mark read just before.
    fn stop(&mut self) -> Result<Memory> {
        let pid = self.pdc_pid()?;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
        let high_water = status
            .lines()
            .find_map(|line| line.strip_prefix("VmHWM:"))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .context("VmHWM in /proc/<pid>/status")?;
        Command::new("kill").arg("-INT").arg(pid.to_string()).status()?;
        self.process.wait()?;
        if !self.under_time {
            return Ok(Memory { peak_rss_bytes: high_water * 1024, source: "VmHWM", time_report: None });
        }
        let report = std::fs::read_to_string(&self.report)?;
        let kbytes: u64 = report
            .lines()
            .find_map(|line| line.trim().strip_prefix("Maximum resident set size (kbytes):"))
            .context("no maximum RSS in time's report")?
            .trim()
            .parse()?;
        Ok(Memory { peak_rss_bytes: kbytes * 1024, source: "/usr/bin/time -v", time_report: Some(report) })
    }
}

impl Drop for Coordinator {
    fn drop(&mut self) {
        if self.process.try_wait().ok().flatten().is_none() {
            // Killing `time` would leave its child running.
            if let Ok(pid) = self.pdc_pid() {
                let _ = Command::new("kill").arg("-KILL").arg(pid.to_string()).status();
            }
            let _ = self.process.kill();
            let _ = self.process.wait();
        }
    }
}
