//! `pdc study …`: the researcher's commands, as a gRPC client of the coordinator's StudyService.

use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::Subcommand;
use futures::StreamExt;
use pdc_proto::pb::study_service_client::StudyServiceClient;
use pdc_proto::{MAX_MESSAGE_BYTES, pb};
use tonic::transport::Channel;

#[derive(Subcommand)]
pub enum StudyCommand {
    /// Creates a study from a manifest and the researcher's validation set; prints its id.
    Create {
        #[command(flatten)]
        target: Target,
        /// The manifest (see examples/study.toml).
        #[arg(long)]
        manifest: PathBuf,
        /// The validation set (CSV with a header); it stays with the coordinator.
        #[arg(long)]
        validation: PathBuf,
        /// Keep the study a draft, hidden from hospitals, until `pdc study recruit`.
        #[arg(long)]
        draft: bool,
        /// Sign the manifest as this researcher of the consortium, with the key file `--key` names (needed when
        /// the coordinator has a consortium file).
        #[arg(long, env = "PDC_RESEARCHER")]
        researcher: Option<String>,
    },
    /// Opens a draft study to hospitals.
    Recruit {
        #[command(flatten)]
        target: Target,
        /// The study id.
        study_id: String,
    },
    /// Starts a recruiting study.
    Start {
        #[command(flatten)]
        target: Target,
        /// The study id.
        study_id: String,
    },
    /// Stops a study.
    Stop {
        #[command(flatten)]
        target: Target,
        /// The study id.
        study_id: String,
    },
    /// Prints a study's status: rounds with validation metrics, and hospitals.
    Status {
        #[command(flatten)]
        target: Target,
        /// The study id.
        study_id: String,
        /// Print JSON-like debug output instead of tables.
        #[arg(long)]
        raw: bool,
    },
    /// Follows a study's rounds until it ends.
    Watch {
        #[command(flatten)]
        target: Target,
        /// The study id.
        study_id: String,
    },
    /// Prints the utilities and rewards of every round and each hospital's totals, as the ledger records them.
    Rewards {
        #[command(flatten)]
        target: Target,
        /// The study id.
        study_id: String,
    },
    /// Asks every connected hospital for noisy cohort counts of a binary label before a study is launched. Each
    /// hospital that answers (its policy decides) charges one Gaussian release of (ε, δ) to its privacy budget.
    Feasibility {
        #[command(flatten)]
        target: Target,
        /// The binary (0/1) label column to count.
        #[arg(long)]
        label: String,
        /// What each hospital's release may cost: ε…
        #[arg(long, default_value_t = 0.1)]
        epsilon: f64,
        /// …at this δ.
        #[arg(long, default_value_t = 1e-5)]
        delta: f64,
        /// Seconds to wait for the hospitals' answers (1 to 300).
        #[arg(long, default_value_t = 30)]
        timeout: u32,
    },
    /// Writes the current global model (little-endian f32, or safetensors) and prints its hash.
    Download {
        #[command(flatten)]
        target: Target,
        /// The study id.
        study_id: String,
        /// Output file.
        #[arg(long)]
        out: PathBuf,
        /// `f32`: the flat parameter vector, little-endian; `safetensors`: one tensor per layer in PyTorch's
        /// layout, with the study, round, model hash and manifest hash in its metadata.
        #[arg(long, value_enum, default_value_t = ModelFormat::F32)]
        format: ModelFormat,
    },
}

/// The file formats of `pdc study download`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ModelFormat {
    /// The flat little-endian `f32` vector, as hashed and sent.
    F32,
    /// safetensors (see `pdc_models::to_safetensors`).
    Safetensors,
}

#[derive(clap::Args)]
pub struct Target {
    /// The coordinator's URL.
    #[arg(long, default_value = "http://127.0.0.1:50051", env = "PDC_COORDINATOR")]
    coordinator: String,
    #[command(flatten)]
    tls: crate::tls::TlsArgs,
}

impl Target {
    async fn channel(&self) -> anyhow::Result<Channel> {
        crate::tls::channel(&self.coordinator, &self.tls).await
    }
}

pub async fn connect(url: &str) -> anyhow::Result<StudyServiceClient<Channel>> {
    let target = Target { coordinator: url.to_owned(), tls: Default::default() };
    Ok(client(target.channel().await?))
}

fn client(channel: Channel) -> StudyServiceClient<Channel> {
    StudyServiceClient::new(channel)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES)
}

/// The SHA3-256 of the manifest's canonical form, resolved against the validation set's header, as the coordinator
/// will compute it.
pub fn canonical_manifest_hash(manifest_toml: &str, validation_csv: &[u8]) -> anyhow::Result<pdc_ledger::Hash> {
    use pdc_coordinator::manifest::{Manifest, csv_header};
    let csv = std::str::from_utf8(validation_csv).context("the validation set is not UTF-8")?;
    let manifest = Manifest::parse(manifest_toml)?.resolve(&csv_header(csv))?;
    Ok(pdc_ledger::sha3_256(manifest.to_canonical_toml().as_bytes()))
}

fn status_error(status: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{:?}: {}", status.code(), status.message())
}

pub async fn run(command: StudyCommand) -> anyhow::Result<()> {
    match command {
        StudyCommand::Create { target, manifest, validation, draft, researcher } => {
            let manifest_toml = std::fs::read_to_string(&manifest)
                .with_context(|| format!("cannot read the manifest {}", manifest.display()))?;
            let validation_csv = std::fs::read(&validation)
                .with_context(|| format!("cannot read the validation set {}", validation.display()))?;
            let manifest_signature = match &researcher {
                Some(researcher) => {
                    let Some(key) = &target.tls.key else {
                        bail!("--researcher needs --key, the researcher's key file")
                    };
                    let identity = pdc_ledger::Identity::load(key)
                        .with_context(|| format!("cannot load the researcher's key file {}", key.display()))?;
                    let hash = canonical_manifest_hash(&manifest_toml, &validation_csv)?;
                    identity.sign(&pdc_ledger::signing::manifest_message(researcher, &hash)).to_vec()
                }
                None => Vec::new(),
            };
            let mut client = client(target.channel().await?);
            let response = client
                .create_study(pb::CreateStudyRequest { manifest_toml, validation_csv, manifest_signature, draft })
                .await
                .map_err(status_error)?
                .into_inner();
            println!("{}", response.study_id);
            eprintln!("manifest hash {}", response.manifest_hash);
            for warning in &response.warnings {
                eprintln!("warning: {warning}");
            }
        }
        StudyCommand::Rewards { target, study_id } => {
            let channel = target.channel().await?;
            let mut audit = pdc_proto::pb::audit_service_client::AuditServiceClient::new(channel);
            let report =
                audit.get_rewards(pb::StudyQuery { study_id: study_id.clone() }).await.map_err(status_error)?;
            print_rewards(&study_id, &report.into_inner());
        }
        StudyCommand::Feasibility { target, label, epsilon, delta, timeout } => {
            let request = pb::FeasibilityRequest { label, epsilon, delta, timeout_secs: timeout };
            let report = client(target.channel().await?).feasibility(request).await.map_err(status_error)?;
            print!("{}", feasibility_table(&report.into_inner()));
        }
        StudyCommand::Recruit { target, study_id } => {
            let status = client(target.channel().await?).open_recruiting(pb::StudyRef { study_id }).await;
            print_status(&status.map_err(status_error)?.into_inner());
        }
        StudyCommand::Start { target, study_id } => {
            let status = client(target.channel().await?).start_study(pb::StudyRef { study_id }).await;
            print_status(&status.map_err(status_error)?.into_inner());
        }
        StudyCommand::Stop { target, study_id } => {
            let status = client(target.channel().await?).stop_study(pb::StudyRef { study_id }).await;
            print_status(&status.map_err(status_error)?.into_inner());
        }
        StudyCommand::Status { target, study_id, raw } => {
            let status =
                client(target.channel().await?).get_status(pb::StudyRef { study_id }).await.map_err(status_error)?;
            if raw {
                println!("{:#?}", status.into_inner());
            } else {
                print_status(&status.into_inner());
            }
        }
        StudyCommand::Watch { target, study_id } => {
            let mut events = client(target.channel().await?)
                .watch_study(pb::StudyRef { study_id })
                .await
                .map_err(status_error)?
                .into_inner();
            while let Some(event) = events.next().await {
                match event.map_err(status_error)?.event {
                    Some(pb::study_event::Event::Status(status)) => print_status(&status),
                    Some(pb::study_event::Event::RoundOpened(opened)) => {
                        println!("round {} opened with {}", opened.round, opened.participants.join(", "));
                    }
                    Some(pb::study_event::Event::RoundClosed(round)) => println!("{}", round_line(&round)),
                    Some(pb::study_event::Event::UpdateRejected(rejected)) => {
                        println!("round {}: {} rejected: {}", rejected.round, rejected.pdc_id, rejected.reason);
                    }
                    Some(pb::study_event::Event::Standardized(fitted)) => {
                        println!(
                            "standardisation pooled from DP feature summaries of {} ({} features)",
                            fitted.contributors.join(", "),
                            fitted.mean.len()
                        );
                    }
                    None => {}
                }
            }
        }
        StudyCommand::Download { target, study_id, out, format } => {
            let channel = target.channel().await?;
            let mut parts = client(channel.clone())
                .download_model(pb::StudyRef { study_id })
                .await
                .map_err(status_error)?
                .into_inner();
            let Some(pb::ModelPart { part: Some(pb::model_part::Part::Header(header)) }) =
                parts.next().await.transpose().map_err(status_error)?
            else {
                bail!("the coordinator sent no model header");
            };
            let mut bytes = Vec::new();
            while let Some(part) = parts.next().await {
                if let Some(pb::model_part::Part::Chunk(chunk)) = part.map_err(status_error)?.part {
                    bytes.extend_from_slice(&chunk.data);
                }
            }
            let hash = hex::encode(pdc_ledger::sha3_256(&bytes));
            if hash != header.model_hash {
                bail!("downloaded model hash {hash} does not match the announced {}", header.model_hash);
            }
            if format == ModelFormat::Safetensors {
                bytes = safetensors_file(channel, &header, &bytes).await?;
            }
            std::fs::write(&out, &bytes).with_context(|| format!("cannot write {}", out.display()))?;
            println!(
                "round {} model, {} parameters, sha3-256 {hash} -> {}",
                header.round,
                header.n_parameters,
                out.display()
            );
        }
    }
    Ok(())
}

/// The downloaded model (`values`, the flat little-endian vector `header` announced) as a safetensors file whose
/// metadata names its study, round, model hash and the study's manifest hash (from the AuditService's provenance).
async fn safetensors_file(channel: Channel, header: &pb::ModelHeader, values: &[u8]) -> anyhow::Result<Vec<u8>> {
    let layout = pdc_models::Layout {
        tensors: header
            .layout
            .as_ref()
            .context("the coordinator sent no layout with the model")?
            .tensors
            .iter()
            .map(|tensor| pdc_models::TensorLayout {
                name: tensor.name.clone(),
                shape: tensor.shape.iter().map(|&d| d as usize).collect(),
            })
            .collect(),
    };
    let provenance = pdc_proto::pb::audit_service_client::AuditServiceClient::new(channel)
        .get_provenance(pb::StudyQuery { study_id: header.study_id.clone() })
        .await
        .map_err(status_error)?
        .into_inner();
    let parameters: Vec<f32> = values.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
    let metadata = std::collections::BTreeMap::from([
        ("study_id".to_owned(), header.study_id.clone()),
        ("round".to_owned(), header.round.to_string()),
        // The SHA3-256 of the flat little-endian f32 vector in pdc's own layout, as the ledger records it.
        ("model_hash".to_owned(), header.model_hash.clone()),
        ("manifest_hash".to_owned(), provenance.manifest_hash),
        ("model".to_owned(), header.model_toml.clone()),
    ]);
    pdc_models::to_safetensors(&layout, &parameters, &metadata).context("cannot write the model as safetensors")
}

pub fn round_line(round: &pb::RoundSummary) -> String {
    let metrics = round.validation.unwrap_or_default();
    let mut line = format!("round {:>3}: {} updates", round.round, round.contributors.len());
    if let Some(auroc) = metrics.auroc {
        line += &format!(", validation AUROC {auroc:.4}");
    }
    if let Some(accuracy) = metrics.accuracy {
        line += &format!(", accuracy {accuracy:.4}");
    }
    if let Some(mse) = metrics.mse {
        line += &format!(", MSE {mse:.4}");
    }
    line += &format!(", loss {:.4}", metrics.loss);
    if !round.privacy.is_empty() {
        // Each contributor's cumulative ε after the round, as it signed it.
        let spends: Vec<String> = round
            .privacy
            .iter()
            .map(|spend| {
                format!("{} {:.3}", spend.pdc_id.strip_prefix("hospital-").unwrap_or(&spend.pdc_id), spend.epsilon)
            })
            .collect();
        line += &format!(", ε {}", spends.join(" "));
    }
    line
}

pub fn state_name(state: i32) -> &'static str {
    match pb::StudyState::try_from(state).unwrap_or(pb::StudyState::Unspecified) {
        pb::StudyState::Unspecified => "unknown",
        pb::StudyState::Created => "draft",
        pb::StudyState::Recruiting => "recruiting",
        pb::StudyState::Running => "running",
        pb::StudyState::Finished => "finished",
        pb::StudyState::Stopped => "stopped",
        pb::StudyState::Failed => "failed",
    }
}

pub fn print_status(status: &pb::StudyStatus) {
    println!(
        "study {} ({}): {}, round {}/{}{}",
        status.study_id,
        status.name,
        state_name(status.state),
        status.current_round,
        status.total_rounds,
        if status.detail.is_empty() { String::new() } else { format!(" — {}", status.detail) }
    );
    for warning in &status.warnings {
        println!("  warning: {warning}");
    }
    for round in &status.rounds {
        println!("  {}", round_line(round));
    }
    if !status.hospitals.is_empty() {
        println!(
            "  {:<16} {:>9} {:>13} {:>9} {:>9} {:>10} {:>8} {:>9}",
            "hospital", "examples", "rounds joined", "rejected", "utility", "reward", "strikes", "ε spent"
        );
        for hospital in &status.hospitals {
            // ε is the table's cumulative spend after its latest update here; "-" for a study without local DP.
            let epsilon = match (hospital.epsilon, hospital.budget_exhausted) {
                (e, true) => format!("{e:.3} (out)"),
                (e, false) if e > 0.0 => format!("{e:.3}"),
                _ => "-".to_owned(),
            };
            println!(
                "  {:<16} {:>9} {:>13} {:>9} {:>9.4} {:>10.3} {:>8} {:>9}",
                hospital.pdc_id,
                hospital.examples,
                hospital.rounds_joined,
                hospital.updates_rejected,
                hospital.utility,
                hospital.reward,
                hospital.strikes,
                epsilon
            );
        }
    }
}

/// A feasibility report as a table: each hospital's noisy counts (rounded for reading, never below 0) with the
/// noise's standard deviation and its cumulative ε after answering, or why it did not answer; then the totals.
pub fn feasibility_table(report: &pb::FeasibilityReport) -> String {
    let mut out = format!("feasibility query {} (noise multiplier {:.4})\n", report.query_id, report.noise_multiplier);
    out += &format!(
        "  {:<16} {:>8} {:>10} {:>10} {:>9} {:>9}  {}\n",
        "hospital", "rows", "label 1", "label 0", "± (1 sd)", "ε spent", "note"
    );
    let (mut positives, mut negatives, mut variance) = (0.0, 0.0, 0.0);
    for answer in &report.answers {
        if answer.answered {
            let (p, n) = (answer.positives.round().max(0.0), answer.negatives.round().max(0.0));
            out += &format!(
                "  {:<16} {:>8} {:>10} {:>10} {:>9.1} {:>9.3}\n",
                answer.pdc_id,
                p + n,
                p,
                n,
                answer.noise_std,
                answer.pdc_epsilon
            );
            positives += answer.positives;
            negatives += answer.negatives;
            variance += answer.noise_std * answer.noise_std;
        } else {
            let note = if answer.declined.is_empty() { "no answer in time" } else { answer.declined.as_str() };
            out += &format!("  {:<16} {:>8} {:>10} {:>10} {:>9} {:>9}  {note}\n", answer.pdc_id, "-", "-", "-", "", "");
        }
    }
    let answered = report.answers.iter().filter(|a| a.answered).count();
    let (p, n) = (positives.round().max(0.0), negatives.round().max(0.0));
    out += &format!(
        "  {:<16} {:>8} {:>10} {:>10} {:>9.1}  {answered} of {} answered\n",
        "total",
        p + n,
        p,
        n,
        variance.sqrt(),
        report.answers.len()
    );
    out
}

/// The rewards table: one line per round and hospital, then each hospital's totals.
pub fn print_rewards(study_id: &str, report: &pb::RewardsReport) {
    if report.rewards.is_empty() {
        println!("study {study_id}: no rewards recorded");
        return;
    }
    println!("study {study_id}: rewards by round");
    println!("  {:>5}  {:<16} {:>10} {:>12}", "round", "hospital", "utility", "reward");
    let mut totals: std::collections::BTreeMap<&str, (f64, f64, u32)> = std::collections::BTreeMap::new();
    for reward in &report.rewards {
        println!("  {:>5}  {:<16} {:>10.4} {:>12.4}", reward.round, reward.pdc_id, reward.utility, reward.amount);
        let total = totals.entry(&reward.pdc_id).or_default();
        total.0 += reward.utility;
        total.1 += reward.amount;
        total.2 += 1;
    }
    println!("  {:<16} {:>8} {:>12} {:>12}", "hospital", "rounds", "utility", "reward");
    for (pdc_id, (utility, amount, rounds)) in totals {
        println!("  {pdc_id:<16} {rounds:>8} {utility:>12.4} {amount:>12.4}");
    }
}
