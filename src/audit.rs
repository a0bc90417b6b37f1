//! `pdc audit`: a governance board's checks of a coordinator's ledger, over its AuditService, on a copy of its
//! ledger folder, or on an exported file. Wiring only: the rules are `pdc_ledger::audit`.

use std::path::PathBuf;

use anyhow::{Context, bail};
use futures::StreamExt;
use pdc_coordinator::ledger::{LOG_INFO_KEY, LogInfo};
use pdc_ledger::audit::{self, AuditKeys, AuditReport};
use pdc_ledger::checkpoint::SignedCheckpoint;
use pdc_ledger::entry::Entry;
use pdc_ledger::store::{RocksDbStore, Store};
use pdc_ledger::{Hash, PublicKey, merkle};
use pdc_proto::pb;
use pdc_proto::pb::audit_service_client::AuditServiceClient;
use tonic::transport::Channel;

#[derive(clap::Subcommand)]
pub enum AuditCommand {
    /// Re-derives every node and root, checks every checkpoint's signatures, chain and consistency, and the
    /// rules (consent before contribution, registered keys, privacy budgets, rewards, round order).
    Verify {
        #[command(flatten)]
        source: Source,
        /// Prints the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Proves that entry N is in the log: an inclusion proof against the latest checkpoint, checked here.
    Prove {
        #[command(flatten)]
        source: Source,
        /// The entry's index.
        #[arg(long)]
        entry: u64,
    },
    /// Proves that the checkpoint of size B extends the one of size A, checked here.
    Consistency {
        #[command(flatten)]
        source: Source,
        /// The older size.
        #[arg(long)]
        from: u64,
        /// The newer size.
        #[arg(long)]
        to: u64,
    },
    /// Lists the entries as a table, or as JSON.
    Show {
        #[command(flatten)]
        source: Source,
        /// Prints JSON instead of a table.
        #[arg(long)]
        json: bool,
        /// Only this study's entries.
        #[arg(long)]
        study: Option<String>,
    },
    /// Recomputes a study's aggregates, metrics, Shapley values and rewards from a copy of the coordinator's data
    /// folder (its ledger, update archive and study archive) and compares them with the ledger, bit for bit.
    Replay {
        /// The coordinator's data folder, or a copy of it: `ledger/`, `updates/` and `studies/`.
        #[arg(long)]
        data_dir: PathBuf,
        /// The study to replay.
        #[arg(long)]
        study: String,
        /// The log's public key (hex), obtained independently.
        #[arg(long)]
        log_key: Option<String>,
    },
    /// Writes an offline copy that `pdc audit verify --file` checks with no access to the coordinator.
    Export {
        #[command(flatten)]
        source: Source,
        /// The file to write.
        #[arg(long)]
        out: PathBuf,
    },
}

/// Where the ledger comes from, and which keys the auditor pins.
#[derive(clap::Args, Clone, Debug)]
pub struct Source {
    /// The coordinator's address (its AuditService).
    #[arg(long, default_value = "http://127.0.0.1:50051")]
    coordinator: String,
    /// A copy of the coordinator's ledger folder (`<data_dir>/ledger`), read without the coordinator.
    #[arg(long, conflicts_with_all = ["coordinator", "file"])]
    ledger: Option<PathBuf>,
    /// An exported ledger file (`pdc audit export`).
    #[arg(long, conflicts_with_all = ["coordinator", "ledger"])]
    file: Option<PathBuf>,
    /// The log's public key (hex), obtained independently; the audit fails if the ledger names another.
    #[arg(long)]
    log_key: Option<String>,
    #[command(flatten)]
    tls: crate::tls::TlsArgs,
}

/// A ledger as the auditor holds it: the keys it is checked against, the entries and the checkpoints.
pub struct LedgerCopy {
    /// The keys.
    pub keys: AuditKeys,
    /// Entries in log order.
    pub entries: Vec<Vec<u8>>,
    /// Checkpoint notes, oldest first.
    pub checkpoints: Vec<String>,
}

/// The result of auditing a running coordinator.
pub struct RemoteAudit {
    /// The report.
    pub report: AuditReport,
    /// The latest checkpoint note, if any.
    pub latest_checkpoint: Option<String>,
}

impl RemoteAudit {
    /// `PASS` or `FAIL (n failures)`.
    pub fn verdict(&self) -> String {
        self.report.to_string().lines().next().unwrap_or_default().to_owned()
    }

    /// Whether the audit found nothing wrong.
    pub fn passed(&self) -> bool {
        self.report.passed()
    }

    /// One line per failure, as the report prints them.
    pub fn failure_lines(&self) -> Vec<String> {
        self.report.to_string().lines().skip(3).map(|line| line.trim().to_owned()).collect()
    }
}

pub async fn run(command: AuditCommand) -> anyhow::Result<()> {
    match command {
        AuditCommand::Verify { source, json } => {
            let report = verify(&source).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{report}");
            }
            if !report.passed() {
                bail!("the ledger failed {} checks", report.failures.len());
            }
            Ok(())
        }
        AuditCommand::Prove { source, entry } => prove(&source, entry).await,
        AuditCommand::Replay { data_dir, study, log_key } => replay(&data_dir, &study, log_key).await,
        AuditCommand::Consistency { source, from, to } => consistency(&source, from, to).await,
        AuditCommand::Show { source, json, study } => show(&source, json, study.as_deref()).await,
        AuditCommand::Export { source, out } => {
            let copy = load(&source).await?;
            let bytes = pdc_ledger::export::write_parts(&copy.entries, &copy.checkpoints, &copy.keys)?;
            std::fs::write(&out, &bytes).with_context(|| format!("cannot write {}", out.display()))?;
            println!(
                "exported {} entries and {} checkpoints to {}",
                copy.entries.len(),
                copy.checkpoints.len(),
                out.display()
            );
            Ok(())
        }
    }
}

/// `pdc audit replay`: the ledger is verified first, then the study replayed against it.
async fn replay(data_dir: &std::path::Path, study_id: &str, log_key: Option<String>) -> anyhow::Result<()> {
    let source = Source {
        coordinator: String::new(),
        ledger: Some(data_dir.join("ledger")),
        file: None,
        log_key,
        tls: Default::default(),
    };
    let copy = load(&source).await?;
    let audit = audit::verify_parts(&copy.entries, &copy.checkpoints, &copy.keys);
    println!("ledger: {}", audit.to_string().lines().next().unwrap_or_default());
    let entries = copy
        .entries
        .iter()
        .enumerate()
        .map(|(index, bytes)| {
            pdc_ledger::entry::Entry::decode(bytes).with_context(|| format!("entry {index} does not decode"))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let archive = pdc_coordinator::archive::UpdateArchive::open_read_only(&data_dir.join("updates"))?;
    let study_dir = data_dir.join("studies").join(study_id);
    let report = pdc_coordinator::replay::replay_study(&entries, study_id, &study_dir, &archive)
        .with_context(|| format!("cannot replay study {study_id}"))?;
    print!("{report}");
    if !audit.passed() {
        bail!("the ledger failed {} audit checks", audit.failures.len());
    }
    if !report.passed() {
        bail!("the replay of study {study_id} differs from the ledger");
    }
    Ok(())
}

/// Audits a running coordinator over its AuditService; `log_key` pins the log's key when given.
pub async fn verify_remote(url: &str, log_key: Option<String>) -> anyhow::Result<RemoteAudit> {
    let source = Source { coordinator: url.to_owned(), ledger: None, file: None, log_key, tls: Default::default() };
    let copy = load(&source).await?;
    let report = audit::verify_parts(&copy.entries, &copy.checkpoints, &copy.keys);
    Ok(RemoteAudit { report, latest_checkpoint: copy.checkpoints.last().cloned() })
}

async fn verify(source: &Source) -> anyhow::Result<AuditReport> {
    if let Some(dir) = &source.ledger {
        // A folder is audited node by node, so a damaged stored node is found even where entries are intact.
        let store = RocksDbStore::open_for_audit(dir)
            .with_context(|| format!("cannot open the ledger folder {}", dir.display()))?;
        let keys = pin(folder_keys(&store)?, source)?;
        return Ok(audit::verify_store(&store, &keys));
    }
    let copy = load(source).await?;
    Ok(audit::verify_parts(&copy.entries, &copy.checkpoints, &copy.keys))
}

fn pin(keys: AuditKeys, source: &Source) -> anyhow::Result<AuditKeys> {
    match &source.log_key {
        Some(pinned) => {
            let bytes = hex::decode(pinned).context("--log-key is not hex")?;
            let pinned = PublicKey::from_bytes(&bytes).context("--log-key")?;
            if pinned != keys.log_key {
                bail!(
                    "the ledger names log key {}, not the pinned {}",
                    hex::encode(keys.log_key.to_bytes()),
                    hex::encode(pinned.to_bytes())
                );
            }
            Ok(keys)
        }
        None => {
            eprintln!(
                "note: checking against the log key the ledger itself names ({}); pass --log-key to pin it",
                hex::encode(keys.log_key.to_bytes())
            );
            Ok(keys)
        }
    }
}

fn folder_keys(store: &dyn Store) -> anyhow::Result<AuditKeys> {
    let text = store.meta(LOG_INFO_KEY)?.context("the ledger folder does not say whose log it is (no log-info)")?;
    let text = String::from_utf8(text).context("the ledger folder's log-info is not UTF-8")?;
    Ok(LogInfo::from_text(&text)?.audit_keys())
}

async fn connect(source: &Source) -> anyhow::Result<AuditServiceClient<Channel>> {
    let channel = crate::tls::channel(&source.coordinator, &source.tls).await?;
    Ok(AuditServiceClient::new(channel).max_decoding_message_size(pdc_proto::MAX_MESSAGE_BYTES))
}

/// Loads the whole ledger from the source.
pub async fn load(source: &Source) -> anyhow::Result<LedgerCopy> {
    if let Some(path) = &source.file {
        let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
        let exported = pdc_ledger::export::parse(&bytes)
            .with_context(|| format!("{} is not a valid ledger export", path.display()))?;
        let keys = pin(exported.keys.clone(), source)?;
        return Ok(LedgerCopy { keys, entries: exported.entries, checkpoints: exported.checkpoints });
    }
    if let Some(dir) = &source.ledger {
        let store = RocksDbStore::open_for_audit(dir)
            .with_context(|| format!("cannot open the ledger folder {}", dir.display()))?;
        let keys = pin(folder_keys(&store)?, source)?;
        let entries = (0..store.size()).map(|index| store.entry(index)).collect::<Result<Vec<_>, _>>()?;
        let mut checkpoints = Vec::new();
        for size in 0..=store.size() {
            if let Some(note) = store.checkpoint(size)? {
                checkpoints.push(String::from_utf8(note).with_context(|| format!("checkpoint {size} is not UTF-8"))?);
            }
        }
        return Ok(LedgerCopy { keys, entries, checkpoints });
    }
    let mut client = connect(source).await?;
    let info = client.get_log_info(pb::LogInfoRequest {}).await.context("GetLogInfo")?.into_inner();
    let keys = pin(keys_from_pb(&info)?, source)?;
    let mut entries = Vec::new();
    while (entries.len() as u64) < info.size {
        let start = entries.len() as u64;
        let end = info.size.min(start + pdc_coordinator::audit_server::MAX_ENTRIES_PER_CALL);
        let mut stream =
            client.get_entries(pb::EntriesRequest { start, end }).await.context("GetEntries")?.into_inner();
        while let Some(entry) = stream.next().await {
            let entry = entry.context("GetEntries")?;
            if entry.index != entries.len() as u64 {
                bail!("the coordinator sent entry {} where {} was due", entry.index, entries.len());
            }
            entries.push(entry.data);
        }
        if (entries.len() as u64) < end {
            bail!("the coordinator sent {} entries of [{start}, {end})", entries.len() as u64 - start);
        }
    }
    let mut checkpoints = Vec::new();
    let mut stream =
        client.list_checkpoints(pb::ListCheckpointsRequest {}).await.context("ListCheckpoints")?.into_inner();
    while let Some(checkpoint) = stream.next().await {
        checkpoints.push(checkpoint.context("ListCheckpoints")?.note);
    }
    // Checkpoints made after the entries were read cover entries this copy lacks; they are checked next time.
    checkpoints.retain(|note| SignedCheckpoint::parse(note).map_or(true, |c| c.checkpoint.size <= info.size));
    Ok(LedgerCopy { keys, entries, checkpoints })
}

fn keys_from_pb(info: &pb::LogInfo) -> anyhow::Result<AuditKeys> {
    let log_key = PublicKey::from_bytes(&info.public_key).context("the coordinator's log key")?;
    let witnesses = info
        .witnesses
        .iter()
        .map(|w| Ok((w.name.clone(), PublicKey::from_bytes(&w.public_key).context("a witness key")?)))
        .collect::<anyhow::Result<Vec<_>>>()?;
    Ok(AuditKeys {
        origin: info.origin.clone(),
        log_key_name: info.key_name.clone(),
        log_key,
        witnesses,
        quorum: info.quorum as usize,
    })
}

/// The latest checkpoint of the copy, with its log signature checked.
fn latest_checkpoint(copy: &LedgerCopy) -> anyhow::Result<SignedCheckpoint> {
    let note = copy.checkpoints.last().context("the ledger has no checkpoint yet")?;
    checked_checkpoint(copy, note)
}

fn checked_checkpoint(copy: &LedgerCopy, note: &str) -> anyhow::Result<SignedCheckpoint> {
    let signed = SignedCheckpoint::parse(note).context("the checkpoint does not parse")?;
    if signed.checkpoint.origin != copy.keys.origin {
        bail!("the checkpoint is of log {:?}, not {:?}", signed.checkpoint.origin, copy.keys.origin);
    }
    signed.verify(&copy.keys.log_key_name, &copy.keys.log_key).context("the checkpoint's log signature")?;
    Ok(signed)
}

fn leaf_hashes(copy: &LedgerCopy) -> Vec<Hash> {
    copy.entries.iter().map(|entry| merkle::leaf_hash(entry)).collect()
}

async fn prove(source: &Source, index: u64) -> anyhow::Result<()> {
    let copy = load(source).await?;
    let checkpoint = latest_checkpoint(&copy)?;
    let size = checkpoint.checkpoint.size;
    if index >= size {
        bail!("entry {index} is not covered by the latest checkpoint (size {size})");
    }
    // Against a coordinator the proof is the server's; it is checked here against the signed root either way.
    let proof = if source.file.is_none() && source.ledger.is_none() {
        let mut client = connect(source).await?;
        let proof = client
            .get_inclusion_proof(pb::InclusionProofRequest { index, tree_size: size })
            .await
            .context("GetInclusionProof")?
            .into_inner();
        decode_hashes(&proof.hashes)?
    } else {
        merkle::inclusion_proof(index, &leaf_hashes(&copy)[..size as usize])
    };
    let entry = &copy.entries[index as usize];
    merkle::verify_inclusion(index, size, &merkle::leaf_hash(entry), &proof, &checkpoint.checkpoint.root)
        .with_context(|| format!("entry {index} is NOT proven in the checkpoint of size {size}"))?;
    let kind = Entry::decode(entry).map(|e| e.kind()).unwrap_or("undecodable");
    println!("entry {index} ({kind}) is included in the checkpoint of size {size}");
    println!("root {}", hex::encode(checkpoint.checkpoint.root));
    println!("proof ({} hashes):", proof.len());
    for hash in &proof {
        println!("  {}", hex::encode(hash));
    }
    Ok(())
}

async fn consistency(source: &Source, from: u64, to: u64) -> anyhow::Result<()> {
    if from > to {
        bail!("--from {from} must not exceed --to {to}");
    }
    let copy = load(source).await?;
    let find = |size: u64| -> anyhow::Result<Hash> {
        if size == 0 {
            return Ok(merkle::root(&[]));
        }
        let note = copy
            .checkpoints
            .iter()
            .find(|note| SignedCheckpoint::parse(note).is_ok_and(|c| c.checkpoint.size == size))
            .with_context(|| format!("no checkpoint of size {size} (sizes: {})", checkpoint_sizes(&copy)))?;
        Ok(checked_checkpoint(&copy, note)?.checkpoint.root)
    };
    let (old_root, new_root) = (find(from)?, find(to)?);
    let proof = if source.file.is_none() && source.ledger.is_none() {
        let mut client = connect(source).await?;
        let proof = client
            .get_consistency_proof(pb::ConsistencyProofRequest { old_size: from, new_size: to })
            .await
            .context("GetConsistencyProof")?
            .into_inner();
        decode_hashes(&proof.hashes)?
    } else {
        merkle::consistency_proof(from, &leaf_hashes(&copy)[..to as usize])
    };
    merkle::verify_consistency(from, to, &old_root, &new_root, &proof)
        .with_context(|| format!("the checkpoint of size {to} is NOT consistent with the one of size {from}"))?;
    println!("the checkpoint of size {to} consistently extends the one of size {from} ({} proof hashes)", proof.len());
    Ok(())
}

/// A proof's hashes as the server sent them, each checked to be 32 bytes.
fn decode_hashes(hashes: &[Vec<u8>]) -> anyhow::Result<Vec<Hash>> {
    hashes.iter().map(|h| Hash::try_from(h.as_slice()).context("a proof hash is not 32 bytes")).collect()
}

fn checkpoint_sizes(copy: &LedgerCopy) -> String {
    let sizes: Vec<String> = copy
        .checkpoints
        .iter()
        .filter_map(|note| SignedCheckpoint::parse(note).ok().map(|c| c.checkpoint.size.to_string()))
        .collect();
    sizes.join(", ")
}

async fn show(source: &Source, json: bool, study: Option<&str>) -> anyhow::Result<()> {
    let copy = load(source).await?;
    let mut rows = Vec::new();
    for (index, bytes) in (0u64..).zip(&copy.entries) {
        let row = match Entry::decode(bytes) {
            Ok(entry) => describe(index, &entry),
            Err(error) => Row { index, kind: "undecodable".into(), detail: error.to_string(), ..Row::default() },
        };
        if study.is_none_or(|s| row.study == s) {
            rows.push(row);
        }
    }
    if json {
        let values: Vec<serde_json::Value> = rows
            .iter()
            .map(|r| {
                serde_json::json!({
                    "index": r.index, "kind": r.kind, "study": r.study, "round": r.round,
                    "party": r.party, "detail": r.detail,
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&values)?);
    } else {
        println!("{:>6}  {:<22} {:<28} {:>5}  {:<12} detail", "index", "kind", "study", "round", "party");
        for r in &rows {
            let round = r.round.map(|r| r.to_string()).unwrap_or_default();
            println!("{:>6}  {:<22} {:<28} {:>5}  {:<12} {}", r.index, r.kind, r.study, round, r.party, r.detail);
        }
    }
    Ok(())
}

#[derive(Default)]
struct Row {
    index: u64,
    kind: String,
    study: String,
    round: Option<u32>,
    party: String,
    detail: String,
}

fn short(hash: &Hash) -> String {
    hex::encode(&hash[..8])
}

fn describe(index: u64, entry: &Entry) -> Row {
    let kind = entry.kind().to_owned();
    let row = |study: &str, round: Option<u32>, party: &str, detail: String| Row {
        index,
        kind: kind.clone(),
        study: study.to_owned(),
        round,
        party: party.to_owned(),
        detail,
    };
    match entry {
        Entry::MemberRegistered { pdc_id, role, public_key } => {
            row("", None, pdc_id, format!("{role:?} key {}", hex::encode(&public_key[..8])))
        }
        Entry::KeyRotated { pdc_id, new_key, .. } => {
            row("", None, pdc_id, format!("new key {}", hex::encode(&new_key[..8])))
        }
        Entry::StudyCreated { study_id, manifest_hash } => {
            row(study_id, None, "", format!("manifest {}", short(manifest_hash)))
        }
        Entry::ConsentGranted { study_id, pdc_id, manifest_hash, .. } => {
            row(study_id, None, pdc_id, format!("signed manifest {}", short(manifest_hash)))
        }
        Entry::ConsentRevoked { study_id, pdc_id, .. } => row(study_id, None, pdc_id, "signed".into()),
        Entry::RoundOpened { study_id, round, participants, model_hash } => {
            row(study_id, Some(*round), "", format!("{} participants, model {}", participants.len(), short(model_hash)))
        }
        Entry::ContributionAccepted { contribution: c, .. } => row(
            &c.study_id,
            Some(c.round),
            &c.pdc_id,
            format!("update {}, {} examples, loss {:.4}", short(&c.update_hash), c.n_examples, c.train_loss),
        ),
        Entry::UpdateRejected { study_id, round, pdc_id, reason } => {
            row(study_id, Some(*round), pdc_id, reason.clone())
        }
        Entry::RoundAggregated { study_id, round, model_hash, contributors, metrics } => {
            let figures: Vec<String> = metrics.iter().map(|(name, value)| format!("{name} {value:.4}")).collect();
            row(
                study_id,
                Some(*round),
                "",
                format!("model {}, {} contributors, {}", short(model_hash), contributors.len(), figures.join(", ")),
            )
        }
        Entry::UtilityScores { study_id, round, scores, method, seed } => {
            let scores: Vec<String> = scores.iter().map(|(pdc, score)| format!("{pdc} {score:.4}")).collect();
            row(study_id, Some(*round), "", format!("{method} (seed {seed}): {}", scores.join(", ")))
        }
        Entry::RewardPaid { study_id, round, pdc_id, amount } => {
            row(study_id, Some(*round), pdc_id, format!("{amount:.6}"))
        }
        Entry::PrivacySpent { study_id, round, pdc_id, epsilon, delta } => {
            row(study_id, Some(*round), pdc_id, format!("cumulative ε {epsilon:.4} at δ {delta:e}"))
        }
        Entry::StudyClosed { study_id, state } => row(study_id, None, "", state.clone()),
        Entry::BudgetDeclared { pdc_id, dataset, epsilon, delta } => {
            row("", None, pdc_id, format!("budget ε {epsilon} at δ {delta:e} for {dataset}"))
        }
        Entry::RewardsAllotted { study_id, round, budget, carried_over } => {
            let note = if *carried_over { " (carried over)" } else { "" };
            row(study_id, Some(*round), "", format!("{budget:.6}{note}"))
        }
        Entry::CoalitionValues { study_id, round, values } => {
            row(study_id, Some(*round), "", format!("{} coalition values", values.len()))
        }
        Entry::StatisticsReleased { release, .. } => row(
            &release.scope,
            None,
            &release.pdc_id,
            format!(
                "{} of {} values (z {:.4}); cumulative ε {:.4} at δ {:e}",
                release.kind.name(),
                release.values.len(),
                release.noise_multiplier,
                release.epsilon,
                release.delta
            ),
        ),
        Entry::StandardizationFitted { study_id, contributors, mean, .. } => {
            row(study_id, None, "", format!("{} features pooled from {}", mean.len(), contributors.join(", ")))
        }
        Entry::CentralDpRelease { study_id, round, release_hash, clip_norm, noise_std, epsilon, delta } => row(
            study_id,
            Some(*round),
            "",
            format!(
                "release {} (S {clip_norm:.4}, noise σ {noise_std:.4}); study ε {epsilon:.4} at δ {delta:e}",
                &hex::encode(release_hash)[..16]
            ),
        ),
        Entry::ConsortiumRecorded { file_hash, members } => {
            row("", None, "", format!("consortium file {} with {members} members", short(file_hash)))
        }
        Entry::KeyRevoked { pdc_id, key, reason } => {
            row("", None, pdc_id, format!("key {} revoked: {reason}", hex::encode(&key[..8])))
        }
        Entry::ManifestSigned { study_id, researcher_id, manifest_hash, .. } => {
            row(study_id, None, researcher_id, format!("signed manifest {}", short(manifest_hash)))
        }
    }
}
