//! `pdc`: the command-line entry point. Wiring only: parse arguments, set up logging, call the crates.

mod audit;
mod data;
mod demo;
mod hospital;
mod keygen;
mod study;
mod tls;
mod witness;

use std::io::Write as _;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "pdc", version, about = "Federated learning between hospitals' Private Data Centres")]
struct Cli {
    /// Log filter (tracing's env-filter syntax), e.g. `info` or `pdc_coordinator=debug`.
    #[arg(long, global = true, env = "PDC_LOG")]
    log: Option<String>,
    /// Log lines as human-readable text or as one JSON object per line (with the study, round and hospital of
    /// each event and its spans), on standard error.
    #[arg(long, global = true, env = "PDC_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Runs a coordinator: studies, rounds, aggregation, and the gRPC services.
    Coordinator {
        /// The coordinator's config file (see examples/coordinator.toml).
        #[arg(long)]
        config: PathBuf,
        /// Allow listening beyond loopback without a consortium file: anyone who can reach the port may then
        /// register as a PDC, create studies and read the ledger (the config's `open = true`).
        #[arg(long)]
        open: bool,
    },
    /// Runs a hospital's PDC agent; `pdc hospital budget` shows its privacy spend.
    #[command(args_conflicts_with_subcommands = true)]
    Hospital {
        /// The hospital's config file (see examples/hospital-a.toml).
        #[arg(long)]
        config: Option<PathBuf>,
        #[command(subcommand)]
        command: Option<hospital::HospitalCommand>,
    },
    /// Manages studies (researchers).
    Study {
        #[command(subcommand)]
        command: study::StudyCommand,
    },
    /// Audits a coordinator's ledger (governance boards): verify, prove, consistency, show, export.
    Audit {
        #[command(subcommand)]
        command: audit::AuditCommand,
    },
    /// Runs a witness that co-signs a coordinator's checkpoints consistent with the last one it co-signed.
    Witness {
        /// The witness's config file (see examples/witness.toml).
        #[arg(long)]
        config: PathBuf,
    },
    /// Makes a party's Ed25519 identity (`<name>.key`) and its self-signed TLS certificate (`<name>.crt`).
    Keygen(keygen::KeygenArgs),
    /// Prepares data files.
    Data {
        #[command(subcommand)]
        command: DataCommand,
    },
    /// Serves a read-only governance dashboard of a ledger in the browser: the ledger head and its audit verdict,
    /// studies and rounds, entries with inclusion proofs, privacy, consents, rewards and members, each page also
    /// as JSON (`?format=json`). Example: `pdc dashboard --ledger ./ledger-copy --log-key <hex>`.
    Dashboard {
        /// A copy of a coordinator's ledger folder (`<data_dir>/ledger`), opened read-only.
        #[arg(long, conflicts_with = "file", required_unless_present = "file")]
        ledger: Option<PathBuf>,
        /// An exported ledger file (`pdc audit export`).
        #[arg(long)]
        file: Option<PathBuf>,
        /// Where to serve the pages.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: std::net::SocketAddr,
        /// The log's public key (hex), obtained independently; without it the head page gives no verdict.
        #[arg(long)]
        log_key: Option<String>,
        /// A witness whose co-signatures count, as NAME=HEX; repeat for each.
        #[arg(long = "witness", value_name = "NAME=HEX")]
        witnesses: Vec<String>,
        /// Co-signatures each checkpoint needs (default: every pinned witness).
        #[arg(long)]
        quorum: Option<usize>,
        /// Re-reads a live ledger folder when a page is older than this many seconds; pages refresh as often.
        #[arg(long, requires = "ledger")]
        refresh: Option<u64>,
    },
    /// Runs a coordinator and five hospitals in one process over real gRPC on 127.0.0.1 and trains an MLP on the
    /// bundled breast-cancer data.
    Demo(demo::DemoArgs),
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum DataCommand {
    /// Splits a table into a validation set and hospital tables.
    Split(data::SplitArgs),
}

fn init_logging(filter: &str, format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_new(filter).unwrap_or_else(|_| "info".into());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().with_current_span(true).with_span_list(true).try_init(),
    };
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let default_filter = match cli.command {
        Command::Demo(_)
        | Command::Study { .. }
        | Command::Data { .. }
        | Command::Audit { .. }
        | Command::Keygen(_)
        | Command::Hospital { command: Some(_), .. } => "warn",
        _ => "info",
    };
    init_logging(cli.log.as_deref().unwrap_or(default_filter), cli.log_format);
    match cli.command {
        Command::Coordinator { config, open } => run_coordinator(config, open).await,
        Command::Hospital { command: Some(command), .. } => hospital::run(command).await,
        Command::Hospital { config: Some(config), command: None } => run_hospital(config).await,
        Command::Hospital { config: None, command: None } => {
            anyhow::bail!("pdc hospital needs --config <file> to run the agent, or a subcommand such as `budget`")
        }
        Command::Study { command } => study::run(command).await,
        Command::Audit { command } => audit::run(command).await,
        Command::Witness { config } => witness::run(&config).await,
        Command::Data { command: DataCommand::Split(args) } => data::split(args),
        Command::Keygen(args) => keygen::run(args),
        Command::Demo(args) => demo::run(args).await,
        Command::Dashboard { ledger, file, listen, log_key, witnesses, quorum, refresh } => {
            use pdc_dashboard::source::{Source, TrustPolicy};
            let source = match (ledger, file) {
                (Some(dir), _) => Source::Folder(dir),
                (None, Some(path)) => Source::File(path),
                (None, None) => anyhow::bail!("pdc dashboard needs --ledger DIR or --file EXPORT"),
            };
            let policy = TrustPolicy::from_flags(log_key.as_deref(), &witnesses, quorum)?;
            let shutdown = async {
                let _ = tokio::signal::ctrl_c().await;
            };
            Ok(pdc_dashboard::run(source, policy, listen, refresh, shutdown).await?)
        }
    }
}

async fn run_coordinator(config_path: PathBuf, open: bool) -> anyhow::Result<()> {
    let config = pdc_coordinator::config::ConfigFile::load_with_open(&config_path, open)?;
    if let Some(warning) = config.exposure_warning() {
        tracing::warn!("{warning}");
    }
    let tls = config.tls_settings()?;
    let coordinator = pdc_coordinator::Coordinator::new(config.coordinator_config()?)
        .with_context(|| format!("cannot open the data folder {}", config.data_dir.display()))?;
    let _driver = coordinator.spawn_driver();
    let (listener, address) = pdc_coordinator::server::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    // Tests and scripts read this line to learn the port when the config asks for port 0.
    println!("pdc coordinator listening on {address}");
    // A second line for operators; a reader that only wanted the first may have closed the pipe already.
    let info = coordinator.ledger().info();
    let key = hex::encode(info.public_key.to_bytes());
    let mut stdout = std::io::stdout();
    let _ = writeln!(stdout, "pdc coordinator ledger {} key {} {key}", info.origin, info.key_name);
    if let Some(metrics_listen) = config.metrics_listen {
        let listener = tokio::net::TcpListener::bind(metrics_listen)
            .await
            .with_context(|| format!("cannot listen on {metrics_listen} for metrics"))?;
        let metrics_address = listener.local_addr()?;
        let _ = writeln!(stdout, "pdc coordinator metrics on http://{metrics_address}/metrics");
        let metrics = std::sync::Arc::clone(coordinator.metrics());
        tokio::spawn(async move {
            if let Err(error) = pdc_coordinator::metrics::serve(metrics, listener, std::future::pending()).await {
                tracing::error!(%error, "the metrics endpoint failed");
            }
        });
    }
    let _ = stdout.flush();
    #[cfg(unix)]
    if config.consortium.is_some() {
        // SIGHUP re-reads the consortium file: additions, rotations and revocations take effect from the next round.
        let mut hangups = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
            .context("cannot listen for SIGHUP")?;
        let reloading = std::sync::Arc::clone(&coordinator);
        tokio::spawn(async move {
            while hangups.recv().await.is_some() {
                match reloading.reload_consortium() {
                    Ok(entries) => tracing::info!(entries, "consortium file reloaded"),
                    Err(error) => tracing::error!(%error, "consortium file not reloaded; the previous one stays"),
                }
            }
        });
    }
    match &tls {
        Some(tls) => tracing::info!(%address, data_dir = %config.data_dir.display(),
            require_client_cert = tls.requires_client_cert(), "coordinator started with TLS"),
        None => tracing::warn!(%address, data_dir = %config.data_dir.display(),
            "coordinator started without TLS: plaintext, for loopback only"),
    }
    let shutdown = async {
        let _ = tokio::signal::ctrl_c().await;
        tracing::info!("shutting down");
    };
    pdc_coordinator::server::serve_with_tls(coordinator, listener, tls.as_ref(), shutdown)
        .await
        .context("the gRPC server failed")
}

async fn run_hospital(config_path: PathBuf) -> anyhow::Result<()> {
    let config = pdc_client::HospitalConfig::load(&config_path)?;
    let agent = pdc_client::Agent::new(config)?;
    tracing::info!(pdc = agent.pdc_id(), "hospital agent started");
    tokio::select! {
        result = agent.run() => result.context("the hospital agent stopped"),
        _ = tokio::signal::ctrl_c() => Ok(()),
    }
}
