//! `pdc audit`: a governance board's checks of a coordinator's ledger, over its AuditService, on a copy of its
//! ledger folder, or on an exported file. Wiring only: the rules are `pdc_ledger::audit`.
//!
//! The trust policy is the auditor's ([`Trust`]: the log key, the witness keys and the quorum, from flags or a
//! trust file), never what the audited ledger or coordinator says of itself, which is shown and not relied on.
//! `verify` also remembers, per log, the last sealed checkpoint it verified, in a state file written atomically,
//! and holds every later run to it, so a rewritten history or a fork shown later is caught.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use futures::StreamExt;
use pdc_coordinator::ledger::{LOG_INFO_KEY, LogInfo};
use pdc_ledger::audit::{self, AuditKeys, AuditReport, TreeHead, Verdict};
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
    ///
    /// PASS only when no check failed and a checkpoint sealed under the auditor's policy covers every entry; a
    /// ledger with no sealed checkpoint, or with entries beyond the last one (the unsealed tail), exits non-zero.
    Verify {
        #[command(flatten)]
        source: Source,
        #[command(flatten)]
        trust: Trust,
        /// Prints the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Proves that entry N is in the log: an inclusion proof against the latest sealed checkpoint, checked here.
    Prove {
        #[command(flatten)]
        source: Source,
        #[command(flatten)]
        trust: Trust,
        /// The entry's index.
        #[arg(long)]
        entry: u64,
    },
    /// Proves that the checkpoint of size B extends the one of size A, both sealed, checked here.
    Consistency {
        #[command(flatten)]
        source: Source,
        #[command(flatten)]
        trust: Trust,
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
        /// The ledger is audited first, under the auditor's own policy, as `pdc audit verify` does.
        #[command(flatten)]
        trust: Trust,
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

/// Where the ledger comes from.
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
    #[command(flatten)]
    tls: crate::tls::TlsArgs,
}

/// The auditor's trust policy: which log key, which witnesses and how many of them must co-sign, and where the
/// auditor remembers what it verified. Nothing here comes from the ledger being audited.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct Trust {
    /// The log's public key (hex), obtained independently; the audit fails if the ledger names another.
    #[arg(long, conflicts_with_all = ["tofu", "trust"])]
    log_key: Option<String>,
    /// Trusts the log key the ledger names on first use and remembers it in the state file (--state); later runs
    /// hold the log to the remembered key. Instead of --log-key.
    #[arg(long)]
    tofu: bool,
    /// A witness whose co-signatures count, as NAME=HEXKEY (its key name and Ed25519 public key); repeatable.
    #[arg(long = "witness", value_name = "NAME=HEXKEY", conflicts_with = "trust")]
    witnesses: Vec<String>,
    /// How many distinct --witness keys must co-sign a checkpoint for it to count as sealed (default: all of
    /// them; 0 trusts the log's signature alone).
    #[arg(long, conflicts_with = "trust")]
    quorum: Option<usize>,
    /// The auditor's trust file (TOML: `log_key`, optional `origin`, `quorum`, `[[witnesses]]` with `name` and
    /// `public_key`), instead of --log-key, --witness and --quorum.
    #[arg(long, value_name = "FILE")]
    trust: Option<PathBuf>,
    /// The auditor's state file: per log, the last sealed checkpoint verified (default:
    /// $XDG_DATA_HOME/pdc/audit-state.json, else ~/.local/share/pdc/audit-state.json).
    #[arg(long, value_name = "FILE")]
    state: Option<PathBuf>,
}

impl Trust {
    /// A policy pinning `log_key`, `witnesses` and `quorum`, remembering in `state`: what a party that knows the
    /// log and its witnesses (the demo) audits with.
    pub fn pinned(log_key: &PublicKey, witnesses: &[(String, PublicKey)], quorum: usize, state: PathBuf) -> Self {
        Trust {
            log_key: Some(hex::encode(log_key.to_bytes())),
            witnesses: witnesses.iter().map(|(name, key)| format!("{name}={}", hex::encode(key.to_bytes()))).collect(),
            quorum: Some(quorum),
            state: Some(state),
            ..Trust::default()
        }
    }
}

/// The `--trust` file.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct TrustFile {
    log_key: Option<String>,
    origin: Option<String>,
    quorum: Option<usize>,
    #[serde(default)]
    witnesses: Vec<TrustedWitness>,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct TrustedWitness {
    name: String,
    public_key: String,
}

/// [`Trust`] resolved: keys parsed, the quorum checked against the witnesses.
struct Policy {
    /// `None` with `--tofu`: the key is the one remembered for the origin, or the ledger's own on first use.
    log_key: Option<PublicKey>,
    origin: Option<String>,
    witnesses: Vec<(String, PublicKey)>,
    quorum: usize,
    state: PathBuf,
}

fn parse_key(hex_key: &str, what: &str) -> anyhow::Result<PublicKey> {
    let bytes = hex::decode(hex_key.trim()).with_context(|| format!("{what} is not hex"))?;
    PublicKey::from_bytes(&bytes).with_context(|| format!("{what} is not an Ed25519 public key"))
}

impl Policy {
    fn resolve(trust: &Trust) -> anyhow::Result<Policy> {
        let (log_key, origin, mut witnesses, quorum) = match &trust.trust {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .with_context(|| format!("cannot read the trust file {}", path.display()))?;
                let file: TrustFile =
                    toml::from_str(&text).with_context(|| format!("the trust file {} is invalid", path.display()))?;
                let witnesses = file
                    .witnesses
                    .iter()
                    .map(|w| {
                        Ok((w.name.clone(), parse_key(&w.public_key, &format!("witness {:?}'s public_key", w.name))?))
                    })
                    .collect::<anyhow::Result<Vec<_>>>()?;
                (file.log_key, file.origin, witnesses, file.quorum)
            }
            None => {
                let witnesses = trust
                    .witnesses
                    .iter()
                    .map(|arg| {
                        let (name, key) =
                            arg.split_once('=').with_context(|| format!("--witness {arg:?} is not NAME=HEXKEY"))?;
                        Ok((name.to_owned(), parse_key(key, &format!("--witness {name}'s key"))?))
                    })
                    .collect::<anyhow::Result<Vec<_>>>()?;
                (trust.log_key.clone(), None, witnesses, trust.quorum)
            }
        };
        let log_key = log_key.map(|key| parse_key(&key, "the pinned log key (--log-key)")).transpose()?;
        if log_key.is_none() && !trust.tofu {
            bail!(
                "no log key to trust: pass --log-key HEX (the log's key, obtained independently), a --trust file with \
                 log_key, or --tofu to trust the key the ledger names on first use and remember it in the state file"
            );
        }
        let mut names: Vec<&str> = witnesses.iter().map(|(name, _)| name.as_str()).collect();
        names.sort_unstable();
        if let Some(pair) = names.windows(2).find(|pair| pair[0] == pair[1]) {
            bail!("witness {:?} is trusted twice", pair[0]);
        }
        witnesses.sort_by(|a, b| a.0.cmp(&b.0));
        let quorum = quorum.unwrap_or(witnesses.len());
        if quorum > witnesses.len() {
            bail!("the quorum {quorum} exceeds the {} trusted witnesses", witnesses.len());
        }
        let state = match &trust.state {
            Some(path) => path.clone(),
            None => default_state_path()?,
        };
        Ok(Policy { log_key, origin, witnesses, quorum, state })
    }

    /// The keys the ledger is audited against: the auditor's, with only the origin and key name taken from the
    /// ledger (both are covered by the log's signature), after checking that the ledger names the trusted key.
    fn keys(&self, claimed: &AuditKeys, state: &AuditorState) -> anyhow::Result<AuditKeys> {
        let origin = self.origin.clone().unwrap_or_else(|| claimed.origin.clone());
        let log_key = match (&self.log_key, state.key_for(&origin)) {
            (Some(pinned), _) => *pinned,
            (None, Some(remembered)) => {
                if remembered != claimed.log_key {
                    bail!(
                        "the ledger names log key {}, not the key {} trusted on first use for {origin:?} (remembered \
                         in {})",
                        hex::encode(claimed.log_key.to_bytes()),
                        hex::encode(remembered.to_bytes()),
                        self.state.display()
                    );
                }
                remembered
            }
            (None, None) => {
                eprintln!(
                    "note: trusting on first use the log key the ledger names for {origin:?}: {}",
                    hex::encode(claimed.log_key.to_bytes())
                );
                claimed.log_key
            }
        };
        if log_key != claimed.log_key {
            bail!(
                "the ledger names log key {}, not the pinned {}",
                hex::encode(claimed.log_key.to_bytes()),
                hex::encode(log_key.to_bytes())
            );
        }
        let claimed_witnesses: Vec<&str> = claimed.witnesses.iter().map(|(name, _)| name.as_str()).collect();
        eprintln!(
            "note: the ledger claims a quorum of {} of its witnesses [{}], which is not relied on; checkpoints count \
             as sealed with {} co-signatures of the auditor's {} witnesses [{}]",
            claimed.quorum,
            claimed_witnesses.join(", "),
            self.quorum,
            self.witnesses.len(),
            self.witnesses.iter().map(|(name, _)| name.as_str()).collect::<Vec<_>>().join(", ")
        );
        Ok(AuditKeys {
            origin,
            log_key_name: claimed.log_key_name.clone(),
            log_key,
            witnesses: self.witnesses.clone(),
            quorum: self.quorum,
        })
    }
}

/// The default state file: `$XDG_DATA_HOME/pdc/audit-state.json`, else `~/.local/share/pdc/audit-state.json`.
fn default_state_path() -> anyhow::Result<PathBuf> {
    let data = match (std::env::var_os("XDG_DATA_HOME"), std::env::var_os("HOME")) {
        (Some(data), _) if !data.is_empty() => PathBuf::from(data),
        (_, Some(home)) if !home.is_empty() => PathBuf::from(home).join(".local/share"),
        _ => bail!("neither XDG_DATA_HOME nor HOME is set: pass --state FILE"),
    };
    Ok(data.join("pdc").join("audit-state.json"))
}

/// What the auditor remembers across runs: per log, the last sealed checkpoint it verified.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct AuditorState {
    /// The format's version, [`AuditorState::VERSION`].
    version: u32,
    logs: Vec<RememberedLog>,
}

#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct RememberedLog {
    origin: String,
    /// Hex.
    log_key: String,
    /// The last sealed checkpoint verified.
    checkpoint: TreeHead,
    /// When it was verified, in milliseconds since the Unix epoch.
    verified_at_ms: u64,
}

impl AuditorState {
    const VERSION: u32 = 1;

    /// Reads the state; a missing file is the state of an auditor that never verified anything.
    fn load(path: &Path) -> anyhow::Result<AuditorState> {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                return Ok(AuditorState { version: Self::VERSION, logs: Vec::new() });
            }
            Err(error) => return Err(error).with_context(|| format!("cannot read the audit state {}", path.display())),
        };
        let state: AuditorState = serde_json::from_str(&text).with_context(|| {
            format!("the audit state {} is not valid; move it away to start afresh", path.display())
        })?;
        if state.version != Self::VERSION {
            bail!("the audit state {} has version {}, not {}", path.display(), state.version, Self::VERSION);
        }
        Ok(state)
    }

    /// The key remembered for `origin` (trusted on first use, or pinned when it was verified).
    fn key_for(&self, origin: &str) -> Option<PublicKey> {
        let log = self.logs.iter().find(|log| log.origin == origin)?;
        PublicKey::from_bytes(&hex::decode(&log.log_key).ok()?).ok()
    }

    fn remembered(&self, keys: &AuditKeys) -> Option<TreeHead> {
        let key = hex::encode(keys.log_key.to_bytes());
        self.logs.iter().find(|log| log.origin == keys.origin && log.log_key == key).map(|log| log.checkpoint)
    }

    /// Records `head` for the log of `keys` if it is ahead of what is remembered; returns whether it was.
    fn advance(&mut self, keys: &AuditKeys, head: TreeHead, now_ms: u64) -> bool {
        let key = hex::encode(keys.log_key.to_bytes());
        let remembered = RememberedLog {
            origin: keys.origin.clone(),
            log_key: key.clone(),
            checkpoint: head,
            verified_at_ms: now_ms,
        };
        match self.logs.iter_mut().find(|log| log.origin == keys.origin && log.log_key == key) {
            // The state only moves forward: an equal or older head changes nothing.
            Some(log) if log.checkpoint.size >= head.size => false,
            Some(log) => {
                *log = remembered;
                true
            }
            None => {
                self.logs.push(remembered);
                true
            }
        }
    }

    /// Writes the state atomically: a temporary file beside it, synced, renamed over it, and the folder synced,
    /// so a crash leaves the old state or the new one, never a torn one.
    fn save(&self, path: &Path) -> anyhow::Result<()> {
        let folder = match path.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => parent,
            _ => Path::new("."),
        };
        std::fs::create_dir_all(folder).with_context(|| format!("cannot create {}", folder.display()))?;
        let file_name = path.file_name().context("the audit state path has no file name")?;
        let mut temp_name = std::ffi::OsString::from(".");
        temp_name.push(file_name);
        temp_name.push(".tmp");
        let temp = path.with_file_name(temp_name);
        let write = || -> std::io::Result<()> {
            let mut file = std::fs::File::create(&temp)?;
            file.write_all(serde_json::to_string_pretty(self)?.as_bytes())?;
            file.write_all(b"\n")?;
            file.sync_all()?;
            std::fs::rename(&temp, path)?;
            std::fs::File::open(folder)?.sync_all()
        };
        write().with_context(|| format!("cannot write the audit state {}", path.display()))
    }
}

fn now_ms() -> u64 {
    let elapsed = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX)
}

/// A ledger as the auditor holds it: the keys it claims, the entries and the checkpoints.
pub struct LedgerCopy {
    /// The keys the ledger (its export, folder or coordinator) names: its claim, shown and never trusted.
    pub claimed: AuditKeys,
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
    /// The report's verdict line: `PASS`, `FAIL (n failures)`, `NO SEALED CHECKPOINT` or `UNSEALED TAIL (n entries)`.
    pub fn verdict(&self) -> String {
        self.report.to_string().lines().next().unwrap_or_default().to_owned()
    }

    /// Whether the audit passed: no check failed and a sealed checkpoint covers every entry.
    pub fn passed(&self) -> bool {
        self.report.verdict() == Verdict::Pass
    }

    /// The report's lines after the size and the checkpoint count: the unsealed entries, then one per failure.
    pub fn failure_lines(&self) -> Vec<String> {
        self.report.to_string().lines().skip(3).map(|line| line.trim().to_owned()).collect()
    }
}

pub async fn run(command: AuditCommand) -> anyhow::Result<()> {
    match command {
        AuditCommand::Verify { source, trust, json } => {
            let report = verify(&source, &trust).await?;
            if json {
                // The report's fields with its verdict, so that a script need not re-derive it.
                #[derive(serde::Serialize)]
                struct Json<'a> {
                    verdict: Verdict,
                    #[serde(flatten)]
                    report: &'a AuditReport,
                }
                println!("{}", serde_json::to_string_pretty(&Json { verdict: report.verdict(), report: &report })?);
            } else {
                print!("{report}");
            }
            match report.verdict() {
                Verdict::Pass => Ok(()),
                Verdict::Fail => bail!("the ledger failed {} checks", report.failures.len()),
                Verdict::NoSealedCheckpoint => {
                    bail!("no checkpoint of the ledger is sealed under the auditor's policy: nothing vouches for it")
                }
                Verdict::UnsealedTail => {
                    let tail = report.unsealed_tail();
                    bail!(
                        "entries {}..={} ({} entries) are beyond the last sealed checkpoint: nothing vouches for them",
                        tail.start,
                        tail.end - 1,
                        tail.end - tail.start
                    )
                }
            }
        }
        AuditCommand::Prove { source, trust, entry } => prove(&source, &trust, entry).await,
        AuditCommand::Replay { data_dir, study, trust } => replay(&data_dir, &study, &trust).await,
        AuditCommand::Consistency { source, trust, from, to } => consistency(&source, &trust, from, to).await,
        AuditCommand::Show { source, json, study } => show(&source, json, study.as_deref()).await,
        AuditCommand::Export { source, out } => {
            let copy = load(&source).await?;
            let bytes = pdc_ledger::export::write_parts(&copy.entries, &copy.checkpoints, &copy.claimed)?;
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
async fn replay(data_dir: &std::path::Path, study_id: &str, trust: &Trust) -> anyhow::Result<()> {
    let source = Source {
        coordinator: String::new(),
        ledger: Some(data_dir.join("ledger")),
        file: None,
        tls: Default::default(),
    };
    // The ledger is judged under the auditor's policy (pinned log key, witnesses, quorum, remembered head), never
    // under what the copied folder claims of itself.
    let audit = verify(&source, trust).await?;
    println!("ledger: {}", audit.to_string().lines().next().unwrap_or_default());
    if audit.verdict() != Verdict::Pass {
        // What a ledger vouches for is worth recomputing only once the auditor's policy accepts the ledger.
        bail!(
            "the ledger's audit verdict is {:?}, not a pass: see `pdc audit verify`; nothing replayed",
            audit.verdict()
        );
    }
    let copy = load(&source).await?;
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
    if !report.passed() {
        bail!("the replay of study {study_id} differs from the ledger");
    }
    Ok(())
}

/// Audits a running coordinator over its AuditService under `trust`, remembering in its state file.
pub async fn verify_remote(url: &str, trust: &Trust) -> anyhow::Result<RemoteAudit> {
    let source = Source { coordinator: url.to_owned(), ledger: None, file: None, tls: Default::default() };
    let (report, latest_checkpoint) = verify_with_latest(&source, trust).await?;
    Ok(RemoteAudit { report, latest_checkpoint })
}

/// Audits the source under the auditor's policy and its remembered tree head, then moves the remembered head
/// forward to the last sealed checkpoint when no check failed.
async fn verify(source: &Source, trust: &Trust) -> anyhow::Result<AuditReport> {
    Ok(verify_with_latest(source, trust).await?.0)
}

/// [`verify`], and the last checkpoint note the source holds.
async fn verify_with_latest(source: &Source, trust: &Trust) -> anyhow::Result<(AuditReport, Option<String>)> {
    let policy = Policy::resolve(trust)?;
    let mut state = AuditorState::load(&policy.state)?;
    let (report, keys, latest) = if let Some(dir) = &source.ledger {
        // A folder is audited node by node, so a damaged stored node is found even where entries are intact.
        let store = RocksDbStore::open_for_audit(dir)
            .with_context(|| format!("cannot open the ledger folder {}", dir.display()))?;
        let keys = policy.keys(&folder_keys(&store)?, &state)?;
        let latest = store.latest_checkpoint()?.and_then(|(_, note)| String::from_utf8(note).ok());
        (audit::verify_store_since(&store, &keys, state.remembered(&keys).as_ref()), keys, latest)
    } else {
        let copy = load(source).await?;
        let keys = policy.keys(&copy.claimed, &state)?;
        let report =
            audit::verify_parts_since(&copy.entries, &copy.checkpoints, &keys, state.remembered(&keys).as_ref());
        (report, keys, copy.checkpoints.last().cloned())
    };
    let remembered = state.remembered(&keys);
    if let Some(head) = remembered {
        eprintln!(
            "note: held to checkpoint {} (root {}) remembered in {}",
            head.size,
            hex::encode(head.root),
            policy.state.display()
        );
    }
    // Only a run in which nothing failed moves the memory, and only forward.
    if let (true, Some(sealed)) = (report.passed(), report.sealed)
        && state.advance(&keys, sealed, now_ms())
    {
        state.save(&policy.state)?;
        eprintln!("note: remembered checkpoint {} of {:?} in {}", sealed.size, keys.origin, policy.state.display());
    }
    Ok((report, latest))
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
        return Ok(LedgerCopy { claimed: exported.keys, entries: exported.entries, checkpoints: exported.checkpoints });
    }
    if let Some(dir) = &source.ledger {
        let store = RocksDbStore::open_for_audit(dir)
            .with_context(|| format!("cannot open the ledger folder {}", dir.display()))?;
        let claimed = folder_keys(&store)?;
        let entries = (0..store.size()).map(|index| store.entry(index)).collect::<Result<Vec<_>, _>>()?;
        let mut checkpoints = Vec::new();
        for size in 0..=store.size() {
            if let Some(note) = store.checkpoint(size)? {
                checkpoints.push(String::from_utf8(note).with_context(|| format!("checkpoint {size} is not UTF-8"))?);
            }
        }
        return Ok(LedgerCopy { claimed, entries, checkpoints });
    }
    let mut client = connect(source).await?;
    let info = client.get_log_info(pb::LogInfoRequest {}).await.context("GetLogInfo")?.into_inner();
    let claimed = keys_from_pb(&info)?;
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
    Ok(LedgerCopy { claimed, entries, checkpoints })
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

/// The latest checkpoint of the copy that is sealed under `keys` (see [`audit::sealed_checkpoint`]).
fn latest_sealed(copy: &LedgerCopy, keys: &AuditKeys) -> anyhow::Result<SignedCheckpoint> {
    let mut last_reason = None;
    for note in copy.checkpoints.iter().rev() {
        match audit::sealed_checkpoint(note, keys) {
            Ok(signed) => return Ok(signed),
            Err(failure) => last_reason = last_reason.or(Some(failure.message)),
        }
    }
    match last_reason {
        Some(reason) => bail!("no checkpoint is sealed under the auditor's policy; the latest: {reason}"),
        None => bail!("the ledger has no checkpoint yet"),
    }
}

/// The copy and the auditor's keys for it, for `prove` and `consistency` (which read the state, never write it).
async fn load_trusted(source: &Source, trust: &Trust) -> anyhow::Result<(LedgerCopy, AuditKeys)> {
    let policy = Policy::resolve(trust)?;
    let state = AuditorState::load(&policy.state)?;
    let copy = load(source).await?;
    let keys = policy.keys(&copy.claimed, &state)?;
    Ok((copy, keys))
}

fn leaf_hashes(copy: &LedgerCopy) -> Vec<Hash> {
    copy.entries.iter().map(|entry| merkle::leaf_hash(entry)).collect()
}

async fn prove(source: &Source, trust: &Trust, index: u64) -> anyhow::Result<()> {
    let (copy, keys) = load_trusted(source, trust).await?;
    let checkpoint = latest_sealed(&copy, &keys)?;
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
    println!("entry {index} ({kind}) is included in the sealed checkpoint of size {size}");
    println!("root {}", hex::encode(checkpoint.checkpoint.root));
    println!("proof ({} hashes):", proof.len());
    for hash in &proof {
        println!("  {}", hex::encode(hash));
    }
    Ok(())
}

async fn consistency(source: &Source, trust: &Trust, from: u64, to: u64) -> anyhow::Result<()> {
    if from > to {
        bail!("--from {from} must not exceed --to {to}");
    }
    let (copy, keys) = load_trusted(source, trust).await?;
    let find = |size: u64| -> anyhow::Result<Hash> {
        if size == 0 {
            return Ok(merkle::root(&[]));
        }
        let note = copy
            .checkpoints
            .iter()
            .find(|note| SignedCheckpoint::parse(note).is_ok_and(|c| c.checkpoint.size == size))
            .with_context(|| format!("no checkpoint of size {size} (sizes: {})", checkpoint_sizes(&copy)))?;
        let sealed = audit::sealed_checkpoint(note, &keys)
            .map_err(|failure| anyhow::anyhow!("the checkpoint of size {size} is not sealed: {}", failure.message))?;
        Ok(sealed.checkpoint.root)
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
