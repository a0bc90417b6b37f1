//! The coordinator's shared state and the rules every RPC goes through.
//!
//! This is the edge between the pure cores ([`crate::round`], [`crate::aggregation`]) and the world: it reads
//! the clock, keeps the registered PDCs and the studies behind one lock, feeds each study's
//! [`RoundMachine`] and carries out its actions (tasks to PDCs, aggregation on a blocking thread, events to
//! watchers). The gRPC layer ([`crate::server`]) only translates messages to calls on [`Coordinator`].

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use pdc_ledger::entry::{Entry, Role};
use pdc_ledger::signing::{self, ConsentAction, ConsentConditions, Contribution, StatisticKind, StatisticsRelease};
use pdc_ledger::{Hash, Identity, PublicKey, sha3_256};
use pdc_models::{Dataset, Layout, Metrics, ModelSpec, Standardizer};
use pdc_privacy::stats::{NoisyCohortCounts, NoisyFeatureSummary};
use tokio::sync::{Notify, broadcast, mpsc};

use crate::access::{Caller, StudyAction};
use crate::aggregation::{ServerState, SuspensionTracker};
use crate::archive::{PartialUploads, UpdateArchive, UploadKey, UploadProgress, UploadStream};
use crate::consent::ConsentTerms;
use crate::consortium::{Consortium, Membership};
use crate::ledger::{Ledger, LedgerSettings};
use crate::manifest::{self, Manifest};
use crate::metrics::Telemetry;
use crate::nonces::{NonceCache, NonceRefusal};
use crate::pipeline::{
    Aggregated, CentralState, RootData, ValuationInputs, aggregate, aggregation_entries, central_aggregate,
    valuation_entry_count, value_contributions,
};
use crate::recovery::{BUDGET_EXHAUSTED_PREFIX, RoundSnapshot, StateStore, StudyProgress};
use crate::round::{AcceptedUpdate, Action, Event, Phase, Resume, RoundMachine, RoundPolicy};
use crate::statistics::{CohortAnswer, FeasibilityQuery, Standardization, StandardizationStep, StatisticsQuery};
use crate::{Error, Result};

/// How far a signed request's timestamp may be from the coordinator's clock.
const MAX_CLOCK_SKEW_MS: u64 = 5 * 60 * 1000;
/// The most signed-request nonces held at once (about 100 bytes each): a million requests within one window.
const MAX_NONCES: usize = 1_000_000;
/// The largest validation set accepted, in bytes.
pub const MAX_VALIDATION_BYTES: usize = 4 << 20;
/// Longest PDC id.
const MAX_PDC_ID_LEN: usize = 64;
/// Settings of a coordinator.
#[derive(Clone, Debug)]
pub struct CoordinatorConfig {
    /// Where updates are archived.
    pub data_dir: PathBuf,
    /// How often studies are ticked (deadlines checked, rounds opened).
    pub tick_interval: Duration,
    /// Failed attempts at one round before its study fails.
    pub max_round_attempts: u32,
    /// The ledger's name, key and witnesses.
    pub ledger: LedgerSettings,
    /// The consortium file (see [`crate::consortium`]); `None` leaves registration and the StudyService open.
    pub consortium: Option<PathBuf>,
    /// The caps on manifests and connections (`[limits]`; see [`crate::limits`]).
    pub limits: crate::limits::Limits,
}

impl CoordinatorConfig {
    /// Defaults with state under `data_dir`.
    pub fn new(data_dir: PathBuf) -> Self {
        Self {
            data_dir,
            tick_interval: Duration::from_millis(100),
            max_round_attempts: 3,
            ledger: LedgerSettings::default(),
            consortium: None,
            limits: crate::limits::Limits::default(),
        }
    }
}

/// A training task for one PDC.
#[derive(Clone, Debug, PartialEq)]
pub struct TaskSpec {
    /// The study.
    pub study_id: String,
    /// The round.
    pub round: u32,
    /// SHA3-256 of the global model to train from.
    pub model_hash: Hash,
    /// Length of the model.
    pub n_parameters: u64,
    /// The canonical manifest.
    pub manifest_toml: String,
    /// Standardisation to apply to local features.
    pub standardizer: Standardizer,
    /// Time left before the deadline when the task was sent.
    pub deadline_in_ms: u64,
    /// Seed for local training.
    pub training_seed: u64,
    /// Present when the task is a statistics query rather than training (round 0, no model).
    pub query: Option<StatisticsQuery>,
}

/// A closed round.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct RoundRecord {
    /// The round.
    pub round: u32,
    /// Selected PDCs.
    pub participants: Vec<String>,
    /// PDCs whose updates were aggregated.
    pub contributors: Vec<String>,
    /// The new global model on the validation set.
    pub validation: Metrics,
    /// SHA3-256 of the new global model.
    pub model_hash: Hash,
    /// Each contributor's cumulative `(ε, δ)` after the round, as it signed it (local DP studies only).
    pub privacy: Vec<(String, f64, f64)>,
}

/// One hospital's part in a study.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct HospitalStats {
    /// Examples it trained on (from its latest update).
    pub examples: u64,
    /// Rounds its update was aggregated in.
    pub rounds_joined: u32,
    /// Updates it sent that failed validation.
    pub updates_rejected: u32,
    /// Sum of its per-round utilities (Shapley values).
    pub utility: f64,
    /// Sum of the rewards it was paid.
    pub reward: f64,
    /// Rounds it was struck in (free rider, near-copy, flagged) and paid nothing.
    pub strikes: u32,
    /// Its table's cumulative ε after its latest accepted update in this study (local DP studies only).
    pub epsilon: f64,
    /// Whether it stopped training for this study because a round would exceed its privacy budget.
    pub budget_exhausted: bool,
}

/// A study's lifecycle state, as reported: draft → recruiting → running → finished, stopped or failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StudyState {
    /// A draft: created, not yet shown to hospitals.
    Created,
    /// Shown to hospitals, which may consent; not started.
    Recruiting,
    /// Running.
    Running,
    /// All rounds done.
    Finished,
    /// Stopped by its researcher.
    Stopped,
    /// Could not go on.
    Failed,
}

/// A study's status.
#[derive(Clone, Debug, PartialEq)]
pub struct StudyStatus {
    /// Its id.
    pub study_id: String,
    /// Its name.
    pub name: String,
    /// Lifecycle state.
    pub state: StudyState,
    /// Round in progress or last completed.
    pub current_round: u32,
    /// Rounds planned.
    pub total_rounds: u32,
    /// Closed rounds.
    pub rounds: Vec<RoundRecord>,
    /// Per hospital.
    pub hospitals: BTreeMap<String, HospitalStats>,
    /// Why it stopped or failed.
    pub detail: String,
    /// PDCs that consented.
    pub consented: Vec<String>,
    /// The manifest's warnings ([`crate::manifest::Manifest::warnings`]).
    pub warnings: Vec<String>,
}

/// What watchers of a study are told.
#[derive(Clone, Debug, PartialEq)]
pub enum StudyEvent {
    /// The whole status (sent first, and when the study ends).
    Status(StudyStatus),
    /// A round opened.
    RoundOpened {
        /// The round.
        round: u32,
        /// Its participants.
        participants: Vec<String>,
        /// Milliseconds until its deadline.
        deadline_in_ms: u64,
    },
    /// A round closed and was aggregated.
    RoundClosed(RoundRecord),
    /// The study's federated standardisation was pooled from its PDCs' DP feature summaries.
    Standardized {
        /// The PDCs pooled, sorted.
        contributors: Vec<String>,
        /// Each feature's pooled mean.
        mean: Vec<f64>,
        /// Each feature's pooled standard deviation.
        std: Vec<f64>,
    },
    /// An update was rejected, or a round abandoned (`pdc_id` empty).
    UpdateRejected {
        /// The round.
        round: u32,
        /// The sender.
        pdc_id: String,
        /// Why.
        reason: String,
    },
}

/// A study as PDCs see it in listings.
#[derive(Clone, Debug, PartialEq)]
pub struct StudyListing {
    /// Its id.
    pub study_id: String,
    /// Its name.
    pub name: String,
    /// SHA3-256 of the canonical manifest.
    pub manifest_hash: Hash,
    /// The canonical manifest.
    pub manifest_toml: String,
    /// Whether the asking PDC consented.
    pub consented: bool,
    /// The researcher who created the study and its signature over [`signing::manifest_message`], when the
    /// coordinator has a consortium.
    pub researcher: Option<(String, [u8; 64])>,
}

/// A global model handed out for download.
#[derive(Clone, Debug)]
pub struct ModelSnapshot {
    /// The study.
    pub study_id: String,
    /// The round it is the starting point of (or the result of, for a finished study).
    pub round: u32,
    /// The model's parameter layout.
    pub layout: Layout,
    /// The parameters.
    pub parameters: Arc<Vec<f32>>,
    /// Their SHA3-256.
    pub model_hash: Hash,
    /// The manifest's model section, TOML.
    pub model_toml: String,
}

/// An update's signed header, as received.
#[derive(Clone, Debug)]
pub struct UpdateHeader {
    /// The contribution the PDC signed.
    pub contribution: Contribution,
    /// Its signature.
    pub signature: Vec<u8>,
}

/// A signed request's authentication fields.
#[derive(Clone, Debug)]
pub struct RequestAuth {
    /// The caller.
    pub pdc_id: String,
    /// When it signed, Unix milliseconds.
    pub timestamp_ms: u64,
    /// Its signature.
    pub signature: Vec<u8>,
    /// The request's fresh random nonce, under the signature (see [`crate::nonces`]).
    pub nonce: Vec<u8>,
}

struct Pdc {
    key: PublicKey,
    task_streams: Vec<mpsc::Sender<TaskSpec>>,
}

impl Pdc {
    fn connected(&self) -> bool {
        self.task_streams.iter().any(|sender| !sender.is_closed())
    }
}

struct Study {
    id: String,
    manifest: Manifest,
    manifest_toml: String,
    manifest_hash: Hash,
    spec: ModelSpec,
    validation: Arc<Dataset>,
    standardizer: Standardizer,
    machine: RoundMachine,
    global: Arc<Vec<f32>>,
    global_hash: Hash,
    consents: BTreeSet<String>,
    rounds: Vec<RoundRecord>,
    hospitals: BTreeMap<String, HospitalStats>,
    events: broadcast::Sender<StudyEvent>,
    round_participants: Vec<String>,
    round_deadline_ms: u64,
    /// When the open round opened (coordinator milliseconds), for its latency.
    round_opened_ms: u64,
    /// The study's server optimiser and its moments, when the manifest names one, and the previous round's
    /// aggregate when the rule centres on it (centered clipping).
    optimizer: Arc<Mutex<ServerState>>,
    /// Reward budget carried over from rounds without measurable gain.
    carried: f64,
    /// The open round's signed spends, by PDC: cumulative `(ε, δ)`.
    round_spend: BTreeMap<String, (f64, f64)>,
    /// PDCs whose budget cannot afford another round of this study; never selected again.
    exhausted: BTreeSet<String>,
    /// Central DP's mechanism and the study's accountant, when the manifest asks for it.
    central: Option<Arc<Mutex<CentralState>>>,
    /// PDCs flagged by the anomaly check in too many consecutive rounds; suspended ones are not selected.
    suspensions: SuspensionTracker,
    /// The federated standardisation and the validation set before it, when the manifest asks for one.
    standardization: Option<Standardization>,
    raw_validation: Option<Dataset>,
    /// The researcher who created the study and its signature over the manifest, when a consortium names
    /// researchers.
    signed_by: Option<(String, [u8; 64])>,
    /// The conditions of consents that carry some, and each PDC's ε on this study.
    consent_terms: ConsentTerms,
    /// Whether the study was opened to hospitals (it is a draft until then).
    recruiting: bool,
}

impl Study {
    fn status(&self) -> StudyStatus {
        let (state, detail) = match self.machine.phase() {
            Phase::Created if self.recruiting => (StudyState::Recruiting, String::new()),
            Phase::Created => (StudyState::Created, String::new()),
            Phase::Waiting | Phase::Open | Phase::Aggregating => (StudyState::Running, String::new()),
            Phase::Finished => (StudyState::Finished, String::new()),
            Phase::Stopped { reason } => (StudyState::Stopped, reason.clone()),
            Phase::Failed { reason } => (StudyState::Failed, reason.clone()),
        };
        StudyStatus {
            study_id: self.id.clone(),
            name: self.manifest.name.clone(),
            state,
            current_round: self.machine.round(),
            total_rounds: self.manifest.training.rounds,
            rounds: self.rounds.clone(),
            hospitals: self.hospitals.clone(),
            detail,
            consented: self.consents.iter().cloned().collect(),
            warnings: self.manifest.warnings(),
        }
    }

    fn emit(&self, event: StudyEvent) {
        // No watcher is not an error.
        let _ = self.events.send(event);
    }

    /// The open round's task for `pdc_id`.
    fn task_for(&self, pdc_id: &str, now: u64) -> TaskSpec {
        let round = self.machine.round();
        TaskSpec {
            study_id: self.id.clone(),
            round,
            model_hash: self.global_hash,
            n_parameters: self.global.len() as u64,
            manifest_toml: self.manifest_toml.clone(),
            standardizer: self.standardizer.clone(),
            deadline_in_ms: self.round_deadline_ms.saturating_sub(now),
            training_seed: self.training_seed(round, pdc_id),
            query: None,
        }
    }

    /// The query of the study's standardisation, as a task.
    fn standardization_task(&self) -> Option<TaskSpec> {
        let standardization = self.standardization.as_ref()?;
        Some(TaskSpec {
            study_id: self.id.clone(),
            round: 0,
            model_hash: [0; 32],
            n_parameters: 0,
            manifest_toml: self.manifest_toml.clone(),
            standardizer: self.standardizer.clone(),
            deadline_in_ms: 0,
            training_seed: 0,
            query: Some(standardization.query().clone()),
        })
    }

    /// Why `pdc_id`'s consent does not cover `round` at `now_wall_ms` (Unix milliseconds), if it does not: it
    /// was never given or was revoked, it expired, the round is beyond its `max_rounds`, or the PDC's ε on this
    /// study reached its `max_epsilon`.
    fn consent_lapse(&self, pdc_id: &str, round: u32, now_wall_ms: u64) -> Option<String> {
        if !self.consents.contains(pdc_id) {
            return Some(format!("{pdc_id} has not consented to study {}", self.id));
        }
        self.consent_terms.lapse(&self.id, pdc_id, round, now_wall_ms)
    }

    /// Whether hospitals may see and join the study: it recruits or runs.
    fn joinable(&self) -> bool {
        self.recruiting
            && matches!(self.machine.phase(), Phase::Created | Phase::Waiting | Phase::Open | Phase::Aggregating)
    }

    /// Whether the study is started and still gathering its standardisation (no round may open yet).
    fn standardizing(&self) -> bool {
        *self.machine.phase() == Phase::Waiting && self.standardization.as_ref().is_some_and(|s| !s.is_done())
    }

    fn training_seed(&self, round: u32, pdc_id: &str) -> u64 {
        let mut key = self.manifest.seed.to_le_bytes().to_vec();
        key.extend_from_slice(&round.to_le_bytes());
        key.extend_from_slice(pdc_id.as_bytes());
        let digest = sha3_256(&key);
        u64::from_le_bytes(digest[..8].try_into().expect("8 bytes"))
    }
}

#[derive(Default)]
struct State {
    pdcs: BTreeMap<String, Pdc>,
    studies: BTreeMap<String, Study>,
    /// Declared privacy budgets, by PDC.
    budgets: BTreeMap<String, DeclaredBudget>,
    /// Each PDC's latest recorded cumulative spend `(ε, δ)`, over all studies.
    spent: BTreeMap<String, (f64, f64)>,
    /// Open feasibility queries, by id, with what wakes their researcher's call when they complete.
    queries: BTreeMap<String, (FeasibilityQuery, Arc<Notify>)>,
    /// The consortium in force, when one is configured.
    consortium: Option<Consortium>,
}

/// A PDC's privacy budget, as declared on the ledger.
#[derive(Clone, Debug, PartialEq)]
struct DeclaredBudget {
    dataset: String,
    epsilon: f64,
    delta: f64,
}

/// The coordinator: studies, PDCs and rounds.
pub struct Coordinator {
    config: CoordinatorConfig,
    state: Mutex<State>,
    archive: UpdateArchive,
    /// Uploads in progress or broken off, for resumption.
    partials: PartialUploads,
    ledger: Arc<Ledger>,
    started: Instant,
    metrics: Arc<Telemetry>,
    /// Study state the ledger does not hold (see [`crate::recovery`]).
    state_store: StateStore,
    /// What recovery left to do once the coordinator runs: seal the ledger, then these, in order.
    recovered: Mutex<Vec<Resumption>>,
    /// The nonces of signed requests accepted within the signature window (a small lock of its own, never held
    /// across I/O).
    nonces: Mutex<NonceCache>,
}

/// A step a recovered study takes once the coordinator runs.
enum Resumption {
    /// Handle the end of this aggregated round.
    Aggregated { study_id: String, round: u32 },
    /// Carry out the round machine's actions (an open round that the recorded contributions completed).
    Actions { study_id: String, actions: Vec<Action> },
    /// Carry out the standardisation's steps (summaries re-fed from the ledger completed it).
    Standardization { study_id: String, steps: Vec<StandardizationStep> },
}

impl Coordinator {
    /// A coordinator keeping its state under `config.data_dir`: the update archive in `updates/`, the ledger in
    /// `ledger/`, and its signing key in `coordinator.key` unless the ledger settings name another file.
    pub fn new(config: CoordinatorConfig) -> Result<Arc<Self>> {
        let archive = UpdateArchive::open(&config.data_dir.join("updates"))?;
        let key_file = config.ledger.key_file.clone().unwrap_or_else(|| config.data_dir.join("coordinator.key"));
        let identity = Identity::load_or_create(&key_file).map_err(|e| Error::Ledger(e.to_string()))?;
        let ledger = Ledger::open(&config.data_dir.join("ledger"), identity, config.ledger.clone())?;
        let state_store = StateStore::open(&config.data_dir.join("state"))?;
        let coordinator = Self {
            config,
            state: Mutex::new(State::default()),
            archive,
            partials: PartialUploads::default(),
            ledger: Arc::new(ledger),
            started: Instant::now(),
            metrics: Arc::new(Telemetry::default()),
            state_store,
            recovered: Mutex::new(Vec::new()),
            nonces: Mutex::new(NonceCache::new(MAX_CLOCK_SKEW_MS, MAX_NONCES)),
        };
        coordinator.recover()?;
        if coordinator.config.consortium.is_some() {
            coordinator.reload_consortium()?;
        } else {
            tracing::warn!(
                "no consortium file: any PDC may register, and any client may use the StudyService and AuditService"
            );
        }
        Ok(Arc::new(coordinator))
    }

    /// Reads the consortium file again, records its changes on the ledger (see [`crate::consortium`]) and puts
    /// it in force: hospitals added or given a new key may register with it, and a hospital whose key was revoked
    /// loses its task streams and every call, so no later round selects it. Returns how many entries were
    /// recorded. A file that does not parse or contradicts the ledger changes nothing.
    pub fn reload_consortium(&self) -> Result<usize> {
        let path = self
            .config
            .consortium
            .as_ref()
            .ok_or_else(|| Error::FailedPrecondition("this coordinator has no consortium file to reload".into()))?;
        let consortium = Consortium::load(path)?;
        let mut state = self.lock();
        let recorded = self.ledger.entries()?;
        let changes = Membership::from_entries(recorded.iter().map(|(_, entry)| entry)).changes(&consortium)?;
        if !changes.is_empty() {
            self.ledger.record(&changes)?;
        }
        let hospitals: BTreeMap<&String, PublicKey> = consortium
            .members
            .values()
            .filter(|member| member.role == Role::Hospital)
            .map(|member| (&member.id, member.key))
            .collect();
        // Dropping a PDC drops its task streams: its agent is told at once, and the next round cannot select it.
        state.pdcs.retain(|id, _| hospitals.contains_key(id));
        for (id, key) in hospitals {
            let pdc = state.pdcs.entry(id.clone()).or_insert_with(|| Pdc { key, task_streams: Vec::new() });
            if pdc.key != key {
                pdc.key = key;
                pdc.task_streams.clear();
            }
        }
        tracing::info!(members = consortium.members.len(), entries = changes.len(), file = %path.display(),
            "consortium in force");
        state.consortium = Some(consortium);
        Ok(changes.len())
    }

    /// The StudyService or AuditService caller whose mutual-TLS certificate certifies `key` (`None`: plaintext or
    /// no certificate). Without a consortium everyone is [`Caller::Open`]; with one, the key must be a current
    /// member's.
    pub fn caller(&self, key: Option<PublicKey>) -> Result<Caller> {
        let state = self.lock();
        let Some(consortium) = &state.consortium else { return Ok(Caller::Open) };
        let key = key.ok_or_else(|| {
            Error::Unauthenticated(
                "this coordinator has a consortium: calls need mutual TLS with a member's certificate".into(),
            )
        })?;
        let member = consortium.member_by_key(&key).ok_or_else(|| {
            Error::PermissionDenied(format!(
                "the TLS client certificate certifies key {}, which is no current consortium member's (never \
                 listed, or revoked)",
                hex::encode(key.to_bytes())
            ))
        })?;
        Ok(Caller::Member { id: member.id.clone(), role: member.role })
    }

    /// Checks that `caller` may do `action` on `study_id` (see [`crate::access::authorize`]); an unknown study is
    /// `NotFound`.
    pub fn authorize(&self, caller: &Caller, action: StudyAction, study_id: Option<&str>) -> Result<()> {
        let state = self.lock();
        let owner = match study_id {
            Some(id) => {
                let study = state.studies.get(id).ok_or_else(|| Error::UnknownStudy(id.to_owned()))?;
                study.signed_by.as_ref().map(|(owner, _)| owner.as_str())
            }
            None => None,
        };
        crate::access::authorize(caller, action, owner)
    }

    /// Rebuilds the registered PDCs, budgets, spends and every study from the ledger, the state store and the
    /// archives (see [`crate::recovery`]); what needs the running coordinator is left in `recovered`.
    fn recover(&self) -> Result<()> {
        let entries = self.ledger.entries()?;
        if entries.is_empty() {
            return Ok(());
        }
        let scan = crate::recovery::scan(entries.into_iter().map(|(_, entry)| entry));
        let mut state = self.lock();
        for (pdc_id, key) in &scan.hospitals {
            let key = PublicKey::from_bytes(key).map_err(|e| Error::State(format!("key of {pdc_id}: {e}")))?;
            state.pdcs.insert(pdc_id.clone(), Pdc { key, task_streams: Vec::new() });
        }
        for (pdc_id, (dataset, epsilon, delta)) in scan.budgets {
            state.budgets.insert(pdc_id, DeclaredBudget { dataset, epsilon, delta });
        }
        state.spent = scan.spent;
        let mut resumed = Vec::new();
        for (study_id, progress) in scan.studies {
            if let Some(reason) = crate::recovery::over_limits(&self.config.data_dir, &study_id, &self.config.limits) {
                tracing::error!(study = %study_id, %reason, "study left out: it exceeds this coordinator's limits");
                continue;
            }
            let study = self
                .recover_study(&study_id, &progress, &mut resumed)
                .map_err(|error| Error::State(format!("cannot recover study {study_id}: {error}")))?;
            tracing::info!(study = %study_id, phase = ?study.machine.phase(), round = study.machine.round(),
                "study recovered");
            state.studies.insert(study_id, study);
        }
        drop(state);
        *self.recovered.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) = resumed;
        Ok(())
    }

    fn recover_study(&self, study_id: &str, progress: &StudyProgress, resumed: &mut Vec<Resumption>) -> Result<Study> {
        let (manifest, validation) = read_archived_study(&self.config.data_dir.join("studies").join(study_id))?;
        let manifest = String::from_utf8(manifest).map_err(|e| Error::State(format!("archived manifest: {e}")))?;
        let prepared = prepare_study(&manifest, &validation)?;
        if prepared.manifest_hash != progress.manifest_hash {
            return Err(Error::State(format!(
                "the archived manifest hashes to {}, the ledger's StudyCreated names {}",
                hex::encode(prepared.manifest_hash),
                hex::encode(progress.manifest_hash)
            )));
        }
        let mut study = self.build_study(study_id, prepared)?;
        study.consents = progress.consents.clone();
        for (pdc_id, conditions) in &progress.conditions {
            study.consent_terms.grant(pdc_id, Some(*conditions));
        }
        for (pdc_id, &epsilon) in &progress.study_epsilon {
            study.consent_terms.record_epsilon(pdc_id, epsilon);
        }
        study.signed_by = progress.signed_by.clone();
        study.recruiting = !self.state_store.is_draft(study_id)?;
        let now = self.now_ms();

        // The standardisation the rounds used, or the summaries released so far towards it.
        if let Some((contributors, mean, std)) = &progress.fitted {
            let global = pdc_privacy::stats::GlobalStandardization { mean: mean.clone(), std: std.clone(), count: 1.0 };
            let standardizer = Standardizer::from(&global);
            let mut validation = study.raw_validation.clone().ok_or_else(|| {
                Error::State("the ledger records a standardisation the manifest does not ask for".into())
            })?;
            standardizer.apply(&mut validation)?;
            study.standardizer = standardizer;
            study.validation = Arc::new(validation);
            study.standardization = None;
            tracing::debug!(study = %study_id, ?contributors, "recovered standardisation");
        } else if let Some(standardization) = study.standardization.as_mut() {
            for release in &progress.releases {
                let query = standardization.query();
                let Ok(summary) =
                    NoisyFeatureSummary::from_values(&query.bounds, query.noise_multiplier, &release.values)
                else {
                    continue;
                };
                if let Ok(steps) = standardization.answer(&release.pdc_id, summary)
                    && !steps.is_empty()
                {
                    resumed.push(Resumption::Standardization { study_id: study_id.to_owned(), steps });
                }
            }
        }

        // Every aggregated round's snapshot, and the model and state the last one left.
        for &(round, model_hash) in &progress.aggregated {
            let snapshot = self.state_store.round(study_id, round)?.ok_or_else(|| {
                Error::State(format!("no snapshot of round {round}, which the ledger shows aggregated"))
            })?;
            if snapshot.record.model_hash != model_hash {
                return Err(Error::State(format!("the snapshot of round {round} is of another model")));
            }
            if let Some(central) = &study.central {
                let mut central = central.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
                let central = &mut *central;
                central.dp.record_round(&mut central.accountant, 1.0);
            }
            study.rounds.push(snapshot.record.clone());
            if round == progress.completed() {
                self.install_snapshot(&mut study, snapshot)?;
            }
        }

        let policy = self.round_policy(&study.manifest);
        let started = self.state_store.is_started(study_id)?
            || !progress.aggregated.is_empty()
            || progress.open.is_some()
            || !progress.releases.is_empty();
        study.machine = if let Some(closed) = &progress.closed {
            let round = progress.open.as_ref().map_or(progress.completed(), |open| open.round);
            let reason = "recorded before the coordinator restarted".to_owned();
            let phase = match closed.as_str() {
                "finished" => Phase::Finished,
                "stopped" => Phase::Stopped { reason },
                _ => Phase::Failed { reason },
            };
            RoundMachine::resume(policy, Resume::Ended { round, phase })
        } else if let Some(open) = &progress.open {
            if open.model_hash != study.global_hash {
                return Err(Error::State(format!("round {} was opened with another model", open.round)));
            }
            let deadline_ms = now.saturating_add(policy.deadline_ms);
            let mut machine = RoundMachine::resume(
                policy,
                Resume::Open {
                    round: open.round,
                    attempt: progress.attempts.max(1),
                    participants: open.participants.clone(),
                    deadline_ms,
                },
            );
            study.round_participants = open.participants.clone();
            study.round_deadline_ms = deadline_ms;
            study.round_opened_ms = now;
            study.round_spend = open.spends.clone();
            for (pdc_id, &(epsilon, _)) in &open.spends {
                study.hospitals.entry(pdc_id.clone()).or_default().epsilon = epsilon;
            }
            for pdc_id in &open.rejected {
                study.hospitals.entry(pdc_id.clone()).or_default().updates_rejected += 1;
            }
            let mut actions = Vec::new();
            for pdc_id in &open.exhausted {
                study.exhausted.insert(pdc_id.clone());
                study.hospitals.entry(pdc_id.clone()).or_default().budget_exhausted = true;
                let event = Event::ParticipantFailed {
                    round: open.round,
                    pdc_id: pdc_id.clone(),
                    reason: BUDGET_EXHAUSTED_PREFIX.trim_end_matches(": ").to_owned(),
                };
                actions.extend(machine.handle(now, event).unwrap_or_default());
            }
            for (pdc_id, update) in &open.contributions {
                let event = Event::UpdateAccepted { round: open.round, pdc_id: pdc_id.clone(), update: update.clone() };
                actions.extend(machine.handle(now, event)?);
            }
            if !actions.is_empty() {
                resumed.push(Resumption::Actions { study_id: study_id.to_owned(), actions });
            }
            machine
        } else if progress.completed() > 0 {
            resumed.push(Resumption::Aggregated { study_id: study_id.to_owned(), round: progress.completed() });
            RoundMachine::resume(policy, Resume::Aggregating { round: progress.completed() })
        } else if started {
            RoundMachine::resume(policy, Resume::Waiting { completed: 0, attempts: progress.attempts })
        } else {
            RoundMachine::new(policy)
        };
        Ok(study)
    }

    /// Installs the state an aggregated round left: its model (read back from the archive and checked against its
    /// hash), the server optimiser, the hospitals' figures, suspensions and the carried budget.
    fn install_snapshot(&self, study: &mut Study, snapshot: RoundSnapshot) -> Result<()> {
        let model = self.archive.read(&snapshot.record.model_hash)?;
        if pdc_ledger::hash::parameters_hash(&model) != snapshot.record.model_hash || model.len() != study.global.len()
        {
            return Err(Error::State(format!("the archived model of round {} is damaged", snapshot.record.round)));
        }
        study.global = Arc::new(model);
        study.global_hash = snapshot.record.model_hash;
        study.hospitals = snapshot.hospitals;
        study.exhausted = snapshot.exhausted;
        study.suspensions = snapshot.suspensions;
        study.carried = snapshot.carried;
        *study.optimizer.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) = snapshot.server_state;
        if let (Some(central), Some(clip_norm)) = (&study.central, snapshot.central_clip_norm) {
            let mut central = central.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            central.dp.resume_at(clip_norm).map_err(|e| Error::State(format!("central DP clip norm: {e}")))?;
        }
        Ok(())
    }

    /// Finishes recovery once the coordinator runs: seals what the ledger holds beyond its last checkpoint, so
    /// that a round recorded just before the restart is final, then takes every recovered study's pending step.
    async fn resume_recovered(self: &Arc<Self>) {
        let resumed = std::mem::take(&mut *self.recovered.lock().unwrap_or_else(|poisoned| poisoned.into_inner()));
        if resumed.is_empty() {
            return;
        }
        if let Err(error) = self.seal_ledger().await {
            tracing::error!(%error, "cannot seal the recovered ledger; recovered rounds stay where they are");
            return;
        }
        let now = self.now_ms();
        let mut state = self.lock();
        let state = &mut *state;
        for step in resumed {
            match step {
                Resumption::Aggregated { study_id, round } => {
                    let Some(study) = state.studies.get_mut(&study_id) else { continue };
                    let actions = study.machine.handle(now, Event::Aggregated { round }).unwrap_or_default();
                    self.execute(&mut state.pdcs, study, now, actions);
                }
                Resumption::Actions { study_id, actions } => {
                    let Some(study) = state.studies.get_mut(&study_id) else { continue };
                    self.execute(&mut state.pdcs, study, now, actions);
                }
                Resumption::Standardization { study_id, steps } => {
                    let Some(study) = state.studies.get_mut(&study_id) else { continue };
                    self.execute_standardization(&mut state.pdcs, study, now, steps);
                }
            }
        }
    }

    /// The update archive.
    pub fn archive(&self) -> &UpdateArchive {
        &self.archive
    }

    /// The caps on manifests and connections this coordinator was started with.
    pub fn limits(&self) -> &crate::limits::Limits {
        &self.config.limits
    }

    /// The ledger.
    pub fn ledger(&self) -> &Arc<Ledger> {
        &self.ledger
    }

    /// The operational metrics (see [`crate::metrics`]).
    pub fn metrics(&self) -> &Arc<Telemetry> {
        &self.metrics
    }

    /// Seals the ledger now: a checkpoint over every entry so far, co-signed by the witness quorum.
    pub async fn seal_ledger(&self) -> Result<String> {
        self.ledger.seal(Self::wall_clock_ms()).await
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock is a bug; the state it left is still the best there is.
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// Ticks every study at the configured interval until the coordinator is dropped.
    pub fn spawn_driver(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let weak = Arc::downgrade(self);
        let interval = self.config.tick_interval;
        tokio::spawn(async move {
            if let Some(coordinator) = weak.upgrade() {
                // Beside the ticks: sealing waits for the witness quorum, and no recovered study ticks until then.
                tokio::spawn(async move { coordinator.resume_recovered().await });
            }
            let mut ticker = tokio::time::interval(interval);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticker.tick().await;
                let Some(coordinator) = weak.upgrade() else { return };
                coordinator.tick();
            }
        })
    }

    /// Checks deadlines and opens rounds in every running study.
    pub fn tick(self: &Arc<Self>) {
        self.purge_partial_uploads();
        let now = self.now_ms();
        let mut state = self.lock();
        let state = &mut *state;
        let connected: BTreeSet<String> =
            state.pdcs.iter().filter(|(_, pdc)| pdc.connected()).map(|(id, _)| id.clone()).collect();
        let ids: Vec<String> = state.studies.keys().cloned().collect();
        let wall = Self::wall_clock_ms();
        for id in ids {
            let study = state.studies.get_mut(&id).expect("listed");
            // A round opens only for consents that cover it: revocations, expiry and spent limits bite here.
            let next_round = study.machine.round() + 1;
            let available: Vec<String> = study
                .consents
                .intersection(&connected)
                .filter(|id| !study.exhausted.contains(*id) && !study.suspensions.is_suspended(id))
                .filter(|id| study.consent_lapse(id, next_round, wall).is_none())
                .cloned()
                .collect();
            if study.standardizing() {
                let available = available.into_iter().collect();
                let steps = study.standardization.as_mut().expect("standardizing").tick(now, &available);
                self.execute_standardization(&mut state.pdcs, study, now, steps);
                continue;
            }
            let actions = study.machine.handle(now, Event::Tick { available }).unwrap_or_default();
            self.execute(&mut state.pdcs, study, now, actions);
        }
    }

    fn execute(self: &Arc<Self>, pdcs: &mut BTreeMap<String, Pdc>, study: &mut Study, now: u64, actions: Vec<Action>) {
        for action in actions {
            match action {
                Action::OpenRound { round, attempt, participants, deadline_ms } => {
                    let entry = Entry::RoundOpened {
                        study_id: study.id.clone(),
                        round,
                        participants: participants.clone(),
                        model_hash: study.global_hash,
                    };
                    if let Err(error) = self.ledger.record(&[entry]) {
                        // A round the ledger does not show must not run.
                        tracing::error!(study = %study.id, round, %error, "cannot record the round; stopping");
                        let reason = format!("cannot record round {round} on the ledger: {error}");
                        let more = study.machine.handle(now, Event::Stop { reason }).unwrap_or_default();
                        self.execute(pdcs, study, now, more);
                        return;
                    }
                    tracing::info!(study = %study.id, round, attempt, ?participants, "round opened");
                    self.metrics.round_opened();
                    study.round_opened_ms = now;
                    let deadline_in_ms = deadline_ms.saturating_sub(now);
                    study.round_participants = participants.clone();
                    study.round_deadline_ms = deadline_ms;
                    study.round_spend.clear();
                    for pdc_id in &participants {
                        send_task(pdcs, pdc_id, study.task_for(pdc_id, now));
                    }
                    study.emit(StudyEvent::RoundOpened { round, participants, deadline_in_ms });
                }
                Action::Aggregate { round, contributions } => {
                    tracing::info!(study = %study.id, round, n_updates = contributions.len(), "round closed");
                    self.spawn_aggregation(study, round, contributions);
                }
                Action::RoundAbandoned { round, reason } => {
                    tracing::warn!(study = %study.id, round, %reason, "round abandoned");
                    self.metrics.round_abandoned();
                    study.emit(StudyEvent::UpdateRejected { round, pdc_id: String::new(), reason });
                }
                Action::Ended => {
                    tracing::info!(study = %study.id, phase = ?study.machine.phase(), "study ended");
                    let state = match study.machine.phase() {
                        Phase::Finished => "finished",
                        Phase::Stopped { .. } => "stopped",
                        _ => "failed",
                    };
                    let entry = Entry::StudyClosed { study_id: study.id.clone(), state: state.into() };
                    if let Err(error) = self.ledger.record(&[entry]) {
                        tracing::error!(study = %study.id, %error, "cannot record the study's end");
                    }
                    let coordinator = Arc::clone(self);
                    tokio::spawn(async move {
                        if let Err(error) = coordinator.seal_ledger().await {
                            tracing::error!(%error, "cannot seal the ledger");
                        }
                    });
                    study.emit(StudyEvent::Status(study.status()));
                }
            }
        }
    }

    /// Carries out a study's standardisation steps: queries to PDCs, the fit (recorded, then used by every later
    /// task and the validation set), or the study's end.
    fn execute_standardization(
        self: &Arc<Self>,
        pdcs: &mut BTreeMap<String, Pdc>,
        study: &mut Study,
        now: u64,
        steps: Vec<StandardizationStep>,
    ) {
        for step in steps {
            match step {
                StandardizationStep::Query(asked) => {
                    tracing::info!(study = %study.id, ?asked, "feature summaries asked for");
                    let task = study.standardization_task().expect("a study that standardises");
                    for pdc_id in &asked {
                        send_task(pdcs, pdc_id, task.clone());
                    }
                }
                StandardizationStep::Fit { contributors, global } => {
                    let standardizer = Standardizer::from(&global);
                    let mut validation = study.raw_validation.clone().expect("kept for the fit");
                    let entry = Entry::StandardizationFitted {
                        study_id: study.id.clone(),
                        contributors: contributors.clone(),
                        mean: global.mean.clone(),
                        std: global.std.clone(),
                    };
                    let applied = standardizer.apply(&mut validation).map_err(Error::from);
                    if let Err(error) = applied.and_then(|()| self.ledger.record(&[entry])) {
                        tracing::error!(study = %study.id, %error, "cannot install the standardisation; stopping");
                        let reason = format!("federated standardisation: {error}");
                        let more = study.machine.handle(now, Event::Stop { reason }).unwrap_or_default();
                        self.execute(pdcs, study, now, more);
                        return;
                    }
                    tracing::info!(study = %study.id, ?contributors, "standardisation fitted");
                    study.standardizer = standardizer;
                    study.validation = Arc::new(validation);
                    study.emit(StudyEvent::Standardized { contributors, mean: global.mean, std: global.std });
                }
                StandardizationStep::Fail(reason) => {
                    tracing::warn!(study = %study.id, %reason, "standardisation failed; stopping");
                    let more = study.machine.handle(now, Event::Stop { reason }).unwrap_or_default();
                    self.execute(pdcs, study, now, more);
                }
            }
        }
    }

    fn spawn_aggregation(self: &Arc<Self>, study: &Study, round: u32, contributions: Vec<(String, AcceptedUpdate)>) {
        let coordinator = Arc::clone(self);
        let study_id = study.id.clone();
        let global = Arc::clone(&study.global);
        let validation = Arc::clone(&study.validation);
        let spec = study.spec.clone();
        let participants = study.round_participants.clone();
        let config = study.manifest.aggregation.clone();
        let optimizer = Arc::clone(&study.optimizer);
        let budget = study.manifest.rewards.budget_per_round;
        let settings = study.manifest.valuation.clone();
        let seed = crate::rewards::round_seed(study.manifest.seed, round);
        let carried_in = study.carried;
        let central = study.central.clone();
        let manifest = study.manifest.clone();
        let span = tracing::info_span!("aggregation", study = %study_id, round);
        let task = async move {
            let archive = coordinator.archive.clone();
            let work = contributions.clone();
            let release_study = study_id.clone();
            let result = tokio::task::spawn_blocking(move || {
                let mut aggregated = match &central {
                    Some(central) => {
                        let aggregated = central_aggregate(&archive, &release_study, round, &global, &work, central)?;
                        if let Some(release) = &aggregated.release {
                            // Archived before the release entry that names it is recorded.
                            archive.store(&release.mean)?;
                        }
                        aggregated
                    }
                    None => {
                        let root = RootData::new(&manifest, &spec, validation.as_ref(), round);
                        aggregate(&archive, &global, &work, &config, &optimizer, &root)?
                    }
                };
                if budget > 0.0 {
                    let valuation = ValuationInputs { round, budget, carried_in, seed, settings: &settings };
                    aggregated.valuation = Some(value_contributions(
                        &archive,
                        &spec,
                        &global,
                        &validation,
                        &work,
                        &aggregated,
                        valuation,
                    )?);
                }
                Ok((pdc_models::evaluate(&spec, &aggregated.model, &validation)?, aggregated))
            })
            .await
            .map(|result: Result<_>| result.map_err(|error| error.to_string()))
            .unwrap_or_else(|panic| Err(format!("the aggregation task panicked: {panic}")));
            let recorded = coordinator.finish_aggregation(&study_id, round, participants, &contributions, result);
            if !recorded {
                return;
            }
            // The round is final once its checkpoint is signed and the witness quorum has co-signed it; only then
            // does the next round open.
            if let Err(error) = coordinator.seal_ledger().await {
                tracing::error!(study = %study_id, round, %error, "cannot seal the round");
                let now = coordinator.now_ms();
                let mut state = coordinator.lock();
                let state = &mut *state;
                if let Some(study) = state.studies.get_mut(&study_id) {
                    let reason = format!("cannot seal round {round} on the ledger: {error}");
                    let actions = study.machine.handle(now, Event::Stop { reason }).unwrap_or_default();
                    coordinator.execute(&mut state.pdcs, study, now, actions);
                }
                return;
            }
            {
                let now = coordinator.now_ms();
                let mut state = coordinator.lock();
                let state = &mut *state;
                let Some(study) = state.studies.get_mut(&study_id) else { return };
                let actions = study.machine.handle(now, Event::Aggregated { round }).unwrap_or_default();
                coordinator.execute(&mut state.pdcs, study, now, actions);
            }
            // The next round opens now, not at the driver's next tick: its tasks reach the connected hospitals as
            // soon as the previous round is sealed (a push, whatever `tick_interval` is).
            coordinator.tick();
        };
        tokio::spawn(tracing::Instrument::instrument(task, span));
    }

    /// Records a round's aggregate on the ledger and installs it as the study's model; returns whether the round
    /// can be sealed (false when it failed and the study was stopped).
    fn finish_aggregation(
        self: &Arc<Self>,
        study_id: &str,
        round: u32,
        participants: Vec<String>,
        contributions: &[(String, AcceptedUpdate)],
        result: std::result::Result<(Metrics, Aggregated), String>,
    ) -> bool {
        let now = self.now_ms();
        let mut state = self.lock();
        let state = &mut *state;
        let Some(study) = state.studies.get_mut(study_id) else { return false };
        let failure = match result {
            Ok((validation, Aggregated { model, excluded, valuation, release, flagged })) => {
                let model_hash = pdc_ledger::hash::parameters_hash(&model);
                let (contributors, mut entries) =
                    aggregation_entries(study_id, round, contributions, &excluded, model_hash, &validation, &valuation);
                if let Some(release) = release {
                    // Recorded just before the aggregate it produced.
                    entries.insert(entries.len() - 1 - valuation_entry_count(&valuation), release.entry);
                }
                // The round's effects on the study, computed before anything is recorded.
                let mut hospitals = study.hospitals.clone();
                for (pdc_id, update) in contributions {
                    let stats = hospitals.entry(pdc_id.clone()).or_default();
                    stats.examples = update.n_examples;
                    if contributors.contains(pdc_id) {
                        stats.rounds_joined += 1;
                    } else {
                        stats.updates_rejected += 1;
                    }
                }
                let mut carried = study.carried;
                if let Some(valuation) = &valuation {
                    carried = valuation.carried_over;
                    for pdc in &valuation.pdcs {
                        let stats = hospitals.entry(pdc.pdc_id.clone()).or_default();
                        stats.utility += pdc.utility;
                        stats.reward += pdc.reward;
                        stats.strikes += u32::from(pdc.strike.is_some());
                    }
                }
                let mut suspensions = study.suspensions.clone();
                let outcomes = contributions.iter().map(|(id, _)| (id.as_str(), flagged.contains(id)));
                let suspended = suspensions.record_round(round, outcomes).unwrap_or_else(|error| {
                    tracing::error!(study = %study_id, round, %error, "suspension tracking");
                    Vec::new()
                });
                let privacy = contributors
                    .iter()
                    .filter_map(|id| study.round_spend.get(id).map(|&(e, d)| (id.clone(), e, d)))
                    .collect();
                let record = RoundRecord {
                    round,
                    participants,
                    contributors: contributors.clone(),
                    validation,
                    model_hash,
                    privacy,
                };
                let snapshot = RoundSnapshot {
                    record: record.clone(),
                    hospitals,
                    exhausted: study.exhausted.clone(),
                    suspensions,
                    carried,
                    server_state: study.optimizer.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).clone(),
                    central_clip_norm: study
                        .central
                        .as_ref()
                        .map(|central| central.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).dp.clip_norm()),
                };
                // The model and the snapshot are durable before the ledger says the round is aggregated, so a
                // restarted coordinator finds both for every aggregate it reads (see `crate::recovery`).
                let durable = self
                    .archive
                    .store_hashed(&model_hash, &model)
                    .and_then(|()| self.state_store.put_round(study_id, &snapshot))
                    .and_then(|()| self.ledger.record(&entries));
                match durable {
                    Ok(_) => {
                        study.global = Arc::new(model);
                        study.global_hash = model_hash;
                        study.hospitals = snapshot.hospitals;
                        study.carried = snapshot.carried;
                        study.suspensions = snapshot.suspensions;
                        self.metrics.round_aggregated(Duration::from_millis(now.saturating_sub(study.round_opened_ms)));
                        for (pdc_id, reason) in &excluded {
                            tracing::warn!(study = %study_id, round, pdc = %pdc_id, %reason, "update left out");
                            self.metrics.update_rejected("flagged");
                            study.emit(StudyEvent::UpdateRejected {
                                round,
                                pdc_id: pdc_id.clone(),
                                reason: reason.clone(),
                            });
                        }
                        let k = study.manifest.aggregation.suspend_after_rounds();
                        for pdc_id in suspended {
                            let reason =
                                format!("{SUSPENDED_PREFIX}flagged in {k} consecutive rounds, not selected again");
                            let entry = Entry::UpdateRejected {
                                study_id: study_id.to_owned(),
                                round,
                                pdc_id: pdc_id.clone(),
                                reason: reason.clone(),
                            };
                            if let Err(error) = self.ledger.record(&[entry]) {
                                tracing::error!(study = %study_id, %error, "cannot record a suspension");
                            }
                            tracing::warn!(study = %study_id, round, pdc = %pdc_id, "PDC suspended");
                            study.emit(StudyEvent::UpdateRejected { round, pdc_id, reason });
                        }
                        tracing::info!(study = %study_id, round, auroc = ?record.validation.auroc,
                            accuracy = ?record.validation.accuracy, "round aggregated");
                        study.rounds.push(record.clone());
                        study.emit(StudyEvent::RoundClosed(record));
                        return true;
                    }
                    Err(error) => format!("cannot record the aggregate of round {round}: {error}"),
                }
            }
            // Only a coordinator fault (a damaged archive) gets here; stopping beats a wrong model.
            Err(error) => format!("aggregation of round {round} failed: {error}"),
        };
        tracing::error!(study = %study_id, round, reason = %failure, "aggregation failed");
        let actions = study.machine.handle(now, Event::Stop { reason: failure }).unwrap_or_default();
        self.execute(&mut state.pdcs, study, now, actions);
        false
    }

    // ---- StudyService -------------------------------------------------------------------------------------

    /// Creates a study from manifest TOML and the validation set's CSV text, for `caller`. With a consortium the
    /// caller is a researcher who signs the canonical manifest's hash ([`signing::manifest_message`]); the study
    /// is then its, and the signature is recorded as `ManifestSigned` with the study. A `draft` is hidden from
    /// hospitals until [`Coordinator::open_recruiting`]; otherwise the study recruits at once. Returns the id, the
    /// manifest's hash and its warnings ([`crate::manifest::Manifest::warnings`]).
    pub fn create_study(
        &self,
        caller: &Caller,
        manifest_toml: &str,
        validation_csv: &[u8],
        manifest_signature: Option<&[u8]>,
        draft: bool,
    ) -> Result<(String, Hash, Vec<String>)> {
        crate::access::authorize(caller, StudyAction::Create, None)?;
        if validation_csv.len() > MAX_VALIDATION_BYTES {
            return Err(Error::TooLarge(format!(
                "validation set of {} bytes exceeds the limit of {MAX_VALIDATION_BYTES}",
                validation_csv.len()
            )));
        }
        if let Some(exceeded) = manifest::limit_exceeded(manifest_toml, validation_csv, &self.config.limits)? {
            return Err(exceeded.into());
        }
        let prepared = prepare_study(manifest_toml, validation_csv)?;
        let study_id = format!("{}-{}", slug(&prepared.manifest.name), &hex::encode(prepared.manifest_hash)[..8]);
        let canonical = prepared.canonical.clone();
        let manifest_hash = prepared.manifest_hash;
        let mut study = self.build_study(&study_id, prepared)?;
        let mut state = self.lock();
        let signed = match (caller.member_id(), manifest_signature) {
            (None, None) => None,
            (None, Some(_)) => {
                return Err(Error::FailedPrecondition(
                    "this coordinator has no consortium, so it knows no researcher key to check the manifest \
                     signature against"
                        .into(),
                ));
            }
            (Some(id), None) => {
                return Err(Error::Unauthenticated(format!(
                    "researcher {id} must sign the manifest (hash {})",
                    hex::encode(manifest_hash)
                )));
            }
            (Some(id), Some(signature)) => {
                let consortium = state.consortium.as_ref().expect("a member caller comes from the consortium");
                let member = consortium.members.get(id).ok_or_else(|| {
                    Error::PermissionDenied(format!("{id} left the consortium while its study was being created"))
                })?;
                member
                    .key
                    .verify(&signing::manifest_message(id, &manifest_hash), signature, id)
                    .map_err(|e| Error::Unauthenticated(format!("manifest signature of {id}: {e}")))?;
                let signature: [u8; 64] = signature.try_into().expect("a verified signature has 64 bytes");
                Some((id.to_owned(), signature))
            }
        };
        if state.studies.contains_key(&study_id) {
            return Err(Error::AlreadyExists(format!("study {study_id} exists already")));
        }
        if state.studies.values().any(|s| s.manifest.name == study.manifest.name) {
            return Err(Error::AlreadyExists(format!("a study named `{}` exists already", study.manifest.name)));
        }
        // The inputs a replay needs besides the ledger and the update archive, kept before the study exists.
        archive_study(&self.config.data_dir.join("studies").join(&study_id), &canonical, validation_csv)?;
        if draft {
            // Not on the ledger: a restarted coordinator learns from the state store that the study is a draft.
            self.state_store.mark_draft(&study_id)?;
        }
        let mut entries = vec![Entry::StudyCreated { study_id: study_id.clone(), manifest_hash }];
        if let Some((researcher_id, signature)) = &signed {
            entries.push(Entry::ManifestSigned {
                study_id: study_id.clone(),
                researcher_id: researcher_id.clone(),
                manifest_hash,
                signature: *signature,
            });
        }
        self.ledger.record(&entries)?;
        tracing::info!(study = %study_id, name = %study.manifest.name, "study created");
        let warnings = study.manifest.warnings();
        for warning in &warnings {
            tracing::warn!(study = %study_id, %warning, "study created with a warning");
        }
        study.signed_by = signed;
        study.recruiting = !draft;
        state.studies.insert(study_id.clone(), study);
        Ok((study_id, manifest_hash, warnings))
    }

    /// A created, not started study from its prepared inputs: the same at creation and in recovery.
    fn build_study(&self, study_id: &str, prepared: PreparedStudy) -> Result<Study> {
        let PreparedStudy {
            manifest,
            canonical,
            manifest_hash,
            validation,
            raw_validation,
            standardizer,
            spec,
            global,
            optimizer,
        } = prepared;
        let standardization = match &manifest.federated_standardization {
            Some(section) => {
                let invalid = |e: pdc_models::Error| Error::InvalidManifest(e.to_string());
                Some(Standardization::new(
                    section.noise_multiplier().map_err(invalid)?,
                    section.bounds_for(&manifest.data.features).map_err(invalid)?,
                    manifest.participants.min,
                    manifest.participants.round_deadline_secs.saturating_mul(1000),
                    self.config.max_round_attempts,
                ))
            }
            None => None,
        };
        let raw_validation = standardization.as_ref().map(|_| raw_validation);
        let central = match &manifest.central_privacy {
            Some(section) => {
                let dp = pdc_privacy::central::CentralDp::new(section.config())
                    .map_err(|e| Error::InvalidManifest(format!("central_privacy: {e}")))?;
                let accountant = pdc_privacy::RdpAccountant::new();
                Some(Arc::new(Mutex::new(CentralState { dp, accountant, delta: section.delta })))
            }
            None => None,
        };
        let (events, _) = broadcast::channel(1024);
        Ok(Study {
            id: study_id.to_owned(),
            manifest_toml: canonical,
            manifest_hash,
            global_hash: pdc_ledger::hash::parameters_hash(&global),
            global: Arc::new(global),
            spec,
            validation: Arc::new(validation),
            standardizer,
            machine: RoundMachine::new(self.round_policy(&manifest)),
            consents: BTreeSet::new(),
            rounds: Vec::new(),
            hospitals: BTreeMap::new(),
            events,
            round_participants: Vec::new(),
            round_deadline_ms: 0,
            round_opened_ms: 0,
            optimizer: Arc::new(Mutex::new(optimizer)),
            carried: 0.0,
            round_spend: BTreeMap::new(),
            exhausted: BTreeSet::new(),
            central,
            suspensions: SuspensionTracker::new(manifest.aggregation.suspend_after_rounds()),
            standardization,
            raw_validation,
            signed_by: None,
            consent_terms: ConsentTerms::default(),
            recruiting: true,
            manifest,
        })
    }

    fn round_policy(&self, manifest: &Manifest) -> RoundPolicy {
        RoundPolicy {
            rounds: manifest.training.rounds,
            min_participants: manifest.participants.min,
            max_participants: manifest.participants.max,
            fraction: manifest.participants.fraction,
            deadline_ms: manifest.participants.round_deadline_secs.saturating_mul(1000),
            max_attempts: self.config.max_round_attempts,
            seed: manifest.seed,
        }
    }

    fn with_study<T>(&self, study_id: &str, f: impl FnOnce(&mut Study) -> Result<T>) -> Result<T> {
        let mut state = self.lock();
        let study = state.studies.get_mut(study_id).ok_or_else(|| Error::UnknownStudy(study_id.to_owned()))?;
        f(study)
    }

    /// Opens a draft study to hospitals: from now on they see it and may consent.
    pub fn open_recruiting(&self, study_id: &str) -> Result<StudyStatus> {
        self.with_study(study_id, |study| {
            if *study.machine.phase() != Phase::Created || study.recruiting {
                return Err(Error::FailedPrecondition(format!(
                    "study {study_id} is {:?}, not a draft",
                    study.status().state
                )));
            }
            self.state_store.mark_recruiting(study_id)?;
            study.recruiting = true;
            tracing::info!(study = %study_id, "recruiting");
            study.emit(StudyEvent::Status(study.status()));
            Ok(study.status())
        })
    }

    /// Starts a recruiting study.
    pub fn start_study(self: &Arc<Self>, study_id: &str) -> Result<StudyStatus> {
        let now = self.now_ms();
        let status = self.with_study(study_id, |study| {
            if *study.machine.phase() != Phase::Created {
                return Err(Error::FailedPrecondition(format!(
                    "cannot start a study that is {:?}",
                    study.machine.phase()
                )));
            }
            if !study.recruiting {
                return Err(Error::FailedPrecondition(format!(
                    "study {study_id} is a draft: open recruiting first (pdc study recruit {study_id})"
                )));
            }
            // Durable before it takes effect: a restarted coordinator resumes the study as started.
            self.state_store.mark_started(study_id)?;
            study.machine.handle(now, Event::Start)?;
            study.emit(StudyEvent::Status(study.status()));
            Ok(study.status())
        })?;
        self.tick();
        Ok(status)
    }

    /// Stops a study.
    pub fn stop_study(self: &Arc<Self>, study_id: &str, reason: &str) -> Result<StudyStatus> {
        let now = self.now_ms();
        let mut state = self.lock();
        let state = &mut *state;
        let study = state.studies.get_mut(study_id).ok_or_else(|| Error::UnknownStudy(study_id.to_owned()))?;
        let actions = study.machine.handle(now, Event::Stop { reason: reason.to_owned() })?;
        self.execute(&mut state.pdcs, study, now, actions);
        Ok(study.status())
    }

    /// A study's status.
    pub fn status(&self, study_id: &str) -> Result<StudyStatus> {
        self.with_study(study_id, |study| Ok(study.status()))
    }

    /// A study's status and a receiver of its later events.
    pub fn watch(&self, study_id: &str) -> Result<(StudyStatus, broadcast::Receiver<StudyEvent>)> {
        self.with_study(study_id, |study| Ok((study.status(), study.events.subscribe())))
    }

    /// The study's current global model.
    pub fn current_model(&self, study_id: &str) -> Result<ModelSnapshot> {
        self.with_study(study_id, |study| Ok(snapshot(study)))
    }

    // ---- FederationService --------------------------------------------------------------------------------

    /// Registers `pdc_id` with `public_key`, proven by `signature`. Registering the same key again is a no-op;
    /// another key for a registered id is refused.
    pub fn register(&self, pdc_id: &str, public_key: &[u8], signature: &[u8]) -> Result<bool> {
        check_pdc_id(pdc_id)?;
        let key = PublicKey::from_bytes(public_key)
            .map_err(|e| Error::InvalidArgument { field: "public_key", detail: e.to_string() })?;
        key.verify(&signing::register_message(pdc_id, &key.to_bytes()), signature, pdc_id)
            .map_err(|e| Error::Unauthenticated(format!("registration of {pdc_id}: {e}")))?;
        let mut state = self.lock();
        match state.pdcs.get(pdc_id) {
            Some(existing) if existing.key == key => Ok(false),
            Some(_) if state.consortium.is_some() => Err(Error::PermissionDenied(format!(
                "the consortium file gives PDC {pdc_id} another key than {}",
                hex::encode(key.to_bytes())
            ))),
            Some(_) => Err(Error::AlreadyExists(format!("PDC {pdc_id} is registered with another key"))),
            None if state.consortium.is_some() => Err(Error::PermissionDenied(format!(
                "{pdc_id} is not a hospital of the consortium (its file lists who may register)"
            ))),
            None => {
                let entry = Entry::MemberRegistered {
                    pdc_id: pdc_id.to_owned(),
                    role: Role::Hospital,
                    public_key: key.to_bytes(),
                };
                self.ledger.record(&[entry])?;
                tracing::info!(pdc = %pdc_id, "PDC registered");
                state.pdcs.insert(pdc_id.to_owned(), Pdc { key, task_streams: Vec::new() });
                Ok(true)
            }
        }
    }

    /// The key `pdc_id` is registered with, if it is registered; the TLS edge binds client certificates to it.
    pub fn registered_key(&self, pdc_id: &str) -> Option<PublicKey> {
        self.lock().pdcs.get(pdc_id).map(|pdc| pdc.key)
    }

    fn wall_clock_ms() -> u64 {
        SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
    }

    fn authenticate(&self, state: &State, method: &str, auth: &RequestAuth) -> Result<()> {
        let pdc = state.pdcs.get(&auth.pdc_id).ok_or_else(|| Error::UnknownPdc(auth.pdc_id.clone()))?;
        let now = Self::wall_clock_ms();
        if now.abs_diff(auth.timestamp_ms) > MAX_CLOCK_SKEW_MS {
            return Err(Error::Unauthenticated(format!(
                "request timestamp {} is more than five minutes from the coordinator's clock {now}",
                auth.timestamp_ms
            )));
        }
        let message = signing::request_message(method, &auth.pdc_id, auth.timestamp_ms, &auth.nonce);
        pdc.key.verify(&message, &auth.signature, &auth.pdc_id).map_err(|e| Error::Unauthenticated(e.to_string()))?;
        // Only after the signature: nobody but the key holder can fill this PDC's entries.
        let mut nonces = self.nonces.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        nonces.accept(&auth.pdc_id, &auth.nonce, auth.timestamp_ms, now).map_err(|refusal| match refusal {
            NonceRefusal::Full { .. } => Error::TooLarge(refusal.to_string()),
            NonceRefusal::Malformed { .. } | NonceRefusal::Replayed => Error::Unauthenticated(refusal.to_string()),
        })
    }

    /// The studies `auth`'s PDC may join.
    pub fn list_studies(&self, auth: &RequestAuth) -> Result<Vec<StudyListing>> {
        let state = self.lock();
        self.authenticate(&state, "ListStudies", auth)?;
        Ok(state
            .studies
            .values()
            .filter(|study| study.joinable())
            .map(|study| StudyListing {
                study_id: study.id.clone(),
                name: study.manifest.name.clone(),
                manifest_hash: study.manifest_hash,
                manifest_toml: study.manifest_toml.clone(),
                consented: study.consents.contains(&auth.pdc_id),
                researcher: study.signed_by.clone(),
            })
            .collect())
    }

    /// Grants or revokes `pdc_id`'s consent to a study, proven by its signature over the manifest hash (and the
    /// conditions of a conditional grant: [`signing::conditional_consent_message`]). Granting again with other
    /// conditions replaces them. A revocation is immediate; the round in progress goes on without the PDC.
    pub fn consent(
        &self,
        action: ConsentAction,
        pdc_id: &str,
        study_id: &str,
        signature: &[u8],
        conditions: Option<ConsentConditions>,
    ) -> Result<()> {
        let mut state = self.lock();
        let state = &mut *state;
        let pdc = state.pdcs.get(pdc_id).ok_or_else(|| Error::UnknownPdc(pdc_id.to_owned()))?;
        let study = state.studies.get_mut(study_id).ok_or_else(|| Error::UnknownStudy(study_id.to_owned()))?;
        if action == ConsentAction::Grant && !study.joinable() {
            return Err(Error::FailedPrecondition(format!(
                "study {study_id} is {:?}: hospitals consent only to recruiting or running studies",
                study.status().state
            )));
        }
        if let Some(conditions) = &conditions {
            if action == ConsentAction::Revoke {
                return Err(Error::InvalidArgument {
                    field: "conditions",
                    detail: "a revocation carries no conditions".into(),
                });
            }
            ConsentTerms::check(conditions, study_id, study.manifest.privacy.is_some(), Self::wall_clock_ms())?;
        }
        let message = match &conditions {
            Some(conditions) => signing::conditional_consent_message(study_id, &study.manifest_hash, conditions),
            None => signing::consent_message(action, study_id, &study.manifest_hash),
        };
        pdc.key.verify(&message, signature, pdc_id).map_err(|e| Error::Unauthenticated(e.to_string()))?;
        let signature: [u8; 64] = signature.try_into().expect("a verified Ed25519 signature has 64 bytes");
        let (study_id, pdc, manifest_hash) = (study_id.to_owned(), pdc_id.to_owned(), study.manifest_hash);
        let changed = !study.consents.contains(pdc_id) || study.consent_terms.conditions(pdc_id) != conditions.as_ref();
        // Only a change is recorded: granting twice, or revoking what was never granted, changes nothing.
        match action {
            ConsentAction::Grant if changed => {
                let entry = Entry::ConsentGranted { study_id, pdc_id: pdc, manifest_hash, signature, conditions };
                self.ledger.record(&[entry])?;
                tracing::info!(study = %study.id, pdc = %pdc_id, ?conditions, "consent granted");
                study.consents.insert(pdc_id.to_owned());
                study.consent_terms.grant(pdc_id, conditions);
            }
            ConsentAction::Revoke if study.consents.contains(pdc_id) => {
                let entry = Entry::ConsentRevoked { study_id, pdc_id: pdc, manifest_hash, signature };
                self.ledger.record(&[entry])?;
                tracing::info!(study = %study.id, pdc = %pdc_id, "consent revoked");
                study.consents.remove(pdc_id);
                study.consent_terms.revoke(pdc_id);
            }
            _ => {}
        }
        Ok(())
    }

    /// Opens a task stream for the authenticated PDC; it counts as available while the receiver lives.
    pub fn open_task_stream(self: &Arc<Self>, auth: &RequestAuth) -> Result<mpsc::Receiver<TaskSpec>> {
        let (sender, receiver) = mpsc::channel(64);
        {
            let mut state = self.lock();
            self.authenticate(&state, "WaitTasks", auth)?;
            let pdc = state.pdcs.get_mut(&auth.pdc_id).expect("authenticated");
            pdc.task_streams.retain(|sender| !sender.is_closed());
            pdc.task_streams.push(sender.clone());
            // A PDC that reconnects mid-round gets its task again.
            let now = self.now_ms();
            for study in state.studies.values() {
                if *study.machine.phase() == Phase::Open
                    && study.round_participants.contains(&auth.pdc_id)
                    && study.machine.check_update(&auth.pdc_id, study.machine.round()).is_ok()
                    && study.consent_lapse(&auth.pdc_id, study.machine.round(), Self::wall_clock_ms()).is_none()
                {
                    let _ = sender.try_send(study.task_for(&auth.pdc_id, now));
                }
                if study.standardizing()
                    && study.standardization.as_ref().is_some_and(|s| s.awaits(&auth.pdc_id))
                    && let Some(task) = study.standardization_task()
                {
                    let _ = sender.try_send(task);
                }
            }
            for (query_id, (query, _)) in &state.queries {
                if query.check_answer(&auth.pdc_id).is_ok() {
                    let _ = sender.try_send(feasibility_task_for(query_id, query));
                }
            }
            tracing::info!(pdc = %auth.pdc_id, "PDC connected");
        }
        self.tick();
        Ok(receiver)
    }

    /// The global model of `round` for a participant of that round.
    pub fn participant_model(&self, auth: &RequestAuth, study_id: &str, round: u32) -> Result<ModelSnapshot> {
        let state = self.lock();
        self.authenticate(&state, "DownloadGlobalModel", auth)?;
        let study = state.studies.get(study_id).ok_or_else(|| Error::UnknownStudy(study_id.to_owned()))?;
        if *study.machine.phase() != Phase::Open || study.machine.round() != round {
            return Err(Error::FailedPrecondition(format!("round {round} of study {study_id} is not open")));
        }
        if !study.round_participants.contains(&auth.pdc_id) {
            return Err(Error::PermissionDenied(format!("{} is not a participant of round {round}", auth.pdc_id)));
        }
        if let Some(lapse) = study.consent_lapse(&auth.pdc_id, round, Self::wall_clock_ms()) {
            return Err(Error::PermissionDenied(lapse));
        }
        Ok(snapshot(study))
    }

    /// Checks an update's header (sender, signature, consent, round, size) before its body is read, and returns
    /// where to write the body: a fresh upload, or (with `resume_offset` > 0) the PDC's partial upload of the same
    /// update, which must have acknowledged exactly `resume_offset` bytes.
    pub fn begin_update(&self, header: &UpdateHeader, resume_offset: u64) -> Result<UploadStream> {
        let contribution = &header.contribution;
        let state = self.lock();
        let pdc = state.pdcs.get(&contribution.pdc_id).ok_or_else(|| Error::UnknownPdc(contribution.pdc_id.clone()))?;
        pdc.key
            .verify(&contribution.signing_bytes(), &header.signature, &contribution.pdc_id)
            .map_err(|e| Error::Unauthenticated(e.to_string()))?;
        let study = state
            .studies
            .get(&contribution.study_id)
            .ok_or_else(|| Error::UnknownStudy(contribution.study_id.clone()))?;
        if let Some(lapse) = study.consent_lapse(&contribution.pdc_id, contribution.round, Self::wall_clock_ms()) {
            return Err(Error::PermissionDenied(lapse));
        }
        check_study_epsilon(&state, study, contribution)?;
        study.machine.check_update(&contribution.pdc_id, contribution.round)?;
        let expected = study.global.len() as u64;
        if contribution.n_parameters != expected {
            drop(state);
            let error = Error::InvalidUpdate {
                pdc_id: contribution.pdc_id.clone(),
                detail: format!(
                    "update has {} parameters, the study's model has {expected}",
                    contribution.n_parameters
                ),
            };
            self.reject(contribution, &error);
            return Err(error);
        }
        if contribution.n_examples == 0 {
            return Err(Error::InvalidUpdate {
                pdc_id: contribution.pdc_id.clone(),
                detail: "an update must come from at least one example".into(),
            });
        }
        if !contribution.train_loss.is_finite() {
            return Err(Error::InvalidUpdate {
                pdc_id: contribution.pdc_id.clone(),
                detail: format!("training loss {} is not finite", contribution.train_loss),
            });
        }
        check_privacy(&state, study, contribution)?;
        let max_norm = study.manifest.validation.max_update_norm;
        drop(state);
        let key = UploadKey {
            study_id: contribution.study_id.clone(),
            round: contribution.round,
            pdc_id: contribution.pdc_id.clone(),
            update_hash: contribution.update_hash,
        };
        self.partials.start(&self.archive, key, expected, max_norm, resume_offset)
    }

    /// What the coordinator has acknowledged of `auth`'s PDC's upload of `update_hash` for `round`: where it may
    /// resume. Refused like an upload when the round is not open to the PDC (closed, already delivered).
    pub fn upload_status(
        &self,
        auth: &RequestAuth,
        study_id: &str,
        round: u32,
        update_hash: Hash,
    ) -> Result<UploadProgress> {
        {
            let state = self.lock();
            self.authenticate(&state, "UploadStatus", auth)?;
            let study = state.studies.get(study_id).ok_or_else(|| Error::UnknownStudy(study_id.to_owned()))?;
            study.machine.check_update(&auth.pdc_id, round)?;
        }
        let key = UploadKey { study_id: study_id.to_owned(), round, pdc_id: auth.pdc_id.clone(), update_hash };
        Ok(self.partials.status(&key))
    }

    /// Deletes an upload whose content was refused.
    pub fn discard_update(&self, stream: UploadStream) {
        self.partials.discard(stream);
    }

    /// Deletes the partial uploads whose round is no longer open to their PDC (closed, abandoned, delivered).
    fn purge_partial_uploads(&self) {
        let keys = self.partials.keys();
        if keys.is_empty() {
            return;
        }
        let stale: Vec<UploadKey> = {
            let state = self.lock();
            let open = |key: &UploadKey| {
                let study = state.studies.get(&key.study_id);
                study.is_some_and(|study| study.machine.check_update(&key.pdc_id, key.round).is_ok())
            };
            keys.into_iter().filter(|key| !open(key)).collect()
        };
        self.partials.remove(&stale);
    }

    /// Completes an upload: archives the update and hands it to its round. Returns the update's id and how many
    /// updates the round has received.
    pub fn finish_update(self: &Arc<Self>, header: &UpdateHeader, stream: UploadStream) -> Result<(Hash, u32)> {
        let contribution = &header.contribution;
        let id = match self.partials.finish(stream, &self.archive, &contribution.update_hash) {
            Ok(id) => id,
            Err(error) => {
                self.reject(contribution, &error);
                return Err(error);
            }
        };
        let now = self.now_ms();
        let mut state = self.lock();
        let state = &mut *state;
        let study = state
            .studies
            .get_mut(&contribution.study_id)
            .ok_or_else(|| Error::UnknownStudy(contribution.study_id.clone()))?;
        let update = AcceptedUpdate { n_examples: contribution.n_examples, update_hash: id };
        // The round may have closed while the body was arriving: the machine decides, before anything is recorded.
        study.machine.check_update(&contribution.pdc_id, contribution.round)?;
        let signature: [u8; 64] = header.signature.as_slice().try_into().map_err(|_| {
            Error::Unauthenticated(format!("signature of {} has {} bytes", contribution.pdc_id, header.signature.len()))
        })?;
        // Another study's upload may have recorded a spend of this PDC since the header was checked, and the
        // consent may have lapsed while the body was arriving.
        let study = state.studies.get(&contribution.study_id).expect("looked up above");
        if let Some(lapse) = study.consent_lapse(&contribution.pdc_id, contribution.round, Self::wall_clock_ms()) {
            return Err(Error::PermissionDenied(lapse));
        }
        check_privacy(state, study, contribution)?;
        let study_spend = check_study_epsilon(state, study, contribution)?;
        let mut entries = vec![Entry::ContributionAccepted { contribution: contribution.clone(), signature }];
        if let Some(claim) = &contribution.privacy {
            entries.push(Entry::PrivacySpent {
                study_id: contribution.study_id.clone(),
                round: contribution.round,
                pdc_id: contribution.pdc_id.clone(),
                epsilon: claim.epsilon,
                delta: claim.delta,
            });
        }
        self.ledger.record(&entries)?;
        let study = state.studies.get_mut(&contribution.study_id).expect("looked up above");
        self.metrics.update_accepted(contribution.n_parameters.saturating_mul(4));
        if let Some(claim) = &contribution.privacy {
            study.consent_terms.record_epsilon(&contribution.pdc_id, study_spend);
            self.metrics.epsilon_spent(&contribution.pdc_id, claim.epsilon);
            state.spent.insert(contribution.pdc_id.clone(), (claim.epsilon, claim.delta));
            study.round_spend.insert(contribution.pdc_id.clone(), (claim.epsilon, claim.delta));
            study.hospitals.entry(contribution.pdc_id.clone()).or_default().epsilon = claim.epsilon;
        }
        let event = Event::UpdateAccepted { round: contribution.round, pdc_id: contribution.pdc_id.clone(), update };
        let actions = study.machine.handle(now, event)?;
        tracing::info!(study = %study.id, round = contribution.round, pdc = %contribution.pdc_id,
            update = %hex::encode(id), "update accepted");
        let received = actions
            .iter()
            .find_map(|action| match action {
                Action::Aggregate { contributions, .. } => Some(contributions.len()),
                _ => None,
            })
            .unwrap_or_else(|| study.machine.received());
        self.execute(&mut state.pdcs, study, now, actions);
        Ok((id, received as u32))
    }

    /// Records that an update was rejected for its content.
    pub fn reject(&self, contribution: &Contribution, error: &Error) {
        self.record_rejection(&contribution.study_id, contribution.round, &contribution.pdc_id, &error.to_string());
    }

    fn record_rejection(&self, study_id: &str, round: u32, pdc_id: &str, reason: &str) {
        let mut state = self.lock();
        if let Some(study) = state.studies.get_mut(study_id) {
            let entry = Entry::UpdateRejected {
                study_id: study_id.to_owned(),
                round,
                pdc_id: pdc_id.to_owned(),
                reason: reason.to_owned(),
            };
            if let Err(error) = self.ledger.record(&[entry]) {
                tracing::error!(study = %study_id, %error, "cannot record a rejection");
            }
            tracing::warn!(study = %study_id, round, pdc = %pdc_id, %reason, "update rejected");
            study.hospitals.entry(pdc_id.to_owned()).or_default().updates_rejected += 1;
            study.emit(StudyEvent::UpdateRejected { round, pdc_id: pdc_id.to_owned(), reason: reason.to_owned() });
        }
    }

    /// A participant reports it will not deliver its update for `round`.
    ///
    /// With [`FailureKind::BudgetExhausted`] the PDC is not selected for the study again, and its refusal is
    /// recorded on the ledger.
    pub fn report_failure(
        self: &Arc<Self>,
        auth: &RequestAuth,
        study_id: &str,
        round: u32,
        reason: &str,
        kind: FailureKind,
    ) -> Result<()> {
        let now = self.now_ms();
        let mut state = self.lock();
        self.authenticate(&state, "ReportFailure", auth)?;
        let state = &mut *state;
        let reason: String = reason.chars().take(512).collect();
        if round == 0 {
            // Round 0 is a statistics query: the PDC declines to release.
            tracing::info!(scope = %study_id, pdc = %auth.pdc_id, %reason, "statistics query declined");
            if let Some((query, done)) = state.queries.get_mut(study_id) {
                query.answer(&auth.pdc_id, CohortAnswer::Declined(reason))?;
                if query.is_complete() {
                    done.notify_one();
                }
                return Ok(());
            }
            let study = state.studies.get_mut(study_id).ok_or_else(|| Error::UnknownStudy(study_id.to_owned()))?;
            let standardization = study.standardization.as_mut().ok_or_else(|| {
                Error::FailedPrecondition(format!("study {study_id} asks no statistics (round 0) of its PDCs"))
            })?;
            let steps = standardization.decline(&auth.pdc_id, &reason)?;
            self.execute_standardization(&mut state.pdcs, study, now, steps);
            return Ok(());
        }
        let study = state.studies.get_mut(study_id).ok_or_else(|| Error::UnknownStudy(study_id.to_owned()))?;
        tracing::warn!(study = %study_id, round, pdc = %auth.pdc_id, %reason, ?kind, "participant failed");
        let event = Event::ParticipantFailed { round, pdc_id: auth.pdc_id.clone(), reason: reason.clone() };
        if kind == FailureKind::BudgetExhausted {
            // Checked before anything is recorded: the round machine refuses reports outside the open round.
            study.machine.check_update(&auth.pdc_id, round)?;
            let reason = format!("{BUDGET_EXHAUSTED_PREFIX}{reason}");
            self.ledger.record(&[Entry::UpdateRejected {
                study_id: study_id.to_owned(),
                round,
                pdc_id: auth.pdc_id.clone(),
                reason: reason.clone(),
            }])?;
            study.exhausted.insert(auth.pdc_id.clone());
            study.hospitals.entry(auth.pdc_id.clone()).or_default().budget_exhausted = true;
            study.emit(StudyEvent::UpdateRejected { round, pdc_id: auth.pdc_id.clone(), reason });
        }
        let actions = study.machine.handle(now, event)?;
        self.execute(&mut state.pdcs, study, now, actions);
        Ok(())
    }

    /// Replaces `pdc_id`'s key by `new_key`: the rotation must be signed by the current key (so nobody else can
    /// take over the identity) and by the new one (proof of possession). It is recorded on the ledger before the
    /// key changes; from then on only the new key authenticates the PDC.
    pub fn rotate_key(
        &self,
        pdc_id: &str,
        new_key: &[u8],
        old_key_signature: &[u8],
        new_key_signature: &[u8],
    ) -> Result<()> {
        let new_key = PublicKey::from_bytes(new_key)
            .map_err(|e| Error::InvalidArgument { field: "new_public_key", detail: e.to_string() })?;
        let mut state = self.lock();
        if state.consortium.is_some() {
            return Err(Error::FailedPrecondition(format!(
                "keys are managed by the consortium file: list {pdc_id}'s new key there and reload it"
            )));
        }
        let pdc = state.pdcs.get_mut(pdc_id).ok_or_else(|| Error::UnknownPdc(pdc_id.to_owned()))?;
        let (old_bytes, new_bytes) = (pdc.key.to_bytes(), new_key.to_bytes());
        if old_bytes == new_bytes {
            return Err(Error::InvalidArgument { field: "new_public_key", detail: "is the current key".into() });
        }
        let message = signing::rotate_message(pdc_id, &old_bytes, &new_bytes);
        pdc.key
            .verify(&message, old_key_signature, pdc_id)
            .map_err(|e| Error::Unauthenticated(format!("key rotation of {pdc_id}, current key: {e}")))?;
        new_key
            .verify(&message, new_key_signature, pdc_id)
            .map_err(|e| Error::Unauthenticated(format!("key rotation of {pdc_id}, new key: {e}")))?;
        let signature: [u8; 64] = old_key_signature.try_into().expect("a verified signature has 64 bytes");
        self.ledger.record(&[Entry::KeyRotated {
            pdc_id: pdc_id.to_owned(),
            old_key: old_bytes,
            new_key: new_bytes,
            signature,
        }])?;
        tracing::info!(pdc = %pdc_id, new_key = %hex::encode(new_bytes), "key rotated");
        pdc.key = new_key;
        // Streams opened under the old key end; the PDC reconnects with its new one.
        pdc.task_streams.clear();
        Ok(())
    }

    /// Declares `pdc_id`'s privacy budget `(epsilon, delta)` for its table `dataset`, proven by its signature over
    /// [`signing::budget_message`], and records it on the ledger. Returns whether this call declared it: repeating
    /// the same declaration changes nothing, and a different one is refused, since a budget is declared once.
    pub fn declare_budget(
        &self,
        pdc_id: &str,
        dataset: &str,
        epsilon: f64,
        delta: f64,
        signature: &[u8],
    ) -> Result<bool> {
        if dataset.is_empty() || dataset.len() > 128 || dataset.contains('\0') {
            return Err(Error::InvalidArgument {
                field: "dataset",
                detail: "must be 1 to 128 bytes without NUL".into(),
            });
        }
        if !(epsilon.is_finite() && epsilon > 0.0) {
            return Err(Error::InvalidArgument {
                field: "epsilon",
                detail: format!("{epsilon} is not finite and positive"),
            });
        }
        if !(delta > 0.0 && delta < 1.0) {
            return Err(Error::InvalidArgument { field: "delta", detail: format!("{delta} is not in (0, 1)") });
        }
        let mut state = self.lock();
        let pdc = state.pdcs.get(pdc_id).ok_or_else(|| Error::UnknownPdc(pdc_id.to_owned()))?;
        pdc.key
            .verify(&signing::budget_message(pdc_id, dataset, epsilon, delta), signature, pdc_id)
            .map_err(|e| Error::Unauthenticated(format!("budget declaration of {pdc_id}: {e}")))?;
        let declared = DeclaredBudget { dataset: dataset.to_owned(), epsilon, delta };
        match state.budgets.get(pdc_id) {
            Some(existing) if *existing == declared => Ok(false),
            Some(existing) => Err(Error::FailedPrecondition(format!(
                "{pdc_id} already declared a budget of (ε = {}, δ = {}) for {:?}; a budget is declared once",
                existing.epsilon, existing.delta, existing.dataset
            ))),
            None => {
                let entry =
                    Entry::BudgetDeclared { pdc_id: pdc_id.to_owned(), dataset: dataset.to_owned(), epsilon, delta };
                self.ledger.record(&[entry])?;
                tracing::info!(pdc = %pdc_id, %dataset, epsilon, delta, "privacy budget declared");
                state.budgets.insert(pdc_id.to_owned(), declared);
                Ok(true)
            }
        }
    }

    /// Accepts a PDC's signed DP release answering a statistics query: a feature summary for a study's
    /// standardisation, or cohort counts for a feasibility query. The release must answer a query this PDC was
    /// asked and has not answered, at exactly the query's noise, with well-formed finite values, and state a
    /// cumulative spend on its declared table within its budget and not below what is recorded. It is recorded on
    /// the ledger before it counts. Returns how many answers the scope has received.
    pub fn submit_statistics(self: &Arc<Self>, release: StatisticsRelease, signature: &[u8]) -> Result<u32> {
        let now = self.now_ms();
        let mut state = self.lock();
        let state = &mut *state;
        let pdc = state.pdcs.get(&release.pdc_id).ok_or_else(|| Error::UnknownPdc(release.pdc_id.clone()))?;
        pdc.key
            .verify(&release.signing_bytes(), signature, &release.pdc_id)
            .map_err(|e| Error::Unauthenticated(format!("statistics of {}: {e}", release.pdc_id)))?;
        let signature: [u8; 64] = signature.try_into().expect("a verified Ed25519 signature has 64 bytes");
        let invalid = |detail: String| Error::InvalidArgument { field: "values", detail };
        if let Some(value) = release.values.iter().find(|v| !v.is_finite()) {
            return Err(invalid(format!("released value {value} is not finite")));
        }
        check_release_spend(state, &release)?;
        let pdc_id = release.pdc_id.clone();
        let query = match release.kind {
            StatisticKind::FeatureSummary => {
                let study =
                    state.studies.get(&release.scope).ok_or_else(|| Error::UnknownStudy(release.scope.clone()))?;
                let standardization = study.standardization.as_ref().ok_or_else(|| {
                    Error::FailedPrecondition(format!("study {} has no federated standardisation", study.id))
                })?;
                if !study.consents.contains(&pdc_id) {
                    return Err(Error::PermissionDenied(format!("{pdc_id} has not consented to study {}", study.id)));
                }
                standardization.check_answer(&pdc_id)?;
                standardization.query().clone()
            }
            StatisticKind::CohortCounts => {
                let (query, _) =
                    state.queries.get(&release.scope).ok_or_else(|| Error::UnknownQuery(release.scope.clone()))?;
                query.check_answer(&pdc_id)?;
                query.query().clone()
            }
        };
        if release.noise_multiplier != query.noise_multiplier {
            return Err(Error::InvalidArgument {
                field: "noise_multiplier",
                detail: format!(
                    "{} is not the query's noise multiplier {}",
                    release.noise_multiplier, query.noise_multiplier
                ),
            });
        }
        let malformed = |e: pdc_privacy::Error| invalid(e.to_string());
        let answer = match release.kind {
            StatisticKind::FeatureSummary => {
                Ok(NoisyFeatureSummary::from_values(&query.bounds, query.noise_multiplier, &release.values)
                    .map_err(malformed)?)
            }
            StatisticKind::CohortCounts => {
                let [positives, negatives] = release.values[..] else {
                    return Err(invalid(format!("cohort counts are 2 values, not {}", release.values.len())));
                };
                let counts =
                    NoisyCohortCounts::from_values(query.noise_multiplier, positives, negatives).map_err(malformed)?;
                Err(CohortAnswer::Released { counts, epsilon: release.epsilon })
            }
        };
        let (epsilon, delta, scope) = (release.epsilon, release.delta, release.scope.clone());
        self.ledger.record(&[Entry::StatisticsReleased { release, signature }])?;
        state.spent.insert(pdc_id.clone(), (epsilon, delta));
        self.metrics.statistics_released();
        self.metrics.epsilon_spent(&pdc_id, epsilon);
        tracing::info!(scope = %scope, pdc = %pdc_id, epsilon, "statistics released");
        match answer {
            Ok(summary) => {
                let study = state.studies.get_mut(&scope).expect("checked above");
                let standardization = study.standardization.as_mut().expect("checked above");
                let steps = standardization.answer(&pdc_id, summary)?;
                let answers = standardization.answers() as u32;
                self.execute_standardization(&mut state.pdcs, study, now, steps);
                Ok(answers)
            }
            Err(cohort) => {
                let (query, done) = state.queries.get_mut(&scope).expect("checked above");
                query.answer(&pdc_id, cohort)?;
                if query.is_complete() {
                    done.notify_one();
                }
                let answered = query.answers().values().filter(|a| matches!(a, CohortAnswer::Released { .. })).count();
                Ok(answered as u32)
            }
        }
    }

    /// A researcher's feasibility query: asks every connected PDC for DP counts of `label` (one Gaussian release
    /// costing `epsilon` at `delta`), and waits until all have answered or declined, or `timeout`. Each PDC decides
    /// by its own policy whether to answer, and charges its budget when it does.
    pub async fn feasibility(
        self: &Arc<Self>,
        label: &str,
        epsilon: f64,
        delta: f64,
        timeout: Duration,
    ) -> Result<Feasibility> {
        if label.is_empty() || label.len() > 128 || label.contains('\0') {
            return Err(Error::InvalidArgument { field: "label", detail: "must be 1 to 128 bytes without NUL".into() });
        }
        if timeout.is_zero() || timeout > MAX_FEASIBILITY_TIMEOUT {
            return Err(Error::InvalidArgument {
                field: "timeout_secs",
                detail: format!("must be between 1 and {}", MAX_FEASIBILITY_TIMEOUT.as_secs()),
            });
        }
        let noise_multiplier = pdc_privacy::calibrate_noise_multiplier(epsilon, delta, 1.0, 1)
            .map_err(|e| Error::InvalidArgument { field: "epsilon", detail: e.to_string() })?;
        let done = Arc::new(Notify::new());
        let query_id = {
            let mut state = self.lock();
            let state = &mut *state;
            let asked: Vec<String> =
                state.pdcs.iter().filter(|(_, pdc)| pdc.connected()).map(|(id, _)| id.clone()).collect();
            if asked.is_empty() {
                return Err(Error::FailedPrecondition("no PDC is connected to answer a feasibility query".into()));
            }
            let mut seed = format!("{label}\0{noise_multiplier}\0{}\0", Self::wall_clock_ms()).into_bytes();
            seed.extend_from_slice(&(state.queries.len() as u64).to_le_bytes());
            seed.extend_from_slice(&self.now_ms().to_le_bytes());
            let query_id = format!("feasibility-{}", &hex::encode(sha3_256(&seed))[..16]);
            let query = FeasibilityQuery::new(label, noise_multiplier, asked.iter().cloned());
            for pdc_id in &asked {
                send_task(&mut state.pdcs, pdc_id, feasibility_task_for(&query_id, &query));
            }
            tracing::info!(query = %query_id, %label, noise_multiplier, ?asked, "feasibility query sent");
            state.queries.insert(query_id.clone(), (query, Arc::clone(&done)));
            query_id
        };
        // The query closes when this call ends, even if the researcher's call is dropped mid-wait.
        let open = OpenQuery { coordinator: self, query_id: &query_id };
        // A completion between the insert and this wait leaves a permit, so it is not missed.
        let _ = tokio::time::timeout(timeout, done.notified()).await;
        let (query, _) = open.close().expect("only this call removes its query");
        drop(open);
        Ok(Feasibility { query_id, noise_multiplier, answers: query.answers().clone() })
    }
}

/// A feasibility query open in the coordinator's state, closed (removed, so later answers are refused) when
/// dropped.
struct OpenQuery<'a> {
    coordinator: &'a Coordinator,
    query_id: &'a str,
}

impl OpenQuery<'_> {
    fn close(&self) -> Option<(FeasibilityQuery, Arc<Notify>)> {
        self.coordinator.lock().queries.remove(self.query_id)
    }
}

impl Drop for OpenQuery<'_> {
    fn drop(&mut self) {
        self.close();
    }
}

/// The longest a feasibility query waits for answers.
pub const MAX_FEASIBILITY_TIMEOUT: Duration = Duration::from_secs(300);

/// A feasibility query's outcome: every PDC asked, with its answer.
#[derive(Clone, Debug, PartialEq)]
pub struct Feasibility {
    /// The query's id (the scope of its releases on the ledger).
    pub query_id: String,
    /// The noise multiplier every release used.
    pub noise_multiplier: f64,
    /// By PDC.
    pub answers: BTreeMap<String, CohortAnswer>,
}

/// Sends `task` on `pdc_id`'s newest open task stream, if it has one.
fn send_task(pdcs: &mut BTreeMap<String, Pdc>, pdc_id: &str, task: TaskSpec) {
    if let Some(pdc) = pdcs.get_mut(pdc_id) {
        pdc.task_streams.retain(|sender| !sender.is_closed());
        if let Some(sender) = pdc.task_streams.last() {
            let _ = sender.try_send(task);
        }
    }
}

/// A feasibility query as the task a PDC is sent.
fn feasibility_task_for(query_id: &str, query: &FeasibilityQuery) -> TaskSpec {
    TaskSpec {
        study_id: query_id.to_owned(),
        round: 0,
        model_hash: [0; 32],
        n_parameters: 0,
        manifest_toml: String::new(),
        standardizer: Standardizer { mean: Vec::new(), std: Vec::new() },
        deadline_in_ms: 0,
        training_seed: 0,
        query: Some(query.query().clone()),
    }
}

/// Checks a statistics release's spend against the PDC's declared budget and recorded spend, as
/// [`check_privacy`] does for a contribution's claim.
fn check_release_spend(state: &State, release: &StatisticsRelease) -> Result<()> {
    let pdc_id = &release.pdc_id;
    let invalid = |detail: String| Err(Error::InvalidArgument { field: "epsilon", detail });
    let Some(budget) = state.budgets.get(pdc_id) else {
        return Err(Error::FailedPrecondition(format!("{pdc_id} has declared no privacy budget")));
    };
    if release.dataset != budget.dataset {
        return Err(Error::InvalidArgument {
            field: "dataset",
            detail: format!("the release names {:?}, the declared budget is for {:?}", release.dataset, budget.dataset),
        });
    }
    let (epsilon, delta) = (release.epsilon, release.delta);
    if !(epsilon.is_finite() && delta.is_finite()) || epsilon <= 0.0 || delta <= 0.0 {
        return invalid(format!("cumulative spend (ε = {epsilon}, δ = {delta}) must be finite and positive"));
    }
    if epsilon > budget.epsilon || delta > budget.delta {
        return invalid(format!(
            "cumulative spend (ε = {epsilon}, δ = {delta}) is not within the declared budget (ε = {}, δ = {})",
            budget.epsilon, budget.delta
        ));
    }
    if let Some(&(spent_epsilon, spent_delta)) = state.spent.get(pdc_id)
        && (epsilon < spent_epsilon || delta < spent_delta)
    {
        return invalid(format!(
            "cumulative spend (ε = {epsilon}, δ = {delta}) is below the (ε = {spent_epsilon}, δ = {spent_delta}) \
             already recorded"
        ));
    }
    Ok(())
}

/// Why a PDC gave up a round.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailureKind {
    /// Training or upload failed; the PDC may take part in later rounds.
    Other,
    /// The round would take the PDC's table past its privacy budget: it is not selected for the study again.
    BudgetExhausted,
}

/// The PDC's ε on this study once `contribution` is recorded, refused when that would pass its consent's
/// `max_epsilon` (see [`ConsentTerms::epsilon_after`]).
fn check_study_epsilon(state: &State, study: &Study, contribution: &Contribution) -> Result<f64> {
    let pdc_id = &contribution.pdc_id;
    let recorded = state.spent.get(pdc_id).map_or(0.0, |&(epsilon, _)| epsilon);
    let claimed = contribution.privacy.as_ref().map(|claim| claim.epsilon);
    study.consent_terms.epsilon_after(&study.id, pdc_id, claimed, recorded)
}

/// Checks a contribution's privacy claim against the study and the PDC's declared budget and recorded spend: a
/// claim exactly when the study trains with local DP, on the declared dataset, with at least the study's noise
/// and at most its clip norm, a cumulative spend that never decreases and stays within the budget, and no
/// training loss (which would not be private), under local or central DP.
fn check_privacy(state: &State, study: &Study, contribution: &Contribution) -> Result<()> {
    let pdc_id = &contribution.pdc_id;
    let invalid = |detail: String| Err(Error::InvalidUpdate { pdc_id: pdc_id.clone(), detail });
    if study.manifest.central_privacy.is_some() && contribution.train_loss != 0.0 {
        // The ledger is read by every auditor; a PDC's exact loss on its rows is outside the study's central ε.
        return invalid("under central DP the training loss is not released: it must be 0".into());
    }
    let (settings, claim) = match (&study.manifest.privacy, &contribution.privacy) {
        (None, None) => return Ok(()),
        (None, Some(_)) => {
            return invalid(format!("study {} does not train with local DP, yet the update claims it", study.id));
        }
        (Some(_), None) => {
            return invalid(format!("study {} trains with local DP and the update carries no privacy claim", study.id));
        }
        (Some(settings), Some(claim)) => (settings, claim),
    };
    let Some(budget) = state.budgets.get(pdc_id) else {
        return Err(Error::FailedPrecondition(format!("{pdc_id} has declared no privacy budget")));
    };
    if claim.dataset != budget.dataset {
        return invalid(format!(
            "the claim names dataset {:?}, the declared budget is for {:?}",
            claim.dataset, budget.dataset
        ));
    }
    let finite = [claim.noise_multiplier, claim.sampling_rate, claim.clip_norm, claim.epsilon, claim.delta];
    if finite.iter().any(|v| !v.is_finite()) {
        return invalid("the privacy claim holds a non-finite value".into());
    }
    if claim.steps == 0 || !(claim.sampling_rate > 0.0 && claim.sampling_rate <= 1.0) {
        return invalid(format!(
            "the privacy claim has {} steps at sampling rate {}: need at least one step and a rate in (0, 1]",
            claim.steps, claim.sampling_rate
        ));
    }
    let least_noise = settings.noise_multiplier.unwrap_or(0.0);
    if !(claim.noise_multiplier > 0.0 && claim.noise_multiplier >= least_noise) {
        return invalid(format!(
            "noise multiplier {} is below the study's {least_noise} (and must be positive)",
            claim.noise_multiplier
        ));
    }
    if !(claim.clip_norm > 0.0 && claim.clip_norm <= settings.clip_norm) {
        return invalid(format!(
            "clip norm {} is not in (0, {}] as the study sets",
            claim.clip_norm, settings.clip_norm
        ));
    }
    if claim.epsilon > budget.epsilon || claim.delta > budget.delta || claim.epsilon <= 0.0 || claim.delta <= 0.0 {
        return invalid(format!(
            "claimed cumulative spend (ε = {}, δ = {}) is not within the declared budget (ε = {}, δ = {})",
            claim.epsilon, claim.delta, budget.epsilon, budget.delta
        ));
    }
    if let Some(&(epsilon, delta)) = state.spent.get(pdc_id)
        && (claim.epsilon < epsilon || claim.delta < delta)
    {
        return invalid(format!(
            "claimed cumulative spend (ε = {}, δ = {}) is below the (ε = {epsilon}, δ = {delta}) already recorded",
            claim.epsilon, claim.delta
        ));
    }
    if contribution.train_loss != 0.0 {
        return invalid("under local DP the training loss is not released: it must be 0".into());
    }
    Ok(())
}

fn snapshot(study: &Study) -> ModelSnapshot {
    ModelSnapshot {
        study_id: study.id.clone(),
        round: study.machine.round(),
        layout: study.spec.layout(),
        parameters: Arc::clone(&study.global),
        model_hash: study.global_hash,
        model_toml: toml::to_string(&ModelSection { model: &study.manifest.model })
            .expect("a model section always serialises"),
    }
}

#[derive(serde::Serialize)]
struct ModelSection<'a> {
    model: &'a pdc_models::ModelKind,
}
/// A study's inputs as the coordinator derives them from the researcher's manifest and validation set, the same
/// way at creation and in a replay.
pub(crate) struct PreparedStudy {
    pub(crate) manifest: Manifest,
    pub(crate) canonical: String,
    pub(crate) manifest_hash: Hash,
    /// The validation set, standardised with `standardizer`.
    pub(crate) validation: Dataset,
    /// The validation set as the researcher sent it, for a federated standardisation fitted later.
    pub(crate) raw_validation: Dataset,
    pub(crate) standardizer: Standardizer,
    pub(crate) spec: ModelSpec,
    /// The initial global model.
    pub(crate) global: Vec<f32>,
    pub(crate) optimizer: ServerState,
}

/// Parses and checks a manifest against its validation set, and derives everything a study starts from.
pub(crate) fn prepare_study(manifest_toml: &str, validation_csv: &[u8]) -> Result<PreparedStudy> {
    let csv_text = std::str::from_utf8(validation_csv)
        .map_err(|e| Error::InvalidArgument { field: "validation_csv", detail: format!("not UTF-8: {e}") })?;
    let manifest = Manifest::parse(manifest_toml)?.resolve(&manifest::csv_header(csv_text))?;
    let mut validation = manifest::load_validation(&manifest, csv_text)?;
    let raw_validation = validation.clone();
    let standardizer = Standardizer::fit(&validation);
    standardizer.apply(&mut validation)?;
    let canonical = manifest.to_canonical_toml();
    let manifest_hash = sha3_256(canonical.as_bytes());
    let spec = manifest.model_spec();
    let global = spec.init_parameters(manifest.seed);
    let optimizer = ServerState::new(&manifest.aggregation, global.len())?;
    Ok(PreparedStudy {
        manifest,
        canonical,
        manifest_hash,
        validation,
        raw_validation,
        standardizer,
        spec,
        global,
        optimizer,
    })
}

/// How the reason recorded for a PDC suspended from selection begins.
pub(crate) const SUSPENDED_PREFIX: &str = "suspended from selection: ";

/// The archived manifest of a study, under its folder in `<data_dir>/studies`.
pub const ARCHIVED_MANIFEST: &str = "manifest.toml";
/// The archived validation set of a study.
pub const ARCHIVED_VALIDATION: &str = "validation.csv";

/// Writes a study's canonical manifest and validation set to `folder`, durably.
fn archive_study(folder: &std::path::Path, canonical: &str, validation_csv: &[u8]) -> Result<()> {
    let write = || -> std::io::Result<()> {
        std::fs::create_dir_all(folder)?;
        for (name, bytes) in [(ARCHIVED_MANIFEST, canonical.as_bytes()), (ARCHIVED_VALIDATION, validation_csv)] {
            let path = folder.join(name);
            let mut file = std::fs::File::create(&path)?;
            std::io::Write::write_all(&mut file, bytes)?;
            file.sync_all()?;
        }
        std::fs::File::open(folder)?.sync_all()
    };
    write().map_err(Error::Archive)
}

/// Reads a study's archived manifest and validation set from `folder`, as [`archive_study`] wrote them.
pub(crate) fn read_archived_study(folder: &std::path::Path) -> Result<(Vec<u8>, Vec<u8>)> {
    let read = |name: &str| std::fs::read(folder.join(name)).map_err(Error::Archive);
    Ok((read(ARCHIVED_MANIFEST)?, read(ARCHIVED_VALIDATION)?))
}

fn check_pdc_id(pdc_id: &str) -> Result<()> {
    let valid = !pdc_id.is_empty()
        && pdc_id.len() <= MAX_PDC_ID_LEN
        && pdc_id.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if valid {
        Ok(())
    } else {
        Err(Error::InvalidArgument {
            field: "pdc_id",
            detail: format!("`{pdc_id}`: use 1 to {MAX_PDC_ID_LEN} letters, digits, '-', '_' or '.'"),
        })
    }
}

fn slug(name: &str) -> String {
    let slug: String =
        name.chars().map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '-' }).take(40).collect();
    slug.trim_matches('-').to_owned()
}
