//! `pdc demo`: one coordinator and five hospitals in one process, talking real gRPC on 127.0.0.1, training an
//! MLP on the bundled breast-cancer data split non-IID between the hospitals.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures::StreamExt;
use indicatif::{ProgressBar, ProgressStyle};
use pdc_models::Schema;

use crate::data::{hospital_name, write_csv};
use pdc_proto::pb;

use crate::study::{self, print_status, state_name};

/// The bundled data set (see data/README.md for its provenance).
const BREAST_CANCER_CSV: &str = include_str!("../data/breast_cancer_wisconsin.csv");
/// The demo's study manifest.
const DEMO_MANIFEST: &str = include_str!("../examples/demo-study.toml");
/// Each demo hospital's privacy budget ε (at δ = 1e-5), over every study its table is used in.
const DEMO_BUDGET_EPSILON: f64 = 4.0;

#[derive(clap::Args)]
pub struct DemoArgs {
    /// Folder for all state (created if missing); by default a new temporary folder, which is kept and printed.
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Number of hospitals.
    #[arg(long, default_value_t = 5)]
    hospitals: usize,
    /// Rounds of federated training.
    #[arg(long, default_value_t = 20)]
    rounds: u32,
    /// Dirichlet concentration of the label skew between hospitals (smaller is more skewed).
    #[arg(long, default_value_t = 0.5)]
    alpha: f64,
    /// Seed of the data split and the study.
    #[arg(long, default_value_t = 42)]
    seed: u64,
}

pub async fn run(args: DemoArgs) -> anyhow::Result<()> {
    if args.hospitals < 2 || args.hospitals > 50 {
        bail!("--hospitals must be between 2 and 50");
    }
    let started = Instant::now();
    let dir = match &args.dir {
        Some(dir) => dir.clone(),
        None => tempfile::Builder::new().prefix("pdc-demo-").tempdir()?.keep(),
    };
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    println!("pdc demo: state in {}", dir.display());

    // The researcher keeps 20% as the validation set; the rest is split between hospitals with label skew.
    let header: Vec<String> = BREAST_CANCER_CSV.lines().next().unwrap_or("").split(',').map(str::to_owned).collect();
    let label = "malignant".to_owned();
    let schema = Schema { features: header.iter().filter(|c| **c != label).cloned().collect(), label };
    let table = pdc_models::parse_csv(BREAST_CANCER_CSV, "breast_cancer_wisconsin.csv", &schema)?;
    let (train, validation) = pdc_models::train_validation_split(&table, 0.2, args.seed)?;
    let parts = pdc_models::partition_dirichlet(&train, args.hospitals, args.alpha, args.seed)?;
    let validation_path = dir.join("researcher/validation.csv");
    write_csv(&validation_path, &validation, &schema)?;

    // Two witnesses, each with its own key and state, which the coordinator needs both of to finalise a round.
    let coordinator_dir = dir.join("coordinator");
    std::fs::create_dir_all(&coordinator_dir)?;
    let coordinator_key = pdc_ledger::Identity::load_or_create(&coordinator_dir.join("coordinator.key"))?;
    let mut settings = pdc_coordinator::ledger::LedgerSettings::default();
    let mut witness_servers = Vec::new();
    for name in ["witness-a", "witness-b"] {
        let (endpoint, server) = start_witness(&dir.join(name), name, &settings, &coordinator_key).await?;
        settings.witnesses.push(endpoint);
        witness_servers.push(server);
    }
    settings.quorum = settings.witnesses.len();
    // The board learns the witnesses' keys out of band too, and audits with its own quorum: all of them.
    let trusted_witnesses: Vec<(String, pdc_ledger::PublicKey)> =
        settings.witnesses.iter().map(|w| (w.name.clone(), w.public_key)).collect();

    // The coordinator, on a free port.
    let mut config = pdc_coordinator::CoordinatorConfig::new(coordinator_dir);
    config.tick_interval = Duration::from_millis(20);
    config.ledger = settings;
    let coordinator = pdc_coordinator::Coordinator::new(config)?;
    let driver = coordinator.spawn_driver();
    let ledger_coordinator = std::sync::Arc::clone(&coordinator);
    let (listener, address) = pdc_coordinator::server::bind(([127, 0, 0, 1], 0).into()).await?;
    let (stop_server, server_stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(pdc_coordinator::server::serve(coordinator, listener, async {
        let _ = server_stopped.await;
    }));
    let url = format!("http://{address}");
    println!("coordinator listening on {url}");

    // The researcher creates the study.
    let manifest = DEMO_MANIFEST
        .replace("rounds = 20", &format!("rounds = {}", args.rounds))
        .replace("max = 5", &format!("max = {}", args.hospitals));
    let mut researcher = study::connect(&url).await?;
    let created = researcher
        .create_study(pb::CreateStudyRequest {
            manifest_toml: manifest,
            validation_csv: std::fs::read(&validation_path)?,
            ..Default::default()
        })
        .await
        .map_err(|s| anyhow::anyhow!("create study: {}", s.message()))?
        .into_inner();
    let study_id = created.study_id;

    // The hospitals, each with its own folder, key and table.
    let mut agents = Vec::new();
    println!("{:<12} {:>9} {:>10}", "hospital", "examples", "malignant");
    for (index, part) in parts.iter().enumerate() {
        let name = hospital_name(index);
        let folder = dir.join(&name);
        write_csv(&folder.join("data.csv"), part, &schema)?;
        let positives = part.labels.iter().filter(|&&y| y > 0.5).count();
        println!("{name:<12} {:>9} {:>10}", part.n_rows(), positives);
        // Each hospital promises its patients at most ε = 4 at δ = 1e-5 on its table, over every study.
        let config_text = format!(
            "pdc_id = \"{name}\"\ncoordinator = \"{url}\"\nkey_file = \"{name}.key\"\ndata = \"data.csv\"\n\n[retry]\npoll_ms = 100\n\n\
             [privacy]\ndataset = \"{name}/breast-cancer\"\nepsilon = {DEMO_BUDGET_EPSILON}\ndelta = 1e-5\n"
        );
        let config_path = folder.join("hospital.toml");
        std::fs::write(&config_path, config_text)?;
        let agent = pdc_client::Agent::new(pdc_client::HospitalConfig::load(&config_path)?)?;
        agents.push(tokio::spawn(agent.run()));
    }

    // Start once every hospital has consented, so the first round has them all.
    let wait_until = Instant::now() + Duration::from_secs(20);
    loop {
        let status = researcher.get_status(pb::StudyRef { study_id: study_id.clone() }).await?.into_inner();
        if status.consented.len() == args.hospitals {
            break;
        }
        if Instant::now() > wait_until {
            bail!("only {} of {} hospitals consented within 20 s", status.consented.len(), args.hospitals);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut events = researcher.watch_study(pb::StudyRef { study_id: study_id.clone() }).await?.into_inner();
    researcher.start_study(pb::StudyRef { study_id: study_id.clone() }).await?;

    let bar = ProgressBar::new(u64::from(args.rounds));
    bar.set_style(
        ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} rounds  {msg}")
            .expect("a valid template")
            .progress_chars("=> "),
    );
    bar.set_prefix("training");
    let mut final_status = None;
    let mut history = String::new();
    while let Some(event) = events.next().await {
        match event?.event {
            Some(pb::study_event::Event::RoundClosed(round)) => {
                let metrics = round.validation.unwrap_or_default();
                bar.set_position(u64::from(round.round));
                bar.set_message(format!(
                    "AUROC {:.4}  accuracy {:.4}",
                    metrics.auroc.unwrap_or(f64::NAN),
                    metrics.accuracy.unwrap_or(f64::NAN)
                ));
                writeln!(history, "  {}", study::round_line(&round))?;
            }
            Some(pb::study_event::Event::UpdateRejected(rejected)) => {
                bar.println(format!("round {}: {} {}", rejected.round, rejected.pdc_id, rejected.reason));
            }
            Some(pb::study_event::Event::Status(status)) if is_terminal(status.state) => {
                final_status = Some(status);
                break;
            }
            _ => {}
        }
    }
    bar.finish_and_clear();
    let status = match final_status {
        Some(status) => status,
        None => researcher.get_status(pb::StudyRef { study_id: study_id.clone() }).await?.into_inner(),
    };
    print!("{history}");
    println!();
    print_status(&StatusWithoutRounds(&status).strip());
    drop(events);
    for agent in agents {
        agent.abort();
    }

    // The governance board's view: seal what is left, then audit the whole ledger over the AuditService.
    ledger_coordinator.seal_ledger().await.context("cannot seal the ledger")?;
    // The board pins the log key it was given out of band (here: the key file the demo made) and the witnesses'.
    let trust = crate::audit::Trust::pinned(
        &coordinator_key.public_key(),
        &trusted_witnesses,
        trusted_witnesses.len(),
        dir.join("auditor-state.json"),
    );
    let audit = crate::audit::verify_remote(&url, &trust).await.context("the audit failed to run")?;
    println!(
        "\naudit of the ledger ({} entries, {} checkpoints): {}",
        audit.report.size,
        audit.report.checkpoints,
        audit.verdict()
    );
    for line in audit.failure_lines() {
        println!("  {line}");
    }
    if let Some(note) = &audit.latest_checkpoint {
        println!("final checkpoint:\n{}", indent(note));
    }
    let _ = stop_server.send(());
    for server in witness_servers {
        server.abort();
    }
    // Graceful shutdown waits for open streams; the aborted agents' connections close with them, and a bound
    // keeps a stuck peer from holding the demo open.
    if tokio::time::timeout(Duration::from_secs(5), server).await.is_err() {
        tracing::warn!("the server did not shut down within 5 s");
    }
    driver.abort();
    let last = status.rounds.last().and_then(|r| r.validation).unwrap_or_default();
    println!(
        "\nstudy {}: {} after {} rounds; final validation AUROC {:.4}, accuracy {:.4}; {:.1} s",
        status.study_id,
        state_name(status.state),
        status.rounds.len(),
        last.auroc.unwrap_or(f64::NAN),
        last.accuracy.unwrap_or(f64::NAN),
        started.elapsed().as_secs_f64()
    );
    if status.state != pb::StudyState::Finished as i32 {
        bail!("the study did not finish: {}", status.detail);
    }
    if !audit.passed() {
        bail!("the ledger audit failed");
    }
    Ok(())
}

/// Starts an in-process witness that follows the coordinator's log; returns how the coordinator reaches it.
async fn start_witness(
    folder: &std::path::Path,
    name: &str,
    settings: &pdc_coordinator::ledger::LedgerSettings,
    coordinator_key: &pdc_ledger::Identity,
) -> anyhow::Result<(pdc_coordinator::ledger::WitnessEndpoint, tokio::task::JoinHandle<()>)> {
    use pdc_ledger::witness::{TrustedLog, Witness, WitnessConfig};
    std::fs::create_dir_all(folder)?;
    let identity = pdc_ledger::Identity::load_or_create(&folder.join("witness.key"))?;
    let public_key = identity.public_key();
    let state_path = folder.join("witness.state");
    let config = WitnessConfig {
        name: name.to_owned(),
        logs: vec![TrustedLog {
            origin: settings.origin.clone(),
            key_name: settings.key_name.clone(),
            public_key: coordinator_key.public_key(),
        }],
    };
    let witness = Witness::new(config, identity, pdc_ledger::witness::load_state(&state_path)?);
    let api = pdc_coordinator::audit_server::WitnessApi::new(witness, state_path);
    let (listener, address) = pdc_coordinator::server::bind(([127, 0, 0, 1], 0).into()).await?;
    let server = tokio::spawn(async move {
        if let Err(error) = pdc_coordinator::server::serve_witness(api, listener, std::future::pending()).await {
            tracing::error!(%error, "witness server failed");
        }
    });
    let endpoint = pdc_coordinator::ledger::WitnessEndpoint {
        name: name.to_owned(),
        url: format!("http://{address}"),
        public_key,
        tls: None,
    };
    Ok((endpoint, server))
}

fn indent(text: &str) -> String {
    text.lines().map(|line| format!("  {line}\n")).collect()
}

fn is_terminal(state: i32) -> bool {
    [pb::StudyState::Finished, pb::StudyState::Stopped, pb::StudyState::Failed].iter().any(|s| *s as i32 == state)
}

/// The status without its per-round lines, which the demo has printed already.
struct StatusWithoutRounds<'a>(&'a pb::StudyStatus);

impl StatusWithoutRounds<'_> {
    fn strip(&self) -> pb::StudyStatus {
        pb::StudyStatus { rounds: Vec::new(), ..self.0.clone() }
    }
}
